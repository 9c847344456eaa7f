//! UDS (ISO 14229-1) and OBD-II (SAE J1979 / ISO 15031-5) helpers the box needs itself.
//!
//! Owns: service identifiers and negative response codes with their standard names; a checked
//! parser of diagnostic responses (positive, negative, response-pending, malformed); request
//! builders for what the box sends on its own (ReadDataByIdentifier, OBD-II service 09 PID 02,
//! TesterPresent, DiagnosticSessionControl); VIN parsing and validation (from text, from a UDS
//! 0xF190 answer, from an OBD-II mode 09 PID 02 answer); the error type for VIN reading; and a
//! sans-IO VIN query ([`VinQuery`]: one request, answers from one or many ECUs, 0x78, timeout)
//! and a sans-IO tester-present keep-alive scheduler.
//!
//! Does not own: any transport (ISO-TP, DoIP) or timer; callers pass `now` and send the bytes
//! these helpers build. The simulated ECUs (the *server* side of UDS) live in `crate::sim::ecu`.
//!
//! Contracts: every parser takes untrusted bytes and returns a typed error on anything it does
//! not understand; nothing here panics on any input.

use bytes::Bytes;
use std::fmt;
use std::time::{Duration, Instant};

/// First byte of a negative response.
pub const NEGATIVE_RESPONSE_SID: u8 = 0x7F;
/// Added to a request's service id to form its positive response id.
pub const POSITIVE_RESPONSE_OFFSET: u8 = 0x40;
/// Bit 7 of a sub-function byte: suppressPosRspMsgIndicationBit.
pub const SUPPRESS_POSITIVE_RESPONSE: u8 = 0x80;

/// DID of the VIN (vehicleIdentificationNumberDataIdentifier).
pub const DID_VIN: u16 = 0xF190;
/// DID of the vehicle manufacturer spare part number.
pub const DID_SPARE_PART_NUMBER: u16 = 0xF187;
/// DID of the active diagnostic session.
pub const DID_ACTIVE_SESSION: u16 = 0xF186;
/// DID of the system supplier identifier.
pub const DID_SUPPLIER_ID: u16 = 0xF18A;
/// DID of the ECU serial number.
pub const DID_ECU_SERIAL: u16 = 0xF18C;
/// DID of the vehicle manufacturer ECU hardware number.
pub const DID_HARDWARE_NUMBER: u16 = 0xF191;
/// DID of the system supplier ECU software version number.
pub const DID_SOFTWARE_VERSION: u16 = 0xF195;
/// DID of the system name or engine type.
pub const DID_SYSTEM_NAME: u16 = 0xF197;

/// OBD-II service 09 (request vehicle information) PID 02: the VIN.
pub const OBD_INFOTYPE_VIN: u8 = 0x02;

/// UDS and OBD-II service identifiers (request ids).
///
/// A newtype rather than an enum: a response can name any byte, and unknown ids must still
/// print sensibly.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub u8);

impl ServiceId {
    pub const OBD_CURRENT_DATA: ServiceId = ServiceId(0x01);
    pub const OBD_FREEZE_FRAME: ServiceId = ServiceId(0x02);
    pub const OBD_STORED_DTCS: ServiceId = ServiceId(0x03);
    pub const OBD_CLEAR_DTCS: ServiceId = ServiceId(0x04);
    pub const OBD_PENDING_DTCS: ServiceId = ServiceId(0x07);
    pub const OBD_VEHICLE_INFO: ServiceId = ServiceId(0x09);
    pub const OBD_PERMANENT_DTCS: ServiceId = ServiceId(0x0A);
    pub const DIAGNOSTIC_SESSION_CONTROL: ServiceId = ServiceId(0x10);
    pub const ECU_RESET: ServiceId = ServiceId(0x11);
    pub const CLEAR_DIAGNOSTIC_INFORMATION: ServiceId = ServiceId(0x14);
    pub const READ_DTC_INFORMATION: ServiceId = ServiceId(0x19);
    pub const READ_DATA_BY_IDENTIFIER: ServiceId = ServiceId(0x22);
    pub const READ_MEMORY_BY_ADDRESS: ServiceId = ServiceId(0x23);
    pub const READ_SCALING_DATA_BY_IDENTIFIER: ServiceId = ServiceId(0x24);
    pub const SECURITY_ACCESS: ServiceId = ServiceId(0x27);
    pub const COMMUNICATION_CONTROL: ServiceId = ServiceId(0x28);
    pub const AUTHENTICATION: ServiceId = ServiceId(0x29);
    pub const READ_DATA_BY_PERIODIC_IDENTIFIER: ServiceId = ServiceId(0x2A);
    pub const DYNAMICALLY_DEFINE_DATA_IDENTIFIER: ServiceId = ServiceId(0x2C);
    pub const WRITE_DATA_BY_IDENTIFIER: ServiceId = ServiceId(0x2E);
    pub const INPUT_OUTPUT_CONTROL_BY_IDENTIFIER: ServiceId = ServiceId(0x2F);
    pub const ROUTINE_CONTROL: ServiceId = ServiceId(0x31);
    pub const REQUEST_DOWNLOAD: ServiceId = ServiceId(0x34);
    pub const REQUEST_UPLOAD: ServiceId = ServiceId(0x35);
    pub const TRANSFER_DATA: ServiceId = ServiceId(0x36);
    pub const REQUEST_TRANSFER_EXIT: ServiceId = ServiceId(0x37);
    pub const REQUEST_FILE_TRANSFER: ServiceId = ServiceId(0x38);
    pub const WRITE_MEMORY_BY_ADDRESS: ServiceId = ServiceId(0x3D);
    pub const TESTER_PRESENT: ServiceId = ServiceId(0x3E);
    pub const ACCESS_TIMING_PARAMETER: ServiceId = ServiceId(0x83);
    pub const SECURED_DATA_TRANSMISSION: ServiceId = ServiceId(0x84);
    pub const CONTROL_DTC_SETTING: ServiceId = ServiceId(0x85);
    pub const RESPONSE_ON_EVENT: ServiceId = ServiceId(0x86);
    pub const LINK_CONTROL: ServiceId = ServiceId(0x87);

    /// The standard name of the service, or `None` for an id this table does not know.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x01 => "OBD ShowCurrentData",
            0x02 => "OBD ShowFreezeFrameData",
            0x03 => "OBD ShowStoredDTCs",
            0x04 => "OBD ClearDTCs",
            0x05 => "OBD OxygenSensorMonitoring",
            0x06 => "OBD OnBoardMonitoringResults",
            0x07 => "OBD ShowPendingDTCs",
            0x08 => "OBD ControlOnBoardSystem",
            0x09 => "OBD RequestVehicleInformation",
            0x0A => "OBD PermanentDTCs",
            0x10 => "DiagnosticSessionControl",
            0x11 => "ECUReset",
            0x14 => "ClearDiagnosticInformation",
            0x19 => "ReadDTCInformation",
            0x22 => "ReadDataByIdentifier",
            0x23 => "ReadMemoryByAddress",
            0x24 => "ReadScalingDataByIdentifier",
            0x27 => "SecurityAccess",
            0x28 => "CommunicationControl",
            0x29 => "Authentication",
            0x2A => "ReadDataByPeriodicIdentifier",
            0x2C => "DynamicallyDefineDataIdentifier",
            0x2E => "WriteDataByIdentifier",
            0x2F => "InputOutputControlByIdentifier",
            0x31 => "RoutineControl",
            0x34 => "RequestDownload",
            0x35 => "RequestUpload",
            0x36 => "TransferData",
            0x37 => "RequestTransferExit",
            0x38 => "RequestFileTransfer",
            0x3D => "WriteMemoryByAddress",
            0x3E => "TesterPresent",
            0x83 => "AccessTimingParameter",
            0x84 => "SecuredDataTransmission",
            0x85 => "ControlDTCSetting",
            0x86 => "ResponseOnEvent",
            0x87 => "LinkControl",
            _ => return None,
        })
    }

    /// The positive response id (request id + 0x40), `None` for ids that have none.
    pub const fn positive_response(self) -> Option<u8> {
        if self.0 < 0x3F || (self.0 >= 0x80 && self.0 < 0xC0) {
            Some(self.0 + POSITIVE_RESPONSE_OFFSET)
        } else {
            None
        }
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} (0x{:02X})", self.0),
            None => write!(f, "service 0x{:02X}", self.0),
        }
    }
}

impl fmt::Debug for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A negative response code (ISO 14229-1 annex A.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nrc(pub u8);

impl Nrc {
    pub const GENERAL_REJECT: Nrc = Nrc(0x10);
    pub const SERVICE_NOT_SUPPORTED: Nrc = Nrc(0x11);
    pub const SUB_FUNCTION_NOT_SUPPORTED: Nrc = Nrc(0x12);
    pub const INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT: Nrc = Nrc(0x13);
    pub const RESPONSE_TOO_LONG: Nrc = Nrc(0x14);
    pub const BUSY_REPEAT_REQUEST: Nrc = Nrc(0x21);
    pub const CONDITIONS_NOT_CORRECT: Nrc = Nrc(0x22);
    pub const REQUEST_SEQUENCE_ERROR: Nrc = Nrc(0x24);
    pub const NO_RESPONSE_FROM_SUBNET_COMPONENT: Nrc = Nrc(0x25);
    pub const FAILURE_PREVENTS_EXECUTION_OF_REQUESTED_ACTION: Nrc = Nrc(0x26);
    pub const REQUEST_OUT_OF_RANGE: Nrc = Nrc(0x31);
    pub const SECURITY_ACCESS_DENIED: Nrc = Nrc(0x33);
    pub const AUTHENTICATION_REQUIRED: Nrc = Nrc(0x34);
    pub const INVALID_KEY: Nrc = Nrc(0x35);
    pub const EXCEEDED_NUMBER_OF_ATTEMPTS: Nrc = Nrc(0x36);
    pub const REQUIRED_TIME_DELAY_NOT_EXPIRED: Nrc = Nrc(0x37);
    pub const UPLOAD_DOWNLOAD_NOT_ACCEPTED: Nrc = Nrc(0x70);
    pub const TRANSFER_DATA_SUSPENDED: Nrc = Nrc(0x71);
    pub const GENERAL_PROGRAMMING_FAILURE: Nrc = Nrc(0x72);
    pub const WRONG_BLOCK_SEQUENCE_COUNTER: Nrc = Nrc(0x73);
    pub const RESPONSE_PENDING: Nrc = Nrc(0x78);
    pub const SUB_FUNCTION_NOT_SUPPORTED_IN_ACTIVE_SESSION: Nrc = Nrc(0x7E);
    pub const SERVICE_NOT_SUPPORTED_IN_ACTIVE_SESSION: Nrc = Nrc(0x7F);

    /// The standard name of the code (ISO 14229-1:2020 annex A.1), including the names of the
    /// reserved ranges.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0x00 => "positiveResponse",
            0x10 => "generalReject",
            0x11 => "serviceNotSupported",
            0x12 => "subFunctionNotSupported",
            0x13 => "incorrectMessageLengthOrInvalidFormat",
            0x14 => "responseTooLong",
            0x21 => "busyRepeatRequest",
            0x22 => "conditionsNotCorrect",
            0x24 => "requestSequenceError",
            0x25 => "noResponseFromSubnetComponent",
            0x26 => "failurePreventsExecutionOfRequestedAction",
            0x31 => "requestOutOfRange",
            0x33 => "securityAccessDenied",
            0x34 => "authenticationRequired",
            0x35 => "invalidKey",
            0x36 => "exceedNumberOfAttempts",
            0x37 => "requiredTimeDelayNotExpired",
            0x38..=0x4F => "reservedByExtendedDataLinkSecurityDocument",
            0x50 => "certificateVerificationFailedInvalidTimePeriod",
            0x51 => "certificateVerificationFailedInvalidSignature",
            0x52 => "certificateVerificationFailedInvalidChainOfTrust",
            0x53 => "certificateVerificationFailedInvalidType",
            0x54 => "certificateVerificationFailedInvalidFormat",
            0x55 => "certificateVerificationFailedInvalidContent",
            0x56 => "certificateVerificationFailedInvalidScope",
            0x57 => "certificateVerificationFailedInvalidCertificate",
            0x58 => "ownershipVerificationFailed",
            0x59 => "challengeCalculationFailed",
            0x5A => "settingAccessRightsFailed",
            0x5B => "sessionKeyCreationDerivationFailed",
            0x5C => "configurationDataUsageFailed",
            0x5D => "deAuthenticationFailed",
            0x70 => "uploadDownloadNotAccepted",
            0x71 => "transferDataSuspended",
            0x72 => "generalProgrammingFailure",
            0x73 => "wrongBlockSequenceCounter",
            0x78 => "requestCorrectlyReceivedResponsePending",
            0x7E => "subFunctionNotSupportedInActiveSession",
            0x7F => "serviceNotSupportedInActiveSession",
            0x81 => "rpmTooHigh",
            0x82 => "rpmTooLow",
            0x83 => "engineIsRunning",
            0x84 => "engineIsNotRunning",
            0x85 => "engineRunTimeTooLow",
            0x86 => "temperatureTooHigh",
            0x87 => "temperatureTooLow",
            0x88 => "vehicleSpeedTooHigh",
            0x89 => "vehicleSpeedTooLow",
            0x8A => "throttlePedalTooHigh",
            0x8B => "throttlePedalTooLow",
            0x8C => "transmissionRangeNotInNeutral",
            0x8D => "transmissionRangeNotInGear",
            0x8F => "brakeSwitchesNotClosed",
            0x90 => "shifterLeverNotInPark",
            0x91 => "torqueConverterClutchLocked",
            0x92 => "voltageTooHigh",
            0x93 => "voltageTooLow",
            0x94 => "resourceTemporarilyNotAvailable",
            0x95..=0xEF => "reservedForSpecificConditionsNotCorrect",
            0xF0..=0xFE => "vehicleManufacturerSpecificConditionsNotCorrect",
            _ => "ISOSAEReserved",
        }
    }
}

impl fmt::Display for Nrc {
    /// `NRC 0x31 requestOutOfRange`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NRC 0x{:02X} {}", self.0, self.name())
    }
}

impl fmt::Debug for Nrc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Diagnostic sessions (DiagnosticSessionControl sub-functions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Session {
    /// 0x01: the session an ECU starts in; no keep-alive needed.
    Default,
    /// 0x02: flashing.
    Programming,
    /// 0x03: extended diagnostics.
    Extended,
    /// 0x04: safety system diagnostics.
    SafetySystem,
    /// Any other (manufacturer or supplier specific) session byte.
    Other(u8),
}

impl Session {
    pub const fn from_byte(b: u8) -> Session {
        match b & !SUPPRESS_POSITIVE_RESPONSE {
            0x01 => Session::Default,
            0x02 => Session::Programming,
            0x03 => Session::Extended,
            0x04 => Session::SafetySystem,
            other => Session::Other(other),
        }
    }

    pub const fn to_byte(self) -> u8 {
        match self {
            Session::Default => 0x01,
            Session::Programming => 0x02,
            Session::Extended => 0x03,
            Session::SafetySystem => 0x04,
            Session::Other(b) => b,
        }
    }
}

/// A parsed diagnostic response (the `Repr` of one response PDU), borrowing the PDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response<'a> {
    /// Positive response to `sid`; `data` is everything after the response id.
    Positive { sid: ServiceId, data: &'a [u8] },
    /// Negative response to `sid` with its code (never 0x78: that is [`Response::Pending`]).
    Negative { sid: ServiceId, nrc: Nrc },
    /// 7F sid 78: the request was received, the final response follows later.
    Pending { sid: ServiceId },
}

/// Why a response PDU could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MalformedResponse {
    #[error("empty diagnostic response")]
    Empty,
    #[error("negative response of {len} bytes (expected 3: 7F, service id, NRC)")]
    NegativeLength { len: usize },
    #[error("response id 0x{0:02X} is neither a positive response id nor 0x7F")]
    UnknownResponseId(u8),
}

impl<'a> Response<'a> {
    /// Parse one response PDU.
    pub fn parse(pdu: &'a [u8]) -> Result<Response<'a>, MalformedResponse> {
        match pdu {
            [] => Err(MalformedResponse::Empty),
            [NEGATIVE_RESPONSE_SID, sid, code] => {
                let sid = ServiceId(*sid);
                if *code == Nrc::RESPONSE_PENDING.0 {
                    Ok(Response::Pending { sid })
                } else {
                    Ok(Response::Negative {
                        sid,
                        nrc: Nrc(*code),
                    })
                }
            }
            [NEGATIVE_RESPONSE_SID, ..] => {
                Err(MalformedResponse::NegativeLength { len: pdu.len() })
            }
            [rsid, data @ ..] => {
                let is_positive = (0x40..0x80).contains(rsid) || (0xC0..=0xFF).contains(rsid);
                if is_positive {
                    Ok(Response::Positive {
                        sid: ServiceId(rsid - POSITIVE_RESPONSE_OFFSET),
                        data,
                    })
                } else {
                    Err(MalformedResponse::UnknownResponseId(*rsid))
                }
            }
        }
    }

    /// The service this response answers.
    pub fn sid(&self) -> ServiceId {
        match *self {
            Response::Positive { sid, .. }
            | Response::Negative { sid, .. }
            | Response::Pending { sid } => sid,
        }
    }

    /// Bytes [`Response::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        match self {
            Response::Positive { data, .. } => 1 + data.len(),
            Response::Negative { .. } | Response::Pending { .. } => 3,
        }
    }

    /// Write the response into `buf`, which must be at least [`Response::buffer_len`] long;
    /// returns the bytes written, or `None` when `buf` is too short.
    pub fn emit(&self, buf: &mut [u8]) -> Option<usize> {
        let len = self.buffer_len();
        let out = buf.get_mut(..len)?;
        match *self {
            Response::Positive { sid, data } => {
                let (head, tail) = out.split_first_mut()?;
                *head = sid.0.wrapping_add(POSITIVE_RESPONSE_OFFSET);
                tail.copy_from_slice(data);
            }
            Response::Negative { sid, nrc } => {
                out.copy_from_slice(&[NEGATIVE_RESPONSE_SID, sid.0, nrc.0])
            }
            Response::Pending { sid } => {
                out.copy_from_slice(&[NEGATIVE_RESPONSE_SID, sid.0, Nrc::RESPONSE_PENDING.0])
            }
        }
        Some(len)
    }
}

/// A negative response PDU: `7F sid nrc`.
pub const fn negative_response(sid: u8, nrc: Nrc) -> [u8; 3] {
    [NEGATIVE_RESPONSE_SID, sid, nrc.0]
}

/// ReadDataByIdentifier for one or more DIDs: `22 hi lo [hi lo ...]`.
pub fn read_data_by_identifier(dids: &[u16]) -> Bytes {
    let mut out = Vec::with_capacity(1 + 2 * dids.len());
    out.push(ServiceId::READ_DATA_BY_IDENTIFIER.0);
    for did in dids {
        out.extend_from_slice(&did.to_be_bytes());
    }
    Bytes::from(out)
}

/// ReadDataByIdentifier 0xF190 (VIN): `22 F1 90`.
pub const READ_VIN_REQUEST: [u8; 3] = [0x22, 0xF1, 0x90];
/// OBD-II service 09 PID 02 (VIN): `09 02`.
pub const OBD_VIN_REQUEST: [u8; 2] = [0x09, OBD_INFOTYPE_VIN];

/// TesterPresent: `3E 00`, or `3E 80` with the suppress-positive-response bit.
pub const fn tester_present(suppress_positive_response: bool) -> [u8; 2] {
    [
        ServiceId::TESTER_PRESENT.0,
        if suppress_positive_response {
            SUPPRESS_POSITIVE_RESPONSE
        } else {
            0x00
        },
    ]
}

/// DiagnosticSessionControl: `10 session`, with bit 7 set when the positive response is to be
/// suppressed.
pub const fn diagnostic_session_control(
    session: Session,
    suppress_positive_response: bool,
) -> [u8; 2] {
    let sub = session.to_byte() & !SUPPRESS_POSITIVE_RESPONSE;
    [
        ServiceId::DIAGNOSTIC_SESSION_CONTROL.0,
        if suppress_positive_response {
            sub | SUPPRESS_POSITIVE_RESPONSE
        } else {
            sub
        },
    ]
}

/// Timing parameters an ECU announces in its DiagnosticSessionControl response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionTiming {
    /// P2server_max: time to the first response.
    pub p2: Duration,
    /// P2*server_max: time to the next response after a 0x78 response-pending.
    pub p2_star: Duration,
}

impl SessionTiming {
    /// Parse the 4-byte session parameter record of a DiagnosticSessionControl positive
    /// response (`data` starts after the echoed sub-function): P2 in 1 ms, P2* in 10 ms units.
    pub fn parse(record: &[u8]) -> Option<SessionTiming> {
        match record {
            [a, b, c, d, ..] => Some(SessionTiming {
                p2: Duration::from_millis(u64::from(u16::from_be_bytes([*a, *b]))),
                p2_star: Duration::from_millis(10 * u64::from(u16::from_be_bytes([*c, *d]))),
            }),
            _ => None,
        }
    }

    /// The 4-byte record; values saturate at the field maxima (65535 ms, 655350 ms).
    pub fn to_bytes(&self) -> [u8; 4] {
        let p2 = u16::try_from(self.p2.as_millis()).unwrap_or(u16::MAX);
        let p2s = u16::try_from(self.p2_star.as_millis() / 10).unwrap_or(u16::MAX);
        let [a, b] = p2.to_be_bytes();
        let [c, d] = p2s.to_be_bytes();
        [a, b, c, d]
    }
}

// ---------------------------------------------------------------------------------------------
// VIN

/// A validated 17-character vehicle identification number (ISO 3779).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Vin([u8; 17]);

/// Result of the check-digit test (position 9, as used in North America).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckDigit {
    /// Position 9 matches the computed check digit.
    Valid,
    /// Position 9 differs; outside North America this is common and only a warning.
    Mismatch { expected: char, found: char },
}

/// Why a VIN was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VinError {
    #[error("VIN {vin:?} has {len} characters; a VIN has exactly 17")]
    Length { vin: String, len: usize },
    #[error(
        "VIN {vin:?} has {ch:?} at position {position}; a VIN uses only 0-9 and A-Z without I, O and Q"
    )]
    InvalidChar {
        vin: String,
        ch: char,
        position: usize,
    },
    #[error(
        "VIN {vin} is a North American VIN (first character 1-5) but its check digit (position 9) is {found:?}, expected {expected:?}"
    )]
    CheckDigit {
        vin: String,
        expected: char,
        found: char,
    },
}

const VIN_WEIGHTS: [u32; 17] = [8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2];

/// The numeric value of a VIN character in the check-digit computation.
fn vin_char_value(c: u8) -> u32 {
    match c {
        b'0'..=b'9' => u32::from(c - b'0'),
        b'A'..=b'H' => u32::from(c - b'A') + 1,
        b'J'..=b'N' => u32::from(c - b'J') + 1,
        b'P' => 7,
        b'R' => 9,
        b'S'..=b'Z' => u32::from(c - b'S') + 2,
        _ => 0,
    }
}

const fn is_vin_char(c: u8) -> bool {
    matches!(c, b'0'..=b'9' | b'A'..=b'H' | b'J'..=b'N' | b'P' | b'R'..=b'Z')
}

impl Vin {
    /// Validate a VIN: exactly 17 characters from 0-9 and A-Z without I, O, Q (lower case is
    /// rejected, as the standard has none). A check-digit mismatch is an error for North
    /// American VINs (first character 1-5, where the digit is mandatory) and only reported by
    /// [`Vin::check_digit`] for others.
    pub fn parse(text: &str) -> Result<Vin, VinError> {
        let vin = Self::parse_chars(text.as_bytes())?;
        if let (true, CheckDigit::Mismatch { expected, found }) =
            (vin.is_north_american(), vin.check_digit())
        {
            return Err(VinError::CheckDigit {
                vin: vin.to_string(),
                expected,
                found,
            });
        }
        Ok(vin)
    }

    /// A VIN from a constant, checked at compile time when used in a `const` (an invalid
    /// character fails the build); at run time, prefer [`Vin::parse`].
    pub const fn from_const(bytes: &[u8; 17]) -> Vin {
        let mut i = 0;
        while i < 17 {
            assert!(is_vin_char(bytes[i]), "invalid VIN character in constant");
            i += 1;
        }
        Vin(*bytes)
    }

    /// Validate length and characters only (no check-digit rule).
    pub fn parse_chars(bytes: &[u8]) -> Result<Vin, VinError> {
        let shown = || String::from_utf8_lossy(bytes).into_owned();
        let arr: [u8; 17] = bytes.try_into().map_err(|_| VinError::Length {
            vin: shown(),
            len: String::from_utf8_lossy(bytes).chars().count(),
        })?;
        if let Some((i, &c)) = arr.iter().enumerate().find(|(_, c)| !is_vin_char(**c)) {
            return Err(VinError::InvalidChar {
                vin: shown(),
                ch: char::from(c),
                position: i + 1,
            });
        }
        Ok(Vin(arr))
    }

    /// The computed check digit for position 9.
    pub fn expected_check_digit(&self) -> char {
        let sum: u32 = self
            .0
            .iter()
            .zip(VIN_WEIGHTS)
            .map(|(c, w)| vin_char_value(*c) * w)
            .sum();
        match sum % 11 {
            10 => 'X',
            d => char::from(b'0' + d as u8),
        }
    }

    /// Whether position 9 holds the computed check digit.
    pub fn check_digit(&self) -> CheckDigit {
        let expected = self.expected_check_digit();
        let found = char::from(self.0[8]);
        if expected == found {
            CheckDigit::Valid
        } else {
            CheckDigit::Mismatch { expected, found }
        }
    }

    /// A human-readable warning for a check-digit mismatch (for non-North-American VINs,
    /// which [`Vin::parse`] accepts anyway).
    pub fn warning(&self) -> Option<String> {
        match self.check_digit() {
            CheckDigit::Valid => None,
            CheckDigit::Mismatch { expected, found } => Some(format!(
                "VIN {self}: check digit (position 9) is {found:?}, computed {expected:?}; \
                 usual outside North America, accepted"
            )),
        }
    }

    /// World manufacturer identifier regions 1-5 are North America, where the check digit is
    /// mandatory.
    pub fn is_north_american(&self) -> bool {
        matches!(self.0[0], b'1'..=b'5')
    }

    /// The 17 ASCII bytes.
    pub fn as_bytes(&self) -> &[u8; 17] {
        &self.0
    }

    /// The VIN as text.
    pub fn as_str(&self) -> &str {
        // Invariant: only ASCII characters pass `parse_chars`.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Display for Vin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Vin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Vin({})", self.as_str())
    }
}

impl std::str::FromStr for Vin {
    type Err = VinError;
    fn from_str(s: &str) -> Result<Vin, VinError> {
        Vin::parse(s)
    }
}

/// How the VIN was requested, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VinSource {
    /// UDS ReadDataByIdentifier 0xF190.
    UdsF190,
    /// OBD-II service 09 PID 02.
    ObdMode09,
    /// A DoIP vehicle announcement / identification response.
    DoipAnnouncement,
}

impl fmt::Display for VinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VinSource::UdsF190 => "UDS ReadDataByIdentifier 0xF190",
            VinSource::ObdMode09 => "OBD-II service 09 PID 02",
            VinSource::DoipAnnouncement => "DoIP vehicle announcement",
        })
    }
}

/// Errors reading the VIN from a vehicle.
#[derive(Debug, thiserror::Error)]
pub enum VinReadError {
    /// Nobody answered within the timeout.
    #[error(
        "no answer to {source_kind} from {target} within {timeout:?}: check the connection to the vehicle, the ignition, and the addresses"
    )]
    NoAnswer {
        source_kind: VinSource,
        /// Where the request went (e.g. "CAN 0x7DF", "DoIP 0x1000 at 192.0.2.7").
        target: String,
        timeout: Duration,
    },
    /// The ECU refused the request.
    #[error("{source_kind}: negative response to {sid}: {nrc}")]
    Negative {
        source_kind: VinSource,
        sid: ServiceId,
        nrc: Nrc,
    },
    /// The ECU answered something that is not a diagnostic response at all.
    #[error("{source_kind}: malformed response {bytes}: {reason}")]
    MalformedResponse {
        source_kind: VinSource,
        bytes: HexBytes,
        reason: MalformedResponse,
    },
    /// The ECU answered positively, but not to the request we sent, or with a wrong layout.
    #[error("{source_kind}: unexpected response {bytes}: {reason}")]
    Unexpected {
        source_kind: VinSource,
        bytes: HexBytes,
        reason: &'static str,
    },
    /// The response carries a VIN that fails validation.
    #[error("{source_kind}: malformed VIN: {error}")]
    MalformedVin {
        source_kind: VinSource,
        #[source]
        error: VinError,
    },
}

/// Bytes printed as space-separated hex (at most 64 bytes, then an ellipsis).
#[derive(Clone, PartialEq, Eq)]
pub struct HexBytes(pub Bytes);

impl fmt::Display for HexBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 64;
        for (i, b) in self.0.iter().take(SHOWN).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02X}")?;
        }
        if self.0.len() > SHOWN {
            write!(f, " … ({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for HexBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Check the response is a final positive answer to `sid` and return its data.
///
/// A 0x78 response-pending here is reported as [`VinReadError::Unexpected`]: callers handle
/// pending responses (by waiting P2*) before they call this.
fn positive_data(
    pdu: &[u8],
    sid: ServiceId,
    source_kind: VinSource,
) -> Result<&[u8], VinReadError> {
    let hex = || HexBytes(Bytes::copy_from_slice(pdu));
    match Response::parse(pdu) {
        Err(reason) => Err(VinReadError::MalformedResponse {
            source_kind,
            bytes: hex(),
            reason,
        }),
        Ok(Response::Negative { sid: got, nrc }) if got == sid => Err(VinReadError::Negative {
            source_kind,
            sid,
            nrc,
        }),
        Ok(Response::Positive { sid: got, data }) if got == sid => Ok(data),
        Ok(Response::Pending { .. }) => Err(VinReadError::Unexpected {
            source_kind,
            bytes: hex(),
            reason: "response pending (0x78) where a final response was expected",
        }),
        Ok(_) => Err(VinReadError::Unexpected {
            source_kind,
            bytes: hex(),
            reason: "response to another service",
        }),
    }
}

/// Parse the answer to ReadDataByIdentifier 0xF190: `62 F1 90 <17 ASCII>`.
///
/// Trailing padding (0x00, 0xFF, spaces) after the 17 characters is tolerated.
pub fn parse_vin_from_rdbi(pdu: &[u8]) -> Result<Vin, VinReadError> {
    let source_kind = VinSource::UdsF190;
    let data = positive_data(pdu, ServiceId::READ_DATA_BY_IDENTIFIER, source_kind)?;
    let [0xF1, 0x90, vin @ ..] = data else {
        return Err(VinReadError::Unexpected {
            source_kind,
            bytes: HexBytes(Bytes::copy_from_slice(pdu)),
            reason: "positive response does not start with DID 0xF190",
        });
    };
    let vin = strip_padding(vin);
    Vin::parse(vin_text(vin).as_str())
        .map_err(|error| VinReadError::MalformedVin { source_kind, error })
}

/// Parse the answer to OBD-II service 09 PID 02: `49 02 <count> <17 ASCII>`.
///
/// Handles the layouts seen in the field: with the number-of-data-items byte (ISO 15765-4,
/// normally 0x01), without it, and with padding (0x00, 0xFF or spaces) before or after the
/// 17 characters.
pub fn parse_vin_from_obd(pdu: &[u8]) -> Result<Vin, VinReadError> {
    let source_kind = VinSource::ObdMode09;
    let data = positive_data(pdu, ServiceId::OBD_VEHICLE_INFO, source_kind)?;
    let [OBD_INFOTYPE_VIN, rest @ ..] = data else {
        return Err(VinReadError::Unexpected {
            source_kind,
            bytes: HexBytes(Bytes::copy_from_slice(pdu)),
            reason: "positive response is not for PID 02 (VIN)",
        });
    };
    // The item count byte is 0x01 (one VIN) when present; a bare 17-character answer has none.
    let body = match rest {
        [count, body @ ..] if rest.len() != 17 && *count <= 0x05 => body,
        _ => rest,
    };
    let vin = strip_padding(body);
    Vin::parse(vin_text(vin).as_str())
        .map_err(|error| VinReadError::MalformedVin { source_kind, error })
}

fn is_padding(b: u8) -> bool {
    matches!(b, 0x00 | 0xFF | b' ')
}

fn strip_padding(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if is_padding(*first) {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if is_padding(*last) {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// Text for validation and error messages; non-ASCII bytes show as U+FFFD and fail validation.
fn vin_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------------------------
// VIN query

/// Sans-IO VIN read over any transport: one request, then any number of answers (a functional
/// request reaches several ECUs), 0x78 response-pending handling and an overall timeout.
///
/// Send [`VinQuery::request`] once; feed every response PDU to [`VinQuery::on_response`] and
/// call [`VinQuery::poll`] at [`VinQuery::poll_at`]. Each returns `Some(result)` exactly once,
/// when the query is over: the first valid VIN wins. A physical query ends at its first answer
/// (a refusal or a malformed VIN is the result); a functional query keeps listening to the
/// other ECUs and reports the first refusal only if no ECU gives a VIN before the deadline.
/// Responses to other services are ignored.
#[derive(Debug)]
pub struct VinQuery {
    source: VinSource,
    /// Where the request went, for the "no answer" message.
    target: String,
    functional: bool,
    timeout: Duration,
    /// When the query gives up; extended by P2* after each 0x78.
    deadline: Instant,
    p2_star: Duration,
    /// The first refusal or malformed answer of a functional query.
    first_error: Option<VinReadError>,
    finished: bool,
}

impl VinQuery {
    /// P2*server default: how long one 0x78 extends the wait.
    pub const DEFAULT_P2_STAR: Duration = Duration::from_secs(5);

    /// Read the VIN with UDS ReadDataByIdentifier 0xF190.
    pub fn uds(
        target: impl Into<String>,
        functional: bool,
        timeout: Duration,
        now: Instant,
    ) -> VinQuery {
        Self::new(VinSource::UdsF190, target.into(), functional, timeout, now)
    }

    /// Read the VIN with OBD-II service 09 PID 02.
    pub fn obd(
        target: impl Into<String>,
        functional: bool,
        timeout: Duration,
        now: Instant,
    ) -> VinQuery {
        Self::new(
            VinSource::ObdMode09,
            target.into(),
            functional,
            timeout,
            now,
        )
    }

    fn new(
        source: VinSource,
        target: String,
        functional: bool,
        timeout: Duration,
        now: Instant,
    ) -> VinQuery {
        VinQuery {
            source,
            target,
            functional,
            timeout,
            deadline: now + timeout,
            p2_star: Self::DEFAULT_P2_STAR,
            first_error: None,
            finished: false,
        }
    }

    /// Use the P2* the ECU announced (see [`SessionTiming`]).
    pub fn with_p2_star(mut self, p2_star: Duration) -> VinQuery {
        self.p2_star = p2_star;
        self
    }

    /// The request PDU to send.
    pub fn request(&self) -> &'static [u8] {
        match self.source {
            VinSource::ObdMode09 => &OBD_VIN_REQUEST,
            VinSource::UdsF190 | VinSource::DoipAnnouncement => &READ_VIN_REQUEST,
        }
    }

    fn sid(&self) -> ServiceId {
        match self.source {
            VinSource::ObdMode09 => ServiceId::OBD_VEHICLE_INFO,
            VinSource::UdsF190 | VinSource::DoipAnnouncement => ServiceId::READ_DATA_BY_IDENTIFIER,
        }
    }

    /// Whether a result was returned already.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// When [`VinQuery::poll`] must run (the deadline), until the query is over.
    pub fn poll_at(&self) -> Option<Instant> {
        (!self.finished).then_some(self.deadline)
    }

    /// One response PDU from the vehicle.
    pub fn on_response(&mut self, pdu: &[u8], now: Instant) -> Option<Result<Vin, VinReadError>> {
        if self.finished {
            return None;
        }
        match Response::parse(pdu) {
            // Not an answer to our request (a stray or late response to something else).
            Ok(r) if r.sid() != self.sid() => return None,
            Ok(Response::Pending { .. }) => {
                self.deadline = self.deadline.max(now + self.p2_star);
                return None;
            }
            _ => {}
        }
        let result = match self.source {
            VinSource::ObdMode09 => parse_vin_from_obd(pdu),
            VinSource::UdsF190 | VinSource::DoipAnnouncement => parse_vin_from_rdbi(pdu),
        };
        match result {
            Err(e) if self.functional => {
                self.first_error.get_or_insert(e);
                None
            }
            result => {
                self.finished = true;
                Some(result)
            }
        }
    }

    /// Advance to `now`: at the deadline, the query ends with the first refusal of a
    /// functional query, or with "no answer".
    pub fn poll(&mut self, now: Instant) -> Option<Result<Vin, VinReadError>> {
        if self.finished || now < self.deadline {
            return None;
        }
        self.finished = true;
        Some(Err(self.first_error.take().unwrap_or_else(|| {
            VinReadError::NoAnswer {
                source_kind: self.source,
                target: self.target.clone(),
                timeout: self.timeout,
            }
        })))
    }
}

// ---------------------------------------------------------------------------------------------
// Tester-present keep-alive

/// Sans-IO scheduler for the tester-present keep-alive (`3E 80`).
///
/// Runs while the ECU is in a non-default session, so that its S3 timer (5 s by default)
/// never drops it back to the default session. Feed it the session changes (or every
/// response, through [`KeepAlive::observe_response`]) and every request the tester sends
/// (any request restarts the ECU's S3 timer, so the keep-alive can wait); call
/// [`KeepAlive::poll`] at [`KeepAlive::poll_at`].
#[derive(Clone, Debug)]
pub struct KeepAlive {
    /// Time between keep-alives when the tester sends nothing else.
    interval: Duration,
    /// When the next `3E 80` is due; `None` while in the default session.
    next: Option<Instant>,
}

impl KeepAlive {
    /// 2 s: well inside the 5 s S3server default, with room for a lost frame.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

    pub fn new(interval: Duration) -> KeepAlive {
        KeepAlive {
            interval,
            next: None,
        }
    }

    /// Whether keep-alives are being sent.
    pub fn is_active(&self) -> bool {
        self.next.is_some()
    }

    /// The ECU entered `session`: start (non-default) or stop (default) the keep-alive.
    pub fn session_changed(&mut self, session: Session, now: Instant) {
        self.next = match session {
            Session::Default => None,
            _ => Some(now + self.interval),
        };
    }

    /// Stop sending (e.g. the connection to the ECU closed).
    pub fn stop(&mut self) {
        self.next = None;
    }

    /// The tester sent a request: the ECU's S3 timer restarted, so push the keep-alive back.
    pub fn request_sent(&mut self, now: Instant) {
        if self.next.is_some() {
            self.next = Some(now + self.interval);
        }
    }

    /// Follow session changes from the responses the tester receives: a positive
    /// DiagnosticSessionControl response switches the keep-alive on or off.
    pub fn observe_response(&mut self, response: &Response<'_>, now: Instant) {
        if let Response::Positive {
            sid,
            data: [session, ..],
        } = response
            && *sid == ServiceId::DIAGNOSTIC_SESSION_CONTROL
        {
            self.session_changed(Session::from_byte(*session), now);
        }
    }

    /// When [`KeepAlive::poll`] next has something to send.
    pub fn poll_at(&self) -> Option<Instant> {
        self.next
    }

    /// The request to send now, if one is due (always `3E 80`); schedules the next one.
    pub fn poll(&mut self, now: Instant) -> Option<[u8; 2]> {
        match self.next {
            Some(due) if now >= due => {
                self.next = Some(now + self.interval);
                Some(tester_present(true))
            }
            _ => None,
        }
    }
}

impl Default for KeepAlive {
    fn default() -> Self {
        KeepAlive::new(KeepAlive::DEFAULT_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD_NA: &str = "1HGCM82633A004352";

    #[test]
    fn nrc_names_and_display() {
        assert_eq!(Nrc(0x31).to_string(), "NRC 0x31 requestOutOfRange");
        assert_eq!(Nrc::SECURITY_ACCESS_DENIED.name(), "securityAccessDenied");
        assert_eq!(Nrc(0x78).name(), "requestCorrectlyReceivedResponsePending");
        assert_eq!(Nrc(0x7F).name(), "serviceNotSupportedInActiveSession");
        assert_eq!(Nrc(0x73).name(), "wrongBlockSequenceCounter");
        assert_eq!(
            Nrc(0x40).name(),
            "reservedByExtendedDataLinkSecurityDocument"
        );
        assert_eq!(Nrc(0xA0).name(), "reservedForSpecificConditionsNotCorrect");
        assert_eq!(
            Nrc(0xF3).name(),
            "vehicleManufacturerSpecificConditionsNotCorrect"
        );
        assert_eq!(Nrc(0x01).name(), "ISOSAEReserved");
        assert_eq!(Nrc(0xFF).name(), "ISOSAEReserved");
    }

    #[test]
    fn every_listed_nrc_has_its_name() {
        let table: &[(u8, &str)] = &[
            (0x10, "generalReject"),
            (0x11, "serviceNotSupported"),
            (0x12, "subFunctionNotSupported"),
            (0x13, "incorrectMessageLengthOrInvalidFormat"),
            (0x14, "responseTooLong"),
            (0x21, "busyRepeatRequest"),
            (0x22, "conditionsNotCorrect"),
            (0x24, "requestSequenceError"),
            (0x25, "noResponseFromSubnetComponent"),
            (0x26, "failurePreventsExecutionOfRequestedAction"),
            (0x31, "requestOutOfRange"),
            (0x33, "securityAccessDenied"),
            (0x34, "authenticationRequired"),
            (0x35, "invalidKey"),
            (0x36, "exceedNumberOfAttempts"),
            (0x37, "requiredTimeDelayNotExpired"),
            (0x70, "uploadDownloadNotAccepted"),
            (0x71, "transferDataSuspended"),
            (0x72, "generalProgrammingFailure"),
            (0x73, "wrongBlockSequenceCounter"),
            (0x7E, "subFunctionNotSupportedInActiveSession"),
            (0x81, "rpmTooHigh"),
            (0x93, "voltageTooLow"),
            (0x94, "resourceTemporarilyNotAvailable"),
        ];
        for (code, name) in table {
            assert_eq!(Nrc(*code).name(), *name, "NRC 0x{code:02X}");
        }
    }

    #[test]
    fn service_names() {
        assert_eq!(ServiceId(0x22).to_string(), "ReadDataByIdentifier (0x22)");
        assert_eq!(
            ServiceId(0x09).to_string(),
            "OBD RequestVehicleInformation (0x09)"
        );
        assert_eq!(ServiceId(0x55).to_string(), "service 0x55");
        assert_eq!(ServiceId::TESTER_PRESENT.positive_response(), Some(0x7E));
        assert_eq!(
            ServiceId::CONTROL_DTC_SETTING.positive_response(),
            Some(0xC5)
        );
        assert_eq!(ServiceId(0x50).positive_response(), None);
    }

    #[test]
    fn parse_responses() {
        assert_eq!(
            Response::parse(&[0x62, 0xF1, 0x90, 0x41]),
            Ok(Response::Positive {
                sid: ServiceId(0x22),
                data: &[0xF1, 0x90, 0x41]
            })
        );
        assert_eq!(
            Response::parse(&[0x7F, 0x22, 0x31]),
            Ok(Response::Negative {
                sid: ServiceId(0x22),
                nrc: Nrc::REQUEST_OUT_OF_RANGE
            })
        );
        assert_eq!(
            Response::parse(&[0x7F, 0x31, 0x78]),
            Ok(Response::Pending {
                sid: ServiceId(0x31)
            })
        );
        assert_eq!(
            Response::parse(&[0x7E]),
            Ok(Response::Positive {
                sid: ServiceId(0x3E),
                data: &[]
            })
        );
        assert_eq!(
            Response::parse(&[0xC5, 0x02]).map(|r| r.sid()),
            Ok(ServiceId(0x85))
        );
        assert_eq!(Response::parse(&[]), Err(MalformedResponse::Empty));
        assert_eq!(
            Response::parse(&[0x7F, 0x22]),
            Err(MalformedResponse::NegativeLength { len: 2 })
        );
        assert_eq!(
            Response::parse(&[0x7F, 0x22, 0x31, 0x00]),
            Err(MalformedResponse::NegativeLength { len: 4 })
        );
        assert_eq!(
            Response::parse(&[0x22, 0xF1]),
            Err(MalformedResponse::UnknownResponseId(0x22))
        );
        assert_eq!(
            Response::parse(&[0x90]),
            Err(MalformedResponse::UnknownResponseId(0x90))
        );
    }

    #[test]
    fn emit_round_trips_golden() {
        let cases: &[&[u8]] = &[
            &[0x62, 0xF1, 0x90, 0x41],
            &[0x7F, 0x27, 0x35],
            &[0x7F, 0x36, 0x78],
            &[0x7E],
        ];
        for pdu in cases {
            let r = Response::parse(pdu).expect("golden parses");
            let mut buf = [0u8; 8];
            let n = r.emit(&mut buf).expect("fits");
            assert_eq!(n, r.buffer_len());
            assert_eq!(&buf[..n], *pdu);
        }
        let r = Response::parse(&[0x62, 0xF1, 0x90, 0x41]).expect("parses");
        assert_eq!(r.emit(&mut [0u8; 3]), None);
    }

    #[test]
    fn request_builders() {
        assert_eq!(&read_data_by_identifier(&[DID_VIN])[..], &READ_VIN_REQUEST);
        assert_eq!(
            &read_data_by_identifier(&[0xF187, 0xF195])[..],
            &[0x22, 0xF1, 0x87, 0xF1, 0x95]
        );
        assert_eq!(OBD_VIN_REQUEST, [0x09, 0x02]);
        assert_eq!(tester_present(true), [0x3E, 0x80]);
        assert_eq!(tester_present(false), [0x3E, 0x00]);
        assert_eq!(
            diagnostic_session_control(Session::Extended, false),
            [0x10, 0x03]
        );
        assert_eq!(
            diagnostic_session_control(Session::Programming, true),
            [0x10, 0x82]
        );
        assert_eq!(
            negative_response(0x27, Nrc::INVALID_KEY),
            [0x7F, 0x27, 0x35]
        );
    }

    #[test]
    fn session_timing_round_trip() {
        let t = SessionTiming::parse(&[0x00, 0x32, 0x01, 0xF4]).expect("4 bytes");
        assert_eq!(t.p2, Duration::from_millis(50));
        assert_eq!(t.p2_star, Duration::from_millis(5000));
        assert_eq!(t.to_bytes(), [0x00, 0x32, 0x01, 0xF4]);
        assert_eq!(SessionTiming::parse(&[0x00, 0x32, 0x01]), None);
    }

    #[test]
    fn vin_good_and_check_digit() {
        let vin = Vin::parse(GOOD_NA).expect("valid NA VIN");
        assert_eq!(vin.as_str(), GOOD_NA);
        assert_eq!(vin.check_digit(), CheckDigit::Valid);
        assert!(vin.warning().is_none());
        assert!(vin.is_north_american());
        // Same VIN with a wrong check digit: error in North America ...
        let err = Vin::parse("1HGCM82643A004352").expect_err("bad check digit");
        assert_eq!(
            err,
            VinError::CheckDigit {
                vin: "1HGCM82643A004352".into(),
                expected: '3',
                found: '4'
            }
        );
        assert!(err.to_string().contains("check digit"));
        // ... only a warning elsewhere (European VINs often carry a 'Z' there).
        let eu = Vin::parse("WVWZZZ1KZ6W000001").expect("EU VIN accepted");
        assert!(matches!(
            eu.check_digit(),
            CheckDigit::Mismatch { found: 'Z', .. }
        ));
        assert!(eu.warning().expect("warning").contains("position 9"));
    }

    #[test]
    fn vin_bad_length_and_chars() {
        let err = Vin::parse("1HGCM82633A00435").expect_err("16 chars");
        assert_eq!(
            err,
            VinError::Length {
                vin: "1HGCM82633A00435".into(),
                len: 16
            }
        );
        assert!(err.to_string().contains("exactly 17"));
        assert!(matches!(
            Vin::parse("1HGCM82633A0043521"),
            Err(VinError::Length { len: 18, .. })
        ));
        assert!(matches!(
            Vin::parse(""),
            Err(VinError::Length { len: 0, .. })
        ));
        for (bad, ch, pos) in [
            ("IHGCM82633A004352", 'I', 1),
            ("1HGCM826O3A004352", 'O', 9),
            ("1HGCM82633A00435Q", 'Q', 17),
            ("1hgcm82633a004352", 'h', 2),
            ("1HGCM82633A00435-", '-', 17),
        ] {
            assert_eq!(
                Vin::parse(bad),
                Err(VinError::InvalidChar {
                    vin: bad.into(),
                    ch,
                    position: pos
                }),
                "{bad}"
            );
        }
        // Non-ASCII input is rejected, never panics.
        assert!(Vin::parse("1HGCM82633A00435é").is_err());
    }

    fn obd(body: &[u8]) -> Vec<u8> {
        let mut v = vec![0x49, 0x02];
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn vin_from_obd_layouts() {
        let vin = GOOD_NA.as_bytes();
        // ISO 15765-4 layout: item count 0x01 then 17 bytes.
        let mut with_count = vec![0x01];
        with_count.extend_from_slice(vin);
        assert_eq!(
            parse_vin_from_obd(&obd(&with_count))
                .expect("count layout")
                .as_str(),
            GOOD_NA
        );
        // No count byte.
        assert_eq!(
            parse_vin_from_obd(&obd(vin)).expect("bare layout").as_str(),
            GOOD_NA
        );
        // Count byte and leading zero padding (older ECUs pad to 20 bytes).
        let mut padded = vec![0x01, 0x00, 0x00, 0x00];
        padded.extend_from_slice(vin);
        assert_eq!(
            parse_vin_from_obd(&obd(&padded)).expect("padded").as_str(),
            GOOD_NA
        );
        // Trailing 0xFF padding.
        let mut trailing = with_count.clone();
        trailing.extend_from_slice(&[0xFF, 0xFF]);
        assert_eq!(
            parse_vin_from_obd(&obd(&trailing))
                .expect("trailing")
                .as_str(),
            GOOD_NA
        );
        // Too short.
        let err = parse_vin_from_obd(&obd(&[0x01, b'1', b'H'])).expect_err("short");
        assert!(matches!(
            err,
            VinReadError::MalformedVin {
                error: VinError::Length { len: 2, .. },
                ..
            }
        ));
        // Wrong PID.
        let err = parse_vin_from_obd(&[0x49, 0x04, 0x01]).expect_err("wrong pid");
        assert!(err.to_string().contains("not for PID 02"), "{err}");
        // Negative response with its NRC name.
        let err = parse_vin_from_obd(&[0x7F, 0x09, 0x12]).expect_err("negative");
        assert_eq!(
            err.to_string(),
            "OBD-II service 09 PID 02: negative response to OBD RequestVehicleInformation (0x09): NRC 0x12 subFunctionNotSupported"
        );
    }

    #[test]
    fn vin_from_rdbi() {
        let mut pdu = vec![0x62, 0xF1, 0x90];
        pdu.extend_from_slice(GOOD_NA.as_bytes());
        assert_eq!(parse_vin_from_rdbi(&pdu).expect("good").as_str(), GOOD_NA);
        let err = parse_vin_from_rdbi(&[0x7F, 0x22, 0x31]).expect_err("nrc");
        assert_eq!(
            err.to_string(),
            "UDS ReadDataByIdentifier 0xF190: negative response to ReadDataByIdentifier (0x22): NRC 0x31 requestOutOfRange"
        );
        let err = parse_vin_from_rdbi(&[0x62, 0xF1, 0x87, 0x41]).expect_err("other DID");
        assert!(err.to_string().contains("DID 0xF190"), "{err}");
        let err = parse_vin_from_rdbi(&[0x7F, 0x22, 0x78]).expect_err("pending");
        assert!(err.to_string().contains("response pending"), "{err}");
        let err = parse_vin_from_rdbi(&[0x7F, 0x22]).expect_err("malformed");
        assert_eq!(
            err.to_string(),
            "UDS ReadDataByIdentifier 0xF190: malformed response 7F 22: negative response of 2 bytes (expected 3: 7F, service id, NRC)"
        );
        let err = parse_vin_from_rdbi(&[0x50, 0x03]).expect_err("other service");
        assert!(err.to_string().contains("another service"), "{err}");
        let mut bad = vec![0x62, 0xF1, 0x90];
        bad.extend_from_slice(b"1HGCM82633A00O352");
        let err = parse_vin_from_rdbi(&bad).expect_err("bad char");
        assert!(err.to_string().contains("malformed VIN"), "{err}");
    }

    #[test]
    fn no_answer_message() {
        let err = VinReadError::NoAnswer {
            source_kind: VinSource::ObdMode09,
            target: "CAN 0x7DF on can0".into(),
            timeout: Duration::from_secs(2),
        };
        assert_eq!(
            err.to_string(),
            "no answer to OBD-II service 09 PID 02 from CAN 0x7DF on can0 within 2s: check the connection to the vehicle, the ignition, and the addresses"
        );
    }

    #[test]
    fn vin_query_physical() {
        let t = Instant::now();
        let timeout = Duration::from_secs(1);
        let mut good = vec![0x62, 0xF1, 0x90];
        good.extend_from_slice(GOOD_NA.as_bytes());

        let mut q = VinQuery::uds("DoIP 0x1000", false, timeout, t);
        assert_eq!(q.request(), &[0x22, 0xF1, 0x90]);
        assert_eq!(q.poll_at(), Some(t + timeout));
        // A stray answer to another service is ignored.
        assert!(q.on_response(&[0x7E, 0x00], t).is_none());
        let vin = q.on_response(&good, t).expect("done").expect("vin");
        assert_eq!(vin.as_str(), GOOD_NA);
        assert!(q.is_finished());
        assert_eq!(q.poll_at(), None);
        assert!(q.on_response(&good, t).is_none());
        assert!(q.poll(t + timeout).is_none());

        // Physical refusal ends the query with the NRC name.
        let mut q = VinQuery::uds("DoIP 0x1000", false, timeout, t);
        let err = q
            .on_response(&[0x7F, 0x22, 0x31], t)
            .expect("done")
            .expect_err("refused");
        assert!(
            err.to_string().ends_with("NRC 0x31 requestOutOfRange"),
            "{err}"
        );

        // 0x78 extends the deadline by P2*.
        let mut q = VinQuery::uds("x", false, timeout, t).with_p2_star(Duration::from_secs(3));
        assert!(
            q.on_response(&[0x7F, 0x22, 0x78], t + Duration::from_millis(500))
                .is_none()
        );
        assert_eq!(q.poll_at(), Some(t + Duration::from_millis(3500)));
        assert!(q.poll(t + Duration::from_millis(3499)).is_none());
        assert!(
            q.on_response(&good, t + Duration::from_millis(3000))
                .expect("done")
                .is_ok()
        );
    }

    #[test]
    fn vin_query_functional_and_timeouts() {
        let t = Instant::now();
        let timeout = Duration::from_millis(500);
        let mut good = vec![0x49, 0x02, 0x01];
        good.extend_from_slice(GOOD_NA.as_bytes());

        // One ECU refuses, another answers: the VIN wins.
        let mut q = VinQuery::obd("CAN 0x7DF", true, timeout, t);
        assert_eq!(q.request(), &[0x09, 0x02]);
        assert!(q.on_response(&[0x7F, 0x09, 0x22], t).is_none());
        assert!(q.on_response(&[0x49, 0x02, 0x01, b'X'], t).is_none());
        assert!(q.on_response(&good, t).expect("done").is_ok());

        // Only a refusal: reported at the deadline.
        let mut q = VinQuery::obd("CAN 0x7DF", true, timeout, t);
        assert!(q.on_response(&[0x7F, 0x09, 0x22], t).is_none());
        assert!(q.poll(t + Duration::from_millis(499)).is_none());
        let err = q.poll(t + timeout).expect("done").expect_err("refused");
        assert!(matches!(
            err,
            VinReadError::Negative {
                nrc: Nrc::CONDITIONS_NOT_CORRECT,
                ..
            }
        ));

        // Silence.
        let mut q = VinQuery::obd("CAN 0x7DF on vcan0", true, timeout, t);
        let err = q.poll(t + timeout).expect("done").expect_err("silence");
        assert_eq!(
            err.to_string(),
            "no answer to OBD-II service 09 PID 02 from CAN 0x7DF on vcan0 within 500ms: check the connection to the vehicle, the ignition, and the addresses"
        );
        assert!(q.poll(t + timeout).is_none());
    }

    #[test]
    fn keep_alive_follows_sessions() {
        let t0 = Instant::now();
        let mut ka = KeepAlive::new(Duration::from_secs(2));
        assert_eq!(ka.poll_at(), None);
        assert_eq!(ka.poll(t0 + Duration::from_secs(10)), None);
        // Positive response to 10 03 starts it.
        let resp = [0x50, 0x03, 0x00, 0x32, 0x01, 0xF4];
        ka.observe_response(&Response::parse(&resp).expect("parses"), t0);
        assert!(ka.is_active());
        assert_eq!(ka.poll_at(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(ka.poll(t0 + Duration::from_millis(1999)), None);
        assert_eq!(ka.poll(t0 + Duration::from_secs(2)), Some([0x3E, 0x80]));
        assert_eq!(ka.poll_at(), Some(t0 + Duration::from_secs(4)));
        // Another request pushes it back.
        ka.request_sent(t0 + Duration::from_secs(3));
        assert_eq!(ka.poll(t0 + Duration::from_secs(4)), None);
        assert_eq!(ka.poll_at(), Some(t0 + Duration::from_secs(5)));
        // A negative response changes nothing; default session stops it.
        ka.observe_response(&Response::parse(&[0x7F, 0x10, 0x22]).expect("parses"), t0);
        assert!(ka.is_active());
        ka.observe_response(
            &Response::parse(&[0x50, 0x01, 0, 0x32, 1, 0xF4]).expect("parses"),
            t0,
        );
        assert!(!ka.is_active());
        assert_eq!(ka.poll(t0 + Duration::from_secs(60)), None);
        // request_sent while stopped does not start it.
        ka.request_sent(t0);
        assert_eq!(ka.poll_at(), None);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Response::parse(&bytes);
            let _ = parse_vin_from_obd(&bytes);
            let _ = parse_vin_from_rdbi(&bytes);
            let _ = Vin::parse_chars(&bytes);
            let _ = SessionTiming::parse(&bytes);
        }

        #[test]
        fn positive_round_trip(sid in 0x00u8..0x3F, data in proptest::collection::vec(any::<u8>(), 0..32)) {
            let r = Response::Positive { sid: ServiceId(sid), data: &data };
            let mut buf = vec![0u8; r.buffer_len()];
            prop_assert_eq!(r.emit(&mut buf), Some(buf.len()));
            prop_assert_eq!(Response::parse(&buf), Ok(r));
        }

        #[test]
        fn vin_round_trip(s in "[A-HJ-NPR-Z0-9]{17}") {
            let vin = Vin::parse_chars(s.as_bytes()).expect("alphabet is valid");
            prop_assert_eq!(vin.as_str(), s.as_str());
            let mut pdu = vec![0x49, 0x02, 0x01];
            pdu.extend_from_slice(s.as_bytes());
            // NA VINs with a wrong check digit are rejected; everything else parses back.
            match parse_vin_from_obd(&pdu) {
                Ok(v) => prop_assert_eq!(v, vin),
                Err(VinReadError::MalformedVin { error: VinError::CheckDigit { .. }, .. }) => {
                    prop_assert!(vin.is_north_american());
                }
                Err(e) => prop_assert!(false, "unexpected {}", e),
            }
        }
    }
}
