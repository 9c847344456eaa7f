//! The whole remote-diagnostics path as separate processes of the real binary, on loopback
//! with ephemeral ports:
//!
//! ```text
//! python tester ─▶ obdgw operator ─▶ obdgw sim cloud ◀─ obdgw run ─▶ obdgw sim vehicle
//!                  (DoIP entity,      (API + relay)     ([tunnel])    (DoIP + sim:NAME bus)
//!                   socketcand)
//! ```
//!
//! The test logs the demo connector in (its login token is the gateway's relay token),
//! creates a ticket, has an operator join it through the simulator's admin interface (the
//! connection UUID is the session, the admin answer carries the operator's session token),
//! then starts the car, the gateway daemon and the operator endpoint, and drives them with
//! independent clients: python-doipclient + udsoncan (VIN, DTCs, 1 MiB download with its
//! CRC-32) and python-can's socketcand interface (frames of the car's bus, an OBD-II VIN
//! request answered by the simulated car, frames onto the bus). Finally the ticket is
//! closed: the relay ends the session and the operator endpoint, refused on reconnect, exits.
//!
//! Readiness comes from the processes' stdout lines (no sleeps); every failure message
//! carries the children's stdout and stderr. The python parts need `TEST_OBDGW_PYTHON`
//! (they skip loudly without it, and fail without it when `TEST_OBDGW_REQUIRE_INTEROP=1`);
//! the path itself is also checked without python (a VIN read through the operator's DoIP
//! entity with obdgw's own DoIP client).

mod common;

use common::procs::{
    CLIENT, Procs, READY, addr_after, join_ticket, python, start_car, start_cloud, value,
};

use obdgw::router::frame::{CanFrame, CanId};
use obdgw::vehicle::can::simbus::{SimBusOptions, SimPort};
use obdgw::vehicle::can::{CanAnyFrame, CanPort};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

const DOWNLOAD: usize = 1 << 20;
const VIN: &str = "WVWZZZ1KZAW000042";

/// The tests of this file take turns: each starts four obdgw processes and a python client,
/// too much side by side on a 2-core machine.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Everything running, and where to reach it.
struct World {
    procs: Procs,
    /// The car's bus name (`sim:BUS`).
    bus: String,
    /// The operator's DoIP entity (TCP and UDP).
    doip: SocketAddr,
    /// The operator's socketcand server.
    socketcand: SocketAddr,
    /// The cloud simulator's base URL and the ticket whose connection is the session.
    base_url: String,
    ticket: i64,
    /// Index of the operator process in `procs`.
    operator: usize,
}

/// Start the four processes for a test; `bus` names the car's `sim:` bus.
async fn world(bus: &str) -> World {
    world_of(bus, false).await
}

/// Start the four processes; with `can_only` the car has no DoIP entity and the gateway
/// reaches its ECUs through `[[tunnel.doip_map]]` (ISO-TP on the `sim:` bus).
async fn world_of(bus: &str, can_only: bool) -> World {
    let mut procs = Procs::new();

    // 1. The cloud simulator with its relay.
    let (cloud, base_url, relay_url) = start_cloud(&mut procs, &[]).await;

    // 2. A ticket of the demo connector, joined by an operator: a connection = a session.
    let (ticket, session, gateway_token, operator_token) =
        join_ticket(&mut procs, &base_url, VIN).await;
    // The simulator also prints the connection for people.
    let printed = procs
        .line(cloud, "the new connection", |l| {
            l.starts_with("connection ").then(|| l.to_string())
        })
        .await;
    assert!(
        printed.contains(&format!("session={session}"))
            && printed.contains(&format!("operator_token={operator_token}"))
            && printed.contains(&format!("relay={relay_url}")),
        "{printed}"
    );

    // 3. The car: DoIP (unless CAN-only) and its CAN bus.
    let bus_spec = format!("sim:{bus}");
    let vehicle_side = start_car(&mut procs, bus, VIN, can_only).await;

    // 4. The gateway daemon with a [tunnel] section.
    let config = procs.path("gateway.toml");
    let text = format!(
        r#"[log]
level = "info,obdgw::tunnel=debug"
format = "text"

[daemon]
state_dir = "{state_dir}"
control_socket = "{socket}"

[[can]]
name = "car"
interface = "{bus_spec}"

[tunnel]
relay_url = "{relay_url}"
session = "{session}"
token = "{gateway_token}"
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
        socket = procs.path("control.sock").display(),
    );
    std::fs::write(&config, text).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_obdgw"))
        .args(["config", "check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let check_out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "obdgw config check refused the gateway's configuration:\n{check_out}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        !check_out.contains(&gateway_token),
        "config check printed the tunnel token"
    );
    procs.spawn("run", &["run", "--config", config.to_str().unwrap()], &[]);

    // 5. The operator endpoint (its token from the environment, not the command line).
    let op = procs.spawn(
        "operator",
        &[
            "operator",
            "--relay",
            &relay_url,
            "--session",
            &session,
            "--doip-listen",
            "127.0.0.1:0",
            "--socketcand-listen",
            "127.0.0.1:0",
            "--bus",
            "car",
        ],
        &[("OBDGW_OPERATOR_TOKEN", &operator_token)],
    );
    let doip = procs
        .line(op, "its DoIP entity address", |l| {
            addr_after(l, "DoIP entity on ")
        })
        .await;
    let socketcand = procs
        .line(op, "its socketcand address", |l| {
            addr_after(l, "socketcand on ")
        })
        .await;
    World {
        procs,
        bus: bus.to_string(),
        doip,
        socketcand,
        base_url,
        ticket,
        operator: op,
    }
}

/// Read the VIN through the operator's DoIP entity with obdgw's own DoIP client.
async fn read_vin(w: &mut World) {
    use obdgw::vehicle::doip::{DoipClient, DoipClientConfig};
    // P2 10 s: the first request also opens the tunnel's DoIP channel (a loaded machine).
    let cfg = DoipClientConfig {
        response_timeout_ms: 10_000,
        ..DoipClientConfig::default()
    };
    let mut client = DoipClient::new(w.doip, cfg);
    let r = client.request(0x1000, bytes::Bytes::from_static(&[0x22, 0xF1, 0x90]));
    match tokio::time::timeout(READY, r).await {
        Ok(Ok(resp)) => assert_eq!(
            &resp[..],
            [&[0x62, 0xF1, 0x90][..], VIN.as_bytes()].concat(),
            "VIN answer through the tunnel"
        ),
        Ok(Err(e)) => w.procs.fail(&format!(
            "reading the VIN through the operator's DoIP entity: {e}"
        )),
        Err(_) => w
            .procs
            .fail("no VIN through the operator's DoIP entity within the time limit"),
    }
}

/// Close the ticket in the simulator: the relay ends the session, the operator endpoint's
/// reconnect is refused (`auth_failed`, as for any unknown session) and it exits.
async fn close_ticket_ends_the_session(w: &mut World) {
    let http = obdgw::tls::http_client(Duration::from_secs(10)).unwrap();
    let url = format!("{}/admin/tickets/{}/close", w.base_url, w.ticket);
    match http.post(&url).send().await {
        Ok(r) if r.status().is_success() => {}
        other => w.procs.fail(&format!("POST {url}: {other:?}")),
    }
    // The simulator answers after it has ended the relay session (and logged it).
    // The simulator is the first process `world` starts.
    let cloud = std::fs::read_to_string(&w.procs.procs[0].stderr).unwrap_or_default();
    assert!(
        cloud.contains("relay session ended"),
        "the simulator did not end the relay session:\n{cloud}"
    );
    let op = w.operator;
    let status = w.procs.exit(op, "after its ticket was closed").await;
    let stderr = std::fs::read_to_string(&w.procs.procs[op].stderr).unwrap_or_default();
    assert!(
        stderr.contains("auth_failed (102)"),
        "the operator should report its refused reconnect ({status}):\n{stderr}"
    );
    assert!(
        !status.success(),
        "a session refused for good is a failure of `obdgw operator` ({status})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doip_tester_reads_vin_dtcs_and_downloads_1mib_across_four_processes() {
    let _turn = TURN.lock().await;
    doip_tester_across_four_processes("procs-doip", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doip_tester_reaches_a_can_only_car_through_the_address_map_across_four_processes() {
    let _turn = TURN.lock().await;
    doip_tester_across_four_processes("procs-canonly", true).await;
}

/// VIN, DTCs and a 1 MiB download by an independent DoIP tester at the operator's entity.
async fn doip_tester_across_four_processes(bus: &str, can_only: bool) {
    let mut w = world_of(bus, can_only).await;
    read_vin(&mut w).await;
    let Some(py) = common::interop_python(
        "doip_tester_reads_vin_dtcs_and_downloads_1mib_across_four_processes",
    ) else {
        close_ticket_ends_the_session(&mut w).await;
        return;
    };
    let args = [
        w.doip.ip().to_string(),
        w.doip.port().to_string(),
        "0x1000".into(),
        DOWNLOAD.to_string(),
    ];
    let out = python(&mut w.procs, &py, "doip_sim_vehicle.py", &args).await;
    // The operator's entity announces the remote car's VIN (fetched through the tunnel).
    assert_eq!(value(&out, "ANNOUNCED_VIN"), VIN, "{out}");
    assert_eq!(value(&out, "UDS_VIN"), VIN, "{out}");
    // The engine's two stored DTCs (P0301, P0420), status mask 0xFF.
    let dtcs = value(&out, "DTCS");
    assert!(
        dtcs.starts_with("2 ") && dtcs.contains("030100:") && dtcs.contains("042000:"),
        "{dtcs}"
    );
    assert_eq!(value(&out, "ERASED"), "True", "{out}");
    assert_eq!(
        value(&out, "DOWNLOADED"),
        format!("{DOWNLOAD} {}", DOWNLOAD.div_ceil(4093)),
        "{out}"
    );
    // RequestTransferExit answers the CRC-32 of what the ECU received: the bytes sent.
    let local = value(&out, "LOCAL_CRC");
    assert_eq!(value(&out, "EXIT_CRC"), local, "{out}");
    assert_eq!(value(&out, "CHECK"), format!("01020200{local}"), "{out}");
    assert_eq!(value(&out, "DONE"), "", "{out}");
    close_ticket_ends_the_session(&mut w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketcand_client_sees_the_remote_bus_and_reaches_the_simulated_car() {
    let _turn = TURN.lock().await;
    let mut w = world("procs-cand").await;
    let Some(py) = common::interop_python(
        "socketcand_client_sees_the_remote_bus_and_reaches_the_simulated_car",
    ) else {
        read_vin(&mut w).await;
        return;
    };
    // A node of the car's bus in this process: plays frames, counts what arrives.
    let node = SimPort::open(
        &w.bus,
        SimBusOptions {
            dir: Some(w.procs.sim_dir()),
            ..SimBusOptions::default()
        },
    )
    .await
    .unwrap();
    const N_RECV: u32 = 200;
    const N_SEND: u32 = 100;
    let mut child = tokio::process::Command::new(&py)
        .arg(common::interop_script("socketcand_sim_vehicle.py"))
        .args([
            w.socketcand.ip().to_string(),
            w.socketcand.port().to_string(),
            "car".into(),
            N_RECV.to_string(),
            N_SEND.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let mut stdout = String::new();
    // Probe frames until the client reports that frames reach it (the mirror channel is
    // open end to end); a probe every 50 ms is the pace, not a synchronisation.
    let probe = CanFrame::new(CanId::standard(0x0AA).unwrap(), &[0]).unwrap();
    let ready = tokio::time::timeout(READY, async {
        loop {
            node.send(CanAnyFrame::Classic(probe)).await.unwrap();
            match tokio::time::timeout(Duration::from_millis(50), lines.next_line()).await {
                Ok(Ok(Some(l))) if l.trim() == "READY" => return true,
                Ok(Ok(Some(l))) => stdout.push_str(&format!("{l}\n")),
                Ok(Ok(None)) | Ok(Err(_)) => return false,
                Err(_) => {}
            }
        }
    })
    .await;
    if ready != Ok(true) {
        let out = child.wait_with_output().await.unwrap();
        w.procs.fail(&format!(
            "python-can never received a frame of the car's bus\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    for i in 0..N_RECV {
        let id = 0x100 + (i % 0x100) as u16;
        let f = CanFrame::new(CanId::standard(id).unwrap(), &[i as u8, 0xAA]).unwrap();
        node.send(CanAnyFrame::Classic(f)).await.unwrap();
    }
    // The frames python-can sends arrive on the bus, in order; the OBD-II request and the
    // flow control it sends to the car pass by too.
    let mut seen_request = false;
    let mut i = 0u32;
    let counted = tokio::time::timeout(CLIENT, async {
        while i < N_SEND {
            let Ok(f) = node.recv().await else { break };
            if f.id() == CanId::standard(0x7DF).unwrap()
                && f.data().starts_with(&[0x02, 0x09, 0x02])
            {
                seen_request = true;
            }
            if f.id() != CanId::standard(0x321).unwrap() {
                continue;
            }
            assert_eq!(f.data(), &[i as u8, 0x55], "frame {i} from python-can");
            i += 1;
        }
    })
    .await;
    while let Ok(Some(l)) = lines.next_line().await {
        stdout.push_str(&format!("{l}\n"));
    }
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if counted.is_err() || !out.status.success() {
        w.procs.fail(&format!(
            "python-can socketcand client ({}); frames from it counted on the bus: {i}/{N_SEND}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        ));
    }
    assert_eq!(value(&stdout, "RECEIVED"), N_RECV.to_string(), "{stdout}");
    // The simulated car answered the request python-can put on its bus.
    assert_eq!(value(&stdout, "OBD_VIN"), VIN, "{stdout}");
    assert!(
        seen_request,
        "the OBD-II request never appeared on the car's bus"
    );
    assert_eq!(i, N_SEND);
}
