//! `obdgw demo`, the README's main job on the built-in simulators: it runs the product path
//! (cloud simulator, the daemon's own `run` in cloud-driven mode, a ticket created and
//! joined), tells the story, prints where a tester connects, a VIN read through the whole
//! path (operator DoIP entity → tunnel → gateway → address map → ISO-TP → simulated ECU)
//! succeeds, `obdgw status` reads its daemon, and SIGTERM stops it with 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_serves_the_simulated_car_through_the_tunnel() {
    let exe = env!("CARGO_BIN_EXE_obdgw");
    let child = Command::new(exe)
        .args([
            "demo",
            "--doip-listen",
            "127.0.0.1:0",
            "--socketcand-listen",
            "127.0.0.1:0",
            "--vin",
            "WVWZZZ1KZAW000042",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut demo = Kill(child);
    let mut lines = BufReader::new(demo.0.stdout.take().unwrap()).lines();
    let mut doip = None;
    let mut socket = None;
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if let Some(rest) = line.trim().strip_prefix("DoIP entity on ") {
            doip = rest.split_whitespace().next().map(str::to_string);
        }
        if let Some((_, rest)) = line.split_once("obdgw status --socket ") {
            socket = Some(rest.trim_end_matches('`').to_string());
        }
        if line.contains("ready") {
            break;
        }
    }
    let doip = doip.unwrap_or_else(|| panic!("no DoIP address in the demo's output:\n{seen}"));
    assert!(seen.contains("socketcand on 127.0.0.1:"), "{seen}");
    for step in [
        "cloud simulator on http://127.0.0.1:",
        "daemon logged in as connector",
        "created for WVWZZZ1KZAW000042",
        "operator joined: session ",
        "session up (",
        "VIN check: match",
    ] {
        assert!(seen.contains(step), "the story lacks `{step}`:\n{seen}");
    }
    let socket = socket.unwrap_or_else(|| panic!("no status socket in:\n{seen}"));
    let st = Command::new(exe)
        .args(["status", "--json", "--socket", &socket])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json: {e}: {}",
            String::from_utf8_lossy(&st.stderr)
        )
    });
    assert_eq!(st.status.code(), Some(0), "{report:#}");
    assert_eq!(report["mode"], "cloud-driven", "{report:#}");
    assert_eq!(report["session"]["state"], "up", "{report:#}");
    assert!(report["ticket"]["id"].is_i64(), "{report:#}");

    // By identification (the operator announces the VIN it read through the tunnel) and by
    // UDS 22 F190 to the engine through the whole path.
    for extra in [&[][..], &["--uds", "--target", "0x1000"][..]] {
        let started = Instant::now();
        let out = Command::new(exe)
            .args(["vin", "--doip", &doip, "--timeout", "20"])
            .args(extra)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "obdgw vin --doip {doip} {extra:?} failed after {:?}: {stdout}{}",
            started.elapsed(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.trim(), "WVWZZZ1KZAW000042", "{extra:?}");
    }

    // SIGTERM stops it cleanly.
    let status = Command::new("kill")
        .args(["-TERM", &demo.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = demo.0.try_wait().unwrap() {
            assert!(status.success(), "demo exited with {status} on SIGTERM");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "demo did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
