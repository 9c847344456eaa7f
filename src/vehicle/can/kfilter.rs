//! Router id rules ([`IdRule`]) as SocketCAN kernel filters.
//!
//! Owns: the translation of id/mask and range rules into the `(can_id, can_mask)` pairs
//! `CAN_RAW_FILTER` takes, with the router's matching semantics kept exactly: a rule matches
//! on the identifier without the EFF flag, so `0x7E8` passes both the 11-bit id 0x7E8 and the
//! 29-bit id 0x000007E8, as [`IdRule::matches`] does.
//!
//! Does not own: installing the filters (see [`super::socketcan`]).
//!
//! A range becomes the smallest set of aligned power-of-two blocks covering it (at most 56
//! for a 29-bit range), each one an id/mask pair.

use crate::router::IdRule;

/// The kernel's limit on filters per socket (`CAN_RAW_FILTER_MAX`).
pub const CAN_RAW_FILTER_MAX: usize = 512;
/// The identifier bits (29).
const ID_MASK: u32 = 0x1FFF_FFFF;

/// One kernel filter: a frame passes when `frame.can_id & mask == id & mask`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelFilter {
    pub id: u32,
    pub mask: u32,
}

impl KernelFilter {
    /// Kernel matching, applied to an identifier without flags.
    pub fn matches(&self, id: u32) -> bool {
        id & self.mask == self.id & self.mask
    }
}

/// Error: the rules need more filters than the kernel takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the id filters need {0} kernel filters, more than the kernel's {CAN_RAW_FILTER_MAX}; use fewer or wider ranges"
)]
pub struct TooManyFilters(pub usize);

/// Translate rules into kernel filters. An empty rule list means "every id" and gives one
/// filter with mask 0.
pub fn kernel_filters(rules: &[IdRule]) -> Result<Vec<KernelFilter>, TooManyFilters> {
    if rules.is_empty() {
        return Ok(vec![KernelFilter { id: 0, mask: 0 }]);
    }
    let mut out = Vec::new();
    for rule in rules {
        match *rule {
            IdRule::Mask { value, mask } => out.push(KernelFilter {
                id: value & mask & ID_MASK,
                mask: mask & ID_MASK,
            }),
            IdRule::Range { lo, hi } => range_blocks(lo & ID_MASK, hi.min(ID_MASK), &mut out),
        }
    }
    if out.len() > CAN_RAW_FILTER_MAX {
        return Err(TooManyFilters(out.len()));
    }
    Ok(out)
}

/// Cover `lo..=hi` with aligned power-of-two blocks.
fn range_blocks(mut lo: u32, hi: u32, out: &mut Vec<KernelFilter>) {
    if lo > hi {
        return;
    }
    loop {
        // The largest block starting at `lo` (alignment) that stays within `hi`.
        let mut size: u64 = if lo == 0 {
            1 << 29
        } else {
            1u64 << lo.trailing_zeros()
        };
        while lo as u64 + size - 1 > hi as u64 {
            size >>= 1;
        }
        let mask = !((size - 1) as u32) & ID_MASK;
        out.push(KernelFilter { id: lo, mask });
        let next = lo as u64 + size;
        if next > hi as u64 {
            return;
        }
        lo = next as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exact_and_mask() {
        let f = kernel_filters(&[IdRule::exact(0x7E8)]).unwrap();
        assert_eq!(
            f,
            vec![KernelFilter {
                id: 0x7E8,
                mask: ID_MASK
            }]
        );
        let f = kernel_filters(&["0x7E0/0x7F8".parse().unwrap()]).unwrap();
        assert_eq!(
            f,
            vec![KernelFilter {
                id: 0x7E0,
                mask: 0x7F8
            }]
        );
        assert_eq!(
            kernel_filters(&[]).unwrap(),
            vec![KernelFilter { id: 0, mask: 0 }]
        );
    }

    #[test]
    fn golden_range() {
        // 0x7E0-0x7EF is one aligned block of 16.
        let f = kernel_filters(&["0x7E0-0x7EF".parse().unwrap()]).unwrap();
        assert_eq!(
            f,
            vec![KernelFilter {
                id: 0x7E0,
                mask: ID_MASK & !0xF
            }]
        );
        // 0x7DF-0x7E8: 0x7DF, 0x7E0..=0x7E7, 0x7E8.
        let f = kernel_filters(&["0x7DF-0x7E8".parse().unwrap()]).unwrap();
        assert_eq!(f.len(), 3);
        // the whole id space is one filter
        let f = kernel_filters(&["0-0x1FFFFFFF".parse().unwrap()]).unwrap();
        assert_eq!(f, vec![KernelFilter { id: 0, mask: 0 }]);
    }

    #[test]
    fn too_many() {
        let rules: Vec<IdRule> = (0..600).map(|i| IdRule::exact(i * 2)).collect();
        assert_eq!(kernel_filters(&rules), Err(TooManyFilters(600)));
    }

    proptest! {
        #[test]
        fn same_semantics_as_the_router(lo in 0u32..0x2000, span in 0u32..0x800, probe in 0u32..0x3000,
                                        value in 0u32..0x800, mask in any::<u32>()) {
            let hi = lo + span;
            let rules = [IdRule::Range { lo, hi }, IdRule::Mask { value, mask }];
            let filters = kernel_filters(&rules).unwrap();
            prop_assert!(filters.len() <= 2 * 29 + 1);
            let router = rules.iter().any(|r| r.matches(probe));
            let kernel = filters.iter().any(|f| f.matches(probe));
            prop_assert_eq!(router, kernel);
        }

        #[test]
        fn wide_ranges_cover_exactly(lo in 0u32..=ID_MASK, hi in 0u32..=ID_MASK, probe in 0u32..=ID_MASK) {
            let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
            let filters = kernel_filters(&[IdRule::Range { lo, hi }]).unwrap();
            prop_assert!(filters.len() <= 58);
            let inside = lo <= probe && probe <= hi;
            prop_assert_eq!(filters.iter().any(|f| f.matches(probe)), inside);
            prop_assert!(filters.iter().any(|f| f.matches(lo)));
            prop_assert!(filters.iter().any(|f| f.matches(hi)));
        }
    }
}
