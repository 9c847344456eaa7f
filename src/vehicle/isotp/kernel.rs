//! ISO-TP through the Linux kernel's `CAN_ISOTP` socket (module `can-isotp`, Linux 5.10+).
//!
//! Owns: [`KernelIsoTpSocket`]: opening and configuring the socket from an
//! [`IsoTpConfig`], and `send`/`recv` with the same shape as
//! [`IsoTpHandle`](super::IsoTpHandle).
//!
//! Does not own: the user-space state machine (the kernel runs its own), CAN ports.
//!
//! Mapping of the config: ids and addressing go to `bind` and `CAN_ISOTP_OPTS`
//! (`EXTEND_ADDR`/`RX_EXT_ADDR`, `TX_PADDING`), our BS/STmin/N_WFTmax to
//! `CAN_ISOTP_RECV_FC`, the FD mode to `CAN_ISOTP_LL_OPTS` (MTU 72, `tx_dl`). The kernel's
//! N_As/N_Bs/N_Cr are fixed (1 s); `max_pdu_len` sizes our receive buffer and bounds our
//! sends, and the kernel has its own limit (a PDU above it gets FC OVERFLOW or EMSGSIZE).
//!
//! Sends use `CAN_ISOTP_WAIT_TX_DONE`, so `send` returns only when the kernel has sent the
//! whole PDU or failed; that `write` blocks even on a non-blocking socket, so it runs on
//! tokio's blocking pool. Receives go through `AsyncFd`. The kernel reports protocol
//! errors through the socket's pending error, which the next `send` or `recv` returns,
//! whichever comes first: ECOMM (N_Bs timeout), ETIMEDOUT (N_Cr timeout), EMSGSIZE (FC
//! OVERFLOW), EILSEQ (wrong SN), EBADMSG (bad flow status). A failed reception raises only
//! EPOLLERR, so `recv` waits for readable *or* error readiness.

use super::channel::IsoTpError;
use super::config::IsoTpConfig;
use crate::router::frame::IsoTpAddr;
use bytes::{Bytes, BytesMut};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

const SOL_CAN_BASE: libc::c_int = 100;
const CAN_ISOTP: libc::c_int = 6;
const SOL_CAN_ISOTP: libc::c_int = SOL_CAN_BASE + CAN_ISOTP;
const CAN_ISOTP_OPTS: libc::c_int = 1;
const CAN_ISOTP_RECV_FC: libc::c_int = 2;
const CAN_ISOTP_LL_OPTS: libc::c_int = 5;

const CAN_ISOTP_EXTEND_ADDR: u32 = 0x002;
const CAN_ISOTP_TX_PADDING: u32 = 0x004;
const CAN_ISOTP_RX_EXT_ADDR: u32 = 0x200;
const CAN_ISOTP_WAIT_TX_DONE: u32 = 0x400;
/// `sizeof(struct canfd_frame)`.
const CANFD_MTU: u8 = 72;

/// `struct sockaddr_can` with the `tp` member of its address union.
#[repr(C, align(8))]
struct SockaddrCanTp {
    can_family: libc::sa_family_t,
    can_ifindex: libc::c_int,
    rx_id: u32,
    tx_id: u32,
    /// Rest of the union (the j1939 member is 16 bytes).
    _pad: [u8; 8],
}

/// `struct can_isotp_options`.
#[repr(C)]
struct IsotpOptions {
    flags: u32,
    frame_txtime: u32,
    ext_address: u8,
    txpad_content: u8,
    rxpad_content: u8,
    rx_ext_address: u8,
}

/// `struct can_isotp_fc_options`.
#[repr(C)]
struct IsotpFcOptions {
    bs: u8,
    stmin: u8,
    wftmax: u8,
}

/// `struct can_isotp_ll_options`.
#[repr(C)]
struct IsotpLlOptions {
    mtu: u8,
    tx_dl: u8,
    tx_flags: u8,
}

fn kernel_err(op: &'static str, e: io::Error) -> IsoTpError {
    match e.raw_os_error() {
        Some(libc::ECOMM) => IsoTpError::TimeoutBs,
        Some(libc::ETIMEDOUT) => IsoTpError::TimeoutCr,
        Some(libc::EMSGSIZE) if op == "send" => IsoTpError::PeerOverflow,
        errno => IsoTpError::Kernel {
            op,
            errno: errno.unwrap_or(0),
            message: e.to_string().into(),
        },
    }
}

fn setsockopt<T>(fd: &OwnedFd, name: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: `val` points to a live, initialised `T` of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_CAN_ISOTP,
            name,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One ISO-TP channel on the kernel's `CAN_ISOTP` socket.
#[derive(Debug)]
pub struct KernelIsoTpSocket {
    fd: Arc<AsyncFd<OwnedFd>>,
    /// One send at a time: the kernel refuses a second while one is in progress.
    tx_lock: tokio::sync::Mutex<()>,
    /// One receiver at a time, owning the reusable receive buffer size.
    rx_lock: tokio::sync::Mutex<()>,
    /// Receive buffer size and send limit: `max_pdu_len`.
    max_pdu: usize,
    addr: IsoTpAddr,
}

impl KernelIsoTpSocket {
    /// Open, configure and bind a `CAN_ISOTP` socket on `iface` (needs a tokio runtime).
    pub fn open(iface: &str, cfg: &IsoTpConfig) -> Result<Self, IsoTpError> {
        cfg.validate()?;
        let name = std::ffi::CString::new(iface).map_err(|_| IsoTpError::Kernel {
            op: "if_nametoindex",
            errno: libc::EINVAL,
            message: format!("interface name {iface:?} contains a NUL byte").into(),
        })?;
        // SAFETY: `name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            let e = io::Error::last_os_error();
            return Err(IsoTpError::Kernel {
                op: "if_nametoindex",
                errno: e.raw_os_error().unwrap_or(0),
                message: format!("CAN interface {iface}: {e}").into(),
            });
        }
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::PF_CAN,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                CAN_ISOTP,
            )
        };
        if raw < 0 {
            return Err(kernel_err(
                "socket(AF_CAN, CAN_ISOTP)",
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let mut flags = CAN_ISOTP_WAIT_TX_DONE;
        let tx_ext = cfg.addressing.tx_ext();
        let rx_ext = cfg.addressing.rx_ext();
        if tx_ext.is_some() {
            flags |= CAN_ISOTP_EXTEND_ADDR | CAN_ISOTP_RX_EXT_ADDR;
        }
        if cfg.padding.is_some() {
            flags |= CAN_ISOTP_TX_PADDING;
        }
        let opts = IsotpOptions {
            flags,
            frame_txtime: 0,
            ext_address: tx_ext.unwrap_or(0),
            txpad_content: cfg.padding.unwrap_or(super::FD_DEFAULT_PAD),
            rxpad_content: 0,
            rx_ext_address: rx_ext.unwrap_or(0),
        };
        setsockopt(&fd, CAN_ISOTP_OPTS, &opts).map_err(|e| kernel_err("CAN_ISOTP_OPTS", e))?;
        let fc = IsotpFcOptions {
            bs: cfg.block_size,
            stmin: cfg.st_min.byte(),
            wftmax: cfg.max_wait_frames.min(255) as u8,
        };
        setsockopt(&fd, CAN_ISOTP_RECV_FC, &fc).map_err(|e| kernel_err("CAN_ISOTP_RECV_FC", e))?;
        if cfg.is_fd() {
            let ll = IsotpLlOptions {
                mtu: CANFD_MTU,
                tx_dl: cfg.tx_dl() as u8,
                tx_flags: 0,
            };
            setsockopt(&fd, CAN_ISOTP_LL_OPTS, &ll)
                .map_err(|e| kernel_err("CAN_ISOTP_LL_OPTS", e))?;
        }
        let addr = SockaddrCanTp {
            can_family: libc::AF_CAN as libc::sa_family_t,
            can_ifindex: ifindex as libc::c_int,
            rx_id: cfg.rx_id.raw(),
            tx_id: cfg.tx_id.raw(),
            _pad: [0; 8],
        };
        // SAFETY: `addr` is a valid sockaddr_can of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const SockaddrCanTp).cast(),
                std::mem::size_of::<SockaddrCanTp>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(kernel_err("bind", io::Error::last_os_error()));
        }
        // SAFETY: `fd` is an open OwnedFd, moved into the AsyncFd, which owns it from now on
        // and always returns the same descriptor.
        let fd = unsafe { AsyncFd::register(fd) }
            .map_err(|e| kernel_err("epoll register", io::Error::from(e)))?;
        Ok(KernelIsoTpSocket {
            fd: Arc::new(fd),
            tx_lock: tokio::sync::Mutex::new(()),
            rx_lock: tokio::sync::Mutex::new(()),
            max_pdu: cfg.max_pdu_len as usize,
            addr: cfg.addr(),
        })
    }

    /// The channel's addresses.
    pub fn addr(&self) -> IsoTpAddr {
        self.addr
    }

    /// Send one PDU; returns when the kernel has transmitted all of it, or its error.
    pub async fn send(&self, data: Bytes) -> Result<(), IsoTpError> {
        if data.is_empty() {
            return Err(IsoTpError::EmptyPdu);
        }
        if data.len() > self.max_pdu {
            return Err(IsoTpError::TooLong {
                len: data.len(),
                max: self.max_pdu as u32,
            });
        }
        let _guard = self.tx_lock.lock().await;
        loop {
            let fd = self.fd.clone();
            let chunk = data.clone();
            let res = tokio::task::spawn_blocking(move || {
                // SAFETY: the buffer is live for the call; the fd is owned by `fd`.
                let n = unsafe {
                    libc::send(
                        fd.get_ref().as_raw_fd(),
                        chunk.as_ptr().cast(),
                        chunk.len(),
                        0,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            })
            .await
            .map_err(|_| IsoTpError::Closed)?;
            match res {
                Ok(_) => return Ok(()),
                // A previous, cancelled send is still in progress: wait for it.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut g = self
                        .fd
                        .writable()
                        .await
                        .map_err(|e| kernel_err("poll", e))?;
                    g.clear_ready();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(kernel_err("send", e)),
            }
        }
    }

    /// The next received PDU, or the kernel's reception error.
    pub async fn recv(&self) -> Result<Bytes, IsoTpError> {
        let _guard = self.rx_lock.lock().await;
        let mut buf = BytesMut::zeroed(self.max_pdu);
        loop {
            // ERROR too: the kernel signals a failed reception (N_Cr, wrong SN) with
            // EPOLLERR only; the recv below then returns the pending error.
            let mut ready = self
                .fd
                .ready(Interest::READABLE | Interest::ERROR)
                .await
                .map_err(|e| kernel_err("poll", e))?;
            let res = ready.try_io(|fd| {
                // SAFETY: `buf` has `buf.len()` writable bytes.
                let n = unsafe {
                    libc::recv(
                        fd.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_TRUNC,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(Ok(n)) if n > buf.len() => {
                    return Err(IsoTpError::BufferOverflow {
                        len: n as u32,
                        max: self.max_pdu as u32,
                    });
                }
                Ok(Ok(n)) => {
                    buf.truncate(n);
                    return Ok(buf.freeze());
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(kernel_err("recv", e)),
                Err(_would_block) => {}
            }
        }
    }
}
