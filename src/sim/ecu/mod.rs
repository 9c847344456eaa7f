//! Simulated ECUs answering UDS (ISO 14229-1) and OBD-II (SAE J1979) over any
//! request/response transport.
//!
//! Owns: the diagnostic behaviour of one ECU ([`Ecu`]: sessions with the S3 timeout,
//! security access, DTCs, identification DIDs, routines, flash downloads, OBD-II services,
//! response-pending for slow operations, the negative-response rules) and of a vehicle
//! ([`Vehicle`]: several ECUs with their CAN and DoIP addresses, functional requests).
//!
//! Does not own any I/O, transport or clock. It is sans-IO: a transport hands it a reassembled
//! request PDU, whether it came physically or functionally addressed, and `now`; it answers
//! with an [`EcuAction`]. Responses that are due later (after a 0x78 response-pending, and
//! the repeated 0x78s of long operations) come out of [`Ecu::poll`] at [`Ecu::poll_at`]; the
//! S3 session timeout is also driven from there. Transports: ISO-TP on a CAN port (physical
//! ids 0x7E0.., functional 0x7DF) and DoIP (logical addresses 0x1000.., functional 0xE400).
//!
//! Negative-response rules implemented (ISO 14229-1): for a functionally addressed request,
//! NRCs 0x11, 0x12, 0x31, 0x7E and 0x7F are not sent; the suppressPosRspMsgIndicationBit
//! suppresses positive responses only, and never one that follows a 0x78.

mod config;
mod flash;
mod obd;
mod security;
mod vehicle;

pub use config::{
    Dtc, EcuConfig, FlashConfig, ObdConfig, PendingConfig, SecurityConfig, TimingConfig, dtc_status,
};
pub use flash::{Crc32, DownloadSummary, crc32};
pub use obd::LiveData;
pub use security::{KeyFn, default_key};
pub use vehicle::{
    DEFAULT_VIN, EcuAddress, EcuIndex, FUNCTIONAL_CAN_ID, FUNCTIONAL_DOIP_ADDRESS, Vehicle,
    VehicleConfig, VehicleConfigError, VehicleDescription, VehicleEcu,
};

use crate::vehicle::uds::{
    Nrc, SUPPRESS_POSITIVE_RESPONSE, Session, SessionTiming, negative_response,
};
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use flash::Flash;
use security::{SecurityOutcome, SecurityState};

/// What the transport does after handing a request to an ECU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EcuAction {
    /// Send nothing: a suppressed positive response, or a functional request this ECU does
    /// not answer (unsupported service, PID or sub-function), or an empty request.
    None,
    /// Send this response now.
    Respond(Bytes),
    /// Send `response` (a `7F sid 78` response-pending) now. The final response comes out of
    /// [`Ecu::poll`] at `final_at` (with more 0x78s before it if the operation is long), so
    /// the transport must call `poll` at [`Ecu::poll_at`].
    Pending { response: Bytes, final_at: Instant },
}

/// A service handler's answer, before the addressing and suppression rules apply.
pub(crate) enum Reply {
    /// Positive response PDU (response id first).
    Positive(Vec<u8>),
    Negative(Nrc),
    /// Positive response PDU sent after 0x78 and this delay.
    Delayed(Vec<u8>, Duration),
}

/// A response owed after a 0x78.
#[derive(Clone, Debug)]
struct PendingOp {
    sid: u8,
    final_at: Instant,
    /// When to repeat 0x78 (operations longer than `repeat_every`).
    next_repeat: Option<Instant>,
    response: Bytes,
}

/// Result of a routine whose results can be requested (sub-function 0x03).
#[derive(Clone, Debug, Default)]
struct RoutineResults {
    erase: Option<Vec<u8>>,
    check: Option<Vec<u8>>,
}

const RID_ERASE_MEMORY: u16 = 0xFF00;
const RID_CHECK_MEMORY: u16 = 0x0202;

/// One simulated ECU.
#[derive(Clone, Debug)]
pub struct Ecu {
    config: EcuConfig,
    /// Time origin of the live data (engine start).
    started: Instant,
    session: Session,
    /// When the non-default session falls back to default (S3server).
    s3_deadline: Option<Instant>,
    security: SecurityState,
    /// DTCs with their current status (ClearDiagnosticInformation changes them).
    dtcs: Vec<Dtc>,
    /// ControlDTCSetting: whether DTC status updates are on.
    dtc_setting_on: bool,
    /// Distance driven (km) at the last DTC clear, for OBD PID 0x31.
    distance_at_clear: Option<f64>,
    flash: Flash,
    routines: RoutineResults,
    pending: Option<PendingOp>,
    /// Final responses that fell due while the transport handed in a new request before
    /// polling; [`Ecu::poll`] returns them first, oldest first. At most one is added per
    /// request, and beyond [`READY_LIMIT`] the oldest is dropped.
    ready: VecDeque<(Instant, Bytes)>,
}

/// Bound of [`Ecu`]'s queue of due-but-unpolled final responses (only reached by a transport
/// that never polls).
const READY_LIMIT: usize = 4;

/// Services that have a sub-function byte (whose bit 7 is the suppress bit).
fn has_suppressible_subfunction(sid: u8) -> bool {
    matches!(sid, 0x10 | 0x11 | 0x27 | 0x28 | 0x31 | 0x3E | 0x85)
}

/// Big-endian unsigned of up to 4 bytes (callers guarantee the length).
fn be_u32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
}

/// Parse `alfid address size` (addressAndLengthFormatIdentifier, as in RequestDownload and
/// the eraseMemory routine).
fn parse_address_and_size(alfid: u8, rest: &[u8]) -> Result<(u32, u32), Nrc> {
    let a = usize::from(alfid & 0x0F);
    let s = usize::from(alfid >> 4);
    if !(1..=4).contains(&a) || !(1..=4).contains(&s) {
        return Err(Nrc::REQUEST_OUT_OF_RANGE);
    }
    if rest.len() != a + s {
        return Err(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT);
    }
    let (addr, size) = rest.split_at(a);
    Ok((be_u32(addr), be_u32(size)))
}

impl Ecu {
    /// An ECU in the default session, engine started at `now`.
    pub fn new(config: EcuConfig, now: Instant) -> Ecu {
        Ecu {
            security: SecurityState::new(config.security.seed_salt),
            dtcs: config.dtcs.clone(),
            config,
            started: now,
            session: Session::Default,
            s3_deadline: None,
            dtc_setting_on: true,
            distance_at_clear: None,
            flash: Flash::default(),
            routines: RoutineResults::default(),
            pending: None,
            ready: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &EcuConfig {
        &self.config
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The active diagnostic session.
    pub fn session(&self) -> Session {
        self.session
    }

    /// The unlocked security level (odd requestSeed value), if any.
    pub fn security_level(&self) -> Option<u8> {
        self.security.unlocked_level()
    }

    /// When SecurityAccess accepts seeds again after a lockout, if one is running.
    pub fn security_locked_until(&self) -> Option<Instant> {
        self.security.locked_until()
    }

    /// Current DTCs and their status.
    pub fn dtcs(&self) -> &[Dtc] {
        &self.dtcs
    }

    /// Whether ControlDTCSetting left DTC updates on.
    pub fn dtc_setting_on(&self) -> bool {
        self.dtc_setting_on
    }

    /// The last completed download (address, size, CRC-32 of the bytes).
    pub fn last_download(&self) -> Option<DownloadSummary> {
        self.flash.last()
    }

    /// Downloads completed since start.
    pub fn downloads_completed(&self) -> u32 {
        self.flash.completed()
    }

    /// Bytes received so far by the download in progress.
    pub fn download_progress(&self) -> Option<u32> {
        self.flash.received()
    }

    /// When the active non-default session times out (S3), if one is active.
    pub fn s3_deadline(&self) -> Option<Instant> {
        self.s3_deadline
    }

    /// When [`Ecu::poll`] next has work: a final or repeated pending response, or the S3
    /// session timeout.
    pub fn poll_at(&self) -> Option<Instant> {
        if let Some((due, _)) = self.ready.front() {
            return Some(*due);
        }
        let pending = self
            .pending
            .as_ref()
            .map(|p| p.next_repeat.map_or(p.final_at, |r| r.min(p.final_at)));
        match (pending, self.s3_deadline) {
            // The S3 timer does not run while the ECU owes a response.
            (Some(p), _) => Some(p),
            (None, s3) => s3,
        }
    }

    /// Advance to `now`: returns a response to send (a due final response, or a repeated
    /// 0x78), and applies the S3 timeout. Call until it returns `None`.
    pub fn poll(&mut self, now: Instant) -> Option<Bytes> {
        if let Some((_, response)) = self.ready.pop_front() {
            return Some(response);
        }
        if let Some(p) = self.pending.as_mut() {
            if now >= p.final_at {
                let done = self.pending.take()?;
                self.restart_s3(now);
                return Some(done.response);
            }
            if let Some(r) = p.next_repeat
                && now >= r
            {
                let next = now + self.config.pending.repeat_every;
                p.next_repeat = (next < p.final_at).then_some(next);
                return Some(Bytes::copy_from_slice(&negative_response(
                    p.sid,
                    Nrc::RESPONSE_PENDING,
                )));
            }
            return None;
        }
        if let Some(deadline) = self.s3_deadline
            && now >= deadline
        {
            self.enter_default_session();
        }
        None
    }

    fn restart_s3(&mut self, now: Instant) {
        self.s3_deadline = match self.session {
            Session::Default => None,
            _ => Some(now + self.config.timing.s3),
        };
    }

    /// Back to the default session: security locked, download aborted (S3 timeout, reset,
    /// DiagnosticSessionControl 0x01).
    fn enter_default_session(&mut self) {
        self.session = Session::Default;
        self.s3_deadline = None;
        self.security.lock();
        self.flash.abort();
        self.dtc_setting_on = true;
    }

    /// Handle one request PDU. `functional` is true when it came to a functional address
    /// (CAN 0x7DF, DoIP 0xE400).
    pub fn handle(&mut self, request: &[u8], functional: bool, now: Instant) -> EcuAction {
        let Some((&sid, rest)) = request.split_first() else {
            return EcuAction::None;
        };
        // A slow operation that finished before this request: keep its final response for
        // poll, so starting another one cannot overwrite it.
        if let Some(p) = self.pending.take_if(|p| now >= p.final_at) {
            if self.ready.len() >= READY_LIMIT {
                self.ready.pop_front();
            }
            self.ready.push_back((p.final_at, p.response));
        }
        // Apply a session timeout the transport has not polled for yet.
        if self.pending.is_none()
            && let Some(deadline) = self.s3_deadline
            && now >= deadline
        {
            self.enter_default_session();
        }
        let busy = self.pending.is_some();
        let suppress = has_suppressible_subfunction(sid)
            && rest
                .first()
                .is_some_and(|sub| sub & SUPPRESS_POSITIVE_RESPONSE != 0);
        if busy {
            if sid == 0x3E && suppress {
                return EcuAction::None;
            }
            return EcuAction::Respond(Bytes::copy_from_slice(&negative_response(
                sid,
                Nrc::BUSY_REPEAT_REQUEST,
            )));
        }
        let reply = self.dispatch(sid, rest, now);
        // Any request restarts S3 (in the session the request left the ECU in).
        self.restart_s3(now);
        self.finish(sid, reply, functional, suppress, now)
    }

    fn finish(
        &mut self,
        sid: u8,
        reply: Reply,
        functional: bool,
        suppress: bool,
        now: Instant,
    ) -> EcuAction {
        let reply = match reply {
            Reply::Positive(pdu) if pdu.len() > self.config.max_response_len => {
                Reply::Negative(Nrc::RESPONSE_TOO_LONG)
            }
            other => other,
        };
        let (pdu, delay) = match reply {
            Reply::Positive(pdu) => {
                if suppress {
                    return EcuAction::None;
                }
                (pdu, self.config.pending.all_requests)
            }
            Reply::Negative(nrc) => {
                let suppressed_when_functional = matches!(nrc.0, 0x11 | 0x12 | 0x31 | 0x7E | 0x7F);
                if functional && suppressed_when_functional {
                    return EcuAction::None;
                }
                (
                    negative_response(sid, nrc).to_vec(),
                    self.config.pending.all_requests,
                )
            }
            Reply::Delayed(pdu, d) => (
                pdu,
                Some(d.max(self.config.pending.all_requests.unwrap_or_default())),
            ),
        };
        match delay {
            None => EcuAction::Respond(Bytes::from(pdu)),
            Some(d) => {
                let final_at = now + d;
                let next = now + self.config.pending.repeat_every;
                self.pending = Some(PendingOp {
                    sid,
                    final_at,
                    next_repeat: (next < final_at).then_some(next),
                    response: Bytes::from(pdu),
                });
                EcuAction::Pending {
                    response: Bytes::copy_from_slice(&negative_response(
                        sid,
                        Nrc::RESPONSE_PENDING,
                    )),
                    final_at,
                }
            }
        }
    }

    fn dispatch(&mut self, sid: u8, rest: &[u8], now: Instant) -> Reply {
        // Session availability first (after "is the service supported at all").
        let default_ok = matches!(sid, 0x01..=0x0A | 0x10 | 0x11 | 0x14 | 0x19 | 0x22 | 0x3E);
        let non_default_only = matches!(sid, 0x27 | 0x28 | 0x31 | 0x85);
        let programming_only = matches!(sid, 0x34 | 0x36 | 0x37);
        if !(default_ok || non_default_only || programming_only) {
            return Reply::Negative(Nrc::SERVICE_NOT_SUPPORTED);
        }
        let allowed = default_ok
            || (non_default_only && self.session != Session::Default)
            || (programming_only && self.session == Session::Programming);
        if !allowed {
            return Reply::Negative(Nrc::SERVICE_NOT_SUPPORTED_IN_ACTIVE_SESSION);
        }
        match sid {
            0x01..=0x0A => self.obd_service(sid, rest, now),
            0x10 => self.session_control(rest),
            0x11 => self.ecu_reset(rest),
            0x14 => self.clear_diagnostic_information(rest, now),
            0x19 => self.read_dtc_information(rest),
            0x22 => self.read_data_by_identifier(rest),
            0x27 => self.security_access(rest, now),
            0x28 => self.communication_control(rest),
            0x31 => self.routine_control(rest),
            0x34 => self.request_download(rest),
            0x36 => self.transfer_data(rest),
            0x37 => self.request_transfer_exit(),
            0x3E => self.tester_present(rest),
            0x85 => self.control_dtc_setting(rest),
            _ => Reply::Negative(Nrc::SERVICE_NOT_SUPPORTED),
        }
    }

    fn session_control(&mut self, rest: &[u8]) -> Reply {
        let [sub] = rest else {
            return Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT);
        };
        let session = match Session::from_byte(*sub) {
            s @ (Session::Default | Session::Programming | Session::Extended) => s,
            _ => return Reply::Negative(Nrc::SUB_FUNCTION_NOT_SUPPORTED),
        };
        if session == Session::Default {
            self.enter_default_session();
        } else if session != self.session {
            self.security.lock();
            self.flash.abort();
            self.session = session;
        }
        let timing = SessionTiming {
            p2: self.config.timing.p2,
            p2_star: self.config.timing.p2_star,
        };
        let mut out = vec![0x50, session.to_byte()];
        out.extend_from_slice(&timing.to_bytes());
        Reply::Positive(out)
    }

    fn ecu_reset(&mut self, rest: &[u8]) -> Reply {
        match rest {
            [] => Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT),
            [sub, ..] if !(1..=3).contains(&(sub & 0x7F)) => {
                Reply::Negative(Nrc::SUB_FUNCTION_NOT_SUPPORTED)
            }
            [sub] => {
                self.enter_default_session();
                Reply::Delayed(vec![0x51, sub & 0x7F], self.config.pending.ecu_reset)
            }
            _ => Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT),
        }
    }

    /// Clear DTCs matching `group` (all when `None`).
    pub(crate) fn clear_dtcs(&mut self, code: Option<u32>, now: Instant) {
        let avail = self.config.dtc_status_availability;
        for d in self
            .dtcs
            .iter_mut()
            .filter(|d| code.is_none_or(|c| c == d.code))
        {
            d.status = dtc_status::AFTER_CLEAR & avail;
        }
        if code.is_none() {
            self.distance_at_clear = Some(self.live_data(now).distance_km);
        }
    }

    fn clear_diagnostic_information(&mut self, rest: &[u8], now: Instant) -> Reply {
        // groupOfDTC (3 bytes), optionally followed by a memory selection byte (2020).
        let group = match rest {
            [a, b, c] | [a, b, c, _] => be_u32(&[*a, *b, *c]),
            _ => return Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT),
        };
        match group {
            // All groups; the emissions-related group (OBD) is all of ours too.
            0xFF_FFFF | 0xFF_FF33 => self.clear_dtcs(None, now),
            code if self.dtcs.iter().any(|d| d.code == code) => self.clear_dtcs(Some(code), now),
            _ => return Reply::Negative(Nrc::REQUEST_OUT_OF_RANGE),
        }
        Reply::Positive(vec![0x54])
    }

    fn read_dtc_information(&self, rest: &[u8]) -> Reply {
        let avail = self.config.dtc_status_availability;
        let matching = |mask: u8| {
            self.dtcs
                .iter()
                .filter(move |d| d.status & mask & avail != 0)
        };
        match rest {
            [0x01, mask] => {
                let n = u16::try_from(matching(*mask).count()).unwrap_or(u16::MAX);
                let [hi, lo] = n.to_be_bytes();
                // DTCFormatIdentifier 0x00: SAE J2012-DA DTCFormat_00 (2-byte code + failure type).
                Reply::Positive(vec![0x59, 0x01, avail, 0x00, hi, lo])
            }
            [0x02, mask] => {
                let mut out = vec![0x59, 0x02, avail];
                for d in matching(*mask) {
                    out.extend_from_slice(&d.code.to_be_bytes()[1..]);
                    out.push(d.status & avail);
                }
                Reply::Positive(out)
            }
            [0x0A] => {
                let mut out = vec![0x59, 0x0A, avail];
                for d in &self.dtcs {
                    out.extend_from_slice(&d.code.to_be_bytes()[1..]);
                    out.push(d.status & avail);
                }
                Reply::Positive(out)
            }
            [] | [0x01 | 0x02, ..] | [0x0A, ..] => {
                Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT)
            }
            [_, ..] => Reply::Negative(Nrc::SUB_FUNCTION_NOT_SUPPORTED),
        }
    }

    /// Append `did` and its data to `out`; `false` for a DID this ECU does not have.
    fn append_did(&self, did: u16, out: &mut Vec<u8>) -> bool {
        use crate::vehicle::uds::*;
        let c = &self.config;
        let session = [self.session.to_byte()];
        let data: &[u8] = match did {
            DID_VIN => c.vin.as_bytes(),
            DID_ACTIVE_SESSION => &session,
            DID_SPARE_PART_NUMBER => c.spare_part_number.as_bytes(),
            DID_SUPPLIER_ID => c.supplier.as_bytes(),
            DID_ECU_SERIAL => c.serial_number.as_bytes(),
            DID_HARDWARE_NUMBER => c.hardware_number.as_bytes(),
            DID_SOFTWARE_VERSION => c.software_version.as_bytes(),
            DID_SYSTEM_NAME => c.system_name.as_bytes(),
            _ => return false,
        };
        out.extend_from_slice(&did.to_be_bytes());
        out.extend_from_slice(data);
        true
    }

    fn read_data_by_identifier(&self, rest: &[u8]) -> Reply {
        if rest.is_empty()
            || !rest.len().is_multiple_of(2)
            || rest.len() / 2 > self.config.max_dids_per_request
        {
            return Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT);
        }
        let mut out = vec![0x62];
        let mut any = false;
        for pair in rest.chunks_exact(2) {
            if let [hi, lo] = pair {
                any |= self.append_did(u16::from_be_bytes([*hi, *lo]), &mut out);
            }
        }
        if any {
            Reply::Positive(out)
        } else {
            Reply::Negative(Nrc::REQUEST_OUT_OF_RANGE)
        }
    }

    fn security_access(&mut self, rest: &[u8], now: Instant) -> Reply {
        let Some((&raw_sub, data)) = rest.split_first() else {
            return Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT);
        };
        let sub = raw_sub & 0x7F;
        let level = if sub % 2 == 1 {
            sub
        } else {
            sub.wrapping_sub(1)
        };
        if sub == 0 || sub > 0x42 || !self.config.security.levels.contains(&level) {
            return Reply::Negative(Nrc::SUB_FUNCTION_NOT_SUPPORTED);
        }
        let sec = &self.config.security;
        let outcome = if sub % 2 == 1 {
            // securityAccessDataRecord after the sub-function is allowed and ignored.
            self.security.request_seed(level, now)
        } else {
            if data.len() != 4 {
                return Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT);
            }
            self.security
                .send_key(level, data, sec.key, sec.max_attempts, sec.lockout, now)
        };
        match outcome {
            Ok(SecurityOutcome::Seed(seed)) => {
                let mut out = vec![0x67, sub];
                out.extend_from_slice(&seed);
                Reply::Positive(out)
            }
            Ok(SecurityOutcome::Unlocked) => Reply::Positive(vec![0x67, sub]),
            Err(nrc) => Reply::Negative(nrc),
        }
    }

    fn communication_control(&mut self, rest: &[u8]) -> Reply {
        match rest {
            [] => Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT),
            [sub, ..] if sub & 0x7F > 0x03 => Reply::Negative(Nrc::SUB_FUNCTION_NOT_SUPPORTED),
            [sub, comm_type] => {
                if comm_type & 0x03 == 0 {
                    Reply::Negative(Nrc::REQUEST_OUT_OF_RANGE)
                } else {
                    Reply::Positive(vec![0x68, sub & 0x7F])
                }
            }
            _ => Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT),
        }
    }

    fn control_dtc_setting(&mut self, rest: &[u8]) -> Reply {
        match rest {
            [] => Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT),
            [sub, ..] => match sub & 0x7F {
                0x01 => {
                    self.dtc_setting_on = true;
                    Reply::Positive(vec![0xC5, 0x01])
                }
                0x02 => {
                    self.dtc_setting_on = false;
                    Reply::Positive(vec![0xC5, 0x02])
                }
                _ => Reply::Negative(Nrc::SUB_FUNCTION_NOT_SUPPORTED),
            },
        }
    }

    fn tester_present(&self, rest: &[u8]) -> Reply {
        match rest {
            [sub] if sub & 0x7F == 0 => Reply::Positive(vec![0x7E, 0x00]),
            [_] => Reply::Negative(Nrc::SUB_FUNCTION_NOT_SUPPORTED),
            _ => Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT),
        }
    }

    fn routine_control(&mut self, rest: &[u8]) -> Reply {
        let sub = match rest.first() {
            None => return Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT),
            Some(s) if !(1..=3).contains(&(s & 0x7F)) => {
                return Reply::Negative(Nrc::SUB_FUNCTION_NOT_SUPPORTED);
            }
            Some(s) => s & 0x7F,
        };
        let [_, hi, lo, options @ ..] = rest else {
            return Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT);
        };
        let rid = u16::from_be_bytes([*hi, *lo]);
        let head = |sub: u8| vec![0x71, sub, *hi, *lo];
        // Both routines exist only in the programming session ("routine not supported in the
        // active session" is requestOutOfRange).
        if !matches!(rid, RID_ERASE_MEMORY | RID_CHECK_MEMORY)
            || self.session != Session::Programming
        {
            return Reply::Negative(Nrc::REQUEST_OUT_OF_RANGE);
        }
        let stored = |r: &RoutineResults| {
            if rid == RID_ERASE_MEMORY {
                r.erase.clone()
            } else {
                r.check.clone()
            }
        };
        match sub {
            0x02 => return Reply::Negative(Nrc::SUB_FUNCTION_NOT_SUPPORTED),
            0x03 => {
                if !options.is_empty() {
                    return Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT);
                }
                return match stored(&self.routines) {
                    Some(record) => {
                        let mut out = head(0x03);
                        out.extend_from_slice(&record);
                        Reply::Positive(out)
                    }
                    None => Reply::Negative(Nrc::REQUEST_SEQUENCE_ERROR),
                };
            }
            _ => {}
        }
        if rid == RID_ERASE_MEMORY {
            if !self.security.is_unlocked() {
                return Reply::Negative(Nrc::SECURITY_ACCESS_DENIED);
            }
            let range = match options {
                [] => None,
                [alfid, rest @ ..] => match parse_address_and_size(*alfid, rest) {
                    Ok(r) => Some(r),
                    Err(nrc) => return Reply::Negative(nrc),
                },
            };
            if let Err(nrc) = self.flash.erase(&self.config.flash, range) {
                return Reply::Negative(nrc);
            }
            let record = vec![0x00];
            self.routines.erase = Some(record.clone());
            let mut out = head(0x01);
            out.extend_from_slice(&record);
            return Reply::Delayed(out, self.config.pending.erase);
        }
        // RID_CHECK_MEMORY: compare the last download's CRC-32 with the expected one, if given.
        let Some(last) = self.flash.last() else {
            return Reply::Negative(Nrc::REQUEST_SEQUENCE_ERROR);
        };
        let status = match options {
            [] => 0x00,
            [a, b, c, d] => u8::from(u32::from_be_bytes([*a, *b, *c, *d]) != last.crc32),
            _ => return Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT),
        };
        let mut record = vec![status];
        record.extend_from_slice(&last.crc32.to_be_bytes());
        self.routines.check = Some(record.clone());
        let mut out = head(0x01);
        out.extend_from_slice(&record);
        Reply::Positive(out)
    }

    fn request_download(&mut self, rest: &[u8]) -> Reply {
        let [dfi, alfid, addr_size @ ..] = rest else {
            return Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT);
        };
        if !self.security.is_unlocked() {
            return Reply::Negative(Nrc::SECURITY_ACCESS_DENIED);
        }
        if self.flash.is_active() {
            return Reply::Negative(Nrc::CONDITIONS_NOT_CORRECT);
        }
        let (address, size) = match parse_address_and_size(*alfid, addr_size) {
            Ok(v) => v,
            Err(nrc) => return Reply::Negative(nrc),
        };
        // dataFormatIdentifier: no compression, no encryption.
        if *dfi != 0x00 {
            return Reply::Negative(Nrc::REQUEST_OUT_OF_RANGE);
        }
        if let Err(nrc) = self
            .flash
            .request_download(&self.config.flash, address, size)
        {
            return Reply::Negative(nrc);
        }
        let max = self.config.flash.max_block_length;
        let mut out = vec![0x74];
        match u16::try_from(max) {
            Ok(m) => {
                out.push(0x20);
                out.extend_from_slice(&m.to_be_bytes());
            }
            Err(_) => {
                out.push(0x40);
                out.extend_from_slice(&max.to_be_bytes());
            }
        }
        Reply::Positive(out)
    }

    fn transfer_data(&mut self, rest: &[u8]) -> Reply {
        let [counter, data @ ..] = rest else {
            return Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT);
        };
        if !self.flash.is_active() {
            return Reply::Negative(Nrc::REQUEST_SEQUENCE_ERROR);
        }
        let request_len = 1 + rest.len();
        if data.is_empty() || request_len as u64 > u64::from(self.config.flash.max_block_length) {
            return Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT);
        }
        match self.flash.transfer(&self.config.flash, *counter, data) {
            Ok(()) => Reply::Positive(vec![0x76, *counter]),
            Err(nrc) => Reply::Negative(nrc),
        }
    }

    fn request_transfer_exit(&mut self) -> Reply {
        // A transferRequestParameterRecord is accepted and ignored.
        match self.flash.exit() {
            Ok(summary) => {
                let mut out = vec![0x77];
                out.extend_from_slice(&summary.crc32.to_be_bytes());
                Reply::Delayed(out, self.config.pending.transfer_exit)
            }
            Err(nrc) => Reply::Negative(nrc),
        }
    }

    /// The services this ECU answers, for descriptions.
    pub fn services_summary(&self) -> String {
        let mut s = String::from("UDS 10 11 14 19 22 27 28 31 34 36 37 3E 85");
        if self.config.obd.is_some() {
            s.push_str(", OBD-II 01 03 04 07 09");
        }
        s
    }
}
