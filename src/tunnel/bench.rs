//! `obdgw bench tunnel`: the whole remote path on loopback, measured.
//!
//! Owns: the benchmark world (relay on 127.0.0.1:0, a gateway side with a virtual CAN bus
//! and an echoing DoIP car, an operator endpoint) and its measurements: raw-mirror frames/s
//! and loss, added latency at fixed frame rates, UDS round trips/s through the tunnel and
//! directly, and bulk TransferData MB/s.
//!
//! Also runs python-can-remote (a websocket CAN bridge) on the same machine in the same run,
//! when a Python with python-can and python-can-remote is given (`--python`), and prints
//! the ratio.
//!
//! Does not own: any protocol logic (it only drives the public APIs).

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
    Tunnel(TunnelBench),
    /// The daemon as separate processes: idle CPU and memory, and the time from a
    /// ticket's connection to the first answered diagnostic request.
    Daemon(crate::daemon::bench::DaemonBench),
}

/// `obdgw bench tunnel` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct TunnelBench {
    /// Frames per raw-mirror throughput run.
    #[arg(long, default_value_t = 200_000)]
    pub frames: u32,
    /// Paced raw-mirror rates to try, frames/s (comma-separated); each must lose nothing.
    #[arg(long, value_delimiter = ',', default_values_t = vec![200_000u32, 300_000, 400_000, 500_000])]
    pub mirror_rates: Vec<u32>,
    /// Seconds per fixed-rate latency run.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Python with python-can and python-can-remote, to measure python-can-remote in the
    /// same run (e.g. the interop venv's `bin/python`). Default: $TEST_OBDGW_PYTHON if set.
    #[arg(long, value_name = "PATH")]
    pub python: Option<std::path::PathBuf>,
    /// Frames for the python-can-remote run.
    #[arg(long, default_value_t = 50_000)]
    pub python_frames: u32,
    /// Tokio worker threads shared by the relay, gateway and operator of the benchmark;
    /// 0: one current-thread runtime (fewest cross-thread wake-ups; each real process —
    /// relay, gateway daemon, operator — has a runtime of its own).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// The python-can-remote side of the comparison (run with `--python`).
const CAN_REMOTE_SCRIPT: &str = include_str!("../../tests/interop/can_remote_bench.py");

/// Run `obdgw bench ...`.
pub fn run_bench(args: BenchArgs) -> ExitCode {
    let t = match args.what {
        BenchWhat::Tunnel(t) => t,
        BenchWhat::Daemon(d) => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("obdgw bench: starting the tokio runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            return match rt.block_on(crate::daemon::bench::run(d)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("obdgw bench daemon: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    let rt = if t.threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(t.threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("obdgw bench: starting the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench_tunnel(t)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("obdgw bench tunnel: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The bench car's largest TransferData request (maxNumberOfBlockLength), as many DoIP
/// ECUs announce.
const DOIP_MAX_BLOCK: u16 = 0xFFFF;

async fn car_handler(req: DiagRequest, replies: Replies) {
    let resp: Bytes = match &req.data[..] {
        [0x3E, 0x00] => Bytes::from_static(&[0x7E, 0x00]),
        [0x34, ..] => {
            let [hi, lo] = DOIP_MAX_BLOCK.to_be_bytes();
            Bytes::from(vec![0x74, 0x20, hi, lo])
        }
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

/// Run python-can-remote's comparison; `None` (with the reason printed) when it cannot run.
async fn can_remote_fps(python: &std::path::Path, frames: u32) -> Option<f64> {
    let script = std::env::temp_dir().join(format!("obdgw-can-remote-{}.py", std::process::id()));
    if let Err(e) = std::fs::write(&script, CAN_REMOTE_SCRIPT) {
        println!(
            "python-can-remote: not measured (writing {}: {e})",
            script.display()
        );
        return None;
    }
    let (py, sc) = (python.to_path_buf(), script.clone());
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(py)
                .arg(sc)
                .arg(frames.to_string())
                .output()
        }),
    )
    .await;
    let _ = std::fs::remove_file(&script);
    let out = match out {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
        Err(t) => {
            println!("python-can-remote: not measured (no result within 600 s: {t})");
            return None;
        }
    };
    let out = match out {
        Ok(Ok(o)) => o,
        Ok(Err(e)) | Err(e) => {
            println!(
                "python-can-remote: not measured ({}: {e})",
                python.display()
            );
            return None;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
    match parsed {
        Some(v) if out.status.success() => {
            let fps = v["fps"].as_f64().unwrap_or(0.0);
            println!(
                "python-can-remote 0.3 (websocket CAN bridge, same machine, same run): {} of {} frames received, {:.0} frames/s",
                v["received"], v["sent"], fps
            );
            Some(fps)
        }
        _ => {
            println!(
                "python-can-remote: not measured (exit {}): {}{}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            None
        }
    }
}

async fn bench_tunnel(args: TunnelBench) -> anyhow::Result<()> {
    let TunnelBench {
        frames,
        mirror_rates,
        seconds,
        python,
        python_frames,
        threads,
    } = args;
    let seconds = Duration::from_secs(seconds);
    let python = python.or_else(|| std::env::var_os("TEST_OBDGW_PYTHON").map(Into::into));
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
        super::policy::PolicyConfig::lab(),
    );
    let counters = gw.counters.clone();
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
    println!(
        "obdgw bench tunnel: loopback relay {relay}, in-process gateway and operator, {}",
        if threads == 0 {
            "one current-thread runtime".to_string()
        } else {
            format!("{threads} tokio worker threads")
        }
    );

    // 1. Raw mirror throughput: paced rates (the car's bus sends rate/1000 frames every
    //    millisecond), then an unpaced burst.
    let id = CanId::standard(0x123).ok_or_else(|| anyhow::anyhow!("id"))?;
    let mut best_lossless = 0.0f64;
    // Paced runs that lost frames: the bench fails at the end (after printing everything).
    let mut losses: Vec<String> = Vec::new();
    let mut mirror_run = async |rate: Option<u32>| -> (u32, f64) {
        while raw.rx.try_recv().is_ok() {}
        let cp = car_port.clone();
        let t0 = Instant::now();
        let sender = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let per_tick = rate.map_or(256, |r| (r / 1000).max(1));
            let mut i = 0u32;
            while i < frames {
                match rate {
                    Some(_) => {
                        tick.tick().await;
                    }
                    None => tokio::task::yield_now().await,
                }
                for _ in 0..per_tick.min(frames - i) {
                    let f = CanFrame::new(id, &i.to_be_bytes()).unwrap_or_else(|_| unreachable!());
                    let _ = cp.send(CanAnyFrame::Classic(f)).await;
                    i += 1;
                }
            }
        });
        let mut got = 0u32;
        let mut first = None;
        let mut last = t0;
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(500), raw.rx.recv()).await
        {
            got += 1;
            last = Instant::now();
            first.get_or_insert(last);
            if got == frames {
                break;
            }
        }
        let _ = sender.await;
        let secs = last
            .duration_since(first.unwrap_or(t0))
            .as_secs_f64()
            .max(1e-9);
        (got, got as f64 / secs)
    };
    for &rate in &mirror_rates {
        let (got, fps) = mirror_run(Some(rate)).await;
        let lost = frames - got;
        if lost == 0 {
            best_lossless = best_lossless.max(fps);
        } else {
            losses.push(format!("{lost} of {frames} at {rate} frames/s"));
        }
        println!(
            "raw mirror paced at {rate} frames/s: {got} of {frames} received, {lost} lost, {fps:.0} frames/s through the tunnel"
        );
    }
    let dropped_before = (
        gw_port.stats().rx_dropped,
        counters
            .mirror_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        served.remote.shed(),
    );
    let (got, fps) = mirror_run(None).await;
    println!(
        "raw mirror, unpaced burst of {frames}: {got} received ({} lost: gateway port queue {}, gateway mirror queue {}, operator local queue {}), {fps:.0} frames/s",
        frames - got,
        gw_port.stats().rx_dropped - dropped_before.0,
        counters
            .mirror_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            - dropped_before.1,
        served.remote.shed() - dropped_before.2,
    );
    println!("raw mirror, best lossless rate: {best_lossless:.0} frames/s");
    if let Some(py) = &python {
        if let Some(theirs) = can_remote_fps(py, python_frames).await
            && theirs > 0.0
        {
            println!(
                "raw mirror vs python-can-remote: {:.1}x (lossless obdgw rate / python-can-remote receive rate)",
                best_lossless / theirs
            );
        }
    } else {
        println!(
            "python-can-remote: not measured (give --python PATH or set TEST_OBDGW_PYTHON to a Python with python-can-remote)"
        );
    }

    // 2. Added latency at fixed rates: frames carry their send time; 1 ms ticks.
    let base = Instant::now();
    for (rate, bus) in [
        (4_000u32, "a saturated 500 kbit/s bus"),
        (8_000, "a saturated 1 Mbit/s bus"),
    ] {
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
        if (lat.len() as u64) < n {
            losses.push(format!(
                "{} of {n} at {rate} frames/s (latency run)",
                n - lat.len() as u64
            ));
        }
        lat.sort_unstable();
        println!(
            "raw mirror at {rate} frames/s ({bus}; bursts of {per_tick} each ms) for {}s: {} of {n} received, added latency p50 {} us, p99 {} us, max {} us",
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

    // 4. Bulk TransferData through the tunnel: RequestDownload, then blocks of the size the
    //    car announces (DoIP ECUs: up to 64 KiB), and of 4093 bytes (a CAN ECU's ISO-TP
    //    limit) for comparison; 8 MiB each.
    let r = via
        .request(
            0x1000,
            Bytes::from_static(&[0x34, 0x00, 0x44, 0, 0, 0, 0, 0, 0x80, 0, 0]),
        )
        .await?;
    anyhow::ensure!(r.len() == 4 && r[0] == 0x74, "unexpected answer {r:02X?}");
    let announced = u16::from_be_bytes([r[2], r[3]]) as usize - 2;
    for block_len in [announced, 4093] {
        let block = Bytes::from(vec![0x5Au8; block_len]);
        let blocks = (8usize << 20).div_ceil(block_len) as u32;
        let t = Instant::now();
        for i in 0..blocks {
            let mut b = Vec::with_capacity(block_len + 2);
            b.extend_from_slice(&[0x36, (i & 0xFF) as u8]);
            b.extend_from_slice(&block);
            let r = via.request(0x1000, Bytes::from(b)).await?;
            anyhow::ensure!(r[0] == 0x76, "unexpected answer {r:02X?}");
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "bulk TransferData through the tunnel, {block_len}-byte blocks: {:.1} MB/s ({} blocks in {:.2} s)",
            (blocks as f64 * block_len as f64) / s / 1e6,
            blocks,
            s
        );
    }
    stop.cancel();
    anyhow::ensure!(
        losses.is_empty(),
        "paced rates lost frames (each must lose nothing): {}",
        losses.join("; ")
    );
    Ok(())
}
