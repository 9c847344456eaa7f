//! The gateway side of a tunnel session: opens channels on the operator's request and binds
//! each to a vehicle port.
//!
//! Owns: the channel table of one session, DoIP target channels (diagnostic-message records
//! forwarded as requests to the car's DoIP entity through one shared [`DoipClient`], each
//! final response sent back as a record, failures as channel-error records), raw CAN mirror
//! channels (frames of a CAN port, id-filtered, sent as sheddable records; frames from the
//! operator put on the bus when the channel allows it), and the gateway's `[tunnel]`
//! configuration section.
//!
//! Does not own: the session or the websocket (`super::session`, `super::client`), the DoIP
//! and CAN drivers, or ISO-TP channels (answered with `bad_channel_params` until the ISO-TP
//! layer is wired in).
//!
//! Known limit: the DoIP client consumes the car's `7F xx 78` response-pending replies while
//! it waits for the final one, so they are not forwarded; the operator endpoint answers
//! pending locally while it waits (see `crate::operator::tunnel`).

use super::client::{self, ClientConfig, Outgoing};
use super::session::{Event, Session, SessionConfig};
use crate::config::Secret;
use crate::router::frame::{CanFrame, DoipMessage, Timestamp};
use crate::vehicle::can::{CanAnyFrame, CanPort};
use crate::vehicle::doip::{DoipClient, DoipClientConfig};
use crate::wire::tunnel::{
    ChannelParams, Control, ErrorCode, ErrorRecord, IdFilter, RecordBody, RecordRepr, Role, Token,
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

/// Depth of each channel's inbound record queue (records from the operator).
const CHANNEL_QUEUE: usize = 64;

/// The `[tunnel]` configuration section: where the gateway's side of a session connects and
/// which vehicle ports it offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// Relay URL, `wss://host:port/` (or `ws://` on loopback).
    pub relay_url: String,
    /// Session id: the ticket's connection UUID.
    pub session: String,
    /// The gateway's connector token for the relay.
    pub token: Secret,
    /// The car's DoIP entity (`ip:port`) that DoIP channels reach; none: DoIP channels are
    /// refused with `port_unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doip_vehicle: Option<SocketAddr>,
    /// CAN interfaces (names as in `[[can]]`) that raw mirror channels may open.
    #[serde(default)]
    pub can_interfaces: Vec<String>,
    /// Whether operators may transmit raw frames on the bus (`allow_tx` channels).
    #[serde(default = "default_true")]
    pub allow_can_tx: bool,
}

fn default_true() -> bool {
    true
}

/// What the gateway serves, resolved to live objects.
pub struct Gateway<P> {
    /// DoIP tester toward the car's entity; `None`: no DoIP channels.
    pub doip: Option<(SocketAddr, DoipClientConfig)>,
    /// CAN ports by interface name.
    pub can: Vec<(String, Arc<P>)>,
    /// Whether `allow_tx` mirror channels are accepted.
    pub allow_can_tx: bool,
}

/// Why an open was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OpenError {
    pub code: ErrorCode,
    pub message: String,
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
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = events.recv() => match ev { Some(ev) => ev, None => break },
            };
            match ev {
                Event::Control(Control::Open { channel, params }) => {
                    let answer = match channels.get(&channel) {
                        Some(c) if c.params == params => Control::Opened { channel },
                        Some(_) => Control::Error {
                            code: ErrorCode::CHANNEL_EXISTS,
                            message: format!("channel {channel} is open with other parameters"),
                            channel: Some(channel),
                        },
                        None => match self.open(channel, &params, &doip, &channels, &out) {
                            Ok((input, stop)) => {
                                tracing::info!(channel, ?params, "tunnel channel opened");
                                channels.insert(
                                    channel,
                                    OpenChannel {
                                        params,
                                        input,
                                        stop,
                                    },
                                );
                                Control::Opened { channel }
                            }
                            Err(e) => Control::Error {
                                code: e.code,
                                message: e.message,
                                channel: Some(channel),
                            },
                        },
                    };
                    if out.send(Outgoing::Control(answer)).await.is_err() {
                        break;
                    }
                }
                Event::Control(Control::Close { channel }) => {
                    if let Some(c) = channels.remove(&channel) {
                        c.stop.cancel();
                    }
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
                        c.stop.cancel();
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
            c.stop.cancel();
        }
    }

    #[allow(clippy::type_complexity)]
    fn open(
        &self,
        channel: u16,
        params: &ChannelParams,
        doip: &Option<Arc<Mutex<DoipClient>>>,
        open: &HashMap<u16, OpenChannel>,
        out: &mpsc::Sender<Outgoing>,
    ) -> Result<(mpsc::Sender<RecordBody>, CancellationToken), OpenError> {
        if channel == 0 {
            return Err(open_err(
                ErrorCode::BAD_CHANNEL_PARAMS,
                "channel 0 is reserved; use 1..=65535",
            ));
        }
        let (tx, rx) = mpsc::channel(CHANNEL_QUEUE);
        let stop = CancellationToken::new();
        match params {
            ChannelParams::Doip { target, .. } => {
                let Some(client) = doip.clone() else {
                    return Err(open_err(
                        ErrorCode::PORT_UNAVAILABLE,
                        "this gateway has no DoIP vehicle configured (tunnel.doip_vehicle)",
                    ));
                };
                tokio::spawn(doip_channel(
                    channel,
                    *target,
                    client,
                    rx,
                    out.clone(),
                    stop.clone(),
                ));
            }
            ChannelParams::CanMirror {
                interface,
                filters,
                fd,
                allow_tx,
            } => {
                let Some((_, port)) = self.can.iter().find(|(n, _)| n == interface) else {
                    let names: Vec<&str> = self.can.iter().map(|(n, _)| n.as_str()).collect();
                    return Err(open_err(
                        ErrorCode::PORT_UNAVAILABLE,
                        format!(
                            "interface {interface} is not configured on this gateway (it offers: {})",
                            names.join(", ")
                        ),
                    ));
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
                if *allow_tx && !self.allow_can_tx {
                    return Err(open_err(
                        ErrorCode::BAD_CHANNEL_PARAMS,
                        "this gateway does not let operators transmit (tunnel.allow_can_tx = false)",
                    ));
                }
                tokio::spawn(mirror_channel(
                    channel,
                    port.clone(),
                    filters.clone(),
                    *fd,
                    *allow_tx,
                    rx,
                    out.clone(),
                    stop.clone(),
                ));
            }
            ChannelParams::Isotp { .. } => {
                return Err(open_err(
                    ErrorCode::BAD_CHANNEL_PARAMS,
                    "ISO-TP channels are not supported by this gateway build; use a DoIP channel",
                ));
            }
        }
        Ok((tx, stop))
    }
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
async fn doip_channel(
    channel: u16,
    target: u16,
    client: Arc<Mutex<DoipClient>>,
    mut input: mpsc::Receiver<RecordBody>,
    out: mpsc::Sender<Outgoing>,
    stop: CancellationToken,
) {
    loop {
        let body = tokio::select! {
            _ = stop.cancelled() => return,
            b = input.recv() => match b { Some(b) => b, None => return },
        };
        let RecordBody::Doip(msg) = body else {
            let e = error_record(
                channel,
                ErrorCode::BAD_CHANNEL_PARAMS,
                "a DoIP channel carries DoIP diagnostic-message records only".into(),
            );
            if out.send(e).await.is_err() {
                return;
            }
            continue;
        };
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
            Ok(Some(data)) => Outgoing::Record {
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
            },
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

/// One raw CAN mirror channel: the port's frames (filtered) go out as sheddable records;
/// frames from the operator go on the bus when `allow_tx`.
#[allow(clippy::too_many_arguments)]
async fn mirror_channel<P: CanPort>(
    channel: u16,
    port: Arc<P>,
    filters: Vec<IdFilter>,
    fd: bool,
    allow_tx: bool,
    mut input: mpsc::Receiver<RecordBody>,
    out: mpsc::Sender<Outgoing>,
    stop: CancellationToken,
) {
    let tx_port = port.clone();
    let tx_out = out.clone();
    let tx_stop = stop.clone();
    // Transmit in its own task so a slow bus never stalls mirroring.
    let tx_task = tokio::spawn(async move {
        loop {
            let body = tokio::select! {
                _ = tx_stop.cancelled() => return,
                b = input.recv() => match b { Some(b) => b, None => return },
            };
            let frame = match body {
                RecordBody::Can(f) => CanAnyFrame::Classic(f),
                RecordBody::CanFd(f) => CanAnyFrame::Fd(f),
                _ => {
                    let e = error_record(
                        channel,
                        ErrorCode::BAD_CHANNEL_PARAMS,
                        "a CAN mirror channel carries CAN frame records only".into(),
                    );
                    if tx_out.send(e).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            if !allow_tx {
                let e = error_record(
                    channel,
                    ErrorCode::BAD_CHANNEL_PARAMS,
                    "this channel was opened without allow_tx: frame not sent".into(),
                );
                if tx_out.send(e).await.is_err() {
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
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => break,
            f = port.recv() => match f {
                Ok(f) => f,
                Err(e) => {
                    let _ = out.send(Outgoing::Control(Control::Closed {
                        channel,
                        reason: Some(format!("CAN port failed: {e}")),
                    })).await;
                    break;
                }
            },
        };
        if (frame.is_fd() && !fd) || !passes(&filters, &frame) {
            continue;
        }
        let ts = if frame.timestamp().0 == 0 {
            now_ns()
        } else {
            frame.timestamp()
        };
        let body = match frame.with_timestamp(ts) {
            CanAnyFrame::Classic(f) => RecordBody::Can(f),
            CanAnyFrame::Fd(f) => RecordBody::CanFd(f),
        };
        let rec = RecordRepr {
            channel,
            flags: 0,
            body,
        };
        if out
            .send(Outgoing::Record {
                rec,
                sheddable: true,
            })
            .await
            .is_err()
        {
            break;
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
    #[error("tunnel.can_interfaces `{name}`: {source}")]
    Can {
        name: String,
        #[source]
        source: crate::vehicle::can::CanError,
    },
    #[error(transparent)]
    Client(#[from] client::ClientError),
}

/// Run the gateway side as the configuration says: `[tunnel]`, the `[doip]` tester settings
/// and the `[[can]]` interfaces named by `tunnel.can_interfaces` (opened here; each one is
/// owned by the tunnel while it runs). TLS for `wss://` comes from `tls`.
pub async fn run_from_config(
    tunnel: &TunnelConfig,
    doip: &DoipClientConfig,
    can: &[crate::vehicle::can::CanInterfaceConfig],
    tls: Option<Arc<rustls::ClientConfig>>,
    shutdown: CancellationToken,
) -> Result<super::SessionStats, StartError> {
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
    let gw = Gateway {
        doip: tunnel.doip_vehicle.map(|a| (a, doip.clone())),
        can: ports,
        allow_can_tx: tunnel.allow_can_tx,
    };
    let mut cc = ClientConfig::new(tunnel.relay_url.clone());
    cc.tls = tls;
    Ok(run(cc, &tunnel.session, &tunnel.token, gw, shutdown).await?)
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
        assert_eq!(c.token.expose(), "gw-secret");
        assert!(c.allow_can_tx);
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
            session: "s".into(),
            token: Secret::new("t"),
            doip_vehicle: None,
            can_interfaces: vec!["can9".into()],
            allow_can_tx: true,
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

    async fn answer(
        tx: &mpsc::Sender<Event>,
        rx: &mut mpsc::Receiver<Outgoing>,
        ev: Event,
    ) -> Outgoing {
        tx.send(ev).await.unwrap();
        rx.recv().await.unwrap()
    }

    #[tokio::test]
    async fn refusals_name_the_channel_and_the_reason() {
        let bus = crate::vehicle::can::vbus::VirtualBus::new("can0");
        let gw = Gateway {
            doip: None,
            can: vec![("can0".to_string(), Arc::new(bus.port()))],
            allow_can_tx: false,
        };
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
        let o = answer(&ev_tx, &mut out_rx, open(2, mirror("can1", false))).await;
        expect_error(o, ErrorCode::PORT_UNAVAILABLE, 2, "can0");
        let o = answer(&ev_tx, &mut out_rx, open(3, mirror("can0", true))).await;
        expect_error(o, ErrorCode::BAD_CHANNEL_PARAMS, 3, "allow_can_tx");
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
        let o = answer(
            &ev_tx,
            &mut out_rx,
            Event::Control(Control::Close { channel: 4 }),
        )
        .await;
        assert!(
            matches!(o, Outgoing::Control(Control::Closed { channel: 4, .. })),
            "{o:?}"
        );
        stop.cancel();
        task.await.unwrap();
    }
}
