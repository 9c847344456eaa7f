//! Simulators shipped with obdgw.
//!
//! Owns: the transport-independent vehicle simulator ([`ecu`]): ECUs that answer UDS and
//! OBD-II requests given as bytes and `now`; the runnable vehicle simulator ([`vehicle`],
//! `obdgw sim vehicle`) that wires one [`ecu::Vehicle`] to its transports; and the vendor
//! cloud simulator ([`cloud`]): the Customer API, its status websocket and an admin interface;
//! and the fleet simulator ([`fleet`], `obdgw sim fleet`): thousands of tunnel endpoints
//! against a relay, for capacity measurements.
//!
//! Does not own: the transports themselves (DoIP entity, CAN ports, ISO-TP).

pub mod cloud;
pub mod ecu;
pub mod fleet;
pub mod vehicle;
