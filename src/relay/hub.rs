//! The relay's session registry: which connection is the gateway and which the operator of
//! each session, and the outbound queues that forwarding writes into.
//!
//! Owns: pairing by session id, replacement of a role's connection by a newer one, the
//! `welcome` / `peer` / `peer_down` messages that pairing changes produce, the per-connection
//! outbound queue bounded in bytes and in messages, and session lifetime (idle release).
//!
//! Does not own: sockets, TLS, authentication (`super::TokenCheck`) or parsing of batches.
//!
//! Locking: one `std::sync::Mutex` around the map; held only for map updates and for
//! cloning an [`Outbound`] handle (no `.await` under the lock). Forwarding clones the
//! peer's handle under the lock and then waits for queue space outside it.

use crate::wire::tunnel::{Control, ErrorCode, Hello, PeerInfo, Role, Welcome};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

/// A message for a connection's writer task.
#[derive(Debug)]
pub enum Out {
    /// A JSON control message.
    Text(String),
    /// A batch, forwarded as received (the same `Bytes`).
    Binary(Bytes),
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
}

/// The sending half of a connection's outbound queue.
#[derive(Debug, Clone)]
pub struct Outbound {
    tx: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
    budget: usize,
}

impl Outbound {
    /// A queue of at most `messages` entries and `budget` bytes of forwarded batches.
    pub fn new(messages: usize, budget: usize) -> (Self, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(messages.max(1));
        let budget = budget.max(1);
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
    /// sender). `false` when the connection is gone.
    pub async fn forward(&self, out: Out, len: usize) -> bool {
        let want = len.clamp(1, self.budget) as u32;
        let Ok(permit) = self.bytes.clone().acquire_many_owned(want).await else {
            return false;
        };
        self.tx
            .send(Queued {
                out,
                _permit: Some(permit),
            })
            .await
            .is_ok()
    }

    /// Queue a small relay-originated message without waiting. `false` when the queue is
    /// full or closed; the caller then treats the connection as stuck.
    pub fn notify(&self, out: Out) -> bool {
        self.tx.try_send(Queued { out, _permit: None }).is_ok()
    }
}

/// A connection attached to a session role.
#[derive(Debug)]
struct Attached {
    conn: u64,
    out: Outbound,
    peer_info: PeerInfo,
}

#[derive(Debug, Default)]
struct Slot {
    gateway: Option<Attached>,
    operator: Option<Attached>,
    /// Since when exactly one side (or none) is attached.
    lonely_since: Option<Instant>,
}

impl Slot {
    fn side(&mut self, role: Role) -> &mut Option<Attached> {
        match role {
            Role::Gateway => &mut self.gateway,
            Role::Operator => &mut self.operator,
        }
    }
}

/// Why an attach was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    #[error("the relay already holds its maximum of {0} sessions")]
    SessionLimit(usize),
}

/// The registry. Cheap to clone (an `Arc`).
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Mutex<HubInner>>,
    max_sessions: usize,
    keepalive_ms: u32,
}

#[derive(Debug, Default)]
struct HubInner {
    sessions: HashMap<String, Slot>,
    next_conn: u64,
}

impl Hub {
    pub fn new(max_sessions: usize, keepalive_ms: u32) -> Self {
        Hub {
            inner: Arc::new(Mutex::new(HubInner::default())),
            max_sessions,
            keepalive_ms,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubInner> {
        // A panic while holding the lock cannot leave the map inconsistent in a way that
        // matters more than refusing service; recover the guard.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attach an authenticated connection. Queues `welcome` (and `peer` both ways when the
    /// other side is present) before returning, so the peer's data can only follow them.
    /// A previous connection of the same role is kicked with `role_taken`.
    pub fn attach(&self, hello: &Hello, out: Outbound, now: Instant) -> Result<u64, AttachError> {
        let mut g = self.lock();
        let count = g.sessions.len();
        if !g.sessions.contains_key(&hello.session) && count >= self.max_sessions {
            return Err(AttachError::SessionLimit(self.max_sessions));
        }
        g.next_conn += 1;
        let conn = g.next_conn;
        let slot = g.sessions.entry(hello.session.clone()).or_default();
        let info = PeerInfo::from_hello(hello);
        if let Some(old) = slot.side(hello.role).take() {
            old.out.notify(Out::Kick {
                code: ErrorCode::ROLE_TAKEN,
                message: "replaced by a newer connection for the same session and role".into(),
            });
            if let Some(p) = slot.side(hello.role.other()) {
                p.out.notify(Out::Text(
                    Control::PeerDown {
                        reason: "peer reconnected".into(),
                    }
                    .to_text(),
                ));
            }
        }
        let peer = slot.side(hello.role.other()).as_ref();
        out.notify(Out::Text(
            Control::Welcome(Welcome {
                version: 1,
                session: hello.session.clone(),
                peer_connected: peer.is_some(),
                keepalive_ms: self.keepalive_ms,
            })
            .to_text(),
        ));
        if let Some(p) = peer {
            out.notify(Out::Text(Control::Peer(p.peer_info.clone()).to_text()));
            p.out
                .notify(Out::Text(Control::Peer(info.clone()).to_text()));
            slot.lonely_since = None;
        } else {
            slot.lonely_since = Some(now);
        }
        *slot.side(hello.role) = Some(Attached {
            conn,
            out,
            peer_info: info,
        });
        Ok(conn)
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
        if slot.side(role).as_ref().is_some_and(|a| a.conn == conn) {
            *slot.side(role) = None;
            slot.lonely_since = Some(now);
            if let Some(p) = slot.side(role.other()) {
                p.out.notify(Out::Text(
                    Control::PeerDown {
                        reason: "connection lost".into(),
                    }
                    .to_text(),
                ));
            }
        }
        if slot.gateway.is_none() && slot.operator.is_none() {
            g.sessions.remove(session);
        }
    }

    /// End a session for good (after `bye`): both connections close after what is queued.
    pub fn end(&self, session: &str) {
        let mut g = self.lock();
        if let Some(slot) = g.sessions.remove(session) {
            for a in [slot.gateway, slot.operator].into_iter().flatten() {
                a.out.notify(Out::End);
            }
        }
    }

    /// End a session from outside (its ticket was closed): each attached side gets the
    /// fatal-for-the-session `error` `code` with `message`, then its connection is closed
    /// with `4000 + code`. Returns whether the session was held.
    pub fn release(&self, session: &str, code: ErrorCode, message: &str) -> bool {
        let mut g = self.lock();
        let Some(slot) = g.sessions.remove(session) else {
            return false;
        };
        for a in [slot.gateway, slot.operator].into_iter().flatten() {
            a.out.notify(Out::Kick {
                code,
                message: message.into(),
            });
        }
        true
    }

    /// Release sessions whose missing side has been away longer than `idle`: the present
    /// side is kicked with `session_ended`. Returns how many were released.
    pub fn reap(&self, now: Instant, idle: std::time::Duration) -> usize {
        let mut g = self.lock();
        let expired: Vec<String> = g
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.lonely_since
                    .is_some_and(|t| now.duration_since(t) >= idle)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &expired {
            if let Some(slot) = g.sessions.remove(k) {
                for a in [slot.gateway, slot.operator].into_iter().flatten() {
                    a.out.notify(Out::Kick {
                        code: ErrorCode::SESSION_ENDED,
                        message: "the other side did not come back within the relay's idle limit"
                            .into(),
                    });
                }
            }
        }
        expired.len()
    }

    /// Sessions held now.
    pub fn session_count(&self) -> usize {
        self.lock().sessions.len()
    }
}
