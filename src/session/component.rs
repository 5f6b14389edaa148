//! External components (XEP-0114, `jabber:component:accept`): a gateway or a bot connects to a
//! component listener, proves the shared secret of its domain, and then sends and receives
//! stanzas for every address at that domain. The router sends such addresses here
//! (`Destination::Component`).
//!
//! Nothing is lost while a component is away: a message for a component that is not connected
//! waits in offline storage, under the component's domain, and is written to it right after its
//! next handshake; what was still queued for a connection that ended goes back there too. A
//! stored message leaves the store once it was written to the component's connection. Queries
//! get `service-unavailable` at once, as they need an answer; presence is not kept.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tracing::Instrument;

use super::mailbox::{self, mailbox};
use super::registry::{push, Deliver, Mailbox, Outgoing};
use crate::config::Config;
use crate::error::{Condition, StreamError};
use crate::jid::{BareJid, FullJid};
use crate::modules::{offline, Module, Spec};
use crate::router;
use crate::sasl::{constant_time_eq, ThrottleKey};
use crate::server::Server;
use crate::stanza::{new_id, Kind, Stanza};
use crate::stream::tls::Transport;
use crate::xml::{escape, ns, Element, Limits, XmlError, XmlEvent, XmlReader};

pub const NS_ACCEPT: &str = "jabber:component:accept";

pub const MODULE: Module = Module {
    name: "component",
    specs: &[Spec {
        id: "XEP-0114",
        title: "Jabber Component Protocol",
        note: "accept; messages kept while a component is away and written at its next handshake",
    }],
    host_features: &[],
    account_features: &[],
    iq: &[],
};

/// Writes that take longer than this mean the component stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

use crate::stream::{read_next, Reader};
type Writer = WriteHalf<Transport>;

/// The configured components and the connection of each, when it has one.
pub struct Components {
    /// Domain -> shared secret.
    secrets: HashMap<String, String>,
    /// Domain -> (connection id, mailbox) of the connected component.
    live: RwLock<HashMap<String, (u64, Mailbox)>>,
    next_id: AtomicU64,
}

impl Components {
    pub fn new(config: &Config) -> Components {
        Components {
            secrets: config.components.iter().map(|c| (c.domain.clone(), c.secret.clone())).collect(),
            live: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Is `domain` a component's (connected or not)?
    pub fn serves(&self, domain: &str) -> bool {
        self.secrets.contains_key(domain)
    }

    /// The components' domains, for service discovery.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.secrets.keys().map(|d| d.as_str())
    }

    pub fn connected_count(&self) -> usize {
        self.live.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_connected(&self, domain: &str) -> bool {
        self.live.read().unwrap_or_else(|p| p.into_inner()).contains_key(domain)
    }

    fn mailbox(&self, domain: &str) -> Option<Mailbox> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).get(domain).map(|(_, tx)| tx.clone())
    }

    /// Take `domain` for a new connection; `None` when another one has it.
    fn attach(&self, domain: &str, tx: Mailbox) -> Option<u64> {
        let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
        if live.contains_key(domain) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        live.insert(domain.to_string(), (id, tx));
        Some(id)
    }

    fn detach(&self, domain: &str, id: u64) {
        let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
        if live.get(domain).is_some_and(|(i, _)| *i == id) {
            live.remove(domain);
        }
    }

    /// Close every component connection with `e` (server shutdown).
    pub fn close_all(&self, e: StreamError) {
        for (_, tx) in self.live.read().unwrap_or_else(|p| p.into_inner()).values() {
            tx.force_send(Deliver::Close(e));
        }
    }
}

/// Route a stanza for an address at component `domain`.
pub async fn route(server: &Server, stanza: Stanza, domain: &str) {
    let connected = server.components.mailbox(domain);
    if let Some(tx) = connected {
        if push(&tx, &pseudo_jid(domain), Deliver::Stanza(Outgoing::new(stanza.el.clone()))) {
            return;
        }
    }
    match stanza.kind {
        Kind::Message if !stanza.is_error() => {
            let Some(owner) = offline::domain_queue(domain) else { return };
            // Decided under the same gate as the handshake's delivery of stored messages, so a
            // message is either stored before that delivery reads the store, or sent live.
            let _gate = server.offline_gates.lock(&owner).await;
            if let Some(tx) = server.components.mailbox(domain) {
                if push(&tx, &pseudo_jid(domain), Deliver::Stanza(Outgoing::new(stanza.el.clone()))) {
                    return;
                }
            }
            if let Err(e) = offline::store(server, &owner, stanza.el.clone(), None).await {
                router::bounce(server, &stanza, e).await;
            }
        }
        Kind::Iq if matches!(stanza.typ(), Some("get") | Some("set")) => {
            router::bounce(server, &stanza, Condition::ServiceUnavailable).await
        }
        _ => {}
    }
}

/// The mailbox API names its session in its logs; a component's is its domain.
fn pseudo_jid(domain: &str) -> FullJid {
    FullJid::new(&format!("component@{domain}/link")).unwrap_or_else(|_| FullJid::new("component@invalid/link").expect("a valid JID"))
}

/// Serve one component connection, from accept to close.
pub async fn serve(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr) {
    let span = tracing::info_span!("component", %peer, domain = tracing::field::Empty);
    async move {
        let _ = tcp.set_nodelay(true);
        let limits = Limits { max_element_bytes: server.config.limits.max_stanza_size, max_depth: server.config.limits.max_depth };
        let (rd, wr) = tokio::io::split(Transport::Plain(tcp));
        let mut link = Link { server, peer, writer: wr, out: String::new(), domain: String::new(), header_sent: false };
        let mut reader: Reader = Box::new(XmlReader::new(rd, limits));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(link.server.config.c2s.auth_timeout_secs);
        match tokio::time::timeout_at(deadline, link.handshake(&mut reader)).await {
            Ok(Ok(())) => {}
            Ok(Err(None)) => return,
            Ok(Err(Some(e))) => return link.fail(e).await,
            Err(_) => return link.fail(StreamError::ConnectionTimeout).await,
        }
        tracing::Span::current().record("domain", link.domain.as_str());
        link.run(reader).await;
    }
    .instrument(span)
    .await
}

struct Link {
    server: Arc<Server>,
    peer: SocketAddr,
    writer: Writer,
    /// Bytes waiting to be written; flushed once per loop turn.
    out: String,
    domain: String,
    header_sent: bool,
}

/// How a component's connection ended.
enum End {
    Closed,
    Gone,
    Error(StreamError),
}

impl Link {
    async fn write_out(&mut self) -> Result<(), ()> {
        let r = crate::stream::write_within(&mut self.writer, self.out.as_bytes(), WRITE_TIMEOUT).await.map_err(drop);
        self.out.clear();
        r
    }

    /// Stream error (after our header if none was sent yet), close tag, close.
    async fn fail(mut self, e: StreamError) {
        tracing::debug!(condition = e.condition(), "closing component stream with error");
        if !self.header_sent {
            let from = if self.domain.is_empty() { self.server.config.default_host().to_string() } else { self.domain.clone() };
            self.out.push_str(&header(&new_id(), &from));
        }
        self.out.push_str(&e.to_xml(None));
        self.out.push_str("</stream:stream>");
        let _ = self.write_out().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.writer.shutdown()).await;
    }

    /// Stream header and handshake (XEP-0114 section 3). `Err(None)`: the peer went away.
    async fn handshake(&mut self, reader: &mut Reader) -> Result<(), Option<StreamError>> {
        let h = crate::stream::read_header(reader).await?;
        let to = h.attr("to").map(|t| t.to_ascii_lowercase()).unwrap_or_default();
        if h.ns != ns::STREAM || h.default_ns != NS_ACCEPT {
            return Err(Some(StreamError::InvalidNamespace));
        }
        if h.name != "stream" {
            return Err(Some(StreamError::BadFormat));
        }
        let Some(secret) = self.server.components.secrets.get(&to).cloned() else {
            return Err(Some(StreamError::HostUnknown));
        };
        self.domain = to;
        let id = new_id();
        self.out.push_str(&header(&id, &self.domain));
        self.header_sent = true;
        self.write_out().await.map_err(|_| None)?;
        let el = match reader.next().await {
            Ok(XmlEvent::Element(el)) => el,
            Ok(XmlEvent::StreamClose) | Err(XmlError::Eof | XmlError::Io(_)) => return Err(None),
            Ok(XmlEvent::StreamOpen(_)) => return Err(Some(StreamError::NotWellFormed)),
            Err(e) => return Err(Some(StreamError::from(&e))),
        };
        if !el.is("handshake", NS_ACCEPT) {
            // Nothing but the handshake before it (RFC 6120 section 4.9.3.12).
            return Err(Some(StreamError::NotAuthorized));
        }
        let expected = handshake_digest(&id, &secret);
        let given = el.text_content().trim().to_ascii_lowercase();
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            let keys = [ThrottleKey::Account(self.domain.clone()), ThrottleKey::Addr(self.peer.ip())];
            let delay = self.server.throttle.failure(&keys, Instant::now());
            tracing::info!(domain = %self.domain, "component handshake failed");
            tokio::time::sleep(delay).await;
            return Err(Some(StreamError::NotAuthorized));
        }
        self.server.throttle.success(&ThrottleKey::Account(self.domain.clone()));
        Ok(())
    }

    /// The authenticated component's connection.
    async fn run(mut self, reader: Reader) {
        let (tx, mut rx) = mailbox(self.server.config.c2s.mailbox_size);
        let Some(owner) = offline::domain_queue(&self.domain) else { return self.fail(StreamError::InternalServerError).await };
        let id = {
            // Attached and handed the stored messages under the gate `route` stores under.
            let server = self.server.clone();
            let _gate = server.offline_gates.lock(&owner).await;
            let Some(id) = server.components.attach(&self.domain, tx.clone()) else {
                return self.fail(StreamError::Conflict).await;
            };
            self.stored(&owner, &tx).await;
            id
        };
        if *self.server.shutdown.borrow() {
            self.server.components.detach(&self.domain, id);
            let leftovers = drain(&mut rx);
            offline::session_ended(&self.server, &owner, id, leftovers).await;
            return self.fail(StreamError::SystemShutdown).await;
        }
        tracing::info!(domain = %self.domain, "component connected");
        self.out.push_str("<handshake/>");
        // Written since the last flush: put back in the store if the flush fails.
        let mut batch: Vec<Arc<Outgoing>> = Vec::new();
        let end = self.serve(reader, &mut rx, &mut batch, &owner).await;
        self.server.components.detach(&self.domain, id);
        tracing::info!(domain = %self.domain, "component disconnected");
        match end {
            End::Closed => self.out.push_str("</stream:stream>"),
            End::Error(e) => {
                tracing::debug!(condition = e.condition(), "closing component stream with error");
                self.out.push_str(&e.to_xml(None));
                self.out.push_str("</stream:stream>");
            }
            End::Gone => self.out.clear(),
        }
        if !self.out.is_empty() && self.write_out().await.is_ok() {
            batch.clear();
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.writer.shutdown()).await;
        batch.extend(drain(&mut rx));
        offline::session_ended(&self.server, &owner, id, batch).await;
    }

    /// Queue the messages stored while the component was away.
    async fn stored(&self, owner: &BareJid, tx: &Mailbox) {
        let rows = match self.server.storage.offline_messages(owner.as_str()).await {
            Ok(r) => r,
            Err(e) => return tracing::error!(error = %e, "loading a component's stored messages"),
        };
        for (row, _, xml) in rows {
            let Some(el) = crate::xml::parse_stored(&xml).await else {
                tracing::error!(row, "a stored message could not be read back; left in the store");
                continue;
            };
            tx.force_send(Deliver::Stanza(Outgoing::from_offline(el, row)));
        }
    }

    async fn serve(&mut self, reader: Reader, rx: &mut mailbox::Receiver, batch: &mut Vec<Arc<Outgoing>>, owner: &BareJid) -> End {
        use std::task::Poll;
        let mut read = std::pin::pin!(read_next(reader));
        loop {
            if !self.out.is_empty() {
                let rows: Vec<i64> = batch.iter().filter_map(|o| o.offline_row).collect();
                if self.write_out().await.is_err() {
                    return End::Gone;
                }
                batch.clear();
                if !rows.is_empty() {
                    if let Err(e) = self.server.storage.offline_delete(owner.as_str(), &rows).await {
                        // Left in the store: written again at the next handshake.
                        tracing::error!(error = %e, "deleting a component's delivered messages");
                    }
                }
            }
            enum Ev {
                Mail(Option<Deliver>),
                Read(Result<XmlEvent, XmlError>),
            }
            let ev = std::future::poll_fn(|cx| {
                if let Poll::Ready(d) = rx.poll_recv(cx) {
                    return Poll::Ready(Ev::Mail(d));
                }
                if let Poll::Ready((reader, ev)) = read.as_mut().poll(cx) {
                    read.set(read_next(reader));
                    return Poll::Ready(Ev::Read(ev));
                }
                Poll::Pending
            })
            .await;
            match ev {
                Ev::Mail(Some(Deliver::Stanza(o))) => {
                    o.write_to_link(&mut self.out);
                    batch.push(o);
                    // Whatever else is queued goes out in the same write.
                    while let Some(d) = rx.try_recv() {
                        match d {
                            Deliver::Stanza(o) => {
                                o.write_to_link(&mut self.out);
                                batch.push(o);
                            }
                            Deliver::Close(e) => return End::Error(e),
                        }
                    }
                }
                Ev::Mail(Some(Deliver::Close(e))) => return End::Error(e),
                Ev::Mail(None) => return End::Gone,
                Ev::Read(Ok(XmlEvent::Element(el))) => {
                    if let Some(end) = Box::pin(self.inbound(el)).await {
                        return end;
                    }
                }
                Ev::Read(Ok(XmlEvent::StreamClose)) => return End::Closed,
                Ev::Read(Ok(XmlEvent::StreamOpen(_))) => return End::Error(StreamError::NotWellFormed),
                Ev::Read(Err(XmlError::Eof | XmlError::Io(_))) => return End::Gone,
                Ev::Read(Err(e)) => {
                    tracing::debug!(error = %e, "bad XML from component");
                    return End::Error(StreamError::from(&e));
                }
            }
        }
    }

    /// A stanza from the component: in the client namespace inside the server, from an address
    /// at its domain (XEP-0114 section 3), to somewhere.
    async fn inbound(&mut self, mut el: Element) -> Option<End> {
        el.move_ns(NS_ACCEPT, ns::CLIENT);
        if Stanza::kind_of(&el).is_none() {
            return Some(End::Error(StreamError::UnsupportedStanzaType));
        }
        let st = match Stanza::parse_or_answer(el) {
            Ok(s) => s,
            Err(answer) => {
                self.out.push_str(&answer);
                return None;
            }
        };
        match &st.from {
            Some(from) if from.domain().as_str() == self.domain => {}
            Some(_) => return Some(End::Error(StreamError::InvalidFrom)),
            None => return Some(End::Error(StreamError::ImproperAddressing)),
        }
        if st.to.is_none() {
            return Some(End::Error(StreamError::ImproperAddressing));
        }
        router::route(&self.server, st).await;
        None
    }
}

/// Stanzas left in a mailbox that will not be read again.
fn drain(rx: &mut mailbox::Receiver) -> Vec<Arc<Outgoing>> {
    rx.close();
    let mut left = Vec::new();
    while let Some(d) = rx.try_recv() {
        if let Deliver::Stanza(o) = d {
            left.push(o);
        }
    }
    left
}

/// Elements of the component namespace (the stanza and the children that inherited it) move
/// to the client namespace, which is what the rest of the server speaks.
/// The server's stream header for a component (XEP-0114 section 3: no version, no features).
fn header(id: &str, from: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{NS_ACCEPT}' xmlns:stream='http://etherx.jabber.org/streams' id='{}' from='{}'>",
        escape(id),
        escape(from)
    )
}

/// Lowercase hex SHA-1 of the stream id followed by the secret (XEP-0114 section 3).
pub fn handshake_digest(stream_id: &str, secret: &str) -> String {
    let mut h = Sha1::new();
    h.update(stream_id.as_bytes());
    h.update(secret.as_bytes());
    crate::sasl::hex(&h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_is_the_hex_sha1_of_id_and_secret() {
        // XEP-0114's example stream id and secret ("3BF96D32" and "secret"), checked against
        // the digest computed independently (sha1sum of "3BF96D32secret").
        assert_eq!(handshake_digest("3BF96D32", "secret"), "b09ea9b3b7f586be8a08d0a3dd7466f110aeb136");
    }

    #[test]
    fn component_stanzas_move_to_the_client_namespace() {
        let mut el = Element::new("message", NS_ACCEPT)
            .child(Element::new("body", NS_ACCEPT).text("hi"))
            .child(Element::new("x", "jabber:x:oob").child(Element::new("url", "jabber:x:oob")));
        el.move_ns(NS_ACCEPT, ns::CLIENT);
        assert_eq!(el.ns, ns::CLIENT);
        assert!(el.find("body", ns::CLIENT).is_some());
        assert!(el.find("x", "jabber:x:oob").is_some_and(|x| x.find("url", "jabber:x:oob").is_some()));
    }
}
