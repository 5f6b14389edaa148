//! Blocking Command (XEP-0191). The list is stored per account and mirrored in the session
//! registry while the account is online, where the router applies it.

use super::{IqFuture, IqHandler, IqRequest, Module, Spec};
use crate::error::Condition;
use crate::jid::{self, BareJid, Jid};
use crate::server::Server;
use crate::session::{Deliver, Outgoing};
use crate::xml::{ns, Element};

pub const MODULE: Module = Module {
    name: "blocking",
    specs: &[Spec { id: "XEP-0191", title: "Blocking Command", note: "applied by the router" }],
    host_features: &[],
    account_features: &[ns::BLOCKING],
    iq: &[IqHandler { ns: ns::BLOCKING, on_host: false, on_account: true, handle }],
};

/// The stored list, parsed.
pub async fn load(server: &Server, owner: &BareJid) -> Vec<Jid> {
    match server.storage.blocklist(owner.as_str()).await {
        Ok(l) => l.iter().filter_map(|s| jid::parse(s)).collect(),
        Err(e) => {
            tracing::error!(error = %e, "loading block list");
            Vec::new()
        }
    }
}

fn item_jids(payload: &Element) -> Result<Vec<String>, Condition> {
    payload
        .elements()
        .filter(|e| e.is("item", ns::BLOCKING))
        .map(|e| e.get_attr("jid").and_then(jid::parse).map(|j| j.to_string()).ok_or(Condition::JidMalformed))
        .collect()
}

fn handle<'a>(server: &'a Server, req: IqRequest<'a>) -> IqFuture<'a> {
    Box::pin(async move {
        let owner = req.require_own()?.clone();
        let p = req.payload;
        match (req.is_set(), p.name.as_str()) {
            (false, "blocklist") => {
                if let Ok(full) = req.from.clone().try_into_full() {
                    if let Some(s) = server.sessions.get(&full) {
                        server.sessions.update(&full, s.id, |e| e.blocklist_requested = true);
                    }
                }
                let mut list = Element::new("blocklist", ns::BLOCKING);
                for j in server.storage.blocklist(owner.as_str()).await? {
                    list = list.child(Element::new("item", ns::BLOCKING).attr("jid", j));
                }
                Ok(Some(list))
            }
            (true, "block") => {
                let jids = item_jids(p)?;
                if jids.is_empty() {
                    return Err(Condition::BadRequest.into());
                }
                server.storage.block(owner.as_str(), &jids).await?;
                server.sessions.set_blocklist(&owner, load(server, &owner).await);
                // The blocked contacts stop seeing the account online (XEP-0191 section 3.3).
                for s in server.sessions.sessions(&owner, |s| s.available) {
                    for j in &jids {
                        let unavailable = crate::stanza::presence(
                            &Jid::from(s.jid.clone()),
                            &jid::parse(j).unwrap_or_else(|| Jid::from(owner.clone())),
                            Some("unavailable"),
                        );
                        if let Ok(st) = crate::stanza::Stanza::parse(unavailable) {
                            // Routed without the block check: this is the last presence they get.
                            let to = st.to.clone();
                            if let Some(to) = to {
                                if let Ok(full) = to.clone().try_into_full() {
                                    if let Some(t) = server.sessions.get(&full) {
                                        server.sessions.send(&t, Deliver::Stanza(Outgoing::new(st.el)));
                                    }
                                } else {
                                    for t in server.sessions.sessions(&to.to_bare(), |t| t.available) {
                                        server.sessions.send(&t, Deliver::Stanza(Outgoing::new(st.el.clone())));
                                    }
                                }
                            }
                        }
                    }
                }
                push(server, &owner, p.clone());
                Ok(None)
            }
            (true, "unblock") => {
                let jids = item_jids(p)?;
                server.storage.unblock(owner.as_str(), &jids).await?;
                server.sessions.set_blocklist(&owner, load(server, &owner).await);
                push(server, &owner, p.clone());
                Ok(None)
            }
            _ => Err(Condition::BadRequest.into()),
        }
    })
}

/// Tell every resource that fetched the list about the change.
fn push(server: &Server, owner: &BareJid, payload: Element) {
    for s in server.sessions.sessions(owner, |s| s.blocklist_requested) {
        let iq = Element::new("iq", ns::CLIENT)
            .attr("type", "set")
            .attr("id", format!("block-push-{}", server.sessions.next_id()))
            .attr("to", s.jid.to_string())
            .child(payload.clone());
        server.sessions.send(&s, Deliver::Stanza(Outgoing::new(iq)));
    }
}
