//! Supervision: named components, their heartbeats and health, and the decision whether the
//! systemd watchdog may be fed.
//!
//! Owns: [`Health`] (the registry), [`Heartbeat`] (a component's handle: `beat`, `set`),
//! [`ComponentState`] and the verdicts ([`Health::stalled`], [`Health::overall`]).
//! Every component of the daemon (CAN ports, router, cloud follower, session driver,
//! control socket) registers once and beats at least every [`BEAT_EVERY`]; the watchdog is
//! fed only while none of them has been silent for longer than its allowance.
//!
//! Does not own: talking to systemd (`super::systemd`) or what the components do. Time is
//! tokio's clock, so tests drive it with paused time.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How often a healthy component beats.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);

/// What a component says of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComponentState {
    /// Starting: not yet serving.
    Starting,
    /// Serving.
    Ok,
    /// Serving less than configured (an interface missing, the cloud unreachable);
    /// retried, healing on its own.
    Degraded,
}

#[derive(Debug)]
struct Entry {
    state: ComponentState,
    detail: String,
    last_beat: Instant,
    /// Longest silence tolerated before the component counts as stuck.
    allowance: Duration,
}

/// The registry of components. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<BTreeMap<String, Entry>>>,
}

/// One component's view of [`Health`]: beat, and say how it is. Dropping it removes the
/// component (a task that ended is no longer watched).
#[derive(Debug)]
pub struct Heartbeat {
    name: String,
    health: Health,
}

/// A component as `obdgw status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentView {
    pub name: String,
    pub state: ComponentState,
    pub detail: String,
    /// Milliseconds since its last heartbeat.
    pub last_beat_ms: u64,
    /// Whether it has been silent past its allowance.
    pub stalled: bool,
}

impl Health {
    pub fn new() -> Self {
        Health::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register `name`, allowed to stay silent for `allowance` (a few [`BEAT_EVERY`]s;
    /// longer for components that block on slow I/O between beats).
    pub fn register(&self, name: impl Into<String>, allowance: Duration) -> Heartbeat {
        let name = name.into();
        self.lock().insert(
            name.clone(),
            Entry {
                state: ComponentState::Starting,
                detail: String::new(),
                last_beat: Instant::now(),
                allowance,
            },
        );
        Heartbeat {
            name,
            health: self.clone(),
        }
    }

    /// Components silent past their allowance, at `now`.
    pub fn stalled(&self, now: Instant) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last_beat) > e.allowance)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The worst state among the components (a stalled one counts as degraded).
    pub fn overall(&self, now: Instant) -> ComponentState {
        let g = self.lock();
        let mut worst = ComponentState::Ok;
        for e in g.values() {
            let stalled = now.saturating_duration_since(e.last_beat) > e.allowance;
            match (e.state, stalled) {
                (_, true) | (ComponentState::Degraded, _) => return ComponentState::Degraded,
                (ComponentState::Starting, _) => worst = ComponentState::Starting,
                _ => {}
            }
        }
        worst
    }

    /// Every component, for status.
    pub fn views(&self, now: Instant) -> Vec<ComponentView> {
        self.lock()
            .iter()
            .map(|(n, e)| {
                let silent = now.saturating_duration_since(e.last_beat);
                ComponentView {
                    name: n.clone(),
                    state: e.state,
                    detail: e.detail.clone(),
                    last_beat_ms: silent.as_millis() as u64,
                    stalled: silent > e.allowance,
                }
            })
            .collect()
    }
}

impl Heartbeat {
    /// "Still alive."
    pub fn beat(&self) {
        if let Some(e) = self.health.lock().get_mut(&self.name) {
            e.last_beat = Instant::now();
        }
    }

    /// Beat, and say how it is; logs a change of state.
    pub fn set(&self, state: ComponentState, detail: impl Into<String>) {
        let detail = detail.into();
        let mut g = self.health.lock();
        if let Some(e) = g.get_mut(&self.name) {
            e.last_beat = Instant::now();
            if e.state != state {
                tracing::debug!(component = %self.name, from = ?e.state, to = ?state, %detail, "component state");
            }
            e.state = state;
            e.detail = detail;
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.health.lock().remove(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_component_is_stalled_and_degrades_the_whole() {
        let h = Health::new();
        let a = h.register("can:obd", Duration::from_secs(3));
        let b = h.register("cloud", Duration::from_secs(3));
        a.set(ComponentState::Ok, "open");
        b.set(ComponentState::Ok, "logged in");
        assert_eq!(h.overall(Instant::now()), ComponentState::Ok);
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(1)).await;
            a.beat();
        }
        // b has been silent for 5 s (allowance 3 s): stalled, a is fine.
        assert_eq!(h.stalled(Instant::now()), vec!["cloud".to_string()]);
        assert_eq!(h.overall(Instant::now()), ComponentState::Degraded);
        b.beat();
        assert!(h.stalled(Instant::now()).is_empty());
        assert_eq!(h.overall(Instant::now()), ComponentState::Ok);
        // A finished component is no longer watched.
        drop(b);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(h.stalled(Instant::now()), vec!["can:obd".to_string()]);
        drop(a);
        assert!(h.stalled(Instant::now()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn degraded_and_starting_are_reported() {
        let h = Health::new();
        let a = h.register("a", Duration::from_secs(3));
        assert_eq!(h.overall(Instant::now()), ComponentState::Starting);
        a.set(ComponentState::Degraded, "can0 missing; retrying");
        assert_eq!(h.overall(Instant::now()), ComponentState::Degraded);
        let v = h.views(Instant::now());
        assert_eq!(v[0].detail, "can0 missing; retrying");
        assert!(!v[0].stalled);
    }
}
