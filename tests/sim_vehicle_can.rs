//! The simulator's CAN transport: in process over a `VirtualBus` (VIN by OBD-II functional
//! request, functional fan-out, a 1 MiB flash through ISO-TP with the CRC-32 checked), and
//! against `obdgw sim vehicle --can sim:NAME` in another process: `obdgw vin --can sim:car`,
//! and the same VIN/fan-out/1 MiB flash from this test process.

// The TURN guard is held across awaits on purpose: it serialises whole tests.
#![allow(clippy::await_holding_lock)]

use bytes::Bytes;
use obdgw::router::frame::CanId;
use obdgw::sim::ecu::{DEFAULT_VIN, crc32, default_key};
use obdgw::vehicle::can::CanPort;
use obdgw::vehicle::can::simbus::{SimBusOptions, SimPort};
use obdgw::vehicle::isotp::{IsoTpConfig, IsoTpHandle, IsoTpMux};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// The tests of this file take turns: each runs a 1 MiB ISO-TP transfer or spawns the
/// simulator, and on a loaded 2-core CI machine running them side by side starved the
/// in-process simulator past the ISO-TP N_Cr timeout.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn id(raw: u16) -> CanId {
    CanId::from_raw(u32::from(raw))
}

async fn recv(h: &IsoTpHandle) -> Bytes {
    tokio::time::timeout(Duration::from_secs(30), h.recv())
        .await
        .expect("an answer within 30 s")
        .expect("a PDU")
}

/// Send `req`, skip 0x78 response-pending answers, return the final answer.
async fn request(h: &IsoTpHandle, req: Vec<u8>) -> Bytes {
    h.send(Bytes::from(req)).await.expect("sent");
    loop {
        let r = recv(h).await;
        if !matches!(&r[..], [0x7F, _, 0x78]) {
            return r;
        }
    }
}

/// VIN (functional OBD-II and physical UDS), functional fan-out, and the documented flash
/// sequence with 1 MiB through ISO-TP, against the standard vehicle with `vin`.
async fn exercise<P: CanPort>(tester: &IsoTpMux<P>, vin: &[u8]) {
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
    tester
        .send_functional(&functional, &[0x09, 0x02])
        .await
        .unwrap();
    let r = recv(&ecus[0]).await;
    assert_eq!(&r[..3], &[0x49, 0x02, 0x01]);
    assert_eq!(&r[3..], vin);
    // TesterPresent, functional: every ECU on its own response id.
    tester
        .send_functional(&functional, &[0x3E, 0x00])
        .await
        .unwrap();
    for h in &ecus {
        assert_eq!(&recv(h).await[..], &[0x7E, 0x00]);
    }
    // UDS VIN, physical.
    let r = request(&ecus[0], vec![0x22, 0xF1, 0x90]).await;
    assert_eq!(&r[3..], vin);

    // The documented flash sequence, 1 MiB through ISO-TP.
    let engine = &ecus[0];
    assert_eq!(&request(engine, vec![0x10, 0x03]).await[..2], &[0x50, 0x03]);
    assert_eq!(&request(engine, vec![0x10, 0x02]).await[..2], &[0x50, 0x02]);
    let seed = request(engine, vec![0x27, 0x01]).await;
    assert_eq!(seed.len(), 6, "{seed:02X?}");
    let key = default_key(0x01, [seed[2], seed[3], seed[4], seed[5]]);
    let r = request(engine, [&[0x27, 0x02][..], &key].concat()).await;
    assert_eq!(&r[..], &[0x67, 0x02]);
    // Erase: 7F 31 78 first, the final answer from the timer task 1.5 s later.
    engine
        .send(Bytes::from_static(&[0x31, 0x01, 0xFF, 0x00]))
        .await
        .unwrap();
    assert_eq!(&recv(engine).await[..], &[0x7F, 0x31, 0x78]);
    assert_eq!(&recv(engine).await[..], &[0x71, 0x01, 0xFF, 0x00, 0x00]);
    const SIZE: usize = 1 << 20;
    let mut req = vec![0x34, 0x00, 0x44, 0, 0, 0, 0];
    req.extend_from_slice(&(SIZE as u32).to_be_bytes());
    let r = request(engine, req).await;
    assert_eq!(&r[..], &[0x74, 0x20, 0x0F, 0xFF]);
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 + (i >> 12)) as u8).collect();
    for (n, block) in data.chunks(4093).enumerate() {
        let seq = ((n + 1) & 0xFF) as u8;
        let r = request(engine, [&[0x36, seq][..], block].concat()).await;
        assert_eq!(&r[..], &[0x76, seq]);
    }
    let r = request(engine, vec![0x37]).await;
    let crc = crc32(&data).to_be_bytes();
    assert_eq!(&r[..], &[&[0x77][..], &crc].concat()[..]);
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
    exercise(&tester, DEFAULT_VIN.as_bytes()).await;
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
