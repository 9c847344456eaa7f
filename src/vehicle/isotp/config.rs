//! Configuration of one ISO-TP channel, and its error type.
//!
//! Owns: [`IsoTpConfig`] (ids, addressing, frame mode, padding, our flow-control parameters,
//! timeouts, limits), its defaults and its validation ([`ConfigError`]).
//!
//! Does not own: the state machine (see `channel`) or how a config file maps onto it.

use crate::router::frame::{CanId, IsoTpAddr, fd_len_valid};
use crate::wire::isotp::StMin;
use std::time::Duration;

/// How ISO-TP frames are addressed on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Addressing {
    /// Normal (and normal fixed) addressing: the CAN id alone identifies the channel.
    Normal,
    /// Extended addressing: the first data byte of every frame is the target address
    /// (N_TA). `tx_ta` goes into frames we send; frames for us carry `rx_ta`.
    Extended { tx_ta: u8, rx_ta: u8 },
    /// Mixed addressing: the first data byte of every frame is the address extension (N_AE),
    /// the same in both directions.
    Mixed { ae: u8 },
}

impl Addressing {
    /// The address byte we put first in frames we send.
    pub const fn tx_ext(self) -> Option<u8> {
        match self {
            Addressing::Normal => None,
            Addressing::Extended { tx_ta, .. } => Some(tx_ta),
            Addressing::Mixed { ae } => Some(ae),
        }
    }

    /// The address byte frames for us carry first.
    pub const fn rx_ext(self) -> Option<u8> {
        match self {
            Addressing::Normal => None,
            Addressing::Extended { rx_ta, .. } => Some(rx_ta),
            Addressing::Mixed { ae } => Some(ae),
        }
    }
}

/// Which frames the channel sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameMode {
    /// Classic CAN: frames of at most 8 bytes.
    Classic,
    /// CAN FD: frames of up to `tx_dl` bytes (a valid FD length, 8..=64). Classic and FD
    /// frames are both accepted on receive.
    Fd { tx_dl: u8 },
}

/// Configuration of one ISO-TP channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoTpConfig {
    /// CAN id we transmit on (the ECU's request id for a tester channel).
    pub tx_id: CanId,
    /// CAN id we receive on (the ECU's response id for a tester channel).
    pub rx_id: CanId,
    /// Normal, extended or mixed addressing.
    pub addressing: Addressing,
    /// Classic CAN or CAN FD frames.
    pub frame_mode: FrameMode,
    /// Pad every frame we send to the full frame length with this byte (classic: 8 bytes;
    /// FD: 8 bytes for short frames). `None` sends frames of minimal length; FD frames
    /// longer than 8 bytes are always padded to a valid FD length, with 0xCC then.
    pub padding: Option<u8>,
    /// Block size we announce in our flow control (0: the sender never waits for another FC).
    pub block_size: u8,
    /// STmin we announce in our flow control.
    pub st_min: StMin,
    /// N_As / N_Ar: how long the CAN port may take to transmit one of our frames.
    pub n_as: Duration,
    /// N_Bs: how long we wait for a flow-control frame after a first frame or a block.
    pub n_bs: Duration,
    /// N_Cr: how long we wait for the next consecutive frame.
    pub n_cr: Duration,
    /// Largest PDU we send or accept; a peer announcing more gets FC OVERFLOW. Also bounds
    /// the reassembly buffer reserved per PDU.
    pub max_pdu_len: u32,
    /// How many FC WAIT frames in a row we accept before aborting a send (N_WFTmax).
    pub max_wait_frames: u16,
}

/// Default N_As, N_Bs and N_Cr (ISO 15765-2 performance requirement values).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Default largest PDU: what a 12-bit first frame can announce.
pub const DEFAULT_MAX_PDU_LEN: u32 = 4095;
/// Default N_WFTmax.
pub const DEFAULT_MAX_WAIT_FRAMES: u16 = 10;
/// FD padding byte when none is configured (as Linux uses).
pub const FD_DEFAULT_PAD: u8 = 0xCC;

impl IsoTpConfig {
    /// A classic, normal-addressing channel with the standard timeouts, BS 0, STmin 0, no
    /// padding and PDUs up to 4095 bytes.
    pub fn new(tx_id: CanId, rx_id: CanId) -> Self {
        IsoTpConfig {
            tx_id,
            rx_id,
            addressing: Addressing::Normal,
            frame_mode: FrameMode::Classic,
            padding: None,
            block_size: 0,
            st_min: StMin::ZERO,
            n_as: DEFAULT_TIMEOUT,
            n_bs: DEFAULT_TIMEOUT,
            n_cr: DEFAULT_TIMEOUT,
            max_pdu_len: DEFAULT_MAX_PDU_LEN,
            max_wait_frames: DEFAULT_MAX_WAIT_FRAMES,
        }
    }

    /// The channel's addresses as the router sees them.
    pub fn addr(&self) -> IsoTpAddr {
        IsoTpAddr {
            tx_id: self.tx_id,
            rx_id: self.rx_id,
            ext: self.addressing.rx_ext(),
        }
    }

    /// The frame length we transmit with (8 for classic).
    pub fn tx_dl(&self) -> usize {
        match self.frame_mode {
            FrameMode::Classic => 8,
            FrameMode::Fd { tx_dl } => tx_dl as usize,
        }
    }

    /// Whether the channel sends CAN FD frames.
    pub fn is_fd(&self) -> bool {
        matches!(self.frame_mode, FrameMode::Fd { .. })
    }

    /// Check the values that the state machine relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let FrameMode::Fd { tx_dl } = self.frame_mode
            && (tx_dl < 8 || !fd_len_valid(tx_dl as usize))
        {
            return Err(ConfigError::BadTxDl(tx_dl));
        }
        if self.max_pdu_len == 0 {
            return Err(ConfigError::ZeroMaxPduLen);
        }
        for (name, d) in [
            ("n_as", self.n_as),
            ("n_bs", self.n_bs),
            ("n_cr", self.n_cr),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroTimeout(name));
            }
        }
        Ok(())
    }
}

/// An invalid [`IsoTpConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// FD frame length not in 8, 12, 16, 20, 24, 32, 48, 64.
    #[error(
        "ISO-TP CAN FD tx_dl {0} is invalid: use one of 8, 12, 16, 20, 24, 32, 48, 64 (usually 64)"
    )]
    BadTxDl(u8),
    /// `max_pdu_len` of zero.
    #[error("ISO-TP max_pdu_len is 0: set it to at least 1 (4095 for classic diagnostics)")]
    ZeroMaxPduLen,
    /// A zero timeout would fail every transfer.
    #[error("ISO-TP timeout {0} is 0: use a positive duration (the standard value is 1 s)")]
    ZeroTimeout(&'static str),
}
