//! Interop with an independent DoIP implementation, `simple_doip` 0.6 (MIT/Apache-2.0,
//! dev-dependency only), in both directions over loopback:
//! - its async client (tester) against our entity;
//! - our client against its async server (entity), and our discovery against its UDP
//!   responder.

mod doip_common;

use async_trait::async_trait;
use bytes::Bytes;
use doip_common::*;
use obdgw::vehicle::doip::Connection;
use obdgw::vehicle::doip::discovery::{self, IdentificationRequest};
use simple_doip::LogicalAddress;
use simple_doip::client::{AddressType, Client, ClientOptions, RoutingActivationOptions};
use simple_doip::connection::Connector;
use simple_doip::messages::{
    ActivationTypeCode, DiagnosticAckCode, DiagnosticMessage, OwnedMessage, OwnedPayload,
    ProtocolVersion, RoutingActivationRequest, RoutingActivationResponseCode,
};
use simple_doip::server::{ResponseWriter, Server, ServerConnectionHandler};
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};

/// simple_doip's own connector insists on port 13400; tests use ephemeral ports, so this
/// one connects anywhere (plain TCP with TCP_NODELAY, as theirs).
struct AnyPort;

#[async_trait]
impl Connector for AnyPort {
    async fn establish_connection(
        gateway_address: std::net::SocketAddr,
    ) -> Result<
        (
            tokio::net::tcp::OwnedReadHalf,
            tokio::net::tcp::OwnedWriteHalf,
        ),
        simple_doip::Error,
    > {
        let s = tokio::net::TcpStream::connect(gateway_address).await?;
        s.set_nodelay(true)?;
        Ok(s.into_split())
    }
}

fn their_client_options(server: std::net::SocketAddr, target: u16) -> ClientOptions {
    ClientOptions {
        server_address: server,
        server_logical_address: LogicalAddress(0x1000),
        server_physical_address: LogicalAddress(target),
        client_address: "127.0.0.1".parse().unwrap(),
        client_logical_address: LogicalAddress(TESTER),
        protocol_version: ProtocolVersion::V2012,
        routing_activation_options: Some(RoutingActivationOptions {
            activation_type: ActivationTypeCode::Default,
            oem_specific: None,
        }),
        diagnostic_message_timeout: Duration::from_secs(2),
    }
}

fn user_data(m: &OwnedMessage) -> Vec<u8> {
    match &m.payload {
        OwnedPayload::DiagnosticMessage(d) => {
            assert_eq!(d.source_address.0, ECU1);
            assert_eq!(d.target_address.0, TESTER);
            d.user_data.clone()
        }
        other => panic!("expected a diagnostic message, got {other:?}"),
    }
}

#[tokio::test]
async fn their_client_against_our_entity() {
    let e = start_entity(entity_config()).await;
    let mut client = Client::<AnyPort>::connect(their_client_options(e.tcp, ECU1))
        .await
        .expect("simple_doip client connects and activates routing on our entity");
    assert_eq!(e.entity.connections()[0].tester, Some(TESTER));

    client
        .send_diagnostic_message(AddressType::Physical, vec![0x22, 0xF1, 0x90])
        .await
        .expect("our entity acknowledged");
    let resp = client
        .receive_diagnostic_response(Duration::from_secs(5))
        .await
        .unwrap();
    let data = user_data(&resp);
    assert_eq!(&data[..3], &[0x62, 0xF1, 0x90]);
    assert_eq!(&data[3..], VIN);

    // response pending twice, then the final answer (handler waits 1.5 s between)
    client
        .send_diagnostic_message(AddressType::Physical, vec![0x31, 0x01, 0xAB, 0xCD])
        .await
        .unwrap();
    for _ in 0..2 {
        let r = client
            .receive_diagnostic_response(Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(user_data(&r), vec![0x7F, 0x31, 0x78]);
    }
    let r = client
        .receive_diagnostic_response(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(user_data(&r), vec![0x71, 0x01, 0xAB, 0xCD]);

    // an unknown target is NACKed by our entity and their client reports it
    let mut other = Client::<AnyPort>::connect(ClientOptions {
        client_logical_address: LogicalAddress(0x0E01),
        ..their_client_options(e.tcp, 0x0BAD)
    })
    .await
    .unwrap();
    let err = other
        .send_diagnostic_message(AddressType::Physical, vec![0x3E, 0x00])
        .await;
    assert!(err.is_err(), "NACK 0x03 surfaces as an error: {err:?}");
    client.shut_down().await;
    other.shut_down().await;
}

/// A minimal entity written with simple_doip: activates everyone, acks, echoes with 0x40
/// added to the service id.
struct TheirEntity;

#[async_trait]
impl ServerConnectionHandler for TheirEntity {
    fn get_vin(&self) -> [u8; 17] {
        *b"SIMPLEDOIPVIN0001"
    }
    fn get_logical_address(&self) -> LogicalAddress {
        LogicalAddress(0x2000)
    }
    fn get_entity_id(&self) -> [u8; 6] {
        [0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF]
    }
    fn get_group_id(&self) -> Option<[u8; 6]> {
        Some([0x11, 0x22, 0x33, 0x44, 0x55, 0x66])
    }
    async fn routing_activation(
        &self,
        request: &RoutingActivationRequest,
    ) -> Result<OwnedMessage, simple_doip::Error> {
        Ok(OwnedMessage::routing_activation_response(
            self.protocol_version(),
            request.source_address,
            self.get_logical_address(),
            RoutingActivationResponseCode::RoutingSuccessfullyActivated,
            [0; 4],
            None,
        ))
    }
    async fn diagnostic_message(
        &self,
        message: &DiagnosticMessage<'_>,
        responses: &mut dyn ResponseWriter,
    ) -> Result<(), simple_doip::Error> {
        responses
            .send(OwnedMessage::diagnostic_message_ack(
                self.protocol_version(),
                message.target_address,
                message.source_address,
                DiagnosticAckCode::RoutingConfirmationAck,
                message.user_data.to_vec(),
            ))
            .await?;
        let mut answer = message.user_data.to_vec();
        answer[0] |= 0x40;
        responses
            .send(OwnedMessage::diagnostic_message(
                self.protocol_version(),
                message.target_address,
                message.source_address,
                answer,
            ))
            .await
    }
}

#[tokio::test]
async fn our_client_against_their_entity() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_addr = udp.local_addr().unwrap();
    let server = std::sync::Arc::new(Server::new(TheirEntity).unwrap());
    let s = server.clone();
    tokio::spawn(async move { s.run_server_with_listener(listener).await });
    let s = server.clone();
    tokio::spawn(async move { s.run_udp_responder(udp).await });

    let conn = Connection::open(addr, client_config()).await.unwrap();
    assert_eq!(conn.entity_address(), 0x2000);
    let r = conn
        .request(0x2001, Bytes::from_static(&[0x22, 0xF1, 0x90]))
        .await
        .unwrap();
    assert_eq!(&r[..], &[0x62, 0xF1, 0x90]);
    let r = conn
        .request(0x2002, Bytes::from(vec![0x36; 3000]))
        .await
        .unwrap();
    assert_eq!(r.len(), 3000);
    assert_eq!(r[0], 0x76);

    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let found = discovery::discover_on(
        &sock,
        udp_addr,
        IdentificationRequest::All,
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    assert_eq!(found.len(), 1);
    let a = found[0].announcement;
    assert_eq!(a.vin_str(), Some("SIMPLEDOIPVIN0001"));
    assert_eq!(a.logical_address, 0x2000);
    assert_eq!(a.eid, [0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF]);
    assert_eq!(a.gid, [0x11, 0x22, 0x33, 0x44, 0x55, 0x66]);
}
