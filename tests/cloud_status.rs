//! The status websocket client against the simulator: a ticket's life as events, a socket
//! dropped mid-stream (resubscription), the REST fallback while the socket cannot come back,
//! and tokens expiring mid-run. Intervals are short and set through configuration.

use obdgw::cloud::Credentials;
use obdgw::cloud::client::{Client, ClientSettings};
use obdgw::cloud::config::{CloudConfig, TokenPlacement};
use obdgw::cloud::status::{StatusClient, StatusEvent, StatusSettings, TicketState};
use obdgw::config::Secret;
use obdgw::sim::cloud::{self as sim, DEMO_CONNECTOR_UUID, DEMO_PINCODE, Running, SimOptions};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn config(r: &Running, placement: TokenPlacement) -> CloudConfig {
    let mut c = CloudConfig {
        base_url: r.base_url.clone(),
        connector_uuid: Some(DEMO_CONNECTOR_UUID.into()),
        pincode: Some(Secret::new(DEMO_PINCODE)),
        retry_base_ms: 5,
        retry_max_ms: 20,
        ..Default::default()
    };
    c.status.token_placement = placement;
    c.status.immediate_retries = 2;
    c.status.reconnect_min_ms = 200;
    c.status.reconnect_max_ms = 400;
    c.status.poll_interval_ms = 100;
    c.status.ticket_check_interval_ms = 150;
    c.status.idle_timeout_ms = 3_000;
    c
}

struct Harness {
    r: Running,
    api: Client,
    rx: mpsc::Receiver<StatusEvent>,
    seen: Vec<StatusEvent>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Harness {
    async fn start(opts: SimOptions, placement: TokenPlacement, margin_s: u64) -> Harness {
        let r = sim::start(sim::data::SimData::builtin().unwrap(), opts, None)
            .await
            .unwrap();
        let mut cfg = config(&r, placement);
        cfg.refresh_margin_s = margin_s;
        let client = Client::from_config(&cfg, None).unwrap();
        let api = Client::new(
            ClientSettings::for_base_url(&r.base_url),
            Some(Credentials::ConnectorUuid {
                uuid: DEMO_CONNECTOR_UUID.into(),
                pincode: Secret::new(DEMO_PINCODE),
            }),
            None,
        )
        .unwrap();
        let (tx, rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let status = StatusClient::new(
            client,
            StatusSettings::from_config(&cfg),
            DEMO_CONNECTOR_UUID,
        );
        let task = tokio::spawn(status.run(tx, stop.clone()));
        Harness {
            r,
            api,
            rx,
            seen: Vec::new(),
            stop,
            task,
        }
    }

    /// Wait for an event matching `pred` (events in between are kept in `seen`).
    async fn expect(&mut self, what: &str, pred: impl Fn(&StatusEvent) -> bool) -> StatusEvent {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(ev)) => {
                    self.seen.push(ev.clone());
                    if pred(&ev) {
                        return ev;
                    }
                }
                Ok(None) => panic!(
                    "status client ended while waiting for {what}; seen {:#?}",
                    self.seen
                ),
                Err(_) => panic!("timed out waiting for {what}; seen {:#?}", self.seen),
            }
        }
    }

    async fn admin(&self, path: &str, body: Value) {
        let http = obdgw::tls::http_client(Duration::from_secs(5)).unwrap();
        let s = http
            .post(format!("{}{path}", self.r.base_url))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status();
        assert!(s.is_success(), "admin {path}: {s}");
    }

    async fn create_ticket(&self) -> i64 {
        self.api
            .create_ticket(&obdgw::sim::cloud::demo_ticket("WVWZZZCDZMW012345"))
            .await
            .unwrap()
            .id
    }

    fn subscribes(&self) -> u64 {
        self.r.shared.ws_subscribes.load(Ordering::Relaxed)
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
        self.r.stop().await;
    }
}

fn state_changed(id: i64, to: TicketState) -> impl Fn(&StatusEvent) -> bool {
    move |e| matches!(e, StatusEvent::TicketStateChanged { ticket_id, to: t, .. } if *ticket_id == id && *t == to)
}

#[tokio::test]
async fn ticket_life_drop_resubscribe_and_rest_fallback() {
    let opts = SimOptions {
        snapshot_interval: Duration::from_millis(100),
        ..SimOptions::default()
    };
    let mut h = Harness::start(opts, TokenPlacement::Header, 120).await;
    h.expect("link up", |e| *e == StatusEvent::LinkUp).await;
    h.expect("first connector snapshot", |e| {
        matches!(e, StatusEvent::ConnectorChanged { before: None, .. })
    })
    .await;

    // A ticket appears and an operator joins: state changes and a connection starts.
    let id = h.create_ticket().await;
    h.expect("ticket pending", state_changed(id, TicketState::Pending))
        .await;
    h.admin(&format!("/admin/tickets/{id}/join"), json!({}))
        .await;
    h.expect("in progress", state_changed(id, TicketState::InProgress))
        .await;
    let conn = match h
        .expect("connection started", |e| {
            matches!(e, StatusEvent::ConnectionStarted { .. })
        })
        .await
    {
        StatusEvent::ConnectionStarted {
            ticket_id,
            connection_uuid,
            ..
        } => {
            assert_eq!(ticket_id, id);
            connection_uuid
        }
        _ => unreachable!(),
    };
    h.expect("connection snapshot", |e| {
        matches!(e, StatusEvent::ConnectionUpdated(_))
    })
    .await;

    // The socket drops mid-stream: reconnect at once and resubscribe to all three.
    let before = h.subscribes();
    h.admin("/admin/websockets/drop", json!({})).await;
    h.expect("link down", |e| matches!(e, StatusEvent::LinkDown { .. }))
        .await;
    h.expect("link up again", |e| *e == StatusEvent::LinkUp)
        .await;
    h.admin("/admin/connectors/910000001", json!({"voltage": 11.9}))
        .await;
    h.expect(
        "connector change after reconnect",
        |e| matches!(e, StatusEvent::ConnectorChanged { after, .. } if after.voltage == Some(11.9)),
    )
    .await;
    // Ticket updates arrive over the new socket (the periodic REST check only looks for new
    // tickets), which proves the ticket subscription was renewed.
    h.admin(&format!("/admin/tickets/{id}/outsource"), json!({}))
        .await;
    h.expect(
        "outsourced, over the new socket",
        state_changed(id, TicketState::Outsourced),
    )
    .await;
    assert!(
        h.subscribes() >= before + 3,
        "connector, ticket and connection resubscribed: {}",
        h.subscribes() - before
    );
    assert!(
        !h.seen
            .iter()
            .any(|e| matches!(e, StatusEvent::ConnectionEnded { .. })),
        "a dropped socket does not end the connection"
    );

    // The socket cannot come back (the upgrade fails): REST polling carries the news.
    h.admin(
        "/admin/faults",
        json!({"status": 503, "count": 1000, "path_prefix": "/v1/ws"}),
    )
    .await;
    h.admin("/admin/websockets/drop", json!({})).await;
    h.expect("link down", |e| matches!(e, StatusEvent::LinkDown { .. }))
        .await;
    h.admin(&format!("/admin/tickets/{id}/close"), json!({}))
        .await;
    h.expect("connection ended (via REST)", |e| matches!(e, StatusEvent::ConnectionEnded { connection_uuid, .. } if *connection_uuid == conn)).await;
    h.expect(
        "closed (via REST and the historical ticket)",
        state_changed(id, TicketState::Closed),
    )
    .await;
    h.admin("/admin/connectors/910000001", json!({"is_online": false}))
        .await;
    h.expect("connector offline (via REST)", |e| matches!(e, StatusEvent::ConnectorChanged { after, .. } if after.is_online == Some(false))).await;
    let last_down = h
        .seen
        .iter()
        .rposition(|e| matches!(e, StatusEvent::LinkDown { .. }))
        .unwrap();
    assert!(
        !h.seen[last_down..].contains(&StatusEvent::LinkUp),
        "these came over REST while the socket was down"
    );

    // The service recovers: the socket comes back no faster than reconnect_min.
    let t0 = tokio::time::Instant::now();
    reqwest_delete(&h, "/admin/faults").await;
    h.expect("link up after the outage", |e| *e == StatusEvent::LinkUp)
        .await;
    assert!(t0.elapsed() < Duration::from_secs(5));
    // A new ticket is found by the periodic check and followed over the socket.
    let id2 = h.create_ticket().await;
    h.expect("second ticket", state_changed(id2, TicketState::Pending))
        .await;
    h.admin(&format!("/admin/tickets/{id2}/cancel"), json!({}))
        .await;
    h.expect("cancelled", state_changed(id2, TicketState::Cancelled))
        .await;
    h.stop().await;
}

async fn reqwest_delete(h: &Harness, path: &str) {
    let http = obdgw::tls::http_client(Duration::from_secs(5)).unwrap();
    http.delete(format!("{}{path}", h.r.base_url))
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn token_expiry_mid_run_is_survived() {
    // Tokens live 2 s; the socket is closed by the service when its token expires; the
    // client logs in again (1 s margin) and resubscribes. Token in the query this time.
    let opts = SimOptions {
        snapshot_interval: Duration::from_millis(100),
        token_ttl_s: 2,
        ..SimOptions::default()
    };
    let mut h = Harness::start(opts, TokenPlacement::Query, 1).await;
    h.expect("link up", |e| *e == StatusEvent::LinkUp).await;
    let id = h.create_ticket().await;
    h.expect("ticket pending", state_changed(id, TicketState::Pending))
        .await;
    let reason = match h
        .expect("closed at token expiry", |e| {
            matches!(e, StatusEvent::LinkDown { .. })
        })
        .await
    {
        StatusEvent::LinkDown { reason } => reason,
        _ => unreachable!(),
    };
    assert!(
        reason.contains("4001") || reason.contains("token"),
        "{reason}"
    );
    h.expect("link up with a fresh token", |e| *e == StatusEvent::LinkUp)
        .await;
    h.admin(&format!("/admin/tickets/{id}/join"), json!({}))
        .await;
    h.expect(
        "in progress after the token change",
        state_changed(id, TicketState::InProgress),
    )
    .await;
    // And once more, to show it is not a one-off.
    h.expect("second expiry", |e| {
        matches!(e, StatusEvent::LinkDown { .. })
    })
    .await;
    h.expect("second recovery", |e| *e == StatusEvent::LinkUp)
        .await;
    h.admin(&format!("/admin/tickets/{id}/close"), json!({}))
        .await;
    h.expect("closed", state_changed(id, TicketState::Closed))
        .await;
    assert!(
        !h.seen
            .iter()
            .any(|e| matches!(e, StatusEvent::TicketGone { .. }))
    );
    h.stop().await;
}

#[tokio::test]
async fn sync_runs_from_configuration_and_refuses_missing_credentials() {
    let r = sim::start(
        sim::data::SimData::builtin().unwrap(),
        SimOptions {
            snapshot_interval: Duration::from_millis(100),
            ..SimOptions::default()
        },
        None,
    )
    .await
    .unwrap();
    let mut cfg = config(&r, TokenPlacement::Header);
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let task = {
        let cfg = cfg.clone();
        let stop = stop.clone();
        let state = dir.path().to_path_buf();
        tokio::spawn(async move { obdgw::cloud::sync::run(&cfg, Some(&state), tx, stop).await })
    };
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, StatusEvent::LinkUp);
    assert!(
        dir.path().join(obdgw::cloud::token::STORE_FILE).exists(),
        "tokens stored in the state dir"
    );
    stop.cancel();
    task.await.unwrap().unwrap();

    cfg.pincode = None;
    let (tx, _rx) = mpsc::channel(1);
    let e = obdgw::cloud::sync::run(&cfg, None, tx, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("pincode"), "{e}");
    r.stop().await;
}

/// A server that answers once and then drops every websocket at once must not earn
/// immediate reconnects forever: the pacing starts over only after a connection lasted
/// `reconnect_min`. (Before the fix, the first message reset it and the client reconnected
/// with no delay, hundreds of times a second.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_drops_every_socket_is_retried_with_backoff() {
    use futures_util::SinkExt as _;
    use std::sync::atomic::AtomicUsize;
    let r = sim::start(
        sim::data::SimData::builtin().unwrap(),
        SimOptions::default(),
        None,
    )
    .await
    .unwrap();
    // The flapping status server: accept, send one snapshot, close.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await {
                    let frame = json!({"action": "subscribeToConnector", "message": {"connector_id": 910000001}});
                    let _ = ws
                        .send(tokio_tungstenite::tungstenite::Message::text(
                            frame.to_string(),
                        ))
                        .await;
                    let _ = ws.close(None).await;
                }
            });
        }
    });
    let mut cfg = config(&r, TokenPlacement::Header);
    cfg.status.url = Some(format!("ws://{addr}/v1/ws"));
    cfg.status.immediate_retries = 3;
    cfg.status.reconnect_min_ms = 1_000;
    cfg.status.reconnect_max_ms = 2_000;
    cfg.status.poll_interval_ms = 500;
    let client = Client::from_config(&cfg, None).unwrap();
    let (tx, mut rx) = mpsc::channel(1024);
    let stop = CancellationToken::new();
    let task = tokio::spawn(
        StatusClient::new(
            client,
            StatusSettings::from_config(&cfg),
            DEMO_CONNECTOR_UUID,
        )
        .run(tx, stop.clone()),
    );
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.cancel();
    let _ = task.await;
    let n = accepted.load(Ordering::SeqCst);
    // 4 s: the first connection and 3 immediate retries, then at most one attempt per
    // second (1-2 s apart): well under 10. Without backoff it would be hundreds.
    assert!((4..=9).contains(&n), "{n} connections in 4 s");
    r.stop().await;
}
