//! Private XML Storage (XEP-0049): one document per account and namespace, only for the owner.

use super::{vcard::parse_stored, IqFuture, IqHandler, IqRequest, Module, Spec};
use crate::error::{Condition, StanzaError};
use crate::server::Server;
use crate::xml::{ns, Element};

pub const MODULE: Module = Module {
    name: "private",
    specs: &[Spec { id: "XEP-0049", title: "Private XML Storage", note: "" }],
    host_features: &[],
    account_features: &[],
    iq: &[IqHandler { ns: ns::PRIVATE, on_host: false, on_account: true, handle }],
};

fn handle<'a>(server: &'a Server, req: IqRequest<'a>) -> IqFuture<'a> {
    Box::pin(async move {
        let owner = req.require_own()?;
        let children: Vec<&Element> = req.payload.elements().collect();
        // XEP-0049 section 3: exactly one child, not in a reserved namespace.
        let [child] = children.as_slice() else {
            return Err(Condition::NotAcceptable.into());
        };
        if child.ns.is_empty() || matches!(child.ns.as_str(), "jabber:client" | "jabber:server" | "jabber:x:data" | ns::PRIVATE) {
            return Err(Condition::NotAcceptable.into());
        }
        if req.is_set() {
            let xml = child.to_xml();
            if xml.len() > server.config.limits.max_private_bytes {
                return Err(StanzaError::new(Condition::NotAcceptable).with_text("document too large"));
            }
            server.storage.set_private_xml(owner.as_str(), &child.ns, &xml).await?;
            return Ok(None);
        }
        let stored = match server.storage.private_xml(owner.as_str(), &child.ns).await? {
            Some(xml) => parse_stored(&xml).await,
            None => None,
        };
        let doc = stored.unwrap_or_else(|| Element::new(child.name.clone(), child.ns.clone()));
        Ok(Some(Element::new("query", ns::PRIVATE).child(doc)))
    })
}
