//! `obdgw sim cloud`: a faithful simulator of the vendor Customer API.
//!
//! Owns: an axum server implementing every operation of the client's operation table with
//! the documented rules, tokens that expire, the status websocket, an admin interface to
//! drive a ticket's life and inject faults, `/openapi.json`, a realistic built-in fixture
//! (replaceable with `--fixture`), and optional persistence (`--state`).
//!
//! Does not own: the vendor's real behaviour where it is undocumented; choices made here are
//! listed in `docs/cloud.md`.
//!
//! The demo connector of the built-in fixture: id 910000001, UUID
//! `0b6f1c52-8d3e-4f0a-9c1d-2e7a5b4c3d21`, pincode `4711`.

pub mod data;
pub mod http;
pub mod openapi;
pub mod ops;
pub mod relay;
pub mod ws;

use data::SimData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The demo connector of the built-in fixture.
pub const DEMO_CONNECTOR_ID: i64 = 910_000_001;
pub const DEMO_CONNECTOR_UUID: &str = "0b6f1c52-8d3e-4f0a-9c1d-2e7a5b4c3d21";
pub const DEMO_PINCODE: &str = "4711";
/// A ticket for `vin` on the demo connector that the built-in fixture accepts (a product
/// with its prerequisite answered): what the demo, the daemon bench and the tests create.
pub fn demo_ticket(vin: &str) -> crate::cloud::model::NewTicket {
    use crate::cloud::model::{NewTicket, PrerequisiteAnswer, default_metadata};
    NewTicket {
        vin: vin.into(),
        vehicle_model_id: 200102,
        vehicle_model_variant_id: 2001021,
        connector_id: DEMO_CONNECTOR_ID,
        product_ids: vec![52352],
        product_prerequisites: vec![PrerequisiteAnswer {
            definition_id: 4,
            value: "true".into(),
        }],
        metadata: default_metadata(),
        ..NewTicket::default()
    }
}

/// A Customer API client of the demo connector (UUID and pincode of the built-in fixture),
/// keeping its tokens in memory.
pub fn demo_client(
    base_url: &str,
) -> Result<crate::cloud::client::Client, crate::cloud::error::ApiError> {
    crate::cloud::client::Client::new(
        crate::cloud::client::ClientSettings::for_base_url(base_url),
        Some(crate::cloud::Credentials::ConnectorUuid {
            uuid: DEMO_CONNECTOR_UUID.into(),
            pincode: crate::config::Secret::new(DEMO_PINCODE),
        }),
        None,
    )
}

/// The back office's part, through the simulator's admin interface: an operator joins
/// ticket `id`. Returns the connection UUID (the tunnel session) and the operator's token.
pub async fn admin_join(
    http: &reqwest::Client,
    base_url: &str,
    id: i64,
) -> Result<(String, String), String> {
    let url = format!("{base_url}/admin/tickets/{id}/join");
    let r = http
        .post(&url)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("POST {url}: {}", r.status()));
    }
    let v: serde_json::Value = r.json().await.map_err(|e| format!("POST {url}: {e}"))?;
    match (v["connection_uuid"].as_str(), v["operator_token"].as_str()) {
        (Some(c), Some(t)) => Ok((c.to_string(), t.to_string())),
        _ => Err(format!(
            "POST {url}: no connection_uuid/operator_token in {v}"
        )),
    }
}

/// Default listen address (also the client's default base URL).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8780";

/// Simulator options.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Interval of websocket snapshots (the vendor's is 5 s).
    pub snapshot_interval: Duration,
    /// Lifetime of issued tokens.
    pub token_ttl_s: u64,
    /// Where the state is persisted after each change.
    pub state_file: Option<PathBuf>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            snapshot_interval: Duration::from_secs(5),
            token_ttl_s: 3600,
            state_file: None,
        }
    }
}

/// State shared by all handlers.
pub struct Shared {
    /// Fixture plus changes. A std mutex: critical sections are short and never await.
    pub data: Mutex<SimData>,
    pub opts: SimOptions,
    /// Injected faults, consumed in order.
    pub faults: Mutex<Vec<http::Fault>>,
    /// Bumped to drop every websocket without a close frame.
    pub ws_drop: watch::Sender<u64>,
    /// Bumped on every state change, so websocket snapshots go out at once.
    pub changed: watch::Sender<u64>,
    /// Connected websocket clients.
    pub ws_clients: AtomicUsize,
    /// Subscriptions received since start (tests observe resubscription with it).
    pub ws_subscribes: AtomicU64,
    /// REST requests since start.
    pub requests: AtomicU64,
    /// Ends websocket sessions on shutdown.
    pub shutdown: CancellationToken,
    /// The embedded tunnel relay, once started (`--relay-listen`).
    pub relay: OnceLock<relay::RelayInfo>,
}

impl Shared {
    pub fn new(data: SimData, opts: SimOptions) -> Arc<Shared> {
        Arc::new(Shared {
            data: Mutex::new(data),
            opts,
            faults: Mutex::new(Vec::new()),
            ws_drop: watch::channel(0).0,
            changed: watch::channel(0).0,
            ws_clients: AtomicUsize::new(0),
            ws_subscribes: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            shutdown: CancellationToken::new(),
            relay: OnceLock::new(),
        })
    }

    /// Announce a state change.
    pub fn bump(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Write the state file atomically (0600), logging failures.
    pub fn persist(&self, d: &SimData) {
        let Some(path) = &self.opts.state_file else {
            return;
        };
        if let Err(e) = write_atomic(path, d) {
            tracing::warn!("cannot save the simulator state to {}: {e}", path.display());
        }
    }
}

fn write_atomic(path: &Path, d: &SimData) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let body = serde_json::to_vec_pretty(d).map_err(std::io::Error::other)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Load the data: the state file when it exists, else the fixture file, else built-in.
pub fn load_data(fixture: Option<&Path>, state: Option<&Path>) -> Result<SimData, String> {
    if let Some(s) = state
        && s.exists()
    {
        let text = std::fs::read_to_string(s).map_err(|e| format!("{}: {e}", s.display()))?;
        return SimData::from_json(&text).map_err(|e| format!("state file {}: {e}", s.display()));
    }
    match fixture {
        Some(f) => {
            let text =
                std::fs::read_to_string(f).map_err(|e| format!("fixture {}: {e}", f.display()))?;
            SimData::from_json(&text).map_err(|e| format!("fixture {}: {e}", f.display()))
        }
        None => SimData::builtin().map_err(|e| format!("built-in fixture: {e}")),
    }
}

/// Serve on an already bound listener until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    sh: Arc<Shared>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = http::router(sh.clone());
    let stop = shutdown.clone();
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    sh.shutdown.cancel();
    r
}

/// A simulator running in this process (tests, demo).
pub struct Running {
    pub base_url: String,
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// The status websocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Start on `127.0.0.1:0` (or `addr`) in this process.
pub async fn start(
    data: SimData,
    opts: SimOptions,
    addr: Option<SocketAddr>,
) -> std::io::Result<Running> {
    let listener =
        TcpListener::bind(addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))).await?;
    let addr = listener.local_addr()?;
    let shared = Shared::new(data, opts);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(listener, shared.clone(), shutdown.clone()));
    Ok(Running {
        base_url: format!("http://{addr}"),
        addr,
        shared,
        shutdown,
        task,
    })
}

/// Arguments of `obdgw sim cloud`.
#[derive(Debug, Clone, clap::Args)]
pub struct CloudSimArgs {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Fixture file (JSON, the format of src/sim/cloud/fixture.json) instead of the built-in one.
    #[arg(long, value_name = "FILE")]
    pub fixture: Option<PathBuf>,
    /// Keep the state in FILE across restarts (read at start if present, written on changes).
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Websocket snapshot interval in milliseconds.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub snapshot_interval_ms: u64,
    /// Lifetime of issued tokens in seconds.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub token_ttl_s: u64,
    /// Also serve the tunnel relay on ADDR (`127.0.0.1:0` picks a free port; printed as
    /// `relay ws://ADDR/` on stdout). Session ids are tickets' connection UUIDs; the gateway
    /// authenticates with a login token of the ticket's connector, the operator with the
    /// session token shown by `GET /admin/connections/{uuid}` (docs/cloud.md).
    #[arg(long, value_name = "ADDR")]
    pub relay_listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM) for the relay: it then speaks wss://.
    #[arg(long, value_name = "FILE", requires_all = ["relay_tls_key", "relay_listen"])]
    pub relay_tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the relay.
    #[arg(long, value_name = "FILE", requires_all = ["relay_tls_cert", "relay_listen"])]
    pub relay_tls_key: Option<PathBuf>,
}

/// `obdgw sim cloud`: prints the base URL on stdout once listening, logs to stderr.
pub fn run_cli(args: CloudSimArgs) -> ExitCode {
    let (_, warning) = crate::logging::init(&crate::config::LogConfig::default());
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    let data = match load_data(args.fixture.as_deref(), args.state.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "obdgw sim cloud: {e}; fix the file or omit --fixture to use the built-in fixture"
            );
            return ExitCode::from(2);
        }
    };
    let relay_tls = match (&args.relay_tls_cert, &args.relay_tls_key) {
        (Some(c), Some(k)) => match crate::relay::tls_acceptor(c, k) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("obdgw sim cloud: relay {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let opts = SimOptions {
        snapshot_interval: Duration::from_millis(args.snapshot_interval_ms),
        token_ttl_s: args.token_ttl_s,
        state_file: args.state.clone(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("obdgw sim cloud: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("obdgw sim cloud: cannot listen on {}: {e}; choose another --listen address", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("obdgw sim cloud: {e}");
                return ExitCode::FAILURE;
            }
        };
        let shared = Shared::new(data, opts);
        let shutdown = CancellationToken::new();
        if let Err(e) = crate::signals::spawn(shutdown.clone(), None) {
            eprintln!("obdgw sim cloud: {e:#}");
            return ExitCode::FAILURE;
        }
        let relay = match args.relay_listen {
            Some(a) => match relay::start(a, relay_tls, shared.clone(), shutdown.clone()).await {
                Ok(r) => Some(r),
                Err(e) => {
                    eprintln!("obdgw sim cloud: cannot serve the relay on {a}: {e}; choose another --relay-listen address");
                    return ExitCode::FAILURE;
                }
            },
            None => None,
        };
        {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "http://{addr}");
            if let Some((url, _)) = &relay {
                let _ = writeln!(out, "relay {url}");
            }
            let _ = out.flush();
        }
        tracing::info!(
            "cloud simulator on http://{addr} (websocket ws://{addr}/v1/ws, OpenAPI http://{addr}/openapi.json); demo connector {DEMO_CONNECTOR_UUID}, pincode in docs/cloud.md"
        );
        let served = serve(listener, shared, shutdown.clone()).await;
        shutdown.cancel();
        if let Some((_, task)) = relay {
            let _ = task.await;
        }
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("obdgw sim cloud: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
