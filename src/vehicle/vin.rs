//! `obdgw vin`: read a vehicle's VIN and print it.
//!
//! Owns: the command line of `obdgw vin`, the order of attempts (over DoIP: the vehicle
//! identification response, then UDS ReadDataByIdentifier 0xF190), the error messages and
//! the exit codes.
//!
//! Does not own: the DoIP client and discovery ([`crate::vehicle::doip`]) nor VIN parsing
//! and validation ([`crate::vehicle::uds`]).
//!
//! Exit codes: 0 VIN printed; 1 no answer (nobody reachable, timeout); 2 usage error;
//! 3 refused (UDS negative response, DoIP NACK, routing activation denied); 4 malformed
//! answer or VIN.

use crate::vehicle::doip::discovery::{self, DiscoveredEntity, IdentificationRequest};
use crate::vehicle::doip::{ClientError, Connection, DoipClientConfig};
use crate::vehicle::uds::{READ_VIN_REQUEST, Vin, VinReadError, VinSource, parse_vin_from_rdbi};
use crate::wire::doip::{self, Repr, version};
use bytes::Bytes;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;
use tokio::net::UdpSocket;

/// `obdgw vin`: read the VIN.
#[derive(Debug, Clone, clap::Args)]
pub struct VinArgs {
    /// Read over DoIP from HOST[:PORT] (port 13400 by default), or `auto` to discover the
    /// vehicle by UDP broadcast on port 13400.
    #[arg(
        long,
        value_name = "HOST[:PORT]|auto",
        required_unless_present = "can",
        conflicts_with = "can"
    )]
    pub doip: Option<String>,
    /// Read over CAN (`can0`, `vcan0`, `sim:NAME`): OBD-II 09 02 to the functional id 0x7DF,
    /// then UDS 0xF190 to the engine (0x7E0 -> 0x7E8) when that fails.
    #[arg(long, value_name = "IFACE")]
    pub can: Option<String>,
    /// How long to wait for each answer, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    pub timeout: f64,
    /// DoIP: skip the vehicle identification response; read the VIN with UDS 0xF190 only.
    #[arg(long)]
    pub uds: bool,
    /// DoIP logical address to send 0xF190 to (default: the entity's own address).
    #[arg(long, value_name = "ADDR", value_parser = parse_u16)]
    pub target: Option<u16>,
}

fn parse_u16(s: &str) -> Result<u16, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?} is not a 16-bit address (e.g. 0x1000): {e}"))
}

/// Why no VIN was printed, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum VinCliError {
    #[error("{0}")]
    Read(#[from] VinReadError),
    #[error("DoIP: {0}")]
    Doip(#[from] ClientError),
    #[error("DoIP discovery: {0}")]
    Discovery(#[from] discovery::DiscoveryError),
    #[error(
        "no DoIP entity answered the vehicle identification request broadcast to port 13400 within {0:?}: check the Ethernet link and the ignition, or give --doip HOST"
    )]
    NothingDiscovered(Duration),
    #[error("cannot resolve {host:?}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("give --doip HOST[:PORT]|auto or --can IFACE")]
    NoTransport,
    #[error("CAN interface {iface}: {reason}")]
    Can { iface: String, reason: String },
    #[error("--timeout {0} is not a positive number of seconds")]
    Timeout(f64),
}

impl VinCliError {
    /// The process exit code (see the module documentation).
    pub fn exit_code(&self) -> u8 {
        match self {
            VinCliError::Read(VinReadError::NoAnswer { .. }) => 1,
            VinCliError::Read(VinReadError::Negative { .. }) => 3,
            VinCliError::Read(_) => 4,
            VinCliError::Doip(e) => match e {
                ClientError::ActivationDenied { .. }
                | ClientError::DiagNack { .. }
                | ClientError::GenericNack { .. } => 3,
                ClientError::Protocol(_) => 4,
                _ => 1,
            },
            VinCliError::Discovery(_) | VinCliError::NothingDiscovered(_) => 1,
            VinCliError::Resolve { .. } => 1,
            VinCliError::Timeout(_) | VinCliError::NoTransport => 2,
            VinCliError::Can { .. } => 1,
        }
    }
}

/// The CLI entry point: prints the VIN on stdout, or the error on stderr.
pub fn run_vin(args: VinArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("obdgw vin: starting the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(read_vin(&args)) {
        Ok((vin, how)) => {
            println!("{vin}");
            eprintln!("obdgw vin: {how}");
            if let Some(w) = vin.warning() {
                eprintln!("obdgw vin: warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("obdgw vin: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Read the VIN as `args` say; returns it with a note on where it came from.
pub async fn read_vin(args: &VinArgs) -> Result<(Vin, String), VinCliError> {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(VinCliError::Timeout(args.timeout));
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let ms = u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let cfg = DoipClientConfig {
        connect_timeout_ms: ms,
        control_timeout_ms: ms,
        response_timeout_ms: ms,
        ..DoipClientConfig::default()
    };
    let spec = match (&args.doip, &args.can) {
        (_, Some(iface)) => return read_vin_can(iface, timeout).await,
        (Some(spec), None) => spec.as_str(),
        (None, None) => return Err(VinCliError::NoTransport),
    };
    let (addr, announced) = if spec == "auto" {
        let found = discovery::discover(&cfg, IdentificationRequest::All).await?;
        let Some(first) = found.into_iter().next() else {
            return Err(VinCliError::NothingDiscovered(timeout));
        };
        (SocketAddr::new(first.addr.ip(), doip::PORT), Some(first))
    } else {
        let addr = resolve(spec).await?;
        let announced = if args.uds {
            None
        } else {
            identify(addr, timeout).await
        };
        (addr, announced)
    };
    let mut announcement_error = None;
    if let Some(found) = &announced
        && !args.uds
    {
        let vin = &found.announcement.vin;
        // 0x00 or 0xFF throughout: the entity has no VIN (yet); ask the ECU instead.
        if !vin.iter().all(|b| *b == 0x00) && !vin.iter().all(|b| *b == 0xFF) {
            match Vin::parse(&String::from_utf8_lossy(vin)) {
                Ok(v) => {
                    return Ok((
                        v,
                        format!(
                            "from the DoIP vehicle identification response of entity 0x{:04X} at {}",
                            found.announcement.logical_address, found.addr
                        ),
                    ));
                }
                Err(error) => {
                    announcement_error = Some(VinReadError::MalformedVin {
                        source_kind: VinSource::DoipAnnouncement,
                        error,
                    })
                }
            }
        }
    }
    let target = args
        .target
        .or(announced.as_ref().map(|a| a.announcement.logical_address));
    match read_uds(addr, cfg, target).await {
        Ok((vin, target)) => Ok((
            vin,
            format!("from UDS ReadDataByIdentifier 0xF190 of 0x{target:04X} at {addr}"),
        )),
        // The announcement's problem is the more telling one when UDS fails too.
        Err(e) => Err(announcement_error.map(VinCliError::Read).unwrap_or(e)),
    }
}

async fn resolve(spec: &str) -> Result<SocketAddr, VinCliError> {
    let with_port = if spec.parse::<SocketAddr>().is_ok() {
        spec.to_string()
    } else if let Ok(ip) = spec.parse::<IpAddr>() {
        SocketAddr::new(ip, doip::PORT).to_string()
    } else if spec
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        spec.to_string()
    } else {
        format!("{spec}:{}", doip::PORT)
    };
    let err = |reason: String| VinCliError::Resolve {
        host: spec.to_string(),
        reason,
    };
    tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no address".into()))
}

/// Unicast vehicle identification request to `addr` (UDP, same port); the first answer.
async fn identify(addr: SocketAddr, timeout: Duration) -> Option<DiscoveredEntity> {
    let bind = match addr {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => "[::]:0".parse().ok()?,
    };
    let socket = UdpSocket::bind(bind).await.ok()?;
    let request = Repr::VehicleIdRequest.to_bytes(version::DEFAULT);
    socket.send_to(&request, addr).await.ok()?;
    let found = discovery::listen_announcements(&socket, timeout, Some(1))
        .await
        .ok()?;
    found.into_iter().next()
}

/// Routing activation, then 0xF190 to `target` (default: the entity's own address).
async fn read_uds(
    addr: SocketAddr,
    cfg: DoipClientConfig,
    target: Option<u16>,
) -> Result<(Vin, u16), VinCliError> {
    let timeout = cfg.response_timeout();
    let conn = Connection::open(addr, cfg).await?;
    let target = target.unwrap_or(conn.entity_address());
    let response = conn
        .request(target, Bytes::from_static(&READ_VIN_REQUEST))
        .await
        .map_err(|e| match e {
            ClientError::ResponseTimeout { .. } | ClientError::AckTimeout { .. } => {
                VinCliError::Read(VinReadError::NoAnswer {
                    source_kind: VinSource::UdsF190,
                    target: format!("DoIP 0x{target:04X} at {addr}"),
                    timeout,
                })
            }
            e => VinCliError::Doip(e),
        })?;
    Ok((parse_vin_from_rdbi(&response)?, target))
}

/// OBD-II service 09 PID 02 to the functional id 0x7DF (answers on 0x7E8..0x7EF), then UDS
/// 0xF190 to 0x7E0 when no ECU gave a VIN.
async fn read_vin_can(iface: &str, timeout: Duration) -> Result<(Vin, String), VinCliError> {
    use std::sync::Arc;
    let can_err = |reason: String| VinCliError::Can {
        iface: iface.to_string(),
        reason,
    };
    let port = crate::vehicle::can::open_port(iface)
        .await
        .map_err(|e| can_err(e.to_string()))?;
    read_vin_on_port(Arc::new(port), timeout).await
}

/// Read the VIN over an open CAN port: OBD-II 09 02 to the functional id 0x7DF, then UDS
/// 0xF190 to the engine (0x7E0 -> 0x7E8). The daemon uses it with its own ports before a
/// session opens.
pub async fn read_vin_on_port<P: crate::vehicle::can::CanPort>(
    port: std::sync::Arc<P>,
    timeout: Duration,
) -> Result<(Vin, String), VinCliError> {
    use crate::router::frame::CanId;
    use crate::vehicle::isotp::{IsoTpConfig, IsoTpMux};
    use crate::vehicle::uds::VinQuery;
    use std::sync::Arc;
    let iface = port.name().to_string();
    let iface = iface.as_str();
    let can_err = |reason: String| VinCliError::Can {
        iface: iface.to_string(),
        reason,
    };
    let mux = IsoTpMux::new(port);
    let id = |raw: u16| CanId::from_raw(u32::from(raw));
    // Responses of the eight OBD-II ECU addresses go into one queue.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let mut handles = Vec::new();
    for i in 0..8u16 {
        let h = Arc::new(
            mux.open(IsoTpConfig::new(id(0x7E0 + i), id(0x7E8 + i)))
                .map_err(|e| can_err(e.to_string()))?,
        );
        let (h2, tx) = (h.clone(), tx.clone());
        tokio::spawn(async move {
            while let Ok(pdu) = h2.recv().await {
                if tx.send(pdu).await.is_err() {
                    break;
                }
            }
        });
        handles.push(h);
    }
    let functional = IsoTpConfig::new(id(0x7DF), id(0x7E8));
    let now = || tokio::time::Instant::now().into_std();
    let mut query = VinQuery::obd(format!("CAN 0x7DF on {iface}"), true, timeout, now());
    mux.send_functional(&functional, query.request())
        .await
        .map_err(|e| can_err(format!("sending OBD-II 09 02 to 0x7DF: {e}")))?;
    let obd = run_query(&mut query, &mut rx).await;
    let obd_err = match obd {
        Ok(vin) => {
            return Ok((
                vin,
                format!("from OBD-II service 09 PID 02 (0x7DF) on {iface}"),
            ));
        }
        Err(e) => e,
    };
    let mut query = VinQuery::uds(format!("CAN 0x7E0 on {iface}"), false, timeout, now());
    let engine = handles
        .first()
        .ok_or_else(|| can_err("no channel".into()))?;
    engine
        .send(Bytes::from_static(query.request()))
        .await
        .map_err(|e| can_err(format!("sending UDS 22 F1 90 to 0x7E0: {e}")))?;
    match run_query(&mut query, &mut rx).await {
        Ok(vin) => Ok((
            vin,
            format!(
                "from UDS ReadDataByIdentifier 0xF190 (0x7E0) on {iface}; OBD-II failed: {obd_err}"
            ),
        )),
        // A refusal or malformed OBD answer says more than a silent UDS fallback.
        Err(VinReadError::NoAnswer { .. }) if !matches!(obd_err, VinReadError::NoAnswer { .. }) => {
            Err(obd_err.into())
        }
        Err(e) => Err(e.into()),
    }
}

async fn run_query(
    query: &mut crate::vehicle::uds::VinQuery,
    rx: &mut tokio::sync::mpsc::Receiver<Bytes>,
) -> Result<Vin, VinReadError> {
    loop {
        let Some(at) = query.poll_at() else {
            // Finished queries always returned their result below.
            return Err(VinReadError::NoAnswer {
                source_kind: VinSource::UdsF190,
                target: String::new(),
                timeout: Duration::ZERO,
            });
        };
        tokio::select! {
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {
                if let Some(r) = query.poll(tokio::time::Instant::now().into_std()) {
                    return r;
                }
            }
            pdu = rx.recv() => {
                let Some(pdu) = pdu else {
                    // Every channel closed (the port went away): only the deadline is left.
                    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                    continue;
                };
                if let Some(r) = query.on_response(&pdu, tokio::time::Instant::now().into_std()) {
                    return r;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vehicle::uds::{Nrc, ServiceId, VinError};

    #[test]
    fn exit_codes() {
        let no_answer = VinCliError::Read(VinReadError::NoAnswer {
            source_kind: VinSource::ObdMode09,
            target: "CAN 0x7DF on can0".into(),
            timeout: Duration::from_secs(2),
        });
        assert_eq!(no_answer.exit_code(), 1);
        let refused = VinCliError::Read(VinReadError::Negative {
            source_kind: VinSource::UdsF190,
            sid: ServiceId::READ_DATA_BY_IDENTIFIER,
            nrc: Nrc::REQUEST_OUT_OF_RANGE,
        });
        assert_eq!(refused.exit_code(), 3);
        assert!(
            refused.to_string().contains("NRC 0x31 requestOutOfRange"),
            "{refused}"
        );
        let malformed = VinCliError::Read(VinReadError::MalformedVin {
            source_kind: VinSource::UdsF190,
            error: VinError::Length {
                vin: "ABC".into(),
                len: 3,
            },
        });
        assert_eq!(malformed.exit_code(), 4);
        assert_eq!(VinCliError::Timeout(0.0).exit_code(), 2);
        assert_eq!(VinCliError::NoTransport.exit_code(), 2);
        assert_eq!(
            VinCliError::NothingDiscovered(Duration::from_secs(2)).exit_code(),
            1
        );
    }

    #[test]
    fn addresses_parse_in_hex_or_decimal() {
        assert_eq!(parse_u16("0x1000"), Ok(0x1000));
        assert_eq!(parse_u16("4096"), Ok(4096));
        assert!(parse_u16("0x10000").unwrap_err().contains("16-bit address"));
    }
}
