//! The status websocket: subscriptions to this connector, its active ticket and the
//! ticket's connection; snapshots diffed into events; reconnects with the vendor's advice;
//! REST polling while the socket is down.
//!
//! Owns: a sans-IO core ([`StatusTracker`]: snapshots in, events and wanted subscriptions
//! out; [`Reconnect`]: the delay before each attempt) and a thin tokio driver
//! ([`StatusClient::run`]). Unknown actions, unknown states and malformed frames are logged
//! and skipped, never fatal.
//!
//! Does not own: what the daemon does with the events (open or close the tunnel).

use super::client::Client;
use super::config::{CloudConfig, TokenPlacement};
use super::error::ApiError;
use super::model::{Connector, Ticket};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A ticket state. Numbers map to names through `cloud.ticket_states` (defaults in
/// [`super::config::DEFAULT_TICKET_STATES`]); anything else is `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketState {
    Prepared,
    Pending,
    InProgress,
    Outsourced,
    Closed,
    Cancelled,
    Unknown(i64),
}

impl TicketState {
    pub fn from_number(n: i64, names: &BTreeMap<i64, String>) -> TicketState {
        match names.get(&n).map(String::as_str) {
            Some("prepared") => TicketState::Prepared,
            Some("pending") => TicketState::Pending,
            Some("in_progress") => TicketState::InProgress,
            Some("outsourced") => TicketState::Outsourced,
            Some("closed") => TicketState::Closed,
            Some("cancelled") => TicketState::Cancelled,
            _ => TicketState::Unknown(n),
        }
    }

    /// The name in status, logs and `obdgw api watch` (`unknown(42)` for a number without
    /// a name in `cloud.ticket_states`).
    pub fn name(self) -> String {
        match self {
            TicketState::Prepared => "prepared".into(),
            TicketState::Pending => "pending".into(),
            TicketState::InProgress => "in_progress".into(),
            TicketState::Outsourced => "outsourced".into(),
            TicketState::Closed => "closed".into(),
            TicketState::Cancelled => "cancelled".into(),
            TicketState::Unknown(n) => format!("unknown({n})"),
        }
    }

    /// Whether the ticket is over.
    pub fn is_final(self) -> bool {
        matches!(self, TicketState::Closed | TicketState::Cancelled)
    }
}

/// What the connector snapshot says (fields beyond the sister API's are optional).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct ConnectorSnapshot {
    #[serde(deserialize_with = "super::model::lenient::int")]
    pub connector_id: i64,
    #[serde(deserialize_with = "super::model::lenient::opt_num")]
    pub voltage: Option<f64>,
    #[serde(deserialize_with = "super::model::lenient::opt_string")]
    pub vin_number: Option<String>,
    #[serde(deserialize_with = "super::model::lenient::opt_num")]
    pub round_trip_time: Option<f64>,
    pub is_online: Option<bool>,
    #[serde(deserialize_with = "super::model::lenient::opt_int")]
    pub active_ticket_id: Option<i64>,
}

/// What a ticket snapshot says.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct TicketSnapshot {
    #[serde(deserialize_with = "super::model::lenient::int")]
    pub ticket_id: i64,
    #[serde(deserialize_with = "super::model::lenient::opt_string")]
    pub ticket_uuid: Option<String>,
    #[serde(deserialize_with = "super::model::lenient::int")]
    pub state: i64,
    #[serde(deserialize_with = "super::model::lenient::opt_int")]
    pub connection_id: Option<i64>,
    #[serde(deserialize_with = "super::model::lenient::opt_string")]
    pub connection_uuid: Option<String>,
    #[serde(deserialize_with = "super::model::lenient::opt_int")]
    pub cancelled_reason: Option<i64>,
    #[serde(deserialize_with = "super::model::lenient::opt_int")]
    pub chat_state: Option<i64>,
    #[serde(deserialize_with = "super::model::lenient::opt_string")]
    pub vin: Option<String>,
}

/// What a connection snapshot says.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct ConnectionSnapshot {
    #[serde(deserialize_with = "super::model::lenient::opt_string")]
    pub connection_uuid: Option<String>,
    #[serde(deserialize_with = "super::model::lenient::opt_string")]
    pub script_ui_wss_url: Option<String>,
    #[serde(deserialize_with = "super::model::lenient::opt_bool")]
    pub script_ui_available: Option<bool>,
    #[serde(deserialize_with = "super::model::lenient::opt_bool")]
    pub is_autonomous: Option<bool>,
}

/// A change worth acting on.
#[derive(Debug, Clone, PartialEq)]
pub enum StatusEvent {
    /// The websocket is up.
    LinkUp,
    /// The websocket is down; REST polling takes over.
    LinkDown {
        reason: String,
    },
    ConnectorChanged {
        before: Option<ConnectorSnapshot>,
        after: ConnectorSnapshot,
    },
    /// A ticket appeared (`from: None`) or changed state.
    TicketStateChanged {
        ticket_id: i64,
        from: Option<TicketState>,
        to: TicketState,
    },
    /// The active ticket disappeared without a known final state.
    TicketGone {
        ticket_id: i64,
    },
    ConnectionStarted {
        ticket_id: i64,
        connection_uuid: String,
        /// The ticket's VIN when the snapshot carried one (the daemon compares it with the
        /// car's before a session opens).
        vin: Option<String>,
    },
    ConnectionEnded {
        ticket_id: i64,
        connection_uuid: String,
    },
    ConnectionUpdated(ConnectionSnapshot),
}

/// A subscription, as a key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subscription {
    Connector(i64),
    Ticket(i64),
    Connection(String),
}

impl Subscription {
    /// The frame that subscribes.
    pub fn subscribe(&self) -> Value {
        match self {
            Subscription::Connector(id) => {
                json!({ "action": "subscribeToConnector", "connector_id": id })
            }
            Subscription::Ticket(id) => json!({ "action": "subscribeToTicket", "ticket_id": id }),
            Subscription::Connection(u) => {
                json!({ "action": "subscribeToConnection", "connection_uuid": u })
            }
        }
    }

    /// The frame that unsubscribes (the vendor's spellings).
    pub fn unsubscribe(&self) -> Value {
        match self {
            Subscription::Connector(id) => {
                json!({ "action": "unsubscribeFromConnector", "connector_id": id })
            }
            Subscription::Ticket(id) => json!({ "action": "unsubscribeToTicket", "ticket_id": id }),
            Subscription::Connection(u) => {
                json!({ "action": "unsubscribeToConnection", "connection_uuid": u })
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct ActiveTicket {
    id: i64,
    state: TicketState,
    connection_uuid: Option<String>,
    vin: Option<String>,
}

/// The sans-IO core: the last snapshots, diffed into events.
#[derive(Debug, Clone)]
pub struct StatusTracker {
    connector_id: i64,
    names: BTreeMap<i64, String>,
    connector: Option<ConnectorSnapshot>,
    ticket: Option<ActiveTicket>,
    connection: Option<ConnectionSnapshot>,
}

impl StatusTracker {
    pub fn new(connector_id: i64, names: BTreeMap<i64, String>) -> Self {
        StatusTracker {
            connector_id,
            names,
            connector: None,
            ticket: None,
            connection: None,
        }
    }

    /// The active ticket's id, if one is known.
    pub fn ticket_id(&self) -> Option<i64> {
        self.ticket.as_ref().map(|t| t.id)
    }

    /// The live connection, if any.
    pub fn connection_uuid(&self) -> Option<&str> {
        self.ticket
            .as_ref()
            .and_then(|t| t.connection_uuid.as_deref())
    }

    /// The subscriptions wanted now.
    pub fn wanted(&self) -> BTreeSet<Subscription> {
        let mut s = BTreeSet::new();
        s.insert(Subscription::Connector(self.connector_id));
        if let Some(t) = &self.ticket {
            s.insert(Subscription::Ticket(t.id));
            if let Some(c) = &t.connection_uuid {
                s.insert(Subscription::Connection(c.clone()));
            }
        }
        s
    }

    /// Apply one text frame from the server.
    pub fn apply_text(&mut self, text: &str) -> Vec<StatusEvent> {
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("status websocket: ignoring a frame that is not JSON: {e}");
                return Vec::new();
            }
        };
        let action = v.get("action").and_then(Value::as_str).unwrap_or("");
        let message = v.get("message").cloned().unwrap_or(Value::Null);
        match action {
            "subscribeToConnector" => match serde_json::from_value::<ConnectorSnapshot>(message) {
                Ok(s) if s.connector_id == self.connector_id || s.connector_id == 0 => {
                    let s = ConnectorSnapshot {
                        connector_id: self.connector_id,
                        ..s
                    };
                    self.apply_connector(s)
                }
                Ok(s) => {
                    tracing::debug!(
                        connector = s.connector_id,
                        "status: snapshot of another connector ignored"
                    );
                    Vec::new()
                }
                Err(e) => {
                    tracing::warn!("status: malformed connector snapshot ignored: {e}");
                    Vec::new()
                }
            },
            "subscribeToTicket" => match serde_json::from_value::<TicketSnapshot>(message) {
                Ok(s) => self.apply_ticket(s),
                Err(e) => {
                    tracing::warn!("status: malformed ticket snapshot ignored: {e}");
                    Vec::new()
                }
            },
            "subscribeToConnection" => {
                match serde_json::from_value::<ConnectionSnapshot>(message) {
                    Ok(s) => self.apply_connection(s),
                    Err(e) => {
                        tracing::warn!("status: malformed connection snapshot ignored: {e}");
                        Vec::new()
                    }
                }
            }
            "error" => {
                tracing::warn!("status websocket error frame: {message}");
                Vec::new()
            }
            other => {
                tracing::warn!(action = other, "status websocket: unknown action ignored");
                Vec::new()
            }
        }
    }

    /// A connector snapshot (from the socket).
    pub fn apply_connector(&mut self, s: ConnectorSnapshot) -> Vec<StatusEvent> {
        let mut ev = Vec::new();
        if self.connector.as_ref() != Some(&s) {
            ev.push(StatusEvent::ConnectorChanged {
                before: self.connector.clone(),
                after: s.clone(),
            });
        }
        if let Some(id) = s.active_ticket_id
            && self.ticket.as_ref().is_none_or(|t| t.id != id)
            && self.ticket.as_ref().is_none_or(|t| t.state.is_final())
        {
            // Learnt of a new ticket; its state arrives with the ticket snapshot.
            self.ticket = Some(ActiveTicket {
                id,
                state: TicketState::Unknown(-1),
                connection_uuid: None,
                vin: None,
            });
        }
        self.connector = Some(s);
        ev
    }

    /// A connector seen over REST: only the fields REST carries are merged.
    pub fn apply_connector_rest(&mut self, c: &Connector) -> Vec<StatusEvent> {
        let mut s = self.connector.clone().unwrap_or(ConnectorSnapshot {
            connector_id: self.connector_id,
            ..ConnectorSnapshot::default()
        });
        s.is_online = Some(c.is_online);
        if c.vin_number.is_some() {
            s.vin_number = c.vin_number.clone();
        }
        self.apply_connector(s)
    }

    fn set_state(&mut self, id: i64, to: TicketState, ev: &mut Vec<StatusEvent>) {
        let from = match &self.ticket {
            Some(t) if t.id == id => match t.state {
                TicketState::Unknown(-1) => None,
                s => Some(s),
            },
            Some(old) => {
                // A different ticket replaces the old one.
                if let Some(c) = &old.connection_uuid {
                    ev.push(StatusEvent::ConnectionEnded {
                        ticket_id: old.id,
                        connection_uuid: c.clone(),
                    });
                }
                self.connection = None;
                None
            }
            None => None,
        };
        if from != Some(to) {
            if let TicketState::Unknown(n) = to {
                tracing::warn!(
                    ticket = id,
                    state = n,
                    "ticket state number without a name; add it to cloud.ticket_states"
                );
            }
            ev.push(StatusEvent::TicketStateChanged {
                ticket_id: id,
                from,
                to,
            });
        }
        let same = self.ticket.as_ref().filter(|t| t.id == id);
        let conn = same.and_then(|t| t.connection_uuid.clone());
        let vin = same.and_then(|t| t.vin.clone());
        self.ticket = Some(ActiveTicket {
            id,
            state: to,
            connection_uuid: conn,
            vin,
        });
    }

    fn set_connection(&mut self, id: i64, uuid: Option<String>, ev: &mut Vec<StatusEvent>) {
        let Some(t) = self.ticket.as_mut().filter(|t| t.id == id) else {
            return;
        };
        if t.connection_uuid == uuid {
            return;
        }
        if let Some(old) = t.connection_uuid.take() {
            ev.push(StatusEvent::ConnectionEnded {
                ticket_id: id,
                connection_uuid: old,
            });
            self.connection = None;
        }
        if let Some(new) = uuid {
            ev.push(StatusEvent::ConnectionStarted {
                ticket_id: id,
                connection_uuid: new.clone(),
                vin: t.vin.clone(),
            });
            t.connection_uuid = Some(new);
        }
    }

    /// Remember the ticket's VIN (an empty one tells nothing).
    fn set_vin(&mut self, id: i64, vin: Option<&str>) {
        if let Some(t) = self.ticket.as_mut().filter(|t| t.id == id)
            && let Some(v) = vin.map(str::trim).filter(|v| !v.is_empty())
        {
            t.vin = Some(v.to_string());
        }
    }

    /// The active ticket's VIN, when a snapshot or REST carried one.
    pub fn ticket_vin(&self) -> Option<&str> {
        self.ticket.as_ref().and_then(|t| t.vin.as_deref())
    }

    /// A ticket snapshot (from the socket).
    pub fn apply_ticket(&mut self, s: TicketSnapshot) -> Vec<StatusEvent> {
        let mut ev = Vec::new();
        if s.ticket_id == 0 {
            tracing::warn!("status: ticket snapshot without ticket_id ignored");
            return ev;
        }
        if self
            .ticket
            .as_ref()
            .is_some_and(|t| t.id != s.ticket_id && !t.state.is_final())
        {
            tracing::debug!(
                ticket = s.ticket_id,
                "status: snapshot of a ticket that is not the active one ignored"
            );
            return ev;
        }
        let to = TicketState::from_number(s.state, &self.names);
        self.set_state(s.ticket_id, to, &mut ev);
        self.set_vin(s.ticket_id, s.vin.as_deref());
        let conn = if to.is_final() {
            None
        } else {
            s.connection_uuid.filter(|c| !c.is_empty())
        };
        self.set_connection(s.ticket_id, conn, &mut ev);
        if to.is_final() {
            self.ticket = None;
        }
        ev
    }

    /// The active ticket seen over REST (no connection data there: the connection is kept).
    pub fn apply_ticket_rest(&mut self, t: &Ticket) -> Vec<StatusEvent> {
        let mut ev = Vec::new();
        let to = TicketState::from_number(t.state, &self.names);
        self.set_state(t.id, to, &mut ev);
        self.set_vin(t.id, Some(t.vin()));
        if to.is_final() {
            self.set_connection(t.id, None, &mut ev);
            self.ticket = None;
        }
        ev
    }

    /// REST says there is no active ticket; `final_state` is the ticket's state if the
    /// caller could learn it (e.g. from the historical tickets).
    pub fn apply_no_ticket(&mut self, final_state: Option<i64>) -> Vec<StatusEvent> {
        let mut ev = Vec::new();
        let Some(t) = self.ticket.clone() else {
            return ev;
        };
        self.set_connection(t.id, None, &mut ev);
        match final_state {
            Some(n) => self.set_state(t.id, TicketState::from_number(n, &self.names), &mut ev),
            None => ev.push(StatusEvent::TicketGone { ticket_id: t.id }),
        }
        self.ticket = None;
        ev
    }

    /// A connection snapshot (from the socket).
    pub fn apply_connection(&mut self, s: ConnectionSnapshot) -> Vec<StatusEvent> {
        if s.connection_uuid.is_none() || s.connection_uuid.as_deref() != self.connection_uuid() {
            return Vec::new();
        }
        if self.connection.as_ref() == Some(&s) {
            return Vec::new();
        }
        self.connection = Some(s.clone());
        vec![StatusEvent::ConnectionUpdated(s)]
    }
}

/// Reconnect pacing after the vendor's advice: `immediate` attempts at once after a drop,
/// then never faster than `min`, doubling to `max`, jittered.
#[derive(Debug, Clone)]
pub struct Reconnect {
    immediate: u32,
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Reconnect {
    pub fn new(immediate: u32, min: Duration, max: Duration) -> Self {
        Reconnect {
            immediate,
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        if self.failures <= self.immediate {
            return Duration::ZERO;
        }
        let n = (self.failures - self.immediate - 1).min(16);
        let ceiling = self.min.saturating_mul(1 << n).min(self.max);
        let span = ceiling.saturating_sub(self.min).as_millis() as u64;
        self.min + Duration::from_millis(fastrand::u64(0..=span))
    }

    /// A connection proved healthy: the next drop starts with immediate retries again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Settings of the status client.
#[derive(Debug, Clone)]
pub struct StatusSettings {
    pub url: String,
    pub placement: TokenPlacement,
    pub query_param: String,
    pub immediate_retries: u32,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub poll_interval: Duration,
    pub ticket_check_interval: Duration,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub names: BTreeMap<i64, String>,
}

impl StatusSettings {
    pub fn from_config(c: &CloudConfig) -> Self {
        let s = &c.status;
        StatusSettings {
            url: c.status_url(),
            placement: s.token_placement,
            query_param: s.token_query_param.clone(),
            immediate_retries: s.immediate_retries,
            reconnect_min: Duration::from_millis(s.reconnect_min_ms),
            reconnect_max: Duration::from_millis(s.reconnect_max_ms),
            poll_interval: Duration::from_millis(s.poll_interval_ms),
            ticket_check_interval: Duration::from_millis(s.ticket_check_interval_ms),
            idle_timeout: Duration::from_millis(s.idle_timeout_ms),
            connect_timeout: Duration::from_millis(c.connect_timeout_ms),
            names: c.state_names(),
        }
    }
}

/// A plain or TLS byte stream.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Ws = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

/// The driver: one per connector.
pub struct StatusClient {
    client: Client,
    settings: StatusSettings,
    connector_uuid: String,
}

enum Ended {
    Shutdown,
    Lost(String),
}

impl StatusClient {
    pub fn new(
        client: Client,
        settings: StatusSettings,
        connector_uuid: impl Into<String>,
    ) -> Self {
        StatusClient {
            client,
            settings,
            connector_uuid: connector_uuid.into(),
        }
    }

    /// Run until `shutdown`; events go to `events` (bounded: a slow consumer slows this).
    /// Returns when shut down or when the receiver is gone.
    pub async fn run(self, events: mpsc::Sender<StatusEvent>, shutdown: CancellationToken) {
        let s = &self.settings;
        let mut backoff = Reconnect::new(s.immediate_retries, s.reconnect_min, s.reconnect_max);
        // The numeric id is needed for subscriptions and the active ticket.
        let connector_id = loop {
            match self.client.connector_by_uuid(&self.connector_uuid).await {
                Ok(c) => break c.id,
                Err(e) => {
                    let d = backoff.next_delay().max(Duration::from_millis(100));
                    tracing::warn!(
                        "status: cannot look up connector {}: {e}; retrying in {d:?}",
                        self.connector_uuid
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(d) => {}
                    }
                }
            }
        };
        backoff.reset();
        let mut tracker = StatusTracker::new(connector_id, s.names.clone());
        // An already active ticket is looked up at once over REST, not only when the
        // socket's first snapshot (or the next periodic check) says so.
        for ev in self.poll(&mut tracker, false).await {
            if events.send(ev).await.is_err() {
                return;
            }
        }
        let mut down_reported = false;
        loop {
            match self.connect().await {
                Ok(ws) => {
                    tracing::info!(url = %strip_query(&s.url), "status websocket connected");
                    if events.send(StatusEvent::LinkUp).await.is_err() {
                        return;
                    }
                    match self
                        .session(ws, &mut tracker, &events, &shutdown, &mut backoff)
                        .await
                    {
                        Ended::Shutdown => return,
                        Ended::Lost(reason) => {
                            tracing::warn!(
                                "status websocket lost: {reason}; falling back to REST polling"
                            );
                            if events.send(StatusEvent::LinkDown { reason }).await.is_err() {
                                return;
                            }
                            down_reported = true;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("status websocket: cannot connect: {e}");
                    if !down_reported {
                        if events
                            .send(StatusEvent::LinkDown {
                                reason: e.to_string(),
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                        down_reported = true;
                    }
                }
            }
            let delay = backoff.next_delay();
            if delay.is_zero() {
                continue;
            }
            // Poll over REST until it is time to try again.
            let deadline = tokio::time::Instant::now() + delay;
            let mut poll = tokio::time::interval(s.poll_interval);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = poll.tick() => {
                        for ev in self.poll(&mut tracker, true).await {
                            if events.send(ev).await.is_err() { return; }
                        }
                    }
                }
            }
        }
    }

    async fn connect(&self) -> Result<Ws, ApiError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let s = &self.settings;
        let token = self.client.bearer().await?;
        let fail = |m: String| ApiError::Transport {
            op: "status_websocket".into(),
            url: strip_query(&s.url),
            what: "cannot open the websocket",
            message: m,
            timeout: false,
        };
        let url = match s.placement {
            TokenPlacement::Header => s.url.clone(),
            TokenPlacement::Query => {
                let mut enc = String::new();
                super::routes::encode_segment(&token, &mut enc);
                let sep = if s.url.contains('?') { '&' } else { '?' };
                format!("{}{sep}{}={enc}", s.url, s.query_param)
            }
        };
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| fail(e.to_string()))?;
        if s.placement == TokenPlacement::Header {
            let v = format!("Bearer {token}")
                .parse()
                .map_err(|_| fail("the token is not a valid header value".into()))?;
            req.headers_mut().insert("authorization", v);
        }
        let mut cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
        cfg.max_message_size = Some(1 << 20);
        cfg.max_frame_size = Some(1 << 20);
        cfg.max_write_buffer_size = 256 << 10;
        cfg.read_buffer_size = 16 << 10;
        cfg.write_buffer_size = 16 << 10;
        let uri = req.uri().clone();
        let secure = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            other => {
                return Err(fail(format!(
                    "unsupported scheme {other:?}; use ws:// or wss://"
                )));
            }
        };
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let connect = async {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| fail(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let stream: Box<dyn Io> = if secure {
                let tls = crate::tls::client_config().map_err(fail)?;
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| fail(format!("`{host}` is not a valid TLS server name: {e}")))?;
                let s = tokio_rustls::TlsConnector::from(tls)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| fail(format!("TLS: {e}")))?;
                Box::new(s)
            } else {
                Box::new(tcp)
            };
            tokio_tungstenite::client_async_with_config(req, stream, Some(cfg))
                .await
                .map(|(ws, _)| ws)
                .map_err(|e| fail(e.to_string()))
        };
        match tokio::time::timeout(s.connect_timeout, connect).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::Transport {
                op: "status_websocket".into(),
                url: strip_query(&s.url),
                what: "timed out opening the websocket",
                message: format!("no answer within {:?}", s.connect_timeout),
                timeout: true,
            }),
        }
    }

    async fn session(
        &self,
        mut ws: Ws,
        tracker: &mut StatusTracker,
        events: &mpsc::Sender<StatusEvent>,
        shutdown: &CancellationToken,
        backoff: &mut Reconnect,
    ) -> Ended {
        use futures_util::{SinkExt as _, StreamExt as _};
        use tokio_tungstenite::tungstenite::Message;
        let s = &self.settings;
        let mut subscribed: BTreeSet<Subscription> = BTreeSet::new();
        let mut check = tokio::time::interval(s.ticket_check_interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        let mut last_rx = tokio::time::Instant::now();
        let connected_at = last_rx;
        let mut healthy = false;
        loop {
            // Bring subscriptions in line with what the tracker wants.
            let wanted = tracker.wanted();
            let mut frames: Vec<Value> = subscribed
                .difference(&wanted)
                .map(Subscription::unsubscribe)
                .collect();
            frames.extend(wanted.difference(&subscribed).map(Subscription::subscribe));
            if !frames.is_empty() {
                for f in frames {
                    if let Err(e) = ws.feed(Message::text(f.to_string())).await {
                        return Ended::Lost(format!("sending a subscription: {e}"));
                    }
                }
                if let Err(e) = ws.flush().await {
                    return Ended::Lost(format!("sending a subscription: {e}"));
                }
                tracing::debug!(subscriptions = ?wanted, "status: subscribed");
                subscribed = wanted;
            }
            let idle = last_rx + s.idle_timeout;
            let evs = tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = ws.close(None).await;
                    return Ended::Shutdown;
                }
                _ = tokio::time::sleep_until(idle) => {
                    return Ended::Lost(format!("nothing received for {:?}", s.idle_timeout));
                }
                _ = check.tick() => self.poll(tracker, false).await,
                msg = ws.next() => {
                    last_rx = tokio::time::Instant::now();
                    match msg {
                        Some(Ok(Message::Text(t))) => {
                            // A server that answers and then drops every socket must not
                            // earn immediate retries forever: the pacing starts over only
                            // once a connection has lasted.
                            if !healthy && connected_at.elapsed() >= s.reconnect_min {
                                healthy = true;
                                backoff.reset();
                            }
                            tracker.apply_text(t.as_str())
                        }
                        Some(Ok(Message::Close(frame))) => {
                            let why = frame.map(|f| format!("closed by the server ({} {})", u16::from(f.code), f.reason)).unwrap_or_else(|| "closed by the server".into());
                            return Ended::Lost(why);
                        }
                        Some(Ok(_)) => Vec::new(),
                        Some(Err(e)) => return Ended::Lost(e.to_string()),
                        None => return Ended::Lost("connection closed".into()),
                    }
                }
            };
            for ev in evs {
                if events.send(ev).await.is_err() {
                    return Ended::Shutdown;
                }
            }
        }
    }

    /// One REST poll. `full` (socket down): connector and ticket; otherwise only a check for
    /// a new active ticket.
    async fn poll(&self, tracker: &mut StatusTracker, full: bool) -> Vec<StatusEvent> {
        let mut ev = Vec::new();
        let id = tracker.connector_id;
        if full {
            match self.client.connector(id).await {
                Ok(c) => ev.extend(tracker.apply_connector_rest(&c)),
                Err(e) => tracing::debug!("status poll: connector: {e}"),
            }
        }
        match self.client.active_ticket(id).await {
            Ok(Some(t)) => {
                if full || tracker.ticket_id() != Some(t.id) {
                    ev.extend(tracker.apply_ticket_rest(&t));
                }
            }
            Ok(None) => {
                if let Some(tid) = tracker.ticket_id() {
                    let final_state = match self.client.historical_ticket(tid).await {
                        Ok(h) => Some(h.state),
                        Err(_) => None,
                    };
                    ev.extend(tracker.apply_no_ticket(final_state));
                }
            }
            Err(e) => tracing::debug!("status poll: active ticket: {e}"),
        }
        ev
    }
}

/// A URL without its query (which may hold a token): safe to log.
fn strip_query(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> StatusTracker {
        StatusTracker::new(7, CloudConfig::default().state_names())
    }

    fn frame(action: &str, message: Value) -> String {
        json!({ "action": action, "message": message }).to_string()
    }

    #[test]
    fn integer_flags_of_the_vendor_example_are_read() {
        // The reference's example sends `script_ui_available: 1`; such updates were dropped.
        let mut t = tracker();
        t.apply_text(&frame(
            "subscribeToTicket",
            json!({"ticket_id": 3, "state": 2, "connection_uuid": "c-1"}),
        ));
        let ev = t.apply_text(&frame(
            "subscribeToConnection",
            json!({"connection_uuid": "c-1", "script_ui_available": 1, "is_autonomous": 0}),
        ));
        match &ev[..] {
            [StatusEvent::ConnectionUpdated(c)] => {
                assert_eq!(c.script_ui_available, Some(true));
                assert_eq!(c.is_autonomous, Some(false));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ticket_life_becomes_events_and_subscriptions() {
        let mut t = tracker();
        assert_eq!(t.wanted().len(), 1);
        let ev = t.apply_text(&frame(
            "subscribeToConnector",
            json!({"connector_id": 7, "voltage": 12.6, "active_ticket_id": 3}),
        ));
        assert!(matches!(
            ev[0],
            StatusEvent::ConnectorChanged { before: None, .. }
        ));
        assert!(t.wanted().contains(&Subscription::Ticket(3)));
        // Same snapshot again: nothing.
        assert!(
            t.apply_text(&frame(
                "subscribeToConnector",
                json!({"connector_id": 7, "voltage": 12.6, "active_ticket_id": 3})
            ))
            .is_empty()
        );
        let ev = t.apply_text(&frame(
            "subscribeToTicket",
            json!({"ticket_id": 3, "state": 1}),
        ));
        assert_eq!(
            ev,
            vec![StatusEvent::TicketStateChanged {
                ticket_id: 3,
                from: None,
                to: TicketState::Pending
            }]
        );
        let ev = t.apply_text(&frame(
            "subscribeToTicket",
            json!({"ticket_id": "3", "state": 2, "connection_uuid": "c-1", "vin": "WVWZZZ1KZAW000042"}),
        ));
        assert_eq!(
            ev,
            vec![
                StatusEvent::TicketStateChanged {
                    ticket_id: 3,
                    from: Some(TicketState::Pending),
                    to: TicketState::InProgress
                },
                StatusEvent::ConnectionStarted {
                    ticket_id: 3,
                    connection_uuid: "c-1".into(),
                    vin: Some("WVWZZZ1KZAW000042".into()),
                },
            ]
        );
        assert!(t.wanted().contains(&Subscription::Connection("c-1".into())));
        let ev = t.apply_text(&frame(
            "subscribeToConnection",
            json!({"connection_uuid": "c-1", "script_ui_available": true}),
        ));
        assert!(matches!(ev[0], StatusEvent::ConnectionUpdated(_)));
        let ev = t.apply_text(&frame(
            "subscribeToTicket",
            json!({"ticket_id": 3, "state": 7, "connection_uuid": null}),
        ));
        assert_eq!(
            ev,
            vec![
                StatusEvent::TicketStateChanged {
                    ticket_id: 3,
                    from: Some(TicketState::InProgress),
                    to: TicketState::Closed
                },
                StatusEvent::ConnectionEnded {
                    ticket_id: 3,
                    connection_uuid: "c-1".into()
                },
            ]
        );
        assert_eq!(
            t.wanted().len(),
            1,
            "finished ticket: back to the connector only"
        );
    }

    #[test]
    fn unknown_and_malformed_input_is_never_fatal() {
        let mut t = tracker();
        assert!(t.apply_text("not json").is_empty());
        assert!(t.apply_text(&frame("somethingNew", json!({}))).is_empty());
        assert!(
            t.apply_text(&frame("error", json!({"detail": "x"})))
                .is_empty()
        );
        assert!(
            t.apply_text(&frame("subscribeToTicket", json!("string")))
                .is_empty()
        );
        assert!(
            t.apply_text(&frame("subscribeToTicket", json!({"state": 1})))
                .is_empty()
        );
        assert!(t.apply_text("{\"action\": 5}").is_empty());
        let ev = t.apply_text(&frame(
            "subscribeToTicket",
            json!({"ticket_id": 9, "state": 42}),
        ));
        assert_eq!(
            ev,
            vec![StatusEvent::TicketStateChanged {
                ticket_id: 9,
                from: None,
                to: TicketState::Unknown(42)
            }]
        );
        assert!(
            t.wanted().contains(&Subscription::Ticket(9)),
            "an unknown state does not stall tracking"
        );
    }

    #[test]
    fn rest_fallback_merges_without_spurious_events() {
        let mut t = tracker();
        t.apply_text(&frame(
            "subscribeToConnector",
            json!({"connector_id": 7, "voltage": 12.6, "is_online": true}),
        ));
        let c = Connector {
            id: 7,
            is_online: true,
            ..Connector::default()
        };
        assert!(
            t.apply_connector_rest(&c).is_empty(),
            "REST lacks voltage: not a change"
        );
        let ticket = Ticket {
            id: 4,
            state: 2,
            ..Ticket::default()
        };
        let ev = t.apply_ticket_rest(&ticket);
        assert_eq!(ev.len(), 1);
        t.apply_text(&frame(
            "subscribeToTicket",
            json!({"ticket_id": 4, "state": 2, "connection_uuid": "c"}),
        ));
        assert!(
            t.apply_ticket_rest(&ticket).is_empty(),
            "REST keeps the connection"
        );
        let ev = t.apply_no_ticket(Some(7));
        assert_eq!(
            ev,
            vec![
                StatusEvent::ConnectionEnded {
                    ticket_id: 4,
                    connection_uuid: "c".into()
                },
                StatusEvent::TicketStateChanged {
                    ticket_id: 4,
                    from: Some(TicketState::InProgress),
                    to: TicketState::Closed
                },
            ]
        );
        t.apply_ticket_rest(&Ticket {
            id: 5,
            state: 1,
            ..Ticket::default()
        });
        assert_eq!(
            t.apply_no_ticket(None),
            vec![StatusEvent::TicketGone { ticket_id: 5 }]
        );
    }

    proptest::proptest! {
        /// Arbitrary text and arbitrary frames never panic and never track a ticket without
        /// a subscription for it.
        #[test]
        fn arbitrary_frames_never_panic(text in ".{0,200}", action in proptest::sample::select(vec![
            "subscribeToConnector", "subscribeToTicket", "subscribeToConnection", "error", "x"]),
            id in proptest::option::of(-3i64..12), state in proptest::option::of(-2i64..10),
            conn in proptest::option::of("[a-c]{0,2}")) {
            let mut t = tracker();
            t.apply_text(&text);
            let msg = json!({"connector_id": id, "ticket_id": id, "state": state, "connection_uuid": conn,
                "active_ticket_id": id, "voltage": text});
            for _ in 0..3 {
                t.apply_text(&frame(action, msg.clone()));
            }
            if let Some(tid) = t.ticket_id() {
                proptest::prop_assert!(t.wanted().contains(&Subscription::Ticket(tid)));
            }
        }
    }

    #[test]
    fn reconnect_follows_the_vendor_advice() {
        let min = Duration::from_secs(5);
        let mut r = Reconnect::new(3, min, Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(r.next_delay(), Duration::ZERO);
        }
        for _ in 0..50 {
            let d = r.next_delay();
            assert!(d >= min && d <= Duration::from_secs(60), "{d:?}");
        }
        r.reset();
        assert_eq!(r.next_delay(), Duration::ZERO);
    }
}
