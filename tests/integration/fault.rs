//! Fault test (nothing lost, nothing twice): a sender pushes a burst of messages to a receiver
//! while the real `starling` process is killed with SIGKILL at random moments and restarted, and
//! both clients now and then drop their sockets without closing. The receiver follows the sync
//! recipe of the README (archive after its newest stanza-id, then offline messages, deduplicated
//! by stanza-id). Every message the server acknowledged must be received exactly once.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use starling::sasl::credentials::Hash;
use starling::xml::{ns, Element, XmlEvent};

use crate::common::Client;

const BIN: &str = env!("CARGO_BIN_EXE_starling");
const SM: &str = "urn:xmpp:sm:3";
const MAM: &str = "urn:xmpp:mam:2";
const SID: &str = "urn:xmpp:sid:0";
const BATCH: usize = 50;
const KILLS: usize = 4;

fn total() -> usize {
    std::env::var("STARLING_FAULT_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

struct Proc {
    dir: std::path::PathBuf,
    config: std::path::PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn start(&mut self) {
        let child = Command::new(BIN)
            .args(["serve", "--config", self.config.to_str().unwrap()])
            .current_dir(&self.dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
}

/// A failed assertion must not leave a server running.
impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A data directory and config for the real `starling` binary (direct TLS on a free port, with
/// `extra` config appended), and the accounts alice and bob made with `starling user add`.
fn real_server(name: &str, extra: &str) -> (std::path::PathBuf, std::path::PathBuf, SocketAddr) {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let config = dir.join("fault.toml");
    std::fs::write(
        &config,
        format!("[server]\ndata_dir = \"{}\"\n[listen]\nc2s = []\nc2s_direct_tls = [\"127.0.0.1:{port}\"]\n{extra}", dir.display()),
    )
    .unwrap();
    for u in ["alice", "bob"] {
        let st = Command::new(BIN)
            .args(["user", "add", &format!("{u}@localhost"), "--password", "pw", "--config", config.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success());
    }
    (dir, config, format!("127.0.0.1:{port}").parse().unwrap())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Log in (direct TLS, SCRAM-SHA-256), bind, enable stream management. `None` while the
/// server is down or the connection breaks during login.
async fn connect(addr: SocketAddr, user: &str) -> Option<Client> {
    let user = user.to_string();
    let attempt = tokio::spawn(async move {
        let tcp_ok = tokio::net::TcpStream::connect(addr).await.is_ok();
        if !tcp_ok {
            return None;
        }
        let mut c = Client::connect_tls(addr).await;
        c.open("localhost").await;
        c.auth_scram(&user, "pw", Hash::Sha256, None).await.ok()?;
        c.open("localhost").await;
        c.bind("fault").await;
        c.send(&format!("<enable xmlns='{SM}'/>")).await;
        c.recv_where(|e| e.is("enabled", SM)).await;
        Some(c)
    });
    match tokio::time::timeout(Duration::from_secs(15), attempt).await {
        Ok(Ok(c)) => c,
        _ => None,
    }
}

#[derive(Default)]
struct Received {
    /// stanza-id -> body
    by_id: HashMap<String, String>,
    /// The newest stanza-id, in archive order.
    newest: Option<String>,
}

impl Received {
    fn record(&mut self, m: &Element, advance: bool) {
        let Some(body) = m.find("body", ns::CLIENT).map(|b| b.text_content()) else { return };
        let Some(id) =
            m.elements().find(|e| e.is("stanza-id", SID) && e.get_attr("by") == Some("bob@localhost")).and_then(|e| e.get_attr("id"))
        else {
            return;
        };
        if advance {
            self.newest = Some(id.to_string());
        }
        self.by_id.insert(id.to_string(), body);
    }
}

/// The receiver's sync: archive pages after the newest local id until complete. `false` if the
/// connection broke.
async fn mam_sync(c: &mut Client, rec: &Mutex<Received>, handled: &mut u32) -> bool {
    loop {
        let after = rec.lock().unwrap().newest.clone();
        let rsm = match &after {
            Some(a) => format!("<set xmlns='http://jabber.org/protocol/rsm'><max>250</max><after>{a}</after></set>"),
            None => "<set xmlns='http://jabber.org/protocol/rsm'><max>250</max></set>".to_string(),
        };
        if c.try_send(format!("<iq type='set' id='sync'><query xmlns='{MAM}' queryid='s'>{rsm}</query></iq>").as_bytes()).await.is_err() {
            return false;
        }
        loop {
            match c.try_event(5000).await {
                Some(Ok(XmlEvent::Element(e))) if e.name == "message" => {
                    *handled = handled.wrapping_add(1);
                    if let Some(m) = e
                        .find("result", MAM)
                        .and_then(|r| r.find("forwarded", "urn:xmpp:forward:0"))
                        .and_then(|f| f.find("message", ns::CLIENT))
                    {
                        let mut m = m.clone();
                        if m.elements().all(|x| !x.is("stanza-id", SID)) {
                            // The archive's id is on <result/>.
                            let id = e.find("result", MAM).and_then(|r| r.get_attr("id")).unwrap_or_default().to_string();
                            m = m.child(Element::new("stanza-id", SID).attr("by", "bob@localhost").attr("id", id));
                        }
                        rec.lock().unwrap().record(&m, true);
                    } else {
                        rec.lock().unwrap().record(&e, false);
                    }
                }
                Some(Ok(XmlEvent::Element(e))) if e.name == "iq" && e.get_attr("id") == Some("sync") => {
                    *handled = handled.wrapping_add(1);
                    let Some(fin) = e.find("fin", MAM) else { return false };
                    if fin.get_attr("complete") == Some("true") {
                        return true;
                    }
                    break;
                }
                Some(Ok(XmlEvent::Element(e))) if e.is("r", SM) => {
                    if c.try_send(format!("<a xmlns='{SM}' h='{handled}'/>").as_bytes()).await.is_err() {
                        return false;
                    }
                }
                Some(Ok(XmlEvent::Element(e))) if e.ns == ns::CLIENT => *handled = handled.wrapping_add(1),
                Some(Ok(_)) => {}
                _ => return false,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_with_sigkills_loses_nothing_and_duplicates_nothing() {
    let (dir, config, addr) =
        real_server("starling-fault", "[offline]\nmax_per_account = 100000\n[stream_management]\nmax_unacked = 100000\n");
    let proc = Arc::new(Mutex::new(Proc { dir: dir.clone(), config: config.clone(), child: None }));
    proc.lock().unwrap().start();

    let sender_done = Arc::new(AtomicBool::new(false));
    let kills_done = Arc::new(AtomicUsize::new(0));
    let total_n = total();
    let acked = Arc::new(Mutex::new(vec![false; total_n]));
    let sent = Arc::new(AtomicUsize::new(0));
    let rec = Arc::new(Mutex::new(Received::default()));
    let started = Instant::now();

    // The killer: SIGKILL at random moments while the burst runs, then restart. Kill k comes
    // at a random point of the k-th of KILLS equal stretches of the burst (by messages sent), so
    // every kill lands inside the burst however fast the server gets.
    let killer = {
        let proc = proc.clone();
        let kills_done = kills_done.clone();
        let sender_done = sender_done.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            let stretch = total_n / (KILLS + 1);
            for k in 0..KILLS {
                let at = stretch * (k + 1) + rand::thread_rng().gen_range(0..stretch.max(2) / 2);
                while sent.load(Ordering::SeqCst) < at && !sender_done.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if sender_done.load(Ordering::SeqCst) {
                    break;
                }
                proc.lock().unwrap().kill();
                let down = rand::thread_rng().gen_range(100..600);
                tokio::time::sleep(Duration::from_millis(down)).await;
                proc.lock().unwrap().start();
                kills_done.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    // The receiver: connect, sync (archive then presence for offline), read live, ack, drop now
    // and then.
    let receiver = {
        let rec = rec.clone();
        let sender_done = sender_done.clone();
        tokio::spawn(async move {
            let mut handled: u32;
            loop {
                let Some(mut c) = connect(addr, "bob").await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                handled = 0;
                if !mam_sync(&mut c, &rec, &mut handled).await {
                    continue;
                }
                if c.try_send(b"<presence/>").await.is_err() {
                    continue;
                }
                let mut quiet = 0;
                loop {
                    if rand::thread_rng().gen_ratio(1, 4000) {
                        break; // drop the socket without closing
                    }
                    match c.try_event(300).await {
                        Some(Ok(XmlEvent::Element(e))) if e.is("r", SM) => {
                            if c.try_send(format!("<a xmlns='{SM}' h='{handled}'/>").as_bytes()).await.is_err() {
                                break;
                            }
                        }
                        Some(Ok(XmlEvent::Element(e))) if e.ns == ns::CLIENT => {
                            handled = handled.wrapping_add(1);
                            if e.name == "message" {
                                rec.lock().unwrap().record(&e, true);
                            }
                            quiet = 0;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) => break,
                        None => {
                            quiet += 1;
                            if sender_done.load(Ordering::SeqCst) && quiet > 10 {
                                // Final sync on a fresh connection: archive after the newest id.
                                drop(c);
                                loop {
                                    if let Some(mut f) = connect(addr, "bob").await {
                                        // The recipe: archive after the newest id, then presence
                                        // for the offline messages (deduplicated by stanza-id).
                                        if mam_sync(&mut f, &rec, &mut 0).await && f.try_send(b"<presence/>").await.is_ok() {
                                            while let Some(Ok(ev)) = f.try_event(2000).await {
                                                if let XmlEvent::Element(e) = ev {
                                                    if e.name == "message" {
                                                        rec.lock().unwrap().record(&e, false);
                                                    }
                                                }
                                            }
                                            return;
                                        }
                                    }
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                            }
                        }
                    }
                }
            }
        })
    };

    // The sender: batches of messages, an <r/> after each, acks recorded; unacknowledged
    // messages are not sent again (they may or may not have arrived).
    let sender = {
        let acked = acked.clone();
        let sent = sent.clone();
        let sender_done = sender_done.clone();
        tokio::spawn(async move {
            let mut next = 0usize;
            while next < total() {
                let Some(mut c) = connect(addr, "alice").await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let mut on_stream: Vec<usize> = Vec::new();
                'stream: while next < total() {
                    let end = (next + BATCH).min(total());
                    let mut buf = String::new();
                    for i in next..end {
                        buf.push_str(&format!("<message to='bob@localhost' type='chat' id='m{i}'><body>msg-{i}</body><origin-id xmlns='{SID}' id='o{i}'/></message>"));
                        on_stream.push(i);
                    }
                    buf.push_str(&format!("<r xmlns='{SM}'/>"));
                    sent.fetch_add(end - next, Ordering::SeqCst);
                    next = end;
                    if c.try_send(buf.as_bytes()).await.is_err() {
                        break;
                    }
                    loop {
                        match c.try_event(5000).await {
                            Some(Ok(XmlEvent::Element(e))) if e.is("a", SM) => {
                                let h = e.get_attr("h").and_then(|h| h.parse::<usize>().ok()).unwrap_or(0);
                                let mut a = acked.lock().unwrap();
                                for &i in on_stream.iter().take(h) {
                                    a[i] = true;
                                }
                                if h >= on_stream.len() {
                                    break;
                                }
                            }
                            Some(Ok(XmlEvent::Element(e))) if e.is("r", SM) => {
                                let _ = c.try_send(format!("<a xmlns='{SM}' h='0'/>").as_bytes()).await;
                            }
                            Some(Ok(XmlEvent::Element(_))) => {}
                            _ => break 'stream,
                        }
                    }
                    if rand::thread_rng().gen_ratio(1, 60) {
                        break; // drop the socket without closing
                    }
                }
            }
            sender_done.store(true, Ordering::SeqCst);
        })
    };

    tokio::time::timeout(Duration::from_secs(600), sender).await.expect("sender finished").unwrap();
    killer.await.unwrap();
    tokio::time::timeout(Duration::from_secs(300), receiver).await.expect("receiver synced").unwrap();
    proc.lock().unwrap().kill();

    let rec = rec.lock().unwrap();
    let acked = acked.lock().unwrap();
    let mut ids_per_body: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (id, body) in &rec.by_id {
        ids_per_body.entry(body.as_str()).or_default().insert(id.as_str());
    }
    let received: HashSet<usize> = ids_per_body.keys().filter_map(|b| b.strip_prefix("msg-")).filter_map(|n| n.parse().ok()).collect();
    let acked_n = acked.iter().filter(|a| **a).count();
    let lost: Vec<usize> = (0..total()).filter(|i| acked[*i] && !received.contains(i)).collect();
    let duplicated = ids_per_body.values().filter(|ids| ids.len() > 1).count();
    let figures = format!(
        "fault: sent={} acked={} received={} lost={} duplicated={} received_without_ack={} sigkills={} seconds={:.1}",
        sent.load(Ordering::SeqCst),
        acked_n,
        received.len(),
        lost.len(),
        duplicated,
        received.iter().filter(|i| !acked[**i]).count(),
        kills_done.load(Ordering::SeqCst),
        started.elapsed().as_secs_f64()
    );
    println!("{figures}");
    let _ = std::fs::write(std::env::temp_dir().join("starling-fault-figures.txt"), &figures);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(kills_done.load(Ordering::SeqCst) >= 2, "the server was killed during the burst: {figures}");
    assert!(acked_n > total() / 2, "most messages were acknowledged: {figures}");
    assert!(lost.is_empty(), "acknowledged but never received: {:?} ({figures})", &lost[..lost.len().min(20)]);
    assert_eq!(duplicated, 0, "{figures}");
}

/// Stored messages handed to a session whose client never acknowledged them survive a SIGKILL
/// of the server: they leave the offline store only when acknowledged (XEP-0198).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_offline_messages_survive_a_sigkill() {
    let (dir, config, addr) = real_server("starling-fault-offline", "");
    let mut proc = Proc { dir: dir.clone(), config, child: None };
    proc.start();
    let up = async {
        loop {
            if let Some(c) = connect(addr, "alice").await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let mut a = tokio::time::timeout(Duration::from_secs(30), up).await.expect("server up");
    let mut batch = String::new();
    for i in 0..3 {
        batch.push_str(&format!("<message to='bob@localhost' type='chat' id='m{i}'><body>stored-{i}</body></message>"));
    }
    batch.push_str(&format!("<r xmlns='{SM}'/>"));
    a.send(&batch).await;
    let ack = a.recv_where(|e| e.is("a", SM)).await;
    assert_eq!(ack.get_attr("h"), Some("3"), "all three stored");

    let read_stored = async |bodies: &mut Vec<String>| {
        let mut b = connect(addr, "bob").await.expect("bob logs in");
        b.send("<presence/>").await;
        while let Some(Ok(ev)) = b.try_event(1500).await {
            if let XmlEvent::Element(e) = ev {
                if e.name == "message" {
                    bodies.push(e.find("body", ns::CLIENT).map(|b| b.text_content()).unwrap_or_default());
                }
            }
        }
        b
    };
    let mut first = Vec::new();
    let _b = read_stored(&mut first).await; // read, never acknowledged
    assert_eq!(first, ["stored-0", "stored-1", "stored-2"]);
    proc.kill();
    proc.start();
    let mut second = Vec::new();
    let up = async {
        loop {
            if let Some(c) = connect(addr, "alice").await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _a = tokio::time::timeout(Duration::from_secs(30), up).await.expect("server up again");
    let mut b = read_stored(&mut second).await;
    assert_eq!(second, ["stored-0", "stored-1", "stored-2"], "still stored: never acknowledged");
    // This time they are acknowledged (the presence echo and three messages): gone for good.
    b.send(&format!("<a xmlns='{SM}' h='4'/>")).await;
    b.iq("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    drop(b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = Vec::new();
    let _b = read_stored(&mut third).await;
    assert!(third.is_empty(), "acknowledged messages are not delivered again: {third:?}");
    proc.kill();
    let _ = std::fs::remove_dir_all(&dir);
}
