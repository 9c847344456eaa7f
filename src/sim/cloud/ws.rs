//! The simulator's status websocket (`GET /v1/ws`), served with tokio-tungstenite over the
//! HTTP upgrade.
//!
//! Owns: authentication of the upgrade (bearer header or `access_token` query parameter),
//! subscriptions (`subscribeToConnector`, `subscribeToTicket`, `subscribeToConnection` and
//! the vendor's unsubscribe spellings), snapshots every `snapshot_interval` and right after
//! a subscription or a state change, closing when the token expires (code 4001), and being
//! dropped without a close frame by the admin interface.

use super::Shared;
use super::data::SimData;
use super::http::{check_token, parse_query, problem};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

/// Close code sent when the session's token expires.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Sub {
    Connector(i64),
    Ticket(i64),
    Connection(String),
}

impl Sub {
    fn action(&self) -> &'static str {
        match self {
            Sub::Connector(_) => "subscribeToConnector",
            Sub::Ticket(_) => "subscribeToTicket",
            Sub::Connection(_) => "subscribeToConnection",
        }
    }
}

pub async fn upgrade(State(sh): State<Arc<Shared>>, mut req: Request) -> Response {
    if let Some(f) = super::http::take_fault(&sh, "GET", req.uri().path()) {
        if f.latency_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(f.latency_ms)).await;
        }
        if let Some(s) = f.status {
            return problem(s, "injected fault");
        }
    }
    let headers = req.headers();
    let query = parse_query(req.uri().query()).unwrap_or_default();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string())
        .or_else(|| {
            query
                .iter()
                .find(|(k, _)| k == "access_token")
                .map(|(_, v)| v.clone())
        });
    let now = crate::cloud::token::now_unix();
    let rec = match sh.data.lock() {
        Ok(d) => check_token(&d, token.as_deref(), now),
        Err(_) => return problem(500, "state poisoned"),
    };
    let rec = match rec {
        Ok(r) => r,
        Err(f) => return problem(f.status, &f.detail),
    };
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return problem(400, "not a websocket upgrade (Sec-WebSocket-Key missing)");
    };
    if !is_upgrade {
        return problem(400, "not a websocket upgrade (Upgrade: websocket missing)");
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let stop = sh.shutdown.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut cfg = WebSocketConfig::default();
                cfg.max_message_size = Some(64 << 10);
                cfg.max_frame_size = Some(64 << 10);
                cfg.max_write_buffer_size = 1 << 20;
                let ws = WebSocketStream::from_raw_socket(
                    hyper_util::rt::TokioIo::new(upgraded),
                    Role::Server,
                    Some(cfg),
                )
                .await;
                sh.ws_clients.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    _ = session(ws, &sh, rec.token) => {}
                    _ = stop.cancelled() => {}
                }
                sh.ws_clients.fetch_sub(1, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!("websocket upgrade failed: {e}"),
        }
    });
    let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

fn snapshot(d: &SimData, sub: &Sub) -> Value {
    let message = match sub {
        Sub::Connector(id) => match d.connector(*id) {
            Some(c) => {
                let active = d
                    .tickets
                    .iter()
                    .find(|t| t.connector_id == c.id && super::data::state::is_active(t.state))
                    .map(|t| t.id);
                json!({
                    "connector_id": c.id, "voltage": c.voltage, "vin_number": c.vin_number,
                    "round_trip_time": 42, "is_online": c.is_online,
                    "call_for_attention": c.call_for_attention, "active_ticket_id": active,
                })
            }
            None => return error_msg(&format!("connector {id} not found")),
        },
        Sub::Ticket(id) => match d.tickets.iter().find(|t| t.id == *id) {
            Some(t) => SimData::ticket_snapshot(t),
            None => return error_msg(&format!("ticket {id} not found")),
        },
        Sub::Connection(uuid) => {
            let live = d
                .tickets
                .iter()
                .any(|t| t.connection_uuid.as_deref() == Some(uuid.as_str()));
            json!({
                "connection_uuid": uuid,
                "script_ui_wss_url": live.then(|| format!("wss://script-ui.invalid/{uuid}")),
                "script_ui_available": live, "is_autonomous": false,
            })
        }
    };
    json!({ "action": sub.action(), "message": message })
}

fn error_msg(detail: &str) -> Value {
    json!({ "action": "error", "message": { "detail": detail } })
}

fn parse_sub(v: &Value) -> Result<(bool, Sub), String> {
    let action = v.get("action").and_then(Value::as_str).unwrap_or_default();
    let int = |k: &str| {
        v.get(k)
            .and_then(crate::cloud::validate::lenient_int)
            .ok_or_else(|| format!("{action}: `{k}` (integer) is missing"))
    };
    let uuid = || {
        v.get("connection_uuid")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("{action}: `connection_uuid` is missing"))
    };
    match action {
        "subscribeToConnector" => Ok((true, Sub::Connector(int("connector_id")?))),
        "subscribeToTicket" => Ok((true, Sub::Ticket(int("ticket_id")?))),
        "subscribeToConnection" => Ok((true, Sub::Connection(uuid()?))),
        "unsubscribeFromConnector" => Ok((false, Sub::Connector(int("connector_id")?))),
        "unsubscribeToTicket" => Ok((false, Sub::Ticket(int("ticket_id")?))),
        "unsubscribeToConnection" => Ok((false, Sub::Connection(uuid()?))),
        other => Err(format!("unknown action `{other}`")),
    }
}

async fn session<S>(mut ws: WebSocketStream<S>, sh: &Shared, token: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut subs: BTreeSet<Sub> = BTreeSet::new();
    let mut drop_rx = sh.ws_drop.subscribe();
    let mut changed_rx = sh.changed.subscribe();
    drop_rx.borrow_and_update();
    changed_rx.borrow_and_update();
    let mut tick = tokio::time::interval(sh.opts.snapshot_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let mut send_all = false;
        let mut outgoing: Vec<Value> = Vec::new();
        tokio::select! {
            _ = drop_rx.changed() => return,
            _ = tick.tick() => send_all = true,
            _ = changed_rx.changed() => send_all = true,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    match serde_json::from_str::<Value>(t.as_str()).map_err(|e| e.to_string()).and_then(|v| parse_sub(&v)) {
                        Ok((true, sub)) => {
                            sh.ws_subscribes.fetch_add(1, Ordering::Relaxed);
                            if let Ok(d) = sh.data.lock() {
                                outgoing.push(snapshot(&d, &sub));
                            }
                            subs.insert(sub);
                        }
                        Ok((false, sub)) => {
                            subs.remove(&sub);
                        }
                        Err(e) => outgoing.push(error_msg(&e)),
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
        let now = crate::cloud::token::now_unix();
        let expired = match sh.data.lock() {
            Ok(d) => {
                let expired = check_token(&d, Some(&token), now).is_err();
                if send_all && !expired {
                    outgoing.extend(subs.iter().map(|s| snapshot(&d, s)));
                }
                expired
            }
            Err(_) => true,
        };
        if expired {
            let _ = ws
                .close(Some(CloseFrame {
                    code: CloseCode::from(CLOSE_TOKEN_EXPIRED),
                    reason: "token expired".into(),
                }))
                .await;
            return;
        }
        for m in outgoing {
            if ws.feed(Message::text(m.to_string())).await.is_err() {
                return;
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}
