//! The vehicle side: CAN ports and their backends, ISO-TP channels, the DoIP client and the
//! UDS/OBD helpers the box needs itself.
//!
//! Owns everything that talks to the car. Does not own routing (see `crate::router`) or the
//! tunnel.

pub mod can;
pub mod doip;
pub mod isotp;
pub mod uds;
