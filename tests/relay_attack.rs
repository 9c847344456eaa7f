//! The attacker suite: the real `obdgw relay` process on loopback under five attacks at
//! once, while a legitimate gateway and operator pair and keep a session at 1,000
//! UDS-like round trips per second, and the relay's memory stays under a stated bound.
//!
//! Attacks (each from its own loopback source addresses, 127.0.0.10 and up; the pair comes
//! from 127.0.0.2 and 127.0.0.3, as it would from other garages):
//! - garbage: random bytes, and HTTP heads followed by junk;
//! - oversize pre-hello messages: a 64 KiB text frame, a 16 MiB binary frame header, and a
//!   message fragmented into small frames that add up past 4 KiB;
//! - slowloris: upgrade requests sent one byte every 300 ms, 150 connections kept per
//!   source (the relay holds 64 per source);
//! - brute force: 1,000 hellos per second with wrong tokens for the live session, and now
//!   and then the right operator token once the source has failed hundreds of times (it
//!   must be refused: a throttled source is not checked at all);
//! - half-open: TCP connections that send nothing, websockets that never say hello, and
//!   connections that half-close in the middle of their request.
//!
//! Bounded: about 10 s of attack and 6 s of traffic; every task stops with the test.
//! The relay runs with its defaults except: `--hello-timeout 3` (so slowloris connections
//! churn within the test) and `--auth-fail-rate 0.05` (so a throttled source earns no try
//! back during the test, which makes the right-token probe deterministic).
//!
//! What makes it pass is the relay's admission control. With `--preauth-per-source 0
//! --preauth-evict-after 0` the attackers fill the global pre-auth cap and the pair takes
//! more than 1 s to connect; with `--auth-fail-burst 0` the right-token probe is accepted
//! and replaces the pair's operator (checked by hand, see `docs/benchmarks-relay.md`).
//! `OBDGW_ATTACK_RELAY_ARGS` appends relay arguments for such experiments.

mod common;

use common::procs::Procs;
use futures_util::{SinkExt, StreamExt};
use obdgw::wire::tunnel::{Control, Hello, Limits, Resume, Role, SUBPROTOCOL, Token};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

const SID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab";
const GW_TOKEN: &str = "gw-5f0c1e7a9b2d4c6e8f1a3b5c7d9e0f21";
const OP_TOKEN: &str = "op-8e1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b";

/// The relay's memory bound under this attack. The relay holds at most 1,024
/// unauthenticated connections (its default `--preauth-max`), each with at most a 4 KiB
/// read buffer and a 16 KiB input budget; measured (debug build, 2 runtime threads):
/// about 22 MiB idle, about 27 KiB per unauthenticated connection including allocator
/// slack, peak 38-45 MiB. Stated bound: the growth over idle stays under 1,024 x 32 KiB
/// (32 MiB), and the peak (VmHWM, the kernel's high-water mark) under 56 MiB.
const RSS_BOUND_MIB: u64 = 56;
const GROWTH_BOUND_KIB: u64 = 1024 * 32;

/// Seconds of UDS-like traffic at 1,000 round trips per second.
const TRAFFIC_S: u64 = 5;
const RATE: u64 = 1000;

fn src(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

async fn tcp_from(source: IpAddr, relay: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(source, 0))?;
    let t = s.connect(relay).await?;
    let _ = t.set_nodelay(true);
    Ok(t)
}

fn upgrade_head(relay: SocketAddr) -> Vec<u8> {
    format!(
        "GET /v1/sessions/{SID} HTTP/1.1\r\nHost: {relay}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
    )
    .into_bytes()
}

/// A masked client frame header (and payload, when given).
fn frame(fin: bool, opcode: u8, len: u64, payload: &[u8]) -> Vec<u8> {
    let key = [0x11, 0x22, 0x33, 0x44];
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&len.to_be_bytes());
    }
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

fn hello(role: Role, token: &str) -> Hello {
    Hello {
        version: 1,
        role,
        session: SID.into(),
        token: Token(token.into()),
        instance: fastrand::u64(1..),
        capabilities: vec!["isotp".into()],
        resume: Resume {
            peer_instance: None,
            last_received: 0,
        },
        limits: Limits::default(),
        agent: Some("relay_attack".into()),
    }
}

/// Read until the HTTP response head is complete (or the relay closes); the bytes read.
async fn read_head(t: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match t.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// Read everything until the relay closes (bounded in time and size).
async fn read_rest(t: &mut TcpStream, got: &mut Vec<u8>, limit: Duration) {
    let mut buf = [0u8; 2048];
    let _ = tokio::time::timeout(limit, async {
        while got.len() < 64 * 1024 {
            match t.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
}

/// What each attack did.
#[derive(Default)]
struct Counts {
    /// Connections opened (or tried).
    tries: AtomicU64,
    /// Connections the relay ended (closed, reset, refused).
    ended: AtomicU64,
    /// Hellos sent (brute force).
    hellos: AtomicU64,
    /// Right-token hellos sent from a throttled source.
    right_tries: AtomicU64,
    /// Any attacker connection that got a `welcome`: must stay 0.
    welcomed: AtomicU64,
}

struct Attack {
    relay: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Attack {
    fn on(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }

    async fn garbage(self: Arc<Self>, source: IpAddr, c: Arc<Counts>) {
        let mut n = 0u64;
        while self.on() {
            n += 1;
            c.tries.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut t) = tcp_from(source, self.relay).await {
                let mut junk: Vec<u8> = if n.is_multiple_of(2) {
                    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n".to_vec()
                } else {
                    Vec::new()
                };
                junk.extend((0..fastrand::usize(1..16 * 1024)).map(|_| fastrand::u8(..)));
                let _ = t.write_all(&junk).await;
                let mut got = Vec::new();
                read_rest(&mut t, &mut got, Duration::from_secs(4)).await;
                if String::from_utf8_lossy(&got).contains("\"welcome\"") {
                    c.welcomed.fetch_add(1, Ordering::Relaxed);
                }
                c.ended.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn oversize(self: Arc<Self>, source: IpAddr, c: Arc<Counts>) {
        let mut n = 0u64;
        while self.on() {
            n += 1;
            c.tries.fetch_add(1, Ordering::Relaxed);
            let Ok(mut t) = tcp_from(source, self.relay).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = t.write_all(&upgrade_head(self.relay)).await;
            let head = read_head(&mut t).await;
            if head.starts_with(b"HTTP/1.1 101") {
                let msg: Vec<u8> = match n % 3 {
                    // A 64 KiB text "hello".
                    0 => frame(true, 1, 64 * 1024, &[b'{'; 64 * 1024]),
                    // The header of a 16 MiB binary message, then some of it.
                    1 => frame(true, 2, 16 << 20, &[0u8; 8192]),
                    // Small fragments that add up past 4 KiB.
                    _ => {
                        let mut m = frame(false, 1, 1000, &[b' '; 1000]);
                        for _ in 0..7 {
                            m.extend(frame(false, 0, 1000, &[b' '; 1000]));
                        }
                        m
                    }
                };
                let _ = t.write_all(&msg).await;
                let mut got = Vec::new();
                read_rest(&mut t, &mut got, Duration::from_secs(4)).await;
                if String::from_utf8_lossy(&got).contains("\"welcome\"") {
                    c.welcomed.fetch_add(1, Ordering::Relaxed);
                }
            }
            c.ended.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One slowloris connection: the upgrade request, one byte every 300 ms.
    async fn slowloris(self: Arc<Self>, source: IpAddr, c: Arc<Counts>) {
        while self.on() {
            c.tries.fetch_add(1, Ordering::Relaxed);
            let mut sent = 0;
            if let Ok(mut t) = tcp_from(source, self.relay).await {
                let head = upgrade_head(self.relay);
                for b in head.iter().take(head.len() - 1) {
                    if !self.on() || t.write_all(&[*b]).await.is_err() {
                        break;
                    }
                    sent += 1;
                    // A closed connection shows as a read of 0 bytes.
                    let mut probe = [0u8; 64];
                    match tokio::time::timeout(Duration::from_millis(300), t.read(&mut probe)).await
                    {
                        Ok(_) => break,
                        Err(_) => continue,
                    }
                }
                c.ended.fetch_add(1, Ordering::Relaxed);
            }
            // Turned away at once (the per-source cap): come back a little later.
            let pause = if sent <= 1 { 1000 } else { 250 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    /// Hellos at `per_s` per second from `source`; after `right_after` of them, every 50th
    /// carries the right operator token.
    async fn brute(self: Arc<Self>, source: IpAddr, per_s: u64, c: Arc<Counts>) {
        let wrong = Control::Hello(hello(Role::Operator, "not-the-token")).to_text();
        let right = Control::Hello(hello(Role::Operator, OP_TOKEN)).to_text();
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_s));
        let inflight = Arc::new(tokio::sync::Semaphore::new(256));
        let mut n = 0u64;
        let right_after = 300;
        while self.on() {
            tick.tick().await;
            let Ok(permit) = inflight.clone().try_acquire_owned() else {
                continue;
            };
            n += 1;
            let is_right = n > right_after && n.is_multiple_of(50);
            let text = if is_right {
                right.clone()
            } else {
                wrong.clone()
            };
            let (me, c) = (self.clone(), c.clone());
            tokio::spawn(async move {
                let _permit = permit;
                c.tries.fetch_add(1, Ordering::Relaxed);
                let Ok(mut t) = tcp_from(source, me.relay).await else {
                    return;
                };
                let _ = t.write_all(&upgrade_head(me.relay)).await;
                let mut got = read_head(&mut t).await;
                if got.starts_with(b"HTTP/1.1 101") {
                    if is_right {
                        c.right_tries.fetch_add(1, Ordering::Relaxed);
                    }
                    c.hellos.fetch_add(1, Ordering::Relaxed);
                    let _ = t
                        .write_all(&frame(true, 1, text.len() as u64, text.as_bytes()))
                        .await;
                    read_rest(&mut t, &mut got, Duration::from_secs(5)).await;
                    if String::from_utf8_lossy(&got).contains("\"welcome\"") {
                        c.welcomed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                c.ended.fetch_add(1, Ordering::Relaxed);
            });
        }
    }

    /// Half-open connections: silent TCP, a websocket without hello, a request cut by a
    /// half-close. Each reopens after the relay ends it.
    async fn half_open(self: Arc<Self>, source: IpAddr, kind: u8, c: Arc<Counts>) {
        while self.on() {
            c.tries.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut t) = tcp_from(source, self.relay).await {
                match kind {
                    0 => {}
                    1 => {
                        let _ = t.write_all(&upgrade_head(self.relay)).await;
                    }
                    _ => {
                        let _ = t.write_all(&upgrade_head(self.relay)[..30]).await;
                        let _ = t.shutdown().await;
                    }
                }
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                while self.on() {
                    match tokio::time::timeout(Duration::from_millis(200), t.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                        Err(_) => {}
                    }
                }
                if String::from_utf8_lossy(&got).contains("\"welcome\"") {
                    c.welcomed.fetch_add(1, Ordering::Relaxed);
                }
                c.ended.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A legitimate endpoint: connect from `source`, say hello, wait for `welcome` and `peer`.
async fn endpoint(relay: SocketAddr, source: IpAddr, role: Role, token: &str) -> Ws {
    let tcp = tcp_from(source, relay).await.expect("connect");
    let mut req = format!("ws://{relay}/v1/sessions/{SID}")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("websocket handshake");
    ws.send(Message::Text(Utf8Bytes::from(
        Control::Hello(hello(role, token)).to_text(),
    )))
    .await
    .unwrap();
    let mut welcomed = false;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => match Control::parse(&t) {
                Ok(Control::Welcome(_)) => welcomed = true,
                Ok(Control::Peer(_)) if welcomed => return ws,
                other => panic!("{role:?}: unexpected {other:?}"),
            },
            Some(Ok(_)) => continue,
            other => panic!("{role:?}: connection ended before pairing: {other:?}"),
        }
    }
}

/// ReadDataByIdentifier VIN (0x22 F1 90) with a sequence number.
fn request(seq: u32) -> bytes::Bytes {
    let mut b = vec![0x22, 0xF1, 0x90];
    b.extend_from_slice(&seq.to_be_bytes());
    b.into()
}

fn answer(req: &[u8]) -> Option<bytes::Bytes> {
    if req.len() != 7 || req[..3] != [0x22, 0xF1, 0x90] {
        return None;
    }
    let mut b = vec![0x62, 0xF1, 0x90];
    b.extend_from_slice(b"WVWZZZ1KZAM000001");
    b.extend_from_slice(&req[3..7]);
    Some(b.into())
}

struct Traffic {
    pair_time: Duration,
    sent: u64,
    answered: u64,
    bad: u64,
    window: Duration,
    rtt_us: Vec<u64>,
}

/// The legitimate pair: pairs, then `TRAFFIC_S` seconds at `RATE` round trips per second.
async fn legitimate(relay: SocketAddr) -> Traffic {
    let t0 = Instant::now();
    let (gw, op) = tokio::join!(
        endpoint(relay, src(2), Role::Gateway, GW_TOKEN),
        endpoint(relay, src(3), Role::Operator, OP_TOKEN)
    );
    let pair_time = t0.elapsed();
    // The gateway answers every request.
    let gateway = tokio::spawn(async move {
        let (mut sink, mut stream) = gw.split();
        while let Some(Ok(m)) = stream.next().await {
            if let Message::Binary(b) = m {
                let a = answer(&b).unwrap_or_default();
                if sink.send(Message::Binary(a)).await.is_err() {
                    break;
                }
            }
        }
    });
    let (mut sink, mut stream) = op.split();
    let sent_at = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let total = TRAFFIC_S * RATE;
    let sender = {
        let sent_at = sent_at.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for seq in 0..total as u32 {
                tick.tick().await;
                sent_at.lock().unwrap().push(Instant::now());
                if sink.send(Message::Binary(request(seq))).await.is_err() {
                    break;
                }
            }
            sink
        })
    };
    let start = Instant::now();
    let (mut answered, mut bad) = (0u64, 0u64);
    let mut rtt_us = Vec::with_capacity(total as usize);
    let limit = start + Duration::from_secs(TRAFFIC_S + 3);
    while answered + bad < total {
        let m = match tokio::time::timeout_at(limit.into(), stream.next()).await {
            Ok(Some(Ok(m))) => m,
            _ => break,
        };
        let Message::Binary(b) = m else { continue };
        let ok = b.len() == 24 && b[..3] == [0x62, 0xF1, 0x90];
        let seq = if ok {
            u32::from_be_bytes([b[20], b[21], b[22], b[23]])
        } else {
            u32::MAX
        };
        if ok && seq as u64 == answered + bad {
            let at = sent_at.lock().unwrap()[seq as usize];
            rtt_us.push(at.elapsed().as_micros() as u64);
            answered += 1;
        } else {
            bad += 1;
        }
    }
    let window = start.elapsed();
    let sent = sent_at.lock().unwrap().len() as u64;
    if let Ok(mut sink) = sender.await {
        let _ = sink.close().await;
    }
    gateway.abort();
    rtt_us.sort_unstable();
    Traffic {
        pair_time,
        sent,
        answered,
        bad,
        window,
        rtt_us,
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn metrics(addr: SocketAddr) -> String {
    let mut t = TcpStream::connect(addr).await.unwrap();
    t.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut s = String::new();
    let _ = t.read_to_string(&mut s).await;
    s
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_serves_a_pair_while_under_attack() {
    let t_test = Instant::now();
    let mut procs = Procs::new();
    let tokens = procs.path("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[session]]\nid = \"{SID}\"\ngateway_token = \"{GW_TOKEN}\"\noperator_token = \"{OP_TOKEN}\"\n"
        ),
    )
    .unwrap();
    let mut args: Vec<String> = [
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--tokens",
        tokens.to_str().unwrap(),
        "--metrics-listen",
        "127.0.0.1:0",
        "--hello-timeout",
        "3",
        "--auth-fail-rate",
        "0.05",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Ok(extra) = std::env::var("OBDGW_ATTACK_RELAY_ARGS") {
        args.extend(extra.split_whitespace().map(str::to_string));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = procs.spawn("relay", &argv, &[]);
    let relay = procs
        .line(r, "its address", |l| {
            l.split("ws://")
                .nth(1)?
                .split('/')
                .next()?
                .parse::<SocketAddr>()
                .ok()
        })
        .await;
    let metrics_addr = procs
        .line(r, "its metrics address", |l| {
            l.split("http://")
                .nth(1)?
                .split('/')
                .next()?
                .parse::<SocketAddr>()
                .ok()
        })
        .await;
    let pid = procs.procs[r].child.id();
    let idle_kib = status_kib(pid, "VmRSS:");

    // The attack, on its own runtime (its own thread), so that it and the pair compete
    // for the CPU as separate parties.
    let stop = Arc::new(AtomicBool::new(false));
    let t_attack = Instant::now();
    let (garbage, oversize, slow, brute, half) = (
        Arc::new(Counts::default()),
        Arc::new(Counts::default()),
        Arc::new(Counts::default()),
        Arc::new(Counts::default()),
        Arc::new(Counts::default()),
    );
    let attacker = {
        let attack = Arc::new(Attack {
            relay,
            stop: stop.clone(),
        });
        let (garbage, oversize, slow, brute, half) = (
            garbage.clone(),
            oversize.clone(),
            slow.clone(),
            brute.clone(),
            half.clone(),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                for i in 0..2 {
                    tasks.spawn(attack.clone().garbage(src(10 + i), garbage.clone()));
                    tasks.spawn(attack.clone().oversize(src(20 + i), oversize.clone()));
                }
                // 4 sources x 150 slowloris connections (the relay holds 64 per source;
                // without that cap these and the half-open ones fill its global cap).
                for i in 0..4 {
                    for _ in 0..150 {
                        tasks.spawn(attack.clone().slowloris(src(30 + i), slow.clone()));
                    }
                }
                // 1,000 hellos per second from 4 sources.
                for i in 0..4 {
                    tasks.spawn(attack.clone().brute(src(40 + i), 250, brute.clone()));
                }
                // 2 sources x 3 kinds x 30 half-open connections.
                for i in 0..2 {
                    for kind in 0..3 {
                        for _ in 0..30 {
                            tasks.spawn(attack.clone().half_open(src(50 + i), kind, half.clone()));
                        }
                    }
                }
                while tasks.join_next().await.is_some() {}
            });
        })
    };

    // Let the attack reach full strength (slowloris and half-open places taken, brute-force
    // sources throttled), then the pair.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m_before = metrics(metrics_addr).await;
    let peak_preauth = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (peak, stop) = (peak_preauth.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let m = metrics(metrics_addr).await;
                peak.fetch_max(
                    metric(&m, "obdgw_relay_connections_preauth"),
                    Ordering::Relaxed,
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let traffic = tokio::time::timeout(Duration::from_secs(20), legitimate(relay))
        .await
        .unwrap_or_else(|_| procs.fail("the legitimate pair did not finish within 20 s"));
    let attacked_for = t_attack.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    tokio::task::spawn_blocking(move || attacker.join())
        .await
        .unwrap()
        .unwrap();
    let m = metrics(metrics_addr).await;
    let hwm_kib = status_kib(pid, "VmHWM:");
    let rss_kib = status_kib(pid, "VmRSS:");

    let q = |p: f64| {
        traffic
            .rtt_us
            .get(
                ((traffic.rtt_us.len() as f64 * p) as usize)
                    .min(traffic.rtt_us.len().saturating_sub(1)),
            )
            .copied()
            .unwrap_or(0)
    };
    let n = |c: &Counts| {
        format!(
            "{} tries, {} ended by the relay",
            c.tries.load(Ordering::Relaxed),
            c.ended.load(Ordering::Relaxed)
        )
    };
    let report = format!(
        "pair: paired in {:.0} ms; {} of {} round trips answered in {:.2} s ({} bad), rtt p50 {} us p99 {} us max {} us\n\
         relay memory: idle {} KiB, peak (VmHWM) {} KiB, at end {} KiB (bound {} MiB)\n\
         attack for {:.1} s: garbage {}; oversize {}; slowloris {}; half-open {}; brute force {} ({} hellos, {} right-token hellos from throttled sources)\n\
         relay: preauth peak {} (sampled), admission drops per_source {} deadline {} handshake {} preauth_bytes {}; refusals bad_hello {} auth_failed {}; auth throttled {}; accept throttled {}; hellos accepted {}",
        traffic.pair_time.as_secs_f64() * 1e3,
        traffic.answered,
        traffic.sent,
        traffic.window.as_secs_f64(),
        traffic.bad,
        q(0.5),
        q(0.99),
        traffic.rtt_us.last().copied().unwrap_or(0),
        idle_kib,
        hwm_kib,
        rss_kib,
        RSS_BOUND_MIB,
        attacked_for.as_secs_f64(),
        n(&garbage),
        n(&oversize),
        n(&slow),
        n(&half),
        n(&brute),
        brute.hellos.load(Ordering::Relaxed),
        brute.right_tries.load(Ordering::Relaxed),
        peak_preauth.load(Ordering::Relaxed),
        metric(
            &m,
            "obdgw_relay_admission_drops_total{reason=\"per_source\"}"
        ),
        metric(&m, "obdgw_relay_admission_drops_total{reason=\"deadline\"}"),
        metric(
            &m,
            "obdgw_relay_admission_drops_total{reason=\"handshake\"}"
        ),
        metric(
            &m,
            "obdgw_relay_admission_drops_total{reason=\"preauth_bytes\"}"
        ),
        metric(&m, "obdgw_relay_refusals_total{code=\"bad_hello\"}"),
        metric(&m, "obdgw_relay_refusals_total{code=\"auth_failed\"}"),
        metric(&m, "obdgw_relay_auth_throttled_total"),
        metric(&m, "obdgw_relay_accept_throttled_total"),
        metric(&m, "obdgw_relay_hellos_accepted_total"),
    );
    println!("{report}");
    let mut check = |ok: bool, what: &str| {
        if !ok {
            procs.fail(&format!("{what}\n{report}"));
        }
    };

    // The pair.
    check(
        traffic.pair_time < Duration::from_secs(1),
        "the legitimate pair took 1 s or more to pair",
    );
    check(
        traffic.sent == TRAFFIC_S * RATE && traffic.answered == traffic.sent && traffic.bad == 0,
        "not every round trip was answered, in order and correct",
    );
    check(
        traffic.window < Duration::from_secs_f64(TRAFFIC_S as f64 * 1.1),
        "the session did not keep 1,000 round trips per second (within 10 %)",
    );
    // Nobody else got in; the right token from a throttled source was not even checked.
    for c in [&garbage, &oversize, &slow, &brute, &half] {
        check(
            c.welcomed.load(Ordering::Relaxed) == 0,
            "an attacker connection was welcomed",
        );
    }
    check(
        brute.right_tries.load(Ordering::Relaxed) > 0,
        "the brute force never sent its right-token probe",
    );
    check(
        metric(&m, "obdgw_relay_hellos_accepted_total") == 2,
        "the relay accepted hellos besides the pair's two",
    );
    // The attack happened at the stated strength, and each defence shows in the metrics.
    let secs = attacked_for.as_secs_f64();
    check(
        brute.tries.load(Ordering::Relaxed) as f64 >= 0.9 * 1000.0 * secs,
        "the brute force did not try 1,000 times per second",
    );
    check(
        metric(&m, "obdgw_relay_auth_throttled_total") > 0,
        "no hello was throttled",
    );
    check(
        metric(
            &m,
            "obdgw_relay_admission_drops_total{reason=\"per_source\"}",
        ) > 0,
        "no connection was refused by the per-source cap",
    );
    check(
        metric(&m, "obdgw_relay_admission_drops_total{reason=\"deadline\"}") > 0,
        "no connection missed the hello deadline",
    );
    check(
        metric(&m, "obdgw_relay_refusals_total{code=\"bad_hello\"}")
            > metric(&m_before, "obdgw_relay_refusals_total{code=\"bad_hello\"}"),
        "no oversize pre-hello message was refused",
    );
    check(
        peak_preauth.load(Ordering::Relaxed) <= 1024,
        "more unauthenticated connections than --preauth-max",
    );
    // Memory.
    check(
        hwm_kib < RSS_BOUND_MIB * 1024,
        "the relay's memory passed its bound",
    );
    check(
        hwm_kib.saturating_sub(idle_kib) < GROWTH_BOUND_KIB,
        "the relay's memory grew by more than 32 KiB per pre-auth place",
    );
    check(
        t_test.elapsed() < Duration::from_secs(45),
        "the suite took too long",
    );
    drop(procs);
}
