//! The MQTT control packets as plain data.
//!
//! One type serves both protocol versions: fields that exist only in MQTT 5 (properties, reason
//! codes) are ignored when encoding for 3.1.1 and take their defaults when decoding 3.1.1.

use bytes::Bytes;

use crate::reason::ReasonCode;

/// A user property (MQTT 5): an ordered name/value pair that may repeat.
pub type UserProperty = (String, String);

/// The protocol version a connection speaks, fixed by its CONNECT packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Protocol {
    /// MQTT 3.1.1 (protocol level 4).
    #[default]
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

impl Protocol {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }
}

/// Quality of service of a message or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// Fire and forget.
    #[default]
    AtMostOnce = 0,
    /// Acknowledged with PUBACK; may be duplicated.
    AtLeastOnce = 1,
    /// Four-step handshake; delivered exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for a two-bit value, `None` for the reserved value 3.
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// Any MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Client to server: open a session.
    Connect(Box<Connect>),
    /// Server to client: answer to CONNECT.
    ConnAck(ConnAck),
    /// Either way: an application message.
    Publish(Publish),
    /// Acknowledges a QoS 1 PUBLISH.
    PubAck(PubResponse),
    /// First answer to a QoS 2 PUBLISH.
    PubRec(PubResponse),
    /// Releases a QoS 2 message.
    PubRel(PubResponse),
    /// Completes a QoS 2 exchange.
    PubComp(PubResponse),
    /// Client to server: add subscriptions.
    Subscribe(Subscribe),
    /// Server to client: answer to SUBSCRIBE.
    SubAck(SubAck),
    /// Client to server: remove subscriptions.
    Unsubscribe(Unsubscribe),
    /// Server to client: answer to UNSUBSCRIBE.
    UnsubAck(UnsubAck),
    /// Client to server keepalive probe.
    PingReq,
    /// Server to client keepalive answer.
    PingResp,
    /// Either way (server to client only in MQTT 5): close the connection.
    Disconnect(Disconnect),
    /// MQTT 5 only: extended authentication exchange.
    Auth(Auth),
}

impl Packet {
    /// Short upper-case name of the packet type, for logs and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// CONNECT: the first packet of every connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Connect {
    /// Version requested by the client; decides how every later packet is read.
    pub protocol: Protocol,
    /// 3.1.1 Clean Session / 5.0 Clean Start.
    pub clean_start: bool,
    /// Keep alive in seconds; 0 disables it.
    pub keep_alive: u16,
    /// Client identifier; may be empty (server assigns one).
    pub client_id: String,
    /// Last will, published if the connection ends without a normal DISCONNECT.
    pub will: Option<Will>,
    /// User name, if the flag was set.
    pub username: Option<String>,
    /// Password (binary data), if the flag was set.
    pub password: Option<Bytes>,
    /// MQTT 5 CONNECT properties.
    pub properties: ConnectProperties,
}

/// MQTT 5 CONNECT properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectProperties {
    /// Seconds the session outlives the connection; absent means 0.
    pub session_expiry_interval: Option<u32>,
    /// How many unacknowledged QoS 1/2 publishes the client accepts at once.
    pub receive_maximum: Option<u16>,
    /// Largest packet the client accepts.
    pub maximum_packet_size: Option<u32>,
    /// Highest topic alias the client accepts from the server.
    pub topic_alias_maximum: Option<u16>,
    /// Whether the client wants Response Information in CONNACK.
    pub request_response_information: Option<bool>,
    /// Whether the server may send reason strings and user properties on errors.
    pub request_problem_information: Option<bool>,
    /// User properties.
    pub user_properties: Vec<UserProperty>,
    /// Extended authentication method.
    pub authentication_method: Option<String>,
    /// Extended authentication data.
    pub authentication_data: Option<Bytes>,
}

/// A last-will message carried by CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Will {
    /// Topic name the will is published to.
    pub topic: String,
    /// Will payload.
    pub payload: Bytes,
    /// QoS of the will publish.
    pub qos: QoS,
    /// Whether the will is retained.
    pub retain: bool,
    /// MQTT 5 Will Delay Interval in seconds.
    pub delay_interval: Option<u32>,
    /// MQTT 5 will properties that become the publish properties (topic alias and subscription
    /// identifiers are never present here).
    pub properties: PublishProperties,
}

/// CONNACK: the server's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    /// Whether the server resumed an existing session.
    pub session_present: bool,
    /// Outcome; encoded as the 3.1.1 return code for 3.1.1 connections.
    pub reason: ReasonCode,
    /// MQTT 5 CONNACK properties.
    pub properties: ConnAckProperties,
}

/// MQTT 5 CONNACK properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAckProperties {
    /// Session expiry the server grants, if different from the request.
    pub session_expiry_interval: Option<u32>,
    /// How many unacknowledged QoS 1/2 publishes the server accepts at once.
    pub receive_maximum: Option<u16>,
    /// Highest QoS the server supports (absent means 2).
    pub maximum_qos: Option<QoS>,
    /// Whether retained messages are supported (absent means yes).
    pub retain_available: Option<bool>,
    /// Largest packet the server accepts.
    pub maximum_packet_size: Option<u32>,
    /// Client id the server chose because the client sent an empty one.
    pub assigned_client_identifier: Option<String>,
    /// Highest topic alias the server accepts from the client.
    pub topic_alias_maximum: Option<u16>,
    /// Human-readable diagnostic.
    pub reason_string: Option<String>,
    /// User properties.
    pub user_properties: Vec<UserProperty>,
    /// Whether wildcard subscriptions are supported (absent means yes).
    pub wildcard_subscription_available: Option<bool>,
    /// Whether subscription identifiers are supported (absent means yes).
    pub subscription_identifiers_available: Option<bool>,
    /// Whether shared subscriptions are supported (absent means yes).
    pub shared_subscription_available: Option<bool>,
    /// Keep alive the server imposes instead of the client's.
    pub server_keep_alive: Option<u16>,
    /// Basis for response topics.
    pub response_information: Option<String>,
    /// Another server the client should use.
    pub server_reference: Option<String>,
    /// Extended authentication method.
    pub authentication_method: Option<String>,
    /// Extended authentication data.
    pub authentication_data: Option<Bytes>,
}

/// PUBLISH: an application message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publish {
    /// Set on redelivery of a QoS 1/2 message.
    pub dup: bool,
    /// Delivery guarantee.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Topic name (may be empty in MQTT 5 when a topic alias is used).
    pub topic: String,
    /// Packet identifier, present exactly when `qos` > 0.
    pub packet_id: Option<u16>,
    /// MQTT 5 publish properties.
    pub properties: PublishProperties,
    /// Application payload, a slice of the received buffer.
    pub payload: Bytes,
}

/// MQTT 5 PUBLISH (and will) properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishProperties {
    /// 0 = unspecified bytes, 1 = UTF-8 text.
    pub payload_format_indicator: Option<u8>,
    /// Seconds after which the message must no longer be delivered.
    pub message_expiry_interval: Option<u32>,
    /// Topic alias (never in a will).
    pub topic_alias: Option<u16>,
    /// Topic for a response (request/response pattern).
    pub response_topic: Option<String>,
    /// Correlates a response with its request.
    pub correlation_data: Option<Bytes>,
    /// User properties.
    pub user_properties: Vec<UserProperty>,
    /// Identifiers of the subscriptions that matched (server to client only).
    pub subscription_identifiers: Vec<u32>,
    /// MIME type of the payload.
    pub content_type: Option<String>,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PubResponse {
    /// Identifier of the exchange this belongs to.
    pub packet_id: u16,
    /// Outcome (MQTT 5); `Success` for 3.1.1.
    pub reason: ReasonCode,
    /// MQTT 5 reason string and user properties.
    pub properties: AckProperties,
}

/// The properties every MQTT 5 acknowledgement may carry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AckProperties {
    /// Human-readable diagnostic.
    pub reason_string: Option<String>,
    /// User properties.
    pub user_properties: Vec<UserProperty>,
}

impl AckProperties {
    /// Whether there is nothing to encode.
    pub fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }
}

/// What a subscription does with retained messages when it is made (MQTT 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// Send them only if the subscription did not already exist.
    SendIfNew = 1,
    /// Never send retained messages for this subscription.
    DoNotSend = 2,
}

/// Per-filter options of SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS the client wants for this filter.
    pub qos: QoS,
    /// MQTT 5: do not deliver the client's own publishes.
    pub no_local: bool,
    /// MQTT 5: keep the retain flag as published instead of clearing it on live delivery.
    pub retain_as_published: bool,
    /// MQTT 5: retained message behaviour.
    pub retain_handling: RetainHandling,
}

/// One topic filter of a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subscription {
    /// Topic filter, possibly `$share/<group>/<filter>`.
    pub filter: String,
    /// Options for this filter.
    pub options: SubscriptionOptions,
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subscribe {
    /// Packet identifier echoed by SUBACK.
    pub packet_id: u16,
    /// At least one filter.
    pub subscriptions: Vec<Subscription>,
    /// MQTT 5 subscription identifier (1 to 268,435,455).
    pub subscription_identifier: Option<u32>,
    /// MQTT 5 user properties.
    pub user_properties: Vec<UserProperty>,
}

/// SUBACK: one reason code per requested filter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubAck {
    /// Echo of the SUBSCRIBE packet identifier.
    pub packet_id: u16,
    /// Granted QoS (0x00-0x02) or a failure code per filter; 3.1.1 failures encode as 0x80.
    pub reasons: Vec<ReasonCode>,
    /// MQTT 5 reason string and user properties.
    pub properties: AckProperties,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unsubscribe {
    /// Packet identifier echoed by UNSUBACK.
    pub packet_id: u16,
    /// At least one filter.
    pub filters: Vec<String>,
    /// MQTT 5 user properties.
    pub user_properties: Vec<UserProperty>,
}

/// UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnsubAck {
    /// Echo of the UNSUBSCRIBE packet identifier.
    pub packet_id: u16,
    /// MQTT 5: one reason per filter (empty and not encoded for 3.1.1).
    pub reasons: Vec<ReasonCode>,
    /// MQTT 5 reason string and user properties.
    pub properties: AckProperties,
}

/// DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// Why the connection ends (MQTT 5); `Success` (normal disconnection) for 3.1.1.
    pub reason: ReasonCode,
    /// MQTT 5 DISCONNECT properties.
    pub properties: DisconnectProperties,
}

/// MQTT 5 DISCONNECT properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DisconnectProperties {
    /// Client to server only: new session expiry.
    pub session_expiry_interval: Option<u32>,
    /// Human-readable diagnostic.
    pub reason_string: Option<String>,
    /// User properties.
    pub user_properties: Vec<UserProperty>,
    /// Another server the client should use.
    pub server_reference: Option<String>,
}

/// AUTH (MQTT 5 only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    /// Success, Continue Authentication or Re-authenticate.
    pub reason: ReasonCode,
    /// Authentication method.
    pub authentication_method: Option<String>,
    /// Authentication data.
    pub authentication_data: Option<Bytes>,
    /// Human-readable diagnostic.
    pub reason_string: Option<String>,
    /// User properties.
    pub user_properties: Vec<UserProperty>,
}
