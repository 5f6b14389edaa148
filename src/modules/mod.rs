//! Features as modules. Each module declares, as data, the specifications it implements, the
//! service-discovery features it adds and the IQ namespaces it handles; [`MODULES`] is the one
//! feature index: disco replies and the README's specification table are generated from it.

pub mod blocking;
pub mod bots;
pub mod caps;
pub mod carbons;
pub mod disco;
pub mod last;
pub mod mam;
pub mod muc;
pub mod offline;
pub mod pep;
pub mod ping;
pub mod presence;
pub mod private;
pub mod roster;
pub mod time;
pub mod vcard;
pub mod version;

use std::future::Future;
use std::pin::Pin;

use crate::error::{Condition, StanzaError};
use crate::jid::{BareJid, Jid};
use crate::router;
use crate::server::Server;
use crate::stanza::Stanza;
use crate::xml::Element;

/// A specification a module implements, for the feature table.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub id: &'static str,
    pub title: &'static str,
    pub note: &'static str,
}

/// Where an IQ was addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IqTarget {
    /// The server itself (a served domain).
    Host(String),
    /// A local account's bare JID (or no `to` from the account's own client).
    Account(BareJid),
}

pub struct IqRequest<'a> {
    pub stanza: &'a Stanza,
    pub from: &'a Jid,
    pub target: &'a IqTarget,
    pub payload: &'a Element,
}

impl IqRequest<'_> {
    pub fn is_set(&self) -> bool {
        self.stanza.typ() == Some("set")
    }

    /// The account, when the request comes from that account itself.
    pub fn own_account(&self) -> Option<&BareJid> {
        match self.target {
            IqTarget::Account(b) if self.from.node().is_some() && self.from.to_bare() == *b => Some(b),
            _ => None,
        }
    }

    /// The requesting account, when the request must come from the account itself.
    pub fn require_own(&self) -> Result<&BareJid, StanzaError> {
        self.own_account().ok_or_else(|| Condition::Forbidden.into())
    }
}

pub type IqResult = Result<Option<Element>, StanzaError>;
pub type IqFuture<'a> = Pin<Box<dyn Future<Output = IqResult> + Send + 'a>>;
pub type IqFn = for<'a> fn(&'a Server, IqRequest<'a>) -> IqFuture<'a>;

pub struct IqHandler {
    /// Namespace of the payload element.
    pub ns: &'static str,
    /// Answers IQs addressed to the server's domain.
    pub on_host: bool,
    /// Answers IQs addressed to an account's bare JID (on the account's behalf).
    pub on_account: bool,
    pub handle: IqFn,
}

pub struct Module {
    pub name: &'static str,
    pub specs: &'static [Spec],
    /// disco#info features of the server domain.
    pub host_features: &'static [&'static str],
    /// disco#info features of an account's bare JID.
    pub account_features: &'static [&'static str],
    pub iq: &'static [IqHandler],
}

/// Specifications implemented by the core itself (streams, TLS, SASL, binding).
pub const CORE: Module = Module {
    name: "core",
    specs: &[
        Spec {
            id: "RFC 6120",
            title: "XMPP Core",
            note: "STARTTLS (required by default), SASL, binding, stream and stanza errors, restricted XML",
        },
        Spec { id: "RFC 6121", title: "XMPP IM", note: "rosters, subscriptions, presence, delivery rules of section 8" },
        Spec { id: "RFC 7590", title: "TLS in XMPP", note: "TLS 1.2 and 1.3 only (rustls handshake; AEAD suites only)" },
        Spec { id: "RFC 7622", title: "JID format", note: "normalised when parsed" },
        Spec { id: "RFC 5802", title: "SCRAM", note: "SCRAM-SHA-1, SCRAM-SHA-1-PLUS" },
        Spec { id: "RFC 7677", title: "SCRAM-SHA-256", note: "SCRAM-SHA-256, SCRAM-SHA-256-PLUS" },
        Spec { id: "RFC 9266", title: "tls-exporter channel binding", note: "TLS 1.3 (over TLS 1.2 only tls-server-end-point is offered)" },
        Spec { id: "RFC 5929", title: "tls-server-end-point channel binding", note: "" },
        Spec {
            id: "XEP-0368",
            title: "SRV records for XMPP over TLS",
            note:
                "direct TLS listeners: clients (ALPN xmpp-client) and servers (xmpp-server, and _xmpps-server SRV records when connecting)",
        },
        Spec { id: "XEP-0440", title: "SASL Channel-Binding Type Capability", note: "" },
        Spec { id: "XEP-0115", title: "Entity Capabilities", note: "passed through in presence" },
        Spec { id: "XEP-0198", title: "Stream Management", note: "acks, resumption, unacknowledged messages kept offline" },
        Spec { id: "XEP-0352", title: "Client State Indication", note: "presence held and collapsed while inactive" },
        Spec { id: "XEP-0184", title: "Message Delivery Receipts", note: "routed, archived and synced like messages" },
        Spec { id: "XEP-0333", title: "Chat Markers", note: "routed, archived and synced like messages" },
    ],
    host_features: &[],
    account_features: &[],
    // RFC 3921 session establishment, still sent after binding by old clients; advertised as
    // <optional/> and a no-op.
    iq: &[IqHandler { ns: crate::xml::ns::SESSION, on_host: true, on_account: true, handle: session_noop }],
};

fn session_noop<'a>(_server: &'a Server, req: IqRequest<'a>) -> IqFuture<'a> {
    Box::pin(async move {
        if !req.is_set() || req.payload.name != "session" {
            return Err(Condition::BadRequest.into());
        }
        Ok(None)
    })
}

/// The feature index: every module the server runs, in order.
pub const MODULES: &[&Module] = &[
    &CORE,
    &roster::MODULE,
    &presence::MODULE,
    &disco::MODULE,
    &ping::MODULE,
    &version::MODULE,
    &time::MODULE,
    &vcard::MODULE,
    &private::MODULE,
    &blocking::MODULE,
    &last::MODULE,
    &offline::MODULE,
    &mam::MODULE,
    &carbons::MODULE,
    &pep::MODULE,
    &caps::MODULE,
    &muc::MODULE,
    &crate::session::component::MODULE,
    &crate::s2s::MODULE,
    &crate::http::websocket::MODULE,
    &crate::http::bosh::MODULE,
];

/// Find the handler for a payload namespace (the table is built once at start-up).
pub fn iq_handler(server: &Server, ns: &str) -> Option<&'static IqHandler> {
    server.iq_handlers.get(ns).copied()
}

/// Answer an IQ addressed to the server or to an account, and route the reply.
pub async fn handle_iq(server: &Server, stanza: Stanza, target: IqTarget) {
    if !matches!(stanza.typ(), Some("get") | Some("set")) {
        // Results and errors addressed to the server: the answers to its caps queries.
        if let IqTarget::Host(_) = target {
            caps::on_answer(server, &stanza).await;
        }
        return;
    }
    let Some(from) = stanza.from.clone() else {
        return;
    };
    let reply = match stanza.payload().and_then(|p| iq_handler(server, &p.ns).map(|h| (p, h))) {
        Some((payload, h))
            if (matches!(target, IqTarget::Host(_)) && h.on_host) || (matches!(target, IqTarget::Account(_)) && h.on_account) =>
        {
            let req = IqRequest { stanza: &stanza, from: &from, target: &target, payload };
            match (h.handle)(server, req).await {
                Ok(payload) => Some(stanza.iq_result(payload)),
                Err(e) => stanza.error_reply(&e),
            }
        }
        _ => stanza.error_reply(&Condition::ServiceUnavailable.into()),
    };
    if let Some(reply) = reply {
        if let Ok(s) = Stanza::parse(reply) {
            router::route(server, s).await;
        }
    }
}

/// Markdown table of the implemented specifications (the README's table).
pub fn spec_table() -> String {
    let mut s = String::from("| Specification | Title | Notes |\n|---|---|---|\n");
    for m in MODULES {
        for spec in m.specs {
            s.push_str(&format!("| {} | {} | {} |\n", spec.id, spec.title, spec.note));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn readme_table_matches_the_modules() {
        let readme = include_str!("../../README.md");
        assert!(readme.contains(&super::spec_table()), "README's specification table is stale: paste `starling features`");
    }

    #[test]
    fn every_iq_namespace_has_one_handler() {
        let mut seen = std::collections::HashSet::new();
        for m in super::MODULES {
            for h in m.iq {
                assert!(seen.insert(h.ns), "{} handled twice", h.ns);
            }
        }
    }
}
