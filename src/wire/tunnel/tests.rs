//! Golden vectors (the examples of `docs/tunnel-protocol.md`, verbatim), error cases,
//! property round-trips and never-panic checks.

use super::*;
use proptest::prelude::*;

/// Parse a hex dump as printed in the specification (whitespace and `|` ignored).
pub(crate) fn hex(s: &str) -> Bytes {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| (c as char).to_digit(16).unwrap() as u8)
        .collect();
    assert_eq!(digits.len() % 2, 0, "odd hex digit count");
    Bytes::from(
        digits
            .chunks(2)
            .map(|p| (p[0] << 4) | p[1])
            .collect::<Vec<u8>>(),
    )
}

fn encode(flags: u8, first: u64, ack: u64, recs: &[RecordRepr]) -> Bytes {
    let mut out = BytesMut::new();
    emit_batch(flags, first, ack, recs.iter(), &mut out);
    out.freeze()
}

fn decode(msg: &Bytes) -> Result<(BatchHeader, Vec<RecordRepr>), WireError> {
    let mut v = Vec::new();
    let h = parse_batch(msg, &Limits::default(), &mut v)?;
    Ok((h, v))
}

fn std_id(id: u16) -> CanId {
    CanId::standard(id).unwrap()
}

// Example 1 of the specification: one classic CAN frame.
const EX1: &str = "
01 00 0001 0000000000000001 0000000000000000
0001 01 00 00000010  00000000000F4240 000007DF 03 02010D";

// Example 2: the first batch after a resume, replaying an ISO-TP PDU and a DoIP message.
const EX2: &str = "
01 03 0002 0000000000000100 000000000000002A
0002 03 00 0000000E  0000000000001234 62F19057304C
0003 04 00 0000000F  0000000000000000 0E80 1001 22F190";

// Example 3: an ack-only batch.
const EX3: &str = "01 00 0000 0000000000000007 00000000000001F4";

// Example 4: a CAN FD frame with a 29-bit id, BRS, transmitted by the gateway (TX flag).
const EX4: &str = "
01 00 0001 0000000000000009 0000000000000003
0004 02 01 00000019  0000000000000010 98DAF110 01 000102030405060708090A0B";

// Example 5: a channel-scoped error record.
const EX5: &str = "
01 00 0001 000000000000000A 0000000000000000
0002 05 00 0000000E  00CD 4E5F42732074696D656F7574";

#[test]
fn golden_example_1_can_frame() {
    let msg = hex(EX1);
    assert_eq!(msg.len(), 44);
    let view = Batch::new_checked(&msg[..]).unwrap();
    assert_eq!(view.version(), 1);
    assert_eq!(view.flags(), 0);
    assert_eq!(view.record_count(), 1);
    assert_eq!(view.first_seq(), 1);
    assert_eq!(view.ack(), 0);
    let rec = Record::new_checked(view.records()).unwrap();
    assert_eq!(rec.channel(), 1);
    assert_eq!(rec.kind_raw(), 0x01);
    assert_eq!(rec.length(), 16);

    let (h, recs) = decode(&msg).unwrap();
    assert_eq!(h.last_seq(), Some(1));
    let RecordBody::Can(f) = &recs[0].body else {
        panic!("not a CAN record: {:?}", recs[0])
    };
    assert_eq!(f.id(), std_id(0x7DF));
    assert_eq!(f.data(), &[0x02, 0x01, 0x0D]);
    assert_eq!(f.timestamp, Timestamp(1_000_000));
    assert!(!f.is_remote());

    let expect = RecordRepr {
        channel: 1,
        flags: 0,
        body: RecordBody::Can(
            CanFrame::new(std_id(0x7DF), &[2, 1, 0x0D])
                .unwrap()
                .with_timestamp(Timestamp(1_000_000)),
        ),
    };
    assert_eq!(recs, vec![expect.clone()]);
    assert_eq!(encode(0, 1, 0, &[expect]), msg);
}

#[test]
fn golden_example_2_pdu_and_doip_zero_copy() {
    let msg = hex(EX2);
    let (h, recs) = decode(&msg).unwrap();
    assert_eq!(
        h,
        BatchHeader {
            flags: BATCH_FLAG_RESUME | BATCH_FLAG_REPLAY,
            first_seq: 0x100,
            ack: 42,
            record_count: 2
        }
    );
    assert_eq!(h.last_seq(), Some(0x101));
    let RecordBody::IsoTp(p) = &recs[0].body else {
        panic!("{:?}", recs[0])
    };
    assert_eq!(recs[0].channel, 2);
    assert_eq!(p.timestamp, Timestamp(0x1234));
    assert_eq!(&p.data[..], b"\x62\xF1\x90W0L");
    // Zero copy: the payload points into the received message.
    let range = msg.as_ptr_range();
    assert!(range.contains(&p.data.as_ptr()));
    let RecordBody::Doip(m) = &recs[1].body else {
        panic!("{:?}", recs[1])
    };
    assert_eq!((m.source, m.target), (0x0E80, 0x1001));
    assert_eq!(&m.data[..], &[0x22, 0xF1, 0x90]);
    assert!(range.contains(&m.data.as_ptr()));
    assert_eq!(encode(0x03, 0x100, 42, &recs), msg);
}

#[test]
fn golden_example_3_ack_only() {
    let msg = hex(EX3);
    assert_eq!(msg.len(), BATCH_HEADER_LEN);
    let (h, recs) = decode(&msg).unwrap();
    assert!(recs.is_empty());
    assert_eq!((h.first_seq, h.ack, h.record_count), (7, 500, 0));
    assert_eq!(h.last_seq(), None);
    assert_eq!(encode(0, 7, 500, &[]), msg);
}

#[test]
fn golden_example_4_canfd_extended_tx() {
    let msg = hex(EX4);
    let (_, recs) = decode(&msg).unwrap();
    assert_eq!(recs[0].flags, RECORD_FLAG_TX);
    let RecordBody::CanFd(f) = &recs[0].body else {
        panic!("{:?}", recs[0])
    };
    assert_eq!(f.id(), CanId::extended(0x18DA_F110).unwrap());
    assert!(f.brs && !f.esi);
    assert_eq!(f.data(), &(0u8..12).collect::<Vec<_>>()[..]);
    assert_eq!(f.timestamp, Timestamp(16));
    assert_eq!(encode(0, 9, 3, &recs), msg);
}

#[test]
fn golden_example_5_channel_error() {
    let msg = hex(EX5);
    let (_, recs) = decode(&msg).unwrap();
    assert_eq!(
        recs[0].body,
        RecordBody::Error(ErrorRecord {
            code: ErrorCode::ISOTP_TIMEOUT,
            message: "N_Bs timeout".into()
        })
    );
    assert_eq!(encode(0, 10, 0, &recs), msg);
}

#[test]
fn remote_frame_round_trip() {
    let f = CanFrame::remote(std_id(0x123), 4).unwrap();
    let r = RecordRepr {
        channel: 9,
        flags: 0,
        body: RecordBody::Can(f),
    };
    let msg = encode(0, 1, 0, std::slice::from_ref(&r));
    // id word carries the RTR bit; no data bytes follow the DLC.
    assert_eq!(&msg[36..41], &[0x40, 0x00, 0x01, 0x23, 0x04]);
    assert_eq!(msg.len(), 41);
    assert_eq!(decode(&msg).unwrap().1, vec![r]);
}

#[test]
fn bad_inputs_are_typed_errors() {
    // Too short for a header.
    assert_eq!(
        decode(&hex("01 00 00")),
        Err(WireError::ShortHeader { len: 3 })
    );
    // Wrong version.
    let mut v = hex(EX3).to_vec();
    v[0] = 2;
    assert_eq!(decode(&Bytes::from(v)), Err(WireError::Version(2)));
    // Unknown record kind 0x7F.
    let mut v = hex(EX1).to_vec();
    v[22] = 0x7F;
    assert_eq!(
        decode(&Bytes::from(v)),
        Err(WireError::UnknownKind {
            index: 0,
            kind: 0x7F
        })
    );
    // Truncated record.
    let msg = hex(EX1);
    assert_eq!(
        decode(&msg.slice(..40)),
        Err(WireError::Truncated {
            index: 0,
            offset: 20,
            need: 24,
            have: 20
        })
    );
    // Count says 2, only one record present.
    let mut v = hex(EX1).to_vec();
    v[3] = 2;
    assert!(matches!(
        decode(&Bytes::from(v)),
        Err(WireError::Truncated { index: 1, .. })
    ));
    // Trailing garbage.
    let mut v = hex(EX1).to_vec();
    v.extend_from_slice(&[0, 0]);
    assert_eq!(
        decode(&Bytes::from(v)),
        Err(WireError::TrailingBytes { count: 1, extra: 2 })
    );
    // Sequence 0 with records.
    let mut v = hex(EX1).to_vec();
    v[11] = 0;
    assert_eq!(
        decode(&Bytes::from(v)),
        Err(WireError::BadSequence { first: 0, count: 1 })
    );
    // Last sequence number overflows u64.
    let mut v = hex(EX2).to_vec();
    v[4..12].copy_from_slice(&u64::MAX.to_be_bytes());
    assert!(matches!(
        decode(&Bytes::from(v)),
        Err(WireError::BadSequence { .. })
    ));
    // DLC disagrees with data.
    let mut v = hex(EX1).to_vec();
    v[40] = 4;
    assert!(matches!(
        decode(&Bytes::from(v)),
        Err(WireError::BadBody {
            kind: RecordKind::Can,
            ..
        })
    ));
    // Standard id above 0x7FF.
    let mut v = hex(EX1).to_vec();
    v[38] = 0x08;
    assert!(matches!(
        decode(&Bytes::from(v)),
        Err(WireError::BadBody {
            reason: "invalid CAN id word",
            ..
        })
    ));
    // CAN FD with 13 data bytes (not an FD length).
    let mut v = hex(EX4).to_vec();
    v.push(0xEE);
    v[27] = 0x1A;
    assert!(matches!(
        decode(&Bytes::from(v)),
        Err(WireError::BadBody {
            kind: RecordKind::CanFd,
            ..
        })
    ));
    // Body shorter than the fixed part (DoIP needs 12).
    let msg = encode(
        0,
        1,
        0,
        &[RecordRepr {
            channel: 1,
            flags: 0,
            body: RecordBody::IsoTp(PduRecord {
                timestamp: Timestamp(0),
                data: Bytes::from_static(&[1, 2]),
            }),
        }],
    );
    let mut v = msg.to_vec();
    v[22] = RecordKind::Doip as u8;
    assert!(matches!(
        decode(&Bytes::from(v)),
        Err(WireError::BadBody {
            kind: RecordKind::Doip,
            reason: "body shorter than the kind's fixed fields",
            ..
        })
    ));
    // Error message not UTF-8.
    let mut v = hex(EX5).to_vec();
    v[38] = 0xFF;
    assert!(matches!(
        decode(&Bytes::from(v)),
        Err(WireError::BadBody {
            kind: RecordKind::Error,
            ..
        })
    ));
}

#[test]
fn limits_are_enforced() {
    let small = Limits {
        max_record: Limits::MIN_RECORD,
        max_batch: 64 * 1024,
        max_in_flight: 1 << 20,
    };
    small.validate().unwrap();
    let big = RecordRepr {
        channel: 1,
        flags: 0,
        body: RecordBody::IsoTp(PduRecord {
            timestamp: Timestamp(0),
            data: Bytes::from(vec![0u8; 5000]),
        }),
    };
    let msg = encode(0, 1, 0, std::slice::from_ref(&big));
    let mut v = Vec::new();
    assert_eq!(
        parse_batch(&msg, &small, &mut v),
        Err(WireError::RecordTooLarge {
            index: 0,
            len: 5008,
            max: Limits::MIN_RECORD
        })
    );
    let tiny_batch = Limits {
        max_batch: 100,
        ..small
    };
    assert_eq!(
        parse_batch(&msg, &tiny_batch, &mut v),
        Err(WireError::BatchTooLarge {
            len: msg.len(),
            max: 100
        })
    );
    assert!(v.is_empty());
    assert!(tiny_batch.validate().is_err());
    assert!(
        Limits {
            max_record: 100,
            ..small
        }
        .validate()
        .is_err()
    );
    Limits::default().validate().unwrap();
}

#[test]
fn failed_parse_leaves_output_untouched() {
    let mut v = hex(EX2).to_vec();
    v[44] = 0x7F; // second record's kind
    let mut out = vec![];
    decode(&hex(EX1)).unwrap();
    parse_batch(&hex(EX1), &Limits::default(), &mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert!(matches!(
        parse_batch(&Bytes::from(v), &Limits::default(), &mut out),
        Err(WireError::UnknownKind { index: 1, .. })
    ));
    assert_eq!(out.len(), 1);
}

#[test]
fn error_codes() {
    assert_eq!(ErrorCode::AUTH_FAILED.name(), "auth_failed");
    assert!(ErrorCode::AUTH_FAILED.is_fatal());
    assert!(!ErrorCode::UNKNOWN_CHANNEL.is_fatal());
    assert_eq!(ErrorCode::AUTH_FAILED.close_code(), 4102);
    assert_eq!(ErrorCode(999).name(), "unknown");
    assert_eq!(
        format!("{}", ErrorCode::ISOTP_TIMEOUT),
        "isotp_timeout (205)"
    );
}

// Control-message examples of the specification, verbatim.
const HELLO_JSON: &str = r#"{"type":"hello","version":1,"role":"gateway","session":"6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab","token":"gw-secret","instance":81985529216486895,"capabilities":["can","canfd","isotp","doip"],"resume":{"peer_instance":1234605616436508552,"last_received":1041},"limits":{"max_record":1048576,"max_batch":2097152,"max_in_flight":4194304},"agent":"obdgw/0.1.0"}"#;
const WELCOME_JSON: &str = r#"{"type":"welcome","version":1,"session":"6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab","peer_connected":true,"keepalive_ms":5000}"#;
const PEER_JSON: &str = r#"{"type":"peer","role":"operator","version":1,"instance":1234605616436508552,"capabilities":["can","canfd","isotp","doip"],"resume":{"peer_instance":81985529216486895,"last_received":255},"limits":{"max_record":1048576,"max_batch":2097152,"max_in_flight":4194304}}"#;
const OPEN_ISOTP_JSON: &str = r#"{"type":"open","channel":2,"params":{"kind":"isotp","interface":"can0","tx_id":2016,"rx_id":2024,"extended_ids":false,"addressing":"normal","bs":8,"stmin_us":1000,"padding":204,"fd":false}}"#;
const OPEN_DOIP_JSON: &str =
    r#"{"type":"open","channel":3,"params":{"kind":"doip","target":4097}}"#;
const OPEN_MIRROR_JSON: &str = r#"{"type":"open","channel":1,"params":{"kind":"can_mirror","interface":"can0","filters":[{"id":2024,"mask":2040,"extended":false}],"fd":false,"allow_tx":false}}"#;
const ERROR_JSON: &str = r#"{"type":"error","code":203,"message":"interface can1 is not configured on this gateway","channel":4}"#;
const PING_JSON: &str = r#"{"type":"ping","id":7,"t_us":1500000}"#;
const PONG_JSON: &str = r#"{"type":"pong","id":7,"t_us":1500000}"#;

#[test]
fn control_golden_json() {
    let hello = Control::Hello(Hello {
        version: 1,
        role: Role::Gateway,
        session: "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab".into(),
        token: Token("gw-secret".into()),
        instance: 0x0123_4567_89AB_CDEF,
        capabilities: vec!["can".into(), "canfd".into(), "isotp".into(), "doip".into()],
        resume: Resume {
            peer_instance: Some(0x1122_3344_5566_7788),
            last_received: 1041,
        },
        limits: Limits::default(),
        agent: Some("obdgw/0.1.0".into()),
    });
    let cases = vec![
        (HELLO_JSON, hello.clone()),
        (
            WELCOME_JSON,
            Control::Welcome(Welcome {
                version: 1,
                session: "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab".into(),
                peer_connected: true,
                keepalive_ms: 5000,
            }),
        ),
        (
            PEER_JSON,
            Control::Peer(PeerInfo {
                role: Role::Operator,
                version: 1,
                instance: 0x1122_3344_5566_7788,
                capabilities: vec!["can".into(), "canfd".into(), "isotp".into(), "doip".into()],
                resume: Resume {
                    peer_instance: Some(0x0123_4567_89AB_CDEF),
                    last_received: 255,
                },
                limits: Limits::default(),
            }),
        ),
        (
            OPEN_ISOTP_JSON,
            Control::Open {
                channel: 2,
                params: ChannelParams::Isotp {
                    interface: "can0".into(),
                    tx_id: 0x7E0,
                    rx_id: 0x7E8,
                    extended_ids: false,
                    addressing: Addressing::Normal,
                    tx_ext: None,
                    rx_ext: None,
                    bs: Some(8),
                    stmin_us: Some(1000),
                    padding: Some(0xCC),
                    fd: false,
                },
            },
        ),
        (
            OPEN_DOIP_JSON,
            Control::Open {
                channel: 3,
                params: ChannelParams::Doip {
                    target: 0x1001,
                    source: None,
                },
            },
        ),
        (
            OPEN_MIRROR_JSON,
            Control::Open {
                channel: 1,
                params: ChannelParams::CanMirror {
                    interface: "can0".into(),
                    filters: vec![IdFilter {
                        id: 0x7E8,
                        mask: 0x7F8,
                        extended: false,
                    }],
                    fd: false,
                    allow_tx: false,
                },
            },
        ),
        (
            ERROR_JSON,
            Control::Error {
                code: ErrorCode::PORT_UNAVAILABLE,
                message: "interface can1 is not configured on this gateway".into(),
                channel: Some(4),
            },
        ),
        (
            PING_JSON,
            Control::Ping {
                id: 7,
                t_us: 1_500_000,
            },
        ),
        (
            PONG_JSON,
            Control::Pong {
                id: 7,
                t_us: 1_500_000,
            },
        ),
    ];
    for (json, msg) in cases {
        assert_eq!(msg.to_text(), json);
        assert_eq!(Control::parse(json).unwrap(), msg);
    }
    // The token never shows in Debug output.
    assert!(!format!("{hello:?}").contains("gw-secret"));
}

const SPEC: &str = include_str!("../../../docs/tunnel-protocol.md");

#[test]
fn spec_hex_examples_are_the_golden_vectors() {
    for ex in [EX1, EX2, EX3, EX4, EX5] {
        let block = ex.trim();
        assert!(
            SPEC.contains(&format!("```\n{block}\n```")),
            "docs/tunnel-protocol.md lacks the example:\n{block}"
        );
    }
}

#[test]
fn spec_json_examples_round_trip_verbatim() {
    let lines: Vec<&str> = SPEC
        .lines()
        .filter(|l| l.starts_with("{\"type\":"))
        .collect();
    assert!(
        lines.len() >= 12,
        "only {} JSON examples found",
        lines.len()
    );
    for json in [
        HELLO_JSON,
        WELCOME_JSON,
        PEER_JSON,
        OPEN_ISOTP_JSON,
        OPEN_DOIP_JSON,
        OPEN_MIRROR_JSON,
        ERROR_JSON,
        PING_JSON,
        PONG_JSON,
    ] {
        assert!(lines.contains(&json), "spec lacks {json}");
    }
    for line in lines {
        let msg = Control::parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_ne!(msg, Control::Unknown, "{line}");
        assert_eq!(msg.to_text(), line, "not canonical");
    }
}

#[test]
fn control_forward_compatibility() {
    // Unknown fields are ignored; unknown types parse as Unknown; garbage is an error.
    let m = Control::parse(r#"{"type":"pong","id":1,"t_us":2,"future":true}"#).unwrap();
    assert_eq!(m, Control::Pong { id: 1, t_us: 2 });
    assert_eq!(
        Control::parse(r#"{"type":"teleport","where":"mars"}"#).unwrap(),
        Control::Unknown
    );
    assert!(Control::parse(r#"{"type":"ping"}"#).is_err());
    assert!(Control::parse("not json").is_err());
    assert!(Control::parse(r#"{"type":"open","channel":1,"params":{"kind":"warp"}}"#).is_err());
    // Unknown error codes survive.
    let m = Control::parse(r#"{"type":"error","code":777,"message":"x"}"#).unwrap();
    assert_eq!(
        m,
        Control::Error {
            code: ErrorCode(777),
            message: "x".into(),
            channel: None
        }
    );
}

#[test]
fn session_ids() {
    assert!(valid_session_id("6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"));
    assert!(!valid_session_id("6F1C2D3E-4A5B-4C6D-8E7F-0123456789AB"));
    assert!(!valid_session_id("6f1c2d3e4a5b4c6d8e7f0123456789ab"));
    assert!(!valid_session_id(""));
}

// ----- properties -----

pub(crate) fn arb_record() -> impl Strategy<Value = RecordRepr> {
    let ts = any::<u64>().prop_map(Timestamp);
    let can_id = prop_oneof![
        (0u16..=0x7FF).prop_map(|i| CanId::standard(i).unwrap()),
        (0u32..=0x1FFF_FFFF).prop_map(|i| CanId::extended(i).unwrap()),
    ];
    let body = prop_oneof![
        (
            can_id.clone(),
            proptest::collection::vec(any::<u8>(), 0..=8),
            ts.clone(),
            any::<bool>(),
            0u8..=8
        )
            .prop_map(|(id, d, ts, rtr, dlc)| {
                let f = if rtr {
                    CanFrame::remote(id, dlc).unwrap()
                } else {
                    CanFrame::new(id, &d).unwrap()
                };
                RecordBody::Can(f.with_timestamp(ts))
            }),
        (
            can_id,
            prop::sample::select(vec![0usize, 1, 5, 8, 12, 16, 20, 24, 32, 48, 64]),
            ts.clone(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(id, len, ts, brs, esi)| {
                let mut f = CanFdFrame::new(id, &vec![0xA5; len]).unwrap();
                f.brs = brs;
                f.esi = esi;
                RecordBody::CanFd(f.with_timestamp(ts))
            }),
        (proptest::collection::vec(any::<u8>(), 0..300), ts.clone()).prop_map(|(d, ts)| {
            RecordBody::IsoTp(PduRecord {
                timestamp: ts,
                data: Bytes::from(d),
            })
        }),
        (
            proptest::collection::vec(any::<u8>(), 0..300),
            ts,
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(d, ts, s, t)| {
                RecordBody::Doip(DoipMessage {
                    source: s,
                    target: t,
                    data: Bytes::from(d),
                    timestamp: ts,
                })
            }),
        (any::<u16>(), "[a-zA-Z0-9 äö_]{0,40}").prop_map(|(c, m)| {
            RecordBody::Error(ErrorRecord {
                code: ErrorCode(c),
                message: m,
            })
        }),
    ];
    (any::<u16>(), any::<u8>(), body).prop_map(|(channel, flags, body)| RecordRepr {
        channel,
        flags,
        body,
    })
}

proptest! {
    #[test]
    fn batch_round_trip(
        recs in proptest::collection::vec(arb_record(), 0..20),
        flags in any::<u8>(),
        first in 1u64..u64::MAX / 2,
        ack in any::<u64>(),
    ) {
        let msg = encode(flags, first, ack, &recs);
        prop_assert_eq!(msg.len(), batch_len(recs.iter()));
        let (h, back) = decode(&msg).unwrap();
        prop_assert_eq!(h.flags, flags);
        prop_assert_eq!(h.first_seq, first);
        prop_assert_eq!(h.ack, ack);
        prop_assert_eq!(h.record_count as usize, recs.len());
        prop_assert_eq!(&back, &recs);
        // Single-record parse agrees with emit of one record.
        for r in &recs {
            let mut buf = vec![0u8; r.buffer_len()];
            r.emit(&mut buf);
            prop_assert_eq!(&RecordRepr::parse(&Bytes::from(buf), Limits::HARD_MAX).unwrap(), r);
        }
    }

    #[test]
    fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut v = Vec::new();
        let _ = parse_batch(&Bytes::from(data.clone()), &Limits::default(), &mut v);
        let _ = RecordRepr::parse(&Bytes::from(data), Limits::HARD_MAX);
    }

    #[test]
    fn mutated_batches_never_panic(
        recs in proptest::collection::vec(arb_record(), 1..6),
        pos in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let msg = encode(0, 1, 0, &recs);
        let mut v = msg.to_vec();
        let i = pos.index(v.len());
        v[i] = byte;
        let mut out = Vec::new();
        let _ = parse_batch(&Bytes::from(v.clone()), &Limits::default(), &mut out);
        v.truncate(cut.index(v.len()));
        let _ = parse_batch(&Bytes::from(v), &Limits::default(), &mut out);
    }

    #[test]
    fn control_parse_never_panics(s in ".{0,200}") {
        let _ = Control::parse(&s);
    }
}
