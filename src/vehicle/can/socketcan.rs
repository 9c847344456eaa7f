//! The SocketCAN backend: a Linux CAN network interface (`can0`, `vcan0`) as a [`CanPort`].
//!
//! Owns: [`SocketCanPort`] — a `CAN_RAW` socket (classic, or classic + FD with
//! `CAN_RAW_FD_FRAMES`) opened and configured with the `socketcan` crate, read with our own
//! `recvmsg` so each frame comes with its kernel receive timestamp (`SO_TIMESTAMPNS`) and the
//! socket's drop counter (`SO_RXQ_OVFL`); kernel id filters from router [`IdRule`]s; error
//! frames decoded into the bus state; bus-off recovery; the interface settings (bitrate, FD
//! data bitrate, restart-ms) applied through netlink when configured; and [`RawFrame`], a
//! checked view over the kernel's `can_frame` / `canfd_frame` bytes.
//!
//! Does not own: ISO-TP over the kernel's `CAN_ISOTP` socket, nor the error-frame layout (see
//! [`super::errframe`]) or filter translation (see [`super::kfilter`]).
//!
//! Transmit: a send waits while the interface's transmit queue is full (`ENOBUFS`, retried
//! on the schedule of [`super::tx::TxRetry`], each retry counted in `tx_enobufs_retries`) or
//! while the socket's send buffer is full (`EAGAIN`, waiting for writability), but never
//! beyond the port's deadline (`tx_timeout`): then it fails with [`CanError::TxTimeout`],
//! counted in `tx_timeouts`. The first timeout after a successful send is logged as a
//! warning, the rest at debug level until the queue drains again.
//!
//! Bus-off: when an error frame reports bus-off, the port counts it, logs it and recovers:
//! with `restart_ms` configured the kernel restarts the controller by itself (after that
//! delay, every time, without a limit); otherwise the port restarts it through netlink,
//! which needs CAP_NET_ADMIN, when [`super::restart::RestartPolicy`] says: after a backoff,
//! and at most `busoff_restarts_per_hour` times an hour. Beyond that the port stops
//! restarting, logs once what to check and how to restart by hand, and sets
//! `restart_limit_reached` in its stats. Without CAP_NET_ADMIN, the port logs what the
//! operator must do and sets `recovery_blocked`. Both flags clear when the controller
//! reports error-active again.

use super::errframe::{BusState, BusStateTracker, CAN_ERR_FLAG, CAN_ERR_MASK, ErrorFrame};
use super::kfilter::kernel_filters;
use super::restart::{RestartDecision, RestartPolicy};
use super::tx::{DEFAULT_TX_TIMEOUT, TxRetry};
use super::{CanAnyFrame, CanError, CanPort, CanPortStats, PortCounters};
use crate::router::IdRule;
use crate::router::frame::{CanFdFrame, CanFrame, CanId, Timestamp};
use socketcan::{CanFilter, Socket, SocketOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Size of `struct can_frame`.
pub const CAN_MTU: usize = 16;
/// Size of `struct canfd_frame`; also the MTU of an FD-capable interface.
pub const CANFD_MTU: usize = 72;
const CAN_EFF_FLAG: u32 = 0x8000_0000;
const CAN_RTR_FLAG: u32 = 0x4000_0000;
const CANFD_BRS: u8 = 0x01;
const CANFD_ESI: u8 = 0x02;

/// The MTU of a network interface, from sysfs (72 means CAN FD capable).
pub fn interface_mtu(name: &str) -> io::Result<usize> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "unreadable MTU"))
}

/// Whether this kernel offers `AF_CAN` sockets at all.
pub fn af_can_available() -> bool {
    // SAFETY: plain socket(2) call; the fd is closed at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_CAN,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::CAN_RAW,
        )
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: fd was just returned by socket(2) and is owned here.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    true
}

/// What a frame read from a raw CAN socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawRx {
    Frame(CanAnyFrame),
    Error(ErrorFrame),
}

/// A checked view over the bytes of a `struct can_frame` (16 bytes) or `struct canfd_frame`
/// (72 bytes), as read from or written to a `CAN_RAW` socket (native byte order).
///
/// Layout: `can_id` (u32: bit 31 EFF, bit 30 RTR, bit 29 ERR), `len` (u8), `flags` (FD) /
/// padding, two reserved bytes (`len8_dlc` for classic), then the data (8 or 64 bytes).
#[derive(Clone, Copy, Debug)]
pub struct RawFrame<T: AsRef<[u8]>> {
    buf: T,
}

mod field {
    use std::ops::Range;
    pub const CAN_ID: Range<usize> = 0..4;
    pub const LEN: usize = 4;
    pub const FLAGS: usize = 5;
    pub const DATA: usize = 8;
}

/// Error: bytes that are not a CAN frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RawFrameError {
    #[error("a raw CAN frame is 16 or 72 bytes, got {0}")]
    BadSize(usize),
    #[error("frame length {0} exceeds its frame type")]
    BadLength(u8),
}

impl<T: AsRef<[u8]>> RawFrame<T> {
    /// Check the size (16: classic, 72: FD) and the length field.
    pub fn new_checked(buf: T) -> Result<Self, RawFrameError> {
        let b = buf.as_ref();
        let max = match b.len() {
            CAN_MTU => 8,
            CANFD_MTU => 64,
            n => return Err(RawFrameError::BadSize(n)),
        };
        if b[field::LEN] as usize > max {
            return Err(RawFrameError::BadLength(b[field::LEN]));
        }
        Ok(RawFrame { buf })
    }

    pub fn is_fd(&self) -> bool {
        self.buf.as_ref().len() == CANFD_MTU
    }

    pub fn can_id(&self) -> u32 {
        let b = self.buf.as_ref();
        let mut w = [0u8; 4];
        w.copy_from_slice(&b[field::CAN_ID]);
        u32::from_ne_bytes(w)
    }

    pub fn len(&self) -> usize {
        self.buf.as_ref()[field::LEN] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn flags(&self) -> u8 {
        if self.is_fd() {
            self.buf.as_ref()[field::FLAGS]
        } else {
            0
        }
    }

    /// The payload (`len` bytes; checked in `new_checked`).
    pub fn data(&self) -> &[u8] {
        &self.buf.as_ref()[field::DATA..field::DATA + self.len()]
    }

    /// Decode into a frame or an error frame, with `ts` as its timestamp.
    pub fn parse(&self, ts: Timestamp) -> Result<RawRx, RawFrameError> {
        let raw = self.can_id();
        if raw & CAN_ERR_FLAG != 0 {
            // error frames always carry 8 bytes of detail
            let b = self.buf.as_ref();
            return ErrorFrame::decode(raw, &b[field::DATA..field::DATA + 8])
                .map(RawRx::Error)
                .ok_or(RawFrameError::BadLength(0));
        }
        let id = CanId::from_raw(raw);
        if self.is_fd() {
            let mut f = CanFdFrame::new(id, self.data())
                .map_err(|_| RawFrameError::BadLength(self.len() as u8))?;
            f.brs = self.flags() & CANFD_BRS != 0;
            f.esi = self.flags() & CANFD_ESI != 0;
            Ok(RawRx::Frame(f.with_timestamp(ts).into()))
        } else if raw & CAN_RTR_FLAG != 0 {
            let f = CanFrame::remote(id, self.len() as u8)
                .map_err(|_| RawFrameError::BadLength(self.len() as u8))?;
            Ok(RawRx::Frame(f.with_timestamp(ts).into()))
        } else {
            let f = CanFrame::new(id, self.data())
                .map_err(|_| RawFrameError::BadLength(self.len() as u8))?;
            Ok(RawRx::Frame(f.with_timestamp(ts).into()))
        }
    }
}

/// Encode a frame into `buf`; returns the bytes to write (16 or 72).
pub fn emit_frame(frame: &CanAnyFrame, buf: &mut [u8; CANFD_MTU]) -> usize {
    buf.fill(0);
    let (raw, size) = match frame {
        CanAnyFrame::Classic(f) => {
            let mut raw = f.id().raw();
            if f.is_remote() {
                raw |= CAN_RTR_FLAG;
            }
            buf[field::LEN] = f.dlc();
            buf[field::DATA..field::DATA + f.data().len()].copy_from_slice(f.data());
            (raw, CAN_MTU)
        }
        CanAnyFrame::Fd(f) => {
            buf[field::LEN] = f.data().len() as u8;
            buf[field::FLAGS] =
                (if f.brs { CANFD_BRS } else { 0 }) | (if f.esi { CANFD_ESI } else { 0 });
            buf[field::DATA..field::DATA + f.data().len()].copy_from_slice(f.data());
            (f.id().raw(), CANFD_MTU)
        }
    };
    debug_assert!(raw & CAN_EFF_FLAG == 0 || frame.id().is_extended());
    buf[field::CAN_ID].copy_from_slice(&raw.to_ne_bytes());
    size
}

/// Options of a SocketCAN port.
#[derive(Clone, Debug)]
pub struct SocketCanOptions {
    /// Open with `CAN_RAW_FD_FRAMES`: send and receive FD frames (the interface MTU must be 72).
    pub fd: bool,
    /// Kernel id filters; empty: every id.
    pub filters: Vec<IdRule>,
    /// Receive error frames and track the bus state.
    pub error_frames: bool,
    /// Receive the frames this socket sends (`CAN_RAW_RECV_OWN_MSGS`).
    pub recv_own: bool,
    /// Set the nominal bitrate through netlink.
    pub bitrate: Option<u32>,
    /// Set the FD data bitrate through netlink.
    pub data_bitrate: Option<u32>,
    /// Set the automatic bus-off restart delay through netlink.
    pub restart_ms: Option<u32>,
    /// Restarts this port makes after bus-off within any hour, when the kernel does not
    /// restart by itself (see [`super::restart`]).
    pub busoff_restarts_per_hour: u32,
    /// How long one send may wait for a full transmit queue (see [`super::tx`]).
    pub tx_timeout: Duration,
    /// Socket receive buffer in bytes (`SO_RCVBUFFORCE` when permitted, else `SO_RCVBUF`,
    /// which the kernel caps at `net.core.rmem_max`); the kernel default when absent. A
    /// larger buffer rides out bursts a slow reader would otherwise lose as overruns.
    pub rx_buffer: Option<usize>,
}

impl Default for SocketCanOptions {
    fn default() -> Self {
        SocketCanOptions {
            fd: false,
            filters: Vec::new(),
            error_frames: true,
            recv_own: false,
            bitrate: None,
            data_bitrate: None,
            restart_ms: None,
            busoff_restarts_per_hour: super::restart::DEFAULT_PER_HOUR,
            tx_timeout: DEFAULT_TX_TIMEOUT,
            rx_buffer: None,
        }
    }
}

/// State shared with the recovery task.
#[derive(Debug)]
struct Shared {
    name: String,
    counters: PortCounters,
    tracker: Mutex<BusStateTracker>,
    state_tx: watch::Sender<BusState>,
    recovery_blocked: AtomicBool,
    restart_in_flight: AtomicBool,
    /// The kernel restarts by itself (`restart-ms` configured non-zero).
    auto_restart: bool,
    last_overruns: AtomicU64,
    /// When to restart after bus-off, and when to stop.
    policy: Mutex<RestartPolicy>,
    /// The policy refused a restart and the controller is still off.
    restart_limit_reached: AtomicBool,
    /// Cancelled when the port is dropped: ends a restart waiting for its time.
    closed: CancellationToken,
    /// A send timed out and none has succeeded since (logs the first timeout only).
    tx_stuck: AtomicBool,
}

/// A SocketCAN interface as a [`CanPort`].
#[derive(Debug)]
pub struct SocketCanPort {
    fd: AsyncFd<OwnedFd>,
    fd_capable: bool,
    /// The transmit deadline of one send.
    tx_timeout: Duration,
    shared: Arc<Shared>,
}

impl Drop for SocketCanPort {
    fn drop(&mut self) {
        self.shared.closed.cancel();
    }
}

fn io_err<'a>(iface: &'a str, op: &'static str) -> impl FnOnce(io::Error) -> CanError + 'a {
    move |source| CanError::Io {
        iface: iface.to_string(),
        op,
        source,
    }
}

fn nl_denied(e: &socketcan::Error) -> bool {
    match e {
        socketcan::Error::Io(e) => e.kind() == io::ErrorKind::PermissionDenied,
        socketcan::Error::Nl(e) => e.io_kind() == Some(io::ErrorKind::PermissionDenied),
        _ => false,
    }
}

/// Apply bitrate, data bitrate and restart-ms through netlink (only those given).
fn apply_settings(name: &str, opts: &SocketCanOptions) -> Result<(), CanError> {
    if opts.bitrate.is_none() && opts.data_bitrate.is_none() && opts.restart_ms.is_none() {
        return Ok(());
    }
    let nl = |op: &'static str| {
        move |e: socketcan::Error| CanError::Netlink {
            iface: name.to_string(),
            op,
            reason: if nl_denied(&e) {
                format!(
                    "{e} (needs CAP_NET_ADMIN; or set it with `ip link` and remove the setting)"
                )
            } else {
                e.to_string()
            },
        }
    };
    let iface = socketcan::nl::CanInterface::open(name).map_err(nl("find the interface"))?;
    // bit timing can only change while the interface is down
    iface.bring_down().map_err(nl("bring the interface down"))?;
    if let Some(b) = opts.bitrate {
        iface.set_bitrate(b, None).map_err(nl("set the bitrate"))?;
    }
    if let Some(b) = opts.data_bitrate {
        iface
            .set_ctrlmode(socketcan::nl::CanCtrlMode::Fd, true)
            .map_err(nl("enable CAN FD"))?;
        iface
            .set_data_bitrate(b, None)
            .map_err(nl("set the data bitrate"))?;
    }
    if let Some(ms) = opts.restart_ms {
        iface.set_restart_ms(ms).map_err(nl("set restart-ms"))?;
    }
    iface.bring_up().map_err(nl("bring the interface up"))?;
    Ok(())
}

impl SocketCanPort {
    /// Open `name`, apply the configured interface settings, filters and options. Must be
    /// called inside a tokio runtime.
    pub fn open(name: &str, opts: SocketCanOptions) -> Result<Self, CanError> {
        apply_settings(name, &opts)?;
        let mtu = interface_mtu(name).ok();
        if opts.fd && mtu.is_some_and(|m| m < CANFD_MTU) {
            return Err(CanError::FdNotSupported(name.to_string()));
        }
        let filters: Vec<CanFilter> = kernel_filters(&opts.filters)
            .map_err(|e| CanError::Invalid {
                spec: name.to_string(),
                reason: e.to_string(),
            })?
            .into_iter()
            .map(|f| CanFilter::new(f.id, f.mask))
            .collect();
        let owned: OwnedFd = if opts.fd {
            let s = socketcan::CanFdSocket::open(name)
                .map_err(io_err(name, "open a CAN_RAW FD socket"))?;
            configure(&s, name, &filters, &opts)?;
            // SAFETY: into_raw_fd hands over ownership of a valid, open fd.
            unsafe { OwnedFd::from_raw_fd(s.into_raw_fd()) }
        } else {
            let s =
                socketcan::CanSocket::open(name).map_err(io_err(name, "open a CAN_RAW socket"))?;
            configure(&s, name, &filters, &opts)?;
            // SAFETY: as above.
            unsafe { OwnedFd::from_raw_fd(s.into_raw_fd()) }
        };
        // SAFETY: `owned` is a valid open fd; AsyncFd owns it until dropped and OwnedFd always
        // returns that same fd.
        let fd = unsafe {
            AsyncFd::register_with_interest(owned, Interest::READABLE | Interest::WRITABLE)
        }
        .map_err(|e| io_err(name, "register with the tokio reactor")(e.into()))?;
        let (state_tx, _) = watch::channel(BusState::ErrorActive);
        Ok(SocketCanPort {
            fd,
            fd_capable: opts.fd,
            tx_timeout: opts.tx_timeout,
            shared: Arc::new(Shared {
                name: name.to_string(),
                counters: PortCounters::default(),
                tracker: Mutex::new(BusStateTracker::default()),
                state_tx,
                recovery_blocked: AtomicBool::new(false),
                restart_in_flight: AtomicBool::new(false),
                auto_restart: opts.restart_ms.is_some_and(|ms| ms > 0),
                last_overruns: AtomicU64::new(0),
                policy: Mutex::new(RestartPolicy::new(opts.busoff_restarts_per_hour)),
                restart_limit_reached: AtomicBool::new(false),
                closed: CancellationToken::new(),
                tx_stuck: AtomicBool::new(false),
            }),
        })
    }

    /// The bus state as last reported by an error frame.
    pub fn bus_state(&self) -> BusState {
        *self.shared.state_tx.borrow()
    }

    /// Follow bus state changes.
    pub fn subscribe_state(&self) -> watch::Receiver<BusState> {
        self.shared.state_tx.subscribe()
    }

    fn on_error_frame(&self, ef: ErrorFrame) {
        let sh = &self.shared;
        PortCounters::add(&sh.counters.error_frames, 1);
        let transition = sh
            .tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .on_error_frame(&ef);
        let Some(t) = transition else {
            tracing::debug!(iface = %sh.name, class = format_args!("{:#x}", ef.class), "CAN error frame");
            return;
        };
        sh.state_tx.send_replace(t.to);
        match t.to {
            BusState::BusOff => {
                PortCounters::add(&sh.counters.bus_off, 1);
                tracing::error!(iface = %sh.name, "CAN controller is bus-off");
                self.recover();
            }
            BusState::ErrorActive => {
                sh.recovery_blocked.store(false, Ordering::Relaxed);
                tracing::info!(iface = %sh.name, from = %t.from, "CAN controller is error-active again");
            }
            s => tracing::warn!(iface = %sh.name, from = %t.from, to = %s, "CAN bus state changed"),
        }
        if t.from == BusState::BusOff && t.to != BusState::BusOff {
            lock_policy(sh).on_recovered(tokio::time::Instant::now());
            sh.restart_limit_reached.store(false, Ordering::Relaxed);
        }
    }

    /// Bus-off recovery: leave it to the kernel (restart-ms), or restart through netlink
    /// when the restart policy says (see the module docs).
    fn recover(&self) {
        let sh = self.shared.clone();
        if sh.auto_restart {
            tracing::info!(iface = %sh.name, "the kernel restarts the controller (restart-ms is set; the kernel has no limit on restarts)");
            return;
        }
        if sh.restart_in_flight.swap(true, Ordering::AcqRel) {
            return;
        }
        let now = tokio::time::Instant::now();
        let (decision, per_hour) = {
            let mut p = lock_policy(&sh);
            (p.on_bus_off(now), p.per_hour())
        };
        let at = match decision {
            RestartDecision::RestartAt(at) => at,
            RestartDecision::LimitReached { first } => {
                sh.restart_limit_reached.store(true, Ordering::Relaxed);
                sh.restart_in_flight.store(false, Ordering::Release);
                if first {
                    log_limit_reached(&sh.name, per_hour);
                }
                return;
            }
        };
        tracing::info!(
            iface = %sh.name,
            delay_ms = at.saturating_duration_since(now).as_millis() as u64,
            "bus-off: restarting the controller after a backoff"
        );
        tokio::spawn(async move {
            tokio::select! {
                // the port is gone: nothing to restart for
                _ = sh.closed.cancelled() => return,
                _ = tokio::time::sleep_until(at) => {}
            }
            if *sh.state_tx.borrow() != BusState::BusOff {
                // back meanwhile (restarted by hand): nothing to do
                sh.restart_in_flight.store(false, Ordering::Release);
                return;
            }
            let name = sh.name.clone();
            let result = tokio::task::spawn_blocking(move || {
                socketcan::nl::CanInterface::open(&name).and_then(|i| i.restart())
            })
            .await;
            match result {
                Ok(Ok(())) => {
                    PortCounters::add(&sh.counters.busoff_restarts, 1);
                    tracing::info!(iface = %sh.name, "bus-off: restarted the controller through netlink")
                }
                Ok(Err(e)) if nl_denied(&e) => {
                    sh.recovery_blocked.store(true, Ordering::Relaxed);
                    tracing::error!(
                        iface = %sh.name,
                        "bus-off: cannot restart the controller without CAP_NET_ADMIN; restart it with `ip link set {0} type can restart`, or configure restart_ms for {0} so the kernel restarts it",
                        sh.name
                    );
                }
                Ok(Err(e)) => {
                    sh.recovery_blocked.store(true, Ordering::Relaxed);
                    tracing::error!(iface = %sh.name, error = %e, "bus-off: restarting the controller through netlink failed; restart it with `ip link set {} type can restart`", sh.name);
                }
                Err(e) => {
                    sh.recovery_blocked.store(true, Ordering::Relaxed);
                    tracing::error!(iface = %sh.name, error = %e, "bus-off: the restart task failed");
                }
            }
            sh.restart_in_flight.store(false, Ordering::Release);
        });
    }

    /// The error of a send that missed its deadline; counts and logs it.
    fn tx_timed_out(&self, retries: u32) -> CanError {
        let sh = &self.shared;
        PortCounters::add(&sh.counters.tx_timeouts, 1);
        let e = CanError::TxTimeout {
            iface: sh.name.clone(),
            timeout: self.tx_timeout,
            retries,
        };
        if !sh.tx_stuck.swap(true, Ordering::Relaxed) {
            tracing::warn!(iface = %sh.name, "{e}; further timeouts are logged at debug level until a frame gets through");
        } else {
            tracing::debug!(iface = %sh.name, "{e}");
        }
        e
    }
}

fn lock_policy(sh: &Shared) -> std::sync::MutexGuard<'_, RestartPolicy> {
    sh.policy.lock().unwrap_or_else(|e| e.into_inner())
}

/// The one error logged when the restart limit stops recovery.
fn log_limit_reached(name: &str, per_hour: u32) {
    if per_hour == 0 {
        tracing::error!(
            iface = %name,
            "bus-off: obdgw does not restart the controller (busoff_restarts_per_hour = 0); check the bitrate and the wiring, then restart it by hand with `ip link set {name} type can restart`"
        );
    } else {
        tracing::error!(
            iface = %name,
            "bus-off again: obdgw restarted the controller {per_hour} times within the last hour (busoff_restarts_per_hour = {per_hour}) and stops restarting it, so that the car's bus is left alone. A controller that goes bus-off again after each restart usually has the wrong bitrate (compare `bitrate` with the car's bus: 500000 for OBD-II on most cars), or the bus has a wiring or termination fault, or is not connected. Check, then restart it by hand with `ip link set {name} type can restart`"
        );
    }
}

fn configure<S: Socket + SocketOptions>(
    s: &S,
    name: &str,
    filters: &[CanFilter],
    opts: &SocketCanOptions,
) -> Result<(), CanError> {
    s.set_filters(filters)
        .map_err(io_err(name, "set CAN_RAW_FILTER"))?;
    s.set_error_filter(if opts.error_frames { CAN_ERR_MASK } else { 0 })
        .map_err(io_err(name, "set CAN_RAW_ERR_FILTER"))?;
    s.set_recv_own_msgs(opts.recv_own)
        .map_err(io_err(name, "set CAN_RAW_RECV_OWN_MSGS"))?;
    s.set_recv_timestamp(true)
        .map_err(io_err(name, "set SO_TIMESTAMPNS"))?;
    s.set_socket_option_int(libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)
        .map_err(io_err(name, "set SO_RXQ_OVFL"))?;
    if let Some(bytes) = opts.rx_buffer {
        let v = bytes.min(i32::MAX as usize / 2) as i32;
        if s.set_socket_option_int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, v)
            .is_err()
        {
            s.set_socket_option_int(libc::SOL_SOCKET, libc::SO_RCVBUF, v)
                .map_err(io_err(name, "set SO_RCVBUF"))?;
        }
    }
    s.set_nonblocking(true)
        .map_err(io_err(name, "set O_NONBLOCK"))?;
    Ok(())
}

/// What one `recvmsg` returned.
struct Received {
    len: usize,
    timestamp: Option<Timestamp>,
    drops: Option<u32>,
}

/// Control buffer for `recvmsg`, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct Control([u8; 128]);

fn recv_raw(fd: RawFd, buf: &mut [u8; CANFD_MTU]) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = Control([0; 128]);
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len() as _;
    // SAFETY: every pointer in msg points into live buffers of the lengths given.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Received {
        len: n as usize,
        timestamp: None,
        drops: None,
    };
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, bounded by
    // msg_controllen; each payload is read unaligned with its documented type.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let h = &*c;
            if h.cmsg_level == libc::SOL_SOCKET {
                let data = libc::CMSG_DATA(c);
                if h.cmsg_type == libc::SCM_TIMESTAMPNS
                    && h.cmsg_len as usize
                        >= libc::CMSG_LEN(std::mem::size_of::<libc::timespec>() as u32) as usize
                {
                    let ts: libc::timespec = std::ptr::read_unaligned(data.cast());
                    out.timestamp = Some(Timestamp(
                        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
                    ));
                } else if h.cmsg_type == libc::SO_RXQ_OVFL
                    && h.cmsg_len as usize >= libc::CMSG_LEN(4) as usize
                {
                    out.drops = Some(std::ptr::read_unaligned(data.cast::<u32>()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(out)
}

fn now_realtime() -> Timestamp {
    Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    )
}

impl CanPort for SocketCanPort {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn fd_capable(&self) -> bool {
        self.fd_capable
    }

    async fn send(&self, frame: CanAnyFrame) -> Result<(), CanError> {
        if frame.is_fd() && !self.fd_capable {
            return Err(CanError::FdNotSupported(self.shared.name.clone()));
        }
        let mut buf = [0u8; CANFD_MTU];
        let size = emit_frame(&frame, &mut buf);
        let mut retry = TxRetry::new(tokio::time::Instant::now(), self.tx_timeout);
        let deadline = retry.deadline();
        let attempts = async {
            loop {
                // Waits for writability while the socket's send buffer is full (EAGAIN).
                let r = self
                    .fd
                    .async_io(Interest::WRITABLE, |fd| {
                        // SAFETY: buf holds `size` initialised bytes.
                        let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), size) };
                        if n < 0 {
                            Err(io::Error::last_os_error())
                        } else {
                            Ok(n as usize)
                        }
                    })
                    .await;
                match r {
                    Ok(n) if n == size => return Ok(()),
                    Ok(n) => {
                        return Err(Some(CanError::Io {
                            iface: self.shared.name.clone(),
                            op: "write",
                            source: io::Error::other(format!("short write of {n} of {size} bytes")),
                        }));
                    }
                    // The interface's transmit queue is full: SocketCAN reports ENOBUFS rather
                    // than blocking. Retry on the schedule, until the deadline.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        match retry.on_full(tokio::time::Instant::now()) {
                            Some(at) => {
                                PortCounters::add(&self.shared.counters.tx_enobufs_retries, 1);
                                tokio::time::sleep_until(at).await;
                            }
                            None => return Err(None),
                        }
                    }
                    Err(e)
                        if e.raw_os_error() == Some(libc::ENETDOWN)
                            && self.bus_state() == BusState::BusOff =>
                    {
                        return Err(Some(CanError::BusOff(self.shared.name.clone())));
                    }
                    Err(e) => return Err(Some(io_err(&self.shared.name, "write")(e))),
                }
            }
        };
        // `Err(None)`: the deadline passed (in a retry, or waiting for writability).
        let r = match tokio::time::timeout_at(deadline, attempts).await {
            Ok(r) => r,
            Err(_) => Err(None),
        };
        match r {
            Ok(()) => {
                PortCounters::add(&self.shared.counters.tx_frames, 1);
                if self.shared.tx_stuck.swap(false, Ordering::Relaxed) {
                    tracing::info!(iface = %self.shared.name, "frames get through again");
                }
                Ok(())
            }
            Err(Some(e)) => Err(e),
            Err(None) => Err(self.tx_timed_out(retry.retries())),
        }
    }

    async fn recv(&self) -> Result<CanAnyFrame, CanError> {
        let mut buf = [0u8; CANFD_MTU];
        loop {
            let rx = self
                .fd
                .async_io(Interest::READABLE, |fd| recv_raw(fd.as_raw_fd(), &mut buf))
                .await
                .map_err(io_err(&self.shared.name, "recvmsg"))?;
            if let Some(d) = rx.drops {
                self.shared
                    .last_overruns
                    .fetch_max(d as u64, Ordering::Relaxed);
            }
            let view = match RawFrame::new_checked(&buf[..rx.len]) {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(iface = %self.shared.name, error = %e, "ignoring a malformed frame");
                    continue;
                }
            };
            match view.parse(rx.timestamp.unwrap_or_else(now_realtime)) {
                Ok(RawRx::Frame(f)) => {
                    PortCounters::add(&self.shared.counters.rx_frames, 1);
                    return Ok(f);
                }
                Ok(RawRx::Error(ef)) => self.on_error_frame(ef),
                Err(e) => {
                    tracing::debug!(iface = %self.shared.name, error = %e, "ignoring a malformed frame")
                }
            }
        }
    }

    fn stats(&self) -> CanPortStats {
        let sh = &self.shared;
        let mut s = sh.counters.snapshot();
        s.overruns = sh.last_overruns.load(Ordering::Relaxed);
        s.state = self.bus_state();
        s.recovery_blocked = sh.recovery_blocked.load(Ordering::Relaxed);
        s.restart_limit_reached = sh.restart_limit_reached.load(Ordering::Relaxed);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_classic_bytes() {
        let f: CanAnyFrame = CanFrame::new(CanId::standard(0x7E8).unwrap(), &[1, 2, 3])
            .unwrap()
            .into();
        let mut buf = [0u8; CANFD_MTU];
        let n = emit_frame(&f, &mut buf);
        assert_eq!(n, 16);
        let mut want = [0u8; 16];
        want[..4].copy_from_slice(&0x7E8u32.to_ne_bytes());
        want[4] = 3;
        want[8..11].copy_from_slice(&[1, 2, 3]);
        assert_eq!(&buf[..16], &want);
        let v = RawFrame::new_checked(&buf[..n]).unwrap();
        assert_eq!(
            v.parse(Timestamp(5)).unwrap(),
            RawRx::Frame(f.with_timestamp(Timestamp(5)))
        );
    }

    #[test]
    fn golden_fd_extended_and_remote() {
        let mut fd = CanFdFrame::new(CanId::extended(0x18DA_F110).unwrap(), &[0xAA; 12]).unwrap();
        fd.esi = true;
        let f: CanAnyFrame = fd.into();
        let mut buf = [0u8; CANFD_MTU];
        assert_eq!(emit_frame(&f, &mut buf), 72);
        assert_eq!(
            u32::from_ne_bytes(buf[..4].try_into().unwrap()),
            0x98DA_F110
        );
        assert_eq!(buf[4], 12);
        assert_eq!(buf[5], CANFD_BRS | CANFD_ESI);
        assert_eq!(
            RawFrame::new_checked(&buf[..])
                .unwrap()
                .parse(Timestamp(0))
                .unwrap(),
            RawRx::Frame(f)
        );

        let r: CanAnyFrame = CanFrame::remote(CanId::standard(0x100).unwrap(), 4)
            .unwrap()
            .into();
        let n = emit_frame(&r, &mut buf);
        assert_eq!(
            u32::from_ne_bytes(buf[..4].try_into().unwrap()),
            0x4000_0100
        );
        assert_eq!(
            RawFrame::new_checked(&buf[..n])
                .unwrap()
                .parse(Timestamp(0))
                .unwrap(),
            RawRx::Frame(r)
        );
    }

    #[test]
    fn error_frames_and_bad_bytes() {
        let mut buf = [0u8; 16];
        buf[..4].copy_from_slice(&(CAN_ERR_FLAG | 0x40).to_ne_bytes());
        buf[4] = 8;
        let v = RawFrame::new_checked(&buf[..]).unwrap();
        let RawRx::Error(e) = v.parse(Timestamp(0)).unwrap() else {
            panic!("not an error frame")
        };
        assert_eq!(e.state(), Some(BusState::BusOff));
        assert_eq!(
            RawFrame::new_checked(&buf[..15]).unwrap_err(),
            RawFrameError::BadSize(15)
        );
        buf[4] = 9;
        assert_eq!(
            RawFrame::new_checked(&buf[..]).unwrap_err(),
            RawFrameError::BadLength(9)
        );
        let mut fdbuf = [0u8; 72];
        fdbuf[4] = 13; // not a valid FD length
        assert!(
            RawFrame::new_checked(&fdbuf[..])
                .unwrap()
                .parse(Timestamp(0))
                .is_err()
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(v) = RawFrame::new_checked(&bytes[..]) {
                let _ = v.parse(Timestamp(0));
            }
        }
    }

    #[tokio::test]
    async fn open_fails_clearly_without_the_interface() {
        // On a kernel without CAN this fails in socket(); with CAN, on the missing interface.
        let e = SocketCanPort::open("nocan9", SocketCanOptions::default()).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("nocan9"), "{text}");
        assert!(matches!(e, CanError::Io { .. }), "{e:?}");
    }
}
