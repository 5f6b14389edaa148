//! The REST API (`/api/v1`), black-box: over HTTP against a real server, checked over XMPP.
//! Accounts (created, listed, password changed, deleted while online), messages sent by the
//! API and read back from the archive with paging, rooms created, opened to a new member and
//! destroyed; every call without the token refused.

use reqwest::{Client as Http, StatusCode};
use serde_json::{json, Value};
use starling::sasl::credentials::Hash;
use starling::xml::ns;

use crate::common::{error_condition, Client, Db, TestServer};

const PW: &str = "secret";
const TOKEN: &str = "api-token-for-tests";
const MUC: &str = "http://jabber.org/protocol/muc";

struct Api {
    http: Http,
    base: String,
}

impl Api {
    fn new(s: &TestServer) -> Api {
        Api { http: Http::new(), base: format!("http://{}/api/v1", s.http.expect("HTTP listener")) }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

async fn server(db: Db, users: &[&str]) -> TestServer {
    let s = TestServer::start_with(db, |c| {
        c.http.listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.http.api_tokens = vec![TOKEN.into()];
    })
    .await;
    for u in users {
        s.add_user(u, PW).await;
    }
    s
}

fn body(e: &starling::xml::Element) -> Option<String> {
    e.find("body", ns::CLIENT).map(|b| b.text_content())
}

async fn accounts(db: Db) {
    let s = server(db, &["alice"]).await;
    let api = Api::new(&s);
    // No token, a wrong one: refused, nothing done.
    let r = api.http.post(format!("{}/users", api.base)).json(&json!({"jid": "x@localhost", "password": "p"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = api.http.get(format!("{}/users", api.base)).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let (st, v) = api.post("/users", json!({"jid": "dave@localhost", "password": "first"})).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(api.post("/users", json!({"jid": "dave@localhost", "password": "again"})).await.0, StatusCode::CONFLICT);
    assert_eq!(api.post("/users", json!({"jid": "eve@elsewhere.example", "password": "p"})).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(api.post("/users", json!({"jid": "eve@localhost"})).await.0, StatusCode::BAD_REQUEST);
    let (_, v) = api.get("/users").await;
    assert_eq!(v["users"], json!(["alice@localhost", "dave@localhost"]));

    // The account works over XMPP; after a password change only the new one does.
    s.login("dave", "first", "a").await.close().await;
    let (st, _) = api.call(reqwest::Method::PUT, "/users/dave@localhost/password", Some(json!({"password": "second"}))).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let mut c = Client::connect(s.c2s).await;
    c.open("localhost").await;
    c.starttls().await;
    c.open("localhost").await;
    assert!(c.auth_scram("dave", "first", Hash::Sha256, None).await.is_err(), "the old password still works");
    let mut dave = s.online("dave", "second", "phone").await;
    let (_, v) = api.get("/users/dave@localhost/sessions").await;
    assert_eq!(v["sessions"][0]["jid"], "dave@localhost/phone");
    assert_eq!(v["sessions"][0]["available"], true);
    assert_eq!(api.get("/users/nobody@localhost/sessions").await.0, StatusCode::NOT_FOUND);

    // Deleted while online: the session ends with not-authorized (XEP-0077 section 3.2).
    let (st, _) = api.call(reqwest::Method::DELETE, "/users/dave@localhost", None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(dave.stream_error().await, "not-authorized");
    assert_eq!(api.call(reqwest::Method::DELETE, "/users/dave@localhost", None).await.0, StatusCode::NOT_FOUND);
    let (_, v) = api.get("/users").await;
    assert_eq!(v["users"], json!(["alice@localhost"]));
    s.stop().await;
}

async fn messages_and_history(db: Db) {
    let s = server(db, &["alice", "bob"]).await;
    let api = Api::new(&s);
    let mut alice = s.online("alice", PW, "phone").await;
    // From the host by default.
    let (st, v) = api.post("/messages", json!({"to": "alice@localhost", "body": "maintenance at noon", "type": "headline"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let m = alice.recv_where(|e| e.name == "message").await;
    assert_eq!((m.get_attr("from"), m.get_attr("type")), (Some("localhost"), Some("headline")));
    assert_eq!(body(&m).as_deref(), Some("maintenance at noon"));
    // From an account: archived on both sides, and carbon-copied to the account's clients as
    // if one of them had sent it (XEP-0280).
    let mut bob = s.online("bob", PW, "laptop").await;
    let r = bob.iq("<iq type='set' id='c'><enable xmlns='urn:xmpp:carbons:2'/></iq>").await;
    assert_eq!(r.get_attr("type"), Some("result"));
    for i in 1..=3 {
        let (st, _) = api.post("/messages", json!({"from": "bob@localhost", "to": ["alice@localhost"], "body": format!("m{i}")})).await;
        assert_eq!(st, StatusCode::OK);
        let m = alice.recv_where(|e| e.name == "message").await;
        assert_eq!(m.get_attr("from"), Some("bob@localhost"));
        let c = bob.recv_where(|e| e.name == "message").await;
        assert!(c.find("sent", "urn:xmpp:carbons:2").is_some(), "{c}");
    }
    assert_eq!(
        api.post("/messages", json!({"from": "mallory@evil.example", "to": "alice@localhost", "body": "x"})).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.post("/messages", json!({"from": "ghost@localhost", "to": "alice@localhost", "body": "x"})).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(api.post("/messages", json!({"to": "a@b@c", "body": "x"})).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(api.post("/messages", json!({"to": "alice@localhost"})).await.0, StatusCode::BAD_REQUEST);

    // alice's archive with bob, two at a time.
    let (st, v) = api.get("/history/alice@localhost?with=bob@localhost&limit=2").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let page: Vec<&str> = v["messages"].as_array().unwrap().iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(page, ["m1", "m2"]);
    assert_eq!(v["complete"], false);
    assert_eq!(v["messages"][0]["from"], "bob@localhost");
    let last = v["messages"][1]["id"].as_str().unwrap().to_string();
    let (_, v) = api.get(&format!("/history/alice@localhost?with=bob@localhost&after={last}")).await;
    let page: Vec<&str> = v["messages"].as_array().unwrap().iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(page, ["m3"]);
    assert_eq!(v["complete"], true);
    // The page before m3: the newest two before it, oldest first.
    let m3 = v["messages"][0]["id"].as_str().unwrap().to_string();
    let (_, v) = api.get(&format!("/history/alice@localhost?with=bob@localhost&before={m3}&limit=2")).await;
    let page: Vec<&str> = v["messages"].as_array().unwrap().iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(page, ["m1", "m2"]);
    // bob's copy is his own archive; the headline from the host is in alice's, not bob's.
    let (_, v) = api.get("/history/bob@localhost").await;
    assert_eq!(v["messages"].as_array().unwrap().len(), 3);
    assert_eq!(api.get("/history/nobody@localhost").await.0, StatusCode::NOT_FOUND);
    assert_eq!(api.get("/history/alice@localhost?after=no-such-id").await.0, StatusCode::NOT_FOUND);
    s.stop().await;
}

async fn rooms(db: Db) {
    let s = server(db, &["alice", "bob", "carol"]).await;
    let api = Api::new(&s);
    let room = "team@conference.localhost";
    let (st, v) = api
        .post(
            "/rooms",
            json!({"jid": room, "name": "Team", "owners": ["alice@localhost"], "members": ["bob@localhost"], "members_only": true}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(api.post("/rooms", json!({"jid": room, "owners": ["alice@localhost"]})).await.0, StatusCode::CONFLICT);
    assert_eq!(api.post("/rooms", json!({"jid": "x@localhost", "owners": ["alice@localhost"]})).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(api.post("/rooms", json!({"jid": "y@conference.localhost", "owners": []})).await.0, StatusCode::BAD_REQUEST);
    let (_, v) = api.get("/rooms").await;
    assert_eq!(v["rooms"][0]["jid"], room);
    assert_eq!(v["rooms"][0]["name"], "Team");

    // A member enters at once (no creation step: the room exists); a stranger may not.
    let mut bob = s.online("bob", PW, "r").await;
    bob.send(&format!("<presence to='{room}/bob'><x xmlns='{MUC}'/></presence>")).await;
    bob.recv_where(|e| e.name == "message" && e.find("subject", ns::CLIENT).is_some()).await;
    let mut carol = s.online("carol", PW, "r").await;
    carol.send(&format!("<presence to='{room}/carol'><x xmlns='{MUC}'/></presence>")).await;
    let e = carol.recv_where(|e| e.name == "presence").await;
    assert_eq!(error_condition(&e).as_deref(), Some("registration-required"), "{e}");
    // Made a member through the API, she can.
    let (st, _) = api.call(reqwest::Method::PUT, &format!("/rooms/{room}/affiliations"), Some(json!({"carol@localhost": "member"}))).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    carol.send(&format!("<presence to='{room}/carol'><x xmlns='{MUC}'/></presence>")).await;
    carol.recv_where(|e| e.name == "message" && e.find("subject", ns::CLIENT).is_some()).await;
    bob.recv_where(|e| e.name == "presence" && e.get_attr("from") == Some("team@conference.localhost/carol")).await;

    // Destroyed: the occupants are told, and it is gone from the list.
    let (st, _) = api.call(reqwest::Method::DELETE, &format!("/rooms/{room}"), None).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let p = bob
        .recv_where(|e| {
            e.name == "presence" && e.get_attr("type") == Some("unavailable") && e.get_attr("from") == Some("team@conference.localhost/bob")
        })
        .await;
    assert!(p.to_xml().contains("destroy"), "{p}");
    let mut listed = true;
    for _ in 0..50 {
        let (_, v) = api.get("/rooms").await;
        listed = !v["rooms"].as_array().unwrap().is_empty();
        if !listed {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!listed, "the destroyed room is still listed");
    // Its task may still be finishing for a moment after its row is gone; then it is unknown.
    let mut gone = false;
    for _ in 0..50 {
        if api.call(reqwest::Method::DELETE, &format!("/rooms/{room}"), None).await.0 == StatusCode::NOT_FOUND {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(gone, "a destroyed room can still be destroyed");
    s.stop().await;
}

/// `/metrics`: off unless configured; then gauges and counters that follow what happens.
async fn metrics(db: Db) {
    let s = server(db, &["alice"]).await;
    let url = format!("http://{}/metrics", s.http.unwrap());
    assert_eq!(Http::new().get(&url).send().await.unwrap().status(), StatusCode::NOT_FOUND, "off by default");
    s.stop().await;

    let s = TestServer::start_with(db, |c| {
        c.http.listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.http.metrics = true;
    })
    .await;
    s.add_user("alice", PW).await;
    let url = format!("http://{}/metrics", s.http.unwrap());
    let scrape = || async {
        let r = Http::new().get(&url).send().await.unwrap();
        assert!(r.headers().get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|c| c.starts_with("text/plain")));
        let text = r.text().await.unwrap();
        move |name: &str| -> f64 {
            text.lines()
                .find(|l| l.split(' ').next() == Some(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
        }
    };
    let before = scrape().await;
    assert_eq!(before("starling_c2s_sessions"), 0.0);
    assert!(before("process_resident_memory_bytes") > 0.0);
    let mut alice = s.online("alice", PW, "phone").await;
    alice.send("<message to='alice@localhost' type='chat'><body>note to self</body></message>").await;
    alice.recv_where(|e| e.name == "message").await;
    alice.iq("<iq type='get' to='localhost' id='d'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let mut c = Client::connect(s.c2s).await;
    c.open("localhost").await;
    c.starttls().await;
    c.open("localhost").await;
    assert!(c.auth_scram("alice", "wrong", Hash::Sha256, None).await.is_err());
    let after = scrape().await;
    assert_eq!(after("starling_c2s_sessions"), 1.0);
    assert_eq!(after("starling_logins_total"), 1.0);
    assert_eq!(after("starling_login_failures_total"), 1.0);
    assert!(after("starling_stanzas_routed_total{kind=\"message\"}") >= 1.0);
    assert!(after("starling_stanzas_routed_total{kind=\"iq\"}") > before("starling_stanzas_routed_total{kind=\"iq\"}"));
    s.stop().await;
}

crate::on_both!(accounts, messages_and_history, rooms, metrics);
