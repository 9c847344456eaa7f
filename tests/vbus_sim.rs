//! The `sim:` cross-process bus between two real processes (this test binary runs itself as
//! the second one), and between two tokio runtimes in one process.
//!
//! The peer echoes every frame back with its id + 8 (as an ECU answers 0x7E0 on 0x7E8) until
//! it receives the stop frame 0x7FF. The main side checks every echo, in order, then makes
//! the hub go away and checks that the survivors elect a new one and carry on.

use obdgw::router::frame::{CanFdFrame, CanFrame, CanId};
use obdgw::vehicle::can::simbus::{SIM_DIR_ENV, SimBusOptions, SimPort};
use obdgw::vehicle::can::{AnyCanPort, CanAnyFrame, CanPort, open_port};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const PEER_ENV: &str = "TEST_OBDGW_SIM_PEER";
const READY: u16 = 0x700;
const STOP: u16 = 0x7FF;
const ACK: u16 = 0x7F7;
const FIN: u16 = 0x7F6;
const FRAMES: usize = 300;

/// The tests set `OBDGW_SIM_DIR` for `open_port`: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn sid(id: u16) -> CanId {
    CanId::standard(id).unwrap()
}

fn opts(dir: &Path) -> SimBusOptions {
    SimBusOptions {
        dir: Some(dir.to_path_buf()),
        ..SimBusOptions::default()
    }
}

async fn recv(p: &impl CanPort) -> CanAnyFrame {
    tokio::time::timeout(Duration::from_secs(20), p.recv())
        .await
        .expect("no frame within 20 s")
        .expect("recv failed")
}

/// The echoing peer. Announces itself with READY (repeated until the first request, since
/// the main side may join after it). On STOP it answers ACK and returns once FIN arrives,
/// so whichever side hosts the hub, nothing is in flight when a port goes away.
async fn peer(dir: &Path) -> u64 {
    let port = SimPort::open("pair", opts(dir)).await.unwrap();
    let ready: CanAnyFrame = CanFrame::new(sid(READY), &[1]).unwrap().into();
    let mut echoed = 0u64;
    let mut announcing = true;
    loop {
        if announcing {
            port.send(ready).await.unwrap();
        }
        let f = match tokio::time::timeout(Duration::from_millis(100), port.recv()).await {
            Err(_) => continue,
            Ok(r) => r.unwrap(),
        };
        announcing = false;
        if f.id() == sid(STOP) {
            port.send(CanFrame::new(sid(ACK), &[]).unwrap().into())
                .await
                .unwrap();
            loop {
                if recv(&port).await.id() == sid(FIN) {
                    return echoed;
                }
            }
        }
        let id = sid(f.id().id() as u16 + 8);
        let reply: CanAnyFrame = match f {
            CanAnyFrame::Classic(c) => CanFrame::new(id, c.data()).unwrap().into(),
            CanAnyFrame::Fd(d) => CanFdFrame::new(id, d.data()).unwrap().into(),
        };
        port.send(reply).await.unwrap();
        echoed += 1;
    }
}

/// Drive one round of requests through the peer and check every echo.
async fn exchange(port: &impl CanPort, round: u8) {
    for i in 0..FRAMES {
        let id = sid(0x100 + (i % 0x80) as u16);
        let f: CanAnyFrame = if i % 4 == 0 {
            CanFdFrame::new(id, &[round; 48]).unwrap().into()
        } else {
            CanFrame::new(id, &[round, i as u8, (i >> 8) as u8])
                .unwrap()
                .into()
        };
        port.send(f).await.unwrap();
        let mut echo = recv(port).await;
        while echo.id() == sid(READY) {
            echo = recv(port).await;
        }
        assert_eq!(echo.id().id(), f.id().id() + 8, "echo of request {i}");
        assert_eq!(echo.data(), f.data(), "echo of request {i}");
        assert_eq!(echo.is_fd(), f.is_fd());
    }
}

/// The main side: wait for the peer, exchange, drop our port (if we host the hub, it goes
/// away), rejoin through `open_port("sim:pair")`, exchange again, stop the peer. Returns
/// the port, to be dropped once the peer has finished.
async fn main_side(dir: &Path) -> AnyCanPort {
    let first = SimPort::open("pair", opts(dir)).await.unwrap();
    while recv(&first).await.id() != sid(READY) {}
    exchange(&first, 1).await;
    // drop it: when it hosts the hub, the hub goes away and the peer must elect a new one
    drop(first);
    // Rejoin by spec, as `obdgw run --can sim:pair` would (directory from the environment
    // variable in the two-process test, so set it for this process too).
    // SAFETY: the tests of this binary hold SERIAL, so no other thread reads the
    // environment meanwhile (the runtime is single-threaded).
    unsafe { std::env::set_var(SIM_DIR_ENV, dir) };
    let second = open_port("sim:pair").await.unwrap();
    assert!(matches!(second, AnyCanPort::Sim(_)));
    // frames sent while the peer is still reconnecting may be lost: probe until it answers
    let probe: CanAnyFrame = CanFrame::new(sid(0x10), &[0]).unwrap().into();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            second.send(probe).await.unwrap();
            if let Ok(Ok(f)) = tokio::time::timeout(Duration::from_millis(100), second.recv()).await
                && f.id() == sid(0x18)
            {
                return;
            }
        }
    })
    .await
    .expect("the peer never came back after the hub change");
    // drain late probe echoes
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), second.recv()).await {}
    exchange(&second, 2).await;
    second
        .send(CanFrame::new(sid(STOP), &[]).unwrap().into())
        .await
        .unwrap();
    while recv(&second).await.id() != sid(ACK) {}
    second
        .send(CanFrame::new(sid(FIN), &[]).unwrap().into())
        .await
        .unwrap();
    second
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn two_processes_share_a_sim_bus() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // This binary again, running only `sim_peer`, as the peer process.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "sim_peer", "--nocapture", "--test-threads", "1"])
        .env(PEER_ENV, dir.path())
        .env(SIM_DIR_ENV, dir.path())
        .spawn()
        .expect("spawn the peer process");
    let status = runtime().block_on(async {
        let port = main_side(dir.path()).await;
        // keep our port (maybe the hub) running until the peer is done
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        drop(port);
        status
    });
    assert!(status.success(), "peer process failed: {status}");
}

/// In the peer process (spawned by `two_processes_share_a_sim_bus`): the echoing peer. Run
/// alone, it runs both sides in two threads with two runtimes and separate sockets.
#[test]
fn sim_peer() {
    if let Some(dir) = std::env::var_os(PEER_ENV) {
        let echoed = runtime().block_on(peer(Path::new(&dir)));
        // both rounds, plus the probes answered during the hub change
        assert!(echoed as usize > 2 * FRAMES, "{echoed}");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let peer_thread = std::thread::spawn(move || runtime().block_on(peer(&path)));
    let echoed = runtime().block_on(async {
        let port = main_side(dir.path()).await;
        let echoed = tokio::task::spawn_blocking(move || peer_thread.join().unwrap())
            .await
            .unwrap();
        drop(port);
        echoed
    });
    assert!(echoed as usize > 2 * FRAMES, "{echoed}");
}
