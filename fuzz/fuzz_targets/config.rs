//! Fuzz the configuration loader (`obdgw::config::load_with_env`): TOML syntax, figment
//! extraction with `deny_unknown_fields`, `OBDGW_*` environment overrides, the validation
//! pass, and the error rendering that quotes the file (line numbers from byte spans).
//!
//! Input: the file's text, then optionally a NUL byte and environment lines `KEY=VALUE`
//! (`OBDGW_` and upper case are added to KEY, so `tunnel__url=x` becomes
//! `OBDGW_TUNNEL__URL=x`). The text is written to a per-process file, as the loader reads
//! files.
//!
//! Properties: no panic; every error renders; a loaded configuration renders to TOML, and
//! when that rendering loads again it renders the same (secrets are redacted in renderings,
//! so a rendering need not load).
#![no_main]

use libfuzzer_sys::fuzz_target;
use obdgw::config::{ConfigSource, load_with_env, render};
use std::path::PathBuf;
use std::sync::OnceLock;

fn path(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("obdgw-fuzz-config-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&d);
        d
    })
    .join(name)
}

fuzz_target!(|data: &[u8]| {
    let (text, env) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let env: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (format!("OBDGW_{}", k.to_ascii_uppercase()), v.to_string()))
        .collect();
    let file = path("obdgw.toml");
    if std::fs::write(&file, text).is_err() {
        return;
    }
    match load_with_env(&ConfigSource::Explicit(file), env) {
        Ok(loaded) => {
            let rendered = render(&loaded.config);
            assert!(!rendered.starts_with("# cannot render"), "{rendered}");
            let again = path("rendered.toml");
            if std::fs::write(&again, &rendered).is_ok()
                && let Ok(back) = load_with_env(&ConfigSource::Explicit(again), Vec::new())
            {
                assert_eq!(render(&back.config), rendered, "render -> load -> render");
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
