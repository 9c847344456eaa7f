//! The daemon's side of the systemd service protocol: `READY=1`, `STATUS=`, `STOPPING=1`,
//! `RELOADING=1` and the watchdog.
//!
//! Owns: sending notifications (only when `NOTIFY_SOCKET` is set), and [`Watchdog`], the
//! sans-IO decision to feed the watchdog: only while no supervised component is stalled.
//!
//! Does not own: the components' health (`super::health`).

use super::health::Health;
use std::time::Duration;
use tokio::time::Instant;

/// Send `state` to systemd when running under it.
pub fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(state)
    {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// Half the service's `WatchdogSec=`, when it has one.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// Decides, at each watchdog tick, whether to ping; logs each stall once.
#[derive(Debug)]
pub struct Watchdog {
    health: Health,
    /// The components found stalled at the last tick.
    stalled: Vec<String>,
}

impl Watchdog {
    pub fn new(health: Health) -> Self {
        Watchdog {
            health,
            stalled: Vec::new(),
        }
    }

    /// Whether to send `WATCHDOG=1` now.
    pub fn tick(&mut self, now: Instant) -> bool {
        let stalled = self.health.stalled(now);
        if stalled != self.stalled {
            if stalled.is_empty() {
                tracing::info!("every component reports again; feeding the watchdog");
            } else {
                tracing::error!(
                    components = ?stalled,
                    "no heartbeat from {}; withholding the watchdog ping (systemd restarts the service if this lasts)",
                    stalled.join(", ")
                );
            }
            self.stalled = stalled;
        }
        self.stalled.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::health::BEAT_EVERY;

    #[tokio::test(start_paused = true)]
    async fn a_stuck_component_withholds_the_watchdog_and_a_recovered_one_restores_it() {
        let health = Health::new();
        let allowance = BEAT_EVERY * 3;
        let cloud = health.register("cloud", allowance);
        let can = health.register("can:obd", allowance);
        let mut wd = Watchdog::new(health.clone());
        let mut pings = 0;
        // 10 s with both beating every second: every tick pings.
        for _ in 0..10 {
            tokio::time::advance(BEAT_EVERY).await;
            cloud.beat();
            can.beat();
            pings += wd.tick(Instant::now()) as u32;
        }
        assert_eq!(pings, 10);
        // The cloud follower gets stuck: after its allowance, no more pings.
        let mut withheld = 0;
        for i in 0..10 {
            tokio::time::advance(BEAT_EVERY).await;
            can.beat();
            let ping = wd.tick(Instant::now());
            if i >= 3 {
                assert!(!ping, "pinged at {i} s with a stalled component");
                withheld += 1;
            }
        }
        assert_eq!(withheld, 7);
        assert_eq!(wd.stalled, vec!["cloud".to_string()]);
        // It recovers.
        cloud.beat();
        assert!(wd.tick(Instant::now()));
    }
}
