//! TLS for every link, set up in one place: rustls with the ring provider, for the cloud
//! client (REST and the status websocket), the gateway's and the operator's tunnel clients,
//! and the relay's server side.
//!
//! Owns: the client configuration (the system trust store, or a pinned CA from
//! configuration: `[tls] ca_file`, or the operator's `--ca`), the server configuration
//! from PEM files, the HTTP client every cloud call uses (no redirects: a login never
//! follows one), and the rule that plaintext (`ws://`, `http://`) goes to loopback only.
//!
//! Does not own: which URL a component uses, or retrying.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

/// The `[tls]` configuration section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Trust only this CA (PEM, one or more certificates) for the relay and the cloud,
    /// instead of the system's trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// Whether `url`'s scheme may be used for it: `wss://`/`https://` always; `ws://` and
/// `http://` only to a loopback host (tokens, the pincode and diagnostic traffic would
/// otherwise travel in clear). The error says what to write instead.
pub fn check_scheme(url: &str) -> Result<(), String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        format!("`{url}` is not a URL (expected wss://host:port/ or https://host/)")
    })?;
    let secure = match scheme.to_ascii_lowercase().as_str() {
        "wss" | "https" => return Ok(()),
        "ws" => "wss",
        "http" => "https",
        other => return Err(format!("`{url}`: scheme `{other}` is not supported")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    if is_loopback(host) {
        return Ok(());
    }
    Err(format!(
        "`{url}` would send tokens and diagnostic traffic in clear to {host}; write {secure}://{rest} (plaintext {scheme}:// is allowed only to loopback)"
    ))
}

fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // Also the process default, for any other rustls user in this process (ring only: a
    // second provider would make rustls panic at the first handshake). Fails harmlessly
    // when one is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read PEM certificates; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// A client configuration trusting only the CA certificates in `ca_file`.
pub fn client_config_with_ca(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(ca_file)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", ca_file.display()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn system_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!("reading the system trust store: {e}");
    }
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            "no CA certificates found in the system trust store; https connections will fail (install ca-certificates, or set tls.ca_file)"
        );
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The configuration [`client_config`] hands out once [`configure`] pinned a CA.
static PINNED: RwLock<Option<Arc<rustls::ClientConfig>>> = RwLock::new(None);

/// Apply the `[tls]` section for this process: with `ca_file`, every later
/// [`client_config`] trusts only that CA. Called once the configuration is loaded.
pub fn configure(cfg: &TlsConfig) -> Result<(), String> {
    let pinned = match &cfg.ca_file {
        Some(p) => Some(client_config_with_ca(p).map_err(|e| format!("tls.ca_file: {e}"))?),
        None => None,
    };
    *PINNED.write().unwrap_or_else(|p| p.into_inner()) = pinned;
    Ok(())
}

/// The client configuration for outgoing connections: the pinned CA when configured,
/// otherwise the system trust store (built once).
pub fn client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    if let Some(c) = PINNED.read().unwrap_or_else(|p| p.into_inner()).clone() {
        return Ok(c);
    }
    static SYSTEM: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    SYSTEM.get_or_init(system_config).clone()
}

/// A reqwest client on the shared TLS configuration. Redirects are never followed (an
/// authentication request must not be sent on to another host).
pub fn http_client_builder() -> Result<reqwest::ClientBuilder, String> {
    let tls = client_config()?;
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .redirect(reqwest::redirect::Policy::none()))
}

/// [`http_client_builder`] with a timeout, for admin calls and probes.
pub fn http_client(timeout: std::time::Duration) -> Result<reqwest::Client, String> {
    http_client_builder()?
        .timeout(timeout)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// A server configuration from PEM files (certificate chain, private key).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = read_certs(cert)?;
    let key_pem = std::fs::read(key).map_err(|e| format!("reading {}: {e}", key.display()))?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{}: {e} (expected a PEM private key)", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| format!("{} with {}: {e}", cert.display(), key.display()))?;
    Ok(Arc::new(config))
}

/// Words for a failed TLS handshake, with what to check when the certificate was refused.
pub fn handshake_error(host: &str, e: &std::io::Error) -> String {
    let text = e.to_string();
    let hint = if text.contains("certificate") || text.contains("UnknownIssuer") {
        "; the server's certificate is not signed by a CA this side trusts: check tls.ca_file (gateway) or --ca (operator), and that the certificate names this host"
    } else {
        ""
    };
    format!("TLS handshake with {host} failed: {text}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_goes_to_loopback_only() {
        for ok in [
            "wss://relay.example:8443/",
            "https://api.example/",
            "ws://127.0.0.1:9000/",
            "ws://127.8.9.1/x",
            "http://localhost:8780",
            "ws://[::1]:80/",
            "http://user@127.0.0.1/",
        ] {
            assert!(check_scheme(ok).is_ok(), "{ok}");
        }
        let e = check_scheme("ws://relay.example:8443/v1").unwrap_err();
        assert!(
            e.contains("write wss://relay.example:8443/v1") && e.contains("in clear"),
            "{e}"
        );
        let e = check_scheme("http://192.168.1.5/").unwrap_err();
        assert!(e.contains("https://192.168.1.5/"), "{e}");
        assert!(check_scheme("ws://[2001:db8::1]/").is_err());
        assert!(check_scheme("ws://127.0.0.1.evil.example/").is_err());
        assert!(check_scheme("ftp://x/").is_err());
        assert!(check_scheme("relay.example").is_err());
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_a_clear_error() {
        let e = client_config_with_ca(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.pem");
        std::fs::write(&p, "not a certificate\n").unwrap();
        let e = client_config_with_ca(&p).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
