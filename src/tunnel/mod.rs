//! The tunnel: the sans-IO session that makes a websocket a lossless, resumable stream of
//! records.
//!
//! Owns: sequencing, cumulative acks, the bounded replay buffer, batching, resume after
//! reconnect and keepalive ([`session`]); the thin tokio driver that runs a session over a
//! reconnecting websocket ([`client`]).
//!
//! Does not own: the byte format (`crate::wire::tunnel`), the relay (`crate::relay`), the
//! gateway's vehicle ports or the operator's local servers.

pub mod bench;
pub mod client;
pub mod gateway;
pub mod policy;
pub mod ports;
pub mod session;

pub use session::{
    Event, Link, SendError, Sent, Session, SessionConfig, SessionError, SessionStats, Transmit,
};
