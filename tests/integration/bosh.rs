//! BOSH (XEP-0124, XEP-0206) at `/http-bind`, black-box over HTTP: session creation with the
//! stream features, SASL and the restart, binding, a held request answered by a message from a
//! TCP client, payloads sent, a repeated request, termination, and the terminal binding errors.

use std::time::{Duration, Instant};

use starling::xml::{ns, Element};

use crate::common::{parse, Db, TestServer};

const PW: &str = "secret";
const BIND: &str = "http://jabber.org/protocol/httpbind";
const XBOSH: &str = "urn:xmpp:xbosh";

struct Bosh {
    http: reqwest::Client,
    url: String,
    sid: String,
    rid: u64,
}

async fn post(http: &reqwest::Client, url: &str, body: String) -> Element {
    let r = http.post(url).header("content-type", "text/xml; charset=utf-8").body(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()), Some("*"));
    let e = parse(&r.text().await.unwrap());
    assert!(e.is("body", BIND), "{e}");
    e
}

impl Bosh {
    /// Session creation (section 7.1): the answer's attributes and the stream features.
    async fn create(s: &TestServer) -> (Bosh, Element) {
        let http = reqwest::Client::new();
        let url = format!("http://{}/http-bind", s.http.expect("HTTP listener"));
        let b = post(
            &http,
            &url,
            format!(
                "<body rid='1000' to='localhost' wait='5' hold='1' ver='1.6' xml:lang='en' xmpp:version='1.0' \
                 xmlns='{BIND}' xmlns:xmpp='{XBOSH}'/>"
            ),
        )
        .await;
        assert_eq!(b.get_attr("type"), None, "{b}");
        let sid = b.get_attr("sid").expect("sid").to_string();
        assert_eq!((b.get_attr("requests"), b.get_attr("hold"), b.get_attr("wait")), (Some("2"), Some("1"), Some("5")));
        assert_eq!(b.get_attr("ver"), Some("1.6"), "the lower version");
        assert!(b.get_attr("authid").is_some_and(|a| !a.is_empty()));
        (Bosh { http, url, sid, rid: 1000 }, b)
    }

    async fn send_with(&mut self, attrs: &str, payload: &str) -> Element {
        self.rid += 1;
        post(&self.http, &self.url, format!("<body rid='{}' sid='{}' xmlns='{BIND}' {attrs}>{payload}</body>", self.rid, self.sid)).await
    }

    async fn send(&mut self, payload: &str) -> Element {
        self.send_with("", payload).await
    }

    /// A session created, authenticated (SASL PLAIN), restarted and bound to `resource`; with
    /// the session creation response.
    async fn bound(s: &TestServer, user: &str, resource: &str) -> (Bosh, Element) {
        let (mut b, created) = Bosh::create(s).await;
        b.until(&format!("<auth xmlns='{}' mechanism='PLAIN'>{}</auth>", ns::SASL, plain(user)), |e| e.ns == ns::SASL).await;
        b.send_with(&format!("xmpp:restart='true' xmlns:xmpp='{XBOSH}'"), "").await;
        let bind =
            format!("<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='{}'><resource>{resource}</resource></bind></iq>", ns::BIND);
        b.until(&bind, |e| e.name == "iq").await;
        (b, created)
    }

    /// Requests (empty after the first) until an answer holds an element `pred` accepts.
    async fn until(&mut self, payload: &str, pred: impl Fn(&Element) -> bool) -> Element {
        let mut b = self.send(payload).await;
        for _ in 0..20 {
            if let Some(e) = b.elements().find(|e| pred(e)) {
                return e.clone();
            }
            assert_ne!(b.get_attr("type"), Some("terminate"), "{b}");
            b = self.send("").await;
        }
        panic!("nothing matched; last answer {b}");
    }
}

async fn server(db: Db, users: &[&str]) -> TestServer {
    let s = TestServer::start_with(db, |c| c.http.listen = vec!["127.0.0.1:0".parse().unwrap()]).await;
    for u in users {
        s.add_user(u, PW).await;
    }
    s
}

fn plain(user: &str) -> String {
    starling::sasl::credentials::b64(format!("\0{user}\0{PW}").as_bytes())
}

async fn a_bosh_session(db: Db) {
    let s = server(db, &["alice", "bob"]).await;
    let (mut b, created) = Bosh::create(&s).await;
    let f = created.find("features", ns::STREAM).expect("features in the creation answer").clone();
    assert!(f.find("starttls", ns::TLS).is_none(), "{f}");
    let ok = b.until(&format!("<auth xmlns='{}' mechanism='PLAIN'>{}</auth>", ns::SASL, plain("alice")), |e| e.ns == ns::SASL).await;
    assert!(ok.is("success", ns::SASL), "{ok}");
    // XEP-0206 section 5: the restart.
    let r = b.send_with(&format!("xmpp:restart='true' xmlns:xmpp='{XBOSH}' to='localhost' xml:lang='en'"), "").await;
    let f = match r.find("features", ns::STREAM) {
        Some(f) => f.clone(),
        None => b.until("", |e| e.is("features", ns::STREAM)).await,
    };
    assert!(f.find("bind", ns::BIND).is_some(), "{f}");
    let bound = b
        .until(
            &format!("<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='{}'><resource>bosh</resource></bind></iq>", ns::BIND),
            |e| e.name == "iq",
        )
        .await;
    assert_eq!(bound.get_attr("type"), Some("result"), "{bound}");
    b.until("<presence xmlns='jabber:client'/>", |e| e.name == "presence").await;

    // A held request answers as soon as a message arrives.
    let mut bob = s.online("bob", PW, "desk").await;
    let (http, url, sid, rid) = (b.http.clone(), b.url.clone(), b.sid.clone(), b.rid + 1);
    b.rid += 1;
    let held = tokio::spawn(async move {
        let t = Instant::now();
        let e = post(&http, &url, format!("<body rid='{rid}' sid='{sid}' xmlns='{BIND}'/>")).await;
        (e, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.send("<message to='alice@localhost/bosh' type='chat' id='m1'><body>over HTTP</body></message>").await;
    let (answer, took) = held.await.unwrap();
    let m = answer.elements().find(|e| e.name == "message").unwrap_or_else(|| panic!("no message in {answer}"));
    assert_eq!(m.ns, ns::CLIENT);
    assert_eq!(m.find("body", ns::CLIENT).map(|b| b.text_content()).as_deref(), Some("over HTTP"));
    assert!(took < Duration::from_secs(4), "held until the wait ran out ({took:?}) instead of answering with the message");

    // Payloads out (without a namespace of their own: the client's).
    b.send("<message to='bob@localhost' type='chat'><body>from BOSH</body></message>").await;
    let m = bob.recv_where(|e| e.name == "message").await;
    assert_eq!(m.get_attr("from"), Some("alice@localhost/bosh"));
    assert_eq!(m.find("body", ns::CLIENT).map(|b| b.text_content()).as_deref(), Some("from BOSH"));

    // Requests overtaken on the way are handled in rid order (section 14.2): the second
    // arrives first and waits; bob gets the messages in rid order, and the session lives on.
    let (http, url, sid) = (b.http.clone(), b.url.clone(), b.sid.clone());
    let (r1, r2) = (b.rid + 1, b.rid + 2);
    b.rid += 2;
    let msg = |rid: u64, text: &str| {
        format!("<body rid='{rid}' sid='{sid}' xmlns='{BIND}'><message to='bob@localhost' type='chat'><body>{text}</body></message></body>")
    };
    let later = tokio::spawn({
        let (http, url, body) = (http.clone(), url.clone(), msg(r2, "second"));
        async move { post(&http, &url, body).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first = post(&http, &url, msg(r1, "first")).await;
    assert_eq!(first.get_attr("type"), None, "{first}");
    let second = later.await.unwrap();
    assert_eq!(second.get_attr("type"), None, "{second}");
    for want in ["first", "second"] {
        let m = bob.recv_where(|e| e.name == "message").await;
        assert_eq!(m.find("body", ns::CLIENT).map(|b| b.text_content()).as_deref(), Some(want));
    }

    // A repeated request (its answer lost on the way) gets the same answer.
    let last = post(&b.http, &b.url, format!("<body rid='{}' sid='{}' xmlns='{BIND}'/>", b.rid, b.sid)).await;
    assert_eq!(last.get_attr("type"), None, "{last}");

    // Terminate, with a last payload; then the sid is unknown.
    let t = b.send_with("type='terminate'", "<presence xmlns='jabber:client' type='unavailable'/>").await;
    assert_eq!(t.get_attr("type"), Some("terminate"));
    let gone = b.send("").await;
    assert_eq!((gone.get_attr("type"), gone.get_attr("condition")), (Some("terminate"), Some("item-not-found")));
    s.wait_session_gone("alice@localhost/bosh").await;
    s.stop().await;
}

async fn binding_errors(db: Db) {
    let s = server(db, &["alice"]).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/http-bind", s.http.unwrap());
    let cond = |b: &Element| (b.get_attr("type").map(str::to_string), b.get_attr("condition").map(str::to_string));
    let terminal = |c: &str| (Some("terminate".to_string()), Some(c.to_string()));
    let b = post(&http, &url, format!("<body rid='1' sid='no-such-sid' xmlns='{BIND}'/>")).await;
    assert_eq!(cond(&b), terminal("item-not-found"));
    let b = post(&http, &url, format!("<body rid='1' to='elsewhere.example' wait='5' hold='1' xmlns='{BIND}'/>")).await;
    assert_eq!(cond(&b), terminal("host-unknown"));
    let b = post(&http, &url, "<body xmlns='x'/>".into()).await;
    assert_eq!(cond(&b), terminal("bad-request"));
    let b = post(&http, &url, format!("<body to='localhost' xmlns='{BIND}'/>")).await;
    assert_eq!(cond(&b), terminal("bad-request"), "no rid");
    // A rid out of the window ends the session (section 14.2).
    let (mut bosh, _) = Bosh::create(&s).await;
    bosh.rid += 5;
    let b = bosh.send("").await;
    assert_eq!(cond(&b), terminal("item-not-found"));
    let b = bosh.send("").await;
    assert_eq!(cond(&b), terminal("item-not-found"), "the session is gone");
    // CORS preflight.
    let r = http.request(reqwest::Method::OPTIONS, &url).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()), Some("*"));
    s.stop().await;
}

/// Section 12: a session whose client stops making requests ends after `inactivity` seconds,
/// like a dropped connection: the resource goes, and the sid is unknown.
async fn an_idle_session_ends(db: Db) {
    let s = TestServer::start_with(db, |c| {
        c.http.listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.http.bosh_inactivity_secs = 1;
    })
    .await;
    s.add_user("alice", PW).await;
    let (mut b, created) = Bosh::bound(&s, "alice", "idle").await;
    assert_eq!(created.get_attr("inactivity"), Some("1"));
    assert!(s.running.as_ref().unwrap().server.sessions.get(&"alice@localhost/idle".parse().unwrap()).is_some());
    // No more requests.
    s.wait_session_gone("alice@localhost/idle").await;
    let gone = b.send("").await;
    assert_eq!((gone.get_attr("type"), gone.get_attr("condition")), (Some("terminate"), Some("item-not-found")));
    s.stop().await;
}

/// Section 12: a pause (at most `maxpause`) answers the held request and itself at once,
/// without payloads, and lets the session outlive `inactivity` until the next request, which
/// brings the usual period back. A longer pause is refused.
async fn a_paused_session_outlives_inactivity(db: Db) {
    let s = TestServer::start_with(db, |c| {
        c.http.listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.http.bosh_inactivity_secs = 1;
    })
    .await;
    s.add_user("alice", PW).await;
    s.add_user("bob", PW).await;
    let (mut b, created) = Bosh::bound(&s, "alice", "paused").await;
    assert_eq!(created.get_attr("maxpause"), Some("120"));
    // An empty request is held (wait='5')...
    b.rid += 1;
    let (http, url, body) = (b.http.clone(), b.url.clone(), format!("<body rid='{}' sid='{}' xmlns='{BIND}'/>", b.rid, b.sid));
    let held = tokio::spawn(async move { post(&http, &url, body).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!held.is_finished(), "an empty request is held");
    // ... and the pause answers it and itself at once.
    let asked = Instant::now();
    let paused = b.send_with("pause='4'", "").await;
    assert_eq!(paused.get_attr("type"), None, "{paused}");
    assert_eq!(paused.elements().count(), 0, "no payloads in the answer to a pause: {paused}");
    let held = tokio::time::timeout(Duration::from_secs(2), held).await.expect("the held request is answered").unwrap();
    assert_eq!(held.get_attr("type"), None, "{held}");
    assert!(asked.elapsed() < Duration::from_secs(2), "answered at once");
    // What arrives during the pause waits for the next request.
    let mut bob = s.online("bob", PW, "tcp").await;
    bob.send("<message to='alice@localhost/paused' type='chat' id='p1'><body>while paused</body></message>").await;
    // Twice the inactivity period without a request: the session is still there.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let paused_jid = "alice@localhost/paused".parse().unwrap();
    assert!(s.running.as_ref().unwrap().server.sessions.get(&paused_jid).is_some(), "the pause keeps the session");
    let m = b.until("", |e| e.name == "message").await;
    assert_eq!(m.find("body", ns::CLIENT).map(|e| e.text_content()), Some("while paused".to_string()));
    // The next request brought the usual period back: without requests the session ends.
    let gone_after = Instant::now();
    s.wait_session_gone("alice@localhost/paused").await;
    assert!(gone_after.elapsed() < Duration::from_secs(4), "ended after the usual inactivity, not the pause");
    // A pause longer than maxpause ends the session.
    let (mut c, _) = Bosh::create(&s).await;
    let refused = c.send_with("pause='121'", "").await;
    assert_eq!((refused.get_attr("type"), refused.get_attr("condition")), (Some("terminate"), Some("policy-violation")));
    s.stop().await;
}

crate::on_both!(a_bosh_session, binding_errors, an_idle_session_ends, a_paused_session_outlives_inactivity);
