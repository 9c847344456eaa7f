//! `obdgw relay` as a separate process: it prints where it listens, serves a hello, and
//! exits cleanly on SIGTERM; bad arguments are clear errors.

use futures_util::{SinkExt, StreamExt};
use obdgw::wire::tunnel::{Control, Hello, Limits, Resume, Role, SUBPROTOCOL, Token};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const SID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab";

fn tokens_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let p = dir.path().join("tokens.toml");
    std::fs::write(
        &p,
        format!("[[session]]\nid = \"{SID}\"\ngateway_token = \"g\"\noperator_token = \"o\"\n"),
    )
    .unwrap();
    p
}

#[tokio::test]
async fn relay_process_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_obdgw"))
        .args(["relay", "--listen", "127.0.0.1:0", "--tokens"])
        .arg(tokens_file(&dir))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    assert!(line.contains(SUBPROTOCOL), "{line}");

    let mut req = format!("{url}tunnel").into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let hello = Control::Hello(Hello {
        version: 1,
        role: Role::Gateway,
        session: SID.into(),
        token: Token("g".into()),
        instance: 1,
        capabilities: vec![],
        resume: Resume {
            peer_instance: None,
            last_received: 0,
        },
        limits: Limits::default(),
        agent: None,
    });
    ws.send(Message::Text(hello.to_text().into()))
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Message::Text(t) = m else { panic!("{m:?}") };
    assert!(matches!(Control::parse(&t).unwrap(), Control::Welcome(_)));

    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    // The relay says goodbye (1001) and exits 0.
    let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .unwrap();
    if let Some(Ok(Message::Close(Some(f)))) = m {
        assert_eq!(u16::from(f.code), 1001);
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn relay_argument_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_obdgw"))
        .args(["relay", "--listen", "127.0.0.1:0", "--tokens"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.toml"), "{err}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[session]]\nid = \"ABC\"\ngateway_token = \"g\"\noperator_token = \"o\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_obdgw"))
        .args(["relay", "--listen", "127.0.0.1:0", "--tokens"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("UUID"), "{err}");

    // A certificate without a key is refused by the argument parser.
    let out = Command::new(env!("CARGO_BIN_EXE_obdgw"))
        .args([
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "x.pem",
            "--tokens",
        ])
        .arg(tokens_file(&dir))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
}
