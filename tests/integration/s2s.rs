//! Federation (RFC 6120 server-to-server, XEP-0220 dialback), black-box: two real servers in
//! this process federate over loopback (static routes instead of DNS), and a raw peer checks
//! the listener's rules: STARTTLS first, no stanza before dialback, keys checked with the
//! authoritative server, `<db:verify/>` answered for our own keys, and the stream errors the
//! RFC names. With certificates from a test CA, the servers authenticate with SASL EXTERNAL
//! (XEP-0178) instead, and fall back to dialback when a certificate does not fit.

use std::net::SocketAddr;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use starling::xml::{ns, Element, XmlEvent};

use crate::common::{error_condition, Client, Db, TestServer};

const PW: &str = "secret";
const DB: &str = "jabber:server:dialback";
const SECRET_A: &str = "dialback-secret-of-a";

/// A port nobody listens on right now (bound, then released).
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Server A serves `localhost` (and `example.test`), server B serves `b.test`; each routes
/// the other's domains to the other's s2s listener (set once both listen). `tweak_a` adjusts
/// A's configuration.
async fn pair_with(tweak_a: impl FnOnce(&mut starling::config::Config)) -> (TestServer, TestServer) {
    pair_both(tweak_a, |_| {}).await
}

/// As `pair_with`, adjusting B's configuration too.
async fn pair_both(
    tweak_a: impl FnOnce(&mut starling::config::Config),
    tweak_b: impl FnOnce(&mut starling::config::Config),
) -> (TestServer, TestServer) {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let a = TestServer::start_with(Db::Sqlite, |c| {
        c.s2s.enabled = true;
        c.s2s.dialback_secret = SECRET_A.into();
        c.listen.s2s = vec![any];
        c.s2s.routes.insert("down.test".into(), free_port().to_string());
        c.s2s.connect_timeout_secs = 5;
        c.muc.enabled = true;
        tweak_a(c);
    })
    .await;
    let b = TestServer::start_with(Db::Sqlite, |c| {
        c.server.hosts = vec!["b.test".into()];
        c.s2s.enabled = true;
        c.listen.s2s = vec![any];
        c.s2s.connect_timeout_secs = 5;
        tweak_b(c);
    })
    .await;
    let (a_addr, b_addr) = (a.s2s.unwrap().to_string(), b.s2s.unwrap().to_string());
    a.running.as_ref().unwrap().server.s2s.set_route("b.test", &b_addr);
    for domain in ["localhost", "example.test", "conference.localhost", "gw.localhost"] {
        b.running.as_ref().unwrap().server.s2s.set_route(domain, &a_addr);
    }
    a.add_user("alice", PW).await;
    b.add_user_at("b.test", "bob", PW).await;
    (a, b)
}

async fn pair() -> (TestServer, TestServer) {
    pair_with(|_| {}).await
}

fn body(e: &Element) -> Option<String> {
    e.find("body", ns::CLIENT).map(|b| b.text_content())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_presence_and_queries_cross_between_two_servers() {
    let (a, b) = pair().await;
    let mut alice = a.online("alice", PW, "phone").await;
    let mut bob = b.online_at("b.test", "bob", PW, "desk").await;
    let alice_jid = alice.jid.clone().unwrap();
    let bob_jid = bob.jid.clone().unwrap();

    // A -> B: the first stanza sets up the link (connect, STARTTLS, dialback both ways).
    alice.send("<message to='bob@b.test' type='chat' id='m1'><body>hello over there</body></message>").await;
    let m = bob.recv_where(|e| e.name == "message").await;
    assert_eq!(m.get_attr("from"), Some(alice_jid.as_str()));
    assert_eq!(body(&m).as_deref(), Some("hello over there"));
    // Archived on the receiving side like any message (XEP-0313 stanza-id by bob).
    assert_eq!(m.find("stanza-id", "urn:xmpp:sid:0").and_then(|s| s.get_attr("by")), Some("bob@b.test"));

    // The link is counted both sides (and shown in /metrics).
    let (sa, sb) = (&a.running.as_ref().unwrap().server, &b.running.as_ref().unwrap().server);
    assert_eq!(sa.s2s.link_count(), 1);
    assert_eq!(sb.s2s.incoming_count(), 1);
    let metrics = starling::http::metrics::render(sb, &Default::default());
    assert!(metrics.contains("starling_s2s_links{direction=\"in\"} 1"));
    // Self-signed certificates: authenticated by dialback, and counted so.
    assert!(metrics.contains("starling_s2s_authentications_total{method=\"dialback\",direction=\"in\"} 1"), "{metrics}");
    assert!(metrics.contains("starling_s2s_authentications_total{method=\"external\",direction=\"in\"} 0"), "{metrics}");

    // B -> A.
    bob.send(&format!("<message to='{alice_jid}' type='chat' id='m2'><body>hello back</body></message>")).await;
    let m = alice.recv_where(|e| e.name == "message").await;
    assert_eq!(m.get_attr("from"), Some(bob_jid.as_str()));
    assert_eq!(body(&m).as_deref(), Some("hello back"));

    // A query to the other server, answered by it.
    let r = alice.iq("<iq type='get' to='b.test' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    assert_eq!(r.get_attr("from"), Some("b.test"));
    let r = bob.iq("<iq type='get' to='localhost' id='v1'><query xmlns='jabber:iq:version'/></iq>").await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");

    // A presence subscription across (RFC 6121 section 3), then presence flows. (Roster pushes
    // go to resources that asked for the roster.)
    let r = alice.iq("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>").await;
    assert_eq!(r.get_attr("type"), Some("result"));
    alice.send("<presence to='bob@b.test' type='subscribe'/>").await;
    let s = bob.recv_where(|e| e.name == "presence" && e.get_attr("type") == Some("subscribe")).await;
    assert_eq!(s.get_attr("from"), Some("alice@localhost"));
    bob.send("<presence to='alice@localhost' type='subscribed'/>").await;
    let p = alice.recv_where(|e| e.name == "presence" && e.get_attr("from") == Some(bob_jid.as_str())).await;
    assert_eq!(p.get_attr("type"), None, "bob's available presence after the approval: {p}");
    // The roster push of the approval (after the one of the pending request, ask='subscribe').
    alice.recv_where(|e| e.name == "iq" && e.find("query", "jabber:iq:roster").is_some() && e.to_xml().contains("subscription='to'")).await;
    // Bob goes offline: alice is told.
    bob.close().await;
    let gone = alice.recv_where(|e| e.name == "presence" && e.get_attr("from") == Some(bob_jid.as_str())).await;
    assert_eq!(gone.get_attr("type"), Some("unavailable"));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_delivered_comes_back_as_an_error() {
    let (a, b) = pair().await;
    let mut alice = a.online("alice", PW, "phone").await;
    // No such account over there: the remote server answers.
    alice.send("<message to='nobody@b.test' type='normal' id='n1'><body>anyone?</body></message>").await;
    let e = alice.recv_where(|e| e.name == "message" && e.get_attr("id") == Some("n1")).await;
    assert_eq!(e.get_attr("type"), Some("error"));
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"), "{e}");
    // Nobody listens for down.test: remote-server-not-found (RFC 6120 section 8.3.3.16).
    alice.send("<message to='someone@down.test' type='chat' id='d1'><body>hello?</body></message>").await;
    let e = alice.recv_where(|e| e.name == "message" && e.get_attr("id") == Some("d1")).await;
    assert_eq!(e.get_attr("from"), Some("someone@down.test"));
    assert_eq!(error_condition(&e).as_deref(), Some("remote-server-not-found"), "{e}");
    let r = alice.iq("<iq type='get' to='down.test' id='q1'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("remote-server-not-found"), "{r}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_off_means_remote_server_not_found() {
    let s = TestServer::start(Db::Sqlite).await;
    s.add_user("alice", PW).await;
    let mut alice = s.online("alice", PW, "phone").await;
    alice.send("<message to='bob@elsewhere.test' type='chat' id='x1'><body>hi</body></message>").await;
    let e = alice.recv_where(|e| e.name == "message" && e.get_attr("id") == Some("x1")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("remote-server-not-found"), "{e}");
    assert!(s.s2s.is_none(), "no federation listener unless s2s.enabled");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_link_closes_and_the_next_stanza_opens_another() {
    let (a, b) = pair_with(|c| c.s2s.idle_timeout_secs = 1).await;
    let mut alice = a.online("alice", PW, "phone").await;
    let mut bob = b.online_at("b.test", "bob", PW, "desk").await;
    for i in 0..2 {
        alice.send(&format!("<message to='bob@b.test' type='chat' id='i{i}'><body>round {i}</body></message>")).await;
        let m = bob.recv_where(|e| e.name == "message").await;
        assert_eq!(body(&m), Some(format!("round {i}")));
        let server = &a.running.as_ref().unwrap().server;
        assert_eq!(server.s2s.link_count(), 1);
        let t = std::time::Instant::now();
        while server.s2s.link_count() > 0 {
            assert!(t.elapsed() < std::time::Duration::from_secs(10), "the idle link did not close");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    a.stop().await;
    b.stop().await;
}

// ------------------------------------------------------------------ raw peer -------------

/// Open a server stream to `addr` as `from` -> `to`; returns the stream header's id and the
/// features.
async fn raw_open(c: &mut Client, from: &str, to: &str) -> (String, Element) {
    c.send(&format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
         xmlns:db='{DB}' from='{from}' to='{to}' version='1.0'>"
    ))
    .await;
    let id = match c.event().await {
        Ok(XmlEvent::StreamOpen(h)) => {
            assert_eq!(h.default_ns, "jabber:server");
            assert_eq!(h.attr("from"), Some(to));
            h.attr("id").expect("stream id").to_string()
        }
        other => panic!("expected a stream header, got {other:?}"),
    };
    let f = c.recv().await;
    assert!(f.is("features", ns::STREAM), "{f}");
    (id, f)
}

/// A raw peer past STARTTLS, as `from` to `to`.
async fn raw_tls(addr: SocketAddr, from: &str, to: &str) -> (Client, String) {
    let mut c = Client::connect(addr).await;
    let (_, f) = raw_open(&mut c, from, to).await;
    let st = f.find("starttls", ns::TLS).expect("STARTTLS offered");
    assert!(st.find("required", ns::TLS).is_some(), "required by default: {f}");
    assert!(f.find("dialback", "urn:xmpp:features:dialback").is_some(), "dialback offered: {f}");
    c.starttls().await;
    let (id, f) = raw_open(&mut c, from, to).await;
    assert!(f.find("starttls", ns::TLS).is_none());
    (c, id)
}

/// XEP-0185 key, as a server with `secret` would make it.
fn key(secret: &str, receiving: &str, originating: &str, id: &str) -> String {
    let k: String = Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let mut mac = Hmac::<Sha256>::new_from_slice(k.as_bytes()).unwrap();
    mac.update(format!("{receiving} {originating} {id}").as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_wants_tls_then_dialback_before_any_stanza() {
    let (a, b) = pair().await;
    let addr = a.s2s.unwrap();

    // Dialback before STARTTLS: policy-violation (RFC 6120 section 5.3.1).
    let mut c = Client::connect(addr).await;
    raw_open(&mut c, "b.test", "localhost").await;
    c.send(&format!("<db:result xmlns:db='{DB}' from='b.test' to='localhost'>abc</db:result>")).await;
    assert_eq!(c.stream_error().await, "policy-violation");

    // A stream to a domain not served here: host-unknown (section 4.9.3.6).
    let mut c = Client::connect(addr).await;
    c.send(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
         from='b.test' to='nowhere.test' version='1.0'>",
    )
    .await;
    assert_eq!(c.stream_error().await, "host-unknown");

    // The wrong default namespace: invalid-namespace (section 4.9.3.10).
    let mut c = Client::connect(addr).await;
    c.send(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
         to='localhost' version='1.0'>",
    )
    .await;
    assert_eq!(c.stream_error().await, "invalid-namespace");

    // An element past limits.max_stanza_size: policy-violation, that stream only.
    let (mut c, _) = raw_tls(addr, "b.test", "localhost").await;
    let big = "x".repeat(a.config.limits.max_stanza_size + 1);
    c.send(&format!("<message from='bob@b.test' to='alice@localhost'><body>{big}</body></message>")).await;
    assert_eq!(c.stream_error().await, "policy-violation");
    // Not XML at all: not-well-formed.
    let (mut c, _) = raw_tls(addr, "b.test", "localhost").await;
    c.send("<message from='bob@b.test'><body>unclosed</message>").await;
    assert_eq!(c.stream_error().await, "not-well-formed");

    // A stanza before dialback: not-authorized (section 4.9.3.12).
    let (mut c, _) = raw_tls(addr, "b.test", "localhost").await;
    c.send("<message from='bob@b.test' to='alice@localhost'><body>sneaky</body></message>").await;
    assert_eq!(c.stream_error().await, "not-authorized");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_key_is_checked_with_the_real_server_and_refused() {
    let (a, b) = pair().await;
    let mut alice = a.online("alice", PW, "phone").await;
    // Someone who is not b.test claims to be: A asks b.test's real server, which says no.
    let (mut c, _) = raw_tls(a.s2s.unwrap(), "b.test", "localhost").await;
    c.send(&format!("<db:result xmlns:db='{DB}' from='b.test' to='localhost'>{}</db:result>", "0".repeat(64))).await;
    let r = c.recv_where(|e| e.is("result", DB)).await;
    assert_eq!(r.get_attr("type"), Some("invalid"), "{r}");
    assert_eq!(r.get_attr("from"), Some("localhost"));
    assert_eq!(r.get_attr("to"), Some("b.test"));
    // Still not allowed to send.
    c.send("<message from='bob@b.test' to='alice@localhost' type='chat'><body>forged</body></message>").await;
    assert_eq!(c.stream_error().await, "not-authorized");
    alice.expect_silence(300).await;

    // Asked for a domain we do not serve: a dialback error (XEP-0220 section 2.4).
    let (mut c, _) = raw_tls(a.s2s.unwrap(), "b.test", "localhost").await;
    c.send(&format!("<db:result xmlns:db='{DB}' from='b.test' to='nowhere.test'>abc</db:result>")).await;
    let r = c.recv_where(|e| e.is("result", DB)).await;
    assert_eq!(r.get_attr("type"), Some("error"), "{r}");
    assert!(r.to_xml().contains("item-not-found"), "{r}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_our_own_links_are_confirmed_to_their_receiving_servers() {
    let (a, b) = pair().await;
    // As b.test's server asking A (authoritative for localhost) about a key A sent it.
    let (mut c, _) = raw_tls(a.s2s.unwrap(), "b.test", "localhost").await;
    let good = key(SECRET_A, "b.test", "localhost", "stream-42");
    c.send(&format!("<db:verify xmlns:db='{DB}' from='b.test' to='localhost' id='stream-42'>{good}</db:verify>")).await;
    let v = c.recv_where(|e| e.is("verify", DB)).await;
    assert_eq!(v.get_attr("type"), Some("valid"), "{v}");
    assert_eq!(v.get_attr("id"), Some("stream-42"));
    assert_eq!(v.get_attr("from"), Some("localhost"));
    // The same key for another stream id is not valid.
    c.send(&format!("<db:verify xmlns:db='{DB}' from='b.test' to='localhost' id='stream-43'>{good}</db:verify>")).await;
    let v = c.recv_where(|e| e.is("verify", DB)).await;
    assert_eq!(v.get_attr("type"), Some("invalid"), "{v}");
    c.close().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_peer_may_only_speak_for_its_own_domain() {
    let (a, b) = pair().await;
    let mut bob = b.online_at("b.test", "bob", PW, "desk").await;
    // A raw peer that holds A's secret speaks for example.test (a domain of A's) to B: B
    // checks the key with A, the authoritative server, and accepts it.
    let (mut c, id) = raw_tls(b.s2s.unwrap(), "example.test", "b.test").await;
    let k = key(SECRET_A, "b.test", "example.test", &id);
    c.send(&format!("<db:result xmlns:db='{DB}' from='example.test' to='b.test'>{k}</db:result>")).await;
    let r = c.recv_where(|e| e.is("result", DB)).await;
    assert_eq!(r.get_attr("type"), Some("valid"), "B checked the key with A: {r}");
    c.send("<message from='someone@example.test' to='bob@b.test' type='chat' id='ok1'><body>allowed</body></message>").await;
    let m = bob.recv_where(|e| e.name == "message" && e.get_attr("id") == Some("ok1")).await;
    assert_eq!(m.get_attr("from"), Some("someone@example.test"));
    c.send("<message from='mallory@evil.test' to='bob@b.test' type='chat'><body>spoofed</body></message>").await;
    assert_eq!(c.stream_error().await, "invalid-from");
    bob.expect_silence(300).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_of_another_server_takes_part_in_a_local_room() {
    const MUC: &str = "http://jabber.org/protocol/muc";
    let (a, b) = pair().await;
    assert!(a.config.muc.enabled, "group chat is on in the test configuration");
    let mut alice = a.online("alice", PW, "phone").await;
    let mut bob = b.online_at("b.test", "bob", PW, "desk").await;
    let room = "lounge@conference.localhost";
    // The room's domain federates as a domain of its own (dialback for conference.localhost).
    alice.send(&format!("<presence to='{room}/alice'><x xmlns='{MUC}'/></presence>")).await;
    alice.recv_where(|e| e.name == "message" && e.find("subject", ns::CLIENT).is_some()).await;
    // An instant room (XEP-0045 section 10.1.2): unlocked with the default configuration.
    let r = alice
        .iq(&format!(
            "<iq type='set' to='{room}' id='inst'><query xmlns='{MUC}#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>"
        ))
        .await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    bob.send(&format!("<presence to='{room}/bob'><x xmlns='{MUC}'/></presence>")).await;
    let own = bob
        .recv_where(|e| e.name == "presence" && e.get_attr("from") == Some(&format!("{room}/bob")) && e.to_xml().contains("code='110'"))
        .await;
    assert_eq!(own.get_attr("type"), None, "{own}");
    alice.recv_where(|e| e.name == "presence" && e.get_attr("from") == Some(&format!("{room}/bob"))).await;
    bob.recv_where(|e| e.name == "message" && e.find("subject", ns::CLIENT).is_some()).await;

    bob.send(&format!("<message to='{room}' type='groupchat' id='g1'><body>hi all</body></message>")).await;
    for c in [&mut alice, &mut bob] {
        let m = c.recv_where(|e| e.name == "message" && body(e).as_deref() == Some("hi all")).await;
        assert_eq!(m.get_attr("from"), Some(format!("{room}/bob").as_str()));
        assert_eq!(m.get_attr("type"), Some("groupchat"));
    }
    alice.send(&format!("<message to='{room}' type='groupchat' id='g2'><body>welcome</body></message>")).await;
    let m = bob.recv_where(|e| e.name == "message" && body(e).as_deref() == Some("welcome")).await;
    assert_eq!(m.get_attr("from"), Some(format!("{room}/alice").as_str()));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_pile_up_verifications() {
    // slow.test's server accepts connections and never answers: each verification waits.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let (a, b) = pair_with(|c| {
        c.s2s.routes.insert("slow.test".into(), silent_addr);
    })
    .await;
    let (mut c, _) = raw_tls(a.s2s.unwrap(), "slow.test", "localhost").await;
    for i in 0..17 {
        c.send(&format!("<db:result xmlns:db='{DB}' from='slow.test' to='localhost'>key{i}</db:result>")).await;
    }
    assert_eq!(c.stream_error().await, "policy-violation");
    drop(silent);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pep_events_reach_contacts_on_another_server() {
    use starling::storage::roster::{RosterItem, Subscription};
    const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
    const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
    const TUNE: &str = "http://jabber.org/protocol/tune";
    let (a, b) = pair().await;
    // alice and bob are subscribed to each other.
    let mut item = RosterItem::new("bob@b.test");
    item.subscription = Subscription::Both;
    a.storage.put_roster_item("alice@localhost", &item).await.unwrap();
    let mut item = RosterItem::new("alice@localhost");
    item.subscription = Subscription::Both;
    b.storage.put_roster_item("bob@b.test", &item).await.unwrap();

    let mut alice = a.online("alice", PW, "phone").await;
    let publish = |id: &str, title: &str| {
        format!("<iq type='set' id='p-{id}'><pubsub xmlns='{PUBSUB}'><publish node='{TUNE}'><item id='{id}'><tune xmlns='{TUNE}'><title>{title}</title></tune></item></publish></pubsub></iq>")
    };
    let r = alice.iq(&publish("t1", "first")).await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");

    // bob comes online with caps asking for tune events; both servers ask his client for the
    // features behind the hash (his own over c2s, alice's through the federation link).
    let mut bob = b.login_at("b.test", "bob", PW, "desk").await;
    let mut q = Element::new("query", ns::DISCO_INFO)
        .child(Element::new("identity", ns::DISCO_INFO).attr("category", "client").attr("type", "pc").attr("name", "Test"))
        .child(Element::new("feature", ns::DISCO_INFO).attr("var", ns::DISCO_INFO))
        .child(Element::new("feature", ns::DISCO_INFO).attr("var", format!("{TUNE}+notify")));
    let ver = starling::modules::caps::ver_of(&q);
    let caps_node = "https://client.example";
    bob.send(&format!("<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='{caps_node}' ver='{ver}'/></presence>"))
        .await;
    q = q.attr("node", format!("{caps_node}#{ver}"));
    let mut askers = Vec::new();
    let first = loop {
        let e = bob
            .recv_where(|e| {
                (e.name == "iq" && e.get_attr("type") == Some("get")) || (e.name == "message" && e.find("event", EVENT).is_some())
            })
            .await;
        if e.name == "message" {
            break e;
        }
        let from = e.get_attr("from").unwrap().to_string();
        bob.send(&format!("<iq type='result' to='{from}' id='{}'>{}</iq>", e.get_attr("id").unwrap(), q.to_xml())).await;
        askers.push(from);
    };
    assert!(askers.iter().any(|f| f == "localhost"), "alice's server asked for bob's caps: {askers:?}");
    // The last item of alice's node, once his features are known (XEP-0163 section 4.3.2).
    assert_eq!(first.get_attr("from"), Some("alice@localhost"));
    assert!(first.to_xml().contains("first"), "{first}");

    // A new item goes to him as it is published (section 4.3.1).
    let r = alice.iq(&publish("t2", "second")).await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    let m = bob.recv_where(|e| e.name == "message" && e.find("event", EVENT).is_some()).await;
    assert_eq!(m.get_attr("type"), Some("headline"));
    assert!(m.to_xml().contains("second"), "{m}");

    // Once he is gone, nothing more is sent his way.
    bob.send("<presence type='unavailable'/>").await;
    let bob_jid = bob.jid.clone().unwrap();
    let gone = alice
        .recv_where(|e| e.name == "presence" && e.get_attr("type") == Some("unavailable") && e.get_attr("from") == Some(bob_jid.as_str()))
        .await;
    assert!(a.running.as_ref().unwrap().server.pep_remote.is_empty(), "after {gone}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_here_serves_users_of_another_server() {
    const NS: &str = "jabber:component:accept";
    let (a, b) = pair_with(|c| {
        c.listen.component = vec!["127.0.0.1:0".parse().unwrap()];
        c.components = vec![starling::config::ComponentConfig { domain: "gw.localhost".into(), secret: "gw-secret".into() }];
    })
    .await;
    // The gateway connects (XEP-0114).
    let mut gw = Client::connect(a.component.unwrap()).await;
    gw.send(&format!(
        "<?xml version='1.0'?><stream:stream xmlns='{NS}' xmlns:stream='http://etherx.jabber.org/streams' to='gw.localhost'>"
    ))
    .await;
    let id = match gw.event().await {
        Ok(XmlEvent::StreamOpen(h)) => h.attr("id").unwrap().to_string(),
        other => panic!("expected a stream header, got {other:?}"),
    };
    gw.send(&format!("<handshake>{}</handshake>", starling::session::component::handshake_digest(&id, "gw-secret"))).await;
    assert!(gw.recv().await.is("handshake", NS));

    // A user of b.test talks to an address of the gateway, and the gateway answers.
    let mut bob = b.online_at("b.test", "bob", PW, "desk").await;
    let bob_jid = bob.jid.clone().unwrap();
    bob.send("<message to='#chan@gw.localhost' type='chat' id='c1'><body>hello gateway</body></message>").await;
    let m = gw.recv_where(|e| e.name == "message").await;
    assert_eq!(m.get_attr("from"), Some(bob_jid.as_str()));
    assert_eq!(m.get_attr("to"), Some("#chan@gw.localhost"));
    gw.send(&format!("<message from='#chan@gw.localhost' to='{bob_jid}' type='chat' id='c2'><body>hello from irc</body></message>")).await;
    let m = bob.recv_where(|e| e.name == "message").await;
    assert_eq!(m.get_attr("from"), Some("#chan@gw.localhost"));
    assert_eq!(body(&m).as_deref(), Some("hello from irc"));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_verifies_nothing_is_timed_out() {
    let (a, b) = pair_with(|c| c.c2s.auth_timeout_secs = 1).await;
    let (mut c, _) = raw_tls(a.s2s.unwrap(), "b.test", "localhost").await;
    // No dialback request: the stream ends once the negotiation time is up.
    assert_eq!(c.stream_error().await, "connection-timeout");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_from_other_servers_close_when_the_server_stops() {
    let (a, b) = pair().await;
    let (mut c, _) = raw_tls(a.s2s.unwrap(), "b.test", "localhost").await;
    let t = std::time::Instant::now();
    let stopping = tokio::spawn(a.stop());
    assert_eq!(c.stream_error().await, "system-shutdown");
    stopping.await.unwrap();
    assert!(t.elapsed() < std::time::Duration::from_secs(2), "the stream held the shutdown up: {:?}", t.elapsed());
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_domain_is_refused_both_ways() {
    let (a, b) = pair_with(|c| c.s2s.blocked_domains = vec!["b.test".into()]).await;
    let mut alice = a.online("alice", PW, "phone").await;
    alice.send("<message to='bob@b.test' type='chat' id='b1'><body>hi</body></message>").await;
    let e = alice.recv_where(|e| e.name == "message" && e.get_attr("id") == Some("b1")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("remote-server-not-found"), "{e}");
    assert_eq!(a.running.as_ref().unwrap().server.s2s.link_count(), 0, "no link is even tried");
    // b.test asking to send to us: a dialback error (forbidden), before any key is checked.
    let (mut c, _) = raw_tls(a.s2s.unwrap(), "b.test", "localhost").await;
    c.send(&format!("<db:result xmlns:db='{DB}' from='b.test' to='localhost'>abc</db:result>")).await;
    let r = c.recv_where(|e| e.is("result", DB)).await;
    assert_eq!(r.get_attr("type"), Some("error"), "{r}");
    assert!(r.to_xml().contains("forbidden"), "{r}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_between_servers() {
    // A takes other servers only with direct TLS (XEP-0368); B is told so by its route.
    let (a, b) = pair_with(|c| {
        c.listen.s2s_direct_tls = vec!["127.0.0.1:0".parse().unwrap()];
    })
    .await;
    let direct = a.s2s_direct_tls.unwrap();
    for domain in ["localhost", "example.test", "conference.localhost"] {
        b.running.as_ref().unwrap().server.s2s.set_route(domain, &format!("tls:{direct}"));
    }
    let mut alice = a.online("alice", PW, "phone").await;
    let mut bob = b.online_at("b.test", "bob", PW, "desk").await;
    bob.send("<message to='alice@localhost' type='chat' id='d1'><body>over direct TLS</body></message>").await;
    let m = alice.recv_where(|e| e.name == "message").await;
    assert_eq!(body(&m).as_deref(), Some("over direct TLS"));

    // The listener offers no STARTTLS (TLS is already there) and requires ALPN xmpp-server.
    let tcp = tokio::net::TcpStream::connect(direct).await.unwrap();
    let cfg = std::sync::Arc::new(starling::stream::insecure::client_config(Some(b"xmpp-server")));
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("direct TLS with ALPN xmpp-server");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"xmpp-server"[..]));
    let mut c = Client::from_tls(tls);
    let (_, f) = raw_open(&mut c, "b.test", "localhost").await;
    assert!(f.find("starttls", ns::TLS).is_none(), "{f}");
    assert!(f.find("dialback", "urn:xmpp:features:dialback").is_some(), "{f}");
    a.stop().await;
    b.stop().await;
}

// ------------------------------------------------------------ certificates (XEP-0178) ------

/// A test certificate authority, and the files of the certificates it (or nobody) issued.
struct Pki {
    dir: std::path::PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

/// A certificate and its key: the files, and the DER for a TLS client of the test's own.
struct Issued {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Pki {
    fn new() -> Pki {
        let n: u64 = rand::random();
        let dir = std::env::temp_dir().join(format!("starling-pki-{n:016x}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, "Starling test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = p.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    fn ca_file(&self) -> std::path::PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate with DNS-IDs `names`, issued by the CA (or self-signed).
    fn issue(&self, file: &str, names: &[&str], by_ca: bool) -> Issued {
        let p = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = if by_ca { p.signed_by(&key, &self.ca, &self.ca_key).unwrap() } else { p.self_signed(&key).unwrap() };
        let (cert_path, key_path) = (self.dir.join(format!("{file}.crt")), self.dir.join(format!("{file}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Issued { cert: cert_path, key: key_path, der: cert.der().clone(), key_der: key.serialize_der() }
    }

    /// Configure `domain`'s certificate and the CA as the trust anchor for other servers.
    fn use_for(&self, c: &mut starling::config::Config, domain: &str, cert: &Issued) {
        c.tls.certificates.push(starling::config::CertificateConfig {
            domain: domain.into(),
            cert: cert.cert.clone(),
            key: cert.key.clone(),
        });
        c.s2s.ca_file = Some(self.ca_file());
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS client (any server certificate accepted) that presents `cert` as its own.
fn presenting(cert: &Issued) -> tokio_rustls::TlsConnector {
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_der.clone().into());
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(starling::stream::insecure::accept_any())
        .with_client_auth_cert(vec![cert.der.clone()], key)
        .unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
}

/// A raw peer past STARTTLS with `cert` as its client certificate, as `from` to `to`; returns
/// the post-TLS features.
async fn raw_with_cert(addr: SocketAddr, cert: &Issued, from: &str, to: &str) -> (Client, Element) {
    let mut c = Client::connect(addr).await;
    raw_open(&mut c, from, to).await;
    c.starttls_with(presenting(cert)).await;
    let (_, f) = raw_open(&mut c, from, to).await;
    (c, f)
}

fn mechanisms(f: &Element) -> Vec<String> {
    f.find("mechanisms", ns::SASL).map(|m| m.elements().map(|e| e.text_content()).collect()).unwrap_or_default()
}

fn auths(s: &TestServer) -> starling::s2s::Authentications {
    s.running.as_ref().unwrap().server.s2s.authentications()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_authenticate_both_ways_with_sasl_external() {
    let pki = Pki::new();
    let (a_cert, b_cert) = (pki.issue("a", &["localhost"], true), pki.issue("b", &["b.test"], true));
    let (a, b) = pair_both(|c| pki.use_for(c, "localhost", &a_cert), |c| pki.use_for(c, "b.test", &b_cert)).await;
    let mut alice = a.online("alice", PW, "phone").await;
    let mut bob = b.online_at("b.test", "bob", PW, "desk").await;
    alice.send("<message to='bob@b.test' type='chat' id='x1'><body>signed and sealed</body></message>").await;
    let m = bob.recv_where(|e| e.name == "message").await;
    assert_eq!(body(&m).as_deref(), Some("signed and sealed"));
    bob.send("<message to='alice@localhost' type='chat' id='x2'><body>delivered</body></message>").await;
    let m = alice.recv_where(|e| e.name == "message").await;
    assert_eq!(body(&m).as_deref(), Some("delivered"));
    // Each link authenticated with its certificate; no dialback either way (no key sent, none
    // checked with an authoritative server).
    let one_each = starling::s2s::Authentications { external_in: 1, dialback_in: 0, external_out: 1, dialback_out: 0 };
    assert_eq!(auths(&a), one_each);
    assert_eq!(auths(&b), one_each);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_domain_falls_back_to_dialback() {
    let pki = Pki::new();
    // A's certificate is from the trusted CA, but for a name that is not A's domain.
    let (a_cert, b_cert) = (pki.issue("a", &["wrong.test"], true), pki.issue("b", &["b.test"], true));
    let (a, b) = pair_both(|c| pki.use_for(c, "localhost", &a_cert), |c| pki.use_for(c, "b.test", &b_cert)).await;
    let mut alice = a.online("alice", PW, "phone").await;
    let mut bob = b.online_at("b.test", "bob", PW, "desk").await;
    alice.send("<message to='bob@b.test' type='chat' id='w1'><body>by dialback</body></message>").await;
    assert_eq!(body(&bob.recv_where(|e| e.name == "message").await).as_deref(), Some("by dialback"));
    bob.send("<message to='alice@localhost' type='chat' id='w2'><body>also</body></message>").await;
    assert_eq!(body(&alice.recv_where(|e| e.name == "message").await).as_deref(), Some("also"));
    // A -> B: B does not take A's certificate for localhost and offers no EXTERNAL. B -> A:
    // B does not take it as localhost's server certificate either, so it does not try.
    let both_dialback = starling::s2s::Authentications { external_in: 0, dialback_in: 1, external_out: 0, dialback_out: 1 };
    assert_eq!(auths(&a), both_dialback);
    assert_eq!(auths(&b), both_dialback);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requiring_valid_certificates_refuses_a_server_without_one() {
    let pki = Pki::new();
    let (a_cert, b_cert) = (pki.issue("a", &["wrong.test"], true), pki.issue("b", &["b.test"], true));
    let (a, b) = pair_both(
        |c| pki.use_for(c, "localhost", &a_cert),
        |c| {
            pki.use_for(c, "b.test", &b_cert);
            c.s2s.require_valid_certificates = true;
        },
    )
    .await;
    let mut alice = a.online("alice", PW, "phone").await;
    let mut bob = b.online_at("b.test", "bob", PW, "desk").await;
    // B -> A: A's certificate does not authenticate localhost; B sets up no link, and the
    // stanza comes back.
    bob.send("<message to='alice@localhost' type='chat' id='r1'><body>hello?</body></message>").await;
    let e = bob.recv_where(|e| e.name == "message" && e.get_attr("id") == Some("r1")).await;
    assert_eq!(e.get_attr("type"), Some("error"), "{e}");
    assert_eq!(error_condition(&e).as_deref(), Some("remote-server-not-found"), "{e}");
    // A -> B: B refuses A's dialback (not-authorized), so A's link fails the same way.
    alice.send("<message to='bob@b.test' type='chat' id='r2'><body>hello?</body></message>").await;
    let e = alice.recv_where(|e| e.name == "message" && e.get_attr("id") == Some("r2")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("remote-server-not-found"), "{e}");
    bob.expect_silence(300).await;
    assert_eq!(auths(&a), Default::default());
    assert_eq!(auths(&b), Default::default());

    // What A's stream sees: no dialback offered, and a stream error for trying it anyway.
    let (mut c, f) = raw_with_cert(b.s2s.unwrap(), &a_cert, "localhost", "b.test").await;
    assert!(f.find("dialback", "urn:xmpp:features:dialback").is_none(), "{f}");
    assert!(mechanisms(&f).is_empty(), "{f}");
    c.send(&format!("<db:result xmlns:db='{DB}' from='localhost' to='b.test'>abc</db:result>")).await;
    assert_eq!(c.stream_error().await, "not-authorized");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_external_failures_are_the_rfc_conditions() {
    let pki = Pki::new();
    let a_cert = pki.issue("a", &["localhost"], true);
    let peer = pki.issue("peer", &["b.test"], true);
    let (a, b) = pair_with(|c| pki.use_for(c, "localhost", &a_cert)).await;
    let mut alice = a.online("alice", PW, "phone").await;
    let addr = a.s2s.unwrap();

    // Before TLS nothing is offered, and EXTERNAL needs it (RFC 6120 section 6.4.5).
    let mut c = Client::connect(addr).await;
    let (_, f) = raw_open(&mut c, "b.test", "localhost").await;
    assert!(mechanisms(&f).is_empty(), "{f}");
    assert_eq!(c.auth_external("=").await, Err("encryption-required".into()));

    // A certificate for b.test from the trusted CA: EXTERNAL is offered beside dialback.
    let (mut c, f) = raw_with_cert(addr, &peer, "b.test", "localhost").await;
    assert_eq!(mechanisms(&f), ["EXTERNAL"], "{f}");
    assert!(f.find("dialback", "urn:xmpp:features:dialback").is_some(), "{f}");
    // Another domain as the authorization identity: invalid-authzid (XEP-0178 section 3).
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    assert_eq!(c.auth_external(&b64("evil.test")).await, Err("invalid-authzid".into()));
    // Not base64: incorrect-encoding. Another mechanism: invalid-mechanism.
    assert_eq!(c.auth_external("!!not base64!!").await, Err("incorrect-encoding".into()));
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>").await;
    let r = c.recv().await;
    assert!(r.is("failure", ns::SASL) && r.find("invalid-mechanism", ns::SASL).is_some(), "{r}");
    // Still no stanza allowed; then the right authzid (in another case) succeeds, and the
    // restarted stream offers no SASL again.
    assert_eq!(c.auth_external(&b64("B.test")).await, Ok(()));
    let (_, f) = raw_open(&mut c, "b.test", "localhost").await;
    assert!(mechanisms(&f).is_empty(), "{f}");
    c.send("<message from='bob@b.test' to='alice@localhost' type='chat' id='e1'><body>by certificate</body></message>").await;
    let m = alice.recv_where(|e| e.name == "message" && e.get_attr("id") == Some("e1")).await;
    assert_eq!(body(&m).as_deref(), Some("by certificate"));
    // The pair is b.test -> localhost only.
    c.send("<message from='bob@b.test' to='x@example.test' type='chat'><body>elsewhere</body></message>").await;
    assert_eq!(c.stream_error().await, "host-unknown");
    assert_eq!(auths(&a).external_in, 1);

    // The same certificate claiming another domain: no EXTERNAL, and not-authorized if tried.
    let (mut c, f) = raw_with_cert(addr, &peer, "other.test", "localhost").await;
    assert!(mechanisms(&f).is_empty(), "{f}");
    assert_eq!(c.auth_external("=").await, Err("not-authorized".into()));
    // The stream stays open for dialback (section 3, step 11).
    c.send(&format!("<db:result xmlns:db='{DB}' from='other.test' to='nowhere.test'>abc</db:result>")).await;
    let r = c.recv_where(|e| e.is("result", DB)).await;
    assert_eq!(r.get_attr("type"), Some("error"), "{r}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_certificate_is_not_trusted() {
    let pki = Pki::new();
    let a_cert = pki.issue("a", &["localhost"], true);
    let self_signed = pki.issue("self", &["b.test"], false);
    let (a, b) = pair_with(|c| pki.use_for(c, "localhost", &a_cert)).await;
    let (mut c, f) = raw_with_cert(a.s2s.unwrap(), &self_signed, "b.test", "localhost").await;
    assert!(mechanisms(&f).is_empty(), "a certificate nobody vouches for: {f}");
    assert!(f.find("dialback", "urn:xmpp:features:dialback").is_some(), "{f}");
    assert_eq!(c.auth_external("=").await, Err("not-authorized".into()));
    // And no certificate at all is no better.
    let (mut c, _) = raw_tls(a.s2s.unwrap(), "b.test", "localhost").await;
    assert_eq!(c.auth_external("=").await, Err("not-authorized".into()));
    assert_eq!(auths(&a).external_in, 0);
    a.stop().await;
    b.stop().await;
}
