//! The transmit deadline against a real kernel: a CAN interface whose transmit queue never
//! drains, as when no node on the bus acknowledges frames.
//!
//! Run with `tests/vm/cargo-test.sh` (the qemu CAN guest); on a kernel without `AF_CAN`
//! each test prints a loud SKIPPED line and passes, unless `TEST_OBDGW_REQUIRE_CAN=1`.
//!
//! How the queue is made to stay full: vcan never makes a writer wait. Its transmit hands
//! every frame on at once, so a flood on a plain vcan never sees `ENOBUFS` or a full send
//! buffer. A real controller that nobody acknowledges keeps retransmitting its frame, its
//! driver stops the interface's queue, and the queueing discipline fills up. The same state
//! is made here with the `plug` qdisc (`sch_plug`), which holds every frame until released:
//! - `plug limit 160` holds 10 classic frames (16 bytes each), as a real CAN interface's
//!   default `txqueuelen` of 10 does; the 11th write gets `ENOBUFS`;
//! - a large limit lets the socket's send buffer fill instead (about 278 classic frames with
//!   the default 212992-byte `wmem_default`); then a non-blocking write gets `EAGAIN` and
//!   the port waits for writability, which never comes.
//!
//! `tests/vm/cargo-test.sh` provides `sch_plug.ko` for the guest's kernel in
//! `$OBDGW_VM_MODULES`; the tests load it with busybox `insmod` when the qdisc is missing.
//! The measured times are printed (`--nocapture` shows them).

mod common;

use common::can_available;
use obdgw::router::frame::{CanFrame, CanId};
use obdgw::vehicle::can::socketcan::{SocketCanOptions, SocketCanPort};
use obdgw::vehicle::can::{CanAnyFrame, CanError, CanPort};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The deadline the tests configure.
const DEADLINE: Duration = Duration::from_millis(200);
/// What a send may take beyond its deadline: the guest runs under TCG, where wake-ups are
/// late by milliseconds, sometimes tens of them.
const SLACK: Duration = Duration::from_millis(400);

/// Whether the command ran and succeeded.
fn run(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Tests run in parallel: one loads the module, the others wait for it.
static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn must(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    assert!(st.success(), "{args:?} failed");
}

/// A fresh vcan (classic MTU) whose transmit queue is a plug qdisc holding `limit` bytes.
fn plugged_vcan(name: &str, limit: u32) {
    let _ = run(&["ip", "link", "del", name]);
    must(&["ip", "link", "add", name, "type", "vcan"]);
    must(&["ip", "link", "set", name, "up"]);
    let limit = limit.to_string();
    let plug = [
        "tc", "qdisc", "add", "dev", name, "root", "plug", "limit", &limit,
    ];
    if run(&plug) {
        return;
    }
    let _loading = LOADING.lock().unwrap_or_else(|e| e.into_inner());
    if run(&plug) {
        return;
    }
    // Not in the kernel yet: load it from the directory cargo-test.sh prepared.
    let Some(dir) = std::env::var_os("OBDGW_VM_MODULES") else {
        panic!(
            "the plug qdisc is missing and OBDGW_VM_MODULES is not set; run this test with tests/vm/cargo-test.sh, which provides sch_plug.ko"
        );
    };
    let ko = std::path::Path::new(&dir).join("sch_plug.ko");
    let ko = ko.to_str().expect("a UTF-8 module path");
    let loaded = run(&["/bin/busybox", "insmod", ko]) || run(&["insmod", ko]);
    assert!(
        run(&plug),
        "no plug qdisc after loading {ko} (insmod succeeded: {loaded})"
    );
}

fn release(name: &str) {
    must(&[
        "tc",
        "qdisc",
        "change",
        "dev",
        name,
        "root",
        "plug",
        "release_indefinite",
    ]);
}

fn port(name: &str) -> SocketCanPort {
    SocketCanPort::open(
        name,
        SocketCanOptions {
            tx_timeout: DEADLINE,
            ..SocketCanOptions::default()
        },
    )
    .unwrap()
}

fn frame(b: u8) -> CanAnyFrame {
    CanFrame::new(CanId::standard(0x7E0).unwrap(), &[b; 8])
        .unwrap()
        .into()
}

/// Send until a send fails; returns the frames that went and the failing send's error and
/// duration.
async fn send_until_stuck(p: &SocketCanPort, max: usize) -> (usize, CanError, Duration) {
    for i in 0..max {
        let start = Instant::now();
        if let Err(e) = p.send(frame(i as u8)).await {
            return (i, e, start.elapsed());
        }
    }
    panic!("{max} frames went through a plugged queue");
}

fn assert_within_deadline(what: &str, took: Duration) {
    eprintln!("{what}: {took:?} (deadline {DEADLINE:?})");
    assert!(
        took >= DEADLINE,
        "{what}: failed before the deadline: {took:?}"
    );
    assert!(
        took <= DEADLINE + SLACK,
        "{what}: took {took:?}, beyond the deadline {DEADLINE:?} + {SLACK:?}"
    );
}

#[tokio::test]
async fn a_full_queue_fails_the_send_at_the_deadline_enobufs() {
    if !can_available("a_full_queue_fails_the_send_at_the_deadline_enobufs") {
        return;
    }
    plugged_vcan("otx-nobuf", 160);
    let p = port("otx-nobuf");
    let (went, e, took) = send_until_stuck(&p, 1000).await;
    assert_eq!(went, 10, "the plug holds 10 classic frames");
    let CanError::TxTimeout { retries, .. } = e else {
        panic!("expected a transmit timeout, got {e:?}")
    };
    assert_within_deadline("ENOBUFS: first stuck send", took);
    let s = p.stats();
    eprintln!("ENOBUFS: {retries} retries in that send; stats {s:?}");
    assert!((1..=28).contains(&retries), "{retries}");
    assert_eq!(s.tx_timeouts, 1);
    assert_eq!(s.tx_enobufs_retries, retries as u64);
    assert_eq!(s.tx_frames, 10);
    assert!(e_text_names_the_cause(&p).await);

    // Every further send is bounded the same way.
    for i in 0..3 {
        let start = Instant::now();
        assert!(matches!(
            p.send(frame(0xA0 + i)).await,
            Err(CanError::TxTimeout { .. })
        ));
        assert_within_deadline("ENOBUFS: a later send", start.elapsed());
    }
    let s = p.stats();
    assert_eq!(s.tx_timeouts, 5);
    assert!(s.tx_enobufs_retries <= 5 * 28, "{s:?}");

    // Somebody acknowledges again: the held frames leave and sends go through at once.
    let rx = port("otx-nobuf");
    release("otx-nobuf");
    let start = Instant::now();
    p.send(frame(0xEE)).await.unwrap();
    eprintln!("ENOBUFS: send after release: {:?}", start.elapsed());
    assert!(start.elapsed() < DEADLINE);
    let f = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("nothing arrives after the release")
        .unwrap();
    assert_eq!(f.id(), CanId::standard(0x7E0).unwrap());
}

/// The error's text says what is wrong and what to check.
async fn e_text_names_the_cause(p: &SocketCanPort) -> bool {
    let e = p.send(frame(0x55)).await.unwrap_err();
    let text = e.to_string();
    eprintln!("the error: {text}");
    text.contains("otx-nobuf") && text.contains("200 ms") && text.contains("bitrate")
}

#[tokio::test]
async fn a_full_send_buffer_fails_the_send_at_the_deadline_eagain() {
    if !can_available("a_full_send_buffer_fails_the_send_at_the_deadline_eagain") {
        return;
    }
    // The plug takes everything: the socket's send buffer fills first.
    plugged_vcan("otx-sndbuf", 100_000_000);
    let p = port("otx-sndbuf");
    let (went, e, took) = send_until_stuck(&p, 100_000).await;
    eprintln!("EAGAIN: {went} frames filled the send buffer");
    assert!(went > 10, "{went}");
    let CanError::TxTimeout { retries, .. } = e else {
        panic!("expected a transmit timeout, got {e:?}")
    };
    assert_eq!(retries, 0, "no ENOBUFS: the wait was for writability");
    assert_within_deadline("EAGAIN: first stuck send", took);
    assert_eq!(p.stats().tx_timeouts, 1);
    assert_eq!(p.stats().tx_enobufs_retries, 0);
    release("otx-sndbuf");
    let start = Instant::now();
    p.send(frame(1)).await.unwrap();
    eprintln!("EAGAIN: send after release: {:?}", start.elapsed());
}

#[tokio::test]
async fn a_stuck_transmit_never_holds_up_shutdown() {
    if !can_available("a_stuck_transmit_never_holds_up_shutdown") {
        return;
    }
    plugged_vcan("otx-stop", 160);
    let p = Arc::new(port("otx-stop"));
    // A session's transmit task, as the gateway runs it: take a frame, send it (not
    // cancellable), report failures, check for shutdown between frames. `biased`: once
    // stopped, it takes no further frame (an unbiased select picks a ready frame half the
    // time, and each costs up to a deadline).
    let (tx, mut input) = tokio::sync::mpsc::channel::<CanAnyFrame>(1000);
    let stop = CancellationToken::new();
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let task = {
        let (p, stop, failures) = (p.clone(), stop.clone(), failures.clone());
        tokio::spawn(async move {
            loop {
                let f = tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    f = input.recv() => match f { Some(f) => f, None => return },
                };
                if p.send(f).await.is_err() {
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };
    for i in 0..500u32 {
        tx.send(frame(i as u8)).await.unwrap();
    }
    // Let the queue fill and a send or two time out, then shut down.
    tokio::time::sleep(DEADLINE * 2).await;
    let start = Instant::now();
    stop.cancel();
    tokio::time::timeout(DEADLINE + SLACK, task)
        .await
        .expect("the transmit task did not stop within the deadline")
        .unwrap();
    let took = start.elapsed();
    eprintln!(
        "shutdown with a stuck transmit: {took:?}; {} sends failed meanwhile",
        failures.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(failures.load(std::sync::atomic::Ordering::Relaxed) >= 1);

    drop(p);

    // A send that is dropped (a cancelled future) ends at once, whatever its deadline.
    let patient = SocketCanPort::open(
        "otx-stop",
        SocketCanOptions {
            tx_timeout: Duration::from_secs(30),
            ..SocketCanOptions::default()
        },
    )
    .unwrap();
    let start = Instant::now();
    assert!(
        tokio::time::timeout(Duration::from_millis(20), patient.send(frame(9)))
            .await
            .is_err()
    );
    drop(patient);
    let took = start.elapsed();
    eprintln!("a send with a 30 s deadline, cancelled after 20 ms, and closing the port: {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}
