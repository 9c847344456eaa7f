//! UDS services of one simulated ECU: every positive and negative response with exact bytes,
//! security access with lockout, the S3 session timeout on simulated time, response-pending,
//! and a 1 MiB download verified by CRC-32.

use obdgw::sim::ecu::{DEFAULT_VIN, Ecu, EcuAction, EcuConfig, crc32, default_key, dtc_status};
use obdgw::vehicle::uds::{Nrc, Session};
use std::time::{Duration, Instant};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn engine_with(t0: Instant, f: impl FnOnce(&mut EcuConfig)) -> Ecu {
    let mut c = EcuConfig::engine(DEFAULT_VIN);
    f(&mut c);
    Ecu::new(c, t0)
}

fn engine(t0: Instant) -> Ecu {
    engine_with(t0, |_| {})
}

/// Send a physical request and return the immediate response bytes (panics on None/Pending).
#[track_caller]
fn ask(ecu: &mut Ecu, req: &[u8], now: Instant) -> Vec<u8> {
    match ecu.handle(req, false, now) {
        EcuAction::Respond(b) => b.to_vec(),
        other => panic!("request {req:02X?}: expected a response, got {other:?}"),
    }
}

#[track_caller]
fn expect(ecu: &mut Ecu, req: &[u8], now: Instant, want: &[u8]) {
    assert_eq!(ask(ecu, req, now), want, "request {req:02X?}");
}

#[track_caller]
fn expect_nrc(ecu: &mut Ecu, req: &[u8], now: Instant, nrc: Nrc) {
    let sid = req.first().copied().unwrap_or(0);
    assert_eq!(
        ask(ecu, req, now),
        [0x7F, sid, nrc.0],
        "request {req:02X?} expected {nrc}"
    );
}

#[track_caller]
fn expect_silent(ecu: &mut Ecu, req: &[u8], functional: bool, now: Instant) {
    assert_eq!(
        ecu.handle(req, functional, now),
        EcuAction::None,
        "request {req:02X?}"
    );
}

/// Run a request that answers 0x78 first; returns the final response after polling at the
/// announced time, checking nothing comes out earlier.
#[track_caller]
fn expect_pending(ecu: &mut Ecu, req: &[u8], now: Instant, delay: Duration) -> (Vec<u8>, Instant) {
    let sid = req[0];
    match ecu.handle(req, false, now) {
        EcuAction::Pending { response, final_at } => {
            assert_eq!(&response[..], [0x7F, sid, 0x78]);
            assert_eq!(final_at, now + delay);
            assert_eq!(ecu.poll_at(), Some(final_at));
            assert_eq!(ecu.poll(final_at - ms(1)), None);
            let fin = ecu.poll(final_at).expect("final response due");
            assert_eq!(ecu.poll(final_at), None);
            (fin.to_vec(), final_at)
        }
        other => panic!("request {req:02X?}: expected pending, got {other:?}"),
    }
}

fn enter(ecu: &mut Ecu, session: u8, now: Instant) {
    expect(
        ecu,
        &[0x10, session],
        now,
        &[0x50, session, 0x00, 0x32, 0x01, 0xF4],
    );
}

fn unlock(ecu: &mut Ecu, level: u8, now: Instant) {
    let r = ask(ecu, &[0x27, level], now);
    assert_eq!(&r[..2], [0x67, level]);
    let seed: [u8; 4] = r[2..6].try_into().expect("4-byte seed");
    let key = default_key(level, seed);
    expect(
        ecu,
        &[0x27, level + 1, key[0], key[1], key[2], key[3]],
        now,
        &[0x67, level + 1],
    );
    assert_eq!(ecu.security_level(), Some(level));
}

/// Programming session, unlocked, memory erased; returns the time after the erase.
fn ready_to_flash(ecu: &mut Ecu, t: Instant) -> Instant {
    enter(ecu, 0x03, t);
    enter(ecu, 0x02, t);
    unlock(ecu, 0x01, t);
    let (fin, t) = expect_pending(ecu, &[0x31, 0x01, 0xFF, 0x00], t, ms(1500));
    assert_eq!(fin, [0x71, 0x01, 0xFF, 0x00, 0x00]);
    t
}

// ---------------------------------------------------------------------------------------------
// DiagnosticSessionControl, TesterPresent, unknown services

#[test]
fn session_control_positive_with_p2_and_p2_star() {
    let t = Instant::now();
    let mut e = engine(t);
    assert_eq!(e.session(), Session::Default);
    enter(&mut e, 0x03, t);
    assert_eq!(e.session(), Session::Extended);
    enter(&mut e, 0x02, t);
    assert_eq!(e.session(), Session::Programming);
    enter(&mut e, 0x01, t);
    assert_eq!(e.session(), Session::Default);
    // Other timings are announced as configured: P2 25 ms, P2* 2 s (200 x 10 ms).
    let mut e = engine_with(t, |c| {
        c.timing.p2 = ms(25);
        c.timing.p2_star = ms(2000);
    });
    expect(
        &mut e,
        &[0x10, 0x03],
        t,
        &[0x50, 0x03, 0x00, 0x19, 0x00, 0xC8],
    );
}

#[test]
fn session_control_suppressed_and_negative() {
    let t = Instant::now();
    let mut e = engine(t);
    expect_silent(&mut e, &[0x10, 0x83], false, t);
    assert_eq!(e.session(), Session::Extended);
    expect_nrc(
        &mut e,
        &[0x10],
        t,
        Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT,
    );
    expect_nrc(
        &mut e,
        &[0x10, 0x03, 0x00],
        t,
        Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT,
    );
    expect_nrc(&mut e, &[0x10, 0x05], t, Nrc::SUB_FUNCTION_NOT_SUPPORTED);
    expect_nrc(&mut e, &[0x10, 0x00], t, Nrc::SUB_FUNCTION_NOT_SUPPORTED);
    // Functional: subFunctionNotSupported is not sent, but an incorrect length is.
    expect_silent(&mut e, &[0x10, 0x05], true, t);
    assert_eq!(
        e.handle(&[0x10], true, t),
        EcuAction::Respond(vec![0x7F, 0x10, 0x13].into())
    );
}

#[test]
fn tester_present_positive_suppressed_negative() {
    let t = Instant::now();
    let mut e = engine(t);
    expect(&mut e, &[0x3E, 0x00], t, &[0x7E, 0x00]);
    expect_silent(&mut e, &[0x3E, 0x80], false, t);
    expect_silent(&mut e, &[0x3E, 0x80], true, t);
    expect_nrc(&mut e, &[0x3E, 0x01], t, Nrc::SUB_FUNCTION_NOT_SUPPORTED);
    expect_nrc(
        &mut e,
        &[0x3E],
        t,
        Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT,
    );
    expect_nrc(
        &mut e,
        &[0x3E, 0x00, 0x00],
        t,
        Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT,
    );
    expect_silent(&mut e, &[0x3E, 0x01], true, t);
}

#[test]
fn unknown_service_and_empty_request() {
    let t = Instant::now();
    let mut e = engine(t);
    for sid in [0x23u8, 0x2E, 0x2F, 0x3D, 0x86, 0x00, 0x50, 0x7F, 0xFF] {
        expect_nrc(&mut e, &[sid, 0x01], t, Nrc::SERVICE_NOT_SUPPORTED);
        expect_silent(&mut e, &[sid, 0x01], true, t);
    }
    expect_silent(&mut e, &[], false, t);
}

#[test]
fn services_not_supported_in_active_session() {
    let t = Instant::now();
    let mut e = engine(t);
    for req in [
        &[0x27u8, 0x01][..],
        &[0x28, 0x00, 0x01],
        &[0x31, 0x01, 0xFF, 0x00],
        &[0x85, 0x02],
    ] {
        expect_nrc(&mut e, req, t, Nrc::SERVICE_NOT_SUPPORTED_IN_ACTIVE_SESSION);
        expect_silent(&mut e, req, true, t);
    }
    enter(&mut e, 0x03, t);
    for req in [
        &[0x34u8, 0x00, 0x44, 0, 0, 0, 0, 0, 0, 1, 0][..],
        &[0x36, 0x01, 0xAA],
        &[0x37],
    ] {
        expect_nrc(&mut e, req, t, Nrc::SERVICE_NOT_SUPPORTED_IN_ACTIVE_SESSION);
    }
}

// ---------------------------------------------------------------------------------------------
// S3 session timeout

#[test]
fn s3_timeout_returns_to_default_on_simulated_time() {
    let t0 = Instant::now();
    let mut e = engine(t0);
    enter(&mut e, 0x03, t0);
    unlock(&mut e, 0x01, t0);
    assert_eq!(e.poll_at(), Some(t0 + ms(5000)));
    // Tester present every 4.9 s keeps it alive for a minute.
    let mut t = t0;
    for _ in 0..12 {
        t += ms(4900);
        assert_eq!(e.poll(t), None);
        assert_eq!(e.session(), Session::Extended);
        expect_silent(&mut e, &[0x3E, 0x80], false, t);
        assert_eq!(e.poll_at(), Some(t + ms(5000)));
    }
    // Silence: still extended 1 ms before S3, default at S3, security locked.
    assert_eq!(e.poll(t + ms(4999)), None);
    assert_eq!(e.session(), Session::Extended);
    assert_eq!(e.poll(t + ms(5000)), None);
    assert_eq!(e.session(), Session::Default);
    assert_eq!(e.security_level(), None);
    assert_eq!(e.poll_at(), None);
    expect_nrc(
        &mut e,
        &[0x27, 0x01],
        t + ms(5000),
        Nrc::SERVICE_NOT_SUPPORTED_IN_ACTIVE_SESSION,
    );
}

#[test]
fn s3_timeout_applies_even_without_poll() {
    let t0 = Instant::now();
    let mut e = engine(t0);
    enter(&mut e, 0x02, t0);
    expect(
        &mut e,
        &[0x22, 0xF1, 0x86],
        t0 + ms(4000),
        &[0x62, 0xF1, 0x86, 0x02],
    );
    // 5 s after the last request the session is gone, even though nobody polled.
    expect(
        &mut e,
        &[0x22, 0xF1, 0x86],
        t0 + ms(9000),
        &[0x62, 0xF1, 0x86, 0x01],
    );
}

// ---------------------------------------------------------------------------------------------
// ReadDataByIdentifier

#[test]
fn read_data_by_identifier_single_and_multiple() {
    let t = Instant::now();
    let mut e = engine(t);
    let mut want = vec![0x62, 0xF1, 0x90];
    want.extend_from_slice(b"1FTFW1E87MFA17359");
    expect(&mut e, &[0x22, 0xF1, 0x90], t, &want);

    let mut want = vec![0x62, 0xF1, 0x87];
    want.extend_from_slice(b"8W0907115B");
    want.extend_from_slice(&[0xF1, 0x95]);
    want.extend_from_slice(b"SW 0815.3");
    want.extend_from_slice(&[0xF1, 0x8C]);
    want.extend_from_slice(b"ECM0012345678");
    expect(
        &mut e,
        &[0x22, 0xF1, 0x87, 0xF1, 0x95, 0xF1, 0x8C],
        t,
        &want,
    );

    // Unsupported DIDs among supported ones are left out.
    let mut want = vec![0x62, 0xF1, 0x91];
    want.extend_from_slice(b"8W0907115B-HW02");
    expect(&mut e, &[0x22, 0x12, 0x34, 0xF1, 0x91], t, &want);

    expect(&mut e, &[0x22, 0xF1, 0x86], t, &[0x62, 0xF1, 0x86, 0x01]);
    enter(&mut e, 0x03, t);
    expect(&mut e, &[0x22, 0xF1, 0x86], t, &[0x62, 0xF1, 0x86, 0x03]);
}

#[test]
fn read_data_by_identifier_negative() {
    let t = Instant::now();
    let mut e = engine(t);
    expect_nrc(&mut e, &[0x22, 0x12, 0x34], t, Nrc::REQUEST_OUT_OF_RANGE);
    expect_silent(&mut e, &[0x22, 0x12, 0x34], true, t);
    expect_nrc(
        &mut e,
        &[0x22],
        t,
        Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT,
    );
    expect_nrc(
        &mut e,
        &[0x22, 0xF1],
        t,
        Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT,
    );
    expect_nrc(
        &mut e,
        &[0x22, 0xF1, 0x90, 0xF1],
        t,
        Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT,
    );
    let mut many = vec![0x22];
    for _ in 0..17 {
        many.extend_from_slice(&[0xF1, 0x90]);
    }
    expect_nrc(
        &mut e,
        &many,
        t,
        Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT,
    );
    // Response too long for the transport.
    let mut e = engine_with(t, |c| c.max_response_len = 24);
    expect_nrc(
        &mut e,
        &[0x22, 0xF1, 0x90, 0xF1, 0x87],
        t,
        Nrc::RESPONSE_TOO_LONG,
    );
    assert_eq!(ask(&mut e, &[0x22, 0xF1, 0x90], t).len(), 20);
}

// ---------------------------------------------------------------------------------------------
// DTCs

const P0301: [u8; 4] = [0x03, 0x01, 0x00, 0xAB];
const P0420: [u8; 4] = [0x04, 0x20, 0x00, 0x24];

#[test]
fn read_dtc_information_subfunctions() {
    let t = Instant::now();
    let mut e = engine(t);
    expect(
        &mut e,
        &[0x19, 0x01, 0xFF],
        t,
        &[0x59, 0x01, 0xFF, 0x00, 0x00, 0x02],
    );
    expect(
        &mut e,
        &[0x19, 0x01, 0x08],
        t,
        &[0x59, 0x01, 0xFF, 0x00, 0x00, 0x01],
    );
    expect(
        &mut e,
        &[0x19, 0x01, 0x40],
        t,
        &[0x59, 0x01, 0xFF, 0x00, 0x00, 0x00],
    );
    let mut want = vec![0x59, 0x02, 0xFF];
    want.extend_from_slice(&P0301);
    expect(&mut e, &[0x19, 0x02, 0x08], t, &want);
    want.extend_from_slice(&P0420);
    expect(&mut e, &[0x19, 0x02, 0x24], t, &want);
    let mut want = vec![0x59, 0x0A, 0xFF];
    want.extend_from_slice(&P0301);
    want.extend_from_slice(&P0420);
    expect(&mut e, &[0x19, 0x0A], t, &want);
    // Availability mask limits what is reported.
    let mut e = engine_with(t, |c| c.dtc_status_availability = 0x09);
    expect(
        &mut e,
        &[0x19, 0x02, 0xFF],
        t,
        &[0x59, 0x02, 0x09, 0x03, 0x01, 0x00, 0x09],
    );
}

#[test]
fn read_dtc_information_negative() {
    let t = Instant::now();
    let mut e = engine(t);
    let e13 = Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT;
    expect_nrc(&mut e, &[0x19], t, e13);
    expect_nrc(&mut e, &[0x19, 0x01], t, e13);
    expect_nrc(&mut e, &[0x19, 0x02, 0xFF, 0x00], t, e13);
    expect_nrc(&mut e, &[0x19, 0x0A, 0x00], t, e13);
    expect_nrc(
        &mut e,
        &[0x19, 0x42, 0xFF],
        t,
        Nrc::SUB_FUNCTION_NOT_SUPPORTED,
    );
    expect_nrc(
        &mut e,
        &[0x19, 0x81, 0xFF],
        t,
        Nrc::SUB_FUNCTION_NOT_SUPPORTED,
    );
    expect_silent(&mut e, &[0x19, 0x42, 0xFF], true, t);
}

#[test]
fn clear_diagnostic_information() {
    let t = Instant::now();
    let mut e = engine(t);
    expect_nrc(
        &mut e,
        &[0x14, 0xFF, 0xFF],
        t,
        Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT,
    );
    expect_nrc(
        &mut e,
        &[0x14, 0x12, 0x34, 0x56],
        t,
        Nrc::REQUEST_OUT_OF_RANGE,
    );
    // One DTC by its number.
    expect(&mut e, &[0x14, 0x03, 0x01, 0x00], t, &[0x54]);
    let mut want = vec![0x59, 0x0A, 0xFF, 0x03, 0x01, 0x00, dtc_status::AFTER_CLEAR];
    want.extend_from_slice(&P0420);
    expect(&mut e, &[0x19, 0x0A], t, &want);
    // All, with the optional memory selection byte.
    expect(&mut e, &[0x14, 0xFF, 0xFF, 0xFF, 0x00], t, &[0x54]);
    expect(&mut e, &[0x19, 0x02, 0x2F], t, &[0x59, 0x02, 0xFF]);
    expect(
        &mut e,
        &[0x19, 0x01, 0xFF],
        t,
        &[0x59, 0x01, 0xFF, 0x00, 0x00, 0x02],
    );
    expect(
        &mut e,
        &[0x19, 0x0A],
        t,
        &[
            0x59, 0x0A, 0xFF, 0x03, 0x01, 0x00, 0x50, 0x04, 0x20, 0x00, 0x50,
        ],
    );
    expect(&mut e, &[0x03], t, &[0x43, 0x00]);
}

// ---------------------------------------------------------------------------------------------
// ECUReset and response-pending

#[test]
fn ecu_reset_pending_then_final_and_state_reset() {
    let t = Instant::now();
    let mut e = engine(t);
    enter(&mut e, 0x03, t);
    unlock(&mut e, 0x01, t);
    match e.handle(&[0x11, 0x01], false, t) {
        EcuAction::Pending { response, final_at } => {
            assert_eq!(&response[..], [0x7F, 0x11, 0x78]);
            assert_eq!(final_at, t + ms(200));
        }
        other => panic!("{other:?}"),
    }
    // While resetting: busy, except a suppressed tester present.
    expect_nrc(
        &mut e,
        &[0x22, 0xF1, 0x90],
        t + ms(100),
        Nrc::BUSY_REPEAT_REQUEST,
    );
    expect_silent(&mut e, &[0x3E, 0x80], false, t + ms(100));
    assert_eq!(e.poll(t + ms(199)), None);
    assert_eq!(e.poll(t + ms(200)).as_deref(), Some(&[0x51, 0x01][..]));
    assert_eq!(e.session(), Session::Default);
    assert_eq!(e.security_level(), None);
    // After the reset it answers again.
    assert_eq!(ask(&mut e, &[0x22, 0xF1, 0x90], t + ms(201))[0], 0x62);
}

#[test]
fn ecu_reset_variants_and_negative() {
    let t = Instant::now();
    let mut e = engine(t);
    let (fin, t) = expect_pending(&mut e, &[0x11, 0x03], t, ms(200));
    assert_eq!(fin, [0x51, 0x03]);
    // Suppress bit: once 0x78 went out, the final positive response is still sent.
    let (fin, t) = expect_pending(&mut e, &[0x11, 0x82], t, ms(200));
    assert_eq!(fin, [0x51, 0x02]);
    expect_nrc(&mut e, &[0x11, 0x04], t, Nrc::SUB_FUNCTION_NOT_SUPPORTED);
    expect_nrc(&mut e, &[0x11, 0x00], t, Nrc::SUB_FUNCTION_NOT_SUPPORTED);
    expect_nrc(
        &mut e,
        &[0x11],
        t,
        Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT,
    );
    expect_nrc(
        &mut e,
        &[0x11, 0x01, 0x00],
        t,
        Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT,
    );
}

#[test]
fn long_operation_repeats_response_pending() {
    let t = Instant::now();
    let mut e = engine_with(t, |c| c.pending.erase = ms(5000));
    enter(&mut e, 0x02, t);
    unlock(&mut e, 0x01, t);
    let EcuAction::Pending { final_at, .. } = e.handle(&[0x31, 0x01, 0xFF, 0x00], false, t) else {
        panic!("expected pending");
    };
    assert_eq!(final_at, t + ms(5000));
    assert_eq!(e.poll_at(), Some(t + ms(2000)));
    assert_eq!(
        e.poll(t + ms(2000)).as_deref(),
        Some(&[0x7F, 0x31, 0x78][..])
    );
    assert_eq!(e.poll_at(), Some(t + ms(4000)));
    assert_eq!(
        e.poll(t + ms(4000)).as_deref(),
        Some(&[0x7F, 0x31, 0x78][..])
    );
    assert_eq!(e.poll_at(), Some(t + ms(5000)));
    assert_eq!(
        e.poll(t + ms(5000)).as_deref(),
        Some(&[0x71, 0x01, 0xFF, 0x00, 0x00][..])
    );
    assert_eq!(e.poll(t + ms(5000)), None);
    // S3 restarted when the final response went out.
    assert_eq!(e.poll_at(), Some(t + ms(10_000)));
}

#[test]
fn every_request_pending_when_configured() {
    let t = Instant::now();
    let mut e = engine_with(t, |c| c.pending.all_requests = Some(ms(300)));
    let (fin, t) = expect_pending(&mut e, &[0x22, 0xF1, 0x8C], t, ms(300));
    assert_eq!(&fin[..3], [0x62, 0xF1, 0x8C]);
    let (fin, _) = expect_pending(&mut e, &[0x22, 0x00, 0x01], t, ms(300));
    assert_eq!(fin, [0x7F, 0x22, 0x31]);
}

// ---------------------------------------------------------------------------------------------
// SecurityAccess

#[test]
fn security_access_seed_key_and_zero_seed_when_unlocked() {
    let t = Instant::now();
    let mut e = engine(t);
    enter(&mut e, 0x03, t);
    let r = ask(&mut e, &[0x27, 0x01], t);
    assert_eq!(r.len(), 6);
    assert_ne!(&r[2..], [0, 0, 0, 0]);
    let key = default_key(0x01, r[2..6].try_into().expect("seed"));
    expect(
        &mut e,
        &[0x27, 0x02, key[0], key[1], key[2], key[3]],
        t,
        &[0x67, 0x02],
    );
    assert_eq!(e.security_level(), Some(0x01));
    expect(&mut e, &[0x27, 0x01], t, &[0x67, 0x01, 0, 0, 0, 0]);
    // Level 3 is a separate level.
    unlock(&mut e, 0x03, t);
    // Leaving the session locks again.
    enter(&mut e, 0x02, t);
    assert_eq!(e.security_level(), None);
}

#[test]
fn security_access_negative_responses() {
    let t = Instant::now();
    let mut e = engine(t);
    enter(&mut e, 0x03, t);
    let e13 = Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT;
    expect_nrc(&mut e, &[0x27], t, e13);
    expect_nrc(&mut e, &[0x27, 0x00], t, Nrc::SUB_FUNCTION_NOT_SUPPORTED);
    expect_nrc(&mut e, &[0x27, 0x05], t, Nrc::SUB_FUNCTION_NOT_SUPPORTED);
    expect_nrc(
        &mut e,
        &[0x27, 0x06, 1, 2, 3, 4],
        t,
        Nrc::SUB_FUNCTION_NOT_SUPPORTED,
    );
    expect_nrc(&mut e, &[0x27, 0x7F], t, Nrc::SUB_FUNCTION_NOT_SUPPORTED);
    // Key without seed: sequence error.
    expect_nrc(
        &mut e,
        &[0x27, 0x02, 1, 2, 3, 4],
        t,
        Nrc::REQUEST_SEQUENCE_ERROR,
    );
    // Key for another level than the seed.
    let _ = ask(&mut e, &[0x27, 0x01], t);
    expect_nrc(
        &mut e,
        &[0x27, 0x04, 1, 2, 3, 4],
        t,
        Nrc::REQUEST_SEQUENCE_ERROR,
    );
    // Wrong key length.
    let _ = ask(&mut e, &[0x27, 0x01], t);
    expect_nrc(&mut e, &[0x27, 0x02, 1, 2, 3], t, e13);
    expect_nrc(&mut e, &[0x27, 0x02], t, e13);
}

#[test]
fn security_access_lockout_and_recovery() {
    let t0 = Instant::now();
    let mut e = engine(t0);
    enter(&mut e, 0x03, t0);
    let mut t = t0;
    let wrong = |e: &mut Ecu, t: Instant| {
        let r = ask(e, &[0x27, 0x01], t);
        let key = default_key(0x01, r[2..6].try_into().expect("seed"));
        let bad = [key[0] ^ 0xFF, key[1], key[2], key[3]];
        ask(e, &[0x27, 0x02, bad[0], bad[1], bad[2], bad[3]], t)
    };
    assert_eq!(wrong(&mut e, t), [0x7F, 0x27, 0x35]);
    // A seed answers one key only: the same key again is a sequence error.
    expect_nrc(
        &mut e,
        &[0x27, 0x02, 0, 0, 0, 0],
        t,
        Nrc::REQUEST_SEQUENCE_ERROR,
    );
    t += ms(1000);
    assert_eq!(wrong(&mut e, t), [0x7F, 0x27, 0x35]);
    t += ms(1000);
    assert_eq!(wrong(&mut e, t), [0x7F, 0x27, 0x36]);
    assert_eq!(e.security_locked_until(), Some(t + ms(10_000)));
    // Seeds refused during the delay, even after a session change.
    expect_nrc(
        &mut e,
        &[0x27, 0x01],
        t + ms(4000),
        Nrc::REQUIRED_TIME_DELAY_NOT_EXPIRED,
    );
    enter(&mut e, 0x03, t + ms(6000));
    expect_nrc(
        &mut e,
        &[0x27, 0x03],
        t + ms(9999),
        Nrc::REQUIRED_TIME_DELAY_NOT_EXPIRED,
    );
    // After the delay the right key works.
    unlock(&mut e, 0x01, t + ms(10_000));
}

// ---------------------------------------------------------------------------------------------
// CommunicationControl, ControlDTCSetting

#[test]
fn communication_control_and_control_dtc_setting() {
    let t = Instant::now();
    let mut e = engine(t);
    enter(&mut e, 0x03, t);
    expect(&mut e, &[0x28, 0x03, 0x01], t, &[0x68, 0x03]);
    expect(&mut e, &[0x28, 0x00, 0x03], t, &[0x68, 0x00]);
    expect_silent(&mut e, &[0x28, 0x81, 0x01], false, t);
    expect_nrc(
        &mut e,
        &[0x28, 0x04, 0x01],
        t,
        Nrc::SUB_FUNCTION_NOT_SUPPORTED,
    );
    expect_nrc(&mut e, &[0x28, 0x00, 0x00], t, Nrc::REQUEST_OUT_OF_RANGE);
    expect_nrc(
        &mut e,
        &[0x28, 0x00],
        t,
        Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT,
    );
    expect(&mut e, &[0x85, 0x02], t, &[0xC5, 0x02]);
    assert!(!e.dtc_setting_on());
    expect_silent(&mut e, &[0x85, 0x81, 0xFF, 0xFF, 0xFF], false, t);
    assert!(e.dtc_setting_on());
    expect_nrc(&mut e, &[0x85, 0x03], t, Nrc::SUB_FUNCTION_NOT_SUPPORTED);
    expect_nrc(
        &mut e,
        &[0x85],
        t,
        Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT,
    );
}

// ---------------------------------------------------------------------------------------------
// RoutineControl

#[test]
fn routine_control_erase_positive_and_results() {
    let t = Instant::now();
    let mut e = engine(t);
    enter(&mut e, 0x02, t);
    unlock(&mut e, 0x01, t);
    expect_nrc(
        &mut e,
        &[0x31, 0x03, 0xFF, 0x00],
        t,
        Nrc::REQUEST_SEQUENCE_ERROR,
    );
    // Erase a range given as ALFID 0x44, address, size.
    let (fin, t) = expect_pending(
        &mut e,
        &[0x31, 0x01, 0xFF, 0x00, 0x44, 0, 0, 0, 0, 0, 0x10, 0, 0],
        t,
        ms(1500),
    );
    assert_eq!(fin, [0x71, 0x01, 0xFF, 0x00, 0x00]);
    expect(
        &mut e,
        &[0x31, 0x03, 0xFF, 0x00],
        t,
        &[0x71, 0x03, 0xFF, 0x00, 0x00],
    );
}

#[test]
fn routine_control_negative() {
    let t = Instant::now();
    let mut e = engine(t);
    enter(&mut e, 0x03, t);
    let e13 = Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT;
    // Erase is a programming-session routine.
    expect_nrc(
        &mut e,
        &[0x31, 0x01, 0xFF, 0x00],
        t,
        Nrc::REQUEST_OUT_OF_RANGE,
    );
    enter(&mut e, 0x02, t);
    let locked: &[(&[u8], Nrc)] = &[
        (&[0x31, 0x01, 0xFF, 0x00], Nrc::SECURITY_ACCESS_DENIED),
        (&[0x31, 0x01, 0x12, 0x34], Nrc::REQUEST_OUT_OF_RANGE),
        (&[0x31, 0x04, 0xFF, 0x00], Nrc::SUB_FUNCTION_NOT_SUPPORTED),
        (&[0x31, 0x00, 0xFF, 0x00], Nrc::SUB_FUNCTION_NOT_SUPPORTED),
        (&[0x31, 0x02, 0xFF, 0x00], Nrc::SUB_FUNCTION_NOT_SUPPORTED),
        (&[0x31, 0x01, 0xFF], e13),
        (&[0x31], e13),
    ];
    for (req, nrc) in locked {
        expect_nrc(&mut e, req, t, *nrc);
    }
    expect_silent(&mut e, &[0x31, 0x01, 0x12, 0x34], true, t);
    unlock(&mut e, 0x01, t);
    let unlocked: &[(&[u8], Nrc)] = &[
        // Bad ALFID, wrong option length, range outside the 4 MiB flash.
        (
            &[0x31, 0x01, 0xFF, 0x00, 0x50, 0, 0, 0, 0, 0],
            Nrc::REQUEST_OUT_OF_RANGE,
        ),
        (&[0x31, 0x01, 0xFF, 0x00, 0x44, 0, 0, 0, 0, 0, 0x10, 0], e13),
        (
            &[0x31, 0x01, 0xFF, 0x00, 0x44, 0, 0x40, 0, 0, 0, 0, 0, 1],
            Nrc::REQUEST_OUT_OF_RANGE,
        ),
        // Check routine before any download.
        (&[0x31, 0x01, 0x02, 0x02], Nrc::REQUEST_SEQUENCE_ERROR),
        (&[0x31, 0x03, 0x02, 0x02], Nrc::REQUEST_SEQUENCE_ERROR),
    ];
    for (req, nrc) in unlocked {
        expect_nrc(&mut e, req, t, *nrc);
    }
}

// ---------------------------------------------------------------------------------------------
// RequestDownload / TransferData / RequestTransferExit

/// Deterministic test image.
fn image(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn download_one_mebibyte_with_crc() {
    let t0 = Instant::now();
    let mut e = engine(t0);
    let t = ready_to_flash(&mut e, t0);
    let data = image(1024 * 1024);
    // 34 00 44 addr(4) size(4): 1 MiB at 0x00010000.
    expect(
        &mut e,
        &[
            0x34, 0x00, 0x44, 0x00, 0x01, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00,
        ],
        t,
        &[0x74, 0x20, 0x0F, 0xFF],
    );
    // maxNumberOfBlockLength 4095 = SID + counter + 4093 bytes.
    let mut counter: u8 = 1;
    let mut blocks = 0u32;
    for chunk in data.chunks(4093) {
        let mut req = Vec::with_capacity(2 + chunk.len());
        req.extend_from_slice(&[0x36, counter]);
        req.extend_from_slice(chunk);
        expect(&mut e, &req, t, &[0x76, counter]);
        counter = counter.wrapping_add(1);
        blocks += 1;
    }
    assert!(blocks > 256, "the counter wrapped at least once");
    assert_eq!(e.download_progress(), Some(1024 * 1024));
    let crc = crc32(&data);
    let (fin, t) = expect_pending(&mut e, &[0x37], t, ms(300));
    let mut want = vec![0x77];
    want.extend_from_slice(&crc.to_be_bytes());
    assert_eq!(fin, want);
    let summary = e.last_download().expect("completed");
    assert_eq!(summary.crc32, crc);
    assert_eq!(summary.size, 1024 * 1024);
    assert_eq!(summary.address, 0x0001_0000);
    assert_eq!(summary.blocks, blocks);
    assert_eq!(e.downloads_completed(), 1);
    // The check routine compares with the tester's CRC.
    let c = crc.to_be_bytes();
    let mut want = vec![0x71, 0x01, 0x02, 0x02, 0x00];
    want.extend_from_slice(&c);
    expect(
        &mut e,
        &[0x31, 0x01, 0x02, 0x02, c[0], c[1], c[2], c[3]],
        t,
        &want,
    );
    want[1] = 0x03;
    expect(&mut e, &[0x31, 0x03, 0x02, 0x02], t, &want);
    let mut want = vec![0x71, 0x01, 0x02, 0x02, 0x01];
    want.extend_from_slice(&c);
    expect(
        &mut e,
        &[0x31, 0x01, 0x02, 0x02, c[0] ^ 1, c[1], c[2], c[3]],
        t,
        &want,
    );
}

#[test]
fn transfer_data_counter_rules() {
    let t0 = Instant::now();
    let mut e = engine(t0);
    let t = ready_to_flash(&mut e, t0);
    expect_nrc(&mut e, &[0x36, 0x01, 0xAA], t, Nrc::REQUEST_SEQUENCE_ERROR);
    expect_nrc(&mut e, &[0x37], t, Nrc::REQUEST_SEQUENCE_ERROR);
    expect(
        &mut e,
        &[0x34, 0x00, 0x11, 0x00, 0x08],
        t,
        &[0x74, 0x20, 0x0F, 0xFF],
    );
    expect_nrc(
        &mut e,
        &[0x36, 0x02, 1, 2, 3, 4],
        t,
        Nrc::WRONG_BLOCK_SEQUENCE_COUNTER,
    );
    expect_nrc(
        &mut e,
        &[0x36, 0x00, 1, 2, 3, 4],
        t,
        Nrc::WRONG_BLOCK_SEQUENCE_COUNTER,
    );
    expect_nrc(
        &mut e,
        &[0x36, 0x01],
        t,
        Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT,
    );
    expect_nrc(
        &mut e,
        &[0x36],
        t,
        Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT,
    );
    expect(&mut e, &[0x36, 0x01, 1, 2, 3, 4], t, &[0x76, 0x01]);
    // A repeat of the last block is acknowledged and not written twice.
    expect(&mut e, &[0x36, 0x01, 1, 2, 3, 4], t, &[0x76, 0x01]);
    assert_eq!(e.download_progress(), Some(4));
    // Incomplete: exit refused.
    expect_nrc(&mut e, &[0x37], t, Nrc::REQUEST_SEQUENCE_ERROR);
    // More than requested: suspended.
    expect_nrc(
        &mut e,
        &[0x36, 0x02, 5, 6, 7, 8, 9],
        t,
        Nrc::TRANSFER_DATA_SUSPENDED,
    );
    expect(&mut e, &[0x36, 0x02, 5, 6, 7, 8], t, &[0x76, 0x02]);
    let (fin, _) = expect_pending(&mut e, &[0x37], t, ms(300));
    let mut want = vec![0x77];
    want.extend_from_slice(&crc32(&[1, 2, 3, 4, 5, 6, 7, 8]).to_be_bytes());
    assert_eq!(fin, want);
}

#[test]
fn request_download_negative() {
    let t0 = Instant::now();
    let mut e = engine(t0);
    enter(&mut e, 0x02, t0);
    let e13 = Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT;
    let ok_req = [0x34, 0x00, 0x44, 0, 0, 0, 0, 0, 0, 0x10, 0];
    expect_nrc(&mut e, &ok_req, t0, Nrc::SECURITY_ACCESS_DENIED);
    unlock(&mut e, 0x01, t0);
    // Not erased yet.
    expect_nrc(&mut e, &ok_req, t0, Nrc::UPLOAD_DOWNLOAD_NOT_ACCEPTED);
    let (_, t) = expect_pending(&mut e, &[0x31, 0x01, 0xFF, 0x00], t0, ms(1500));
    expect_nrc(&mut e, &[0x34, 0x00], t, e13);
    expect_nrc(&mut e, &[0x34, 0x00, 0x44, 0, 0, 0, 0, 0, 0, 0x10], t, e13);
    expect_nrc(
        &mut e,
        &[0x34, 0x00, 0x05, 0, 0, 0, 0, 0],
        t,
        Nrc::REQUEST_OUT_OF_RANGE,
    );
    expect_nrc(
        &mut e,
        &[0x34, 0x11, 0x44, 0, 0, 0, 0, 0, 0, 0x10, 0],
        t,
        Nrc::REQUEST_OUT_OF_RANGE,
    );
    // Beyond the 4 MiB flash; zero size.
    expect_nrc(
        &mut e,
        &[0x34, 0x00, 0x44, 0, 0x40, 0, 0, 0, 0, 0, 1],
        t,
        Nrc::REQUEST_OUT_OF_RANGE,
    );
    expect_nrc(
        &mut e,
        &[0x34, 0x00, 0x44, 0, 0, 0, 0, 0, 0, 0, 0],
        t,
        Nrc::REQUEST_OUT_OF_RANGE,
    );
    expect(&mut e, &ok_req, t, &[0x74, 0x20, 0x0F, 0xFF]);
    // A second download while one is active; an erase while one is active.
    expect_nrc(&mut e, &ok_req, t, Nrc::CONDITIONS_NOT_CORRECT);
    expect_nrc(
        &mut e,
        &[0x31, 0x01, 0xFF, 0x00],
        t,
        Nrc::CONDITIONS_NOT_CORRECT,
    );
    // Block longer than maxNumberOfBlockLength.
    let mut big = vec![0x36, 0x01];
    big.extend_from_slice(&[0u8; 4094]);
    expect_nrc(&mut e, &big, t, e13);
    // Leaving the programming session aborts the download.
    enter(&mut e, 0x03, t);
    enter(&mut e, 0x02, t);
    expect_nrc(&mut e, &[0x36, 0x01, 0xAA], t, Nrc::REQUEST_SEQUENCE_ERROR);
}

#[test]
fn programming_failure_and_large_block_length() {
    let t0 = Instant::now();
    let mut e = engine_with(t0, |c| {
        c.flash.fail_after = Some(6);
        c.flash.max_block_length = 70_000;
        c.max_response_len = 1 << 20;
    });
    let t = ready_to_flash(&mut e, t0);
    // maxNumberOfBlockLength above 0xFFFF is announced on 4 bytes.
    expect(
        &mut e,
        &[0x34, 0x00, 0x12, 0x00, 0x10, 0x10],
        t,
        &[0x74, 0x40, 0x00, 0x01, 0x11, 0x70],
    );
    expect(&mut e, &[0x36, 0x01, 1, 2, 3, 4], t, &[0x76, 0x01]);
    expect_nrc(
        &mut e,
        &[0x36, 0x02, 5, 6, 7],
        t,
        Nrc::GENERAL_PROGRAMMING_FAILURE,
    );
}

#[test]
fn erase_not_required_when_configured() {
    let t0 = Instant::now();
    let mut e = engine_with(t0, |c| c.flash.require_erase = false);
    enter(&mut e, 0x02, t0);
    unlock(&mut e, 0x01, t0);
    expect(
        &mut e,
        &[0x34, 0x00, 0x11, 0x00, 0x02],
        t0,
        &[0x74, 0x20, 0x0F, 0xFF],
    );
}

#[test]
fn final_response_kept_when_a_request_comes_before_poll() {
    let t = Instant::now();
    let mut e = engine(t);
    enter(&mut e, 0x02, t);
    unlock(&mut e, 0x01, t);
    assert!(matches!(
        e.handle(&[0x31, 0x01, 0xFF, 0x00], false, t),
        EcuAction::Pending { .. }
    ));
    // The transport handles a new slow request after the erase finished but before it polled.
    let EcuAction::Pending { final_at, .. } = e.handle(&[0x11, 0x01], false, t + ms(1600)) else {
        panic!("reset answers pending");
    };
    assert_eq!(final_at, t + ms(1800));
    assert_eq!(e.poll_at(), Some(t + ms(1500)));
    assert_eq!(
        e.poll(t + ms(1600)).as_deref(),
        Some(&[0x71, 0x01, 0xFF, 0x00, 0x00][..])
    );
    assert_eq!(e.poll_at(), Some(t + ms(1800)));
    assert_eq!(e.poll(t + ms(1700)), None);
    assert_eq!(e.poll(t + ms(1800)).as_deref(), Some(&[0x51, 0x01][..]));
}
