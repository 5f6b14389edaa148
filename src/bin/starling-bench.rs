//! `starling-bench`: the XMPP load generator of the side-by-side benchmark (bench/compare).
//!
//! It speaks real XMPP over TCP to any server listening on a loopback address (127.0.0.0/8):
//! STARTTLS or direct TLS (XEP-0368), SCRAM-SHA-1 or SCRAM-SHA-256 (the best the server offers,
//! or `--mech`), resource binding, roster get and initial presence, exactly as a client would.
//! Every scenario is bounded in count and time (`--max-seconds`), stops by itself and prints one
//! JSON line on stdout; `report` turns collected lines into Markdown tables.
//!
//! Server figures come from /proc of `--server-pid`: CPU is utime + stime of the whole process
//! (all its threads, /proc/PID/stat), memory is VmRSS (/proc/PID/status) and Pss
//! (/proc/PID/smaps_rollup). The generator shares the machine with the server, so per-unit
//! server CPU is the headline figure, not wall-clock throughput.
//!
//! Accounts are `PREFIX1` .. `PREFIXn` (`--user-prefix`, `--accounts`), all with `--password`;
//! the archive scenario also uses an owner account (`--owner`). Connections come from several
//! source addresses 127.0.0.1 .. 127.0.0.N (`--source-addrs`) so that many sessions get past
//! the ephemeral port range, and RLIMIT_NOFILE is raised at start.
//!
//! Group chat (`room`) speaks plain XEP-0045 to any MUC service (`--service`, default
//! conference.DOMAIN). Each room's first occupant creates it and accepts the default
//! configuration (an instant room) if the service says it is new (status 201); then the others
//! join, `--concurrency` at a time, each waiting for its own presence (status 110), all asking
//! for no history. The join presences (N² per room) are drained before measuring: the owner sends
//! one message, which the room relays after every presence it sent before, and each occupant
//! waits for it; then the server is given time to go idle. During the measurement every occupant
//! counts the senders' messages it receives, the senders' own echoes included, and their latency
//! (the send time is in the body). Afterwards each owner destroys its room, which costs one
//! presence per occupant where leaving one by one would cost N² again.
//!
//! Seeding the archive: by default the peers send the messages over XMPP to the online owner
//! (every server archives them its own way). `--seed-db URL` (`sqlite:PATH` or
//! `postgres://...`; `--seed-sqlite PATH` is `--seed-db sqlite:PATH`) instead inserts the rows
//! straight into the server's archive table, laid out as `--seed-schema` says: Starling's
//! (schema/sqlite/0002_archive.sql, schema/postgres/0002_archive.sql) or ejabberd's (mod_mam_sql,
//! single-host schema). For message n, one incoming row for the owner and one outgoing row for
//! the peer, each stored as that server stores a routed message (Starling: the stanza with the
//! recipient copy's `<stanza-id/>`, a stanza-id per row; ejabberd: the stanza without it, the
//! timestamp in microseconds as the archive id), timestamps one millisecond apart, the newest
//! now. Then ANALYZE (PostgreSQL: VACUUM ANALYZE), as a running server's maintenance would have
//! done after such a load (`--no-analyze` skips it), and the owner's rows are counted by SQL.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::{Args, Parser, Subcommand};
use rand::distributions::Alphanumeric;
use rand::Rng;
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use starling::sasl::credentials::Hash;
use starling::storage::archive::stanza_id_for;
use starling::xml::{ns, Element, Limits, XmlEvent, XmlReader};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

const NS_MAM: &str = "urn:xmpp:mam:2";
const NS_MAM_EXT: &str = "urn:xmpp:mam:2#extended";
const NS_RSM: &str = "http://jabber.org/protocol/rsm";
const NS_MUC: &str = "http://jabber.org/protocol/muc";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";

/// Upper bounds on every count, so no run can be unbounded by mistake.
const MAX_SESSIONS: usize = 250_000;
const MAX_COUNT: usize = 10_000_000;
const MAX_SECONDS: u64 = 3600;

#[derive(Parser)]
#[command(
    name = "starling-bench",
    version,
    about = "XMPP load generator: idle, login, chat, room and archive scenarios (loopback servers only)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// N authenticated, available TLS sessions held open; server memory per session.
    Idle {
        #[command(flatten)]
        t: Target,
        /// Sessions to hold open; several sizes (comma-separated) are reached in turn on the
        /// same server, one result line each.
        #[arg(long, value_delimiter = ',', required = true)]
        sessions: Vec<usize>,
        /// Resources per account (sessions i*R .. i*R+R-1 share account i+1).
        #[arg(long, default_value_t = 4)]
        resources: usize,
        /// Logins in flight while setting up.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Seconds to wait once every session is up, before measuring.
        #[arg(long, default_value_t = 5)]
        settle: u64,
        /// Logins (opened and closed) before the "before" measurement, to load what the server
        /// loads lazily.
        #[arg(long, default_value_t = 20)]
        warmup: usize,
    },
    /// Full logins (TCP, TLS, SASL, bind, roster, presence, then close); logins per second and
    /// server CPU per login.
    Login {
        #[command(flatten)]
        t: Target,
        /// Logins to perform.
        #[arg(long)]
        count: usize,
        /// Logins in flight.
        #[arg(long, default_value_t = 20)]
        concurrency: usize,
    },
    /// P online pairs exchanging 1:1 chat messages at a fixed total rate (or at saturation).
    Chat {
        #[command(flatten)]
        t: Target,
        #[command(flatten)]
        a: ChatArgs,
    },
    /// R group chats (XEP-0045) of N occupants each: senders post groupchat messages at a fixed
    /// total rate (or at saturation) and every occupant counts and times what the room delivers.
    Room {
        #[command(flatten)]
        t: Target,
        /// Rooms, each created by its first occupant (an instant room).
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        /// Occupants per room: room k (from 0) holds accounts k*N+1 .. k*N+N; with fewer
        /// accounts, they are used again under other resources.
        #[arg(long)]
        occupants: usize,
        /// Total offered groupchat messages per second, all rooms together (each is delivered
        /// to every occupant); 0 = saturation (see --window).
        #[arg(long)]
        rate: f64,
        /// Seconds of sending.
        #[arg(long)]
        seconds: u64,
        /// Occupants per room that send, spread evenly over the room (the rate is shared by
        /// all senders of all rooms, each in turn).
        #[arg(long, default_value_t = 10)]
        senders: usize,
        /// Messages in flight per sender at saturation (--rate 0); a message leaves the window
        /// once the room's occupants have received one message's worth of deliveries.
        #[arg(long, default_value_t = 4)]
        window: usize,
        /// Body size in bytes.
        #[arg(long, default_value_t = 100)]
        body: usize,
        /// MUC service (default: conference.DOMAIN).
        #[arg(long)]
        service: Option<String>,
        /// Room names are PREFIX + a random tag + "-k" (a-z, 0-9, '-' and '_' only).
        #[arg(long, default_value = "bench")]
        room_prefix: String,
        /// Logins and joins in flight while setting up.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Seconds to wait for deliveries still in flight after sending stops.
        #[arg(long, default_value_t = 10)]
        drain: u64,
        /// At most this many seconds to wait for the server to go idle after the joins (before
        /// measuring) and after the rooms are destroyed (before the next run).
        #[arg(long, default_value_t = 60)]
        settle: u64,
    },
    /// Seed an account's archive, then time MAM queries (urn:xmpp:mam:2): a 50-message page,
    /// a `with` query and an `after-id` sync query.
    Archive {
        #[command(flatten)]
        t: Target,
        /// Messages to seed into the owner's archive.
        #[arg(long)]
        messages: usize,
        /// Account whose archive is seeded and queried (localpart).
        #[arg(long, default_value = "archive")]
        owner: String,
        /// Peers (accounts 1..K) the messages come from.
        #[arg(long, default_value_t = 10)]
        peers: usize,
        /// Repetitions of each query type.
        #[arg(long, default_value_t = 100)]
        queries: usize,
        /// Insert the rows straight into the server's archive table in this database instead of
        /// sending messages: `sqlite:PATH` (or `sqlite://PATH`) or `postgres://user@host/db`.
        /// The table layout is --seed-schema's. ANALYZE (PostgreSQL: VACUUM ANALYZE) follows.
        #[arg(long, conflicts_with = "seed_sqlite")]
        seed_db: Option<String>,
        /// Whose archive table --seed-db fills.
        #[arg(long, value_enum, default_value_t = SeedSchema::Starling)]
        seed_schema: SeedSchema,
        /// Same as --seed-db sqlite:PATH.
        #[arg(long)]
        seed_sqlite: Option<PathBuf>,
        /// No ANALYZE after seeding by SQL.
        #[arg(long)]
        no_analyze: bool,
        /// Messages sent but not yet received by the owner while seeding over XMPP.
        #[arg(long, default_value_t = 200)]
        window: usize,
        /// Skip seeding (the archive already holds the messages).
        #[arg(long)]
        no_seed: bool,
    },
    /// Turn JSON lines from the scenarios into Markdown tables, with the ratios of --subject to
    /// every other server.
    Report {
        /// Files of JSON lines (one scenario result per line).
        files: Vec<PathBuf>,
        /// The servers the ratios are computed for (labels given with --label, comma-separated):
        /// each of them against every server not in this list.
        #[arg(long, value_delimiter = ',', default_value = "starling")]
        subject: Vec<String>,
    },
}

/// Layout of the archive table filled by --seed-db.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
enum SeedSchema {
    /// Starling's `archive` table (schema/sqlite/0002_archive.sql, schema/postgres/0002_archive.sql).
    Starling,
    /// ejabberd's `archive` table (its lite.sql / pg.sql, old single-host schema).
    Ejabberd,
}

#[derive(Args, Clone)]
struct Target {
    /// Server c2s address (IPv4 in 127.0.0.0/8, with port).
    #[arg(long, default_value = "127.0.0.1:5222")]
    server: SocketAddr,
    /// XMPP domain of the accounts.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Connect with direct TLS (XEP-0368, ALPN xmpp-client) instead of STARTTLS.
    #[arg(long)]
    direct_tls: bool,
    /// Server process id, for CPU and memory figures from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Name of the server in the JSON output.
    #[arg(long, default_value = "server")]
    label: String,
    /// Accounts are PREFIX1 .. PREFIXn.
    #[arg(long, default_value = "bench")]
    user_prefix: String,
    /// Password of every account.
    #[arg(long, default_value = "bench")]
    password: String,
    /// Number of accounts PREFIX1 .. PREFIXn that exist.
    #[arg(long)]
    accounts: usize,
    /// Source addresses 127.0.0.1 .. 127.0.0.N used in turn.
    #[arg(long, default_value_t = 8)]
    source_addrs: u8,
    /// SASL mechanism: auto (best offered of SCRAM-SHA-256, SCRAM-SHA-1), SCRAM-SHA-1, SCRAM-SHA-256.
    #[arg(long, default_value = "auto")]
    mech: String,
    /// Bound on the whole run in seconds; the run is abandoned (and reported) past it.
    #[arg(long, default_value_t = 900)]
    max_seconds: u64,
    /// Seconds to wait for any single server answer.
    #[arg(long, default_value_t = 60)]
    step_timeout: u64,
    /// Worker threads of the generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Do not run: print the case's result line with this reason (a run a script decided to
    /// leave out, so that the report says so). Group chat only.
    #[arg(long)]
    not_run: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Shared state

struct Ctx {
    t: Target,
    starttls: tokio_rustls::TlsConnector,
    direct: tokio_rustls::TlsConnector,
    next_src: AtomicUsize,
    /// (mechanism, TLS version and suite) of the first successful login.
    negotiated: OnceLock<(String, String)>,
    /// SCRAM salted passwords by (hash, user, salt, iterations): clients may cache them
    /// (RFC 5802 section 5.1), and it keeps the generator's CPU for the sessions.
    salted: Mutex<HashMap<SaltKey, Vec<u8>>>,
}

/// (hash, user, salt, iterations).
type SaltKey = (u8, String, Vec<u8>, u32);

static CTX: OnceLock<Ctx> = OnceLock::new();
static START: OnceLock<Instant> = OnceLock::new();
/// RLIMIT_NOFILE after raising it.
static NOFILE: OnceLock<u64> = OnceLock::new();

fn ctx() -> &'static Ctx {
    CTX.get().expect("context set at start")
}

/// Microseconds since the generator started (the clock of latency timestamps).
fn now_us() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn step() -> Duration {
    Duration::from_secs(ctx().t.step_timeout)
}

fn account(i: usize) -> String {
    format!("{}{}", ctx().t.user_prefix, i)
}

// ---------------------------------------------------------------------------------------------
// /proc figures

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as f64
    } else {
        100.0
    }
}

/// utime + stime of the process (all threads), in seconds.
fn proc_cpu_s(pid: Option<u32>) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // The command name may hold spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((utime + stime) as f64 / clk_tck())
}

fn kib_field(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()))
}

/// (VmRSS, Pss) in KiB.
fn proc_mem_kib(pid: Option<u32>) -> (Option<u64>, Option<u64>) {
    let Some(pid) = pid else { return (None, None) };
    (kib_field(&format!("/proc/{pid}/status"), "VmRSS:"), kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:"))
}

/// Busy CPU seconds of the whole machine (all cores) from /proc/stat.
fn machine_busy_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7).unwrap_or(&0);
    Some(busy as f64 / clk_tck())
}

/// CPU used by every other process on the machine over a measurement window, in cores: how
/// much outside load shared the machine with the server and the generator.
struct OtherLoad {
    t: Instant,
    busy: Option<f64>,
    server: Option<f64>,
    own: Option<f64>,
}

impl OtherLoad {
    fn start(pid: Option<u32>) -> OtherLoad {
        OtherLoad { t: Instant::now(), busy: machine_busy_s(), server: proc_cpu_s(pid), own: proc_cpu_s(Some(std::process::id())) }
    }

    fn cores(&self, pid: Option<u32>) -> Value {
        let wall = self.t.elapsed().as_secs_f64();
        match (self.busy, machine_busy_s(), self.server, proc_cpu_s(pid), self.own, proc_cpu_s(Some(std::process::id()))) {
            (Some(b0), Some(b1), Some(s0), Some(s1), Some(o0), Some(o1)) if wall > 0.0 => {
                json!(round((((b1 - b0) - (s1 - s0) - (o1 - o0)) / wall).max(0.0), 2))
            }
            _ => Value::Null,
        }
    }
}

fn own_rss_kib() -> Option<u64> {
    kib_field("/proc/self/status", "VmRSS:")
}

fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain libc calls with a valid pointer to a local.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let want = libc::rlimit { rlim_cur: 1 << 20, rlim_max: (1 << 20).max(lim.rlim_max) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
            let soft = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

/// The q-quantile (0..=1) of sorted values, nearest rank.
fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn ms(us: Option<u64>) -> Value {
    us.map(|v| json!(round(v as f64 / 1000.0, 3))).unwrap_or(Value::Null)
}

// ---------------------------------------------------------------------------------------------
// Transport and TLS

fn connector(alpn: Option<&[u8]>) -> tokio_rustls::TlsConnector {
    // Benchmark servers use self-signed certificates.
    let mut cfg = starling::stream::insecure::client_config(alpn);
    // Every login is a full handshake.
    cfg.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

type Reader = XmlReader<ReadHalf<Transport>>;
type Writer = WriteHalf<Transport>;

fn limits() -> Limits {
    Limits { max_element_bytes: 16 << 20, max_depth: 128 }
}

/// TCP connection from the next source address 127.0.0.x, without reserving a port at bind time
/// (IP_BIND_ADDRESS_NO_PORT), so each source address gets its own ephemeral port range.
async fn tcp_connect() -> Result<TcpStream, String> {
    let c = ctx();
    let n = c.next_src.fetch_add(1, Ordering::Relaxed);
    let src = Ipv4Addr::new(127, 0, 0, 1 + (n % c.t.source_addrs.max(1) as usize) as u8);
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: valid fd, pointer to a local c_int and its size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0)).map_err(|e| format!("bind {src}: {e}"))?;
    let s = tokio::time::timeout(step(), sock.connect(c.t.server))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect {} from {src}: {e}", c.t.server))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

async fn tls_handshake(tcp: TcpStream, direct: bool) -> Result<Transport, String> {
    let c = ctx();
    let name = ServerName::try_from(c.t.domain.clone()).map_err(|e| format!("domain: {e}"))?;
    let conn = if direct { &c.direct } else { &c.starttls };
    let tls = tokio::time::timeout(step(), conn.connect(name, tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    if c.negotiated.get().is_none() {
        let s = tls.get_ref().1;
        let v = format!(
            "{} {}",
            s.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
            s.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite())).unwrap_or_default()
        );
        let _ = TLS_INFO.set(v);
    }
    Ok(Transport::Tls(Box::new(tls)))
}

static TLS_INFO: OnceLock<String> = OnceLock::new();

// ---------------------------------------------------------------------------------------------
// Stream plumbing

async fn write(w: &mut Writer, data: &str) -> Result<(), String> {
    w.write_all(data.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    w.flush().await.map_err(|e| format!("flush: {e}"))
}

/// The next top-level element; stream errors and closes are errors.
async fn next_el(rd: &mut Reader) -> Result<Element, String> {
    loop {
        match tokio::time::timeout(step(), rd.next()).await {
            Err(_) => return Err("timed out waiting for the server".into()),
            Ok(Err(e)) => return Err(format!("read: {e}")),
            Ok(Ok(XmlEvent::StreamClose)) => return Err("server closed the stream".into()),
            Ok(Ok(XmlEvent::StreamOpen(_))) => continue,
            Ok(Ok(XmlEvent::Element(e))) => {
                if e.is("error", ns::STREAM) {
                    return Err(format!("stream error: {e}"));
                }
                return Ok(e);
            }
        }
    }
}

async fn open_stream(rd: &mut Reader, wr: &mut Writer) -> Result<Element, String> {
    let domain = &ctx().t.domain;
    write(
        wr,
        &format!("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"),
    )
    .await?;
    match tokio::time::timeout(step(), rd.next()).await {
        Ok(Ok(XmlEvent::StreamOpen(_))) => {}
        Ok(Ok(other)) => return Err(format!("expected a stream header, got {other:?}")),
        Ok(Err(e)) => return Err(format!("stream header: {e}")),
        Err(_) => return Err("timed out waiting for the stream header".into()),
    }
    let f = next_el(rd).await?;
    if !f.is("features", ns::STREAM) {
        return Err(format!("expected stream features, got {f}"));
    }
    Ok(f)
}

/// Wait for the iq result (or error) with this id; other elements are skipped.
async fn wait_iq(rd: &mut Reader, id: &str) -> Result<Element, String> {
    loop {
        let e = next_el(rd).await?;
        if e.name == "iq" && e.get_attr("id") == Some(id) && matches!(e.get_attr("type"), Some("result") | Some("error")) {
            return Ok(e);
        }
    }
}

fn hash_id(h: Hash) -> u8 {
    match h {
        Hash::Sha1 => 1,
        Hash::Sha256 => 2,
    }
}

/// SCRAM (RFC 5802) without channel binding (gs2 header "n,,").
async fn scram(rd: &mut Reader, wr: &mut Writer, mech: &str, user: &str) -> Result<(), String> {
    let c = ctx();
    let hash = if mech == "SCRAM-SHA-256" { Hash::Sha256 } else { Hash::Sha1 };
    let cnonce: String = rand::thread_rng().sample_iter(&Alphanumeric).take(24).map(char::from).collect();
    let bare = format!("n={},r={cnonce}", user.replace('=', "=3D").replace(',', "=2C"));
    write(wr, &format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mech}'>{}</auth>", B64.encode(format!("n,,{bare}"))))
        .await?;
    let ch = next_el(rd).await?;
    if !ch.is("challenge", ns::SASL) {
        return Err(format!("SASL: expected a challenge, got {ch}"));
    }
    let server_first = String::from_utf8(B64.decode(ch.text_content().trim()).map_err(|e| format!("SASL base64: {e}"))?)
        .map_err(|_| "SASL: server-first not UTF-8".to_string())?;
    let (mut nonce, mut salt, mut iters) = (None, None, None);
    for a in server_first.split(',') {
        if let Some(v) = a.strip_prefix("r=") {
            nonce = Some(v.to_string());
        } else if let Some(v) = a.strip_prefix("s=") {
            salt = B64.decode(v).ok();
        } else if let Some(v) = a.strip_prefix("i=") {
            iters = v.parse::<u32>().ok();
        }
    }
    let (Some(nonce), Some(salt), Some(iters)) = (nonce, salt, iters) else {
        return Err(format!("SASL: bad server-first {server_first}"));
    };
    if !nonce.starts_with(&cnonce) {
        return Err("SASL: server nonce does not extend ours".into());
    }
    let key = (hash_id(hash), user.to_string(), salt.clone(), iters);
    let cached = c.salted.lock().unwrap().get(&key).cloned();
    let salted = match cached {
        Some(s) => s,
        None => {
            let s = hash.salted_password(c.t.password.as_bytes(), &salt, iters);
            c.salted.lock().unwrap().insert(key, s.clone());
            s
        }
    };
    let client_key = hash.hmac(&salted, b"Client Key");
    let stored = hash.digest(&client_key);
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let sig = hash.hmac(&stored, auth_message.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
    let server_sig = hash.hmac(&hash.hmac(&salted, b"Server Key"), auth_message.as_bytes());
    write(
        wr,
        &format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            B64.encode(format!("{without_proof},p={}", B64.encode(proof)))
        ),
    )
    .await?;
    let check = |el: &Element| -> Result<(), String> {
        let data = B64.decode(el.text_content().trim()).unwrap_or_default();
        let text = String::from_utf8_lossy(&data);
        match text.strip_prefix("v=").and_then(|v| B64.decode(v).ok()) {
            Some(v) if v == server_sig => Ok(()),
            _ => Err("SASL: server signature does not verify".into()),
        }
    };
    let mut r = next_el(rd).await?;
    if r.is("challenge", ns::SASL) {
        // Additional data with success sent as a challenge (RFC 6120 section 6.3.10).
        check(&r)?;
        write(wr, "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>").await?;
        r = next_el(rd).await?;
        if r.is("success", ns::SASL) {
            return Ok(());
        }
    }
    if !r.is("success", ns::SASL) {
        return Err(format!("SASL failed: {r}"));
    }
    check(&r)
}

/// An authenticated, bound session.
struct Session {
    rd: Reader,
    wr: Writer,
    jid: String,
}

/// A full login: TCP, STARTTLS (or direct TLS), SCRAM, bind, roster get, initial presence. The
/// login is complete when a ping sent after the presence is answered (the server handles a
/// session's stanzas in order).
async fn login(user: &str, resource: &str) -> Result<Session, String> {
    let c = ctx();
    let tcp = tcp_connect().await?;
    let t = if c.t.direct_tls { tls_handshake(tcp, true).await? } else { Transport::Plain(tcp) };
    let (r, w) = tokio::io::split(t);
    let mut rd = XmlReader::new(r, limits());
    let mut wr = w;
    let mut features = open_stream(&mut rd, &mut wr).await?;
    if !c.t.direct_tls {
        if features.find("starttls", ns::TLS).is_none() {
            return Err("server offers no STARTTLS".into());
        }
        write(&mut wr, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").await?;
        let p = next_el(&mut rd).await?;
        if !p.is("proceed", ns::TLS) {
            return Err(format!("STARTTLS refused: {p}"));
        }
        let r = rd.into_inner().map_err(|e| format!("STARTTLS: {e}"))?;
        let Transport::Plain(tcp) = r.unsplit(wr) else { return Err("already TLS".into()) };
        let (r, w) = tokio::io::split(tls_handshake(tcp, false).await?);
        rd = XmlReader::new(r, limits());
        wr = w;
        features = open_stream(&mut rd, &mut wr).await?;
    }
    let offered: Vec<String> = features
        .find("mechanisms", ns::SASL)
        .map(|m| m.elements().map(|e| e.text_content().trim().to_string()).collect())
        .unwrap_or_default();
    let mech = match c.t.mech.as_str() {
        "auto" => ["SCRAM-SHA-256", "SCRAM-SHA-1"]
            .into_iter()
            .find(|m| offered.iter().any(|o| o == m))
            .ok_or_else(|| format!("no SCRAM mechanism offered: {offered:?}"))?,
        m if offered.iter().any(|o| o == m) => m,
        m => return Err(format!("{m} not offered: {offered:?}")),
    };
    scram(&mut rd, &mut wr, mech, user).await?;
    rd = rd.restart();
    let features = open_stream(&mut rd, &mut wr).await?;
    write(
        &mut wr,
        &format!("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"),
    )
    .await?;
    let b = wait_iq(&mut rd, "b1").await?;
    let jid = b
        .find("bind", ns::BIND)
        .and_then(|b| b.find("jid", ns::BIND))
        .map(|j| j.text_content())
        .ok_or_else(|| format!("bind failed: {b}"))?;
    if let Some(s) = features.find("session", ns::SESSION) {
        if s.elements().all(|e| e.name != "optional") {
            write(&mut wr, "<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>").await?;
            wait_iq(&mut rd, "s1").await?;
        }
    }
    write(
        &mut wr,
        &format!("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq><presence/><iq type='get' id='p1' to='{}'><ping xmlns='urn:xmpp:ping'/></iq>", c.t.domain),
    )
    .await?;
    let r = wait_iq(&mut rd, "r1").await?;
    if r.get_attr("type") != Some("result") {
        return Err(format!("roster get failed: {r}"));
    }
    wait_iq(&mut rd, "p1").await?;
    let _ = c.negotiated.set((mech.to_string(), TLS_INFO.get().cloned().unwrap_or_default()));
    Ok(Session { rd, wr, jid })
}

impl Session {
    /// Close the stream and wait (bounded) for the server to close its side.
    async fn close(mut self) {
        if write(&mut self.wr, "</stream:stream>").await.is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Ok(Ok(XmlEvent::Element(_) | XmlEvent::StreamOpen(_))) = tokio::time::timeout_at(deadline, self.rd.next()).await {}
        let _ = self.wr.shutdown().await;
    }
}

/// Answer server pings and other requests so a held session stays a good citizen.
async fn answer_iq(wr: &mut Writer, e: &Element) {
    if e.name == "iq" && matches!(e.get_attr("type"), Some("get") | Some("set")) {
        let id = e.get_attr("id").unwrap_or("");
        let reply = match e.get_attr("from") {
            Some(f) => format!("<iq type='result' id='{}' to='{}'/>", starling::xml::escape(id), starling::xml::escape(f)),
            None => format!("<iq type='result' id='{}'/>", starling::xml::escape(id)),
        };
        let _ = write(wr, &reply).await;
    }
}

/// Keep a session open, reading (and discarding) what arrives, until `stop`.
fn hold(mut s: Session, mut stop: watch::Receiver<bool>, dropped: Arc<AtomicUsize>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                ev = s.rd.next() => match ev {
                    Ok(XmlEvent::Element(e)) => answer_iq(&mut s.wr, &e).await,
                    Ok(XmlEvent::StreamOpen(_)) => {}
                    _ => {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                },
                _ = stop.changed() => break,
            }
        }
        let _ = s.wr.write_all(b"</stream:stream>").await;
        let _ = s.wr.shutdown().await;
    })
}

/// Log in `users.len()` sessions with bounded concurrency; each is handed to `keep` as it comes
/// up. Returns (successes, failures, first error, per-login latencies in µs).
async fn login_many<F>(users: Vec<(String, String)>, concurrency: usize, keep: F) -> (usize, usize, Option<String>, Vec<u64>)
where
    F: Fn(usize, Session) + Send + Sync + 'static,
{
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let keep = Arc::new(keep);
    let mut tasks = Vec::with_capacity(users.len());
    for (i, (user, res)) in users.into_iter().enumerate() {
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        let keep = keep.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = login(&user, &res).await;
            drop(permit);
            match r {
                Ok(s) => {
                    keep(i, s);
                    Ok(t.elapsed().as_micros() as u64)
                }
                Err(e) => Err(format!("{user}/{res}: {e}")),
            }
        }));
    }
    let (mut ok, mut failed, mut first_err, mut lat) = (0, 0, None, Vec::new());
    for t in tasks {
        match t.await {
            Ok(Ok(us)) => {
                ok += 1;
                lat.push(us);
            }
            Ok(Err(e)) => {
                failed += 1;
                if first_err.is_none() {
                    eprintln!("starling-bench: login failed: {e}");
                    first_err = Some(e);
                }
            }
            Err(e) => {
                failed += 1;
                first_err.get_or_insert_with(|| format!("task: {e}"));
            }
        }
    }
    (ok, failed, first_err, lat)
}

/// Base of every JSON result.
/// (scenario, case) of this run, for the report of a run abandoned at --max-seconds.
static CASE: OnceLock<(String, String)> = OnceLock::new();

fn base(scenario: &str, case: String) -> serde_json::Map<String, Value> {
    let c = ctx();
    let case = if c.t.direct_tls { format!("{case}, direct TLS") } else { case };
    let _ = CASE.set((scenario.to_string(), case.clone()));
    let mut m = serde_json::Map::new();
    m.insert("server".into(), json!(c.t.label));
    m.insert("scenario".into(), json!(scenario));
    m.insert("case".into(), json!(case));
    m.insert("target".into(), json!(c.t.server.to_string()));
    m.insert("transport".into(), json!(if c.t.direct_tls { "direct TLS" } else { "STARTTLS" }));
    m
}

fn finish(mut m: serde_json::Map<String, Value>) -> Value {
    let c = ctx();
    if let Some((mech, tls)) = c.negotiated.get() {
        m.insert("mech".into(), json!(mech));
        m.insert("tls".into(), json!(tls));
    }
    m.insert("generator_rss_kib".into(), json!(own_rss_kib()));
    m.insert("nofile_limit".into(), json!(NOFILE.get()));
    Value::Object(m)
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// Sessions held open by `hold` tasks until `stop` is sent.
struct Held {
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    dropped: Arc<AtomicUsize>,
    holders: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Held {
    fn new() -> Held {
        let (stop_tx, stop_rx) = watch::channel(false);
        Held { stop_tx, stop_rx, dropped: Arc::default(), holders: Arc::default() }
    }

    /// Log `users` in and hold them; (successes, failures, first error, login latencies).
    async fn add(&self, users: Vec<(String, String)>, concurrency: usize) -> (usize, usize, Option<String>, Vec<u64>) {
        let (holders, dropped, rx) = (self.holders.clone(), self.dropped.clone(), self.stop_rx.clone());
        login_many(users, concurrency, move |_, s| holders.lock().unwrap().push(hold(s, rx.clone(), dropped.clone()))).await
    }

    fn up(&self) -> usize {
        self.holders.lock().unwrap().len().saturating_sub(self.dropped.load(Ordering::Relaxed))
    }

    /// Close every held session.
    async fn close(&self) {
        let _ = self.stop_tx.send(true);
        let handles = std::mem::take(&mut *self.holders.lock().unwrap());
        for h in handles {
            let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
        }
    }
}

/// Grow to each of `sizes` sessions in turn on the same server, measuring at each step against
/// the same "before" (taken once, after a warm-up), so memory freed by an earlier run cannot be
/// reused and counted as free. Session i is account `first + i / resources + 1`. Each step's
/// result line is printed as it comes, but the last, which is returned; the sessions stay in
/// `held`.
async fn grow_idle(
    held: &Held,
    first: usize,
    mut sizes: Vec<usize>,
    resources: usize,
    concurrency: usize,
    settle: u64,
    warmup: usize,
) -> Value {
    sizes.sort_unstable();
    sizes.dedup();
    let c = ctx();
    let pid = c.t.server_pid;
    let resources = resources.max(1);
    let largest = sizes.last().copied().unwrap_or(0);
    let needed = first + largest.div_ceil(resources);
    if needed > c.t.accounts || largest == 0 {
        let mut m = base("idle", format!("idle, {largest} sessions ({resources} resources per account)"));
        m.insert("error".into(), json!(format!("{needed} accounts needed, {} available", c.t.accounts)));
        return finish(m);
    }
    if warmup > 0 {
        let users = (0..warmup).map(|i| (account(first + i % (needed - first).max(1) + 1), format!("w{i}"))).collect();
        let _ = login_many(users, 4, |_, s| {
            tokio::spawn(s.close());
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (rss0, pss0) = proc_mem_kib(pid);
    let (mut prev, mut failed_total, mut result) = (0, 0, Value::Null);
    for (step, &sessions) in sizes.iter().enumerate() {
        let mut m = base("idle", format!("idle, {sessions} sessions ({resources} resources per account)"));
        m.insert("sessions".into(), json!(sessions));
        m.insert("resources_per_account".into(), json!(resources));
        if sizes.len() > 1 {
            m.insert("step".into(), json!(format!("{} of {}, grown from {prev} on the same server", step + 1, sizes.len())));
        }
        let users = (prev..sessions).map(|i| (account(first + i / resources + 1), format!("r{}", i % resources))).collect();
        let cpu0 = proc_cpu_s(pid);
        let other = OtherLoad::start(pid);
        let t0 = Instant::now();
        let (ok, failed, err, mut lat) = held.add(users, concurrency).await;
        let setup = t0.elapsed().as_secs_f64();
        let cpu1 = proc_cpu_s(pid);
        m.insert("other_cpu_cores".into(), other.cores(pid));
        tokio::time::sleep(Duration::from_secs(settle)).await;
        let (rss1, pss1) = proc_mem_kib(pid);
        failed_total += failed;
        let up = held.up();
        m.insert("sessions_up".into(), json!(up));
        m.insert("login_failures".into(), json!(failed_total));
        if let Some(e) = err {
            m.insert("first_error".into(), json!(e));
        }
        if up < sessions {
            m.insert("error".into(), json!(format!("{up} of {sessions} sessions up ({failed_total} logins failed)")));
        }
        m.insert("setup_s".into(), json!(round(setup, 2)));
        lat.sort_unstable();
        m.insert("login_p50_ms".into(), ms(quantile(&lat, 0.5)));
        m.insert("login_p99_ms".into(), ms(quantile(&lat, 0.99)));
        if let (Some(a), Some(b)) = (cpu0, cpu1) {
            if ok > 0 {
                m.insert("server_cpu_ms_per_login".into(), json!(round((b - a) * 1000.0 / ok as f64, 3)));
            }
        }
        m.insert("rss_before_kib".into(), json!(rss0));
        m.insert("rss_after_kib".into(), json!(rss1));
        m.insert("pss_before_kib".into(), json!(pss0));
        m.insert("pss_after_kib".into(), json!(pss1));
        if up > 0 {
            if let (Some(a), Some(b)) = (rss0, rss1) {
                m.insert("rss_per_session_kib".into(), json!(round((b as f64 - a as f64) / up as f64, 2)));
            }
            if let (Some(a), Some(b)) = (pss0, pss1) {
                m.insert("pss_per_session_kib".into(), json!(round((b as f64 - a as f64) / up as f64, 2)));
            }
        }
        result = finish(m);
        if step + 1 < sizes.len() {
            println!("{result}");
        }
        prev = sessions;
    }
    result
}

/// The idle scenario: `grow_idle` from the first account, then every session closed.
async fn idle(sizes: Vec<usize>, resources: usize, concurrency: usize, settle: u64, warmup: usize) -> Value {
    let held = Held::new();
    let last = grow_idle(&held, 0, sizes, resources, concurrency, settle, warmup).await;
    held.close().await;
    last
}

async fn login_scenario(count: usize, concurrency: usize) -> Value {
    let c = ctx();
    let pid = c.t.server_pid;
    let mut m = base("login", format!("login, {count} logins, {concurrency} in flight"));
    m.insert("count".into(), json!(count));
    m.insert("concurrency".into(), json!(concurrency));
    let accounts = c.t.accounts.max(1);
    let users = (0..count).map(|i| (account(i % accounts + 1), format!("l{i}"))).collect();
    let closers: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::new(Mutex::new(Vec::new()));
    let cpu0 = proc_cpu_s(pid);
    let other = OtherLoad::start(pid);
    let t0 = Instant::now();
    // The close is part of the login cycle: it is waited for before the figures are taken.
    let (ok, failed, err, mut lat) = {
        let closers = closers.clone();
        login_many(users, concurrency, move |_, s| closers.lock().unwrap().push(tokio::spawn(s.close()))).await
    };
    let handles = std::mem::take(&mut *closers.lock().unwrap());
    for h in handles {
        let _ = h.await;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu1 = proc_cpu_s(pid);
    m.insert("other_cpu_cores".into(), other.cores(pid));
    lat.sort_unstable();
    m.insert("logins_ok".into(), json!(ok));
    m.insert("failures".into(), json!(failed));
    if let Some(e) = err {
        m.insert("first_error".into(), json!(e));
    }
    if failed > 0 {
        m.insert("error".into(), json!(format!("{failed} of {count} logins failed")));
    }
    m.insert("seconds".into(), json!(round(wall, 3)));
    m.insert("logins_per_s".into(), json!(round(ok as f64 / wall, 1)));
    m.insert("login_p50_ms".into(), ms(quantile(&lat, 0.5)));
    m.insert("login_p99_ms".into(), ms(quantile(&lat, 0.99)));
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        m.insert("server_cpu_s".into(), json!(round(b - a, 3)));
        if ok > 0 {
            m.insert("server_cpu_ms_per_login".into(), json!(round((b - a) * 1000.0 / ok as f64, 3)));
        }
    }
    finish(m)
}

fn body_of(e: &Element) -> Option<String> {
    if e.name != "message" {
        return None;
    }
    e.find("body", ns::CLIENT).map(|b| b.text_content())
}

/// The chat scenario's parameters.
#[derive(Args, Clone)]
struct ChatArgs {
    /// Pairs of sessions (accounts 1..2P).
    #[arg(long)]
    pairs: usize,
    /// Total offered messages per second; 0 = saturation (each sender keeps --window in flight).
    #[arg(long)]
    rate: f64,
    /// Seconds of sending.
    #[arg(long)]
    seconds: u64,
    /// Messages in flight per sender at saturation (--rate 0).
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 100)]
    body: usize,
    /// Extra idle sessions online during the run (accounts after the pairs', --resources each).
    #[arg(long, default_value_t = 0)]
    background: usize,
    /// Resources per account for the background sessions.
    #[arg(long, default_value_t = 4)]
    resources: usize,
    /// Logins in flight while setting up.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Seconds to wait for messages still in flight after sending stops.
    #[arg(long, default_value_t = 10)]
    drain: u64,
    /// Measured runs on the same sessions, 2 s apart; server CPU per 1,000 messages is
    /// their median (each run's figure is listed too), latencies cover all runs.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Seconds of sending before the measured runs, at the same rate, not counted: the
    /// server's caches and buffers reach the state they keep under that load.
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Grow the background sessions in these steps (comma-separated, the last being
    /// --background) on a fresh server, and measure memory per session at each step as the
    /// idle scenario does (one idle result line per step, 20 warm-up logins, 5 s of settling)
    /// before the chat: the idle and the many-sessions chat cases then share one login of
    /// all those sessions.
    #[arg(long, value_delimiter = ',')]
    idle_steps: Vec<usize>,
}

async fn chat(a: ChatArgs) -> Value {
    let c = ctx();
    let pid = c.t.server_pid;
    let n = a.pairs * 2;
    let case = if a.rate > 0.0 {
        format!("chat, {} pairs, {} msg/s offered, {} s", a.pairs, a.rate, a.seconds)
    } else {
        format!("chat, {} pairs, saturation (window {}), {} s", a.pairs, a.window, a.seconds)
    };
    let case = if a.background > 0 { format!("{case}, +{} idle sessions", a.background) } else { case };
    let mut m = base("chat", case);
    m.insert("pairs".into(), json!(a.pairs));
    m.insert("offered_rate".into(), json!(a.rate));
    m.insert("seconds".into(), json!(a.seconds));
    m.insert("body_bytes".into(), json!(a.body));
    m.insert("background_sessions".into(), json!(a.background));
    let resources = a.resources.max(1);
    let needed = n + a.background.div_ceil(resources);
    if needed > c.t.accounts || n == 0 {
        m.insert("error".into(), json!(format!("{needed} accounts needed, {} available", c.t.accounts)));
        return finish(m);
    }
    // Background sessions first (grown in steps and measured as the idle scenario does, when
    // asked: one idle result line per step, printed as it comes).
    let held = Held::new();
    let (stop_tx, stop_rx) = (held.stop_tx.clone(), held.stop_rx.clone());
    if !a.idle_steps.is_empty() {
        if a.idle_steps.iter().max() != Some(&a.background) {
            m.insert("error".into(), json!("the last of --idle-steps must be --background"));
            return finish(m);
        }
        println!("{}", grow_idle(&held, n, a.idle_steps.clone(), resources, a.concurrency, 5, 20).await);
        m.insert("background_up".into(), json!(held.up()));
    } else if a.background > 0 {
        let users = (0..a.background).map(|i| (account(n + i / resources + 1), format!("bg{}", i % resources))).collect();
        let (ok, _, err, _) = held.add(users, a.concurrency).await;
        m.insert("background_up".into(), json!(ok));
        if let Some(e) = err {
            m.insert("first_error".into(), json!(e));
        }
    }
    // The pairs: session 2k talks to 2k+1.
    let slots: Arc<Mutex<Vec<Option<Session>>>> = Arc::new(Mutex::new((0..n).map(|_| None).collect()));
    let users = (0..n).map(|i| (account(i + 1), "chat".to_string())).collect();
    let (ok, _, err, _) = {
        let slots = slots.clone();
        login_many(users, a.concurrency, move |i, s| slots.lock().unwrap()[i] = Some(s)).await
    };
    if ok < n {
        m.insert("error".into(), json!(format!("only {ok} of {n} chat sessions logged in: {}", err.unwrap_or_default())));
        let _ = stop_tx.send(true);
        return finish(m);
    }
    let sessions: Vec<Session> = std::mem::take(&mut *slots.lock().unwrap()).into_iter().map(|s| s.expect("logged in")).collect();
    let bare: Vec<String> = sessions.iter().map(|s| s.jid.split('/').next().unwrap_or("").to_string()).collect();
    let received = Arc::new(AtomicU64::new(0));
    let sems: Arc<Vec<Semaphore>> = Arc::new((0..n).map(|_| Semaphore::new(a.window.max(1))).collect());
    let pad = "x".repeat(a.body.saturating_sub(26));
    // Run 0 is the warm-up when there is one: sent and received like the others, not counted.
    let warm = usize::from(a.warmup > 0);
    let runs = a.repeat.max(1) + warm;
    // Readers live through every run; each latency is kept with the run its message belongs to
    // (the body carries the run's number).
    let mut readers = Vec::with_capacity(n);
    let mut writers = Vec::with_capacity(n);
    let mut replies = Vec::with_capacity(n);
    for (i, s) in sessions.into_iter().enumerate() {
        let Session { mut rd, wr, .. } = s;
        let mut stop = stop_rx.clone();
        let received = received.clone();
        let rsems = sems.clone();
        let (reply_tx, reply_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        readers.push(tokio::spawn(async move {
            let mut lat: Vec<Vec<u64>> = vec![Vec::new(); runs];
            loop {
                tokio::select! {
                    ev = rd.next() => match ev {
                        Ok(XmlEvent::Element(e)) => {
                            if let Some(b) = body_of(&e) {
                                let mut f = b.strip_prefix("bench ").unwrap_or("").split(' ');
                                if let (Some(Ok(t)), Some(Ok(r))) = (f.next().map(str::parse::<u64>), f.next().map(str::parse::<usize>)) {
                                    if let Some(v) = lat.get_mut(r) {
                                        v.push(now_us().saturating_sub(t));
                                    }
                                    received.fetch_add(1, Ordering::Relaxed);
                                    rsems[i ^ 1].add_permits(1);
                                }
                            } else if e.name == "iq" && matches!(e.get_attr("type"), Some("get") | Some("set")) {
                                let _ = reply_tx.send(format!("<iq type='result' id='{}'/>", starling::xml::escape(e.get_attr("id").unwrap_or(""))));
                            }
                        }
                        Ok(XmlEvent::StreamOpen(_)) => {}
                        _ => break,
                    },
                    _ = stop.changed() => break,
                }
            }
            lat
        }));
        writers.push(wr);
        replies.push(reply_rx);
    }
    let mut other = None;
    let mut sent = 0u64;
    let mut send_err = None;
    let mut run_cpu: Vec<Option<f64>> = Vec::with_capacity(runs);
    let mut run_sent: Vec<u64> = Vec::with_capacity(runs);
    let mut send_secs = 0.0;
    for run in 0..runs {
        tokio::time::sleep(Duration::from_millis(if run == 0 { 500 } else { 2000 })).await;
        if run == warm {
            other = Some(OtherLoad::start(pid));
        }
        let cpu0 = proc_cpu_s(pid);
        let t0 = Instant::now();
        let start = tokio::time::Instant::now() + Duration::from_millis(100);
        let end = start + Duration::from_secs(if run < warm { a.warmup } else { a.seconds });
        let mut senders = Vec::with_capacity(n);
        for (i, (mut wr, mut reply_rx)) in std::mem::take(&mut writers).into_iter().zip(std::mem::take(&mut replies)).enumerate() {
            let to = bare[i ^ 1].clone();
            let pad = pad.clone();
            let sems = sems.clone();
            let (rate, n_f) = (a.rate, n as f64);
            senders.push(tokio::spawn(async move {
                let mut sent = 0u64;
                let mut failed = None;
                let send = |seq: u64| {
                    format!("<message to='{to}' type='chat' id='m{run}-{i}-{seq}'><body>bench {} {run} {pad}</body></message>", now_us())
                };
                if rate > 0.0 {
                    // Sender i sends at start + i/rate + k*period, for as long as that is before
                    // the end: the run stops when the last message is due, not a period later.
                    let period = Duration::from_secs_f64(n_f / rate);
                    let mut at = start + Duration::from_secs_f64(i as f64 / rate);
                    while at < end {
                        tokio::time::sleep_until(at).await;
                        while let Ok(r) = reply_rx.try_recv() {
                            let _ = write(&mut wr, &r).await;
                        }
                        if let Err(e) = write(&mut wr, &send(sent)).await {
                            failed = Some(e);
                            break;
                        }
                        sent += 1;
                        at += period;
                    }
                } else {
                    tokio::time::sleep_until(start).await;
                    loop {
                        tokio::select! {
                            p = sems[i].acquire() => {
                                if let Ok(p) = p { p.forget() }
                            }
                            _ = tokio::time::sleep_until(end) => break,
                        }
                        if let Err(e) = write(&mut wr, &send(sent)).await {
                            failed = Some(e);
                            break;
                        }
                        sent += 1;
                    }
                }
                (sent, wr, reply_rx, failed)
            }));
        }
        let mut this_sent = 0u64;
        for s in senders {
            if let Ok((k, wr, rx, e)) = s.await {
                this_sent += k;
                writers.push(wr);
                replies.push(rx);
                if e.is_some() && send_err.is_none() {
                    send_err = e;
                }
            }
        }
        sent += this_sent;
        send_secs += t0.elapsed().as_secs_f64();
        let drain_deadline = Instant::now() + Duration::from_secs(a.drain);
        while received.load(Ordering::Relaxed) < sent && Instant::now() < drain_deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let cpu1 = proc_cpu_s(pid);
        run_cpu.push(cpu0.zip(cpu1).map(|(x, y)| y - x));
        run_sent.push(this_sent);
        if writers.len() < n {
            break;
        }
    }
    if let Some(o) = other {
        m.insert("other_cpu_cores".into(), o.cores(pid));
    }
    let _ = stop_tx.send(true);
    let mut per_run: Vec<Vec<u64>> = vec![Vec::new(); runs];
    for r in readers {
        if let Ok(v) = r.await {
            for (k, l) in v.into_iter().enumerate() {
                per_run[k].extend(l);
            }
        }
    }
    // The warm-up's messages count in nothing but `warmup_sent`.
    let warm_sent = if warm > 0 { run_sent[0] } else { 0 };
    let (per_run, run_cpu, run_sent) = (&mut per_run[warm..], &run_cpu[warm.min(run_cpu.len())..], &run_sent[warm.min(run_sent.len())..]);
    let sent = sent - warm_sent;
    let mut lat: Vec<u64> = per_run.iter().flatten().copied().collect();
    lat.sort_unstable();
    let delivered = lat.len() as u64;
    let measured = per_run.len();
    m.insert("sent".into(), json!(sent));
    m.insert("delivered".into(), json!(delivered));
    m.insert("lost".into(), json!(sent.saturating_sub(delivered)));
    m.insert("send_rate".into(), json!(round(sent as f64 / (a.seconds.max(1) * measured as u64) as f64, 1)));
    m.insert("send_seconds".into(), json!(round(send_secs, 2)));
    if warm > 0 {
        m.insert("warmup_s".into(), json!(a.warmup));
        m.insert("warmup_sent".into(), json!(warm_sent));
    }
    if let Some(e) = send_err {
        m.insert("send_error".into(), json!(e));
    }
    m.insert("latency_p50_ms".into(), ms(quantile(&lat, 0.5)));
    m.insert("latency_p99_ms".into(), ms(quantile(&lat, 0.99)));
    m.insert("latency_max_ms".into(), ms(lat.last().copied()));
    // Server CPU per 1,000 delivered messages, run by run; the headline is their median.
    let mut per_1000: Vec<f64> = Vec::new();
    let mut p99s: Vec<Value> = Vec::new();
    for (k, l) in per_run.iter_mut().enumerate() {
        l.sort_unstable();
        p99s.push(ms(quantile(l, 0.99)));
        if let Some(Some(cpu)) = run_cpu.get(k) {
            if !l.is_empty() {
                per_1000.push(cpu * 1000.0 / l.len() as f64);
            }
        }
    }
    let total_cpu: Option<f64> = run_cpu.iter().copied().sum();
    if let Some(cpu) = total_cpu {
        m.insert("server_cpu_s".into(), json!(round(cpu, 3)));
    }
    if !per_1000.is_empty() {
        m.insert("server_cpu_s_per_1000".into(), json!(round(median(&per_1000), 4)));
    }
    if measured > 1 {
        m.insert("runs".into(), json!(measured));
        m.insert("server_cpu_s_per_1000_runs".into(), json!(per_1000.iter().map(|v| round(*v, 4)).collect::<Vec<_>>()));
        m.insert("latency_p99_ms_runs".into(), json!(p99s));
        m.insert("sent_runs".into(), json!(run_sent));
    }
    let result = finish(m);
    for mut w in writers {
        let _ = w.write_all(b"</stream:stream>").await;
        let _ = w.shutdown().await;
    }
    held.close().await;
    result
}

/// The median of some figures (the mean of the middle two for an even count).
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let k = s.len() / 2;
    if s.is_empty() {
        0.0
    } else if s.len() % 2 == 1 {
        s[k]
    } else {
        (s[k - 1] + s[k]) / 2.0
    }
}

// ---------------------------------------------------------------------------------------------
// Group chat (XEP-0045)

struct RoomArgs {
    rooms: usize,
    occupants: usize,
    rate: f64,
    seconds: u64,
    senders: usize,
    window: usize,
    body: usize,
    service: Option<String>,
    room_prefix: String,
    concurrency: usize,
    drain: u64,
    settle: u64,
}

/// One room as its occupants' tasks and the run share it.
struct RoomState {
    /// room@service.
    jid: String,
    /// Occupants it holds once set up: the deliveries each message makes.
    occupants: u64,
    /// Groupchat messages written into it during the measurement.
    sent: AtomicU64,
    /// Measured messages received by its occupants (the senders' own echoes included).
    received: AtomicU64,
    /// When the last of them arrived (µs on the `now_us` clock).
    last_us: AtomicU64,
    /// Occupants whose join succeeded.
    joined: AtomicUsize,
    /// Presences from the room received by its occupants.
    presences: AtomicU64,
    /// Occupants that received the sync message, which the room sent after every join
    /// presence: they have drained the join flood.
    synced: AtomicUsize,
    /// Occupants that received their own unavailable presence once the room was destroyed.
    left: AtomicUsize,
    /// The owner's destroy request was refused.
    destroy_refused: AtomicBool,
    /// At saturation, the messages the room's senders may still put in flight: a permit comes
    /// back each time the occupants have received `occupants` more deliveries.
    window: Semaphore,
    /// Error stanzas from the room after joining, and sessions the server closed.
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl RoomState {
    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            eprintln!("starling-bench: {e}");
            *first = Some(e);
        }
    }
}

/// Start and end of the measurement, sent to the writers when the rooms are ready.
type SendWindow = Option<(tokio::time::Instant, tokio::time::Instant)>;

/// What a sending occupant sends during the measurement.
struct SendPlan {
    room: Arc<RoomState>,
    /// Message ids are g{id}-{seq}.
    id: usize,
    /// Interval between its messages at a fixed rate; None at saturation.
    period: Option<Duration>,
    /// Its first message is this long after the start (the senders take turns).
    offset: Duration,
    pad: Arc<str>,
}

/// Where a sender reports (messages written, write error) once its sending is over.
type SendDone = tokio::sync::oneshot::Sender<(u64, Option<String>)>;

/// One occupant as the run holds it: its outgoing queue and its two tasks.
struct Occupant {
    out: tokio::sync::mpsc::UnboundedSender<String>,
    reader: JoinHandle<Vec<u64>>,
    writer: JoinHandle<()>,
}

/// The condition and text of an error stanza ("item-not-found: text"), or the stanza itself.
fn stanza_error(e: &Element) -> String {
    let Some(err) = e.find("error", ns::CLIENT) else { return e.to_string() };
    let cond = err.elements().find(|c| c.ns == ns::STANZA_ERRORS && c.name != "text").map(|c| c.name.clone());
    let text = err.find("text", ns::STANZA_ERRORS).map(|t| t.text_content());
    match (cond, text) {
        (Some(c), Some(t)) => format!("{c} ({t})"),
        (Some(c), None) => c,
        _ => e.to_string(),
    }
}

/// Read one occupant's stream for the whole run: its join (and the instant-room form if the join
/// created the room), the room's presences and messages, the server's requests. Reports the join
/// on `joined` (Ok(true) when it created the room) and returns the latencies of the measured
/// deliveries in µs.
async fn occupant_reader(
    mut rd: Reader,
    room: Arc<RoomState>,
    me: String,
    out: tokio::sync::mpsc::UnboundedSender<String>,
    joined: tokio::sync::oneshot::Sender<Result<bool, String>>,
    mut stop: watch::Receiver<bool>,
) -> Vec<u64> {
    let mut joined = Some(joined);
    let mut form_sent = false;
    let mut synced = false;
    let mut lat = Vec::new();
    let ended = loop {
        let e = tokio::select! {
            ev = rd.next() => match ev {
                Ok(XmlEvent::Element(e)) if e.is("error", ns::STREAM) => break Some(format!("stream error: {e}")),
                Ok(XmlEvent::Element(e)) => e,
                Ok(XmlEvent::StreamOpen(_)) => continue,
                Ok(XmlEvent::StreamClose) => break Some("server closed the stream".to_string()),
                Err(e) => break Some(format!("read: {e}")),
            },
            _ = stop.changed() => break None,
        };
        let from = e.get_attr("from").unwrap_or("");
        let in_room = from.split('/').next().is_some_and(|b| b.eq_ignore_ascii_case(&room.jid));
        let ty = e.get_attr("type");
        match e.name.as_str() {
            "presence" if in_room => {
                room.presences.fetch_add(1, Ordering::Relaxed);
                if ty == Some("error") {
                    match joined.take() {
                        Some(j) => {
                            let _ = j.send(Err(format!("join refused: {}", stanza_error(&e))));
                        }
                        None => room.error(format!("{me}: presence error: {}", stanza_error(&e))),
                    }
                    continue;
                }
                let x = e.find("x", NS_MUC_USER);
                let status = |code: &str| x.is_some_and(|x| x.elements().any(|s| s.name == "status" && s.get_attr("code") == Some(code)));
                // Status 110 marks the occupant's own presence (XEP-0045 section 7.2.2).
                if !(status("110") || from == me) {
                    continue;
                }
                if ty == Some("unavailable") {
                    room.left.fetch_add(1, Ordering::Relaxed);
                } else if joined.is_some() && !form_sent {
                    if status("201") {
                        // A new room stays locked until its owner configures it; accept the
                        // default configuration (an instant room, section 10.1.2).
                        form_sent = true;
                        let _ = out.send(format!(
                            "<iq type='set' id='instant' to='{}'><query xmlns='{NS_MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'/></query></iq>",
                            room.jid
                        ));
                    } else if let Some(j) = joined.take() {
                        let _ = j.send(Ok(false));
                    }
                }
            }
            "iq" => match ty {
                Some("get") | Some("set") => {
                    let id = starling::xml::escape(e.get_attr("id").unwrap_or(""));
                    let _ = out.send(match e.get_attr("from") {
                        Some(f) => format!("<iq type='result' id='{id}' to='{}'/>", starling::xml::escape(f)),
                        None => format!("<iq type='result' id='{id}'/>"),
                    });
                }
                Some(t) => match e.get_attr("id") {
                    Some("instant") if form_sent => {
                        if let Some(j) = joined.take() {
                            let _ =
                                j.send(if t == "result" { Ok(true) } else { Err(format!("instant room refused: {}", stanza_error(&e))) });
                        }
                    }
                    Some("destroy") if t == "error" => {
                        room.destroy_refused.store(true, Ordering::Relaxed);
                        room.error(format!("destroy refused: {}", stanza_error(&e)));
                    }
                    _ => {}
                },
                None => {}
            },
            "message" if in_room => {
                if ty == Some("error") {
                    room.error(format!("{me}: message error: {}", stanza_error(&e)));
                    continue;
                }
                if ty != Some("groupchat") {
                    continue;
                }
                let Some(body) = e.find("body", ns::CLIENT).map(|b| b.text_content()) else { continue };
                if let Some(t) = body.strip_prefix("bench ").and_then(|r| r.split(' ').next()).and_then(|t| t.parse::<u64>().ok()) {
                    let now = now_us();
                    lat.push(now.saturating_sub(t));
                    room.last_us.fetch_max(now, Ordering::Relaxed);
                    if (room.received.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(room.occupants.max(1)) {
                        room.window.add_permits(1);
                    }
                } else if !synced && body.starts_with("sync ") {
                    synced = true;
                    room.synced.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    };
    if let Some(why) = ended {
        match joined.take() {
            Some(j) => {
                let _ = j.send(Err(why));
            }
            None => room.error(format!("{me}: {why}")),
        }
    }
    lat
}

/// Write one occupant's stream: what its reader and the run queue (join, forms, replies, sync,
/// destroy) and, for a sender, its groupchat messages during the measurement. Closes the stream
/// once every handle on the queue is gone.
async fn occupant_writer(
    mut wr: Writer,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    plan: Option<(SendPlan, SendDone)>,
    mut go: watch::Receiver<SendWindow>,
) {
    let mut ok = true;
    if let Some((plan, done)) = plan {
        let (sent, err) = send_groupchat(&mut wr, &mut rx, &plan, &mut go).await;
        ok = err.is_none();
        let _ = done.send((sent, err));
    }
    while ok {
        match rx.recv().await {
            Some(s) => ok = write(&mut wr, &s).await.is_ok(),
            None => break,
        }
    }
    let _ = wr.write_all(b"</stream:stream>").await;
    let _ = wr.shutdown().await;
}

/// A sender's part of the measurement: its queue is still served meanwhile. Returns (messages
/// written, write error).
async fn send_groupchat(
    wr: &mut Writer,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    plan: &SendPlan,
    go: &mut watch::Receiver<SendWindow>,
) -> (u64, Option<String>) {
    let (start, end) = loop {
        tokio::select! {
            biased;
            s = rx.recv() => match s {
                Some(s) => if let Err(e) = write(wr, &s).await { return (0, Some(e)) },
                None => return (0, None),
            },
            r = go.changed() => {
                if r.is_err() {
                    return (0, None);
                }
                let w = *go.borrow_and_update();
                if let Some(w) = w {
                    break w;
                }
            }
        }
    };
    let room = &plan.room;
    let msg = |seq: u64| {
        format!(
            "<message to='{}' type='groupchat' id='g{}-{seq}'><body>bench {} {seq} {}</body></message>",
            room.jid,
            plan.id,
            now_us(),
            plan.pad
        )
    };
    let mut sent = 0u64;
    let deadline = tokio::time::sleep_until(end);
    tokio::pin!(deadline);
    let mut iv = plan.period.map(|p| {
        let mut iv = tokio::time::interval_at(start + plan.offset, p);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        iv
    });
    let first = tokio::time::sleep_until(start + plan.offset);
    tokio::pin!(first);
    let mut started = false;
    loop {
        tokio::select! {
            biased;
            s = rx.recv() => match s {
                Some(s) => if let Err(e) = write(wr, &s).await { return (sent, Some(e)) },
                None => return (sent, None),
            },
            _ = &mut deadline => break,
            at = async {
                match iv.as_mut() {
                    Some(iv) => iv.tick().await,
                    None => std::future::pending().await,
                }
            }, if iv.is_some() => {
                if at >= end {
                    break;
                }
                if let Err(e) = write(wr, &msg(sent)).await {
                    return (sent, Some(e));
                }
                sent += 1;
                room.sent.fetch_add(1, Ordering::Relaxed);
            }
            _ = &mut first, if iv.is_none() && !started => started = true,
            p = room.window.acquire(), if iv.is_none() && started => {
                match p {
                    Ok(p) => p.forget(),
                    Err(_) => break,
                }
                if let Err(e) = write(wr, &msg(sent)).await {
                    return (sent, Some(e));
                }
                sent += 1;
                room.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    (sent, None)
}

/// Log one occupant in, start its tasks and join its room; wait for the self-presence (and, for
/// the room's creator, the answer to the instant-room form). Ok(true) when it created the room.
/// On failure the occupant is handed back too, if it got that far, to be closed with the rest.
async fn occupant_up(
    user: String,
    resource: String,
    room: Arc<RoomState>,
    nick: String,
    plan: Option<(SendPlan, SendDone)>,
    go: watch::Receiver<SendWindow>,
    stop: watch::Receiver<bool>,
) -> Result<(Occupant, bool), (Option<Occupant>, String)> {
    let s = login(&user, &resource).await.map_err(|e| (None, format!("{user}/{resource}: {e}")))?;
    let me = format!("{}/{nick}", room.jid);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let writer = tokio::spawn(occupant_writer(s.wr, rx, plan, go));
    let (jtx, jrx) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(occupant_reader(s.rd, room.clone(), me.clone(), tx.clone(), jtx, stop));
    // No discussion history: the join's own presences are all that it costs.
    let _ = tx.send(format!("<presence to='{me}'><x xmlns='{NS_MUC}'><history maxstanzas='0'/></x></presence>"));
    let occ = Occupant { out: tx, reader, writer };
    match tokio::time::timeout(step(), jrx).await {
        Ok(Ok(Ok(created))) => {
            room.joined.fetch_add(1, Ordering::Relaxed);
            Ok((occ, created))
        }
        Ok(Ok(Err(e))) => Err((Some(occ), format!("{user}/{resource} joining {me}: {e}"))),
        Ok(Err(_)) => Err((Some(occ), format!("{user}/{resource} joining {me}: the reader stopped"))),
        Err(_) => Err((Some(occ), format!("{user}/{resource} joining {me}: no self-presence within {} s", ctx().t.step_timeout))),
    }
}

/// Wait until the server has used under 5% of a core for half a second, `max` at most, so that
/// what a burst left behind (the join presences, a teardown) is not counted in what follows.
/// Returns the seconds waited.
async fn settle_server(pid: Option<u32>, max: Duration) -> f64 {
    let t0 = Instant::now();
    let Some(mut last) = proc_cpu_s(pid) else { return 0.0 };
    while t0.elapsed() < max {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(now) = proc_cpu_s(pid) else { break };
        if now - last < 0.025 {
            break;
        }
        last = now;
    }
    round(t0.elapsed().as_secs_f64(), 1)
}

/// Destroy the rooms (their owners ask; the room then sends each occupant one unavailable
/// presence, where leaving one by one would cost a presence to every other occupant each), close
/// every stream, and wait for the server to go idle. Returns the latencies the readers collected.
async fn rooms_down(
    occupants: Vec<Vec<Option<Occupant>>>,
    rooms: &[Arc<RoomState>],
    stop: watch::Sender<bool>,
    settle: Duration,
) -> Vec<u64> {
    let pid = ctx().t.server_pid;
    for (k, occ) in occupants.iter().enumerate() {
        if let Some(Some(owner)) = occ.first() {
            let _ = owner
                .out
                .send(format!("<iq type='set' id='destroy' to='{}'><query xmlns='{NS_MUC_OWNER}'><destroy/></query></iq>", rooms[k].jid));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline
        && rooms
            .iter()
            .any(|r| !r.destroy_refused.load(Ordering::Relaxed) && r.left.load(Ordering::Relaxed) < r.joined.load(Ordering::Relaxed))
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    let mut lat = Vec::new();
    let mut writers = Vec::new();
    for o in occupants.into_iter().flatten().flatten() {
        let Occupant { out, reader, writer } = o;
        drop(out);
        if let Ok(Ok(v)) = tokio::time::timeout(Duration::from_secs(5), reader).await {
            lat.extend(v);
        }
        writers.push(writer);
    }
    for w in writers {
        let _ = tokio::time::timeout(Duration::from_secs(5), w).await;
    }
    settle_server(pid, settle).await;
    lat
}

async fn room(a: RoomArgs) -> Value {
    let c = ctx();
    let pid = c.t.server_pid;
    let (nr, n) = (a.rooms, a.occupants);
    let s_per_room = a.senders.clamp(1, n.max(1));
    let what = format!("{nr} room{} of {n} occupants", if nr == 1 { "" } else { "s" });
    let case = if a.rate > 0.0 {
        format!("room, {what}, {} msg/s offered ({} deliveries/s), {} s", a.rate, a.rate * n as f64, a.seconds)
    } else {
        format!("room, {what}, saturation ({s_per_room} senders per room, window {}), {} s", a.window, a.seconds)
    };
    let mut m = base("room", case);
    let service = a.service.clone().unwrap_or_else(|| format!("conference.{}", c.t.domain));
    m.insert("service".into(), json!(service));
    m.insert("rooms".into(), json!(nr));
    m.insert("occupants".into(), json!(n));
    m.insert("senders_per_room".into(), json!(s_per_room));
    m.insert("offered_rate".into(), json!(a.rate));
    m.insert("offered_deliveries_per_s".into(), json!(a.rate * n as f64));
    m.insert("seconds".into(), json!(a.seconds));
    m.insert("grace_s".into(), json!(a.drain));
    m.insert("body_bytes".into(), json!(a.body));
    if let Some(why) = &c.t.not_run {
        m.insert("not_run".into(), json!(why));
        return finish(m);
    }
    let total = nr * n;
    if total == 0 || c.t.accounts == 0 {
        m.insert("error".into(), json!(format!("no occupants: {nr} rooms of {n}, {} accounts", c.t.accounts)));
        return finish(m);
    }
    let per_account = total.div_ceil(c.t.accounts);
    m.insert("resources_per_account".into(), json!(per_account));
    let tag: String = rand::thread_rng().sample_iter(&Alphanumeric).take(6).map(|b| (b as char).to_ascii_lowercase()).collect();
    let rooms: Vec<Arc<RoomState>> = (0..nr)
        .map(|k| {
            Arc::new(RoomState {
                jid: format!("{}{tag}-{k}@{service}", a.room_prefix),
                occupants: n as u64,
                sent: AtomicU64::new(0),
                received: AtomicU64::new(0),
                last_us: AtomicU64::new(0),
                joined: AtomicUsize::new(0),
                presences: AtomicU64::new(0),
                synced: AtomicUsize::new(0),
                left: AtomicUsize::new(0),
                destroy_refused: AtomicBool::new(false),
                window: Semaphore::new(if a.rate > 0.0 { 0 } else { a.window.max(1) * s_per_room }),
                errors: AtomicU64::new(0),
                first_error: Mutex::new(None),
            })
        })
        .collect();
    m.insert("room_jids".into(), json!(rooms.iter().take(3).map(|r| r.jid.clone()).collect::<Vec<_>>()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (go_tx, go_rx) = watch::channel::<SendWindow>(None);
    let pad: Arc<str> = "x".repeat(a.body.saturating_sub(30)).into();
    let mut done_rx = Vec::new();
    // Occupant j of room k sends if it is one of the room's senders, spread evenly over it.
    let mut plan = |k: usize, j: usize| -> Option<(SendPlan, SendDone)> {
        let i = (0..s_per_room).find(|i| i * n / s_per_room == j)?;
        let id = k * s_per_room + i;
        let (tx, rx) = tokio::sync::oneshot::channel();
        done_rx.push(rx);
        let all = (nr * s_per_room) as f64;
        let plan = SendPlan {
            room: rooms[k].clone(),
            id,
            period: (a.rate > 0.0).then(|| Duration::from_secs_f64(all / a.rate)),
            offset: if a.rate > 0.0 { Duration::from_secs_f64(id as f64 / a.rate) } else { Duration::ZERO },
            pad: pad.clone(),
        };
        Some((plan, tx))
    };
    let who = |k: usize, j: usize| {
        let g = k * n + j;
        (account(g % c.t.accounts + 1), format!("room{}", g / c.t.accounts), format!("u{j}"))
    };
    let (rss0, pss0) = proc_mem_kib(pid);
    let cpu_setup0 = proc_cpu_s(pid);
    let t_setup = Instant::now();
    let mut occupants: Vec<Vec<Option<Occupant>>> = (0..nr).map(|_| (0..n).map(|_| None).collect()).collect();
    let sem = Arc::new(Semaphore::new(a.concurrency.max(1)));
    // The creators first, then the others: an occupant joining a room still locked would be
    // refused (XEP-0045 section 10.1.1).
    let mut failures = 0usize;
    let mut first_err: Option<String> = None;
    for phase in 0..2 {
        let mut tasks = Vec::new();
        let js: Vec<usize> = if phase == 0 { vec![0] } else { (1..n).collect() };
        // Rooms fill side by side.
        for &j in &js {
            for (k, room) in rooms.iter().enumerate() {
                let permit = sem.clone().acquire_owned().await.expect("semaphore open");
                let (user, res, nick) = who(k, j);
                let up = occupant_up(user, res, room.clone(), nick, plan(k, j), go_rx.clone(), stop_rx.clone());
                tasks.push((
                    k,
                    j,
                    tokio::spawn(async move {
                        let r = up.await;
                        drop(permit);
                        r
                    }),
                ));
            }
        }
        for (k, j, t) in tasks {
            match t.await {
                Ok(Ok((o, created))) => {
                    occupants[k][j] = Some(o);
                    if phase == 0 && !created {
                        // It was there already (a name clash, or the server keeps rooms): fine.
                        m.insert("note".into(), json!(format!("room {} existed before the run", rooms[k].jid)));
                    }
                }
                Ok(Err((o, e))) => {
                    occupants[k][j] = o;
                    failures += 1;
                    if first_err.is_none() {
                        eprintln!("starling-bench: {e}");
                        first_err = Some(e);
                    }
                }
                Err(e) => {
                    failures += 1;
                    first_err.get_or_insert_with(|| format!("task: {e}"));
                }
            }
        }
        if failures > 0 {
            break;
        }
    }
    let joined: usize = rooms.iter().map(|r| r.joined.load(Ordering::Relaxed)).sum();
    m.insert("occupants_joined".into(), json!(joined));
    m.insert("join_s".into(), json!(round(t_setup.elapsed().as_secs_f64(), 2)));
    if failures > 0 {
        let e = first_err.unwrap_or_default();
        let msg = if joined == 0 {
            format!("could not create the room: {e}")
        } else {
            format!("{failures} of {total} occupants could not join: {e}")
        };
        m.insert("error".into(), json!(msg));
        drop(go_tx);
        rooms_down(occupants, &rooms, stop_tx, Duration::from_secs(a.settle)).await;
        return finish(m);
    }
    // Every join's presences reach every occupant; a message the room sends after the last join
    // reaches each occupant after all of them.
    for (k, occ) in occupants.iter().enumerate() {
        if let Some(Some(o)) = occ.first() {
            let _ = o.out.send(format!("<message to='{}' type='groupchat' id='sync'><body>sync {tag}</body></message>", rooms[k].jid));
        }
    }
    let deadline = Instant::now() + step();
    let synced = || rooms.iter().map(|r| r.synced.load(Ordering::Relaxed)).sum::<usize>();
    while synced() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    m.insert("join_presences".into(), json!(rooms.iter().map(|r| r.presences.load(Ordering::Relaxed)).sum::<u64>()));
    if synced() < total {
        m.insert(
            "error".into(),
            json!(format!("only {} of {total} occupants drained the join presences within {} s", synced(), c.t.step_timeout)),
        );
        drop(go_tx);
        rooms_down(occupants, &rooms, stop_tx, Duration::from_secs(a.settle)).await;
        return finish(m);
    }
    m.insert("settle_s".into(), json!(settle_server(pid, Duration::from_secs(a.settle)).await));
    if let (Some(x), Some(y)) = (cpu_setup0, proc_cpu_s(pid)) {
        m.insert("server_cpu_s_join".into(), json!(round(y - x, 3)));
    }
    let (rss1, pss1) = proc_mem_kib(pid);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let cpu0 = proc_cpu_s(pid);
    let other = OtherLoad::start(pid);
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let start_us = now_us() + 100_000;
    let end = start + Duration::from_secs(a.seconds);
    let _ = go_tx.send(Some((start, end)));
    let mut send_err = None;
    for rx in done_rx {
        if let Ok(Ok((_, e))) = tokio::time::timeout_at(end + step(), rx).await {
            if send_err.is_none() {
                send_err = e;
            }
        }
    }
    let sent: u64 = rooms.iter().map(|r| r.sent.load(Ordering::Relaxed)).sum();
    let expected: u64 = rooms.iter().map(|r| r.sent.load(Ordering::Relaxed) * r.occupants).sum();
    let received = || rooms.iter().map(|r| r.received.load(Ordering::Relaxed)).sum::<u64>();
    let drain_deadline = Instant::now() + Duration::from_secs(a.drain);
    while received() < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu1 = proc_cpu_s(pid);
    let delivered = received();
    m.insert("other_cpu_cores".into(), other.cores(pid));
    let (rss2, pss2) = proc_mem_kib(pid);
    let last_us = rooms.iter().map(|r| r.last_us.load(Ordering::Relaxed)).max().unwrap_or(0);
    let errors: u64 = rooms.iter().map(|r| r.errors.load(Ordering::Relaxed)).sum();
    let first_room_error = rooms.iter().find_map(|r| r.first_error.lock().unwrap().clone());

    let t_down = Instant::now();
    let mut lat = rooms_down(occupants, &rooms, stop_tx, Duration::from_secs(a.settle)).await;
    m.insert("teardown_s".into(), json!(round(t_down.elapsed().as_secs_f64(), 1)));
    lat.sort_unstable();
    m.insert("sent".into(), json!(sent));
    m.insert("deliveries_expected".into(), json!(expected));
    m.insert("delivered".into(), json!(delivered));
    m.insert("lost".into(), json!(expected.saturating_sub(delivered)));
    m.insert("send_rate".into(), json!(round(sent as f64 / a.seconds.max(1) as f64, 1)));
    if last_us > start_us {
        m.insert("deliveries_per_s".into(), json!(round(delivered as f64 * 1e6 / (last_us - start_us) as f64, 1)));
    }
    if let Some(e) = send_err {
        m.insert("send_error".into(), json!(e));
    }
    m.insert("room_errors".into(), json!(errors));
    if let Some(e) = first_room_error {
        m.insert("first_room_error".into(), json!(e));
    }
    m.insert("latency_p50_ms".into(), ms(quantile(&lat, 0.5)));
    m.insert("latency_p99_ms".into(), ms(quantile(&lat, 0.99)));
    m.insert("latency_max_ms".into(), ms(lat.last().copied()));
    if let (Some(x), Some(y)) = (cpu0, cpu1) {
        m.insert("server_cpu_s".into(), json!(round(y - x, 3)));
        if delivered > 0 {
            m.insert("server_cpu_s_per_1000".into(), json!(round((y - x) * 1000.0 / delivered as f64, 4)));
        }
    }
    for (k, v) in [("rss_before_kib", rss0), ("rss_rooms_kib", rss1), ("rss_after_kib", rss2)] {
        m.insert(k.into(), json!(v));
    }
    for (k, v) in [("pss_before_kib", pss0), ("pss_rooms_kib", pss1), ("pss_after_kib", pss2)] {
        m.insert(k.into(), json!(v));
    }
    if sent == 0 || delivered == 0 {
        m.insert("error".into(), json!(format!("{sent} messages sent, {delivered} delivered")));
    }
    finish(m)
}

/// One MAM query; returns (messages received, RSM first, RSM last, RSM count, elapsed µs).
async fn mam_query(
    s: &mut Session,
    id: &str,
    fields: &[(&str, &str)],
    rsm: &str,
) -> Result<(usize, Option<String>, Option<String>, Option<u64>, u64), String> {
    let mut form = String::new();
    if !fields.is_empty() {
        form.push_str("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>");
        for (k, v) in fields {
            form.push_str(&format!("<field var='{k}'><value>{}</value></field>", starling::xml::escape(v)));
        }
        form.push_str("</x>");
    }
    let t = Instant::now();
    write(
        &mut s.wr,
        &format!("<iq type='set' id='{id}'><query xmlns='{NS_MAM}' queryid='{id}'>{form}<set xmlns='{NS_RSM}'>{rsm}</set></query></iq>"),
    )
    .await?;
    let mut count = 0;
    loop {
        let e = next_el(&mut s.rd).await?;
        if e.name == "message" {
            if e.find("result", NS_MAM).is_some_and(|r| r.get_attr("queryid") == Some(id)) {
                count += 1;
            }
            continue;
        }
        if e.name == "iq" && e.get_attr("id") == Some(id) {
            let us = t.elapsed().as_micros() as u64;
            if e.get_attr("type") != Some("result") {
                return Err(format!("MAM query refused: {e}"));
            }
            let set = e.find("fin", NS_MAM).and_then(|f| f.find("set", NS_RSM));
            let get = |n: &str| set.and_then(|s| s.find(n, NS_RSM)).map(|x| x.text_content());
            let total = get("count").and_then(|c| c.trim().parse().ok());
            return Ok((count, get("first"), get("last"), total, us));
        }
    }
}

/// A value bound in a seeding INSERT.
enum SeedVal {
    Text(String),
    Int(i64),
    Null,
}

/// The database --seed-db names.
enum SeedDb {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl SeedDb {
    async fn open(url: &str) -> Result<SeedDb, String> {
        if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
            // No journal mode set: the file keeps the one its server gave it (WAL for all here).
            let opts = SqliteConnectOptions::new().filename(path).busy_timeout(Duration::from_secs(60)).create_if_missing(false);
            let pool = SqlitePoolOptions::new().max_connections(1).connect_with(opts).await.map_err(|e| format!("open {path}: {e}"))?;
            Ok(SeedDb::Sqlite(pool))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool =
                sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(url).await.map_err(|e| format!("open {url}: {e}"))?;
            Ok(SeedDb::Postgres(pool))
        } else {
            Err(format!("--seed-db {url}: expected sqlite:PATH or postgres://..."))
        }
    }

    fn backend(&self) -> &'static str {
        match self {
            SeedDb::Sqlite(_) => "SQLite",
            SeedDb::Postgres(_) => "PostgreSQL",
        }
    }

    /// Insert rows of `columns` in batches, committing every `commit_every` rows.
    async fn insert(
        &self,
        columns: &str,
        rows: impl Iterator<Item = Vec<SeedVal>>,
        batch: usize,
        commit_every: usize,
    ) -> Result<(), String> {
        // One body for both backends: the query builder and the transaction are per database.
        macro_rules! run {
            ($db:ty, $pool:expr) => {{
                let mut rows = rows.peekable();
                let mut done = 0;
                let mut tx = $pool.begin().await.map_err(|e| e.to_string())?;
                while rows.peek().is_some() {
                    let chunk: Vec<Vec<SeedVal>> = rows.by_ref().take(batch).collect();
                    done += chunk.len();
                    let mut q = sqlx::QueryBuilder::<$db>::new(format!("INSERT INTO archive ({columns}) "));
                    q.push_values(chunk, |mut b, row| {
                        for v in row {
                            match v {
                                SeedVal::Text(t) => b.push_bind(t),
                                SeedVal::Int(i) => b.push_bind(i),
                                SeedVal::Null => b.push_bind(Option::<String>::None),
                            };
                        }
                    });
                    q.build().execute(&mut *tx).await.map_err(|e| format!("insert: {e}"))?;
                    if done >= commit_every {
                        done = 0;
                        tx.commit().await.map_err(|e| e.to_string())?;
                        tx = $pool.begin().await.map_err(|e| e.to_string())?;
                    }
                }
                tx.commit().await.map_err(|e| e.to_string())
            }};
        }
        match self {
            SeedDb::Sqlite(p) => run!(sqlx::Sqlite, p),
            SeedDb::Postgres(p) => run!(sqlx::Postgres, p),
        }
    }

    /// What a running server's maintenance would have done after a bulk load: ANALYZE on SQLite,
    /// VACUUM ANALYZE (autovacuum's work after that many inserts) on PostgreSQL.
    async fn analyze(&self) -> Result<(), String> {
        let r = match self {
            SeedDb::Sqlite(p) => sqlx::query("ANALYZE").execute(p).await.map(|_| ()),
            SeedDb::Postgres(p) => sqlx::query("VACUUM ANALYZE archive").execute(p).await.map(|_| ()),
        };
        r.map_err(|e| format!("analyze: {e}"))
    }

    /// The oldest row id in Starling's archive table, if any.
    async fn oldest_id(&self) -> Result<Option<i64>, String> {
        let sql = "SELECT MIN(id) FROM archive";
        let r = match self {
            SeedDb::Sqlite(p) => sqlx::query_scalar::<_, Option<i64>>(sql).fetch_one(p).await,
            SeedDb::Postgres(p) => sqlx::query_scalar::<_, Option<i64>>(sql).fetch_one(p).await,
        };
        r.map_err(|e| format!("oldest id: {e}"))
    }

    async fn count(&self, sql: &str, who: &str) -> Result<i64, String> {
        let r = match self {
            SeedDb::Sqlite(p) => sqlx::query_scalar::<_, i64>(sql).bind(who).fetch_one(p).await,
            SeedDb::Postgres(p) => sqlx::query_scalar::<_, i64>(sql).bind(who).fetch_one(p).await,
        };
        r.map_err(|e| format!("count: {e}"))
    }

    async fn close(self) {
        match self {
            SeedDb::Sqlite(p) => p.close().await,
            SeedDb::Postgres(p) => p.close().await,
        }
    }
}

/// The two rows of seeded message `k` (from `peer` to `owner`, bare JIDs, at `ts` µs): the
/// owner's incoming copy and the peer's outgoing copy, as the server itself would store them.
fn seed_rows(schema: SeedSchema, owner: &str, peer: &str, k: usize, ts: i64) -> [Vec<SeedVal>; 2] {
    use SeedVal::{Int, Null, Text};
    let body = format!("archive seed message {k} {}", "x".repeat(60));
    match schema {
        SeedSchema::Starling => {
            // Starling stores the stanza as routed, the recipient's copy with its <stanza-id/>.
            // Row ids are the archive's clock (the server's writer gives max(now, last + 1));
            // messages here are 1 ms apart, so the sender's copy takes the next microsecond.
            let stanza = |extra: &str| {
                format!("<message xmlns='jabber:client' from='{peer}/seed' to='{owner}' type='chat' id='s{k}'><body>{body}</body>{extra}</message>")
            };
            let (id_in, id_out) = (ts, ts + 1);
            let sid_in = stanza_id_for(id_in);
            let incoming = stanza(&format!("<stanza-id xmlns='urn:xmpp:sid:0' id='{sid_in}' by='{owner}'/>"));
            [
                vec![
                    Int(id_in),
                    Text(owner.into()),
                    Text(sid_in),
                    Text(peer.into()),
                    Text(format!("{peer}/seed")),
                    Int(0),
                    Int(id_in),
                    Null,
                    Text(incoming),
                ],
                vec![
                    Int(id_out),
                    Text(peer.into()),
                    Text(stanza_id_for(id_out)),
                    Text(owner.into()),
                    Text(owner.into()),
                    Int(1),
                    Int(id_out),
                    Null,
                    Text(stanza("")),
                ],
            ]
        }
        SeedSchema::Ejabberd => {
            // ejabberd (mod_mam_sql, single-host schema) keys rows by localpart, uses the
            // timestamp (µs) as the archive id, and stores the stanza without <stanza-id/>.
            let local = |j: &str| j.split('@').next().unwrap_or(j).to_string();
            let xml = format!(
                "<message xml:lang='en' to='{owner}' from='{peer}/seed' type='chat' id='s{k}' xmlns='jabber:client'><body>{body}</body></message>"
            );
            [
                vec![
                    Text(local(owner)),
                    Int(ts),
                    Text(format!("{peer}/seed")),
                    Text(peer.into()),
                    Text(xml.clone()),
                    Text(body.clone()),
                    Text("chat".into()),
                    Text(String::new()),
                ],
                vec![
                    Text(local(peer)),
                    Int(ts),
                    Text(owner.into()),
                    Text(owner.into()),
                    Text(xml),
                    Text(body),
                    Text("chat".into()),
                    Text(String::new()),
                ],
            ]
        }
    }
}

/// What seeding by SQL found and did.
struct Seeded {
    backend: &'static str,
    analyze_s: Option<f64>,
    /// The owner's rows in the table afterwards.
    owner_rows: i64,
}

/// Seed by SQL: message k (0..messages) comes from peer k mod P, one millisecond after k-1, the
/// newest at the current time.
async fn seed_db(url: &str, schema: SeedSchema, owner: &str, peers: &[String], messages: usize, analyze: bool) -> Result<Seeded, String> {
    let db = SeedDb::open(url).await?;
    let mut now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
    if schema == SeedSchema::Starling {
        // Starling's row ids are its archive's clock: the seeded messages end before the oldest
        // row already there (from earlier scenarios), so no id is taken twice.
        if let Some(oldest) = db.oldest_id().await? {
            now = now.min(oldest - 1000);
        }
    }
    let (columns, count_sql) = match schema {
        SeedSchema::Starling => {
            ("id, owner, stanza_id, peer, peer_full, outgoing, ts, origin_id, xml", "SELECT COUNT(*) FROM archive WHERE owner = $1")
        }
        SeedSchema::Ejabberd => {
            ("username, timestamp, peer, bare_peer, xml, txt, kind, nick", "SELECT COUNT(*) FROM archive WHERE username = $1")
        }
    };
    let rows = (0..messages).flat_map(|k| {
        let ts = now - ((messages - k) as i64) * 1000;
        seed_rows(schema, owner, &peers[k % peers.len()], k, ts)
    });
    let r = async {
        db.insert(columns, rows, 1000, 100_000).await?;
        let analyze_s = if analyze {
            let t = Instant::now();
            db.analyze().await?;
            Some(round(t.elapsed().as_secs_f64(), 2))
        } else {
            None
        };
        let who = match schema {
            SeedSchema::Starling => owner.to_string(),
            SeedSchema::Ejabberd => owner.split('@').next().unwrap_or(owner).to_string(),
        };
        let owner_rows = db.count(count_sql, &who).await?;
        Ok(Seeded { backend: db.backend(), analyze_s, owner_rows })
    }
    .await;
    db.close().await;
    r
}

/// Seed over XMPP: the peers send to the online owner, at most `window` ahead of what it received.
async fn seed_xmpp(owner: &str, peers: usize, messages: usize, window: usize) -> Result<(), String> {
    let mut o = login(owner, "seed").await?;
    let mut ps = Vec::with_capacity(peers);
    for k in 0..peers {
        ps.push(login(&account(k + 1), "seed").await?);
    }
    let received = Arc::new(AtomicU64::new(0));
    let notify = Arc::new(Notify::new());
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let reader = {
        let received = received.clone();
        let notify = notify.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = o.rd.next() => match ev {
                        Ok(XmlEvent::Element(e)) => {
                            if body_of(&e).is_some_and(|b| b.starts_with("archive seed")) {
                                received.fetch_add(1, Ordering::Relaxed);
                                notify.notify_one();
                            }
                        }
                        Ok(XmlEvent::StreamOpen(_)) => {}
                        _ => break,
                    },
                    _ = stop_rx.changed() => break,
                }
            }
            o
        })
    };
    let to = format!("{owner}@{}", ctx().t.domain);
    let pad = "x".repeat(60);
    let mut batch: Vec<String> = vec![String::new(); peers];
    let mut k = 0;
    let mut result = Ok(());
    while k < messages {
        while k as u64 >= received.load(Ordering::Relaxed) + window as u64 {
            if tokio::time::timeout(step(), notify.notified()).await.is_err()
                && k as u64 >= received.load(Ordering::Relaxed) + window as u64
            {
                result = Err(format!("seeding stalled at {} of {messages}", received.load(Ordering::Relaxed)));
                break;
            }
        }
        if result.is_err() {
            break;
        }
        // Up to a tenth of the window per write burst, spread over the peers.
        let burst = (window / 10).max(1).min(messages - k);
        for j in 0..burst {
            let n = k + j;
            batch[n % peers]
                .push_str(&format!("<message to='{to}' type='chat' id='s{n}'><body>archive seed message {n} {pad}</body></message>"));
        }
        for (p, b) in ps.iter_mut().zip(batch.iter_mut()) {
            if !b.is_empty() {
                write(&mut p.wr, b).await?;
                b.clear();
            }
        }
        k += burst;
    }
    let deadline = Instant::now() + step();
    while received.load(Ordering::Relaxed) < messages as u64 && Instant::now() < deadline && result.is_ok() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if result.is_ok() && received.load(Ordering::Relaxed) < messages as u64 {
        result = Err(format!("owner received {} of {messages}", received.load(Ordering::Relaxed)));
    }
    let _ = stop_tx.send(true);
    if let Ok(o) = reader.await {
        o.close().await;
    }
    for p in ps {
        p.close().await;
    }
    result
}

struct ArchiveArgs {
    messages: usize,
    owner: String,
    peers: usize,
    queries: usize,
    /// --seed-db (or --seed-sqlite as `sqlite:PATH`).
    seed_db: Option<String>,
    seed_schema: SeedSchema,
    analyze: bool,
    window: usize,
    no_seed: bool,
}

fn lat_fields(m: &mut serde_json::Map<String, Value>, prefix: &str, mut v: Vec<u64>) {
    v.sort_unstable();
    m.insert(format!("{prefix}_p50_ms"), ms(quantile(&v, 0.5)));
    m.insert(format!("{prefix}_p99_ms"), ms(quantile(&v, 0.99)));
    m.insert(format!("{prefix}_max_ms"), ms(v.last().copied()));
}

async fn archive(a: ArchiveArgs) -> Value {
    let c = ctx();
    let pid = c.t.server_pid;
    let seeded_how = if a.seed_db.is_some() && !a.no_seed { " seeded by SQL" } else { "" };
    let mut m = base("archive", format!("archive, {} messages{seeded_how}, {} queries of each kind", a.messages, a.queries));
    m.insert("messages".into(), json!(a.messages));
    m.insert("peers".into(), json!(a.peers));
    m.insert("queries".into(), json!(a.queries));
    let peers = a.peers.max(1);
    if peers > c.t.accounts {
        m.insert("error".into(), json!(format!("{peers} peer accounts needed, {} available", c.t.accounts)));
        return finish(m);
    }
    let owner_bare = format!("{}@{}", a.owner, c.t.domain);
    let peer_jids: Vec<String> = (0..peers).map(|k| format!("{}@{}", account(k + 1), c.t.domain)).collect();
    if !a.no_seed && a.messages > 0 {
        let cpu0 = proc_cpu_s(pid);
        let other = OtherLoad::start(pid);
        let t0 = Instant::now();
        let r = match &a.seed_db {
            Some(url) => match seed_db(url, a.seed_schema, &owner_bare, &peer_jids, a.messages, a.analyze).await {
                Ok(sd) => {
                    let table = match a.seed_schema {
                        SeedSchema::Starling => "Starling's archive table",
                        SeedSchema::Ejabberd => "ejabberd's archive table",
                    };
                    let after = match (sd.analyze_s.is_some(), sd.backend) {
                        (false, _) => "",
                        (true, "PostgreSQL") => ", then VACUUM ANALYZE",
                        (true, _) => ", then ANALYZE",
                    };
                    m.insert("seed_method".into(), json!(format!("direct SQL insert into {table} ({}){after}", sd.backend)));
                    m.insert("analyze_s".into(), json!(sd.analyze_s));
                    m.insert("archive_rows_sql".into(), json!(sd.owner_rows));
                    Ok(())
                }
                Err(e) => Err(e),
            },
            None => {
                m.insert("seed_method".into(), json!("messages sent over XMPP"));
                seed_xmpp(&a.owner, peers, a.messages, a.window).await
            }
        };
        let secs = t0.elapsed().as_secs_f64();
        let cpu1 = proc_cpu_s(pid);
        m.insert("other_cpu_cores".into(), other.cores(pid));
        m.insert("seed_s".into(), json!(round(secs, 2)));
        if let Err(e) = r {
            m.insert("error".into(), json!(format!("seeding: {e}")));
            return finish(m);
        }
        if a.seed_db.is_none() {
            m.insert("seed_msgs_per_s".into(), json!(round(a.messages as f64 / secs, 1)));
            if let (Some(x), Some(y)) = (cpu0, cpu1) {
                m.insert("seed_server_cpu_s_per_1000".into(), json!(round((y - x) * 1000.0 / a.messages as f64, 4)));
            }
        }
    }
    let mut s = match login(&a.owner, "query").await {
        Ok(s) => s,
        Err(e) => {
            m.insert("error".into(), json!(format!("owner login: {e}")));
            return finish(m);
        }
    };
    let r: Result<(), String> = async {
        // Does the server offer the `after-id` field (urn:xmpp:mam:2#extended)?
        write(&mut s.wr, &format!("<iq type='get' id='d1' to='{owner_bare}'><query xmlns='{}'/></iq>", ns::DISCO_INFO)).await?;
        let d = wait_iq(&mut s.rd, "d1").await?;
        let extended = d
            .find("query", ns::DISCO_INFO)
            .is_some_and(|q| q.elements().any(|f| f.name == "feature" && f.get_attr("var") == Some(NS_MAM_EXT)));
        m.insert(
            "after_method".into(),
            json!(if extended { "after-id form field (urn:xmpp:mam:2#extended)" } else { "RSM <after/> (no #extended)" }),
        );
        let (_, _, _, total, _) = mam_query(&mut s, "c0", &[], "<max>0</max>").await?;
        m.insert("archive_count".into(), json!(total));
        // Page back through the newest 1,000 messages, keeping each page's first id: the
        // positions the `after-id` sync queries start from.
        let mut ids = Vec::new();
        let mut before = String::new();
        for p in 0..20 {
            let (_, first, _, _, _) = mam_query(&mut s, &format!("w{p}"), &[], &format!("<max>50</max><before>{before}</before>")).await?;
            let Some(f) = first else { break };
            before = f.clone();
            ids.push(f);
        }
        let other = OtherLoad::start(pid);
        let (mut page, mut with, mut after) = (Vec::new(), Vec::new(), Vec::new());
        let (mut page_n, mut with_n, mut after_n) = (0, 0, 0);
        for q in 0..a.queries {
            let (k, _, _, _, us) = mam_query(&mut s, &format!("p{q}"), &[], "<max>50</max><before/>").await?;
            page.push(us);
            page_n += k;
            let peer = &peer_jids[q % peer_jids.len()];
            let (k, _, _, _, us) = mam_query(&mut s, &format!("q{q}"), &[("with", peer)], "<max>50</max><before/>").await?;
            with.push(us);
            with_n += k;
            if !ids.is_empty() {
                let id = &ids[q % ids.len()];
                let (k, _, _, _, us) = if extended {
                    mam_query(&mut s, &format!("a{q}"), &[("after-id", id)], "<max>50</max>").await?
                } else {
                    mam_query(&mut s, &format!("a{q}"), &[], &format!("<max>50</max><after>{id}</after>")).await?
                };
                after.push(us);
                after_n += k;
            }
        }
        let nq = a.queries.max(1) as f64;
        m.insert("page_avg_results".into(), json!(round(page_n as f64 / nq, 1)));
        m.insert("with_avg_results".into(), json!(round(with_n as f64 / nq, 1)));
        m.insert("after_avg_results".into(), json!(round(after_n as f64 / nq, 1)));
        lat_fields(&mut m, "page", page);
        lat_fields(&mut m, "with", with);
        lat_fields(&mut m, "after", after);
        m.insert("other_cpu_cores_queries".into(), other.cores(pid));
        Ok(())
    }
    .await;
    if let Err(e) = r {
        m.insert("error".into(), json!(format!("queries: {e}")));
    }
    s.close().await;
    finish(m)
}

// ---------------------------------------------------------------------------------------------
// Report

/// (JSON key, label, which way is better: -1 lower, 1 higher, 0 neither).
fn metrics(scenario: &str) -> &'static [(&'static str, &'static str, i8)] {
    match scenario {
        "idle" => &[
            ("sessions_up", "sessions up", 0),
            ("rss_per_session_kib", "RSS per session, KiB", -1),
            ("pss_per_session_kib", "PSS per session, KiB", -1),
            ("rss_before_kib", "RSS before, KiB", 0),
            ("rss_after_kib", "RSS after, KiB", 0),
            ("setup_s", "time to log all in, s", -1),
            ("server_cpu_ms_per_login", "server CPU per login while setting up, ms", -1),
            ("login_failures", "login failures", -1),
            ("other_cpu_cores", "other processes' CPU while logging in, cores", 0),
        ],
        "login" => &[
            ("logins_ok", "logins completed", 0),
            ("failures", "failures", -1),
            ("logins_per_s", "logins per second", 1),
            ("server_cpu_ms_per_login", "server CPU per login, ms", -1),
            ("login_p50_ms", "login time p50, ms", -1),
            ("login_p99_ms", "login time p99, ms", -1),
            ("other_cpu_cores", "other processes' CPU meanwhile, cores", 0),
        ],
        "chat" => &[
            ("sent", "messages sent", 0),
            ("delivered", "delivered", 0),
            ("lost", "lost", -1),
            ("send_rate", "achieved send rate, msg/s", 0),
            ("latency_p50_ms", "latency p50, ms", -1),
            ("latency_p99_ms", "latency p99, ms", -1),
            ("latency_max_ms", "latency max, ms", -1),
            ("server_cpu_s_per_1000", "server CPU per 1,000 messages (the median run's), s", -1),
            ("server_cpu_s_per_1000_runs", "server CPU per 1,000 messages in each run, s", 0),
            ("latency_p99_ms_runs", "latency p99 in each run, ms", 0),
            ("other_cpu_cores", "other processes' CPU meanwhile, cores", 0),
        ],
        "room" => &[
            ("occupants_joined", "occupants joined", 0),
            ("join_s", "time to log in and join all occupants, s", -1),
            ("join_presences", "presences received while joining", 0),
            ("server_cpu_s_join", "server CPU to log in and join all occupants, s", -1),
            ("sent", "messages sent", 0),
            ("deliveries_expected", "deliveries expected (messages × occupants)", 0),
            ("delivered", "deliveries received", 0),
            ("lost", "not received by the end of the grace time (lost or late)", -1),
            ("send_rate", "achieved send rate, msg/s", 0),
            ("deliveries_per_s", "deliveries per second", 1),
            ("latency_p50_ms", "latency p50, ms", -1),
            ("latency_p99_ms", "latency p99, ms", -1),
            ("latency_max_ms", "latency max, ms", -1),
            ("server_cpu_s_per_1000", "server CPU per 1,000 deliveries, s", -1),
            ("room_errors", "error stanzas from the room, lost sessions", -1),
            ("first_room_error", "first of them", 0),
            ("send_error", "send error", 0),
            ("rss_rooms_kib", "RSS with the rooms up, KiB", 0),
            ("pss_rooms_kib", "PSS with the rooms up, KiB", 0),
            ("rss_after_kib", "RSS after sending, KiB", 0),
            ("pss_after_kib", "PSS after sending, KiB", 0),
            ("other_cpu_cores", "other processes' CPU meanwhile, cores", 0),
        ],
        "archive" => &[
            ("archive_count", "messages in the archive (RSM count)", 0),
            ("archive_rows_sql", "owner's rows in the database after seeding (SQL count)", 0),
            ("seed_method", "seeding", 0),
            // No ratio: seeded by SQL, it is the generator's insert speed into each schema.
            ("seed_s", "seeding time, s", 0),
            ("analyze_s", "of which ANALYZE, s", 0),
            ("seed_msgs_per_s", "seeding rate over XMPP, msg/s", 1),
            ("seed_server_cpu_s_per_1000", "server CPU per 1,000 seeded messages, s", -1),
            ("page_p50_ms", "50-message page p50, ms", -1),
            ("page_p99_ms", "50-message page p99, ms", -1),
            ("with_p50_ms", "`with` query p50, ms", -1),
            ("with_p99_ms", "`with` query p99, ms", -1),
            ("after_p50_ms", "`after-id` query p50, ms", -1),
            ("after_p99_ms", "`after-id` query p99, ms", -1),
            ("page_avg_results", "page results per query", 0),
            ("with_avg_results", "`with` results per query", 0),
            ("after_avg_results", "`after-id` results per query", 0),
            ("after_method", "`after-id` sent as", 0),
            ("other_cpu_cores", "other processes' CPU while seeding, cores", 0),
            ("other_cpu_cores_queries", "other processes' CPU during the queries, cores", 0),
        ],
        _ => &[],
    }
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "n/a".into(),
        Some(Value::String(s)) => s.replace('|', "\\|"),
        Some(Value::Array(a)) => a.iter().map(|v| cell(Some(v))).collect::<Vec<_>>().join(", "),
        Some(v) => v.to_string(),
    }
}

/// The figures the issue's targets are stated in, shown first.
const HEADLINE: &[(&str, &str, &str)] = &[
    ("idle", "pss_per_session_kib", "memory (PSS) per idle session, KiB"),
    ("login", "server_cpu_ms_per_login", "server CPU per login, ms"),
    ("chat", "server_cpu_s_per_1000", "server CPU per 1,000 messages, s"),
    ("chat", "latency_p99_ms", "message latency p99, ms"),
    ("room", "server_cpu_s_per_1000", "server CPU per 1,000 room deliveries, s"),
    ("room", "latency_p99_ms", "room delivery latency p99, ms"),
    ("archive", "page_p99_ms", "50-message archive page p99, ms"),
    ("archive", "with_p99_ms", "archive `with` query p99, ms"),
    ("archive", "after_p99_ms", "archive `after-id` sync query p99, ms"),
];

/// A Markdown table of figures per server, then ratios per (subject, other) pair; ratio columns
/// with no figure at all are left out.
struct Table {
    first: String,
    servers: Vec<String>,
    pairs: Vec<(String, String)>,
    /// (label, one cell per server, one ratio per pair).
    rows: Vec<(String, Vec<String>, Vec<String>)>,
}

impl Table {
    fn render(&self) -> String {
        let keep: Vec<usize> = (0..self.pairs.len()).filter(|&i| self.rows.iter().any(|r| !r.2[i].is_empty())).collect();
        let mut out = format!("| {} | {} |", self.first, self.servers.join(" | "));
        for &i in &keep {
            out.push_str(&format!(" {} / {} |", self.pairs[i].0, self.pairs[i].1));
        }
        out.push_str(&format!("\n|---|{}\n", "---:|".repeat(self.servers.len() + keep.len())));
        for (label, cells, ratios) in &self.rows {
            out.push_str(&format!("| {label} |"));
            for c in cells {
                out.push_str(&format!(" {c} |"));
            }
            for &i in &keep {
                out.push_str(&format!(" {} |", ratios[i]));
            }
            out.push('\n');
        }
        out
    }
}

fn report(files: &[PathBuf], subjects: &[String]) -> Result<String, String> {
    let mut rows: Vec<Value> = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
            rows.push(serde_json::from_str(line).map_err(|e| format!("{}: {e}", f.display()))?);
        }
    }
    let s = |v: &Value, k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let mut servers: Vec<String> = Vec::new();
    let mut cases: Vec<(String, String)> = Vec::new();
    for r in &rows {
        let (srv, scen, case) = (s(r, "server"), s(r, "scenario"), s(r, "case"));
        if !servers.contains(&srv) {
            servers.push(srv);
        }
        if !cases.iter().any(|(_, c)| c == &case) {
            cases.push((scen, case));
        }
    }
    // The subjects first (in the order given), the others in the order they ran.
    servers.sort_by_key(|x| subjects.iter().position(|s| s == x).unwrap_or(subjects.len()));
    let pairs: Vec<(String, String)> = servers
        .iter()
        .filter(|x| subjects.contains(x))
        .flat_map(|a| servers.iter().filter(|x| !subjects.contains(x)).map(move |b| (a.clone(), b.clone())))
        .collect();
    let find = |srv: &str, case: &str| rows.iter().find(|r| s(r, "server") == srv && s(r, "case") == case);
    // A ratio only between two runs that completed.
    let ratio = |case: &str, key: &str, (a, b): &(String, String)| -> String {
        let (Some(a), Some(b)) = (find(a, case), find(b, case)) else { return String::new() };
        if [a, b].iter().any(|r| r.get("error").is_some() || r.get("not_run").is_some()) {
            return String::new();
        }
        match (a.get(key).and_then(|v| v.as_f64()), b.get(key).and_then(|v| v.as_f64())) {
            (Some(x), Some(y)) if y > 0.0 => format!("{:.3}", x / y),
            _ => String::new(),
        }
    };
    let has = |case: &str, key: &str| servers.iter().any(|srv| find(srv, case).and_then(|r| r.get(key)).is_some_and(|v| !v.is_null()));
    let mut out = String::new();
    out.push_str("### Headline figures (lower is better)\n\n");
    let mut head = Table { first: "case: figure".into(), servers: servers.clone(), pairs: pairs.clone(), rows: Vec::new() };
    for (scen, case) in &cases {
        for (hs, key, label) in HEADLINE {
            if hs != scen || !has(case, key) {
                continue;
            }
            let cells = servers
                .iter()
                .map(|srv| {
                    let r = find(srv, case);
                    if r.is_some_and(|r| r.get("not_run").is_some()) {
                        "not run".to_string()
                    } else if r.is_some_and(|r| r.get("error").is_some()) {
                        "failed".to_string()
                    } else {
                        cell(r.and_then(|r| r.get(*key)))
                    }
                })
                .collect();
            head.rows.push((format!("{case}: {label}"), cells, pairs.iter().map(|p| ratio(case, key, p)).collect()));
        }
    }
    out.push_str(&head.render());
    out.push('\n');
    for (scen, case) in &cases {
        out.push_str(&format!("### {case}\n\n"));
        // Only the servers this case ran on.
        let here: Vec<String> = servers.iter().filter(|srv| find(srv, case).is_some()).cloned().collect();
        let here_pairs: Vec<(String, String)> = pairs.iter().filter(|(a, b)| here.contains(a) && here.contains(b)).cloned().collect();
        let mut t = Table { first: String::new(), servers: here.clone(), pairs: here_pairs.clone(), rows: Vec::new() };
        let mut keys: Vec<(&str, &str, i8)> = metrics(scen).to_vec();
        keys.push(("mech", "SASL mechanism", 0));
        keys.push(("tls", "TLS", 0));
        keys.push(("error", "error", 0));
        keys.push(("not_run", "not run, because", 0));
        for (key, label, better) in keys {
            if !has(case, key) {
                continue;
            }
            let hint = match better {
                -1 => " (lower is better)",
                1 => " (higher is better)",
                _ => "",
            };
            let cells = here.iter().map(|srv| cell(find(srv, case).and_then(|r| r.get(key)))).collect();
            let ratios = here_pairs.iter().map(|p| if better != 0 { ratio(case, key, p) } else { String::new() }).collect();
            t.rows.push((format!("{label}{hint}"), cells, ratios));
        }
        out.push_str(&t.render());
        out.push('\n');
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------

fn check_target(t: &Target) -> Result<(), String> {
    match t.server.ip() {
        IpAddr::V4(v4) if v4.octets()[0] == 127 => {}
        ip => return Err(format!("refusing to target {ip}: only 127.0.0.0/8 addresses are allowed")),
    }
    if t.source_addrs == 0 {
        return Err("--source-addrs must be at least 1".into());
    }
    if t.max_seconds == 0 || t.max_seconds > MAX_SECONDS {
        return Err(format!("--max-seconds must be 1..={MAX_SECONDS}"));
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let (t, scenario) = match cli.scenario {
        Scenario::Report { files, subject } => {
            return match report(&files, &subject) {
                Ok(md) => {
                    print!("{md}");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("starling-bench: {e}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        Scenario::Idle { ref t, .. }
        | Scenario::Login { ref t, .. }
        | Scenario::Chat { ref t, .. }
        | Scenario::Room { ref t, .. }
        | Scenario::Archive { ref t, .. } => (t.clone(), cli.scenario),
    };
    let bounds = match &scenario {
        Scenario::Idle { sessions, .. } => sessions.iter().all(|n| *n <= MAX_SESSIONS),
        Scenario::Login { count, .. } => *count <= MAX_COUNT,
        Scenario::Chat { a, .. } => {
            a.pairs * 2 <= MAX_SESSIONS
                && a.idle_steps.iter().all(|n| *n <= MAX_SESSIONS)
                && a.seconds <= MAX_SECONDS
                && a.warmup <= MAX_SECONDS
                && a.rate.is_finite()
                && a.rate >= 0.0
                && (1..=10).contains(&a.repeat)
        }
        Scenario::Room { rooms, occupants, rate, seconds, drain, settle, room_prefix, .. } => {
            *rooms >= 1
                && *occupants >= 1
                && rooms.saturating_mul(*occupants) <= MAX_SESSIONS
                && *seconds <= MAX_SECONDS
                && *drain <= MAX_SECONDS
                && *settle <= MAX_SECONDS
                && rate.is_finite()
                && *rate >= 0.0
                && room_prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        }
        Scenario::Archive { messages, queries, .. } => *messages <= MAX_COUNT && *queries <= MAX_COUNT,
        Scenario::Report { .. } => true,
    };
    if let Err(e) = check_target(&t).and_then(|_| if bounds { Ok(()) } else { Err("a count or duration is out of bounds".into()) }) {
        eprintln!("starling-bench: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let _ = NOFILE.set(raise_nofile());
    START.get_or_init(Instant::now);
    let max = Duration::from_secs(t.max_seconds);
    let threads = t.threads.max(1);
    let _ = CTX.set(Ctx {
        t,
        starttls: connector(None),
        direct: connector(Some(b"xmpp-client")),
        next_src: AtomicUsize::new(0),
        negotiated: OnceLock::new(),
        salted: Mutex::new(HashMap::new()),
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build().expect("tokio runtime");
    let out = rt.block_on(async move {
        let fut = async move {
            match scenario {
                Scenario::Idle { sessions, resources, concurrency, settle, warmup, .. } => {
                    idle(sessions, resources, concurrency, settle, warmup).await
                }
                Scenario::Login { count, concurrency, .. } => login_scenario(count, concurrency).await,
                Scenario::Chat { a, .. } => chat(a).await,
                Scenario::Room {
                    rooms,
                    occupants,
                    rate,
                    seconds,
                    senders,
                    window,
                    body,
                    service,
                    room_prefix,
                    concurrency,
                    drain,
                    settle,
                    ..
                } => {
                    room(RoomArgs {
                        rooms,
                        occupants,
                        rate,
                        seconds,
                        senders,
                        window,
                        body,
                        service,
                        room_prefix,
                        concurrency,
                        drain,
                        settle,
                    })
                    .await
                }
                Scenario::Archive {
                    messages,
                    owner,
                    peers,
                    queries,
                    seed_db,
                    seed_schema,
                    seed_sqlite,
                    no_analyze,
                    window,
                    no_seed,
                    ..
                } => {
                    let seed_db = seed_db.or_else(|| seed_sqlite.map(|p| format!("sqlite:{}", p.display())));
                    archive(ArchiveArgs { messages, owner, peers, queries, seed_db, seed_schema, analyze: !no_analyze, window, no_seed })
                        .await
                }
                Scenario::Report { .. } => Value::Null,
            }
        };
        match tokio::time::timeout(max, fut).await {
            Ok(v) => v,
            Err(_) => {
                let c = ctx();
                let (scenario, case) = CASE.get().cloned().unwrap_or_default();
                json!({"server": c.t.label, "scenario": scenario, "case": case,
                       "error": format!("run abandoned after --max-seconds {}", c.t.max_seconds)})
            }
        }
    });
    println!("{out}");
    // Do not wait for lingering connections.
    rt.shutdown_timeout(Duration::from_millis(200));
    if out.get("error").is_some() {
        std::process::ExitCode::from(2)
    } else {
        std::process::ExitCode::SUCCESS
    }
}
