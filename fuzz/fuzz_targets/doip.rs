//! Fuzz the DoIP wire format: whole-message parsing, the checked view, and the streaming
//! decoder fed in chunks. Properties: no panic; a message that parses re-emits to exactly
//! the bytes it came from; the streaming decoder never holds more than one maximum-size
//! message.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use obdgw::wire::doip::{Decoded, DoipCodec, HEADER_LEN, Packet, Repr};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let max = u32::from(ctl) * 16;

    let frame = Bytes::copy_from_slice(rest);
    if let Ok((version, repr)) = Repr::parse_bytes(&frame, max) {
        assert_eq!(repr.buffer_len(), rest.len());
        assert_eq!(&repr.to_bytes(version)[..], rest, "parse -> emit is exact");
    }
    if let Ok(p) = Packet::new_checked(rest) {
        let _ = p.payload();
        let _ = Repr::parse(&p, max);
    }

    let chunk = usize::from(ctl % 17) + 1;
    let mut codec = DoipCodec::new(max);
    let mut buf = BytesMut::new();
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode_frame(&mut buf) {
                Ok(Some(Decoded::Message(m))) => {
                    assert!(m.repr.payload_len() <= max as usize);
                }
                Ok(Some(Decoded::Rejected { .. })) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buf.len() < HEADER_LEN + max as usize + chunk);
    }
});
