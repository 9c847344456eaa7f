//! The tunnel relay embedded in `obdgw sim cloud` (`--relay-listen`), with authentication
//! backed by the simulator's state.
//!
//! Owns: [`SimTokens`], the [`TokenCheck`] that decides from the tickets and issued tokens
//! who may join a relay session; [`start`], which binds and runs the relay next to the
//! HTTP API; [`end_session`], called when a ticket's connection ends.
//!
//! Does not own: the relay itself (`crate::relay`), the tickets' life (`super::ops`).
//!
//! Rules (also in `docs/cloud.md`):
//! - A session id is the `connection_uuid` of an active ticket (pending, in progress or
//!   outsourced) that has a connection (an operator joined it). Anything else is refused
//!   like a bad token (`auth_failed`: the relay gives one answer for both).
//! - The gateway presents its **connector token**: a token the simulator issued at a login
//!   of the ticket's connector (`/v1/authenticate/connector` or the id + pincode login;
//!   access or id token, whichever the box uses as its bearer), not expired at the hello.
//!   A connection stays up when the token expires later; a reconnect needs a fresh one.
//! - The operator presents the ticket's **session token** (`operator_token`), issued when
//!   the connection starts (admin `join`) and shown by `GET /admin/connections/{uuid}`,
//!   by the `join` answer, and on the simulator's stdout.
//! - Any other token, or a token of the other role: `auth_failed`.
//! - Closing or cancelling the ticket ends the relay session: both sides get
//!   `session_ended` (401) and are disconnected; their reconnects get `auth_failed`.

use super::Shared;
use super::data::state;
use crate::relay::hub::Hub;
use crate::relay::{AuthError, RelayConfig, TokenCheck, same_token};
use crate::wire::tunnel::{ErrorCode, Role};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The running relay, as the simulator's handlers see it.
#[derive(Debug, Clone)]
pub struct RelayInfo {
    /// The relay's session registry, to end sessions when tickets close.
    pub hub: Hub,
    /// The URL endpoints connect to (`ws://ADDR/` or `wss://ADDR/`).
    pub url: String,
}

/// Authentication from the simulator's tickets and tokens (rules in the module docs).
#[derive(Clone)]
pub struct SimTokens {
    shared: Arc<Shared>,
}

impl SimTokens {
    pub fn new(shared: Arc<Shared>) -> Self {
        SimTokens { shared }
    }

    /// The decision, at Unix time `now`.
    pub fn check_at(
        &self,
        role: Role,
        session: &str,
        token: &str,
        now: u64,
    ) -> Result<(), AuthError> {
        let d = self.shared.data.lock().unwrap_or_else(|p| p.into_inner());
        let t = d
            .tickets
            .iter()
            .find(|t| state::is_active(t.state) && t.connection_uuid.as_deref() == Some(session))
            .ok_or(AuthError::UnknownSession)?;
        let ok = match role {
            Role::Gateway => d
                .tokens
                .iter()
                .filter(|r| r.connector_id == Some(t.connector_id) && r.expires_at > now)
                .fold(false, |ok, r| same_token(&r.token, token) | ok),
            Role::Operator => t
                .operator_token
                .as_deref()
                .is_some_and(|want| same_token(want, token)),
        };
        if ok {
            Ok(())
        } else {
            tracing::info!(
                session,
                ?role,
                ticket = t.id,
                "relay: token refused (gateway: not an unexpired login token of connector {}; operator: not the ticket's session token)",
                t.connector_id
            );
            Err(AuthError::BadToken)
        }
    }
}

impl TokenCheck for SimTokens {
    async fn check(&self, role: Role, session: &str, token: &str) -> Result<(), AuthError> {
        self.check_at(role, session, token, crate::cloud::token::now_unix())
    }
}

/// Bind `addr` and serve the relay with [`SimTokens`] until `shutdown`. Registers the relay
/// in `shared` (so closing a ticket ends its session) and returns its URL and task.
pub async fn start(
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let url = format!("{scheme}://{local}/");
    let cfg = RelayConfig::default();
    let hub = Hub::new(cfg.max_sessions, cfg.keepalive_ms);
    if shared
        .relay
        .set(RelayInfo {
            hub: hub.clone(),
            url: url.clone(),
        })
        .is_err()
    {
        return Err(std::io::Error::other("this simulator already runs a relay"));
    }
    let auth = Arc::new(SimTokens::new(shared));
    let task = tokio::spawn(crate::relay::run_with_hub(
        listener, tls, auth, cfg, hub, shutdown,
    ));
    Ok((url, task))
}

/// A ticket's connection `session` ended (`why`, e.g. "ticket 7 was closed"): end the relay
/// session if one is held. Call after the state no longer admits the session.
pub fn end_session(shared: &Shared, session: &str, why: &str) {
    if let Some(r) = shared.relay.get()
        && r.hub.release(session, ErrorCode::SESSION_ENDED, why)
    {
        tracing::info!(session, why, "relay session ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::cloud::data::{SimData, TicketRec, TokenRec};
    use crate::sim::cloud::{DEMO_CONNECTOR_ID, SimOptions};

    const SID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab";

    fn sim(state: i64) -> SimTokens {
        let mut d = SimData::builtin().unwrap();
        d.tickets.push(TicketRec {
            id: 1,
            connector_id: DEMO_CONNECTOR_ID,
            state,
            connection_uuid: Some(SID.into()),
            operator_token: Some("ops_op".into()),
            ..TicketRec::default()
        });
        for (token, connector, exp) in [
            ("gw-live", Some(DEMO_CONNECTOR_ID), 2000),
            ("gw-expired", Some(DEMO_CONNECTOR_ID), 1000),
            ("other-connector", Some(910_000_002), 2000),
            ("otp-login", None, 2000),
        ] {
            d.tokens.push(TokenRec {
                token: token.into(),
                subject: "test".into(),
                connector_id: connector,
                expires_at: exp,
            });
        }
        SimTokens::new(Shared::new(d, SimOptions::default()))
    }

    #[test]
    fn gateway_needs_an_unexpired_login_token_of_the_tickets_connector() {
        let s = sim(state::IN_PROGRESS);
        assert_eq!(s.check_at(Role::Gateway, SID, "gw-live", 1500), Ok(()));
        for bad in [
            "gw-expired",
            "other-connector",
            "otp-login",
            "ops_op",
            "",
            "gw-liv",
        ] {
            assert_eq!(
                s.check_at(Role::Gateway, SID, bad, 1500),
                Err(AuthError::BadToken),
                "{bad}"
            );
        }
        // Expiry is checked at the hello.
        assert_eq!(
            s.check_at(Role::Gateway, SID, "gw-live", 2000),
            Err(AuthError::BadToken)
        );
    }

    #[test]
    fn operator_needs_the_tickets_session_token() {
        let s = sim(state::OUTSOURCED);
        assert_eq!(s.check_at(Role::Operator, SID, "ops_op", 1500), Ok(()));
        for bad in ["gw-live", "ops_o", "ops_opx", ""] {
            assert_eq!(
                s.check_at(Role::Operator, SID, bad, 1500),
                Err(AuthError::BadToken),
                "{bad}"
            );
        }
    }

    #[test]
    fn sessions_of_unknown_or_finished_tickets_are_unknown() {
        let other = "00000000-0000-4000-8000-000000000000";
        let s = sim(state::IN_PROGRESS);
        assert_eq!(
            s.check_at(Role::Operator, other, "ops_op", 1500),
            Err(AuthError::UnknownSession)
        );
        for finished in [state::CLOSED, state::CANCELLED] {
            let s = sim(finished);
            for (role, token) in [(Role::Gateway, "gw-live"), (Role::Operator, "ops_op")] {
                assert_eq!(
                    s.check_at(role, SID, token, 1500),
                    Err(AuthError::UnknownSession)
                );
            }
        }
    }
}
