//! The HTTP listener (`[http] listen`). One axum router over the shared `Server`; it stops
//! with the server.
//!
//! - `POST /hooks/<domain>/<name>`: an event for the bot at `<domain>` (see
//!   `modules::bots::incoming`), sent as a message from `<name>@<domain>`.
//! - `/api/v1/…`: the REST API ([`api`]), when `http.api_tokens` is set.
//! - `/xmpp-websocket`: client sessions over WebSocket ([`websocket`], RFC 7395), unless
//!   `http.websocket` is off.
//! - `/http-bind`: client sessions over BOSH ([`bosh`], XEP-0124/0206), unless `http.bosh` is
//!   off.
//! - `/metrics`: monitoring in the Prometheus text format ([`metrics`]), when `http.metrics` is
//!   on.

pub mod api;
pub mod bosh;
pub mod metrics;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use tokio::net::TcpListener;

use crate::server::{Server, StartError};

fn router(server: Arc<Server>, bosh_sessions: Arc<bosh::Sessions>) -> Router {
    let mut r = Router::new().route("/hooks/{domain}/{name}", post(hook));
    if !server.config.http.api_tokens.is_empty() {
        r = r.nest("/api/v1", api::routes(server.clone()));
    }
    if server.config.http.websocket {
        r = r.route("/xmpp-websocket", axum::routing::get(websocket::upgrade));
    }
    let mut shared = Router::new();
    if server.config.http.bosh {
        shared = shared.route("/http-bind", post(bosh::request).options(bosh::preflight));
    }
    if server.config.http.metrics {
        shared = shared.route("/metrics", axum::routing::get(metrics::scrape));
    }
    r = r.merge(shared.with_state((server.clone(), bosh_sessions)));
    r.with_state(server)
}

/// Bind every configured HTTP listener and serve until shutdown; the bound addresses.
pub async fn listen(server: &Arc<Server>) -> Result<Vec<SocketAddr>, StartError> {
    let mut bound = Vec::new();
    // One set of BOSH sessions for every listener: a client's requests may arrive on any.
    let bosh_sessions = Arc::new(bosh::Sessions::default());
    for addr in server.config.http.listen.clone() {
        let l = TcpListener::bind(addr).await.map_err(|e| StartError::Listen(addr, e))?;
        let local = l.local_addr().map_err(|e| StartError::Listen(addr, e))?;
        tracing::info!(addr = %local, "listening for HTTP");
        bound.push(local);
        let mut shutdown = server.shutdown.clone();
        let app = router(server.clone(), bosh_sessions.clone());
        tokio::spawn(async move {
            let stop = async move {
                let _ = shutdown.wait_for(|s| *s).await;
            };
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(l, app).with_graceful_shutdown(stop).await {
                tracing::error!(error = %e, "HTTP listener failed");
            }
        });
    }
    Ok(bound)
}

async fn hook(
    State(server): State<Arc<Server>>,
    Path((domain, name)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let (status, answer) = crate::modules::bots::incoming(&server, &domain, &name, &headers, &query, &body).await;
    (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), Json(answer))
}
