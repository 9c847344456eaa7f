//! Cross-check of `obdgw::wire::doip` against an independent DoIP codec, `simple_doip`
//! (MIT/Apache-2.0), used only as a test oracle.
//!
//! Both directions, for every message type the oracle supports:
//! - ours encodes, the oracle decodes, fields compared;
//! - the oracle encodes, ours decodes, fields compared.
//!
//! Oracle limits (so not cross-checked there): it decodes the three vehicle identification
//! requests as one variant without their EID/VIN, always emits 33-byte announcements and
//! 7-byte entity status responses (treating an all-0x00 or all-0xFF GID as "no GID"),
//! cannot decode a power mode request, and decodes a diagnostic NACK (0x8003) without its
//! fields. Those types are covered by our golden vectors.

use bytes::Bytes;
use obdgw::wire::doip::{
    ActivationType, DiagNackCode, FurtherAction, NackCode, NodeType, PowerMode, Repr,
    RoutingActivationCode, SyncStatus, VehicleAnnouncement,
};
use proptest::prelude::*;
use simple_doip::LogicalAddress as La;
use simple_doip::messages::{
    self as sd, Decode, Encode, Header, Message as SdMessage, Payload, PayloadType, ProtocolVersion,
};

/// Ours -> oracle: decode our bytes with the oracle and compare every field it exposes.
fn oracle_agrees(ours: &Repr, version: u8) -> Result<(), TestCaseError> {
    let wire = ours.to_bytes(version);
    let (frame, consumed) = simple_doip::try_frame(&wire)
        .map_err(|e| TestCaseError::fail(format!("oracle framing: {e:?}")))?
        .ok_or_else(|| TestCaseError::fail("oracle wants more bytes"))?;
    prop_assert_eq!(consumed, wire.len());
    prop_assert_eq!(u8::from(frame.header.protocol_version), version);
    prop_assert_eq!(u16::from(frame.header.payload_type), ours.payload_type());
    prop_assert_eq!(frame.header.payload_length as usize, ours.payload_len());
    let p = Payload::decode(frame.payload, frame.header.payload_type)
        .map_err(|e| TestCaseError::fail(format!("oracle payload: {e:?}")))?;
    match (ours, p) {
        (Repr::GenericNack(c), Payload::DoIPNack(n)) => prop_assert_eq!(c.0, u8::from(n)),
        (
            Repr::VehicleIdRequest | Repr::VehicleIdRequestEid(_) | Repr::VehicleIdRequestVin(_),
            Payload::VehicleIdentificationRequest,
        ) => {}
        (Repr::VehicleAnnouncement(a), Payload::VehicleAnnouncement(v)) => {
            prop_assert_eq!(a.vin, v.vin);
            prop_assert_eq!(a.logical_address, v.logical_address.0);
            prop_assert_eq!(a.eid, v.entity_id);
            prop_assert_eq!(Some(a.gid), v.group_id);
            prop_assert_eq!(a.further_action.0, u8::from(v.further_action));
            prop_assert_eq!(
                a.sync_status.map(|s| s.0),
                Some(u8::from(v.vin_gid_sync_status))
            );
        }
        (
            Repr::RoutingActivationRequest {
                source,
                activation_type,
                reserved,
                oem,
            },
            Payload::RoutingActivationRequest(r),
        ) => {
            prop_assert_eq!(*source, r.source_address.0);
            prop_assert_eq!(activation_type.0, u8::from(r.activation_type));
            prop_assert_eq!(reserved.to_be_bytes(), r.reserved);
            prop_assert_eq!(oem.map(u32::to_be_bytes), r.reserved_vehicle_manufacturer);
        }
        (
            Repr::RoutingActivationResponse {
                tester,
                entity,
                code,
                reserved,
                oem,
            },
            Payload::RoutingActivationResponse(r),
        ) => {
            prop_assert_eq!(*tester, r.logical_address_tester.0);
            prop_assert_eq!(*entity, r.logical_address_of_doip_entity.0);
            prop_assert_eq!(code.0, u8::from(r.routing_activation_response_code));
            prop_assert_eq!(reserved.to_be_bytes(), r.reserved_oem);
            prop_assert_eq!(oem.map(u32::to_be_bytes), r.oem_specific);
        }
        (Repr::AliveCheckRequest, Payload::AliveCheckRequest) => {}
        (Repr::AliveCheckResponse { source }, Payload::AliveCheckResponse(r)) => {
            prop_assert_eq!(*source, r.source_address.0)
        }
        (Repr::EntityStatusRequest, Payload::EntityStatusRequest) => {}
        (
            Repr::EntityStatusResponse {
                node_type,
                max_sockets,
                open_sockets,
                max_data_size,
            },
            Payload::EntityStatusResponse(r),
        ) => {
            prop_assert_eq!(node_type.0, u8::from(r.node_type));
            prop_assert_eq!(*max_sockets, r.max_concurrent_tcp_sockets);
            prop_assert_eq!(*open_sockets, r.open_tcp_sockets);
            prop_assert_eq!(*max_data_size, Some(r.max_data_size));
        }
        (Repr::PowerModeResponse(m), Payload::PowerModeInfoResponse(r)) => {
            prop_assert_eq!(m.0, u8::from(r))
        }
        (
            Repr::DiagnosticMessage {
                source,
                target,
                data,
            },
            Payload::DiagnosticMessage(d),
        ) => {
            prop_assert_eq!(*source, d.source_address.0);
            prop_assert_eq!(*target, d.target_address.0);
            prop_assert_eq!(&data[..], d.user_data);
        }
        (
            Repr::DiagnosticAck {
                source,
                target,
                code,
                previous,
            },
            Payload::DiagnosticMessageAck(a),
        ) => {
            prop_assert_eq!(*source, a.source_address.0);
            prop_assert_eq!(*target, a.target_address.0);
            prop_assert_eq!(*code, u8::from(a.ack_code));
            prop_assert_eq!(&previous[..], a.previous_message_data);
        }
        (Repr::DiagnosticNack { .. }, Payload::DiagnosticMessageNack) => {}
        (ours, theirs) => {
            return Err(TestCaseError::fail(format!(
                "oracle decoded {ours:?} as {theirs:?}"
            )));
        }
    }
    Ok(())
}

/// Oracle -> ours: the oracle encodes `payload`; we decode and must get `want`.
fn we_agree(
    version: u8,
    payload_type: PayloadType,
    payload: Payload<'_>,
    want: Repr,
) -> Result<(), TestCaseError> {
    let msg = SdMessage {
        header: Header::new(ProtocolVersion::from(version), payload_type, 0),
        payload,
    };
    let mut buf = vec![0u8; 8 + 4096];
    let n = {
        let mut w: &mut [u8] = &mut buf[..];
        msg.encode(&mut w)
            .map_err(|e| TestCaseError::fail(format!("oracle encode: {e:?}")))?
    };
    let wire = Bytes::copy_from_slice(&buf[..n]);
    // sanity: the oracle reads its own bytes
    prop_assert!(SdMessage::decode(&wire).is_ok());
    let (v, got) = Repr::parse_bytes(&wire, 1 << 20)
        .map_err(|e| TestCaseError::fail(format!("we refused the oracle's bytes: {e}")))?;
    prop_assert_eq!(v, version);
    prop_assert_eq!(got, want);
    Ok(())
}

fn addr() -> impl Strategy<Value = u16> {
    any::<u16>()
}

fn gid() -> impl Strategy<Value = [u8; 6]> {
    any::<[u8; 6]>().prop_filter("oracle treats 00.. and FF.. as no GID", |g| {
        *g != [0; 6] && *g != [0xFF; 6]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn generic_nack(code in any::<u8>(), v in 1u8..=3) {
        let ours = Repr::GenericNack(NackCode(code));
        oracle_agrees(&ours, v)?;
        we_agree(v, PayloadType::NegativeAcknowledge, Payload::DoIPNack(code.into()), ours)?;
    }

    #[test]
    fn vehicle_identification_requests(eid in any::<[u8; 6]>(), vin in any::<[u8; 17]>()) {
        oracle_agrees(&Repr::VehicleIdRequest, 0xFF)?;
        oracle_agrees(&Repr::VehicleIdRequestEid(eid), 0xFF)?;
        oracle_agrees(&Repr::VehicleIdRequestVin(vin), 2)?;
        we_agree(0xFF, PayloadType::VehicleIdentificationRequest, Payload::VehicleIdentificationRequest, Repr::VehicleIdRequest)?;
    }

    #[test]
    fn vehicle_announcement(vin in any::<[u8; 17]>(), la in addr(), eid in any::<[u8; 6]>(), gid in gid(), fa in any::<u8>(), sync in any::<u8>(), v in 1u8..=3) {
        let ours = Repr::VehicleAnnouncement(VehicleAnnouncement {
            vin, logical_address: la, eid, gid,
            further_action: FurtherAction(fa),
            sync_status: Some(SyncStatus(sync)),
        });
        oracle_agrees(&ours, v)?;
        let theirs = sd::VehicleIdentificationResponse {
            vin, logical_address: La(la), entity_id: eid, group_id: Some(gid),
            further_action: fa.into(), vin_gid_sync_status: sync.into(),
        };
        we_agree(v, PayloadType::VehicleAnnouncement, Payload::VehicleAnnouncement(theirs), ours)?;
    }

    #[test]
    fn routing_activation_request(source in addr(), t in any::<u8>(), reserved in any::<u32>(), oem in any::<Option<u32>>(), v in 1u8..=3) {
        let ours = Repr::RoutingActivationRequest { source, activation_type: ActivationType(t), reserved, oem };
        oracle_agrees(&ours, v)?;
        let theirs = sd::RoutingActivationRequest {
            source_address: La(source), activation_type: t.into(),
            reserved: reserved.to_be_bytes(),
            reserved_vehicle_manufacturer: oem.map(u32::to_be_bytes),
        };
        we_agree(v, PayloadType::RoutingActivationRequest, Payload::RoutingActivationRequest(theirs), ours)?;
    }

    #[test]
    fn routing_activation_response(tester in addr(), entity in addr(), code in any::<u8>(), reserved in any::<u32>(), oem in any::<Option<u32>>(), v in 1u8..=3) {
        let ours = Repr::RoutingActivationResponse { tester, entity, code: RoutingActivationCode(code), reserved, oem };
        oracle_agrees(&ours, v)?;
        let theirs = sd::RoutingActivationResponse {
            logical_address_tester: La(tester), logical_address_of_doip_entity: La(entity),
            routing_activation_response_code: code.into(),
            reserved_oem: reserved.to_be_bytes(), oem_specific: oem.map(u32::to_be_bytes),
        };
        we_agree(v, PayloadType::RoutingActivationResponse, Payload::RoutingActivationResponse(theirs), ours)?;
    }

    #[test]
    fn alive_check_and_entity_status(source in addr(), n in any::<u8>(), m in any::<u8>(), o in any::<u8>(), d in any::<u32>(), v in 1u8..=3) {
        oracle_agrees(&Repr::AliveCheckRequest, v)?;
        we_agree(v, PayloadType::AliveCheckRequest, Payload::AliveCheckRequest, Repr::AliveCheckRequest)?;
        let ours = Repr::AliveCheckResponse { source };
        oracle_agrees(&ours, v)?;
        we_agree(v, PayloadType::AliveCheckResponse, Payload::AliveCheckResponse(sd::AliveCheckResponse { source_address: La(source) }), ours)?;
        oracle_agrees(&Repr::EntityStatusRequest, v)?;
        we_agree(v, PayloadType::DoIPEntityStatusRequest, Payload::EntityStatusRequest, Repr::EntityStatusRequest)?;
        let ours = Repr::EntityStatusResponse { node_type: NodeType(n), max_sockets: m, open_sockets: o, max_data_size: Some(d) };
        oracle_agrees(&ours, v)?;
        let theirs = sd::EntityStatusResponse { node_type: n.into(), max_concurrent_tcp_sockets: m, open_tcp_sockets: o, max_data_size: d };
        we_agree(v, PayloadType::DoIPEntityStatusResponse, Payload::EntityStatusResponse(theirs), ours)?;
    }

    #[test]
    fn power_mode_response(mode in any::<u8>(), v in 1u8..=3) {
        let ours = Repr::PowerModeResponse(PowerMode(mode));
        oracle_agrees(&ours, v)?;
        we_agree(v, PayloadType::DiagnosticPowerModeInfoResponse, Payload::PowerModeInfoResponse(mode.into()), ours)?;
    }

    #[test]
    fn diagnostic_message_ack_nack(source in addr(), target in addr(), data in proptest::collection::vec(any::<u8>(), 1..2048), code in any::<u8>(), prev in proptest::collection::vec(any::<u8>(), 0..32), v in 1u8..=3) {
        let ours = Repr::DiagnosticMessage { source, target, data: Bytes::from(data.clone()) };
        oracle_agrees(&ours, v)?;
        let theirs = sd::DiagnosticMessage { source_address: La(source), target_address: La(target), user_data: &data };
        we_agree(v, PayloadType::DiagnosticMessage, Payload::DiagnosticMessage(theirs), ours)?;

        let ours = Repr::DiagnosticAck { source, target, code, previous: Bytes::from(prev.clone()) };
        oracle_agrees(&ours, v)?;
        let theirs = sd::DiagnosticMessageAck { source_address: La(source), target_address: La(target), ack_code: code.into(), previous_message_data: &prev };
        we_agree(v, PayloadType::DiagnosticMessagePositiveAcknowledge, Payload::DiagnosticMessageAck(theirs), ours)?;

        let ours = Repr::DiagnosticNack { source, target, code: DiagNackCode(code), previous: Bytes::from(prev) };
        oracle_agrees(&ours, v)?;
    }

    /// On arbitrary bytes, both decoders agree on whether the header's version pattern is
    /// acceptable (for headers of the supported versions).
    #[test]
    fn header_pattern_agreement(version in 1u8..=3, inverse in any::<u8>(), t in prop::sample::select(obdgw::wire::doip::payload_type::ALL.to_vec())) {
        let mut h = vec![version, inverse];
        h.extend_from_slice(&t.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes());
        let ours_ok = !matches!(
            obdgw::wire::doip::HeaderRepr::parse(&h, 100),
            Err(obdgw::wire::doip::Error::IncorrectPattern { .. })
        );
        let theirs_ok = Header::decode(&h).is_ok();
        prop_assert_eq!(ours_ok, theirs_ok, "header {:02X?}", h);
    }
}
