//! The candump log line format (`candump -L`, read by `canplayer` and `log2asc`).
//!
//! Owns: formatting one frame as a log line without allocating, and parsing a line back.
//!
//! Does not own: files or ports (see [`super::recorder`]).
//!
//! A line is `(SECONDS.MICROS) IFACE FRAME`:
//! - classic: `7E8#0102` (3 hex digits for an 11-bit id, 8 for a 29-bit id, data in pairs);
//! - remote: `123#R`, or `123#R4` with a non-zero DLC;
//! - CAN FD: `7E8##1` followed by the data, the digit after `##` being the flags (bit 0 BRS,
//!   bit 1 ESI).

use super::CanAnyFrame;
use crate::router::frame::{CanFdFrame, CanFrame, CanId};
use std::fmt::Write as _;

/// Longest line [`format_line`] produces (interface names are cut to 64 bytes).
pub const MAX_LINE: usize = 256;

/// A line in a stack buffer.
pub struct Line {
    buf: [u8; MAX_LINE],
    len: usize,
}

impl Line {
    pub fn as_str(&self) -> &str {
        // only ASCII and whole UTF-8 characters are ever written (see `write_str`)
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > MAX_LINE {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Format one frame, newline included. `micros` is the time since the Unix epoch.
pub fn format_line(micros: u64, iface: &str, frame: &CanAnyFrame) -> Line {
    let mut line = Line {
        buf: [0; MAX_LINE],
        len: 0,
    };
    let mut cut = iface.len().min(64);
    while !iface.is_char_boundary(cut) {
        cut -= 1;
    }
    let iface = &iface[..cut];
    // Cannot fail: the longest line (20 + 1 + 6 + 3 + 64 + 1 + 8 + 3 + 128 + 1) fits.
    let _ = write!(
        line,
        "({}.{:06}) {} {}",
        micros / 1_000_000,
        micros % 1_000_000,
        iface,
        frame.id()
    );
    fn push_data(line: &mut Line, data: &[u8]) {
        for b in data {
            let pair = [HEX[(b >> 4) as usize], HEX[(b & 0xF) as usize]];
            // ASCII only
            let _ = line.write_str(std::str::from_utf8(&pair).unwrap_or("00"));
        }
    }
    match frame {
        CanAnyFrame::Classic(f) if f.is_remote() => {
            let _ = line.write_str("#R");
            if f.dlc() > 0 {
                let _ = write!(line, "{}", f.dlc());
            }
        }
        CanAnyFrame::Classic(f) => {
            let _ = line.write_str("#");
            push_data(&mut line, f.data());
        }
        CanAnyFrame::Fd(f) => {
            let flags = (f.brs as u8) | ((f.esi as u8) << 1);
            let _ = write!(line, "##{flags:X}");
            push_data(&mut line, f.data());
        }
    }
    let _ = line.write_str("\n");
    line
}

/// A parsed log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub micros: u64,
    pub iface: &'a str,
    pub frame: CanAnyFrame,
}

/// Error parsing a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a candump log line ({0}); expected `(1700000000.123456) can0 7E8#0102`")]
pub struct ParseError(pub &'static str);

fn hex_digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn parse_hex_bytes(s: &str, out: &mut [u8; 64]) -> Result<usize, ParseError> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return Err(ParseError("odd number of data digits"));
    }
    if b.len() / 2 > 64 {
        return Err(ParseError("more than 64 data bytes"));
    }
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let (Some(h), Some(l)) = (hex_digit(pair[0]), hex_digit(pair[1])) else {
            return Err(ParseError("data is not hex"));
        };
        out[i] = (h << 4) | l;
    }
    Ok(b.len() / 2)
}

/// Parse one line (with or without its newline).
pub fn parse_line(line: &str) -> Result<Parsed<'_>, ParseError> {
    let line = line.trim_end_matches(['\n', '\r']);
    let rest = line
        .strip_prefix('(')
        .ok_or(ParseError("no `(` timestamp"))?;
    let (ts, rest) = rest
        .split_once(") ")
        .ok_or(ParseError("no `) ` after the timestamp"))?;
    let (secs, frac) = ts
        .split_once('.')
        .ok_or(ParseError("timestamp has no `.`"))?;
    let secs: u64 = secs.parse().map_err(|_| ParseError("bad seconds"))?;
    if frac.len() != 6 || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return Err(ParseError("timestamp needs 6 digits of microseconds"));
    }
    let frac: u64 = frac.parse().map_err(|_| ParseError("bad microseconds"))?;
    let micros = secs
        .checked_mul(1_000_000)
        .and_then(|m| m.checked_add(frac))
        .ok_or(ParseError("timestamp out of range"))?;
    let (iface, frame) = rest
        .split_once(' ')
        .ok_or(ParseError("no frame after the interface"))?;
    let (id, body) = frame.split_once('#').ok_or(ParseError("no `#` in frame"))?;
    if !id.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(ParseError("id is not hex"));
    }
    let raw = u32::from_str_radix(id, 16).map_err(|_| ParseError("bad id"))?;
    let id = match id.len() {
        3 => CanId::standard(raw as u16).filter(|_| raw <= 0x7FF),
        8 => CanId::extended(raw),
        _ => None,
    }
    .ok_or(ParseError(
        "id must be 3 (11-bit) or 8 (29-bit) hex digits in range",
    ))?;
    let mut data = [0u8; 64];
    let frame = if let Some(fd) = body.strip_prefix('#') {
        let mut chars = fd.chars();
        let flags = chars
            .next()
            .and_then(|c| c.to_digit(16))
            .ok_or(ParseError("no FD flags digit after `##`"))?;
        let n = parse_hex_bytes(chars.as_str(), &mut data)?;
        let mut f = CanFdFrame::new(id, &data[..n]).map_err(|_| ParseError("bad FD length"))?;
        f.brs = flags & 1 != 0;
        f.esi = flags & 2 != 0;
        CanAnyFrame::Fd(f)
    } else if let Some(dlc) = body.strip_prefix('R') {
        let dlc: u8 = if dlc.is_empty() {
            0
        } else {
            dlc.parse().map_err(|_| ParseError("bad remote DLC"))?
        };
        CanAnyFrame::Classic(
            CanFrame::remote(id, dlc).map_err(|_| ParseError("remote DLC above 8"))?,
        )
    } else {
        let n = parse_hex_bytes(body, &mut data)?;
        CanAnyFrame::Classic(
            CanFrame::new(id, &data[..n]).map_err(|_| ParseError("more than 8 data bytes"))?,
        )
    };
    Ok(Parsed {
        micros,
        iface,
        frame,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn std_id(id: u16) -> CanId {
        CanId::standard(id).unwrap()
    }

    #[test]
    fn golden_lines() {
        let f: CanAnyFrame = CanFrame::new(std_id(0x7E8), &[1, 2]).unwrap().into();
        assert_eq!(
            format_line(1_700_000_000_123_456, "vcan0", &f).as_str(),
            "(1700000000.123456) vcan0 7E8#0102\n"
        );
        let e: CanAnyFrame = CanFrame::new(CanId::extended(0x18DAF110).unwrap(), &[0xAB])
            .unwrap()
            .into();
        assert_eq!(
            format_line(5, "can0", &e).as_str(),
            "(0.000005) can0 18DAF110#AB\n"
        );
        let mut fd = CanFdFrame::new(std_id(0x123), &[0xFF; 12]).unwrap();
        fd.esi = true;
        assert_eq!(
            format_line(1_000_000, "vcan0", &fd.into()).as_str(),
            "(1.000000) vcan0 123##3FFFFFFFFFFFFFFFFFFFFFFFF\n"
        );
        let r: CanAnyFrame = CanFrame::remote(std_id(0x100), 4).unwrap().into();
        assert_eq!(format_line(0, "x", &r).as_str(), "(0.000000) x 100#R4\n");
        let r0: CanAnyFrame = CanFrame::remote(std_id(0x100), 0).unwrap().into();
        assert_eq!(format_line(0, "x", &r0).as_str(), "(0.000000) x 100#R\n");
        let empty: CanAnyFrame = CanFrame::new(std_id(0), &[]).unwrap().into();
        assert_eq!(format_line(0, "x", &empty).as_str(), "(0.000000) x 000#\n");
    }

    #[test]
    fn parse_golden_and_reject() {
        let p = parse_line("(1700000000.123456) vcan0 7E8#0102\n").unwrap();
        assert_eq!(p.micros, 1_700_000_000_123_456);
        assert_eq!(p.iface, "vcan0");
        assert_eq!(p.frame.data(), &[1, 2]);
        let p = parse_line("(1.000000) can1 123##1AABB").unwrap();
        let CanAnyFrame::Fd(f) = p.frame else {
            panic!("not FD")
        };
        assert!(f.brs && !f.esi);
        assert_eq!(f.data(), &[0xAA, 0xBB]);
        for bad in [
            "",
            "1.0 can0 123#00",
            "(1.0) can0 123#00",
            "(1.000000) can0",
            "(1.000000) can0 1234#00",
            "(1.000000) can0 800#00",
            "(1.000000) can0 123#0",
            "(1.000000) can0 123#001122334455667788",
            "(1.000000) can0 123##1001122334455667788AA",
            "(1.000000) can0 123#R9",
            "(1.000000) can0 123#ZZ",
            "(99999999999999999999.000000) can0 123#00",
        ] {
            assert!(parse_line(bad).is_err(), "{bad:?} parsed");
        }
    }

    fn any_frame() -> impl Strategy<Value = CanAnyFrame> {
        let id = prop_oneof![
            (0u16..=0x7FF).prop_map(|i| CanId::standard(i).unwrap()),
            (0u32..=0x1FFF_FFFF).prop_map(|i| CanId::extended(i).unwrap()),
        ];
        let lens = prop_oneof![
            0usize..=8,
            Just(12),
            Just(16),
            Just(20),
            Just(24),
            Just(32),
            Just(48),
            Just(64)
        ];
        (
            id,
            proptest::collection::vec(any::<u8>(), 64),
            lens,
            any::<u8>(),
            0u8..=8,
        )
            .prop_map(|(id, data, len, kind, dlc)| match kind % 3 {
                0 => CanFrame::new(id, &data[..len.min(8)]).unwrap().into(),
                1 => CanFrame::remote(id, dlc).unwrap().into(),
                _ => {
                    let mut f = CanFdFrame::new(id, &data[..len]).unwrap();
                    f.brs = kind & 4 != 0;
                    f.esi = kind & 8 != 0;
                    f.into()
                }
            })
    }

    proptest! {
        #[test]
        fn round_trip(frame in any_frame(), micros in any::<u64>(), iface in "[a-z0-9:]{1,20}") {
            let line = format_line(micros, &iface, &frame);
            let p = parse_line(line.as_str()).unwrap();
            prop_assert_eq!(p.micros, micros);
            prop_assert_eq!(p.iface, iface.as_str());
            prop_assert_eq!(p.frame, frame);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = parse_line(&s);
        }
    }
}
