//! vcard-temp (XEP-0054): each account stores one vCard; anyone may read it, only the owner
//! may change it.

use super::{IqFuture, IqHandler, IqRequest, IqTarget, Module, Spec};
use crate::error::{Condition, StanzaError};
use crate::server::Server;
use crate::xml::{ns, parse_stored, Element};

pub const MODULE: Module = Module {
    name: "vcard",
    specs: &[Spec { id: "XEP-0054", title: "vcard-temp", note: "" }],
    host_features: &[ns::VCARD],
    account_features: &[],
    iq: &[IqHandler { ns: ns::VCARD, on_host: false, on_account: true, handle }],
};

fn handle<'a>(server: &'a Server, req: IqRequest<'a>) -> IqFuture<'a> {
    Box::pin(async move {
        let IqTarget::Account(owner) = req.target else {
            return Err(Condition::ServiceUnavailable.into());
        };
        if req.payload.name != "vCard" {
            return Err(Condition::BadRequest.into());
        }
        if req.is_set() {
            req.require_own()?;
            let xml = req.payload.to_xml();
            if xml.len() > server.config.limits.max_private_bytes {
                return Err(StanzaError::new(Condition::NotAcceptable).with_text("vCard too large"));
            }
            server.storage.set_vcard(owner.as_str(), &xml).await?;
            return Ok(None);
        }
        let stored = server.storage.vcard(owner.as_str()).await?;
        let card = match stored {
            Some(xml) => parse_stored(&xml).await,
            None => None,
        };
        Ok(Some(card.unwrap_or_else(|| Element::new("vCard", ns::VCARD))))
    })
}
