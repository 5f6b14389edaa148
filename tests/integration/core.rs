//! Streams, TLS, SASL, binding, and the basic services a client asks for at login.

use starling::sasl::credentials::Hash;
use starling::xml::ns;

use crate::common::{error_condition, Client, Db, TestServer};

async fn starttls_scram_bind_and_ping(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", "secret").await;
    let mut c = Client::connect(s.c2s).await;
    let f = c.open("localhost").await;
    let st = f.find("starttls", ns::TLS).expect("STARTTLS offered");
    assert!(st.find("required", ns::TLS).is_some(), "TLS is required by default");
    assert!(f.find("mechanisms", ns::SASL).is_none(), "no SASL before TLS when TLS is required");
    c.starttls().await;
    let f = c.open("localhost").await;
    assert!(f.find("starttls", ns::TLS).is_none());
    let mechs = c.mechanisms();
    for m in ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"] {
        assert!(mechs.contains(&m.to_string()), "{m} offered: {mechs:?}");
    }
    let cb = f.find("sasl-channel-binding", ns::SASL_CB).expect("XEP-0440 element");
    assert!(cb.elements().any(|e| e.get_attr("type") == Some("tls-exporter")));
    c.auth_scram("alice", "secret", Hash::Sha256, None).await.unwrap();
    let f = c.open("localhost").await;
    assert!(f.find("bind", ns::BIND).is_some());
    assert!(f.find("session", ns::SESSION).and_then(|s| s.find("optional", ns::SESSION)).is_some());
    assert!(f.find("ver", ns::ROSTER_VER).is_some());
    let jid = c.bind("laptop").await;
    assert_eq!(jid, "alice@localhost/laptop");
    let r = c.iq("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert_eq!(r.get_attr("type"), Some("result"));
    assert_eq!(r.get_attr("from"), Some("localhost"));
    c.close().await;
    s.stop().await;
}

async fn every_scram_variant_and_plain(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("bob", "pw").await;
    for (hash, plus) in [(Hash::Sha1, None), (Hash::Sha256, None), (Hash::Sha1, Some("tls-exporter")), (Hash::Sha256, Some("tls-exporter"))]
    {
        let mut c = Client::connect_tls(s.c2s_tls).await;
        c.open("localhost").await;
        c.auth_scram("bob", "pw", hash, plus).await.unwrap_or_else(|e| panic!("{hash:?} {plus:?}: {e}"));
        c.open("localhost").await;
        c.bind("").await;
    }
    let mut c = Client::connect_tls(s.c2s_tls).await;
    c.open("localhost").await;
    c.auth_plain("bob", "pw").await.unwrap();
    let mut c = Client::connect_tls(s.c2s_tls).await;
    c.open("localhost").await;
    assert_eq!(c.auth_plain("bob", "nope").await.unwrap_err(), "not-authorized");
    assert_eq!(c.auth_scram("bob", "nope", Hash::Sha256, None).await.unwrap_err(), "not-authorized");
    assert_eq!(c.auth_scram("nobody", "pw", Hash::Sha256, None).await.unwrap_err(), "not-authorized");
    s.stop().await;
}

async fn disco_version_time_and_unknown_iq(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("carol", "pw").await;
    let mut c = s.login("carol", "pw", "r").await;
    let r = c.iq("<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let q = r.find("query", ns::DISCO_INFO).unwrap();
    let feats: Vec<&str> = q.elements().filter_map(|e| e.get_attr("var")).collect();
    // XEP-0191 section 3: clients look for blocking on their server's domain.
    for f in [ns::PING, ns::VERSION, ns::TIME, ns::VCARD, ns::LAST, ns::DISCO_ITEMS, ns::BLOCKING] {
        assert!(feats.contains(&f), "{f} in {feats:?}");
    }
    let r = c.iq("<iq type='get' id='v1' to='localhost'><query xmlns='jabber:iq:version'/></iq>").await;
    assert_eq!(r.find("query", ns::VERSION).unwrap().find("name", ns::VERSION).unwrap().text_content(), "Starling");
    let r = c.iq("<iq type='get' id='t1' to='localhost'><time xmlns='urn:xmpp:time'/></iq>").await;
    assert!(r.find("time", ns::TIME).unwrap().find("utc", ns::TIME).unwrap().text_content().ends_with('Z'));
    let r = c.iq("<iq type='get' id='u1' to='localhost'><query xmlns='urn:example:nothing'/></iq>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("service-unavailable"));
    let r = c.iq("<iq type='get' id='u2'><query xmlns='urn:example:nothing'/></iq>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("service-unavailable"));
    s.stop().await;
}

async fn channel_binding_types_and_downgrade(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("dave", "pw").await;
    for cb in ["tls-exporter", "tls-server-end-point"] {
        for hash in [Hash::Sha1, Hash::Sha256] {
            let mut c = Client::connect(s.c2s).await;
            c.open("localhost").await;
            c.starttls().await;
            c.open("localhost").await;
            c.auth_scram("dave", "pw", hash, Some(cb)).await.unwrap_or_else(|e| panic!("{cb} {hash:?}: {e}"));
        }
    }
    // Wrong binding data: the server must refuse.
    let mut c = Client::connect_tls(s.c2s_tls).await;
    c.open("localhost").await;
    c.exporter = Some(vec![0; 32]);
    assert_eq!(c.auth_scram("dave", "pw", Hash::Sha256, Some("tls-exporter")).await.unwrap_err(), "not-authorized");
    // A client claiming "y" (supports binding, thinks the server does not) while the server
    // offered -PLUS is a downgrade (RFC 5802 section 6).
    use base64::Engine;
    let first = base64::engine::general_purpose::STANDARD.encode("y,,n=dave,r=abcdefgh");
    let mut c = Client::connect_tls(s.c2s_tls).await;
    c.open("localhost").await;
    c.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{first}</auth>")).await;
    let r = c.recv().await;
    assert!(r.is("failure", ns::SASL) && r.find("not-authorized", ns::SASL).is_some(), "{r}");
    s.stop().await;
}

async fn sasl_failure_conditions(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("erin", "pw").await;
    // Before TLS: encryption-required.
    let mut c = Client::connect(s.c2s).await;
    c.open("localhost").await;
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGVyaW4AcHc=</auth>").await;
    let r = c.recv().await;
    assert!(r.find("encryption-required", ns::SASL).is_some(), "{r}");
    let mut c = Client::connect_tls(s.c2s_tls).await;
    c.open("localhost").await;
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='X-UNKNOWN'>AA==</auth>").await;
    assert!(c.recv().await.find("invalid-mechanism", ns::SASL).is_some());
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>!!notbase64!!</auth>").await;
    assert!(c.recv().await.find("incorrect-encoding", ns::SASL).is_some());
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>bm9udWxscw==</auth>").await;
    assert!(c.recv().await.find("malformed-request", ns::SASL).is_some());
    // authzid naming someone else.
    use base64::Engine;
    let d = base64::engine::general_purpose::STANDARD.encode("other@localhost\0erin\0pw");
    c.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{d}</auth>")).await;
    assert!(c.recv().await.find("invalid-authzid", ns::SASL).is_some());
    // Abort during SCRAM.
    let first = base64::engine::general_purpose::STANDARD.encode("n,,n=erin,r=abcdefgh");
    c.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>{first}</auth>")).await;
    assert!(c.recv().await.is("challenge", ns::SASL));
    c.send("<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>").await;
    let r = c.recv().await;
    assert!(r.find("aborted", ns::SASL).is_some(), "{r}");
    s.stop().await;
}

async fn tls12_is_accepted(db: Db) {
    use std::sync::Arc;
    let s = TestServer::start(db).await;
    s.add_user("fay", "pw").await;
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(crate::common::accept_any())
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(s.c2s_tls).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    s.stop().await;
}

async fn second_login_with_same_resource_gets_conflict(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("gus", "pw").await;
    let mut first = s.login("gus", "pw", "phone").await;
    let mut second = s.login("gus", "pw", "phone").await;
    assert_eq!(first.stream_error().await, "conflict");
    let r = second.iq("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert_eq!(r.get_attr("type"), Some("result"));
    let r = second.iq("<iq type='set' id='s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>").await;
    assert_eq!(r.get_attr("type"), Some("result"), "legacy session establishment after bind: {r}");
    s.stop().await;
}

async fn shutdown_closes_every_stream_with_system_shutdown(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("hal", "pw").await;
    let mut a = s.online("hal", "pw", "a").await;
    let mut b = Client::connect(s.c2s).await;
    b.open("localhost").await;
    let r = a.iq("<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='ivy@localhost'/></query></iq>").await;
    assert_eq!(r.get_attr("type"), Some("result"));
    let storage = s.storage.clone();
    let url = s.url.clone();
    let running = {
        let mut s = s;
        let r = s.running.take().unwrap();
        (s, r)
    };
    let (s, r) = running;
    let stop = tokio::spawn(r.shutdown());
    assert_eq!(a.stream_error().await, "system-shutdown");
    assert_eq!(b.stream_error().await, "system-shutdown");
    stop.await.unwrap();
    drop(storage);
    // The data is there for the next start.
    let st = starling::storage::Storage::open(&url, 2).await.unwrap();
    assert_eq!(st.roster("hal@localhost").await.unwrap().len(), 1);
    st.close().await;
    s.stop().await;
}

crate::on_both!(
    starttls_scram_bind_and_ping,
    every_scram_variant_and_plain,
    disco_version_time_and_unknown_iq,
    channel_binding_types_and_downgrade,
    sasl_failure_conditions,
    tls12_is_accepted,
    second_login_with_same_resource_gets_conflict,
    shutdown_closes_every_stream_with_system_shutdown,
);
