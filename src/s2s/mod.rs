//! Federation: streams with other XMPP servers (RFC 6120 server-to-server, `jabber:server`).
//!
//! - **Outgoing** (`outgoing`): the router sends a stanza for another domain here
//!   (`Destination::Remote`). Each pair (local domain, remote domain) has one link: a task with
//!   a mailbox, made on first use. It finds the remote server (a static route from the config,
//!   else DNS SRV `_xmpps-server._tcp` for direct TLS (XEP-0368) and `_xmpp-server._tcp`, else
//!   the domain itself on port 5269; RFC 6120 section 3.2), connects, negotiates TLS (direct,
//!   or STARTTLS), and authenticates: with SASL EXTERNAL (XEP-0178) when the remote server's
//!   certificate verifies for its domain and it offers the mechanism (it took ours), else with
//!   Server Dialback (XEP-0220).
//!   Stanzas queued meanwhile go out once the remote server accepts us; if it
//!   cannot be reached or refuses, each queued stanza is bounced (`remote-server-not-found`,
//!   or `remote-server-timeout` when it took too long). An idle link closes after
//!   `s2s.idle_timeout_secs`.
//! - **Incoming** (`incoming`): a remote server connects to the s2s listener, STARTTLS
//!   (required unless `s2s.require_tls = false`; none on the direct TLS listener), then either
//!   authenticates with SASL EXTERNAL, offered when the client certificate it presented
//!   verifies for the stream's `from`, or asks with `<db:result/>` to send as its
//!   domain to one of ours. Starling checks the key with the remote domain's authoritative
//!   server (a `<db:verify/>` on a connection of its own to it) and only then accepts stanzas
//!   from that domain to that one of ours; every stanza's `from` and `to` are checked against
//!   the pairs so verified (`invalid-from`, `host-unknown`). It also answers `<db:verify/>` for
//!   the keys of its own outgoing links.
//!
//! Keys follow XEP-0185: HMAC-SHA256 over "receiving originating stream-id" with the SHA-256 of
//! a secret (random per start unless `s2s.dialback_secret` is set, which a cluster shares).
//!
//! Certificates (`stream::trust`): each side presents the certificate of its domain (the
//! outgoing side as its TLS client certificate); a handshake never fails on one. Afterwards a
//! certificate that chains to `s2s.ca_file` (else the built-in Mozilla roots) and names the
//! domain as a DNS-ID authenticates it, and SASL EXTERNAL carries that over; one that does not
//! leaves dialback, through DNS, as with Prosody's default `s2s_secure_auth = false`. With
//! `s2s.require_valid_certificates` it is the end of it instead: no outgoing link to such a
//! server (its stanzas bounce), no dialback from one (`not-authorized`). Bidirectional streams
//! (XEP-0288) are not implemented.

mod incoming;
mod outgoing;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::error::{Condition, StreamError};
use crate::modules::{Module, Spec};
use crate::router;
use crate::sasl::hex;
use crate::server::Server;
use crate::session::mailbox::{self, TrySendError};
use crate::session::{Deliver, Outgoing};
use crate::stanza::{Kind, Stanza};
use crate::xml::escape;

pub use incoming::serve;

pub const NS_DIALBACK: &str = "jabber:server:dialback";
pub const NS_DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";
/// The SASL mechanism of certificate authentication between servers (XEP-0178).
const EXTERNAL: &str = "EXTERNAL";

pub const MODULE: Module = Module {
    name: "s2s",
    specs: &[
        Spec {
            id: "XEP-0220",
            title: "Server Dialback",
            note: "both roles, over STARTTLS; several domains on one incoming stream; `<errors/>`",
        },
        Spec { id: "XEP-0185", title: "Dialback Key Generation and Validation", note: "HMAC-SHA256 keys" },
        Spec {
            id: "XEP-0178",
            title: "Best Practices for Use of SASL EXTERNAL with Certificates",
            note: "server-to-server, both roles; DNS-IDs only (no XmppAddr, no SRV-ID); dialback when a certificate does not verify",
        },
    ],
    host_features: &[],
    account_features: &[],
    iq: &[],
};

/// Federation state: the configuration, the secret behind dialback keys, and the outgoing links.
pub struct S2s {
    enabled: bool,
    /// HMAC key of dialback keys: SHA-256 of the secret, in hex (XEP-0185 section 3).
    key: String,
    /// Static routes: remote domain -> "host:port" (from the configuration; more can be set
    /// while running).
    routes: std::sync::RwLock<HashMap<String, String>>,
    blocked: HashSet<String>,
    /// (local domain, remote domain) -> the link's mailbox.
    links: Mutex<HashMap<(String, String), mailbox::Sender>>,
    /// Incoming streams that verified at least one domain and are still open.
    incoming: AtomicUsize,
    /// Domain pairs authenticated since start, by way and direction (`Auth` indexes it).
    authenticated: [AtomicUsize; 4],
    server: OnceLock<Weak<Server>>,
}

/// How a domain pair was authenticated, and which way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// SASL EXTERNAL with the peer's certificate (XEP-0178), on a stream it opened to us.
    ExternalIn,
    /// Dialback (XEP-0220) on a stream the peer opened to us.
    DialbackIn,
    /// SASL EXTERNAL on a stream of ours: the peer accepted our certificate.
    ExternalOut,
    /// Dialback on a stream of ours.
    DialbackOut,
}

/// What `S2s::authentications` reports: counts since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Authentications {
    pub external_in: usize,
    pub dialback_in: usize,
    pub external_out: usize,
    pub dialback_out: usize,
}

impl S2s {
    pub fn new(config: &Config) -> S2s {
        let secret = if config.s2s.dialback_secret.is_empty() {
            use rand::RngCore;
            let mut b = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut b);
            hex(&b)
        } else {
            config.s2s.dialback_secret.clone()
        };
        S2s {
            enabled: config.s2s.enabled,
            key: hex(&Sha256::digest(secret.as_bytes())),
            routes: std::sync::RwLock::new(config.s2s.routes.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect()),
            blocked: config.s2s.blocked_domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            links: Mutex::new(HashMap::new()),
            incoming: AtomicUsize::new(0),
            authenticated: Default::default(),
            server: OnceLock::new(),
        }
    }

    pub fn attach(&self, server: &Arc<Server>) {
        let _ = self.server.set(Arc::downgrade(server));
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// May we federate with `domain` at all?
    fn allows(&self, domain: &str) -> bool {
        self.enabled && !self.blocked.contains(domain)
    }

    /// Outgoing links up (connected or being set up).
    pub fn link_count(&self) -> usize {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Route `domain` to `addr` ("host:port") from now on, instead of DNS (new links only).
    pub fn set_route(&self, domain: &str, addr: &str) {
        self.routes.write().unwrap_or_else(|p| p.into_inner()).insert(domain.to_ascii_lowercase(), addr.to_string());
    }

    fn route_of(&self, domain: &str) -> Option<String> {
        self.routes.read().unwrap_or_else(|p| p.into_inner()).get(domain).cloned()
    }

    /// Incoming streams from other servers that verified a domain and are open.
    pub fn incoming_count(&self) -> usize {
        self.incoming.load(Ordering::Relaxed)
    }

    fn count(&self, how: Auth) {
        self.authenticated[how as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Domain pairs authenticated since start, by way and direction.
    pub fn authentications(&self) -> Authentications {
        let n = |how: Auth| self.authenticated[how as usize].load(Ordering::Relaxed);
        Authentications {
            external_in: n(Auth::ExternalIn),
            dialback_in: n(Auth::DialbackIn),
            external_out: n(Auth::ExternalOut),
            dialback_out: n(Auth::DialbackOut),
        }
    }

    /// The dialback key for a stream `id` that `receiving` opened for `originating`.
    fn dialback_key(&self, receiving: &str, originating: &str, id: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.as_bytes()).expect("HMAC takes any key length");
        mac.update(receiving.as_bytes());
        mac.update(b" ");
        mac.update(originating.as_bytes());
        mac.update(b" ");
        mac.update(id.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// Close every link with `e` (server shutdown).
    pub fn close_all(&self, e: StreamError) {
        for tx in self.links.lock().unwrap_or_else(|p| p.into_inner()).values() {
            tx.force_send(Deliver::Close(e));
        }
    }

    /// Forget the link of `pair` if it is still the one with mailbox `tx`.
    fn forget(&self, pair: &(String, String), tx: &mailbox::Sender) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if links.get(pair).is_some_and(|t| t.same_as(tx)) {
            links.remove(pair);
        }
    }
}

/// Is `domain` one we answer for on server-to-server streams: a host, the group chat service,
/// an external component's or an HTTP bot's domain (they federate like the hosts: a user of
/// another server reaches a gateway or a bot here, and its answers go back)?
pub(crate) fn serves(server: &Server, domain: &str) -> bool {
    server.is_local_domain(domain)
        || server.muc.as_ref().is_some_and(|m| m.serves(domain))
        || server.components.serves(domain)
        || server.bots.serves(domain)
}

/// Route a stanza for `remote`, another server's domain.
pub async fn route(server: &Server, stanza: Stanza, remote: &str) {
    let s2s = &server.s2s;
    let local = match &stanza.from {
        Some(f) if serves(server, f.domain().as_str()) => f.domain().as_str().to_string(),
        _ => {
            tracing::debug!(%remote, "not federating a stanza that is not from a local domain");
            return;
        }
    };
    if !s2s.allows(remote) || jid_domain_is_ip_or_invalid(remote) {
        return router::bounce(server, &stanza, Condition::RemoteServerNotFound).await;
    }
    let Some(arc) = s2s.server.get().and_then(Weak::upgrade) else {
        return router::bounce(server, &stanza, Condition::RemoteServerNotFound).await;
    };
    let pair = (local, remote.to_string());
    let mut item = Deliver::Stanza(Outgoing::new(stanza.el));
    for _ in 0..2 {
        let tx = {
            let mut links = s2s.links.lock().unwrap_or_else(|p| p.into_inner());
            match links.get(&pair) {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let (tx, rx) = mailbox::mailbox(server.config.s2s.queue_size);
                    links.insert(pair.clone(), tx.clone());
                    tokio::spawn(outgoing::run(arc.clone(), pair.clone(), tx.clone(), rx));
                    tx
                }
            }
        };
        match tx.try_send(item) {
            Ok(()) => return,
            Err(TrySendError::Closed(back)) => {
                s2s.forget(&pair, &tx);
                item = back;
            }
            Err(TrySendError::Full(back)) => {
                tracing::warn!(remote = %pair.1, "federation queue full");
                return bounce_item(server, back, Condition::ResourceConstraint).await;
            }
        }
    }
    bounce_item(server, item, Condition::RemoteServerNotFound).await;
}

/// Bounce a queued stanza that will not reach its remote server.
async fn bounce_item(server: &Server, d: Deliver, condition: Condition) {
    if let Some(st) = queued_stanza(d) {
        // Errors are never answered with errors; presence is not bounced (RFC 6121 4.4.4).
        if !st.is_error() && st.kind != Kind::Presence {
            router::bounce(server, &st, condition).await;
        }
    }
}

/// A stanza taken back out of a link's mailbox (to bounce it, or to route it again).
fn queued_stanza(d: Deliver) -> Option<Stanza> {
    let Deliver::Stanza(o) = d else { return None };
    let el = Arc::try_unwrap(o).map(|o| o.el).unwrap_or_else(|o| o.el.clone());
    Stanza::parse(el).ok()
}

/// Domains that are IP literals or empty are not federated with.
fn jid_domain_is_ip_or_invalid(domain: &str) -> bool {
    domain.is_empty() || domain.parse::<std::net::IpAddr>().is_ok() || domain.starts_with('[')
}

/// The opening tag of a server-to-server stream, with the dialback namespace declared: ours
/// for an outgoing stream (no id), or our answer on an incoming one (with its id; `version`
/// only if the peer sent one).
fn header(from: &str, to: Option<&str>, id: Option<&str>, versioned: bool) -> String {
    let mut s = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
         xmlns:db='{NS_DIALBACK}' from='{}'",
        escape(from)
    );
    if let Some(to) = to {
        s.push_str(&format!(" to='{}'", escape(to)));
    }
    if let Some(id) = id {
        s.push_str(&format!(" id='{}'", escape(id)));
    }
    if versioned {
        s.push_str(" version='1.0'");
    }
    s.push('>');
    s
}

/// `<db:NAME from to [id] [type]>[key]</db:NAME>`, written with the prefix the stream declared.
fn db_element(name: &str, from: &str, to: &str, id: Option<&str>, typ: Option<&str>, key: Option<&str>) -> String {
    let mut s = format!("<db:{name} from='{}' to='{}'", escape(from), escape(to));
    if let Some(id) = id {
        s.push_str(&format!(" id='{}'", escape(id)));
    }
    if let Some(t) = typ {
        s.push_str(&format!(" type='{t}'"));
    }
    match key {
        Some(k) => s.push_str(&format!(">{}</db:{name}>", escape(k))),
        None => s.push_str("/>"),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialback_keys_follow_xep_0185() {
        // XEP-0220 section 2.1.1's example (key generation as XEP-0185 gives it): secret
        // "s3cr3tf0rd14lb4ck", "montague.example", "capulet.example", stream id "D60000229F".
        let mut config = Config::parse("").expect("empty config");
        config.s2s.dialback_secret = "s3cr3tf0rd14lb4ck".into();
        let s2s = S2s::new(&config);
        assert_eq!(s2s.key, "a7136eb1f46c9ef18c5e78c36ca257067c69b3d518285f0b18a96c33beae9acc");
        assert_eq!(
            s2s.dialback_key("montague.example", "capulet.example", "D60000229F"),
            "b4835385f37fe2895af6c196b59097b16862406db80559900d96bf6fa7d23df3"
        );
    }

    #[test]
    fn dialback_elements_use_the_declared_prefix() {
        assert_eq!(
            db_element("result", "a.example", "b.example", None, None, Some("k<")),
            "<db:result from='a.example' to='b.example'>k&lt;</db:result>"
        );
        assert_eq!(
            db_element("verify", "b.example", "a.example", Some("i1"), Some("valid"), None),
            "<db:verify from='b.example' to='a.example' id='i1' type='valid'/>"
        );
    }
}
