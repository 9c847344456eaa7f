//! Opening a port from its interface spec.
//!
//! Owns: [`PortSpec`] (a plain name is SocketCAN, `sim:NAME` the cross-process loopback bus),
//! [`AnyCanPort`] (one type for whichever backend was opened) and [`open_port`].
//!
//! Does not own: the backends themselves.

use super::config::CanInterfaceConfig;
use super::simbus::{SimBusOptions, SimPort};
use super::socketcan::{SocketCanOptions, SocketCanPort};
use super::vbus::VirtualPort;
use super::{CanAnyFrame, CanError, CanPort, CanPortStats};
use std::fmt;

/// What an interface spec names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// A SocketCAN network interface (`can0`, `vcan0`).
    SocketCan(String),
    /// The cross-process loopback bus `sim:NAME`.
    Sim(String),
}

/// Error: a spec that names nothing openable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{spec}` is not a CAN interface ({reason}); expected a SocketCAN name such as `can0` or `vcan0`, or `sim:NAME` for the loopback bus"
)]
pub struct SpecError {
    pub spec: String,
    pub reason: &'static str,
}

impl PortSpec {
    pub fn parse(spec: &str) -> Result<Self, SpecError> {
        let err = |reason| SpecError {
            spec: spec.to_string(),
            reason,
        };
        if let Some(name) = spec.strip_prefix("sim:") {
            if !super::simbus::valid_bus_name(name) {
                return Err(err(
                    "a sim bus name is 1-64 characters from A-Z a-z 0-9 - _ .",
                ));
            }
            return Ok(PortSpec::Sim(name.to_string()));
        }
        if spec.is_empty() {
            return Err(err("empty"));
        }
        // IFNAMSIZ is 16 including the terminating NUL.
        if spec.len() > 15 {
            return Err(err("network interface names have at most 15 characters"));
        }
        if spec == "."
            || spec == ".."
            || spec.contains(['/', ':'])
            || spec.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(err("a network interface name has no `/`, `:` or spaces"));
        }
        Ok(PortSpec::SocketCan(spec.to_string()))
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::SocketCan(n) => f.write_str(n),
            PortSpec::Sim(n) => write!(f, "sim:{n}"),
        }
    }
}

/// Any opened port.
#[derive(Debug)]
pub enum AnyCanPort {
    SocketCan(SocketCanPort),
    Sim(SimPort),
    Virtual(VirtualPort),
}

/// Open an interface with default settings: `can0`/`vcan0` (SocketCAN, FD when the
/// interface's MTU allows it) or `sim:NAME`. Must be called inside a tokio runtime.
pub async fn open_port(spec: &str) -> Result<AnyCanPort, CanError> {
    let mut cfg = CanInterfaceConfig::new(spec, spec);
    cfg.fd = match PortSpec::parse(spec) {
        Ok(PortSpec::SocketCan(name)) => super::socketcan::interface_mtu(&name)
            .map(|m| m >= super::socketcan::CANFD_MTU)
            .unwrap_or(false),
        _ => true,
    };
    open_port_with(&cfg).await
}

/// Open an interface as configured.
pub async fn open_port_with(cfg: &CanInterfaceConfig) -> Result<AnyCanPort, CanError> {
    let spec = PortSpec::parse(&cfg.interface).map_err(|e| CanError::Invalid {
        spec: cfg.interface.clone(),
        reason: e.to_string(),
    })?;
    let filters = cfg.id_rules().map_err(|e| CanError::Invalid {
        spec: cfg.interface.clone(),
        reason: e.to_string(),
    })?;
    match spec {
        PortSpec::SocketCan(name) => {
            let opts = SocketCanOptions {
                fd: cfg.fd,
                filters,
                error_frames: cfg.error_frames,
                bitrate: cfg.bitrate,
                data_bitrate: cfg.data_bitrate,
                restart_ms: cfg.restart_ms,
                busoff_restarts_per_hour: cfg.busoff_restarts_per_hour(),
                tx_timeout: cfg.tx_timeout(),
                ..SocketCanOptions::default()
            };
            Ok(AnyCanPort::SocketCan(SocketCanPort::open(&name, opts)?))
        }
        PortSpec::Sim(name) => {
            let opts = SimBusOptions {
                rx_capacity: cfg.rx_queue,
                filters,
                fd: cfg.fd,
                tx_timeout: cfg.tx_timeout(),
                ..SimBusOptions::default()
            };
            Ok(AnyCanPort::Sim(SimPort::open(&name, opts).await?))
        }
    }
}

impl CanPort for AnyCanPort {
    fn name(&self) -> &str {
        match self {
            AnyCanPort::SocketCan(p) => p.name(),
            AnyCanPort::Sim(p) => p.name(),
            AnyCanPort::Virtual(p) => p.name(),
        }
    }

    fn fd_capable(&self) -> bool {
        match self {
            AnyCanPort::SocketCan(p) => p.fd_capable(),
            AnyCanPort::Sim(p) => p.fd_capable(),
            AnyCanPort::Virtual(p) => p.fd_capable(),
        }
    }

    async fn send(&self, frame: CanAnyFrame) -> Result<(), CanError> {
        match self {
            AnyCanPort::SocketCan(p) => p.send(frame).await,
            AnyCanPort::Sim(p) => p.send(frame).await,
            AnyCanPort::Virtual(p) => p.send(frame).await,
        }
    }

    async fn recv(&self) -> Result<CanAnyFrame, CanError> {
        match self {
            AnyCanPort::SocketCan(p) => p.recv().await,
            AnyCanPort::Sim(p) => p.recv().await,
            AnyCanPort::Virtual(p) => p.recv().await,
        }
    }

    fn stats(&self) -> CanPortStats {
        match self {
            AnyCanPort::SocketCan(p) => p.stats(),
            AnyCanPort::Sim(p) => p.stats(),
            AnyCanPort::Virtual(p) => p.stats(),
        }
    }
}

impl From<VirtualPort> for AnyCanPort {
    fn from(p: VirtualPort) -> Self {
        AnyCanPort::Virtual(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(
            PortSpec::parse("can0"),
            Ok(PortSpec::SocketCan("can0".into()))
        );
        assert_eq!(PortSpec::parse("sim:car"), Ok(PortSpec::Sim("car".into())));
        assert_eq!(PortSpec::parse("sim:car").unwrap().to_string(), "sim:car");
        for bad in [
            "",
            "sim:",
            "sim:a/b",
            "averyveryverylongname",
            "a b",
            "..",
            "x:y",
            "can/0",
        ] {
            let e = PortSpec::parse(bad).unwrap_err();
            assert!(e.to_string().contains("expected a SocketCAN name"), "{e}");
        }
    }

    #[tokio::test]
    async fn invalid_spec_is_a_clear_error() {
        let e = open_port("sim:no/slash").await.unwrap_err();
        assert!(matches!(e, CanError::Invalid { .. }), "{e}");
        let mut cfg = CanInterfaceConfig::new("x", "vcan0");
        cfg.filters = vec!["zz".into()];
        let e = open_port_with(&cfg).await.unwrap_err();
        assert!(e.to_string().contains("`zz`"), "{e}");
    }
}
