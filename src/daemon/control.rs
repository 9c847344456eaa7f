//! The control socket: `obdgw status` and `obdgw reload` talk to the running daemon here.
//!
//! Owns: the wire format (one JSON object per line, version [`VERSION`], requests of at most
//! [`MAX_REQUEST`] bytes; `docs/control.md`), the checked request parser ([`parse_request`]),
//! the server ([`serve`]: binds `daemon.control_socket` mode 0660, decides by the peer's
//! credentials: anyone who can open the socket reads, root and the daemon's own user may act),
//! and the client side of `obdgw status` and `obdgw reload` with their exit codes.
//!
//! Does not own: what a status holds (`super::report`) or what a reload does (`super`).
//! The server never holds a data-plane lock: it asks the daemon through [`ControlApi`].

use super::report::StatusReport;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// Protocol version (`"v"` in every request and answer).
pub const VERSION: u32 = 1;
/// Longest request line accepted, newline included.
pub const MAX_REQUEST: usize = 4096;
/// A client that sends nothing for this long is disconnected.
const IDLE: Duration = Duration::from_secs(10);
/// At most this many control connections are served at once.
const MAX_CLIENTS: usize = 16;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub v: u32,
    pub cmd: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    /// Read the status report.
    Status,
    /// Re-read the configuration file and apply what can change live.
    Reload,
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// Keys (sections) applied live.
    pub applied: Vec<String>,
    /// Keys that changed but take effect only after `systemctl restart obdgw`.
    pub needs_restart: Vec<String>,
    /// Keys that change with the next session (the running one is not cut).
    pub next_session: Vec<String>,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// `bad-request`, `forbidden`, `invalid-config`, `unavailable`.
    pub code: String,
    pub message: String,
    /// For `invalid-config`: every problem, one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// An answer: exactly one of `status`, `reload`, `error` is present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub v: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<StatusReport>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Response {
    fn error(code: &str, message: impl Into<String>, problems: Vec<String>) -> Response {
        Response {
            v: VERSION,
            ok: false,
            status: None,
            reload: None,
            error: Some(ErrorBody {
                code: code.into(),
                message: message.into(),
                problems,
            }),
        }
    }
}

/// Why a request line is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request longer than {MAX_REQUEST} bytes")]
    TooLong,
    #[error("request is not a JSON control request: {0}")]
    Malformed(String),
    #[error("protocol version {0} is not supported (this daemon speaks {VERSION})")]
    Version(u32),
}

/// Parse one request line (without or with its newline). Never panics on any input.
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    if line.len() > MAX_REQUEST {
        return Err(RequestError::TooLong);
    }
    let req: Request = serde_json::from_slice(line.trim_ascii_end())
        .map_err(|e| RequestError::Malformed(e.to_string()))?;
    if req.v != VERSION {
        return Err(RequestError::Version(req.v));
    }
    Ok(req)
}

/// What the server asks the daemon.
pub trait ControlApi: Send + Sync + 'static {
    fn status(&self) -> StatusReport;
    fn reload(&self) -> impl std::future::Future<Output = Result<ReloadOutcome, ErrorBody>> + Send;
}

/// Bind the control socket: its directory is created when missing, a stale socket file
/// (nobody listening) is replaced, a live one is an error; mode 0660.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    use anyhow::Context as _;
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).with_context(|| {
            format!("creating the control socket's directory {}", dir.display())
        })?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "control socket {} is in use: another obdgw daemon is running (stop it, or set daemon.control_socket)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale control socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(l)
}

/// Serve control connections until `stop`; removes the socket file at the end.
pub async fn serve<A: ControlApi>(
    listener: UnixListener,
    path: PathBuf,
    api: Arc<A>,
    hb: super::health::Heartbeat,
    stop: CancellationToken,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    let tasks = tokio_util::task::TaskTracker::new();
    let mut tick = tokio::time::interval(super::health::BEAT_EVERY);
    hb.set(
        super::health::ComponentState::Ok,
        format!("listening on {}", path.display()),
    );
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => hb.beat(),
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("control socket: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::warn!("control socket: {MAX_CLIENTS} clients already; refusing one");
                    continue;
                };
                let api = api.clone();
                let stop = stop.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = client(stream, api) => {}
                    }
                });
            }
        }
    }
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), tasks.wait()).await;
    let _ = std::fs::remove_file(&path);
}

/// Whether the peer may act (reload): root or the daemon's own user.
fn may_act(stream: &UnixStream) -> bool {
    match stream.peer_cred() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        Ok(c) => c.uid() == 0 || c.uid() == unsafe { libc::geteuid() },
        Err(_) => false,
    }
}

async fn client<A: ControlApi>(stream: UnixStream, api: Arc<A>) {
    let act = may_act(&stream);
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(MAX_REQUEST + 1, rd);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let read = tokio::time::timeout(IDLE, read_line_bounded(&mut rd, &mut line)).await;
        let parsed = match read {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => parse_request(&line),
        };
        match &parsed {
            Ok(r) => tracing::debug!(cmd = ?r.cmd, may_act = act, "control request"),
            Err(e) => tracing::debug!("control request refused: {e}"),
        }
        let resp = match parsed {
            Err(e) => Response::error("bad-request", e.to_string(), Vec::new()),
            Ok(Request {
                cmd: Command::Status,
                ..
            }) => Response {
                v: VERSION,
                ok: true,
                status: Some(Box::new(api.status())),
                reload: None,
                error: None,
            },
            Ok(Request {
                cmd: Command::Reload,
                ..
            }) if !act => Response::error(
                "forbidden",
                "reload needs root or the daemon's user (sudo obdgw reload, or systemctl reload obdgw)",
                Vec::new(),
            ),
            Ok(Request {
                cmd: Command::Reload,
                ..
            }) => match api.reload().await {
                Ok(outcome) => Response {
                    v: VERSION,
                    ok: true,
                    status: None,
                    reload: Some(outcome),
                    error: None,
                },
                Err(e) => Response {
                    v: VERSION,
                    ok: false,
                    status: None,
                    reload: None,
                    error: Some(e),
                },
            },
        };
        let mut out = serde_json::to_vec(&resp).unwrap_or_else(|_| b"{}".to_vec());
        out.push(b'\n');
        if wr.write_all(&out).await.is_err() {
            return;
        }
        if line.len() > MAX_REQUEST {
            return; // the rest of an oversize line is not worth reading
        }
    }
}

/// Read up to a newline, keeping at most `MAX_REQUEST + 1` bytes (a longer line is cut there
/// and refused by the parser). Returns the bytes consumed (0 at end of stream).
async fn read_line_bounded<R: tokio::io::AsyncBufRead + Unpin>(
    rd: &mut R,
    line: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let buf = rd.fill_buf().await?;
        if buf.is_empty() {
            return Ok(total);
        }
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = (MAX_REQUEST + 1).saturating_sub(line.len());
        line.extend_from_slice(&buf[..take.min(room)]);
        rd.consume(take);
        total += take;
        if done || line.len() > MAX_REQUEST {
            return Ok(total);
        }
    }
}

// ---- the client side: `obdgw status`, `obdgw reload` ----

/// Where the control socket is (shared by `obdgw status` and `obdgw reload`).
#[derive(Debug, Clone, clap::Args)]
pub struct SocketArgs {
    /// The daemon's control socket. Default: `daemon.control_socket` of --config when given,
    /// else /run/obdgw/control.sock.
    #[arg(long, value_name = "PATH", env = "OBDGW_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Take the socket's path from this configuration file.
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
}

impl SocketArgs {
    fn path(&self) -> PathBuf {
        if let Some(p) = &self.socket {
            return p.clone();
        }
        if let Some(c) = &self.config
            && let Ok(l) = crate::config::load(&crate::config::ConfigSource::Explicit(c.clone()))
        {
            return l.config.daemon.control_socket;
        }
        PathBuf::from(crate::config::DEFAULT_CONTROL_SOCKET)
    }
}

/// `obdgw status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Print the report as one JSON object (schema in docs/control.md).
    #[arg(long)]
    pub json: bool,
}

/// `obdgw reload`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
}

/// Why a request to the daemon failed, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(
        "no daemon at {path}: {source}; is obdgw running? (systemctl status obdgw, or give --socket)"
    )]
    NoDaemon {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "permission denied on {path}: join the group `obdgw` (sudo usermod -aG obdgw $USER, then log in again) or use sudo"
    )]
    Denied { path: String },
    #[error("the daemon at {path} answered badly: {why}")]
    Protocol { path: String, why: String },
}

impl CallError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CallError::NoDaemon { .. } | CallError::Protocol { .. } => 3,
            CallError::Denied { .. } => 4,
        }
    }
}

/// Send one request and read its answer.
pub async fn call(path: &Path, cmd: Command, timeout: Duration) -> Result<Response, CallError> {
    let p = path.display().to_string();
    let mut s = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(CallError::Denied { path: p });
        }
        Err(source) => return Err(CallError::NoDaemon { path: p, source }),
    };
    let mut req = serde_json::to_vec(&Request { v: VERSION, cmd }).unwrap_or_default();
    req.push(b'\n');
    let exchange = async {
        s.write_all(&req).await?;
        let mut rd = BufReader::new(&mut s);
        let mut line = String::new();
        rd.read_line(&mut line).await?;
        Ok::<_, std::io::Error>(line)
    };
    let line = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(l)) if !l.is_empty() => l,
        Ok(Ok(_)) => {
            return Err(CallError::Protocol {
                path: p,
                why: "it closed the connection without answering".into(),
            });
        }
        Ok(Err(e)) => {
            return Err(CallError::Protocol {
                path: p,
                why: e.to_string(),
            });
        }
        Err(_) => {
            return Err(CallError::Protocol {
                path: p,
                why: format!("no answer within {timeout:?}"),
            });
        }
    };
    serde_json::from_str(&line).map_err(|e| CallError::Protocol {
        path: p,
        why: format!("not a control answer: {e}"),
    })
}

fn block_on<F: std::future::Future>(f: F) -> Option<F::Output> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt.block_on(f)),
        Err(e) => {
            eprintln!("obdgw: cannot start the async runtime: {e}");
            None
        }
    }
}

/// `obdgw status`: exit 0 healthy, 1 degraded, 3 no daemon, 4 permission denied.
pub fn run_status(args: StatusArgs) -> ExitCode {
    let path = args.socket.path();
    let Some(r) = block_on(call(&path, Command::Status, Duration::from_secs(5))) else {
        return ExitCode::from(3);
    };
    match r {
        Ok(Response {
            ok: true,
            status: Some(s),
            ..
        }) => {
            if args.json {
                println!("{}", serde_json::to_string(&s).unwrap_or_default());
            } else {
                print!("{}", s.render());
            }
            ExitCode::from(s.exit_code())
        }
        Ok(other) => {
            let why = other
                .error
                .map(|e| format!("{}: {}", e.code, e.message))
                .unwrap_or_else(|| "no status in the answer".into());
            eprintln!("obdgw status: {why}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("obdgw status: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `obdgw reload`: exit 0 applied, 1 refused (every problem printed), 3 no daemon,
/// 4 permission denied.
pub fn run_reload(args: ReloadArgs) -> ExitCode {
    let path = args.socket.path();
    let Some(r) = block_on(call(&path, Command::Reload, Duration::from_secs(30))) else {
        return ExitCode::from(3);
    };
    match r {
        Ok(Response {
            ok: true,
            reload: Some(o),
            ..
        }) => {
            if o.applied.is_empty() && o.needs_restart.is_empty() && o.next_session.is_empty() {
                println!("configuration unchanged");
            }
            for k in &o.applied {
                println!("applied: {k}");
            }
            for k in &o.next_session {
                println!("applies to the next session: {k}");
            }
            for k in &o.needs_restart {
                println!("needs a restart (systemctl restart obdgw): {k}");
            }
            ExitCode::SUCCESS
        }
        Ok(Response { error: Some(e), .. }) => {
            eprintln!("obdgw reload: refused ({}): {}", e.code, e.message);
            for p in &e.problems {
                eprintln!("  {p}");
            }
            if e.code == "forbidden" {
                ExitCode::from(4)
            } else {
                ExitCode::from(1)
            }
        }
        Ok(_) => {
            eprintln!("obdgw reload: the daemon gave no outcome");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("obdgw reload: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_are_refused_with_reasons() {
        assert_eq!(
            parse_request(br#"{"v":1,"cmd":"status"}"#).unwrap().cmd,
            Command::Status
        );
        assert_eq!(
            parse_request(b"{\"v\":1,\"cmd\":\"reload\"}\n")
                .unwrap()
                .cmd,
            Command::Reload
        );
        assert_eq!(
            parse_request(br#"{"v":2,"cmd":"status"}"#),
            Err(RequestError::Version(2))
        );
        assert!(matches!(
            parse_request(br#"{"v":1,"cmd":"status","x":1}"#),
            Err(RequestError::Malformed(_))
        ));
        assert!(matches!(
            parse_request(br#"{"v":1,"cmd":"format-disk"}"#),
            Err(RequestError::Malformed(_))
        ));
        assert!(matches!(
            parse_request(b"\xff\xfe"),
            Err(RequestError::Malformed(_))
        ));
        assert_eq!(
            parse_request(&vec![b' '; MAX_REQUEST + 1]),
            Err(RequestError::TooLong)
        );
    }

    #[tokio::test]
    async fn bounded_reader_cuts_long_lines() {
        let data = vec![b'a'; MAX_REQUEST * 3];
        let mut rd = BufReader::new(&data[..]);
        let mut line = Vec::new();
        read_line_bounded(&mut rd, &mut line).await.unwrap();
        assert_eq!(line.len(), MAX_REQUEST + 1);
        let mut rd = BufReader::new(&b"{\"v\":1}\nrest"[..]);
        line.clear();
        assert_eq!(read_line_bounded(&mut rd, &mut line).await.unwrap(), 8);
        assert_eq!(line, b"{\"v\":1}\n");
    }
}
