//! SASL (RFC 6120 section 6): mechanisms, failure conditions, PLAIN, and the throttle that slows
//! repeated failures per account and per address. SCRAM lives in `scram`.

pub mod credentials;
pub mod scram;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use credentials::Hash;

use crate::xml::{ns, Element};

/// RFC 6120 section 6.5 failure conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Aborted,
    AccountDisabled,
    CredentialsExpired,
    EncryptionRequired,
    IncorrectEncoding,
    InvalidAuthzid,
    InvalidMechanism,
    MalformedRequest,
    MechanismTooWeak,
    NotAuthorized,
    TemporaryAuthFailure,
}

impl Failure {
    pub fn condition(self) -> &'static str {
        use Failure::*;
        match self {
            Aborted => "aborted",
            AccountDisabled => "account-disabled",
            CredentialsExpired => "credentials-expired",
            EncryptionRequired => "encryption-required",
            IncorrectEncoding => "incorrect-encoding",
            InvalidAuthzid => "invalid-authzid",
            InvalidMechanism => "invalid-mechanism",
            MalformedRequest => "malformed-request",
            MechanismTooWeak => "mechanism-too-weak",
            NotAuthorized => "not-authorized",
            TemporaryAuthFailure => "temporary-auth-failure",
        }
    }

    /// `<failure><condition/></failure>`, as sent to the peer (RFC 6120 section 6.4.5).
    pub fn to_element(self) -> Element {
        Element::new("failure", ns::SASL).child(Element::new(self.condition(), ns::SASL))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    ScramSha256Plus,
    ScramSha1Plus,
    ScramSha256,
    ScramSha1,
    Plain,
}

impl Mechanism {
    /// Strongest first: the order they are advertised in.
    pub const ALL: [Mechanism; 5] =
        [Mechanism::ScramSha256Plus, Mechanism::ScramSha1Plus, Mechanism::ScramSha256, Mechanism::ScramSha1, Mechanism::Plain];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
            Mechanism::ScramSha1Plus => "SCRAM-SHA-1-PLUS",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::Plain => "PLAIN",
        }
    }

    pub fn from_name(s: &str) -> Option<Mechanism> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }

    pub fn hash(self) -> Option<Hash> {
        match self {
            Mechanism::ScramSha256Plus | Mechanism::ScramSha256 => Some(Hash::Sha256),
            Mechanism::ScramSha1Plus | Mechanism::ScramSha1 => Some(Hash::Sha1),
            Mechanism::Plain => None,
        }
    }

    pub fn is_plus(self) -> bool {
        matches!(self, Mechanism::ScramSha256Plus | Mechanism::ScramSha1Plus)
    }
}

/// The data of an `<auth/>` or `<response/>`: base64, "=" for empty (RFC 6120 section 6.4.2).
pub fn decode(text: &str) -> Result<Vec<u8>, Failure> {
    let t = text.trim();
    if t == "=" {
        return Ok(Vec::new());
    }
    credentials::unb64(t).ok_or(Failure::IncorrectEncoding)
}

/// Compare secrets without leaking where they first differ (the length is not secret).
/// Lowercase hex of `bytes` (digests and MACs on the wire: component handshakes, dialback
/// keys, webhook signatures).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`.
pub fn parse_plain(data: &[u8]) -> Result<(Option<String>, String, String), Failure> {
    let s = std::str::from_utf8(data).map_err(|_| Failure::MalformedRequest)?;
    let mut it = s.split('\0');
    let (authz, user, pass) = match (it.next(), it.next(), it.next(), it.next()) {
        (Some(a), Some(u), Some(p), None) => (a, u, p),
        _ => return Err(Failure::MalformedRequest),
    };
    if user.is_empty() || pass.is_empty() {
        return Err(Failure::MalformedRequest);
    }
    Ok(((!authz.is_empty()).then(|| authz.to_string()), user.to_string(), pass.to_string()))
}

/// Slows down repeated failures: after `free` failures for the same account or the same
/// address, each further failure is answered only after a delay that doubles, up to `max`.
/// Entries are forgotten after a quiet period.
pub struct AuthThrottle {
    free: u32,
    max: Duration,
    failures: Mutex<HashMap<ThrottleKey, (u32, Instant)>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ThrottleKey {
    Account(String),
    Addr(IpAddr),
}

const FORGET_AFTER: Duration = Duration::from_secs(900);

impl AuthThrottle {
    pub fn new(free: u32, max: Duration) -> Self {
        AuthThrottle { free, max, failures: Mutex::new(HashMap::new()) }
    }

    /// Record a failure for these keys and return how long to wait before answering.
    pub fn failure(&self, keys: &[ThrottleKey], now: Instant) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, (_, t)| now.duration_since(*t) < FORGET_AFTER);
        }
        let mut worst = 0;
        for k in keys {
            let e = map.entry(k.clone()).or_insert((0, now));
            if now.duration_since(e.1) > FORGET_AFTER {
                e.0 = 0;
            }
            e.0 += 1;
            e.1 = now;
            worst = worst.max(e.0);
        }
        self.delay_for(worst)
    }

    fn delay_for(&self, failures: u32) -> Duration {
        if failures <= self.free {
            return Duration::ZERO;
        }
        let exp = (failures - self.free - 1).min(16);
        Duration::from_secs(1u64 << exp).min(self.max)
    }

    /// A success clears the account's record (the address keeps its count).
    pub fn success(&self, account: &ThrottleKey) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_equal_only_when_identical() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn plain_parsing() {
        assert_eq!(parse_plain(b"\0juliet\0pw").unwrap(), (None, "juliet".into(), "pw".into()));
        assert_eq!(parse_plain(b"a@b\0juliet\0pw").unwrap().0, Some("a@b".into()));
        assert_eq!(parse_plain(b"juliet\0pw").unwrap_err(), Failure::MalformedRequest);
        assert_eq!(parse_plain(b"\0\0pw").unwrap_err(), Failure::MalformedRequest);
    }

    #[test]
    fn throttle_slows_per_account_and_per_address() {
        let t = AuthThrottle::new(3, Duration::from_secs(30));
        let now = Instant::now();
        let acct = ThrottleKey::Account("a@x".into());
        let ip = ThrottleKey::Addr("127.0.0.1".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(t.failure(&[acct.clone(), ip.clone()], now), Duration::ZERO);
        }
        assert_eq!(t.failure(&[acct.clone(), ip.clone()], now), Duration::from_secs(1));
        assert_eq!(t.failure(&[acct.clone(), ip.clone()], now), Duration::from_secs(2));
        // Another account from the same address is slowed too.
        assert_eq!(t.failure(&[ThrottleKey::Account("b@x".into()), ip.clone()], now), Duration::from_secs(4));
        for _ in 0..10 {
            t.failure(std::slice::from_ref(&acct), now);
        }
        assert_eq!(t.failure(std::slice::from_ref(&acct), now), Duration::from_secs(30));
        // Forgotten after a quiet period.
        assert_eq!(t.failure(std::slice::from_ref(&acct), now + FORGET_AFTER + Duration::from_secs(1)), Duration::ZERO);
        t.success(&acct);
    }
}
