//! The tunnel relay (`obdgw relay`): pairs the gateway and the operator of a session and
//! forwards their messages.
//!
//! Owns: the websocket server (optionally TLS), the hello check and authentication through a
//! [`TokenCheck`], pairing and forwarding ([`hub`]), per-connection limits (hello timeout,
//! outbound bytes, write stall), session release (`bye`, idle limit), clean shutdown.
//!
//! Does not own: the end-to-end session (sequencing, replay: `crate::tunnel::session`, run by
//! the endpoints); payload contents (batches are forwarded as the same `Bytes`, unparsed);
//! where tokens come from (a static file for `obdgw relay`; the cloud simulator's tickets in
//! `crate::sim::cloud::relay`).
//!
//! Protocol: `docs/tunnel-protocol.md`, sections 2, 4 and 10.

pub mod hub;

use crate::wire::tunnel::{self as wire, Control, ErrorCode, Hello, Role};
use futures_util::{SinkExt, StreamExt};
use hub::{Hub, Out, Outbound, Queued};
use serde::Deserialize;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
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

/// A fixed map of session id to tokens.
#[derive(Debug, Clone, Default)]
pub struct StaticTokens {
    map: HashMap<String, (String, String)>,
}

impl StaticTokens {
    pub fn new(sessions: impl IntoIterator<Item = SessionTokens>) -> Self {
        StaticTokens {
            map: sessions
                .into_iter()
                .map(|s| (s.id, (s.gateway_token, s.operator_token)))
                .collect(),
        }
    }

    /// Parse a tokens file: `[[session]]` tables with `id`, `gateway_token`,
    /// `operator_token`.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let f: TokensFile = toml::from_str(text).map_err(|e| e.to_string())?;
        for s in &f.session {
            if !wire::valid_session_id(&s.id) {
                return Err(format!(
                    "session id {:?} is not a lowercase hyphenated UUID",
                    s.id
                ));
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
        let (gw, op) = self.map.get(session).ok_or(AuthError::UnknownSession)?;
        let want = match role {
            Role::Gateway => gw,
            Role::Operator => op,
        };
        if same_token(want, token) {
            Ok(())
        } else {
            Err(AuthError::BadToken)
        }
    }
}

/// Relay limits. Every limit says what happens when it is hit.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Sessions held at once; a hello for a new session beyond it gets `session_limit`.
    pub max_sessions: usize,
    /// Connections at once (handshakes included); further TCP connections wait in the
    /// kernel's accept queue.
    pub max_connections: usize,
    /// A connection without a valid hello by then is closed (`bad_hello`).
    pub hello_timeout: Duration,
    /// A session with a side missing this long is released (`session_ended`).
    pub idle_limit: Duration,
    /// Bytes of forwarded batches queued toward one connection; beyond it the relay stops
    /// reading from the sender (TCP backpressure).
    pub max_queued_bytes: usize,
    /// A connection whose websocket accepts nothing for this long is closed.
    pub write_stall: Duration,
    /// Largest websocket message accepted (the protocol's hard maximum by default).
    pub max_message: usize,
    /// Keepalive interval announced in `welcome`.
    pub keepalive_ms: u32,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            max_sessions: 1000,
            max_connections: 2100,
            hello_timeout: Duration::from_secs(10),
            idle_limit: Duration::from_secs(600),
            max_queued_bytes: 8 * 1024 * 1024,
            write_stall: Duration::from_secs(30),
            max_message: wire::Limits::HARD_MAX as usize + 64,
            keepalive_ms: 5000,
        }
    }
}

impl RelayConfig {
    fn ws_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(64 * 1024)
            .write_buffer_size(64 * 1024)
            .max_write_buffer_size(4 * 1024 * 1024)
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_message))
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

/// Build a TLS acceptor from PEM files (certificate chain, private key), with ring.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, RelayError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|source| RelayError::TlsFile {
            path: p.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| RelayError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(RelayError::Tls(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| RelayError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RelayError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| RelayError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
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
/// simulator ends a session when its ticket is closed: [`Hub::release`]). Build the hub
/// with `Hub::new(cfg.max_sessions, cfg.keepalive_ms)`.
pub async fn run_with_hub<A: TokenCheck>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    auth: Arc<A>,
    cfg: RelayConfig,
    hub: Hub,
    shutdown: CancellationToken,
) {
    let cfg = Arc::new(cfg);
    let tracker = TaskTracker::new();
    let conns = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections));
    {
        let (hub, shutdown, idle) = (hub.clone(), shutdown.clone(), cfg.idle_limit);
        tracker.spawn(async move {
            let period = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        let n = hub.reap(tokio::time::Instant::now(), idle);
                        if n > 0 {
                            tracing::info!(released = n, "relay released idle sessions");
                        }
                    }
                }
            }
        });
    }
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = conns.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (tcp, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "relay accept failed");
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (hub, auth, cfg, shutdown, tls) = (
            hub.clone(),
            auth.clone(),
            cfg.clone(),
            shutdown.clone(),
            tls.clone(),
        );
        tracker.spawn(async move {
            let _permit = permit;
            match tls {
                Some(acc) => match tokio::time::timeout(cfg.hello_timeout, acc.accept(tcp)).await {
                    Ok(Ok(s)) => serve(s, addr, hub, auth, cfg, shutdown).await,
                    Ok(Err(e)) => tracing::info!(%addr, error = %e, "relay TLS handshake failed"),
                    Err(_) => tracing::info!(%addr, "relay TLS handshake timed out"),
                },
                None => serve(tcp, addr, hub, auth, cfg, shutdown).await,
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// The websocket handshake callback: the client must offer our subprotocol.
#[allow(clippy::result_large_err)]
fn check_subprotocol(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let offered = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == wire::SUBPROTOCOL);
    if !offered {
        let mut r = ErrorResponse::new(Some(format!(
            "this is an obdgw tunnel relay: offer the websocket subprotocol {}",
            wire::SUBPROTOCOL
        )));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return Err(r);
    }
    resp.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(wire::SUBPROTOCOL),
    );
    Ok(resp)
}

fn close_msg(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from(reason.chars().take(100).collect::<String>()),
    }))
}

fn error_text(code: ErrorCode, message: &str) -> Message {
    Message::Text(Utf8Bytes::from(
        Control::Error {
            code,
            message: message.into(),
            channel: None,
        }
        .to_text(),
    ))
}

/// One connection: handshake, hello, then forwarding until either side ends.
async fn serve<S, A>(
    stream: S,
    addr: SocketAddr,
    hub: Hub,
    auth: Arc<A>,
    cfg: Arc<RelayConfig>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: TokenCheck,
{
    let handshake = tokio::time::timeout(
        cfg.hello_timeout,
        tokio_tungstenite::accept_hdr_async_with_config(
            stream,
            check_subprotocol,
            Some(cfg.ws_config()),
        ),
    );
    let ws = match tokio::select! {
        _ = shutdown.cancelled() => return,
        h = handshake => h,
    } {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::info!(%addr, error = %e, "relay websocket handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%addr, "relay websocket handshake timed out");
            return;
        }
    };
    let (mut sink, mut stream) = ws.split();

    // The hello.
    let first = tokio::select! {
        _ = shutdown.cancelled() => return,
        f = tokio::time::timeout(cfg.hello_timeout, stream.next()) => f,
    };
    let hello = match first {
        Ok(Some(Ok(Message::Text(t)))) => match Control::parse(&t) {
            Ok(Control::Hello(h)) => Ok(h),
            _ => Err((
                ErrorCode::BAD_HELLO,
                "the first message must be a valid hello",
            )),
        },
        Ok(Some(Ok(_))) => Err((
            ErrorCode::BAD_HELLO,
            "the first message must be a text hello",
        )),
        Ok(_) => return,
        Err(_) => Err((
            ErrorCode::BAD_HELLO,
            "no hello within the relay's hello timeout",
        )),
    };
    let hello = match hello {
        Ok(h) => check_hello(h, auth.as_ref()).await,
        Err(e) => Err(e),
    };
    let hello: Hello = match hello {
        Ok(h) => h,
        Err((code, why)) => {
            tracing::info!(%addr, %code, why, "relay refused a connection");
            let _ = sink.send(error_text(code, why)).await;
            let _ = sink.send(close_msg(code.close_code(), code.name())).await;
            return;
        }
    };
    let session = hello.session.clone();
    let role = hello.role;
    let (out, mut rx) = Outbound::new(1024, cfg.max_queued_bytes);
    let conn = match hub.attach(&hello, out, tokio::time::Instant::now()) {
        Ok(c) => c,
        Err(e) => {
            let code = ErrorCode::SESSION_LIMIT;
            let _ = sink.send(error_text(code, &e.to_string())).await;
            let _ = sink.send(close_msg(code.close_code(), code.name())).await;
            return;
        }
    };
    tracing::info!(%addr, session, ?role, conn, "relay attached");
    let done = CancellationToken::new();

    // Writer: drains the outbound queue into the websocket; closes on kick/end/stall.
    let writer = {
        let (done, shutdown, stall) = (done.clone(), shutdown.clone(), cfg.write_stall);
        async move {
            loop {
                let q: Queued = tokio::select! {
                    _ = done.cancelled() => {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            sink.send(close_msg(1000, "")),
                        )
                        .await;
                        break;
                    }
                    _ = shutdown.cancelled() => {
                        let _ = sink.send(close_msg(1001, "relay shutting down")).await;
                        break;
                    }
                    q = rx.recv() => match q { Some(q) => q, None => break },
                };
                let (msg, last) = match q.out {
                    Out::Text(t) => (Message::Text(Utf8Bytes::from(t)), None),
                    Out::Binary(b) => (Message::Binary(b), None),
                    Out::Kick { code, message } => (
                        error_text(code, &message),
                        Some(close_msg(code.close_code(), code.name())),
                    ),
                    Out::End => (close_msg(1000, "session ended"), None),
                };
                let is_end = matches!(msg, Message::Close(_));
                match tokio::time::timeout(stall, sink.send(msg)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        tracing::info!("relay closing a connection that stopped reading");
                        break;
                    }
                }
                if let Some(close) = last {
                    let _ = tokio::time::timeout(stall, sink.send(close)).await;
                    break;
                }
                if is_end {
                    break;
                }
            }
            done.cancel();
        }
    };

    // Reader: forwards to the current peer.
    let reader = {
        let (done, hub, session) = (done.clone(), hub.clone(), session.clone());
        async move {
            loop {
                let msg = tokio::select! {
                    _ = done.cancelled() => break,
                    m = stream.next() => m,
                };
                let msg = match msg {
                    Some(Ok(m)) => m,
                    _ => break,
                };
                let (out, len) = match msg {
                    Message::Binary(b) => {
                        let n = b.len();
                        (Out::Binary(b), n)
                    }
                    Message::Text(t) => match Control::parse(&t) {
                        Ok(Control::Bye { .. }) => {
                            if let Some(p) = hub.peer_of(&session, role) {
                                p.forward(Out::Text(t.to_string()), t.len()).await;
                            }
                            hub.end(&session);
                            break;
                        }
                        Ok(Control::Hello(_)) => {
                            if let Some(me) = self_outbound(&hub, &session, role, conn) {
                                me.notify(Out::Kick {
                                    code: ErrorCode::MALFORMED_CONTROL,
                                    message: "a second hello on one connection".into(),
                                });
                            }
                            break;
                        }
                        _ => {
                            let n = t.len();
                            (Out::Text(t.to_string()), n)
                        }
                    },
                    Message::Close(_) => break,
                    // Ping/pong frames are answered by tungstenite itself.
                    _ => continue,
                };
                if !hub.is_current(&session, role, conn) {
                    break;
                }
                if let Some(peer) = hub.peer_of(&session, role) {
                    // Waits while the peer's queue is full: backpressure to this sender.
                    peer.forward(out, len).await;
                }
            }
            done.cancel();
        }
    };

    tokio::join!(writer, reader);
    hub.detach(&session, role, conn, tokio::time::Instant::now());
    tracing::info!(%addr, session, ?role, conn, "relay detached");
}

fn self_outbound(hub: &Hub, session: &str, role: Role, conn: u64) -> Option<Outbound> {
    if hub.is_current(session, role, conn) {
        hub.peer_of(session, role.other())
    } else {
        None
    }
}

async fn check_hello<A: TokenCheck>(
    h: Hello,
    auth: &A,
) -> Result<Hello, (ErrorCode, &'static str)> {
    if h.version != wire::VERSION as u32 {
        return Err((
            ErrorCode::UNSUPPORTED_VERSION,
            "this relay speaks tunnel protocol version 1",
        ));
    }
    if !wire::valid_session_id(&h.session) {
        return Err((
            ErrorCode::UNKNOWN_SESSION,
            "the session id is not a lowercase hyphenated UUID",
        ));
    }
    h.limits
        .validate()
        .map_err(|why| (ErrorCode::BAD_HELLO, why))?;
    match auth.check(h.role, &h.session, &h.token.0).await {
        Ok(()) => Ok(h),
        Err(AuthError::UnknownSession) => Err((
            ErrorCode::UNKNOWN_SESSION,
            "the session is not known to this relay",
        )),
        Err(AuthError::BadToken) => Err((
            ErrorCode::AUTH_FAILED,
            "the token is not valid for this role and session",
        )),
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
    // Logs (attachments, refusals with their codes) go to stderr; RUST_LOG tunes them.
    let (_, warning) = crate::logging::init(&crate::config::LogConfig::default());
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    let text = std::fs::read_to_string(&args.tokens)
        .with_context(|| format!("reading tokens file {}", args.tokens.display()))?;
    let tokens = StaticTokens::from_toml(&text)
        .map_err(|e| anyhow::anyhow!("tokens file {}: {e}", args.tokens.display()))?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(tls_acceptor(c, k)?),
        _ => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let local = listener.local_addr()?;
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        println!("obdgw relay listening on {scheme}://{local}/ (subprotocol {})", wire::SUBPROTOCOL);
        let shutdown = CancellationToken::new();
        let s2 = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            s2.cancel();
        });
        run(listener, tls, Arc::new(tokens), RelayConfig::default(), shutdown).await;
        anyhow::Ok(())
    })
}
