//! TLS for client streams: certificates per domain (loaded, or self-signed with rcgen on first
//! start and reused), rustls server configs for STARTTLS and direct TLS (ALPN `xmpp-client`,
//! XEP-0368), TLS 1.2 and 1.3 only, and the channel-binding data of a finished handshake.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::crypto::ring as provider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::sasl::scram::ChannelBindings;

/// A client connection, before or after TLS.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
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
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
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
        self.pick(hello.server_name()).map(|c| c.key.clone())
    }
}

pub struct TlsSetup {
    resolver: Arc<Resolver>,
    pub starttls: TlsAcceptor,
    pub direct: TlsAcceptor,
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
        let resolver = Arc::new(Resolver { certs, default: config.default_host().to_string() });
        let build = |alpn: Vec<Vec<u8>>| -> Result<Arc<ServerConfig>, TlsSetupError> {
            let mut sc = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| TlsSetupError::Bad("tls".into(), e.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
            sc.alpn_protocols = alpn;
            sc.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
            Ok(Arc::new(sc))
        };
        Ok(TlsSetup {
            starttls: TlsAcceptor::from(build(Vec::new())?),
            direct: TlsAcceptor::from(build(vec![b"xmpp-client".to_vec()])?),
            resolver,
        })
    }

    /// Channel-binding values for a finished handshake.
    pub fn bindings(&self, tls: &TlsStream<TcpStream>) -> ChannelBindings {
        let (_, conn) = tls.get_ref();
        let tls_exporter = conn.export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None).ok();
        let tls_server_end_point = self.resolver.pick(conn.server_name()).map(|c| c.end_point.clone());
        ChannelBindings { tls_exporter, tls_server_end_point }
    }
}
