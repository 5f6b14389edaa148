//! Multi-User Chat (XEP-0045) at `conference.localhost`, black-box: service discovery, creating
//! and entering rooms, messages, presence, configuration, moderation, invitations, persistence
//! and the room archive (XEP-0313). Section numbers are those of XEP-0045 unless said otherwise.
//!
//! Synchronisation: what an action causes is awaited with a time limit (`wait`). "Nothing
//! arrived" is checked with a marker that goes through the room: a disco#info request to the room
//! (6.4); once its answer is back, whatever the room had sent before is queued, and a short
//! silence then covers a service that answers disco outside the room's own order (`absent`).
//!
//! The groups (one module each, in this order) land as the implementation progresses:
//! 1 service discovery, 2 create and enter, 3 messages, 4 presence changes, 5 configuration and
//! access, 6 moderation and affiliations, 7 invitations and destroy, 8 persistence and archive,
//! 9 robustness.

use std::time::Duration;

use starling::xml::{ns, Element};

use crate::common::{error_condition, Client, Db, TestServer};

const PW: &str = "secret";
const SERVICE: &str = "conference.localhost";
const MUC: &str = "http://jabber.org/protocol/muc";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
const ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
const XDATA: &str = "jabber:x:data";
const SID: &str = "urn:xmpp:sid:0";
const MAM: &str = "urn:xmpp:mam:2";
const FWD: &str = "urn:xmpp:forward:0";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The bare JID of room `name` on the service.
fn room(name: &str) -> String {
    format!("{name}@{SERVICE}")
}

/// An occupant JID.
fn occ(room: &str, nick: &str) -> String {
    format!("{room}/{nick}")
}

fn full(c: &Client) -> String {
    c.jid.clone().expect("bound")
}

fn bare(c: &Client) -> String {
    full(c).split('/').next().unwrap().to_string()
}

/// A server with these accounts (password `PW`).
async fn server(db: Db, users: &[&str]) -> TestServer {
    let s = TestServer::start(db).await;
    for u in users {
        s.add_user(u, PW).await;
    }
    s
}

/// An available client of `user` with resource "r".
async fn online(s: &TestServer, user: &str) -> Client {
    s.online(user, PW, "r").await
}

/// From the room itself or one of its occupant JIDs.
fn from_room(e: &Element, room: &str) -> bool {
    e.get_attr("from").is_some_and(|f| f == room || f.strip_prefix(room).is_some_and(|r| r.starts_with('/')))
}

fn is_presence(e: &Element, from: &str, typ: Option<&str>) -> bool {
    e.name == "presence" && e.get_attr("from") == Some(from) && e.get_attr("type") == typ
}

fn body(e: &Element) -> Option<String> {
    e.find("body", ns::CLIENT).map(|b| b.text_content())
}

fn is_groupchat(e: &Element, from: &str, text: &str) -> bool {
    e.name == "message" && e.get_attr("type") == Some("groupchat") && e.get_attr("from") == Some(from) && body(e).as_deref() == Some(text)
}

/// A subject message of the room (7.2.15, 8.1): groupchat, a `<subject/>`, no `<body/>`.
fn is_subject(e: &Element, room: &str) -> bool {
    e.name == "message"
        && e.get_attr("type") == Some("groupchat")
        && from_room(e, room)
        && e.find("subject", ns::CLIENT).is_some()
        && e.find("body", ns::CLIENT).is_none()
}

fn subject_text(e: &Element) -> String {
    e.find("subject", ns::CLIENT).map(|s| s.text_content()).unwrap_or_default()
}

/// The `<item/>` of the muc#user extension.
fn item(e: &Element) -> Option<&Element> {
    e.find("x", MUC_USER)?.find("item", MUC_USER)
}

fn item_attr<'a>(e: &'a Element, attr: &str) -> Option<&'a str> {
    item(e).and_then(|i| i.get_attr(attr))
}

/// The muc#user status codes of a stanza, in order.
fn codes(e: &Element) -> Vec<String> {
    e.find("x", MUC_USER)
        .map(|x| x.elements().filter(|s| s.is("status", MUC_USER)).filter_map(|s| s.get_attr("code").map(String::from)).collect())
        .unwrap_or_default()
}

fn has_code(e: &Element, code: &str) -> bool {
    codes(e).iter().any(|c| c == code)
}

fn error_type(e: &Element) -> Option<String> {
    e.find("error", ns::CLIENT).and_then(|x| x.get_attr("type")).map(String::from)
}

/// A stanza error with this condition and type.
fn assert_error(e: &Element, condition: &str, typ: &str, what: &str) {
    assert_eq!(e.get_attr("type"), Some("error"), "{what}: expected an error, got {e}");
    assert_eq!(error_condition(e).as_deref(), Some(condition), "{what}: {e}");
    assert_eq!(error_type(e).as_deref(), Some(typ), "{what}: error type: {e}");
}

fn stanza_ids(e: &Element, by: &str) -> Vec<String> {
    e.elements()
        .filter(|s| s.is("stanza-id", SID) && s.get_attr("by") == Some(by))
        .filter_map(|s| s.get_attr("id").map(String::from))
        .collect()
}

/// Wait (a few seconds at most) for something the server is about to send.
async fn wait(c: &mut Client, what: &str, pred: impl Fn(&Element) -> bool) -> Element {
    let who = c.jid.clone().unwrap_or_default();
    match tokio::time::timeout(Duration::from_secs(8), c.recv_where(pred)).await {
        Ok(e) => e,
        Err(_) => panic!("{who} did not receive {what}"),
    }
}

/// Nothing matching `pred` has come from the server, nor comes soon; the marker is a disco#info
/// request to `room`.
async fn absent(c: &mut Client, room: &str, what: &str, pred: impl Fn(&Element) -> bool) {
    let who = full(c);
    let mark = format!("mark-{}", c.id());
    c.send(&format!("<iq type='get' to='{room}' id='{mark}'><query xmlns='{}'/></iq>", ns::DISCO_INFO)).await;
    let is_mark = |e: &Element| e.name == "iq" && e.get_attr("id") == Some(mark.as_str());
    let e = c.recv_where(|e| is_mark(e) || pred(e)).await;
    if !is_mark(&e) {
        panic!("{who} should not have received {what}: {e}");
    }
    if let Ok(e) = tokio::time::timeout(Duration::from_millis(300), c.recv_where(&pred)).await {
        panic!("{who} should not have received {what}: {e}");
    }
}

fn join_presence(room: &str, nick: &str, x_inner: &str) -> String {
    format!("<presence to='{room}/{nick}'><x xmlns='{MUC}'>{x_inner}</x></presence>")
}

/// Enter `room` as `nick` with these children in the `<x xmlns='…muc'/>` (password, history);
/// returns the presence and the groupchat messages with a body or a subject that the room sent,
/// up to and including the subject, the last step of a join (7.1). Panics on a presence error.
/// Other messages from the room (an invitation, a configuration notice, 10.2.1) stay queued.
async fn join_with(c: &mut Client, room: &str, nick: &str, x_inner: &str) -> Vec<Element> {
    c.send(&join_presence(room, nick, x_inner)).await;
    let mut got = Vec::new();
    loop {
        let e = wait(c, &format!("the whole join of {room}/{nick} (it ends with the subject, 7.1); so far {got:?}"), |e| {
            from_room(e, room)
                && (e.name == "presence"
                    || (e.name == "message"
                        && e.get_attr("type") == Some("groupchat")
                        && (body(e).is_some() || e.find("subject", ns::CLIENT).is_some())))
        })
        .await;
        if e.name == "presence" && e.get_attr("type") == Some("error") {
            panic!("joining {room} as {nick} was refused: {e}");
        }
        let done = is_subject(&e, room);
        got.push(e);
        if done {
            return got;
        }
    }
}

async fn join(c: &mut Client, room: &str, nick: &str) -> Vec<Element> {
    join_with(c, room, nick, "").await
}

/// Try to enter; the room must refuse. Returns the presence error.
async fn join_error(c: &mut Client, room: &str, nick: &str, x_inner: &str) -> Element {
    c.send(&join_presence(room, nick, x_inner)).await;
    let e = wait(c, &format!("an answer to joining {room} as {nick}"), |e| {
        e.name == "presence" && from_room(e, room) && (e.get_attr("type") == Some("error") || has_code(e, "110"))
    })
    .await;
    assert_eq!(e.get_attr("type"), Some("error"), "joining {room} as {nick} should have been refused: {e}");
    e
}

/// The self-presence (status 110) among the stanzas of a join.
fn self_presence(join: &[Element]) -> &Element {
    join.iter()
        .find(|e| e.name == "presence" && e.get_attr("type").is_none() && has_code(e, "110"))
        .unwrap_or_else(|| panic!("no self-presence (status 110) in the join: {join:?}"))
}

/// The history messages of a join: those between the self-presence and the subject.
fn history(join: &[Element]) -> Vec<Element> {
    let me = join.iter().position(|e| e.name == "presence" && has_code(e, "110")).expect("self-presence");
    join[me + 1..join.len() - 1].to_vec()
}

fn bodies(msgs: &[Element]) -> Vec<String> {
    msgs.iter().map(|m| body(m).unwrap_or_default()).collect()
}

async fn owner_iq(c: &mut Client, room: &str, typ: &str, inner: &str) -> Element {
    let id = c.id();
    c.iq(&format!("<iq type='{typ}' to='{room}' id='{id}'><query xmlns='{MUC_OWNER}'>{inner}</query></iq>")).await
}

async fn admin_iq(c: &mut Client, room: &str, typ: &str, inner: &str) -> Element {
    let id = c.id();
    c.iq(&format!("<iq type='{typ}' to='{room}' id='{id}'><query xmlns='{MUC_ADMIN}'>{inner}</query></iq>")).await
}

/// A muc#admin set that must succeed.
async fn admin_ok(c: &mut Client, room: &str, inner: &str) {
    let r = admin_iq(c, room, "set", inner).await;
    assert_eq!(r.get_attr("type"), Some("result"), "muc#admin set {inner}: {r}");
}

/// A submitted muc#roomconfig form with these fields.
fn config_form(fields: &[(&str, &str)]) -> String {
    let mut x = format!("<x xmlns='{XDATA}' type='submit'><field var='FORM_TYPE'><value>{ROOMCONFIG}</value></field>");
    for (var, value) in fields {
        x.push_str(&format!("<field var='{var}'><value>{value}</value></field>"));
    }
    x.push_str("</x>");
    x
}

/// The owner submits a configuration (10.1.3, 10.2); it must be accepted.
async fn configure(c: &mut Client, room: &str, fields: &[(&str, &str)]) {
    let r = owner_iq(c, room, "set", &config_form(fields)).await;
    assert_eq!(r.get_attr("type"), Some("result"), "configuring {room} with {fields:?}: {r}");
}

/// The owner accepts the default configuration (10.1.2).
async fn instant(c: &mut Client, room: &str) {
    let r = owner_iq(c, room, "set", &format!("<x xmlns='{XDATA}' type='submit'/>")).await;
    assert_eq!(r.get_attr("type"), Some("result"), "instant room {room}: {r}");
}

/// Create `room` (the join must report 201) and unlock it with this configuration; an empty
/// list makes an instant room.
async fn create_with(c: &mut Client, room: &str, nick: &str, fields: &[(&str, &str)]) -> Vec<Element> {
    let j = join(c, room, nick).await;
    assert!(has_code(self_presence(&j), "201"), "{room} should have been new (status 201): {j:?}");
    if fields.is_empty() {
        instant(c, room).await;
    } else {
        configure(c, room, fields).await;
    }
    j
}

async fn create(c: &mut Client, room: &str, nick: &str) -> Vec<Element> {
    create_with(c, room, nick, &[]).await
}

/// The current configuration form (10.2).
async fn config_get(c: &mut Client, room: &str) -> Element {
    let r = owner_iq(c, room, "get", "").await;
    assert_eq!(r.get_attr("type"), Some("result"), "config form of {room}: {r}");
    r.find("query", MUC_OWNER).and_then(|q| q.find("x", XDATA)).cloned().unwrap_or_else(|| panic!("10.2: a data form: {r}"))
}

fn field<'a>(form: &'a Element, var: &str) -> Option<&'a Element> {
    form.elements().find(|f| f.is("field", XDATA) && f.get_attr("var") == Some(var))
}

fn field_value(form: &Element, var: &str) -> Option<String> {
    field(form, var).and_then(|f| f.find("value", XDATA)).map(|v| v.text_content())
}

/// Leave with unavailable presence (7.14); returns the room's self-presence about it.
async fn leave(c: &mut Client, room: &str, nick: &str) -> Element {
    let me = occ(room, nick);
    c.send(&format!("<presence to='{me}' type='unavailable'/>")).await;
    wait(c, "the self-presence of leaving", |e| is_presence(e, &me, Some("unavailable")) && has_code(e, "110")).await
}

async fn say(c: &mut Client, room: &str, text: &str) {
    c.send(&format!("<message to='{room}' type='groupchat'><body>{text}</body></message>")).await;
}

/// Send a groupchat message and wait for its reflection to the sender.
async fn say_and_see(c: &mut Client, room: &str, nick: &str, text: &str) -> Element {
    say(c, room, text).await;
    let me = occ(room, nick);
    wait(c, &format!("the reflection of '{text}'"), |e| is_groupchat(e, &me, text)).await
}

async fn disco(c: &mut Client, to: &str, what: &str) -> Element {
    let id = c.id();
    let r = c.iq(&format!("<iq type='get' to='{to}' id='{id}'><query xmlns='{what}'/></iq>")).await;
    assert_eq!(r.get_attr("type"), Some("result"), "{what} of {to}: {r}");
    assert_eq!(r.get_attr("from"), Some(to), "the answer comes from {to}: {r}");
    r.find("query", what).cloned().unwrap_or_else(|| panic!("{what} result without a query: {r}"))
}

fn features(info: &Element) -> Vec<String> {
    info.elements().filter(|f| f.is("feature", ns::DISCO_INFO)).filter_map(|f| f.get_attr("var").map(String::from)).collect()
}

fn has_identity(info: &Element, category: &str, typ: &str) -> bool {
    info.elements().any(|i| i.is("identity", ns::DISCO_INFO) && i.get_attr("category") == Some(category) && i.get_attr("type") == Some(typ))
}

fn item_jids(items: &Element) -> Vec<String> {
    items.elements().filter(|i| i.is("item", ns::DISCO_ITEMS)).filter_map(|i| i.get_attr("jid").map(String::from)).collect()
}

/// Items of a muc#admin list result (jid, affiliation).
fn admin_items(r: &Element) -> Vec<(String, String)> {
    let q = r.find("query", MUC_ADMIN).unwrap_or_else(|| panic!("a muc#admin list: {r}"));
    let mut v: Vec<(String, String)> = q
        .elements()
        .filter(|i| i.is("item", MUC_ADMIN))
        .map(|i| (i.get_attr("jid").unwrap_or_default().to_string(), i.get_attr("affiliation").unwrap_or_default().to_string()))
        .collect();
    v.sort();
    v
}

async fn member_list(c: &mut Client, room: &str) -> Vec<(String, String)> {
    let r = admin_iq(c, room, "get", "<item affiliation='member'/>").await;
    assert_eq!(r.get_attr("type"), Some("result"), "member list of {room}: {r}");
    admin_items(&r)
}

/// An invitation from the room (7.8.2).
fn invite_of(e: &Element, room: &str) -> Option<Element> {
    if e.name != "message" || e.get_attr("from") != Some(room) {
        return None;
    }
    e.find("x", MUC_USER)?.find("invite", MUC_USER).cloned()
}

fn mediated_invite(room: &str, to: &str, reason: &str) -> String {
    format!("<message to='{room}' id='inv'><x xmlns='{MUC_USER}'><invite to='{to}'><reason>{reason}</reason></invite></x></message>")
}

/// A MAM query at the room (XEP-0313): the forwarded messages with their archive ids and the
/// `<fin/>`, or the error.
async fn room_mam(c: &mut Client, room: &str) -> Result<(Vec<(String, Element)>, Element), Element> {
    let qid = c.id();
    c.send(&format!("<iq type='set' to='{room}' id='{qid}'><query xmlns='{MAM}' queryid='{qid}'/></iq>")).await;
    let mut results = Vec::new();
    loop {
        let e = wait(c, "archive results", |e| {
            (e.name == "message" && e.find("result", MAM).is_some_and(|r| r.get_attr("queryid") == Some(qid.as_str())))
                || (e.name == "iq" && e.get_attr("id") == Some(qid.as_str()))
        })
        .await;
        if e.name == "iq" {
            if e.get_attr("type") != Some("result") {
                return Err(e);
            }
            return Ok((results, e.find("fin", MAM).cloned().unwrap_or_else(|| panic!("XEP-0313 4: the result holds <fin/>: {e}"))));
        }
        // XEP-0313 3.3.2: the room's archive is at the room's bare JID; results come from it.
        assert_eq!(e.get_attr("from"), Some(room), "archive results come from the room: {e}");
        let r = e.find("result", MAM).unwrap();
        let fwd = r.find("forwarded", FWD).unwrap_or_else(|| panic!("XEP-0313 4.1: <forwarded/>: {e}"));
        assert!(fwd.find("delay", ns::DELAY).and_then(|d| d.get_attr("stamp")).is_some(), "a delay stamp: {e}");
        let m = fwd.find("message", ns::CLIENT).unwrap_or_else(|| panic!("the forwarded message: {e}")).clone();
        results.push((r.get_attr("id").unwrap_or_else(|| panic!("a result id: {e}")).to_string(), m));
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Service discovery (6.1 - 6.3)
// ---------------------------------------------------------------------------------------------

mod discovery {
    use super::*;

    async fn service_disco_info_is_a_text_conference_service(db: Db) {
        let s = server(db, &["alice"]).await;
        let mut a = online(&s, "alice").await;
        // 6.2: "The service MUST return its identity and the features it supports."
        let info = disco(&mut a, SERVICE, ns::DISCO_INFO).await;
        assert!(has_identity(&info, "conference", "text"), "6.2: identity conference/text: {info}");
        assert!(features(&info).iter().any(|f| f == MUC), "6.2: feature {MUC}: {info}");
        s.stop().await;
    }

    async fn server_items_list_the_service(db: Db) {
        let s = server(db, &["alice"]).await;
        let mut a = online(&s, "alice").await;
        // 6.1: an entity discovers the MUC service with disco#items to its own server.
        let items = disco(&mut a, "localhost", ns::DISCO_ITEMS).await;
        assert!(item_jids(&items).iter().any(|j| j == SERVICE), "6.1: the server lists {SERVICE}: {items}");
        s.stop().await;
    }

    async fn service_items_list_public_rooms_only(db: Db) {
        let s = server(db, &["alice"]).await;
        let mut a = online(&s, "alice").await;
        let (public, hidden) = (room("lounge"), room("hideout"));
        create_with(&mut a, &public, "alice", &[("muc#roomconfig_publicroom", "1"), ("muc#roomconfig_persistentroom", "1")]).await;
        create_with(&mut a, &hidden, "alice", &[("muc#roomconfig_publicroom", "0"), ("muc#roomconfig_persistentroom", "1")]).await;
        // 6.3: "The service SHOULD return a full list of the public rooms it hosts (i.e., not
        // return any rooms that are hidden)."
        let items = disco(&mut a, SERVICE, ns::DISCO_ITEMS).await;
        let jids = item_jids(&items);
        assert!(jids.contains(&public), "6.3: the public room is listed: {items}");
        assert!(!jids.contains(&hidden), "6.3: the hidden room is not listed: {items}");
        s.stop().await;
    }

    crate::on_both!(service_disco_info_is_a_text_conference_service, server_items_list_the_service, service_items_list_public_rooms_only);
}

// ---------------------------------------------------------------------------------------------
// 2. Creating and entering a room (7.1, 7.2, 10.1)
// ---------------------------------------------------------------------------------------------

mod enter {
    use super::*;

    async fn first_join_creates_the_room_with_the_creator_as_owner(db: Db) {
        let s = server(db, &["alice"]).await;
        let mut a = online(&s, "alice").await;
        let r = room("coven");
        let j = join(&mut a, &r, "firstwitch").await;
        // 10.1.1: "The initial presence stanza received by the owner from the room MUST include
        // extended presence information indicating the user's status as an owner and
        // acknowledging that the room has been created (via status code 201)".
        let me = self_presence(&j);
        assert_eq!(me.get_attr("from"), Some(occ(&r, "firstwitch").as_str()), "{me}");
        assert_eq!(item_attr(me, "affiliation"), Some("owner"), "10.1.1: {me}");
        assert_eq!(item_attr(me, "role"), Some("moderator"), "10.1.1: {me}");
        assert!(has_code(me, "201") && has_code(me, "110"), "10.1.1: status codes 201 and 110: {me}");
        // 7.1 / 7.2.15: the subject comes last, for the creator too.
        assert!(is_subject(j.last().unwrap(), &r), "7.2.15: {j:?}");
        s.stop().await;
    }

    async fn locked_room_refuses_others_until_configured(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("coven");
        join(&mut a, &r, "alice").await;
        // 7.2.10: while locked, "the service MUST refuse entry and return an item-not-found".
        let e = join_error(&mut b, &r, "bob", "").await;
        assert_error(&e, "item-not-found", "cancel", "7.2.10 (locked room)");
        // 10.1.2: an empty submitted form makes an instant room: result, and the room is open.
        instant(&mut a, &r).await;
        let j = join(&mut b, &r, "bob").await;
        let me = self_presence(&j);
        assert!(!has_code(me, "201"), "bob did not create the room: {me}");
        // 5.1.2: no affiliation in an unmoderated room: participant.
        assert_eq!(item_attr(me, "affiliation"), Some("none"), "{me}");
        assert_eq!(item_attr(me, "role"), Some("participant"), "5.1.2: {me}");
        s.stop().await;
    }

    async fn join_order_is_occupants_self_history_subject(db: Db) {
        let s = server(db, &["alice", "bob", "carol"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let mut c = online(&s, "carol").await;
        let r = room("order");
        create(&mut a, &r, "alice").await;
        join(&mut b, &r, "bob").await;
        say_and_see(&mut a, &r, "alice", "m1").await;
        a.send(&format!("<message to='{r}' type='groupchat'><subject>Topic</subject></message>")).await;
        wait(&mut b, "the subject change", |e| is_subject(e, &r) && subject_text(e) == "Topic").await;

        let j = join(&mut c, &r, "carol").await;
        // 7.1: occupants' presence, then self-presence, then history, then the subject.
        let me = j.iter().position(|e| e.name == "presence" && has_code(e, "110")).expect("self-presence");
        assert_eq!(j[me].get_attr("from"), Some(occ(&r, "carol").as_str()), "{}", j[me]);
        let mut others: Vec<&str> = j[..me].iter().filter(|e| e.name == "presence").filter_map(|e| e.get_attr("from")).collect();
        others.sort();
        assert_eq!(others, [occ(&r, "alice"), occ(&r, "bob")], "7.2.2: one presence per occupant, before the self-presence: {j:?}");
        assert!(j[..me].iter().all(|e| e.name == "presence"), "7.1: only presence before the self-presence: {j:?}");
        assert!(j[me + 1..].iter().all(|e| e.name == "message"), "7.2.2: no presence after the self-presence: {j:?}");
        let alice = j.iter().find(|e| e.get_attr("from") == Some(occ(&r, "alice").as_str())).unwrap();
        assert_eq!((item_attr(alice, "affiliation"), item_attr(alice, "role")), (Some("owner"), Some("moderator")), "7.2.2: {alice}");
        assert_eq!(j[me].elements().filter(|x| x.is("x", MUC_USER)).count(), 1, "7.2.2: one muc#user <x/>: {}", j[me]);
        // 7.2.13: the history ("m1"), each with a delay from the room; the subject change is not history.
        let h = history(&j);
        assert_eq!(bodies(&h), ["m1"], "7.2.13: {j:?}");
        // 7.2.15: the subject is last; nothing more follows from the join.
        let last = j.last().unwrap();
        assert_eq!(subject_text(last), "Topic", "7.2.15: {last}");
        absent(&mut c, &r, "anything after the subject", |e| from_room(e, &r)).await;
        s.stop().await;
    }

    async fn occupants_receive_the_joiners_presence(db: Db) {
        let s = server(db, &["alice", "bob", "carol"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let mut c = online(&s, "carol").await;
        let r = room("coven");
        create(&mut a, &r, "alice").await;
        join(&mut b, &r, "bob").await;
        join(&mut c, &r, "carol").await;
        // 7.2.2: "the service MUST also send presence from the new participant's occupant JID to
        // the full JIDs of all the occupants", with role and affiliation, without status 110.
        let carol = occ(&r, "carol");
        for x in [&mut a, &mut b] {
            let p = wait(x, "carol's presence", |e| is_presence(e, &carol, None)).await;
            assert_eq!((item_attr(&p, "affiliation"), item_attr(&p, "role")), (Some("none"), Some("participant")), "7.2.2: {p}");
            assert!(!has_code(&p, "110"), "110 is for the joiner alone: {p}");
        }
        s.stop().await;
    }

    async fn empty_subject_when_none_is_set(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("quiet");
        create(&mut a, &r, "alice").await;
        let j = join(&mut b, &r, "bob").await;
        // 7.2.15: "If there is no subject set, the room MUST return an empty <subject/>", from
        // the room JID (or an occupant JID), with no body.
        let last = j.last().unwrap();
        assert_eq!(last.get_attr("type"), Some("groupchat"), "{last}");
        assert!(from_room(last, &r), "{last}");
        assert_eq!(subject_text(last), "", "7.2.15: empty subject: {last}");
        assert!(body(last).is_none(), "7.2.15: no body: {last}");
        s.stop().await;
    }

    async fn join_without_nick_is_jid_malformed(db: Db) {
        let s = server(db, &["alice"]).await;
        let mut a = online(&s, "alice").await;
        let r = room("coven");
        a.send(&format!("<presence to='{r}'><x xmlns='{MUC}'/></presence>")).await;
        // 7.2.1: "If the user does not specify a room nickname ... the service MUST return a
        // jid-malformed error".
        let e = wait(&mut a, "an error for the join without nick", |e| e.name == "presence" && from_room(e, &r)).await;
        assert_error(&e, "jid-malformed", "modify", "7.2.1");
        s.stop().await;
    }

    async fn nick_taken_by_another_user_is_conflict(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("coven");
        create(&mut a, &r, "witch").await;
        // 7.2.8: another user with the nick in use: conflict.
        let e = join_error(&mut b, &r, "witch", "").await;
        assert_error(&e, "conflict", "cancel", "7.2.8");
        absent(&mut a, &r, "a presence about bob", |e| e.name == "presence" && e.get_attr("from") == Some(occ(&r, "witch").as_str())).await;
        s.stop().await;
    }

    crate::on_both!(
        first_join_creates_the_room_with_the_creator_as_owner,
        locked_room_refuses_others_until_configured,
        join_order_is_occupants_self_history_subject,
        occupants_receive_the_joiners_presence,
        empty_subject_when_none_is_set,
        join_without_nick_is_jid_malformed,
        nick_taken_by_another_user_is_conflict,
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Messages: groupchat, history, subject, private messages (7.2.13-7.5, 8.1)
// ---------------------------------------------------------------------------------------------

mod messages {
    use super::*;

    /// alice (owner), bob and carol in `r`.
    async fn three(s: &TestServer, r: &str, fields: &[(&str, &str)]) -> (Client, Client, Client) {
        let mut a = online(s, "alice").await;
        let mut b = online(s, "bob").await;
        let mut c = online(s, "carol").await;
        create_with(&mut a, r, "alice", fields).await;
        join(&mut b, r, "bob").await;
        join(&mut c, r, "carol").await;
        (a, b, c)
    }

    async fn groupchat_is_reflected_to_all_with_one_stanza_id(db: Db) {
        let s = server(db, &["alice", "bob", "carol"]).await;
        let r = room("coven");
        let (mut a, mut b, mut c) = three(&s, &r, &[]).await;
        b.send(&format!("<message to='{r}' type='groupchat' id='b1'><body>hail</body></message>")).await;
        // 7.4: reflected to every occupant, the sender included, from the sender's occupant JID.
        let from = occ(&r, "bob");
        let mut ids = Vec::new();
        for (who, x) in [("alice", &mut a), ("bob", &mut b), ("carol", &mut c)] {
            let m = wait(x, "bob's message", |e| is_groupchat(e, &from, "hail")).await;
            // XEP-0313 3.5 / XEP-0359: one stanza-id by the room.
            let sid = stanza_ids(&m, &r);
            assert_eq!(sid.len(), 1, "{who}: one <stanza-id by='{r}'/>: {m}");
            ids.push(sid[0].clone());
            if who == "bob" {
                // 7.4: "The service SHOULD reflect the message with the same 'id' that was
                // generated by the client".
                assert_eq!(m.get_attr("id"), Some("b1"), "7.4: the sender's id in the echo: {m}");
            }
        }
        assert!(ids.iter().all(|i| *i == ids[0]), "one message, one stanza id for every recipient: {ids:?}");
        s.stop().await;
    }

    async fn a_senders_stanza_id_for_the_room_is_replaced(db: Db) {
        let s = server(db, &["alice", "bob", "carol"]).await;
        let r = room("coven");
        let (mut a, mut b, _c) = three(&s, &r, &[]).await;
        b.send(&format!("<message to='{r}' type='groupchat'><body>forged</body><stanza-id xmlns='{SID}' by='{r}' id='fake'/></message>"))
            .await;
        // XEP-0359 4 rule 2: the room deletes a stanza-id that claims to be its own.
        let m = wait(&mut a, "bob's message", |e| is_groupchat(e, &occ(&r, "bob"), "forged")).await;
        let sid = stanza_ids(&m, &r);
        assert_eq!(sid.len(), 1, "XEP-0359: at most one stanza-id by the room: {m}");
        assert_ne!(sid[0], "fake", "XEP-0359: the client's stanza-id is removed: {m}");
        s.stop().await;
    }

    async fn non_occupant_groupchat_is_not_acceptable(db: Db) {
        let s = server(db, &["alice", "bob", "dave"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let mut d = online(&s, "dave").await;
        let r = room("coven");
        create(&mut a, &r, "alice").await;
        join(&mut b, &r, "bob").await;
        d.send(&format!("<message to='{r}' type='groupchat' id='x1'><body>let me in</body></message>")).await;
        // 7.4: "If the sender is not an occupant of the room, the service SHOULD return a
        // not-acceptable error to the sender and SHOULD NOT reflect the message".
        let e = wait(&mut d, "an error for x1", |e| e.name == "message" && e.get_attr("id") == Some("x1")).await;
        assert_error(&e, "not-acceptable", "modify", "7.4 (non-occupant)");
        for x in [&mut a, &mut b] {
            absent(x, &r, "dave's message", |e| e.name == "message" && body(e).as_deref() == Some("let me in")).await;
        }
        s.stop().await;
    }

    async fn history_is_sent_on_join_with_delay_from_the_room(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("coven");
        create(&mut a, &r, "alice").await;
        for m in ["m1", "m2", "m3"] {
            say_and_see(&mut a, &r, "alice", m).await;
        }
        let j = join(&mut b, &r, "bob").await;
        let h = history(&j);
        assert_eq!(bodies(&h), ["m1", "m2", "m3"], "7.2.13: the history, in order: {j:?}");
        for m in &h {
            assert_eq!(m.get_attr("type"), Some("groupchat"), "{m}");
            assert_eq!(m.get_attr("from"), Some(occ(&r, "alice").as_str()), "7.2.13: from the sender's occupant JID: {m}");
            // 7.2.13: "Discussion history messages MUST be stamped with XEP-0203 ... The 'from'
            // attribute MUST be set to the JID of the room itself."
            let d = m.find("delay", ns::DELAY).unwrap_or_else(|| panic!("7.2.13: a delay: {m}"));
            assert_eq!(d.get_attr("from"), Some(r.as_str()), "7.2.13: {m}");
            assert!(d.get_attr("stamp").is_some(), "XEP-0203: a stamp: {m}");
        }
        s.stop().await;
    }

    async fn history_is_limited_by_maxstanzas_and_maxchars(db: Db) {
        let s = server(db, &["alice", "bob", "carol", "dave"]).await;
        let mut a = online(&s, "alice").await;
        let r = room("coven");
        create(&mut a, &r, "alice").await;
        for i in 1..=5 {
            say_and_see(&mut a, &r, "alice", &format!("m{i}")).await;
        }
        // 7.2.14: maxstanzas limits the number of messages: the last two.
        let mut b = online(&s, "bob").await;
        let j = join_with(&mut b, &r, "bob", "<history maxstanzas='2'/>").await;
        assert_eq!(bodies(&history(&j)), ["m4", "m5"], "7.2.14 maxstanzas='2': {j:?}");
        let mut c = online(&s, "carol").await;
        let j = join_with(&mut c, &r, "carol", "<history maxstanzas='0'/>").await;
        assert!(history(&j).is_empty(), "7.2.14 maxstanzas='0': no history: {j:?}");
        // 7.2.14: "If the client wishes to receive no history, it MUST set the 'maxchars'
        // attribute to a value of "0" (zero)."
        let mut d = online(&s, "dave").await;
        let j = join_with(&mut d, &r, "dave", "<history maxchars='0'/>").await;
        assert!(history(&j).is_empty(), "7.2.14 maxchars='0': no history: {j:?}");
        s.stop().await;
    }

    async fn subject_change_is_broadcast_and_given_to_later_joiners(db: Db) {
        let s = server(db, &["alice", "bob", "carol", "dave"]).await;
        let r = room("coven");
        let (mut a, mut b, mut c) = three(&s, &r, &[("muc#roomconfig_changesubject", "1")]).await;
        b.send(&format!("<message to='{r}' type='groupchat'><subject>Fire Burn</subject></message>")).await;
        // 8.1: "The MUC service MUST reflect the message to all other occupants with a 'from'
        // address equal to the room JID or to the occupant JID that corresponds to the sender".
        for x in [&mut a, &mut c] {
            let m = wait(x, "the new subject", |e| is_subject(e, &r) && subject_text(e) == "Fire Burn").await;
            let from = m.get_attr("from").unwrap_or_default();
            assert!(from == r || from == occ(&r, "bob"), "8.1: from the room or bob's occupant JID: {m}");
        }
        let mut d = online(&s, "dave").await;
        let j = join(&mut d, &r, "dave").await;
        assert_eq!(subject_text(j.last().unwrap()), "Fire Burn", "7.2.15: the current subject ends the join: {j:?}");
        s.stop().await;
    }

    async fn subject_change_is_forbidden_when_occupants_may_not(db: Db) {
        let s = server(db, &["alice", "bob", "carol"]).await;
        let r = room("coven");
        let (mut a, mut b, _c) = three(&s, &r, &[("muc#roomconfig_changesubject", "0")]).await;
        b.send(&format!("<message to='{r}' type='groupchat' id='s1'><subject>Mine now</subject></message>")).await;
        // 8.1: "If someone without appropriate privileges attempts to change the room subject,
        // the service MUST return a message of type "error" specifying a forbidden error".
        let e = wait(&mut b, "an error for s1", |e| e.name == "message" && e.get_attr("id") == Some("s1")).await;
        assert_error(&e, "forbidden", "auth", "8.1");
        absent(&mut a, &r, "the refused subject", |e| is_subject(e, &r) && subject_text(e) == "Mine now").await;
        s.stop().await;
    }

    async fn private_message_reaches_the_occupant(db: Db) {
        let s = server(db, &["alice", "bob", "carol"]).await;
        let r = room("coven");
        let (mut a, mut b, mut c) = three(&s, &r, &[]).await;
        b.send(&format!("<message to='{}' type='chat' id='pm1'><body>psst</body></message>", occ(&r, "alice"))).await;
        // 7.5: delivered to the recipient's full JID, from the sender's occupant JID, with a
        // muc#user <x/> added.
        let m = wait(&mut a, "bob's private message", |e| e.name == "message" && body(e).as_deref() == Some("psst")).await;
        assert_eq!(m.get_attr("from"), Some(occ(&r, "bob").as_str()), "7.5: {m}");
        assert_eq!(m.get_attr("type"), Some("chat"), "{m}");
        assert!(m.find("x", MUC_USER).is_some(), "7.5: the service SHOULD add <x xmlns='{MUC_USER}'/>: {m}");
        absent(&mut c, &r, "bob's private message", |e| body(e).as_deref() == Some("psst")).await;
        s.stop().await;
    }

    async fn private_message_to_an_absent_nick_is_item_not_found(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("coven");
        create(&mut a, &r, "alice").await;
        join(&mut b, &r, "bob").await;
        b.send(&format!("<message to='{}' type='chat' id='pm2'><body>anyone?</body></message>", occ(&r, "nobody"))).await;
        // 7.5: "If the sender attempts to send a private message to an occupant JID that does
        // not exist, the service MUST return an item-not-found error".
        let e = wait(&mut b, "an error for pm2", |e| e.name == "message" && e.get_attr("id") == Some("pm2")).await;
        assert_eq!(e.get_attr("type"), Some("error"), "{e}");
        assert_eq!(error_condition(&e).as_deref(), Some("item-not-found"), "7.5: {e}");
        s.stop().await;
    }

    async fn private_message_of_type_groupchat_is_bad_request(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("coven");
        create(&mut a, &r, "alice").await;
        join(&mut b, &r, "bob").await;
        b.send(&format!("<message to='{}' type='groupchat' id='pm3'><body>wind</body></message>", occ(&r, "alice"))).await;
        // 7.5: "the service MUST refuse to deliver the message ... and return a bad-request".
        let e = wait(&mut b, "an error for pm3", |e| e.name == "message" && e.get_attr("id") == Some("pm3")).await;
        assert_error(&e, "bad-request", "modify", "7.5 (type groupchat to an occupant)");
        absent(&mut a, &r, "the refused message", |e| e.name == "message" && body(e).as_deref() == Some("wind")).await;
        s.stop().await;
    }

    /// A query to an occupant JID (a vCard, as clients ask for avatars) is relayed to the
    /// occupant from the asker's occupant JID, and the answer comes back to the asker from the
    /// answerer's occupant JID with the asker's id; real JIDs stay hidden both ways.
    async fn queries_to_occupants_are_relayed_both_ways(db: Db) {
        let s = server(db, &["alice", "bob", "carol"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let mut c = online(&s, "carol").await;
        let r = room("coven");
        create(&mut a, &r, "alice").await;
        instant(&mut a, &r).await;
        join(&mut b, &r, "bob").await;
        a.send(&format!("<iq type='get' id='v1' to='{}'><vCard xmlns='vcard-temp'/></iq>", occ(&r, "bob"))).await;
        let q = wait(&mut b, "the relayed query", |e| e.name == "iq" && e.get_attr("type") == Some("get")).await;
        assert_eq!(q.get_attr("from"), Some(occ(&r, "alice").as_str()), "{q}");
        assert!(q.find("vCard", "vcard-temp").is_some(), "{q}");
        let id = q.get_attr("id").unwrap().to_string();
        b.send(&format!("<iq type='result' id='{id}' to='{}'><vCard xmlns='vcard-temp'><FN>Bob</FN></vCard></iq>", occ(&r, "alice"))).await;
        let answer = wait(&mut a, "the answer", |e| e.name == "iq" && e.get_attr("id") == Some("v1")).await;
        assert_eq!(answer.get_attr("type"), Some("result"), "{answer}");
        assert_eq!(answer.get_attr("from"), Some(occ(&r, "bob").as_str()), "{answer}");
        assert_eq!(
            answer.find("vCard", "vcard-temp").and_then(|v| v.find("FN", "vcard-temp")).map(|v| v.text_content()).as_deref(),
            Some("Bob"),
            "{answer}"
        );
        // Not relayed for someone outside the room (XEP-0410's not-acceptable).
        c.send(&format!("<iq type='get' id='v2' to='{}'><vCard xmlns='vcard-temp'/></iq>", occ(&r, "bob"))).await;
        let e = wait(&mut c, "an error for v2", |e| e.name == "iq" && e.get_attr("id") == Some("v2")).await;
        assert_error(&e, "not-acceptable", "modify", "a non-occupant's query to an occupant");
        // A forged answer (wrong id, or from someone else) goes nowhere.
        c.send(&format!("<iq type='result' id='{id}' to='{}'/>", occ(&r, "alice"))).await;
        absent(&mut a, &r, "an answer nobody was asked for", |e| {
            e.name == "iq" && e.get_attr("type") == Some("result") && e.get_attr("from") == Some(occ(&r, "bob").as_str())
        })
        .await;
        s.stop().await;
    }

    /// XEP-0421: presences and messages of an occupant carry one occupant id, the same after a
    /// nick change and a rejoin, another for another account and in another room; one forged by
    /// the sender is replaced.
    async fn occupant_ids_are_stable_and_unforgeable(db: Db) {
        const OID: &str = "urn:xmpp:occupant-id:0";
        let oid = |e: &Element| -> Vec<String> {
            e.elements().filter(|c| c.is("occupant-id", OID)).filter_map(|c| c.get_attr("id").map(String::from)).collect()
        };
        let s = server(db, &["alice", "bob"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("ids");
        create(&mut a, &r, "alice").await;
        let j = join(&mut b, &r, "bob").await;
        let bob_id = oid(self_presence(&j));
        assert_eq!(bob_id.len(), 1, "one occupant id in the presence: {j:?}");
        let alice_seen = j.iter().find(|e| e.get_attr("from") == Some(occ(&r, "alice").as_str())).expect("alice's presence");
        assert_eq!(oid(alice_seen).len(), 1, "{alice_seen}");
        assert_ne!(oid(alice_seen), bob_id, "another account, another id");
        b.send(&format!("<message to='{r}' type='groupchat'><body>hi</body><occupant-id xmlns='{OID}' id='forged'/></message>")).await;
        let m = wait(&mut a, "bob's message", |e| is_groupchat(e, &occ(&r, "bob"), "hi")).await;
        assert_eq!(oid(&m), bob_id, "the room's id replaces the forged one: {m}");
        b.send(&format!("<presence to='{}'/>", occ(&r, "robert"))).await;
        let p = wait(&mut a, "robert's presence", |e| is_presence(e, &occ(&r, "robert"), None)).await;
        assert_eq!(oid(&p), bob_id, "the same id under a new nick: {p}");
        leave(&mut b, &r, "robert").await;
        let j = join(&mut b, &r, "bobby").await;
        assert_eq!(oid(self_presence(&j)), bob_id, "the same id after rejoining");
        let other = room("elsewhere");
        let j = create(&mut b, &other, "bob").await;
        assert_ne!(oid(self_presence(&j)), bob_id, "another room, another id");
        let info = disco(&mut a, &r, ns::DISCO_INFO).await;
        assert!(features(&info).iter().any(|f| f == OID), "{info}");
        s.stop().await;
    }

    /// XEP-0425: a moderator retracts a message by its stanza-id; every occupant gets the
    /// retraction (from the room, naming the moderator), the archive keeps a tombstone without
    /// the body, later joiners do not get it in their history, and the retraction itself is in
    /// the archive for clients that sync later. Others may not; unknown ids are item-not-found.
    async fn a_moderator_retracts_a_message(db: Db) {
        const MOD: &str = "urn:xmpp:message-moderate:1";
        const RETRACT: &str = "urn:xmpp:message-retract:1";
        let s = server(db, &["alice", "bob", "carol"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("tidy");
        create(&mut a, &r, "alice").await;
        join(&mut b, &r, "bob").await;
        let m = say_and_see(&mut b, &r, "bob", "buy cheap potions").await;
        let sid = stanza_ids(&m, &r).pop().expect("the room's stanza-id");
        let moderate = |id: &str| {
            format!("<iq type='set' to='{r}' id='mod-{id}'><moderate id='{id}' xmlns='{MOD}'><retract xmlns='{RETRACT}'/><reason>spam</reason></moderate></iq>")
        };
        // Bob is a participant: not allowed.
        let e = b.iq(&moderate(&sid)).await;
        assert_eq!(error_condition(&e).as_deref(), Some("forbidden"), "{e}");
        let e = a.iq(&moderate("nope")).await;
        assert_eq!(error_condition(&e).as_deref(), Some("item-not-found"), "{e}");
        let ok = a.iq(&moderate(&sid)).await;
        assert_eq!(ok.get_attr("type"), Some("result"), "{ok}");
        for (who, c) in [("alice", &mut a), ("bob", &mut b)] {
            let x = wait(c, "the retraction", |e| e.name == "message" && e.find("retract", RETRACT).is_some()).await;
            assert_eq!(x.get_attr("from"), Some(r.as_str()), "{who}: from the room itself: {x}");
            let rt = x.find("retract", RETRACT).unwrap();
            assert_eq!(rt.get_attr("id"), Some(sid.as_str()), "{who}: {x}");
            assert_eq!(rt.find("moderated", MOD).and_then(|m| m.get_attr("by")), Some(occ(&r, "alice").as_str()), "{who}: {x}");
            assert_eq!(rt.find("reason", RETRACT).map(|t| t.text_content()).as_deref(), Some("spam"), "{who}: {x}");
        }
        // The archive: a tombstone in place of the message, then the retraction.
        let id = a.id();
        a.send(&format!("<iq type='set' to='{r}' id='{id}'><query xmlns='{MAM}' queryid='q'/></iq>")).await;
        let mut found = Vec::new();
        loop {
            let e = wait(&mut a, "archive results", |e| {
                (e.name == "message" && e.find("result", MAM).is_some()) || e.get_attr("id") == Some(id.as_str())
            })
            .await;
            if e.name == "iq" {
                break;
            }
            found.push(
                e.find("result", MAM)
                    .and_then(|x| x.find("forwarded", FWD))
                    .and_then(|f| f.find("message", ns::CLIENT))
                    .cloned()
                    .expect("forwarded"),
            );
        }
        let tomb = found.iter().find(|m| stanza_ids(m, &r).contains(&sid)).unwrap_or_else(|| panic!("the tombstone: {found:?}"));
        assert!(body(tomb).is_none(), "no body left: {tomb}");
        assert!(tomb.find("retracted", RETRACT).and_then(|t| t.find("moderated", MOD)).is_some(), "{tomb}");
        assert!(found.iter().any(|m| m.find("retract", RETRACT).is_some()), "the retraction is archived too: {found:?}");
        // A later joiner's history has no trace of the body.
        let mut c = online(&s, "carol").await;
        let j = join(&mut c, &r, "carol").await;
        assert!(history(&j).iter().all(|m| body(m).as_deref() != Some("buy cheap potions")), "{j:?}");
        let info = disco(&mut a, &r, ns::DISCO_INFO).await;
        assert!(features(&info).iter().any(|f| f == MOD), "{info}");
        s.stop().await;
    }

    crate::on_both!(
        groupchat_is_reflected_to_all_with_one_stanza_id,
        a_moderator_retracts_a_message,
        occupant_ids_are_stable_and_unforgeable,
        queries_to_occupants_are_relayed_both_ways,
        a_senders_stanza_id_for_the_room_is_replaced,
        non_occupant_groupchat_is_not_acceptable,
        history_is_sent_on_join_with_delay_from_the_room,
        history_is_limited_by_maxstanzas_and_maxchars,
        subject_change_is_broadcast_and_given_to_later_joiners,
        subject_change_is_forbidden_when_occupants_may_not,
        private_message_reaches_the_occupant,
        private_message_to_an_absent_nick_is_item_not_found,
        private_message_of_type_groupchat_is_bad_request,
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Presence changes: nick, leaving, disconnection, status (7.6, 7.7, 7.14)
// ---------------------------------------------------------------------------------------------

mod presence {
    use super::*;

    /// alice (owner) and bob in `r`.
    async fn two(s: &TestServer, r: &str) -> (Client, Client) {
        let mut a = online(s, "alice").await;
        let mut b = online(s, "bob").await;
        create(&mut a, r, "alice").await;
        join(&mut b, r, "bob").await;
        wait(&mut a, "bob's arrival", |e| is_presence(e, &occ(r, "bob"), None)).await;
        (a, b)
    }

    async fn nick_change_is_unavailable_303_then_the_new_presence(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let r = room("coven");
        let (mut a, mut b) = two(&s, &r).await;
        let (old, new) = (occ(&r, "bob"), occ(&r, "robert"));
        b.send(&format!("<presence to='{new}'/>")).await;
        // 7.6: to every occupant, the changer included: unavailable for the old nick with status
        // 303 and the new nick in the item, then available presence from the new nick.
        for (who, x) in [("alice", &mut a), ("bob", &mut b)] {
            let first = wait(x, "the nick change", |e| is_presence(e, &old, Some("unavailable")) || is_presence(e, &new, None)).await;
            assert_eq!(first.get_attr("type"), Some("unavailable"), "7.6 ({who}): unavailable first: {first}");
            assert!(has_code(&first, "303"), "7.6 ({who}): status 303: {first}");
            assert_eq!(item_attr(&first, "nick"), Some("robert"), "7.6 ({who}): the new nick: {first}");
            assert_eq!(has_code(&first, "110"), who == "bob", "7.6 ({who}): 110 for the changer only: {first}");
            let p = wait(x, "the presence of the new nick", |e| is_presence(e, &new, None)).await;
            assert_eq!(has_code(&p, "110"), who == "bob", "7.6 ({who}): {p}");
        }
        s.stop().await;
    }

    async fn nick_change_to_a_taken_nick_is_conflict(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let r = room("coven");
        let (mut a, mut b) = two(&s, &r).await;
        b.send(&format!("<presence to='{}'/>", occ(&r, "alice"))).await;
        // 7.6: "the service MUST deny the nickname change request ... conflict".
        let e = wait(&mut b, "an answer to the nick change", |e| e.name == "presence" && e.get_attr("type") == Some("error")).await;
        assert_error(&e, "conflict", "cancel", "7.6");
        absent(&mut a, &r, "bob leaving", |e| is_presence(e, &occ(&r, "bob"), Some("unavailable"))).await;
        s.stop().await;
    }

    async fn leaving_sends_unavailable_to_the_leaver_and_the_others(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let r = room("coven");
        let (mut a, mut b) = two(&s, &r).await;
        // 7.14: the leaver gets unavailable with 110; role 'none' in every unavailable.
        let mine = leave(&mut b, &r, "bob").await;
        assert_eq!(item_attr(&mine, "role"), Some("none"), "7.14: {mine}");
        let theirs = wait(&mut a, "bob leaving", |e| is_presence(e, &occ(&r, "bob"), Some("unavailable"))).await;
        assert!(!has_code(&theirs, "110"), "{theirs}");
        assert_eq!(item_attr(&theirs, "role"), Some("none"), "7.14: {theirs}");
        s.stop().await;
    }

    async fn an_ended_stream_removes_the_occupant(db: Db) {
        let s = server(db, &["alice", "bob", "carol"]).await;
        let r = room("coven");
        let (mut a, b) = two(&s, &r).await;
        let mut c = online(&s, "carol").await;
        join(&mut c, &r, "carol").await;
        // 7.14: "If the user goes offline without sending unavailable presence, the user's
        // server is responsible for sending unavailable presence on behalf of the user".
        b.close().await;
        wait(&mut a, "bob gone after his stream closed", |e| is_presence(e, &occ(&r, "bob"), Some("unavailable"))).await;
        drop(c); // the TCP connection just drops
        wait(&mut a, "carol gone after her connection dropped", |e| is_presence(e, &occ(&r, "carol"), Some("unavailable"))).await;
        s.stop().await;
    }

    async fn status_changes_are_broadcast(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let r = room("coven");
        let (mut a, mut b) = two(&s, &r).await;
        let me = occ(&r, "bob");
        b.send(&format!("<presence to='{me}'><show>xa</show><status>gone where the goblins go</status></presence>")).await;
        // 7.7: sent to each occupant, with the muc#user item.
        for x in [&mut a, &mut b] {
            let p = wait(x, "bob's new status", |e| is_presence(e, &me, None) && e.find("show", ns::CLIENT).is_some()).await;
            assert_eq!(p.find("show", ns::CLIENT).map(|e| e.text_content()).as_deref(), Some("xa"), "7.7: {p}");
            assert_eq!(p.find("status", ns::CLIENT).map(|e| e.text_content()).as_deref(), Some("gone where the goblins go"), "7.7: {p}");
            assert_eq!(item_attr(&p, "role"), Some("participant"), "17.3 rule 8: role and affiliation in all presence: {p}");
        }
        s.stop().await;
    }

    crate::on_both!(
        nick_change_is_unavailable_303_then_the_new_presence,
        nick_change_to_a_taken_nick_is_conflict,
        leaving_sends_unavailable_to_the_leaver_and_the_others,
        an_ended_stream_removes_the_occupant,
        status_changes_are_broadcast,
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Configuration and access (6.4, 7.2.3-7.2.9, 7.4, 8.3, 10.2)
// ---------------------------------------------------------------------------------------------

mod config {
    use super::*;

    async fn owner_gets_the_configuration_form(db: Db) {
        let s = server(db, &["alice"]).await;
        let mut a = online(&s, "alice").await;
        let r = room("coven");
        create(&mut a, &r, "alice").await;
        // 10.2 / 16.5.3: a muc#roomconfig form.
        let form = config_get(&mut a, &r).await;
        assert_eq!(form.get_attr("type"), Some("form"), "{form}");
        assert_eq!(field_value(&form, "FORM_TYPE").as_deref(), Some(ROOMCONFIG), "{form}");
        for var in [
            "muc#roomconfig_roomname",
            "muc#roomconfig_persistentroom",
            "muc#roomconfig_publicroom",
            "muc#roomconfig_membersonly",
            "muc#roomconfig_moderatedroom",
            "muc#roomconfig_passwordprotectedroom",
            "muc#roomconfig_roomsecret",
            "muc#roomconfig_whois",
            "muc#roomconfig_changesubject",
            "muc#roomconfig_maxusers",
            "muc#roomconfig_allowinvites",
        ] {
            assert!(field(&form, var).is_some(), "the form has {var}: {form}");
        }
        s.stop().await;
    }

    async fn non_owner_configuration_get_is_forbidden(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("coven");
        create(&mut a, &r, "alice").await;
        join(&mut b, &r, "bob").await;
        // 10 / 5.2.1: configuration is the owner's alone.
        let e = owner_iq(&mut b, &r, "get", "").await;
        assert_eq!(error_condition(&e).as_deref(), Some("forbidden"), "{e}");
        s.stop().await;
    }

    async fn members_only_room_admits_members_alone(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("club");
        create_with(&mut a, &r, "alice", &[("muc#roomconfig_membersonly", "1")]).await;
        // 7.2.6: not on the member list: registration-required.
        let e = join_error(&mut b, &r, "bob", "").await;
        assert_error(&e, "registration-required", "auth", "7.2.6");
        // 9.3: the owner grants membership by bare JID; then bob may enter.
        admin_ok(&mut a, &r, "<item affiliation='member' jid='bob@localhost'/>").await;
        let j = join(&mut b, &r, "bob").await;
        assert_eq!(item_attr(self_presence(&j), "affiliation"), Some("member"), "{j:?}");
        s.stop().await;
    }

    async fn password_protected_room_needs_the_password(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("vault");
        create_with(&mut a, &r, "alice", &[("muc#roomconfig_passwordprotectedroom", "1"), ("muc#roomconfig_roomsecret", "cauldronburn")])
            .await;
        // 7.2.5: no password, or a wrong one: not-authorized.
        let e = join_error(&mut b, &r, "bob", "").await;
        assert_error(&e, "not-authorized", "auth", "7.2.5 (no password)");
        let e = join_error(&mut b, &r, "bob", "<password>toad</password>").await;
        assert_error(&e, "not-authorized", "auth", "7.2.5 (wrong password)");
        join_with(&mut b, &r, "bob", "<password>cauldronburn</password>").await;
        s.stop().await;
    }

    async fn full_room_is_service_unavailable(db: Db) {
        let s = server(db, &["alice"]).await;
        let mut a = online(&s, "alice").await;
        let r = room("tiny");
        join(&mut a, &r, "alice").await;
        // The smallest limit the form offers (a list-single in 10.1.3), else 2.
        let form = config_get(&mut a, &r).await;
        let offered: Vec<usize> = field(&form, "muc#roomconfig_maxusers")
            .map(|f| {
                f.elements().filter(|o| o.is("option", XDATA)).filter_map(|o| o.find("value", XDATA)?.text_content().parse().ok()).collect()
            })
            .unwrap_or_default();
        let limit = offered.into_iter().filter(|n| *n >= 1).min().unwrap_or(2);
        configure(&mut a, &r, &[("muc#roomconfig_maxusers", &limit.to_string())]).await;
        let mut clients = Vec::new();
        for i in 0..limit {
            let u = format!("user{i}");
            s.add_user(&u, PW).await;
            clients.push(s.online(&u, PW, "r").await);
        }
        // The owner is one occupant; limit - 1 more fill the room.
        for (i, c) in clients.iter_mut().enumerate().take(limit - 1) {
            join(c, &r, &format!("user{i}")).await;
        }
        // 7.2.9: "If the room has reached its maximum number of occupants, the service SHOULD
        // deny access to the room ... service-unavailable".
        let last = clients.last_mut().unwrap();
        let e = join_error(last, &r, "onetoomany", "").await;
        assert_error(&e, "service-unavailable", "wait", "7.2.9 (maxusers)");
        s.stop().await;
    }

    async fn non_anonymous_room_shows_real_jids_to_all(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("open");
        create_with(&mut a, &r, "alice", &[("muc#roomconfig_whois", "anyone")]).await;
        let j = join(&mut b, &r, "bob").await;
        // 7.2.3: status 100 warns the joiner; every occupant gets the full JIDs (17.3 rule 10).
        assert!(has_code(self_presence(&j), "100"), "7.2.3: status 100: {j:?}");
        let alice = j.iter().find(|e| is_presence(e, &occ(&r, "alice"), None)).unwrap_or_else(|| panic!("alice's presence: {j:?}"));
        assert_eq!(item_attr(alice, "jid"), Some(full(&a).as_str()), "7.2.3: {alice}");
        let p = wait(&mut a, "bob's presence", |e| is_presence(e, &occ(&r, "bob"), None)).await;
        assert_eq!(item_attr(&p, "jid"), Some(full(&b).as_str()), "7.2.3: {p}");
        s.stop().await;
    }

    async fn semi_anonymous_room_shows_real_jids_to_moderators_only(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("masked");
        create_with(&mut a, &r, "alice", &[("muc#roomconfig_whois", "moderators")]).await;
        let j = join(&mut b, &r, "bob").await;
        // 7.2.4: the full JID only in presence sent to moderators.
        assert!(!has_code(self_presence(&j), "100"), "not a non-anonymous room: {j:?}");
        let alice = j.iter().find(|e| is_presence(e, &occ(&r, "alice"), None)).unwrap_or_else(|| panic!("alice's presence: {j:?}"));
        assert_eq!(item_attr(alice, "jid"), None, "7.2.4: a participant does not see real JIDs: {alice}");
        let p = wait(&mut a, "bob's presence", |e| is_presence(e, &occ(&r, "bob"), None)).await;
        assert_eq!(item_attr(&p, "jid"), Some(full(&b).as_str()), "7.2.4: a moderator does: {p}");
        s.stop().await;
    }

    async fn moderated_room_needs_voice(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("stage");
        create_with(&mut a, &r, "alice", &[("muc#roomconfig_moderatedroom", "1")]).await;
        let j = join(&mut b, &r, "bob").await;
        // 5.1.2: no affiliation in a moderated room: visitor.
        assert_eq!(item_attr(self_presence(&j), "role"), Some("visitor"), "5.1.2: {j:?}");
        b.send(&format!("<message to='{r}' type='groupchat' id='v1'><body>may I?</body></message>")).await;
        // 7.4: "If the sender is a visitor ... the service MUST return a forbidden error".
        let e = wait(&mut b, "an error for v1", |e| e.name == "message" && e.get_attr("id") == Some("v1")).await;
        assert_eq!(error_condition(&e).as_deref(), Some("forbidden"), "7.4: {e}");
        absent(&mut a, &r, "the visitor's message", |e| e.name == "message" && body(e).as_deref() == Some("may I?")).await;
        // 8.3: voice is granted with role participant; everyone is told.
        admin_ok(&mut a, &r, "<item nick='bob' role='participant'/>").await;
        let bob = occ(&r, "bob");
        let p = wait(&mut a, "bob's new role", |e| is_presence(e, &bob, None) && item_attr(e, "role") == Some("participant")).await;
        assert_eq!(item_attr(&p, "role"), Some("participant"), "8.3: {p}");
        b.send(&format!("<message to='{r}' type='groupchat'><body>thank you</body></message>")).await;
        wait(&mut a, "bob's message once he has voice", |e| is_groupchat(e, &bob, "thank you")).await;
        s.stop().await;
    }

    async fn room_disco_info_follows_the_configuration(db: Db) {
        let s = server(db, &["alice"]).await;
        let mut a = online(&s, "alice").await;
        let r = room("coven");
        let check = |info: &Element, on: &[&str], off: &[&str]| {
            // 6.4: "The room MUST return its identity and SHOULD return the features it supports".
            assert!(has_identity(info, "conference", "text"), "6.4: {info}");
            let f = features(info);
            assert!(f.iter().any(|x| x == MUC), "6.4: {info}");
            for x in on {
                assert!(f.iter().any(|y| y == x), "6.4: {x} expected: {info}");
            }
            for x in off {
                assert!(!f.iter().any(|y| y == x), "6.4: {x} not expected: {info}");
            }
        };
        create_with(
            &mut a,
            &r,
            "alice",
            &[
                ("muc#roomconfig_persistentroom", "1"),
                ("muc#roomconfig_publicroom", "1"),
                ("muc#roomconfig_membersonly", "0"),
                ("muc#roomconfig_moderatedroom", "0"),
                ("muc#roomconfig_passwordprotectedroom", "0"),
                ("muc#roomconfig_whois", "anyone"),
            ],
        )
        .await;
        let info = disco(&mut a, &r, ns::DISCO_INFO).await;
        check(
            &info,
            &["muc_persistent", "muc_public", "muc_open", "muc_unmoderated", "muc_unsecured", "muc_nonanonymous"],
            &["muc_temporary", "muc_hidden", "muc_membersonly", "muc_moderated", "muc_passwordprotected", "muc_semianonymous"],
        );
        configure(
            &mut a,
            &r,
            &[
                ("muc#roomconfig_persistentroom", "0"),
                ("muc#roomconfig_publicroom", "0"),
                ("muc#roomconfig_membersonly", "1"),
                ("muc#roomconfig_moderatedroom", "1"),
                ("muc#roomconfig_passwordprotectedroom", "1"),
                ("muc#roomconfig_roomsecret", "cauldronburn"),
                ("muc#roomconfig_whois", "moderators"),
            ],
        )
        .await;
        let info = disco(&mut a, &r, ns::DISCO_INFO).await;
        check(
            &info,
            &["muc_temporary", "muc_hidden", "muc_membersonly", "muc_moderated", "muc_passwordprotected", "muc_semianonymous"],
            &["muc_persistent", "muc_public", "muc_open", "muc_unmoderated", "muc_unsecured", "muc_nonanonymous"],
        );
        s.stop().await;
    }

    crate::on_both!(
        owner_gets_the_configuration_form,
        non_owner_configuration_get_is_forbidden,
        members_only_room_admits_members_alone,
        password_protected_room_needs_the_password,
        full_room_is_service_unavailable,
        non_anonymous_room_shows_real_jids_to_all,
        semi_anonymous_room_shows_real_jids_to_moderators_only,
        moderated_room_needs_voice,
        room_disco_info_follows_the_configuration,
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Moderation and affiliations (8.2, 9.1, 9.5, 10.4, 10.6)
// ---------------------------------------------------------------------------------------------

mod moderation {
    use super::*;

    /// alice (owner), bob and carol in `r`.
    async fn three(s: &TestServer, r: &str) -> (Client, Client, Client) {
        let mut a = online(s, "alice").await;
        let mut b = online(s, "bob").await;
        let mut c = online(s, "carol").await;
        create(&mut a, r, "alice").await;
        join(&mut b, r, "bob").await;
        join(&mut c, r, "carol").await;
        (a, b, c)
    }

    async fn kick_sends_307(db: Db) {
        let s = server(db, &["alice", "bob", "carol"]).await;
        let r = room("harfleur");
        let (mut a, mut b, mut c) = three(&s, &r).await;
        admin_ok(&mut a, &r, "<item nick='bob' role='none'><reason>Avaunt, you cullion!</reason></item>").await;
        let bob = occ(&r, "bob");
        // 8.2: the kicked occupant gets unavailable with 307 (and 110, it is about himself) ...
        let p = wait(&mut b, "the kick", |e| is_presence(e, &bob, Some("unavailable"))).await;
        assert!(has_code(&p, "307") && has_code(&p, "110"), "8.2: 307 and 110: {p}");
        assert_eq!(item_attr(&p, "role"), Some("none"), "8.2: {p}");
        // ... the others an unavailable with 307.
        for x in [&mut a, &mut c] {
            let p = wait(x, "bob's kick", |e| is_presence(e, &bob, Some("unavailable"))).await;
            assert!(has_code(&p, "307") && !has_code(&p, "110"), "8.2: {p}");
        }
        s.stop().await;
    }

    async fn participant_cannot_kick(db: Db) {
        let s = server(db, &["alice", "bob", "carol"]).await;
        let r = room("harfleur");
        let (_a, mut b, mut c) = three(&s, &r).await;
        // 8: moderator requests from a non-moderator: forbidden.
        let e = admin_iq(&mut b, &r, "set", "<item nick='carol' role='none'/>").await;
        assert_eq!(error_condition(&e).as_deref(), Some("forbidden"), "8: {e}");
        absent(&mut c, &r, "carol's removal", |e| is_presence(e, &occ(&r, "carol"), Some("unavailable"))).await;
        s.stop().await;
    }

    async fn ban_sends_301_and_refuses_reentry(db: Db) {
        let s = server(db, &["alice", "bob", "carol"]).await;
        let r = room("southampton");
        let (mut a, mut b, mut c) = three(&s, &r).await;
        admin_ok(&mut a, &r, "<item affiliation='outcast' jid='bob@localhost'><reason>Treason</reason></item>").await;
        let bob = occ(&r, "bob");
        // 9.1: the banned occupant and the others get unavailable with 301.
        let p = wait(&mut b, "the ban", |e| is_presence(e, &bob, Some("unavailable"))).await;
        assert!(has_code(&p, "301"), "9.1: {p}");
        assert_eq!((item_attr(&p, "affiliation"), item_attr(&p, "role")), (Some("outcast"), Some("none")), "9.1: {p}");
        let p = wait(&mut c, "bob's ban", |e| is_presence(e, &bob, Some("unavailable"))).await;
        assert!(has_code(&p, "301"), "9.1: {p}");
        wait(&mut a, "bob's ban", |e| is_presence(e, &bob, Some("unavailable"))).await;
        // 7.2.7: a banned user's join: forbidden.
        let e = join_error(&mut b, &r, "bob", "").await;
        assert_error(&e, "forbidden", "auth", "7.2.7");
        s.stop().await;
    }

    async fn member_list_has_jids_and_affiliations(db: Db) {
        let s = server(db, &["alice", "bob", "carol"]).await;
        let mut a = online(&s, "alice").await;
        let r = room("coven");
        create(&mut a, &r, "alice").await;
        admin_ok(&mut a, &r, "<item affiliation='member' jid='bob@localhost'/>").await;
        admin_ok(&mut a, &r, "<item affiliation='member' jid='carol@localhost'/>").await;
        // 9.5: "each item MUST include the 'affiliation' and 'jid' attributes" (bare JIDs, 17.4).
        let list = member_list(&mut a, &r).await;
        assert_eq!(
            list,
            [("bob@localhost".to_string(), "member".to_string()), ("carol@localhost".to_string(), "member".to_string())],
            "9.5: the member list"
        );
        s.stop().await;
    }

    async fn moderator_cannot_kick_an_owner(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("coven");
        create(&mut a, &r, "alice").await;
        join(&mut b, &r, "bob").await;
        // 10.6: bob becomes an admin, hence a moderator (5.1.2).
        admin_ok(&mut a, &r, "<item affiliation='admin' jid='bob@localhost'/>").await;
        wait(&mut b, "bob's new role", |e| is_presence(e, &occ(&r, "bob"), None) && item_attr(e, "role") == Some("moderator")).await;
        // 8.2: "if ... a moderator who is a member or admin attempts to kick an owner, the service
        // MUST deny the request and return a not-allowed error".
        let e = admin_iq(&mut b, &r, "set", "<item nick='alice' role='none'/>").await;
        assert_error(&e, "not-allowed", "cancel", "8.2");
        absent(&mut a, &r, "alice's removal", |e| is_presence(e, &occ(&r, "alice"), Some("unavailable"))).await;
        s.stop().await;
    }

    async fn admin_cannot_ban_an_owner(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("coven");
        create(&mut a, &r, "alice").await;
        join(&mut b, &r, "bob").await;
        admin_ok(&mut a, &r, "<item affiliation='admin' jid='bob@localhost'/>").await;
        // 9.1: "if an admin attempts to ban an owner, the service MUST deny the request and
        // return a not-allowed error".
        let e = admin_iq(&mut b, &r, "set", "<item affiliation='outcast' jid='alice@localhost'/>").await;
        assert_error(&e, "not-allowed", "cancel", "9.1");
        absent(&mut a, &r, "alice's removal", |e| is_presence(e, &occ(&r, "alice"), Some("unavailable"))).await;
        s.stop().await;
    }

    async fn sole_owner_cannot_give_up_ownership(db: Db) {
        let s = server(db, &["alice"]).await;
        let mut a = online(&s, "alice").await;
        let r = room("coven");
        create(&mut a, &r, "alice").await;
        // 10.4: "A service MUST NOT allow an owner to revoke his or her own owner status if
        // there are no other owners; ... the service MUST return a conflict error".
        let e = admin_iq(&mut a, &r, "set", "<item affiliation='admin' jid='alice@localhost'/>").await;
        assert_eq!(error_condition(&e).as_deref(), Some("conflict"), "10.4: {e}");
        let r2 = admin_iq(&mut a, &r, "get", "<item affiliation='owner'/>").await;
        assert_eq!(admin_items(&r2), [("alice@localhost".to_string(), "owner".to_string())], "still the owner: {r2}");
        s.stop().await;
    }

    crate::on_both!(
        kick_sends_307,
        participant_cannot_kick,
        ban_sends_301_and_refuses_reentry,
        member_list_has_jids_and_affiliations,
        moderator_cannot_kick_an_owner,
        admin_cannot_ban_an_owner,
        sole_owner_cannot_give_up_ownership,
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Invitations and destroying a room (7.8.2, 9.5, 10.9)
// ---------------------------------------------------------------------------------------------

mod invite {
    use super::*;

    async fn mediated_invitation_reaches_the_invitee(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("coven");
        create(&mut a, &r, "alice").await;
        a.send(&mediated_invite(&r, "bob@localhost", "r")).await;
        // 7.8.2: the room sends the invitation, adding a 'from' with "the bare JID, full JID, or
        // occupant JID of the inviter".
        let m = wait(&mut b, "the invitation", |e| invite_of(e, &r).is_some()).await;
        let inv = invite_of(&m, &r).unwrap();
        let from = inv.get_attr("from").unwrap_or_default();
        assert!(from == full(&a) || from == bare(&a) || from == occ(&r, "alice"), "7.8.2: the inviter: {m}");
        assert_eq!(inv.find("reason", MUC_USER).map(|e| e.text_content()).as_deref(), Some("r"), "7.8.2: the reason: {m}");
        s.stop().await;
    }

    async fn invitation_to_an_open_room_adds_no_member(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("coven");
        create(&mut a, &r, "alice").await;
        a.send(&mediated_invite(&r, "bob@localhost", "come")).await;
        wait(&mut b, "the invitation", |e| invite_of(e, &r).is_some()).await;
        // 9.5: "Invitations sent through an open room MUST NOT trigger the addition of the
        // invitee to the member list."
        let list = member_list(&mut a, &r).await;
        assert!(!list.iter().any(|(j, _)| j == "bob@localhost"), "9.5: {list:?}");
        s.stop().await;
    }

    async fn invitation_to_a_members_only_room_makes_a_member(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("club");
        create_with(&mut a, &r, "alice", &[("muc#roomconfig_membersonly", "1")]).await;
        a.send(&mediated_invite(&r, "bob@localhost", "join us")).await;
        wait(&mut b, "the invitation", |e| invite_of(e, &r).is_some()).await;
        // 7.8.2: "If the room is members-only, the service MAY also add the invitee to the member
        // list" -- Starling does, for invitations by those who may edit the member list.
        let j = join(&mut b, &r, "bob").await;
        assert_eq!(item_attr(self_presence(&j), "affiliation"), Some("member"), "{j:?}");
        s.stop().await;
    }

    async fn destroy_removes_every_occupant(db: Db) {
        let s = server(db, &["alice", "bob", "carol"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("heath");
        create(&mut a, &r, "alice").await;
        join(&mut b, &r, "bob").await;
        let res = owner_iq(&mut a, &r, "set", "<destroy><reason>Macbeth doth come.</reason></destroy>").await;
        assert_eq!(res.get_attr("type"), Some("result"), "10.9: {res}");
        // 10.9: one unavailable per occupant, with <destroy/> and the reason.
        for (x, nick) in [(&mut a, "alice"), (&mut b, "bob")] {
            let me = occ(&r, nick);
            let p = wait(x, "the room's destruction", |e| is_presence(e, &me, Some("unavailable"))).await;
            assert_eq!((item_attr(&p, "affiliation"), item_attr(&p, "role")), (Some("none"), Some("none")), "10.9: {p}");
            let d = p.find("x", MUC_USER).and_then(|x| x.find("destroy", MUC_USER)).unwrap_or_else(|| panic!("10.9: <destroy/>: {p}"));
            assert_eq!(d.find("reason", MUC_USER).map(|e| e.text_content()).as_deref(), Some("Macbeth doth come."), "10.9: {p}");
        }
        // The room is gone: entering creates a new one.
        let mut c = online(&s, "carol").await;
        let j = join(&mut c, &r, "carol").await;
        assert!(has_code(self_presence(&j), "201"), "a new room: {j:?}");
        s.stop().await;
    }

    async fn non_owner_cannot_destroy(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("heath");
        create(&mut a, &r, "alice").await;
        join(&mut b, &r, "bob").await;
        // 10.9: "If the <user@host> of the 'from' address ... does not match the bare JID of a
        // room owner, the service MUST return a forbidden error".
        let e = owner_iq(&mut b, &r, "set", "<destroy/>").await;
        assert_eq!(error_condition(&e).as_deref(), Some("forbidden"), "10.9: {e}");
        absent(&mut a, &r, "a removal", |e| e.name == "presence" && e.get_attr("type") == Some("unavailable")).await;
        s.stop().await;
    }

    crate::on_both!(
        mediated_invitation_reaches_the_invitee,
        invitation_to_an_open_room_adds_no_member,
        invitation_to_a_members_only_room_makes_a_member,
        destroy_removes_every_occupant,
        non_owner_cannot_destroy,
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Persistence and the room archive (10.1.3, 7.14; XEP-0313 3.3.2, 6.1.2, 7)
// ---------------------------------------------------------------------------------------------

mod persistence {
    use super::*;

    async fn persistent_room_survives_a_restart(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let r = room("keep");
        {
            let mut a = online(&s, "alice").await;
            let mut b = online(&s, "bob").await;
            create_with(&mut a, &r, "alice", &[("muc#roomconfig_persistentroom", "1"), ("muc#roomconfig_roomname", "The Keep")]).await;
            admin_ok(&mut a, &r, "<item affiliation='member' jid='bob@localhost'/>").await;
            join(&mut b, &r, "bob").await;
            a.send(&format!("<message to='{r}' type='groupchat'><subject>Kept topic</subject></message>")).await;
            wait(&mut b, "the subject", |e| is_subject(e, &r) && subject_text(e) == "Kept topic").await;
        }
        let s = s.restart().await;
        let mut a = online(&s, "alice").await;
        let j = join(&mut a, &r, "alice").await;
        let me = self_presence(&j);
        assert!(!has_code(me, "201"), "the room still exists after the restart: {me}");
        assert_eq!(item_attr(me, "affiliation"), Some("owner"), "10: ownership persists: {me}");
        assert_eq!(subject_text(j.last().unwrap()), "Kept topic", "the subject persists: {j:?}");
        assert_eq!(member_list(&mut a, &r).await, [("bob@localhost".to_string(), "member".to_string())], "the members persist");
        let form = config_get(&mut a, &r).await;
        assert_eq!(field_value(&form, "muc#roomconfig_roomname").as_deref(), Some("The Keep"), "the name persists: {form}");
        s.stop().await;
    }

    async fn temporary_room_ends_with_its_last_occupant(db: Db) {
        let s = server(db, &["alice"]).await;
        let mut a = online(&s, "alice").await;
        let r = room("fleeting");
        create_with(&mut a, &r, "alice", &[("muc#roomconfig_persistentroom", "0")]).await;
        leave(&mut a, &r, "alice").await;
        // 7.14: "If the room is not persistent and this occupant is the last to exit, the
        // service is responsible for destroying the room."
        let j = join(&mut a, &r, "alice").await;
        assert!(has_code(self_presence(&j), "201"), "7.14: the room was destroyed, this join creates it: {j:?}");
        s.stop().await;
    }

    async fn room_archive_returns_the_groupchat_messages(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("annals");
        create(&mut a, &r, "alice").await;
        join(&mut b, &r, "bob").await;
        // XEP-0313 7: an archiving JID advertises urn:xmpp:mam:2.
        let info = disco(&mut b, &r, ns::DISCO_INFO).await;
        assert!(features(&info).iter().any(|f| f == MAM), "XEP-0313 7: {info}");
        let mut live = Vec::new();
        for (who, nick, text) in [("alice", "alice", "m1"), ("bob", "bob", "m2"), ("alice", "alice", "m3")] {
            let c = if who == "alice" { &mut a } else { &mut b };
            let echo = say_and_see(c, &r, nick, text).await;
            live.push(stanza_ids(&echo, &r).pop().unwrap_or_else(|| panic!("a stanza-id by the room: {echo}")));
        }
        b.send(&format!("<message to='{}' type='chat'><body>private</body></message>", occ(&r, "alice"))).await;
        wait(&mut a, "bob's private message", |e| body(e).as_deref() == Some("private")).await;

        let (res, fin) = room_mam(&mut b, &r).await.unwrap_or_else(|e| panic!("XEP-0313: an occupant may query the room's archive: {e}"));
        // XEP-0313 6.1.2: each message once, in order, private messages left out; from the
        // sender's occupant JID, with no 'to'.
        let msgs: Vec<Element> = res.iter().map(|(_, m)| m.clone()).collect();
        assert_eq!(bodies(&msgs), ["m1", "m2", "m3"], "XEP-0313 6.1.2");
        let froms: Vec<&str> = msgs.iter().map(|m| m.get_attr("from").unwrap_or_default()).collect();
        assert_eq!(froms, [occ(&r, "alice"), occ(&r, "bob"), occ(&r, "alice")], "XEP-0313 6.1.2: from the occupant JIDs");
        assert!(msgs.iter().all(|m| m.get_attr("to").is_none()), "XEP-0313 6.1.2: no 'to': {msgs:?}");
        // XEP-0313 3.5: the live stanza-ids are the archive ids.
        let ids: Vec<String> = res.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(ids, live, "XEP-0313 3.5: the stanza-ids are the archive ids");
        assert_eq!(fin.get_attr("complete"), Some("true"), "XEP-0313 4: {fin}");
        s.stop().await;
    }

    async fn members_only_room_archive_is_closed_to_others(db: Db) {
        let s = server(db, &["alice", "dave"]).await;
        let mut a = online(&s, "alice").await;
        let mut d = online(&s, "dave").await;
        let r = room("club");
        create_with(&mut a, &r, "alice", &[("muc#roomconfig_membersonly", "1")]).await;
        say_and_see(&mut a, &r, "alice", "members only").await;
        // XEP-0313 6.1.2: "In a members-only chat room, only owners, admins or members can query
        // a room archive."
        let e = room_mam(&mut d, &r).await.err().unwrap_or_else(|| panic!("XEP-0313 6.1.2: dave may not read the archive"));
        assert_eq!(error_condition(&e).as_deref(), Some("forbidden"), "{e}");
        s.stop().await;
    }

    crate::on_both!(
        persistent_room_survives_a_restart,
        temporary_room_ends_with_its_last_occupant,
        room_archive_returns_the_groupchat_messages,
        members_only_room_archive_is_closed_to_others,
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Robustness: bursts, concurrent joins, bad input
// ---------------------------------------------------------------------------------------------

mod robustness {
    use super::*;

    async fn a_burst_of_messages_is_reflected_in_order(db: Db) {
        let s = server(db, &["alice", "bob", "carol"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let mut c = online(&s, "carol").await;
        let r = room("burst");
        create(&mut a, &r, "alice").await;
        join(&mut b, &r, "bob").await;
        join(&mut c, &r, "carol").await;
        let mut burst = String::new();
        for i in 0..50 {
            burst.push_str(&format!("<message to='{r}' type='groupchat'><body>n{i}</body></message>"));
        }
        b.send(&burst).await;
        let bob = occ(&r, "bob");
        let want: Vec<String> = (0..50).map(|i| format!("n{i}")).collect();
        for (who, x) in [("alice", &mut a), ("bob", &mut b), ("carol", &mut c)] {
            let mut got = Vec::new();
            for _ in 0..50 {
                let m =
                    wait(x, "the burst", |e| e.name == "message" && e.get_attr("from") == Some(bob.as_str()) && body(e).is_some()).await;
                got.push(m);
            }
            assert_eq!(bodies(&got), want, "7.4: {who} gets all 50, in order");
            let mut ids: Vec<String> = got.iter().flat_map(|m| stanza_ids(m, &r)).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), 50, "{who}: one stanza-id per message");
        }
        s.stop().await;
    }

    async fn twenty_concurrent_joins_each_see_everyone_once(db: Db) {
        const N: usize = 20;
        let names: Vec<String> = (0..N).map(|i| format!("u{i:02}")).collect();
        let s = server(db, &["alice"]).await;
        for u in &names {
            s.add_user(u, PW).await;
        }
        let r = room("crowd");
        // A persistent room nobody is in.
        let mut a = online(&s, "alice").await;
        create_with(&mut a, &r, "alice", &[("muc#roomconfig_persistentroom", "1")]).await;
        leave(&mut a, &r, "alice").await;
        let mut clients = Vec::new();
        for u in &names {
            clients.push(online(&s, u).await);
        }
        let mut set = tokio::task::JoinSet::new();
        for (c, nick) in clients.into_iter().zip(names.clone()) {
            let r = r.clone();
            set.spawn(async move {
                let mut c = c;
                let j = join(&mut c, &r, &nick).await;
                (c, nick, j)
            });
        }
        let mut joined = Vec::new();
        while let Some(res) = set.join_next().await {
            joined.push(res.expect("a join task"));
        }
        let is_occupant_presence = |e: &Element| {
            e.name == "presence" && e.get_attr("type").is_none() && e.get_attr("from").is_some_and(|f| f.starts_with(&format!("{r}/")))
        };
        for (c, nick, j) in &mut joined {
            // 7.2.2: each occupant's presence once, whether it came before or after the joiner's own.
            let mut seen: Vec<Element> = j.iter().filter(|e| is_occupant_presence(e)).cloned().collect();
            while seen.len() < N {
                let have = seen.len();
                seen.push(wait(c, &format!("presence {} of {N} (for {nick})", have + 1), is_occupant_presence).await);
            }
            let mut froms: Vec<String> = seen.iter().map(|e| e.get_attr("from").unwrap().to_string()).collect();
            froms.sort();
            let want: Vec<String> = names.iter().map(|n| occ(&r, n)).collect();
            assert_eq!(froms, want, "{nick}: 19 others and itself, once each");
            let selves: Vec<&Element> = seen.iter().filter(|e| has_code(e, "110")).collect();
            assert_eq!(selves.len(), 1, "{nick}: one self-presence: {selves:?}");
            assert_eq!(selves[0].get_attr("from"), Some(occ(&r, nick).as_str()), "{nick}");
            absent(c, &r, "a presence more", is_occupant_presence).await;
        }
        s.stop().await;
    }

    async fn bad_groupchat_from_a_non_occupant_leaves_the_room_alone(db: Db) {
        let s = server(db, &["alice", "bob", "dave"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let mut d = online(&s, "dave").await;
        let r = room("coven");
        create(&mut a, &r, "alice").await;
        join(&mut b, &r, "bob").await;
        // No body, no subject, from someone who is not in the room: refused (7.4), nothing
        // reaches the occupants, and the room goes on.
        d.send(&format!("<message to='{r}' type='groupchat' id='bad1'><thread>t</thread></message>")).await;
        let e = wait(&mut d, "an error for bad1", |e| e.name == "message" && e.get_attr("id") == Some("bad1")).await;
        assert_error(&e, "not-acceptable", "modify", "7.4 (non-occupant)");
        for x in [&mut a, &mut b] {
            absent(x, &r, "dave's message", |e| e.name == "message" && e.find("thread", ns::CLIENT).is_some()).await;
        }
        say(&mut a, &r, "still here").await;
        wait(&mut b, "alice's message", |e| is_groupchat(e, &occ(&r, "alice"), "still here")).await;
        s.stop().await;
    }

    /// A muc#admin set is applied whole or not at all: a batch whose second item is bad
    /// (unknown role, malformed JID, neither role nor affiliation) changes nothing, and each
    /// gets the precise error.
    async fn a_bad_admin_batch_changes_nothing(db: Db) {
        let s = server(db, &["alice", "bob", "carol"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("strict");
        create(&mut a, &r, "alice").await;
        join(&mut b, &r, "bob").await;
        for (second, condition) in [
            ("<item nick='bob' role='overlord'/>", "bad-request"),
            ("<item jid='not a jid@@' affiliation='member'/>", "jid-malformed"),
            ("<item nick='bob'/>", "bad-request"),
            ("<item jid='carol@localhost' affiliation='emperor'/>", "bad-request"),
        ] {
            let e = admin_iq(&mut a, &r, "set", &format!("<item jid='carol@localhost' affiliation='member'/>{second}")).await;
            assert_eq!(e.get_attr("type"), Some("error"), "{second}: {e}");
            assert_eq!(error_condition(&e).as_deref(), Some(condition), "{second}: {e}");
        }
        let list = admin_iq(&mut a, &r, "get", "<item affiliation='member'/>").await;
        assert_eq!(list.get_attr("type"), Some("result"), "{list}");
        let members: Vec<&Element> = list.find("query", MUC_ADMIN).map(|q| q.elements().collect()).unwrap_or_default();
        assert!(members.is_empty(), "nothing of a refused batch was applied: {list}");
        // Bob is still a participant (no kick slipped through).
        let e = admin_iq(&mut a, &r, "get", "<item role='participant'/>").await;
        let nicks: Vec<String> = e
            .find("query", MUC_ADMIN)
            .map(|q| q.elements().filter_map(|i| i.get_attr("nick").map(String::from)).collect())
            .unwrap_or_default();
        assert_eq!(nicks, ["bob"], "{e}");
        s.stop().await;
    }

    /// A submitted configuration with a wrong FORM_TYPE or a bad value is refused and changes
    /// nothing (10.2).
    async fn a_bad_configuration_changes_nothing(db: Db) {
        let s = server(db, &["alice"]).await;
        let mut a = online(&s, "alice").await;
        let r = room("steady");
        create_with(&mut a, &r, "alice", &[("muc#roomconfig_roomname", "Steady")]).await;
        let wrong_type = format!(
            "<x xmlns='{XDATA}' type='submit'><field var='FORM_TYPE'><value>urn:example:other</value></field>\
             <field var='muc#roomconfig_roomname'><value>Changed</value></field></x>"
        );
        let e = owner_iq(&mut a, &r, "set", &wrong_type).await;
        assert_error(&e, "bad-request", "modify", "a form of another FORM_TYPE");
        let e =
            owner_iq(&mut a, &r, "set", &config_form(&[("muc#roomconfig_roomname", "Changed"), ("muc#roomconfig_maxusers", "many")])).await;
        assert_eq!(e.get_attr("type"), Some("error"), "a maxusers that is not a number: {e}");
        let e = owner_iq(&mut a, &r, "set", &config_form(&[("muc#roomconfig_persistentroom", "perhaps")])).await;
        assert_eq!(e.get_attr("type"), Some("error"), "a boolean that is not one: {e}");
        let form = config_get(&mut a, &r).await;
        assert_eq!(field_value(&form, "muc#roomconfig_roomname").as_deref(), Some("Steady"), "{form}");
        s.stop().await;
    }

    /// Odd `<history/>` attributes are ignored rather than refused; stanzas for rooms that do
    /// not exist get item-not-found (messages, queries) or nothing (unavailable presence).
    async fn odd_history_and_missing_rooms(db: Db) {
        let s = server(db, &["alice", "bob"]).await;
        let mut a = online(&s, "alice").await;
        let mut b = online(&s, "bob").await;
        let r = room("odd");
        create(&mut a, &r, "alice").await;
        say_and_see(&mut a, &r, "alice", "one").await;
        let j = join_with(&mut b, &r, "bob", "<history maxstanzas='lots' seconds='-5' since='yesterday'/>").await;
        assert_eq!(bodies(&history(&j)), ["one"], "{j:?}");
        let ghost = room("nowhere");
        b.send(&format!("<message to='{ghost}' type='groupchat' id='g1'><body>hello?</body></message>")).await;
        let e = wait(&mut b, "an error for g1", |e| e.get_attr("id") == Some("g1")).await;
        assert_eq!(error_condition(&e).as_deref(), Some("item-not-found"), "{e}");
        let e = b.iq(&format!("<iq type='get' id='g2' to='{ghost}'><query xmlns='{}'/></iq>", ns::DISCO_INFO)).await;
        assert_eq!(error_condition(&e).as_deref(), Some("item-not-found"), "{e}");
        b.send(&format!("<presence to='{ghost}/bob' type='unavailable'/>")).await;
        absent(&mut b, &r, "an answer to leaving a room that does not exist", |e| from_room(e, &ghost)).await;
        // And the room that does exist is unharmed.
        say(&mut b, &r, "two").await;
        wait(&mut a, "bob's message", |e| is_groupchat(e, &occ(&r, "bob"), "two")).await;
        s.stop().await;
    }

    crate::on_both!(
        a_burst_of_messages_is_reflected_in_order,
        twenty_concurrent_joins_each_see_everyone_once,
        bad_groupchat_from_a_non_occupant_leaves_the_room_alone,
        a_bad_admin_batch_changes_nothing,
        a_bad_configuration_changes_nothing,
        odd_history_and_missing_rooms,
    );
}
