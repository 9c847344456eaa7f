//! What the daemon's components publish for `obdgw status`, `STATUS=` and metrics.
//!
//! Owns: [`Shared`], written by the components on changes (rarely: login, ticket events,
//! session state, port open/close; never per frame) and read by the control socket, the
//! systemd task and the metrics endpoint; the status line in words ([`status_line`]).
//!
//! Does not own: the components themselves. The lock is a std mutex held only to copy or
//! replace small values, never across an `.await`.

use super::health::{ComponentState, Health};
use super::report::*;
use crate::cloud::client::Client;
use crate::config::Config;
use crate::tunnel::client::SharedLinkView;
use crate::vehicle::can::{AnyCanPort, CanPort};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A CAN interface as the daemon holds it.
#[derive(Debug, Clone)]
pub struct PortSlot {
    pub interface: String,
    /// `opening`, `open`, `missing`.
    pub state: &'static str,
    pub detail: String,
    pub port: Option<Arc<AnyCanPort>>,
}

/// The live session, as the status shows it.
#[derive(Debug, Clone)]
pub struct SessionSlot {
    pub id: String,
    pub relay: String,
    /// Set by the driver for states outside the tunnel link (`vin-check`, `refused`,
    /// `backoff`); `None`: the link view's state.
    pub phase: Option<&'static str>,
    pub view: SharedLinkView,
    pub restarts: u64,
    pub opened_at: u64,
    pub last_error: Option<String>,
    /// Channels open now (from the gateway's counters).
    pub channels: Option<Arc<AtomicU64>>,
}

/// Everything the components publish.
#[derive(Debug)]
pub struct Shared {
    pub started: std::time::Instant,
    /// `cloud-driven`, `manual`, `none`.
    pub mode: &'static str,
    pub health: Health,
    pub config: Mutex<Arc<Config>>,
    pub cloud: Mutex<Option<CloudReport>>,
    /// The Customer API client of the running cloud follower (the session driver takes its
    /// tokens from here, so a reload that replaces the client does not cut a session).
    pub client: Mutex<Option<Client>>,
    pub ticket: Mutex<Option<TicketReport>>,
    pub session: Mutex<Option<SessionSlot>>,
    pub vin_check: Mutex<Option<VinCheckReport>>,
    pub ports: Mutex<BTreeMap<String, PortSlot>>,
    pub doip: Mutex<Option<DoipReport>>,
    pub router: crate::router::RouterHandle,
    /// The policy every session's gateway enforces (`[tunnel.policy]`): a reload changes it
    /// for open channels too; its refusal counters are the box's, across sessions.
    pub policy: Arc<crate::tunnel::policy::PolicyHandle>,
    /// Sessions opened, refused by the VIN check, and reloads, for metrics.
    pub sessions_opened: AtomicU64,
    pub vin_refusals: AtomicU64,
    pub reloads: AtomicU64,
    /// The bound metrics address.
    pub metrics: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn new(
        config: Arc<Config>,
        mode: &'static str,
        router: crate::router::RouterHandle,
    ) -> Shared {
        let policy = config
            .tunnel
            .as_ref()
            .map(|t| t.policy.clone())
            .unwrap_or_default();
        Shared {
            policy: crate::tunnel::policy::PolicyHandle::new(policy),
            started: std::time::Instant::now(),
            mode,
            health: Health::new(),
            config: Mutex::new(config),
            cloud: Mutex::new(None),
            client: Mutex::new(None),
            ticket: Mutex::new(None),
            session: Mutex::new(None),
            vin_check: Mutex::new(None),
            ports: Mutex::new(BTreeMap::new()),
            doip: Mutex::new(None),
            router,
            sessions_opened: AtomicU64::new(0),
            vin_refusals: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            metrics: Mutex::new(None),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        lock(&self.config).clone()
    }

    pub fn set<T>(&self, m: &Mutex<T>, v: T) {
        *lock(m) = v;
    }

    pub fn with<T, R>(&self, m: &Mutex<T>, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut lock(m))
    }

    pub fn get<T: Clone>(&self, m: &Mutex<T>) -> T {
        lock(m).clone()
    }

    /// The ports that are open now, by name.
    pub fn open_ports(&self) -> Vec<(String, Arc<AnyCanPort>)> {
        lock(&self.ports)
            .iter()
            .filter_map(|(n, s)| s.port.clone().map(|p| (n.clone(), p)))
            .collect()
    }

    /// The whole report, now.
    pub fn report(&self) -> StatusReport {
        let now = tokio::time::Instant::now();
        let session = lock(&self.session).as_ref().map(|s| {
            let v = lock(&s.view).clone();
            SessionReport {
                id: s.id.clone(),
                state: s
                    .phase
                    .unwrap_or(if v.state.is_empty() {
                        "connecting"
                    } else {
                        v.state
                    })
                    .to_string(),
                relay: s.relay.clone(),
                rtt_ms: v.rtt.map(|d| d.as_secs_f64() * 1000.0),
                records_sent: v.stats.records_sent,
                records_received: v.stats.records_received,
                bytes_sent: v.stats.bytes_sent,
                bytes_received: v.stats.bytes_received,
                replayed: v.stats.replayed,
                replay_bytes: v.in_flight_bytes as u64,
                reconnects: v.stats.reconnects,
                restarts: s.restarts,
                opened_at: s.opened_at,
                last_error: s.last_error.clone().or(v.last_error),
                channels: s
                    .channels
                    .as_ref()
                    .map(|c| c.load(Ordering::Relaxed))
                    .unwrap_or(0),
            }
        });
        let can = lock(&self.ports)
            .iter()
            .map(|(name, slot)| {
                let st = slot.port.as_ref().map(|p| p.stats()).unwrap_or_default();
                CanReport {
                    name: name.clone(),
                    interface: slot.interface.clone(),
                    state: slot.state.to_string(),
                    bus_state: st.state.name().to_string(),
                    rx_frames: st.rx_frames,
                    tx_frames: st.tx_frames,
                    error_frames: st.error_frames,
                    rx_dropped: st.rx_dropped,
                    overruns: st.overruns,
                    bus_off: st.bus_off,
                    tx_timeouts: st.tx_timeouts,
                    tx_enobufs_retries: st.tx_enobufs_retries,
                    busoff_restarts: st.busoff_restarts,
                    restart_limit_reached: st.restart_limit_reached,
                    detail: slot.detail.clone(),
                }
            })
            .collect();
        let snap = self.router.snapshot();
        let router = RouterReport {
            ports: snap.ports.len() as u64,
            routes: snap.routes.len() as u64,
            frames: snap.ports.iter().map(|p| p.rx_frames).sum(),
            shed: snap.ports.iter().map(|p| p.shed).sum(),
        };
        let mut r = StatusReport {
            schema: SCHEMA,
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            mode: self.mode.into(),
            health: self.health.overall(now),
            status_line: String::new(),
            cloud: self.get(&self.cloud),
            ticket: self.get(&self.ticket),
            session,
            vin_check: self.get(&self.vin_check),
            can,
            doip: self.get(&self.doip),
            router,
            components: self.health.views(now),
            metrics: self.get(&self.metrics),
            policy: Some({
                let p = self.policy.get();
                let c = &p.config;
                super::report::PolicyReport {
                    raw_tx: c.raw_tx,
                    raw_tx_ids: c.raw_tx_ids.clone(),
                    raw_tx_rate_per_id: c.raw_tx_rate_per_id,
                    raw_tx_rate_total: c.raw_tx_rate_total,
                    diag_ids: c.diag_ids.clone(),
                    max_channels: c.max_channels,
                    channel_queue: c.channel_queue,
                    refusals: self
                        .policy
                        .refusals()
                        .into_iter()
                        .map(|(r, n)| (r.to_string(), n))
                        .collect(),
                }
            }),
        };
        r.status_line = status_line(&r);
        r
    }
}

/// `STATUS=` in words: what a person needs to know, most important first.
pub fn status_line(r: &StatusReport) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(c) = &r.cloud {
        let now = crate::cloud::token::now_unix();
        parts.push(if c.logged_in {
            if c.status_socket == "up" {
                "Connected".into()
            } else {
                "Connected (status socket down; polling over REST)".into()
            }
        } else if let Some(e) = &c.login_error {
            match c.login_retry_at {
                Some(t) => format!(
                    "Logging in failed: {e}; retrying in {} s",
                    t.saturating_sub(now)
                ),
                None => format!("Logging in failed: {e}"),
            }
        } else {
            "Logging in".into()
        });
    }
    if r.mode == "cloud-driven" {
        parts.push(match &r.ticket {
            Some(t) => format!("ticket {} {}", t.id, t.state.replace('_', " ")),
            None => "no active ticket".into(),
        });
    }
    if let Some(s) = &r.session {
        let mut p = match s.state.as_str() {
            "up" => match s.rtt_ms {
                Some(rtt) => format!("session up (rtt {rtt:.0} ms)"),
                None => "session up".into(),
            },
            "refused" => "session refused".into(),
            other => format!("session {other}"),
        };
        if s.state == "refused"
            && let Some(v) = &r.vin_check
        {
            p.push_str(&format!(": {}", v.detail));
        }
        parts.push(p);
    }
    for c in &r.components {
        if c.stalled {
            parts.push(format!("{} not responding", c.name));
        } else if c.state == ComponentState::Degraded && !c.name.starts_with("cloud") {
            parts.push(format!("{}: {}", c.name, c.detail));
        }
    }
    if parts.is_empty() {
        parts.push(match r.mode.as_str() {
            "none" => "Running; no [tunnel] section, so no remote sessions".into(),
            _ => "Running".into(),
        });
    }
    parts.join("; ")
}
