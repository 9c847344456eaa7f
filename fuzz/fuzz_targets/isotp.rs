//! Fuzz the ISO-TP frame decoder and the receiving state machine.
//!
//! Input layout: byte 0 selects the channel setup (addressing, classic/FD, block size),
//! then records of `[time step, length, payload...]`, each one received frame. The decoder
//! must never panic on any payload; the channel must never panic, never emit an oversized
//! frame, and deliver only PDUs no longer than its limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use obdgw::router::frame::{CanFdFrame, CanFrame, CanId, fd_len_valid};
use obdgw::vehicle::can::CanAnyFrame;
use obdgw::vehicle::isotp::{Addressing, FrameMode, IsoTpChannel, IsoTpConfig, IsoTpEvent};
use obdgw::wire::isotp::{Packet, Repr};
use std::time::Duration;
use tokio::time::Instant;

const MAX_PDU: u32 = 70_000;

fuzz_target!(|input: &[u8]| {
    let Some((&setup, mut rest)) = input.split_first() else {
        return;
    };
    let rx_id = CanId::standard(0x7E0).unwrap();
    let mut cfg = IsoTpConfig::new(CanId::standard(0x7E8).unwrap(), rx_id);
    cfg.addressing = match setup & 3 {
        0 | 3 => Addressing::Normal,
        1 => Addressing::Extended {
            tx_ta: 0xF1,
            rx_ta: 0x10,
        },
        _ => Addressing::Mixed { ae: 0x10 },
    };
    let fd = setup & 4 != 0;
    if fd {
        cfg.frame_mode = FrameMode::Fd { tx_dl: 64 };
    }
    cfg.block_size = setup >> 4;
    cfg.max_pdu_len = MAX_PDU;
    let has_ext = cfg.addressing.rx_ext().is_some();
    let mut ch = IsoTpChannel::new(cfg).unwrap();
    let mut now = Instant::now();

    while rest.len() >= 2 {
        let step = rest[0];
        let len = (rest[1] as usize % 65).min(rest.len() - 2);
        let payload = &rest[2..2 + len];
        rest = &rest[2 + len..];
        now += Duration::from_micros(step as u64 * 997);

        // The decoder alone.
        if let Ok(p) = Packet::new_checked(payload, has_ext) {
            if let Ok(r) = Repr::parse(&p) {
                let mut buf = [0u8; 72];
                if r.buffer_len(has_ext) <= buf.len() {
                    r.emit(p.ext(), &mut buf);
                }
            }
        }

        // The channel.
        let frame = if len <= 8 && (!fd || step & 1 == 0) {
            CanAnyFrame::Classic(CanFrame::new(rx_id, payload).unwrap())
        } else if fd_len_valid(len) {
            CanAnyFrame::Fd(CanFdFrame::new(rx_id, payload).unwrap())
        } else {
            continue;
        };
        ch.on_frame(now, &frame);
        ch.poll(now);
        while let Some(out) = ch.poll_transmit(now) {
            assert!(out.data().len() <= if fd { 64 } else { 8 });
            if step & 2 == 0 {
                ch.on_tx_confirm(now);
            } else {
                break;
            }
        }
        while let Some(ev) = ch.poll_event() {
            if let IsoTpEvent::Received(p) = ev {
                assert!(!p.is_empty() && p.len() <= MAX_PDU as usize);
            }
        }
    }
});
