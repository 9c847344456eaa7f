//! Zero allocations per routed frame in steady state: a counting global allocator watches a
//! million frames go through the routing core, and through the tokio driver, after warm-up.

use bytes::Bytes;
use obdgw::router::{
    CanFdFrame, CanFrame, CanId, FrameFilter, FrameKind, IdRule, IsoTpAddr, IsoTpPdu,
    OverflowPolicy, RouteSpec, Router, RouterHandle, Timestamp,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The counter is process-wide: tests in this file take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Allocations made while `f` runs (the whole process counts, so keep other threads idle).
fn allocations_during(f: impl FnOnce()) -> u64 {
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    f();
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCS.load(Ordering::SeqCst)
}

const N: usize = 1_000_000;

fn build() -> (Router, [obdgw::router::PortId; 4]) {
    let mut b = Router::builder();
    let src = b.add_port("vehicle", 1024).unwrap();
    let mirror = b.add_port("mirror", 1024).unwrap();
    let diag = b.add_port("diag", 1024).unwrap();
    let fd = b.add_port("fd", 1024).unwrap();
    b.add_route(RouteSpec {
        name: "mirror".into(),
        source: src,
        sinks: vec![mirror],
        filter: FrameFilter::new(&[FrameKind::Can], &[IdRule::Range { lo: 0, hi: 0x7FF }]),
        overflow: OverflowPolicy::ShedOldest,
    })
    .unwrap();
    b.add_route(RouteSpec {
        name: "diag".into(),
        source: src,
        sinks: vec![diag],
        filter: FrameFilter::new(&[FrameKind::IsoTp], &["0x7E8/0x7F8".parse().unwrap()]),
        overflow: OverflowPolicy::Backpressure,
    })
    .unwrap();
    b.add_route(RouteSpec {
        name: "fd".into(),
        source: src,
        sinks: vec![fd, mirror],
        filter: FrameFilter::new(&[FrameKind::CanFd], &[]),
        overflow: OverflowPolicy::ShedOldest,
    })
    .unwrap();
    (b.build(), [src, mirror, diag, fd])
}

#[test]
fn core_routes_a_million_frames_without_allocating() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut r, [src, mirror, diag, fd]) = build();
    let can = CanFrame::new(CanId::standard(0x123).unwrap(), &[1; 8]).unwrap();
    let canfd = CanFdFrame::new(CanId::standard(0x456).unwrap(), &[2; 64]).unwrap();
    let pdu = IsoTpPdu {
        addr: IsoTpAddr {
            tx_id: CanId::standard(0x7E0).unwrap(),
            rx_id: CanId::standard(0x7E8).unwrap(),
            ext: None,
        },
        data: Bytes::from(vec![0x36; 4095]),
        timestamp: Timestamp(0),
    };
    let run = |n: usize, r: &mut Router| {
        let mut sink_count = 0usize;
        for i in 0..n {
            let f = match i % 3 {
                0 => can.into(),
                1 => canfd.into(),
                _ => pdu.clone().into(),
            };
            r.route(src, f).expect("queues are drained, nothing blocks");
            if i % 64 == 63 {
                for p in [mirror, diag, fd] {
                    sink_count += r.pop_batch(p, usize::MAX, drop);
                }
                r.take_wakes(|_| ());
            }
        }
        sink_count
    };
    run(10_000, &mut r); // warm-up
    let mut delivered = 0;
    let allocs = allocations_during(|| delivered = run(N, &mut r));
    assert_eq!(allocs, 0, "routing allocated {allocs} times for {N} frames");
    assert!(delivered > N, "fan-out delivered only {delivered}");
    let s = r.snapshot();
    assert_eq!(s.port("vehicle").unwrap().rx_frames as usize, N + 10_000);
    assert_eq!(s.port("diag").unwrap().shed, 0);
}

#[test]
fn driver_routes_a_million_frames_without_allocating() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (r, [src, mirror, _diag, _fd]) = build();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let h = RouterHandle::new(r);
    let tx = h.source(src);
    let sink = h.sink(mirror);
    let can = CanFrame::new(CanId::standard(0x123).unwrap(), &[1; 8]).unwrap();
    let mut out = Vec::with_capacity(256);
    let mut run = |n: usize| {
        rt.block_on(async {
            let mut sent = 0;
            let mut got = 0;
            while got < n {
                if sent < n {
                    let batch = 64.min(n - sent);
                    tx.send_all((0..batch).map(|_| can.into())).await.unwrap();
                    sent += batch;
                }
                out.clear();
                got += sink.recv_batch(&mut out, 256).await.unwrap();
            }
            got
        })
    };
    run(10_000);
    let mut got = 0;
    let allocs = allocations_during(|| got = run(N));
    assert_eq!(got, N);
    assert_eq!(allocs, 0, "driver allocated {allocs} times for {N} frames");
}
