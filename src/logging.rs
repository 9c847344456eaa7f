//! Logging: tracing to journald when stderr is the journal, human-readable text otherwise.
//!
//! Owns: choosing the sink, the level filter (`RUST_LOG` wins over `log.level`) and bridging
//! records of `log`-based dependencies into tracing (tracing-subscriber's `tracing-log`).

use crate::config::{LogConfig, LogFormat};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Which sink [`init`] chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journald,
    Stderr,
}

/// Whether stderr is connected to the journal: systemd sets `JOURNAL_STREAM=DEV:INODE` for
/// the service's stdout/stderr stream; compare it with stderr's own device and inode.
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(val) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = val.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

/// The filter: `RUST_LOG` when set and valid, otherwise `log.level`.
pub fn filter(cfg: &LogConfig) -> EnvFilter {
    if let Ok(s) = std::env::var("RUST_LOG")
        && !s.is_empty()
        && let Ok(f) = EnvFilter::builder().parse(&s)
    {
        return f;
    }
    EnvFilter::builder()
        .parse(&cfg.level)
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Install the global subscriber. Returns the sink used and, if journald was wanted but not
/// available, a warning to log.
pub fn init(cfg: &LogConfig) -> (Sink, Option<String>) {
    let want_journald = match cfg.format {
        LogFormat::Auto => stderr_is_journal(),
        LogFormat::Journald => true,
        LogFormat::Text => false,
    };
    let mut warning = None;
    if want_journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                let ok = tracing_subscriber::registry()
                    .with(filter(cfg))
                    .with(layer.with_syslog_identifier("obdgw".into()))
                    .try_init()
                    .is_ok();
                if ok {
                    return (Sink::Journald, None);
                }
            }
            Err(e) => {
                warning = Some(format!(
                    "journald requested but unavailable ({e}); logging to stderr"
                ))
            }
        }
    }
    let _ = tracing_subscriber::registry()
        .with(filter(cfg))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(true),
        )
        .try_init();
    (Sink::Stderr, warning)
}
