//! XMPP over WebSocket (RFC 7395) at `/xmpp-websocket`, black-box, as a browser speaks it: the
//! `xmpp` subprotocol, `<open/>` and `<close/>` framing, one element per message with its
//! namespace declared, SASL and the stream restart, binding, and messages both ways with a
//! client on TCP.

use futures_util::{SinkExt, StreamExt};
use starling::xml::{ns, Element};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{parse, Db, TestServer};

const PW: &str = "secret";
const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn server(db: Db, users: &[&str]) -> TestServer {
    let s = TestServer::start_with(db, |c| c.http.listen = vec!["127.0.0.1:0".parse().unwrap()]).await;
    for u in users {
        s.add_user(u, PW).await;
    }
    s
}

async fn connect(s: &TestServer, protocol: Option<&str>) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://{}/xmpp-websocket", s.http.expect("HTTP listener")).into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut().insert("sec-websocket-protocol", p.parse().unwrap());
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req).await?;
    assert_eq!(resp.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()), Some("xmpp"));
    Ok(ws)
}

/// The next text message, which must be one complete element.
async fn recv(ws: &mut Ws) -> Element {
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next()).await.expect("a message in time");
        match msg.expect("the socket is open").expect("no WebSocket error") {
            Message::Text(t) => return parse(t.as_str()),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

async fn recv_where(ws: &mut Ws, pred: impl Fn(&Element) -> bool) -> Element {
    loop {
        let e = recv(ws).await;
        if pred(&e) {
            return e;
        }
    }
}

async fn send(ws: &mut Ws, xml: &str) {
    ws.send(Message::Text(xml.into())).await.unwrap();
}

/// `<open/>` to `localhost`; the server's `<open/>` and features.
async fn open(ws: &mut Ws) -> Element {
    send(ws, &format!("<open xmlns='{FRAMING}' to='localhost' version='1.0'/>")).await;
    let o = recv(ws).await;
    assert!(o.is("open", FRAMING), "expected <open/>, got {o}");
    assert_eq!((o.get_attr("from"), o.get_attr("version")), (Some("localhost"), Some("1.0")));
    assert!(o.get_attr("id").is_some());
    let f = recv(ws).await;
    assert!(f.is("features", ns::STREAM), "expected stream features, got {f}");
    f
}

async fn login(s: &TestServer, user: &str) -> (Ws, String) {
    let mut ws = connect(s, Some("xmpp")).await.unwrap();
    let f = open(&mut ws).await;
    // Secure already: no STARTTLS inside a WebSocket; SASL straight away.
    assert!(f.find("starttls", ns::TLS).is_none(), "{f}");
    let mechs: Vec<String> = f.find("mechanisms", ns::SASL).expect("mechanisms").elements().map(|m| m.text_content()).collect();
    assert!(mechs.iter().any(|m| m == "PLAIN"), "{mechs:?}");
    assert!(!mechs.iter().any(|m| m.ends_with("-PLUS")), "no channel binding over WebSocket: {mechs:?}");
    let creds = base64_plain(user, PW);
    send(&mut ws, &format!("<auth xmlns='{}' mechanism='PLAIN'>{creds}</auth>", ns::SASL)).await;
    let ok = recv(&mut ws).await;
    assert!(ok.is("success", ns::SASL), "{ok}");
    // The stream restarts with a new <open/>.
    let f = open(&mut ws).await;
    assert!(f.find("bind", ns::BIND).is_some(), "{f}");
    send(&mut ws, &format!("<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='{}'><resource>web</resource></bind></iq>", ns::BIND))
        .await;
    let r = recv(&mut ws).await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    let jid = r.find("bind", ns::BIND).and_then(|b| b.find("jid", ns::BIND)).map(|j| j.text_content()).expect("jid");
    (ws, jid)
}

fn base64_plain(user: &str, pw: &str) -> String {
    starling::sasl::credentials::b64(format!("\0{user}\0{pw}").as_bytes())
}

async fn a_browser_session(db: Db) {
    let s = server(db, &["alice", "bob"]).await;
    let (mut ws, jid) = login(&s, "alice").await;
    assert_eq!(jid, "alice@localhost/web");
    send(&mut ws, "<presence xmlns='jabber:client'/>").await;
    recv_where(&mut ws, |e| e.name == "presence" && e.get_attr("from") == Some("alice@localhost/web")).await;

    // To a client on TCP and back.
    let mut bob = s.online("bob", PW, "desk").await;
    send(&mut ws, "<message xmlns='jabber:client' to='bob@localhost' type='chat' id='m1'><body>from the browser</body></message>").await;
    let m = bob.recv_where(|e| e.name == "message").await;
    assert_eq!(m.get_attr("from"), Some("alice@localhost/web"));
    assert_eq!(m.find("body", ns::CLIENT).map(|b| b.text_content()).as_deref(), Some("from the browser"));
    bob.send("<message to='alice@localhost/web' type='chat' id='m2'><body>to the browser</body></message>").await;
    let m = recv_where(&mut ws, |e| e.name == "message").await;
    assert_eq!(m.ns, ns::CLIENT, "each message declares its namespace");
    assert_eq!(m.get_attr("from"), Some("bob@localhost/desk"));
    assert_eq!(m.find("body", ns::CLIENT).map(|b| b.text_content()).as_deref(), Some("to the browser"));

    // <close/> is answered with <close/>, and the session is gone.
    send(&mut ws, &format!("<close xmlns='{FRAMING}'/>")).await;
    let c = recv_where(&mut ws, |e| e.is("close", FRAMING)).await;
    assert!(c.children.is_empty());
    // Then the WebSocket closes normally (1000).
    match tokio::time::timeout(std::time::Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Close(Some(f))))) => assert_eq!(u16::from(f.code), 1000),
        other => panic!("expected a close frame, got {other:?}"),
    }
    s.wait_session_gone("alice@localhost/web").await;
    s.stop().await;
}

async fn framing_errors(db: Db) {
    let s = server(db, &["alice"]).await;
    // Without the xmpp subprotocol: refused at the upgrade.
    assert!(connect(&s, None).await.is_err());
    // Not XML: a stream error, then <close/>.
    let mut ws = connect(&s, Some("xmpp")).await.unwrap();
    open(&mut ws).await;
    send(&mut ws, "<message xmlns='jabber:client'><unclosed></message>").await;
    let e = recv(&mut ws).await;
    assert!(e.is("error", ns::STREAM), "expected a stream error, got {e}");
    assert!(e.find("not-well-formed", ns::STREAM_ERRORS).is_some(), "{e}");
    let c = recv(&mut ws).await;
    assert!(c.is("close", FRAMING), "{c}");
    // A wrong password: SASL failure, the stream stays.
    let mut ws = connect(&s, Some("xmpp")).await.unwrap();
    open(&mut ws).await;
    send(&mut ws, &format!("<auth xmlns='{}' mechanism='PLAIN'>{}</auth>", ns::SASL, base64_plain("alice", "wrong"))).await;
    let f = recv(&mut ws).await;
    assert!(f.is("failure", ns::SASL) && f.find("not-authorized", ns::SASL).is_some(), "{f}");
    s.stop().await;
}

crate::on_both!(a_browser_session, framing_errors);
