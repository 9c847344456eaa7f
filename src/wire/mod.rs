//! Sans-IO wire formats: checked views over bytes, parsed representations, emitters.
//!
//! Owns the byte layouts of every protocol obdgw speaks. Nothing here does I/O or keeps
//! connection state.

pub mod socketcand;
