//! The product path as separate processes: `obdgw run` in cloud-driven mode does the box's
//! whole job by itself. The test plays only the garage (it creates the ticket through the
//! Customer API) and the vendor's back office (the simulator's admin join and close); it
//! never touches the daemon except through `obdgw status`, `obdgw reload` and its config file.
//!
//! ```text
//! tester ─▶ obdgw operator ─▶ obdgw sim cloud (API, status socket, relay) ◀─ obdgw run ─▶ obdgw sim vehicle
//! ```

mod common;

use common::procs::{Procs, READY, addr_after, python, start_car, start_cloud, value};
use obdgw::sim::cloud::{DEMO_CONNECTOR_UUID, DEMO_PINCODE};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const VIN: &str = "WVWZZZ1KZAW000042";
const OTHER_VIN: &str = "WDB1234561A000001";
const DOWNLOAD: usize = 1 << 20;

/// The tests take turns: each runs four or five processes on a 2-core machine.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How a test's world differs from the plain one.
#[derive(Default)]
struct Opts {
    /// The car has no DoIP entity: VIN over CAN, DoIP through the address map.
    can_only: bool,
    /// A wrong pincode instead of the demo connector's.
    pincode: Option<&'static str>,
    /// The simulator's token lifetime (`--token-ttl-s`).
    token_ttl_s: Option<u64>,
    /// The daemon reaches the relay through a proxy the test can cut.
    wan: bool,
}

struct World {
    procs: Procs,
    /// The daemon's way to the relay, when `Opts::wan`.
    wan: Option<common::wan::Wan>,
    base_url: String,
    relay_url: String,
    socket: PathBuf,
    config: PathBuf,
    /// Index of `obdgw run` in `procs`.
    daemon: usize,
    /// The daemon's configuration text (for reload tests).
    config_text: String,
}

/// The cloud simulator, a simulated car and the daemon in cloud-driven mode. With
/// `can_only` the car has no DoIP entity: the daemon reads its VIN over CAN and serves it
/// through the address map.
async fn world(bus: &str, opts: Opts) -> World {
    let can_only = opts.can_only;
    let pincode = opts.pincode.unwrap_or(DEMO_PINCODE);
    let mut procs = Procs::new();
    let ttl = opts.token_ttl_s.map(|t| t.to_string());
    let extra: Vec<&str> = match &ttl {
        Some(t) => vec!["--token-ttl-s", t],
        None => Vec::new(),
    };
    let (_, base_url, relay_url) = start_cloud(&mut procs, &extra).await;
    let bus_spec = format!("sim:{bus}");
    let vehicle_side = start_car(&mut procs, bus, VIN, can_only).await;
    let wan = if opts.wan {
        let relay: SocketAddr = relay_url
            .trim_start_matches("ws://")
            .trim_end_matches('/')
            .parse()
            .expect("the relay URL is ws://ADDR/");
        Some(common::wan::Wan::to(relay).await)
    } else {
        None
    };
    let gateway_relay = match &wan {
        Some(w) => format!("ws://{}/", w.addr),
        None => relay_url.clone(),
    };
    let socket = procs.path("control.sock");
    let config = procs.path("obdgw.toml");
    let config_text = format!(
        r#"[log]
level = "info"
format = "text"

[daemon]
state_dir = "{state_dir}"
control_socket = "{socket}"

[cloud]
base_url = "{base_url}"
connector_uuid = "{DEMO_CONNECTOR_UUID}"
pincode = "{pincode}"

[cloud.status]
reconnect_min_ms = 500
reconnect_max_ms = 2000

[metrics]
listen = "127.0.0.1:0"

[[can]]
name = "car"
interface = "{bus_spec}"

[tunnel]
relay_url = "{gateway_relay}"
can_interfaces = ["car"]
{vehicle_side}
[tunnel.policy]
raw_tx = true
raw_tx_ids = ["0x000-0x7FF"]
raw_tx_rate_per_id = 0
raw_tx_rate_total = 0
diag_ids = ["0x7DF", "0x7E0-0x7E7", "0x740"]
"#,
        state_dir = procs.path("gateway-state").display(),
        socket = socket.display(),
    );
    std::fs::write(&config, &config_text).unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_obdgw"))
        .args(["config", "check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let check_err = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "config check: {check_err}");
    assert!(
        check_err.contains("tunnel mode: cloud-driven"),
        "config check names the mode: {check_err}"
    );
    let daemon = procs.spawn("run", &["run", "--config", config.to_str().unwrap()], &[]);
    World {
        procs,
        wan,
        base_url,
        relay_url,
        socket,
        config,
        daemon,
        config_text,
    }
}

/// `obdgw status --json`: exit code and report (`Null` when no daemon answered).
async fn status(w: &World) -> (i32, Value) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_obdgw"))
        .args(["status", "--json", "--socket", w.socket.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v)
}

/// Poll the status until `pred` holds; fail with the processes' output after `within`.
async fn until(
    w: &mut World,
    what: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> (Value, Duration) {
    let start = tokio::time::Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < within {
        let (_, v) = status(w).await;
        if pred(&v) {
            return (v, start.elapsed());
        }
        last = v;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.procs.fail(&format!(
        "status did not show {what} within {within:?}; last status:\n{last:#}"
    ))
}

/// Create a ticket for `vin` as the garage would, then have an operator join it in the back
/// office: returns (ticket id, connection UUID = session, operator token).
async fn ticket_joined(w: &mut World, vin: &str) -> (i64, String, String) {
    let api = obdgw::sim::cloud::demo_client(&w.base_url).unwrap();
    let ticket = match api
        .create_ticket(&obdgw::sim::cloud::demo_ticket(vin))
        .await
    {
        Ok(t) => t.id,
        Err(e) => w.procs.fail(&format!("creating a ticket: {e}")),
    };
    let http = obdgw::tls::http_client(Duration::from_secs(10)).unwrap();
    match obdgw::sim::cloud::admin_join(&http, &w.base_url, ticket).await {
        Ok((session, token)) => (ticket, session, token),
        Err(e) => w.procs.fail(&format!("admin join of ticket {ticket}: {e}")),
    }
}

async fn admin(w: &mut World, path: &str) {
    let http = obdgw::tls::http_client(Duration::from_secs(10)).unwrap();
    let url = format!("{}{path}", w.base_url);
    match http.post(&url).send().await {
        Ok(r) if r.status().is_success() => {}
        other => w.procs.fail(&format!("POST {url}: {other:?}")),
    }
}

/// Start the operator endpoint; returns its index and DoIP entity address.
async fn operator(w: &mut World, session: &str, token: &str) -> (usize, SocketAddr) {
    let relay = w.relay_url.clone();
    let op = w.procs.spawn(
        "operator",
        &[
            "operator",
            "--relay",
            &relay,
            "--session",
            session,
            "--doip-listen",
            "127.0.0.1:0",
            "--socketcand-listen",
            "127.0.0.1:0",
            "--bus",
            "car",
        ],
        &[("OBDGW_OPERATOR_TOKEN", token)],
    );
    let doip = w
        .procs
        .line(op, "its DoIP entity address", |l| {
            addr_after(l, "DoIP entity on ")
        })
        .await;
    (op, doip)
}

/// Read the VIN at the operator's DoIP entity with obdgw's own DoIP client.
async fn read_vin(w: &mut World, doip: SocketAddr) {
    use obdgw::vehicle::doip::{DoipClient, DoipClientConfig};
    // 0x0E01: the python tester, which may be connected at the same time, is 0x0E00.
    let cfg = DoipClientConfig {
        response_timeout_ms: 10_000,
        tester_address: 0x0E01,
        ..DoipClientConfig::default()
    };
    let mut client = DoipClient::new(doip, cfg);
    let r = client.request(0x1000, bytes::Bytes::from_static(&[0x22, 0xF1, 0x90]));
    match tokio::time::timeout(READY, r).await {
        Ok(Ok(resp)) => assert_eq!(
            &resp[..],
            [&[0x62, 0xF1, 0x90][..], VIN.as_bytes()].concat(),
            "VIN answer through the tunnel"
        ),
        Ok(Err(e)) => w
            .procs
            .fail(&format!("reading the VIN through the tunnel: {e}")),
        Err(_) => w
            .procs
            .fail("no VIN through the tunnel within the time limit"),
    }
}

/// The independent tester (python doipclient + udsoncan): VIN, DTCs, a 1 MiB download with
/// its CRC checked. Skips loudly without the interop Python (fails with it required).
async fn python_tester(w: &mut World, doip: SocketAddr) {
    let Some(py) = common::interop_python("cloud_driven_session") else {
        return;
    };
    let args = [
        doip.ip().to_string(),
        doip.port().to_string(),
        "0x1000".into(),
        DOWNLOAD.to_string(),
    ];
    let out = python(&mut w.procs, &py, "doip_sim_vehicle.py", &args).await;
    assert_eq!(value(&out, "UDS_VIN"), VIN, "{out}");
    let dtcs = value(&out, "DTCS");
    assert!(
        dtcs.starts_with("2 ") && dtcs.contains("030100:") && dtcs.contains("042000:"),
        "{dtcs}"
    );
    assert_eq!(
        value(&out, "DOWNLOADED"),
        format!("{DOWNLOAD} {}", DOWNLOAD.div_ceil(4093)),
        "{out}"
    );
    let local = value(&out, "LOCAL_CRC");
    assert_eq!(value(&out, "EXIT_CRC"), local, "{out}");
    assert_eq!(value(&out, "DONE"), "", "{out}");
}

async fn reload(w: &World) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_obdgw"))
        .args(["reload", "--socket", w.socket.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

async fn cloud_driven(bus: &str, can_only: bool) {
    let mut w = world(
        bus,
        Opts {
            can_only,
            ..Opts::default()
        },
    )
    .await;
    // Logged in and following the connector, with no ticket yet: healthy.
    let (v, _) = until(&mut w, "logged in, no ticket", READY, |v| {
        v["cloud"]["logged_in"] == true
            && v["cloud"]["status_socket"] == "up"
            && v["mode"] == "cloud-driven"
    })
    .await;
    assert!(v["ticket"].is_null() && v["session"].is_null(), "{v:#}");
    assert_eq!(v["can"][0]["state"], "open", "{v:#}");
    assert!(
        v["status_line"]
            .as_str()
            .unwrap()
            .contains("no active ticket"),
        "{v:#}"
    );

    // The garage creates a ticket; the back office joins: the daemon opens the session.
    let (ticket, session, token) = ticket_joined(&mut w, VIN).await;
    let (v, _) = until(&mut w, "the session", READY, |v| {
        v["session"]["id"] == session.as_str()
    })
    .await;
    assert_eq!(v["ticket"]["id"], ticket, "{v:#}");
    let (op, doip) = operator(&mut w, &session, &token).await;
    let (v, _) = until(&mut w, "the session up", READY, |v| {
        v["session"]["state"] == "up"
    })
    .await;
    assert_eq!(v["vin_check"]["result"], "match", "{v:#}");
    assert_eq!(v["vin_check"]["car_vin"], VIN, "{v:#}");
    read_vin(&mut w, doip).await;
    python_tester(&mut w, doip).await;

    // The status counts the traffic (within its 250 ms refresh), and the metrics tell the
    // same story.
    until(&mut w, "records counted", Duration::from_secs(5), |v| {
        v["session"]["records_sent"].as_u64() > Some(0)
            && v["session"]["bytes_received"].as_u64() > Some(0)
    })
    .await;
    let addr = v["metrics"]
        .as_str()
        .expect("the metrics address")
        .to_string();
    let http = obdgw::tls::http_client(Duration::from_secs(10)).unwrap();
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "obdgw_session_up 1",
        "obdgw_cloud_logged_in 1",
        "obdgw_ticket_active 1",
        "obdgw_sessions_opened_total 1",
        "obdgw_build_info{",
        "obdgw_can_up{interface=\"car\"} 1",
    ] {
        assert!(text.contains(line), "metrics lack `{line}`:\n{text}");
    }
    let sent = text
        .lines()
        .find_map(|l| l.strip_prefix("obdgw_session_sent_bytes_total "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(sent > 0, "{text}");
    let health = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    // Reload: a new log level applies live and the session is not cut; an invalid file is
    // refused with its problems and the running configuration stays.
    let before = status(&w).await.1;
    let text = w
        .config_text
        .replace("level = \"info\"", "level = \"debug\"");
    std::fs::write(&w.config, &text).unwrap();
    let (code, out, err) = reload(&w).await;
    assert_eq!(code, 0, "reload: {out}{err}");
    assert!(out.contains("applied: log.level"), "{out}");
    std::fs::write(
        &w.config,
        text.replace("[tunnel]", "[tunnel]\nbogus_key = 1"),
    )
    .unwrap();
    let (code, out, err) = reload(&w).await;
    assert_eq!(code, 1, "an invalid configuration is refused: {out}{err}");
    assert!(err.contains("bogus_key"), "the problem is named: {err}");
    read_vin(&mut w, doip).await;
    let after = status(&w).await.1;
    assert_eq!(after["session"]["state"], "up", "{after:#}");
    assert_eq!(
        after["session"]["reconnects"], before["session"]["reconnects"],
        "the reload cut the session: {after:#}"
    );
    assert_eq!(after["session"]["restarts"], 0, "{after:#}");

    // The ticket closes: the session is gone within 2 s, the operator is refused.
    admin(&mut w, &format!("/admin/tickets/{ticket}/close")).await;
    let (v, took) = until(
        &mut w,
        "no session after the close",
        Duration::from_secs(5),
        |v| v["session"].is_null() && v["ticket"].is_null(),
    )
    .await;
    assert!(
        took <= Duration::from_secs(2),
        "the session took {took:?} to close"
    );
    assert!(
        v["status_line"]
            .as_str()
            .unwrap()
            .contains("no active ticket"),
        "{v:#}"
    );
    let st = w.procs.exit(op, "after its ticket was closed").await;
    assert!(
        !st.success(),
        "the operator is refused once the ticket is closed"
    );
    // Stop the daemon: it exits 0 and removes its socket.
    let pid = w.procs.procs[w.daemon].child.id() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let d = w.daemon;
    let st = w.procs.exit(d, "after SIGTERM").await;
    assert!(st.success(), "obdgw run exits 0 on SIGTERM: {st}");
    assert!(!w.socket.exists(), "the control socket is removed");
    assert_eq!(status(&w).await.0, 3, "no daemon: exit 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_driven_session_for_a_doip_car() {
    let _turn = TURN.lock().await;
    cloud_driven("dc-doip", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_driven_session_for_a_can_only_car() {
    let _turn = TURN.lock().await;
    cloud_driven("dc-can", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_for_another_car_opens_no_session() {
    let _turn = TURN.lock().await;
    let mut w = world("dc-vin", Opts::default()).await;
    until(&mut w, "logged in", READY, |v| {
        v["cloud"]["logged_in"] == true
    })
    .await;
    let (_ticket, session, _token) = ticket_joined(&mut w, OTHER_VIN).await;
    let (v, _) = until(&mut w, "the session refused", READY, |v| {
        v["session"]["state"] == "refused"
    })
    .await;
    assert_eq!(v["session"]["id"], session.as_str(), "{v:#}");
    assert_eq!(v["vin_check"]["result"], "mismatch", "{v:#}");
    assert_eq!(v["vin_check"]["car_vin"], VIN, "{v:#}");
    assert_eq!(v["vin_check"]["ticket_vin"], OTHER_VIN, "{v:#}");
    let line = v["status_line"].as_str().unwrap();
    assert!(line.contains("VIN mismatch"), "{line}");
    // Never reached the relay.
    assert_eq!(v["session"]["records_sent"], 0, "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pincode_is_shown_and_retried_slowly() {
    let _turn = TURN.lock().await;
    let mut w = world(
        "dc-pin",
        Opts {
            pincode: Some("000000"),
            ..Opts::default()
        },
    )
    .await;
    let (v, _) = until(&mut w, "the login failure", READY, |v| {
        v["cloud"]["login_error"].is_string()
    })
    .await;
    assert_eq!(v["cloud"]["logged_in"], false, "{v:#}");
    let err = v["cloud"]["login_error"].as_str().unwrap();
    assert!(err.contains("refused"), "{err}");
    assert!(
        v["status_line"]
            .as_str()
            .unwrap()
            .starts_with("Logging in failed"),
        "{v:#}"
    );
    assert_eq!(status(&w).await.0, 1, "degraded: exit 1");
    // Backoff: in 8 more seconds, no second attempt (the first wait is 24-36 s).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let log = std::fs::read_to_string(&w.procs.procs[w.daemon].stderr).unwrap_or_default();
    let attempts = log.matches("logging in to the Customer API failed").count();
    assert_eq!(attempts, 1, "login retried too fast:\n{log}");
    assert!(
        log.contains("pincode is wrong"),
        "the log names the pincode:\n{log}"
    );
}

/// A session, joined and up, with the operator's DoIP entity.
async fn session_up(w: &mut World) -> (i64, String, usize, SocketAddr) {
    until(w, "logged in", READY, |v| {
        v["cloud"]["logged_in"] == true && v["cloud"]["status_socket"] == "up"
    })
    .await;
    let (ticket, session, token) = ticket_joined(w, VIN).await;
    let (op, doip) = operator(w, &session, &token).await;
    until(w, "the session up", READY, |v| {
        v["session"]["state"] == "up"
    })
    .await;
    (ticket, session, op, doip)
}

/// The python tester in the background (None without the interop Python).
fn python_in_background(w: &World, doip: SocketAddr) -> Option<tokio::task::JoinHandle<String>> {
    let py = common::interop_python("cloud_driven_faults")?;
    let args = [
        doip.ip().to_string(),
        doip.port().to_string(),
        "0x1000".into(),
        DOWNLOAD.to_string(),
    ];
    let _ = w;
    Some(tokio::spawn(async move {
        let out = tokio::process::Command::new(py)
            .arg(common::interop_script("doip_sim_vehicle.py"))
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .expect("running the python tester");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "python tester failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }))
}

fn check_download(out: &str) {
    assert_eq!(
        value(out, "DOWNLOADED"),
        format!("{DOWNLOAD} {}", DOWNLOAD.div_ceil(4093)),
        "{out}"
    );
    let local = value(out, "LOCAL_CRC");
    assert_eq!(value(out, "EXIT_CRC"), local, "{out}");
}

/// The daemon stopped and started again mid-ticket: the session is back within 3 s, the
/// tester's TCP connection to the operator's entity stays up and its next request works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_resumes_the_ticket_session_within_3_s() {
    use obdgw::vehicle::doip::{Connection, DoipClientConfig};
    let _turn = TURN.lock().await;
    let mut w = world("dc-restart", Opts::default()).await;
    let (_ticket, session, _op, doip) = session_up(&mut w).await;
    let cfg = DoipClientConfig {
        response_timeout_ms: 10_000,
        ..DoipClientConfig::default()
    };
    let conn = match Connection::open(doip, cfg).await {
        Ok(c) => c,
        Err(e) => w.procs.fail(&format!("tester connection: {e}")),
    };
    let vin_req = || bytes::Bytes::from_static(&[0x22, 0xF1, 0x90]);
    let expect = [&[0x62, 0xF1, 0x90][..], VIN.as_bytes()].concat();
    match conn.request(0x1000, vin_req()).await {
        Ok(r) => assert_eq!(&r[..], expect),
        Err(e) => w.procs.fail(&format!("VIN before the restart: {e}")),
    }
    let pid = w.procs.procs[w.daemon].child.id() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let d = w.daemon;
    let st = w.procs.exit(d, "after SIGTERM").await;
    assert!(st.success(), "{st}");
    let config = w.config.to_str().unwrap().to_string();
    let t0 = tokio::time::Instant::now();
    w.daemon = w
        .procs
        .spawn("run (again)", &["run", "--config", &config], &[]);
    let (v, _) = until(&mut w, "the session up again", READY, |v| {
        v["session"]["state"] == "up" && v["session"]["id"] == session.as_str()
    })
    .await;
    let took = t0.elapsed();
    assert!(took <= Duration::from_secs(3), "back after {took:?}: {v:#}");
    assert!(
        !conn.is_closed(),
        "the tester's connection to the operator dropped"
    );
    match tokio::time::timeout(READY, conn.request(0x1000, vin_req())).await {
        Ok(Ok(r)) => assert_eq!(&r[..], expect),
        other => w.procs.fail(&format!("VIN after the restart: {other:?}")),
    }
}

/// 2 s tokens and three killed websockets during one session: every reconnect presents a
/// fresh token (an expired one is refused at the hello, which would restart the session and
/// lose its stream), and the download is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_tokens_and_killed_websockets_lose_nothing() {
    let _turn = TURN.lock().await;
    let mut w = world(
        "dc-tokens",
        Opts {
            token_ttl_s: Some(2),
            wan: true,
            ..Opts::default()
        },
    )
    .await;
    let (_ticket, _session, _op, doip) = session_up(&mut w).await;
    let tester = python_in_background(&w, doip);
    for kill in 1..=3u64 {
        // Older than the token's lifetime: a reconnect with the first token would fail.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        w.wan.as_ref().unwrap().cut();
        until(&mut w, "the session resumed", READY, |v| {
            v["session"]["state"] == "up" && v["session"]["reconnects"].as_u64() >= Some(kill)
        })
        .await;
        read_vin(&mut w, doip).await;
    }
    if let Some(t) = tester {
        match tokio::time::timeout(common::procs::CLIENT, t).await {
            Ok(Ok(out)) => check_download(&out),
            other => w.procs.fail(&format!("python tester: {other:?}")),
        }
    }
    let v = status(&w).await.1;
    assert_eq!(
        v["session"]["restarts"], 0,
        "a reconnect was refused: {v:#}"
    );
    assert!(v["session"]["reconnects"].as_u64() >= Some(3), "{v:#}");
}

/// The cloud (API and status websocket) down for 30 s while a download runs: the session
/// is not touched, the download completes, and the daemon reconnects afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_s_cloud_outage_leaves_the_session_alone() {
    let _turn = TURN.lock().await;
    let mut w = world("dc-outage", Opts::default()).await;
    let (_ticket, session, _op, doip) = session_up(&mut w).await;
    let tester = python_in_background(&w, doip);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let http = obdgw::tls::http_client(Duration::from_secs(10)).unwrap();
    let fault = serde_json::json!({"status": 503, "count": 1_000_000, "path_prefix": "/v1"});
    let r = http
        .post(format!("{}/admin/faults", w.base_url))
        .json(&fault)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{r:?}");
    let outage = tokio::time::Instant::now();
    admin(&mut w, "/admin/websockets/drop").await;
    until(&mut w, "the status socket down", READY, |v| {
        v["cloud"]["status_socket"] == "down"
    })
    .await;
    if let Some(t) = tester {
        match tokio::time::timeout(common::procs::CLIENT, t).await {
            Ok(Ok(out)) => check_download(&out),
            other => w.procs.fail(&format!("python tester: {other:?}")),
        }
    }
    while outage.elapsed() < Duration::from_secs(30) {
        let v = status(&w).await.1;
        assert_eq!(v["session"]["id"], session.as_str(), "{v:#}");
        assert_eq!(v["session"]["restarts"], 0, "{v:#}");
        assert_eq!(v["cloud"]["status_socket"], "down", "{v:#}");
        read_vin(&mut w, doip).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let r = http
        .delete(format!("{}/admin/faults", w.base_url))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{r:?}");
    let (v, _) = until(&mut w, "the status socket up again", READY, |v| {
        v["cloud"]["status_socket"] == "up"
    })
    .await;
    assert_eq!(v["session"]["state"], "up", "{v:#}");
    assert_eq!(v["session"]["restarts"], 0, "{v:#}");
    read_vin(&mut w, doip).await;
}
