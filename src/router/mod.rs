//! The zero-copy frame-routing core, the heart of the data plane.
//!
//! Owns: frame types ([`frame`]), route selection ([`filter`]), the sans-IO routing core
//! with bounded per-sink queues and counters ([`core`]), counter snapshots ([`stats`]) and
//! the thin tokio driver that lets tasks send into and receive from it ([`driver`]).
//!
//! Does not own: any port's I/O. Components (CAN ports, ISO-TP channels, the DoIP client,
//! the tunnel) hold a [`driver::Source`] and/or a [`driver::Sink`] for their port.

pub mod core;
pub mod driver;
pub mod filter;
pub mod frame;
pub mod stats;

pub use self::core::{
    Blocked, BuildError, MAX_ROUTES_PER_SOURCE, OverflowPolicy, PortId, RouteId, RouteSpec, Router,
    RouterBuilder,
};
pub use driver::{Closed, RouterHandle, Sink, Source};
pub use filter::{FrameFilter, IdRule, KindSet};
pub use frame::{
    CanFdFrame, CanFrame, CanId, DoipMessage, Frame, FrameKind, IsoTpAddr, IsoTpPdu, Timestamp,
};
pub use stats::{PortStats, RouteStats, RouterSnapshot};

use crate::config::RouterConfig;

/// Build a router from the `[router]` configuration section (already validated).
pub fn from_config(cfg: &RouterConfig) -> Result<Router, BuildError> {
    let mut b = Router::builder();
    for p in &cfg.ports {
        b.add_port(
            p.name.clone(),
            p.queue_capacity.unwrap_or(cfg.queue_capacity),
        )?;
    }
    for r in &cfg.routes {
        let name = r
            .name
            .clone()
            .unwrap_or_else(|| format!("{}->{}", r.from, r.to.join(",")));
        let port = |n: &str| {
            b.port(n)
                .ok_or_else(|| BuildError::UnknownPort(name.clone()))
        };
        let source = port(&r.from)?;
        let sinks =
            r.to.iter()
                .map(|n| port(n))
                .collect::<Result<Vec<_>, _>>()?;
        let kinds = r
            .kinds
            .iter()
            .map(|k| {
                FrameKind::from_name(k)
                    .ok_or_else(|| BuildError::InvalidFilter(name.clone(), format!("kind `{k}`")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rules = r
            .ids
            .iter()
            .map(|s| {
                s.parse::<IdRule>()
                    .map_err(|e| BuildError::InvalidFilter(name.clone(), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        b.add_route(RouteSpec {
            name,
            source,
            sinks,
            filter: FrameFilter::new(&kinds, &rules),
            overflow: r.overflow,
        })?;
    }
    Ok(b.build())
}

#[cfg(test)]
mod tests;
