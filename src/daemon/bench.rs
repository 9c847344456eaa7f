//! `obdgw bench daemon`: what the product path costs, measured on loopback with the real
//! binary as separate processes (the cloud simulator with its relay, a simulated car, and
//! `obdgw run` in cloud-driven mode).
//!
//! Owns: two measurements. (1) The idle daemon: CPU time (from `/proc/PID/stat`) and peak
//! RSS (`/proc/PID/status`) over a window with the status websocket connected and no
//! ticket. (2) Session start-up: for each of N tickets, the time from the connection event
//! (the back office's join) to the first diagnostic request answered through the tunnel
//! (UDS 22 F190 at an operator endpoint), then the ticket is closed and the daemon must
//! close the session before the next one.
//!
//! Does not own: any of the parts (it starts them); the operator endpoint runs in this
//! process, so its cost is not part of the daemon's figures.

use super::control::{self, Command};
use crate::operator::tunnel::{DiagTiming, DoipServe, start};
use crate::sim::cloud::{DEMO_CONNECTOR_UUID, DEMO_PINCODE};
use crate::tunnel::client::ClientConfig;
use crate::vehicle::doip::entity::EntityConfig;
use crate::wire::tunnel::Token;
use anyhow::{Context, bail};
use serde_json::Value;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const VIN: &str = "WVWZZZ1KZAW000042";

/// `obdgw bench daemon` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct DaemonBench {
    /// Seconds of the idle measurement (status socket connected, no ticket).
    #[arg(long, default_value_t = 60)]
    pub idle_secs: u64,
    /// Tickets for the session start-up measurement.
    #[arg(long, default_value_t = 50)]
    pub tickets: u32,
}

/// Children killed on drop.
struct Kids(Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Start `obdgw ARGS` with stdout piped; returns the child and a receiver of its lines.
fn spawn(
    exe: &Path,
    args: &[&str],
    sim_dir: &Path,
    stderr: &Path,
) -> anyhow::Result<(Child, std::sync::mpsc::Receiver<String>)> {
    let mut child = std::process::Command::new(exe)
        .args(args)
        .env("OBDGW_SIM_DIR", sim_dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr)?)
        .spawn()
        .with_context(|| format!("starting obdgw {}", args.join(" ")))?;
    let out = child.stdout.take().context("piped stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    Ok((child, rx))
}

fn wait_line<T>(
    rx: &std::sync::mpsc::Receiver<String>,
    what: &str,
    pick: impl Fn(&str) -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                if let Some(v) = pick(&l) {
                    return Ok(v);
                }
            }
            Err(_) => bail!("no {what} within 60 s"),
        }
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// Resident set size, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

async fn status(socket: &Path) -> Value {
    match control::call(socket, Command::Status, Duration::from_secs(2)).await {
        Ok(r) => r
            .status
            .and_then(|s| serde_json::to_value(&s).ok())
            .unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

async fn until(socket: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if pred(&status(socket).await) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the daemon did not reach `{what}` within 30 s")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Run the benchmark and print its report.
pub async fn run(b: DaemonBench) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the obdgw binary")?;
    let dir = tempfile_dir()?;
    let sim_dir = dir.join("bus");
    std::fs::create_dir_all(&sim_dir)?;
    let mut kids = Kids(Vec::new());

    let (c, cloud) = spawn(
        &exe,
        &[
            "sim",
            "cloud",
            "--listen",
            "127.0.0.1:0",
            "--relay-listen",
            "127.0.0.1:0",
        ],
        &sim_dir,
        &dir.join("cloud.stderr"),
    )?;
    kids.0.push(c);
    let base_url = wait_line(&cloud, "cloud URL", |l| {
        l.starts_with("http://").then(|| l.trim().to_string())
    })?;
    let relay_url = wait_line(&cloud, "relay URL", |l| {
        l.strip_prefix("relay ").map(|u| u.trim().to_string())
    })?;
    let (c, car) = spawn(
        &exe,
        &[
            "sim",
            "vehicle",
            "--can",
            "sim:bench",
            "--doip-listen",
            "127.0.0.1:0",
            "--vin",
            VIN,
        ],
        &sim_dir,
        &dir.join("car.stderr"),
    )?;
    kids.0.push(c);
    let car_doip = wait_line(&car, "the car's DoIP address", |l| {
        l.strip_prefix("obdgw sim vehicle: DoIP on ")
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_string)
    })?;
    wait_line(&car, "the car's ready line", |l| {
        (l == "obdgw sim vehicle: ready").then_some(())
    })?;
    let socket = dir.join("control.sock");
    let config = dir.join("obdgw.toml");
    std::fs::write(
        &config,
        format!(
            r#"[log]
level = "warn"
format = "text"

[daemon]
state_dir = "{state}"
control_socket = "{socket}"

[cloud]
base_url = "{base_url}"
connector_uuid = "{DEMO_CONNECTOR_UUID}"
pincode = "{DEMO_PINCODE}"

[[can]]
name = "car"
interface = "sim:bench"

[tunnel]
relay_url = "{relay_url}"
doip_vehicle = "{car_doip}"
can_interfaces = ["car"]
"#,
            state = dir.join("state").display(),
            socket = socket.display(),
        ),
    )?;
    let (c, _) = spawn(
        &exe,
        &["run", "--config", config.to_str().unwrap_or_default()],
        &sim_dir,
        &dir.join("run.stderr"),
    )?;
    let pid = c.id();
    kids.0.push(c);
    until(&socket, "logged in, status socket up", |v| {
        v["cloud"]["logged_in"] == true && v["cloud"]["status_socket"] == "up"
    })
    .await?;

    // (1) Idle.
    println!(
        "idle: {} s with the status socket connected, no ticket ...",
        b.idle_secs
    );
    let cpu0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    let mut peak = rss_kib(pid)?;
    while t0.elapsed() < Duration::from_secs(b.idle_secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak = peak.max(rss_kib(pid)?);
    }
    let cpu = cpu_seconds(pid)? - cpu0;
    let share = 100.0 * cpu / t0.elapsed().as_secs_f64();
    println!(
        "idle: cpu {cpu:.3} s in {:.0} s = {share:.3} % of a core (target <= 0.1 %); peak RSS {:.1} MiB (target <= 8 MB)",
        t0.elapsed().as_secs_f64(),
        peak as f64 / 1024.0
    );

    // (2) Session start-up.
    let api = crate::sim::cloud::demo_client(&base_url)?;
    let http = crate::tls::http_client(Duration::from_secs(10)).map_err(anyhow::Error::msg)?;
    let mut times = Vec::new();
    for i in 0..b.tickets {
        let ticket = api
            .create_ticket(&crate::sim::cloud::demo_ticket(VIN))
            .await
            .with_context(|| format!("creating ticket {i}"))?;
        let stop = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let joined_at = Instant::now();
        let (session, token) = crate::sim::cloud::admin_join(&http, &base_url, ticket.id)
            .await
            .map_err(anyhow::Error::msg)?;
        let served = start(
            ClientConfig::new(relay_url.clone()),
            &session,
            Token(token),
            Some(DoipServe {
                listener,
                udp: None,
                config: EntityConfig {
                    targets: vec![0x1000],
                    announce_to: None,
                    ..EntityConfig::default()
                },
                fetch_vin: false,
            }),
            None,
            DiagTiming::default(),
            stop.clone(),
        )
        .await?;
        let entity = served.doip.context("the operator's DoIP entity")?;
        let mut client = crate::vehicle::doip::DoipClient::new(
            entity,
            crate::vehicle::doip::DoipClientConfig {
                response_timeout_ms: 30_000,
                pending_timeout_ms: 30_000,
                ..Default::default()
            },
        );
        let r = client
            .request(0x1000, bytes::Bytes::from_static(&[0x22, 0xF1, 0x90]))
            .await
            .with_context(|| format!("ticket {i}: the first request"))?;
        let took = joined_at.elapsed();
        if !r.starts_with(&[0x62, 0xF1, 0x90]) {
            bail!("ticket {i}: answered {r:02X?}");
        }
        times.push(took);
        http.post(format!("{base_url}/admin/tickets/{}/close", ticket.id))
            .send()
            .await?
            .error_for_status()?;
        until(&socket, "no session", |v| {
            v["session"].is_null() && v["ticket"].is_null()
        })
        .await?;
        stop.cancel();
        let _ = served.done.await;
    }
    times.sort();
    println!(
        "session start-up over {} tickets (join -> first answered 22 F190 through the tunnel): p50 {:.0} ms, p99 {:.0} ms (target <= 500 ms), max {:.0} ms",
        times.len(),
        percentile(&times, 0.5).as_secs_f64() * 1000.0,
        percentile(&times, 0.99).as_secs_f64() * 1000.0,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
    );
    println!(
        "daemon RSS after the tickets: {:.1} MiB",
        rss_kib(pid)? as f64 / 1024.0
    );
    drop(kids);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("obdgw-bench-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
