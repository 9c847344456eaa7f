//! ISO-TP throughput in the sans-IO core: reassembly (frames in, PDU out) and segmentation
//! (PDU in, frames out), for classic 8-byte frames and 64-byte CAN FD frames.
//!
//! `cargo bench --bench isotp -- --warm-up-time 1 --measurement-time 3`

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use obdgw::router::frame::{CanFrame, CanId};
use obdgw::vehicle::can::CanAnyFrame;
use obdgw::vehicle::isotp::{FrameMode, IsoTpChannel, IsoTpConfig, IsoTpEvent};
use std::hint::black_box;
use tokio::time::Instant;

fn cfgs(fd: bool, max: u32) -> (IsoTpConfig, IsoTpConfig) {
    let a = CanId::standard(0x7E0).unwrap();
    let b = CanId::standard(0x7E8).unwrap();
    let mut tx = IsoTpConfig::new(a, b);
    let mut rx = IsoTpConfig::new(b, a);
    for c in [&mut tx, &mut rx] {
        c.max_pdu_len = max;
        if fd {
            c.frame_mode = FrameMode::Fd { tx_dl: 64 };
        }
    }
    (tx, rx)
}

fn cts() -> CanAnyFrame {
    CanAnyFrame::Classic(CanFrame::new(CanId::standard(0x7E8).unwrap(), &[0x30, 0, 0]).unwrap())
}

/// Segment one PDU: every frame the sender emits (FC answered with CTS, BS 0, STmin 0).
fn segment(tx: &mut IsoTpChannel, data: Bytes, now: Instant, out: &mut Vec<CanAnyFrame>) {
    tx.send(now, data).unwrap();
    let mut first = true;
    while let Some(f) = tx.poll_transmit(now) {
        tx.on_tx_confirm(now);
        out.push(f);
        if first {
            first = false;
            if tx.is_sending() {
                tx.on_frame(now, &cts());
            }
        }
    }
    match tx.poll_event() {
        Some(IsoTpEvent::SendComplete(Ok(()))) => {}
        e => panic!("unexpected {e:?}"),
    }
}

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    let cases = [
        ("classic_8B", false, 4095usize),
        ("fd_64B", true, 4095),
        ("fd_64B", true, 65_536),
    ];

    let mut g = c.benchmark_group("isotp_reassembly");
    for (name, fd, len) in cases {
        let (txc, rxc) = cfgs(fd, 1 << 20);
        let data: Bytes = (0..len).map(|i| i as u8).collect::<Vec<_>>().into();
        let mut frames = Vec::new();
        segment(&mut IsoTpChannel::new(txc).unwrap(), data, now, &mut frames);
        let mut rx = IsoTpChannel::new(rxc).unwrap();
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new(name, len), &frames, |b, frames| {
            b.iter(|| {
                for f in frames {
                    rx.on_frame(now, black_box(f));
                    // Our flow control after the first frame.
                    if let Some(fc) = rx.poll_transmit(now) {
                        rx.on_tx_confirm(now);
                        black_box(fc);
                    }
                }
                match rx.poll_event() {
                    Some(IsoTpEvent::Received(p)) => black_box(p),
                    e => panic!("unexpected {e:?}"),
                }
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("isotp_segmentation");
    for (name, fd, len) in cases {
        let (txc, _) = cfgs(fd, 1 << 20);
        let data: Bytes = (0..len).map(|i| i as u8).collect::<Vec<_>>().into();
        let mut tx = IsoTpChannel::new(txc).unwrap();
        let mut out = Vec::with_capacity(len / 6 + 2);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new(name, len), &data, |b, data| {
            b.iter(|| {
                out.clear();
                segment(&mut tx, data.clone(), now, &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
