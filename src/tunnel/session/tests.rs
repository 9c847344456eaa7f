//! Session tests on simulated time, with an in-memory relay that pairs two sessions, adds
//! latency, and loses whatever is in flight on a connection that dies.

use super::*;
use crate::router::frame::{CanFrame, CanId, Timestamp};
use crate::wire::tunnel::{PduRecord, RecordKind, Welcome};
use proptest::prelude::*;

const SID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab";

fn cfg(role: Role, instance: u64) -> SessionConfig {
    SessionConfig::new(role, SID, Token("t".into()), instance)
}

fn pdu(id: u32, pad: usize) -> RecordRepr {
    let mut d = id.to_be_bytes().to_vec();
    d.resize(4 + pad, 0xAA);
    RecordRepr {
        channel: 2,
        flags: 0,
        body: RecordBody::IsoTp(PduRecord {
            timestamp: Timestamp(id as u64),
            data: Bytes::from(d),
        }),
    }
}

fn pdu_id(r: &RecordRepr) -> u32 {
    match &r.body {
        RecordBody::IsoTp(p) => u32::from_be_bytes(p.data[..4].try_into().unwrap()),
        other => panic!("unexpected record {other:?}"),
    }
}

fn can(id: u16) -> RecordRepr {
    RecordRepr {
        channel: 1,
        flags: 0,
        body: RecordBody::Can(CanFrame::new(CanId::standard(id).unwrap(), &[1; 8]).unwrap()),
    }
}

/// One side of the simulated world.
struct Side {
    s: Session,
    /// Websocket open.
    up: bool,
    /// The relay has this side's hello (registered).
    hello: Option<Hello>,
    /// Relay to endpoint, with delivery time.
    inbox: VecDeque<(Instant, Transmit)>,
    /// Records the application still wants to send, in order (refused ones wait here).
    outbox: VecDeque<RecordRepr>,
    sent_ids: Vec<u32>,
    got_ids: Vec<u32>,
    events: Vec<Event>,
}

impl Side {
    fn new(s: Session) -> Self {
        Side {
            s,
            up: false,
            hello: None,
            inbox: VecDeque::new(),
            outbox: VecDeque::new(),
            sent_ids: vec![],
            got_ids: vec![],
            events: vec![],
        }
    }
}

/// Two sessions and a relay, on simulated time.
struct World {
    now: Instant,
    latency: Duration,
    side: [Side; 2],
}

impl World {
    fn new(a: SessionConfig, b: SessionConfig) -> Self {
        let now = Instant::now();
        World {
            now,
            latency: Duration::from_millis(5),
            side: [
                Side::new(Session::new(a, now)),
                Side::new(Session::new(b, now)),
            ],
        }
    }

    fn connect(&mut self, i: usize) {
        let now = self.now;
        let sd = &mut self.side[i];
        assert!(!sd.up);
        sd.up = true;
        sd.s.connected(now);
    }

    /// The connection of side `i` dies: in-flight messages to it are lost, the relay
    /// unregisters it and tells the other side.
    fn kill(&mut self, i: usize) {
        let now = self.now;
        let sd = &mut self.side[i];
        if !sd.up {
            return;
        }
        sd.up = false;
        sd.inbox.clear();
        sd.s.disconnected(now);
        let was_registered = sd.hello.take().is_some();
        let o = &mut self.side[1 - i];
        if was_registered && o.hello.is_some() {
            let at = now + self.latency;
            o.inbox.push_back((
                at,
                Transmit::Text(
                    Control::PeerDown {
                        reason: "connection lost".into(),
                    }
                    .to_text(),
                ),
            ));
        }
    }

    /// The relay handles a message from side `i`.
    fn relay(&mut self, i: usize, t: Transmit) {
        let at = self.now + self.latency;
        if let Transmit::Text(text) = &t
            && let Ok(Control::Hello(h)) = Control::parse(text)
        {
            let peer_connected = self.side[1 - i].hello.is_some();
            self.side[i].inbox.push_back((
                at,
                Transmit::Text(
                    Control::Welcome(Welcome {
                        version: 1,
                        session: h.session.clone(),
                        peer_connected,
                        keepalive_ms: 5000,
                    })
                    .to_text(),
                ),
            ));
            if let Some(other) = self.side[1 - i].hello.clone() {
                self.side[i].inbox.push_back((
                    at,
                    Transmit::Text(Control::Peer(PeerInfo::from_hello(&other)).to_text()),
                ));
                self.side[1 - i].inbox.push_back((
                    at,
                    Transmit::Text(Control::Peer(PeerInfo::from_hello(&h)).to_text()),
                ));
            }
            self.side[i].hello = Some(h);
            return;
        }
        // Forward only between two registered sides.
        if self.side[i].hello.is_some() && self.side[1 - i].hello.is_some() {
            self.side[1 - i].inbox.push_back((at, t));
        }
    }

    /// Feed the application's outbox into the session (stopping at the first refusal).
    fn feed(&mut self, i: usize) {
        let now = self.now;
        let sd = &mut self.side[i];
        while let Some(r) = sd.outbox.pop_front() {
            let id = pdu_id(&r);
            match sd.s.send(now, r, false) {
                Ok(Sent::Queued(_)) => sd.sent_ids.push(id),
                Ok(Sent::Shed) => panic!("a PDU was shed"),
                Err(SendError::Full { record, .. }) => {
                    sd.outbox.push_front(*record);
                    break;
                }
                Err(e) => panic!("send failed: {e}"),
            }
        }
    }

    /// Run everything due at `now` until nothing moves.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..2 {
                self.feed(i);
                while let Some(t) = self.side[i].s.poll_transmit(self.now) {
                    moved = true;
                    if self.side[i].up {
                        self.relay(i, t);
                    }
                }
                while self.side[i]
                    .inbox
                    .front()
                    .is_some_and(|(at, _)| *at <= self.now)
                {
                    let (_, t) = self.side[i].inbox.pop_front().unwrap();
                    moved = true;
                    let now = self.now;
                    let r = match t {
                        Transmit::Text(x) => self.side[i].s.handle_text(now, &x),
                        Transmit::Binary(b) => self.side[i].s.handle_binary(now, b),
                    };
                    r.unwrap_or_else(|e| panic!("side {i}: {e}"));
                }
                while let Some(ev) = self.side[i].s.poll_event() {
                    moved = true;
                    match ev {
                        Event::Record(r) => self.side[i].got_ids.push(pdu_id(&r)),
                        Event::Dead => {
                            self.side[i].events.push(Event::Dead);
                            self.kill(i);
                        }
                        other => self.side[i].events.push(other),
                    }
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// Advance simulated time to the next thing due (timer or delivery), at most `max`.
    fn step(&mut self, max: Duration) {
        self.settle();
        let limit = self.now + max;
        let mut next = limit;
        for sd in &self.side {
            if let Some(t) = sd.s.poll_at() {
                next = next.min(t.max(self.now));
            }
            if let Some((at, _)) = sd.inbox.front() {
                next = next.min(*at);
            }
        }
        self.now = next.max(self.now);
        self.settle();
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step(end - self.now);
        }
        self.settle();
    }

    fn queue(&mut self, i: usize, n: u32, pad: usize) {
        let base = (i as u32) << 24;
        let start = self.side[i].sent_ids.len() as u32 + self.side[i].outbox.len() as u32;
        for k in 0..n {
            self.side[i].outbox.push_back(pdu(base + start + k, pad));
        }
    }
}

fn pair() -> World {
    World::new(cfg(Role::Gateway, 0xA), cfg(Role::Operator, 0xB))
}

#[test]
fn records_flow_both_ways_and_acks_release_replay() {
    let mut w = pair();
    w.connect(0);
    w.connect(1);
    w.run_for(Duration::from_millis(20));
    assert_eq!(w.side[0].s.link(), Link::Up);
    assert!(w.side[0].events.contains(&Event::Up {
        resumed: false,
        replaying: 0
    }));
    w.queue(0, 100, 10);
    w.queue(1, 50, 3000);
    w.run_for(Duration::from_millis(200));
    assert_eq!(w.side[1].got_ids, w.side[0].sent_ids);
    assert_eq!(w.side[0].got_ids, w.side[1].sent_ids);
    assert_eq!(w.side[0].sent_ids.len(), 100);
    assert_eq!(w.side[1].sent_ids.len(), 50);
    // Standalone or piggybacked acks released everything.
    assert_eq!(w.side[0].s.in_flight_bytes(), 0);
    assert_eq!(w.side[1].s.in_flight_bytes(), 0);
    assert_eq!(w.side[0].s.last_received(), 50);
    assert_eq!(w.side[1].s.last_received(), 100);
    let st = w.side[0].s.stats();
    assert_eq!(st.records_sent, 100);
    assert_eq!(st.records_received, 50);
    assert_eq!(st.duplicates_dropped, 0);
    // 100 small records left in far fewer batches than records.
    assert!(st.batches_sent < 10, "batches {}", st.batches_sent);
}

#[test]
fn batching_flushes_on_deadline_and_on_size() {
    let now = Instant::now();
    let mut w = pair();
    w.now = now;
    w.connect(0);
    w.connect(1);
    w.run_for(Duration::from_millis(20));
    let t0 = w.now;
    let s = &mut w.side[0].s;
    // Drain pings etc.
    while s.poll_transmit(t0).is_some() {}
    s.send(t0, can(0x100), true).unwrap();
    s.send(t0, can(0x101), true).unwrap();
    // Not yet due: waits for companions.
    assert_eq!(s.poll_transmit(t0), None);
    let due = s.poll_at().unwrap();
    assert_eq!(due, t0 + s.config().flush_delay);
    let Some(Transmit::Binary(b)) = s.poll_transmit(due) else {
        panic!("no batch at the flush deadline")
    };
    let mut recs = vec![];
    let h = wire::parse_batch(&b, &Limits::default(), &mut recs).unwrap();
    assert_eq!((h.first_seq, h.record_count), (1, 2));
    // Size: 64 KiB of PDUs flushes at once, without waiting for the deadline.
    let t1 = due;
    for k in 0..17 {
        s.send(t1, pdu(k, 4000), false).unwrap();
    }
    let Some(Transmit::Binary(b)) = s.poll_transmit(t1) else {
        panic!("size-triggered flush missing")
    };
    assert!(b.len() <= 64 * 1024, "batch of {} bytes", b.len());
    assert!(b.len() > 60 * 1024);
}

#[test]
fn explicit_flush_sends_queued_records_before_the_deadline() {
    let (mut s, t0) = up_session();
    // Nothing queued: flushing is a no-op.
    s.flush(t0);
    assert_eq!(s.poll_transmit(t0), None);
    s.send(t0, can(0x100), true).unwrap();
    s.send(t0, can(0x101), true).unwrap();
    assert_eq!(s.poll_transmit(t0), None, "waits for companions");
    s.flush(t0);
    let Some(Transmit::Binary(b)) = s.poll_transmit(t0) else {
        panic!("flush did not send the queued records at once")
    };
    let mut recs = vec![];
    let h = wire::parse_batch(&b, &Limits::default(), &mut recs).unwrap();
    assert_eq!(h.record_count, 2);
    assert_eq!(s.poll_transmit(t0), None);
}

#[test]
fn replay_bound_backpressure_and_shedding() {
    let mut c = cfg(Role::Gateway, 1);
    c.limits.max_in_flight = 10_000;
    let now = Instant::now();
    let mut s = Session::new(c, now);
    // 4012-byte body + 8 header = 4020 wire bytes: two fit, the third does not.
    assert!(matches!(
        s.send(now, pdu(1, 4000), false),
        Ok(Sent::Queued(1))
    ));
    assert!(matches!(
        s.send(now, pdu(2, 4000), false),
        Ok(Sent::Queued(2))
    ));
    assert_eq!(s.in_flight_bytes(), 8040);
    match s.send(now, pdu(3, 4000), false) {
        Err(SendError::Full {
            record,
            in_flight,
            max,
        }) => {
            assert_eq!(pdu_id(&record), 3, "the refused record is handed back");
            assert_eq!((in_flight, max), (8040, 10_000));
        }
        other => panic!("expected Full, got {other:?}"),
    }
    // Raw frames are shed instead, and counted; smaller ones still fit.
    assert_eq!(s.send(now, pdu(4, 1930), false), Ok(Sent::Queued(3)));
    assert_eq!(s.send(now, can(0x7E8), true), Ok(Sent::Shed));
    assert_eq!(s.stats().shed, 1);
    assert_eq!(s.stats().refused_full, 1);
    assert!(s.in_flight_bytes() <= 10_000);
    assert_eq!(s.next_seq(), 4, "shed records get no sequence number");
    // Larger than the whole window: can never be sent.
    assert!(matches!(
        s.send(now, pdu(5, 12_000), false),
        Err(SendError::TooLarge { .. })
    ));
}

#[test]
fn writable_after_ack_frees_space() {
    let mut a = cfg(Role::Gateway, 0xA);
    a.limits.max_in_flight = 20_000;
    let mut w = World::new(a, cfg(Role::Operator, 0xB));
    w.connect(0);
    w.connect(1);
    w.run_for(Duration::from_millis(20));
    w.queue(0, 40, 4000);
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.side[1].got_ids.len(), 40);
    assert_eq!(w.side[1].got_ids, w.side[0].sent_ids);
    assert!(w.side[0].s.stats().refused_full > 0);
    assert!(w.side[0].events.contains(&Event::Writable));
}

#[test]
fn resume_replays_exactly_the_unacked_suffix() {
    let mut w = pair();
    w.connect(0);
    w.connect(1);
    w.run_for(Duration::from_millis(20));
    w.queue(0, 30, 100);
    w.run_for(Duration::from_millis(100));
    assert_eq!(w.side[1].got_ids.len(), 30);
    // Send 20 more, let them leave A but kill A's connection before anything arrives.
    w.queue(0, 20, 100);
    w.step(Duration::from_millis(1));
    w.step(Duration::from_millis(1));
    assert!(w.side[0].s.stats().records_sent >= 50);
    assert_eq!(w.side[1].got_ids.len(), 30);
    // The relay forwarded the batch already; B gets it. Then kill B before it acks.
    w.run_for(Duration::from_millis(6));
    assert_eq!(w.side[1].got_ids.len(), 50);
    w.kill(1);
    w.kill(0);
    assert!(w.side[0].s.in_flight_bytes() > 0, "ack never reached A");
    w.run_for(Duration::from_millis(50));
    w.connect(0);
    w.connect(1);
    w.run_for(Duration::from_millis(100));
    // A resumed from B's last received (50): nothing replayed that B had.
    assert_eq!(w.side[1].got_ids, w.side[0].sent_ids);
    assert_eq!(w.side[1].s.stats().duplicates_dropped, 0);
    assert!(
        w.side[0]
            .events
            .iter()
            .any(|e| matches!(e, Event::Up { resumed: true, .. }))
    );
    assert_eq!(w.side[0].s.in_flight_bytes(), 0);
}

#[test]
fn stale_resume_point_replays_and_duplicates_are_dropped() {
    let mut w = pair();
    w.connect(0);
    w.connect(1);
    w.run_for(Duration::from_millis(20));
    // B's hello (held by the relay) says last_received = 0. A sends 10; B gets them, but A
    // dies before B's ack arrives.
    w.queue(0, 10, 10);
    w.run_for(Duration::from_millis(6));
    assert_eq!(w.side[1].got_ids.len(), 10);
    w.kill(0);
    w.connect(0);
    w.run_for(Duration::from_millis(100));
    // A got B's stale hello (peer_instance None): replayed all 10; B dropped them all.
    assert_eq!(w.side[1].got_ids, w.side[0].sent_ids);
    assert_eq!(w.side[1].s.stats().duplicates_dropped, 10);
    assert_eq!(w.side[0].s.stats().replayed, 10);
    assert_eq!(w.side[0].s.in_flight_bytes(), 0);
}

#[test]
fn peer_restart_is_reported_and_numbering_restarts() {
    let mut w = pair();
    w.connect(0);
    w.connect(1);
    w.run_for(Duration::from_millis(20));
    w.queue(1, 5, 10);
    w.run_for(Duration::from_millis(50));
    assert_eq!(w.side[0].got_ids.len(), 5);
    // B loses its state: a new session with a new instance.
    w.kill(1);
    let now = w.now;
    w.side[1] = Side::new(Session::new(cfg(Role::Operator, 0xC), now));
    w.connect(1);
    w.queue(1, 3, 10);
    w.run_for(Duration::from_millis(50));
    assert!(w.side[0].events.contains(&Event::PeerRestarted));
    assert_eq!(w.side[0].got_ids.len(), 8);
    assert_eq!(w.side[0].s.last_received(), 3);
}

#[test]
fn keepalive_measures_rtt_on_simulated_time() {
    let mut w = pair();
    w.latency = Duration::from_millis(40);
    w.connect(0);
    w.connect(1);
    w.run_for(Duration::from_millis(500));
    // Through the relay: 40 ms each way.
    assert_eq!(w.side[0].s.rtt(), Some(Duration::from_millis(80)));
    assert!(
        w.side[0]
            .events
            .contains(&Event::Rtt(Duration::from_millis(80)))
    );
    // Pings repeat at the keepalive interval; the link stays up for a minute.
    w.run_for(Duration::from_secs(60));
    assert_eq!(w.side[0].s.link(), Link::Up);
    assert!(!w.side[0].events.contains(&Event::Dead));
    let report = w.side[0].s.stats_report();
    assert_eq!(report.rtt_us, Some(80_000));
}

#[test]
fn dead_peer_timeout() {
    let now = Instant::now();
    let mut s = Session::new(cfg(Role::Gateway, 1), now);
    s.connected(now);
    assert!(matches!(s.poll_transmit(now), Some(Transmit::Text(t)) if t.contains("\"hello\"")));
    s.handle_text(now, &welcome()).unwrap();
    s.handle_text(now, &peer_msg(2, None, 0)).unwrap();
    assert_eq!(s.link(), Link::Up);
    // A ping goes out at once; no answer ever comes.
    assert!(matches!(s.poll_transmit(now), Some(Transmit::Text(t)) if t.contains("\"ping\"")));
    // Then the RESUME ack-only batch; nothing else.
    assert!(matches!(s.poll_transmit(now), Some(Transmit::Binary(b)) if b.len() == 20));
    assert_eq!(s.poll_transmit(now), None);
    let dead_at = s.poll_at().unwrap();
    assert_eq!(dead_at, now + Duration::from_secs(15));
    s.handle_timeout(dead_at - Duration::from_millis(1));
    assert_eq!(s.link(), Link::Up);
    s.handle_timeout(dead_at);
    assert_eq!(s.link(), Link::Down);
    assert!(std::iter::from_fn(|| s.poll_event()).any(|e| e == Event::Dead));
}

fn welcome() -> String {
    Control::Welcome(Welcome {
        version: 1,
        session: SID.into(),
        peer_connected: true,
        keepalive_ms: 5000,
    })
    .to_text()
}

fn peer_msg(instance: u64, peer_instance: Option<u64>, last: u64) -> String {
    Control::Peer(PeerInfo {
        role: Role::Operator,
        version: 1,
        instance,
        capabilities: vec![],
        resume: Resume {
            peer_instance,
            last_received: last,
        },
        limits: Limits::default(),
    })
    .to_text()
}

fn up_session() -> (Session, Instant) {
    let now = Instant::now();
    let mut s = Session::new(cfg(Role::Gateway, 1), now);
    s.connected(now);
    while s.poll_transmit(now).is_some() {}
    s.handle_text(now, &welcome()).unwrap();
    s.handle_text(now, &peer_msg(2, None, 0)).unwrap();
    while s.poll_transmit(now).is_some() {}
    (s, now)
}

fn batch(first: u64, ack: u64, recs: &[RecordRepr]) -> Bytes {
    flagged(wire::BATCH_FLAG_RESUME, first, ack, recs)
}

fn flagged(flags: u8, first: u64, ack: u64, recs: &[RecordRepr]) -> Bytes {
    let mut out = BytesMut::new();
    wire::emit_batch(flags, first, ack, recs.iter(), &mut out);
    out.freeze()
}

#[test]
fn bad_input_is_a_typed_error() {
    let (mut s, now) = up_session();
    // Malformed: truncated header.
    let e = s
        .handle_binary(now, Bytes::from_static(&[1, 0, 0]))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::MALFORMED_BATCH);
    // Unknown record kind.
    let mut v = batch(1, 0, &[pdu(1, 0)]).to_vec();
    v[22] = 0x42;
    let e = s.handle_binary(now, Bytes::from(v)).unwrap_err();
    assert_eq!(e.code(), ErrorCode::UNKNOWN_RECORD_KIND);
    assert!(e.to_string().contains("0x42"), "{e}");
    // Oversize record (above our max_record of 1 MiB).
    let mut v = batch(1, 0, &[pdu(1, 0)]).to_vec();
    v[24..28].copy_from_slice(&(2u32 << 20).to_be_bytes());
    let e = s.handle_binary(now, Bytes::from(v)).unwrap_err();
    assert_eq!(e.code(), ErrorCode::RECORD_TOO_LARGE);
    // Ack of something never sent.
    let e = s.handle_binary(now, batch(1, 5, &[])).unwrap_err();
    assert_eq!(e, SessionError::BadAck { ack: 5, sent: 0 });
    assert_eq!(e.code(), ErrorCode::BAD_ACK);
    // First batch sets the start; then a gap.
    s.handle_binary(now, batch(1, 0, &[pdu(1, 0)])).unwrap();
    let e = s.handle_binary(now, batch(3, 0, &[pdu(3, 0)])).unwrap_err();
    assert_eq!(
        e,
        SessionError::Gap {
            expected: 2,
            got: 3
        }
    );
    // Duplicates are dropped silently.
    s.handle_binary(now, batch(1, 0, &[pdu(1, 0), pdu(2, 0)]))
        .unwrap();
    let got: Vec<u32> = std::iter::from_fn(|| s.poll_event())
        .filter_map(|e| match e {
            Event::Record(r) => Some(pdu_id(&r)),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec![1, 2]);
    assert_eq!(s.stats().duplicates_dropped, 1);
    // Control: garbage, a hello to an endpoint, a fatal error from the relay.
    assert_eq!(
        s.handle_text(now, "{nope").unwrap_err().code(),
        ErrorCode::MALFORMED_CONTROL
    );
    assert!(s.handle_text(now, "{\"type\":\"hello\"}").is_err());
    let e = s
        .handle_text(
            now,
            &Control::Error {
                code: ErrorCode::AUTH_FAILED,
                message: "bad token".into(),
                channel: None,
            }
            .to_text(),
        )
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AUTH_FAILED);
    // Unknown control types are answered, not fatal.
    s.handle_text(now, "{\"type\":\"teleport\"}").unwrap();
    assert!(matches!(s.poll_transmit(now),
        Some(Transmit::Text(t)) if t.contains("\"code\":121")));
    // Channel-level errors are passed to the endpoint.
    s.handle_text(
        now,
        &Control::Error {
            code: ErrorCode::UNKNOWN_CHANNEL,
            message: "no channel 9".into(),
            channel: Some(9),
        }
        .to_text(),
    )
    .unwrap();
    assert!(matches!(
        s.poll_event(),
        Some(Event::Control(Control::Error {
            channel: Some(9),
            ..
        }))
    ));
    // The error renders as a control message with its code.
    let c = SessionError::Gap {
        expected: 2,
        got: 3,
    }
    .to_control();
    assert!(c.to_text().contains("\"code\":114"));
    // Parse errors name the record kind they hit.
    assert_eq!(RecordKind::Doip.fixed_len(), 12);
}

#[test]
fn batch_before_peer_is_refused() {
    let now = Instant::now();
    let mut s = Session::new(cfg(Role::Gateway, 1), now);
    s.connected(now);
    assert_eq!(
        s.handle_binary(now, batch(1, 0, &[pdu(1, 0)])),
        Err(SessionError::NotUp("hello"))
    );
    assert_eq!(
        s.send_control(Control::Close { channel: 1 }),
        Err(SendError::NotUp)
    );
}

#[test]
fn batches_written_before_the_attach_are_discarded_until_resume() {
    let (mut s, now) = up_session();
    // Unflagged: written toward an earlier attachment; its records are dropped (the peer
    // replays them), and no gap error is raised even though 7 is not the start.
    s.handle_binary(now, flagged(0, 7, 0, &[pdu(7, 0)]))
        .unwrap();
    assert_eq!(s.stats().discarded_stale, 1);
    assert_eq!(s.last_received(), 0);
    // The RESUME batch ends the resync; later unflagged batches are normal.
    s.handle_binary(now, batch(5, 0, &[pdu(5, 0), pdu(6, 0), pdu(7, 0)]))
        .unwrap();
    s.handle_binary(now, flagged(0, 8, 0, &[pdu(8, 0)]))
        .unwrap();
    assert_eq!(s.last_received(), 8);
    // After the resync a gap is a protocol error.
    assert!(matches!(
        s.handle_binary(now, flagged(0, 10, 0, &[pdu(10, 0)])),
        Err(SessionError::Gap {
            expected: 9,
            got: 10
        })
    ));
    // Our own first batch after the attach carried the RESUME flag.
    let now2 = now;
    let mut s2 = Session::new(cfg(Role::Gateway, 1), now2);
    s2.connected(now2);
    s2.poll_transmit(now2);
    s2.handle_text(now2, &welcome()).unwrap();
    s2.handle_text(now2, &peer_msg(2, None, 0)).unwrap();
    let first_binary = std::iter::from_fn(|| s2.poll_transmit(now2))
        .find_map(|t| match t {
            Transmit::Binary(b) => Some(b),
            _ => None,
        })
        .expect("an immediate RESUME batch");
    assert_eq!(first_binary[1], wire::BATCH_FLAG_RESUME);
}

#[test]
fn unanswered_channel_requests_are_sent_again_after_resume() {
    let (mut s, now) = up_session();
    let open = |channel| Control::Open {
        channel,
        params: crate::wire::tunnel::ChannelParams::Doip {
            target: 0x1001,
            source: None,
        },
    };
    s.send_control(open(2)).unwrap();
    s.send_control(open(3)).unwrap();
    s.send_control(Control::Ping { id: 99, t_us: 0 }).unwrap();
    let texts = |s: &mut Session| -> Vec<String> {
        std::iter::from_fn(|| s.poll_transmit(now))
            .filter_map(|t| match t {
                Transmit::Text(x) => Some(x),
                Transmit::Binary(_) => None,
            })
            .collect()
    };
    assert_eq!(texts(&mut s).len(), 3);
    // Channel 2 is answered; channel 3's answer is lost with the connection.
    s.handle_text(now, &Control::Opened { channel: 2 }.to_text())
        .unwrap();
    assert!(
        std::iter::from_fn(|| s.poll_event())
            .any(|e| matches!(e, Event::Control(Control::Opened { channel: 2 })))
    );
    assert_eq!(s.unanswered_requests(), 1);
    s.handle_text(now, &Control::PeerDown { reason: "x".into() }.to_text())
        .unwrap();
    s.handle_text(now, &peer_msg(2, Some(1), 0)).unwrap();
    let again = texts(&mut s);
    let opens: Vec<&String> = again.iter().filter(|t| t.contains("\"open\"")).collect();
    assert_eq!(opens.len(), 1, "{again:?}");
    assert!(opens[0].contains("\"channel\":3"));
    // An error naming the channel answers it too.
    s.handle_text(
        now,
        &Control::Error {
            code: ErrorCode::TARGET_UNREACHABLE,
            message: "no ECU 0x1001".into(),
            channel: Some(3),
        }
        .to_text(),
    )
    .unwrap();
    assert_eq!(s.unanswered_requests(), 0);
}

#[test]
fn standalone_ack_after_delay() {
    let (mut s, now) = up_session();
    let acks_before = s.stats().acks_sent;
    s.handle_binary(now, batch(1, 0, &[pdu(1, 0)])).unwrap();
    assert_eq!(s.poll_transmit(now), None);
    let at = s.poll_at().unwrap();
    assert_eq!(at, now + s.config().ack_delay);
    let Some(Transmit::Binary(b)) = s.poll_transmit(at) else {
        panic!("no ack")
    };
    let mut v = vec![];
    let h = wire::parse_batch(&b, &Limits::default(), &mut v).unwrap();
    assert_eq!((h.record_count, h.ack, h.first_seq), (0, 1, 1));
    assert_eq!(s.stats().acks_sent, acks_before + 1);
}

#[derive(Debug, Clone)]
enum Op {
    Send(usize, u32, usize),
    Advance(u64),
    Kill(usize),
    Connect(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..2, 1u32..40, prop::sample::select(vec![0usize, 20, 500, 3000])).prop_map(|(i, n, p)| Op::Send(i, n, p)),
        4 => (0u64..30).prop_map(Op::Advance),
        1 => (0usize..2).prop_map(Op::Kill),
        2 => (0usize..2).prop_map(Op::Connect),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random traffic both ways, random disconnects and reconnects: every record is
    /// delivered exactly once, in order, and the replay bound always holds.
    #[test]
    fn lossless_resume_under_random_disconnects(ops in proptest::collection::vec(op(), 1..60)) {
        let mut a = cfg(Role::Gateway, 0xA);
        let mut b = cfg(Role::Operator, 0xB);
        a.limits.max_in_flight = 16 * 1024;
        b.limits.max_in_flight = 16 * 1024;
        let mut w = World::new(a, b);
        for op in ops {
            match op {
                Op::Send(i, n, pad) => w.queue(i, n, pad),
                Op::Advance(ms) => w.run_for(Duration::from_millis(ms)),
                Op::Kill(i) => w.kill(i),
                Op::Connect(i) => if !w.side[i].up { w.connect(i) },
            }
            w.settle();
            for sd in &w.side {
                prop_assert!(sd.s.in_flight_bytes() <= 16 * 1024);
                prop_assert!(sd.got_ids.len() <= 100_000);
            }
        }
        for i in 0..2 {
            if !w.side[i].up { w.connect(i); }
        }
        w.run_for(Duration::from_secs(2));
        for i in 0..2 {
            let o = 1 - i;
            prop_assert!(w.side[i].outbox.is_empty());
            prop_assert_eq!(&w.side[o].got_ids, &w.side[i].sent_ids);
            prop_assert_eq!(w.side[i].s.in_flight_bytes(), 0);
        }
    }
}
