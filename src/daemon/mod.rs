//! The daemon: `obdgw run`, a supervisor of named components.
//!
//! Owns: turning a validated configuration into running components, supervising them
//! (heartbeats, `super::health`; failures that cannot heal exit non-zero), the systemd
//! protocol (READY only once the configuration is applied, the router runs and every
//! configured CAN interface had its first open attempt; STATUS in words; the watchdog fed
//! only while every component beats), reload (SIGHUP or `obdgw reload` through the control
//! socket: the new configuration is validated first, applied where it can change live), and
//! orderly shutdown within `daemon.shutdown_timeout_ms`.
//!
//! Components (`docs/control.md` lists what each retries and when the daemon exits):
//! `router`, `can:NAME` ([`ports`]), `cloud` ([`cloud`]), `session` ([`session`]),
//! `control` ([`control`]), `metrics` ([`metrics`]).
//!
//! Does not own: what the components do inside.

pub mod bench;
pub mod cloud;
pub mod control;
pub mod health;
pub mod metrics;
pub mod ports;
pub mod report;
pub mod session;
pub mod state;
pub mod systemd;

use crate::config::{self, Config, ConfigSource};
use crate::router::{self, RouterHandle};
use anyhow::Context as _;
use control::{ControlApi, ErrorBody, ReloadOutcome};
use health::{BEAT_EVERY, ComponentState};
use state::Shared;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a component may stay silent before the watchdog is withheld.
const ALLOWANCE: Duration = Duration::from_secs(10);

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
    let (sink, warning, level) = crate::logging::init_reloadable(&loaded.config.log);
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    if let Err(e) = crate::tls::configure(&loaded.config.tls) {
        eprintln!("obdgw: {e}; not starting");
        return ExitCode::from(2);
    }
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    tracing::debug!(?sink, "logging initialised");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
        let (reload_tx, reload_rx) = mpsc::channel(4);
        let signals = spawn_signal_handler(shutdown.clone(), Some(reload_tx.clone()))?;
        let opts = RunOptions {
            source,
            file: loaded.file,
            level,
            reload: Some((reload_tx, reload_rx)),
        };
        let r = run(loaded.config, opts, shutdown).await;
        signals.abort();
        r
    });
    // The runtime may hold tasks that ignore cancellation (a stuck read): do not wait.
    rt.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("obdgw stopped: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A request to reload, from SIGHUP (no reply wanted) or the control socket.
pub type ReloadRequest = Option<oneshot::Sender<Result<ReloadOutcome, ErrorBody>>>;

/// SIGTERM and SIGINT cancel `shutdown`; SIGHUP asks for a reload (when `reload` is given):
/// [`crate::signals::spawn`] with the daemon's reload queue as the hook.
pub fn spawn_signal_handler(
    shutdown: CancellationToken,
    reload: Option<mpsc::Sender<ReloadRequest>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let hook: crate::signals::OnHangup = reload.map(|tx| {
        Box::new(move || {
            let _ = tx.try_send(None);
        }) as Box<dyn Fn() + Send + Sync>
    });
    crate::signals::spawn(shutdown, hook)
}

/// How [`run`] was started.
pub struct RunOptions {
    /// Where a reload reads the configuration from.
    pub source: ConfigSource,
    /// The file that was read, for the log.
    pub file: Option<PathBuf>,
    /// Changes the log level on reload.
    pub level: Option<crate::logging::LevelHandle>,
    /// Reload requests (SIGHUP); the control socket adds its own.
    pub reload: Option<(mpsc::Sender<ReloadRequest>, mpsc::Receiver<ReloadRequest>)>,
}

impl RunOptions {
    /// For tests and the demo: the configuration came from `file` (or nowhere).
    pub fn new(file: Option<PathBuf>) -> Self {
        RunOptions {
            source: ConfigSource::from_arg(file.as_deref()),
            file,
            level: None,
            reload: None,
        }
    }
}

/// The control socket's view of the daemon.
struct Api {
    shared: Arc<Shared>,
    reload: mpsc::Sender<ReloadRequest>,
}

impl ControlApi for Api {
    fn status(&self) -> report::StatusReport {
        self.shared.report()
    }

    async fn reload(&self) -> Result<ReloadOutcome, ErrorBody> {
        let (tx, rx) = oneshot::channel();
        let unavailable = || ErrorBody {
            code: "unavailable".into(),
            message: "the daemon is shutting down".into(),
            problems: Vec::new(),
        };
        self.reload
            .send(Some(tx))
            .await
            .map_err(|_| unavailable())?;
        rx.await.map_err(|_| unavailable())?
    }
}

/// Spawns components and turns their unrecoverable failures into the daemon's exit.
struct Supervisor {
    shared: Arc<Shared>,
    tasks: TaskTracker,
    fatal: mpsc::Sender<String>,
    shutdown: CancellationToken,
    /// Stop tokens of components a reload may replace.
    cloud_stop: Option<CancellationToken>,
    port_stops: BTreeMap<String, CancellationToken>,
    events: Option<mpsc::Sender<crate::cloud::status::StatusEvent>>,
}

impl Supervisor {
    /// Spawn a component; an `Err` or a panic ends the daemon with that reason.
    fn spawn<F>(&self, name: &str, fut: F)
    where
        F: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let fatal = self.fatal.clone();
        let name = name.to_string();
        let inner = tokio::spawn(fut);
        self.tasks.spawn(async move {
            let why = match inner.await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => format!("{name}: {e}"),
                Err(e) if e.is_panic() => format!("{name} panicked"),
                Err(_) => return,
            };
            let _ = fatal.send(why).await;
        });
    }

    fn start_port(
        &mut self,
        cfg: crate::vehicle::can::CanInterfaceConfig,
    ) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let stop = self.shutdown.child_token();
        self.port_stops.insert(cfg.name.clone(), stop.clone());
        let hb = self
            .shared
            .health
            .register(format!("can:{}", cfg.name), ALLOWANCE);
        let shared = self.shared.clone();
        self.spawn(&format!("can:{}", cfg.name), async move {
            ports::run(shared, cfg, hb, tx, stop).await;
            Ok(())
        });
        rx
    }

    fn start_cloud(&mut self, cfg: &Config) {
        let Some(events) = self.events.clone() else {
            return;
        };
        let stop = self.shutdown.child_token();
        self.cloud_stop = Some(stop.clone());
        let hb = self.shared.health.register("cloud", ALLOWANCE);
        let (shared, cloud, dir) = (
            self.shared.clone(),
            cfg.cloud.clone(),
            cfg.daemon.state_dir.clone(),
        );
        self.spawn("cloud", async move {
            cloud::run(shared, cloud, dir, events, hb, stop).await
        });
    }

    /// Apply a new configuration; see [`ReloadOutcome`].
    fn reload(
        &mut self,
        source: &ConfigSource,
        level: Option<&crate::logging::LevelHandle>,
    ) -> Result<ReloadOutcome, ErrorBody> {
        let loaded = config::load(source).map_err(|e| ErrorBody {
            code: "invalid-config".into(),
            message: "the new configuration is invalid; the running one stays in force".into(),
            problems: e.to_string().lines().map(str::to_string).collect(),
        })?;
        let new = loaded.config;
        let old = self.shared.config();
        let restart_cloud = new.cloud != old.cloud && self.cloud_stop.is_some();
        if restart_cloud && let Err(e) = cloud::preflight(&new.cloud) {
            // Nothing is applied; the running follower keeps its credentials.
            return Err(ErrorBody {
                code: "invalid-config".into(),
                message: format!("cloud: {e}"),
                problems: vec![e],
            });
        }
        let mut o = ReloadOutcome::default();
        if new.log.level != old.log.level {
            match level {
                Some(h) => {
                    h.set(&new.log).map_err(|e| ErrorBody {
                        code: "invalid-config".into(),
                        message: e,
                        problems: Vec::new(),
                    })?;
                    tracing::info!(level = %new.log.level, "log level changed");
                    o.applied.push("log.level".into());
                }
                None => o.needs_restart.push("log.level".into()),
            }
        }
        if new.log.format != old.log.format {
            o.needs_restart.push("log.format".into());
        }
        if new.daemon != old.daemon {
            o.needs_restart.push("daemon".into());
        }
        if new.router != old.router {
            o.needs_restart.push("router".into());
        }
        if new.metrics != old.metrics {
            o.needs_restart.push("metrics".into());
        }
        let old_mode = old.tunnel.as_ref().map(|t| (t.mode(), t.session.clone()));
        let new_mode = new.tunnel.as_ref().map(|t| (t.mode(), t.session.clone()));
        if old_mode != new_mode {
            o.needs_restart.push("tunnel mode or session".into());
        } else if let (Some(a), Some(b)) = (&old.tunnel, &new.tunnel) {
            // The transmit policy applies at once, to open channels too.
            if a.policy != b.policy {
                self.shared.policy.set(b.policy.clone());
                tracing::info!(raw_tx = b.policy.raw_tx, "tunnel policy changed");
                o.applied.push("tunnel.policy".into());
            }
            let mut a2 = a.clone();
            a2.policy = b.policy.clone();
            if a2 != *b {
                o.next_session.push("tunnel".into());
            }
        }
        if new.doip != old.doip {
            o.next_session.push("doip".into());
        }
        // CAN interfaces: restart the ones that changed; a running session keeps the port
        // it holds until it ends.
        let by_name = |c: &Config| {
            c.can
                .iter()
                .map(|x| (x.name.clone(), x.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        let (was, is) = (by_name(&old), by_name(&new));
        let mut can_changed = false;
        for (name, cfg) in &was {
            if is.get(name) != Some(cfg)
                && let Some(stop) = self.port_stops.remove(name)
            {
                stop.cancel();
                can_changed = true;
                if !is.contains_key(name) {
                    self.shared.with(&self.shared.ports, |m| m.remove(name));
                }
            }
        }
        // The new configuration is in force before components start from it.
        self.shared.set(&self.shared.config, Arc::new(new.clone()));
        for (name, cfg) in &is {
            if was.get(name) != Some(cfg) {
                drop(self.start_port(cfg.clone()));
                can_changed = true;
            }
        }
        if can_changed {
            o.applied.push("can".into());
        }
        if restart_cloud {
            if let Some(s) = self.cloud_stop.take() {
                s.cancel();
            }
            self.start_cloud(&new);
            o.applied.push("cloud".into());
        }
        self.shared
            .reloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(o)
    }
}

/// Run the daemon until `shutdown` is cancelled or a component fails for good.
pub async fn run(
    config: Config,
    mut opts: RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let router = router::from_config(&config.router).context("building the router")?;
    let handle = RouterHandle::new(router);
    let mode = match &config.tunnel {
        None => "none",
        Some(t) => match t.mode() {
            crate::tunnel::gateway::TunnelMode::Manual => "manual",
            crate::tunnel::gateway::TunnelMode::CloudDriven => "cloud-driven",
        },
    };
    let config = Arc::new(config);
    let shared = Arc::new(Shared::new(config.clone(), mode, handle.clone()));
    tracing::info!(
        config = %opts.file.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in defaults".into()),
        mode,
        can = config.can.len(),
        routes = config.router.routes.len(),
        "obdgw {} starting",
        env!("CARGO_PKG_VERSION")
    );
    for r in &handle.snapshot().routes {
        tracing::info!(route = %r.name, from = %r.source, to = ?r.sinks, overflow = %r.overflow, "route");
    }
    // Checked before anything runs: what no retry can heal.
    if mode == "cloud-driven"
        && let Err(e) = cloud::preflight(&config.cloud)
    {
        anyhow::bail!("cloud: {e}");
    }
    let control_listener = control::bind(&config.daemon.control_socket)?;
    let metrics_listener = match &config.metrics {
        Some(m) => {
            if !m.listen.ip().is_loopback() {
                tracing::warn!(listen = %m.listen, "metrics listen outside loopback: anyone on that network reads the box's counters");
            }
            Some(
                tokio::net::TcpListener::bind(m.listen)
                    .await
                    .with_context(|| format!("binding metrics.listen {}", m.listen))?,
            )
        }
        None => None,
    };

    let (fatal_tx, mut fatal_rx) = mpsc::channel::<String>(8);
    let (reload_tx, mut reload_rx) = opts.reload.take().unwrap_or_else(|| mpsc::channel(4));
    let mut sup = Supervisor {
        shared: shared.clone(),
        tasks: TaskTracker::new(),
        fatal: fatal_tx,
        shutdown: shutdown.clone(),
        cloud_stop: None,
        port_stops: BTreeMap::new(),
        events: None,
    };

    // The router answers (its lock is not stuck).
    {
        let hb = shared.health.register("router", ALLOWANCE);
        let (h, stop) = (handle.clone(), shutdown.clone());
        sup.spawn("router", async move {
            let mut tick = tokio::time::interval(BEAT_EVERY);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tick.tick() => {}
                }
                let h2 = h.clone();
                if let Ok(Ok(snap)) = tokio::time::timeout(
                    BEAT_EVERY,
                    tokio::task::spawn_blocking(move || h2.snapshot()),
                )
                .await
                {
                    hb.set(
                        ComponentState::Ok,
                        format!("{} ports, {} routes", snap.ports.len(), snap.routes.len()),
                    );
                }
            }
        });
    }
    // CAN interfaces.
    let firsts: Vec<_> = config
        .can
        .iter()
        .map(|c| sup.start_port(c.clone()))
        .collect();
    // Cloud and sessions.
    if let Some(t) = &config.tunnel {
        let (ev_tx, ev_rx) = mpsc::channel(64);
        let manual = match (&t.session, &t.token) {
            (Some(id), Some(token)) => Some(session::Wanted {
                ticket_id: None,
                id: id.clone(),
                ticket_vin: None,
                token: Some(token.clone()),
            }),
            _ => None,
        };
        if manual.is_none() {
            sup.events = Some(ev_tx);
            sup.start_cloud(&config);
        } else {
            drop(ev_tx);
        }
        let hb = shared.health.register("session", ALLOWANCE);
        let (sh, stop) = (shared.clone(), shutdown.clone());
        sup.spawn("session", async move {
            session::run(sh, manual, ev_rx, hb, stop).await;
            Ok(())
        });
    }
    // The control socket and metrics.
    {
        let hb = shared.health.register("control", ALLOWANCE);
        let api = Arc::new(Api {
            shared: shared.clone(),
            reload: reload_tx.clone(),
        });
        let (path, stop) = (config.daemon.control_socket.clone(), shutdown.clone());
        sup.spawn("control", async move {
            control::serve(control_listener, path, api, hb, stop).await;
            Ok(())
        });
    }
    if let Some(l) = metrics_listener {
        let addr = l.local_addr().ok();
        if let Some(a) = addr {
            tracing::info!(listen = %a, "metrics on http://{a}/metrics");
            shared.set(&shared.metrics, Some(a.to_string()));
        }
        let (sh, stop) = (shared.clone(), shutdown.clone());
        sup.spawn("metrics", async move {
            metrics::serve(l, sh, stop).await;
            Ok(())
        });
    }

    // READY once every configured interface had its first attempt.
    for f in firsts {
        let _ = f.await;
    }
    let mut last_status = shared.report().status_line;
    tracing::info!(
        socket = %config.daemon.control_socket.display(),
        "obdgw ready: {last_status}"
    );
    systemd::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&last_status),
    ]);

    let mut watchdog = systemd::watchdog_interval().map(|every| {
        tracing::debug!(?every, "feeding the systemd watchdog");
        (
            tokio::time::interval(every),
            systemd::Watchdog::new(shared.health.clone()),
        )
    });
    let mut status_tick = tokio::time::interval(BEAT_EVERY);
    let failure = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break None,
            why = fatal_rx.recv() => if let Some(why) = why { break Some(why) },
            req = reload_rx.recv() => {
                let Some(reply) = req else { continue };
                systemd::notify(&[sd_notify::NotifyState::Reloading]);
                let r = sup.reload(&opts.source, opts.level.as_ref());
                match &r {
                    Ok(o) => tracing::info!(applied = ?o.applied, next_session = ?o.next_session, needs_restart = ?o.needs_restart, "configuration reloaded"),
                    Err(e) => tracing::error!(problems = ?e.problems, "reload refused: {}", e.message),
                }
                systemd::notify(&[sd_notify::NotifyState::Ready]);
                if let Some(tx) = reply {
                    let _ = tx.send(r);
                }
            }
            _ = status_tick.tick() => {
                let line = shared.report().status_line;
                if line != last_status {
                    tracing::info!("status: {line}");
                    systemd::notify(&[sd_notify::NotifyState::Status(&line)]);
                    last_status = line;
                }
            }
            _ = async { watchdog.as_mut().expect("guarded").0.tick().await }, if watchdog.is_some() => {
                if let Some((_, w)) = &mut watchdog
                    && w.tick(tokio::time::Instant::now())
                {
                    systemd::notify(&[sd_notify::NotifyState::Watchdog]);
                }
            }
        }
    };
    if let Some(why) = &failure {
        tracing::error!(
            "a component failed for good: {why}; exiting so that systemd restarts the service"
        );
    }
    systemd::notify(&[sd_notify::NotifyState::Stopping]);
    shutdown.cancel();
    handle.close();
    sup.tasks.close();
    let timeout = Duration::from_millis(config.daemon.shutdown_timeout_ms);
    if tokio::time::timeout(timeout, sup.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "tasks still running after {} ms; exiting anyway",
            config.daemon.shutdown_timeout_ms
        );
    }
    let _ = std::fs::remove_file(&config.daemon.control_socket);
    tracing::info!("obdgw stopped");
    match failure {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    }
}
