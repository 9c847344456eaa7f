//! The Customer API client: one typed function per operation over one generic call path.
//!
//! Owns: building URLs from the route table, client-side validation before sending, bearer
//! tokens (log in when there is none or it is within `refresh_margin_s` of `exp`; on a 401
//! log in again once and repeat), request timeouts, jittered exponential retries of
//! idempotent requests after a 5xx or a transport failure, problem+json errors, and walking
//! paginated lists to the end.
//!
//! Does not own: the status websocket (`status`), the command line (`cli`).

use super::config::{BearerToken, CloudConfig};
use super::error::{ApiError, Problem, invalid};
use super::model::*;
use super::routes::RouteTable;
use super::spec::{Method, Op};
use super::token::{Credentials, Session, TokenStore, now_unix};
use super::validate::{ApiRequest, MAX_LIMIT, validate};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Settings of a [`Client`], usually from [`CloudConfig`].
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub base_url: String,
    pub login_base_url: Option<String>,
    pub routes: RouteTable,
    pub bearer: BearerToken,
    pub refresh_margin_s: u64,
    pub default_token_lifetime_s: u64,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub retries: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl ClientSettings {
    /// Settings from the configuration section.
    pub fn from_config(c: &CloudConfig) -> Result<Self, String> {
        Ok(ClientSettings {
            base_url: c.base_url.clone(),
            login_base_url: c.login_base_url.clone(),
            routes: RouteTable::with_overrides(&c.routes)?,
            bearer: c.bearer,
            refresh_margin_s: c.refresh_margin_s,
            default_token_lifetime_s: c.default_token_lifetime_s,
            request_timeout: Duration::from_millis(c.request_timeout_ms),
            connect_timeout: Duration::from_millis(c.connect_timeout_ms),
            retries: c.retries,
            retry_base: Duration::from_millis(c.retry_base_ms),
            retry_max: Duration::from_millis(c.retry_max_ms),
        })
    }

    /// Defaults for a base URL.
    pub fn for_base_url(base_url: &str) -> Self {
        let c = CloudConfig {
            base_url: base_url.to_string(),
            ..CloudConfig::default()
        };
        // Defaults have no route overrides, so this cannot fail.
        Self::from_config(&c).unwrap_or_else(|_| ClientSettings {
            base_url: base_url.to_string(),
            login_base_url: None,
            routes: RouteTable::default(),
            bearer: BearerToken::Access,
            refresh_margin_s: 120,
            default_token_lifetime_s: 3600,
            request_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            retries: 2,
            retry_base: Duration::from_millis(250),
            retry_max: Duration::from_secs(4),
        })
    }
}

struct AuthState {
    session: Option<Session>,
    /// Logins performed (for status and tests).
    logins: u64,
}

struct Inner {
    http: reqwest::Client,
    settings: ClientSettings,
    credentials: Option<Credentials>,
    store: Option<TokenStore>,
    auth: tokio::sync::Mutex<AuthState>,
}

/// A Customer API client. Cheap to clone; clones share tokens.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.settings.base_url)
            .field("credentials", &self.inner.credentials)
            .finish_non_exhaustive()
    }
}

/// Outcome of a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginInfo {
    pub subject: String,
    pub expires_at: u64,
}

impl Client {
    /// A client. `credentials` allow (re-)login; `state_dir` enables the token store.
    pub fn new(
        settings: ClientSettings,
        credentials: Option<Credentials>,
        state_dir: Option<&Path>,
    ) -> Result<Client, ApiError> {
        // The pincode and tokens travel on these: plaintext only to loopback.
        for u in std::iter::once(&settings.base_url).chain(settings.login_base_url.iter()) {
            crate::tls::check_scheme(u).map_err(ApiError::Auth)?;
        }
        // No redirects: a login (pincode) is never sent on to another host.
        let http = crate::tls::http_client_builder()
            .map_err(ApiError::Auth)?
            .timeout(settings.request_timeout)
            .connect_timeout(settings.connect_timeout)
            .user_agent(concat!("obdgw/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::Transport {
                op: "client".into(),
                url: settings.base_url.clone(),
                what: "cannot set up HTTP for",
                message: e.to_string(),
                timeout: false,
            })?;
        let store = state_dir.map(TokenStore::in_dir);
        let mut session = None;
        if let Some(s) = &store {
            match s.load() {
                Ok(Some(saved))
                    if saved.base_url == settings.base_url
                        && credentials
                            .as_ref()
                            .is_none_or(|c| c.subject() == saved.subject) =>
                {
                    session = Some(saved)
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("{e}"),
            }
        }
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                settings,
                credentials,
                store,
                auth: tokio::sync::Mutex::new(AuthState { session, logins: 0 }),
            }),
        })
    }

    /// A client from the configuration: credentials from `connector_uuid` (or the deprecated
    /// `connector_id`) and the resolved pincode; tokens stored in `state_dir`.
    pub fn from_config(c: &CloudConfig, state_dir: Option<&Path>) -> Result<Client, ApiError> {
        let settings = ClientSettings::from_config(c).map_err(ApiError::Auth)?;
        let pincode = c.resolve_pincode().map_err(ApiError::Auth)?;
        let creds = match (pincode, &c.connector_uuid, c.connector_id) {
            (Some(pincode), Some(uuid), _) => Some(Credentials::ConnectorUuid {
                uuid: uuid.clone(),
                pincode,
            }),
            (Some(pincode), None, Some(id)) => Some(Credentials::ConnectorId { id, pincode }),
            _ => None,
        };
        Client::new(settings, creds, state_dir)
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.inner.settings
    }

    /// Number of logins this client performed.
    pub async fn login_count(&self) -> u64 {
        self.inner.auth.lock().await.logins
    }

    /// The current session, if any (tokens inside: never log it).
    pub async fn session(&self) -> Option<Session> {
        self.inner.auth.lock().await.session.clone()
    }

    /// Log in with the configured credentials now.
    pub async fn login(&self) -> Result<LoginInfo, ApiError> {
        let creds = self.inner.credentials.clone().ok_or_else(|| {
            ApiError::Auth(
                "no credentials: set cloud.connector_uuid and the pincode (cloud.pincode_file or the systemd credential `pincode`)".into(),
            )
        })?;
        let mut auth = self.inner.auth.lock().await;
        self.login_locked(&mut auth, &creds).await
    }

    /// Log in with explicit credentials (e.g. an OTP), replacing the session.
    pub async fn login_with(&self, creds: &Credentials) -> Result<LoginInfo, ApiError> {
        let mut auth = self.inner.auth.lock().await;
        self.login_locked(&mut auth, creds).await
    }

    async fn login_locked(
        &self,
        auth: &mut AuthState,
        creds: &Credentials,
    ) -> Result<LoginInfo, ApiError> {
        let (op, body) = match creds {
            Credentials::ConnectorUuid { uuid, pincode } => (
                Op::AuthLoginUuid,
                json!({ "connector_uuid": uuid, "pincode": pincode.expose() }),
            ),
            Credentials::ConnectorId { id, pincode } => (
                Op::AuthLoginPincode,
                json!({ "connector_id": id.to_string(), "pincode": pincode.expose() }),
            ),
            Credentials::Otp(otp) => (Op::AuthLoginOtp, json!({ "otp": otp.expose() })),
        };
        // Boxed: `send` may call `bearer`, which may call this.
        let value = Box::pin(self.send(op, ApiRequest::new().body(body), None))
            .await?
            .unwrap_or(Value::Null);
        let tokens: Tokens = decode(op, value)?;
        if tokens.access_token.is_empty() && tokens.id_token.is_empty() {
            return Err(ApiError::Decode {
                op: op.spec().key(),
                message: "the login answer holds no token".into(),
            });
        }
        let s = &self.inner.settings;
        let session = Session::from_tokens(
            creds.subject(),
            s.base_url.clone(),
            tokens,
            s.bearer,
            s.default_token_lifetime_s,
        );
        let info = LoginInfo {
            subject: session.subject.clone(),
            expires_at: session.expires_at,
        };
        if let Some(store) = &self.inner.store
            && let Err(e) = store.save(&session)
        {
            tracing::warn!("{e}");
        }
        tracing::info!(subject = %info.subject, expires_at = info.expires_at, "logged in to the Customer API");
        auth.session = Some(session);
        auth.logins += 1;
        Ok(info)
    }

    /// A bearer token valid for at least the refresh margin, logging in when needed.
    pub async fn bearer(&self) -> Result<String, ApiError> {
        let mut auth = self.inner.auth.lock().await;
        let s = &self.inner.settings;
        if let Some(sess) = &auth.session
            && sess.fresh(now_unix(), s.refresh_margin_s)
        {
            return Ok(sess.bearer(s.bearer).to_string());
        }
        match self.inner.credentials.clone() {
            Some(c) if c.reusable() || auth.session.is_none() => {
                self.login_locked(&mut auth, &c).await?;
            }
            _ => {
                if let Some(sess) = &auth.session
                    && sess.fresh(now_unix(), 0)
                {
                    // Near expiry but nothing to log in with: use it while it lasts.
                    return Ok(sess.bearer(s.bearer).to_string());
                }
                return Err(ApiError::Auth(
                    "the token expired and no credentials are configured to log in again; run `obdgw login` or set cloud.connector_uuid and the pincode".into(),
                ));
            }
        }
        auth.session
            .as_ref()
            .map(|sess| sess.bearer(s.bearer).to_string())
            .ok_or_else(|| ApiError::Auth("login gave no session".into()))
    }

    /// Forget the session when it still holds `rejected` (a 401 answered it).
    async fn invalidate(&self, rejected: &str) {
        let mut auth = self.inner.auth.lock().await;
        let which = self.inner.settings.bearer;
        if auth
            .session
            .as_ref()
            .is_some_and(|s| s.bearer(which) == rejected)
        {
            auth.session = None;
        }
    }

    /// Keep the session fresh until `shutdown`: log in again `refresh_margin_s` before the
    /// token's `exp`, so long-lived users (the status websocket) always find a valid token.
    /// Failures are logged and retried every `retry_max`.
    pub async fn keep_fresh(&self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            let wait = match self.expires_at().await {
                Some(exp) => refresh_wait(exp, now_unix(), self.inner.settings.refresh_margin_s),
                None => 0,
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(wait)) => {}
            }
            if let Err(e) = self.bearer().await {
                tracing::warn!("refreshing the Customer API token: {e}");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(self.inner.settings.retry_max.max(Duration::from_secs(1))) => {}
                }
            }
        }
    }

    /// The expiry of the current session.
    pub async fn expires_at(&self) -> Option<u64> {
        self.inner
            .auth
            .lock()
            .await
            .session
            .as_ref()
            .map(|s| s.expires_at)
    }

    /// Call any operation with a generic request; `Ok(None)` for an empty answer.
    /// Validates first, then sends with auth, retries and re-login.
    pub async fn call(&self, op: Op, req: ApiRequest) -> Result<Option<Value>, ApiError> {
        let auth = op.spec().auth;
        self.send(op, req, auth.then_some(())).await
    }

    async fn send(
        &self,
        op: Op,
        req: ApiRequest,
        auth: Option<()>,
    ) -> Result<Option<Value>, ApiError> {
        let spec = op.spec();
        let key = spec.key();
        validate(op, &req).map_err(|v| invalid(&key, v))?;
        let s = &self.inner.settings;
        let base = match (op, &s.login_base_url) {
            (Op::AuthLoginOtp | Op::AuthLoginPincode | Op::AuthLoginUuid, Some(b)) => b,
            _ => &s.base_url,
        };
        let path = s.routes.render(op, &req.path)?;
        let url = format!("{}{}", base.trim_end_matches('/'), path);
        let method = match spec.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut attempt: u32 = 0;
        let mut relogged = false;
        loop {
            let token = match auth {
                Some(()) => Some(self.bearer().await?),
                None => None,
            };
            let mut rb = self.inner.http.request(method.clone(), &url);
            if !req.query.is_empty() {
                rb = rb.query(&req.query);
            }
            if let Some(b) = &req.body {
                rb = rb.json(b);
            }
            if let Some(t) = &token {
                rb = rb.bearer_auth(t);
            }
            rb = rb.header(
                reqwest::header::ACCEPT,
                "application/json, application/problem+json",
            );
            let started = std::time::Instant::now();
            let outcome = match rb.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    match resp.bytes().await {
                        Ok(body) => Ok((status, body)),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            match outcome {
                Err(e) => {
                    let timeout = e.is_timeout();
                    tracing::debug!(op = %key, attempt, timeout, "request failed: {e}");
                    if spec.idempotent() && attempt < s.retries {
                        self.backoff(attempt).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(ApiError::Transport {
                        op: key,
                        url,
                        what: if timeout {
                            "timed out on"
                        } else {
                            "cannot complete request to"
                        },
                        message: error_chain(&e),
                        timeout,
                    });
                }
                Ok((status, body)) => {
                    tracing::debug!(op = %key, method = spec.method.as_str(), path = %s.routes.template(op), status, elapsed_ms = started.elapsed().as_millis() as u64, "api request");
                    if (200..300).contains(&status) {
                        if body.iter().all(u8::is_ascii_whitespace) {
                            return Ok(None);
                        }
                        return serde_json::from_slice(&body).map(Some).map_err(|e| {
                            ApiError::Decode {
                                op: key,
                                message: format!("the body is not JSON: {e}"),
                            }
                        });
                    }
                    if status == 401
                        && let Some(t) = &token
                        && !relogged
                        && self
                            .inner
                            .credentials
                            .as_ref()
                            .is_some_and(Credentials::reusable)
                    {
                        tracing::info!(op = %key, "the service rejected the token; logging in again");
                        relogged = true;
                        self.invalidate(t).await;
                        continue;
                    }
                    if status >= 500 && spec.idempotent() && attempt < s.retries {
                        tracing::debug!(op = %key, status, attempt, "retrying");
                        self.backoff(attempt).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(ApiError::Status {
                        op: key,
                        status,
                        problem: Problem::from_body(status, &body),
                    });
                }
            }
        }
    }

    async fn backoff(&self, attempt: u32) {
        let s = &self.inner.settings;
        tokio::time::sleep(retry_delay(s.retry_base, s.retry_max, attempt)).await;
    }

    async fn get<T: DeserializeOwned>(&self, op: Op, req: ApiRequest) -> Result<T, ApiError> {
        let v = self.call(op, req).await?.unwrap_or(Value::Null);
        decode(op, v)
    }

    async fn nothing(&self, op: Op, req: ApiRequest) -> Result<(), ApiError> {
        self.call(op, req).await.map(|_| ())
    }

    // ---- connectors ----

    pub async fn connectors(&self, page: Page) -> Result<List<Connector>, ApiError> {
        self.get(Op::ConnectorsList, paged(ApiRequest::new(), page))
            .await
    }

    pub async fn connector(&self, connector_id: i64) -> Result<Connector, ApiError> {
        self.get(
            Op::ConnectorsGet,
            ApiRequest::new().path("connectorId", connector_id),
        )
        .await
    }

    pub async fn connector_by_uuid(&self, uuid: &str) -> Result<Connector, ApiError> {
        self.get(
            Op::ConnectorsGetByUuid,
            ApiRequest::new().path("connectorUUID", uuid),
        )
        .await
    }

    pub async fn dismiss_call_for_attention(&self, uuid: &str) -> Result<(), ApiError> {
        self.nothing(
            Op::ConnectorsDismissAttention,
            ApiRequest::new().path("connectorUUID", uuid),
        )
        .await
    }

    /// The active ticket; `Ok(None)` when the connector has none. The reference does not
    /// say how "none" looks, so a 404, a 200 with `null` and an empty answer all mean none.
    /// (The reference types this `connectorId` as a string; it is the connector's id.)
    pub async fn active_ticket(&self, connector_id: i64) -> Result<Option<Ticket>, ApiError> {
        let op = Op::ConnectorsActiveTicket;
        match self
            .call(op, ApiRequest::new().path("connectorId", connector_id))
            .await
        {
            Ok(None | Some(Value::Null)) => Ok(None),
            Ok(Some(v)) => decode(op, v).map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    // ---- products ----

    pub async fn product_groups(
        &self,
        model_id: i64,
        variant_id: i64,
        page: Page,
    ) -> Result<List<ProductGroup>, ApiError> {
        self.get(
            Op::ProductsGroups,
            paged(vehicle(model_id, variant_id), page),
        )
        .await
    }

    pub async fn product_bundles(
        &self,
        model_id: i64,
        variant_id: i64,
        product_group_id: Option<i64>,
        page: Page,
    ) -> Result<List<ProductBundle>, ApiError> {
        let req = vehicle(model_id, variant_id).query_opt("product_group_id", product_group_id);
        self.get(Op::ProductsBundles, paged(req, page)).await
    }

    /// Products for a vehicle, by group or by bundle (not both), optionally by favorite flag.
    pub async fn products(
        &self,
        model_id: i64,
        variant_id: i64,
        product_group_id: Option<i64>,
        product_bundle_id: Option<&str>,
        is_favorite: Option<bool>,
        page: Page,
    ) -> Result<List<Product>, ApiError> {
        let req = vehicle(model_id, variant_id)
            .query_opt("product_group_id", product_group_id)
            .query_opt("product_bundle_id", product_bundle_id)
            .query_opt("is_favorite", is_favorite);
        self.get(Op::ProductsList, paged(req, page)).await
    }

    /// Every product for a vehicle, by group or bundle, whatever its favorite flag: the
    /// products list answers favorites only unless asked otherwise (the reference's default),
    /// so this walks the favorites and then the others, each to its last page.
    pub async fn all_products(
        &self,
        model_id: i64,
        variant_id: i64,
        product_group_id: Option<i64>,
        product_bundle_id: Option<&str>,
    ) -> Result<Vec<Product>, ApiError> {
        let mut out: Vec<Product> = Vec::new();
        for favorite in [true, false] {
            let page = collect_all(MAX_LIMIT, |p| {
                self.products(
                    model_id,
                    variant_id,
                    product_group_id,
                    product_bundle_id,
                    Some(favorite),
                    p,
                )
            })
            .await?;
            for p in page {
                if !out.iter().any(|o| o.id == p.id) {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }

    /// Flag a product as favorite. The reference's body is the whole Product (as listed by
    /// [`Client::products`]) and its answer is `null`.
    pub async fn add_favorite(&self, product: &Product) -> Result<(), ApiError> {
        let mut body = to_value(product);
        if let Value::Object(m) = &mut body {
            // Fields the product lacks (null, or an empty string where the model has no
            // Option) are left out rather than sent empty.
            m.retain(|_, v| !v.is_null() && v.as_str() != Some(""));
        }
        self.nothing(Op::ProductsAddFavorite, ApiRequest::new().body(body))
            .await
    }

    /// Remove a product from the favorites (the reference types this `id` as a string).
    pub async fn remove_favorite(&self, product_id: &str) -> Result<(), ApiError> {
        self.nothing(
            Op::ProductsRemoveFavorite,
            ApiRequest::new().path("id", product_id),
        )
        .await
    }

    pub async fn prerequisites(
        &self,
        model_id: i64,
        variant_id: i64,
        product_ids: &[i64],
        page: Page,
    ) -> Result<List<Prerequisite>, ApiError> {
        let ids: Vec<String> = product_ids.iter().map(i64::to_string).collect();
        let req = vehicle(model_id, variant_id).query("product_id", ids.join(","));
        self.get(Op::ProductsPrerequisites, paged(req, page)).await
    }

    // ---- tickets ----

    pub async fn create_ticket(&self, t: &NewTicket) -> Result<Ticket, ApiError> {
        self.get(Op::TicketsCreate, ApiRequest::new().body(to_value(t)))
            .await
    }

    pub async fn csat(
        &self,
        ticket_id: i64,
        score: f64,
        comment: Option<&str>,
    ) -> Result<(), ApiError> {
        let mut body = json!({ "score": score });
        if let Some(c) = comment {
            body["comment"] = json!(c);
        }
        self.nothing(
            Op::TicketsCsat,
            ApiRequest::new().path("ticketId", ticket_id).body(body),
        )
        .await
    }

    pub async fn ticket_notes(&self, ticket_id: i64, page: Page) -> Result<List<Note>, ApiError> {
        self.get(
            Op::TicketsNotes,
            paged(ApiRequest::new().path("ticketId", ticket_id), page),
        )
        .await
    }

    pub async fn historical_tickets(
        &self,
        vin: Option<&str>,
        connector_id: Option<i64>,
        page: Page,
    ) -> Result<List<HistoricalTicket>, ApiError> {
        let req = ApiRequest::new()
            .query_opt("vin", vin)
            .query_opt("connector_id", connector_id);
        self.get(Op::TicketsHistorical, paged(req, page)).await
    }

    pub async fn historical_ticket(&self, id: i64) -> Result<HistoricalTicket, ApiError> {
        self.get(
            Op::TicketsHistoricalGet,
            ApiRequest::new().path("historicalTicketId", id),
        )
        .await
    }

    pub async fn prepared_tickets(
        &self,
        vin: &str,
        page: Page,
    ) -> Result<List<PreparedTicket>, ApiError> {
        self.get(
            Op::TicketsPrepared,
            paged(ApiRequest::new().query("vin", vin), page),
        )
        .await
    }

    pub async fn totals(&self, t: &TotalsRequest) -> Result<Totals, ApiError> {
        self.get(Op::TicketsTotals, ApiRequest::new().body(to_value(t)))
            .await
    }

    // ---- vehicles ----

    pub async fn serviced_vehicles(&self, page: Page) -> Result<List<ServicedVehicle>, ApiError> {
        self.get(Op::VehiclesServiced, paged(ApiRequest::new(), page))
            .await
    }

    pub async fn lookup_vin(&self, vin: &str) -> Result<VinLookup, ApiError> {
        self.get(Op::VehiclesLookup, ApiRequest::new().query("vin", vin))
            .await
    }

    pub async fn makes(&self, page: Page) -> Result<List<Make>, ApiError> {
        self.get(Op::VehiclesMakes, paged(ApiRequest::new(), page))
            .await
    }

    pub async fn model_groups(
        &self,
        make_id: i64,
        page: Page,
    ) -> Result<List<ModelGroup>, ApiError> {
        self.get(
            Op::VehiclesModelGroups,
            paged(ApiRequest::new().query("vehicle_make_id", make_id), page),
        )
        .await
    }

    pub async fn model_group(&self, id: i64) -> Result<ModelGroup, ApiError> {
        self.get(
            Op::VehiclesModelGroup,
            ApiRequest::new().path("modelGroupId", id),
        )
        .await
    }

    pub async fn models(&self, model_group_id: i64, page: Page) -> Result<List<Model>, ApiError> {
        self.get(
            Op::VehiclesModels,
            paged(
                ApiRequest::new().query("vehicle_model_group_id", model_group_id),
                page,
            ),
        )
        .await
    }

    pub async fn model(&self, id: i64) -> Result<Model, ApiError> {
        self.get(Op::VehiclesModel, ApiRequest::new().path("modelId", id))
            .await
    }

    pub async fn variants(&self, model_id: i64, page: Page) -> Result<List<Variant>, ApiError> {
        self.get(
            Op::VehiclesVariants,
            paged(ApiRequest::new().query("vehicle_model_id", model_id), page),
        )
        .await
    }

    pub async fn variant(&self, id: i64) -> Result<Variant, ApiError> {
        self.get(
            Op::VehiclesVariant,
            ApiRequest::new().path("modelVariantId", id),
        )
        .await
    }

    // ---- account ----

    pub async fn user_info(&self) -> Result<UserInfo, ApiError> {
        self.get(Op::AccountUserInfo, ApiRequest::new()).await
    }

    pub async fn wallet(&self) -> Result<Wallet, ApiError> {
        self.get(Op::AccountWallet, ApiRequest::new()).await
    }

    pub async fn customer(&self) -> Result<Customer, ApiError> {
        self.get(Op::AccountCustomer, ApiRequest::new()).await
    }

    pub async fn edit_customer(&self, edit: &CustomerEdit) -> Result<Customer, ApiError> {
        self.get(
            Op::AccountCustomerEdit,
            ApiRequest::new().body(to_value(edit)),
        )
        .await
    }

    pub async fn branding(&self) -> Result<Branding, ApiError> {
        self.get(Op::AccountBranding, ApiRequest::new()).await
    }

    pub async fn forgot_password(&self, email: &str) -> Result<ForgotPassword, ApiError> {
        self.get(
            Op::AccountForgotPassword,
            ApiRequest::new().body(json!({ "email_address": email })),
        )
        .await
    }

    // ---- employees ----

    pub async fn employees(&self, page: Page) -> Result<List<Employee>, ApiError> {
        self.get(Op::EmployeesList, paged(ApiRequest::new(), page))
            .await
    }

    pub async fn add_employee(&self, e: &EmployeeInput) -> Result<Employee, ApiError> {
        let mut body = to_value(e);
        if let Value::Object(m) = &mut body {
            m.remove("enabled");
        }
        self.get(Op::EmployeesAdd, ApiRequest::new().body(body))
            .await
    }

    /// One employee; `"me"` for the logged-in one.
    pub async fn employee(&self, id: &str) -> Result<Employee, ApiError> {
        self.get(Op::EmployeesGet, ApiRequest::new().path("employeeId", id))
            .await
    }

    pub async fn edit_employee(&self, id: &str, e: &EmployeeInput) -> Result<Employee, ApiError> {
        self.get(
            Op::EmployeesEdit,
            ApiRequest::new().path("employeeId", id).body(to_value(e)),
        )
        .await
    }

    // ---- logins (raw: they do not change this client's session) ----

    /// Deprecated connector ID + pincode login; answers the tokens without storing them.
    pub async fn login_pincode(
        &self,
        connector_id: i64,
        pincode: &crate::config::Secret,
    ) -> Result<Tokens, ApiError> {
        let body = json!({ "connector_id": connector_id.to_string(), "pincode": pincode.expose() });
        let v = self
            .call(Op::AuthLoginPincode, ApiRequest::new().body(body))
            .await?;
        decode(Op::AuthLoginPincode, v.unwrap_or(Value::Null))
    }

    /// Connector UUID + pincode login; answers the tokens without storing them.
    pub async fn login_uuid(
        &self,
        uuid: &str,
        pincode: &crate::config::Secret,
    ) -> Result<Tokens, ApiError> {
        let body = json!({ "connector_uuid": uuid, "pincode": pincode.expose() });
        let v = self
            .call(Op::AuthLoginUuid, ApiRequest::new().body(body))
            .await?;
        decode(Op::AuthLoginUuid, v.unwrap_or(Value::Null))
    }

    /// OTP login; answers the tokens without storing them.
    pub async fn login_otp(&self, otp: &crate::config::Secret) -> Result<Tokens, ApiError> {
        let v = self
            .call(
                Op::AuthLoginOtp,
                ApiRequest::new().body(json!({ "otp": otp.expose() })),
            )
            .await?;
        decode(Op::AuthLoginOtp, v.unwrap_or(Value::Null))
    }

    // ---- service center, translate, channels ----

    pub async fn service_center(&self) -> Result<ServiceCenter, ApiError> {
        self.get(Op::ServiceCenterInfo, ApiRequest::new()).await
    }

    pub async fn service_center_state(&self) -> Result<ServiceCenterState, ApiError> {
        self.get(Op::ServiceCenterState, ApiRequest::new()).await
    }

    pub async fn translate(
        &self,
        text: &str,
        target_language: &str,
    ) -> Result<Translation, ApiError> {
        self.get(
            Op::MiscTranslate,
            ApiRequest::new().body(json!({
                "message": { "original": text },
                "target_language": target_language,
            })),
        )
        .await
    }

    pub async fn channel(&self, channel_id: &str) -> Result<Channel, ApiError> {
        self.get(
            Op::ChannelsGet,
            ApiRequest::new().path("channelId", channel_id),
        )
        .await
    }

    pub async fn send_control_message(&self, channel_id: &str) -> Result<ControlMessage, ApiError> {
        self.get(
            Op::ChannelsControlMessage,
            ApiRequest::new().path("channelId", channel_id),
        )
        .await
    }

    pub async fn create_attachment(
        &self,
        channel_id: &str,
        file_name: Option<&str>,
    ) -> Result<Attachment, ApiError> {
        let body = match file_name {
            Some(f) => json!({ "file_name": f }),
            None => json!({}),
        };
        self.get(
            Op::ChannelsCreateAttachment,
            ApiRequest::new().path("channel_id", channel_id).body(body),
        )
        .await
    }

    pub async fn attachment(
        &self,
        channel_id: &str,
        file_reference: &str,
    ) -> Result<Attachment, ApiError> {
        self.get(
            Op::ChannelsAttachment,
            ApiRequest::new()
                .path("channel_id", channel_id)
                .query("file_reference", file_reference),
        )
        .await
    }
}

fn decode<T: DeserializeOwned>(op: Op, v: Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| ApiError::Decode {
        op: op.spec().key(),
        message: e.to_string(),
    })
}

fn to_value<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

fn vehicle(model_id: i64, variant_id: i64) -> ApiRequest {
    ApiRequest::new()
        .query("vehicle_model_id", model_id)
        .query("vehicle_model_variant_id", variant_id)
}

fn paged(req: ApiRequest, page: Page) -> ApiRequest {
    req.query_opt("offset", page.offset)
        .query_opt("limit", page.limit)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

/// Seconds until a token expiring at `exp` should be renewed: `margin` before `exp`; when
/// the token lives shorter than the margin, halfway through its remaining life; at least 1 s
/// so a short-lived token cannot make the refresher spin.
pub fn refresh_wait(exp: u64, now: u64, margin: u64) -> u64 {
    let remaining = exp.saturating_sub(now);
    let wait = if remaining > margin {
        remaining - margin
    } else {
        remaining / 2
    };
    wait.max(1)
}

/// The delay before retry `attempt` (0-based): `base * 2^attempt` capped at `max`, jittered
/// uniformly in its upper half so clients that failed together do not retry together.
pub fn retry_delay(base: Duration, max: Duration, attempt: u32) -> Duration {
    let full = base
        .saturating_mul(1u32 << attempt.min(16))
        .min(max)
        .as_millis() as u64;
    let half = full / 2;
    Duration::from_millis(half + fastrand::u64(0..=full - half))
}

/// A walk over a paginated list (see [`collect_pages`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Collected<T> {
    /// Every item, each once, in order.
    pub items: Vec<T>,
    /// The `total` the last page announced.
    pub total: i64,
    /// Set when the walk stopped before `total` because a page repeated the previous one:
    /// the service ignores `offset` (six list operations do not document it).
    pub repeated_at: Option<u64>,
}

/// Walk a paginated list to the end: call `fetch` with successive windows of `limit`
/// (clamped to 1..=200) until `total` is reached, a page comes back empty, or a page repeats
/// the previous one. The last guards against a service that ignores `offset` (it is not
/// documented on six list operations): such a service answers the first page again and
/// again, which must neither loop nor duplicate items.
pub async fn collect_pages<T, F, Fut>(limit: u32, mut fetch: F) -> Result<Collected<T>, ApiError>
where
    T: PartialEq,
    F: FnMut(Page) -> Fut,
    Fut: Future<Output = Result<List<T>, ApiError>>,
{
    let limit = limit.clamp(1, MAX_LIMIT);
    let mut out: Vec<T> = Vec::new();
    let mut offset: u64 = 0;
    // Where the previous page starts in `out`.
    let mut prev_start = 0usize;
    loop {
        let page = fetch(Page::new(offset, limit)).await?;
        let n = page.result.len();
        let total = page.total;
        if n > 0 && offset > 0 && out[prev_start..] == page.result[..] {
            tracing::warn!(
                offset,
                items = out.len(),
                total,
                "the page at offset {offset} repeats the previous one: the service seems to ignore `offset`; stopping"
            );
            return Ok(Collected {
                items: out,
                total,
                repeated_at: Some(offset),
            });
        }
        prev_start = out.len();
        out.extend(page.result);
        offset += n as u64;
        if n == 0 || offset >= u64::try_from(total).unwrap_or(0) {
            return Ok(Collected {
                items: out,
                total,
                repeated_at: None,
            });
        }
    }
}

/// [`collect_pages`], items only.
pub async fn collect_all<T, F, Fut>(limit: u32, fetch: F) -> Result<Vec<T>, ApiError>
where
    T: PartialEq,
    F: FnMut(Page) -> Fut,
    Fut: Future<Output = Result<List<T>, ApiError>>,
{
    collect_pages(limit, fetch).await.map(|c| c.items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn retry_delay_is_capped_and_jittered() {
        let base = Duration::from_millis(100);
        let max = Duration::from_millis(1000);
        for attempt in 0..20 {
            let d = retry_delay(base, max, attempt);
            let full = (100u64 << attempt.min(16)).min(1000);
            assert!(
                d.as_millis() as u64 >= full / 2 && d.as_millis() as u64 <= full,
                "{attempt}: {d:?}"
            );
        }
    }

    #[test]
    fn refresh_waits() {
        assert_eq!(refresh_wait(1000, 0, 120), 880);
        assert_eq!(
            refresh_wait(1000, 900, 120),
            50,
            "shorter than the margin: halfway"
        );
        assert_eq!(refresh_wait(1000, 1000, 120), 1, "never spins");
        assert_eq!(refresh_wait(0, 5, 120), 1);
    }

    proptest! {
        /// Over an in-memory list: every item exactly once, in order, for any size and limit.
        #[test]
        fn collect_all_sees_every_item_once(n in 0usize..700, limit in 0u32..300) {
            let items: Vec<usize> = (0..n).collect();
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let got = rt.block_on(collect_all(limit, |p: Page| {
                let off = p.offset.unwrap_or(0) as usize;
                let lim = p.limit.unwrap_or(20) as usize;
                assert!((1..=200).contains(&lim));
                let page: Vec<usize> = items.iter().copied().skip(off).take(lim).collect();
                let total = items.len() as i64;
                async move { Ok(List { result: page, total, offset: off as i64, limit: lim as i64 }) }
            })).unwrap();
            prop_assert_eq!(got, items);
        }

        /// A service that ignores `offset` (answers the first window every time): the walk
        /// ends after one repeated page, with no item twice, whatever `total` claims.
        #[test]
        fn collect_all_stops_when_offset_is_ignored(n in 1usize..700, limit in 1u32..=200, claimed in 0i64..100_000) {
            let items: Vec<usize> = (0..n).collect();
            let calls = std::cell::Cell::new(0u32);
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let got = rt.block_on(collect_pages(limit, |p: Page| {
                calls.set(calls.get() + 1);
                let lim = p.limit.unwrap_or(20) as usize;
                let page: Vec<usize> = items.iter().copied().take(lim).collect();
                let total = claimed.max(n as i64);
                async move { Ok(List { result: page, total, offset: 0, limit: lim as i64 }) }
            })).unwrap();
            let first: Vec<usize> = items.iter().copied().take(limit as usize).collect();
            prop_assert_eq!(&got.items, &first);
            let whole = first.len() as i64 >= claimed.max(n as i64);
            prop_assert_eq!(got.repeated_at.is_some(), !whole);
            prop_assert!(calls.get() <= 2, "{} calls", calls.get());
        }
    }

    #[test]
    fn pages_that_differ_are_all_kept() {
        // Distinct pages are all kept, even when the service's `offset` echo is missing.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let got = rt
            .block_on(collect_pages(2, |p: Page| {
                let off = p.offset.unwrap_or(0) as usize;
                let page: Vec<u8> = [1u8, 1, 2, 2, 1, 1]
                    .iter()
                    .copied()
                    .skip(off)
                    .take(2)
                    .collect();
                async move {
                    Ok(List {
                        result: page,
                        total: 6,
                        offset: 0,
                        limit: 2,
                    })
                }
            }))
            .unwrap();
        assert_eq!(got.items, vec![1, 1, 2, 2, 1, 1]);
        assert_eq!(got.repeated_at, None);
    }
}
