//! SocketCAN error frames, decoded into controller bus state.
//!
//! Owns: the meaning of an error frame's `can_id` class bits and data bytes (the kernel's
//! `linux/can/error.h` layout), the [`BusState`] they imply and [`BusStateTracker`], a
//! sans-IO tracker that turns a stream of decoded error frames into state transitions.
//!
//! Does not own: reading error frames (see [`super::socketcan`]) or acting on bus-off.
//!
//! Layout: an error frame has `CAN_ERR_FLAG` (bit 29) set in `can_id`; the low bits of
//! `can_id` say which classes of error are reported; `data` is always 8 bytes: byte 1 the
//! controller status bits, bytes 6 and 7 the transmit and receive error counters (valid when
//! `CAN_ERR_CNT` is set). A short payload is read as zeros: nothing here panics.

use std::fmt;

/// `can_id` bit marking an error frame.
pub const CAN_ERR_FLAG: u32 = 0x2000_0000;
/// Class: transmit timeout.
pub const CAN_ERR_TX_TIMEOUT: u32 = 0x0001;
/// Class: lost arbitration.
pub const CAN_ERR_LOSTARB: u32 = 0x0002;
/// Class: controller problem, details in data byte 1.
pub const CAN_ERR_CRTL: u32 = 0x0004;
/// Class: protocol violation.
pub const CAN_ERR_PROT: u32 = 0x0008;
/// Class: transceiver status.
pub const CAN_ERR_TRX: u32 = 0x0010;
/// Class: no acknowledgement on transmission.
pub const CAN_ERR_ACK: u32 = 0x0020;
/// Class: bus off.
pub const CAN_ERR_BUSOFF: u32 = 0x0040;
/// Class: bus error.
pub const CAN_ERR_BUSERROR: u32 = 0x0080;
/// Class: the controller restarted (after bus-off).
pub const CAN_ERR_RESTARTED: u32 = 0x0100;
/// Data bytes 6/7 carry the error counters.
pub const CAN_ERR_CNT: u32 = 0x0200;
/// Every class bit: the error mask that asks the kernel for all error frames.
pub const CAN_ERR_MASK: u32 = 0x1FFF_FFFF;

/// Controller status bits in data byte 1.
pub mod crtl {
    pub const RX_OVERFLOW: u8 = 0x01;
    pub const TX_OVERFLOW: u8 = 0x02;
    pub const RX_WARNING: u8 = 0x04;
    pub const TX_WARNING: u8 = 0x08;
    pub const RX_PASSIVE: u8 = 0x10;
    pub const TX_PASSIVE: u8 = 0x20;
    pub const ACTIVE: u8 = 0x40;
}

/// The fault-confinement state of a CAN controller (ISO 11898-1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BusState {
    /// Normal operation (error counters below 96).
    #[default]
    ErrorActive,
    /// An error counter reached the warning level (96).
    ErrorWarning,
    /// An error counter reached 128: the controller sends passive error flags only.
    ErrorPassive,
    /// The transmit error counter passed 255: the controller takes no part in the bus.
    BusOff,
}

impl BusState {
    /// The name used in logs and status.
    pub const fn name(self) -> &'static str {
        match self {
            BusState::ErrorActive => "error-active",
            BusState::ErrorWarning => "error-warning",
            BusState::ErrorPassive => "error-passive",
            BusState::BusOff => "bus-off",
        }
    }
}

impl fmt::Display for BusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A decoded error frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorFrame {
    /// The class bits (`CAN_ERR_*`) from `can_id`.
    pub class: u32,
    /// Controller status bits (data byte 1, [`crtl`]).
    pub controller: u8,
    /// Transmit and receive error counters, when the frame carries them.
    pub counters: Option<(u8, u8)>,
}

impl ErrorFrame {
    /// Decode from the raw `can_id` and payload; `None` when `CAN_ERR_FLAG` is not set.
    pub fn decode(can_id: u32, data: &[u8]) -> Option<Self> {
        if can_id & CAN_ERR_FLAG == 0 {
            return None;
        }
        let class = can_id & CAN_ERR_MASK;
        let byte = |i: usize| data.get(i).copied().unwrap_or(0);
        Some(ErrorFrame {
            class,
            controller: byte(1),
            counters: (class & CAN_ERR_CNT != 0).then(|| (byte(6), byte(7))),
        })
    }

    /// Encode as the kernel does: `(can_id, data)`. Used to make synthetic error frames.
    pub fn encode(&self) -> (u32, [u8; 8]) {
        let mut data = [0u8; 8];
        data[1] = self.controller;
        let mut class = self.class & CAN_ERR_MASK;
        if let Some((tx, rx)) = self.counters {
            class |= CAN_ERR_CNT;
            data[6] = tx;
            data[7] = rx;
        }
        (class | CAN_ERR_FLAG, data)
    }

    /// The bus state this frame reports, if it reports one.
    ///
    /// Bus-off wins over everything; a restart means error-active again; otherwise the
    /// controller bits give passive, warning or active (the worst one set).
    pub fn state(&self) -> Option<BusState> {
        if self.class & CAN_ERR_BUSOFF != 0 {
            return Some(BusState::BusOff);
        }
        if self.class & CAN_ERR_RESTARTED != 0 {
            return Some(BusState::ErrorActive);
        }
        if self.class & CAN_ERR_CRTL != 0 {
            let c = self.controller;
            if c & (crtl::RX_PASSIVE | crtl::TX_PASSIVE) != 0 {
                return Some(BusState::ErrorPassive);
            }
            if c & (crtl::RX_WARNING | crtl::TX_WARNING) != 0 {
                return Some(BusState::ErrorWarning);
            }
            if c & crtl::ACTIVE != 0 {
                return Some(BusState::ErrorActive);
            }
        }
        None
    }
}

/// A state change reported by [`BusStateTracker::on_error_frame`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: BusState,
    pub to: BusState,
}

/// Follows the controller state through error frames (sans-IO).
#[derive(Clone, Copy, Debug, Default)]
pub struct BusStateTracker {
    state: BusState,
    bus_off_count: u64,
}

impl BusStateTracker {
    pub fn state(&self) -> BusState {
        self.state
    }

    /// How many times the bus went off.
    pub fn bus_off_count(&self) -> u64 {
        self.bus_off_count
    }

    /// Feed one error frame; returns the transition when the state changed.
    pub fn on_error_frame(&mut self, frame: &ErrorFrame) -> Option<Transition> {
        let to = frame.state()?;
        if to == self.state {
            return None;
        }
        let from = self.state;
        self.state = to;
        if to == BusState::BusOff {
            self.bus_off_count += 1;
        }
        Some(Transition { from, to })
    }

    /// Record a state learnt elsewhere (e.g. after a successful netlink restart).
    pub fn set(&mut self, state: BusState) -> Option<Transition> {
        if state == self.state {
            return None;
        }
        let from = self.state;
        self.state = state;
        Some(Transition { from, to: state })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_bus_off() {
        // candump shows a bus-off error frame from a controller as `20000040#0000000000000000`.
        let f = ErrorFrame::decode(0x2000_0040, &[0; 8]).unwrap();
        assert_eq!(f.class, CAN_ERR_BUSOFF);
        assert_eq!(f.state(), Some(BusState::BusOff));
        assert_eq!(f.counters, None);
    }

    #[test]
    fn golden_controller_passive_with_counters() {
        // Controller problem, TX passive, counters tx=128 rx=5.
        let id = CAN_ERR_FLAG | CAN_ERR_CRTL | CAN_ERR_CNT;
        let data = [0, crtl::TX_PASSIVE, 0, 0, 0, 0, 128, 5];
        let f = ErrorFrame::decode(id, &data).unwrap();
        assert_eq!(f.state(), Some(BusState::ErrorPassive));
        assert_eq!(f.counters, Some((128, 5)));
        assert_eq!(f.encode(), (id, data));
    }

    #[test]
    fn warning_active_restart_and_other_classes() {
        let warn = ErrorFrame::decode(CAN_ERR_FLAG | CAN_ERR_CRTL, &[0, crtl::RX_WARNING]).unwrap();
        assert_eq!(warn.state(), Some(BusState::ErrorWarning));
        let active = ErrorFrame::decode(CAN_ERR_FLAG | CAN_ERR_CRTL, &[0, crtl::ACTIVE]).unwrap();
        assert_eq!(active.state(), Some(BusState::ErrorActive));
        let restarted = ErrorFrame::decode(CAN_ERR_FLAG | CAN_ERR_RESTARTED, &[]).unwrap();
        assert_eq!(restarted.state(), Some(BusState::ErrorActive));
        // An ACK error or an overflow says nothing about the fault-confinement state.
        let ack = ErrorFrame::decode(CAN_ERR_FLAG | CAN_ERR_ACK, &[0; 8]).unwrap();
        assert_eq!(ack.state(), None);
        let ovf = ErrorFrame::decode(CAN_ERR_FLAG | CAN_ERR_CRTL, &[0, crtl::RX_OVERFLOW]).unwrap();
        assert_eq!(ovf.state(), None);
        // Not an error frame at all.
        assert_eq!(ErrorFrame::decode(0x7E8, &[0; 8]), None);
    }

    #[test]
    fn tracker_reports_transitions_once() {
        let mut t = BusStateTracker::default();
        let passive = ErrorFrame {
            class: CAN_ERR_CRTL,
            controller: crtl::RX_PASSIVE,
            counters: None,
        };
        let off = ErrorFrame {
            class: CAN_ERR_BUSOFF,
            ..ErrorFrame::default()
        };
        let restarted = ErrorFrame {
            class: CAN_ERR_RESTARTED,
            ..ErrorFrame::default()
        };
        assert_eq!(
            t.on_error_frame(&passive),
            Some(Transition {
                from: BusState::ErrorActive,
                to: BusState::ErrorPassive
            })
        );
        assert_eq!(t.on_error_frame(&passive), None);
        assert_eq!(t.on_error_frame(&off).unwrap().to, BusState::BusOff);
        assert_eq!(t.bus_off_count(), 1);
        assert_eq!(
            t.on_error_frame(&restarted).unwrap().to,
            BusState::ErrorActive
        );
        assert_eq!(t.state(), BusState::ErrorActive);
    }

    proptest! {
        #[test]
        fn decode_never_panics_and_round_trips(id in any::<u32>(), data in proptest::collection::vec(any::<u8>(), 0..=8)) {
            if let Some(f) = ErrorFrame::decode(id, &data) {
                let (id2, data2) = f.encode();
                prop_assert_eq!(ErrorFrame::decode(id2, &data2), Some(f));
            } else {
                prop_assert_eq!(id & CAN_ERR_FLAG, 0);
            }
        }
    }
}
