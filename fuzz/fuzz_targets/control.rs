//! Fuzz the daemon's control socket protocol (`obdgw::daemon::control`): the request line
//! parser the daemon runs on whatever a local client sends, and the response parser
//! `obdgw status` / `obdgw reload` run on what the daemon answers.
//!
//! Properties: no panic; a request that parses is at most `MAX_REQUEST` bytes and
//! re-serializes to a line that parses to the same request; a response that parses
//! re-serializes to one that parses to the same response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use obdgw::daemon::control::{MAX_REQUEST, Response, parse_request};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = parse_request(data) {
        assert!(data.len() <= MAX_REQUEST);
        let mut line = serde_json::to_vec(&req).expect("a request serializes");
        line.push(b'\n');
        assert_eq!(parse_request(&line), Ok(req));
    }
    if let Ok(resp) = serde_json::from_slice::<Response>(data) {
        let again = serde_json::to_vec(&resp).expect("a response serializes");
        let back: Response = serde_json::from_slice(&again).expect("a serialized response parses");
        assert_eq!(back, resp);
    }
});
