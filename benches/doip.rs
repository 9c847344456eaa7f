//! DoIP benches: codec encode/decode (messages/s) for 8 B, 4 KiB and 64 KiB diagnostic
//! payloads, and UDS-like round trips over loopback, client -> entity, with a trivial
//! handler (round trips/s, and bytes/s for TransferData-sized requests).

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use obdgw::vehicle::doip::entity::{DiagRequest, Entity, EntityConfig, FnHandler, Replies};
use obdgw::vehicle::doip::{Connection, DoipClientConfig};
use obdgw::wire::doip::{Decoded, DoipCodec, Repr};
use std::hint::black_box;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SIZES: [(usize, &str); 3] = [(8, "8B"), (4096, "4KiB"), (65536, "64KiB")];

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("doip_codec");
    for (size, name) in SIZES {
        let msg = Repr::DiagnosticMessage {
            source: 0x0E00,
            target: 0x1001,
            data: Bytes::from(vec![0x36; size]),
        };
        g.throughput(Throughput::Elements(1));
        let mut out = BytesMut::with_capacity(size + 64);
        g.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| {
                out.clear();
                black_box(&msg).write(2, &mut out);
                black_box(out.len())
            })
        });
        let wire = msg.to_bytes(2);
        let mut codec = DoipCodec::new(1 << 20);
        g.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter_batched(
                || BytesMut::from(&wire[..]),
                |mut buf| match codec.decode_frame(&mut buf) {
                    Ok(Some(Decoded::Message(m))) => black_box(m),
                    other => panic!("decode failed: {other:?}"),
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

async fn trivial(req: DiagRequest, replies: Replies) {
    // TransferData (0x36 seq ...) -> 0x76 seq; anything else -> positive response SID.
    let resp = match &req.data[..] {
        [0x36, seq, ..] => Bytes::from(vec![0x76, *seq]),
        [sid, rest @ ..] => {
            let mut r = Vec::with_capacity(1 + rest.len().min(2));
            r.push(sid | 0x40);
            r.extend_from_slice(&rest[..rest.len().min(2)]);
            Bytes::from(r)
        }
        [] => return,
    };
    let _ = replies.send(resp).await;
}

fn round_trips(c: &mut Criterion) {
    let mut g = c.benchmark_group("doip_roundtrip");
    for (flavour, rt) in [
        (
            "current_thread",
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        ),
        (
            "multi_thread2",
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        ),
    ] {
        let shutdown = CancellationToken::new();
        let conn = rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let cfg = EntityConfig {
                targets: vec![0x1001],
                announce_to: None,
                ..EntityConfig::default()
            };
            let entity = Entity::new(cfg, FnHandler(trivial));
            let s = shutdown.clone();
            tokio::spawn(async move { entity.run(listener, None, s).await });
            Connection::open(addr, DoipClientConfig::default())
                .await
                .unwrap()
        });
        g.throughput(Throughput::Elements(1));
        let req = Bytes::from_static(&[0x3E, 0x00]);
        g.bench_function(BenchmarkId::new("uds_3E00", flavour), |b| {
            b.to_async(&rt).iter(|| async {
                let r = conn.request(0x1001, req.clone()).await.unwrap();
                black_box(r)
            })
        });
        let block = Bytes::from({
            let mut v = vec![0x55u8; 4096];
            v[0] = 0x36;
            v[1] = 0x01;
            v
        });
        g.throughput(Throughput::Bytes(block.len() as u64));
        g.bench_function(BenchmarkId::new("transfer_data_4KiB", flavour), |b| {
            b.to_async(&rt).iter(|| async {
                let r = conn.request(0x1001, block.clone()).await.unwrap();
                black_box(r)
            })
        });
        shutdown.cancel();
    }
    g.finish();
}

criterion_group!(benches, codec, round_trips);
criterion_main!(benches);
