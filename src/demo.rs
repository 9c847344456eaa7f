//! `obdgw demo`: the main job on the built-in simulators, in one process.
//!
//! Owns: wiring a simulated CAN-only car (the standard vehicle's four ECUs on an in-process
//! virtual bus), the gateway side (`tunnel::gateway`, the ECUs reached through its
//! DoIP-to-ISO-TP address map and its raw mirror), a relay on loopback, and the operator
//! endpoint (`operator::tunnel`) whose local DoIP entity and socketcand server a tester uses
//! as if the car were on the desk.
//!
//! Does not own: any of those parts (it only starts them) or the vendor cloud (`obdgw sim
//! cloud` with `--relay-listen` runs the same path as separate processes, see README).

use crate::operator::tunnel::{DiagTiming, DoipServe, start};
use crate::relay::{RelayConfig, SessionTokens, StaticTokens};
use crate::sim::ecu::{DEFAULT_VIN, Vehicle};
use crate::sim::vehicle::{CanEcus, SimVehicle};
use crate::tunnel::client::ClientConfig;
use crate::tunnel::gateway::{self, DoipMapEntry, Gateway};
use crate::vehicle::can::vbus::{PortOptions, VirtualBus};
use crate::vehicle::doip::entity::EntityConfig;
use crate::vehicle::uds::Vin;
use crate::wire::tunnel::Token;
use anyhow::Context;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

/// The demo's session id and tokens (loopback only).
const SESSION: &str = "00000000-0000-4000-8000-00000000d3e0";

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
    rt.block_on(demo(args, vin))
}

async fn demo(args: DemoArgs, vin: Vin) -> anyhow::Result<()> {
    let stop = CancellationToken::new();

    // The relay, on loopback.
    let rl = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the relay")?;
    let relay = rl.local_addr()?;
    let tokens = Arc::new(StaticTokens::new([SessionTokens {
        id: SESSION.into(),
        gateway_token: "demo-gateway".into(),
        operator_token: "demo-operator".into(),
    }]));
    tokio::spawn(crate::relay::run(
        rl,
        None,
        tokens,
        RelayConfig::default(),
        stop.clone(),
    ));
    let url = format!("ws://{relay}/");

    // The car: the standard vehicle's ECUs on a CAN bus, channels open before anything runs.
    let bus = VirtualBus::new("can0");
    // A virtual bus has no bit rate: room for a whole ISO-TP block per port.
    let roomy = || PortOptions {
        rx_capacity: 8192,
        loopback: false,
    };
    let vehicle = Vehicle::standard(vin, std::time::Instant::now());
    let map = doip_map(&vehicle, "can0");
    let sim = SimVehicle::new(vehicle);
    tokio::spawn(sim.clone().run_timers(stop.clone()));
    let ecus = CanEcus::open(sim.clone(), Arc::new(bus.port_with(roomy())))
        .map_err(|e| anyhow::anyhow!("opening the simulated ECUs' ISO-TP channels: {e}"))?;
    let s = stop.clone();
    tokio::spawn(async move { ecus.serve(s).await });

    // The gateway side: the ECUs as DoIP addresses through the address map.
    let mut gw = Gateway::new(
        None,
        vec![("can0".into(), Arc::new(bus.port_with(roomy())))],
        true,
    );
    for entry in &map {
        gw.doip_map
            .push(entry.resolve().map_err(|e| anyhow::anyhow!(e))?);
    }
    let s = stop.clone();
    let gurl = url.clone();
    tokio::spawn(async move {
        if let Err(e) = gateway::run(
            ClientConfig::new(gurl),
            SESSION,
            &crate::config::Secret::new("demo-gateway"),
            gw,
            s,
        )
        .await
        {
            tracing::error!("demo gateway side stopped: {e}");
        }
    });

    // The operator endpoint on the addresses a tester uses.
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
    let config = EntityConfig {
        vin: *vin.as_bytes(),
        targets: map.iter().map(|e| e.address).collect(),
        announce_to: None,
        ..EntityConfig::default()
    };
    let served = start(
        ClientConfig::new(url.clone()),
        SESSION,
        Token("demo-operator".into()),
        Some(DoipServe {
            listener: dl,
            udp: Some(du),
            config,
            fetch_vin: true,
        }),
        Some((cl, vec!["can0".into()])),
        DiagTiming::default(),
        stop.clone(),
    )
    .await?;
    tokio::time::timeout(Duration::from_secs(30), served.remote.wait_up())
        .await
        .map_err(|_| anyhow::anyhow!("the operator did not reach the gateway within 30 s"))?;
    let doip = served.doip.unwrap_or(args.doip_listen);
    let cand = served.socketcand.unwrap_or(args.socketcand_listen);
    println!(
        "obdgw demo: simulated car {} (4 ECUs on CAN) -> gateway -> tunnel (relay {url}) -> operator",
        std::str::from_utf8(vin.as_bytes()).unwrap_or("?")
    );
    let targets: Vec<String> = map.iter().map(|e| format!("0x{:04X}", e.address)).collect();
    println!(
        "  DoIP entity on {doip} (TCP+UDP), ECUs {}: try `obdgw vin --doip {doip}`",
        targets.join(" ")
    );
    println!("  socketcand on {cand}, bus can0");
    println!("obdgw demo: ready (Ctrl-C stops)");

    let s2 = stop.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        s2.cancel();
    });
    let _ = served.done.await;
    stop.cancel();
    Ok(())
}
