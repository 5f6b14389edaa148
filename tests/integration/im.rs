//! Instant messaging and presence (RFC 6121) against the real server: the roster, presence
//! subscriptions, presence broadcast, the delivery rules of section 8; and the account services
//! that go with them: blocking (XEP-0191), vcard-temp (XEP-0054), private XML storage (XEP-0049)
//! and last activity (XEP-0012).
//!
//! Synchronisation without sleeps: a client sends a headline to its own full JID and waits for
//! it. The server handles one client's stanzas in order and routes synchronously into the
//! recipients' mailboxes, so once a client's marker comes back, everything its earlier stanzas
//! caused has been queued for every recipient; a recipient's own marker then bounds what it can
//! have received. "Nothing arrived" is checked that way: marker, then `expect_silence`.

use std::time::Duration;

use starling::xml::{ns, Element};

use crate::common::{error_condition, Client, Db, TestServer};

const PW: &str = "secret";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn full(c: &Client) -> String {
    c.jid.clone().expect("bound")
}

fn bare(c: &Client) -> String {
    full(c).split('/').next().unwrap().to_string()
}

fn is_presence(e: &Element, from: &str, typ: Option<&str>) -> bool {
    e.name == "presence" && e.get_attr("from") == Some(from) && e.get_attr("type") == typ
}

/// Presence of type `typ` from the account `account` (its bare JID or any of its resources).
fn presence_of_account(e: &Element, account: &str, typ: Option<&str>) -> bool {
    e.name == "presence"
        && e.get_attr("type") == typ
        && e.get_attr("from").is_some_and(|f| f == account || f.strip_prefix(account).is_some_and(|r| r.starts_with('/')))
}

fn has_id(e: &Element, name: &str, id: &str) -> bool {
    e.name == name && e.get_attr("id") == Some(id)
}

fn text_of(parent: Option<&Element>, name: &str, ns: &str) -> Option<String> {
    parent.and_then(|p| p.find(name, ns)).map(|e| e.text_content())
}

/// The first element matching `pred` among those the server sent before a marker we send to
/// ourselves now; `None` if there was none. The marker is consumed either way.
async fn next_of(c: &mut Client, pred: impl Fn(&Element) -> bool) -> Option<Element> {
    let me = full(c);
    let mark = format!("sync-{}", c.id());
    c.send(&format!("<message to='{me}' id='{mark}' type='headline'/>")).await;
    let is_mark = |e: &Element| e.name == "message" && e.get_attr("id") == Some(mark.as_str());
    let e = c.recv_where(|e| is_mark(e) || pred(e)).await;
    if is_mark(&e) {
        return None;
    }
    c.recv_where(is_mark).await;
    Some(e)
}

/// Everything the server sent so far has been read (and queued).
async fn sync(c: &mut Client) {
    next_of(c, |_| false).await;
}

/// Something matching `pred` was sent before now (the cause must already have been processed).
async fn expect(c: &mut Client, what: &str, pred: impl Fn(&Element) -> bool) -> Element {
    match next_of(c, pred).await {
        Some(e) => e,
        None => panic!("{} did not receive {what}", full(c)),
    }
}

/// Wait for something caused asynchronously (a session ending).
async fn wait(c: &mut Client, what: &str, pred: impl Fn(&Element) -> bool) -> Element {
    let who = full(c);
    match tokio::time::timeout(Duration::from_secs(8), c.recv_where(pred)).await {
        Ok(e) => e,
        Err(_) => panic!("{who} did not receive {what}"),
    }
}

/// Nothing is waiting and nothing arrives.
async fn quiet(c: &mut Client) {
    sync(c).await;
    c.expect_silence(300).await;
}

/// Send, and wait until the server has processed it (and queued all it caused).
async fn act(c: &mut Client, xml: &str) {
    c.send(xml).await;
    sync(c).await;
}

/// Setup only: let everything in flight arrive, then forget it.
async fn settle(cs: &mut [&mut Client]) {
    for _ in 0..2 {
        for c in cs.iter_mut() {
            sync(c).await;
        }
    }
    for c in cs.iter_mut() {
        c.drain(1).await;
    }
}

/// Send a broadcast presence; true if the server echoed it back to this resource.
async fn available(c: &mut Client, presence: &str) -> bool {
    let me = full(c);
    c.send(presence).await;
    next_of(c, |e| is_presence(e, &me, None)).await.is_some()
}

async fn get_roster(c: &mut Client) -> Element {
    let id = c.id();
    let r = c.iq(&format!("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>")).await;
    assert_eq!(r.get_attr("type"), Some("result"), "roster get: {r}");
    r.find("query", ns::ROSTER).cloned().unwrap_or_else(|| panic!("a roster get without 'ver' returns the roster: {r}"))
}

async fn roster_set(c: &mut Client, item: &str) -> Element {
    let id = c.id();
    c.iq(&format!("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'>{item}</query></iq>")).await
}

fn roster_item<'a>(q: &'a Element, jid: &str) -> Option<&'a Element> {
    q.elements().find(|i| i.is("item", ns::ROSTER) && i.get_attr("jid") == Some(jid))
}

fn pushed_item(e: &Element) -> Option<&Element> {
    if e.name != "iq" || e.get_attr("type") != Some("set") {
        return None;
    }
    e.find("query", ns::ROSTER)?.find("item", ns::ROSTER)
}

/// The next roster push about `jid`; checks it comes from the account itself (RFC 6121 2.1.6).
async fn expect_push_iq(c: &mut Client, jid: &str) -> Element {
    let own = bare(c);
    let iq = expect(c, &format!("a roster push for {jid}"), |e| pushed_item(e).and_then(|i| i.get_attr("jid")) == Some(jid)).await;
    let from = iq.get_attr("from");
    assert!(from.is_none() || from == Some(own.as_str()), "RFC 6121 2.1.6: a roster push has no 'from' or the account's bare JID: {iq}");
    iq
}

async fn expect_push(c: &mut Client, jid: &str) -> Element {
    pushed_item(&expect_push_iq(c, jid).await).unwrap().clone()
}

fn push_ver(iq: &Element) -> String {
    iq.find("query", ns::ROSTER)
        .and_then(|q| q.get_attr("ver"))
        .unwrap_or_else(|| panic!("RFC 6121 2.6.3: a roster push carries the new version: {iq}"))
        .to_string()
}

/// Subscription state of a roster item (absent 'subscription' means "none", RFC 6121 2.1.2.5).
fn assert_state(item: &Element, subscription: &str, ask: Option<&str>) {
    assert_eq!(item.get_attr("subscription").unwrap_or("none"), subscription, "subscription of {item}");
    assert_eq!(item.get_attr("ask"), ask, "'ask' of {item}");
}

fn groups(item: &Element) -> Vec<String> {
    let mut g: Vec<String> = item.elements().filter(|e| e.is("group", ns::ROSTER)).map(|e| e.text_content()).collect();
    g.sort();
    g
}

/// A connected resource that fetched the roster (an "interested resource").
async fn interested(s: &TestServer, user: &str, res: &str) -> Client {
    let mut c = s.login(user, PW, res).await;
    get_roster(&mut c).await;
    c
}

/// An available resource (initial presence sent).
async fn online(s: &TestServer, user: &str, res: &str) -> Client {
    let mut c = s.login(user, PW, res).await;
    available(&mut c, "<presence/>").await;
    c
}

/// Interested and available, as a usual client.
async fn interested_online(s: &TestServer, user: &str, res: &str) -> Client {
    let mut c = interested(s, user, res).await;
    available(&mut c, "<presence/>").await;
    c
}

/// Mutual subscription ("both") between the accounts of two interested, available clients.
async fn befriend(a: &mut Client, b: &mut Client) {
    let (ab, bb) = (bare(a), bare(b));
    a.send(&format!("<presence to='{bb}' type='subscribe'/>")).await;
    wait(b, "a subscription request", |e| is_presence(e, &ab, Some("subscribe"))).await;
    b.send(&format!("<presence to='{ab}' type='subscribed'/>")).await;
    wait(a, "an approval", |e| is_presence(e, &bb, Some("subscribed"))).await;
    b.send(&format!("<presence to='{ab}' type='subscribe'/>")).await;
    wait(a, "a subscription request", |e| is_presence(e, &bb, Some("subscribe"))).await;
    a.send(&format!("<presence to='{bb}' type='subscribed'/>")).await;
    wait(b, "an approval", |e| is_presence(e, &ab, Some("subscribed"))).await;
    settle(&mut [a, b]).await;
}

async fn blocklist(c: &mut Client) -> Vec<String> {
    let id = c.id();
    let r = c.iq(&format!("<iq type='get' id='{id}'><blocklist xmlns='urn:xmpp:blocking'/></iq>")).await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    let l = r.find("blocklist", ns::BLOCKING).unwrap_or_else(|| panic!("XEP-0191 3.2: the result holds <blocklist/>: {r}"));
    l.elements().filter_map(|i| i.get_attr("jid").map(String::from)).collect()
}

fn block_push<'a>(e: &'a Element, what: &str) -> Option<&'a Element> {
    if e.name != "iq" || e.get_attr("type") != Some("set") {
        return None;
    }
    e.find(what, ns::BLOCKING)
}

// ---------------------------------------------------------------------------------------------
// Roster (RFC 6121 section 2)
// ---------------------------------------------------------------------------------------------

async fn roster_get_set_remove_and_pushes(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", PW).await;
    let mut a1 = interested(&s, "alice", "one").await;
    let mut a2 = s.login("alice", PW, "two").await; // never asks for the roster
    let mut a3 = interested(&s, "alice", "three").await;
    let q = get_roster(&mut a1).await;
    assert_eq!(q.elements().count(), 0, "a new account has an empty roster: {q}");

    // 2.3.2: an IQ result to the sender, a push to every interested resource.
    let r = roster_set(&mut a1, "<item jid='bob@localhost' name='Bob'><group>Friends</group><group>Work</group></item>").await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    for c in [&mut a1, &mut a3] {
        let item = expect_push(c, "bob@localhost").await;
        assert_state(&item, "none", None);
        assert_eq!(item.get_attr("name"), Some("Bob"), "{item}");
        assert_eq!(groups(&item), ["Friends", "Work"], "{item}");
    }
    quiet(&mut a2).await;
    let q = get_roster(&mut a1).await;
    let bob = roster_item(&q, "bob@localhost").unwrap_or_else(|| panic!("the added item is stored: {q}"));
    assert_eq!(bob.get_attr("name"), Some("Bob"));
    assert_eq!(groups(bob), ["Friends", "Work"]);

    // 2.4.1: an update replaces the item exactly as given.
    let r = roster_set(&mut a1, "<item jid='bob@localhost' name='Robert'><group>Work</group></item>").await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    for c in [&mut a1, &mut a3] {
        let item = expect_push(c, "bob@localhost").await;
        assert_eq!(item.get_attr("name"), Some("Robert"), "{item}");
        assert_eq!(groups(&item), ["Work"], "{item}");
    }

    // 2.1.5: a 'subscription' other than "remove" in a roster set is ignored.
    let r = roster_set(&mut a1, "<item jid='carol@localhost' subscription='both'/>").await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    assert_state(&expect_push(&mut a1, "carol@localhost").await, "none", None);
    assert_state(&expect_push(&mut a3, "carol@localhost").await, "none", None);

    // 2.5.2: removal: result, and a push with subscription='remove'.
    let r = roster_set(&mut a1, "<item jid='bob@localhost' subscription='remove'/>").await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    for c in [&mut a1, &mut a3] {
        let item = expect_push(c, "bob@localhost").await;
        assert_eq!(item.get_attr("subscription"), Some("remove"), "{item}");
    }
    let q = get_roster(&mut a1).await;
    assert!(roster_item(&q, "bob@localhost").is_none(), "removed: {q}");
    assert_state(roster_item(&q, "carol@localhost").expect("carol stays"), "none", None);
    quiet(&mut a2).await;
    s.stop().await;
}

async fn roster_versioning(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", PW).await;
    let mut a = s.login("alice", PW, "r").await;
    assert!(a.features.as_ref().and_then(|f| f.find("ver", ns::ROSTER_VER)).is_some(), "RFC 6121 2.6.1: versioning advertised");

    // 2.6.2: ver='' bootstraps versioning: the complete roster with its version.
    let r = a.iq("<iq type='get' id='v1'><query xmlns='jabber:iq:roster' ver=''/></iq>").await;
    let q = r.find("query", ns::ROSTER).unwrap_or_else(|| panic!("ver='' gets the whole roster: {r}"));
    let v0 = q.get_attr("ver").unwrap_or_else(|| panic!("with a 'ver': {q}")).to_string();

    // 2.6.3: an up-to-date client gets an empty result (the option of 2.6.3 Starling takes).
    let r = a.iq(&format!("<iq type='get' id='v2'><query xmlns='jabber:iq:roster' ver='{v0}'/></iq>")).await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    assert!(r.elements().next().is_none(), "up to date: empty result: {r}");

    // Every push carries the new version, and versions are unique.
    roster_set(&mut a, "<item jid='dave@localhost'/>").await;
    let v1 = push_ver(&expect_push_iq(&mut a, "dave@localhost").await);
    roster_set(&mut a, "<item jid='erin@localhost'/>").await;
    let v2 = push_ver(&expect_push_iq(&mut a, "erin@localhost").await);
    assert!(v1 != v0 && v2 != v1 && v2 != v0, "versions must be unique: {v0} {v1} {v2}");

    let r = a.iq(&format!("<iq type='get' id='v3'><query xmlns='jabber:iq:roster' ver='{v2}'/></iq>")).await;
    assert!(r.elements().next().is_none(), "up to date again: empty result: {r}");

    // A stale version: the whole roster with the latest version, or an empty result then pushes.
    let r = a.iq(&format!("<iq type='get' id='v4'><query xmlns='jabber:iq:roster' ver='{v0}'/></iq>")).await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    match r.find("query", ns::ROSTER) {
        Some(q) => {
            assert_eq!(q.get_attr("ver"), Some(v2.as_str()), "{q}");
            assert!(roster_item(q, "dave@localhost").is_some() && roster_item(q, "erin@localhost").is_some(), "{q}");
        }
        None => {
            expect_push(&mut a, "dave@localhost").await;
            expect_push(&mut a, "erin@localhost").await;
        }
    }

    // Another session already at the latest version gets nothing more.
    let mut b = s.login("alice", PW, "other").await;
    let r = b.iq(&format!("<iq type='get' id='v5'><query xmlns='jabber:iq:roster' ver='{v2}'/></iq>")).await;
    assert!(r.elements().next().is_none(), "{r}");
    // Without 'ver': the whole roster, with the same latest version.
    let q = get_roster(&mut b).await;
    assert_eq!(q.get_attr("ver"), Some(v2.as_str()), "{q}");
    assert_eq!(q.elements().count(), 2, "{q}");
    // An account with no roster at all: empty, version 0.
    s.add_user("zed", PW).await;
    let mut z = s.login("zed", PW, "r").await;
    let q = get_roster(&mut z).await;
    assert_eq!((q.get_attr("ver"), q.elements().count()), (Some("0"), 0), "{q}");
    quiet(&mut b).await;
    s.stop().await;
}

async fn roster_set_errors(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", PW).await;
    s.add_user("bob", PW).await;
    let mut a = interested(&s, "alice", "a").await;
    let mut b = interested(&s, "bob", "b").await;

    // 2.3.3: more than one item: bad-request.
    let r = roster_set(&mut a, "<item jid='x@localhost'/><item jid='y@localhost'/>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"), "{r}");
    // 2.3.3: duplicate groups: bad-request.
    let r = roster_set(&mut a, "<item jid='x@localhost'><group>G</group><group>G</group></item>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"), "{r}");
    // 2.5.3: removing an item that is not there: item-not-found.
    let r = roster_set(&mut a, "<item jid='nobody@localhost' subscription='remove'/>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("item-not-found"), "{r}");

    // 2.1.5 / 2.3.3: a roster set by someone not authorised: forbidden.
    let r = a
        .iq("<iq type='set' id='f1' to='bob@localhost'><query xmlns='jabber:iq:roster'><item jid='mallory@localhost'/></query></iq>")
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"), "{r}");
    let q = get_roster(&mut b).await;
    assert!(roster_item(&q, "mallory@localhost").is_none(), "bob's roster untouched: {q}");
    // Nor can another account read it.
    let r = a.iq("<iq type='get' id='f2' to='bob@localhost'><query xmlns='jabber:iq:roster'/></iq>").await;
    assert_eq!(r.get_attr("type"), Some("error"), "{r}");
    assert!(r.find("query", ns::ROSTER).is_none_or(|q| q.elements().next().is_none()), "no items leak: {r}");

    // Failed sets push nothing.
    let q = get_roster(&mut a).await;
    assert_eq!(q.elements().count(), 0, "{q}");
    quiet(&mut a).await;
    quiet(&mut b).await;
    s.stop().await;
}

async fn roster_set_with_empty_group_is_not_acceptable(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", PW).await;
    let mut a = interested(&s, "alice", "a").await;
    // RFC 6121 2.3.3: "The server MUST return a <not-acceptable/> stanza error to the client if
    // ... The XML character data of the <group/> element is of zero length".
    let r = roster_set(&mut a, "<item jid='x@localhost'><group></group></item>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-acceptable"), "RFC 6121 2.3.3 (empty group): {r}");
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Subscriptions (RFC 6121 section 3)
// ---------------------------------------------------------------------------------------------

async fn subscription_handshake_to_both(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", PW).await;
    s.add_user("bob", PW).await;
    let mut a = interested_online(&s, "alice", "a").await;
    let mut b = interested_online(&s, "bob", "b").await;

    // 3.1.2: the user's roster shows the pending request.
    act(&mut a, "<presence to='bob@localhost' type='subscribe' id='sub1'/>").await;
    assert_state(&expect_push(&mut a, "bob@localhost").await, "none", Some("subscribe"));
    // 3.1.3: delivered to the contact's available resources, from the user's bare JID.
    let req = expect(&mut b, "alice's request", |e| e.name == "presence" && e.get_attr("type") == Some("subscribe")).await;
    assert_eq!(req.get_attr("from"), Some("alice@localhost"), "RFC 6121 3.1.2: stamped with the bare JID: {req}");

    // 3.1.5: the contact approves: contact's push shows 'from' ...
    act(&mut b, "<presence to='alice@localhost' type='subscribed'/>").await;
    assert_state(&expect_push(&mut b, "alice@localhost").await, "from", None);
    // 3.1.6: ... the user gets the approval and a push with 'to' ...
    expect(&mut a, "bob's approval", |e| is_presence(e, "bob@localhost", Some("subscribed"))).await;
    assert_state(&expect_push(&mut a, "bob@localhost").await, "to", None);
    // ... and the contact's current presence.
    expect(&mut a, "bob's presence", |e| is_presence(e, "bob@localhost/b", None)).await;

    // The other way round.
    act(&mut b, "<presence to='alice@localhost' type='subscribe'/>").await;
    assert_state(&expect_push(&mut b, "alice@localhost").await, "from", Some("subscribe"));
    expect(&mut a, "bob's request", |e| is_presence(e, "bob@localhost", Some("subscribe"))).await;
    act(&mut a, "<presence to='bob@localhost' type='subscribed'/>").await;
    assert_state(&expect_push(&mut a, "bob@localhost").await, "both", None);
    expect(&mut b, "alice's approval", |e| is_presence(e, "alice@localhost", Some("subscribed"))).await;
    assert_state(&expect_push(&mut b, "alice@localhost").await, "both", None);
    expect(&mut b, "alice's presence", |e| is_presence(e, "alice@localhost/a", None)).await;

    let q = get_roster(&mut a).await;
    assert_state(roster_item(&q, "bob@localhost").expect("bob in alice's roster"), "both", None);
    let q = get_roster(&mut b).await;
    assert_state(roster_item(&q, "alice@localhost").expect("alice in bob's roster"), "both", None);

    // Presence now goes to the subscriber.
    available(&mut a, "<presence><show>away</show></presence>").await;
    let p =
        expect(&mut b, "alice's new presence", |e| is_presence(e, "alice@localhost/a", None) && e.find("show", ns::CLIENT).is_some()).await;
    assert_eq!(text_of(Some(&p), "show", ns::CLIENT).as_deref(), Some("away"), "{p}");
    s.stop().await;
}

async fn cancel_unsubscribe_and_deny(db: Db) {
    let s = TestServer::start(db).await;
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, PW).await;
    }
    let mut a = interested_online(&s, "alice", "a").await;
    let mut b = interested_online(&s, "bob", "b").await;
    befriend(&mut a, &mut b).await;

    // 3.2: bob cancels alice's subscription to him.
    act(&mut b, "<presence to='alice@localhost' type='unsubscribed'/>").await;
    assert_state(&expect_push(&mut b, "alice@localhost").await, "to", None);
    expect(&mut a, "bob's cancellation", |e| is_presence(e, "bob@localhost", Some("unsubscribed"))).await;
    assert_state(&expect_push(&mut a, "bob@localhost").await, "from", None);
    // 3.2.2: alice stops seeing bob: unavailable from bob's resources.
    expect(&mut a, "unavailable from bob", |e| presence_of_account(e, "bob@localhost", Some("unavailable"))).await;

    // 3.3: bob unsubscribes from alice's presence.
    act(&mut b, "<presence to='alice@localhost' type='unsubscribe'/>").await;
    assert_state(&expect_push(&mut b, "alice@localhost").await, "none", None);
    expect(&mut a, "bob's unsubscribe", |e| is_presence(e, "bob@localhost", Some("unsubscribe"))).await;
    assert_state(&expect_push(&mut a, "bob@localhost").await, "none", None);
    // 3.3.3: the contact's server sends unavailable from the contact's resources.
    expect(&mut b, "unavailable from alice", |e| is_presence(e, "alice@localhost/a", Some("unavailable"))).await;

    // Presence no longer flows either way.
    settle(&mut [&mut a, &mut b]).await;
    available(&mut a, "<presence><show>dnd</show></presence>").await;
    available(&mut b, "<presence><show>dnd</show></presence>").await;
    quiet(&mut b).await;
    quiet(&mut a).await;

    // Denying a request (3.2 applied to a pending request).
    let mut c = interested_online(&s, "carol", "c").await;
    act(&mut c, "<presence to='alice@localhost' type='subscribe'/>").await;
    assert_state(&expect_push(&mut c, "alice@localhost").await, "none", Some("subscribe"));
    expect(&mut a, "carol's request", |e| is_presence(e, "carol@localhost", Some("subscribe"))).await;
    act(&mut a, "<presence to='carol@localhost' type='unsubscribed'/>").await;
    expect(&mut c, "the refusal", |e| is_presence(e, "alice@localhost", Some("unsubscribed"))).await;
    assert_state(&expect_push(&mut c, "alice@localhost").await, "none", None);
    // The refused request is not delivered again (3.1.3: "until the contact either approves or denies").
    let mut a2 = interested(&s, "alice", "a2").await;
    available(&mut a2, "<presence/>").await;
    expect(&mut a2, "alice's other resource", |e| is_presence(e, "alice@localhost/a", None)).await;
    quiet(&mut a2).await;
    s.stop().await;
}

async fn cancellation_sends_unavailable_before_unsubscribed(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", PW).await;
    s.add_user("bob", PW).await;
    let mut a = interested_online(&s, "alice", "a").await;
    let mut b = interested_online(&s, "bob", "b").await;
    befriend(&mut a, &mut b).await;
    act(&mut b, "<presence to='alice@localhost' type='unsubscribed'/>").await;
    // RFC 6121 3.2.2: "While the user is still subscribed to the contact's presence (i.e., before
    // the contact's server routes or delivers the presence stanza of type "unsubscribed" to the
    // user), the contact's server MUST send a presence stanza of type "unavailable" from all of
    // the contact's online resources to the user."
    let first = expect(&mut a, "unavailable or unsubscribed from bob", |e| {
        presence_of_account(e, "bob@localhost", Some("unavailable")) || presence_of_account(e, "bob@localhost", Some("unsubscribed"))
    })
    .await;
    assert_eq!(first.get_attr("type"), Some("unavailable"), "RFC 6121 3.2.2: unavailable comes before unsubscribed; first was {first}");
    s.stop().await;
}

async fn preapproval(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", PW).await;
    s.add_user("bob", PW).await;
    let mut b = s.login("bob", PW, "b").await;
    assert!(b.features.as_ref().and_then(|f| f.find("sub", ns::PREAPPROVAL)).is_some(), "RFC 6121 3.4.1: pre-approval advertised");
    get_roster(&mut b).await;
    available(&mut b, "<presence/>").await;
    let mut a = interested_online(&s, "alice", "a").await;

    // 3.4.2: bob pre-approves alice: remembered (approved='true'), not routed.
    act(&mut b, "<presence to='alice@localhost' type='subscribed'/>").await;
    let item = expect_push(&mut b, "alice@localhost").await;
    assert_state(&item, "none", None);
    assert_eq!(item.get_attr("approved"), Some("true"), "{item}");
    quiet(&mut a).await;

    // 3.1.3 rule 1: alice's request is approved automatically.
    act(&mut a, "<presence to='bob@localhost' type='subscribe'/>").await;
    assert_state(&expect_push(&mut a, "bob@localhost").await, "none", Some("subscribe"));
    expect(&mut a, "bob's automatic approval", |e| is_presence(e, "bob@localhost", Some("subscribed"))).await;
    assert_state(&expect_push(&mut a, "bob@localhost").await, "to", None);
    expect(&mut a, "bob's presence", |e| is_presence(e, "bob@localhost/b", None)).await;
    let item = expect_push(&mut b, "alice@localhost").await;
    assert_state(&item, "from", None);
    s.stop().await;
}

async fn subscription_request_waits_for_the_contact(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", PW).await;
    s.add_user("bob", PW).await;
    let mut a = interested_online(&s, "alice", "a").await;
    act(&mut a, "<presence to='bob@localhost' type='subscribe' id='req'><status>it is alice</status></presence>").await;
    assert_state(&expect_push(&mut a, "bob@localhost").await, "none", Some("subscribe"));

    // 3.1.3 rule 4: kept (with its content) and delivered when bob next has an available resource.
    let mut b0 = interested(&s, "bob", "b0").await;
    available(&mut b0, "<presence/>").await;
    let req = expect(&mut b0, "alice's stored request", |e| is_presence(e, "alice@localhost", Some("subscribe"))).await;
    assert_eq!(text_of(Some(&req), "status", ns::CLIENT).as_deref(), Some("it is alice"), "the complete stanza is kept: {req}");
    b0.close().await;
    // ... again and again until answered.
    let mut b = interested(&s, "bob", "b").await;
    available(&mut b, "<presence/>").await;
    expect(&mut b, "alice's request again", |e| is_presence(e, "alice@localhost", Some("subscribe"))).await;
    act(&mut b, "<presence to='alice@localhost' type='subscribed'/>").await;
    expect(&mut a, "bob's approval", |e| is_presence(e, "bob@localhost", Some("subscribed"))).await;
    assert_state(&expect_push(&mut a, "bob@localhost").await, "to", None);

    // Answered: not delivered any more.
    let mut b2 = interested(&s, "bob", "b2").await;
    available(&mut b2, "<presence/>").await;
    expect(&mut b2, "bob's other resource", |e| is_presence(e, "bob@localhost/b", None)).await;
    quiet(&mut b2).await;
    s.stop().await;
}

async fn subscribe_to_missing_account_is_an_error(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", PW).await;
    let mut a = interested_online(&s, "alice", "a").await;
    act(&mut a, "<presence to='nobody@localhost' type='subscribe' id='s1'/>").await;
    // RFC 6121 3.1.2: "If the presence subscription request cannot be locally delivered or
    // remotely routed (e.g., because the request is malformed, the local contact does not
    // exist, ...), then the user's server MUST return an appropriate error stanza to the user."
    let reply =
        expect(&mut a, "an answer about nobody@localhost", |e| presence_of_account(e, "nobody@localhost", e.get_attr("type"))).await;
    assert_eq!(reply.get_attr("type"), Some("error"), "RFC 6121 3.1.2: an error stanza, got {reply}");
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Presence (RFC 6121 section 4)
// ---------------------------------------------------------------------------------------------

async fn initial_presence_probes_and_broadcast(db: Db) {
    let s = TestServer::start(db).await;
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, PW).await;
    }
    let mut a0 = interested_online(&s, "alice", "a0").await;
    let mut b = interested_online(&s, "bob", "b").await;
    befriend(&mut a0, &mut b).await;
    a0.close().await;
    wait(&mut b, "alice/a0 leaving", |e| is_presence(e, "alice@localhost/a0", Some("unavailable"))).await;
    let mut c = online(&s, "carol", "c").await;

    // 4.2.2 / 4.3.2: on initial presence the server probes the contacts: bob, already online,
    // is seen at once; and bob, a subscriber, gets alice's presence.
    let mut a1 = interested(&s, "alice", "a1").await;
    available(&mut a1, "<presence><status>hello</status></presence>").await;
    expect(&mut a1, "bob's presence (probe answered)", |e| is_presence(e, "bob@localhost/b", None)).await;
    let p = expect(&mut b, "alice's initial presence", |e| is_presence(e, "alice@localhost/a1", None)).await;
    assert_eq!(text_of(Some(&p), "status", ns::CLIENT).as_deref(), Some("hello"), "the stanza is broadcast whole: {p}");
    // Not to someone without a subscription.
    quiet(&mut c).await;

    // The account's own resources see each other.
    let mut a2 = interested(&s, "alice", "a2").await;
    available(&mut a2, "<presence/>").await;
    expect(&mut a2, "alice/a1's presence", |e| is_presence(e, "alice@localhost/a1", None)).await;
    expect(&mut a2, "bob's presence", |e| is_presence(e, "bob@localhost/b", None)).await;
    expect(&mut a1, "alice/a2's presence", |e| is_presence(e, "alice@localhost/a2", None)).await;
    expect(&mut b, "alice/a2's presence", |e| is_presence(e, "alice@localhost/a2", None)).await;

    // 4.4.2: subsequent presence is broadcast the same way.
    available(&mut a1, "<presence><show>dnd</show></presence>").await;
    let is_dnd = |e: &Element| is_presence(e, "alice@localhost/a1", None) && text_of(Some(e), "show", ns::CLIENT).as_deref() == Some("dnd");
    expect(&mut b, "alice's dnd", is_dnd).await;
    expect(&mut a2, "alice's dnd", is_dnd).await;
    quiet(&mut c).await;
    s.stop().await;
}

async fn initial_presence_is_echoed_to_its_sender(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", PW).await;
    let mut a = s.login("alice", PW, "a").await;
    // RFC 6121 4.2.2: "The user's server MUST also broadcast initial presence from the user's
    // newly available resource to all of the user's available resources, including the resource
    // that generated the presence notification in the first place (i.e., an entity is implicitly
    // subscribed to its own presence)."
    let echoed = available(&mut a, "<presence/>").await;
    assert!(echoed, "RFC 6121 4.2.2: initial presence comes back to the resource that sent it");
    s.stop().await;
}

async fn unavailable_on_presence_close_and_drop(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", PW).await;
    s.add_user("bob", PW).await;
    let mut a1 = interested_online(&s, "alice", "one").await;
    let mut b = interested_online(&s, "bob", "b").await;
    befriend(&mut a1, &mut b).await;
    let mut a2 = online(&s, "alice", "two").await;
    let mut a3 = online(&s, "alice", "three").await;
    expect(&mut b, "alice/two", |e| is_presence(e, "alice@localhost/two", None)).await;
    expect(&mut b, "alice/three", |e| is_presence(e, "alice@localhost/three", None)).await;
    settle(&mut [&mut a1, &mut a2, &mut a3, &mut b]).await;

    // 4.5.2: explicit unavailable: to the subscribers and the other resources.
    act(&mut a3, "<presence type='unavailable'><status>bye</status></presence>").await;
    let p = expect(&mut b, "alice/three unavailable", |e| is_presence(e, "alice@localhost/three", Some("unavailable"))).await;
    assert_eq!(text_of(Some(&p), "status", ns::CLIENT).as_deref(), Some("bye"), "{p}");
    expect(&mut a1, "alice/three unavailable", |e| is_presence(e, "alice@localhost/three", Some("unavailable"))).await;
    expect(&mut a2, "alice/three unavailable", |e| is_presence(e, "alice@localhost/three", Some("unavailable"))).await;

    // The stream is closed.
    a1.close().await;
    wait(&mut b, "alice/one unavailable after its stream closed", |e| is_presence(e, "alice@localhost/one", Some("unavailable"))).await;
    wait(&mut a2, "alice/one unavailable after its stream closed", |e| is_presence(e, "alice@localhost/one", Some("unavailable"))).await;

    // The TCP connection just drops (4.5.2: "gone offline ungracefully").
    drop(a2);
    wait(&mut b, "alice/two unavailable after its connection dropped", |e| is_presence(e, "alice@localhost/two", Some("unavailable")))
        .await;
    s.stop().await;
}

async fn directed_presence_and_unavailable_at_logout(db: Db) {
    let s = TestServer::start(db).await;
    for u in ["alice", "carol", "dave"] {
        s.add_user(u, PW).await;
    }
    let mut a = online(&s, "alice", "a").await;
    let mut c = online(&s, "carol", "c").await;
    let mut d = online(&s, "dave", "d").await;

    // 4.6.2: directed presence to an entity without a subscription is delivered ...
    act(&mut a, "<presence to='carol@localhost/c'><status>hi carol</status></presence>").await;
    let p = expect(&mut c, "alice's directed presence", |e| is_presence(e, "alice@localhost/a", None)).await;
    assert_eq!(text_of(Some(&p), "status", ns::CLIENT).as_deref(), Some("hi carol"));
    // ... to a bare JID: every available resource (8.5.2.1.2), 'to' not rewritten.
    act(&mut a, "<presence to='dave@localhost'/>").await;
    let p = expect(&mut d, "alice's directed presence", |e| is_presence(e, "alice@localhost/a", None)).await;
    assert_eq!(p.get_attr("to"), Some("dave@localhost"), "{p}");
    // Directed unavailable.
    act(&mut a, "<presence to='dave@localhost' type='unavailable'/>").await;
    expect(&mut d, "alice's directed unavailable", |e| is_presence(e, "alice@localhost/a", Some("unavailable"))).await;
    quiet(&mut c).await;
    quiet(&mut d).await;

    // 4.6.3: at logout, unavailable goes to those that got directed presence (and only once:
    // dave already had alice's directed unavailable).
    a.close().await;
    wait(&mut c, "alice's unavailable at logout", |e| is_presence(e, "alice@localhost/a", Some("unavailable"))).await;
    quiet(&mut d).await;
    s.stop().await;
}

async fn negative_priority_gets_no_bare_jid_messages(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", PW).await;
    s.add_user("bob", PW).await;
    let mut neg = s.login("alice", PW, "neg").await;
    available(&mut neg, "<presence><priority>-1</priority></presence>").await;
    let mut pos = online(&s, "alice", "pos").await;
    let mut b = online(&s, "bob", "b").await;
    settle(&mut [&mut neg, &mut pos, &mut b]).await;

    // 8.5.2.1.1: to a non-negative resource, 'to' unchanged; never to a negative one.
    act(&mut b, "<message to='alice@localhost' type='chat' id='m1'><body>one</body></message>").await;
    let m = expect(&mut pos, "m1", |e| has_id(e, "message", "m1")).await;
    assert_eq!(m.get_attr("to"), Some("alice@localhost"), "RFC 6121 8.5.2.1.1: 'to' is not rewritten: {m}");
    quiet(&mut neg).await;

    // Only the negative-priority resource left: handled as if none were available.
    pos.close().await;
    wait(&mut neg, "alice/pos leaving", |e| is_presence(e, "alice@localhost/pos", Some("unavailable"))).await;
    act(&mut b, "<message to='alice@localhost' type='chat' id='m2'><body>two</body></message>").await;
    quiet(&mut neg).await;
    if let Some(e) = next_of(&mut b, |e| has_id(e, "message", "m2")).await {
        assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"), "stored offline or service-unavailable: {e}");
    }

    // 8.5.3.1: its full JID still reaches it.
    act(&mut b, "<message to='alice@localhost/neg' type='chat' id='m3'><body>three</body></message>").await;
    expect(&mut neg, "m3", |e| has_id(e, "message", "m3")).await;
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Delivery rules (RFC 6121 section 8)
// ---------------------------------------------------------------------------------------------

async fn message_delivery_rules(db: Db) {
    let s = TestServer::start(db).await;
    for u in ["alice", "bob", "carol", "dave"] {
        s.add_user(u, PW).await; // carol and dave stay offline
    }
    let mut a = online(&s, "alice", "desk").await;
    let mut b = online(&s, "bob", "b").await;
    settle(&mut [&mut a, &mut b]).await;

    // 8.5.3.1: full JID of an available resource.
    act(&mut b, "<message to='alice@localhost/desk' type='chat' id='m1'><body>1</body></message>").await;
    let m = expect(&mut a, "m1", |e| has_id(e, "message", "m1")).await;
    assert_eq!(m.get_attr("to"), Some("alice@localhost/desk"), "{m}");
    assert_eq!(m.get_attr("from"), Some("bob@localhost/b"), "{m}");

    // 8.5.3.2.1: chat to a resource that is not online: the one available resource gets it.
    act(&mut b, "<message to='alice@localhost/gone' type='chat' id='m2'><body>2</body></message>").await;
    expect(&mut a, "m2", |e| has_id(e, "message", "m2")).await;
    // Headline to it: silently ignored or an error, never delivered elsewhere.
    act(&mut b, "<message to='alice@localhost/gone' type='headline' id='m3'><body>3</body></message>").await;
    quiet(&mut a).await;
    if let Some(e) = next_of(&mut b, |e| has_id(e, "message", "m3")).await {
        assert_eq!(e.get_attr("type"), Some("error"), "{e}");
    }
    // 8.5.3.2.3: an IQ to it: service-unavailable.
    let r = b.iq("<iq type='get' id='q1' to='alice@localhost/gone'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("service-unavailable"), "{r}");

    // 8.5.2.2.1: headline to an account with no available resource: silently ignored.
    act(&mut b, "<message to='dave@localhost' type='headline' id='m5'><body>5</body></message>").await;
    quiet(&mut b).await;
    // Groupchat to a bare JID, with or without resources: an error, never delivered.
    act(&mut b, "<message to='alice@localhost' type='groupchat' id='m7'><body>7</body></message>").await;
    let e = expect(&mut b, "an error for m7", |e| has_id(e, "message", "m7")).await;
    assert_eq!(e.get_attr("type"), Some("error"), "RFC 6121 8.5.2.1.1: {e}");
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"), "{e}");
    quiet(&mut a).await;
    act(&mut b, "<message to='dave@localhost' type='groupchat' id='m8'><body>8</body></message>").await;
    let e = expect(&mut b, "an error for m8", |e| has_id(e, "message", "m8")).await;
    assert_eq!(e.get_attr("type"), Some("error"), "RFC 6121 8.5.2.2.1: {e}");

    // 8.5.1: no such account: message ignored or service-unavailable; presence ignored.
    act(&mut b, "<message to='nobody@localhost' type='chat' id='m6'><body>6</body></message>").await;
    if let Some(e) = next_of(&mut b, |e| has_id(e, "message", "m6")).await {
        assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"), "{e}");
    }
    act(&mut b, "<presence to='nobody@localhost'/>").await;
    quiet(&mut b).await;

    // Error messages are never answered, nor delivered (8.5.2.1.1, 8.5.2.2.1, 8.5.3.2.1).
    for (i, to) in ["alice@localhost", "alice@localhost/gone", "dave@localhost", "nobody@localhost"].iter().enumerate() {
        act(
            &mut b,
            &format!(
                "<message to='{to}' type='error' id='e{i}'><error type='cancel'><undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
            ),
        )
        .await;
    }
    quiet(&mut b).await;
    quiet(&mut a).await;

    // 8.5.2.2.1: chat to an account with no available resource: stored for later delivery, or
    // service-unavailable.
    act(&mut b, "<message to='carol@localhost' type='chat' id='m4'><body>hello carol</body></message>").await;
    match next_of(&mut b, |e| has_id(e, "message", "m4")).await {
        Some(e) => assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"), "{e}"),
        None => {
            let mut c = s.login("carol", PW, "c").await;
            available(&mut c, "<presence/>").await;
            let m = expect(&mut c, "the stored m4", |e| has_id(e, "message", "m4")).await;
            assert_eq!(text_of(Some(&m), "body", ns::CLIENT).as_deref(), Some("hello carol"), "{m}");
        }
    }
    s.stop().await;
}

async fn normal_message_to_offline_resource_is_not_redirected(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", PW).await;
    s.add_user("bob", PW).await;
    let mut a = online(&s, "alice", "desk").await;
    let mut b = online(&s, "bob", "b").await;
    settle(&mut [&mut a, &mut b]).await;
    // RFC 6121 8.5.3.2.1 (no resource matches the full JID): "For a message stanza of type
    // "normal", "groupchat", or "headline", the server MUST either (a) silently ignore the stanza
    // or (b) return an error stanza to the sender". Only "chat" goes to the other resources.
    act(&mut b, "<message to='alice@localhost/gone' type='normal' id='n1'><body>n1</body></message>").await;
    act(&mut b, "<message to='alice@localhost/gone' id='n2'><body>n2 (no type: normal)</body></message>").await;
    if let Some(m) = next_of(&mut a, |e| e.name == "message").await {
        panic!("RFC 6121 8.5.3.2.1: a normal message for an offline resource must not be delivered to another one: {m}");
    }
    s.stop().await;
}

async fn iq_to_missing_account_is_service_unavailable(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("bob", PW).await;
    let mut b = s.login("bob", PW, "b").await;
    // RFC 6121 8.5.1: "If the user account identified by the 'to' attribute does not exist ...
    // For an IQ stanza, the server MUST return a <service-unavailable/> stanza error".
    let mut wrong = Vec::new();
    for (i, payload) in [
        "<vCard xmlns='vcard-temp'/>",
        "<query xmlns='jabber:iq:last'/>",
        "<ping xmlns='urn:xmpp:ping'/>",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        "<query xmlns='urn:example:unknown'/>",
    ]
    .iter()
    .enumerate()
    {
        let r = b.iq(&format!("<iq type='get' id='x{i}' to='nobody@localhost'>{payload}</iq>")).await;
        if error_condition(&r).as_deref() != Some("service-unavailable") {
            wrong.push(format!("{payload} -> {r}"));
        }
    }
    assert!(wrong.is_empty(), "RFC 6121 8.5.1: IQs to a missing account get service-unavailable; wrong answers:\n{}", wrong.join("\n"));
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Resource conflict (RFC 6120 7.7.2.2)
// ---------------------------------------------------------------------------------------------

async fn second_login_with_same_full_jid_replaces_the_first(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", PW).await;
    s.add_user("bob", PW).await;
    let mut old = online(&s, "alice", "phone").await;
    let mut b = online(&s, "bob", "b").await;
    let mut new = s.login("alice", PW, "phone").await;
    assert_eq!(new.jid.as_deref(), Some("alice@localhost/phone"));
    assert_eq!(old.stream_error().await, "conflict");
    let r = new.iq("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    get_roster(&mut new).await;
    available(&mut new, "<presence/>").await;
    act(&mut b, "<message to='alice@localhost/phone' type='chat' id='m1'><body>for the new one</body></message>").await;
    expect(&mut new, "m1", |e| has_id(e, "message", "m1")).await;
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Blocking (XEP-0191)
// ---------------------------------------------------------------------------------------------

async fn blocking_command(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", PW).await;
    s.add_user("bob", PW).await;
    let mut a1 = s.login("alice", PW, "one").await;
    assert!(blocklist(&mut a1).await.is_empty());
    available(&mut a1, "<presence/>").await;
    let mut a2 = s.login("alice", PW, "two").await;
    blocklist(&mut a2).await;
    available(&mut a2, "<presence/>").await;
    let mut a3 = online(&s, "alice", "three").await; // never fetches the block list
    let mut b = online(&s, "bob", "b").await;
    settle(&mut [&mut a1, &mut a2, &mut a3, &mut b]).await;

    // 3.3: block: result, and a push to each resource that fetched the list.
    let r = a1.iq("<iq type='set' id='bl1'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block></iq>").await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    for c in [&mut a1, &mut a2] {
        let p = expect(c, "a block push", |e| block_push(e, "block").is_some()).await;
        let items: Vec<&str> = block_push(&p, "block").unwrap().elements().filter_map(|i| i.get_attr("jid")).collect();
        assert_eq!(items, ["bob@localhost"], "{p}");
    }
    quiet(&mut a3).await;
    settle(&mut [&mut b]).await; // presence effects of blocking: see the block_* presence tests
    assert_eq!(blocklist(&mut a2).await, ["bob@localhost"]);

    // Inbound from the blocked contact: not delivered; message -> service-unavailable (SHOULD),
    // IQ get -> an error (MUST, SHOULD be service-unavailable), presence -> nothing at all.
    act(&mut b, "<message to='alice@localhost' type='chat' id='m1'><body>1</body></message>").await;
    let e = expect(&mut b, "an error for m1", |e| has_id(e, "message", "m1")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"), "{e}");
    act(&mut b, "<message to='alice@localhost/one' type='chat' id='m2'><body>2</body></message>").await;
    let e = expect(&mut b, "an error for m2", |e| has_id(e, "message", "m2")).await;
    assert_eq!(e.get_attr("type"), Some("error"), "{e}");
    let r = b.iq("<iq type='get' id='q1' to='alice@localhost/one'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("service-unavailable"), "{r}");
    act(&mut b, "<presence to='alice@localhost/one'/>").await;
    act(&mut b, "<presence to='alice@localhost' type='subscribe'/>").await;
    quiet(&mut b).await;
    for c in [&mut a1, &mut a2, &mut a3] {
        quiet(c).await;
    }

    // Outbound to the blocked contact: not-acceptable with <blocked/>.
    act(&mut a1, "<message to='bob@localhost' type='chat' id='m3'><body>3</body></message>").await;
    let e = expect(&mut a1, "an error for m3", |e| has_id(e, "message", "m3")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("not-acceptable"), "{e}");
    assert!(e.find("error", ns::CLIENT).and_then(|x| x.find("blocked", ns::BLOCKING_ERRORS)).is_some(), "{e}");
    quiet(&mut b).await;

    // 3.4: unblock: result, pushes, delivery restored.
    let r = a2.iq("<iq type='set' id='ub1'><unblock xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></unblock></iq>").await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    for c in [&mut a1, &mut a2] {
        let p = expect(c, "an unblock push", |e| block_push(e, "unblock").is_some()).await;
        let items: Vec<&str> = block_push(&p, "unblock").unwrap().elements().filter_map(|i| i.get_attr("jid")).collect();
        assert_eq!(items, ["bob@localhost"], "{p}");
    }
    quiet(&mut a3).await;
    assert!(blocklist(&mut a1).await.is_empty());
    act(&mut b, "<message to='alice@localhost/one' type='chat' id='m4'><body>4</body></message>").await;
    expect(&mut a1, "m4 after unblocking", |e| has_id(e, "message", "m4")).await;
    act(&mut a1, "<message to='bob@localhost/b' type='chat' id='m5'><body>5</body></message>").await;
    expect(&mut b, "m5 after unblocking", |e| has_id(e, "message", "m5")).await;
    s.stop().await;
}

async fn block_sends_unavailable_only_where_presence_was_visible(db: Db) {
    let s = TestServer::start(db).await;
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, PW).await;
    }
    let mut a = interested_online(&s, "alice", "a").await;
    let mut b = interested_online(&s, "bob", "b").await;
    befriend(&mut a, &mut b).await;
    let mut c = online(&s, "carol", "c").await;
    settle(&mut [&mut a, &mut b, &mut c]).await;
    let r = a
        .iq("<iq type='set' id='bl'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/><item jid='carol@localhost'/></block></iq>")
        .await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    // XEP-0191 3.3: "the user's server MUST send unavailable presence information to the contact
    // (but only if the contact is allowed to receive presence notifications from the user)".
    expect(&mut b, "alice's unavailable (bob is a subscriber)", |e| is_presence(e, "alice@localhost/a", Some("unavailable"))).await;
    if let Some(p) = next_of(&mut c, |e| e.name == "presence").await {
        panic!("XEP-0191 3.3: carol never was allowed to see alice's presence, yet got {p}");
    }
    s.stop().await;
}

async fn unblock_sends_current_presence_to_subscriber(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", PW).await;
    s.add_user("bob", PW).await;
    let mut a = interested_online(&s, "alice", "a").await;
    let mut b = interested_online(&s, "bob", "b").await;
    befriend(&mut a, &mut b).await;
    a.iq("<iq type='set' id='bl'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block></iq>").await;
    expect(&mut b, "alice's unavailable", |e| is_presence(e, "alice@localhost/a", Some("unavailable"))).await;
    a.iq("<iq type='set' id='ub'><unblock xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></unblock></iq>").await;
    // XEP-0191 3.4: "When the user unblocks communications with the contact, the user's server
    // MUST send the user's current presence information to the contact (but only if the contact
    // is allowed to receive presence notifications from the user)".
    expect(&mut b, "alice's current presence after the unblock", |e| is_presence(e, "alice@localhost/a", None)).await;
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// vcard-temp (XEP-0054), private XML storage (XEP-0049), last activity (XEP-0012)
// ---------------------------------------------------------------------------------------------

async fn vcard_set_and_get(db: Db) {
    let s = TestServer::start(db).await;
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, PW).await;
    }
    let mut a = s.login("alice", PW, "a").await;
    let mut b = s.login("bob", PW, "b").await;
    let fn_of = |r: &Element| text_of(r.find("vCard", ns::VCARD), "FN", ns::VCARD);

    let r = a.iq("<iq type='set' id='v1'><vCard xmlns='vcard-temp'><FN>Alice Liddell</FN><NICKNAME>ally</NICKNAME></vCard></iq>").await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    let r = a.iq("<iq type='get' id='v2'><vCard xmlns='vcard-temp'/></iq>").await;
    assert_eq!(fn_of(&r).as_deref(), Some("Alice Liddell"), "own vCard: {r}");
    assert_eq!(text_of(r.find("vCard", ns::VCARD), "NICKNAME", ns::VCARD).as_deref(), Some("ally"), "{r}");

    // Someone else's: from the bare JID.
    let r = b.iq("<iq type='get' id='v3' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>").await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    assert_eq!(r.get_attr("from"), Some("alice@localhost"), "{r}");
    assert_eq!(fn_of(&r).as_deref(), Some("Alice Liddell"), "{r}");

    // No vCard: an error (item-not-found) or an empty <vCard/> (XEP-0054 3.1).
    let r = b.iq("<iq type='get' id='v4' to='carol@localhost'><vCard xmlns='vcard-temp'/></iq>").await;
    match r.get_attr("type") {
        Some("result") => assert!(r.find("vCard", ns::VCARD).is_some_and(|v| v.elements().next().is_none()), "{r}"),
        _ => assert_eq!(r.get_attr("type"), Some("error"), "{r}"),
    }

    // Only the owner may change it.
    let r = b.iq("<iq type='set' id='v5' to='alice@localhost'><vCard xmlns='vcard-temp'><FN>Mallory</FN></vCard></iq>").await;
    assert_eq!(r.get_attr("type"), Some("error"), "{r}");
    let r = a.iq("<iq type='get' id='v6'><vCard xmlns='vcard-temp'/></iq>").await;
    assert_eq!(fn_of(&r).as_deref(), Some("Alice Liddell"), "unchanged: {r}");

    // A new set replaces the whole card.
    a.iq("<iq type='set' id='v7'><vCard xmlns='vcard-temp'><FN>Alice L.</FN></vCard></iq>").await;
    let r = b.iq("<iq type='get' id='v8' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>").await;
    assert_eq!(fn_of(&r).as_deref(), Some("Alice L."), "{r}");
    assert!(r.find("vCard", ns::VCARD).and_then(|v| v.find("NICKNAME", ns::VCARD)).is_none(), "{r}");
    s.stop().await;
}

async fn private_xml_storage(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", PW).await;
    s.add_user("bob", PW).await;
    let mut a = s.login("alice", PW, "a").await;
    let mut b = s.login("bob", PW, "b").await;
    let theme = |r: &Element| {
        text_of(r.find("query", ns::PRIVATE).and_then(|q| q.find("prefs", "urn:example:prefs")), "theme", "urn:example:prefs")
    };

    let r = a
        .iq("<iq type='set' id='p1'><query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'><theme>dark</theme></prefs></query></iq>")
        .await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    let r = a.iq("<iq type='get' id='p2'><query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'/></query></iq>").await;
    assert_eq!(theme(&r).as_deref(), Some("dark"), "{r}");
    // Nothing stored in a namespace: the empty element back.
    let r = a.iq("<iq type='get' id='p3'><query xmlns='jabber:iq:private'><other xmlns='urn:example:other'/></query></iq>").await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    let o = r.find("query", ns::PRIVATE).and_then(|q| q.find("other", "urn:example:other"));
    assert!(o.is_some_and(|o| o.elements().next().is_none()), "{r}");
    // Overwrite.
    a.iq("<iq type='set' id='p4'><query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'><theme>light</theme></prefs></query></iq>")
        .await;
    let r = a.iq("<iq type='get' id='p5'><query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'/></query></iq>").await;
    assert_eq!(theme(&r).as_deref(), Some("light"), "{r}");

    // Reserved namespace, and no child at all: not-acceptable.
    let r = a.iq("<iq type='set' id='p6'><query xmlns='jabber:iq:private'><x xmlns='jabber:client'/></query></iq>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-acceptable"), "{r}");
    let r = a.iq("<iq type='get' id='p7'><query xmlns='jabber:iq:private'><x xmlns='jabber:client'/></query></iq>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-acceptable"), "{r}");
    let r = a.iq("<iq type='set' id='p8'><query xmlns='jabber:iq:private'/></iq>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-acceptable"), "{r}");

    // Another user's data: forbidden (or service-unavailable), both ways.
    for (id, typ, body) in [
        ("p9", "get", "<prefs xmlns='urn:example:prefs'/>"),
        ("p10", "set", "<prefs xmlns='urn:example:prefs'><theme>pink</theme></prefs>"),
    ] {
        let r =
            b.iq(&format!("<iq type='{typ}' id='{id}' to='alice@localhost'><query xmlns='jabber:iq:private'>{body}</query></iq>")).await;
        let c = error_condition(&r);
        assert!(matches!(c.as_deref(), Some("forbidden") | Some("service-unavailable")), "XEP-0049: {r}");
    }
    let r = a.iq("<iq type='get' id='p11'><query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'/></query></iq>").await;
    assert_eq!(theme(&r).as_deref(), Some("light"), "unchanged: {r}");
    s.stop().await;
}

async fn private_xml_storage_several_elements_of_one_namespace(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", PW).await;
    let mut a = s.login("alice", PW, "a").await;
    // XEP-0049 2.3: "A client MUST NOT query for more than namespace in a single IQ get request.
    // However, an IQ set or result MAY contain multiple elements qualified by the same namespace."
    let r = a
        .iq("<iq type='set' id='p1'><query xmlns='jabber:iq:private'><a xmlns='urn:example:multi'>1</a><b xmlns='urn:example:multi'>2</b></query></iq>")
        .await;
    assert_eq!(r.get_attr("type"), Some("result"), "XEP-0049 2.3: several elements of one namespace may be stored: {r}");
    let r = a.iq("<iq type='get' id='p2'><query xmlns='jabber:iq:private'><a xmlns='urn:example:multi'/></query></iq>").await;
    let q = r.find("query", ns::PRIVATE).unwrap_or_else(|| panic!("{r}"));
    assert_eq!(text_of(Some(q), "a", "urn:example:multi").as_deref(), Some("1"), "{r}");
    assert_eq!(text_of(Some(q), "b", "urn:example:multi").as_deref(), Some("2"), "{r}");
    s.stop().await;
}

async fn last_activity_of_offline_contact(db: Db) {
    let s = TestServer::start(db).await;
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, PW).await;
    }
    let mut a = interested_online(&s, "alice", "a").await;
    let mut b = interested_online(&s, "bob", "b").await;
    befriend(&mut a, &mut b).await;
    let mut c = s.login("carol", PW, "c").await;

    act(&mut a, "<presence type='unavailable'><status>gone fishing</status></presence>").await;
    expect(&mut b, "alice leaving", |e| is_presence(e, "alice@localhost/a", Some("unavailable"))).await;
    a.close().await;

    // XEP-0012 section 3: seconds since the last logout, and the status of that presence.
    let r = b.iq("<iq type='get' id='l1' to='alice@localhost'><query xmlns='jabber:iq:last'/></iq>").await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    assert_eq!(r.get_attr("from"), Some("alice@localhost"), "{r}");
    let q = r.find("query", ns::LAST).unwrap_or_else(|| panic!("{r}"));
    let secs: u64 = q.get_attr("seconds").and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("seconds: {q}"));
    assert!(secs < 120, "alice left moments ago: {q}");
    assert_eq!(q.text_content(), "gone fishing", "{q}");

    // Without a subscription to alice's presence: forbidden.
    let r = c.iq("<iq type='get' id='l2' to='alice@localhost'><query xmlns='jabber:iq:last'/></iq>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"), "{r}");
    s.stop().await;
}

crate::on_both!(
    roster_get_set_remove_and_pushes,
    roster_versioning,
    roster_set_errors,
    roster_set_with_empty_group_is_not_acceptable,
    subscription_handshake_to_both,
    cancel_unsubscribe_and_deny,
    cancellation_sends_unavailable_before_unsubscribed,
    preapproval,
    subscription_request_waits_for_the_contact,
    subscribe_to_missing_account_is_an_error,
    initial_presence_probes_and_broadcast,
    initial_presence_is_echoed_to_its_sender,
    unavailable_on_presence_close_and_drop,
    directed_presence_and_unavailable_at_logout,
    negative_priority_gets_no_bare_jid_messages,
    message_delivery_rules,
    normal_message_to_offline_resource_is_not_redirected,
    iq_to_missing_account_is_service_unavailable,
    second_login_with_same_full_jid_replaces_the_first,
    blocking_command,
    block_sends_unavailable_only_where_presence_was_visible,
    unblock_sends_current_presence_to_subscriber,
    vcard_set_and_get,
    private_xml_storage,
    private_xml_storage_several_elements_of_one_namespace,
    last_activity_of_offline_contact,
);
