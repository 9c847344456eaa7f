//! Cloud sync for the daemon: one call that logs in, keeps the token fresh and follows this
//! connector's status, delivering [`StatusEvent`]s.
//!
//! Owns: wiring `Client`, `Client::keep_fresh` and `StatusClient` from the configuration.
//! Does not own: what the daemon does with the events (open or close the tunnel).

use super::client::Client;
use super::config::CloudConfig;
use super::error::ApiError;
use super::status::{StatusClient, StatusEvent, StatusSettings};
use std::path::Path;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Run cloud sync until `shutdown`. Fails at once, with what to configure, when the
/// connector UUID or the pincode is missing; afterwards it never gives up (the service
/// being away is retried, with REST polling while the websocket is down).
pub async fn run(
    cloud: &CloudConfig,
    state_dir: Option<&Path>,
    events: mpsc::Sender<StatusEvent>,
    shutdown: CancellationToken,
) -> Result<(), ApiError> {
    let uuid = cloud.connector_uuid.clone().ok_or_else(|| {
        ApiError::Auth(
            "cloud.connector_uuid is not set; it is printed on the connector's label".into(),
        )
    })?;
    if cloud.resolve_pincode().map_err(ApiError::Auth)?.is_none() {
        return Err(ApiError::Auth(
            "no pincode: set cloud.pincode_file or provide the systemd credential `pincode`".into(),
        ));
    }
    let client = Client::from_config(cloud, state_dir)?;
    let refresher = {
        let c = client.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move { c.keep_fresh(stop).await })
    };
    StatusClient::new(client, StatusSettings::from_config(cloud), uuid)
        .run(events, shutdown)
        .await;
    let _ = refresher.await;
    Ok(())
}
