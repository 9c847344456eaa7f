//! Simulated ECU throughput in the sans-IO core (no transport): how many UDS round trips and
//! how many TransferData bytes per second one ECU handles, so transport benches can tell
//! whether the simulator or the transport is the bottleneck.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use obdgw::sim::ecu::{DEFAULT_VIN, Ecu, EcuAction, EcuConfig, EcuIndex, Vehicle, default_key};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn respond(a: EcuAction) -> bytes::Bytes {
    match a {
        EcuAction::Respond(b) => b,
        other => panic!("expected a response, got {other:?}"),
    }
}

/// Programming session, unlocked, a 64 MiB download open.
fn flashing_ecu(now: &mut Instant) -> Ecu {
    let mut c = EcuConfig::engine(DEFAULT_VIN);
    c.flash.size = 64 << 20;
    c.flash.require_erase = false;
    c.flash.max_block_length = 65_535;
    let mut e = Ecu::new(c, *now);
    respond(e.handle(&[0x10, 0x02], false, *now));
    let seed = respond(e.handle(&[0x27, 0x01], false, *now));
    let key = default_key(0x01, [seed[2], seed[3], seed[4], seed[5]]);
    respond(e.handle(&[0x27, 0x02, key[0], key[1], key[2], key[3]], false, *now));
    open_download(&mut e, now);
    e
}

fn open_download(e: &mut Ecu, now: &mut Instant) {
    respond(e.handle(&[0x34, 0x00, 0x44, 0, 0, 0, 0, 0x04, 0, 0, 0], false, *now));
}

fn bench_round_trips(c: &mut Criterion) {
    let t0 = Instant::now();
    let mut g = c.benchmark_group("ecu_round_trip");
    g.throughput(Throughput::Elements(1));
    let mut v = Vehicle::standard(DEFAULT_VIN, t0);
    g.bench_function("rdbi_vin_physical", |b| {
        b.iter(|| black_box(v.handle(EcuIndex(0), black_box(&[0x22, 0xF1, 0x90]), t0)))
    });
    g.bench_function("tester_present", |b| {
        b.iter(|| black_box(v.handle(EcuIndex(0), black_box(&[0x3E, 0x00]), t0)))
    });
    g.bench_function("obd_01_rpm_speed_functional_4_ecus", |b| {
        b.iter(|| black_box(v.handle_functional(black_box(&[0x01, 0x0C, 0x0D]), t0)))
    });
    g.finish();
}

fn bench_transfer(c: &mut Criterion) {
    let mut g = c.benchmark_group("ecu_transfer_data");
    for block in [4093usize, 65_533] {
        let mut now = Instant::now();
        let mut e = flashing_ecu(&mut now);
        let mut req = vec![0u8; 2 + block];
        req[0] = 0x36;
        for (i, b) in req.iter_mut().enumerate().skip(2) {
            *b = i as u8;
        }
        let mut counter: u8 = 1;
        g.throughput(Throughput::Bytes(block as u64));
        g.bench_function(format!("block_{block}"), |b| {
            b.iter(|| {
                if e.download_progress().unwrap_or(0) as usize + block > 64 << 20 {
                    // Re-open the download (rare, outside the steady state).
                    e = flashing_ecu(&mut now);
                    counter = 1;
                    now += Duration::from_millis(1);
                }
                req[1] = counter;
                let r = e.handle(&req, false, now);
                counter = counter.wrapping_add(1);
                black_box(r)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_round_trips, bench_transfer);
criterion_main!(benches);
