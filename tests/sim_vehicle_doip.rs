//! `obdgw sim vehicle --doip-listen` and `obdgw vin --doip` as separate processes: the
//! simulator binds an ephemeral port and prints it, `obdgw vin` reads the VIN from its
//! identification response or by UDS 0xF190; errors and exit codes; functional requests to
//! 0xE400 answered by every ECU from its own address (with response-pending); SIGTERM.

use bytes::Bytes;
use obdgw::vehicle::doip::{Connection, DoipClientConfig};
use obdgw::wire::doip::{ActivationType, Repr, RoutingActivationCode};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OBDGW: &str = env!("CARGO_BIN_EXE_obdgw");
const VIN: &str = "WVWZZZ1JZXW000001";

/// A running `obdgw sim vehicle`; killed on drop.
struct Sim {
    child: Child,
    addr: SocketAddr,
    stdout: String,
}

impl Sim {
    fn start(extra: &[&str]) -> Sim {
        use std::io::BufRead;
        let mut child = Command::new(OBDGW)
            .args(["sim", "vehicle", "--doip-listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn obdgw sim vehicle");
        let out = child.stdout.take().expect("stdout piped");
        let mut lines = std::io::BufReader::new(out).lines();
        let mut stdout = String::new();
        let mut addr = None;
        // Reads until the ready line (the child prints it once bound); EOF means it died.
        for line in lines.by_ref() {
            let line = line.expect("read simulator stdout");
            stdout.push_str(&line);
            stdout.push('\n');
            if let Some(rest) = line.strip_prefix("obdgw sim vehicle: DoIP on ") {
                let a = rest
                    .split_whitespace()
                    .next()
                    .expect("address after 'DoIP on'");
                addr = Some(a.parse::<SocketAddr>().expect("a socket address"));
            }
            if line == "obdgw sim vehicle: ready" {
                break;
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let addr = addr.unwrap_or_else(|| panic!("no 'DoIP on' line in:\n{stdout}"));
        assert_ne!(addr.port(), 0, "the real port is printed");
        Sim {
            child,
            addr,
            stdout,
        }
    }

    fn target(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn vin(args: &[&str]) -> Output {
    Command::new(OBDGW)
        .arg("vin")
        .args(args)
        .output()
        .expect("run obdgw vin")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn simulator_prints_what_it_serves() {
    let sim = Sim::start(&["--vin", VIN]);
    let s = &sim.stdout;
    assert!(s.contains(&format!("vehicle VIN {VIN}")), "{s}");
    for ecu in ["engine", "transmission", "abs", "body"] {
        assert!(s.contains(ecu), "{ecu} missing in:\n{s}");
    }
    assert!(
        s.contains(&format!(
            "DoIP on {} (TCP and UDP), entity 0x1000",
            sim.addr
        )),
        "{s}"
    );
    assert!(
        s.contains("targets 0x1000 0x1001 0x1002 0x1003 0xE400"),
        "{s}"
    );
}

#[test]
fn vin_from_the_identification_response() {
    let sim = Sim::start(&["--vin", VIN]);
    let out = vin(&["--doip", &sim.target()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{VIN}\n"));
    let err = text(&out.stderr);
    assert!(
        err.contains("from the DoIP vehicle identification response of entity 0x1000"),
        "{err}"
    );
}

#[test]
fn vin_by_uds_f190_from_several_ecus() {
    let sim = Sim::start(&[]);
    let out = vin(&["--doip", &sim.target(), "--uds"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1FTFW1E87MFA17359\n");
    assert!(
        text(&out.stderr).contains("from UDS ReadDataByIdentifier 0xF190 of 0x1000"),
        "{}",
        text(&out.stderr)
    );
    let out = vin(&["--doip", &sim.target(), "--uds", "--target", "0x1003"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1FTFW1E87MFA17359\n");
    assert!(
        text(&out.stderr).contains("of 0x1003"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn vin_unknown_target_is_refused_with_exit_3() {
    let sim = Sim::start(&[]);
    let out = vin(&["--doip", &sim.target(), "--uds", "--target", "0x1234"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(
        err.contains("diagnostic message to 0x1234 refused: unknown target address"),
        "{err}"
    );
}

#[test]
fn vin_nobody_there_exits_1() {
    // A port nobody listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = vin(&["--doip", &format!("127.0.0.1:{port}"), "--timeout", "0.3"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("cannot connect to the DoIP entity"), "{err}");
}

#[test]
fn vin_usage_errors_exit_2() {
    let out = vin(&["--doip", "127.0.0.1", "--timeout=0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--timeout 0 is not a positive number"),
        "{}",
        text(&out.stderr)
    );
    let out = vin(&[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn simulator_refuses_a_malformed_vin() {
    let out = Command::new(OBDGW)
        .args([
            "sim",
            "vehicle",
            "--doip-listen",
            "127.0.0.1:0",
            "--vin",
            "TOO-SHORT",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("--vin \"TOO-SHORT\""), "{err}");
    assert!(err.contains("exactly 17"), "{err}");
}

#[test]
fn simulator_stops_cleanly_on_sigterm_and_sigint() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut sim = Sim::start(&[]);
        let pid = i32::try_from(sim.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        let status = sim.child.wait().unwrap();
        assert!(status.success(), "signal {sig}: {status:?}");
    }
}

async fn read_msg(s: &mut TcpStream) -> Repr {
    let mut header = [0u8; 8];
    s.read_exact(&mut header).await.unwrap();
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let mut msg = header.to_vec();
    msg.resize(8 + len, 0);
    s.read_exact(&mut msg[8..]).await.unwrap();
    Repr::parse_bytes(&Bytes::from(msg), 1 << 20).unwrap().1
}

/// Every diagnostic message of the next `n` (acks skipped), as (source, data).
async fn responses(s: &mut TcpStream, n: usize) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), read_msg(s))
            .await
            .expect("a message within 10 s")
        {
            Repr::DiagnosticMessage { source, data, .. } => out.push((source, data.to_vec())),
            Repr::DiagnosticAck { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

#[tokio::test]
async fn functional_requests_are_answered_by_every_ecu_from_its_address() {
    let sim = Sim::start(&[]);
    let mut s = TcpStream::connect(sim.addr).await.unwrap();
    let activation = Repr::RoutingActivationRequest {
        source: 0x0E00,
        activation_type: ActivationType::DEFAULT,
        reserved: 0,
        oem: None,
    };
    s.write_all(&activation.to_bytes(2)).await.unwrap();
    match read_msg(&mut s).await {
        Repr::RoutingActivationResponse { code, entity, .. } => {
            assert_eq!(code, RoutingActivationCode::SUCCESS);
            assert_eq!(entity, 0x1000);
        }
        other => panic!("unexpected {other:?}"),
    }
    let diag = |data: &'static [u8]| Repr::DiagnosticMessage {
        source: 0x0E00,
        target: 0xE400,
        data: Bytes::from_static(data),
    };
    // TesterPresent: all four ECUs.
    s.write_all(&diag(&[0x3E, 0x00]).to_bytes(2)).await.unwrap();
    let mut got = responses(&mut s, 4).await;
    got.sort();
    let want: Vec<(u16, Vec<u8>)> = (0x1000..=0x1003).map(|a| (a, vec![0x7E, 0x00])).collect();
    assert_eq!(got, want);
    // OBD-II VIN: only the engine has it (the others stay silent to a functional request).
    s.write_all(&diag(&[0x09, 0x02]).to_bytes(2)).await.unwrap();
    let got = responses(&mut s, 1).await;
    assert_eq!(got[0].0, 0x1000);
    assert_eq!(&got[0].1[..3], &[0x49, 0x02, 0x01]);
    assert_eq!(&got[0].1[3..], b"1FTFW1E87MFA17359");
    // ECUReset: every ECU answers 7F 11 78 at once, then 51 01 from the timer task.
    s.write_all(&diag(&[0x11, 0x01]).to_bytes(2)).await.unwrap();
    let got = responses(&mut s, 8).await;
    for a in 0x1000..=0x1003u16 {
        let mine: Vec<&Vec<u8>> = got
            .iter()
            .filter(|(s, _)| *s == a)
            .map(|(_, d)| d)
            .collect();
        assert_eq!(
            mine,
            vec![&vec![0x7F, 0x11, 0x78], &vec![0x51, 0x01]],
            "ECU 0x{a:04X}"
        );
    }
    // Nothing else is owed: the next request gets only its own answers.
    s.write_all(&diag(&[0x3E, 0x00]).to_bytes(2)).await.unwrap();
    assert_eq!(responses(&mut s, 4).await.len(), 4);
}

#[tokio::test]
async fn physical_response_pending_then_final_through_our_client() {
    let sim = Sim::start(&[]);
    let conn = Connection::open(sim.addr, DoipClientConfig::default())
        .await
        .unwrap();
    assert!(conn.nodelay());
    // ECUReset: 0x78 at once, the final 51 01 after 200 ms.
    let r = conn
        .request(0x1001, Bytes::from_static(&[0x11, 0x01]))
        .await
        .unwrap();
    assert_eq!(&r[..], &[0x51, 0x01]);
    // Sessions are per ECU and shared across connections of the one vehicle.
    let r = conn
        .request(0x1002, Bytes::from_static(&[0x10, 0x03]))
        .await
        .unwrap();
    assert_eq!(&r[..2], &[0x50, 0x03]);
    let other = Connection::open(
        sim.addr,
        DoipClientConfig {
            tester_address: 0x0E01,
            ..DoipClientConfig::default()
        },
    )
    .await
    .unwrap();
    let r = other
        .request(0x1002, Bytes::from_static(&[0x22, 0xF1, 0x86]))
        .await
        .unwrap();
    assert_eq!(&r[..], &[0x62, 0xF1, 0x86, 0x03]);
}

/// An in-process simulator whose entity announces `announced` instead of the VIN.
async fn sim_announcing(announced: [u8; 17]) -> (SocketAddr, tokio_util::sync::CancellationToken) {
    use obdgw::sim::ecu::{DEFAULT_VIN, Vehicle};
    use obdgw::sim::vehicle::{DoipEcus, SimVehicle, entity_config};
    use obdgw::vehicle::doip::Entity;
    let sim = SimVehicle::new(Vehicle::standard(
        DEFAULT_VIN,
        tokio::time::Instant::now().into_std(),
    ));
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(sim.clone().run_timers(shutdown.clone()));
    let mut cfg = sim.with_vehicle(|v| entity_config(v, None));
    cfg.vin = announced;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let udp = tokio::net::UdpSocket::bind(addr).await.unwrap();
    let entity = Entity::new(cfg, DoipEcus::new(sim));
    let s = shutdown.clone();
    tokio::spawn(async move { entity.run(listener, Some(udp), s).await });
    (addr, shutdown)
}

fn vin_args(addr: SocketAddr) -> obdgw::vehicle::vin::VinArgs {
    obdgw::vehicle::vin::VinArgs {
        doip: Some(addr.to_string()),
        can: None,
        timeout: 2.0,
        uds: false,
        target: None,
    }
}

#[tokio::test]
async fn vin_falls_back_to_uds_when_the_announcement_has_no_vin() {
    for unset in [[0x00u8; 17], [0xFF; 17]] {
        let (addr, shutdown) = sim_announcing(unset).await;
        let (vin, how) = obdgw::vehicle::vin::read_vin(&vin_args(addr))
            .await
            .unwrap();
        assert_eq!(vin.as_str(), "1FTFW1E87MFA17359");
        assert!(
            how.starts_with("from UDS ReadDataByIdentifier 0xF190 of 0x1000"),
            "{how}"
        );
        shutdown.cancel();
    }
}

#[tokio::test]
async fn vin_malformed_announcement_then_uds_succeeds_or_reports_it() {
    let (addr, shutdown) = sim_announcing(*b"IIIIIIIIIIIIIIIII").await;
    let (vin, how) = obdgw::vehicle::vin::read_vin(&vin_args(addr))
        .await
        .unwrap();
    assert_eq!(vin.as_str(), "1FTFW1E87MFA17359");
    assert!(how.contains("UDS"), "{how}");
    // UDS to a target that stays silent to it (functional address through our physical
    // client: the answers come from 0x1000.., never from 0xE400): the announcement's
    // problem is reported, exit code 4.
    let mut args = vin_args(addr);
    args.timeout = 0.3;
    args.target = Some(0xE400);
    let err = obdgw::vehicle::vin::read_vin(&args).await.unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("DoIP vehicle announcement: malformed VIN"),
        "{msg}"
    );
    assert!(msg.contains("'I' at position"), "{msg}");
    shutdown.cancel();
}
