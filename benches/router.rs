//! Router capacity: frames/s through the sans-IO core and through the tokio driver.
//!
//! Run: `cargo bench --bench router`. Each iteration routes `BATCH` frames and drains the
//! sinks, so the figures include dequeuing; `Throughput::Elements` counts source frames.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use obdgw::router::{
    CanFdFrame, CanFrame, CanId, Frame, FrameFilter, FrameKind, IdRule, IsoTpAddr, IsoTpPdu,
    OverflowPolicy, PortId, RouteSpec, Router, RouterHandle, Timestamp,
};
use std::hint::black_box;

const BATCH: usize = 1024;

/// One source fanning out to `sinks` ports through a filtered route.
fn router(sinks: usize, filter: FrameFilter, cap: usize) -> (Router, PortId, Vec<PortId>) {
    let mut b = Router::builder();
    let src = b.add_port("src", cap).unwrap();
    let outs: Vec<PortId> = (0..sinks)
        .map(|i| b.add_port(format!("sink{i}"), cap).unwrap())
        .collect();
    b.add_route(RouteSpec {
        name: "r".into(),
        source: src,
        sinks: outs.clone(),
        filter,
        overflow: OverflowPolicy::Backpressure,
    })
    .unwrap();
    (b.build(), src, outs)
}

fn can_filter() -> FrameFilter {
    FrameFilter::new(
        &[FrameKind::Can, FrameKind::CanFd],
        &[
            "0x7E0/0x7F0".parse::<IdRule>().unwrap(),
            "0x100-0x1FF".parse().unwrap(),
        ],
    )
}

fn frames() -> [(&'static str, Frame); 3] {
    let can: Frame = CanFrame::new(CanId::standard(0x7E8).unwrap(), &[0x11; 8])
        .unwrap()
        .with_timestamp(Timestamp(1))
        .into();
    let fd: Frame = CanFdFrame::new(CanId::standard(0x7E8).unwrap(), &[0x22; 64])
        .unwrap()
        .into();
    let pdu: Frame = IsoTpPdu {
        addr: IsoTpAddr {
            tx_id: CanId::standard(0x7E0).unwrap(),
            rx_id: CanId::standard(0x7E8).unwrap(),
            ext: None,
        },
        data: Bytes::from(vec![0x36; 4095]),
        timestamp: Timestamp(1),
    }
    .into();
    [("can8", can), ("canfd64", fd), ("pdu4095", pdu)]
}

fn core(c: &mut Criterion) {
    let mut g = c.benchmark_group("router_core");
    g.throughput(Throughput::Elements(BATCH as u64));
    let cases: Vec<(String, Frame, usize, FrameFilter)> = {
        let [can, fd, pdu] = frames();
        vec![
            ("can8_1to1_filtered".into(), can.1.clone(), 1, can_filter()),
            ("can8_1to4_fanout".into(), can.1, 4, can_filter()),
            ("canfd64_1to1_filtered".into(), fd.1, 1, can_filter()),
            (
                "pdu4095_1to1".into(),
                pdu.1,
                1,
                FrameFilter::new(&[FrameKind::IsoTp], &[]),
            ),
        ]
    };
    for (name, frame, sinks, filter) in cases {
        let (mut r, src, outs) = router(sinks, filter, BATCH);
        g.bench_function(name, |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    let _ = black_box(r.route(src, black_box(frame.clone())));
                }
                for &o in &outs {
                    r.pop_batch(o, BATCH, |f| {
                        black_box(f);
                    });
                }
                r.take_wakes(|p| {
                    black_box(p);
                });
            })
        });
    }
    g.finish();
}

fn driver(c: &mut Criterion) {
    let mut g = c.benchmark_group("router_driver");
    g.throughput(Throughput::Elements(BATCH as u64));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    for (name, frame) in frames() {
        let kinds = [frame.kind()];
        let (r, src, outs) = router(1, FrameFilter::new(&kinds, &[]), 4 * BATCH);
        let h = RouterHandle::new(r);
        let tx = h.source(src);
        let sink = h.sink(outs[0]);
        // A long-lived sink task on another worker drains continuously; each iteration
        // sends BATCH frames in chunks of 64 and waits until the sink has seen them all.
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let (want_tx, mut want_rx) = tokio::sync::mpsc::channel::<usize>(1);
        rt.spawn(async move {
            let mut buf = Vec::with_capacity(512);
            while let Some(want) = want_rx.recv().await {
                let mut got = 0;
                while got < want {
                    buf.clear();
                    got += sink.recv_batch(&mut buf, 512).await.unwrap_or(0);
                }
                let _ = done_tx.send(());
            }
        });
        g.bench_function(format!("{name}_1to1"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    want_tx.send(BATCH).await.unwrap();
                    let mut sent = 0;
                    while sent < BATCH {
                        tx.send_all((0..64).map(|_| frame.clone())).await.unwrap();
                        sent += 64;
                    }
                });
                done_rx.recv().unwrap();
            })
        });
        h.close();
    }
    g.finish();
}

criterion_group!(benches, core, driver);
criterion_main!(benches);
