//! The operator endpoint's side of a tunnel session: a remote car presented through local
//! standard interfaces.
//!
//! Owns: the channel table of the operator's session ([`Remote`]: opening channels and
//! waiting for their answers, dispatching records to their local users), the DoIP
//! [`DiagHandler`] that forwards each request through a DoIP channel and relays the
//! responses ([`TunnelDiag`]), the socketcand [`BusProvider`] whose raw mode is a raw CAN
//! mirror channel ([`TunnelBuses`]), and `obdgw operator` ([`OperatorArgs`], [`run_operator`]).
//!
//! Does not own: the session and websocket (`crate::tunnel`), the DoIP entity or the
//! socketcand protocol (`crate::vehicle::doip::entity`, `super::socketcand`).
//!
//! Response pending: the gateway forwards only final responses, so while a request is
//! outstanding longer than [`DiagTiming::pending_after`] this side answers `7F sid 78` to the
//! local tester itself, repeated every [`DiagTiming::pending_every`] (this also bridges a WAN
//! stall while the session resumes).

use super::socketcand::{self, BusProvider, PduAccess, RawAccess};
use crate::router::frame::Timestamp;
use crate::tunnel::client::{self, ClientConfig, Outgoing};
use crate::tunnel::gateway::{doip_record, now_ns, random_instance, suppresses_response};
use crate::tunnel::session::{Event, Session, SessionConfig};
use crate::vehicle::can::CanAnyFrame;
use crate::vehicle::doip::client_core::is_response_pending;
use crate::vehicle::doip::entity::{DiagHandler, DiagRequest, Entity, EntityConfig, Replies};
use crate::wire::socketcand::IsoTpConf;
use crate::wire::tunnel::{
    ChannelParams, Control, ErrorCode, PduRecord, RecordBody, RecordRepr, Role, Token,
};
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Depth of a raw mirror's queue toward its socketcand client (frames beyond it are shed
/// and counted in [`Remote::shed`]).
const MIRROR_QUEUE: usize = 8192;
/// Depth of a DoIP channel's response queue.
const DOIP_QUEUE: usize = 16;
/// How long an `open` may wait for the gateway's answer (the session may be resuming).
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
enum Sink {
    Doip(mpsc::Sender<RecordBody>),
    Mirror(mpsc::Sender<(CanAnyFrame, Timestamp)>),
    Pdu(mpsc::Sender<Result<(Bytes, Timestamp), String>>),
}

/// Depth of an ISO-TP channel's PDU queue toward its socketcand client.
const PDU_QUEUE: usize = 64;

#[derive(Default)]
struct Table {
    sinks: HashMap<u16, Sink>,
    opens: HashMap<u16, oneshot::Sender<Result<(), String>>>,
}

/// The operator's view of one tunnel session: channels to the remote gateway.
pub struct Remote {
    out: mpsc::Sender<Outgoing>,
    table: Mutex<Table>,
    next_channel: AtomicU16,
    shed: AtomicU64,
    ups: AtomicU64,
    up: tokio::sync::watch::Sender<bool>,
}

impl Remote {
    /// A remote whose records and requests go to `out` (the session driver's input).
    pub fn new(out: mpsc::Sender<Outgoing>) -> Arc<Remote> {
        Arc::new(Remote {
            out,
            table: Mutex::new(Table::default()),
            next_channel: AtomicU16::new(1),
            shed: AtomicU64::new(0),
            ups: AtomicU64::new(0),
            up: tokio::sync::watch::channel(false).0,
        })
    }

    /// Mirror frames dropped because a local client did not keep up.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// How many times the session came up (1 + resumes after lost connections).
    pub fn ups(&self) -> u64 {
        self.ups.load(Ordering::Relaxed)
    }

    /// Channels with a local user now (DoIP targets and raw mirrors).
    pub fn channels(&self) -> usize {
        self.table().sinks.len()
    }

    /// Wait until the session is attached to the gateway.
    pub async fn wait_up(&self) {
        let mut rx = self.up.subscribe();
        let _ = rx.wait_for(|u| *u).await;
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // A poisoned lock only means another task panicked mid-update of a map; the maps
        // stay structurally valid, so carry on.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Dispatch session events until the driver goes away or `shutdown`.
    pub async fn dispatch(
        self: Arc<Self>,
        mut events: mpsc::Receiver<Event>,
        shutdown: CancellationToken,
    ) {
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => break,
                e = events.recv() => match e { Some(e) => e, None => break },
            };
            match ev {
                Event::Record(RecordRepr { channel, body, .. }) => {
                    let sink = self.table().sinks.get(&channel).cloned();
                    match sink {
                        Some(Sink::Doip(tx)) => {
                            if tx.send(body).await.is_err() {
                                self.table().sinks.remove(&channel);
                            }
                        }
                        Some(Sink::Pdu(tx)) => {
                            let item = match body {
                                RecordBody::IsoTp(p) => Ok((p.data, p.timestamp)),
                                RecordBody::Error(e) => Err(format!("{} ({})", e.message, e.code)),
                                _ => continue,
                            };
                            if tx.send(item).await.is_err() {
                                self.table().sinks.remove(&channel);
                            }
                        }
                        Some(Sink::Mirror(tx)) => {
                            let frame = match body {
                                RecordBody::Can(f) => CanAnyFrame::Classic(f),
                                RecordBody::CanFd(f) => CanAnyFrame::Fd(f),
                                RecordBody::Error(e) => {
                                    tracing::warn!(channel, code = %e.code, "gateway: {}", e.message);
                                    continue;
                                }
                                _ => continue,
                            };
                            let ts = frame.timestamp();
                            if tx.try_send((frame, ts)).is_err() {
                                self.shed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        None => tracing::debug!(channel, "record for a channel with no local user"),
                    }
                }
                Event::Control(Control::Opened { channel }) => {
                    if let Some(w) = self.table().opens.remove(&channel) {
                        let _ = w.send(Ok(()));
                    }
                }
                Event::Control(Control::Error {
                    code,
                    message,
                    channel,
                }) => {
                    let waiter = channel.and_then(|c| self.table().opens.remove(&c));
                    match waiter {
                        Some(w) => {
                            let _ = w.send(Err(format!("{message} ({code})")));
                        }
                        None => {
                            tracing::warn!(?channel, %code, "tunnel error from the gateway: {message}")
                        }
                    }
                }
                Event::Control(Control::Closed { channel, reason }) => {
                    if let Some(r) = reason {
                        tracing::info!(channel, "gateway closed the channel: {r}");
                    }
                    self.table().sinks.remove(&channel);
                }
                Event::Up { resumed, replaying } => {
                    tracing::info!(resumed, replaying, "tunnel session up");
                    self.ups.fetch_add(1, Ordering::Relaxed);
                    self.up.send_replace(true);
                }
                Event::PeerDown { reason } => {
                    tracing::info!(%reason, "gateway connection lost; waiting for it");
                }
                Event::PeerRestarted => {
                    tracing::warn!("gateway restarted: its channels are gone");
                    let mut t = self.table();
                    t.sinks.clear();
                }
                Event::Bye { reason } => {
                    tracing::info!(%reason, "tunnel session ended");
                    break;
                }
                _ => {}
            }
        }
        // Wake everyone waiting: the session is gone.
        let mut t = self.table();
        t.sinks.clear();
        t.opens.clear();
    }

    /// Open a channel and wait for the gateway's answer; `sink` receives its records.
    async fn open(&self, params: ChannelParams, sink: Sink) -> Result<u16, String> {
        let channel = loop {
            let c = self.next_channel.fetch_add(1, Ordering::Relaxed);
            if c != 0 {
                break c;
            }
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut t = self.table();
            t.sinks.insert(channel, sink);
            t.opens.insert(channel, tx);
        }
        let sent = self
            .out
            .send(Outgoing::Control(Control::Open {
                channel,
                params: params.clone(),
            }))
            .await;
        let answer = match sent {
            Err(_) => Err("the tunnel session has ended".to_string()),
            Ok(()) => match tokio::time::timeout(OPEN_TIMEOUT, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err("the tunnel session has ended".to_string()),
                Err(_) => Err(format!(
                    "the gateway did not answer the open of channel {channel} within {OPEN_TIMEOUT:?}"
                )),
            },
        };
        if let Err(e) = &answer {
            let mut t = self.table();
            t.sinks.remove(&channel);
            t.opens.remove(&channel);
            tracing::warn!(channel, ?params, "opening a tunnel channel failed: {e}");
        }
        answer.map(|()| channel)
    }

    /// Read the VIN (UDS 22 F190) of the remote ECU `target` through a short-lived DoIP
    /// channel.
    pub async fn read_vin(&self, target: u16, within: Duration) -> Result<[u8; 17], String> {
        let (tx, mut rx) = mpsc::channel(DOIP_QUEUE);
        let params = ChannelParams::Doip {
            target,
            source: None,
        };
        let channel = self.open(params, Sink::Doip(tx)).await?;
        let rec = doip_record(
            channel,
            0x0E00,
            target,
            Bytes::from_static(&[0x22, 0xF1, 0x90]),
        );
        let sent = self
            .out
            .send(Outgoing::Record {
                rec,
                sheddable: false,
            })
            .await;
        let answer = async {
            sent.map_err(|_| "the tunnel session has ended".to_string())?;
            loop {
                match rx.recv().await {
                    Some(RecordBody::Doip(m)) if is_response_pending(&m.data, 0x22) => {}
                    Some(RecordBody::Doip(m)) => {
                        return match &m.data[..] {
                            [0x62, 0xF1, 0x90, vin @ ..] => <[u8; 17]>::try_from(vin)
                                .map_err(|_| format!("VIN of {} bytes, not 17", vin.len())),
                            other => Err(format!("22 F190 answered {other:02X?}")),
                        };
                    }
                    Some(RecordBody::Error(e)) => {
                        return Err(format!("{} ({})", e.message, e.code));
                    }
                    Some(_) => {}
                    None => return Err("the tunnel session has ended".to_string()),
                }
            }
        };
        let r = match tokio::time::timeout(within, answer).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer to 22 F190 within {within:?}")),
        };
        self.close(channel).await;
        r
    }

    async fn close(&self, channel: u16) {
        self.table().sinks.remove(&channel);
        let _ = self
            .out
            .send(Outgoing::Control(Control::Close { channel }))
            .await;
    }
}

/// When the operator side answers response-pending on its own.
#[derive(Debug, Clone, Copy)]
pub struct DiagTiming {
    /// First local `7F sid 78` after this long without an answer.
    pub pending_after: Duration,
    /// Then again every this long.
    pub pending_every: Duration,
    /// Give up on a request after this long (the tester gets no answer; logged).
    pub give_up: Duration,
}

impl Default for DiagTiming {
    fn default() -> Self {
        DiagTiming {
            // Below the usual P2 of 50 ms that ECUs announce and testers adopt: a WAN round
            // trip alone can exceed it.
            pending_after: Duration::from_millis(40),
            pending_every: Duration::from_secs(2),
            give_up: Duration::from_secs(120),
        }
    }
}

#[derive(Default)]
struct TargetState {
    channel: Option<(u16, mpsc::Receiver<RecordBody>)>,
}

/// A DoIP [`DiagHandler`] whose ECUs are the remote car's: one tunnel DoIP channel per
/// target address, opened on first use.
pub struct TunnelDiag {
    remote: Arc<Remote>,
    timing: DiagTiming,
    targets: Mutex<HashMap<u16, Arc<tokio::sync::Mutex<TargetState>>>>,
}

impl TunnelDiag {
    pub fn new(remote: Arc<Remote>, timing: DiagTiming) -> Self {
        TunnelDiag {
            remote,
            timing,
            targets: Mutex::new(HashMap::new()),
        }
    }

    fn target(&self, target: u16) -> Arc<tokio::sync::Mutex<TargetState>> {
        self.targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(target)
            .or_default()
            .clone()
    }
}

impl DiagHandler for TunnelDiag {
    async fn handle(&self, req: DiagRequest, replies: Replies) {
        let sid = req.data.first().copied().unwrap_or(0);
        let state = self.target(req.target);
        // One request per target at a time, as UDS requires.
        let mut st = state.lock().await;
        // A channel the gateway lost (it restarted: its channels are gone) is opened anew,
        // so the tester's next request works on the same TCP connection.
        if st.channel.as_ref().is_some_and(|(_, rx)| rx.is_closed()) {
            st.channel = None;
        }
        if st.channel.is_none() {
            let (tx, rx) = mpsc::channel(DOIP_QUEUE);
            let params = ChannelParams::Doip {
                target: req.target,
                source: None,
            };
            // Opening may wait for the gateway (a session resuming): keep the tester
            // waiting with response-pending meanwhile.
            let open = self.remote.open(params, Sink::Doip(tx));
            tokio::pin!(open);
            let mut wait = self.timing.pending_after;
            let opened = loop {
                match tokio::time::timeout(wait, &mut open).await {
                    Ok(r) => break r,
                    Err(_) => {
                        if replies
                            .send(Bytes::from(vec![0x7F, sid, 0x78]))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        wait = self.timing.pending_every;
                    }
                }
            };
            match opened {
                Ok(c) => st.channel = Some((c, rx)),
                Err(e) => {
                    tracing::warn!(
                        target = req.target,
                        "no DoIP channel to 0x{:04X}: {e}; answering generalReject (7F {sid:02X} 10)",
                        req.target
                    );
                    // The tester gets a clear negative answer instead of a timeout.
                    let _ = replies.send(Bytes::from(vec![0x7F, sid, 0x10])).await;
                    return;
                }
            }
        }
        let Some((channel, rx)) = st.channel.as_mut() else {
            return;
        };
        // Drop answers to earlier requests that were given up on.
        while rx.try_recv().is_ok() {}
        let rec = doip_record(*channel, req.source, req.target, req.data.clone());
        if self
            .remote
            .out
            .send(Outgoing::Record {
                rec,
                sheddable: false,
            })
            .await
            .is_err()
        {
            return;
        }
        if suppresses_response(&req.data) {
            return;
        }
        let started = tokio::time::Instant::now();
        let mut wait = self.timing.pending_after;
        loop {
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(RecordBody::Doip(m))) => {
                    let pending = is_response_pending(&m.data, sid);
                    if replies.send(m.data).await.is_err() || !pending {
                        return;
                    }
                    wait = self.timing.pending_every.max(self.timing.pending_after);
                }
                Ok(Some(RecordBody::Error(e))) => {
                    // The tester gets the matching negative response at once rather than
                    // response-pending until it gives up.
                    let nrc = nrc_for(e.code);
                    tracing::warn!(target = req.target, code = %e.code, "request failed at the gateway: {}; answering 7F {sid:02X} {nrc:02X}", e.message);
                    let _ = replies.send(Bytes::from(vec![0x7F, sid, nrc])).await;
                    return;
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    // The channel died with the request in flight (the gateway restarted
                    // or the session ended): whether it reached the ECU is unknown, so the
                    // tester gets a clear refusal rather than silence.
                    st.channel = None;
                    let _ = replies.send(Bytes::from(vec![0x7F, sid, 0x10])).await;
                    return;
                }
                Err(_) => {
                    if started.elapsed() >= self.timing.give_up {
                        tracing::warn!(
                            target = req.target,
                            "no answer through the tunnel within {:?}",
                            self.timing.give_up
                        );
                        return;
                    }
                    if replies
                        .send(Bytes::from(vec![0x7F, sid, 0x78]))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    wait = self.timing.pending_every;
                }
            }
        }
    }
}

/// The UDS negative response code a tester gets for a channel error from the gateway:
/// `conditionsNotCorrect` (0x22) when the gateway's policy refused the request, otherwise
/// `generalReject` (0x10: the request did not reach the ECU or it did not answer).
pub fn nrc_for(code: ErrorCode) -> u8 {
    if code == ErrorCode::POLICY_REFUSED {
        0x22
    } else {
        0x10
    }
}

/// A socketcand [`BusProvider`] over the tunnel: raw mode is a raw CAN mirror channel on the
/// gateway's interface of the same name (with transmit allowed).
pub struct TunnelBuses {
    remote: Arc<Remote>,
    buses: Vec<String>,
}

impl TunnelBuses {
    pub fn new(remote: Arc<Remote>, buses: Vec<String>) -> Self {
        TunnelBuses { remote, buses }
    }
}

impl BusProvider for TunnelBuses {
    fn buses(&self) -> Vec<String> {
        self.buses.clone()
    }

    async fn open_raw(&self, bus: &str) -> Result<RawAccess, String> {
        self.offered(bus)?;
        let (rx_tx, rx) = mpsc::channel(MIRROR_QUEUE);
        let params = ChannelParams::CanMirror {
            interface: bus.to_string(),
            filters: Vec::new(),
            fd: true,
            allow_tx: true,
        };
        let channel = self.remote.open(params, Sink::Mirror(rx_tx)).await?;
        let tx = self.forward(channel, 256, |f: CanAnyFrame| {
            match f.with_timestamp(now_ns()) {
                CanAnyFrame::Classic(f) => RecordBody::Can(f),
                CanAnyFrame::Fd(f) => RecordBody::CanFd(f),
            }
        });
        Ok(RawAccess { rx, tx })
    }

    async fn open_isotp(&self, bus: &str, conf: IsoTpConf) -> Result<PduAccess, String> {
        self.offered(bus)?;
        let params = isotp_params(bus, &conf)?;
        let (rx_tx, rx) = mpsc::channel(PDU_QUEUE);
        let channel = self.remote.open(params, Sink::Pdu(rx_tx)).await?;
        let tx = self.forward(channel, 16, |data: Bytes| {
            RecordBody::IsoTp(PduRecord {
                timestamp: now_ns(),
                data,
            })
        });
        Ok(PduAccess { rx, tx })
    }
}

impl TunnelBuses {
    fn offered(&self, bus: &str) -> Result<(), String> {
        if self.buses.iter().any(|b| b == bus) {
            Ok(())
        } else {
            Err(format!(
                "bus {bus} is not offered (buses: {})",
                self.buses.join(", ")
            ))
        }
    }

    /// A queue (of `depth`) whose items go out on `channel` as records made by `body`;
    /// when the local client drops it, the channel is closed.
    fn forward<T: Send + 'static>(
        &self,
        channel: u16,
        depth: usize,
        body: fn(T) -> RecordBody,
    ) -> mpsc::Sender<T> {
        let (tx, mut rx) = mpsc::channel::<T>(depth);
        let remote = self.remote.clone();
        tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                let rec = RecordRepr {
                    channel,
                    flags: 0,
                    body: body(item),
                };
                let out = Outgoing::Record {
                    rec,
                    sheddable: false,
                };
                if remote.out.send(out).await.is_err() {
                    return;
                }
            }
            // The socketcand client left the mode or disconnected.
            remote.close(channel).await;
        });
        tx
    }
}

/// Tunnel ISO-TP channel parameters from a socketcand `isotpconf` (kernel `CAN_ISOTP_*`
/// flags: extended addressing, an own receive address byte, transmit padding).
pub fn isotp_params(bus: &str, conf: &IsoTpConf) -> Result<ChannelParams, String> {
    use crate::wire::socketcand::{ISOTP_EXTEND_ADDR, ISOTP_RX_EXT_ADDR, ISOTP_TX_PADDING};
    if conf.tx_id.is_extended() != conf.rx_id.is_extended() {
        return Err("tx and rx ids must both be 11-bit or both 29-bit".into());
    }
    let (addressing, tx_ext, rx_ext) = if conf.flags & ISOTP_EXTEND_ADDR != 0 {
        let tx = conf
            .ext_address
            .ok_or("CAN_ISOTP_EXTEND_ADDR needs an extended address")?;
        let rx = if conf.flags & ISOTP_RX_EXT_ADDR != 0 {
            conf.rx_ext_address
                .ok_or("CAN_ISOTP_RX_EXT_ADDR needs a receive extended address")?
        } else {
            tx
        };
        (
            crate::wire::tunnel::Addressing::Extended,
            Some(tx),
            Some(rx),
        )
    } else {
        (crate::wire::tunnel::Addressing::Normal, None, None)
    };
    let padding = (conf.flags & ISOTP_TX_PADDING != 0).then(|| conf.tx_pad.unwrap_or(0xCC));
    let st_min = crate::wire::isotp::StMin::from_byte(conf.st_min).duration();
    Ok(ChannelParams::Isotp {
        interface: bus.to_string(),
        tx_id: conf.tx_id.id(),
        rx_id: conf.rx_id.id(),
        extended_ids: conf.tx_id.is_extended(),
        addressing,
        tx_ext,
        rx_ext,
        bs: Some(conf.block_size),
        stmin_us: Some(st_min.as_micros() as u32),
        padding,
        fd: false,
    })
}

/// `obdgw operator`: present a remote car on this machine.
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorArgs {
    /// Relay URL, e.g. wss://relay.example:8443/ (ws:// only on loopback).
    #[arg(long, value_name = "URL")]
    pub relay: String,
    /// Session id (the ticket's connection UUID).
    #[arg(long, value_name = "ID")]
    pub session: String,
    /// The operator's session token.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "OBDGW_OPERATOR_TOKEN",
        hide_env_values = true
    )]
    pub token: String,
    /// Serve a DoIP entity for the remote car's ECUs on this address (TCP and UDP).
    #[arg(long, value_name = "ADDR")]
    pub doip_listen: Option<SocketAddr>,
    /// Serve the remote CAN buses with the socketcand protocol on this address.
    #[arg(long, value_name = "ADDR")]
    pub socketcand_listen: Option<SocketAddr>,
    /// Remote CAN interfaces offered through socketcand (repeatable).
    #[arg(long = "bus", value_name = "NAME", default_values_t = vec!["can0".to_string()])]
    pub buses: Vec<String>,
    /// DoIP logical addresses of the remote ECUs (repeatable, hex like 0x1000).
    #[arg(long = "target", value_name = "ADDR", value_parser = parse_u16,
          default_values_t = vec![0x1000u16, 0x1001, 0x1002, 0x1003])]
    pub targets: Vec<u16>,
    /// VIN the local entity announces; default: the remote car's, read through the tunnel
    /// (22 F190 to the first --target) before serving.
    #[arg(long, value_name = "VIN")]
    pub vin: Option<String>,
    /// Trust only this CA certificate (PEM) for a wss:// relay; default: the system's
    /// trust store. ws:// is accepted only to a loopback relay.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
    /// Allow --doip-listen/--socketcand-listen on a non-loopback address: anyone who
    /// reaches it can talk to the remote car (within the gateway's policy).
    #[arg(long)]
    pub listen_any: bool,
}

fn parse_u16(s: &str) -> Result<u16, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u16::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?} is not a 16-bit address (e.g. 0x1000): {e}"))
}

/// The local DoIP entity of [`start`]: sockets, its configuration, and whether to announce
/// the remote car's VIN (read through the tunnel from the first target before serving).
pub struct DoipServe {
    pub listener: tokio::net::TcpListener,
    pub udp: Option<tokio::net::UdpSocket>,
    pub config: EntityConfig,
    pub fetch_vin: bool,
}

/// What a running operator endpoint serves.
pub struct Served {
    pub doip: Option<SocketAddr>,
    pub socketcand: Option<SocketAddr>,
    pub remote: Arc<Remote>,
    /// Completes when everything has stopped.
    pub done: tokio::task::JoinHandle<()>,
    /// Why the session stopped for good, if it was refused (bad token, unknown session).
    pub fatal: Arc<Mutex<Option<String>>>,
}

/// Start the operator endpoint on already bound sockets (library form of `obdgw operator`).
#[allow(clippy::too_many_arguments)]
pub async fn start(
    client_cfg: ClientConfig,
    session_id: &str,
    token: Token,
    doip: Option<DoipServe>,
    socketcand: Option<(tokio::net::TcpListener, Vec<String>)>,
    timing: DiagTiming,
    shutdown: CancellationToken,
) -> std::io::Result<Served> {
    let scfg = SessionConfig::new(Role::Operator, session_id, token, random_instance());
    let session = Session::new(scfg, std::time::Instant::now());
    let (out_tx, out_rx) = mpsc::channel(1024);
    let (ev_tx, ev_rx) = mpsc::channel(1024);
    let remote = Remote::new(out_tx);
    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(remote.clone().dispatch(ev_rx, shutdown.clone()));
    let s = shutdown.clone();
    let fatal = Arc::new(Mutex::new(None));
    let f = fatal.clone();
    tasks.spawn(async move {
        if let Err(e) = client::run(client_cfg, session, out_rx, ev_tx, s.clone()).await {
            tracing::error!("operator tunnel stopped: {e}");
            *f.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        }
        s.cancel();
    });
    let mut served_doip = None;
    if let Some(d) = doip {
        served_doip = Some(d.listener.local_addr()?);
        let mut cfg = d.config;
        if d.fetch_vin
            && let Some(&target) = cfg.targets.first()
        {
            // Testers that connect meanwhile wait in the listen backlog.
            let up = tokio::time::timeout(OPEN_TIMEOUT, remote.wait_up()).await;
            match up {
                Ok(()) => match remote.read_vin(target, OPEN_TIMEOUT).await {
                    Ok(vin) => cfg.vin = vin,
                    Err(e) => tracing::warn!(
                        "reading the remote VIN from 0x{target:04X}: {e}; announcing the configured one"
                    ),
                },
                Err(_) => tracing::warn!(
                    "the gateway did not come up within {OPEN_TIMEOUT:?}; announcing the configured VIN"
                ),
            }
        }
        let entity = Entity::new(cfg, TunnelDiag::new(remote.clone(), timing));
        let s = shutdown.clone();
        let (listener, udp) = (d.listener, d.udp);
        tasks.spawn(async move { entity.run(listener, udp, s).await });
    }
    let mut served_cand = None;
    if let Some((listener, buses)) = socketcand {
        served_cand = Some(listener.local_addr()?);
        let provider = Arc::new(TunnelBuses::new(remote.clone(), buses));
        let s = shutdown.clone();
        tasks.spawn(socketcand::serve(listener, provider, Default::default(), s));
    }
    tasks.close();
    let done = tokio::spawn(async move { tasks.wait().await });
    Ok(Served {
        doip: served_doip,
        socketcand: served_cand,
        remote,
        done,
        fatal,
    })
}

/// Run `obdgw operator` until SIGINT/SIGTERM or the session ends.
pub fn run_operator(args: OperatorArgs) -> ExitCode {
    match run_operator_inner(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("obdgw operator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn client_config(args: &OperatorArgs) -> anyhow::Result<ClientConfig> {
    crate::tls::check_scheme(&args.relay).map_err(|e| anyhow::anyhow!("--relay: {e}"))?;
    let mut cc = ClientConfig::new(args.relay.clone());
    if args.relay.starts_with("wss://") {
        // A pinned CA when given; otherwise the system's trust store.
        cc.tls = Some(match &args.ca {
            Some(ca) => {
                crate::tls::client_config_with_ca(ca).map_err(|e| anyhow::anyhow!("--ca: {e}"))?
            }
            None => crate::tls::client_config().map_err(anyhow::Error::msg)?,
        });
    }
    Ok(cc)
}

fn run_operator_inner(args: OperatorArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    // Logs go to stderr (RUST_LOG tunes them); what is served is printed on stdout.
    let (_, warning) = crate::logging::init(&crate::config::LogConfig::default());
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    if args.doip_listen.is_none() && args.socketcand_listen.is_none() {
        anyhow::bail!("nothing to serve: give --doip-listen ADDR and/or --socketcand-listen ADDR");
    }
    let vin: Option<[u8; 17]> = match &args.vin {
        Some(v) => Some(
            v.as_bytes()
                .try_into()
                .map_err(|_| anyhow::anyhow!("--vin must be 17 characters, got {v:?}"))?,
        ),
        None => None,
    };
    for (flag, addr) in [
        ("--doip-listen", args.doip_listen),
        ("--socketcand-listen", args.socketcand_listen),
    ] {
        let Some(a) = addr else { continue };
        if a.ip().is_loopback() {
            continue;
        }
        if !args.listen_any {
            anyhow::bail!(
                "{flag} {a} would let anyone on that network reach the remote car; use 127.0.0.1:{} (the default choice), or add --listen-any if that is what you want",
                a.port()
            );
        }
        eprintln!(
            "obdgw operator: WARNING: {flag} {a} is not loopback (--listen-any): anyone who reaches it can talk to the remote car, within the gateway's policy"
        );
    }
    let cc = client_config(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let doip = match args.doip_listen {
            Some(a) => {
                let l = tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("binding the DoIP entity on {a}"))?;
                let u = tokio::net::UdpSocket::bind(l.local_addr()?)
                    .await
                    .with_context(|| format!("binding DoIP UDP on {a}"))?;
                let config = EntityConfig {
                    vin: vin.unwrap_or(*b"OBDGW000000000000"),
                    targets: args.targets.clone(),
                    announce_to: None,
                    ..EntityConfig::default()
                };
                Some(DoipServe {
                    listener: l,
                    udp: Some(u),
                    config,
                    fetch_vin: vin.is_none(),
                })
            }
            None => None,
        };
        let cand = match args.socketcand_listen {
            Some(a) => Some((
                tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("binding the socketcand server on {a}"))?,
                args.buses.clone(),
            )),
            None => None,
        };
        let shutdown = CancellationToken::new();
        let served = start(
            cc,
            &args.session,
            Token(args.token.clone()),
            doip,
            cand,
            DiagTiming::default(),
            shutdown.clone(),
        )
        .await?;
        println!(
            "obdgw operator: session {} via {}",
            args.session, args.relay
        );
        if let Some(a) = served.doip {
            let t: Vec<String> = args.targets.iter().map(|t| format!("0x{t:04X}")).collect();
            println!("  DoIP entity on {a} (TCP+UDP), ECUs {}", t.join(" "));
        }
        if let Some(a) = served.socketcand {
            println!("  socketcand on {a}, buses {}", args.buses.join(" "));
        }
        crate::signals::spawn(shutdown.clone(), None)?;
        let _ = served.done.await;
        let fatal = served
            .fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match fatal {
            Some(e) => Err(anyhow::anyhow!("{e}")),
            None => anyhow::Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_hex_and_decimal() {
        assert_eq!(parse_u16("0x1000"), Ok(0x1000));
        assert_eq!(parse_u16("4097"), Ok(4097));
        assert!(parse_u16("0x10000").unwrap_err().contains("16-bit"));
    }

    #[tokio::test]
    async fn open_answered_by_error_reports_it() {
        let (out_tx, mut out_rx) = mpsc::channel(8);
        let (ev_tx, ev_rx) = mpsc::channel(8);
        let remote = Remote::new(out_tx);
        tokio::spawn(remote.clone().dispatch(ev_rx, CancellationToken::new()));
        let r2 = remote.clone();
        let opening = tokio::spawn(async move {
            r2.open(
                ChannelParams::Doip {
                    target: 0x1000,
                    source: None,
                },
                Sink::Doip(mpsc::channel(1).0),
            )
            .await
        });
        let Some(Outgoing::Control(Control::Open { channel, .. })) = out_rx.recv().await else {
            panic!("no open sent");
        };
        ev_tx
            .send(Event::Control(Control::Error {
                code: crate::wire::tunnel::ErrorCode::PORT_UNAVAILABLE,
                message: "no DoIP vehicle".into(),
                channel: Some(channel),
            }))
            .await
            .unwrap();
        let err = opening.await.unwrap().unwrap_err();
        assert!(err.contains("no DoIP vehicle"), "{err}");
        assert!(remote.table().sinks.is_empty());
    }
}

#[cfg(test)]
mod nrc_tests {
    use super::*;

    #[test]
    fn policy_refusals_and_failures_map_to_distinct_negative_responses() {
        assert_eq!(nrc_for(ErrorCode::POLICY_REFUSED), 0x22);
        for c in [
            ErrorCode::ISOTP_TIMEOUT,
            ErrorCode::TARGET_UNREACHABLE,
            ErrorCode::SEND_FAILED,
            ErrorCode::CAN_BUS_OFF,
            ErrorCode::DOIP_NACK,
        ] {
            assert_eq!(nrc_for(c), 0x10, "{c}");
        }
    }
}
