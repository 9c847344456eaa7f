//! Configuration: defaults, then the TOML file, then `OBDGW_*` environment variables.
//!
//! Owns: the configuration schema (every key, its default and its meaning), loading with
//! provenance, the cross-field validation pass, secret redaction and `obdgw config check`.
//!
//! Does not own: what components do with their settings.
//!
//! Every error names the key, where its value came from (file and line, the environment
//! variable, or the built-in default) and what was expected.

mod error;
mod secret;

pub use error::{ConfigError, ConfigIssue};
pub use secret::Secret;

use crate::router::frame::FrameKind;
use crate::router::{IdRule, OverflowPolicy};
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The configuration file used when none is named.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/obdgw/obdgw.toml";
/// Prefix of environment variables that override configuration keys (`__` separates levels).
pub const ENV_PREFIX: &str = "OBDGW_";
/// Environment variables with this prefix that are command-line options, not keys.
/// `SIM_DIR` is where `sim:` CAN buses live; `REQUIRE_CAN` makes the SocketCAN tests fail
/// rather than skip on a kernel without CAN.
/// The others are command-line options of `obdgw api`, `obdgw operator` and `obdgw relay`
/// that clap reads from the environment (`tests/cli.rs` checks this list against clap).
pub const ENV_NOT_KEYS: &[&str] = &[
    "CONFIG",
    "SIM_DIR",
    "REQUIRE_CAN",
    "BASE_URL",
    "STATE_DIR",
    "OPERATOR_TOKEN",
    "RELAY_TOKENS",
    "SOCKET",
];

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Logging.
    pub log: LogConfig,
    /// Process-level settings.
    pub daemon: DaemonConfig,
    /// The frame-routing core: ports and routes.
    pub router: RouterConfig,
    /// The vendor Customer API: endpoint, login, status websocket.
    pub cloud: crate::cloud::config::CloudConfig,
    /// The DoIP client (tester) toward the vehicle.
    pub doip: crate::vehicle::doip::DoipClientConfig,
    /// CAN interfaces (`[[can]]` entries): SocketCAN or the `sim:` loopback bus.
    /// (Not rendered when empty; the keys are documented in docs/can.md.)
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub can: Vec<crate::vehicle::can::CanInterfaceConfig>,
    /// The gateway's side of a remote diagnostic session (`[tunnel]`; docs/operator.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<crate::tunnel::gateway::TunnelConfig>,
    /// Prometheus metrics over HTTP (`[metrics]`); off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    /// TLS for the relay and the cloud (`[tls]`): a pinned CA instead of the system store.
    #[serde(skip_serializing_if = "is_default_tls")]
    pub tls: crate::tls::TlsConfig,
}

fn is_default_tls(t: &crate::tls::TlsConfig) -> bool {
    *t == crate::tls::TlsConfig::default()
}

/// `[metrics]`: where the Prometheus text endpoint listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `ip:port`; loopback by default. Another address exposes counters of the car's
    /// traffic to that network.
    pub listen: std::net::SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

/// Where log records go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// journald when stderr is connected to the journal (`JOURNAL_STREAM`), text otherwise.
    #[default]
    Auto,
    /// Human-readable text on stderr.
    Text,
    /// Native journald records (falls back to text when no journal socket exists).
    Journald,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: a level (`info`) or directives (`info,obdgw::router=debug`).
    /// `RUST_LOG`, when set, wins.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Directory for persistent state (tokens); created with mode 0700 when missing.
    pub state_dir: PathBuf,
    /// How long shutdown waits for tasks to finish before giving up, in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// The control socket (`obdgw status`, `obdgw reload`): a Unix socket created mode
    /// 0660 with the daemon's group. Members of the group read; root and the daemon's
    /// user may act (reload).
    pub control_socket: PathBuf,
}

/// Where the control socket is by default (systemd's `RuntimeDirectory=obdgw`).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/obdgw/control.sock";

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            state_dir: PathBuf::from("/var/lib/obdgw"),
            shutdown_timeout_ms: 5_000,
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Default capacity (frames) of each port's sink queue.
    pub queue_capacity: usize,
    /// Ports: named sources and sinks of frames.
    pub ports: Vec<PortConfig>,
    /// Routes from one source port to one or more sink ports.
    pub routes: Vec<RouteConfig>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            queue_capacity: 1024,
            ports: Vec::new(),
            routes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// Unique name; routes refer to ports by it.
    pub name: String,
    /// Sink queue capacity in frames; `router.queue_capacity` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_capacity: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A name for logs and status; `FROM->TO` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Source port.
    pub from: String,
    /// Sink ports (fan-out).
    pub to: Vec<String>,
    /// Frame kinds carried: `can`, `canfd`, `isotp`, `doip`. Empty means all.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Id filters: `0x7E8` (exact), `0x7E0/0x7F8` (id/mask), `0x700-0x7FF` (range).
    /// Empty means every id. Frames pass when any filter matches.
    #[serde(default)]
    pub ids: Vec<String>,
    /// What happens when a sink queue is full: `backpressure` (the source waits; nothing is
    /// dropped) or `shed-oldest` (the oldest queued frame is dropped and counted).
    #[serde(default)]
    pub overflow: OverflowPolicy,
}

/// Where the configuration file is.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// Named explicitly: it must exist.
    Explicit(PathBuf),
    /// The default path: used if it exists, otherwise built-in defaults.
    Default(PathBuf),
}

impl ConfigSource {
    pub fn from_arg(arg: Option<&Path>) -> Self {
        match arg {
            Some(p) => ConfigSource::Explicit(p.to_path_buf()),
            None => ConfigSource::Default(PathBuf::from(DEFAULT_CONFIG_PATH)),
        }
    }
}

/// A loaded, validated configuration and how it was obtained.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The file that was read, if any.
    pub file: Option<PathBuf>,
    /// Warnings to log once logging is up (e.g. "default file missing").
    pub warnings: Vec<String>,
}

/// Load and validate the configuration, reading environment variables from the process.
pub fn load(source: &ConfigSource) -> Result<Loaded, ConfigError> {
    load_with_env(source, std::env::vars())
}

/// Load and validate, with the environment given explicitly (for tests).
pub fn load_with_env(
    source: &ConfigSource,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let mut warnings = Vec::new();
    let (file, text) = match source {
        ConfigSource::Explicit(p) => match std::fs::read_to_string(p) {
            Ok(t) => (Some(p.clone()), Some(t)),
            Err(e) => {
                return Err(ConfigError::single(ConfigIssue {
                    key: String::new(),
                    source: p.display().to_string(),
                    message: format!(
                        "cannot read the configuration file: {e}; check the path given with --config"
                    ),
                }));
            }
        },
        ConfigSource::Default(p) => match std::fs::read_to_string(p) {
            Ok(t) => (Some(p.clone()), Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                warnings.push(format!(
                    "configuration file {} not found; using built-in defaults",
                    p.display()
                ));
                (None, None)
            }
            Err(e) => {
                return Err(ConfigError::single(ConfigIssue {
                    key: String::new(),
                    source: p.display().to_string(),
                    message: format!("cannot read the configuration file: {e}"),
                }));
            }
        },
    };

    // Syntax errors first, with the line, before figment flattens them.
    if let (Some(path), Some(text)) = (&file, &text)
        && let Err(e) = text.parse::<toml::Table>()
    {
        let line = e
            .span()
            .map(|s| error::line_of(text, s.start))
            .map(|l| format!(":{l}"))
            .unwrap_or_default();
        return Err(ConfigError::single(ConfigIssue {
            key: String::new(),
            source: format!("{}{line}", path.display()),
            message: format!("invalid TOML: {}", e.message()),
        }));
    }

    if let (Some(path), Some(text)) = (&file, &text)
        && let Ok(table) = text.parse::<toml::Table>()
        && let Some(v) = table.get("tunnel").and_then(|t| t.get("allow_can_tx"))
    {
        return Err(ConfigError::single(ConfigIssue {
            key: "tunnel.allow_can_tx".into(),
            source: path.display().to_string(),
            message: format!(
                "was replaced by [tunnel.policy] (raw transmit is now off by default): remove `allow_can_tx = {v}`{}",
                if v.as_bool() == Some(true) {
                    " and write raw_tx = true with the ids operators may send, e.g. raw_tx_ids = [\"0x7E0-0x7E7\"], under [tunnel.policy]"
                } else {
                    ""
                }
            ),
        }));
    }

    let env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| {
            k.strip_prefix(ENV_PREFIX)
                .is_some_and(|rest| !rest.is_empty() && !ENV_NOT_KEYS.contains(&rest))
        })
        .collect();

    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = &file {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(EnvSnapshot { vars: env });

    let ctx = error::Context {
        figment: &figment,
        file: file.as_deref(),
        text: text.as_deref(),
    };
    let config: Config = figment
        .extract()
        .map_err(|e| ConfigError::from_figment(e, &ctx))?;
    let issues = validate(&config);
    if !issues.is_empty() {
        return Err(ConfigError::from_validation(issues, &ctx));
    }
    Ok(Loaded {
        config,
        file,
        warnings,
    })
}

/// A figment provider over a fixed snapshot of environment variables, so tests never touch
/// the process environment and loading is reproducible.
/// Only variables starting with [`ENV_PREFIX`] are given to it; `__` separates levels and
/// values are parsed like figment's `Env` does (numbers, booleans, arrays, else strings).
struct EnvSnapshot {
    vars: Vec<(String, String)>,
}

impl figment::Provider for EnvSnapshot {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(error::ENV_SOURCE_NAME)
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        use figment::value::{Dict, Value};
        let mut root = Dict::new();
        for (name, raw) in &self.vars {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let keys: Vec<String> = rest.split("__").map(|k| k.to_ascii_lowercase()).collect();
            if keys.iter().any(|k| k.is_empty()) {
                continue;
            }
            // figment's value parser slices by character index when it unescapes a quoted
            // string, and panics on a non-ASCII character before a backslash (found by the
            // `config` fuzz target): such a value is taken as the plain string it is.
            let value: Value = if raw.is_ascii() || !raw.contains('\\') {
                raw.parse().unwrap_or_else(|_| Value::from(raw.clone()))
            } else {
                Value::from(raw.clone())
            };
            insert_nested(&mut root, &keys, value);
        }
        Ok(figment::Profile::Default.collect(root))
    }
}

fn insert_nested(dict: &mut figment::value::Dict, keys: &[String], value: figment::value::Value) {
    use figment::value::{Dict, Value};
    match keys {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_nested(inner, rest, value);
            } else {
                let mut inner = Dict::new();
                insert_nested(&mut inner, rest, value);
                *entry = Value::from(inner);
            }
        }
    }
}

/// Upper bound on any queue capacity, to keep a typo from reserving gigabytes.
pub const MAX_QUEUE_CAPACITY: usize = 1 << 20;

fn valid_port_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// A log filter is a comma-separated list of `LEVEL` or `TARGET=LEVEL` directives. tracing's
/// own parser takes a bare word as a target name, so `loud` would silently mean "everything
/// from a module called loud"; reject that here.
fn check_log_filter(s: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |l: &str| LEVELS.iter().any(|x| x.eq_ignore_ascii_case(l.trim()));
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.rsplit_once('=') {
            Some((_, level)) if is_level(level) => {}
            Some((_, level)) => return Err(format!("`{level}` is not a level")),
            None if is_level(part) => {}
            None => return Err(format!("`{part}` is neither a level nor TARGET=LEVEL")),
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(s)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The cross-field validation pass. Returns every problem found, not just the first.
pub fn validate(config: &Config) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    let mut issue = |key: String, message: String| {
        issues.push(ConfigIssue {
            key,
            source: String::new(),
            message,
        })
    };

    if let Err(e) = check_log_filter(&config.log.level) {
        issue(
            "log.level".into(),
            format!(
                "`{}` is not a log filter ({e}); expected a level (off, error, warn, info, debug, trace) or directives such as `info,obdgw::router=debug`",
                config.log.level
            ),
        );
    }
    if config.daemon.shutdown_timeout_ms == 0 || config.daemon.shutdown_timeout_ms > 600_000 {
        issue(
            "daemon.shutdown_timeout_ms".into(),
            format!(
                "{} is out of range; expected 1..=600000 milliseconds",
                config.daemon.shutdown_timeout_ms
            ),
        );
    }

    for (key, message) in config.doip.validate() {
        issue(format!("doip.{key}"), message);
    }
    if let Some(t) = &config.tunnel {
        let names: Vec<&str> = config.can.iter().map(|c| c.name.as_str()).collect();
        for (key, message) in t.validate(&names) {
            issue(format!("tunnel.{key}"), message);
        }
        if let Err(e) = crate::tls::check_scheme(&t.relay_url) {
            issue("tunnel.relay_url".into(), e);
        }
        if t.mode() == crate::tunnel::gateway::TunnelMode::CloudDriven
            && config.cloud.connector_uuid.is_none()
        {
            issue(
                "tunnel.session".into(),
                "cloud-driven sessions (no tunnel.session) need cloud.connector_uuid (and the pincode: cloud.pincode_file or the systemd credential `pincode`); or set tunnel.session and tunnel.token for manual mode".into(),
            );
        }
    }
    if let Some(ca) = &config.tls.ca_file
        && let Err(e) = crate::tls::client_config_with_ca(ca)
    {
        issue(
            "tls.ca_file".into(),
            format!(
                "{e}; give a readable PEM CA certificate or remove the key to use the system's trust store"
            ),
        );
    }
    if config.daemon.control_socket.as_os_str().is_empty() {
        issue(
            "daemon.control_socket".into(),
            format!("is empty; expected a path such as {DEFAULT_CONTROL_SOCKET}"),
        );
    }

    let r = &config.router;
    if r.queue_capacity == 0 || r.queue_capacity > MAX_QUEUE_CAPACITY {
        issue(
            "router.queue_capacity".into(),
            format!(
                "{} is out of range; expected 1..={MAX_QUEUE_CAPACITY} frames",
                r.queue_capacity
            ),
        );
    }
    let mut names: Vec<&str> = Vec::new();
    for (i, p) in r.ports.iter().enumerate() {
        if !valid_port_name(&p.name) {
            issue(
                format!("router.ports[{i}].name"),
                format!(
                    "`{}` is not a valid port name; expected 1-64 characters from A-Z a-z 0-9 - _ . :",
                    p.name
                ),
            );
        }
        if names.contains(&p.name.as_str()) {
            issue(
                format!("router.ports[{i}].name"),
                format!(
                    "port `{}` is declared twice; port names must be unique",
                    p.name
                ),
            );
        }
        names.push(&p.name);
        if let Some(c) = p.queue_capacity
            && (c == 0 || c > MAX_QUEUE_CAPACITY)
        {
            issue(
                format!("router.ports[{i}].queue_capacity"),
                format!("{c} is out of range; expected 1..={MAX_QUEUE_CAPACITY} frames"),
            );
        }
    }

    let known = |n: &str| names.contains(&n);
    let declared = if names.is_empty() {
        "no ports are declared; add [[router.ports]] entries".to_string()
    } else {
        format!("declared ports: {}", names.join(", "))
    };
    // sink name -> (policy, route index) of the first route into it
    let mut sink_policy: Vec<(&str, OverflowPolicy, usize)> = Vec::new();
    let mut per_source: Vec<(&str, usize)> = Vec::new();
    for (i, route) in r.routes.iter().enumerate() {
        let key = |field: &str| format!("router.routes[{i}].{field}");
        if !known(&route.from) {
            issue(
                key("from"),
                format!("unknown port `{}`; {declared}", route.from),
            );
        }
        match per_source.iter_mut().find(|(n, _)| *n == route.from) {
            Some((_, count)) => *count += 1,
            None => per_source.push((&route.from, 1)),
        }
        if route.to.is_empty() {
            issue(key("to"), "no sink ports; expected at least one".into());
        }
        for (j, sink) in route.to.iter().enumerate() {
            if !known(sink) {
                issue(
                    format!("router.routes[{i}].to[{j}]"),
                    format!("unknown port `{sink}`; {declared}"),
                );
            }
            if *sink == route.from {
                issue(
                    format!("router.routes[{i}].to[{j}]"),
                    format!(
                        "port `{sink}` routes to itself; a route's sinks must differ from its source"
                    ),
                );
            }
            match sink_policy.iter().find(|(n, _, _)| *n == sink.as_str()) {
                Some((_, policy, first)) if *policy != route.overflow => issue(
                    key("overflow"),
                    format!(
                        "sink `{sink}` already receives route {first} with overflow `{}`; all routes into one sink must share its policy (use separate ports)",
                        policy.name()
                    ),
                ),
                Some(_) => {}
                None => sink_policy.push((sink, route.overflow, i)),
            }
        }
        for (j, k) in route.kinds.iter().enumerate() {
            if FrameKind::from_name(k).is_none() {
                issue(
                    format!("router.routes[{i}].kinds[{j}]"),
                    format!("unknown frame kind `{k}`; expected one of can, canfd, isotp, doip"),
                );
            }
        }
        for (j, id) in route.ids.iter().enumerate() {
            if let Err(e) = id.parse::<IdRule>() {
                issue(format!("router.routes[{i}].ids[{j}]"), e.to_string());
            }
        }
    }
    for (source, count) in per_source {
        if count > crate::router::MAX_ROUTES_PER_SOURCE {
            issue(
                "router.routes".into(),
                format!(
                    "port `{source}` is the source of {count} routes; at most {} are allowed",
                    crate::router::MAX_ROUTES_PER_SOURCE
                ),
            );
        }
    }
    issues.extend(crate::cloud::config::validate(&config.cloud));
    crate::vehicle::can::config::validate(&config.can, |key, message| {
        issues.push(ConfigIssue {
            key,
            source: String::new(),
            message,
        })
    });
    issues
}

/// The effective configuration as TOML, secrets redacted.
pub fn render(config: &Config) -> String {
    toml::to_string_pretty(config).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

/// `obdgw config check`: print the effective configuration, exit 0 when valid, 2 when not.
pub fn check_cli(config: Option<&Path>) -> ExitCode {
    let source = ConfigSource::from_arg(config);
    match load(&source) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            let from = loaded
                .file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "built-in defaults".into());
            println!("# effective configuration (from {from} and OBDGW_* variables)");
            print!("{}", render(&loaded.config));
            match &loaded.config.tunnel {
                Some(t) => eprintln!("tunnel mode: {}", t.mode().describe()),
                None => eprintln!("tunnel mode: none (no [tunnel] section: no remote sessions)"),
            }
            eprintln!("configuration is valid");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests;
