//! The simulated flash memory: erase state, the active download and its running CRC.
//!
//! Owns: CRC-32 (IEEE 802.3, the zlib/PNG one), the download state machine behind
//! RequestDownload / TransferData / RequestTransferExit, and the summary of the last completed
//! download that tests compare. The bytes themselves are not stored: a simulator needs to
//! prove what arrived, not to keep it.
//!
//! Does not own session or security preconditions (the ECU checks those first).

use crate::vehicle::uds::Nrc;

use super::config::FlashConfig;

/// Slicing-by-8 tables: `CRC_TABLES[0]` is the classic byte table, `CRC_TABLES[k][i]` the
/// CRC of byte `i` followed by `k` zero bytes.
const CRC_TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut k = 1;
        while k < 8 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            k += 1;
        }
        i += 1;
    }
    t
};

/// Running CRC-32 (reflected, polynomial 0x04C11DB7, init and final XOR 0xFFFFFFFF).
#[derive(Clone, Copy, Debug)]
pub struct Crc32(u32);

impl Crc32 {
    pub const fn new() -> Crc32 {
        Crc32(0xFFFF_FFFF)
    }

    pub fn update(&mut self, data: &[u8]) {
        let t = &CRC_TABLES;
        let mut c = self.0;
        let mut chunks = data.chunks_exact(8);
        for chunk in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            let lo = c ^ u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let hi = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            let idx = |v: u32, shift: u32| usize::from((v >> shift) as u8);
            c = t[7][idx(lo, 0)]
                ^ t[6][idx(lo, 8)]
                ^ t[5][idx(lo, 16)]
                ^ t[4][idx(lo, 24)]
                ^ t[3][idx(hi, 0)]
                ^ t[2][idx(hi, 8)]
                ^ t[1][idx(hi, 16)]
                ^ t[0][idx(hi, 24)];
        }
        for b in chunks.remainder() {
            c = t[0][usize::from((c as u8) ^ b)] ^ (c >> 8);
        }
        self.0 = c;
    }

    pub const fn finish(&self) -> u32 {
        self.0 ^ 0xFFFF_FFFF
    }
}

impl Default for Crc32 {
    fn default() -> Self {
        Crc32::new()
    }
}

/// CRC-32 of `data` in one call.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = Crc32::new();
    c.update(data);
    c.finish()
}

/// A completed download, as RequestTransferExit saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DownloadSummary {
    pub address: u32,
    pub size: u32,
    /// CRC-32 of the bytes downloaded, in order.
    pub crc32: u32,
    /// TransferData blocks accepted (repeats of the previous block not counted).
    pub blocks: u32,
}

/// A download in progress.
#[derive(Clone, Debug)]
struct Download {
    address: u32,
    size: u32,
    received: u32,
    /// The counter the next new block must carry.
    next_counter: u8,
    /// Counter of the last accepted block: a repeat of it is acknowledged, not written again.
    last_counter: Option<u8>,
    blocks: u32,
    crc: Crc32,
}

/// Flash memory state of one ECU.
#[derive(Clone, Debug, Default)]
pub(crate) struct Flash {
    /// The range erased and not yet programmed: (start, end exclusive).
    erased: Option<(u32, u32)>,
    active: Option<Download>,
    last: Option<DownloadSummary>,
    completed: u32,
}

impl Flash {
    pub(crate) fn is_active(&self) -> bool {
        self.active.is_some()
    }

    pub(crate) fn last(&self) -> Option<DownloadSummary> {
        self.last
    }

    pub(crate) fn completed(&self) -> u32 {
        self.completed
    }

    pub(crate) fn received(&self) -> Option<u32> {
        self.active.as_ref().map(|d| d.received)
    }

    /// Abort a download in progress (session change, reset, S3 timeout).
    pub(crate) fn abort(&mut self) {
        self.active = None;
    }

    /// Validate `address..address+size` against the memory.
    fn check_range(cfg: &FlashConfig, address: u32, size: u32) -> Result<(u32, u32), Nrc> {
        let end = u64::from(address) + u64::from(size);
        let mem_end = u64::from(cfg.base) + u64::from(cfg.size);
        if size == 0 || address < cfg.base || end > mem_end {
            return Err(Nrc::REQUEST_OUT_OF_RANGE);
        }
        // end <= mem_end <= 2^33; it fits u32 unless the memory reaches 4 GiB exactly.
        Ok((address, u32::try_from(end).unwrap_or(u32::MAX)))
    }

    /// RoutineControl eraseMemory: erase `range` (or all of the memory).
    pub(crate) fn erase(
        &mut self,
        cfg: &FlashConfig,
        range: Option<(u32, u32)>,
    ) -> Result<(), Nrc> {
        if self.active.is_some() {
            return Err(Nrc::CONDITIONS_NOT_CORRECT);
        }
        let range = match range {
            Some((address, size)) => Self::check_range(cfg, address, size)?,
            None => Self::check_range(cfg, cfg.base, cfg.size)?,
        };
        self.erased = Some(range);
        Ok(())
    }

    /// RequestDownload.
    pub(crate) fn request_download(
        &mut self,
        cfg: &FlashConfig,
        address: u32,
        size: u32,
    ) -> Result<(), Nrc> {
        if self.active.is_some() {
            return Err(Nrc::CONDITIONS_NOT_CORRECT);
        }
        let (start, end) = Self::check_range(cfg, address, size)?;
        if cfg.require_erase {
            match self.erased {
                Some((es, ee)) if es <= start && end <= ee => {}
                _ => return Err(Nrc::UPLOAD_DOWNLOAD_NOT_ACCEPTED),
            }
        }
        self.active = Some(Download {
            address,
            size,
            received: 0,
            next_counter: 1,
            last_counter: None,
            blocks: 0,
            crc: Crc32::new(),
        });
        Ok(())
    }

    /// TransferData with `counter` and `data` (the request length was checked by the caller).
    pub(crate) fn transfer(
        &mut self,
        cfg: &FlashConfig,
        counter: u8,
        data: &[u8],
    ) -> Result<(), Nrc> {
        let Some(d) = self.active.as_mut() else {
            return Err(Nrc::REQUEST_SEQUENCE_ERROR);
        };
        if counter != d.next_counter {
            return if d.last_counter == Some(counter) {
                // The tester repeated the last block (it lost our answer): acknowledge again.
                Ok(())
            } else {
                Err(Nrc::WRONG_BLOCK_SEQUENCE_COUNTER)
            };
        }
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let total = u64::from(d.received) + u64::from(len);
        if total > u64::from(d.size) {
            return Err(Nrc::TRANSFER_DATA_SUSPENDED);
        }
        if let Some(limit) = cfg.fail_after
            && total > u64::from(limit)
        {
            return Err(Nrc::GENERAL_PROGRAMMING_FAILURE);
        }
        d.crc.update(data);
        d.received += len;
        d.blocks += 1;
        d.last_counter = Some(counter);
        d.next_counter = counter.wrapping_add(1);
        Ok(())
    }

    /// RequestTransferExit: the download must be complete.
    pub(crate) fn exit(&mut self) -> Result<DownloadSummary, Nrc> {
        let Some(d) = self.active.as_ref() else {
            return Err(Nrc::REQUEST_SEQUENCE_ERROR);
        };
        if d.received != d.size {
            return Err(Nrc::REQUEST_SEQUENCE_ERROR);
        }
        let summary = DownloadSummary {
            address: d.address,
            size: d.size,
            crc32: d.crc.finish(),
            blocks: d.blocks,
        };
        self.active = None;
        // The programmed range is no longer erased.
        self.erased = None;
        self.last = Some(summary);
        self.completed += 1;
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-at-a-time reference, independent of the tables.
    fn crc32_bitwise(data: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for b in data {
            c ^= u32::from(*b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    proptest::proptest! {
        #[test]
        fn sliced_crc_matches_bitwise(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100), split in 0usize..100) {
            let mut c = Crc32::new();
            let split = split.min(data.len());
            c.update(&data[..split]);
            c.update(&data[split..]);
            proptest::prop_assert_eq!(c.finish(), crc32_bitwise(&data));
        }
    }

    #[test]
    fn crc32_check_value() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        let mut c = Crc32::new();
        c.update(b"1234");
        c.update(b"56789");
        assert_eq!(c.finish(), 0xCBF4_3926);
    }

    #[test]
    fn range_checks() {
        let cfg = FlashConfig {
            base: 0x1000,
            size: 0x1000,
            ..FlashConfig::default()
        };
        let mut f = Flash::default();
        assert_eq!(
            f.erase(&cfg, Some((0x0FFF, 1))),
            Err(Nrc::REQUEST_OUT_OF_RANGE)
        );
        assert_eq!(
            f.erase(&cfg, Some((0x1FFF, 2))),
            Err(Nrc::REQUEST_OUT_OF_RANGE)
        );
        assert_eq!(
            f.erase(&cfg, Some((0x1000, 0))),
            Err(Nrc::REQUEST_OUT_OF_RANGE)
        );
        assert_eq!(
            f.erase(&cfg, Some((u32::MAX, u32::MAX))),
            Err(Nrc::REQUEST_OUT_OF_RANGE)
        );
        assert_eq!(
            f.request_download(&cfg, 0x1000, 16),
            Err(Nrc::UPLOAD_DOWNLOAD_NOT_ACCEPTED)
        );
        assert_eq!(f.erase(&cfg, Some((0x1000, 0x100))), Ok(()));
        assert_eq!(
            f.request_download(&cfg, 0x1000, 0x101),
            Err(Nrc::UPLOAD_DOWNLOAD_NOT_ACCEPTED)
        );
        assert_eq!(f.request_download(&cfg, 0x1000, 0x100), Ok(()));
        assert_eq!(
            f.request_download(&cfg, 0x1000, 0x100),
            Err(Nrc::CONDITIONS_NOT_CORRECT)
        );
    }
}
