//! The transmit deadline without a CAN kernel: a bus nobody acknowledges (the fault
//! injector's `tx_unacked` over the virtual bus) and a `sim:` bus whose hub never reads.
//! A stuck transmit costs a sender its deadline, never the session or the shutdown.
//! (`tests/socketcan_txdeadline.rs` shows the same against a real kernel in the qemu guest.)

use obdgw::router::frame::{CanFrame, CanId};
use obdgw::vehicle::can::fault::{FaultConfig, FaultInjector};
use obdgw::vehicle::can::simbus::{HELLO, SIM_DIR_ENV};
use obdgw::vehicle::can::vbus::VirtualBus;
use obdgw::vehicle::can::{CanAnyFrame, CanError, CanInterfaceConfig, CanPort, open_port_with};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn frame(b: u8) -> CanAnyFrame {
    CanFrame::new(CanId::standard(0x7E0).unwrap(), &[b; 8])
        .unwrap()
        .into()
}

/// A session's transmit task: frames from `input` to the port, failures counted, stopping
/// between frames.
fn transmit_task<P: CanPort>(
    port: Arc<P>,
    mut input: tokio::sync::mpsc::Receiver<CanAnyFrame>,
    stop: CancellationToken,
    failures: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let f = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                f = input.recv() => match f { Some(f) => f, None => return },
            };
            if let Err(e) = port.send(f).await {
                assert!(matches!(e, CanError::TxTimeout { .. }), "{e:?}");
                failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn nobody_acknowledges_and_the_session_still_stops() {
    let deadline = Duration::from_millis(200);
    let bus = VirtualBus::new("car");
    let port = Arc::new(FaultInjector::new(
        bus.port(),
        FaultConfig {
            tx_unacked: true,
            tx_timeout: deadline,
            ..FaultConfig::default()
        },
    ));
    let ecu = bus.port();
    let (tx, input) = tokio::sync::mpsc::channel(1000);
    let stop = CancellationToken::new();
    let failures = Arc::new(AtomicU64::new(0));
    let task = transmit_task(port.clone(), input, stop.clone(), failures.clone());
    for i in 0..1000u32 {
        tx.send(frame(i as u8)).await.unwrap();
    }
    // Each frame costs one deadline: after 1 s, five have failed.
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(failures.load(Ordering::Relaxed), 5);
    assert_eq!(port.stats().tx_timeouts, 5);
    // Shutdown waits for the send in progress only.
    let start = Instant::now();
    stop.cancel();
    task.await.unwrap();
    let took = start.elapsed();
    assert!(took <= deadline, "{took:?}");
    assert_eq!(failures.load(Ordering::Relaxed), 6);
    assert!(ecu.try_recv().is_none(), "nothing went on the bus");
}

#[tokio::test(start_paused = true)]
async fn the_bus_comes_back_and_frames_flow_again() {
    let bus = VirtualBus::new("car");
    let port = Arc::new(FaultInjector::new(
        bus.port(),
        FaultConfig {
            tx_unacked: true,
            ..FaultConfig::default()
        },
    ));
    let ecu = bus.port();
    let (tx, input) = tokio::sync::mpsc::channel(100);
    let stop = CancellationToken::new();
    let failures = Arc::new(AtomicU64::new(0));
    let task = transmit_task(port.clone(), input, stop.clone(), failures.clone());
    for i in 0..3u8 {
        tx.send(frame(i)).await.unwrap();
    }
    // the default deadline (200 ms) for each of the first two; the third is let through
    // when the ECU wakes up
    tokio::time::sleep(Duration::from_millis(450)).await;
    port.set_tx_unacked(false);
    tx.send(frame(3)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(failures.load(Ordering::Relaxed), 2);
    assert_eq!(ecu.try_recv().unwrap().data(), &[2; 8]);
    assert_eq!(ecu.try_recv().unwrap().data(), &[3; 8]);
    stop.cancel();
    task.await.unwrap();
}

/// `tx_timeout_ms` from the configuration reaches the port: a `sim:` bus whose hub takes
/// the hello and then never reads.
#[tokio::test]
async fn a_sim_bus_hub_that_never_reads_and_the_configured_deadline() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: the only test in this binary that touches the environment, before any thread
    // of its own reads it.
    unsafe { std::env::set_var(SIM_DIR_ENV, dir.path()) };
    let listener = tokio::net::UnixListener::bind(dir.path().join("sim-stuck.sock")).unwrap();
    let hub = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut hello = [0u8; 8];
        s.read_exact(&mut hello).await.unwrap();
        s.write_all(HELLO).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(s);
    });
    let mut cfg = CanInterfaceConfig::new("car", "sim:stuck");
    cfg.tx_timeout_ms = 50;
    let port = open_port_with(&cfg).await.unwrap();
    let mut sent = 0u64;
    let (e, took) = loop {
        let start = std::time::Instant::now();
        match port.send(frame(1)).await {
            Ok(()) => sent += 1,
            Err(e) => break (e, start.elapsed()),
        }
        assert!(sent < 1_000_000, "the queue never filled");
    };
    let CanError::TxTimeout { timeout, .. } = e else {
        panic!("{e:?}")
    };
    assert_eq!(timeout, Duration::from_millis(50));
    assert!(
        took >= Duration::from_millis(50) && took < Duration::from_millis(550),
        "{took:?}"
    );
    assert_eq!(port.stats().tx_timeouts, 1);
    let start = std::time::Instant::now();
    drop(port);
    assert!(start.elapsed() < Duration::from_millis(100));
    hub.abort();
}
