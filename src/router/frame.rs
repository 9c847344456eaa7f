//! Frame types carried by the data plane.
//!
//! Owns: the in-memory representation of everything the router moves — classic CAN frames,
//! CAN FD frames, ISO-TP PDUs and DoIP diagnostic messages — and the cheap accessors routing
//! decisions need (kind, routing id, payload length).
//!
//! Does not own: wire encodings (those live in `crate::wire`), nor any I/O.
//!
//! Zero-copy contract: CAN and CAN FD payloads are stored inline (8 and 64 bytes), so a raw
//! frame never touches the heap. PDU and DoIP payloads are `bytes::Bytes`, so cloning a frame
//! for fan-out only bumps a reference count.

use bytes::Bytes;
use std::fmt;

/// Maximum payload of a classic CAN frame.
pub const CAN_MAX_DLEN: usize = 8;
/// Maximum payload of a CAN FD frame.
pub const CANFD_MAX_DLEN: usize = 64;

/// A CAN identifier: 11-bit standard or 29-bit extended.
///
/// Stored as in SocketCAN: bit 31 marks an extended (EFF) identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CanId(u32);

impl CanId {
    /// Flag bit for 29-bit identifiers (SocketCAN's `CAN_EFF_FLAG`).
    pub const EFF_FLAG: u32 = 0x8000_0000;
    /// Largest standard identifier.
    pub const SFF_MAX: u32 = 0x7FF;
    /// Largest extended identifier.
    pub const EFF_MAX: u32 = 0x1FFF_FFFF;

    /// An 11-bit identifier; `None` when `id > 0x7FF`.
    pub const fn standard(id: u16) -> Option<Self> {
        if id as u32 <= Self::SFF_MAX {
            Some(CanId(id as u32))
        } else {
            None
        }
    }

    /// A 29-bit identifier; `None` when `id > 0x1FFF_FFFF`.
    pub const fn extended(id: u32) -> Option<Self> {
        if id <= Self::EFF_MAX {
            Some(CanId(id | Self::EFF_FLAG))
        } else {
            None
        }
    }

    /// Decode SocketCAN's `can_id` word (EFF flag in bit 31; RTR/ERR bits are ignored).
    pub const fn from_raw(raw: u32) -> Self {
        if raw & Self::EFF_FLAG != 0 {
            CanId((raw & Self::EFF_MAX) | Self::EFF_FLAG)
        } else {
            CanId(raw & Self::SFF_MAX)
        }
    }

    /// The identifier without the EFF flag.
    pub const fn id(self) -> u32 {
        self.0 & Self::EFF_MAX
    }

    /// Whether this is a 29-bit identifier.
    pub const fn is_extended(self) -> bool {
        self.0 & Self::EFF_FLAG != 0
    }

    /// SocketCAN's representation (EFF flag in bit 31).
    pub const fn raw(self) -> u32 {
        self.0
    }
}

impl fmt::Debug for CanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for CanId {
    /// candump style: 3 hex digits for standard ids, 8 for extended.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_extended() {
            write!(f, "{:08X}", self.id())
        } else {
            write!(f, "{:03X}", self.id())
        }
    }
}

/// A receive or creation timestamp in nanoseconds.
///
/// The epoch is the port's clock (realtime for SocketCAN, the process's monotonic clock for
/// virtual buses); only differences and ordering within one source are meaningful.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Microseconds, as used by candump logs and the tunnel's records.
    pub const fn as_micros(self) -> u64 {
        self.0 / 1_000
    }
}

/// Error building a frame from caller data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Payload longer than the frame type allows.
    #[error("payload of {len} bytes exceeds the {max}-byte maximum")]
    TooLong { len: usize, max: usize },
    /// CAN FD payload length not representable by a DLC (valid: 0..=8, 12, 16, 20, 24, 32, 48, 64).
    #[error("CAN FD payload of {0} bytes has no DLC (valid: 0-8, 12, 16, 20, 24, 32, 48, 64)")]
    BadFdLength(usize),
}

/// A classic CAN data frame (payload inline, never allocates).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CanFrame {
    id: CanId,
    len: u8,
    rtr: bool,
    data: [u8; CAN_MAX_DLEN],
    /// When the frame was received (or created, for frames we send).
    pub timestamp: Timestamp,
}

impl CanFrame {
    /// A data frame; fails when `data` is longer than 8 bytes.
    pub fn new(id: CanId, data: &[u8]) -> Result<Self, FrameError> {
        if data.len() > CAN_MAX_DLEN {
            return Err(FrameError::TooLong {
                len: data.len(),
                max: CAN_MAX_DLEN,
            });
        }
        let mut buf = [0u8; CAN_MAX_DLEN];
        buf[..data.len()].copy_from_slice(data);
        Ok(CanFrame {
            id,
            len: data.len() as u8,
            rtr: false,
            data: buf,
            timestamp: Timestamp::default(),
        })
    }

    /// A remote-transmission-request frame asking for `dlc` bytes.
    pub fn remote(id: CanId, dlc: u8) -> Result<Self, FrameError> {
        if dlc as usize > CAN_MAX_DLEN {
            return Err(FrameError::TooLong {
                len: dlc as usize,
                max: CAN_MAX_DLEN,
            });
        }
        Ok(CanFrame {
            id,
            len: dlc,
            rtr: true,
            data: [0; CAN_MAX_DLEN],
            timestamp: Timestamp::default(),
        })
    }

    /// The same frame with a timestamp.
    pub fn with_timestamp(mut self, ts: Timestamp) -> Self {
        self.timestamp = ts;
        self
    }

    pub fn id(&self) -> CanId {
        self.id
    }

    /// Whether this is a remote-transmission-request frame.
    pub fn is_remote(&self) -> bool {
        self.rtr
    }

    /// The payload (empty for RTR frames; `dlc()` tells the requested length).
    pub fn data(&self) -> &[u8] {
        if self.rtr {
            &[]
        } else {
            &self.data[..self.len as usize]
        }
    }

    /// The data length code (0..=8).
    pub fn dlc(&self) -> u8 {
        self.len
    }
}

impl fmt::Debug for CanFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#", self.id)?;
        if self.rtr {
            return write!(f, "R{}", self.len);
        }
        for b in self.data() {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

/// Valid CAN FD payload lengths above 8 (below 8 every length is valid).
const FD_LENGTHS: [usize; 7] = [12, 16, 20, 24, 32, 48, 64];

/// Whether `len` is a length a CAN FD frame can carry exactly.
pub fn fd_len_valid(len: usize) -> bool {
    len <= 8 || FD_LENGTHS.contains(&len)
}

/// The smallest valid CAN FD length that holds `len` bytes (for padding), or `None` above 64.
pub fn fd_len_round_up(len: usize) -> Option<usize> {
    if len <= 8 {
        Some(len)
    } else {
        FD_LENGTHS.iter().copied().find(|&l| l >= len)
    }
}

/// A CAN FD frame (payload inline, never allocates).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CanFdFrame {
    id: CanId,
    len: u8,
    /// Bit-rate switch: data phase at the FD data bitrate.
    pub brs: bool,
    /// Error-state indicator sent by the transmitter.
    pub esi: bool,
    data: [u8; CANFD_MAX_DLEN],
    /// When the frame was received (or created, for frames we send).
    pub timestamp: Timestamp,
}

impl CanFdFrame {
    /// An FD frame with BRS set; the length must be a valid FD length.
    pub fn new(id: CanId, data: &[u8]) -> Result<Self, FrameError> {
        if data.len() > CANFD_MAX_DLEN {
            return Err(FrameError::TooLong {
                len: data.len(),
                max: CANFD_MAX_DLEN,
            });
        }
        if !fd_len_valid(data.len()) {
            return Err(FrameError::BadFdLength(data.len()));
        }
        let mut buf = [0u8; CANFD_MAX_DLEN];
        buf[..data.len()].copy_from_slice(data);
        Ok(CanFdFrame {
            id,
            len: data.len() as u8,
            brs: true,
            esi: false,
            data: buf,
            timestamp: Timestamp::default(),
        })
    }

    /// The same frame with a timestamp.
    pub fn with_timestamp(mut self, ts: Timestamp) -> Self {
        self.timestamp = ts;
        self
    }

    pub fn id(&self) -> CanId {
        self.id
    }

    pub fn data(&self) -> &[u8] {
        &self.data[..self.len as usize]
    }
}

impl fmt::Debug for CanFdFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = (self.brs as u8) | ((self.esi as u8) << 1);
        write!(f, "{}##{flags:X}", self.id)?;
        for b in self.data() {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

/// ISO-TP addressing of one channel, as seen from the gateway: the id we transmit on and the
/// id we receive on, plus the extension byte for extended/mixed addressing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IsoTpAddr {
    /// CAN id the gateway transmits on (the ECU's request id for a tester channel).
    pub tx_id: CanId,
    /// CAN id the gateway receives on (the ECU's response id for a tester channel).
    pub rx_id: CanId,
    /// Extended-addressing target byte / mixed-addressing address extension, if any.
    pub ext: Option<u8>,
}

/// A complete ISO-TP PDU (a UDS request or response), payload shared, never copied.
#[derive(Clone, PartialEq, Eq)]
pub struct IsoTpPdu {
    /// The channel the PDU belongs to.
    pub addr: IsoTpAddr,
    /// The reassembled payload.
    pub data: Bytes,
    /// When the last frame of the PDU was received (or when it was created).
    pub timestamp: Timestamp,
}

impl fmt::Debug for IsoTpPdu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IsoTpPdu({}->{}, {} bytes)",
            self.addr.tx_id,
            self.addr.rx_id,
            self.data.len()
        )
    }
}

/// A DoIP diagnostic message (payload type 0x8001): source and target logical addresses and
/// the UDS payload, shared, never copied.
#[derive(Clone, PartialEq, Eq)]
pub struct DoipMessage {
    pub source: u16,
    pub target: u16,
    pub data: Bytes,
    pub timestamp: Timestamp,
}

impl fmt::Debug for DoipMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DoipMessage({:04X}->{:04X}, {} bytes)",
            self.source,
            self.target,
            self.data.len()
        )
    }
}

/// What kind of frame a [`Frame`] is; used by route selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum FrameKind {
    Can = 0,
    CanFd = 1,
    IsoTp = 2,
    Doip = 3,
}

impl FrameKind {
    pub const ALL: [FrameKind; 4] = [
        FrameKind::Can,
        FrameKind::CanFd,
        FrameKind::IsoTp,
        FrameKind::Doip,
    ];

    /// The name used in configuration files.
    pub const fn name(self) -> &'static str {
        match self {
            FrameKind::Can => "can",
            FrameKind::CanFd => "canfd",
            FrameKind::IsoTp => "isotp",
            FrameKind::Doip => "doip",
        }
    }

    /// Parse a configuration name (`can`, `canfd`, `isotp`, `doip`).
    pub fn from_name(s: &str) -> Option<Self> {
        FrameKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Anything the router moves.
#[derive(Clone, PartialEq, Eq)]
pub enum Frame {
    Can(CanFrame),
    CanFd(CanFdFrame),
    IsoTp(IsoTpPdu),
    Doip(DoipMessage),
}

impl Frame {
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Can(_) => FrameKind::Can,
            Frame::CanFd(_) => FrameKind::CanFd,
            Frame::IsoTp(_) => FrameKind::IsoTp,
            Frame::Doip(_) => FrameKind::Doip,
        }
    }

    /// The number routes filter on: the CAN id (without the EFF flag) for CAN and CAN FD
    /// frames, the receive id of the channel for ISO-TP PDUs, and the target logical address
    /// for DoIP messages.
    pub fn routing_id(&self) -> u32 {
        match self {
            Frame::Can(f) => f.id().id(),
            Frame::CanFd(f) => f.id().id(),
            Frame::IsoTp(p) => p.addr.rx_id.id(),
            Frame::Doip(m) => m.target as u32,
        }
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        match self {
            Frame::Can(f) => f.data(),
            Frame::CanFd(f) => f.data(),
            Frame::IsoTp(p) => &p.data,
            Frame::Doip(m) => &m.data,
        }
    }

    /// Payload length in bytes (what byte counters count).
    pub fn payload_len(&self) -> usize {
        self.payload().len()
    }

    pub fn timestamp(&self) -> Timestamp {
        match self {
            Frame::Can(f) => f.timestamp,
            Frame::CanFd(f) => f.timestamp,
            Frame::IsoTp(p) => p.timestamp,
            Frame::Doip(m) => m.timestamp,
        }
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frame::Can(x) => x.fmt(f),
            Frame::CanFd(x) => x.fmt(f),
            Frame::IsoTp(x) => x.fmt(f),
            Frame::Doip(x) => x.fmt(f),
        }
    }
}

impl From<CanFrame> for Frame {
    fn from(f: CanFrame) -> Self {
        Frame::Can(f)
    }
}
impl From<CanFdFrame> for Frame {
    fn from(f: CanFdFrame) -> Self {
        Frame::CanFd(f)
    }
}
impl From<IsoTpPdu> for Frame {
    fn from(p: IsoTpPdu) -> Self {
        Frame::IsoTp(p)
    }
}
impl From<DoipMessage> for Frame {
    fn from(m: DoipMessage) -> Self {
        Frame::Doip(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn can_id_ranges() {
        assert_eq!(CanId::standard(0x7FF).unwrap().id(), 0x7FF);
        assert!(CanId::standard(0x800).is_none());
        let e = CanId::extended(0x18DA_F110).unwrap();
        assert!(e.is_extended());
        assert_eq!(e.id(), 0x18DA_F110);
        assert_eq!(e.raw(), 0x98DA_F110);
        assert!(CanId::extended(0x2000_0000).is_none());
        assert_eq!(CanId::from_raw(e.raw()), e);
        assert_eq!(format!("{e}"), "18DAF110");
        assert_eq!(format!("{}", CanId::standard(0x7E8).unwrap()), "7E8");
    }

    #[test]
    fn can_frame_limits() {
        let id = CanId::standard(0x123).unwrap();
        assert!(CanFrame::new(id, &[0; 9]).is_err());
        let f = CanFrame::new(id, &[1, 2, 3]).unwrap();
        assert_eq!(f.data(), &[1, 2, 3]);
        assert_eq!(format!("{f:?}"), "123#010203");
        let r = CanFrame::remote(id, 4).unwrap();
        assert!(r.data().is_empty());
        assert_eq!(r.dlc(), 4);
    }

    #[test]
    fn fd_lengths() {
        let id = CanId::standard(0x1).unwrap();
        assert!(CanFdFrame::new(id, &[0; 12]).is_ok());
        assert_eq!(
            CanFdFrame::new(id, &[0; 13]),
            Err(FrameError::BadFdLength(13))
        );
        assert!(CanFdFrame::new(id, &[0; 65]).is_err());
        assert_eq!(fd_len_round_up(13), Some(16));
        assert_eq!(fd_len_round_up(49), Some(64));
        assert_eq!(fd_len_round_up(65), None);
    }

    #[test]
    fn frame_is_small() {
        // Raw frames live inline; keep the enum within two cache lines.
        assert!(std::mem::size_of::<Frame>() <= 96);
    }
}
