//! `obdgw login`, `obdgw api <group> <operation> [...]` and `obdgw api watch`.
//!
//! Owns: the command line of every API operation, generated from the operation table (one
//! subcommand per operation, one flag per parameter), turning flags into a request, paging
//! (`--offset`, `--limit`, `--all`), printing answers as tables or `--json`, following the
//! status websocket as one line per event (`watch`), and where a person's tokens are kept
//! (the state directory rule, [`resolve_state_dir`]).
//! Tokens in answers are shortened, never printed whole; the pincode is never printed.
//!
//! Does not own: the status websocket itself (`status`), the client (`client`).

use super::client::Client;
use super::config::CloudConfig;
use super::error::ApiError;
use super::spec::{Loc, OPS, Op, OpSpec, Ty};
use super::status::{StatusEvent, TicketState};
use super::token::Credentials;
use super::validate::{ApiRequest, MAX_LIMIT};
use crate::config::{ConfigSource, Secret};
use clap::{Arg, ArgAction, ArgMatches, Command};
use serde_json::{Map, Value, json};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Options shared by `login` and `api`.
#[derive(Debug, Clone, clap::Args)]
pub struct CloudCliArgs {
    /// Configuration file (default /etc/obdgw/obdgw.toml when it exists).
    #[arg(
        long,
        short = 'c',
        value_name = "PATH",
        env = "OBDGW_CONFIG",
        global = true
    )]
    pub config: Option<PathBuf>,
    /// REST base URL, overriding cloud.base_url (e.g. the simulator's printed URL).
    #[arg(long, value_name = "URL", env = "OBDGW_BASE_URL", global = true)]
    pub base_url: Option<String>,
    /// Where tokens are kept. Default: daemon.state_dir when configured (file or
    /// OBDGW_DAEMON__STATE_DIR), $STATE_DIRECTORY under systemd, else
    /// $XDG_STATE_HOME/obdgw or ~/.local/state/obdgw.
    #[arg(long, value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `obdgw login`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoginArgs {
    #[command(flatten)]
    pub common: CloudCliArgs,
    /// Log in with a one-time password instead of the connector's UUID and pincode.
    #[arg(long, value_name = "OTP", conflicts_with = "connector_id")]
    pub otp: Option<String>,
    /// Use the deprecated connector ID + pincode login.
    #[arg(long, value_name = "ID")]
    pub connector_id: Option<i64>,
}

/// `obdgw api ...`: an operation of the table, or `watch`.
#[derive(Debug, Clone)]
pub struct ApiArgs {
    pub common: CloudCliArgs,
    pub command: ApiCommand,
}

/// What `obdgw api` does.
#[derive(Debug, Clone)]
pub enum ApiCommand {
    /// `obdgw api <group> <operation>`: generated from the operation table.
    Call(CallArgs),
    /// `obdgw api watch`: follow the status websocket.
    Watch(WatchArgs),
}

/// One operation with its flags.
#[derive(Debug, Clone)]
pub struct CallArgs {
    pub op: Op,
    /// (parameter name, raw value) as given.
    pub values: Vec<(&'static str, String)>,
    pub offset: Option<u64>,
    pub limit: Option<u32>,
    pub all: bool,
}

/// `obdgw api watch` (its help text: [`WATCH_ABOUT`], [`WATCH_LONG`]).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WatchArgs {
    /// The connector to follow, overriding cloud.connector_uuid.
    #[arg(long, value_name = "UUID")]
    pub connector_uuid: Option<String>,
    /// A file holding the connector's pincode, overriding cloud.pincode and
    /// cloud.pincode_file (never give the pincode itself on the command line).
    #[arg(long, value_name = "PATH")]
    pub pincode_file: Option<PathBuf>,
}

const WATCH_ABOUT: &str = "Follow the connector's status websocket and print connector, ticket and connection events, one line each";
const WATCH_LONG: &str = "Follow the connector's status websocket (REST polling while it is down) and print connector, ticket and connection events, one line each; with --json one JSON object per line (fields in docs/cloud.md). Logs in like `obdgw login` (connector UUID and pincode from the configuration, the environment or the flags). Ctrl-C ends it (exit 0). Exit 1 when the first login or the connector lookup fails, 2 on invalid input.";

/// Kebab-case flag of a parameter name (`connectorUUID` -> `connector-uuid`,
/// `message.original` -> `message-original`).
pub fn flag(name: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = name.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if *c == '_' || *c == '.' {
            out.push('-');
        } else if c.is_ascii_uppercase() {
            let prev_lower = i > 0 && chars[i - 1].is_ascii_lowercase();
            if prev_lower {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(*c);
        }
    }
    out
}

fn value_hint(ty: Ty) -> &'static str {
    match ty {
        Ty::Int => "INT",
        Ty::Num => "NUMBER",
        Ty::Str | Ty::Code => "TEXT",
        Ty::Bool => "true|false",
        Ty::Uuid => "UUID",
        Ty::Email => "EMAIL",
        Ty::IntList => "ID,ID,...",
        Ty::Object => "JSON-OBJECT",
        Ty::ObjectList => "JSON-ARRAY",
    }
}

/// Parameters the CLI fills in when absent.
fn defaulted(spec: &OpSpec, name: &str) -> bool {
    matches!((spec.op, name), (Op::TicketsCreate, "metadata"))
        || matches!(
            (spec.op, name),
            (Op::AuthLoginUuid, "pincode" | "connector_uuid") | (Op::AuthLoginPincode, "pincode")
        )
}

fn op_command(spec: &'static OpSpec) -> Command {
    let mut c = Command::new(spec.name).about(spec.summary);
    for p in spec.params {
        let required = p.required && !defaulted(spec, p.name);
        let mut help = p.help.to_string();
        if defaulted(spec, p.name) {
            help.push_str(match p.name {
                "metadata" => " [default: obdgw's own metadata]",
                _ => " [default: from the configuration]",
            });
        }
        let mut a = Arg::new(p.name)
            .long(flag(p.name))
            .value_name(value_hint(p.ty))
            .help(help)
            .required(required)
            .action(ArgAction::Set);
        if p.name == "message.original" {
            a = a.visible_alias("text");
        }
        c = c.arg(a);
    }
    if spec.paged {
        c = c
            .arg(
                Arg::new("offset")
                    .long("offset")
                    .value_name("N")
                    .help("items to skip")
                    .value_parser(clap::value_parser!(u64)),
            )
            .arg(
                Arg::new("limit")
                    .long("limit")
                    .value_name("N")
                    .help("page size (0..=200; the service's default is 20)")
                    .value_parser(clap::value_parser!(u32).range(0..=i64::from(MAX_LIMIT))),
            )
            .arg(
                Arg::new("all")
                    .long("all")
                    .action(ArgAction::SetTrue)
                    .help("fetch every page")
                    .conflicts_with("offset"),
            );
    }
    c
}

fn groups() -> Vec<&'static str> {
    let mut g: Vec<&'static str> = Vec::new();
    for s in OPS {
        if !g.contains(&s.group) {
            g.push(s.group);
        }
    }
    g
}

impl clap::Args for ApiArgs {
    fn augment_args(cmd: Command) -> Command {
        let mut cmd = CloudCliArgs::augment_args(cmd)
            .about("Call any Customer API operation")
            .subcommand_required(true)
            .arg_required_else_help(true);
        for g in groups() {
            let mut gc = Command::new(g)
                .about(format!("{g} operations"))
                .subcommand_required(true)
                .arg_required_else_help(true);
            for s in OPS.iter().filter(|s| s.group == g) {
                gc = gc.subcommand(op_command(s));
            }
            cmd = cmd.subcommand(gc);
        }
        cmd.subcommand(
            <WatchArgs as clap::Args>::augment_args(Command::new("watch"))
                .about(WATCH_ABOUT)
                .long_about(WATCH_LONG),
        )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for ApiArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let common = <CloudCliArgs as clap::FromArgMatches>::from_arg_matches(m)?;
        let (group, gm) = m
            .subcommand()
            .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::MissingSubcommand))?;
        if group == "watch" {
            return Ok(ApiArgs {
                common,
                command: ApiCommand::Watch(<WatchArgs as clap::FromArgMatches>::from_arg_matches(
                    gm,
                )?),
            });
        }
        let (name, om) = gm
            .subcommand()
            .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::MissingSubcommand))?;
        let spec = OPS
            .iter()
            .find(|s| s.group == group && s.name == name)
            .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::InvalidSubcommand))?;
        let mut values = Vec::new();
        for p in spec.params {
            if let Some(v) = om.get_one::<String>(p.name) {
                values.push((p.name, v.clone()));
            }
        }
        let paged = |k: &str| spec.paged.then(|| om.get_one::<u64>(k).copied()).flatten();
        Ok(ApiArgs {
            common,
            command: ApiCommand::Call(CallArgs {
                op: spec.op,
                values,
                offset: paged("offset"),
                limit: spec
                    .paged
                    .then(|| om.get_one::<u32>("limit").copied())
                    .flatten(),
                all: spec.paged && om.get_flag("all"),
            }),
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

/// Build the request of an operation from raw flag values. Values that do not parse are
/// passed on as strings so validation names the field.
pub fn build_request(spec: &OpSpec, values: &[(&str, String)]) -> Result<ApiRequest, String> {
    let mut req = ApiRequest::new();
    let mut body = Map::new();
    let mut has_body = false;
    for p in spec.params {
        let Some((_, raw)) = values.iter().find(|(n, _)| *n == p.name) else {
            continue;
        };
        match p.loc {
            Loc::Path => {
                req.path.insert(p.name.to_string(), raw.clone());
            }
            Loc::Query => req.query.push((p.name.to_string(), raw.clone())),
            Loc::Body => {
                has_body = true;
                let v = match p.ty {
                    Ty::Int => raw
                        .trim()
                        .parse::<i64>()
                        .map(Value::from)
                        .unwrap_or_else(|_| json!(raw)),
                    Ty::Num => raw
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                        .map(Value::Number)
                        .unwrap_or_else(|| json!(raw)),
                    Ty::Bool => match raw.as_str() {
                        "true" | "1" | "yes" => json!(true),
                        "false" | "0" | "no" => json!(false),
                        _ => json!(raw),
                    },
                    Ty::IntList => Value::Array(
                        raw.split(',')
                            .filter(|s| !s.trim().is_empty())
                            .map(|s| {
                                s.trim()
                                    .parse::<i64>()
                                    .map(Value::from)
                                    .unwrap_or_else(|_| json!(s))
                            })
                            .collect(),
                    ),
                    Ty::Object | Ty::ObjectList => serde_json::from_str(raw)
                        .map_err(|e| format!("--{} is not JSON: {e}", flag(p.name)))?,
                    Ty::Str | Ty::Code | Ty::Uuid | Ty::Email => json!(raw),
                };
                match p.name.split_once('.') {
                    Some((outer, inner)) => {
                        let o = body.entry(outer.to_string()).or_insert_with(|| json!({}));
                        o[inner] = v;
                    }
                    None => {
                        body.insert(p.name.to_string(), v);
                    }
                }
            }
        }
    }
    if spec.params.iter().any(|p| p.loc == Loc::Body && p.required) || has_body {
        req.body = Some(Value::Object(body));
    }
    Ok(req)
}

/// Where a state directory setting came from (see [`resolve_state_dir`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateDirSource {
    /// `--state-dir`.
    Flag,
    /// `OBDGW_DAEMON__STATE_DIR` (the systemd unit sets it).
    Environment,
    /// `daemon.state_dir` in the configuration file.
    File,
    /// `$STATE_DIRECTORY`, set by systemd for a unit with `StateDirectory=`.
    Systemd,
    /// `$XDG_STATE_HOME/obdgw`.
    XdgStateHome,
    /// `~/.local/state/obdgw` (XDG's default).
    Home,
}

/// Where `obdgw login` and `obdgw api` keep tokens. The service is told explicitly (the
/// systemd unit sets `OBDGW_DAEMON__STATE_DIR=/var/lib/obdgw` and, through
/// `StateDirectory=`, `$STATE_DIRECTORY`); a person's shell sets neither, so a person gets
/// the XDG state directory instead of a silently created `/var/lib/obdgw`. In order:
/// `--state-dir`; `OBDGW_DAEMON__STATE_DIR`; `daemon.state_dir` written in the
/// configuration file; the first path of `$STATE_DIRECTORY`; `$XDG_STATE_HOME/obdgw` (when
/// absolute); `$HOME/.local/state/obdgw`. `configured` is the loaded `daemon.state_dir`,
/// `file_sets_it` whether the file read names it, `env` reads the process environment.
pub fn resolve_state_dir(
    flag: Option<&Path>,
    configured: &Path,
    file_sets_it: bool,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<(PathBuf, StateDirSource), String> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(f) = flag {
        return Ok((f.to_path_buf(), StateDirSource::Flag));
    }
    if set("OBDGW_DAEMON__STATE_DIR").is_some() {
        return Ok((configured.to_path_buf(), StateDirSource::Environment));
    }
    if file_sets_it {
        return Ok((configured.to_path_buf(), StateDirSource::File));
    }
    if let Some(dirs) = set("STATE_DIRECTORY")
        && let Some(first) = std::env::split_paths(&dirs).find(|p| p.is_absolute())
    {
        return Ok((first, StateDirSource::Systemd));
    }
    if let Some(x) = set("XDG_STATE_HOME").map(PathBuf::from)
        && x.is_absolute()
    {
        return Ok((x.join("obdgw"), StateDirSource::XdgStateHome));
    }
    match set("HOME").map(PathBuf::from) {
        Some(h) if h.is_absolute() => Ok((
            h.join(".local").join("state").join("obdgw"),
            StateDirSource::Home,
        )),
        _ => Err("no directory for the tokens: neither $XDG_STATE_HOME nor $HOME is set; give --state-dir DIR (or set daemon.state_dir)".into()),
    }
}

/// Whether the configuration file names `daemon.state_dir` (a person's explicit choice).
fn file_sets_state_dir(file: Option<&Path>) -> bool {
    let Some(text) = file.and_then(|f| std::fs::read_to_string(f).ok()) else {
        return false;
    };
    text.parse::<toml::Table>().is_ok_and(|t| {
        t.get("daemon")
            .and_then(|d| d.as_table())
            .is_some_and(|d| d.contains_key("state_dir"))
    })
}

struct Env {
    client: Client,
    cloud: CloudConfig,
    store: Option<PathBuf>,
}

fn setup(common: &CloudCliArgs, watch: Option<&WatchArgs>) -> Result<Env, (ExitCode, String)> {
    let source = ConfigSource::from_arg(common.config.as_deref());
    let loaded = crate::config::load(&source).map_err(|e| {
        (
            ExitCode::from(2),
            format!("{e}\nrun `obdgw config check` to see every problem"),
        )
    })?;
    let mut log = loaded.config.log.clone();
    log.level = "warn".into();
    crate::logging::init(&log);
    crate::tls::configure(&loaded.config.tls).map_err(|e| (ExitCode::from(2), e))?;
    let mut cloud = loaded.config.cloud.clone();
    if let Some(b) = &common.base_url {
        cloud.base_url = b.trim_end_matches('/').to_string();
        let issues = super::config::validate(&cloud);
        if let Some(i) = issues.first() {
            return Err((ExitCode::from(2), format!("--base-url: {}", i.message)));
        }
    }
    if let Some(w) = watch {
        if let Some(u) = &w.connector_uuid {
            if !super::validate::is_uuid(u) {
                return Err((
                    ExitCode::from(2),
                    format!(
                        "--connector-uuid: `{u}` is not a UUID (8-4-4-4-12 hexadecimal digits, as printed on the connector's label)"
                    ),
                ));
            }
            cloud.connector_uuid = Some(u.to_ascii_lowercase());
            cloud.connector_id = None;
        }
        if let Some(f) = &w.pincode_file {
            cloud.pincode = None;
            cloud.pincode_file = Some(f.clone());
        }
    }
    let (state, _) = resolve_state_dir(
        common.state_dir.as_deref(),
        &loaded.config.daemon.state_dir,
        file_sets_state_dir(loaded.file.as_deref()),
        |k| std::env::var_os(k),
    )
    .map_err(|e| (ExitCode::from(2), e))?;
    let client = Client::from_config(&cloud, Some(&state))
        .map_err(|e| (ExitCode::FAILURE, e.to_string()))?;
    Ok(Env {
        client,
        cloud,
        store: Some(
            super::token::TokenStore::in_dir(&state)
                .path()
                .to_path_buf(),
        ),
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, (ExitCode, String)> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            (
                ExitCode::FAILURE,
                format!("cannot start the async runtime: {e}"),
            )
        })
}

fn exit_for(e: &ApiError) -> ExitCode {
    match e {
        ApiError::Invalid { .. } => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

/// `obdgw login`.
pub fn run_login(args: LoginArgs) -> ExitCode {
    let result = (|| {
        let env = setup(&args.common, None)?;
        let rt = runtime()?;
        rt.block_on(async {
            let info = match (&args.otp, args.connector_id) {
                (Some(otp), _) => env.client.login_with(&Credentials::Otp(Secret::new(otp.clone()))).await,
                (None, Some(id)) => {
                    let pin = env.cloud.resolve_pincode().map_err(|e| (ExitCode::from(2), e))?.ok_or_else(no_pincode)?;
                    env.client.login_with(&Credentials::ConnectorId { id, pincode: pin }).await
                }
                (None, None) => env.client.login().await,
            }
            .map_err(|e| (exit_for(&e), e.to_string()))?;
            if let Some(path) = &env.store {
                let dir = path.parent().unwrap_or(path.as_path());
                let stored = super::token::TokenStore::in_dir(dir).load().ok().flatten();
                if stored.is_none_or(|s| s.expires_at != info.expires_at) {
                    return Err((
                        ExitCode::FAILURE,
                        format!(
                            "logged in, but the tokens could not be stored in {}; give --state-dir DIR or run as the user that owns daemon.state_dir",
                            path.display()
                        ),
                    ));
                }
            }
            let now = super::token::now_unix();
            let until = crate::sim::cloud::data::rfc3339(info.expires_at);
            if args.common.json {
                println!("{}", json!({ "subject": info.subject, "expires_at": info.expires_at, "token_store": env.store }));
            } else {
                println!(
                    "logged in as {}; token valid until {until} (in {} min); stored in {}",
                    info.subject,
                    info.expires_at.saturating_sub(now) / 60,
                    env.store.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
                );
            }
            Ok(())
        })
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("obdgw login: {msg}");
            code
        }
    }
}

fn no_pincode() -> (ExitCode, String) {
    (
        ExitCode::from(2),
        "no pincode configured: set cloud.pincode_file (or cloud.pincode, or the systemd credential `pincode`)".into(),
    )
}

/// `obdgw api ...`.
pub fn run_api(args: ApiArgs) -> ExitCode {
    match args.command {
        ApiCommand::Call(call) => run_call(&args.common, call),
        ApiCommand::Watch(w) => run_watch(&args.common, &w),
    }
}

fn run_call(common: &CloudCliArgs, args: CallArgs) -> ExitCode {
    let spec = args.op.spec();
    let result = (|| {
        let env = setup(common, None)?;
        let mut values = args.values.clone();
        if spec.op == Op::TicketsCreate && !values.iter().any(|(n, _)| *n == "metadata") {
            values.push(("metadata", super::model::default_metadata().to_string()));
        }
        if matches!(spec.op, Op::AuthLoginUuid | Op::AuthLoginPincode)
            && !values.iter().any(|(n, _)| *n == "pincode")
        {
            let pin = env
                .cloud
                .resolve_pincode()
                .map_err(|e| (ExitCode::from(2), e))?
                .ok_or_else(no_pincode)?;
            values.push(("pincode", pin.expose().to_string()));
        }
        if spec.op == Op::AuthLoginUuid && !values.iter().any(|(n, _)| *n == "connector_uuid") {
            let u = env.cloud.connector_uuid.clone().ok_or((
                ExitCode::from(2),
                "give --connector-uuid or set cloud.connector_uuid".to_string(),
            ))?;
            values.push(("connector_uuid", u));
        }
        let mut req = build_request(spec, &values).map_err(|e| (ExitCode::from(2), e))?;
        let rt = runtime()?;
        let answer = rt.block_on(async {
            if args.all {
                fetch_all(&env.client, spec.op, req, args.limit.unwrap_or(MAX_LIMIT)).await
            } else {
                if let Some(o) = args.offset {
                    req.query.push(("offset".into(), o.to_string()));
                }
                if let Some(l) = args.limit {
                    req.query.push(("limit".into(), l.to_string()));
                }
                env.client.call(spec.op, req).await
            }
        });
        let answer = match answer {
            // The client's reading (`Client::active_ticket`): 404 means "no active ticket".
            Err(e) if spec.op == Op::ConnectorsActiveTicket && e.is_not_found() => {
                eprintln!("obdgw api connectors active-ticket: read as no active ticket: {e}");
                Ok(None)
            }
            other => other,
        };
        let answer = answer.map_err(|e| (exit_for(&e), e.to_string()))?;
        let answer = answer.map(|v| redact_tokens(spec.op, v));
        print!("{}", render(spec, answer.as_ref(), common.json));
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("obdgw api {} {}: {msg}", spec.group, spec.name);
            code
        }
    }
}

// ---- obdgw api watch ----

/// Wall-clock time as RFC 3339 UTC with milliseconds.
fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = crate::sim::cloud::data::rfc3339(d.as_secs());
    format!("{}.{:03}Z", s.get(..19).unwrap_or(&s), d.subsec_millis())
}

/// The connector fields that differ between two snapshots (all known ones for the first).
fn changed_fields(
    before: Option<&super::status::ConnectorSnapshot>,
    after: &super::status::ConnectorSnapshot,
) -> Vec<&'static str> {
    let mut out = Vec::new();
    let b = before.cloned().unwrap_or_default();
    let first = before.is_none();
    let mut check = |name, differs: bool, known: bool| {
        if (first && known) || (!first && differs) {
            out.push(name);
        }
    };
    check(
        "is_online",
        b.is_online != after.is_online,
        after.is_online.is_some(),
    );
    check(
        "voltage",
        b.voltage != after.voltage,
        after.voltage.is_some(),
    );
    check(
        "vin",
        b.vin_number != after.vin_number,
        after.vin_number.is_some(),
    );
    check(
        "round_trip_time",
        b.round_trip_time != after.round_trip_time,
        after.round_trip_time.is_some(),
    );
    check(
        "active_ticket_id",
        b.active_ticket_id != after.active_ticket_id,
        after.active_ticket_id.is_some(),
    );
    out
}

/// One event as the JSON object `watch --json` prints (fields in docs/cloud.md).
pub fn event_json(ev: &StatusEvent, time: &str) -> Value {
    let mut v = match ev {
        StatusEvent::LinkUp => json!({ "event": "link_up" }),
        StatusEvent::LinkDown { reason } => json!({ "event": "link_down", "reason": reason }),
        StatusEvent::ConnectorChanged { before, after } => json!({
            "event": "connector",
            "connector_id": after.connector_id,
            "is_online": after.is_online,
            "voltage": after.voltage,
            "vin": after.vin_number,
            "round_trip_time": after.round_trip_time,
            "active_ticket_id": after.active_ticket_id,
            "changed": changed_fields(before.as_ref(), after),
        }),
        StatusEvent::TicketStateChanged {
            ticket_id,
            from,
            to,
        } => json!({
            "event": "ticket",
            "ticket_id": ticket_id,
            "from": from.map(TicketState::name),
            "to": to.name(),
            "final": to.is_final(),
        }),
        StatusEvent::TicketGone { ticket_id } => {
            json!({ "event": "ticket_gone", "ticket_id": ticket_id })
        }
        StatusEvent::ConnectionStarted {
            ticket_id,
            connection_uuid,
            vin,
        } => json!({
            "event": "connection_started",
            "ticket_id": ticket_id,
            "connection_uuid": connection_uuid,
            "vin": vin,
        }),
        StatusEvent::ConnectionEnded {
            ticket_id,
            connection_uuid,
        } => json!({
            "event": "connection_ended",
            "ticket_id": ticket_id,
            "connection_uuid": connection_uuid,
        }),
        StatusEvent::ConnectionUpdated(c) => json!({
            "event": "connection_updated",
            "connection_uuid": c.connection_uuid,
            "script_ui_available": c.script_ui_available,
            // Without its query, which may carry a token.
            "script_ui_wss_url": c.script_ui_wss_url.as_deref().map(|u| u.split('?').next().unwrap_or(u)),
            "is_autonomous": c.is_autonomous,
        }),
    };
    v["time"] = json!(time);
    v
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// One event as the line `watch` prints for a person.
pub fn event_line(ev: &StatusEvent, time: &str) -> String {
    let what = match ev {
        StatusEvent::LinkUp => "status websocket connected".to_string(),
        StatusEvent::LinkDown { reason } => {
            format!("status websocket down ({reason}); polling REST until it is back")
        }
        StatusEvent::ConnectorChanged { after, .. } => {
            let mut parts = vec![match after.is_online {
                Some(true) => "online".to_string(),
                Some(false) => "offline".to_string(),
                None => "online: unknown".to_string(),
            }];
            if let Some(v) = after.voltage {
                parts.push(format!("{v:.1} V"));
            }
            if let Some(v) = after.vin_number.as_deref().filter(|v| !v.is_empty()) {
                parts.push(format!("VIN {v}"));
            }
            if let Some(r) = after.round_trip_time {
                parts.push(format!("round trip time {r}"));
            }
            parts.push(match after.active_ticket_id {
                Some(t) => format!("active ticket {t}"),
                None => "no active ticket".to_string(),
            });
            format!("connector {}: {}", after.connector_id, parts.join(", "))
        }
        StatusEvent::TicketStateChanged {
            ticket_id,
            from: None,
            to,
        } => format!("ticket {ticket_id}: {}", to.name()),
        StatusEvent::TicketStateChanged {
            ticket_id,
            from: Some(from),
            to,
        } => format!("ticket {ticket_id}: {} -> {}", from.name(), to.name()),
        StatusEvent::TicketGone { ticket_id } => {
            format!("ticket {ticket_id}: no longer active (final state unknown)")
        }
        StatusEvent::ConnectionStarted {
            ticket_id,
            connection_uuid,
            vin,
        } => format!(
            "connection {connection_uuid} started for ticket {ticket_id}{}",
            vin.as_deref()
                .map(|v| format!(" (VIN {v})"))
                .unwrap_or_default()
        ),
        StatusEvent::ConnectionEnded {
            ticket_id,
            connection_uuid,
        } => format!("connection {connection_uuid} ended (ticket {ticket_id})"),
        StatusEvent::ConnectionUpdated(c) => {
            let mut parts = Vec::new();
            if let Some(a) = c.script_ui_available {
                parts.push(format!("script UI available: {}", yes_no(a)));
            }
            if let Some(a) = c.is_autonomous {
                parts.push(format!("autonomous: {}", yes_no(a)));
            }
            if let Some(u) = &c.script_ui_wss_url {
                parts.push(format!("script UI at {}", u.split('?').next().unwrap_or(u)));
            }
            format!(
                "connection {}: {}",
                c.connection_uuid.as_deref().unwrap_or("?"),
                if parts.is_empty() {
                    "updated".to_string()
                } else {
                    parts.join(", ")
                }
            )
        }
    };
    format!("{time}  {what}")
}

fn run_watch(common: &CloudCliArgs, w: &WatchArgs) -> ExitCode {
    let result = (|| {
        let env = setup(common, Some(w))?;
        let uuid = env.cloud.connector_uuid.clone().ok_or((
            ExitCode::from(2),
            "no connector to watch: give --connector-uuid UUID or set cloud.connector_uuid (OBDGW_CLOUD__CONNECTOR_UUID)".to_string(),
        ))?;
        if env
            .cloud
            .resolve_pincode()
            .map_err(|e| (ExitCode::from(2), e))?
            .is_none()
            && !env.store.as_ref().is_some_and(|p| p.exists())
        {
            return Err(no_pincode());
        }
        let rt = runtime()?;
        rt.block_on(watch(env, uuid, common.json))
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("obdgw api watch: {msg}");
            code
        }
    }
}

async fn watch(env: Env, uuid: String, as_json: bool) -> Result<(), (ExitCode, String)> {
    use super::status::{StatusClient, StatusSettings};
    use std::io::Write as _;
    let Env { client, cloud, .. } = env;
    // Log in and find the connector first, so a wrong pincode or UUID ends the command with
    // the reason instead of being retried in the background.
    client
        .bearer()
        .await
        .map_err(|e| (exit_for(&e), e.to_string()))?;
    let connector = client
        .connector_by_uuid(&uuid)
        .await
        .map_err(|e| (exit_for(&e), format!("looking up connector {uuid}: {e}")))?;
    let settings = StatusSettings::from_config(&cloud);
    eprintln!(
        "obdgw api watch: following connector {} ({uuid}) at {}; Ctrl-C ends",
        connector.id,
        settings.url.split('?').next().unwrap_or_default()
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let signals = match crate::signals::spawn(shutdown.clone(), None) {
        Ok(t) => t,
        Err(e) => return Err((ExitCode::FAILURE, format!("{e:#}"))),
    };
    let refresher = {
        let c = client.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move { c.keep_fresh(stop).await })
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let follower =
        tokio::spawn(StatusClient::new(client, settings, uuid).run(tx, shutdown.clone()));
    let mut out = std::io::stdout();
    while let Some(ev) = rx.recv().await {
        let time = now_rfc3339();
        let line = if as_json {
            event_json(&ev, &time).to_string()
        } else {
            event_line(&ev, &time)
        };
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            // Whoever read the lines went away (`| head`): end quietly.
            break;
        }
    }
    shutdown.cancel();
    drop(rx);
    let _ = follower.await;
    let _ = refresher.await;
    signals.abort();
    Ok(())
}

async fn fetch_all(
    client: &Client,
    op: Op,
    req: ApiRequest,
    limit: u32,
) -> Result<Option<Value>, ApiError> {
    let walked = super::client::collect_pages(limit, |page| {
        let mut r = req.clone();
        r.query
            .push(("offset".into(), page.offset.unwrap_or(0).to_string()));
        r.query
            .push(("limit".into(), page.limit.unwrap_or(limit).to_string()));
        async move {
            let v = client.call(op, r).await?.unwrap_or(Value::Null);
            serde_json::from_value::<super::model::List<Value>>(v).map_err(|e| ApiError::Decode {
                op: op.spec().key(),
                message: e.to_string(),
            })
        }
    })
    .await?;
    let n = walked.items.len();
    if let Some(at) = walked.repeated_at {
        let spec = op.spec();
        eprintln!(
            "obdgw api {} {}: warning: the page at offset {at} repeated the previous one (the service seems to ignore --offset); showing {n} of the {} items it announced",
            spec.group, spec.name, walked.total
        );
    }
    let total = if walked.repeated_at.is_some() {
        walked.total
    } else {
        n as i64
    };
    Ok(Some(
        json!({ "result": walked.items, "total": total, "offset": 0, "limit": n }),
    ))
}

fn redact_tokens(op: Op, mut v: Value) -> Value {
    if matches!(
        op,
        Op::AuthLoginOtp | Op::AuthLoginPincode | Op::AuthLoginUuid
    ) && let Value::Object(m) = &mut v
    {
        for (k, val) in m.iter_mut() {
            if k.ends_with("_token")
                && let Value::String(s) = val
            {
                let exp = super::token::jwt_exp(s);
                let head: String = s.chars().take(10).collect();
                *val = json!(format!(
                    "{head}... (hidden; exp {})",
                    exp.map(|e| e.to_string()).unwrap_or_else(|| "?".into())
                ));
            }
        }
    }
    v
}

fn cell(v: &Value, max: usize) -> String {
    let s = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.chars().count() > max {
        let cut: String = s.chars().take(max.saturating_sub(3)).collect();
        format!("{cut}...")
    } else {
        s
    }
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>, depth: u8) {
    match v {
        Value::Object(m) if depth < 3 => {
            for (k, val) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, val, out, depth + 1);
            }
        }
        other => out.push((prefix.to_string(), cell(other, 100))),
    }
}

/// Render an answer: JSON, or a table (lists) / key-value lines (objects).
pub fn render(spec: &OpSpec, v: Option<&Value>, as_json: bool) -> String {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return if as_json {
            "null\n".into()
        } else if spec.op == Op::ConnectorsActiveTicket {
            "no active ticket\n".into()
        } else {
            "done\n".into()
        };
    };
    if as_json {
        return format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default());
    }
    if spec.paged
        && let Some(items) = v.get("result").and_then(Value::as_array)
    {
        // Scalar columns only, `id` and `name` first, at most 8.
        let mut cols: Vec<String> = Vec::new();
        let mut nested: Vec<&str> = Vec::new();
        for it in items {
            if let Value::Object(m) = it {
                for (k, val) in m {
                    if val.is_object() || val.is_array() {
                        nested.push(k);
                    } else if !cols.contains(k) {
                        cols.push(k.clone());
                    }
                }
            }
        }
        cols.retain(|c| !nested.contains(&c.as_str()));
        // Identifiers first (a connector is addressed by its UUID), then the name.
        cols.sort_by_key(|c| match c.as_str() {
            "id" => 0,
            "uuid" => 1,
            "name" => 2,
            _ => 3,
        });
        cols.truncate(8);
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|it| {
                cols.iter()
                    .map(|c| cell(it.get(c).unwrap_or(&Value::Null), 48))
                    .collect()
            })
            .collect();
        let widths: Vec<usize> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| {
                rows.iter()
                    .map(|r| r[i].chars().count())
                    .chain([c.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let line = |cells: &[String]| {
            let mut s: String = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}", w = *w))
                .collect::<Vec<_>>()
                .join("  ");
            s.truncate(s.trim_end().len());
            s.push('\n');
            s
        };
        out.push_str(&line(
            &cols.iter().map(|c| c.to_uppercase()).collect::<Vec<_>>(),
        ));
        for r in &rows {
            out.push_str(&line(r));
        }
        let total = v
            .get("total")
            .and_then(Value::as_i64)
            .unwrap_or(items.len() as i64);
        let offset = v.get("offset").and_then(Value::as_i64).unwrap_or(0);
        let shown = items.len() as i64;
        out.push_str(&format!("({shown} of {total}"));
        if offset + shown < total {
            out.push_str(&format!(
                "; next page: --offset {}, or --all",
                offset + shown
            ));
        }
        out.push_str(")\n");
        return out;
    }
    let mut kv = Vec::new();
    flatten("", v, &mut kv, 0);
    let w = kv.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    kv.iter()
        .map(|(k, val)| format!("{k:<w$}  {val}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_requests() {
        assert_eq!(flag("connectorUUID"), "connector-uuid");
        assert_eq!(flag("vehicle_model_id"), "vehicle-model-id");
        assert_eq!(flag("message.original"), "message-original");
        assert_eq!(flag("historicalTicketId"), "historical-ticket-id");
        let req = build_request(
            Op::TicketsCreate.spec(),
            &[
                ("vin", "X".into()),
                ("product_ids", "1, 2".into()),
                ("metadata", "{}".into()),
                ("vehicle_model_id", "abc".into()),
            ],
        )
        .unwrap();
        let b = req.body.unwrap();
        assert_eq!(b["product_ids"], json!([1, 2]));
        assert_eq!(
            b["vehicle_model_id"],
            json!("abc"),
            "left for validation to name"
        );
        let req = build_request(
            Op::MiscTranslate.spec(),
            &[("message.original", "hi".into())],
        )
        .unwrap();
        assert_eq!(req.body.unwrap()["message"]["original"], "hi");
        assert!(build_request(Op::TicketsCreate.spec(), &[("metadata", "{".into())]).is_err());
    }

    #[test]
    fn every_operation_has_a_command() {
        let cmd = <ApiArgs as clap::Args>::augment_args(Command::new("api"));
        cmd.clone().debug_assert();
        for s in OPS {
            let g = cmd.find_subcommand(s.group).unwrap();
            assert!(
                g.find_subcommand(s.name).is_some(),
                "{} {}",
                s.group,
                s.name
            );
        }
    }

    #[test]
    fn watch_is_a_subcommand_of_api() {
        let cmd = <ApiArgs as clap::Args>::augment_args(Command::new("api"));
        assert!(
            OPS.iter().all(|s| s.group != "watch"),
            "no operation group may be called watch"
        );
        let m = cmd
            .clone()
            .try_get_matches_from([
                "api",
                "watch",
                "--json",
                "--connector-uuid",
                "0b6f1c52-8d3e-4f0a-9c1d-2e7a5b4c3d21",
                "--pincode-file",
                "/p",
            ])
            .unwrap();
        let a = <ApiArgs as clap::FromArgMatches>::from_arg_matches(&m).unwrap();
        assert!(a.common.json);
        match a.command {
            ApiCommand::Watch(w) => {
                assert_eq!(
                    w.connector_uuid.as_deref(),
                    Some("0b6f1c52-8d3e-4f0a-9c1d-2e7a5b4c3d21")
                );
                assert_eq!(w.pincode_file, Some(PathBuf::from("/p")));
            }
            other => panic!("{other:?}"),
        }
        let m = cmd
            .try_get_matches_from(["api", "vehicles", "makes", "--limit", "3"])
            .unwrap();
        match <ApiArgs as clap::FromArgMatches>::from_arg_matches(&m)
            .unwrap()
            .command
        {
            ApiCommand::Call(c) => assert_eq!((c.op, c.limit), (Op::VehiclesMakes, Some(3))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn state_dir_rule_tells_the_service_from_a_person() {
        use StateDirSource::*;
        let conf = Path::new("/var/lib/obdgw");
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let person = env(&[("HOME", "/home/jan")]);
        assert_eq!(
            resolve_state_dir(None, conf, false, person).unwrap(),
            (PathBuf::from("/home/jan/.local/state/obdgw"), Home)
        );
        let xdg = env(&[("HOME", "/home/jan"), ("XDG_STATE_HOME", "/x/state")]);
        assert_eq!(
            resolve_state_dir(None, conf, false, xdg).unwrap(),
            (PathBuf::from("/x/state/obdgw"), XdgStateHome)
        );
        let relative_xdg = env(&[("HOME", "/home/jan"), ("XDG_STATE_HOME", "rel")]);
        assert_eq!(
            resolve_state_dir(None, conf, false, relative_xdg)
                .unwrap()
                .1,
            Home,
            "a relative XDG_STATE_HOME is ignored, as the spec says"
        );
        // The systemd unit: OBDGW_DAEMON__STATE_DIR and STATE_DIRECTORY.
        let service = env(&[
            ("HOME", "/"),
            ("OBDGW_DAEMON__STATE_DIR", "/var/lib/obdgw"),
            ("STATE_DIRECTORY", "/var/lib/obdgw"),
        ]);
        assert_eq!(
            resolve_state_dir(None, conf, false, service).unwrap(),
            (conf.to_path_buf(), Environment)
        );
        let unit = env(&[("HOME", "/"), ("STATE_DIRECTORY", "/var/lib/a:/var/lib/b")]);
        assert_eq!(
            resolve_state_dir(None, conf, false, unit).unwrap(),
            (PathBuf::from("/var/lib/a"), Systemd)
        );
        assert_eq!(
            resolve_state_dir(None, conf, true, person).unwrap(),
            (conf.to_path_buf(), File)
        );
        assert_eq!(
            resolve_state_dir(Some(Path::new("/tmp/t")), conf, true, person)
                .unwrap()
                .1,
            Flag
        );
        let nobody = env(&[]);
        let e = resolve_state_dir(None, conf, false, nobody).unwrap_err();
        assert!(e.contains("--state-dir"), "{e}");
    }

    #[test]
    fn connector_tables_show_the_uuid() {
        let c = json!({"id": 910000001, "uuid": "0b6f1c52-8d3e-4f0a-9c1d-2e7a5b4c3d21", "is_online": true,
            "has_wifi": true, "software_version": 2, "hardware_version": 0, "supports_doip": true,
            "vehicle_path_string": "VW#GOLF", "vin_number": "WVWZZZCDZMW012345",
            "product_description": "x", "hardware_type": "classic"});
        let v = json!({"result": [c], "total": 1, "offset": 0, "limit": 20});
        let t = render(Op::ConnectorsList.spec(), Some(&v), false);
        let header = t.lines().next().unwrap();
        assert!(header.starts_with("ID         UUID"), "{t}");
        assert!(t.contains("0b6f1c52-8d3e-4f0a-9c1d-2e7a5b4c3d21"), "{t}");
        assert_eq!(
            render(Op::ConnectorsActiveTicket.spec(), Some(&Value::Null), false),
            "no active ticket\n"
        );
        assert_eq!(
            render(Op::ProductsAddFavorite.spec(), Some(&Value::Null), false),
            "done\n"
        );
    }

    #[test]
    fn watch_lines() {
        use crate::cloud::status::{ConnectionSnapshot, ConnectorSnapshot};
        let t = "2026-12-08T00:00:00.000Z";
        let ev = StatusEvent::TicketStateChanged {
            ticket_id: 17,
            from: Some(TicketState::Pending),
            to: TicketState::InProgress,
        };
        assert_eq!(
            event_line(&ev, t),
            format!("{t}  ticket 17: pending -> in_progress")
        );
        let j = event_json(&ev, t);
        assert_eq!(
            j,
            json!({"time": t, "event": "ticket", "ticket_id": 17, "from": "pending", "to": "in_progress", "final": false})
        );
        let ev = StatusEvent::TicketStateChanged {
            ticket_id: 17,
            from: None,
            to: TicketState::Unknown(42),
        };
        assert_eq!(event_json(&ev, t)["to"], "unknown(42)");
        assert_eq!(event_json(&ev, t)["from"], Value::Null);
        let after = ConnectorSnapshot {
            connector_id: 9,
            voltage: Some(12.61),
            is_online: Some(true),
            active_ticket_id: Some(17),
            ..ConnectorSnapshot::default()
        };
        let ev = StatusEvent::ConnectorChanged {
            before: None,
            after: after.clone(),
        };
        assert_eq!(
            event_line(&ev, t),
            format!("{t}  connector 9: online, 12.6 V, active ticket 17")
        );
        assert_eq!(
            event_json(&ev, t)["changed"],
            json!(["is_online", "voltage", "active_ticket_id"])
        );
        let ev = StatusEvent::ConnectorChanged {
            before: Some(after.clone()),
            after: ConnectorSnapshot {
                voltage: Some(11.9),
                ..after
            },
        };
        assert_eq!(event_json(&ev, t)["changed"], json!(["voltage"]));
        let ev = StatusEvent::ConnectionStarted {
            ticket_id: 17,
            connection_uuid: "c-1".into(),
            vin: Some("WVWZZZ1KZAW000042".into()),
        };
        assert_eq!(
            event_line(&ev, t),
            format!("{t}  connection c-1 started for ticket 17 (VIN WVWZZZ1KZAW000042)")
        );
        assert_eq!(event_json(&ev, t)["event"], "connection_started");
        let ev = StatusEvent::ConnectionUpdated(ConnectionSnapshot {
            connection_uuid: Some("c-1".into()),
            script_ui_available: Some(true),
            script_ui_wss_url: Some("wss://x/y?token=secret".into()),
            ..ConnectionSnapshot::default()
        });
        let l = event_line(&ev, t);
        assert!(
            l.contains("script UI available: yes") && !l.contains("secret"),
            "{l}"
        );
        assert_eq!(
            event_json(&StatusEvent::LinkDown { reason: "x".into() }, t),
            json!({"time": t, "event": "link_down", "reason": "x"})
        );
    }

    #[test]
    fn tables_and_redaction() {
        let v = json!({"result": [{"id": 1, "name": "Ford", "nested": {"a": 1}}, {"id": 20, "name": "Volkswagen"}], "total": 5, "offset": 0, "limit": 2});
        let t = render(Op::VehiclesMakes.spec(), Some(&v), false);
        assert!(t.starts_with("ID  NAME\n1   Ford\n20  Volkswagen\n"), "{t}");
        assert!(
            t.contains("(2 of 5; next page: --offset 2, or --all)"),
            "{t}"
        );
        let tok = crate::cloud::token::make_jwt(&json!({"exp": 5}), "secretsignature");
        let r = redact_tokens(Op::AuthLoginUuid, json!({"access_token": tok}));
        assert!(!r.to_string().contains("secretsignature"));
        assert!(r["access_token"].as_str().unwrap().contains("exp 5"));
    }
}
