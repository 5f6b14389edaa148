//! Private XML Storage (XEP-0049): one document per account and namespace, only for the owner.

use crate::xml::parse_stored;

use super::{IqFuture, IqHandler, IqRequest, Module, Spec};
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
        // XEP-0049 section 2: at least one child; a set may hold several elements of one
        // namespace, a get asks for one namespace; reserved namespaces are refused.
        let children: Vec<&Element> = req.payload.elements().collect();
        let Some(first) = children.first() else { return Err(Condition::NotAcceptable.into()) };
        let namespace = first.ns.clone();
        if children.iter().any(|c| c.ns != namespace) || (!req.is_set() && children.len() > 1) {
            return Err(Condition::NotAcceptable.into());
        }
        if namespace.is_empty() || matches!(namespace.as_str(), "jabber:client" | "jabber:server" | "jabber:x:data" | ns::PRIVATE) {
            return Err(Condition::NotAcceptable.into());
        }
        if req.is_set() {
            let mut xml = String::new();
            for c in &children {
                c.write_to(&mut xml, "");
            }
            if xml.len() > server.config.limits.max_private_bytes {
                return Err(StanzaError::new(Condition::NotAcceptable).with_text("document too large"));
            }
            server.storage.set_private_xml(owner.as_str(), &namespace, &xml).await?;
            return Ok(None);
        }
        let mut q = Element::new("query", ns::PRIVATE);
        match server.storage.private_xml(owner.as_str(), &namespace).await? {
            Some(xml) => {
                // Stored as a sequence of elements: read them back inside a wrapper.
                if let Some(wrapper) = parse_stored(&format!("<w xmlns='urn:starling:wrapper'>{xml}</w>")).await {
                    q.children = wrapper.children;
                }
            }
            None => q = q.child(Element::new(first.name.clone(), namespace.clone())),
        }
        Ok(Some(q))
    })
}
