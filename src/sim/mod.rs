//! Simulators shipped with obdgw.
//!
//! Owns: the transport-independent vehicle simulator ([`ecu`]): ECUs that answer UDS and
//! OBD-II requests given as bytes and `now`, and the runnable simulator ([`vehicle`], `obdgw sim vehicle`) that wires one
//! [`ecu::Vehicle`] to its transports.
//!
//! Does not own: the transports themselves (DoIP entity, CAN ports), nor the cloud simulator.

pub mod ecu;
pub mod vehicle;
