//! Prometheus metrics (`[metrics] listen`, off unless configured; loopback by default).
//!
//! Owns: the `/metrics` endpoint (OpenMetrics text from `prometheus-client`) and the mapping
//! from the daemon's status report to metric families: `obdgw_` prefix, base units,
//! `_total` counters, `obdgw_build_info`. Figures are read at scrape time from the same
//! report `obdgw status` shows, so the two never disagree.
//!
//! Does not own: counting (the components do) or the report (`super::state`).

use super::state::Shared;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Reads the shared state on each scrape.
struct DaemonCollector {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DaemonCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DaemonCollector")
    }
}

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: u64,
) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    let m = enc.encode_descriptor(name, help, unit, c.metric_type())?;
    c.encode(m)
}

fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: f64,
) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    let m = enc.encode_descriptor(name, help, unit, g.metric_type())?;
    g.encode(m)
}

impl Collector for DaemonCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let r = self.shared.report();
        {
            let g = ConstGauge::new(1i64);
            let mut m = enc.encode_descriptor(
                "obdgw_build_info",
                "Version of the running obdgw (value 1)",
                None,
                g.metric_type(),
            )?;
            let labels = [("version", r.version.as_str()), ("mode", r.mode.as_str())];
            g.encode(m.encode_family(&labels)?)?;
        }
        gauge(
            &mut enc,
            "obdgw_uptime",
            "Time since the daemon started",
            Some(&Unit::Seconds),
            r.uptime_s as f64,
        )?;
        gauge(
            &mut enc,
            "obdgw_healthy",
            "1 when every component is healthy, 0 when degraded or starting",
            None,
            (r.exit_code() == 0) as u8 as f64,
        )?;
        let cloud = r.cloud.as_ref();
        gauge(
            &mut enc,
            "obdgw_cloud_logged_in",
            "1 while logged in to the Customer API",
            None,
            cloud.is_some_and(|c| c.logged_in) as u8 as f64,
        )?;
        gauge(
            &mut enc,
            "obdgw_cloud_status_socket_up",
            "1 while the status websocket is connected",
            None,
            cloud.is_some_and(|c| c.status_socket == "up") as u8 as f64,
        )?;
        gauge(
            &mut enc,
            "obdgw_ticket_active",
            "1 while the connector has an active ticket",
            None,
            r.ticket.is_some() as u8 as f64,
        )?;
        let s = r.session.as_ref();
        gauge(
            &mut enc,
            "obdgw_session_up",
            "1 while the tunnel session is up",
            None,
            s.is_some_and(|s| s.state == "up") as u8 as f64,
        )?;
        gauge(
            &mut enc,
            "obdgw_session_rtt",
            "Round-trip time of the tunnel session (0 without one)",
            Some(&Unit::Seconds),
            s.and_then(|s| s.rtt_ms).unwrap_or(0.0) / 1000.0,
        )?;
        let sum = |f: fn(&super::report::SessionReport) -> u64| s.map(f).unwrap_or(0);
        counter(
            &mut enc,
            "obdgw_session_sent_records",
            "Records sent in the current session",
            None,
            sum(|s| s.records_sent),
        )?;
        counter(
            &mut enc,
            "obdgw_session_received_records",
            "Records received in the current session",
            None,
            sum(|s| s.records_received),
        )?;
        counter(
            &mut enc,
            "obdgw_session_sent",
            "Bytes sent in the current session",
            Some(&Unit::Bytes),
            sum(|s| s.bytes_sent),
        )?;
        counter(
            &mut enc,
            "obdgw_session_received",
            "Bytes received in the current session",
            Some(&Unit::Bytes),
            sum(|s| s.bytes_received),
        )?;
        counter(
            &mut enc,
            "obdgw_session_replayed_records",
            "Records sent again after a resume in the current session",
            None,
            sum(|s| s.replayed),
        )?;
        counter(
            &mut enc,
            "obdgw_sessions_opened",
            "Tunnel sessions opened since start",
            None,
            self.shared.sessions_opened.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "obdgw_vin_check_refusals",
            "Sessions refused because the car's VIN did not match the ticket's",
            None,
            self.shared.vin_refusals.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "obdgw_reloads",
            "Configuration reloads applied",
            None,
            self.shared.reloads.load(Ordering::Relaxed),
        )?;
        for (name, help, f) in [
            (
                "obdgw_can_rx_frames",
                "Frames received on a CAN interface",
                (|c: &super::report::CanReport| c.rx_frames) as fn(&_) -> u64,
            ),
            (
                "obdgw_can_tx_frames",
                "Frames sent on a CAN interface",
                |c| c.tx_frames,
            ),
            (
                "obdgw_can_error_frames",
                "Error frames on a CAN interface",
                |c| c.error_frames,
            ),
            (
                "obdgw_can_dropped_frames",
                "Frames dropped on receive (queue full)",
                |c| c.rx_dropped,
            ),
            (
                "obdgw_can_tx_timeouts",
                "Transmits that missed their deadline (tx_timeout_ms); the frame was not sent",
                |c| c.tx_timeouts,
            ),
            (
                "obdgw_can_tx_queue_full_retries",
                "Transmit retries because the interface's queue was full (ENOBUFS)",
                |c| c.tx_enobufs_retries,
            ),
            (
                "obdgw_can_busoff_restarts",
                "Bus-off restarts obdgw made through netlink",
                |c| c.busoff_restarts,
            ),
        ] {
            let c0 = ConstCounter::new(0u64);
            let mut m = enc.encode_descriptor(name, help, None, c0.metric_type())?;
            for c in &r.can {
                let labels = [("interface", c.name.as_str())];
                ConstCounter::new(f(c)).encode(m.encode_family(&labels)?)?;
            }
        }
        let g0 = ConstGauge::new(0i64);
        let mut m = enc.encode_descriptor(
            "obdgw_can_up",
            "1 while a CAN interface is open and not bus-off",
            None,
            g0.metric_type(),
        )?;
        for c in &r.can {
            let labels = [("interface", c.name.as_str())];
            let up = (c.state == "open" && c.bus_state != "bus-off") as i64;
            ConstGauge::new(up).encode(m.encode_family(&labels)?)?;
        }
        let c0 = ConstCounter::new(0u64);
        let mut m = enc.encode_descriptor(
            "obdgw_policy_refusals",
            "Operator requests refused by the gateway's policy, by rule ([tunnel.policy])",
            None,
            c0.metric_type(),
        )?;
        for (rule, n) in self.shared.policy.refusals() {
            ConstCounter::new(n).encode(m.encode_family(&[("rule", rule)])?)?;
        }
        counter(
            &mut enc,
            "obdgw_router_frames",
            "Frames taken in by the router",
            None,
            r.router.frames,
        )?;
        counter(
            &mut enc,
            "obdgw_router_shed_frames",
            "Frames the router shed (shed-oldest routes)",
            None,
            r.router.shed,
        )?;
        Ok(())
    }
}

/// The text a scrape returns.
pub fn render(shared: &Arc<Shared>) -> String {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(DaemonCollector {
        shared: shared.clone(),
    }));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
        tracing::warn!("encoding metrics: {e}");
    }
    out
}

/// Serve `/metrics` (and `/healthz`) on `listener` until `stop`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    use axum::routing::get;
    let sh = shared.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let sh = sh.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        render(&sh),
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let sh = shared.clone();
                async move {
                    let r = sh.report();
                    let code = if r.exit_code() == 0 {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    };
                    (code, r.status_line)
                }
            }),
        );
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
}
