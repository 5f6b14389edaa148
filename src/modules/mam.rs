//! Message Archive Management (XEP-0313, `urn:xmpp:mam:2` and `#extended`), with RSM paging
//! (XEP-0059), stable stanza ids (XEP-0359) and the storage hints of XEP-0334.
//!
//! Every one-to-one message worth keeping is archived once for each local party: the sender's
//! copy when it leaves the sender's session, the recipient's copy when it is accepted for
//! delivery, stamped with `<stanza-id by=recipient>`. The archive is ordered by a server-assigned
//! row id, so sync never depends on clocks.

use super::{IqFuture, IqHandler, IqRequest, Module, Spec};
use crate::error::{Condition, StanzaError};
use crate::jid::{self, BareJid, FullJid, Jid};
use crate::server::Server;
use crate::session::{Deliver, Outgoing};
use crate::storage::archive::{stanza_id_for, ArchiveFilter, NewArchived, Prefs};
use crate::storage::writer::PendingWrite;
use crate::xml::{ns, Element};

pub const NS_MAM: &str = "urn:xmpp:mam:2";
pub const NS_MAM_EXTENDED: &str = "urn:xmpp:mam:2#extended";
pub const NS_SID: &str = "urn:xmpp:sid:0";
pub const NS_HINTS: &str = "urn:xmpp:hints";
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
pub const NS_RSM: &str = "http://jabber.org/protocol/rsm";
pub const NS_DATA: &str = ns::DATA;
pub const NS_RECEIPTS: &str = "urn:xmpp:receipts";
pub const NS_MARKERS: &str = "urn:xmpp:chat-markers:0";

pub const MODULE: Module = Module {
    name: "mam",
    specs: &[
        Spec {
            id: "XEP-0313",
            title: "Message Archive Management",
            note: "urn:xmpp:mam:2 and #extended (before-id, after-id, ids, flip-page, metadata)",
        },
        Spec { id: "XEP-0059", title: "Result Set Management", note: "after / before / max" },
        Spec { id: "XEP-0359", title: "Unique and Stable Stanza IDs", note: "forged stanza-ids removed" },
        Spec { id: "XEP-0334", title: "Message Processing Hints", note: "store, no-store, no-permanent-store, no-copy" },
        Spec { id: "XEP-0203", title: "Delayed Delivery", note: "" },
    ],
    host_features: &[],
    account_features: &[NS_MAM, NS_MAM_EXTENDED, NS_SID],
    iq: &[IqHandler { ns: NS_MAM, on_host: false, on_account: true, handle }],
};

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 250;

pub fn has_hint(el: &Element, name: &str) -> bool {
    el.find(name, NS_HINTS).is_some()
}

/// Is this message worth keeping (XEP-0313 section 5.1.1, XEP-0334)? Chat and normal messages
/// with a body, a receipt or a chat marker, or an explicit store hint; never with no-store or
/// no-permanent-store.
pub fn archivable(el: &Element) -> bool {
    if !matches!(el.get_attr("type").unwrap_or("normal"), "chat" | "normal") {
        return false;
    }
    if has_hint(el, "no-store") || has_hint(el, "no-permanent-store") {
        return false;
    }
    el.find("body", ns::CLIENT).is_some()
        || has_hint(el, "store")
        || el.find("received", NS_RECEIPTS).is_some()
        || el.elements().any(|c| c.ns == NS_MARKERS)
}

/// Remove `<stanza-id/>` elements claiming to be from `by` (XEP-0359 section 4: only the
/// archiving entity may add them).
pub fn strip_forged_ids(el: &mut Element, by: &str) {
    el.retain_children(|c| !(c.is("stanza-id", NS_SID) && c.get_attr("by").is_none_or(|b| b == by)));
}

pub use crate::storage::now_micros;

fn parse_datetime(s: &str) -> Result<i64, StanzaError> {
    let t = time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .map_err(|_| StanzaError::new(Condition::BadRequest).with_text("bad date-time"))?;
    Ok((t.unix_timestamp_nanos() / 1000) as i64)
}

/// Archiving preferences of active accounts, so archiving a message costs no extra query.
/// A load never overwrites a newer value written by a preference change.
#[derive(Default)]
pub struct PrefsCache {
    map: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<Prefs>>>,
}

/// Entries kept before the cache starts over.
const PREFS_CACHE_MAX: usize = 100_000;

impl PrefsCache {
    fn get(&self, owner: &str) -> Option<std::sync::Arc<Prefs>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).get(owner).cloned()
    }

    fn insert(&self, owner: &str, p: Prefs, overwrite: bool) -> std::sync::Arc<Prefs> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= PREFS_CACHE_MAX {
            map.clear();
        }
        let p = std::sync::Arc::new(p);
        if overwrite {
            map.insert(owner.to_string(), p.clone());
            p
        } else {
            map.entry(owner.to_string()).or_insert(p).clone()
        }
    }
}

async fn prefs_of(server: &Server, owner: &BareJid) -> std::sync::Arc<Prefs> {
    if let Some(p) = server.archive_prefs.get(owner.as_str()) {
        return p;
    }
    match server.storage.archive_prefs(owner.as_str()).await {
        Ok(p) => server.archive_prefs.insert(owner.as_str(), p.unwrap_or_else(|| default_prefs(server)), false),
        Err(e) => {
            tracing::error!(error = %e, "loading archive preferences");
            std::sync::Arc::new(default_prefs(server))
        }
    }
}

/// Does `owner`'s preference allow archiving a message exchanged with `peer`?
async fn allowed(server: &Server, owner: &BareJid, peer: &str) -> bool {
    let p = prefs_of(server, owner).await;
    if p.never.iter().any(|j| j == peer) {
        return false;
    }
    if p.always.iter().any(|j| j == peer) {
        return true;
    }
    match p.default_mode.as_str() {
        "never" => false,
        "roster" => server.storage.roster_item(owner.as_str(), peer).await.ok().flatten().is_some(),
        _ => true,
    }
}

fn default_prefs(server: &Server) -> Prefs {
    Prefs { default_mode: server.config.archive.default_mode.clone(), always: Vec::new(), never: Vec::new() }
}

/// Archive `el` for `owner` if it qualifies; returns the stanza id used, after stamping it on
/// `el` when `stamp` (the recipient's copy carries its id). Returns once the row is committed.
pub async fn archive(
    server: &Server,
    owner: &BareJid,
    peer: &Jid,
    outgoing: bool,
    el: &mut Element,
    stamp: bool,
) -> Result<Option<String>, StanzaError> {
    match archive_queued(server, owner, peer, outgoing, el, stamp).await? {
        Some((sid, pending)) => {
            pending.wait().await?;
            Ok(Some(sid))
        }
        None => Ok(None),
    }
}

/// Like `archive`, but only queues the row: the caller waits on the handle once it has done
/// what it can meanwhile, so the two copies of a message usually share one commit.
pub async fn archive_queued(
    server: &Server,
    owner: &BareJid,
    peer: &Jid,
    outgoing: bool,
    el: &mut Element,
    stamp: bool,
) -> Result<Option<(String, PendingWrite)>, StanzaError> {
    if !server.config.archive.enabled || !archivable(el) || !allowed(server, owner, crate::jid::bare_str(peer)).await {
        return Ok(None);
    }
    submit(server, owner, peer, outgoing, el, stamp).map(Some)
}

/// Queue `el` as a row of `owner`'s archive, whatever the preferences (a room's archive is the
/// room's own); returns its stanza id, stamped on `el` when `stamp`.
pub fn submit(
    server: &Server,
    owner: &BareJid,
    peer: &Jid,
    outgoing: bool,
    el: &mut Element,
    stamp: bool,
) -> Result<(String, PendingWrite), StanzaError> {
    let origin_id = el.find("origin-id", NS_SID).and_then(|o| o.get_attr("id")).map(String::from);
    let (owner, peer_bare, peer_full) = (owner.to_string(), crate::jid::bare_str(peer).to_string(), peer.to_string());
    let mut sid = String::new();
    // Runs under the archive writer's queue lock: the id comes first, the stanza id and the
    // serialized stanza carrying it are made from it.
    let pending = server.storage.archive_submit(|id| {
        sid = stanza_id_for(id);
        if stamp {
            el.children
                .push(crate::xml::Node::Element(Element::new("stanza-id", NS_SID).attr("id", sid.clone()).attr("by", owner.clone())));
        }
        NewArchived { id, owner, stanza_id: sid.clone(), peer: peer_bare, peer_full, outgoing, ts: id, origin_id, xml: el.to_xml() }
    })?;
    Ok((sid, pending))
}

fn handle<'a>(server: &'a Server, req: IqRequest<'a>) -> IqFuture<'a> {
    Box::pin(async move {
        let owner = req.require_own()?.clone();
        match (req.payload.name.as_str(), req.is_set()) {
            ("query", true) => query(server, &owner, req.from, req.payload).await,
            ("query", false) => Ok(Some(form())),
            ("metadata", false) => metadata(server, &owner).await,
            ("prefs", false) => Ok(Some(prefs_element(&*prefs_of(server, &owner).await))),
            ("prefs", true) => {
                let p = parse_prefs(req.payload)?;
                server.storage.set_archive_prefs(owner.as_str(), &p).await?;
                let p = server.archive_prefs.insert(owner.as_str(), p, true);
                Ok(Some(prefs_element(&p)))
            }
            _ => Err(Condition::BadRequest.into()),
        }
    })
}

pub(crate) fn form() -> Element {
    let field = |var: &str, typ: &str| Element::new("field", NS_DATA).attr("var", var).attr("type", typ);
    Element::new("query", NS_MAM).child(
        Element::new("x", NS_DATA)
            .attr("type", "form")
            .child(field("FORM_TYPE", "hidden").child(Element::new("value", NS_DATA).text(NS_MAM)))
            .child(field("with", "jid-single"))
            .child(field("start", "text-single"))
            .child(field("end", "text-single"))
            .child(field("before-id", "text-single"))
            .child(field("after-id", "text-single"))
            .child(field("ids", "text-multi")),
    )
}

async fn metadata(server: &Server, owner: &BareJid) -> Result<Option<Element>, StanzaError> {
    let mut m = Element::new("metadata", NS_MAM);
    if let Some((first, last)) = server.storage.archive_bounds(owner.as_str()).await? {
        m = m
            .child(
                Element::new("start", NS_MAM)
                    .attr("id", first.stanza_id)
                    .attr("timestamp", crate::modules::time::xmpp_datetime_micros(first.ts)),
            )
            .child(
                Element::new("end", NS_MAM)
                    .attr("id", last.stanza_id)
                    .attr("timestamp", crate::modules::time::xmpp_datetime_micros(last.ts)),
            );
    }
    Ok(Some(m))
}

fn prefs_element(p: &Prefs) -> Element {
    let list = |name: &str, jids: &[String]| {
        let mut e = Element::new(name, NS_MAM);
        for j in jids {
            e = e.child(Element::new("jid", NS_MAM).text(j.clone()));
        }
        e
    };
    Element::new("prefs", NS_MAM).attr("default", p.default_mode.clone()).child(list("always", &p.always)).child(list("never", &p.never))
}

fn parse_prefs(el: &Element) -> Result<Prefs, StanzaError> {
    let default_mode = el.get_attr("default").unwrap_or("always");
    if !matches!(default_mode, "always" | "never" | "roster") {
        return Err(StanzaError::new(Condition::BadRequest).with_text("default must be always, never or roster"));
    }
    let list = |name: &str| -> Result<Vec<String>, StanzaError> {
        el.find(name, NS_MAM)
            .map(|l| {
                l.elements()
                    .filter(|j| j.name == "jid")
                    .map(|j| jid::parse(j.text_content().trim()).map(|j| j.to_string()).ok_or(Condition::JidMalformed.into()))
                    .collect()
            })
            .unwrap_or(Ok(Vec::new()))
    };
    Ok(Prefs { default_mode: default_mode.to_string(), always: list("always")?, never: list("never")? })
}

async fn row_of(server: &Server, owner: &BareJid, id: &str) -> Result<i64, StanzaError> {
    server
        .storage
        .archive_row_id(owner.as_str(), id)
        .await?
        .ok_or_else(|| StanzaError::new(Condition::ItemNotFound).with_text(format!("no archived message {id}")))
}

pub(crate) async fn query(server: &Server, owner: &BareJid, from: &Jid, q: &Element) -> Result<Option<Element>, StanzaError> {
    let mut f = ArchiveFilter { owner: owner.to_string(), ..Default::default() };
    if let Some(x) = q.find("x", NS_DATA) {
        for field in x.elements().filter(|e| e.name == "field") {
            let var = field.get_attr("var").unwrap_or("");
            let values: Vec<String> = field.elements().filter(|v| v.name == "value").map(|v| v.text_content()).collect();
            let value = values.first().map(|v| v.trim().to_string()).unwrap_or_default();
            match var {
                "FORM_TYPE" => {
                    if value != NS_MAM {
                        return Err(StanzaError::new(Condition::BadRequest).with_text("FORM_TYPE must be urn:xmpp:mam:2"));
                    }
                }
                "with" => {
                    let j = jid::parse(&value).ok_or(Condition::JidMalformed)?;
                    let full = j.resource().is_some().then(|| j.to_string());
                    f.with = Some((j.to_bare().to_string(), full));
                }
                "start" => f.start = Some(parse_datetime(&value)?),
                "end" => f.end = Some(parse_datetime(&value)?),
                "after-id" => f.after = Some(row_of(server, owner, &value).await?),
                "before-id" => f.before = Some(row_of(server, owner, &value).await?),
                "ids" => {
                    for v in &values {
                        f.ids.push(row_of(server, owner, v.trim()).await?);
                    }
                }
                _ => return Err(StanzaError::new(Condition::FeatureNotImplemented).with_text(format!("unknown field {var}"))),
            }
        }
    }
    let mut max = DEFAULT_PAGE;
    if let Some(set) = q.find("set", NS_RSM) {
        if let Some(m) = set.find("max", NS_RSM) {
            max = m.text_content().trim().parse::<usize>().map_err(|_| Condition::BadRequest)?.min(MAX_PAGE);
        }
        if let Some(a) = set.find("after", NS_RSM) {
            let row = row_of(server, owner, a.text_content().trim()).await?;
            f.after = Some(f.after.map_or(row, |x| x.max(row)));
        }
        if let Some(b) = set.find("before", NS_RSM) {
            f.backward = true;
            let id = b.text_content();
            if !id.trim().is_empty() {
                let row = row_of(server, owner, id.trim()).await?;
                f.before = Some(f.before.map_or(row, |x| x.min(row)));
            }
        }
    }
    f.limit = max + 1;
    let mut rows = server.storage.archive_query(&f).await?;
    let complete = rows.len() <= max;
    rows.truncate(max);
    if f.backward {
        rows.reverse();
    }
    let queryid = q.get_attr("queryid").map(String::from);
    let target = from.clone().try_into_full().ok();
    let mut fin_set = Element::new("set", NS_RSM);
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        fin_set = fin_set
            .child(Element::new("first", NS_RSM).text(first.stanza_id.clone()))
            .child(Element::new("last", NS_RSM).text(last.stanza_id.clone()));
    }
    if q.find("flip-page", NS_MAM).is_some() {
        rows.reverse();
    }
    if let Some(target) = target {
        send_results(server, owner, &target, queryid.as_deref(), rows).await;
    }
    Ok(Some(Element::new("fin", NS_MAM).attr("complete", if complete { "true" } else { "false" }).child(fin_set)))
}

async fn send_results(
    server: &Server,
    owner: &BareJid,
    to: &FullJid,
    queryid: Option<&str>,
    rows: Vec<crate::storage::archive::ArchivedRow>,
) {
    let Some(session) = server.sessions.get(to) else { return };
    for r in rows {
        let Some(original) = crate::xml::parse_stored(&r.xml).await else {
            tracing::warn!(owner = %owner, id = %r.stanza_id, "unreadable archived message");
            continue;
        };
        let result = Element::new("result", NS_MAM).attr_opt("queryid", queryid).attr("id", r.stanza_id).child(
            Element::new("forwarded", NS_FORWARD)
                .child(Element::new("delay", ns::DELAY).attr("stamp", crate::modules::time::xmpp_datetime_micros(r.ts)))
                .child(original),
        );
        let msg = Element::new("message", ns::CLIENT).attr("from", owner.to_string()).attr("to", to.to_string()).child(result);
        server.sessions.send(&session, Deliver::Stanza(Outgoing::new(msg)));
    }
}

/// Periodically drop archived messages older than the retention period.
pub async fn retention_task(server: std::sync::Arc<Server>) {
    let days = server.config.archive.retention_days;
    if days == 0 {
        return;
    }
    let mut shutdown = server.shutdown.clone();
    loop {
        let cutoff = now_micros() - days as i64 * 86_400_000_000;
        match server.storage.archive_expire(cutoff).await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "archive retention"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "archive retention"),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_archived() {
        let chat = Element::new("message", ns::CLIENT).attr("type", "chat").child(Element::new("body", ns::CLIENT).text("hi"));
        assert!(archivable(&chat));
        assert!(!archivable(&chat.clone().child(Element::new("no-store", NS_HINTS))));
        assert!(!archivable(&chat.clone().child(Element::new("no-permanent-store", NS_HINTS))));
        assert!(!archivable(&chat.clone().attr("type", "headline")));
        assert!(!archivable(&chat.clone().attr("type", "groupchat")));
        let state = Element::new("message", ns::CLIENT)
            .attr("type", "chat")
            .child(Element::new("composing", "http://jabber.org/protocol/chatstates"));
        assert!(!archivable(&state));
        assert!(archivable(&state.clone().child(Element::new("store", NS_HINTS))));
        let receipt = Element::new("message", ns::CLIENT).child(Element::new("received", NS_RECEIPTS).attr("id", "x"));
        assert!(archivable(&receipt));
        let marker = Element::new("message", ns::CLIENT).attr("type", "chat").child(Element::new("displayed", NS_MARKERS).attr("id", "x"));
        assert!(archivable(&marker));
    }

    #[test]
    fn forged_ids_are_removed() {
        let mut m = Element::new("message", ns::CLIENT)
            .child(Element::new("stanza-id", NS_SID).attr("id", "forged").attr("by", "a@x"))
            .child(Element::new("stanza-id", NS_SID).attr("id", "other").attr("by", "room@muc.x"))
            .child(Element::new("origin-id", NS_SID).attr("id", "o"));
        strip_forged_ids(&mut m, "a@x");
        let ids: Vec<_> = m.elements().map(|e| e.get_attr("id").unwrap()).collect();
        assert_eq!(ids, vec!["other", "o"]);
    }

    #[test]
    fn dates() {
        assert_eq!(parse_datetime("2010-08-07T00:00:00Z").unwrap(), 1_281_139_200_000_000);
        assert_eq!(crate::modules::time::xmpp_datetime_micros(1_281_139_200_000_000), "2010-08-07T00:00:00.000Z");
        assert!(parse_datetime("yesterday").is_err());
    }
}
