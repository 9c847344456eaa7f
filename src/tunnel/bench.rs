//! `obdgw bench tunnel`: the whole remote path on loopback, measured.
//!
//! Owns: the benchmark world (relay on 127.0.0.1:0, a gateway side with a virtual CAN bus
//! and an echoing DoIP car, an operator endpoint) and its measurements: raw-mirror frames/s
//! and loss, added latency at fixed frame rates, UDS round trips/s through the tunnel and
//! directly, and bulk TransferData MB/s.
//!
//! Does not own: any protocol logic (it only drives the public APIs) or the python-can-remote
//! comparison (not measured here).

use super::client::ClientConfig;
use super::gateway::{self, Gateway};
use crate::operator::socketcand::BusProvider;
use crate::operator::tunnel::{DiagTiming, DoipServe, TunnelBuses, start};
use crate::relay::{RelayConfig, SessionTokens, StaticTokens};
use crate::router::frame::{CanFrame, CanId};
use crate::vehicle::can::vbus::{PortOptions, VirtualBus};
use crate::vehicle::can::{CanAnyFrame, CanPort};
use crate::vehicle::doip::entity::{DiagRequest, Entity, EntityConfig, FnHandler, Replies};
use crate::vehicle::doip::{Connection, DoipClientConfig};
use crate::wire::tunnel::Token;
use bytes::Bytes;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SID: &str = "00000000-0000-4000-8000-000000000001";

/// `obdgw bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

/// What to measure.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchWhat {
    /// The tunnel end to end on loopback (relay, gateway side, operator endpoint).
    Tunnel {
        /// Frames for the maximum-rate mirror run.
        #[arg(long, default_value_t = 200_000)]
        frames: u32,
        /// Seconds per fixed-rate latency run.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
}

/// Run `obdgw bench ...`.
pub fn run_bench(args: BenchArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("obdgw bench: starting the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let BenchWhat::Tunnel { frames, seconds } = args.what;
    match rt.block_on(bench_tunnel(frames, Duration::from_secs(seconds))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("obdgw bench tunnel: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn car_handler(req: DiagRequest, replies: Replies) {
    let resp: Bytes = match &req.data[..] {
        [0x3E, 0x00] => Bytes::from_static(&[0x7E, 0x00]),
        [0x36, seq, ..] => Bytes::from(vec![0x76, *seq]),
        [0x22, 0xF1, 0x90] => Bytes::from_static(b"\x62\xF1\x901FTFW1E87MFA17359"),
        [sid, ..] => Bytes::from(vec![0x7F, *sid, 0x11]),
        [] => return,
    };
    let _ = replies.send(resp).await;
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn bench_tunnel(frames: u32, seconds: Duration) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let tokens = Arc::new(StaticTokens::new([SessionTokens {
        id: SID.into(),
        gateway_token: "gw".into(),
        operator_token: "op".into(),
    }]));
    let rl = TcpListener::bind("127.0.0.1:0").await?;
    let relay = rl.local_addr()?;
    tokio::spawn(crate::relay::run(
        rl,
        None,
        tokens,
        RelayConfig::default(),
        stop.clone(),
    ));
    let url = format!("ws://{relay}/");

    // The car: an echoing DoIP entity and a virtual bus.
    let cl = TcpListener::bind("127.0.0.1:0").await?;
    let car_addr = cl.local_addr()?;
    let ent_cfg = EntityConfig {
        targets: vec![0x1000],
        announce_to: None,
        ..EntityConfig::default()
    };
    let car = Entity::new(ent_cfg.clone(), FnHandler(car_handler));
    let s = stop.clone();
    tokio::spawn(async move { car.run(cl, None, s).await });
    let bus = VirtualBus::new("can0");
    let gw_port = Arc::new(bus.port_with(PortOptions {
        rx_capacity: 1 << 16,
        loopback: false,
    }));
    let car_port = Arc::new(bus.port());

    let gw = Gateway::new(
        Some((car_addr, DoipClientConfig::default())),
        vec![("can0".to_string(), gw_port.clone())],
        true,
    );
    let s = stop.clone();
    let gurl = url.clone();
    tokio::spawn(async move {
        gateway::run(
            ClientConfig::new(gurl),
            SID,
            &crate::config::Secret::new("gw"),
            gw,
            s,
        )
        .await
    });
    let dl = TcpListener::bind("127.0.0.1:0").await?;
    let served = start(
        ClientConfig::new(url.clone()),
        SID,
        Token("op".into()),
        Some(DoipServe {
            listener: dl,
            udp: None,
            config: ent_cfg,
            fetch_vin: false,
        }),
        None,
        DiagTiming::default(),
        stop.clone(),
    )
    .await?;
    tokio::time::timeout(Duration::from_secs(10), served.remote.wait_up())
        .await
        .map_err(|_| anyhow::anyhow!("the operator did not reach the gateway within 10 s"))?;
    let buses = TunnelBuses::new(served.remote.clone(), vec!["can0".into()]);
    let mut raw = buses
        .open_raw("can0")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("obdgw bench tunnel: loopback relay {relay}, in-process gateway and operator");

    // 1. Raw mirror at maximum rate (the sender yields every 256 frames).
    let id = CanId::standard(0x123).ok_or_else(|| anyhow::anyhow!("id"))?;
    let t0 = Instant::now();
    let sender = {
        let car_port = car_port.clone();
        tokio::spawn(async move {
            for i in 0..frames {
                let f = CanFrame::new(id, &i.to_be_bytes()).unwrap_or_else(|_| unreachable!());
                let _ = car_port.send(CanAnyFrame::Classic(f)).await;
                if i % 256 == 255 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let mut got = 0u32;
    let mut last = t0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), raw.rx.recv()).await {
        got += 1;
        last = Instant::now();
        if got == frames {
            break;
        }
    }
    let _ = sender.await;
    let secs = last.duration_since(t0).as_secs_f64().max(1e-9);
    println!(
        "raw mirror, max rate: {frames} frames sent, {got} received ({} lost: gateway port queue {}, operator local queue {}), {:.0} frames/s",
        frames - got,
        gw_port.stats().rx_dropped,
        served.remote.shed(),
        got as f64 / secs
    );

    // 2. Added latency at fixed rates: frames carry their send time; 1 ms ticks.
    let base = Instant::now();
    for rate in [4_000u32, 8_000] {
        while raw.rx.try_recv().is_ok() {}
        let per_tick = rate / 1000;
        let n = rate as u64 * seconds.as_secs();
        let cp = car_port.clone();
        let sender = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut sent = 0u64;
            while sent < n {
                tick.tick().await;
                for _ in 0..per_tick {
                    let ns = base.elapsed().as_nanos() as u64;
                    let f = CanFrame::new(id, &ns.to_be_bytes()).unwrap_or_else(|_| unreachable!());
                    let _ = cp.send(CanAnyFrame::Classic(f)).await;
                    sent += 1;
                }
            }
        });
        let mut lat = Vec::with_capacity(n as usize);
        while (lat.len() as u64) < n {
            match tokio::time::timeout(Duration::from_millis(500), raw.rx.recv()).await {
                Ok(Some((f, _))) => {
                    let d = f.data();
                    if d.len() == 8 {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(d);
                        let sent = u64::from_be_bytes(b);
                        lat.push((base.elapsed().as_nanos() as u64).saturating_sub(sent));
                    }
                }
                _ => break,
            }
        }
        let _ = sender.await;
        lat.sort_unstable();
        println!(
            "raw mirror at {rate} frames/s for {}s: {} of {n} received, added latency p50 {} us, p99 {} us, max {} us",
            seconds.as_secs(),
            lat.len(),
            percentile(&lat, 0.50) / 1000,
            percentile(&lat, 0.99) / 1000,
            lat.last().copied().unwrap_or(0) / 1000
        );
    }

    // 3. UDS round trips/s, through the tunnel and directly.
    let cfg = DoipClientConfig {
        tester_address: 0x0E80,
        ..DoipClientConfig::default()
    };
    let via = Connection::open(served.doip.unwrap_or(car_addr), cfg.clone()).await?;
    let direct = Connection::open(car_addr, cfg).await?;
    for (name, c) in [("through the tunnel", &via), ("directly", &direct)] {
        let n = 2000u32;
        let t = Instant::now();
        for _ in 0..n {
            let r = c.request(0x1000, Bytes::from_static(&[0x3E, 0x00])).await?;
            anyhow::ensure!(r[..] == [0x7E, 0x00], "unexpected answer {r:02X?}");
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "UDS 3E 00 round trips {name}: {:.0}/s ({:.0} us each)",
            n as f64 / s,
            s * 1e6 / n as f64
        );
    }

    // 4. Bulk TransferData (4093-byte blocks, 8 MiB) through the tunnel.
    let block = Bytes::from(vec![0x5Au8; 4093]);
    let blocks = 2048u32;
    let t = Instant::now();
    for i in 0..blocks {
        let mut b = Vec::with_capacity(4095);
        b.extend_from_slice(&[0x36, (i & 0xFF) as u8]);
        b.extend_from_slice(&block);
        let r = via.request(0x1000, Bytes::from(b)).await?;
        anyhow::ensure!(r[0] == 0x76, "unexpected answer {r:02X?}");
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "bulk TransferData through the tunnel: {:.1} MB/s ({} blocks of 4093 bytes in {:.2} s)",
        (blocks as f64 * 4093.0) / s / 1e6,
        blocks,
        s
    );
    stop.cancel();
    Ok(())
}
