//! A reusable DoIP entity (server): the vehicle simulator and the operator endpoint both
//! present one.
//!
//! Owns: UDP vehicle identification responses and the start-up announcements; TCP routing
//! activation with the standard's socket rules (source address check, one tester per socket,
//! "already active on another socket" resolved by an alive check of that socket, all sockets
//! in use resolved by alive-checking them); alive check; entity status; power mode; the
//! diagnostic message checks (source, target, size, reachability, memory) with their
//! acknowledgements; every generic header NACK and the socket-closing rules; initial and
//! general inactivity timers; the registry of connections.
//!
//! Does not own: what the ECUs answer. Diagnostic messages that pass the checks go to a
//! [`DiagHandler`], which may send any number of responses (e.g. response-pending, then the
//! final answer) through its [`Replies`].
//!
//! Start one with a listener that is already bound (tests bind `127.0.0.1:0`):
//! `Entity::new(config, handler).run(listener, Some(udp), shutdown).await`.
//!
//! Limits: at most `max_sockets + 1` TCP connections at once (the extra one lets a new
//! tester reach the "all sockets active" alive-check rule; more are closed at accept); per
//! connection `queue_depth` diagnostic requests waiting for the handler (then diagnostic
//! NACK 0x05); across connections `buffer_budget` bytes of queued request data (then generic
//! NACK 0x03, decided on the header before the payload is read); `max_payload` per message
//! (then generic NACK 0x02); `max_diag_data` per diagnostic request (then diagnostic NACK
//! 0x04). One misbehaving tester only ever loses its own socket.

use crate::wire::doip::{
    self, ActivationType, Decoded, DiagNackCode, DoipCodec, FurtherAction, Message, NackCode,
    NodeType, Packet, PowerMode, Repr, RoutingActivationCode, SyncStatus, VehicleAnnouncement,
    version,
};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How an entity presents itself and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityConfig {
    /// Vehicle identification number (17 ASCII characters).
    pub vin: [u8; 17],
    /// Entity identification (usually a MAC address).
    pub eid: [u8; 6],
    /// Group identification.
    pub gid: [u8; 6],
    /// The entity's own logical address.
    pub logical_address: u16,
    /// Target addresses whose diagnostic messages go to the handler; others are NACKed
    /// with "unknown target address".
    pub targets: Vec<u16>,
    /// Tester source addresses accepted by routing activation.
    pub tester_addresses: Vec<RangeInclusive<u16>>,
    /// Accepted routing activation types.
    pub activation_types: Vec<ActivationType>,
    /// Version used in messages the entity starts (answers echo the request's version).
    pub protocol_version: u8,
    /// Largest DoIP payload read (generic NACK 0x02 above).
    pub max_payload: u32,
    /// Largest diagnostic request data the targets take (diagnostic NACK 0x04 above).
    pub max_diag_data: usize,
    /// Concurrently supported tester sockets (routing activations).
    pub max_sockets: u8,
    pub node_type: NodeType,
    pub power_mode: PowerMode,
    pub further_action: FurtherAction,
    pub sync_status: Option<SyncStatus>,
    /// Where announcements go (`None`: no announcements).
    pub announce_to: Option<SocketAddr>,
    /// Number of announcements at start (A_DoIP_Announce_Num).
    pub announce_count: u32,
    /// Delay before the first announcement (A_DoIP_Announce_Wait).
    pub announce_delay: Duration,
    /// Interval between announcements (A_DoIP_Announce_Interval).
    pub announce_interval: Duration,
    /// Close a socket without routing activation after this long (T_TCP_Initial_Inactivity).
    pub initial_inactivity: Duration,
    /// Close an activated socket after this long without a message (T_TCP_General_Inactivity).
    pub general_inactivity: Duration,
    /// How long an alive-checked socket has to answer (T_TCP_Alive_Check).
    pub alive_check_timeout: Duration,
    /// Close a socket whose tester does not read what the entity writes for this long.
    pub write_timeout: Duration,
    /// Diagnostic requests waiting for the handler per connection (diagnostic NACK 0x05 above).
    pub queue_depth: usize,
    /// Bytes of queued diagnostic request data across all connections (generic NACK 0x03).
    pub buffer_budget: usize,
}

impl Default for EntityConfig {
    fn default() -> Self {
        EntityConfig {
            vin: *b"OBDGW000000000000",
            eid: [0x02, 0x00, 0x00, 0x00, 0x00, 0x01],
            gid: [0x02, 0x00, 0x00, 0x00, 0x00, 0x01],
            logical_address: 0x1000,
            targets: Vec::new(),
            tester_addresses: vec![0x0E00..=0x0FFF],
            activation_types: vec![ActivationType::DEFAULT, ActivationType::WWH_OBD],
            protocol_version: version::ISO_2012,
            max_payload: doip::DEFAULT_MAX_PAYLOAD,
            max_diag_data: doip::DEFAULT_MAX_PAYLOAD as usize - 4,
            max_sockets: 4,
            node_type: NodeType::GATEWAY,
            power_mode: PowerMode::READY,
            further_action: FurtherAction::NONE,
            sync_status: None,
            announce_to: Some(SocketAddr::from(([255, 255, 255, 255], doip::PORT))),
            announce_count: 3,
            announce_delay: Duration::from_millis(100),
            announce_interval: Duration::from_millis(500),
            initial_inactivity: Duration::from_secs(2),
            general_inactivity: Duration::from_secs(300),
            alive_check_timeout: Duration::from_millis(500),
            write_timeout: Duration::from_secs(5),
            queue_depth: 8,
            buffer_budget: 4 << 20,
        }
    }
}

/// One diagnostic request that passed the entity's checks and was acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagRequest {
    /// The tester's logical address.
    pub source: u16,
    /// The addressed ECU (one of [`EntityConfig::targets`]).
    pub target: u16,
    /// The UDS request.
    pub data: Bytes,
}

/// Error sending a reply: the tester's connection is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the tester connection is closed; the reply was dropped")]
pub struct ReplyClosed;

struct Reply {
    source: u16,
    target: u16,
    data: Bytes,
}

/// Where a handler sends its responses to one request: each `send` becomes one diagnostic
/// message from the request's target to its tester. Bounded: `send` waits while the
/// connection's writer is behind.
#[derive(Clone)]
pub struct Replies {
    tx: mpsc::Sender<Reply>,
    /// The ECU answering (the request's target).
    ecu: u16,
    /// The tester (the request's source).
    tester: u16,
}

impl Replies {
    /// Send one response (e.g. `[0x7F, sid, 0x78]`, then the final answer).
    pub async fn send(&self, data: Bytes) -> Result<(), ReplyClosed> {
        self.tx
            .send(Reply {
                source: self.ecu,
                target: self.tester,
                data,
            })
            .await
            .map_err(|_| ReplyClosed)
    }

    pub fn ecu(&self) -> u16 {
        self.ecu
    }

    pub fn tester(&self) -> u16 {
        self.tester
    }
}

impl std::fmt::Debug for Replies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Replies({:04X}->{:04X})", self.ecu, self.tester)
    }
}

/// The ECUs behind an entity. Requests of one connection are handled one at a time, in
/// order; different connections run concurrently.
pub trait DiagHandler: Send + Sync + 'static {
    /// Whether `target` (one of the configured targets) can be reached now; `false` makes
    /// the entity answer with diagnostic NACK 0x06 "target unreachable".
    fn reachable(&self, _target: u16) -> bool {
        true
    }

    /// Handle one acknowledged request; send zero or more responses through `replies`.
    fn handle(&self, request: DiagRequest, replies: Replies) -> impl Future<Output = ()> + Send;
}

/// A shared handler is a handler (so the caller can keep a reference to it).
impl<H: DiagHandler> DiagHandler for Arc<H> {
    fn reachable(&self, target: u16) -> bool {
        (**self).reachable(target)
    }

    fn handle(&self, request: DiagRequest, replies: Replies) -> impl Future<Output = ()> + Send {
        (**self).handle(request, replies)
    }
}

/// A [`DiagHandler`] from a closure: `FnHandler(|req, replies| async move { ... })`.
pub struct FnHandler<F>(pub F);

impl<F, Fut> DiagHandler for FnHandler<F>
where
    F: Fn(DiagRequest, Replies) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    fn handle(&self, request: DiagRequest, replies: Replies) -> impl Future<Output = ()> + Send {
        (self.0)(request, replies)
    }
}

/// A connection as the entity sees it (for status output and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub id: u64,
    pub peer: SocketAddr,
    /// TCP_NODELAY read back from the socket (getsockopt) after setting it.
    pub nodelay: bool,
    /// The tester address activated on this socket.
    pub tester: Option<u16>,
}

enum Control {
    /// Send an alive check request; complete the sender when the tester answers.
    AliveCheck(oneshot::Sender<()>),
}

struct ConnEntry {
    info: ConnectionInfo,
    control: mpsc::Sender<Control>,
    cancel: CancellationToken,
}

#[derive(Default)]
struct Registry {
    conns: Vec<ConnEntry>,
    next_id: u64,
}

struct Inner<H> {
    cfg: EntityConfig,
    handler: Arc<H>,
    /// Connections and their activated testers. Held briefly, never across an await.
    registry: Mutex<Registry>,
    /// Bytes of diagnostic request data queued for the handler, across connections.
    budget_used: AtomicUsize,
}

impl<H> Inner<H> {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding the lock cannot leave the registry inconsistent (every
        // update is a single push/remove/assignment), so a poisoned lock is still usable.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A DoIP entity. Cheap to clone (shared state).
pub struct Entity<H> {
    inner: Arc<Inner<H>>,
}

impl<H> Clone for Entity<H> {
    fn clone(&self) -> Self {
        Entity {
            inner: self.inner.clone(),
        }
    }
}

impl<H: DiagHandler> Entity<H> {
    pub fn new(cfg: EntityConfig, handler: H) -> Self {
        Entity {
            inner: Arc::new(Inner {
                cfg,
                handler: Arc::new(handler),
                registry: Mutex::new(Registry::default()),
                budget_used: AtomicUsize::new(0),
            }),
        }
    }

    pub fn config(&self) -> &EntityConfig {
        &self.inner.cfg
    }

    /// The announcement / identification response this entity sends.
    pub fn announcement(&self) -> VehicleAnnouncement {
        let c = &self.inner.cfg;
        VehicleAnnouncement {
            vin: c.vin,
            logical_address: c.logical_address,
            eid: c.eid,
            gid: c.gid,
            further_action: c.further_action,
            sync_status: c.sync_status,
        }
    }

    /// Open TCP connections.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.inner
            .registry()
            .conns
            .iter()
            .map(|c| c.info.clone())
            .collect()
    }

    /// Serve TCP on `listener` and, when given, UDP on `udp` (plus announcements) until
    /// `shutdown` is cancelled; then close every connection and return.
    pub async fn run(
        &self,
        listener: TcpListener,
        udp: Option<UdpSocket>,
        shutdown: CancellationToken,
    ) {
        let tracker = TaskTracker::new();
        if let Some(udp) = udp {
            let me = self.clone();
            let s = shutdown.clone();
            tracker.spawn(async move { me.serve_udp(udp, s).await });
        }
        self.serve_tcp(listener, shutdown.clone(), &tracker).await;
        tracker.close();
        tracker.wait().await;
    }

    async fn serve_tcp(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: wait a little instead of spinning.
                    tracing::warn!(error = %e, "DoIP entity: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let max_conns = usize::from(self.inner.cfg.max_sockets) + 1;
            if self.inner.registry().conns.len() >= max_conns {
                tracing::warn!(%peer, max_conns, "DoIP entity: too many connections, closing new one");
                drop(stream);
                continue;
            }
            if let Err(e) = stream.set_nodelay(true) {
                tracing::warn!(%peer, error = %e, "DoIP entity: cannot set TCP_NODELAY");
            }
            let nodelay = stream.nodelay().unwrap_or(false);
            let (control_tx, control_rx) = mpsc::channel(4);
            let cancel = shutdown.child_token();
            let id = {
                let mut reg = self.inner.registry();
                let id = reg.next_id;
                reg.next_id += 1;
                reg.conns.push(ConnEntry {
                    info: ConnectionInfo {
                        id,
                        peer,
                        nodelay,
                        tester: None,
                    },
                    control: control_tx,
                    cancel: cancel.clone(),
                });
                id
            };
            let inner = self.inner.clone();
            tracker.spawn(async move {
                // `Conn`'s Drop unregisters it and returns its budget, also if a handler
                // panics and unwinds this task.
                let mut conn = Conn::new(inner, id, stream, control_rx, cancel);
                conn.run().await;
                tracing::debug!(%peer, "DoIP entity: connection closed");
            });
        }
    }

    /// Answer vehicle identification, entity status and power mode requests on `socket`
    /// and send the start-up announcements, until `shutdown`.
    pub async fn serve_udp(&self, socket: UdpSocket, shutdown: CancellationToken) {
        let cfg = &self.inner.cfg;
        let _ = socket.set_broadcast(true);
        let announcement =
            Repr::VehicleAnnouncement(self.announcement()).to_bytes(cfg.protocol_version);
        let mut sent = 0u32;
        let mut next_announce = cfg
            .announce_to
            .filter(|_| cfg.announce_count > 0)
            .map(|_| Instant::now() + cfg.announce_delay);
        let mut buf = vec![0u8; 1024];
        loop {
            let recv = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = sleep_until(next_announce), if next_announce.is_some() => {
                    if let Some(to) = cfg.announce_to
                        && let Err(e) = socket.send_to(&announcement, to).await
                    {
                        tracing::warn!(%to, error = %e, "DoIP entity: announcement not sent");
                    }
                    sent += 1;
                    next_announce = (sent < cfg.announce_count)
                        .then(|| Instant::now() + cfg.announce_interval);
                    continue;
                }
                r = socket.recv_from(&mut buf) => r,
            };
            let (n, from) = match recv {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "DoIP entity: UDP receive error");
                    continue;
                }
            };
            if let Some(answer) = self.udp_answer(&buf[..n])
                && let Err(e) = socket.send_to(&answer, from).await
            {
                tracing::debug!(%from, error = %e, "DoIP entity: UDP answer not sent");
            }
        }
    }

    /// The answer to one UDP datagram, if any.
    pub fn udp_answer(&self, datagram: &[u8]) -> Option<Bytes> {
        let cfg = &self.inner.cfg;
        let packet = match Packet::new_checked(datagram) {
            Ok(p) => p,
            // Too short to have a header: nothing sensible to answer.
            Err(_) if datagram.len() < doip::HEADER_LEN => return None,
            Err(_) => {
                return Some(
                    Repr::GenericNack(NackCode::INVALID_PAYLOAD_LENGTH)
                        .to_bytes(cfg.protocol_version),
                );
            }
        };
        let reply_version = |v: u8| {
            if v == version::DEFAULT {
                cfg.protocol_version
            } else {
                v
            }
        };
        let (v, repr) = match Repr::parse(&packet, cfg.max_payload) {
            Ok(x) => x,
            Err(e) => {
                let code = e.nack_code()?;
                return Some(Repr::GenericNack(code).to_bytes(reply_version(packet.version())));
            }
        };
        let v = reply_version(v);
        let ann = || Repr::VehicleAnnouncement(self.announcement()).to_bytes(v);
        match repr {
            Repr::VehicleIdRequest => Some(ann()),
            Repr::VehicleIdRequestEid(eid) => (eid == cfg.eid).then(ann),
            Repr::VehicleIdRequestVin(vin) => (vin == cfg.vin).then(ann),
            Repr::EntityStatusRequest => Some(self.entity_status().to_bytes(v)),
            Repr::PowerModeRequest => Some(Repr::PowerModeResponse(cfg.power_mode).to_bytes(v)),
            // Announcements and NACKs from others are not answered (no NACK storms).
            Repr::VehicleAnnouncement(_) | Repr::GenericNack(_) => None,
            _ => Some(Repr::GenericNack(NackCode::UNKNOWN_PAYLOAD_TYPE).to_bytes(v)),
        }
    }

    fn entity_status(&self) -> Repr {
        entity_status(&self.inner)
    }
}

fn entity_status<H>(inner: &Inner<H>) -> Repr {
    let open = inner.registry().conns.len();
    Repr::EntityStatusResponse {
        node_type: inner.cfg.node_type,
        max_sockets: inner.cfg.max_sockets,
        open_sockets: u8::try_from(open).unwrap_or(u8::MAX),
        max_data_size: Some(inner.cfg.max_payload),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

type HandlerFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Capacity of a connection's reply channel (handler responses waiting for the writer).
const REPLY_QUEUE: usize = 16;

/// One tester connection.
struct Conn<H> {
    inner: Arc<Inner<H>>,
    id: u64,
    stream: TcpStream,
    codec: DoipCodec,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// The tester address activated on this socket.
    tester: Option<u16>,
    /// Version to answer with (that of the last message received).
    version: u8,
    /// Acknowledged requests waiting for the handler.
    queue: VecDeque<DiagRequest>,
    /// The request being handled, and its data length (budget held).
    current: Option<(HandlerFuture, usize)>,
    /// Budget bytes held by `queue` and `current`.
    held: usize,
    reply_tx: mpsc::Sender<Reply>,
    reply_rx: mpsc::Receiver<Reply>,
    control: mpsc::Receiver<Control>,
    /// Other connections waiting for our tester to answer an alive check.
    alive_waiters: Vec<oneshot::Sender<()>>,
    cancel: CancellationToken,
    last_rx: Instant,
    /// Close after flushing.
    close: bool,
}

impl<H: DiagHandler> Conn<H> {
    fn new(
        inner: Arc<Inner<H>>,
        id: u64,
        stream: TcpStream,
        control: mpsc::Receiver<Control>,
        cancel: CancellationToken,
    ) -> Self {
        let (reply_tx, reply_rx) = mpsc::channel(REPLY_QUEUE);
        let version = inner.cfg.protocol_version;
        Conn {
            codec: DoipCodec::new(inner.cfg.max_payload),
            inner,
            id,
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            wbuf: BytesMut::with_capacity(16 * 1024),
            tester: None,
            version,
            queue: VecDeque::new(),
            current: None,
            held: 0,
            reply_tx,
            reply_rx,
            control,
            alive_waiters: Vec::new(),
            cancel,
            last_rx: Instant::now(),
            close: false,
        }
    }

    fn push(&mut self, repr: Repr) {
        repr.write(self.version, &mut self.wbuf);
    }

    fn available_budget(&self) -> u32 {
        let used = self.inner.budget_used.load(Ordering::Relaxed);
        u32::try_from(self.inner.cfg.buffer_budget.saturating_sub(used)).unwrap_or(u32::MAX)
    }

    async fn run(&mut self) {
        loop {
            self.start_next();
            self.drain_replies();
            if !self.wbuf.is_empty() {
                // A tester that stops reading loses its socket after `write_timeout`
                // instead of holding this task (and its timers) forever.
                let limit = self.inner.cfg.write_timeout;
                tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    r = tokio::time::timeout(limit, self.stream.write_all(&self.wbuf)) => match r {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "DoIP entity: write failed");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(id = self.id, ?limit, "DoIP entity: tester stopped reading, closing socket");
                            return;
                        }
                    },
                }
                self.wbuf.clear();
            }
            if self.close {
                let _ = self.stream.shutdown().await;
                return;
            }
            let idle = if self.tester.is_some() {
                self.inner.cfg.general_inactivity
            } else {
                self.inner.cfg.initial_inactivity
            };
            let deadline = self.last_rx + idle;
            let current = &mut self.current;
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    let _ = self.stream.shutdown().await;
                    return;
                }
                r = self.stream.read_buf(&mut self.rbuf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        self.last_rx = Instant::now();
                        self.process_input().await;
                    }
                },
                Some(reply) = self.reply_rx.recv() => {
                    self.push(Repr::DiagnosticMessage {
                        source: reply.source,
                        target: reply.target,
                        data: reply.data,
                    });
                }
                _ = poll_current(current) => {
                    self.finish_current();
                }
                Some(ctl) = self.control.recv() => match ctl {
                    Control::AliveCheck(waiter) => {
                        self.alive_waiters.push(waiter);
                        self.push(Repr::AliveCheckRequest);
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(id = self.id, ?idle, "DoIP entity: closing inactive socket");
                    let _ = self.stream.shutdown().await;
                    return;
                }
            }
        }
    }

    fn finish_current(&mut self) {
        if let Some((_, len)) = self.current.take() {
            self.inner.budget_used.fetch_sub(len, Ordering::Relaxed);
            self.held -= len;
        }
    }

    /// Start the next queued request and poll it once right away, so a handler that
    /// answers immediately has its response written together with the acknowledgement.
    fn start_next(&mut self) {
        while self.current.is_none() {
            let Some(req) = self.queue.pop_front() else {
                return;
            };
            self.start(req);
        }
    }

    fn start(&mut self, req: DiagRequest) {
        let len = req.data.len();
        let replies = Replies {
            tx: self.reply_tx.clone(),
            ecu: req.target,
            tester: req.source,
        };
        let handler = self.inner.handler.clone();
        let mut fut: HandlerFuture = Box::pin(async move { handler.handle(req, replies).await });
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        // Polled with a no-op waker: if it is pending, it is polled again (with the real
        // waker) by `poll_current` in the select loop before the task sleeps.
        if fut.as_mut().poll(&mut cx).is_ready() {
            self.inner.budget_used.fetch_sub(len, Ordering::Relaxed);
            self.held -= len;
        } else {
            self.current = Some((fut, len));
        }
    }

    fn drain_replies(&mut self) {
        while let Ok(reply) = self.reply_rx.try_recv() {
            self.push(Repr::DiagnosticMessage {
                source: reply.source,
                target: reply.target,
                data: reply.data,
            });
        }
    }

    async fn process_input(&mut self) {
        while !self.close {
            let available = self.available_budget();
            match self.codec.decode_frame_within(&mut self.rbuf, available) {
                Ok(None) => break,
                Ok(Some(Decoded::Message(m))) => self.on_message(m).await,
                Ok(Some(Decoded::Rejected { version, error })) => {
                    tracing::debug!(%error, "DoIP entity: message rejected");
                    if let Some(code) = error.nack_code() {
                        self.version = version;
                        self.push(Repr::GenericNack(code));
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "DoIP entity: closing socket after header error");
                    if let Some(code) = error.nack_code() {
                        let v = self.rbuf.first().copied().unwrap_or(self.version);
                        self.version = if matches!(v, 1..=3) {
                            v
                        } else {
                            self.inner.cfg.protocol_version
                        };
                        self.push(Repr::GenericNack(code));
                    }
                    self.close = true;
                }
            }
            if self.wbuf.len() >= 64 * 1024 {
                // Flush large batches instead of buffering unboundedly.
                break;
            }
        }
    }

    async fn on_message(&mut self, m: Message) {
        self.version = m.version;
        let cfg = &self.inner.cfg;
        match m.repr {
            Repr::RoutingActivationRequest {
                source,
                activation_type,
                ..
            } => {
                let code = self.activate(source, activation_type).await;
                self.push(Repr::RoutingActivationResponse {
                    tester: source,
                    entity: self.inner.cfg.logical_address,
                    code,
                    reserved: 0,
                    oem: None,
                });
                if code.closes_socket() {
                    self.close = true;
                }
            }
            Repr::DiagnosticMessage {
                source,
                target,
                data,
            } => self.on_diagnostic(source, target, data),
            Repr::AliveCheckRequest => {
                let source = cfg.logical_address;
                self.push(Repr::AliveCheckResponse { source });
            }
            Repr::AliveCheckResponse { .. } => {
                for w in self.alive_waiters.drain(..) {
                    let _ = w.send(());
                }
            }
            Repr::EntityStatusRequest => {
                let status = entity_status(&self.inner);
                self.push(status);
            }
            Repr::PowerModeRequest => {
                let mode = cfg.power_mode;
                self.push(Repr::PowerModeResponse(mode));
            }
            Repr::GenericNack(code) => {
                tracing::debug!(%code, "DoIP entity: tester sent a generic NACK");
            }
            Repr::VehicleIdRequest
            | Repr::VehicleIdRequestEid(_)
            | Repr::VehicleIdRequestVin(_)
            | Repr::VehicleAnnouncement(_)
            | Repr::RoutingActivationResponse { .. }
            | Repr::EntityStatusResponse { .. }
            | Repr::PowerModeResponse(_)
            | Repr::DiagnosticAck { .. }
            | Repr::DiagnosticNack { .. } => {
                // Not something a tester sends to an entity over TCP.
                self.push(Repr::GenericNack(NackCode::UNKNOWN_PAYLOAD_TYPE));
            }
        }
    }

    fn on_diagnostic(&mut self, source: u16, target: u16, data: Bytes) {
        let cfg = &self.inner.cfg;
        let nack = |code| Repr::DiagnosticNack {
            source: target,
            target: source,
            code,
            previous: Bytes::new(),
        };
        if self.tester != Some(source) {
            // Not activated on this socket, or another source: NACK and close the socket.
            self.push(nack(DiagNackCode::INVALID_SOURCE));
            self.close = true;
            return;
        }
        let code = if !cfg.targets.contains(&target) {
            Some(DiagNackCode::UNKNOWN_TARGET)
        } else if data.len() > cfg.max_diag_data {
            Some(DiagNackCode::MESSAGE_TOO_LARGE)
        } else if !self.inner.handler.reachable(target) {
            Some(DiagNackCode::TARGET_UNREACHABLE)
        } else if self.queue.len() + usize::from(self.current.is_some()) >= cfg.queue_depth {
            Some(DiagNackCode::OUT_OF_MEMORY)
        } else {
            None
        };
        if let Some(code) = code {
            self.push(nack(code));
            return;
        }
        self.push(Repr::DiagnosticAck {
            source: target,
            target: source,
            code: 0,
            previous: Bytes::new(),
        });
        self.inner
            .budget_used
            .fetch_add(data.len(), Ordering::Relaxed);
        self.held += data.len();
        self.queue.push_back(DiagRequest {
            source,
            target,
            data,
        });
        self.start_next();
    }

    /// The routing activation handler: returns the response code.
    async fn activate(&mut self, source: u16, atype: ActivationType) -> RoutingActivationCode {
        let inner = self.inner.clone();
        let cfg = &inner.cfg;
        if !cfg.tester_addresses.iter().any(|r| r.contains(&source)) {
            return RoutingActivationCode::DENIED_UNKNOWN_SOURCE;
        }
        if !cfg.activation_types.contains(&atype) {
            return RoutingActivationCode::DENIED_UNSUPPORTED_ACTIVATION_TYPE;
        }
        if let Some(t) = self.tester {
            return if t == source {
                RoutingActivationCode::SUCCESS
            } else {
                RoutingActivationCode::DENIED_SOURCE_MISMATCH
            };
        }
        // The same tester already active on another socket: is that socket still alive?
        let other = {
            let reg = self.inner.registry();
            reg.conns
                .iter()
                .find(|c| c.info.id != self.id && c.info.tester == Some(source))
                .map(|c| (c.info.id, c.control.clone()))
        };
        if let Some((other_id, control)) = other {
            let alive = self.alive_check(vec![(other_id, control)]).await;
            if !alive.is_empty() {
                return RoutingActivationCode::DENIED_SOURCE_ACTIVE_ELSEWHERE;
            }
        }
        // Every supported socket in use: alive-check them all, drop the dead.
        let active: Vec<(u64, mpsc::Sender<Control>)> = {
            let reg = self.inner.registry();
            reg.conns
                .iter()
                .filter(|c| c.info.id != self.id && c.info.tester.is_some())
                .map(|c| (c.info.id, c.control.clone()))
                .collect()
        };
        if active.len() >= usize::from(cfg.max_sockets) {
            let alive = self.alive_check(active).await;
            if alive.len() >= usize::from(cfg.max_sockets) {
                return RoutingActivationCode::DENIED_ALL_SOCKETS_ACTIVE;
            }
        }
        let mut reg = self.inner.registry();
        if reg
            .conns
            .iter()
            .any(|c| c.info.id != self.id && c.info.tester == Some(source))
        {
            // Another socket won the race for this address meanwhile.
            return RoutingActivationCode::DENIED_SOURCE_ACTIVE_ELSEWHERE;
        }
        if let Some(me) = reg.conns.iter_mut().find(|c| c.info.id == self.id) {
            me.info.tester = Some(source);
        }
        self.tester = Some(source);
        RoutingActivationCode::SUCCESS
    }

    /// Alive-check `conns` concurrently; close and unregister those that do not answer
    /// within `alive_check_timeout`. Returns the ids that answered.
    async fn alive_check(&mut self, conns: Vec<(u64, mpsc::Sender<Control>)>) -> Vec<u64> {
        let deadline = Instant::now() + self.inner.cfg.alive_check_timeout;
        let mut waiting = Vec::new();
        for (id, control) in conns {
            let (tx, rx) = oneshot::channel();
            // A full control queue means several checks are already running on that
            // socket; its answer will complete them, and this one counts as unanswered
            // only if the socket really stays silent.
            let _ = control.try_send(Control::AliveCheck(tx));
            waiting.push((id, rx));
        }
        let mut alive = Vec::new();
        for (id, rx) in waiting {
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(())) => alive.push(id),
                _ => {
                    let mut reg = self.inner.registry();
                    if let Some(c) = reg.conns.iter_mut().find(|c| c.info.id == id) {
                        tracing::info!(peer = %c.info.peer, "DoIP entity: alive check unanswered, closing socket");
                        c.cancel.cancel();
                        c.info.tester = None;
                    }
                }
            }
        }
        alive
    }
}

impl<H> Drop for Conn<H> {
    fn drop(&mut self) {
        if self.held > 0 {
            self.inner
                .budget_used
                .fetch_sub(self.held, Ordering::Relaxed);
        }
        let id = self.id;
        self.inner.registry().conns.retain(|c| c.info.id != id);
    }
}

/// Completes when the current handler future completes; pending forever when there is none.
async fn poll_current(current: &mut Option<(HandlerFuture, usize)>) {
    match current {
        Some((fut, _)) => {
            std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(()),
                Poll::Pending => Poll::Pending,
            })
            .await
        }
        None => std::future::pending().await,
    }
}
