//! The runnable vehicle simulator: `obdgw sim vehicle`.
//!
//! Owns: wiring one shared [`Vehicle`] (the sans-IO ECUs of [`crate::sim::ecu`]) to its
//! transports, the timer task that drives the ECUs' `poll`/`poll_at` (final answers after a
//! 0x78 response-pending, repeated 0x78s, the S3 session timeout) and routes what falls due
//! to the tester that asked, the DoIP transport (a [`DiagHandler`] behind a DoIP entity,
//! functional requests to 0xE400 answered by every ECU from its own address), the ISO-TP
//! transport on a CAN port ([`CanEcus`]: opened before the ready line, so a tester starting
//! on it is answered), the command line, the "ready" lines on stdout and the shutdown on
//! SIGINT/SIGTERM.
//!
//! Does not own: what the ECUs answer ([`crate::sim::ecu`]), DoIP itself
//! ([`crate::vehicle::doip::entity`]).

use crate::sim::ecu::{EcuAction, EcuIndex, Vehicle};
use crate::vehicle::can::CanPort;
use crate::vehicle::doip::entity::{DiagHandler, DiagRequest, Entity, EntityConfig, Replies};
use crate::vehicle::isotp::{IsoTpConfig, IsoTpError, IsoTpHandle, IsoTpMux};
use crate::vehicle::uds::Vin;
use bytes::Bytes;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// `obdgw sim vehicle`: run the simulated vehicle.
#[derive(Debug, Clone, clap::Args)]
pub struct SimVehicleArgs {
    /// Serve the ECUs over DoIP: TCP and UDP on this address (e.g. 0.0.0.0:13400;
    /// port 0 picks a free port, printed once ready).
    #[arg(long, value_name = "ADDR")]
    pub doip_listen: Option<SocketAddr>,
    /// Serve the ECUs over ISO-TP on this CAN interface (`can0`, `vcan0`, or `sim:NAME`
    /// for the cross-process loopback bus).
    #[arg(long, value_name = "IFACE")]
    pub can: Option<String>,
    /// The vehicle's VIN (17 characters; default 1FTFW1E87MFA17359).
    #[arg(long, value_name = "VIN")]
    pub vin: Option<String>,
}

/// How long a DoIP handler waits for the final answer of a response-pending operation
/// before it gives up on it (longer than any simulated operation).
const PENDING_LIMIT: Duration = Duration::from_secs(120);

/// Where the answers that fall due later go: the transport of the tester that asked.
enum Sink {
    /// A DoIP tester connection; answers come from `ecu`'s logical address.
    Doip { replies: Replies, ecu: u16 },
    /// The ECU's ISO-TP channel (request id -> response id).
    Can(Arc<IsoTpHandle>),
}

impl Sink {
    fn duplicate(&self) -> Sink {
        match self {
            Sink::Doip { replies, ecu } => Sink::Doip {
                replies: replies.clone(),
                ecu: *ecu,
            },
            Sink::Can(h) => Sink::Can(h.clone()),
        }
    }
}

/// The tester waiting for an ECU's final answer.
struct Owner {
    sink: Sink,
    /// Completed when the final answer was sent (the DoIP handler waits for it, so the
    /// connection's next request comes after the final answer, as from a real ECU).
    done: Option<oneshot::Sender<()>>,
}

struct State {
    vehicle: Vehicle,
    /// Per ECU, who gets its next due answer.
    owners: Vec<Option<Owner>>,
}

/// One vehicle shared by every transport and connection.
pub struct SimVehicle {
    state: Mutex<State>,
    /// Wakes the timer task when a request may have moved the next deadline.
    wake: Notify,
}

/// A response to send, taken out of the lock.
struct Outgoing {
    sink: Sink,
    data: Bytes,
    done: Option<oneshot::Sender<()>>,
}

impl Outgoing {
    async fn send(self) {
        match self.sink {
            Sink::Doip { replies, ecu } => {
                // A closed connection simply loses the answer, as a real ECU's would.
                let _ = replies.send_from(ecu, self.data).await;
            }
            Sink::Can(handle) => {
                if let Err(e) = handle.send(self.data).await {
                    tracing::debug!(error = %e, "sim vehicle: ISO-TP answer not sent");
                }
            }
        }
        if let Some(done) = self.done {
            let _ = done.send(());
        }
    }
}

fn is_pending(data: &[u8]) -> bool {
    matches!(data, [0x7F, _, 0x78])
}

impl SimVehicle {
    pub fn new(vehicle: Vehicle) -> Arc<SimVehicle> {
        let owners = vehicle.ecus().iter().map(|_| None).collect();
        Arc::new(SimVehicle {
            state: Mutex::new(State { vehicle, owners }),
            wake: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of the state is a complete call into the sans-IO vehicle; a panic
        // there leaves it as usable as any other state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `f` on the vehicle (status output, tests).
    pub fn with_vehicle<R>(&self, f: impl FnOnce(&Vehicle) -> R) -> R {
        f(&self.lock().vehicle)
    }

    /// Everything due at `now`, routed to the testers that asked.
    fn drain(state: &mut State, now: std::time::Instant) -> Vec<Outgoing> {
        let mut out = Vec::new();
        while let Some((idx, data)) = state.vehicle.poll(now) {
            let pending = is_pending(&data);
            let Some(slot) = state.owners.get_mut(idx.0) else {
                continue;
            };
            let Some(owner) = slot.as_mut() else {
                // Nobody waits (the S3 fallback produces no bytes; this cannot happen
                // otherwise): nothing to send.
                continue;
            };
            let sink = owner.sink.duplicate();
            let done = if pending {
                None
            } else {
                slot.take().and_then(|o| o.done)
            };
            out.push(Outgoing { sink, data, done });
        }
        out
    }

    /// Drive the ECUs' timers until `shutdown`: sleep until the vehicle's `poll_at`, send
    /// what fell due.
    pub async fn run_timers(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let at = self.lock().vehicle.poll_at();
            let sleep = async {
                match at {
                    Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => continue,
                _ = sleep => {}
            }
            let now = Instant::now().into_std();
            let out = Self::drain(&mut self.lock(), now);
            for o in out {
                o.send().await;
            }
        }
    }

    /// Hand one request to the vehicle: `target` is `None` for a functional request;
    /// `sink(ecu, doip_address)` says where each ECU's answers go.
    /// Returns what to send now and the receivers of the final answers owed later.
    fn request(
        &self,
        target: Option<EcuIndex>,
        data: &[u8],
        sink: impl Fn(EcuIndex, u16) -> Sink,
    ) -> (Vec<Outgoing>, Vec<oneshot::Receiver<()>>) {
        let now = Instant::now().into_std();
        let mut st = self.lock();
        // Answers that fell due before this request go out first.
        let mut out = Self::drain(&mut st, now);
        let actions = match target {
            Some(idx) => vec![(idx, st.vehicle.handle(idx, data, now))],
            None => st.vehicle.handle_functional(data, now),
        };
        let mut waits = Vec::new();
        for (idx, action) in actions {
            let Some(address) = st.vehicle.address(idx) else {
                continue;
            };
            match action {
                EcuAction::None => {}
                EcuAction::Respond(data) => out.push(Outgoing {
                    sink: sink(idx, address.doip),
                    data,
                    done: None,
                }),
                EcuAction::Pending { response, .. } => {
                    let (tx, rx) = oneshot::channel();
                    if let Some(slot) = st.owners.get_mut(idx.0) {
                        *slot = Some(Owner {
                            sink: sink(idx, address.doip),
                            done: Some(tx),
                        });
                    }
                    waits.push(rx);
                    out.push(Outgoing {
                        sink: sink(idx, address.doip),
                        data: response,
                        done: None,
                    });
                }
            }
        }
        drop(st);
        self.wake.notify_one();
        (out, waits)
    }
}

/// The DoIP face of a [`SimVehicle`].
pub struct DoipEcus {
    sim: Arc<SimVehicle>,
}

impl DoipEcus {
    pub fn new(sim: Arc<SimVehicle>) -> DoipEcus {
        DoipEcus { sim }
    }
}

impl DiagHandler for DoipEcus {
    async fn handle(&self, request: DiagRequest, replies: Replies) {
        let (functional, target) = self.sim.with_vehicle(|v| {
            (
                request.target == v.functional_doip(),
                v.find_by_doip(request.target),
            )
        });
        if !functional && target.is_none() {
            return;
        }
        let (out, waits) = self
            .sim
            .request(target, &request.data, |_, ecu| Sink::Doip {
                replies: replies.clone(),
                ecu,
            });
        for o in out {
            o.send().await;
        }
        for w in waits {
            let _ = tokio::time::timeout(PENDING_LIMIT, w).await;
        }
    }
}

/// The CAN face of a [`SimVehicle`]: one ISO-TP channel per ECU (its request id -> its
/// response id) and one on the functional id, open on a port.
///
/// Opening is the readiness point: the channels exist once [`CanEcus::open`] returns, so
/// every request frame sent on the bus after that reaches its ECU and is answered once
/// [`CanEcus::serve`] runs (the channels queue what arrives meanwhile). A frame sent
/// before is not for anyone yet and is dropped and counted in
/// [`CanEcus::unrouted_frames`], as a real ECU that has not booted ignores the bus. So
/// print a "ready" line, or let a tester start, only after `open`.
pub struct CanEcus<P: CanPort> {
    sim: Arc<SimVehicle>,
    mux: IsoTpMux<P>,
    /// Per ECU, by index.
    ecus: Vec<Arc<IsoTpHandle>>,
    functional: Arc<IsoTpHandle>,
}

impl<P: CanPort> std::fmt::Debug for CanEcus<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CanEcus")
            .field("mux", &self.mux)
            .field("ecus", &self.ecus.len())
            .finish()
    }
}

impl<P: CanPort> CanEcus<P> {
    /// Open the channels of every ECU of `sim` and the functional channel on `port` (needs
    /// a tokio runtime). Fails when a channel cannot be opened on the port (an id already
    /// open on it).
    pub fn open(sim: Arc<SimVehicle>, port: Arc<P>) -> Result<CanEcus<P>, IsoTpError> {
        let mux = IsoTpMux::new(port);
        let (addresses, functional) = sim.with_vehicle(|v| {
            let a: Vec<_> = v.ecus().iter().map(|e| e.address).collect();
            (a, v.functional_can())
        });
        let mut ecus = Vec::with_capacity(addresses.len());
        for a in &addresses {
            ecus.push(Arc::new(
                mux.open(IsoTpConfig::new(a.can_response, a.can_request))?,
            ));
        }
        let functional = Arc::new(mux.open(IsoTpConfig::new(functional, functional))?);
        Ok(CanEcus {
            sim,
            mux,
            ecus,
            functional,
        })
    }

    /// The port the channels are open on.
    pub fn port(&self) -> &Arc<P> {
        self.mux.port()
    }

    /// Frames received that no channel wanted: other ids, or frames that arrived while
    /// [`CanEcus::open`] was still opening the channels.
    pub fn unrouted_frames(&self) -> u64 {
        self.mux.unrouted_frames()
    }

    /// Answer requests until `shutdown` or the port closes.
    pub async fn serve(&self, shutdown: CancellationToken) {
        let tasks = tokio_util::task::TaskTracker::new();
        for (i, h) in self.ecus.iter().enumerate() {
            let (sim, h, s) = (self.sim.clone(), h.clone(), shutdown.clone());
            tasks.spawn(async move {
                serve_channel(&sim, &h, Some(EcuIndex(i)), &[], s).await;
            });
        }
        {
            let (sim, s, all) = (self.sim.clone(), shutdown.clone(), self.ecus.clone());
            let functional = self.functional.clone();
            tasks.spawn(async move { serve_channel(&sim, &functional, None, &all, s).await });
        }
        tasks.close();
        tasks.wait().await;
    }
}

/// Serve every ECU of `sim` over ISO-TP on `port` until `shutdown` or the port closes:
/// [`CanEcus::open`] then [`CanEcus::serve`]. The channels open only once this future
/// first runs, so a caller that must know when the simulator answers (a test, a "ready"
/// line) uses those two instead.
pub async fn serve_can<P: CanPort>(
    sim: Arc<SimVehicle>,
    port: Arc<P>,
    shutdown: CancellationToken,
) -> Result<(), IsoTpError> {
    CanEcus::open(sim, port)?.serve(shutdown).await;
    Ok(())
}

/// Requests on one channel: `target` is the ECU, or `None` for the functional channel
/// (whose answers go out on `ecus`, by ECU index).
async fn serve_channel(
    sim: &SimVehicle,
    channel: &Arc<IsoTpHandle>,
    target: Option<EcuIndex>,
    ecus: &[Arc<IsoTpHandle>],
    shutdown: CancellationToken,
) {
    loop {
        let pdu = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = channel.recv() => r,
        };
        let pdu = match pdu {
            Ok(p) => p,
            Err(IsoTpError::Closed) => return,
            Err(e) => {
                tracing::debug!(error = %e, "sim vehicle: ISO-TP reception failed");
                continue;
            }
        };
        // A CAN ECU keeps listening while it owes a final answer (it answers 0x21 busy
        // meanwhile), so nobody waits for the finals here.
        let (out, _finals) = sim.request(target, &pdu, |idx, _| match target {
            Some(_) => Sink::Can(channel.clone()),
            None => match ecus.get(idx.0) {
                Some(h) => Sink::Can(h.clone()),
                None => Sink::Can(channel.clone()),
            },
        });
        for o in out {
            o.send().await;
        }
    }
}

/// The DoIP entity configuration for `vehicle`: the first ECU's address is the entity's
/// own (it is the DoIP edge node), every ECU and the functional address are targets.
pub fn entity_config(vehicle: &Vehicle, announce_to: Option<SocketAddr>) -> EntityConfig {
    let mut targets: Vec<u16> = vehicle.ecus().iter().map(|e| e.address.doip).collect();
    let logical_address = targets.first().copied().unwrap_or(0x1000);
    targets.push(vehicle.functional_doip());
    EntityConfig {
        vin: *vehicle.vin().as_bytes(),
        logical_address,
        targets,
        announce_to,
        ..EntityConfig::default()
    }
}

/// Where announcements go for a listen address: loopback stays on loopback, anything else
/// is broadcast; always to the DoIP port 13400, where testers listen.
fn announce_target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => IpAddr::V4(ip),
        IpAddr::V6(ip) if ip.is_loopback() => IpAddr::V6(ip),
        _ => IpAddr::V4(Ipv4Addr::BROADCAST),
    };
    SocketAddr::new(ip, crate::wire::doip::PORT)
}

/// Bind TCP on `addr` and UDP on the same address and port (for port 0: the port TCP got;
/// retried when that UDP port is taken).
async fn bind_doip(addr: SocketAddr) -> anyhow::Result<(TcpListener, UdpSocket)> {
    use anyhow::Context;
    let mut last = None;
    for _ in 0..16 {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding DoIP TCP on {addr}"))?;
        let local = listener.local_addr()?;
        match UdpSocket::bind(local).await {
            Ok(udp) => return Ok((listener, udp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => {
                return Err(e).with_context(|| format!("binding DoIP UDP on {local}"));
            }
        }
    }
    Err(anyhow::anyhow!(
        "binding DoIP UDP next to TCP on {addr}: no free port pair found ({})",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// The CLI entry point.
pub fn run_sim_vehicle(args: SimVehicleArgs) -> ExitCode {
    match run_inner(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("obdgw sim vehicle: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner(args: SimVehicleArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    // Logs go to stderr (RUST_LOG tunes them); what is served is printed on stdout.
    let (_, warning) = crate::logging::init(&crate::config::LogConfig::default());
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    let vin = match &args.vin {
        Some(v) => Vin::parse(v).with_context(|| format!("--vin {v:?}"))?,
        None => crate::sim::ecu::DEFAULT_VIN,
    };
    if args.doip_listen.is_none() && args.can.is_none() {
        anyhow::bail!(
            "nothing to serve: give --doip-listen ADDR (e.g. 127.0.0.1:13400) and/or --can IFACE"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        // Installed before the ready line, so a signal right after it stops us cleanly.
        let shutdown = CancellationToken::new();
        let signals = crate::signals::spawn(shutdown.clone(), None)?;
        let vehicle = Vehicle::standard(vin, Instant::now().into_std());
        let sim = SimVehicle::new(vehicle);
        let timers = tokio::spawn(sim.clone().run_timers(shutdown.clone()));

        println!("{}", sim.with_vehicle(|v| v.description().to_string()));
        let mut served = Vec::new();
        if let Some(doip_listen) = args.doip_listen {
            let (listener, udp) = bind_doip(doip_listen).await?;
            let local = listener.local_addr()?;
            let cfg = sim.with_vehicle(|v| entity_config(v, Some(announce_target(local))));
            let entity = Entity::new(cfg.clone(), DoipEcus::new(sim.clone()));
            let s = shutdown.clone();
            served.push(tokio::spawn(async move { entity.run(listener, Some(udp), s).await }));
            let targets: Vec<String> = cfg.targets.iter().map(|t| format!("0x{t:04X}")).collect();
            println!(
                "obdgw sim vehicle: DoIP on {local} (TCP and UDP), entity 0x{:04X}, VIN {vin}, targets {}, testers 0x0E00-0x0FFF",
                cfg.logical_address,
                targets.join(" "),
            );
        }
        if let Some(iface) = &args.can {
            let port = crate::vehicle::can::open_port(iface)
                .await
                .with_context(|| format!("opening CAN interface {iface}"))?;
            // The channels are open before the ready line: a tester that starts on it is
            // answered.
            let ecus = CanEcus::open(sim.clone(), Arc::new(port))
                .with_context(|| format!("opening the ISO-TP channels on {iface}"))?;
            let s = shutdown.clone();
            served.push(tokio::spawn(async move { ecus.serve(s).await }));
            let ids: Vec<String> = sim.with_vehicle(|v| {
                v.ecus()
                    .iter()
                    .map(|e| format!("0x{}->0x{}", e.address.can_request, e.address.can_response))
                    .collect()
            });
            println!(
                "obdgw sim vehicle: CAN on {iface} (ISO-TP), VIN {vin}, ECUs {}, functional 0x{}",
                ids.join(" "),
                sim.with_vehicle(|v| v.functional_can()),
            );
        }
        println!("obdgw sim vehicle: ready");

        shutdown.cancelled().await;
        let _ = signals.await;
        shutdown.cancel();
        for t in served {
            let _ = t.await;
        }
        let _ = timers.await;
        eprintln!("obdgw sim vehicle: stopped");
        anyhow::Ok(())
    })
}
