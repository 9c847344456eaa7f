//! One relay connection: websocket handshake (with the session id from the URL), the hello
//! under the pre-auth limits, then a reader that forwards to the peer and a writer that
//! drains this connection's outbound queue.
//!
//! Owns: the pre-auth phase (one deadline, small messages, a byte budget; see
//! [`super::admission`]), the refusal of a hello (one answer for an unknown session and a
//! bad token, so nobody can probe which sessions are live), forwarding without parsing
//! (binary messages as the same `Bytes`, text messages as the same `Utf8Bytes`; only their
//! `type` is read, without allocating), the hop keepalive toward silent connections, and
//! closing on write stall.
//!
//! Does not own: pairing (`super::hub`), accepting and the admission caps (`super::run`).

use super::admission::{AuthThrottle, Capped, Listed, SourceGuard};
use super::hub::{Hub, Out, Outbound, Queued, Route};
use super::metrics::{DropReason as AdmissionDrop, Metrics, Refusal};
use super::{AuthError, RelayConfig, TokenCheck};
use crate::wire::tunnel::{self as wire, Control, ErrorCode, Hello};
use futures_util::{SinkExt, StreamExt};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

/// What every connection task shares.
pub(crate) struct Ctx<A> {
    pub hub: Hub,
    pub auth: Arc<A>,
    pub cfg: RelayConfig,
    /// Authentication failures per source ([`AuthThrottle`]).
    pub throttle: AuthThrottle,
    pub shutdown: CancellationToken,
}

/// Held while a connection is unauthenticated: its place under the global pre-auth cap,
/// under its source address's cap and in the eviction list. Dropped when the hello is
/// accepted or the connection ends.
pub(crate) struct PreAuth {
    _permit: OwnedSemaphorePermit,
    _source: SourceGuard,
    _listed: Listed,
    metrics: Arc<Metrics>,
}

impl PreAuth {
    pub fn new(
        permit: OwnedSemaphorePermit,
        source: SourceGuard,
        listed: Listed,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.preauth.fetch_add(1, Ordering::Relaxed);
        PreAuth {
            _permit: permit,
            _source: source,
            _listed: listed,
            metrics,
        }
    }
}

impl Drop for PreAuth {
    fn drop(&mut self) {
        self.metrics.preauth.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts the connection as open until dropped.
pub(crate) struct OpenGuard(Arc<Metrics>);

impl OpenGuard {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        metrics.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(metrics)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The path prefix that carries the session id: `/v1/sessions/<uuid>` (after an optional
/// prefix of the operator's choosing, e.g. `/relay/v1/sessions/<uuid>`).
pub const SESSION_PATH: &str = "/v1/sessions/";

/// The session id named by a request path: `Ok(None)` for a path without one (the
/// protocol's original "any path", still accepted), `Err` for a malformed one.
pub fn session_from_path(path: &str) -> Result<Option<&str>, &'static str> {
    let path = path.split('?').next().unwrap_or("");
    let Some(at) = path.rfind(SESSION_PATH) else {
        return Ok(None);
    };
    let id = &path[at + SESSION_PATH.len()..];
    if wire::valid_session_id(id) {
        Ok(Some(id))
    } else {
        Err("the path names a session, but not as a lowercase hyphenated UUID")
    }
}

/// The handshake check: our subprotocol must be offered; the session id in the path, if
/// any, is kept for the hello check.
#[allow(clippy::result_large_err)]
fn check_request(
    req: &Request,
    mut resp: Response,
    path_session: &mut Option<String>,
) -> Result<Response, ErrorResponse> {
    let offered = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == wire::SUBPROTOCOL);
    let bad = |why: String| {
        let mut r = ErrorResponse::new(Some(why));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        r
    };
    if !offered {
        return Err(bad(format!(
            "this is an obdgw tunnel relay: offer the websocket subprotocol {}",
            wire::SUBPROTOCOL
        )));
    }
    match session_from_path(req.uri().path()) {
        Ok(s) => *path_session = s.map(str::to_owned),
        Err(why) => return Err(bad(why.to_string())),
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

/// The one answer to a hello whose session is unknown or whose token is wrong.
pub const AUTH_REFUSAL: &str =
    "the session is unknown to this relay or the token is not valid for this role and session";

/// A refused hello: the code, the message, and what it counts as.
type Refused = (ErrorCode, &'static str, Refusal);

/// The relay's hello checks, in the order of `docs/tunnel-protocol.md` section 4.
pub(crate) async fn check_hello<A: TokenCheck>(
    h: &Hello,
    path_session: Option<&str>,
    auth: &A,
) -> Result<(), Refused> {
    if h.version != wire::VERSION as u32 {
        return Err((
            ErrorCode::UNSUPPORTED_VERSION,
            "this relay speaks tunnel protocol version 1",
            Refusal::UnsupportedVersion,
        ));
    }
    if let Some(p) = path_session
        && p != h.session
    {
        return Err((
            ErrorCode::BAD_HELLO,
            "the hello names another session than the URL path",
            Refusal::BadHello,
        ));
    }
    h.limits
        .validate()
        .map_err(|why| (ErrorCode::BAD_HELLO, why, Refusal::BadHello))?;
    // Every session id goes through the same check (a malformed one is simply unknown):
    // no early answer that is faster for some sessions than for others.
    let verdict: Result<(), AuthError> = auth.check(h.role, &h.session, &h.token.0).await;
    match verdict {
        Ok(()) => Ok(()),
        Err(why) => {
            // The log says which; the wire does not.
            tracing::debug!(session = %h.session, role = ?h.role, %why, "relay refused a token");
            Err((ErrorCode::AUTH_FAILED, AUTH_REFUSAL, Refusal::AuthFailed))
        }
    }
}

/// What a text message is, for the relay: read without allocating (unless the `type`
/// string has escapes).
#[derive(Debug, PartialEq, Eq)]
enum TextKind {
    Bye,
    Hello,
    Other,
}

fn text_kind(t: &str) -> TextKind {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(borrow, rename = "type")]
        kind: Option<Cow<'a, str>>,
    }
    match serde_json::from_str::<Kind>(t) {
        Ok(Kind { kind: Some(k) }) if k == "bye" => TextKind::Bye,
        Ok(Kind { kind: Some(k) }) if k == "hello" => TextKind::Hello,
        _ => TextKind::Other,
    }
}

/// One connection, from the websocket handshake to its end.
///
/// The pre-auth phase runs in its own heap-allocated future, freed once the hello is
/// accepted: what an idle connection keeps is only the forwarding state.
pub(crate) async fn serve<S, A>(
    stream: S,
    addr: SocketAddr,
    ctx: Arc<Ctx<A>>,
    deadline: Instant,
    stop: CancellationToken,
    pre: PreAuth,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: TokenCheck,
{
    let Some((inner, hello)) = Box::pin(authenticate(stream, addr, &ctx, deadline, &stop)).await
    else {
        return;
    };
    forward(inner, hello, addr, &ctx, pre).await
}

/// Websocket handshake and hello under the pre-auth limits; `None` when refused (the
/// refusal was sent) or failed. `stop`: the relay shuts down, or this connection is evicted
/// (a child of the shutdown token, cancelled alone by eviction).
#[allow(clippy::result_large_err)] // the handshake callback's error is tungstenite's response
pub(crate) async fn authenticate<S, A>(
    stream: S,
    addr: SocketAddr,
    ctx: &Ctx<A>,
    deadline: Instant,
    stop: &CancellationToken,
) -> Option<(Capped<S>, Hello)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: TokenCheck,
{
    let metrics = ctx.hub.metrics().clone();
    let cfg = &ctx.cfg;
    let stopped = || {
        if !ctx.shutdown.is_cancelled() {
            metrics.admission_drop(AdmissionDrop::Evicted);
            tracing::debug!(%addr, "relay evicted the oldest unauthenticated connection");
        }
        None
    };

    // Handshake, under the pre-auth byte budget and the deadline.
    let mut path_session: Option<String> = None;
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(
        Capped::new(stream, cfg.preauth_bytes),
        |req: &Request, resp: Response| check_request(req, resp, &mut path_session),
        Some(cfg.preauth_ws_config()),
    );
    let mut ws = match tokio::select! {
        _ = stop.cancelled() => return stopped(),
        h = tokio::time::timeout_at(deadline, handshake) => h,
    } {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            metrics.admission_drop(AdmissionDrop::Handshake);
            tracing::debug!(%addr, error = %e, "relay websocket handshake failed");
            return None;
        }
        Err(_) => {
            metrics.admission_drop(AdmissionDrop::Deadline);
            tracing::debug!(%addr, "relay websocket handshake timed out");
            return None;
        }
    };

    // The hello, under the same deadline.
    let first = tokio::select! {
        _ = stop.cancelled() => return stopped(),
        f = tokio::time::timeout_at(deadline, ws.next()) => f,
    };
    use tokio_tungstenite::tungstenite::Error as WsError;
    let hello = match first {
        Ok(Some(Ok(Message::Text(t)))) => match Control::parse(&t) {
            Ok(Control::Hello(h)) => Ok(h),
            _ => Err((
                ErrorCode::BAD_HELLO,
                "the first message must be a valid hello",
                Refusal::BadHello,
            )),
        },
        Ok(Some(Ok(_))) => Err((
            ErrorCode::BAD_HELLO,
            "the first message must be a text hello",
            Refusal::BadHello,
        )),
        Ok(Some(Err(WsError::Capacity(_)))) => Err((
            ErrorCode::BAD_HELLO,
            "a message before the hello was accepted exceeds the relay's pre-auth limit",
            Refusal::BadHello,
        )),
        Ok(_) if ws.get_ref().exhausted() => {
            metrics.admission_drop(AdmissionDrop::PreAuthBytes);
            return None;
        }
        Ok(_) => {
            metrics.admission_drop(AdmissionDrop::Handshake);
            return None;
        }
        Err(_) => {
            metrics.admission_drop(AdmissionDrop::Deadline);
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                refuse(
                    &mut ws,
                    ErrorCode::BAD_HELLO,
                    "no hello within the relay's deadline",
                ),
            )
            .await;
            return None;
        }
    };
    let checked = match hello {
        Ok(h) if !ctx.throttle.allows(addr.ip(), Instant::now().into_std()) => {
            // Too many failures from this source: not checked at all (a right token is
            // refused too), answered like any failure after a delay that holds one of
            // the source's pre-auth places.
            metrics.auth_throttled.fetch_add(1, Ordering::Relaxed);
            let until = deadline.min(Instant::now() + cfg.auth_throttle_delay);
            tokio::select! {
                _ = stop.cancelled() => return stopped(),
                _ = tokio::time::sleep_until(until) => {}
            }
            drop(h);
            Err((ErrorCode::AUTH_FAILED, AUTH_REFUSAL, Refusal::AuthFailed))
        }
        Ok(h) => {
            let r = check_hello(&h, path_session.as_deref(), ctx.auth.as_ref()).await;
            if let Err((_, _, Refusal::AuthFailed)) = r {
                ctx.throttle.failed(addr.ip(), Instant::now().into_std());
            }
            r.map(|()| h)
        }
        Err(e) => Err(e),
    };
    let hello: Hello = match checked {
        Ok(h) => h,
        Err((code, why, counted)) => {
            metrics.refuse(counted);
            tracing::info!(%addr, %code, why, "relay refused a connection");
            let _ = tokio::time::timeout(Duration::from_secs(1), refuse(&mut ws, code, why)).await;
            return None;
        }
    };

    // Authenticated: lift the pre-auth limits (a new websocket over the same stream; the
    // protocol lets nothing follow the hello before `welcome`).
    let mut inner = ws.into_inner();
    inner.lift();
    Some((inner, hello))
}

/// An authenticated connection: attach it, then forward until either side ends.
async fn forward<S, A>(inner: Capped<S>, hello: Hello, addr: SocketAddr, ctx: &Ctx<A>, pre: PreAuth)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: TokenCheck,
{
    let metrics = ctx.hub.metrics().clone();
    let cfg = &ctx.cfg;
    let mut ws =
        WebSocketStream::from_raw_socket(inner, WsRole::Server, Some(cfg.ws_config())).await;
    let session = hello.session.clone();
    let role = hello.role;
    let (out, mut rx) = Outbound::new(1024, cfg.max_queued_bytes);
    let me = out.clone();
    let (conn, link) = match ctx.hub.attach(&hello, out, Instant::now()) {
        Ok(c) => c,
        Err(e) => {
            metrics.refuse(Refusal::SessionLimit);
            tracing::info!(%addr, error = %e, "relay refused a connection");
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                refuse(&mut ws, ErrorCode::SESSION_LIMIT, &e.to_string()),
            )
            .await;
            return;
        }
    };
    drop(pre);
    drop(hello);
    metrics.attached.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%addr, session, ?role, conn, "relay attached");
    let (mut sink, mut stream) = ws.split();
    let done = CancellationToken::new();

    // Writer: drains the outbound queue into the websocket, several messages per flush;
    // closes on kick, end, stall or shutdown.
    let writer = {
        let (done, shutdown, stall, metrics) = (
            done.clone(),
            ctx.shutdown.clone(),
            cfg.write_stall,
            metrics.clone(),
        );
        async move {
            let mut pending: Vec<Queued> = Vec::new();
            'outer: loop {
                let q: Queued = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            sink.send(close_msg(1001, "relay shutting down")),
                        )
                        .await;
                        break;
                    }
                    q = rx.recv() => match q { Some(q) => q, None => break },
                    _ = done.cancelled() => {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            sink.send(close_msg(1000, "")),
                        )
                        .await;
                        break;
                    }
                };
                pending.push(q);
                while pending.len() < 64 {
                    match rx.try_recv() {
                        Ok(q) => pending.push(q),
                        Err(_) => break,
                    }
                }
                let mut last: Option<Message> = None;
                let mut stamps = [0u32; 64];
                let mut stamped = 0;
                for q in &pending {
                    if q.read_at != 0 && stamped < stamps.len() {
                        stamps[stamped] = q.read_at;
                        stamped += 1;
                    }
                }
                let write = async {
                    for q in pending.drain(..) {
                        let msg = match q.out {
                            Out::Text(t) => Message::Text(t),
                            Out::Binary(b) => Message::Binary(b),
                            Out::Ping => Message::Ping(bytes::Bytes::new()),
                            Out::Kick { code, message } => {
                                last = Some(close_msg(code.close_code(), code.name()));
                                error_text(code, &message)
                            }
                            Out::End => {
                                last = Some(close_msg(1000, "session ended"));
                                break;
                            }
                        };
                        sink.feed(msg).await?;
                        if last.is_some() {
                            break;
                        }
                    }
                    if let Some(close) = last.take() {
                        sink.feed(close).await?;
                        sink.flush().await?;
                        return Ok::<bool, tokio_tungstenite::tungstenite::Error>(true);
                    }
                    sink.flush().await?;
                    Ok(false)
                };
                match tokio::time::timeout(stall, write).await {
                    Ok(Ok(false)) => {
                        let now = metrics.stamp();
                        for &t in &stamps[..stamped] {
                            metrics.forward_latency.record(now.wrapping_sub(t));
                        }
                    }
                    Ok(Ok(true)) | Ok(Err(_)) => break 'outer,
                    Err(_) => {
                        metrics.write_stalls.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("relay closing a connection that stopped reading");
                        break 'outer;
                    }
                }
            }
            done.cancel();
        }
    };

    // Reader: forwards to the current peer.
    let reader = {
        let (done, hub, session, metrics) = (
            done.clone(),
            ctx.hub.clone(),
            session.clone(),
            metrics.clone(),
        );
        let ping_after = cfg.ping_after;
        async move {
            let mut pinged = false;
            loop {
                let msg = tokio::select! {
                    _ = done.cancelled() => break,
                    m = tokio::time::timeout(ping_after, stream.next()) => m,
                };
                let read_at = metrics.stamp();
                let msg = match msg {
                    Err(_) if pinged => {
                        metrics.silent_closed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(_) => {
                        pinged = true;
                        metrics.pings_sent.fetch_add(1, Ordering::Relaxed);
                        if !me.notify(Out::Ping) {
                            break;
                        }
                        continue;
                    }
                    Ok(Some(Ok(m))) => {
                        pinged = false;
                        m
                    }
                    Ok(_) => break,
                };
                let (out, len) = match msg {
                    Message::Binary(b) => {
                        let n = b.len();
                        (Out::Binary(b), n)
                    }
                    Message::Text(t) => match text_kind(&t) {
                        TextKind::Bye => {
                            if let Route::Peer(p) = link.route() {
                                let n = t.len();
                                p.forward(Out::Text(t), n, metrics.stamp()).await;
                            }
                            hub.end(&session);
                            break;
                        }
                        TextKind::Hello => {
                            me.notify(Out::Kick {
                                code: ErrorCode::MALFORMED_CONTROL,
                                message: "a second hello on one connection".into(),
                            });
                            break;
                        }
                        TextKind::Other => {
                            let n = t.len();
                            (Out::Text(t), n)
                        }
                    },
                    Message::Close(_) => break,
                    // Ping/pong frames are answered by tungstenite itself.
                    _ => continue,
                };
                match link.route() {
                    Route::Gone => break,
                    Route::NoPeer => {
                        metrics.discarded_messages.fetch_add(1, Ordering::Relaxed);
                    }
                    Route::Peer(peer) => {
                        if peer.would_wait(len) {
                            metrics.backpressure_waits.fetch_add(1, Ordering::Relaxed);
                        }
                        // Waits while the peer's queue is full: backpressure to this sender.
                        if peer.forward(out, len, read_at).await {
                            metrics.forwarded_messages.fetch_add(1, Ordering::Relaxed);
                            metrics
                                .forwarded_bytes
                                .fetch_add(len as u64, Ordering::Relaxed);
                        }
                    }
                }
            }
            // Leave the session first so nothing new is queued toward this connection;
            // the writer then sends what is queued and closes.
            hub.detach(&session, role, conn, Instant::now());
            drop(me);
            drop(link);
            done.cancel();
        }
    };

    tokio::join!(writer, reader);
    ctx.hub.detach(&session, role, conn, Instant::now());
    tracing::debug!(%addr, session, ?role, conn, "relay detached");
}

/// Send a refusal (`error`, then close `4000 + code`).
async fn refuse<S>(ws: &mut WebSocketStream<S>, code: ErrorCode, why: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = ws.feed(error_text(code, why)).await;
    let _ = ws.send(close_msg(code.close_code(), code.name())).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::relay::{PreAuthProbe, SessionTokens, StaticTokens};
    use crate::wire::tunnel::{Limits, Resume, Role, Token};
    use std::sync::atomic::AtomicU64;

    const SID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab";
    const OTHER: &str = "00000000-0000-4000-8000-000000000000";

    fn tokens() -> Arc<StaticTokens> {
        Arc::new(StaticTokens::new([SessionTokens {
            id: SID.into(),
            gateway_token: "gw-token".into(),
            operator_token: "op-token".into(),
        }]))
    }

    fn from(i: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, i], 40_000))
    }

    fn upgrade(path: &str) -> Vec<u8> {
        format!(
            "GET {path} HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: {}\r\n\r\n",
            wire::SUBPROTOCOL
        )
        .into_bytes()
    }

    /// A masked client frame (FIN set).
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    fn hello(role: Role, session: &str, token: &str) -> Vec<u8> {
        let h = Hello {
            version: 1,
            role,
            session: session.into(),
            token: Token(token.into()),
            instance: 7,
            capabilities: vec!["isotp".into()],
            resume: Resume {
                peer_instance: None,
                last_received: 0,
            },
            limits: Limits::default(),
            agent: None,
        };
        let mut b = upgrade("/");
        b.extend(frame(1, Control::Hello(h).to_text().as_bytes()));
        b
    }

    fn refused_auth(out: &[u8]) -> bool {
        let t = String::from_utf8_lossy(out);
        t.contains(AUTH_REFUSAL) && t.contains("auth_failed")
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_sources_are_refused_unchecked_after_a_delay() {
        let cfg = RelayConfig {
            auth_fail_burst: 3,
            auth_fail_rate: 0.5,
            auth_throttle_delay: Duration::from_secs(1),
            ..RelayConfig::default()
        };
        let p = PreAuthProbe::new(tokens(), cfg);
        let right = hello(Role::Gateway, SID, "gw-token");
        let t = Instant::now();
        let mut first = None;
        for _ in 0..3 {
            let r = p.run(from(1), &hello(Role::Gateway, SID, "wrong")).await;
            assert_eq!(r.accepted, None);
            assert!(refused_auth(&r.output));
            first.get_or_insert(r.output);
        }
        assert_eq!(
            t.elapsed(),
            Duration::ZERO,
            "checked failures are not delayed"
        );
        // Throttled: even the right token is not checked, and the answer waits.
        let t = Instant::now();
        let r = p.run(from(1), &right).await;
        assert_eq!(r.accepted, None);
        assert_eq!(t.elapsed(), Duration::from_secs(1));
        assert_eq!(
            Some(&r.output),
            first.as_ref(),
            "the same bytes as a checked failure"
        );
        let m = p.metrics();
        assert_eq!(m.auth_throttled.load(Ordering::Relaxed), 1);
        assert_eq!(m.refusals(Refusal::AuthFailed), 4);
        // Another source is not affected.
        let r = p.run(from(2), &right).await;
        assert_eq!(r.accepted, Some((Role::Gateway, SID.to_string())));
        // One try is back 2 s after the last failure (rate 0.5/s).
        tokio::time::sleep(Duration::from_millis(999)).await;
        assert_eq!(p.run(from(1), &right).await.accepted, None);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let t = Instant::now();
        assert!(p.run(from(1), &right).await.accepted.is_some());
        assert_eq!(t.elapsed(), Duration::ZERO);
        assert_eq!(m.auth_throttled.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_throttle_delay_stays_within_the_hello_deadline() {
        let cfg = RelayConfig {
            auth_fail_burst: 1,
            auth_throttle_delay: Duration::from_secs(60),
            hello_timeout: Duration::from_secs(3),
            ..RelayConfig::default()
        };
        let p = PreAuthProbe::new(tokens(), cfg);
        p.run(from(1), &hello(Role::Operator, SID, "x")).await;
        let t = Instant::now();
        let r = p
            .run(from(1), &hello(Role::Operator, SID, "op-token"))
            .await;
        assert!(refused_auth(&r.output));
        assert_eq!(t.elapsed(), Duration::from_secs(3));
    }

    /// Counts the checks it is asked for.
    struct Counting(AtomicU64, StaticTokens);
    impl TokenCheck for Counting {
        async fn check(&self, role: Role, session: &str, token: &str) -> Result<(), AuthError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            self.1.check(role, session, token).await
        }
    }

    #[tokio::test]
    async fn unknown_sessions_bad_tokens_and_malformed_ids_take_one_path() {
        let auth = Arc::new(Counting(AtomicU64::new(0), (*tokens()).clone()));
        let p = PreAuthProbe::new(
            auth.clone(),
            RelayConfig {
                auth_fail_burst: 0,
                ..RelayConfig::default()
            },
        );
        let mut outs = Vec::new();
        for (role, session, token) in [
            (Role::Gateway, SID, "nope"),
            (Role::Gateway, OTHER, "gw-token"),
            (Role::Operator, SID, "gw-token"),
            (Role::Operator, "not-a-uuid", "op-token"),
            (Role::Operator, "", ""),
        ] {
            let r = p.run(from(1), &hello(role, session, token)).await;
            assert_eq!(r.accepted, None);
            assert!(
                refused_auth(&r.output),
                "{session} {token} {:?} {}",
                String::from_utf8_lossy(&r.output),
                p.metrics().render()
            );
            outs.push(r.output);
        }
        assert!(
            outs.windows(2).all(|w| w[0] == w[1]),
            "byte for byte one answer"
        );
        // Every one of them went through the token check: no early return for any.
        assert_eq!(auth.0.load(Ordering::Relaxed), 5);
        let right = p
            .run(from(1), &hello(Role::Operator, SID, "op-token"))
            .await;
        assert!(right.accepted.is_some());
    }

    #[tokio::test]
    async fn pre_hello_frames_above_4_kib_are_refused_from_their_header() {
        let p = PreAuthProbe::new(tokens(), RelayConfig::default());
        assert_eq!(RelayConfig::default().preauth_message, 4096);
        // Only the header of a 5,000-byte text frame: refused without waiting for it.
        let mut input = upgrade("/");
        let mut f = frame(1, &[b' '; 5000]);
        f.truncate(8);
        input.extend(f);
        let r = p.run(from(1), &input).await;
        assert_eq!(r.accepted, None);
        let t = String::from_utf8_lossy(&r.output);
        assert!(t.contains("pre-auth limit"), "{t}");
        // A hello padded to just under 4 KiB is fine.
        let mut h = hello(Role::Gateway, SID, "gw-token");
        let text_at = upgrade("/").len();
        let len = h.len() - text_at;
        h.truncate(text_at);
        let body = {
            let mut v = Control::Hello(Hello {
                version: 1,
                role: Role::Gateway,
                session: SID.into(),
                token: Token("gw-token".into()),
                instance: 7,
                capabilities: vec![],
                resume: Resume {
                    peer_instance: None,
                    last_received: 0,
                },
                limits: Limits::default(),
                agent: Some(String::new()),
            })
            .to_text();
            let pad = 4096 - v.len();
            v = v.replace(
                "\"agent\":\"\"",
                &format!("\"agent\":\"{}\"", "a".repeat(pad)),
            );
            v
        };
        assert!(len < body.len() && body.len() == 4096);
        h.extend(frame(1, body.as_bytes()));
        assert!(p.run(from(1), &h).await.accepted.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn one_deadline_covers_the_handshake_and_the_hello() {
        use tokio::io::AsyncWriteExt;
        let cfg = RelayConfig {
            hello_timeout: Duration::from_secs(10),
            ..RelayConfig::default()
        };
        let p = PreAuthProbe::new(tokens(), cfg);
        let ctx = p.ctx.clone();
        // A slowloris client: each step alone is well within 10 s, all together not.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let t0 = Instant::now();
        let srv = tokio::spawn(async move {
            let stop = CancellationToken::new();
            let r = authenticate(server, from(1), &ctx, t0 + ctx.cfg.hello_timeout, &stop).await;
            (r.is_some(), t0.elapsed())
        });
        let req = upgrade("/");
        let h = hello(Role::Gateway, SID, "gw-token");
        let hello_frame = &h[req.len()..];
        client.write_all(&req[..20]).await.unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
        client.write_all(&req[20..]).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        client.write_all(&hello_frame[..10]).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _ = client.write_all(&hello_frame[10..]).await;
        let (accepted, at) = srv.await.unwrap();
        assert!(!accepted);
        assert_eq!(at, Duration::from_secs(10));
        assert_eq!(p.metrics().drops(AdmissionDrop::Deadline), 1);
    }

    #[test]
    fn session_ids_in_paths() {
        let id = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab";
        assert_eq!(
            session_from_path(&format!("/v1/sessions/{id}")),
            Ok(Some(id))
        );
        assert_eq!(
            session_from_path(&format!("/relay/v1/sessions/{id}?x=1")),
            Ok(Some(id))
        );
        for legacy in ["/", "/tunnel", "", "/v1/session/x"] {
            assert_eq!(session_from_path(legacy), Ok(None), "{legacy}");
        }
        for bad in [
            "/v1/sessions/",
            "/v1/sessions/6F1C2D3E-4A5B-4C6D-8E7F-0123456789AB",
            "/v1/sessions/6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab/more",
        ] {
            assert!(session_from_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_kind_reads_only_the_type() {
        assert_eq!(text_kind(r#"{"type":"bye","reason":"x"}"#), TextKind::Bye);
        assert_eq!(
            text_kind(r#"{"reason":"x","type":"hello"}"#),
            TextKind::Hello
        );
        assert_eq!(text_kind(r#"{"type":"h\u0065llo"}"#), TextKind::Hello);
        assert_eq!(
            text_kind(r#"{"type":"ping","id":1,"t_us":2}"#),
            TextKind::Other
        );
        assert_eq!(text_kind("not json"), TextKind::Other);
        assert_eq!(text_kind(r#"{"id":1}"#), TextKind::Other);
    }
}
