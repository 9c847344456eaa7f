//! The vendor Customer API: typed client, token manager, status websocket, `obdgw login`
//! and `obdgw api`.
//!
//! Owns: everything the box says to the remote-diagnostics cloud. The operation table
//! (`spec`) is the one description of the API; the route table, validation, the CLI and the
//! simulator's OpenAPI document derive from it.
//!
//! Does not own: the simulator (`crate::sim::cloud`), the diagnostic tunnel, or what the
//! daemon does with status events.

pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod model;
pub mod routes;
pub mod spec;
pub mod status;
pub mod sync;
pub mod token;
pub mod validate;

pub use client::{Client, ClientSettings, collect_all};
pub use error::{ApiError, Problem};
pub use spec::Op;
pub use token::Credentials;
