//! The socketcand framer and parser on arbitrary bytes: never panics, always makes progress,
//! and whatever parses re-formats to something that parses to the same message.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use obdgw::wire::socketcand::{Framer, format, parse};

fuzz_target!(|data: &[u8]| {
    let mut framer = Framer::new(512);
    let mut buf = BytesMut::from(data);
    for _ in 0..=data.len() {
        let before = buf.len();
        match framer.next(&mut buf) {
            Ok(None) => break,
            Ok(Some(msg)) => {
                let text = format(&msg);
                assert_eq!(parse(text.as_bytes()).as_ref(), Ok(&msg), "{text}");
            }
            Err(_) => {}
        }
        assert!(buf.len() < before || buf.is_empty(), "no progress");
    }
});
