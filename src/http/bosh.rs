//! BOSH (XEP-0124, XEP-0206) at `/http-bind`, for browsers and clients that cannot keep a
//! WebSocket open.
//!
//! As for WebSocket, the client session is the ordinary one (`session::c2s`) over one end of
//! an in-memory pipe. A BOSH session here is that pipe plus what the HTTP requests need:
//!
//! - a request's payloads are written to the pipe, in the client namespace; `xmpp:restart`
//!   writes a new stream header (after SASL success), `type='terminate'` the end of the stream.
//! - what the session writes is read back element by element into a queue (its stream headers
//!   are not forwarded: their id is the session creation response's `authid`); a request
//!   returns what is queued, or waits for something up to `wait` seconds. At most `hold` (1)
//!   request waits: a newer one releases it.
//! - `rid` must grow by one per new request, within the `requests` window; a request that
//!   repeats the last answered `rid` gets the same answer again (a broken connection); others
//!   end the session with `item-not-found`, as does an unknown `sid` (section 17.2).
//! - requests are handled in `rid` order (section 14.2), whatever order their HTTP
//!   connections deliver them in: one that arrives early waits (up to `wait` seconds) until
//!   the payloads of the one before it are written.
//! - a session without a request for `inactivity` seconds (`http.bosh_inactivity_secs`, 60)
//!   is ended, as a dropped TCP connection would be (stream management can resume it).
//! - a request with `pause='N'` (section 12; at most `maxpause`, 120 s) is answered at once,
//!   empty, with the held request: the session then ends only after N seconds without a
//!   request, and the next request brings the usual `inactivity` back. Such a request, like a
//!   `terminate`, may be one more than `requests` allows (section 13). Its payloads, if any,
//!   go into the stream; what the session has to say waits for the next request.
//!
//! The link counts as secure (`secure='true'`
//! is not required of the client): TLS, where there is any, ends before this listener.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, Notify};

use super::websocket::{client_header, frame};
use crate::modules::{Module, Spec};
use crate::server::Server;
use crate::xml::{escape, ns, Element, Limits, XmlEvent, XmlReader};

pub const NS_HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
pub const NS_XBOSH: &str = "urn:xmpp:xbosh";

pub const MODULE: Module = Module {
    name: "bosh",
    specs: &[
        Spec {
            id: "XEP-0124",
            title: "Bidirectional-streams Over Synchronous HTTP (BOSH)",
            note: "`/http-bind`; hold 1, requests 2, maxpause 120",
        },
        Spec { id: "XEP-0206", title: "XMPP Over BOSH", note: "restarts, terminate; the session is the TCP one" },
    ],
    host_features: &[],
    account_features: &[],
    iq: &[],
};

/// Longest wait the server grants (the client asks for its own, up to this).
const MAX_WAIT: u64 = 60;
const HOLD: u64 = 1;
const REQUESTS: u64 = HOLD + 1;
/// Longest pause a client may ask for (section 12), in seconds.
const MAX_PAUSE: u64 = 120;
/// Shortest polling interval, for clients that do not hold requests.
const POLLING: u64 = 2;
/// Bytes in flight on the pipe between this binding and the session.
const PIPE: usize = 64 * 1024;
/// Largest element the server itself writes to a client.
const MAX_SERVER_ELEMENT: usize = 16 * 1024 * 1024;
/// Sessions open at once, all clients together.
const MAX_SESSIONS: usize = 100_000;

/// The open BOSH sessions, by sid.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    pub fn count(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn get(&self, sid: &str) -> Option<Arc<Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).get(sid).cloned()
    }

    fn remove(&self, sid: &str) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(sid);
    }
}

struct Session {
    sid: String,
    wait: u64,
    /// No request for this long ends the session (`http.bosh_inactivity_secs`).
    inactivity: Duration,
    /// The host and language of the session's stream, for its restarts.
    to: String,
    lang: String,
    /// To the pipe's writer task: closing it (dropping every sender) ends the session's stream.
    input: Mutex<Option<mpsc::Sender<String>>>,
    state: Mutex<Link>,
    /// Something was queued, or the stream ended.
    ready: Notify,
    /// A request's payloads were written: the next `rid` may go.
    turn: Notify,
}

#[derive(Default)]
struct Link {
    queue: VecDeque<String>,
    /// The session's stream ended (or it failed): the next answer terminates.
    ended: bool,
    /// The stream id of the session's first header (`authid`).
    stream_id: Option<String>,
    last_rid: u64,
    /// The `rid` whose payloads go into the stream next.
    next_write: u64,
    last_answer: Option<String>,
    /// The request being held, released by a newer one.
    held: Option<oneshot::Sender<()>>,
    last_request: Option<Instant>,
    /// Requests being answered now.
    busy: usize,
    /// A pause the client asked for: the inactivity allowed until its next request.
    pause: Option<Duration>,
}

impl Session {
    fn state(&self) -> std::sync::MutexGuard<'_, Link> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn input(&self) -> Option<mpsc::Sender<String>> {
        self.input.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn close_input(&self) {
        self.input.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    async fn write(&self, s: String) {
        if let Some(tx) = self.input() {
            let _ = tx.send(s).await;
        }
    }
}

fn xml_response(body: String) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml; charset=utf-8"));
    cors(r)
}

fn cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, OPTIONS"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Content-Type"));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    r
}

/// A terminal binding error (section 17.2).
fn terminate(condition: &str) -> Response {
    xml_response(format!("<body xmlns='{NS_HTTPBIND}' type='terminate' condition='{condition}'/>"))
}

/// CORS preflight of browsers on another origin.
pub async fn preflight() -> Response {
    cors(StatusCode::NO_CONTENT.into_response())
}

pub async fn request(
    State((server, sessions)): State<(Arc<Server>, Arc<Sessions>)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    if body.len() > server.config.limits.max_stanza_size + 4096 {
        return terminate("policy-violation");
    }
    let Ok(text) = std::str::from_utf8(&body) else { return terminate("bad-request") };
    let Some(el) = crate::xml::parse_stored(text).await.filter(|e| e.is("body", NS_HTTPBIND)) else {
        return terminate("bad-request");
    };
    let Some(rid) = el.get_attr("rid").and_then(|r| r.parse::<u64>().ok()) else { return terminate("bad-request") };
    match el.get_attr("sid") {
        None => create(server, sessions, peer, &el, rid).await,
        Some(sid) => match sessions.get(sid) {
            Some(s) => payload(&sessions, s, &el, rid).await,
            None => terminate("item-not-found"),
        },
    }
}

/// Section 7: a new session, its stream opened at once; the answer carries the features.
async fn create(server: Arc<Server>, sessions: Arc<Sessions>, peer: SocketAddr, el: &Element, rid: u64) -> Response {
    let Some(to) = el.get_attr("to").filter(|t| server.is_local_domain(t)).map(str::to_string) else {
        return terminate("host-unknown");
    };
    let wait = el.get_attr("wait").and_then(|w| w.parse::<u64>().ok()).unwrap_or(MAX_WAIT).min(MAX_WAIT);
    let hold = el.get_attr("hold").and_then(|h| h.parse::<u64>().ok()).unwrap_or(HOLD).min(HOLD);
    let sid = crate::stanza::new_id();
    let (tx, rx) = mpsc::channel::<String>(64);
    let lang = el.get_attr("xml:lang").unwrap_or("en").to_string();
    let session = Arc::new(Session {
        sid: sid.clone(),
        wait,
        inactivity: Duration::from_secs(server.config.http.bosh_inactivity_secs.max(1)),
        to: to.clone(),
        lang: lang.clone(),
        input: Mutex::new(Some(tx)),
        state: Mutex::new(Link { last_rid: rid, next_write: rid + 1, ..Link::default() }),
        ready: Notify::new(),
        turn: Notify::new(),
    });
    {
        let mut map = sessions.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_SESSIONS {
            return terminate("service-unavailable");
        }
        map.insert(sid.clone(), session.clone());
    }
    let (ours, theirs) = tokio::io::duplex(PIPE);
    tokio::spawn(crate::session::c2s::serve_framed(server, theirs, peer));
    let (rd, wr) = tokio::io::split(ours);
    tokio::spawn(pipe_writer(rx, wr));
    tokio::spawn(pump(session.clone(), rd));
    tokio::spawn(reaper(sessions.clone(), session.clone()));
    session.write(header(&to, &lang)).await;
    // The features follow the session's header at once.
    let items = wait_for_output(&session, Duration::from_secs(wait.max(1))).await;
    let (stream_id, ended) = {
        let mut st = session.state();
        st.last_request = Some(Instant::now());
        (st.stream_id.clone().unwrap_or_default(), st.ended)
    };
    if ended {
        sessions.remove(&sid);
        return terminate("remote-connection-failed");
    }
    // The lower of the client's version and ours (1.11).
    let version = |v: &str| v.split_once('.').and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
    let ver = el.get_attr("ver").filter(|v| version(v).is_some_and(|v| v < (1, 11))).unwrap_or("1.11");
    let inactivity = session.inactivity.as_secs();
    let mut out = format!(
        "<body xmlns='{NS_HTTPBIND}' xmlns:xmpp='{NS_XBOSH}' xmlns:stream='{}' sid='{sid}' wait='{wait}' requests='{REQUESTS}' \
         hold='{hold}' inactivity='{inactivity}' maxpause='{MAX_PAUSE}' polling='{POLLING}' ver='{}' from='{}' authid='{}' \
         secure='true' \
         xmpp:version='1.0' xmpp:restartlogic='true'>",
        ns::STREAM,
        escape(ver),
        escape(&to),
        escape(&stream_id),
    );
    for i in items {
        out.push_str(&i);
    }
    out.push_str("</body>");
    session.state().last_answer = Some(out.clone());
    xml_response(out)
}

fn header(to: &str, lang: &str) -> String {
    client_header([("to", to), ("version", "1.0"), ("xml:lang", lang)])
}

/// A request of an open session: its payloads in, then what the session has to say.
async fn payload(sessions: &Sessions, s: Arc<Session>, el: &Element, rid: u64) -> Response {
    let terminating = el.get_attr("type") == Some("terminate");
    let pause = match el.get_attr("pause").map(str::parse::<u64>) {
        None => None,
        Some(Ok(secs)) => Some(Duration::from_secs(secs)),
        Some(Err(_)) => {
            end(sessions, &s);
            return terminate("bad-request");
        }
    };
    // In rid order: a request that overtook the one before it waits for its turn.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(s.wait.max(1));
    loop {
        let turn = s.turn.notified();
        {
            let st = s.state();
            // Its turn, an old rid or one past the window (both answered below): go on.
            if rid <= st.next_write || rid > st.last_rid + REQUESTS {
                break;
            }
        }
        if tokio::time::timeout_at(deadline, turn).await.is_err() {
            // The request before it never came.
            end(sessions, &s);
            return terminate("item-not-found");
        }
    }
    let release = {
        let mut st = s.state();
        if rid == st.last_rid {
            // A repeat of the last request (its answer was lost on the way).
            return match &st.last_answer {
                Some(a) => xml_response(a.clone()),
                None => {
                    drop(st);
                    end(sessions, &s);
                    terminate("item-not-found")
                }
            };
        }
        if rid < st.last_rid || rid > st.last_rid + REQUESTS {
            drop(st);
            end(sessions, &s);
            return terminate("item-not-found");
        }
        // A pause or a terminate may be one request more than `requests` (section 13).
        let extra = usize::from(pause.is_some() || terminating);
        if st.busy >= REQUESTS as usize + extra || pause.is_some_and(|p| p > Duration::from_secs(MAX_PAUSE)) {
            drop(st);
            end(sessions, &s);
            return terminate("policy-violation");
        }
        st.last_rid = rid;
        st.last_request = Some(Instant::now());
        st.pause = pause;
        st.busy += 1;
        st.held.take()
    };
    // A newer request: the held one answers now (section 11).
    if let Some(r) = release {
        let _ = r.send(());
    }
    // XEP-0206 section 5: xmpp:restart='true' (after SASL success) opens a new stream.
    if el.attrs.iter().any(|(k, v)| k.ends_with(":restart") && v == "true") {
        s.write(header(&s.to, &s.lang)).await;
    }
    for c in el.elements() {
        let mut c = c.clone();
        // Payloads that name no namespace are the client's (XEP-0206 section 3).
        c.move_ns(NS_HTTPBIND, ns::CLIENT);
        s.write(c.to_xml_in(ns::CLIENT)).await;
    }
    s.state().next_write = rid + 1;
    s.turn.notify_waiters();
    if terminating {
        s.write("</stream:stream>".into()).await;
        end(sessions, &s);
        s.state().busy -= 1;
        return xml_response(format!("<body xmlns='{NS_HTTPBIND}' type='terminate'/>"));
    }
    let hold = el.elements().next().is_none() && s.wait > 0;
    let items = if pause.is_some() {
        // Answered at once and without payloads (section 12).
        Vec::new()
    } else if hold {
        let (tx, rx) = oneshot::channel();
        s.state().held = Some(tx);
        tokio::select! {
            items = wait_for_output(&s, Duration::from_secs(s.wait)) => items,
            _ = rx => drain(&s),
        }
    } else {
        // Payloads were sent: their answers may follow at once; a short wait catches them.
        wait_for_output(&s, Duration::from_millis(if s.wait == 0 { 0 } else { 50 })).await
    };
    let ended = {
        let mut st = s.state();
        st.busy -= 1;
        st.last_request = Some(Instant::now());
        st.ended && st.queue.is_empty()
    };
    let mut out = format!("<body xmlns='{NS_HTTPBIND}' xmlns:stream='{}'", ns::STREAM);
    if ended {
        out.push_str(" type='terminate' condition='remote-connection-failed'");
        end(sessions, &s);
    }
    out.push('>');
    for i in items {
        out.push_str(&i);
    }
    out.push_str("</body>");
    s.state().last_answer = Some(out.clone());
    xml_response(out)
}

/// What is queued now, or, if nothing is, what comes within `limit`.
async fn wait_for_output(s: &Session, limit: Duration) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let notified = s.ready.notified();
        {
            let st = s.state();
            if !st.queue.is_empty() || st.ended {
                break;
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            break;
        }
    }
    drain(s)
}

fn drain(s: &Session) -> Vec<String> {
    s.state().queue.drain(..).collect()
}

/// The session is over for the binding: forget it and end its stream.
fn end(sessions: &Sessions, s: &Session) {
    sessions.remove(&s.sid);
    s.close_input();
    s.ready.notify_waiters();
}

async fn pipe_writer(mut rx: mpsc::Receiver<String>, mut wr: tokio::io::WriteHalf<tokio::io::DuplexStream>) {
    while let Some(s) = rx.recv().await {
        if wr.write_all(s.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

/// The session's output, element by element, into the queue.
async fn pump(s: Arc<Session>, rd: tokio::io::ReadHalf<tokio::io::DuplexStream>) {
    let mut reader = XmlReader::new(rd, Limits { max_element_bytes: MAX_SERVER_ELEMENT, max_depth: 256 });
    loop {
        match reader.next().await {
            Ok(XmlEvent::StreamOpen(h)) => {
                let mut st = s.state();
                if st.stream_id.is_none() {
                    st.stream_id = h.attr("id").map(str::to_string);
                }
            }
            Ok(XmlEvent::Element(e)) => {
                let restart = e.is("success", ns::SASL);
                s.state().queue.push_back(frame(&e));
                s.ready.notify_waiters();
                if restart {
                    reader = reader.restart();
                }
            }
            Ok(XmlEvent::StreamClose) | Err(_) => break,
        }
    }
    s.state().ended = true;
    s.ready.notify_waiters();
}

/// Ends a session whose client stopped making requests (section 12).
async fn reaper(sessions: Arc<Sessions>, s: Arc<Session>) {
    let every = (s.inactivity / 4).clamp(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        tokio::time::sleep(every).await;
        let (gone, idle) = {
            let st = s.state();
            let allowed = st.pause.unwrap_or(s.inactivity);
            let idle = st.busy == 0 && st.last_request.is_some_and(|t| t.elapsed() > allowed);
            (sessions.get(&s.sid).is_none(), idle)
        };
        if gone || idle {
            end(&sessions, &s);
            return;
        }
    }
}
