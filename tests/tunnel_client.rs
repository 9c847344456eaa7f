//! The tokio tunnel client driving real sessions through the relay: exactly-once delivery
//! across a relay restart, and a wrong token as a fatal, typed error.

use bytes::Bytes;
use obdgw::relay::{RelayConfig, SessionTokens, StaticTokens};
use obdgw::router::frame::Timestamp;
use obdgw::tunnel::client::{self, ClientConfig, ClientError, Outgoing};
use obdgw::tunnel::{Event, Session, SessionConfig};
use obdgw::wire::tunnel::{ErrorCode, PduRecord, RecordBody, RecordRepr, Role, Token};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const SID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab";
const LIMIT: Duration = Duration::from_secs(30);

fn tokens() -> Arc<StaticTokens> {
    Arc::new(StaticTokens::new([SessionTokens {
        id: SID.into(),
        gateway_token: "g".into(),
        operator_token: "o".into(),
    }]))
}

async fn relay_on(listener: TcpListener) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let task = tokio::spawn(obdgw::relay::run(
        listener,
        None,
        tokens(),
        RelayConfig::default(),
        stop.clone(),
    ));
    (stop, task)
}

fn pdu(id: u32) -> RecordRepr {
    let mut d = id.to_be_bytes().to_vec();
    d.resize(4 + (id as usize * 13) % 2000, 0x5A);
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

struct Side {
    tx: mpsc::Sender<Outgoing>,
    rx: mpsc::Receiver<Event>,
    task: tokio::task::JoinHandle<Result<obdgw::tunnel::SessionStats, ClientError>>,
}

fn side(
    addr: SocketAddr,
    role: Role,
    token: &str,
    instance: u64,
    stop: &CancellationToken,
) -> Side {
    let mut cfg = SessionConfig::new(role, SID, Token(token.into()), instance);
    cfg.limits.max_in_flight = 128 * 1024;
    let session = Session::new(cfg, std::time::Instant::now());
    let (tx, from_app) = mpsc::channel(64);
    let (to_app, rx) = mpsc::channel(1024);
    let mut cc = ClientConfig::new(format!("ws://{addr}/tunnel"));
    cc.backoff_min = Duration::from_millis(20);
    cc.backoff_max = Duration::from_millis(200);
    let task = tokio::spawn(client::run(cc, session, from_app, to_app, stop.clone()));
    Side { tx, rx, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_across_a_relay_restart() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (relay_stop, relay_task) = relay_on(listener).await;
    let stop = CancellationToken::new();
    let mut gw = side(addr, Role::Gateway, "g", 0xA, &stop);
    let mut op = side(addr, Role::Operator, "o", 0xB, &stop);
    const N: u32 = 4000;
    // The gateway sends N records (the channel is bounded: this waits on backpressure).
    let gw_tx = gw.tx.clone();
    let producer = tokio::spawn(async move {
        for i in 1..=N {
            gw_tx
                .send(Outgoing::Record {
                    rec: pdu(i),
                    sheddable: false,
                })
                .await
                .unwrap();
        }
    });
    let mut got = Vec::with_capacity(N as usize);
    let mut ups = 0;
    let mut restarted = false;
    let mut relay = Some((relay_stop, relay_task));
    tokio::time::timeout(LIMIT, async {
        while got.len() < N as usize {
            match op.rx.recv().await.expect("operator client ended") {
                Event::Record(r) => got.push(pdu_id(&r)),
                Event::Up { .. } => ups += 1,
                _ => {}
            }
            // Restart the relay once, mid-stream, on the same port.
            if !restarted && got.len() >= N as usize / 3 {
                restarted = true;
                let (s, t) = relay.take().unwrap();
                s.cancel();
                t.await.unwrap();
                let l = TcpListener::bind(addr).await.unwrap();
                relay = Some(relay_on(l).await);
            }
        }
    })
    .await
    .expect("records did not all arrive");
    producer.await.unwrap();
    assert_eq!(
        got,
        (1..=N).collect::<Vec<_>>(),
        "lost, duplicated or reordered"
    );
    assert!(ups >= 2, "the operator never resumed ({ups} ups)");
    // The gateway's events include its Up events; drain what is there.
    while gw.rx.try_recv().is_ok() {}
    stop.cancel();
    let gs = gw.task.await.unwrap().unwrap();
    let os = op.task.await.unwrap().unwrap();
    assert_eq!(gs.records_sent, N as u64);
    assert_eq!(os.records_received, N as u64);
    assert!(gs.reconnects >= 2 && os.reconnects >= 2);
    let (s, t) = relay.unwrap();
    s.cancel();
    t.await.unwrap();
}

#[tokio::test]
async fn wrong_token_is_fatal_not_retried() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (relay_stop, relay_task) = relay_on(listener).await;
    let stop = CancellationToken::new();
    let s = side(addr, Role::Operator, "not-the-token", 1, &stop);
    let r = tokio::time::timeout(LIMIT, s.task).await.unwrap().unwrap();
    match r {
        Err(ClientError::Fatal(e)) => assert_eq!(e.code(), ErrorCode::AUTH_FAILED),
        other => panic!("expected a fatal auth error, got {other:?}"),
    }
    relay_stop.cancel();
    relay_task.await.unwrap();
}

#[tokio::test]
async fn client_reaches_its_peer_over_wss() {
    use tokio_rustls::rustls;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    let acceptor = obdgw::relay::tls_acceptor(&c, &k).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let relay_stop = CancellationToken::new();
    let relay_task = tokio::spawn(obdgw::relay::run(
        listener,
        Some(acceptor),
        tokens(),
        RelayConfig::default(),
        relay_stop.clone(),
    ));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let stop = CancellationToken::new();
    let mut rxs = vec![];
    let mut tasks = vec![];
    for (role, token, inst) in [(Role::Gateway, "g", 1), (Role::Operator, "o", 2)] {
        let session = Session::new(
            SessionConfig::new(role, SID, Token(token.into()), inst),
            std::time::Instant::now(),
        );
        let (tx, from_app) = mpsc::channel(8);
        let (to_app, rx) = mpsc::channel(64);
        let mut cc = ClientConfig::new(format!("wss://localhost:{port}/tunnel"));
        cc.tls = Some(tls.clone());
        tasks.push((
            tx,
            tokio::spawn(client::run(cc, session, from_app, to_app, stop.clone())),
        ));
        rxs.push(rx);
    }
    tasks[0]
        .0
        .send(Outgoing::Record {
            rec: pdu(7),
            sheddable: false,
        })
        .await
        .unwrap();
    let got = tokio::time::timeout(LIMIT, async {
        loop {
            if let Event::Record(r) = rxs[1].recv().await.unwrap() {
                return pdu_id(&r);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got, 7);
    stop.cancel();
    for (_, t) in tasks {
        t.await.unwrap().unwrap();
    }
    relay_stop.cancel();
    relay_task.await.unwrap();
}

/// A hostile peer (or a relay forwarding one) through the real relay: a raw websocket that
/// says hello as the operator, then sends a forged fatal error (101, 102, 103) and a batch
/// with a wrong version byte. The real gateway must go on serving: its task does not end,
/// and a real operator that comes next gets its records, exactly once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_fatal_errors_and_bad_versions_leave_both_ends_serving() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (relay_stop, relay_task) = relay_on(listener).await;
    let stop = CancellationToken::new();
    let mut gw = side(addr, Role::Gateway, "g", 1, &stop);

    let mut req = client::session_url(&format!("ws://{addr}/"), SID)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        obdgw::wire::tunnel::SUBPROTOCOL.parse().unwrap(),
    );
    let (mut evil, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let hello = format!(
        r#"{{"type":"hello","version":1,"role":"operator","session":"{SID}","token":"o","instance":666,"capabilities":["can","canfd","isotp","doip"],"resume":{{"last_received":0}},"limits":{{"max_record":1048576,"max_batch":2097152,"max_in_flight":4194304}}}}"#
    );
    evil.send(Message::Text(hello.into())).await.unwrap();
    // Wait until the relay paired us with the gateway (`peer`).
    tokio::time::timeout(LIMIT, async {
        while let Some(Ok(m)) = evil.next().await {
            if let Message::Text(t) = m
                && t.contains(r#""type":"peer""#)
            {
                return;
            }
        }
        panic!("the relay closed before pairing");
    })
    .await
    .unwrap();
    for code in [101, 102, 103] {
        let forged = format!(r#"{{"type":"error","code":{code},"message":"forged"}}"#);
        evil.send(Message::Text(forged.into())).await.unwrap();
    }
    // A batch whose version byte is 2 (header otherwise plausible).
    let mut bad = vec![0u8; 20];
    bad[0] = 2;
    evil.send(Message::Binary(bad.into())).await.unwrap();
    // The gateway answers the bad batch (an error, then it drops that connection to resume).
    let answered = tokio::time::timeout(LIMIT, async {
        while let Some(m) = evil.next().await {
            match m {
                Ok(Message::Text(t)) if t.contains(r#""type":"error""#) => return t.to_string(),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        String::new()
    })
    .await
    .unwrap();
    assert!(answered.contains("101"), "{answered}");
    drop(evil);

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !gw.task.is_finished(),
        "the gateway's session ended after a peer's forged errors"
    );

    // A real operator now: records flow both ways, the gateway never stopped.
    let mut op = side(addr, Role::Operator, "o", 2, &stop);
    for id in 1..=20 {
        gw.tx
            .send(Outgoing::Record {
                rec: pdu(id),
                sheddable: false,
            })
            .await
            .unwrap();
    }
    let got = tokio::time::timeout(LIMIT, async {
        let mut got = Vec::new();
        while got.len() < 20 {
            if let Event::Record(r) = op.rx.recv().await.unwrap() {
                got.push(pdu_id(&r));
            }
        }
        got
    })
    .await
    .unwrap();
    assert_eq!(got, (1..=20).collect::<Vec<_>>());
    // And the other way.
    op.tx
        .send(Outgoing::Record {
            rec: pdu(77),
            sheddable: false,
        })
        .await
        .unwrap();
    let back = tokio::time::timeout(LIMIT, async {
        loop {
            if let Event::Record(r) = gw.rx.recv().await.unwrap() {
                return pdu_id(&r);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(back, 77);
    assert!(!gw.task.is_finished() && !op.task.is_finished());
    stop.cancel();
    let gstats = gw.task.await.unwrap().unwrap();
    op.task.await.unwrap().unwrap();
    assert_eq!(gstats.peer_errors_ignored, 3, "{gstats:?}");
    relay_stop.cancel();
    relay_task.await.unwrap();
}
