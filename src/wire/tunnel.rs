//! The tunnel wire format (`obdgw.tunnel.v1`): binary batches of records, and JSON control
//! messages.
//!
//! Owns: the byte layout of a batch (a 20-byte header and records) and of every record kind,
//! as checked views ([`Batch`], [`Record`]) and parsed forms ([`BatchHeader`], [`RecordRepr`])
//! with `parse` / `emit` / `buffer_len`; the control messages as a serde enum ([`Control`]);
//! error codes ([`ErrorCode`]); protocol limits ([`Limits`]).
//!
//! Does not own: sequencing, acks, replay, keepalive timing (see `crate::tunnel::session`),
//! or any I/O. The specification is `docs/tunnel-protocol.md`; the golden vectors at the end
//! of this file are the examples printed there.
//!
//! Contracts (as in smoltcp):
//! - `Batch::new_checked` / `Record::new_checked` check lengths once; afterwards no accessor
//!   panics. No untrusted byte is indexed outside a checked view.
//! - `parse` never panics and returns a typed [`WireError`] naming the record and the reason.
//! - Payloads (`Bytes`) are slices of the received message (`Bytes::slice`): no copy.
//! - `emit` writes exactly `buffer_len()` bytes into a buffer of at least that size.

use crate::router::frame::{
    CANFD_MAX_DLEN, CanFdFrame, CanFrame, CanId, DoipMessage, Timestamp, fd_len_valid,
};
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The protocol version this module speaks (batch header byte 0, hello `version`).
pub const VERSION: u8 = 1;
/// The websocket subprotocol name (`Sec-WebSocket-Protocol`).
pub const SUBPROTOCOL: &str = "obdgw.tunnel.v1";
/// Bytes in a batch header.
pub const BATCH_HEADER_LEN: usize = 20;
/// Bytes in a record header.
pub const RECORD_HEADER_LEN: usize = 8;
/// Most records one batch can carry (the count is 16 bits).
pub const MAX_RECORDS_PER_BATCH: usize = u16::MAX as usize;

/// Batch flag: the first batch the sender wrote after it learned of the current peer
/// attachment (`peer` message). Until a receiver sees it, it discards records of unflagged
/// batches: they were written toward an earlier attachment and will be replayed.
pub const BATCH_FLAG_RESUME: u8 = 0x01;
/// Batch flag: the batch carries records retransmitted after a resume (informational).
pub const BATCH_FLAG_REPLAY: u8 = 0x02;
/// Record flag (raw CAN / CAN FD kinds): the frame was transmitted by the gateway's port
/// rather than received from the bus.
pub const RECORD_FLAG_TX: u8 = 0x01;

/// CAN id word: 29-bit identifier.
const ID_EFF: u32 = 0x8000_0000;
/// CAN id word: remote transmission request (classic CAN only).
const ID_RTR: u32 = 0x4000_0000;
/// CAN id word: reserved bit (SocketCAN's error flag); must be zero.
const ID_RESERVED: u32 = 0x2000_0000;

/// Byte ranges of the headers (private, as in smoltcp).
mod field {
    use std::ops::Range;
    pub const VERSION: usize = 0;
    pub const FLAGS: usize = 1;
    pub const COUNT: Range<usize> = 2..4;
    pub const FIRST_SEQ: Range<usize> = 4..12;
    pub const ACK: Range<usize> = 12..20;

    pub const CHANNEL: Range<usize> = 0..2;
    pub const KIND: usize = 2;
    pub const RFLAGS: usize = 3;
    pub const LENGTH: Range<usize> = 4..8;
}

/// Why bytes are not a valid batch or record. Flat and cheap; names the record (its index in
/// the batch and its byte offset) so a bad peer can be diagnosed from the log line alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("tunnel batch of {len} bytes is shorter than the 20-byte header")]
    ShortHeader { len: usize },
    #[error("tunnel batch version {0} is not supported (this endpoint speaks version 1)")]
    Version(u8),
    #[error("tunnel batch of {len} bytes exceeds the negotiated {max}-byte limit")]
    BatchTooLarge { len: usize, max: u32 },
    #[error(
        "tunnel record {index} at byte {offset}: truncated (needs {need} bytes, {have} remain)"
    )]
    Truncated {
        index: u16,
        offset: usize,
        need: usize,
        have: usize,
    },
    #[error("tunnel record {index}: unknown record kind 0x{kind:02x}")]
    UnknownKind { index: u16, kind: u8 },
    #[error("tunnel record {index}: {len}-byte body exceeds the negotiated {max}-byte limit")]
    RecordTooLarge { index: u16, len: usize, max: u32 },
    #[error("tunnel record {index} ({kind}): {reason}")]
    BadBody {
        index: u16,
        kind: RecordKind,
        reason: &'static str,
    },
    #[error("tunnel batch: {extra} bytes follow the last of its {count} records")]
    TrailingBytes { count: u16, extra: usize },
    #[error("tunnel batch: invalid sequence numbers (first {first}, {count} records)")]
    BadSequence { first: u64, count: u16 },
}

/// Negotiated size limits. Each endpoint advertises the limits it accepts in its hello; a
/// sender keeps to the peer's limits, a receiver enforces its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest record body (bytes after the 8-byte record header) this endpoint accepts.
    pub max_record: u32,
    /// Largest batch (whole binary message) this endpoint accepts.
    pub max_batch: u32,
    /// Most bytes of unacknowledged records this endpoint keeps for replay (informational to
    /// the peer: it tells how far the sender may run ahead of acks).
    pub max_in_flight: u32,
}

impl Limits {
    /// Hard ceiling for any advertised limit (16 MiB).
    pub const HARD_MAX: u32 = 16 * 1024 * 1024;
    /// Smallest `max_record` an endpoint may advertise (a 4095-byte ISO-TP PDU plus slack).
    pub const MIN_RECORD: u32 = 4 * 1024 + 16;

    /// Whether the limits are inside the protocol's bounds and self-consistent: a batch must
    /// hold at least one maximal record.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.max_record < Self::MIN_RECORD {
            return Err("max_record is below 4112 bytes");
        }
        if self.max_record > Self::HARD_MAX
            || self.max_batch > Self::HARD_MAX
            || self.max_in_flight > 4 * Self::HARD_MAX
        {
            return Err("a limit exceeds the 16 MiB protocol ceiling (64 MiB for max_in_flight)");
        }
        if (self.max_batch as usize)
            < BATCH_HEADER_LEN + RECORD_HEADER_LEN + self.max_record as usize
        {
            return Err("max_batch cannot hold one record of max_record bytes");
        }
        Ok(())
    }

    /// The limits a sender keeps to: the smaller of each.
    pub fn min(&self, other: &Limits) -> Limits {
        Limits {
            max_record: self.max_record.min(other.max_record),
            max_batch: self.max_batch.min(other.max_batch),
            max_in_flight: self.max_in_flight.min(other.max_in_flight),
        }
    }
}

impl Default for Limits {
    /// 1 MiB records, 2 MiB batches, 4 MiB in flight.
    fn default() -> Self {
        Limits {
            max_record: 1024 * 1024,
            max_batch: 2 * 1024 * 1024,
            max_in_flight: 4 * 1024 * 1024,
        }
    }
}

/// Record kinds (record header byte 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// Classic CAN frame with timestamp.
    Can = 0x01,
    /// CAN FD frame with timestamp.
    CanFd = 0x02,
    /// A complete ISO-TP PDU on the channel's addressing.
    IsoTp = 0x03,
    /// A DoIP diagnostic message (payload type 0x8001): source, target, user data.
    Doip = 0x04,
    /// A channel-scoped error, ordered with the channel's data.
    Error = 0x05,
}

impl RecordKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x01 => RecordKind::Can,
            0x02 => RecordKind::CanFd,
            0x03 => RecordKind::IsoTp,
            0x04 => RecordKind::Doip,
            0x05 => RecordKind::Error,
            _ => return None,
        })
    }

    /// Bytes of the fixed part of the body (before variable data).
    pub const fn fixed_len(self) -> usize {
        match self {
            RecordKind::Can | RecordKind::CanFd => 13,
            RecordKind::IsoTp => 8,
            RecordKind::Doip => 12,
            RecordKind::Error => 2,
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordKind::Can => "can",
            RecordKind::CanFd => "canfd",
            RecordKind::IsoTp => "isotp",
            RecordKind::Doip => "doip",
            RecordKind::Error => "error",
        })
    }
}

fn be16(b: &[u8]) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(b);
    u16::from_be_bytes(a)
}
fn be32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_be_bytes(a)
}
fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_be_bytes(a)
}

/// A checked view of a batch header over any buffer.
#[derive(Debug, Clone)]
pub struct Batch<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Batch<T> {
    /// Wrap without checking; accessors may panic on a short buffer. Prefer `new_checked`.
    pub const fn new_unchecked(buffer: T) -> Self {
        Batch { buffer }
    }

    /// Wrap after checking the header fits and the version is 1.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = Batch::new_unchecked(buffer);
        b.check_len()?;
        if b.version() != VERSION {
            return Err(WireError::Version(b.version()));
        }
        Ok(b)
    }

    /// Whether the header fits.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < BATCH_HEADER_LEN {
            Err(WireError::ShortHeader { len })
        } else {
            Ok(())
        }
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    pub fn record_count(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::COUNT])
    }
    pub fn first_seq(&self) -> u64 {
        be64(&self.buffer.as_ref()[field::FIRST_SEQ])
    }
    pub fn ack(&self) -> u64 {
        be64(&self.buffer.as_ref()[field::ACK])
    }
    /// The bytes after the header (the records).
    pub fn records(&self) -> &[u8] {
        &self.buffer.as_ref()[BATCH_HEADER_LEN..]
    }
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Batch<T> {
    pub fn set_version(&mut self, v: u8) {
        self.buffer.as_mut()[field::VERSION] = v;
    }
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v;
    }
    pub fn set_record_count(&mut self, v: u16) {
        self.buffer.as_mut()[field::COUNT].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_first_seq(&mut self, v: u64) {
        self.buffer.as_mut()[field::FIRST_SEQ].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_ack(&mut self, v: u64) {
        self.buffer.as_mut()[field::ACK].copy_from_slice(&v.to_be_bytes());
    }
}

/// A checked view of one record (header and body) over any buffer that starts at the record.
#[derive(Debug, Clone)]
pub struct Record<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Record<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Record { buffer }
    }

    /// Wrap after checking the header and the body it announces fit the buffer.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let r = Record::new_unchecked(buffer);
        r.check_len()?;
        Ok(r)
    }

    /// Whether the header and the announced body fit (the buffer may hold more after it).
    pub fn check_len(&self) -> Result<(), WireError> {
        let have = self.buffer.as_ref().len();
        if have < RECORD_HEADER_LEN {
            return Err(WireError::Truncated {
                index: 0,
                offset: 0,
                need: RECORD_HEADER_LEN,
                have,
            });
        }
        let need = RECORD_HEADER_LEN + self.length() as usize;
        if have < need {
            return Err(WireError::Truncated {
                index: 0,
                offset: 0,
                need,
                have,
            });
        }
        Ok(())
    }

    pub fn channel(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHANNEL])
    }
    pub fn kind_raw(&self) -> u8 {
        self.buffer.as_ref()[field::KIND]
    }
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::RFLAGS]
    }
    /// Body length in bytes.
    pub fn length(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::LENGTH])
    }
    /// Header plus body.
    pub fn total_len(&self) -> usize {
        RECORD_HEADER_LEN + self.length() as usize
    }
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[RECORD_HEADER_LEN..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Record<T> {
    pub fn set_channel(&mut self, v: u16) {
        self.buffer.as_mut()[field::CHANNEL].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_kind(&mut self, v: u8) {
        self.buffer.as_mut()[field::KIND] = v;
    }
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::RFLAGS] = v;
    }
    pub fn set_length(&mut self, v: u32) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }
    /// The body, mutable (length taken from the header).
    pub fn body_mut(&mut self) -> &mut [u8] {
        let end = self.total_len();
        &mut self.buffer.as_mut()[RECORD_HEADER_LEN..end]
    }
}

/// The parsed batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub flags: u8,
    /// Sequence number of the first record; the records are numbered consecutively. In an
    /// ack-only batch (no records) it is the number the sender will assign next.
    pub first_seq: u64,
    /// Cumulative ack: the highest sequence number received in order from the peer (0: none).
    pub ack: u64,
    pub record_count: u16,
}

impl BatchHeader {
    pub const fn buffer_len(&self) -> usize {
        BATCH_HEADER_LEN
    }

    /// Parse and check a header view. Sequence numbers start at 1, so a batch with records
    /// must have `first_seq >= 1` and its last number must not overflow.
    pub fn parse<T: AsRef<[u8]>>(b: &Batch<T>) -> Result<Self, WireError> {
        b.check_len()?;
        if b.version() != VERSION {
            return Err(WireError::Version(b.version()));
        }
        let h = BatchHeader {
            flags: b.flags(),
            first_seq: b.first_seq(),
            ack: b.ack(),
            record_count: b.record_count(),
        };
        if h.record_count > 0
            && (h.first_seq == 0 || h.first_seq.checked_add(h.record_count as u64 - 1).is_none())
        {
            return Err(WireError::BadSequence {
                first: h.first_seq,
                count: h.record_count,
            });
        }
        Ok(h)
    }

    /// Write the header (version 1) into `b`, which must hold at least 20 bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, b: &mut Batch<T>) {
        b.set_version(VERSION);
        b.set_flags(self.flags);
        b.set_record_count(self.record_count);
        b.set_first_seq(self.first_seq);
        b.set_ack(self.ack);
    }

    /// Sequence number of the last record (`None` for an ack-only batch).
    pub fn last_seq(&self) -> Option<u64> {
        if self.record_count == 0 {
            None
        } else {
            self.first_seq.checked_add(self.record_count as u64 - 1)
        }
    }
}

/// An ISO-TP PDU record: the channel fixes the addressing, the record carries the payload.
#[derive(Clone, PartialEq, Eq)]
pub struct PduRecord {
    pub timestamp: Timestamp,
    pub data: Bytes,
}

impl fmt::Debug for PduRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PduRecord({} bytes @{})",
            self.data.len(),
            self.timestamp.0
        )
    }
}

/// A channel-scoped error record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorRecord {
    pub code: ErrorCode,
    /// Human-readable detail (UTF-8 on the wire).
    pub message: String,
}

/// The kind-specific content of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordBody {
    Can(CanFrame),
    CanFd(CanFdFrame),
    IsoTp(PduRecord),
    Doip(DoipMessage),
    Error(ErrorRecord),
}

impl RecordBody {
    pub fn kind(&self) -> RecordKind {
        match self {
            RecordBody::Can(_) => RecordKind::Can,
            RecordBody::CanFd(_) => RecordKind::CanFd,
            RecordBody::IsoTp(_) => RecordKind::IsoTp,
            RecordBody::Doip(_) => RecordKind::Doip,
            RecordBody::Error(_) => RecordKind::Error,
        }
    }

    /// Bytes of the body on the wire.
    pub fn body_len(&self) -> usize {
        self.kind().fixed_len()
            + match self {
                RecordBody::Can(f) => f.data().len(),
                RecordBody::CanFd(f) => f.data().len(),
                RecordBody::IsoTp(p) => p.data.len(),
                RecordBody::Doip(m) => m.data.len(),
                RecordBody::Error(e) => e.message.len(),
            }
    }
}

/// A parsed record: the channel it belongs to, its flags and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRepr {
    pub channel: u16,
    /// Record flags (bit 0: TX for CAN kinds; other bits are sent as zero and ignored).
    pub flags: u8,
    pub body: RecordBody,
}

impl RecordRepr {
    /// Bytes this record takes on the wire (header plus body).
    pub fn buffer_len(&self) -> usize {
        RECORD_HEADER_LEN + self.body.body_len()
    }

    /// Parse the record at the start of `buf` (`base` is the received message, so payloads
    /// are zero-copy slices of it; `start` is the record's offset in `base`). Returns the
    /// record and its total length. `index` only labels errors.
    pub fn parse_at(
        base: &Bytes,
        start: usize,
        index: u16,
        max_record: u32,
    ) -> Result<(Self, usize), WireError> {
        let rest = base.get(start..).unwrap_or(&[]);
        let view = Record::new_unchecked(rest);
        if rest.len() < RECORD_HEADER_LEN {
            return Err(WireError::Truncated {
                index,
                offset: start,
                need: RECORD_HEADER_LEN,
                have: rest.len(),
            });
        }
        let kind_raw = view.kind_raw();
        let kind = RecordKind::from_u8(kind_raw).ok_or(WireError::UnknownKind {
            index,
            kind: kind_raw,
        })?;
        let len = view.length() as usize;
        if len > max_record as usize {
            return Err(WireError::RecordTooLarge {
                index,
                len,
                max: max_record,
            });
        }
        let need = RECORD_HEADER_LEN + len;
        if rest.len() < need {
            return Err(WireError::Truncated {
                index,
                offset: start,
                need,
                have: rest.len(),
            });
        }
        // From here `view` is checked: the body is in bounds.
        let body = view.body();
        let bad = |reason| WireError::BadBody {
            index,
            kind,
            reason,
        };
        if body.len() < kind.fixed_len() {
            return Err(bad("body shorter than the kind's fixed fields"));
        }
        let body_start = start + RECORD_HEADER_LEN;
        let var = body_start + kind.fixed_len()..body_start + len;
        let parsed = match kind {
            RecordKind::Can => {
                let ts = Timestamp(be64(&body[0..8]));
                let word = be32(&body[8..12]);
                let dlc = body[12];
                let data = &body[13..];
                let id = can_id_from_word(word, true).ok_or(bad("invalid CAN id word"))?;
                let frame = if word & ID_RTR != 0 {
                    if !data.is_empty() {
                        return Err(bad("remote frame carries data"));
                    }
                    CanFrame::remote(id, dlc).map_err(|_| bad("DLC above 8"))?
                } else {
                    if dlc as usize != data.len() {
                        return Err(bad("DLC differs from the data length"));
                    }
                    CanFrame::new(id, data).map_err(|_| bad("more than 8 data bytes"))?
                };
                RecordBody::Can(frame.with_timestamp(ts))
            }
            RecordKind::CanFd => {
                let ts = Timestamp(be64(&body[0..8]));
                let word = be32(&body[8..12]);
                let fdflags = body[12];
                let data = &body[13..];
                if word & ID_RTR != 0 {
                    return Err(bad("CAN FD frames have no RTR"));
                }
                let id = can_id_from_word(word, false).ok_or(bad("invalid CAN id word"))?;
                if fdflags & !0x03 != 0 {
                    return Err(bad("reserved CAN FD flag bits set"));
                }
                if !fd_len_valid(data.len()) || data.len() > CANFD_MAX_DLEN {
                    return Err(bad("data length is not a CAN FD length"));
                }
                let mut f = CanFdFrame::new(id, data)
                    .map_err(|_| bad("data length is not a CAN FD length"))?;
                f.brs = fdflags & 0x01 != 0;
                f.esi = fdflags & 0x02 != 0;
                RecordBody::CanFd(f.with_timestamp(ts))
            }
            RecordKind::IsoTp => RecordBody::IsoTp(PduRecord {
                timestamp: Timestamp(be64(&body[0..8])),
                data: base.slice(var),
            }),
            RecordKind::Doip => RecordBody::Doip(DoipMessage {
                timestamp: Timestamp(be64(&body[0..8])),
                source: be16(&body[8..10]),
                target: be16(&body[10..12]),
                data: base.slice(var),
            }),
            RecordKind::Error => {
                let code = ErrorCode(be16(&body[0..2]));
                let message = std::str::from_utf8(&body[2..])
                    .map_err(|_| bad("error message is not UTF-8"))?
                    .to_owned();
                RecordBody::Error(ErrorRecord { code, message })
            }
        };
        Ok((
            RecordRepr {
                channel: view.channel(),
                flags: view.flags(),
                body: parsed,
            },
            need,
        ))
    }

    /// Parse a single record occupying all of `buf`.
    pub fn parse(buf: &Bytes, max_record: u32) -> Result<Self, WireError> {
        let (r, used) = Self::parse_at(buf, 0, 0, max_record)?;
        if used != buf.len() {
            return Err(WireError::TrailingBytes {
                count: 1,
                extra: buf.len() - used,
            });
        }
        Ok(r)
    }

    /// Write the record into `buf` (at least `buffer_len()` bytes). Body lengths above
    /// `u32::MAX` cannot occur: callers keep records within `Limits::HARD_MAX`.
    pub fn emit(&self, buf: &mut [u8]) {
        let body_len = self.body.body_len();
        let mut rec = Record::new_unchecked(&mut buf[..RECORD_HEADER_LEN + body_len]);
        rec.set_channel(self.channel);
        rec.set_kind(self.body.kind() as u8);
        rec.set_flags(self.flags);
        rec.set_length(body_len as u32);
        let b = rec.body_mut();
        match &self.body {
            RecordBody::Can(f) => {
                b[0..8].copy_from_slice(&f.timestamp.0.to_be_bytes());
                let mut word = can_id_word(f.id());
                if f.is_remote() {
                    word |= ID_RTR;
                }
                b[8..12].copy_from_slice(&word.to_be_bytes());
                b[12] = f.dlc();
                b[13..].copy_from_slice(f.data());
            }
            RecordBody::CanFd(f) => {
                b[0..8].copy_from_slice(&f.timestamp.0.to_be_bytes());
                b[8..12].copy_from_slice(&can_id_word(f.id()).to_be_bytes());
                b[12] = (f.brs as u8) | ((f.esi as u8) << 1);
                b[13..].copy_from_slice(f.data());
            }
            RecordBody::IsoTp(p) => {
                b[0..8].copy_from_slice(&p.timestamp.0.to_be_bytes());
                b[8..].copy_from_slice(&p.data);
            }
            RecordBody::Doip(m) => {
                b[0..8].copy_from_slice(&m.timestamp.0.to_be_bytes());
                b[8..10].copy_from_slice(&m.source.to_be_bytes());
                b[10..12].copy_from_slice(&m.target.to_be_bytes());
                b[12..].copy_from_slice(&m.data);
            }
            RecordBody::Error(e) => {
                b[0..2].copy_from_slice(&e.code.0.to_be_bytes());
                b[2..].copy_from_slice(e.message.as_bytes());
            }
        }
    }
}

/// The CAN id word of the wire: bit 31 EFF, bit 30 RTR (set by the caller), bit 29 reserved.
fn can_id_word(id: CanId) -> u32 {
    if id.is_extended() {
        id.id() | ID_EFF
    } else {
        id.id()
    }
}

/// Decode a CAN id word; `None` when reserved bits are set or a standard id exceeds 11 bits.
fn can_id_from_word(word: u32, rtr_allowed: bool) -> Option<CanId> {
    if word & ID_RESERVED != 0 || (!rtr_allowed && word & ID_RTR != 0) {
        return None;
    }
    let id = word & CanId::EFF_MAX;
    if word & ID_EFF != 0 {
        CanId::extended(id)
    } else {
        u16::try_from(id).ok().and_then(CanId::standard)
    }
}

/// Parse a whole batch: the header, then exactly `record_count` records filling the message.
///
/// Records are appended to `out` (reuse one `Vec` to avoid an allocation per batch); on any
/// error `out` is restored to its previous length, so a batch is taken whole or not at all.
pub fn parse_batch(
    msg: &Bytes,
    limits: &Limits,
    out: &mut Vec<RecordRepr>,
) -> Result<BatchHeader, WireError> {
    if msg.len() > limits.max_batch as usize {
        return Err(WireError::BatchTooLarge {
            len: msg.len(),
            max: limits.max_batch,
        });
    }
    let header = BatchHeader::parse(&Batch::new_unchecked(&msg[..]))?;
    let mark = out.len();
    let mut offset = BATCH_HEADER_LEN;
    for index in 0..header.record_count {
        match RecordRepr::parse_at(msg, offset, index, limits.max_record) {
            Ok((r, used)) => {
                out.push(r);
                offset += used;
            }
            Err(e) => {
                out.truncate(mark);
                return Err(e);
            }
        }
    }
    if offset != msg.len() {
        out.truncate(mark);
        return Err(WireError::TrailingBytes {
            count: header.record_count,
            extra: msg.len() - offset,
        });
    }
    Ok(header)
}

/// Bytes a batch of these records takes.
pub fn batch_len<'a>(records: impl IntoIterator<Item = &'a RecordRepr>) -> usize {
    BATCH_HEADER_LEN + records.into_iter().map(|r| r.buffer_len()).sum::<usize>()
}

/// Emit a batch (header then records) into `out`, appending. `header.record_count` is set
/// from the records given (at most 65535: extra records are a caller bug and are not emitted;
/// the returned count says how many were written).
pub fn emit_batch<'a>(
    flags: u8,
    first_seq: u64,
    ack: u64,
    records: impl IntoIterator<Item = &'a RecordRepr> + Clone,
    out: &mut BytesMut,
) -> u16 {
    let start = out.len();
    let mut total = BATCH_HEADER_LEN;
    let mut count: u16 = 0;
    for r in records.clone() {
        if count == u16::MAX {
            break;
        }
        total += r.buffer_len();
        count += 1;
    }
    out.resize(start + total, 0);
    let buf = &mut out[start..];
    BatchHeader {
        flags,
        first_seq,
        ack,
        record_count: count,
    }
    .emit(&mut Batch::new_unchecked(&mut buf[..BATCH_HEADER_LEN]));
    let mut off = BATCH_HEADER_LEN;
    for r in records.into_iter().take(count as usize) {
        let n = r.buffer_len();
        r.emit(&mut buf[off..off + n]);
        off += n;
    }
    count
}

// ---------------------------------------------------------------------------------------
// Control messages (JSON text frames)
// ---------------------------------------------------------------------------------------

/// A numeric error code (see the table in `docs/tunnel-protocol.md`). Unknown codes are
/// kept, not rejected, so newer peers can add codes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    // 1xx: session and protocol (fatal: the connection is closed after the error)
    pub const BAD_HELLO: ErrorCode = ErrorCode(100);
    pub const UNSUPPORTED_VERSION: ErrorCode = ErrorCode(101);
    pub const AUTH_FAILED: ErrorCode = ErrorCode(102);
    pub const UNKNOWN_SESSION: ErrorCode = ErrorCode(103);
    pub const ROLE_TAKEN: ErrorCode = ErrorCode(104);
    pub const MALFORMED_BATCH: ErrorCode = ErrorCode(110);
    pub const UNKNOWN_RECORD_KIND: ErrorCode = ErrorCode(111);
    pub const RECORD_TOO_LARGE: ErrorCode = ErrorCode(112);
    pub const BATCH_TOO_LARGE: ErrorCode = ErrorCode(113);
    pub const SEQUENCE_GAP: ErrorCode = ErrorCode(114);
    pub const RESUME_IMPOSSIBLE: ErrorCode = ErrorCode(115);
    pub const BAD_ACK: ErrorCode = ErrorCode(116);
    pub const MALFORMED_CONTROL: ErrorCode = ErrorCode(120);
    pub const UNSUPPORTED_MESSAGE: ErrorCode = ErrorCode(121);
    pub const DEAD_PEER: ErrorCode = ErrorCode(130);
    // 2xx: channels (not fatal)
    pub const UNKNOWN_CHANNEL: ErrorCode = ErrorCode(200);
    pub const CHANNEL_EXISTS: ErrorCode = ErrorCode(201);
    pub const BAD_CHANNEL_PARAMS: ErrorCode = ErrorCode(202);
    pub const PORT_UNAVAILABLE: ErrorCode = ErrorCode(203);
    pub const TARGET_UNREACHABLE: ErrorCode = ErrorCode(204);
    pub const ISOTP_TIMEOUT: ErrorCode = ErrorCode(205);
    pub const ISOTP_PROTOCOL: ErrorCode = ErrorCode(206);
    pub const DOIP_NACK: ErrorCode = ErrorCode(207);
    pub const CAN_BUS_OFF: ErrorCode = ErrorCode(208);
    pub const SEND_FAILED: ErrorCode = ErrorCode(209);
    pub const POLICY_REFUSED: ErrorCode = ErrorCode(210);
    // 3xx: limits
    pub const SESSION_LIMIT: ErrorCode = ErrorCode(300);
    pub const RATE_LIMIT: ErrorCode = ErrorCode(301);
    pub const REPLAY_OVERFLOW: ErrorCode = ErrorCode(302);
    // 4xx: session lifecycle
    pub const PEER_GONE: ErrorCode = ErrorCode(400);
    pub const SESSION_ENDED: ErrorCode = ErrorCode(401);
    pub const INTERNAL: ErrorCode = ErrorCode(500);

    /// The code's name as in the specification (`"unknown"` for codes this build lacks).
    pub fn name(self) -> &'static str {
        match self.0 {
            100 => "bad_hello",
            101 => "unsupported_version",
            102 => "auth_failed",
            103 => "unknown_session",
            104 => "role_taken",
            110 => "malformed_batch",
            111 => "unknown_record_kind",
            112 => "record_too_large",
            113 => "batch_too_large",
            114 => "sequence_gap",
            115 => "resume_impossible",
            116 => "bad_ack",
            120 => "malformed_control",
            121 => "unsupported_message",
            130 => "dead_peer",
            200 => "unknown_channel",
            201 => "channel_exists",
            202 => "bad_channel_params",
            203 => "port_unavailable",
            204 => "target_unreachable",
            205 => "isotp_timeout",
            206 => "isotp_protocol",
            207 => "doip_nack",
            208 => "can_bus_off",
            209 => "send_failed",
            210 => "policy_refused",
            300 => "session_limit",
            301 => "rate_limit",
            302 => "replay_overflow",
            400 => "peer_gone",
            401 => "session_ended",
            500 => "internal",
            _ => "unknown",
        }
    }

    /// Whether the sender closes the connection after this error (codes 100..=199).
    pub fn is_fatal(self) -> bool {
        (100..200).contains(&self.0)
    }

    /// The websocket close code used after a fatal error: 4000 + code.
    pub fn close_code(self) -> u16 {
        4000 + self.0.min(999)
    }

    /// The code a receiver reports for a wire error.
    pub fn for_wire_error(e: &WireError) -> ErrorCode {
        match e {
            WireError::UnknownKind { .. } => Self::UNKNOWN_RECORD_KIND,
            WireError::RecordTooLarge { .. } => Self::RECORD_TOO_LARGE,
            WireError::BatchTooLarge { .. } => Self::BATCH_TOO_LARGE,
            WireError::Version(_) => Self::UNSUPPORTED_VERSION,
            _ => Self::MALFORMED_BATCH,
        }
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// A bearer token; `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Token(pub String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Which end of a session a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Gateway,
    Operator,
}

impl Role {
    pub fn other(self) -> Role {
        match self {
            Role::Gateway => Role::Operator,
            Role::Operator => Role::Gateway,
        }
    }
}

/// Resume information carried by a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The stream instance of the peer that these numbers refer to (`None` on first connect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_instance: Option<u64>,
    /// The highest sequence number received in order from the peer (0: none).
    pub last_received: u64,
}

/// First message of every connection, endpoint to relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub role: Role,
    /// The session id: the ticket's connection UUID, lowercase hyphenated.
    pub session: String,
    pub token: Token,
    /// Random 64-bit id of this endpoint's stream state; a new value means the sequence
    /// numbers restarted (the endpoint lost its state).
    pub instance: u64,
    pub capabilities: Vec<String>,
    pub resume: Resume,
    pub limits: Limits,
    /// Free-form software name and version, for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// The relay's answer to an accepted hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub version: u32,
    pub session: String,
    /// Whether the other end is connected now (a `peer` message follows if so).
    pub peer_connected: bool,
    /// Keepalive interval the relay suggests, milliseconds.
    pub keepalive_ms: u32,
}

/// The other end's hello as the relay forwards it (no token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub role: Role,
    pub version: u32,
    pub instance: u64,
    pub capabilities: Vec<String>,
    pub resume: Resume,
    pub limits: Limits,
}

impl PeerInfo {
    /// What the relay forwards of a hello.
    pub fn from_hello(h: &Hello) -> Self {
        PeerInfo {
            role: h.role,
            version: h.version,
            instance: h.instance,
            capabilities: h.capabilities.clone(),
            resume: h.resume,
            limits: h.limits,
        }
    }
}

/// ISO-TP addressing modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Addressing {
    #[default]
    Normal,
    Extended,
    Mixed,
}

/// A CAN id filter: a frame passes when `frame_id & mask == id & mask` and the id type
/// matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdFilter {
    pub id: u32,
    pub mask: u32,
    #[serde(default)]
    pub extended: bool,
}

/// What a channel is bound to, with its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChannelParams {
    /// Diagnostic messages to one DoIP logical address on the car (or a CAN-only ECU mapped
    /// to one by the gateway's address map).
    Doip {
        /// Target logical address.
        target: u16,
        /// Tester logical address to use as source; the gateway's configured one if absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<u16>,
    },
    /// ISO-TP PDUs on a CAN interface.
    Isotp {
        interface: String,
        /// CAN id the gateway transmits on (the ECU's request id).
        tx_id: u32,
        /// CAN id the gateway receives on (the ECU's response id).
        rx_id: u32,
        /// Whether the ids are 29-bit.
        #[serde(default)]
        extended_ids: bool,
        #[serde(default)]
        addressing: Addressing,
        /// Address byte sent (extended: target address; mixed: address extension).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tx_ext: Option<u8>,
        /// Address byte expected on received frames.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rx_ext: Option<u8>,
        /// Block size the gateway announces in its flow control frames.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bs: Option<u8>,
        /// STmin the gateway announces, microseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stmin_us: Option<u32>,
        /// Padding byte for short frames.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        padding: Option<u8>,
        /// Use CAN FD frames.
        #[serde(default)]
        fd: bool,
    },
    /// Raw frames of a CAN interface, filtered; optionally the operator may transmit.
    CanMirror {
        interface: String,
        /// Empty: every frame.
        #[serde(default)]
        filters: Vec<IdFilter>,
        /// Also mirror CAN FD frames.
        #[serde(default)]
        fd: bool,
        /// Whether the operator may send frames on the bus through this channel.
        #[serde(default)]
        allow_tx: bool,
    },
}

/// Session counters reported by `stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StatsReport {
    pub records_sent: u64,
    pub records_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub replayed: u64,
    pub duplicates_dropped: u64,
    pub shed: u64,
    pub in_flight_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
}

/// Every JSON control message, tagged by `"type"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    Hello(Hello),
    Welcome(Welcome),
    Peer(PeerInfo),
    /// The other end's connection is gone (the session continues; it may come back).
    PeerDown {
        reason: String,
    },
    /// Request: open a channel.
    Open {
        channel: u16,
        params: ChannelParams,
    },
    /// Answer: the channel is open.
    Opened {
        channel: u16,
    },
    /// Request: close a channel (answered by `closed`).
    Close {
        channel: u16,
    },
    /// The channel is closed (answer to `close`, or unsolicited with a reason).
    Closed {
        channel: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<u16>,
    },
    Stats(StatsReport),
    /// Keepalive probe; `t_us` is the sender's clock, echoed in the pong.
    Ping {
        id: u64,
        t_us: u64,
    },
    Pong {
        id: u64,
        t_us: u64,
    },
    /// End the session for good (both ends and the relay release it).
    Bye {
        reason: String,
    },
    /// A message type this build does not know (answered with `unsupported_message`).
    #[serde(other)]
    Unknown,
}

impl Control {
    /// Parse a text message.
    pub fn parse(text: &str) -> Result<Control, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Serialize to the text message. Serializing these types cannot fail (no maps with
    /// non-string keys, no custom serializers that error); an empty object is never sent.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// Whether `s` is a session id in canonical form (lowercase hyphenated UUID).
pub fn valid_session_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

#[cfg(test)]
mod tests;
