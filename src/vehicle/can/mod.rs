//! CAN ports: one trait, several backends.
//!
//! Owns: the [`CanPort`] trait every backend implements, the frame type it carries
//! ([`CanAnyFrame`]) and the error type of the port layer.
//!
//! Does not own: ISO-TP (see `crate::vehicle::isotp`) or routing.

use crate::router::frame::{CanFdFrame, CanFrame};
use std::future::Future;

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
    /// Send one frame; waits while the transmit queue is full.
    fn send(&self, frame: CanAnyFrame) -> impl Future<Output = Result<(), CanError>> + Send;
    /// Receive the next frame.
    fn recv(&self) -> impl Future<Output = Result<CanAnyFrame, CanError>> + Send;
}
