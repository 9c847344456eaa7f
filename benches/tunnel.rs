//! Tunnel capacity: codec records/s (8-byte CAN frames in batches of 64, 4 KiB PDUs) and
//! session throughput (two sessions wired back to back, acks included).

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use obdgw::router::frame::{CanFrame, CanId, Timestamp};
use obdgw::tunnel::{Event, Session, SessionConfig, Transmit};
use obdgw::wire::tunnel::{
    Control, Limits, PduRecord, PeerInfo, RecordBody, RecordRepr, Role, Token, Welcome, emit_batch,
    parse_batch,
};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn can_record(i: u32) -> RecordRepr {
    let f = CanFrame::new(
        CanId::standard((i % 0x7FF) as u16).unwrap(),
        &i.to_be_bytes().repeat(2),
    )
    .unwrap()
    .with_timestamp(Timestamp(i as u64 * 1000));
    RecordRepr {
        channel: 1,
        flags: 0,
        body: RecordBody::Can(f),
    }
}

fn pdu_record(len: usize) -> RecordRepr {
    RecordRepr {
        channel: 2,
        flags: 0,
        body: RecordBody::IsoTp(PduRecord {
            timestamp: Timestamp(1),
            data: Bytes::from(vec![0x36; len]),
        }),
    }
}

fn codec(c: &mut Criterion) {
    let cans: Vec<RecordRepr> = (0..64).map(can_record).collect();
    let mut g = c.benchmark_group("tunnel_codec");
    g.throughput(Throughput::Elements(64));
    let mut out = BytesMut::with_capacity(4096);
    g.bench_function("encode_can8_batch64", |b| {
        b.iter(|| {
            out.clear();
            emit_batch(0, 1, 0, black_box(&cans).iter(), &mut out);
            black_box(out.len())
        })
    });
    let mut enc = BytesMut::new();
    emit_batch(0, 1, 0, cans.iter(), &mut enc);
    let msg = enc.freeze();
    let limits = Limits::default();
    let mut recs = Vec::with_capacity(64);
    g.bench_function("decode_can8_batch64", |b| {
        b.iter(|| {
            recs.clear();
            parse_batch(black_box(&msg), &limits, &mut recs).unwrap();
            black_box(recs.len())
        })
    });
    let pdu = vec![pdu_record(4096)];
    g.throughput(Throughput::Elements(1));
    let mut out = BytesMut::with_capacity(8192);
    g.bench_function("encode_pdu4k", |b| {
        b.iter(|| {
            out.clear();
            emit_batch(0, 1, 0, black_box(&pdu).iter(), &mut out);
            black_box(out.len())
        })
    });
    let mut enc = BytesMut::new();
    emit_batch(0, 1, 0, pdu.iter(), &mut enc);
    let msg = enc.freeze();
    g.bench_function("decode_pdu4k", |b| {
        b.iter(|| {
            recs.clear();
            parse_batch(black_box(&msg), &limits, &mut recs).unwrap();
            black_box(recs.len())
        })
    });
    g.finish();
}

/// Two attached sessions, wired back to back without a relay.
fn pair(now: Instant) -> (Session, Session) {
    let sid = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab";
    let mut a = Session::new(
        SessionConfig::new(Role::Gateway, sid, Token("a".into()), 1),
        now,
    );
    let mut b = Session::new(
        SessionConfig::new(Role::Operator, sid, Token("b".into()), 2),
        now,
    );
    let mut hellos = vec![];
    for s in [&mut a, &mut b] {
        s.connected(now);
        let Some(Transmit::Text(t)) = s.poll_transmit(now) else {
            panic!("no hello")
        };
        let Ok(Control::Hello(h)) = Control::parse(&t) else {
            panic!("bad hello")
        };
        hellos.push(h);
    }
    let welcome = Control::Welcome(Welcome {
        version: 1,
        session: sid.into(),
        peer_connected: true,
        keepalive_ms: 5000,
    })
    .to_text();
    for (i, s) in [&mut a, &mut b].into_iter().enumerate() {
        s.handle_text(now, &welcome).unwrap();
        s.handle_text(
            now,
            &Control::Peer(PeerInfo::from_hello(&hellos[1 - i])).to_text(),
        )
        .unwrap();
    }
    (a, b)
}

/// Move everything due from `from` to `to`; returns records delivered to `to`.
fn pump(from: &mut Session, to: &mut Session, now: Instant) -> usize {
    let mut n = 0;
    while let Some(t) = from.poll_transmit(now) {
        match t {
            Transmit::Text(x) => to.handle_text(now, &x).unwrap(),
            Transmit::Binary(b) => to.handle_binary(now, b).unwrap(),
        }
    }
    while let Some(e) = to.poll_event() {
        if let Event::Record(r) = e {
            black_box(&r);
            n += 1;
        }
    }
    n
}

fn session(c: &mut Criterion) {
    let mut g = c.benchmark_group("tunnel_session");
    for (name, rec, per_round) in [
        ("can8_records", can_record(7), 4096usize),
        ("pdu4k_records", pdu_record(4096), 512),
    ] {
        g.throughput(Throughput::Elements(per_round as u64));
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        let mut now = t0;
        g.bench_function(name, |bch| {
            bch.iter(|| {
                // Each round: queue records, flush (deadline passed), deliver, ack back.
                let mut delivered = 0;
                let mut queued = 0;
                while delivered < per_round {
                    while queued < per_round && a.send(now, rec.clone(), false).is_ok() {
                        queued += 1;
                    }
                    now += Duration::from_millis(1);
                    delivered += pump(&mut a, &mut b, now);
                    now += Duration::from_millis(20);
                    pump(&mut b, &mut a, now);
                    while a.poll_event().is_some() {}
                }
                delivered
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codec, session);
criterion_main!(benches);
