//! A socketcand-protocol server: standard CAN tools (python-can's `socketcand` interface,
//! SavvyCAN, Kayak) reach buses that are not local.
//!
//! Owns: the per-connection protocol state machine (NO_BUS → BCM → RAW / ISO-TP / CONTROL),
//! statistics, error replies, and the TCP accept loop with a connection limit.
//!
//! Does not own: the buses. A [`BusProvider`] opens them: in the operator endpoint they are
//! tunnel channels to the remote car; in tests, an in-process bus.
//!
//! Supported: `open`, `rawmode` (frames both ways, classic and FD), `isotpmode` +
//! `isotpconf` + `sendpdu` / `pdu`, `controlmode` + `statistics`, `echo`, `send` in any
//! mode after `open`. Not supported (answered with `< error ... >`, the connection stays
//! up): the BCM cyclic jobs and content filters (`add`, `update`, `delete`, `filter`,
//! `muxfilter`, `subscribe`, `unsubscribe`); clients use raw mode instead.
//!
//! Memory is bounded: each connection's receive queue is bounded by its provider, a line is
//! at most [`crate::wire::socketcand::DEFAULT_MAX_MESSAGE`] bytes, and output is flushed
//! per batch of messages.

use crate::router::frame::Timestamp;
use crate::vehicle::can::CanAnyFrame;
use crate::wire::socketcand::{self, Framer, IsoTpConf, Message, ParseError};
use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Raw access to one bus.
pub struct RawAccess {
    /// Frames seen on the bus (the provider sheds and counts when this queue is full).
    pub rx: mpsc::Receiver<(CanAnyFrame, Timestamp)>,
    /// Frames to put on the bus.
    pub tx: mpsc::Sender<CanAnyFrame>,
}

/// One ISO-TP channel on a bus.
pub struct PduAccess {
    /// PDUs received on the channel, or errors of the channel (e.g. a send that timed out).
    pub rx: mpsc::Receiver<Result<(Bytes, Timestamp), String>>,
    /// PDUs to send.
    pub tx: mpsc::Sender<Bytes>,
}

/// The buses a socketcand server serves.
pub trait BusProvider: Send + Sync + 'static {
    /// Names clients may `open`.
    fn buses(&self) -> Vec<String>;
    /// Raw frame access to `bus`.
    fn open_raw(&self, bus: &str) -> impl Future<Output = Result<RawAccess, String>> + Send;
    /// An ISO-TP channel on `bus`.
    fn open_isotp(
        &self,
        bus: &str,
        conf: IsoTpConf,
    ) -> impl Future<Output = Result<PduAccess, String>> + Send;
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Most simultaneous client connections; more wait in the accept queue.
    pub max_connections: usize,
    /// Longest accepted message in bytes.
    pub max_message: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 16,
            max_message: socketcand::DEFAULT_MAX_MESSAGE,
        }
    }
}

/// Serve socketcand clients on `listener` until `shutdown`; waits for connections to end.
pub async fn serve<P: BusProvider>(
    listener: TcpListener,
    provider: Arc<P>,
    config: ServerConfig,
    shutdown: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let tasks = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("socketcand accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let provider = provider.clone();
        let config = config.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            tracing::info!(%peer, "socketcand client connected");
            match Connection::new(stream, provider, &config).run(stop).await {
                Ok(()) => tracing::info!(%peer, "socketcand client disconnected"),
                Err(e) => tracing::info!(%peer, "socketcand client dropped: {e}"),
            }
            drop(permit);
        });
    }
    tasks.close();
    tasks.wait().await;
}

enum Mode {
    NoBus,
    Bcm,
    Raw(mpsc::Receiver<(CanAnyFrame, Timestamp)>),
    IsoTp(Option<PduAccess>),
    Control,
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Mode::NoBus => "NO_BUS",
            Mode::Bcm => "BCM",
            Mode::Raw(_) => "RAW",
            Mode::IsoTp(_) => "ISO-TP",
            Mode::Control => "CONTROL",
        }
    }
}

#[derive(Default)]
struct Stats {
    rx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    tx_packets: AtomicU64,
}

struct Connection<P> {
    stream: TcpStream,
    provider: Arc<P>,
    framer: Framer,
    inbuf: BytesMut,
    out: String,
    bus: Option<String>,
    /// Sender for `send` (opened with the bus, kept across modes).
    frame_tx: Option<mpsc::Sender<CanAnyFrame>>,
    /// The bus receiver between `open` and `rawmode`.
    pending_rx: Option<mpsc::Receiver<(CanAnyFrame, Timestamp)>>,
    mode: Mode,
    stats: Stats,
    /// `statistics` interval in ms (0: off).
    stats_interval_ms: u32,
    /// Set when `statistics` changes the interval; the run loop re-arms its timer.
    stat_every: Option<Duration>,
}

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("closed after error: {0}")]
    Fatal(String),
}

fn ts_parts(ts: Timestamp) -> (u64, u32) {
    let us = ts.as_micros();
    (us / 1_000_000, (us % 1_000_000) as u32)
}

fn frame_len(f: &CanAnyFrame) -> u64 {
    f.data().len() as u64
}

impl<P: BusProvider> Connection<P> {
    fn new(stream: TcpStream, provider: Arc<P>, config: &ServerConfig) -> Self {
        Connection {
            stream,
            provider,
            framer: Framer::new(config.max_message),
            inbuf: BytesMut::with_capacity(4096),
            out: String::with_capacity(4096),
            bus: None,
            frame_tx: None,
            pending_rx: None,
            mode: Mode::NoBus,
            stats: Stats::default(),
            stats_interval_ms: 0,
            stat_every: None,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(self.out.as_bytes()).await?;
            self.out.clear();
        }
        Ok(())
    }

    fn push(&mut self, m: &Message) {
        socketcand::format_into(m, &mut self.out);
    }

    async fn run(mut self, stop: CancellationToken) -> Result<(), ConnError> {
        // python-can reads the greeting and each `ok` with one recv and compares it
        // exactly, so they are flushed on their own.
        self.push(&Message::Hi);
        self.flush().await?;
        let mut stat_tick = tokio::time::interval(Duration::from_secs(3600));
        stat_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut readbuf = vec![0u8; 8192];
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                n = self.stream.read(&mut readbuf) => {
                    let n = n?;
                    if n == 0 {
                        return Ok(());
                    }
                    self.inbuf.extend_from_slice(&readbuf[..n]);
                    self.handle_input().await?;
                    if let Some(every) = self.stat_every.take() {
                        stat_tick = tokio::time::interval(every);
                        stat_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        stat_tick.reset();
                    }
                }
                event = recv_mode(&mut self.mode) => match event {
                    ModeEvent::Frame(Some((f, ts))) => {
                        let (secs, usecs) = ts_parts(ts);
                        self.stats.rx_packets.fetch_add(1, Ordering::Relaxed);
                        self.stats.rx_bytes.fetch_add(frame_len(&f), Ordering::Relaxed);
                        self.push(&Message::Frame { frame: f, secs, usecs });
                        // Batch whatever else is already queued into the same write.
                        while let Mode::Raw(rx) = &mut self.mode {
                            match rx.try_recv() {
                                Ok((f, ts)) => {
                                    let (secs, usecs) = ts_parts(ts);
                                    self.stats.rx_packets.fetch_add(1, Ordering::Relaxed);
                                    self.stats.rx_bytes.fetch_add(frame_len(&f), Ordering::Relaxed);
                                    socketcand::format_into(&Message::Frame { frame: f, secs, usecs }, &mut self.out);
                                    if self.out.len() > 32 * 1024 {
                                        break;
                                    }
                                }
                                Err(_) => break,
                            }
                        }
                        self.flush().await?;
                    }
                    ModeEvent::Frame(None) => return Err(ConnError::Fatal("the bus went away".into())),
                    ModeEvent::Pdu(Some(Ok((data, ts)))) => {
                        let (secs, usecs) = ts_parts(ts);
                        self.stats.rx_packets.fetch_add(1, Ordering::Relaxed);
                        self.stats.rx_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                        self.push(&Message::Pdu { secs, usecs, data });
                        self.flush().await?;
                    }
                    ModeEvent::Pdu(Some(Err(e))) => {
                        self.push(&Message::Error(e));
                        self.flush().await?;
                    }
                    ModeEvent::Pdu(None) => return Err(ConnError::Fatal("the ISO-TP channel went away".into())),
                },
                _ = stat_tick.tick(), if matches!(self.mode, Mode::Control) && self.stat_active() => {
                    let m = Message::Stat {
                        rx_bytes: self.stats.rx_bytes.load(Ordering::Relaxed),
                        rx_packets: self.stats.rx_packets.load(Ordering::Relaxed),
                        tx_bytes: self.stats.tx_bytes.load(Ordering::Relaxed),
                        tx_packets: self.stats.tx_packets.load(Ordering::Relaxed),
                    };
                    self.push(&m);
                    self.flush().await?;
                }
            }
        }
    }

    fn stat_active(&self) -> bool {
        self.stats_interval_ms != 0
    }

    async fn handle_input(&mut self) -> Result<(), ConnError> {
        loop {
            let msg = match self.framer.next(&mut self.inbuf) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    self.reply_error(&e);
                    self.flush().await?;
                    continue;
                }
            };
            self.handle(msg).await?;
            // Replies go out in order, each flushed before the next command is handled,
            // so strict clients see exactly one reply per read.
            self.flush().await?;
        }
        Ok(())
    }

    fn reply_error(&mut self, e: &ParseError) {
        tracing::debug!("socketcand: bad message: {e}");
        self.push(&Message::Error(e.to_string()));
    }

    async fn handle(&mut self, msg: Message) -> Result<(), ConnError> {
        match (&self.mode, msg) {
            (_, Message::Echo) => self.push(&Message::Echo),
            (Mode::NoBus, Message::Open(bus)) => {
                if !self.provider.buses().contains(&bus) {
                    let known = self.provider.buses().join(", ");
                    self.push(&Message::Error(format!(
                        "unknown bus {bus}; available: {known}"
                    )));
                    self.flush().await?;
                    return Err(ConnError::Fatal(format!("client opened unknown bus {bus}")));
                }
                match self.provider.open_raw(&bus).await {
                    Ok(access) => {
                        // Frames are only forwarded in RAW mode; until then the receiver
                        // is kept so nothing is missed between `open` and `rawmode`.
                        self.frame_tx = Some(access.tx);
                        self.mode = Mode::Bcm;
                        self.pending_rx = Some(access.rx);
                        self.bus = Some(bus);
                        self.push(&Message::Ok);
                    }
                    Err(e) => {
                        self.push(&Message::Error(format!("cannot open {bus}: {e}")));
                        self.flush().await?;
                        return Err(ConnError::Fatal(e));
                    }
                }
            }
            (Mode::NoBus, m) => self.push(&Message::Error(format!(
                "no bus is open: send `< open BUS >` first (got {})",
                socketcand::format(&m)
            ))),
            (_, Message::Open(_)) => self.push(&Message::Error("a bus is already open".into())),
            (_, Message::RawMode) => {
                let rx = match std::mem::replace(&mut self.mode, Mode::Bcm) {
                    Mode::Raw(rx) => Some(rx),
                    _ => self.pending_rx.take(),
                };
                match rx {
                    Some(rx) => {
                        self.mode = Mode::Raw(rx);
                        self.push(&Message::Ok);
                    }
                    None => {
                        // Reopen: the receiver was dropped when leaving RAW mode.
                        let bus = self.bus.clone().unwrap_or_default();
                        match self.provider.open_raw(&bus).await {
                            Ok(a) => {
                                self.frame_tx = Some(a.tx);
                                self.mode = Mode::Raw(a.rx);
                                self.push(&Message::Ok);
                            }
                            Err(e) => self.push(&Message::Error(format!("cannot open {bus}: {e}"))),
                        }
                    }
                }
            }
            (_, Message::BcmMode) => {
                self.leave_mode();
                self.mode = Mode::Bcm;
                self.push(&Message::Ok);
            }
            (_, Message::IsoTpMode) => {
                self.leave_mode();
                self.mode = Mode::IsoTp(None);
                self.push(&Message::Ok);
            }
            (_, Message::ControlMode) => {
                self.leave_mode();
                self.mode = Mode::Control;
                self.push(&Message::Ok);
            }
            (Mode::Control, Message::Statistics(ms)) => {
                self.stats_interval_ms = ms;
                if ms > 0 {
                    self.stat_every = Some(Duration::from_millis(ms.max(10) as u64));
                }
            }
            (Mode::IsoTp(_), Message::IsoTpConf(conf)) => {
                let bus = self.bus.clone().unwrap_or_default();
                match self.provider.open_isotp(&bus, conf).await {
                    Ok(access) => {
                        self.mode = Mode::IsoTp(Some(access));
                        self.push(&Message::Ok);
                    }
                    Err(e) => self.push(&Message::Error(format!("isotpconf refused: {e}"))),
                }
            }
            (Mode::IsoTp(Some(ch)), Message::SendPdu(data)) => {
                let len = data.len() as u64;
                if ch.tx.send(data).await.is_err() {
                    return Err(ConnError::Fatal("the ISO-TP channel went away".into()));
                }
                self.stats.tx_packets.fetch_add(1, Ordering::Relaxed);
                self.stats.tx_bytes.fetch_add(len, Ordering::Relaxed);
            }
            (Mode::IsoTp(None), Message::SendPdu(_)) => self.push(&Message::Error(
                "no ISO-TP channel: send `< isotpconf TX_ID RX_ID FLAGS BS STMIN >` first".into(),
            )),
            (_, Message::Send(frame)) => {
                let Some(tx) = &self.frame_tx else {
                    self.push(&Message::Error("no bus is open".into()));
                    return Ok(());
                };
                let len = frame_len(&frame);
                if tx.send(frame).await.is_err() {
                    return Err(ConnError::Fatal("the bus went away".into()));
                }
                self.stats.tx_packets.fetch_add(1, Ordering::Relaxed);
                self.stats.tx_bytes.fetch_add(len, Ordering::Relaxed);
            }
            (mode, m) => {
                let name = mode.name();
                let what = socketcand::format(&m);
                self.push(&Message::Error(format!(
                    "{what} is not supported in {name} mode (obdgw serves rawmode, isotpmode and controlmode)"
                )));
            }
        }
        Ok(())
    }

    /// Leaving RAW drops its receiver (the provider stops queueing for this client).
    fn leave_mode(&mut self) {
        self.mode = Mode::NoBus;
        self.pending_rx = None;
    }
}

/// Something the current mode's bus produced (`None`: it closed).
enum ModeEvent {
    Frame(Option<(CanAnyFrame, Timestamp)>),
    Pdu(Option<Result<(Bytes, Timestamp), String>>),
}

/// Wait for the current mode's bus; never resolves in modes without one.
async fn recv_mode(mode: &mut Mode) -> ModeEvent {
    match mode {
        Mode::Raw(rx) => ModeEvent::Frame(rx.recv().await),
        Mode::IsoTp(Some(ch)) => ModeEvent::Pdu(ch.rx.recv().await),
        _ => std::future::pending().await,
    }
}
