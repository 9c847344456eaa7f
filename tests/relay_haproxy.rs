//! Scale-out on an existing balancer: Debian's HAProxy, with the `defaults` and `backend
//! relays` sections of `packaging/relay/haproxy.cfg` verbatim (consistent hashing on the
//! session path), in front of real `obdgw relay` processes on loopback (ephemeral ports).
//! 300 sessions (real tunnel clients, `obdgw::tunnel::client::run`) stream records both ways
//! through it the whole time.
//!
//! 1. Three relays: every session is paired on exactly one relay, all three hold some.
//! 2. Kill one relay (SIGKILL): every session it carried resumes on the others; no other
//!    session moves.
//! 3. The killed relay comes back on its address and everyone reconnects: every session is
//!    back where it was at step 1 (the ring is a function of the server list only).
//! 4. A fourth relay enters the ring and everyone reconnects: only the sessions that now
//!    hash to it move (about a quarter), and all of them resume.
//! 5. Every transfer, in both directions, is byte-identical: nothing lost, duplicated,
//!    reordered or altered, across all of the above.
//!
//! Needs `/usr/sbin/haproxy` (`.ci/run` installs it). Without it the test prints SKIPPED,
//! or fails when `TEST_OBDGW_REQUIRE_HAPROXY=1`.

use bytes::Bytes;
use obdgw::router::frame::Timestamp;
use obdgw::tunnel::client::{self, ClientConfig, Outgoing};
use obdgw::tunnel::{Event, Session, SessionConfig};
use obdgw::wire::tunnel::{PduRecord, RecordBody, RecordRepr, Role, Token};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const SESSIONS: usize = 300;
/// Records each side sends per second while the test runs.
const RATE_HZ: u64 = 10;
/// How long any one step may take before the test fails (never reached when it works).
const STEP: Duration = Duration::from_secs(45);

fn haproxy_binary() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/sbin/haproxy");
    if p.exists() {
        return Some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("haproxy"))
            .find(|p| p.exists())
    })
}

fn session_id(i: usize) -> String {
    format!("5e55{i:04x}-0000-4000-8000-{:012x}", i * 7919)
}

// ------------------------------------------------------------------------- processes

struct Relay {
    child: Child,
    ws: SocketAddr,
    metrics: SocketAddr,
}

fn start_relay(tokens: &Path, ws: &str, metrics: &str, log: &Path) -> Relay {
    let mut child = Command::new(env!("CARGO_BIN_EXE_obdgw"))
        .args([
            "relay",
            "--listen",
            ws,
            "--metrics-listen",
            metrics,
            "--tokens",
        ])
        .arg(tokens)
        // Behind the balancer every connection comes from it.
        .args(["--preauth-per-source", "0", "--max-connections", "4000"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("starting obdgw relay");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut addr = |prefix: &str| {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(prefix))
            .and_then(|w| w.split('/').next())
            .and_then(|w| w.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("relay printed {line:?}"))
    };
    let ws = addr("ws://");
    let metrics = addr("http://");
    Relay { child, ws, metrics }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Haproxy {
    child: Child,
    socket: PathBuf,
    port: u16,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped configuration's `defaults` and `backend relays` sections, verbatim except
/// for the `server` lines, which point at our relays.
fn shipped_sections(servers: &str) -> String {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/relay/haproxy.cfg"),
    )
    .unwrap();
    let mut out = String::new();
    let mut keep = false;
    for line in shipped.lines() {
        if !line.starts_with(' ') && !line.starts_with('#') && !line.trim().is_empty() {
            keep = line.starts_with("defaults") || line.starts_with("backend relays");
        }
        if keep && !line.trim_start().starts_with("server ") {
            out.push_str(line);
            out.push('\n');
            if line.starts_with("backend relays") {
                // Faster health checks than production: the test waits for them.
                out.push_str("    default-server inter 250ms fall 2 rise 1\n");
            }
        }
    }
    assert!(out.contains("hash-type consistent"), "{out}");
    assert!(out.contains("balance uri"), "{out}");
    out + servers
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_haproxy(bin: &Path, dir: &Path, relays: &[&Relay], spare: &Relay) -> Haproxy {
    let socket = dir.join("admin.sock");
    let mut servers = String::new();
    for (i, r) in relays.iter().enumerate() {
        servers.push_str(&format!(
            "    server relay{} {} port {}\n",
            i + 1,
            r.ws,
            r.metrics.port()
        ));
    }
    servers.push_str(&format!(
        "    server relay{} {} port {} disabled\n",
        relays.len() + 1,
        spare.ws,
        spare.metrics.port()
    ));
    for _attempt in 0..5 {
        let port = free_port();
        let cfg = format!(
            "global\n    maxconn 4000\n    stats socket {} mode 600 level admin\n\n{}\n\
             frontend obdgw_relay\n    bind 127.0.0.1:{port}\n    default_backend relays\n",
            socket.display(),
            shipped_sections(&servers)
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, &cfg).unwrap();
        let mut child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log")).unwrap())
            .spawn()
            .expect("starting haproxy");
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(st)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.join("haproxy.log")).unwrap_or_default();
                if log.contains("cannot bind") {
                    break; // the port was taken meanwhile: another one
                }
                panic!("haproxy exited ({st}):\n{log}\n{cfg}");
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && socket.exists() {
                return Haproxy {
                    child,
                    socket,
                    port,
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("haproxy did not start");
}

impl Haproxy {
    fn command(&self, cmd: &str) -> String {
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket).unwrap();
        s.write_all(format!("{cmd}\n").as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// Server name → status (UP, DOWN, MAINT, …) from `show stat`.
    fn statuses(&self) -> HashMap<String, String> {
        let csv = self.command("show stat");
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = header.iter().position(|h| *h == "status").unwrap();
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.first() == Some(&"relays") && f[1].starts_with("relay"))
            .map(|f| (f[1].to_string(), f[col].to_string()))
            .collect()
    }

    async fn wait_status(&self, server: &str, want: &str) {
        let t = Instant::now();
        loop {
            let s = self.statuses();
            if s.get(server).map(|x| x.starts_with(want)) == Some(true) {
                return;
            }
            assert!(t.elapsed() < STEP, "{server} never {want}: {s:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Close every connection the balancer carries: all endpoints reconnect through the
    /// ring as it is now.
    fn reconnect_everyone(&self, servers: usize) {
        for i in 1..=servers {
            self.command(&format!("shutdown sessions server relays/relay{i}"));
        }
    }
}

/// Which relay (index) holds each session, paired; `None` while not all are paired.
/// `GET path` on a relay's metrics listener; the body, or `None` when it does not answer.
async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: relay\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        let (head, body) = buf.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.0 200").then(|| body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .ok()?
}

/// Which relay (index) holds each session, paired; `None` while not all are paired.
async fn placement(relays: &[Option<&Relay>]) -> Option<HashMap<String, usize>> {
    let mut map = HashMap::new();
    for (i, r) in relays.iter().enumerate() {
        let Some(r) = r else { continue };
        let body = http_get(r.metrics, "/sessions").await?;
        for line in body.lines() {
            let mut f = line.split_whitespace();
            let (Some(id), Some(state)) = (f.next(), f.next()) else {
                continue;
            };
            if state != "paired" || map.insert(id.to_string(), i).is_some() {
                return None;
            }
        }
    }
    (map.len() == SESSIONS).then_some(map)
}

async fn wait_placement(relays: &[Option<&Relay>], what: &str) -> HashMap<String, usize> {
    let t = Instant::now();
    loop {
        if let Some(p) = placement(relays).await {
            eprintln!(
                "{what}: all {SESSIONS} paired after {:.1} s",
                t.elapsed().as_secs_f64()
            );
            return p;
        }
        assert!(
            t.elapsed() < STEP,
            "{what}: not all {SESSIONS} sessions paired on one relay each"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn counts(p: &HashMap<String, usize>, relays: usize) -> Vec<usize> {
    let mut c = vec![0; relays];
    for &r in p.values() {
        c[r] += 1;
    }
    c
}

// ------------------------------------------------------------------------- endpoints

/// Record `seq` (from 1) of `session` in direction `dir`: a deterministic payload of
/// 4..1500 bytes.
fn record(session: usize, dir: u8, seq: u32) -> RecordRepr {
    let len = 4 + (seq as usize * 131 + session * 17 + dir as usize * 7) % 1496;
    let mut d = Vec::with_capacity(len);
    d.extend_from_slice(&seq.to_be_bytes());
    let mut x = (session as u32) << 8 | dir as u32 ^ seq.wrapping_mul(2_654_435_761);
    while d.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        d.push(x as u8);
    }
    RecordRepr {
        channel: 1,
        flags: 0,
        body: RecordBody::IsoTp(PduRecord {
            timestamp: Timestamp(seq as u64),
            data: Bytes::from(d),
        }),
    }
}

/// What the test tells the endpoints and learns from them.
struct Shared {
    /// Stop producing records; each side then reports how many it sent.
    finish: AtomicBool,
    errors: std::sync::Mutex<Vec<String>>,
    /// Records handed to the tunnel, over all endpoints.
    sent: AtomicU64,
    /// Records received in order and intact, over all endpoints.
    received: AtomicU64,
    /// Times an endpoint reached its peer (after every connect).
    ups: AtomicU64,
}

impl Shared {
    /// Wait until every endpoint has reached its peer again since `before` ups.
    async fn wait_all_up_since(&self, before: u64, what: &str) {
        let t = Instant::now();
        while self.ups.load(Ordering::Relaxed) < before + 2 * SESSIONS as u64 {
            assert!(t.elapsed() < STEP, "{what}: not every endpoint reconnected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct EndpointResult {
    sent: u32,
    received: u32,
}

async fn endpoint(
    session: usize,
    role: Role,
    url: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> EndpointResult {
    let id = session_id(session);
    let token = match role {
        Role::Gateway => format!("g{session}"),
        Role::Operator => format!("o{session}"),
    };
    let (dir_out, dir_in) = match role {
        Role::Gateway => (0u8, 1u8),
        Role::Operator => (1, 0),
    };
    let mut cfg = SessionConfig::new(
        role,
        id,
        Token(token),
        1 + session as u64 * 2 + dir_out as u64,
    );
    cfg.capabilities = vec!["isotp".into()];
    let mut ccfg = ClientConfig::new(url);
    ccfg.backoff_max = Duration::from_secs(2);
    let (to_sess, from_app) = mpsc::channel(64);
    let (to_app, mut events) = mpsc::channel(256);
    let s = Session::new(cfg, Instant::now());
    let driver = tokio::spawn(client::run(ccfg, s, from_app, to_app, stop.clone()));
    let fail = |m: String| shared.errors.lock().unwrap().push(m);
    let mut sent = 0u32;
    let mut received = 0u32;
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE_HZ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Offset the phases of the 600 endpoints.
    tokio::time::sleep(Duration::from_millis(
        (session as u64 * 37) % (1000 / RATE_HZ),
    ))
    .await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick(), if !shared.finish.load(Ordering::Relaxed) => {
                sent += 1;
                shared.sent.fetch_add(1, Ordering::Relaxed);
                if to_sess.send(Outgoing::Record { rec: record(session, dir_out, sent), sheddable: false }).await.is_err() {
                    fail(format!("session {session} {role:?}: driver gone"));
                    break;
                }
            }
            ev = events.recv() => match ev {
                Some(Event::Record(r)) => {
                    received += 1;
                    if r != record(session, dir_in, received) {
                        fail(format!("session {session} {role:?}: record {received} differs (lost, duplicated or altered)"));
                    }
                    shared.received.fetch_add(1, Ordering::Relaxed);
                }
                Some(Event::Up { .. }) => {
                    shared.ups.fetch_add(1, Ordering::Relaxed);
                }
                Some(Event::PeerRestarted) => fail(format!("session {session} {role:?}: peer state lost")),
                Some(_) => {}
                None => break,
            },
        }
    }
    drop(to_sess);
    match driver.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => fail(format!("session {session} {role:?}: {e}")),
        Err(e) => fail(format!("session {session} {role:?}: driver panicked: {e}")),
    }
    EndpointResult { sent, received }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_relay_death_and_a_fourth_relay_moves_about_a_quarter() {
    let Some(bin) = haproxy_binary() else {
        if std::env::var("TEST_OBDGW_REQUIRE_HAPROXY").as_deref() == Ok("1") {
            panic!(
                "TEST_OBDGW_REQUIRE_HAPROXY=1 but haproxy is not installed (apt-get install haproxy)"
            );
        }
        eprintln!(
            "SKIPPED: haproxy is not installed (set TEST_OBDGW_REQUIRE_HAPROXY=1 to fail instead)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let mut t = String::new();
    for i in 0..SESSIONS {
        t.push_str(&format!(
            "[[session]]\nid = \"{}\"\ngateway_token = \"g{i}\"\noperator_token = \"o{i}\"\n",
            session_id(i)
        ));
    }
    std::fs::write(&tokens, t).unwrap();
    let log = |n: usize| dir.path().join(format!("relay{n}.log"));
    let r1 = start_relay(&tokens, "127.0.0.1:0", "127.0.0.1:0", &log(1));
    let mut r2 = start_relay(&tokens, "127.0.0.1:0", "127.0.0.1:0", &log(2));
    let r3 = start_relay(&tokens, "127.0.0.1:0", "127.0.0.1:0", &log(3));
    let r4 = start_relay(&tokens, "127.0.0.1:0", "127.0.0.1:0", &log(4));
    let hap = start_haproxy(&bin, dir.path(), &[&r1, &r2, &r3], &r4);
    for s in ["relay1", "relay2", "relay3"] {
        hap.wait_status(s, "UP").await;
    }
    hap.wait_status("relay4", "MAINT").await;

    // 300 sessions through the balancer.
    let shared = Arc::new(Shared {
        finish: AtomicBool::new(false),
        errors: Default::default(),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        ups: AtomicU64::new(0),
    });
    let stop = CancellationToken::new();
    let url = format!("ws://127.0.0.1:{}/", hap.port);
    let mut tasks = Vec::new();
    for i in 0..SESSIONS {
        for role in [Role::Gateway, Role::Operator] {
            tasks.push((
                i,
                role,
                tokio::spawn(endpoint(i, role, url.clone(), shared.clone(), stop.clone())),
            ));
        }
    }

    // 1. Three relays share the sessions.
    let p0 = wait_placement(&[Some(&r1), Some(&r2), Some(&r3)], "three relays").await;
    let c0 = counts(&p0, 3);
    eprintln!("sessions per relay: {c0:?}");
    assert!(c0.iter().all(|&c| c > 0), "{c0:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 2. Kill relay 2 mid-transfer.
    let received_before = shared.received.load(Ordering::Relaxed);
    let _ = r2.child.kill();
    let _ = r2.child.wait();
    let p1 = wait_placement(&[Some(&r1), None, Some(&r3)], "relay 2 killed").await;
    for (s, &before) in &p0 {
        let now = p1[s];
        if before == 1 {
            assert_ne!(now, 1);
        } else {
            assert_eq!(now, before, "session {s} moved although its relay lives");
        }
    }
    assert!(shared.received.load(Ordering::Relaxed) > received_before);

    // 3. Relay 2 restarts on its address; everyone reconnects: back where they were.
    let (ws2, m2) = (r2.ws.to_string(), r2.metrics.to_string());
    r2 = start_relay(&tokens, &ws2, &m2, &log(2));
    hap.wait_status("relay2", "UP").await;
    let ups = shared.ups.load(Ordering::Relaxed);
    hap.reconnect_everyone(3);
    shared.wait_all_up_since(ups, "relay 2 back").await;
    let p2 = wait_placement(&[Some(&r1), Some(&r2), Some(&r3)], "relay 2 back").await;
    assert_eq!(
        p2, p0,
        "the ring placed sessions differently with the same relays"
    );

    // 4. A fourth relay enters the ring; everyone reconnects; only its share moves.
    hap.command("enable server relays/relay4");
    hap.wait_status("relay4", "UP").await;
    let ups = shared.ups.load(Ordering::Relaxed);
    hap.reconnect_everyone(4);
    shared.wait_all_up_since(ups, "fourth relay").await;
    let p3 = wait_placement(&[Some(&r1), Some(&r2), Some(&r3), Some(&r4)], "four relays").await;
    let moved: Vec<&String> = p2.keys().filter(|s| p3[*s] != p2[*s]).collect();
    eprintln!(
        "with a fourth relay: {} of {SESSIONS} sessions moved; per relay {:?}",
        moved.len(),
        counts(&p3, 4)
    );
    for s in &moved {
        assert_eq!(p3[*s], 3, "session {s} moved, but not to the new relay");
    }
    let share = moved.len() as f64 / SESSIONS as f64;
    assert!(
        (0.10..=0.45).contains(&share),
        "{} sessions moved: not about a quarter",
        moved.len()
    );

    // 5. Finish: every side stops producing; wait until each has received all the other
    // sent, then check the counts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shared.finish.store(true, Ordering::Relaxed);
    let t = Instant::now();
    let mut last = (u64::MAX, u64::MAX);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = (
            shared.sent.load(Ordering::Relaxed),
            shared.received.load(Ordering::Relaxed),
        );
        // Done when everything sent arrived and nobody is still producing.
        if now.0 == now.1 && now == last {
            break;
        }
        assert!(t.elapsed() < STEP, "not everything sent arrived: {now:?}");
        last = now;
    }
    stop.cancel();
    let mut results: HashMap<(usize, bool), EndpointResult> = HashMap::new();
    for (i, role, t) in tasks {
        let r = tokio::time::timeout(STEP, t).await.unwrap().unwrap();
        results.insert((i, role == Role::Gateway), r);
    }
    let errors = shared.errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let mut total = 0u64;
    for i in 0..SESSIONS {
        let gw = &results[&(i, true)];
        let op = &results[&(i, false)];
        assert_eq!(
            op.received, gw.sent,
            "session {i}: operator got {} of {}",
            op.received, gw.sent
        );
        assert_eq!(
            gw.received, op.sent,
            "session {i}: gateway got {} of {}",
            gw.received, op.sent
        );
        assert!(
            gw.sent > 20 && op.sent > 20,
            "session {i}: too little traffic"
        );
        total += (gw.sent + op.sent) as u64;
    }
    eprintln!("{total} records delivered exactly once, byte-identical");
    drop(hap);
    drop((r1, r2, r3, r4));
}
