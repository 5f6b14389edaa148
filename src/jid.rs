//! JIDs (RFC 7622). Parsing and normalisation come from the `jid` crate (PRECIS-style
//! nodeprep/resourceprep and IDNA for domains); `Jid`, `BareJid` and `FullJid` are distinct types.

pub use jid::{BareJid, FullJid, Jid};

/// Parse an address from the network; `None` when it is not a valid JID.
pub fn parse(s: &str) -> Option<Jid> {
    Jid::new(s).ok()
}

/// The bare part of an address, as a slice of its normalised form: what `to_bare()` would
/// give, without building (and allocating) a new JID. For comparisons and lookups on the path
/// of every stanza.
pub fn bare_str(j: &Jid) -> &str {
    let s = j.as_str();
    match j.resource() {
        Some(r) => &s[..s.len() - r.as_str().len() - 1],
        None => s,
    }
}

/// The node (localpart) of a JID as a plain string, empty for a domain JID.
pub fn node_str(j: &Jid) -> &str {
    j.node().map(|n| n.as_str()).unwrap_or("")
}

/// Does `item` (a blocking / privacy list entry) match `jid`? XEP-0191 uses the matching order of
/// XEP-0016: full JID, bare JID, domain/resource, domain.
pub fn matches_item(item: &Jid, jid: &Jid) -> bool {
    if item == jid {
        return true;
    }
    if item.is_bare() && item.node().is_some() {
        return item.node() == jid.node() && item.domain() == jid.domain();
    }
    if item.node().is_none() {
        if item.domain() != jid.domain() {
            return false;
        }
        return match item.resource() {
            None => true,
            Some(r) => jid.node().is_none() && jid.resource() == Some(r),
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        let j = parse("Juliet@Example.COM/Balcony").unwrap();
        assert_eq!(j.to_string(), "juliet@example.com/Balcony");
        assert!(parse("a@b@c").is_none());
        assert!(parse("").is_none());
    }

    #[test]
    fn bare_part() {
        for (j, bare) in [("a@b/c", "a@b"), ("A@B/c/d", "a@b"), ("a@b", "a@b"), ("b/r@s", "b"), ("b", "b")] {
            let j = parse(j).unwrap();
            assert_eq!(bare_str(&j), bare);
            assert_eq!(bare_str(&j), j.to_bare().as_str());
        }
    }

    #[test]
    fn blocking_matches() {
        let full = parse("romeo@montague.lit/orchard").unwrap();
        for item in ["romeo@montague.lit/orchard", "romeo@montague.lit", "montague.lit"] {
            assert!(matches_item(&parse(item).unwrap(), &full), "{item}");
        }
        for item in ["romeo@montague.lit/other", "juliet@montague.lit", "capulet.lit"] {
            assert!(!matches_item(&parse(item).unwrap(), &full), "{item}");
        }
    }
}
