//! The relay's session registry: which connection is the gateway and which the operator of
//! each session, and the outbound queues that forwarding writes into.
//!
//! Owns: pairing by session id, replacement of a role's connection by a newer one, the
//! `welcome` / `peer` / `peer_down` messages that pairing changes produce, the per-connection
//! outbound queue bounded in bytes and in messages, each connection's [`PeerLink`] (the
//! route its reader forwards on), and session lifetime (idle release, rejoin grace).
//!
//! Does not own: sockets, TLS, authentication (`super::TokenCheck`) or parsing of batches.
//!
//! Locking: one `std::sync::Mutex` around the map, taken only when a connection attaches or
//! detaches, by the reaper, and by `release`/`end` (no `.await` under it). Forwarding does
//! not touch it: each connection's reader asks its own [`PeerLink`] (a small mutex only the
//! hub writes, on pairing changes) for the peer's queue, so the per-message cost is one
//! uncontended lock and two reference-count increments, and no allocation.

use super::metrics::Metrics;
use crate::wire::tunnel::{Control, ErrorCode, Hello, PeerInfo, Role, Welcome};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A message for a connection's writer task.
#[derive(Debug)]
pub enum Out {
    /// A JSON control message (forwarded as received, or made by the relay).
    Text(Utf8Bytes),
    /// A batch, forwarded as received (the same `Bytes`).
    Binary(Bytes),
    /// A websocket ping frame (the relay's hop keepalive toward a silent connection).
    Ping,
    /// Send this error, then close with `4000 + code`.
    Kick { code: ErrorCode, message: String },
    /// Close normally (1000) after the queued messages.
    End,
}

/// One queued message and the byte budget it holds until written.
#[derive(Debug)]
pub struct Queued {
    pub out: Out,
    pub _permit: Option<OwnedSemaphorePermit>,
    /// When a forwarded message was read ([`Metrics::stamp`]; 0 for the relay's own
    /// messages): the writer measures the relay's forwarding latency from it.
    pub read_at: u32,
}

/// The sending half of a connection's outbound queue.
#[derive(Debug, Clone)]
pub struct Outbound {
    tx: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
    budget: usize,
}

impl Outbound {
    /// A queue of at most `messages` entries and `budget` bytes of forwarded messages.
    pub fn new(messages: usize, budget: usize) -> (Self, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(messages.max(1));
        let budget = budget.clamp(1, u32::MAX as usize);
        (
            Outbound {
                tx,
                bytes: Arc::new(Semaphore::new(budget)),
                budget,
            },
            rx,
        )
    }

    /// Forward data: waits while the receiver's budget is spent (backpressure toward the
    /// sender). A message larger than the whole budget waits for the queue to be empty.
    /// `false` when the connection is gone.
    pub async fn forward(&self, out: Out, len: usize, read_at: u32) -> bool {
        let want = len.clamp(1, self.budget) as u32;
        let permit = match self.bytes.clone().try_acquire_many_owned(want) {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => return false,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                match self.bytes.clone().acquire_many_owned(want).await {
                    Ok(p) => p,
                    Err(_) => return false,
                }
            }
        };
        self.tx
            .send(Queued {
                out,
                _permit: Some(permit),
                read_at,
            })
            .await
            .is_ok()
    }

    /// Whether `forward` of `len` bytes would wait now.
    pub fn would_wait(&self, len: usize) -> bool {
        self.bytes.available_permits() < len.clamp(1, self.budget)
    }

    /// Queue a small relay-originated message without waiting. `false` when the queue is
    /// full or closed; the caller then treats the connection as stuck.
    pub fn notify(&self, out: Out) -> bool {
        self.tx
            .try_send(Queued {
                out,
                _permit: None,
                read_at: 0,
            })
            .is_ok()
    }
}

/// Where one connection's reader forwards to. Written by the hub on pairing changes, read
/// by the reader for every message.
#[derive(Debug)]
pub struct PeerLink {
    state: Mutex<LinkState>,
}

#[derive(Debug)]
struct LinkState {
    /// Still the attached connection of its role (a newer one replaces it).
    current: bool,
    /// The peer's queue while the peer is attached.
    peer: Option<Outbound>,
}

/// What a reader does with a message.
#[derive(Debug)]
pub enum Route {
    /// Forward to this queue.
    Peer(Outbound),
    /// The peer is not attached: the message is discarded (protocol section 4).
    NoPeer,
    /// This connection was replaced or its session released: stop reading.
    Gone,
}

impl PeerLink {
    fn new() -> Arc<Self> {
        Arc::new(PeerLink {
            state: Mutex::new(LinkState {
                current: true,
                peer: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_peer(&self, peer: Option<Outbound>) {
        self.lock().peer = peer;
    }

    fn retire(&self) {
        let mut s = self.lock();
        s.current = false;
        s.peer = None;
    }

    /// The route for the next message.
    pub fn route(&self) -> Route {
        let s = self.lock();
        match (&s.peer, s.current) {
            (_, false) => Route::Gone,
            (Some(p), true) => Route::Peer(p.clone()),
            (None, true) => Route::NoPeer,
        }
    }
}

/// A connection attached to a session role.
#[derive(Debug)]
struct Attached {
    conn: u64,
    out: Outbound,
    link: Arc<PeerLink>,
    /// The `peer` message the other side gets about this one, rendered once.
    peer_text: Utf8Bytes,
}

#[derive(Debug, Default)]
struct Slot {
    gateway: Option<Attached>,
    operator: Option<Attached>,
    /// Since when exactly one side (or none) is attached.
    lonely_since: Option<Instant>,
    /// The session was paired and lost a side at this time (rejoin grace runs).
    broken_since: Option<Instant>,
}

impl Slot {
    fn side(&mut self, role: Role) -> &mut Option<Attached> {
        match role {
            Role::Gateway => &mut self.gateway,
            Role::Operator => &mut self.operator,
        }
    }
    fn paired(&self) -> bool {
        self.gateway.is_some() && self.operator.is_some()
    }
}

/// Why an attach was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    #[error("the relay already holds its maximum of {0} sessions")]
    SessionLimit(usize),
}

/// One held session, as listed by [`Hub::sessions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    pub id: String,
    pub gateway: bool,
    pub operator: bool,
}

/// The registry. Cheap to clone (an `Arc`).
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Mutex<HubInner>>,
    max_sessions: usize,
    keepalive_ms: u32,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct HubInner {
    sessions: HashMap<String, Slot>,
    pairs: usize,
    next_conn: u64,
}

impl HubInner {
    fn publish(&self, m: &Metrics) {
        m.sessions
            .store(self.sessions.len() as u64, Ordering::Relaxed);
        m.pairs.store(self.pairs as u64, Ordering::Relaxed);
    }
}

fn text(c: Control) -> Out {
    Out::Text(Utf8Bytes::from(c.to_text()))
}

fn kick_all(slot: Slot, code: ErrorCode, message: &str) {
    for a in [slot.gateway, slot.operator].into_iter().flatten() {
        a.link.retire();
        a.out.notify(Out::Kick {
            code,
            message: message.into(),
        });
    }
}

impl Hub {
    pub fn new(max_sessions: usize, keepalive_ms: u32) -> Self {
        Hub {
            inner: Arc::new(Mutex::new(HubInner::default())),
            max_sessions,
            keepalive_ms,
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// The relay's counters (shared with the connections and the metrics endpoint).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubInner> {
        // A panic while holding the lock cannot leave the map inconsistent in a way that
        // matters more than refusing service; recover the guard.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attach an authenticated connection. Queues `welcome` (and `peer` both ways when the
    /// other side is present) before returning, so the peer's data can only follow them.
    /// A previous connection of the same role is kicked with `role_taken`. Returns the
    /// connection number and the link its reader forwards on.
    pub fn attach(
        &self,
        hello: &Hello,
        out: Outbound,
        now: Instant,
    ) -> Result<(u64, Arc<PeerLink>), AttachError> {
        let mut g = self.lock();
        let count = g.sessions.len();
        if !g.sessions.contains_key(&hello.session) && count >= self.max_sessions {
            return Err(AttachError::SessionLimit(self.max_sessions));
        }
        g.next_conn += 1;
        let conn = g.next_conn;
        let link = PeerLink::new();
        let peer_text = Utf8Bytes::from(Control::Peer(PeerInfo::from_hello(hello)).to_text());
        let slot = g.sessions.entry(hello.session.clone()).or_default();
        let was_paired = slot.paired();
        if let Some(old) = slot.side(hello.role).take() {
            old.link.retire();
            old.out.notify(Out::Kick {
                code: ErrorCode::ROLE_TAKEN,
                message: "replaced by a newer connection for the same session and role".into(),
            });
            if let Some(p) = slot.side(hello.role.other()) {
                p.link.set_peer(None);
                p.out.notify(text(Control::PeerDown {
                    reason: "peer reconnected".into(),
                }));
            }
        }
        let peer = slot.side(hello.role.other()).as_ref();
        out.notify(text(Control::Welcome(Welcome {
            version: 1,
            session: hello.session.clone(),
            peer_connected: peer.is_some(),
            keepalive_ms: self.keepalive_ms,
        })));
        if let Some(p) = peer {
            out.notify(Out::Text(p.peer_text.clone()));
            p.out.notify(Out::Text(peer_text.clone()));
            // Routes are set after the `peer` messages are queued: data follows them.
            link.set_peer(Some(p.out.clone()));
            p.link.set_peer(Some(out.clone()));
            slot.lonely_since = None;
            slot.broken_since = None;
        } else {
            slot.lonely_since = Some(now);
        }
        *slot.side(hello.role) = Some(Attached {
            conn,
            out,
            link: link.clone(),
            peer_text,
        });
        let now_paired = slot.paired();
        if now_paired && !was_paired {
            g.pairs += 1;
        } else if was_paired && !now_paired {
            g.pairs -= 1;
        }
        g.publish(&self.metrics);
        Ok((conn, link))
    }

    /// The outbound queue of `role`'s peer in `session`, if attached.
    pub fn peer_of(&self, session: &str, role: Role) -> Option<Outbound> {
        let mut g = self.lock();
        let slot = g.sessions.get_mut(session)?;
        slot.side(role.other()).as_ref().map(|a| a.out.clone())
    }

    /// Whether `conn` is still the attached connection of `role`.
    pub fn is_current(&self, session: &str, role: Role, conn: u64) -> bool {
        let mut g = self.lock();
        g.sessions
            .get_mut(session)
            .and_then(|s| s.side(role).as_ref().map(|a| a.conn == conn))
            .unwrap_or(false)
    }

    /// A connection ended. If it was current, the peer gets `peer_down`; an empty session
    /// is released.
    pub fn detach(&self, session: &str, role: Role, conn: u64, now: Instant) {
        let mut g = self.lock();
        let Some(slot) = g.sessions.get_mut(session) else {
            return;
        };
        let mut unpaired = false;
        if slot.side(role).as_ref().is_some_and(|a| a.conn == conn) {
            unpaired = slot.paired();
            if let Some(a) = slot.side(role).take() {
                a.link.retire();
            }
            slot.lonely_since = Some(now);
            if let Some(p) = slot.side(role.other()) {
                p.link.set_peer(None);
                p.out.notify(text(Control::PeerDown {
                    reason: "connection lost".into(),
                }));
                if unpaired {
                    slot.broken_since = Some(now);
                }
            }
        }
        let empty = slot.gateway.is_none() && slot.operator.is_none();
        if unpaired {
            g.pairs -= 1;
        }
        if empty {
            g.sessions.remove(session);
        }
        g.publish(&self.metrics);
    }

    fn remove(&self, g: &mut HubInner, session: &str) -> Option<Slot> {
        let slot = g.sessions.remove(session)?;
        if slot.paired() {
            g.pairs -= 1;
        }
        Some(slot)
    }

    /// End a session for good (after `bye`): both connections close after what is queued.
    pub fn end(&self, session: &str) {
        let mut g = self.lock();
        if let Some(slot) = self.remove(&mut g, session) {
            for a in [slot.gateway, slot.operator].into_iter().flatten() {
                a.link.retire();
                a.out.notify(Out::End);
            }
        }
        g.publish(&self.metrics);
    }

    /// End a session from outside (its ticket was closed): each attached side gets the
    /// fatal-for-the-session `error` `code` with `message`, then its connection is closed
    /// with `4000 + code`. Returns whether the session was held.
    pub fn release(&self, session: &str, code: ErrorCode, message: &str) -> bool {
        let mut g = self.lock();
        let Some(slot) = self.remove(&mut g, session) else {
            return false;
        };
        kick_all(slot, code, message);
        g.publish(&self.metrics);
        true
    }

    /// Release sessions whose missing side has been away longer than `idle` (the present
    /// side is kicked with `session_ended`), and close the lonely side of sessions that
    /// were paired and whose other side has not come back within `rejoin` (non-fatal
    /// `peer_gone`: the endpoint reconnects through the load balancer, which sends it to
    /// the relay its session hashes to now; see `docs/scaling.md`). Returns how many
    /// sessions were released.
    pub fn reap(&self, now: Instant, idle: Duration, rejoin: Option<Duration>) -> usize {
        let mut g = self.lock();
        let expired: Vec<(String, ErrorCode)> = g
            .sessions
            .iter()
            .filter_map(|(k, s)| {
                if s.lonely_since
                    .is_some_and(|t| now.duration_since(t) >= idle)
                {
                    Some((k.clone(), ErrorCode::SESSION_ENDED))
                } else if let (Some(r), Some(t)) = (rejoin, s.broken_since)
                    && now.duration_since(t) >= r
                {
                    Some((k.clone(), ErrorCode::PEER_GONE))
                } else {
                    None
                }
            })
            .collect();
        for (k, code) in &expired {
            if let Some(slot) = self.remove(&mut g, k) {
                let why = if *code == ErrorCode::SESSION_ENDED {
                    "the other side did not come back within the relay's idle limit"
                } else {
                    "the other side did not come back here: reconnect"
                };
                kick_all(slot, *code, why);
            }
        }
        g.publish(&self.metrics);
        expired.len()
    }

    /// Sessions held now.
    pub fn session_count(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Sessions with both sides attached now.
    pub fn pair_count(&self) -> usize {
        self.lock().pairs
    }

    /// Every held session (for the relay's loopback admin listing), sorted by id.
    pub fn sessions(&self) -> Vec<SessionView> {
        let g = self.lock();
        let mut v: Vec<SessionView> = g
            .sessions
            .iter()
            .map(|(k, s)| SessionView {
                id: k.clone(),
                gateway: s.gateway.is_some(),
                operator: s.operator.is_some(),
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tunnel::{Limits, Resume, Token};

    const SID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab";

    fn hello(role: Role) -> Hello {
        Hello {
            version: 1,
            role,
            session: SID.into(),
            token: Token("t".into()),
            instance: 7,
            capabilities: vec![],
            resume: Resume {
                peer_instance: None,
                last_received: 0,
            },
            limits: Limits::default(),
            agent: None,
        }
    }

    fn drain(rx: &mut mpsc::Receiver<Queued>) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(q) = rx.try_recv() {
            v.push(match q.out {
                Out::Text(t) => {
                    let s: &str = &t;
                    s.split('"').nth(3).unwrap_or("").to_string()
                }
                Out::Kick { code, .. } => format!("kick {}", code.0),
                Out::End => "end".into(),
                Out::Ping => "ping".into(),
                Out::Binary(_) => "binary".into(),
            });
        }
        v
    }

    #[tokio::test(start_paused = true)]
    async fn routes_follow_pairing_and_counts_are_published() {
        let hub = Hub::new(10, 5000);
        let now = Instant::now();
        let (gw_out, mut gw_rx) = Outbound::new(16, 1024);
        let (_, gw_link) = hub.attach(&hello(Role::Gateway), gw_out, now).unwrap();
        assert!(matches!(gw_link.route(), Route::NoPeer));
        assert_eq!(drain(&mut gw_rx), ["welcome"]);
        let (op_out, mut op_rx) = Outbound::new(16, 1024);
        let (op_conn, op_link) = hub.attach(&hello(Role::Operator), op_out, now).unwrap();
        assert!(matches!(gw_link.route(), Route::Peer(_)));
        assert!(matches!(op_link.route(), Route::Peer(_)));
        assert_eq!(drain(&mut op_rx), ["welcome", "peer"]);
        assert_eq!(drain(&mut gw_rx), ["peer"]);
        assert_eq!((hub.session_count(), hub.pair_count()), (1, 1));
        assert_eq!(hub.metrics().pairs.load(Ordering::Relaxed), 1);

        // A newer operator connection replaces the old one.
        let (op2_out, mut op2_rx) = Outbound::new(16, 1024);
        let (op2_conn, op2_link) = hub.attach(&hello(Role::Operator), op2_out, now).unwrap();
        assert!(matches!(op_link.route(), Route::Gone));
        assert_eq!(drain(&mut op_rx), ["kick 104"]);
        assert_eq!(drain(&mut gw_rx), ["peer_down", "peer"]);
        assert_eq!(drain(&mut op2_rx), ["welcome", "peer"]);
        assert_eq!(hub.pair_count(), 1);
        // The old connection's detach changes nothing.
        hub.detach(SID, Role::Operator, op_conn, now);
        assert_eq!(hub.pair_count(), 1);
        assert!(matches!(op2_link.route(), Route::Peer(_)));

        hub.detach(SID, Role::Operator, op2_conn, now);
        assert!(matches!(gw_link.route(), Route::NoPeer));
        assert_eq!(drain(&mut gw_rx), ["peer_down"]);
        assert_eq!((hub.session_count(), hub.pair_count()), (1, 0));
        assert_eq!(hub.metrics().sessions.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_pair_is_closed_after_the_rejoin_grace_but_a_waiting_side_is_not() {
        let hub = Hub::new(10, 5000);
        let t0 = Instant::now();
        let grace = Some(Duration::from_secs(5));
        let idle = Duration::from_secs(600);
        let (gw_out, mut gw_rx) = Outbound::new(16, 1024);
        hub.attach(&hello(Role::Gateway), gw_out, t0).unwrap();
        // A gateway that never had a peer only waits (until the idle limit).
        assert_eq!(hub.reap(t0 + Duration::from_secs(60), idle, grace), 0);
        let (op_out, _op_rx) = Outbound::new(16, 1024);
        let (op_conn, _) = hub
            .attach(&hello(Role::Operator), op_out, t0 + Duration::from_secs(60))
            .unwrap();
        hub.detach(SID, Role::Operator, op_conn, t0 + Duration::from_secs(61));
        drain(&mut gw_rx);
        assert_eq!(hub.reap(t0 + Duration::from_secs(65), idle, grace), 0);
        assert_eq!(hub.reap(t0 + Duration::from_secs(66), idle, grace), 1);
        assert_eq!(drain(&mut gw_rx), ["kick 400"]);
        assert_eq!(hub.session_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn session_limit_counts_sessions_not_connections() {
        let hub = Hub::new(1, 5000);
        let now = Instant::now();
        let (a, _ra) = Outbound::new(4, 64);
        hub.attach(&hello(Role::Gateway), a, now).unwrap();
        let (b, _rb) = Outbound::new(4, 64);
        hub.attach(&hello(Role::Operator), b, now).unwrap();
        let mut other = hello(Role::Gateway);
        other.session = "00000000-0000-4000-8000-000000000000".into();
        let (c, _rc) = Outbound::new(4, 64);
        assert_eq!(
            hub.attach(&other, c, now).unwrap_err(),
            AttachError::SessionLimit(1)
        );
    }
}
