//! Helpers shared by integration tests.
#![allow(dead_code)]

pub mod procs;
pub mod wan;

use std::path::PathBuf;

/// The Python of the interop environment (`tests/interop/setup-venv.sh`), from
/// `TEST_OBDGW_PYTHON`. When it is not set: a loud skip, or a failure when
/// `TEST_OBDGW_REQUIRE_INTEROP=1` (CI sets both).
pub fn interop_python(test: &str) -> Option<PathBuf> {
    match std::env::var_os("TEST_OBDGW_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var("TEST_OBDGW_REQUIRE_INTEROP").as_deref() == Ok("1") => {
            panic!("{test}: TEST_OBDGW_REQUIRE_INTEROP=1 but TEST_OBDGW_PYTHON is not set")
        }
        None => {
            eprintln!(
                "SKIPPED {test}: no interop peers (run `export TEST_OBDGW_PYTHON=$(tests/interop/setup-venv.sh | tail -1)`)"
            );
            None
        }
    }
}

/// Path of a file under `tests/interop/`.
pub fn interop_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
}

/// Whether SocketCAN (an `AF_CAN` socket and `vcan0`) is here. When not: a loud skip, or a
/// failure when `TEST_OBDGW_REQUIRE_CAN=1` or `OBDGW_REQUIRE_CAN=1` (the qemu guest sets
/// both).
pub fn can_available(test: &str) -> bool {
    if obdgw::vehicle::can::socketcan::af_can_available()
        && std::path::Path::new("/sys/class/net/vcan0").exists()
    {
        return true;
    }
    let required = ["TEST_OBDGW_REQUIRE_CAN", "OBDGW_REQUIRE_CAN"]
        .iter()
        .any(|v| std::env::var(v).as_deref() == Ok("1"));
    if required {
        panic!(
            "{test}: this kernel has no AF_CAN socket or no vcan0, but (TEST_)OBDGW_REQUIRE_CAN=1 demands the SocketCAN tests run"
        );
    }
    eprintln!(
        "\n*** SKIPPED {test}: this kernel has no AF_CAN (or no vcan0); run tests/vm/cargo-test.sh to run it in a CAN guest ***\n"
    );
    false
}

/// The binary with an environment free of anything that would change its behaviour
/// (configuration variables, systemd variables, credentials, RUST_LOG).
pub fn clean_obdgw() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_obdgw"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("OBDGW_")
            || [
                "RUST_LOG",
                "JOURNAL_STREAM",
                "NOTIFY_SOCKET",
                "WATCHDOG_USEC",
                "WATCHDOG_PID",
                "CREDENTIALS_DIRECTORY",
            ]
            .contains(&k.as_ref())
        {
            c.env_remove(k.as_ref());
        }
    }
    c
}
