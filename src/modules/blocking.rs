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
    // Section 3: clients discover it on their server's domain.
    host_features: &[ns::BLOCKING],
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
                // XEP-0191 section 3.3: contacts that could see the account stop seeing it.
                // Sent directly: the router would now refuse them.
                for j in visible_to(server, &owner, &jids).await {
                    for s in server.sessions.sessions(&owner, |s| s.available) {
                        let el = crate::stanza::presence(&Jid::from(s.jid.clone()), &j, Some("unavailable"));
                        deliver_local(server, &j, el);
                    }
                }
                push(server, &owner, p.clone());
                Ok(None)
            }
            (true, "unblock") => {
                let mut jids = item_jids(p)?;
                if jids.is_empty() {
                    jids = server.storage.blocklist(owner.as_str()).await?;
                    server.storage.unblock(owner.as_str(), &[]).await?;
                } else {
                    server.storage.unblock(owner.as_str(), &jids).await?;
                }
                server.sessions.set_blocklist(&owner, load(server, &owner).await);
                // XEP-0191 section 3.4: current presence to those allowed to see it.
                for j in visible_to(server, &owner, &jids).await {
                    for el in super::roster::send_current_presence(server, &owner, &j) {
                        crate::router::route_element(server, el).await;
                    }
                }
                push(server, &owner, p.clone());
                Ok(None)
            }
            _ => Err(Condition::BadRequest.into()),
        }
    })
}

/// The JIDs among `jids` allowed to receive the account's presence (subscription "from").
async fn visible_to(server: &Server, owner: &BareJid, jids: &[String]) -> Vec<Jid> {
    let mut out = Vec::new();
    for j in jids.iter().filter_map(|j| jid::parse(j)) {
        let item = server.storage.roster_item(owner.as_str(), j.to_bare().as_str()).await.ok().flatten();
        if item.is_some_and(|i| i.subscription.from()) {
            out.push(j);
        }
    }
    out
}

/// Hand a presence straight to local sessions of `to` (bypassing the block check).
fn deliver_local(server: &Server, to: &Jid, el: Element) {
    let targets = match to.clone().try_into_full() {
        Ok(full) => server.sessions.get(&full).into_iter().collect(),
        Err(bare) => server.sessions.sessions(&bare, |t| t.available),
    };
    for t in targets {
        let mut e = el.clone();
        e.set_attr("to", t.jid.to_string());
        server.sessions.send(&t, Deliver::Stanza(Outgoing::new(e)));
    }
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
