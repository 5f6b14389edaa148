//! Test harness: a real server in-process on 127.0.0.1:0 (SQLite in a temporary directory or
//! a fresh PostgreSQL database), and a small raw-XML client that speaks to it over TCP/TLS.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rustls::pki_types::ServerName;
use starling::config::Config;
use starling::sasl::credentials::{Credentials, Hash};
use starling::sasl::scram::client::ScramClient;
use starling::server::Running;
use starling::storage::Storage;
use starling::xml::{ns, Element, Limits, XmlError, XmlEvent, XmlReader};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

pub const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Admin URL of the PostgreSQL server used for tests; each test gets its own database.
fn pg_admin_url() -> String {
    std::env::var("STARLING_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub struct TestServer {
    pub running: Option<Running>,
    pub c2s: SocketAddr,
    pub c2s_tls: SocketAddr,
    /// The component listener (XEP-0114), when the configuration has one.
    pub component: Option<SocketAddr>,
    /// The HTTP listener (webhooks), when the configuration has one.
    pub http: Option<SocketAddr>,
    /// The server-to-server listener (federation), when the configuration has one.
    pub s2s: Option<SocketAddr>,
    /// The server-to-server listener with direct TLS (XEP-0368), when there is one.
    pub s2s_direct_tls: Option<SocketAddr>,
    pub dir: PathBuf,
    pub storage: Storage,
    pub url: String,
    pg_db: Option<String>,
    pub config: Config,
}

fn rand_suffix() -> String {
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

impl TestServer {
    pub async fn start(db: Db) -> TestServer {
        Self::start_with(db, |_| {}).await
    }

    pub async fn start_with(db: Db, tweak: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_after(db, tweak, async |_| {}).await
    }

    /// Start on a database `prepare` has filled first (given the database's URL), as an older
    /// version would have left it.
    pub async fn start_after(db: Db, tweak: impl FnOnce(&mut Config), prepare: impl AsyncFnOnce(&str)) -> TestServer {
        let dir = std::env::temp_dir().join(format!("starling-test-{}", rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let (url, pg_db) = match db {
            Db::Sqlite => (format!("sqlite://{}/starling.db", dir.display()), None),
            Db::Postgres => {
                let name = format!("starling_t_{}", rand_suffix());
                let admin = pg_admin_url();
                sqlx::any::install_default_drivers();
                let pool =
                    sqlx::AnyPool::connect(&admin).await.expect("PostgreSQL must be running for the postgres tests (STARLING_TEST_PG)");
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&pool).await.unwrap();
                pool.close().await;
                let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
                (format!("{base}/{name}"), Some(name))
            }
        };
        let mut config: Config = toml::from_str(&format!(
            "[server]\nhosts = [\"localhost\", \"example.test\"]\ndata_dir = \"{}\"\n[storage]\nurl = \"{url}\"\n[listen]\nc2s = [\"127.0.0.1:0\"]\nc2s_direct_tls = [\"127.0.0.1:0\"]\n",
            dir.display()
        ))
        .unwrap();
        tweak(&mut config);
        prepare(&url).await;
        let running = starling::server::start(config.clone()).await.expect("server starts");
        let storage = running.server.storage.clone();
        TestServer {
            c2s: running.c2s_addrs[0],
            c2s_tls: running.c2s_tls_addrs[0],
            component: running.component_addrs.first().copied(),
            http: running.http_addrs.first().copied(),
            s2s: running.s2s_addrs.first().copied(),
            s2s_direct_tls: running.s2s_direct_tls_addrs.first().copied(),
            running: Some(running),
            dir,
            storage,
            url,
            pg_db,
            config,
        }
    }

    pub async fn add_user(&self, user: &str, password: &str) {
        self.add_user_at("localhost", user, password).await
    }

    pub async fn add_user_at(&self, host: &str, user: &str, password: &str) {
        let creds = Credentials::new(password, 4096);
        assert!(self.storage.create_user(host, user, &creds).await.unwrap());
    }

    /// Stop the server (clean shutdown) and drop its database.
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        self.cleanup().await;
    }

    /// Stop the server (clean shutdown) and start it again on the same database and data
    /// directory with the same configuration; the listeners get new ports. Clients of the
    /// first run are disconnected.
    pub async fn restart(mut self) -> TestServer {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        let running = starling::server::start(self.config.clone()).await.expect("server restarts");
        self.storage = running.server.storage.clone();
        self.c2s = running.c2s_addrs[0];
        self.c2s_tls = running.c2s_tls_addrs[0];
        self.component = running.component_addrs.first().copied();
        self.http = running.http_addrs.first().copied();
        self.s2s = running.s2s_addrs.first().copied();
        self.s2s_direct_tls = running.s2s_direct_tls_addrs.first().copied();
        self.running = Some(running);
        self
    }

    async fn cleanup(&mut self) {
        if let Some(name) = self.pg_db.take() {
            if let Ok(pool) = sqlx::AnyPool::connect(&pg_admin_url()).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&pool).await;
                pool.close().await;
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Wait (up to the time limit) until the session of `full` is gone from the server.
    pub async fn wait_session_gone(&self, full: &str) {
        let server = &self.running.as_ref().expect("running").server;
        let jid: starling::jid::FullJid = full.parse().expect("a full JID");
        let t = std::time::Instant::now();
        while server.sessions.get(&jid).is_some() {
            assert!(t.elapsed() < TIMEOUT, "the session of {full} is still there");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Log in with STARTTLS + SCRAM-SHA-256 and bind `resource`.
    pub async fn login(&self, user: &str, password: &str, resource: &str) -> Client {
        self.login_at("localhost", user, password, resource).await
    }

    /// Log in to an account of `host` (one of the server's hosts).
    pub async fn login_at(&self, host: &str, user: &str, password: &str, resource: &str) -> Client {
        let mut c = Client::connect(self.c2s).await;
        c.open(host).await;
        c.starttls().await;
        c.open(host).await;
        c.auth_scram(user, password, Hash::Sha256, None).await.expect("authenticates");
        c.open(host).await;
        c.bind(resource).await;
        c
    }

    /// Log in and send initial presence; the client's own presence echo is consumed.
    pub async fn online(&self, user: &str, password: &str, resource: &str) -> Client {
        self.online_at("localhost", user, password, resource).await
    }

    pub async fn online_at(&self, host: &str, user: &str, password: &str, resource: &str) -> Client {
        let mut c = self.login_at(host, user, password, resource).await;
        c.send("<presence/>").await;
        let me = c.jid.clone().unwrap();
        c.recv_where(|e| e.name == "presence" && e.get_attr("from") == Some(me.as_str())).await;
        c
    }
}

/// The test server's certificate is self-signed.
pub fn tls_connector(alpn: Option<&[u8]>) -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(Arc::new(starling::stream::insecure::client_config(alpn)))
}

fn bindings(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    use sha2::Digest;
    let conn = tls.get_ref().1;
    let exporter = conn.export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None).ok();
    let end_point = conn.peer_certificates().and_then(|c| c.first()).map(|c| sha2::Sha256::digest(c.as_ref()).to_vec());
    (exporter, end_point)
}

pub use starling::stream::insecure::accept_any;

pub enum ClientTransport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ClientTransport {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientTransport::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            ClientTransport::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientTransport {
    fn poll_write(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientTransport::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            ClientTransport::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientTransport::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            ClientTransport::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientTransport::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            ClientTransport::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A raw-XML client. Elements that arrive while waiting for something else are queued.
pub struct Client {
    reader: Option<XmlReader<ReadHalf<ClientTransport>>>,
    writer: Option<WriteHalf<ClientTransport>>,
    pub queue: VecDeque<Element>,
    /// Features of the last stream opened.
    pub features: Option<Element>,
    pub jid: Option<String>,
    /// tls-exporter value of the TLS session (for SCRAM-*-PLUS).
    pub exporter: Option<Vec<u8>>,
    /// tls-server-end-point value: SHA-256 of the server certificate (ECDSA P-256 / SHA-256).
    pub end_point: Option<Vec<u8>>,
    next_id: u64,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        Self::from_transport(ClientTransport::Plain(tcp))
    }

    /// Direct TLS (XEP-0368) with ALPN `xmpp-client`.
    pub async fn connect_tls(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tls_connector(Some(b"xmpp-client")).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"xmpp-client"[..]));
        let (exporter, end_point) = bindings(&tls);
        let mut c = Self::from_transport(ClientTransport::Tls(Box::new(tls)));
        c.exporter = exporter;
        c.end_point = end_point;
        c
    }

    /// A client over a TLS connection made elsewhere (direct TLS with another ALPN, say).
    pub fn from_tls(tls: tokio_rustls::client::TlsStream<TcpStream>) -> Client {
        Self::from_transport(ClientTransport::Tls(Box::new(tls)))
    }

    fn from_transport(t: ClientTransport) -> Client {
        let (rd, wr) = tokio::io::split(t);
        Client {
            reader: Some(XmlReader::new(rd, Limits { max_element_bytes: 16 << 20, max_depth: 128 })),
            writer: Some(wr),
            queue: VecDeque::new(),
            features: None,
            jid: None,
            exporter: None,
            end_point: None,
            next_id: 0,
        }
    }

    pub async fn send(&mut self, xml: &str) {
        let w = self.writer.as_mut().unwrap();
        w.write_all(xml.as_bytes()).await.unwrap();
        w.flush().await.unwrap();
    }

    /// Send, tolerating a connection the server already closed.
    pub async fn try_send(&mut self, xml: &[u8]) -> std::io::Result<()> {
        let w = self.writer.as_mut().unwrap();
        w.write_all(xml).await?;
        w.flush().await
    }

    pub async fn event(&mut self) -> Result<XmlEvent, XmlError> {
        match tokio::time::timeout(TIMEOUT, self.reader.as_mut().unwrap().next()).await {
            Ok(r) => r,
            Err(_) => panic!("timed out waiting for the server"),
        }
    }

    /// The next event within `ms`, without panicking: `None` on timeout.
    pub async fn try_event(&mut self, ms: u64) -> Option<Result<XmlEvent, XmlError>> {
        if let Some(e) = self.queue.pop_front() {
            return Some(Ok(XmlEvent::Element(e)));
        }
        tokio::time::timeout(Duration::from_millis(ms), self.reader.as_mut().unwrap().next()).await.ok()
    }

    /// The next element (queued first).
    pub async fn recv(&mut self) -> Element {
        if let Some(e) = self.queue.pop_front() {
            return e;
        }
        match self.event().await {
            Ok(XmlEvent::Element(e)) => e,
            other => panic!("expected an element, got {other:?}"),
        }
    }

    /// The first element matching `pred`; others are kept for later.
    pub async fn recv_where(&mut self, pred: impl Fn(&Element) -> bool) -> Element {
        if let Some(i) = self.queue.iter().position(&pred) {
            return self.queue.remove(i).unwrap();
        }
        loop {
            match self.event().await {
                Ok(XmlEvent::Element(e)) if pred(&e) => return e,
                Ok(XmlEvent::Element(e)) => self.queue.push_back(e),
                other => panic!("expected an element, got {other:?}"),
            }
        }
    }

    /// Nothing arrives within `ms` milliseconds (queued elements count).
    pub async fn expect_silence(&mut self, ms: u64) {
        if let Some(e) = self.queue.pop_front() {
            panic!("unexpected element: {e}");
        }
        if let Ok(ev) = tokio::time::timeout(Duration::from_millis(ms), self.reader.as_mut().unwrap().next()).await {
            panic!("unexpected event: {ev:?}");
        }
    }

    /// Drop queued elements and whatever arrives within `ms`.
    pub async fn drain(&mut self, ms: u64) {
        self.queue.clear();
        while let Ok(Ok(XmlEvent::Element(_))) = tokio::time::timeout(Duration::from_millis(ms), self.reader.as_mut().unwrap().next()).await
        {
        }
    }

    /// Open a stream; returns the features.
    pub async fn open(&mut self, to: &str) -> Element {
        self.send(&format!("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{to}' version='1.0'>")).await;
        match self.event().await {
            Ok(XmlEvent::StreamOpen(h)) => assert_eq!(h.default_ns, ns::CLIENT),
            other => panic!("expected a stream header, got {other:?}"),
        }
        let f = self.recv().await;
        assert!(f.is("features", ns::STREAM), "expected features, got {f}");
        self.features = Some(f.clone());
        f
    }

    /// Expect a stream error; returns its condition. Checks the stream is then closed.
    pub async fn stream_error(&mut self) -> String {
        loop {
            match self.event().await {
                Ok(XmlEvent::StreamOpen(_)) => continue,
                Ok(XmlEvent::Element(e)) if e.is("error", ns::STREAM) => {
                    let cond =
                        e.elements().find(|c| c.ns == ns::STREAM_ERRORS && c.name != "text").map(|c| c.name.clone()).unwrap_or_default();
                    match self.event().await {
                        Ok(XmlEvent::StreamClose) | Err(_) => {}
                        other => panic!("stream not closed after the error: {other:?}"),
                    }
                    return cond;
                }
                Ok(XmlEvent::Element(_)) => continue,
                other => panic!("expected a stream error, got {other:?}"),
            }
        }
    }

    pub async fn starttls(&mut self) {
        self.starttls_with(tls_connector(None)).await
    }

    /// STARTTLS with a TLS client of the caller's (one presenting a certificate, say).
    pub async fn starttls_with(&mut self, connector: tokio_rustls::TlsConnector) {
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").await;
        let p = self.recv().await;
        assert!(p.is("proceed", ns::TLS), "{p}");
        let rd = self.reader.take().unwrap().into_inner().unwrap();
        let t = rd.unsplit(self.writer.take().unwrap());
        let ClientTransport::Plain(tcp) = t else { panic!("already TLS") };
        let tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
        (self.exporter, self.end_point) = bindings(&tls);
        let (rd, wr) = tokio::io::split(ClientTransport::Tls(Box::new(tls)));
        self.reader = Some(XmlReader::new(rd, Limits { max_element_bytes: 16 << 20, max_depth: 128 }));
        self.writer = Some(wr);
    }

    pub fn mechanisms(&self) -> Vec<String> {
        self.features
            .as_ref()
            .and_then(|f| f.find("mechanisms", ns::SASL))
            .map(|m| m.elements().map(|e| e.text_content()).collect())
            .unwrap_or_default()
    }

    /// SCRAM exchange; `Err(condition)` on failure. `plus`: channel-binding type to use.
    pub async fn auth_scram(&mut self, user: &str, password: &str, hash: Hash, plus: Option<&str>) -> Result<(), String> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let cb = plus.map(|t| {
            let data = if t == "tls-server-end-point" { self.end_point.clone() } else { self.exporter.clone() };
            (t, data.unwrap_or_default())
        });
        let mech = match (hash, plus.is_some()) {
            (Hash::Sha1, false) => "SCRAM-SHA-1",
            (Hash::Sha256, false) => "SCRAM-SHA-256",
            (Hash::Sha1, true) => "SCRAM-SHA-1-PLUS",
            (Hash::Sha256, true) => "SCRAM-SHA-256-PLUS",
        };
        let (mut sc, first) = ScramClient::new(hash, user, password, cb);
        self.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mech}'>{}</auth>", b64.encode(first))).await;
        let ch = self.recv().await;
        if ch.is("failure", ns::SASL) {
            return Err(ch.elements().next().map(|e| e.name.clone()).unwrap_or_default());
        }
        assert!(ch.is("challenge", ns::SASL), "{ch}");
        let sf = String::from_utf8(b64.decode(ch.text_content()).unwrap()).unwrap();
        let Some(fin) = sc.client_final(&sf) else {
            return Err("bad server-first".into());
        };
        self.send(&format!("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>", b64.encode(fin))).await;
        let r = self.recv().await;
        if r.is("failure", ns::SASL) {
            return Err(r.elements().next().map(|e| e.name.clone()).unwrap_or_default());
        }
        assert!(r.is("success", ns::SASL), "{r}");
        let v = String::from_utf8(b64.decode(r.text_content()).unwrap()).unwrap();
        assert!(sc.verify_server_final(&v), "server signature must verify");
        let rd = self.reader.take().unwrap();
        self.reader = Some(rd.restart());
        Ok(())
    }

    pub async fn auth_plain(&mut self, user: &str, password: &str) -> Result<(), String> {
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{data}</auth>")).await;
        let r = self.recv().await;
        if r.is("failure", ns::SASL) {
            return Err(r.elements().next().map(|e| e.name.clone()).unwrap_or_default());
        }
        assert!(r.is("success", ns::SASL), "{r}");
        let rd = self.reader.take().unwrap();
        self.reader = Some(rd.restart());
        Ok(())
    }

    /// SASL EXTERNAL with `data` as the `<auth/>` text as sent ("=" for none): `Err` is the
    /// failure's condition.
    pub async fn auth_external(&mut self, data: &str) -> Result<(), String> {
        self.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{data}</auth>")).await;
        let r = self.recv().await;
        if r.is("failure", ns::SASL) {
            assert_eq!(r.elements().count(), 1, "one condition: {r}");
            return Err(r.elements().next().map(|e| e.name.clone()).unwrap_or_default());
        }
        assert!(r.is("success", ns::SASL), "{r}");
        let rd = self.reader.take().unwrap();
        self.reader = Some(rd.restart());
        Ok(())
    }

    pub async fn bind(&mut self, resource: &str) -> String {
        let res = if resource.is_empty() { String::new() } else { format!("<resource>{resource}</resource>") };
        let r = self.iq(&format!("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{res}</bind></iq>")).await;
        assert_eq!(r.get_attr("type"), Some("result"), "{r}");
        let jid = r.find("bind", ns::BIND).unwrap().find("jid", ns::BIND).unwrap().text_content();
        self.jid = Some(jid.clone());
        jid
    }

    pub fn id(&mut self) -> String {
        self.next_id += 1;
        format!("t{}", self.next_id)
    }

    /// Send an iq (its `id` attribute must be set) and wait for the reply with that id.
    pub async fn iq(&mut self, xml: &str) -> Element {
        let el = parse(xml);
        let id = el.get_attr("id").expect("iq needs an id").to_string();
        self.send(xml).await;
        self.recv_where(|e| {
            e.name == "iq" && e.get_attr("id") == Some(id.as_str()) && matches!(e.get_attr("type"), Some("result") | Some("error"))
        })
        .await
    }

    /// Close our stream and wait for the server's close.
    pub async fn close(mut self) {
        let _ = self.try_send(b"</stream:stream>").await;
        loop {
            match tokio::time::timeout(TIMEOUT, self.reader.as_mut().unwrap().next()).await {
                Ok(Ok(XmlEvent::StreamClose)) | Ok(Err(_)) | Err(_) => return,
                Ok(Ok(_)) => continue,
            }
        }
    }
}

/// Parse an XML fragment (test helper).
pub fn parse(xml: &str) -> Element {
    let doc = format!("<s xmlns='jabber:client'>{xml}</s>");
    let mut r = XmlReader::new(doc.as_bytes(), Limits { max_element_bytes: 1 << 20, max_depth: 64 });
    let fut = async move {
        match r.next().await {
            Ok(XmlEvent::StreamOpen(_)) => {}
            other => panic!("{other:?}"),
        }
        match r.next().await {
            Ok(XmlEvent::Element(e)) => e,
            other => panic!("{other:?}"),
        }
    };
    block_on_ready(fut)
}

/// The reader over a byte slice never waits, so polling once to completion is enough.
fn block_on_ready<F: std::future::Future>(fut: F) -> F::Output {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

pub fn error_condition(e: &Element) -> Option<String> {
    e.find("error", ns::CLIENT)
        .and_then(|err| err.elements().find(|c| c.ns == ns::STANZA_ERRORS && c.name != "text").map(|c| c.name.clone()))
}

/// Run a test body once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Db::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Db::Postgres).await
                }
            )*
        }
    };
}
