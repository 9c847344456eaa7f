//! DoIP (ISO 13400-2) on the vehicle side: the tester (client) and a reusable entity (server).
//!
//! Owns: vehicle discovery, the client connection state machine and its tokio driver, the
//! entity (UDP identification, TCP routing activation, diagnostic message dispatch).
//!
//! Does not own: byte layouts (`crate::wire::doip`), UDS semantics beyond "0x7F xx 0x78 means
//! response pending", nor what the ECUs behind an entity answer (a [`entity::DiagHandler`]).

pub mod client;
pub mod client_core;
mod config;
pub mod discovery;
pub mod entity;

pub use client::{Connection, DoipClient};
pub use client_core::{ClientCore, ClientError, ClientEvent};
pub use config::DoipClientConfig;
pub use entity::{DiagHandler, DiagRequest, Entity, EntityConfig, Replies};
