//! The DoIP tester's connection state machine, sans-IO.
//!
//! Owns: routing activation, matching acknowledgements and responses to requests (one
//! outstanding request per target address, more queued), UDS response-pending handling, the
//! control, response and inactivity timers, and answering alive checks.
//!
//! Does not own: sockets or clocks. The driver (`super::client`) feeds it decoded messages
//! and the current time, sends what [`ClientCore::poll_transmit`] returns, hands out what
//! [`ClientCore::poll_event`] returns, and wakes it at [`ClientCore::poll_at`].

use super::DoipClientConfig;
use crate::wire::doip::{
    ActivationType, DiagNackCode, Error as WireError, Message, NackCode, Repr,
    RoutingActivationCode,
};
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Why a DoIP client operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error(
        "routing activation {} 0x{tester:04X} (DoIP code 0x{:02X}){}",
        code.name(),
        code.0,
        activation_hint(*code)
    )]
    ActivationDenied {
        code: RoutingActivationCode,
        tester: u16,
    },
    #[error(
        "no routing activation response within {0:?} (A_DoIP_Ctrl); is the peer a DoIP entity?"
    )]
    ActivationTimeout(Duration),
    #[error(
        "diagnostic message to 0x{target:04X} refused: {} (DoIP diagnostic NACK 0x{:02X})",
        code.name(),
        code.0
    )]
    DiagNack { target: u16, code: DiagNackCode },
    #[error(
        "the entity answered with a generic header NACK: {} (0x{:02X})",
        code.name(),
        code.0
    )]
    GenericNack { code: NackCode },
    #[error("no acknowledgement from 0x{target:04X} within {timeout:?} (A_DoIP_Ctrl)")]
    AckTimeout { target: u16, timeout: Duration },
    #[error(
        "no response from 0x{target:04X} within {timeout:?}{}",
        if *pending > 0 { format!(" after {pending} response-pending message(s)") } else { String::new() }
    )]
    ResponseTimeout {
        target: u16,
        timeout: Duration,
        pending: u32,
    },
    #[error("connection closed after {0:?} without traffic (inactivity timeout)")]
    Inactive(Duration),
    #[error("the DoIP connection was closed{}", if .0.is_empty() { String::new() } else { format!(": {}", .0) })]
    Closed(String),
    #[error("DoIP protocol error from the entity: {0}")]
    Protocol(WireError),
    #[error("cannot connect to the DoIP entity at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("diagnostic request is empty; a UDS request needs at least a service id")]
    EmptyRequest,
}

fn activation_hint(code: RoutingActivationCode) -> &'static str {
    match code.0 {
        0x00 => "; set doip.tester_address to an address this entity accepts",
        0x01 => "; every tester socket of the entity is in use, retry later",
        0x03 => "; another tester with this address is connected to the entity",
        0x06 => "; set doip.activation_type to one the entity supports (usually 0)",
        0x07 => "; the entity only accepts DoIP over TLS (port 3496)",
        _ => "",
    }
}

/// What the core reports to its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Routing is active; `entity` is the entity's logical address.
    Activated { entity: u16 },
    /// Routing activation failed; the connection is unusable.
    ActivationFailed(ClientError),
    /// The final response to request `id`.
    Response { id: u64, data: Bytes },
    /// Request `id` was acknowledged and no response was expected.
    Acknowledged { id: u64 },
    /// Request `id` failed.
    Failed { id: u64, error: ClientError },
    /// A diagnostic message nobody waits for (e.g. a late or unsolicited response).
    Unsolicited { source: u16, data: Bytes },
    /// The connection must be closed (after sending what is queued).
    Close(ClientError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// TCP is up, activation not requested yet.
    Connected,
    Activating {
        deadline: Instant,
    },
    Active {
        entity: u16,
    },
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitAck { deadline: Instant },
    AwaitResponse { deadline: Instant, pending: u32 },
}

#[derive(Debug)]
struct Outstanding {
    id: u64,
    target: u16,
    /// UDS service id of the request, to recognise its response-pending replies.
    sid: u8,
    expect_response: bool,
    phase: Phase,
}

#[derive(Debug)]
struct Queued {
    id: u64,
    target: u16,
    data: Bytes,
    expect_response: bool,
}

/// The tester side of one DoIP TCP connection.
#[derive(Debug)]
pub struct ClientCore {
    /// Timeouts, addresses, versions.
    cfg: DoipClientConfig,
    state: State,
    /// Requests sent and not finished: at most one per target address.
    outstanding: Vec<Outstanding>,
    /// Requests waiting for their target to be free or for activation.
    queued: VecDeque<Queued>,
    /// Messages to send, in order.
    tx: VecDeque<Message>,
    /// Events for the driver, in order.
    events: VecDeque<ClientEvent>,
    /// Last time anything was sent or received (inactivity timer).
    last_activity: Instant,
}

/// Whether `data` is a UDS "response pending" negative response to service `sid`.
pub fn is_response_pending(data: &[u8], sid: u8) -> bool {
    matches!(data, [0x7F, s, 0x78] if *s == sid)
}

impl ClientCore {
    pub fn new(cfg: DoipClientConfig, now: Instant) -> Self {
        ClientCore {
            cfg,
            state: State::Connected,
            outstanding: Vec::new(),
            queued: VecDeque::new(),
            tx: VecDeque::new(),
            events: VecDeque::new(),
            last_activity: now,
        }
    }

    pub fn config(&self) -> &DoipClientConfig {
        &self.cfg
    }

    /// The entity's logical address once routing is active.
    pub fn entity_address(&self) -> Option<u16> {
        match self.state {
            State::Active { entity } => Some(entity),
            _ => None,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Number of requests sent or queued and not finished.
    pub fn in_flight(&self) -> usize {
        self.outstanding.len() + self.queued.len()
    }

    fn send(&mut self, repr: Repr) {
        self.tx.push_back(Message {
            version: self.cfg.protocol_version,
            repr,
        });
    }

    /// Send the routing activation request.
    pub fn start_activation(&mut self, now: Instant) {
        if self.state != State::Connected {
            return;
        }
        self.send(Repr::RoutingActivationRequest {
            source: self.cfg.tester_address,
            activation_type: ActivationType(self.cfg.activation_type),
            reserved: 0,
            oem: None,
        });
        self.last_activity = now;
        self.state = State::Activating {
            deadline: now + self.cfg.control_timeout(),
        };
    }

    /// Send `data` to `target`. With `expect_response` the request finishes with its final
    /// response (response-pending replies extend the wait); otherwise with the DoIP
    /// acknowledgement. A second request to a busy target waits for the first.
    pub fn request(
        &mut self,
        now: Instant,
        id: u64,
        target: u16,
        data: Bytes,
        expect_response: bool,
    ) {
        if self.state == State::Closed {
            self.events.push_back(ClientEvent::Failed {
                id,
                error: ClientError::Closed(String::new()),
            });
            return;
        }
        if data.is_empty() {
            self.events.push_back(ClientEvent::Failed {
                id,
                error: ClientError::EmptyRequest,
            });
            return;
        }
        self.queued.push_back(Queued {
            id,
            target,
            data,
            expect_response,
        });
        self.start_queued(now);
    }

    fn start_queued(&mut self, now: Instant) {
        if !matches!(self.state, State::Active { .. }) {
            return;
        }
        let mut i = 0;
        while i < self.queued.len() {
            let target = self.queued[i].target;
            if self.outstanding.iter().any(|o| o.target == target) {
                i += 1;
                continue;
            }
            let Some(q) = self.queued.remove(i) else {
                break;
            };
            let sid = q.data.first().copied().unwrap_or(0);
            self.send(Repr::DiagnosticMessage {
                source: self.cfg.tester_address,
                target: q.target,
                data: q.data,
            });
            self.last_activity = now;
            self.outstanding.push(Outstanding {
                id: q.id,
                target: q.target,
                sid,
                expect_response: q.expect_response,
                phase: Phase::AwaitAck {
                    deadline: now + self.cfg.control_timeout(),
                },
            });
        }
    }

    fn finish(&mut self, idx: usize, event: ClientEvent, now: Instant) {
        self.outstanding.swap_remove(idx);
        self.events.push_back(event);
        self.start_queued(now);
    }

    /// Feed one message received from the entity.
    pub fn handle_message(&mut self, now: Instant, msg: Message) {
        if self.state == State::Closed {
            return;
        }
        self.last_activity = now;
        let tester = self.cfg.tester_address;
        match msg.repr {
            Repr::RoutingActivationResponse {
                tester: t,
                entity,
                code,
                ..
            } => {
                if !matches!(self.state, State::Activating { .. }) {
                    return;
                }
                if code.is_success() && t == tester {
                    self.state = State::Active { entity };
                    self.events.push_back(ClientEvent::Activated { entity });
                    self.start_queued(now);
                } else if code == RoutingActivationCode::CONFIRMATION_REQUIRED {
                    // The final answer follows after confirmation in the vehicle.
                    self.state = State::Activating {
                        deadline: now + self.cfg.control_timeout(),
                    };
                } else {
                    let code = if code.is_success() {
                        // Activated for somebody else: treat as a source mismatch.
                        RoutingActivationCode::DENIED_SOURCE_MISMATCH
                    } else {
                        code
                    };
                    let error = ClientError::ActivationDenied { code, tester };
                    self.events
                        .push_back(ClientEvent::ActivationFailed(error.clone()));
                    self.close(error);
                }
            }
            Repr::AliveCheckRequest => {
                self.send(Repr::AliveCheckResponse { source: tester });
            }
            Repr::DiagnosticAck { source, target, .. } if target == tester => {
                if let Some(i) = self
                    .outstanding
                    .iter()
                    .position(|o| o.target == source && matches!(o.phase, Phase::AwaitAck { .. }))
                {
                    let o = &mut self.outstanding[i];
                    if o.expect_response {
                        o.phase = Phase::AwaitResponse {
                            deadline: now + self.cfg.response_timeout(),
                            pending: 0,
                        };
                    } else {
                        let id = o.id;
                        self.finish(i, ClientEvent::Acknowledged { id }, now);
                    }
                }
            }
            Repr::DiagnosticNack {
                source,
                target,
                code,
                ..
            } if target == tester => {
                if let Some(i) = self.outstanding.iter().position(|o| o.target == source) {
                    let id = self.outstanding[i].id;
                    let error = ClientError::DiagNack {
                        target: source,
                        code,
                    };
                    self.finish(i, ClientEvent::Failed { id, error }, now);
                }
            }
            Repr::DiagnosticMessage {
                source,
                target,
                data,
            } if target == tester => {
                let Some(i) = self
                    .outstanding
                    .iter()
                    .position(|o| o.target == source && o.expect_response)
                else {
                    self.events
                        .push_back(ClientEvent::Unsolicited { source, data });
                    return;
                };
                let o = &mut self.outstanding[i];
                if is_response_pending(&data, o.sid) {
                    let pending = match o.phase {
                        Phase::AwaitResponse { pending, .. } => pending + 1,
                        Phase::AwaitAck { .. } => 1,
                    };
                    o.phase = Phase::AwaitResponse {
                        deadline: now + self.cfg.pending_timeout(),
                        pending,
                    };
                } else {
                    let id = o.id;
                    self.finish(i, ClientEvent::Response { id, data }, now);
                }
            }
            Repr::GenericNack(code) => {
                let error = ClientError::GenericNack { code };
                if matches!(self.state, State::Activating { .. }) {
                    self.events
                        .push_back(ClientEvent::ActivationFailed(error.clone()));
                    self.close(error);
                    return;
                }
                // The entity discarded one of our messages: the oldest awaiting an ack.
                if let Some(i) = self
                    .outstanding
                    .iter()
                    .position(|o| matches!(o.phase, Phase::AwaitAck { .. }))
                {
                    let id = self.outstanding[i].id;
                    self.finish(
                        i,
                        ClientEvent::Failed {
                            id,
                            error: error.clone(),
                        },
                        now,
                    );
                }
                if code.closes_socket() {
                    self.close(error);
                }
            }
            Repr::AliveCheckResponse { .. }
            | Repr::EntityStatusResponse { .. }
            | Repr::PowerModeResponse(_)
            | Repr::DiagnosticAck { .. }
            | Repr::DiagnosticNack { .. }
            | Repr::DiagnosticMessage { .. } => {
                // Answers to requests this core did not make, or addressed to another
                // tester: ignored.
            }
            Repr::VehicleIdRequest
            | Repr::VehicleIdRequestEid(_)
            | Repr::VehicleIdRequestVin(_)
            | Repr::VehicleAnnouncement(_)
            | Repr::RoutingActivationRequest { .. }
            | Repr::EntityStatusRequest
            | Repr::PowerModeRequest => {
                self.tx.push_back(Message {
                    version: msg.version,
                    repr: Repr::GenericNack(NackCode::UNKNOWN_PAYLOAD_TYPE),
                });
            }
        }
    }

    /// The decoder rejected a message from the entity (unknown type, too large): NACK it.
    pub fn handle_rejected(&mut self, now: Instant, version: u8, error: WireError) {
        self.last_activity = now;
        if let Some(code) = error.nack_code() {
            self.tx.push_back(Message {
                version,
                repr: Repr::GenericNack(code),
            });
        }
    }

    /// The stream from the entity is unusable (bad pattern, impossible length): NACK, close.
    pub fn handle_fatal(&mut self, error: WireError) {
        if let Some(code) = error.nack_code() {
            self.send(Repr::GenericNack(code));
        }
        self.close(ClientError::Protocol(error));
    }

    /// The socket closed or failed: every request fails.
    pub fn handle_closed(&mut self, reason: &str) {
        self.close(ClientError::Closed(reason.to_string()));
    }

    fn close(&mut self, error: ClientError) {
        if self.state == State::Closed {
            return;
        }
        if matches!(self.state, State::Activating { .. } | State::Connected)
            && !matches!(error, ClientError::ActivationDenied { .. })
            && !matches!(self.events.back(), Some(ClientEvent::ActivationFailed(_)))
        {
            self.events
                .push_back(ClientEvent::ActivationFailed(error.clone()));
        }
        self.state = State::Closed;
        for o in std::mem::take(&mut self.outstanding) {
            self.events.push_back(ClientEvent::Failed {
                id: o.id,
                error: error.clone(),
            });
        }
        for q in std::mem::take(&mut self.queued) {
            self.events.push_back(ClientEvent::Failed {
                id: q.id,
                error: error.clone(),
            });
        }
        self.events.push_back(ClientEvent::Close(error));
    }

    /// Run expired timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Closed => return,
            State::Activating { deadline } if now >= deadline => {
                let error = ClientError::ActivationTimeout(self.cfg.control_timeout());
                self.events
                    .push_back(ClientEvent::ActivationFailed(error.clone()));
                self.close(error);
                return;
            }
            _ => {}
        }
        let mut i = 0;
        while i < self.outstanding.len() {
            let o = &self.outstanding[i];
            let error = match o.phase {
                Phase::AwaitAck { deadline } if now >= deadline => ClientError::AckTimeout {
                    target: o.target,
                    timeout: self.cfg.control_timeout(),
                },
                Phase::AwaitResponse { deadline, pending } if now >= deadline => {
                    ClientError::ResponseTimeout {
                        target: o.target,
                        timeout: if pending > 0 {
                            self.cfg.pending_timeout()
                        } else {
                            self.cfg.response_timeout()
                        },
                        pending,
                    }
                }
                _ => {
                    i += 1;
                    continue;
                }
            };
            let id = o.id;
            self.finish(i, ClientEvent::Failed { id, error }, now);
        }
        if matches!(self.state, State::Active { .. })
            && self.outstanding.is_empty()
            && self.queued.is_empty()
            && now >= self.last_activity + self.cfg.inactivity_timeout()
        {
            self.close(ClientError::Inactive(self.cfg.inactivity_timeout()));
        }
    }

    /// When [`ClientCore::handle_timeout`] must next run.
    pub fn poll_at(&self) -> Option<Instant> {
        let timers = self.outstanding.iter().map(|o| match o.phase {
            Phase::AwaitAck { deadline } | Phase::AwaitResponse { deadline, .. } => deadline,
        });
        let state = match self.state {
            State::Activating { deadline } => Some(deadline),
            State::Active { .. } if self.outstanding.is_empty() && self.queued.is_empty() => {
                Some(self.last_activity + self.cfg.inactivity_timeout())
            }
            _ => None,
        };
        timers.chain(state).min()
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.tx.pop_front()
    }

    /// Note that something was sent (resets the inactivity timer).
    pub fn on_transmitted(&mut self, now: Instant) {
        self.last_activity = now;
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u16 = 0x0E00;
    const ECU: u16 = 0x1001;

    fn cfg() -> DoipClientConfig {
        DoipClientConfig::default()
    }

    fn msg(repr: Repr) -> Message {
        Message { version: 2, repr }
    }

    fn activated(now: Instant) -> ClientCore {
        let mut c = ClientCore::new(cfg(), now);
        c.start_activation(now);
        let m = c.poll_transmit().unwrap();
        assert_eq!(
            m.repr,
            Repr::RoutingActivationRequest {
                source: T,
                activation_type: ActivationType::DEFAULT,
                reserved: 0,
                oem: None
            }
        );
        c.handle_message(
            now,
            msg(Repr::RoutingActivationResponse {
                tester: T,
                entity: 0x1000,
                code: RoutingActivationCode::SUCCESS,
                reserved: 0,
                oem: None,
            }),
        );
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Activated { entity: 0x1000 })
        );
        c
    }

    fn ack(source: u16) -> Message {
        msg(Repr::DiagnosticAck {
            source,
            target: T,
            code: 0,
            previous: Bytes::new(),
        })
    }

    fn diag(source: u16, data: &'static [u8]) -> Message {
        msg(Repr::DiagnosticMessage {
            source,
            target: T,
            data: Bytes::from_static(data),
        })
    }

    #[test]
    fn request_ack_pending_response() {
        let t0 = Instant::now();
        let mut c = activated(t0);
        c.request(t0, 7, ECU, Bytes::from_static(&[0x22, 0xF1, 0x90]), true);
        let sent = c.poll_transmit().unwrap();
        assert_eq!(
            sent.repr,
            Repr::DiagnosticMessage {
                source: T,
                target: ECU,
                data: Bytes::from_static(&[0x22, 0xF1, 0x90])
            }
        );
        assert_eq!(c.poll_at(), Some(t0 + Duration::from_secs(2)));
        c.handle_message(t0, ack(ECU));
        assert_eq!(c.poll_at(), Some(t0 + Duration::from_secs(2)));
        // a pending reply extends the deadline to P2* and is not delivered
        let t1 = t0 + Duration::from_millis(1900);
        c.handle_message(t1, diag(ECU, &[0x7F, 0x22, 0x78]));
        assert_eq!(c.poll_event(), None);
        assert_eq!(c.poll_at(), Some(t1 + Duration::from_secs(5)));
        c.handle_timeout(t0 + Duration::from_millis(2500));
        assert_eq!(c.poll_event(), None, "P2* replaced P2");
        // pending for another service is a real (negative) answer
        c.handle_message(t1, diag(ECU, &[0x62, 0xF1, 0x90, b'W']));
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Response {
                id: 7,
                data: Bytes::from_static(&[0x62, 0xF1, 0x90, b'W'])
            })
        );
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn response_pending_to_another_sid_is_final() {
        assert!(is_response_pending(&[0x7F, 0x31, 0x78], 0x31));
        assert!(!is_response_pending(&[0x7F, 0x31, 0x78], 0x22));
        assert!(!is_response_pending(&[0x7F, 0x31, 0x31], 0x31));
        assert!(!is_response_pending(&[0x7F, 0x31, 0x78, 0], 0x31));
    }

    #[test]
    fn ack_timeout_and_response_timeout() {
        let t0 = Instant::now();
        let mut c = activated(t0);
        c.request(t0, 1, ECU, Bytes::from_static(&[0x10, 0x03]), true);
        c.request(t0, 2, 0x1002, Bytes::from_static(&[0x10, 0x03]), true);
        c.poll_transmit();
        c.poll_transmit();
        c.handle_message(t0, ack(0x1002));
        c.handle_timeout(t0 + Duration::from_millis(1999));
        assert_eq!(c.poll_event(), None);
        c.handle_timeout(t0 + Duration::from_secs(2));
        let mut evs: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
        evs.sort_by_key(|e| match e {
            ClientEvent::Failed { id, .. } => *id,
            _ => 99,
        });
        assert_eq!(
            evs,
            vec![
                ClientEvent::Failed {
                    id: 1,
                    error: ClientError::AckTimeout {
                        target: ECU,
                        timeout: Duration::from_secs(2)
                    }
                },
                ClientEvent::Failed {
                    id: 2,
                    error: ClientError::ResponseTimeout {
                        target: 0x1002,
                        timeout: Duration::from_secs(2),
                        pending: 0
                    }
                }
            ]
        );
        assert!(
            !c.is_closed(),
            "a timed-out request does not end the connection"
        );
    }

    #[test]
    fn one_outstanding_request_per_target() {
        let t0 = Instant::now();
        let mut c = activated(t0);
        c.request(t0, 1, ECU, Bytes::from_static(&[0x3E, 0x00]), true);
        c.request(t0, 2, ECU, Bytes::from_static(&[0x3E, 0x00]), true);
        c.request(t0, 3, 0x1002, Bytes::from_static(&[0x3E, 0x00]), true);
        let targets: Vec<u16> = std::iter::from_fn(|| c.poll_transmit())
            .map(|m| match m.repr {
                Repr::DiagnosticMessage { target, .. } => target,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(targets, vec![ECU, 0x1002]);
        c.handle_message(t0, ack(ECU));
        c.handle_message(t0, diag(ECU, &[0x7E, 0x00]));
        assert!(matches!(
            c.poll_event(),
            Some(ClientEvent::Response { id: 1, .. })
        ));
        // now the second request to ECU goes out
        assert!(matches!(
            c.poll_transmit().map(|m| m.repr),
            Some(Repr::DiagnosticMessage { target: ECU, .. })
        ));
    }

    #[test]
    fn activation_denied_names_the_code() {
        let t0 = Instant::now();
        let mut c = ClientCore::new(cfg(), t0);
        c.start_activation(t0);
        c.request(t0, 1, ECU, Bytes::from_static(&[0x3E, 0x00]), true);
        c.poll_transmit();
        assert_eq!(c.poll_transmit(), None, "requests wait for activation");
        c.handle_message(
            t0,
            msg(Repr::RoutingActivationResponse {
                tester: T,
                entity: 0x1000,
                code: RoutingActivationCode::DENIED_UNKNOWN_SOURCE,
                reserved: 0,
                oem: None,
            }),
        );
        let e = match c.poll_event() {
            Some(ClientEvent::ActivationFailed(e)) => e,
            other => panic!("{other:?}"),
        };
        assert!(
            e.to_string()
                .starts_with("routing activation denied: unknown source address 0x0E00"),
            "{e}"
        );
        assert!(matches!(
            c.poll_event(),
            Some(ClientEvent::Failed { id: 1, .. })
        ));
        assert!(matches!(c.poll_event(), Some(ClientEvent::Close(_))));
        assert!(c.is_closed());
    }

    #[test]
    fn activation_timeout() {
        let t0 = Instant::now();
        let mut c = ClientCore::new(cfg(), t0);
        c.start_activation(t0);
        assert_eq!(c.poll_at(), Some(t0 + Duration::from_secs(2)));
        c.handle_timeout(t0 + Duration::from_secs(2));
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::ActivationFailed(
                ClientError::ActivationTimeout(Duration::from_secs(2))
            ))
        );
        assert!(c.is_closed());
    }

    #[test]
    fn alive_check_is_answered_and_diag_nack_named() {
        let t0 = Instant::now();
        let mut c = activated(t0);
        c.handle_message(t0, msg(Repr::AliveCheckRequest));
        assert_eq!(
            c.poll_transmit().map(|m| m.repr),
            Some(Repr::AliveCheckResponse { source: T })
        );
        c.request(t0, 4, 0x2222, Bytes::from_static(&[0x3E, 0x00]), true);
        c.poll_transmit();
        c.handle_message(
            t0,
            msg(Repr::DiagnosticNack {
                source: 0x2222,
                target: T,
                code: DiagNackCode::UNKNOWN_TARGET,
                previous: Bytes::new(),
            }),
        );
        let Some(ClientEvent::Failed { id: 4, error }) = c.poll_event() else {
            panic!("expected failure")
        };
        assert_eq!(
            error.to_string(),
            "diagnostic message to 0x2222 refused: unknown target address (DoIP diagnostic NACK 0x03)"
        );
    }

    #[test]
    fn inactivity_closes_idle_connection() {
        let t0 = Instant::now();
        let mut c = activated(t0);
        let idle = Duration::from_secs(300);
        assert_eq!(c.poll_at(), Some(t0 + idle));
        c.handle_timeout(t0 + idle);
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Close(ClientError::Inactive(idle)))
        );
    }

    #[test]
    fn generic_nack_fails_oldest_unacked_and_fatal_ones_close() {
        let t0 = Instant::now();
        let mut c = activated(t0);
        c.request(t0, 1, ECU, Bytes::from_static(&[0x3E, 0x00]), true);
        c.poll_transmit();
        c.handle_message(t0, msg(Repr::GenericNack(NackCode::MESSAGE_TOO_LARGE)));
        assert!(matches!(
            c.poll_event(),
            Some(ClientEvent::Failed {
                id: 1,
                error: ClientError::GenericNack { .. }
            })
        ));
        assert!(!c.is_closed());
        c.handle_message(t0, msg(Repr::GenericNack(NackCode::INCORRECT_PATTERN)));
        assert!(c.is_closed());
    }

    #[test]
    fn closed_fails_everything() {
        let t0 = Instant::now();
        let mut c = activated(t0);
        c.request(t0, 1, ECU, Bytes::from_static(&[0x3E, 0x00]), true);
        c.request(t0, 2, ECU, Bytes::from_static(&[0x3E, 0x00]), true);
        c.handle_closed("peer closed the connection");
        let ids: Vec<u64> = std::iter::from_fn(|| c.poll_event())
            .filter_map(|e| match e {
                ClientEvent::Failed { id, .. } => Some(id),
                _ => None,
            })
            .collect();
        assert_eq!(ids, vec![1, 2]);
        c.request(t0, 3, ECU, Bytes::from_static(&[0x3E]), true);
        assert!(matches!(
            c.poll_event(),
            Some(ClientEvent::Failed { id: 3, .. })
        ));
    }
}
