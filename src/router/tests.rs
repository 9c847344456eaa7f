use super::*;
use bytes::Bytes;

fn can(id: u16, byte: u8) -> Frame {
    CanFrame::new(CanId::standard(id).unwrap(), &[byte; 8])
        .unwrap()
        .into()
}

fn pdu(rx: u16, len: usize) -> Frame {
    IsoTpPdu {
        addr: IsoTpAddr {
            tx_id: CanId::standard(0x7E0).unwrap(),
            rx_id: CanId::standard(rx).unwrap(),
            ext: None,
        },
        data: Bytes::from(vec![0x62; len]),
        timestamp: Timestamp(0),
    }
    .into()
}

fn drain(r: &mut Router, sink: PortId) -> Vec<Frame> {
    let mut out = Vec::new();
    r.pop_batch(sink, usize::MAX, |f| out.push(f));
    out
}

struct Net {
    r: Router,
    src: PortId,
    a: PortId,
    b: PortId,
}

fn net(filter: FrameFilter, policy: OverflowPolicy, cap: usize) -> Net {
    let mut b = Router::builder();
    let src = b.add_port("src", cap).unwrap();
    let a = b.add_port("a", cap).unwrap();
    let bb = b.add_port("b", cap).unwrap();
    b.add_route(RouteSpec {
        name: "r".into(),
        source: src,
        sinks: vec![a, bb],
        filter,
        overflow: policy,
    })
    .unwrap();
    Net {
        r: b.build(),
        src,
        a,
        b: bb,
    }
}

#[test]
fn filter_selects_and_counts_unrouted() {
    let mut n = net(
        FrameFilter::new(&[FrameKind::Can], &["0x7E8-0x7EF".parse().unwrap()]),
        OverflowPolicy::Backpressure,
        16,
    );
    assert_eq!(n.r.route(n.src, can(0x7E8, 1)).unwrap(), 2);
    assert_eq!(n.r.route(n.src, can(0x7F0, 2)).unwrap(), 0);
    assert_eq!(n.r.route(n.src, pdu(0x7E8, 10)).unwrap(), 0); // kind not selected
    let s = n.r.snapshot();
    let src = s.port("src").unwrap();
    assert_eq!((src.rx_frames, src.unrouted, src.rx_bytes), (3, 2, 26));
    assert_eq!(s.route("r").unwrap().frames, 1);
    assert_eq!(drain(&mut n.r, n.a), vec![can(0x7E8, 1)]);
    assert_eq!(drain(&mut n.r, n.b), vec![can(0x7E8, 1)]);
}

#[test]
fn fan_out_shares_payloads() {
    let mut n = net(FrameFilter::all(), OverflowPolicy::Backpressure, 4);
    let f = pdu(0x7E8, 4095);
    let Frame::IsoTp(orig) = &f else {
        unreachable!()
    };
    let ptr = orig.data.as_ptr();
    n.r.route(n.src, f).unwrap();
    for sink in [n.a, n.b] {
        let got = n.r.pop(sink).unwrap();
        let Frame::IsoTp(p) = got else {
            panic!("wrong kind")
        };
        assert_eq!(p.data.as_ptr(), ptr, "payload was copied");
        assert_eq!(p.data.len(), 4095);
    }
    let s = n.r.snapshot();
    assert_eq!(s.port("a").unwrap().delivered_bytes, 4095);
    assert_eq!(s.port("b").unwrap().delivered_frames, 1);
}

#[test]
fn backpressure_never_drops_and_is_atomic() {
    let mut n = net(FrameFilter::all(), OverflowPolicy::Backpressure, 2);
    n.r.route(n.src, can(1, 1)).unwrap();
    n.r.route(n.src, can(1, 2)).unwrap();
    // Drain only `a`; `b` is still full, so the next frame must reach neither.
    drain(&mut n.r, n.a);
    let blocked = n.r.route(n.src, can(1, 3)).unwrap_err();
    assert_eq!(blocked.sink, n.b);
    assert_eq!(blocked.frame, can(1, 3));
    assert_eq!(n.r.queue_len(n.a), 0, "partial delivery");
    let s = n.r.snapshot();
    assert_eq!(
        s.port("src").unwrap().rx_frames,
        2,
        "blocked frame counted as received"
    );
    assert_eq!(s.port("b").unwrap().blocked, 1);
    assert_eq!(s.route("r").unwrap().blocked, 1);
    assert_eq!(s.port("b").unwrap().shed, 0);
    // After room is made, the same frame goes through.
    drain(&mut n.r, n.b);
    n.r.route(n.src, blocked.frame).unwrap();
    assert_eq!(drain(&mut n.r, n.a), vec![can(1, 3)]);
    assert_eq!(drain(&mut n.r, n.b), vec![can(1, 3)]);
}

#[test]
fn shed_oldest_keeps_newest_and_counts() {
    let mut n = net(FrameFilter::all(), OverflowPolicy::ShedOldest, 3);
    for i in 0..10u8 {
        n.r.route(n.src, can(0x100, i)).unwrap();
    }
    assert_eq!(
        drain(&mut n.r, n.a),
        vec![can(0x100, 7), can(0x100, 8), can(0x100, 9)]
    );
    let s = n.r.snapshot();
    assert_eq!(s.port("a").unwrap().shed, 7);
    assert_eq!(s.port("b").unwrap().shed, 7);
    assert_eq!(s.route("r").unwrap().shed, 14);
    assert_eq!(s.port("a").unwrap().queue_high_water, 3);
    assert_eq!(s.port("b").unwrap().queue_len, 3);
}

#[test]
fn overlapping_routes_deliver_once_per_sink() {
    let mut b = Router::builder();
    let src = b.add_port("src", 8).unwrap();
    let sink = b.add_port("sink", 8).unwrap();
    let other = b.add_port("other", 8).unwrap();
    for (name, sinks) in [("r1", vec![sink]), ("r2", vec![sink, other])] {
        b.add_route(RouteSpec {
            name: name.into(),
            source: src,
            sinks,
            filter: FrameFilter::all(),
            overflow: OverflowPolicy::Backpressure,
        })
        .unwrap();
    }
    let mut r = b.build();
    assert_eq!(r.route(src, can(5, 5)).unwrap(), 2);
    assert_eq!(drain(&mut r, sink).len(), 1);
    assert_eq!(drain(&mut r, other).len(), 1);
}

#[test]
fn wakes_once_per_empty_to_nonempty_transition() {
    let mut n = net(FrameFilter::all(), OverflowPolicy::Backpressure, 8);
    n.r.route(n.src, can(1, 1)).unwrap();
    n.r.route(n.src, can(1, 2)).unwrap();
    let mut woken = Vec::new();
    n.r.take_wakes(|p| woken.push(p));
    assert_eq!(woken, vec![n.a, n.b]);
    woken.clear();
    n.r.route(n.src, can(1, 3)).unwrap();
    n.r.take_wakes(|p| woken.push(p));
    assert!(woken.is_empty(), "queues were not empty");
    drain(&mut n.r, n.a);
    n.r.route(n.src, can(1, 4)).unwrap();
    n.r.take_wakes(|p| woken.push(p));
    assert_eq!(woken, vec![n.a]);
}

#[test]
fn builder_rejects_bad_graphs() {
    let mut b = Router::builder();
    let a = b.add_port("a", 1).unwrap();
    let s = b.add_port("s", 1).unwrap();
    assert_eq!(
        b.add_port("a", 1),
        Err(BuildError::DuplicatePort("a".into()))
    );
    assert_eq!(
        b.add_port("z", 0),
        Err(BuildError::ZeroCapacity("z".into()))
    );
    let spec = |name: &str, sinks: Vec<PortId>, overflow| RouteSpec {
        name: name.into(),
        source: a,
        sinks,
        filter: FrameFilter::all(),
        overflow,
    };
    assert!(matches!(
        b.add_route(spec("loop", vec![a], OverflowPolicy::Backpressure)),
        Err(BuildError::SelfLoop(..))
    ));
    assert!(matches!(
        b.add_route(spec("none", vec![], OverflowPolicy::Backpressure)),
        Err(BuildError::NoSinks(_))
    ));
    b.add_route(spec("ok", vec![s], OverflowPolicy::Backpressure))
        .unwrap();
    assert!(matches!(
        b.add_route(spec("mixed", vec![s], OverflowPolicy::ShedOldest)),
        Err(BuildError::PolicyConflict { .. })
    ));
    for i in 1..MAX_ROUTES_PER_SOURCE {
        b.add_route(spec(
            &format!("r{i}"),
            vec![s],
            OverflowPolicy::Backpressure,
        ))
        .unwrap();
    }
    assert!(matches!(
        b.add_route(spec("one-too-many", vec![s], OverflowPolicy::Backpressure)),
        Err(BuildError::TooManyRoutes(_))
    ));
}

#[tokio::test]
async fn driver_backpressure_wakes_blocked_sender() {
    let n = net(FrameFilter::all(), OverflowPolicy::Backpressure, 4);
    let (src, a, b) = (n.src, n.a, n.b);
    let h = RouterHandle::new(n.r);
    let tx = h.source(src);
    let producer = tokio::spawn(async move {
        for i in 0..1000u32 {
            tx.send(can(0x100, (i % 256) as u8)).await.unwrap();
        }
    });
    // Drain both sinks in small, different batch sizes so both keep filling up.
    let (sa, sb) = (h.sink(a), h.sink(b));
    let (mut ga, mut gb) = (Vec::new(), Vec::new());
    while ga.len() < 1000 || gb.len() < 1000 {
        tokio::select! {
            Some(_) = sa.recv_batch(&mut ga, 3), if ga.len() < 1000 => {}
            Some(_) = sb.recv_batch(&mut gb, 5), if gb.len() < 1000 => {}
        }
    }
    producer.await.unwrap();
    assert_eq!(ga, gb);
    for (i, f) in ga.iter().enumerate() {
        assert_eq!(f, &can(0x100, (i % 256) as u8), "order broken at {i}");
    }
    let s = h.snapshot();
    assert!(s.port("a").unwrap().queue_high_water <= 4);
    assert_eq!(s.port("src").unwrap().rx_frames, 1000);
    assert!(
        s.route("r").unwrap().blocked > 0,
        "test never hit backpressure"
    );
}

#[tokio::test]
async fn driver_close_ends_sources_and_drains_sinks() {
    let n = net(FrameFilter::all(), OverflowPolicy::Backpressure, 2);
    let h = RouterHandle::new(n.r);
    let tx = h.source(n.src);
    tx.send(can(1, 1)).await.unwrap();
    tx.send(can(1, 2)).await.unwrap();
    // Both queues are full: this send waits until close.
    let blocked = tokio::spawn({
        let tx = tx.clone();
        async move { tx.send(can(1, 3)).await }
    });
    tokio::task::yield_now().await;
    h.close();
    assert_eq!(blocked.await.unwrap(), Err(Closed));
    assert_eq!(tx.send(can(1, 4)).await, Err(Closed));
    let sink = h.sink(n.a);
    assert_eq!(sink.recv().await, Some(can(1, 1)));
    assert_eq!(sink.recv().await, Some(can(1, 2)));
    assert_eq!(sink.recv().await, None);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the capacity and the mix of frames, shed-oldest keeps exactly the newest
        /// `cap` frames in order and counts every other one as shed; backpressure loses none.
        #[test]
        fn policies_account_for_every_frame(cap in 1usize..16, ids in proptest::collection::vec(0u16..0x800, 0..200)) {
            let mut shed = net(FrameFilter::all(), OverflowPolicy::ShedOldest, cap);
            for (i, id) in ids.iter().enumerate() {
                shed.r.route(shed.src, can(*id, i as u8)).unwrap();
            }
            let got = drain(&mut shed.r, shed.a);
            let keep = ids.len().min(cap);
            let want: Vec<Frame> = ids.iter().enumerate().skip(ids.len() - keep).map(|(i, id)| can(*id, i as u8)).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(shed.r.snapshot().port("a").unwrap().shed as usize, ids.len() - keep);

            let mut bp = net(FrameFilter::all(), OverflowPolicy::Backpressure, cap);
            let mut received = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                let mut f = can(*id, i as u8);
                loop {
                    match bp.r.route(bp.src, f) {
                        Ok(_) => break,
                        Err(b) => {
                            f = b.frame;
                            received.extend(drain(&mut bp.r, bp.a));
                            drain(&mut bp.r, bp.b);
                        }
                    }
                }
            }
            received.extend(drain(&mut bp.r, bp.a));
            let want: Vec<Frame> = ids.iter().enumerate().map(|(i, id)| can(*id, i as u8)).collect();
            prop_assert_eq!(received, want);
        }

        /// A filter built from id rules matches exactly the ids the rules describe.
        #[test]
        fn filter_matches_rule_semantics(value in 0u32..0x800, mask in 0u32..0x800, lo in 0u32..0x800, span in 0u32..0x100, id in 0u16..0x800) {
            let rules = [IdRule::Mask { value, mask }, IdRule::Range { lo, hi: lo + span }];
            let f = FrameFilter::new(&[], &rules);
            let id32 = id as u32;
            let want = (id32 & mask) == (value & mask) || (lo <= id32 && id32 <= lo + span);
            prop_assert_eq!(f.matches(&can(id, 0)), want);
        }
    }
}
