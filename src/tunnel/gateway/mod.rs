//! The gateway side of a tunnel session: opens channels on the operator's request and binds
//! each to a vehicle port.
//!
//! Owns: the channel table of one session, DoIP target channels (diagnostic-message records
//! forwarded as requests to the car's DoIP entity through one shared [`DoipClient`], each
//! final response sent back as a record, failures as channel-error records), ISO-TP channels
//! (PDU records on an ISO-TP channel of a CAN port), DoIP channels to CAN-only ECUs through
//! the address map ([`MappedEcu`]: DoIP records in, ISO-TP on the bus, every answer back as a
//! DoIP record), raw CAN mirror channels (frames of a CAN port, id-filtered, sent as
//! sheddable records; frames from the operator put on the bus when the channel allows it),
//! local tester-present while the operator is silent ([`SessionGuard`]), and the gateway's
//! `[tunnel]` configuration section.
//!
//! Does not own: the session or the websocket (`super::session`, `super::client`), the DoIP,
//! ISO-TP and CAN drivers, or sharing a port between readers (`super::ports`).
//!
//! Known limit: the DoIP client consumes the car's `7F xx 78` response-pending replies while
//! it waits for the final one, so they are not forwarded; the operator endpoint answers
//! pending locally while it waits (see `crate::operator::tunnel`).

mod config;
mod keepalive;

pub use config::*;
pub use keepalive::*;

use super::client::{self, ClientConfig, Outgoing};
use super::policy::{PolicyConfig, PolicyHandle, RawTxGate, Refusal};
use super::ports::{PortHub, Tap};
use super::session::{Event, Session, SessionConfig};
use crate::config::Secret;
use crate::router::frame::{CanFrame, CanId, DoipMessage, Timestamp};
use crate::vehicle::can::{CanAnyFrame, CanPort};
use crate::vehicle::doip::{DoipClient, DoipClientConfig};
use crate::vehicle::isotp::{
    Addressing, FrameMode, IsoTpConfig, IsoTpError, IsoTpHandle, IsoTpMux,
};
use crate::wire::isotp::StMin;
use crate::wire::tunnel::{
    ChannelParams, Control, ErrorCode, ErrorRecord, IdFilter, PduRecord, RecordBody, RecordRepr,
    Role, Token,
};
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A raw mirror's frame queue on its port (frames beyond it are dropped and counted).
const MIRROR_TAP_QUEUE: usize = 16 * 1024;
/// The ISO-TP layer's frame queue on a port (lossless: a full queue backs up into the
/// port's own queue).
const ISOTP_TAP_QUEUE: usize = 1024;
/// Most frames a raw mirror forwards per wake-up.
const MIRROR_RUN: usize = 256;
/// How long a mapped ECU may take to answer a request (UDS P2, 50 ms on the bus, with room
/// for a loaded gateway and a busy bus)...
const P2_BOUND: Duration = Duration::from_millis(1_000);
/// ...and, after it answered response-pending (`7F sid 78`), the next answer (UDS P2*,
/// 5,000 ms, plus the same room).
const P2_STAR_BOUND: Duration = Duration::from_millis(6_000);
/// Largest PDU an ISO-TP channel of the tunnel sends or accepts.
const ISOTP_MAX_PDU: u32 = 64 * 1024;

/// What the gateway serves, resolved to live objects.
pub struct Gateway<P> {
    /// DoIP tester toward the car's entity; `None`: no DoIP channels (except mapped ones).
    pub doip: Option<(SocketAddr, DoipClientConfig)>,
    /// CAN ports by interface name (raw mirror and ISO-TP channels, the address map).
    pub can: Vec<(String, Arc<P>)>,
    /// The policy in force: shared, so the daemon's reload changes it for open channels
    /// too, and so its refusal counters reach the status.
    pub policy: Arc<PolicyHandle>,
    /// CAN-only ECUs served as DoIP logical addresses (they take precedence over the car's
    /// DoIP entity for their address).
    pub doip_map: Vec<MappedEcu>,
    /// Local tester-present while the operator is silent.
    pub keepalive: Keepalive,
    /// Counters shared with the caller.
    pub counters: Arc<GatewayCounters>,
}

/// Counters of a running gateway side.
#[derive(Debug, Default)]
pub struct GatewayCounters {
    /// Raw-mirror frames dropped because the mirror's queue was full.
    pub mirror_dropped: Arc<AtomicU64>,
    /// Local tester-present requests sent while the operator was silent.
    pub keepalives: AtomicU64,
    /// Channels open now.
    pub channels: Arc<AtomicU64>,
}

impl<P> Gateway<P> {
    /// A gateway with these ports and the defaults for the rest (no address map, default
    /// keep-alive, fresh counters).
    pub fn new(
        doip: Option<(SocketAddr, DoipClientConfig)>,
        can: Vec<(String, Arc<P>)>,
        policy: PolicyConfig,
    ) -> Self {
        Gateway {
            doip,
            can,
            policy: PolicyHandle::new(policy),
            doip_map: Vec::new(),
            keepalive: Keepalive::default(),
            counters: Arc::new(GatewayCounters::default()),
        }
    }
}

/// Build an ISO-TP channel configuration from `isotp` channel parameters (other kinds are
/// refused). The interface is not checked here.
pub fn isotp_config(params: &ChannelParams) -> Result<IsoTpConfig, String> {
    let ChannelParams::Isotp {
        tx_id,
        rx_id,
        extended_ids,
        addressing,
        tx_ext,
        rx_ext,
        bs,
        stmin_us,
        padding,
        fd,
        ..
    } = params
    else {
        return Err("not ISO-TP channel parameters".into());
    };
    let id = |v: u32, what: &str| {
        let id = if *extended_ids {
            CanId::extended(v)
        } else {
            u16::try_from(v).ok().and_then(CanId::standard)
        };
        id.ok_or_else(|| {
            format!(
                "{what} 0x{v:X} is not a valid {} CAN id{}",
                if *extended_ids { "29-bit" } else { "11-bit" },
                if *extended_ids {
                    ""
                } else {
                    " (set extended_ids for 29-bit ids)"
                }
            )
        })
    };
    let mut cfg = IsoTpConfig::new(id(*tx_id, "tx_id")?, id(*rx_id, "rx_id")?);
    if cfg.tx_id == cfg.rx_id && *addressing == crate::wire::tunnel::Addressing::Normal {
        return Err(format!(
            "tx_id and rx_id are both 0x{tx_id:X}: with normal addressing the gateway would receive its own requests"
        ));
    }
    cfg.addressing = match addressing {
        crate::wire::tunnel::Addressing::Normal => Addressing::Normal,
        crate::wire::tunnel::Addressing::Extended => match (tx_ext, rx_ext) {
            (Some(tx_ta), Some(rx_ta)) => Addressing::Extended {
                tx_ta: *tx_ta,
                rx_ta: *rx_ta,
            },
            _ => return Err("extended addressing needs tx_ext and rx_ext".into()),
        },
        crate::wire::tunnel::Addressing::Mixed => match (tx_ext, rx_ext) {
            (Some(ae), None) => Addressing::Mixed { ae: *ae },
            (Some(ae), Some(r)) if r == ae => Addressing::Mixed { ae: *ae },
            (Some(_), Some(_)) => {
                return Err("mixed addressing uses one address extension: tx_ext = rx_ext".into());
            }
            _ => return Err("mixed addressing needs tx_ext (the address extension)".into()),
        },
    };
    if *fd {
        cfg.frame_mode = FrameMode::Fd { tx_dl: 64 };
    }
    cfg.padding = *padding;
    cfg.block_size = bs.unwrap_or(0);
    if let Some(us) = stmin_us {
        if *us > 127_000 {
            return Err(format!("stmin_us {us} exceeds ISO-TP's 127 ms"));
        }
        cfg.st_min = StMin::from_duration(Duration::from_micros(u64::from(*us)));
    }
    cfg.max_pdu_len = ISOTP_MAX_PDU;
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// Why an open was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OpenError {
    pub code: ErrorCode,
    pub message: String,
}

impl From<Refusal> for OpenError {
    fn from(r: Refusal) -> Self {
        open_err(ErrorCode::POLICY_REFUSED, r.to_string())
    }
}

fn open_err(code: ErrorCode, message: impl Into<String>) -> OpenError {
    OpenError {
        code,
        message: message.into(),
    }
}

/// Nanoseconds since the Unix epoch (the realtime clock, as SocketCAN stamps frames).
pub fn now_ns() -> Timestamp {
    Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    )
}

/// Whether a frame passes a mirror channel's filters (empty: everything).
pub fn passes(filters: &[IdFilter], frame: &CanAnyFrame) -> bool {
    let id = frame.id();
    filters.is_empty()
        || filters
            .iter()
            .any(|f| f.extended == id.is_extended() && (id.id() & f.mask) == (f.id & f.mask))
}

/// Whether a UDS request has the suppress-positive-response bit set on a service that
/// defines it (no answer is awaited for such requests).
pub fn suppresses_response(data: &[u8]) -> bool {
    matches!(data, [sid, sub, ..]
        if matches!(sid, 0x10 | 0x11 | 0x19 | 0x27 | 0x28 | 0x31 | 0x3E | 0x85) && sub & 0x80 != 0)
}

struct OpenChannel {
    params: ChannelParams,
    input: mpsc::Sender<RecordBody>,
    stop: CancellationToken,
    /// ISO-TP channel tasks are aborted and awaited on close, so that their bus addresses
    /// are free again before the next open is served.
    isotp_task: Option<tokio::task::JoinHandle<()>>,
}

impl OpenChannel {
    async fn close(self) {
        self.stop.cancel();
        if let Some(t) = self.isotp_task {
            t.abort();
            let _ = t.await;
        }
    }
}

/// The gateway's CAN ports, each shared by a [`PortHub`], and their ISO-TP layers (created
/// on first use).
struct Ports<P: CanPort> {
    hubs: HashMap<String, Arc<PortHub<P>>>,
    muxes: HashMap<String, Arc<IsoTpMux<Tap<P>>>>,
}

impl<P: CanPort> Ports<P> {
    fn mux(&mut self, name: &str) -> Option<Arc<IsoTpMux<Tap<P>>>> {
        if let Some(m) = self.muxes.get(name) {
            return Some(m.clone());
        }
        let hub = self.hubs.get(name)?;
        let tap = Arc::new(hub.subscribe(ISOTP_TAP_QUEUE, true));
        let mux = Arc::new(IsoTpMux::new(tap));
        self.muxes.insert(name.to_string(), mux.clone());
        Some(mux)
    }
}

fn isotp_error_code(e: &IsoTpError) -> ErrorCode {
    match e {
        IsoTpError::TimeoutAs
        | IsoTpError::TimeoutAr
        | IsoTpError::TimeoutBs
        | IsoTpError::TimeoutCr => ErrorCode::ISOTP_TIMEOUT,
        IsoTpError::Port(_) | IsoTpError::Kernel { .. } => ErrorCode::SEND_FAILED,
        IsoTpError::Closed => ErrorCode::PORT_UNAVAILABLE,
        _ => ErrorCode::ISOTP_PROTOCOL,
    }
}

impl<P: CanPort> Gateway<P> {
    /// Serve channel requests arriving as session `events` until `shutdown` or until the
    /// session driver goes away; records and answers go to `out`.
    pub async fn serve(
        self,
        mut events: mpsc::Receiver<Event>,
        out: mpsc::Sender<Outgoing>,
        shutdown: CancellationToken,
    ) {
        let doip = self
            .doip
            .as_ref()
            .map(|(addr, cfg)| Arc::new(Mutex::new(DoipClient::new(*addr, cfg.clone()))));
        let mut channels: HashMap<u16, OpenChannel> = HashMap::new();
        let mut ports = Ports {
            hubs: self
                .can
                .iter()
                .map(|(n, p)| (n.clone(), PortHub::new(p.clone())))
                .collect(),
            muxes: HashMap::new(),
        };
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = events.recv() => match ev { Some(ev) => ev, None => break },
            };
            self.counters
                .channels
                .store(channels.len() as u64, Ordering::Relaxed);
            match ev {
                Event::Control(Control::Open { channel, params }) => {
                    let answer = match channels.get(&channel) {
                        Some(c) if c.params == params => Control::Opened { channel },
                        Some(_) => Control::Error {
                            code: ErrorCode::CHANNEL_EXISTS,
                            message: format!("channel {channel} is open with other parameters"),
                            channel: Some(channel),
                        },
                        None => {
                            let opened = self
                                .policy
                                .check_channels(channels.len())
                                .map_err(OpenError::from)
                                .and_then(|()| {
                                    self.open(channel, &params, &doip, &channels, &out, &mut ports)
                                });
                            match opened {
                                Ok(mut c) => {
                                    tracing::info!(channel, ?params, "tunnel channel opened");
                                    c.params = params;
                                    channels.insert(channel, c);
                                    self.counters
                                        .channels
                                        .store(channels.len() as u64, Ordering::Relaxed);
                                    Control::Opened { channel }
                                }
                                Err(e) => Control::Error {
                                    code: e.code,
                                    message: e.message,
                                    channel: Some(channel),
                                },
                            }
                        }
                    };
                    if out.send(Outgoing::Control(answer)).await.is_err() {
                        break;
                    }
                }
                Event::Control(Control::Close { channel }) => {
                    if let Some(c) = channels.remove(&channel) {
                        c.close().await;
                    }
                    self.counters
                        .channels
                        .store(channels.len() as u64, Ordering::Relaxed);
                    let closed = Control::Closed {
                        channel,
                        reason: None,
                    };
                    if out.send(Outgoing::Control(closed)).await.is_err() {
                        break;
                    }
                }
                Event::Record(rec) => match channels.get(&rec.channel) {
                    Some(c) => {
                        // A full queue waits: the session's acks (and so the operator) slow
                        // down rather than memory growing.
                        if c.input.send(rec.body).await.is_err() {
                            channels.remove(&rec.channel);
                        }
                    }
                    None => {
                        let e = Control::Error {
                            code: ErrorCode::UNKNOWN_CHANNEL,
                            message: format!(
                                "record for channel {} which is not open",
                                rec.channel
                            ),
                            channel: Some(rec.channel),
                        };
                        if out.send(Outgoing::Control(e)).await.is_err() {
                            break;
                        }
                    }
                },
                Event::PeerRestarted => {
                    tracing::info!("tunnel operator restarted: closing its channels");
                    for (_, c) in channels.drain() {
                        c.close().await;
                    }
                }
                Event::Bye { reason } => {
                    tracing::info!(%reason, "tunnel session ended by the operator");
                    break;
                }
                _ => {}
            }
        }
        for (_, c) in channels.drain() {
            c.close().await;
        }
    }

    /// Open an ISO-TP channel on `interface` for a channel task.
    fn isotp_handle(
        &self,
        ports: &mut Ports<P>,
        interface: &str,
        cfg: IsoTpConfig,
    ) -> Result<IsoTpHandle, OpenError> {
        let Some(mux) = ports.mux(interface) else {
            return Err(self.no_interface(interface));
        };
        let rx_id = cfg.rx_id;
        mux.open(cfg).map_err(|e| match e {
            IsoTpError::DuplicateChannel { .. } => open_err(
                ErrorCode::PORT_UNAVAILABLE,
                format!("an ISO-TP channel receiving on {rx_id} is already open on {interface}"),
            ),
            e => open_err(ErrorCode::BAD_CHANNEL_PARAMS, format!("{interface}: {e}")),
        })
    }

    fn no_interface(&self, interface: &str) -> OpenError {
        let names: Vec<&str> = self.can.iter().map(|(n, _)| n.as_str()).collect();
        open_err(
            ErrorCode::PORT_UNAVAILABLE,
            format!(
                "interface {interface} is not configured on this gateway (it offers: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ),
        )
    }

    fn open(
        &self,
        channel: u16,
        params: &ChannelParams,
        doip: &Option<Arc<Mutex<DoipClient>>>,
        open: &HashMap<u16, OpenChannel>,
        out: &mpsc::Sender<Outgoing>,
        ports: &mut Ports<P>,
    ) -> Result<OpenChannel, OpenError> {
        if channel == 0 {
            return Err(open_err(
                ErrorCode::BAD_CHANNEL_PARAMS,
                "channel 0 is reserved; use 1..=65535",
            ));
        }
        let policy = self.policy.get();
        let (tx, rx) = mpsc::channel(usize::from(policy.config.channel_queue.max(1)));
        let stop = CancellationToken::new();
        let mut isotp_task = None;
        match params {
            ChannelParams::Doip { target, .. } => {
                if let Some(m) = self.doip_map.iter().find(|m| m.address == *target) {
                    self.policy
                        .check_diag(m.isotp.tx_id.id(), m.isotp.tx_id.is_extended())?;
                    let handle = self.isotp_handle(ports, &m.interface, m.isotp.clone())?;
                    isotp_task = Some(tokio::spawn(isotp_channel(
                        channel,
                        Some(m.address),
                        handle,
                        rx,
                        out.clone(),
                        self.keepalive,
                        self.counters.clone(),
                    )));
                } else {
                    let Some(client) = doip.clone() else {
                        let mapped: Vec<String> = self
                            .doip_map
                            .iter()
                            .map(|m| format!("0x{:04X}", m.address))
                            .collect();
                        return Err(open_err(
                            ErrorCode::PORT_UNAVAILABLE,
                            format!(
                                "0x{target:04X} is not in tunnel.doip_map (mapped: {}) and this gateway has no DoIP vehicle configured (tunnel.doip_vehicle)",
                                if mapped.is_empty() {
                                    "none".to_string()
                                } else {
                                    mapped.join(", ")
                                }
                            ),
                        ));
                    };
                    tokio::spawn(doip_channel(
                        channel,
                        *target,
                        client,
                        rx,
                        out.clone(),
                        stop.clone(),
                        self.keepalive,
                        self.counters.clone(),
                    ));
                }
            }
            ChannelParams::CanMirror {
                interface,
                filters,
                fd,
                allow_tx,
            } => {
                let Some(hub) = ports.hubs.get(interface) else {
                    return Err(self.no_interface(interface));
                };
                let busy = open.values().any(|c| {
                    matches!(&c.params, ChannelParams::CanMirror { interface: i, .. } if i == interface)
                });
                if busy {
                    return Err(open_err(
                        ErrorCode::PORT_UNAVAILABLE,
                        format!("interface {interface} is already mirrored on another channel"),
                    ));
                }
                // A channel that asks for transmit opens even when the policy forbids it:
                // it is then read-only, and each frame the operator sends is refused (and
                // counted) by the policy in force at that moment.
                let tap = Arc::new(hub.subscribe_counted(
                    MIRROR_TAP_QUEUE,
                    false,
                    self.counters.mirror_dropped.clone(),
                ));
                tokio::spawn(mirror_channel(
                    channel,
                    tap,
                    filters.clone(),
                    *fd,
                    allow_tx.then(|| self.policy.clone()),
                    rx,
                    out.clone(),
                    stop.clone(),
                ));
            }
            ChannelParams::Isotp { interface, .. } => {
                let cfg =
                    isotp_config(params).map_err(|e| open_err(ErrorCode::BAD_CHANNEL_PARAMS, e))?;
                self.policy
                    .check_diag(cfg.tx_id.id(), cfg.tx_id.is_extended())?;
                let handle = self.isotp_handle(ports, interface, cfg)?;
                isotp_task = Some(tokio::spawn(isotp_channel(
                    channel,
                    None,
                    handle,
                    rx,
                    out.clone(),
                    self.keepalive,
                    self.counters.clone(),
                )));
            }
        }
        Ok(OpenChannel {
            params: params.clone(),
            input: tx,
            stop,
            isotp_task,
        })
    }
}

const DOIP_ONLY: &str = "a DoIP channel carries DoIP diagnostic-message records only";
const ISOTP_ONLY: &str = "an ISO-TP channel carries ISO-TP PDU records only";
const MIRROR_ONLY: &str = "a CAN mirror channel carries CAN frame records only";

/// The answer to a record of a kind the channel does not carry.
fn wrong_kind(channel: u16, only: &str) -> Outgoing {
    error_record(channel, ErrorCode::BAD_CHANNEL_PARAMS, only.to_string())
}

fn error_record(channel: u16, code: ErrorCode, message: String) -> Outgoing {
    Outgoing::Record {
        rec: RecordRepr {
            channel,
            flags: 0,
            body: RecordBody::Error(ErrorRecord { code, message }),
        },
        sheddable: false,
    }
}

/// One DoIP target channel: each request record is sent to the car and its final response
/// comes back as a record (in order: one request at a time, as UDS requires per target).
/// Between requests, a [`SessionGuard`] keeps a non-default session alive while the operator
/// is silent.
#[allow(clippy::too_many_arguments)]
async fn doip_channel(
    channel: u16,
    target: u16,
    client: Arc<Mutex<DoipClient>>,
    mut input: mpsc::Receiver<RecordBody>,
    out: mpsc::Sender<Outgoing>,
    stop: CancellationToken,
    keepalive: Keepalive,
    counters: Arc<GatewayCounters>,
) {
    let mut guard = SessionGuard::new(keepalive, Instant::now());
    loop {
        let due = guard.due_at();
        let body = tokio::select! {
            _ = stop.cancelled() => return,
            b = input.recv() => match b { Some(b) => b, None => return },
            _ = sleep_until_opt(due) => {
                let conn = {
                    let mut c = client.lock().await;
                    c.connection().await.cloned()
                };
                let sent = match conn {
                    Ok(conn) => conn.send(target, Bytes::from_static(&TESTER_PRESENT)).await,
                    Err(e) => Err(e),
                };
                note_keepalive(&mut guard, &counters, channel, target, sent.err());
                continue;
            }
        };
        let RecordBody::Doip(msg) = body else {
            if out.send(wrong_kind(channel, DOIP_ONLY)).await.is_err() {
                return;
            }
            continue;
        };
        guard.on_request(Instant::now());
        if msg.target != target {
            tracing::debug!(
                channel,
                expected = target,
                got = msg.target,
                "DoIP record target differs from the channel's; using the channel's"
            );
        }
        // Take a live connection under the lock, then run the request without it, so
        // channels to different targets run concurrently on one connection.
        let conn = {
            let mut c = client.lock().await;
            c.connection().await.cloned()
        };
        let result = match conn {
            Ok(conn) if suppresses_response(&msg.data) => {
                conn.send(target, msg.data.clone()).await.map(|_| None)
            }
            Ok(conn) => conn.request(target, msg.data.clone()).await.map(Some),
            Err(e) => Err(e),
        };
        let o = match result {
            Ok(None) => continue,
            Ok(Some(data)) => {
                guard.on_response(&data);
                Outgoing::Record {
                    rec: RecordRepr {
                        channel,
                        flags: 0,
                        body: RecordBody::Doip(DoipMessage {
                            source: target,
                            target: msg.source,
                            data,
                            timestamp: now_ns(),
                        }),
                    },
                    sheddable: false,
                }
            }
            Err(e) => {
                if matches!(
                    e,
                    crate::vehicle::doip::ClientError::Closed(_)
                        | crate::vehicle::doip::ClientError::Inactive(_)
                ) {
                    client.lock().await.disconnect();
                }
                let code = match e {
                    crate::vehicle::doip::ClientError::DiagNack { .. } => ErrorCode::DOIP_NACK,
                    _ => ErrorCode::TARGET_UNREACHABLE,
                };
                error_record(channel, code, e.to_string())
            }
        };
        if out.send(o).await.is_err() {
            return;
        }
    }
}

/// Sleep until `at`; never wakes for `None`.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Book-keeping after a local tester-present: the guard, the counter, and a log line when
/// the operator's silence starts being bridged or when sending failed.
fn note_keepalive<E: std::fmt::Display>(
    guard: &mut SessionGuard,
    counters: &GatewayCounters,
    channel: u16,
    target: u16,
    err: Option<E>,
) {
    let first = guard.last_local.is_none();
    guard.on_sent(Instant::now());
    counters.keepalives.fetch_add(1, Ordering::Relaxed);
    match err {
        None if first => tracing::info!(
            channel,
            "operator silent: keeping ECU 0x{target:04X}'s diagnostic session alive locally (3E 80)"
        ),
        None => tracing::debug!(channel, "local tester-present to 0x{target:04X}"),
        Some(e) => tracing::warn!(
            channel,
            "local tester-present to 0x{target:04X} failed: {e}"
        ),
    }
    if guard.due_at().is_none() {
        tracing::warn!(
            channel,
            "operator silent for {:?}: local tester-present to 0x{target:04X} stops (tunnel.keepalive_for_ms); the ECU will fall back to its default session",
            guard.cfg.bound
        );
    }
}

/// One ISO-TP channel: PDU records (or, for an ECU of the address map, DoIP diagnostic
/// messages to `doip_address`) go out on the bus; every PDU the ECU sends comes back as a
/// record (response-pending answers included, so the operator's tester sees them).
#[allow(clippy::too_many_arguments)]
async fn isotp_channel(
    channel: u16,
    doip_address: Option<u16>,
    handle: IsoTpHandle,
    mut input: mpsc::Receiver<RecordBody>,
    out: mpsc::Sender<Outgoing>,
    keepalive: Keepalive,
    counters: Arc<GatewayCounters>,
) {
    let mut guard = SessionGuard::new(keepalive, Instant::now());
    // The tester address the last request came from (answers go back to it).
    let mut requester = 0x0E00u16;
    let ecu = doip_address.unwrap_or_else(|| handle.addr().tx_id.id() as u16);
    // A mapped ECU's request waiting for its answer: (service id, deadline). The gateway
    // enforces P2/P2* itself, so a module that never answers is reported to the tester at
    // once instead of looking busy (the operator answers the tester's pending meanwhile).
    let mut awaiting: Option<(u8, Instant)> = None;
    loop {
        let due = guard.due_at();
        let answer_by = awaiting.map(|(_, at)| at);
        let o = tokio::select! {
            b = input.recv() => {
                let Some(body) = b else { return };
                let data = match (doip_address, body) {
                    (Some(_), RecordBody::Doip(m)) => {
                        requester = m.source;
                        m.data
                    }
                    (None, RecordBody::IsoTp(p)) => p.data,
                    (mapped, _) => {
                        let only = if mapped.is_some() { DOIP_ONLY } else { ISOTP_ONLY };
                        if out.send(wrong_kind(channel, only)).await.is_err() { return; }
                        continue;
                    }
                };
                guard.on_request(Instant::now());
                let expects = doip_address.is_some() && !data.is_empty() && !suppresses_response(&data);
                let sid = data.first().copied().unwrap_or(0);
                match handle.send(data).await {
                    Ok(()) => {
                        awaiting = expects.then(|| (sid, Instant::now() + P2_BOUND));
                        continue;
                    }
                    Err(IsoTpError::Closed) => closed(channel, "the CAN port closed"),
                    Err(e) => error_record(channel, isotp_error_code(&e), e.to_string()),
                }
            }
            r = handle.recv_pdu() => match r {
                Ok(pdu) => {
                    guard.on_response(&pdu.data);
                    if let Some((sid, _)) = awaiting {
                        awaiting = if pdu.data[..] == [0x7F, sid, 0x78] {
                            Some((sid, Instant::now() + P2_STAR_BOUND))
                        } else {
                            None
                        };
                    }
                    let timestamp = if pdu.timestamp.0 == 0 { now_ns() } else { pdu.timestamp };
                    let body = match doip_address {
                        Some(source) => RecordBody::Doip(DoipMessage {
                            source,
                            target: requester,
                            data: pdu.data,
                            timestamp,
                        }),
                        None => RecordBody::IsoTp(PduRecord { timestamp, data: pdu.data }),
                    };
                    Outgoing::Record { rec: RecordRepr { channel, flags: 0, body }, sheddable: false }
                }
                Err(IsoTpError::Closed) => closed(channel, "the CAN port closed"),
                Err(e) => error_record(channel, isotp_error_code(&e), e.to_string()),
            },
            _ = sleep_until_opt(due) => {
                let sent = handle.send(Bytes::from_static(&TESTER_PRESENT)).await;
                note_keepalive(&mut guard, &counters, channel, ecu, sent.err());
                continue;
            }
            _ = sleep_until_opt(answer_by) => {
                let sid = awaiting.take().map_or(0, |(sid, _)| sid);
                error_record(
                    channel,
                    ErrorCode::ISOTP_TIMEOUT,
                    format!(
                        "ECU 0x{ecu:04X} did not answer service 0x{sid:02X} within P2 ({} ms) or, after response-pending, P2* ({} ms)",
                        P2_BOUND.as_millis(),
                        P2_STAR_BOUND.as_millis()
                    ),
                )
            }
        };
        let end = matches!(o, Outgoing::Control(Control::Closed { .. }));
        if out.send(o).await.is_err() || end {
            return;
        }
    }
}

fn closed(channel: u16, reason: &str) -> Outgoing {
    Outgoing::Control(Control::Closed {
        channel,
        reason: Some(reason.to_string()),
    })
}

/// One raw CAN mirror channel: the port's frames (filtered) go out as sheddable records;
/// frames from the operator go on the bus when the channel was opened with `allow_tx`
/// (`Some`) and the gateway's policy allows that frame (checked per frame, with the policy
/// in force: a reload that turns transmit off stops open channels too).
#[allow(clippy::too_many_arguments)]
async fn mirror_channel<P: CanPort>(
    channel: u16,
    port: Arc<Tap<P>>,
    filters: Vec<IdFilter>,
    fd: bool,
    allow_tx: Option<Arc<PolicyHandle>>,
    mut input: mpsc::Receiver<RecordBody>,
    out: mpsc::Sender<Outgoing>,
    stop: CancellationToken,
) {
    let tx_port = port.clone();
    let tx_out = out.clone();
    let tx_stop = stop.clone();
    // Transmit in its own task so a slow bus never stalls mirroring.
    let tx_task = tokio::spawn(async move {
        let mut gate = allow_tx.map(|p| RawTxGate::new(p, std::time::Instant::now()));
        loop {
            // Biased: once stopped, no further frame is taken (each could wait a transmit
            // deadline), so shutdown takes at most one.
            let body = tokio::select! {
                biased;
                _ = tx_stop.cancelled() => return,
                b = input.recv() => match b { Some(b) => b, None => return },
            };
            let frame = match body {
                RecordBody::Can(f) => CanAnyFrame::Classic(f),
                RecordBody::CanFd(f) => CanAnyFrame::Fd(f),
                _ => {
                    if tx_out.send(wrong_kind(channel, MIRROR_ONLY)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let verdict = match gate.as_mut() {
                None => Err((
                    ErrorCode::BAD_CHANNEL_PARAMS,
                    "this channel was opened without allow_tx: frame not sent".to_string(),
                )),
                Some(g) => g
                    .check(
                        frame.id().id(),
                        frame.id().is_extended(),
                        std::time::Instant::now(),
                    )
                    .map_err(|r| (ErrorCode::POLICY_REFUSED, r.to_string())),
            };
            if let Err((code, why)) = verdict {
                if tx_out.send(error_record(channel, code, why)).await.is_err() {
                    return;
                }
                continue;
            }
            if let Err(e) = tx_port.send(frame).await {
                let code = match e {
                    crate::vehicle::can::CanError::BusOff(_) => ErrorCode::CAN_BUS_OFF,
                    _ => ErrorCode::SEND_FAILED,
                };
                if tx_out
                    .send(error_record(channel, code, e.to_string()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    // Frames are taken and forwarded in runs (one wake-up and one queue reservation per
    // run, not per frame).
    let mut frames: Vec<CanAnyFrame> = Vec::with_capacity(MIRROR_RUN);
    'run: loop {
        let n = tokio::select! {
            _ = stop.cancelled() => break,
            n = port.recv_many(&mut frames, MIRROR_RUN) => n,
        };
        if n == 0 {
            let _ = out
                .send(Outgoing::Control(Control::Closed {
                    channel,
                    reason: Some(format!("CAN port {} closed", port.name())),
                }))
                .await;
            break;
        }
        frames.retain(|f| (fd || !f.is_fd()) && passes(&filters, f));
        if frames.is_empty() {
            continue;
        }
        let Ok(permits) = out.reserve_many(frames.len()).await else {
            break 'run;
        };
        for (frame, permit) in frames.drain(..).zip(permits) {
            let ts = if frame.timestamp().0 == 0 {
                now_ns()
            } else {
                frame.timestamp()
            };
            let body = match frame.with_timestamp(ts) {
                CanAnyFrame::Classic(f) => RecordBody::Can(f),
                CanAnyFrame::Fd(f) => RecordBody::CanFd(f),
            };
            permit.send(Outgoing::Record {
                rec: RecordRepr {
                    channel,
                    flags: 0,
                    body,
                },
                sheddable: true,
            });
        }
    }
    stop.cancel();
    let _ = tx_task.await;
}

/// Connect the gateway's side of a session to the relay and serve it until `shutdown`
/// (reconnecting as needed). Returns when the session ends for good.
pub async fn run<P: CanPort>(
    client_cfg: ClientConfig,
    session_id: &str,
    token: &Secret,
    gateway: Gateway<P>,
    shutdown: CancellationToken,
) -> Result<super::SessionStats, client::ClientError> {
    let instance = random_instance();
    let scfg = SessionConfig::new(
        Role::Gateway,
        session_id,
        Token(token.expose().to_string()),
        instance,
    );
    let session = Session::new(scfg, std::time::Instant::now());
    let (out_tx, out_rx) = mpsc::channel(1024);
    let (ev_tx, ev_rx) = mpsc::channel(1024);
    let stop = shutdown.child_token();
    let serve = tokio::spawn(gateway.serve(ev_rx, out_tx, stop.clone()));
    let r = client::run(client_cfg, session, out_rx, ev_tx, shutdown).await;
    stop.cancel();
    let _ = serve.await;
    r
}

/// Why the `[tunnel]` section could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "tunnel.can_interfaces names `{0}`, which is not the name of a [[can]] entry; add one or remove it"
    )]
    UnknownInterface(String),
    #[error("tunnel.{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("tunnel.can_interfaces `{name}`: {source}")]
    Can {
        name: String,
        #[source]
        source: crate::vehicle::can::CanError,
    },
    #[error(transparent)]
    Client(#[from] client::ClientError),
}

/// Build the gateway side of a session from the configuration: `[tunnel]`, the `[doip]`
/// tester settings and the already opened vehicle ports named by `tunnel.can_interfaces`.
pub fn build<P: CanPort>(
    tunnel: &TunnelConfig,
    doip: &DoipClientConfig,
    ports: Vec<(String, Arc<P>)>,
) -> Result<Gateway<P>, StartError> {
    let names: Vec<&str> = ports.iter().map(|(n, _)| n.as_str()).collect();
    for (key, message) in tunnel.validate(&names) {
        if key.starts_with("can_interfaces") {
            continue; // reported below, with the interface's name
        }
        return Err(StartError::Invalid { key, message });
    }
    if let Some(missing) = tunnel
        .can_interfaces
        .iter()
        .find(|n| !names.contains(&n.as_str()))
    {
        return Err(StartError::UnknownInterface(missing.clone()));
    }
    let doip_map = tunnel
        .doip_map
        .iter()
        .map(|m| m.resolve())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|message| StartError::Invalid {
            key: "doip_map".into(),
            message,
        })?;
    let ports = ports
        .into_iter()
        .filter(|(n, _)| tunnel.can_interfaces.contains(n))
        .collect();
    let mut gw = Gateway::new(
        tunnel.doip_vehicle.map(|a| (a, doip.clone())),
        ports,
        tunnel.policy.clone(),
    );
    gw.doip_map = doip_map;
    gw.keepalive = Keepalive {
        every: Duration::from_millis(tunnel.keepalive_every_ms),
        bound: Duration::from_millis(tunnel.keepalive_for_ms),
    };
    Ok(gw)
}

/// Open the `[[can]]` interfaces named by `tunnel.can_interfaces`.
pub async fn open_ports(
    tunnel: &TunnelConfig,
    can: &[crate::vehicle::can::CanInterfaceConfig],
) -> Result<Vec<(String, Arc<crate::vehicle::can::AnyCanPort>)>, StartError> {
    let mut ports = Vec::new();
    for name in &tunnel.can_interfaces {
        let cfg = can
            .iter()
            .find(|c| &c.name == name)
            .ok_or_else(|| StartError::UnknownInterface(name.clone()))?;
        let port = crate::vehicle::can::open_port_with(cfg)
            .await
            .map_err(|source| StartError::Can {
                name: name.clone(),
                source,
            })?;
        ports.push((name.clone(), Arc::new(port)));
    }
    Ok(ports)
}

/// Run a manual-mode session as the configuration says (`[tunnel] session` and `token`),
/// opening the interfaces itself. TLS for `wss://` comes from `tls`.
pub async fn run_from_config(
    tunnel: &TunnelConfig,
    doip: &DoipClientConfig,
    can: &[crate::vehicle::can::CanInterfaceConfig],
    tls: Option<Arc<rustls::ClientConfig>>,
    shutdown: CancellationToken,
) -> Result<super::SessionStats, StartError> {
    let (Some(session), Some(token)) = (&tunnel.session, &tunnel.token) else {
        return Err(StartError::Invalid {
            key: "session".into(),
            message: "run_from_config needs manual mode (tunnel.session and tunnel.token)".into(),
        });
    };
    let ports = open_ports(tunnel, can).await?;
    let gw = build(tunnel, doip, ports)?;
    let mut cc = ClientConfig::new(tunnel.relay_url.clone());
    cc.tls = tls;
    Ok(run(cc, session, token, gw, shutdown).await?)
}

/// A fresh 64-bit stream instance id (time and address entropy; not security relevant).
pub fn random_instance() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(now_ns().0 as u128);
    h.finish() | 1
}

/// A classic CAN frame record (helper for tests and the operator endpoint).
pub fn can_record(channel: u16, frame: CanFrame) -> RecordRepr {
    RecordRepr {
        channel,
        flags: 0,
        body: RecordBody::Can(frame),
    }
}

/// A DoIP diagnostic-message record.
pub fn doip_record(channel: u16, source: u16, target: u16, data: Bytes) -> RecordRepr {
    RecordRepr {
        channel,
        flags: 0,
        body: RecordBody::Doip(DoipMessage {
            source,
            target,
            data,
            timestamp: now_ns(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::frame::CanId;

    fn frame(id: u16) -> CanAnyFrame {
        CanAnyFrame::Classic(CanFrame::new(CanId::standard(id).unwrap(), &[1]).unwrap())
    }

    #[test]
    fn filters_match_by_mask_and_id_type() {
        let f = [IdFilter {
            id: 0x7E8,
            mask: 0x7F8,
            extended: false,
        }];
        assert!(passes(&f, &frame(0x7E8)));
        assert!(passes(&f, &frame(0x7EF)));
        assert!(!passes(&f, &frame(0x7DF)));
        assert!(passes(&[], &frame(0x123)));
        let ext = [IdFilter {
            id: 0x7E8,
            mask: 0x7F8,
            extended: true,
        }];
        assert!(!passes(&ext, &frame(0x7E8)));
    }

    #[test]
    fn suppress_positive_response_detection() {
        assert!(suppresses_response(&[0x3E, 0x80]));
        assert!(!suppresses_response(&[0x3E, 0x00]));
        assert!(!suppresses_response(&[0x22, 0xF1, 0x90]));
        assert!(!suppresses_response(&[0x36, 0x81, 0x00]));
        assert!(!suppresses_response(&[]));
    }

    #[test]
    fn tunnel_config_parses_and_redacts_token() {
        let c: TunnelConfig = toml::from_str(
            r#"relay_url = "wss://relay.example:8443/"
session = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"
token = "gw-secret"
doip_vehicle = "192.168.0.10:13400"
can_interfaces = ["can0"]"#,
        )
        .unwrap();
        assert_eq!(c.token.as_ref().unwrap().expose(), "gw-secret");
        assert_eq!(c.mode(), TunnelMode::Manual);
        assert_eq!(c.vin_check, VinCheck::Refuse);
        assert!(!c.policy.raw_tx, "raw transmit is off by default");
        assert!(!format!("{c:?}").contains("gw-secret"));
        assert!(
            toml::from_str::<TunnelConfig>(
                "relay_url = \"x\"\nsession = \"s\"\ntoken = \"t\"\nbogus = 1"
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn config_naming_an_unknown_can_interface_is_refused() {
        let t = TunnelConfig {
            relay_url: "ws://127.0.0.1:1/".into(),
            session: Some("s".into()),
            token: Some(Secret::new("t")),
            vin_check: VinCheck::Refuse,
            doip_vehicle: None,
            can_interfaces: vec!["can9".into()],
            policy: PolicyConfig::default(),
            doip_map: vec![],
            keepalive_every_ms: 2_000,
            keepalive_for_ms: 60_000,
        };
        let e = run_from_config(
            &t,
            &DoipClientConfig::default(),
            &[],
            None,
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&e, StartError::UnknownInterface(n) if n == "can9"),
            "{e}"
        );
        assert!(e.to_string().contains("[[can]]"));
    }

    #[test]
    fn session_guard_keeps_non_default_sessions_alive_for_a_bounded_time() {
        let t0 = Instant::now();
        let ka = Keepalive {
            every: Duration::from_secs(2),
            bound: Duration::from_secs(7),
        };
        let mut g = SessionGuard::new(ka, t0);
        // Default session: nothing to keep alive.
        g.on_request(t0);
        g.on_response(&[0x50, 0x01, 0, 0x32, 0x01, 0xF4]);
        assert_eq!(g.due_at(), None);
        // Programming session: due 2 s after the last request, then every 2 s, until 7 s.
        g.on_response(&[0x50, 0x02, 0, 0x32, 0x01, 0xF4]);
        assert!(g.non_default());
        assert_eq!(g.due_at(), Some(t0 + Duration::from_secs(2)));
        g.on_sent(t0 + Duration::from_secs(2));
        assert_eq!(g.due_at(), Some(t0 + Duration::from_secs(4)));
        g.on_sent(t0 + Duration::from_secs(4));
        g.on_sent(t0 + Duration::from_secs(6));
        assert_eq!(g.due_at(), None, "bounded: 8 s is past the 7 s bound");
        assert_eq!(g.sent(), 3);
        // A new request from the operator restarts the clock.
        let t1 = t0 + Duration::from_secs(10);
        g.on_request(t1);
        assert_eq!(g.due_at(), Some(t1 + Duration::from_secs(2)));
        // A negative answer changes nothing; a positive ECUReset means default session.
        g.on_response(&[0x7F, 0x10, 0x22]);
        assert!(g.non_default());
        g.on_response(&[0x51, 0x01]);
        assert_eq!(g.due_at(), None);
        // Suppressed-positive session bit does not confuse it; disabled keep-alive: never.
        g.on_response(&[0x50, 0x83]);
        assert!(g.non_default());
        let mut off = SessionGuard::new(
            Keepalive {
                every: Duration::ZERO,
                bound: Duration::from_secs(7),
            },
            t0,
        );
        off.on_response(&[0x50, 0x03]);
        assert_eq!(off.due_at(), None);
    }

    #[test]
    fn isotp_parameters_are_checked_with_clear_errors() {
        let p = |tx_id, rx_id, extended_ids, stmin_us| ChannelParams::Isotp {
            interface: "can0".into(),
            tx_id,
            rx_id,
            extended_ids,
            addressing: crate::wire::tunnel::Addressing::Normal,
            tx_ext: None,
            rx_ext: None,
            bs: Some(8),
            stmin_us: Some(stmin_us),
            padding: Some(0xCC),
            fd: false,
        };
        let c = isotp_config(&p(0x7E0, 0x7E8, false, 500)).unwrap();
        assert_eq!(c.block_size, 8);
        assert_eq!(c.st_min.duration(), Duration::from_micros(500));
        assert_eq!(c.padding, Some(0xCC));
        let e = isotp_config(&p(0x800, 0x7E8, false, 0)).unwrap_err();
        assert!(
            e.contains("tx_id 0x800") && e.contains("extended_ids"),
            "{e}"
        );
        assert!(isotp_config(&p(0x18DA10F1, 0x18DAF110, true, 0)).is_ok());
        let e = isotp_config(&p(0x7E0, 0x7E8, false, 200_000)).unwrap_err();
        assert!(e.contains("127 ms"), "{e}");
        let e = isotp_config(&p(0x7E0, 0x7E0, false, 0)).unwrap_err();
        assert!(e.contains("both 0x7E0"), "{e}");
        let mut ext = p(0x7E0, 0x7E8, false, 0);
        if let ChannelParams::Isotp { addressing, .. } = &mut ext {
            *addressing = crate::wire::tunnel::Addressing::Extended;
        }
        assert!(
            isotp_config(&ext)
                .unwrap_err()
                .contains("tx_ext and rx_ext")
        );
    }

    #[test]
    fn tunnel_section_validation_names_every_problem() {
        let entry = |address, interface: &str, tx_id| DoipMapEntry {
            address,
            interface: interface.into(),
            tx_id,
            rx_id: 0x7E8,
            extended_ids: false,
            fd: false,
            padding: None,
            bs: 0,
            stmin_us: 0,
        };
        let t = TunnelConfig {
            relay_url: "ws://127.0.0.1:1/".into(),
            session: Some("s".into()),
            token: Some(Secret::new("t")),
            vin_check: VinCheck::Refuse,
            doip_vehicle: None,
            can_interfaces: vec!["obd".into(), "can9".into()],
            policy: PolicyConfig::default(),
            doip_map: vec![
                entry(0x1000, "obd", 0x7E0),
                entry(0x1000, "other", 0x7E1),
                entry(0x1001, "obd", 0x900),
            ],
            keepalive_every_ms: 10,
            keepalive_for_ms: 60_000,
        };
        let issues = t.validate(&["obd"]);
        let keys: Vec<&str> = issues.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "can_interfaces[1]",
                "doip_map[1].address",
                "doip_map[1].interface",
                "doip_map[2]",
                "doip_map[2].tx_id",
                "keepalive_every_ms"
            ],
            "{issues:?}"
        );
        assert!(issues[3].1.contains("0x1001") && issues[3].1.contains("tx_id 0x900"));
    }

    /// Close `channel` and expect the gateway's `closed`.
    async fn close_channel(
        tx: &mpsc::Sender<Event>,
        rx: &mut mpsc::Receiver<Outgoing>,
        channel: u16,
    ) {
        let o = answer(tx, rx, Event::Control(Control::Close { channel })).await;
        assert!(
            matches!(o, Outgoing::Control(Control::Closed { channel: c, .. }) if c == channel),
            "{o:?}"
        );
    }

    async fn answer(
        tx: &mpsc::Sender<Event>,
        rx: &mut mpsc::Receiver<Outgoing>,
        ev: Event,
    ) -> Outgoing {
        tx.send(ev).await.unwrap();
        rx.recv().await.unwrap()
    }

    #[tokio::test]
    async fn turning_transmit_off_stops_open_channels_at_once() {
        let bus = crate::vehicle::can::vbus::VirtualBus::new("can0");
        let car = bus.port();
        let gw = Gateway::new(
            None,
            vec![("can0".to_string(), Arc::new(bus.port()))],
            PolicyConfig::lab(),
        );
        let policy = gw.policy.clone();
        let (ev_tx, ev_rx) = mpsc::channel(8);
        let (out_tx, mut out_rx) = mpsc::channel(8);
        let stop = CancellationToken::new();
        let task = tokio::spawn(gw.serve(ev_rx, out_tx, stop.clone()));
        let params = ChannelParams::CanMirror {
            interface: "can0".into(),
            filters: vec![],
            fd: false,
            allow_tx: true,
        };
        let o = answer(
            &ev_tx,
            &mut out_rx,
            Event::Control(Control::Open { channel: 1, params }),
        )
        .await;
        assert!(
            matches!(o, Outgoing::Control(Control::Opened { channel: 1 })),
            "{o:?}"
        );
        let frame = |b: u8| {
            Event::Record(can_record(
                1,
                CanFrame::new(CanId::from_raw(0x123), &[b]).unwrap(),
            ))
        };
        // Allowed: the car sees the frame.
        ev_tx.send(frame(1)).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), car.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.data(), [1]);
        // The policy changes (a reload): the next frame is refused, and nothing reaches the car.
        policy.set(PolicyConfig::default());
        ev_tx.send(frame(2)).await.unwrap();
        let o = tokio::time::timeout(Duration::from_secs(5), out_rx.recv())
            .await
            .unwrap()
            .unwrap();
        match o {
            Outgoing::Record { rec, .. } => match rec.body {
                RecordBody::Error(e) => {
                    assert_eq!(e.code, ErrorCode::POLICY_REFUSED);
                    assert!(e.message.contains("tunnel.policy.raw_tx"), "{}", e.message);
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(200), car.recv())
                .await
                .is_err(),
            "a refused frame reached the bus"
        );
        assert_eq!(policy.refusals()[0], ("raw_tx", 1));
        stop.cancel();
        let _ = task.await;
    }

    #[tokio::test]
    async fn refusals_name_the_channel_and_the_reason() {
        let bus = crate::vehicle::can::vbus::VirtualBus::new("can0");
        let gw = Gateway::new(
            None,
            vec![("can0".to_string(), Arc::new(bus.port()))],
            PolicyConfig {
                max_channels: 3,
                ..Default::default()
            },
        );
        let (ev_tx, ev_rx) = mpsc::channel(8);
        let (out_tx, mut out_rx) = mpsc::channel(8);
        let stop = CancellationToken::new();
        let task = tokio::spawn(gw.serve(ev_rx, out_tx, stop.clone()));
        let open = |channel, params| Event::Control(Control::Open { channel, params });
        let mirror = |interface: &str, allow_tx| ChannelParams::CanMirror {
            interface: interface.into(),
            filters: vec![],
            fd: false,
            allow_tx,
        };
        let expect_error = |o: Outgoing, code: ErrorCode, ch: u16, text: &str| match o {
            Outgoing::Control(Control::Error {
                code: c,
                message,
                channel,
            }) => {
                assert_eq!((c, channel), (code, Some(ch)), "{message}");
                assert!(message.contains(text), "{message}");
            }
            other => panic!("{other:?}"),
        };
        let doip = ChannelParams::Doip {
            target: 0x1000,
            source: None,
        };
        let o = answer(&ev_tx, &mut out_rx, open(1, doip)).await;
        expect_error(o, ErrorCode::PORT_UNAVAILABLE, 1, "doip_vehicle");
        // (the message also says the address is not mapped)
        let o = answer(&ev_tx, &mut out_rx, open(2, mirror("can1", false))).await;
        expect_error(o, ErrorCode::PORT_UNAVAILABLE, 2, "can0");
        // Transmit asked while the policy forbids it: the mirror opens read-only, and a
        // frame sent on it is refused by the rule.
        let o = answer(&ev_tx, &mut out_rx, open(3, mirror("can0", true))).await;
        assert!(
            matches!(o, Outgoing::Control(Control::Opened { channel: 3 })),
            "{o:?}"
        );
        let rec = can_record(
            3,
            CanFrame::new(CanId::standard(0x7E0).unwrap(), &[2, 0x10, 3]).unwrap(),
        );
        match answer(&ev_tx, &mut out_rx, Event::Record(rec)).await {
            Outgoing::Record {
                rec:
                    RecordRepr {
                        channel: 3,
                        body: RecordBody::Error(e),
                        ..
                    },
                ..
            } => {
                assert_eq!(e.code, ErrorCode::POLICY_REFUSED);
                assert!(e.message.contains("tunnel.policy.raw_tx"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
        close_channel(&ev_tx, &mut out_rx, 3).await;
        let o = answer(&ev_tx, &mut out_rx, open(0, mirror("can0", false))).await;
        expect_error(o, ErrorCode::BAD_CHANNEL_PARAMS, 0, "reserved");
        // A good open, idempotent; other parameters on the same channel are refused.
        let o = answer(&ev_tx, &mut out_rx, open(4, mirror("can0", false))).await;
        assert!(
            matches!(o, Outgoing::Control(Control::Opened { channel: 4 })),
            "{o:?}"
        );
        let o = answer(&ev_tx, &mut out_rx, open(4, mirror("can0", false))).await;
        assert!(
            matches!(o, Outgoing::Control(Control::Opened { channel: 4 })),
            "{o:?}"
        );
        let o = answer(&ev_tx, &mut out_rx, open(4, mirror("can0", true))).await;
        expect_error(o, ErrorCode::CHANNEL_EXISTS, 4, "other parameters");
        // A second mirror on the same interface is refused.
        let o = answer(&ev_tx, &mut out_rx, open(5, mirror("can0", false))).await;
        expect_error(o, ErrorCode::PORT_UNAVAILABLE, 5, "already mirrored");
        // ISO-TP: bad ids, an unknown interface, and a second channel on the same rx id.
        let isotp = |interface: &str, tx_id| ChannelParams::Isotp {
            interface: interface.into(),
            tx_id,
            rx_id: 0x7E8,
            extended_ids: false,
            addressing: crate::wire::tunnel::Addressing::Normal,
            tx_ext: None,
            rx_ext: None,
            bs: None,
            stmin_us: None,
            padding: None,
            fd: false,
        };
        let o = answer(&ev_tx, &mut out_rx, open(10, isotp("can0", 0xFFFF))).await;
        expect_error(o, ErrorCode::BAD_CHANNEL_PARAMS, 10, "tx_id 0xFFFF");
        // An ISO-TP transmit id outside the diagnostic ids.
        let o = answer(&ev_tx, &mut out_rx, open(14, isotp("can0", 0x123))).await;
        expect_error(o, ErrorCode::POLICY_REFUSED, 14, "diag_ids");
        let o = answer(&ev_tx, &mut out_rx, open(11, isotp("can3", 0x7E0))).await;
        expect_error(o, ErrorCode::PORT_UNAVAILABLE, 11, "it offers: can0");
        let o = answer(&ev_tx, &mut out_rx, open(12, isotp("can0", 0x7E0))).await;
        assert!(
            matches!(o, Outgoing::Control(Control::Opened { channel: 12 })),
            "{o:?}"
        );
        let o = answer(&ev_tx, &mut out_rx, open(13, isotp("can0", 0x7E1))).await;
        expect_error(o, ErrorCode::PORT_UNAVAILABLE, 13, "already open");
        // Closing frees the ids at once.
        close_channel(&ev_tx, &mut out_rx, 12).await;
        let o = answer(&ev_tx, &mut out_rx, open(13, isotp("can0", 0x7E1))).await;
        assert!(
            matches!(o, Outgoing::Control(Control::Opened { channel: 13 })),
            "{o:?}"
        );
        // The channel cap (3): a third channel opens, a fourth is refused by the rule.
        let mut third = isotp("can0", 0x7E2);
        if let ChannelParams::Isotp { rx_id, .. } = &mut third {
            *rx_id = 0x7EA;
        }
        let o = answer(&ev_tx, &mut out_rx, open(21, third)).await;
        assert!(
            matches!(o, Outgoing::Control(Control::Opened { channel: 21 })),
            "{o:?}"
        );
        let o = answer(&ev_tx, &mut out_rx, open(22, mirror("can0", false))).await;
        expect_error(o, ErrorCode::POLICY_REFUSED, 22, "max_channels");
        close_channel(&ev_tx, &mut out_rx, 21).await;
        // A record of the wrong kind on an ISO-TP channel.
        let rec = can_record(
            13,
            CanFrame::new(CanId::standard(0x1).unwrap(), &[]).unwrap(),
        );
        let o = answer(&ev_tx, &mut out_rx, Event::Record(rec)).await;
        match o {
            Outgoing::Record {
                rec:
                    RecordRepr {
                        channel: 13,
                        body: RecordBody::Error(e),
                        ..
                    },
                ..
            } => {
                assert_eq!(e.code, ErrorCode::BAD_CHANNEL_PARAMS);
                assert!(
                    e.message.contains("ISO-TP PDU records only"),
                    "{}",
                    e.message
                );
            }
            other => panic!("{other:?}"),
        }
        // A record for a channel that is not open.
        let rec = can_record(
            9,
            CanFrame::new(CanId::standard(0x1).unwrap(), &[]).unwrap(),
        );
        let o = answer(&ev_tx, &mut out_rx, Event::Record(rec)).await;
        expect_error(o, ErrorCode::UNKNOWN_CHANNEL, 9, "not open");
        // A frame on a channel without allow_tx is answered with an error record.
        let rec = can_record(
            4,
            CanFrame::new(CanId::standard(0x1).unwrap(), &[]).unwrap(),
        );
        let o = answer(&ev_tx, &mut out_rx, Event::Record(rec)).await;
        match o {
            Outgoing::Record {
                rec:
                    RecordRepr {
                        channel: 4,
                        body: RecordBody::Error(e),
                        ..
                    },
                ..
            } => assert_eq!(e.code, ErrorCode::BAD_CHANNEL_PARAMS),
            other => panic!("{other:?}"),
        }
        close_channel(&ev_tx, &mut out_rx, 4).await;
        stop.cancel();
        task.await.unwrap();
    }
}
