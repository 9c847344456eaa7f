//! The `obdgw` binary as a user runs it.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn obdgw() -> Command {
    common::clean_obdgw()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn run_starts_logs_and_stops_on_sigterm_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = obdgw()
        .args(["run", "--config"])
        .arg(root().join("config/obdgw.toml"))
        .env(
            "OBDGW_DAEMON__CONTROL_SOCKET",
            dir.path().join("control.sock"),
        )
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the start-up log line rather than sleeping a fixed time.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lines.iter().any(|l: &String| l.contains("obdgw ready")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => panic!("no start-up line; got {lines:?}"),
        }
    }
    let pid = child.id() as i32;
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let t0 = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = t0.elapsed();
    assert!(code.success(), "exit status {code:?}");
    assert!(took < Duration::from_secs(1), "took {took:?} to stop");
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
        lines.push(l);
    }
    let all = lines.join("\n");
    assert!(all.contains("SIGTERM received"), "{all}");
    assert!(all.contains("obdgw stopped"), "{all}");
    assert!(all.contains("route=bus-mirror"), "{all}");
}

#[test]
fn config_check_unknown_key_exits_2_and_names_key_and_file() {
    let file = root().join("tests/fixtures/config/invalid/unknown_key.toml");
    let out = obdgw()
        .args(["config", "check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("router.queue_capcity"), "{err}");
    assert!(err.contains(&format!("{}:6", file.display())), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn config_check_prints_effective_config_with_env_override() {
    let out = obdgw()
        .args(["config", "check", "--config"])
        .arg(root().join("config/obdgw.toml"))
        .env("OBDGW_LOG__LEVEL", "debug")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("level = \"debug\""), "{text}");
    assert!(text.contains("name = \"bus-mirror\""), "{text}");
    // The printed configuration is itself a valid configuration file.
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), body).unwrap();
    let again = obdgw()
        .args(["config", "check", "--config"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn missing_explicit_config_is_an_error() {
    let out = obdgw()
        .args(["run", "--config", "/nonexistent/obdgw.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/obdgw.toml"), "{err}");
}

#[test]
fn help_and_version() {
    let out = obdgw().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["config", "check", "--help"],
    ] {
        let out = obdgw().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage:"), "{args:?}: {text}");
    }
}

#[test]
fn run_speaks_the_systemd_notify_protocol() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = obdgw()
        .args(["run", "--config"])
        .arg(root().join("config/obdgw.toml"))
        .env(
            "OBDGW_DAEMON__CONTROL_SOCKET",
            dir.path().join("control.sock"),
        )
        .env("NOTIFY_SOCKET", &sock_path)
        // A 200 ms watchdog: the daemon must ping every 100 ms.
        .env("WATCHDOG_USEC", "200000")
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let mut recv = || {
        let n = sock
            .recv(&mut buf)
            .expect("no notification from the daemon");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let mut msgs = Vec::new();
    while !msgs.iter().any(|m: &String| m.contains("READY=1")) {
        msgs.push(recv());
    }
    let mut pings = 0;
    while pings < 3 {
        if recv().contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    loop {
        let m = recv();
        if m.contains("STOPPING=1") {
            break;
        }
    }
    assert!(child.wait().unwrap().success());
}

/// Every environment variable a command reads through clap (`env = "OBDGW_..."`) is a
/// command-line option, not a configuration key: setting it must not break the commands that
/// load the configuration ("unknown key").
#[test]
fn advertised_environment_variables_do_not_break_config_loading() {
    use clap::CommandFactory as _;
    fn walk(c: &clap::Command, out: &mut Vec<String>) {
        for a in c.get_arguments() {
            if let Some(e) = a.get_env() {
                out.push(e.to_string_lossy().to_string());
            }
        }
        for s in c.get_subcommands() {
            walk(s, out);
        }
    }
    let mut envs = Vec::new();
    walk(&obdgw::cli::Cli::command(), &mut envs);
    envs.sort();
    envs.dedup();
    assert!(envs.len() >= 5, "{envs:?}");
    for e in &envs {
        let rest = e.strip_prefix("OBDGW_").expect("OBDGW_ prefix");
        assert!(
            obdgw::config::ENV_NOT_KEYS.contains(&rest),
            "{e} is read by a command but would be taken as a configuration key; add it to ENV_NOT_KEYS"
        );
    }
    let mut c = obdgw();
    c.args(["config", "check", "--config"])
        .arg(root().join("config/obdgw.toml"));
    for e in envs.iter().filter(|e| *e != "OBDGW_CONFIG") {
        c.env(e, "x");
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "config check with {envs:?} set: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn status_and_reload_without_a_daemon_exit_3_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    for cmd in ["status", "reload"] {
        let out = obdgw().args([cmd, "--socket"]).arg(&sock).output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is obdgw running?"), "{cmd}: {err}");
    }
}
