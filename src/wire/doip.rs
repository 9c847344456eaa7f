//! DoIP (ISO 13400-2) wire format: the generic header and every payload type obdgw uses.
//!
//! Owns: byte layouts, code values and their names, the checked view [`Packet`], the parsed
//! forms [`HeaderRepr`] and [`Repr`], and the streaming TCP decoder [`DoipCodec`] with its
//! maximum-payload rule.
//!
//! Does not own: sockets, timers, routing activation or any other protocol state (see
//! `crate::vehicle::doip`).
//!
//! Contracts, in the smoltcp manner:
//! - [`Packet::new_checked`] checks the buffer length once; after that no accessor panics.
//!   Untrusted bytes are only read through a checked view.
//! - [`Repr::parse`] validates the header pattern, the payload type and the payload length
//!   for that type; [`Repr::emit`] writes exactly [`Repr::buffer_len`] bytes.
//! - Diagnostic payloads are `bytes::Bytes` sliced out of the received frame: parsing a frame
//!   held in `Bytes` never copies user data.
//! - [`DoipCodec`] decides on the header alone: a payload longer than its configured maximum
//!   is rejected (and skipped as it arrives, never buffered), a length impossible for the
//!   payload type is a fatal error, both before any payload byte is waited for.
//!
//! Header handling follows the standard's order: pattern (version and inverse version),
//! payload type known, payload length within the maximum, payload length valid for the type.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;

/// UDP and TCP port of unencrypted DoIP.
pub const PORT: u16 = 13400;
/// TCP port of DoIP over TLS (ISO 13400-2:2019).
pub const TLS_PORT: u16 = 3496;
/// Length of the generic header.
pub const HEADER_LEN: usize = 8;

/// Protocol versions (the first header byte).
pub mod version {
    /// ISO 13400-2:2010.
    pub const ISO_2010: u8 = 0x01;
    /// ISO 13400-2:2012.
    pub const ISO_2012: u8 = 0x02;
    /// ISO 13400-2:2019.
    pub const ISO_2019: u8 = 0x03;
    /// "Any version": allowed only in vehicle identification requests.
    pub const DEFAULT: u8 = 0xFF;
}

mod field {
    use std::ops::Range;
    pub const VERSION: usize = 0;
    pub const INVERSE: usize = 1;
    pub const PAYLOAD_TYPE: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..8;
}

/// Payload type values (header bytes 2..4).
pub mod payload_type {
    pub const GENERIC_NACK: u16 = 0x0000;
    pub const VEHICLE_ID_REQUEST: u16 = 0x0001;
    pub const VEHICLE_ID_REQUEST_EID: u16 = 0x0002;
    pub const VEHICLE_ID_REQUEST_VIN: u16 = 0x0003;
    pub const VEHICLE_ANNOUNCEMENT: u16 = 0x0004;
    pub const ROUTING_ACTIVATION_REQUEST: u16 = 0x0005;
    pub const ROUTING_ACTIVATION_RESPONSE: u16 = 0x0006;
    pub const ALIVE_CHECK_REQUEST: u16 = 0x0007;
    pub const ALIVE_CHECK_RESPONSE: u16 = 0x0008;
    pub const ENTITY_STATUS_REQUEST: u16 = 0x4001;
    pub const ENTITY_STATUS_RESPONSE: u16 = 0x4002;
    pub const POWER_MODE_REQUEST: u16 = 0x4003;
    pub const POWER_MODE_RESPONSE: u16 = 0x4004;
    pub const DIAGNOSTIC_MESSAGE: u16 = 0x8001;
    pub const DIAGNOSTIC_ACK: u16 = 0x8002;
    pub const DIAGNOSTIC_NACK: u16 = 0x8003;

    /// Every payload type this module knows.
    pub const ALL: [u16; 16] = [
        GENERIC_NACK,
        VEHICLE_ID_REQUEST,
        VEHICLE_ID_REQUEST_EID,
        VEHICLE_ID_REQUEST_VIN,
        VEHICLE_ANNOUNCEMENT,
        ROUTING_ACTIVATION_REQUEST,
        ROUTING_ACTIVATION_RESPONSE,
        ALIVE_CHECK_REQUEST,
        ALIVE_CHECK_RESPONSE,
        ENTITY_STATUS_REQUEST,
        ENTITY_STATUS_RESPONSE,
        POWER_MODE_REQUEST,
        POWER_MODE_RESPONSE,
        DIAGNOSTIC_MESSAGE,
        DIAGNOSTIC_ACK,
        DIAGNOSTIC_NACK,
    ];

    /// The standard's name of a payload type.
    pub fn name(t: u16) -> &'static str {
        match t {
            GENERIC_NACK => "generic header negative acknowledge",
            VEHICLE_ID_REQUEST => "vehicle identification request",
            VEHICLE_ID_REQUEST_EID => "vehicle identification request with EID",
            VEHICLE_ID_REQUEST_VIN => "vehicle identification request with VIN",
            VEHICLE_ANNOUNCEMENT => "vehicle announcement / identification response",
            ROUTING_ACTIVATION_REQUEST => "routing activation request",
            ROUTING_ACTIVATION_RESPONSE => "routing activation response",
            ALIVE_CHECK_REQUEST => "alive check request",
            ALIVE_CHECK_RESPONSE => "alive check response",
            ENTITY_STATUS_REQUEST => "entity status request",
            ENTITY_STATUS_RESPONSE => "entity status response",
            POWER_MODE_REQUEST => "diagnostic power mode information request",
            POWER_MODE_RESPONSE => "diagnostic power mode information response",
            DIAGNOSTIC_MESSAGE => "diagnostic message",
            DIAGNOSTIC_ACK => "diagnostic message positive acknowledgement",
            DIAGNOSTIC_NACK => "diagnostic message negative acknowledgement",
            _ => "unknown payload type",
        }
    }

    /// The payload lengths the standard allows for a type: `(min, max)`, `max = None` for
    /// open-ended types. `None` for unknown types.
    pub fn length_bounds(t: u16) -> Option<(u32, Option<u32>)> {
        Some(match t {
            GENERIC_NACK => (1, Some(1)),
            VEHICLE_ID_REQUEST => (0, Some(0)),
            VEHICLE_ID_REQUEST_EID => (6, Some(6)),
            VEHICLE_ID_REQUEST_VIN => (17, Some(17)),
            VEHICLE_ANNOUNCEMENT => (32, Some(33)),
            ROUTING_ACTIVATION_REQUEST => (7, Some(11)),
            ROUTING_ACTIVATION_RESPONSE => (9, Some(13)),
            ALIVE_CHECK_REQUEST => (0, Some(0)),
            ALIVE_CHECK_RESPONSE => (2, Some(2)),
            ENTITY_STATUS_REQUEST => (0, Some(0)),
            ENTITY_STATUS_RESPONSE => (3, Some(7)),
            POWER_MODE_REQUEST => (0, Some(0)),
            POWER_MODE_RESPONSE => (1, Some(1)),
            DIAGNOSTIC_MESSAGE => (5, None),
            DIAGNOSTIC_ACK | DIAGNOSTIC_NACK => (5, None),
            _ => return None,
        })
    }

    /// Whether `len` is a valid payload length for the known type `t`.
    pub fn length_valid(t: u16, len: u32) -> bool {
        match t {
            VEHICLE_ANNOUNCEMENT => len == 32 || len == 33,
            ROUTING_ACTIVATION_REQUEST => len == 7 || len == 11,
            ROUTING_ACTIVATION_RESPONSE => len == 9 || len == 13,
            ENTITY_STATUS_RESPONSE => len == 3 || len == 7,
            _ => match length_bounds(t) {
                Some((min, max)) => len >= min && max.is_none_or(|m| len <= m),
                None => false,
            },
        }
    }

    /// Whether the type may carry protocol version 0xFF.
    pub fn allows_default_version(t: u16) -> bool {
        matches!(
            t,
            VEHICLE_ID_REQUEST | VEHICLE_ID_REQUEST_EID | VEHICLE_ID_REQUEST_VIN
        )
    }
}

macro_rules! code_type {
    ($(#[$m:meta])* $name:ident { $($(#[$cm:meta])* $c:ident = $v:expr => $text:expr,)* } else $other:expr) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u8);
        impl $name {
            $($(#[$cm])* pub const $c: $name = $name($v);)*
            /// The standard's name of this code.
            pub fn name(self) -> &'static str {
                match self.0 {
                    $($v => $text,)*
                    _ => $other,
                }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{} (0x{:02X})", self.name(), self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(0x{:02X})", stringify!($name), self.0)
            }
        }
    };
}

code_type! {
    /// Generic DoIP header negative acknowledge codes (payload type 0x0000).
    NackCode {
        /// Version/inverse mismatch or unsupported version: the socket is closed.
        INCORRECT_PATTERN = 0x00 => "incorrect pattern format",
        /// The payload type is not supported: the message is discarded.
        UNKNOWN_PAYLOAD_TYPE = 0x01 => "unknown payload type",
        /// The payload exceeds the maximum the receiver processes: the message is discarded.
        MESSAGE_TOO_LARGE = 0x02 => "message too large",
        /// The receiver has no memory for the payload now: the message is discarded.
        OUT_OF_MEMORY = 0x03 => "out of memory",
        /// The payload length is impossible for the payload type: the socket is closed.
        INVALID_PAYLOAD_LENGTH = 0x04 => "invalid payload length",
    } else "reserved generic NACK code"
}

impl NackCode {
    /// Whether the standard requires the TCP socket to be closed after sending this NACK.
    pub fn closes_socket(self) -> bool {
        self == NackCode::INCORRECT_PATTERN || self == NackCode::INVALID_PAYLOAD_LENGTH
    }
}

code_type! {
    /// Routing activation response codes (payload type 0x0006).
    RoutingActivationCode {
        DENIED_UNKNOWN_SOURCE = 0x00 => "denied: unknown source address",
        DENIED_ALL_SOCKETS_ACTIVE = 0x01 => "denied: all concurrently supported TCP sockets are registered and active",
        DENIED_SOURCE_MISMATCH = 0x02 => "denied: source address differs from the one already activated on this socket",
        DENIED_SOURCE_ACTIVE_ELSEWHERE = 0x03 => "denied: source address already registered and active on a different socket",
        DENIED_MISSING_AUTHENTICATION = 0x04 => "denied: missing authentication",
        DENIED_REJECTED_CONFIRMATION = 0x05 => "denied: rejected confirmation",
        DENIED_UNSUPPORTED_ACTIVATION_TYPE = 0x06 => "denied: unsupported routing activation type",
        DENIED_TLS_REQUIRED = 0x07 => "denied: a TLS connection is required",
        SUCCESS = 0x10 => "routing successfully activated",
        CONFIRMATION_REQUIRED = 0x11 => "routing will be activated; confirmation required",
    } else "reserved or manufacturer-specific routing activation code"
}

impl RoutingActivationCode {
    /// Whether routing is active after this response (0x10).
    pub fn is_success(self) -> bool {
        self == RoutingActivationCode::SUCCESS
    }

    /// Whether the entity closes the socket after sending this code (every denial except
    /// "missing authentication", which leaves room for an authentication step).
    pub fn closes_socket(self) -> bool {
        !matches!(self.0, 0x04 | 0x10 | 0x11)
    }
}

code_type! {
    /// Routing activation types (routing activation request byte 2).
    ActivationType {
        DEFAULT = 0x00 => "default",
        WWH_OBD = 0x01 => "WWH-OBD",
        CENTRAL_SECURITY = 0xE0 => "central security",
    } else "reserved or manufacturer-specific activation type"
}

code_type! {
    /// Diagnostic message negative acknowledge codes (payload type 0x8003).
    DiagNackCode {
        INVALID_SOURCE = 0x02 => "invalid source address",
        UNKNOWN_TARGET = 0x03 => "unknown target address",
        MESSAGE_TOO_LARGE = 0x04 => "diagnostic message too large",
        OUT_OF_MEMORY = 0x05 => "out of memory",
        TARGET_UNREACHABLE = 0x06 => "target unreachable",
        UNKNOWN_NETWORK = 0x07 => "unknown network",
        TRANSPORT_PROTOCOL_ERROR = 0x08 => "transport protocol error",
    } else "reserved diagnostic NACK code"
}

code_type! {
    /// Diagnostic power mode values (payload type 0x4004).
    PowerMode {
        NOT_READY = 0x00 => "not ready",
        READY = 0x01 => "ready",
        NOT_SUPPORTED = 0x02 => "not supported",
    } else "reserved power mode"
}

code_type! {
    /// Node types in the entity status response (payload type 0x4002).
    NodeType {
        GATEWAY = 0x00 => "DoIP gateway",
        NODE = 0x01 => "DoIP node",
    } else "reserved node type"
}

code_type! {
    /// Further action codes in the vehicle announcement.
    FurtherAction {
        NONE = 0x00 => "no further action required",
        CENTRAL_SECURITY = 0x10 => "routing activation required to initiate central security",
    } else "reserved or manufacturer-specific further action"
}

code_type! {
    /// VIN/GID synchronisation status in the vehicle announcement.
    SyncStatus {
        SYNCHRONIZED = 0x00 => "VIN and/or GID are synchronized",
        INCOMPLETE = 0x10 => "incomplete: VIN and GID are not synchronized",
    } else "reserved synchronisation status"
}

/// A wire error. Small and payload-light: it is produced per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Fewer bytes than the header or the announced payload need.
    #[error("truncated DoIP message: {have} bytes, {need} needed")]
    Truncated { have: usize, need: usize },
    /// More bytes than the header announces (a UDP datagram with trailing bytes).
    #[error("DoIP datagram of {have} bytes, but its header announces {need}")]
    TrailingBytes { have: usize, need: usize },
    /// Version and inverse version do not match, the version is unsupported, or 0xFF is
    /// used outside a vehicle identification request.
    #[error(
        "incorrect DoIP header pattern: version 0x{version:02X}, inverse 0x{inverse:02X} (expected a supported version 0x01-0x03 and its bitwise inverse)"
    )]
    IncorrectPattern { version: u8, inverse: u8 },
    /// The payload type is not one this module knows.
    #[error("unknown DoIP payload type 0x{0:04X}")]
    UnknownPayloadType(u16),
    /// The payload is longer than the configured maximum.
    #[error("DoIP payload of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: u32, max: u32 },
    /// The payload fits the maximum but the receiver has no buffer space for it now.
    #[error("no buffer space for a DoIP payload of {len} bytes ({available} available)")]
    OutOfMemory { len: u32, available: u32 },
    /// The payload length is impossible for the payload type.
    #[error("invalid payload length {len} for DoIP payload type 0x{payload_type:04X}")]
    InvalidLength { payload_type: u16, len: u32 },
    /// The output buffer is too small for `emit`.
    #[error("output buffer of {have} bytes, {need} needed")]
    BufferTooSmall { have: usize, need: usize },
}

impl Error {
    /// The generic header NACK code a receiver answers this error with, if any.
    pub fn nack_code(&self) -> Option<NackCode> {
        match self {
            Error::IncorrectPattern { .. } => Some(NackCode::INCORRECT_PATTERN),
            Error::UnknownPayloadType(_) => Some(NackCode::UNKNOWN_PAYLOAD_TYPE),
            Error::TooLarge { .. } => Some(NackCode::MESSAGE_TOO_LARGE),
            Error::OutOfMemory { .. } => Some(NackCode::OUT_OF_MEMORY),
            Error::InvalidLength { .. } | Error::TrailingBytes { .. } => {
                Some(NackCode::INVALID_PAYLOAD_LENGTH)
            }
            Error::Truncated { .. } | Error::BufferTooSmall { .. } => None,
        }
    }
}

/// A checked view over one DoIP message (header and payload).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view without any check; accessors may panic until [`Packet::check_len`] passed.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// A view whose buffer holds the header and the whole announced payload.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the header and the announced payload are present.
    pub fn check_len(&self) -> Result<(), Error> {
        let have = self.buffer.as_ref().len();
        if have < HEADER_LEN {
            return Err(Error::Truncated {
                have,
                need: HEADER_LEN,
            });
        }
        let need = self.total_len();
        if have < need {
            return Err(Error::Truncated { have, need });
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    pub fn inverse_version(&self) -> u8 {
        self.buffer.as_ref()[field::INVERSE]
    }

    pub fn payload_type(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::PAYLOAD_TYPE];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn payload_length(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::LENGTH];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Header plus announced payload length (saturating on 32-bit targets).
    pub fn total_len(&self) -> usize {
        HEADER_LEN.saturating_add(usize::try_from(self.payload_length()).unwrap_or(usize::MAX))
    }

    /// The payload bytes (exactly the announced length).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_version(&mut self, v: u8) {
        let b = self.buffer.as_mut();
        b[field::VERSION] = v;
        b[field::INVERSE] = !v;
    }

    pub fn set_payload_type(&mut self, t: u16) {
        self.buffer.as_mut()[field::PAYLOAD_TYPE].copy_from_slice(&t.to_be_bytes());
    }

    pub fn set_payload_length(&mut self, len: u32) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }
}

/// The parsed generic header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderRepr {
    pub version: u8,
    pub payload_type: u16,
    pub payload_length: u32,
}

impl HeaderRepr {
    /// Parse and validate the 8 header bytes at the start of `bytes` in the standard's
    /// order: pattern, payload type, maximum length (`max_payload`), length for the type.
    pub fn parse(bytes: &[u8], max_payload: u32) -> Result<HeaderRepr, Error> {
        if bytes.len() < HEADER_LEN {
            return Err(Error::Truncated {
                have: bytes.len(),
                need: HEADER_LEN,
            });
        }
        let p = Packet::new_unchecked(bytes);
        let (version, inverse) = (p.version(), p.inverse_version());
        let payload_type = p.payload_type();
        let payload_length = p.payload_length();
        let version_known = matches!(
            version,
            version::ISO_2010 | version::ISO_2012 | version::ISO_2019 | version::DEFAULT
        );
        if inverse != !version || !version_known {
            return Err(Error::IncorrectPattern { version, inverse });
        }
        if payload_type::length_bounds(payload_type).is_none() {
            return Err(Error::UnknownPayloadType(payload_type));
        }
        if version == version::DEFAULT && !payload_type::allows_default_version(payload_type) {
            return Err(Error::IncorrectPattern { version, inverse });
        }
        if payload_length > max_payload {
            return Err(Error::TooLarge {
                len: payload_length,
                max: max_payload,
            });
        }
        if !payload_type::length_valid(payload_type, payload_length) {
            return Err(Error::InvalidLength {
                payload_type,
                len: payload_length,
            });
        }
        Ok(HeaderRepr {
            version,
            payload_type,
            payload_length,
        })
    }

    /// Write the 8 header bytes.
    pub fn write<B: BufMut>(&self, dst: &mut B) {
        dst.put_u8(self.version);
        dst.put_u8(!self.version);
        dst.put_u16(self.payload_type);
        dst.put_u32(self.payload_length);
    }
}

/// Vehicle announcement / vehicle identification response (0x0004).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VehicleAnnouncement {
    /// 17 ASCII characters (0x00 or 0xFF filled when not known yet).
    pub vin: [u8; 17],
    /// The entity's logical address.
    pub logical_address: u16,
    /// Entity identification (usually the MAC address).
    pub eid: [u8; 6],
    /// Group identification.
    pub gid: [u8; 6],
    pub further_action: FurtherAction,
    /// Present in 33-byte announcements only.
    pub sync_status: Option<SyncStatus>,
}

impl VehicleAnnouncement {
    /// The VIN as text when it is printable ASCII.
    pub fn vin_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.vin)
            .ok()
            .filter(|s| s.bytes().all(|b| b.is_ascii_graphic()))
    }
}

/// The parsed payload of a DoIP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repr {
    GenericNack(NackCode),
    VehicleIdRequest,
    VehicleIdRequestEid([u8; 6]),
    VehicleIdRequestVin([u8; 17]),
    VehicleAnnouncement(VehicleAnnouncement),
    RoutingActivationRequest {
        source: u16,
        activation_type: ActivationType,
        /// Reserved by ISO (4 bytes, zero when sent).
        reserved: u32,
        oem: Option<u32>,
    },
    RoutingActivationResponse {
        tester: u16,
        entity: u16,
        code: RoutingActivationCode,
        reserved: u32,
        oem: Option<u32>,
    },
    AliveCheckRequest,
    AliveCheckResponse {
        source: u16,
    },
    EntityStatusRequest,
    EntityStatusResponse {
        node_type: NodeType,
        max_sockets: u8,
        open_sockets: u8,
        max_data_size: Option<u32>,
    },
    PowerModeRequest,
    PowerModeResponse(PowerMode),
    DiagnosticMessage {
        source: u16,
        target: u16,
        data: Bytes,
    },
    DiagnosticAck {
        source: u16,
        target: u16,
        code: u8,
        previous: Bytes,
    },
    DiagnosticNack {
        source: u16,
        target: u16,
        code: DiagNackCode,
        previous: Bytes,
    },
}

/// A small cursor over a checked payload; every read is within the length checked by
/// `payload_type::length_valid` before the cursor is made.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u8(&mut self) -> u8 {
        self.0.get_u8()
    }
    fn u16(&mut self) -> u16 {
        self.0.get_u16()
    }
    fn u32(&mut self) -> u32 {
        self.0.get_u32()
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        self.0.copy_to_slice(&mut a);
        a
    }
    fn remaining(&self) -> usize {
        self.0.len()
    }
}

impl Repr {
    /// The payload type of this message.
    pub fn payload_type(&self) -> u16 {
        use payload_type::*;
        match self {
            Repr::GenericNack(_) => GENERIC_NACK,
            Repr::VehicleIdRequest => VEHICLE_ID_REQUEST,
            Repr::VehicleIdRequestEid(_) => VEHICLE_ID_REQUEST_EID,
            Repr::VehicleIdRequestVin(_) => VEHICLE_ID_REQUEST_VIN,
            Repr::VehicleAnnouncement(_) => VEHICLE_ANNOUNCEMENT,
            Repr::RoutingActivationRequest { .. } => ROUTING_ACTIVATION_REQUEST,
            Repr::RoutingActivationResponse { .. } => ROUTING_ACTIVATION_RESPONSE,
            Repr::AliveCheckRequest => ALIVE_CHECK_REQUEST,
            Repr::AliveCheckResponse { .. } => ALIVE_CHECK_RESPONSE,
            Repr::EntityStatusRequest => ENTITY_STATUS_REQUEST,
            Repr::EntityStatusResponse { .. } => ENTITY_STATUS_RESPONSE,
            Repr::PowerModeRequest => POWER_MODE_REQUEST,
            Repr::PowerModeResponse(_) => POWER_MODE_RESPONSE,
            Repr::DiagnosticMessage { .. } => DIAGNOSTIC_MESSAGE,
            Repr::DiagnosticAck { .. } => DIAGNOSTIC_ACK,
            Repr::DiagnosticNack { .. } => DIAGNOSTIC_NACK,
        }
    }

    /// Payload length in bytes (without the header).
    pub fn payload_len(&self) -> usize {
        match self {
            Repr::GenericNack(_) => 1,
            Repr::VehicleIdRequest
            | Repr::AliveCheckRequest
            | Repr::EntityStatusRequest
            | Repr::PowerModeRequest => 0,
            Repr::VehicleIdRequestEid(_) => 6,
            Repr::VehicleIdRequestVin(_) => 17,
            Repr::VehicleAnnouncement(a) => 32 + a.sync_status.is_some() as usize,
            Repr::RoutingActivationRequest { oem, .. } => 7 + 4 * oem.is_some() as usize,
            Repr::RoutingActivationResponse { oem, .. } => 9 + 4 * oem.is_some() as usize,
            Repr::AliveCheckResponse { .. } => 2,
            Repr::EntityStatusResponse { max_data_size, .. } => {
                3 + 4 * max_data_size.is_some() as usize
            }
            Repr::PowerModeResponse(_) => 1,
            Repr::DiagnosticMessage { data, .. } => 4 + data.len(),
            Repr::DiagnosticAck { previous, .. } | Repr::DiagnosticNack { previous, .. } => {
                5 + previous.len()
            }
        }
    }

    /// Header plus payload length: what [`Repr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    /// Parse a complete message held in `Bytes` (header and exactly its payload; trailing
    /// bytes are an error). Diagnostic user data is sliced from `frame`, not copied.
    pub fn parse_bytes(frame: &Bytes, max_payload: u32) -> Result<(u8, Repr), Error> {
        let header = Self::parse_frame_header(frame, max_payload)?;
        let payload = frame.slice(HEADER_LEN..HEADER_LEN + header.payload_length as usize);
        let repr = Self::parse_payload(header.payload_type, &payload, |r| payload.slice(r))?;
        Ok((header.version, repr))
    }

    /// Parse a complete message through a checked view (a UDP datagram, say). Diagnostic
    /// user data, if any, is copied once into `Bytes`.
    pub fn parse<T: AsRef<[u8]>>(
        packet: &Packet<T>,
        max_payload: u32,
    ) -> Result<(u8, Repr), Error> {
        let bytes = packet.buffer.as_ref();
        let header = Self::parse_frame_header(bytes, max_payload)?;
        let payload = &bytes[HEADER_LEN..HEADER_LEN + header.payload_length as usize];
        let repr = Self::parse_payload(header.payload_type, payload, |r| {
            Bytes::copy_from_slice(&payload[r])
        })?;
        Ok((header.version, repr))
    }

    fn parse_frame_header(bytes: &[u8], max_payload: u32) -> Result<HeaderRepr, Error> {
        let header = HeaderRepr::parse(bytes, max_payload)?;
        let need = HEADER_LEN + header.payload_length as usize;
        match bytes.len() {
            have if have < need => Err(Error::Truncated { have, need }),
            have if have > need => Err(Error::TrailingBytes { have, need }),
            _ => Ok(header),
        }
    }

    /// Parse a payload of a known type. `payload.len()` must be what the header announced;
    /// `slice` turns a range of `payload` into `Bytes` (zero-copy for `Bytes` input).
    pub fn parse_payload(
        payload_type: u16,
        payload: &[u8],
        slice: impl Fn(std::ops::Range<usize>) -> Bytes,
    ) -> Result<Repr, Error> {
        use payload_type::*;
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        if payload_type::length_bounds(payload_type).is_none() {
            return Err(Error::UnknownPayloadType(payload_type));
        }
        if !payload_type::length_valid(payload_type, len) {
            return Err(Error::InvalidLength { payload_type, len });
        }
        let mut f = Fields(payload);
        Ok(match payload_type {
            GENERIC_NACK => Repr::GenericNack(NackCode(f.u8())),
            VEHICLE_ID_REQUEST => Repr::VehicleIdRequest,
            VEHICLE_ID_REQUEST_EID => Repr::VehicleIdRequestEid(f.array()),
            VEHICLE_ID_REQUEST_VIN => Repr::VehicleIdRequestVin(f.array()),
            VEHICLE_ANNOUNCEMENT => {
                let vin = f.array();
                let logical_address = f.u16();
                let eid = f.array();
                let gid = f.array();
                let further_action = FurtherAction(f.u8());
                let sync_status = (f.remaining() == 1).then(|| SyncStatus(f.u8()));
                Repr::VehicleAnnouncement(VehicleAnnouncement {
                    vin,
                    logical_address,
                    eid,
                    gid,
                    further_action,
                    sync_status,
                })
            }
            ROUTING_ACTIVATION_REQUEST => Repr::RoutingActivationRequest {
                source: f.u16(),
                activation_type: ActivationType(f.u8()),
                reserved: f.u32(),
                oem: (f.remaining() == 4).then(|| f.u32()),
            },
            ROUTING_ACTIVATION_RESPONSE => Repr::RoutingActivationResponse {
                tester: f.u16(),
                entity: f.u16(),
                code: RoutingActivationCode(f.u8()),
                reserved: f.u32(),
                oem: (f.remaining() == 4).then(|| f.u32()),
            },
            ALIVE_CHECK_REQUEST => Repr::AliveCheckRequest,
            ALIVE_CHECK_RESPONSE => Repr::AliveCheckResponse { source: f.u16() },
            ENTITY_STATUS_REQUEST => Repr::EntityStatusRequest,
            ENTITY_STATUS_RESPONSE => Repr::EntityStatusResponse {
                node_type: NodeType(f.u8()),
                max_sockets: f.u8(),
                open_sockets: f.u8(),
                max_data_size: (f.remaining() == 4).then(|| f.u32()),
            },
            POWER_MODE_REQUEST => Repr::PowerModeRequest,
            POWER_MODE_RESPONSE => Repr::PowerModeResponse(PowerMode(f.u8())),
            DIAGNOSTIC_MESSAGE => Repr::DiagnosticMessage {
                source: f.u16(),
                target: f.u16(),
                data: slice(4..payload.len()),
            },
            DIAGNOSTIC_ACK => Repr::DiagnosticAck {
                source: f.u16(),
                target: f.u16(),
                code: f.u8(),
                previous: slice(5..payload.len()),
            },
            DIAGNOSTIC_NACK => Repr::DiagnosticNack {
                source: f.u16(),
                target: f.u16(),
                code: DiagNackCode(f.u8()),
                previous: slice(5..payload.len()),
            },
            other => return Err(Error::UnknownPayloadType(other)),
        })
    }

    /// Append the header (with `version`) and the payload to `dst`.
    ///
    /// Lengths beyond `u32::MAX` cannot be represented and are the caller's invariant (every
    /// `Bytes` the codec hands out is bounded by its maximum payload length).
    pub fn write<B: BufMut>(&self, version: u8, dst: &mut B) {
        HeaderRepr {
            version,
            payload_type: self.payload_type(),
            payload_length: u32::try_from(self.payload_len()).unwrap_or(u32::MAX),
        }
        .write(dst);
        match self {
            Repr::GenericNack(c) => dst.put_u8(c.0),
            Repr::VehicleIdRequest
            | Repr::AliveCheckRequest
            | Repr::EntityStatusRequest
            | Repr::PowerModeRequest => {}
            Repr::VehicleIdRequestEid(eid) => dst.put_slice(eid),
            Repr::VehicleIdRequestVin(vin) => dst.put_slice(vin),
            Repr::VehicleAnnouncement(a) => {
                dst.put_slice(&a.vin);
                dst.put_u16(a.logical_address);
                dst.put_slice(&a.eid);
                dst.put_slice(&a.gid);
                dst.put_u8(a.further_action.0);
                if let Some(s) = a.sync_status {
                    dst.put_u8(s.0);
                }
            }
            Repr::RoutingActivationRequest {
                source,
                activation_type,
                reserved,
                oem,
            } => {
                dst.put_u16(*source);
                dst.put_u8(activation_type.0);
                dst.put_u32(*reserved);
                if let Some(o) = oem {
                    dst.put_u32(*o);
                }
            }
            Repr::RoutingActivationResponse {
                tester,
                entity,
                code,
                reserved,
                oem,
            } => {
                dst.put_u16(*tester);
                dst.put_u16(*entity);
                dst.put_u8(code.0);
                dst.put_u32(*reserved);
                if let Some(o) = oem {
                    dst.put_u32(*o);
                }
            }
            Repr::AliveCheckResponse { source } => dst.put_u16(*source),
            Repr::EntityStatusResponse {
                node_type,
                max_sockets,
                open_sockets,
                max_data_size,
            } => {
                dst.put_u8(node_type.0);
                dst.put_u8(*max_sockets);
                dst.put_u8(*open_sockets);
                if let Some(m) = max_data_size {
                    dst.put_u32(*m);
                }
            }
            Repr::PowerModeResponse(m) => dst.put_u8(m.0),
            Repr::DiagnosticMessage {
                source,
                target,
                data,
            } => {
                dst.put_u16(*source);
                dst.put_u16(*target);
                dst.put_slice(data);
            }
            Repr::DiagnosticAck {
                source,
                target,
                code,
                previous,
            } => {
                dst.put_u16(*source);
                dst.put_u16(*target);
                dst.put_u8(*code);
                dst.put_slice(previous);
            }
            Repr::DiagnosticNack {
                source,
                target,
                code,
                previous,
            } => {
                dst.put_u16(*source);
                dst.put_u16(*target);
                dst.put_u8(code.0);
                dst.put_slice(previous);
            }
        }
    }

    /// Emit into `buf`, which must hold at least [`Repr::buffer_len`] bytes; returns the
    /// number of bytes written.
    pub fn emit(&self, version: u8, buf: &mut [u8]) -> Result<usize, Error> {
        let need = self.buffer_len();
        if buf.len() < need {
            return Err(Error::BufferTooSmall {
                have: buf.len(),
                need,
            });
        }
        let mut dst = &mut buf[..need];
        self.write(version, &mut dst);
        Ok(need)
    }

    /// The message as a fresh `Bytes` (for UDP datagrams and tests).
    pub fn to_bytes(&self, version: u8) -> Bytes {
        let mut b = BytesMut::with_capacity(self.buffer_len());
        self.write(version, &mut b);
        b.freeze()
    }
}

/// One decoded DoIP message with the protocol version it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub version: u8,
    pub repr: Repr,
}

/// What [`DoipCodec`] produced from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A complete, valid message.
    Message(Message),
    /// A message the standard says to NACK and discard while keeping the connection:
    /// unknown payload type or payload over the maximum. Its payload is skipped as it
    /// arrives (never buffered). Answer with `Repr::GenericNack(error.nack_code())`.
    Rejected {
        /// The version from the rejected header (to answer in kind).
        version: u8,
        error: Error,
    },
}

/// Errors that end a DoIP TCP stream.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The header pattern or the payload length for its type is wrong: answer with the
    /// generic NACK from [`Error::nack_code`] and close the socket.
    #[error(transparent)]
    Protocol(#[from] Error),
    #[error("DoIP socket I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl CodecError {
    /// The generic NACK to send before closing, if any.
    pub fn nack_code(&self) -> Option<NackCode> {
        match self {
            CodecError::Protocol(e) => e.nack_code(),
            CodecError::Io(_) => None,
        }
    }
}

/// Default maximum payload length: a 64 KiB UDS transfer plus the 4 address bytes, with
/// room to spare. Configurable per codec.
pub const DEFAULT_MAX_PAYLOAD: u32 = 0x0004_0000;

/// Streaming DoIP decoder/encoder for TCP (tokio-util `Decoder`/`Encoder` over `BytesMut`).
///
/// Limits: a header announcing more than `max_payload` bytes is answered with
/// [`Decoded::Rejected`] as soon as its 8 header bytes are in, and the payload bytes are
/// dropped from the buffer as they arrive; the buffer therefore never holds more than
/// `max_payload + 8` bytes of one message.
#[derive(Debug, Clone)]
pub struct DoipCodec {
    /// Largest payload that is buffered and delivered.
    max_payload: u32,
    /// Bytes of a rejected message still to drop.
    skip: u64,
    /// Header of the message being buffered (parsed once).
    current: Option<HeaderRepr>,
}

impl DoipCodec {
    pub fn new(max_payload: u32) -> Self {
        DoipCodec {
            max_payload,
            skip: 0,
            current: None,
        }
    }

    pub fn max_payload(&self) -> u32 {
        self.max_payload
    }

    /// Whether a rejected payload is still being skipped.
    pub fn is_skipping(&self) -> bool {
        self.skip > 0
    }

    /// Decode one message from `src`; `Ok(None)` means "need more bytes".
    pub fn decode_frame(&mut self, src: &mut BytesMut) -> Result<Option<Decoded>, Error> {
        self.decode_frame_within(src, u32::MAX)
    }

    /// Like [`DoipCodec::decode_frame`], with the receiver's free buffer space: a message
    /// that fits the maximum but not `available` is rejected as out of memory (generic NACK
    /// 0x03) on its header alone and skipped. Messages without payload are never refused.
    pub fn decode_frame_within(
        &mut self,
        src: &mut BytesMut,
        available: u32,
    ) -> Result<Option<Decoded>, Error> {
        if self.skip > 0 {
            let n = usize::try_from(self.skip)
                .unwrap_or(usize::MAX)
                .min(src.len());
            src.advance(n);
            self.skip -= n as u64;
            if self.skip > 0 {
                return Ok(None);
            }
        }
        let header = match self.current {
            Some(h) => h,
            None => {
                if src.len() < HEADER_LEN {
                    return Ok(None);
                }
                let parsed = HeaderRepr::parse(src, self.max_payload).and_then(|h| {
                    if h.payload_length > available {
                        Err(Error::OutOfMemory {
                            len: h.payload_length,
                            available,
                        })
                    } else {
                        Ok(h)
                    }
                });
                match parsed {
                    Ok(h) => {
                        self.current = Some(h);
                        h
                    }
                    Err(
                        error @ (Error::UnknownPayloadType(_)
                        | Error::TooLarge { .. }
                        | Error::OutOfMemory { .. }),
                    ) => {
                        let p = Packet::new_unchecked(&src[..HEADER_LEN]);
                        let version = p.version();
                        self.skip = u64::from(p.payload_length());
                        src.advance(HEADER_LEN);
                        let n = usize::try_from(self.skip)
                            .unwrap_or(usize::MAX)
                            .min(src.len());
                        src.advance(n);
                        self.skip -= n as u64;
                        return Ok(Some(Decoded::Rejected { version, error }));
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let total = HEADER_LEN.saturating_add(header.payload_length as usize);
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        self.current = None;
        let frame = src.split_to(total).freeze();
        let payload = frame.slice(HEADER_LEN..);
        let repr = Repr::parse_payload(header.payload_type, &payload, |r| payload.slice(r))?;
        Ok(Some(Decoded::Message(Message {
            version: header.version,
            repr,
        })))
    }
}

impl Default for DoipCodec {
    fn default() -> Self {
        DoipCodec::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl tokio_util::codec::Decoder for DoipCodec {
    type Item = Decoded;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Decoded>, CodecError> {
        Ok(self.decode_frame(src)?)
    }
}

impl tokio_util::codec::Encoder<&Message> for DoipCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        dst.reserve(item.repr.buffer_len());
        item.repr.write(item.version, dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
