//! The gateway's policy (`[tunnel.policy]`): what an operator may do to the car through
//! this box, whatever the relay or the operator's endpoint asks.
//!
//! Owns: the configuration section and its validation, the live policy shared by every
//! channel of every session ([`PolicyHandle`]: a reload swaps it, open channels included),
//! the per-channel raw-transmit gate ([`RawTxGate`]: allowlist and rate limits), and the
//! refusal counters by rule (shown by `obdgw status` and the metrics).
//!
//! Does not own: how a refusal reaches the operator (the gateway sends an error record or
//! a channel error naming the rule) or the transmit itself.
//!
//! Rules, each with the name its refusals are counted under:
//! - `raw_tx`: raw CAN transmit (mirror channels) is off unless `raw_tx = true`;
//! - `raw_tx_ids`: when on, only frames whose id matches `raw_tx_ids` are sent;
//! - `raw_tx_rate`: at most `raw_tx_rate_per_id` frames/s per id and `raw_tx_rate_total`
//!   frames/s per channel (a channel is one interface: only one mirror per interface);
//! - `diag_ids`: ISO-TP channels and mapped DoIP ECUs send only on `diag_ids`;
//! - `max_channels`: channels open at once in a session;
//! - the queue of each channel holds `channel_queue` records (the operator waits, via the
//!   tunnel's acknowledgements, when it is full; nothing is refused).

use crate::relay::admission::TokenBucket;
use crate::router::filter::IdRule;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The `[tunnel.policy]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Raw CAN transmit through mirror channels (`candump`-style access, socketcand raw
    /// mode, `--can-bridge`). Off by default: mirror channels are then read-only.
    #[serde(default)]
    pub raw_tx: bool,
    /// With `raw_tx`, the ids that may be sent: `0x7E0`, `0x7E0-0x7E7` (range),
    /// `0x18DA00F1/0x1FFF00FF` (id/mask). A 29-bit id matches only rules written with
    /// values above 0x7FF.
    #[serde(default)]
    pub raw_tx_ids: Vec<String>,
    /// Raw frames per second per id (0: no limit).
    #[serde(default = "default_rate_per_id")]
    pub raw_tx_rate_per_id: u32,
    /// Raw frames per second per channel, all ids together (0: no limit).
    #[serde(default = "default_rate_total")]
    pub raw_tx_rate_total: u32,
    /// The ids ISO-TP channels and mapped DoIP ECUs may send on (requests and flow
    /// control): by default OBD-II and UDS physical and functional request ids.
    #[serde(default = "default_diag_ids")]
    pub diag_ids: Vec<String>,
    /// Channels open at once in one session.
    #[serde(default = "default_max_channels")]
    pub max_channels: u16,
    /// Records queued toward one channel before the operator has to wait.
    #[serde(default = "default_channel_queue")]
    pub channel_queue: u16,
}

fn default_rate_per_id() -> u32 {
    50
}
fn default_rate_total() -> u32 {
    500
}
fn default_max_channels() -> u16 {
    16
}
fn default_channel_queue() -> u16 {
    64
}

/// OBD-II/UDS request ids: functional 0x7DF, physical 0x7E0–0x7E7, and their 29-bit forms
/// (physical 0x18DAxxF1 from tester 0xF1 to any ECU, functional 0x18DB33F1).
pub fn default_diag_ids() -> Vec<String> {
    [
        "0x7DF",
        "0x7E0-0x7E7",
        "0x18DA00F1/0x1FFF00FF",
        "0x18DB33F1",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            raw_tx: false,
            raw_tx_ids: Vec::new(),
            raw_tx_rate_per_id: default_rate_per_id(),
            raw_tx_rate_total: default_rate_total(),
            diag_ids: default_diag_ids(),
            max_channels: default_max_channels(),
            channel_queue: default_channel_queue(),
        }
    }
}

impl PolicyConfig {
    /// Everything allowed, unlimited: for tests and benchmarks on simulated buses, never
    /// for a car.
    pub fn lab() -> Self {
        PolicyConfig {
            raw_tx: true,
            raw_tx_ids: vec!["0x0-0x1FFFFFFF".into()],
            raw_tx_rate_per_id: 0,
            raw_tx_rate_total: 0,
            diag_ids: vec!["0x0-0x1FFFFFFF".into()],
            max_channels: u16::MAX,
            ..Default::default()
        }
    }

    /// Problems as `(key under tunnel.policy., message)`; all of them.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (list, name) in [
            (&self.raw_tx_ids, "raw_tx_ids"),
            (&self.diag_ids, "diag_ids"),
        ] {
            for (i, s) in list.iter().enumerate() {
                if let Err(e) = s.parse::<IdRule>() {
                    out.push((format!("{name}[{i}]"), e.to_string()));
                }
            }
        }
        if self.raw_tx && self.raw_tx_ids.is_empty() {
            out.push((
                "raw_tx_ids".into(),
                "raw_tx = true needs the ids operators may send, e.g. raw_tx_ids = [\"0x7E0-0x7E7\"]; or set raw_tx = false".into(),
            ));
        }
        if self.max_channels == 0 {
            out.push((
                "max_channels".into(),
                "0 would refuse every channel; expected 1.. (default 16)".into(),
            ));
        }
        if self.channel_queue == 0 {
            out.push((
                "channel_queue".into(),
                "must be at least 1 record (default 64)".into(),
            ));
        }
        out
    }
}

/// A rule that refused something (the name its refusals are counted under).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    RawTx,
    RawTxIds,
    RawTxRate,
    DiagIds,
    MaxChannels,
}

impl Rule {
    pub const ALL: [Rule; 5] = [
        Rule::RawTx,
        Rule::RawTxIds,
        Rule::RawTxRate,
        Rule::DiagIds,
        Rule::MaxChannels,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rule::RawTx => "raw_tx",
            Rule::RawTxIds => "raw_tx_ids",
            Rule::RawTxRate => "raw_tx_rate",
            Rule::DiagIds => "diag_ids",
            Rule::MaxChannels => "max_channels",
        }
    }
}

/// A refusal: the rule, and what to tell the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused by the gateway's policy (tunnel.policy.{}): {message}", rule.name())]
pub struct Refusal {
    pub rule: Rule,
    pub message: String,
}

/// A validated policy with its id rules parsed.
#[derive(Debug, Clone)]
pub struct Policy {
    pub config: PolicyConfig,
    raw_ids: Vec<IdRule>,
    diag: Vec<IdRule>,
}

fn rules(list: &[String]) -> Vec<IdRule> {
    list.iter().filter_map(|s| s.parse().ok()).collect()
}

/// Whether `rules` allow an id (29-bit ids only through rules with 29-bit values).
fn allowed(rules: &[IdRule], id: u32, extended: bool) -> bool {
    rules.iter().any(|r| {
        let wide = match *r {
            IdRule::Mask { value, .. } => value > 0x7FF,
            IdRule::Range { hi, .. } => hi > 0x7FF,
        };
        r.matches(id) && (!extended || wide)
    })
}

fn show_id(id: u32, extended: bool) -> String {
    if extended {
        format!("0x{id:08X}")
    } else {
        format!("0x{id:03X}")
    }
}

impl Policy {
    /// Build from a configuration (invalid id rules are skipped: validate first).
    pub fn new(config: PolicyConfig) -> Self {
        Policy {
            raw_ids: rules(&config.raw_tx_ids),
            diag: rules(&config.diag_ids),
            config,
        }
    }

    /// May an ISO-TP channel (or a mapped DoIP ECU) send on this id?
    pub fn check_diag(&self, id: u32, extended: bool) -> Result<(), Refusal> {
        if allowed(&self.diag, id, extended) {
            return Ok(());
        }
        Err(Refusal {
            rule: Rule::DiagIds,
            message: format!(
                "ISO-TP transmit id {} is not a diagnostic request id this gateway allows ({})",
                show_id(id, extended),
                self.config.diag_ids.join(", ")
            ),
        })
    }

    /// May a session open one more channel, with `open` open now?
    pub fn check_channels(&self, open: usize) -> Result<(), Refusal> {
        if open < self.config.max_channels as usize {
            return Ok(());
        }
        Err(Refusal {
            rule: Rule::MaxChannels,
            message: format!(
                "{open} channels are open; this gateway allows {} per session (close one first)",
                self.config.max_channels
            ),
        })
    }
}

/// The policy in force, shared by every session and channel; a reload replaces it.
#[derive(Debug)]
pub struct PolicyHandle {
    current: Mutex<Arc<Policy>>,
    generation: AtomicU64,
    refusals: [AtomicU64; Rule::ALL.len()],
}

impl PolicyHandle {
    pub fn new(config: PolicyConfig) -> Arc<Self> {
        Arc::new(PolicyHandle {
            current: Mutex::new(Arc::new(Policy::new(config))),
            generation: AtomicU64::new(0),
            refusals: Default::default(),
        })
    }

    /// The policy now.
    pub fn get(&self) -> Arc<Policy> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replace the policy (open channels see it at their next frame).
    pub fn set(&self, config: PolicyConfig) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(Policy::new(config));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Count a refusal and hand it back.
    pub fn count(&self, r: Refusal) -> Refusal {
        self.refusals[r.rule as usize].fetch_add(1, Ordering::Relaxed);
        tracing::info!(rule = r.rule.name(), "{}", r.message);
        r
    }

    /// Refusals so far, by rule name (every rule, zeros included).
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        Rule::ALL
            .iter()
            .map(|r| (r.name(), self.refusals[*r as usize].load(Ordering::Relaxed)))
            .collect()
    }

    /// [`Policy::check_diag`], counted.
    pub fn check_diag(&self, id: u32, extended: bool) -> Result<(), Refusal> {
        self.get()
            .check_diag(id, extended)
            .map_err(|r| self.count(r))
    }

    /// [`Policy::check_channels`], counted.
    pub fn check_channels(&self, open: usize) -> Result<(), Refusal> {
        self.get().check_channels(open).map_err(|r| self.count(r))
    }
}

/// Buckets kept per id before idle ones are dropped (bounds memory against id sweeps).
const MAX_ID_BUCKETS: usize = 1024;

/// One mirror channel's raw-transmit gate: the policy (re-read only when a reload changed
/// it, so no lock per frame), the allowlist and the rate limits.
#[derive(Debug)]
pub struct RawTxGate {
    handle: Arc<PolicyHandle>,
    generation: u64,
    policy: Arc<Policy>,
    total: TokenBucket,
    per_id: HashMap<u32, TokenBucket>,
}

impl RawTxGate {
    pub fn new(handle: Arc<PolicyHandle>, now: Instant) -> Self {
        let generation = handle.generation.load(Ordering::Acquire);
        let policy = handle.get();
        let total = total_bucket(&policy, now);
        RawTxGate {
            handle,
            generation,
            policy,
            total,
            per_id: HashMap::new(),
        }
    }

    /// May this frame go on the bus now? Refusals are counted.
    pub fn check(&mut self, raw_id: u32, extended: bool, now: Instant) -> Result<(), Refusal> {
        let generation = self.handle.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.generation = generation;
            self.policy = self.handle.get();
            self.total = total_bucket(&self.policy, now);
            self.per_id.clear();
        }
        let p = &self.policy;
        let refuse = |rule, message: String| Err(self.handle.count(Refusal { rule, message }));
        if !p.config.raw_tx {
            return refuse(
                Rule::RawTx,
                "raw CAN transmit is off at this gateway (tunnel.policy.raw_tx = false): frame not sent; the mirror stays read-only".into(),
            );
        }
        if !allowed(&p.raw_ids, raw_id, extended) {
            return refuse(
                Rule::RawTxIds,
                format!(
                    "id {} is not in tunnel.policy.raw_tx_ids ({}): frame not sent",
                    show_id(raw_id, extended),
                    p.config.raw_tx_ids.join(", ")
                ),
            );
        }
        if self.total.take(now).is_some() {
            return refuse(
                Rule::RawTxRate,
                format!(
                    "more than {} frames/s on this channel: frame not sent",
                    p.config.raw_tx_rate_total
                ),
            );
        }
        let per_id = p.config.raw_tx_rate_per_id;
        if per_id > 0 {
            if self.per_id.len() >= MAX_ID_BUCKETS && !self.per_id.contains_key(&raw_id) {
                // Buckets that refilled are equivalent to fresh ones: drop them.
                self.per_id.retain(|_, b| b.clone().take(now).is_some());
                if self.per_id.len() >= MAX_ID_BUCKETS {
                    self.per_id.clear();
                }
            }
            let b = self
                .per_id
                .entry(raw_id)
                .or_insert_with(|| TokenBucket::new(per_id, per_id, now));
            if b.take(now).is_some() {
                return refuse(
                    Rule::RawTxRate,
                    format!(
                        "more than {per_id} frames/s on id {}: frame not sent",
                        show_id(raw_id, extended)
                    ),
                );
            }
        }
        Ok(())
    }
}

fn total_bucket(p: &Policy, now: Instant) -> TokenBucket {
    let r = p.config.raw_tx_rate_total;
    TokenBucket::new(r, r, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn on(ids: &[&str]) -> PolicyConfig {
        PolicyConfig {
            raw_tx: true,
            raw_tx_ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_read_only_with_diagnostic_ids() {
        let c = PolicyConfig::default();
        assert!(!c.raw_tx);
        assert!(c.validate().is_empty());
        let p = Policy::new(c);
        for (id, ext) in [
            (0x7DF, false),
            (0x7E0, false),
            (0x7E7, false),
            (0x18DA10F1, true),
            (0x18DB33F1, true),
        ] {
            assert!(p.check_diag(id, ext).is_ok(), "{id:X}");
        }
        for (id, ext) in [
            (0x7E8, false),
            (0x100, false),
            (0x7E0, true),
            (0x18DA10F2, true),
            (0x18DAF110, true),
        ] {
            let e = p.check_diag(id, ext).unwrap_err();
            assert_eq!(e.rule, Rule::DiagIds, "{id:X}");
        }
    }

    #[test]
    fn validation_names_every_problem() {
        let mut c = on(&[]);
        c.diag_ids.push("0x7G0".into());
        c.max_channels = 0;
        c.channel_queue = 0;
        let keys: Vec<String> = c.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            ["diag_ids[4]", "raw_tx_ids", "max_channels", "channel_queue"]
        );
    }

    #[test]
    fn raw_transmit_is_refused_when_off_and_counted() {
        let h = PolicyHandle::new(PolicyConfig::default());
        let now = Instant::now();
        let mut g = RawTxGate::new(h.clone(), now);
        let e = g.check(0x7E0, false, now).unwrap_err();
        assert_eq!(e.rule, Rule::RawTx);
        assert!(e.to_string().contains("tunnel.policy.raw_tx"));
        assert_eq!(h.refusals()[0], ("raw_tx", 1));
        // A reload that turns it on reaches the open gate at its next frame.
        h.set(on(&["0x7E0"]));
        assert!(g.check(0x7E0, false, now).is_ok());
        let e = g.check(0x123, false, now).unwrap_err();
        assert_eq!(e.rule, Rule::RawTxIds);
        assert!(e.message.contains("0x123"), "{}", e.message);
    }

    #[test]
    fn rates_are_limited_per_id_and_in_total() {
        let mut c = on(&["0x100-0x1FF"]);
        c.raw_tx_rate_per_id = 2;
        c.raw_tx_rate_total = 5;
        let h = PolicyHandle::new(c);
        let t0 = Instant::now();
        let mut g = RawTxGate::new(h.clone(), t0);
        assert!(g.check(0x100, false, t0).is_ok());
        assert!(g.check(0x100, false, t0).is_ok());
        assert_eq!(g.check(0x100, false, t0).unwrap_err().rule, Rule::RawTxRate);
        assert!(g.check(0x101, false, t0).is_ok());
        assert!(g.check(0x102, false, t0).is_ok());
        // Total: 5 taken (one by the refused 0x100 third frame).
        let e = g.check(0x103, false, t0).unwrap_err();
        assert!(
            e.message.contains("frames/s on this channel"),
            "{}",
            e.message
        );
        // A second later both buckets are full again.
        let t1 = t0 + Duration::from_secs(1);
        assert!(g.check(0x100, false, t1).is_ok());
        let counted: u64 = h
            .refusals()
            .iter()
            .filter(|(n, _)| *n == "raw_tx_rate")
            .map(|(_, c)| c)
            .sum();
        assert_eq!(counted, 2);
    }

    #[test]
    fn an_id_sweep_keeps_the_bucket_map_bounded() {
        let mut c = on(&["0x0-0x1FFFFFFF"]);
        c.raw_tx_rate_total = 0;
        let h = PolicyHandle::new(c);
        let t0 = Instant::now();
        let mut g = RawTxGate::new(h, t0);
        for i in 0..10_000u32 {
            let now = t0 + Duration::from_millis(u64::from(i));
            let _ = g.check(0x1000 + i, true, now);
        }
        assert!(g.per_id.len() <= MAX_ID_BUCKETS, "{}", g.per_id.len());
    }

    #[test]
    fn the_channel_cap_refuses_beyond_it() {
        let h = PolicyHandle::new(PolicyConfig {
            max_channels: 2,
            ..Default::default()
        });
        assert!(h.check_channels(1).is_ok());
        let e = h.check_channels(2).unwrap_err();
        assert_eq!(e.rule, Rule::MaxChannels);
        assert_eq!(h.refusals()[4], ("max_channels", 1));
    }
}
