//! `obdgw demo`: the product path on the built-in simulators, in one process.
//!
//! Owns: wiring the cloud simulator (the Customer API, its status websocket and its relay)
//! on loopback, a simulated CAN-only car (the standard vehicle's four ECUs on a `sim:` CAN
//! bus), **the daemon's own [`crate::daemon::run`]** in cloud-driven mode with a generated
//! configuration (it logs in, follows the connector, checks the car's VIN and opens the
//! session by itself), the garage's and the back office's part (a ticket created through the
//! API and joined by an operator), and the operator endpoint whose local DoIP entity and
//! socketcand server a tester uses as if the car were on the desk. It prints the story as it
//! happens and where a tester connects; `obdgw status --socket PATH` reads its daemon.
//!
//! Does not own: any of those parts (it only starts them).

use crate::config::{Config, Secret};
use crate::daemon::control::{self, Command};
use crate::operator::tunnel::{DiagTiming, DoipServe, start};
use crate::sim::cloud::{DEMO_CONNECTOR_UUID, DEMO_PINCODE};
use crate::sim::ecu::{DEFAULT_VIN, Vehicle};
use crate::sim::vehicle::{CanEcus, SimVehicle};
use crate::tunnel::client::ClientConfig;
use crate::tunnel::gateway::{DoipMapEntry, TunnelConfig, VinCheck};
use crate::vehicle::can::CanInterfaceConfig;
use crate::vehicle::doip::entity::EntityConfig;
use crate::vehicle::uds::Vin;
use crate::wire::tunnel::Token;
use anyhow::Context;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

/// How long each step of the story may take before the demo gives up.
const STEP: Duration = Duration::from_secs(30);

/// The gateway's address map for a simulated car on `interface`: each ECU at the DoIP
/// address the simulator gives it, over ISO-TP on its request and response ids.
pub fn doip_map(vehicle: &Vehicle, interface: &str) -> Vec<DoipMapEntry> {
    vehicle
        .ecus()
        .iter()
        .map(|e| DoipMapEntry {
            address: e.address.doip,
            interface: interface.into(),
            tx_id: e.address.can_request.id(),
            rx_id: e.address.can_response.id(),
            extended_ids: e.address.can_request.is_extended(),
            fd: false,
            padding: Some(0xCC),
            bs: 0,
            stmin_us: 0,
        })
        .collect()
}

/// `obdgw demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Where the operator's DoIP entity listens (TCP and UDP) for your DoIP tester.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:13400")]
    pub doip_listen: SocketAddr,
    /// Where the operator's socketcand server listens (bus `can0`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:29536")]
    pub socketcand_listen: SocketAddr,
    /// VIN of the simulated car.
    #[arg(long, value_name = "VIN")]
    pub vin: Option<String>,
}

/// Run `obdgw demo` until Ctrl-C or SIGTERM.
pub fn run_demo(args: DemoArgs) -> ExitCode {
    match run_inner(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("obdgw demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner(args: DemoArgs) -> anyhow::Result<()> {
    let (_, warning) = crate::logging::init(&crate::config::LogConfig::default());
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    let vin = match &args.vin {
        Some(v) => Vin::parse(v).with_context(|| format!("--vin {v:?}"))?,
        None => DEFAULT_VIN,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let dir = std::env::temp_dir().join(format!("obdgw-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let r = rt.block_on(demo(args, vin, &dir));
    rt.shutdown_timeout(Duration::from_millis(200));
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// The daemon's configuration for the demo: cloud-driven, the simulator's demo connector,
/// the car's bus, the address map of its ECUs.
fn daemon_config(
    dir: &Path,
    base_url: &str,
    relay_url: &str,
    bus: &str,
    map: Vec<DoipMapEntry>,
) -> Config {
    let mut c = Config::default();
    c.log.level = "warn".into();
    c.daemon.state_dir = dir.join("state");
    c.daemon.control_socket = dir.join("control.sock");
    c.cloud.base_url = base_url.into();
    c.cloud.connector_uuid = Some(DEMO_CONNECTOR_UUID.into());
    c.cloud.pincode = Some(Secret::new(DEMO_PINCODE));
    c.can = vec![CanInterfaceConfig::new("car", bus)];
    // The car's ECUs answer on ids beyond the OBD-II defaults (the body ECU at 0x740): a
    // garage lists its car's request ids, as here.
    let mut policy = crate::tunnel::policy::PolicyConfig::default();
    for m in &map {
        let allowed = crate::tunnel::policy::Policy::new(policy.clone())
            .check_diag(m.tx_id, m.extended_ids)
            .is_ok();
        if !allowed {
            policy.diag_ids.push(format!("0x{:03X}", m.tx_id));
        }
    }
    c.tunnel = Some(TunnelConfig {
        relay_url: relay_url.into(),
        session: None,
        token: None,
        vin_check: VinCheck::Refuse,
        doip_vehicle: None,
        can_interfaces: vec!["car".into()],
        policy,
        doip_map: map,
        keepalive_every_ms: 2_000,
        keepalive_for_ms: 60_000,
    });
    c
}

/// Poll the daemon's status until `pred` holds.
async fn until_status(
    socket: &Path,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + STEP;
    let mut last = Value::Null;
    while tokio::time::Instant::now() < deadline {
        if let Ok(r) = control::call(socket, Command::Status, Duration::from_secs(2)).await
            && let Some(s) = r.status
        {
            let v = serde_json::to_value(&s).unwrap_or(Value::Null);
            if pred(&v) {
                return Ok(v);
            }
            last = v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "the daemon did not reach `{what}` within {STEP:?}; its status: {}",
        last.get("status_line")
            .and_then(Value::as_str)
            .unwrap_or("(none)")
    )
}

async fn demo(args: DemoArgs, vin: Vin, dir: &Path) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let vin_text = std::str::from_utf8(vin.as_bytes())
        .unwrap_or("?")
        .to_string();

    // 1. The vendor cloud: API, status websocket and relay, on loopback.
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the cloud simulator")?;
    let base_url = format!("http://{}", listener.local_addr()?);
    let sim = crate::sim::cloud::Shared::new(
        crate::sim::cloud::load_data(None, None).map_err(anyhow::Error::msg)?,
        crate::sim::cloud::SimOptions::default(),
    );
    let (relay_url, _relay) =
        crate::sim::cloud::relay::start("127.0.0.1:0".parse()?, None, sim.clone(), stop.clone())
            .await
            .context("starting the simulator's relay")?;
    {
        let (sim, stop) = (sim.clone(), stop.clone());
        tokio::spawn(async move { crate::sim::cloud::serve(listener, sim, stop).await });
    }
    println!("obdgw demo: cloud simulator on {base_url}, relay {relay_url}");

    // 2. The car: four ECUs on a CAN bus of their own, channels open before anything runs.
    let bus = format!("sim:obdgw-demo-{}", std::process::id());
    let vehicle = Vehicle::standard(vin, std::time::Instant::now());
    let map = doip_map(&vehicle, "car");
    let car = SimVehicle::new(vehicle);
    tokio::spawn(car.clone().run_timers(stop.clone()));
    let port = crate::vehicle::can::open_port(&bus)
        .await
        .with_context(|| format!("opening the car's bus {bus}"))?;
    let ecus = CanEcus::open(car.clone(), Arc::new(port))
        .map_err(|e| anyhow::anyhow!("opening the simulated ECUs' ISO-TP channels: {e}"))?;
    {
        let s = stop.clone();
        tokio::spawn(async move { ecus.serve(s).await });
    }
    println!("obdgw demo: simulated car {vin_text}: 4 ECUs on CAN bus {bus}");

    // 3. The daemon, exactly as `obdgw run` runs it, in cloud-driven mode.
    let config = daemon_config(dir, &base_url, &relay_url, &bus, map.clone());
    let issues = crate::config::validate(&config);
    if !issues.is_empty() {
        anyhow::bail!("the demo's daemon configuration is invalid: {issues:?}");
    }
    let socket: PathBuf = config.daemon.control_socket.clone();
    let daemon = {
        let s = stop.clone();
        tokio::spawn(async move {
            crate::daemon::run(config, crate::daemon::RunOptions::new(None), s).await
        })
    };
    until_status(&socket, "logged in", |v| v["cloud"]["logged_in"] == true).await?;
    println!(
        "obdgw demo: daemon logged in as connector {DEMO_CONNECTOR_UUID}; try `obdgw status --socket {}`",
        socket.display()
    );

    // 4. The garage creates a ticket for the car; the back office has an operator join it.
    let api = crate::sim::cloud::demo_client(&base_url)?;
    let ticket = api
        .create_ticket(&crate::sim::cloud::demo_ticket(&vin_text))
        .await
        .context("creating the demo ticket")?;
    println!("obdgw demo: ticket {} created for {vin_text}", ticket.id);
    let http = crate::tls::http_client(Duration::from_secs(10)).map_err(anyhow::Error::msg)?;
    let (session, token) = crate::sim::cloud::admin_join(&http, &base_url, ticket.id)
        .await
        .map_err(anyhow::Error::msg)
        .context("joining the ticket")?;
    println!("obdgw demo: operator joined: session {session}");

    // 5. The operator endpoint on the addresses a tester uses.
    let dl = TcpListener::bind(args.doip_listen).await.with_context(|| {
        format!(
            "binding the DoIP entity on {}; choose another --doip-listen",
            args.doip_listen
        )
    })?;
    let du = UdpSocket::bind(dl.local_addr()?).await.with_context(|| {
        format!(
            "binding DoIP UDP on {}",
            dl.local_addr().unwrap_or(args.doip_listen)
        )
    })?;
    let cl = TcpListener::bind(args.socketcand_listen)
        .await
        .with_context(|| {
            format!(
                "binding the socketcand server on {}; choose another --socketcand-listen",
                args.socketcand_listen
            )
        })?;
    let entity = EntityConfig {
        vin: *vin.as_bytes(),
        targets: map.iter().map(|e| e.address).collect(),
        announce_to: None,
        ..EntityConfig::default()
    };
    let served = start(
        ClientConfig::new(relay_url.clone()),
        &session,
        Token(token),
        Some(DoipServe {
            listener: dl,
            udp: Some(du),
            config: entity,
            fetch_vin: true,
        }),
        Some((cl, vec!["car".into()])),
        DiagTiming::default(),
        stop.clone(),
    )
    .await?;
    tokio::time::timeout(STEP, served.remote.wait_up())
        .await
        .map_err(|_| anyhow::anyhow!("the operator did not reach the gateway within {STEP:?}"))?;
    let v = until_status(&socket, "session up", |v| v["session"]["state"] == "up").await?;
    println!(
        "obdgw demo: session up ({}; VIN check: {})",
        v["status_line"].as_str().unwrap_or(""),
        v["vin_check"]["result"].as_str().unwrap_or("-")
    );
    let doip = served.doip.unwrap_or(args.doip_listen);
    let cand = served.socketcand.unwrap_or(args.socketcand_listen);
    let targets: Vec<String> = map.iter().map(|e| format!("0x{:04X}", e.address)).collect();
    println!(
        "  DoIP entity on {doip} (TCP+UDP), ECUs {}: try `obdgw vin --doip {doip}`",
        targets.join(" ")
    );
    println!("  socketcand on {cand}, bus car");
    println!("obdgw demo: ready (Ctrl-C stops)");

    let (s2, _) = (stop.clone(), ());
    let signals = crate::daemon::spawn_signal_handler(s2, None)?;
    tokio::select! {
        _ = served.done => {}
        _ = stop.cancelled() => {}
    }
    stop.cancel();
    signals.abort();
    match tokio::time::timeout(Duration::from_secs(5), daemon).await {
        Ok(Ok(Err(e))) => Err(e.context("the demo's daemon")),
        _ => Ok(()),
    }
}
