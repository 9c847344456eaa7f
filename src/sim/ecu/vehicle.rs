//! A simulated vehicle: a set of ECUs with their CAN and DoIP addresses.
//!
//! Owns: the address plan (physical CAN request/response ids, DoIP logical addresses, the
//! functional CAN id and DoIP functional address), request routing to ECUs, functional
//! fan-out, the combined poll deadline, and the description printed when a simulator is ready.
//!
//! Does not own transports: the CAN simulator maps each ECU to an ISO-TP channel
//! (`can_request` -> `can_response`), the DoIP simulator to a logical address.

use crate::router::frame::CanId;
use crate::vehicle::uds::{CheckDigit, Vin};
use bytes::Bytes;
use std::fmt;
use std::time::Instant;

use super::{Ecu, EcuAction, EcuConfig};

/// Functional (broadcast) request id of OBD-II on CAN (ISO 15765-4).
pub const FUNCTIONAL_CAN_ID: u16 = 0x7DF;
/// DoIP functional logical address (ISO 13400-2, the first of the functional range).
pub const FUNCTIONAL_DOIP_ADDRESS: u16 = 0xE400;
/// The VIN the simulator serves unless told otherwise (North American layout, valid check
/// digit; checked when the crate is compiled).
pub const DEFAULT_VIN: Vin = Vin::from_const(b"1FTFW1E87MFA17359");

/// Where an ECU is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EcuAddress {
    /// CAN id the tester sends physical requests to (e.g. 0x7E0).
    pub can_request: CanId,
    /// CAN id the ECU answers on (e.g. 0x7E8).
    pub can_response: CanId,
    /// DoIP logical address (e.g. 0x1000).
    pub doip: u16,
}

impl EcuAddress {
    /// Standard 11-bit ids (values above 0x7FF are masked to 11 bits).
    pub fn can11(request: u16, response: u16, doip: u16) -> EcuAddress {
        EcuAddress {
            can_request: CanId::from_raw(u32::from(request & 0x7FF)),
            can_response: CanId::from_raw(u32::from(response & 0x7FF)),
            doip,
        }
    }
}

/// Index of an ECU in its [`Vehicle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EcuIndex(pub usize);

/// What a vehicle is made of.
#[derive(Clone, Debug)]
pub struct VehicleConfig {
    pub vin: Vin,
    pub ecus: Vec<(EcuAddress, EcuConfig)>,
    /// Functional request id on CAN.
    pub functional_can: CanId,
    /// Functional DoIP target address.
    pub functional_doip: u16,
}

impl VehicleConfig {
    /// The standard simulated vehicle: engine 0x7E0/0x7E8 (DoIP 0x1000), transmission
    /// 0x7E1/0x7E9 (0x1001), ABS 0x7E2/0x7EA (0x1002), body 0x740/0x748 (0x1003).
    pub fn standard(vin: Vin) -> VehicleConfig {
        VehicleConfig {
            vin,
            ecus: vec![
                (
                    EcuAddress::can11(0x7E0, 0x7E8, 0x1000),
                    EcuConfig::engine(vin),
                ),
                (
                    EcuAddress::can11(0x7E1, 0x7E9, 0x1001),
                    EcuConfig::transmission(vin),
                ),
                (EcuAddress::can11(0x7E2, 0x7EA, 0x1002), EcuConfig::abs(vin)),
                (
                    EcuAddress::can11(0x740, 0x748, 0x1003),
                    EcuConfig::body(vin),
                ),
            ],
            functional_can: CanId::from_raw(u32::from(FUNCTIONAL_CAN_ID)),
            functional_doip: FUNCTIONAL_DOIP_ADDRESS,
        }
    }
}

impl Default for VehicleConfig {
    fn default() -> Self {
        VehicleConfig::standard(DEFAULT_VIN)
    }
}

/// An address plan that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VehicleConfigError {
    #[error("vehicle has no ECUs")]
    NoEcus,
    #[error("ECUs {first:?} and {second:?} share the {what} 0x{value:X}; every ECU needs its own")]
    DuplicateAddress {
        first: String,
        second: String,
        what: &'static str,
        value: u32,
    },
    #[error("ECU {ecu:?} uses the functional {what} 0x{value:X} as a physical address")]
    FunctionalClash {
        ecu: String,
        what: &'static str,
        value: u32,
    },
}

/// One ECU of a vehicle with its addresses.
#[derive(Clone, Debug)]
pub struct VehicleEcu {
    pub address: EcuAddress,
    pub ecu: Ecu,
}

/// A simulated vehicle.
#[derive(Clone, Debug)]
pub struct Vehicle {
    vin: Vin,
    ecus: Vec<VehicleEcu>,
    functional_can: CanId,
    functional_doip: u16,
}

impl Vehicle {
    /// Build the vehicle; every ECU's engine starts at `now`.
    pub fn new(config: VehicleConfig, now: Instant) -> Result<Vehicle, VehicleConfigError> {
        if config.ecus.is_empty() {
            return Err(VehicleConfigError::NoEcus);
        }
        for (i, (a, ca)) in config.ecus.iter().enumerate() {
            let can_ids = [a.can_request, a.can_response];
            if can_ids.contains(&config.functional_can) {
                return Err(VehicleConfigError::FunctionalClash {
                    ecu: ca.name.clone(),
                    what: "CAN id",
                    value: config.functional_can.id(),
                });
            }
            if a.doip == config.functional_doip {
                return Err(VehicleConfigError::FunctionalClash {
                    ecu: ca.name.clone(),
                    what: "DoIP address",
                    value: u32::from(a.doip),
                });
            }
            for (b, cb) in config.ecus.iter().skip(i + 1) {
                let clash = |what: &'static str, value: u32| VehicleConfigError::DuplicateAddress {
                    first: ca.name.clone(),
                    second: cb.name.clone(),
                    what,
                    value,
                };
                let b_ids = [b.can_request, b.can_response];
                if let Some(id) = can_ids.iter().find(|id| b_ids.contains(id)) {
                    return Err(clash("CAN id", id.id()));
                }
                if a.doip == b.doip {
                    return Err(clash("DoIP address", u32::from(a.doip)));
                }
            }
        }
        Ok(Vehicle::build(config, now))
    }

    /// The standard vehicle with `vin` (its address plan is valid by construction).
    pub fn standard(vin: Vin, now: Instant) -> Vehicle {
        Vehicle::build(VehicleConfig::standard(vin), now)
    }

    fn build(config: VehicleConfig, now: Instant) -> Vehicle {
        Vehicle {
            vin: config.vin,
            ecus: config
                .ecus
                .into_iter()
                .map(|(address, c)| VehicleEcu {
                    address,
                    ecu: Ecu::new(c, now),
                })
                .collect(),
            functional_can: config.functional_can,
            functional_doip: config.functional_doip,
        }
    }

    pub fn vin(&self) -> Vin {
        self.vin
    }

    pub fn ecus(&self) -> &[VehicleEcu] {
        &self.ecus
    }

    pub fn ecu(&self, index: EcuIndex) -> Option<&Ecu> {
        self.ecus.get(index.0).map(|e| &e.ecu)
    }

    pub fn ecu_mut(&mut self, index: EcuIndex) -> Option<&mut Ecu> {
        self.ecus.get_mut(index.0).map(|e| &mut e.ecu)
    }

    pub fn address(&self, index: EcuIndex) -> Option<EcuAddress> {
        self.ecus.get(index.0).map(|e| e.address)
    }

    /// The ECU named `name`.
    pub fn find_by_name(&self, name: &str) -> Option<EcuIndex> {
        self.ecus
            .iter()
            .position(|e| e.ecu.name() == name)
            .map(EcuIndex)
    }

    /// The ECU whose physical request id is `id`.
    pub fn find_by_can_request(&self, id: CanId) -> Option<EcuIndex> {
        self.ecus
            .iter()
            .position(|e| e.address.can_request == id)
            .map(EcuIndex)
    }

    /// The ECU at DoIP logical address `address`.
    pub fn find_by_doip(&self, address: u16) -> Option<EcuIndex> {
        self.ecus
            .iter()
            .position(|e| e.address.doip == address)
            .map(EcuIndex)
    }

    pub fn functional_can(&self) -> CanId {
        self.functional_can
    }

    pub fn functional_doip(&self) -> u16 {
        self.functional_doip
    }

    /// A physically addressed request to one ECU (`EcuAction::None` for an unknown index).
    pub fn handle(&mut self, ecu: EcuIndex, request: &[u8], now: Instant) -> EcuAction {
        match self.ecus.get_mut(ecu.0) {
            Some(e) => e.ecu.handle(request, false, now),
            None => EcuAction::None,
        }
    }

    /// A functionally addressed request: every ECU sees it; returns the ECUs that answer, in
    /// address order, with what they answer.
    pub fn handle_functional(
        &mut self,
        request: &[u8],
        now: Instant,
    ) -> Vec<(EcuIndex, EcuAction)> {
        self.ecus
            .iter_mut()
            .enumerate()
            .filter_map(|(i, e)| match e.ecu.handle(request, true, now) {
                EcuAction::None => None,
                action => Some((EcuIndex(i), action)),
            })
            .collect()
    }

    /// The earliest [`Vehicle::poll`] deadline of any ECU.
    pub fn poll_at(&self) -> Option<Instant> {
        self.ecus.iter().filter_map(|e| e.ecu.poll_at()).min()
    }

    /// Advance every ECU to `now`; returns one due response (which ECU, bytes). Call until
    /// it returns `None`.
    pub fn poll(&mut self, now: Instant) -> Option<(EcuIndex, Bytes)> {
        self.ecus
            .iter_mut()
            .enumerate()
            .find_map(|(i, e)| e.ecu.poll(now).map(|b| (EcuIndex(i), b)))
    }

    /// What the simulator serves, for printing once it is ready.
    pub fn description(&self) -> VehicleDescription<'_> {
        VehicleDescription(self)
    }
}

/// Display of a vehicle's VIN, ECUs and addresses.
pub struct VehicleDescription<'a>(&'a Vehicle);

impl fmt::Display for VehicleDescription<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        let check = match v.vin.check_digit() {
            CheckDigit::Valid => "check digit ok".to_owned(),
            CheckDigit::Mismatch { expected, found } => {
                format!("check digit {found}, computed {expected}")
            }
        };
        writeln!(f, "vehicle VIN {} ({check}), {} ECUs:", v.vin, v.ecus.len())?;
        for e in &v.ecus {
            writeln!(
                f,
                "  {:<13} CAN 0x{} -> 0x{}  DoIP 0x{:04X}  {}",
                e.ecu.name(),
                e.address.can_request,
                e.address.can_response,
                e.address.doip,
                e.ecu.services_summary()
            )?;
        }
        writeln!(
            f,
            "  {:<13} CAN 0x{}           DoIP 0x{:04X}",
            "functional", v.functional_can, v.functional_doip
        )?;
        let sec = v.ecus.first().map(|e| &e.ecu.config().security);
        if let Some(sec) = sec {
            let levels: Vec<String> = sec.levels.iter().map(|l| format!("0x{l:02X}")).collect();
            write!(
                f,
                "  security access levels {} (default seed/key algorithm), {} attempts, {:?} lockout",
                levels.join(", "),
                sec.max_attempts,
                sec.lockout
            )?;
        }
        Ok(())
    }
}
