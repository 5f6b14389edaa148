//! HTTP bots and webhooks (`[[bots]]`), black-box: a real HTTP bot (an axum server in the test)
//! answering messages, messages waiting while the bot is down and across a restart, events
//! pushed by external systems to `/hooks/<domain>/<name>`, and a bot in a roster.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::Value;
use starling::config::BotConfig;
use starling::xml::ns;

use crate::common::{Db, TestServer};

const PW: &str = "secret";
const BOTS: &str = "bots.localhost";
const SECRET: &str = "bot-secret";

/// A bot over HTTP: records what it is sent (after checking the signature) and answers with
/// `status` (200: `{"body": "echo: <body>"}`).
#[derive(Clone, Default)]
struct TestBot {
    seen: Arc<Mutex<Vec<Value>>>,
    status: Arc<AtomicU16>,
}

impl TestBot {
    async fn start(status: u16) -> (TestBot, SocketAddr) {
        let bot = TestBot::default();
        bot.status.store(status, Ordering::SeqCst);
        let app = axum::Router::new().route("/xmpp", axum::routing::post(answer)).with_state(bot.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (bot, addr)
    }

    fn bodies(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().map(|v| v["body"].as_str().unwrap_or("").to_string()).collect()
    }

    async fn wait_for(&self, n: usize) -> Vec<String> {
        for _ in 0..200 {
            if self.bodies().len() >= n {
                return self.bodies();
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the bot got {:?}, expected {n} messages", self.bodies());
    }
}

async fn answer(State(bot): State<TestBot>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let status = bot.status.load(Ordering::SeqCst);
    if status != 200 {
        return (StatusCode::from_u16(status).unwrap(), String::new()).into_response();
    }
    // The signature is checked the way a bot would: HMAC-SHA-256 of the body under the secret.
    let sig = headers.get("x-starling-signature").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert_eq!(sig, format!("sha256={}", starling::modules::bots::signature(SECRET, &body)));
    let v: Value = serde_json::from_slice(&body).unwrap();
    let text = v["body"].as_str().unwrap_or("").to_string();
    bot.seen.lock().unwrap().push(v);
    axum::Json(serde_json::json!({ "body": format!("echo: {text}") })).into_response()
}

async fn server(db: Db, users: &[&str], url: &str, notify: &[&str]) -> TestServer {
    server_in(db, users, url, notify, &[]).await
}

/// A server whose bot also sits in `rooms` as "echo".
async fn server_in(db: Db, users: &[&str], url: &str, notify: &[&str], rooms: &[&str]) -> TestServer {
    let url = url.to_string();
    let notify: Vec<String> = notify.iter().map(|s| s.to_string()).collect();
    let rooms: Vec<String> = rooms.iter().map(|s| s.to_string()).collect();
    let s = TestServer::start_with(db, move |c| {
        c.http.listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.bots = vec![BotConfig { domain: BOTS.into(), url, secret: SECRET.into(), notify, rooms, nick: "echo".into(), timeout_secs: 5 }];
    })
    .await;
    for u in users {
        s.add_user(u, PW).await;
    }
    s
}

async fn a_bot_answers_over_http(db: Db) {
    let (bot, addr) = TestBot::start(200).await;
    let s = server(db, &["alice"], &format!("http://{addr}/xmpp"), &[]).await;
    let mut alice = s.online("alice", PW, "phone").await;
    let me = alice.jid.clone().unwrap();
    alice.send("<message to='echo@bots.localhost' type='chat' id='m1'><body>hi</body></message>").await;
    let reply = alice.recv_where(|e| e.name == "message").await;
    assert_eq!(reply.get_attr("from"), Some("echo@bots.localhost"));
    assert_eq!(reply.get_attr("type"), Some("chat"));
    assert_eq!(reply.find("body", ns::CLIENT).map(|b| b.text_content()).as_deref(), Some("echo: hi"));
    assert!(reply.find("stanza-id", "urn:xmpp:sid:0").is_some(), "the answer is archived: {reply}");
    let seen = bot.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["from"], me.as_str());
    assert_eq!(seen[0]["to"], "echo@bots.localhost");
    assert_eq!(seen[0]["type"], "chat");
    assert_eq!(seen[0]["id"], "m1");
    s.stop().await;
}

async fn messages_wait_while_the_bot_is_down(db: Db) {
    let (bot, addr) = TestBot::start(503).await;
    let s = server(db, &["alice"], &format!("http://{addr}/xmpp"), &[]).await;
    let mut alice = s.online("alice", PW, "phone").await;
    for i in 1..=3 {
        alice.send(&format!("<message to='echo@bots.localhost' type='chat'><body>m{i}</body></message>")).await;
    }
    alice.expect_silence(300).await;
    assert!(bot.bodies().is_empty());
    // Kept across a restart of the server while the bot is still down.
    let s = s.restart().await;
    let mut alice = s.online("alice", PW, "phone").await;
    bot.status.store(200, Ordering::SeqCst);
    assert_eq!(bot.wait_for(3).await, vec!["m1", "m2", "m3"], "all of them, in order");
    for i in 1..=3 {
        let r = alice.recv_where(|e| e.name == "message").await;
        assert_eq!(r.find("body", ns::CLIENT).map(|b| b.text_content()), Some(format!("echo: m{i}")));
    }
    // Once: nothing is sent again.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(bot.bodies().len(), 3);
    // A message the bot refuses for good (4xx) is dropped, and the next one goes through.
    bot.status.store(400, Ordering::SeqCst);
    alice.send("<message to='echo@bots.localhost' type='chat'><body>refused</body></message>").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    bot.status.store(200, Ordering::SeqCst);
    alice.send("<message to='echo@bots.localhost' type='chat'><body>m4</body></message>").await;
    assert_eq!(bot.wait_for(4).await, vec!["m1", "m2", "m3", "m4"]);
    s.stop().await;
}

async fn events_pushed_to_hooks(db: Db) {
    let s = server(db, &["alice", "bob"], "", &["bob@localhost"]).await;
    let base = format!("http://{}/hooks/{BOTS}", s.http.expect("HTTP listener"));
    let client = reqwest::Client::new();
    let gitlab = r#"{"object_kind":"pipeline","project":{"path_with_namespace":"team/app"},"object_attributes":{"id":42,"status":"failed","ref":"main"}}"#;

    // alice is offline: the event is stored for her, and the answer says it was delivered.
    let r = client
        .post(format!("{base}/gitlab?to=alice@localhost"))
        .header("x-gitlab-token", SECRET)
        .header("x-gitlab-event", "Pipeline Hook")
        .body(gitlab)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["delivered"], 1);
    let mut alice = s.online("alice", PW, "phone").await;
    let m = alice.recv_where(|e| e.name == "message").await;
    assert_eq!(m.get_attr("from"), Some("gitlab@bots.localhost"));
    assert_eq!(m.find("body", ns::CLIENT).map(|b| b.text_content()).as_deref(), Some("[team/app] pipeline #42 failed on main"));

    // No `to`: the bot's notify list. GitHub's signature instead of a token.
    let mut bob = s.online("bob", PW, "laptop").await;
    let body = r#"{"action":"opened","number":5,"pull_request":{"title":"Faster","html_url":"https://gh/o/r/pull/5"},"repository":{"full_name":"o/r"},"sender":{"login":"ann"}}"#;
    let sig = format!("sha256={}", starling::modules::bots::signature(SECRET, body.as_bytes()));
    let r = client
        .post(format!("{base}/github"))
        .header("x-hub-signature-256", sig)
        .header("x-github-event", "pull_request")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m = bob.recv_where(|e| e.name == "message").await;
    assert_eq!(m.get_attr("from"), Some("github@bots.localhost"));
    assert_eq!(
        m.find("body", ns::CLIENT).map(|b| b.text_content()).as_deref(),
        Some("[o/r] ann opened pull request #5: Faster https://gh/o/r/pull/5")
    );

    // Refused: a wrong secret, a bot that does not exist, a bad destination, an empty event.
    let post = |url: String, token: &str, body: &'static str| client.post(url).bearer_auth(token).body(body).send();
    assert_eq!(post(format!("{base}/ci"), "wrong", r#"{"text":"x"}"#).await.unwrap().status(), 401);
    let other = format!("http://{}/hooks/nobots.localhost/ci", s.http.unwrap());
    assert_eq!(post(other, SECRET, r#"{"text":"x"}"#).await.unwrap().status(), 404);
    assert_eq!(post(format!("{base}/ci?to=a@b@c"), SECRET, r#"{"text":"x"}"#).await.unwrap().status(), 400);
    assert_eq!(post(format!("{base}/ci"), SECRET, "").await.unwrap().status(), 400);
    // A plain-text event with a bearer token.
    assert_eq!(post(format!("{base}/ci?to=alice@localhost"), SECRET, "deploy done").await.unwrap().status(), 200);
    let m = alice.recv_where(|e| e.name == "message").await;
    assert_eq!(m.get_attr("from"), Some("ci@bots.localhost"));
    assert_eq!(m.find("body", ns::CLIENT).map(|b| b.text_content()).as_deref(), Some("deploy done"));
    // A bot without a url takes no messages.
    alice.send("<message to='ci@bots.localhost' type='chat' id='x'><body>hello?</body></message>").await;
    let e = alice.recv_where(|e| e.get_attr("id") == Some("x")).await;
    assert_eq!(crate::common::error_condition(&e).as_deref(), Some("service-unavailable"));
    s.stop().await;
}

async fn a_bot_in_the_roster(db: Db) {
    let (_bot, addr) = TestBot::start(200).await;
    let s = server(db, &["alice"], &format!("http://{addr}/xmpp"), &[]).await;
    let mut alice = s.online("alice", PW, "phone").await;
    alice.iq("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>").await;
    alice.send("<presence to='echo@bots.localhost' type='subscribe'/>").await;
    alice
        .recv_where(|e| {
            e.name == "iq"
                && e.find("query", ns::ROSTER).and_then(|q| q.elements().next()).is_some_and(|i| i.get_attr("subscription") == Some("to"))
        })
        .await;
    // Then it is available, as a contact who is always online.
    alice.recv_where(|e| e.name == "presence" && e.get_attr("from") == Some("echo@bots.localhost") && e.get_attr("type").is_none()).await;
    let info = alice.iq("<iq type='get' to='echo@bots.localhost' id='i'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let id = info.find("query", ns::DISCO_INFO).and_then(|q| q.find("identity", ns::DISCO_INFO)).expect("identity");
    assert_eq!((id.get_attr("category"), id.get_attr("type")), (Some("client"), Some("bot")));
    let items = alice.iq("<iq type='get' to='localhost' id='it'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>").await;
    assert!(items.to_xml().contains(BOTS), "{items}");
    s.stop().await;
}

/// The bot in a room of its list: seated at start (here after a restart, the room being made
/// by then), it is sent the room's messages but not its own, and answers in the room; an event
/// pushed to the room is said by an occupant named after the hook.
async fn a_bot_in_a_room(db: Db) {
    const ROOM: &str = "dev@conference.localhost";
    let (bot, addr) = TestBot::start(200).await;
    let s = server_in(db, &["alice"], &format!("http://{addr}/xmpp"), &[], &[ROOM]).await;
    let mut alice = s.online("alice", PW, "phone").await;
    alice.send(&format!("<presence to='{ROOM}/alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>")).await;
    alice.recv_where(|e| e.name == "message" && e.find("subject", ns::CLIENT).is_some()).await;
    let form =
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
                <field var='muc#roomconfig_persistentroom'><value>1</value></field></x>";
    let r = alice
        .iq(&format!("<iq type='set' to='{ROOM}' id='cfg'><query xmlns='http://jabber.org/protocol/muc#owner'>{form}</query></iq>"))
        .await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");

    // The room did not exist when the server started; after a restart the bot is seated.
    let s = s.restart().await;
    let mut alice = s.online("alice", PW, "phone").await;
    alice.send(&format!("<presence to='{ROOM}/alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>")).await;
    let echo = format!("{ROOM}/echo");
    alice.recv_where(|e| e.name == "presence" && e.get_attr("from") == Some(echo.as_str()) && e.get_attr("type").is_none()).await;
    alice.recv_where(|e| e.name == "message" && e.find("subject", ns::CLIENT).is_some()).await;

    alice.send(&format!("<message to='{ROOM}' type='groupchat' id='g1'><body>hello</body></message>")).await;
    assert_eq!(bot.wait_for(1).await, vec!["hello"]);
    {
        let seen = bot.seen.lock().unwrap();
        assert_eq!(seen[0]["type"], "groupchat");
        assert_eq!(seen[0]["from"], format!("{ROOM}/alice"));
    }
    let m = alice.recv_where(|e| e.name == "message" && e.get_attr("from") == Some(echo.as_str())).await;
    assert_eq!(m.get_attr("type"), Some("groupchat"));
    assert_eq!(m.find("body", ns::CLIENT).map(|b| b.text_content()).as_deref(), Some("echo: hello"));

    // An event for the room: said by "ci", which the bot hears like any occupant (and answers).
    let r = reqwest::Client::new()
        .post(format!("http://{}/hooks/{BOTS}/ci?to={ROOM}", s.http.unwrap()))
        .bearer_auth(SECRET)
        .body("deploy done")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ci = format!("{ROOM}/ci");
    alice.recv_where(|e| e.name == "presence" && e.get_attr("from") == Some(ci.as_str())).await;
    let m = alice.recv_where(|e| e.name == "message" && e.get_attr("from") == Some(ci.as_str())).await;
    assert_eq!(m.find("body", ns::CLIENT).map(|b| b.text_content()).as_deref(), Some("deploy done"));
    let m = alice.recv_where(|e| e.name == "message" && e.get_attr("from") == Some(echo.as_str())).await;
    assert_eq!(m.find("body", ns::CLIENT).map(|b| b.text_content()).as_deref(), Some("echo: deploy done"));
    // Never its own words: the two messages it heard, nothing more.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(bot.bodies(), vec!["hello", "deploy done"]);
    s.stop().await;
}

crate::on_both!(a_bot_answers_over_http, a_bot_in_a_room, messages_wait_while_the_bot_is_down, events_pushed_to_hooks, a_bot_in_the_roster);
