//! Interop against the simulator binary: python-doipclient + udsoncan
//! (`tests/interop/doip_sim_vehicle.py`) talk to `obdgw sim vehicle --doip-listen 127.0.0.1:0`
//! running as a separate process: VIN from the identification response and by UDS 0xF190,
//! DTCs, and a 1 MiB flash (sessions, security access, erase, download, transfer exit with
//! its CRC-32, check routine).
//!
//! Needs `TEST_OBDGW_PYTHON` (skips loudly without it, fails without it when
//! `TEST_OBDGW_REQUIRE_INTEROP=1`).

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};

const DOWNLOAD: usize = 1 << 20;

#[test]
fn python_doipclient_and_udsoncan_against_obdgw_sim_vehicle() {
    let Some(python) =
        common::interop_python("python_doipclient_and_udsoncan_against_obdgw_sim_vehicle")
    else {
        return;
    };
    let mut sim = Command::new(env!("CARGO_BIN_EXE_obdgw"))
        .args(["sim", "vehicle", "--doip-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn obdgw sim vehicle");
    let mut lines = std::io::BufReader::new(sim.stdout.take().unwrap()).lines();
    let mut port = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("obdgw sim vehicle: DoIP on ") {
            let addr: std::net::SocketAddr =
                rest.split_whitespace().next().unwrap().parse().unwrap();
            port = Some(addr.port());
        }
        if line == "obdgw sim vehicle: ready" {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let port = port.expect("the simulator printed its DoIP address");

    let out = Command::new(python)
        .arg(common::interop_script("doip_sim_vehicle.py"))
        .args([
            "127.0.0.1",
            &port.to_string(),
            "0x1000",
            &DOWNLOAD.to_string(),
        ])
        .output()
        .unwrap();
    let _ = sim.kill();
    let _ = sim.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python tester failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let line = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {key} line\nstdout:\n{stdout}\nstderr:\n{stderr}"))
    };
    assert_eq!(line("ANNOUNCED_VIN"), "1FTFW1E87MFA17359");
    assert_eq!(line("ANNOUNCED_ADDRESS"), "0x1000");
    assert_eq!(line("UDS_VIN"), "1FTFW1E87MFA17359");
    // The engine's two stored DTCs (P0301, P0420) by status mask 0xFF.
    let dtcs = line("DTCS");
    assert!(dtcs.starts_with("2 "), "{dtcs}");
    assert!(
        dtcs.contains("030100:") && dtcs.contains("042000:"),
        "{dtcs}"
    );
    assert_eq!(line("ERASED"), "True");
    assert_eq!(line("MAX_BLOCK"), "4093");
    assert_eq!(
        line("DOWNLOADED"),
        format!("{DOWNLOAD} {}", DOWNLOAD.div_ceil(4093))
    );
    // RequestTransferExit answers the CRC-32 of what arrived; it matches the sent bytes.
    let local = line("LOCAL_CRC");
    assert_eq!(line("EXIT_CRC"), local);
    // checkMemory: 01 0202, status 00 (match), the CRC.
    assert_eq!(line("CHECK"), format!("01020200{local}"));
    assert_eq!(line("DONE"), "");
}
