//! Last Activity (XEP-0012): server uptime, and for an account the time since its last resource
//! went offline (to the account itself and to contacts subscribed to its presence).

use super::{IqFuture, IqHandler, IqRequest, IqTarget, Module, Spec};
use crate::error::Condition;
use crate::server::Server;
use crate::storage::now_secs;
use crate::xml::{ns, Element};

pub const MODULE: Module = Module {
    name: "last",
    specs: &[Spec { id: "XEP-0012", title: "Last Activity", note: "server uptime and offline accounts" }],
    host_features: &[ns::LAST],
    account_features: &[ns::LAST],
    iq: &[IqHandler { ns: ns::LAST, on_host: true, on_account: true, handle }],
};

fn handle<'a>(server: &'a Server, req: IqRequest<'a>) -> IqFuture<'a> {
    Box::pin(async move {
        if req.is_set() {
            return Err(Condition::NotAllowed.into());
        }
        let owner = match req.target {
            IqTarget::Host(_) => {
                let up = server.started.elapsed().as_secs();
                return Ok(Some(Element::new("query", ns::LAST).attr("seconds", up.to_string())));
            }
            IqTarget::Account(owner) => owner,
        };
        if req.own_account().is_none() {
            let item = server.storage.roster_item(owner.as_str(), req.from.to_bare().as_str()).await?;
            if !item.is_some_and(|i| i.subscription.from()) {
                return Err(Condition::Forbidden.into());
            }
        }
        if !server.sessions.sessions(owner, |s| s.available).is_empty() {
            return Ok(Some(Element::new("query", ns::LAST).attr("seconds", "0")));
        }
        match server.storage.last_activity(owner.as_str()).await? {
            Some((seen, status)) => {
                let mut q = Element::new("query", ns::LAST).attr("seconds", (now_secs() - seen).max(0).to_string());
                if !status.is_empty() {
                    q = q.text(status);
                }
                Ok(Some(q))
            }
            None => Err(Condition::ItemNotFound.into()),
        }
    })
}
