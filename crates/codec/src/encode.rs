//! Packets to bytes.

use bytes::{Bytes, BytesMut};

use crate::packet::{
    AckProperties, Auth, ConnAckProperties, Connect, ConnectProperties, DisconnectProperties,
    Packet, Protocol, Publish, PublishProperties, QoS, Subscribe, UserProperty, Will,
};
use crate::property::*;
use crate::reason::ReasonCode;

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The packet is larger than the 268,435,455 bytes the remaining length can express.
    #[error("packet too large to encode: {0} bytes")]
    TooLarge(usize),
    /// A string or binary field longer than 65,535 bytes.
    #[error("string or binary field too long: expected at most 65535 bytes, got {0}")]
    StringTooLong(usize),
    /// The packet does not exist in the protocol version (AUTH in 3.1.1).
    #[error("{0} does not exist in MQTT 3.1.1")]
    NotInProtocol(&'static str),
    /// A field holds a value the wire format cannot carry (a QoS 1 PUBLISH without a packet
    /// identifier, a subscription identifier above 268,435,455).
    #[error("cannot encode {packet}: {reason}")]
    Invalid {
        /// Packet type name.
        packet: &'static str,
        /// What was expected and what came.
        reason: String,
    },
}

/// Appends the encoding of `packet` for `protocol` to `buf`.
///
/// The size is computed first and `buf` grows once; on error nothing is appended. CONNECT is
/// encoded for its own `protocol` field, which is what decoding it yields. Fields that 3.1.1
/// cannot carry (properties, most reason codes) are left out for 3.1.1.
///
/// # Errors
/// [`EncodeError`] when a field cannot be represented.
pub fn encode(packet: &Packet, protocol: Protocol, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let mut counter = Counter(0);
    body(packet, protocol, &mut counter)?;
    let remaining = counter.0;
    let length_len = varint_len(remaining).ok_or(EncodeError::TooLarge(remaining))?;
    buf.reserve(1 + length_len + remaining);
    buf.write_u8(first_byte(packet));
    put_varint(buf, remaining);
    // The counting pass met every error the writing pass could meet.
    body(packet, protocol, buf)
}

/// A PUBLISH encoded once for many receivers: the bytes before the packet identifier and the
/// bytes after it. QoS 0 receivers get `head` + `tail`; QoS 1/2 receivers get `head`, their own
/// two-byte packet identifier, then `tail`. The fixed header's remaining length already counts
/// the identifier when `publish.qos` > 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishParts {
    /// Fixed header (with the dup, qos and retain bits of the publish) and topic name.
    pub head: Bytes,
    /// Properties (MQTT 5) and payload.
    pub tail: Bytes,
}

impl PublishParts {
    /// Total encoded size for one receiver.
    pub fn len(&self, qos_positive: bool) -> usize {
        self.head.len() + self.tail.len() + if qos_positive { 2 } else { 0 }
    }
}

/// Encodes `publish` (its `packet_id` is ignored) into shareable parts; see [`PublishParts`].
///
/// Fan-out to N receivers costs at most one copy of the payload in total, not one per
/// receiver: for MQTT 5 one buffer holds both parts (the properties come before the payload);
/// for 3.1.1 the tail is the payload's own `Bytes`, not copied at all.
///
/// # Errors
/// [`EncodeError`] when a field cannot be represented.
pub fn encode_publish_split(
    publish: &Publish,
    protocol: Protocol,
) -> Result<PublishParts, EncodeError> {
    encode_publish_parts(
        &PublishRef {
            dup: publish.dup,
            qos: publish.qos,
            retain: publish.retain,
            topic: &publish.topic,
            properties: &publish.properties,
            payload: &publish.payload,
        },
        protocol,
    )
}

/// The fields of a PUBLISH that [`encode_publish_parts`] encodes, borrowed.
///
/// Why: a broker keeps a message in its own shape and encodes it once per variant; building
/// a [`Publish`] for that copied the topic and the properties of every message.
#[derive(Debug, Clone, Copy)]
pub struct PublishRef<'a> {
    /// Set on redelivery of a QoS 1/2 message.
    pub dup: bool,
    /// Delivery guarantee.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Topic name.
    pub topic: &'a str,
    /// MQTT 5 publish properties (not encoded for 3.1.1).
    pub properties: &'a PublishProperties,
    /// Application payload.
    pub payload: &'a Bytes,
}

/// [`encode_publish_split`] of borrowed fields.
///
/// # Errors
/// [`EncodeError`] when a field cannot be represented.
pub fn encode_publish_parts(
    publish: &PublishRef<'_>,
    protocol: Protocol,
) -> Result<PublishParts, EncodeError> {
    let topic_len = string_len(publish.topic)?;
    let id_len = if publish.qos == QoS::AtMostOnce { 0 } else { 2 };
    let v5 = protocol == Protocol::V5;
    let props_len = if v5 {
        props_block_len(publish.properties)?
    } else {
        0
    };
    let remaining = topic_len + id_len + props_len + publish.payload.len();
    let length_len = varint_len(remaining).ok_or(EncodeError::TooLarge(remaining))?;
    let head_len = 1 + length_len + topic_len;
    let tail_len = if v5 {
        props_len + publish.payload.len()
    } else {
        0
    };
    let mut buf = BytesMut::with_capacity(head_len + tail_len);
    buf.write_u8(publish_first_byte(publish.dup, publish.qos, publish.retain));
    put_varint(&mut buf, remaining);
    put_string(&mut buf, publish.topic)?;
    if !v5 {
        // Without properties the tail is the payload itself: shared with the message, not
        // copied (fan-in encodes every message for one receiver, so the copy was per message).
        return Ok(PublishParts {
            head: buf.freeze(),
            tail: publish.payload.clone(),
        });
    }
    props_block(&mut buf, publish.properties)?;
    buf.write_bytes(publish.payload.as_ref());
    let head = buf.split_to(head_len).freeze();
    Ok(PublishParts {
        head,
        tail: buf.freeze(),
    })
}

/// The largest remaining length (and variable byte integer) MQTT can express.
const MAX_VARINT: usize = 268_435_455;

/// Where an encoding goes: the real buffer, or a counter that only measures it. Every packet is
/// written by one generic function run twice, so size and bytes cannot disagree.
trait Sink {
    fn write_bytes(&mut self, bytes: &[u8]);

    fn write_u8(&mut self, value: u8) {
        self.write_bytes(&[value]);
    }

    fn write_u16(&mut self, value: u16) {
        self.write_bytes(&value.to_be_bytes());
    }

    fn write_u32(&mut self, value: u32) {
        self.write_bytes(&value.to_be_bytes());
    }
}

/// Measures an encoding without writing it.
struct Counter(usize);

impl Sink for Counter {
    fn write_bytes(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }

    fn write_u8(&mut self, _: u8) {
        self.0 += 1;
    }

    fn write_u16(&mut self, _: u16) {
        self.0 += 2;
    }

    fn write_u32(&mut self, _: u32) {
        self.0 += 4;
    }
}

impl Sink for BytesMut {
    fn write_bytes(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// How many bytes a variable byte integer takes, `None` above [`MAX_VARINT`].
fn varint_len(value: usize) -> Option<usize> {
    match value {
        0..=127 => Some(1),
        128..=16_383 => Some(2),
        16_384..=2_097_151 => Some(3),
        2_097_152..=MAX_VARINT => Some(4),
        _ => None,
    }
}

/// Writes a variable byte integer; callers have checked `value <= MAX_VARINT`.
fn put_varint<S: Sink>(s: &mut S, mut value: usize) {
    loop {
        // Masked to seven bits, so the cast cannot truncate.
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        s.write_u8(byte);
        if value == 0 {
            break;
        }
    }
}

fn string_len(value: &str) -> Result<usize, EncodeError> {
    if value.len() > usize::from(u16::MAX) {
        return Err(EncodeError::StringTooLong(value.len()));
    }
    Ok(2 + value.len())
}

fn put_binary<S: Sink>(s: &mut S, value: &[u8]) -> Result<(), EncodeError> {
    let len = u16::try_from(value.len()).map_err(|_| EncodeError::StringTooLong(value.len()))?;
    s.write_u16(len);
    s.write_bytes(value);
    Ok(())
}

fn put_string<S: Sink>(s: &mut S, value: &str) -> Result<(), EncodeError> {
    put_binary(s, value.as_bytes())
}

fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => publish_first_byte(p.dup, p.qos, p.retain),
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    }
}

fn publish_first_byte(dup: bool, qos: QoS, retain: bool) -> u8 {
    0x30 | (u8::from(dup) << 3) | ((qos as u8) << 1) | u8::from(retain)
}

/// Writes everything after the fixed header.
fn body<S: Sink>(packet: &Packet, protocol: Protocol, s: &mut S) -> Result<(), EncodeError> {
    let v5 = protocol == Protocol::V5;
    match packet {
        Packet::Connect(connect) => connect_body(s, connect),
        Packet::ConnAck(connack) => {
            s.write_u8(u8::from(connack.session_present));
            if v5 {
                s.write_u8(connack.reason.as_u8());
                props_block(s, &connack.properties)
            } else {
                s.write_u8(connack.reason.to_v311_connack());
                Ok(())
            }
        }
        Packet::Publish(publish) => {
            put_string(s, &publish.topic)?;
            if publish.qos != QoS::AtMostOnce {
                let id = publish.packet_id.ok_or_else(|| EncodeError::Invalid {
                    packet: "PUBLISH",
                    reason: format!(
                        "QoS {} needs a packet identifier, got none",
                        publish.qos as u8
                    ),
                })?;
                s.write_u16(id);
            }
            if v5 {
                props_block(s, &publish.properties)?;
            }
            s.write_bytes(&publish.payload);
            Ok(())
        }
        Packet::PubAck(response)
        | Packet::PubRec(response)
        | Packet::PubRel(response)
        | Packet::PubComp(response) => {
            s.write_u16(response.packet_id);
            // v5 short forms: nothing after the identifier means Success without properties.
            if v5 && !(response.reason == ReasonCode::Success && response.properties.is_empty()) {
                s.write_u8(response.reason.as_u8());
                if !response.properties.is_empty() {
                    props_block(s, &response.properties)?;
                }
            }
            Ok(())
        }
        Packet::Subscribe(subscribe) => {
            s.write_u16(subscribe.packet_id);
            if v5 {
                props_block(s, &SubscribeProps(subscribe))?;
            }
            for subscription in &subscribe.subscriptions {
                put_string(s, &subscription.filter)?;
                let o = subscription.options;
                let mut bits = o.qos as u8;
                if v5 {
                    bits |= u8::from(o.no_local) << 2
                        | u8::from(o.retain_as_published) << 3
                        | (o.retain_handling as u8) << 4;
                }
                s.write_u8(bits);
            }
            Ok(())
        }
        Packet::SubAck(suback) => {
            s.write_u16(suback.packet_id);
            if v5 {
                props_block(s, &suback.properties)?;
                for reason in &suback.reasons {
                    s.write_u8(reason.as_u8());
                }
            } else {
                for reason in &suback.reasons {
                    s.write_u8(reason.to_v311_suback());
                }
            }
            Ok(())
        }
        Packet::Unsubscribe(unsubscribe) => {
            s.write_u16(unsubscribe.packet_id);
            if v5 {
                props_block(s, &UserProps(&unsubscribe.user_properties))?;
            }
            for filter in &unsubscribe.filters {
                put_string(s, filter)?;
            }
            Ok(())
        }
        Packet::UnsubAck(unsuback) => {
            s.write_u16(unsuback.packet_id);
            if v5 {
                props_block(s, &unsuback.properties)?;
                for reason in &unsuback.reasons {
                    s.write_u8(reason.as_u8());
                }
            }
            Ok(())
        }
        Packet::PingReq | Packet::PingResp => Ok(()),
        Packet::Disconnect(disconnect) => {
            // v5 short form: no body for a normal disconnection without properties. A bare
            // reason keeps its zero property length: the one-byte form is legal, but some
            // clients (rumqttc among them) refuse it, and a broker must be understood.
            let bare = disconnect.reason == ReasonCode::Success
                && disconnect.properties == DisconnectProperties::default();
            if v5 && !bare {
                s.write_u8(disconnect.reason.as_u8());
                props_block(s, &disconnect.properties)?;
            }
            Ok(())
        }
        Packet::Auth(auth) => {
            if !v5 {
                return Err(EncodeError::NotInProtocol("AUTH"));
            }
            let props_empty = auth.authentication_method.is_none()
                && auth.authentication_data.is_none()
                && auth.reason_string.is_none()
                && auth.user_properties.is_empty();
            if !(auth.reason == ReasonCode::Success && props_empty) {
                s.write_u8(auth.reason.as_u8());
                props_block(s, &AuthProps(auth))?;
            }
            Ok(())
        }
    }
}

fn connect_body<S: Sink>(s: &mut S, connect: &Connect) -> Result<(), EncodeError> {
    let v5 = connect.protocol == Protocol::V5;
    put_string(s, "MQTT")?;
    s.write_u8(connect.protocol.level());
    let mut flags = u8::from(connect.clean_start) << 1;
    if let Some(will) = &connect.will {
        flags |= 0x04 | (will.qos as u8) << 3 | u8::from(will.retain) << 5;
    }
    if connect.password.is_some() {
        flags |= 0x40;
    }
    if connect.username.is_some() {
        flags |= 0x80;
    }
    s.write_u8(flags);
    s.write_u16(connect.keep_alive);
    if v5 {
        props_block(s, &connect.properties)?;
    }
    put_string(s, &connect.client_id)?;
    if let Some(will) = &connect.will {
        if v5 {
            props_block(s, &WillProps(will))?;
        }
        put_string(s, &will.topic)?;
        put_binary(s, &will.payload)?;
    }
    if let Some(username) = &connect.username {
        put_string(s, username)?;
    }
    if let Some(password) = &connect.password {
        put_binary(s, password)?;
    }
    Ok(())
}

/// A property list of some packet.
trait Props {
    /// Writes the properties without their length prefix.
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError>;
}

/// The length of a property list with its length prefix.
fn props_block_len<P: Props>(props: &P) -> Result<usize, EncodeError> {
    let mut counter = Counter(0);
    props.write(&mut counter)?;
    let len = varint_len(counter.0).ok_or(EncodeError::TooLarge(counter.0))?;
    Ok(len + counter.0)
}

/// Writes a property list with its length prefix.
fn props_block<S: Sink, P: Props>(s: &mut S, props: &P) -> Result<(), EncodeError> {
    let mut counter = Counter(0);
    props.write(&mut counter)?;
    if counter.0 > MAX_VARINT {
        return Err(EncodeError::TooLarge(counter.0));
    }
    put_varint(s, counter.0);
    props.write(s)
}

fn prop_u8<S: Sink>(s: &mut S, id: u8, value: Option<u8>) {
    if let Some(value) = value {
        s.write_u8(id);
        s.write_u8(value);
    }
}

fn prop_bool<S: Sink>(s: &mut S, id: u8, value: Option<bool>) {
    prop_u8(s, id, value.map(u8::from));
}

fn prop_u16<S: Sink>(s: &mut S, id: u8, value: Option<u16>) {
    if let Some(value) = value {
        s.write_u8(id);
        s.write_u16(value);
    }
}

fn prop_u32<S: Sink>(s: &mut S, id: u8, value: Option<u32>) {
    if let Some(value) = value {
        s.write_u8(id);
        s.write_u32(value);
    }
}

fn prop_string<S: Sink>(s: &mut S, id: u8, value: Option<&String>) -> Result<(), EncodeError> {
    if let Some(value) = value {
        s.write_u8(id);
        put_string(s, value)?;
    }
    Ok(())
}

fn prop_binary<S: Sink>(s: &mut S, id: u8, value: Option<&Bytes>) -> Result<(), EncodeError> {
    if let Some(value) = value {
        s.write_u8(id);
        put_binary(s, value)?;
    }
    Ok(())
}

fn prop_subscription_identifier<S: Sink>(s: &mut S, value: u32) -> Result<(), EncodeError> {
    let value = value as usize;
    if varint_len(value).is_none() {
        return Err(EncodeError::Invalid {
            packet: "PUBLISH or SUBSCRIBE",
            reason: format!("subscription identifier must be at most {MAX_VARINT}, got {value}"),
        });
    }
    s.write_u8(SUBSCRIPTION_IDENTIFIER);
    put_varint(s, value);
    Ok(())
}

fn user_props<S: Sink>(s: &mut S, props: &[UserProperty]) -> Result<(), EncodeError> {
    for (key, value) in props {
        s.write_u8(USER_PROPERTY);
        put_string(s, key)?;
        put_string(s, value)?;
    }
    Ok(())
}

impl Props for ConnectProperties {
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        prop_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        prop_u16(s, RECEIVE_MAXIMUM, self.receive_maximum);
        prop_u32(s, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        prop_u16(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        prop_bool(
            s,
            REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        prop_bool(
            s,
            REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        user_props(s, &self.user_properties)?;
        prop_string(
            s,
            AUTHENTICATION_METHOD,
            self.authentication_method.as_ref(),
        )?;
        prop_binary(s, AUTHENTICATION_DATA, self.authentication_data.as_ref())
    }
}

impl Props for ConnAckProperties {
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        prop_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        prop_u16(s, RECEIVE_MAXIMUM, self.receive_maximum);
        // Only 0 and 1 may be sent; absence is how a server says 2.
        let maximum_qos = self.maximum_qos.filter(|qos| *qos != QoS::ExactlyOnce);
        prop_u8(s, MAXIMUM_QOS, maximum_qos.map(|qos| qos as u8));
        prop_bool(s, RETAIN_AVAILABLE, self.retain_available);
        prop_u32(s, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        prop_string(
            s,
            ASSIGNED_CLIENT_IDENTIFIER,
            self.assigned_client_identifier.as_ref(),
        )?;
        prop_u16(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        prop_string(s, REASON_STRING, self.reason_string.as_ref())?;
        user_props(s, &self.user_properties)?;
        prop_bool(
            s,
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        prop_bool(
            s,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available,
        );
        prop_bool(
            s,
            SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        prop_u16(s, SERVER_KEEP_ALIVE, self.server_keep_alive);
        prop_string(s, RESPONSE_INFORMATION, self.response_information.as_ref())?;
        prop_string(s, SERVER_REFERENCE, self.server_reference.as_ref())?;
        prop_string(
            s,
            AUTHENTICATION_METHOD,
            self.authentication_method.as_ref(),
        )?;
        prop_binary(s, AUTHENTICATION_DATA, self.authentication_data.as_ref())
    }
}

/// The publish properties a will may carry too (everything but topic alias and subscription
/// identifiers, which only make sense on a live PUBLISH).
fn message_props<S: Sink>(s: &mut S, p: &PublishProperties) -> Result<(), EncodeError> {
    prop_u8(s, PAYLOAD_FORMAT_INDICATOR, p.payload_format_indicator);
    prop_u32(s, MESSAGE_EXPIRY_INTERVAL, p.message_expiry_interval);
    prop_string(s, CONTENT_TYPE, p.content_type.as_ref())?;
    prop_string(s, RESPONSE_TOPIC, p.response_topic.as_ref())?;
    prop_binary(s, CORRELATION_DATA, p.correlation_data.as_ref())?;
    user_props(s, &p.user_properties)
}

impl Props for PublishProperties {
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        message_props(s, self)?;
        prop_u16(s, TOPIC_ALIAS, self.topic_alias);
        for id in &self.subscription_identifiers {
            prop_subscription_identifier(s, *id)?;
        }
        Ok(())
    }
}

/// Will properties: the delay plus the message properties of the will.
struct WillProps<'a>(&'a Will);

impl Props for WillProps<'_> {
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        prop_u32(s, WILL_DELAY_INTERVAL, self.0.delay_interval);
        message_props(s, &self.0.properties)
    }
}

impl Props for AckProperties {
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        prop_string(s, REASON_STRING, self.reason_string.as_ref())?;
        user_props(s, &self.user_properties)
    }
}

/// SUBSCRIBE properties, which live as fields of [`Subscribe`].
struct SubscribeProps<'a>(&'a Subscribe);

impl Props for SubscribeProps<'_> {
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        if let Some(id) = self.0.subscription_identifier {
            prop_subscription_identifier(s, id)?;
        }
        user_props(s, &self.0.user_properties)
    }
}

/// A property list of user properties only (UNSUBSCRIBE).
struct UserProps<'a>(&'a [UserProperty]);

impl Props for UserProps<'_> {
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        user_props(s, self.0)
    }
}

impl Props for DisconnectProperties {
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        prop_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        prop_string(s, REASON_STRING, self.reason_string.as_ref())?;
        user_props(s, &self.user_properties)?;
        prop_string(s, SERVER_REFERENCE, self.server_reference.as_ref())
    }
}

/// AUTH properties, which live as fields of [`Auth`].
struct AuthProps<'a>(&'a Auth);

impl Props for AuthProps<'_> {
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        prop_string(
            s,
            AUTHENTICATION_METHOD,
            self.0.authentication_method.as_ref(),
        )?;
        prop_binary(s, AUTHENTICATION_DATA, self.0.authentication_data.as_ref())?;
        prop_string(s, REASON_STRING, self.0.reason_string.as_ref())?;
        user_props(s, &self.0.user_properties)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{
        ConnAck, Disconnect, PubResponse, RetainHandling, SubAck, Subscription,
        SubscriptionOptions, UnsubAck, Unsubscribe,
    };

    const V4: Protocol = Protocol::V311;
    const V5: Protocol = Protocol::V5;

    fn bytes_of(packet: &Packet, protocol: Protocol) -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode(packet, protocol, &mut buf).expect("encodable packet");
        buf.to_vec()
    }

    #[test]
    fn connect_v311_matches_the_specification_layout() {
        let connect = Connect {
            protocol: V4,
            clean_start: true,
            keep_alive: 60,
            client_id: "cid".to_owned(),
            will: Some(Will {
                topic: "w/t".to_owned(),
                payload: Bytes::from_static(b"hi"),
                qos: QoS::AtLeastOnce,
                retain: true,
                delay_interval: Some(9), // v5 only: dropped
                properties: PublishProperties::default(),
            }),
            username: Some("user".to_owned()),
            password: Some(Bytes::from_static(&[1, 2])),
            properties: ConnectProperties {
                session_expiry_interval: Some(5), // v5 only: dropped
                ..ConnectProperties::default()
            },
        };
        let expected = [
            0x10, 0x22, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xEE, 0x00, 0x3C, 0x00, 0x03,
            b'c', b'i', b'd', 0x00, 0x03, b'w', b'/', b't', 0x00, 0x02, b'h', b'i', 0x00, 0x04,
            b'u', b's', b'e', b'r', 0x00, 0x02, 0x01, 0x02,
        ];
        // CONNECT follows its own protocol field whatever the argument says.
        assert_eq!(
            bytes_of(&Packet::Connect(Box::new(connect.clone())), V5),
            expected
        );
        assert_eq!(bytes_of(&Packet::Connect(Box::new(connect)), V4), expected);
    }

    #[test]
    fn connect_v5_carries_properties_and_will_properties() {
        let connect = Connect {
            protocol: V5,
            clean_start: true,
            client_id: "c".to_owned(),
            will: Some(Will {
                topic: "t".to_owned(),
                delay_interval: Some(5),
                properties: PublishProperties {
                    payload_format_indicator: Some(1),
                    topic_alias: Some(3), // not a will property: dropped
                    subscription_identifiers: vec![4], // not a will property: dropped
                    ..PublishProperties::default()
                },
                ..Will::default()
            }),
            properties: ConnectProperties {
                receive_maximum: Some(20),
                ..ConnectProperties::default()
            },
            ..Connect::default()
        };
        let expected = [
            0x10, 0x1E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x06, 0x00, 0x00, // header
            0x03, 0x21, 0x00, 0x14, // receive maximum 20
            0x00, 0x01, b'c', // client id
            0x07, 0x18, 0x00, 0x00, 0x00, 0x05, 0x01, 0x01, // will delay, payload format
            0x00, 0x01, b't', 0x00, 0x00, // will topic and payload
        ];
        assert_eq!(bytes_of(&Packet::Connect(Box::new(connect)), V5), expected);
    }

    #[test]
    fn connack_v311_uses_return_codes() {
        let connack = |reason| {
            Packet::ConnAck(ConnAck {
                reason,
                ..ConnAck::default()
            })
        };
        assert_eq!(
            bytes_of(&connack(ReasonCode::Success), V4),
            [0x20, 0x02, 0x00, 0x00]
        );
        assert_eq!(
            bytes_of(&connack(ReasonCode::Banned), V4),
            [0x20, 0x02, 0x00, 0x05]
        );
        assert_eq!(
            bytes_of(&connack(ReasonCode::ServerBusy), V4),
            [0x20, 0x02, 0x00, 0x03]
        );
        let present = Packet::ConnAck(ConnAck {
            session_present: true,
            properties: ConnAckProperties {
                reason_string: Some("dropped".to_owned()),
                ..ConnAckProperties::default()
            },
            ..ConnAck::default()
        });
        assert_eq!(bytes_of(&present, V4), [0x20, 0x02, 0x01, 0x00]);
    }

    #[test]
    fn connack_v5_with_properties() {
        let connack = Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::Success,
            properties: ConnAckProperties {
                maximum_qos: Some(QoS::AtLeastOnce),
                retain_available: Some(false),
                assigned_client_identifier: Some("id".to_owned()),
                ..ConnAckProperties::default()
            },
        });
        assert_eq!(
            bytes_of(&connack, V5),
            [0x20, 0x0C, 0x00, 0x00, 0x09, 0x24, 0x01, 0x25, 0x00, 0x12, 0x00, 0x02, b'i', b'd']
        );
        assert_eq!(
            bytes_of(&Packet::ConnAck(ConnAck::default()), V5),
            [0x20, 0x03, 0x00, 0x00, 0x00]
        );
    }

    #[test]
    fn connack_v5_leaves_out_maximum_qos_2() {
        let connack = Packet::ConnAck(ConnAck {
            properties: ConnAckProperties {
                maximum_qos: Some(QoS::ExactlyOnce),
                ..ConnAckProperties::default()
            },
            ..ConnAck::default()
        });
        assert_eq!(bytes_of(&connack, V5), [0x20, 0x03, 0x00, 0x00, 0x00]);
    }

    #[test]
    fn publish_both_versions() {
        let publish = Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "a/b".to_owned(),
            packet_id: Some(10),
            properties: PublishProperties {
                topic_alias: Some(5),
                ..PublishProperties::default()
            },
            payload: Bytes::from_static(b"hey"),
        };
        assert_eq!(
            bytes_of(&Packet::Publish(publish.clone()), V4),
            [0x3B, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'e', b'y']
        );
        assert_eq!(
            bytes_of(&Packet::Publish(publish), V5),
            [
                0x3B, 0x0E, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, 0x03, 0x23, 0x00, 0x05, b'h',
                b'e', b'y'
            ]
        );
    }

    #[test]
    fn publish_qos0_leaves_out_the_packet_id() {
        let publish = Publish {
            topic: "t".to_owned(),
            packet_id: Some(3),
            ..Publish::default()
        };
        assert_eq!(
            bytes_of(&Packet::Publish(publish), V4),
            [0x30, 0x03, 0x00, 0x01, b't']
        );
    }

    #[test]
    fn publish_qos1_without_packet_id_is_refused() {
        let publish = Publish {
            qos: QoS::AtLeastOnce,
            topic: "t".to_owned(),
            ..Publish::default()
        };
        let mut buf = BytesMut::from(&b"keep"[..]);
        let err = encode(&Packet::Publish(publish), V4, &mut buf).expect_err("no packet id");
        assert!(
            matches!(
                err,
                EncodeError::Invalid {
                    packet: "PUBLISH",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(&buf[..], b"keep", "nothing is appended on error");
    }

    #[test]
    fn pub_responses_use_v5_short_forms() {
        let response = |reason, reason_string: Option<&str>| PubResponse {
            packet_id: 1,
            reason,
            properties: AckProperties {
                reason_string: reason_string.map(str::to_owned),
                user_properties: Vec::new(),
            },
        };
        let success = response(ReasonCode::Success, None);
        assert_eq!(
            bytes_of(&Packet::PubAck(success.clone()), V5),
            [0x40, 0x02, 0x00, 0x01]
        );
        assert_eq!(
            bytes_of(&Packet::PubRel(success.clone()), V5),
            [0x62, 0x02, 0x00, 0x01]
        );
        let reason_only = response(ReasonCode::NoMatchingSubscribers, None);
        assert_eq!(
            bytes_of(&Packet::PubRec(reason_only.clone()), V5),
            [0x50, 0x03, 0x00, 0x01, 0x10]
        );
        let full = response(ReasonCode::UnspecifiedError, Some("no"));
        assert_eq!(
            bytes_of(&Packet::PubAck(full.clone()), V5),
            [0x40, 0x09, 0x00, 0x01, 0x80, 0x05, 0x1F, 0x00, 0x02, b'n', b'o']
        );
        let props_only = response(ReasonCode::Success, Some("ok"));
        assert_eq!(
            bytes_of(&Packet::PubComp(props_only), V5),
            [0x70, 0x09, 0x00, 0x01, 0x00, 0x05, 0x1F, 0x00, 0x02, b'o', b'k']
        );
        // 3.1.1 has only the packet identifier.
        assert_eq!(
            bytes_of(&Packet::PubComp(full), V4),
            [0x70, 0x02, 0x00, 0x01]
        );
    }

    #[test]
    fn subscribe_both_versions() {
        let subscribe = Subscribe {
            packet_id: 10,
            subscriptions: vec![Subscription {
                filter: "a".to_owned(),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            }],
            subscription_identifier: Some(5),
            user_properties: Vec::new(),
        };
        assert_eq!(
            bytes_of(&Packet::Subscribe(subscribe.clone()), V5),
            [0x82, 0x09, 0x00, 0x0A, 0x02, 0x0B, 0x05, 0x00, 0x01, b'a', 0x2E]
        );
        assert_eq!(
            bytes_of(&Packet::Subscribe(subscribe), V4),
            [0x82, 0x06, 0x00, 0x0A, 0x00, 0x01, b'a', 0x02]
        );
    }

    #[test]
    fn subscription_identifier_uses_a_variable_byte_integer() {
        let subscribe = Subscribe {
            packet_id: 1,
            subscriptions: vec![Subscription {
                filter: "a".to_owned(),
                options: SubscriptionOptions::default(),
            }],
            subscription_identifier: Some(268_435_455),
            user_properties: Vec::new(),
        };
        assert_eq!(
            bytes_of(&Packet::Subscribe(subscribe.clone()), V5),
            [0x82, 0x0C, 0x00, 0x01, 0x05, 0x0B, 0xFF, 0xFF, 0xFF, 0x7F, 0x00, 0x01, b'a', 0x00]
        );
        let too_big = Subscribe {
            subscription_identifier: Some(268_435_456),
            ..subscribe
        };
        let err = encode(&Packet::Subscribe(too_big), V5, &mut BytesMut::new())
            .expect_err("identifier out of range");
        assert!(err.to_string().contains("268435456"), "{err}");
    }

    #[test]
    fn suback_v311_folds_failures_into_0x80() {
        let suback = SubAck {
            packet_id: 10,
            reasons: vec![
                ReasonCode::Success,
                ReasonCode::GrantedQoS2,
                ReasonCode::NotAuthorized,
                ReasonCode::QuotaExceeded,
            ],
            properties: AckProperties::default(),
        };
        assert_eq!(
            bytes_of(&Packet::SubAck(suback.clone()), V4),
            [0x90, 0x06, 0x00, 0x0A, 0x00, 0x02, 0x80, 0x80]
        );
        assert_eq!(
            bytes_of(&Packet::SubAck(suback), V5),
            [0x90, 0x07, 0x00, 0x0A, 0x00, 0x00, 0x02, 0x87, 0x97]
        );
    }

    #[test]
    fn unsubscribe_and_unsuback_both_versions() {
        let unsubscribe = Packet::Unsubscribe(Unsubscribe {
            packet_id: 10,
            filters: vec!["a".to_owned()],
            user_properties: Vec::new(),
        });
        assert_eq!(
            bytes_of(&unsubscribe, V4),
            [0xA2, 0x05, 0x00, 0x0A, 0x00, 0x01, b'a']
        );
        assert_eq!(
            bytes_of(&unsubscribe, V5),
            [0xA2, 0x06, 0x00, 0x0A, 0x00, 0x00, 0x01, b'a']
        );
        let unsuback = Packet::UnsubAck(UnsubAck {
            packet_id: 10,
            reasons: vec![ReasonCode::NoSubscriptionExisted],
            properties: AckProperties::default(),
        });
        // 3.1.1 UNSUBACK has no payload.
        assert_eq!(bytes_of(&unsuback, V4), [0xB0, 0x02, 0x00, 0x0A]);
        assert_eq!(
            bytes_of(&unsuback, V5),
            [0xB0, 0x04, 0x00, 0x0A, 0x00, 0x11]
        );
    }

    #[test]
    fn pings() {
        assert_eq!(bytes_of(&Packet::PingReq, V4), [0xC0, 0x00]);
        assert_eq!(bytes_of(&Packet::PingResp, V5), [0xD0, 0x00]);
    }

    #[test]
    fn disconnect_forms() {
        let normal = Packet::Disconnect(Disconnect::default());
        assert_eq!(bytes_of(&normal, V4), [0xE0, 0x00]);
        assert_eq!(bytes_of(&normal, V5), [0xE0, 0x00]);
        let with_will = Packet::Disconnect(Disconnect {
            reason: ReasonCode::DisconnectWithWill,
            ..Disconnect::default()
        });
        assert_eq!(bytes_of(&with_will, V5), [0xE0, 0x02, 0x04, 0x00]);
        assert_eq!(bytes_of(&with_will, V4), [0xE0, 0x00]);
        let taken_over = Packet::Disconnect(Disconnect {
            reason: ReasonCode::SessionTakenOver,
            properties: DisconnectProperties {
                reason_string: Some("x".to_owned()),
                ..DisconnectProperties::default()
            },
        });
        assert_eq!(
            bytes_of(&taken_over, V5),
            [0xE0, 0x06, 0x8E, 0x04, 0x1F, 0x00, 0x01, b'x']
        );
    }

    #[test]
    fn auth_v5_and_refused_in_v311() {
        assert_eq!(bytes_of(&Packet::Auth(Auth::default()), V5), [0xF0, 0x00]);
        let auth = Packet::Auth(Auth {
            reason: ReasonCode::ContinueAuthentication,
            authentication_method: Some("m".to_owned()),
            authentication_data: Some(Bytes::from_static(&[0xFF])),
            ..Auth::default()
        });
        assert_eq!(
            bytes_of(&auth, V5),
            [0xF0, 0x0A, 0x18, 0x08, 0x15, 0x00, 0x01, b'm', 0x16, 0x00, 0x01, 0xFF]
        );
        assert_eq!(
            encode(&auth, V4, &mut BytesMut::new()),
            Err(EncodeError::NotInProtocol("AUTH"))
        );
    }

    #[test]
    fn long_strings_are_refused() {
        let publish = Publish {
            topic: "x".repeat(65_536),
            ..Publish::default()
        };
        assert_eq!(
            encode(&Packet::Publish(publish.clone()), V4, &mut BytesMut::new()),
            Err(EncodeError::StringTooLong(65_536))
        );
        assert_eq!(
            encode_publish_split(&publish, V4),
            Err(EncodeError::StringTooLong(65_536))
        );
        let ok = Publish {
            topic: "x".repeat(65_535),
            ..Publish::default()
        };
        assert!(encode(&Packet::Publish(ok), V4, &mut BytesMut::new()).is_ok());
    }

    #[test]
    fn remaining_length_uses_the_fewest_bytes() {
        for (payload_len, expected) in [
            (0, vec![0x03]),
            (124, vec![0x7F]),
            (125, vec![0x80, 0x01]),
            (16_380, vec![0xFF, 0x7F]),
            (16_381, vec![0x80, 0x80, 0x01]),
        ] {
            let publish = Publish {
                topic: "t".to_owned(),
                payload: Bytes::from(vec![0u8; payload_len]),
                ..Publish::default()
            };
            let bytes = bytes_of(&Packet::Publish(publish), V4);
            assert_eq!(
                &bytes[1..1 + expected.len()],
                &expected[..],
                "payload {payload_len}"
            );
            assert_eq!(bytes.len(), 1 + expected.len() + 3 + payload_len);
        }
    }

    #[test]
    fn encode_appends_to_existing_content() {
        let mut buf = BytesMut::from(&[0xAA][..]);
        encode(&Packet::PingReq, V4, &mut buf).expect("ping");
        encode(&Packet::PingResp, V4, &mut buf).expect("ping");
        assert_eq!(&buf[..], &[0xAA, 0xC0, 0x00, 0xD0, 0x00]);
    }

    #[test]
    fn split_publish_shares_one_buffer_and_leaves_room_for_the_packet_id() {
        let publish = Publish {
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "a/b".to_owned(),
            packet_id: Some(99), // ignored
            properties: PublishProperties {
                message_expiry_interval: Some(7),
                ..PublishProperties::default()
            },
            payload: Bytes::from_static(b"hello"),
            ..Publish::default()
        };
        let parts = encode_publish_split(&publish, V5).expect("valid publish");
        // Remaining length counts the 2-byte identifier that goes between the parts.
        assert_eq!(&parts.head[..], &[0x33, 0x12, 0x00, 0x03, b'a', b'/', b'b']);
        assert_eq!(
            &parts.tail[..],
            &[0x05, 0x02, 0, 0, 0, 7, b'h', b'e', b'l', b'l', b'o']
        );
        assert_eq!(parts.len(true), 7 + 2 + 11);
        // One allocation: the tail starts where the head ends.
        assert_eq!(
            parts.head.as_ptr() as usize + parts.head.len(),
            parts.tail.as_ptr() as usize
        );

        let qos0 = Publish {
            qos: QoS::AtMostOnce,
            ..publish
        };
        let parts = encode_publish_split(&qos0, V4).expect("valid publish");
        assert_eq!(&parts.head[..], &[0x31, 0x0A, 0x00, 0x03, b'a', b'/', b'b']);
        assert_eq!(&parts.tail[..], b"hello");
        assert_eq!(parts.len(false), 12);
    }
}
