//! The in-process virtual CAN bus.
//!
//! Owns: [`VirtualBus`] (a bus any number of ports attach to) and [`VirtualPort`] (one node
//! on it, a [`CanPort`]), and [`RxQueue`], the bounded per-port receive queue also used by
//! the cross-process bus.
//!
//! Does not own: faults or recording (wrap a port in [`super::fault::FaultInjector`] or
//! [`super::recorder::Recorder`]), nor anything across processes (see [`super::simbus`]).
//!
//! Semantics, as on a real bus seen through SocketCAN: a frame sent on one port reaches every
//! other port on the bus, in the order sent; the sender sees its own frame only when it asked
//! for loopback. Delivery never blocks the sender: each port has a bounded receive queue,
//! and a frame arriving at a full queue is dropped and counted in that port's `rx_dropped`
//! (as a controller's receive overrun drops the newest frame). Frames carry a timestamp in
//! nanoseconds since the bus was created, on tokio's clock (so paused time applies).
//!
//! Pacing: the bus has no bit rate, so nothing paces a sender but the CPU; a receiver that
//! has not run yet finds what was sent meanwhile in its queue. A port's queue must hold what
//! its peers send before they wait for it: an ISO-TP sender with BS 0 sends a whole PDU
//! (a 4095-byte classic PDU is 586 frames, within the default 1024) and then waits for the
//! answer. Beyond that, frames are dropped and counted as above, as a kernel drops at
//! socket overflow; announce a block size on the receiving side, raise `rx_capacity`, or
//! rate-limit the sender with [`super::fault::FaultInjector`] to pace it.
//!
//! Cost: a send takes the bus's port list read lock once and each receiver's queue lock once;
//! queues are allocated up front, so the steady state allocates nothing.

use super::{CanAnyFrame, CanError, CanPort, CanPortStats, PortCounters};
use crate::router::frame::Timestamp;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Default receive queue capacity of a port, in frames.
pub const DEFAULT_RX_CAPACITY: usize = 1024;

/// A bounded receive queue with a wake-up for one receiver.
#[derive(Debug)]
pub struct RxQueue {
    frames: Mutex<VecDeque<CanAnyFrame>>,
    capacity: usize,
    notify: Notify,
    closed: AtomicBool,
}

impl RxQueue {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        RxQueue {
            frames: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
            notify: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<CanAnyFrame>> {
        // A poisoned lock only means a panic elsewhere while holding it; the queue itself
        // is always consistent (push/pop are single operations).
        self.frames.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue a frame; `false` (and nothing queued) when the queue is full.
    pub fn push(&self, frame: CanAnyFrame) -> bool {
        {
            let mut q = self.lock();
            if q.len() >= self.capacity {
                return false;
            }
            q.push_back(frame);
        }
        self.notify.notify_one();
        true
    }

    /// Take the next frame without waiting.
    pub fn try_pop(&self) -> Option<CanAnyFrame> {
        self.lock().pop_front()
    }

    /// Wait for the next frame; `None` once closed and drained.
    pub async fn pop(&self) -> Option<CanAnyFrame> {
        loop {
            if let Some(f) = self.try_pop() {
                return Some(f);
            }
            if self.closed.load(Ordering::Acquire) {
                return self.try_pop();
            }
            // notify_one stores a permit when nobody waits, so a push between the check
            // above and this await is not lost.
            self.notify.notified().await;
        }
    }

    /// Close: the receiver gets what is queued, then `None`.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One attached port, as the bus sees it.
#[derive(Debug)]
struct Node {
    id: u64,
    queue: RxQueue,
    counters: PortCounters,
}

#[derive(Debug)]
struct BusInner {
    name: String,
    nodes: RwLock<Vec<Arc<Node>>>,
    next_id: AtomicU64,
    epoch: Instant,
    fd: bool,
}

/// An in-process CAN bus. Cloning gives another handle to the same bus.
#[derive(Clone, Debug)]
pub struct VirtualBus {
    inner: Arc<BusInner>,
}

/// Options of one port.
#[derive(Clone, Copy, Debug)]
pub struct PortOptions {
    /// Receive queue capacity in frames.
    pub rx_capacity: usize,
    /// Deliver the port's own frames back to it (SocketCAN's `CAN_RAW_RECV_OWN_MSGS`).
    pub loopback: bool,
}

impl Default for PortOptions {
    fn default() -> Self {
        PortOptions {
            rx_capacity: DEFAULT_RX_CAPACITY,
            loopback: false,
        }
    }
}

impl VirtualBus {
    /// A CAN FD capable bus named `name` (ports are named `virtual:NAME/N`).
    pub fn new(name: impl Into<String>) -> Self {
        Self::with_fd(name, true)
    }

    /// A bus that carries CAN FD frames only when `fd` is true.
    pub fn with_fd(name: impl Into<String>, fd: bool) -> Self {
        VirtualBus {
            inner: Arc::new(BusInner {
                name: name.into(),
                nodes: RwLock::new(Vec::new()),
                next_id: AtomicU64::new(0),
                epoch: Instant::now(),
                fd,
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Attach a port with default options.
    pub fn port(&self) -> VirtualPort {
        self.port_with(PortOptions::default())
    }

    /// Attach a port.
    pub fn port_with(&self, opts: PortOptions) -> VirtualPort {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let node = Arc::new(Node {
            id,
            queue: RxQueue::new(opts.rx_capacity),
            counters: PortCounters::default(),
        });
        self.inner
            .nodes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(node.clone());
        VirtualPort {
            bus: self.inner.clone(),
            node,
            loopback: opts.loopback,
            name: format!("virtual:{}/{id}", self.inner.name),
        }
    }

    /// Ports currently attached.
    pub fn port_count(&self) -> usize {
        self.inner
            .nodes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

/// One node on a [`VirtualBus`]. Dropping it detaches it.
#[derive(Debug)]
pub struct VirtualPort {
    bus: Arc<BusInner>,
    node: Arc<Node>,
    loopback: bool,
    name: String,
}

impl VirtualPort {
    fn now(&self) -> Timestamp {
        Timestamp(self.bus.epoch.elapsed().as_nanos() as u64)
    }

    /// Send without waiting (delivery never blocks on a virtual bus).
    pub fn send_now(&self, frame: CanAnyFrame) -> Result<(), CanError> {
        if frame.is_fd() && !self.bus.fd {
            return Err(CanError::FdNotSupported(self.name.clone()));
        }
        if self.node.queue.is_closed() {
            return Err(CanError::Closed(self.name.clone()));
        }
        let frame = frame.with_timestamp(self.now());
        let nodes = self.bus.nodes.read().unwrap_or_else(|e| e.into_inner());
        for node in nodes.iter() {
            if node.id == self.node.id && !self.loopback {
                continue;
            }
            if node.queue.push(frame) {
                PortCounters::add(&node.counters.rx_frames, 1);
            } else {
                PortCounters::add(&node.counters.rx_dropped, 1);
            }
        }
        drop(nodes);
        PortCounters::add(&self.node.counters.tx_frames, 1);
        Ok(())
    }

    /// Take a received frame without waiting.
    pub fn try_recv(&self) -> Option<CanAnyFrame> {
        self.node.queue.try_pop()
    }

    /// Detach from the bus: pending frames can still be received, then `recv` fails.
    pub fn close(&self) {
        self.node.queue.close();
        self.bus
            .nodes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|n| n.id != self.node.id);
    }
}

impl Drop for VirtualPort {
    fn drop(&mut self) {
        self.close();
    }
}

impl CanPort for VirtualPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn fd_capable(&self) -> bool {
        self.bus.fd
    }

    async fn send(&self, frame: CanAnyFrame) -> Result<(), CanError> {
        self.send_now(frame)
    }

    async fn recv(&self) -> Result<CanAnyFrame, CanError> {
        self.node
            .queue
            .pop()
            .await
            .ok_or_else(|| CanError::Closed(self.name.clone()))
    }

    fn stats(&self) -> CanPortStats {
        self.node.counters.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::frame::{CanFdFrame, CanFrame, CanId};

    fn frame(id: u16, b: u8) -> CanAnyFrame {
        CanFrame::new(CanId::standard(id).unwrap(), &[b; 8])
            .unwrap()
            .into()
    }

    #[tokio::test]
    async fn every_other_port_sees_a_frame_in_order() {
        let bus = VirtualBus::new("t");
        let a = bus.port();
        let b = bus.port();
        let c = bus.port();
        for i in 0..10u8 {
            a.send(frame(0x100, i)).await.unwrap();
        }
        for port in [&b, &c] {
            for i in 0..10u8 {
                let f = port.recv().await.unwrap();
                assert_eq!(f.data(), &[i; 8]);
                assert_eq!(f.id(), CanId::standard(0x100).unwrap());
            }
            assert!(port.try_recv().is_none());
        }
        // the sender does not hear itself
        assert!(a.try_recv().is_none());
        assert_eq!(a.stats().tx_frames, 10);
        assert_eq!(b.stats().rx_frames, 10);
    }

    #[tokio::test]
    async fn loopback_on_request() {
        let bus = VirtualBus::new("t");
        let a = bus.port_with(PortOptions {
            loopback: true,
            ..PortOptions::default()
        });
        a.send(frame(0x1, 1)).await.unwrap();
        assert_eq!(a.recv().await.unwrap().data(), &[1; 8]);
    }

    #[tokio::test]
    async fn full_queue_drops_newest_and_counts() {
        let bus = VirtualBus::new("t");
        let a = bus.port();
        let b = bus.port_with(PortOptions {
            rx_capacity: 3,
            loopback: false,
        });
        for i in 0..5u8 {
            a.send(frame(0x2, i)).await.unwrap();
        }
        let s = b.stats();
        assert_eq!(s.rx_frames, 3);
        assert_eq!(s.rx_dropped, 2);
        // the oldest three were kept
        for i in 0..3u8 {
            assert_eq!(b.recv().await.unwrap().data(), &[i; 8]);
        }
        assert!(b.try_recv().is_none());
    }

    #[tokio::test]
    async fn fd_frames_and_classic_only_bus() {
        let fd = CanFdFrame::new(CanId::standard(0x7E0).unwrap(), &[7; 64]).unwrap();
        let bus = VirtualBus::new("fd");
        let (a, b) = (bus.port(), bus.port());
        a.send(fd.into()).await.unwrap();
        assert_eq!(b.recv().await.unwrap().data().len(), 64);
        let classic = VirtualBus::with_fd("c", false);
        let p = classic.port();
        assert!(matches!(
            p.send(fd.into()).await,
            Err(CanError::FdNotSupported(_))
        ));
        assert!(!p.fd_capable());
    }

    #[tokio::test]
    async fn receiver_wakes_and_close_ends_recv() {
        let bus = VirtualBus::new("t");
        let a = bus.port();
        let b = Arc::new(bus.port());
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.recv().await });
        tokio::task::yield_now().await;
        a.send(frame(0x3, 3)).await.unwrap();
        assert_eq!(waiter.await.unwrap().unwrap().data(), &[3; 8]);
        assert_eq!(bus.port_count(), 2);
        b.close();
        assert_eq!(bus.port_count(), 1);
        assert!(matches!(b.recv().await, Err(CanError::Closed(_))));
        assert!(matches!(
            b.send(frame(1, 1)).await,
            Err(CanError::Closed(_))
        ));
        drop(a);
        assert_eq!(bus.port_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn timestamps_follow_the_bus_clock() {
        let bus = VirtualBus::new("t");
        let (a, b) = (bus.port(), bus.port());
        tokio::time::advance(std::time::Duration::from_millis(5)).await;
        a.send(frame(1, 0)).await.unwrap();
        let t = b.recv().await.unwrap().timestamp();
        assert!(t.0 >= 5_000_000 && t.0 < 6_000_000, "{t:?}");
    }
}
