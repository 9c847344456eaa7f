//! The fleet simulator (`obdgw sim fleet`): thousands of gateway and operator endpoints in
//! one process against one relay (or a load balancer in front of several), on loopback.
//!
//! Owns: a lean endpoint driver per simulated box or operator (the real sans-IO
//! [`Session`], real websockets and hellos, small websocket buffers, the client's backoff
//! policy: 250 ms doubling to 30 s with ±20 % jitter, reset once a peer was reached);
//! deterministic session ids and tokens (and the relay tokens file for them); UDS-like
//! request/response traffic on active pairs with every answer checked; latency histograms;
//! the relay's RSS and CPU from `/proc`; an optional spawned relay that can be killed and
//! restarted to measure a reconnect storm.
//!
//! Does not own: the relay, the session protocol (`crate::tunnel::session`). It does not
//! use `crate::tunnel::client::run`, whose 64 KiB websocket buffers per endpoint would make
//! the simulator, not the relay, the thing measured; its driver loop is the same shape.
//!
//! What the numbers mean (also in `docs/benchmarks-relay.md`):
//! - one-way latency: operator writes a request → gateway reads it (and gateway writes the
//!   answer → operator reads it), both clocks being this process's monotonic clock. It is
//!   one relay pass plus both endpoints' scheduling, so it bounds the relay's added latency
//!   from above.
//! - round trip: request written → answer read (two relay passes).

use crate::tunnel::session::{Event, Link, Session, SessionConfig, Transmit};
use crate::wire::tunnel::{PduRecord, RecordBody, RecordRepr, Role, Token};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpSocket;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

/// Hard bounds on a run (the simulator is a measuring tool, not a load generator to leave
/// running).
const MAX_ENDPOINT_SESSIONS: usize = 60_000;
const MAX_DURATION_S: u64 = 3600;
/// The ISO-TP channel the simulated diagnostics use.
const CHANNEL: u16 = 1;

/// `obdgw sim fleet` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// The relay (or load balancer) base URL on loopback, e.g. ws://127.0.0.1:8443/; each
    /// endpoint connects to <URL>/v1/sessions/<id>.
    #[arg(long, value_name = "URL", required_unless_present_any = ["spawn_relay", "write_tokens"], conflicts_with = "spawn_relay")]
    pub relay: Option<String>,
    /// Start `obdgw relay` (this binary) on 127.0.0.1 with a tokens file for these sessions.
    #[arg(long)]
    pub spawn_relay: bool,
    /// Extra argument for the spawned relay (repeat), e.g. --relay-arg=--accept-rate=0.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub relay_arg: Vec<String>,
    /// The relay's metrics address (its --metrics-listen), for its own forwarding latency;
    /// a spawned relay gets one on 127.0.0.1.
    #[arg(long, value_name = "ADDR")]
    pub relay_metrics: Option<SocketAddr>,
    /// The relay's process id, for its RSS and CPU (found from the listening port when the
    /// relay is local and this is omitted).
    #[arg(long, value_name = "PID")]
    pub relay_pid: Option<u32>,
    /// Gateways (one session each).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub gateways: usize,
    /// Of those, sessions with an operator running request/response traffic.
    #[arg(long, value_name = "M", default_value_t = 0)]
    pub active: usize,
    /// Of the rest, sessions with an operator attached but no traffic (paired, idle).
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub operators: usize,
    /// Round trips per second per active pair.
    #[arg(long, value_name = "R", default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds measured once everything is connected.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub duration: u64,
    /// Connections opened per second while ramping up.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub connect_rate: u32,
    /// Seconds between websocket pings of an endpoint waiting for its peer.
    #[arg(long, value_name = "SECS", default_value_t = 20)]
    pub keepalive: u64,
    /// Loopback source addresses to spread connections over (127.0.0.2, 127.0.0.3, …).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub sources: u8,
    /// Session ids and tokens derive from this.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// With --spawn-relay: kill the relay (SIGKILL) this many seconds into the measurement
    /// and start it again on the same port: a reconnect storm.
    #[arg(long, value_name = "SECS", requires = "spawn_relay")]
    pub restart_relay_at: Option<u64>,
    /// Seconds between progress lines.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub report_every: u64,
    /// Worker threads of the simulator's runtime (0: one current-thread runtime).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
    /// Write the relay tokens file for these sessions (plus one spare for the storm probe)
    /// and exit.
    #[arg(long, value_name = "FILE")]
    pub write_tokens: Option<PathBuf>,
}

// ---------------------------------------------------------------------------- identities

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn mix(seed: u64, index: usize, salt: u64) -> u64 {
    splitmix(splitmix(seed ^ salt.wrapping_mul(0x51_7cc1_b727_220a)) ^ index as u64)
}

/// Session `index` of run `seed`: a canonical (version 4) UUID.
pub fn session_id(seed: u64, index: usize) -> String {
    let a = mix(seed, index, 1);
    let b = mix(seed, index, 2);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// The tokens of session `index`: (gateway, operator).
pub fn tokens(seed: u64, index: usize) -> (String, String) {
    (
        format!("g{:016x}{:016x}", mix(seed, index, 3), mix(seed, index, 4)),
        format!("o{:016x}{:016x}", mix(seed, index, 5), mix(seed, index, 6)),
    )
}

/// The relay tokens file for sessions `0..count`.
pub fn tokens_file(seed: u64, count: usize) -> String {
    let mut s = String::with_capacity(count * 150);
    for i in 0..count {
        let (g, o) = tokens(seed, i);
        s.push_str(&format!(
            "[[session]]\nid = \"{}\"\ngateway_token = \"{g}\"\noperator_token = \"{o}\"\n",
            session_id(seed, i)
        ));
    }
    s
}

// ---------------------------------------------------------------------------- traffic

/// The request an operator sends: ReadDataByIdentifier VIN, with its number and send time.
fn request(seq: u32, t0_us: u64) -> RecordRepr {
    let mut b = BytesMut::with_capacity(15);
    b.put_slice(&[0x22, 0xF1, 0x90]);
    b.put_u32(seq);
    b.put_u64(t0_us);
    pdu(b.freeze())
}

fn pdu(data: Bytes) -> RecordRepr {
    RecordRepr {
        channel: CHANNEL,
        flags: 0,
        body: RecordBody::IsoTp(PduRecord {
            timestamp: crate::router::frame::Timestamp(0),
            data,
        }),
    }
}

/// The VIN a simulated car of session `index` answers in reply `seq`.
fn vin(index: usize, seq: u32) -> [u8; 17] {
    let mut v = *b"WOBDGW00000000000";
    let n = format!("{:05}{:06}", index % 100_000, seq % 1_000_000);
    v[6..17].copy_from_slice(n.as_bytes());
    v
}

/// The gateway's answer to `req` (None: not a request it knows).
fn answer(index: usize, req: &[u8], t1_us: u64, t2_us: u64) -> Option<RecordRepr> {
    if req.len() != 15 || req[..3] != [0x22, 0xF1, 0x90] {
        return None;
    }
    let seq = u32::from_be_bytes(req[3..7].try_into().ok()?);
    let mut b = BytesMut::with_capacity(3 + 4 + 24 + 17);
    b.put_slice(&[0x62, 0xF1, 0x90]);
    b.put_slice(&req[3..15]);
    b.put_u64(t1_us);
    b.put_u64(t2_us);
    b.put_slice(&vin(index, seq));
    Some(pdu(b.freeze()))
}

/// Check an answer against the oldest outstanding request; returns (t0, t1, t2).
fn check_answer(index: usize, want: (u32, u64), ans: &[u8]) -> Result<(u64, u64, u64), String> {
    if ans.len() != 48 || ans[..3] != [0x62, 0xF1, 0x90] {
        return Err(format!(
            "answer of {} bytes is not 62 F1 90 + 45",
            ans.len()
        ));
    }
    let rd = |r: std::ops::Range<usize>| {
        let mut x = [0u8; 8];
        x[8 - r.len()..].copy_from_slice(&ans[r]);
        u64::from_be_bytes(x)
    };
    let (seq, t0, t1, t2) = (rd(3..7) as u32, rd(7..15), rd(15..23), rd(23..31));
    if (seq, t0) != want {
        return Err(format!(
            "answer to request {seq} (sent at {t0} us), expected {} (sent at {} us)",
            want.0, want.1
        ));
    }
    if ans[31..48] != vin(index, seq) {
        return Err(format!("answer {seq} carries the wrong VIN"));
    }
    Ok((t0, t1, t2))
}

// ---------------------------------------------------------------------------- statistics

/// Latencies in 10 µs buckets up to 200 ms, and one bucket above.
pub struct Histogram {
    buckets: Vec<AtomicU64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..20_001).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Histogram {
    pub fn record(&self, us: u64) {
        let i = ((us / 10) as usize).min(self.buckets.len() - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }
    pub fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
    }
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
    /// The `p` quantile (0..=1) in µs (upper edge of its bucket); `None` when empty.
    pub fn quantile(&self, p: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((p * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some((i as u64 + 1) * 10);
            }
        }
        None
    }
}

/// What every endpoint reports to.
#[derive(Default)]
pub struct Stats {
    gw_welcomed: AtomicI64,
    op_welcomed: AtomicI64,
    paired: AtomicI64,
    round_trips: AtomicU64,
    bad_answers: AtomicU64,
    protocol_errors: AtomicU64,
    refused: AtomicU64,
    connect_failures: AtomicU64,
    dead: AtomicU64,
    connects: AtomicU64,
    one_way: Histogram,
    rtt: Histogram,
    /// Microseconds since `epoch` when the relay was restarted (0: not yet).
    restart_us: AtomicU64,
    /// Gateways welcomed since the restart.
    back: AtomicU64,
    /// Microseconds after the restart when the last gateway was back.
    all_back_us: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Stats {
    fn error(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(what);
        }
    }
    fn errors(&self) -> u64 {
        self.bad_answers.load(Ordering::Relaxed)
            + self.protocol_errors.load(Ordering::Relaxed)
            + self.refused.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------- endpoint

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Gateway,
    /// An operator sending `rate` requests per second (0: attached, idle).
    Operator {
        rate: f64,
    },
}

struct Endpoint {
    index: usize,
    kind: Kind,
    url: String,
    relay: SocketAddr,
    source: IpAddr,
    session: Session,
    keepalive: Duration,
    /// Counted among the gateways back after the relay restart.
    back: bool,
    /// Requests sent and not answered yet (kept across reconnects: the session replays
    /// them, and their answers follow).
    outstanding: VecDeque<(u32, u64)>,
    next_seq: u32,
}

struct Ctx {
    stats: Arc<Stats>,
    epoch: Instant,
    stop: CancellationToken,
    gateways: usize,
}

fn us_since(epoch: Instant) -> u64 {
    Instant::now().duration_since(epoch).as_micros() as u64
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(4 << 20))
        .max_frame_size(Some(4 << 20))
}

enum Ended {
    Retry { reached_peer: bool },
    Stop,
}

async fn run_endpoint(mut ep: Endpoint, ctx: Arc<Ctx>) {
    let mut backoff = Duration::from_millis(250);
    loop {
        if ctx.stop.is_cancelled() {
            return;
        }
        let conn = tokio::select! {
            _ = ctx.stop.cancelled() => return,
            c = tokio::time::timeout(Duration::from_secs(10), connect(&ep)) => c,
        };
        let ended = match conn {
            Ok(Ok(ws)) => {
                ctx.stats.connects.fetch_add(1, Ordering::Relaxed);
                drive(&mut ep, ws, &ctx).await
            }
            _ => {
                ctx.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                Ended::Retry {
                    reached_peer: false,
                }
            }
        };
        match ended {
            Ended::Stop => return,
            Ended::Retry { reached_peer } => {
                if reached_peer {
                    backoff = Duration::from_millis(250);
                }
                let wait = backoff.mul_f64(0.8 + 0.4 * fastrand::f64());
                backoff = (backoff * 2).min(Duration::from_secs(30));
                tokio::select! {
                    _ = ctx.stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(ep: &Endpoint) -> Result<Ws, String> {
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(SocketAddr::new(ep.source, 0))
        .map_err(|e| e.to_string())?;
    let tcp = sock.connect(ep.relay).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let mut req = ep
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(crate::wire::tunnel::SUBPROTOCOL),
    );
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(ws_config()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// Per-connection state the counters depend on.
#[derive(Default)]
struct ConnState {
    welcomed: bool,
    up: bool,
    reached_peer: bool,
}

impl ConnState {
    fn leave(&mut self, kind: Kind, stats: &Stats) {
        if self.welcomed {
            match kind {
                Kind::Gateway => stats.gw_welcomed.fetch_sub(1, Ordering::Relaxed),
                Kind::Operator { .. } => stats.op_welcomed.fetch_sub(1, Ordering::Relaxed),
            };
        }
        if self.up && matches!(kind, Kind::Operator { .. }) {
            stats.paired.fetch_sub(1, Ordering::Relaxed);
        }
        *self = ConnState {
            reached_peer: self.reached_peer,
            ..ConnState::default()
        };
    }
}

async fn drive(ep: &mut Endpoint, mut ws: Ws, ctx: &Ctx) -> Ended {
    let stats = &ctx.stats;
    let std_now = || Instant::now().into_std();
    ep.session.connected(std_now());
    let mut st = ConnState::default();
    let mut last_tx = Instant::now();
    let mut last_rx = Instant::now();
    let period = match ep.kind {
        Kind::Operator { rate } if rate > 0.0 => Some(Duration::from_secs_f64(1.0 / rate)),
        _ => None,
    };
    let mut next_req: Option<Instant> = None;
    let ended = 'conn: loop {
        // Write what the session has, then flush once.
        let now = std_now();
        let mut wrote = false;
        while let Some(t) = ep.session.poll_transmit(now) {
            let m = match t {
                Transmit::Text(x) => Message::Text(Utf8Bytes::from(x)),
                Transmit::Binary(b) => Message::Binary(b),
            };
            wrote = true;
            if ws.feed(m).await.is_err() {
                break 'conn Ended::Retry {
                    reached_peer: st.reached_peer,
                };
            }
        }
        if wrote {
            if ws.flush().await.is_err() {
                break 'conn Ended::Retry {
                    reached_peer: st.reached_peer,
                };
            }
            last_tx = Instant::now();
        }
        if !st.welcomed && matches!(ep.session.link(), Link::AwaitPeer | Link::Up) {
            st.welcomed = true;
            match ep.kind {
                Kind::Gateway => {
                    stats.gw_welcomed.fetch_add(1, Ordering::Relaxed);
                    let r = stats.restart_us.load(Ordering::Relaxed);
                    if r > 0 && ep.index < ctx.gateways && !ep.back {
                        ep.back = true;
                        let back = stats.back.fetch_add(1, Ordering::Relaxed) + 1;
                        if back == ctx.gateways as u64 {
                            stats
                                .all_back_us
                                .store(us_since(ctx.epoch).saturating_sub(r), Ordering::Relaxed);
                        }
                    }
                }
                Kind::Operator { .. } => {
                    stats.op_welcomed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        while let Some(ev) = ep.session.poll_event() {
            match ev {
                Event::Up { .. } => {
                    st.reached_peer = true;
                    if !st.up {
                        st.up = true;
                        if matches!(ep.kind, Kind::Operator { .. }) {
                            stats.paired.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if let Some(p) = period {
                        // Spread the pairs' request phases over one period.
                        next_req = Some(Instant::now() + p.mul_f64(fastrand::f64()));
                    }
                }
                Event::PeerDown { .. } => {
                    if st.up {
                        st.up = false;
                        if matches!(ep.kind, Kind::Operator { .. }) {
                            stats.paired.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                    next_req = None;
                }
                Event::Record(rec) => {
                    let RecordBody::IsoTp(p) = &rec.body else {
                        stats.error(
                            &stats.bad_answers,
                            format!("unexpected record kind {:?}", rec.body.kind()),
                        );
                        continue;
                    };
                    let t_rx = us_since(ctx.epoch);
                    match ep.kind {
                        Kind::Gateway => {
                            if p.data.len() == 15 {
                                let t0 = u64::from_be_bytes(
                                    p.data[7..15].try_into().unwrap_or_default(),
                                );
                                stats.one_way.record(t_rx.saturating_sub(t0));
                            }
                            match answer(ep.index, &p.data, t_rx, us_since(ctx.epoch)) {
                                Some(a) => {
                                    if let Err(e) = ep.session.send(std_now(), a, false) {
                                        stats.error(
                                            &stats.protocol_errors,
                                            format!("gateway send: {e}"),
                                        );
                                    }
                                    ep.session.flush(std_now());
                                }
                                None => stats.error(
                                    &stats.bad_answers,
                                    format!(
                                        "gateway got a request it does not know ({} bytes)",
                                        p.data.len()
                                    ),
                                ),
                            }
                        }
                        Kind::Operator { .. } => match ep.outstanding.pop_front() {
                            Some(want) => match check_answer(ep.index, want, &p.data) {
                                Ok((t0, _t1, t2)) => {
                                    stats.round_trips.fetch_add(1, Ordering::Relaxed);
                                    stats.rtt.record(t_rx.saturating_sub(t0));
                                    stats.one_way.record(t_rx.saturating_sub(t2));
                                }
                                Err(e) => stats.error(
                                    &stats.bad_answers,
                                    format!("session {}: {e}", ep.index),
                                ),
                            },
                            None => stats.error(
                                &stats.bad_answers,
                                format!("session {}: an answer nobody asked for", ep.index),
                            ),
                        },
                    }
                }
                Event::Dead => {
                    stats.dead.fetch_add(1, Ordering::Relaxed);
                    break 'conn Ended::Retry {
                        reached_peer: st.reached_peer,
                    };
                }
                Event::Bye { .. } => break 'conn Ended::Stop,
                Event::Control(crate::wire::tunnel::Control::Error { code, message, .. }) => {
                    stats.error(
                        &stats.protocol_errors,
                        format!("session {}: error {code}: {message}", ep.index),
                    );
                }
                _ => {}
            }
        }
        // Requests due.
        let now = Instant::now();
        if let (Some(t), Some(p)) = (next_req, period)
            && now >= t
            && st.up
        {
            let t0 = us_since(ctx.epoch);
            match ep.session.send(std_now(), request(ep.next_seq, t0), false) {
                Ok(_) => {
                    ep.outstanding.push_back((ep.next_seq, t0));
                    ep.next_seq = ep.next_seq.wrapping_add(1);
                    ep.session.flush(std_now());
                }
                Err(e) => stats.error(&stats.protocol_errors, format!("operator send: {e}")),
            }
            // Keep the schedule (no drift), but never try to catch up a backlog.
            let mut n = t + p;
            if n < now {
                n = now + p;
            }
            next_req = Some(n);
            continue;
        }
        // Hop keepalive while no end-to-end keepalive runs.
        let waiting = !matches!(ep.session.link(), Link::Up);
        if waiting && now >= last_tx + ep.keepalive {
            if ws.send(Message::Ping(Bytes::new())).await.is_err() {
                break 'conn Ended::Retry {
                    reached_peer: st.reached_peer,
                };
            }
            last_tx = Instant::now();
        }
        if waiting && now >= last_rx + ep.keepalive * 3 {
            stats.dead.fetch_add(1, Ordering::Relaxed);
            break 'conn Ended::Retry {
                reached_peer: st.reached_peer,
            };
        }
        let mut wake = ep
            .session
            .poll_at()
            .map(Instant::from_std)
            .unwrap_or(now + Duration::from_secs(3600));
        if waiting {
            wake = wake
                .min(last_tx + ep.keepalive)
                .min(last_rx + ep.keepalive * 3);
        }
        if let (Some(t), true) = (next_req, st.up) {
            wake = wake.min(t);
        }
        tokio::select! {
            _ = ctx.stop.cancelled() => {
                let _ = ws.close(None).await;
                break 'conn Ended::Stop;
            }
            _ = tokio::time::sleep_until(wake) => {}
            m = ws.next() => {
                last_rx = Instant::now();
                let now = std_now();
                let r = match m {
                    Some(Ok(Message::Text(t))) => ep.session.handle_text(now, &t),
                    Some(Ok(Message::Binary(b))) => ep.session.handle_binary(now, b),
                    Some(Ok(_)) => Ok(()),
                    _ => break 'conn Ended::Retry { reached_peer: st.reached_peer },
                };
                if let Err(e) = r {
                    let code = e.code();
                    if matches!(code.0, 100..=103) {
                        stats.error(&stats.refused, format!("session {}: refused: {e}", ep.index));
                    } else if code.0 != 104 && code.0 != 400 {
                        stats.error(&stats.protocol_errors, format!("session {}: {e}", ep.index));
                    }
                    break 'conn Ended::Retry { reached_peer: st.reached_peer };
                }
            }
        }
    };
    st.leave(ep.kind, stats);
    ep.session.disconnected(Instant::now().into_std());
    ended
}

// ---------------------------------------------------------------------------- /proc

/// The relay process's resident memory (bytes) and CPU time (seconds).
fn proc_sample(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((rss_kb * 1024, (utime + stime) as f64 / tck))
}

/// The process listening on `port` on this machine (from /proc/net/tcp and fd links).
fn pid_listening_on(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(t) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in t.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" {
                let p = f[1]
                    .rsplit(':')
                    .next()
                    .and_then(|h| u16::from_str_radix(h, 16).ok());
                if p == Some(port) {
                    inodes.push(format!("socket:[{}]", f[9]));
                }
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(l) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| l.as_os_str() == i.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// Raise the soft open-files limit to the hard one.
fn raise_nofile() -> u64 {
    crate::relay::raise_nofile().unwrap_or(0)
}

// ---------------------------------------------------------------------------- the run

struct SpawnedRelay {
    child: std::process::Child,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    tokens: PathBuf,
    args: Vec<String>,
}

fn spawn_relay(
    listen: &str,
    tokens: &std::path::Path,
    extra: &[String],
) -> anyhow::Result<(std::process::Child, SocketAddr, Option<SocketAddr>)> {
    use anyhow::Context;
    let exe = std::env::current_exe().context("finding this program")?;
    let mut child = std::process::Command::new(exe)
        .args(["relay", "--listen", listen, "--tokens"])
        .arg(tokens)
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .context("starting obdgw relay")?;
    let out = child.stdout.take().context("relay stdout")?;
    let mut reader = std::io::BufReader::new(out);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .context("reading the relay's address")?;
    let mut mline = String::new();
    if extra.iter().any(|a| a.starts_with("--metrics-listen")) {
        reader
            .read_line(&mut mline)
            .context("reading the relay's metrics address")?;
    }
    let metrics = mline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .and_then(|w| w.split('/').next())
        .and_then(|w| w.parse::<SocketAddr>().ok());
    // Keep reading what else it prints, so that it never writes into a closed pipe.
    std::thread::spawn(move || {
        let mut rest = String::new();
        while matches!(reader.read_line(&mut rest), Ok(n) if n > 0) {
            rest.clear();
        }
    });
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ws://"))
        .and_then(|w| w.trim_end_matches('/').parse::<SocketAddr>().ok())
        .with_context(|| format!("the relay did not print its address: {line:?}"))?;
    Ok((child, addr, metrics))
}

/// The relay's forwarding-latency histogram (cumulative counts per bucket, the last for
/// +Inf), from its `/metrics`.
fn relay_latency(metrics: SocketAddr) -> Option<Vec<u64>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&metrics, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: relay\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let v: Vec<u64> = body
        .lines()
        .filter(|l| l.starts_with("obdgw_relay_forward_latency_seconds_bucket"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (v.len() == crate::relay::metrics::LATENCY_BUCKETS_US.len() + 1).then_some(v)
}

/// The bucket bound under which the `p` quantile of the counts between two snapshots lies;
/// `None` without samples.
fn latency_quantile(start: &[u64], end: &[u64], p: f64) -> Option<String> {
    let d: Vec<u64> = end
        .iter()
        .zip(start)
        .map(|(e, s)| e.saturating_sub(*s))
        .collect();
    let total = *d.last()?;
    if total == 0 {
        return None;
    }
    let rank = ((p * total as f64).ceil() as u64).max(1);
    let bounds = crate::relay::metrics::LATENCY_BUCKETS_US;
    let i = d.iter().position(|&c| c >= rank)?;
    Some(match bounds.get(i) {
        Some(b) => format!("≤ {} ms", *b as f64 / 1000.0),
        None => format!("> {} ms", bounds[bounds.len() - 1] as f64 / 1000.0),
    })
}

fn loopback_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let uri: tokio_tungstenite::tungstenite::http::Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("relay URL {url}: {e}"))?;
    if uri.scheme_str() != Some("ws") {
        anyhow::bail!("relay URL {url}: the fleet simulator speaks ws:// on loopback only");
    }
    let host = uri
        .host()
        .ok_or_else(|| anyhow::anyhow!("relay URL {url}: no host"))?
        .trim_matches(|c| c == '[' || c == ']');
    let ip: IpAddr = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse()
            .map_err(|_| anyhow::anyhow!("relay URL {url}: host must be a loopback address"))?
    };
    if !ip.is_loopback() || !ip.is_ipv4() {
        anyhow::bail!("relay URL {url}: the fleet simulator runs on IPv4 loopback only");
    }
    Ok(SocketAddr::new(ip, uri.port_u16().unwrap_or(80)))
}

fn fmt_us(v: Option<u64>) -> String {
    match v {
        Some(us) if us >= 10_000 => format!("{:.1} ms", us as f64 / 1000.0),
        Some(us) => format!("{:.2} ms", us as f64 / 1000.0),
        None => "-".into(),
    }
}

/// Run `obdgw sim fleet`.
pub fn run_sim_fleet(args: FleetArgs) -> ExitCode {
    match run_inner(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("obdgw sim fleet: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_inner(args: FleetArgs) -> anyhow::Result<bool> {
    use anyhow::{Context, bail};
    if args.gateways == 0 || args.gateways > MAX_ENDPOINT_SESSIONS {
        bail!("--gateways must be 1..={MAX_ENDPOINT_SESSIONS}");
    }
    if args.active + args.operators > args.gateways {
        bail!("--active plus --operators must not exceed --gateways");
    }
    if !(args.rate > 0.0 && args.rate <= 1000.0) {
        bail!("--rate must be above 0 and at most 1000 per second");
    }
    if args.duration == 0 || args.duration > MAX_DURATION_S {
        bail!("--duration must be 1..={MAX_DURATION_S} seconds");
    }
    if args.sources == 0 || args.sources > 250 {
        bail!("--sources must be 1..=250");
    }
    if args.keepalive == 0 || args.connect_rate == 0 || args.report_every == 0 {
        bail!("--keepalive, --connect-rate and --report-every must be above 0");
    }
    if let Some(r) = args.restart_relay_at
        && r >= args.duration
    {
        bail!("--restart-relay-at must be within --duration");
    }
    // One spare session for the storm probe (a fresh pair).
    let spare = args.gateways;
    if let Some(path) = &args.write_tokens {
        std::fs::write(path, tokens_file(args.seed, args.gateways + 1))
            .with_context(|| format!("writing {}", path.display()))?;
        println!(
            "wrote {} sessions (seed {}) to {}",
            args.gateways + 1,
            args.seed,
            path.display()
        );
        return Ok(true);
    }
    let nofile = raise_nofile();
    let want_fds = (args.gateways + args.active + args.operators + 2) as u64 + 64;
    if nofile < want_fds {
        bail!(
            "the open-files limit is {nofile}, this run needs about {want_fds}: raise it (ulimit -Hn)"
        );
    }

    let mut spawned: Option<SpawnedRelay> = None;
    let (relay_addr, base) = if args.spawn_relay {
        let dir = std::env::temp_dir().join(format!("obdgw-fleet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let tokens = dir.join("tokens.toml");
        std::fs::write(&tokens, tokens_file(args.seed, args.gateways + 1))
            .with_context(|| format!("writing {}", tokens.display()))?;
        let mut extra = vec![
            "--max-sessions".to_string(),
            (args.gateways + 16).to_string(),
        ];
        if !args
            .relay_arg
            .iter()
            .any(|a| a.starts_with("--metrics-listen"))
        {
            extra.push("--metrics-listen=127.0.0.1:0".into());
        }
        extra.extend(args.relay_arg.iter().cloned());
        let (child, addr, metrics) = spawn_relay("127.0.0.1:0", &tokens, &extra)?;
        spawned = Some(SpawnedRelay {
            child,
            addr,
            metrics,
            tokens,
            args: extra,
        });
        (addr, format!("ws://{addr}/"))
    } else {
        let url = args.relay.clone().unwrap_or_default();
        (loopback_addr(&url)?, url)
    };
    let relay_pid = match (&spawned, args.relay_pid) {
        (Some(s), _) => Some(s.child.id()),
        (None, Some(p)) => Some(p),
        (None, None) => pid_listening_on(relay_addr.port()),
    };

    let rt = match args.threads {
        0 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.min(64))
            .enable_all()
            .build(),
    }
    .context("starting the tokio runtime")?;
    let result = rt.block_on(fleet(
        &args,
        relay_addr,
        &base,
        relay_pid,
        spare,
        &mut spawned,
    ));
    if let Some(mut s) = spawned {
        let _ = s.child.kill();
        let _ = s.child.wait();
        if let Some(d) = s.tokens.parent() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    result
}

fn make_endpoint(
    args: &FleetArgs,
    index: usize,
    kind: Kind,
    relay: SocketAddr,
    base: &str,
) -> Endpoint {
    let id = session_id(args.seed, index);
    let (g, o) = tokens(args.seed, index);
    let (role, token) = match kind {
        Kind::Gateway => (Role::Gateway, g),
        Kind::Operator { .. } => (Role::Operator, o),
    };
    let mut cfg = SessionConfig::new(role, id.clone(), Token(token), fastrand::u64(1..));
    cfg.capabilities = vec!["isotp".into()];
    // Acks ride on the next request or answer; a standalone ack is rarely needed.
    cfg.ack_delay = Duration::from_millis(200);
    cfg.agent = Some(concat!("obdgw-sim-fleet/", env!("CARGO_PKG_VERSION")).into());
    let source = IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        2 + (index % args.sources as usize) as u8,
    ));
    Endpoint {
        index,
        kind,
        url: crate::tunnel::client::session_url(base, &id),
        relay,
        source,
        session: Session::new(cfg, Instant::now().into_std()),
        keepalive: Duration::from_secs(args.keepalive),
        back: false,
        outstanding: VecDeque::new(),
        next_seq: 1,
    }
}

struct Sample {
    at: Instant,
    cpu_s: f64,
    rss: u64,
}

fn sample(pid: Option<u32>) -> Option<Sample> {
    let (rss, cpu_s) = proc_sample(pid?)?;
    Some(Sample {
        at: Instant::now(),
        cpu_s,
        rss,
    })
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

async fn fleet(
    args: &FleetArgs,
    relay: SocketAddr,
    base: &str,
    mut relay_pid: Option<u32>,
    spare: usize,
    spawned: &mut Option<SpawnedRelay>,
) -> anyhow::Result<bool> {
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let ctx = Arc::new(Ctx {
        stats: stats.clone(),
        epoch: Instant::now(),
        stop: stop.clone(),
        gateways: args.gateways,
    });
    let tasks = tokio_util::task::TaskTracker::new();
    let pairs = args.active + args.operators;
    println!(
        "sim fleet: {} gateways, {} active pairs at {}/s, {} idle pairs, relay {base} (pid {})",
        args.gateways,
        args.active,
        args.rate,
        args.operators,
        relay_pid.map_or("unknown".into(), |p| p.to_string())
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = sample(relay_pid);

    // Ramp up at the connect rate: gateways, then their operators.
    let t_ramp = Instant::now();
    let step = Duration::from_secs_f64(1.0 / args.connect_rate as f64);
    let mut next = Instant::now();
    let total = args.gateways + pairs;
    for n in 0..total {
        let (index, kind) = if n < args.gateways {
            (n, Kind::Gateway)
        } else {
            let i = n - args.gateways;
            let rate = if i < args.active { args.rate } else { 0.0 };
            (i, Kind::Operator { rate })
        };
        let ep = make_endpoint(args, index, kind, relay, base);
        tasks.spawn(run_endpoint(ep, ctx.clone()));
        next += step;
        if next > Instant::now() + Duration::from_millis(5) {
            tokio::time::sleep_until(next).await;
        }
    }
    let ramp_limit = Duration::from_secs(60) + step * total as u32;
    loop {
        let gw = stats.gw_welcomed.load(Ordering::Relaxed);
        let pr = stats.paired.load(Ordering::Relaxed);
        if gw >= args.gateways as i64 && pr >= pairs as i64 {
            break;
        }
        if t_ramp.elapsed() > ramp_limit {
            println!(
                "ramp-up incomplete after {:.0} s: {gw} of {} gateways welcomed, {pr} of {pairs} paired",
                t_ramp.elapsed().as_secs_f64(),
                args.gateways
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "ramp-up: {} gateways welcomed, {} pairs up in {:.1} s (connect failures so far: {})",
        stats.gw_welcomed.load(Ordering::Relaxed),
        stats.paired.load(Ordering::Relaxed),
        t_ramp.elapsed().as_secs_f64(),
        stats.connect_failures.load(Ordering::Relaxed)
    );
    // Let the first keepalives and acks settle, then measure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stats.one_way.reset();
    stats.rtt.reset();
    let rt0 = stats.round_trips.load(Ordering::Relaxed);
    let err0 = stats.errors();
    let relay_metrics = spawned
        .as_ref()
        .and_then(|s| s.metrics)
        .or(args.relay_metrics);
    let lat0 = relay_metrics.and_then(relay_latency);
    let start = sample(relay_pid);
    let t0 = Instant::now();
    let mut last = start.as_ref().map(|s| (s.at, s.cpu_s));
    let mut peak_rss = start.as_ref().map_or(0, |s| s.rss);
    let mut storm: Option<(Instant, usize)> = None;
    let mut probe_paired: Option<Duration> = None;
    let mut probe_stop: Option<CancellationToken> = None;
    let mut probe_stats: Option<Arc<Stats>> = None;
    let mut next_report = t0 + Duration::from_secs(args.report_every);
    let end = t0 + Duration::from_secs(args.duration);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(s) = sample(relay_pid) {
            peak_rss = peak_rss.max(s.rss);
        }
        if let (Some(at), None) = (args.restart_relay_at, &storm)
            && t0.elapsed() >= Duration::from_secs(at)
            && let Some(sp) = spawned.as_mut()
        {
            // The storm: kill the relay and start it again on the same port.
            let _ = sp.child.kill();
            let _ = sp.child.wait();
            let listen = sp.addr.to_string();
            let mut tries = 0;
            let (child, _, _) = loop {
                match spawn_relay(&listen, &sp.tokens, &sp.args) {
                    Ok(x) => break x,
                    Err(e) if tries < 20 => {
                        tries += 1;
                        tracing::debug!(error = %e, "relay restart failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            relay_pid = Some(child.id());
            sp.child = child;
            let restart = us_since(ctx.epoch).max(1);
            stats.restart_us.store(restart, Ordering::Relaxed);
            peak_rss = 0;
            last = sample(relay_pid).map(|s| (s.at, s.cpu_s));
            println!("storm: relay killed and restarted (pid {})", sp.child.id());
            // A fresh pair (never connected before) during the storm.
            let pstats = Arc::new(Stats::default());
            let pstop = CancellationToken::new();
            let pctx = Arc::new(Ctx {
                stats: pstats.clone(),
                epoch: ctx.epoch,
                stop: pstop.clone(),
                gateways: 0,
            });
            // From its own address (127.0.0.1; the fleet uses 127.0.0.2 and up): a new
            // pair comes from another garage than the boxes that reconnect.
            for kind in [Kind::Gateway, Kind::Operator { rate: args.rate }] {
                let mut ep = make_endpoint(args, spare, kind, relay, base);
                ep.source = IpAddr::V4(Ipv4Addr::LOCALHOST);
                tasks.spawn(run_endpoint(ep, pctx.clone()));
            }
            storm = Some((Instant::now(), 0));
            probe_stop = Some(pstop);
            probe_stats = Some(pstats);
        }
        if let (Some((at, _)), None, Some(ps)) = (storm, probe_paired, &probe_stats)
            && ps.paired.load(Ordering::Relaxed) > 0
        {
            probe_paired = Some(at.elapsed());
            println!(
                "storm: the fresh pair paired {:.2} s after the restart",
                at.elapsed().as_secs_f64()
            );
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(args.report_every);
            let s = sample(relay_pid);
            let cpu = match (&s, last) {
                (Some(s), Some((at, c))) => {
                    let dt = s.at.duration_since(at).as_secs_f64().max(1e-3);
                    format!("{:.1} %", 100.0 * (s.cpu_s - c) / dt)
                }
                _ => "-".into(),
            };
            last = s.as_ref().map(|s| (s.at, s.cpu_s));
            println!(
                "t={:>4.0}s gateways {} operators {} paired {} rt {} errors {} one-way p50 {} p99 {} relay rss {} cpu {cpu}",
                t0.elapsed().as_secs_f64(),
                stats.gw_welcomed.load(Ordering::Relaxed),
                stats.op_welcomed.load(Ordering::Relaxed),
                stats.paired.load(Ordering::Relaxed),
                stats.round_trips.load(Ordering::Relaxed) - rt0,
                stats.errors() - err0,
                fmt_us(stats.one_way.quantile(0.5)),
                fmt_us(stats.one_way.quantile(0.99)),
                s.map_or("-".into(), |s| mib(s.rss)),
            );
            if let Some((at, _)) = storm {
                let back = stats.back.load(Ordering::Relaxed);
                let all = stats.all_back_us.load(Ordering::Relaxed);
                println!(
                    "storm: {back} of {} gateways back after {:.1} s{}",
                    args.gateways,
                    at.elapsed().as_secs_f64(),
                    if all > 0 {
                        format!(" (all back at {:.2} s)", all as f64 / 1e6)
                    } else {
                        String::new()
                    }
                );
            }
        }
    }
    let endsample = sample(relay_pid);
    let lat1 = relay_metrics.and_then(relay_latency);
    let elapsed = t0.elapsed().as_secs_f64();
    let rts = stats.round_trips.load(Ordering::Relaxed) - rt0;
    let errors = stats.errors() - err0;
    let (gw_end, paired_end) = (
        stats.gw_welcomed.load(Ordering::Relaxed).max(0),
        stats.paired.load(Ordering::Relaxed).max(0),
    );
    if let Some(p) = probe_stop {
        p.cancel();
    }
    stop.cancel();
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await;

    // The report.
    let conns = (args.gateways + pairs) as f64;
    println!("--- sim fleet report ({elapsed:.0} s measured) ---");
    println!(
        "gateways welcomed {gw_end} of {}, pairs up {paired_end} of {pairs}",
        args.gateways
    );
    println!(
        "round trips {rts} ({:.0}/s), errors {errors}, connect failures {}, dead connections {}, connections made {}",
        rts as f64 / elapsed,
        stats.connect_failures.load(Ordering::Relaxed),
        stats.dead.load(Ordering::Relaxed),
        stats.connects.load(Ordering::Relaxed),
    );
    println!(
        "one-way latency (one relay pass) p50 {} p99 {} p99.9 {} max {}; round trip p50 {} p99 {} ({} samples)",
        fmt_us(stats.one_way.quantile(0.5)),
        fmt_us(stats.one_way.quantile(0.99)),
        fmt_us(stats.one_way.quantile(0.999)),
        fmt_us(stats.one_way.quantile(1.0)),
        fmt_us(stats.rtt.quantile(0.5)),
        fmt_us(stats.rtt.quantile(0.99)),
        stats.rtt.count()
    );
    if let (Some(a), Some(b), None) = (&lat0, &lat1, &storm) {
        println!(
            "relay's own forwarding latency (read to written, from its /metrics): p50 {} p99 {} p99.9 {} ({} messages)",
            latency_quantile(a, b, 0.5).unwrap_or_else(|| "-".into()),
            latency_quantile(a, b, 0.99).unwrap_or_else(|| "-".into()),
            latency_quantile(a, b, 0.999).unwrap_or_else(|| "-".into()),
            b.last().unwrap_or(&0) - a.last().unwrap_or(&0),
        );
    }
    if let Some(e) = stats
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        println!("first error: {e}");
    }
    match (before, &start, &endsample) {
        (Some(b), Some(s), Some(e)) => {
            let cpu = if storm.is_some() {
                // A new process since the restart: its CPU time started from zero.
                "n/a (the relay was restarted)".to_string()
            } else {
                let c =
                    100.0 * (e.cpu_s - s.cpu_s) / e.at.duration_since(s.at).as_secs_f64().max(1e-3);
                format!("{c:.1} % of one core over the measurement")
            };
            println!(
                "relay: rss {} before, {} connected ({} connections: {:.1} KiB each), {} at the end; peak {}; cpu {cpu}",
                mib(b.rss),
                mib(s.rss),
                conns,
                (s.rss.saturating_sub(b.rss)) as f64 / conns / 1024.0,
                mib(e.rss),
                mib(peak_rss),
            );
        }
        _ => println!("relay: RSS and CPU unknown (not a local process; pass --relay-pid)"),
    }
    let mut ok = errors == 0;
    if let Some((_, _)) = storm {
        let all = stats.all_back_us.load(Ordering::Relaxed);
        let back = stats.back.load(Ordering::Relaxed);
        if all > 0 {
            println!(
                "storm: all {} gateways back {:.2} s after the restart; relay peak rss {} during the storm",
                args.gateways,
                all as f64 / 1e6,
                mib(peak_rss)
            );
        } else {
            println!(
                "storm: only {back} of {} gateways back by the end",
                args.gateways
            );
            ok = false;
        }
        match probe_paired {
            Some(d) => println!("storm: the fresh pair paired in {:.2} s", d.as_secs_f64()),
            None => {
                println!("storm: the fresh pair did not pair");
                ok = false;
            }
        }
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_tokens_are_canonical_distinct_and_reproducible() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..2000 {
            let id = session_id(7, i);
            assert!(crate::wire::tunnel::valid_session_id(&id), "{id}");
            assert!(seen.insert(id.clone()));
            assert_eq!(session_id(7, i), id);
        }
        assert_ne!(session_id(7, 0), session_id(8, 0));
        let (g, o) = tokens(7, 3);
        assert_ne!(g, o);
        assert_eq!(tokens(7, 3), (g, o));
        let file = tokens_file(7, 3);
        let parsed = crate::relay::StaticTokens::from_toml(&file).unwrap();
        let _ = parsed;
    }

    #[test]
    fn answers_are_checked_field_by_field() {
        let RecordBody::IsoTp(req) = request(42, 1234).body else {
            panic!()
        };
        let RecordBody::IsoTp(ans) = answer(5, &req.data, 1300, 1310).unwrap().body else {
            panic!()
        };
        assert_eq!(
            check_answer(5, (42, 1234), &ans.data),
            Ok((1234, 1300, 1310))
        );
        assert!(check_answer(5, (43, 1234), &ans.data).is_err());
        assert!(check_answer(6, (42, 1234), &ans.data).is_err());
        assert!(check_answer(5, (42, 1234), &ans.data[..47]).is_err());
        assert!(answer(5, &ans.data, 0, 0).is_none());
    }

    #[test]
    fn histogram_quantiles() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for us in 1..=100 {
            h.record(us * 10);
        }
        assert_eq!(h.quantile(0.5), Some(510));
        assert_eq!(h.quantile(0.99), Some(1000));
        h.record(10_000_000);
        assert_eq!(h.quantile(1.0), Some(200_010));
        h.reset();
        assert_eq!(h.count(), 0);
    }

    #[test]
    fn only_loopback_relays() {
        assert!(loopback_addr("ws://127.0.0.1:8443/").is_ok());
        assert!(loopback_addr("ws://localhost:1/x").is_ok());
        assert!(loopback_addr("ws://10.0.0.1:8443/").is_err());
        assert!(loopback_addr("wss://127.0.0.1:8443/").is_err());
        assert!(loopback_addr("ws://example.com/").is_err());
    }
}
