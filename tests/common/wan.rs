//! A TCP proxy between an endpoint and the relay that tests cut (a killed websocket) or
//! block (a WAN outage).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// One side's way to the relay: a TCP proxy that can kill its connections (`cut`) or refuse
/// new ones (`block`, a WAN outage).
pub struct Wan {
    pub addr: SocketAddr,
    generation: Arc<Mutex<CancellationToken>>,
    pub blocked: Arc<AtomicBool>,
}

impl Wan {
    pub async fn to(relay: SocketAddr) -> Wan {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let blocked = Arc::new(AtomicBool::new(false));
        let (g, b) = (generation.clone(), blocked.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                if b.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is reset
                }
                let cut = g.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(relay).await else {
                        return;
                    };
                    let _ = outbound.set_nodelay(true);
                    let _ = inbound.set_nodelay(true);
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Wan {
            addr,
            generation,
            blocked,
        }
    }

    /// Kill every connection through this proxy (the websocket dies mid-stream).
    pub fn cut(&self) {
        let mut g = self.generation.lock().unwrap();
        g.cancel();
        *g = CancellationToken::new();
    }

    /// Refuse (`true`) or accept again (`false`) new connections.
    pub fn block(&self, on: bool) {
        self.blocked.store(on, Ordering::SeqCst);
    }
}
