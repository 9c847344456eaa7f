//! The tunnel relay (`obdgw relay`): pairs the gateway and the operator of a session and
//! forwards their messages.
//!
//! Owns: the websocket server (optionally TLS), the accept loop with admission control
//! ([`admission`]: accept rate, pre-auth caps, the per-source throttle on authentication
//! failures), the hello check and authentication through a
//! [`TokenCheck`] (per connection: `conn`), pairing and forwarding ([`hub`]), per-connection
//! limits (one deadline for handshake and hello, outbound bytes, write stall, silence),
//! session release (`bye`, idle limit, rejoin grace), counters and the loopback
//! `/healthz` + `/metrics` endpoint ([`metrics`]), clean shutdown.
//!
//! Does not own: the end-to-end session (sequencing, replay: `crate::tunnel::session`, run by
//! the endpoints); payload contents (batches are forwarded as the same `Bytes`, unparsed);
//! where tokens come from (a static file for `obdgw relay`; the cloud simulator's tickets in
//! `crate::sim::cloud::relay`).
//!
//! Protocol: `docs/tunnel-protocol.md`, sections 2, 4 and 10.

pub mod admission;
mod conn;
pub mod hub;
pub mod metrics;

pub use conn::{AUTH_REFUSAL, SESSION_PATH, session_from_path};

use crate::wire::tunnel::{self as wire, Role};
use hub::Hub;
use serde::Deserialize;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("session is not known to the relay")]
    UnknownSession,
    #[error("token is not valid for this role and session")]
    BadToken,
}

/// Decides whether a token admits a role to a session. Implemented by a static map
/// ([`StaticTokens`]) and by the cloud simulator's ticket state
/// (`crate::sim::cloud::relay::SimTokens`).
pub trait TokenCheck: Send + Sync + 'static {
    fn check(
        &self,
        role: Role,
        session: &str,
        token: &str,
    ) -> impl Future<Output = Result<(), AuthError>> + Send;
}

/// One session's tokens, as in the relay's tokens file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionTokens {
    /// The session id (the ticket's connection UUID).
    pub id: String,
    pub gateway_token: String,
    pub operator_token: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    session: Vec<SessionTokens>,
}

/// A token's SHA-256 digest: what [`StaticTokens`] keeps and compares.
type Digest = [u8; 32];

/// SHA-256 with ring, through rustls (already linked; no second crypto library).
fn digest(token: &str) -> Digest {
    let mut out = [0u8; 32];
    if let rustls::SupportedCipherSuite::Tls13(suite) =
        rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
    {
        let h = suite.common.hash_provider.hash(token.as_bytes());
        let h = h.as_ref();
        let n = h.len().min(out.len());
        out[..n].copy_from_slice(&h[..n]);
    }
    out
}

/// What an unknown session's token is compared with: no token hashes to it in practice,
/// and comparing costs the same as for a known session.
const NO_TOKEN: Digest = [0u8; 32];

/// A fixed map of session id to tokens (kept as SHA-256 digests).
///
/// A check costs the same whether the session is known or not: the presented token is
/// hashed (its cost depends only on the presented token), then 32 bytes are compared in
/// constant time with the session's digest or with [`NO_TOKEN`]. Nothing returns early.
#[derive(Debug, Clone, Default)]
pub struct StaticTokens {
    map: HashMap<String, (Digest, Digest)>,
}

impl StaticTokens {
    pub fn new(sessions: impl IntoIterator<Item = SessionTokens>) -> Self {
        StaticTokens {
            map: sessions
                .into_iter()
                .map(|s| (s.id, (digest(&s.gateway_token), digest(&s.operator_token))))
                .collect(),
        }
    }

    /// Parse a tokens file: `[[session]]` tables with `id`, `gateway_token`,
    /// `operator_token`. Refuses a malformed or repeated session id, and an empty or
    /// repeated token (a token shared by two roles or sessions would admit one as the
    /// other); the error names the entry and the session and says what to do, never a
    /// token. The caller adds the file's name.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        const FIX: &str = "give every role of every session its own random token, e.g. from `openssl rand -hex 32`";
        let f: TokensFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut ids: HashMap<&str, usize> = HashMap::new();
        let mut tokens: HashMap<&str, (usize, &'static str)> = HashMap::new();
        for (i, s) in f.session.iter().enumerate() {
            let n = i + 1;
            if !wire::valid_session_id(&s.id) {
                return Err(format!(
                    "[[session]] #{n}: id {:?} is not a lowercase hyphenated UUID",
                    s.id
                ));
            }
            if let Some(first) = ids.insert(&s.id, n) {
                return Err(format!(
                    "[[session]] #{n}: session {} is already listed as #{first}; keep one table per session",
                    s.id
                ));
            }
            for (field, token) in [
                ("gateway_token", &s.gateway_token),
                ("operator_token", &s.operator_token),
            ] {
                if token.trim().is_empty() {
                    return Err(format!(
                        "[[session]] #{n} (session {}): {field} is empty; {FIX}",
                        s.id
                    ));
                }
                if let Some((m, other)) = tokens.insert(token, (n, field)) {
                    let whose = if m == n {
                        format!("as its {other}")
                    } else {
                        format!(
                            "as the {other} of [[session]] #{m} (session {})",
                            f.session[m - 1].id
                        )
                    };
                    return Err(format!(
                        "[[session]] #{n} (session {}): {field} is the same token {whose}; {FIX}",
                        s.id
                    ));
                }
            }
        }
        Ok(Self::new(f.session))
    }
}

/// Comparison whose time does not depend on where the first difference is (for token
/// checks).
pub fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

impl TokenCheck for StaticTokens {
    async fn check(&self, role: Role, session: &str, token: &str) -> Result<(), AuthError> {
        let presented = digest(token);
        let (known, want) = match self.map.get(session) {
            Some((gw, op)) => (
                true,
                match role {
                    Role::Gateway => gw,
                    Role::Operator => op,
                },
            ),
            None => (false, &NO_TOKEN),
        };
        let mut diff = 0u8;
        for (a, b) in presented.iter().zip(want.iter()) {
            diff |= a ^ b;
        }
        match (known, std::hint::black_box(diff) == 0) {
            (true, true) => Ok(()),
            (true, false) => Err(AuthError::BadToken),
            (false, _) => Err(AuthError::UnknownSession),
        }
    }
}

/// Relay limits. Every limit says what happens when it is hit; `docs/scaling.md` has the
/// numbers behind the defaults.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Sessions held at once; a hello for a new session beyond it gets `session_limit`.
    pub max_sessions: usize,
    /// Connections at once (any phase); further TCP connections wait in the kernel's
    /// listen queue. Needs as many file descriptors (`LimitNOFILE=`).
    pub max_connections: usize,
    /// One deadline for TLS, the websocket handshake and a valid hello, counted from the
    /// accept; a connection that misses it is closed (`bad_hello` when the websocket is up).
    pub hello_timeout: Duration,
    /// Unauthenticated connections at once; at the cap the oldest is closed if it is at
    /// least `preauth_evict_after` old, otherwise the relay stops accepting until one
    /// finishes or becomes old enough (new connections wait in the listen queue).
    pub preauth_max: usize,
    /// How long a connection must have been unauthenticated before it may be evicted to
    /// make room at the pre-auth cap (zero: never evict).
    pub preauth_evict_after: Duration,
    /// Unauthenticated connections per source address (0: no limit); beyond it a new
    /// connection is accepted and closed at once. Behind a load balancer every connection
    /// comes from the balancer: set 0 there and limit per source at the balancer.
    pub preauth_per_source: u32,
    /// Largest websocket message (and frame) accepted before the hello is accepted.
    pub preauth_message: usize,
    /// Bytes a connection may send before its hello is accepted (HTTP upgrade request and
    /// hello together); beyond it the connection is closed.
    pub preauth_bytes: usize,
    /// New connections accepted per second (0: no limit); beyond it they wait in the
    /// kernel's listen queue.
    pub accept_rate: u32,
    /// Authentication failures a source (an IPv4 address, an IPv6 /64) may have before it
    /// is throttled (0: no throttle). Behind a load balancer every connection comes from
    /// the balancer: set 0 there and throttle at the balancer.
    pub auth_fail_burst: u32,
    /// Tries a throttled source earns back per second.
    pub auth_fail_rate: f64,
    /// How long a throttled source's hello waits before it is refused (not checked; the
    /// same `auth_failed` answer), within the hello deadline. It holds one of the source's
    /// pre-auth places meanwhile, so a throttled source can try at most
    /// `preauth_per_source` times per delay.
    pub auth_throttle_delay: Duration,
    /// Sources the throttle remembers at once (beyond: they share one bucket).
    pub auth_throttle_sources: usize,
    /// Connections accepted at once after a quiet period.
    pub accept_burst: u32,
    /// A session with a side missing this long is released (`session_ended`).
    pub idle_limit: Duration,
    /// A session that was paired and lost a side: if that side is not back here within
    /// this, the remaining side is closed with `peer_gone` so that it reconnects through
    /// the load balancer and meets its peer wherever the session hashes now. `None`: wait
    /// for the idle limit.
    pub rejoin_grace: Option<Duration>,
    /// Bytes of forwarded messages queued toward one connection; beyond it the relay stops
    /// reading from the sender (TCP backpressure). A larger single message waits for an
    /// empty queue.
    pub max_queued_bytes: usize,
    /// A connection whose websocket accepts nothing for this long is closed.
    pub write_stall: Duration,
    /// A connection silent this long gets a websocket ping; silent twice this long, it is
    /// closed (half-open TCP connections do not stay forever).
    pub ping_after: Duration,
    /// Largest websocket message accepted after the hello (the protocol's hard maximum by
    /// default).
    pub max_message: usize,
    /// Initial websocket read buffer per connection (grows for larger messages).
    pub read_buffer: usize,
    /// Keepalive interval announced in `welcome`.
    pub keepalive_ms: u32,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            max_sessions: 20_000,
            max_connections: 50_000,
            hello_timeout: Duration::from_secs(10),
            preauth_max: 1024,
            preauth_evict_after: Duration::from_secs(2),
            preauth_per_source: 64,
            preauth_message: 4096,
            preauth_bytes: 16 * 1024,
            accept_rate: 5000,
            accept_burst: 1000,
            auth_fail_burst: 20,
            auth_fail_rate: 1.0,
            auth_throttle_delay: Duration::from_secs(1),
            auth_throttle_sources: 65_536,
            idle_limit: Duration::from_secs(600),
            rejoin_grace: Some(Duration::from_secs(5)),
            max_queued_bytes: 4 * 1024 * 1024,
            write_stall: Duration::from_secs(30),
            ping_after: Duration::from_secs(30),
            max_message: wire::Limits::HARD_MAX as usize + 64,
            read_buffer: 4096,
            keepalive_ms: 5000,
        }
    }
}

impl RelayConfig {
    /// After the hello: full-size messages; buffers start small and grow only for
    /// connections that carry large messages.
    fn ws_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer)
            .write_buffer_size(8 * 1024)
            .max_write_buffer_size(self.max_message + 64 * 1024)
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_message))
    }

    /// Until the hello is accepted: small messages only.
    fn preauth_ws_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer.min(self.preauth_message))
            .write_buffer_size(0)
            .max_write_buffer_size(64 * 1024)
            .max_message_size(Some(self.preauth_message))
            .max_frame_size(Some(self.preauth_message))
    }
}

/// Errors that stop the relay from starting.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("reading TLS file {path}: {source}")]
    TlsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// Build a TLS acceptor from PEM files (certificate chain, private key), with the one TLS
/// setup of `crate::tls`.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, RelayError> {
    let config = crate::tls::server_config(cert, key).map_err(RelayError::Tls)?;
    Ok(tokio_rustls::TlsAcceptor::from(config))
}

/// Run the relay on an already bound listener until `shutdown` is cancelled; then close
/// every connection (1001 "going away") and return once all are finished.
pub async fn run<A: TokenCheck>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    auth: Arc<A>,
    cfg: RelayConfig,
    shutdown: CancellationToken,
) {
    let hub = Hub::new(cfg.max_sessions, cfg.keepalive_ms);
    run_with_hub(listener, tls, auth, cfg, hub, shutdown).await
}

/// [`run`] with a hub the caller keeps, so it can end sessions from outside (the cloud
/// simulator ends a session when its ticket is closed: [`Hub::release`]) or serve its
/// metrics ([`metrics::serve`]). Build the hub with
/// `Hub::new(cfg.max_sessions, cfg.keepalive_ms)`.
pub async fn run_with_hub<A: TokenCheck>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    auth: Arc<A>,
    cfg: RelayConfig,
    hub: Hub,
    shutdown: CancellationToken,
) {
    let metrics = hub.metrics().clone();
    let tracker = TaskTracker::new();
    {
        let (hub, shutdown) = (hub.clone(), shutdown.clone());
        let (idle, rejoin) = (cfg.idle_limit, cfg.rejoin_grace);
        tracker.spawn(async move {
            let shortest = rejoin.map_or(idle, |r| r.min(idle));
            let period = (shortest / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        let n = hub.reap(tokio::time::Instant::now(), idle, rejoin);
                        if n > 0 {
                            tracing::info!(released = n, "relay released idle or broken sessions");
                        }
                    }
                }
            }
        });
    }
    let throttle = admission::AuthThrottle::new(
        cfg.auth_fail_burst,
        cfg.auth_fail_rate,
        cfg.auth_throttle_sources,
    );
    let ctx = Arc::new(conn::Ctx {
        hub,
        auth,
        cfg,
        throttle,
        shutdown: shutdown.clone(),
    });
    let conns = Arc::new(tokio::sync::Semaphore::new(ctx.cfg.max_connections.max(1)));
    let preauth = Arc::new(tokio::sync::Semaphore::new(ctx.cfg.preauth_max.max(1)));
    let waiting = admission::PreAuthList::default();
    let per_source = admission::PerSource::new(ctx.cfg.preauth_per_source);
    let mut bucket = admission::TokenBucket::new(
        ctx.cfg.accept_rate,
        ctx.cfg.accept_burst,
        std::time::Instant::now(),
    );
    async fn permit(
        sem: &Arc<tokio::sync::Semaphore>,
        full: &std::sync::atomic::AtomicU64,
        shutdown: &CancellationToken,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(p) = sem.clone().try_acquire_owned() {
            return Some(p);
        }
        full.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            _ = shutdown.cancelled() => None,
            p = sem.clone().acquire_owned() => p.ok(),
        }
    }
    loop {
        let Some(conn_permit) = permit(&conns, &metrics.preauth_full, &shutdown).await else {
            break;
        };
        while let Some(wait) = bucket.take(std::time::Instant::now()) {
            metrics.accept_throttled.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let (tcp, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "relay accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        metrics.accepted.fetch_add(1, Ordering::Relaxed);
        // One deadline for TLS, websocket handshake and hello, counted from the accept.
        let deadline = tokio::time::Instant::now() + ctx.cfg.hello_timeout;
        let Some(source) = per_source.enter(addr.ip()) else {
            metrics.admission_drop(metrics::DropReason::PerSource);
            // Reset rather than close: no TIME_WAIT for a connection we never served.
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
            drop(tcp);
            continue;
        };
        // The pre-auth cap, taken once a connection is here (so that nothing is evicted
        // for a connection that does not exist): when it is full, evict the oldest
        // unauthenticated connection once it is old enough, or wait for a place. Further
        // connections wait in the listen queue meanwhile.
        let pre_permit = match preauth.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                metrics.preauth_full.fetch_add(1, Ordering::Relaxed);
                loop {
                    let now = tokio::time::Instant::now();
                    let wake =
                        match waiting.evict_oldest(now.into_std(), ctx.cfg.preauth_evict_after) {
                            Ok(()) => None,
                            Err(when) => when.map(tokio::time::Instant::from_std),
                        };
                    tokio::select! {
                        _ = shutdown.cancelled() => break None,
                        p = preauth.clone().acquire_owned() => break p.ok(),
                        _ = async {
                            match wake {
                                Some(w) => tokio::time::sleep_until(w).await,
                                None => std::future::pending().await,
                            }
                        } => continue,
                    }
                }
            }
        };
        let Some(pre_permit) = pre_permit else {
            break;
        };
        let _ = tcp.set_nodelay(true);
        let stop = shutdown.child_token();
        let listed = waiting.enter(tokio::time::Instant::now().into_std(), stop.clone());
        let pre = conn::PreAuth::new(pre_permit, source, listed, metrics.clone());
        let (ctx, tls) = (ctx.clone(), tls.clone());
        let open = conn::OpenGuard::new(metrics.clone());
        tracker.spawn(async move {
            let (_conn_permit, _open) = (conn_permit, open);
            match tls {
                // Boxed: the TLS connection's larger state does not make every plain
                // connection's task larger.
                Some(acc) => {
                    let handshake = tokio::select! {
                        _ = stop.cancelled() => {
                            if !ctx.shutdown.is_cancelled() {
                                ctx.hub.metrics().admission_drop(metrics::DropReason::Evicted);
                            }
                            return;
                        }
                        h = tokio::time::timeout_at(deadline, Box::pin(acc.accept(tcp))) => h,
                    };
                    match handshake {
                        Ok(Ok(s)) => Box::pin(conn::serve(s, addr, ctx, deadline, stop, pre)).await,
                        Ok(Err(e)) => {
                            ctx.hub
                                .metrics()
                                .admission_drop(metrics::DropReason::Handshake);
                            tracing::debug!(%addr, error = %e, "relay TLS handshake failed");
                        }
                        Err(_) => {
                            ctx.hub
                                .metrics()
                                .admission_drop(metrics::DropReason::Deadline);
                            tracing::debug!(%addr, "relay TLS handshake timed out");
                        }
                    }
                }
                None => conn::serve(tcp, addr, ctx, deadline, stop, pre).await,
            }
        });
    }
    metrics.draining.store(true, Ordering::Relaxed);
    tracker.close();
    tracker.wait().await;
}

/// The relay's pre-authentication phase without a socket: feeds bytes to the real code
/// (HTTP upgrade, websocket frames under the pre-auth limits, hello checks, the
/// authentication throttle) over an in-memory stream. For fuzzing (`fuzz/`) and tests; not
/// a public interface.
#[doc(hidden)]
pub struct PreAuthProbe<A> {
    pub(crate) ctx: Arc<conn::Ctx<A>>,
}

/// What the relay made of one probed connection.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    /// The hello was accepted: its role and session.
    pub accepted: Option<(Role, String)>,
    /// Everything the relay wrote back (HTTP response, websocket frames).
    pub output: Vec<u8>,
}

impl<A: TokenCheck> PreAuthProbe<A> {
    pub fn new(auth: Arc<A>, cfg: RelayConfig) -> Self {
        let throttle = admission::AuthThrottle::new(
            cfg.auth_fail_burst,
            cfg.auth_fail_rate,
            cfg.auth_throttle_sources,
        );
        PreAuthProbe {
            ctx: Arc::new(conn::Ctx {
                hub: Hub::new(cfg.max_sessions, cfg.keepalive_ms),
                auth,
                cfg,
                throttle,
                shutdown: CancellationToken::new(),
            }),
        }
    }

    pub fn metrics(&self) -> &Arc<metrics::Metrics> {
        self.ctx.hub.metrics()
    }

    /// One connection from `from`: sends `input` up to the end of its HTTP head (the first
    /// blank line), waits for the relay's response head as a websocket client does, sends
    /// the rest, then half-closes.
    pub async fn run(&self, from: SocketAddr, input: &[u8]) -> Probed {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let split = input
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(input.len(), |i| i + 4);
        let (head, rest) = input.split_at(split);
        let cap = input.len() + 64 * 1024;
        let (mut client, server) = tokio::io::duplex(cap);
        let deadline = tokio::time::Instant::now() + self.ctx.cfg.hello_timeout;
        let relay = async {
            let stop = CancellationToken::new();
            let r = conn::authenticate(server, from, &self.ctx, deadline, &stop).await;
            r.map(|(_, h)| (h.role, h.session))
        };
        let peer = async {
            let mut output = Vec::new();
            let _ = client.write_all(head).await;
            if rest.is_empty() {
                let _ = client.shutdown().await;
            }
            let mut buf = [0u8; 1024];
            while !output.windows(4).any(|w| w == b"\r\n\r\n") {
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => output.extend_from_slice(&buf[..n]),
                }
            }
            let _ = client.write_all(rest).await;
            let _ = client.shutdown().await;
            let _ = client.read_to_end(&mut output).await;
            output
        };
        let (accepted, output) = tokio::join!(relay, peer);
        Probed { accepted, output }
    }
}

/// `obdgw relay` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// Address to listen on, e.g. 0.0.0.0:8443.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// TLS certificate chain (PEM). With --tls-key, the relay speaks wss://.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Tokens file: `[[session]]` tables with `id`, `gateway_token`, `operator_token`.
    #[arg(long, value_name = "FILE", env = "OBDGW_RELAY_TOKENS")]
    pub tokens: PathBuf,
    /// Serve /healthz, /metrics (Prometheus) and /sessions on this address (loopback or a
    /// private network: it lists session ids).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Sessions held at once.
    #[arg(long, value_name = "N", default_value_t = RelayConfig::default().max_sessions)]
    pub max_sessions: usize,
    /// Connections at once, in any phase (needs as many file descriptors).
    #[arg(long, value_name = "N", default_value_t = RelayConfig::default().max_connections)]
    pub max_connections: usize,
    /// New connections accepted per second (0: no limit).
    #[arg(long, value_name = "N", default_value_t = RelayConfig::default().accept_rate)]
    pub accept_rate: u32,
    /// Connections accepted at once after a quiet period.
    #[arg(long, value_name = "N", default_value_t = RelayConfig::default().accept_burst)]
    pub accept_burst: u32,
    /// Unauthenticated connections at once; at the cap the oldest is closed once it has
    /// been unauthenticated for --preauth-evict-after.
    #[arg(long, value_name = "N", default_value_t = RelayConfig::default().preauth_max)]
    pub preauth_max: usize,
    /// Seconds a connection must have been unauthenticated before it may be evicted at the
    /// pre-auth cap (0: never evict; new connections then wait for a place).
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    pub preauth_evict_after: f64,
    /// Unauthenticated connections per source address (0: no limit; use 0 behind a load
    /// balancer and limit per source there).
    #[arg(long, value_name = "N", default_value_t = RelayConfig::default().preauth_per_source)]
    pub preauth_per_source: u32,
    /// Authentication failures a source address (IPv6: a /64) may have before its hellos
    /// are refused unchecked (0: no throttle). Default: 20, or 0 with --preauth-per-source 0
    /// (behind a load balancer every connection comes from the balancer, so one client's
    /// failures would lock out all; throttle at the balancer there).
    #[arg(long, value_name = "N")]
    pub auth_fail_burst: Option<u32>,
    /// Tries a throttled source earns back per second.
    #[arg(long, value_name = "PER_SEC", default_value_t = RelayConfig::default().auth_fail_rate)]
    pub auth_fail_rate: f64,
    /// Seconds for TLS, websocket handshake and hello together.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub hello_timeout: f64,
    /// Seconds a connection may be silent before the relay pings it (closed after twice).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub ping_after: f64,
    /// Seconds a paired session's remaining side waits for the other to come back to this
    /// relay before it is told to reconnect (0: wait for the idle limit).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub rejoin_grace: f64,
    /// Bytes queued toward one connection before the sender is slowed down.
    #[arg(long, value_name = "BYTES", default_value_t = RelayConfig::default().max_queued_bytes)]
    pub max_queued_bytes: usize,
    /// Runtime worker threads (0: one per CPU; 1: a single-threaded runtime, for one relay
    /// process per core behind the balancer).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
}

fn secs(name: &str, v: f64) -> anyhow::Result<Duration> {
    if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
        anyhow::bail!("--{name} must be between 0 and 86400 seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

impl RelayArgs {
    /// The limits these arguments ask for, checked.
    pub fn config(&self) -> anyhow::Result<RelayConfig> {
        let hello_timeout = secs("hello-timeout", self.hello_timeout)?;
        let ping_after = secs("ping-after", self.ping_after)?;
        if hello_timeout.is_zero() || ping_after.is_zero() {
            anyhow::bail!("--hello-timeout and --ping-after must be above 0");
        }
        if self.max_sessions == 0 || self.max_connections == 0 || self.preauth_max == 0 {
            anyhow::bail!("--max-sessions, --max-connections and --preauth-max must be above 0");
        }
        if self.max_queued_bytes < 64 * 1024 {
            anyhow::bail!("--max-queued-bytes must be at least 65536");
        }
        let rejoin = secs("rejoin-grace", self.rejoin_grace)?;
        let auth_fail_burst = match (self.auth_fail_burst, self.preauth_per_source) {
            (Some(n), _) => n,
            (None, 0) => 0,
            (None, _) => RelayConfig::default().auth_fail_burst,
        };
        if auth_fail_burst > 0 && !(self.auth_fail_rate.is_finite() && self.auth_fail_rate > 0.0) {
            anyhow::bail!(
                "--auth-fail-rate must be above 0 (a throttled source would never be checked again); use --auth-fail-burst 0 for no throttle"
            );
        }
        Ok(RelayConfig {
            preauth_evict_after: secs("preauth-evict-after", self.preauth_evict_after)?,
            auth_fail_burst,
            auth_fail_rate: self.auth_fail_rate,
            max_sessions: self.max_sessions,
            max_connections: self.max_connections,
            accept_rate: self.accept_rate,
            accept_burst: self.accept_burst,
            preauth_max: self.preauth_max,
            preauth_per_source: self.preauth_per_source,
            hello_timeout,
            ping_after,
            rejoin_grace: (!rejoin.is_zero()).then_some(rejoin),
            max_queued_bytes: self.max_queued_bytes,
            ..RelayConfig::default()
        })
    }
}

/// Raise the soft open-files limit to the hard one; returns the soft limit now in force.
#[allow(clippy::unnecessary_cast)] // rlim_t is 32 bits on armv7
pub fn raise_nofile() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur as u64)
}

/// Bind a listening socket with a long accept queue (a reconnect storm waits there while
/// admission control paces it). The kernel caps the length at `net.core.somaxconn`.
pub fn bind_listener(addr: SocketAddr, backlog: i32) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    TcpListener::from_std(s.into())
}

/// Run `obdgw relay` until SIGINT/SIGTERM.
pub fn run_relay(args: RelayArgs) -> ExitCode {
    match run_relay_inner(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("obdgw relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_relay_inner(args: RelayArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    // Logs (refusals with their codes; attachments at debug) go to stderr; RUST_LOG tunes
    // them.
    let (_, warning) = crate::logging::init(&crate::config::LogConfig::default());
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    let cfg = args.config()?;
    let text = std::fs::read_to_string(&args.tokens)
        .with_context(|| format!("reading tokens file {}", args.tokens.display()))?;
    let tokens = StaticTokens::from_toml(&text)
        .map_err(|e| anyhow::anyhow!("tokens file {}: {e}", args.tokens.display()))?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(tls_acceptor(c, k)?),
        _ => None,
    };
    match raise_nofile() {
        Ok(n) if (n as usize) < cfg.max_connections + 64 => tracing::warn!(
            open_files = n,
            max_connections = cfg.max_connections,
            "the open-files limit is below --max-connections: raise LimitNOFILE= (or ulimit -n)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
    let rt = match args.threads {
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.min(256))
            .enable_all()
            .build(),
    }
    .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let listener =
            bind_listener(args.listen, 4096).with_context(|| format!("binding {}", args.listen))?;
        let local = listener.local_addr()?;
        let hub = Hub::new(cfg.max_sessions, cfg.keepalive_ms);
        let shutdown = CancellationToken::new();
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        // Whoever started us may stop reading stdout: never die of a closed pipe.
        use std::io::Write as _;
        let say = |line: String| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        };
        say(format!(
            "obdgw relay listening on {scheme}://{local}/ (subprotocol {})",
            wire::SUBPROTOCOL
        ));
        let metrics_task = match args.metrics_listen {
            Some(a) => {
                let l = TcpListener::bind(a)
                    .await
                    .with_context(|| format!("binding the metrics address {a}"))?;
                say(format!(
                    "obdgw relay metrics on http://{}/metrics",
                    l.local_addr()?
                ));
                Some(tokio::spawn(metrics::serve(
                    l,
                    hub.clone(),
                    shutdown.clone(),
                )))
            }
            None => None,
        };
        crate::signals::spawn(shutdown.clone(), None)?;
        run_with_hub(listener, tls, Arc::new(tokens), cfg, hub, shutdown).await;
        if let Some(t) = metrics_task {
            let _ = t.await;
        }
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab";
    const B: &str = "00000000-0000-4000-8000-000000000000";

    fn file(entries: &[(&str, &str, &str)]) -> String {
        entries
            .iter()
            .map(|(id, g, o)| {
                format!("[[session]]\nid = \"{id}\"\ngateway_token = \"{g}\"\noperator_token = \"{o}\"\n")
            })
            .collect()
    }

    #[test]
    fn tokens_files_refuse_empty_and_repeated_tokens_and_sessions() {
        assert!(StaticTokens::from_toml(&file(&[(A, "g1", "o1"), (B, "g2", "o2")])).is_ok());
        for (entries, want) in [
            (
                vec![(A, "", "o1")],
                "#1 (session 6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab): gateway_token is empty",
            ),
            (vec![(A, "g1", "  ")], "operator_token is empty"),
            (
                vec![(A, "same-1", "same-1")],
                "operator_token is the same token as its gateway_token",
            ),
            (
                vec![(A, "g1", "o1"), (B, "g2", "o1")],
                "#2 (session 00000000-0000-4000-8000-000000000000): operator_token is the same token as the operator_token of [[session]] #1 (session 6f1c2d3e",
            ),
            (
                vec![(A, "g1", "o1"), (B, "o1", "o2")],
                "gateway_token is the same token as the operator_token of [[session]] #1",
            ),
            (
                vec![(A, "g1", "o1"), (A, "g2", "o2")],
                "#2: session 6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab is already listed as #1",
            ),
            (
                vec![(B, "g1", "o1"), ("X", "g2", "o2")],
                "#2: id \"X\" is not a lowercase hyphenated UUID",
            ),
        ] {
            let err = StaticTokens::from_toml(&file(&entries)).unwrap_err();
            assert!(err.contains(want), "{err}\nwanted: {want}");
            if !want.contains("UUID") && !want.contains("already listed") {
                assert!(err.contains("openssl rand"), "says what to do: {err}");
            }
            // Never the token itself.
            for (_, g, o) in &entries {
                for t in [g, o] {
                    if t.len() > 2 {
                        assert!(
                            !err.contains(&format!("{t:?}")) && !err.contains(&format!(" {t} ")),
                            "{err}"
                        );
                    }
                }
            }
        }
        assert!(StaticTokens::from_toml("[[session]]\nid = 1\n").is_err());
    }

    #[tokio::test]
    async fn static_tokens_admit_only_the_right_role() {
        let t = StaticTokens::from_toml(&file(&[(A, "g1", "o1")])).unwrap();
        assert_eq!(t.check(Role::Gateway, A, "g1").await, Ok(()));
        assert_eq!(t.check(Role::Operator, A, "o1").await, Ok(()));
        assert_eq!(
            t.check(Role::Operator, A, "g1").await,
            Err(AuthError::BadToken)
        );
        assert_eq!(
            t.check(Role::Gateway, A, "g1 ").await,
            Err(AuthError::BadToken)
        );
        assert_eq!(
            t.check(Role::Gateway, A, "").await,
            Err(AuthError::BadToken)
        );
        assert_eq!(
            t.check(Role::Gateway, B, "g1").await,
            Err(AuthError::UnknownSession)
        );
        assert_eq!(
            t.check(Role::Gateway, "x", "g1").await,
            Err(AuthError::UnknownSession)
        );
        // The digest is SHA-256.
        let d = digest("abc");
        assert_eq!(d[..4], [0xba, 0x78, 0x16, 0xbf]);
        assert_ne!(d, NO_TOKEN);
    }

    #[test]
    fn throttle_flags_are_checked() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            relay: RelayArgs,
        }
        let parse = |extra: &[&str]| {
            let mut a = vec!["relay", "--listen", "127.0.0.1:0", "--tokens", "t"];
            a.extend_from_slice(extra);
            Cli::try_parse_from(a).unwrap().relay.config()
        };
        let c = parse(&[]).unwrap();
        assert_eq!((c.auth_fail_burst, c.auth_fail_rate), (20, 1.0));
        let c = parse(&["--auth-fail-burst", "5", "--auth-fail-rate", "0.1"]).unwrap();
        assert_eq!((c.auth_fail_burst, c.auth_fail_rate), (5, 0.1));
        assert!(parse(&["--auth-fail-rate", "0"]).is_err());
        assert!(parse(&["--auth-fail-burst", "0", "--auth-fail-rate", "0"]).is_ok());
        // Behind a balancer (no per-source cap) the throttle is off unless asked for.
        assert_eq!(
            parse(&["--preauth-per-source", "0"])
                .unwrap()
                .auth_fail_burst,
            0
        );
        let c = parse(&["--preauth-per-source", "0", "--auth-fail-burst", "7"]).unwrap();
        assert_eq!(c.auth_fail_burst, 7);
    }
}
