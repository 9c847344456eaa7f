//! Virtual CAN bus capacity: frames/s through the in-process bus ([`VirtualBus`]), through
//! the fault injector with no faults, and through the cross-process `sim:` bus (two nodes
//! in one process, over the unix socket hub).
//!
//! Run: `cargo bench --bench vbus -- --warm-up-time 1 --measurement-time 3`. Each iteration
//! sends `BATCH` frames and receives all of them; `Throughput::Elements` counts frames sent.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use obdgw::router::frame::{CanFdFrame, CanFrame, CanId};
use obdgw::vehicle::can::fault::{FaultConfig, FaultInjector};
use obdgw::vehicle::can::simbus::{SimBusOptions, SimPort};
use obdgw::vehicle::can::vbus::{PortOptions, VirtualBus};
use obdgw::vehicle::can::{CanAnyFrame, CanPort};
use std::hint::black_box;

const BATCH: usize = 1024;

fn frames() -> [(&'static str, CanAnyFrame); 2] {
    let id = CanId::standard(0x7E8).unwrap();
    [
        ("can8", CanFrame::new(id, &[0x11; 8]).unwrap().into()),
        ("canfd64", CanFdFrame::new(id, &[0x22; 64]).unwrap().into()),
    ]
}

fn opts() -> PortOptions {
    PortOptions {
        rx_capacity: 2 * BATCH,
        loopback: false,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn in_process(c: &mut Criterion) {
    let mut g = c.benchmark_group("vbus");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, frame) in frames() {
        // The non-async API: send_now and try_recv.
        g.bench_function(BenchmarkId::new("sync_1to1", name), |b| {
            let rt = rt();
            let _guard = rt.enter();
            let bus = VirtualBus::new("bench");
            let tx = bus.port_with(opts());
            let rx = bus.port_with(opts());
            b.iter(|| {
                for _ in 0..BATCH {
                    tx.send_now(black_box(frame)).unwrap();
                }
                for _ in 0..BATCH {
                    black_box(rx.try_recv().unwrap());
                }
            })
        });
        // Through the CanPort trait, awaited.
        g.bench_function(BenchmarkId::new("async_1to1", name), |b| {
            let rt = rt();
            let bus = rt.block_on(async { VirtualBus::new("bench") });
            let tx = bus.port_with(opts());
            let rx = bus.port_with(opts());
            b.iter(|| {
                rt.block_on(async {
                    for _ in 0..BATCH {
                        tx.send(black_box(frame)).await.unwrap();
                    }
                    for _ in 0..BATCH {
                        black_box(rx.recv().await.unwrap());
                    }
                })
            })
        });
    }
    let (_, can8) = frames()[0];
    g.bench_function("async_1to4_fanout/can8", |b| {
        let rt = rt();
        let bus = rt.block_on(async { VirtualBus::new("bench") });
        let tx = bus.port_with(opts());
        let rxs: Vec<_> = (0..4).map(|_| bus.port_with(opts())).collect();
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..BATCH {
                    tx.send(black_box(can8)).await.unwrap();
                }
                for rx in &rxs {
                    for _ in 0..BATCH {
                        black_box(rx.recv().await.unwrap());
                    }
                }
            })
        })
    });
    g.bench_function("fault_injector_passthrough/can8", |b| {
        let rt = rt();
        let bus = rt.block_on(async { VirtualBus::new("bench") });
        let tx = rt
            .block_on(async { FaultInjector::new(bus.port_with(opts()), FaultConfig::default()) });
        let rx = FaultInjector::new(bus.port_with(opts()), FaultConfig::default());
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..BATCH {
                    tx.send(black_box(can8)).await.unwrap();
                }
                for _ in 0..BATCH {
                    black_box(rx.recv().await.unwrap());
                }
            })
        })
    });
    g.finish();
}

fn cross_process(c: &mut Criterion) {
    let mut g = c.benchmark_group("simbus");
    g.throughput(Throughput::Elements(BATCH as u64));
    let (_, can8) = frames()[0];
    g.bench_function("2nodes/can8", |b| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let o = SimBusOptions {
            dir: Some(dir.path().to_path_buf()),
            rx_capacity: 4 * BATCH,
            ..SimBusOptions::default()
        };
        let (tx, rx) = rt.block_on(async {
            let tx = SimPort::open("bench", o.clone()).await.unwrap();
            let rx = SimPort::open("bench", o).await.unwrap();
            (tx, rx)
        });
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..BATCH {
                    tx.send(black_box(can8)).await.unwrap();
                }
                for _ in 0..BATCH {
                    black_box(rx.recv().await.unwrap());
                }
            })
        })
    });
    g.finish();
}

criterion_group!(benches, in_process, cross_process);
criterion_main!(benches);
