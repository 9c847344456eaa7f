//! Shared helpers for the DoIP integration tests: an ECU-like handler, an entity on
//! ephemeral loopback ports, and a raw tester that speaks bytes.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use obdgw::vehicle::doip::DoipClientConfig;
use obdgw::vehicle::doip::entity::{DiagHandler, DiagRequest, Entity, EntityConfig, Replies};
use obdgw::wire::doip::{Decoded, DoipCodec, Message, Repr};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub const VIN: &[u8; 17] = b"WOBDGW0TEST000042";
pub const ECU1: u16 = 0x1001;
pub const ECU2: u16 = 0x1002;
/// Configured but reported unreachable by the handler.
pub const ECU_OFF: u16 = 0x10FF;
pub const TESTER: u16 = 0x0E00;

/// An ECU-like handler:
/// - `22 F1 90` answers `62 F1 90` + VIN;
/// - `31 01 xx xx` answers `7F 31 78` twice (1.5 s apart) and then `71 01 xx xx`;
/// - `3E 80` (suppress positive response) answers nothing;
/// - `BA D0` never answers (for timeout tests) until `release` is notified;
/// - anything else is echoed back with the target's low byte appended.
#[derive(Default)]
pub struct EcuHandler {
    pub handled: AtomicUsize,
    pub release: Notify,
    pub unreachable: AtomicBool,
}

impl DiagHandler for EcuHandler {
    fn reachable(&self, target: u16) -> bool {
        target != ECU_OFF && !self.unreachable.load(Ordering::Relaxed)
    }

    async fn handle(&self, req: DiagRequest, replies: Replies) {
        self.handled.fetch_add(1, Ordering::Relaxed);
        let d = &req.data[..];
        match d {
            [0x22, 0xF1, 0x90] => {
                let mut r = vec![0x62, 0xF1, 0x90];
                r.extend_from_slice(VIN);
                let _ = replies.send(Bytes::from(r)).await;
            }
            [0x31, 0x01, a, b] => {
                let (a, b) = (*a, *b);
                for _ in 0..2 {
                    let _ = replies.send(Bytes::from_static(&[0x7F, 0x31, 0x78])).await;
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
                let _ = replies.send(Bytes::from(vec![0x71, 0x01, a, b])).await;
            }
            [0x3E, 0x80] => {}
            [0xBA, 0xD0] => self.release.notified().await,
            _ => {
                let mut r = d.to_vec();
                r.push(req.target as u8);
                let _ = replies.send(Bytes::from(r)).await;
            }
        }
    }
}

pub fn entity_config() -> EntityConfig {
    EntityConfig {
        vin: *VIN,
        eid: [0x02, 0x11, 0x22, 0x33, 0x44, 0x55],
        gid: [0x02, 0x11, 0x22, 0x33, 0x44, 0x00],
        logical_address: 0x1000,
        targets: vec![ECU1, ECU2, ECU_OFF],
        announce_to: None,
        max_payload: 8192,
        max_diag_data: 4096,
        ..EntityConfig::default()
    }
}

pub struct Running {
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
    pub entity: Entity<Arc<EcuHandler>>,
    pub handler: Arc<EcuHandler>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

pub async fn start_entity(cfg: EntityConfig) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp_addr = listener.local_addr().unwrap();
    let udp_addr = udp.local_addr().unwrap();
    let handler = Arc::new(EcuHandler::default());
    let entity = Entity::new(cfg, handler.clone());
    let shutdown = CancellationToken::new();
    let e = entity.clone();
    let s = shutdown.clone();
    let task = tokio::spawn(async move { e.run(listener, Some(udp), s).await });
    Running {
        tcp: tcp_addr,
        udp: udp_addr,
        entity,
        handler,
        shutdown,
        task,
    }
}

pub fn client_config() -> DoipClientConfig {
    DoipClientConfig::default()
}

/// A tester that writes raw bytes and reads decoded messages.
pub struct RawTester {
    pub stream: TcpStream,
    codec: DoipCodec,
    buf: BytesMut,
}

impl RawTester {
    pub async fn connect(addr: SocketAddr) -> RawTester {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        RawTester {
            stream,
            codec: DoipCodec::new(1 << 20),
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, repr: Repr) {
        self.send_raw(&repr.to_bytes(2)).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next message, or `None` when the entity closed the socket. Guarded by a
    /// generous timeout so a broken entity fails the test instead of hanging it.
    pub async fn recv(&mut self) -> Option<Repr> {
        loop {
            match self.codec.decode_frame(&mut self.buf) {
                Ok(Some(Decoded::Message(Message { repr, .. }))) => return Some(repr),
                Ok(Some(other)) => panic!("entity sent something undecodable: {other:?}"),
                Ok(None) => {}
                Err(e) => panic!("entity sent a bad stream: {e}"),
            }
            let n =
                tokio::time::timeout(Duration::from_secs(30), self.stream.read_buf(&mut self.buf))
                    .await
                    .expect("entity answered within 30 s")
                    .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    pub async fn activate(&mut self, source: u16) -> Repr {
        self.send(Repr::RoutingActivationRequest {
            source,
            activation_type: obdgw::wire::doip::ActivationType::DEFAULT,
            reserved: 0,
            oem: None,
        })
        .await;
        self.recv().await.expect("routing activation response")
    }
}

pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
