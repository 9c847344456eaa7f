//! The relay's counters and its loopback HTTP endpoint: `/healthz`, `/metrics` (Prometheus
//! text format 0.0.4) and `/sessions` (which sessions this relay holds, for operators of a
//! fleet: "where is session X?").
//!
//! Owns: the counters (plain atomics: a forwarded message costs two relaxed increments) and
//! their text rendering; the small axum server that serves them.
//!
//! Does not own: what is counted (the connection code and the hub increment these).
//!
//! Why not the `prometheus-client` crate: a dozen fixed counters with at most one label,
//! known at compile time, render in forty lines; the crate would add a registry, boxed
//! metric families and a dependency tree for no gain in what is exposed.

use super::hub::Hub;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why a connection was dropped before it authenticated (`obdgw_relay_admission_drops_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Its source address already had the maximum of unauthenticated connections.
    PerSource,
    /// TLS, websocket handshake and hello did not finish within the deadline.
    Deadline,
    /// The TLS or websocket handshake failed (not a websocket, wrong subprotocol, …).
    Handshake,
    /// More bytes before the hello was accepted than the pre-auth budget allows.
    PreAuthBytes,
    /// The oldest unauthenticated connection, closed to make room when the pre-auth cap
    /// was full.
    Evicted,
}

/// Why an authenticated-or-not hello was refused (`obdgw_relay_refusals_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadHello,
    UnsupportedVersion,
    AuthFailed,
    SessionLimit,
}

/// Upper bounds (µs) of the forwarding-latency histogram's buckets.
pub const LATENCY_BUCKETS_US: [u32; 11] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
];

/// A latency histogram with fixed buckets (Prometheus `histogram`), lock-free.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Per bucket of [`LATENCY_BUCKETS_US`], then one above the last.
    counts: [AtomicU64; 12],
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    pub fn record(&self, us: u32) {
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us as u64, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket bound, the last for +Inf.
    pub fn cumulative(&self) -> [u64; 12] {
        let mut c = [0u64; 12];
        let mut acc = 0;
        for (i, n) in self.counts.iter().enumerate() {
            acc += n.load(Ordering::Relaxed);
            c[i] = acc;
        }
        c
    }
}

/// Relay counters and gauges.
#[derive(Debug)]
pub struct Metrics {
    /// Origin of [`Metrics::stamp`].
    epoch: std::time::Instant,
    /// Time from reading a message to having written it to its peer's socket (the relay's
    /// added latency, without the network).
    pub forward_latency: LatencyHistogram,
    /// TCP connections accepted.
    pub accepted: AtomicU64,
    /// Connections open now (any phase).
    pub open: AtomicU64,
    /// Connections open now that have not been authenticated yet.
    pub preauth: AtomicU64,
    /// Times the accept loop waited for the accept rate limit.
    pub accept_throttled: AtomicU64,
    /// Times the accept loop waited because the pre-auth cap was reached.
    pub preauth_full: AtomicU64,
    /// Hellos refused unchecked because their source had too many authentication failures
    /// (also counted as `auth_failed` refusals).
    pub auth_throttled: AtomicU64,
    drops: [AtomicU64; 5],
    refusals: [AtomicU64; 4],
    /// Hellos accepted.
    pub attached: AtomicU64,
    /// Sessions held (gauge, written by the hub).
    pub sessions: AtomicU64,
    /// Sessions with both sides attached (gauge, written by the hub).
    pub pairs: AtomicU64,
    /// Messages forwarded to a peer.
    pub forwarded_messages: AtomicU64,
    /// Bytes of forwarded messages (websocket payloads).
    pub forwarded_bytes: AtomicU64,
    /// Messages discarded because the sender's peer was not attached.
    pub discarded_messages: AtomicU64,
    /// Times a sender waited because its peer's queue was full (backpressure).
    pub backpressure_waits: AtomicU64,
    /// Connections closed because they stopped reading (write stall).
    pub write_stalls: AtomicU64,
    /// Connections closed because they were silent past the read deadline.
    pub silent_closed: AtomicU64,
    /// Websocket pings the relay sent to silent connections.
    pub pings_sent: AtomicU64,
    /// Set when the relay is shutting down: `/healthz` answers 503.
    pub draining: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            epoch: std::time::Instant::now(),
            forward_latency: LatencyHistogram::default(),
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
            preauth: AtomicU64::new(0),
            accept_throttled: AtomicU64::new(0),
            preauth_full: AtomicU64::new(0),
            auth_throttled: AtomicU64::new(0),
            drops: Default::default(),
            refusals: Default::default(),
            attached: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            pairs: AtomicU64::new(0),
            forwarded_messages: AtomicU64::new(0),
            forwarded_bytes: AtomicU64::new(0),
            discarded_messages: AtomicU64::new(0),
            backpressure_waits: AtomicU64::new(0),
            write_stalls: AtomicU64::new(0),
            silent_closed: AtomicU64::new(0),
            pings_sent: AtomicU64::new(0),
            draining: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// Microseconds since the relay started, never 0 (wraps after 71 minutes; differences
    /// are taken with `wrapping_sub`).
    pub fn stamp(&self) -> u32 {
        (self.epoch.elapsed().as_micros() as u32).max(1)
    }

    pub fn admission_drop(&self, why: DropReason) {
        self.drops[why as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn refuse(&self, why: Refusal) {
        self.refusals[why as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn drops(&self, why: DropReason) -> u64 {
        self.drops[why as usize].load(Ordering::Relaxed)
    }
    pub fn refusals(&self, why: Refusal) -> u64 {
        self.refusals[why as usize].load(Ordering::Relaxed)
    }

    /// Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(4096);
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut one = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = write!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            );
        };
        one(
            "obdgw_relay_connections_accepted_total",
            "counter",
            "TCP connections accepted.",
            g(&self.accepted),
        );
        one(
            "obdgw_relay_connections_open",
            "gauge",
            "Connections open now, in any phase.",
            g(&self.open),
        );
        one(
            "obdgw_relay_connections_preauth",
            "gauge",
            "Open connections not authenticated yet.",
            g(&self.preauth),
        );
        one(
            "obdgw_relay_accept_throttled_total",
            "counter",
            "Times accepting waited for the accept rate limit.",
            g(&self.accept_throttled),
        );
        one(
            "obdgw_relay_preauth_full_total",
            "counter",
            "Times accepting waited because the pre-auth cap was reached.",
            g(&self.preauth_full),
        );
        one(
            "obdgw_relay_auth_throttled_total",
            "counter",
            "Hellos refused unchecked because their source had too many authentication failures.",
            g(&self.auth_throttled),
        );
        one(
            "obdgw_relay_hellos_accepted_total",
            "counter",
            "Hellos accepted (connections attached to a session).",
            g(&self.attached),
        );
        one(
            "obdgw_relay_sessions",
            "gauge",
            "Sessions held (at least one side attached).",
            g(&self.sessions),
        );
        one(
            "obdgw_relay_pairs",
            "gauge",
            "Sessions with gateway and operator attached.",
            g(&self.pairs),
        );
        one(
            "obdgw_relay_forwarded_messages_total",
            "counter",
            "Websocket messages forwarded to a peer.",
            g(&self.forwarded_messages),
        );
        one(
            "obdgw_relay_forwarded_bytes_total",
            "counter",
            "Payload bytes of forwarded messages.",
            g(&self.forwarded_bytes),
        );
        one(
            "obdgw_relay_discarded_messages_total",
            "counter",
            "Messages discarded because the peer was not attached.",
            g(&self.discarded_messages),
        );
        one(
            "obdgw_relay_backpressure_waits_total",
            "counter",
            "Times a sender waited for its peer's queue (bytes bound).",
            g(&self.backpressure_waits),
        );
        one(
            "obdgw_relay_write_stalls_total",
            "counter",
            "Connections closed because they stopped reading.",
            g(&self.write_stalls),
        );
        one(
            "obdgw_relay_silent_closed_total",
            "counter",
            "Connections closed because they were silent past the read deadline.",
            g(&self.silent_closed),
        );
        one(
            "obdgw_relay_pings_sent_total",
            "counter",
            "Websocket pings sent to silent connections.",
            g(&self.pings_sent),
        );
        let _ = write!(
            s,
            "# HELP obdgw_relay_admission_drops_total Connections dropped before authentication, by reason.\n\
             # TYPE obdgw_relay_admission_drops_total counter\n"
        );
        for (i, r) in [
            "per_source",
            "deadline",
            "handshake",
            "preauth_bytes",
            "evicted",
        ]
        .iter()
        .enumerate()
        {
            let _ = writeln!(
                s,
                "obdgw_relay_admission_drops_total{{reason=\"{r}\"}} {}",
                g(&self.drops[i])
            );
        }
        let _ = write!(
            s,
            "# HELP obdgw_relay_refusals_total Hellos refused, by error code name.\n\
             # TYPE obdgw_relay_refusals_total counter\n"
        );
        for (i, r) in [
            "bad_hello",
            "unsupported_version",
            "auth_failed",
            "session_limit",
        ]
        .iter()
        .enumerate()
        {
            let _ = writeln!(
                s,
                "obdgw_relay_refusals_total{{code=\"{r}\"}} {}",
                g(&self.refusals[i])
            );
        }
        let _ = write!(
            s,
            "# HELP obdgw_relay_forward_latency_seconds From reading a message to having written it toward its peer.\n\
             # TYPE obdgw_relay_forward_latency_seconds histogram\n"
        );
        let c = self.forward_latency.cumulative();
        for (i, b) in LATENCY_BUCKETS_US.iter().enumerate() {
            let _ = writeln!(
                s,
                "obdgw_relay_forward_latency_seconds_bucket{{le=\"{}\"}} {}",
                *b as f64 / 1e6,
                c[i]
            );
        }
        let _ = writeln!(
            s,
            "obdgw_relay_forward_latency_seconds_bucket{{le=\"+Inf\"}} {}",
            c[11]
        );
        let _ = writeln!(
            s,
            "obdgw_relay_forward_latency_seconds_sum {}",
            g(&self.forward_latency.sum_us) as f64 / 1e6
        );
        let _ = writeln!(s, "obdgw_relay_forward_latency_seconds_count {}", c[11]);
        s
    }
}

/// Serve `/healthz`, `/metrics` and `/sessions` on `listener` until `shutdown`. Bind it to
/// loopback or a private interface: it lists session ids.
pub async fn serve(listener: TcpListener, hub: Hub, shutdown: CancellationToken) {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    let m = hub.metrics().clone();
    let health = {
        let m = m.clone();
        move || {
            let m = m.clone();
            async move {
                if m.draining.load(Ordering::Relaxed) {
                    (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else {
                    (StatusCode::OK, "ok\n")
                }
            }
        }
    };
    let metrics = {
        let m: Arc<Metrics> = m.clone();
        move || {
            let m = m.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    m.render(),
                )
                    .into_response()
            }
        }
    };
    let sessions = move || {
        let hub = hub.clone();
        async move {
            let mut s = String::new();
            for v in hub.sessions() {
                let state = match (v.gateway, v.operator) {
                    (true, true) => "paired",
                    (true, false) => "gateway",
                    (false, true) => "operator",
                    (false, false) => "empty",
                };
                let _ = writeln!(s, "{} {state}", v.id);
            }
            s
        }
    };
    let app = axum::Router::new()
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .route("/sessions", get(sessions));
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        tracing::warn!(error = %e, "relay metrics endpoint failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_help_and_type() {
        let m = Metrics::default();
        m.forwarded_messages.fetch_add(3, Ordering::Relaxed);
        m.admission_drop(DropReason::PerSource);
        m.refuse(Refusal::AuthFailed);
        m.forward_latency.record(80);
        m.forward_latency.record(3000);
        m.forward_latency.record(u32::MAX);
        let t = m.render();
        for want in [
            "obdgw_relay_forward_latency_seconds_bucket{le=\"0.0001\"} 1\n",
            "obdgw_relay_forward_latency_seconds_bucket{le=\"0.005\"} 2\n",
            "obdgw_relay_forward_latency_seconds_bucket{le=\"+Inf\"} 3\n",
            "obdgw_relay_forward_latency_seconds_count 3\n",
        ] {
            assert!(t.contains(want), "{want} in {t}");
        }
        assert!(
            t.contains("obdgw_relay_forwarded_messages_total 3\n"),
            "{t}"
        );
        assert!(t.contains("obdgw_relay_admission_drops_total{reason=\"per_source\"} 1\n"));
        assert!(t.contains("obdgw_relay_refusals_total{code=\"auth_failed\"} 1\n"));
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                t.contains(&format!("# TYPE {family} ")),
                "{name} has no TYPE"
            );
            assert!(
                line.rsplit(' ').next().unwrap().parse::<f64>().is_ok(),
                "{line}"
            );
        }
    }
}
