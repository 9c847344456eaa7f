//! The operator endpoint: presents a remote car on the operator's machine through standard
//! interfaces (a DoIP entity, a socketcand server).
//!
//! Owns: the local servers operator tools connect to, and the operator's side of a tunnel
//! session ([`tunnel`]). Does not own the tunnel session or the
//! vehicle side.

pub mod socketcand;
pub mod tunnel;
