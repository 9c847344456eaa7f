//! The status report: what `obdgw status` shows and `--json` prints.
//!
//! Owns: the report's types (schema version [`SCHEMA`], documented in `docs/control.md`;
//! fields are only ever added), its text rendering and the exit code it maps to.
//!
//! Does not own: gathering the figures (`super::state`) or the socket (`super::control`).

use super::health::{ComponentState, ComponentView};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Version of the `--json` schema. Fields may be added within a version; none is removed
/// or changes meaning.
pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub schema: u32,
    pub version: String,
    pub pid: u32,
    pub uptime_s: u64,
    /// `cloud-driven`, `manual` or `none` (no `[tunnel]`).
    pub mode: String,
    /// `ok`, `degraded` or `starting`.
    pub health: ComponentState,
    /// The line systemd shows (`STATUS=`).
    pub status_line: String,
    pub cloud: Option<CloudReport>,
    pub ticket: Option<TicketReport>,
    pub session: Option<SessionReport>,
    /// The last VIN comparison before a session.
    pub vin_check: Option<VinCheckReport>,
    pub can: Vec<CanReport>,
    pub doip: Option<DoipReport>,
    pub router: RouterReport,
    pub components: Vec<ComponentView>,
    /// Where `/metrics` is served (`[metrics]`), if anywhere.
    #[serde(default)]
    pub metrics: Option<String>,
    /// The policy in force (`[tunnel.policy]`) and its refusals.
    #[serde(default)]
    pub policy: Option<PolicyReport>,
}

/// The gateway's policy in force, and how often each rule refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyReport {
    pub raw_tx: bool,
    pub raw_tx_ids: Vec<String>,
    pub raw_tx_rate_per_id: u32,
    pub raw_tx_rate_total: u32,
    pub diag_ids: Vec<String>,
    pub max_channels: u16,
    pub channel_queue: u16,
    /// Refusals since start by rule name (`raw_tx`, `raw_tx_ids`, `raw_tx_rate`,
    /// `diag_ids`, `max_channels`).
    pub refusals: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CloudReport {
    pub base_url: String,
    pub connector_uuid: Option<String>,
    pub logged_in: bool,
    /// Unix seconds.
    pub token_expires_at: Option<u64>,
    /// Why the last login failed, while it does.
    pub login_error: Option<String>,
    /// When the next login attempt is due (Unix seconds), while logging in fails.
    pub login_retry_at: Option<u64>,
    /// `up`, `down` or `starting`.
    pub status_socket: String,
    /// Unix seconds of the last change of `status_socket`.
    pub status_socket_since: Option<u64>,
    pub status_socket_error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TicketReport {
    pub id: i64,
    /// `prepared`, `pending`, `in_progress`, `outsourced`, `closed`, `cancelled` or
    /// `unknown(N)`.
    pub state: String,
    pub connection: Option<String>,
    pub vin: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionReport {
    pub id: String,
    /// `vin-check`, `connecting`, `hello`, `awaiting-peer`, `up`, `resuming`,
    /// `refused`, `backoff` or `closed`.
    pub state: String,
    pub relay: String,
    pub rtt_ms: Option<f64>,
    pub records_sent: u64,
    pub records_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Records sent again after a resume.
    pub replayed: u64,
    /// Unacknowledged bytes held for replay now.
    pub replay_bytes: u64,
    pub reconnects: u64,
    /// Times the session was started again after it ended on its own.
    pub restarts: u64,
    /// Unix seconds when this session was opened.
    pub opened_at: u64,
    pub last_error: Option<String>,
    /// Open tunnel channels (ISO-TP, DoIP, raw mirror).
    pub channels: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VinCheckReport {
    /// `refuse`, `warn` or `off`.
    pub policy: String,
    pub ticket_vin: Option<String>,
    pub car_vin: Option<String>,
    /// `match`, `mismatch`, `unreadable`, `no-ticket-vin` or `skipped`.
    pub result: String,
    pub detail: String,
    /// Unix seconds.
    pub at: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CanReport {
    pub name: String,
    pub interface: String,
    /// `open`, `missing` (retrying) or `opening`.
    pub state: String,
    /// `error-active`, `error-warning`, `error-passive`, `bus-off` (SocketCAN; others
    /// report `error-active`).
    pub bus_state: String,
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub error_frames: u64,
    pub rx_dropped: u64,
    pub overruns: u64,
    pub bus_off: u64,
    /// Transmits that missed their deadline (`tx_timeout_ms`), and queue-full retries.
    #[serde(default)]
    pub tx_timeouts: u64,
    #[serde(default)]
    pub tx_enobufs_retries: u64,
    /// Bus-off restarts obdgw made, and whether the hourly limit stopped them.
    #[serde(default)]
    pub busoff_restarts: u64,
    #[serde(default)]
    pub restart_limit_reached: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DoipReport {
    pub address: String,
    /// Whether the last VIN read or connection reached the entity.
    pub reachable: Option<bool>,
    pub vin: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouterReport {
    pub ports: u64,
    pub routes: u64,
    pub frames: u64,
    pub shed: u64,
}

impl StatusReport {
    /// `obdgw status`'s exit code: 0 healthy (components still starting count: the daemon
    /// is serving, and one that fails becomes degraded), 1 degraded.
    pub fn exit_code(&self) -> u8 {
        match self.health {
            ComponentState::Degraded => 1,
            _ => 0,
        }
    }

    /// The human rendering, in the manner of `tailscale status`.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let health = match self.health {
            ComponentState::Ok => "healthy",
            ComponentState::Degraded => "DEGRADED",
            ComponentState::Starting => "starting",
        };
        let _ = writeln!(
            o,
            "obdgw {} (pid {}), up {}, {health}, mode {}",
            self.version,
            self.pid,
            human_duration(self.uptime_s),
            self.mode
        );
        let _ = writeln!(o, "  {}", self.status_line);
        if let Some(c) = &self.cloud {
            let login = if c.logged_in {
                match c.token_expires_at {
                    Some(t) => format!("logged in (token until {})", unix_time(t)),
                    None => "logged in".into(),
                }
            } else {
                match &c.login_error {
                    Some(e) => format!("NOT logged in: {e}"),
                    None => "logging in".into(),
                }
            };
            let since = c
                .status_socket_since
                .map(|t| format!(" since {}", unix_time(t)))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "cloud    {} connector {}: {login}; status socket {}{since}",
                c.base_url,
                c.connector_uuid.as_deref().unwrap_or("-"),
                c.status_socket
            );
        }
        match &self.ticket {
            Some(t) => {
                let _ = writeln!(
                    o,
                    "ticket   {} {} connection {} vin {}",
                    t.id,
                    t.state,
                    t.connection.as_deref().unwrap_or("-"),
                    t.vin.as_deref().unwrap_or("-")
                );
            }
            None if self.mode == "cloud-driven" => {
                let _ = writeln!(o, "ticket   none active");
            }
            None => {}
        }
        if let Some(v) = &self.vin_check {
            let _ = writeln!(
                o,
                "vin      {} ({}): ticket {} car {}; {}",
                v.result,
                v.policy,
                v.ticket_vin.as_deref().unwrap_or("-"),
                v.car_vin.as_deref().unwrap_or("-"),
                v.detail
            );
        }
        if let Some(s) = &self.session {
            let rtt = s
                .rtt_ms
                .map(|r| format!("{r:.1} ms"))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                o,
                "session  {} {} via {} rtt {rtt} channels {}",
                s.id, s.state, s.relay, s.channels
            );
            let _ = writeln!(
                o,
                "         sent {} records / {} B, received {} / {} B, replayed {}, replay buffer {} B, reconnects {}, restarts {}",
                s.records_sent,
                s.bytes_sent,
                s.records_received,
                s.bytes_received,
                s.replayed,
                s.replay_bytes,
                s.reconnects,
                s.restarts
            );
            if let Some(e) = &s.last_error {
                let _ = writeln!(o, "         last error: {e}");
            }
        }
        for c in &self.can {
            let _ = writeln!(
                o,
                "can      {} ({}) {} {}: rx {} tx {} errors {} drops {} overruns {} bus-off {} tx-timeouts {}{}",
                c.name,
                c.interface,
                c.state,
                c.bus_state,
                c.rx_frames,
                c.tx_frames,
                c.error_frames,
                c.rx_dropped,
                c.overruns,
                c.bus_off,
                c.tx_timeouts,
                if c.detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", c.detail)
                }
            );
        }
        if let Some(d) = &self.doip {
            let reach = match d.reachable {
                Some(true) => "reachable",
                Some(false) => "unreachable",
                None => "not tried",
            };
            let _ = writeln!(
                o,
                "doip     {} {reach} vin {}",
                d.address,
                d.vin.as_deref().unwrap_or("-")
            );
        }
        if let Some(p) = &self.policy {
            let tx = if p.raw_tx {
                format!(
                    "raw transmit ON for {} ({}/s per id, {}/s per channel)",
                    p.raw_tx_ids.join(", "),
                    p.raw_tx_rate_per_id,
                    p.raw_tx_rate_total
                )
            } else {
                "raw transmit off (mirrors read-only)".into()
            };
            let refused: Vec<String> = p
                .refusals
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            let _ = writeln!(
                o,
                "policy   {tx}; ISO-TP on {}; at most {} channels; refused: {}",
                p.diag_ids.join(", "),
                p.max_channels,
                if refused.is_empty() {
                    "none".to_string()
                } else {
                    refused.join(", ")
                }
            );
        }
        let _ = writeln!(
            o,
            "router   {} ports {} routes, {} frames, {} shed",
            self.router.ports, self.router.routes, self.router.frames, self.router.shed
        );
        for c in &self.components {
            if c.stalled || c.state == ComponentState::Degraded {
                let _ = writeln!(
                    o,
                    "problem  {}: {}{}",
                    c.name,
                    if c.stalled {
                        format!("no heartbeat for {} ms; ", c.last_beat_ms)
                    } else {
                        String::new()
                    },
                    c.detail
                );
            }
        }
        o
    }
}

/// `3d 4h`, `5m 2s`.
pub fn human_duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn unix_time(t: u64) -> String {
    let iso = crate::sim::cloud::data::rfc3339(t);
    format!(
        "{} UTC",
        iso.trim_end_matches("+00:00").replacen('T', " ", 1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_render() {
        assert_eq!(unix_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(unix_time(1_796_688_000), "2026-12-08 00:00:00 UTC");
        assert_eq!(unix_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(3725), "1h 2m");
        assert_eq!(human_duration(90_000), "1d 1h");
    }
}
