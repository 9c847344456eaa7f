//! The DoIP tester's tokio driver: one task per TCP connection around [`ClientCore`].
//!
//! Owns: connecting (with TCP_NODELAY), the connection task (read, decode, feed the core,
//! write what it says, wake it at its deadline), the request handle, and reconnecting.
//!
//! Does not own: protocol decisions (all in [`ClientCore`]) nor discovery
//! (`super::discovery`).

use super::DoipClientConfig;
use super::client_core::{ClientCore, ClientError, ClientEvent};
use crate::wire::doip::{Decoded, DoipCodec};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Capacity of a connection's request queue (callers wait when it is full).
const COMMAND_QUEUE: usize = 64;
/// Initial read buffer; it grows to the largest message (bounded by the max payload).
const READ_BUFFER: usize = 16 * 1024;

type Reply = oneshot::Sender<Result<Bytes, ClientError>>;

struct Command {
    target: u16,
    data: Bytes,
    expect_response: bool,
    reply: Reply,
}

/// A routing-activated DoIP connection. Cheap to clone; requests from several tasks run
/// concurrently (one outstanding per target address, as UDS requires).
#[derive(Clone, Debug)]
pub struct Connection {
    commands: mpsc::Sender<Command>,
    entity: u16,
    peer: SocketAddr,
    local: SocketAddr,
    nodelay: bool,
}

impl Connection {
    /// Connect to `addr`, set TCP_NODELAY and activate routing.
    pub async fn open(addr: SocketAddr, cfg: DoipClientConfig) -> Result<Connection, ClientError> {
        let connect_err = |reason: String| ClientError::Connect {
            addr: addr.to_string(),
            reason,
        };
        let stream = tokio::time::timeout(cfg.connect_timeout(), TcpStream::connect(addr))
            .await
            .map_err(|_| connect_err(format!("no answer within {:?}", cfg.connect_timeout())))?
            .map_err(|e| connect_err(e.to_string()))?;
        Self::activate(stream, cfg).await
    }

    /// Activate routing on an already connected stream (TCP_NODELAY is set here).
    pub async fn activate(
        stream: TcpStream,
        cfg: DoipClientConfig,
    ) -> Result<Connection, ClientError> {
        let peer = stream
            .peer_addr()
            .map_err(|e| ClientError::Closed(e.to_string()))?;
        let local = stream
            .local_addr()
            .map_err(|e| ClientError::Closed(e.to_string()))?;
        stream.set_nodelay(true).map_err(|e| ClientError::Connect {
            addr: peer.to_string(),
            reason: format!("cannot set TCP_NODELAY: {e}"),
        })?;
        let nodelay = stream.nodelay().unwrap_or(false);
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let (activated_tx, activated_rx) = oneshot::channel();
        let core = ClientCore::new(cfg, Instant::now().into_std());
        tokio::spawn(run_connection(stream, core, rx, activated_tx));
        let entity = activated_rx
            .await
            .map_err(|_| ClientError::Closed("connection task ended".into()))??;
        Ok(Connection {
            commands,
            entity,
            peer,
            local,
            nodelay,
        })
    }

    /// The entity's logical address (from the routing activation response).
    pub fn entity_address(&self) -> u16 {
        self.entity
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// TCP_NODELAY as read back from the socket (getsockopt) after setting it.
    pub fn nodelay(&self) -> bool {
        self.nodelay
    }

    /// Whether the connection task has ended (peer closed, error, inactivity).
    pub fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }

    /// Completes when the connection task has ended.
    pub async fn closed(&self) {
        self.commands.closed().await
    }

    /// Send a UDS request to `target` and wait for its final response.
    pub async fn request(&self, target: u16, data: Bytes) -> Result<Bytes, ClientError> {
        self.submit(target, data, true).await
    }

    /// Send a diagnostic message and wait only for the DoIP acknowledgement (for requests
    /// with the suppress-positive-response bit).
    pub async fn send(&self, target: u16, data: Bytes) -> Result<(), ClientError> {
        self.submit(target, data, false).await.map(|_| ())
    }

    async fn submit(
        &self,
        target: u16,
        data: Bytes,
        expect_response: bool,
    ) -> Result<Bytes, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command {
                target,
                data,
                expect_response,
                reply,
            })
            .await
            .map_err(|_| ClientError::Closed(String::new()))?;
        rx.await
            .map_err(|_| ClientError::Closed("connection task ended".into()))?
    }
}

async fn run_connection(
    mut stream: TcpStream,
    mut core: ClientCore,
    mut commands: mpsc::Receiver<Command>,
    activated: oneshot::Sender<Result<u16, ClientError>>,
) {
    let mut activated = Some(activated);
    let mut codec = DoipCodec::new(core.config().max_payload_length);
    let mut rbuf = BytesMut::with_capacity(READ_BUFFER);
    let mut wbuf = BytesMut::with_capacity(READ_BUFFER);
    let mut replies: HashMap<u64, Reply> = HashMap::new();
    let mut next_id: u64 = 0;
    core.start_activation(Instant::now().into_std());
    let mut accepting = true;
    loop {
        // Send what the core queued, then hand out its events.
        while let Some(m) = core.poll_transmit() {
            m.repr.write(m.version, &mut wbuf);
        }
        if !wbuf.is_empty() {
            // A peer that stops reading must not freeze the timers: bound the write.
            let limit = core.config().control_timeout();
            match tokio::time::timeout(limit, stream.write_all(&wbuf)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => core.handle_closed(&format!("write failed: {e}")),
                Err(_) => core.handle_closed(&format!(
                    "the entity did not read for {limit:?} (write stalled)"
                )),
            }
            wbuf.clear();
            core.on_transmitted(Instant::now().into_std());
        }
        let mut close = false;
        while let Some(ev) = core.poll_event() {
            match ev {
                ClientEvent::Activated { entity } => {
                    if let Some(tx) = activated.take() {
                        let _ = tx.send(Ok(entity));
                    }
                }
                ClientEvent::ActivationFailed(e) => {
                    if let Some(tx) = activated.take() {
                        let _ = tx.send(Err(e));
                    }
                }
                ClientEvent::Response { id, data } => {
                    if let Some(r) = replies.remove(&id) {
                        let _ = r.send(Ok(data));
                    }
                }
                ClientEvent::Acknowledged { id } => {
                    if let Some(r) = replies.remove(&id) {
                        let _ = r.send(Ok(Bytes::new()));
                    }
                }
                ClientEvent::Failed { id, error } => {
                    if let Some(r) = replies.remove(&id) {
                        let _ = r.send(Err(error));
                    }
                }
                ClientEvent::Unsolicited { source, data } => {
                    tracing::debug!(
                        source = format_args!("0x{source:04X}"),
                        len = data.len(),
                        "unsolicited DoIP diagnostic message dropped"
                    );
                }
                ClientEvent::Close(e) => {
                    tracing::debug!(error = %e, "DoIP connection closing");
                    close = true;
                }
            }
        }
        if close || core.is_closed() {
            break;
        }
        if !accepting && core.in_flight() == 0 {
            // Every handle is gone and nothing is pending.
            break;
        }
        let deadline = core.poll_at().map(Instant::from_std);
        tokio::select! {
            r = stream.read_buf(&mut rbuf) => {
                let now = Instant::now().into_std();
                match r {
                    Ok(0) => core.handle_closed("the entity closed the connection"),
                    Ok(_) => loop {
                        match codec.decode_frame(&mut rbuf) {
                            Ok(Some(Decoded::Message(m))) => core.handle_message(now, m),
                            Ok(Some(Decoded::Rejected { version, error })) => {
                                core.handle_rejected(now, version, error)
                            }
                            Ok(None) => break,
                            Err(e) => {
                                core.handle_fatal(e);
                                break;
                            }
                        }
                    },
                    Err(e) => core.handle_closed(&format!("read failed: {e}")),
                }
            }
            cmd = commands.recv(), if accepting => match cmd {
                Some(c) => {
                    let id = next_id;
                    next_id += 1;
                    replies.insert(id, c.reply);
                    core.request(Instant::now().into_std(), id, c.target, c.data, c.expect_response);
                }
                None => accepting = false,
            },
            _ = sleep_until(deadline), if deadline.is_some() => {
                core.handle_timeout(Instant::now().into_std());
            }
        }
    }
    // Flush a final NACK if the core queued one.
    while let Some(m) = core.poll_transmit() {
        m.repr.write(m.version, &mut wbuf);
    }
    if !wbuf.is_empty() {
        let _ =
            tokio::time::timeout(core.config().control_timeout(), stream.write_all(&wbuf)).await;
    }
    let _ = stream.shutdown().await;
    if let Some(tx) = activated.take() {
        let _ = tx.send(Err(ClientError::Closed("before routing activation".into())));
    }
    for (_, r) in replies.drain() {
        let _ = r.send(Err(ClientError::Closed(String::new())));
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A DoIP tester for one entity that (re)connects on demand.
///
/// A request on a dead connection first reconnects and re-activates routing; a request that
/// was in flight when the connection died fails (it is not resent: UDS requests need not be
/// idempotent).
#[derive(Debug)]
pub struct DoipClient {
    addr: SocketAddr,
    cfg: DoipClientConfig,
    conn: Option<Connection>,
}

impl DoipClient {
    pub fn new(addr: SocketAddr, cfg: DoipClientConfig) -> Self {
        DoipClient {
            addr,
            cfg,
            conn: None,
        }
    }

    /// The live connection, connecting and activating routing if needed.
    pub async fn connection(&mut self) -> Result<&Connection, ClientError> {
        if self.conn.as_ref().is_none_or(|c| c.is_closed()) {
            self.conn = None;
            let c = Connection::open(self.addr, self.cfg.clone()).await?;
            self.conn = Some(c);
        }
        match &self.conn {
            Some(c) => Ok(c),
            None => Err(ClientError::Closed(String::new())),
        }
    }

    /// Send a UDS request to `target` and wait for its final response.
    pub async fn request(&mut self, target: u16, data: Bytes) -> Result<Bytes, ClientError> {
        let conn = self.connection().await?;
        let r = conn.request(target, data).await;
        if matches!(r, Err(ClientError::Closed(_) | ClientError::Inactive(_))) {
            self.conn = None;
        }
        r
    }

    /// Drop the connection (the next request reconnects).
    pub fn disconnect(&mut self) {
        self.conn = None;
    }
}
