//! The sans-IO ISO-TP channel: segmentation, reassembly, flow control and timers for one
//! pair of CAN ids.
//!
//! Owns: [`IsoTpChannel`], its inputs (`on_frame`/`on_payload`, `send`, `on_tx_confirm`,
//! `on_tx_error`, `poll`), its outputs (`poll_transmit` frames, `poll_event` events,
//! `poll_at` deadline) and [`IsoTpError`].
//!
//! Does not own: I/O, clocks or tasks (see `driver` and `kernel`), nor the byte layout (see
//! `crate::wire::isotp`).
//!
//! Contract with the driver:
//! - At most one frame is in flight. After `poll_transmit` returns a frame, the driver
//!   transmits it and calls `on_tx_confirm(now)` once the port accepted it, or
//!   `on_tx_error` if it failed; until then `poll_transmit` returns `None`. N_As (and N_Ar
//!   for our flow control) run from `poll_transmit` to the confirmation.
//! - STmin is measured from the confirmation of one consecutive frame to the next
//!   `poll_transmit` that returns a consecutive frame.
//! - Every `send` that returned `Ok` ends with exactly one `IsoTpEvent::SendComplete`,
//!   success or error: never a silent success.
//! - The reassembly buffer is reserved once per PDU (the announced length, bounded by
//!   `max_pdu_len`); each frame's bytes are copied into it once and the PDU is handed out
//!   as `Bytes` without another copy. No allocation per frame.

use super::config::{ConfigError, FD_DEFAULT_PAD, IsoTpConfig};
use crate::router::frame::{CanFdFrame, CanFrame, fd_len_round_up};
use crate::vehicle::can::CanAnyFrame;
use crate::wire::isotp::{self, FF_DL_12BIT_MAX, FlowStatus, Packet, Repr, StMin};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Why a transfer failed. Cheap to clone; carries no payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsoTpError {
    /// N_As: the CAN port did not transmit our frame in time.
    #[error(
        "ISO-TP N_As timeout: the CAN port did not transmit a frame in time (bus busy, bus-off or no other node acknowledging)"
    )]
    TimeoutAs,
    /// N_Ar: the CAN port did not transmit our flow control in time.
    #[error("ISO-TP N_Ar timeout: our flow-control frame was not transmitted in time")]
    TimeoutAr,
    /// N_Bs: no flow control arrived after a first frame or a block.
    #[error(
        "ISO-TP N_Bs timeout: no flow control from the receiver (check that it listens on our tx id and answers on our rx id, and the addressing mode)"
    )]
    TimeoutBs,
    /// N_Cr: consecutive frames stopped arriving.
    #[error("ISO-TP N_Cr timeout: the sender stopped sending consecutive frames mid-PDU")]
    TimeoutCr,
    /// A consecutive frame with the wrong sequence number; the PDU is dropped.
    #[error("ISO-TP wrong sequence number: expected {expected}, got {got}; PDU dropped")]
    WrongSequenceNumber { expected: u8, got: u8 },
    /// A new single or first frame interrupted a segmented reception; the old PDU is dropped.
    #[error("ISO-TP unexpected PDU: a new PDU started before the previous one was complete")]
    UnexpectedPdu,
    /// The receiver answered FC OVERFLOW: our PDU is larger than its buffer.
    #[error("ISO-TP overflow: the receiver has no buffer for a PDU of this size (FC OVFLW)")]
    PeerOverflow,
    /// The peer announced a PDU larger than `max_pdu_len`; we answered FC OVERFLOW.
    #[error(
        "ISO-TP buffer overflow: peer announced a {len}-byte PDU, above max_pdu_len {max}; answered FC OVFLW (raise max_pdu_len if legitimate)"
    )]
    BufferOverflow { len: u32, max: u32 },
    /// More consecutive FC WAIT frames than `max_wait_frames`.
    #[error("ISO-TP: receiver sent more than {max} FC WAIT frames in a row; send aborted")]
    TooManyWaits { max: u16 },
    /// Flow control with a reserved flow status.
    #[error("ISO-TP flow control with invalid flow status {0:#X}; send aborted")]
    InvalidFlowStatus(u8),
    /// `send` with an empty PDU.
    #[error("ISO-TP cannot send an empty PDU")]
    EmptyPdu,
    /// `send` with a PDU above `max_pdu_len`.
    #[error("ISO-TP PDU of {len} bytes exceeds max_pdu_len {max}")]
    TooLong { len: usize, max: u32 },
    /// `send` while a send is in progress (the driver queues sends instead).
    #[error("ISO-TP channel busy: a PDU is already being sent")]
    Busy,
    /// The CAN port refused a frame.
    #[error("ISO-TP: CAN port error: {0}")]
    Port(Arc<str>),
    /// The kernel's CAN_ISOTP socket reported an error.
    #[error("ISO-TP kernel socket: {op}: {message} (errno {errno})")]
    Kernel {
        op: &'static str,
        errno: i32,
        message: Arc<str>,
    },
    /// The channel's task or port is gone.
    #[error("ISO-TP channel closed (its CAN port stopped or the channel was dropped)")]
    Closed,
    /// Received PDUs were dropped because nobody called `recv` and the queue was full.
    #[error("ISO-TP receive queue full: {dropped} PDU(s) dropped; call recv() faster")]
    ReceiveQueueFull { dropped: u64 },
    /// The channel's configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Two channels on one port with the same receive id and address byte.
    #[error("ISO-TP channel on rx id {rx_id} (address byte {ext:?}) is already open on this port")]
    DuplicateChannel {
        rx_id: crate::router::frame::CanId,
        ext: Option<u8>,
    },
    /// An FD channel on a port that cannot carry FD frames.
    #[error("ISO-TP FD channel on a port that is not CAN FD capable")]
    FdNotSupported,
}

/// What the channel reports to its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IsoTpEvent {
    /// A complete PDU arrived.
    Received(Bytes),
    /// A reception failed; the partial PDU is dropped.
    ReceiveFailed(IsoTpError),
    /// The PDU given to `send` was completely transmitted, or failed.
    SendComplete(Result<(), IsoTpError>),
}

/// Where the sender is.
#[derive(Debug)]
enum TxPhase {
    /// `send` accepted the PDU at `since`; the SF or FF is ready.
    Start { since: Instant },
    /// A frame is in flight; what to do once it is confirmed.
    /// A frame is in flight since `since` (N_As runs from there); what to do once it is
    /// confirmed. Deadlines are computed when polled, not stored, to keep the per-frame
    /// path free of clock arithmetic.
    AwaitConfirm { since: Instant, then: AfterTx },
    /// Waiting for flow control (N_Bs).
    AwaitFc { deadline: Instant },
    /// The next consecutive frame may go at `ready_at`.
    Cf { ready_at: Instant },
}

#[derive(Debug, Clone, Copy)]
enum AfterTx {
    Done,
    AwaitFc,
    Cf,
}

#[derive(Debug)]
struct Tx {
    /// The PDU; frames copy from it, it is never copied whole.
    data: Bytes,
    /// Bytes already put into frames.
    offset: usize,
    /// SN of the next consecutive frame.
    sn: u8,
    /// Consecutive frames left in this block; `None` when the receiver set BS 0.
    block_left: Option<u8>,
    /// Peer's STmin.
    st_min: Duration,
    /// FC WAIT frames in a row.
    waits: u16,
    phase: TxPhase,
}

#[derive(Debug)]
struct Rx {
    /// Reserved once, for the whole PDU.
    buf: BytesMut,
    /// FF_DL.
    total: usize,
    next_sn: u8,
    /// Consecutive frames received since our last FC.
    in_block: u8,
    /// Last activity (FF, CF, or our FC confirmed); N_Cr runs from there.
    last: Instant,
}

/// Which side owns the frame in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InFlight {
    /// Our flow control (receiver side), in flight since `since` (N_Ar).
    Fc { since: Instant },
    /// A frame of the PDU we send (deadline in `TxPhase::AwaitConfirm`).
    Data,
}

/// Counters for status and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Frames handed to `on_frame`/`on_payload` that were for us and well-formed.
    pub frames_in: u64,
    /// Frames returned by `poll_transmit`.
    pub frames_out: u64,
    /// Frames for us that did not parse, or arrived in a state that ignores them.
    pub frames_ignored: u64,
    /// PDUs delivered.
    pub pdus_in: u64,
    /// PDUs completely sent.
    pub pdus_out: u64,
}

/// One ISO-TP channel (a tx id / rx id pair), sans IO.
#[derive(Debug)]
pub struct IsoTpChannel {
    /// Validated configuration.
    cfg: IsoTpConfig,
    /// Frame length we transmit with.
    tx_dl: usize,
    /// Sender state; `None` when idle.
    tx: Option<Tx>,
    /// Receiver state; `None` when idle.
    rx: Option<Rx>,
    /// Flow control the receiver side must send next, and since when.
    fc_pending: Option<(FlowStatus, Instant)>,
    /// The frame awaiting confirmation, if any.
    in_flight: Option<InFlight>,
    /// Events for the user; a few per PDU, capacity reused.
    events: VecDeque<IsoTpEvent>,
    stats: ChannelStats,
}

impl IsoTpChannel {
    /// A channel with a validated configuration.
    pub fn new(cfg: IsoTpConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(IsoTpChannel {
            tx_dl: cfg.tx_dl(),
            cfg,
            tx: None,
            rx: None,
            fc_pending: None,
            in_flight: None,
            events: VecDeque::with_capacity(4),
            stats: ChannelStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &IsoTpConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> ChannelStats {
        self.stats
    }

    /// Whether a PDU is being sent (a new `send` would fail with `Busy`).
    pub fn is_sending(&self) -> bool {
        self.tx.is_some()
    }

    /// Whether a segmented PDU is being received.
    pub fn is_receiving(&self) -> bool {
        self.rx.is_some()
    }

    /// Start sending a PDU. Completion is reported by `IsoTpEvent::SendComplete`.
    pub fn send(&mut self, now: Instant, data: Bytes) -> Result<(), IsoTpError> {
        if self.tx.is_some() {
            return Err(IsoTpError::Busy);
        }
        if data.is_empty() {
            return Err(IsoTpError::EmptyPdu);
        }
        if data.len() as u64 > self.cfg.max_pdu_len as u64 {
            return Err(IsoTpError::TooLong {
                len: data.len(),
                max: self.cfg.max_pdu_len,
            });
        }
        self.tx = Some(Tx {
            data,
            offset: 0,
            sn: 1,
            block_left: None,
            st_min: Duration::ZERO,
            waits: 0,
            phase: TxPhase::Start { since: now },
        });
        Ok(())
    }

    /// Feed a received CAN frame. Returns whether it was addressed to this channel (id,
    /// frame type and address byte match); frames for other channels are left alone.
    #[inline]
    pub fn on_frame(&mut self, now: Instant, frame: &CanAnyFrame) -> bool {
        if frame.id() != self.cfg.rx_id {
            return false;
        }
        if let CanAnyFrame::Classic(f) = frame
            && f.is_remote()
        {
            return false;
        }
        if matches!(frame, CanAnyFrame::Fd(_)) && !self.cfg.is_fd() {
            return false;
        }
        self.on_payload(now, frame.data())
    }

    /// Feed the payload of a frame already known to carry this channel's rx id. Returns
    /// whether the address byte (if any) matched.
    pub fn on_payload(&mut self, now: Instant, data: &[u8]) -> bool {
        let rx_ext = self.cfg.addressing.rx_ext();
        // Fast path for the bulk of a transfer: consecutive frames.
        if let Some((ext, sn, payload)) = isotp::parse_consecutive(data, rx_ext.is_some()) {
            if ext != rx_ext {
                return false;
            }
            self.stats.frames_in += 1;
            self.on_consecutive(now, sn, payload);
            return true;
        }
        self.on_other(now, data, rx_ext)
    }

    #[inline(never)]
    fn on_other(&mut self, now: Instant, data: &[u8], rx_ext: Option<u8>) -> bool {
        let packet = match Packet::new_checked(data, rx_ext.is_some()) {
            Ok(p) => p,
            Err(_) => {
                if rx_ext.is_some() && data.first().copied() != rx_ext {
                    return false;
                }
                self.stats.frames_ignored += 1;
                return true;
            }
        };
        if packet.ext() != rx_ext {
            return false;
        }
        match Repr::parse(&packet) {
            Ok(repr) => {
                self.stats.frames_in += 1;
                self.on_repr(now, repr);
            }
            Err(isotp::Error::ReservedFlowStatus(fs)) if self.awaiting_fc() => {
                self.stats.frames_in += 1;
                self.fail_send(IsoTpError::InvalidFlowStatus(fs));
            }
            // Invalid frames are ignored, as the standard says.
            Err(_) => self.stats.frames_ignored += 1,
        }
        true
    }

    fn awaiting_fc(&self) -> bool {
        matches!(
            self.tx.as_ref().map(|t| &t.phase),
            Some(TxPhase::AwaitFc { .. })
                | Some(TxPhase::AwaitConfirm {
                    then: AfterTx::AwaitFc,
                    ..
                })
        )
    }

    fn on_repr(&mut self, now: Instant, repr: Repr<'_>) {
        match repr {
            Repr::Single { data } => {
                if self.rx.take().is_some() {
                    self.events
                        .push_back(IsoTpEvent::ReceiveFailed(IsoTpError::UnexpectedPdu));
                }
                if data.len() as u64 > self.cfg.max_pdu_len as u64 {
                    self.events
                        .push_back(IsoTpEvent::ReceiveFailed(IsoTpError::BufferOverflow {
                            len: data.len() as u32,
                            max: self.cfg.max_pdu_len,
                        }));
                    return;
                }
                self.stats.pdus_in += 1;
                self.events
                    .push_back(IsoTpEvent::Received(Bytes::copy_from_slice(data)));
            }
            Repr::First { total_len, data } => {
                if self.rx.take().is_some() {
                    self.events
                        .push_back(IsoTpEvent::ReceiveFailed(IsoTpError::UnexpectedPdu));
                }
                if total_len > self.cfg.max_pdu_len {
                    self.fc_pending = Some((FlowStatus::Overflow, now));
                    self.events
                        .push_back(IsoTpEvent::ReceiveFailed(IsoTpError::BufferOverflow {
                            len: total_len,
                            max: self.cfg.max_pdu_len,
                        }));
                    return;
                }
                let total = total_len as usize;
                let mut buf = BytesMut::with_capacity(total);
                buf.extend_from_slice(data);
                self.rx = Some(Rx {
                    buf,
                    total,
                    next_sn: 1,
                    in_block: 0,
                    last: now,
                });
                self.fc_pending = Some((FlowStatus::ContinueToSend, now));
            }
            Repr::Consecutive { sn, data } => self.on_consecutive(now, sn, data),
            Repr::FlowControl {
                status,
                block_size,
                st_min,
            } => self.on_flow_control(now, status, block_size, st_min),
        }
    }

    #[inline]
    fn on_consecutive(&mut self, now: Instant, sn: u8, data: &[u8]) {
        let Some(rx) = self.rx.as_mut() else {
            self.stats.frames_ignored += 1;
            return;
        };
        if sn != rx.next_sn {
            let expected = rx.next_sn;
            self.rx = None;
            self.events
                .push_back(IsoTpEvent::ReceiveFailed(IsoTpError::WrongSequenceNumber {
                    expected,
                    got: sn,
                }));
            return;
        }
        let take = (rx.total - rx.buf.len()).min(data.len());
        rx.buf.extend_from_slice(&data[..take]);
        rx.next_sn = (sn + 1) & 0x0F;
        if rx.buf.len() == rx.total {
            if let Some(rx) = self.rx.take() {
                self.stats.pdus_in += 1;
                self.events.push_back(IsoTpEvent::Received(rx.buf.freeze()));
            }
            return;
        }
        rx.last = now;
        if self.cfg.block_size > 0 {
            rx.in_block += 1;
            if rx.in_block == self.cfg.block_size {
                rx.in_block = 0;
                self.fc_pending = Some((FlowStatus::ContinueToSend, now));
            }
        }
    }

    fn on_flow_control(&mut self, now: Instant, status: FlowStatus, bs: u8, st_min: StMin) {
        if !self.awaiting_fc() {
            self.stats.frames_ignored += 1;
            return;
        }
        // An FC can overtake the confirmation of our first frame: it proves the frame
        // reached the bus.
        if self.in_flight == Some(InFlight::Data) {
            self.in_flight = None;
        }
        let max_waits = self.cfg.max_wait_frames;
        let n_bs = self.cfg.n_bs;
        let Some(tx) = self.tx.as_mut() else { return };
        match status {
            FlowStatus::ContinueToSend => {
                tx.waits = 0;
                tx.block_left = (bs > 0).then_some(bs);
                tx.st_min = st_min.duration();
                tx.phase = TxPhase::Cf { ready_at: now };
            }
            FlowStatus::Wait => {
                tx.waits += 1;
                if tx.waits > max_waits {
                    self.fail_send(IsoTpError::TooManyWaits { max: max_waits });
                } else {
                    tx.phase = TxPhase::AwaitFc {
                        deadline: now + n_bs,
                    };
                }
            }
            FlowStatus::Overflow => self.fail_send(IsoTpError::PeerOverflow),
        }
    }

    fn fail_send(&mut self, err: IsoTpError) {
        if self.tx.take().is_some() {
            if self.in_flight == Some(InFlight::Data) {
                self.in_flight = None;
            }
            self.events.push_back(IsoTpEvent::SendComplete(Err(err)));
        }
    }

    fn fail_receive(&mut self, err: IsoTpError) {
        self.rx = None;
        self.events.push_back(IsoTpEvent::ReceiveFailed(err));
    }

    /// The next frame to transmit now, if any. See the module doc for the confirmation
    /// contract.
    #[inline]
    pub fn poll_transmit(&mut self, now: Instant) -> Option<CanAnyFrame> {
        if self.in_flight.is_some() || (self.fc_pending.is_none() && self.tx.is_none()) {
            return None;
        }
        self.transmit(now)
    }

    #[inline(never)]
    fn transmit(&mut self, now: Instant) -> Option<CanAnyFrame> {
        if let Some((status, _)) = self.fc_pending.take() {
            let repr = Repr::FlowControl {
                status,
                block_size: self.cfg.block_size,
                st_min: self.cfg.st_min,
            };
            self.in_flight = Some(InFlight::Fc { since: now });
            self.stats.frames_out += 1;
            return Some(build_frame(&self.cfg, self.cfg.addressing.tx_ext(), &repr));
        }
        let tx = self.tx.as_mut()?;
        let tx_ext = self.cfg.addressing.tx_ext();
        let e = tx_ext.is_some() as usize;
        let tx_dl = self.tx_dl;
        let (repr_kind, taken, then) = match tx.phase {
            TxPhase::Start { .. } => {
                let len = tx.data.len();
                let sf_max = if self.cfg.is_fd() {
                    isotp::max_single_frame_data(tx_dl, e == 1)
                } else {
                    7 - e
                };
                if len <= sf_max {
                    (0u8, len, AfterTx::Done)
                } else {
                    let hdr = if len as u64 > FF_DL_12BIT_MAX as u64 {
                        6
                    } else {
                        2
                    };
                    (1u8, tx_dl - e - hdr, AfterTx::AwaitFc)
                }
            }
            TxPhase::Cf { ready_at } if now >= ready_at => {
                let left = tx.data.len() - tx.offset;
                let n = left.min(tx_dl - e - 1);
                let then = if n == left {
                    AfterTx::Done
                } else {
                    match tx.block_left.as_mut() {
                        Some(b) if *b <= 1 => AfterTx::AwaitFc,
                        Some(b) => {
                            *b -= 1;
                            AfterTx::Cf
                        }
                        None => AfterTx::Cf,
                    }
                };
                (2u8, n, then)
            }
            _ => return None,
        };
        let start = tx.offset;
        let chunk = &tx.data[start..start + taken];
        let repr = match repr_kind {
            0 => Repr::Single { data: chunk },
            1 => Repr::First {
                total_len: tx.data.len() as u32,
                data: chunk,
            },
            _ => Repr::Consecutive {
                sn: tx.sn,
                data: chunk,
            },
        };
        let frame = build_frame(&self.cfg, tx_ext, &repr);
        if repr_kind == 2 {
            tx.sn = (tx.sn + 1) & 0x0F;
        }
        tx.offset += taken;
        tx.phase = TxPhase::AwaitConfirm { since: now, then };
        self.in_flight = Some(InFlight::Data);
        self.stats.frames_out += 1;
        Some(frame)
    }

    /// The frame returned by the last `poll_transmit` reached the bus.
    pub fn on_tx_confirm(&mut self, now: Instant) {
        match self.in_flight.take() {
            Some(InFlight::Fc { .. }) => {
                if let Some(rx) = self.rx.as_mut() {
                    rx.last = now;
                }
            }
            Some(InFlight::Data) => {
                let n_bs = self.cfg.n_bs;
                let Some(tx) = self.tx.as_mut() else { return };
                let TxPhase::AwaitConfirm { then, .. } = tx.phase else {
                    return;
                };
                match then {
                    AfterTx::Done => {
                        self.tx = None;
                        self.stats.pdus_out += 1;
                        self.events.push_back(IsoTpEvent::SendComplete(Ok(())));
                    }
                    AfterTx::AwaitFc => {
                        tx.phase = TxPhase::AwaitFc {
                            deadline: now + n_bs,
                        }
                    }
                    AfterTx::Cf => {
                        let ready_at = if tx.st_min.is_zero() {
                            now
                        } else {
                            now + tx.st_min
                        };
                        tx.phase = TxPhase::Cf { ready_at }
                    }
                }
            }
            None => {}
        }
    }

    /// The frame returned by the last `poll_transmit` could not be sent; the transfer it
    /// belongs to fails with `err`.
    pub fn on_tx_error(&mut self, _now: Instant, err: IsoTpError) {
        match self.in_flight.take() {
            Some(InFlight::Fc { .. }) if self.rx.is_some() => self.fail_receive(err),
            Some(InFlight::Data) => self.fail_send(err),
            _ => {}
        }
    }

    /// Run the timers: N_As/N_Ar, N_Bs and N_Cr expiries become error events.
    pub fn poll(&mut self, now: Instant) {
        if let Some(InFlight::Fc { since }) = self.in_flight
            && now >= since + self.cfg.n_as
        {
            self.in_flight = None;
            if self.rx.is_some() {
                self.fail_receive(IsoTpError::TimeoutAr);
            }
        }
        if let Some(tx) = &self.tx {
            match tx.phase {
                TxPhase::AwaitConfirm { since, .. } if now >= since + self.cfg.n_as => {
                    self.fail_send(IsoTpError::TimeoutAs)
                }
                TxPhase::AwaitFc { deadline } if now >= deadline => {
                    self.fail_send(IsoTpError::TimeoutBs)
                }
                _ => {}
            }
        }
        let fc_busy =
            matches!(self.in_flight, Some(InFlight::Fc { .. })) || self.fc_pending.is_some();
        if let Some(rx) = &self.rx
            && !fc_busy
            && now >= rx.last + self.cfg.n_cr
        {
            self.fail_receive(IsoTpError::TimeoutCr);
        }
    }

    /// When `poll` or `poll_transmit` next has work: a timer deadline, the time the next
    /// consecutive frame may go, or a time in the past when a frame is ready now.
    pub fn poll_at(&self) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        let mut add = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        match self.in_flight {
            Some(InFlight::Fc { since }) => add(since + self.cfg.n_as),
            Some(InFlight::Data) => {}
            None => {
                if let Some((_, since)) = self.fc_pending {
                    add(since);
                }
            }
        }
        if let Some(tx) = &self.tx {
            match tx.phase {
                TxPhase::Start { since } if self.in_flight.is_none() => add(since),
                TxPhase::Start { .. } => {}
                TxPhase::AwaitConfirm { since, .. } => add(since + self.cfg.n_as),
                TxPhase::AwaitFc { deadline } => add(deadline),
                TxPhase::Cf { ready_at } => add(ready_at),
            }
        }
        if let Some(rx) = &self.rx {
            add(rx.last + self.cfg.n_cr);
        }
        at
    }

    /// The next event for the user.
    pub fn poll_event(&mut self) -> Option<IsoTpEvent> {
        self.events.pop_front()
    }
}

/// The single frame carrying `data` on `cfg.tx_id` (with its addressing, frame mode and
/// padding), for functionally addressed requests (e.g. OBD-II to 0x7DF), which ISO 15765-2
/// limits to single frames. Fails with `EmptyPdu`, or `TooLong` when `data` needs more
/// than one frame.
pub fn functional_frame(cfg: &IsoTpConfig, data: &[u8]) -> Result<CanAnyFrame, IsoTpError> {
    cfg.validate()?;
    let tx_ext = cfg.addressing.tx_ext();
    let max = if cfg.is_fd() {
        isotp::max_single_frame_data(cfg.tx_dl(), tx_ext.is_some())
    } else {
        7 - tx_ext.is_some() as usize
    };
    if data.is_empty() {
        return Err(IsoTpError::EmptyPdu);
    }
    if data.len() > max {
        return Err(IsoTpError::TooLong {
            len: data.len(),
            max: max as u32,
        });
    }
    Ok(build_frame(cfg, tx_ext, &Repr::Single { data }))
}

/// Emit `repr` into a CAN or CAN FD frame with the configured padding.
fn build_frame(cfg: &IsoTpConfig, ext: Option<u8>, repr: &Repr<'_>) -> CanAnyFrame {
    let mut buf = [0u8; 64];
    let n = repr.emit(ext, &mut buf);
    let fd = cfg.is_fd();
    let len = match (fd, cfg.padding) {
        (false, Some(_)) => 8,
        (false, None) => n,
        (true, Some(_)) if n <= 8 => 8,
        (true, _) => fd_len_round_up(n).unwrap_or(64),
    };
    let pad = cfg.padding.unwrap_or(FD_DEFAULT_PAD);
    buf[n..len].fill(pad);
    // Invariants: classic frames are at most 8 bytes (tx_dl 8), FD lengths come from
    // fd_len_round_up and tx_dl is a validated FD length.
    if fd {
        match CanFdFrame::new(cfg.tx_id, &buf[..len]) {
            Ok(f) => CanAnyFrame::Fd(f),
            Err(e) => unreachable!("ISO-TP built an invalid FD frame: {e}"),
        }
    } else {
        match CanFrame::new(cfg.tx_id, &buf[..len]) {
            Ok(f) => CanAnyFrame::Classic(f),
            Err(e) => unreachable!("ISO-TP built an invalid classic frame: {e}"),
        }
    }
}
