//! Helpers shared by integration tests.
#![allow(dead_code)]

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
