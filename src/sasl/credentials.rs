//! Stored credentials: SCRAM-SHA-1 and SCRAM-SHA-256 keys (RFC 5802 section 3) from one salt,
//! and an argon2id hash for mechanisms that see the password (PLAIN, the HTTP API).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha1::Sha1;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha1,
    Sha256,
}

impl Hash {
    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha1 => {
                let mut m = Hmac::<Sha1>::new_from_slice(key).expect("hmac accepts any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Hash::Sha256 => {
                let mut m = Hmac::<Sha256>::new_from_slice(key).expect("hmac accepts any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha1 => Sha1::digest(data).to_vec(),
            Hash::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Hash::Sha1 => {
                let mut out = [0u8; 20];
                pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out);
                out.to_vec()
            }
            Hash::Sha256 => {
                let mut out = [0u8; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
                out.to_vec()
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl ScramKeys {
    pub fn derive(hash: Hash, password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
        let salted = hash.salted_password(password.as_bytes(), salt, iterations);
        let client_key = hash.hmac(&salted, b"Client Key");
        ScramKeys { stored_key: hash.digest(&client_key), server_key: hash.hmac(&salted, b"Server Key") }
    }
}

#[derive(Debug, Clone)]
pub struct Credentials {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub sha1: ScramKeys,
    pub sha256: ScramKeys,
    pub argon2: String,
}

impl Credentials {
    pub fn new(password: &str, iterations: u32) -> Credentials {
        let mut salt = vec![0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        let argon_salt = SaltString::generate(&mut rand::thread_rng());
        let argon2 = Argon2::default().hash_password(password.as_bytes(), &argon_salt).map(|h| h.to_string()).unwrap_or_default();
        Credentials {
            sha1: ScramKeys::derive(Hash::Sha1, password, &salt, iterations),
            sha256: ScramKeys::derive(Hash::Sha256, password, &salt, iterations),
            salt,
            iterations,
            argon2,
        }
    }

    pub fn keys(&self, hash: Hash) -> &ScramKeys {
        match hash {
            Hash::Sha1 => &self.sha1,
            Hash::Sha256 => &self.sha256,
        }
    }

    pub fn verify_password(&self, password: &str) -> bool {
        match PasswordHash::new(&self.argon2) {
            Ok(h) => Argon2::default().verify_password(password.as_bytes(), &h).is_ok(),
            Err(_) => false,
        }
    }
}

pub fn b64(data: &[u8]) -> String {
    B64.encode(data)
}

pub fn unb64(s: &str) -> Option<Vec<u8>> {
    B64.decode(s.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5802 section 5 test vector (SCRAM-SHA-1, password "pencil").
    #[test]
    fn rfc5802_keys() {
        let salt = unb64("QSXCR+Q6sek8bf92").unwrap();
        let k = ScramKeys::derive(Hash::Sha1, "pencil", &salt, 4096);
        let server_sig = Hash::Sha1.hmac(
            &k.server_key,
            b"n=user,r=fyko+d2lbbFgONRv9qkxdawL,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096,c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j",
        );
        assert_eq!(b64(&server_sig), "rmF9pqV8S7suAoZWja4dJRkFsKQ=");
    }

    #[test]
    fn argon2_verifies() {
        let c = Credentials::new("secret", 4096);
        assert!(c.verify_password("secret"));
        assert!(!c.verify_password("Secret"));
        assert!(!c.argon2.contains("secret"));
    }
}
