//! The simulator's CAN transport: in process over a `VirtualBus` (VIN by OBD-II functional
//! request, functional fan-out, a 1 MiB flash through ISO-TP with the CRC-32 checked), and
//! against `obdgw sim vehicle --can sim:NAME` in another process: `obdgw vin --can sim:car`,
//! and the same VIN/fan-out/1 MiB flash from this test process.

// The TURN guard is held across awaits on purpose: it serialises whole tests.
#![allow(clippy::await_holding_lock)]

use bytes::Bytes;
use obdgw::router::frame::CanId;
use obdgw::sim::ecu::{DEFAULT_VIN, EcuIndex, Vehicle, crc32, default_key};
use obdgw::sim::vehicle::{CanEcus, SimVehicle};
use obdgw::vehicle::can::CanPort;
use obdgw::vehicle::can::simbus::{SimBusOptions, SimPort};
use obdgw::vehicle::can::vbus::VirtualBus;
use obdgw::vehicle::isotp::{IsoTpConfig, IsoTpHandle, IsoTpMux};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The tests of this file take turns: each runs a 1 MiB ISO-TP transfer or spawns the
/// simulator, and side by side on a 2-core CI machine they only compete for the CPU.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn id(raw: u16) -> CanId {
    CanId::from_raw(u32::from(raw))
}

/// What a failure message says besides the step: the ports' counters and whatever else the
/// test can see, so a failure on a loaded CI machine can be diagnosed from its output.
type Diag<'a> = &'a (dyn Fn() -> String + Sync);

/// The step `exercise` is at, for failure messages.
struct Steps<'a> {
    step: std::sync::Mutex<String>,
    diag: Diag<'a>,
}

impl Steps<'_> {
    fn at(&self, step: impl Into<String>) {
        *self.step.lock().unwrap_or_else(|e| e.into_inner()) = step.into();
    }

    fn context(&self) -> String {
        let step = self.step.lock().unwrap_or_else(|e| e.into_inner()).clone();
        format!("at step {step}; {}", (self.diag)())
    }
}

async fn recv(s: &Steps<'_>, h: &IsoTpHandle) -> Bytes {
    match tokio::time::timeout(Duration::from_secs(30), h.recv()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => panic!("no PDU: {e} ({})", s.context()),
        Err(_) => panic!("no answer within 30 s ({})", s.context()),
    }
}

/// Send `req`, skip 0x78 response-pending answers, return the final answer.
async fn request(s: &Steps<'_>, h: &IsoTpHandle, req: Vec<u8>) -> Bytes {
    if let Err(e) = h.send(Bytes::from(req)).await {
        panic!("request not sent: {e} ({})", s.context());
    }
    loop {
        let r = recv(s, h).await;
        if !matches!(&r[..], [0x7F, _, 0x78]) {
            return r;
        }
    }
}

/// VIN (functional OBD-II and physical UDS), functional fan-out, and the documented flash
/// sequence with 1 MiB through ISO-TP, against the standard vehicle with `vin`. `diag`
/// adds to failure messages.
async fn exercise<P: CanPort>(tester: &IsoTpMux<P>, vin: &[u8], diag: Diag<'_>) {
    let s = &Steps {
        step: std::sync::Mutex::new(String::from("open")),
        diag,
    };
    let ecus: Vec<IsoTpHandle> = [
        (0x7E0, 0x7E8),
        (0x7E1, 0x7E9),
        (0x7E2, 0x7EA),
        (0x740, 0x748),
    ]
    .into_iter()
    .map(|(tx, rx)| tester.open(IsoTpConfig::new(id(tx), id(rx))).unwrap())
    .collect();
    let functional = IsoTpConfig::new(id(0x7DF), id(0x7E8));

    // OBD-II VIN, functional: only the engine answers (multi-frame, 20 bytes).
    s.at("OBD-II VIN (functional 09 02)");
    tester
        .send_functional(&functional, &[0x09, 0x02])
        .await
        .unwrap();
    let r = recv(s, &ecus[0]).await;
    assert_eq!(&r[..3], &[0x49, 0x02, 0x01]);
    assert_eq!(&r[3..], vin);
    // TesterPresent, functional: every ECU on its own response id.
    s.at("TesterPresent (functional 3E 00)");
    tester
        .send_functional(&functional, &[0x3E, 0x00])
        .await
        .unwrap();
    for h in &ecus {
        assert_eq!(&recv(s, h).await[..], &[0x7E, 0x00]);
    }
    // UDS VIN, physical.
    s.at("UDS VIN (22 F1 90)");
    let r = request(s, &ecus[0], vec![0x22, 0xF1, 0x90]).await;
    assert_eq!(&r[3..], vin);

    // The documented flash sequence, 1 MiB through ISO-TP.
    let engine = &ecus[0];
    s.at("extended session (10 03)");
    assert_eq!(
        &request(s, engine, vec![0x10, 0x03]).await[..2],
        &[0x50, 0x03]
    );
    s.at("programming session (10 02)");
    assert_eq!(
        &request(s, engine, vec![0x10, 0x02]).await[..2],
        &[0x50, 0x02]
    );
    s.at("seed (27 01)");
    let seed = request(s, engine, vec![0x27, 0x01]).await;
    assert_eq!(seed.len(), 6, "{seed:02X?}");
    let key = default_key(0x01, [seed[2], seed[3], seed[4], seed[5]]);
    s.at("key (27 02)");
    let r = request(s, engine, [&[0x27, 0x02][..], &key].concat()).await;
    assert_eq!(&r[..], &[0x67, 0x02]);
    // Erase: 7F 31 78 first, the final answer from the timer task 1.5 s later.
    s.at("erase (31 01 FF 00)");
    engine
        .send(Bytes::from_static(&[0x31, 0x01, 0xFF, 0x00]))
        .await
        .unwrap();
    assert_eq!(&recv(s, engine).await[..], &[0x7F, 0x31, 0x78]);
    s.at("erase final answer");
    assert_eq!(&recv(s, engine).await[..], &[0x71, 0x01, 0xFF, 0x00, 0x00]);
    const SIZE: usize = 1 << 20;
    let mut req = vec![0x34, 0x00, 0x44, 0, 0, 0, 0];
    req.extend_from_slice(&(SIZE as u32).to_be_bytes());
    s.at("RequestDownload (34)");
    let r = request(s, engine, req).await;
    assert_eq!(&r[..], &[0x74, 0x20, 0x0F, 0xFF]);
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 + (i >> 12)) as u8).collect();
    for (n, block) in data.chunks(4093).enumerate() {
        let seq = ((n + 1) & 0xFF) as u8;
        s.at(format!("TransferData block {} (36 {seq:02X})", n + 1));
        let r = request(s, engine, [&[0x36, seq][..], block].concat()).await;
        assert_eq!(&r[..], &[0x76, seq], "{}", s.context());
    }
    s.at("RequestTransferExit (37)");
    let r = request(s, engine, vec![0x37]).await;
    let crc = crc32(&data).to_be_bytes();
    assert_eq!(&r[..], &[&[0x77][..], &crc].concat()[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vin_functional_fanout_and_1_mib_flash_over_isotp_on_a_virtual_bus() {
    let _turn = turn();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("obdgw=debug")
        .with_test_writer()
        .try_init();
    let bus = VirtualBus::new("car");
    // Default queues (1024 frames): the tester sends at most one PDU (4095 bytes, 586
    // frames) before it waits for the answer, so nothing is dropped however late the
    // simulator runs; the end of the test checks that.
    let tester = IsoTpMux::new(Arc::new(bus.port()));
    let sim = SimVehicle::new(Vehicle::standard(
        DEFAULT_VIN,
        tokio::time::Instant::now().into_std(),
    ));
    let shutdown = CancellationToken::new();
    tokio::spawn(sim.clone().run_timers(shutdown.clone()));
    // Open the simulator's channels before the tester sends anything: a request sent
    // before they exist reaches nobody (the simulator's mux drops it as unrouted).
    let ecus = Arc::new(CanEcus::open(sim.clone(), Arc::new(bus.port())).unwrap());
    let served = tokio::spawn({
        let (ecus, s) = (ecus.clone(), shutdown.clone());
        async move { ecus.serve(s).await }
    });

    let diag = || {
        let engine = sim.with_vehicle(|v| {
            let e = v.ecu(EcuIndex(0)).unwrap();
            format!(
                "engine session {:?}, download progress {:?}, poll_at in {:?}",
                e.session(),
                e.download_progress(),
                e.poll_at()
                    .map(|t| t.saturating_duration_since(std::time::Instant::now())),
            )
        });
        format!(
            "tester port {:?}, frames unrouted {}; simulator port {:?}, frames unrouted {}; {engine}",
            tester.port().stats(),
            tester.unrouted_frames(),
            ecus.port().stats(),
            ecus.unrouted_frames(),
        )
    };
    exercise(&tester, DEFAULT_VIN.as_bytes(), &diag).await;
    let done = sim.with_vehicle(|v| v.ecu(EcuIndex(0)).unwrap().downloads_completed());
    assert_eq!(done, 1, "{}", diag());
    // No frame was lost or went astray on either side.
    for (who, stats, unrouted) in [
        ("tester", tester.port().stats(), tester.unrouted_frames()),
        ("simulator", ecus.port().stats(), ecus.unrouted_frames()),
    ] {
        assert_eq!(stats.rx_dropped, 0, "{who} port dropped frames: {}", diag());
        assert_eq!(unrouted, 0, "{who} got frames for nobody: {}", diag());
    }
    assert_eq!(
        tester.port().stats().tx_frames,
        ecus.port().stats().rx_frames,
        "{}",
        diag()
    );
    assert_eq!(
        ecus.port().stats().tx_frames,
        tester.port().stats().rx_frames,
        "{}",
        diag()
    );

    shutdown.cancel();
    served.await.unwrap();
}

/// The readiness point of the simulator's CAN face: a request sent right after
/// `CanEcus::open` returned is answered, every time. (Before `open` existed, the test above
/// spawned `serve_can` and sent at once; when the simulator's receive loop took the request
/// before its channels were open, the request was dropped as unrouted and the test waited
/// in vain: about 1 start in 13 on a 2-core machine.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_as_soon_as_the_can_channels_are_open_is_answered() {
    let _turn = turn();
    for start in 0..200 {
        let bus = VirtualBus::new("ready");
        let tester = IsoTpMux::new(Arc::new(bus.port()));
        let engine = tester.open(IsoTpConfig::new(id(0x7E0), id(0x7E8))).unwrap();
        let sim = SimVehicle::new(Vehicle::standard(DEFAULT_VIN, std::time::Instant::now()));
        let shutdown = CancellationToken::new();
        let ecus = Arc::new(CanEcus::open(sim, Arc::new(bus.port())).unwrap());
        let served = tokio::spawn({
            let (ecus, s) = (ecus.clone(), shutdown.clone());
            async move { ecus.serve(s).await }
        });
        tester
            .send_functional(&IsoTpConfig::new(id(0x7DF), id(0x7E8)), &[0x09, 0x02])
            .await
            .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(30), engine.recv()).await;
        let diag = || {
            format!(
                "start {start}: simulator port {:?}, frames unrouted {}",
                ecus.port().stats(),
                ecus.unrouted_frames()
            )
        };
        match r {
            Ok(Ok(r)) => assert_eq!(&r[..3], &[0x49, 0x02, 0x01], "{}", diag()),
            Ok(Err(e)) => panic!("no VIN: {e} ({})", diag()),
            Err(_) => panic!("no VIN within 30 s ({})", diag()),
        }
        assert_eq!(ecus.unrouted_frames(), 0, "{}", diag());
        shutdown.cancel();
        served.await.unwrap();
    }
}

#[test]
fn obdgw_vin_reads_obdgw_sim_vehicle_over_the_sim_bus_in_two_processes() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Command::new(env!("CARGO_BIN_EXE_obdgw"))
        .args([
            "sim",
            "vehicle",
            "--can",
            "sim:car",
            "--vin",
            "WVWZZZ1JZXW000001",
        ])
        .env("OBDGW_SIM_DIR", dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(sim.stdout.take().unwrap()).lines();
    let mut serving = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.starts_with("obdgw sim vehicle: CAN on ") {
            serving = line.clone();
        }
        if line == "obdgw sim vehicle: ready" {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    assert!(
        serving.contains("CAN on sim:car (ISO-TP)") && serving.contains("0x7E0->0x7E8"),
        "{serving}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_obdgw"))
        .args(["vin", "--can", "sim:car", "--timeout", "5"])
        .env("OBDGW_SIM_DIR", dir.path())
        .output()
        .unwrap();
    let _ = sim.kill();
    let _ = sim.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "WVWZZZ1JZXW000001\n");
    assert!(
        stderr.contains("from OBD-II service 09 PID 02 (0x7DF) on sim:car"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_flash_to_obdgw_sim_vehicle_over_the_sim_bus_from_another_process() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Command::new(env!("CARGO_BIN_EXE_obdgw"))
        .args(["sim", "vehicle", "--can", "sim:flash"])
        .env("OBDGW_SIM_DIR", dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(sim.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap() == "obdgw sim vehicle: ready" {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let port = SimPort::open(
        "flash",
        SimBusOptions {
            dir: Some(dir.path().to_path_buf()),
            ..SimBusOptions::default()
        },
    )
    .await
    .unwrap();
    let tester = IsoTpMux::new(Arc::new(port));
    let tester_port = tester.port().clone();
    let diag = || {
        format!(
            "tester port {:?}; tester frames unrouted {}",
            tester_port.stats(),
            tester.unrouted_frames()
        )
    };
    exercise(&tester, DEFAULT_VIN.as_bytes(), &diag).await;
    let _ = sim.kill();
    let _ = sim.wait();
}

#[test]
fn obdgw_vin_over_an_empty_sim_bus_says_nobody_answered() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_obdgw"))
        .args(["vin", "--can", "sim:empty", "--timeout", "0.3"])
        .env("OBDGW_SIM_DIR", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains("no answer to UDS ReadDataByIdentifier 0xF190 from CAN 0x7E0 on sim:empty"),
        "{stderr}"
    );
}
