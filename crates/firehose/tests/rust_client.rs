//! The broker as seen by a mainstream Rust client library, `rumqttc`, for MQTT 3.1.1 and 5.0:
//! connections, QoS flows, retained messages, persistent sessions and v5 properties.

mod common;

use std::time::Duration;

use common::{Server, PUB_PASSWORD, TIMEOUT};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// MQTT 3.1.1 through `rumqttc`.
mod v311 {
    use super::*;
    use rumqttc::{
        AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, Publish, QoS,
    };

    /// A connected client whose event loop runs in a task that forwards incoming packets.
    struct Client {
        client: AsyncClient,
        incoming: mpsc::UnboundedReceiver<Result<Packet, ConnectionError>>,
    }

    fn options(server: &Server, id: &str, user: Option<&str>) -> MqttOptions {
        let mut options = MqttOptions::new(id, "127.0.0.1", server.addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        if let Some(user) = user {
            options.set_credentials(user, PUB_PASSWORD);
        }
        options
    }

    fn start(options: MqttOptions) -> Client {
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, incoming) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if tx.send(Ok(packet)).is_err() {
                            break;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        // Report and stop: no automatic reconnection in tests.
                        let _ = tx.send(Err(e));
                        break;
                    }
                }
            }
        });
        Client { client, incoming }
    }

    impl Client {
        /// The next incoming packet that `pick` accepts; others are skipped.
        async fn next<T>(&mut self, what: &str, pick: impl Fn(Packet) -> Option<T>) -> T {
            let wait = async {
                loop {
                    match self.incoming.recv().await {
                        Some(Ok(packet)) => {
                            if let Some(found) = pick(packet) {
                                return found;
                            }
                        }
                        Some(Err(e)) => panic!("connection error while waiting for {what}: {e}"),
                        None => panic!("event loop ended while waiting for {what}"),
                    }
                }
            };
            timeout(TIMEOUT, wait)
                .await
                .unwrap_or_else(|_| panic!("no {what} within {TIMEOUT:?}"))
        }

        async fn connack(&mut self) -> rumqttc::ConnAck {
            self.next("CONNACK", |p| match p {
                Packet::ConnAck(c) => Some(c),
                _ => None,
            })
            .await
        }

        async fn publish(&mut self) -> Publish {
            self.next("PUBLISH", |p| match p {
                Packet::Publish(p) => Some(p),
                _ => None,
            })
            .await
        }

        async fn subscribe(&mut self, filter: &str, qos: QoS) {
            self.client.subscribe(filter, qos).await.expect("subscribe");
            let suback = self
                .next("SUBACK", |p| match p {
                    Packet::SubAck(s) => Some(s),
                    _ => None,
                })
                .await;
            assert_eq!(suback.return_codes.len(), 1);
        }
    }

    #[tokio::test]
    async fn all_qos_round_trip() {
        let server = Server::standard();
        let mut sub = start(options(&server, &Server::client_id("rsub"), None));
        sub.connack().await;
        sub.subscribe("test/rumqttc", QoS::ExactlyOnce).await;
        let mut publisher = start(options(&server, &Server::client_id("rpub"), Some("pub")));
        publisher.connack().await;
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            let payload = format!("rumqttc-{i}");
            publisher
                .client
                .publish("test/rumqttc", qos, false, payload.clone())
                .await
                .expect("publish");
            let p = sub.publish().await;
            assert_eq!(p.topic, "test/rumqttc");
            assert_eq!(p.payload, payload.as_bytes());
            assert_eq!(p.qos, qos);
        }
    }

    #[tokio::test]
    async fn retained_message_on_subscribe() {
        let server = Server::standard();
        let mut publisher = start(options(&server, &Server::client_id("rpub"), Some("pub")));
        publisher.connack().await;
        publisher
            .client
            .publish("test/rumqttc/retained", QoS::AtLeastOnce, true, "kept")
            .await
            .expect("publish");
        publisher
            .next("PUBACK", |p| matches!(p, Packet::PubAck(_)).then_some(()))
            .await;
        let mut sub = start(options(&server, &Server::client_id("rsub"), None));
        sub.connack().await;
        sub.subscribe("test/rumqttc/#", QoS::AtLeastOnce).await;
        let p = sub.publish().await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..], p.retain),
            ("test/rumqttc/retained", &b"kept"[..], true)
        );
    }

    #[tokio::test]
    async fn persistent_session_receives_offline_messages() {
        let server = Server::standard();
        let id = Server::client_id("rpersist");
        let mut opts = options(&server, &id, None);
        opts.set_clean_session(false);
        let mut sub = start(opts.clone());
        assert!(!sub.connack().await.session_present);
        sub.subscribe("test/rumqttc/offline", QoS::AtLeastOnce)
            .await;
        sub.client.disconnect().await.expect("disconnect");
        // The event loop ends when the server closes the connection.
        let _ = timeout(TIMEOUT, async {
            while sub.incoming.recv().await.is_some() {}
        })
        .await;

        let mut publisher = start(options(&server, &Server::client_id("rpub"), Some("pub")));
        publisher.connack().await;
        for payload in ["while-away-1", "while-away-2"] {
            publisher
                .client
                .publish("test/rumqttc/offline", QoS::AtLeastOnce, false, payload)
                .await
                .expect("publish");
            publisher
                .next("PUBACK", |p| matches!(p, Packet::PubAck(_)).then_some(()))
                .await;
        }

        let mut sub = start(opts);
        assert!(sub.connack().await.session_present, "session not resumed");
        let mut got = vec![sub.publish().await.payload, sub.publish().await.payload];
        got.sort();
        assert_eq!(got, vec!["while-away-1", "while-away-2"]);
    }

    #[tokio::test]
    async fn bad_password_refused() {
        let server = Server::standard();
        let mut opts = options(&server, &Server::client_id("rbad"), None);
        opts.set_credentials("pub", "not-the-password");
        let mut client = start(opts);
        let result = timeout(TIMEOUT, client.incoming.recv())
            .await
            .expect("an answer within the timeout");
        match result {
            Some(Err(ConnectionError::ConnectionRefused(code))) => assert!(
                matches!(
                    code,
                    ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized
                ),
                "refused with {code:?}"
            ),
            other => panic!("expected a refused connection, got {other:?}"),
        }
    }
}

/// MQTT 5 through `rumqttc::v5`.
mod v5 {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{
        ConnAck, ConnectReturnCode, Packet, Publish, PublishProperties,
    };
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};

    struct Client {
        client: AsyncClient,
        incoming: mpsc::UnboundedReceiver<Result<Packet, ConnectionError>>,
    }

    fn options(server: &Server, id: &str, user: Option<&str>) -> MqttOptions {
        let mut options = MqttOptions::new(id, "127.0.0.1", server.addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        if let Some(user) = user {
            options.set_credentials(user, PUB_PASSWORD);
        }
        options
    }

    fn start(options: MqttOptions) -> Client {
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, incoming) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if tx.send(Ok(packet)).is_err() {
                            break;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        break;
                    }
                }
            }
        });
        Client { client, incoming }
    }

    impl Client {
        async fn next<T>(&mut self, what: &str, pick: impl Fn(Packet) -> Option<T>) -> T {
            let wait = async {
                loop {
                    match self.incoming.recv().await {
                        Some(Ok(packet)) => {
                            if let Some(found) = pick(packet) {
                                return found;
                            }
                        }
                        Some(Err(e)) => panic!("connection error while waiting for {what}: {e}"),
                        None => panic!("event loop ended while waiting for {what}"),
                    }
                }
            };
            timeout(TIMEOUT, wait)
                .await
                .unwrap_or_else(|_| panic!("no {what} within {TIMEOUT:?}"))
        }

        async fn connack(&mut self) -> ConnAck {
            self.next("CONNACK", |p| match p {
                Packet::ConnAck(c) => Some(c),
                _ => None,
            })
            .await
        }

        async fn publish(&mut self) -> Publish {
            self.next("PUBLISH", |p| match p {
                Packet::Publish(p) => Some(p),
                _ => None,
            })
            .await
        }

        async fn subscribe(&mut self, filter: &str, qos: QoS) {
            self.client.subscribe(filter, qos).await.expect("subscribe");
            self.next("SUBACK", |p| matches!(p, Packet::SubAck(_)).then_some(()))
                .await;
        }
    }

    #[tokio::test]
    async fn all_qos_round_trip() {
        let server = Server::standard();
        let mut sub = start(options(&server, &Server::client_id("r5sub"), None));
        sub.connack().await;
        sub.subscribe("test/rumqttc5", QoS::ExactlyOnce).await;
        let mut publisher = start(options(&server, &Server::client_id("r5pub"), Some("pub")));
        publisher.connack().await;
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            let payload = format!("rumqttc5-{i}");
            publisher
                .client
                .publish("test/rumqttc5", qos, false, payload.clone())
                .await
                .expect("publish");
            let p = sub.publish().await;
            assert_eq!(p.topic, "test/rumqttc5");
            assert_eq!(p.payload, payload.as_bytes());
            assert_eq!(p.qos, qos);
        }
    }

    #[tokio::test]
    async fn publish_properties_pass_through() {
        let server = Server::standard();
        let mut sub = start(options(&server, &Server::client_id("r5sub"), None));
        sub.connack().await;
        sub.subscribe("test/rumqttc5/props", QoS::AtLeastOnce).await;
        let mut publisher = start(options(&server, &Server::client_id("r5pub"), Some("pub")));
        publisher.connack().await;
        let properties = PublishProperties {
            payload_format_indicator: Some(1),
            response_topic: Some("test/rumqttc5/reply".to_string()),
            correlation_data: Some(bytes::Bytes::from_static(b"\x00\x01corr")),
            user_properties: vec![
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "2".to_string()),
                ("a".to_string(), "3".to_string()),
            ],
            content_type: Some("application/json".to_string()),
            ..PublishProperties::default()
        };
        publisher
            .client
            .publish_with_properties(
                "test/rumqttc5/props",
                QoS::AtLeastOnce,
                false,
                "{}",
                properties.clone(),
            )
            .await
            .expect("publish");
        let p = sub.publish().await;
        let got = p.properties.expect("properties delivered");
        assert_eq!(got.payload_format_indicator, Some(1));
        assert_eq!(got.response_topic, properties.response_topic);
        assert_eq!(got.correlation_data, properties.correlation_data);
        assert_eq!(
            got.user_properties, properties.user_properties,
            "order kept"
        );
        assert_eq!(got.content_type, properties.content_type);
    }

    #[tokio::test]
    async fn bad_password_refused() {
        let server = Server::standard();
        let mut opts = options(&server, &Server::client_id("r5bad"), None);
        opts.set_credentials("pub", "not-the-password");
        let mut client = start(opts);
        let result = timeout(TIMEOUT, client.incoming.recv())
            .await
            .expect("an answer within the timeout");
        match result {
            Some(Err(ConnectionError::ConnectionRefused(code))) => assert!(
                matches!(
                    code,
                    ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized
                ),
                "refused with {code:?}"
            ),
            other => panic!("expected a refused connection, got {other:?}"),
        }
    }
}
