//! Local tester-present while the operator is silent: a sans-IO guard per channel that
//! learns from the ECU's answers whether it is in a non-default session.

use super::config::{default_keepalive_every_ms, default_keepalive_for_ms};
use std::time::Duration;
use tokio::time::Instant;

/// Local tester-present: how often, and for how long after the operator's last request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub every: Duration,
    pub bound: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            every: Duration::from_millis(default_keepalive_every_ms()),
            bound: Duration::from_millis(default_keepalive_for_ms()),
        }
    }
}

/// Sans-IO: whether an ECU is in a non-default diagnostic session (learnt from its answers)
/// and when the gateway must send a local `3E 80` to keep it there while the operator is
/// silent (a stalled WAN, a resuming session): `every` after the last request or local
/// keep-alive, until `bound` after the operator's last request.
#[derive(Debug, Clone)]
pub struct SessionGuard {
    pub(super) cfg: Keepalive,
    non_default: bool,
    last_request: Instant,
    pub(super) last_local: Option<Instant>,
    sent: u64,
}

/// UDS TesterPresent with suppress-positive-response.
pub const TESTER_PRESENT: [u8; 2] = [0x3E, 0x80];

impl SessionGuard {
    pub fn new(cfg: Keepalive, now: Instant) -> Self {
        SessionGuard {
            cfg,
            non_default: false,
            last_request: now,
            last_local: None,
            sent: 0,
        }
    }

    /// The operator sent a request.
    pub fn on_request(&mut self, now: Instant) {
        self.last_request = now;
        self.last_local = None;
    }

    /// The ECU answered: a positive DiagnosticSessionControl tells the session; a positive
    /// ECUReset means the default session.
    pub fn on_response(&mut self, data: &[u8]) {
        match data {
            [0x50, session, ..] => self.non_default = session & 0x7F != 0x01,
            [0x51, ..] => self.non_default = false,
            _ => {}
        }
    }

    /// Whether the ECU is believed to be in a non-default session.
    pub fn non_default(&self) -> bool {
        self.non_default
    }

    /// Local keep-alives sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// When the next local `3E 80` is due; `None`: none is needed (default session,
    /// keep-alive disabled, or the bound after the operator's last request has passed).
    pub fn due_at(&self) -> Option<Instant> {
        if !self.non_default || self.cfg.every.is_zero() || self.cfg.bound.is_zero() {
            return None;
        }
        let next = self.last_local.unwrap_or(self.last_request) + self.cfg.every;
        (next <= self.last_request + self.cfg.bound).then_some(next)
    }

    /// A local `3E 80` was sent.
    pub fn on_sent(&mut self, now: Instant) {
        self.last_local = Some(now);
        self.sent += 1;
    }
}
