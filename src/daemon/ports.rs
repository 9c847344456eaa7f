//! The daemon's CAN interfaces: one supervised component per `[[can]]` entry.
//!
//! Owns: opening each interface, retrying (1 s doubling to 30 s, jittered) while it is not
//! there yet (a USB adapter still enumerating) and reporting it degraded meanwhile; the
//! port's slot in [`Shared::ports`] (sessions take open ports from there); following its bus
//! state (bus-off shows as degraded).
//!
//! Does not own: reading frames (the session's channels do) or bus-off recovery (the
//! SocketCAN backend and the kernel's `restart-ms`); it only shows when the backend has
//! stopped restarting (`restart_limit_reached`).

use super::health::{ComponentState, Heartbeat};
use super::state::{PortSlot, Shared};
use crate::vehicle::can::{BusState, CanInterfaceConfig, CanPort};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Run the component of one interface until `stop`. `first` is answered after the first
/// attempt to open it, whatever its outcome (the daemon's READY waits for it).
pub async fn run(
    shared: Arc<Shared>,
    cfg: CanInterfaceConfig,
    hb: Heartbeat,
    first: oneshot::Sender<()>,
    stop: CancellationToken,
) {
    let mut first = Some(first);
    let mut delay = Duration::from_secs(1);
    let name = cfg.name.clone();
    let set_slot = |state: &'static str, detail: String, port| {
        shared.with(&shared.ports, |m| {
            m.insert(
                name.clone(),
                PortSlot {
                    interface: cfg.interface.clone(),
                    state,
                    detail,
                    port,
                },
            )
        });
    };
    set_slot("opening", String::new(), None);
    loop {
        let opened = tokio::select! {
            _ = stop.cancelled() => break,
            r = crate::vehicle::can::open_port_with(&cfg) => r,
        };
        match opened {
            Ok(port) => {
                let port = Arc::new(port);
                tracing::info!(can = %name, interface = %cfg.interface, fd = port.fd_capable(), "CAN interface open");
                set_slot("open", String::new(), Some(port.clone()));
                hb.set(ComponentState::Ok, format!("{} open", cfg.interface));
                if let Some(f) = first.take() {
                    let _ = f.send(());
                }
                // Follow the bus state while the port is open.
                let mut tick = tokio::time::interval(super::health::BEAT_EVERY);
                let mut last = BusState::ErrorActive;
                loop {
                    tokio::select! {
                        // The slot stays: a reload that restarts this interface fills it
                        // again, one that removes it clears it.
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let stats = port.stats();
                    let st = stats.state;
                    if st != last {
                        tracing::warn!(can = %name, from = last.name(), to = st.name(), "CAN bus state changed");
                        last = st;
                    }
                    if st == BusState::BusOff && stats.restart_limit_reached {
                        hb.set(
                            ComponentState::Degraded,
                            format!(
                                "{0} is bus-off; restart limit reached (busoff_restarts_per_hour): check the bitrate, then restart it with `ip link set {0} type can restart`",
                                cfg.interface
                            ),
                        );
                    } else if st == BusState::BusOff {
                        hb.set(
                            ComponentState::Degraded,
                            format!("{} is bus-off", cfg.interface),
                        );
                    } else {
                        hb.set(
                            ComponentState::Ok,
                            format!("{} open, {}", cfg.interface, st.name()),
                        );
                    }
                }
            }
            Err(e) => {
                let wait = jitter(delay);
                let detail = format!(
                    "cannot open {}: {e}; retrying in {} s",
                    cfg.interface,
                    wait.as_secs().max(1)
                );
                if first.is_some() || delay >= Duration::from_secs(30) {
                    tracing::warn!(can = %name, "{detail}");
                } else {
                    tracing::debug!(can = %name, "{detail}");
                }
                set_slot("missing", detail.clone(), None);
                hb.set(ComponentState::Degraded, detail);
                if let Some(f) = first.take() {
                    let _ = f.send(());
                }
                let until = tokio::time::Instant::now() + wait;
                let mut tick = tokio::time::interval(super::health::BEAT_EVERY);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep_until(until) => break,
                        _ = tick.tick() => hb.beat(),
                    }
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// ±20 %.
pub fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.8 + 0.4 * fastrand::f64())
}
