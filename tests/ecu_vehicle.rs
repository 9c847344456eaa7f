//! The simulated vehicle: address plan, functional OBD-II requests answered by the right
//! ECUs, live data, the description, the UDS helpers against the simulator, and the
//! never-panic property.

use obdgw::router::frame::CanId;
use obdgw::sim::ecu::{
    DEFAULT_VIN, EcuAction, EcuAddress, EcuConfig, EcuIndex, LiveData, Vehicle, VehicleConfig,
    VehicleConfigError,
};
use obdgw::vehicle::uds::{
    KeepAlive, OBD_VIN_REQUEST, READ_VIN_REQUEST, Response, Session, parse_vin_from_obd,
    parse_vin_from_rdbi, tester_present,
};
use proptest::prelude::*;
use std::time::{Duration, Instant};

fn can(id: u16) -> CanId {
    CanId::standard(id).expect("11-bit id")
}

fn respond(action: &EcuAction) -> &[u8] {
    match action {
        EcuAction::Respond(b) => b,
        other => panic!("expected a response, got {other:?}"),
    }
}

/// Functional request; returns (ECU name, response bytes) of the ECUs that answered.
fn functional(v: &mut Vehicle, req: &[u8], now: Instant) -> Vec<(String, Vec<u8>)> {
    v.handle_functional(req, now)
        .into_iter()
        .map(|(i, a)| {
            let name = v.ecu(i).expect("index from vehicle").name().to_owned();
            (name, respond(&a).to_vec())
        })
        .collect()
}

#[test]
fn standard_address_plan() {
    let t = Instant::now();
    let v = Vehicle::standard(DEFAULT_VIN, t);
    assert_eq!(v.vin().as_str(), "1FTFW1E87MFA17359");
    let plan: Vec<(&str, u32, u32, u16)> = v
        .ecus()
        .iter()
        .map(|e| {
            (
                e.ecu.name(),
                e.address.can_request.id(),
                e.address.can_response.id(),
                e.address.doip,
            )
        })
        .collect();
    assert_eq!(
        plan,
        [
            ("engine", 0x7E0, 0x7E8, 0x1000),
            ("transmission", 0x7E1, 0x7E9, 0x1001),
            ("abs", 0x7E2, 0x7EA, 0x1002),
            ("body", 0x740, 0x748, 0x1003),
        ]
    );
    assert_eq!(v.functional_can(), can(0x7DF));
    assert_eq!(v.functional_doip(), 0xE400);
    assert_eq!(v.find_by_can_request(can(0x7E0)), Some(EcuIndex(0)));
    assert_eq!(v.find_by_can_request(can(0x740)), Some(EcuIndex(3)));
    assert_eq!(v.find_by_can_request(can(0x7E8)), None);
    assert_eq!(v.find_by_doip(0x1002), Some(EcuIndex(2)));
    assert_eq!(v.find_by_doip(0xE400), None);
    assert_eq!(v.find_by_name("body"), Some(EcuIndex(3)));
    assert_eq!(v.address(EcuIndex(1)).map(|a| a.doip), Some(0x1001));
    assert_eq!(v.address(EcuIndex(9)), None);
}

#[test]
fn description_lists_vin_ecus_and_addresses() {
    let v = Vehicle::standard(DEFAULT_VIN, Instant::now());
    let text = v.description().to_string();
    for needle in [
        "VIN 1FTFW1E87MFA17359 (check digit ok), 4 ECUs",
        "engine        CAN 0x7E0 -> 0x7E8  DoIP 0x1000  UDS 10 11 14 19 22 27 28 31 34 36 37 3E 85, OBD-II 01 03 04 07 09",
        "body          CAN 0x740 -> 0x748  DoIP 0x1003  UDS 10 11 14 19 22 27 28 31 34 36 37 3E 85\n",
        "functional    CAN 0x7DF           DoIP 0xE400",
        "security access levels 0x01, 0x03",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn config_errors() {
    let t = Instant::now();
    let vin = DEFAULT_VIN;
    let mut c = VehicleConfig::standard(vin);
    c.ecus.clear();
    assert_eq!(Vehicle::new(c, t).err(), Some(VehicleConfigError::NoEcus));

    let mut c = VehicleConfig::standard(vin);
    c.ecus[3].0 = EcuAddress::can11(0x7E1, 0x748, 0x1003);
    let err = Vehicle::new(c, t).expect_err("duplicate CAN id");
    assert_eq!(
        err.to_string(),
        "ECUs \"transmission\" and \"body\" share the CAN id 0x7E1; every ECU needs its own"
    );

    let mut c = VehicleConfig::standard(vin);
    c.ecus[2].0.doip = 0x1000;
    assert!(matches!(
        Vehicle::new(c, t),
        Err(VehicleConfigError::DuplicateAddress {
            what: "DoIP address",
            value: 0x1000,
            ..
        })
    ));

    let mut c = VehicleConfig::standard(vin);
    c.ecus[0].0 = EcuAddress::can11(0x7DF, 0x7E8, 0x1000);
    assert!(matches!(
        Vehicle::new(c, t),
        Err(VehicleConfigError::FunctionalClash { .. })
    ));

    let mut c = VehicleConfig::standard(vin);
    c.ecus[0].0.doip = 0xE400;
    assert!(matches!(
        Vehicle::new(c, t),
        Err(VehicleConfigError::FunctionalClash { .. })
    ));

    assert!(Vehicle::new(VehicleConfig::default(), t).is_ok());
}

#[test]
fn obd_vin_functional_answered_by_engine_only() {
    let t = Instant::now();
    let mut v = Vehicle::standard(DEFAULT_VIN, t);
    let answers = functional(&mut v, &OBD_VIN_REQUEST, t);
    let mut want = vec![0x49, 0x02, 0x01];
    want.extend_from_slice(b"1FTFW1E87MFA17359");
    assert_eq!(answers, [("engine".to_owned(), want.clone())]);
    assert_eq!(parse_vin_from_obd(&want).expect("parses"), DEFAULT_VIN);
    // Physically, the transmission refuses PID 02; the ABS has no OBD at all.
    assert_eq!(
        respond(&v.handle(EcuIndex(1), &[0x09, 0x02], t)),
        [0x7F, 0x09, 0x31]
    );
    assert_eq!(
        respond(&v.handle(EcuIndex(2), &[0x09, 0x02], t)),
        [0x7F, 0x09, 0x11]
    );
}

#[test]
fn uds_vin_from_every_ecu_and_custom_vin() {
    let t = Instant::now();
    let vin = obdgw::vehicle::uds::Vin::parse("WVWZZZ1KZ6W000001").expect("EU VIN");
    let mut v = Vehicle::standard(vin, t);
    let answers = functional(&mut v, &READ_VIN_REQUEST, t);
    assert_eq!(answers.len(), 4);
    for (_, a) in &answers {
        assert_eq!(parse_vin_from_rdbi(a).expect("vin"), vin);
    }
    let EcuAction::Respond(b) = v.handle(EcuIndex(0), &OBD_VIN_REQUEST, t) else {
        panic!("engine answers 09 02");
    };
    assert_eq!(parse_vin_from_obd(&b).expect("vin"), vin);
    assert!(
        v.description()
            .to_string()
            .contains("check digit Z, computed 1")
    );
}

#[test]
fn obd_supported_pid_bitmaps() {
    let t = Instant::now();
    let mut v = Vehicle::standard(DEFAULT_VIN, t);
    assert_eq!(
        functional(&mut v, &[0x01, 0x00], t),
        [
            (
                "engine".to_owned(),
                vec![0x41, 0x00, 0x98, 0x3B, 0x80, 0x13]
            ),
            (
                "transmission".to_owned(),
                vec![0x41, 0x00, 0x80, 0x08, 0x00, 0x10]
            ),
        ]
    );
    // Only the engine has PIDs beyond 0x20.
    assert_eq!(
        functional(&mut v, &[0x01, 0x20], t),
        [(
            "engine".to_owned(),
            vec![0x41, 0x20, 0x80, 0x02, 0xA0, 0x01]
        )]
    );
    assert_eq!(
        functional(&mut v, &[0x01, 0x40], t),
        [(
            "engine".to_owned(),
            vec![0x41, 0x40, 0x44, 0x00, 0x80, 0x10]
        )]
    );
    assert_eq!(functional(&mut v, &[0x01, 0x60], t), []);
    // Several bitmaps in one request.
    assert_eq!(
        respond(&v.handle(EcuIndex(0), &[0x01, 0x00, 0x20], t)),
        [
            0x41, 0x00, 0x98, 0x3B, 0x80, 0x13, 0x20, 0x80, 0x02, 0xA0, 0x01
        ]
    );
    assert_eq!(
        functional(&mut v, &[0x09, 0x00], t),
        [
            (
                "engine".to_owned(),
                vec![0x49, 0x00, 0x50, 0x40, 0x00, 0x00]
            ),
            (
                "transmission".to_owned(),
                vec![0x49, 0x00, 0x10, 0x40, 0x00, 0x00]
            ),
        ]
    );
    let mut name = vec![0x49, 0x0A, 0x01];
    name.extend_from_slice(b"ECM\0-EngineControl\0\0");
    assert_eq!(respond(&v.handle(EcuIndex(0), &[0x09, 0x0A], t)), name);
    let mut cal = vec![0x49, 0x04, 0x01];
    cal.extend_from_slice(b"CAL8W0907115B03\0");
    assert_eq!(respond(&v.handle(EcuIndex(0), &[0x09, 0x04], t)), cal);
}

#[test]
fn obd_live_data_changes_plausibly_with_time() {
    let t0 = Instant::now();
    let mut v = Vehicle::standard(DEFAULT_VIN, t0);
    let read = |v: &mut Vehicle, at: Duration| {
        let r = respond(&v.handle(EcuIndex(0), &[0x01, 0x0C, 0x0D, 0x05], t0 + at)).to_vec();
        assert_eq!(r.len(), 1 + 3 + 2 + 2, "{r:02X?}");
        assert_eq!((r[0], r[1], r[4], r[6]), (0x41, 0x0C, 0x0D, 0x05));
        let rpm = f64::from(u16::from_be_bytes([r[2], r[3]])) / 4.0;
        let speed = r[5];
        let coolant = i32::from(r[7]) - 40;
        (rpm, speed, coolant)
    };
    let (rpm, speed, coolant) = read(&mut v, Duration::from_secs(5));
    assert_eq!(speed, 0);
    assert!((760.0..=800.0).contains(&rpm), "idle rpm {rpm}");
    assert!((20..=25).contains(&coolant), "cold engine {coolant}");
    let (rpm, speed, _) = read(&mut v, Duration::from_secs(60));
    assert_eq!(speed, 50);
    assert!((1500.0..=3000.0).contains(&rpm), "cruise rpm {rpm}");
    let (_, speed, coolant) = read(&mut v, Duration::from_secs(120));
    assert_eq!(speed, 100);
    assert!(coolant > 40, "warming up {coolant}");
    let (_, _, coolant) = read(&mut v, Duration::from_secs(1800));
    assert_eq!(coolant, 90);
    // The answer matches the model.
    let live = LiveData::at(Duration::from_secs(60));
    assert_eq!(live.speed_kmh, 50.0);
    // Transmission reports the same vehicle speed.
    assert_eq!(
        respond(&v.handle(EcuIndex(1), &[0x01, 0x0D], t0 + Duration::from_secs(120))),
        [0x41, 0x0D, 100]
    );
    // Monitor status: MIL on, one confirmed DTC.
    assert_eq!(
        respond(&v.handle(EcuIndex(0), &[0x01, 0x01], t0)),
        [0x41, 0x01, 0x81, 0x07, 0x65, 0x00]
    );
    // Control module voltage around 14.1 V; distance since clear grows.
    let r = respond(&v.handle(EcuIndex(0), &[0x01, 0x42, 0x31], t0)).to_vec();
    let mv = u16::from_be_bytes([r[2], r[3]]);
    assert!((14_000..=14_200).contains(&mv), "{mv} mV");
    assert_eq!((r[4], u16::from_be_bytes([r[5], r[6]])), (0x31, 1523));
}

#[test]
fn obd_dtcs_and_clear() {
    let t = Instant::now();
    let mut v = Vehicle::standard(DEFAULT_VIN, t);
    assert_eq!(
        functional(&mut v, &[0x03], t),
        [
            ("engine".to_owned(), vec![0x43, 0x01, 0x03, 0x01]),
            ("transmission".to_owned(), vec![0x43, 0x00]),
        ]
    );
    assert_eq!(
        functional(&mut v, &[0x07], t),
        [
            ("engine".to_owned(), vec![0x47, 0x01, 0x04, 0x20]),
            ("transmission".to_owned(), vec![0x47, 0x00]),
        ]
    );
    // Length errors are answered even functionally.
    assert_eq!(
        functional(&mut v, &[0x03, 0x00], t),
        [
            ("engine".to_owned(), vec![0x7F, 0x03, 0x13]),
            ("transmission".to_owned(), vec![0x7F, 0x03, 0x13]),
        ]
    );
    assert_eq!(
        functional(&mut v, &[0x04], t),
        [
            ("engine".to_owned(), vec![0x44]),
            ("transmission".to_owned(), vec![0x44])
        ]
    );
    assert_eq!(respond(&v.handle(EcuIndex(0), &[0x03], t)), [0x43, 0x00]);
    assert_eq!(
        respond(&v.handle(EcuIndex(0), &[0x01, 0x01, 0x31], t)),
        [0x41, 0x01, 0x00, 0x07, 0x65, 0x00, 0x31, 0x00, 0x00]
    );
    // The ABS keeps its UDS DTC (OBD-II 04 does not reach it).
    assert_eq!(
        respond(&v.handle(EcuIndex(2), &[0x19, 0x02, 0x08], t)),
        [0x59, 0x02, 0xFF, 0x40, 0x35, 0x31, 0x29]
    );
}

#[test]
fn functional_unsupported_requests_are_silent() {
    let t = Instant::now();
    let mut v = Vehicle::standard(DEFAULT_VIN, t);
    assert_eq!(functional(&mut v, &[0x23, 0x00], t), []);
    assert_eq!(functional(&mut v, &[0x01, 0x99], t), []);
    assert_eq!(functional(&mut v, &[0x27, 0x01], t), []);
    assert_eq!(functional(&mut v, &tester_present(true), t), []);
    assert_eq!(functional(&mut v, &[0x10, 0x83], t), []);
    assert!(
        v.ecus()
            .iter()
            .all(|e| e.ecu.session() == Session::Extended)
    );
    assert_eq!(functional(&mut v, &[0x3E, 0x00], t).len(), 4);
}

#[test]
fn vehicle_poll_collects_pending_and_session_timeouts() {
    let t0 = Instant::now();
    let mut v = Vehicle::standard(DEFAULT_VIN, t0);
    assert_eq!(v.poll_at(), None);
    let _ = v.handle(EcuIndex(1), &[0x10, 0x03], t0);
    let EcuAction::Pending { final_at, .. } = v.handle(EcuIndex(0), &[0x11, 0x01], t0) else {
        panic!("reset answers pending");
    };
    assert_eq!(v.poll_at(), Some(final_at));
    assert_eq!(
        v.poll(final_at),
        Some((EcuIndex(0), vec![0x51, 0x01].into()))
    );
    assert_eq!(v.poll(final_at), None);
    assert_eq!(v.poll_at(), Some(t0 + Duration::from_secs(5)));
    assert_eq!(v.poll(t0 + Duration::from_secs(5)), None);
    assert_eq!(
        v.ecu(EcuIndex(1)).map(|e| e.session()),
        Some(Session::Default)
    );
    assert_eq!(v.poll_at(), None);
}

#[test]
fn keep_alive_scheduler_holds_the_simulated_session() {
    // The box's keep-alive against the simulator, on simulated time for two minutes.
    let t0 = Instant::now();
    let mut v = Vehicle::standard(DEFAULT_VIN, t0);
    let engine = EcuIndex(0);
    let mut ka = KeepAlive::default();
    let resp = respond(&v.handle(engine, &[0x10, 0x03], t0)).to_vec();
    ka.observe_response(&Response::parse(&resp).expect("parses"), t0);
    let mut now = t0;
    let end = t0 + Duration::from_secs(120);
    let mut sent = 0;
    while now < end {
        let next = [ka.poll_at(), v.poll_at()]
            .into_iter()
            .flatten()
            .min()
            .expect("something is scheduled");
        now = next;
        while v.poll(now).is_some() {}
        if let Some(req) = ka.poll(now) {
            assert_eq!(v.handle(engine, &req, now), EcuAction::None);
            sent += 1;
        }
        assert_eq!(
            v.ecu(engine).map(|e| e.session()),
            Some(Session::Extended),
            "at {:?}",
            now - t0
        );
    }
    assert!(sent >= 59, "{sent} keep-alives");
    // Stopping the keep-alive lets the session time out.
    let resp = respond(&v.handle(engine, &[0x10, 0x01], now)).to_vec();
    ka.observe_response(&Response::parse(&resp).expect("parses"), now);
    assert_eq!(ka.poll_at(), None);
}

#[test]
fn custom_ecu_set() {
    let t = Instant::now();
    let vin = DEFAULT_VIN;
    let config = VehicleConfig {
        vin,
        ecus: vec![
            (
                EcuAddress::can11(0x7E0, 0x7E8, 0x0E80),
                EcuConfig::engine(vin),
            ),
            (
                EcuAddress::can11(0x7E4, 0x7EC, 0x0E81),
                EcuConfig::body(vin),
            ),
        ],
        functional_can: can(0x7DF),
        functional_doip: 0xE401,
    };
    let mut v = Vehicle::new(config, t).expect("valid plan");
    assert_eq!(v.find_by_doip(0x0E81), Some(EcuIndex(1)));
    assert_eq!(functional(&mut v, &READ_VIN_REQUEST, t).len(), 2);
}

fn arb_request() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..16),
        // Known service ids with random tails reach deeper.
        (
            proptest::sample::select(vec![
                0x01u8, 0x03, 0x04, 0x07, 0x09, 0x10, 0x11, 0x14, 0x19, 0x22, 0x27, 0x28, 0x31,
                0x34, 0x36, 0x37, 0x3E, 0x85
            ]),
            proptest::collection::vec(any::<u8>(), 0..12)
        )
            .prop_map(|(sid, mut tail)| {
                tail.insert(0, sid);
                tail
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// No sequence of requests makes an ECU panic, and every answer is a well-formed
    /// response to the service asked.
    #[test]
    fn no_request_panics_and_answers_are_well_formed(
        setup in proptest::sample::select(vec![0u8, 1, 2, 3]),
        steps in proptest::collection::vec((arb_request(), any::<bool>(), 0u64..3000), 1..24),
    ) {
        let t0 = Instant::now();
        let mut v = Vehicle::standard(DEFAULT_VIN, t0);
        let mut now = t0;
        // Start some runs deep in a session (programming, unlocked) to reach more code.
        if setup > 0 {
            let _ = v.handle(EcuIndex(0), &[0x10, setup.min(3)], now);
        }
        for (req, functional_addr, dt) in steps {
            now += Duration::from_millis(dt);
            while v.poll(now).is_some() {}
            let actions = if functional_addr {
                v.handle_functional(&req, now)
            } else {
                vec![(EcuIndex(0), v.handle(EcuIndex(0), &req, now))]
            };
            for (_, action) in actions {
                let bytes = match action {
                    EcuAction::None => continue,
                    EcuAction::Respond(b) => b,
                    EcuAction::Pending { response, final_at } => {
                        prop_assert!(final_at >= now);
                        response
                    }
                };
                let parsed = Response::parse(&bytes);
                prop_assert!(parsed.is_ok(), "malformed answer {:02X?} to {:02X?}", &bytes[..], req);
                if let Ok(r) = parsed {
                    prop_assert_eq!(Some(r.sid().0), req.first().copied());
                }
            }
        }
    }
}

#[test]
fn vin_query_against_the_simulator() {
    use obdgw::vehicle::uds::{VinQuery, VinReadError};
    let t = Instant::now();
    let timeout = Duration::from_secs(1);
    let mut v = Vehicle::standard(DEFAULT_VIN, t);

    // Functional OBD-II: the engine answers.
    let mut q = VinQuery::obd("CAN 0x7DF", true, timeout, t);
    let mut result = None;
    for (_, action) in v.handle_functional(q.request(), t) {
        if let Some(r) = q.on_response(respond(&action), t) {
            result = Some(r);
        }
    }
    assert_eq!(result.expect("answered").expect("vin"), DEFAULT_VIN);

    // Physical OBD-II to the ABS: refused with the NRC name.
    let mut q = VinQuery::obd("CAN 0x7E2", false, timeout, t);
    let action = v.handle(EcuIndex(2), q.request(), t);
    let err = q
        .on_response(respond(&action), t)
        .expect("done")
        .expect_err("no OBD on ABS");
    assert!(matches!(err, VinReadError::Negative { .. }));
    assert!(
        err.to_string().ends_with("NRC 0x11 serviceNotSupported"),
        "{err}"
    );

    // UDS through an ECU that answers everything with 0x78 first.
    let mut config = VehicleConfig::standard(DEFAULT_VIN);
    config.ecus[0].1.pending.all_requests = Some(Duration::from_millis(1500));
    let mut v = Vehicle::new(config, t).expect("valid plan");
    let mut q = VinQuery::uds("DoIP 0x1000", false, timeout, t);
    let EcuAction::Pending { response, final_at } = v.handle(EcuIndex(0), q.request(), t) else {
        panic!("expected pending");
    };
    assert!(q.on_response(&response, t).is_none());
    // Past the original 1 s timeout, still waiting thanks to P2*.
    assert!(q.poll(t + timeout).is_none());
    let (_, fin) = v.poll(final_at).expect("final response");
    assert_eq!(
        q.on_response(&fin, final_at).expect("done").expect("vin"),
        DEFAULT_VIN
    );
}
