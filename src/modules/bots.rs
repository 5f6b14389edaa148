//! HTTP bots and webhooks (`[[bots]]`): a bot owns every address at a domain of its own.
//!
//! - **Messages to a bot** are kept in offline storage under the bot's domain first, then a
//!   worker POSTs them to the bot's `url`, one at a time and in order, as JSON signed with the
//!   bot's secret. The HTTP response is the bot's answer, sent back as a message (a
//!   synchronous reply); the stored message is deleted once the bot took it (2xx). While the
//!   bot is down (connection refused, time-out, 408, 429, 5xx) the messages wait and are tried
//!   again with a growing delay, across restarts of either side: nothing is lost. A 4xx that is
//!   not worth retrying drops that message (logged) so one bad message cannot stall the rest.
//! - **Events pushed by external systems** (GitLab, GitHub, Jira, anything that POSTs) arrive
//!   at `POST /hooks/<domain>/<name>` (see `crate::http`): authenticated with the bot's secret
//!   (a bearer token, `?token=`, GitLab's `X-Gitlab-Token` or GitHub's `X-Hub-Signature-256`),
//!   summarised into one line of text, and sent as a message from `<name>@<domain>` to the
//!   request's `to` addresses or the bot's `notify` list. The response comes once every
//!   message was routed, which for a local account means archived or stored.
//!
//! - **Rooms**: a bot sits in the rooms of its `rooms` list as `nick` (joined at start and
//!   again every half minute while it is not seated, as after a restart or before the room
//!   exists), and takes part like anyone: the room's messages are POSTed to it (not its own,
//!   nor ones without a body) and its answers said in the room. An event pushed to a room is
//!   said by an occupant named after the hook (`<name>`), seated on first use.
//!
//! Presence subscriptions to a bot are accepted, and probes answered, so a bot sits in a
//! roster like a contact who is always online. disco#info is answered on the bot's behalf.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::Notify;

use crate::config::{BotConfig, Config};
use crate::error::Condition;
use crate::jid::{self, Jid};
use crate::modules::muc::NS_MUC;
use crate::modules::offline;
use crate::router;
use crate::sasl::constant_time_eq;
use crate::server::Server;
use crate::stanza::{Kind, Stanza};
use crate::xml::{ns, Element};

/// Longest wait between two attempts to reach a bot that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Longest text made of a pushed event.
const MAX_TEXT: usize = 4000;
/// How often a bot tries again to sit in the rooms of its list it is not in.
const REJOIN: Duration = Duration::from_secs(30);
/// The resource of a bot's occupants: `<nick>@<domain>/rooms`.
const ROOMS_RESOURCE: &str = "rooms";

pub struct Bot {
    pub config: BotConfig,
    /// Woken when a message for the bot was stored.
    wake: Notify,
    /// (room, nick) where one of the bot's occupants is seated, or its join is on its way:
    /// set when the join is sent, cleared by the room's error or unavailable presence.
    seated: Mutex<HashSet<(String, String)>>,
}

impl Bot {
    /// The bot's nick in the rooms of its list.
    pub fn nick(&self) -> &str {
        match self.config.nick.as_str() {
            "" => self.config.domain.split('.').next().unwrap_or(&self.config.domain),
            n => n,
        }
    }

    fn seated(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.seated.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sit in `room` as `nick` unless already there: a join asking for no history.
    async fn sit(&self, server: &Server, room: &str, nick: &str) {
        if !self.seated().insert((room.to_string(), nick.to_string())) {
            return;
        }
        let join = Element::new("presence", ns::CLIENT)
            .attr("from", format!("{nick}@{}/{ROOMS_RESOURCE}", self.config.domain))
            .attr("to", format!("{room}/{nick}"))
            .child(Element::new("x", NS_MUC).child(Element::new("history", NS_MUC).attr("maxstanzas", "0")));
        router::route_element(server, join).await;
    }
}

/// The configured bots, by domain, and the HTTP client that calls them.
pub struct Bots {
    by_domain: HashMap<String, Arc<Bot>>,
    client: reqwest::Client,
}

impl Bots {
    pub fn new(config: &Config) -> Bots {
        let by_domain = config
            .bots
            .iter()
            .map(|b| (b.domain.clone(), Arc::new(Bot { config: b.clone(), wake: Notify::new(), seated: Mutex::new(HashSet::new()) })))
            .collect();
        let client = reqwest::Client::builder()
            .user_agent(concat!("Starling/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Bots { by_domain, client }
    }

    pub fn serves(&self, domain: &str) -> bool {
        self.by_domain.contains_key(domain)
    }

    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.by_domain.keys().map(|d| d.as_str())
    }

    pub fn get(&self, domain: &str) -> Option<&Arc<Bot>> {
        self.by_domain.get(domain)
    }

    /// Start one delivery worker per bot that has a `url`.
    pub fn start(server: &Arc<Server>) {
        for bot in server.bots.by_domain.values() {
            if !bot.config.url.is_empty() {
                tokio::spawn(worker(server.clone(), bot.clone()));
                if !bot.config.rooms.is_empty() {
                    tokio::spawn(sit_in_rooms(server.clone(), bot.clone()));
                }
            }
        }
    }
}

/// Route a stanza for an address at bot `domain`.
pub async fn route(server: &Server, stanza: Stanza, domain: &str) {
    let Some(bot) = server.bots.get(domain) else { return };
    match stanza.kind {
        Kind::Message if stanza.is_error() => {}
        Kind::Message if stanza.typ() == Some("groupchat") && (bot.config.url.is_empty() || !for_the_bot(&stanza, bot.nick())) => {}
        Kind::Message => {
            if bot.config.url.is_empty() {
                return router::bounce(server, &stanza, Condition::ServiceUnavailable).await;
            }
            let Some(owner) = offline::domain_queue(domain) else { return };
            // A room's message was chosen above (`for_the_bot`); any other is kept as a
            // client's offline message would be.
            let kept = if stanza.typ() == Some("groupchat") {
                offline::keep(server, &owner, stanza.el.clone(), None).await.map(|()| true)
            } else {
                offline::store(server, &owner, stanza.el.clone(), None).await
            };
            match kept {
                Ok(true) => bot.wake.notify_one(),
                Ok(false) => {}
                Err(e) => router::bounce(server, &stanza, e).await,
            }
        }
        Kind::Presence => presence(server, &stanza).await,
        Kind::Iq => {
            let get_or_set = matches!(stanza.typ(), Some("get") | Some("set"));
            if !get_or_set {
                return;
            }
            if stanza.typ() == Some("get") && stanza.payload().is_some_and(|p| p.is("query", ns::DISCO_INFO)) {
                let identity = if stanza.to.as_ref().is_some_and(|t| t.node().is_some()) {
                    Element::new("identity", ns::DISCO_INFO).attr("category", "client").attr("type", "bot")
                } else {
                    Element::new("identity", ns::DISCO_INFO).attr("category", "component").attr("type", "generic")
                };
                let q = Element::new("query", ns::DISCO_INFO)
                    .child(identity.attr("name", domain))
                    .child(Element::new("feature", ns::DISCO_INFO).attr("var", ns::DISCO_INFO));
                router::route_element(server, stanza.iq_result(Some(q))).await;
                return;
            }
            router::bounce(server, &stanza, Condition::ServiceUnavailable).await
        }
    }
}

/// A room's message worth the bot's attention: to the bot's own occupant (not to an occupant
/// of its hooks), with a body, live (not history), and not the bot's own, which the room
/// reflects back to it.
fn for_the_bot(st: &Stanza, nick: &str) -> bool {
    let (Some(from), Some(to)) = (&st.from, &st.to) else { return false };
    to.node().is_some_and(|n| n.as_str() == nick)
        && from.resource().is_some_and(|r| r.as_str() != nick)
        && st.el.find("body", ns::CLIENT).is_some()
        && st.el.find("delay", ns::DELAY).is_none()
}

/// Sit in the rooms of the bot's list, and again in any it is no longer in, until shutdown.
async fn sit_in_rooms(server: Arc<Server>, bot: Arc<Bot>) {
    let mut shutdown = server.shutdown.clone();
    while !*shutdown.borrow() {
        for room in &bot.config.rooms {
            bot.sit(&server, room, bot.nick()).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(REJOIN) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// A bot accepts every subscription and is always available. A room's presence for one of its
/// occupants tells whether it is seated.
async fn presence(server: &Server, stanza: &Stanza) {
    let (Some(from), Some(to)) = (&stanza.from, &stanza.to) else { return };
    let occupancy = matches!(stanza.typ(), None | Some("unavailable") | Some("error"));
    if let (true, Some(nick), Some(bot)) = (occupancy, from.resource(), server.bots.get(to.domain().as_str())) {
        // An occupant's presence from a room; its own when the nick is the address's node
        // (the bot's occupants are <nick>@<domain>/rooms).
        let own = to.node().is_some_and(|n| n.as_str() == nick.as_str());
        if own && matches!(stanza.typ(), Some("unavailable") | Some("error")) {
            let key = (from.to_bare().to_string(), nick.to_string());
            bot.seated().remove(&key);
            tracing::info!(bot = %bot.config.domain, room = %key.0, nick = %key.1, "not in the room");
        }
        return;
    }
    let bot = to.to_bare();
    let answer = |typ: Option<&str>| crate::stanza::presence(&Jid::from(bot.clone()), &Jid::from(from.to_bare()), typ);
    match stanza.typ() {
        Some("subscribe") => {
            router::route_element(server, answer(Some("subscribed"))).await;
            router::route_element(server, answer(None)).await;
        }
        Some("probe") => router::route_element(server, answer(None)).await,
        _ => {}
    }
}

/// Deliver the stored messages of `bot`, in order, for as long as the server runs.
async fn worker(server: Arc<Server>, bot: Arc<Bot>) {
    let Some(owner) = offline::domain_queue(&bot.config.domain) else { return };
    let mut shutdown = server.shutdown.clone();
    let mut backoff = Duration::ZERO;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let rows = match server.storage.offline_messages(owner.as_str()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, bot = %bot.config.domain, "loading a bot's messages");
                Vec::new()
            }
        };
        if rows.is_empty() {
            tokio::select! {
                _ = bot.wake.notified() => {}
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(MAX_BACKOFF) => {}
            }
            continue;
        }
        for (row, _, xml) in rows {
            let Some(el) = crate::xml::parse_stored(&xml).await else {
                tracing::error!(row, "a bot's stored message could not be read back; dropped");
                let _ = server.storage.offline_delete(owner.as_str(), &[row]).await;
                continue;
            };
            match call(&server.bots.client, &bot.config, &el).await {
                Ok(replies) => {
                    backoff = Duration::ZERO;
                    for r in replies {
                        router::route_element(&server, r).await;
                    }
                    if let Err(e) = server.storage.offline_delete(owner.as_str(), &[row]).await {
                        tracing::error!(error = %e, "deleting a message the bot took");
                    }
                }
                Err(Failure::Drop(why)) => {
                    tracing::warn!(bot = %bot.config.domain, %why, "the bot refused a message; dropped");
                    let _ = server.storage.offline_delete(owner.as_str(), &[row]).await;
                }
                Err(Failure::Retry(why)) => {
                    backoff = (backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                    tracing::warn!(bot = %bot.config.domain, %why, retry_in = ?backoff, "bot unreachable; its messages wait");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    break;
                }
            }
        }
    }
}

enum Failure {
    /// Try again later: the bot is down or overloaded.
    Retry(String),
    /// The bot will never take this message.
    Drop(String),
}

/// HMAC-SHA-256 of `body` under `secret`, lowercase hex.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    crate::sasl::hex(&mac.finalize().into_bytes())
}

/// What a bot receives for a message.
fn payload(el: &Element) -> Value {
    let child = |name: &str| el.find(name, ns::CLIENT).map(|c| c.text_content());
    json!({
        "id": el.get_attr("id"),
        "from": el.get_attr("from"),
        "to": el.get_attr("to"),
        "type": el.get_attr("type").unwrap_or("normal"),
        "body": child("body"),
        "subject": child("subject"),
        "thread": child("thread"),
        "stamp": el.find("delay", ns::DELAY).and_then(|d| d.get_attr("stamp")),
        "xml": el.to_xml(),
    })
}

/// POST one message to the bot; its answer as messages to send.
async fn call(client: &reqwest::Client, bot: &BotConfig, el: &Element) -> Result<Vec<Element>, Failure> {
    let body = serde_json::to_vec(&payload(el)).map_err(|e| Failure::Drop(e.to_string()))?;
    let sig = signature(&bot.secret, &body);
    let resp = client
        .post(&bot.url)
        .header("content-type", "application/json")
        .header("x-starling-signature", format!("sha256={sig}"))
        .timeout(Duration::from_secs(bot.timeout_secs.max(1)))
        .body(body)
        .send()
        .await
        .map_err(|e| Failure::Retry(e.to_string()))?;
    let status = resp.status();
    if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
        return Err(Failure::Retry(format!("HTTP {status}")));
    }
    if !status.is_success() {
        return Err(Failure::Drop(format!("HTTP {status}")));
    }
    let is_json = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|c| c.contains("json"));
    let text = resp.text().await.map_err(|e| Failure::Retry(e.to_string()))?;
    Ok(replies(el, &text, is_json))
}

/// The bot's answer: JSON `{"body": …}` or `{"messages": [{"body": …, "to": …, "type": …}]}`,
/// or plain text (the body). From the address the message went to, back to its sender unless
/// the answer names another `to`.
fn replies(el: &Element, text: &str, is_json: bool) -> Vec<Element> {
    let (Some(me), Some(sender)) = (el.get_attr("to"), el.get_attr("from")) else { return Vec::new() };
    let typ = el.get_attr("type").unwrap_or("normal");
    // In a room, the answer is said to the room.
    let room = (typ == "groupchat").then(|| sender.split('/').next().unwrap_or(sender));
    let make = |body: &str, to: Option<&str>, typ_override: Option<&str>| {
        let to = to.filter(|t| jid::parse(t).is_some()).or(room).unwrap_or(sender);
        let mut m = Element::new("message", ns::CLIENT)
            .attr("from", me)
            .attr("to", to)
            .attr("type", typ_override.unwrap_or(typ))
            .attr("id", crate::stanza::new_id())
            .child(Element::new("body", ns::CLIENT).text(body));
        if let Some(thread) = el.find("thread", ns::CLIENT) {
            m = m.child(thread.clone());
        }
        m
    };
    if !is_json {
        let t = text.trim();
        return if t.is_empty() { Vec::new() } else { vec![make(t, None, None)] };
    }
    let Ok(v) = serde_json::from_str::<Value>(text) else { return Vec::new() };
    let one = |m: &Value| {
        m.get("body").and_then(Value::as_str).filter(|b| !b.is_empty()).map(|b| {
            make(
                b,
                m.get("to").and_then(Value::as_str),
                m.get("type").and_then(Value::as_str).filter(|t| matches!(*t, "chat" | "normal" | "headline")),
            )
        })
    };
    match v.get("messages").and_then(Value::as_array) {
        Some(list) => list.iter().filter_map(one).collect(),
        None => one(&v).into_iter().collect(),
    }
}

/// An event POSTed to `/hooks/<domain>/<name>`: its HTTP status and JSON answer.
pub async fn incoming(
    server: &Server,
    domain: &str,
    name: &str,
    headers: &axum::http::HeaderMap,
    query: &[(String, String)],
    body: &[u8],
) -> (u16, Value) {
    let Some(bot) = server.bots.get(domain) else { return (404, json!({"error": "no such bot"})) };
    if !authorized(&bot.config.secret, headers, query, body) {
        return (401, json!({"error": "not authorized"}));
    }
    let from = match jid::parse(&format!("{name}@{domain}")) {
        Some(j) if j.node().is_some() => j,
        _ => return (400, json!({"error": "the name is not a valid JID node"})),
    };
    let mut to: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "to")
        .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect::<Vec<_>>())
        .collect();
    if to.is_empty() {
        to = bot.config.notify.clone();
    }
    let mut targets = Vec::new();
    for t in &to {
        match jid::parse(t) {
            Some(j) => targets.push(j),
            None => return (400, json!({"error": format!("{t:?} is not a JID")})),
        }
    }
    if targets.is_empty() {
        return (400, json!({"error": "no destination: add ?to=<jid> or set the bot's notify list"}));
    }
    let text = summarize(headers, body);
    if text.is_empty() {
        return (400, json!({"error": "nothing to say: empty event"}));
    }
    for t in &targets {
        let is_room = t.node().is_some() && server.muc.as_ref().is_some_and(|m| m.serves(t.domain().as_str()));
        let (from, typ) = if is_room {
            bot.sit(server, &t.to_bare().to_string(), name).await;
            (format!("{from}/{ROOMS_RESOURCE}"), "groupchat")
        } else {
            (from.to_string(), "chat")
        };
        let to = if is_room { t.to_bare().to_string() } else { t.to_string() };
        let el = Element::new("message", ns::CLIENT)
            .attr("from", from)
            .attr("to", to)
            .attr("type", typ)
            .attr("id", crate::stanza::new_id())
            .child(Element::new("body", ns::CLIENT).text(text.clone()));
        router::route_element(server, el).await;
    }
    (200, json!({"delivered": targets.len()}))
}

fn header<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The bot's secret as a bearer token, `?token=`, GitLab's `X-Gitlab-Token`, or GitHub's HMAC
/// signature of the body (`X-Hub-Signature-256: sha256=<hex>`).
fn authorized(secret: &str, headers: &axum::http::HeaderMap, query: &[(String, String)], body: &[u8]) -> bool {
    let s = secret.as_bytes();
    let bearer = header(headers, "authorization").and_then(|v| v.strip_prefix("Bearer "));
    let token = query.iter().find(|(k, _)| k == "token").map(|(_, v)| v.as_str());
    let gitlab = header(headers, "x-gitlab-token");
    if [bearer, token, gitlab].into_iter().flatten().any(|t| constant_time_eq(t.as_bytes(), s)) {
        return true;
    }
    header(headers, "x-hub-signature-256")
        .and_then(|v| v.strip_prefix("sha256="))
        .is_some_and(|sig| constant_time_eq(sig.to_ascii_lowercase().as_bytes(), signature(secret, body).as_bytes()))
}

/// One line (or a few) of text for an event: Slack-style `{"text": …}` or `{"body": …}`,
/// GitHub, GitLab and Jira events by their headers and fields, plain text as it is, any other
/// JSON compacted.
pub fn summarize(headers: &axum::http::HeaderMap, body: &[u8]) -> String {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(v) => summarize_json(headers, &v),
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    };
    let mut t: String = text.chars().filter(|c| !c.is_control() || *c == '\n' || *c == '\t').collect();
    if t.chars().count() > MAX_TEXT {
        t = t.chars().take(MAX_TEXT).collect::<String>() + "…";
    }
    t
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_str)
}

fn n(v: &Value, path: &[&str]) -> Option<i64> {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_i64)
}

fn summarize_json(headers: &axum::http::HeaderMap, v: &Value) -> String {
    if let Some(t) = s(v, &["text"]).or_else(|| s(v, &["body"])) {
        return t.to_string();
    }
    if let Some(event) = header(headers, "x-github-event") {
        let repo = s(v, &["repository", "full_name"]).unwrap_or("?");
        let who = s(v, &["sender", "login"]).unwrap_or("someone");
        let action = s(v, &["action"]).unwrap_or("updated");
        return match event {
            "push" => {
                let count = v.get("commits").and_then(Value::as_array).map(|c| c.len()).unwrap_or(0);
                let branch = s(v, &["ref"]).unwrap_or("").trim_start_matches("refs/heads/");
                let first = s(v, &["head_commit", "message"]).and_then(|m| m.lines().next()).unwrap_or("");
                format!("[{repo}] {who} pushed {count} commit(s) to {branch}: {first} {}", s(v, &["compare"]).unwrap_or(""))
                    .trim()
                    .to_string()
            }
            "pull_request" => format!(
                "[{repo}] {who} {action} pull request #{}: {} {}",
                n(v, &["number"]).unwrap_or(0),
                s(v, &["pull_request", "title"]).unwrap_or(""),
                s(v, &["pull_request", "html_url"]).unwrap_or("")
            ),
            "issues" => format!(
                "[{repo}] {who} {action} issue #{}: {} {}",
                n(v, &["issue", "number"]).unwrap_or(0),
                s(v, &["issue", "title"]).unwrap_or(""),
                s(v, &["issue", "html_url"]).unwrap_or("")
            ),
            "ping" => format!("[{repo}] webhook set up: {}", s(v, &["zen"]).unwrap_or("")),
            other => format!("[{repo}] {who}: {other} {action}"),
        };
    }
    if let Some(event) = header(headers, "x-gitlab-event") {
        let project = s(v, &["project", "path_with_namespace"]).unwrap_or("?");
        let who = s(v, &["user", "name"]).or_else(|| s(v, &["user_name"])).unwrap_or("someone");
        let attrs = v.get("object_attributes").unwrap_or(&Value::Null);
        return match event {
            "Push Hook" | "Tag Push Hook" => format!(
                "[{project}] {who} pushed {} commit(s) to {}",
                n(v, &["total_commits_count"]).unwrap_or(0),
                s(v, &["ref"]).unwrap_or("").trim_start_matches("refs/heads/")
            ),
            "Merge Request Hook" => format!(
                "[{project}] {who} {} merge request !{}: {} {}",
                s(attrs, &["action"]).unwrap_or("updated"),
                n(attrs, &["iid"]).unwrap_or(0),
                s(attrs, &["title"]).unwrap_or(""),
                s(attrs, &["url"]).unwrap_or("")
            ),
            "Issue Hook" => format!(
                "[{project}] {who} {} issue #{}: {} {}",
                s(attrs, &["action"]).unwrap_or("updated"),
                n(attrs, &["iid"]).unwrap_or(0),
                s(attrs, &["title"]).unwrap_or(""),
                s(attrs, &["url"]).unwrap_or("")
            ),
            "Pipeline Hook" => format!(
                "[{project}] pipeline #{} {} on {}",
                n(attrs, &["id"]).unwrap_or(0),
                s(attrs, &["status"]).unwrap_or("?"),
                s(attrs, &["ref"]).unwrap_or("?")
            ),
            other => format!("[{project}] {who}: {other}"),
        };
    }
    if let Some(event) = s(v, &["webhookEvent"]) {
        let key = s(v, &["issue", "key"]).unwrap_or("?");
        let summary = s(v, &["issue", "fields", "summary"]).unwrap_or("");
        let who = s(v, &["user", "displayName"]).unwrap_or("someone");
        let what = event.trim_start_matches("jira:").replace('_', " ");
        return format!("[{key}] {who}: {what}: {summary}");
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn events_become_one_line() {
        let gh = br#"{"ref":"refs/heads/main","compare":"https://github.com/o/r/compare/a...b","commits":[{},{}],
            "head_commit":{"message":"Fix the thing\n\nlong text"},"repository":{"full_name":"o/r"},"sender":{"login":"ann"}}"#;
        assert_eq!(
            summarize(&headers(&[("x-github-event", "push")]), gh),
            "[o/r] ann pushed 2 commit(s) to main: Fix the thing https://github.com/o/r/compare/a...b"
        );
        let gl = br#"{"object_kind":"merge_request","user":{"name":"Bob"},"project":{"path_with_namespace":"g/p"},
            "object_attributes":{"action":"open","iid":7,"title":"Add X","url":"https://gitlab/g/p/-/merge_requests/7"}}"#;
        assert_eq!(
            summarize(&headers(&[("x-gitlab-event", "Merge Request Hook")]), gl),
            "[g/p] Bob open merge request !7: Add X https://gitlab/g/p/-/merge_requests/7"
        );
        let jira = br#"{"webhookEvent":"jira:issue_created","user":{"displayName":"Cy"},"issue":{"key":"OPS-1","fields":{"summary":"Disk full"}}}"#;
        assert_eq!(summarize(&HeaderMap::new(), jira), "[OPS-1] Cy: issue created: Disk full");
        assert_eq!(summarize(&HeaderMap::new(), br#"{"text":"deploy done"}"#), "deploy done");
        assert_eq!(summarize(&HeaderMap::new(), b"plain words\n"), "plain words");
        assert_eq!(summarize(&HeaderMap::new(), br#"{"a":1}"#), r#"{"a":1}"#);
        let long = "x".repeat(MAX_TEXT + 10);
        assert_eq!(summarize(&HeaderMap::new(), long.as_bytes()).chars().count(), MAX_TEXT + 1);
    }

    #[test]
    fn hooks_take_the_secret_four_ways() {
        let body = b"{}";
        assert!(authorized("s3", &headers(&[("authorization", "Bearer s3")]), &[], body));
        assert!(authorized("s3", &HeaderMap::new(), &[("token".into(), "s3".into())], body));
        assert!(authorized("s3", &headers(&[("x-gitlab-token", "s3")]), &[], body));
        let sig = format!("sha256={}", signature("s3", body));
        assert!(authorized("s3", &headers(&[("x-hub-signature-256", &sig)]), &[], body));
        assert!(!authorized("s3", &headers(&[("x-hub-signature-256", &sig)]), &[], b"{ }"));
        assert!(!authorized("s3", &headers(&[("authorization", "Bearer s4")]), &[], body));
        assert!(!authorized("s3", &HeaderMap::new(), &[], body));
    }

    #[test]
    fn answers_become_replies_to_the_sender() {
        let m = Element::new("message", ns::CLIENT)
            .attr("from", "a@localhost/phone")
            .attr("to", "echo@bots.localhost")
            .attr("type", "chat")
            .child(Element::new("body", ns::CLIENT).text("hi"));
        let r = replies(&m, "hello back", false);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].get_attr("from"), Some("echo@bots.localhost"));
        assert_eq!(r[0].get_attr("to"), Some("a@localhost/phone"));
        assert_eq!(r[0].get_attr("type"), Some("chat"));
        assert_eq!(r[0].find("body", ns::CLIENT).unwrap().text_content(), "hello back");
        let r = replies(&m, r#"{"messages":[{"body":"one"},{"body":"two","to":"b@localhost"},{"nobody":1}]}"#, true);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].get_attr("to"), Some("b@localhost"));
        assert!(replies(&m, "", false).is_empty());
        assert!(replies(&m, "{}", true).is_empty());
        assert_eq!(payload(&m)["body"], "hi");
    }
}
