//! Fuzz the tunnel wire format and session input paths: batches, single records and control
//! messages must never panic; whatever parses must re-emit to the same bytes.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use obdgw::tunnel::{Session, SessionConfig};
use obdgw::wire::tunnel::{Control, Limits, RecordRepr, Role, Token, emit_batch, parse_batch};
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    let msg = Bytes::copy_from_slice(data);
    let mut recs = Vec::new();
    if let Ok(h) = parse_batch(&msg, &Limits::default(), &mut recs) {
        let mut out = BytesMut::new();
        emit_batch(h.flags, h.first_seq, h.ack, recs.iter(), &mut out);
        assert_eq!(&out[..], data, "parse/emit round trip differs");
    }
    let _ = RecordRepr::parse(&msg, Limits::HARD_MAX);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Control::parse(text);
    }
    // Through an attached session: never panics, errors are typed.
    let now = Instant::now();
    let cfg = SessionConfig::new(
        Role::Gateway,
        "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab",
        Token("t".into()),
        1,
    );
    let mut s = Session::new(cfg, now);
    s.connected(now);
    while s.poll_transmit(now).is_some() {}
    let _ = s.handle_text(
        now,
        r#"{"type":"peer","role":"operator","version":1,"instance":2,"capabilities":[],"resume":{"last_received":0},"limits":{"max_record":1048576,"max_batch":2097152,"max_in_flight":4194304}}"#,
    );
    let _ = s.handle_binary(now, msg);
    while s.poll_event().is_some() {}
});
