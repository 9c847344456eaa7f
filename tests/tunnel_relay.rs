//! The relay in-process, on 127.0.0.1:0, with real websocket clients: pairing, forwarding
//! (byte-identical), authentication failures, reconnects and replacement, `bye`, a reader
//! that stops reading, and two real tunnel sessions resuming across repeated kills.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use obdgw::relay::{RelayConfig, SessionTokens, StaticTokens};
use obdgw::router::frame::Timestamp;
use obdgw::tunnel::{Event, Session, SessionConfig, Transmit};
use obdgw::wire::tunnel::{
    Control, ErrorCode, Hello, Limits, PduRecord, RecordBody, RecordRepr, Resume, Role,
    SUBPROTOCOL, Token,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const SID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab";
const GW_TOKEN: &str = "gateway-token";
const OP_TOKEN: &str = "operator-token";
/// Guard against a hung test; never reached when the code works.
const LIMIT: Duration = Duration::from_secs(20);

struct Relay {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(cfg: RelayConfig) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tokens = StaticTokens::new([SessionTokens {
        id: SID.into(),
        gateway_token: GW_TOKEN.into(),
        operator_token: OP_TOKEN.into(),
    }]);
    let stop = CancellationToken::new();
    let task = tokio::spawn(obdgw::relay::run(
        listener,
        None,
        Arc::new(tokens),
        cfg,
        stop.clone(),
    ));
    Relay { addr, stop, task }
}

async fn connect(addr: SocketAddr) -> Ws {
    let mut req = format!("ws://{addr}/tunnel").into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        SUBPROTOCOL
    );
    ws
}

fn hello(role: Role, token: &str, instance: u64) -> Hello {
    Hello {
        version: 1,
        role,
        session: SID.into(),
        token: Token(token.into()),
        instance,
        capabilities: vec!["isotp".into()],
        resume: Resume {
            peer_instance: None,
            last_received: 0,
        },
        limits: Limits::default(),
        agent: None,
    }
}

async fn send_text(ws: &mut Ws, c: &Control) {
    ws.send(Message::Text(Utf8Bytes::from(c.to_text())))
        .await
        .unwrap();
}

/// Next text message as a control message (binary messages are a test failure here).
async fn next_control(ws: &mut Ws) -> Control {
    loop {
        let m = tokio::time::timeout(LIMIT, ws.next())
            .await
            .expect("timed out waiting for a control message")
            .expect("connection ended")
            .expect("websocket error");
        match m {
            Message::Text(t) => return Control::parse(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Next control message, skipping batches.
async fn next_text(ws: &mut Ws) -> Control {
    loop {
        let m = tokio::time::timeout(LIMIT, ws.next())
            .await
            .expect("timed out waiting for a control message")
            .expect("connection ended")
            .expect("websocket error");
        if let Message::Text(t) = m {
            return Control::parse(&t).unwrap();
        }
    }
}

/// Read until the connection closes; returns the close code.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(LIMIT, ws.next())
            .await
            .expect("no close")
        {
            Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            _ => return None,
        }
    }
}

async fn attach(addr: SocketAddr, role: Role, token: &str, instance: u64) -> Ws {
    let mut ws = connect(addr).await;
    send_text(&mut ws, &Control::Hello(hello(role, token, instance))).await;
    assert!(matches!(next_control(&mut ws).await, Control::Welcome(_)));
    ws
}

#[tokio::test]
async fn pairs_and_forwards_batches_byte_identical() {
    let relay = start(RelayConfig::default()).await;
    let mut gw = attach(relay.addr, Role::Gateway, GW_TOKEN, 1).await;
    let mut op = connect(relay.addr).await;
    send_text(&mut op, &Control::Hello(hello(Role::Operator, OP_TOKEN, 2))).await;
    let Control::Welcome(w) = next_control(&mut op).await else {
        panic!("no welcome")
    };
    assert!(w.peer_connected);
    // Each side learns the other's hello (without its token).
    let Control::Peer(p) = next_control(&mut op).await else {
        panic!("no peer")
    };
    assert_eq!((p.role, p.instance), (Role::Gateway, 1));
    let Control::Peer(p) = next_control(&mut gw).await else {
        panic!("no peer")
    };
    assert_eq!((p.role, p.instance), (Role::Operator, 2));
    // Binary: forwarded as is, whatever the bytes (the relay does not parse payloads).
    let blob = Bytes::from((0..=255u8).cycle().take(100_000).collect::<Vec<u8>>());
    gw.send(Message::Binary(blob.clone())).await.unwrap();
    let got = loop {
        match op.next().await.unwrap().unwrap() {
            Message::Binary(b) => break b,
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(got, blob);
    // Text: forwarded too.
    send_text(&mut op, &Control::Close { channel: 3 }).await;
    assert_eq!(next_control(&mut gw).await, Control::Close { channel: 3 });
    relay.stop.cancel();
    assert_eq!(close_code(&mut gw).await, Some(1001));
    tokio::time::timeout(LIMIT, relay.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn refuses_bad_tokens_sessions_and_hellos() {
    let relay = start(RelayConfig::default()).await;
    let cases: Vec<(Message, ErrorCode)> = vec![
        (
            Message::Text(
                Control::Hello(hello(Role::Operator, GW_TOKEN, 2))
                    .to_text()
                    .into(),
            ),
            ErrorCode::AUTH_FAILED,
        ),
        (
            Message::Text(
                Control::Hello(Hello {
                    session: "00000000-0000-4000-8000-000000000000".into(),
                    ..hello(Role::Gateway, GW_TOKEN, 1)
                })
                .to_text()
                .into(),
            ),
            // One refusal for unknown sessions and bad tokens (no probing for live ones).
            ErrorCode::AUTH_FAILED,
        ),
        (
            Message::Text(
                Control::Hello(Hello {
                    session: "not-a-uuid".into(),
                    ..hello(Role::Gateway, GW_TOKEN, 1)
                })
                .to_text()
                .into(),
            ),
            // One refusal for unknown sessions and bad tokens (no probing for live ones).
            ErrorCode::AUTH_FAILED,
        ),
        (
            Message::Text(
                Control::Hello(Hello {
                    version: 2,
                    ..hello(Role::Gateway, GW_TOKEN, 1)
                })
                .to_text()
                .into(),
            ),
            ErrorCode::UNSUPPORTED_VERSION,
        ),
        (
            Message::Text(
                Control::Hello(Hello {
                    limits: Limits {
                        max_record: 10,
                        ..Limits::default()
                    },
                    ..hello(Role::Gateway, GW_TOKEN, 1)
                })
                .to_text()
                .into(),
            ),
            ErrorCode::BAD_HELLO,
        ),
        (
            Message::Binary(Bytes::from_static(&[1, 0, 0, 0])),
            ErrorCode::BAD_HELLO,
        ),
        (
            Message::Text("{\"type\":\"ping\"".into()),
            ErrorCode::BAD_HELLO,
        ),
    ];
    for (first, code) in cases {
        let mut ws = connect(relay.addr).await;
        ws.send(first).await.unwrap();
        match next_control(&mut ws).await {
            Control::Error {
                code: c, message, ..
            } => {
                assert_eq!(c, code, "{message}");
                assert!(!message.is_empty());
            }
            other => panic!("expected an error, got {other:?}"),
        }
        assert_eq!(close_code(&mut ws).await, Some(code.close_code()));
    }
    // Without the subprotocol the upgrade itself is refused.
    let req = format!("ws://{}/tunnel", relay.addr)
        .into_client_request()
        .unwrap();
    let err = tokio_tungstenite::connect_async(req).await.unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    relay.stop.cancel();
    relay.task.await.unwrap();
}

#[tokio::test]
async fn survives_reconnects_and_replaces_stale_connections() {
    let relay = start(RelayConfig::default()).await;
    let mut gw = attach(relay.addr, Role::Gateway, GW_TOKEN, 1).await;
    let mut op = attach(relay.addr, Role::Operator, OP_TOKEN, 2).await;
    assert!(matches!(next_control(&mut op).await, Control::Peer(_)));
    assert!(matches!(next_control(&mut gw).await, Control::Peer(_)));
    // The operator's connection dies: the gateway is told, the session stays.
    drop(op);
    assert!(matches!(
        next_control(&mut gw).await,
        Control::PeerDown { .. }
    ));
    let mut op = attach(relay.addr, Role::Operator, OP_TOKEN, 2).await;
    assert!(matches!(next_control(&mut op).await, Control::Peer(_)));
    assert!(matches!(next_control(&mut gw).await, Control::Peer(_)));
    // A second gateway connection (after a network change) replaces the first.
    let mut gw2 = attach(relay.addr, Role::Gateway, GW_TOKEN, 1).await;
    match next_control(&mut gw).await {
        Control::Error { code, .. } => assert_eq!(code, ErrorCode::ROLE_TAKEN),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        close_code(&mut gw).await,
        Some(ErrorCode::ROLE_TAKEN.close_code())
    );
    assert!(matches!(next_control(&mut gw2).await, Control::Peer(_)));
    assert!(matches!(
        next_control(&mut op).await,
        Control::PeerDown { .. }
    ));
    assert!(matches!(next_control(&mut op).await, Control::Peer(_)));
    // Traffic flows on the new pairing.
    gw2.send(Message::Binary(Bytes::from_static(b"\x01\x00\x00\x00")))
        .await
        .unwrap();
    let got = loop {
        if let Message::Binary(b) = op.next().await.unwrap().unwrap() {
            break b;
        }
    };
    assert_eq!(&got[..], b"\x01\x00\x00\x00");
    // Bye ends the session: forwarded, then both closed normally.
    send_text(
        &mut op,
        &Control::Bye {
            reason: "done".into(),
        },
    )
    .await;
    assert!(matches!(next_control(&mut gw2).await, Control::Bye { .. }));
    assert_eq!(close_code(&mut gw2).await, Some(1000));
    assert_eq!(close_code(&mut op).await, Some(1000));
    relay.stop.cancel();
    relay.task.await.unwrap();
}

#[tokio::test]
async fn idle_session_is_released() {
    let relay = start(RelayConfig {
        idle_limit: Duration::from_millis(300),
        ..RelayConfig::default()
    })
    .await;
    let mut gw = attach(relay.addr, Role::Gateway, GW_TOKEN, 1).await;
    match next_control(&mut gw).await {
        Control::Error { code, .. } => assert_eq!(code, ErrorCode::SESSION_ENDED),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        close_code(&mut gw).await,
        Some(ErrorCode::SESSION_ENDED.close_code())
    );
    relay.stop.cancel();
    relay.task.await.unwrap();
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_bounded_and_disconnected() {
    let relay = start(RelayConfig {
        max_queued_bytes: 256 * 1024,
        write_stall: Duration::from_millis(500),
        ..RelayConfig::default()
    })
    .await;
    let mut gw = attach(relay.addr, Role::Gateway, GW_TOKEN, 1).await;
    let mut op = attach(relay.addr, Role::Operator, OP_TOKEN, 2).await;
    assert!(matches!(next_control(&mut op).await, Control::Peer(_)));
    assert!(matches!(next_control(&mut gw).await, Control::Peer(_)));
    // The operator reads nothing from now on. The gateway floods; the relay queues at
    // most 256 KiB toward the operator, pushes back on the gateway while the operator's
    // socket is full, and after the 500 ms write stall drops the operator: the gateway is
    // told with peer_down.
    let (mut gw_tx, mut gw_rx) = gw.split();
    let flooding = CancellationToken::new();
    let flood = {
        let flooding = flooding.clone();
        tokio::spawn(async move {
            let chunk = Bytes::from(vec![0u8; 64 * 1024]);
            let mut sent = 0usize;
            while !flooding.is_cancelled() {
                tokio::select! {
                    _ = flooding.cancelled() => break,
                    r = gw_tx.send(Message::Binary(chunk.clone())) => {
                        if r.is_err() { break; }
                        sent += chunk.len();
                    }
                }
            }
            sent
        })
    };
    let down = tokio::time::timeout(LIMIT, async {
        while let Some(Ok(m)) = gw_rx.next().await {
            if let Message::Text(t) = m
                && let Ok(Control::PeerDown { reason }) = Control::parse(&t)
            {
                return Some(reason);
            }
        }
        None
    })
    .await
    .expect("the relay never dropped the operator that stopped reading");
    assert!(down.is_some(), "gateway connection ended without peer_down");
    flooding.cancel();
    let sent = flood.await.unwrap();
    assert!(sent > 256 * 1024, "only {sent} bytes sent before the drop");
    drop(op);
    relay.stop.cancel();
    relay.task.await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Two real sessions through the relay, with connections killed again and again.
// ---------------------------------------------------------------------------------------

fn pdu(id: u32, pad: usize) -> RecordRepr {
    let mut d = id.to_be_bytes().to_vec();
    d.resize(4 + pad, (id % 251) as u8);
    RecordRepr {
        channel: 1,
        flags: 0,
        body: RecordBody::IsoTp(PduRecord {
            timestamp: Timestamp(0),
            data: Bytes::from(d),
        }),
    }
}

fn pdu_id(r: &RecordRepr) -> u32 {
    match &r.body {
        RecordBody::IsoTp(p) => u32::from_be_bytes(p.data[..4].try_into().unwrap()),
        other => panic!("{other:?}"),
    }
}

/// A minimal endpoint driver: connects, runs the session, reconnects when killed.
async fn endpoint(
    addr: SocketAddr,
    cfg: SessionConfig,
    to_send: u32,
    expect: u32,
    kill: Arc<tokio::sync::Notify>,
    done: tokio::sync::mpsc::Sender<()>,
    stop: CancellationToken,
) -> (Vec<u32>, obdgw::tunnel::SessionStats) {
    let t0 = tokio::time::Instant::now();
    let mut s = Session::new(cfg, t0.into_std());
    let mut next_id = 0u32;
    let mut pending: Option<RecordRepr> = None;
    let mut got = vec![];
    let mut reported = false;
    'conn: while !stop.is_cancelled() {
        let mut ws = connect(addr).await;
        s.connected(tokio::time::Instant::now().into_std());
        loop {
            let now = tokio::time::Instant::now().into_std();
            // Produce while the replay buffer accepts.
            while next_id < to_send || pending.is_some() {
                let r = pending.take().unwrap_or_else(|| {
                    next_id += 1;
                    pdu(next_id, (next_id as usize * 37) % 3000)
                });
                match s.send(now, r, false) {
                    Ok(_) => {}
                    Err(obdgw::tunnel::SendError::Full { record, .. }) => {
                        pending = Some(*record);
                        break;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            while let Some(t) = s.poll_transmit(now) {
                let m = match t {
                    Transmit::Text(x) => Message::Text(x.into()),
                    Transmit::Binary(b) => Message::Binary(b),
                };
                if ws.send(m).await.is_err() {
                    s.disconnected(now);
                    continue 'conn;
                }
            }
            while let Some(e) = s.poll_event() {
                match e {
                    Event::Record(r) => got.push(pdu_id(&r)),
                    Event::Dead => continue 'conn,
                    _ => {}
                }
            }
            if !reported
                && got.len() as u32 == expect
                && next_id == to_send
                && pending.is_none()
                && s.in_flight_bytes() == 0
            {
                reported = true;
                let _ = done.send(()).await;
            }
            let wake = s
                .poll_at()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = stop.cancelled() => break 'conn,
                _ = kill.notified() => {
                    drop(ws);
                    s.disconnected(tokio::time::Instant::now().into_std());
                    continue 'conn;
                }
                _ = tokio::time::sleep_until(wake) => {}
                m = ws.next() => {
                    let now = tokio::time::Instant::now().into_std();
                    let r = match m {
                        Some(Ok(Message::Text(t))) => s.handle_text(now, &t),
                        Some(Ok(Message::Binary(b))) => s.handle_binary(now, b),
                        Some(Ok(_)) => Ok(()),
                        _ => {
                            s.disconnected(now);
                            continue 'conn;
                        }
                    };
                    r.unwrap_or_else(|e| panic!("session error: {e}"));
                }
            }
        }
    }
    (got, s.stats())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_through_the_relay_exactly_once() {
    let relay = start(RelayConfig::default()).await;
    let kills = [
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    ];
    let stop = CancellationToken::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(2);
    let mut a_cfg = SessionConfig::new(Role::Gateway, SID, Token(GW_TOKEN.into()), 0xA);
    let mut b_cfg = SessionConfig::new(Role::Operator, SID, Token(OP_TOKEN.into()), 0xB);
    // A small window so backpressure and replay are exercised.
    a_cfg.limits.max_in_flight = 64 * 1024;
    b_cfg.limits.max_in_flight = 64 * 1024;
    const N: u32 = 3000;
    let a = tokio::spawn(endpoint(
        relay.addr,
        a_cfg,
        N,
        N / 2,
        kills[0].clone(),
        done_tx.clone(),
        stop.clone(),
    ));
    let b = tokio::spawn(endpoint(
        relay.addr,
        b_cfg,
        N / 2,
        N,
        kills[1].clone(),
        done_tx,
        stop.clone(),
    ));
    // Kill connections while traffic flows, alternating sides.
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        kills[i % 2].notify_one();
    }
    for _ in 0..2 {
        tokio::time::timeout(LIMIT, done_rx.recv())
            .await
            .expect("sessions did not complete")
            .unwrap();
    }
    stop.cancel();
    let (a_got, a_stats) = a.await.unwrap();
    let (b_got, b_stats) = b.await.unwrap();
    assert_eq!(a_got, (1..=N / 2).collect::<Vec<_>>());
    assert_eq!(b_got, (1..=N).collect::<Vec<_>>());
    assert!(a_stats.reconnects >= 2, "{a_stats:?}");
    assert!(b_stats.reconnects >= 2, "{b_stats:?}");
    relay.stop.cancel();
    relay.task.await.unwrap();
}

#[tokio::test]
async fn tls_relay_accepts_wss_clients() {
    use tokio_rustls::rustls;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("relay.crt");
    let key_path = dir.path().join("relay.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let acceptor = obdgw::relay::tls_acceptor(&cert_path, &key_path).unwrap();
    // Missing files are a clear error naming the file.
    let Err(err) = obdgw::relay::tls_acceptor(&dir.path().join("nope.crt"), &key_path) else {
        panic!("a missing certificate file was accepted")
    };
    assert!(err.to_string().contains("nope.crt"), "{err}");

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tokens = StaticTokens::from_toml(&format!(
        "[[session]]\nid = \"{SID}\"\ngateway_token = \"{GW_TOKEN}\"\noperator_token = \"{OP_TOKEN}\"\n"
    ))
    .unwrap();
    assert!(
        StaticTokens::from_toml(
            "[[session]]\nid = \"x\"\ngateway_token = \"a\"\noperator_token = \"b\"\n"
        )
        .is_err()
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(obdgw::relay::run(
        listener,
        Some(acceptor),
        Arc::new(tokens),
        RelayConfig::default(),
        stop.clone(),
    ));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let mut req = format!("wss://localhost:{}/tunnel", addr.port())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    ws.send(Message::Text(
        Control::Hello(hello(Role::Gateway, GW_TOKEN, 1))
            .to_text()
            .into(),
    ))
    .await
    .unwrap();
    let m = tokio::time::timeout(LIMIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Message::Text(t) = m else { panic!("{m:?}") };
    assert!(matches!(Control::parse(&t).unwrap(), Control::Welcome(_)));
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn shutdown_does_not_wait_for_silent_connections() {
    // A client that connects and never sends a hello must not hold up shutdown for the
    // whole hello timeout.
    let relay = start(RelayConfig {
        hello_timeout: Duration::from_secs(3600),
        ..RelayConfig::default()
    })
    .await;
    let _silent_tcp = TcpStream::connect(relay.addr).await.unwrap();
    let _silent_ws = connect(relay.addr).await;
    relay.stop.cancel();
    tokio::time::timeout(LIMIT, relay.task)
        .await
        .expect("relay shutdown waited for silent connections")
        .unwrap();
}

#[tokio::test]
async fn session_limit_is_enforced() {
    const SID2: &str = "11111111-2222-4333-8444-555555555555";
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tokens = StaticTokens::new([
        SessionTokens {
            id: SID.into(),
            gateway_token: GW_TOKEN.into(),
            operator_token: OP_TOKEN.into(),
        },
        SessionTokens {
            id: SID2.into(),
            gateway_token: GW_TOKEN.into(),
            operator_token: OP_TOKEN.into(),
        },
    ]);
    let stop = CancellationToken::new();
    let task = tokio::spawn(obdgw::relay::run(
        listener,
        None,
        Arc::new(tokens),
        RelayConfig {
            max_sessions: 1,
            ..RelayConfig::default()
        },
        stop.clone(),
    ));
    let _gw = attach(addr, Role::Gateway, GW_TOKEN, 1).await;
    // The same session's other side is still admitted.
    let _op = attach(addr, Role::Operator, OP_TOKEN, 2).await;
    let mut ws = connect(addr).await;
    let h = Hello {
        session: SID2.into(),
        ..hello(Role::Gateway, GW_TOKEN, 3)
    };
    send_text(&mut ws, &Control::Hello(h)).await;
    match next_control(&mut ws).await {
        Control::Error { code, message, .. } => {
            assert_eq!(code, ErrorCode::SESSION_LIMIT);
            assert!(message.contains("maximum of 1"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        close_code(&mut ws).await,
        Some(ErrorCode::SESSION_LIMIT.close_code())
    );
    stop.cancel();
    task.await.unwrap();
}

/// A hostile or broken operator endpoint against a real gateway side: garbage, an unknown
/// record kind and an oversize record each get an `error` naming the problem (with the
/// protocol's code) and end that connection; the gateway reconnects and keeps serving, and
/// a well-behaved operator then opens a channel and gets the car's frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_operator_gets_clear_errors_and_the_gateway_keeps_serving() {
    use obdgw::router::frame::{CanFrame, CanId};
    use obdgw::tunnel::client::ClientConfig;
    use obdgw::tunnel::gateway::{self, Gateway};
    use obdgw::vehicle::can::vbus::VirtualBus;
    use obdgw::vehicle::can::{CanAnyFrame, CanPort};
    use obdgw::wire::tunnel::{BATCH_FLAG_RESUME, BATCH_HEADER_LEN, emit_batch};

    let relay = start(RelayConfig::default()).await;
    let bus = VirtualBus::new("can0");
    let car = bus.port();
    let gw = Gateway::new(
        None,
        vec![("can0".to_string(), Arc::new(bus.port()))],
        obdgw::tunnel::policy::PolicyConfig::lab(),
    );
    let stop = CancellationToken::new();
    let mut cc = ClientConfig::new(format!("ws://{}/", relay.addr));
    cc.backoff_min = Duration::from_millis(10);
    cc.backoff_max = Duration::from_millis(50);
    let s = stop.clone();
    tokio::spawn(async move {
        gateway::run(cc, SID, &obdgw::config::Secret::new(GW_TOKEN), gw, s).await
    });

    let one_pdu = || {
        let mut b = bytes::BytesMut::new();
        emit_batch(BATCH_FLAG_RESUME, 1, 0, [&pdu(1, 4)], &mut b);
        b
    };
    let mut unknown_kind = one_pdu();
    unknown_kind[BATCH_HEADER_LEN + 2] = 0x7E;
    let mut oversize = one_pdu();
    oversize[BATCH_HEADER_LEN + 4..BATCH_HEADER_LEN + 8]
        .copy_from_slice(&(64u32 << 20).to_be_bytes());
    let cases: [(&str, Bytes, ErrorCode, &str); 3] = [
        (
            "garbage",
            Bytes::from_static(&[0xFF, 0, 1]),
            ErrorCode::MALFORMED_BATCH,
            "shorter than",
        ),
        (
            "unknown kind",
            unknown_kind.freeze(),
            ErrorCode::UNKNOWN_RECORD_KIND,
            "0x7E",
        ),
        (
            "oversize record",
            oversize.freeze(),
            ErrorCode::RECORD_TOO_LARGE,
            "exceeds",
        ),
    ];
    for (instance, (what, bad, code, text)) in cases.into_iter().enumerate() {
        let mut ws = attach(relay.addr, Role::Operator, OP_TOKEN, 100 + instance as u64).await;
        // Wait until the gateway is attached to this connection (its batches are skipped).
        while !matches!(next_text(&mut ws).await, Control::Peer(_)) {}
        ws.send(Message::Binary(bad)).await.unwrap();
        let err = loop {
            if let Control::Error { code, message, .. } = next_text(&mut ws).await {
                break (code, message);
            }
        };
        assert_eq!(err.0, code, "{what}: {}", err.1);
        assert!(
            err.1.to_lowercase().contains(&text.to_lowercase()),
            "{what}: {}",
            err.1
        );
        drop(ws);
    }

    // A well-behaved operator: the gateway is still there and serves a mirror channel.
    let out = obdgw::operator::tunnel::start(
        {
            let mut c = ClientConfig::new(format!("ws://{}/", relay.addr));
            c.backoff_min = Duration::from_millis(10);
            c
        },
        SID,
        Token(OP_TOKEN.into()),
        None,
        None,
        Default::default(),
        stop.clone(),
    )
    .await
    .unwrap();
    tokio::time::timeout(LIMIT, out.remote.wait_up())
        .await
        .expect("the gateway did not come back after the hostile operator");
    let buses = obdgw::operator::tunnel::TunnelBuses::new(out.remote.clone(), vec!["can0".into()]);
    let mut raw = tokio::time::timeout(
        LIMIT,
        obdgw::operator::socketcand::BusProvider::open_raw(&buses, "can0"),
    )
    .await
    .expect("open timed out")
    .expect("mirror refused");
    let f = CanFrame::new(CanId::standard(0x321).unwrap(), &[1, 2, 3]).unwrap();
    let got = tokio::time::timeout(LIMIT, async {
        loop {
            car.send(CanAnyFrame::Classic(f)).await.unwrap();
            if let Ok(Some((g, _))) =
                tokio::time::timeout(Duration::from_millis(50), raw.rx.recv()).await
            {
                break g;
            }
        }
    })
    .await
    .expect("no frame through the gateway after the hostile operator");
    assert_eq!(got.id(), CanId::standard(0x321).unwrap());
    assert_eq!(got.data(), &[1, 2, 3]);
    stop.cancel();
    relay.stop.cancel();
    let _ = relay.task.await;
}
