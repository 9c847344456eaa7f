//! The whole remote-diagnostics path in one process: a relay on loopback, a simulated car,
//! the gateway side, and the operator endpoint with its local DoIP entity and socketcand
//! server. Testers connect to the operator's servers as they would to a car on the desk.
//!
//! Two cars: a DoIP car (an `Entity` over `sim::ecu::Vehicle`, plus a virtual CAN bus for
//! raw mirroring) and a CAN-only car (`sim::vehicle::serve_can` on a virtual bus), reached
//! through the gateway's DoIP-to-ISO-TP address map. Each side reaches the relay through its
//! own TCP proxy ([`Wan`]) that the tests cut (a killed websocket) or block (a WAN outage).

mod common;

use common::wan::Wan;

use bytes::Bytes;
use obdgw::operator::tunnel::{DiagTiming, DoipServe, Served, start};
use obdgw::relay::{RelayConfig, SessionTokens, StaticTokens};
use obdgw::router::frame::{CanFrame, CanId};
use obdgw::sim::ecu::{DEFAULT_VIN, EcuAction, EcuIndex, Vehicle, default_key};
use obdgw::sim::vehicle::{CanEcus, SimVehicle};
use obdgw::tunnel::client::ClientConfig;
use obdgw::tunnel::gateway::{self, Gateway, GatewayCounters, Keepalive};
use obdgw::vehicle::can::vbus::{PortOptions, VirtualBus, VirtualPort};
use obdgw::vehicle::can::{CanAnyFrame, CanPort};
use obdgw::vehicle::doip::client_core::is_response_pending;
use obdgw::vehicle::doip::entity::{DiagHandler, DiagRequest, Entity, EntityConfig, Replies};
use obdgw::vehicle::doip::{Connection, DoipClientConfig};
use obdgw::wire::tunnel::Token;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const SID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab";
const ENGINE: u16 = 0x1000;
const DOWNLOAD: usize = 1 << 20;
const LIMIT: Duration = Duration::from_secs(90);

/// The simulated car's ECUs behind a DoIP entity.
struct SimCar(Mutex<Vehicle>);

impl SimCar {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vehicle> {
        self.0.lock().unwrap()
    }
}

impl DiagHandler for SimCar {
    async fn handle(&self, req: DiagRequest, replies: Replies) {
        let Some(idx) = self.lock().find_by_doip(req.target) else {
            return;
        };
        let action = self
            .lock()
            .handle(idx, &req.data, std::time::Instant::now());
        match action {
            EcuAction::None => {}
            EcuAction::Respond(b) => {
                let _ = replies.send(b).await;
            }
            EcuAction::Pending { response, .. } => {
                let sid = req.data[0];
                let _ = replies.send(response).await;
                loop {
                    let at = self.lock().poll_at();
                    if let Some(at) = at {
                        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    let out = self.lock().poll(std::time::Instant::now());
                    if let Some((i, b)) = out
                        && i == idx
                    {
                        let done = !is_response_pending(&b, sid);
                        let _ = replies.send(b).await;
                        if done {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Which car the gateway serves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// ECUs behind a DoIP entity (and a bare virtual CAN bus for mirroring).
    Doip,
    /// ECUs on a CAN bus only, reached through `tunnel.doip_map`.
    Can,
}

enum Car {
    Doip(Arc<SimCar>),
    Can(Arc<SimVehicle>),
}

/// What happens after a download block.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// The relay restarts: both sides' websockets die.
    RestartRelay,
    /// The gateway's websocket dies.
    CutGateway,
    /// The operator's websocket dies.
    CutOperator,
    /// The gateway's WAN is down this long (longer than the ECU's S3 of 5 s).
    StallGateway(Duration),
}

struct World {
    relay_addr: SocketAddr,
    relay: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    car: Car,
    car_bus_port: VirtualPort,
    operator: Served,
    gw_wan: Wan,
    op_wan: Wan,
    gw_counters: Arc<GatewayCounters>,
    stop: CancellationToken,
}

fn tokens() -> Arc<StaticTokens> {
    Arc::new(StaticTokens::new([SessionTokens {
        id: SID.into(),
        gateway_token: "gw".into(),
        operator_token: "op".into(),
    }]))
}

async fn relay_on(listener: TcpListener) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let task = tokio::spawn(obdgw::relay::run(
        listener,
        None,
        tokens(),
        RelayConfig::default(),
        stop.clone(),
    ));
    (stop, task)
}

fn client_cfg(addr: SocketAddr) -> ClientConfig {
    let mut c = ClientConfig::new(format!("ws://{addr}/"));
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c
}

async fn world() -> World {
    world_of(Kind::Doip).await
}

async fn world_of(kind: Kind) -> World {
    let stop = CancellationToken::new();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = l.local_addr().unwrap();
    let relay = Some(relay_on(l).await);
    let gw_wan = Wan::to(relay_addr).await;
    let op_wan = Wan::to(relay_addr).await;

    // The car's CAN bus. A virtual bus has no bit rate: give the queues room for a whole
    // ISO-TP block, as a real bus's pacing would.
    let bus = VirtualBus::new("can0");
    let roomy = || PortOptions {
        rx_capacity: 8192,
        loopback: false,
    };
    let gw_port = Arc::new(bus.port_with(roomy()));
    let car_bus_port = bus.port_with(roomy());
    let vehicle = Vehicle::standard(DEFAULT_VIN, std::time::Instant::now());
    let (car, doip_vehicle, map) = match kind {
        Kind::Doip => {
            let car = Arc::new(SimCar(Mutex::new(vehicle)));
            let car_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let car_addr = car_l.local_addr().unwrap();
            let entity = Entity::new(
                EntityConfig {
                    targets: vec![0x1000, 0x1001, 0x1002, 0x1003],
                    announce_to: None,
                    ..EntityConfig::default()
                },
                car.clone(),
            );
            let s = stop.clone();
            tokio::spawn(async move { entity.run(car_l, None, s).await });
            (
                Car::Doip(car),
                Some((car_addr, DoipClientConfig::default())),
                vec![],
            )
        }
        Kind::Can => {
            // The same ECUs, at the DoIP addresses the DoIP car uses, through the address map.
            let mut map: Vec<_> = obdgw::demo::doip_map(&vehicle, "can0")
                .iter()
                .map(|m| m.resolve().unwrap())
                .collect();
            // An address mapped to ids no ECU answers on (a module that is not fitted).
            let mut absent = obdgw::demo::doip_map(&vehicle, "can0")[0].clone();
            (absent.address, absent.tx_id, absent.rx_id) = (ABSENT, 0x7E5, 0x7ED);
            map.push(absent.resolve().unwrap());
            let sim = SimVehicle::new(vehicle);
            tokio::spawn(sim.clone().run_timers(stop.clone()));
            let sim_port = Arc::new(bus.port_with(roomy()));
            // Channels open before anything is sent: no request can go unrouted.
            let ecus = CanEcus::open(sim.clone(), sim_port).unwrap();
            let s = stop.clone();
            tokio::spawn(async move { ecus.serve(s).await });
            (Car::Can(sim), None, map)
        }
    };

    // The gateway side.
    let mut gw = Gateway::new(
        doip_vehicle,
        vec![("can0".to_string(), gw_port)],
        obdgw::tunnel::policy::PolicyConfig::lab(),
    );
    gw.doip_map = map;
    gw.keepalive = Keepalive {
        every: Duration::from_millis(1000),
        bound: Duration::from_secs(30),
    };
    let gw_counters = gw.counters.clone();
    let s = stop.clone();
    let gw_url = gw_wan.addr;
    tokio::spawn(async move {
        gateway::run(
            client_cfg(gw_url),
            SID,
            &obdgw::config::Secret::new("gw"),
            gw,
            s,
        )
        .await
    });

    // The operator endpoint.
    let doip_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let doip_u = tokio::net::UdpSocket::bind(doip_l.local_addr().unwrap())
        .await
        .unwrap();
    let cand_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let operator = start(
        client_cfg(op_wan.addr),
        SID,
        Token("op".into()),
        Some(DoipServe {
            listener: doip_l,
            udp: Some(doip_u),
            // The operator announces the remote car's VIN, read through the tunnel.
            config: EntityConfig {
                targets: vec![0x1000, 0x1001, 0x1002, 0x1003, ABSENT],
                announce_to: None,
                ..EntityConfig::default()
            },
            fetch_vin: true,
        }),
        Some((cand_l, vec!["can0".to_string()])),
        DiagTiming::default(),
        stop.clone(),
    )
    .await
    .unwrap();
    tokio::time::timeout(LIMIT, operator.remote.wait_up())
        .await
        .expect("operator never reached the gateway");
    World {
        relay_addr,
        relay,
        car,
        car_bus_port,
        operator,
        gw_wan,
        op_wan,
        gw_counters,
        stop,
    }
}

impl World {
    async fn restart_relay(&mut self) {
        let (s, t) = self.relay.take().unwrap();
        s.cancel();
        t.await.unwrap();
        let l = TcpListener::bind(self.relay_addr).await.unwrap();
        self.relay = Some(relay_on(l).await);
    }

    fn engine_download(&self) -> Option<obdgw::sim::ecu::DownloadSummary> {
        match &self.car {
            Car::Doip(car) => {
                let v = car.lock();
                let idx = v.find_by_doip(ENGINE).unwrap();
                v.ecu(idx).unwrap().last_download()
            }
            Car::Can(sim) => sim.with_vehicle(|v| v.ecu(EcuIndex(0)).unwrap().last_download()),
        }
    }

    async fn fault(&mut self, f: Fault) {
        match f {
            Fault::RestartRelay => self.restart_relay().await,
            Fault::CutGateway => self.gw_wan.cut(),
            Fault::CutOperator => self.op_wan.cut(),
            Fault::StallGateway(d) => {
                self.gw_wan.block(true);
                self.gw_wan.cut();
                let blocked = self.gw_wan.blocked.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    blocked.store(false, Ordering::SeqCst);
                });
            }
        }
    }

    async fn shutdown(mut self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.operator.done).await;
        if let Some((s, t)) = self.relay.take() {
            s.cancel();
            let _ = t.await;
        }
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

async fn req(c: &Connection, data: &[u8]) -> Bytes {
    c.request(ENGINE, Bytes::copy_from_slice(data))
        .await
        .unwrap_or_else(|e| panic!("request {data:02X?}: {e}"))
}

/// Programming session, unlock, erase, download `image`, exit; inject each fault after its
/// block index. Returns the CRC the ECU reported at exit.
async fn flash(w: &mut World, c: &Connection, image: &[u8], faults: &[(usize, Fault)]) -> u32 {
    assert_eq!(&req(c, &[0x10, 0x03]).await[..2], &[0x50, 0x03]);
    assert_eq!(&req(c, &[0x10, 0x02]).await[..2], &[0x50, 0x02]);
    let seed = req(c, &[0x27, 0x01]).await;
    assert_eq!(&seed[..2], &[0x67, 0x01]);
    let key = default_key(1, seed[2..6].try_into().unwrap());
    assert_eq!(
        &req(c, &[&[0x27, 0x02][..], &key].concat()).await[..],
        &[0x67, 0x02]
    );
    // Erase answers 0x78 (locally, from the operator, and from the ECU) then 71 01 FF 00 00.
    assert_eq!(
        &req(c, &[0x31, 0x01, 0xFF, 0x00]).await[..],
        &[0x71, 0x01, 0xFF, 0x00, 0x00]
    );
    let size = (image.len() as u32).to_be_bytes();
    let mut rd = vec![0x34, 0x00, 0x44, 0, 0, 0, 0];
    rd.extend_from_slice(&size);
    let r = req(c, &rd).await;
    assert_eq!(r[0], 0x74, "{r:02X?}");
    let max = u16::from_be_bytes([r[2], r[3]]) as usize;
    let chunk = max - 2;
    for (i, block) in image.chunks(chunk).enumerate() {
        let counter = ((i + 1) & 0xFF) as u8;
        let mut td = Vec::with_capacity(block.len() + 2);
        td.extend_from_slice(&[0x36, counter]);
        td.extend_from_slice(block);
        let r = req(c, &td).await;
        assert_eq!(&r[..], &[0x76, counter], "block {i}");
        for (_, f) in faults.iter().filter(|(at, _)| *at == i) {
            w.fault(*f).await;
        }
    }
    let r = req(c, &[0x37]).await;
    assert_eq!(r[0], 0x77, "{r:02X?}");
    u32::from_be_bytes(r[1..5].try_into().unwrap())
}

fn image() -> Vec<u8> {
    (0..DOWNLOAD)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8)
        .collect()
}

async fn tester(w: &World) -> Connection {
    let cfg = DoipClientConfig {
        tester_address: 0x0E80,
        response_timeout_ms: 5_000,
        ..DoipClientConfig::default()
    };
    Connection::open(w.operator.doip.unwrap(), cfg)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doip_tester_reads_vin_and_downloads_1mib_through_the_tunnel() {
    let mut w = world().await;
    let c = tester(&w).await;
    tokio::time::timeout(LIMIT, async {
        let vin = req(&c, &[0x22, 0xF1, 0x90]).await;
        assert_eq!(&vin[..3], &[0x62, 0xF1, 0x90]);
        assert_eq!(&vin[3..], b"1FTFW1E87MFA17359");
        let dtcs = req(&c, &[0x19, 0x02, 0xFF]).await;
        assert_eq!(&dtcs[..2], &[0x59, 0x02]);
        let img = image();
        let crc = flash(&mut w, &c, &img, &[]).await;
        assert_eq!(crc, crc32(&img), "the ECU's CRC differs from the image's");
        let d = w.engine_download().expect("no download completed");
        assert_eq!(d.size as usize, DOWNLOAD);
        assert_eq!(d.crc32, crc32(&img));
    })
    .await
    .expect("timed out");
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_survives_relay_restarts_mid_transfer() {
    let mut w = world().await;
    let c = tester(&w).await;
    tokio::time::timeout(LIMIT, async {
        let img = image();
        // Three websocket losses (both sides' connections drop with the relay).
        let faults = [20, 100, 200].map(|i| (i, Fault::RestartRelay));
        let crc = flash(&mut w, &c, &img, &faults).await;
        assert_eq!(crc, crc32(&img));
        let d = w.engine_download().expect("no download completed");
        assert_eq!(d.size as usize, DOWNLOAD);
        assert_eq!(
            d.crc32,
            crc32(&img),
            "bytes lost or duplicated across resume"
        );
        // The car's blocks were each written once (a repeat would be counted as a block
        // only if it were new data).
        assert_eq!(d.blocks as usize, DOWNLOAD.div_ceil(4093));
        assert!(
            w.operator.remote.ups() >= 4,
            "the session did not resume after each restart ({} ups)",
            w.operator.remote.ups()
        );
    })
    .await
    .expect("timed out");
    w.shutdown().await;
}

async fn read_msg(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
    let mut buf = Vec::new();
    r.read_until(b'>', &mut buf).await.unwrap();
    String::from_utf8(buf).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketcand_raw_mode_mirrors_the_remote_bus_both_ways() {
    let w = world().await;
    let s = TcpStream::connect(w.operator.socketcand.unwrap())
        .await
        .unwrap();
    let (r, mut wr) = s.into_split();
    let mut r = BufReader::new(r);
    tokio::time::timeout(LIMIT, async {
        assert_eq!(read_msg(&mut r).await, "< hi >");
        wr.write_all(b"< open can0 >").await.unwrap();
        assert_eq!(read_msg(&mut r).await, "< ok >");
        wr.write_all(b"< rawmode >").await.unwrap();
        assert_eq!(read_msg(&mut r).await, "< ok >");
        while w.operator.remote.channels() == 0 {
            tokio::task::yield_now().await;
        }
        // The car's bus → the operator's socketcand client.
        for i in 0..50u8 {
            let f = CanFrame::new(CanId::standard(0x100 + i as u16).unwrap(), &[i, 0xAA]).unwrap();
            w.car_bus_port.send(CanAnyFrame::Classic(f)).await.unwrap();
        }
        for i in 0..50u8 {
            let m = read_msg(&mut r).await;
            let want_id = format!("< frame {:X} ", 0x100 + i as u16);
            assert!(m.starts_with(&want_id), "frame {i}: {m}");
            assert!(m.ends_with(&format!(" {i:02X}AA >")), "frame {i}: {m}");
        }
        // The operator → the car's bus.
        wr.write_all(b"< send 7DF 3 02 01 0D >").await.unwrap();
        let got = w.car_bus_port.recv().await.unwrap();
        assert_eq!(got.id(), CanId::standard(0x7DF).unwrap());
        assert_eq!(got.data(), &[0x02, 0x01, 0x0D]);
    })
    .await
    .expect("timed out");
    drop(wr);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_doipclient_udsoncan_flashes_through_the_tunnel() {
    let Some(python) =
        common::interop_python("python_doipclient_udsoncan_flashes_through_the_tunnel")
    else {
        return;
    };
    let w = world().await;
    let port = w.operator.doip.unwrap().port().to_string();
    let size = DOWNLOAD.to_string();
    let child = tokio::process::Command::new(python)
        .arg(common::interop_script("tunnel_doip_flash.py"))
        .args(["127.0.0.1", &port, "0x1000", &size])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("python tester timed out")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python tester failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |k: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {k} in:\n{stdout}"))
    };
    assert_eq!(line("ANNOUNCED_VIN"), "1FTFW1E87MFA17359");
    assert_eq!(line("UDS_VIN"), "1FTFW1E87MFA17359");
    assert_eq!(line("ERASE"), "True");
    let sent = line("SENT_CRC");
    assert_eq!(
        line("ECU_CRC"),
        sent,
        "the ECU received other bytes than were sent"
    );
    let d = w.engine_download().expect("no download completed");
    assert_eq!(d.size as usize, DOWNLOAD);
    assert_eq!(format!("{:08x}", d.crc32), sent);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_can_socketcand_through_the_tunnel() {
    let Some(python) = common::interop_python("python_can_socketcand_through_the_tunnel") else {
        return;
    };
    let w = world().await;
    let child = tokio::process::Command::new(python)
        .arg(common::interop_script("socketcand_client.py"))
        .args([
            "127.0.0.1",
            &w.operator.socketcand.unwrap().port().to_string(),
            "can0",
            "200",
            "100",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Play probe frames until the client reports that frames reach it through the
    // tunnel (the mirror channel is open end to end), then the counted frames.
    let mut child = child;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdout = String::new();
    tokio::time::timeout(LIMIT, async {
        let probe = CanFrame::new(CanId::standard(0x0AA).unwrap(), &[0]).unwrap();
        loop {
            w.car_bus_port
                .send(CanAnyFrame::Classic(probe))
                .await
                .unwrap();
            match tokio::time::timeout(Duration::from_millis(50), lines.next_line()).await {
                Ok(Ok(Some(l))) if l.trim() == "READY" => break,
                Ok(Ok(Some(l))) => stdout.push_str(&l),
                Ok(Ok(None)) | Ok(Err(_)) => panic!("python-can exited before READY"),
                Err(_) => {}
            }
        }
        for i in 0..200u32 {
            let id = 0x100 + (i % 0x100) as u16;
            let f = CanFrame::new(CanId::standard(id).unwrap(), &[i as u8, 0xAA]).unwrap();
            w.car_bus_port.send(CanAnyFrame::Classic(f)).await.unwrap();
        }
        let mut i = 0u32;
        while i < 100 {
            let got = w.car_bus_port.recv().await.unwrap();
            if got.id() == CanId::standard(0x0AA).unwrap() {
                continue;
            }
            assert_eq!(got.id(), CanId::standard(0x7DF).unwrap());
            assert_eq!(got.data(), &[0x02, 0x01, i as u8]);
            i += 1;
        }
    })
    .await
    .expect("timed out");
    while let Ok(Some(l)) = lines.next_line().await {
        stdout.push_str(&l);
    }
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "python-can: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"received\": 200"), "{stdout}");
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfigured_interface_is_refused_with_a_clear_error() {
    let w = world().await;
    let s = TcpStream::connect(w.operator.socketcand.unwrap())
        .await
        .unwrap();
    let (r, mut wr) = s.into_split();
    let mut r = BufReader::new(r);
    tokio::time::timeout(LIMIT, async {
        assert_eq!(read_msg(&mut r).await, "< hi >");
        wr.write_all(b"< open can7 >").await.unwrap();
        let m = read_msg(&mut r).await;
        assert!(m.starts_with("< error"), "{m}");
    })
    .await
    .expect("timed out");
    w.shutdown().await;
}

async fn vin_dtcs_and_download(kind: Kind) {
    let mut w = world_of(kind).await;
    let c = tester(&w).await;
    tokio::time::timeout(LIMIT, async {
        let vin = req(&c, &[0x22, 0xF1, 0x90]).await;
        assert_eq!(
            &vin[..],
            &[&[0x62, 0xF1, 0x90][..], b"1FTFW1E87MFA17359"].concat()[..]
        );
        let dtcs = req(&c, &[0x19, 0x02, 0xFF]).await;
        assert_eq!(&dtcs[..2], &[0x59, 0x02]);
        let img = image();
        let crc = flash(&mut w, &c, &img, &[]).await;
        assert_eq!(crc, crc32(&img), "the ECU's CRC differs from the image's");
        let d = w.engine_download().expect("no download completed");
        assert_eq!((d.size as usize, d.crc32), (DOWNLOAD, crc32(&img)));
    })
    .await
    .expect("timed out");
    w.shutdown().await;
}

/// The DoIP address of a mapped ECU that is not there (a CAN-only car's world).
const ABSENT: u16 = 0x1004;

/// A multi-frame request to a mapped ECU that never sends flow control: the gateway's
/// ISO-TP channel reports `isotp_timeout`, and the tester gets a negative response
/// (generalReject) within seconds instead of response-pending until it gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_error_reaches_the_tester_as_a_negative_response() {
    let w = world_of(Kind::Can).await;
    let c = tester(&w).await;
    let started = std::time::Instant::now();
    // WriteDataByIdentifier with 12 bytes: a first frame that needs flow control.
    let data = [0x2E, 0xF1, 0x98, 1, 2, 3, 4, 5, 6, 7, 8, 9];
    let r = tokio::time::timeout(LIMIT, c.request(ABSENT, Bytes::copy_from_slice(&data)))
        .await
        .expect("no answer at all");
    let r = r.unwrap_or_else(|e| panic!("request failed instead of a negative response: {e}"));
    assert_eq!(&r[..], &[0x7F, 0x2E, 0x10], "{r:02X?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    // A single-frame request it never answers: the gateway's P2 bound (1 s), not the
    // operator's 120 s of invented response-pending.
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        LIMIT,
        c.request(ABSENT, Bytes::from_static(&[0x22, 0xF1, 0x90])),
    )
    .await
    .expect("no answer at all")
    .unwrap_or_else(|e| panic!("request failed instead of a negative response: {e}"));
    assert_eq!(&r[..], &[0x7F, 0x22, 0x10], "{r:02X?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn can_only_car_through_the_address_map_reads_vin_dtcs_and_downloads_1mib() {
    vin_dtcs_and_download(Kind::Can).await;
}

/// Kill the gateway's and the operator's websockets (each several times, and both at once)
/// during a 1 MiB download: every block arrives once, in order, byte-identical.
async fn websocket_kills(kind: Kind) {
    let mut w = world_of(kind).await;
    let c = tester(&w).await;
    tokio::time::timeout(LIMIT, async {
        let img = image();
        let faults = [
            (10, Fault::CutGateway),
            (40, Fault::CutOperator),
            (80, Fault::CutGateway),
            (81, Fault::CutOperator),
            (150, Fault::CutOperator),
            (200, Fault::RestartRelay),
            (230, Fault::CutGateway),
        ];
        let crc = flash(&mut w, &c, &img, &faults).await;
        assert_eq!(crc, crc32(&img));
        let d = w.engine_download().expect("no download completed");
        assert_eq!(
            (d.size as usize, d.crc32),
            (DOWNLOAD, crc32(&img)),
            "bytes lost or duplicated across resume"
        );
        assert_eq!(
            d.blocks as usize,
            DOWNLOAD.div_ceil(4093),
            "a block was written twice or skipped"
        );
        assert!(
            w.operator.remote.ups() >= 3,
            "the session did not come up again after the cuts ({} ups)",
            w.operator.remote.ups()
        );
    })
    .await
    .expect("timed out");
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_either_websocket_mid_download_resumes_on_a_doip_car() {
    websocket_kills(Kind::Doip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_either_websocket_mid_download_resumes_on_a_can_only_car() {
    websocket_kills(Kind::Can).await;
}

/// The gateway's WAN is down for 7 s mid-download, longer than the ECU's S3 (5 s): the
/// gateway's local tester-present keeps the programming session (and the unlocked
/// download) alive, so the download completes after the outage.
async fn wan_stall(kind: Kind) {
    let mut w = world_of(kind).await;
    let c = tester(&w).await;
    tokio::time::timeout(LIMIT, async {
        let img = image();
        let faults = [(60, Fault::StallGateway(Duration::from_secs(7)))];
        let crc = flash(&mut w, &c, &img, &faults).await;
        assert_eq!(crc, crc32(&img));
        let d = w.engine_download().expect("no download completed");
        assert_eq!((d.size as usize, d.crc32), (DOWNLOAD, crc32(&img)));
        let kept = w
            .gw_counters
            .keepalives
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            kept >= 4,
            "the gateway sent {kept} local tester-presents during a 7 s stall (every 1 s)"
        );
    })
    .await
    .expect("timed out");
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecu_session_survives_a_wan_stall_longer_than_s3_on_a_doip_car() {
    wan_stall(Kind::Doip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecu_session_survives_a_wan_stall_longer_than_s3_on_a_can_only_car() {
    wan_stall(Kind::Can).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketcand_isotp_mode_reaches_a_can_ecu_through_the_tunnel() {
    let w = world_of(Kind::Can).await;
    let s = TcpStream::connect(w.operator.socketcand.unwrap())
        .await
        .unwrap();
    let (r, mut wr) = s.into_split();
    let mut r = BufReader::new(r);
    tokio::time::timeout(LIMIT, async {
        assert_eq!(read_msg(&mut r).await, "< hi >");
        wr.write_all(b"< open can0 >").await.unwrap();
        assert_eq!(read_msg(&mut r).await, "< ok >");
        wr.write_all(b"< isotpmode >").await.unwrap();
        assert_eq!(read_msg(&mut r).await, "< ok >");
        // The engine's ids (free again: the operator's VIN read at start closed its
        // mapped channel).
        wr.write_all(b"< isotpconf 7E0 7E8 0 0 0 >").await.unwrap();
        assert_eq!(read_msg(&mut r).await, "< ok >");
        // UDS VIN: a multi-frame answer reassembled at the gateway.
        wr.write_all(b"< sendpdu 22F190 >").await.unwrap();
        let m = read_msg(&mut r).await;
        let hex: String = [&[0x62u8, 0xF1, 0x90][..], DEFAULT_VIN.as_bytes()]
            .concat()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        assert!(m.starts_with("< pdu "), "{m}");
        assert!(m.ends_with(&format!(" {hex} >")), "{m}");
    })
    .await
    .expect("timed out");
    drop(wr);
    w.shutdown().await;
}
