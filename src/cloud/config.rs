//! The `[cloud]` configuration section: where the Customer API is, how the box logs in,
//! timeouts and retries, the status websocket, and ticket state names.
//!
//! Owns: the schema of `[cloud]` with its defaults, its validation, and resolving the pincode
//! from the config, `pincode_file` or a systemd credential (`$CREDENTIALS_DIRECTORY/pincode`).

use crate::config::{ConfigIssue, Secret};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The simulator's default address, and so the default base URL (the demo works offline).
pub const DEFAULT_BASE_URL: &str = "http://127.0.0.1:8780";
/// Name of the systemd credential holding the pincode.
pub const CREDENTIAL_NAME: &str = "pincode";

/// Which login token is sent as the bearer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BearerToken {
    #[default]
    Access,
    Id,
}

/// Where the status websocket expects the token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenPlacement {
    /// `Authorization: Bearer <token>` on the upgrade request.
    #[default]
    Header,
    /// A query parameter named by `status.token_query_param`.
    Query,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// REST base URL (scheme, host, port; no trailing path needed).
    pub base_url: String,
    /// Base URL of the login operations when it differs from `base_url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_base_url: Option<String>,
    /// Path overrides by operation key (`connectors_get = "/v1/connectors/{connectorId}"`).
    pub routes: BTreeMap<String, String>,
    /// This connector's UUID (login and status).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connector_uuid: Option<String>,
    /// This connector's numeric ID, for the deprecated ID + pincode login only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connector_id: Option<i64>,
    /// The connector's pincode (a string or an integer). Prefer `pincode_file` or a
    /// systemd credential.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "secret_lenient"
    )]
    pub pincode: Option<Secret>,
    /// A file holding the pincode (trailing newline ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pincode_file: Option<PathBuf>,
    /// Which login token authorizes requests.
    pub bearer: BearerToken,
    /// Log in again this many seconds before the token's `exp`.
    pub refresh_margin_s: u64,
    /// Lifetime assumed when a token carries no readable `exp`.
    pub default_token_lifetime_s: u64,
    /// Whole-request timeout.
    pub request_timeout_ms: u64,
    /// TCP/TLS connect timeout.
    pub connect_timeout_ms: u64,
    /// Retries of idempotent requests after a 5xx or transport failure.
    pub retries: u32,
    /// First retry delay; doubles per retry, jittered, capped by `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Status websocket.
    pub status: StatusConfig,
    /// Ticket state names by number (`"1" = "pending"`), merged over the defaults.
    pub ticket_states: BTreeMap<String, String>,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            base_url: DEFAULT_BASE_URL.into(),
            login_base_url: None,
            routes: BTreeMap::new(),
            connector_uuid: None,
            connector_id: None,
            pincode: None,
            pincode_file: None,
            bearer: BearerToken::Access,
            refresh_margin_s: 120,
            default_token_lifetime_s: 3600,
            request_timeout_ms: 15_000,
            connect_timeout_ms: 5_000,
            retries: 2,
            retry_base_ms: 250,
            retry_max_ms: 4_000,
            status: StatusConfig::default(),
            ticket_states: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// Websocket URL; when absent, `base_url` with a ws scheme and path `/v1/ws`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// How the token is presented.
    pub token_placement: TokenPlacement,
    /// Query parameter name for `token_placement = "query"`.
    pub token_query_param: String,
    /// Immediate reconnect attempts after a drop (the vendor's advice: a few).
    pub immediate_retries: u32,
    /// Slowest-but-one reconnect pace: never faster than this after the immediate retries.
    pub reconnect_min_ms: u64,
    /// Cap of the reconnect delay.
    pub reconnect_max_ms: u64,
    /// REST polling interval while the socket is down.
    pub poll_interval_ms: u64,
    /// REST check for a new active ticket while the socket is up (snapshots of a connector
    /// do not announce tickets).
    pub ticket_check_interval_ms: u64,
    /// The socket is considered dead when nothing arrives for this long.
    pub idle_timeout_ms: u64,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            url: None,
            token_placement: TokenPlacement::Header,
            token_query_param: "access_token".into(),
            immediate_retries: 3,
            reconnect_min_ms: 5_000,
            reconnect_max_ms: 60_000,
            poll_interval_ms: 10_000,
            ticket_check_interval_ms: 30_000,
            idle_timeout_ms: 20_000,
        }
    }
}

/// Default ticket state names (numbers seen: 1 on active tickets, 7 on finished ones; the
/// names follow the vendor's sister API).
pub const DEFAULT_TICKET_STATES: &[(i64, &str)] = &[
    (0, "prepared"),
    (1, "pending"),
    (2, "in_progress"),
    (3, "outsourced"),
    (7, "closed"),
    (8, "cancelled"),
];

impl CloudConfig {
    /// The websocket URL (configured or derived from `base_url`).
    pub fn status_url(&self) -> String {
        if let Some(u) = &self.status.url {
            return u.clone();
        }
        let base = self.base_url.trim_end_matches('/');
        let ws = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            base.to_string()
        };
        format!("{ws}/v1/ws")
    }

    /// The ticket state name table: defaults, then `ticket_states`.
    pub fn state_names(&self) -> BTreeMap<i64, String> {
        let mut m: BTreeMap<i64, String> = DEFAULT_TICKET_STATES
            .iter()
            .map(|(k, v)| (*k, v.to_string()))
            .collect();
        for (k, v) in &self.ticket_states {
            if let Ok(n) = k.parse() {
                m.insert(n, v.clone());
            }
        }
        m
    }

    /// The pincode: `pincode`, else `pincode_file`, else the systemd credential. `Ok(None)`
    /// when none is configured.
    pub fn resolve_pincode(&self) -> Result<Option<Secret>, String> {
        self.resolve_pincode_with(std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from))
    }

    /// [`Self::resolve_pincode`] with the credentials directory given (for tests).
    pub fn resolve_pincode_with(
        &self,
        cred_dir: Option<PathBuf>,
    ) -> Result<Option<Secret>, String> {
        if let Some(p) = &self.pincode {
            return Ok(Some(p.clone()));
        }
        if let Some(f) = &self.pincode_file {
            return read_secret(f).map(Some).map_err(|e| {
                format!(
                    "cloud.pincode_file {}: {e}; check the path and that the service may read it",
                    f.display()
                )
            });
        }
        if let Some(dir) = cred_dir {
            let f = dir.join(CREDENTIAL_NAME);
            if f.exists() {
                return read_secret(&f)
                    .map(Some)
                    .map_err(|e| format!("systemd credential {}: {e}", f.display()));
            }
        }
        Ok(None)
    }
}

/// A secret from a string or an integer; errors never echo the value.
fn secret_lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Str(String),
        Int(i64),
    }
    match Option::<Raw>::deserialize(d) {
        Ok(Some(Raw::Str(s))) => Ok(Some(Secret::new(s))),
        Ok(Some(Raw::Int(i))) => Ok(Some(Secret::new(i.to_string()))),
        Ok(None) => Ok(None),
        Err(_) => Err(serde::de::Error::custom(
            "expected the pincode as a string or an integer",
        )),
    }
}

fn read_secret(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let value = text.trim_end_matches(['\n', '\r']).trim();
    if value.is_empty() {
        return Err("the file is empty".into());
    }
    Ok(Secret::new(value))
}

fn is_http_url(s: &str) -> bool {
    (s.starts_with("http://") || s.starts_with("https://")) && s.len() > "https://".len()
}

/// Validation of `[cloud]`; issues name their key.
pub fn validate(c: &CloudConfig) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    let mut issue = |key: &str, message: String| {
        issues.push(ConfigIssue {
            key: format!("cloud.{key}"),
            source: String::new(),
            message,
        })
    };
    if !is_http_url(&c.base_url) {
        issue(
            "base_url",
            format!("`{}` is not an http:// or https:// URL", c.base_url),
        );
    }
    if let Some(u) = &c.login_base_url
        && !is_http_url(u)
    {
        issue(
            "login_base_url",
            format!("`{u}` is not an http:// or https:// URL"),
        );
    }
    // The pincode and bearer tokens travel on these: plaintext only to loopback.
    for (key, url) in [
        ("base_url", Some(c.base_url.as_str())),
        ("login_base_url", c.login_base_url.as_deref()),
        ("status.url", c.status.url.as_deref()),
    ] {
        if let Some(u) = url
            && (is_http_url(u) || u.starts_with("ws://") || u.starts_with("wss://"))
            && let Err(e) = crate::tls::check_scheme(u)
        {
            issue(key, e);
        }
    }
    for (k, v) in &c.routes {
        if let Err(e) = super::routes::check_override(k, v) {
            issue(&format!("routes.{k}"), e);
        }
    }
    if let Some(u) = &c.connector_uuid
        && !super::validate::is_uuid(u)
    {
        issue(
            "connector_uuid",
            format!("`{u}` is not a UUID; expected 8-4-4-4-12 hexadecimal digits"),
        );
    }
    if c.pincode.is_some() && c.pincode_file.is_some() {
        issue(
            "pincode_file",
            "both cloud.pincode and cloud.pincode_file are set; keep one (prefer the file)".into(),
        );
    }
    if c.pincode.as_ref().is_some_and(Secret::is_empty) {
        issue("pincode", "is empty".into());
    }
    let ranges: [(&str, u64, u64, u64); 9] = [
        ("request_timeout_ms", c.request_timeout_ms, 100, 600_000),
        ("connect_timeout_ms", c.connect_timeout_ms, 100, 600_000),
        ("retry_base_ms", c.retry_base_ms, 1, 600_000),
        ("retry_max_ms", c.retry_max_ms, 1, 600_000),
        (
            "default_token_lifetime_s",
            c.default_token_lifetime_s,
            1,
            31_536_000,
        ),
        (
            "status.reconnect_min_ms",
            c.status.reconnect_min_ms,
            1,
            3_600_000,
        ),
        (
            "status.reconnect_max_ms",
            c.status.reconnect_max_ms,
            1,
            3_600_000,
        ),
        (
            "status.poll_interval_ms",
            c.status.poll_interval_ms,
            50,
            3_600_000,
        ),
        (
            "status.idle_timeout_ms",
            c.status.idle_timeout_ms,
            100,
            3_600_000,
        ),
    ];
    for (k, v, lo, hi) in ranges {
        if !(lo..=hi).contains(&v) {
            issue(k, format!("{v} is out of range; expected {lo}..={hi}"));
        }
    }
    if c.retries > 10 {
        issue(
            "retries",
            format!("{} is out of range; expected 0..=10", c.retries),
        );
    }
    if c.status.reconnect_max_ms < c.status.reconnect_min_ms {
        issue(
            "status.reconnect_max_ms",
            "is below status.reconnect_min_ms".into(),
        );
    }
    if c.status.ticket_check_interval_ms < 50 {
        issue(
            "status.ticket_check_interval_ms",
            format!(
                "{} is too small; expected at least 50",
                c.status.ticket_check_interval_ms
            ),
        );
    }
    if let Some(u) = &c.status.url
        && !(u.starts_with("ws://") || u.starts_with("wss://"))
    {
        issue("status.url", format!("`{u}` is not a ws:// or wss:// URL"));
    }
    if c.status.token_query_param.is_empty() {
        issue("status.token_query_param", "is empty".into());
    }
    for k in c.ticket_states.keys() {
        if k.parse::<i64>().is_err() {
            issue(
                &format!("ticket_states.{k}"),
                "keys are state numbers, e.g. \"7\" = \"closed\"".into(),
            );
        }
    }
    issues
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pincode_sources_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pincode"), "1111\n").unwrap();
        std::fs::write(dir.path().join("pin"), "2222\n").unwrap();
        let mut c = CloudConfig::default();
        let cred = Some(dir.path().to_path_buf());
        assert_eq!(c.resolve_pincode_with(None).unwrap(), None);
        assert_eq!(
            c.resolve_pincode_with(cred.clone())
                .unwrap()
                .unwrap()
                .expose(),
            "1111"
        );
        c.pincode_file = Some(dir.path().join("pin"));
        assert_eq!(
            c.resolve_pincode_with(cred.clone())
                .unwrap()
                .unwrap()
                .expose(),
            "2222"
        );
        c.pincode = Some(Secret::new("3333"));
        assert_eq!(
            c.resolve_pincode_with(cred).unwrap().unwrap().expose(),
            "3333"
        );
        c.pincode = None;
        c.pincode_file = Some(dir.path().join("missing"));
        assert!(
            c.resolve_pincode_with(None)
                .unwrap_err()
                .contains("missing")
        );
    }

    #[test]
    fn plaintext_cloud_urls_are_refused_outside_loopback() {
        let mut c = CloudConfig::default();
        assert!(
            validate(&c).is_empty(),
            "the loopback simulator default is allowed"
        );
        c.base_url = "http://api.example.com".into();
        c.status.url = Some("ws://api.example.com/v1/ws".into());
        let issues = validate(&c);
        let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["cloud.base_url", "cloud.status.url"], "{issues:?}");
        assert!(
            issues[0].message.contains("https://api.example.com"),
            "{issues:?}"
        );
    }

    #[test]
    fn validation_and_derived_urls() {
        let mut c = CloudConfig::default();
        assert!(validate(&c).is_empty());
        assert_eq!(c.status_url(), "ws://127.0.0.1:8780/v1/ws");
        c.base_url = "https://api.example.com/".into();
        assert_eq!(c.status_url(), "wss://api.example.com/v1/ws");
        c.base_url = "ftp://x".into();
        c.connector_uuid = Some("nope".into());
        c.routes.insert("connectors_get".into(), "/v1/c/{x}".into());
        let keys: Vec<String> = validate(&c).into_iter().map(|i| i.key).collect();
        assert_eq!(
            keys,
            [
                "cloud.base_url",
                "cloud.routes.connectors_get",
                "cloud.connector_uuid"
            ]
        );
    }
}
