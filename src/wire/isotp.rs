//! ISO-TP (ISO 15765-2:2016) network protocol control information (N_PCI): the byte layout
//! of single, first, consecutive and flow-control frames inside one CAN or CAN FD payload.
//!
//! Owns: [`Packet`], a checked view over one frame's payload, and [`Repr`], its validated
//! high-level form with `parse`, `emit` and `buffer_len`; the STmin encoding ([`StMin`]) and
//! the flow status ([`FlowStatus`]).
//!
//! Does not own: segmentation, reassembly, timers or padding policy (see
//! `crate::vehicle::isotp`), nor CAN identifiers (the caller demultiplexes by id).
//!
//! Contracts:
//! - `Packet::new_checked` validates the length once; after that no accessor panics, on any
//!   input.
//! - Extended and mixed addressing put one address byte (N_TA or N_AE) before the N_PCI; the
//!   view is told whether that byte is present.
//! - Single frames use the classic form (SF_DL in the low nibble) in frames of at most 8
//!   bytes and the escape form (low nibble 0, SF_DL in the next byte) in frames longer than
//!   8 bytes (CAN FD); any other combination is rejected.
//! - First frames use the 12-bit FF_DL, or the escape form (12 zero bits, then a 32-bit
//!   big-endian FF_DL) for PDUs longer than 4095 bytes. `emit` picks the form by length;
//!   `parse` also accepts the escape form for short lengths (as Linux does). An FF_DL small
//!   enough for a single frame of the same frame length is rejected, as the standard says.
//! - Consecutive-frame data is returned whole, padding included: only the reassembler knows
//!   how many bytes are still expected.
//! - A frame with a reserved flow status is rejected ([`Error::ReservedFlowStatus`]); the
//!   sender then aborts, as the standard requires.

use std::time::Duration;

/// N_PCI type of a single frame (high nibble of the first PCI byte).
pub const PCI_SINGLE: u8 = 0x0;
/// N_PCI type of a first frame.
pub const PCI_FIRST: u8 = 0x1;
/// N_PCI type of a consecutive frame.
pub const PCI_CONSECUTIVE: u8 = 0x2;
/// N_PCI type of a flow-control frame.
pub const PCI_FLOW_CONTROL: u8 = 0x3;

/// Largest PDU length a first frame can state without the escape sequence.
pub const FF_DL_12BIT_MAX: u32 = 4095;

/// Byte offsets relative to the start of the N_PCI (after the optional address byte).
mod field {
    /// Type nibble and SF_DL / FF_DL high nibble / SN / FS.
    pub const PCI: usize = 0;
    /// Escape-form SF_DL; low byte of the 12-bit FF_DL; FC block size.
    pub const BYTE1: usize = 1;
    /// FC STmin.
    pub const ST_MIN: usize = 2;
    /// Escape-form 32-bit FF_DL.
    pub const FF_DL32: std::ops::Range<usize> = 2..6;
}

/// Why a frame payload is not a valid ISO-TP frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Shorter than the header its type needs.
    #[error("ISO-TP frame of {len} bytes is shorter than its {needed}-byte header")]
    Truncated { len: usize, needed: usize },
    /// N_PCI type nibble 4..=15 (reserved by ISO 15765-2).
    #[error("ISO-TP frame has reserved N_PCI type {0:#X} (valid: 0 SF, 1 FF, 2 CF, 3 FC)")]
    UnknownPci(u8),
    /// SF_DL of zero, larger than the frame carries, or in the wrong form for the frame
    /// length.
    #[error("ISO-TP single frame: SF_DL {sf_dl} is invalid in a {frame_len}-byte frame")]
    BadSingleFrameLength { sf_dl: usize, frame_len: usize },
    /// FF_DL small enough for a single frame, or a first frame shorter than 8 bytes.
    #[error("ISO-TP first frame: FF_DL {ff_dl} is invalid in a {frame_len}-byte frame")]
    BadFirstFrameLength { ff_dl: u32, frame_len: usize },
    /// Flow status 3..=15 (reserved).
    #[error("ISO-TP flow control with reserved flow status {0:#X} (valid: 0 CTS, 1 WAIT, 2 OVFLW)")]
    ReservedFlowStatus(u8),
}

/// Flow status of a flow-control frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowStatus {
    /// Continue to send (CTS).
    ContinueToSend,
    /// Wait for another flow-control frame.
    Wait,
    /// The receiver cannot take a PDU of the announced length.
    Overflow,
}

impl FlowStatus {
    /// The FS nibble.
    pub const fn to_nibble(self) -> u8 {
        match self {
            FlowStatus::ContinueToSend => 0,
            FlowStatus::Wait => 1,
            FlowStatus::Overflow => 2,
        }
    }

    /// Decode an FS nibble; `None` for reserved values.
    pub const fn from_nibble(n: u8) -> Option<Self> {
        match n {
            0 => Some(FlowStatus::ContinueToSend),
            1 => Some(FlowStatus::Wait),
            2 => Some(FlowStatus::Overflow),
            _ => None,
        }
    }
}

/// Separation time minimum between consecutive frames, as its raw byte.
///
/// `0x00..=0x7F` are 0..=127 ms, `0xF1..=0xF9` are 100..=900 µs; every other value is
/// reserved and, as the standard requires of a sender, means the longest time (127 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StMin(u8);

impl StMin {
    /// No separation time.
    pub const ZERO: StMin = StMin(0);

    /// Wrap a raw STmin byte (reserved values are kept; see [`StMin::duration`]).
    pub const fn from_byte(b: u8) -> Self {
        StMin(b)
    }

    /// The raw byte as sent on the wire.
    pub const fn byte(self) -> u8 {
        self.0
    }

    /// Whether the byte is a reserved value.
    pub const fn is_reserved(self) -> bool {
        !matches!(self.0, 0x00..=0x7F | 0xF1..=0xF9)
    }

    /// The separation time to respect; reserved values give 127 ms.
    pub const fn duration(self) -> Duration {
        match self.0 {
            b @ 0x00..=0x7F => Duration::from_millis(b as u64),
            b @ 0xF1..=0xF9 => Duration::from_micros((b - 0xF0) as u64 * 100),
            _ => Duration::from_millis(127),
        }
    }

    /// The smallest encodable STmin that is at least `d` (saturating at 127 ms).
    pub fn from_duration(d: Duration) -> Self {
        let us = d.as_micros();
        if us == 0 {
            StMin(0)
        } else if us <= 900 {
            StMin(0xF0 + us.div_ceil(100) as u8)
        } else {
            StMin(us.div_ceil(1000).min(127) as u8)
        }
    }
}

/// Largest SF_DL a single frame of `frame_len` bytes can carry (0 when none fits).
pub const fn max_single_frame_data(frame_len: usize, has_ext: bool) -> usize {
    let ext = has_ext as usize;
    if frame_len <= 8 {
        frame_len.saturating_sub(1 + ext)
    } else {
        frame_len.saturating_sub(2 + ext)
    }
}

/// Fast path for the bulk of a transfer: when `buf` is a consecutive frame, its address
/// byte (if `has_ext`), sequence number and data (padding included). Same result as
/// `Packet::new_checked` + `Repr::parse` for that type, in fewer branches; `None` for any
/// other frame (use the full parse then).
#[inline]
pub fn parse_consecutive(buf: &[u8], has_ext: bool) -> Option<(Option<u8>, u8, &[u8])> {
    let off = has_ext as usize;
    let pci = *buf.get(off)?;
    if pci >> 4 != PCI_CONSECUTIVE {
        return None;
    }
    let ext = if has_ext { buf.first().copied() } else { None };
    Some((ext, pci & 0x0F, buf.get(off + 1..)?))
}

/// A checked view over one CAN payload holding an ISO-TP frame.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
    /// 1 when an address byte (extended/mixed addressing) precedes the N_PCI, else 0.
    off: usize,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap a buffer without checking it; accessors may then panic. Prefer `new_checked`.
    pub const fn new_unchecked(buffer: T, has_ext: bool) -> Self {
        Packet {
            buffer,
            off: has_ext as usize,
        }
    }

    /// Wrap a buffer and check that every accessor of its N_PCI type is in bounds.
    pub fn new_checked(buffer: T, has_ext: bool) -> Result<Self, Error> {
        let p = Self::new_unchecked(buffer, has_ext);
        p.check_len()?;
        Ok(p)
    }

    /// Check the length against the header the N_PCI type needs.
    pub fn check_len(&self) -> Result<(), Error> {
        let b = self.buffer.as_ref();
        let len = b.len();
        let trunc = |needed| Error::Truncated { len, needed };
        if len < self.off + 1 {
            return Err(trunc(self.off + 1));
        }
        let pci = b[self.off];
        let needed = match pci >> 4 {
            PCI_SINGLE if pci & 0x0F == 0 => 2,
            PCI_SINGLE => 1,
            PCI_FIRST if len >= self.off + 2 && pci & 0x0F == 0 && b[self.off + 1] == 0 => 6,
            PCI_FIRST => 2,
            PCI_CONSECUTIVE => 1,
            PCI_FLOW_CONTROL => 3,
            t => return Err(Error::UnknownPci(t)),
        };
        if len < self.off + needed {
            return Err(trunc(self.off + needed));
        }
        Ok(())
    }

    /// The inner buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Length of the whole CAN payload (CAN_DL).
    pub fn frame_len(&self) -> usize {
        self.buffer.as_ref().len()
    }

    /// The address byte (N_TA or N_AE), when the view was made with one.
    pub fn ext(&self) -> Option<u8> {
        if self.off == 1 {
            self.buffer.as_ref().first().copied()
        } else {
            None
        }
    }

    fn pci(&self) -> &[u8] {
        self.buffer.as_ref().get(self.off..).unwrap_or(&[])
    }

    /// PCI byte `i`, or 0 past the end (only reachable when an accessor of another frame
    /// type is called; `check_len` guarantees the bytes of the frame's own type).
    fn pci_byte(&self, i: usize) -> u8 {
        self.pci().get(i).copied().unwrap_or(0)
    }

    /// The N_PCI type nibble.
    pub fn pci_type(&self) -> u8 {
        self.pci_byte(field::PCI) >> 4
    }

    /// The low nibble of the first PCI byte (SF_DL, FF_DL high bits, SN or FS).
    pub fn pci_low(&self) -> u8 {
        self.pci_byte(field::PCI) & 0x0F
    }

    /// Whether a single frame uses the escape form (SF_DL in the second byte).
    pub fn sf_escape(&self) -> bool {
        self.pci_low() == 0
    }

    /// SF_DL, from either form.
    pub fn sf_dl(&self) -> usize {
        if self.sf_escape() {
            self.pci_byte(field::BYTE1) as usize
        } else {
            self.pci_low() as usize
        }
    }

    /// Whether a first frame uses the 32-bit FF_DL escape form.
    pub fn ff_escape(&self) -> bool {
        self.pci_low() == 0 && self.pci_byte(field::BYTE1) == 0
    }

    /// FF_DL, from either form.
    pub fn ff_dl(&self) -> u32 {
        if self.ff_escape() {
            let mut w = [0u8; 4];
            for (i, b) in field::FF_DL32.zip(w.iter_mut()) {
                *b = self.pci_byte(i);
            }
            u32::from_be_bytes(w)
        } else {
            ((self.pci_low() as u32) << 8) | self.pci_byte(field::BYTE1) as u32
        }
    }

    /// Sequence number of a consecutive frame.
    pub fn sn(&self) -> u8 {
        self.pci_low()
    }

    /// Raw flow-status nibble of a flow-control frame.
    pub fn flow_status(&self) -> u8 {
        self.pci_low()
    }

    /// Block size of a flow-control frame.
    pub fn block_size(&self) -> u8 {
        self.pci_byte(field::BYTE1)
    }

    /// STmin of a flow-control frame.
    pub fn st_min(&self) -> StMin {
        StMin(self.pci_byte(field::ST_MIN))
    }

    /// Offset of the first byte after the N_PCI.
    fn payload_start(&self) -> usize {
        self.off
            + match self.pci_type() {
                PCI_SINGLE if self.sf_escape() => 2,
                PCI_SINGLE | PCI_CONSECUTIVE => 1,
                PCI_FIRST if self.ff_escape() => 6,
                PCI_FIRST => 2,
                _ => 3,
            }
    }

    /// The bytes after the N_PCI (data plus any padding).
    pub fn payload(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(self.payload_start()..)
            .unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn pci_mut(&mut self) -> &mut [u8] {
        let off = self.off;
        &mut self.buffer.as_mut()[off..]
    }

    /// Set the address byte; no effect on a view made without one.
    pub fn set_ext(&mut self, ext: u8) {
        if self.off == 1 {
            self.buffer.as_mut()[0] = ext;
        }
    }
}

/// A parsed ISO-TP frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr<'a> {
    /// A whole PDU in one frame.
    Single { data: &'a [u8] },
    /// The start of a segmented PDU of `total_len` bytes.
    First { total_len: u32, data: &'a [u8] },
    /// A continuation, with its 4-bit sequence number; data includes any padding.
    Consecutive { sn: u8, data: &'a [u8] },
    /// Flow control from the receiver of a segmented PDU.
    FlowControl {
        status: FlowStatus,
        block_size: u8,
        st_min: StMin,
    },
}

impl<'a> Repr<'a> {
    /// Parse and validate a checked packet.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Self, Error> {
        packet.check_len()?;
        let bytes: &'a [u8] = T::as_ref(packet.buffer);
        let rest: &'a [u8] = bytes.get(packet.payload_start()..).unwrap_or(&[]);
        let frame_len = packet.frame_len();
        let has_ext = packet.off == 1;
        match packet.pci_type() {
            PCI_SINGLE => {
                let sf_dl = packet.sf_dl();
                let payload = rest;
                let form_ok = if packet.sf_escape() {
                    frame_len > 8
                } else {
                    frame_len <= 8
                };
                if !form_ok || sf_dl == 0 || sf_dl > payload.len() {
                    return Err(Error::BadSingleFrameLength { sf_dl, frame_len });
                }
                Ok(Repr::Single {
                    data: &payload[..sf_dl],
                })
            }
            PCI_FIRST => {
                let ff_dl = packet.ff_dl();
                if frame_len < 8 || (ff_dl as usize) <= max_single_frame_data(frame_len, has_ext) {
                    return Err(Error::BadFirstFrameLength { ff_dl, frame_len });
                }
                let data = rest;
                // A first frame never carries more than the whole PDU.
                let data = &data[..data.len().min(ff_dl as usize)];
                Ok(Repr::First {
                    total_len: ff_dl,
                    data,
                })
            }
            PCI_CONSECUTIVE => Ok(Repr::Consecutive {
                sn: packet.sn(),
                data: rest,
            }),
            PCI_FLOW_CONTROL => {
                let fs = packet.flow_status();
                let status = FlowStatus::from_nibble(fs).ok_or(Error::ReservedFlowStatus(fs))?;
                Ok(Repr::FlowControl {
                    status,
                    block_size: packet.block_size(),
                    st_min: packet.st_min(),
                })
            }
            t => Err(Error::UnknownPci(t)),
        }
    }

    /// Bytes `emit` writes: the address byte (if any), the N_PCI and the data, no padding.
    pub fn buffer_len(&self, has_ext: bool) -> usize {
        let ext = has_ext as usize;
        ext + match self {
            Repr::Single { data } if ext + 1 + data.len() <= 8 => 1 + data.len(),
            Repr::Single { data } => 2 + data.len(),
            Repr::First { total_len, data } if *total_len <= FF_DL_12BIT_MAX => 2 + data.len(),
            Repr::First { data, .. } => 6 + data.len(),
            Repr::Consecutive { data, .. } => 1 + data.len(),
            Repr::FlowControl { .. } => 3,
        }
    }

    /// Write the frame into the start of `buf` and return the bytes written
    /// (`buffer_len`). `buf` must hold at least `buffer_len(ext.is_some())` bytes; the caller
    /// pads the rest. Single-frame data of 1..=4095 bytes, SN 0..=15 are the caller's
    /// invariants (higher SN bits are masked).
    ///
    /// # Panics
    /// When `buf` is shorter than `buffer_len`.
    pub fn emit(&self, ext: Option<u8>, buf: &mut [u8]) -> usize {
        let n = self.buffer_len(ext.is_some());
        let mut packet = Packet::new_unchecked(&mut buf[..n], ext.is_some());
        if let Some(e) = ext {
            packet.set_ext(e);
        }
        let p = packet.pci_mut();
        match *self {
            Repr::Single { data } if p.len() == 1 + data.len() => {
                p[0] = (PCI_SINGLE << 4) | (data.len() as u8 & 0x0F);
                p[1..].copy_from_slice(data);
            }
            Repr::Single { data } => {
                p[0] = PCI_SINGLE << 4;
                p[1] = data.len() as u8;
                p[2..].copy_from_slice(data);
            }
            Repr::First { total_len, data } if total_len <= FF_DL_12BIT_MAX => {
                p[0] = (PCI_FIRST << 4) | (total_len >> 8) as u8;
                p[1] = total_len as u8;
                p[2..].copy_from_slice(data);
            }
            Repr::First { total_len, data } => {
                p[0] = PCI_FIRST << 4;
                p[1] = 0;
                p[field::FF_DL32].copy_from_slice(&total_len.to_be_bytes());
                p[6..].copy_from_slice(data);
            }
            Repr::Consecutive { sn, data } => {
                p[0] = (PCI_CONSECUTIVE << 4) | (sn & 0x0F);
                p[1..].copy_from_slice(data);
            }
            Repr::FlowControl {
                status,
                block_size,
                st_min,
            } => {
                p[0] = (PCI_FLOW_CONTROL << 4) | status.to_nibble();
                p[1] = block_size;
                p[2] = st_min.byte();
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(bytes: &[u8], ext: bool) -> Result<Repr<'_>, Error> {
        let p = Packet::new_checked(bytes, ext)?;
        Repr::parse(&p)
    }

    fn emit(repr: &Repr<'_>, ext: Option<u8>) -> Vec<u8> {
        let mut buf = vec![0u8; repr.buffer_len(ext.is_some())];
        let n = repr.emit(ext, &mut buf);
        assert_eq!(n, buf.len());
        buf
    }

    #[test]
    fn golden_single_frame_classic() {
        let bytes = [0x03, 0x22, 0xF1, 0x90];
        assert_eq!(
            parse(&bytes, false),
            Ok(Repr::Single {
                data: &[0x22, 0xF1, 0x90]
            })
        );
        // Padded to 8 with 0xAA: the padding is not data.
        let padded = [0x02, 0x10, 0x03, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA];
        assert_eq!(
            parse(&padded, false),
            Ok(Repr::Single {
                data: &[0x10, 0x03]
            })
        );
        assert_eq!(
            emit(
                &Repr::Single {
                    data: &[0x10, 0x03]
                },
                None
            ),
            vec![0x02, 0x10, 0x03]
        );
        // Extended addressing: target byte first.
        let ext = [0xF1, 0x02, 0x3E, 0x00];
        let p = Packet::new_checked(&ext[..], true).unwrap();
        assert_eq!(p.ext(), Some(0xF1));
        assert_eq!(
            parse(&ext, true),
            Ok(Repr::Single {
                data: &[0x3E, 0x00]
            })
        );
        assert_eq!(
            emit(
                &Repr::Single {
                    data: &[0x3E, 0x00]
                },
                Some(0xF1)
            ),
            ext.to_vec()
        );
    }

    #[test]
    fn golden_single_frame_fd_escape() {
        let data: Vec<u8> = (1..=10).collect();
        let repr = Repr::Single { data: &data };
        let bytes = emit(&repr, None);
        assert_eq!(bytes[..2], [0x00, 10]);
        assert_eq!(&bytes[2..], &data[..]);
        // Padded to the FD length 12 it parses back.
        let mut frame = bytes.clone();
        frame.resize(12, 0xCC);
        assert_eq!(parse(&frame, false), Ok(repr));
        // 7 bytes + ext byte do not fit the classic form: escape with ext.
        let seven = [9u8; 7];
        let b = emit(&Repr::Single { data: &seven }, Some(0x55));
        assert_eq!(b[..3], [0x55, 0x00, 7]);
        assert_eq!(b.len(), 10);
    }

    #[test]
    fn single_frame_bad_lengths() {
        // SF_DL 0 in a classic frame means escape: not allowed in 8 bytes.
        assert_eq!(
            parse(&[0x00, 0x05, 1, 2, 3, 4, 5, 6], false),
            Err(Error::BadSingleFrameLength {
                sf_dl: 5,
                frame_len: 8
            })
        );
        // SF_DL larger than the frame.
        assert_eq!(
            parse(&[0x05, 1, 2], false),
            Err(Error::BadSingleFrameLength {
                sf_dl: 5,
                frame_len: 3
            })
        );
        // Classic form in a frame longer than 8 bytes.
        assert!(parse(&[0x03, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0], false).is_err());
        // Escape SF_DL 0.
        assert!(parse(&[0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], false).is_err());
        // Escape SF_DL beyond the frame.
        assert!(parse(&[0x00, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], false).is_err());
        // Empty and ext-only frames.
        assert_eq!(
            parse(&[], false),
            Err(Error::Truncated { len: 0, needed: 1 })
        );
        assert_eq!(
            parse(&[0x11], true),
            Err(Error::Truncated { len: 1, needed: 2 })
        );
    }

    #[test]
    fn golden_first_frame() {
        let bytes = [0x10, 0x14, 0x62, 0xF1, 0x90, 0x57, 0x30, 0x4C];
        let p = Packet::new_checked(&bytes[..], false).unwrap();
        assert!(!p.ff_escape());
        assert_eq!(p.ff_dl(), 20);
        assert_eq!(
            parse(&bytes, false),
            Ok(Repr::First {
                total_len: 20,
                data: &bytes[2..]
            })
        );
        assert_eq!(
            emit(
                &Repr::First {
                    total_len: 20,
                    data: &bytes[2..]
                },
                None
            ),
            bytes.to_vec()
        );
        // 4095 is the largest 12-bit length.
        let b = emit(
            &Repr::First {
                total_len: 4095,
                data: &[1; 6],
            },
            None,
        );
        assert_eq!(b[..2], [0x1F, 0xFF]);
    }

    #[test]
    fn golden_first_frame_escape() {
        let data = [0xAB; 58];
        let repr = Repr::First {
            total_len: 70_000,
            data: &data,
        };
        let b = emit(&repr, None);
        assert_eq!(b[..6], [0x10, 0x00, 0x00, 0x01, 0x11, 0x70]);
        assert_eq!(b.len(), 64);
        assert_eq!(parse(&b, false), Ok(repr));
        // Classic frame with the escape form (ISO 15765-2:2016 allows it).
        let c = [0x10, 0x00, 0x00, 0x00, 0x10, 0x00, 0xEE, 0xEE];
        assert_eq!(
            parse(&c, false),
            Ok(Repr::First {
                total_len: 4096,
                data: &[0xEE, 0xEE]
            })
        );
        // Escape form truncated.
        assert_eq!(
            parse(&[0x10, 0x00, 0x00, 0x01], false),
            Err(Error::Truncated { len: 4, needed: 6 })
        );
    }

    #[test]
    fn first_frame_bad_lengths() {
        // FF_DL 7 fits a classic single frame (normal addressing).
        assert_eq!(
            parse(&[0x10, 0x07, 1, 2, 3, 4, 5, 6], false),
            Err(Error::BadFirstFrameLength {
                ff_dl: 7,
                frame_len: 8
            })
        );
        // With an ext byte, 7 is the smallest valid FF_DL.
        assert!(parse(&[0xAA, 0x10, 0x07, 1, 2, 3, 4, 5], true).is_ok());
        assert!(parse(&[0xAA, 0x10, 0x06, 1, 2, 3, 4, 5], true).is_err());
        // First frames are never shorter than 8 bytes.
        assert!(parse(&[0x10, 0x14, 1, 2], false).is_err());
        // FD: FF_DL must exceed what a 64-byte single frame carries (62).
        let mut fd = [0u8; 64];
        fd[0] = 0x10;
        fd[1] = 62;
        assert!(parse(&fd, false).is_err());
        fd[1] = 63;
        assert!(parse(&fd, false).is_ok());
    }

    #[test]
    fn golden_consecutive_frame() {
        let bytes = [0x21, 1, 2, 3, 4, 5, 6, 7];
        assert_eq!(
            parse(&bytes, false),
            Ok(Repr::Consecutive {
                sn: 1,
                data: &bytes[1..]
            })
        );
        assert_eq!(
            emit(
                &Repr::Consecutive {
                    sn: 0x1F,
                    data: &[9]
                },
                Some(0x33)
            ),
            vec![0x33, 0x2F, 9]
        );
        assert_eq!(
            parse(&[0x20], false),
            Ok(Repr::Consecutive { sn: 0, data: &[] })
        );
    }

    #[test]
    fn golden_flow_control() {
        assert_eq!(
            parse(&[0x30, 0x08, 0x14], false),
            Ok(Repr::FlowControl {
                status: FlowStatus::ContinueToSend,
                block_size: 8,
                st_min: StMin::from_byte(20)
            })
        );
        assert_eq!(
            parse(&[0x31, 0, 0, 0xAA, 0xAA], false).map(|r| match r {
                Repr::FlowControl { status, .. } => Some(status),
                _ => None,
            }),
            Ok(Some(FlowStatus::Wait))
        );
        assert_eq!(
            emit(
                &Repr::FlowControl {
                    status: FlowStatus::Overflow,
                    block_size: 0,
                    st_min: StMin::ZERO
                },
                Some(0xF1)
            ),
            vec![0xF1, 0x32, 0x00, 0x00]
        );
        assert_eq!(
            parse(&[0x33, 0, 0], false),
            Err(Error::ReservedFlowStatus(3))
        );
        assert_eq!(
            parse(&[0x30, 0], false),
            Err(Error::Truncated { len: 2, needed: 3 })
        );
        assert_eq!(parse(&[0x40, 0, 0], false), Err(Error::UnknownPci(4)));
        assert_eq!(parse(&[0xF0], false), Err(Error::UnknownPci(15)));
    }

    #[test]
    fn st_min_codes() {
        assert_eq!(StMin::from_byte(0).duration(), Duration::ZERO);
        assert_eq!(
            StMin::from_byte(0x7F).duration(),
            Duration::from_millis(127)
        );
        assert_eq!(
            StMin::from_byte(0xF1).duration(),
            Duration::from_micros(100)
        );
        assert_eq!(
            StMin::from_byte(0xF9).duration(),
            Duration::from_micros(900)
        );
        for reserved in [0x80u8, 0xF0, 0xFA, 0xFF] {
            assert!(StMin::from_byte(reserved).is_reserved());
            assert_eq!(
                StMin::from_byte(reserved).duration(),
                Duration::from_millis(127)
            );
        }
        assert_eq!(
            StMin::from_duration(Duration::from_micros(250)).byte(),
            0xF3
        );
        assert_eq!(StMin::from_duration(Duration::from_micros(901)).byte(), 1);
        assert_eq!(StMin::from_duration(Duration::from_millis(5)).byte(), 5);
        assert_eq!(StMin::from_duration(Duration::from_secs(1)).byte(), 127);
        assert_eq!(StMin::from_duration(Duration::ZERO), StMin::ZERO);
    }

    fn arb_repr_owned() -> impl Strategy<Value = (u8, u32, u8, Vec<u8>, bool)> {
        (
            0u8..4,
            0u32..200_000,
            any::<u8>(),
            proptest::collection::vec(any::<u8>(), 0..62),
            any::<bool>(),
        )
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..70), ext in any::<bool>()) {
            let fast = parse_consecutive(&bytes, ext);
            let full = Packet::new_checked(&bytes[..], ext).ok().and_then(|p| match Repr::parse(&p) {
                Ok(Repr::Consecutive { sn, data }) => Some((p.ext(), sn, data)),
                _ => None,
            });
            prop_assert_eq!(fast, full);
            if let Ok(p) = Packet::new_checked(&bytes[..], ext) {
                let _ = (p.pci_type(), p.sf_dl(), p.ff_dl(), p.sn(), p.block_size(), p.st_min(), p.payload(), p.ext());
                if let Ok(r) = Repr::parse(&p) {
                    // A parsed frame re-emits without exceeding its source.
                    let mut buf = [0u8; 80];
                    let n = r.emit(p.ext(), &mut buf);
                    prop_assert!(n <= 80);
                }
            }
        }

        #[test]
        fn round_trip((kind, total, x, mut data, has_ext) in arb_repr_owned()) {
            data.push(x);
            let ext = has_ext.then_some(0x42u8);
            let e = has_ext as usize;
            let repr = match kind {
                0 => {
                    // Keep within what some frame of <= 64 bytes carries.
                    let n = data.len().clamp(1, 62 - e);
                    Repr::Single { data: &data[..n] }
                }
                1 => {
                    let hdr = if total > FF_DL_12BIT_MAX { 6 } else { 2 };
                    let n = data.len().min(64 - e - hdr);
                    // Smallest frame this FF is emitted in is at least 8 bytes.
                    let frame_len = (e + hdr + n).max(8);
                    let min = max_single_frame_data(frame_len, has_ext) as u32 + 1;
                    Repr::First { total_len: total.max(min).max(n as u32), data: &data[..n] }
                }
                2 => Repr::Consecutive { sn: x & 0x0F, data: &data },
                _ => Repr::FlowControl {
                    status: FlowStatus::from_nibble(x % 3).unwrap(),
                    block_size: x,
                    st_min: StMin::from_byte(x.wrapping_mul(7)),
                },
            };
            let mut buf = emit(&repr, ext);
            if matches!(repr, Repr::First { .. }) && buf.len() < 8 {
                // A first frame is always a full frame: pad, then the padding is data.
                buf.resize(8, 0);
                let p = Packet::new_checked(&buf[..], has_ext).unwrap();
                prop_assert_eq!(Repr::parse(&p).map(|r| matches!(r, Repr::First { .. })), Ok(true));
            } else {
                let p = Packet::new_checked(&buf[..], has_ext).unwrap();
                prop_assert_eq!(p.ext(), ext);
                prop_assert_eq!(Repr::parse(&p), Ok(repr));
            }
        }
    }
}
