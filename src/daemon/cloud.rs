//! The cloud follower: the daemon's link to the Customer API.
//!
//! Owns: logging in (with backoff that keeps a refused pincode to a few log lines an hour:
//! 30 s doubling to 10 min; an unreachable service: 5 s doubling to 5 min), keeping the token
//! fresh, running the status websocket client (which falls back to REST polling and checks
//! for an already active ticket at once), publishing the cloud's state for `obdgw status`,
//! and handing every [`StatusEvent`] to the session driver.
//!
//! Does not own: what the events mean for sessions (`super::session`).
//! Fails for good (the daemon exits non-zero) only when no credentials are configured.

use super::health::{BEAT_EVERY, ComponentState, Heartbeat};
use super::report::CloudReport;
use super::state::Shared;
use crate::cloud::client::{Client, refresh_wait};
use crate::cloud::config::CloudConfig;
use crate::cloud::error::ApiError;
use crate::cloud::status::{StatusClient, StatusEvent, StatusSettings};
use crate::cloud::token::now_unix;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Backoff of a refused login (wrong pincode): first wait, ceiling.
const REFUSED: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(600));
/// Backoff while the service cannot be reached.
const UNREACHABLE: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(300));

/// Check that the follower can run at all: `Err` is a configuration the daemon cannot heal.
pub fn preflight(cloud: &CloudConfig) -> Result<(), String> {
    if cloud.connector_uuid.is_none() {
        return Err(
            "cloud.connector_uuid is not set; it is printed on the connector's label".into(),
        );
    }
    match cloud.resolve_pincode() {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(
            "no pincode: set cloud.pincode_file or provide the systemd credential `pincode` (LoadCredential=pincode:/etc/obdgw/pincode)".into(),
        ),
        Err(e) => Err(e),
    }
}

fn refused(e: &ApiError) -> bool {
    matches!(e.status(), Some(400 | 401 | 403)) || matches!(e, ApiError::Auth(_))
}

/// Run until `stop`. Events go to `events`.
pub async fn run(
    shared: Arc<Shared>,
    cloud: CloudConfig,
    state_dir: PathBuf,
    events: mpsc::Sender<StatusEvent>,
    hb: Heartbeat,
    stop: CancellationToken,
) -> Result<(), String> {
    preflight(&cloud)?;
    let uuid = cloud.connector_uuid.clone().unwrap_or_default();
    let client = Client::from_config(&cloud, Some(&state_dir)).map_err(|e| e.to_string())?;
    shared.set(&shared.client, Some(client.clone()));
    let base = CloudReport {
        base_url: cloud.base_url.clone(),
        connector_uuid: Some(uuid.clone()),
        status_socket: "starting".into(),
        ..CloudReport::default()
    };
    shared.set(&shared.cloud, Some(base));
    let publish = |f: &dyn Fn(&mut CloudReport)| {
        shared.with(&shared.cloud, |c| {
            if let Some(c) = c {
                f(c)
            }
        })
    };

    // Log in (or find the stored token still good).
    let mut failures = 0u32;
    loop {
        hb.beat();
        let attempt = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = client.bearer() => r,
        };
        match attempt {
            Ok(_) => break,
            Err(e) => {
                let (first, max) = if refused(&e) { REFUSED } else { UNREACHABLE };
                let wait =
                    super::ports::jitter(first.saturating_mul(1 << failures.min(10)).min(max));
                failures += 1;
                tracing::warn!(
                    "logging in to the Customer API failed: {e}; retrying in {} s",
                    wait.as_secs()
                );
                let why = if refused(&e) {
                    format!("pincode or connector refused ({})", short(&e))
                } else {
                    format!("service unreachable ({})", short(&e))
                };
                publish(&|c| {
                    c.logged_in = false;
                    c.login_error = Some(why.clone());
                    c.login_retry_at = Some(now_unix() + wait.as_secs());
                });
                hb.set(
                    ComponentState::Degraded,
                    format!("logging in failed: {why}"),
                );
                if !sleep_beating(&hb, wait, &stop).await {
                    return Ok(());
                }
            }
        }
    }
    let exp = client.expires_at().await;
    publish(&|c| {
        c.logged_in = true;
        c.login_error = None;
        c.login_retry_at = None;
        c.token_expires_at = exp;
    });
    hb.set(ComponentState::Ok, "logged in");

    // The status websocket (with its REST fallback) runs beside the refresher.
    let (tx, mut rx) = mpsc::channel(64);
    let status_stop = stop.child_token();
    let status = tokio::spawn(
        StatusClient::new(client.clone(), StatusSettings::from_config(&cloud), uuid)
            .run(tx, status_stop.clone()),
    );
    let margin = cloud.refresh_margin_s;
    let mut next_refresh = Instant::now()
        + Duration::from_secs(refresh_wait(exp.unwrap_or(0), now_unix(), margin).max(1));
    let mut refresh_failures = 0u32;
    let mut tick = tokio::time::interval(BEAT_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => hb.beat(),
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                match &ev {
                    StatusEvent::LinkUp => {
                        publish(&|c| {
                            c.status_socket = "up".into();
                            c.status_socket_since = Some(now_unix());
                            c.status_socket_error = None;
                        });
                        hb.set(ComponentState::Ok, "logged in; status socket up");
                    }
                    StatusEvent::LinkDown { reason } => {
                        publish(&|c| {
                            if c.status_socket != "down" {
                                c.status_socket_since = Some(now_unix());
                            }
                            c.status_socket = "down".into();
                            c.status_socket_error = Some(reason.clone());
                        });
                        hb.set(ComponentState::Degraded, format!("status socket down ({reason}); polling over REST"));
                    }
                    _ => {}
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = events.send(ev) => if r.is_err() { break },
                }
            }
            _ = tokio::time::sleep_until(next_refresh) => {
                match client.bearer().await {
                    Ok(_) => {
                        refresh_failures = 0;
                        let exp = client.expires_at().await;
                        publish(&|c| {
                            c.logged_in = true;
                            c.login_error = None;
                            c.login_retry_at = None;
                            c.token_expires_at = exp;
                        });
                        next_refresh = Instant::now()
                            + Duration::from_secs(refresh_wait(exp.unwrap_or(0), now_unix(), margin).max(1));
                    }
                    Err(e) => {
                        let (first, max) = if refused(&e) { REFUSED } else { UNREACHABLE };
                        let wait = super::ports::jitter(first.saturating_mul(1 << refresh_failures.min(10)).min(max));
                        refresh_failures += 1;
                        tracing::warn!("refreshing the Customer API token failed: {e}; retrying in {} s", wait.as_secs());
                        let still = client.expires_at().await.is_some_and(|x| x > now_unix());
                        let why = short(&e);
                        publish(&|c| {
                            c.logged_in = still;
                            c.login_error = Some(why.clone());
                            c.login_retry_at = Some(now_unix() + wait.as_secs());
                        });
                        next_refresh = Instant::now() + wait;
                    }
                }
            }
        }
    }
    status_stop.cancel();
    let _ = status.await;
    Ok(())
}

/// The first clause of an error: enough for a status line.
fn short(e: &ApiError) -> String {
    match e {
        ApiError::Status {
            status, problem, ..
        } => {
            if problem.title.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status} {}", problem.title)
            }
        }
        ApiError::Transport { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Sleep `d`, beating; false when stopped.
async fn sleep_beating(hb: &Heartbeat, d: Duration, stop: &CancellationToken) -> bool {
    let until = Instant::now() + d;
    let mut tick = tokio::time::interval(BEAT_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep_until(until) => return true,
            _ = tick.tick() => hb.beat(),
        }
    }
}
