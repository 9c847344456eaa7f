//! Fuzz the relay's pre-hello input through its real code (`obdgw::relay::PreAuthProbe`:
//! the pre-auth phase of a connection over an in-memory stream, on a paused-time runtime):
//! the HTTP upgrade request, websocket frames under the 4 KiB pre-auth limits and the
//! 16 KiB input budget, hello parsing and checks, the token check and the throttle.
//!
//! The first byte picks what the rest is:
//! - 0, 1: everything the client sends (the upgrade head up to the blank line, then frames);
//! - 2: the payload of one text frame after a valid upgrade (the hello text);
//! - 3: the request path of a valid upgrade, followed by a valid hello.
//!
//! Properties: no panic and no hang; a hello is accepted only for the known session with
//! the right token for its role (checked where the hello text is known); what the relay
//! writes back is small and never contains a token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use obdgw::relay::{PreAuthProbe, RelayConfig, SessionTokens, StaticTokens, session_from_path};
use obdgw::wire::tunnel::{Control, Role, SUBPROTOCOL};
use std::net::SocketAddr;
use std::sync::Arc;

const SID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab";
const GW: &str = "gw-secret-token";
const OP: &str = "op-secret-token";
const HELLO: &str = r#"{"type":"hello","version":1,"role":"gateway","session":"6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab","token":"gw-secret-token","instance":1,"capabilities":["isotp"],"resume":{"last_received":0},"limits":{"max_record":1048576,"max_batch":2097152,"max_in_flight":4194304}}"#;

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
}

fn head(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
    )
    .into_bytes()
}

fn text_frame(payload: &[u8]) -> Vec<u8> {
    let key = [0x5a, 0x01, 0xc3, 0x7e];
    let mut f = vec![0x81];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (input, hello_text): (Vec<u8>, Option<&[u8]>) = match mode % 4 {
        0 | 1 => (rest.to_vec(), None),
        2 => {
            let mut v = head("/");
            v.extend(text_frame(rest));
            (v, Some(rest))
        }
        _ => {
            let path = String::from_utf8_lossy(rest);
            let _ = session_from_path(&path);
            if path.contains(['\r', '\n', ' ']) {
                return;
            }
            let mut v = head(&path);
            v.extend(text_frame(HELLO.as_bytes()));
            (v, None)
        }
    };
    let tokens = StaticTokens::new([SessionTokens {
        id: SID.into(),
        gateway_token: GW.into(),
        operator_token: OP.into(),
    }]);
    let cfg = RelayConfig {
        auth_fail_burst: 2,
        ..RelayConfig::default()
    };
    let probe = PreAuthProbe::new(Arc::new(tokens), cfg);
    let from: SocketAddr = "192.0.2.1:40000".parse().expect("an address");
    let out = RT.with(|rt| rt.block_on(probe.run(from, &input)));
    if let Some((role, session)) = &out.accepted {
        assert_eq!(session, SID);
        if let Some(Ok(Control::Hello(h))) = hello_text
            .and_then(|t| std::str::from_utf8(t).ok())
            .map(Control::parse)
        {
            let want = match role {
                Role::Gateway => GW,
                Role::Operator => OP,
            };
            assert_eq!(h.token.0, want, "accepted with a wrong token");
            assert_eq!(h.role, *role);
        }
    }
    assert!(
        out.output.len() < 2048,
        "{} bytes answered",
        out.output.len()
    );
    assert!(!contains(&out.output, GW) && !contains(&out.output, OP));
});
