//! TLS for client streams: certificates per domain (loaded, or self-signed with rcgen on first
//! start and reused), rustls server configs for STARTTLS and direct TLS (ALPN `xmpp-client`,
//! XEP-0368), TLS 1.2 and 1.3 only, the handshake, and the channel-binding data of a finished
//! handshake. For server-to-server streams too: server configs that ask peers for a client
//! certificate, and client configs per local domain that present its certificate (how the
//! peers' certificates are judged is `stream::trust`).
//!
//! rustls' unbuffered API runs the handshake in buffers that live only as long as it does;
//! then its traffic keys go to `stream::record`, which holds nothing while the connection is
//! idle. rustls' unbuffered connection does not give the exporter or the SNI, so both are taken
//! while the handshake runs: the certificate resolver notes the certificate it picked and a key
//! log notes the TLS 1.3 exporter secret, each in a thread-local read right after the
//! synchronous `process_tls_records` call that produced it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::crypto::ring as provider;
use rustls::crypto::tls13::{HkdfExpander, OkmBlock};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, UnbufferedServerConnection};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ClientConfig, ServerConfig, SupportedCipherSuite};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::config::Config;
use crate::sasl::scram::ChannelBindings;
use crate::stream::record::TlsStream;
use crate::stream::trust::{owned_chain, Trust};

/// A client connection, before or after TLS.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// The XML stream of a WebSocket connection (RFC 7395), framed and unframed by
    /// `http::websocket` on the other end of this pipe.
    Framed(tokio::io::DuplexStream),
    /// Our side of an outgoing server-to-server stream after STARTTLS (`s2s::outgoing`).
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Transport {
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::Framed(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::Framed(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::Framed(s) => Pin::new(s).poll_flush(cx),
            Transport::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::Framed(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[derive(Debug)]
struct DomainCert {
    key: Arc<CertifiedKey>,
    /// tls-server-end-point binding value (RFC 5929 section 4.1).
    end_point: Vec<u8>,
}

/// Picks the certificate by SNI; clients that send none (or an IP) get the default host's.
#[derive(Debug)]
struct Resolver {
    certs: HashMap<String, DomainCert>,
    default: String,
}

impl Resolver {
    fn pick(&self, sni: Option<&str>) -> Option<&DomainCert> {
        sni.and_then(|n| self.certs.get(&n.to_ascii_lowercase())).or_else(|| self.certs.get(&self.default))
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let cert = self.pick(hello.server_name())?;
        CAPTURE.with(|c| c.borrow_mut().end_point = Some(cert.end_point.clone()));
        Some(cert.key.clone())
    }
}

/// What the handshake's callbacks noted, for the connection whose records are being processed
/// on this thread.
#[derive(Default)]
struct Captured {
    end_point: Option<Vec<u8>>,
    exporter_secret: Option<Vec<u8>>,
}

thread_local! {
    static CAPTURE: RefCell<Captured> = RefCell::new(Captured::default());
}

/// Notes the TLS 1.3 exporter secret of the handshake in progress (never written anywhere).
#[derive(Debug)]
struct ExporterSecret;

impl rustls::KeyLog for ExporterSecret {
    fn will_log(&self, label: &str) -> bool {
        label == "EXPORTER_SECRET"
    }
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        if label == "EXPORTER_SECRET" {
            CAPTURE.with(|c| c.borrow_mut().exporter_secret = Some(secret.to_vec()));
        }
    }
}

/// RFC 8446 section 7.1, HKDF-Expand-Label.
fn expand_label(expander: &dyn HkdfExpander, label: &[u8], context: &[u8], out: &mut [u8]) -> Option<()> {
    let len = (out.len() as u16).to_be_bytes();
    let label_len = [(6 + label.len()) as u8];
    let context_len = [context.len() as u8];
    expander.expand_slice(&[&len, &label_len, b"tls13 ", label, &context_len, context], out).ok()
}

/// RFC 8446 section 7.5: the exporter, from the exporter secret, with an empty context.
fn tls13_export(suite: SupportedCipherSuite, secret: &[u8], label: &[u8], out: &mut [u8]) -> Option<()> {
    let SupportedCipherSuite::Tls13(s) = suite else { return None };
    let empty_hash = s.common.hash_provider.hash(&[]);
    let mut derived = vec![0u8; empty_hash.as_ref().len()];
    expand_label(s.hkdf_provider.expander_for_okm(&OkmBlock::new(secret)).as_ref(), label, empty_hash.as_ref(), &mut derived)?;
    expand_label(s.hkdf_provider.expander_for_okm(&OkmBlock::new(&derived)).as_ref(), b"exporter", empty_hash.as_ref(), out)
}

/// Largest handshake flight accepted from a client.
const MAX_HANDSHAKE_BUFFER: usize = 64 * 1024;

pub struct TlsSetup {
    starttls: Arc<ServerConfig>,
    direct: Arc<ServerConfig>,
    /// STARTTLS from other servers: as `starttls`, and asks for a client certificate.
    starttls_s2s: Arc<ServerConfig>,
    /// Direct TLS for other servers (XEP-0368, ALPN `xmpp-server`), asking for one too.
    direct_s2s: Arc<ServerConfig>,
    /// Outgoing server-to-server TLS per local domain with a certificate (presented as the
    /// client certificate, XEP-0178), [STARTTLS, direct TLS].
    clients: HashMap<String, [Arc<ClientConfig>; 2]>,
    /// The same for domains without a certificate of their own (they use dialback).
    anonymous: [Arc<ClientConfig>; 2],
    /// Trust anchors for other servers' certificates.
    pub trust: Trust,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{0}: {1}")]
    Io(String, io::Error),
    #[error("{0}: {1}")]
    Bad(String, String),
}

/// RFC 5929: hash the certificate with its signature's hash, SHA-256 for MD5 / SHA-1.
fn end_point_hash(der: &[u8]) -> Vec<u8> {
    const SHA384_OIDS: [&[u8]; 2] =
        [&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c], &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03]];
    const SHA512_OIDS: [&[u8]; 2] =
        [&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d], &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04]];
    let has = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
    if SHA512_OIDS.iter().any(|o| has(o)) {
        sha2::Sha512::digest(der).to_vec()
    } else if SHA384_OIDS.iter().any(|o| has(o)) {
        sha2::Sha384::digest(der).to_vec()
    } else {
        sha2::Sha256::digest(der).to_vec()
    }
}

fn load_pem(cert: &Path, key: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsSetupError> {
    let cert_bytes = std::fs::read(cert).map_err(|e| TlsSetupError::Io(cert.display().to_string(), e))?;
    let key_bytes = std::fs::read(key).map_err(|e| TlsSetupError::Io(key.display().to_string(), e))?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_bytes.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsSetupError::Io(cert.display().to_string(), e))?;
    if certs.is_empty() {
        return Err(TlsSetupError::Bad(cert.display().to_string(), "no certificate found".into()));
    }
    let key_der = rustls_pemfile::private_key(&mut key_bytes.as_slice())
        .map_err(|e| TlsSetupError::Io(key.display().to_string(), e))?
        .ok_or_else(|| TlsSetupError::Bad(key.display().to_string(), "no private key found".into()))?;
    Ok((certs, key_der))
}

/// Make a self-signed certificate for `domain` under `dir`, or reuse the one made before.
fn self_signed(dir: &Path, domain: &str) -> Result<(std::path::PathBuf, std::path::PathBuf), TlsSetupError> {
    let cert = dir.join(format!("{domain}.crt"));
    let key = dir.join(format!("{domain}.key"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).map_err(|e| TlsSetupError::Io(dir.display().to_string(), e))?;
    let ck = rcgen::generate_simple_self_signed(vec![domain.to_string()]).map_err(|e| TlsSetupError::Bad(domain.into(), e.to_string()))?;
    std::fs::write(&cert, ck.cert.pem()).map_err(|e| TlsSetupError::Io(cert.display().to_string(), e))?;
    std::fs::write(&key, ck.key_pair.serialize_pem()).map_err(|e| TlsSetupError::Io(key.display().to_string(), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600));
    }
    tracing::info!(%domain, path = %cert.display(), "made a self-signed certificate");
    Ok((cert, key))
}

impl TlsSetup {
    pub fn new(config: &Config) -> Result<TlsSetup, TlsSetupError> {
        let mut certs = HashMap::new();
        let provider = Arc::new(provider::default_provider());
        for host in &config.server.hosts {
            let (cert, key) = match config.tls.certificates.iter().find(|c| &c.domain == host) {
                Some(c) => (c.cert.clone(), c.key.clone()),
                None => self_signed(&config.server.data_dir.join("certs"), host)?,
            };
            let (chain, key_der) = load_pem(&cert, &key)?;
            let signing = provider
                .key_provider
                .load_private_key(key_der)
                .map_err(|e| TlsSetupError::Bad(key.display().to_string(), e.to_string()))?;
            let end_point = end_point_hash(chain[0].as_ref());
            certs.insert(host.clone(), DomainCert { key: Arc::new(CertifiedKey::new(chain, signing)), end_point });
        }
        let trust = Trust::new(config.s2s.ca_file.as_deref())?;
        let deferred = trust.deferred();
        let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
        let client = |key: Option<&Arc<CertifiedKey>>, alpn: Option<&[u8]>| -> Result<Arc<ClientConfig>, TlsSetupError> {
            let b = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&versions)
                .map_err(|e| TlsSetupError::Bad("tls".into(), e.to_string()))?
                .dangerous()
                .with_custom_certificate_verifier(deferred.clone());
            let mut cc = match key {
                Some(k) => b.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(k.clone()))),
                None => b.with_no_client_auth(),
            };
            cc.alpn_protocols = alpn.into_iter().map(|a| a.to_vec()).collect();
            Ok(Arc::new(cc))
        };
        let mut clients = HashMap::new();
        for (domain, c) in &certs {
            clients.insert(domain.clone(), [client(Some(&c.key), None)?, client(Some(&c.key), Some(b"xmpp-server"))?]);
        }
        let anonymous = [client(None, None)?, client(None, Some(b"xmpp-server"))?];
        let resolver = Arc::new(Resolver { certs, default: config.default_host().to_string() });
        let build = |alpn: Vec<Vec<u8>>, peers: bool| -> Result<Arc<ServerConfig>, TlsSetupError> {
            let b = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&versions)
                .map_err(|e| TlsSetupError::Bad("tls".into(), e.to_string()))?;
            // Clients are not asked for a certificate (some would prompt their user); other
            // servers are, for SASL EXTERNAL (XEP-0178), and need not send one.
            let b = if peers { b.with_client_cert_verifier(deferred.clone()) } else { b.with_no_client_auth() };
            let mut sc = b.with_cert_resolver(resolver.clone());
            sc.alpn_protocols = alpn;
            // Resumption: TLS 1.3 tickets are stateless (encrypted under a key rotated every 12
            // hours), so the server keeps nothing per ticket; the cache serves TLS 1.2 session IDs.
            sc.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
            sc.ticketer = provider::Ticketer::new().map_err(|e| TlsSetupError::Bad("tls".into(), e.to_string()))?;
            // The record layer takes the keys over once the handshake is done.
            sc.enable_secret_extraction = true;
            sc.key_log = Arc::new(ExporterSecret);
            Ok(Arc::new(sc))
        };
        Ok(TlsSetup {
            starttls: build(Vec::new(), false)?,
            direct: build(vec![b"xmpp-client".to_vec()], false)?,
            starttls_s2s: build(Vec::new(), true)?,
            direct_s2s: build(vec![b"xmpp-server".to_vec()], true)?,
            clients,
            anonymous,
            trust,
        })
    }

    /// TLS for an outgoing server-to-server stream from `local` (`direct`: ALPN
    /// `xmpp-server`, XEP-0368), presenting `local`'s certificate when it has one. The remote
    /// server's certificate is checked afterwards, with `trust` (see `stream::trust`).
    pub fn s2s_connector(&self, local: &str, direct: bool) -> tokio_rustls::TlsConnector {
        let pair = self.clients.get(local).unwrap_or(&self.anonymous);
        tokio_rustls::TlsConnector::from(pair[usize::from(direct)].clone())
    }

    /// Run the server side of a TLS handshake on `io` (direct TLS, or after STARTTLS's
    /// `<proceed/>`), then hand the connection to the record layer. Returns the connection and
    /// its channel-binding values: tls-server-end-point for the certificate picked for the
    /// client's SNI (on a resumed session too), and tls-exporter on TLS 1.3
    /// (RFC 9266 does not define it for TLS 1.2 without care this server does not take).
    pub async fn accept<IO>(&self, io: IO, direct: bool) -> io::Result<(TlsStream<IO>, ChannelBindings)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let (stream, bindings, _) = self.handshake(io, if direct { &self.direct } else { &self.starttls }).await?;
        Ok((stream, bindings))
    }

    /// TLS from another server, after STARTTLS or direct (XEP-0368, ALPN `xmpp-server`).
    /// Returns the certificate chain it presented as a client (empty if none), not yet
    /// checked against any domain.
    pub async fn accept_s2s<IO>(&self, io: IO, direct: bool) -> io::Result<(TlsStream<IO>, Vec<CertificateDer<'static>>)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let (stream, _, chain) = self.handshake(io, if direct { &self.direct_s2s } else { &self.starttls_s2s }).await?;
        Ok((stream, chain))
    }

    async fn handshake<IO>(
        &self,
        mut io: IO,
        config: &Arc<ServerConfig>,
    ) -> io::Result<(TlsStream<IO>, ChannelBindings, Vec<CertificateDer<'static>>)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let mut conn = UnbufferedServerConnection::new(config.clone()).map_err(io::Error::other)?;
        // The handshake's buffers: dropped when it ends.
        let mut incoming: Vec<u8> = Vec::new();
        let mut used = 0;
        let mut outgoing: Vec<u8> = Vec::new();
        let mut early: Vec<u8> = Vec::new();
        let mut noted = Captured::default();
        loop {
            CAPTURE.with(|c| *c.borrow_mut() = Captured::default());
            let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut incoming[..used]);
            CAPTURE.with(|c| {
                let c = std::mem::take(&mut *c.borrow_mut());
                noted.end_point = c.end_point.or(noted.end_point.take());
                noted.exporter_secret = c.exporter_secret.or(noted.exporter_secret.take());
            });
            let step = match state {
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    encode(&mut outgoing, |buf| e.encode(buf))?;
                    Step::Process
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    Step::Write
                }
                Ok(ConnectionState::BlockedHandshake) => Step::Read,
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    // Application data that came right behind the client's Finished.
                    while let Some(rec) = r.next_record() {
                        early.extend_from_slice(rec.map_err(io::Error::other)?.payload);
                    }
                    Step::Process
                }
                Ok(ConnectionState::WriteTraffic(_)) => Step::Done,
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => return Err(io::Error::other("unexpected TLS handshake state")),
                Err(e) => Step::Fail(e),
            };
            incoming.copy_within(discard..used, 0);
            used -= discard;
            match step {
                Step::Process => {}
                Step::Write => {
                    io.write_all(&outgoing).await?;
                    outgoing.clear();
                }
                Step::Read => {
                    if used == incoming.len() {
                        if used >= MAX_HANDSHAKE_BUFFER {
                            return Err(io::Error::new(io::ErrorKind::InvalidData, "TLS handshake message too large"));
                        }
                        incoming.resize((used * 2).clamp(4096, MAX_HANDSHAKE_BUFFER), 0);
                    }
                    let n = io.read(&mut incoming[used..]).await?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    used += n;
                }
                Step::Fail(e) => {
                    // Send the alert rustls queued for the error, best effort.
                    if let Ok(ConnectionState::EncodeTlsData(mut a)) = conn.process_tls_records(&mut []).state {
                        if encode(&mut outgoing, |buf| a.encode(buf)).is_ok() {
                            let _ = io.write_all(&outgoing).await;
                        }
                    }
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                Step::Done => break,
            }
        }
        let chain = owned_chain(conn.peer_certificates());
        let (secrets, schedule) = conn.dangerous_into_kernel_connection().map_err(io::Error::other)?;
        let mut exporter = None;
        if let Some(secret) = noted.exporter_secret.as_deref() {
            let mut out = vec![0u8; 32];
            if tls13_export(schedule.negotiated_cipher_suite(), secret, b"EXPORTER-Channel-Binding", &mut out).is_some() {
                exporter = Some(out);
            }
        }
        let bindings = ChannelBindings { tls_exporter: exporter, tls_server_end_point: noted.end_point };
        // Only the bytes of a record begun: the handshake's buffer is dropped here.
        let partial = incoming[..used].to_vec();
        let stream = TlsStream::new(io, secrets, schedule, early, partial)?;
        Ok((stream, bindings, chain))
    }
}

enum Step {
    Process,
    Read,
    Write,
    Fail(rustls::Error),
    Done,
}

/// Append one encoded chunk of handshake data to `out`.
fn encode(out: &mut Vec<u8>, mut f: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>) -> io::Result<()> {
    let at = out.len();
    let need = match f(&mut []) {
        Err(EncodeError::InsufficientSize(s)) => s.required_size,
        Ok(_) => return Ok(()),
        Err(e) => return Err(io::Error::other(e)),
    };
    out.resize(at + need, 0);
    let n = f(&mut out[at..]).map_err(io::Error::other)?;
    out.truncate(at + n);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, SupportedProtocolVersion};
    use tokio::io::{duplex, DuplexStream};
    use tokio_rustls::client::TlsStream as ClientTls;

    /// A server setup with a self-signed certificate for `localhost`, and a client config that
    /// trusts exactly that certificate.
    fn setup(name: &str) -> (TlsSetup, rustls::RootCertStore) {
        let dir = std::env::temp_dir().join(format!("starling-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = Config::parse(&format!("[server]\nhosts = [\"localhost\"]\ndata_dir = {:?}\n", dir.display().to_string())).unwrap();
        let setup = TlsSetup::new(&config).unwrap();
        let pem = std::fs::read(dir.join("certs/localhost.crt")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(c.unwrap()).unwrap();
        }
        (setup, roots)
    }

    fn client_config(
        roots: &rustls::RootCertStore,
        version: &'static SupportedProtocolVersion,
        suite: Option<rustls::SupportedCipherSuite>,
    ) -> ClientConfig {
        let mut provider = provider::default_provider();
        if let Some(s) = suite {
            provider.cipher_suites = vec![s];
        }
        ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth()
    }

    /// Handshake a rustls client against `accept` over an in-memory pipe.
    async fn connect(setup: &TlsSetup, cfg: ClientConfig) -> (ClientTls<DuplexStream>, TlsStream<DuplexStream>, ChannelBindings) {
        let (c, s) = duplex(64 * 1024);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let (client, server) = tokio::join!(connector.connect(ServerName::try_from("localhost").unwrap(), c), setup.accept(s, false));
        let (server, cb) = server.unwrap();
        (client.unwrap(), server, cb)
    }

    /// Both directions: small writes, one large write crossing many records, read back whole.
    async fn exchange(client: &mut ClientTls<DuplexStream>, server: &mut TlsStream<DuplexStream>) {
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for msg in [&b"<presence/>"[..], &big[..]] {
            let (w, r) = tokio::join!(async { client.write_all(msg).await.and(client.flush().await) }, async {
                let mut got = vec![0u8; msg.len()];
                server.read_exact(&mut got).await.map(|_| got)
            });
            w.unwrap();
            assert_eq!(r.unwrap(), msg, "client to server");
            let (w, r) = tokio::join!(async { server.write_all(msg).await.and(server.flush().await) }, async {
                let mut got = vec![0u8; msg.len()];
                client.read_exact(&mut got).await.map(|_| got)
            });
            w.unwrap();
            assert_eq!(r.unwrap(), msg, "server to client");
        }
    }

    #[tokio::test]
    async fn every_suite_and_version_carries_data_both_ways() {
        let (setup, roots) = setup("suites");
        let p = provider::default_provider();
        for suite in p.cipher_suites.iter().copied() {
            let version = match suite {
                SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
                SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
            };
            // The certificate is ECDSA: the TLS 1.2 RSA suites cannot be negotiated with it.
            if format!("{:?}", suite.suite()).contains("_RSA_") {
                continue;
            }
            let (mut client, mut server, cb) = connect(&setup, client_config(&roots, version, Some(suite))).await;
            assert_eq!(client.get_ref().1.negotiated_cipher_suite(), Some(suite));
            exchange(&mut client, &mut server).await;
            // The exporter matches the client's own (RFC 9266), on TLS 1.3 only.
            let theirs = client.get_ref().1.export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None).ok();
            match suite {
                SupportedCipherSuite::Tls13(_) => assert_eq!(cb.tls_exporter, theirs, "{suite:?}"),
                SupportedCipherSuite::Tls12(_) => assert_eq!(cb.tls_exporter, None),
            }
            assert!(cb.tls_server_end_point.is_some());
        }
    }

    #[tokio::test]
    async fn a_session_resumes_from_a_stateless_ticket() {
        let (setup, roots) = setup("resume");
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let cfg = Arc::new(client_config(&roots, version, None));
            let (c, s) = duplex(64 * 1024);
            let connector = tokio_rustls::TlsConnector::from(cfg.clone());
            let (client, server) = tokio::join!(connector.connect(ServerName::try_from("localhost").unwrap(), c), setup.accept(s, false));
            let (mut client, (mut server, first)) = (client.unwrap(), server.unwrap());
            // The client takes its tickets in while reading.
            exchange(&mut client, &mut server).await;
            assert_eq!(client.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Full));
            drop((client, server));
            let (c, s) = duplex(64 * 1024);
            let (client, server) = tokio::join!(connector.connect(ServerName::try_from("localhost").unwrap(), c), setup.accept(s, false));
            let (mut client, (mut server, cb)) = (client.unwrap(), server.unwrap());
            assert_eq!(client.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Resumed), "{version:?}");
            exchange(&mut client, &mut server).await;
            // The resolver still runs on resumption: the end-point binding is the certificate's.
            assert!(first.tls_server_end_point.is_some());
            assert_eq!(cb.tls_server_end_point, first.tls_server_end_point);
            if version == &rustls::version::TLS13 {
                let theirs = client.get_ref().1.export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None).ok();
                assert_eq!(cb.tls_exporter, theirs);
            }
        }
    }

    #[tokio::test]
    async fn key_update_requested_by_the_client_is_answered() {
        let (setup, roots) = setup("keyupdate");
        let (mut client, mut server, _) = connect(&setup, client_config(&roots, &rustls::version::TLS13, None)).await;
        for _ in 0..3 {
            // The client switches keys and asks the server to switch too: the server must
            // read under the new key, and answer with its own update before its next data.
            client.get_mut().1.refresh_traffic_keys().unwrap();
            exchange(&mut client, &mut server).await;
            // Both keys are new: 8 records each way since (one small, seven for 100,000 bytes).
            assert_eq!(server.sequence(), (8, 8));
        }
    }

    #[tokio::test]
    async fn close_notify_ends_the_stream_and_shutdown_sends_one() {
        let (setup, roots) = setup("close");
        let (mut client, mut server, _) = connect(&setup, client_config(&roots, &rustls::version::TLS13, None)).await;
        client.write_all(b"last").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last");
        server.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_tampered_record_fails_authentication() {
        let (setup, roots) = setup("tamper");
        let (mut client, server, _) = connect(&setup, client_config(&roots, &rustls::version::TLS13, None)).await;
        // Seal a record on the client, flip one bit on the way.
        let conn = client.get_mut().1;
        conn.writer().write_all_sync(b"<message/>");
        let mut wire = Vec::new();
        conn.write_tls(&mut wire).unwrap();
        let last = wire.len() - 1;
        wire[last] ^= 1;
        let mut server = server;
        let (mut raw, _) = client.into_inner();
        raw.write_all(&wire).await.unwrap();
        let mut buf = [0u8; 16];
        let e = server.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // The server sent a fatal bad_record_mac alert (sealed): one record came back.
        let mut back = [0u8; 5];
        raw.read_exact(&mut back).await.unwrap();
        assert_eq!(back[0], 23);
    }

    #[tokio::test]
    async fn records_arriving_one_byte_at_a_time_are_reassembled() {
        let (setup, roots) = setup("dribble");
        let (c, s) = duplex(64 * 1024);
        let cfg = Arc::new(client_config(&roots, &rustls::version::TLS13, None));
        let connector = tokio_rustls::TlsConnector::from(cfg);
        let (client, server) = tokio::join!(connector.connect(ServerName::try_from("localhost").unwrap(), c), setup.accept(s, true));
        let (mut client, (mut server, _)) = (client.unwrap(), server.unwrap());
        // Seal a large message on the client, but let it reach the server one byte per write.
        let conn = client.get_mut().1;
        let msg: Vec<u8> = (0..40_000u32).map(|i| (i % 97) as u8).collect();
        conn.writer().write_all_sync(&msg);
        let mut wire = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut wire).unwrap();
        }
        let (mut raw, _) = client.into_inner();
        let (w, r) = tokio::join!(
            async {
                for b in &wire {
                    raw.write_all(std::slice::from_ref(b)).await.unwrap();
                    tokio::task::yield_now().await;
                }
            },
            async {
                let mut got = vec![0u8; msg.len()];
                server.read_exact(&mut got).await.map(|_| got)
            }
        );
        let () = w;
        assert_eq!(r.unwrap(), msg);
        // Nothing is held once everything was read.
        assert_eq!(server.held(), 0);
    }

    #[tokio::test]
    async fn data_sent_with_the_clients_finished_is_not_lost() {
        let (setup, roots) = setup("coalesced");
        let (c, s) = duplex(64 * 1024);
        let client = async move {
            let mut raw = c;
            let cfg = Arc::new(client_config(&roots, &rustls::version::TLS13, None));
            let mut conn = rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
            // Queued before the handshake: rustls sends it in the same flight as its Finished.
            conn.writer().write_all_sync(b"<stream:stream>");
            loop {
                let mut wire = Vec::new();
                while conn.wants_write() {
                    conn.write_tls(&mut wire).unwrap();
                }
                raw.write_all(&wire).await.unwrap();
                if !conn.is_handshaking() && !conn.wants_write() {
                    break;
                }
                let mut buf = vec![0u8; 16384];
                let n = raw.read(&mut buf).await.unwrap();
                assert!(n > 0, "server closed during the handshake");
                conn.read_tls(&mut &buf[..n]).unwrap();
                conn.process_new_packets().unwrap();
            }
            raw
        };
        let (raw, server) = tokio::join!(client, setup.accept(s, true));
        let (mut server, _) = server.unwrap();
        let mut got = [0u8; 15];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), server.read_exact(&mut got)).await;
        read.expect("the data that came with Finished was lost").unwrap();
        assert_eq!(&got, b"<stream:stream>");
        drop(raw);
    }

    trait WriteAllSync {
        fn write_all_sync(&mut self, b: &[u8]);
    }
    impl WriteAllSync for rustls::Writer<'_> {
        fn write_all_sync(&mut self, b: &[u8]) {
            std::io::Write::write_all(self, b).unwrap();
        }
    }
}
