//! JIDs (RFC 7622). Parsing and normalisation come from the `jid` crate (PRECIS-style
//! nodeprep/resourceprep and IDNA for domains); `Jid`, `BareJid` and `FullJid` are distinct types.

pub use jid::{BareJid, FullJid, Jid};

/// Parse an address from the network; `None` when it is not a valid JID.
pub fn parse(s: &str) -> Option<Jid> {
    Jid::new(s).ok()
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
