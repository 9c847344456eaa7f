//! The relay embedded in the cloud simulator (`obdgw sim cloud --relay-listen`), in process
//! on 127.0.0.1:0, with real websocket hellos: a ticket's connection is a session; the
//! gateway is admitted with its connector's login token and the operator with the session
//! token from the admin interface; wrong tokens, swapped roles and unknown sessions are
//! refused with the protocol's codes; closing the ticket ends the session.

use futures_util::{SinkExt, StreamExt};
use obdgw::sim::cloud::{self as sim, DEMO_CONNECTOR_ID, Running, SimOptions};
use obdgw::wire::tunnel::{Control, ErrorCode, Hello, Limits, Resume, Role, SUBPROTOCOL, Token};
use serde_json::Value;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Guard against a hung test; never reached when the code works.
const LIMIT: Duration = Duration::from_secs(20);

struct Setup {
    sim: Running,
    relay_url: String,
    relay_task: tokio::task::JoinHandle<()>,
    relay_stop: CancellationToken,
    http: reqwest::Client,
    ticket: i64,
    session: String,
    gateway_token: String,
    operator_token: String,
}

/// The simulator with its relay; the demo connector logs in and opens a ticket; an
/// operator joins it (a connection starts).
async fn setup() -> Setup {
    let sim = sim::start(
        sim::data::SimData::builtin().unwrap(),
        SimOptions::default(),
        None,
    )
    .await
    .unwrap();
    let relay_stop = CancellationToken::new();
    let (relay_url, relay_task) = sim::relay::start(
        "127.0.0.1:0".parse().unwrap(),
        None,
        sim.shared.clone(),
        relay_stop.clone(),
    )
    .await
    .unwrap();
    let api = obdgw::sim::cloud::demo_client(&sim.base_url).unwrap();
    let gateway_token = api.bearer().await.unwrap();
    let ticket = api
        .create_ticket(&obdgw::sim::cloud::demo_ticket("WVWZZZCDZMW012345"))
        .await
        .unwrap()
        .id;
    let http = obdgw::tls::http_client(Duration::from_secs(5)).unwrap();
    let joined: Value = http
        .post(format!("{}/admin/tickets/{ticket}/join", sim.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = joined["connection_uuid"].as_str().unwrap().to_string();
    let conn: Value = http
        .get(format!("{}/admin/connections/{session}", sim.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(conn["ticket_id"], ticket);
    assert_eq!(conn["connector_id"], DEMO_CONNECTOR_ID);
    assert_eq!(conn["relay_url"].as_str(), Some(relay_url.as_str()));
    let operator_token = conn["operator_token"].as_str().unwrap().to_string();
    assert_eq!(
        joined["operator_token"].as_str(),
        Some(operator_token.as_str())
    );
    assert!(operator_token.starts_with("ops_") && operator_token.len() == 68);
    Setup {
        sim,
        relay_url,
        relay_task,
        relay_stop,
        http,
        ticket,
        session,
        gateway_token,
        operator_token,
    }
}

impl Setup {
    async fn connect(&self) -> Ws {
        let mut req = self.relay_url.as_str().into_client_request().unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        tokio::time::timeout(LIMIT, tokio_tungstenite::connect_async(req))
            .await
            .unwrap()
            .unwrap()
            .0
    }

    /// A connection that sent `hello`; returns it with the relay's first answer.
    async fn hello(&self, role: Role, session: &str, token: &str) -> (Ws, Control) {
        let mut ws = self.connect().await;
        let h = Hello {
            version: 1,
            role,
            session: session.into(),
            token: Token(token.into()),
            instance: if role == Role::Gateway { 1 } else { 2 },
            capabilities: vec!["doip".into()],
            resume: Resume {
                peer_instance: None,
                last_received: 0,
            },
            limits: Limits::default(),
            agent: None,
        };
        ws.send(Message::Text(Utf8Bytes::from(Control::Hello(h).to_text())))
            .await
            .unwrap();
        let first = next_control(&mut ws).await;
        (ws, first)
    }

    async fn stop(self) {
        self.relay_stop.cancel();
        tokio::time::timeout(LIMIT, self.relay_task)
            .await
            .unwrap()
            .unwrap();
        self.sim.stop().await;
    }
}

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

fn error_code(c: &Control) -> Option<ErrorCode> {
    match c {
        Control::Error { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test]
async fn connector_token_and_session_token_are_admitted_and_paired() {
    let s = setup().await;
    let (mut gw, first) = s.hello(Role::Gateway, &s.session, &s.gateway_token).await;
    let Control::Welcome(w) = first else {
        panic!("gateway not welcomed: {first:?}")
    };
    assert_eq!(w.session, s.session);
    assert!(!w.peer_connected);
    let (mut op, first) = s.hello(Role::Operator, &s.session, &s.operator_token).await;
    let Control::Welcome(w) = first else {
        panic!("operator not welcomed: {first:?}")
    };
    assert!(w.peer_connected);
    let Control::Peer(p) = next_control(&mut op).await else {
        panic!("no peer for the operator")
    };
    assert_eq!(p.role, Role::Gateway);
    let Control::Peer(p) = next_control(&mut gw).await else {
        panic!("no peer for the gateway")
    };
    assert_eq!(p.role, Role::Operator);
    s.stop().await;
}

#[tokio::test]
async fn wrong_tokens_swapped_roles_and_unknown_sessions_are_refused() {
    let s = setup().await;
    let unknown = "00000000-0000-4000-8000-000000000000";
    let cases = [
        (
            "wrong gateway token",
            Role::Gateway,
            s.session.as_str(),
            "nope",
            ErrorCode::AUTH_FAILED,
        ),
        (
            "wrong operator token",
            Role::Operator,
            s.session.as_str(),
            "ops_00",
            ErrorCode::AUTH_FAILED,
        ),
        (
            "operator token as gateway",
            Role::Gateway,
            s.session.as_str(),
            s.operator_token.as_str(),
            ErrorCode::AUTH_FAILED,
        ),
        (
            "connector token as operator",
            Role::Operator,
            s.session.as_str(),
            s.gateway_token.as_str(),
            ErrorCode::AUTH_FAILED,
        ),
        (
            "unknown session",
            Role::Gateway,
            unknown,
            s.gateway_token.as_str(),
            // One refusal for unknown sessions and bad tokens (no probing).
            ErrorCode::AUTH_FAILED,
        ),
        (
            "ticket id instead of a connection UUID",
            Role::Operator,
            "7100001",
            s.operator_token.as_str(),
            // One refusal for unknown sessions and bad tokens (no probing).
            ErrorCode::AUTH_FAILED,
        ),
    ];
    for (what, role, session, token, want) in cases {
        let (mut ws, first) = s.hello(role, session, token).await;
        assert_eq!(error_code(&first), Some(want), "{what}: {first:?}");
        assert_eq!(close_code(&mut ws).await, Some(want.close_code()), "{what}");
    }
    // An expired connector token is refused too (expiry is checked at the hello).
    let expire = s
        .http
        .post(format!("{}/admin/tokens/expire", s.sim.base_url))
        .send()
        .await
        .unwrap();
    assert!(expire.status().is_success());
    let (_, first) = s.hello(Role::Gateway, &s.session, &s.gateway_token).await;
    assert_eq!(
        error_code(&first),
        Some(ErrorCode::AUTH_FAILED),
        "{first:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn closing_the_ticket_ends_the_relay_session() {
    let s = setup().await;
    let (mut gw, first) = s.hello(Role::Gateway, &s.session, &s.gateway_token).await;
    assert!(matches!(first, Control::Welcome(_)), "{first:?}");
    let (mut op, first) = s.hello(Role::Operator, &s.session, &s.operator_token).await;
    assert!(matches!(first, Control::Welcome(_)), "{first:?}");
    assert!(matches!(next_control(&mut op).await, Control::Peer(_)));
    assert!(matches!(next_control(&mut gw).await, Control::Peer(_)));

    let r = s
        .http
        .post(format!(
            "{}/admin/tickets/{}/close",
            s.sim.base_url, s.ticket
        ))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    for ws in [&mut gw, &mut op] {
        let c = next_control(ws).await;
        assert_eq!(error_code(&c), Some(ErrorCode::SESSION_ENDED), "{c:?}");
        assert_eq!(
            close_code(ws).await,
            Some(ErrorCode::SESSION_ENDED.close_code())
        );
    }
    // Coming back is refused: the session is gone with the connection.
    let (_, first) = s.hello(Role::Operator, &s.session, &s.operator_token).await;
    assert_eq!(
        error_code(&first),
        Some(ErrorCode::AUTH_FAILED),
        "{first:?}"
    );
    let r = s
        .http
        .get(format!(
            "{}/admin/connections/{}",
            s.sim.base_url, s.session
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    s.stop().await;
}

/// `obdgw sim cloud --relay-listen 127.0.0.1:0 --relay-tls-cert --relay-tls-key`: prints the
/// relay's `wss://` URL after the base URL, and a wss client gets the relay's answer to its
/// hello (a session no ticket has: refused like a bad token, `auth_failed`). A missing certificate file is a start
/// error naming the file.
#[tokio::test]
async fn cli_serves_the_relay_over_tls_and_prints_its_url() {
    use std::io::BufRead;
    use std::sync::Arc;
    use tokio_rustls::rustls;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let bin = env!("CARGO_BIN_EXE_obdgw");

    let missing = std::process::Command::new(bin)
        .args([
            "sim",
            "cloud",
            "--listen",
            "127.0.0.1:0",
            "--relay-listen",
            "127.0.0.1:0",
        ])
        .arg("--relay-tls-cert")
        .arg(dir.path().join("nope.crt"))
        .arg("--relay-tls-key")
        .arg(&key_path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(2), "{err}");
    assert!(err.contains("nope.crt"), "{err}");

    let mut child = std::process::Command::new(bin)
        .args([
            "sim",
            "cloud",
            "--listen",
            "127.0.0.1:0",
            "--relay-listen",
            "127.0.0.1:0",
        ])
        .arg("--relay-tls-cert")
        .arg(&cert_path)
        .arg("--relay-tls-key")
        .arg(&key_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let _guard = Kill(child);
    let base = lines.next().unwrap().unwrap();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let relay = lines.next().unwrap().unwrap();
    let port: u16 = relay
        .strip_prefix("relay wss://127.0.0.1:")
        .and_then(|r| r.strip_suffix('/'))
        .unwrap_or_else(|| panic!("relay line: {relay}"))
        .parse()
        .unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let mut req = format!("wss://localhost:{port}/tunnel")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    let h = Hello {
        version: 1,
        role: Role::Gateway,
        session: "00000000-0000-4000-8000-000000000000".into(),
        token: Token("t".into()),
        instance: 1,
        capabilities: vec![],
        resume: Resume {
            peer_instance: None,
            last_received: 0,
        },
        limits: Limits::default(),
        agent: None,
    };
    ws.send(Message::Text(Utf8Bytes::from(Control::Hello(h).to_text())))
        .await
        .unwrap();
    let answer = loop {
        match tokio::time::timeout(LIMIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => break Control::parse(&t).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("no answer over wss: {other:?}"),
        }
    };
    assert_eq!(
        error_code(&answer),
        Some(ErrorCode::AUTH_FAILED),
        "{answer:?}"
    );
}
