//! Simulators shipped with obdgw.
//!
//! Owns: the transport-independent vehicle simulator ([`ecu`]): ECUs that answer UDS and
//! OBD-II requests given as bytes and `now`; and the vendor cloud simulator ([`cloud`]):
//! the Customer API, its status websocket and an admin interface.
//!
//! Does not own: the transports that carry the ECU bytes (ISO-TP on a CAN port, DoIP), which
//! wire a [`ecu::Vehicle`] to a bus or a socket.

pub mod cloud;
pub mod ecu;
