//! External components (XEP-0114, `jabber:component:accept`), black-box: the handshake and its
//! errors, stanzas both ways between a component and local accounts, addressing rules, and
//! what happens to messages while a component is away (kept, then written at its next
//! handshake, once).

use sha1::{Digest, Sha1};
use starling::config::ComponentConfig;
use starling::xml::{ns, Element, XmlEvent};

use crate::common::{error_condition, Client, Db, TestServer};

const PW: &str = "secret";
const NS: &str = "jabber:component:accept";
const BOT: &str = "bot.localhost";
const SECRET: &str = "bot-secret";

async fn server(db: Db, users: &[&str]) -> TestServer {
    let s = TestServer::start_with(db, |c| {
        c.listen.component = vec!["127.0.0.1:0".parse().unwrap()];
        c.components = vec![
            ComponentConfig { domain: BOT.into(), secret: SECRET.into() },
            ComponentConfig { domain: "other.localhost".into(), secret: "other-secret".into() },
        ];
    })
    .await;
    for u in users {
        s.add_user(u, PW).await;
    }
    s
}

/// Open a component stream to `domain`; returns the connection and the stream id.
async fn open(s: &TestServer, domain: &str) -> (Client, String) {
    let mut c = Client::connect(s.component.expect("component listener")).await;
    c.send(&format!("<?xml version='1.0'?><stream:stream xmlns='{NS}' xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"))
        .await;
    match c.event().await {
        Ok(XmlEvent::StreamOpen(h)) => {
            assert_eq!(h.default_ns, NS);
            assert_eq!(h.attr("from"), Some(domain));
            let id = h.attr("id").expect("stream id").to_string();
            (c, id)
        }
        other => panic!("expected a stream header, got {other:?}"),
    }
}

/// XEP-0114 section 3: lowercase hex SHA-1 of the stream id followed by the secret.
fn digest(id: &str, secret: &str) -> String {
    Sha1::digest(format!("{id}{secret}").as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A connected, authenticated component.
async fn connect(s: &TestServer, domain: &str, secret: &str) -> Client {
    let (mut c, id) = open(s, domain).await;
    c.send(&format!("<handshake>{}</handshake>", digest(&id, secret))).await;
    let ok = c.recv().await;
    assert!(ok.is("handshake", NS) && ok.children.is_empty(), "expected an empty handshake, got {ok}");
    c
}

fn text(e: &Element, child: &str) -> Option<String> {
    e.elements().find(|c| c.name == child).map(|c| c.text_content())
}

/// The condition of a stanza error as the component receives it (component namespace).
fn component_error(e: &Element) -> Option<String> {
    e.elements()
        .find(|c| c.name == "error")
        .and_then(|err| err.elements().find(|c| c.ns == ns::STANZA_ERRORS && c.name != "text").map(|c| c.name.clone()))
}

async fn messages_both_ways(db: Db) {
    let s = server(db, &["alice"]).await;
    let mut bot = connect(&s, BOT, SECRET).await;
    let mut alice = s.online("alice", PW, "phone").await;
    let me = alice.jid.clone().unwrap();

    alice.send("<message to='echo@bot.localhost' type='chat' id='m1'><body>ping</body></message>").await;
    let got = bot.recv_where(|e| e.name == "message").await;
    assert_eq!(got.ns, NS, "stanzas reach the component in its own namespace");
    assert_eq!(got.get_attr("from"), Some(me.as_str()));
    assert_eq!(got.get_attr("to"), Some("echo@bot.localhost"));
    assert_eq!(text(&got, "body").as_deref(), Some("ping"));

    bot.send(&format!("<message from='echo@bot.localhost' to='{me}' type='chat' id='r1'><body>pong</body></message>")).await;
    let reply = alice.recv_where(|e| e.name == "message").await;
    assert_eq!(reply.get_attr("from"), Some("echo@bot.localhost"));
    assert_eq!(reply.find("body", ns::CLIENT).map(|b| b.text_content()).as_deref(), Some("pong"));
    // A component's message to an account is archived like any other (XEP-0313 stanza-id).
    let sid = reply.find("stanza-id", "urn:xmpp:sid:0").expect("archived with a stanza-id");
    assert_eq!(sid.get_attr("by"), Some("alice@localhost"));

    // To the bare JID while the account is offline: kept, like any message.
    alice.close().await;
    bot.send("<message from='news@bot.localhost' to='alice@localhost' type='chat'><body>while away</body></message>").await;
    let mut alice = s.online("alice", PW, "laptop").await;
    let kept = alice.recv_where(|e| e.name == "message").await;
    assert_eq!(kept.get_attr("from"), Some("news@bot.localhost"));
    assert_eq!(kept.find("body", ns::CLIENT).map(|b| b.text_content()).as_deref(), Some("while away"));
    s.stop().await;
}

async fn queries_and_discovery(db: Db) {
    let s = server(db, &["alice"]).await;
    let mut alice = s.online("alice", PW, "phone").await;
    let me = alice.jid.clone().unwrap();
    // Listed in the host's items once connected, not before.
    let items = alice.iq("<iq type='get' to='localhost' id='items'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>").await;
    assert!(!items.to_xml().contains(BOT), "a component that is not connected is not listed: {items}");
    let mut bot = connect(&s, BOT, SECRET).await;
    let items = alice.iq("<iq type='get' to='localhost' id='items'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>").await;
    let q = items.find("query", ns::DISCO_ITEMS).expect("items");
    assert!(q.elements().any(|i| i.get_attr("jid") == Some(BOT)), "{items}");

    // A query to the component is the component's to answer.
    alice.send("<iq type='get' to='bot.localhost' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let q = bot.recv_where(|e| e.name == "iq").await;
    assert_eq!(q.get_attr("from"), Some(me.as_str()));
    assert_eq!(q.get_attr("type"), Some("get"));
    assert!(q.find("query", ns::DISCO_INFO).is_some(), "the payload keeps its namespace: {q}");
    bot.send(&format!(
        "<iq type='result' from='bot.localhost' to='{me}' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'>\
         <identity category='component' type='generic' name='Bot'/></query></iq>"
    ))
    .await;
    let r = alice.recv_where(|e| e.name == "iq" && e.get_attr("id") == Some("d1")).await;
    assert_eq!(r.get_attr("type"), Some("result"));
    assert_eq!(r.get_attr("from"), Some(BOT));
    assert!(r.to_xml().contains("name=\"Bot\"") || r.to_xml().contains("name='Bot'"), "{r}");

    // The component queries an account's server: answered by the server (XEP-0199 ping).
    bot.send("<iq type='get' from='bot.localhost' to='localhost' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    let pong = bot.recv_where(|e| e.name == "iq" && e.get_attr("id") == Some("p1")).await;
    assert_eq!(pong.get_attr("type"), Some("result"));
    assert_eq!(pong.get_attr("to"), Some(BOT));
    s.stop().await;
}

async fn presence_subscription(db: Db) {
    let s = server(db, &["alice"]).await;
    let mut bot = connect(&s, BOT, SECRET).await;
    let mut alice = s.online("alice", PW, "phone").await;
    alice.iq("<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>").await;
    alice.send("<presence to='bot.localhost' type='subscribe'/>").await;
    let sub = bot.recv_where(|e| e.name == "presence").await;
    assert_eq!(sub.get_attr("type"), Some("subscribe"));
    assert_eq!(sub.get_attr("from"), Some("alice@localhost"), "subscriptions come from the bare JID");
    bot.send("<presence from='bot.localhost' to='alice@localhost' type='subscribed'/>").await;
    let push = alice
        .recv_where(|e| {
            e.name == "iq"
                && e.find("query", ns::ROSTER).and_then(|q| q.elements().next()).is_some_and(|i| i.get_attr("subscription") == Some("to"))
        })
        .await;
    assert!(push.to_xml().contains(BOT), "{push}");
    s.stop().await;
}

async fn handshake_errors(db: Db) {
    let s = server(db, &[]).await;
    // A wrong secret.
    let (mut c, id) = open(&s, BOT).await;
    c.send(&format!("<handshake>{}</handshake>", digest(&id, "wrong"))).await;
    assert_eq!(c.stream_error().await, "not-authorized");
    // The digest of another stream's id.
    let (mut c, _) = open(&s, BOT).await;
    c.send(&format!("<handshake>{}</handshake>", digest(&id, SECRET))).await;
    assert_eq!(c.stream_error().await, "not-authorized");
    // A domain the server has no component for.
    let mut c = Client::connect(s.component.unwrap()).await;
    c.send(&format!(
        "<?xml version='1.0'?><stream:stream xmlns='{NS}' xmlns:stream='http://etherx.jabber.org/streams' to='nobody.localhost'>"
    ))
    .await;
    assert_eq!(c.stream_error().await, "host-unknown");
    // A client stream on the component port.
    let mut c = Client::connect(s.component.unwrap()).await;
    c.send("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='bot.localhost' version='1.0'>").await;
    assert_eq!(c.stream_error().await, "invalid-namespace");
    // A stanza before the handshake.
    let (mut c, _) = open(&s, BOT).await;
    c.send("<message from='x@bot.localhost' to='alice@localhost'><body>early</body></message>").await;
    assert_eq!(c.stream_error().await, "not-authorized");
    // A second connection for a domain that has one: refused, the first one stays.
    let mut first = connect(&s, BOT, SECRET).await;
    let (mut second, id) = open(&s, BOT).await;
    second.send(&format!("<handshake>{}</handshake>", digest(&id, SECRET))).await;
    assert_eq!(second.stream_error().await, "conflict");
    first.send("<iq type='get' from='bot.localhost' to='localhost' id='still'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    let r = first.recv_where(|e| e.get_attr("id") == Some("still")).await;
    assert_eq!(r.get_attr("type"), Some("result"));
    // The secret of another component does not open this one.
    let (mut c, id) = open(&s, BOT).await;
    c.send(&format!("<handshake>{}</handshake>", digest(&id, "other-secret"))).await;
    assert_eq!(c.stream_error().await, "not-authorized");
    s.stop().await;
}

async fn addressing_errors(db: Db) {
    let s = server(db, &["alice"]).await;
    // RFC 6120 section 4.9.3.10: a `from` outside the component's domain.
    let mut bot = connect(&s, BOT, SECRET).await;
    bot.send("<message from='alice@localhost' to='alice@localhost' type='chat'><body>forged</body></message>").await;
    assert_eq!(bot.stream_error().await, "invalid-from");
    let mut bot = connect(&s, BOT, SECRET).await;
    bot.send("<message from='x@other.localhost' to='alice@localhost' type='chat'><body>forged</body></message>").await;
    assert_eq!(bot.stream_error().await, "invalid-from");
    // Section 4.9.3.9: a stanza without `to` or without `from`.
    let mut bot = connect(&s, BOT, SECRET).await;
    bot.send("<message from='x@bot.localhost' type='chat'><body>nowhere</body></message>").await;
    assert_eq!(bot.stream_error().await, "improper-addressing");
    let mut bot = connect(&s, BOT, SECRET).await;
    bot.send("<message to='alice@localhost' type='chat'><body>anonymous</body></message>").await;
    assert_eq!(bot.stream_error().await, "improper-addressing");
    // Section 4.9.3.21: not a stanza.
    let mut bot = connect(&s, BOT, SECRET).await;
    bot.send("<foo from='bot.localhost' to='localhost'/>").await;
    assert_eq!(bot.stream_error().await, "unsupported-stanza-type");
    // A malformed address is a stanza error; the stream stays.
    let mut bot = connect(&s, BOT, SECRET).await;
    bot.send("<iq type='get' from='bot.localhost' to='a@b@c' id='bad'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    let e = bot.recv_where(|e| e.get_attr("id") == Some("bad")).await;
    assert_eq!(component_error(&e).as_deref(), Some("jid-malformed"), "{e}");
    bot.send("<iq type='get' from='bot.localhost' to='localhost' id='after'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    let r = bot.recv_where(|e| e.get_attr("id") == Some("after")).await;
    assert_eq!(r.get_attr("type"), Some("result"));
    // The forged message never reached alice.
    let mut alice = s.online("alice", PW, "phone").await;
    alice.expect_silence(300).await;
    s.stop().await;
}

async fn messages_wait_while_the_component_is_away(db: Db) {
    let s = server(db, &["alice"]).await;
    let mut alice = s.online("alice", PW, "phone").await;
    for i in 1..=3 {
        alice.send(&format!("<message to='echo@bot.localhost' type='chat' id='w{i}'><body>waiting {i}</body></message>")).await;
    }
    // Chat states alone are not kept (nothing to keep), and queries are refused at once.
    alice.send("<message to='echo@bot.localhost' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>").await;
    alice.send("<iq type='get' to='bot.localhost' id='q'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let e = alice.recv_where(|e| e.get_attr("id") == Some("q")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
    // No error for the messages: they were accepted.
    alice.expect_silence(200).await;

    // Kept across a restart of the server.
    let s = s.restart().await;
    let mut bot = connect(&s, BOT, SECRET).await;
    for i in 1..=3 {
        let m = bot.recv_where(|e| e.name == "message").await;
        assert_eq!(text(&m, "body"), Some(format!("waiting {i}")), "in order: {m}");
        assert_eq!(m.get_attr("to"), Some("echo@bot.localhost"));
        assert!(m.get_attr("from").is_some_and(|f| f.starts_with("alice@localhost/")), "{m}");
    }
    bot.expect_silence(300).await;
    // Written once: the next connection gets nothing again.
    bot.send("</stream:stream>").await;
    let mut bot = loop {
        // The first connection's close may still be under way.
        let (mut c, id) = open(&s, BOT).await;
        c.send(&format!("<handshake>{}</handshake>", digest(&id, SECRET))).await;
        let ok = c.recv().await;
        if ok.is("handshake", NS) {
            break c;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    bot.expect_silence(500).await;
    s.stop().await;
}

async fn shutdown_closes_components(db: Db) {
    let s = server(db, &[]).await;
    let mut bot = connect(&s, BOT, SECRET).await;
    let stop = tokio::spawn(s.stop());
    assert_eq!(bot.stream_error().await, "system-shutdown");
    stop.await.unwrap();
}

/// A component takes part in a local room: its join gets the room's presences, and it gets the
/// room's messages and says its own there (XEP-0045 with an occupant that is not a local
/// session).
async fn a_component_in_a_room(db: Db) {
    let s = server(db, &["alice"]).await;
    let mut alice = s.online("alice", PW, "phone").await;
    let room = "dev@conference.localhost";
    alice.send(&format!("<presence to='{room}/alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>")).await;
    alice.recv_where(|e| e.name == "message" && e.find("subject", ns::CLIENT).is_some()).await;
    let form = "<query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query>";
    let r = alice.iq(&format!("<iq type='set' to='{room}' id='cfg'>{form}</iq>")).await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");

    let mut bot = connect(&s, BOT, SECRET).await;
    bot.send(&format!("<presence from='bridge@{BOT}/x' to='{room}/bridge'><x xmlns='http://jabber.org/protocol/muc'/></presence>")).await;
    // alice's presence, then its own with status 110.
    let p = bot.recv_where(|e| e.name == "presence" && e.get_attr("from") == Some("dev@conference.localhost/alice")).await;
    assert_eq!(p.get_attr("to"), Some("bridge@bot.localhost/x"));
    bot.recv_where(|e| e.name == "presence" && e.get_attr("from") == Some("dev@conference.localhost/bridge") && e.to_xml().contains("110"))
        .await;
    alice.recv_where(|e| e.name == "presence" && e.get_attr("from") == Some("dev@conference.localhost/bridge")).await;

    alice.send(&format!("<message to='{room}' type='groupchat' id='g1'><body>hi all</body></message>")).await;
    let m = bot.recv_where(|e| e.name == "message" && text(e, "body").is_some()).await;
    assert_eq!(m.get_attr("from"), Some("dev@conference.localhost/alice"));
    assert_eq!(m.get_attr("type"), Some("groupchat"));
    assert_eq!(text(&m, "body").as_deref(), Some("hi all"));

    bot.send(&format!("<message from='bridge@{BOT}/x' to='{room}' type='groupchat' id='g2'><body>hello from IRC</body></message>")).await;
    let m = alice.recv_where(|e| e.name == "message" && e.get_attr("from") == Some("dev@conference.localhost/bridge")).await;
    assert_eq!(m.find("body", ns::CLIENT).map(|b| b.text_content()).as_deref(), Some("hello from IRC"));

    // It leaves like anyone.
    bot.send(&format!("<presence from='bridge@{BOT}/x' to='{room}/bridge' type='unavailable'/>")).await;
    let gone = |e: &Element| {
        e.name == "presence" && e.get_attr("from") == Some("dev@conference.localhost/bridge") && e.get_attr("type") == Some("unavailable")
    };
    alice.recv_where(gone).await;

    // Seated again, then disconnected without a word: the room finds out at its next message
    // and the occupant leaves with 333 (as a session that vanished).
    bot.send(&format!("<presence from='bridge@{BOT}/x' to='{room}/bridge'><x xmlns='http://jabber.org/protocol/muc'/></presence>")).await;
    alice.recv_where(|e| e.name == "presence" && e.get_attr("from") == Some("dev@conference.localhost/bridge")).await;
    bot.close().await;
    for _ in 0..100 {
        if !s.running.as_ref().unwrap().server.components.is_connected(BOT) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    alice.send(&format!("<message to='{room}' type='groupchat' id='g3'><body>anyone?</body></message>")).await;
    let p = alice.recv_where(gone).await;
    assert!(p.to_xml().contains("333"), "{p}");
    s.stop().await;
}

crate::on_both!(
    a_component_in_a_room,
    messages_both_ways,
    queries_and_discovery,
    presence_subscription,
    handshake_errors,
    addressing_errors,
    messages_wait_while_the_component_is_away,
    shutdown_closes_components,
);
