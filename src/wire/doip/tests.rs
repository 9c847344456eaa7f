//! Golden vectors, impossible lengths, streaming-decoder limits and property tests for the
//! DoIP wire format.

use super::*;
use proptest::prelude::*;

const VIN: &[u8; 17] = b"WVWZZZ1JZXW000001";

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Every payload type: (version, bytes on the wire, parsed form).
fn golden() -> Vec<(u8, Vec<u8>, Repr)> {
    let mut vin_hex = String::new();
    for b in VIN {
        vin_hex.push_str(&format!("{b:02X}"));
    }
    let ann = VehicleAnnouncement {
        vin: *VIN,
        logical_address: 0x1001,
        eid: [0x00, 0x1A, 0x2B, 0x3C, 0x4D, 0x5E],
        gid: [0x00, 0x1A, 0x2B, 0x3C, 0x4D, 0x5F],
        further_action: FurtherAction::NONE,
        sync_status: None,
    };
    vec![
        (
            2,
            hex("02FD 0000 00000001 04"),
            Repr::GenericNack(NackCode::INVALID_PAYLOAD_LENGTH),
        ),
        (0xFF, hex("FF00 0001 00000000"), Repr::VehicleIdRequest),
        (
            2,
            hex("02FD 0002 00000006 001A2B3C4D5E"),
            Repr::VehicleIdRequestEid([0x00, 0x1A, 0x2B, 0x3C, 0x4D, 0x5E]),
        ),
        (
            3,
            hex(&format!("03FC 0003 00000011 {vin_hex}")),
            Repr::VehicleIdRequestVin(*VIN),
        ),
        (
            2,
            hex(&format!(
                "02FD 0004 00000020 {vin_hex} 1001 001A2B3C4D5E 001A2B3C4D5F 00"
            )),
            Repr::VehicleAnnouncement(ann),
        ),
        (
            2,
            hex(&format!(
                "02FD 0004 00000021 {vin_hex} 1001 001A2B3C4D5E 001A2B3C4D5F 10 10"
            )),
            Repr::VehicleAnnouncement(VehicleAnnouncement {
                further_action: FurtherAction::CENTRAL_SECURITY,
                sync_status: Some(SyncStatus::INCOMPLETE),
                ..ann
            }),
        ),
        (
            2,
            hex("02FD 0005 00000007 0E00 00 00000000"),
            Repr::RoutingActivationRequest {
                source: 0x0E00,
                activation_type: ActivationType::DEFAULT,
                reserved: 0,
                oem: None,
            },
        ),
        (
            3,
            hex("03FC 0005 0000000B 0E80 E0 00000000 DEADBEEF"),
            Repr::RoutingActivationRequest {
                source: 0x0E80,
                activation_type: ActivationType::CENTRAL_SECURITY,
                reserved: 0,
                oem: Some(0xDEAD_BEEF),
            },
        ),
        (
            2,
            hex("02FD 0006 00000009 0E00 1001 10 00000000"),
            Repr::RoutingActivationResponse {
                tester: 0x0E00,
                entity: 0x1001,
                code: RoutingActivationCode::SUCCESS,
                reserved: 0,
                oem: None,
            },
        ),
        (
            2,
            hex("02FD 0006 0000000D 0E00 1001 00 00000000 01020304"),
            Repr::RoutingActivationResponse {
                tester: 0x0E00,
                entity: 0x1001,
                code: RoutingActivationCode::DENIED_UNKNOWN_SOURCE,
                reserved: 0,
                oem: Some(0x0102_0304),
            },
        ),
        (2, hex("02FD 0007 00000000"), Repr::AliveCheckRequest),
        (
            2,
            hex("02FD 0008 00000002 0E00"),
            Repr::AliveCheckResponse { source: 0x0E00 },
        ),
        (2, hex("02FD 4001 00000000"), Repr::EntityStatusRequest),
        (
            2,
            hex("02FD 4002 00000003 00 10 02"),
            Repr::EntityStatusResponse {
                node_type: NodeType::GATEWAY,
                max_sockets: 16,
                open_sockets: 2,
                max_data_size: None,
            },
        ),
        (
            2,
            hex("02FD 4002 00000007 01 01 00 00010000"),
            Repr::EntityStatusResponse {
                node_type: NodeType::NODE,
                max_sockets: 1,
                open_sockets: 0,
                max_data_size: Some(0x1_0000),
            },
        ),
        (2, hex("02FD 4003 00000000"), Repr::PowerModeRequest),
        (
            2,
            hex("02FD 4004 00000001 01"),
            Repr::PowerModeResponse(PowerMode::READY),
        ),
        (
            2,
            hex("02FD 8001 00000007 0E00 1001 22F190"),
            Repr::DiagnosticMessage {
                source: 0x0E00,
                target: 0x1001,
                data: Bytes::from_static(&[0x22, 0xF1, 0x90]),
            },
        ),
        (
            2,
            hex("02FD 8002 00000005 1001 0E00 00"),
            Repr::DiagnosticAck {
                source: 0x1001,
                target: 0x0E00,
                code: 0,
                previous: Bytes::new(),
            },
        ),
        (
            2,
            hex("02FD 8002 00000008 1001 0E00 00 22F190"),
            Repr::DiagnosticAck {
                source: 0x1001,
                target: 0x0E00,
                code: 0,
                previous: Bytes::from_static(&[0x22, 0xF1, 0x90]),
            },
        ),
        (
            2,
            hex("02FD 8003 00000005 1001 0E00 03"),
            Repr::DiagnosticNack {
                source: 0x1001,
                target: 0x0E00,
                code: DiagNackCode::UNKNOWN_TARGET,
                previous: Bytes::new(),
            },
        ),
        (
            2,
            hex("02FD 8003 00000006 1001 0E00 06 3E"),
            Repr::DiagnosticNack {
                source: 0x1001,
                target: 0x0E00,
                code: DiagNackCode::TARGET_UNREACHABLE,
                previous: Bytes::from_static(&[0x3E]),
            },
        ),
    ]
}

#[test]
fn golden_vectors_parse_and_emit() {
    let vectors = golden();
    let mut types: Vec<u16> = vectors.iter().map(|(_, _, r)| r.payload_type()).collect();
    types.sort_unstable();
    types.dedup();
    assert_eq!(
        types.len(),
        payload_type::ALL.len(),
        "every payload type has a vector"
    );
    for (version, wire, repr) in vectors {
        let bytes = Bytes::from(wire.clone());
        let (v, parsed) = Repr::parse_bytes(&bytes, DEFAULT_MAX_PAYLOAD).expect("parse golden");
        assert_eq!(v, version, "{wire:02X?}");
        assert_eq!(parsed, repr, "{wire:02X?}");
        let packet = Packet::new_checked(&wire[..]).expect("checked view");
        assert_eq!(packet.payload_type(), repr.payload_type());
        assert_eq!(packet.payload_length() as usize, wire.len() - HEADER_LEN);
        assert_eq!(Repr::parse(&packet, DEFAULT_MAX_PAYLOAD).unwrap().1, repr);
        assert_eq!(repr.buffer_len(), wire.len());
        let mut out = vec![0xAA; wire.len() + 3];
        assert_eq!(repr.emit(version, &mut out).unwrap(), wire.len());
        assert_eq!(
            &out[..wire.len()],
            &wire[..],
            "{}",
            payload_type::name(repr.payload_type())
        );
        assert_eq!(
            &out[wire.len()..],
            &[0xAA; 3],
            "emit writes nothing past buffer_len"
        );
        assert_eq!(&repr.to_bytes(version)[..], &wire[..]);
    }
}

#[test]
fn diagnostic_data_is_sliced_not_copied() {
    let wire = Bytes::from(hex("02FD 8001 00000008 0E00 1001 36 01 AA BB"));
    let (_, repr) = Repr::parse_bytes(&wire, DEFAULT_MAX_PAYLOAD).unwrap();
    let Repr::DiagnosticMessage { data, .. } = repr else {
        panic!("not a diagnostic message")
    };
    assert_eq!(&data[..], &[0x36, 0x01, 0xAA, 0xBB]);
    assert_eq!(
        data.as_ptr(),
        wire[12..].as_ptr(),
        "user data points into the frame"
    );
}

#[test]
fn emit_into_a_short_buffer_fails() {
    let r = Repr::AliveCheckResponse { source: 1 };
    let mut buf = [0u8; 9];
    assert_eq!(
        r.emit(2, &mut buf),
        Err(Error::BufferTooSmall { have: 9, need: 10 })
    );
}

#[test]
fn header_pattern_errors() {
    // inverse does not match
    let e = HeaderRepr::parse(&hex("02FC 0001 00000000"), 100).unwrap_err();
    assert_eq!(
        e,
        Error::IncorrectPattern {
            version: 2,
            inverse: 0xFC
        }
    );
    assert_eq!(e.nack_code(), Some(NackCode::INCORRECT_PATTERN));
    // unsupported version with a matching inverse
    let e = HeaderRepr::parse(&hex("04FB 8001 00000005"), 100).unwrap_err();
    assert_eq!(
        e,
        Error::IncorrectPattern {
            version: 4,
            inverse: 0xFB
        }
    );
    // 0xFF only for vehicle identification requests
    assert!(HeaderRepr::parse(&hex("FF00 0001 00000000"), 100).is_ok());
    assert!(HeaderRepr::parse(&hex("FF00 0003 00000011"), 100).is_ok());
    let e = HeaderRepr::parse(&hex("FF00 8001 00000005"), 100).unwrap_err();
    assert_eq!(e.nack_code(), Some(NackCode::INCORRECT_PATTERN));
    // version 0 (inverse FF) is not a version
    assert!(matches!(
        HeaderRepr::parse(&hex("00FF 0001 00000000"), 100),
        Err(Error::IncorrectPattern { .. })
    ));
}

#[test]
fn header_order_of_checks() {
    // unknown payload type comes before the length checks
    let e = HeaderRepr::parse(&hex("02FD 9999 FFFFFFFF"), 100).unwrap_err();
    assert_eq!(e, Error::UnknownPayloadType(0x9999));
    assert_eq!(e.nack_code(), Some(NackCode::UNKNOWN_PAYLOAD_TYPE));
    // too large comes before invalid length
    let e = HeaderRepr::parse(&hex("02FD 0005 00010000"), 100).unwrap_err();
    assert_eq!(
        e,
        Error::TooLarge {
            len: 0x1_0000,
            max: 100
        }
    );
    assert_eq!(e.nack_code(), Some(NackCode::MESSAGE_TOO_LARGE));
    let e = HeaderRepr::parse(&hex("02FD 0005 00000008"), 100).unwrap_err();
    assert_eq!(
        e,
        Error::InvalidLength {
            payload_type: 0x0005,
            len: 8
        }
    );
    assert_eq!(e.nack_code(), Some(NackCode::INVALID_PAYLOAD_LENGTH));
    assert!(NackCode::INVALID_PAYLOAD_LENGTH.closes_socket());
    assert!(NackCode::INCORRECT_PATTERN.closes_socket());
    assert!(!NackCode::MESSAGE_TOO_LARGE.closes_socket());
    assert!(!NackCode::UNKNOWN_PAYLOAD_TYPE.closes_socket());
    assert!(!NackCode::OUT_OF_MEMORY.closes_socket());
}

#[test]
fn impossible_lengths_for_every_type() {
    // (type, lengths that must be refused)
    let cases: &[(u16, &[u32])] = &[
        (0x0000, &[0, 2]),
        (0x0001, &[1]),
        (0x0002, &[5, 7]),
        (0x0003, &[16, 18]),
        (0x0004, &[31, 34]),
        (0x0005, &[6, 8, 9, 10, 12]),
        (0x0006, &[8, 10, 11, 12, 14]),
        (0x0007, &[1]),
        (0x0008, &[1, 3]),
        (0x4001, &[1]),
        (0x4002, &[2, 4, 5, 6, 8]),
        (0x4003, &[1]),
        (0x4004, &[0, 2]),
        (0x8001, &[0, 4]),
        (0x8002, &[0, 4]),
        (0x8003, &[0, 4]),
    ];
    assert_eq!(cases.len(), payload_type::ALL.len());
    for &(t, lens) in cases {
        for &len in lens {
            let mut h = hex("02FD 0000 00000000");
            h[2..4].copy_from_slice(&t.to_be_bytes());
            h[4..8].copy_from_slice(&len.to_be_bytes());
            assert_eq!(
                HeaderRepr::parse(&h, 1000),
                Err(Error::InvalidLength {
                    payload_type: t,
                    len
                }),
                "type {t:04X} len {len}"
            );
            // and the same through a full buffer
            h.resize(HEADER_LEN + len as usize, 0);
            assert!(Repr::parse_bytes(&Bytes::from(h), 1000).is_err());
        }
    }
}

#[test]
fn truncated_and_trailing() {
    let full = hex("02FD 0008 00000002 0E00");
    for cut in 0..full.len() {
        let r = Repr::parse_bytes(&Bytes::from(full[..cut].to_vec()), 100);
        assert!(
            matches!(r, Err(Error::Truncated { .. })),
            "cut at {cut}: {r:?}"
        );
        assert!(Packet::new_checked(&full[..cut]).is_err());
    }
    let mut long = full.clone();
    long.push(0);
    assert_eq!(
        Repr::parse_bytes(&Bytes::from(long), 100),
        Err(Error::TrailingBytes { have: 11, need: 10 })
    );
}

#[test]
fn code_names() {
    assert_eq!(
        RoutingActivationCode(0x00).to_string(),
        "denied: unknown source address (0x00)"
    );
    assert_eq!(
        DiagNackCode(0x03).to_string(),
        "unknown target address (0x03)"
    );
    assert_eq!(NackCode(0x02).name(), "message too large");
    assert_eq!(
        RoutingActivationCode(0x42).name(),
        "reserved or manufacturer-specific routing activation code"
    );
    assert!(RoutingActivationCode::DENIED_ALL_SOCKETS_ACTIVE.closes_socket());
    assert!(!RoutingActivationCode::DENIED_MISSING_AUTHENTICATION.closes_socket());
    assert!(!RoutingActivationCode::SUCCESS.closes_socket());
}

// ---- streaming decoder ----

fn decode_all(codec: &mut DoipCodec, buf: &mut BytesMut) -> Result<Vec<Decoded>, Error> {
    let mut out = Vec::new();
    while let Some(d) = codec.decode_frame(buf)? {
        out.push(d);
    }
    Ok(out)
}

#[test]
fn stream_byte_by_byte() {
    let mut wire = Vec::new();
    let all: Vec<_> = golden()
        .into_iter()
        .filter(|(v, _, _)| *v != 0xFF)
        .collect();
    for (_, w, _) in &all {
        wire.extend_from_slice(w);
    }
    let mut codec = DoipCodec::new(1000);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for b in wire {
        buf.extend_from_slice(&[b]);
        got.extend(decode_all(&mut codec, &mut buf).unwrap());
    }
    let want: Vec<_> = all
        .into_iter()
        .map(|(v, _, r)| {
            Decoded::Message(Message {
                version: v,
                repr: r,
            })
        })
        .collect();
    assert_eq!(got, want);
    assert!(buf.is_empty());
}

#[test]
fn oversize_is_rejected_on_the_header_alone_and_skipped() {
    let mut codec = DoipCodec::new(16);
    let mut buf = BytesMut::new();
    // header announcing 1 MiB of diagnostic message, followed by nothing yet
    buf.extend_from_slice(&hex("02FD 8001 00100000"));
    let d = codec.decode_frame(&mut buf).unwrap();
    assert_eq!(
        d,
        Some(Decoded::Rejected {
            version: 2,
            error: Error::TooLarge {
                len: 0x10_0000,
                max: 16
            }
        })
    );
    assert!(codec.is_skipping());
    assert!(buf.is_empty());
    // the payload arrives in chunks and is dropped, never held
    let chunk = vec![0x55u8; 64 * 1024];
    for _ in 0..16 {
        buf.extend_from_slice(&chunk);
        assert_eq!(codec.decode_frame(&mut buf).unwrap(), None);
        assert!(buf.is_empty(), "skipped bytes are not buffered");
    }
    assert!(!codec.is_skipping());
    // the next message decodes normally
    buf.extend_from_slice(&hex("02FD 0007 00000000"));
    assert_eq!(
        codec.decode_frame(&mut buf).unwrap(),
        Some(Decoded::Message(Message {
            version: 2,
            repr: Repr::AliveCheckRequest
        }))
    );
}

#[test]
fn unknown_type_is_skipped_and_stream_continues() {
    let mut codec = DoipCodec::new(100);
    let mut buf = BytesMut::from(&hex("02FD 1234 00000003 010203 02FD 4001 00000000")[..]);
    let got = decode_all(&mut codec, &mut buf).unwrap();
    assert_eq!(
        got,
        vec![
            Decoded::Rejected {
                version: 2,
                error: Error::UnknownPayloadType(0x1234)
            },
            Decoded::Message(Message {
                version: 2,
                repr: Repr::EntityStatusRequest
            })
        ]
    );
}

#[test]
fn fatal_errors_before_payload_arrives() {
    let mut codec = DoipCodec::new(100);
    let mut buf = BytesMut::from(&hex("02FD 0005 00000050")[..]);
    assert_eq!(
        codec.decode_frame(&mut buf),
        Err(Error::InvalidLength {
            payload_type: 5,
            len: 0x50
        })
    );
    let mut codec = DoipCodec::new(100);
    let mut buf = BytesMut::from(&hex("01FD 8001 00000005")[..]);
    assert!(matches!(
        codec.decode_frame(&mut buf),
        Err(Error::IncorrectPattern { .. })
    ));
}

#[test]
fn large_diagnostic_message_within_limit() {
    let data = Bytes::from(vec![0x36u8; 65_536]);
    let m = Repr::DiagnosticMessage {
        source: 0x0E00,
        target: 0x1001,
        data: data.clone(),
    };
    let wire = m.to_bytes(3);
    let mut codec = DoipCodec::new(65_540);
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&wire[..1000]);
    assert_eq!(codec.decode_frame(&mut buf).unwrap(), None);
    buf.extend_from_slice(&wire[1000..]);
    let got = codec.decode_frame(&mut buf).unwrap();
    assert_eq!(
        got,
        Some(Decoded::Message(Message {
            version: 3,
            repr: m
        }))
    );
    // one byte over the limit is refused
    let mut codec = DoipCodec::new(65_539);
    let mut buf = BytesMut::from(&wire[..HEADER_LEN]);
    assert!(matches!(
        codec.decode_frame(&mut buf),
        Ok(Some(Decoded::Rejected {
            error: Error::TooLarge { .. },
            ..
        }))
    ));
}

// ---- properties ----

fn arb_repr() -> impl Strategy<Value = Repr> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from);
    let bytes1 = || proptest::collection::vec(any::<u8>(), 1..64).prop_map(Bytes::from);
    prop_oneof![
        any::<u8>().prop_map(|c| Repr::GenericNack(NackCode(c))),
        Just(Repr::VehicleIdRequest),
        any::<[u8; 6]>().prop_map(Repr::VehicleIdRequestEid),
        any::<[u8; 17]>().prop_map(Repr::VehicleIdRequestVin),
        (
            any::<[u8; 17]>(),
            any::<u16>(),
            any::<[u8; 6]>(),
            any::<[u8; 6]>(),
            any::<u8>(),
            any::<Option<u8>>()
        )
            .prop_map(|(vin, la, eid, gid, fa, s)| Repr::VehicleAnnouncement(
                VehicleAnnouncement {
                    vin,
                    logical_address: la,
                    eid,
                    gid,
                    further_action: FurtherAction(fa),
                    sync_status: s.map(SyncStatus),
                }
            )),
        (
            any::<u16>(),
            any::<u8>(),
            any::<u32>(),
            any::<Option<u32>>()
        )
            .prop_map(
                |(source, t, reserved, oem)| Repr::RoutingActivationRequest {
                    source,
                    activation_type: ActivationType(t),
                    reserved,
                    oem
                }
            ),
        (
            any::<u16>(),
            any::<u16>(),
            any::<u8>(),
            any::<u32>(),
            any::<Option<u32>>()
        )
            .prop_map(|(tester, entity, c, reserved, oem)| {
                Repr::RoutingActivationResponse {
                    tester,
                    entity,
                    code: RoutingActivationCode(c),
                    reserved,
                    oem,
                }
            }),
        Just(Repr::AliveCheckRequest),
        any::<u16>().prop_map(|source| Repr::AliveCheckResponse { source }),
        Just(Repr::EntityStatusRequest),
        (any::<u8>(), any::<u8>(), any::<u8>(), any::<Option<u32>>()).prop_map(|(n, m, o, d)| {
            Repr::EntityStatusResponse {
                node_type: NodeType(n),
                max_sockets: m,
                open_sockets: o,
                max_data_size: d,
            }
        }),
        Just(Repr::PowerModeRequest),
        any::<u8>().prop_map(|m| Repr::PowerModeResponse(PowerMode(m))),
        (any::<u16>(), any::<u16>(), bytes1()).prop_map(|(source, target, data)| {
            Repr::DiagnosticMessage {
                source,
                target,
                data,
            }
        }),
        (any::<u16>(), any::<u16>(), any::<u8>(), bytes()).prop_map(
            |(source, target, code, previous)| Repr::DiagnosticAck {
                source,
                target,
                code,
                previous
            }
        ),
        (any::<u16>(), any::<u16>(), any::<u8>(), bytes()).prop_map(
            |(source, target, c, previous)| Repr::DiagnosticNack {
                source,
                target,
                code: DiagNackCode(c),
                previous
            }
        ),
    ]
}

proptest! {
    #[test]
    fn round_trip(repr in arb_repr(), version in 1u8..=3) {
        let wire = repr.to_bytes(version);
        prop_assert_eq!(wire.len(), repr.buffer_len());
        let (v, back) = Repr::parse_bytes(&wire, DEFAULT_MAX_PAYLOAD).unwrap();
        prop_assert_eq!(v, version);
        prop_assert_eq!(&back, &repr);
        // and through the streaming decoder, split at an arbitrary point
        let mut codec = DoipCodec::default();
        let cut = wire.len() / 2;
        let mut buf = BytesMut::from(&wire[..cut]);
        let first = codec.decode_frame(&mut buf).unwrap();
        let got = match first {
            Some(d) => d,
            None => {
                buf.extend_from_slice(&wire[cut..]);
                codec.decode_frame(&mut buf).unwrap().unwrap()
            }
        };
        prop_assert_eq!(got, Decoded::Message(Message { version, repr }));
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..200), max in 0u32..300) {
        let b = Bytes::from(data.clone());
        let _ = Repr::parse_bytes(&b, max);
        if let Ok(p) = Packet::new_checked(&data[..]) {
            let _ = Repr::parse(&p, max);
            let _ = p.payload();
        }
        let mut codec = DoipCodec::new(max);
        let mut buf = BytesMut::from(&data[..]);
        for _ in 0..data.len() + 1 {
            match codec.decode_frame(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn never_panics_on_mutated_valid_messages(repr in arb_repr(), pos in any::<usize>(), byte in any::<u8>()) {
        let mut wire = repr.to_bytes(2).to_vec();
        let i = pos % wire.len();
        wire[i] = byte;
        let _ = Repr::parse_bytes(&Bytes::from(wire.clone()), DEFAULT_MAX_PAYLOAD);
        let mut codec = DoipCodec::new(DEFAULT_MAX_PAYLOAD);
        let mut buf = BytesMut::from(&wire[..]);
        let _ = codec.decode_frame(&mut buf);
    }
}

#[test]
fn out_of_memory_is_rejected_on_the_header_and_skipped() {
    let mut codec = DoipCodec::new(1000);
    let mut buf =
        BytesMut::from(&hex("02FD 8001 00000008 0E00 1001 01020304 02FD 0007 00000000")[..]);
    assert_eq!(
        codec.decode_frame_within(&mut buf, 7).unwrap(),
        Some(Decoded::Rejected {
            version: 2,
            error: Error::OutOfMemory {
                len: 8,
                available: 7
            }
        })
    );
    assert_eq!(
        Error::OutOfMemory {
            len: 8,
            available: 7
        }
        .nack_code(),
        Some(NackCode::OUT_OF_MEMORY)
    );
    // a zero-length message is never refused for memory
    assert_eq!(
        codec.decode_frame_within(&mut buf, 0).unwrap(),
        Some(Decoded::Message(Message {
            version: 2,
            repr: Repr::AliveCheckRequest
        }))
    );
}
