//! `obdgw vin --can` reads the VIN from `obdgw sim vehicle --can` on a real kernel's vcan,
//! two processes (run in the CAN guest by `tests/vm/cargo-test.sh`). On a kernel without
//! `AF_CAN`: a loud SKIPPED line and a pass, unless `TEST_OBDGW_REQUIRE_CAN=1` (or
//! `OBDGW_REQUIRE_CAN=1`), where it fails.

mod common;

use common::can_available;
use std::io::BufRead;
use std::process::{Command, Stdio};

const IFACE: &str = "vcansimvin";

/// A fresh classic vcan interface, up (the guest runs tests as root).
fn make_vcan(name: &str) {
    let _ = Command::new("ip")
        .args(["link", "del", name])
        .stderr(Stdio::null())
        .status();
    for args in [
        vec!["link", "add", name, "type", "vcan"],
        vec!["link", "set", name, "up"],
    ] {
        let st = Command::new("ip").args(&args).status().expect("run ip");
        assert!(st.success(), "ip {args:?} failed");
    }
}

#[test]
fn obdgw_vin_reads_obdgw_sim_vehicle_on_vcan() {
    if !can_available("obdgw_vin_reads_obdgw_sim_vehicle_on_vcan") {
        return;
    }
    make_vcan(IFACE);
    let mut sim = Command::new(env!("CARGO_BIN_EXE_obdgw"))
        .args([
            "sim",
            "vehicle",
            "--can",
            IFACE,
            "--vin",
            "WVWZZZ1JZXW000001",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn obdgw sim vehicle");
    let mut lines = std::io::BufReader::new(sim.stdout.take().unwrap()).lines();
    let mut ready = false;
    for line in lines.by_ref() {
        if line.unwrap() == "obdgw sim vehicle: ready" {
            ready = true;
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    assert!(ready, "the simulator died before it was ready");
    let out = Command::new(env!("CARGO_BIN_EXE_obdgw"))
        .args(["vin", "--can", IFACE, "--timeout", "5"])
        .output()
        .unwrap();
    let _ = sim.kill();
    let _ = sim.wait();
    let _ = Command::new("ip").args(["link", "del", IFACE]).status();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "WVWZZZ1JZXW000001\n");
    assert!(
        stderr.contains("from OBD-II service 09 PID 02 (0x7DF)"),
        "{stderr}"
    );
}
