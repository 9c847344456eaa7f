//! The `[doip]` configuration section: how the gateway acts as a DoIP tester.
//!
//! Owns: the keys, their defaults, their meaning and their validation. Does not own the
//! entity's configuration (an entity is configured by whoever starts it, see
//! [`super::entity::EntityConfig`]).

use crate::wire::doip::{DEFAULT_MAX_PAYLOAD, version};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::time::Duration;

/// DoIP client (tester) settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DoipClientConfig {
    /// Our logical address (the routing activation source address). External test
    /// equipment uses 0x0E00-0x0FFF.
    pub tester_address: u16,
    /// Routing activation type: 0 default, 1 WWH-OBD, 0xE0 central security.
    pub activation_type: u8,
    /// Protocol version we send: 2 (ISO 13400-2:2012) or 3 (2019).
    pub protocol_version: u8,
    /// TCP connect timeout, in milliseconds.
    pub connect_timeout_ms: u64,
    /// A_DoIP_Ctrl: how long to wait for a routing activation response, a diagnostic
    /// acknowledgement or identification responses, in milliseconds.
    pub control_timeout_ms: u64,
    /// How long to wait for the ECU's response after its acknowledgement (P2), ms.
    pub response_timeout_ms: u64,
    /// How long each "response pending" (UDS 0x7F xx 0x78) extends the wait (P2*), ms.
    pub pending_timeout_ms: u64,
    /// Close an idle connection after this long without traffic (it is reopened on the next
    /// request), in milliseconds. The entity's own T_TCP_General_Inactivity is 5 minutes.
    pub inactivity_timeout_ms: u64,
    /// Largest DoIP payload accepted from the entity; larger messages are NACKed unread.
    pub max_payload_length: u32,
    /// Network interface to send vehicle identification requests on (SO_BINDTODEVICE,
    /// needs CAP_NET_RAW), e.g. `eth0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_interface: Option<String>,
    /// Local address to bind the discovery socket to (selects the interface by address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_bind: Option<IpAddr>,
    /// Where identification requests go: a unicast entity address or a (directed)
    /// broadcast address. Default: 255.255.255.255.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_target: Option<IpAddr>,
}

impl Default for DoipClientConfig {
    fn default() -> Self {
        DoipClientConfig {
            tester_address: 0x0E00,
            activation_type: 0x00,
            protocol_version: version::ISO_2012,
            connect_timeout_ms: 2_000,
            control_timeout_ms: 2_000,
            response_timeout_ms: 2_000,
            pending_timeout_ms: 5_000,
            inactivity_timeout_ms: 300_000,
            max_payload_length: DEFAULT_MAX_PAYLOAD,
            discovery_interface: None,
            discovery_bind: None,
            discovery_target: None,
        }
    }
}

impl DoipClientConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn control_timeout(&self) -> Duration {
        Duration::from_millis(self.control_timeout_ms)
    }
    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }
    pub fn pending_timeout(&self) -> Duration {
        Duration::from_millis(self.pending_timeout_ms)
    }
    pub fn inactivity_timeout(&self) -> Duration {
        Duration::from_millis(self.inactivity_timeout_ms)
    }

    /// Problems as `(key below "doip.", message)`; empty when valid.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        if !matches!(self.protocol_version, version::ISO_2012 | version::ISO_2019) {
            issues.push((
                "protocol_version".into(),
                format!(
                    "{} is not supported; expected 2 (ISO 13400-2:2012) or 3 (ISO 13400-2:2019)",
                    self.protocol_version
                ),
            ));
        }
        for (key, v, max) in [
            ("connect_timeout_ms", self.connect_timeout_ms, 60_000),
            ("control_timeout_ms", self.control_timeout_ms, 60_000),
            ("response_timeout_ms", self.response_timeout_ms, 600_000),
            ("pending_timeout_ms", self.pending_timeout_ms, 600_000),
            (
                "inactivity_timeout_ms",
                self.inactivity_timeout_ms,
                86_400_000,
            ),
        ] {
            if v == 0 || v > max {
                issues.push((
                    key.into(),
                    format!("{v} is out of range; expected 1..={max} milliseconds"),
                ));
            }
        }
        if self.max_payload_length < 5 || self.max_payload_length > 0x0400_0000 {
            issues.push((
                "max_payload_length".into(),
                format!(
                    "{} is out of range; expected 5..=67108864 bytes (a diagnostic message needs 4 address bytes and at least 1 data byte)",
                    self.max_payload_length
                ),
            ));
        }
        if let Some(i) = &self.discovery_interface
            && (i.is_empty() || i.len() > 15)
        {
            issues.push((
                "discovery_interface".into(),
                format!("`{i}` is not an interface name; expected 1-15 characters such as `eth0`"),
            ));
        }
        issues
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigSource, load_with_env};
    use std::io::Write;

    fn load(toml: &str, env: Vec<(String, String)>) -> Result<crate::config::Config, String> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(toml.as_bytes()).unwrap();
        load_with_env(&ConfigSource::Explicit(f.path().to_path_buf()), env)
            .map(|l| l.config)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn doip_section_parses_with_defaults() {
        let c = load(
            "[doip]\ntester_address = 0x0E80\nactivation_type = 0xE0\ndiscovery_interface = \"eth0\"\n",
            vec![("OBDGW_DOIP__CONTROL_TIMEOUT_MS".into(), "1500".into())],
        )
        .unwrap();
        assert_eq!(c.doip.tester_address, 0x0E80);
        assert_eq!(c.doip.activation_type, 0xE0);
        assert_eq!(c.doip.discovery_interface.as_deref(), Some("eth0"));
        assert_eq!(c.doip.control_timeout_ms, 1500);
        assert_eq!(c.doip.pending_timeout_ms, 5000);
        let rendered = crate::config::render(&c);
        assert!(rendered.contains("[doip]"), "{rendered}");
    }

    #[test]
    fn doip_section_errors_name_the_key() {
        let e = load(
            "[doip]\nprotocol_version = 7\ncontrol_timeout_ms = 0\n",
            vec![],
        )
        .unwrap_err();
        assert!(e.contains("doip.protocol_version"), "{e}");
        assert!(e.contains("expected 2 (ISO 13400-2:2012) or 3"), "{e}");
        assert!(e.contains("doip.control_timeout_ms"), "{e}");
        let e = load("[doip]\ntester_adress = 1\n", vec![]).unwrap_err();
        assert!(e.contains("tester_adress"), "{e}");
    }
}
