//! The gateway's `[tunnel]` configuration section: the relay, the session mode, the VIN
//! check, the vehicle ports a session may use, the DoIP address map and the policy, with
//! validation that names every problem.

use super::isotp_config;
use crate::config::Secret;
use crate::tunnel::policy::PolicyConfig;
use crate::vehicle::isotp::IsoTpConfig;
use crate::wire::tunnel::ChannelParams;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// The `[tunnel]` configuration section: where the gateway's side of a session connects and
/// which vehicle ports it offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// Relay URL, `wss://host:port/` (or `ws://` on loopback).
    pub relay_url: String,
    /// Manual (lab) mode: a fixed session id (a ticket's connection UUID). Absent: the
    /// daemon opens sessions itself when the cloud's ticket events say so (`[cloud]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Manual mode: the gateway's token for the relay. Cloud-driven sessions present the
    /// connector's current login token instead, fetched before every (re)connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Before a cloud-driven session opens, the car's VIN is read and compared with the
    /// ticket's: `refuse` (default: no session on a mismatch or an unreadable VIN), `warn`
    /// (log and show the mismatch, open anyway) or `off`.
    #[serde(default)]
    pub vin_check: VinCheck,
    /// The car's DoIP entity (`ip:port`) that DoIP channels reach; none: DoIP channels are
    /// refused with `port_unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doip_vehicle: Option<SocketAddr>,
    /// CAN interfaces (names as in `[[can]]`) that raw mirror channels may open.
    #[serde(default)]
    pub can_interfaces: Vec<String>,
    /// What operators may do to the car through this box (`[tunnel.policy]`): raw transmit
    /// (off by default), the ids ISO-TP may send on, rate limits and channel caps.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// CAN-only ECUs reachable as DoIP logical addresses: a DoIP channel to `address` is
    /// served by ISO-TP on the entry's interface (which must be in `can_interfaces`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub doip_map: Vec<DoipMapEntry>,
    /// While the operator sends nothing to an ECU that is in a non-default diagnostic
    /// session, the gateway sends `3E 80` to it this often (milliseconds)...
    #[serde(default = "default_keepalive_every_ms")]
    pub keepalive_every_ms: u64,
    /// ...for at most this long after the operator's last request (milliseconds; 0: never).
    /// Bounded so that an operator who walked away does not hold the ECU in a programming
    /// session forever.
    #[serde(default = "default_keepalive_for_ms")]
    pub keepalive_for_ms: u64,
}

/// What a VIN mismatch between the ticket and the car does (`tunnel.vin_check`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VinCheck {
    /// No session unless the car's VIN is read and equals the ticket's.
    #[default]
    Refuse,
    /// Log and show a mismatch or an unreadable VIN; open the session anyway.
    Warn,
    /// Do not read the VIN.
    Off,
}

impl VinCheck {
    pub fn name(self) -> &'static str {
        match self {
            VinCheck::Refuse => "refuse",
            VinCheck::Warn => "warn",
            VinCheck::Off => "off",
        }
    }
}

/// How the gateway's sessions are opened (`obdgw config check` prints it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelMode {
    /// `[tunnel] session` and `token`: one fixed session (the lab).
    Manual,
    /// No fixed session: the cloud's ticket events open and close sessions.
    CloudDriven,
}

impl TunnelMode {
    pub fn describe(self) -> &'static str {
        match self {
            TunnelMode::Manual => {
                "manual: one fixed session from [tunnel] session and token (lab use)"
            }
            TunnelMode::CloudDriven => {
                "cloud-driven: sessions open and close with the connector's tickets ([cloud])"
            }
        }
    }
}

pub(super) fn default_keepalive_every_ms() -> u64 {
    2_000
}

pub(super) fn default_keepalive_for_ms() -> u64 {
    60_000
}

impl TunnelConfig {
    /// Manual (a fixed session) or cloud-driven.
    pub fn mode(&self) -> TunnelMode {
        if self.session.is_some() {
            TunnelMode::Manual
        } else {
            TunnelMode::CloudDriven
        }
    }

    /// Problems of the section as `(key under tunnel., message)`, given the names of the
    /// `[[can]]` entries; all are reported, not only the first.
    pub fn validate(&self, can_names: &[&str]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        match (&self.session, &self.token) {
            (Some(_), None) => out.push((
                "token".into(),
                "manual mode (tunnel.session is set) needs tunnel.token too; or remove tunnel.session for cloud-driven sessions".into(),
            )),
            (None, Some(_)) => out.push((
                "token".into(),
                "tunnel.token is only for manual mode (with tunnel.session); cloud-driven sessions use the connector's login token: remove it".into(),
            )),
            _ => {}
        }
        if self.session.as_deref().is_some_and(str::is_empty) {
            out.push((
                "session".into(),
                "is empty; give a connection UUID or remove the key for cloud-driven sessions"
                    .into(),
            ));
        }
        for (i, name) in self.can_interfaces.iter().enumerate() {
            if !can_names.contains(&name.as_str()) {
                out.push((
                    format!("can_interfaces[{i}]"),
                    format!("`{name}` is not the name of a [[can]] entry; add one or remove it"),
                ));
            }
        }
        let mut seen: Vec<u16> = Vec::new();
        for (i, m) in self.doip_map.iter().enumerate() {
            if seen.contains(&m.address) {
                out.push((
                    format!("doip_map[{i}].address"),
                    format!(
                        "0x{:04X} is mapped twice; addresses must be unique",
                        m.address
                    ),
                ));
            }
            seen.push(m.address);
            if !self.can_interfaces.contains(&m.interface) {
                out.push((
                    format!("doip_map[{i}].interface"),
                    format!(
                        "`{}` is not in tunnel.can_interfaces ({}); list it there too",
                        m.interface,
                        self.can_interfaces.join(", ")
                    ),
                ));
            }
            if let Err(e) = m.resolve() {
                out.push((format!("doip_map[{i}]"), e));
            }
        }
        let policy_issues = self.policy.validate();
        let policy_ok = policy_issues.is_empty();
        out.extend(
            policy_issues
                .into_iter()
                .map(|(k, m)| (format!("policy.{k}"), m)),
        );
        if policy_ok {
            let policy = crate::tunnel::policy::Policy::new(self.policy.clone());
            for (i, m) in self.doip_map.iter().enumerate() {
                if let Err(r) = policy.check_diag(m.tx_id, m.extended_ids) {
                    out.push((
                        format!("doip_map[{i}].tx_id"),
                        format!(
                            "{}; add it to tunnel.policy.diag_ids or fix the entry",
                            r.message
                        ),
                    ));
                }
            }
        }
        if self.keepalive_every_ms > 0 && self.keepalive_every_ms < 100 {
            out.push((
                "keepalive_every_ms".into(),
                format!(
                    "{} is too short; expected 0 (off) or 100.. milliseconds (ECUs' S3 is usually 5000)",
                    self.keepalive_every_ms
                ),
            ));
        }
        out
    }
}

/// One `[[tunnel.doip_map]]` entry: a CAN-only ECU presented as a DoIP logical address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoipMapEntry {
    /// The DoIP logical address operators use for this ECU (e.g. `0x0010`).
    pub address: u16,
    /// The `[[can]]` name of the bus the ECU is on.
    pub interface: String,
    /// CAN id the gateway sends requests on (the ECU's physical request id, e.g. `0x7E0`).
    pub tx_id: u32,
    /// CAN id the ECU answers on (e.g. `0x7E8`).
    pub rx_id: u32,
    /// 29-bit ids.
    #[serde(default)]
    pub extended_ids: bool,
    /// CAN FD frames (up to 64 bytes).
    #[serde(default)]
    pub fd: bool,
    /// Pad short frames with this byte (many ECUs require `0xCC` or `0x55`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padding: Option<u8>,
    /// Block size the gateway announces in its flow control.
    #[serde(default)]
    pub bs: u8,
    /// STmin the gateway announces, microseconds (100..=900 and whole milliseconds to 127).
    #[serde(default)]
    pub stmin_us: u32,
}

/// A CAN-only ECU of the address map, resolved.
#[derive(Debug, Clone)]
pub struct MappedEcu {
    /// DoIP logical address.
    pub address: u16,
    /// Name of the CAN port (in [`Gateway::can`]).
    pub interface: String,
    pub isotp: IsoTpConfig,
}

impl DoipMapEntry {
    /// Check the entry and build its ISO-TP channel configuration.
    pub fn resolve(&self) -> Result<MappedEcu, String> {
        let params = ChannelParams::Isotp {
            interface: self.interface.clone(),
            tx_id: self.tx_id,
            rx_id: self.rx_id,
            extended_ids: self.extended_ids,
            addressing: crate::wire::tunnel::Addressing::Normal,
            tx_ext: None,
            rx_ext: None,
            bs: Some(self.bs),
            stmin_us: Some(self.stmin_us),
            padding: self.padding,
            fd: self.fd,
        };
        let isotp = isotp_config(&params)
            .map_err(|e| format!("tunnel.doip_map address 0x{:04X}: {}", self.address, e))?;
        Ok(MappedEcu {
            address: self.address,
            interface: self.interface.clone(),
            isotp,
        })
    }
}
