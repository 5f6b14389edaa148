//! Certificates of other servers (RFC 6120 section 13.7.2, RFC 6125, XEP-0178): the trust
//! anchors (`s2s.ca_file`, else the Mozilla roots of `webpki-roots`), and the one check of a
//! peer's chain against the domain it speaks for.
//!
//! The TLS handshake itself never fails on a certificate: it only proves that the peer holds
//! the key of the chain it sent (handshake signatures are checked as usual). Whether that chain
//! authenticates a domain is decided afterwards, by `Trust::verify`, when the domain is known:
//! outgoing, the remote domain; incoming, the `from` of the stream header after TLS. A peer
//! whose certificate does not verify can still authenticate with dialback (XEP-0220), unless
//! `s2s.require_valid_certificates` is set.
//!
//! Identities: DNS-IDs (subjectAltName dNSName, a `*` wildcard as the whole left-most label
//! matching exactly one label), as RFC 6120 section 13.7.1.2 and XEP-0178 prefer. XmppAddr
//! and SRV-ID entries are not consulted (webpki does not read `otherName`), nor the subject's
//! common name; a certificate that names its domain only there does not verify, and the peer
//! falls back to dialback. The chain is checked for the TLS server usage (EKU `serverAuth`)
//! in both directions: an incoming peer's client certificate is its server certificate, and
//! public CAs no longer issue `clientAuth` to servers.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use super::tls::TlsSetupError;

/// The trust anchors for other servers' certificates.
#[derive(Debug)]
pub struct Trust {
    roots: RootCertStore,
    algorithms: WebPkiSupportedAlgorithms,
}

/// Why a peer's certificate does not authenticate a domain.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CertError {
    #[error("no certificate")]
    None,
    #[error("{0:?} is not a DNS domain name")]
    BadDomain(String),
    #[error("{0}")]
    Invalid(rustls::Error),
}

impl Trust {
    /// Anchors from `ca_file` (PEM, every certificate in it), else the built-in roots.
    pub fn new(ca_file: Option<&Path>) -> Result<Trust, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| TlsSetupError::Io(path.display().to_string(), e))?;
                for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                    let c = c.map_err(|e| TlsSetupError::Io(path.display().to_string(), e))?;
                    roots.add(c).map_err(|e| TlsSetupError::Bad(path.display().to_string(), e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(TlsSetupError::Bad(path.display().to_string(), "no certificate found".into()));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        Ok(Trust { roots, algorithms })
    }

    /// Does `chain` (end entity first) authenticate the server of `domain`, now?
    pub fn verify(&self, chain: &[CertificateDer<'_>], domain: &str) -> Result<(), CertError> {
        self.verify_at(chain, domain, UnixTime::now())
    }

    fn verify_at(&self, chain: &[CertificateDer<'_>], domain: &str, now: UnixTime) -> Result<(), CertError> {
        let (end_entity, intermediates) = chain.split_first().ok_or(CertError::None)?;
        // IP literals are not domains (they are never federated with either).
        let name = match ServerName::try_from(domain) {
            Ok(n @ ServerName::DnsName(_)) => n,
            _ => return Err(CertError::BadDomain(domain.to_string())),
        };
        let cert = ParsedCertificate::try_from(end_entity).map_err(CertError::Invalid)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(&cert, &self.roots, intermediates, now, self.algorithms.all)
            .map_err(CertError::Invalid)?;
        rustls::client::verify_server_name(&cert, &name).map_err(CertError::Invalid)
    }

    /// The verifier for server-to-server handshakes, both sides.
    pub fn deferred(&self) -> Arc<Deferred> {
        Arc::new(Deferred { algorithms: self.algorithms })
    }
}

/// A certificate verifier for server-to-server TLS that checks the handshake's signatures
/// (the peer holds the key of its certificate) and leaves the chain to `Trust::verify`, once
/// the domain to check it for is known. As a server, it asks for a client certificate and does
/// not require one.
#[derive(Debug)]
pub struct Deferred {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Deferred {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for Deferred {
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a peer sends the certificate of its domain whoever issued it.
        &[]
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    // Signatures as for a server certificate (above).
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ServerCertVerifier::supported_verify_schemes(self)
    }
}

/// The chain a peer sent, owned (empty when it sent none).
pub fn owned_chain(certs: Option<&[CertificateDer<'_>]>) -> Vec<CertificateDer<'static>> {
    certs.unwrap_or_default().iter().map(|c| c.clone().into_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn ca(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        Ca { cert: p.self_signed(&key).unwrap(), key }
    }

    /// A one-certificate chain for `names`, issued by `ca`.
    fn leaf(ca: &Ca, names: &[&str], cn: Option<&str>) -> Vec<CertificateDer<'static>> {
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        let key = KeyPair::generate().unwrap();
        vec![p.signed_by(&key, &ca.cert, &ca.key).unwrap().der().clone()]
    }

    fn trust(ca: &Ca) -> Trust {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert.der().clone()).unwrap();
        Trust { roots, algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms }
    }

    fn invalid(r: Result<(), CertError>) -> bool {
        matches!(r, Err(CertError::Invalid(_)))
    }

    #[test]
    fn dns_ids_match_exactly_and_without_regard_to_case() {
        let ca = ca("Test CA");
        let t = trust(&ca);
        let c = leaf(&ca, &["example.org", "Chat.Example.ORG"], None);
        assert_eq!(t.verify(&c, "example.org"), Ok(()));
        assert_eq!(t.verify(&c, "EXAMPLE.org"), Ok(()));
        assert_eq!(t.verify(&c, "chat.example.org"), Ok(()));
        assert!(invalid(t.verify(&c, "other.example.org")));
        assert!(invalid(t.verify(&c, "example.org.evil.test")));
        assert!(invalid(t.verify(&c, "org")));
    }

    #[test]
    fn a_wildcard_stands_for_exactly_one_left_most_label() {
        let ca = ca("Test CA");
        let t = trust(&ca);
        let c = leaf(&ca, &["*.example.org"], None);
        assert_eq!(t.verify(&c, "conference.example.org"), Ok(()));
        // Not the parent domain, not two labels deep (RFC 6125 section 6.4.3).
        assert!(invalid(t.verify(&c, "example.org")));
        assert!(invalid(t.verify(&c, "a.b.example.org")));
    }

    #[test]
    fn the_common_name_is_not_an_identity() {
        let ca = ca("Test CA");
        let t = trust(&ca);
        // RFC 6125 section 6.4.4 would allow a CN-ID only without any subjectAltName; webpki
        // reads none, and RFC 6120 servers have had DNS-IDs for a decade.
        let c = leaf(&ca, &["other.example"], Some("example.org"));
        assert!(invalid(t.verify(&c, "example.org")));
    }

    #[test]
    fn only_chains_to_a_trusted_anchor_verify() {
        let ours = ca("Our CA");
        let theirs = ca("Another CA");
        let t = trust(&ours);
        assert!(invalid(t.verify(&leaf(&theirs, &["example.org"], None), "example.org")));
        let self_signed = rcgen::generate_simple_self_signed(vec!["example.org".to_string()]).unwrap();
        assert!(invalid(t.verify(&[self_signed.cert.der().clone()], "example.org")));
        assert_eq!(t.verify(&[], "example.org"), Err(CertError::None));
        // An IP address is no domain.
        assert_eq!(t.verify(&leaf(&ours, &["127.0.0.1"], None), "127.0.0.1"), Err(CertError::BadDomain("127.0.0.1".into())));
    }

    #[test]
    fn expiry_is_checked() {
        let ca = ca("Test CA");
        let t = trust(&ca);
        let c = leaf(&ca, &["example.org"], None);
        // rcgen's default validity ends in 4096; a clock past it rejects the certificate.
        let far = UnixTime::since_unix_epoch(std::time::Duration::from_secs(4_200_000_000 * 32));
        assert!(invalid(t.verify_at(&c, "example.org", far)));
        assert_eq!(t.verify_at(&c, "example.org", UnixTime::now()), Ok(()));
    }

    #[test]
    fn a_ca_file_is_read_and_an_empty_one_refused() {
        let dir = std::env::temp_dir().join(format!("starling-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = ca("File CA");
        let path = dir.join("ca.pem");
        std::fs::write(&path, ca.cert.pem()).unwrap();
        let t = Trust::new(Some(&path)).unwrap();
        assert_eq!(t.verify(&leaf(&ca, &["example.org"], None), "example.org"), Ok(()));
        std::fs::write(&path, "").unwrap();
        assert!(Trust::new(Some(&path)).is_err());
        assert!(Trust::new(None).unwrap().roots.len() > 50, "the built-in roots");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
