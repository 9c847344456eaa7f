//! The tokio driver: many ISO-TP channels over one CAN port.
//!
//! Owns: [`IsoTpMux`] (one task owns the port's receive loop and hands each frame to the
//! channel whose rx id and address byte match) and [`IsoTpHandle`] (one channel: `send`
//! and `recv`), and one small task per channel that runs an [`IsoTpChannel`] against the
//! clock and the port.
//!
//! Does not own: protocol logic (all in the sans-IO [`IsoTpChannel`]) or the port.
//!
//! Queues are bounded: frames per channel (`MuxOptions::frame_queue`; a full queue makes the
//! receive loop wait, which is backpressure on the port), send requests
//! (`send_queue`; `send` waits) and delivered PDUs (`pdu_queue`). A PDU that finds the
//! delivery queue full is dropped and counted, and the next `recv` returns
//! [`IsoTpError::ReceiveQueueFull`] with the count: never a silent loss. The channel keeps
//! answering flow control meanwhile, so one slow reader does not stall the bus.

use super::channel::{IsoTpChannel, IsoTpError, IsoTpEvent};
use super::config::IsoTpConfig;
use crate::router::frame::{CanId, IsoTpAddr, IsoTpPdu, Timestamp};
use crate::vehicle::can::{CanAnyFrame, CanError, CanPort};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};

/// Queue sizes of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MuxOptions {
    /// Received frames waiting for one channel's task.
    pub frame_queue: usize,
    /// `send` calls waiting for one channel.
    pub send_queue: usize,
    /// Delivered PDUs (and reception errors) waiting for `recv`.
    pub pdu_queue: usize,
}

impl Default for MuxOptions {
    fn default() -> Self {
        MuxOptions {
            frame_queue: 64,
            send_queue: 16,
            pdu_queue: 16,
        }
    }
}

/// Pause of the receive loop after a port error other than `Closed`.
const RECV_ERROR_BACKOFF: std::time::Duration = std::time::Duration::from_millis(10);

type RouteKey = (CanId, Option<u8>);
type SendReq = (Bytes, oneshot::Sender<Result<(), IsoTpError>>);
type PduItem = Result<IsoTpPdu, IsoTpError>;

/// Routing table of the receive loop.
struct Shared {
    /// (rx id, address byte) -> (route id, the channel's frame queue).
    routes: Mutex<HashMap<RouteKey, (u64, mpsc::Sender<CanAnyFrame>)>>,
    /// Source of route ids, so a closing channel removes only its own entry.
    next_route: AtomicU64,
    /// Frames no channel wanted.
    unrouted: AtomicU64,
}

impl Shared {
    fn routes(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<RouteKey, (u64, mpsc::Sender<CanAnyFrame>)>> {
        // The lock is never held across a panic point; recover the map if it ever was.
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lookup(&self, frame: &CanAnyFrame) -> Option<(u64, mpsc::Sender<CanAnyFrame>)> {
        let routes = self.routes();
        let id = frame.id();
        routes
            .get(&(id, None))
            .or_else(|| {
                let ext = frame.data().first().copied()?;
                routes.get(&(id, Some(ext)))
            })
            .cloned()
    }

    fn remove(&self, key: &RouteKey, route_id: u64) {
        let mut routes = self.routes();
        if routes.get(key).is_some_and(|(id, _)| *id == route_id) {
            routes.remove(key);
        }
    }
}

/// ISO-TP channels over one CAN port. Dropping it stops the receive loop; open channels
/// then report [`IsoTpError::Closed`].
pub struct IsoTpMux<P: CanPort> {
    port: Arc<P>,
    shared: Arc<Shared>,
    opts: MuxOptions,
    rx_task: JoinHandle<()>,
}

impl<P: CanPort> std::fmt::Debug for IsoTpMux<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IsoTpMux")
            .field("port", &self.port.name())
            .field("channels", &self.shared.routes().len())
            .finish()
    }
}

impl<P: CanPort> Drop for IsoTpMux<P> {
    fn drop(&mut self) {
        self.rx_task.abort();
    }
}

impl<P: CanPort> IsoTpMux<P> {
    /// Start the receive loop on `port` (needs a tokio runtime).
    pub fn new(port: Arc<P>) -> Self {
        Self::with_options(port, MuxOptions::default())
    }

    /// Start the receive loop with explicit queue sizes (each at least 1).
    pub fn with_options(port: Arc<P>, opts: MuxOptions) -> Self {
        let opts = MuxOptions {
            frame_queue: opts.frame_queue.max(1),
            send_queue: opts.send_queue.max(1),
            pdu_queue: opts.pdu_queue.max(1),
        };
        let shared = Arc::new(Shared {
            routes: Mutex::new(HashMap::new()),
            next_route: AtomicU64::new(1),
            unrouted: AtomicU64::new(0),
        });
        let rx_task = tokio::spawn(receive_loop(port.clone(), shared.clone()));
        IsoTpMux {
            port,
            shared,
            opts,
            rx_task,
        }
    }

    /// The port.
    pub fn port(&self) -> &Arc<P> {
        &self.port
    }

    /// Frames received that no channel claimed by id and address byte.
    pub fn unrouted_frames(&self) -> u64 {
        self.shared.unrouted.load(Ordering::Relaxed)
    }

    /// Send one functionally addressed single frame (e.g. an OBD-II request to 0x7DF) on
    /// `cfg.tx_id` with `cfg`'s addressing, frame mode and padding; `cfg.rx_id` is unused.
    /// Responses arrive on the physical channels opened for each ECU. Returns when the port
    /// accepted the frame (N_As bounded).
    pub async fn send_functional(&self, cfg: &IsoTpConfig, data: &[u8]) -> Result<(), IsoTpError> {
        let frame = super::channel::functional_frame(cfg, data)?;
        if cfg.is_fd() && !self.port.fd_capable() {
            return Err(IsoTpError::FdNotSupported);
        }
        match timeout(cfg.n_as, self.port.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(IsoTpError::Port(e.to_string().into())),
            Err(_) => Err(IsoTpError::TimeoutAs),
        }
    }

    /// Open a channel. Fails on an invalid config, an FD channel on a classic port, or a
    /// receive id (and address byte) already open on this port.
    pub fn open(&self, cfg: IsoTpConfig) -> Result<IsoTpHandle, IsoTpError> {
        let core = IsoTpChannel::new(cfg.clone())?;
        if cfg.is_fd() && !self.port.fd_capable() {
            return Err(IsoTpError::FdNotSupported);
        }
        let key: RouteKey = (cfg.rx_id, cfg.addressing.rx_ext());
        let (frames_tx, frames_rx) = mpsc::channel(self.opts.frame_queue);
        let route_id = self.shared.next_route.fetch_add(1, Ordering::Relaxed);
        {
            let mut routes = self.shared.routes();
            // A normal-addressing channel takes every frame of its id, so it conflicts with
            // any other channel on that id.
            let clash = routes.keys().any(|(id, ext)| {
                *id == key.0 && (ext.is_none() || key.1.is_none() || *ext == key.1)
            });
            if clash {
                return Err(IsoTpError::DuplicateChannel {
                    rx_id: key.0,
                    ext: key.1,
                });
            }
            routes.insert(key, (route_id, frames_tx));
        }
        let (req_tx, req_rx) = mpsc::channel(self.opts.send_queue);
        let (pdu_tx, pdu_rx) = mpsc::channel(self.opts.pdu_queue);
        let task = ChannelTask {
            port: self.port.clone(),
            core,
            frames: frames_rx,
            reqs: req_rx,
            pdus: pdu_tx,
            shared: Arc::downgrade(&self.shared),
            key,
            route_id,
            dropped: 0,
        };
        tokio::spawn(task.run());
        Ok(IsoTpHandle {
            addr: cfg.addr(),
            reqs: req_tx,
            pdus: tokio::sync::Mutex::new(pdu_rx),
            route: (Arc::downgrade(&self.shared), key, route_id),
        })
    }
}

async fn receive_loop<P: CanPort>(port: Arc<P>, shared: Arc<Shared>) {
    loop {
        let frame = match port.recv().await {
            Ok(f) => f,
            Err(CanError::Closed(_)) => break,
            Err(e) => {
                tracing::warn!(port = port.name(), error = %e, "ISO-TP receive loop: port error");
                // Do not spin on a port that keeps failing (interface down, bus-off).
                tokio::time::sleep(RECV_ERROR_BACKOFF).await;
                continue;
            }
        };
        let Some((route_id, tx)) = shared.lookup(&frame) else {
            shared.unrouted.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if tx.send(frame).await.is_err() {
            let ext = frame.data().first().copied();
            let id = frame.id();
            shared.remove(&(id, None), route_id);
            shared.remove(&(id, ext), route_id);
        }
    }
    tracing::debug!(port = port.name(), "ISO-TP receive loop ends: port closed");
    // Closing every frame queue tells the channel tasks the port is gone.
    shared.routes().clear();
}

/// One open channel on an [`IsoTpMux`]. `send` and `recv` take `&self`, so one task may
/// send while another receives (share it in an `Arc`). Dropping it closes the channel and
/// frees its receive id at once (a new channel on the same id may be opened right after).
pub struct IsoTpHandle {
    addr: IsoTpAddr,
    reqs: mpsc::Sender<SendReq>,
    pdus: tokio::sync::Mutex<mpsc::Receiver<PduItem>>,
    route: (Weak<Shared>, RouteKey, u64),
}

impl std::fmt::Debug for IsoTpHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IsoTpHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for IsoTpHandle {
    fn drop(&mut self) {
        let (shared, key, route_id) = &self.route;
        if let Some(shared) = shared.upgrade() {
            shared.remove(key, *route_id);
        }
    }
}

impl IsoTpHandle {
    /// The channel's addresses.
    pub fn addr(&self) -> IsoTpAddr {
        self.addr
    }

    /// Send one PDU and wait until its last frame is on the bus, or the transfer failed.
    pub async fn send(&self, data: Bytes) -> Result<(), IsoTpError> {
        let (done_tx, done_rx) = oneshot::channel();
        self.reqs
            .send((data, done_tx))
            .await
            .map_err(|_| IsoTpError::Closed)?;
        done_rx.await.map_err(|_| IsoTpError::Closed)?
    }

    /// The next received PDU's payload, or the next reception error.
    pub async fn recv(&self) -> Result<Bytes, IsoTpError> {
        self.recv_pdu().await.map(|p| p.data)
    }

    /// The next received PDU with its addresses and the timestamp of its last frame.
    pub async fn recv_pdu(&self) -> Result<IsoTpPdu, IsoTpError> {
        let mut rx = self.pdus.lock().await;
        rx.recv().await.unwrap_or(Err(IsoTpError::Closed))
    }
}

/// The task that runs one channel.
struct ChannelTask<P: CanPort> {
    port: Arc<P>,
    core: IsoTpChannel,
    frames: mpsc::Receiver<CanAnyFrame>,
    reqs: mpsc::Receiver<SendReq>,
    pdus: mpsc::Sender<PduItem>,
    shared: Weak<Shared>,
    key: RouteKey,
    route_id: u64,
    /// PDUs dropped because the delivery queue was full, not yet reported.
    dropped: u64,
}

impl<P: CanPort> ChannelTask<P> {
    async fn run(mut self) {
        let n_as = self.core.config().n_as;
        let addr = self.core.config().addr();
        let mut pending: Option<oneshot::Sender<Result<(), IsoTpError>>> = None;
        let mut last_ts = Timestamp::default();
        loop {
            self.core.poll(Instant::now());
            while let Some(frame) = self.core.poll_transmit(Instant::now()) {
                match timeout(n_as, self.port.send(frame)).await {
                    Ok(Ok(())) => self.core.on_tx_confirm(Instant::now()),
                    Ok(Err(e)) => self
                        .core
                        .on_tx_error(Instant::now(), IsoTpError::Port(e.to_string().into())),
                    Err(_) => self.core.on_tx_error(Instant::now(), IsoTpError::TimeoutAs),
                }
                self.core.poll(Instant::now());
            }
            while let Some(ev) = self.core.poll_event() {
                match ev {
                    IsoTpEvent::SendComplete(r) => {
                        if let Some(p) = pending.take() {
                            let _ = p.send(r);
                        }
                    }
                    IsoTpEvent::Received(data) => self.deliver(Ok(IsoTpPdu {
                        addr,
                        data,
                        timestamp: last_ts,
                    })),
                    IsoTpEvent::ReceiveFailed(e) => self.deliver(Err(e)),
                }
            }
            if self.pdus.is_closed() {
                break; // the handle is gone
            }
            let deadline = self.core.poll_at();
            let can_send = pending.is_none() && !self.core.is_sending();
            tokio::select! {
                f = self.frames.recv() => match f {
                    Some(f) => {
                        last_ts = match &f {
                            CanAnyFrame::Classic(c) => c.timestamp,
                            CanAnyFrame::Fd(c) => c.timestamp,
                        };
                        self.core.on_frame(Instant::now(), &f);
                    }
                    None => {
                        let _ = self.pdus.try_send(Err(IsoTpError::Closed));
                        break;
                    }
                },
                r = self.reqs.recv(), if can_send => match r {
                    Some((data, done)) => match self.core.send(Instant::now(), data) {
                        Ok(()) => pending = Some(done),
                        Err(e) => {
                            let _ = done.send(Err(e));
                        }
                    },
                    None => break,
                },
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
                permit = self.pdus.reserve(), if self.dropped > 0 => {
                    if let Ok(permit) = permit {
                        permit.send(Err(IsoTpError::ReceiveQueueFull { dropped: self.dropped }));
                        self.dropped = 0;
                    }
                }
            }
        }
        if let Some(p) = pending.take() {
            let _ = p.send(Err(IsoTpError::Closed));
        }
        if let Some(shared) = self.shared.upgrade() {
            shared.remove(&self.key, self.route_id);
        }
    }

    fn deliver(&mut self, item: PduItem) {
        use mpsc::error::TrySendError;
        if self.dropped > 0 {
            match self.pdus.try_send(Err(IsoTpError::ReceiveQueueFull {
                dropped: self.dropped,
            })) {
                Ok(()) => self.dropped = 0,
                Err(_) => {
                    self.dropped += 1;
                    return;
                }
            }
        }
        if let Err(TrySendError::Full(_)) = self.pdus.try_send(item) {
            self.dropped += 1;
            tracing::warn!(
                rx_id = %self.key.0,
                dropped = self.dropped,
                "ISO-TP receive queue full: PDU dropped"
            );
        }
    }
}
