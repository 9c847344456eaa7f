//! How long a frame occupies a real CAN bus.
//!
//! Owns: the bit count of classic and CAN FD frames (ISO 11898-1 frame layout) including a
//! worst-case estimate of stuff bits, and the resulting time on the wire for a bitrate. The
//! fault injector uses it to limit a virtual port to a real bus's frame rate.
//!
//! Does not own: any clock or waiting.
//!
//! Classic frame: SOF, arbitration (11-bit: id + RTR + IDE + r0 = 14 bits; 29-bit: id + SRR +
//! IDE + RTR + r1 + r0 = 34 bits), DLC (4), data (8 per byte), CRC (15): the stuffed part;
//! then CRC delimiter, ACK slot and delimiter, EOF (7) and the 3-bit intermission: 13 bits
//! never stuffed. Stuffing adds at most one bit per 4 after the first of the stuffed part,
//! so a frame with `g` stuffed-region bits takes at most `g + (g - 1) / 4 + 13` bits (the
//! bound used in CAN response-time analysis): an 8-byte frame is 111 bits unstuffed and 135
//! at worst with an 11-bit id, 160 at worst with a 29-bit id. Rate limits based on it are
//! conservative by up to ~20 % for random payloads.
//!
//! CAN FD: the arbitration phase (SOF, id, RRS/SRR, IDE, FDF, res, BRS) and the tail (CRC
//! delimiter, ACK, EOF, intermission) run at the nominal bitrate; with BRS the data phase
//! (ESI, DLC, data, stuff count, CRC 17 or 21, its fixed stuff bits) runs at the data
//! bitrate. Dynamic stuffing is estimated as in classic frames over arbitration and data.

use std::time::Duration;

/// A bus's bitrates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusTiming {
    /// Nominal (arbitration) bitrate in bit/s, e.g. 500_000.
    pub bitrate: u32,
    /// CAN FD data-phase bitrate in bit/s; the nominal one when absent.
    pub data_bitrate: Option<u32>,
}

/// Bits of a classic frame carrying `len` data bytes, stuffing at its worst.
pub fn classic_frame_bits(extended: bool, len: usize) -> u32 {
    let len = len.min(8) as u32;
    let arbitration = if extended { 34 } else { 14 };
    let stuffed = 1 + arbitration + 4 + 8 * len + 15;
    stuffed + (stuffed - 1) / 4 + 13
}

/// Bits of a CAN FD frame carrying `len` bytes: `(nominal-rate bits, data-rate bits)`.
pub fn fd_frame_bits(extended: bool, len: usize) -> (u32, u32) {
    let len = len.min(64) as u32;
    // SOF + id (+ SRR + IDE + id ext) + RRS + IDE + FDF + res + BRS
    let arbitration = if extended {
        1 + 11 + 2 + 18 + 4
    } else {
        1 + 11 + 5
    };
    let crc: u32 = if len <= 16 { 17 } else { 21 };
    // ESI + DLC + data + stuff count (4: 3 bits + parity) + CRC + fixed stuff bits (1 per 4)
    let data_dynamic = 1 + 4 + 8 * len;
    let data_fixed = 4 + crc + (4 + crc).div_ceil(4);
    let dyn_stuff = (arbitration + data_dynamic - 1) / 4;
    // dynamic stuff bits fall in both phases; count them at the data rate except the
    // arbitration's share
    let arb_stuff = (arbitration - 1) / 4;
    let nominal = arbitration + arb_stuff + 1 + 2 + 7 + 3;
    let data = data_dynamic + data_fixed + dyn_stuff.saturating_sub(arb_stuff);
    (nominal, data)
}

impl BusTiming {
    /// A classic-only bus.
    pub const fn classic(bitrate: u32) -> Self {
        BusTiming {
            bitrate,
            data_bitrate: None,
        }
    }

    /// Time on the wire of a classic frame.
    pub fn classic_frame_time(&self, extended: bool, len: usize) -> Duration {
        bits_time(classic_frame_bits(extended, len), self.bitrate)
    }

    /// Time on the wire of a CAN FD frame; `brs` says whether the data phase switches rate.
    pub fn fd_frame_time(&self, extended: bool, len: usize, brs: bool) -> Duration {
        let (nominal, data) = fd_frame_bits(extended, len);
        let data_rate = if brs {
            self.data_bitrate.unwrap_or(self.bitrate)
        } else {
            self.bitrate
        };
        bits_time(nominal, self.bitrate) + bits_time(data, data_rate)
    }

    /// Time on the wire of any frame.
    pub fn frame_time(&self, frame: &super::CanAnyFrame) -> Duration {
        match frame {
            super::CanAnyFrame::Classic(f) => {
                // a remote frame carries no data but its DLC
                self.classic_frame_time(f.id().is_extended(), f.data().len())
            }
            super::CanAnyFrame::Fd(f) => {
                self.fd_frame_time(f.id().is_extended(), f.data().len(), f.brs)
            }
        }
    }
}

fn bits_time(bits: u32, rate: u32) -> Duration {
    if rate == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(bits as u64 * 1_000_000_000 / rate as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_worst_case_bits() {
        // Worst cases from response-time analysis: 11-bit id, 8 bytes: 135 bits (111
        // unstuffed); 29-bit id, 8 bytes: 160 bits; 11-bit id, no data: 55 bits.
        assert_eq!(classic_frame_bits(false, 8), 135);
        assert_eq!(classic_frame_bits(true, 8), 160);
        assert_eq!(classic_frame_bits(false, 0), 55);
    }

    #[test]
    fn rate_at_500k() {
        let t = BusTiming::classic(500_000);
        // 135 bits at 2 us per bit
        assert_eq!(t.classic_frame_time(false, 8), Duration::from_micros(270));
        // so a saturated 500 kbit/s bus carries at least ~3700 such frames per second
        let per_sec = 1_000_000 / t.classic_frame_time(false, 8).as_micros();
        assert_eq!(per_sec, 3703);
    }

    #[test]
    fn fd_data_phase_is_faster_with_brs() {
        let t = BusTiming {
            bitrate: 500_000,
            data_bitrate: Some(2_000_000),
        };
        let fast = t.fd_frame_time(false, 64, true);
        let slow = t.fd_frame_time(false, 64, false);
        assert!(fast < slow);
        let (nominal, data) = fd_frame_bits(false, 64);
        // 64 data bytes alone are 512 bits in the data phase
        assert!(data > 512 && data < 700, "{data}");
        assert!(nominal > 25 && nominal < 40, "{nominal}");
        // more data, more time
        assert!(t.fd_frame_time(false, 8, true) < fast);
        assert_eq!(
            BusTiming::classic(0).classic_frame_time(false, 8),
            Duration::ZERO
        );
    }
}
