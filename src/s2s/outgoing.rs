//! Outgoing server-to-server streams: finding the remote server, connecting, STARTTLS, SASL
//! EXTERNAL (XEP-0178) when the remote server's certificate verifies and it offers it, else
//! dialback, then the link that carries stanzas for one (local, remote) domain pair.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tracing::Instrument;

use super::{bounce_item, db_element, header, queued_stanza, Auth, EXTERNAL, NS_DIALBACK};
use crate::error::{Condition, StreamError};
use crate::server::Server;
use crate::session::mailbox;
use crate::session::Deliver;
use crate::stream::tls::Transport;
use crate::xml::{ns, Element, Limits, XmlError, XmlEvent, XmlReader};

use crate::stream::{read_next, Reader};
type Writer = WriteHalf<Transport>;

/// Writes that take longer than this mean the remote server stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// The port of server-to-server streams when DNS names none (RFC 6120 section 3.2.1).
const DEFAULT_PORT: u16 = 5269;

/// Why an outgoing stream could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OutError {
    #[error("no address answered ({0})")]
    Unreachable(String),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("the remote server offers no TLS and s2s.require_tls is set")]
    NoTls,
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("stream error from the remote server: {0}")]
    Stream(String),
    #[error("dialback refused")]
    Refused,
    #[error("dialback error from the remote server")]
    DialbackError,
    #[error("the remote server's certificate does not authenticate it ({0}) and s2s.require_valid_certificates is set")]
    Untrusted(String),
    #[error("protocol: {0}")]
    Protocol(&'static str),
    #[error("connection lost")]
    Lost,
}

/// An outgoing stream, negotiated up to authentication.
pub struct OutStream {
    reader: Reader,
    writer: Writer,
    /// The id the remote server gave its stream header.
    pub id: String,
    /// Its `<stream:features/>`.
    pub features: Element,
    /// Whether the remote server's certificate authenticates the remote domain (`Err`: why
    /// not; also when there was no TLS).
    pub verified: Result<(), String>,
}

impl OutStream {
    pub async fn write(&mut self, s: &str) -> Result<(), OutError> {
        crate::stream::write_within(&mut self.writer, s.as_bytes(), WRITE_TIMEOUT).await.map_err(|_| OutError::Lost)
    }

    /// The next element; a stream error or the end of the stream is an error.
    pub async fn next(&mut self) -> Result<Element, OutError> {
        match self.reader.next().await {
            Ok(XmlEvent::Element(el)) if el.is("error", ns::STREAM) => {
                let cond = el.elements().next().map(|c| c.name.clone()).unwrap_or_default();
                Err(OutError::Stream(cond))
            }
            Ok(XmlEvent::Element(el)) => Ok(el),
            Ok(_) | Err(_) => Err(OutError::Lost),
        }
    }

    /// Close the stream politely.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.writer.write_all(b"</stream:stream>").await;
            let _ = self.writer.shutdown().await;
        })
        .await;
    }
}

/// An address to try: "host:port", and whether it takes direct TLS (XEP-0368) there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: String,
    pub direct_tls: bool,
}

/// Where `remote`'s server-to-server service is: a configured route ("tls:host:port" for
/// direct TLS), else DNS SRV records for direct TLS (`_xmpps-server._tcp`, XEP-0368) and
/// STARTTLS (`_xmpp-server._tcp`, RFC 6120 section 3.2.1), else the domain itself on 5269.
async fn candidates(server: &Server, remote: &str) -> Vec<Target> {
    if let Some(r) = server.s2s.route_of(remote) {
        return match r.strip_prefix("tls:") {
            Some(addr) => vec![Target { addr: addr.to_string(), direct_tls: true }],
            None => vec![Target { addr: r, direct_tls: false }],
        };
    }
    let Some(resolver) = resolver() else { return from_srv(remote, None, None) };
    let lookup = |service: &'static str| {
        let name = format!("{service}.{remote}.");
        async move { resolver.srv_lookup(name).await.map(|srv| srv.iter().cloned().collect::<Vec<_>>()).ok() }
    };
    let (direct, starttls) = tokio::join!(lookup("_xmpps-server._tcp"), lookup("_xmpp-server._tcp"));
    from_srv(remote, direct, starttls)
}

/// The addresses to try, from the SRV records found (`None`: no answer) for direct TLS and for
/// STARTTLS: by priority, the heavier first within one, direct TLS first on a tie; then the
/// domain on 5269 as the last resort. A STARTTLS record whose target is "." says the domain
/// offers no server-to-server service (RFC 2782; RFC 6120 section 3.2.1).
fn from_srv(
    remote: &str,
    direct: Option<Vec<hickory_resolver::proto::rr::rdata::SRV>>,
    starttls: Option<Vec<hickory_resolver::proto::rr::rdata::SRV>>,
) -> Vec<Target> {
    let mut records: Vec<(hickory_resolver::proto::rr::rdata::SRV, bool)> = Vec::new();
    records.extend(direct.into_iter().flatten().map(|r| (r, true)));
    records.extend(starttls.into_iter().flatten().map(|r| (r, false)));
    records.sort_by_key(|(r, direct)| (r.priority(), std::cmp::Reverse(r.weight()), !direct));
    let mut out = Vec::new();
    for (r, direct_tls) in records {
        let target = r.target().to_ascii();
        let target = target.trim_end_matches('.');
        if target.is_empty() {
            if direct_tls {
                continue;
            }
            return Vec::new();
        }
        out.push(Target { addr: format!("{target}:{}", r.port()), direct_tls });
    }
    out.push(Target { addr: format!("{remote}:{DEFAULT_PORT}"), direct_tls: false });
    out
}

fn resolver() -> Option<&'static hickory_resolver::TokioAsyncResolver> {
    static R: std::sync::OnceLock<Option<hickory_resolver::TokioAsyncResolver>> = std::sync::OnceLock::new();
    R.get_or_init(|| match hickory_resolver::TokioAsyncResolver::tokio_from_system_conf() {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "no DNS resolver configuration; federation uses s2s.routes and plain host names");
            None
        }
    })
    .as_ref()
}

/// Connect to `remote`'s server for `local`, and negotiate up to authentication: direct TLS
/// or stream headers then STARTTLS when offered (required unless `s2s.require_tls = false`).
/// Each address is tried in turn until one gets that far.
pub async fn open(server: &Server, local: &str, remote: &str) -> Result<OutStream, OutError> {
    let mut last = String::from("no address");
    for target in candidates(server, remote).await {
        match open_at(server, &target, local, remote).await {
            Ok(s) => return Ok(s),
            Err(e) => {
                tracing::debug!(addr = %target.addr, direct_tls = target.direct_tls, error = %e, "remote server address failed");
                last = format!("{}: {e}", target.addr);
            }
        }
    }
    Err(OutError::Unreachable(last))
}

async fn open_at(server: &Server, target: &Target, local: &str, remote: &str) -> Result<OutStream, OutError> {
    let tcp = match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&target.addr)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(OutError::Connect(e)),
        Err(_) => return Err(OutError::Connect(std::io::ErrorKind::TimedOut.into())),
    };
    let _ = tcp.set_nodelay(true);
    let limits = Limits { max_element_bytes: server.config.limits.max_stanza_size, max_depth: server.config.limits.max_depth };
    let name = rustls::pki_types::ServerName::try_from(remote.to_string()).map_err(|_| OutError::Protocol("domain is no TLS name"))?;
    let fresh = |t: Transport| {
        // The certificate is checked once, here, for the domain we connected for.
        let verified = match &t {
            Transport::Client(tls) => {
                server.tls.trust.verify(tls.get_ref().1.peer_certificates().unwrap_or_default(), remote).map_err(|e| e.to_string())
            }
            _ => Err("no TLS".to_string()),
        };
        let (rd, wr) = tokio::io::split(t);
        OutStream {
            reader: Box::new(XmlReader::new(rd, limits)),
            writer: wr,
            id: String::new(),
            features: Element::new("features", ns::STREAM),
            verified,
        }
    };
    if target.direct_tls {
        let tls = server.tls.s2s_connector(local, true).connect(name, tcp).await.map_err(OutError::Tls)?;
        let mut s = fresh(Transport::Client(Box::new(tls)));
        start(&mut s, local, remote).await?;
        return Ok(s);
    }
    let mut s = fresh(Transport::Plain(tcp));
    start(&mut s, local, remote).await?;
    if s.features.find("starttls", ns::TLS).is_some() {
        s.write(&Element::new("starttls", ns::TLS).to_xml()).await?;
        let el = s.next().await?;
        if !el.is("proceed", ns::TLS) {
            return Err(OutError::Protocol("STARTTLS refused"));
        }
        let OutStream { reader, writer, .. } = s;
        let rd = reader.into_inner().map_err(|_| OutError::Protocol("data after proceed"))?;
        let Transport::Plain(tcp) = rd.unsplit(writer) else { return Err(OutError::Protocol("TLS twice")) };
        let tls = server.tls.s2s_connector(local, false).connect(name, tcp).await.map_err(OutError::Tls)?;
        s = fresh(Transport::Client(Box::new(tls)));
        start(&mut s, local, remote).await?;
    } else if server.config.s2s.require_tls {
        return Err(OutError::NoTls);
    }
    Ok(s)
}

/// Our stream header, theirs, and their features.
async fn start(s: &mut OutStream, local: &str, remote: &str) -> Result<(), OutError> {
    s.write(&header(local, Some(remote), None, true)).await?;
    let h = match s.reader.next().await {
        Ok(XmlEvent::StreamOpen(h)) => h,
        Ok(_) => return Err(OutError::Protocol("no stream header")),
        Err(XmlError::Eof | XmlError::Io(_)) => return Err(OutError::Lost),
        Err(_) => return Err(OutError::Protocol("bad XML")),
    };
    if h.ns != ns::STREAM || h.default_ns != ns::SERVER {
        return Err(OutError::Protocol("not a server stream"));
    }
    s.id = h.attr("id").unwrap_or_default().to_string();
    if s.id.is_empty() {
        return Err(OutError::Protocol("stream header without id"));
    }
    if h.attr("version").is_some_and(|v| v.starts_with('1')) {
        let f = s.next().await?;
        if !f.is("features", ns::STREAM) {
            return Err(OutError::Protocol("no stream features"));
        }
        s.features = f;
    }
    Ok(())
}

/// Does the remote server offer SASL EXTERNAL?
fn offers_external(features: &Element) -> bool {
    features
        .find("mechanisms", ns::SASL)
        .is_some_and(|m| m.elements().any(|c| c.is("mechanism", ns::SASL) && c.text_content().trim() == EXTERNAL))
}

/// SASL EXTERNAL as the initiating server (XEP-0178 section 3), with our domain as the
/// authorization identity (which the XEP asks for, for older receivers). On `<success/>` the
/// stream restarts (RFC 6120 section 6.4.6) and `Ok(true)` comes back with the new stream; a
/// `<failure/>` leaves the stream as it was, for dialback.
async fn external(s: OutStream, local: &str, remote: &str) -> Result<(OutStream, bool), OutError> {
    let mut s = s;
    let auth = Element::new("auth", ns::SASL).attr("mechanism", EXTERNAL).text(crate::sasl::credentials::b64(local.as_bytes()));
    s.write(&auth.to_xml()).await?;
    let el = s.next().await?;
    if el.is("failure", ns::SASL) {
        let condition = el.elements().next().map(|c| c.name.clone()).unwrap_or_default();
        tracing::info!(%condition, "SASL EXTERNAL refused by the remote server; dialback instead");
        return Ok((s, false));
    }
    if !el.is("success", ns::SASL) {
        return Err(OutError::Protocol("no SASL outcome"));
    }
    let OutStream { reader, writer, verified, .. } = s;
    let mut s = OutStream {
        reader: Box::new(reader.restart()),
        writer,
        id: String::new(),
        features: Element::new("features", ns::STREAM),
        verified,
    };
    start(&mut s, local, remote).await?;
    Ok((s, true))
}

/// Authenticate a stream of ours: SASL EXTERNAL when the remote server's certificate verified
/// and it offers the mechanism, else dialback (unless s2s.require_valid_certificates refuses a
/// server whose certificate did not verify).
async fn authenticate(server: &Server, s: OutStream, local: &str, remote: &str) -> Result<OutStream, OutError> {
    if let Err(why) = &s.verified {
        if server.config.s2s.require_valid_certificates {
            let e = OutError::Untrusted(why.clone());
            s.close().await;
            return Err(e);
        }
        tracing::debug!(reason = %why, "the remote server's certificate does not authenticate it: dialback");
    }
    let mut s = s;
    if s.verified.is_ok() && offers_external(&s.features) {
        let (back, ok) = external(s, local, remote).await?;
        s = back;
        if ok {
            server.s2s.count(Auth::ExternalOut);
            return Ok(s);
        }
    }
    dialback(server, &mut s, local, remote).await?;
    server.s2s.count(Auth::DialbackOut);
    Ok(s)
}

/// Dialback as the initiating server: send our key for (local -> remote), wait for the verdict.
async fn dialback(server: &Server, s: &mut OutStream, local: &str, remote: &str) -> Result<(), OutError> {
    // Sent whether or not the features name dialback: servers that predate the stream feature
    // take it when the header declares its namespace (XEP-0220 section 2.1.1).
    let key = server.s2s.dialback_key(remote, local, &s.id);
    s.write(&db_element("result", local, remote, None, None, Some(&key))).await?;
    loop {
        let el = s.next().await?;
        if el.is("result", NS_DIALBACK) && el.get_attr("from") == Some(remote) && el.get_attr("to") == Some(local) {
            return match el.get_attr("type") {
                Some("valid") => Ok(()),
                Some("error") => Err(OutError::DialbackError),
                _ => Err(OutError::Refused),
            };
        }
        tracing::debug!(name = %el.name, "ignored while waiting for the dialback result");
    }
}

/// One (local, remote) link: set up, then write what the mailbox brings until it goes idle,
/// the remote server closes, or the server shuts down.
pub async fn run(server: Arc<Server>, pair: (String, String), tx: mailbox::Sender, mut rx: mailbox::Receiver) {
    let span = tracing::info_span!("s2s-out", local = %pair.0, remote = %pair.1);
    async move {
        let timeout = Duration::from_secs(server.config.s2s.connect_timeout_secs);
        let setup = tokio::time::timeout(timeout, async {
            let s = open(&server, &pair.0, &pair.1).await?;
            authenticate(&server, s, &pair.0, &pair.1).await
        })
        .await;
        let s = match setup {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::info!(error = %e, "federation link failed");
                // XEP-0220 section 2.4: after a dialback error, queued stanzas go back with a
                // timeout; otherwise the server could not be reached or refused us.
                let condition = match e {
                    OutError::DialbackError => Condition::RemoteServerTimeout,
                    _ => Condition::RemoteServerNotFound,
                };
                return fail(&server, &pair, &tx, &mut rx, condition).await;
            }
            Err(_) => {
                tracing::info!("federation link timed out");
                return fail(&server, &pair, &tx, &mut rx, Condition::RemoteServerTimeout).await;
            }
        };
        tracing::info!("federation link up");
        let end = serve(&server, s, &mut rx).await;
        server.s2s.forget(&pair, &tx);
        tracing::info!(?end, "federation link closed");
        // What arrived after the link ended takes a new link (unless the server is stopping).
        if *server.shutdown.borrow() {
            return;
        }
        rx.close();
        while let Some(d) = rx.try_recv() {
            if let Some(st) = queued_stanza(d) {
                crate::router::route(&server, st).await;
            }
        }
    }
    .instrument(span)
    .await
}

/// The link could not be set up: bounce what waited for it.
async fn fail(server: &Server, pair: &(String, String), tx: &mailbox::Sender, rx: &mut mailbox::Receiver, condition: Condition) {
    server.s2s.forget(pair, tx);
    rx.close();
    while let Some(d) = rx.try_recv() {
        bounce_item(server, d, condition).await;
    }
}

#[derive(Debug)]
enum End {
    Idle,
    Closed,
    Error(StreamError),
    Lost,
}

async fn serve(server: &Server, s: OutStream, rx: &mut mailbox::Receiver) -> End {
    use std::future::Future;
    use std::task::Poll;
    let OutStream { reader, writer, .. } = s;
    let mut s_writer = writer;
    let idle = Duration::from_secs(server.config.s2s.idle_timeout_secs);
    let mut read = std::pin::pin!(read_next(reader));
    let mut out = String::new();
    let mut sleep = std::pin::pin!(tokio::time::sleep(idle));
    let end = loop {
        enum Ev {
            Mail(Option<Deliver>),
            Read(Result<XmlEvent, XmlError>),
            Idle,
        }
        // Idle: nothing either way for `idle` since the last event.
        sleep.as_mut().reset(tokio::time::Instant::now() + idle);
        let ev = std::future::poll_fn(|cx| {
            if let Poll::Ready(d) = rx.poll_recv(cx) {
                return Poll::Ready(Ev::Mail(d));
            }
            if let Poll::Ready((reader, ev)) = read.as_mut().poll(cx) {
                read.set(read_next(reader));
                return Poll::Ready(Ev::Read(ev));
            }
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ev::Idle);
            }
            Poll::Pending
        })
        .await;
        match ev {
            Ev::Mail(Some(Deliver::Stanza(o))) => {
                o.write_to_link(&mut out);
                // Whatever else is queued goes out in the same write.
                let mut close = None;
                while let Some(d) = rx.try_recv() {
                    match d {
                        Deliver::Stanza(o) => o.write_to_link(&mut out),
                        Deliver::Close(e) => {
                            close = Some(e);
                            break;
                        }
                    }
                }
                if write(&mut s_writer, &mut out).await.is_err() {
                    break End::Lost;
                }
                if let Some(e) = close {
                    break End::Error(e);
                }
            }
            Ev::Mail(Some(Deliver::Close(e))) => break End::Error(e),
            Ev::Mail(None) => break End::Closed,
            Ev::Read(Ok(XmlEvent::Element(el))) => {
                // Nothing but dialback answers and errors is expected on an outgoing stream.
                if el.is("error", ns::STREAM) {
                    tracing::info!(condition = ?el.elements().next().map(|c| c.name.clone()), "stream error from the remote server");
                    break End::Lost;
                }
                tracing::debug!(name = %el.name, "ignored on an outgoing stream");
            }
            Ev::Read(Ok(XmlEvent::StreamClose)) => break End::Closed,
            Ev::Read(Ok(XmlEvent::StreamOpen(_))) => break End::Error(StreamError::NotWellFormed),
            Ev::Read(Err(XmlError::Eof | XmlError::Io(_))) => break End::Lost,
            Ev::Read(Err(e)) => break End::Error(StreamError::from(&e)),
            Ev::Idle => break End::Idle,
        }
    };
    match &end {
        End::Error(e) => out.push_str(&e.to_xml(None)),
        End::Lost => return end,
        _ => {}
    }
    out.push_str("</stream:stream>");
    let _ = write(&mut s_writer, &mut out).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), s_writer.shutdown()).await;
    end
}

async fn write(w: &mut Writer, out: &mut String) -> Result<(), ()> {
    let r = crate::stream::write_within(w, out.as_bytes(), WRITE_TIMEOUT).await.map_err(drop);
    out.clear();
    r
}

#[cfg(test)]
mod tests {
    use super::{from_srv, Target};
    use hickory_resolver::proto::rr::rdata::SRV;
    use hickory_resolver::Name;

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> SRV {
        SRV::new(priority, weight, port, Name::from_ascii(target).unwrap())
    }

    #[test]
    fn srv_records_are_tried_by_priority_then_weight_then_the_domain() {
        let plain = |a: &str| Target { addr: a.to_string(), direct_tls: false };
        let tls = |a: &str| Target { addr: a.to_string(), direct_tls: true };
        let got = from_srv(
            "example.org",
            Some(vec![srv(10, 50, 5270, "a.example.org.")]),
            Some(vec![srv(20, 0, 5270, "backup.example.org."), srv(10, 5, 5269, "b.example.org."), srv(10, 50, 5269, "a.example.org.")]),
        );
        assert_eq!(
            got,
            [
                tls("a.example.org:5270"),
                plain("a.example.org:5269"),
                plain("b.example.org:5269"),
                plain("backup.example.org:5270"),
                plain("example.org:5269")
            ]
        );
        assert_eq!(from_srv("example.org", None, None), [plain("example.org:5269")]);
        // "." for STARTTLS: no server-to-server service at all; for direct TLS: just not that.
        assert!(from_srv("example.org", None, Some(vec![srv(0, 0, 0, ".")])).is_empty());
        assert_eq!(from_srv("example.org", Some(vec![srv(0, 0, 0, ".")]), None), [plain("example.org:5269")]);
    }
}
