//! `obdgw login` and `obdgw api` as a user runs them, against the simulator in this process.

use obdgw::cloud::spec::OPS;
use obdgw::sim::cloud::{self as sim, DEMO_CONNECTOR_UUID, DEMO_PINCODE, SimOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

fn obdgw(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_obdgw"))
        .args(args)
        .env_remove("OBDGW_CONFIG")
        .env_remove("OBDGW_BASE_URL")
        .output()
        .unwrap()
}

async fn run(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = obdgw(&a);
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn write_config(dir: &Path) -> String {
    let path = dir.join("obdgw.toml");
    std::fs::write(
        &path,
        format!(
            "[daemon]\nstate_dir = \"{}\"\n[cloud]\nconnector_uuid = \"{DEMO_CONNECTOR_UUID}\"\npincode_file = \"{}\"\n",
            dir.join("state").display(),
            dir.join("pin").display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("pin"), format!("{DEMO_PINCODE}\n")).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_then_api_calls() {
    let r = sim::start(
        sim::data::SimData::builtin().unwrap(),
        SimOptions::default(),
        None,
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    let base = r.base_url.clone();
    let a = |rest: &[&str]| {
        let mut v: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
        v.extend([
            "-c".to_string(),
            cfg.clone(),
            "--base-url".to_string(),
            base.clone(),
        ]);
        v
    };

    let (code, out, err) = run(a(&["login"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("logged in as connector:{DEMO_CONNECTOR_UUID}")),
        "{out}"
    );
    // A state directory that cannot be written is reported, not silently ignored.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let mut bad = a(&["login"]);
    bad.extend([
        "--state-dir".to_string(),
        blocker.join("state").display().to_string(),
    ]);
    let (code, _, err) = run(bad).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("could not be stored") && err.contains("--state-dir"),
        "{err}"
    );
    let tokens_after_login = r.shared.data.lock().unwrap().tokens.len();

    let (code, out, err) = run(a(&[
        "api",
        "vehicles",
        "lookup",
        "--vin",
        "WVWZZZCDZMW012345",
        "--json",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["make"]["name"], "Volkswagen");
    assert_eq!(
        r.shared.data.lock().unwrap().tokens.len(),
        tokens_after_login,
        "the stored token was reused"
    );

    // Connectors are addressed by UUID: the table shows it.
    let (code, out, err) = run(a(&["api", "connectors", "list"])).await;
    assert_eq!(code, 0, "{err}");
    let header = out.lines().next().unwrap_or_default();
    assert!(header.starts_with("ID") && header.contains("UUID"), "{out}");
    assert!(out.contains(DEMO_CONNECTOR_UUID), "{out}");

    let (code, out, _) = run(a(&["api", "vehicles", "makes", "--limit", "2"])).await;
    assert_eq!(code, 0);
    assert!(
        out.starts_with("ID  NAME\n10  Ford\n20  Volkswagen\n"),
        "{out}"
    );
    assert!(
        out.contains("(2 of 6; next page: --offset 2, or --all)"),
        "{out}"
    );
    let (code, out, _) = run(a(&[
        "api", "vehicles", "makes", "--all", "--limit", "4", "--json",
    ]))
    .await;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["result"].as_array().unwrap().len(), 6);

    let (code, out, err) = run(a(&[
        "api",
        "tickets",
        "create",
        "--vin",
        "WVWZZZCDZMW012345",
        "--vehicle-model-id",
        "200102",
        "--vehicle-model-variant-id",
        "2001021",
        "--connector-id",
        "910000001",
        "--product-ids",
        "52352",
        "--product-prerequisites",
        r#"[{"definition_id":4,"value":"true"}]"#,
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("state") && out.contains("WVWZZZCDZMW012345"),
        "{out}"
    );
    let (code, out, _) = run(a(&[
        "api",
        "connectors",
        "active-ticket",
        "--connector-id",
        "910000001",
        "--json",
    ]))
    .await;
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["state"], 1);
    // No active ticket (the simulator's 404) is an answer, not a failure.
    let (code, out, err) = run(a(&[
        "api",
        "connectors",
        "active-ticket",
        "--connector-id",
        "910000002",
    ]))
    .await;
    assert_eq!((code, out.as_str()), (0, "no active ticket\n"), "{err}");
    assert!(err.contains("read as no active ticket"), "{err}");

    // Errors say what was wrong and what to do; exit 2 for bad input, 1 for service errors.
    let (code, _, err) = run(a(&["api", "vehicles", "lookup", "--vin", "WVW"])).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("17 letters and digits") && err.contains("nothing was sent"),
        "{err}"
    );
    let (code, _, err) = run(a(&["api", "connectors", "get", "--connector-id", "5"])).await;
    assert_eq!(code, 1);
    assert!(err.contains("404") && err.contains("check the id"), "{err}");
    let (code, _, err) = run(a(&[
        "api",
        "tickets",
        "create",
        "--vin",
        "WVWZZZCDZMW012345",
    ]))
    .await;
    assert_eq!(code, 2);
    assert!(err.contains("--vehicle-model-id"), "{err}");
    let (code, out, _) = run(a(&["api", "auth", "login-uuid"])).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("(hidden; exp"),
        "tokens are never printed whole: {out}"
    );
    let (code, _, err) = run(vec![
        "api".into(),
        "vehicles".into(),
        "makes".into(),
        "-c".into(),
        cfg.clone(),
        "--base-url".into(),
        "http://127.0.0.1:1".into(),
    ])
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("check cloud.base_url"), "{err}");
    r.stop().await;
}

#[test]
fn every_operation_has_help() {
    for s in OPS {
        let o = obdgw(&["api", s.group, s.name, "--help"]);
        assert!(o.status.success(), "{} {}", s.group, s.name);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains(s.summary), "{} {}: {text}", s.group, s.name);
    }
    let o = obdgw(&["api", "watch", "--help"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    for want in [
        "status websocket",
        "--json",
        "--connector-uuid",
        "--pincode-file",
        "Ctrl-C",
    ] {
        assert!(text.contains(want), "`{want}` missing: {text}");
    }
    let o = obdgw(&["api", "--help"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("Follow the connector's status websocket"));
}

/// `obdgw login` with only the given environment (of the variables that matter here).
async fn login_with_env(cfg: &Path, base: &str, env: Vec<(&'static str, PathBuf)>) -> Output {
    let (cfg, base) = (cfg.to_path_buf(), base.to_string());
    tokio::task::spawn_blocking(move || {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_obdgw"));
        c.args(["login", "--base-url", &base, "-c"]).arg(&cfg);
        for k in [
            "OBDGW_CONFIG",
            "OBDGW_BASE_URL",
            "OBDGW_DAEMON__STATE_DIR",
            "STATE_DIRECTORY",
            "XDG_STATE_HOME",
            "HOME",
        ] {
            c.env_remove(k);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    })
    .await
    .unwrap()
}

/// Where `obdgw login` kept the tokens (it says so).
fn stored_in(o: &Output) -> PathBuf {
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    PathBuf::from(
        out.trim_end()
            .rsplit_once("stored in ")
            .unwrap_or_else(|| panic!("no `stored in` in {out}"))
            .1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_gets_the_xdg_state_directory_and_the_service_its_own() {
    use std::os::unix::fs::PermissionsExt as _;
    let r = sim::start(
        sim::data::SimData::builtin().unwrap(),
        SimOptions::default(),
        None,
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p);
    std::fs::write(d("pin"), format!("{DEMO_PINCODE}\n")).unwrap();
    // A person's configuration: credentials, no [daemon] state_dir.
    let person = d("person.toml");
    std::fs::write(
        &person,
        format!(
            "[cloud]\nconnector_uuid = \"{DEMO_CONNECTOR_UUID}\"\npincode_file = \"{}\"\n",
            d("pin").display()
        ),
    )
    .unwrap();
    let base = r.base_url.clone();

    // A person: ~/.local/state/obdgw, created 0700 with the tokens 0600.
    let o = login_with_env(&person, &base, vec![("HOME", d("home"))]).await;
    let want = d("home/.local/state/obdgw/cloud-tokens.json");
    assert_eq!(stored_in(&o), want);
    assert!(want.exists());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&want), 0o600);
    assert_eq!(mode(want.parent().unwrap()), 0o700);
    // ... or $XDG_STATE_HOME/obdgw.
    let o = login_with_env(
        &person,
        &base,
        vec![("HOME", d("home")), ("XDG_STATE_HOME", d("xdg"))],
    )
    .await;
    assert_eq!(stored_in(&o), d("xdg/obdgw/cloud-tokens.json"));
    // Under systemd with StateDirectory=: $STATE_DIRECTORY.
    let o = login_with_env(
        &person,
        &base,
        vec![("HOME", d("home")), ("STATE_DIRECTORY", d("unit"))],
    )
    .await;
    assert_eq!(stored_in(&o), d("unit/cloud-tokens.json"));
    // The service's unit names it explicitly: that wins.
    let o = login_with_env(
        &person,
        &base,
        vec![
            ("HOME", d("home")),
            ("STATE_DIRECTORY", d("unit")),
            ("OBDGW_DAEMON__STATE_DIR", d("service")),
        ],
    )
    .await;
    assert_eq!(stored_in(&o), d("service/cloud-tokens.json"));
    // So does a configuration file that writes daemon.state_dir.
    let explicit = d("explicit.toml");
    std::fs::write(
        &explicit,
        format!(
            "[daemon]\nstate_dir = \"{}\"\n{}",
            d("fromfile").display(),
            std::fs::read_to_string(&person).unwrap()
        ),
    )
    .unwrap();
    let o = login_with_env(&explicit, &base, vec![("HOME", d("home"))]).await;
    assert_eq!(stored_in(&o), d("fromfile/cloud-tokens.json"));
    // Nowhere to put them: said, not guessed.
    let o = login_with_env(&person, &base, vec![]).await;
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--state-dir"), "{err}");
    r.stop().await;
}
