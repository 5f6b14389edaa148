//! The REST API (`/api/v1`, on the `[http]` listeners, present when `http.api_tokens` is set):
//! accounts, messages, archives and rooms for the systems around the server. Every call carries
//! `Authorization: Bearer <token>`; answers are JSON, errors `{"error": "…"}` with the status
//! that says what went wrong (400 bad input, 401 no or wrong token, 404 unknown, 409 exists).
//!
//! - `GET /users[?host=]`, `POST /users {jid, password}`, `DELETE /users/{jid}` (its sessions
//!   end with `not-authorized`, as XEP-0077 cancellation does), `PUT /users/{jid}/password
//!   {password}`, `GET /users/{jid}/sessions`.
//! - `POST /messages {to, body, from?, type?, subject?}`: `to` one JID or a list; `from` a local
//!   account or host (the first host by default). An account's message is handled as if one
//!   of its clients sent it: archived on both sides, carbon-copied, kept offline if need be.
//! - `GET /history/{jid}[?with=&after=&before=&limit=]`: an account's or a room's archive, oldest
//!   first; `after`/`before` are archive ids (XEP-0359 stanza ids) as returned, for paging.
//! - `GET /rooms`, `POST /rooms {jid, name?, description?, owners, members?, members_only?,
//!   public?}` (a persistent room), `DELETE /rooms/{jid}` (destroyed as by its owner: occupants
//!   told, archive dropped), `PUT /rooms/{jid}/affiliations {"<jid>": "owner|admin|member|
//!   outcast|none", …}`. Room changes go to the room itself, from the service's own address,
//!   which the room treats as an owner; they are answered 202 once handed over.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::StreamError;
use crate::jid::{self, BareJid, Jid};
use crate::modules::muc::config::RoomConfig;
use crate::router;
use crate::sasl::constant_time_eq;
use crate::sasl::credentials::Credentials;
use crate::server::Server;
use crate::session::Deliver;
use crate::storage::archive::ArchiveFilter;
use crate::storage::muc::StoredRoom;
use crate::xml::{ns, Element};

const MAX_PAGE: usize = 500;
const DEFAULT_PAGE: usize = 50;

/// An API error: its status and text.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<crate::storage::StorageError> for ApiError {
    fn from(e: crate::storage::StorageError) -> Self {
        tracing::error!(error = %e, "storage failed under an API call");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, "storage failed".into())
    }
}

fn bad(text: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, text.into())
}

fn not_found(text: impl Into<String>) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, text.into())
}

type Answer = Result<Response, ApiError>;

/// The API's routes, behind the token check.
pub fn routes(server: Arc<Server>) -> Router<Arc<Server>> {
    Router::new()
        .route("/users", get(list_users).post(create_user))
        .route("/users/{jid}", axum::routing::delete(delete_user))
        .route("/users/{jid}/password", put(set_password))
        .route("/users/{jid}/sessions", get(sessions))
        .route("/messages", post(send_messages))
        .route("/history/{jid}", get(history))
        .route("/rooms", get(list_rooms).post(create_room))
        .route("/rooms/{jid}", axum::routing::delete(destroy_room))
        .route("/rooms/{jid}/affiliations", put(set_affiliations))
        .layer(axum::middleware::from_fn_with_state(server, authorize))
}

async fn authorize(State(server): State<Arc<Server>>, req: Request, next: Next) -> Response {
    let token = req.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let ok = token.is_some_and(|t| server.config.http.api_tokens.iter().any(|k| constant_time_eq(k.as_bytes(), t.as_bytes())));
    if !ok {
        return ApiError(StatusCode::UNAUTHORIZED, "a valid API token is required (Authorization: Bearer …)".into()).into_response();
    }
    next.run(req).await
}

fn password_of(body: &Value) -> Result<&str, ApiError> {
    match body.get("password").and_then(Value::as_str) {
        Some(p) if !p.is_empty() => Ok(p),
        _ => Err(bad("a non-empty \"password\" is required")),
    }
}

fn str_field<'a>(body: &'a Value, name: &str) -> Result<&'a str, ApiError> {
    body.get(name).and_then(Value::as_str).ok_or_else(|| bad(format!("\"{name}\" (a string) is required")))
}

#[derive(Deserialize)]
struct HostQuery {
    host: Option<String>,
}

async fn list_users(State(server): State<Arc<Server>>, Query(q): Query<HostQuery>) -> Answer {
    let users: Vec<String> = server.storage.list_users(q.host.as_deref()).await?.into_iter().map(|(h, u)| format!("{u}@{h}")).collect();
    Ok(Json(json!({ "users": users })).into_response())
}

async fn create_user(State(server): State<Arc<Server>>, Json(body): Json<Value>) -> Answer {
    let (j, host, user) = server.config.local_account(str_field(&body, "jid")?).map_err(bad)?;
    let creds = Credentials::new(password_of(&body)?, server.config.auth.scram_iterations);
    if !server.storage.create_user(&host, &user, &creds).await? {
        return Err(ApiError(StatusCode::CONFLICT, format!("{j} exists")));
    }
    Ok((StatusCode::CREATED, Json(json!({ "jid": j.to_string() }))).into_response())
}

async fn delete_user(State(server): State<Arc<Server>>, Path(jid): Path<String>) -> Answer {
    let (j, host, user) = server.config.local_account(&jid).map_err(bad)?;
    if !server.storage.delete_user(&host, &user).await? {
        return Err(not_found(format!("{j} does not exist")));
    }
    for s in server.sessions.sessions(&j, |_| true) {
        server.sessions.send(&s, Deliver::Close(StreamError::NotAuthorized));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn set_password(State(server): State<Arc<Server>>, Path(jid): Path<String>, Json(body): Json<Value>) -> Answer {
    let (j, host, user) = server.config.local_account(&jid).map_err(bad)?;
    let creds = Credentials::new(password_of(&body)?, server.config.auth.scram_iterations);
    if !server.storage.set_password(&host, &user, &creds).await? {
        return Err(not_found(format!("{j} does not exist")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn sessions(State(server): State<Arc<Server>>, Path(jid): Path<String>) -> Answer {
    let (j, host, user) = server.config.local_account(&jid).map_err(bad)?;
    if !server.storage.user_exists(&host, &user).await? {
        return Err(not_found(format!("{j} does not exist")));
    }
    let list: Vec<Value> = server
        .sessions
        .sessions(&j, |_| true)
        .iter()
        .map(|s| json!({ "jid": s.jid.to_string(), "available": s.available, "priority": s.priority }))
        .collect();
    Ok(Json(json!({ "sessions": list })).into_response())
}

async fn send_messages(State(server): State<Arc<Server>>, Json(body): Json<Value>) -> Answer {
    let text = str_field(&body, "body")?;
    let from = match body.get("from").and_then(Value::as_str) {
        Some(f) => jid::parse(f).ok_or_else(|| bad(format!("from: {f:?} is not a JID")))?,
        None => Jid::from(
            BareJid::new(server.config.server.hosts.first().map(String::as_str).unwrap_or("localhost")).map_err(|_| bad("no host"))?,
        ),
    };
    if !server.is_local_domain(from.domain().as_str()) {
        return Err(bad(format!("from: {from} is not at a host of this server")));
    }
    if let Some(node) = from.node() {
        if !server.storage.user_exists(from.domain().as_str(), node.as_str()).await? {
            return Err(bad(format!("from: {} has no account here", from.to_bare())));
        }
    }
    let to: Vec<&str> = match body.get("to") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(list)) => {
            list.iter().map(|v| v.as_str().ok_or_else(|| bad("to: a list of strings"))).collect::<Result<_, _>>()?
        }
        _ => return Err(bad("\"to\" (a JID or a list of JIDs) is required")),
    };
    if to.is_empty() {
        return Err(bad("to: no destination"));
    }
    let typ = body.get("type").and_then(Value::as_str).unwrap_or("chat");
    if !matches!(typ, "chat" | "normal" | "headline") {
        return Err(bad("type: chat, normal or headline"));
    }
    let targets: Vec<Jid> =
        to.iter().map(|t| jid::parse(t).ok_or_else(|| bad(format!("to: {t:?} is not a JID")))).collect::<Result<_, _>>()?;
    let mut ids = Vec::new();
    for t in targets {
        let id = crate::stanza::new_id();
        let mut m = Element::new("message", ns::CLIENT)
            .attr("from", from.to_string())
            .attr("to", t.to_string())
            .attr("type", typ)
            .attr("id", id.clone());
        if let Some(s) = body.get("subject").and_then(Value::as_str) {
            m = m.child(Element::new("subject", ns::CLIENT).text(s));
        }
        let m = m.child(Element::new("body", ns::CLIENT).text(text));
        match crate::stanza::Stanza::parse(m) {
            // An account's message is its own: archived and carbon-copied as if a client sent it.
            Ok(st) if from.node().is_some() => router::send_from_account(&server, &from.to_bare(), None, st).await,
            Ok(st) => router::route(&server, st).await,
            Err(_) => return Err(bad("not a message that can be sent")),
        }
        ids.push(id);
    }
    Ok(Json(json!({ "ids": ids })).into_response())
}

#[derive(Deserialize)]
struct HistoryQuery {
    with: Option<String>,
    after: Option<String>,
    before: Option<String>,
    limit: Option<usize>,
}

/// An archive whose owner is a local account or a room here.
async fn archive_owner(server: &Server, jid: &str) -> Result<BareJid, ApiError> {
    let j = BareJid::new(jid).map_err(|e| bad(format!("{jid:?}: {e}")))?;
    let domain = j.domain().as_str();
    let node = j.node().map(|n| n.as_str()).unwrap_or("");
    let known = if server.is_local_domain(domain) {
        !node.is_empty() && server.storage.user_exists(domain, node).await?
    } else if server.muc.as_ref().is_some_and(|m| m.serves(domain)) {
        !node.is_empty()
    } else {
        false
    };
    if !known {
        return Err(not_found(format!("no archive for {j} here")));
    }
    Ok(j)
}

/// The archive row of a message id given for paging.
async fn archive_row(server: &Server, owner: &BareJid, id: Option<String>) -> Result<Option<i64>, ApiError> {
    let Some(id) = id else { return Ok(None) };
    match server.storage.archive_row_id(owner.as_str(), &id).await? {
        Some(row) => Ok(Some(row)),
        None => Err(not_found(format!("no message {id:?} in this archive"))),
    }
}

async fn history(State(server): State<Arc<Server>>, Path(jid): Path<String>, Query(q): Query<HistoryQuery>) -> Answer {
    let owner = archive_owner(&server, &jid).await?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let after = archive_row(&server, &owner, q.after).await?;
    let before = archive_row(&server, &owner, q.before).await?;
    let with = match q.with {
        Some(w) => {
            let j = jid::parse(&w).ok_or_else(|| bad(format!("with: {w:?} is not a JID")))?;
            let full = j.resource().map(|_| j.to_string());
            Some((j.to_bare().to_string(), full))
        }
        None => None,
    };
    // Only `before`: the page that ends there, so it is read newest first and turned round.
    let backward = before.is_some() && after.is_none();
    let filter = ArchiveFilter {
        owner: owner.to_string(),
        with,
        start: None,
        end: None,
        after,
        before,
        ids: Vec::new(),
        backward,
        limit: limit + 1,
    };
    let mut rows = server.storage.archive_query(&filter).await?;
    let complete = rows.len() <= limit;
    rows.truncate(limit);
    if backward {
        rows.reverse();
    }
    let mut messages = Vec::with_capacity(rows.len());
    for r in rows {
        let el = crate::xml::parse_stored(&r.xml).await;
        let attr = |name: &str| el.as_ref().and_then(|e| e.get_attr(name)).map(str::to_string);
        let child = |name: &str| el.as_ref().and_then(|e| e.find(name, ns::CLIENT)).map(|c| c.text_content());
        messages.push(json!({
            "id": r.stanza_id,
            "ts": crate::modules::time::xmpp_datetime_micros(r.ts),
            "from": attr("from"),
            "to": attr("to"),
            "type": attr("type").unwrap_or_else(|| "normal".into()),
            "body": child("body"),
            "xml": r.xml,
        }));
    }
    Ok(Json(json!({ "messages": messages, "complete": complete })).into_response())
}

/// A room's address on this server's group chat service.
fn room_jid(server: &Server, jid: &str) -> Result<BareJid, ApiError> {
    let j = BareJid::new(jid).map_err(|e| bad(format!("{jid:?}: {e}")))?;
    if j.node().is_none() || !server.muc.as_ref().is_some_and(|m| m.serves(j.domain().as_str())) {
        return Err(bad(format!("{j} is not a room of this server's group chat service")));
    }
    Ok(j)
}

async fn list_rooms(State(server): State<Arc<Server>>) -> Answer {
    let mut rooms = Vec::new();
    let Some(muc) = &server.muc else { return Ok(Json(json!({ "rooms": rooms })).into_response()) };
    for service in muc.domains() {
        for (jid, config) in server.storage.muc_rooms_on(service).await? {
            let c: RoomConfig = serde_json::from_str(&config).unwrap_or_default();
            let live = BareJid::new(&jid).ok().is_some_and(|j| muc.is_live(&j));
            rooms.push(json!({ "jid": jid, "name": c.name, "public": c.public, "members_only": c.members_only, "live": live }));
        }
    }
    Ok(Json(json!({ "rooms": rooms })).into_response())
}

fn jid_list(body: &Value, name: &str) -> Result<Vec<BareJid>, ApiError> {
    match body.get(name) {
        None => Ok(Vec::new()),
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| v.as_str().and_then(|s| BareJid::new(s).ok()).ok_or_else(|| bad(format!("{name}: {v} is not a JID"))))
            .collect(),
        Some(_) => Err(bad(format!("{name}: a list of JIDs"))),
    }
}

async fn create_room(State(server): State<Arc<Server>>, Json(body): Json<Value>) -> Answer {
    let room = room_jid(&server, str_field(&body, "jid")?)?;
    let owners = jid_list(&body, "owners")?;
    if owners.is_empty() {
        return Err(bad("owners: at least one"));
    }
    let members = jid_list(&body, "members")?;
    let muc = server.muc.as_ref().ok_or_else(|| bad("group chat is off"))?;
    if muc.is_live(&room) || server.storage.muc_room(room.as_str()).await?.is_some() {
        return Err(ApiError(StatusCode::CONFLICT, format!("{room} exists")));
    }
    let flag = |name: &str, default: bool| body.get(name).and_then(Value::as_bool).unwrap_or(default);
    let text = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or("").to_string();
    let defaults = RoomConfig::new_room(&server.config.muc);
    let config = RoomConfig {
        name: text("name"),
        description: text("description"),
        persistent: true,
        members_only: flag("members_only", defaults.members_only),
        public: flag("public", defaults.public),
        ..defaults
    };
    let stored = StoredRoom {
        config: serde_json::to_string(&config).map_err(|e| bad(e.to_string()))?,
        subject: text("subject"),
        subject_by: String::new(),
        subject_ts: 0,
    };
    let affiliations: Vec<(String, String, String)> = owners
        .iter()
        .map(|o| (o.to_string(), "owner".to_string(), String::new()))
        .chain(members.iter().filter(|m| !owners.contains(m)).map(|m| (m.to_string(), "member".to_string(), String::new())))
        .collect();
    server.storage.muc_save_room(room.as_str(), &stored).await?;
    server.storage.muc_set_affiliations(room.as_str(), &affiliations, true).await?;
    Ok((StatusCode::CREATED, Json(json!({ "jid": room.to_string() }))).into_response())
}

/// An IQ to the room from its service's own address, which the room obeys as an owner.
async fn to_room(server: &Server, room: &BareJid, payload: Element) {
    let iq = Element::new("iq", ns::CLIENT)
        .attr("from", room.domain().as_str())
        .attr("to", room.to_string())
        .attr("type", "set")
        .attr("id", crate::stanza::new_id())
        .child(payload);
    router::route_element(server, iq).await;
}

async fn destroy_room(State(server): State<Arc<Server>>, Path(jid): Path<String>) -> Answer {
    let room = room_jid(&server, &jid)?;
    let muc = server.muc.as_ref().ok_or_else(|| bad("group chat is off"))?;
    if !muc.is_live(&room) && server.storage.muc_room(room.as_str()).await?.is_none() {
        return Err(not_found(format!("{room} does not exist")));
    }
    let q = Element::new("query", crate::modules::muc::NS_OWNER).child(Element::new("destroy", crate::modules::muc::NS_OWNER));
    to_room(&server, &room, q).await;
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn set_affiliations(
    State(server): State<Arc<Server>>,
    Path(jid): Path<String>,
    Json(body): Json<BTreeMap<String, String>>,
) -> Answer {
    let room = room_jid(&server, &jid)?;
    let muc = server.muc.as_ref().ok_or_else(|| bad("group chat is off"))?;
    if body.is_empty() {
        return Err(bad("an object {\"<jid>\": \"<affiliation>\"}"));
    }
    if !muc.is_live(&room) && server.storage.muc_room(room.as_str()).await?.is_none() {
        return Err(not_found(format!("{room} does not exist")));
    }
    let mut q = Element::new("query", crate::modules::muc::NS_ADMIN);
    for (j, a) in &body {
        let j = BareJid::new(j).map_err(|_| bad(format!("{j:?} is not a JID")))?;
        if !matches!(a.as_str(), "owner" | "admin" | "member" | "outcast" | "none") {
            return Err(bad(format!("{a:?}: owner, admin, member, outcast or none")));
        }
        q = q.child(Element::new("item", crate::modules::muc::NS_ADMIN).attr("jid", j.to_string()).attr("affiliation", a.as_str()));
    }
    to_room(&server, &room, q).await;
    Ok(StatusCode::ACCEPTED.into_response())
}
