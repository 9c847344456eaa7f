//! `obdgw login` and `obdgw api <group> <operation> [...]`.
//!
//! Owns: the command line of every API operation, generated from the operation table (one
//! subcommand per operation, one flag per parameter), turning flags into a request, paging
//! (`--offset`, `--limit`, `--all`), and printing answers as tables or `--json`.
//! Tokens in answers are shortened, never printed whole; the pincode is never printed.

use super::client::Client;
use super::config::CloudConfig;
use super::error::ApiError;
use super::spec::{Loc, OPS, Op, OpSpec, Ty};
use super::token::Credentials;
use super::validate::{ApiRequest, MAX_LIMIT};
use crate::config::{ConfigSource, Secret};
use clap::{Arg, ArgAction, ArgMatches, Command};
use serde_json::{Map, Value, json};
use std::path::PathBuf;
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
    /// Where tokens are kept, overriding daemon.state_dir.
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

/// `obdgw api <group> <operation>`: generated from the operation table.
#[derive(Debug, Clone)]
pub struct ApiArgs {
    pub common: CloudCliArgs,
    pub op: Op,
    /// (parameter name, raw value) as given.
    pub values: Vec<(&'static str, String)>,
    pub offset: Option<u64>,
    pub limit: Option<u32>,
    pub all: bool,
}

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
        cmd
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
            op: spec.op,
            values,
            offset: paged("offset"),
            limit: spec
                .paged
                .then(|| om.get_one::<u32>("limit").copied())
                .flatten(),
            all: spec.paged && om.get_flag("all"),
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

struct Env {
    client: Client,
    cloud: CloudConfig,
    store: Option<PathBuf>,
}

fn setup(common: &CloudCliArgs) -> Result<Env, (ExitCode, String)> {
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
    let mut cloud = loaded.config.cloud.clone();
    if let Some(b) = &common.base_url {
        cloud.base_url = b.trim_end_matches('/').to_string();
        let issues = super::config::validate(&cloud);
        if let Some(i) = issues.first() {
            return Err((ExitCode::from(2), format!("--base-url: {}", i.message)));
        }
    }
    let state = common
        .state_dir
        .clone()
        .unwrap_or_else(|| loaded.config.daemon.state_dir.clone());
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
        let env = setup(&args.common)?;
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
    let spec = args.op.spec();
    let result = (|| {
        let env = setup(&args.common)?;
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
        let answer = answer.map_err(|e| (exit_for(&e), e.to_string()))?;
        let answer = answer.map(|v| redact_tokens(spec.op, v));
        print!("{}", render(spec, answer.as_ref(), args.common.json));
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

async fn fetch_all(
    client: &Client,
    op: Op,
    req: ApiRequest,
    limit: u32,
) -> Result<Option<Value>, ApiError> {
    let items = super::client::collect_all(limit, |page| {
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
    let n = items.len();
    Ok(Some(
        json!({ "result": items, "total": n, "offset": 0, "limit": n }),
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
    let Some(v) = v else {
        return if as_json {
            "null\n".into()
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
        cols.sort_by_key(|c| match c.as_str() {
            "id" => 0,
            "name" => 1,
            _ => 2,
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
