//! The sans-IO routing core: ports, routes, bounded sink queues, counters.
//!
//! Owns: routing decisions (which sinks get a frame), the bounded queue of every sink, the
//! overflow policies and all counters. It never blocks, never sleeps, never touches a socket
//! or a clock, and never allocates once built: queues are reserved at build time and frames
//! are moved or cheaply cloned (`Bytes` reference counts) into them.
//!
//! Does not own: waiting. When a backpressure route meets a full sink, [`Router::route`]
//! hands the frame back in [`Blocked`]; the caller (the tokio driver in `super::driver`, or a
//! test) decides when to try again.
//!
//! Delivery is atomic per frame: either every matching route's sinks receive it or, when a
//! backpressure sink is full, none does. A sink reached by two matching routes of the same
//! source receives the frame once.

use super::filter::FrameFilter;
use super::frame::Frame;
use super::stats::{PortStats, RouteStats, RouterSnapshot};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt;

/// The most routes one source port may feed (the matching set is a 64-bit mask).
pub const MAX_ROUTES_PER_SOURCE: usize = 64;
/// The most ports a router may have.
pub const MAX_PORTS: usize = u16::MAX as usize;

/// What a route does when one of its sinks' queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverflowPolicy {
    /// Never drop: the source must wait until the sink has room (for PDUs).
    #[default]
    Backpressure,
    /// Drop the oldest queued frame to make room, and count it (for raw-frame mirroring).
    ShedOldest,
}

impl OverflowPolicy {
    pub const fn name(self) -> &'static str {
        match self {
            OverflowPolicy::Backpressure => "backpressure",
            OverflowPolicy::ShedOldest => "shed-oldest",
        }
    }
}

impl fmt::Display for OverflowPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A port's index in its router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(u16);

impl PortId {
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// A route's index in its router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(u16);

impl RouteId {
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// A route to add to a [`RouterBuilder`].
#[derive(Clone, Debug)]
pub struct RouteSpec {
    /// For logs and status.
    pub name: String,
    pub source: PortId,
    pub sinks: Vec<PortId>,
    pub filter: FrameFilter,
    pub overflow: OverflowPolicy,
}

/// Why a router cannot be built as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("port `{0}` is declared twice")]
    DuplicatePort(String),
    #[error("queue capacity of port `{0}` must be at least 1")]
    ZeroCapacity(String),
    #[error("too many ports (at most {MAX_PORTS})")]
    TooManyPorts,
    #[error("route `{0}` refers to a port that does not exist")]
    UnknownPort(String),
    #[error("route `{0}` has no sinks")]
    NoSinks(String),
    #[error("route `{0}` sends port `{1}` to itself")]
    SelfLoop(String, String),
    #[error(
        "route `{route}` uses overflow `{policy}` into sink `{sink}`, which already uses `{existing}`; all routes into one sink must share its policy"
    )]
    PolicyConflict {
        route: String,
        sink: String,
        policy: OverflowPolicy,
        existing: OverflowPolicy,
    },
    #[error("route `{0}` has an invalid filter: {1}")]
    InvalidFilter(String, String),
    #[error("port `{0}` is the source of more than {MAX_ROUTES_PER_SOURCE} routes")]
    TooManyRoutes(String),
}

/// Builds a [`Router`]. All allocation happens here and in [`RouterBuilder::build`].
#[derive(Debug, Default)]
pub struct RouterBuilder {
    ports: Vec<(String, usize)>,
    routes: Vec<RouteSpec>,
    sink_policy: Vec<Option<OverflowPolicy>>,
    routes_per_source: Vec<usize>,
}

impl RouterBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a port whose sink queue holds up to `queue_capacity` frames.
    pub fn add_port(
        &mut self,
        name: impl Into<String>,
        queue_capacity: usize,
    ) -> Result<PortId, BuildError> {
        let name = name.into();
        if self.ports.iter().any(|(n, _)| *n == name) {
            return Err(BuildError::DuplicatePort(name));
        }
        if queue_capacity == 0 {
            return Err(BuildError::ZeroCapacity(name));
        }
        if self.ports.len() >= MAX_PORTS {
            return Err(BuildError::TooManyPorts);
        }
        self.ports.push((name, queue_capacity));
        self.sink_policy.push(None);
        self.routes_per_source.push(0);
        Ok(PortId((self.ports.len() - 1) as u16))
    }

    /// The id of a port added earlier.
    pub fn port(&self, name: &str) -> Option<PortId> {
        self.ports
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| PortId(i as u16))
    }

    /// Add a route.
    pub fn add_route(&mut self, spec: RouteSpec) -> Result<RouteId, BuildError> {
        let n = self.ports.len();
        if spec.source.index() >= n || spec.sinks.iter().any(|s| s.index() >= n) {
            return Err(BuildError::UnknownPort(spec.name));
        }
        if spec.sinks.is_empty() {
            return Err(BuildError::NoSinks(spec.name));
        }
        if let Some(s) = spec.sinks.iter().find(|s| **s == spec.source) {
            return Err(BuildError::SelfLoop(
                spec.name,
                self.ports[s.index()].0.clone(),
            ));
        }
        for s in &spec.sinks {
            if let Some(existing) = self.sink_policy[s.index()]
                && existing != spec.overflow
            {
                return Err(BuildError::PolicyConflict {
                    route: spec.name,
                    sink: self.ports[s.index()].0.clone(),
                    policy: spec.overflow,
                    existing,
                });
            }
        }
        if self.routes_per_source[spec.source.index()] >= MAX_ROUTES_PER_SOURCE {
            return Err(BuildError::TooManyRoutes(
                self.ports[spec.source.index()].0.clone(),
            ));
        }
        if self.routes.len() >= u16::MAX as usize {
            return Err(BuildError::TooManyRoutes(
                self.ports[spec.source.index()].0.clone(),
            ));
        }
        for s in &spec.sinks {
            self.sink_policy[s.index()] = Some(spec.overflow);
        }
        self.routes_per_source[spec.source.index()] += 1;
        self.routes.push(spec);
        Ok(RouteId((self.routes.len() - 1) as u16))
    }

    pub fn build(self) -> Router {
        let nports = self.ports.len();
        let mut by_source: Vec<Vec<u16>> = vec![Vec::new(); nports];
        for (i, r) in self.routes.iter().enumerate() {
            by_source[r.source.index()].push(i as u16);
        }
        let ports = self
            .ports
            .into_iter()
            .map(|(name, cap)| Port {
                name: name.into_boxed_str(),
                queue: VecDeque::with_capacity(cap),
                capacity: cap,
                mark: 0,
                wake_pending: false,
                c: PortCounters::default(),
            })
            .collect();
        let routes = self
            .routes
            .into_iter()
            .map(|s| Route {
                name: s.name.into_boxed_str(),
                source: s.source,
                sinks: s.sinks.into_boxed_slice(),
                filter: s.filter,
                overflow: s.overflow,
                c: RouteCounters::default(),
            })
            .collect();
        Router {
            ports,
            routes,
            by_source: by_source.into_iter().map(Vec::into_boxed_slice).collect(),
            seq: 0,
            wakes: Vec::with_capacity(nports),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct PortCounters {
    rx_frames: u64,
    rx_bytes: u64,
    unrouted: u64,
    queued_frames: u64,
    queued_bytes: u64,
    delivered_frames: u64,
    delivered_bytes: u64,
    shed: u64,
    blocked: u64,
    high_water: usize,
}

#[derive(Debug, Default, Clone, Copy)]
struct RouteCounters {
    frames: u64,
    bytes: u64,
    shed: u64,
    blocked: u64,
}

#[derive(Debug)]
struct Port {
    name: Box<str>,
    queue: VecDeque<Frame>,
    /// The queue never holds more than this (it was reserved at build time).
    capacity: usize,
    /// Sequence number of the last frame delivered here, to deliver each frame once.
    mark: u64,
    /// Whether this port is already in the wake list.
    wake_pending: bool,
    c: PortCounters,
}

#[derive(Debug)]
struct Route {
    name: Box<str>,
    source: PortId,
    sinks: Box<[PortId]>,
    filter: FrameFilter,
    overflow: OverflowPolicy,
    c: RouteCounters,
}

/// A frame refused because a backpressure sink is full; try again once it has room.
#[derive(Debug)]
pub struct Blocked {
    /// The frame, handed back untouched.
    pub frame: Frame,
    /// The full sink.
    pub sink: PortId,
}

/// The routing core. See the module documentation.
#[derive(Debug)]
pub struct Router {
    ports: Vec<Port>,
    routes: Vec<Route>,
    /// Routes of each source port, in declaration order.
    by_source: Vec<Box<[u16]>>,
    /// Frames routed so far; marks dedupe deliveries per frame.
    seq: u64,
    /// Sinks whose queue went from empty to non-empty since the last `take_wakes`.
    wakes: Vec<PortId>,
}

impl Router {
    pub fn builder() -> RouterBuilder {
        RouterBuilder::new()
    }

    /// Number of ports.
    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    /// Look a port up by name.
    pub fn port(&self, name: &str) -> Option<PortId> {
        self.ports
            .iter()
            .position(|p| &*p.name == name)
            .map(|i| PortId(i as u16))
    }

    pub fn port_name(&self, port: PortId) -> &str {
        &self.ports[port.index()].name
    }

    /// Route one frame arriving from `source`.
    ///
    /// Returns the number of sinks that received it (0: no route matched; counted as
    /// `unrouted`), or [`Blocked`] with the frame when a backpressure sink is full, in which
    /// case nothing was delivered and no counter but `blocked` changed.
    #[inline]
    pub fn route(&mut self, source: PortId, frame: Frame) -> Result<usize, Blocked> {
        let src = source.index();
        let route_ids = &self.by_source[src];

        let mut matched: u64 = 0;
        for (bit, &r) in route_ids.iter().enumerate() {
            if self.routes[r as usize].filter.matches(&frame) {
                matched |= 1 << bit;
            }
        }
        let len = frame.payload_len() as u64;
        if matched == 0 {
            let c = &mut self.ports[src].c;
            c.rx_frames += 1;
            c.rx_bytes += len;
            c.unrouted += 1;
            return Ok(0);
        }

        // Pass 1: every backpressure sink must have room, or nothing is delivered.
        if let Some((r, sink)) = self.first_full_backpressure_sink(src, matched) {
            self.routes[r].c.blocked += 1;
            self.ports[sink.index()].c.blocked += 1;
            return Err(Blocked { frame, sink });
        }

        // Pass 2: deliver.
        self.seq += 1;
        let seq = self.seq;
        let c = &mut self.ports[src].c;
        c.rx_frames += 1;
        c.rx_bytes += len;
        let mut delivered = 0;
        let mut m = matched;
        while m != 0 {
            let bit = m.trailing_zeros() as usize;
            m &= m - 1;
            let route = &mut self.routes[route_ids[bit] as usize];
            route.c.frames += 1;
            route.c.bytes += len;
            for &sink in route.sinks.iter() {
                let p = &mut self.ports[sink.index()];
                if p.mark == seq {
                    continue;
                }
                p.mark = seq;
                if p.queue.len() >= p.capacity {
                    // Only shed-oldest routes get here (pass 1 checked the others).
                    p.queue.pop_front();
                    p.c.shed += 1;
                    route.c.shed += 1;
                }
                if p.queue.is_empty() && !p.wake_pending {
                    p.wake_pending = true;
                    self.wakes.push(sink);
                }
                p.queue.push_back(frame.clone());
                p.c.queued_frames += 1;
                p.c.queued_bytes += len;
                if p.queue.len() > p.c.high_water {
                    p.c.high_water = p.queue.len();
                }
                delivered += 1;
            }
        }
        Ok(delivered)
    }

    /// The first (route index, sink) among the matched routes of `src` that uses
    /// backpressure and whose sink queue is full.
    #[inline]
    fn first_full_backpressure_sink(&self, src: usize, matched: u64) -> Option<(usize, PortId)> {
        let route_ids = &self.by_source[src];
        let mut m = matched;
        while m != 0 {
            let bit = m.trailing_zeros() as usize;
            m &= m - 1;
            let r = route_ids[bit] as usize;
            let route = &self.routes[r];
            if route.overflow == OverflowPolicy::Backpressure {
                for &sink in route.sinks.iter() {
                    let p = &self.ports[sink.index()];
                    if p.queue.len() >= p.capacity {
                        return Some((r, sink));
                    }
                }
            }
        }
        None
    }

    /// Whether `sink`'s queue is full.
    pub fn is_full(&self, sink: PortId) -> bool {
        let p = &self.ports[sink.index()];
        p.queue.len() >= p.capacity
    }

    /// Frames waiting in `sink`'s queue.
    pub fn queue_len(&self, sink: PortId) -> usize {
        self.ports[sink.index()].queue.len()
    }

    /// Take the oldest frame queued for `sink`.
    #[inline]
    pub fn pop(&mut self, sink: PortId) -> Option<Frame> {
        let p = &mut self.ports[sink.index()];
        let f = p.queue.pop_front()?;
        p.c.delivered_frames += 1;
        p.c.delivered_bytes += f.payload_len() as u64;
        Some(f)
    }

    /// Take up to `max` frames queued for `sink`, oldest first, handing each to `f`.
    /// Returns how many were taken.
    #[inline]
    pub fn pop_batch(&mut self, sink: PortId, max: usize, mut f: impl FnMut(Frame)) -> usize {
        let p = &mut self.ports[sink.index()];
        let n = max.min(p.queue.len());
        let mut bytes = 0u64;
        for frame in p.queue.drain(..n) {
            bytes += frame.payload_len() as u64;
            f(frame);
        }
        p.c.delivered_frames += n as u64;
        p.c.delivered_bytes += bytes;
        n
    }

    /// Hand every sink whose queue became non-empty since the last call to `f`, once each.
    #[inline]
    pub fn take_wakes(&mut self, mut f: impl FnMut(PortId)) {
        for sink in self.wakes.drain(..) {
            self.ports[sink.index()].wake_pending = false;
            f(sink);
        }
    }

    /// A copy of every counter, for status reporting.
    pub fn snapshot(&self) -> RouterSnapshot {
        RouterSnapshot {
            ports: self
                .ports
                .iter()
                .map(|p| PortStats {
                    name: p.name.to_string(),
                    rx_frames: p.c.rx_frames,
                    rx_bytes: p.c.rx_bytes,
                    unrouted: p.c.unrouted,
                    queued_frames: p.c.queued_frames,
                    queued_bytes: p.c.queued_bytes,
                    delivered_frames: p.c.delivered_frames,
                    delivered_bytes: p.c.delivered_bytes,
                    shed: p.c.shed,
                    blocked: p.c.blocked,
                    queue_len: p.queue.len(),
                    queue_capacity: p.capacity,
                    queue_high_water: p.c.high_water,
                })
                .collect(),
            routes: self
                .routes
                .iter()
                .map(|r| RouteStats {
                    name: r.name.to_string(),
                    source: self.ports[r.source.index()].name.to_string(),
                    sinks: r
                        .sinks
                        .iter()
                        .map(|s| self.ports[s.index()].name.to_string())
                        .collect(),
                    overflow: r.overflow,
                    frames: r.c.frames,
                    bytes: r.c.bytes,
                    shed: r.c.shed,
                    blocked: r.c.blocked,
                })
                .collect(),
        }
    }
}
