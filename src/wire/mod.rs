//! Sans-IO wire formats: checked views over bytes plus parsed `Repr`s (the smoltcp shape).
//!
//! Owns: byte-level encodings only. Does not own: any I/O, timers or protocol state.

pub mod tunnel;
