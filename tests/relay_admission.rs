//! The relay's admission control and refusals, in-process on 127.0.0.1:0 with real
//! websocket clients: one answer for an unknown session and a bad token, the session id in
//! the URL, the pre-auth message limit and byte budget, the handshake-and-hello deadline,
//! the per-source cap, and the counters that show each.

use futures_util::{SinkExt, StreamExt};
use obdgw::relay::hub::Hub;
use obdgw::relay::metrics::{DropReason, Refusal};
use obdgw::relay::{RelayConfig, SessionTokens, StaticTokens};
use obdgw::wire::tunnel::{Control, ErrorCode, Hello, Limits, Resume, Role, SUBPROTOCOL, Token};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const SID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab";
const OTHER: &str = "00000000-0000-4000-8000-000000000000";
const LIMIT: Duration = Duration::from_secs(20);

struct Relay {
    addr: SocketAddr,
    hub: Hub,
    stop: CancellationToken,
}

async fn start(cfg: RelayConfig) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tokens = StaticTokens::new([SessionTokens {
        id: SID.into(),
        gateway_token: "gw".into(),
        operator_token: "op".into(),
    }]);
    let hub = Hub::new(cfg.max_sessions, cfg.keepalive_ms);
    let stop = CancellationToken::new();
    tokio::spawn(obdgw::relay::run_with_hub(
        listener,
        None,
        Arc::new(tokens),
        cfg,
        hub.clone(),
        stop.clone(),
    ));
    Relay { addr, hub, stop }
}

async fn connect(addr: SocketAddr, path: &str) -> Result<Ws, String> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

fn hello(role: Role, session: &str, token: &str) -> Hello {
    Hello {
        version: 1,
        role,
        session: session.into(),
        token: Token(token.into()),
        instance: 9,
        capabilities: vec!["isotp".into()],
        resume: Resume {
            peer_instance: None,
            last_received: 0,
        },
        limits: Limits::default(),
        agent: None,
    }
}

/// Every message until the close, the close code last.
async fn answer(ws: &mut Ws) -> (Vec<String>, Option<u16>) {
    let mut texts = Vec::new();
    loop {
        match tokio::time::timeout(LIMIT, ws.next())
            .await
            .expect("no answer")
        {
            Some(Ok(Message::Text(t))) => texts.push(t.to_string()),
            Some(Ok(Message::Close(f))) => return (texts, f.map(|f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            _ => return (texts, None),
        }
    }
}

async fn hello_answer(addr: SocketAddr, path: &str, h: Hello) -> (Vec<String>, Option<u16>) {
    let mut ws = connect(addr, path).await.unwrap();
    ws.send(Message::Text(Utf8Bytes::from(Control::Hello(h).to_text())))
        .await
        .unwrap();
    answer(&mut ws).await
}

#[tokio::test]
async fn unknown_sessions_and_bad_tokens_get_the_same_answer() {
    let relay = start(RelayConfig::default()).await;
    let unknown = hello_answer(relay.addr, "/", hello(Role::Gateway, OTHER, "gw")).await;
    let bad_token = hello_answer(relay.addr, "/", hello(Role::Gateway, SID, "nope")).await;
    let other_role = hello_answer(relay.addr, "/", hello(Role::Operator, SID, "gw")).await;
    let not_uuid = hello_answer(relay.addr, "/", hello(Role::Operator, "x", "op")).await;
    assert_eq!(unknown.1, Some(ErrorCode::AUTH_FAILED.close_code()));
    assert_eq!(unknown.0.len(), 1, "{unknown:?}");
    // Byte for byte the same: nothing tells a live session from an unknown one.
    assert_eq!(unknown, bad_token);
    assert_eq!(unknown, other_role);
    assert_eq!(unknown, not_uuid);
    let m = relay.hub.metrics();
    assert_eq!(m.refusals(Refusal::AuthFailed), 4);
    // Refused connections leave nothing behind in the gauges.
    let t = std::time::Instant::now();
    while m.open.load(Ordering::Relaxed) + m.preauth.load(Ordering::Relaxed) > 0 {
        assert!(t.elapsed() < LIMIT, "connections still counted as open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(m.accepted.load(Ordering::Relaxed), 4);
    relay.stop.cancel();
}

#[tokio::test]
async fn the_session_in_the_path_must_match_the_hello() {
    let relay = start(RelayConfig::default()).await;
    // The new path, matching: welcome.
    let mut ws = connect(relay.addr, &format!("/v1/sessions/{SID}"))
        .await
        .unwrap();
    ws.send(Message::Text(Utf8Bytes::from(
        Control::Hello(hello(Role::Gateway, SID, "gw")).to_text(),
    )))
    .await
    .unwrap();
    let first = tokio::time::timeout(LIMIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Message::Text(t) = first else {
        panic!("{first:?}")
    };
    assert!(matches!(Control::parse(&t).unwrap(), Control::Welcome(_)));
    // Under a prefix, too; and the old free path still works (the same role replaces).
    let (texts, _) = hello_answer(
        relay.addr,
        &format!("/relay/v1/sessions/{OTHER}"),
        hello(Role::Operator, SID, "op"),
    )
    .await;
    assert!(texts[0].contains("\"code\":100"), "{texts:?}");
    assert!(texts[0].contains("URL path"), "{texts:?}");
    // A malformed id in the path: the upgrade itself is refused.
    let err = connect(relay.addr, "/v1/sessions/not-a-uuid")
        .await
        .unwrap_err();
    assert!(err.contains("400"), "{err}");
    assert_eq!(relay.hub.metrics().refusals(Refusal::BadHello), 1);
    assert_eq!(relay.hub.metrics().drops(DropReason::Handshake), 1);
    relay.stop.cancel();
}

#[tokio::test]
async fn before_the_hello_messages_are_small_and_input_is_bounded() {
    let relay = start(RelayConfig::default()).await;
    // A 5 KiB "hello" (a long agent string) is refused before it is parsed.
    let mut big = hello(Role::Gateway, SID, "gw");
    big.agent = Some("x".repeat(5000));
    let (texts, code) = hello_answer(relay.addr, "/", big).await;
    assert_eq!(code, Some(ErrorCode::BAD_HELLO.close_code()), "{texts:?}");
    assert!(texts[0].contains("pre-auth"), "{texts:?}");
    // After the hello the full limits apply: a 64 KiB message is forwarded.
    let mut gw = connect(relay.addr, "/").await.unwrap();
    gw.send(Message::Text(Utf8Bytes::from(
        Control::Hello(hello(Role::Gateway, SID, "gw")).to_text(),
    )))
    .await
    .unwrap();
    let mut op = connect(relay.addr, "/").await.unwrap();
    op.send(Message::Text(Utf8Bytes::from(
        Control::Hello(hello(Role::Operator, SID, "op")).to_text(),
    )))
    .await
    .unwrap();
    let mut seen = 0;
    while seen < 2 {
        if let Some(Ok(Message::Text(_))) = op.next().await {
            seen += 1; // welcome, peer
        }
    }
    let blob = bytes::Bytes::from(vec![0x5a; 64 * 1024]);
    gw.send(Message::Binary(blob.clone())).await.unwrap();
    loop {
        match tokio::time::timeout(LIMIT, op.next()).await.unwrap() {
            Some(Ok(Message::Binary(b))) => {
                assert_eq!(b, blob);
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
    // Raw bytes beyond the pre-auth budget (here: an endless request header) end the
    // connection.
    let mut raw = TcpStream::connect(relay.addr).await.unwrap();
    let _ = raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
    let junk = format!("X-Junk: {}\r\n", "j".repeat(1000));
    for _ in 0..40 {
        if raw.write_all(junk.as_bytes()).await.is_err() {
            break;
        }
    }
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(LIMIT, raw.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(n == 0 || !String::from_utf8_lossy(&buf[..n]).contains("101"));
    relay.stop.cancel();
}

#[tokio::test]
async fn one_deadline_for_handshake_and_hello() {
    let cfg = RelayConfig {
        hello_timeout: Duration::from_millis(800),
        ..RelayConfig::default()
    };
    let relay = start(cfg).await;
    // Connects, upgrades at once, never says hello: closed with bad_hello at the deadline,
    // which counts from the accept (not from the upgrade).
    let t = tokio::time::Instant::now();
    let mut ws = connect(relay.addr, "/").await.unwrap();
    let (texts, code) = answer(&mut ws).await;
    assert_eq!(code, Some(ErrorCode::BAD_HELLO.close_code()), "{texts:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
    assert!(t.elapsed() <= Duration::from_secs(5), "{:?}", t.elapsed());
    // Sends nothing at all: closed too.
    let mut raw = TcpStream::connect(relay.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut buf))
        .await
        .expect("the relay kept a silent connection past its deadline")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(relay.hub.metrics().drops(DropReason::Deadline), 2);
    relay.stop.cancel();
}

#[tokio::test]
async fn per_source_cap_and_the_metrics_that_show_it() {
    let cfg = RelayConfig {
        preauth_per_source: 2,
        ..RelayConfig::default()
    };
    let relay = start(cfg).await;
    // Two unauthenticated connections from 127.0.0.1 are held; the third is reset.
    let a = TcpStream::connect(relay.addr).await.unwrap();
    let b = TcpStream::connect(relay.addr).await.unwrap();
    let m = relay.hub.metrics().clone();
    let t = std::time::Instant::now();
    while m.preauth.load(Ordering::Relaxed) < 2 {
        assert!(t.elapsed() < LIMIT);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c = TcpStream::connect(relay.addr).await.unwrap();
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(LIMIT, c.read(&mut buf)).await.unwrap();
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert_eq!(m.drops(DropReason::PerSource), 1);
    // Another source address is not affected.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let d = sock.connect(relay.addr).await.unwrap();
    drop((a, b));
    let t = std::time::Instant::now();
    while m.preauth.load(Ordering::Relaxed) > 1 {
        assert!(t.elapsed() < LIMIT);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Authenticated connections do not count against their source.
    let mut held = Vec::new();
    for role in [Role::Gateway, Role::Operator] {
        let mut ws = connect(relay.addr, "/").await.unwrap();
        let token = if role == Role::Gateway { "gw" } else { "op" };
        ws.send(Message::Text(Utf8Bytes::from(
            Control::Hello(hello(role, SID, token)).to_text(),
        )))
        .await
        .unwrap();
        let first = tokio::time::timeout(LIMIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(matches!(first, Message::Text(_)));
        held.push(ws);
    }
    let _third = connect(relay.addr, "/").await.unwrap();
    let text = m.render();
    assert!(
        text.contains("obdgw_relay_admission_drops_total{reason=\"per_source\"} 1"),
        "{text}"
    );
    assert!(m.accepted.load(Ordering::Relaxed) >= 4);
    drop((d, held));
    relay.stop.cancel();
}

#[tokio::test]
async fn silent_connections_are_pinged_and_dead_ones_closed() {
    use obdgw::tunnel::client::{self, ClientConfig};
    use obdgw::tunnel::{Session, SessionConfig};
    let cfg = RelayConfig {
        ping_after: Duration::from_millis(200),
        ..RelayConfig::default()
    };
    let relay = start(cfg).await;
    let m = relay.hub.metrics().clone();
    // A real tunnel client waiting for its peer sends nothing itself; it answers the
    // relay's pings (its websocket does) and keeps its connection.
    let (_to_sess, from_app) = tokio::sync::mpsc::channel(4);
    let (to_app, _events) = tokio::sync::mpsc::channel(16);
    let stop = CancellationToken::new();
    let s = Session::new(
        SessionConfig::new(Role::Gateway, SID, Token("gw".into()), 1),
        std::time::Instant::now(),
    );
    let driver = tokio::spawn(client::run(
        ClientConfig::new(format!("ws://{}/", relay.addr)),
        s,
        from_app,
        to_app,
        stop.clone(),
    ));
    // A websocket that says hello and then never reads (so never answers a ping).
    let mut mute = connect(relay.addr, "/").await.unwrap();
    mute.send(Message::Text(Utf8Bytes::from(
        Control::Hello(hello(Role::Operator, SID, "op")).to_text(),
    )))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(m.pings_sent.load(Ordering::Relaxed) >= 2, "no pings sent");
    assert_eq!(
        m.silent_closed.load(Ordering::Relaxed),
        1,
        "only the mute one is closed"
    );
    assert_eq!(
        m.attached.load(Ordering::Relaxed),
        2,
        "the client had to reconnect"
    );
    assert_eq!(relay.hub.sessions().len(), 1);
    assert!(relay.hub.sessions()[0].gateway);
    assert!(!relay.hub.sessions()[0].operator);
    stop.cancel();
    let stats = tokio::time::timeout(LIMIT, driver)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(stats.reconnects, 1);
    drop(mute);
    relay.stop.cancel();
}

#[tokio::test]
async fn at_the_preauth_cap_the_oldest_unauthenticated_connection_makes_room() {
    let cfg = RelayConfig {
        preauth_max: 4,
        preauth_per_source: 0,
        preauth_evict_after: Duration::from_millis(300),
        ..RelayConfig::default()
    };
    let relay = start(cfg).await;
    let m = relay.hub.metrics().clone();
    // Four connections that never say anything hold every pre-auth place (from as many
    // addresses as an attacker likes: no per-source cap here).
    let mut silent = Vec::new();
    for i in 0..4u8 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::from(([127, 0, 0, 10 + i], 0)))
            .unwrap();
        silent.push(sock.connect(relay.addr).await.unwrap());
    }
    let t = std::time::Instant::now();
    while m.preauth.load(Ordering::Relaxed) < 4 {
        assert!(t.elapsed() < LIMIT);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A gateway still gets in, in about the eviction age (not the 10 s hello deadline).
    let t = std::time::Instant::now();
    let mut ws = connect(relay.addr, "/").await.unwrap();
    ws.send(Message::Text(Utf8Bytes::from(
        Control::Hello(hello(Role::Gateway, SID, "gw")).to_text(),
    )))
    .await
    .unwrap();
    let first = tokio::time::timeout(LIMIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Message::Text(text) = first else {
        panic!("{first:?}")
    };
    assert!(matches!(
        Control::parse(&text).unwrap(),
        Control::Welcome(_)
    ));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(m.drops(DropReason::Evicted), 1, "one place was needed");
    // The oldest silent connection is the one that was closed.
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(LIMIT, silent[0].read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(
        m.render()
            .contains("obdgw_relay_admission_drops_total{reason=\"evicted\"} 1"),
    );
    relay.stop.cancel();
}
