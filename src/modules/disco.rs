//! Service Discovery (XEP-0030): identities and the features collected from every module.

use super::{IqFuture, IqHandler, IqRequest, IqTarget, Module, Spec, MODULES};
use crate::error::Condition;
use crate::server::Server;
use crate::xml::{ns, Element};

pub const MODULE: Module = Module {
    name: "disco",
    specs: &[Spec { id: "XEP-0030", title: "Service Discovery", note: "features collected from the modules" }],
    host_features: &[ns::DISCO_INFO, ns::DISCO_ITEMS],
    account_features: &[ns::DISCO_INFO],
    iq: &[
        IqHandler { ns: ns::DISCO_INFO, on_host: true, on_account: true, handle: info },
        IqHandler { ns: ns::DISCO_ITEMS, on_host: true, on_account: true, handle: items },
    ],
};

/// Every feature advertised for the target, sorted and deduplicated.
pub fn features(target: &IqTarget) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = MODULES
        .iter()
        .flat_map(|m| match target {
            IqTarget::Host(_) => m.host_features.iter(),
            IqTarget::Account(_) => m.account_features.iter(),
        })
        .copied()
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn info<'a>(_server: &'a Server, req: IqRequest<'a>) -> IqFuture<'a> {
    Box::pin(async move {
        if req.is_set() || req.payload.name != "query" {
            return Err(Condition::BadRequest.into());
        }
        if req.payload.get_attr("node").is_some() {
            return Err(Condition::ItemNotFound.into());
        }
        let identity = match req.target {
            IqTarget::Host(_) => {
                Element::new("identity", ns::DISCO_INFO).attr("category", "server").attr("type", "im").attr("name", "Starling")
            }
            IqTarget::Account(_) => Element::new("identity", ns::DISCO_INFO).attr("category", "account").attr("type", "registered"),
        };
        let mut q = Element::new("query", ns::DISCO_INFO).child(identity);
        if let IqTarget::Account(_) = req.target {
            // XEP-0163 section 6.1: the account is a PEP service.
            q = q.child(Element::new("identity", ns::DISCO_INFO).attr("category", "pubsub").attr("type", "pep"));
        }
        for f in features(req.target) {
            q = q.child(Element::new("feature", ns::DISCO_INFO).attr("var", f));
        }
        Ok(Some(q))
    })
}

fn items<'a>(server: &'a Server, req: IqRequest<'a>) -> IqFuture<'a> {
    Box::pin(async move {
        if req.is_set() || req.payload.name != "query" {
            return Err(Condition::BadRequest.into());
        }
        if req.payload.get_attr("node").is_some() {
            return Err(Condition::ItemNotFound.into());
        }
        let mut q = Element::new("query", ns::DISCO_ITEMS);
        // The host's services: clients find the group chat service here (XEP-0045 section 6.1).
        if let (IqTarget::Host(host), Some(muc)) = (req.target, &server.muc) {
            let mut services: Vec<&String> =
                muc.domains().filter(|d| d.strip_suffix(host.as_str()).is_some_and(|p| p.ends_with('.'))).collect();
            services.sort();
            for d in services {
                q = q.child(Element::new("item", ns::DISCO_ITEMS).attr("jid", d.clone()).attr("name", "Chatrooms"));
            }
        }
        // Connected external components (gateways, bots) and HTTP bots.
        if let IqTarget::Host(_) = req.target {
            let mut components: Vec<&str> = server.components.domains().filter(|d| server.components.is_connected(d)).collect();
            components.extend(server.bots.domains());
            components.sort();
            for d in components {
                q = q.child(Element::new("item", ns::DISCO_ITEMS).attr("jid", d));
            }
        }
        Ok(Some(q))
    })
}
