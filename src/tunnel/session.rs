//! The sans-IO tunnel session: one endpoint's side of a resumable stream of records.
//!
//! Owns: per-direction 64-bit sequence numbers, cumulative acks (piggybacked and standalone),
//! the replay buffer bounded in bytes (backpressure when full; sheddable raw-mirror records
//! are shed and counted instead), batching (flush on size or deadline), resume after
//! reconnect (hello carries what we received; the peer's `peer` message says what it
//! received; we replay exactly the unacked suffix and drop duplicates on receive), keepalive
//! with round-trip time and a dead-peer timeout.
//!
//! Does not own: sockets, clocks or tasks. The driver feeds it websocket messages and `now`,
//! sends what [`Session::poll_transmit`] returns, sleeps until [`Session::poll_at`] and reacts
//! to [`Session::poll_event`]. Channel semantics (what `open` binds to) belong to the gateway
//! and operator endpoints; this session only passes those control messages through.
//!
//! Protocol: `docs/tunnel-protocol.md`. Wire format: [`crate::wire::tunnel`].

use crate::wire::tunnel::{
    self as wire, BATCH_FLAG_REPLAY, BATCH_FLAG_RESUME, BATCH_HEADER_LEN, Control, ErrorCode,
    Hello, Limits, MAX_RECORDS_PER_BATCH, PeerInfo, RECORD_HEADER_LEN, RecordBody, RecordRepr,
    Resume, Role, StatsReport, Token, WireError,
};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Session parameters. Defaults suit a Raspberry-Pi-class gateway on a home uplink.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub role: Role,
    /// The ticket's connection UUID.
    pub session: String,
    pub token: Token,
    /// Random id of this stream state; draw a new one whenever the state is created afresh.
    pub instance: u64,
    pub capabilities: Vec<String>,
    /// What this endpoint accepts (receive side) and how many unacked bytes it keeps for
    /// replay (`max_in_flight`: the backpressure bound).
    pub limits: Limits,
    /// A record waits at most this long for companions before its batch is sent.
    pub flush_delay: Duration,
    /// A batch is sent as soon as its records reach this many bytes.
    pub flush_bytes: usize,
    /// A standalone ack is sent this long after unacked data arrived, if no batch carried it.
    pub ack_delay: Duration,
    /// Ack at once after this many unacked records.
    pub ack_every: u64,
    /// Interval between end-to-end pings.
    pub keepalive_interval: Duration,
    /// With nothing received for this long, the connection is declared dead.
    pub dead_after: Duration,
    pub agent: Option<String>,
}

impl SessionConfig {
    pub fn new(role: Role, session: impl Into<String>, token: Token, instance: u64) -> Self {
        SessionConfig {
            role,
            session: session.into(),
            token,
            instance,
            capabilities: vec!["can".into(), "canfd".into(), "isotp".into(), "doip".into()],
            limits: Limits::default(),
            flush_delay: Duration::from_micros(500),
            flush_bytes: 64 * 1024,
            ack_delay: Duration::from_millis(10),
            ack_every: 256,
            keepalive_interval: Duration::from_secs(5),
            dead_after: Duration::from_secs(15),
            agent: Some(concat!("obdgw/", env!("CARGO_PKG_VERSION")).into()),
        }
    }
}

/// Something to send on the websocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    Text(String),
    Binary(Bytes),
}

/// What the session tells its driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The peer is attached and the stream runs; `replaying` records go out again.
    Up { resumed: bool, replaying: u64 },
    /// The peer's stream state is new (it restarted): sequence numbers from it start over.
    /// Records it had sent but we had not received are lost with its old state.
    PeerRestarted,
    /// A record from the peer, in order, exactly once.
    Record(RecordRepr),
    /// A control message for the endpoint (open, opened, close, closed, error, stats, …).
    Control(Control),
    /// Replay space was freed after a send was refused: send again.
    Writable,
    /// The relay reports the peer's connection gone; the session waits for it.
    PeerDown { reason: String },
    /// Nothing arrived for `dead_after`: close this websocket and reconnect.
    Dead,
    /// A round-trip time was measured.
    Rtt(Duration),
    /// The peer ended the session for good.
    Bye { reason: String },
}

/// Why a send was refused. The record is handed back: nothing is dropped silently.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    /// The replay buffer is full: wait for [`Event::Writable`] and send again.
    #[error("tunnel replay buffer full ({in_flight} of {max} bytes unacknowledged): wait for acks")]
    Full {
        record: Box<RecordRepr>,
        in_flight: usize,
        max: u32,
    },
    /// The record is larger than the peer accepts.
    #[error("tunnel record body of {len} bytes exceeds the peer's {max}-byte limit")]
    TooLarge { len: usize, max: u32 },
    /// Control messages go only to an attached peer.
    #[error("tunnel session is not attached to a peer: control messages cannot be sent now")]
    NotUp,
}

/// What happened to an accepted send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Queued with this sequence number; it will be delivered exactly once.
    Queued(u64),
    /// A sheddable record was dropped because the replay buffer was full (counted).
    Shed,
}

/// A fatal protocol violation by the peer (or relay). Send [`SessionError::to_control`] and
/// close the websocket with [`ErrorCode::close_code`]; the session stays usable for a
/// reconnect.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SessionError {
    #[error("malformed tunnel batch: {0}")]
    Wire(#[from] WireError),
    #[error("malformed tunnel control message: {0}")]
    Control(String),
    #[error("tunnel batch before the peer was attached (state {0})")]
    NotUp(&'static str),
    #[error("tunnel sequence gap: expected record {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
    #[error("tunnel peer acked record {ack}, but only {sent} were ever sent")]
    BadAck { ack: u64, sent: u64 },
    #[error("tunnel peer speaks version {0}, this endpoint version 1")]
    Version(u32),
    #[error("tunnel peer advertised invalid limits: {0}")]
    BadLimits(&'static str),
    #[error("tunnel peer or relay reported a fatal error: {code}: {message}")]
    Remote { code: ErrorCode, message: String },
}

impl SessionError {
    pub fn code(&self) -> ErrorCode {
        match self {
            SessionError::Wire(w) => ErrorCode::for_wire_error(w),
            SessionError::Control(_) => ErrorCode::MALFORMED_CONTROL,
            SessionError::NotUp(_) => ErrorCode::MALFORMED_BATCH,
            SessionError::Gap { .. } => ErrorCode::SEQUENCE_GAP,
            SessionError::BadAck { .. } => ErrorCode::BAD_ACK,
            SessionError::Version(_) => ErrorCode::UNSUPPORTED_VERSION,
            SessionError::BadLimits(_) => ErrorCode::BAD_HELLO,
            SessionError::Remote { code, .. } => *code,
        }
    }

    /// The `error` message to send before closing.
    pub fn to_control(&self) -> Control {
        Control::Error {
            code: self.code(),
            message: self.to_string(),
            channel: None,
        }
    }
}

/// Connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// No websocket.
    Down,
    /// Hello sent, waiting for `welcome`.
    Hello,
    /// Welcomed, waiting for the peer.
    AwaitPeer,
    /// Peer attached: records flow.
    Up,
}

impl Link {
    fn name(self) -> &'static str {
        match self {
            Link::Down => "down",
            Link::Hello => "hello",
            Link::AwaitPeer => "await_peer",
            Link::Up => "up",
        }
    }
}

/// A record kept until the peer acks it.
#[derive(Debug)]
struct Pending {
    seq: u64,
    rec: RecordRepr,
    /// Wire bytes (header + body): what the replay bound counts.
    len: usize,
}

/// Session counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub records_sent: u64,
    pub records_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub batches_sent: u64,
    pub batches_received: u64,
    pub acks_sent: u64,
    pub replayed: u64,
    pub duplicates_dropped: u64,
    /// Records of batches written toward an earlier attachment, discarded (they are replayed).
    pub discarded_stale: u64,
    pub shed: u64,
    pub refused_full: u64,
    pub reconnects: u64,
    /// Fatal-coded errors the peer sent after the hello, ignored (see `client::run`).
    pub peer_errors_ignored: u64,
}

/// One endpoint's tunnel session. See the module documentation.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    /// Origin of the `t_us` clock in pings.
    epoch: Instant,
    link: Link,
    /// The limits the peer accepts (defaults until it says otherwise).
    peer_limits: Limits,

    // ---- send side ----
    /// Sequence number the next record gets (the first is 1).
    next_seq: u64,
    /// Unacked records, sent or not, in sequence order (contiguous numbers).
    replay: VecDeque<Pending>,
    /// Sum of `len` over `replay`: bounded by `cfg.limits.max_in_flight`.
    replay_bytes: usize,
    /// Highest sequence number written on the current connection.
    sent_upto: u64,
    /// Highest sequence number ever written (records at or below it are replays).
    max_sent: u64,
    /// Bytes of records not yet written on the current connection.
    unsent_bytes: usize,
    /// When the oldest unsent record must go out.
    flush_at: Option<Instant>,
    /// A send was refused for lack of space: report `Writable` when space frees.
    blocked: bool,
    /// The next batch we write is the first since the peer attached: flag it RESUME.
    resume_flag_due: bool,

    // ---- receive side ----
    /// Highest sequence number received in order from the peer (0: none).
    last_received: u64,
    /// The peer stream instance `last_received` refers to.
    peer_instance: Option<u64>,
    /// The peer's numbering is new: accept its first record as the start.
    expect_any_start: bool,
    /// Discard records until the peer's RESUME-flagged batch arrives (anything before it
    /// was written toward an earlier attachment and will be replayed).
    resync: bool,
    /// The last ack value we sent.
    ack_sent: u64,
    /// When a standalone ack is due.
    ack_at: Option<Instant>,

    // ---- keepalive ----
    last_rx: Instant,
    next_ping_at: Option<Instant>,
    ping_out: Option<(u64, Instant)>,
    ping_id: u64,
    rtt: Option<Duration>,

    // ---- channel requests ----
    /// `open` / `close` requests not answered yet, by channel: sent again after each attach
    /// (control messages are not replayed; the requests are idempotent).
    unanswered: std::collections::BTreeMap<u16, Control>,

    // ---- output ----
    ctrl_out: VecDeque<Control>,
    events: VecDeque<Event>,
    scratch: Vec<RecordRepr>,
    stats: SessionStats,
}

impl Session {
    /// A session with no connection yet. Records may be queued before the first connect.
    pub fn new(cfg: SessionConfig, now: Instant) -> Self {
        Session {
            cfg,
            epoch: now,
            link: Link::Down,
            peer_limits: Limits::default(),
            next_seq: 1,
            replay: VecDeque::new(),
            replay_bytes: 0,
            sent_upto: 0,
            max_sent: 0,
            unsent_bytes: 0,
            flush_at: None,
            blocked: false,
            resume_flag_due: false,
            last_received: 0,
            resync: false,
            peer_instance: None,
            expect_any_start: false,
            ack_sent: 0,
            ack_at: None,
            last_rx: now,
            next_ping_at: None,
            ping_out: None,
            ping_id: 0,
            rtt: None,
            unanswered: std::collections::BTreeMap::new(),
            ctrl_out: VecDeque::new(),
            events: VecDeque::new(),
            scratch: Vec::new(),
            stats: SessionStats::default(),
        }
    }

    /// Present `token` at the next hello (a fresh cloud bearer before each reconnect).
    pub fn set_token(&mut self, token: Token) {
        self.cfg.token = token;
    }

    pub fn link(&self) -> Link {
        self.link
    }
    pub fn stats(&self) -> SessionStats {
        self.stats
    }
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }
    /// Bytes of unacked records held for replay.
    pub fn in_flight_bytes(&self) -> usize {
        self.replay_bytes
    }
    /// Highest sequence number received in order.
    pub fn last_received(&self) -> u64 {
        self.last_received
    }
    /// Sequence number of the next record sent.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// The `stats` control message body.
    pub fn stats_report(&self) -> StatsReport {
        StatsReport {
            records_sent: self.stats.records_sent,
            records_received: self.stats.records_received,
            bytes_sent: self.stats.bytes_sent,
            bytes_received: self.stats.bytes_received,
            replayed: self.stats.replayed,
            duplicates_dropped: self.stats.duplicates_dropped,
            shed: self.stats.shed,
            in_flight_bytes: self.replay_bytes as u64,
            rtt_us: self.rtt.map(|d| d.as_micros() as u64),
        }
    }

    // ------------------------------------------------------------------ connection

    /// A websocket to the relay is open: the hello goes out first.
    pub fn connected(&mut self, now: Instant) {
        self.reset_connection();
        self.link = Link::Hello;
        self.last_rx = now;
        self.stats.reconnects += 1;
        self.ctrl_out.push_back(Control::Hello(Hello {
            version: wire::VERSION as u32,
            role: self.cfg.role,
            session: self.cfg.session.clone(),
            token: self.cfg.token.clone(),
            instance: self.cfg.instance,
            capabilities: self.cfg.capabilities.clone(),
            resume: Resume {
                peer_instance: self.peer_instance,
                last_received: self.last_received,
            },
            limits: self.cfg.limits,
            agent: self.cfg.agent.clone(),
        }));
    }

    /// The websocket is gone. Unacked records stay for replay; nothing else is kept.
    pub fn disconnected(&mut self, _now: Instant) {
        self.reset_connection();
    }

    fn reset_connection(&mut self) {
        self.link = Link::Down;
        self.ctrl_out.clear();
        self.detach_peer();
    }

    /// Forget per-connection progress: what was written may not have arrived.
    fn detach_peer(&mut self) {
        self.sent_upto = self.replay.front().map_or(self.next_seq, |p| p.seq) - 1;
        self.unsent_bytes = self.replay_bytes;
        self.flush_at = None;
        self.ack_at = None;
        self.ping_out = None;
        self.next_ping_at = None;
        self.resume_flag_due = false;
        self.resync = false;
    }

    // ------------------------------------------------------------------ sending

    /// Queue a record. Non-sheddable records are refused with [`SendError::Full`] (the
    /// record handed back) when the replay buffer cannot take them; sheddable ones (raw CAN
    /// mirror traffic) are shed and counted instead.
    pub fn send(
        &mut self,
        now: Instant,
        rec: RecordRepr,
        sheddable: bool,
    ) -> Result<Sent, SendError> {
        let len = rec.buffer_len();
        let body = len - RECORD_HEADER_LEN;
        let max_record = self.peer_limits.max_record.min(self.cfg.limits.max_record);
        if body > max_record as usize {
            return Err(SendError::TooLarge {
                len: body,
                max: max_record,
            });
        }
        let max = self.cfg.limits.max_in_flight;
        if len > max as usize {
            return Err(SendError::TooLarge {
                len: body,
                max: max.saturating_sub(RECORD_HEADER_LEN as u32),
            });
        }
        if self.replay_bytes + len > max as usize {
            if sheddable {
                self.stats.shed += 1;
                return Ok(Sent::Shed);
            }
            self.blocked = true;
            self.stats.refused_full += 1;
            return Err(SendError::Full {
                record: Box::new(rec),
                in_flight: self.replay_bytes,
                max,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.replay.push_back(Pending { seq, rec, len });
        self.replay_bytes += len;
        self.unsent_bytes += len;
        if self.flush_at.is_none() {
            self.flush_at = Some(now + self.cfg.flush_delay);
        }
        Ok(Sent::Queued(seq))
    }

    /// Send queued records at the next [`Session::poll_transmit`] instead of waiting for
    /// the flush delay (the driver calls this when its input queue runs dry).
    pub fn flush(&mut self, now: Instant) {
        if self.unsent_bytes > 0 {
            self.flush_at = Some(now);
        }
    }

    /// Whether a record of `wire_len` bytes (header included) fits in the replay buffer now.
    pub fn can_send(&self, wire_len: usize) -> bool {
        self.replay_bytes + wire_len <= self.cfg.limits.max_in_flight as usize
    }

    /// Queue a control message for the peer (only while the peer is attached: the relay
    /// does not hold messages for an absent peer). `open` and `close` are remembered until
    /// answered (`opened`, `closed`, or an `error` naming the channel) and sent again after
    /// a reconnect.
    pub fn send_control(&mut self, msg: Control) -> Result<(), SendError> {
        if self.link != Link::Up {
            return Err(SendError::NotUp);
        }
        if let Control::Open { channel, .. } | Control::Close { channel } = &msg {
            self.unanswered.insert(*channel, msg.clone());
        }
        self.ctrl_out.push_back(msg);
        Ok(())
    }

    /// Channel requests still waiting for an answer.
    pub fn unanswered_requests(&self) -> usize {
        self.unanswered.len()
    }

    /// Count an error from the peer that was ignored.
    pub fn note_peer_error(&mut self) {
        self.stats.peer_errors_ignored += 1;
    }

    /// Ask the session to end: sends `bye` when attached.
    pub fn close(&mut self, reason: &str) {
        if self.link != Link::Down {
            self.ctrl_out.push_back(Control::Bye {
                reason: reason.into(),
            });
        }
    }

    // ------------------------------------------------------------------ receiving

    /// A text (control) message arrived.
    pub fn handle_text(&mut self, now: Instant, text: &str) -> Result<(), SessionError> {
        self.last_rx = now;
        let msg = Control::parse(text).map_err(|e| SessionError::Control(e.to_string()))?;
        match msg {
            Control::Welcome(w) => {
                if w.version != wire::VERSION as u32 {
                    return Err(SessionError::Version(w.version));
                }
                if self.link == Link::Hello {
                    self.link = Link::AwaitPeer;
                }
            }
            Control::Peer(p) => self.on_peer(now, p)?,
            Control::PeerDown { reason } => {
                if self.link == Link::Up {
                    self.link = Link::AwaitPeer;
                    self.detach_peer();
                }
                self.events.push_back(Event::PeerDown { reason });
            }
            Control::Ping { id, t_us } => {
                self.ctrl_out.push_back(Control::Pong { id, t_us });
            }
            Control::Pong { id, .. } => {
                if let Some((want, sent)) = self.ping_out
                    && want == id
                {
                    let rtt = now.saturating_duration_since(sent);
                    self.rtt = Some(rtt);
                    self.ping_out = None;
                    self.events.push_back(Event::Rtt(rtt));
                }
            }
            Control::Bye { reason } => {
                self.events.push_back(Event::Bye { reason });
            }
            Control::Error { code, message, .. } if code.is_fatal() => {
                return Err(SessionError::Remote { code, message });
            }
            Control::Hello(_) => {
                return Err(SessionError::Control(
                    "an endpoint received a hello (only relays accept hellos)".into(),
                ));
            }
            Control::Opened { channel }
            | Control::Closed { channel, .. }
            | Control::Error {
                channel: Some(channel),
                ..
            } => {
                let answered = matches!(
                    (self.unanswered.get(&channel), &msg),
                    (Some(Control::Open { .. }), Control::Opened { .. })
                        | (Some(Control::Close { .. }), Control::Closed { .. })
                        | (Some(_), Control::Error { .. })
                );
                if answered {
                    self.unanswered.remove(&channel);
                }
                self.events.push_back(Event::Control(msg));
            }
            Control::Unknown => {
                self.ctrl_out.push_back(Control::Error {
                    code: ErrorCode::UNSUPPORTED_MESSAGE,
                    message: "control message type not supported by this endpoint".into(),
                    channel: None,
                });
            }
            other => self.events.push_back(Event::Control(other)),
        }
        Ok(())
    }

    fn on_peer(&mut self, now: Instant, p: PeerInfo) -> Result<(), SessionError> {
        if p.version != wire::VERSION as u32 {
            return Err(SessionError::Version(p.version));
        }
        p.limits.validate().map_err(SessionError::BadLimits)?;
        // Receive side: is this the stream we were receiving?
        if self.peer_instance != Some(p.instance) {
            if self.peer_instance.is_some() {
                self.events.push_back(Event::PeerRestarted);
            }
            self.peer_instance = Some(p.instance);
            self.last_received = 0;
            self.ack_sent = 0;
            self.expect_any_start = true;
        }
        // Send side: what of ours did the peer get?
        // A resume point below what the peer already acked is stale (the relay forwards the
        // value from the peer's hello); replaying from the oldest unacked record is then
        // still exact, because the peer drops duplicates.
        let resumed = p.resume.peer_instance == Some(self.cfg.instance);
        if resumed {
            let got = p.resume.last_received;
            if got >= self.next_seq {
                return Err(SessionError::BadAck {
                    ack: got,
                    sent: self.next_seq - 1,
                });
            }
            self.release_acked(got);
        }
        // Everything still buffered goes out again (from the first unacked record).
        self.link = Link::Up;
        self.peer_limits = p.limits;
        self.detach_peer();
        let replaying = self.max_sent.saturating_sub(self.sent_upto);
        if !self.replay.is_empty() {
            self.flush_at = Some(now);
        }
        self.next_ping_at = Some(now);
        self.last_rx = now;
        // Our first batch on this attachment is flagged (sent at once, even if only an
        // ack); theirs ends our resync.
        self.resume_flag_due = true;
        self.resync = true;
        let again: Vec<Control> = self.unanswered.values().cloned().collect();
        self.ctrl_out.extend(again);
        self.events.push_back(Event::Up { resumed, replaying });
        Ok(())
    }

    /// A binary (batch) message arrived.
    pub fn handle_binary(&mut self, now: Instant, msg: Bytes) -> Result<(), SessionError> {
        self.last_rx = now;
        if self.link != Link::Up {
            return Err(SessionError::NotUp(self.link.name()));
        }
        let msg_len = msg.len();
        self.scratch.clear();
        let header = wire::parse_batch(&msg, &self.cfg.limits, &mut self.scratch)?;
        // The ack covers our stream.
        if header.ack >= self.next_seq {
            return Err(SessionError::BadAck {
                ack: header.ack,
                sent: self.next_seq - 1,
            });
        }
        self.release_acked(header.ack);
        self.stats.batches_received += 1;
        self.stats.bytes_received += msg_len as u64;
        if self.resync {
            if header.flags & BATCH_FLAG_RESUME == 0 {
                // Written before the peer knew of this attachment: it replays these.
                self.stats.discarded_stale += header.record_count as u64;
                return Ok(());
            }
            self.resync = false;
        }
        if header.record_count == 0 {
            return Ok(());
        }
        if self.expect_any_start {
            self.expect_any_start = false;
            self.last_received = header.first_seq - 1;
        }
        let expected = self.last_received + 1;
        if header.first_seq > expected {
            return Err(SessionError::Gap {
                expected,
                got: header.first_seq,
            });
        }
        let skip = (expected - header.first_seq) as usize;
        let count = self.scratch.len();
        let dup = skip.min(count);
        self.stats.duplicates_dropped += dup as u64;
        for rec in self.scratch.drain(dup..) {
            self.events.push_back(Event::Record(rec));
        }
        let fresh = (count - dup) as u64;
        self.last_received += fresh;
        self.stats.records_received += fresh;
        if self.last_received - self.ack_sent >= self.cfg.ack_every {
            self.ack_at = Some(now);
        } else if self.last_received > self.ack_sent && self.ack_at.is_none() {
            self.ack_at = Some(now + self.cfg.ack_delay);
        }
        Ok(())
    }

    fn release_acked(&mut self, ack: u64) {
        let mut freed = false;
        while let Some(front) = self.replay.front() {
            if front.seq > ack {
                break;
            }
            self.replay_bytes -= front.len;
            if front.seq > self.sent_upto {
                // Acked before we (re)sent it on this connection: it was delivered earlier.
                self.unsent_bytes -= front.len;
                self.sent_upto = front.seq;
            }
            self.replay.pop_front();
            freed = true;
        }
        if self.replay.is_empty() {
            self.flush_at = None;
        }
        if freed && self.blocked {
            self.blocked = false;
            self.events.push_back(Event::Writable);
        }
    }

    // ------------------------------------------------------------------ timers and output

    /// Run timers: dead-peer detection and ping scheduling. `poll_transmit` calls it too.
    pub fn handle_timeout(&mut self, now: Instant) {
        // While waiting for the peer the relay has nothing to say; the websocket's own
        // ping frames (the driver's job) watch that hop.
        let watched = matches!(self.link, Link::Hello | Link::Up);
        if watched && now >= self.last_rx + self.cfg.dead_after {
            self.reset_connection();
            self.events.push_back(Event::Dead);
            return;
        }
        if self.link == Link::Up
            && self.ping_out.is_none()
            && self.next_ping_at.is_some_and(|t| now >= t)
        {
            self.ping_id += 1;
            self.ping_out = Some((self.ping_id, now));
            self.next_ping_at = Some(now + self.cfg.keepalive_interval);
            let t_us = now.saturating_duration_since(self.epoch).as_micros() as u64;
            self.ctrl_out.push_back(Control::Ping {
                id: self.ping_id,
                t_us,
            });
        }
    }

    /// The next message to send, if any is due at `now`. Call until it returns `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.handle_timeout(now);
        if let Some(c) = self.ctrl_out.pop_front() {
            return Some(Transmit::Text(c.to_text()));
        }
        if self.link != Link::Up {
            return None;
        }
        let flush_due = self.unsent_bytes > 0
            && (self.unsent_bytes >= self.cfg.flush_bytes
                || self.sent_upto < self.max_sent
                || self.flush_at.is_some_and(|t| now >= t));
        if flush_due {
            return Some(Transmit::Binary(self.build_batch(now)));
        }
        if self.resume_flag_due
            || (self.last_received > self.ack_sent && self.ack_at.is_some_and(|t| now >= t))
        {
            let flags = if std::mem::take(&mut self.resume_flag_due) {
                BATCH_FLAG_RESUME
            } else {
                0
            };
            self.ack_at = None;
            self.ack_sent = self.last_received;
            self.stats.acks_sent += 1;
            let mut out = BytesMut::with_capacity(BATCH_HEADER_LEN);
            wire::emit_batch(
                flags,
                self.next_seq,
                self.last_received,
                [].iter(),
                &mut out,
            );
            return Some(Transmit::Binary(out.freeze()));
        }
        None
    }

    fn build_batch(&mut self, now: Instant) -> Bytes {
        let first = self.sent_upto + 1;
        let start = self.replay.front().map_or(0, |p| (first - p.seq) as usize);
        // A record larger than the budget goes alone (it fits the peer's max_batch: the
        // peer's limits were validated and the record against its max_record).
        let budget = (self.peer_limits.max_batch as usize).min(self.cfg.flush_bytes);
        let mut total = BATCH_HEADER_LEN;
        let mut n = 0usize;
        for p in self.replay.range(start..) {
            if n == MAX_RECORDS_PER_BATCH || (n > 0 && total + p.len > budget) {
                break;
            }
            total += p.len;
            n += 1;
        }
        let last = first + n as u64 - 1;
        let mut flags = if first <= self.max_sent {
            BATCH_FLAG_REPLAY
        } else {
            0
        };
        if std::mem::take(&mut self.resume_flag_due) {
            flags |= BATCH_FLAG_RESUME;
        }
        let replayed = self.max_sent.min(last).saturating_sub(first - 1);
        let mut out = BytesMut::with_capacity(total);
        wire::emit_batch(
            flags,
            first,
            self.last_received,
            self.replay.range(start..start + n).map(|p| &p.rec),
            &mut out,
        );
        self.sent_upto = last;
        self.max_sent = self.max_sent.max(last);
        self.unsent_bytes -= total - BATCH_HEADER_LEN;
        self.stats.replayed += replayed;
        self.stats.records_sent += n as u64 - replayed;
        self.stats.bytes_sent += total as u64;
        self.stats.batches_sent += 1;
        self.ack_sent = self.last_received;
        self.ack_at = None;
        self.flush_at = if self.unsent_bytes > 0 {
            Some(now + self.cfg.flush_delay)
        } else {
            None
        };
        out.freeze()
    }

    /// When the session next needs [`Session::poll_transmit`] / [`Session::handle_timeout`]
    /// even if nothing arrives. `None`: only input can make progress.
    pub fn poll_at(&self) -> Option<Instant> {
        if !self.ctrl_out.is_empty() || self.resume_flag_due {
            return Some(self.epoch);
        }
        let mut t: Option<Instant> = None;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        if matches!(self.link, Link::Hello | Link::Up) {
            consider(Some(self.last_rx + self.cfg.dead_after));
        }
        if self.link == Link::Up {
            if self.unsent_bytes > 0 {
                consider(self.flush_at);
            }
            if self.last_received > self.ack_sent {
                consider(self.ack_at);
            }
            if self.ping_out.is_none() {
                consider(self.next_ping_at);
            }
        }
        t
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

/// A convenience for gateway and operator code: whether a record is raw mirror traffic
/// (the only kind that may be shed).
pub fn is_raw_frame(rec: &RecordRepr) -> bool {
    matches!(rec.body, RecordBody::Can(_) | RecordBody::CanFd(_))
}

#[cfg(test)]
mod tests;
