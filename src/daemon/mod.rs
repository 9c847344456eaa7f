//! The daemon: start-up, supervision and shutdown of `obdgw run`.
//!
//! Owns: turning a validated configuration into running components, the systemd protocol
//! (READY/STOPPING/WATCHDOG), signal handling and orderly shutdown within
//! `daemon.shutdown_timeout_ms`.
//!
//! Does not own: what the components do.

use crate::config::{self, Config, ConfigSource};
use crate::router::{self, RouterHandle};
use anyhow::Context as _;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// `obdgw run`.
pub fn run_cli(args: crate::cli::RunArgs) -> ExitCode {
    let source = ConfigSource::from_arg(args.config.config.as_deref());
    let loaded = match config::load(&source) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("obdgw: {e}");
            eprintln!("obdgw: run `obdgw config check` to see every problem; not starting");
            return ExitCode::from(2);
        }
    };
    let (sink, warning) = crate::logging::init(&loaded.config.log);
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    tracing::debug!(?sink, "logging initialised");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("obdgw")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    let result = rt.block_on(async {
        let signals = spawn_signal_handler(shutdown.clone())?;
        let r = run(loaded.config, loaded.file, shutdown).await;
        signals.abort();
        r
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn spawn_signal_handler(
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
        }
        shutdown.cancel();
    }))
}

/// Run the daemon until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    file: Option<std::path::PathBuf>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let router = router::from_config(&config.router).context("building the router")?;
    let handle = RouterHandle::new(router);
    let snap = handle.snapshot();
    tracing::info!(
        config = %file.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in defaults".into()),
        ports = snap.ports.len(),
        routes = snap.routes.len(),
        "obdgw {} started",
        env!("CARGO_PKG_VERSION")
    );
    for r in &snap.routes {
        tracing::info!(route = %r.name, from = %r.source, to = ?r.sinks, overflow = %r.overflow, "route");
    }

    let tasks = TaskTracker::new();
    if let Some(interval) = watchdog_interval() {
        let h = handle.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move { feed_watchdog(h, interval, stop).await });
    }
    if let Some(tunnel) = config.tunnel.clone() {
        // The car's end of the diagnostic tunnel (see docs/operator.md).
        let (doip, can, stop) = (config.doip.clone(), config.can.clone(), shutdown.clone());
        tasks.spawn(async move {
            match crate::tunnel::gateway::run_from_config(&tunnel, &doip, &can, None, stop).await {
                Ok(_) => tracing::info!("tunnel gateway stopped"),
                Err(e) => tracing::error!("tunnel gateway: {e}"),
            }
        });
    }
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("running"),
    ]);

    shutdown.cancelled().await;
    notify(&[sd_notify::NotifyState::Stopping]);
    handle.close();
    tasks.close();
    let timeout = Duration::from_millis(config.daemon.shutdown_timeout_ms);
    if tokio::time::timeout(timeout, tasks.wait()).await.is_err() {
        tracing::warn!(
            "tasks still running after {} ms; exiting anyway",
            config.daemon.shutdown_timeout_ms
        );
    }
    let snap = handle.snapshot();
    let (rx, shed): (u64, u64) = snap
        .ports
        .iter()
        .fold((0, 0), |(a, b), p| (a + p.rx_frames, b + p.shed));
    tracing::info!(frames = rx, shed, "obdgw stopped");
    Ok(())
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(state)
    {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// Half the systemd watchdog interval, when the service has one.
fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// Ping the watchdog while the data plane answers: taking a snapshot proves the router lock
/// is not stuck.
async fn feed_watchdog(router: RouterHandle, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let h = router.clone();
                let healthy = tokio::time::timeout(every, tokio::task::spawn_blocking(move || h.snapshot())).await;
                if matches!(healthy, Ok(Ok(_))) {
                    notify(&[sd_notify::NotifyState::Watchdog]);
                } else {
                    tracing::error!("router did not answer within {every:?}; withholding the watchdog ping");
                }
            }
        }
    }
}
