//! ISO-TP (ISO 15765-2:2016) channels over CAN.
//!
//! Owns: the sans-IO channel state machine ([`IsoTpChannel`]: segmentation, reassembly, flow
//! control, BS/STmin, N_As/N_Bs/N_Cr), its configuration ([`IsoTpConfig`]), a thin tokio
//! driver that runs many channels over one [`CanPort`](crate::vehicle::can::CanPort)
//! ([`IsoTpMux`], [`IsoTpHandle`]), and a backend on the Linux kernel's `CAN_ISOTP` socket
//! with the same handle API ([`KernelIsoTpSocket`]).
//!
//! Does not own: the frame byte layout (`crate::wire::isotp`), CAN ports and their
//! backends (`crate::vehicle::can`), or UDS.

mod channel;
mod config;
mod driver;
mod kernel;

#[cfg(test)]
mod tests;

pub use channel::{ChannelStats, IsoTpChannel, IsoTpError, IsoTpEvent, functional_frame};
pub use config::{
    Addressing, ConfigError, DEFAULT_MAX_PDU_LEN, DEFAULT_MAX_WAIT_FRAMES, DEFAULT_TIMEOUT,
    FD_DEFAULT_PAD, FrameMode, IsoTpConfig,
};
pub use driver::{IsoTpHandle, IsoTpMux, MuxOptions};
pub use kernel::KernelIsoTpSocket;
