//! Stream management (XEP-0198): acks both ways, resumption (also of a ghost connection),
//! unacknowledged messages kept offline when resumption times out.

use starling::sasl::credentials::Hash;
use starling::xml::{ns, Element};

use crate::common::{Client, Db, TestServer};

const SM: &str = "urn:xmpp:sm:3";

fn body(m: &Element) -> String {
    m.find("body", ns::CLIENT).map(|b| b.text_content()).unwrap_or_default()
}

/// Log in and enable resumable stream management; returns the resumption id.
async fn sm_login(s: &TestServer, user: &str, resource: &str) -> (Client, String) {
    let mut c = s.login(user, "pw", resource).await;
    assert!(c.features.as_ref().unwrap().find("sm", SM).is_some(), "sm is offered on the post-auth stream");
    c.send(&format!("<enable xmlns='{SM}' resume='true'/>")).await;
    let e = c.recv_where(|e| e.ns == SM).await;
    assert!(e.is("enabled", SM), "{e}");
    assert_eq!(e.get_attr("resume"), Some("true"));
    let id = e.get_attr("id").unwrap().to_string();
    (c, id)
}

async fn reconnect_and_resume(s: &TestServer, user: &str, previd: &str, h: u32) -> (Client, Element) {
    let mut c = Client::connect_tls(s.c2s_tls).await;
    c.open("localhost").await;
    c.auth_scram(user, "pw", Hash::Sha256, None).await.unwrap();
    let f = c.open("localhost").await;
    assert!(f.find("sm", SM).is_some(), "sm feature after authentication");
    c.send(&format!("<resume xmlns='{SM}' previd='{previd}' h='{h}'/>")).await;
    let r = c.recv_where(|e| e.ns == SM).await;
    (c, r)
}

async fn acks_both_ways(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let (mut b, _) = sm_login(&s, "bob", "b").await;
    b.send("<presence/>").await;
    b.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    b.send(&format!("<r xmlns='{SM}'/>")).await;
    let a = b.recv_where(|e| e.is("a", SM)).await;
    assert_eq!(a.get_attr("h"), Some("2"), "presence and iq handled");
    let mut al = s.online("alice", "pw", "a").await;
    al.send("<message to='bob@localhost' type='chat'><body>one</body></message>").await;
    // The server asks for an ack after sending stanzas.
    let r = b.recv_where(|e| e.is("r", SM)).await;
    assert!(r.is("r", SM));
    let sent_so_far = 3; // ping result, own presence, message
    b.send(&format!("<a xmlns='{SM}' h='{sent_so_far}'/>")).await;
    // Too high an h: undefined-condition with handled-count-too-high.
    b.send(&format!("<a xmlns='{SM}' h='99'/>")).await;
    assert_eq!(b.stream_error().await, "undefined-condition");
    s.stop().await;
}

async fn resume_resends_only_unacked(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let (mut b, id) = sm_login(&s, "bob", "b").await;
    b.send("<presence/>").await;
    b.recv_where(|e| e.name == "presence").await; // own presence: stanza 1
    let mut a = s.online("alice", "pw", "a").await;
    for i in 1..=3 {
        a.send(&format!("<message to='bob@localhost/b' type='chat'><body>m{i}</body></message>")).await;
        assert_eq!(body(&b.recv_where(|e| e.name == "message").await), format!("m{i}"));
    }
    b.send(&format!("<a xmlns='{SM}' h='2'/>")).await; // acked: own presence and m1
    b.send(&format!("<r xmlns='{SM}'/>")).await;
    b.recv_where(|e| e.is("a", SM)).await;
    drop(b); // the connection just drops
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    a.send("<message to='bob@localhost/b' type='chat'><body>m4</body></message>").await;
    a.expect_silence(300).await; // queued for the hibernating session, not bounced
    let (mut b, r) = reconnect_and_resume(&s, "bob", &id, 2).await;
    assert!(r.is("resumed", SM), "{r}");
    assert_eq!(r.get_attr("previd"), Some(id.as_str()));
    assert_eq!(r.get_attr("h"), Some("1"), "server handled one stanza (presence) before the drop");
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(body(&b.recv_where(|e| e.name == "message").await));
    }
    assert_eq!(got, vec!["m2", "m3", "m4"]);
    // The session is the same: still bound and available.
    a.send("<message to='bob@localhost' type='chat'><body>m5</body></message>").await;
    assert_eq!(body(&b.recv_where(|e| e.name == "message").await), "m5");
    s.stop().await;
}

async fn resume_replaces_a_ghost_connection(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("bob", "pw").await;
    let (mut ghost, id) = sm_login(&s, "bob", "b").await;
    let (mut b, r) = reconnect_and_resume(&s, "bob", &id, 0).await;
    assert!(r.is("resumed", SM), "{r}");
    // The old connection is closed by the server.
    assert!(matches!(ghost.event().await, Err(_) | Ok(starling::xml::XmlEvent::StreamClose)));
    let r = b.iq("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert_eq!(r.get_attr("type"), Some("result"));
    s.stop().await;
}

async fn timed_out_session_keeps_unacked_messages_offline(db: Db) {
    let s = TestServer::start_with(db, |c| c.stream_management.resume_timeout_secs = 1).await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let (mut b, id) = sm_login(&s, "bob", "b").await;
    b.send("<presence/>").await;
    let mut a = s.online("alice", "pw", "a").await;
    a.send("<message to='bob@localhost' type='chat'><body>unacked</body></message>").await;
    assert_eq!(body(&b.recv_where(|e| e.name == "message").await), "unacked");
    drop(b);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    // Resumption is no longer possible.
    let (mut c, r) = reconnect_and_resume(&s, "bob", &id, 0).await;
    assert!(r.is("failed", SM) && r.find("item-not-found", ns::STANZA_ERRORS).is_some(), "{r}");
    // After a failed resumption the client binds normally and gets the message from offline.
    c.bind("b2").await;
    c.send("<presence/>").await;
    let m = c.recv_where(|e| e.name == "message").await;
    assert_eq!(body(&m), "unacked");
    assert!(m.find("delay", ns::DELAY).is_some());
    c.recv_where(|e| e.name == "presence" && e.get_attr("from") == Some("bob@localhost/b2")).await;
    c.expect_silence(300).await;
    a.expect_silence(100).await; // nothing bounced to the sender
    s.stop().await;
}

/// Three messages wait offline for bob.
async fn three_offline(s: &TestServer) {
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut a = s.online("alice", "pw", "a").await;
    for i in 1..=3 {
        a.send(&format!("<message to='bob@localhost' type='chat'><body>off{i}</body></message>")).await;
    }
    a.iq("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    a.close().await;
}

/// Bob with stream management (not resumable) sends initial presence and reads the stored
/// messages without acknowledging them.
async fn sm_reader(s: &TestServer, resource: &str) -> (Client, Vec<String>) {
    let mut c = s.login("bob", "pw", resource).await;
    c.send(&format!("<enable xmlns='{SM}'/>")).await;
    c.recv_where(|e| e.is("enabled", SM)).await;
    c.send("<presence/>").await;
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(body(&c.recv_where(|e| e.name == "message").await));
    }
    (c, got)
}

/// XEP-0198 with XEP-0160: a stored message leaves the store when the client acknowledges it,
/// not when it is written. A client that dropped after acknowledging one of three gets the other
/// two, once, at its next login.
async fn offline_messages_leave_the_store_on_acknowledgement(db: Db) {
    let s = TestServer::start(db).await;
    three_offline(&s).await;
    let (mut b, got) = sm_reader(&s, "b1").await;
    assert_eq!(got, ["off1", "off2", "off3"]);
    // Handled so far: the presence echo and the three messages, in stream order; the presence
    // came after the stored messages (they are handed over before the session is available).
    b.send(&format!("<a xmlns='{SM}' h='1'/>")).await;
    b.iq("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    drop(b); // connection lost, no resumption
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut c = s.login("bob", "pw", "b2").await;
    c.send("<presence/>").await;
    let mut again = Vec::new();
    loop {
        let e = c.recv_where(|e| e.name == "message" || e.get_attr("from") == Some("bob@localhost/b2")).await;
        if e.name == "presence" {
            break;
        }
        again.push(body(&e));
    }
    assert_eq!(again, ["off2", "off3"], "the acknowledged one is gone, the others are delivered once");
    c.expect_silence(300).await;
    s.stop().await;
}

/// While one resource holds stored messages unacknowledged, a second resource coming online is
/// not handed them too; when the first ends without acknowledging, the second gets them.
async fn held_offline_messages_go_to_another_resource_when_the_holder_ends(db: Db) {
    let s = TestServer::start(db).await;
    three_offline(&s).await;
    let (b1, got) = sm_reader(&s, "b1").await;
    assert_eq!(got.len(), 3);
    let mut b2 = s.login("bob", "pw", "b2").await;
    b2.send("<presence/>").await;
    b2.recv_where(|e| e.name == "presence" && e.get_attr("from") == Some("bob@localhost/b2")).await;
    // b1's presence may arrive; no message does.
    while let Some(Ok(starling::xml::XmlEvent::Element(e))) = b2.try_event(300).await {
        assert_ne!(e.name, "message", "held by b1: {e}");
    }
    drop(b1);
    let mut again = Vec::new();
    while again.len() < 3 {
        let m = b2.recv_where(|e| e.name == "message").await;
        assert!(m.find("delay", ns::DELAY).is_some(), "{m}");
        again.push(body(&m));
    }
    assert_eq!(again, ["off1", "off2", "off3"]);
    while let Some(Ok(starling::xml::XmlEvent::Element(e))) = b2.try_event(300).await {
        assert_ne!(e.name, "message", "delivered once: {e}");
    }
    s.stop().await;
}

async fn enable_before_bind_and_bad_resume(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("bob", "pw").await;
    let mut c = Client::connect_tls(s.c2s_tls).await;
    c.open("localhost").await;
    c.auth_scram("bob", "pw", Hash::Sha256, None).await.unwrap();
    c.open("localhost").await;
    c.send(&format!("<enable xmlns='{SM}'/>")).await;
    let f = c.recv().await;
    assert!(f.is("failed", SM) && f.find("unexpected-request", ns::STANZA_ERRORS).is_some(), "{f}");
    c.send(&format!("<resume xmlns='{SM}' previd='nope' h='0'/>")).await;
    let f = c.recv().await;
    assert!(f.is("failed", SM) && f.find("item-not-found", ns::STANZA_ERRORS).is_some(), "{f}");
    // Another account cannot resume someone else's session.
    s.add_user("eve", "pw").await;
    let (_bob, id) = sm_login(&s, "bob", "b").await;
    let (_, r) = reconnect_and_resume(&s, "eve", &id, 0).await;
    assert!(r.is("failed", SM), "{r}");
    c.bind("x").await;
    s.stop().await;
}

crate::on_both!(
    acks_both_ways,
    resume_resends_only_unacked,
    resume_replaces_a_ghost_connection,
    timed_out_session_keeps_unacked_messages_offline,
    offline_messages_leave_the_store_on_acknowledgement,
    held_offline_messages_go_to_another_resource_when_the_holder_ends,
    enable_before_bind_and_bad_resume,
);

mod csi {
    use super::*;

    const CSI: &str = "urn:xmpp:csi:0";

    async fn inactive_client_gets_collapsed_presence_and_urgent_messages(db: Db) {
        let s = TestServer::start(db).await;
        s.add_user("alice", "pw").await;
        s.add_user("bob", "pw").await;
        let mut b = s.online("bob", "pw", "b").await;
        assert!(b.features.as_ref().unwrap().find("csi", CSI).is_some());
        let mut a = s.online("alice", "pw", "a").await;
        a.send("<presence to='bob@localhost/b'><show>away</show></presence>").await;
        b.recv_where(|e| e.name == "presence" && e.get_attr("from") == Some("alice@localhost/a")).await;
        b.send(&format!("<inactive xmlns='{CSI}'/>")).await;
        b.send("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
        b.recv_where(|e| e.get_attr("id") == Some("sync")).await; // iq answers are never held
        for show in ["xa", "dnd", "chat"] {
            a.send(&format!("<presence to='bob@localhost/b'><show>{show}</show></presence>")).await;
        }
        a.send("<message to='bob@localhost/b' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>").await;
        b.expect_silence(400).await;
        a.send("<message to='bob@localhost/b' type='chat'><body>wake up</body></message>").await;
        let p = b.recv().await;
        assert_eq!(p.name, "presence");
        assert_eq!(p.find("show", ns::CLIENT).unwrap().text_content(), "chat", "collapsed to the newest");
        let cs = b.recv().await;
        assert!(cs.find("composing", "http://jabber.org/protocol/chatstates").is_some(), "{cs}");
        assert_eq!(body(&b.recv().await), "wake up");
        a.send("<presence to='bob@localhost/b'><show>away</show></presence>").await;
        b.expect_silence(300).await;
        b.send(&format!("<active xmlns='{CSI}'/>")).await;
        let p = b.recv().await;
        assert_eq!(p.find("show", ns::CLIENT).unwrap().text_content(), "away");
        s.stop().await;
    }

    crate::on_both!(inactive_client_gets_collapsed_presence_and_urgent_messages);
}
