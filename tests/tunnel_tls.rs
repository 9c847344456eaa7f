//! TLS on the tunnel, as separate processes of the real binary: the cloud simulator's relay
//! serves wss:// with a test certificate; the gateway daemon (`[tls] ca_file`) and the
//! operator endpoint (`--ca`) trust it, and a VIN read crosses the tunnel. An operator and a
//! gateway that trust another CA are refused with an error that says what to check; a
//! ws:// relay URL to a non-loopback host is refused by `config check`, `run` and
//! `operator` before anything is sent.

mod common;

use common::procs::{Procs, READY, addr_after, join_ticket, start_car, start_cloud};
use std::process::Command;
use std::time::Duration;

const VIN: &str = "WVWZZZ1KZAW000777";

/// A self-signed certificate for 127.0.0.1 (it is its own CA): (cert path, key path).
fn cert(procs: &Procs, name: &str) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cp, kp) = (
        procs.path(&format!("{name}.pem")),
        procs.path(&format!("{name}.key")),
    );
    std::fs::write(&cp, c.cert.pem()).unwrap();
    std::fs::write(&kp, c.signing_key.serialize_pem()).unwrap();
    (cp.display().to_string(), kp.display().to_string())
}

/// Wait until `file` contains `text` (a process's stderr).
async fn stderr_says(procs: &mut Procs, i: usize, text: &str) -> String {
    let deadline = tokio::time::Instant::now() + READY;
    loop {
        let s = std::fs::read_to_string(&procs.procs[i].stderr).unwrap_or_default();
        if s.contains(text) {
            return s;
        }
        if tokio::time::Instant::now() > deadline {
            procs.fail(&format!(
                "obdgw {} never said {text:?}",
                procs.procs[i].name
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn gateway_config(
    procs: &Procs,
    name: &str,
    relay: &str,
    session: &str,
    token: &str,
    ca: &str,
    vehicle_side: &str,
) -> String {
    let path = procs.path(&format!("{name}.toml"));
    let text = format!(
        r#"[log]
level = "info"
format = "text"

[daemon]
state_dir = "{state}"
control_socket = "{socket}"

[tls]
ca_file = "{ca}"

[[can]]
name = "car"
interface = "sim:tlscar"

[tunnel]
relay_url = "{relay}"
session = "{session}"
token = "{token}"
can_interfaces = ["car"]
{vehicle_side}"#,
        state = procs.path(&format!("{name}-state")).display(),
        socket = procs.path(&format!("{name}.sock")).display(),
    );
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_operator_over_wss_with_a_test_ca_and_a_wrong_ca_is_refused() {
    let mut procs = Procs::new();
    let (good, good_key) = cert(&procs, "relay");
    let (wrong, _) = cert(&procs, "other-ca");
    let (_cloud, base_url, relay_url) = start_cloud(
        &mut procs,
        &["--relay-tls-cert", &good, "--relay-tls-key", &good_key],
    )
    .await;
    assert!(relay_url.starts_with("wss://127.0.0.1:"), "{relay_url}");
    let (_ticket, session, gw_token, op_token) = join_ticket(&mut procs, &base_url, VIN).await;
    let vehicle_side = start_car(&mut procs, "tlscar", VIN, false).await;

    // A gateway that trusts another CA: it keeps retrying, and its status says why.
    let bad_cfg = gateway_config(
        &procs,
        "bad",
        &relay_url,
        &session,
        &gw_token,
        &wrong,
        &vehicle_side,
    );
    let bad = procs.spawn("run (wrong CA)", &["run", "--config", &bad_cfg], &[]);
    let said = stderr_says(&mut procs, bad, "not signed by a CA this side trusts").await;
    assert!(said.contains("tls.ca_file"), "{said}");
    let _ = procs.procs[bad].child.kill();

    // An operator that trusts another CA: refused with the same clear words.
    let op_bad = procs.spawn(
        "operator (wrong CA)",
        &[
            "operator",
            "--relay",
            &relay_url,
            "--session",
            &session,
            "--ca",
            &wrong,
            "--doip-listen",
            "127.0.0.1:0",
            "--vin",
            VIN,
        ],
        &[("OBDGW_OPERATOR_TOKEN", &op_token)],
    );
    let said = stderr_says(&mut procs, op_bad, "not signed by a CA this side trusts").await;
    assert!(said.contains("--ca"), "{said}");
    let _ = procs.procs[op_bad].child.kill();

    // The right CA on both sides: a VIN read crosses the tunnel.
    let cfg = gateway_config(
        &procs,
        "good",
        &relay_url,
        &session,
        &gw_token,
        &good,
        &vehicle_side,
    );
    procs.spawn("run", &["run", "--config", &cfg], &[]);
    let op = procs.spawn(
        "operator",
        &[
            "operator",
            "--relay",
            &relay_url,
            "--session",
            &session,
            "--ca",
            &good,
            "--doip-listen",
            "127.0.0.1:0",
        ],
        &[("OBDGW_OPERATOR_TOKEN", &op_token)],
    );
    let doip = procs
        .line(op, "its DoIP entity address", |l| {
            addr_after(l, "DoIP entity on ")
        })
        .await;
    let cfg = obdgw::vehicle::doip::DoipClientConfig {
        response_timeout_ms: 10_000,
        ..Default::default()
    };
    let mut client = obdgw::vehicle::doip::DoipClient::new(doip, cfg);
    match tokio::time::timeout(
        READY,
        client.request(0x1000, bytes::Bytes::from_static(&[0x22, 0xF1, 0x90])),
    )
    .await
    {
        Ok(Ok(resp)) => assert_eq!(&resp[3..], VIN.as_bytes()),
        other => procs.fail(&format!("VIN over wss: {other:?}")),
    }
}

#[test]
fn plaintext_to_a_non_loopback_relay_is_refused_everywhere() {
    let procs = Procs::new();
    let cfg = gateway_config(
        &procs,
        "clear",
        "ws://relay.example:8080/",
        "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab",
        "t",
        "/nonexistent/ca.pem",
        "",
    );
    let bin = env!("CARGO_BIN_EXE_obdgw");
    for args in [
        vec!["config", "check", "--config", &cfg],
        vec!["run", "--config", &cfg],
    ] {
        let out = Command::new(bin)
            .args(&args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("tunnel.relay_url") && err.contains("write wss://relay.example:8080/"),
            "{args:?}: {err}"
        );
        // The unreadable CA file is named too (every problem at once).
        assert!(err.contains("tls.ca_file"), "{args:?}: {err}");
    }
    let out = Command::new(bin)
        .args([
            "operator",
            "--relay",
            "ws://10.1.2.3:80/",
            "--session",
            "s",
            "--doip-listen",
            "127.0.0.1:0",
        ])
        .env("OBDGW_OPERATOR_TOKEN", "t")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--relay") && err.contains("wss://10.1.2.3:80/"),
        "{err}"
    );
    // The operator's local servers bind loopback unless --listen-any.
    let out = Command::new(bin)
        .args([
            "operator",
            "--relay",
            "ws://127.0.0.1:9/",
            "--session",
            "s",
            "--socketcand-listen",
            "0.0.0.0:0",
        ])
        .env("OBDGW_OPERATOR_TOKEN", "t")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--listen-any") && err.contains("127.0.0.1:0"),
        "{err}"
    );
}
