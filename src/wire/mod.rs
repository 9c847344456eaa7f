//! Sans-IO wire formats: byte layouts only, no sockets, no clocks.
//!
//! Owns: one file per protocol, each in the smoltcp shape (a checked view over a byte buffer,
//! a parsed `Repr` with `parse`/`emit`/`buffer_len`, golden vectors in its tests).
//!
//! Does not own: state machines or I/O (those live in `crate::vehicle`, `crate::tunnel`, ...).

pub mod doip;
pub mod isotp;
pub mod socketcand;
pub mod tunnel;
