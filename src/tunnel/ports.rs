//! Several readers on one CAN port: the gateway's raw mirror and its ISO-TP channels share an
//! interface, but a [`CanPort`] has one receive queue, so two readers would split its frames
//! between them.
//!
//! Owns: [`PortHub`] (one task reads the port and hands every frame to each subscriber) and
//! [`Tap`] (a subscriber, itself a [`CanPort`]: it receives from its own bounded queue and
//! sends straight to the port).
//!
//! Does not own: the port, or what subscribers do with frames.
//!
//! Queues are bounded. A *lossless* tap (ISO-TP: a lost consecutive frame breaks a PDU)
//! makes the hub wait for room, which backs up into the port's own queue; a *lossy* tap (a
//! raw mirror) drops frames it has no room for and counts them in its
//! [`CanPortStats::rx_dropped`], so a slow mirror never stalls diagnostics. Frames a tap
//! sends are not seen by the other taps (the port does not loop back).

use crate::vehicle::can::{CanAnyFrame, CanError, CanPort, CanPortStats};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Pause of the reader after a port error other than `Closed` (a bus-off, say).
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

struct Sub {
    id: u64,
    tx: mpsc::Sender<CanAnyFrame>,
    lossless: bool,
    dropped: Arc<AtomicU64>,
}

#[derive(Default)]
struct Subs {
    list: Vec<Sub>,
    next_id: u64,
}

/// One reader task on a port, fanning its frames out to [`Tap`]s.
pub struct PortHub<P: CanPort> {
    port: Arc<P>,
    subs: Arc<Mutex<Subs>>,
    reader: JoinHandle<()>,
}

impl<P: CanPort> Drop for PortHub<P> {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn lock(subs: &Mutex<Subs>) -> std::sync::MutexGuard<'_, Subs> {
    // Never held across a panic point; recover the list if it ever was.
    subs.lock().unwrap_or_else(|e| e.into_inner())
}

impl<P: CanPort> PortHub<P> {
    /// Start reading `port` (needs a tokio runtime). Frames that arrive while nobody is
    /// subscribed are discarded.
    pub fn new(port: Arc<P>) -> Arc<Self> {
        let subs = Arc::new(Mutex::new(Subs::default()));
        let reader = tokio::spawn(read_loop(port.clone(), subs.clone()));
        Arc::new(PortHub { port, subs, reader })
    }

    /// The port underneath.
    pub fn port(&self) -> &Arc<P> {
        &self.port
    }

    /// A new reader with a queue of `queue` frames (at least 1). See the module header for
    /// `lossless`.
    pub fn subscribe(self: &Arc<Self>, queue: usize, lossless: bool) -> Tap<P> {
        self.subscribe_counted(queue, lossless, Arc::new(AtomicU64::new(0)))
    }

    /// [`PortHub::subscribe`], counting the tap's drops in `dropped` (shared with the caller).
    pub fn subscribe_counted(
        self: &Arc<Self>,
        queue: usize,
        lossless: bool,
        dropped: Arc<AtomicU64>,
    ) -> Tap<P> {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let mut s = lock(&self.subs);
        s.next_id += 1;
        let id = s.next_id;
        s.list.push(Sub {
            id,
            tx,
            lossless,
            dropped: dropped.clone(),
        });
        Tap {
            hub: self.clone(),
            id,
            rx: tokio::sync::Mutex::new(rx),
            dropped,
        }
    }

    /// Readers now.
    pub fn subscribers(&self) -> usize {
        lock(&self.subs).list.len()
    }
}

async fn read_loop<P: CanPort>(port: Arc<P>, subs: Arc<Mutex<Subs>>) {
    let mut lossless: Vec<mpsc::Sender<CanAnyFrame>> = Vec::new();
    loop {
        let frame = match port.recv().await {
            Ok(f) => f,
            Err(CanError::Closed(_)) => break,
            Err(e) => {
                tracing::debug!(port = port.name(), error = %e, "CAN port receive error");
                tokio::time::sleep(ERROR_BACKOFF).await;
                continue;
            }
        };
        {
            let s = lock(&subs);
            for sub in &s.list {
                if sub.lossless {
                    lossless.push(sub.tx.clone());
                } else if let Err(mpsc::error::TrySendError::Full(_)) = sub.tx.try_send(frame) {
                    sub.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // Lossless readers are waited for outside the lock.
        for tx in lossless.drain(..) {
            let _ = tx.send(frame).await;
        }
    }
    // The port is closed: dropping the senders makes every tap report `Closed`.
    lock(&subs).list.clear();
}

/// One reader of a [`PortHub`]: a [`CanPort`] of its own.
pub struct Tap<P: CanPort> {
    hub: Arc<PortHub<P>>,
    id: u64,
    rx: tokio::sync::Mutex<mpsc::Receiver<CanAnyFrame>>,
    dropped: Arc<AtomicU64>,
}

impl<P: CanPort> Drop for Tap<P> {
    fn drop(&mut self) {
        lock(&self.hub.subs).list.retain(|s| s.id != self.id);
    }
}

impl<P: CanPort> Tap<P> {
    /// Wait for frames and take up to `limit` of them into `buf` (appended); 0 means the
    /// port is closed.
    pub async fn recv_many(&self, buf: &mut Vec<CanAnyFrame>, limit: usize) -> usize {
        self.rx.lock().await.recv_many(buf, limit.max(1)).await
    }
}

impl<P: CanPort> CanPort for Tap<P> {
    fn name(&self) -> &str {
        self.hub.port.name()
    }

    fn fd_capable(&self) -> bool {
        self.hub.port.fd_capable()
    }

    async fn send(&self, frame: CanAnyFrame) -> Result<(), CanError> {
        self.hub.port.send(frame).await
    }

    async fn recv(&self) -> Result<CanAnyFrame, CanError> {
        self.rx
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| CanError::Closed(format!("{}: the port stopped", self.name())))
    }

    /// The port's counters, with this tap's own drops added to `rx_dropped`.
    fn stats(&self) -> CanPortStats {
        let mut s = self.hub.port.stats();
        s.rx_dropped += self.dropped.load(Ordering::Relaxed);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::frame::{CanFrame, CanId};
    use crate::vehicle::can::vbus::VirtualBus;

    fn frame(id: u16) -> CanAnyFrame {
        CanAnyFrame::Classic(CanFrame::new(CanId::standard(id).unwrap(), &[id as u8]).unwrap())
    }

    #[tokio::test]
    async fn every_tap_sees_every_frame_and_sends_reach_the_bus() {
        let bus = VirtualBus::new("can0");
        let car = bus.port();
        let hub = PortHub::new(Arc::new(bus.port()));
        let a = hub.subscribe(16, true);
        let b = hub.subscribe(16, false);
        assert_eq!(hub.subscribers(), 2);
        for id in 1..=5 {
            car.send(frame(id)).await.unwrap();
        }
        for tap in [&a, &b] {
            for id in 1..=5 {
                assert_eq!(tap.recv().await.unwrap().id(), CanId::standard(id).unwrap());
            }
        }
        a.send(frame(0x7E0)).await.unwrap();
        assert_eq!(
            car.recv().await.unwrap().id(),
            CanId::standard(0x7E0).unwrap()
        );
        drop(b);
        assert_eq!(hub.subscribers(), 1);
        assert_eq!(a.name(), hub.port().name());
    }

    #[tokio::test]
    async fn a_full_lossy_tap_drops_and_counts_without_stalling_the_others() {
        let bus = VirtualBus::new("can0");
        let car = bus.port();
        let hub = PortHub::new(Arc::new(bus.port()));
        let slow = hub.subscribe(2, false);
        let fast = hub.subscribe(64, true);
        for id in 1..=10 {
            car.send(frame(id)).await.unwrap();
        }
        for id in 1..=10 {
            assert_eq!(
                fast.recv().await.unwrap().id(),
                CanId::standard(id).unwrap()
            );
        }
        assert_eq!(slow.stats().rx_dropped, 8);
        assert_eq!(slow.recv().await.unwrap().id(), CanId::standard(1).unwrap());
        assert_eq!(fast.stats().rx_dropped, 0);
    }
}
