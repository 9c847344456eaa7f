//! Route selection: which frames a route carries.
//!
//! A [`FrameFilter`] is a set of frame kinds plus a list of id rules ([`IdRule`]); a frame
//! passes when its kind is in the set and any rule matches its routing id (an empty rule list
//! matches every id). Matching is branch-light and allocation-free.

use super::frame::{Frame, FrameKind};
use std::fmt;
use std::str::FromStr;

/// One id rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdRule {
    /// `id & mask == value & mask` (SocketCAN filter semantics).
    Mask { value: u32, mask: u32 },
    /// `lo <= id <= hi`.
    Range { lo: u32, hi: u32 },
}

impl IdRule {
    /// Exactly one id.
    pub const fn exact(id: u32) -> Self {
        IdRule::Mask {
            value: id,
            mask: u32::MAX,
        }
    }

    #[inline]
    pub fn matches(&self, id: u32) -> bool {
        match *self {
            IdRule::Mask { value, mask } => id & mask == value & mask,
            IdRule::Range { lo, hi } => lo <= id && id <= hi,
        }
    }
}

impl fmt::Display for IdRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            IdRule::Mask { value, mask } if mask == u32::MAX => write!(f, "{value:#X}"),
            IdRule::Mask { value, mask } => write!(f, "{value:#X}/{mask:#X}"),
            IdRule::Range { lo, hi } => write!(f, "{lo:#X}-{hi:#X}"),
        }
    }
}

/// Error parsing an [`IdRule`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not an id filter ({reason}); expected `0x7E8`, `0x7E0/0x7F8` (id/mask) or `0x700-0x7FF` (range), ids up to 0x1FFFFFFF"
)]
pub struct IdRuleError {
    pub input: String,
    pub reason: &'static str,
}

fn parse_num(s: &str) -> Option<u32> {
    let s = s.trim();
    let v = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()?
    } else {
        s.parse().ok()?
    };
    (v <= 0x1FFF_FFFF).then_some(v)
}

impl FromStr for IdRule {
    type Err = IdRuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| IdRuleError {
            input: s.to_string(),
            reason,
        };
        if let Some((v, m)) = s.split_once('/') {
            let value = parse_num(v).ok_or_else(|| err("bad id"))?;
            let mask = parse_num(m).ok_or_else(|| err("bad mask"))?;
            Ok(IdRule::Mask { value, mask })
        } else if let Some((lo, hi)) = s.split_once('-') {
            let lo = parse_num(lo).ok_or_else(|| err("bad range start"))?;
            let hi = parse_num(hi).ok_or_else(|| err("bad range end"))?;
            if lo > hi {
                return Err(err("range start above its end"));
            }
            Ok(IdRule::Range { lo, hi })
        } else {
            parse_num(s).map(IdRule::exact).ok_or_else(|| err("bad id"))
        }
    }
}

/// A set of frame kinds, as a bitmask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindSet(u8);

impl KindSet {
    pub const ALL: KindSet = KindSet(0b1111);
    pub const NONE: KindSet = KindSet(0);

    pub fn of(kinds: &[FrameKind]) -> Self {
        KindSet(kinds.iter().fold(0, |acc, k| acc | (1 << *k as u8)))
    }

    #[inline]
    pub fn contains(self, k: FrameKind) -> bool {
        self.0 & (1 << k as u8) != 0
    }
}

/// Which frames a route carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameFilter {
    kinds: KindSet,
    rules: Box<[IdRule]>,
}

impl Default for FrameFilter {
    fn default() -> Self {
        Self::all()
    }
}

impl FrameFilter {
    /// Every frame.
    pub fn all() -> Self {
        FrameFilter {
            kinds: KindSet::ALL,
            rules: Box::new([]),
        }
    }

    /// Frames of the given kinds (empty slice: every kind) whose routing id matches any rule
    /// (empty slice: every id).
    pub fn new(kinds: &[FrameKind], rules: &[IdRule]) -> Self {
        FrameFilter {
            kinds: if kinds.is_empty() {
                KindSet::ALL
            } else {
                KindSet::of(kinds)
            },
            rules: rules.into(),
        }
    }

    #[inline]
    pub fn matches(&self, frame: &Frame) -> bool {
        if !self.kinds.contains(frame.kind()) {
            return false;
        }
        if self.rules.is_empty() {
            return true;
        }
        let id = frame.routing_id();
        self.rules.iter().any(|r| r.matches(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::frame::{CanFdFrame, CanFrame, CanId, DoipMessage, Timestamp};
    use bytes::Bytes;

    fn can(id: u16) -> Frame {
        CanFrame::new(CanId::standard(id).unwrap(), &[0; 8])
            .unwrap()
            .into()
    }

    #[test]
    fn parse_rules() {
        assert_eq!("0x7E8".parse(), Ok(IdRule::exact(0x7E8)));
        assert_eq!(
            "0x7E0/0x7F8".parse(),
            Ok(IdRule::Mask {
                value: 0x7E0,
                mask: 0x7F8
            })
        );
        assert_eq!(
            "0x700-0x7FF".parse(),
            Ok(IdRule::Range {
                lo: 0x700,
                hi: 0x7FF
            })
        );
        assert_eq!("2015".parse(), Ok(IdRule::exact(2015)));
        let e = "0x800-0x700".parse::<IdRule>().unwrap_err();
        assert_eq!(e.reason, "range start above its end");
        assert!("0x20000000".parse::<IdRule>().is_err());
        assert!(
            "zz".parse::<IdRule>()
                .unwrap_err()
                .to_string()
                .contains("`zz`")
        );
        for s in ["0x7E8", "0x7E0/0x7F8", "0x700-0x7FF"] {
            let r: IdRule = s.parse().unwrap();
            assert_eq!(r.to_string().parse::<IdRule>().unwrap(), r);
        }
    }

    #[test]
    fn mask_and_range_match() {
        let f = FrameFilter::new(&[], &["0x7E0/0x7F8".parse().unwrap()]);
        assert!(f.matches(&can(0x7E0)));
        assert!(f.matches(&can(0x7E7)));
        assert!(!f.matches(&can(0x7E8)));
        let r = FrameFilter::new(&[], &["0x100-0x1FF".parse().unwrap(), IdRule::exact(0x7DF)]);
        assert!(r.matches(&can(0x100)));
        assert!(r.matches(&can(0x1FF)));
        assert!(r.matches(&can(0x7DF)));
        assert!(!r.matches(&can(0x200)));
    }

    #[test]
    fn kinds_select() {
        let f = FrameFilter::new(&[FrameKind::CanFd, FrameKind::Doip], &[]);
        assert!(!f.matches(&can(1)));
        let fd = CanFdFrame::new(CanId::standard(1).unwrap(), &[0; 64]).unwrap();
        assert!(f.matches(&fd.into()));
        let doip = DoipMessage {
            source: 0x0E00,
            target: 0x1000,
            data: Bytes::from_static(&[0x22, 0xF1, 0x90]),
            timestamp: Timestamp(0),
        };
        assert!(f.matches(&doip.clone().into()));
        // DoIP routing id is the target address.
        let by_target = FrameFilter::new(&[FrameKind::Doip], &[IdRule::exact(0x1000)]);
        assert!(by_target.matches(&doip.into()));
        assert!(FrameFilter::all().matches(&can(5)));
    }
}
