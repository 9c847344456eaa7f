//! Tokens: credentials, reading `exp` from a JWT, and the on-disk token store.
//!
//! Owns: the login credentials (connector UUID + pincode, the deprecated connector ID +
//! pincode, a one-time password), the session (tokens + expiry), and persisting it
//! atomically with mode 0600 in the state directory.
//!
//! Does not own: when to log in (the client decides: before `exp - margin`, and once after a
//! 401). Nothing here logs or prints a pincode or a token: `Debug` is written by hand.

use super::model::Tokens;
use crate::config::Secret;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// File name of the token store inside the state directory.
pub const STORE_FILE: &str = "cloud-tokens.json";

/// How to log in.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Connector UUID + pincode (the documented way).
    ConnectorUuid { uuid: String, pincode: Secret },
    /// Connector ID + pincode (deprecated by the vendor).
    ConnectorId { id: i64, pincode: Secret },
    /// A one-time password (single use: cannot log in again by itself).
    Otp(Secret),
}

impl Credentials {
    /// Who the tokens belong to, for matching a stored session (no secret in it).
    pub fn subject(&self) -> String {
        match self {
            Credentials::ConnectorUuid { uuid, .. } => format!("connector:{uuid}"),
            Credentials::ConnectorId { id, .. } => format!("connector-id:{id}"),
            Credentials::Otp(_) => "otp".into(),
        }
    }

    /// Whether the same credentials can log in again (an OTP cannot).
    pub fn reusable(&self) -> bool {
        !matches!(self, Credentials::Otp(_))
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::ConnectorUuid { uuid, .. } => {
                write!(f, "ConnectorUuid {{ uuid: {uuid}, pincode: <redacted> }}")
            }
            Credentials::ConnectorId { id, .. } => {
                write!(f, "ConnectorId {{ id: {id}, pincode: <redacted> }}")
            }
            Credentials::Otp(_) => f.write_str("Otp(<redacted>)"),
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `exp` claim of a JWT (seconds since the epoch), without verifying the signature
/// (the client only needs to know when to log in again; the server verifies).
pub fn jwt_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    match claims.get("exp")? {
        serde_json::Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Tokens of one login and when they expire.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// `Credentials::subject` of the login.
    pub subject: String,
    /// The REST base URL the tokens were issued for.
    pub base_url: String,
    pub id_token: String,
    pub access_token: String,
    pub refresh_token: String,
    /// Expiry (seconds since the epoch) of the bearer token.
    pub expires_at: u64,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("subject", &self.subject)
            .field("base_url", &self.base_url)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Build a session from a login answer; expiry from the bearer's `exp`, else
    /// `now + default_lifetime`.
    pub fn from_tokens(
        subject: String,
        base_url: String,
        t: Tokens,
        bearer: super::config::BearerToken,
        default_lifetime_s: u64,
    ) -> Session {
        let mut s = Session {
            subject,
            base_url,
            id_token: t.id_token,
            access_token: t.access_token,
            refresh_token: t.refresh_token,
            expires_at: 0,
        };
        s.expires_at = jwt_exp(s.bearer(bearer)).unwrap_or_else(|| now_unix() + default_lifetime_s);
        s
    }

    /// The token sent as `Authorization: Bearer`.
    pub fn bearer(&self, which: super::config::BearerToken) -> &str {
        match which {
            super::config::BearerToken::Access => &self.access_token,
            super::config::BearerToken::Id => &self.id_token,
        }
    }

    /// Whether the session is still good for at least `margin_s` seconds at `now`.
    pub fn fresh(&self, now: u64, margin_s: u64) -> bool {
        now.saturating_add(margin_s) < self.expires_at
    }
}

/// Errors of the token store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "token store {path}: {what}: {source}; check that the state directory (daemon.state_dir) exists and is writable by this user"
    )]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("token store {path}: not a token file ({message}); delete it and log in again")]
    Corrupt { path: PathBuf, message: String },
}

/// The session file in the state directory.
#[derive(Debug, Clone)]
pub struct TokenStore {
    path: PathBuf,
}

impl TokenStore {
    pub fn in_dir(state_dir: &Path) -> Self {
        TokenStore {
            path: state_dir.join(STORE_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored session, if any.
    pub fn load(&self) -> Result<Option<Session>, StoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.path.clone(),
                    what: "reading",
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Write atomically: a 0600 temporary file in the same directory, fsync, rename.
    pub fn save(&self, session: &Session) -> Result<(), StoreError> {
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
        let io = |what: &'static str| {
            let path = self.path.clone();
            move |source| StoreError::Io { path, what, source }
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io("creating the state directory"))?;
        }
        let tmp = dir.join(format!(".{STORE_FILE}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let body = serde_json::to_vec_pretty(session).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io("creating a temporary file"))?;
            f.write_all(&body).map_err(io("writing"))?;
            f.sync_all().map_err(io("syncing"))?;
            std::fs::rename(&tmp, &self.path).map_err(io("renaming into place"))?;
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Forget the stored session.
    pub fn clear(&self) -> Result<(), StoreError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io {
                path: self.path.clone(),
                what: "removing",
                source,
            }),
        }
    }
}

/// Build an unsigned-looking JWT with the given claims (used by the simulator; the client
/// only reads `exp`).
pub fn make_jwt(claims: &serde_json::Value, signature: &str) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        e.encode(br#"{"alg":"HS256","typ":"JWT","kid":"obdgw-sim"}"#),
        e.encode(claims.to_string()),
        signature
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn exp_from_jwt() {
        let t = make_jwt(
            &serde_json::json!({"sub": "x", "exp": 1_900_000_000u64}),
            "sig",
        );
        assert_eq!(jwt_exp(&t), Some(1_900_000_000));
        assert_eq!(jwt_exp("eyJraW2In0.eyJhdF9...."), None);
        assert_eq!(jwt_exp("no-dots"), None);
        assert_eq!(jwt_exp(""), None);
    }

    #[test]
    fn store_is_atomic_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::in_dir(&dir.path().join("state"));
        assert!(store.load().unwrap().is_none());
        let s = Session {
            subject: "connector:x".into(),
            base_url: "http://h".into(),
            id_token: "i".into(),
            access_token: "a".into(),
            refresh_token: "r".into(),
            expires_at: 42,
        };
        store.save(&s).unwrap();
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(store.load().unwrap(), Some(s.clone()));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("state"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        assert!(!format!("{s:?}").contains("\"a\""));
        std::fs::write(store.path(), "garbage").unwrap();
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
        store.clear().unwrap();
        assert!(store.load().unwrap().is_none());
    }

    #[test]
    fn credentials_debug_is_redacted() {
        let c = Credentials::ConnectorUuid {
            uuid: "u".into(),
            pincode: Secret::new("987654"),
        };
        assert!(!format!("{c:?}").contains("987654"));
        assert!(!format!("{:?}", Credentials::Otp(Secret::new("987654"))).contains("987654"));
    }
}
