//! The socketcand ASCII protocol: message framing, parsing and formatting.
//!
//! Owns: turning the bytes of a socketcand TCP stream into [`Message`]s and back, for both
//! directions (what a client sends: `open`, `rawmode`, `isotpmode`, `send`, `isotpconf`,
//! `sendpdu`, …; what a server sends: `hi`, `ok`, `error`, `frame`, `pdu`, …).
//!
//! Does not own: sessions, modes or buses (see the socketcand server in `crate::operator`).
//!
//! Every message is `< word args... >`. [`Framer`] finds complete messages in a byte buffer
//! and refuses any longer than its limit before buffering more, so a peer that never sends
//! `>` cannot grow memory. Parsing is strict about structure and lenient about what
//! independent implementations vary on: hex case, zero padding of data bytes (python-can
//! sends `< send 123 2 1 f1 >`), data bytes separated or packed (`11 22` or `1122`).
//! Formatting follows the reference server: standard ids as 3 hex digits, extended as 8,
//! frame data packed (`< frame 123 23.424242 11223344 >`), timestamps as `secs.usecs`.

use crate::router::frame::{CANFD_MAX_DLEN, CanFdFrame, CanFrame, CanId};
pub use crate::vehicle::can::CanAnyFrame;
use bytes::{Buf, Bytes, BytesMut};
use std::fmt::Write as _;

/// Default limit on one message's length in bytes (a 4095-byte PDU is about 8.2 KiB of hex).
pub const DEFAULT_MAX_MESSAGE: usize = 16 * 1024;

/// ISO-TP channel parameters from `isotpconf` (host view: we send on `tx_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsoTpConf {
    pub tx_id: CanId,
    pub rx_id: CanId,
    /// Flags as in the kernel's `isotp.h` (`CAN_ISOTP_*`).
    pub flags: u32,
    pub block_size: u8,
    pub st_min: u8,
    pub wft_max: Option<u8>,
    pub tx_pad: Option<u8>,
    pub rx_pad: Option<u8>,
    pub ext_address: Option<u8>,
    pub rx_ext_address: Option<u8>,
}

/// `CAN_ISOTP_EXTEND_ADDR`: extended addressing.
pub const ISOTP_EXTEND_ADDR: u32 = 0x002;
/// `CAN_ISOTP_TX_PADDING`.
pub const ISOTP_TX_PADDING: u32 = 0x004;
/// `CAN_ISOTP_RX_PADDING`.
pub const ISOTP_RX_PADDING: u32 = 0x008;
/// `CAN_ISOTP_RX_EXT_ADDR`.
pub const ISOTP_RX_EXT_ADDR: u32 = 0x200;

/// One socketcand message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    // Server to client.
    Hi,
    Ok,
    /// `< error TEXT >`.
    Error(String),
    /// `< frame ID SECS.USECS DATA >` (raw mode reception).
    Frame {
        frame: CanAnyFrame,
        secs: u64,
        usecs: u32,
    },
    /// `< pdu SECS.USECS DATA >` (ISO-TP mode reception).
    Pdu {
        secs: u64,
        usecs: u32,
        data: Bytes,
    },
    /// `< stat rbytes rpackets tbytes tpackets >`.
    Stat {
        rx_bytes: u64,
        rx_packets: u64,
        tx_bytes: u64,
        tx_packets: u64,
    },
    // Client to server.
    Open(String),
    RawMode,
    BcmMode,
    IsoTpMode,
    ControlMode,
    /// `< send ID LEN DATA... >` (DLC > 8 means CAN FD).
    Send(CanAnyFrame),
    /// `< sendrtr ID DLC >`.
    SendRtr {
        id: CanId,
        dlc: u8,
    },
    IsoTpConf(IsoTpConf),
    SendPdu(Bytes),
    /// `< statistics IVAL_MS >`.
    Statistics(u32),
    // Both directions.
    Echo,
}

/// Why bytes are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message longer than {limit} bytes; discarded up to its end")]
    TooLong { limit: usize },
    #[error("stray bytes between messages (starting with {0:?}); see the socketcand protocol")]
    NoStart(char),
    #[error("message is not ASCII")]
    NotAscii,
    #[error("empty message `< >`")]
    Empty,
    #[error("unknown command `{0}`")]
    Unknown(String),
    #[error("`{0}` (broadcast-manager mode) is not supported by obdgw; switch to rawmode")]
    Unsupported(&'static str),
    #[error("`{cmd}`: {what}")]
    Bad { cmd: &'static str, what: String },
}

fn bad(cmd: &'static str, what: impl Into<String>) -> ParseError {
    ParseError::Bad {
        cmd,
        what: what.into(),
    }
}

/// Finds complete `< ... >` messages in a stream.
#[derive(Debug)]
pub struct Framer {
    max: usize,
    /// After an over-long message: drop bytes up to and including the next `>`.
    discarding: bool,
}

impl Default for Framer {
    fn default() -> Self {
        Framer::new(DEFAULT_MAX_MESSAGE)
    }
}

impl Framer {
    pub fn new(max_message: usize) -> Self {
        Framer {
            max: max_message,
            discarding: false,
        }
    }

    /// Take the next complete message from `buf`: `Ok(None)` when more bytes are needed.
    /// Whitespace between messages is skipped. On error the offending bytes are consumed
    /// (up to and including the next `>` if there is one), so the caller may report the
    /// error and continue with the rest of the stream.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, ParseError> {
        if self.discarding {
            match buf.iter().position(|&b| b == b'>') {
                Some(end) => {
                    buf.advance(end + 1);
                    self.discarding = false;
                }
                None => {
                    buf.clear();
                    return Ok(None);
                }
            }
        }
        let skip = buf
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(buf.len());
        buf.advance(skip);
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        if first != b'<' {
            let end = buf.iter().position(|&b| b == b'<').unwrap_or(buf.len());
            buf.advance(end);
            return Err(ParseError::NoStart(first as char));
        }
        match buf.iter().position(|&b| b == b'>') {
            Some(end) if end + 1 > self.max => {
                buf.advance(end + 1);
                Err(ParseError::TooLong { limit: self.max })
            }
            Some(end) => {
                let msg = buf.split_to(end + 1);
                parse(&msg).map(Some)
            }
            None if buf.len() > self.max => {
                buf.clear();
                self.discarding = true;
                Err(ParseError::TooLong { limit: self.max })
            }
            None => Ok(None),
        }
    }
}

fn hex_u32(cmd: &'static str, field: &str, s: &str) -> Result<u32, ParseError> {
    u32::from_str_radix(s, 16).map_err(|_| bad(cmd, format!("{field} `{s}` is not hex")))
}

fn dec<T: std::str::FromStr>(cmd: &'static str, field: &str, s: &str) -> Result<T, ParseError> {
    s.parse()
        .map_err(|_| bad(cmd, format!("{field} `{s}` is not a number")))
}

/// A CAN id: 8 hex digits (or a value above 0x7FF) mean extended, as the reference does.
fn can_id(cmd: &'static str, s: &str) -> Result<CanId, ParseError> {
    let v = hex_u32(cmd, "CAN id", s)?;
    let id = if s.len() >= 8 || v > CanId::SFF_MAX {
        CanId::extended(v)
    } else {
        CanId::standard(v as u16)
    };
    id.ok_or_else(|| bad(cmd, format!("CAN id `{s}` is out of range")))
}

/// Parse data given as separate bytes (`11 2 f1`) or packed hex (`1122F1`), or a mix.
fn hex_bytes(cmd: &'static str, parts: &[&str], out: &mut Vec<u8>) -> Result<(), ParseError> {
    for p in parts {
        if p.len() <= 2 {
            out.push(
                u8::from_str_radix(p, 16)
                    .map_err(|_| bad(cmd, format!("`{p}` is not a hex byte")))?,
            );
        } else {
            if p.len() % 2 != 0 {
                return Err(bad(cmd, format!("packed hex `{p}` has an odd length")));
            }
            for i in (0..p.len()).step_by(2) {
                let b = p
                    .get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| bad(cmd, format!("`{p}` is not hex")))?;
                out.push(b);
            }
        }
    }
    Ok(())
}

/// `SECS.FRACTION` with at most 6 fraction digits (`1.5` is 1 s 500000 µs).
fn timestamp(cmd: &'static str, s: &str) -> Result<(u64, u32), ParseError> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, "0"));
    let secs = dec(cmd, "seconds", secs)?;
    if frac.is_empty() || frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(cmd, format!("timestamp `{s}` is not SECS.USECS")));
    }
    let usecs: u32 = dec(cmd, "microseconds", frac)?;
    Ok((secs, usecs * 10u32.pow(6 - frac.len() as u32)))
}

fn make_frame(cmd: &'static str, id: CanId, data: &[u8]) -> Result<CanAnyFrame, ParseError> {
    if data.len() <= 8 {
        CanFrame::new(id, data)
            .map(CanAnyFrame::Classic)
            .map_err(|e| bad(cmd, e.to_string()))
    } else {
        CanFdFrame::new(id, data)
            .map(CanAnyFrame::Fd)
            .map_err(|e| bad(cmd, e.to_string()))
    }
}

/// Parse one whole message (`< ... >`, surrounding whitespace allowed).
pub fn parse(raw: &[u8]) -> Result<Message, ParseError> {
    let text = std::str::from_utf8(raw).map_err(|_| ParseError::NotAscii)?;
    if !text.is_ascii() {
        return Err(ParseError::NotAscii);
    }
    let inner = text
        .trim()
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .ok_or(ParseError::NoStart(text.chars().next().unwrap_or(' ')))?;
    let parts: Vec<&str> = inner.split_ascii_whitespace().collect();
    let Some((&word, args)) = parts.split_first() else {
        return Err(ParseError::Empty);
    };
    let no_args = |cmd: &'static str, m: Message| {
        if args.is_empty() {
            Ok(m)
        } else {
            Err(bad(cmd, "takes no arguments"))
        }
    };
    match word {
        "hi" => no_args("hi", Message::Hi),
        "ok" => no_args("ok", Message::Ok),
        "echo" => no_args("echo", Message::Echo),
        "rawmode" => no_args("rawmode", Message::RawMode),
        "bcmmode" => no_args("bcmmode", Message::BcmMode),
        "isotpmode" => no_args("isotpmode", Message::IsoTpMode),
        "controlmode" => no_args("controlmode", Message::ControlMode),
        "error" => Ok(Message::Error(args.join(" "))),
        "open" => match args {
            [bus] if bus.len() <= 16 => Ok(Message::Open((*bus).to_string())),
            [bus] => Err(bad(
                "open",
                format!("bus name `{bus}` longer than 16 characters"),
            )),
            _ => Err(bad("open", "expected `< open BUS >`")),
        },
        "statistics" => match args {
            [ival] => Ok(Message::Statistics(dec("statistics", "interval", ival)?)),
            _ => Err(bad("statistics", "expected `< statistics IVAL_MS >`")),
        },
        "send" => {
            let [id, len, data @ ..] = args else {
                return Err(bad("send", "expected `< send ID LEN DATA... >`"));
            };
            let id = can_id("send", id)?;
            let len = hex_u32("send", "length", len)? as usize;
            if len > CANFD_MAX_DLEN {
                return Err(bad("send", format!("length {len} above 64")));
            }
            let mut bytes = Vec::with_capacity(len);
            hex_bytes("send", data, &mut bytes)?;
            if bytes.len() != len {
                return Err(bad(
                    "send",
                    format!("length says {len} bytes but {} were given", bytes.len()),
                ));
            }
            make_frame("send", id, &bytes).map(Message::Send)
        }
        "sendrtr" => match args {
            [id, dlc] => {
                let id = can_id("sendrtr", id)?;
                let dlc = hex_u32("sendrtr", "DLC", dlc)?;
                if dlc > 8 {
                    return Err(bad("sendrtr", "DLC above 8"));
                }
                Ok(Message::SendRtr { id, dlc: dlc as u8 })
            }
            _ => Err(bad("sendrtr", "expected `< sendrtr ID DLC >`")),
        },
        "frame" => {
            let [id, ts, data @ ..] = args else {
                return Err(bad("frame", "expected `< frame ID SECS.USECS DATA >`"));
            };
            let id = can_id("frame", id)?;
            let (secs, usecs) = timestamp("frame", ts)?;
            let mut bytes = Vec::with_capacity(64);
            hex_bytes("frame", data, &mut bytes)?;
            Ok(Message::Frame {
                frame: make_frame("frame", id, &bytes)?,
                secs,
                usecs,
            })
        }
        "sendpdu" => {
            let mut bytes = Vec::new();
            hex_bytes("sendpdu", args, &mut bytes)?;
            if bytes.is_empty() {
                return Err(bad("sendpdu", "empty PDU"));
            }
            Ok(Message::SendPdu(Bytes::from(bytes)))
        }
        "pdu" => {
            let [ts, data @ ..] = args else {
                return Err(bad("pdu", "expected `< pdu SECS.USECS DATA >`"));
            };
            let (secs, usecs) = timestamp("pdu", ts)?;
            let mut bytes = Vec::new();
            hex_bytes("pdu", data, &mut bytes)?;
            Ok(Message::Pdu {
                secs,
                usecs,
                data: Bytes::from(bytes),
            })
        }
        "stat" => match args {
            [a, b, c, d] => Ok(Message::Stat {
                rx_bytes: dec("stat", "rbytes", a)?,
                rx_packets: dec("stat", "rpackets", b)?,
                tx_bytes: dec("stat", "tbytes", c)?,
                tx_packets: dec("stat", "tpackets", d)?,
            }),
            _ => Err(bad("stat", "expected 4 counters")),
        },
        "isotpconf" => {
            if args.len() < 5 || args.len() > 10 {
                return Err(bad(
                    "isotpconf",
                    "expected `< isotpconf TX_ID RX_ID FLAGS BS STMIN [WFTMAX TXPAD RXPAD EXT RXEXT] >`",
                ));
            }
            let byte = |i: usize, field: &str| -> Result<Option<u8>, ParseError> {
                match args.get(i) {
                    None => Ok(None),
                    Some(s) => {
                        let v = hex_u32("isotpconf", field, s)?;
                        u8::try_from(v)
                            .map(Some)
                            .map_err(|_| bad("isotpconf", format!("{field} `{s}` above FF")))
                    }
                }
            };
            let bs = byte(3, "blocksize")?.unwrap_or(0);
            if bs > 15 {
                return Err(bad("isotpconf", "blocksize above 15"));
            }
            Ok(Message::IsoTpConf(IsoTpConf {
                tx_id: can_id("isotpconf", args[0])?,
                rx_id: can_id("isotpconf", args[1])?,
                flags: hex_u32("isotpconf", "flags", args[2])?,
                block_size: bs,
                st_min: byte(4, "stmin")?.unwrap_or(0),
                wft_max: byte(5, "wftmax")?,
                tx_pad: byte(6, "txpad_content")?,
                rx_pad: byte(7, "rxpad_content")?,
                ext_address: byte(8, "ext_address")?,
                rx_ext_address: byte(9, "rx_ext_address")?,
            }))
        }
        "add" => Err(ParseError::Unsupported("add")),
        "update" => Err(ParseError::Unsupported("update")),
        "delete" => Err(ParseError::Unsupported("delete")),
        "filter" => Err(ParseError::Unsupported("filter")),
        "muxfilter" => Err(ParseError::Unsupported("muxfilter")),
        "subscribe" => Err(ParseError::Unsupported("subscribe")),
        "unsubscribe" => Err(ParseError::Unsupported("unsubscribe")),
        other => Err(ParseError::Unknown(other.chars().take(32).collect())),
    }
}

fn push_id(out: &mut String, id: CanId) {
    if id.is_extended() {
        let _ = write!(out, "{:08X}", id.id());
    } else {
        let _ = write!(out, "{:03X}", id.id());
    }
}

fn push_hex(out: &mut String, data: &[u8], sep: &str) {
    for (i, b) in data.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        let _ = write!(out, "{b:02X}");
    }
}

/// Append the wire form of `msg` to `out` (reuse `out` to avoid allocating per message).
pub fn format_into(msg: &Message, out: &mut String) {
    out.push_str("< ");
    match msg {
        Message::Hi => out.push_str("hi"),
        Message::Ok => out.push_str("ok"),
        Message::Echo => out.push_str("echo"),
        Message::RawMode => out.push_str("rawmode"),
        Message::BcmMode => out.push_str("bcmmode"),
        Message::IsoTpMode => out.push_str("isotpmode"),
        Message::ControlMode => out.push_str("controlmode"),
        Message::Error(text) => {
            out.push_str("error ");
            // A `>` inside would end the message early.
            out.extend(text.chars().map(|c| if c == '>' { '_' } else { c }));
        }
        Message::Open(bus) => {
            out.push_str("open ");
            out.push_str(bus);
        }
        Message::Statistics(ms) => {
            let _ = write!(out, "statistics {ms}");
        }
        Message::Frame { frame, secs, usecs } => {
            out.push_str("frame ");
            let (id, data) = match frame {
                CanAnyFrame::Classic(f) => (f.id(), f.data()),
                CanAnyFrame::Fd(f) => (f.id(), f.data()),
            };
            push_id(out, id);
            let _ = write!(out, " {secs}.{usecs:06} ");
            push_hex(out, data, "");
        }
        Message::Send(frame) => {
            out.push_str("send ");
            let (id, data) = match frame {
                CanAnyFrame::Classic(f) => (f.id(), f.data()),
                CanAnyFrame::Fd(f) => (f.id(), f.data()),
            };
            push_id(out, id);
            let _ = write!(out, " {:X}", data.len());
            if !data.is_empty() {
                out.push(' ');
                push_hex(out, data, " ");
            }
        }
        Message::SendRtr { id, dlc } => {
            out.push_str("sendrtr ");
            push_id(out, *id);
            let _ = write!(out, " {dlc:X}");
        }
        Message::SendPdu(data) => {
            out.push_str("sendpdu ");
            push_hex(out, data, "");
        }
        Message::Pdu { secs, usecs, data } => {
            let _ = write!(out, "pdu {secs}.{usecs:06} ");
            push_hex(out, data, "");
        }
        Message::Stat {
            rx_bytes,
            rx_packets,
            tx_bytes,
            tx_packets,
        } => {
            let _ = write!(out, "stat {rx_bytes} {rx_packets} {tx_bytes} {tx_packets}");
        }
        Message::IsoTpConf(c) => {
            out.push_str("isotpconf ");
            push_id(out, c.tx_id);
            out.push(' ');
            push_id(out, c.rx_id);
            let _ = write!(out, " {:X} {:X} {:X}", c.flags, c.block_size, c.st_min);
            let optional = [
                c.wft_max,
                c.tx_pad,
                c.rx_pad,
                c.ext_address,
                c.rx_ext_address,
            ];
            let last = optional.iter().rposition(Option::is_some);
            if let Some(last) = last {
                for v in &optional[..=last] {
                    let _ = write!(out, " {:X}", v.unwrap_or(0));
                }
            }
        }
    }
    out.push_str(" >");
}

/// The wire form of `msg`.
pub fn format(msg: &Message) -> String {
    let mut s = String::new();
    format_into(msg, &mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(v: u16) -> CanId {
        CanId::standard(v).unwrap()
    }

    fn one(s: &str) -> Result<Message, ParseError> {
        let mut buf = BytesMut::from(s);
        Framer::default()
            .next(&mut buf)
            .map(|m| m.expect("incomplete"))
    }

    #[test]
    fn golden_server_messages() {
        assert_eq!(format(&Message::Hi), "< hi >");
        assert_eq!(format(&Message::Ok), "< ok >");
        let f = CanFrame::new(id(0x123), &[0x11, 0x22, 0x33, 0x44]).unwrap();
        let m = Message::Frame {
            frame: CanAnyFrame::Classic(f),
            secs: 23,
            usecs: 424242,
        };
        assert_eq!(format(&m), "< frame 123 23.424242 11223344 >");
        assert_eq!(one("< frame 123 23.424242 11223344 >").unwrap(), m);
        // The spaced form of the protocol document parses to the same frame.
        assert_eq!(one("< frame 123 23.424242 11 22 33 44 >").unwrap(), m);
        let ext = CanFrame::new(CanId::extended(0x1AAAAAAA).unwrap(), &[]).unwrap();
        let m = Message::Frame {
            frame: CanAnyFrame::Classic(ext),
            secs: 1,
            usecs: 5,
        };
        assert_eq!(format(&m), "< frame 1AAAAAAA 1.000005  >");
        assert_eq!(one(&format(&m)).unwrap(), m);
        let pdu = Message::Pdu {
            secs: 1417687245,
            usecs: 814579,
            data: Bytes::from_static(&[0x00, 0x11, 0x22, 0xFF]),
        };
        assert_eq!(format(&pdu), "< pdu 1417687245.814579 001122FF >");
        assert_eq!(one(&format(&pdu)).unwrap(), pdu);
        // A short fraction is a decimal fraction, not microseconds.
        let Message::Pdu { usecs, .. } = one("< pdu 1.5 AB >").unwrap() else {
            panic!()
        };
        assert_eq!(usecs, 500_000);
    }

    #[test]
    fn golden_client_messages() {
        assert_eq!(one("< open can0 >").unwrap(), Message::Open("can0".into()));
        assert_eq!(one("<rawmode>").unwrap(), Message::RawMode);
        // python-can's form: lowercase, unpadded bytes, hex length.
        let m = one("< send 1AAAAAAA 2 1 f1 >").unwrap();
        let want = CanFrame::new(CanId::extended(0x1AAAAAAA).unwrap(), &[0x01, 0xF1]).unwrap();
        assert_eq!(m, Message::Send(CanAnyFrame::Classic(want)));
        assert_eq!(format(&m), "< send 1AAAAAAA 2 01 F1 >");
        assert_eq!(
            one("< send 123 0 >").unwrap(),
            Message::Send(CanAnyFrame::Classic(CanFrame::new(id(0x123), &[]).unwrap()))
        );
        // CAN FD: length 0x40.
        let m = one(&format!("< send 7E0 40 {} >", "AB ".repeat(64))).unwrap();
        let Message::Send(CanAnyFrame::Fd(fd)) = m else {
            panic!("not FD: {m:?}")
        };
        assert_eq!(fd.data(), &[0xAB; 64][..]);
        let conf = one("< isotpconf 1F998877 1F998876 C 4 0 0 AA 55 >").unwrap();
        let Message::IsoTpConf(c) = conf.clone() else {
            panic!()
        };
        assert_eq!(c.tx_id, CanId::extended(0x1F998877).unwrap());
        assert_eq!(c.flags, ISOTP_TX_PADDING | ISOTP_RX_PADDING);
        assert_eq!((c.block_size, c.st_min), (4, 0));
        assert_eq!(
            (c.wft_max, c.tx_pad, c.rx_pad),
            (Some(0), Some(0xAA), Some(0x55))
        );
        assert_eq!(c.ext_address, None);
        assert_eq!(
            format(&conf),
            "< isotpconf 1F998877 1F998876 C 4 0 0 AA 55 >"
        );
        assert_eq!(
            one("< sendpdu 00112233445566778899AABBCCDDEEFF >").unwrap(),
            Message::SendPdu(Bytes::from_static(&[
                0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xAA, 0xBB, 0xCC, 0xDD,
                0xEE, 0xFF
            ]))
        );
    }

    #[test]
    fn framing_handles_partial_and_back_to_back_messages() {
        let mut f = Framer::default();
        let mut buf = BytesMut::from("< hi >< open vcan0 >\n< raw");
        assert_eq!(f.next(&mut buf).unwrap(), Some(Message::Hi));
        assert_eq!(
            f.next(&mut buf).unwrap(),
            Some(Message::Open("vcan0".into()))
        );
        assert_eq!(f.next(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"mode >");
        assert_eq!(f.next(&mut buf).unwrap(), Some(Message::RawMode));
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_input_is_reported_and_skipped() {
        let mut f = Framer::new(64);
        let mut buf = BytesMut::from("junk< bogus 1 >< send 123 3 11 22 >< echo >");
        assert_eq!(f.next(&mut buf), Err(ParseError::NoStart('j')));
        assert_eq!(f.next(&mut buf), Err(ParseError::Unknown("bogus".into())));
        let e = f.next(&mut buf).unwrap_err();
        assert!(e.to_string().contains("length says 3 bytes but 2"), "{e}");
        assert_eq!(f.next(&mut buf).unwrap(), Some(Message::Echo));
        // A message that never ends is cut off at the limit, not buffered forever.
        let mut buf = BytesMut::from(format!("< sendpdu {}", "A".repeat(100)).as_str());
        assert_eq!(f.next(&mut buf), Err(ParseError::TooLong { limit: 64 }));
        assert!(buf.is_empty());
        // The rest of it is dropped silently, up to its `>`.
        buf.extend_from_slice(b"AAAA >< echo >");
        assert_eq!(f.next(&mut buf).unwrap(), Some(Message::Echo));
        assert_eq!(f.next(&mut buf.split_off(0)), Ok(None));
        assert_eq!(
            f.next(&mut BytesMut::from("< subscribe 0 0 123 >")),
            Err(ParseError::Unsupported("subscribe"))
        );
        for bad in [
            "< send 800000000 0 >",
            "< send 0AAAAA 0AAAAAAAA >", // found by the fuzzer: a 2.8 GB reservation
            "< send 123 9 1 2 3 4 5 6 7 8 9 >", // 9 is not an FD length
            "< open abcdefghijklmnopq >",
            "< isotpconf 7E0 7E8 0 16 0 >",
            "< frame 123 1.1000000 11 >",
            "< sendpdu >",
            "< hi there >",
            "< >",
        ] {
            assert!(one(bad).is_err(), "{bad} parsed");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
                let mut f = Framer::new(128);
                let mut buf = BytesMut::from(&bytes[..]);
                // Every call either consumes bytes or asks for more, so this terminates.
                for _ in 0..=bytes.len() {
                    if let Ok(None) = f.next(&mut buf) {
                        break;
                    }
                }
            }

            #[test]
            fn frames_round_trip(raw in 0u32..0x2000_0000, ext: bool, data in proptest::collection::vec(any::<u8>(), 0..=8), secs in 0u64..4_000_000_000, usecs in 0u32..1_000_000) {
                let id = if ext { CanId::extended(raw).unwrap() } else { CanId::standard((raw & 0x7FF) as u16).unwrap() };
                let frame = CanAnyFrame::Classic(CanFrame::new(id, &data).unwrap());
                for m in [Message::Frame { frame, secs, usecs }, Message::Send(frame)] {
                    prop_assert_eq!(one(&format(&m)).unwrap(), m);
                }
            }

            #[test]
            fn pdus_round_trip(data in proptest::collection::vec(any::<u8>(), 1..=4095)) {
                let m = Message::SendPdu(Bytes::from(data));
                prop_assert_eq!(one(&format(&m)).unwrap(), m);
            }
        }
    }
}
