//! DoIP vehicle discovery over UDP: identification requests and announcements.
//!
//! Owns: the discovery socket (broadcast, optional interface or local address), sending
//! vehicle identification requests (plain, by EID, by VIN) and collecting the responses and
//! announcements that arrive within a time window.
//!
//! Does not own: what to do with a discovered entity (see `super::client`).

use super::DoipClientConfig;
use crate::wire::doip::{self, Packet, Repr, VehicleAnnouncement, version};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// One entity that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredEntity {
    /// Where the response came from (connect to this IP on TCP port 13400).
    pub addr: SocketAddr,
    pub announcement: VehicleAnnouncement,
}

/// Which vehicle identification request to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentificationRequest {
    /// Every entity answers.
    All,
    /// Only the entity with this EID answers.
    ByEid([u8; 6]),
    /// Only entities of the vehicle with this VIN answer.
    ByVin([u8; 17]),
}

impl IdentificationRequest {
    pub fn repr(self) -> Repr {
        match self {
            IdentificationRequest::All => Repr::VehicleIdRequest,
            IdentificationRequest::ByEid(e) => Repr::VehicleIdRequestEid(e),
            IdentificationRequest::ByVin(v) => Repr::VehicleIdRequestVin(v),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot open the DoIP discovery socket{}: {source}", on.as_deref().map(|o| format!(" on {o}")).unwrap_or_default())]
    Socket {
        on: Option<String>,
        source: std::io::Error,
    },
    #[error("cannot send the vehicle identification request to {to}: {source}")]
    Send {
        to: SocketAddr,
        source: std::io::Error,
    },
    #[error("receiving DoIP identification responses failed: {0}")]
    Receive(std::io::Error),
}

/// A UDP socket for discovery as configured: broadcast allowed, bound to
/// `discovery_interface` (SO_BINDTODEVICE) and/or `discovery_bind`, port `port`
/// (0 for requests, 13400 to hear announcements).
pub fn discovery_socket(cfg: &DoipClientConfig, port: u16) -> Result<UdpSocket, DiscoveryError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let on = cfg
        .discovery_interface
        .clone()
        .or_else(|| cfg.discovery_bind.map(|a| a.to_string()));
    let err = |source| DiscoveryError::Socket {
        on: on.clone(),
        source,
    };
    let ip = cfg
        .discovery_bind
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let domain = if ip.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    s.set_broadcast(true).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    if let Some(ifname) = &cfg.discovery_interface {
        s.bind_device(Some(ifname.as_bytes())).map_err(|e| {
            err(std::io::Error::new(
                e.kind(),
                format!("binding to interface {ifname} (needs CAP_NET_RAW): {e}"),
            ))
        })?;
    }
    s.bind(&SocketAddr::new(ip, port).into()).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    UdpSocket::from_std(s.into()).map_err(err)
}

/// Send `request` from a socket made by [`discovery_socket`] to `discovery_target`
/// (default 255.255.255.255) port 13400 and collect answers for `control_timeout`.
pub async fn discover(
    cfg: &DoipClientConfig,
    request: IdentificationRequest,
) -> Result<Vec<DiscoveredEntity>, DiscoveryError> {
    let socket = discovery_socket(cfg, 0)?;
    let ip = cfg
        .discovery_target
        .unwrap_or(IpAddr::V4(Ipv4Addr::BROADCAST));
    discover_on(
        &socket,
        SocketAddr::new(ip, doip::PORT),
        request,
        cfg.control_timeout(),
    )
    .await
}

/// Send `request` on `socket` to `to` and collect distinct answers until `window` passes.
pub async fn discover_on(
    socket: &UdpSocket,
    to: SocketAddr,
    request: IdentificationRequest,
    window: Duration,
) -> Result<Vec<DiscoveredEntity>, DiscoveryError> {
    let bytes = request.repr().to_bytes(version::DEFAULT);
    socket
        .send_to(&bytes, to)
        .await
        .map_err(|source| DiscoveryError::Send { to, source })?;
    collect(socket, window, None).await
}

/// Listen on `socket` (bound to port 13400) for announcements until `window` passes or
/// `limit` distinct entities were heard.
pub async fn listen_announcements(
    socket: &UdpSocket,
    window: Duration,
    limit: Option<usize>,
) -> Result<Vec<DiscoveredEntity>, DiscoveryError> {
    collect(socket, window, limit).await
}

async fn collect(
    socket: &UdpSocket,
    window: Duration,
    limit: Option<usize>,
) -> Result<Vec<DiscoveredEntity>, DiscoveryError> {
    let deadline = Instant::now() + window;
    let mut found: Vec<DiscoveredEntity> = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        if limit.is_some_and(|l| found.len() >= l) {
            break;
        }
        let (n, from) = match tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(x)) => x,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Ok(Err(e)) => return Err(DiscoveryError::Receive(e)),
        };
        let Ok(packet) = Packet::new_checked(&buf[..n]) else {
            continue;
        };
        if let Ok((_, Repr::VehicleAnnouncement(a))) = Repr::parse(&packet, 64) {
            let dup = found.iter().any(|d| {
                d.addr.ip() == from.ip() && d.announcement.logical_address == a.logical_address
            });
            if !dup {
                found.push(DiscoveredEntity {
                    addr: from,
                    announcement: a,
                });
            }
        }
    }
    Ok(found)
}
