//! The thin tokio driver of a tunnel [`Session`]: one websocket to the relay, reconnected with
//! backoff, with bounded channels to and from the application (gateway side or operator
//! endpoint).
//!
//! Owns: connecting (ws or wss with the `obdgw.tunnel.v1` subprotocol), feeding the session
//! with websocket messages and `now`, sending what it emits, sleeping until `poll_at`,
//! reconnecting after a dead or failed connection (exponential backoff with jitter, reset once
//! a peer was reached), and holding a refused record until the session has room again.
//!
//! Does not own: any protocol decision (all in the session) or what records mean.

use super::session::{Event, SendError, Session, SessionError, SessionStats, Transmit};
use crate::wire::tunnel::{Control, RecordRepr, SUBPROTOCOL};
use futures_util::{SinkExt, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

/// Application messages taken in one go before the session gets to send (bounds the time
/// the websocket waits while a busy application keeps the queue full).
const DRAIN_MAX: usize = 1024;

/// Where a connection's token comes from when it is not fixed: asked before every connect
/// and reconnect, so a token that expires (a cloud bearer) is never presented stale. An
/// error skips the attempt (it is retried after the backoff).
pub type TokenSource =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

/// What the driver publishes for status displays: the link, round-trip time and counters.
/// Updated on link changes and at most every [`VIEW_EVERY`] otherwise (never per record).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkView {
    /// `connecting` (no websocket yet), `hello`, `awaiting-peer`, `up`, `resuming` (the
    /// websocket dropped after the peer was reached), `closed`.
    pub state: &'static str,
    pub rtt: Option<Duration>,
    pub stats: SessionStats,
    /// Unacknowledged bytes held for replay.
    pub in_flight_bytes: usize,
    /// Connection attempts so far.
    pub attempts: u64,
    /// The last connect or session error, in words.
    pub last_error: Option<String>,
}

/// How often, at most, a busy driver refreshes its [`LinkView`].
pub const VIEW_EVERY: Duration = Duration::from_millis(250);

/// A shared [`LinkView`]: the driver writes, status readers clone.
pub type SharedLinkView = Arc<Mutex<LinkView>>;

/// Where and how to connect.
#[derive(Clone)]
pub struct ClientConfig {
    /// `ws://host:port/path` or `wss://host:port/path`.
    pub url: String,
    /// TLS client configuration for `wss://` (with a crypto provider chosen by the caller).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// First reconnect delay; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Connect (TCP + TLS + websocket handshake) must finish within this.
    pub connect_timeout: Duration,
    /// Fetch a current token before each connect (none: the session's token is fixed).
    pub token_source: Option<TokenSource>,
    /// Publish the link state here for status displays.
    pub view: Option<SharedLinkView>,
}

impl ClientConfig {
    pub fn new(url: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            tls: None,
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            token_source: None,
            view: None,
        }
    }
}

/// Publish the session's state into `view` (when there is one).
fn publish(
    view: &Option<SharedLinkView>,
    session: &Session,
    state: &'static str,
    error: Option<String>,
) {
    let Some(v) = view else { return };
    let mut g = v.lock().unwrap_or_else(|p| p.into_inner());
    g.state = state;
    g.rtt = session.rtt();
    g.stats = session.stats();
    g.in_flight_bytes = session.in_flight_bytes();
    if let Some(e) = error {
        g.last_error = Some(e);
    }
}

/// What the application asks the driver to do.
#[derive(Debug)]
pub enum Outgoing {
    /// A record; `sheddable` for raw-mirror frames (dropped and counted when the replay
    /// buffer is full; everything else waits).
    Record { rec: RecordRepr, sheddable: bool },
    /// A control message (held until the peer is attached).
    Control(Control),
}

/// Why the driver stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("tunnel URL {url}: {why}")]
    Url { url: String, why: String },
    #[error("tunnel session refused by the relay at the hello: {0}")]
    Fatal(SessionError),
}

/// One connection's outcome.
enum Ended {
    /// Reconnect (after backoff unless `reached_peer`).
    Retry { reached_peer: bool },
    /// Stop: shutdown, bye, or the application went away.
    Stop,
}

/// Run the session until `shutdown`, a `bye` from the peer, or the relay's refusal of the
/// hello (authentication or version: the only error that ends it; anything malformed from the
/// peer ends one connection, and the session resumes on the next).
/// Records and control messages come from `from_app`; events go to `to_app` (bounded: a slow
/// application slows the tunnel down instead of growing memory).
pub async fn run(
    cfg: ClientConfig,
    mut session: Session,
    mut from_app: mpsc::Receiver<Outgoing>,
    to_app: mpsc::Sender<Event>,
    shutdown: CancellationToken,
) -> Result<SessionStats, ClientError> {
    let mut backoff = cfg.backoff_min;
    let mut held: Option<Outgoing> = None;
    let mut app_open = true;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        if let Some(v) = &cfg.view {
            v.lock().unwrap_or_else(|p| p.into_inner()).attempts += 1;
        }
        let fresh = match &cfg.token_source {
            None => Ok(()),
            Some(src) => tokio::select! {
                _ = shutdown.cancelled() => break,
                t = src() => t.map(|t| session.set_token(crate::wire::tunnel::Token(t))),
            },
        };
        let conn = match fresh {
            Ok(()) => tokio::select! {
                _ = shutdown.cancelled() => break,
                c = tokio::time::timeout(cfg.connect_timeout, connect(&cfg, &session.config().session)) => c,
            },
            Err(why) => {
                tracing::warn!(url = %cfg.url, "no current token for the relay: {why}; retrying");
                Ok(Err(ConnectError::Io(format!("no current token: {why}"))))
            }
        };
        let ended = match conn {
            Ok(Ok(Conn::Plain(ws))) => {
                drive(
                    *ws,
                    &cfg.view,
                    &mut session,
                    &mut from_app,
                    &to_app,
                    &shutdown,
                    &mut held,
                    &mut app_open,
                )
                .await?
            }
            Ok(Ok(Conn::Tls(ws))) => {
                drive(
                    *ws,
                    &cfg.view,
                    &mut session,
                    &mut from_app,
                    &to_app,
                    &shutdown,
                    &mut held,
                    &mut app_open,
                )
                .await?
            }
            Ok(Err(ConnectError::Url(why))) => {
                return Err(ClientError::Url {
                    url: cfg.url.clone(),
                    why,
                });
            }
            Ok(Err(ConnectError::Io(e))) => {
                tracing::info!(url = %cfg.url, error = %e, "tunnel connect failed");
                publish(&cfg.view, &session, "connecting", Some(e));
                Ended::Retry {
                    reached_peer: false,
                }
            }
            Err(_) => {
                tracing::info!(url = %cfg.url, "tunnel connect timed out");
                publish(
                    &cfg.view,
                    &session,
                    "connecting",
                    Some("connect timed out".into()),
                );
                Ended::Retry {
                    reached_peer: false,
                }
            }
        };
        match ended {
            Ended::Stop => break,
            Ended::Retry { reached_peer } => {
                if reached_peer {
                    backoff = cfg.backoff_min;
                }
                // ±20 % jitter from the clock's low bits (no RNG dependency needed).
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0);
                let jitter = 0.8 + 0.4 * (nanos % 1000) as f64 / 1000.0;
                let wait = backoff.mul_f64(jitter);
                backoff = (backoff * 2).min(cfg.backoff_max);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    publish(&cfg.view, &session, "closed", None);
    Ok(session.stats())
}

enum Conn {
    Plain(Box<WebSocketStream<TcpStream>>),
    Tls(Box<WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>>),
}

enum ConnectError {
    Url(String),
    Io(String),
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(64 * 1024)
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(4 * 1024 * 1024)
        .max_message_size(Some(crate::wire::tunnel::Limits::HARD_MAX as usize + 64))
}

/// The websocket URL for `session` under the relay's base URL: `<base>/v1/sessions/<id>`
/// (protocol section 2), so that a load balancer can route on the session id. A base that
/// already names a session path is used as given.
pub fn session_url(base: &str, session: &str) -> String {
    let (base, query) = match base.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (base, None),
    };
    let mut url = if base.contains("/v1/sessions/") {
        base.to_string()
    } else {
        format!("{}/v1/sessions/{session}", base.trim_end_matches('/'))
    };
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

async fn connect(cfg: &ClientConfig, session: &str) -> Result<Conn, ConnectError> {
    // Tokens and diagnostic traffic: plaintext only to loopback.
    crate::tls::check_scheme(&cfg.url).map_err(ConnectError::Url)?;
    let mut req = session_url(&cfg.url, session)
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::Url(e.to_string()))?;
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let uri = req.uri().clone();
    let host = uri
        .host()
        .ok_or_else(|| ConnectError::Url("no host".into()))?
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let secure = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        other => {
            return Err(ConnectError::Url(format!(
                "scheme {other:?} is not ws or wss"
            )));
        }
    };
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| ConnectError::Io(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    if secure {
        let tls = cfg
            .tls
            .clone()
            .ok_or_else(|| ConnectError::Url("wss:// needs a TLS client configuration".into()))?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| ConnectError::Url(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| ConnectError::Io(crate::tls::handshake_error(&host, &e)))?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config()))
            .await
            .map_err(|e| ConnectError::Io(e.to_string()))?;
        Ok(Conn::Tls(Box::new(ws)))
    } else {
        let (ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(ws_config()))
            .await
            .map_err(|e| ConnectError::Io(e.to_string()))?;
        Ok(Conn::Plain(Box::new(ws)))
    }
}

/// Offer an application message to the session; hand it back if it must wait.
fn offer(session: &mut Session, out: Outgoing) -> Option<Outgoing> {
    let now = Instant::now().into_std();
    match out {
        Outgoing::Record { rec, sheddable } => match session.send(now, rec, sheddable) {
            Ok(_) => None,
            Err(SendError::Full { record, .. }) => Some(Outgoing::Record {
                rec: *record,
                sheddable,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "tunnel record refused");
                None
            }
        },
        Outgoing::Control(c) => match session.send_control(c.clone()) {
            Ok(()) => None,
            Err(_) => Some(Outgoing::Control(c)),
        },
    }
}

#[allow(clippy::too_many_arguments)]
async fn drive<S>(
    mut ws: WebSocketStream<S>,
    view: &Option<SharedLinkView>,
    session: &mut Session,
    from_app: &mut mpsc::Receiver<Outgoing>,
    to_app: &mpsc::Sender<Event>,
    shutdown: &CancellationToken,
    held: &mut Option<Outgoing>,
    app_open: &mut bool,
) -> Result<Ended, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    session.connected(Instant::now().into_std());
    let mut reached_peer = false;
    let state = |reached: bool, session: &Session| match session.link() {
        super::Link::Up => "up",
        super::Link::Hello if reached => "resuming",
        super::Link::Hello => "hello",
        super::Link::AwaitPeer => "awaiting-peer",
        super::Link::Down => "resuming",
    };
    publish(view, session, state(false, session), None);
    let mut published = Instant::now();
    let mut last_stats = session.stats();
    let result = loop {
        // Counters that moved are published at most every VIEW_EVERY, and at the latest
        // VIEW_EVERY after they moved (the loop wakes for it), so a status read lags by
        // no more than that.
        let dirty = view.is_some() && session.stats() != last_stats;
        if dirty && published.elapsed() >= VIEW_EVERY {
            publish(view, session, state(reached_peer, session), None);
            published = Instant::now();
            last_stats = session.stats();
        }
        let publish_at =
            (view.is_some() && session.stats() != last_stats).then_some(published + VIEW_EVERY);
        let r = drive_once(
            &mut ws,
            session,
            from_app,
            to_app,
            shutdown,
            held,
            app_open,
            &mut reached_peer,
            publish_at,
        )
        .await;
        match r {
            Ok(None) => {
                if let Some(v) = view
                    && session.link() == super::Link::Up
                    && v.lock().unwrap_or_else(|p| p.into_inner()).state != "up"
                {
                    publish(view, session, "up", None);
                    published = Instant::now();
                }
            }
            Ok(Some(ended)) => break Ok(ended),
            Err(e) => break Err(e),
        }
    };
    let (st, err) = match &result {
        Ok(Ended::Stop) => ("closed", None),
        Ok(Ended::Retry { .. }) => ("resuming", Some("connection lost".to_string())),
        Err(e) => ("closed", Some(e.to_string())),
    };
    publish(view, session, st, err);
    result
}

/// One turn of [`drive`]: `Ok(None)` to go on, `Ok(Some(..))` when the connection ended.
#[allow(clippy::too_many_arguments)]
async fn drive_once<S>(
    ws: &mut WebSocketStream<S>,
    session: &mut Session,
    from_app: &mut mpsc::Receiver<Outgoing>,
    to_app: &mpsc::Sender<Event>,
    shutdown: &CancellationToken,
    held: &mut Option<Outgoing>,
    app_open: &mut bool,
    reached_peer: &mut bool,
    publish_at: Option<Instant>,
) -> Result<Option<Ended>, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    {
        // Retry a held message first (room may have been freed by acks, or the peer came).
        if let Some(h) = held.take() {
            *held = offer(session, h);
        }
        let now = Instant::now().into_std();
        // Write everything due, then flush the socket once.
        let mut wrote = false;
        while let Some(t) = session.poll_transmit(now) {
            let m = match t {
                Transmit::Text(x) => Message::Text(Utf8Bytes::from(x)),
                Transmit::Binary(b) => Message::Binary(b),
            };
            wrote = true;
            if ws.feed(m).await.is_err() {
                session.disconnected(Instant::now().into_std());
                return Ok(Some(Ended::Retry {
                    reached_peer: *reached_peer,
                }));
            }
        }
        if wrote && ws.flush().await.is_err() {
            session.disconnected(Instant::now().into_std());
            return Ok(Some(Ended::Retry {
                reached_peer: *reached_peer,
            }));
        }
        while let Some(ev) = session.poll_event() {
            match ev {
                Event::Dead => {
                    tracing::info!("tunnel peer silent: reconnecting");
                    return Ok(Some(Ended::Retry {
                        reached_peer: *reached_peer,
                    }));
                }
                Event::Up { .. } => {
                    *reached_peer = true;
                    let _ = to_app.send(ev).await;
                }
                Event::Bye { .. } => {
                    let _ = to_app.send(ev).await;
                    let _ = ws.close(None).await;
                    return Ok(Some(Ended::Stop));
                }
                other => {
                    if to_app.send(other).await.is_err() {
                        *app_open = false;
                    }
                }
            }
        }
        if !*app_open && held.is_none() && session.in_flight_bytes() == 0 {
            let _ = ws.close(None).await;
            return Ok(Some(Ended::Stop));
        }
        let wake = session
            .poll_at()
            .map(Instant::from_std)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let wake = publish_at.map_or(wake, |p| p.min(wake));
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = ws.close(None).await;
                session.disconnected(Instant::now().into_std());
                return Ok(Some(Ended::Stop));
            }
            out = from_app.recv(), if held.is_none() && *app_open => match out {
                Some(o) => {
                    *held = offer(session, o);
                    // Take whatever else the application has queued, so it shares a
                    // batch; once the queue is empty nothing more is coming soon, so send
                    // now rather than wait for the flush timer (Nagle's lesson: batching
                    // must never add latency to an idle stream).
                    let mut taken = 1;
                    while held.is_none() && taken < DRAIN_MAX {
                        match from_app.try_recv() {
                            Ok(o) => {
                                *held = offer(session, o);
                                taken += 1;
                            }
                            Err(mpsc::error::TryRecvError::Empty) => {
                                session.flush(Instant::now().into_std());
                                break;
                            }
                            Err(mpsc::error::TryRecvError::Disconnected) => {
                                *app_open = false;
                                session.flush(Instant::now().into_std());
                                break;
                            }
                        }
                    }
                }
                None => *app_open = false,
            },
            _ = tokio::time::sleep_until(wake) => {}
            m = ws.next() => {
                let now = Instant::now().into_std();
                // Before `welcome`, only the relay speaks: its refusal of the hello is the
                // one error that may end the session (the caller decides whether to retry).
                let at_hello = session.link() == super::Link::Hello;
                let r = match m {
                    Some(Ok(Message::Text(t))) => session.handle_text(now, &t),
                    Some(Ok(Message::Binary(b))) => session.handle_binary(now, b),
                    Some(Ok(_)) => Ok(()),
                    _ => {
                        session.disconnected(now);
                        return Ok(Some(Ended::Retry { reached_peer: *reached_peer }));
                    }
                };
                if let Err(e) = r {
                    let code = e.code();
                    let remote = matches!(e, SessionError::Remote { .. });
                    if remote && !at_hello {
                        // A fatal-coded error after the hello comes from the peer (or a
                        // relay forwarding it): it cannot end this endpoint's session. A peer
                        // that really gives up closes its side; the relay then says so.
                        tracing::warn!(error = %e, "tunnel peer sent an error; ignored (the session goes on)");
                        session.note_peer_error();
                        return Ok(None);
                    }
                    if !remote {
                        let _ = ws.send(Message::Text(Utf8Bytes::from(e.to_control().to_text()))).await;
                    }
                    let _ = ws.close(None).await;
                    session.disconnected(now);
                    // The relay refused the hello: authentication and version problems do not
                    // heal by retrying at once.
                    if remote && matches!(code.0, 101..=103) {
                        return Err(ClientError::Fatal(e));
                    }
                    // Malformed or wrong-version input: this connection ends, the session
                    // resumes on the next one (replaying whatever was lost).
                    tracing::warn!(error = %e, "tunnel connection failed; reconnecting");
                    return Ok(Some(Ended::Retry { reached_peer: *reached_peer }));
                }
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod url_tests {
    #[test]
    fn the_session_id_goes_into_the_path() {
        let id = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab";
        for (base, want) in [
            (
                "ws://127.0.0.1:8443",
                format!("ws://127.0.0.1:8443/v1/sessions/{id}"),
            ),
            (
                "wss://relay.example/",
                format!("wss://relay.example/v1/sessions/{id}"),
            ),
            (
                "wss://r.example/tunnel",
                format!("wss://r.example/tunnel/v1/sessions/{id}"),
            ),
            ("ws://h/x/?a=1", format!("ws://h/x/v1/sessions/{id}?a=1")),
            (
                "ws://h/v1/sessions/00000000-0000-4000-8000-000000000000",
                "ws://h/v1/sessions/00000000-0000-4000-8000-000000000000".to_string(),
            ),
        ] {
            assert_eq!(super::session_url(base, id), want, "{base}");
        }
    }
}
