//! Child processes of the real binary for process-level tests: stdout lines as readiness
//! signals, stderr in files, everything killed on drop and reported on failure.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a process may take to print what the test waits for (debug builds on a loaded
/// 2-core machine); never reached when things work.
pub const READY: Duration = Duration::from_secs(60);
/// Upper bound for a whole python client run (the 1 MiB download included).
pub const CLIENT: Duration = Duration::from_secs(240);

/// One child process: its stdout lines arrive on `lines`, its stderr goes to a file.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
    pub lines: mpsc::UnboundedReceiver<String>,
    /// Every stdout line received so far, for failure messages.
    pub seen: Vec<String>,
    pub stderr: PathBuf,
}

/// The children of one test: all killed (and reaped) when dropped, also on panic.
pub struct Procs {
    pub dir: tempfile::TempDir,
    pub procs: Vec<Proc>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

impl Procs {
    pub fn new() -> Procs {
        Procs {
            dir: tempfile::tempdir().expect("a temporary directory"),
            procs: Vec::new(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The directory of the `sim:NAME` bus sockets of this test.
    pub fn sim_dir(&self) -> PathBuf {
        self.path("bus")
    }

    /// Start `obdgw ARGS`; returns its index.
    pub fn spawn(&mut self, name: &'static str, args: &[&str], env: &[(&str, &str)]) -> usize {
        let stderr = self.path(&format!("{name}.stderr"));
        let err_file = std::fs::File::create(&stderr).expect("stderr file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_obdgw"));
        cmd.args(args)
            .env("OBDGW_SIM_DIR", self.sim_dir())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start obdgw {name}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.procs.push(Proc {
            name,
            child,
            lines,
            seen: Vec::new(),
            stderr,
        });
        self.procs.len() - 1
    }

    /// Wait for a stdout line of process `i` that `pick` accepts; fail with everything the
    /// children said when it exits or stays silent too long.
    pub async fn line<T>(&mut self, i: usize, what: &str, pick: impl Fn(&str) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + READY;
        loop {
            let p = &mut self.procs[i];
            match tokio::time::timeout_at(deadline, p.lines.recv()).await {
                Ok(Some(l)) => {
                    let v = pick(&l);
                    p.seen.push(l);
                    if let Some(v) = v {
                        return v;
                    }
                }
                Ok(None) => {
                    let name = p.name;
                    self.fail(&format!("obdgw {name} ended before printing {what}"))
                }
                Err(_) => {
                    let name = p.name;
                    self.fail(&format!(
                        "obdgw {name} did not print {what} within {READY:?}"
                    ))
                }
            }
        }
    }

    /// Wait until process `i` exits (its stdout closes); its exit status.
    pub async fn exit(&mut self, i: usize, what: &str) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + READY;
        loop {
            let p = &mut self.procs[i];
            match tokio::time::timeout_at(deadline, p.lines.recv()).await {
                Ok(Some(l)) => p.seen.push(l),
                Ok(None) => break,
                Err(_) => {
                    let name = p.name;
                    self.fail(&format!(
                        "obdgw {name} did not exit {what} within {READY:?}"
                    ))
                }
            }
        }
        match self.procs[i].child.wait() {
            Ok(s) => s,
            Err(e) => self.fail(&format!("waiting for obdgw {}: {e}", self.procs[i].name)),
        }
    }

    /// Panic with `why` and the stdout and stderr of every child.
    pub fn fail(&mut self, why: &str) -> ! {
        panic!("{why}\n{}", self.report())
    }

    pub fn report(&mut self) -> String {
        let mut s = String::new();
        for p in &mut self.procs {
            while let Ok(l) = p.lines.try_recv() {
                p.seen.push(l);
            }
            let status = match p.child.try_wait() {
                Ok(Some(st)) => format!("exited: {st}"),
                Ok(None) => "running".to_string(),
                Err(e) => format!("unknown: {e}"),
            };
            s.push_str(&format!(
                "\n===== obdgw {} ({status}) stdout:\n{}\n----- stderr (last 40 lines):\n{}\n",
                p.name,
                p.seen.join("\n"),
                tail(&p.stderr, 40)
            ));
        }
        s
    }
}

/// The last `n` lines of a file (at most its last 64 KiB).
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return "(no stderr file)".into();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn addr_after(line: &str, prefix: &str) -> Option<SocketAddr> {
    line.trim_start()
        .strip_prefix(prefix)?
        .split(|c: char| c.is_whitespace() || c == ',')
        .next()?
        .parse()
        .ok()
}

/// Run a python client; returns its stdout. Fails with the children's output on error.
pub async fn python(procs: &mut Procs, python: &Path, script: &str, args: &[String]) -> String {
    let child = tokio::process::Command::new(python)
        .arg(super::interop_script(script))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = match tokio::time::timeout(CLIENT, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => procs.fail(&format!("{script}: {e}")),
        Err(_) => procs.fail(&format!("{script} did not finish within {CLIENT:?}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        procs.fail(&format!(
            "{script} failed ({})\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    stdout
}

pub fn value<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key).map(str::trim))
        .unwrap_or_else(|| panic!("no {key} line in:\n{stdout}"))
}

/// Start `obdgw sim cloud` with its relay on ephemeral ports (plus `extra` arguments) and a
/// state file in the test's directory; returns its index, base URL and relay URL.
pub async fn start_cloud(procs: &mut Procs, extra: &[&str]) -> (usize, String, String) {
    let state = procs.path("cloud-state.json");
    let mut args = vec![
        "sim",
        "cloud",
        "--listen",
        "127.0.0.1:0",
        "--relay-listen",
        "127.0.0.1:0",
        "--state",
        state.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let cloud = procs.spawn("sim cloud", &args, &[]);
    let base_url = procs
        .line(cloud, "its base URL", |l| {
            l.starts_with("http://").then(|| l.trim().to_string())
        })
        .await;
    let relay_url = procs
        .line(cloud, "its relay URL", |l| {
            l.strip_prefix("relay ").map(|u| u.trim().to_string())
        })
        .await;
    (cloud, base_url, relay_url)
}

/// Start `obdgw sim vehicle` with `vin` on the `sim:BUS` bus (and a DoIP entity unless
/// `can_only`), wait until it is ready, and return the `[tunnel]` lines that reach it: its
/// `doip_vehicle`, or for a CAN-only car the `[[tunnel.doip_map]]` of its ECUs on the
/// gateway's interface `car`.
pub async fn start_car(procs: &mut Procs, bus: &str, vin: &str, can_only: bool) -> String {
    let bus_spec = format!("sim:{bus}");
    let mut car_args = vec!["sim", "vehicle", "--can", &bus_spec, "--vin", vin];
    if !can_only {
        car_args.extend(["--doip-listen", "127.0.0.1:0"]);
    }
    let car = procs.spawn("sim vehicle", &car_args, &[]);
    let vehicle_side = if can_only {
        let vehicle = obdgw::sim::ecu::Vehicle::standard(
            obdgw::vehicle::uds::Vin::parse(vin).unwrap(),
            std::time::Instant::now(),
        );
        obdgw::demo::doip_map(&vehicle, "car")
            .iter()
            .map(|m| {
                format!(
                    "\n[[tunnel.doip_map]]\naddress = 0x{:04X}\ninterface = \"{}\"\ntx_id = 0x{:03X}\nrx_id = 0x{:03X}\n",
                    m.address, m.interface, m.tx_id, m.rx_id
                )
            })
            .collect::<String>()
    } else {
        let car_doip = procs
            .line(car, "its DoIP address", |l| {
                addr_after(l, "obdgw sim vehicle: DoIP on ")
            })
            .await;
        format!("doip_vehicle = \"{car_doip}\"\n")
    };
    procs
        .line(car, "its ready line", |l| {
            (l == "obdgw sim vehicle: ready").then_some(())
        })
        .await;
    vehicle_side
}

/// A session as the cloud simulator at `base_url` makes one: the demo connector's login
/// token (the gateway's relay token), a ticket for `vin`, joined by an operator through the
/// admin interface. Returns `(ticket, session, gateway_token, operator_token)`.
pub async fn join_ticket(
    procs: &mut Procs,
    base_url: &str,
    vin: &str,
) -> (i64, String, String, String) {
    let api = obdgw::sim::cloud::demo_client(base_url).unwrap();
    let gateway_token = match api.bearer().await {
        Ok(t) => t,
        Err(e) => procs.fail(&format!("connector login at {base_url}: {e}")),
    };
    let ticket = match api
        .create_ticket(&obdgw::sim::cloud::demo_ticket(vin))
        .await
    {
        Ok(t) => t.id,
        Err(e) => procs.fail(&format!("creating a ticket: {e}")),
    };
    let http = obdgw::tls::http_client(Duration::from_secs(10)).unwrap();
    let joined: serde_json::Value = match http
        .post(format!("{base_url}/admin/tickets/{ticket}/join"))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r.json().await.unwrap(),
        other => procs.fail(&format!("admin join of ticket {ticket}: {other:?}")),
    };
    let session = joined["connection_uuid"].as_str().unwrap().to_string();
    let operator_token = joined["operator_token"].as_str().unwrap().to_string();
    (ticket, session, gateway_token, operator_token)
}
