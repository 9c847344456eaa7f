//! The CAN-side decoders on arbitrary bytes: the `sim:` bus record, the kernel's raw
//! `can_frame`/`canfd_frame` view and the candump log line. None panics, and whatever
//! decodes re-encodes to something that decodes to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use obdgw::router::frame::Timestamp;
use obdgw::vehicle::can::candump::{format_line, parse_line};
use obdgw::vehicle::can::simbus::{MAX_RECORD, SimRecord, emit_record};
use obdgw::vehicle::can::socketcan::{CAN_MTU, CANFD_MTU, RawFrame, RawRx, emit_frame};

fuzz_target!(|data: &[u8]| {
    // sim: bus records
    if let Ok(rec) = SimRecord::new_checked(data) {
        let n = rec.total_len();
        assert!(n <= data.len());
        if let Ok(frame) = rec.parse(Timestamp(0)) {
            let mut out = [0u8; MAX_RECORD];
            let m = emit_record(&frame, &mut out);
            let again = SimRecord::new_checked(&out[..m]).unwrap().parse(Timestamp(0)).unwrap();
            assert_eq!(again, frame);
        }
    }
    // raw kernel frames
    for size in [CAN_MTU, CANFD_MTU] {
        if data.len() >= size
            && let Ok(view) = RawFrame::new_checked(&data[..size])
            && let Ok(RawRx::Frame(frame)) = view.parse(Timestamp(0))
        {
            let mut out = [0u8; CANFD_MTU];
            let m = emit_frame(&frame, &mut out);
            let again = RawFrame::new_checked(&out[..m]).unwrap().parse(Timestamp(0)).unwrap();
            assert_eq!(again, RawRx::Frame(frame));
        }
    }
    // candump lines
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(p) = parse_line(text)
    {
        let line = format_line(p.micros, p.iface, &p.frame);
        if p.iface.len() <= 64 && !p.iface.contains(char::is_whitespace) {
            let again = parse_line(line.as_str()).unwrap();
            assert_eq!(again.frame, p.frame);
            assert_eq!(again.micros, p.micros);
        }
    }
});
