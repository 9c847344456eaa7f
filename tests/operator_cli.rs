//! `obdgw operator` as a process: its argument errors say what to do.

use std::process::Command;

fn operator(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_obdgw"))
        .arg("operator")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const BASE: [&str; 6] = [
    "--relay",
    "ws://127.0.0.1:1/",
    "--session",
    "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab",
    "--token",
    "op",
];

#[test]
fn nothing_to_serve_is_an_error_naming_the_options() {
    let (ok, err) = operator(&BASE);
    assert!(!ok);
    assert!(
        err.contains("--doip-listen") && err.contains("--socketcand-listen"),
        "{err}"
    );
}

#[test]
fn an_unreadable_ca_is_an_error() {
    // Without --ca, wss:// trusts the system store; a --ca that cannot be read is refused
    // before anything connects.
    let mut a = BASE.to_vec();
    a[1] = "wss://127.0.0.1:1/";
    a.extend([
        "--doip-listen",
        "127.0.0.1:0",
        "--ca",
        "/nonexistent/relay-ca.pem",
    ]);
    let (ok, err) = operator(&a);
    assert!(!ok);
    assert!(
        err.contains("--ca") && err.contains("/nonexistent/relay-ca.pem"),
        "{err}"
    );
}

#[test]
fn bad_vin_and_target_are_refused() {
    let mut a = BASE.to_vec();
    a.extend(["--doip-listen", "127.0.0.1:0", "--vin", "SHORT"]);
    let (ok, err) = operator(&a);
    assert!(!ok);
    assert!(err.contains("17 characters"), "{err}");
    let mut a = BASE.to_vec();
    a.extend(["--doip-listen", "127.0.0.1:0", "--target", "0x1FFFF"]);
    let (ok, err) = operator(&a);
    assert!(!ok);
    assert!(err.contains("16-bit"), "{err}");
}
