//! The transmit deadline: how long a send may wait for a full transmit queue.
//!
//! Owns: [`DEFAULT_TX_TIMEOUT`] and the bounds of `tx_timeout_ms`, and [`TxRetry`], the
//! sans-IO schedule of retries while a transmit queue is full. It takes `now` and answers
//! when to try again, or that the deadline has passed.
//!
//! Does not own: the I/O. Each backend waits and writes itself and applies the same rule:
//! - SocketCAN ([`super::socketcan`]): the kernel answers `ENOBUFS` when the interface's
//!   queue (the qdisc, `txqueuelen` frames) is full, and makes a non-blocking write wait
//!   (`EAGAIN`) when the socket's send buffer is full of frames still queued. A controller
//!   that nobody acknowledges retransmits its frame forever, so both last forever. The
//!   whole send, retries and waits included, is bounded by the deadline.
//! - the `sim:` bus ([`super::simbus`]): the node's transmit queue toward the hub.
//! - the fault injector ([`super::fault`]): the "nobody acknowledges" fault.
//!
//! The in-process virtual bus never makes a sender wait, so it needs no deadline.
//!
//! Why 200 ms by default: a healthy bus drains a full kernel queue (10 frames) in about
//! 11 ms at 125 kbit/s and 3 ms at 500 kbit/s, so a healthy bus never comes near it, while
//! ISO-TP's sender gives up after N_As = 1000 ms: a stuck frame fails well before a
//! diagnostic session times out, and shutdown never waits on the bus for longer than that.

use std::time::Duration;
use tokio::time::Instant;

/// The transmit deadline when none is configured.
pub const DEFAULT_TX_TIMEOUT: Duration = Duration::from_millis(200);
/// Valid `tx_timeout_ms` values.
pub const TX_TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u32> = 10..=60_000;
/// The first wait after finding the queue full.
pub const FIRST_RETRY: Duration = Duration::from_millis(1);
/// The longest wait between retries. At 8 ms a retry costs nothing measurable, and a
/// queue that drains meanwhile (10 frames at 125 kbit/s take 11 ms) loses at most 8 ms.
pub const MAX_RETRY: Duration = Duration::from_millis(8);

/// Retries of one frame while the transmit queue is full: waits of 1, 2, 4, then 8 ms, until
/// the deadline. The retries of one frame are bounded: at most 4 + ⌈(timeout − 15 ms) / 8 ms⌉,
/// 28 with the default 200 ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxRetry {
    deadline: Instant,
    wait: Duration,
    retries: u32,
}

impl TxRetry {
    /// A frame whose first attempt is made at `now`, with `timeout` to get through.
    pub fn new(now: Instant, timeout: Duration) -> Self {
        TxRetry {
            deadline: now + timeout,
            wait: FIRST_RETRY,
            retries: 0,
        }
    }

    /// When the frame must be through.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Retries scheduled so far.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// The queue was full at `now`: when to try again (never later than the deadline, so
    /// the last attempt is made at the deadline), or `None` when the deadline has passed.
    pub fn on_full(&mut self, now: Instant) -> Option<Instant> {
        if now >= self.deadline {
            return None;
        }
        let at = (now + self.wait).min(self.deadline);
        self.wait = (self.wait * 2).min(MAX_RETRY);
        self.retries += 1;
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backs_off_then_stops_at_the_deadline() {
        let t0 = Instant::now();
        let mut r = TxRetry::new(t0, ms(200));
        assert_eq!(r.deadline(), t0 + ms(200));
        // the queue stays full: each retry happens when asked
        let mut now = t0;
        let mut waits = Vec::new();
        while let Some(at) = r.on_full(now) {
            assert!(at > now && at <= r.deadline());
            waits.push((at - now).as_millis() as u64);
            now = at;
        }
        assert_eq!(&waits[..5], &[1, 2, 4, 8, 8]);
        assert!(waits.iter().all(|&w| w <= 8));
        assert_eq!(
            now,
            t0 + ms(200),
            "the last attempt is made at the deadline"
        );
        // the bound in the docs: 4 + (200 - 15) / 8 = 27.1 -> 28
        assert_eq!(r.retries(), 28);
        assert_eq!(r.retries() as usize, waits.len());
        // and nothing more after it
        assert_eq!(r.on_full(now + ms(1)), None);
        assert_eq!(r.retries(), 28);
    }

    #[test]
    fn late_callers_get_no_retry() {
        let t0 = Instant::now();
        let mut r = TxRetry::new(t0, ms(10));
        // the first write itself took the whole deadline (e.g. a long wait for writability)
        assert_eq!(r.on_full(t0 + ms(10)), None);
        assert_eq!(r.retries(), 0);
        // a retry is never scheduled past the deadline
        let mut r = TxRetry::new(t0, ms(10));
        assert_eq!(r.on_full(t0 + ms(9)), Some(t0 + ms(10)));
    }

    #[test]
    fn the_default_is_within_the_valid_range() {
        assert!(TX_TIMEOUT_MS_RANGE.contains(&(DEFAULT_TX_TIMEOUT.as_millis() as u32)));
    }
}
