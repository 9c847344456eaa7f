//! The thin tokio driver around the sans-IO [`Router`].
//!
//! Owns: waiting. A [`Source`] sends frames and waits while a backpressure sink is full; a
//! [`Sink`] receives frames and waits while its queue is empty. The core sits behind one
//! short-held `std::sync::Mutex` (no await while held); per-sink [`Notify`]s wake readers
//! only when a queue goes from empty to non-empty, and one `Notify` wakes blocked sources
//! when a sink makes room. Nothing here allocates per frame.
//!
//! Does not own: routing decisions or counters (the core's), or any port's I/O.

use super::core::{PortId, Router};
use super::frame::Frame;
use super::stats::RouterSnapshot;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// The router was closed (daemon shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the router is closed")]
pub struct Closed;

struct Shared {
    core: Mutex<Router>,
    /// One per port: its queue became non-empty (or the router closed).
    ready: Box<[Notify]>,
    /// Some sink made room (or the router closed).
    space: Notify,
    /// Sources currently waiting for room; sinks notify only when this is non-zero.
    waiting: AtomicUsize,
    closed: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Router> {
        // A panic while holding the lock cannot leave the core half-updated in a way that
        // matters more than stopping the data plane would; keep serving.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self, core: &mut Router) {
        core.take_wakes(|p| self.ready[p.index()].notify_one());
    }
}

/// Shared handle to a running router. Cheap to clone.
#[derive(Clone)]
pub struct RouterHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RouterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterHandle").finish_non_exhaustive()
    }
}

impl RouterHandle {
    pub fn new(router: Router) -> Self {
        let ready = (0..router.port_count()).map(|_| Notify::new()).collect();
        RouterHandle {
            shared: Arc::new(Shared {
                core: Mutex::new(router),
                ready,
                space: Notify::new(),
                waiting: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// The id of a named port.
    pub fn port(&self, name: &str) -> Option<PortId> {
        self.shared.lock().port(name)
    }

    /// A sending handle for `port`.
    pub fn source(&self, port: PortId) -> Source {
        Source {
            shared: self.shared.clone(),
            port,
        }
    }

    /// A receiving handle for `port`. Give each port's sink to one task.
    pub fn sink(&self, port: PortId) -> Sink {
        Sink {
            shared: self.shared.clone(),
            port,
        }
    }

    /// Every counter, now.
    pub fn snapshot(&self) -> RouterSnapshot {
        self.shared.lock().snapshot()
    }

    /// Close the router: sources fail with [`Closed`]; sinks drain what is queued, then end.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.space.notify_waiters();
        for n in self.shared.ready.iter() {
            n.notify_one();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }
}

/// Sends frames into the router from one port.
#[derive(Clone)]
pub struct Source {
    shared: Arc<Shared>,
    port: PortId,
}

impl Source {
    pub fn port(&self) -> PortId {
        self.port
    }

    /// Route one frame, waiting while a backpressure sink is full.
    pub async fn send(&self, frame: Frame) -> Result<(), Closed> {
        self.send_all(std::iter::once(frame)).await
    }

    /// Route frames in order under as few lock acquisitions as possible, waiting whenever a
    /// backpressure sink is full. On [`Closed`], frames not yet routed are dropped.
    pub async fn send_all<I: IntoIterator<Item = Frame>>(&self, frames: I) -> Result<(), Closed> {
        let sh = &*self.shared;
        let mut iter = frames.into_iter();
        let Some(mut pending) = iter.next() else {
            return Ok(());
        };
        loop {
            if sh.closed.load(Ordering::Relaxed) {
                return Err(Closed);
            }
            // Register interest in "space" before trying, so a drain between the try and
            // the wait is not missed.
            let notified = sh.space.notified();
            tokio::pin!(notified);
            let blocked = {
                let mut core = sh.lock();
                let mut blocked = None;
                loop {
                    match core.route(self.port, pending) {
                        Ok(_) => match iter.next() {
                            Some(next) => pending = next,
                            None => break,
                        },
                        Err(b) => {
                            blocked = Some(b.frame);
                            break;
                        }
                    }
                }
                sh.wake(&mut core);
                if blocked.is_some() {
                    notified.as_mut().enable();
                    sh.waiting.fetch_add(1, Ordering::SeqCst);
                }
                blocked
            };
            match blocked {
                None => return Ok(()),
                Some(frame) => {
                    pending = frame;
                    notified.await;
                    sh.waiting.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    }
}

/// Receives the frames queued for one port.
pub struct Sink {
    shared: Arc<Shared>,
    port: PortId,
}

impl Sink {
    pub fn port(&self) -> PortId {
        self.port
    }

    /// Wait for frames and append up to `max` of them to `out`. Returns how many, or `None`
    /// once the router is closed and this queue is empty.
    pub async fn recv_batch(&self, out: &mut Vec<Frame>, max: usize) -> Option<usize> {
        let sh = &*self.shared;
        loop {
            let notified = sh.ready[self.port.index()].notified();
            let n = {
                let mut core = sh.lock();
                core.pop_batch(self.port, max, |f| out.push(f))
            };
            if n > 0 {
                if sh.waiting.load(Ordering::SeqCst) > 0 {
                    sh.space.notify_waiters();
                }
                return Some(n);
            }
            if sh.closed.load(Ordering::SeqCst) {
                return None;
            }
            notified.await;
        }
    }

    /// Wait for the next frame; `None` once closed and drained.
    pub async fn recv(&self) -> Option<Frame> {
        let sh = &*self.shared;
        loop {
            let notified = sh.ready[self.port.index()].notified();
            let f = sh.lock().pop(self.port);
            if let Some(f) = f {
                if sh.waiting.load(Ordering::SeqCst) > 0 {
                    sh.space.notify_waiters();
                }
                return Some(f);
            }
            if sh.closed.load(Ordering::SeqCst) {
                return None;
            }
            notified.await;
        }
    }
}
