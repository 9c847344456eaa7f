//! Counter snapshots for status reporting (control plane; allocation is fine here).

use super::core::OverflowPolicy;
use serde::Serialize;

/// Counters of one port, as a source and as a sink.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PortStats {
    pub name: String,
    /// Frames received from this port (routed or not).
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames from this port that matched no route.
    pub unrouted: u64,
    /// Frames queued for this port as a sink.
    pub queued_frames: u64,
    pub queued_bytes: u64,
    /// Frames taken from this port's queue by its writer.
    pub delivered_frames: u64,
    pub delivered_bytes: u64,
    /// Frames dropped from this port's queue by shed-oldest.
    pub shed: u64,
    /// Times a source had to wait because this port's queue was full.
    pub blocked: u64,
    pub queue_len: usize,
    pub queue_capacity: usize,
    /// The longest the queue has been.
    pub queue_high_water: usize,
}

/// Counters of one route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteStats {
    pub name: String,
    pub source: String,
    pub sinks: Vec<String>,
    pub overflow: OverflowPolicy,
    /// Frames that matched this route and were delivered.
    pub frames: u64,
    pub bytes: u64,
    /// Older frames this route's deliveries pushed out of full sink queues.
    pub shed: u64,
    /// Times this route refused a frame because a sink was full (backpressure).
    pub blocked: u64,
}

/// Every counter of a router at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RouterSnapshot {
    pub ports: Vec<PortStats>,
    pub routes: Vec<RouteStats>,
}

impl RouterSnapshot {
    pub fn port(&self, name: &str) -> Option<&PortStats> {
        self.ports.iter().find(|p| p.name == name)
    }

    pub fn route(&self, name: &str) -> Option<&RouteStats> {
        self.routes.iter().find(|r| r.name == name)
    }
}
