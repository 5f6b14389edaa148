//! Personal Eventing Protocol (XEP-0163), black-box: publish (and publish-options), items,
//! access by presence subscription, open and whitelist nodes, max_items, notifications to the
//! owner's and to subscribed contacts' resources that ask for them with entity capabilities
//! (XEP-0115: the server's caps query answered, `+notify`), the last item on coming online,
//! retract, delete, discovery, persistence.

use starling::storage::roster::{RosterItem, Subscription};
use starling::xml::{ns, Element};

use starling::xml::XmlEvent;

use crate::common::{error_condition, Client, Db, TestServer};

const PW: &str = "secret";
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const NICK: &str = "http://jabber.org/protocol/nick";

fn publish(node: &str, id: &str, payload: &str, options: &[(&str, &str)]) -> String {
    let mut opts = String::new();
    if !options.is_empty() {
        opts.push_str("<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>");
        for (k, v) in options {
            opts.push_str(&format!("<field var='{k}'><value>{v}</value></field>"));
        }
        opts.push_str("</x></publish-options>");
    }
    format!("<iq type='set' id='p-{id}'><pubsub xmlns='{PUBSUB}'><publish node='{node}'><item id='{id}'>{payload}</item></publish>{opts}</pubsub></iq>")
}

fn items_of(owner: &str, node: &str, extra: &str) -> String {
    format!("<iq type='get' to='{owner}' id='g'><pubsub xmlns='{PUBSUB}'><items node='{node}' {extra}/></pubsub></iq>")
}

/// Item ids and texts of an items result.
fn items(r: &Element) -> Vec<(String, String)> {
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    let list = r.find("pubsub", PUBSUB).and_then(|p| p.find("items", PUBSUB)).unwrap_or_else(|| panic!("no items in {r}"));
    list.elements()
        .map(|i| (i.get_attr("id").unwrap_or("").to_string(), i.elements().next().map(|p| p.text_content()).unwrap_or_default()))
        .collect()
}

fn pubsub_condition(r: &Element) -> Option<String> {
    r.find("error", ns::CLIENT)
        .and_then(|e| e.elements().find(|c| c.ns == "http://jabber.org/protocol/pubsub#errors").map(|c| c.name.clone()))
}

/// Online with entity capabilities asking for the events of `nodes` (`<node>+notify`); the
/// server's disco#info query for the caps (when it does not know them yet) is answered.
async fn online_notify(s: &TestServer, user: &str, resource: &str, nodes: &[&str]) -> Client {
    online_caps(s, user, resource, nodes, false).await
}

/// `online_notify`; with `lie`, the answer to the caps query holds one feature more than the
/// announced hash covers.
async fn online_caps(s: &TestServer, user: &str, resource: &str, nodes: &[&str], lie: bool) -> Client {
    let mut c = s.login(user, PW, resource).await;
    let mut q = Element::new("query", ns::DISCO_INFO)
        .child(Element::new("identity", ns::DISCO_INFO).attr("category", "client").attr("type", "pc").attr("name", "Test"))
        .child(Element::new("feature", ns::DISCO_INFO).attr("var", ns::DISCO_INFO));
    for n in nodes {
        q = q.child(Element::new("feature", ns::DISCO_INFO).attr("var", format!("{n}+notify")));
    }
    let ver = starling::modules::caps::ver_of(&q);
    let caps_node = "https://client.example";
    c.send(&format!("<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='{caps_node}' ver='{ver}'/></presence>")).await;
    let me = c.jid.clone().unwrap();
    c.recv_where(|e| e.name == "presence" && e.get_attr("from") == Some(me.as_str())).await;
    // The query comes right after the presence when the server does not know this ver.
    let mut other = Vec::new();
    while let Some(Ok(XmlEvent::Element(e))) = c.try_event(400).await {
        let asked = e.find("query", ns::DISCO_INFO).and_then(|q| q.get_attr("node")).map(str::to_string);
        if e.name == "iq" && e.get_attr("type") == Some("get") && asked == Some(format!("{caps_node}#{ver}")) {
            assert_eq!(e.get_attr("from"), Some("localhost"));
            let mut answer = q.clone().attr("node", format!("{caps_node}#{ver}"));
            if lie {
                answer = answer.child(Element::new("feature", ns::DISCO_INFO).attr("var", "urn:example:unannounced"));
            }
            c.send(&format!("<iq type='result' to='localhost' id='{}'>{}</iq>", e.get_attr("id").unwrap(), answer.to_xml())).await;
            break;
        }
        other.push(e);
    }
    c.queue.extend(other);
    c
}

async fn event(c: &mut Client) -> Element {
    let m = c.recv_where(|e| e.name == "message" && e.find("event", EVENT).is_some()).await;
    assert_eq!(m.get_attr("type"), Some("headline"));
    m.find("event", EVENT).unwrap().clone()
}

async fn setup(db: Db) -> TestServer {
    let s = TestServer::start(db).await;
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, PW).await;
    }
    // bob is subscribed to alice's presence (and she to his); carol is a stranger.
    let mut item = RosterItem::new("bob@localhost");
    item.subscription = Subscription::Both;
    s.storage.put_roster_item("alice@localhost", &item).await.unwrap();
    let mut item = RosterItem::new("alice@localhost");
    item.subscription = Subscription::Both;
    s.storage.put_roster_item("bob@localhost", &item).await.unwrap();
    s
}

async fn publish_read_and_notify(db: Db) {
    let s = setup(db).await;
    let mut alice = online_notify(&s, "alice", "phone", &[NICK]).await;
    let mut bob = online_notify(&s, "bob", "laptop", &[NICK]).await;
    // bob's other client did not ask for nicknames: it is told nothing.
    let mut bob_quiet = s.online("bob", PW, "watch").await;
    bob_quiet.drain(300).await; // the presences of the others
    let mut carol = s.online("carol", PW, "pc").await;

    // Discovery on the account (XEP-0163 section 6.1).
    let d = alice.iq("<iq type='get' to='alice@localhost' id='d'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let q = d.find("query", ns::DISCO_INFO).unwrap();
    assert!(
        q.elements().any(|i| i.name == "identity" && i.get_attr("category") == Some("pubsub") && i.get_attr("type") == Some("pep")),
        "{d}"
    );
    assert!(q.elements().any(|f| f.get_attr("var") == Some("http://jabber.org/protocol/pubsub#publish-options")), "{d}");

    // Publish: the node is made; the owner's resource and the subscribed contact are told.
    let r = alice.iq(&publish(NICK, "current", &format!("<nick xmlns='{NICK}'>Ali</nick>"), &[])).await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    let item = r.find("pubsub", PUBSUB).and_then(|p| p.find("publish", PUBSUB)).and_then(|p| p.find("item", PUBSUB));
    assert_eq!(item.and_then(|i| i.get_attr("id")), Some("current"));
    for c in [&mut alice, &mut bob] {
        let e = event(c).await;
        let i = e.find("items", EVENT).and_then(|l| l.find("item", EVENT)).expect("an item");
        assert_eq!(i.get_attr("id"), Some("current"));
        assert_eq!(i.find("nick", NICK).map(|n| n.text_content()).as_deref(), Some("Ali"));
    }
    // Read by the subscribed contact, refused to the stranger (presence access model).
    assert_eq!(items(&bob.iq(&items_of("alice@localhost", NICK, "")).await), [("current".into(), "Ali".into())]);
    let r = carol.iq(&items_of("alice@localhost", NICK, "")).await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-authorized"));
    assert_eq!(pubsub_condition(&r).as_deref(), Some("presence-subscription-required"));
    carol.expect_silence(200).await;
    bob_quiet.expect_silence(100).await;
    // A client of bob's that comes online asking for nicknames gets the last one at once.
    let mut bob_new = online_notify(&s, "bob", "tablet", &[NICK]).await;
    let e = event(&mut bob_new).await;
    assert_eq!(e.find("items", EVENT).and_then(|i| i.get_attr("node")), Some(NICK));
    // The same id replaces the item (one kept by default).
    alice.iq(&publish(NICK, "current", &format!("<nick xmlns='{NICK}'>Alice</nick>"), &[])).await;
    event(&mut bob).await;
    assert_eq!(items(&alice.iq(&items_of("alice@localhost", NICK, "")).await), [("current".into(), "Alice".into())]);
    // Only the owner publishes.
    let r = bob.iq(&format!(
        "<iq type='set' to='alice@localhost' id='x'><pubsub xmlns='{PUBSUB}'><publish node='{NICK}'><item><nick xmlns='{NICK}'>Bob</nick></item></publish></pubsub></iq>"
    ))
    .await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));
    s.stop().await;
}

async fn options_retract_delete_and_restart(db: Db) {
    let s = setup(db).await;
    let mut alice = s.online("alice", PW, "phone").await;
    let mut bob = online_notify(&s, "bob", "laptop", &["urn:example:feed"]).await;
    let mut carol = s.online("carol", PW, "pc").await;
    // An open node keeping the two newest items.
    let node = "urn:example:feed";
    for (id, text) in [("1", "one"), ("2", "two"), ("3", "three")] {
        let r = alice
            .iq(&publish(
                node,
                id,
                &format!("<entry xmlns='urn:example'>{text}</entry>"),
                &[("pubsub#access_model", "open"), ("pubsub#max_items", "2")],
            ))
            .await;
        assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    }
    assert_eq!(items(&carol.iq(&items_of("alice@localhost", node, "")).await), [("2".into(), "two".into()), ("3".into(), "three".into())]);
    assert_eq!(items(&carol.iq(&items_of("alice@localhost", node, "max_items='1'")).await), [("3".into(), "three".into())]);
    let r = carol
        .iq(&format!(
            "<iq type='get' to='alice@localhost' id='g'><pubsub xmlns='{PUBSUB}'><items node='{node}'><item id='2'/></items></pubsub></iq>"
        ))
        .await;
    assert_eq!(items(&r), [("2".into(), "two".into())]);
    // A whitelist node (bookmarks): the owner only.
    let bm = "urn:xmpp:bookmarks:1";
    let conf = "<conference xmlns='urn:xmpp:bookmarks:1' autojoin='true'><nick>ali</nick></conference>";
    let r = alice
        .iq(&publish(bm, "room@conference.localhost", conf, &[("pubsub#access_model", "whitelist"), ("pubsub#max_items", "max")]))
        .await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    let r = bob.iq(&items_of("alice@localhost", bm, "")).await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-allowed"));
    assert_eq!(items(&alice.iq(&items_of("alice@localhost", bm, "")).await).len(), 1);
    // A bad option is refused with precondition-not-met.
    let r = alice.iq(&publish(node, "4", "<entry xmlns='urn:example'>x</entry>", &[("pubsub#access_model", "everyone")])).await;
    assert_eq!(pubsub_condition(&r).as_deref(), Some("precondition-not-met"));

    // Retract with notify: bob (who may read the open node) is told.
    bob.drain(300).await;
    let r = alice
        .iq(&format!(
            "<iq type='set' id='r'><pubsub xmlns='{PUBSUB}'><retract node='{node}' notify='true'><item id='3'/></retract></pubsub></iq>"
        ))
        .await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    let e = event(&mut bob).await;
    assert_eq!(e.find("items", EVENT).and_then(|i| i.find("retract", EVENT)).and_then(|r| r.get_attr("id")), Some("3"));
    assert_eq!(items(&carol.iq(&items_of("alice@localhost", node, "")).await), [("2".into(), "two".into())]);

    // Kept across a restart.
    let s = s.restart().await;
    let mut alice = s.online("alice", PW, "phone").await;
    assert_eq!(items(&alice.iq(&items_of("alice@localhost", node, "")).await), [("2".into(), "two".into())]);
    // Deleted by its owner: gone.
    let r = alice
        .iq(&format!(
            "<iq type='set' id='del'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><delete node='{node}'/></pubsub></iq>"
        ))
        .await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    let r = alice.iq(&items_of("alice@localhost", node, "")).await;
    assert_eq!(error_condition(&r).as_deref(), Some("item-not-found"));
    s.stop().await;
}

/// XEP-0115 section 5.4: an answer that does not match its hash is not kept, so one client
/// cannot poison the features of every client announcing the same ver.
async fn caps_answers_are_checked(db: Db) {
    let s = setup(db).await;
    let mut alice = s.online("alice", PW, "phone").await;
    let mut liar = online_caps(&s, "bob", "liar", &[NICK], true).await;
    liar.drain(300).await;
    alice.iq(&publish(NICK, "current", &format!("<nick xmlns='{NICK}'>Ali</nick>"), &[])).await;
    liar.expect_silence(300).await;
    // The same ver from an honest client is asked again (nothing was kept), and then it counts.
    let mut honest = online_notify(&s, "bob", "honest", &[NICK]).await;
    let e = event(&mut honest).await;
    assert_eq!(e.find("items", EVENT).and_then(|i| i.get_attr("node")), Some(NICK), "the last item once its caps are known");
    s.stop().await;
}

crate::on_both!(publish_read_and_notify, options_retract_delete_and_restart, caps_answers_are_checked);
