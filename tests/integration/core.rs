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
    assert!(
        st.find("required", ns::TLS).is_some(),
        "TLS is required by default"
    );
    assert!(
        f.find("mechanisms", ns::SASL).is_none(),
        "no SASL before TLS when TLS is required"
    );
    c.starttls().await;
    let f = c.open("localhost").await;
    assert!(f.find("starttls", ns::TLS).is_none());
    let mechs = c.mechanisms();
    for m in [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "PLAIN",
    ] {
        assert!(mechs.contains(&m.to_string()), "{m} offered: {mechs:?}");
    }
    let cb = f
        .find("sasl-channel-binding", ns::SASL_CB)
        .expect("XEP-0440 element");
    assert!(cb
        .elements()
        .any(|e| e.get_attr("type") == Some("tls-exporter")));
    c.auth_scram("alice", "secret", Hash::Sha256, None)
        .await
        .unwrap();
    let f = c.open("localhost").await;
    assert!(f.find("bind", ns::BIND).is_some());
    assert!(f
        .find("session", ns::SESSION)
        .and_then(|s| s.find("optional", ns::SESSION))
        .is_some());
    assert!(f.find("ver", ns::ROSTER_VER).is_some());
    let jid = c.bind("laptop").await;
    assert_eq!(jid, "alice@localhost/laptop");
    let r = c
        .iq("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(r.get_attr("type"), Some("result"));
    assert_eq!(r.get_attr("from"), Some("localhost"));
    c.close().await;
    s.stop().await;
}

async fn every_scram_variant_and_plain(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("bob", "pw").await;
    for (hash, plus) in [
        (Hash::Sha1, None),
        (Hash::Sha256, None),
        (Hash::Sha1, Some("tls-exporter")),
        (Hash::Sha256, Some("tls-exporter")),
    ] {
        let mut c = Client::connect_tls(s.c2s_tls).await;
        c.open("localhost").await;
        c.auth_scram("bob", "pw", hash, plus)
            .await
            .unwrap_or_else(|e| panic!("{hash:?} {plus:?}: {e}"));
        c.open("localhost").await;
        c.bind("").await;
    }
    let mut c = Client::connect_tls(s.c2s_tls).await;
    c.open("localhost").await;
    c.auth_plain("bob", "pw").await.unwrap();
    let mut c = Client::connect_tls(s.c2s_tls).await;
    c.open("localhost").await;
    assert_eq!(
        c.auth_plain("bob", "nope").await.unwrap_err(),
        "not-authorized"
    );
    assert_eq!(
        c.auth_scram("bob", "nope", Hash::Sha256, None)
            .await
            .unwrap_err(),
        "not-authorized"
    );
    assert_eq!(
        c.auth_scram("nobody", "pw", Hash::Sha256, None)
            .await
            .unwrap_err(),
        "not-authorized"
    );
    s.stop().await;
}

async fn disco_version_time_and_unknown_iq(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("carol", "pw").await;
    let mut c = s.login("carol", "pw", "r").await;
    let r = c.iq("<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let q = r.find("query", ns::DISCO_INFO).unwrap();
    let feats: Vec<&str> = q.elements().filter_map(|e| e.get_attr("var")).collect();
    for f in [
        ns::PING,
        ns::VERSION,
        ns::TIME,
        ns::VCARD,
        ns::LAST,
        ns::DISCO_ITEMS,
    ] {
        assert!(feats.contains(&f), "{f} in {feats:?}");
    }
    let r = c
        .iq("<iq type='get' id='v1' to='localhost'><query xmlns='jabber:iq:version'/></iq>")
        .await;
    assert_eq!(
        r.find("query", ns::VERSION)
            .unwrap()
            .find("name", ns::VERSION)
            .unwrap()
            .text_content(),
        "Starling"
    );
    let r = c
        .iq("<iq type='get' id='t1' to='localhost'><time xmlns='urn:xmpp:time'/></iq>")
        .await;
    assert!(r
        .find("time", ns::TIME)
        .unwrap()
        .find("utc", ns::TIME)
        .unwrap()
        .text_content()
        .ends_with('Z'));
    let r = c
        .iq("<iq type='get' id='u1' to='localhost'><query xmlns='urn:example:nothing'/></iq>")
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("service-unavailable"));
    let r = c
        .iq("<iq type='get' id='u2'><query xmlns='urn:example:nothing'/></iq>")
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("service-unavailable"));
    s.stop().await;
}

crate::on_both!(
    starttls_scram_bind_and_ping,
    every_scram_variant_and_plain,
    disco_version_time_and_unknown_iq
);
