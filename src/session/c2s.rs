//! A client connection, from TCP accept to close: direct TLS or STARTTLS, SASL, resource
//! binding, then the session loop over the parsed input, the mailbox (which also carries
//! server shutdown) and resumption requests.
//!
//! Negotiation is sequential (one element in, one answer out) and runs in its own allocation,
//! freed once the resource is bound. The bound session is one task: its loop keeps a single
//! pending read (a future that owns the XML reader) across turns, so no read is ever cancelled
//! half-way, and handles each stanza in a short-lived allocation, so an idle session holds
//! little more than its socket, TLS state and mailbox.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::csi::{Csi, NS_CSI};
use super::mailbox::{self, mailbox};
use super::registry::{Deliver, SessionEntry};
use super::sm::{ResumeRequest, SmState, NS_SM};
use crate::error::{Condition, StanzaError, StreamError};
use crate::jid::{BareJid, FullJid, Jid};
use crate::modules::{self, presence::SessionPresence, roster, IqTarget};
use crate::router;
use crate::sasl::credentials::b64;
use crate::sasl::scram::{self, ChannelBindings};
use crate::sasl::{decode, parse_plain, Failure, Mechanism, ThrottleKey};
use crate::server::Server;
use crate::stanza::{self, new_id, Kind, Stanza};
use crate::stream::header;
use crate::stream::tls::Transport;
use crate::xml::{ns, Element, Limits, StreamHeader, XmlError, XmlEvent, XmlReader};

/// Boxed: the reader moves between the negotiation, the session and its pending read, and a
/// session future would otherwise keep room for it in several places.
use crate::stream::{read_next, Reader};
pub(crate) type Writer = WriteHalf<Transport>;

/// Writes that take longer than this mean the peer stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Failed SASL attempts allowed on one stream.
const MAX_AUTH_ATTEMPTS: u32 = 5;

pub async fn serve(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr, direct_tls: bool) {
    let span = tracing::info_span!("c2s", %peer, jid = tracing::field::Empty);
    async move {
        // Negotiation (TLS handshake, SASL, storage queries) runs in its own heap allocation,
        // freed once the resource is bound: the task of a bound session only holds what the
        // session loop needs.
        if let Some(bound) = Box::pin(negotiate(server, tcp, peer, direct_tls)).await {
            bound.run().await;
        }
    }
    .instrument(span)
    .await
}

/// A client over WebSocket (RFC 7395): the unframed XML stream, on a link that is secure
/// already (TLS, where there is any, ends at the HTTP listener or the proxy before it), so no
/// STARTTLS and no channel binding.
pub async fn serve_framed(server: Arc<Server>, stream: tokio::io::DuplexStream, peer: SocketAddr) {
    let span = tracing::info_span!("c2s", %peer, link = "websocket", jid = tracing::field::Empty);
    async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(server.config.c2s.auth_timeout_secs);
        let n = Box::pin(negotiate_on(server, Transport::Framed(stream), ChannelBindings::default(), true, peer, deadline));
        if let Some(bound) = n.await {
            bound.run().await;
        }
    }
    .instrument(span)
    .await
}

/// From TCP accept to a bound resource; `None` when the stream ended before that.
async fn negotiate(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr, direct_tls: bool) -> Option<Bound> {
    let _ = tcp.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(server.config.c2s.auth_timeout_secs);
    let (transport, cb) = if direct_tls {
        match tokio::time::timeout_at(deadline, server.tls.accept(tcp, true)).await {
            Ok(Ok((tls, cb))) => (Transport::Tls(Box::new(tls)), cb),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return None;
            }
            Err(_) => return None,
        }
    } else {
        (Transport::Plain(tcp), ChannelBindings::default())
    };
    negotiate_on(server, transport, cb, direct_tls, peer, deadline).await
}

/// Stream negotiation on `transport` (`secure`: TLS is in place, or not needed).
async fn negotiate_on(
    server: Arc<Server>,
    transport: Transport,
    cb: ChannelBindings,
    secure: bool,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
) -> Option<Bound> {
    let limits = Limits { max_element_bytes: server.config.limits.max_stanza_size, max_depth: server.config.limits.max_depth };
    let (rd, wr) = tokio::io::split(transport);
    let mut n = Negotiation {
        server: server.clone(),
        peer,
        reader: Some(Box::new(XmlReader::new(rd, limits))),
        writer: Some(wr),
        cb,
        tls: secure,
        host: None,
        user: None,
        header_sent: false,
        failures: 0,
        handed_off: false,
        limits,
        deadline,
    };
    match n.run().await {
        Ok(bound) => bound,
        Err(e) => {
            n.fail(e).await;
            None
        }
    }
}

struct Negotiation {
    server: Arc<Server>,
    peer: SocketAddr,
    reader: Option<Reader>,
    writer: Option<Writer>,
    cb: ChannelBindings,
    tls: bool,
    host: Option<String>,
    /// Authenticated account (node part), once SASL succeeded.
    user: Option<String>,
    header_sent: bool,
    failures: u32,
    /// The connection was handed to a resumed session (XEP-0198); nothing more to do here.
    handed_off: bool,
    limits: Limits,
    deadline: tokio::time::Instant,
}

impl Negotiation {
    async fn write(&mut self, s: &str) -> Result<(), StreamError> {
        let w = self.writer.as_mut().ok_or(StreamError::InternalServerError)?;
        crate::stream::write_within(w, s.as_bytes(), WRITE_TIMEOUT).await.map_err(|_| StreamError::UndefinedCondition)
    }

    /// Send a stream error (with our header first if none was sent yet) and close.
    async fn fail(&mut self, e: StreamError) {
        if e == StreamError::UndefinedCondition && self.writer.is_none() {
            return;
        }
        tracing::debug!(condition = e.condition(), "closing stream with error");
        let mut s = String::new();
        if !self.header_sent {
            s.push_str(&header(ns::CLIENT, &new_id(), self.host.as_deref().unwrap_or(self.server.config.default_host()), None));
        }
        s.push_str(&e.to_xml(None));
        s.push_str("</stream:stream>");
        let _ = self.write(&s).await;
        if let Some(mut w) = self.writer.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), w.shutdown()).await;
        }
    }

    async fn next(&mut self) -> Result<XmlEvent, StreamError> {
        let mut shutdown = self.server.shutdown.clone();
        let reader = self.reader.as_mut().ok_or(StreamError::InternalServerError)?;
        tokio::select! {
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => Err(StreamError::SystemShutdown),
            r = tokio::time::timeout_at(self.deadline, reader.next()) => match r {
                Err(_) => Err(StreamError::ConnectionTimeout),
                Ok(Ok(ev)) => Ok(ev),
                Ok(Err(XmlError::Eof)) | Ok(Err(XmlError::Io(_))) => Err(StreamError::UndefinedCondition),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "bad XML during negotiation");
                    Err(StreamError::from(&e))
                }
            }
        }
    }

    /// Negotiate until a resource is bound. `Ok(None)`: the peer closed cleanly.
    async fn run(&mut self) -> Result<Option<Bound>, StreamError> {
        loop {
            let ev = match self.next().await {
                Err(StreamError::UndefinedCondition) => return Ok(None),
                other => other?,
            };
            match ev {
                XmlEvent::StreamOpen(h) => self.open(h).await?,
                XmlEvent::StreamClose => {
                    let _ = self.write("</stream:stream>").await;
                    return Ok(None);
                }
                XmlEvent::Element(el) => {
                    if let Some(bound) = self.element(el).await? {
                        return Ok(Some(bound));
                    }
                    if self.handed_off {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Check a stream header (RFC 6120 section 4.7 and 4.9.3) and answer with ours and the
    /// features for this stage.
    async fn open(&mut self, h: StreamHeader) -> Result<(), StreamError> {
        let to = h.attr("to").map(|t| t.to_ascii_lowercase());
        if let Some(t) = &to {
            if self.server.is_local_domain(t) && self.host.is_none() {
                self.host = Some(t.clone());
            }
        }
        if h.ns != ns::STREAM {
            return Err(StreamError::InvalidNamespace);
        }
        if h.name != "stream" {
            return Err(StreamError::BadFormat);
        }
        if h.default_ns != ns::CLIENT {
            return Err(StreamError::InvalidNamespace);
        }
        let major = h.attr("version").and_then(|v| v.split('.').next()).and_then(|m| m.trim().parse::<u32>().ok());
        if major != Some(1) {
            return Err(StreamError::UnsupportedVersion);
        }
        let host = match to {
            Some(t) if self.server.is_local_domain(&t) => t,
            _ => return Err(StreamError::HostUnknown),
        };
        if self.host.as_deref().is_some_and(|prev| prev != host) {
            return Err(StreamError::HostUnknown);
        }
        self.host = Some(host.clone());
        let mut out = header(ns::CLIENT, &new_id(), &host, h.attr("from"));
        self.header_sent = true;
        out.push_str("<stream:features>");
        let require_tls = self.server.config.c2s.require_encryption;
        if !self.tls {
            let mut st = Element::new("starttls", ns::TLS);
            if require_tls {
                st = st.child(Element::new("required", ns::TLS));
            }
            st.write_to(&mut out, "");
        }
        if self.user.is_none() {
            if self.tls || !require_tls {
                self.mechanisms().write_to(&mut out, "");
                if self.cb.any() {
                    let mut cbel = Element::new("sasl-channel-binding", ns::SASL_CB);
                    for name in self.cb.names() {
                        cbel = cbel.child(Element::new("channel-binding", ns::SASL_CB).attr("type", name));
                    }
                    cbel.write_to(&mut out, "");
                }
            }
        } else {
            Element::new("bind", ns::BIND).write_to(&mut out, "");
            Element::new("session", ns::SESSION).child(Element::new("optional", ns::SESSION)).write_to(&mut out, "");
            Element::new("ver", ns::ROSTER_VER).write_to(&mut out, "");
            Element::new("sub", ns::PREAPPROVAL).write_to(&mut out, "");
            Element::new("sm", NS_SM).write_to(&mut out, "");
            Element::new("csi", NS_CSI).write_to(&mut out, "");
        }
        out.push_str("</stream:features>");
        self.write(&out).await
    }

    fn offered(&self) -> Vec<Mechanism> {
        Mechanism::ALL
            .into_iter()
            .filter(|m| match m {
                m if m.is_plus() => self.cb.any(),
                Mechanism::Plain => self.tls && self.server.config.c2s.allow_plain,
                _ => true,
            })
            .collect()
    }

    fn mechanisms(&self) -> Element {
        let mut el = Element::new("mechanisms", ns::SASL);
        for m in self.offered() {
            el = el.child(Element::new("mechanism", ns::SASL).text(m.name()));
        }
        el
    }

    async fn element(&mut self, el: Element) -> Result<Option<Bound>, StreamError> {
        if !self.header_sent {
            return Err(StreamError::NotWellFormed);
        }
        match (el.ns.as_str(), el.name.as_str()) {
            (ns::TLS, "starttls") if !self.tls => {
                self.starttls().await?;
                Ok(None)
            }
            (ns::SASL, "auth") if self.user.is_none() => {
                self.authenticate(&el).await?;
                Ok(None)
            }
            (ns::CLIENT, "iq") if self.user.is_some() => self.pre_bind_iq(el).await,
            (NS_SM, "resume") if self.user.is_some() => {
                self.resume(&el).await?;
                Ok(None)
            }
            (NS_SM, _) if self.user.is_some() => {
                // XEP-0198 section 3: enabling before binding is refused.
                let failed = Element::new("failed", NS_SM).child(Element::new("unexpected-request", ns::STANZA_ERRORS));
                self.write(&failed.to_xml()).await?;
                Ok(None)
            }
            (ns::CLIENT, "message" | "presence" | "iq") => Err(StreamError::NotAuthorized),
            (ns::TLS, _) | (ns::SASL, _) => Err(StreamError::PolicyViolation),
            (ns::CLIENT, _) => Err(StreamError::UnsupportedStanzaType),
            _ => Err(StreamError::UnsupportedStanzaType),
        }
    }

    async fn starttls(&mut self) -> Result<(), StreamError> {
        self.write(&Element::new("proceed", ns::TLS).to_xml()).await?;
        let reader = self.reader.take().ok_or(StreamError::InternalServerError)?;
        let rd = reader.into_inner().map_err(|_| StreamError::PolicyViolation)?;
        let wr = self.writer.take().ok_or(StreamError::InternalServerError)?;
        let Transport::Plain(tcp) = rd.unsplit(wr) else {
            return Err(StreamError::InternalServerError);
        };
        let (tls, cb) = match tokio::time::timeout_at(self.deadline, self.server.tls.accept(tcp, false)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "STARTTLS handshake failed");
                return Err(StreamError::UndefinedCondition);
            }
            Err(_) => {
                tracing::debug!("STARTTLS handshake timed out");
                return Err(StreamError::UndefinedCondition);
            }
        };
        self.cb = cb;
        let (rd, wr) = tokio::io::split(Transport::Tls(Box::new(tls)));
        self.reader = Some(Box::new(XmlReader::new(rd, self.limits)));
        self.writer = Some(wr);
        self.tls = true;
        self.header_sent = false;
        Ok(())
    }

    async fn sasl_failure(&mut self, f: Failure, account: Option<&str>) -> Result<(), StreamError> {
        self.failures += 1;
        crate::metrics::Counters::add(&self.server.counters.login_failures);
        let mut keys = vec![ThrottleKey::Addr(self.peer.ip())];
        if let Some(a) = account {
            keys.push(ThrottleKey::Account(a.to_string()));
        }
        if f == Failure::NotAuthorized {
            let delay = self.server.throttle.failure(&keys, Instant::now());
            if !delay.is_zero() {
                tracing::info!(delay_ms = delay.as_millis() as u64, "slowing down repeated authentication failures");
                tokio::time::sleep(delay).await;
            }
        }
        self.write(&f.to_element().to_xml()).await?;
        if self.failures >= MAX_AUTH_ATTEMPTS {
            return Err(StreamError::PolicyViolation);
        }
        Ok(())
    }

    /// Read a `<response/>`; `Err(Failure)` for `<abort/>` or anything else.
    async fn response(&mut self) -> Result<Result<Vec<u8>, Failure>, StreamError> {
        match self.next().await? {
            XmlEvent::Element(el) if el.is("response", ns::SASL) => Ok(decode(&el.text_content())),
            XmlEvent::Element(el) if el.is("abort", ns::SASL) => Ok(Err(Failure::Aborted)),
            XmlEvent::Element(_) => Ok(Err(Failure::MalformedRequest)),
            XmlEvent::StreamClose | XmlEvent::StreamOpen(_) => Err(StreamError::NotWellFormed),
        }
    }

    async fn challenge(&mut self, data: &[u8]) -> Result<(), StreamError> {
        let el = Element::new("challenge", ns::SASL).text(if data.is_empty() { "=".to_string() } else { b64(data) });
        self.write(&el.to_xml()).await
    }

    /// Normalise a SASL username into the node of an account on this host.
    fn account_of(&self, user: &str) -> Option<BareJid> {
        let host = self.host.as_deref()?;
        BareJid::new(&format!("{user}@{host}")).ok().filter(|j| j.node().is_some() && j.domain().as_str() == host)
    }

    async fn authenticate(&mut self, auth: &Element) -> Result<(), StreamError> {
        let Some(mech) = auth.get_attr("mechanism").and_then(Mechanism::from_name) else {
            return self.sasl_failure(Failure::InvalidMechanism, None).await;
        };
        // RFC 6120 section 6.4.5: a mechanism that needs a protected stream.
        if !self.tls && (self.server.config.c2s.require_encryption || mech == Mechanism::Plain) {
            return self.sasl_failure(Failure::EncryptionRequired, None).await;
        }
        if !self.offered().contains(&mech) {
            return self.sasl_failure(Failure::InvalidMechanism, None).await;
        }
        let text = auth.text_content();
        let initial = if text.trim().is_empty() {
            self.challenge(&[]).await?;
            match self.response().await? {
                Ok(d) => d,
                Err(f) => return self.sasl_failure(f, None).await,
            }
        } else {
            match decode(&text) {
                Ok(d) => d,
                Err(f) => return self.sasl_failure(f, None).await,
            }
        };
        let outcome = match mech.hash() {
            None => self.plain(&initial).await,
            Some(hash) => self.scram(mech, hash, &initial).await?,
        };
        match outcome {
            Ok((account, extra)) => {
                self.server.throttle.success(&ThrottleKey::Account(account.to_string()));
                let mut el = Element::new("success", ns::SASL);
                if let Some(x) = extra {
                    el = el.text(b64(&x));
                }
                self.write(&el.to_xml()).await?;
                tracing::info!(account = %account, mechanism = mech.name(), "authenticated");
                self.user = Some(crate::jid::node_str(&Jid::from(account)).to_string());
                // The stream restarts right after <success/>.
                let reader = self.reader.take().ok_or(StreamError::InternalServerError)?;
                self.reader = Some(Box::new(reader.restart()));
                self.header_sent = false;
                Ok(())
            }
            Err((f, account)) => self.sasl_failure(f, account.as_deref()).await,
        }
    }

    async fn plain(&mut self, data: &[u8]) -> Result<(BareJid, Option<Vec<u8>>), (Failure, Option<String>)> {
        let (authz, user, pass) = parse_plain(data).map_err(|f| (f, None))?;
        let account = self.account_of(&user).ok_or((Failure::NotAuthorized, None))?;
        let key = Some(account.to_string());
        check_authzid(authz.as_deref(), &account).map_err(|f| (f, key.clone()))?;
        let host = account.domain().as_str().to_string();
        let creds = match self.server.storage.credentials(&host, crate::jid::node_str(&Jid::from(account.clone()))).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "loading credentials");
                return Err((Failure::TemporaryAuthFailure, key));
            }
        };
        // argon2 is deliberately expensive: keep it off the async workers.
        let ok = match creds {
            Some(c) => tokio::task::spawn_blocking(move || c.verify_password(&pass)).await.unwrap_or(false),
            None => false,
        };
        if ok {
            Ok((account, None))
        } else {
            Err((Failure::NotAuthorized, key))
        }
    }

    async fn scram(
        &mut self,
        mech: Mechanism,
        hash: crate::sasl::credentials::Hash,
        first: &[u8],
    ) -> Result<Result<(BareJid, Option<Vec<u8>>), (Failure, Option<String>)>, StreamError> {
        let cf = match scram::client_first(first, mech.is_plus(), self.cb.any(), &self.cb) {
            Ok(cf) => cf,
            Err(f) => return Ok(Err((f, None))),
        };
        let Some(account) = self.account_of(&cf.username) else {
            return Ok(Err((Failure::NotAuthorized, None)));
        };
        let key = Some(account.to_string());
        if let Err(f) = check_authzid(cf.authzid.as_deref(), &account) {
            return Ok(Err((f, key)));
        }
        let creds =
            match self.server.storage.credentials(account.domain().as_str(), crate::jid::node_str(&Jid::from(account.clone()))).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "loading credentials");
                    return Ok(Err((Failure::TemporaryAuthFailure, key)));
                }
            };
        let (pending, server_first) = cf.server_first(hash, creds.as_ref());
        self.challenge(&server_first).await?;
        let client_final = match self.response().await? {
            Ok(d) => d,
            Err(f) => return Ok(Err((f, key))),
        };
        if creds.is_none() {
            return Ok(Err((Failure::NotAuthorized, key)));
        }
        Ok(match pending.client_final(hash, &client_final) {
            Ok(server_final) => Ok((account, Some(server_final))),
            Err(f) => Err((f, key)),
        })
    }

    /// XEP-0198 section 5: hand this connection to the session being resumed.
    async fn resume(&mut self, el: &Element) -> Result<(), StreamError> {
        let h = el.get_attr("h").and_then(|h| h.parse::<u32>().ok());
        let previd = el.get_attr("previd").unwrap_or("");
        let owner = self.account_of(self.user.as_deref().unwrap_or(""));
        let target = owner.as_ref().and_then(|o| self.server.resumable.get(previd, o));
        if let (Some(h), Some(tx)) = (h, target) {
            let reader = self.reader.take().ok_or(StreamError::InternalServerError)?;
            let writer = self.writer.take().ok_or(StreamError::InternalServerError)?;
            match tx.send(Box::new(ResumeRequest { reader, writer, h })).await {
                Ok(()) => {
                    self.handed_off = true;
                    return Ok(());
                }
                Err(mpsc::error::SendError(req)) => {
                    self.reader = Some(req.reader);
                    self.writer = Some(req.writer);
                }
            }
        }
        let cond = if h.is_none() { "bad-request" } else { "item-not-found" };
        let failed = Element::new("failed", NS_SM).child(Element::new(cond, ns::STANZA_ERRORS));
        self.write(&failed.to_xml()).await
    }

    async fn pre_bind_iq(&mut self, el: Element) -> Result<Option<Bound>, StreamError> {
        let st = match Stanza::parse_or_answer(el) {
            Ok(s) => s,
            Err(answer) => {
                self.write(&answer).await?;
                return Ok(None);
            }
        };
        let Some(payload) = st.payload() else {
            return Err(StreamError::NotAuthorized);
        };
        if st.typ() != Some("set") || !payload.is("bind", ns::BIND) {
            if payload.is("session", ns::SESSION) {
                let r = st.iq_result(None);
                self.write(&r.to_xml_in(ns::CLIENT)).await?;
                return Ok(None);
            }
            let r = st.error_reply(&StanzaError::new(Condition::NotAllowed).with_text("bind a resource first"));
            if let Some(r) = r {
                self.write(&r.to_xml_in(ns::CLIENT)).await?;
            }
            return Ok(None);
        }
        let user = self.user.clone().unwrap_or_default();
        let host = self.host.clone().unwrap_or_default();
        let requested = payload.find("resource", ns::BIND).map(|r| r.text_content()).filter(|r| !r.trim().is_empty());
        let resource = requested.unwrap_or_else(|| format!("starling-{}", new_id()));
        let jid = match FullJid::new(&format!("{user}@{host}/{resource}")) {
            Ok(j) => j,
            Err(_) => {
                let r = st.error_reply(&StanzaError::new(Condition::BadRequest).with_text("invalid resource"));
                if let Some(r) = r {
                    self.write(&r.to_xml_in(ns::CLIENT)).await?;
                }
                return Ok(None);
            }
        };
        let server = self.server.clone();
        let blocked = modules::blocking::load(&server, &jid.to_bare()).await;
        let (tx, rx) = mailbox(server.config.c2s.mailbox_size);
        let id = server.sessions.next_id();
        let entry = SessionEntry {
            jid: jid.clone(),
            id,
            tx,
            available: false,
            priority: 0,
            presence: None,
            roster_requested: false,
            blocklist_requested: false,
            carbons: false,
            caps: None,
        };
        crate::metrics::Counters::add(&server.counters.logins);
        if let Some(old) = server.sessions.bind(entry, blocked) {
            // RFC 6120 section 7.7.2.2: the new login wins, the old stream gets <conflict/>.
            old.tx.force_send(Deliver::Close(StreamError::Conflict));
        }
        tracing::Span::current().record("jid", tracing::field::display(&jid));
        tracing::info!("resource bound");
        let reply = st.iq_result(Some(Element::new("bind", ns::BIND).child(Element::new("jid", ns::BIND).text(jid.to_string()))));
        self.write(&reply.to_xml_in(ns::CLIENT)).await?;
        let reader = self.reader.take().ok_or(StreamError::InternalServerError)?;
        let writer = self.writer.take().ok_or(StreamError::InternalServerError)?;
        Ok(Some(Bound {
            server,
            jid,
            id,
            reader: Some(reader),
            writer,
            mailbox: rx,
            presence: SessionPresence::default(),
            out: String::new(),
            sm: SmState::default(),
            csi: Csi::default(),
            resume_rx: None,
        }))
    }
}

fn check_authzid(authzid: Option<&str>, account: &BareJid) -> Result<(), Failure> {
    match authzid {
        None => Ok(()),
        Some(a) if crate::jid::parse(a).is_some_and(|j| j.is_bare() && j.as_str() == account.as_str()) => Ok(()),
        Some(_) => Err(Failure::InvalidAuthzid),
    }
}

/// A bound session.
struct Bound {
    server: Arc<Server>,
    jid: FullJid,
    id: u64,
    /// Moved into the loop's pending read when it starts.
    reader: Option<Reader>,
    writer: Writer,
    mailbox: mailbox::Receiver,
    presence: SessionPresence,
    /// Bytes waiting to be written; flushed once per loop turn so bursts become one write.
    out: String,
    sm: SmState,
    csi: Csi,
    /// Resumption requests for this session (XEP-0198), when resumable.
    resume_rx: Option<mpsc::Receiver<Box<ResumeRequest>>>,
}

/// How a connection of a session ended.
enum End {
    /// Peer closed its stream: answer with our close tag.
    Closed,
    /// Connection lost.
    Gone,
    Error(StreamError, Option<Element>),
    /// Another connection resumes this session (the current one is a ghost).
    Resume(Box<ResumeRequest>),
}

/// What woke a session loop.
enum Event {
    Resume(Box<ResumeRequest>),
    Mail(Option<Deliver>),
    Read(Result<XmlEvent, XmlError>),
}

impl Bound {
    async fn run(mut self) {
        let Some(mut reader) = self.reader.take() else { return };
        if *self.server.shutdown.borrow() {
            // Bound after the shutdown sweep of the registry.
            Box::pin(self.close_stream(End::Error(StreamError::SystemShutdown, None))).await;
            Box::pin(self.finish()).await;
            return;
        }
        loop {
            let end = self.connection(reader).await;
            for o in self.csi.take() {
                self.sm.unacked.push_back(o);
            }
            // The rare paths below run in their own allocations, so an idle session's task
            // stays small.
            let resume = match end {
                End::Resume(r) => Some(r),
                End::Gone if self.resume_rx.is_some() => {
                    tracing::info!("connection lost; session kept for resumption");
                    Box::pin(self.hibernate()).await
                }
                other => {
                    Box::pin(self.close_stream(other)).await;
                    None
                }
            };
            match resume {
                Some(r) => reader = Box::pin(self.take_over(r)).await,
                None => break,
            }
        }
        Box::pin(self.finish()).await;
    }

    /// Serve the current connection until it ends.
    ///
    /// The loop waits on one hand-written poll (`next_event`) rather than a `select!`: the
    /// future of an idle session holds the pending read and little else. Server shutdown
    /// arrives through the mailbox like any other close.
    async fn connection(&mut self, reader: Reader) -> End {
        let mut read = std::pin::pin!(read_next(reader));
        loop {
            let event = std::future::poll_fn(|cx| self.next_event(cx, read.as_mut(), read_next)).await;
            let step = match event {
                Event::Resume(r) => Some(End::Resume(r)),
                Event::Mail(Some(d)) => self.deliver(d),
                Event::Mail(None) => Some(End::Gone),
                Event::Read(Ok(XmlEvent::Element(el))) => {
                    // Handling a stanza (routing, storage) runs in its own allocation.
                    Box::pin(self.inbound(el)).await
                }
                Event::Read(Ok(XmlEvent::StreamClose)) => Some(End::Closed),
                Event::Read(Ok(XmlEvent::StreamOpen(_))) => Some(End::Error(StreamError::NotWellFormed, None)),
                Event::Read(Err(XmlError::Eof) | Err(XmlError::Io(_))) => Some(End::Gone),
                Event::Read(Err(e)) => {
                    tracing::debug!(error = %e, "bad XML from client");
                    Some(End::Error(StreamError::from(&e), None))
                }
            };
            if let Some(end) = step {
                return end;
            }
            if self.sm.want_request() {
                self.out.push_str("<r xmlns='urn:xmpp:sm:3'/>");
            }
            if !self.out.is_empty() && self.flush().await.is_err() {
                // Not written after all: the stored messages stay stored.
                self.sm.offline_done.clear();
                return End::Gone;
            }
            if !self.sm.offline_done.is_empty() {
                self.offline_done();
            }
        }
    }

    /// Delete the stored messages the client now has, off the session loop.
    fn offline_done(&mut self) {
        let rows = std::mem::take(&mut self.sm.offline_done);
        let (server, owner, id) = (self.server.clone(), self.jid.to_bare(), self.id);
        tokio::spawn(async move { modules::offline::done(&server, &owner, id, &rows).await });
    }

    /// What the session loop acts on next, in this order: a resumption of this session, the
    /// mailbox, the client's input. A finished read is restarted at once (its future owns the
    /// reader), so a read is never cancelled half-way.
    fn next_event<F>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        mut read: std::pin::Pin<&mut F>,
        restart: impl FnOnce(Reader) -> F,
    ) -> std::task::Poll<Event>
    where
        F: std::future::Future<Output = (Reader, Result<XmlEvent, XmlError>)>,
    {
        use std::task::Poll;
        if let Some(rx) = self.resume_rx.as_mut() {
            if let Poll::Ready(Some(r)) = rx.poll_recv(cx) {
                return Poll::Ready(Event::Resume(r));
            }
        }
        if let Poll::Ready(d) = self.mailbox.poll_recv(cx) {
            return Poll::Ready(Event::Mail(d));
        }
        if let Poll::Ready((reader, ev)) = read.as_mut().poll(cx) {
            // Restart the read with the reader it gave back.
            read.set(restart(reader));
            return Poll::Ready(Event::Read(ev));
        }
        Poll::Pending
    }

    async fn close_stream(&mut self, end: End) {
        match end {
            End::Closed => self.out.push_str("</stream:stream>"),
            End::Error(e, app) => {
                tracing::debug!(condition = e.condition(), "closing stream with error");
                self.out.push_str(&e.to_xml_with(None, app.as_ref()));
                self.out.push_str("</stream:stream>");
            }
            End::Gone | End::Resume(_) => self.out.clear(),
        }
        if !self.out.is_empty() {
            let _ = self.flush().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), self.writer.shutdown()).await;
        }
    }

    /// The connection is gone but the session may be resumed: keep queueing what arrives until
    /// a resumption or the timeout (XEP-0198 section 5).
    async fn hibernate(&mut self) -> Option<Box<ResumeRequest>> {
        let timeout = tokio::time::sleep(Duration::from_secs(self.server.config.stream_management.resume_timeout_secs));
        tokio::pin!(timeout);
        let mut shutdown = self.server.shutdown.clone();
        loop {
            tokio::select! {
                _ = &mut timeout => {
                    tracing::info!("resumption timed out");
                    return None;
                }
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return None,
                r = recv_resume(&mut self.resume_rx) => return Some(r),
                d = self.mailbox.recv() => match d {
                    Some(Deliver::Stanza(o)) => {
                        self.sm.on_sent(o);
                        if self.sm.unacked.len() > self.server.config.stream_management.max_unacked {
                            return None;
                        }
                    }
                    Some(Deliver::Close(_)) | None => return None,
                },
            }
        }
    }

    /// A new connection resumes this session: acknowledge what the client handled, answer
    /// `<resumed/>` and send the rest again (XEP-0198 section 5).
    async fn take_over(&mut self, r: Box<ResumeRequest>) -> Reader {
        let old = std::mem::replace(&mut self.writer, r.writer);
        drop(old);
        self.csi = Csi::default(); // client state is per stream
        self.out.clear();
        let id = self.sm.resume_id.clone().unwrap_or_default();
        if let Err(too_high) = self.sm.ack(r.h) {
            tracing::warn!(h = too_high.h, sent = too_high.sent, "resumption acknowledged more than was sent");
        }
        self.out.push_str(&format!("<resumed xmlns='{NS_SM}' h='{}' previd='{}'/>", self.sm.inbound, crate::xml::escape(&id)));
        for o in &self.sm.unacked {
            o.write_for(&mut self.out, &self.jid);
        }
        // Ask at once, so what the client got is not kept as unacknowledged (and later stored
        // offline) if it closes cleanly.
        self.sm.requested = false;
        if !self.sm.unacked.is_empty() {
            self.sm.sent_since_request = self.sm.sent_since_request.max(1);
        }
        if self.sm.want_request() {
            self.out.push_str("<r xmlns='urn:xmpp:sm:3'/>");
        }
        tracing::info!(resent = self.sm.unacked.len(), "session resumed");
        let _ = self.flush().await;
        r.reader
    }

    /// The session is over: out of the registry, unacknowledged messages into the offline
    /// store (never lost, never bounced), unavailable presence to everyone who saw it.
    async fn finish(&mut self) {
        let (jid, id) = (self.jid.clone(), self.id);
        if let Some(rid) = &self.sm.resume_id {
            self.server.resumable.remove(rid);
        }
        let server = self.server.clone();
        if self.presence.available || !self.presence.directed.is_empty() {
            self.presence.unavailable(&server, &jid, id, None).await;
        }
        server.sessions.unbind(&jid, id);
        self.mailbox.close();
        while let Some(d) = self.mailbox.recv().await {
            if let Deliver::Stanza(o) = d {
                self.sm.unacked.push_back(o);
            }
        }
        let owner = jid.to_bare();
        if !self.sm.offline_done.is_empty() {
            let rows = std::mem::take(&mut self.sm.offline_done);
            modules::offline::done(&server, &owner, id, &rows).await;
        }
        modules::offline::session_ended(&server, &owner, id, std::mem::take(&mut self.sm.unacked).into()).await;
        tracing::info!("session ended");
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        let r = crate::stream::write_within(&mut self.writer, self.out.as_bytes(), WRITE_TIMEOUT).await;
        if self.mailbox.is_empty() {
            // Quiet for now: an idle session keeps no output buffer.
            self.out = String::new();
        } else {
            self.out.clear();
        }
        r
    }

    /// Append a mailbox item, and whatever else is already queued, to the output buffer.
    fn deliver(&mut self, d: Deliver) -> Option<End> {
        let mut next = Some(d);
        let mut budget = 256;
        while let Some(d) = next.take() {
            match d {
                Deliver::Stanza(o) => {
                    for o in self.csi.filter(o) {
                        o.write_for(&mut self.out, &self.jid);
                        self.sm.on_sent(o);
                    }
                }
                Deliver::Close(e) => return Some(End::Error(e, None)),
            }
            budget -= 1;
            if budget > 0 {
                next = self.mailbox.try_recv();
            }
        }
        if self.sm.unacked.len() > self.server.config.stream_management.max_unacked {
            return Some(End::Error(StreamError::PolicyViolation, None));
        }
        None
    }

    /// Stream management nonzas (XEP-0198).
    fn sm_element(&mut self, el: &Element) -> Option<End> {
        match el.name.as_str() {
            "r" => {
                self.out.push_str(&format!("<a xmlns='{NS_SM}' h='{}'/>", self.sm.inbound));
            }
            "a" if self.sm.enabled => {
                let Some(h) = el.get_attr("h").and_then(|h| h.parse::<u32>().ok()) else {
                    return Some(End::Error(StreamError::BadFormat, None));
                };
                if let Err(t) = self.sm.ack(h) {
                    let app =
                        Element::new("handled-count-too-high", NS_SM).attr("h", t.h.to_string()).attr("send-count", t.sent.to_string());
                    return Some(End::Error(StreamError::UndefinedCondition, Some(app)));
                }
            }
            "enable" if !self.sm.enabled => {
                let resume = matches!(el.get_attr("resume"), Some("true") | Some("1"));
                let id = self.sm.enable(resume);
                let mut enabled = Element::new("enabled", NS_SM);
                if let Some(id) = id {
                    let (tx, rx) = mpsc::channel(1);
                    self.server.resumable.insert(id.clone(), self.jid.to_bare(), tx);
                    self.resume_rx = Some(rx);
                    let max = self.server.config.stream_management.resume_timeout_secs;
                    enabled = enabled.attr("id", id).attr("resume", "true").attr("max", max.to_string());
                }
                enabled.write_to(&mut self.out, "");
            }
            _ => {
                let failed = Element::new("failed", NS_SM).child(Element::new("unexpected-request", ns::STANZA_ERRORS));
                failed.write_to(&mut self.out, "");
            }
        }
        None
    }

    /// A top-level element from the client.
    async fn inbound(&mut self, el: Element) -> Option<End> {
        if el.ns == NS_SM {
            return self.sm_element(&el);
        }
        if el.ns == NS_CSI {
            for o in self.csi.set_active(el.name == "active") {
                o.write_for(&mut self.out, &self.jid);
                self.sm.on_sent(o);
            }
            return None;
        }
        if Stanza::kind_of(&el).is_none() {
            return Some(End::Error(StreamError::UnsupportedStanzaType, None));
        }
        let end = self.stanza(el).await;
        // Counted once handled: routed, stored or answered. An ack therefore means the
        // stanza will not be lost.
        self.sm.on_handled();
        end
    }

    async fn stanza(&mut self, el: Element) -> Option<End> {
        let mut st = match Stanza::parse_or_answer(el) {
            Ok(s) => s,
            Err(answer) => {
                self.out.push_str(&answer);
                return None;
            }
        };
        // RFC 6120 section 8.1.2.1: the server stamps the full JID; a client may only claim
        // its own addresses.
        if let Some(from) = &st.from {
            if from.as_str() != self.jid.as_str() && from.as_str() != self.jid.to_bare().as_str() {
                return Some(End::Error(StreamError::InvalidFrom, None));
            }
        }
        st.set_from(Jid::from(self.jid.clone()));
        let server = self.server.clone();
        match st.kind {
            Kind::Presence => match (&st.to, st.typ()) {
                (None, _) => self.presence.broadcast(&server, &self.jid, self.id, st.el).await,
                (Some(_), Some(t)) if stanza::is_subscription_type(t) => {
                    if let Err(e) = roster::outbound(&server, &self.jid, st.clone()).await {
                        if let Some(r) = st.error_reply(&e) {
                            self.out.push_str(&r.to_xml_in(ns::CLIENT));
                        }
                    }
                }
                (Some(_), _) => self.presence.directed(&server, &self.jid, st).await,
            },
            Kind::Iq => {
                if st.to.is_none() {
                    modules::handle_iq(&server, st, IqTarget::Account(self.jid.to_bare())).await;
                } else {
                    router::route(&server, st).await;
                }
            }
            Kind::Message => {
                if st.to.is_none() {
                    st.set_to(Jid::from(self.jid.to_bare()));
                }
                router::send_from_account(&server, &self.jid.to_bare(), Some(&self.jid), st).await;
            }
        }
        None
    }
}

async fn recv_resume(rx: &mut Option<mpsc::Receiver<Box<ResumeRequest>>>) -> Box<ResumeRequest> {
    match rx {
        Some(rx) => match rx.recv().await {
            Some(r) => r,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}
