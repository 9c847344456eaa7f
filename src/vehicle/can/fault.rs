//! Fault-injector middleware: makes any [`CanPort`] hostile on purpose.
//!
//! Owns: [`FaultInjector`], a port wrapping another port and, per direction, dropping,
//! corrupting (one flipped bit), reordering (swapping a frame with the next one), delaying
//! (fixed delay plus uniform jitter) and rate-limiting frames to what a real bus of a given
//! bitrate carries ([`super::timing`]); and the seeded generator that makes every decision,
//! so the same seed and the same traffic give the same faults.
//!
//! Does not own: the bus (any [`CanPort`] can be wrapped) or the timing model.
//!
//! Order of faults on a frame: drop, then corrupt, then reorder, then delay, then the rate
//! limit. A frame held for reordering leaves after the next frame in the same direction (so
//! it waits as long as the traffic does). Receiving is cancel-safe: a frame delayed or held
//! is kept in the injector, never lost, when a `recv` future is dropped. Dropped, corrupted,
//! reordered and delayed frames are counted ([`FaultStats`]).
//!
//! One more fault models a bus where nobody acknowledges this port's frames (an ECU off, a
//! wrong bitrate, a cable off): its transmit queue is full, so a send waits for the
//! injector's transmit deadline (`tx_timeout`, as a SocketCAN port's) and fails with
//! [`CanError::TxTimeout`], sending nothing. It can be switched on and off while sends wait
//! ([`FaultInjector::set_tx_unacked`]); switching it off lets waiting sends through.

use super::timing::BusTiming;
use super::{CanAnyFrame, CanError, CanPort, CanPortStats};
use crate::router::frame::{CanFdFrame, CanFrame, CanId};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How late a frame may be found and still count as back-to-back on a rate-limited bus.
const RATE_SLACK: Duration = Duration::from_millis(5);

/// Faults applied to one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Probability (0..=1) that a frame is dropped.
    pub drop: f64,
    /// Probability that one bit of the frame is flipped (a data bit; an id bit when the
    /// frame has no data).
    pub corrupt: f64,
    /// Probability that a frame is held back and leaves after the next one.
    pub reorder: f64,
    /// Fixed delay added to every frame.
    pub delay: Duration,
    /// Uniform random extra delay, `0..=jitter`.
    pub jitter: Duration,
    /// Limit to the frame rate of a bus with these bitrates.
    pub rate: Option<BusTiming>,
}

impl Faults {
    /// No faults at all.
    pub const NONE: Faults = Faults {
        drop: 0.0,
        corrupt: 0.0,
        reorder: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        rate: None,
    };
}

/// What to inject, in both directions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultConfig {
    /// Seed of the decisions; the same seed and traffic give the same faults.
    pub seed: u64,
    /// Faults on frames this port sends.
    pub tx: Faults,
    /// Faults on frames this port receives.
    pub rx: Faults,
    /// Nobody acknowledges this port's frames: every send waits `tx_timeout` and fails with
    /// [`CanError::TxTimeout`] (see the module docs).
    pub tx_unacked: bool,
    /// The transmit deadline while `tx_unacked` (default [`super::tx::DEFAULT_TX_TIMEOUT`]).
    pub tx_timeout: Duration,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            seed: 0,
            tx: Faults::NONE,
            rx: Faults::NONE,
            tx_unacked: false,
            tx_timeout: super::tx::DEFAULT_TX_TIMEOUT,
        }
    }
}

/// Counters of injected faults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub dropped: u64,
    pub corrupted: u64,
    pub reordered: u64,
    pub delayed: u64,
    /// Sends that failed for the `tx_unacked` fault.
    pub tx_timeouts: u64,
}

/// SplitMix64: small, fast, good enough for fault decisions, and reproducible everywhere.
#[derive(Clone, Copy, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.next_f64() < p
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// Per-direction state.
#[derive(Debug)]
struct Lane {
    rng: SplitMix64,
    /// A frame held back for reordering.
    held: Option<CanAnyFrame>,
    /// Frames decided on and waiting for their time (rx only): at most two (a frame and
    /// the one it was reordered behind).
    ready: [Option<(CanAnyFrame, Instant)>; 2],
    /// When the modelled bus is free again.
    bus_free_at: Option<Instant>,
}

impl Lane {
    fn new(seed: u64) -> Self {
        Lane {
            rng: SplitMix64::new(seed),
            held: None,
            ready: [None, None],
            bus_free_at: None,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    dropped: AtomicU64,
    corrupted: AtomicU64,
    reordered: AtomicU64,
    delayed: AtomicU64,
    tx_timeouts: AtomicU64,
}

/// A [`CanPort`] that injects faults into another one.
#[derive(Debug)]
pub struct FaultInjector<P> {
    inner: P,
    cfg: FaultConfig,
    tx: Mutex<Lane>,
    rx: Mutex<Lane>,
    counters: Counters,
    /// The `tx_unacked` fault, switchable while sends wait on it.
    unacked: watch::Sender<bool>,
}

fn lock(m: &Mutex<Lane>) -> std::sync::MutexGuard<'_, Lane> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Flip one bit chosen by `rng`: a data bit, or an id bit when there is no data.
pub fn corrupt(frame: &CanAnyFrame, rng: &mut SplitMix64) -> CanAnyFrame {
    let data = frame.data();
    let id = frame.id();
    let mut buf = [0u8; 64];
    buf[..data.len()].copy_from_slice(data);
    let mut new_id = id;
    if data.is_empty() {
        let bits = if id.is_extended() { 29 } else { 11 };
        let flipped = id.id() ^ (1 << rng.below(bits));
        new_id = if id.is_extended() {
            CanId::extended(flipped).unwrap_or(id)
        } else {
            CanId::standard(flipped as u16).unwrap_or(id)
        };
    } else {
        let bit = rng.below(data.len() as u64 * 8);
        buf[(bit / 8) as usize] ^= 1 << (bit % 8);
    }
    let out = match frame {
        CanAnyFrame::Classic(f) if f.is_remote() => CanFrame::remote(new_id, f.dlc())
            .ok()
            .map(CanAnyFrame::from),
        CanAnyFrame::Classic(_) => CanFrame::new(new_id, &buf[..data.len()])
            .ok()
            .map(CanAnyFrame::from),
        CanAnyFrame::Fd(f) => CanFdFrame::new(new_id, &buf[..data.len()])
            .ok()
            .map(|mut n| {
                n.brs = f.brs;
                n.esi = f.esi;
                CanAnyFrame::from(n)
            }),
    };
    // The length is unchanged, so building cannot fail; keep the original if it did.
    out.unwrap_or(*frame).with_timestamp(frame.timestamp())
}

impl<P: CanPort> FaultInjector<P> {
    pub fn new(inner: P, cfg: FaultConfig) -> Self {
        FaultInjector {
            inner,
            tx: Mutex::new(Lane::new(cfg.seed)),
            // a different stream for rx, so tx traffic does not shift rx decisions
            rx: Mutex::new(Lane::new(cfg.seed ^ 0xA5A5_A5A5_5A5A_5A5A)),
            unacked: watch::Sender::new(cfg.tx_unacked),
            cfg,
            counters: Counters::default(),
        }
    }

    /// Switch the "nobody acknowledges" fault on or off. Switching it off lets sends that
    /// are waiting through.
    pub fn set_tx_unacked(&self, on: bool) {
        self.unacked.send_replace(on);
    }

    /// The wrapped port.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    pub fn fault_stats(&self) -> FaultStats {
        let c = &self.counters;
        FaultStats {
            dropped: c.dropped.load(Ordering::Relaxed),
            corrupted: c.corrupted.load(Ordering::Relaxed),
            reordered: c.reordered.load(Ordering::Relaxed),
            delayed: c.delayed.load(Ordering::Relaxed),
            tx_timeouts: c.tx_timeouts.load(Ordering::Relaxed),
        }
    }

    fn count(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Decide the fate of one frame: the frames to pass on now (0, 1 or 2) with the time
    /// each may leave.
    fn decide(
        &self,
        lane: &mut Lane,
        faults: &Faults,
        frame: CanAnyFrame,
        now: Instant,
    ) -> [Option<(CanAnyFrame, Instant)>; 2] {
        if lane.rng.chance(faults.drop) {
            Self::count(&self.counters.dropped);
            return [None, None];
        }
        let mut frame = frame;
        if lane.rng.chance(faults.corrupt) {
            frame = corrupt(&frame, &mut lane.rng);
            Self::count(&self.counters.corrupted);
        }
        let reorder = lane.rng.chance(faults.reorder);
        let (first, second) = match lane.held.take() {
            Some(held) => (frame, Some(held)),
            None if reorder => {
                lane.held = Some(frame);
                Self::count(&self.counters.reordered);
                return [None, None];
            }
            None => (frame, None),
        };
        let mut out = [None, None];
        for (slot, f) in out.iter_mut().zip([Some(first), second]) {
            let Some(f) = f else { continue };
            let mut delay = faults.delay;
            if !faults.jitter.is_zero() {
                let j = lane.rng.below(faults.jitter.as_nanos() as u64 + 1);
                delay += Duration::from_nanos(j);
            }
            if !delay.is_zero() {
                Self::count(&self.counters.delayed);
            }
            let mut due = now + delay;
            if let Some(timing) = faults.rate {
                // The bus model keeps its own time: a frame starts when the previous one
                // ended, or when it is due if the bus has been idle. Timers fire on a 1 ms
                // grid, so a frame found up to RATE_SLACK late still starts where the last
                // one ended: the long-run rate stays exact.
                let start = match lane.bus_free_at {
                    Some(b) if b + RATE_SLACK >= due => b,
                    _ => due,
                };
                due = start + timing.frame_time(&f);
                lane.bus_free_at = Some(due);
            }
            *slot = Some((f, due));
        }
        out
    }
}

impl<P: CanPort> CanPort for FaultInjector<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn fd_capable(&self) -> bool {
        self.inner.fd_capable()
    }

    async fn send(&self, frame: CanAnyFrame) -> Result<(), CanError> {
        if *self.unacked.borrow() {
            // The queue is full until somebody acknowledges (the fault is switched off).
            let mut acked = self.unacked.subscribe();
            let through = matches!(
                tokio::time::timeout(self.cfg.tx_timeout, acked.wait_for(|on| !*on)).await,
                Ok(Ok(_))
            );
            if !through {
                Self::count(&self.counters.tx_timeouts);
                return Err(CanError::TxTimeout {
                    iface: self.inner.name().to_string(),
                    timeout: self.cfg.tx_timeout,
                    retries: 0,
                });
            }
        }
        let now = Instant::now();
        let out = {
            let mut lane = lock(&self.tx);
            self.decide(&mut lane, &self.cfg.tx, frame, now)
        };
        for (f, due) in out.into_iter().flatten() {
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            self.inner.send(f).await?;
        }
        Ok(())
    }

    async fn recv(&self) -> Result<CanAnyFrame, CanError> {
        loop {
            // A frame already decided on leaves first (kept here across cancellation).
            let next = {
                let lane = lock(&self.rx);
                lane.ready[0]
            };
            if let Some((_, due)) = next {
                if due > Instant::now() {
                    tokio::time::sleep_until(due).await;
                }
                let mut lane = lock(&self.rx);
                if let Some((f, _)) = lane.ready[0].take() {
                    lane.ready[0] = lane.ready[1].take();
                    return Ok(f);
                }
                continue;
            }
            let frame = self.inner.recv().await?;
            let now = Instant::now();
            let mut lane = lock(&self.rx);
            let out = self.decide(&mut lane, &self.cfg.rx, frame, now);
            lane.ready = out;
        }
    }

    fn stats(&self) -> CanPortStats {
        let mut s = self.inner.stats();
        s.rx_dropped += self.counters.dropped.load(Ordering::Relaxed);
        s.tx_timeouts += self.counters.tx_timeouts.load(Ordering::Relaxed);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vehicle::can::vbus::VirtualBus;

    fn frame(i: u8) -> CanAnyFrame {
        CanFrame::new(CanId::standard(0x123).unwrap(), &[i; 8])
            .unwrap()
            .into()
    }

    async fn run_tx(cfg: FaultConfig, n: u8) -> (Vec<CanAnyFrame>, FaultStats) {
        let bus = VirtualBus::new("f");
        let tx = FaultInjector::new(bus.port(), cfg);
        let rx = bus.port();
        for i in 0..n {
            tx.send(frame(i)).await.unwrap();
        }
        let mut got = Vec::new();
        while let Some(f) = rx.try_recv() {
            got.push(f.with_timestamp(Default::default()));
        }
        (got, tx.fault_stats())
    }

    #[tokio::test(start_paused = true)]
    async fn no_faults_is_transparent() {
        let (got, stats) = run_tx(FaultConfig::default(), 50).await;
        assert_eq!(got, (0..50).map(frame).collect::<Vec<_>>());
        assert_eq!(stats, FaultStats::default());
    }

    #[tokio::test(start_paused = true)]
    async fn drop_rate_is_seeded_and_counted() {
        let cfg = FaultConfig {
            seed: 7,
            tx: Faults {
                drop: 0.3,
                ..Faults::NONE
            },
            ..FaultConfig::default()
        };
        let (a, sa) = run_tx(cfg, 200).await;
        let (b, sb) = run_tx(cfg, 200).await;
        assert_eq!(a, b, "same seed, same faults");
        assert_eq!(a.len() as u64 + sa.dropped, 200);
        assert_eq!(sa, sb);
        // about 30 % dropped
        assert!((40..=80).contains(&sa.dropped), "{}", sa.dropped);
        let (c, _) = run_tx(FaultConfig { seed: 8, ..cfg }, 200).await;
        assert_ne!(a, c, "another seed, other faults");
    }

    #[tokio::test(start_paused = true)]
    async fn corrupt_flips_exactly_one_bit() {
        let cfg = FaultConfig {
            seed: 1,
            tx: Faults {
                corrupt: 1.0,
                ..Faults::NONE
            },
            ..FaultConfig::default()
        };
        let (got, stats) = run_tx(cfg, 20).await;
        assert_eq!(stats.corrupted, 20);
        for (i, f) in got.iter().enumerate() {
            let diff: u32 = f
                .data()
                .iter()
                .zip(frame(i as u8).data())
                .map(|(a, b)| (a ^ b).count_ones())
                .sum();
            assert_eq!(diff, 1);
        }
        // no data: the id changes by one bit instead
        let mut rng = SplitMix64::new(3);
        let empty: CanAnyFrame = CanFrame::new(CanId::standard(0x7E8).unwrap(), &[])
            .unwrap()
            .into();
        let c = corrupt(&empty, &mut rng);
        assert_eq!((c.id().id() ^ 0x7E8).count_ones(), 1);
        assert!(c.id().id() <= 0x7FF);
    }

    #[tokio::test(start_paused = true)]
    async fn reorder_swaps_neighbours() {
        let cfg = FaultConfig {
            seed: 1,
            tx: Faults {
                reorder: 1.0,
                ..Faults::NONE
            },
            ..FaultConfig::default()
        };
        // always reorder: 0 held, 1 then 0, 2 held, 3 then 2, ...
        let (got, stats) = run_tx(cfg, 6).await;
        let order: Vec<u8> = got.iter().map(|f| f.data()[0]).collect();
        assert_eq!(order, vec![1, 0, 3, 2, 5, 4]);
        assert_eq!(stats.reordered, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_matches_the_bus() {
        let cfg = FaultConfig {
            tx: Faults {
                rate: Some(BusTiming::classic(500_000)),
                ..Faults::NONE
            },
            ..FaultConfig::default()
        };
        let start = Instant::now();
        let (got, _) = run_tx(cfg, 100).await;
        assert_eq!(got.len(), 100);
        // 100 worst-case 8-byte frames at 500 kbit/s: 100 x 270 us = 27 ms (the timer's
        // 1 ms grid may add up to one tick)
        let took = start.elapsed();
        assert!(
            took >= Duration::from_micros(27_000) && took <= Duration::from_millis(28),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rx_delay_with_jitter_and_cancel_safety() {
        let bus = VirtualBus::new("f");
        let tx = bus.port();
        let rx = FaultInjector::new(
            bus.port(),
            FaultConfig {
                seed: 9,
                rx: Faults {
                    delay: Duration::from_millis(10),
                    jitter: Duration::from_millis(5),
                    ..Faults::NONE
                },
                ..FaultConfig::default()
            },
        );
        tx.send(frame(1)).await.unwrap();
        let start = Instant::now();
        // a recv cancelled while the frame is delayed does not lose it
        let cancelled = tokio::time::timeout(Duration::from_millis(2), rx.recv()).await;
        assert!(cancelled.is_err());
        let f = rx.recv().await.unwrap();
        assert_eq!(f.data(), &[1; 8]);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(10) && waited <= Duration::from_millis(15),
            "{waited:?}"
        );
        assert_eq!(rx.fault_stats().delayed, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn unacked_transmit_fails_at_the_deadline() {
        let bus = VirtualBus::new("f");
        let tx = FaultInjector::new(
            bus.port(),
            FaultConfig {
                tx_unacked: true,
                tx_timeout: Duration::from_millis(150),
                ..FaultConfig::default()
            },
        );
        let rx = bus.port();
        for _ in 0..3 {
            let start = Instant::now();
            let e = tx.send(frame(1)).await.unwrap_err();
            // paused time: exactly the deadline, give or take the timer's 1 ms grid
            let took = start.elapsed();
            assert!(
                took >= Duration::from_millis(150) && took <= Duration::from_millis(151),
                "{took:?}"
            );
            let CanError::TxTimeout {
                iface,
                timeout,
                retries,
            } = &e
            else {
                panic!("{e:?}")
            };
            assert_eq!(iface, tx.name());
            assert_eq!(*timeout, Duration::from_millis(150));
            assert_eq!(*retries, 0);
            assert!(e.to_string().contains("150 ms"), "{e}");
        }
        assert!(rx.try_recv().is_none(), "nothing reached the bus");
        assert_eq!(tx.fault_stats().tx_timeouts, 3);
        assert_eq!(tx.stats().tx_timeouts, 3);
        assert_eq!(tx.stats().tx_frames, 0);
        // the fault goes away: frames get through at once
        tx.set_tx_unacked(false);
        let start = Instant::now();
        tx.send(frame(2)).await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(rx.try_recv().unwrap().data(), &[2; 8]);
    }

    #[tokio::test(start_paused = true)]
    async fn acknowledging_again_releases_a_waiting_send() {
        let bus = VirtualBus::new("f");
        let tx = std::sync::Arc::new(FaultInjector::new(
            bus.port(),
            FaultConfig {
                tx_unacked: true,
                ..FaultConfig::default()
            },
        ));
        let rx = bus.port();
        let start = Instant::now();
        let sender = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send(frame(3)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.set_tx_unacked(false);
        sender.await.unwrap().unwrap();
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(50) && took <= Duration::from_millis(51),
            "{took:?}"
        );
        assert_eq!(rx.try_recv().unwrap().data(), &[3; 8]);
        assert_eq!(tx.fault_stats().tx_timeouts, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_waiting_send_is_immediate() {
        let bus = VirtualBus::new("f");
        let tx = FaultInjector::new(
            bus.port(),
            FaultConfig {
                tx_unacked: true,
                tx_timeout: Duration::from_secs(60),
                ..FaultConfig::default()
            },
        );
        let start = Instant::now();
        let cut = tokio::time::timeout(Duration::from_millis(5), tx.send(frame(4))).await;
        assert!(cut.is_err());
        assert!(start.elapsed() <= Duration::from_millis(6));
        // the cancelled send neither counted nor sent anything
        assert_eq!(tx.fault_stats().tx_timeouts, 0);
        assert_eq!(tx.stats().tx_frames, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn rx_drop_and_reorder() {
        let bus = VirtualBus::new("f");
        let tx = bus.port();
        let rx = FaultInjector::new(
            bus.port(),
            FaultConfig {
                seed: 2,
                rx: Faults {
                    reorder: 1.0,
                    ..Faults::NONE
                },
                ..FaultConfig::default()
            },
        );
        for i in 0..4 {
            tx.send(frame(i)).await.unwrap();
        }
        let mut order = Vec::new();
        for _ in 0..4 {
            order.push(rx.recv().await.unwrap().data()[0]);
        }
        assert_eq!(order, vec![1, 0, 3, 2]);

        let dropper = FaultInjector::new(
            bus.port(),
            FaultConfig {
                seed: 2,
                rx: Faults {
                    drop: 1.0,
                    ..Faults::NONE
                },
                ..FaultConfig::default()
            },
        );
        tx.send(frame(9)).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), dropper.recv())
                .await
                .is_err()
        );
        assert_eq!(dropper.stats().rx_dropped, 1);
    }
}
