//! DoIP client <-> entity over loopback: the good path, every negative path the issue names,
//! socket rules, timeouts on paused time, UDP identification and TCP_NODELAY.

mod doip_common;

use bytes::Bytes;
use doip_common::*;
use obdgw::vehicle::doip::discovery::{self, IdentificationRequest};
use obdgw::vehicle::doip::{ClientError, Connection, DoipClient, DoipClientConfig};
use obdgw::wire::doip::{DiagNackCode, NackCode, PowerMode, Repr, RoutingActivationCode, version};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, UdpSocket};

#[tokio::test]
async fn client_reads_vin_and_talks_to_two_targets_over_one_connection() {
    let e = start_entity(entity_config()).await;
    let conn = Connection::open(e.tcp, client_config()).await.unwrap();
    assert_eq!(conn.entity_address(), 0x1000);
    let vin = conn
        .request(ECU1, Bytes::from_static(&[0x22, 0xF1, 0x90]))
        .await
        .unwrap();
    assert_eq!(&vin[..3], &[0x62, 0xF1, 0x90]);
    assert_eq!(&vin[3..], VIN);
    let a = conn
        .request(ECU1, Bytes::from_static(&[0x10, 0x03]))
        .await
        .unwrap();
    let b = conn
        .request(ECU2, Bytes::from_static(&[0x10, 0x03]))
        .await
        .unwrap();
    assert_eq!(&a[..], &[0x10, 0x03, 0x01]);
    assert_eq!(&b[..], &[0x10, 0x03, 0x02]);
    // concurrent requests to both targets over the one connection
    let (x, y) = tokio::join!(
        conn.request(ECU1, Bytes::from_static(&[0x3E, 0x00])),
        conn.request(ECU2, Bytes::from_static(&[0x3E, 0x00]))
    );
    assert_eq!(&x.unwrap()[..], &[0x3E, 0x00, 0x01]);
    assert_eq!(&y.unwrap()[..], &[0x3E, 0x00, 0x02]);
    // suppress-positive-response: only the DoIP ack
    conn.send(ECU1, Bytes::from_static(&[0x3E, 0x80]))
        .await
        .unwrap();
    assert_eq!(e.entity.connections().len(), 1);
    assert_eq!(e.entity.connections()[0].tester, Some(TESTER));
}

#[tokio::test]
async fn tcp_nodelay_is_set_on_both_ends() {
    let e = start_entity(entity_config()).await;
    let conn = Connection::open(e.tcp, client_config()).await.unwrap();
    assert!(
        conn.nodelay(),
        "client socket: TCP_NODELAY read back with getsockopt"
    );
    let conns = e.entity.connections();
    assert_eq!(conns.len(), 1);
    assert!(
        conns[0].nodelay,
        "entity socket: TCP_NODELAY read back with getsockopt"
    );
    assert_eq!(conns[0].peer, conn.local_addr());
}

#[tokio::test(start_paused = true)]
async fn response_pending_extends_the_wait() {
    let e = start_entity(entity_config()).await;
    let cfg = DoipClientConfig {
        response_timeout_ms: 1000,
        pending_timeout_ms: 2000,
        ..client_config()
    };
    let conn = Connection::open(e.tcp, cfg).await.unwrap();
    let started = tokio::time::Instant::now();
    // two pendings 1.5 s apart: longer than P2 (1 s), shorter than P2* (2 s)
    let r = conn
        .request(ECU1, Bytes::from_static(&[0x31, 0x01, 0xFF, 0x00]))
        .await
        .unwrap();
    assert_eq!(&r[..], &[0x71, 0x01, 0xFF, 0x00]);
    assert!(started.elapsed() >= Duration::from_millis(3000));
}

#[tokio::test(start_paused = true)]
async fn pending_beyond_p2_star_times_out() {
    let e = start_entity(entity_config()).await;
    let cfg = DoipClientConfig {
        response_timeout_ms: 1000,
        pending_timeout_ms: 1200,
        ..client_config()
    };
    let conn = Connection::open(e.tcp, cfg).await.unwrap();
    let err = conn
        .request(ECU1, Bytes::from_static(&[0x31, 0x01, 0xFF, 0x00]))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ClientError::ResponseTimeout {
            target: ECU1,
            timeout: Duration::from_millis(1200),
            pending: 1
        }
    );
}

#[tokio::test(start_paused = true)]
async fn silent_ecu_times_out_and_connection_survives() {
    let e = start_entity(entity_config()).await;
    let conn = Connection::open(e.tcp, client_config()).await.unwrap();
    let err = conn
        .request(ECU1, Bytes::from_static(&[0xBA, 0xD0]))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ClientError::ResponseTimeout {
            target: ECU1,
            timeout: Duration::from_secs(2),
            pending: 0
        }
    );
    e.handler.release.notify_one();
    // ECU2 is independent; ECU1 works again once the handler is free
    let r = conn
        .request(ECU2, Bytes::from_static(&[0x10, 0x01]))
        .await
        .unwrap();
    assert_eq!(&r[..], &[0x10, 0x01, 0x02]);
}

#[tokio::test(start_paused = true)]
async fn silent_peer_activation_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut sink = Vec::new();
        // read (and ignore) until the client gives up and closes
        let _ = s.read_to_end(&mut sink).await;
        sink
    });
    let started = tokio::time::Instant::now();
    let err = Connection::open(addr, client_config()).await.unwrap_err();
    assert_eq!(err, ClientError::ActivationTimeout(Duration::from_secs(2)));
    assert!(started.elapsed() >= Duration::from_secs(2));
    let got = peer.await.unwrap();
    assert_eq!(&got[..], &hex("02FD 0005 00000007 0E00 00 00000000")[..]);
}

#[tokio::test(start_paused = true)]
async fn silent_peer_after_activation_ack_times_out() {
    // A fake entity that activates routing and then never acknowledges anything.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let mut t = RawTesterPeer(s);
        let mut buf = [0u8; 15];
        t.0.read_exact(&mut buf).await.unwrap();
        let resp = Repr::RoutingActivationResponse {
            tester: TESTER,
            entity: 0x1000,
            code: RoutingActivationCode::SUCCESS,
            reserved: 0,
            oem: None,
        };
        tokio::io::AsyncWriteExt::write_all(&mut t.0, &resp.to_bytes(2))
            .await
            .unwrap();
        let mut sink = Vec::new();
        let _ = t.0.read_to_end(&mut sink).await;
    });
    let conn = Connection::open(addr, client_config()).await.unwrap();
    let err = conn
        .request(ECU1, Bytes::from_static(&[0x3E, 0x00]))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ClientError::AckTimeout {
            target: ECU1,
            timeout: Duration::from_secs(2)
        }
    );
}

struct RawTesterPeer(tokio::net::TcpStream);

#[tokio::test]
async fn peer_closing_mid_message_fails_requests() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 15];
        s.read_exact(&mut buf).await.unwrap();
        let resp = Repr::RoutingActivationResponse {
            tester: TESTER,
            entity: 0x1000,
            code: RoutingActivationCode::SUCCESS,
            reserved: 0,
            oem: None,
        };
        tokio::io::AsyncWriteExt::write_all(&mut s, &resp.to_bytes(2))
            .await
            .unwrap();
        let mut req = [0u8; 14];
        s.read_exact(&mut req).await.unwrap();
        // half of an acknowledgement, then close
        tokio::io::AsyncWriteExt::write_all(&mut s, &hex("02FD 8002 0000"))
            .await
            .unwrap();
    });
    let conn = Connection::open(addr, client_config()).await.unwrap();
    let err = conn
        .request(ECU1, Bytes::from_static(&[0x3E, 0x00]))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Closed(_)), "{err:?}");
    assert!(err.to_string().contains("closed"), "{err}");
}

#[tokio::test]
async fn routing_activation_refusals_are_named() {
    let e = start_entity(entity_config()).await;
    let cfg = DoipClientConfig {
        tester_address: 0x0001,
        ..client_config()
    };
    let err = Connection::open(e.tcp, cfg).await.unwrap_err();
    assert_eq!(
        err,
        ClientError::ActivationDenied {
            code: RoutingActivationCode::DENIED_UNKNOWN_SOURCE,
            tester: 0x0001
        }
    );
    assert!(
        err.to_string()
            .starts_with("routing activation denied: unknown source address 0x0001"),
        "{err}"
    );
    let cfg = DoipClientConfig {
        activation_type: 0x42,
        ..client_config()
    };
    let err = Connection::open(e.tcp, cfg).await.unwrap_err();
    assert_eq!(
        err,
        ClientError::ActivationDenied {
            code: RoutingActivationCode::DENIED_UNSUPPORTED_ACTIVATION_TYPE,
            tester: TESTER
        }
    );
    // the entity keeps serving
    let conn = Connection::open(e.tcp, client_config()).await.unwrap();
    assert!(
        conn.request(ECU1, Bytes::from_static(&[0x3E, 0x00]))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn same_tester_on_second_socket_is_refused_while_first_is_alive() {
    let e = start_entity(entity_config()).await;
    let first = Connection::open(e.tcp, client_config()).await.unwrap();
    // the first socket answers the entity's alive check (its task is running)
    let err = Connection::open(e.tcp, client_config()).await.unwrap_err();
    assert_eq!(
        err,
        ClientError::ActivationDenied {
            code: RoutingActivationCode::DENIED_SOURCE_ACTIVE_ELSEWHERE,
            tester: TESTER
        }
    );
    assert!(
        first
            .request(ECU1, Bytes::from_static(&[0x3E, 0x00]))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn same_tester_takes_over_a_dead_socket() {
    let mut cfg = entity_config();
    cfg.alive_check_timeout = Duration::from_millis(100);
    let e = start_entity(cfg).await;
    // a raw tester activates and then never answers alive checks
    let mut dead = RawTester::connect(e.tcp).await;
    assert!(matches!(
        dead.activate(TESTER).await,
        Repr::RoutingActivationResponse {
            code: RoutingActivationCode::SUCCESS,
            ..
        }
    ));
    let conn = Connection::open(e.tcp, client_config()).await.unwrap();
    assert!(
        conn.request(ECU1, Bytes::from_static(&[0x3E, 0x00]))
            .await
            .is_ok()
    );
    // the dead socket got an alive check request and was then closed
    assert_eq!(dead.recv().await, Some(Repr::AliveCheckRequest));
    assert_eq!(dead.recv().await, None);
    let conns = e.entity.connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].peer, conn.local_addr());
}

#[tokio::test]
async fn all_sockets_active_is_refused() {
    let mut cfg = entity_config();
    cfg.max_sockets = 1;
    let e = start_entity(cfg).await;
    let first = Connection::open(e.tcp, client_config()).await.unwrap();
    let other = DoipClientConfig {
        tester_address: 0x0E01,
        ..client_config()
    };
    let err = Connection::open(e.tcp, other).await.unwrap_err();
    assert_eq!(
        err,
        ClientError::ActivationDenied {
            code: RoutingActivationCode::DENIED_ALL_SOCKETS_ACTIVE,
            tester: 0x0E01
        }
    );
    assert!(
        first
            .request(ECU1, Bytes::from_static(&[0x3E, 0x00]))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn second_activation_with_other_source_on_same_socket_is_refused() {
    let e = start_entity(entity_config()).await;
    let mut t = RawTester::connect(e.tcp).await;
    t.activate(TESTER).await;
    // same source again: fine
    assert!(matches!(
        t.activate(TESTER).await,
        Repr::RoutingActivationResponse {
            code: RoutingActivationCode::SUCCESS,
            ..
        }
    ));
    assert!(matches!(
        t.activate(0x0E05).await,
        Repr::RoutingActivationResponse {
            code: RoutingActivationCode::DENIED_SOURCE_MISMATCH,
            tester: 0x0E05,
            entity: 0x1000,
            ..
        }
    ));
    assert_eq!(t.recv().await, None, "socket closed after the denial");
}

#[tokio::test]
async fn diagnostic_nacks_unknown_target_too_large_unreachable() {
    let e = start_entity(entity_config()).await;
    let conn = Connection::open(e.tcp, client_config()).await.unwrap();
    let err = conn
        .request(0x2222, Bytes::from_static(&[0x3E, 0x00]))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ClientError::DiagNack {
            target: 0x2222,
            code: DiagNackCode::UNKNOWN_TARGET
        }
    );
    let big = Bytes::from(vec![0x36; 4097]);
    let err = conn.request(ECU1, big).await.unwrap_err();
    assert_eq!(
        err,
        ClientError::DiagNack {
            target: ECU1,
            code: DiagNackCode::MESSAGE_TOO_LARGE
        }
    );
    let err = conn
        .request(ECU_OFF, Bytes::from_static(&[0x3E, 0x00]))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ClientError::DiagNack {
            target: ECU_OFF,
            code: DiagNackCode::TARGET_UNREACHABLE
        }
    );
    assert_eq!(
        err.to_string(),
        "diagnostic message to 0x10FF refused: target unreachable (DoIP diagnostic NACK 0x06)"
    );
    // the largest accepted request still works on the same connection
    let ok = conn
        .request(ECU1, Bytes::from(vec![0x36; 4096]))
        .await
        .unwrap();
    assert_eq!(ok.len(), 4097);
}

#[tokio::test]
async fn diagnostic_before_activation_is_nacked_and_closed() {
    let e = start_entity(entity_config()).await;
    let mut t = RawTester::connect(e.tcp).await;
    t.send(Repr::DiagnosticMessage {
        source: TESTER,
        target: ECU1,
        data: Bytes::from_static(&[0x3E, 0x00]),
    })
    .await;
    assert_eq!(
        t.recv().await,
        Some(Repr::DiagnosticNack {
            source: ECU1,
            target: TESTER,
            code: DiagNackCode::INVALID_SOURCE,
            previous: Bytes::new()
        })
    );
    assert_eq!(t.recv().await, None);
    // wrong source after activation: same
    let mut t = RawTester::connect(e.tcp).await;
    t.activate(TESTER).await;
    t.send(Repr::DiagnosticMessage {
        source: 0x0E07,
        target: ECU1,
        data: Bytes::from_static(&[0x3E, 0x00]),
    })
    .await;
    assert!(matches!(
        t.recv().await,
        Some(Repr::DiagnosticNack {
            code: DiagNackCode::INVALID_SOURCE,
            ..
        })
    ));
    assert_eq!(t.recv().await, None);
}

#[tokio::test]
async fn handler_queue_full_is_out_of_memory() {
    let mut cfg = entity_config();
    cfg.queue_depth = 1;
    let e = start_entity(cfg).await;
    let mut t = RawTester::connect(e.tcp).await;
    t.activate(TESTER).await;
    let stuck = Repr::DiagnosticMessage {
        source: TESTER,
        target: ECU1,
        data: Bytes::from_static(&[0xBA, 0xD0]),
    };
    let mut both = stuck.to_bytes(2).to_vec();
    both.extend_from_slice(
        &Repr::DiagnosticMessage {
            source: TESTER,
            target: ECU2,
            data: Bytes::from_static(&[0x3E, 0x00]),
        }
        .to_bytes(2),
    );
    t.send_raw(&both).await;
    assert!(matches!(
        t.recv().await,
        Some(Repr::DiagnosticAck { source: ECU1, .. })
    ));
    assert_eq!(
        t.recv().await,
        Some(Repr::DiagnosticNack {
            source: ECU2,
            target: TESTER,
            code: DiagNackCode::OUT_OF_MEMORY,
            previous: Bytes::new()
        })
    );
    e.handler.release.notify_one();
    // once the handler is free, requests are accepted again
    t.send(Repr::DiagnosticMessage {
        source: TESTER,
        target: ECU2,
        data: Bytes::from_static(&[0x3E, 0x00]),
    })
    .await;
    assert!(matches!(t.recv().await, Some(Repr::DiagnosticAck { .. })));
    assert!(matches!(
        t.recv().await,
        Some(Repr::DiagnosticMessage { source: ECU2, .. })
    ));
}

#[tokio::test]
async fn generic_nacks_and_closing_rules() {
    let mut cfg = entity_config();
    cfg.buffer_budget = 100;
    let e = start_entity(cfg).await;

    // wrong protocol version: NACK 0x00, socket closed
    let mut t = RawTester::connect(e.tcp).await;
    t.send_raw(&hex("04FB 0005 00000007 0E00 00 00000000"))
        .await;
    assert_eq!(
        t.recv().await,
        Some(Repr::GenericNack(NackCode::INCORRECT_PATTERN))
    );
    assert_eq!(t.recv().await, None);

    // inverse byte wrong: same
    let mut t = RawTester::connect(e.tcp).await;
    t.send_raw(&hex("0200 0005 00000007 0E00 00 00000000"))
        .await;
    assert_eq!(
        t.recv().await,
        Some(Repr::GenericNack(NackCode::INCORRECT_PATTERN))
    );
    assert_eq!(t.recv().await, None);

    // unknown payload type: NACK 0x01, payload skipped, socket stays open
    let mut t = RawTester::connect(e.tcp).await;
    t.send_raw(&hex("02FD 7777 00000003 AABBCC 02FD 4003 00000000"))
        .await;
    assert_eq!(
        t.recv().await,
        Some(Repr::GenericNack(NackCode::UNKNOWN_PAYLOAD_TYPE))
    );
    assert_eq!(
        t.recv().await,
        Some(Repr::PowerModeResponse(PowerMode::READY))
    );

    // oversize: NACK 0x02 on the header alone (no payload sent yet), socket stays open
    t.send_raw(&hex("02FD 8001 00100000")).await;
    assert_eq!(
        t.recv().await,
        Some(Repr::GenericNack(NackCode::MESSAGE_TOO_LARGE))
    );
    // the payload that follows is skipped, then the stream continues
    t.send_raw(&vec![0u8; 0x10_0000]).await;
    t.send(Repr::EntityStatusRequest).await;
    assert!(matches!(
        t.recv().await,
        Some(Repr::EntityStatusResponse {
            max_sockets: 4,
            max_data_size: Some(8192),
            ..
        })
    ));

    // over the shared buffer budget: NACK 0x03, socket stays open
    t.activate(TESTER).await;
    t.send(Repr::DiagnosticMessage {
        source: TESTER,
        target: ECU1,
        data: Bytes::from(vec![0x36; 200]),
    })
    .await;
    assert_eq!(
        t.recv().await,
        Some(Repr::GenericNack(NackCode::OUT_OF_MEMORY))
    );
    t.send(Repr::AliveCheckRequest).await;
    assert_eq!(
        t.recv().await,
        Some(Repr::AliveCheckResponse { source: 0x1000 })
    );

    // impossible length for the type: NACK 0x04, socket closed
    t.send_raw(&hex("02FD 0008 00000003 0E0000")).await;
    assert_eq!(
        t.recv().await,
        Some(Repr::GenericNack(NackCode::INVALID_PAYLOAD_LENGTH))
    );
    assert_eq!(t.recv().await, None);

    // truncated message, then the tester closes mid-message
    let mut t = RawTester::connect(e.tcp).await;
    t.send_raw(&hex("02FD 0005 00000007 0E")).await;
    drop(t);

    // the entity keeps serving everyone else
    let conn = Connection::open(e.tcp, client_config()).await.unwrap();
    let r = conn
        .request(ECU1, Bytes::from_static(&[0x22, 0xF1, 0x90]))
        .await
        .unwrap();
    assert_eq!(&r[3..], VIN);
}

#[tokio::test(start_paused = true)]
async fn entity_closes_sockets_that_never_activate() {
    let e = start_entity(entity_config()).await;
    let mut t = RawTester::connect(e.tcp).await;
    let started = tokio::time::Instant::now();
    assert_eq!(t.recv().await, None);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "T_TCP_Initial_Inactivity"
    );
}

#[tokio::test(start_paused = true)]
async fn client_reconnects_after_the_entity_closed_an_idle_connection() {
    let mut cfg = entity_config();
    cfg.general_inactivity = Duration::from_millis(150);
    let e = start_entity(cfg).await;
    let mut client = DoipClient::new(e.tcp, client_config());
    let r = client
        .request(ECU1, Bytes::from_static(&[0x10, 0x01]))
        .await
        .unwrap();
    assert_eq!(&r[..], &[0x10, 0x01, 0x01]);
    let first = client.connection().await.unwrap().clone();
    let started = tokio::time::Instant::now();
    // the entity drops the idle socket after T_TCP_General_Inactivity; the client sees it
    first.closed().await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    let r = client
        .request(ECU1, Bytes::from_static(&[0x10, 0x01]))
        .await
        .unwrap();
    assert_eq!(&r[..], &[0x10, 0x01, 0x01]);
    assert_ne!(
        client.connection().await.unwrap().local_addr(),
        first.local_addr()
    );
}

#[tokio::test]
async fn connection_refused_is_a_connect_error() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let err = Connection::open(addr, client_config()).await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn connections_beyond_max_sockets_plus_one_are_closed_at_accept() {
    let mut cfg = entity_config();
    cfg.max_sockets = 1;
    let e = start_entity(cfg).await;
    let conn = Connection::open(e.tcp, client_config()).await.unwrap();
    // the spare socket is accepted (it could still win an alive-check contest)
    let mut spare = RawTester::connect(e.tcp).await;
    spare.send(Repr::EntityStatusRequest).await;
    assert!(matches!(
        spare.recv().await,
        Some(Repr::EntityStatusResponse {
            max_sockets: 1,
            open_sockets: 2,
            ..
        })
    ));
    // one more is closed straight away
    let mut extra = RawTester::connect(e.tcp).await;
    assert_eq!(extra.recv().await, None);
    assert!(
        conn.request(ECU1, Bytes::from_static(&[0x3E, 0x00]))
            .await
            .is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn tester_that_stops_reading_loses_only_its_socket() {
    let mut cfg = entity_config();
    cfg.write_timeout = Duration::from_secs(1);
    cfg.queue_depth = 64;
    let e = start_entity(cfg).await;
    let mut t = RawTester::connect(e.tcp).await;
    t.activate(TESTER).await;
    let req = Repr::DiagnosticMessage {
        source: TESTER,
        target: ECU1,
        data: Bytes::from(vec![0x55; 4000]),
    }
    .to_bytes(2);
    // write requests (each echoed with ~4 KB) and never read the answers
    let (_r, mut w) = t.stream.into_split();
    let writer = tokio::spawn(async move {
        let mut sent = 0usize;
        while tokio::io::AsyncWriteExt::write_all(&mut w, &req)
            .await
            .is_ok()
        {
            sent += 1;
            assert!(
                sent < 1_000_000,
                "the entity never gave up on the stalled tester"
            );
        }
        sent
    });
    // both sides block on full socket buffers; the entity's write timeout ends it
    let sent = writer.await.unwrap();
    assert!(sent > 10);
    let conn = Connection::open(e.tcp, client_config()).await.unwrap();
    assert!(
        conn.request(ECU1, Bytes::from_static(&[0x3E, 0x00]))
            .await
            .is_ok()
    );
}
#[tokio::test(start_paused = true)]
async fn client_closes_idle_connection_and_reconnects() {
    let e = start_entity(entity_config()).await;
    let cfg = DoipClientConfig {
        inactivity_timeout_ms: 1000,
        ..client_config()
    };
    let mut client = DoipClient::new(e.tcp, cfg);
    client
        .request(ECU1, Bytes::from_static(&[0x3E, 0x00]))
        .await
        .unwrap();
    let conn = client.connection().await.unwrap().clone();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(conn.is_closed(), "closed after 1 s without traffic");
    let r = client
        .request(ECU2, Bytes::from_static(&[0x3E, 0x00]))
        .await
        .unwrap();
    assert_eq!(&r[..], &[0x3E, 0x00, 0x02]);
    assert_ne!(
        client.connection().await.unwrap().local_addr(),
        conn.local_addr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_testers_concurrently_and_a_bad_one_does_not_matter() {
    let mut cfg = entity_config();
    cfg.max_sockets = 8;
    let e = start_entity(cfg).await;
    let mut tasks = Vec::new();
    for i in 0..4u16 {
        let addr = e.tcp;
        tasks.push(tokio::spawn(async move {
            let cfg = DoipClientConfig {
                tester_address: TESTER + i,
                ..client_config()
            };
            let conn = Connection::open(addr, cfg).await.unwrap();
            for n in 0..50u8 {
                let target = if n % 2 == 0 { ECU1 } else { ECU2 };
                let r = conn
                    .request(target, Bytes::from(vec![0x22, n]))
                    .await
                    .unwrap();
                assert_eq!(&r[..], &[0x22, n, target as u8]);
            }
        }));
    }
    // meanwhile a tester sends garbage
    let mut bad = RawTester::connect(e.tcp).await;
    bad.send_raw(&[0xFF; 64]).await;
    assert_eq!(
        bad.recv().await,
        Some(Repr::GenericNack(NackCode::INCORRECT_PATTERN))
    );
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(e.handler.handled.load(Ordering::Relaxed), 200);
}

#[tokio::test]
async fn udp_identification_plain_eid_vin_status_and_power_mode() {
    let e = start_entity(entity_config()).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let window = Duration::from_millis(300);
    let found = discovery::discover_on(&sock, e.udp, IdentificationRequest::All, window)
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].addr, e.udp);
    let a = found[0].announcement;
    assert_eq!(a.vin_str(), Some("WOBDGW0TEST000042"));
    assert_eq!(a.logical_address, 0x1000);
    assert_eq!(a.eid, [0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);

    let by_eid = IdentificationRequest::ByEid([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);
    assert_eq!(
        discovery::discover_on(&sock, e.udp, by_eid, window)
            .await
            .unwrap()
            .len(),
        1
    );
    let wrong_eid = IdentificationRequest::ByEid([9; 6]);
    assert!(
        discovery::discover_on(&sock, e.udp, wrong_eid, window)
            .await
            .unwrap()
            .is_empty()
    );
    let by_vin = IdentificationRequest::ByVin(*VIN);
    assert_eq!(
        discovery::discover_on(&sock, e.udp, by_vin, window)
            .await
            .unwrap()
            .len(),
        1
    );
    let wrong_vin = IdentificationRequest::ByVin(*b"00000000000000000");
    assert!(
        discovery::discover_on(&sock, e.udp, wrong_vin, window)
            .await
            .unwrap()
            .is_empty()
    );

    // entity status and power mode over UDP, and a NACK for a bad pattern
    let mut buf = [0u8; 64];
    for (req, want) in [
        (
            Repr::EntityStatusRequest.to_bytes(2).to_vec(),
            Repr::EntityStatusResponse {
                node_type: obdgw::wire::doip::NodeType::GATEWAY,
                max_sockets: 4,
                open_sockets: 0,
                max_data_size: Some(8192),
            },
        ),
        (
            Repr::PowerModeRequest.to_bytes(3).to_vec(),
            Repr::PowerModeResponse(PowerMode::READY),
        ),
        (
            hex("0203 0001 00000000"),
            Repr::GenericNack(NackCode::INCORRECT_PATTERN),
        ),
    ] {
        sock.send_to(&req, e.udp).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let b = Bytes::copy_from_slice(&buf[..n]);
        let (_, repr) = Repr::parse_bytes(&b, 100).unwrap();
        assert_eq!(repr, want);
    }
}

#[tokio::test(start_paused = true)]
async fn three_announcements_at_start() {
    let listener = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = entity_config();
    cfg.announce_to = Some(listener.local_addr().unwrap());
    let started = tokio::time::Instant::now();
    let _e = start_entity(cfg).await;
    let mut buf = [0u8; 64];
    let mut times = Vec::new();
    for _ in 0..3 {
        let (n, _) = listener.recv_from(&mut buf).await.unwrap();
        let b = Bytes::copy_from_slice(&buf[..n]);
        let (v, repr) = Repr::parse_bytes(&b, 100).unwrap();
        assert_eq!(v, version::ISO_2012);
        assert!(matches!(repr, Repr::VehicleAnnouncement(a) if a.vin == *VIN));
        times.push(started.elapsed());
    }
    assert_eq!(
        times,
        vec![
            Duration::from_millis(100),
            Duration::from_millis(600),
            Duration::from_millis(1100)
        ]
    );
    // and no fourth
    let more = tokio::time::timeout(Duration::from_secs(5), listener.recv_from(&mut buf)).await;
    assert!(more.is_err());
}

#[tokio::test]
async fn discovery_socket_on_an_interface() {
    let e = start_entity(entity_config()).await;
    let cfg = DoipClientConfig {
        discovery_interface: Some("lo".into()),
        ..client_config()
    };
    // SO_BINDTODEVICE needs CAP_NET_RAW; when it is refused the error must say so.
    match discovery::discovery_socket(&cfg, 0) {
        Ok(sock) => {
            let found = discovery::discover_on(
                &sock,
                e.udp,
                IdentificationRequest::All,
                Duration::from_millis(300),
            )
            .await
            .unwrap();
            assert_eq!(found.len(), 1);
        }
        Err(err) => assert!(err.to_string().contains("CAP_NET_RAW"), "{err}"),
    }
    let cfg = DoipClientConfig {
        discovery_interface: Some("nosuch0".into()),
        ..client_config()
    };
    let err = discovery::discovery_socket(&cfg, 0).unwrap_err();
    assert!(
        err.to_string().starts_with(
            "cannot open the DoIP discovery socket on nosuch0: binding to interface nosuch0"
        ),
        "{err}"
    );
    let cfg = DoipClientConfig {
        discovery_bind: Some("127.0.0.1".parse().unwrap()),
        ..client_config()
    };
    let sock = discovery::discovery_socket(&cfg, 0).unwrap();
    assert!(sock.local_addr().unwrap().ip().is_loopback());
}

#[tokio::test]
async fn discovery_hears_announcements_on_a_listening_socket() {
    let listener = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = entity_config();
    cfg.announce_to = Some(listener.local_addr().unwrap());
    cfg.announce_delay = Duration::from_millis(1);
    let e = start_entity(cfg).await;
    let found = discovery::listen_announcements(&listener, Duration::from_secs(10), Some(1))
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].addr, e.udp);
    assert_eq!(found[0].announcement.logical_address, 0x1000);
}

#[tokio::test]
async fn shutdown_closes_connections_and_returns() {
    let e = start_entity(entity_config()).await;
    let conn = Connection::open(e.tcp, client_config()).await.unwrap();
    e.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), e.task)
        .await
        .unwrap()
        .unwrap();
    let err = conn
        .request(ECU1, Bytes::from_static(&[0x3E, 0x00]))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Closed(_)), "{err:?}");
}

#[tokio::test]
async fn a_panicking_handler_loses_only_its_connection() {
    use obdgw::vehicle::doip::entity::{DiagRequest, Entity, FnHandler, Replies};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = entity_config();
    cfg.buffer_budget = 64;
    let entity = Entity::new(
        cfg,
        FnHandler(|req: DiagRequest, replies: Replies| async move {
            assert!(
                !req.data.starts_with(&[0xDE, 0xAD]),
                "handler bug (on purpose)"
            );
            let _ = replies.send(req.data).await;
        }),
    );
    let e = entity.clone();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move { e.run(listener, None, s).await });
    let conn = Connection::open(addr, client_config()).await.unwrap();
    // 50 of the 64 budget bytes are held while the handler runs, and must come back
    let mut doomed = vec![0xDE, 0xAD];
    doomed.resize(50, 0);
    doomed.truncate(2);
    let err = conn
        .request(ECU1, Bytes::from(vec![0xDE, 0xAD]))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Closed(_)), "{err:?}");
    assert!(
        entity.connections().is_empty(),
        "the dead connection is unregistered"
    );
    let conn = Connection::open(addr, client_config()).await.unwrap();
    // the budget (64 bytes) held by the dead connection came back: 60 bytes fit
    let big = Bytes::from(vec![0x31; 60]);
    assert_eq!(conn.request(ECU1, big.clone()).await.unwrap(), big);
    shutdown.cancel();
}
