//! Incoming server-to-server streams: STARTTLS, SASL EXTERNAL with the peer's certificate
//! (XEP-0178) or dialback (as receiving server, and as authoritative server for our own keys),
//! then the stanzas of the verified domain pairs.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::outgoing::open;
use super::{db_element, header, serves, Auth, EXTERNAL, NS_DIALBACK, NS_DIALBACK_FEATURE};
use crate::error::{Condition, StanzaError, StreamError};
use crate::router;
use crate::sasl::{constant_time_eq, decode, Failure};
use crate::server::Server;
use crate::stanza::{new_id, Stanza};
use crate::stream::tls::Transport;
use crate::xml::{escape, ns, Element, Limits, XmlError, XmlEvent, XmlReader};

use crate::stream::{read_next, Reader};
type Writer = WriteHalf<Transport>;

const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Dialback requests a connection may have outstanding at once.
const MAX_PENDING_VERIFICATIONS: usize = 16;

/// The outcome of checking a remote server's key with its authoritative server.
struct Verdict {
    local: String,
    remote: String,
    /// `None`: the authoritative server could not be asked.
    valid: Option<bool>,
}

struct Conn {
    server: Arc<Server>,
    /// `None` only while STARTTLS swaps the transport.
    writer: Option<Writer>,
    out: String,
    tls: bool,
    /// Our id for the current stream (the key the remote server sends is bound to it).
    id: String,
    /// (remote domain, local domain) pairs verified on this connection.
    authorized: HashSet<(String, String)>,
    /// The certificate chain the peer sent in the TLS handshake (empty: none, or no TLS yet);
    /// checked against a domain only when one is claimed (`stream::trust`).
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The current stream header's `from` (the peer's domain), and `to` (ours).
    from: Option<String>,
    to: String,
    /// The peer's certificate verifies for `from`: SASL EXTERNAL is offered (XEP-0178).
    cert_ok: bool,
    /// SASL EXTERNAL succeeded on this connection (it is not offered again).
    sasl_done: bool,
    pending: usize,
    verdicts: mpsc::UnboundedSender<Verdict>,
}

/// Serve one connection from another server, from accept to close (`direct_tls`: TLS first,
/// XEP-0368, instead of STARTTLS).
pub async fn serve(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr, direct_tls: bool) {
    let span = tracing::info_span!("s2s-in", %peer);
    async move {
        let _ = tcp.set_nodelay(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(server.config.c2s.auth_timeout_secs);
        let (transport, chain) = if direct_tls {
            match tokio::time::timeout_at(deadline, server.tls.accept_s2s(tcp, true)).await {
                Ok(Ok((tls, chain))) => (Transport::Tls(Box::new(tls)), chain),
                _ => {
                    tracing::debug!("direct TLS handshake with a remote server failed");
                    return;
                }
            }
        } else {
            (Transport::Plain(tcp), Vec::new())
        };
        let limits = Limits { max_element_bytes: server.config.limits.max_stanza_size, max_depth: server.config.limits.max_depth };
        let (rd, wr) = tokio::io::split(transport);
        let (vtx, mut vrx) = mpsc::unbounded_channel();
        let mut conn = Conn {
            server,
            writer: Some(wr),
            out: String::new(),
            tls: direct_tls,
            id: String::new(),
            authorized: HashSet::new(),
            chain,
            from: None,
            to: String::new(),
            cert_ok: false,
            sasl_done: false,
            pending: 0,
            verdicts: vtx,
        };
        let mut reader: Reader = Box::new(XmlReader::new(rd, limits));
        loop {
            // A stream (the first, or the one after STARTTLS).
            let opened = tokio::time::timeout_at(deadline, conn.open(&mut reader)).await;
            match opened {
                Ok(Ok(())) => {}
                Ok(Err(None)) => return,
                Ok(Err(Some(e))) => return conn.fail(e).await,
                Err(_) => return conn.fail(StreamError::ConnectionTimeout).await,
            }
            match conn.run(reader, &mut vrx, deadline).await {
                Step::StartTls(r) => {
                    let Some(r) = conn.starttls(r).await else { return };
                    reader = r;
                }
                // After SASL success (RFC 6120 section 6.4.6), on the same transport.
                Step::Restart(r) => reader = Box::new(r.restart()),
                Step::End(None) => {
                    conn.out.push_str("</stream:stream>");
                    let _ = conn.flush().await;
                    conn.shutdown().await;
                    return;
                }
                Step::End(Some(e)) => return conn.fail(e).await,
                Step::Gone => return,
            }
        }
    }
    .instrument(span)
    .await
}

impl Drop for Conn {
    fn drop(&mut self) {
        if !self.authorized.is_empty() {
            self.server.s2s.incoming.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

enum Step {
    StartTls(Reader),
    Restart(Reader),
    End(Option<StreamError>),
    Gone,
}

impl Conn {
    async fn flush(&mut self) -> Result<(), ()> {
        let Some(w) = self.writer.as_mut() else { return Err(()) };
        let r = crate::stream::write_within(w, self.out.as_bytes(), WRITE_TIMEOUT).await.map_err(drop);
        self.out.clear();
        r
    }

    /// Stream error, close tag, close (our header first if none was sent).
    async fn fail(mut self, e: StreamError) {
        tracing::debug!(condition = e.condition(), "closing incoming server stream with error");
        if self.id.is_empty() {
            self.out.push_str(&header(self.server.config.default_host(), None, Some(&new_id()), true));
        }
        self.out.push_str(&e.to_xml(None));
        self.out.push_str("</stream:stream>");
        let _ = self.flush().await;
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(w) = self.writer.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(2), w.shutdown()).await;
        }
    }

    /// Read the remote server's header, answer with ours and the features.
    async fn open(&mut self, reader: &mut Reader) -> Result<(), Option<StreamError>> {
        let h = crate::stream::read_header(reader).await?;
        let to = h.attr("to").map(|t| t.to_ascii_lowercase()).unwrap_or_else(|| self.server.config.default_host().to_string());
        let versioned = h.attr("version").is_some_and(|v| v.starts_with('1'));
        self.id = new_id();
        self.out.push_str(&header(&to, h.attr("from"), Some(&self.id), versioned));
        if h.ns != ns::STREAM {
            return Err(Some(StreamError::InvalidNamespace));
        }
        if h.default_ns != ns::SERVER {
            return Err(Some(StreamError::InvalidNamespace));
        }
        if !serves(&self.server, &to) || !self.server.s2s.enabled() {
            return Err(Some(StreamError::HostUnknown));
        }
        self.from = h.attr("from").and_then(domain_only);
        self.to = to;
        let verified = self.tls && self.from.as_deref().is_some_and(|f| self.verifies(f));
        self.cert_ok = verified;
        if versioned {
            let mut f = String::from("<stream:features>");
            if !self.tls {
                f.push_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>");
                if self.server.config.s2s.require_tls {
                    f.push_str("<required/>");
                }
                f.push_str("</starttls>");
            }
            if verified && !self.sasl_done {
                let mechanism = Element::new("mechanism", ns::SASL).text(EXTERNAL);
                f.push_str(&Element::new("mechanisms", ns::SASL).child(mechanism).to_xml());
            }
            // With s2s.require_valid_certificates, dialback only where a certificate also
            // vouches for the domain (XEP-0178 section 3: a peer without one may be refused).
            if !self.server.config.s2s.require_valid_certificates || verified {
                f.push_str(&format!("<dialback xmlns='{NS_DIALBACK_FEATURE}'><errors/></dialback>"));
            }
            f.push_str("</stream:features>");
            self.out.push_str(&f);
        }
        self.flush().await.map_err(|_| None)
    }

    async fn starttls(&mut self, reader: Reader) -> Option<Reader> {
        self.out.push_str("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        self.flush().await.ok()?;
        let limits =
            Limits { max_element_bytes: self.server.config.limits.max_stanza_size, max_depth: self.server.config.limits.max_depth };
        let rd = reader.into_inner().ok()?;
        let wr = self.writer.take()?;
        let Transport::Plain(tcp) = rd.unsplit(wr) else { return None };
        let tls = match tokio::time::timeout(Duration::from_secs(30), self.server.tls.accept_s2s(tcp, false)).await {
            Ok(Ok((t, chain))) => {
                self.chain = chain;
                t
            }
            _ => {
                tracing::debug!("STARTTLS handshake with a remote server failed");
                return None;
            }
        };
        let (rd, wr) = tokio::io::split(Transport::Tls(Box::new(tls)));
        self.writer = Some(wr);
        self.tls = true;
        self.id.clear();
        Some(Box::new(XmlReader::new(rd, limits)))
    }

    /// The stream's elements, until it ends or STARTTLS. A connection that has verified no
    /// domain (and is verifying none) by `deadline` is closed with `connection-timeout`.
    async fn run(&mut self, reader: Reader, verdicts: &mut mpsc::UnboundedReceiver<Verdict>, deadline: tokio::time::Instant) -> Step {
        use std::task::Poll;
        let mut read = std::pin::pin!(read_next(reader));
        let mut unauthenticated = std::pin::pin!(tokio::time::sleep_until(deadline));
        let mut shutdown = self.server.shutdown.clone();
        let mut stopping = std::pin::pin!(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        });
        loop {
            if !self.out.is_empty() && self.flush().await.is_err() {
                return Step::Gone;
            }
            enum Ev {
                Verdict(Verdict),
                Read(Reader, Result<XmlEvent, XmlError>),
                TimedOut,
                Stopping,
            }
            let idle_unverified = self.authorized.is_empty() && self.pending == 0;
            let ev = std::future::poll_fn(|cx| {
                if let Poll::Ready(Some(v)) = verdicts.poll_recv(cx) {
                    return Poll::Ready(Ev::Verdict(v));
                }
                if let Poll::Ready((r, ev)) = read.as_mut().poll(cx) {
                    return Poll::Ready(Ev::Read(r, ev));
                }
                if idle_unverified && unauthenticated.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ev::TimedOut);
                }
                if stopping.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ev::Stopping);
                }
                Poll::Pending
            })
            .await;
            match ev {
                Ev::TimedOut => return Step::End(Some(StreamError::ConnectionTimeout)),
                Ev::Stopping => return Step::End(Some(StreamError::SystemShutdown)),
                Ev::Verdict(v) => self.verdict(v),
                Ev::Read(r, Ok(XmlEvent::Element(el))) => {
                    if el.is("starttls", ns::TLS) {
                        if self.tls {
                            return Step::End(Some(StreamError::PolicyViolation));
                        }
                        return Step::StartTls(r);
                    }
                    if el.is("auth", ns::SASL) {
                        match self.auth(&el) {
                            Ok(()) => {
                                // <success/> goes out before the peer's new header is read.
                                if self.flush().await.is_err() {
                                    return Step::Gone;
                                }
                                return Step::Restart(r);
                            }
                            Err(f) => {
                                tracing::info!(from = ?self.from, condition = f.condition(), "SASL EXTERNAL refused");
                                self.out.push_str(&f.to_element().to_xml());
                            }
                        }
                        read.set(read_next(r));
                        continue;
                    }
                    read.set(read_next(r));
                    if let Err(e) = self.element(el).await {
                        return Step::End(Some(e));
                    }
                }
                Ev::Read(_, Ok(XmlEvent::StreamClose)) => return Step::End(None),
                Ev::Read(_, Ok(XmlEvent::StreamOpen(_))) => return Step::End(Some(StreamError::NotWellFormed)),
                Ev::Read(_, Err(XmlError::Eof | XmlError::Io(_))) => return Step::Gone,
                Ev::Read(_, Err(e)) => {
                    tracing::debug!(error = %e, "bad XML from a remote server");
                    return Step::End(Some(StreamError::from(&e)));
                }
            }
        }
    }

    /// Does the peer's certificate authenticate `domain`?
    fn verifies(&self, domain: &str) -> bool {
        match self.server.tls.trust.verify(&self.chain, domain) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(%domain, error = %e, "the remote server's certificate does not authenticate it");
                false
            }
        }
    }

    /// A pair is authenticated on this connection.
    fn authorize(&mut self, remote: String, local: String, how: Auth) {
        tracing::info!(%remote, %local, ?how, "remote server verified");
        if self.authorized.is_empty() {
            self.server.s2s.incoming.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.server.s2s.count(how);
        self.authorized.insert((remote, local));
    }

    /// `<auth mechanism='EXTERNAL'/>` (XEP-0178 section 3): the certificate the peer presented
    /// authenticates the stream's `from`; the authorization identity, if any, must be that
    /// domain. `Ok`: `<success/>` is queued and the stream restarts. A failure leaves the
    /// stream open, for dialback.
    fn auth(&mut self, el: &Element) -> Result<(), Failure> {
        if !self.tls {
            return Err(Failure::EncryptionRequired);
        }
        if el.get_attr("mechanism") != Some(EXTERNAL) || self.sasl_done {
            // Only EXTERNAL is offered, and once.
            return Err(Failure::InvalidMechanism);
        }
        let Some(from) = self.from.clone().filter(|_| self.cert_ok) else {
            // No certificate for `from` (or no `from`): section 3, step 11.
            return Err(Failure::NotAuthorized);
        };
        let text = el.text_content();
        let authzid = if text.trim().is_empty() { Vec::new() } else { decode(&text)? };
        let authzid = std::str::from_utf8(&authzid).map_err(|_| Failure::IncorrectEncoding)?;
        if !authzid.is_empty() && !authzid.eq_ignore_ascii_case(&from) {
            return Err(Failure::InvalidAuthzid);
        }
        if !self.server.s2s.allows(&from) {
            return Err(Failure::NotAuthorized);
        }
        self.out.push_str(&Element::new("success", ns::SASL).to_xml());
        self.sasl_done = true;
        self.cert_ok = false;
        let local = self.to.clone();
        self.authorize(from, local, Auth::ExternalIn);
        Ok(())
    }

    /// One top-level element from the remote server.
    async fn element(&mut self, el: Element) -> Result<(), StreamError> {
        if el.ns == NS_DIALBACK {
            if self.server.config.s2s.require_tls && !self.tls {
                // RFC 6120 section 5.3.1: TLS is required first.
                return Err(StreamError::PolicyViolation);
            }
            return match el.name.as_str() {
                "result" if el.get_attr("type").is_none() => self.result(&el),
                "verify" if el.get_attr("type").is_none() => {
                    self.verify(&el);
                    Ok(())
                }
                _ => Err(StreamError::UnsupportedStanzaType),
            };
        }
        if el.ns != ns::SERVER || Stanza::kind_of(&el).is_none() {
            return Err(StreamError::UnsupportedStanzaType);
        }
        if self.authorized.is_empty() {
            // RFC 6120 section 4.9.3.12.
            return Err(StreamError::NotAuthorized);
        }
        let (Some(from), Some(to)) = (el.get_attr("from"), el.get_attr("to")) else {
            return Err(StreamError::ImproperAddressing);
        };
        let (Some(from_domain), Some(to_domain)) = (domain_of(from), domain_of(to)) else {
            return Err(StreamError::ImproperAddressing);
        };
        if !self.authorized.iter().any(|(r, _)| *r == from_domain) {
            return Err(StreamError::InvalidFrom);
        }
        if !self.authorized.contains(&(from_domain, to_domain)) {
            return Err(StreamError::HostUnknown);
        }
        let mut el = el;
        el.move_ns(ns::SERVER, ns::CLIENT);
        match Stanza::parse(el) {
            Ok(st) => router::route(&self.server, st).await,
            Err(bad) => {
                // Answered through our own link to that server, as every stanza to it.
                let (el, e) = *bad;
                if let Some(reply) = e.reply_to(&el) {
                    if let Ok(st) = Stanza::parse(reply) {
                        router::route(&self.server, st).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// `<db:result/>` with a key: the remote server asks to send as `from` to our `to`.
    fn result(&mut self, el: &Element) -> Result<(), StreamError> {
        let (Some(remote), Some(local)) = (el.get_attr("from").and_then(domain_only), el.get_attr("to").and_then(domain_only)) else {
            return Err(StreamError::ImproperAddressing);
        };
        let key = el.text_content().trim().to_string();
        if !serves(&self.server, &local) {
            self.out.push_str(&db_error("result", &local, &remote, None, Condition::ItemNotFound));
            return Ok(());
        }
        if !self.server.s2s.allows(&remote) {
            self.out.push_str(&db_error("result", &local, &remote, None, Condition::Forbidden));
            return Ok(());
        }
        if self.server.config.s2s.require_valid_certificates && !self.verifies(&remote) {
            // Dialback alone is not enough here (s2s.require_valid_certificates): RFC 6120
            // section 4.9.3.12, not authorized to negotiate so.
            tracing::info!(%remote, "dialback refused: the remote server's certificate does not authenticate it");
            return Err(StreamError::NotAuthorized);
        }
        if self.authorized.contains(&(remote.clone(), local.clone())) {
            self.out.push_str(&db_element("result", &local, &remote, None, Some("valid"), None));
            return Ok(());
        }
        if self.pending >= MAX_PENDING_VERIFICATIONS {
            return Err(StreamError::PolicyViolation);
        }
        self.pending += 1;
        let server = self.server.clone();
        let tx = self.verdicts.clone();
        let id = self.id.clone();
        tokio::spawn(
            async move {
                let timeout = Duration::from_secs(server.config.s2s.connect_timeout_secs);
                let valid = tokio::time::timeout(timeout, ask_authoritative(&server, &local, &remote, &id, &key)).await.ok().flatten();
                let _ = tx.send(Verdict { local, remote, valid });
            }
            .in_current_span(),
        );
        Ok(())
    }

    fn verdict(&mut self, v: Verdict) {
        self.pending = self.pending.saturating_sub(1);
        match v.valid {
            Some(true) => {
                self.out.push_str(&db_element("result", &v.local, &v.remote, None, Some("valid"), None));
                self.authorize(v.remote, v.local, Auth::DialbackIn);
            }
            Some(false) => {
                tracing::info!(remote = %v.remote, local = %v.local, "remote server's dialback key refused");
                self.out.push_str(&db_element("result", &v.local, &v.remote, None, Some("invalid"), None));
            }
            None => {
                // XEP-0220 section 2.4: the authoritative server could not be asked.
                self.out.push_str(&db_error("result", &v.local, &v.remote, None, Condition::RemoteServerNotFound));
            }
        }
    }

    /// `<db:verify/>`: a receiving server asks whether a key we sent on our outgoing stream to
    /// it is ours (we are the authoritative server for `to`).
    fn verify(&mut self, el: &Element) {
        let (Some(receiving), Some(local), Some(id)) =
            (el.get_attr("from").and_then(domain_only), el.get_attr("to").and_then(domain_only), el.get_attr("id"))
        else {
            return;
        };
        if !serves(&self.server, &local) {
            self.out.push_str(&db_error("verify", &local, &receiving, Some(id), Condition::ItemNotFound));
            return;
        }
        let expected = self.server.s2s.dialback_key(&receiving, &local, id);
        let given = el.text_content().trim().to_ascii_lowercase();
        let typ = if constant_time_eq(expected.as_bytes(), given.as_bytes()) { "valid" } else { "invalid" };
        self.out.push_str(&db_element("verify", &local, &receiving, Some(id), Some(typ), None));
    }
}

/// Check a key with `remote`'s authoritative server: `<db:verify/>` on a connection of our own.
/// `None` when it could not be asked.
async fn ask_authoritative(server: &Server, local: &str, remote: &str, id: &str, key: &str) -> Option<bool> {
    let mut s = match open(server, local, remote).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(error = %e, %remote, "could not reach the authoritative server");
            return None;
        }
    };
    s.write(&db_element("verify", local, remote, Some(id), None, Some(key))).await.ok()?;
    let verdict = loop {
        let el = s.next().await.ok()?;
        if el.is("verify", NS_DIALBACK) && el.get_attr("id") == Some(id) && el.get_attr("from") == Some(remote) {
            break match el.get_attr("type") {
                Some("valid") => Some(true),
                Some("invalid") => Some(false),
                _ => None,
            };
        }
    };
    s.close().await;
    verdict
}

/// A dialback error (XEP-0220 section 2.4), for peers that announced `<errors/>` support and
/// those that did not alike (the latter close the stream on it, which is the right outcome).
fn db_error(name: &str, from: &str, to: &str, id: Option<&str>, condition: Condition) -> String {
    let mut s = format!("<db:{name} from='{}' to='{}' type='error'", escape(from), escape(to));
    if let Some(id) = id {
        s.push_str(&format!(" id='{}'", escape(id)));
    }
    s.push('>');
    // The <error/> inherits the stream's jabber:server, as a stanza's does.
    s.push_str(&StanzaError::new(condition).to_element().to_xml_in(ns::CLIENT));
    s.push_str(&format!("</db:{name}>"));
    s
}

/// The domain of an address (lowercased), or `None` if it is not one.
fn domain_of(jid: &str) -> Option<String> {
    crate::jid::Jid::new(jid).ok().map(|j| j.domain().as_str().to_string())
}

/// A bare domain (no node, no resource), lowercased.
fn domain_only(s: &str) -> Option<String> {
    let d = domain_of(s)?;
    (d.eq_ignore_ascii_case(s)).then_some(d)
}
