//! SocketCAN tests against a real Linux kernel (vcan, CAN_RAW, CAN FD, can-utils).
//!
//! They need a kernel with CAN: run them with `tests/vm/cargo-test.sh`, which boots a
//! Debian kernel in qemu and sets `TEST_OBDGW_REQUIRE_CAN=1` (and `OBDGW_REQUIRE_CAN=1`). On
//! a kernel without `AF_CAN`, each test prints a loud SKIPPED line and passes, unless one of
//! those is `1`, where it fails.
//!
//! Tests run in parallel: each uses its own vcan interface (created here, as root) except
//! the basic one, which uses the guest's `vcan0`.

use obdgw::router::frame::{CanFdFrame, CanFrame, CanId};
use obdgw::vehicle::can::candump::parse_line;
use obdgw::vehicle::can::errframe::{self, BusState, ErrorFrame};
mod common;

use common::can_available;
use obdgw::vehicle::can::socketcan::{SocketCanOptions, SocketCanPort};
use obdgw::vehicle::can::{AnyCanPort, CanAnyFrame, CanError, CanPort, open_port};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A fresh vcan interface with the FD MTU, up (the guest runs tests as root).
fn make_vcan(name: &str) {
    let _ = Command::new("ip")
        .args(["link", "del", name])
        .stderr(Stdio::null())
        .status();
    for args in [
        vec!["link", "add", name, "type", "vcan"],
        vec!["link", "set", name, "mtu", "72"],
        vec!["link", "set", name, "up"],
    ] {
        let st = Command::new("ip").args(&args).status().expect("run ip");
        assert!(st.success(), "ip {args:?} failed");
    }
}

fn sid(id: u16) -> CanId {
    CanId::standard(id).unwrap()
}

fn fd_opts() -> SocketCanOptions {
    SocketCanOptions {
        fd: true,
        ..SocketCanOptions::default()
    }
}

async fn recv(p: &impl CanPort) -> CanAnyFrame {
    tokio::time::timeout(Duration::from_secs(10), p.recv())
        .await
        .expect("no frame within 10 s")
        .expect("recv failed")
}

#[tokio::test]
async fn classic_and_fd_frames_on_vcan0() {
    if !can_available("classic_and_fd_frames_on_vcan0") {
        return;
    }
    let a = SocketCanPort::open("vcan0", fd_opts()).unwrap();
    let b = SocketCanPort::open("vcan0", fd_opts()).unwrap();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let classic: CanAnyFrame = CanFrame::new(sid(0x7E0), &[0x02, 0x10, 0x03])
        .unwrap()
        .into();
    let ext: CanAnyFrame = CanFrame::new(
        CanId::extended(0x18DA_10F1).unwrap(),
        &[1, 2, 3, 4, 5, 6, 7, 8],
    )
    .unwrap()
    .into();
    let remote: CanAnyFrame = CanFrame::remote(sid(0x123), 4).unwrap().into();
    let mut fd = CanFdFrame::new(sid(0x7E8), &[0x5A; 64]).unwrap();
    fd.brs = true;
    let mut fd_esi = CanFdFrame::new(CanId::extended(0x1ABC_DEF0).unwrap(), &[7; 12]).unwrap();
    fd_esi.brs = false;
    fd_esi.esi = true;
    let sent = [classic, ext, remote, fd.into(), fd_esi.into()];
    for f in sent {
        a.send(f).await.unwrap();
    }
    for want in sent {
        let got = recv(&b).await;
        assert_eq!(got.with_timestamp(Default::default()), want);
        // kernel receive timestamp, realtime clock
        assert!(
            got.timestamp().0 >= before,
            "timestamp {:?} before the test",
            got.timestamp()
        );
    }
    // the sender does not receive its own frames (no CAN_RAW_RECV_OWN_MSGS)
    assert!(
        tokio::time::timeout(Duration::from_millis(200), a.recv())
            .await
            .is_err()
    );
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.tx_frames, 5);
    assert_eq!(sb.rx_frames, 5);
    assert_eq!(sb.overruns, 0);
    assert_eq!(sb.state, BusState::ErrorActive);

    // open_port picks SocketCAN for a plain name, with FD from the MTU
    let p = open_port("vcan0").await.unwrap();
    assert!(matches!(p, AnyCanPort::SocketCan(_)));
    assert!(p.fd_capable());
    assert_eq!(p.name(), "vcan0");
}

#[tokio::test]
async fn classic_socket_and_fd_frames() {
    if !can_available("classic_socket_and_fd_frames") {
        return;
    }
    make_vcan("ovc-classic");
    let fdp = SocketCanPort::open("ovc-classic", fd_opts()).unwrap();
    let classic = SocketCanPort::open("ovc-classic", SocketCanOptions::default()).unwrap();
    assert!(!classic.fd_capable());
    let fd: CanAnyFrame = CanFdFrame::new(sid(0x100), &[1; 16]).unwrap().into();
    assert!(matches!(
        classic.send(fd).await,
        Err(CanError::FdNotSupported(_))
    ));
    // the kernel does not deliver FD frames to a classic socket
    fdp.send(fd).await.unwrap();
    fdp.send(CanFrame::new(sid(0x101), &[2]).unwrap().into())
        .await
        .unwrap();
    assert_eq!(recv(&classic).await.id(), sid(0x101));

    // a classic-MTU interface refuses an FD port
    Command::new("ip")
        .args(["link", "set", "ovc-classic", "down"])
        .status()
        .unwrap();
    Command::new("ip")
        .args(["link", "set", "ovc-classic", "mtu", "16"])
        .status()
        .unwrap();
    Command::new("ip")
        .args(["link", "set", "ovc-classic", "up"])
        .status()
        .unwrap();
    assert!(matches!(
        SocketCanPort::open("ovc-classic", fd_opts()),
        Err(CanError::FdNotSupported(_))
    ));
    let auto = open_port("ovc-classic").await.unwrap();
    assert!(!auto.fd_capable());
}

#[tokio::test]
async fn kernel_filters_apply() {
    if !can_available("kernel_filters_apply") {
        return;
    }
    make_vcan("ovc-filter");
    let tx = SocketCanPort::open("ovc-filter", fd_opts()).unwrap();
    let rx = SocketCanPort::open(
        "ovc-filter",
        SocketCanOptions {
            fd: true,
            filters: vec![
                "0x7E8-0x7EF".parse().unwrap(),
                "0x18DAF100/0x1FFFFF00".parse().unwrap(),
            ],
            ..SocketCanOptions::default()
        },
    )
    .unwrap();
    let ids = [
        sid(0x100),
        sid(0x7E9),
        sid(0x7DF),
        CanId::extended(0x18DA_F110).unwrap(),
        sid(0x7F0),
        CanId::extended(0x18DA_1100).unwrap(),
        sid(0x7EF),
    ];
    for id in ids {
        tx.send(CanFrame::new(id, &[0]).unwrap().into())
            .await
            .unwrap();
    }
    // an end marker that passes, to know everything before it was filtered
    tx.send(CanFrame::new(sid(0x7E8), &[0xFF]).unwrap().into())
        .await
        .unwrap();
    let mut got = Vec::new();
    loop {
        let f = recv(&rx).await;
        if f.data() == [0xFF] {
            break;
        }
        got.push(f.id());
    }
    assert_eq!(
        got,
        vec![
            sid(0x7E9),
            CanId::extended(0x18DA_F110).unwrap(),
            sid(0x7EF)
        ]
    );
    // the filtering happened in the kernel: our port never saw the others
    assert_eq!(rx.stats().rx_frames, 4);
}

/// Write raw bytes (e.g. an error frame) on `iface` with a plain CAN_RAW socket.
fn write_raw(iface: &str, can_id: u32, data: [u8; 8]) {
    use socketcan::Socket;
    use std::os::fd::AsRawFd;
    let s = socketcan::CanSocket::open(iface).unwrap();
    let mut buf = [0u8; 16];
    buf[..4].copy_from_slice(&can_id.to_ne_bytes());
    buf[4] = 8;
    buf[8..].copy_from_slice(&data);
    // SAFETY: writes 16 initialised bytes to an open socket.
    let n = unsafe { libc::write(s.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    assert_eq!(
        n,
        16,
        "writing a raw frame: {}",
        std::io::Error::last_os_error()
    );
}

#[tokio::test]
async fn error_frames_decode_into_bus_state() {
    if !can_available("error_frames_decode_into_bus_state") {
        return;
    }
    make_vcan("ovc-err");
    let port = SocketCanPort::open("ovc-err", SocketCanOptions::default()).unwrap();
    let mut states = port.subscribe_state();
    let marker = |b: u8| -> (u32, [u8; 8]) { (0x321, [b; 8]) };

    let passive = ErrorFrame {
        class: errframe::CAN_ERR_CRTL,
        controller: errframe::crtl::TX_PASSIVE,
        counters: Some((130, 4)),
    };
    let (id, data) = passive.encode();
    write_raw("ovc-err", id, data);
    let (mid, mdata) = marker(1);
    write_raw("ovc-err", mid, mdata);
    // recv consumes the error frame on the way to the data frame
    assert_eq!(recv(&port).await.data(), &[1; 8]);
    assert_eq!(port.bus_state(), BusState::ErrorPassive);
    assert_eq!(*states.borrow_and_update(), BusState::ErrorPassive);

    let off = ErrorFrame {
        class: errframe::CAN_ERR_BUSOFF,
        ..ErrorFrame::default()
    };
    let (id, data) = off.encode();
    write_raw("ovc-err", id, data);
    let (mid, mdata) = marker(2);
    write_raw("ovc-err", mid, mdata);
    assert_eq!(recv(&port).await.data(), &[2; 8]);
    assert_eq!(port.bus_state(), BusState::BusOff);
    let s = port.stats();
    assert_eq!(s.bus_off, 1);
    assert_eq!(s.error_frames, 2);
    // recovery: no restart-ms, so the port asks netlink to restart; a vcan cannot be
    // restarted, so recovery is reported as blocked
    tokio::time::timeout(Duration::from_secs(10), async {
        while !port.stats().recovery_blocked {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("recovery_blocked never set");

    let restarted = ErrorFrame {
        class: errframe::CAN_ERR_RESTARTED,
        ..ErrorFrame::default()
    };
    let (id, data) = restarted.encode();
    write_raw("ovc-err", id, data);
    let (mid, mdata) = marker(3);
    write_raw("ovc-err", mid, mdata);
    assert_eq!(recv(&port).await.data(), &[3; 8]);
    assert_eq!(port.bus_state(), BusState::ErrorActive);
    assert!(!port.stats().recovery_blocked);

    // a port that does not ask for error frames never sees them
    let quiet = SocketCanPort::open(
        "ovc-err",
        SocketCanOptions {
            error_frames: false,
            ..SocketCanOptions::default()
        },
    )
    .unwrap();
    let (id, data) = off.encode();
    write_raw("ovc-err", id, data);
    let (mid, mdata) = marker(4);
    write_raw("ovc-err", mid, mdata);
    assert_eq!(recv(&quiet).await.data(), &[4; 8]);
    assert_eq!(quiet.stats().error_frames, 0);
    assert_eq!(quiet.bus_state(), BusState::ErrorActive);
}

#[tokio::test]
async fn bus_off_restarts_stop_at_the_hourly_limit() {
    if !can_available("bus_off_restarts_stop_at_the_hourly_limit") {
        return;
    }
    make_vcan("ovc-lim");
    // one restart an hour: the second bus-off within the hour is left alone
    let port = SocketCanPort::open(
        "ovc-lim",
        SocketCanOptions {
            busoff_restarts_per_hour: 1,
            ..SocketCanOptions::default()
        },
    )
    .unwrap();
    let mut n = 0u8;
    let mut inject = |class: u32| {
        let (id, data) = ErrorFrame {
            class,
            ..ErrorFrame::default()
        }
        .encode();
        write_raw("ovc-lim", id, data);
        n += 1;
        write_raw("ovc-lim", 0x321, [n; 8]);
        n
    };

    // The first bus-off: a restart after the first backoff (100 ms). A vcan cannot be
    // restarted through netlink, so recovery is then reported as blocked.
    let m = inject(errframe::CAN_ERR_BUSOFF);
    let started = std::time::Instant::now();
    assert_eq!(recv(&port).await.data(), &[m; 8]);
    assert_eq!(port.bus_state(), BusState::BusOff);
    tokio::time::timeout(Duration::from_secs(10), async {
        while !port.stats().recovery_blocked {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("no restart attempt");
    let took = started.elapsed();
    eprintln!("bus-off to the first restart attempt: {took:?}");
    assert!(took >= Duration::from_millis(100), "{took:?}: no backoff");
    assert!(!port.stats().restart_limit_reached);

    // Back up (as after an operator's restart), then bus-off again within the hour.
    let m = inject(errframe::CAN_ERR_RESTARTED);
    assert_eq!(recv(&port).await.data(), &[m; 8]);
    assert_eq!(port.bus_state(), BusState::ErrorActive);
    assert!(!port.stats().recovery_blocked);
    let m = inject(errframe::CAN_ERR_BUSOFF);
    assert_eq!(recv(&port).await.data(), &[m; 8]);
    let s = port.stats();
    assert_eq!(s.bus_off, 2);
    assert!(s.restart_limit_reached, "{s:?}");
    // no restart is attempted: recovery is not "blocked", it is stopped on purpose
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = port.stats();
    assert!(!s.recovery_blocked && s.restart_limit_reached, "{s:?}");
    assert_eq!(s.busoff_restarts, 0);

    // The operator restarts it by hand: the flag clears.
    let m = inject(errframe::CAN_ERR_RESTARTED);
    assert_eq!(recv(&port).await.data(), &[m; 8]);
    assert!(!port.stats().restart_limit_reached);
}

#[tokio::test]
async fn interface_settings_need_a_real_controller() {
    if !can_available("interface_settings_need_a_real_controller") {
        return;
    }
    make_vcan("ovc-set");
    // vcan has no bit timing: the netlink error names the interface and the operation
    let e = SocketCanPort::open(
        "ovc-set",
        SocketCanOptions {
            bitrate: Some(500_000),
            ..SocketCanOptions::default()
        },
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, CanError::Netlink { .. }), "{e:?}");
    assert!(
        text.contains("ovc-set") && text.contains("bitrate"),
        "{text}"
    );
    // without settings, nothing is touched and the interface opens
    Command::new("ip")
        .args(["link", "set", "ovc-set", "up"])
        .status()
        .unwrap();
    SocketCanPort::open("ovc-set", SocketCanOptions::default()).unwrap();
    // a missing interface is a clear error
    let e = SocketCanPort::open("ovc-none", SocketCanOptions::default()).unwrap_err();
    assert!(e.to_string().contains("ovc-none"), "{e}");
}

#[tokio::test]
async fn cangen_traffic_counted_frame_for_frame() {
    if !can_available("cangen_traffic_counted_frame_for_frame") {
        return;
    }
    make_vcan("ovc-gen");
    let port = SocketCanPort::open(
        "ovc-gen",
        SocketCanOptions {
            fd: true,
            // TCG makes this reader slow; a deep buffer keeps cangen's burst in the kernel
            rx_buffer: Some(8 << 20),
            ..SocketCanOptions::default()
        },
    )
    .unwrap();
    // -g 0: no gap; -I 42A fixed id; -L 8 fixed length; -D i: incrementing payload.
    // (Not -x: that disables loopback, and then nobody on a vcan receives anything.)
    let mut child = Command::new("cangen")
        .args([
            "ovc-gen", "-g", "0", "-n", "1000", "-I", "42A", "-L", "8", "-D", "i",
        ])
        .spawn()
        .expect("run cangen (can-utils)");
    let mut got = 0u32;
    let mut first: Option<u8> = None;
    while got < 1000 {
        let f = recv(&port).await;
        assert_eq!(f.id(), sid(0x42A));
        assert_eq!(f.data().len(), 8);
        // -D i increments the payload: byte 0 counts frames modulo 256
        let b0 = f.data()[0];
        let start = *first.get_or_insert(b0);
        assert_eq!(
            b0,
            start.wrapping_add(got as u8),
            "frame {got} out of order or lost"
        );
        got += 1;
    }
    assert!(child.wait().unwrap().success());
    assert!(
        tokio::time::timeout(Duration::from_millis(300), port.recv())
            .await
            .is_err(),
        "more than 1000 frames"
    );
    let s = port.stats();
    assert_eq!(s.rx_frames, 1000);
    assert_eq!(s.overruns, 0);
}

/// Whether a receive filter `id/mask` is registered on `iface` (a bound candump).
fn filter_registered(iface: &str, id: u32, mask: u32) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/net/can/rcvlist_fil") else {
        return false;
    };
    text.lines().any(|l| {
        let t: Vec<&str> = l.split_whitespace().collect();
        t.len() >= 3
            && t[0] == iface
            && u32::from_str_radix(t[1], 16).is_ok_and(|v| v & 0x1FFF_FFFF == id)
            && u32::from_str_radix(t[2], 16).is_ok_and(|v| v & 0x1FFF_FFFF == mask)
    })
}

#[tokio::test]
async fn candump_sees_our_frames() {
    if !can_available("candump_sees_our_frames") {
        return;
    }
    make_vcan("ovc-dump");
    let port = SocketCanPort::open("ovc-dump", fd_opts()).unwrap();
    const N: usize = 100;
    let mut child = Command::new("candump")
        .args(["-L", "-n", &N.to_string(), "ovc-dump,200:700"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run candump (can-utils)");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    // wait until candump has bound and registered its filter
    tokio::time::timeout(Duration::from_secs(20), async {
        while !filter_registered("ovc-dump", 0x200, 0x700) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("candump never registered its filter");
    // outside the filter: candump must not count these
    port.send(CanFrame::new(sid(0x100), &[0]).unwrap().into())
        .await
        .unwrap();
    let mut sent = Vec::new();
    for i in 0..N {
        let id = sid(0x200 + i as u16);
        let f: CanAnyFrame = if i % 3 == 0 {
            CanFdFrame::new(id, &[i as u8; 24]).unwrap().into()
        } else {
            CanFrame::new(id, &[i as u8, 0xA5, (i >> 8) as u8])
                .unwrap()
                .into()
        };
        port.send(f).await.unwrap();
        sent.push(f);
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "candump failed: {status}");
    let lines = reader.join().unwrap();
    assert_eq!(lines.len(), N, "{lines:?}");
    for (line, want) in lines.iter().zip(&sent) {
        let p = parse_line(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(p.iface, "ovc-dump");
        assert_eq!(
            p.frame.with_timestamp(Default::default()),
            want.with_timestamp(Default::default()),
            "{line}"
        );
    }
}
