//! obdgw: a vehicle diagnostics gateway.
//!
//! See `docs/ARCHITECTURE.md` for the planes, the modules and the data path of one frame.

pub mod cli;
pub mod cloud;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod logging;
pub mod operator;
pub mod relay;
pub mod router;
pub mod signals;
pub mod sim;
pub mod tls;
pub mod tunnel;
pub mod vehicle;
pub mod wire;
