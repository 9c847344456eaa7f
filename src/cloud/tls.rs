//! TLS for every outgoing connection: one rustls client configuration with the ring provider
//! and the system's trust store, shared by reqwest and the websocket connector.

use std::sync::{Arc, OnceLock};

/// The shared client configuration (built once).
pub fn client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG.get_or_init(build).clone()
}

fn build() -> Result<Arc<rustls::ClientConfig>, String> {
    // Also the process default, for any other rustls user in this process (ring only: a
    // second provider would make rustls panic at the first handshake). Fails harmlessly
    // when one is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!("reading the system trust store: {e}");
    }
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            "no CA certificates found in the system trust store; https connections will fail (install ca-certificates)"
        );
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A reqwest client on the shared TLS configuration, without API logic (admin calls,
/// probes). Fails only when TLS cannot be configured.
pub fn http_client(timeout: std::time::Duration) -> Result<reqwest::Client, String> {
    let tls = client_config()?;
    reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .timeout(timeout)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}
