//! Tests of the ISO-TP channel (golden frame sequences, timers on simulated and paused
//! time, error paths, property round-trips) and of the tokio driver over an in-test port.

use super::*;
use crate::router::frame::{CanFdFrame, CanFrame, CanId};
use crate::vehicle::can::{CanAnyFrame, CanError, CanPort};
use crate::wire::isotp::StMin;
use bytes::Bytes;
use proptest::prelude::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;

fn sid(id: u16) -> CanId {
    CanId::standard(id).unwrap()
}

/// Tester side (0x7E0 -> ECU, ECU answers on 0x7E8) and ECU side.
fn pair_cfg() -> (IsoTpConfig, IsoTpConfig) {
    (
        IsoTpConfig::new(sid(0x7E0), sid(0x7E8)),
        IsoTpConfig::new(sid(0x7E8), sid(0x7E0)),
    )
}

fn ch(cfg: IsoTpConfig) -> IsoTpChannel {
    IsoTpChannel::new(cfg).unwrap()
}

fn classic(id: u16, data: &[u8]) -> CanAnyFrame {
    CanAnyFrame::Classic(CanFrame::new(sid(id), data).unwrap())
}

fn bytes_of(f: &CanAnyFrame) -> Vec<u8> {
    f.data().to_vec()
}

/// Take the next frame and confirm it at once.
fn tx(c: &mut IsoTpChannel, now: Instant) -> Option<CanAnyFrame> {
    let f = c.poll_transmit(now)?;
    c.on_tx_confirm(now);
    Some(f)
}

fn events(c: &mut IsoTpChannel) -> Vec<IsoTpEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn pdu(len: usize) -> Bytes {
    (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
}

/// Run two channels against each other (frames confirmed at once, time jumping to the next
/// deadline) until both are idle. Returns the events of each and the end time.
fn run_pair(
    a: &mut IsoTpChannel,
    b: &mut IsoTpChannel,
    mut now: Instant,
) -> (Vec<IsoTpEvent>, Vec<IsoTpEvent>, Instant) {
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    for _ in 0..2_000_000 {
        a.poll(now);
        b.poll(now);
        let mut progressed = false;
        if let Some(f) = tx(a, now) {
            b.on_frame(now, &f);
            progressed = true;
        }
        if let Some(f) = tx(b, now) {
            a.on_frame(now, &f);
            progressed = true;
        }
        ea.extend(events(a));
        eb.extend(events(b));
        if !progressed {
            match [a.poll_at(), b.poll_at()].into_iter().flatten().min() {
                None => return (ea, eb, now),
                Some(t) if t > now => now = t,
                Some(_) => panic!("channel stuck: deadline in the past and nothing to send"),
            }
        }
    }
    panic!("run_pair did not finish");
}

#[test]
fn golden_20_byte_pdu_with_padding() {
    let (mut ta, tb) = pair_cfg();
    ta.padding = Some(0xAA);
    let (mut a, mut b) = (ch(ta), ch(tb));
    let now = Instant::now();
    let data: Bytes = (0u8..20).collect::<Vec<_>>().into();
    a.send(now, data.clone()).unwrap();

    let ff = tx(&mut a, now).unwrap();
    assert_eq!(ff.id(), sid(0x7E0));
    assert_eq!(bytes_of(&ff), [0x10, 0x14, 0, 1, 2, 3, 4, 5]);
    assert!(a.poll_transmit(now).is_none(), "no CF before flow control");
    assert!(b.on_frame(now, &ff));

    let fc = tx(&mut b, now).unwrap();
    assert_eq!(fc.id(), sid(0x7E8));
    assert_eq!(bytes_of(&fc), [0x30, 0x00, 0x00], "B has no padding");
    assert!(a.on_frame(now, &fc));

    let cf1 = tx(&mut a, now).unwrap();
    assert_eq!(bytes_of(&cf1), [0x21, 6, 7, 8, 9, 10, 11, 12]);
    b.on_frame(now, &cf1);
    let cf2 = tx(&mut a, now).unwrap();
    assert_eq!(
        bytes_of(&cf2),
        [0x22, 13, 14, 15, 16, 17, 18, 19],
        "exactly full"
    );
    b.on_frame(now, &cf2);
    assert!(a.poll_transmit(now).is_none());
    assert_eq!(events(&mut a), [IsoTpEvent::SendComplete(Ok(()))]);
    assert_eq!(events(&mut b), [IsoTpEvent::Received(data)]);
    assert_eq!(a.poll_at(), None);
    assert_eq!(b.poll_at(), None);
    assert_eq!(a.stats().frames_out, 3);
    assert_eq!(b.stats().pdus_in, 1);
}

#[test]
fn golden_last_cf_padding_and_single_frame() {
    let (mut ta, _) = pair_cfg();
    ta.padding = Some(0x55);
    let mut a = ch(ta);
    let now = Instant::now();
    a.send(now, Bytes::from_static(&[0x22, 0xF1, 0x90]))
        .unwrap();
    let sf = a.poll_transmit(now).unwrap();
    assert_eq!(
        bytes_of(&sf),
        [0x03, 0x22, 0xF1, 0x90, 0x55, 0x55, 0x55, 0x55]
    );
    // Never a silent success: nothing is reported until the port confirms.
    assert!(events(&mut a).is_empty());
    a.on_tx_confirm(now);
    assert_eq!(events(&mut a), [IsoTpEvent::SendComplete(Ok(()))]);

    // 15 bytes: FF(6) + CF(7) + CF(2 + padding).
    a.send(now, pdu(15)).unwrap();
    tx(&mut a, now).unwrap();
    a.on_frame(now, &classic(0x7E8, &[0x30, 0, 0]));
    tx(&mut a, now).unwrap();
    let last = tx(&mut a, now).unwrap();
    assert_eq!(
        bytes_of(&last),
        [0x22, 13, 14, 0x55, 0x55, 0x55, 0x55, 0x55]
    );

    // Without padding the last CF is minimal.
    let (ta, _) = pair_cfg();
    let mut a = ch(ta);
    a.send(now, pdu(15)).unwrap();
    tx(&mut a, now).unwrap();
    a.on_frame(now, &classic(0x7E8, &[0x30, 0, 0]));
    tx(&mut a, now).unwrap();
    assert_eq!(bytes_of(&tx(&mut a, now).unwrap()), [0x22, 13, 14]);
}

#[test]
fn block_size_and_st_min_are_respected_both_ways() {
    let (ta, mut tb) = pair_cfg();
    tb.block_size = 2;
    tb.st_min = StMin::from_byte(0xF3); // 300 µs
    let (mut a, mut b) = (ch(ta), ch(tb));
    let t0 = Instant::now();
    a.send(t0, pdu(30)).unwrap();
    b.on_frame(t0, &tx(&mut a, t0).unwrap());
    let fc = tx(&mut b, t0).unwrap();
    assert_eq!(bytes_of(&fc), [0x30, 0x02, 0xF3]);
    a.on_frame(t0, &fc);
    let cf1 = tx(&mut a, t0).unwrap();
    b.on_frame(t0, &cf1);
    // The next CF waits 300 µs after the previous one was confirmed.
    assert!(a.poll_transmit(t0 + Duration::from_micros(299)).is_none());
    assert_eq!(a.poll_at(), Some(t0 + Duration::from_micros(300)));
    let t1 = t0 + Duration::from_micros(300);
    let cf2 = tx(&mut a, t1).unwrap();
    assert_eq!(bytes_of(&cf2)[0], 0x22);
    b.on_frame(t1, &cf2);
    // Block of 2 done: the sender waits for another FC, the receiver sends it.
    assert!(a.poll_transmit(t1 + Duration::from_millis(5)).is_none());
    let fc2 = tx(&mut b, t1).unwrap();
    assert_eq!(bytes_of(&fc2), [0x30, 0x02, 0xF3]);
    a.on_frame(t1, &fc2);
    let cf3 = tx(&mut a, t1).unwrap();
    assert_eq!(bytes_of(&cf3)[0], 0x23);
    b.on_frame(t1, &cf3);
    let t2 = t1 + Duration::from_micros(300);
    let cf4 = tx(&mut a, t2).unwrap();
    assert_eq!(bytes_of(&cf4), [0x24, 27, 28, 29]);
    b.on_frame(t2, &cf4);
    assert_eq!(events(&mut a), [IsoTpEvent::SendComplete(Ok(()))]);
    assert_eq!(events(&mut b), [IsoTpEvent::Received(pdu(30))]);
}

#[test]
fn reserved_st_min_means_127_ms() {
    let (ta, _) = pair_cfg();
    let mut a = ch(ta);
    let t0 = Instant::now();
    a.send(t0, pdu(30)).unwrap();
    tx(&mut a, t0).unwrap();
    a.on_frame(t0, &classic(0x7E8, &[0x30, 0x00, 0xFA]));
    tx(&mut a, t0).unwrap();
    assert_eq!(a.poll_at(), Some(t0 + Duration::from_millis(127)));
    assert!(a.poll_transmit(t0 + Duration::from_millis(126)).is_none());
    assert!(a.poll_transmit(t0 + Duration::from_millis(127)).is_some());
}

#[test]
fn n_bs_timeout_when_no_flow_control() {
    let (ta, _) = pair_cfg();
    let mut a = ch(ta);
    let t0 = Instant::now();
    a.send(t0, pdu(100)).unwrap();
    tx(&mut a, t0).unwrap();
    assert_eq!(a.poll_at(), Some(t0 + Duration::from_secs(1)));
    a.poll(t0 + Duration::from_millis(999));
    assert!(events(&mut a).is_empty());
    a.poll(t0 + Duration::from_secs(1));
    assert_eq!(
        events(&mut a),
        [IsoTpEvent::SendComplete(Err(IsoTpError::TimeoutBs))]
    );
    assert!(!a.is_sending());
    // A late FC is ignored.
    a.on_frame(t0, &classic(0x7E8, &[0x30, 0, 0]));
    assert!(a.poll_transmit(t0 + Duration::from_secs(2)).is_none());
}

#[test]
fn n_as_timeout_when_port_never_confirms() {
    let (ta, _) = pair_cfg();
    let mut a = ch(ta);
    let t0 = Instant::now();
    a.send(t0, pdu(3)).unwrap();
    assert!(a.poll_transmit(t0).is_some());
    a.poll(t0 + Duration::from_secs(1));
    assert_eq!(
        events(&mut a),
        [IsoTpEvent::SendComplete(Err(IsoTpError::TimeoutAs))]
    );
    // A port error on the frame in flight fails the send the same way.
    a.send(t0, pdu(3)).unwrap();
    assert!(a.poll_transmit(t0).is_some());
    a.on_tx_error(t0, IsoTpError::Port("bus-off".into()));
    assert_eq!(
        events(&mut a),
        [IsoTpEvent::SendComplete(Err(IsoTpError::Port(
            "bus-off".into()
        )))]
    );
}

#[test]
fn n_cr_timeout_when_consecutive_frames_stop() {
    let (_, tb) = pair_cfg();
    let mut b = ch(tb);
    let t0 = Instant::now();
    b.on_frame(t0, &classic(0x7E0, &[0x10, 0x14, 0, 1, 2, 3, 4, 5]));
    assert!(b.is_receiving());
    let t1 = t0 + Duration::from_millis(10);
    tx(&mut b, t1).unwrap(); // FC confirmed at t1: N_Cr runs from there.
    b.on_frame(t1, &classic(0x7E0, &[0x21, 6, 7, 8, 9, 10, 11, 12]));
    b.poll(t1 + Duration::from_millis(999));
    assert!(events(&mut b).is_empty());
    // The N_Cr timer restarted at the CF received at t1.
    b.poll(t1 + Duration::from_secs(1));
    assert_eq!(
        events(&mut b),
        [IsoTpEvent::ReceiveFailed(IsoTpError::TimeoutCr)]
    );
    assert!(!b.is_receiving());
    assert_eq!(b.poll_at(), None);
}

#[test]
fn wait_frames_extend_n_bs_then_too_many_abort() {
    let (mut ta, _) = pair_cfg();
    ta.max_wait_frames = 2;
    let mut a = ch(ta);
    let t0 = Instant::now();
    a.send(t0, pdu(20)).unwrap();
    tx(&mut a, t0).unwrap();
    let t1 = t0 + Duration::from_millis(900);
    a.on_frame(t1, &classic(0x7E8, &[0x31, 0, 0]));
    // N_Bs restarted by the WAIT.
    assert_eq!(a.poll_at(), Some(t1 + Duration::from_secs(1)));
    a.poll(t0 + Duration::from_millis(1500));
    assert!(events(&mut a).is_empty());
    a.on_frame(t1, &classic(0x7E8, &[0x31, 0, 0]));
    // A CTS resets the count and resumes.
    a.on_frame(t1, &classic(0x7E8, &[0x30, 1, 0]));
    assert_eq!(bytes_of(&tx(&mut a, t1).unwrap())[0], 0x21);
    a.on_frame(t1, &classic(0x7E8, &[0x31, 0, 0]));
    a.on_frame(t1, &classic(0x7E8, &[0x31, 0, 0]));
    assert!(events(&mut a).is_empty());
    a.on_frame(t1, &classic(0x7E8, &[0x31, 0, 0]));
    assert_eq!(
        events(&mut a),
        [IsoTpEvent::SendComplete(Err(IsoTpError::TooManyWaits {
            max: 2
        }))]
    );
}

#[test]
fn overflow_both_ways() {
    let (_, mut tb) = pair_cfg();
    tb.max_pdu_len = 100;
    let mut b = ch(tb);
    let t0 = Instant::now();
    b.on_frame(t0, &classic(0x7E0, &[0x10, 200, 0, 1, 2, 3, 4, 5]));
    let fc = tx(&mut b, t0).unwrap();
    assert_eq!(bytes_of(&fc), [0x32, 0x00, 0x00]);
    assert_eq!(
        events(&mut b),
        [IsoTpEvent::ReceiveFailed(IsoTpError::BufferOverflow {
            len: 200,
            max: 100
        })]
    );
    assert!(!b.is_receiving());

    // A single frame above the limit is refused too (no FC exists for it).
    b.on_frame(t0, &classic(0x7E0, &[0x01, 0xAA]));
    let mut tc = IsoTpConfig::new(sid(0x7E8), sid(0x7E0));
    tc.max_pdu_len = 5;
    let mut c = ch(tc);
    c.on_frame(t0, &classic(0x7E0, &[0x06, 1, 2, 3, 4, 5, 6]));
    assert_eq!(
        events(&mut c),
        [IsoTpEvent::ReceiveFailed(IsoTpError::BufferOverflow {
            len: 6,
            max: 5
        })]
    );
    assert!(c.poll_transmit(t0).is_none());
    assert_eq!(
        events(&mut b),
        [IsoTpEvent::Received(Bytes::from_static(&[0xAA]))]
    );

    let (ta, _) = pair_cfg();
    let mut a = ch(ta);
    a.send(t0, pdu(200)).unwrap();
    tx(&mut a, t0).unwrap();
    a.on_frame(t0, &fc.clone_as(0x7E8));
    assert_eq!(
        events(&mut a),
        [IsoTpEvent::SendComplete(Err(IsoTpError::PeerOverflow))]
    );
}

trait CloneAs {
    fn clone_as(&self, id: u16) -> CanAnyFrame;
}
impl CloneAs for CanAnyFrame {
    fn clone_as(&self, id: u16) -> CanAnyFrame {
        classic(id, self.data())
    }
}

#[test]
fn invalid_flow_status_aborts_send() {
    let (ta, _) = pair_cfg();
    let mut a = ch(ta);
    let t0 = Instant::now();
    a.send(t0, pdu(20)).unwrap();
    tx(&mut a, t0).unwrap();
    a.on_frame(t0, &classic(0x7E8, &[0x37, 0, 0]));
    assert_eq!(
        events(&mut a),
        [IsoTpEvent::SendComplete(Err(
            IsoTpError::InvalidFlowStatus(7)
        ))]
    );
}

#[test]
fn wrong_sequence_number_drops_pdu() {
    let (_, tb) = pair_cfg();
    let mut b = ch(tb);
    let t0 = Instant::now();
    b.on_frame(t0, &classic(0x7E0, &[0x10, 0x14, 0, 1, 2, 3, 4, 5]));
    tx(&mut b, t0).unwrap();
    b.on_frame(t0, &classic(0x7E0, &[0x22, 6, 7, 8, 9, 10, 11, 12]));
    assert_eq!(
        events(&mut b),
        [IsoTpEvent::ReceiveFailed(IsoTpError::WrongSequenceNumber {
            expected: 1,
            got: 2
        })]
    );
    // Later CFs are ignored; a new SF is delivered.
    b.on_frame(t0, &classic(0x7E0, &[0x23, 1]));
    b.on_frame(t0, &classic(0x7E0, &[0x01, 0x3E]));
    assert_eq!(
        events(&mut b),
        [IsoTpEvent::Received(Bytes::from_static(&[0x3E]))]
    );
}

#[test]
fn sequence_numbers_wrap_after_15() {
    let (ta, tb) = pair_cfg();
    let (mut a, mut b) = (ch(ta), ch(tb));
    let t0 = Instant::now();
    a.send(t0, pdu(200)).unwrap();
    let mut sns = Vec::new();
    let mut now = t0;
    loop {
        a.poll(now);
        b.poll(now);
        let mut progressed = false;
        if let Some(f) = tx(&mut a, now) {
            if f.data()[0] >> 4 == 2 {
                sns.push(f.data()[0] & 0x0F);
            }
            b.on_frame(now, &f);
            progressed = true;
        }
        if let Some(f) = tx(&mut b, now) {
            a.on_frame(now, &f);
            progressed = true;
        }
        if !progressed {
            break;
        }
        now += Duration::from_micros(1);
    }
    assert_eq!(sns.len(), 28); // (200 - 6) / 7 rounded up
    assert_eq!(
        &sns[..17],
        &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1]
    );
    assert_eq!(events(&mut b), [IsoTpEvent::Received(pdu(200))]);
}

#[test]
fn new_pdu_interrupting_reception_is_unexpected() {
    let (_, tb) = pair_cfg();
    let mut b = ch(tb);
    let t0 = Instant::now();
    b.on_frame(t0, &classic(0x7E0, &[0x10, 0x14, 0, 1, 2, 3, 4, 5]));
    tx(&mut b, t0).unwrap();
    b.on_frame(t0, &classic(0x7E0, &[0x02, 0x10, 0x01]));
    assert_eq!(
        events(&mut b),
        [
            IsoTpEvent::ReceiveFailed(IsoTpError::UnexpectedPdu),
            IsoTpEvent::Received(Bytes::from_static(&[0x10, 0x01]))
        ]
    );
    // A new FF during reception restarts it.
    b.on_frame(t0, &classic(0x7E0, &[0x10, 0x14, 0, 1, 2, 3, 4, 5]));
    tx(&mut b, t0).unwrap();
    b.on_frame(t0, &classic(0x7E0, &[0x10, 0x09, 9, 9, 9, 9, 9, 9]));
    assert_eq!(
        events(&mut b),
        [IsoTpEvent::ReceiveFailed(IsoTpError::UnexpectedPdu)]
    );
    tx(&mut b, t0).unwrap();
    b.on_frame(t0, &classic(0x7E0, &[0x21, 8, 8, 8]));
    assert_eq!(
        events(&mut b),
        [IsoTpEvent::Received(Bytes::from_static(&[
            9, 9, 9, 9, 9, 9, 8, 8, 8
        ]))]
    );
}

#[test]
fn ignores_other_ids_fd_frames_and_garbage() {
    let (_, tb) = pair_cfg();
    let mut b = ch(tb);
    let t0 = Instant::now();
    assert!(!b.on_frame(t0, &classic(0x7E1, &[0x01, 0x3E])));
    let fd = CanAnyFrame::Fd(CanFdFrame::new(sid(0x7E0), &[0x01, 0x3E]).unwrap());
    assert!(!b.on_frame(t0, &fd), "a classic channel ignores FD frames");
    assert!(b.on_frame(t0, &classic(0x7E0, &[])));
    assert!(b.on_frame(t0, &classic(0x7E0, &[0x45, 1, 2])));
    assert!(b.on_frame(t0, &classic(0x7E0, &[0x21, 1, 2]))); // CF while idle
    assert!(b.on_frame(t0, &classic(0x7E0, &[0x30, 0, 0]))); // FC while not sending
    assert!(events(&mut b).is_empty());
    assert_eq!(b.stats().frames_ignored, 4);
    assert!(b.poll_transmit(t0).is_none());
}

#[test]
fn send_validation() {
    let (ta, _) = pair_cfg();
    let mut a = ch(ta);
    let t0 = Instant::now();
    assert_eq!(a.send(t0, Bytes::new()), Err(IsoTpError::EmptyPdu));
    assert_eq!(
        a.send(t0, pdu(4096)),
        Err(IsoTpError::TooLong {
            len: 4096,
            max: 4095
        })
    );
    a.send(t0, pdu(1)).unwrap();
    assert_eq!(a.send(t0, pdu(1)), Err(IsoTpError::Busy));
    let mut bad = IsoTpConfig::new(sid(1), sid(2));
    bad.frame_mode = FrameMode::Fd { tx_dl: 13 };
    assert_eq!(
        IsoTpChannel::new(bad.clone()).unwrap_err(),
        ConfigError::BadTxDl(13)
    );
    bad.frame_mode = FrameMode::Fd { tx_dl: 64 };
    bad.n_cr = Duration::ZERO;
    assert_eq!(
        IsoTpChannel::new(bad).unwrap_err(),
        ConfigError::ZeroTimeout("n_cr")
    );
}

#[test]
fn extended_addressing_golden() {
    let (mut ta, mut tb) = pair_cfg();
    ta.addressing = Addressing::Extended {
        tx_ta: 0x10,
        rx_ta: 0xF1,
    };
    tb.addressing = Addressing::Extended {
        tx_ta: 0xF1,
        rx_ta: 0x10,
    };
    let (mut a, mut b) = (ch(ta), ch(tb));
    let t0 = Instant::now();
    a.send(t0, pdu(12)).unwrap();
    let ff = tx(&mut a, t0).unwrap();
    assert_eq!(bytes_of(&ff), [0x10, 0x10, 0x0C, 0, 1, 2, 3, 4]);
    // A frame for another target address on the same id is not ours.
    assert!(!b.on_frame(t0, &classic(0x7E0, &[0x22, 0x02, 0x3E, 0x00])));
    assert!(b.on_frame(t0, &ff));
    let fc = tx(&mut b, t0).unwrap();
    assert_eq!(bytes_of(&fc), [0xF1, 0x30, 0x00, 0x00]);
    a.on_frame(t0, &fc);
    let cf = tx(&mut a, t0).unwrap();
    assert_eq!(bytes_of(&cf), [0x10, 0x21, 5, 6, 7, 8, 9, 10]);
    b.on_frame(t0, &cf);
    let cf2 = tx(&mut a, t0).unwrap();
    assert_eq!(bytes_of(&cf2), [0x10, 0x22, 11]);
    b.on_frame(t0, &cf2);
    assert_eq!(events(&mut b), [IsoTpEvent::Received(pdu(12))]);
    // Single frames carry 6 bytes at most with an address byte.
    b.send(t0, pdu(6)).unwrap();
    assert_eq!(
        bytes_of(&tx(&mut b, t0).unwrap()),
        [0xF1, 0x06, 0, 1, 2, 3, 4, 5]
    );
}

#[test]
fn mixed_addressing_29_bit_round_trip() {
    let tx_id = CanId::extended(0x18CE_F110).unwrap();
    let rx_id = CanId::extended(0x18CE_10F1).unwrap();
    let mut ta = IsoTpConfig::new(tx_id, rx_id);
    ta.addressing = Addressing::Mixed { ae: 0x7A };
    let mut tb = IsoTpConfig::new(rx_id, tx_id);
    tb.addressing = Addressing::Mixed { ae: 0x7A };
    let (mut a, mut b) = (ch(ta), ch(tb));
    let t0 = Instant::now();
    a.send(t0, pdu(300)).unwrap();
    let (ea, eb, _) = run_pair(&mut a, &mut b, t0);
    assert_eq!(ea, [IsoTpEvent::SendComplete(Ok(()))]);
    assert_eq!(eb, [IsoTpEvent::Received(pdu(300))]);
    // Every frame carries the AE byte.
    b.send(t0, pdu(2)).unwrap();
    let sf = b.poll_transmit(t0).unwrap();
    assert_eq!(sf.id(), rx_id);
    assert_eq!(bytes_of(&sf), [0x7A, 0x02, 0, 1]);
}

#[test]
fn fd_64_byte_frames_and_escape_first_frame() {
    let (mut ta, mut tb) = pair_cfg();
    ta.frame_mode = FrameMode::Fd { tx_dl: 64 };
    ta.max_pdu_len = 10_000;
    tb.frame_mode = FrameMode::Fd { tx_dl: 64 };
    tb.max_pdu_len = 10_000;
    let (mut a, mut b) = (ch(ta), ch(tb));
    let t0 = Instant::now();
    let data = pdu(10_000);
    a.send(t0, data.clone()).unwrap();
    let ff = tx(&mut a, t0).unwrap();
    assert!(matches!(ff, CanAnyFrame::Fd(_)));
    let d = bytes_of(&ff);
    assert_eq!(d.len(), 64);
    assert_eq!(d[..6], [0x10, 0x00, 0x00, 0x00, 0x27, 0x10]);
    assert_eq!(&d[6..], &data[..58]);
    b.on_frame(t0, &ff);
    let fc = tx(&mut b, t0).unwrap();
    assert_eq!(bytes_of(&fc), [0x30, 0, 0]);
    a.on_frame(t0, &fc);
    let mut cfs = Vec::new();
    while let Some(f) = tx(&mut a, t0) {
        b.on_frame(t0, &f);
        cfs.push(bytes_of(&f));
    }
    // 9942 bytes after the FF, 63 per CF: 157 full CFs and one of 51 bytes.
    assert_eq!(cfs.len(), 158);
    assert!(cfs[..157].iter().all(|c| c.len() == 64));
    let last = cfs.last().unwrap();
    assert_eq!(last.len(), 64, "52 bytes rounded up to the FD length 64");
    assert!(last[52..].iter().all(|&p| p == 0xCC));
    assert_eq!(events(&mut b), [IsoTpEvent::Received(data)]);
    assert_eq!(events(&mut a), [IsoTpEvent::SendComplete(Ok(()))]);
}

#[test]
fn fd_single_frames_escape_and_padding() {
    let (mut ta, mut tb) = pair_cfg();
    ta.frame_mode = FrameMode::Fd { tx_dl: 64 };
    tb.frame_mode = FrameMode::Fd { tx_dl: 64 };
    let (mut a, mut b) = (ch(ta), ch(tb));
    let t0 = Instant::now();
    a.send(t0, pdu(62)).unwrap();
    let sf = tx(&mut a, t0).unwrap();
    assert_eq!(bytes_of(&sf)[..2], [0x00, 62]);
    assert_eq!(bytes_of(&sf).len(), 64);
    b.on_frame(t0, &sf);
    a.send(t0, pdu(9)).unwrap();
    let sf = tx(&mut a, t0).unwrap();
    assert_eq!(bytes_of(&sf).len(), 12, "11 bytes round up to 12");
    assert_eq!(bytes_of(&sf)[11], 0xCC);
    b.on_frame(t0, &sf);
    a.send(t0, pdu(7)).unwrap();
    let sf = tx(&mut a, t0).unwrap();
    assert_eq!(bytes_of(&sf)[0], 0x07, "classic SF form up to 8 bytes");
    b.on_frame(t0, &sf);
    // An FD channel also takes classic frames.
    b.on_frame(t0, &classic(0x7E0, &[0x01, 0xAB]));
    assert_eq!(
        events(&mut b),
        [
            IsoTpEvent::Received(pdu(62)),
            IsoTpEvent::Received(pdu(9)),
            IsoTpEvent::Received(pdu(7)),
            IsoTpEvent::Received(Bytes::from_static(&[0xAB])),
        ]
    );
}

#[test]
fn reassembly_reserves_once() {
    let (ta, tb) = pair_cfg();
    let (mut a, mut b) = (ch(ta), ch(tb));
    let t0 = Instant::now();
    a.send(t0, pdu(4095)).unwrap();
    let (_, mut eb, _) = run_pair(&mut a, &mut b, t0);
    assert_eq!(eb.len(), 1);
    let Some(IsoTpEvent::Received(got)) = eb.pop() else {
        panic!("no PDU")
    };
    assert_eq!(got, pdu(4095));
    // The PDU is the reassembly buffer, frozen: capacity was the announced length.
    let mut m = got.try_into_mut().expect("sole owner");
    assert_eq!(m.capacity(), 4095);
    m.clear();
}

fn arb_fd_dl() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(8u8),
        Just(12),
        Just(16),
        Just(20),
        Just(24),
        Just(32),
        Just(48),
        Just(64)
    ]
}

fn arb_addressing() -> impl Strategy<Value = (Addressing, Addressing)> {
    prop_oneof![
        Just((Addressing::Normal, Addressing::Normal)),
        (any::<u8>(), any::<u8>()).prop_map(|(x, y)| (
            Addressing::Extended { tx_ta: x, rx_ta: y },
            Addressing::Extended { tx_ta: y, rx_ta: x }
        )),
        any::<u8>().prop_map(|ae| (Addressing::Mixed { ae }, Addressing::Mixed { ae })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn classic_round_trip_any_bs_st_min(
        len in 1usize..=4095,
        bs in any::<u8>(),
        st in any::<u8>(),
        pad in proptest::option::of(any::<u8>()),
        (adda, addb) in arb_addressing(),
    ) {
        let (mut ta, mut tb) = pair_cfg();
        ta.padding = pad;
        ta.addressing = adda;
        tb.addressing = addb;
        tb.block_size = bs;
        tb.st_min = StMin::from_byte(st);
        let (mut a, mut b) = (ch(ta), ch(tb));
        let t0 = Instant::now();
        let data = pdu(len);
        a.send(t0, data.clone()).unwrap();
        let (ea, eb, end) = run_pair(&mut a, &mut b, t0);
        prop_assert_eq!(ea, vec![IsoTpEvent::SendComplete(Ok(()))]);
        prop_assert_eq!(eb, vec![IsoTpEvent::Received(data)]);
        // The sender respected STmin between consecutive frames.
        let cfs = len.saturating_sub(6 - adda.tx_ext().is_some() as usize);
        let per = 7 - adda.tx_ext().is_some() as usize;
        let n_cf = if len <= per { 0 } else { cfs.div_ceil(per) };
        // STmin separates CFs within a block; the first CF after an FC goes at once.
        let blocks = if bs == 0 { n_cf.min(1) } else { n_cf.div_ceil(bs as usize) };
        let min_time = StMin::from_byte(st).duration() * ((n_cf - blocks) as u32);
        prop_assert!(end - t0 >= min_time);
    }

    #[test]
    fn fd_round_trip_beyond_4095(
        len in 1usize..=20_000,
        dl in arb_fd_dl(),
        bs in any::<u8>(),
        st in prop_oneof![Just(0u8), 0xF1u8..=0xF9, 1u8..=3],
        (adda, addb) in arb_addressing(),
    ) {
        let (mut ta, mut tb) = pair_cfg();
        ta.frame_mode = FrameMode::Fd { tx_dl: dl };
        ta.max_pdu_len = 20_000;
        ta.addressing = adda;
        tb.frame_mode = FrameMode::Fd { tx_dl: 64 };
        tb.max_pdu_len = 20_000;
        tb.addressing = addb;
        tb.block_size = bs;
        tb.st_min = StMin::from_byte(st);
        let (mut a, mut b) = (ch(ta), ch(tb));
        let data = pdu(len);
        a.send(Instant::now(), data.clone()).unwrap();
        let (ea, eb, _) = run_pair(&mut a, &mut b, Instant::now());
        prop_assert_eq!(ea, vec![IsoTpEvent::SendComplete(Ok(()))]);
        prop_assert_eq!(eb, vec![IsoTpEvent::Received(data)]);
    }

    #[test]
    fn receiver_never_panics_on_arbitrary_frames(
        frames in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..=64), 0u64..3000, any::<bool>()),
            0..64
        ),
        ext in any::<bool>(),
    ) {
        let (_, mut tb) = pair_cfg();
        tb.frame_mode = FrameMode::Fd { tx_dl: 64 };
        tb.max_pdu_len = 1 << 20;
        if ext {
            tb.addressing = Addressing::Mixed { ae: 0 };
        }
        let mut b = ch(tb);
        let mut now = Instant::now();
        for (data, dt, confirm) in frames {
            now += Duration::from_micros(dt * 500);
            let f = match crate::router::frame::fd_len_round_up(data.len()) {
                Some(l) if l == data.len() => CanAnyFrame::Fd(CanFdFrame::new(sid(0x7E0), &data).unwrap()),
                _ => continue,
            };
            b.on_frame(now, &f);
            b.poll(now);
            if let Some(out) = b.poll_transmit(now) {
                prop_assert!(out.data().len() <= 64);
                if confirm { b.on_tx_confirm(now) }
            }
            let _ = events(&mut b);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Driver tests over an in-test port pair.

/// One end of a point-to-point in-memory CAN link.
struct LinkPort {
    name: String,
    fd: bool,
    tx: mpsc::Sender<CanAnyFrame>,
    rx: Mutex<mpsc::Receiver<CanAnyFrame>>,
}

impl CanPort for LinkPort {
    fn name(&self) -> &str {
        &self.name
    }
    fn fd_capable(&self) -> bool {
        self.fd
    }
    async fn send(&self, frame: CanAnyFrame) -> Result<(), CanError> {
        self.tx
            .send(frame)
            .await
            .map_err(|_| CanError::Closed(self.name.clone()))
    }
    async fn recv(&self) -> Result<CanAnyFrame, CanError> {
        self.rx
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| CanError::Closed(self.name.clone()))
    }
}

fn link(fd: bool) -> (Arc<LinkPort>, Arc<LinkPort>) {
    let (atx, arx) = mpsc::channel(256);
    let (btx, brx) = mpsc::channel(256);
    (
        Arc::new(LinkPort {
            name: "link:a".into(),
            fd,
            tx: atx,
            rx: Mutex::new(brx),
        }),
        Arc::new(LinkPort {
            name: "link:b".into(),
            fd,
            tx: btx,
            rx: Mutex::new(arx),
        }),
    )
}

#[tokio::test(start_paused = true)]
async fn driver_several_channels_on_one_port_both_ways() {
    let (pa, pb) = link(false);
    let gw = IsoTpMux::new(pa);
    let ecus = IsoTpMux::new(pb);
    let mut tasks = Vec::new();
    for (i, (req, resp)) in [(0x7E0u16, 0x7E8u16), (0x7E1, 0x7E9), (0x7E2, 0x7EA)]
        .into_iter()
        .enumerate()
    {
        let mut tcfg = IsoTpConfig::new(sid(req), sid(resp));
        tcfg.st_min = StMin::from_byte(0xF5);
        tcfg.block_size = 4;
        let mut ecfg = IsoTpConfig::new(sid(resp), sid(req));
        ecfg.block_size = i as u8;
        ecfg.st_min = StMin::from_byte(i as u8);
        let tester = Arc::new(gw.open(tcfg).unwrap());
        let ecu = Arc::new(ecus.open(ecfg).unwrap());
        let len = 4095 - i * 1000;
        tasks.push(tokio::spawn(async move {
            // ECU echoes every request reversed.
            let echo = tokio::spawn({
                let ecu = ecu.clone();
                async move {
                    let req = ecu.recv().await.unwrap();
                    let mut v = req.to_vec();
                    v.reverse();
                    ecu.send(v.into()).await.unwrap();
                }
            });
            let req = pdu(len);
            tester.send(req.clone()).await.unwrap();
            let resp = tester.recv_pdu().await.unwrap();
            assert_eq!(resp.addr.rx_id, sid(resp_id(i)));
            let mut want = req.to_vec();
            want.reverse();
            assert_eq!(resp.data, Bytes::from(want));
            echo.await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(gw.unrouted_frames(), 0);
}

fn resp_id(i: usize) -> u16 {
    0x7E8 + i as u16
}

#[tokio::test(start_paused = true)]
async fn driver_fd_large_pdu() {
    let (pa, pb) = link(true);
    let (a, b) = (IsoTpMux::new(pa), IsoTpMux::new(pb));
    let (mut ta, mut tb) = pair_cfg();
    for c in [&mut ta, &mut tb] {
        c.frame_mode = FrameMode::Fd { tx_dl: 64 };
        c.max_pdu_len = 70_000;
    }
    let (ha, hb) = (a.open(ta).unwrap(), b.open(tb).unwrap());
    let data = pdu(65_000);
    let (sent, got) = tokio::join!(ha.send(data.clone()), hb.recv());
    sent.unwrap();
    assert_eq!(got.unwrap(), data);
}

#[tokio::test(start_paused = true)]
async fn driver_reports_n_bs_timeout_to_sender() {
    let (pa, _pb) = link(false);
    let a = IsoTpMux::new(pa);
    let (ta, _) = pair_cfg();
    let h = a.open(ta).unwrap();
    let t0 = Instant::now();
    assert_eq!(h.send(pdu(100)).await, Err(IsoTpError::TimeoutBs));
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
    // A single frame still goes through afterwards.
    assert_eq!(h.send(pdu(5)).await, Ok(()));
}

#[tokio::test(start_paused = true)]
async fn driver_reports_n_cr_timeout_to_receiver() {
    let (pa, pb) = link(false);
    let a = IsoTpMux::new(pa);
    let (ta, _) = pair_cfg();
    let h = a.open(ta).unwrap();
    pb.send(classic(0x7E8, &[0x10, 0x20, 1, 2, 3, 4, 5, 6]))
        .await
        .unwrap();
    let fc = pb.recv().await.unwrap();
    assert_eq!(fc.id(), sid(0x7E0));
    assert_eq!(fc.data(), [0x30, 0, 0]);
    let t0 = Instant::now();
    assert_eq!(h.recv().await, Err(IsoTpError::TimeoutCr));
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn driver_reports_dropped_pdus_when_nobody_reads() {
    let (pa, pb) = link(false);
    let a = IsoTpMux::with_options(
        pa,
        MuxOptions {
            pdu_queue: 1,
            ..MuxOptions::default()
        },
    );
    let (ta, _) = pair_cfg();
    let h = a.open(ta).unwrap();
    for i in 0..4u8 {
        pb.send(classic(0x7E8, &[0x01, i])).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(h.recv().await.unwrap(), Bytes::from_static(&[0]));
    assert_eq!(
        h.recv().await,
        Err(IsoTpError::ReceiveQueueFull { dropped: 3 })
    );
    pb.send(classic(0x7E8, &[0x01, 9])).await.unwrap();
    assert_eq!(h.recv().await.unwrap(), Bytes::from_static(&[9]));
}

#[tokio::test(start_paused = true)]
async fn driver_rejects_clashing_channels_and_fd_on_classic_port() {
    let (pa, _pb) = link(false);
    let a = IsoTpMux::new(pa);
    let _h = a.open(IsoTpConfig::new(sid(0x7E0), sid(0x7E8))).unwrap();
    assert_eq!(
        a.open(IsoTpConfig::new(sid(0x7E1), sid(0x7E8)))
            .unwrap_err(),
        IsoTpError::DuplicateChannel {
            rx_id: sid(0x7E8),
            ext: None
        }
    );
    let mut e1 = IsoTpConfig::new(sid(0x6F1), sid(0x600));
    e1.addressing = Addressing::Extended {
        tx_ta: 0x10,
        rx_ta: 0xF1,
    };
    let mut e2 = e1.clone();
    e2.addressing = Addressing::Extended {
        tx_ta: 0x11,
        rx_ta: 0xF2,
    };
    let _h1 = a.open(e1).unwrap();
    let _h2 = a.open(e2).unwrap(); // same id, other address byte: fine
    // Dropping a handle frees its receive id at once, before its task has run.
    drop(_h);
    let again = a.open(IsoTpConfig::new(sid(0x7E1), sid(0x7E8)));
    assert!(again.is_ok(), "{again:?}");
    let mut fd = IsoTpConfig::new(sid(0x100), sid(0x101));
    fd.frame_mode = FrameMode::Fd { tx_dl: 64 };
    assert_eq!(a.open(fd).unwrap_err(), IsoTpError::FdNotSupported);
}

#[tokio::test(start_paused = true)]
async fn driver_extended_addressing_demux_on_one_id() {
    let (pa, pb) = link(false);
    let (gw, ecus) = (IsoTpMux::new(pa), IsoTpMux::new(pb));
    let mut handles = Vec::new();
    for ta in [0x10u8, 0x11] {
        let mut t = IsoTpConfig::new(sid(0x6F1), sid(0x600));
        t.addressing = Addressing::Extended {
            tx_ta: ta,
            rx_ta: 0xF0 | (ta & 0x0F),
        };
        let mut e = IsoTpConfig::new(sid(0x600), sid(0x6F1));
        e.addressing = Addressing::Extended {
            tx_ta: 0xF0 | (ta & 0x0F),
            rx_ta: ta,
        };
        handles.push((gw.open(t).unwrap(), ecus.open(e).unwrap(), ta));
    }
    for (t, e, ta) in &handles {
        let data = pdu(40 + *ta as usize);
        let (s, r) = tokio::join!(t.send(data.clone()), e.recv());
        s.unwrap();
        assert_eq!(r.unwrap(), data);
    }
}

#[tokio::test(start_paused = true)]
async fn driver_closed_port_fails_channels() {
    let (pa, pb) = link(false);
    let a = IsoTpMux::new(pa);
    let h = a.open(IsoTpConfig::new(sid(0x7E0), sid(0x7E8))).unwrap();
    drop(pb); // the other end goes away: recv on our port ends
    assert_eq!(h.recv().await, Err(IsoTpError::Closed));
    assert_eq!(h.send(pdu(3)).await, Err(IsoTpError::Closed));
}

/// A port whose first `fail` receives return an I/O error, then behaves like `inner`.
struct FlakyPort {
    inner: Arc<LinkPort>,
    fail: std::sync::atomic::AtomicU32,
}

impl CanPort for FlakyPort {
    fn name(&self) -> &str {
        "flaky"
    }
    fn fd_capable(&self) -> bool {
        false
    }
    async fn send(&self, frame: CanAnyFrame) -> Result<(), CanError> {
        self.inner.send(frame).await
    }
    async fn recv(&self) -> Result<CanAnyFrame, CanError> {
        use std::sync::atomic::Ordering;
        if self
            .fail
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(CanError::Io {
                iface: "flaky".into(),
                op: "read",
                source: std::io::Error::from_raw_os_error(libc::ENETDOWN),
            });
        }
        self.inner.recv().await
    }
}

#[tokio::test(start_paused = true)]
async fn driver_survives_transient_port_errors_with_backoff() {
    let (pa, pb) = link(false);
    let port = Arc::new(FlakyPort {
        inner: pa,
        fail: std::sync::atomic::AtomicU32::new(5),
    });
    let a = IsoTpMux::new(port);
    let h = a.open(IsoTpConfig::new(sid(0x7E0), sid(0x7E8))).unwrap();
    let t0 = Instant::now();
    pb.send(classic(0x7E8, &[0x02, 0x50, 0x03])).await.unwrap();
    assert_eq!(h.recv().await.unwrap(), Bytes::from_static(&[0x50, 0x03]));
    // Five errors, each followed by a 10 ms pause: the loop did not spin.
    assert!(t0.elapsed() >= Duration::from_millis(50));
}

#[tokio::test(start_paused = true)]
async fn functional_request_then_physical_responses() {
    let (pa, pb) = link(false);
    let (gw, ecus) = (IsoTpMux::new(pa), IsoTpMux::new(pb));
    let mut functional = IsoTpConfig::new(sid(0x7DF), sid(0x7E8));
    functional.padding = Some(0xCC);
    // Two ECUs listen on the functional id and answer on their own ids.
    let ecu_fn = ecus.open(IsoTpConfig::new(sid(0x7E8), sid(0x7DF))).unwrap();
    let engine = gw.open(IsoTpConfig::new(sid(0x7E0), sid(0x7E8))).unwrap();
    gw.send_functional(&functional, &[0x09, 0x02])
        .await
        .unwrap();
    assert_eq!(
        ecu_fn.recv().await.unwrap(),
        Bytes::from_static(&[0x09, 0x02])
    );
    // The ECU answers with a multi-frame VIN; our flow control goes to its physical request
    // id 0x7E0, where its physical channel (same tx id 0x7E8) listens.
    let ecu = ecus.open(IsoTpConfig::new(sid(0x7E8), sid(0x7E0))).unwrap();
    let vin = Bytes::from_static(b"\x49\x02\x01WVWZZZ1JZXW000001");
    let (s, r) = tokio::join!(ecu.send(vin.clone()), engine.recv());
    s.unwrap();
    assert_eq!(r.unwrap(), vin);
    // Functional requests are single frames only.
    assert_eq!(
        gw.send_functional(&functional, &[0; 8]).await,
        Err(IsoTpError::TooLong { len: 8, max: 7 })
    );
    let f = functional_frame(&functional, &[0x01, 0x0D]).unwrap();
    assert_eq!(f.id(), sid(0x7DF));
    assert_eq!(f.data(), [0x02, 0x01, 0x0D, 0xCC, 0xCC, 0xCC, 0xCC, 0xCC]);
}
