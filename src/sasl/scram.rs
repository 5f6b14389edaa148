//! SCRAM server (RFC 5802, RFC 7677) with channel binding (RFC 5929 tls-server-end-point,
//! RFC 9266 tls-exporter). A state machine with no IO: the caller fetches credentials between
//! the two steps.

use rand::distributions::Alphanumeric;
use rand::Rng;

use super::credentials::{b64, unb64, Credentials, Hash};
use super::Failure;

/// Channel-binding data the TLS layer offers for this connection.
#[derive(Debug, Clone, Default)]
pub struct ChannelBindings {
    pub tls_exporter: Option<Vec<u8>>,
    pub tls_server_end_point: Option<Vec<u8>>,
}

impl ChannelBindings {
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        match name {
            "tls-exporter" => self.tls_exporter.as_deref(),
            "tls-server-end-point" => self.tls_server_end_point.as_deref(),
            _ => None,
        }
    }

    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.tls_exporter.is_some() {
            v.push("tls-exporter");
        }
        if self.tls_server_end_point.is_some() {
            v.push("tls-server-end-point");
        }
        v
    }

    pub fn any(&self) -> bool {
        self.tls_exporter.is_some() || self.tls_server_end_point.is_some()
    }
}

/// After the client-first message: who is logging in and what to check later.
#[derive(Debug)]
pub struct ScramFirst {
    pub username: String,
    pub authzid: Option<String>,
    gs2_header: String,
    client_first_bare: String,
    client_nonce: String,
    cb_data: Vec<u8>,
}

#[derive(Debug)]
pub struct ScramPending {
    first: ScramFirst,
    server_first: String,
    nonce: String,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

/// RFC 5802 section 5.1: `=2C` and `=3D` are the only escapes; any other `=` is malformed.
fn decode_saslname(s: &str) -> Result<String, Failure> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let esc = rest.get(i..i + 3).ok_or(Failure::MalformedRequest)?;
        match esc {
            "=2C" => out.push(','),
            "=3D" => out.push('='),
            _ => return Err(Failure::MalformedRequest),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Step 1: parse client-first. `plus` is whether the mechanism chosen is a -PLUS one;
/// `offered_plus` whether the server advertised any -PLUS mechanism.
pub fn client_first(msg: &[u8], plus: bool, offered_plus: bool, cb: &ChannelBindings) -> Result<ScramFirst, Failure> {
    let msg = std::str::from_utf8(msg).map_err(|_| Failure::MalformedRequest)?;
    let mut parts = msg.splitn(3, ',');
    let flag = parts.next().ok_or(Failure::MalformedRequest)?;
    let authz = parts.next().ok_or(Failure::MalformedRequest)?;
    let bare = parts.next().ok_or(Failure::MalformedRequest)?;
    let cb_data = match (flag, plus) {
        ("n", false) => Vec::new(),
        // The client supports channel binding but thinks we do not: if we offered it, this is
        // a downgrade (RFC 5802 section 6).
        ("y", false) if offered_plus => return Err(Failure::NotAuthorized),
        ("y", false) => Vec::new(),
        (f, true) if f.starts_with("p=") => cb.get(&f[2..]).ok_or(Failure::NotAuthorized)?.to_vec(),
        _ => return Err(Failure::MalformedRequest),
    };
    let authzid = if authz.is_empty() { None } else { Some(decode_saslname(authz.strip_prefix("a=").ok_or(Failure::MalformedRequest)?)?) };
    let mut username = None;
    let mut nonce = None;
    for attr in bare.split(',') {
        if let Some(v) = attr.strip_prefix("n=") {
            username = Some(decode_saslname(v)?);
        } else if let Some(v) = attr.strip_prefix("r=") {
            nonce = Some(v.to_string());
        } else if attr.starts_with("m=") {
            return Err(Failure::MalformedRequest);
        }
    }
    let username = username.filter(|u| !u.is_empty()).ok_or(Failure::MalformedRequest)?;
    let client_nonce =
        nonce.filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')).ok_or(Failure::MalformedRequest)?;
    Ok(ScramFirst { username, authzid, gs2_header: format!("{flag},{authz},"), client_first_bare: bare.to_string(), client_nonce, cb_data })
}

impl ScramFirst {
    /// Build server-first from the stored credentials. Unknown users get made-up credentials
    /// so the exchange looks the same and fails at the proof (no account enumeration).
    pub fn server_first(self, hash: Hash, creds: Option<&Credentials>) -> (ScramPending, Vec<u8>) {
        let server_nonce: String = rand::thread_rng().sample_iter(&Alphanumeric).take(24).map(char::from).collect();
        let nonce = format!("{}{}", self.client_nonce, server_nonce);
        let (salt, iterations, keys) = match creds {
            Some(c) => (c.salt.clone(), c.iterations, c.keys(hash).clone()),
            None => {
                let salt: Vec<u8> = hash.digest(self.username.as_bytes())[..16].to_vec();
                let bogus = super::credentials::ScramKeys { stored_key: vec![0; 32], server_key: vec![0; 32] };
                (salt, 4096, bogus)
            }
        };
        let server_first = format!("r={nonce},s={},i={iterations}", b64(&salt));
        let out = server_first.clone().into_bytes();
        (ScramPending { first: self, server_first, nonce, stored_key: keys.stored_key, server_key: keys.server_key }, out)
    }
}

impl ScramPending {
    pub fn username(&self) -> &str {
        &self.first.username
    }

    pub fn authzid(&self) -> Option<&str> {
        self.first.authzid.as_deref()
    }

    /// Step 2: check client-final; on success return server-final (`v=...`).
    pub fn client_final(&self, hash: Hash, msg: &[u8]) -> Result<Vec<u8>, Failure> {
        let msg = std::str::from_utf8(msg).map_err(|_| Failure::MalformedRequest)?;
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(Failure::MalformedRequest)?;
        let mut cbind = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                cbind = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        let cbind = unb64(cbind.ok_or(Failure::MalformedRequest)?).ok_or(Failure::IncorrectEncoding)?;
        let mut expected = self.first.gs2_header.clone().into_bytes();
        expected.extend_from_slice(&self.first.cb_data);
        if cbind != expected {
            return Err(Failure::NotAuthorized);
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(Failure::NotAuthorized);
        }
        let proof = unb64(proof).ok_or(Failure::IncorrectEncoding)?;
        let auth_message = format!("{},{},{}", self.first.client_first_bare, self.server_first, without_proof);
        let client_sig = hash.hmac(&self.stored_key, auth_message.as_bytes());
        if proof.len() != client_sig.len() {
            return Err(Failure::NotAuthorized);
        }
        let client_key: Vec<u8> = proof.iter().zip(&client_sig).map(|(a, b)| a ^ b).collect();
        let check = hash.digest(&client_key);
        if !super::constant_time_eq(&check, &self.stored_key) {
            return Err(Failure::NotAuthorized);
        }
        let server_sig = hash.hmac(&self.server_key, auth_message.as_bytes());
        Ok(format!("v={}", b64(&server_sig)).into_bytes())
    }
}

/// Client side of SCRAM, used by the tests and the load generator.
pub mod client {
    use super::*;

    pub struct ScramClient {
        pub hash: Hash,
        pub gs2_header: String,
        pub cb_data: Vec<u8>,
        pub client_first_bare: String,
        pub nonce: String,
        pub password: String,
        server_sig: Vec<u8>,
    }

    impl ScramClient {
        pub fn new(hash: Hash, user: &str, password: &str, cb: Option<(&str, Vec<u8>)>) -> (ScramClient, String) {
            let nonce: String = rand::thread_rng().sample_iter(&Alphanumeric).take(24).map(char::from).collect();
            let (gs2_header, cb_data) = match cb {
                Some((name, data)) => (format!("p={name},,"), data),
                None => ("n,,".to_string(), Vec::new()),
            };
            let bare = format!("n={},r={nonce}", user.replace('=', "=3D").replace(',', "=2C"));
            let first = format!("{gs2_header}{bare}");
            (
                ScramClient {
                    hash,
                    gs2_header,
                    cb_data,
                    client_first_bare: bare,
                    nonce,
                    password: password.to_string(),
                    server_sig: Vec::new(),
                },
                first,
            )
        }

        pub fn client_final(&mut self, server_first: &str) -> Option<String> {
            let mut nonce = None;
            let mut salt = None;
            let mut iters = None;
            for a in server_first.split(',') {
                if let Some(v) = a.strip_prefix("r=") {
                    nonce = Some(v);
                } else if let Some(v) = a.strip_prefix("s=") {
                    salt = unb64(v);
                } else if let Some(v) = a.strip_prefix("i=") {
                    iters = v.parse::<u32>().ok();
                }
            }
            let nonce = nonce?;
            if !nonce.starts_with(&self.nonce) {
                return None;
            }
            let salted = self.hash.salted_password(self.password.as_bytes(), &salt?, iters?);
            let client_key = self.hash.hmac(&salted, b"Client Key");
            let stored = self.hash.digest(&client_key);
            let mut cbind = self.gs2_header.clone().into_bytes();
            cbind.extend_from_slice(&self.cb_data);
            let without_proof = format!("c={},r={nonce}", b64(&cbind));
            let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
            let sig = self.hash.hmac(&stored, auth_message.as_bytes());
            let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
            let server_key = self.hash.hmac(&salted, b"Server Key");
            self.server_sig = self.hash.hmac(&server_key, auth_message.as_bytes());
            Some(format!("{without_proof},p={}", b64(&proof)))
        }

        pub fn verify_server_final(&self, server_final: &str) -> bool {
            server_final.strip_prefix("v=").and_then(unb64).is_some_and(|v| v == self.server_sig)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client::ScramClient;
    use super::*;

    fn run(hash: Hash, password: &str, plus: Option<(&str, Vec<u8>)>, server_cb: &ChannelBindings) -> Result<(), Failure> {
        let creds = Credentials::new("pencil", 4096);
        let is_plus = plus.is_some();
        let (mut c, first) = ScramClient::new(hash, "user", password, plus);
        let f = client_first(first.as_bytes(), is_plus, server_cb.any(), server_cb)?;
        assert_eq!(f.username, "user");
        let (pending, sf) = f.server_first(hash, Some(&creds));
        let cf = c.client_final(std::str::from_utf8(&sf).unwrap()).unwrap();
        let v = pending.client_final(hash, cf.as_bytes())?;
        assert!(c.verify_server_final(std::str::from_utf8(&v).unwrap()));
        Ok(())
    }

    #[test]
    fn full_exchanges() {
        let none = ChannelBindings::default();
        let cb = ChannelBindings { tls_exporter: Some(vec![7; 32]), tls_server_end_point: Some(vec![9; 32]) };
        assert!(run(Hash::Sha1, "pencil", None, &none).is_ok());
        assert!(run(Hash::Sha256, "pencil", None, &none).is_ok());
        assert_eq!(run(Hash::Sha256, "wrong", None, &none), Err(Failure::NotAuthorized));
        assert!(run(Hash::Sha256, "pencil", Some(("tls-exporter", vec![7; 32])), &cb).is_ok());
        assert!(run(Hash::Sha1, "pencil", Some(("tls-server-end-point", vec![9; 32])), &cb).is_ok());
        // Binding data that does not match the server's view of the channel.
        assert_eq!(run(Hash::Sha256, "pencil", Some(("tls-exporter", vec![8; 32])), &cb), Err(Failure::NotAuthorized));
    }

    #[test]
    fn downgrade_and_malformed() {
        let cb = ChannelBindings { tls_exporter: Some(vec![7; 32]), tls_server_end_point: None };
        assert_eq!(client_first(b"y,,n=user,r=abc", false, true, &cb).unwrap_err(), Failure::NotAuthorized);
        assert!(client_first(b"y,,n=user,r=abc", false, false, &cb).is_ok());
        assert_eq!(client_first(b"n,,r=abc", false, false, &cb).unwrap_err(), Failure::MalformedRequest);
        assert_eq!(client_first(b"garbage", false, false, &cb).unwrap_err(), Failure::MalformedRequest);
        assert_eq!(client_first(b"n,,n=us=er,r=abc", false, false, &cb).unwrap_err(), Failure::MalformedRequest);
        assert_eq!(client_first(b"n,,n=us=2Cer,r=abc", false, false, &cb).unwrap().username, "us,er");
    }
}
