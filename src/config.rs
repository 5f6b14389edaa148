//! The configuration: one strict serde tree. Every field is documented in
//! `config.example.toml`, which a test parses. Errors are collected and reported together.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub listen: ListenConfig,
    #[serde(default)]
    pub c2s: C2sConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub stream_management: StreamManagementConfig,
    #[serde(default)]
    pub archive: ArchiveConfig,
    #[serde(default)]
    pub offline: OfflineConfig,
    #[serde(default)]
    pub muc: MucConfig,
    /// External components (XEP-0114), one table each.
    #[serde(default)]
    pub components: Vec<ComponentConfig>,
    #[serde(default)]
    pub http: HttpConfig,
    /// HTTP bots and webhooks, one table each.
    #[serde(default)]
    pub bots: Vec<BotConfig>,
    #[serde(default)]
    pub s2s: S2sConfig,
    #[serde(default)]
    pub log: LogConfig,
}

/// Federation with other XMPP servers (RFC 6120 server-to-server, XEP-0220 dialback).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S2sConfig {
    /// Federate: send to other servers' domains and accept their connections on `listen.s2s`.
    #[serde(default)]
    pub enabled: bool,
    /// STARTTLS on every server-to-server stream, both ways (RFC 7590); a peer that offers
    /// none is not federated with.
    #[serde(default = "yes")]
    pub require_tls: bool,
    /// Remote domain -> "host:port", used instead of DNS (split horizons, tests);
    /// "tls:host:port" for a server that takes direct TLS there (XEP-0368).
    #[serde(default)]
    pub routes: std::collections::BTreeMap<String, String>,
    /// Domains never federated with, either way.
    #[serde(default)]
    pub blocked_domains: Vec<String>,
    /// Seconds to connect, negotiate and authenticate a link (or to verify a peer's key).
    #[serde(default = "default_s2s_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// An outgoing link that carried nothing for this long is closed.
    #[serde(default = "default_s2s_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Stanzas waiting for one remote domain's link (while it connects); past it they bounce.
    #[serde(default = "default_s2s_queue")]
    pub queue_size: usize,
    /// Secret behind dialback keys (XEP-0185). Empty: random at each start. Nodes of a
    /// cluster must share it.
    #[serde(default)]
    pub dialback_secret: String,
    /// Trust anchors for other servers' certificates (a PEM bundle). None: the Mozilla roots
    /// built in (`webpki-roots`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Federate only with servers whose certificate verifies for their domain (RFC 6120
    /// section 13.7.2): outgoing, a link to a server whose certificate does not is not set up;
    /// incoming, dialback is refused from a peer whose certificate does not verify for the
    /// stream's `from` (SASL EXTERNAL, XEP-0178, is then the only way in). Off: such peers
    /// authenticate with dialback, as before.
    #[serde(default)]
    pub require_valid_certificates: bool,
}

fn default_s2s_connect_timeout() -> u64 {
    30
}
fn default_s2s_idle_timeout() -> u64 {
    600
}
fn default_s2s_queue() -> usize {
    10_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// HTTP listeners (webhooks, the REST API). Plain HTTP: put a TLS reverse proxy in front
    /// of a public one.
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// Bearer tokens of the REST API (`/api/v1`); none: no API.
    #[serde(default)]
    pub api_tokens: Vec<String>,
    /// Client sessions over WebSocket at `/xmpp-websocket` (RFC 7395).
    #[serde(default = "yes")]
    pub websocket: bool,
    /// Client sessions over BOSH at `/http-bind` (XEP-0124, XEP-0206).
    #[serde(default = "yes")]
    pub bosh: bool,
    /// A BOSH session without any request for this many seconds is over (XEP-0124 section 12).
    #[serde(default = "default_bosh_inactivity")]
    pub bosh_inactivity_secs: u64,
    /// `/metrics` for monitoring (Prometheus text format). Off by default: it tells anyone who
    /// reaches the listener how busy the server is.
    #[serde(default)]
    pub metrics: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: Vec::new(),
            api_tokens: Vec::new(),
            websocket: true,
            bosh: true,
            bosh_inactivity_secs: default_bosh_inactivity(),
            metrics: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotConfig {
    /// Every address at this domain (a domain of its own) is the bot's.
    pub domain: String,
    /// Messages to the bot are POSTed here as JSON; the response is the bot's answer. Empty:
    /// the bot only pushes events (webhooks) and messages to it are refused.
    #[serde(default)]
    pub url: String,
    /// Signs the calls to `url` (X-Starling-Signature: sha256=HMAC-SHA-256 of the body) and
    /// authenticates the events external systems POST to `/hooks/<domain>/<name>`.
    pub secret: String,
    /// Where pushed events go when the request names no `to`: accounts' or rooms' JIDs (an
    /// event for a room is said there by an occupant named after the hook).
    #[serde(default)]
    pub notify: Vec<String>,
    /// Rooms the bot sits in, as `nick`, to take part: their messages are POSTed to `url` like
    /// any other, and its answers said in the room.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// The bot's nick in `rooms`; by default the first label of its domain.
    #[serde(default)]
    pub nick: String,
    /// Seconds to wait for the bot's answer.
    #[serde(default = "default_bot_timeout")]
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentConfig {
    /// The component's address: a domain of its own (`irc.localhost`), not one of the hosts.
    pub domain: String,
    /// The shared secret of its handshake.
    pub secret: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamManagementConfig {
    /// Seconds a session whose connection dropped waits to be resumed (XEP-0198); then its
    /// unacknowledged messages go to offline storage.
    #[serde(default = "default_resume_timeout")]
    pub resume_timeout_secs: u64,
    /// Unacknowledged stanzas kept per session; a client further behind is disconnected.
    #[serde(default = "default_max_unacked")]
    pub max_unacked: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Archive one-to-one messages (XEP-0313).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Delete archived messages older than this many days; 0 keeps them forever.
    #[serde(default)]
    pub retention_days: u32,
    /// Default preference for accounts that set none: always, never or roster.
    #[serde(default = "default_archive_mode")]
    pub default_mode: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineConfig {
    /// Messages kept per account while it is offline (XEP-0160); more are refused.
    #[serde(default = "default_offline_quota")]
    pub max_per_account: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MucConfig {
    /// Serve group chat (XEP-0045) at `<subdomain>.<host>` for every served host.
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_muc_subdomain")]
    pub subdomain: String,
    /// Messages a room replays to a new occupant (the most it sends whatever it asks).
    #[serde(default = "default_muc_history")]
    pub history_size: usize,
    /// Occupants a new room admits; an owner may set any limit up to `max_occupants_limit`.
    #[serde(default = "default_muc_occupants")]
    pub default_max_occupants: usize,
    #[serde(default = "default_muc_occupants_limit")]
    pub max_occupants_limit: usize,
    /// New rooms archive their messages (XEP-0313), which occupants can page through.
    #[serde(default = "yes")]
    pub archive_by_default: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Virtual hosts served; the first is the default.
    #[serde(default = "default_hosts")]
    pub hosts: Vec<String>,
    /// Directory for the SQLite database and generated certificates.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// How long a clean shutdown waits for streams to close, in seconds.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
    /// Threads that run the streams (tokio workers); 0: half the machine's cores, at least one
    /// (see `ServerConfig::worker_threads`).
    #[serde(default)]
    pub workers: usize,
}

impl ServerConfig {
    /// The number of stream threads: `workers`, or half the cores, at least one. The other
    /// half is left to what each message also costs outside them: the kernel's network
    /// stack, SQLite's writer and checkpoints, password hashing. On two cores one worker
    /// measured less CPU per message and per room delivery than two (the second worker is
    /// woken to steal each fan-out and parks again: 15 to 25% more CPU for a room of 10),
    /// and more messages per second at saturation (bench/OPTIMISATIONS.md).
    pub fn worker_threads(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        (cores / 2).max(1)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `sqlite://PATH` or `postgres://...`; empty means `sqlite://<data_dir>/starling.db`.
    #[serde(default)]
    pub url: String,
    /// Maximum pooled connections.
    #[serde(default = "default_pool")]
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate and key per domain (PEM files).
    #[serde(default)]
    pub certificates: Vec<CertificateConfig>,
    /// Make (once, under data_dir/certs) a self-signed certificate for hosts with none.
    #[serde(default = "yes")]
    pub self_signed: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub domain: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Client listeners with STARTTLS (RFC 6120).
    #[serde(default = "default_c2s")]
    pub c2s: Vec<SocketAddr>,
    /// Client listeners with direct TLS (XEP-0368, ALPN `xmpp-client`).
    #[serde(default = "default_c2s_tls")]
    pub c2s_direct_tls: Vec<SocketAddr>,
    /// Listeners for external components (XEP-0114, `jabber:component:accept`, no TLS: bind
    /// them to loopback or a private network).
    #[serde(default)]
    pub component: Vec<SocketAddr>,
    /// Listeners for other servers (federation, RFC 6120 server-to-server; usually port
    /// 5269). Used only with `s2s.enabled`.
    #[serde(default)]
    pub s2s: Vec<SocketAddr>,
    /// Listeners for other servers with direct TLS (XEP-0368, ALPN `xmpp-server`; usually
    /// port 5270, published as `_xmpps-server._tcp`). Used only with `s2s.enabled`.
    #[serde(default)]
    pub s2s_direct_tls: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct C2sConfig {
    /// Refuse authentication and binding before TLS.
    #[serde(default = "yes")]
    pub require_encryption: bool,
    /// Offer SASL PLAIN (only ever over TLS).
    #[serde(default = "yes")]
    pub allow_plain: bool,
    /// Seconds a client may take from connecting to having bound a resource (and another
    /// server, or a component, to having authenticated).
    #[serde(default = "default_auth_timeout")]
    pub auth_timeout_secs: u64,
    /// Maximum simultaneous client connections.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Session mailbox depth; a session that falls this far behind is disconnected.
    #[serde(default = "default_mailbox")]
    pub mailbox_size: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest top-level element accepted, in bytes (`policy-violation` beyond).
    #[serde(default = "default_max_stanza")]
    pub max_stanza_size: usize,
    /// Deepest element nesting accepted (`policy-violation` beyond).
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
    /// Largest roster per account.
    #[serde(default = "default_max_roster")]
    pub max_roster_items: usize,
    /// Largest private XML / vCard document per key, in bytes.
    #[serde(default = "default_max_private")]
    pub max_private_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// PBKDF2 iterations for new SCRAM credentials (at least 4096).
    #[serde(default = "default_iterations")]
    pub scram_iterations: u32,
    /// Failed attempts (per account and per address) before answers are slowed.
    #[serde(default = "default_free_failures")]
    pub free_failures: u32,
    /// Longest delay before answering a failed attempt, in seconds.
    #[serde(default = "default_max_delay")]
    pub max_delay_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// tracing filter (`info`, `starling=debug`, ...); RUST_LOG wins when set.
    #[serde(default = "default_level")]
    pub level: String,
}

fn default_bosh_inactivity() -> u64 {
    60
}

fn yes() -> bool {
    true
}
fn default_muc_subdomain() -> String {
    "conference".into()
}
fn default_muc_history() -> usize {
    20
}
fn default_muc_occupants() -> usize {
    200
}
fn default_muc_occupants_limit() -> usize {
    5000
}
fn default_hosts() -> Vec<String> {
    vec!["localhost".into()]
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}
fn default_shutdown_grace() -> u64 {
    5
}
fn default_pool() -> u32 {
    8
}
fn default_bot_timeout() -> u64 {
    15
}
fn default_c2s() -> Vec<SocketAddr> {
    vec!["0.0.0.0:5222".parse().expect("static address")]
}
fn default_c2s_tls() -> Vec<SocketAddr> {
    vec!["0.0.0.0:5223".parse().expect("static address")]
}
fn default_auth_timeout() -> u64 {
    60
}
fn default_max_connections() -> usize {
    200_000
}
fn default_mailbox() -> usize {
    4096
}
fn default_max_stanza() -> usize {
    256 * 1024
}
fn default_max_depth() -> usize {
    64
}
fn default_max_roster() -> usize {
    5000
}
fn default_max_private() -> usize {
    64 * 1024
}
fn default_iterations() -> u32 {
    4096
}
fn default_free_failures() -> u32 {
    3
}
fn default_max_delay() -> u64 {
    30
}
fn default_resume_timeout() -> u64 {
    300
}
fn default_max_unacked() -> usize {
    10_000
}
fn default_archive_mode() -> String {
    "always".into()
}
fn default_offline_quota() -> usize {
    1000
}
fn default_level() -> String {
    "info".into()
}

macro_rules! default_from_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                toml::from_str("").expect("all fields have defaults")
            }
        }
    )*};
}
default_from_serde!(
    Config,
    ServerConfig,
    StorageConfig,
    TlsConfig,
    ListenConfig,
    C2sConfig,
    LimitsConfig,
    AuthConfig,
    StreamManagementConfig,
    ArchiveConfig,
    OfflineConfig,
    MucConfig,
    S2sConfig,
    LogConfig
);

impl Config {
    /// An account's address on one of the served hosts: its bare JID, host and user.
    pub fn local_account(&self, address: &str) -> Result<(jid::BareJid, String, String), String> {
        let j = jid::BareJid::new(address).map_err(|e| format!("{address}: {e}"))?;
        let user = j.node().ok_or_else(|| format!("{address}: no user part"))?.as_str().to_string();
        let host = j.domain().as_str().to_string();
        if !self.server.hosts.contains(&host) {
            return Err(format!("{host} is not a host of this server (server.hosts)"));
        }
        Ok((j, host, user))
    }

    /// Read and validate a config file; every problem found is reported.
    pub fn load(path: &Path) -> Result<Config, Vec<String>> {
        let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Config, Vec<String>> {
        let cfg: Config = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let errors = cfg.validate();
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(errors)
        }
    }

    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.server.hosts.is_empty() {
            errors.push("server.hosts: at least one host is needed".into());
        }
        for h in &self.server.hosts {
            match jid::BareJid::new(h) {
                Ok(j) if j.node().is_none() && j.domain().as_str() == h => {}
                _ => errors.push(format!("server.hosts: {h:?} is not a normalised domain name")),
            }
        }
        let url = &self.storage.url;
        if !(url.is_empty() || url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            errors.push(format!("storage.url: {url:?} must start with sqlite: or postgres://"));
        }
        for c in &self.tls.certificates {
            if !self.server.hosts.contains(&c.domain) {
                errors.push(format!("tls.certificates: {} is not in server.hosts", c.domain));
            }
            for p in [&c.cert, &c.key] {
                if !p.exists() {
                    errors.push(format!("tls.certificates: {} does not exist", p.display()));
                }
            }
        }
        if !self.tls.self_signed {
            for h in &self.server.hosts {
                if !self.tls.certificates.iter().any(|c| &c.domain == h) {
                    errors.push(format!("tls: no certificate for {h} and tls.self_signed is false"));
                }
            }
        }
        if self.auth.scram_iterations < 4096 {
            errors.push("auth.scram_iterations: must be at least 4096".into());
        }
        if self.limits.max_stanza_size < 10_000 {
            errors.push("limits.max_stanza_size: must be at least 10000 bytes (RFC 6120 section 13.12)".into());
        }
        if self.limits.max_depth < 8 {
            errors.push("limits.max_depth: must be at least 8".into());
        }
        if !matches!(self.archive.default_mode.as_str(), "always" | "never" | "roster") {
            errors.push("archive.default_mode: must be always, never or roster".into());
        }
        if self.c2s.mailbox_size == 0 {
            errors.push("c2s.mailbox_size: must be positive".into());
        }
        let service = format!("{}.example", self.muc.subdomain);
        if self.muc.subdomain.is_empty()
            || !matches!(jid::BareJid::new(&service), Ok(j) if j.node().is_none() && j.domain().as_str() == service)
        {
            errors.push(format!("muc.subdomain: {:?} is not a normalised domain label", self.muc.subdomain));
        }
        if self.muc.default_max_occupants == 0 || self.muc.default_max_occupants > self.muc.max_occupants_limit {
            errors.push("muc.default_max_occupants: must be between 1 and muc.max_occupants_limit".into());
        }
        let muc_domains: Vec<String> =
            if self.muc.enabled { self.server.hosts.iter().map(|h| format!("{}.{h}", self.muc.subdomain)).collect() } else { Vec::new() };
        let services = self
            .components
            .iter()
            .map(|c| ("components", &c.domain, &c.secret))
            .chain(self.bots.iter().map(|b| ("bots", &b.domain, &b.secret)));
        let mut seen: Vec<&String> = Vec::new();
        for (table, domain, secret) in services {
            match jid::BareJid::new(domain) {
                Ok(j) if j.node().is_none() && j.domain().as_str() == domain => {}
                _ => errors.push(format!("{table}: {domain:?} is not a normalised domain name")),
            }
            if self.server.hosts.contains(domain) || muc_domains.contains(domain) {
                errors.push(format!("{table}: {domain} is already served (server.hosts or group chat)"));
            }
            if seen.contains(&domain) {
                errors.push(format!("{table}: {domain} is configured twice"));
            }
            seen.push(domain);
            if secret.is_empty() {
                errors.push(format!("{table}: {domain} has an empty secret"));
            }
        }
        for (domain, addr) in &self.s2s.routes {
            if !jid::BareJid::new(domain).is_ok_and(|j| j.node().is_none()) {
                errors.push(format!("s2s.routes: {domain:?} is not a domain"));
            }
            let hostport = addr.strip_prefix("tls:").unwrap_or(addr);
            if hostport.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
                errors.push(format!("s2s.routes: {domain}: {addr:?} is not host:port"));
            }
        }
        if let Some(p) = &self.s2s.ca_file {
            if !p.exists() {
                errors.push(format!("s2s.ca_file: {} does not exist", p.display()));
            }
        }
        if self.s2s.queue_size == 0 || self.s2s.connect_timeout_secs == 0 || self.s2s.idle_timeout_secs == 0 {
            errors.push("s2s: queue_size, connect_timeout_secs and idle_timeout_secs must be positive".into());
        }
        if self.http.api_tokens.iter().any(|t| t.len() < 16) {
            errors.push("http: api_tokens: each token must be at least 16 characters".into());
        }
        for b in &self.bots {
            if !(b.url.is_empty() || b.url.starts_with("http://") || b.url.starts_with("https://")) {
                errors.push(format!("bots: {}: url must be http:// or https://", b.domain));
            }
            for n in &b.notify {
                if jid::BareJid::new(n).is_err() {
                    errors.push(format!("bots: {}: notify: {n:?} is not a JID", b.domain));
                }
            }
            for r in &b.rooms {
                if !jid::BareJid::new(r).is_ok_and(|j| j.node().is_some()) {
                    errors.push(format!("bots: {}: rooms: {r:?} is not a room's JID", b.domain));
                }
            }
            if !b.nick.is_empty() && jid::BareJid::new(&format!("{}@{}", b.nick, b.domain)).is_err() {
                errors.push(format!("bots: {}: nick {:?} is not usable as an address at the bot's domain", b.domain, b.nick));
            }
        }
        if self.listen.c2s.is_empty() && self.listen.c2s_direct_tls.is_empty() {
            errors.push("listen: no client listener configured".into());
        }
        errors
    }

    /// The storage URL, with the zero-config default filled in.
    pub fn storage_url(&self) -> String {
        if self.storage.url.is_empty() {
            format!("sqlite://{}/starling.db", self.server.data_dir.display())
        } else {
            self.storage.url.clone()
        }
    }

    pub fn default_host(&self) -> &str {
        self.server.hosts.first().map(|s| s.as_str()).unwrap_or("localhost")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../config.example.toml");
        let cfg = Config::parse(text).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(cfg.server.hosts, vec!["localhost".to_string()]);
    }

    #[test]
    fn stream_threads_are_half_the_cores_unless_set() {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let cfg = Config::parse("").unwrap();
        assert_eq!(cfg.server.workers, 0);
        assert_eq!(cfg.server.worker_threads(), (cores / 2).max(1));
        let cfg = Config::parse("[server]\nworkers = 3\n").unwrap();
        assert_eq!(cfg.server.worker_threads(), 3);
    }

    #[test]
    fn certificate_trust_for_federation_is_optional_and_checked() {
        let cfg = Config::parse("").unwrap();
        assert_eq!(cfg.s2s.ca_file, None);
        assert!(!cfg.s2s.require_valid_certificates);
        let cfg = Config::parse("[s2s]\nrequire_valid_certificates = true\n").unwrap();
        assert!(cfg.s2s.require_valid_certificates);
        let errs = Config::parse("[s2s]\nca_file = '/nonexistent/ca.pem'\n").unwrap_err();
        assert!(errs.iter().any(|e| e.contains("s2s.ca_file")), "{errs:?}");
        assert!(Config::parse("[s2s]\nca_files = 'x'\n").is_err(), "unknown keys are refused");
    }

    #[test]
    fn empty_config_is_the_zero_config() {
        let cfg = Config::parse("").unwrap();
        assert_eq!(cfg.default_host(), "localhost");
        assert_eq!(cfg.storage_url(), "sqlite://./data/starling.db");
        assert!(cfg.c2s.require_encryption);
        assert_eq!(cfg.limits.max_stanza_size, 262144);
    }

    #[test]
    fn components_need_a_domain_of_their_own_and_a_secret() {
        let ok = Config::parse("[[components]]\ndomain = 'irc.localhost'\nsecret = 's'\n[listen]\ncomponent = ['127.0.0.1:5347']").unwrap();
        assert_eq!(ok.components[0].domain, "irc.localhost");
        assert_eq!(ok.listen.component.len(), 1);
        let errs = Config::parse(
            "[[components]]\ndomain = 'localhost'\nsecret = 's'\n[[components]]\ndomain = 'conference.localhost'\nsecret = 's'\n\
             [[components]]\ndomain = 'a.localhost'\nsecret = ''\n[[components]]\ndomain = 'a.localhost'\nsecret = 's'\n\
             [[components]]\ndomain = 'Not A Domain'\nsecret = 's'",
        )
        .unwrap_err();
        assert_eq!(errs.len(), 5, "{errs:?}");
        let errs = Config::parse(
            "[[bots]]\ndomain = 'bots.localhost'\nsecret = 's'\nurl = 'ftp://x'\nnotify = ['a@b@c']\n\
             rooms = ['conference.localhost']\nnick = 'a b'\n\
             [[components]]\ndomain = 'bots.localhost'\nsecret = 's'",
        )
        .unwrap_err();
        assert_eq!(errs.len(), 5, "url, notify, rooms, nick, and the domain taken twice: {errs:?}");
        let errs = Config::parse("[http]\napi_tokens = ['short']").unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(Config::parse("[http]\napi_tokens = ['sixteen-chars-ok']").is_ok());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_all_reported() {
        assert!(Config::parse("[server]\nhostz = []").is_err());
        let errs = Config::parse("[server]\nhosts = ['Bad Host']\n[auth]\nscram_iterations = 10\n[limits]\nmax_depth = 2").unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
    }
}
