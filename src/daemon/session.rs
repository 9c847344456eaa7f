//! The session driver: opens and closes the tunnel session as the cloud's ticket events say
//! (cloud-driven mode), or keeps the one fixed session of manual mode running.
//!
//! Owns: the decision core ([`Decider`]: events in, the wanted session out; sans-IO),
//! the ticket's state for status, the VIN check before a session opens (`tunnel.vin_check`),
//! running one session at a time (a new connection UUID replaces the old one; a session that
//! ends on its own while its ticket lives is started again after a jittered backoff), and
//! closing it at once when the connection ends, the ticket finishes or disappears.
//! Status-socket flaps change nothing here: only ticket and connection events do.
//!
//! Does not own: the cloud link (`super::cloud`), the tunnel (`crate::tunnel`).

use super::health::{BEAT_EVERY, ComponentState, Heartbeat};
use super::report::{DoipReport, TicketReport, VinCheckReport};
use super::state::{SessionSlot, Shared};
use crate::cloud::status::StatusEvent;
use crate::cloud::token::now_unix;
use crate::config::Secret;
use crate::tunnel::client::{ClientConfig, LinkView, TokenSource};
use crate::tunnel::gateway::{self, TunnelConfig, VinCheck};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The session the box should have now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub ticket_id: Option<i64>,
    /// The session id: the ticket's connection UUID.
    pub id: String,
    pub ticket_vin: Option<String>,
    /// Manual mode's fixed token; `None`: the connector's current login token.
    pub token: Option<Secret>,
}

/// Sans-IO: the active ticket and the session it wants, from the status events.
#[derive(Debug, Default)]
pub struct Decider {
    pub ticket: Option<TicketReport>,
    wanted: Option<Wanted>,
}

impl Decider {
    /// Apply one event; returns whether the wanted session changed.
    pub fn apply(&mut self, ev: &StatusEvent) -> bool {
        let before = self.wanted.clone();
        match ev {
            StatusEvent::TicketStateChanged { ticket_id, to, .. } => {
                if to.is_final() {
                    self.ticket = None;
                    self.wanted = None;
                } else {
                    let t = self.ticket.get_or_insert_with(TicketReport::default);
                    if t.id != *ticket_id {
                        *t = TicketReport {
                            id: *ticket_id,
                            ..TicketReport::default()
                        };
                        if self
                            .wanted
                            .as_ref()
                            .is_some_and(|w| w.ticket_id != Some(*ticket_id))
                        {
                            self.wanted = None;
                        }
                    }
                    t.state = to.name();
                }
            }
            StatusEvent::TicketGone { ticket_id } => {
                if self.ticket.as_ref().is_none_or(|t| t.id == *ticket_id) {
                    self.ticket = None;
                    self.wanted = None;
                }
            }
            StatusEvent::ConnectionStarted {
                ticket_id,
                connection_uuid,
                vin,
            } => {
                let t = self.ticket.get_or_insert_with(|| TicketReport {
                    id: *ticket_id,
                    state: "unknown".into(),
                    ..TicketReport::default()
                });
                t.connection = Some(connection_uuid.clone());
                if vin.is_some() {
                    t.vin = vin.clone();
                }
                self.wanted = Some(Wanted {
                    ticket_id: Some(*ticket_id),
                    id: connection_uuid.clone(),
                    ticket_vin: t.vin.clone(),
                    token: None,
                });
            }
            StatusEvent::ConnectionEnded {
                connection_uuid, ..
            } => {
                if let Some(t) = &mut self.ticket
                    && t.connection.as_deref() == Some(connection_uuid)
                {
                    t.connection = None;
                }
                if self
                    .wanted
                    .as_ref()
                    .is_some_and(|w| &w.id == connection_uuid)
                {
                    self.wanted = None;
                }
            }
            StatusEvent::LinkUp
            | StatusEvent::LinkDown { .. }
            | StatusEvent::ConnectorChanged { .. }
            | StatusEvent::ConnectionUpdated(_) => {}
        }
        // The same session with a VIN learnt later is not a change.
        match (&before, &self.wanted) {
            (Some(a), Some(b)) => a.id != b.id,
            (a, b) => a.is_some() != b.is_some(),
        }
    }

    pub fn wanted(&self) -> Option<&Wanted> {
        self.wanted.as_ref()
    }
}

/// A running session task.
struct Running {
    id: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// How long a closing session may take before its task is abandoned (it is cancelled; this
/// only bounds the wait).
const CLOSE_WITHIN: Duration = Duration::from_millis(1500);

/// Run the driver until `stop`. In manual mode (`manual` is the fixed session) `events` is
/// never fed.
pub async fn run(
    shared: Arc<Shared>,
    manual: Option<Wanted>,
    mut events: mpsc::Receiver<StatusEvent>,
    hb: Heartbeat,
    stop: CancellationToken,
) {
    let mut decider = Decider::default();
    let mut running: Option<Running> = None;
    let mut tick = tokio::time::interval(BEAT_EVERY);
    let mut want = manual.clone();
    let mut changed = want.is_some();
    hb.set(ComponentState::Ok, "waiting for a ticket");
    loop {
        if changed {
            changed = false;
            if let Some(r) = running.take() {
                close(&shared, r).await;
            }
            if let Some(w) = want.clone() {
                tracing::info!(session = %w.id, ticket = ?w.ticket_id, "opening the tunnel session");
                let s = stop.child_token();
                let task = tokio::spawn(session_task(shared.clone(), w.clone(), s.clone()));
                running = Some(Running {
                    id: w.id,
                    stop: s,
                    task,
                });
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                let detail = match &running {
                    Some(r) => format!("session {}", r.id),
                    None if manual.is_some() => "manual session".into(),
                    None => "no session".into(),
                };
                hb.set(ComponentState::Ok, detail);
            }
            ev = events.recv(), if manual.is_none() => {
                // The daemon keeps a sender for followers started by a reload: the queue
                // closes only at shutdown.
                let Some(ev) = ev else { break };
                if decider.apply(&ev) {
                    want = decider.wanted().cloned();
                    changed = true;
                } else if let (Some(w), Some(d)) = (&mut want, decider.wanted()) {
                    w.ticket_vin = d.ticket_vin.clone();
                }
                shared.set(&shared.ticket, decider.ticket.clone());
            }
        }
    }
    if let Some(r) = running.take() {
        close(&shared, r).await;
    }
}

async fn close(shared: &Shared, r: Running) {
    tracing::info!(session = %r.id, "closing the tunnel session");
    r.stop.cancel();
    let abort = r.task.abort_handle();
    if tokio::time::timeout(CLOSE_WITHIN, r.task).await.is_err() {
        tracing::warn!(session = %r.id, "session did not close within {CLOSE_WITHIN:?}; abandoned");
        abort.abort();
    }
    shared.set(&shared.session, None);
}

/// One wanted session: VIN check, run, restart with backoff when it ends on its own.
async fn session_task(shared: Arc<Shared>, w: Wanted, stop: CancellationToken) {
    let view = Arc::new(Mutex::new(LinkView::default()));
    let channels = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let opened_at = now_unix();
    let slot = |phase: Option<&'static str>, restarts: u64, err: Option<String>| SessionSlot {
        id: w.id.clone(),
        relay: shared
            .config()
            .tunnel
            .as_ref()
            .map(|t| t.relay_url.clone())
            .unwrap_or_default(),
        phase,
        view: view.clone(),
        restarts,
        opened_at,
        last_error: err,
        channels: Some(channels.clone()),
    };
    let mut restarts = 0u64;
    let mut backoff = Duration::from_millis(500);
    loop {
        let cfg = shared.config();
        let Some(tunnel) = cfg.tunnel.clone() else {
            return;
        };
        // The right car first.
        if w.token.is_none() && tunnel.vin_check != VinCheck::Off {
            shared.set(
                &shared.session,
                Some(slot(Some("vin-check"), restarts, None)),
            );
            let verdict = vin_check(&shared, &tunnel, &w).await;
            if let Err(why) = verdict {
                shared
                    .vin_refusals
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(session = %w.id, "session refused: {why}; checking again in 30 s");
                shared.set(
                    &shared.session,
                    Some(slot(Some("refused"), restarts, Some(why))),
                );
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(30)) => continue,
                }
            }
        }
        shared.set(&shared.session, Some(slot(None, restarts, None)));
        shared
            .sessions_opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *view.lock().unwrap_or_else(|p| p.into_inner()) = LinkView {
            state: "connecting",
            ..LinkView::default()
        };
        let started = tokio::time::Instant::now();
        let r = run_once(
            &shared,
            &cfg,
            &tunnel,
            &w,
            view.clone(),
            channels.clone(),
            stop.clone(),
        )
        .await;
        if stop.is_cancelled() {
            return;
        }
        // Ended on its own while the ticket lives: start again.
        let why = match r {
            Ok(()) => "the session ended (peer said bye)".to_string(),
            Err(e) => e,
        };
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_millis(500);
        }
        let wait = super::ports::jitter(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(60));
        restarts += 1;
        tracing::warn!(session = %w.id, "{why}; starting it again in {} ms", wait.as_millis());
        shared.set(
            &shared.session,
            Some(slot(Some("backoff"), restarts, Some(why))),
        );
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn run_once(
    shared: &Arc<Shared>,
    cfg: &crate::config::Config,
    tunnel: &TunnelConfig,
    w: &Wanted,
    view: Arc<Mutex<LinkView>>,
    channels: Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
) -> Result<(), String> {
    let mut gw = gateway::build(tunnel, &cfg.doip, usable_ports(shared, tunnel))
        .map_err(|e| e.to_string())?;
    gw.policy = shared.policy.clone();
    gw.counters = Arc::new(gateway::GatewayCounters {
        channels,
        ..Default::default()
    });
    let mut cc = ClientConfig::new(tunnel.relay_url.clone());
    if tunnel.relay_url.starts_with("wss://") {
        cc.tls = Some(crate::tls::client_config()?);
    }
    cc.view = Some(view);
    let token = match &w.token {
        Some(t) => t.clone(),
        None => {
            let sh = shared.clone();
            let source: TokenSource = Arc::new(move || {
                let sh = sh.clone();
                Box::pin(async move {
                    let client = sh
                        .get(&sh.client)
                        .ok_or("not logged in to the Customer API")?;
                    client.bearer().await.map_err(|e| e.to_string())
                })
            });
            cc.token_source = Some(source);
            // The source is asked before the first connect too; this is only a placeholder.
            Secret::new("")
        }
    };
    gateway::run(cc, &w.id, &token, gw, stop)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The open ports the tunnel may use. A `[[can]]` interface that is not open yet is left
/// out: channels to it are refused until a later session.
fn usable_ports(
    shared: &Shared,
    tunnel: &TunnelConfig,
) -> Vec<(String, Arc<crate::vehicle::can::AnyCanPort>)> {
    shared
        .open_ports()
        .into_iter()
        .filter(|(n, _)| tunnel.can_interfaces.contains(n))
        .collect()
}

/// Normalise a VIN for comparison.
fn norm(v: &str) -> String {
    v.trim().to_ascii_uppercase()
}

/// Read the car's VIN and compare it with the ticket's; `Err` (with the reason in words)
/// refuses the session under `vin_check = "refuse"`. Records the outcome for status.
async fn vin_check(shared: &Shared, tunnel: &TunnelConfig, w: &Wanted) -> Result<(), String> {
    let policy = tunnel.vin_check;
    let car = read_car_vin(shared, tunnel).await;
    let (result, detail, car_vin) = match (&w.ticket_vin, &car) {
        (None, Ok((v, _))) => (
            "no-ticket-vin",
            "the ticket carries no VIN, so the car cannot be confirmed".to_string(),
            Some(v.clone()),
        ),
        (None, Err(e)) => (
            "no-ticket-vin",
            format!("the ticket carries no VIN, and the car's VIN could not be read: {e}"),
            None,
        ),
        (Some(_), Err(e)) => (
            "unreadable",
            format!("cannot read the car's VIN: {e}"),
            None,
        ),
        (Some(t), Ok((v, how))) if norm(t) == norm(v) => (
            "match",
            format!("the car's VIN ({how}) is the ticket's"),
            Some(v.clone()),
        ),
        (Some(t), Ok((v, how))) => (
            "mismatch",
            format!(
                "VIN mismatch: the ticket is for {t}, but the car says {v} ({how}); wrong car plugged in?"
            ),
            Some(v.clone()),
        ),
    };
    shared.set(
        &shared.vin_check,
        Some(VinCheckReport {
            policy: policy.name().into(),
            ticket_vin: w.ticket_vin.clone(),
            car_vin,
            result: result.into(),
            detail: detail.clone(),
            at: now_unix(),
        }),
    );
    match (result, policy) {
        ("match", _) => {
            tracing::info!(session = %w.id, "{detail}");
            Ok(())
        }
        (_, VinCheck::Refuse) => Err(detail),
        _ => {
            tracing::warn!(session = %w.id, "{detail}; opening the session anyway (tunnel.vin_check = \"warn\")");
            Ok(())
        }
    }
}

/// The car's VIN: over DoIP when `tunnel.doip_vehicle` is set (announcement, then UDS
/// 0xF190), else over the first open CAN interface of the tunnel (OBD-II 09 02, then UDS).
async fn read_car_vin(shared: &Shared, tunnel: &TunnelConfig) -> Result<(String, String), String> {
    const TIMEOUT: Duration = Duration::from_secs(2);
    if let Some(addr) = tunnel.doip_vehicle {
        let args = crate::vehicle::vin::VinArgs {
            doip: Some(addr.to_string()),
            can: None,
            timeout: TIMEOUT.as_secs_f64(),
            uds: false,
            target: None,
        };
        let r = crate::vehicle::vin::read_vin(&args).await;
        shared.set(
            &shared.doip,
            Some(DoipReport {
                address: addr.to_string(),
                reachable: Some(r.is_ok()),
                vin: r.as_ref().ok().map(|(v, _)| v.to_string()),
            }),
        );
        return r
            .map(|(v, how)| (v.to_string(), how))
            .map_err(|e| e.to_string());
    }
    let Some((name, port)) = usable_ports(shared, tunnel).into_iter().next() else {
        return Err(
            "no way to reach the car: set tunnel.doip_vehicle, or list an open [[can]] interface in tunnel.can_interfaces".into(),
        );
    };
    crate::vehicle::vin::read_vin_on_port(port, TIMEOUT)
        .await
        .map(|(v, how)| (v.to_string(), format!("{how}, interface `{name}`")))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::status::TicketState;

    fn started(t: i64, c: &str, vin: Option<&str>) -> StatusEvent {
        StatusEvent::ConnectionStarted {
            ticket_id: t,
            connection_uuid: c.into(),
            vin: vin.map(str::to_string),
        }
    }

    #[test]
    fn a_ticket_life_opens_and_closes_one_session() {
        let mut d = Decider::default();
        assert!(!d.apply(&StatusEvent::TicketStateChanged {
            ticket_id: 7,
            from: None,
            to: TicketState::Pending
        }));
        assert!(d.wanted().is_none());
        assert!(d.apply(&started(7, "c-1", Some("VIN1"))));
        assert_eq!(d.wanted().unwrap().id, "c-1");
        assert_eq!(d.wanted().unwrap().ticket_vin.as_deref(), Some("VIN1"));
        // Link flaps change nothing.
        assert!(!d.apply(&StatusEvent::LinkDown { reason: "x".into() }));
        assert!(!d.apply(&StatusEvent::LinkUp));
        assert_eq!(d.wanted().unwrap().id, "c-1");
        // A new connection replaces the old one.
        assert!(d.apply(&StatusEvent::ConnectionEnded {
            ticket_id: 7,
            connection_uuid: "c-1".into()
        }));
        assert!(d.wanted().is_none());
        assert!(d.apply(&started(7, "c-2", None)));
        assert_eq!(d.wanted().unwrap().id, "c-2");
        assert_eq!(d.wanted().unwrap().ticket_vin.as_deref(), Some("VIN1"));
        // The ticket closes: no session, no ticket.
        assert!(d.apply(&StatusEvent::TicketStateChanged {
            ticket_id: 7,
            from: Some(TicketState::InProgress),
            to: TicketState::Closed
        }));
        assert!(d.wanted().is_none() && d.ticket.is_none());
    }

    #[test]
    fn a_vanished_ticket_closes_its_session_and_a_new_ticket_replaces_the_old() {
        let mut d = Decider::default();
        d.apply(&started(7, "c-1", None));
        assert!(d.apply(&StatusEvent::TicketGone { ticket_id: 7 }));
        assert!(d.wanted().is_none());
        d.apply(&started(8, "c-8", None));
        assert!(d.apply(&StatusEvent::TicketStateChanged {
            ticket_id: 9,
            from: None,
            to: TicketState::Pending
        }));
        assert!(d.wanted().is_none());
        assert_eq!(d.ticket.as_ref().unwrap().id, 9);
        // A cancelled ticket, too.
        d.apply(&started(9, "c-9", None));
        assert!(d.apply(&StatusEvent::TicketStateChanged {
            ticket_id: 9,
            from: None,
            to: TicketState::Cancelled
        }));
        assert!(d.wanted().is_none());
    }
}
