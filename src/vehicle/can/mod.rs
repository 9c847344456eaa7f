//! CAN ports: one trait, several backends.
//!
//! Owns: the [`CanPort`] trait every backend implements, the frame type it carries
//! ([`CanAnyFrame`]), the error type of the port layer, the counters every port keeps
//! ([`CanPortStats`]), and the backends:
//! - [`socketcan`]: a Linux SocketCAN interface (`can0`, `vcan0`);
//! - [`vbus`]: an in-process virtual bus (tests, demo);
//! - [`simbus`]: a cross-process loopback bus over a unix socket (`sim:NAME`);
//! - middleware over any port: [`fault`] (fault injector) and [`recorder`] (candump logs);
//! - [`open_port`]: an interface spec (`can0`, `sim:car`) to an opened [`AnyCanPort`];
//! - the sans-IO policies the backends share: [`tx`] (the transmit deadline and the retry
//!   schedule on a full transmit queue) and [`restart`] (bus-off restarts with backoff and
//!   an hourly limit).
//!
//! Does not own: ISO-TP (see `crate::vehicle::isotp`) or routing.

pub mod candump;
pub mod config;
pub mod errframe;
pub mod fault;
pub mod kfilter;
mod open;
pub mod recorder;
pub mod restart;
pub mod simbus;
pub mod socketcan;
pub mod timing;
pub mod tx;
pub mod vbus;

pub use config::CanInterfaceConfig;
pub use errframe::BusState;
pub use open::{AnyCanPort, PortSpec, open_port, open_port_with};

use crate::router::frame::{CanFdFrame, CanFrame};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

/// A frame on a CAN bus: classic or FD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CanAnyFrame {
    Classic(CanFrame),
    Fd(CanFdFrame),
}

impl CanAnyFrame {
    pub fn id(&self) -> crate::router::frame::CanId {
        match self {
            CanAnyFrame::Classic(f) => f.id(),
            CanAnyFrame::Fd(f) => f.id(),
        }
    }

    pub fn data(&self) -> &[u8] {
        match self {
            CanAnyFrame::Classic(f) => f.data(),
            CanAnyFrame::Fd(f) => f.data(),
        }
    }
}

/// Errors of the CAN port layer.
#[derive(Debug, thiserror::Error)]
pub enum CanError {
    /// A system call on the interface failed.
    #[error("CAN interface {iface}: {op}: {source}")]
    Io {
        iface: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// An FD frame was sent on a port that is not FD-capable.
    #[error("CAN interface {0} is not CAN FD capable (set its MTU to 72 or use classic frames)")]
    FdNotSupported(String),
    /// The bus is off; frames cannot be sent until it recovers.
    #[error("CAN interface {0} is bus-off")]
    BusOff(String),
    /// The port was closed.
    #[error("CAN port {0} is closed")]
    Closed(String),
    /// The frame was not taken for transmission before the port's deadline
    /// (`tx_timeout_ms`): the transmit queue stayed full. The frame was not sent.
    #[error(
        "CAN interface {iface}: frame not sent: the transmit queue stayed full for {} ms ({retries} retries); on a real bus this means no node acknowledges frames (check the bitrate, the termination and that an ECU is powered)",
        timeout.as_millis()
    )]
    TxTimeout {
        iface: String,
        /// The deadline that passed.
        timeout: std::time::Duration,
        /// Attempts repeated after the queue was found full (`ENOBUFS`).
        retries: u32,
    },
    /// An interface spec or setting is unusable.
    #[error("CAN interface `{spec}`: {reason}")]
    Invalid { spec: String, reason: String },
    /// Applying interface settings (bitrate, restart-ms) through netlink failed.
    #[error("CAN interface {iface}: cannot {op} through netlink: {reason}")]
    Netlink {
        iface: String,
        op: &'static str,
        reason: String,
    },
}

/// A CAN port: something that sends and receives CAN frames.
///
/// `send` and `recv` take `&self` so one task can receive while others send. A port has one
/// receiver: whoever owns the port's receive loop demultiplexes frames to its users.
pub trait CanPort: Send + Sync + 'static {
    /// The interface name, for logs and status (`can0`, `sim:car`, `virtual:3`).
    fn name(&self) -> &str;
    /// Whether the port can carry CAN FD frames.
    fn fd_capable(&self) -> bool;
    /// Send one frame; waits while the transmit queue is full, but never beyond the port's
    /// transmit deadline (see [`tx`]): then it fails with [`CanError::TxTimeout`] and the
    /// frame is not sent. Dropping the future stops the wait at once (shutdown never waits
    /// for a bus).
    fn send(&self, frame: CanAnyFrame) -> impl Future<Output = Result<(), CanError>> + Send;
    /// Receive the next frame.
    fn recv(&self) -> impl Future<Output = Result<CanAnyFrame, CanError>> + Send;
    /// Counters and bus state, for status and tests. Backends without counters return zeros.
    fn stats(&self) -> CanPortStats {
        CanPortStats::default()
    }
}

/// A snapshot of a port's counters and bus state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CanPortStats {
    /// Frames received and handed to the port's user.
    pub rx_frames: u64,
    /// Frames sent.
    pub tx_frames: u64,
    /// Frames dropped because the port's receive queue was full (virtual buses) or that
    /// a fault injector dropped.
    pub rx_dropped: u64,
    /// Frames the kernel dropped because the socket's receive buffer was full
    /// (`SO_RXQ_OVFL`; SocketCAN only).
    pub overruns: u64,
    /// Error frames seen (SocketCAN only).
    pub error_frames: u64,
    /// Times the controller went bus-off.
    pub bus_off: u64,
    /// The controller's state as last reported by an error frame.
    pub state: BusState,
    /// Bus-off recovery needs the operator: no `restart-ms` and no CAP_NET_ADMIN to restart.
    pub recovery_blocked: bool,
    /// Sends that failed with [`CanError::TxTimeout`]: the transmit queue stayed full for
    /// the port's whole deadline.
    pub tx_timeouts: u64,
    /// Writes repeated because the transmit queue was full (`ENOBUFS`; SocketCAN only).
    pub tx_enobufs_retries: u64,
    /// Controller restarts obdgw asked for after bus-off (SocketCAN without `restart-ms`).
    pub busoff_restarts: u64,
    /// obdgw stopped restarting the controller: `busoff_restarts_per_hour` was reached.
    /// The bus stays off until an operator restarts it (see [`restart`]).
    pub restart_limit_reached: bool,
}

/// Lock-free counters a backend updates on its data path.
#[derive(Debug, Default)]
pub struct PortCounters {
    pub rx_frames: AtomicU64,
    pub tx_frames: AtomicU64,
    pub rx_dropped: AtomicU64,
    pub overruns: AtomicU64,
    pub error_frames: AtomicU64,
    pub bus_off: AtomicU64,
    pub tx_timeouts: AtomicU64,
    pub tx_enobufs_retries: AtomicU64,
    pub busoff_restarts: AtomicU64,
}

impl PortCounters {
    #[inline]
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters, with `state`, `recovery_blocked` and `restart_limit_reached` at their
    /// defaults.
    pub fn snapshot(&self) -> CanPortStats {
        CanPortStats {
            rx_frames: self.rx_frames.load(Ordering::Relaxed),
            tx_frames: self.tx_frames.load(Ordering::Relaxed),
            rx_dropped: self.rx_dropped.load(Ordering::Relaxed),
            overruns: self.overruns.load(Ordering::Relaxed),
            error_frames: self.error_frames.load(Ordering::Relaxed),
            bus_off: self.bus_off.load(Ordering::Relaxed),
            tx_timeouts: self.tx_timeouts.load(Ordering::Relaxed),
            tx_enobufs_retries: self.tx_enobufs_retries.load(Ordering::Relaxed),
            busoff_restarts: self.busoff_restarts.load(Ordering::Relaxed),
            ..CanPortStats::default()
        }
    }
}

impl From<CanFrame> for CanAnyFrame {
    fn from(f: CanFrame) -> Self {
        CanAnyFrame::Classic(f)
    }
}

impl From<CanFdFrame> for CanAnyFrame {
    fn from(f: CanFdFrame) -> Self {
        CanAnyFrame::Fd(f)
    }
}

impl CanAnyFrame {
    /// Whether this is a CAN FD frame.
    pub fn is_fd(&self) -> bool {
        matches!(self, CanAnyFrame::Fd(_))
    }

    /// The frame's timestamp.
    pub fn timestamp(&self) -> crate::router::frame::Timestamp {
        match self {
            CanAnyFrame::Classic(f) => f.timestamp,
            CanAnyFrame::Fd(f) => f.timestamp,
        }
    }

    /// The same frame with another timestamp.
    pub fn with_timestamp(self, ts: crate::router::frame::Timestamp) -> Self {
        match self {
            CanAnyFrame::Classic(f) => CanAnyFrame::Classic(f.with_timestamp(ts)),
            CanAnyFrame::Fd(f) => CanAnyFrame::Fd(f.with_timestamp(ts)),
        }
    }
}
