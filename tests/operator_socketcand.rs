//! The socketcand server against a client speaking real bytes over loopback.

mod common;

use bytes::Bytes;
use obdgw::operator::socketcand::{BusProvider, PduAccess, RawAccess, ServerConfig, serve};
use obdgw::router::{CanFrame, CanId, Timestamp};
use obdgw::vehicle::can::CanAnyFrame;
use obdgw::wire::socketcand::IsoTpConf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A fake bus: the test pushes frames to every open client and sees what clients send.
/// Its ISO-TP channels answer each PDU with the PDU reversed.
#[derive(Default)]
struct FakeBus {
    listeners: Mutex<Vec<mpsc::Sender<(CanAnyFrame, Timestamp)>>>,
    sent: Mutex<Option<mpsc::Sender<CanAnyFrame>>>,
    confs: Mutex<Vec<IsoTpConf>>,
}

impl BusProvider for FakeBus {
    fn buses(&self) -> Vec<String> {
        vec!["vcan0".into(), "vcan1".into()]
    }

    async fn open_raw(&self, _bus: &str) -> Result<RawAccess, String> {
        let (tx, rx) = mpsc::channel(64);
        self.listeners.lock().unwrap().push(tx);
        let sent = self.sent.lock().unwrap().clone().ok_or("no sink")?;
        Ok(RawAccess { rx, tx: sent })
    }

    async fn open_isotp(&self, _bus: &str, conf: IsoTpConf) -> Result<PduAccess, String> {
        if conf.tx_id == conf.rx_id {
            return Err("tx and rx ids must differ".into());
        }
        self.confs.lock().unwrap().push(conf);
        let (req_tx, mut req_rx) = mpsc::channel::<Bytes>(4);
        let (resp_tx, resp_rx) = mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(pdu) = req_rx.recv().await {
                let reply = if pdu.as_ref() == [0xEE] {
                    Err("timeout waiting for flow control (N_Bs)".to_string())
                } else {
                    let mut v = pdu.to_vec();
                    v.reverse();
                    Ok((Bytes::from(v), Timestamp(1_500_000_000)))
                };
                if resp_tx.send(reply).await.is_err() {
                    break;
                }
            }
        });
        Ok(PduAccess {
            rx: resp_rx,
            tx: req_tx,
        })
    }
}

struct Fixture {
    bus: Arc<FakeBus>,
    sent: mpsc::Receiver<CanAnyFrame>,
    addr: std::net::SocketAddr,
    stop: CancellationToken,
}

async fn start() -> Fixture {
    let bus = Arc::new(FakeBus::default());
    let (tx, sent) = mpsc::channel(64);
    *bus.sent.lock().unwrap() = Some(tx);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        bus.clone(),
        ServerConfig::default(),
        stop.clone(),
    ));
    Fixture {
        bus,
        sent,
        addr,
        stop,
    }
}

struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        let mut c = Client {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        };
        assert_eq!(c.msg().await, "< hi >");
        c
    }

    async fn send(&mut self, text: &str) {
        self.s.write_all(text.as_bytes()).await.unwrap();
    }

    /// The next `< ... >` message, or "EOF".
    async fn msg(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'>') {
                let m: Vec<u8> = self.buf.drain(..=end).collect();
                return String::from_utf8(m).unwrap().trim().to_string();
            }
            let mut tmp = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut tmp))
                .await
                .expect("server silent for 10 s")
                .unwrap();
            if n == 0 {
                return "EOF".into();
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    async fn cmd(&mut self, text: &str) -> String {
        self.send(text).await;
        self.msg().await
    }
}

fn frame(id: u16, data: &[u8]) -> CanAnyFrame {
    CanAnyFrame::Classic(CanFrame::new(CanId::standard(id).unwrap(), data).unwrap())
}

#[tokio::test]
async fn raw_mode_carries_frames_both_ways() {
    let mut f = start().await;
    let mut c = Client::connect(f.addr).await;
    assert_eq!(c.cmd("< open vcan0 >").await, "< ok >");
    assert_eq!(c.cmd("< rawmode >").await, "< ok >");
    let listener = f.bus.listeners.lock().unwrap()[0].clone();
    for i in 0..100u8 {
        listener
            .send((
                frame(0x7E8, &[i, 0xAA]),
                Timestamp(23_424_242_000 + i as u64 * 1000),
            ))
            .await
            .unwrap();
    }
    for i in 0..100u8 {
        let want = format!("< frame 7E8 23.{:06} {i:02X}AA >", 424_242 + i as u32);
        assert_eq!(c.msg().await, want);
    }
    // python-can's send format: lowercase, unpadded, hex length.
    c.send("< send 1AAAAAAA 2 1 f1 >< send 123 0 >").await;
    let got = f.sent.recv().await.unwrap();
    assert_eq!(got.id(), CanId::extended(0x1AAAAAAA).unwrap());
    assert_eq!(got.data(), &[0x01, 0xF1]);
    assert_eq!(f.sent.recv().await.unwrap(), frame(0x123, &[]));
    f.stop.cancel();
}

#[tokio::test]
async fn unknown_bus_is_refused_and_closed() {
    let f = start().await;
    let mut c = Client::connect(f.addr).await;
    let reply = c.cmd("< open can9 >").await;
    assert!(reply.starts_with("< error unknown bus can9"), "{reply}");
    assert!(reply.contains("vcan0, vcan1"), "{reply}");
    assert_eq!(c.msg().await, "EOF");
}

#[tokio::test]
async fn bad_input_gets_errors_and_the_session_goes_on() {
    let f = start().await;
    let mut c = Client::connect(f.addr).await;
    let r = c.cmd("< rawmode >").await;
    assert!(r.contains("no bus is open"), "{r}");
    assert_eq!(c.cmd("< open vcan1 >").await, "< ok >");
    let r = c.cmd("< send 123 3 11 22 >").await;
    assert!(r.contains("length says 3 bytes but 2"), "{r}");
    let r = c.cmd("< subscribe 0 0 123 >").await;
    assert!(
        r.contains("is not supported by obdgw; switch to rawmode"),
        "{r}"
    );
    let r = c.cmd("< frobnicate >").await;
    assert_eq!(r, "< error unknown command `frobnicate` >");
    let r = c.cmd("garbage< echo >").await;
    assert!(r.starts_with("< error stray bytes"), "{r}");
    assert_eq!(c.msg().await, "< echo >");
    // An endless message is cut at the limit instead of filling memory.
    c.send(&format!("< sendpdu {}", "A".repeat(20_000))).await;
    let r = c.msg().await;
    assert!(r.contains("longer than"), "{r}");
    assert_eq!(c.cmd(" >< echo >").await, "< echo >");
    // Another client is unaffected throughout.
    let mut d = Client::connect(f.addr).await;
    assert_eq!(d.cmd("< open vcan0 >").await, "< ok >");
}

#[tokio::test]
async fn isotp_mode_sends_and_receives_pdus() {
    let f = start().await;
    let mut c = Client::connect(f.addr).await;
    assert_eq!(c.cmd("< open vcan0 >").await, "< ok >");
    assert_eq!(c.cmd("< isotpmode >").await, "< ok >");
    let r = c.cmd("< sendpdu 1122 >").await;
    assert!(r.contains("no ISO-TP channel"), "{r}");
    let r = c.cmd("< isotpconf 7E0 7E0 0 0 0 >").await;
    assert!(
        r.contains("isotpconf refused: tx and rx ids must differ"),
        "{r}"
    );
    assert_eq!(c.cmd("< isotpconf 7E0 7E8 C 4 0 0 AA 55 >").await, "< ok >");
    let conf = f.bus.confs.lock().unwrap()[0];
    assert_eq!(conf.tx_id, CanId::standard(0x7E0).unwrap());
    assert_eq!((conf.block_size, conf.tx_pad), (4, Some(0xAA)));
    let big: String = (0..4095).map(|i| format!("{:02X}", i as u8)).collect();
    c.send(&format!("< sendpdu {big} >")).await;
    let reply = c.msg().await;
    let want: String = (0..4095)
        .rev()
        .map(|i| format!("{:02X}", i as u8))
        .collect();
    assert_eq!(reply, format!("< pdu 1.500000 {want} >"));
    let r = c.cmd("< sendpdu EE >").await;
    assert_eq!(r, "< error timeout waiting for flow control (N_Bs) >");
}

#[tokio::test]
async fn control_mode_reports_statistics() {
    let f = start().await;
    let mut c = Client::connect(f.addr).await;
    assert_eq!(c.cmd("< open vcan0 >").await, "< ok >");
    c.send("< send 123 2 11 22 >").await;
    assert_eq!(c.cmd("< controlmode >").await, "< ok >");
    c.send("< statistics 20 >").await;
    let first = c.msg().await;
    assert_eq!(first, "< stat 0 0 2 1 >");
    assert_eq!(c.msg().await, "< stat 0 0 2 1 >");
    drop(f);
}

/// python-can's socketcand interface (an independent client) receives the bus's frames and
/// sends frames the bus sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_can_socketcand_interoperates() {
    let Some(python) = common::interop_python("python_can_socketcand_interoperates") else {
        return;
    };
    let mut f = start().await;
    let child = tokio::process::Command::new(python)
        .arg(common::interop_script("socketcand_client.py"))
        .args([
            "127.0.0.1",
            &f.addr.port().to_string(),
            "vcan0",
            "500",
            "300",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the client is in raw mode, then play 500 frames.
    let listener = loop {
        if let Some(l) = f.bus.listeners.lock().unwrap().first().cloned() {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    for i in 0..500u32 {
        let id = 0x100 + (i % 0x100) as u16;
        listener
            .send((frame(id, &[i as u8, 0xAA]), Timestamp(i as u64 * 1000)))
            .await
            .unwrap();
    }
    let mut seen = 0u32;
    while seen < 300 {
        let got = tokio::time::timeout(Duration::from_secs(30), f.sent.recv())
            .await
            .expect("python-can stopped sending")
            .unwrap();
        assert_eq!(got, frame(0x7DF, &[0x02, 0x01, seen as u8]), "frame {seen}");
        seen += 1;
    }
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python-can client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"received\": 500"), "{stdout}");
}
