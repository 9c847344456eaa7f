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
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => journal_stream_matches(&val, m.dev(), m.ino()),
        Err(_) => false,
    }
}

/// Whether a `JOURNAL_STREAM` value (`DEV:INODE`, decimal) names this device and inode.
pub fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.split_once(':') else {
        return false;
    };
    matches!((d.parse::<u64>(), i.parse::<u64>()), (Ok(d), Ok(i)) if d == dev && i == ino)
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

/// Changes the level filter of the installed subscriber (`obdgw reload`).
#[derive(Clone)]
pub struct LevelHandle {
    inner: tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>,
}

impl std::fmt::Debug for LevelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LevelHandle")
    }
}

impl LevelHandle {
    /// Apply `cfg.level` (unless `RUST_LOG` is set, which keeps winning).
    pub fn set(&self, cfg: &LogConfig) -> Result<(), String> {
        self.inner
            .reload(filter(cfg))
            .map_err(|e| format!("cannot change the log level: {e}"))
    }
}

/// Install the global subscriber. Returns the sink used and, if journald was wanted but not
/// available, a warning to log.
pub fn init(cfg: &LogConfig) -> (Sink, Option<String>) {
    let (sink, warning, _) = init_reloadable(cfg);
    (sink, warning)
}

/// [`init`], also returning a handle that changes the level later (`None` when a subscriber
/// was already installed, as in tests).
pub fn init_reloadable(cfg: &LogConfig) -> (Sink, Option<String>, Option<LevelHandle>) {
    let (filter_layer, handle) = tracing_subscriber::reload::Layer::new(filter(cfg));
    let handle = Some(LevelHandle { inner: handle });
    let want_journald = match cfg.format {
        LogFormat::Auto => stderr_is_journal(),
        LogFormat::Journald => true,
        LogFormat::Text => false,
    };
    let mut warning = None;
    if want_journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                let (journal_filter, journal_handle) =
                    tracing_subscriber::reload::Layer::new(filter(cfg));
                let ok = tracing_subscriber::registry()
                    .with(journal_filter)
                    .with(layer.with_syslog_identifier("obdgw".into()))
                    .try_init()
                    .is_ok();
                if ok {
                    return (
                        Sink::Journald,
                        None,
                        Some(LevelHandle {
                            inner: journal_handle,
                        }),
                    );
                }
            }
            Err(e) => {
                warning = Some(format!(
                    "journald requested but unavailable ({e}); logging to stderr"
                ))
            }
        }
    }
    let ok = tracing_subscriber::registry()
        .with(filter_layer)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(true),
        )
        .try_init()
        .is_ok();
    (Sink::Stderr, warning, if ok { handle } else { None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_parsing() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(!journal_stream_matches("8:12345", 8, 12346));
        assert!(!journal_stream_matches("9:12345", 8, 12345));
        assert!(!journal_stream_matches("garbage", 8, 12345));
        assert!(!journal_stream_matches("8:", 8, 0));
        assert!(!journal_stream_matches("", 0, 0));
    }
}
