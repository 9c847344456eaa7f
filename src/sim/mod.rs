//! Simulators shipped with obdgw.
//!
//! Owns: the transport-independent vehicle simulator ([`ecu`]): ECUs that answer UDS and
//! OBD-II requests given as bytes and `now`.
//!
//! Does not own: the transports that carry those bytes (ISO-TP on a CAN port, DoIP), which
//! wire a [`ecu::Vehicle`] to a bus or a socket, nor the cloud simulator.

pub mod ecu;
