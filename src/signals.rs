//! The one signal handler of every long-running command (`run`, `demo`, `relay`,
//! `operator`, `sim cloud`, `sim vehicle`, `api watch`).
//!
//! Owns: installing SIGTERM, SIGINT and SIGHUP handlers at once (so a signal right after a
//! ready line is never lost), cancelling a shutdown token on the first SIGTERM or SIGINT,
//! and calling the command's reload hook on SIGHUP (ignored, and logged, without one).
//!
//! Does not own: what shutdown or reload mean.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// What SIGHUP does (none: it is ignored, with a log line).
pub type OnHangup = Option<Box<dyn Fn() + Send + Sync>>;

/// SIGTERM and SIGINT cancel `shutdown`; SIGHUP calls `on_hangup`. The handlers are
/// installed before this returns. Needs a tokio runtime.
pub fn spawn(
    shutdown: CancellationToken,
    on_hangup: OnHangup,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM received; shutting down"); break }
                _ = int.recv() => { tracing::info!("SIGINT received; shutting down"); break }
                _ = hup.recv() => match &on_hangup {
                    Some(f) => {
                        tracing::info!("SIGHUP received; reloading the configuration");
                        f();
                    }
                    None => tracing::info!("SIGHUP ignored (nothing to reload)"),
                },
                _ = shutdown.cancelled() => return,
            }
        }
        shutdown.cancel();
    }))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn sigterm_cancels_and_sighup_calls_the_hook() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU32, Ordering};
        let token = tokio_util::sync::CancellationToken::new();
        let hups = Arc::new(AtomicU32::new(0));
        let h = hups.clone();
        let task = super::spawn(
            token.clone(),
            Some(Box::new(move || {
                h.fetch_add(1, Ordering::SeqCst);
            })),
        )
        .unwrap();
        // SAFETY: signals to our own process, whose handlers are installed above.
        unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while hups.load(Ordering::SeqCst) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "SIGHUP not seen");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!token.is_cancelled());
        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        tokio::time::timeout(std::time::Duration::from_secs(10), token.cancelled())
            .await
            .expect("SIGTERM did not cancel");
        task.await.unwrap();
    }
}
