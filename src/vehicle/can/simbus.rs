//! The cross-process loopback CAN bus: `sim:NAME`.
//!
//! Owns: [`SimPort`] (a node on the bus, a [`CanPort`]), the hub that relays frames between
//! the nodes, the election of that hub, reconnection, and the wire format between nodes and
//! hub ([`SimRecord`]).
//!
//! Does not own: the in-process bus (see [`super::vbus`], whose [`RxQueue`] it reuses).
//!
//! # Design
//!
//! Processes on one machine share the bus `sim:NAME` through a unix stream socket
//! `DIR/sim-NAME.sock`, where `DIR` is `$OBDGW_SIM_DIR`, else `$XDG_RUNTIME_DIR/obdgw`, else
//! `/tmp/obdgw-UID` (created with mode 0700; a directory owned by another user is refused).
//!
//! - **Hub.** One process hosts the hub: a task that accepts nodes and relays each frame to
//!   every other node. The hub holds an exclusive `flock` on `DIR/sim-NAME.lock` for its whole
//!   life, so there is never more than one.
//! - **Election.** A node connects to the socket; when nobody answers, it tries the lock. The
//!   winner removes any stale socket file (left by a crashed hub: the kernel has released its
//!   lock), binds, and hosts the hub in its own process; the others retry with backoff
//!   (5 ms doubling to 200 ms). The hub's host then connects to it like any other node.
//! - **Failover.** The hub lives as long as the port that started it. When that port is
//!   dropped or its process exits (even by `kill -9`), the other nodes see the connection
//!   end and elect a new hub among themselves. Frames in flight during the change can be
//!   lost, as on a bus whose node restarts; nothing else is.
//! - **Frames.** Each connection starts with an 8-byte hello both ways (`OBDGWSB1`, the
//!   protocol version; the hub answers once it has registered the node, so a node that has
//!   joined receives every frame sent after that), then carries [`SimRecord`]s. Each node has a bounded receive queue
//!   (frames arriving at a full queue are dropped and counted) and applies its id filters on
//!   receipt; the hub keeps a bounded queue per node and drops (and counts) frames for a
//!   node that does not keep up, so one stalled process cannot stall the bus. Sending waits
//!   while the node's bounded transmit queue is full (e.g. while the hub changes), but no
//!   longer than the node's transmit deadline (`tx_timeout`, see [`super::tx`]): then the
//!   send fails with [`CanError::TxTimeout`] and counts in `tx_timeouts`, as on SocketCAN.
//! - Like SocketCAN, a node does not receive its own frames unless it asks for loopback.

use super::vbus::RxQueue;
use super::{CanAnyFrame, CanError, CanPort, CanPortStats, PortCounters};
use crate::router::IdRule;
use crate::router::frame::{CanFdFrame, CanFrame, CanId, Timestamp, fd_len_valid};
use bytes::{Buf, BytesMut};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Environment variable naming the directory of the bus sockets.
pub const SIM_DIR_ENV: &str = "OBDGW_SIM_DIR";
/// Protocol hello, sent first by both ends.
pub const HELLO: &[u8; 8] = b"OBDGWSB1";
/// Frames queued toward one node in the hub before it drops for that node.
const HUB_QUEUE: usize = 4096;
/// Frames a node queues for sending.
const TX_QUEUE: usize = 1024;

/// Whether `name` can name a sim bus: 1-64 characters from `A-Z a-z 0-9 - _ .`.
pub fn valid_bus_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

// ---------------------------------------------------------------------------------------
// Wire format

/// A checked view over one record between node and hub.
///
/// ```text
/// 0      kind: 1 classic data, 2 classic remote, 3 CAN FD
/// 1      flags (FD): bit 0 BRS, bit 1 ESI; 0 otherwise
/// 2      length: data bytes (classic 0..=8, FD a valid FD length), or the DLC (remote)
/// 3      reserved, 0
/// 4..8   CAN id, little endian, bit 31 set for a 29-bit id
/// 8..    data (none for remote frames)
/// ```
#[derive(Clone, Copy, Debug)]
pub struct SimRecord<T: AsRef<[u8]>> {
    buf: T,
}

mod field {
    pub const KIND: usize = 0;
    pub const FLAGS: usize = 1;
    pub const LEN: usize = 2;
    pub const ID: std::ops::Range<usize> = 4..8;
    pub const DATA: usize = 8;
}

/// Header length of a record.
pub const HEADER_LEN: usize = 8;
/// Longest record.
pub const MAX_RECORD: usize = HEADER_LEN + 64;
const KIND_CLASSIC: u8 = 1;
const KIND_REMOTE: u8 = 2;
const KIND_FD: u8 = 3;

/// Error decoding a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not enough bytes yet (a normal condition on a stream).
    #[error("incomplete record")]
    Incomplete,
    #[error("unknown record kind {0}")]
    BadKind(u8),
    #[error("bad length {0} for the record kind")]
    BadLength(u8),
    #[error("bad CAN id {0:#x}")]
    BadId(u32),
}

impl<T: AsRef<[u8]>> SimRecord<T> {
    /// Check the header and that the whole record is present.
    pub fn new_checked(buf: T) -> Result<Self, RecordError> {
        let b = buf.as_ref();
        if b.len() < HEADER_LEN {
            return Err(RecordError::Incomplete);
        }
        let len = b[field::LEN];
        let ok = match b[field::KIND] {
            KIND_CLASSIC | KIND_REMOTE => len <= 8,
            KIND_FD => fd_len_valid(len as usize) && len <= 64,
            k => return Err(RecordError::BadKind(k)),
        };
        if !ok {
            return Err(RecordError::BadLength(len));
        }
        let rec = SimRecord { buf };
        if rec.buf.as_ref().len() < rec.total_len() {
            return Err(RecordError::Incomplete);
        }
        Ok(rec)
    }

    fn data_len(&self) -> usize {
        let b = self.buf.as_ref();
        if b[field::KIND] == KIND_REMOTE {
            0
        } else {
            b[field::LEN] as usize
        }
    }

    /// Bytes this record occupies.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.data_len()
    }

    fn raw_id(&self) -> u32 {
        let mut w = [0u8; 4];
        w.copy_from_slice(&self.buf.as_ref()[field::ID]);
        u32::from_le_bytes(w)
    }

    /// The frame, stamped with `ts`.
    pub fn parse(&self, ts: Timestamp) -> Result<CanAnyFrame, RecordError> {
        let b = self.buf.as_ref();
        let raw = self.raw_id();
        let id = if raw & CanId::EFF_FLAG != 0 {
            CanId::extended(raw & !CanId::EFF_FLAG)
        } else {
            u16::try_from(raw).ok().and_then(CanId::standard)
        }
        .ok_or(RecordError::BadId(raw))?;
        let len = b[field::LEN];
        let data = &b[field::DATA..field::DATA + self.data_len()];
        let frame = match b[field::KIND] {
            KIND_CLASSIC => CanFrame::new(id, data).map(CanAnyFrame::from),
            KIND_REMOTE => CanFrame::remote(id, len).map(CanAnyFrame::from),
            _ => CanFdFrame::new(id, data).map(|mut f| {
                f.brs = b[field::FLAGS] & 1 != 0;
                f.esi = b[field::FLAGS] & 2 != 0;
                CanAnyFrame::from(f)
            }),
        }
        .map_err(|_| RecordError::BadLength(len))?;
        Ok(frame.with_timestamp(ts))
    }
}

/// Bytes [`emit_record`] writes for `frame`.
pub fn record_len(frame: &CanAnyFrame) -> usize {
    HEADER_LEN + frame.data().len()
}

/// Write `frame` as a record into `out` (at least [`record_len`] bytes); returns its length.
pub fn emit_record(frame: &CanAnyFrame, out: &mut [u8]) -> usize {
    let n = record_len(frame);
    let out = &mut out[..n];
    out[..HEADER_LEN].fill(0);
    let (kind, flags, len) = match frame {
        CanAnyFrame::Classic(f) if f.is_remote() => (KIND_REMOTE, 0, f.dlc()),
        CanAnyFrame::Classic(f) => (KIND_CLASSIC, 0, f.data().len() as u8),
        CanAnyFrame::Fd(f) => (
            KIND_FD,
            (f.brs as u8) | ((f.esi as u8) << 1),
            f.data().len() as u8,
        ),
    };
    out[field::KIND] = kind;
    out[field::FLAGS] = flags;
    out[field::LEN] = len;
    out[field::ID].copy_from_slice(&frame.id().raw().to_le_bytes());
    out[field::DATA..].copy_from_slice(frame.data());
    n
}

/// One record in a fixed buffer (no allocation per frame in the channels).
#[derive(Clone, Copy)]
struct Packet {
    buf: [u8; MAX_RECORD],
    len: u8,
}

impl Packet {
    fn from_frame(frame: &CanAnyFrame) -> Self {
        let mut buf = [0u8; MAX_RECORD];
        let len = emit_record(frame, &mut buf) as u8;
        Packet { buf, len }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

/// Reads records from a stream; cancel-safe (`read_buf` keeps partial input in `buf`).
struct RecordReader {
    buf: BytesMut,
}

impl RecordReader {
    fn new() -> Self {
        RecordReader {
            buf: BytesMut::with_capacity(16 * 1024),
        }
    }

    /// The next record, `Ok(None)` at end of stream.
    async fn next<R: AsyncReadExt + Unpin>(&mut self, r: &mut R) -> io::Result<Option<Packet>> {
        loop {
            match SimRecord::new_checked(&self.buf[..]) {
                Ok(rec) => {
                    let n = rec.total_len();
                    let mut p = Packet {
                        buf: [0; MAX_RECORD],
                        len: n as u8,
                    };
                    p.buf[..n].copy_from_slice(&self.buf[..n]);
                    self.buf.advance(n);
                    return Ok(Some(p));
                }
                Err(RecordError::Incomplete) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            if self.buf.capacity() - self.buf.len() < MAX_RECORD {
                self.buf.reserve(16 * 1024);
            }
            if r.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }
}

async fn write_packets<W: AsyncWrite + Unpin>(
    w: &mut BufWriter<W>,
    rx: &mut mpsc::Receiver<Packet>,
    batch: &mut Vec<Packet>,
) -> io::Result<()> {
    loop {
        batch.clear();
        if rx.recv_many(batch, 64).await == 0 {
            return Ok(());
        }
        for p in batch.iter() {
            w.write_all(p.bytes()).await?;
        }
        w.flush().await?;
    }
}

/// The node's side of the handshake: send the hello, wait for the hub's.
async fn hello(stream: &mut UnixStream) -> io::Result<()> {
    stream.write_all(HELLO).await?;
    read_hello(stream).await
}

async fn read_hello(stream: &mut UnixStream) -> io::Result<()> {
    let mut got = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut got))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no hello from the peer"))??;
    if &got != HELLO {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the peer does not speak the obdgw sim bus protocol (version 1)",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Paths and election

/// Where the bus sockets live (see the module docs).
pub fn sim_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(SIM_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("obdgw");
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    PathBuf::from(format!("/tmp/obdgw-{uid}"))
}

fn prepare_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::metadata(dir)?;
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    if meta.uid() != uid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {}, not to this user ({uid}); set {SIM_DIR_ENV} to a directory of your own",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    Ok(())
}

/// The hub's exclusive lock; released when dropped (or when the process dies).
struct HubLock {
    _file: File,
}

fn try_lock(path: &Path) -> io::Result<Option<HubLock>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    // SAFETY: flock on an fd we own.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(Some(HubLock { _file: file }));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(e)
    }
}

#[derive(Debug)]
struct Paths {
    socket: PathBuf,
    lock: PathBuf,
}

// ---------------------------------------------------------------------------------------
// Hub

struct HubClient {
    id: u64,
    tx: mpsc::Sender<Packet>,
}

/// Counters of the hub hosted by this process, if it hosts one.
#[derive(Debug, Default)]
pub struct HubCounters {
    /// Frames relayed (counted once per receiving node).
    pub relayed: AtomicU64,
    /// Frames dropped because a node's queue in the hub was full.
    pub dropped: AtomicU64,
    /// Nodes accepted over the hub's life.
    pub accepted: AtomicU64,
}

async fn run_hub(
    listener: UnixListener,
    lock: HubLock,
    paths: Arc<Paths>,
    cancel: CancellationToken,
    counters: Arc<HubCounters>,
) {
    let clients: Arc<Mutex<Vec<HubClient>>> = Arc::new(Mutex::new(Vec::new()));
    let mut next_id = 0u64;
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let mut stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "sim bus hub: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        next_id += 1;
        let id = next_id;
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        let clients = clients.clone();
        let cancel = cancel.clone();
        let counters = counters.clone();
        tracker.spawn(async move {
            // Register the node before answering its hello: once the node's `open`
            // returns, every frame sent by anyone reaches it.
            if let Err(e) = read_hello(&mut stream).await {
                tracing::debug!(error = %e, "sim bus hub: node rejected");
                return;
            }
            let (tx, mut rx) = mpsc::channel(HUB_QUEUE);
            lock_clients(&clients).push(HubClient { id, tx });
            if let Err(e) = stream.write_all(HELLO).await {
                tracing::debug!(error = %e, "sim bus hub: node left during the hello");
                lock_clients(&clients).retain(|c| c.id != id);
                return;
            }
            let (mut r, w) = stream.into_split();
            let mut w = BufWriter::new(w);
            let mut reader = RecordReader::new();
            let mut batch = Vec::with_capacity(64);
            let relay = async {
                while let Some(p) = reader.next(&mut r).await? {
                    let list = lock_clients(&clients);
                    for c in list.iter().filter(|c| c.id != id) {
                        if c.tx.try_send(p).is_ok() {
                            counters.relayed.fetch_add(1, Ordering::Relaxed);
                        } else {
                            counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok::<(), io::Error>(())
            };
            let stopping = tokio::select! {
                _ = cancel.cancelled() => true,
                r = relay => {
                    if let Err(e) = r { tracing::debug!(error = %e, "sim bus hub: node read ended") }
                    false
                }
                r = write_packets(&mut w, &mut rx, &mut batch) => {
                    if let Err(e) = r { tracing::debug!(error = %e, "sim bus hub: node write ended") }
                    false
                }
            };
            lock_clients(&clients).retain(|c| c.id != id);
            if stopping {
                // The hub is going away: hand this node what is already queued for it
                // (bounded in time), so a hub change loses as little as possible.
                rx.close();
                let drain = async {
                    while let Some(p) = rx.recv().await {
                        w.write_all(p.bytes()).await?;
                    }
                    w.flush().await
                };
                let _ = tokio::time::timeout(Duration::from_millis(200), drain).await;
            }
        });
    }
    // Unlink while still holding the lock, so a new hub never loses its socket to us.
    drop(listener);
    let _ = std::fs::remove_file(&paths.socket);
    drop(lock);
    tracker.close();
    tracker.wait().await;
}

fn lock_clients(m: &Mutex<Vec<HubClient>>) -> std::sync::MutexGuard<'_, Vec<HubClient>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------
// Node

/// Options of a sim bus node.
#[derive(Clone, Debug)]
pub struct SimBusOptions {
    /// Receive queue capacity in frames.
    pub rx_capacity: usize,
    /// Receive only ids matching one of these rules (empty: all).
    pub filters: Vec<IdRule>,
    /// Accept and send CAN FD frames (FD frames are not delivered to a classic node).
    pub fd: bool,
    /// Receive this node's own frames.
    pub loopback: bool,
    /// Directory of the bus sockets; [`sim_dir`] when absent.
    pub dir: Option<PathBuf>,
    /// How long one send may wait while the transmit queue toward the hub is full.
    pub tx_timeout: Duration,
}

impl Default for SimBusOptions {
    fn default() -> Self {
        SimBusOptions {
            rx_capacity: super::vbus::DEFAULT_RX_CAPACITY,
            filters: Vec::new(),
            fd: true,
            loopback: false,
            dir: None,
            tx_timeout: super::tx::DEFAULT_TX_TIMEOUT,
        }
    }
}

#[derive(Debug)]
struct NodeShared {
    name: String,
    rx: RxQueue,
    counters: PortCounters,
    filters: Vec<IdRule>,
    fd: bool,
    connects: AtomicU64,
}

/// A node on the cross-process bus `sim:NAME`. Dropping it leaves the bus (and stops the
/// hub, if this node hosts it: the other nodes then elect another).
#[derive(Debug)]
pub struct SimPort {
    shared: Arc<NodeShared>,
    tx: mpsc::Sender<Packet>,
    loopback: bool,
    /// The transmit deadline of one send.
    tx_timeout: Duration,
    cancel: CancellationToken,
    hub_counters: Arc<HubCounters>,
}

impl Drop for SimPort {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.shared.rx.close();
    }
}

fn now_realtime() -> Timestamp {
    Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    )
}

impl SimPort {
    /// Join the bus `name` (connecting to its hub, or hosting it). Returns once connected.
    pub async fn open(name: &str, opts: SimBusOptions) -> Result<Self, CanError> {
        let spec = format!("sim:{name}");
        let invalid = |reason: String| CanError::Invalid {
            spec: spec.clone(),
            reason,
        };
        if !valid_bus_name(name) {
            return Err(invalid(
                "a sim bus name is 1-64 characters from A-Z a-z 0-9 - _ .".into(),
            ));
        }
        let dir = opts.dir.clone().unwrap_or_else(sim_dir);
        prepare_dir(&dir).map_err(|e| CanError::Io {
            iface: spec.clone(),
            op: "prepare the sim bus directory",
            source: e,
        })?;
        let paths = Arc::new(Paths {
            socket: dir.join(format!("sim-{name}.sock")),
            lock: dir.join(format!("sim-{name}.lock")),
        });
        // sockaddr_un holds 108 bytes including the NUL
        if paths.socket.as_os_str().len() > 107 {
            return Err(invalid(format!(
                "the socket path {} is longer than 107 bytes; set {SIM_DIR_ENV} to a shorter directory",
                paths.socket.display()
            )));
        }
        let shared = Arc::new(NodeShared {
            name: spec.clone(),
            rx: RxQueue::new(opts.rx_capacity),
            counters: PortCounters::default(),
            filters: opts.filters.clone(),
            fd: opts.fd,
            connects: AtomicU64::new(0),
        });
        let cancel = CancellationToken::new();
        let hub_counters = Arc::new(HubCounters::default());
        // The first connection is made here so errors surface to the caller.
        let first = connect_or_host(&paths, &cancel, &hub_counters)
            .await
            .map_err(|e| CanError::Io {
                iface: spec.clone(),
                op: "join the sim bus",
                source: e,
            })?;
        let (tx, tx_rx) = mpsc::channel(TX_QUEUE);
        tokio::spawn(node_task(
            first,
            paths,
            shared.clone(),
            tx_rx,
            cancel.clone(),
            hub_counters.clone(),
        ));
        Ok(SimPort {
            shared,
            tx,
            loopback: opts.loopback,
            tx_timeout: opts.tx_timeout,
            cancel,
            hub_counters,
        })
    }

    /// Whether this node's process currently hosts the hub.
    pub fn is_hub(&self) -> bool {
        self.hub_counters.accepted.load(Ordering::Relaxed) > 0 && !self.cancel.is_cancelled()
    }

    /// The hub's counters, when this node hosts (or hosted) the hub: (relayed, dropped).
    pub fn hub_stats(&self) -> (u64, u64) {
        (
            self.hub_counters.relayed.load(Ordering::Relaxed),
            self.hub_counters.dropped.load(Ordering::Relaxed),
        )
    }

    /// How many times this node has connected to a hub (1 + reconnections).
    pub fn connects(&self) -> u64 {
        self.shared.connects.load(Ordering::Relaxed)
    }
}

/// Connect to the hub, or become it. Backs off while another process is electing itself.
async fn connect_or_host(
    paths: &Arc<Paths>,
    cancel: &CancellationToken,
    hub_counters: &Arc<HubCounters>,
) -> io::Result<UnixStream> {
    let mut backoff = Duration::from_millis(5);
    let mut last_err: Option<io::Error> = None;
    for _ in 0..200 {
        if cancel.is_cancelled() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "port closed"));
        }
        match UnixStream::connect(&paths.socket).await {
            Ok(mut s) => match hello(&mut s).await {
                Ok(()) => return Ok(s),
                Err(e) => last_err = Some(e),
            },
            Err(e) => last_err = Some(e),
        }
        if let Some(lock) = try_lock(&paths.lock)? {
            // We are the hub now. A socket file here is stale: its hub has died (the lock
            // was free), so nobody is listening on it.
            match std::fs::remove_file(&paths.socket) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let listener = UnixListener::bind(&paths.socket)?;
            tracing::debug!(socket = %paths.socket.display(), "hosting the sim bus hub");
            tokio::spawn(run_hub(
                listener,
                lock,
                paths.clone(),
                cancel.child_token(),
                hub_counters.clone(),
            ));
            continue;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
    Err(last_err.unwrap_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "no sim bus hub")))
}

async fn node_task(
    first: UnixStream,
    paths: Arc<Paths>,
    shared: Arc<NodeShared>,
    mut tx_rx: mpsc::Receiver<Packet>,
    cancel: CancellationToken,
    hub_counters: Arc<HubCounters>,
) {
    let mut stream = Some(first);
    let mut batch = Vec::with_capacity(64);
    loop {
        let s = match stream.take() {
            Some(s) => s,
            None => match connect_or_host(&paths, &cancel, &hub_counters).await {
                Ok(s) => s,
                Err(e) => {
                    if cancel.is_cancelled() {
                        return;
                    }
                    tracing::warn!(bus = %shared.name, error = %e, "cannot reach the sim bus; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            },
        };
        shared.connects.fetch_add(1, Ordering::Relaxed);
        let (mut r, w) = s.into_split();
        let mut w = BufWriter::new(w);
        let mut reader = RecordReader::new();
        let receive = async {
            while let Some(p) = reader.next(&mut r).await? {
                deliver(&shared, &p);
            }
            Ok::<(), io::Error>(())
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = receive => if let Err(e) = r { tracing::debug!(bus = %shared.name, error = %e, "sim bus connection ended") },
            r = write_packets(&mut w, &mut tx_rx, &mut batch) => match r {
                // the port was dropped: every sender is gone
                Ok(()) => return,
                Err(e) => tracing::debug!(bus = %shared.name, error = %e, "sim bus connection ended"),
            },
        }
        tracing::info!(bus = %shared.name, "sim bus hub went away; reconnecting");
    }
}

fn deliver(shared: &NodeShared, p: &Packet) {
    let frame = match SimRecord::new_checked(p.bytes()).and_then(|r| r.parse(now_realtime())) {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(bus = %shared.name, error = %e, "ignoring a bad sim bus record");
            return;
        }
    };
    if frame.is_fd() && !shared.fd {
        return;
    }
    if !shared.filters.is_empty() && !shared.filters.iter().any(|f| f.matches(frame.id().id())) {
        return;
    }
    if shared.rx.push(frame) {
        PortCounters::add(&shared.counters.rx_frames, 1);
    } else {
        PortCounters::add(&shared.counters.rx_dropped, 1);
    }
}

impl CanPort for SimPort {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn fd_capable(&self) -> bool {
        self.shared.fd
    }

    async fn send(&self, frame: CanAnyFrame) -> Result<(), CanError> {
        if frame.is_fd() && !self.shared.fd {
            return Err(CanError::FdNotSupported(self.shared.name.clone()));
        }
        let p = Packet::from_frame(&frame);
        match tokio::time::timeout(self.tx_timeout, self.tx.send(p)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(CanError::Closed(self.shared.name.clone())),
            Err(_) => {
                PortCounters::add(&self.shared.counters.tx_timeouts, 1);
                return Err(CanError::TxTimeout {
                    iface: self.shared.name.clone(),
                    timeout: self.tx_timeout,
                    retries: 0,
                });
            }
        }
        PortCounters::add(&self.shared.counters.tx_frames, 1);
        if self.loopback {
            deliver(&self.shared, &p);
        }
        Ok(())
    }

    async fn recv(&self) -> Result<CanAnyFrame, CanError> {
        self.shared
            .rx
            .pop()
            .await
            .ok_or_else(|| CanError::Closed(self.shared.name.clone()))
    }

    fn stats(&self) -> CanPortStats {
        self.shared.counters.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_records() {
        let f: CanAnyFrame = CanFrame::new(CanId::standard(0x7E8).unwrap(), &[1, 2])
            .unwrap()
            .into();
        let mut buf = [0u8; MAX_RECORD];
        let n = emit_record(&f, &mut buf);
        assert_eq!(&buf[..n], &[1, 0, 2, 0, 0xE8, 0x07, 0, 0, 1, 2]);
        let mut fd = CanFdFrame::new(CanId::extended(0x18DA_F110).unwrap(), &[9; 12]).unwrap();
        fd.esi = true;
        let n = emit_record(&fd.into(), &mut buf);
        assert_eq!(&buf[..8], &[3, 3, 12, 0, 0x10, 0xF1, 0xDA, 0x98]);
        assert_eq!(n, 20);
        let r: CanAnyFrame = CanFrame::remote(CanId::standard(0x100).unwrap(), 3)
            .unwrap()
            .into();
        let n = emit_record(&r, &mut buf);
        assert_eq!(&buf[..n], &[2, 0, 3, 0, 0, 1, 0, 0]);
        assert_eq!(
            SimRecord::new_checked(&buf[..n])
                .unwrap()
                .parse(Timestamp(0))
                .unwrap(),
            r
        );
    }

    #[test]
    fn bad_records() {
        assert_eq!(
            SimRecord::new_checked(&[1u8, 0, 2][..]).unwrap_err(),
            RecordError::Incomplete
        );
        assert_eq!(
            SimRecord::new_checked(&[1u8, 0, 2, 0, 0, 0, 0, 0, 1][..]).unwrap_err(),
            RecordError::Incomplete
        );
        assert_eq!(
            SimRecord::new_checked(&[9u8, 0, 0, 0, 0, 0, 0, 0][..]).unwrap_err(),
            RecordError::BadKind(9)
        );
        assert_eq!(
            SimRecord::new_checked(&[1u8, 0, 9, 0, 0, 0, 0, 0][..]).unwrap_err(),
            RecordError::BadLength(9)
        );
        assert_eq!(
            SimRecord::new_checked(&[3u8, 0, 13, 0, 0, 0, 0, 0][..]).unwrap_err(),
            RecordError::BadLength(13)
        );
        // an 11-bit id above 0x7FF
        let r = SimRecord::new_checked(&[1u8, 0, 0, 0, 0, 8, 0, 0][..]).unwrap();
        assert_eq!(
            r.parse(Timestamp(0)).unwrap_err(),
            RecordError::BadId(0x800)
        );
    }

    proptest! {
        #[test]
        fn round_trip(id in 0u32..=0x1FFF_FFFF, ext in any::<bool>(), data in proptest::collection::vec(any::<u8>(), 0..=64), kind in 0u8..3) {
            let id = if ext { CanId::extended(id).unwrap() } else { CanId::standard((id & 0x7FF) as u16).unwrap() };
            let frame: CanAnyFrame = match kind {
                0 => CanFrame::new(id, &data[..data.len().min(8)]).unwrap().into(),
                1 => CanFrame::remote(id, (data.len() % 9) as u8).unwrap().into(),
                _ => {
                    let n = crate::router::frame::fd_len_round_up(data.len()).unwrap();
                    let mut d = data.clone();
                    d.resize(n, 0);
                    CanFdFrame::new(id, &d).unwrap().into()
                }
            };
            let mut buf = [0u8; MAX_RECORD];
            let n = emit_record(&frame, &mut buf);
            prop_assert_eq!(n, record_len(&frame));
            let rec = SimRecord::new_checked(&buf[..n]).unwrap();
            prop_assert_eq!(rec.total_len(), n);
            prop_assert_eq!(rec.parse(Timestamp(0)).unwrap(), frame);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(r) = SimRecord::new_checked(&bytes[..]) {
                let _ = r.parse(Timestamp(0));
            }
        }
    }

    fn opts(dir: &Path) -> SimBusOptions {
        SimBusOptions {
            dir: Some(dir.to_path_buf()),
            ..SimBusOptions::default()
        }
    }

    async fn recv_timeout(p: &SimPort) -> CanAnyFrame {
        tokio::time::timeout(Duration::from_secs(5), p.recv())
            .await
            .expect("no frame within 5 s")
            .unwrap()
    }

    #[tokio::test]
    async fn three_nodes_one_hub() {
        let dir = tempfile::tempdir().unwrap();
        let a = SimPort::open("t", opts(dir.path())).await.unwrap();
        let b = SimPort::open("t", opts(dir.path())).await.unwrap();
        let c = SimPort::open("t", opts(dir.path())).await.unwrap();
        assert!(a.is_hub());
        assert!(!b.is_hub() && !c.is_hub());
        let f: CanAnyFrame = CanFrame::new(CanId::standard(0x7DF).unwrap(), &[2, 1, 0])
            .unwrap()
            .into();
        a.send(f).await.unwrap();
        assert_eq!(recv_timeout(&b).await.data(), f.data());
        assert_eq!(recv_timeout(&c).await.data(), f.data());
        let fd: CanAnyFrame = CanFdFrame::new(CanId::standard(0x7E8).unwrap(), &[5; 64])
            .unwrap()
            .into();
        c.send(fd).await.unwrap();
        assert_eq!(recv_timeout(&a).await.data(), &[5; 64]);
        assert_eq!(recv_timeout(&b).await.data(), &[5; 64]);
        assert!(a.recv_now_is_empty());
        assert_eq!(a.stats().tx_frames, 1);
        assert_eq!(a.stats().rx_frames, 1);
    }

    impl SimPort {
        fn recv_now_is_empty(&self) -> bool {
            self.shared.rx.is_empty()
        }
    }

    #[tokio::test]
    async fn filters_loopback_and_classic_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let a = SimPort::open(
            "f",
            SimBusOptions {
                loopback: true,
                ..opts(dir.path())
            },
        )
        .await
        .unwrap();
        let b = SimPort::open(
            "f",
            SimBusOptions {
                filters: vec!["0x7E8-0x7EF".parse().unwrap()],
                fd: false,
                ..opts(dir.path())
            },
        )
        .await
        .unwrap();
        let mk = |id: u16| -> CanAnyFrame {
            CanFrame::new(CanId::standard(id).unwrap(), &[id as u8])
                .unwrap()
                .into()
        };
        a.send(mk(0x100)).await.unwrap();
        a.send(
            CanFdFrame::new(CanId::standard(0x7E9).unwrap(), &[0; 12])
                .unwrap()
                .into(),
        )
        .await
        .unwrap();
        a.send(mk(0x7E8)).await.unwrap();
        // b sees only the classic 0x7E8
        assert_eq!(recv_timeout(&b).await.id(), CanId::standard(0x7E8).unwrap());
        // a hears itself, all three, in order
        assert_eq!(recv_timeout(&a).await.id().id(), 0x100);
        assert_eq!(recv_timeout(&a).await.id().id(), 0x7E9);
        assert_eq!(recv_timeout(&a).await.id().id(), 0x7E8);
        assert!(matches!(
            b.send(
                CanFdFrame::new(CanId::standard(1).unwrap(), &[0; 12])
                    .unwrap()
                    .into()
            )
            .await,
            Err(CanError::FdNotSupported(_))
        ));
    }

    #[tokio::test]
    async fn hub_failover_when_the_host_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let a = SimPort::open("h", opts(dir.path())).await.unwrap();
        let b = SimPort::open("h", opts(dir.path())).await.unwrap();
        let c = SimPort::open("h", opts(dir.path())).await.unwrap();
        assert!(a.is_hub());
        drop(a);
        // b and c elect a new hub and reconnect; keep sending until c hears b
        let f: CanAnyFrame = CanFrame::new(CanId::standard(0x123).unwrap(), &[1])
            .unwrap()
            .into();
        let heard = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                b.send(f).await.unwrap();
                if let Ok(Ok(g)) = tokio::time::timeout(Duration::from_millis(50), c.recv()).await {
                    return g;
                }
            }
        })
        .await
        .expect("no failover within 10 s");
        assert_eq!(heard.data(), &[1]);
        assert!(b.connects() >= 2 && c.connects() >= 2);
        assert!(b.is_hub() || c.is_hub());
    }

    #[tokio::test]
    async fn stale_socket_file_is_replaced_and_strangers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        // a socket file nobody listens on, as a crashed hub leaves behind
        let stale = std::os::unix::net::UnixListener::bind(dir.path().join("sim-s.sock")).unwrap();
        drop(stale);
        let a = SimPort::open("s", opts(dir.path())).await.unwrap();
        assert!(a.is_hub());
        // something that is not a node is disconnected without an answer
        let mut raw = UnixStream::connect(dir.path().join("sim-s.sock"))
            .await
            .unwrap();
        raw.write_all(b"GET / HTTP/1.0\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), async {
            let mut total = 0;
            loop {
                let n = raw.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return total;
                }
                total += n;
            }
        })
        .await
        .unwrap();
        assert_eq!(n, 0, "no hello for a stranger: the connection is closed");
    }

    #[tokio::test]
    async fn a_hub_that_never_reads_costs_a_sender_its_deadline_only() {
        // A "hub" that answers the hello and then never reads: the node's socket buffer and
        // transmit queue fill, and then every send waits for its deadline and fails.
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("sim-stuck.sock")).unwrap();
        let hub = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            read_hello(&mut s).await.unwrap();
            s.write_all(HELLO).await.unwrap();
            // hold the connection without reading
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(s);
        });
        let deadline = Duration::from_millis(50);
        let port = SimPort::open(
            "stuck",
            SimBusOptions {
                tx_timeout: deadline,
                ..opts(dir.path())
            },
        )
        .await
        .unwrap();
        let f: CanAnyFrame = CanFrame::new(CanId::standard(0x7E0).unwrap(), &[0x55; 8])
            .unwrap()
            .into();
        let mut sent = 0u64;
        let failed = loop {
            let start = tokio::time::Instant::now();
            match port.send(f).await {
                Ok(()) => sent += 1,
                Err(e) => break (e, start.elapsed()),
            }
            assert!(sent < 1_000_000, "the queue never filled");
        };
        let (e, took) = failed;
        assert!(matches!(e, CanError::TxTimeout { .. }), "{e:?}");
        assert!(
            took >= deadline && took < deadline + Duration::from_millis(500),
            "{took:?}"
        );
        assert_eq!(port.stats().tx_timeouts, 1);
        assert_eq!(port.stats().tx_frames, sent);
        // a second send fails the same way, after the same wait
        let start = tokio::time::Instant::now();
        assert!(matches!(
            port.send(f).await,
            Err(CanError::TxTimeout { .. })
        ));
        assert!(start.elapsed() < deadline + Duration::from_millis(500));
        // leaving the bus does not wait for the stuck queue
        let start = tokio::time::Instant::now();
        drop(port);
        assert!(start.elapsed() < Duration::from_millis(100));
        hub.abort();
    }

    #[test]
    fn names_and_dirs() {
        assert!(valid_bus_name("car-1.test_2"));
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_bus_name(bad), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        prepare_dir(&dir.path().join("new")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("new"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}

#[cfg(test)]
mod stress {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_rounds_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let o = SimBusOptions {
            dir: Some(dir.path().to_path_buf()),
            rx_capacity: 4096,
            ..SimBusOptions::default()
        };
        let tx = SimPort::open("stress", o.clone()).await.unwrap();
        let rx = SimPort::open("stress", o).await.unwrap();
        let f: CanAnyFrame = CanFrame::new(CanId::standard(0x7E8).unwrap(), &[0x11; 8])
            .unwrap()
            .into();
        for round in 0..200 {
            for _ in 0..1024 {
                tx.send(f).await.unwrap();
            }
            for i in 0..1024 {
                if tokio::time::timeout(Duration::from_secs(5), rx.recv())
                    .await
                    .is_err()
                {
                    panic!(
                        "round {round} frame {i}: lost; rx {:?} tx {:?} hub {:?} connects {} {}",
                        rx.stats(),
                        tx.stats(),
                        tx.hub_stats(),
                        tx.connects(),
                        rx.connects()
                    );
                }
            }
        }
    }
}
