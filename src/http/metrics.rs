//! `GET /metrics` (when `http.metrics` is on): the server's state in the Prometheus text format,
//! for Prometheus, VictoriaMetrics, Grafana Agent and the like. Gauges are read when scraped;
//! counters come from `crate::metrics`; process figures from /proc.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::bosh;
use crate::server::Server;

pub async fn scrape(State((server, bosh_sessions)): State<(Arc<Server>, Arc<bosh::Sessions>)>) -> Response {
    let mut r = render(&server, &bosh_sessions).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    r
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

pub fn render(server: &Server, bosh_sessions: &bosh::Sessions) -> String {
    let c = &server.counters;
    let mut out = String::new();
    metric(
        &mut out,
        "starling_c2s_sessions",
        "gauge",
        "Bound client sessions (TCP, WebSocket, BOSH).",
        &[("", server.sessions.count() as f64)],
    );
    metric(&mut out, "starling_bosh_sessions", "gauge", "Open BOSH sessions.", &[("", bosh_sessions.count() as f64)]);
    let rooms = server.muc.as_ref().map(|m| m.live_count()).unwrap_or(0);
    metric(&mut out, "starling_muc_rooms_live", "gauge", "Group chat rooms with a running task.", &[("", rooms as f64)]);
    metric(
        &mut out,
        "starling_components_connected",
        "gauge",
        "External components (XEP-0114) connected.",
        &[("", server.components.connected_count() as f64)],
    );
    metric(
        &mut out,
        "starling_s2s_links",
        "gauge",
        "Federation: outgoing links (one per pair of domains, up or being set up) and incoming streams that verified a domain.",
        &[("{direction=\"out\"}", server.s2s.link_count() as f64), ("{direction=\"in\"}", server.s2s.incoming_count() as f64)],
    );
    let a = server.s2s.authentications();
    metric(
        &mut out,
        "starling_s2s_authentications_total",
        "counter",
        "Federation: domain pairs authenticated, by way (SASL EXTERNAL with a certificate, XEP-0178, or dialback, XEP-0220) and direction.",
        &[
            ("{method=\"external\",direction=\"in\"}", a.external_in as f64),
            ("{method=\"dialback\",direction=\"in\"}", a.dialback_in as f64),
            ("{method=\"external\",direction=\"out\"}", a.external_out as f64),
            ("{method=\"dialback\",direction=\"out\"}", a.dialback_out as f64),
        ],
    );
    let routed: Vec<(String, f64)> = c.routed_totals().iter().map(|(k, v)| (format!("{{kind=\"{k}\"}}"), *v as f64)).collect();
    let routed: Vec<(&str, f64)> = routed.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    metric(&mut out, "starling_stanzas_routed_total", "counter", "Stanzas through the router, by kind.", &routed);
    metric(&mut out, "starling_logins_total", "counter", "Resources bound.", &[("", c.logins.load(Ordering::Relaxed) as f64)]);
    metric(
        &mut out,
        "starling_login_failures_total",
        "counter",
        "Failed SASL attempts.",
        &[("", c.login_failures.load(Ordering::Relaxed) as f64)],
    );
    metric(
        &mut out,
        "starling_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
        &[("", server.started.elapsed().as_secs_f64())],
    );
    process(&mut out);
    out
}

/// Standard process metrics, as Prometheus' client libraries name them.
fn process(out: &mut String) {
    let ticks = 100.0; // USER_HZ on Linux
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces) start at "state".
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            // utime and stime are fields 14 and 15 of stat, 11 and 12 after the state (field 3).
            metric(out, "process_cpu_seconds_total", "counter", "User and system CPU time.", &[("", (num(11) + num(12)) / ticks)]);
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let rss =
            status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok());
        if let Some(kib) = rss {
            metric(out, "process_resident_memory_bytes", "gauge", "Resident memory.", &[("", kib * 1024.0)]);
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metric(out, "process_open_fds", "gauge", "Open file descriptors.", &[("", fds.count() as f64)]);
    }
}
