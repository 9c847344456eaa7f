//! Configuration of CAN interfaces: the `[[can]]` entries of `obdgw.toml`.
//!
//! Owns: [`CanInterfaceConfig`] (every key, its default and meaning) and its validation.
//!
//! Does not own: loading (see `crate::config`) or opening (see [`super::open_port`]).

use crate::router::IdRule;
use serde::{Deserialize, Serialize};

/// One CAN interface the gateway opens.
///
/// ```toml
/// [[can]]
/// name = "obd"            # how routes and status refer to it
/// interface = "can0"      # SocketCAN interface, or "sim:NAME" for the loopback bus
/// fd = false              # carry CAN FD frames (the interface MTU must be 72)
/// bitrate = 500000        # applied through netlink only when set (needs CAP_NET_ADMIN)
/// # restart_ms = 1000     # bus-off restart by the kernel, without a limit (see below)
/// busoff_restarts_per_hour = 20  # obdgw's own bus-off restarts, when restart_ms is unset
/// tx_timeout_ms = 200     # how long a send may wait for a full transmit queue
/// filters = ["0x7E8-0x7EF", "0x7DF"]
/// ```
///
/// Bus-off recovery: when `restart_ms` is unset (or 0), obdgw restarts the controller
/// through netlink (needs CAP_NET_ADMIN) with a backoff of 100 ms doubling to 30 s, and at
/// most `busoff_restarts_per_hour` times within any hour; then it stops, logs what to check
/// (first the bitrate) and reports the port degraded until an operator restarts it by hand
/// (`ip link set can0 type can restart`). When `restart_ms` is set non-zero, the kernel
/// restarts the controller by itself after that delay, every time, with no limit: at a
/// wrong bitrate `restart_ms = 100` puts up to 36,000 bursts of error frames an hour on the
/// car's bus. Leave it unset when obdgw has CAP_NET_ADMIN; where the kernel must recover by
/// itself, use 1000 ms or more. See [`super::restart`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanInterfaceConfig {
    /// Unique name for routes, logs and status.
    pub name: String,
    /// The interface: a SocketCAN name (`can0`, `vcan0`) or `sim:NAME` (the cross-process
    /// loopback bus, for simulators on a machine without CAN).
    pub interface: String,
    /// Carry CAN FD frames. The SocketCAN interface must have the FD MTU (72).
    #[serde(default)]
    pub fd: bool,
    /// Nominal bitrate in bit/s. Set through netlink (needs CAP_NET_ADMIN, and the interface
    /// is taken down and up) only when given; otherwise the interface is used as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate: Option<u32>,
    /// CAN FD data-phase bitrate in bit/s; needs `fd = true` and `bitrate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_bitrate: Option<u32>,
    /// Automatic restart delay after bus-off, in milliseconds (0 disables it). Set through
    /// netlink only when given. Without it, obdgw restarts the interface itself through
    /// netlink when it has CAP_NET_ADMIN (with backoff, within
    /// `busoff_restarts_per_hour`), and otherwise logs that an operator must. The kernel's
    /// restart has no limit: a wrong bitrate restarts every `restart_ms` for ever. Prefer
    /// leaving it unset; otherwise use 1000 or more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_ms: Option<u32>,
    /// How many times within any hour obdgw restarts the controller after bus-off
    /// (0..=100, default 20; 0: never). Beyond it obdgw stops restarting, logs what to check
    /// and shows the port degraded until an operator restarts the controller. Applies only
    /// when obdgw restarts (SocketCAN, `restart_ms` unset or 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busoff_restarts_per_hour: Option<u32>,
    /// How long one send may wait for a full transmit queue, in milliseconds (10..=60000,
    /// default 200). A queue stays full when no node acknowledges frames (an ECU off, a
    /// wrong bitrate, a bus not connected); the send then fails with a transmit timeout, is
    /// counted (`tx_timeouts`), and the session and shutdown go on.
    #[serde(default = "default_tx_timeout_ms")]
    pub tx_timeout_ms: u32,
    /// Receive only these ids, filtered in the kernel: `0x7E8` (exact), `0x7E0/0x7F8`
    /// (id/mask), `0x700-0x7FF` (range). Empty: every id.
    #[serde(default)]
    pub filters: Vec<String>,
    /// Receive error frames and track the bus state (error-active, passive, bus-off).
    #[serde(default = "default_true")]
    pub error_frames: bool,
    /// Receive queue capacity in frames (`sim:` ports); SocketCAN uses the kernel's buffer.
    #[serde(default = "default_rx_queue")]
    pub rx_queue: usize,
}

fn default_true() -> bool {
    true
}

fn default_rx_queue() -> usize {
    super::vbus::DEFAULT_RX_CAPACITY
}

fn default_tx_timeout_ms() -> u32 {
    super::tx::DEFAULT_TX_TIMEOUT.as_millis() as u32
}

impl CanInterfaceConfig {
    /// A config for `interface` with every optional key at its default.
    pub fn new(name: impl Into<String>, interface: impl Into<String>) -> Self {
        CanInterfaceConfig {
            name: name.into(),
            interface: interface.into(),
            fd: false,
            bitrate: None,
            data_bitrate: None,
            restart_ms: None,
            busoff_restarts_per_hour: None,
            tx_timeout_ms: default_tx_timeout_ms(),
            filters: Vec::new(),
            error_frames: true,
            rx_queue: default_rx_queue(),
        }
    }

    /// The transmit deadline.
    pub fn tx_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.tx_timeout_ms.into())
    }

    /// Bus-off restarts obdgw may make within an hour.
    pub fn busoff_restarts_per_hour(&self) -> u32 {
        self.busoff_restarts_per_hour
            .unwrap_or(super::restart::DEFAULT_PER_HOUR)
    }

    /// The parsed filters (validation has checked them).
    pub fn id_rules(&self) -> Result<Vec<IdRule>, crate::router::filter::IdRuleError> {
        self.filters.iter().map(|s| s.parse()).collect()
    }
}

/// Valid bitrates: 5 kbit/s to 1 Mbit/s nominal, up to 15 Mbit/s in the FD data phase.
pub const BITRATE_RANGE: std::ops::RangeInclusive<u32> = 5_000..=1_000_000;
pub const DATA_BITRATE_RANGE: std::ops::RangeInclusive<u32> = 5_000..=15_000_000;

/// Check every `[[can]]` entry; `issue(key, message)` is called for each problem.
pub fn validate(entries: &[CanInterfaceConfig], mut issue: impl FnMut(String, String)) {
    let mut names: Vec<&str> = Vec::new();
    let mut ifaces: Vec<&str> = Vec::new();
    for (i, c) in entries.iter().enumerate() {
        let key = |f: &str| format!("can[{i}].{f}");
        if c.name.is_empty()
            || c.name.len() > 64
            || !c
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
        {
            issue(
                key("name"),
                format!(
                    "`{}` is not a valid name; expected 1-64 characters from A-Z a-z 0-9 - _ .",
                    c.name
                ),
            );
        }
        if names.contains(&c.name.as_str()) {
            issue(
                key("name"),
                format!(
                    "`{}` is used by an earlier [[can]] entry; names must be unique",
                    c.name
                ),
            );
        }
        names.push(&c.name);
        match super::PortSpec::parse(&c.interface) {
            Err(e) => issue(key("interface"), e.to_string()),
            Ok(spec) => {
                if ifaces.contains(&c.interface.as_str()) {
                    issue(
                        key("interface"),
                        format!(
                            "`{}` is opened by an earlier [[can]] entry; open each interface once",
                            c.interface
                        ),
                    );
                }
                if matches!(spec, super::PortSpec::Sim(_))
                    && (c.bitrate.is_some()
                        || c.data_bitrate.is_some()
                        || c.restart_ms.is_some()
                        || c.busoff_restarts_per_hour.is_some())
                {
                    issue(
                        key("interface"),
                        "bitrate, data_bitrate, restart_ms and busoff_restarts_per_hour apply to SocketCAN interfaces only; remove them for a `sim:` bus".into(),
                    );
                }
            }
        }
        ifaces.push(&c.interface);
        if let Some(b) = c.bitrate
            && !BITRATE_RANGE.contains(&b)
        {
            issue(
                key("bitrate"),
                format!("{b} is out of range; expected 5000..=1000000 bit/s (e.g. 500000)"),
            );
        }
        if let Some(b) = c.data_bitrate {
            if !DATA_BITRATE_RANGE.contains(&b) {
                issue(
                    key("data_bitrate"),
                    format!("{b} is out of range; expected 5000..=15000000 bit/s (e.g. 2000000)"),
                );
            }
            if !c.fd {
                issue(key("data_bitrate"), "needs `fd = true`".into());
            }
            if c.bitrate.is_none() {
                issue(
                    key("data_bitrate"),
                    "needs `bitrate` too (the kernel sets both at once)".into(),
                );
            }
        }
        if let Some(r) = c.restart_ms
            && r > 60_000
        {
            issue(
                key("restart_ms"),
                format!("{r} is out of range; expected 0..=60000 milliseconds (0 disables)"),
            );
        }
        if let Some(n) = c.busoff_restarts_per_hour {
            if !super::restart::PER_HOUR_RANGE.contains(&n) {
                issue(
                    key("busoff_restarts_per_hour"),
                    format!(
                        "{n} is out of range; expected 0..=100 restarts an hour (0: obdgw never restarts the controller; the default is 20)"
                    ),
                );
            }
            if c.restart_ms.is_some_and(|r| r > 0) {
                issue(
                    key("busoff_restarts_per_hour"),
                    "has no effect while restart_ms is set: the kernel then restarts the controller by itself, without a limit; remove restart_ms (obdgw restarts it, with backoff and this limit; needs CAP_NET_ADMIN) or remove busoff_restarts_per_hour".into(),
                );
            }
        }
        if !super::tx::TX_TIMEOUT_MS_RANGE.contains(&c.tx_timeout_ms) {
            issue(
                key("tx_timeout_ms"),
                format!(
                    "{} is out of range; expected 10..=60000 milliseconds (e.g. 200: a healthy bus drains a full transmit queue in about 10 ms)",
                    c.tx_timeout_ms
                ),
            );
        }
        let mut rules = Vec::new();
        for (j, f) in c.filters.iter().enumerate() {
            match f.parse::<IdRule>() {
                Ok(r) => rules.push(r),
                Err(e) => issue(format!("can[{i}].filters[{j}]"), e.to_string()),
            }
        }
        if let Err(e) = super::kfilter::kernel_filters(&rules) {
            issue(key("filters"), e.to_string());
        }
        if c.rx_queue == 0 || c.rx_queue > 1 << 20 {
            issue(
                key("rx_queue"),
                format!(
                    "{} is out of range; expected 1..=1048576 frames",
                    c.rx_queue
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(entries: &[CanInterfaceConfig]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        validate(entries, |k, m| out.push((k, m)));
        out
    }

    #[test]
    fn valid_entries_pass() {
        let mut a = CanInterfaceConfig::new("obd", "can0");
        a.fd = true;
        a.bitrate = Some(500_000);
        a.data_bitrate = Some(2_000_000);
        a.restart_ms = Some(100);
        a.filters = vec!["0x7E8-0x7EF".into(), "0x7DF".into()];
        a.tx_timeout_ms = 10;
        let b = CanInterfaceConfig::new("sim", "sim:car");
        let mut c = CanInterfaceConfig::new("c", "can1");
        c.busoff_restarts_per_hour = Some(0);
        c.restart_ms = Some(0);
        c.tx_timeout_ms = 60_000;
        assert_eq!(check(&[a, b, c]), vec![]);
    }

    #[test]
    fn every_problem_is_named() {
        let mut a = CanInterfaceConfig::new("bad name", "can0");
        a.bitrate = Some(2_000_000);
        a.data_bitrate = Some(1);
        a.restart_ms = Some(100_000);
        a.filters = vec!["0x7E8".into(), "nope".into()];
        a.rx_queue = 0;
        a.tx_timeout_ms = 0;
        a.busoff_restarts_per_hour = Some(101);
        let mut b = CanInterfaceConfig::new("x", "sim:bad/name");
        b.bitrate = Some(500_000);
        let c = CanInterfaceConfig::new("x", "can0");
        let mut d = CanInterfaceConfig::new("d", "sim:car");
        d.restart_ms = Some(10);
        let mut e = CanInterfaceConfig::new("e", "sim:e");
        e.busoff_restarts_per_hour = Some(5);
        e.tx_timeout_ms = 70_000;
        let keys: Vec<String> = check(&[a, b, c, d, e])
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for want in [
            "can[0].name",
            "can[0].bitrate",
            "can[0].data_bitrate",
            "can[0].restart_ms",
            "can[0].filters[1]",
            "can[0].rx_queue",
            "can[1].interface",
            "can[2].name",
            "can[2].interface",
            "can[3].interface",
            "can[0].tx_timeout_ms",
            "can[0].busoff_restarts_per_hour",
            "can[4].interface",
            "can[4].tx_timeout_ms",
        ] {
            assert!(keys.iter().any(|k| k == want), "{want} missing in {keys:?}");
        }
    }

    #[test]
    fn loads_through_the_config_loader() {
        use crate::config::{ConfigSource, load_with_env};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[[can]]\nname = \"obd\"\ninterface = \"sim:car\"\nfd = true\n",
        )
        .unwrap();
        // OBDGW_SIM_DIR and OBDGW_REQUIRE_CAN are not configuration keys
        let env = vec![
            ("OBDGW_SIM_DIR".to_string(), "/tmp/x".to_string()),
            ("OBDGW_REQUIRE_CAN".to_string(), "1".to_string()),
        ];
        let l = load_with_env(&ConfigSource::Explicit(p.clone()), env).unwrap();
        assert_eq!(l.config.can.len(), 1);
        assert_eq!(l.config.can[0].interface, "sim:car");
        assert!(l.config.can[0].fd);
        std::fs::write(
            &p,
            "[[can]]\nname = \"obd\"\ninterface = \"sim:car\"\nbitrate = 500000\n",
        )
        .unwrap();
        let e = load_with_env(&ConfigSource::Explicit(p), Vec::new()).unwrap_err();
        assert!(e.to_string().contains("can[0].interface"), "{e}");
    }

    #[test]
    fn restart_settings_are_explained() {
        let mut a = CanInterfaceConfig::new("a", "can0");
        a.busoff_restarts_per_hour = Some(10);
        a.restart_ms = Some(100);
        let issues = check(&[a.clone()]);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].0, "can[0].busoff_restarts_per_hour");
        assert!(issues[0].1.contains("without a limit"), "{}", issues[0].1);
        a.busoff_restarts_per_hour = Some(500);
        a.restart_ms = None;
        let issues = check(&[a]);
        assert!(issues[0].1.contains("expected 0..=100"), "{issues:?}");
        let mut t = CanInterfaceConfig::new("t", "can0");
        t.tx_timeout_ms = 5;
        let issues = check(&[t]);
        assert_eq!(issues[0].0, "can[0].tx_timeout_ms");
        assert!(
            issues[0].1.contains("expected 10..=60000 milliseconds"),
            "{issues:?}"
        );
    }

    #[test]
    fn toml_shape() {
        let text = r#"
            name = "obd"
            interface = "vcan0"
            fd = true
            filters = ["0x7E8"]
        "#;
        let c: CanInterfaceConfig = toml::from_str(text).unwrap();
        assert!(c.fd && c.error_frames);
        assert_eq!(c.rx_queue, 1024);
        assert_eq!(c.tx_timeout_ms, 200);
        assert_eq!(c.tx_timeout(), std::time::Duration::from_millis(200));
        assert_eq!(c.busoff_restarts_per_hour, None);
        assert_eq!(c.busoff_restarts_per_hour(), 20);
        let c: CanInterfaceConfig = toml::from_str(
            "name='a'\ninterface='can0'\ntx_timeout_ms=500\nbusoff_restarts_per_hour=3",
        )
        .unwrap();
        assert_eq!(c.tx_timeout_ms, 500);
        assert_eq!(c.busoff_restarts_per_hour(), 3);
        assert!(toml::from_str::<CanInterfaceConfig>("name='a'\ninterface='b'\nbogus=1").is_err());
    }
}
