//! The simulator's HTTP side: routes built from the operation table, request parsing into
//! the shared `ApiRequest` form, bearer tokens, problem+json errors, fault injection, the
//! admin interface and `/openapi.json`.
//!
//! Owns: everything between a socket and `ops`. Path, query and body are parsed here (not by
//! axum extractors) so every malformed request gets a documented problem+json 400.

use super::data::{SimData, TokenRec};
use super::ops::{self, Caller, Clock, Fail};
use super::{Shared, ws};
use crate::cloud::spec::{Method, OPS, Op};
use crate::cloud::validate::{ApiRequest, validate};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, get, on, post};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A problem+json response.
pub fn problem(status: u16, detail: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({
        "status": status, "type": "about:blank",
        "title": code.canonical_reason().unwrap_or("Error"), "detail": detail,
    });
    let mut r = (code, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

fn json_response(status: u16, body: Option<Value>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    match body {
        None => code.into_response(),
        Some(v) => {
            let mut r = (code, v.to_string()).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
    }
}

/// Decode `%XX` escapes (and `+` as space when `plus` is set); `None` on bad escapes or
/// invalid UTF-8.
pub fn percent_decode(s: &str, plus: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Query pairs of a raw query string.
pub fn parse_query(raw: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let k = percent_decode(k, true).ok_or("a query name is not valid percent-encoded UTF-8")?;
        let v = percent_decode(v, true)
            .ok_or_else(|| format!("query parameter `{k}` is not valid percent-encoded UTF-8"))?;
        out.push((k, v));
    }
    Ok(out)
}

/// Path parameters of `path` matched against `template`.
fn path_params(template: &str, path: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    if t.len() != p.len() {
        return Err("path does not match the route".into());
    }
    for (ts, ps) in t.iter().zip(p) {
        if let Some(name) = ts.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
            let v = percent_decode(ps, false).ok_or_else(|| {
                format!("path parameter `{name}` is not valid percent-encoded UTF-8")
            })?;
            out.insert(name.to_string(), v);
        }
    }
    Ok(out)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The token record of a valid, unexpired token.
pub fn check_token(d: &SimData, token: Option<&str>, now: u64) -> Result<TokenRec, Fail> {
    let token = token.ok_or_else(|| ops::fail(401, "missing bearer token"))?;
    let rec = d
        .tokens
        .iter()
        .find(|t| t.token == token)
        .ok_or_else(|| ops::fail(401, "invalid token"))?;
    if rec.expires_at <= now {
        return Err(ops::fail(401, "token expired"));
    }
    Ok(rec.clone())
}

/// An injected fault.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Answer with this status (problem+json).
    #[serde(default)]
    pub status: Option<u16>,
    /// How many matching requests it applies to.
    #[serde(default = "one")]
    pub count: u32,
    /// Delay before answering.
    #[serde(default)]
    pub latency_ms: u64,
    /// Only requests whose path starts with this.
    #[serde(default)]
    pub path_prefix: String,
    /// Only this method (`GET`, `POST`, ...).
    #[serde(default)]
    pub method: Option<String>,
    /// Send headers, then abort the connection mid-body.
    #[serde(default)]
    pub drop: bool,
}

fn one() -> u32 {
    1
}

pub(super) fn take_fault(sh: &Shared, method: &str, path: &str) -> Option<Fault> {
    let mut faults = sh.faults.lock().ok()?;
    let pos = faults.iter().position(|f| {
        f.count > 0
            && path.starts_with(&f.path_prefix)
            && f.method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
    })?;
    let f = faults[pos].clone();
    faults[pos].count -= 1;
    if faults[pos].count == 0 {
        faults.remove(pos);
    }
    Some(f)
}

async fn api(sh: Arc<Shared>, op: Op, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    sh.requests.fetch_add(1, Ordering::Relaxed);
    let spec = op.spec();
    if let Some(f) = take_fault(&sh, spec.method.as_str(), uri.path()) {
        if f.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(f.latency_ms)).await;
        }
        if f.drop {
            let stream = futures_util::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::other("injected connection drop"))
            });
            let mut r = Response::new(Body::from_stream(stream));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return r;
        }
        if let Some(s) = f.status {
            return problem(s, "injected fault");
        }
    }
    let mut req = ApiRequest::new();
    match path_params(spec.path, uri.path()) {
        Ok(p) => req.path = p,
        Err(e) => return problem(400, &e),
    }
    match parse_query(uri.query()) {
        Ok(q) => req.query = q,
        Err(e) => return problem(400, &e),
    }
    if !body.iter().all(u8::is_ascii_whitespace) {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => req.body = Some(v),
            Err(e) => return problem(400, &format!("the body is not JSON: {e}")),
        }
    }
    let now = crate::cloud::token::now_unix();
    let clock = Clock {
        now,
        token_ttl_s: sh.opts.token_ttl_s,
    };
    // Authenticate before validating, as a real gateway would.
    let answer = {
        let Ok(mut d) = sh.data.lock() else {
            return problem(500, "simulator state poisoned");
        };
        let caller = if spec.auth {
            match check_token(&d, bearer(&headers), now) {
                Ok(t) => Some(t),
                Err(f) => return problem(f.status, &f.detail),
            }
        } else {
            None
        };
        if let Err(v) = validate(op, &req) {
            return problem(400, &v.to_string());
        }
        let result = match &caller {
            Some(token) => ops::private(op, &req, &mut d, &Caller { token }, now),
            None => ops::public(op, &req, &mut d, &clock),
        };
        match result {
            Ok(a) => {
                let snapshot = (a.changed && sh.opts.state_file.is_some()).then(|| d.clone());
                Ok((a, snapshot))
            }
            Err(f) => Err(f),
        }
    };
    match answer {
        Ok((a, snapshot)) => {
            if a.changed {
                sh.bump();
            }
            if let Some(s) = snapshot {
                sh.persist(&s);
            }
            json_response(a.status, a.body)
        }
        Err(f) => problem(f.status, &f.detail),
    }
}

fn method_filter(m: Method) -> MethodFilter {
    match m {
        Method::Get => MethodFilter::GET,
        Method::Post => MethodFilter::POST,
        Method::Put => MethodFilter::PUT,
        Method::Delete => MethodFilter::DELETE,
    }
}

/// Placeholders renamed `{p0}`, `{p1}`, ... so routes sharing a prefix do not conflict.
fn axum_path(template: &str) -> String {
    let mut out = String::new();
    for (i, seg) in template.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if seg.starts_with('{') {
            let n = out.matches("{p").count();
            out.push_str(&format!("{{p{n}}}"));
        } else {
            out.push_str(seg);
        }
    }
    out
}

/// The whole application.
pub fn router(sh: Arc<Shared>) -> Router {
    let mut by_path: BTreeMap<String, MethodRouter<Arc<Shared>>> = BTreeMap::new();
    for spec in OPS {
        let op = spec.op;
        let handler = move |State(sh): State<Arc<Shared>>,
                            uri: Uri,
                            headers: HeaderMap,
                            body: Bytes| { api(sh, op, uri, headers, body) };
        let path = axum_path(spec.path);
        let mr = by_path.remove(&path).unwrap_or_default();
        by_path.insert(path, mr.on(method_filter(spec.method), handler));
    }
    let mut app: Router<Arc<Shared>> = Router::new();
    for (path, mr) in by_path {
        app = app.route(&path, mr);
    }
    app.route("/v1/ws", get(ws::upgrade))
        .route("/openapi.json", get(openapi))
        .route("/admin/state", get(admin_state))
        .route("/admin/tickets/{id}/{action}", post(admin_ticket))
        .route("/admin/connections/{uuid}", get(admin_connection))
        .route(
            "/admin/faults",
            on(MethodFilter::POST, admin_add_fault).on(MethodFilter::DELETE, admin_clear_faults),
        )
        .route("/admin/websockets/drop", post(admin_drop_ws))
        .route("/admin/tokens/expire", post(admin_expire_tokens))
        .route("/admin/connectors/{id}", post(admin_connector))
        .fallback(|| async { problem(404, "no such route; see /openapi.json") })
        .method_not_allowed_fallback(|| async {
            problem(405, "method not allowed on this route; see /openapi.json")
        })
        .with_state(sh)
}

async fn openapi() -> Response {
    json_response(200, Some(super::openapi::document()))
}

async fn admin_state(State(sh): State<Arc<Shared>>) -> Response {
    let Ok(d) = sh.data.lock() else {
        return problem(500, "state poisoned");
    };
    let faults = sh.faults.lock().map(|f| f.len()).unwrap_or(0);
    json_response(
        200,
        Some(json!({
            "tickets": d.tickets, "connectors": d.connectors.iter().map(|c| json!({
                "id": c.id, "uuid": c.uuid, "is_online": c.is_online, "voltage": c.voltage,
                "call_for_attention": c.call_for_attention,
            })).collect::<Vec<_>>(),
            "faults": faults,
            "websocket_clients": sh.ws_clients.load(Ordering::Relaxed),
            "websocket_subscriptions": sh.ws_subscribes.load(Ordering::Relaxed),
            "requests": sh.requests.load(Ordering::Relaxed),
            "tokens": d.tokens.len(),
        })),
    )
}

async fn admin_ticket(
    State(sh): State<Arc<Shared>>,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return problem(400, "ticket id is not an integer");
    };
    let now = crate::cloud::token::now_unix();
    let result = {
        let Ok(mut d) = sh.data.lock() else {
            return problem(500, "state poisoned");
        };
        let before = d
            .tickets
            .iter()
            .find(|t| t.id == id)
            .and_then(|t| t.connection_uuid.clone());
        ops::ticket_action(&mut d, id, &action, now).map(|t| (t, before, d.clone()))
    };
    match result {
        Ok((t, before, snapshot)) => {
            sh.bump();
            if sh.opts.state_file.is_some() {
                sh.persist(&snapshot);
            }
            tracing::info!(ticket = t.id, state = t.state, %action, "admin: ticket action");
            match (&before, &t.connection_uuid) {
                (Some(old), None) => {
                    super::relay::end_session(&sh, old, &format!("ticket {id}: {action}"));
                }
                (None, Some(session)) => {
                    // A new connection: with the relay on, say how to reach it (stdout, for
                    // people and tests).
                    if let Some(r) = sh.relay.get() {
                        println!(
                            "connection ticket={} session={} operator_token={} relay={}",
                            t.id,
                            session,
                            t.operator_token.as_deref().unwrap_or(""),
                            r.url
                        );
                    }
                }
                _ => {}
            }
            json_response(200, Some(serde_json::to_value(&t).unwrap_or(Value::Null)))
        }
        Err(f) => problem(f.status, &f.detail),
    }
}

/// A ticket's connection as the tunnel sees it: the session id, the operator's session
/// token, the relay's URL (when `--relay-listen` is on) and who the gateway is.
async fn admin_connection(State(sh): State<Arc<Shared>>, Path(uuid): Path<String>) -> Response {
    let Ok(d) = sh.data.lock() else {
        return problem(500, "state poisoned");
    };
    let Some(t) = d.tickets.iter().find(|t| {
        crate::sim::cloud::data::state::is_active(t.state)
            && t.connection_uuid.as_deref() == Some(uuid.as_str())
    }) else {
        return problem(
            404,
            "no active ticket has this connection; join a ticket first (POST /admin/tickets/{id}/join)",
        );
    };
    let connector_uuid = d.connector(t.connector_id).map(|c| c.uuid.clone());
    json_response(
        200,
        Some(json!({
            "session": uuid,
            "ticket_id": t.id,
            "connection_id": t.connection_id,
            "connector_id": t.connector_id,
            "connector_uuid": connector_uuid,
            "operator_token": t.operator_token,
            "relay_url": sh.relay.get().map(|r| r.url.clone()),
            "gateway_authenticates_with": "a login token of the connector (access_token of POST /v1/authenticate/connector)",
        })),
    )
}

async fn admin_add_fault(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let f: Fault = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return problem(400, &format!("fault: {e}")),
    };
    if f.status.is_some_and(|s| !(100..=599).contains(&s)) {
        return problem(400, "status must be in 100..=599");
    }
    tracing::info!(?f, "admin: fault injected");
    if let Ok(mut v) = sh.faults.lock() {
        v.push(f);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_clear_faults(State(sh): State<Arc<Shared>>) -> Response {
    if let Ok(mut v) = sh.faults.lock() {
        v.clear();
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_drop_ws(State(sh): State<Arc<Shared>>) -> Response {
    sh.ws_drop.send_modify(|g| *g += 1);
    tracing::info!("admin: websockets dropped");
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_expire_tokens(State(sh): State<Arc<Shared>>) -> Response {
    let now = crate::cloud::token::now_unix();
    if let Ok(mut d) = sh.data.lock() {
        for t in &mut d.tokens {
            t.expires_at = t.expires_at.min(now);
        }
    }
    sh.bump();
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectorPatch {
    voltage: Option<f64>,
    is_online: Option<bool>,
    vin_number: Option<String>,
    call_for_attention: Option<bool>,
}

async fn admin_connector(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let patch: ConnectorPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return problem(400, &format!("connector patch: {e}")),
    };
    {
        let Ok(mut d) = sh.data.lock() else {
            return problem(500, "state poisoned");
        };
        let Some(c) = d.connectors.iter_mut().find(|c| c.id.to_string() == id) else {
            return problem(404, "connector not found");
        };
        if let Some(v) = patch.voltage {
            c.voltage = v;
        }
        if let Some(v) = patch.is_online {
            c.is_online = v;
        }
        if let Some(v) = patch.vin_number {
            c.vin_number = v;
        }
        if let Some(v) = patch.call_for_attention {
            c.call_for_attention = v;
        }
    }
    sh.bump();
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Request parsing never panics, whatever the client sends.
        #[test]
        fn parsing_never_panics(q in "\\PC{0,80}", path in "[a-z0-9/%{}]{0,40}") {
            let _ = parse_query(Some(&q));
            let _ = percent_decode(&q, true);
            let _ = path_params("/v1/connectors/{connectorId}/active-ticket", &path);
            for spec in OPS {
                if let Ok(query) = parse_query(Some(&q)) {
                    let req = ApiRequest { path: BTreeMap::new(), query, body: None };
                    let _ = validate(spec.op, &req);
                }
            }
        }
    }

    #[test]
    fn parsing_helpers() {
        assert_eq!(percent_decode("a%20b+c", true).as_deref(), Some("a b c"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%zz", true), None);
        assert_eq!(percent_decode("%ff", true), None);
        assert_eq!(percent_decode("%4", true), None);
        let q = parse_query(Some("vin=AB&product_id=1,2&product_id=3&flag")).unwrap();
        assert_eq!(q.len(), 4);
        assert_eq!(q[3], ("flag".to_string(), String::new()));
        let p = path_params(
            "/v1/connectors/{connectorId}/active-ticket",
            "/v1/connectors/12/active-ticket",
        )
        .unwrap();
        assert_eq!(p["connectorId"], "12");
        assert_eq!(
            axum_path("/v1/channels/{channel_id}/attachments"),
            "/v1/channels/{p0}/attachments"
        );
    }
}
