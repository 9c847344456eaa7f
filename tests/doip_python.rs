//! Interop with an independent, widely used DoIP tester: python-doipclient + udsoncan
//! (`tests/interop/doip_client.py`) against our entity over loopback: UDP identification,
//! entity status and power mode, alive check, then UDS over DoIP: VIN, tester present,
//! DTCs, a routine with two response-pending replies, and a 1 MiB download.
//!
//! The Python comes from `TEST_OBDGW_PYTHON` (see `tests/interop/setup-venv.sh` on main;
//! `doipclient` and `udsoncan` are in its requirements). Without it the test is skipped
//! loudly, or fails when `TEST_OBDGW_REQUIRE_INTEROP=1` (as CI sets).

mod common;

use bytes::Bytes;
use common::interop_python;
use obdgw::vehicle::doip::entity::{DiagHandler, DiagRequest, Entity, EntityConfig, Replies};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

const VIN: &[u8; 17] = b"WOBDGW0PYTHON0042";
const ECU: u16 = 0x1001;
const DOWNLOAD: usize = 1 << 20;

/// A small UDS ECU: enough for the Python tester's script.
#[derive(Default)]
struct Ecu {
    downloaded: AtomicUsize,
    blocks: AtomicUsize,
}

impl DiagHandler for Ecu {
    async fn handle(&self, req: DiagRequest, replies: Replies) {
        let resp: Vec<u8> = match &req.data[..] {
            [0x22, 0xF1, 0x90] => [&[0x62, 0xF1, 0x90][..], VIN].concat(),
            [0x3E, 0x00] => vec![0x7E, 0x00],
            [0x19, 0x02, _mask] => vec![
                0x59, 0x02, 0xFF, 0x04, 0x20, 0x00, 0x2F, 0x01, 0x71, 0x00, 0x08,
            ],
            [0x31, 0x01, a, b] => {
                for _ in 0..2 {
                    let _ = replies.send(Bytes::from_static(&[0x7F, 0x31, 0x78])).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                vec![0x71, 0x01, *a, *b]
            }
            // maxNumberOfBlockLength 0x1000 (two bytes)
            [0x34, ..] => vec![0x74, 0x20, 0x10, 0x00],
            [0x36, seq, data @ ..] => {
                self.downloaded.fetch_add(data.len(), Ordering::Relaxed);
                self.blocks.fetch_add(1, Ordering::Relaxed);
                vec![0x76, *seq]
            }
            [0x37, ..] => vec![0x77],
            [sid, ..] => vec![0x7F, *sid, 0x11],
            [] => return,
        };
        let _ = replies.send(Bytes::from(resp)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_doipclient_and_udsoncan_against_our_entity() {
    let Some(python) = interop_python("python_doipclient_and_udsoncan_against_our_entity") else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (tcp_port, udp_port) = (
        listener.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    );
    let ecu = Arc::new(Ecu::default());
    let cfg = EntityConfig {
        vin: *VIN,
        logical_address: 0x1000,
        targets: vec![ECU],
        announce_to: None,
        ..EntityConfig::default()
    };
    let entity = Entity::new(cfg, ecu.clone());
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    let e = entity.clone();
    tokio::spawn(async move { e.run(listener, Some(udp), s).await });

    let script = common::interop_script("doip_client.py");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python)
            .arg(script)
            .args([
                "127.0.0.1".to_string(),
                tcp_port.to_string(),
                udp_port.to_string(),
                format!("0x{ECU:04X}"),
                DOWNLOAD.to_string(),
            ])
            .output(),
    )
    .await
    .expect("the Python tester finished within 120 s")
    .unwrap();
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
    assert_eq!(line("ANNOUNCED_VIN"), "WOBDGW0PYTHON0042");
    assert_eq!(line("ANNOUNCED_ADDRESS"), "0x1000");
    assert_eq!(line("STATUS"), "0 4 1");
    assert_eq!(line("POWER"), "1");
    assert_eq!(line("ALIVE"), "0x1000");
    assert_eq!(line("UDS_VIN"), "WOBDGW0PYTHON0042");
    assert_eq!(line("DTCS"), "042000:2F 017100:08");
    assert_eq!(line("ROUTINE"), "True");
    let blocks = DOWNLOAD.div_ceil(4094);
    assert_eq!(line("DOWNLOADED"), format!("{DOWNLOAD} {blocks}"));
    assert_eq!(line("DONE"), "");
    assert_eq!(ecu.downloaded.load(Ordering::Relaxed), DOWNLOAD);
    assert_eq!(ecu.blocks.load(Ordering::Relaxed), blocks);
    shutdown.cancel();
}
