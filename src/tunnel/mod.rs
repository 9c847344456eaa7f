//! The tunnel: the sans-IO session that makes a websocket a lossless, resumable stream of
//! records.
//!
//! Owns: sequencing, cumulative acks, the bounded replay buffer, batching, resume after
//! reconnect and keepalive ([`session`]).
//!
//! Does not own: the byte format (`crate::wire::tunnel`), websocket I/O, the gateway's
//! vehicle ports or the operator's local servers.

pub mod session;

pub use session::{
    Event, Link, SendError, Sent, Session, SessionConfig, SessionError, SessionStats, Transmit,
};
