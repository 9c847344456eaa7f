//! Sans-IO wire formats, each in the smoltcp shape: a checked view over a byte buffer
//! (`Packet<T: AsRef<[u8]>>`) plus a validated, high-level `Repr` with `parse`, `emit` and
//! `buffer_len`.
//!
//! Owns: byte layouts and their validation. Does not own: state machines, timers or I/O
//! (those live in `crate::vehicle` and the other protocol modules).

pub mod isotp;
