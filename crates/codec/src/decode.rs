//! Bytes to packets.

use bytes::{Buf, Bytes, BytesMut};

use crate::packet::{
    AckProperties, Auth, ConnAck, ConnAckProperties, Connect, ConnectProperties, Disconnect,
    DisconnectProperties, Packet, Protocol, PubResponse, Publish, PublishProperties, QoS,
    RetainHandling, SubAck, Subscribe, Subscription, SubscriptionOptions, UnsubAck, Unsubscribe,
    UserProperty, Will,
};
use crate::property::*;
use crate::reason::ReasonCode;
use crate::topic::{validate_topic_filter, validate_topic_name};

/// Why bytes could not be decoded into a packet. "Not enough bytes yet" is not an error: the
/// decoder returns `Ok(None)` for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Any violation of the packet format, with a message saying what was expected and what came.
    #[error("malformed {packet}: {reason}")]
    Malformed {
        /// Packet type name (or "packet" when the type itself is unknown).
        packet: &'static str,
        /// What was expected and what came.
        reason: String,
    },
    /// Valid encoding used in a way the protocol forbids (e.g. a property repeated).
    #[error("protocol error in {packet}: {reason}")]
    Protocol {
        /// Packet type name.
        packet: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The remaining length exceeds the maximum packet size.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Total packet size announced by the fixed header.
        size: usize,
        /// The limit in force.
        max: usize,
    },
    /// CONNECT asked for a protocol name or level we do not speak.
    #[error("unsupported protocol: {0}")]
    UnsupportedProtocol(String),
}

/// Decodes one packet from the front of `buf`, removing its bytes.
///
/// `protocol` is the version negotiated by CONNECT (ignored for CONNECT itself, which carries its
/// own). `max_packet_size` bounds the whole packet (fixed header included); an oversized packet is
/// refused from its fixed header alone, before its body arrives.
///
/// Returns `Ok(None)` and leaves `buf` untouched while the packet is incomplete. The first byte
/// (packet type and flags) and the remaining length are checked as soon as they arrive, so a
/// peer sending garbage is refused without waiting for a body that may never come.
///
/// # Errors
/// [`DecodeError`] for anything the specification calls malformed or a protocol error.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Protocol,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let kind = PacketKind::from_first_byte(first, protocol)?;
    let (remaining, length_len) = match read_varint(&buf[1..]) {
        Varint::Value(value, len) => (value as usize, len),
        Varint::Incomplete => return Ok(None),
        Varint::Invalid(why) => {
            return Err(malformed(kind.name(), format!("remaining length {why}")));
        }
    };
    let size = 1 + length_len + remaining;
    if size > max_packet_size {
        return Err(DecodeError::TooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        return Ok(None);
    }
    let mut frame = buf.split_to(size).freeze();
    frame.advance(1 + length_len);
    let mut reader = Reader {
        buf: frame,
        packet: kind.name(),
    };
    let packet = kind.decode_body(first & 0x0F, &mut reader, protocol)?;
    reader.expect_end()?;
    Ok(Some(packet))
}

/// The control packet type from the high nibble of the first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PacketKind {
    Connect,
    ConnAck,
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    PingReq,
    PingResp,
    Disconnect,
    Auth,
}

impl PacketKind {
    /// Reads the type and checks the flags that the type fixes (everything but PUBLISH).
    fn from_first_byte(first: u8, protocol: Protocol) -> Result<PacketKind, DecodeError> {
        let kind = match first >> 4 {
            1 => PacketKind::Connect,
            2 => PacketKind::ConnAck,
            3 => PacketKind::Publish,
            4 => PacketKind::PubAck,
            5 => PacketKind::PubRec,
            6 => PacketKind::PubRel,
            7 => PacketKind::PubComp,
            8 => PacketKind::Subscribe,
            9 => PacketKind::SubAck,
            10 => PacketKind::Unsubscribe,
            11 => PacketKind::UnsubAck,
            12 => PacketKind::PingReq,
            13 => PacketKind::PingResp,
            14 => PacketKind::Disconnect,
            15 if protocol == Protocol::V5 => PacketKind::Auth,
            15 => {
                return Err(malformed(
                    "packet",
                    "packet type 15 (AUTH) does not exist in MQTT 3.1.1",
                ))
            }
            _ => return Err(malformed("packet", "packet type 0 is reserved")),
        };
        let flags = first & 0x0F;
        match kind {
            PacketKind::Publish => {
                let qos = (flags >> 1) & 0b11;
                if qos == 3 {
                    return Err(malformed("PUBLISH", "QoS must be 0, 1 or 2, got 3"));
                }
                if qos == 0 && flags & 0b1000 != 0 {
                    return Err(malformed("PUBLISH", "DUP flag must be 0 for QoS 0, got 1"));
                }
            }
            PacketKind::PubRel | PacketKind::Subscribe | PacketKind::Unsubscribe => {
                if flags != 0b0010 {
                    return Err(malformed(
                        kind.name(),
                        format!("fixed header flags must be 0b0010, got {flags:#06b}"),
                    ));
                }
            }
            _ => {
                if flags != 0 {
                    return Err(malformed(
                        kind.name(),
                        format!("fixed header flags must be 0b0000, got {flags:#06b}"),
                    ));
                }
            }
        }
        Ok(kind)
    }

    fn name(self) -> &'static str {
        match self {
            PacketKind::Connect => "CONNECT",
            PacketKind::ConnAck => "CONNACK",
            PacketKind::Publish => "PUBLISH",
            PacketKind::PubAck => "PUBACK",
            PacketKind::PubRec => "PUBREC",
            PacketKind::PubRel => "PUBREL",
            PacketKind::PubComp => "PUBCOMP",
            PacketKind::Subscribe => "SUBSCRIBE",
            PacketKind::SubAck => "SUBACK",
            PacketKind::Unsubscribe => "UNSUBSCRIBE",
            PacketKind::UnsubAck => "UNSUBACK",
            PacketKind::PingReq => "PINGREQ",
            PacketKind::PingResp => "PINGRESP",
            PacketKind::Disconnect => "DISCONNECT",
            PacketKind::Auth => "AUTH",
        }
    }

    fn decode_body(
        self,
        flags: u8,
        r: &mut Reader,
        protocol: Protocol,
    ) -> Result<Packet, DecodeError> {
        let v5 = protocol == Protocol::V5;
        Ok(match self {
            PacketKind::Connect => Packet::Connect(Box::new(decode_connect(r)?)),
            PacketKind::ConnAck => Packet::ConnAck(decode_connack(r, v5)?),
            PacketKind::Publish => Packet::Publish(decode_publish(flags, r, v5)?),
            PacketKind::PubAck => Packet::PubAck(decode_pub_response(r, v5, PUBACK_REASONS)?),
            PacketKind::PubRec => Packet::PubRec(decode_pub_response(r, v5, PUBACK_REASONS)?),
            PacketKind::PubRel => Packet::PubRel(decode_pub_response(r, v5, PUBREL_REASONS)?),
            PacketKind::PubComp => Packet::PubComp(decode_pub_response(r, v5, PUBREL_REASONS)?),
            PacketKind::Subscribe => Packet::Subscribe(decode_subscribe(r, v5)?),
            PacketKind::SubAck => Packet::SubAck(decode_suback(r, v5)?),
            PacketKind::Unsubscribe => Packet::Unsubscribe(decode_unsubscribe(r, v5)?),
            PacketKind::UnsubAck => Packet::UnsubAck(decode_unsuback(r, v5)?),
            PacketKind::PingReq => Packet::PingReq,
            PacketKind::PingResp => Packet::PingResp,
            PacketKind::Disconnect => Packet::Disconnect(decode_disconnect(r, v5)?),
            PacketKind::Auth => Packet::Auth(decode_auth(r)?),
        })
    }
}

fn malformed(packet: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Malformed {
        packet,
        reason: reason.into(),
    }
}

fn protocol_error(packet: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Protocol {
        packet,
        reason: reason.into(),
    }
}

/// The largest value a variable byte integer can carry (four bytes of seven bits).
const MAX_VARINT: u32 = 268_435_455;

/// Outcome of reading a variable byte integer from a byte slice.
enum Varint {
    /// The value and how many bytes encoded it.
    Value(u32, usize),
    /// The slice ends before the last byte of the integer.
    Incomplete,
    /// What is wrong with the encoding.
    Invalid(&'static str),
}

/// Reads a variable byte integer (MQTT 5 section 1.5.5). A fifth byte is refused as soon as the
/// fourth one says another follows, and so is a non-minimal encoding, which the specification
/// forbids ([MQTT-1.5.5-1]) and which would let two byte strings mean the same packet.
fn read_varint(bytes: &[u8]) -> Varint {
    let mut value: u32 = 0;
    for (i, &byte) in bytes.iter().enumerate().take(4) {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Varint::Invalid("must use the fewest bytes, got a trailing zero byte");
            }
            return Varint::Value(value, i + 1);
        }
        if i == 3 {
            return Varint::Invalid("must be at most 4 bytes, got a 5th");
        }
    }
    Varint::Incomplete
}

/// Cursor over the body of one complete frame. Running out of bytes here is malformed, never
/// "incomplete": the fixed header promised exactly this many.
struct Reader {
    buf: Bytes,
    packet: &'static str,
}

impl Reader {
    fn malformed(&self, reason: impl Into<String>) -> DecodeError {
        malformed(self.packet, reason)
    }

    fn protocol_error(&self, reason: impl Into<String>) -> DecodeError {
        protocol_error(self.packet, reason)
    }

    fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn need(&self, n: usize, what: &str) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            return Err(self.malformed(format!(
                "expected {what} ({n} bytes), got {} bytes left",
                self.buf.len()
            )));
        }
        Ok(())
    }

    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        self.need(2, what)?;
        Ok(self.buf.get_u16())
    }

    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }

    fn packet_id(&mut self) -> Result<u16, DecodeError> {
        let id = self.u16("packet identifier")?;
        if id == 0 {
            return Err(self.malformed("packet identifier must be non-zero, got 0"));
        }
        Ok(id)
    }

    fn varint(&mut self, what: &str) -> Result<u32, DecodeError> {
        match read_varint(&self.buf) {
            Varint::Value(value, len) => {
                self.buf.advance(len);
                Ok(value)
            }
            Varint::Incomplete => Err(self.malformed(format!(
                "expected {what} (variable byte integer), got end of packet"
            ))),
            Varint::Invalid(why) => Err(self.malformed(format!("{what} {why}"))),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<Bytes, DecodeError> {
        self.need(n, what)?;
        Ok(self.buf.split_to(n))
    }

    fn binary(&mut self, what: &str) -> Result<Bytes, DecodeError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    fn string(&mut self, what: &str) -> Result<String, DecodeError> {
        let bytes = self.binary(what)?;
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            self.malformed(format!(
                "{what} must be valid UTF-8, got invalid bytes ({e})"
            ))
        })?;
        if text.contains('\0') {
            return Err(self.malformed(format!("{what} must not contain U+0000, got {text:?}")));
        }
        Ok(text.to_owned())
    }

    fn rest(&mut self) -> Bytes {
        self.buf.split_off(0)
    }

    fn expect_end(&self) -> Result<(), DecodeError> {
        if !self.buf.is_empty() {
            return Err(self.malformed(format!(
                "expected end of packet, got {} more bytes",
                self.buf.len()
            )));
        }
        Ok(())
    }
}

fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary("protocol name")?;
    let level = r.u8("protocol level")?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => Protocol::V311,
        (b"MQTT", 5) => Protocol::V5,
        (b"MQTT", other) => {
            return Err(DecodeError::UnsupportedProtocol(format!(
                "CONNECT: protocol level must be 4 (3.1.1) or 5 (5.0), got {other}"
            )))
        }
        (b"MQIsdp", other) => {
            return Err(DecodeError::UnsupportedProtocol(format!(
                "CONNECT: MQTT 3.1 (\"MQIsdp\", level {other}) is not supported, expected \"MQTT\" level 4 or 5"
            )))
        }
        (other, _) => {
            return Err(r.malformed(format!(
                "protocol name must be MQTT, got {:?}",
                String::from_utf8_lossy(other)
            )))
        }
    };
    let v5 = protocol == Protocol::V5;
    let flags = r.u8("connect flags")?;
    if flags & 0x01 != 0 {
        return Err(r.malformed("reserved connect flag (bit 0) must be 0, got 1"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos_bits = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    let will_qos = QoS::from_u8(will_qos_bits)
        .ok_or_else(|| r.malformed("will QoS must be 0, 1 or 2, got 3"))?;
    if !will_flag && (will_qos_bits != 0 || will_retain) {
        return Err(r.malformed(format!(
            "will QoS and will retain must be 0 without the will flag, got QoS {will_qos_bits} and retain {}",
            u8::from(will_retain)
        )));
    }
    if !v5 && password_flag && !username_flag {
        return Err(r.malformed("in MQTT 3.1.1 a password needs a user name, got a password alone"));
    }
    let keep_alive = r.u16("keep alive")?;
    let properties = if v5 {
        let p = read_properties(r, CONNECT_PROPS, "properties")?;
        if p.authentication_data.is_some() && p.authentication_method.is_none() {
            return Err(r.protocol_error(
                "Authentication Data needs an Authentication Method, got data alone",
            ));
        }
        ConnectProperties {
            session_expiry_interval: p.session_expiry_interval,
            receive_maximum: p.receive_maximum,
            maximum_packet_size: p.maximum_packet_size,
            topic_alias_maximum: p.topic_alias_maximum,
            request_response_information: p.request_response_information,
            request_problem_information: p.request_problem_information,
            user_properties: p.user_properties,
            authentication_method: p.authentication_method,
            authentication_data: p.authentication_data,
        }
    } else {
        ConnectProperties::default()
    };
    let client_id = r.string("client identifier")?;
    let will = if will_flag {
        let (delay_interval, properties) = if v5 {
            let p = read_properties(r, WILL_PROPS, "will properties")?;
            (p.will_delay_interval, p.into_publish())
        } else {
            (None, PublishProperties::default())
        };
        let topic = r.string("will topic")?;
        validate_topic_name(&topic).map_err(|e| r.malformed(format!("will topic: {e}")))?;
        let payload = r.binary("will payload")?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            delay_interval,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary("password")?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn decode_connack(r: &mut Reader, v5: bool) -> Result<ConnAck, DecodeError> {
    let flags = r.u8("acknowledge flags")?;
    if flags & 0xFE != 0 {
        return Err(r.malformed(format!(
            "acknowledge flags bits 7-1 are reserved and must be 0, got {flags:#010b}"
        )));
    }
    let session_present = flags & 0x01 != 0;
    let code = r.u8("reason code")?;
    let reason = if v5 {
        reason_in(r, code, CONNACK_REASONS)?
    } else {
        ReasonCode::from_v311_connack(code)
            .ok_or_else(|| r.malformed(format!("return code must be 0 to 5, got {code}")))?
    };
    if session_present && reason.is_error() {
        return Err(r.protocol_error(format!(
            "session present must be 0 with a refusal, got 1 with {reason:?}"
        )));
    }
    let properties = if v5 {
        let p = read_properties(r, CONNACK_PROPS, "properties")?;
        ConnAckProperties {
            session_expiry_interval: p.session_expiry_interval,
            receive_maximum: p.receive_maximum,
            maximum_qos: p.maximum_qos,
            retain_available: p.retain_available,
            maximum_packet_size: p.maximum_packet_size,
            assigned_client_identifier: p.assigned_client_identifier,
            topic_alias_maximum: p.topic_alias_maximum,
            reason_string: p.reason_string,
            user_properties: p.user_properties,
            wildcard_subscription_available: p.wildcard_subscription_available,
            subscription_identifiers_available: p.subscription_identifiers_available,
            shared_subscription_available: p.shared_subscription_available,
            server_keep_alive: p.server_keep_alive,
            response_information: p.response_information,
            server_reference: p.server_reference,
            authentication_method: p.authentication_method,
            authentication_data: p.authentication_data,
        }
    } else {
        ConnAckProperties::default()
    };
    Ok(ConnAck {
        session_present,
        reason,
        properties,
    })
}

fn decode_publish(flags: u8, r: &mut Reader, v5: bool) -> Result<Publish, DecodeError> {
    let dup = flags & 0b1000 != 0;
    let retain = flags & 0b0001 != 0;
    // from_first_byte already refused QoS 3.
    let qos = QoS::from_u8((flags >> 1) & 0b11).unwrap_or_default();
    let topic = r.string("topic name")?;
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(r.packet_id()?)
    };
    let properties = if v5 {
        read_properties(r, PUBLISH_PROPS, "properties")?.into_publish()
    } else {
        PublishProperties::default()
    };
    if topic.is_empty() {
        if !v5 {
            return Err(r.malformed("topic name must not be empty in MQTT 3.1.1, got \"\""));
        }
        if properties.topic_alias.is_none() {
            return Err(r.protocol_error("an empty topic name needs a Topic Alias, got none"));
        }
    } else {
        validate_topic_name(&topic).map_err(|e| r.malformed(e.to_string()))?;
    }
    let payload = r.rest();
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload,
    })
}

fn decode_pub_response(
    r: &mut Reader,
    v5: bool,
    allowed: &[ReasonCode],
) -> Result<PubResponse, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut response = PubResponse {
        packet_id,
        ..PubResponse::default()
    };
    // v5 short forms: 2 bytes = Success without properties, 3 bytes = reason without properties.
    if v5 && !r.is_empty() {
        let code = r.u8("reason code")?;
        response.reason = reason_in(r, code, allowed)?;
        if !r.is_empty() {
            response.properties = read_properties(r, ACK_PROPS, "properties")?.into_ack();
        }
    }
    Ok(response)
}

fn decode_subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut subscribe = Subscribe {
        packet_id,
        ..Subscribe::default()
    };
    if v5 {
        let p = read_properties(r, SUBSCRIBE_PROPS, "properties")?;
        subscribe.subscription_identifier = p.subscription_identifiers.first().copied();
        subscribe.user_properties = p.user_properties;
    }
    while !r.is_empty() {
        let filter = r.string("topic filter")?;
        validate_topic_filter(&filter).map_err(|e| r.malformed(e.to_string()))?;
        let bits = r.u8("subscription options")?;
        let qos = QoS::from_u8(bits & 0b11)
            .ok_or_else(|| r.malformed(format!("{filter:?}: QoS must be 0, 1 or 2, got 3")))?;
        let options = if v5 {
            if bits & 0xC0 != 0 {
                return Err(r.malformed(format!(
                    "{filter:?}: subscription options bits 7-6 are reserved and must be 0, got {bits:#010b}"
                )));
            }
            let retain_handling = match (bits >> 4) & 0b11 {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendIfNew,
                2 => RetainHandling::DoNotSend,
                _ => {
                    return Err(r.protocol_error(format!(
                        "{filter:?}: retain handling must be 0, 1 or 2, got 3"
                    )))
                }
            };
            let no_local = bits & 0b0100 != 0;
            if no_local && filter.starts_with("$share/") {
                return Err(r.protocol_error(format!(
                    "{filter:?}: no local must be 0 on a shared subscription, got 1"
                )));
            }
            SubscriptionOptions {
                qos,
                no_local,
                retain_as_published: bits & 0b1000 != 0,
                retain_handling,
            }
        } else {
            if bits & 0xFC != 0 {
                return Err(r.malformed(format!(
                    "{filter:?}: requested QoS bits 7-2 are reserved and must be 0, got {bits:#010b}"
                )));
            }
            SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            }
        };
        subscribe
            .subscriptions
            .push(Subscription { filter, options });
    }
    if subscribe.subscriptions.is_empty() {
        return Err(r.protocol_error("expected at least one topic filter, got none"));
    }
    Ok(subscribe)
}

fn decode_suback(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = if v5 {
        read_properties(r, ACK_PROPS, "properties")?.into_ack()
    } else {
        AckProperties::default()
    };
    let mut reasons = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        let code = r.u8("reason code")?;
        let reason = if v5 {
            reason_in(r, code, SUBACK_REASONS)?
        } else {
            match code {
                0x00 => ReasonCode::Success,
                0x01 => ReasonCode::GrantedQoS1,
                0x02 => ReasonCode::GrantedQoS2,
                0x80 => ReasonCode::UnspecifiedError,
                other => {
                    return Err(r.malformed(format!(
                        "return code must be 0x00, 0x01, 0x02 or 0x80, got {other:#04x}"
                    )))
                }
            }
        };
        reasons.push(reason);
    }
    if reasons.is_empty() {
        return Err(r.protocol_error("expected at least one return code, got none"));
    }
    Ok(SubAck {
        packet_id,
        reasons,
        properties,
    })
}

fn decode_unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let user_properties = if v5 {
        read_properties(r, UNSUBSCRIBE_PROPS, "properties")?.user_properties
    } else {
        Vec::new()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string("topic filter")?;
        validate_topic_filter(&filter).map_err(|e| r.malformed(e.to_string()))?;
        filters.push(filter);
    }
    if filters.is_empty() {
        return Err(r.protocol_error("expected at least one topic filter, got none"));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        user_properties,
    })
}

fn decode_unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut unsuback = UnsubAck {
        packet_id,
        ..UnsubAck::default()
    };
    if v5 {
        unsuback.properties = read_properties(r, ACK_PROPS, "properties")?.into_ack();
        while !r.is_empty() {
            let code = r.u8("reason code")?;
            unsuback.reasons.push(reason_in(r, code, UNSUBACK_REASONS)?);
        }
        if unsuback.reasons.is_empty() {
            return Err(r.protocol_error("expected at least one reason code, got none"));
        }
    }
    Ok(unsuback)
}

fn decode_disconnect(r: &mut Reader, v5: bool) -> Result<Disconnect, DecodeError> {
    let mut disconnect = Disconnect::default();
    // v5: no body = normal disconnection; one byte = reason without properties.
    if v5 && !r.is_empty() {
        let code = r.u8("reason code")?;
        disconnect.reason = reason_in(r, code, DISCONNECT_REASONS)?;
        if !r.is_empty() {
            let p = read_properties(r, DISCONNECT_PROPS, "properties")?;
            disconnect.properties = DisconnectProperties {
                session_expiry_interval: p.session_expiry_interval,
                reason_string: p.reason_string,
                user_properties: p.user_properties,
                server_reference: p.server_reference,
            };
        }
    }
    Ok(disconnect)
}

fn decode_auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    let mut auth = Auth::default();
    // Same short forms as DISCONNECT: no body = Success without properties.
    if !r.is_empty() {
        let code = r.u8("reason code")?;
        auth.reason = reason_in(r, code, AUTH_REASONS)?;
        if !r.is_empty() {
            let p = read_properties(r, AUTH_PROPS, "properties")?;
            auth.authentication_method = p.authentication_method;
            auth.authentication_data = p.authentication_data;
            auth.reason_string = p.reason_string;
            auth.user_properties = p.user_properties;
        }
    }
    Ok(auth)
}

/// The reason code for `code` if the packet may carry it.
fn reason_in(r: &Reader, code: u8, allowed: &[ReasonCode]) -> Result<ReasonCode, DecodeError> {
    match ReasonCode::from_u8(code) {
        Some(reason) if allowed.contains(&reason) => Ok(reason),
        Some(reason) => Err(r.malformed(format!(
            "reason code {code:#04x} ({reason:?}) is not allowed in {}",
            r.packet
        ))),
        None => Err(r.malformed(format!(
            "expected a reason code, got undefined value {code:#04x}"
        ))),
    }
}

use ReasonCode as R;

/// Reason codes each MQTT 5 packet may carry (the tables of sections 3.2.2.2 to 3.15.2.1).
const CONNACK_REASONS: &[ReasonCode] = &[
    R::Success,
    R::UnspecifiedError,
    R::MalformedPacket,
    R::ProtocolError,
    R::ImplementationSpecificError,
    R::UnsupportedProtocolVersion,
    R::ClientIdentifierNotValid,
    R::BadUserNameOrPassword,
    R::NotAuthorized,
    R::ServerUnavailable,
    R::ServerBusy,
    R::Banned,
    R::BadAuthenticationMethod,
    R::TopicNameInvalid,
    R::PacketTooLarge,
    R::QuotaExceeded,
    R::PayloadFormatInvalid,
    R::RetainNotSupported,
    R::QoSNotSupported,
    R::UseAnotherServer,
    R::ServerMoved,
    R::ConnectionRateExceeded,
];
const PUBACK_REASONS: &[ReasonCode] = &[
    R::Success,
    R::NoMatchingSubscribers,
    R::UnspecifiedError,
    R::ImplementationSpecificError,
    R::NotAuthorized,
    R::TopicNameInvalid,
    R::PacketIdentifierInUse,
    R::QuotaExceeded,
    R::PayloadFormatInvalid,
];
const PUBREL_REASONS: &[ReasonCode] = &[R::Success, R::PacketIdentifierNotFound];
const SUBACK_REASONS: &[ReasonCode] = &[
    R::Success,
    R::GrantedQoS1,
    R::GrantedQoS2,
    R::UnspecifiedError,
    R::ImplementationSpecificError,
    R::NotAuthorized,
    R::TopicFilterInvalid,
    R::PacketIdentifierInUse,
    R::QuotaExceeded,
    R::SharedSubscriptionsNotSupported,
    R::SubscriptionIdentifiersNotSupported,
    R::WildcardSubscriptionsNotSupported,
];
const UNSUBACK_REASONS: &[ReasonCode] = &[
    R::Success,
    R::NoSubscriptionExisted,
    R::UnspecifiedError,
    R::ImplementationSpecificError,
    R::NotAuthorized,
    R::TopicFilterInvalid,
    R::PacketIdentifierInUse,
];
const DISCONNECT_REASONS: &[ReasonCode] = &[
    R::Success,
    R::DisconnectWithWill,
    R::UnspecifiedError,
    R::MalformedPacket,
    R::ProtocolError,
    R::ImplementationSpecificError,
    R::NotAuthorized,
    R::ServerBusy,
    R::ServerShuttingDown,
    R::KeepAliveTimeout,
    R::SessionTakenOver,
    R::TopicFilterInvalid,
    R::TopicNameInvalid,
    R::ReceiveMaximumExceeded,
    R::TopicAliasInvalid,
    R::PacketTooLarge,
    R::MessageRateTooHigh,
    R::QuotaExceeded,
    R::AdministrativeAction,
    R::PayloadFormatInvalid,
    R::RetainNotSupported,
    R::QoSNotSupported,
    R::UseAnotherServer,
    R::ServerMoved,
    R::SharedSubscriptionsNotSupported,
    R::ConnectionRateExceeded,
    R::MaximumConnectTime,
    R::SubscriptionIdentifiersNotSupported,
    R::WildcardSubscriptionsNotSupported,
];
const AUTH_REASONS: &[ReasonCode] = &[R::Success, R::ContinueAuthentication, R::ReAuthenticate];

/// Which properties a packet may carry, as a set of identifiers.
#[derive(Clone, Copy)]
struct Allowed {
    ids: u64,
    /// PUBLISH may repeat the subscription identifier (one per matching subscription).
    repeat_subscription_identifier: bool,
}

const fn allowed(ids: &[u8]) -> Allowed {
    let mut mask = 0u64;
    let mut i = 0;
    while i < ids.len() {
        mask |= 1 << ids[i];
        i += 1;
    }
    Allowed {
        ids: mask,
        repeat_subscription_identifier: false,
    }
}

const CONNECT_PROPS: Allowed = allowed(&[
    SESSION_EXPIRY_INTERVAL,
    RECEIVE_MAXIMUM,
    MAXIMUM_PACKET_SIZE,
    TOPIC_ALIAS_MAXIMUM,
    REQUEST_RESPONSE_INFORMATION,
    REQUEST_PROBLEM_INFORMATION,
    USER_PROPERTY,
    AUTHENTICATION_METHOD,
    AUTHENTICATION_DATA,
]);
const WILL_PROPS: Allowed = allowed(&[
    WILL_DELAY_INTERVAL,
    PAYLOAD_FORMAT_INDICATOR,
    MESSAGE_EXPIRY_INTERVAL,
    CONTENT_TYPE,
    RESPONSE_TOPIC,
    CORRELATION_DATA,
    USER_PROPERTY,
]);
const CONNACK_PROPS: Allowed = allowed(&[
    SESSION_EXPIRY_INTERVAL,
    RECEIVE_MAXIMUM,
    MAXIMUM_QOS,
    RETAIN_AVAILABLE,
    MAXIMUM_PACKET_SIZE,
    ASSIGNED_CLIENT_IDENTIFIER,
    TOPIC_ALIAS_MAXIMUM,
    REASON_STRING,
    USER_PROPERTY,
    WILDCARD_SUBSCRIPTION_AVAILABLE,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE,
    SHARED_SUBSCRIPTION_AVAILABLE,
    SERVER_KEEP_ALIVE,
    RESPONSE_INFORMATION,
    SERVER_REFERENCE,
    AUTHENTICATION_METHOD,
    AUTHENTICATION_DATA,
]);
const PUBLISH_PROPS: Allowed = Allowed {
    repeat_subscription_identifier: true,
    ..allowed(&[
        PAYLOAD_FORMAT_INDICATOR,
        MESSAGE_EXPIRY_INTERVAL,
        TOPIC_ALIAS,
        RESPONSE_TOPIC,
        CORRELATION_DATA,
        USER_PROPERTY,
        SUBSCRIPTION_IDENTIFIER,
        CONTENT_TYPE,
    ])
};
const ACK_PROPS: Allowed = allowed(&[REASON_STRING, USER_PROPERTY]);
const SUBSCRIBE_PROPS: Allowed = allowed(&[SUBSCRIPTION_IDENTIFIER, USER_PROPERTY]);
const UNSUBSCRIBE_PROPS: Allowed = allowed(&[USER_PROPERTY]);
const DISCONNECT_PROPS: Allowed = allowed(&[
    SESSION_EXPIRY_INTERVAL,
    REASON_STRING,
    USER_PROPERTY,
    SERVER_REFERENCE,
]);
const AUTH_PROPS: Allowed = allowed(&[
    AUTHENTICATION_METHOD,
    AUTHENTICATION_DATA,
    REASON_STRING,
    USER_PROPERTY,
]);

/// Every property any packet may carry; each packet keeps the fields it allows.
#[derive(Default)]
struct Properties {
    payload_format_indicator: Option<u8>,
    message_expiry_interval: Option<u32>,
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data: Option<Bytes>,
    subscription_identifiers: Vec<u32>,
    session_expiry_interval: Option<u32>,
    assigned_client_identifier: Option<String>,
    server_keep_alive: Option<u16>,
    authentication_method: Option<String>,
    authentication_data: Option<Bytes>,
    request_problem_information: Option<bool>,
    will_delay_interval: Option<u32>,
    request_response_information: Option<bool>,
    response_information: Option<String>,
    server_reference: Option<String>,
    reason_string: Option<String>,
    receive_maximum: Option<u16>,
    topic_alias_maximum: Option<u16>,
    topic_alias: Option<u16>,
    maximum_qos: Option<QoS>,
    retain_available: Option<bool>,
    user_properties: Vec<UserProperty>,
    maximum_packet_size: Option<u32>,
    wildcard_subscription_available: Option<bool>,
    subscription_identifiers_available: Option<bool>,
    shared_subscription_available: Option<bool>,
}

impl Properties {
    fn into_publish(self) -> PublishProperties {
        PublishProperties {
            payload_format_indicator: self.payload_format_indicator,
            message_expiry_interval: self.message_expiry_interval,
            topic_alias: self.topic_alias,
            response_topic: self.response_topic,
            correlation_data: self.correlation_data,
            user_properties: self.user_properties,
            subscription_identifiers: self.subscription_identifiers,
            content_type: self.content_type,
        }
    }

    fn into_ack(self) -> AckProperties {
        AckProperties {
            reason_string: self.reason_string,
            user_properties: self.user_properties,
        }
    }
}

/// Stores a single-valued property, refusing a second occurrence.
fn set_once<T>(
    r: &Reader,
    slot: &mut Option<T>,
    value: T,
    id: u32,
    what: &str,
) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(r.protocol_error(format!(
            "{what}: {} must appear at most once, got it twice",
            property_name(id).unwrap_or("property")
        )));
    }
    *slot = Some(value);
    Ok(())
}

/// Reads a byte property that is a boolean (0 or 1).
fn read_bool(r: &mut Reader, id: u32, what: &str) -> Result<bool, DecodeError> {
    let name = property_name(id).unwrap_or("property");
    match r.u8(name)? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(r.protocol_error(format!("{what}: {name} must be 0 or 1, got {other}"))),
    }
}

/// Reads a property list (length prefix included), keeping only identifiers in `allowed`.
fn read_properties(
    r: &mut Reader,
    allowed: Allowed,
    what: &str,
) -> Result<Properties, DecodeError> {
    let len = r.varint("property length")? as usize;
    let mut p = Reader {
        buf: r.take(len, what)?,
        packet: r.packet,
    };
    let mut props = Properties::default();
    while !p.is_empty() {
        let id = p.varint("property identifier")?;
        let Some(name) = property_name(id) else {
            return Err(p.malformed(format!("{what}: unknown property identifier {id:#04x}")));
        };
        if id >= 64 || allowed.ids & (1u64 << id) == 0 {
            return Err(p.malformed(format!(
                "{what}: property {id:#04x} ({name}) is not allowed in {}",
                p.packet
            )));
        }
        // `property_name` succeeded, so the identifier fits a byte.
        let id_byte = u8::try_from(id).unwrap_or_default();
        match id_byte {
            PAYLOAD_FORMAT_INDICATOR => {
                let value = p.u8(name)?;
                if value > 1 {
                    return Err(
                        p.protocol_error(format!("{what}: {name} must be 0 or 1, got {value}"))
                    );
                }
                set_once(&p, &mut props.payload_format_indicator, value, id, what)?;
            }
            MESSAGE_EXPIRY_INTERVAL => {
                let value = p.u32(name)?;
                set_once(&p, &mut props.message_expiry_interval, value, id, what)?;
            }
            CONTENT_TYPE => {
                let value = p.string(name)?;
                set_once(&p, &mut props.content_type, value, id, what)?;
            }
            RESPONSE_TOPIC => {
                let value = p.string(name)?;
                validate_topic_name(&value)
                    .map_err(|e| p.protocol_error(format!("{what}: {name}: {e}")))?;
                set_once(&p, &mut props.response_topic, value, id, what)?;
            }
            CORRELATION_DATA => {
                let value = p.binary(name)?;
                set_once(&p, &mut props.correlation_data, value, id, what)?;
            }
            SUBSCRIPTION_IDENTIFIER => {
                let value = p.varint(name)?;
                if value == 0 {
                    return Err(p.protocol_error(format!(
                        "{what}: {name} must be 1 to {MAX_VARINT}, got 0"
                    )));
                }
                if !allowed.repeat_subscription_identifier
                    && !props.subscription_identifiers.is_empty()
                {
                    return Err(p.protocol_error(format!(
                        "{what}: {name} must appear at most once, got it twice"
                    )));
                }
                props.subscription_identifiers.push(value);
            }
            SESSION_EXPIRY_INTERVAL => {
                let value = p.u32(name)?;
                set_once(&p, &mut props.session_expiry_interval, value, id, what)?;
            }
            ASSIGNED_CLIENT_IDENTIFIER => {
                let value = p.string(name)?;
                set_once(&p, &mut props.assigned_client_identifier, value, id, what)?;
            }
            SERVER_KEEP_ALIVE => {
                let value = p.u16(name)?;
                set_once(&p, &mut props.server_keep_alive, value, id, what)?;
            }
            AUTHENTICATION_METHOD => {
                let value = p.string(name)?;
                set_once(&p, &mut props.authentication_method, value, id, what)?;
            }
            AUTHENTICATION_DATA => {
                let value = p.binary(name)?;
                set_once(&p, &mut props.authentication_data, value, id, what)?;
            }
            REQUEST_PROBLEM_INFORMATION => {
                let value = read_bool(&mut p, id, what)?;
                set_once(&p, &mut props.request_problem_information, value, id, what)?;
            }
            WILL_DELAY_INTERVAL => {
                let value = p.u32(name)?;
                set_once(&p, &mut props.will_delay_interval, value, id, what)?;
            }
            REQUEST_RESPONSE_INFORMATION => {
                let value = read_bool(&mut p, id, what)?;
                set_once(&p, &mut props.request_response_information, value, id, what)?;
            }
            RESPONSE_INFORMATION => {
                let value = p.string(name)?;
                set_once(&p, &mut props.response_information, value, id, what)?;
            }
            SERVER_REFERENCE => {
                let value = p.string(name)?;
                set_once(&p, &mut props.server_reference, value, id, what)?;
            }
            REASON_STRING => {
                let value = p.string(name)?;
                set_once(&p, &mut props.reason_string, value, id, what)?;
            }
            RECEIVE_MAXIMUM => {
                let value = p.u16(name)?;
                if value == 0 {
                    return Err(
                        p.protocol_error(format!("{what}: {name} must be 1 to 65535, got 0"))
                    );
                }
                set_once(&p, &mut props.receive_maximum, value, id, what)?;
            }
            TOPIC_ALIAS_MAXIMUM => {
                let value = p.u16(name)?;
                set_once(&p, &mut props.topic_alias_maximum, value, id, what)?;
            }
            TOPIC_ALIAS => {
                let value = p.u16(name)?;
                if value == 0 {
                    return Err(
                        p.protocol_error(format!("{what}: {name} must be 1 to 65535, got 0"))
                    );
                }
                set_once(&p, &mut props.topic_alias, value, id, what)?;
            }
            MAXIMUM_QOS => {
                let value = match p.u8(name)? {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    other => {
                        return Err(p.protocol_error(format!(
                            "{what}: {name} must be 0 or 1 (absent means 2), got {other}"
                        )))
                    }
                };
                set_once(&p, &mut props.maximum_qos, value, id, what)?;
            }
            RETAIN_AVAILABLE => {
                let value = read_bool(&mut p, id, what)?;
                set_once(&p, &mut props.retain_available, value, id, what)?;
            }
            USER_PROPERTY => {
                let key = p.string("user property name")?;
                let value = p.string("user property value")?;
                props.user_properties.push((key, value));
            }
            MAXIMUM_PACKET_SIZE => {
                let value = p.u32(name)?;
                if value == 0 {
                    return Err(
                        p.protocol_error(format!("{what}: {name} must be at least 1, got 0"))
                    );
                }
                set_once(&p, &mut props.maximum_packet_size, value, id, what)?;
            }
            WILDCARD_SUBSCRIPTION_AVAILABLE => {
                let value = read_bool(&mut p, id, what)?;
                set_once(
                    &p,
                    &mut props.wildcard_subscription_available,
                    value,
                    id,
                    what,
                )?;
            }
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                let value = read_bool(&mut p, id, what)?;
                set_once(
                    &p,
                    &mut props.subscription_identifiers_available,
                    value,
                    id,
                    what,
                )?;
            }
            SHARED_SUBSCRIPTION_AVAILABLE => {
                let value = read_bool(&mut p, id, what)?;
                set_once(
                    &p,
                    &mut props.shared_subscription_available,
                    value,
                    id,
                    what,
                )?;
            }
            _ => {
                return Err(p.malformed(format!("{what}: unknown property identifier {id:#04x}")));
            }
        }
    }
    Ok(props)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::Subscription;

    const V4: Protocol = Protocol::V311;
    const V5: Protocol = Protocol::V5;

    /// A frame with the remaining length computed, for error cases where only the body matters.
    fn frame(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        let mut len = body.len();
        loop {
            let mut byte = (len % 128) as u8;
            len /= 128;
            if len > 0 {
                byte |= 0x80;
            }
            out.push(byte);
            if len == 0 {
                break;
            }
        }
        out.extend_from_slice(body);
        out
    }

    fn try_decode(bytes: &[u8], protocol: Protocol) -> Result<Option<Packet>, DecodeError> {
        decode(&mut BytesMut::from(bytes), protocol, usize::MAX)
    }

    /// Decodes a whole valid packet, checking that every strict prefix is merely incomplete and
    /// that exactly the frame is consumed.
    fn decode_ok(bytes: &[u8], protocol: Protocol) -> Packet {
        for end in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..end]);
            assert_eq!(
                decode(&mut buf, protocol, usize::MAX),
                Ok(None),
                "prefix of {end} bytes of {bytes:02x?}"
            );
            assert_eq!(
                &buf[..],
                &bytes[..end],
                "an incomplete packet leaves the buffer alone"
            );
        }
        let mut buf = BytesMut::from(bytes);
        buf.extend_from_slice(&[0xC0, 0x00]);
        let packet = decode(&mut buf, protocol, usize::MAX)
            .unwrap_or_else(|e| panic!("{bytes:02x?} should decode: {e}"))
            .expect("complete packet");
        assert_eq!(&buf[..], &[0xC0, 0x00], "consumes exactly one frame");
        packet
    }

    fn malformed_reason(bytes: &[u8], protocol: Protocol) -> String {
        match try_decode(bytes, protocol) {
            Err(DecodeError::Malformed { reason, .. }) => reason,
            other => panic!("{bytes:02x?}: expected Malformed, got {other:?}"),
        }
    }

    fn assert_malformed(bytes: &[u8], protocol: Protocol, needle: &str) {
        let reason = malformed_reason(bytes, protocol);
        assert!(
            reason.contains(needle),
            "{reason:?} should mention {needle:?}"
        );
    }

    fn assert_protocol_error(bytes: &[u8], protocol: Protocol, needle: &str) {
        match try_decode(bytes, protocol) {
            Err(DecodeError::Protocol { reason, .. }) => {
                assert!(
                    reason.contains(needle),
                    "{reason:?} should mention {needle:?}"
                )
            }
            other => panic!("{bytes:02x?}: expected a protocol error, got {other:?}"),
        }
    }

    // ----- fixed header -----

    #[test]
    fn empty_buffer_is_incomplete() {
        assert_eq!(try_decode(&[], V5), Ok(None));
    }

    #[test]
    fn remaining_length_of_five_bytes_is_refused_before_the_body() {
        assert_eq!(try_decode(&[0x30, 0xFF, 0xFF, 0xFF], V4), Ok(None));
        assert_malformed(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF], V4, "at most 4 bytes");
    }

    #[test]
    fn non_minimal_remaining_length_is_malformed() {
        assert_malformed(&[0xC0, 0x80, 0x00], V4, "fewest bytes");
    }

    #[test]
    fn largest_remaining_length_is_read() {
        let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
        assert_eq!(
            decode(&mut buf, V4, 1000),
            Err(DecodeError::TooLarge {
                size: 5 + 268_435_455,
                max: 1000
            })
        );
    }

    #[test]
    fn oversized_packet_is_refused_from_the_fixed_header_alone() {
        // 16,383 bytes announced, none of them sent yet.
        let mut buf = BytesMut::from(&[0x30, 0xFF, 0x7F][..]);
        assert_eq!(
            decode(&mut buf, V4, 100),
            Err(DecodeError::TooLarge {
                size: 3 + 16_383,
                max: 100
            })
        );
    }

    #[test]
    fn maximum_size_counts_the_fixed_header() {
        let ping = [0xC0, 0x00];
        assert_eq!(
            decode(&mut BytesMut::from(&ping[..]), V4, 2),
            Ok(Some(Packet::PingReq))
        );
        assert_eq!(
            decode(&mut BytesMut::from(&ping[..]), V4, 1),
            Err(DecodeError::TooLarge { size: 2, max: 1 })
        );
    }

    #[test]
    fn reserved_packet_type_0_is_malformed() {
        assert_malformed(&[0x00, 0x00], V5, "type 0");
    }

    #[test]
    fn auth_is_malformed_in_v311() {
        assert_malformed(&[0xF0, 0x00], V4, "AUTH");
    }

    #[test]
    fn reserved_flag_bits_are_checked_per_packet_type() {
        for first in [
            0x11, 0x21, 0x41, 0x51, 0x60, 0x63, 0x71, 0x80, 0x8A, 0x91, 0xA0, 0xB4, 0xC1, 0xD2,
            0xE8, 0xF1,
        ] {
            let reason = malformed_reason(&[first, 0x00], V5);
            assert!(
                reason.contains("fixed header flags"),
                "{first:#04x}: {reason}"
            );
        }
    }

    #[test]
    fn publish_with_qos_3_is_malformed() {
        assert_malformed(
            &frame(0x36, &[0, 1, b't', 0, 1]),
            V4,
            "QoS must be 0, 1 or 2, got 3",
        );
    }

    #[test]
    fn publish_with_dup_and_qos_0_is_malformed() {
        assert_malformed(
            &frame(0x38, &[0, 1, b't']),
            V4,
            "DUP flag must be 0 for QoS 0",
        );
    }

    #[test]
    fn shortness_inside_a_complete_frame_is_malformed_not_incomplete() {
        // The topic claims 5 bytes but the frame holds 1.
        assert_malformed(&[0x30, 0x03, 0x00, 0x05, b'a'], V4, "topic name");
        // PUBACK with a 1-byte packet identifier.
        assert_malformed(&[0x40, 0x01, 0x00], V4, "packet identifier");
    }

    #[test]
    fn trailing_bytes_after_a_fixed_size_packet_are_malformed() {
        assert_malformed(
            &[0x40, 0x03, 0x00, 0x01, 0x00],
            V4,
            "expected end of packet",
        );
        assert_malformed(&[0xC0, 0x01, 0x00], V4, "expected end of packet");
        assert_malformed(&[0xD0, 0x01, 0x00], V5, "expected end of packet");
        assert_malformed(&[0xE0, 0x01, 0x00], V4, "expected end of packet");
        assert_malformed(
            &[0x20, 0x03, 0x00, 0x00, 0x00],
            V4,
            "expected end of packet",
        );
        assert_malformed(
            &[0xB0, 0x03, 0x00, 0x01, 0x00],
            V4,
            "expected end of packet",
        );
    }

    #[test]
    fn consecutive_packets_decode_one_at_a_time() {
        let mut buf = BytesMut::from(&[0xC0, 0x00, 0x40, 0x02, 0x00, 0x07, 0xD0][..]);
        assert_eq!(decode(&mut buf, V4, 1024), Ok(Some(Packet::PingReq)));
        assert_eq!(
            decode(&mut buf, V4, 1024),
            Ok(Some(Packet::PubAck(PubResponse {
                packet_id: 7,
                ..PubResponse::default()
            })))
        );
        assert_eq!(decode(&mut buf, V4, 1024), Ok(None));
        assert_eq!(&buf[..], &[0xD0]);
    }

    // ----- CONNECT -----

    #[test]
    fn connect_v311_with_will_and_login() {
        let bytes = [
            0x10, 0x22, // fixed header, remaining length 34
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, // protocol name and level
            0xEE, // user name, password, will retain, will QoS 1, will, clean session
            0x00, 0x3C, // keep alive 60
            0x00, 0x03, b'c', b'i', b'd', // client id
            0x00, 0x03, b'w', b'/', b't', // will topic
            0x00, 0x02, b'h', b'i', // will payload
            0x00, 0x04, b'u', b's', b'e', b'r', // user name
            0x00, 0x02, 0x01, 0x02, // password
        ];
        let Packet::Connect(connect) = decode_ok(&bytes, V4) else {
            panic!("expected CONNECT");
        };
        assert_eq!(
            *connect,
            Connect {
                protocol: V4,
                clean_start: true,
                keep_alive: 60,
                client_id: "cid".to_owned(),
                will: Some(Will {
                    topic: "w/t".to_owned(),
                    payload: Bytes::from_static(b"hi"),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    ..Will::default()
                }),
                username: Some("user".to_owned()),
                password: Some(Bytes::from_static(&[1, 2])),
                properties: ConnectProperties::default(),
            }
        );
    }

    #[test]
    fn connect_protocol_comes_from_the_packet_not_the_argument() {
        let bytes = [
            0x10, 0x15, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x0A, // header
            0x08, 0x11, 0x00, 0x00, 0x00, 0x0A, 0x21, 0x00,
            0x14, // session expiry 10, receive max 20
            0x00, 0x00, // empty client id
        ];
        let Packet::Connect(connect) = decode_ok(&bytes, V4) else {
            panic!("expected CONNECT");
        };
        assert_eq!(connect.protocol, V5);
        assert_eq!(connect.keep_alive, 10);
        assert_eq!(connect.client_id, "");
        assert_eq!(connect.properties.session_expiry_interval, Some(10));
        assert_eq!(connect.properties.receive_maximum, Some(20));
    }

    #[test]
    fn connect_v5_will_properties_split_delay_from_message_properties() {
        let bytes = [
            0x10, 0x1B, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x06, 0x00, 0x00,
            0x00, // no props
            0x00, 0x01, b'c', // client id
            0x07, 0x18, 0x00, 0x00, 0x00, 0x05, 0x01, 0x01, // will delay 5, payload format 1
            0x00, 0x01, b't', 0x00, 0x00, // will topic, empty payload
        ];
        let Packet::Connect(connect) = decode_ok(&bytes, V5) else {
            panic!("expected CONNECT");
        };
        let will = connect.will.expect("will flag set");
        assert_eq!(will.delay_interval, Some(5));
        assert_eq!(will.properties.payload_format_indicator, Some(1));
        assert_eq!(will.topic, "t");
        assert_eq!(will.qos, QoS::AtMostOnce);
    }

    fn connect_v4(flags: u8, rest: &[u8]) -> Vec<u8> {
        let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, flags, 0x00, 0x00];
        body.extend_from_slice(rest);
        frame(0x10, &body)
    }

    fn connect_v5(flags: u8, props: &[u8], rest: &[u8]) -> Vec<u8> {
        let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, flags, 0x00, 0x00];
        body.push(props.len() as u8);
        body.extend_from_slice(props);
        body.extend_from_slice(rest);
        frame(0x10, &body)
    }

    #[test]
    fn connect_with_another_protocol_name_is_malformed_with_a_clear_message() {
        let mut body = vec![0x00, 0x07];
        body.extend_from_slice(b"MQIsdp2");
        body.extend_from_slice(&[0x04, 0x02, 0x00, 0x00, 0x00, 0x00]);
        let err = try_decode(&frame(0x10, &body), V4).expect_err("bad protocol name");
        assert_eq!(
            err.to_string(),
            "malformed CONNECT: protocol name must be MQTT, got \"MQIsdp2\""
        );
    }

    #[test]
    fn connect_mqtt_3_1_is_unsupported() {
        let mut body = vec![0x00, 0x06];
        body.extend_from_slice(b"MQIsdp");
        body.extend_from_slice(&[0x03, 0x02, 0x00, 0x00, 0x00, 0x00]);
        assert!(matches!(
            try_decode(&frame(0x10, &body), V4),
            Err(DecodeError::UnsupportedProtocol(_))
        ));
    }

    #[test]
    fn connect_with_unknown_level_is_unsupported() {
        for level in [3, 6, 0xFF] {
            let body = [
                0x00, 0x04, b'M', b'Q', b'T', b'T', level, 0x02, 0x00, 0x00, 0x00, 0x00,
            ];
            match try_decode(&frame(0x10, &body), V4) {
                Err(DecodeError::UnsupportedProtocol(message)) => {
                    assert!(message.contains(&format!("got {level}")), "{message}")
                }
                other => panic!("level {level}: expected UnsupportedProtocol, got {other:?}"),
            }
        }
    }

    #[test]
    fn connect_reserved_flag_must_be_zero() {
        assert_malformed(&connect_v4(0x03, &[0, 0]), V4, "reserved connect flag");
    }

    #[test]
    fn connect_will_qos_or_retain_without_will_flag_is_malformed() {
        assert_malformed(&connect_v4(0x08, &[0, 0]), V4, "without the will flag");
        assert_malformed(&connect_v4(0x20, &[0, 0]), V4, "without the will flag");
    }

    #[test]
    fn connect_will_qos_3_is_malformed() {
        assert_malformed(&connect_v4(0x1C, &[0, 0, 0, 1, b't', 0, 0]), V4, "will QoS");
    }

    #[test]
    fn connect_password_without_user_name_is_malformed_only_in_v311() {
        assert_malformed(&connect_v4(0x40, &[0, 0, 0, 1, b'p']), V4, "password");
        let Packet::Connect(connect) = decode_ok(&connect_v5(0x40, &[], &[0, 0, 0, 1, b'p']), V5)
        else {
            panic!("expected CONNECT");
        };
        assert_eq!(connect.username, None);
        assert_eq!(connect.password, Some(Bytes::from_static(b"p")));
    }

    #[test]
    fn connect_will_topic_must_be_a_topic_name() {
        assert_malformed(
            &connect_v4(0x04, &[0, 0, 0, 1, b'#', 0, 0]),
            V4,
            "will topic",
        );
    }

    #[test]
    fn strings_must_be_utf8_without_nul() {
        assert_malformed(&connect_v4(0x00, &[0, 2, 0xFF, 0xFE]), V4, "valid UTF-8");
        assert_malformed(&connect_v4(0x00, &[0, 2, b'a', 0x00]), V4, "U+0000");
        // An encoded surrogate (U+D800) is not valid UTF-8.
        assert_malformed(
            &connect_v4(0x00, &[0, 3, 0xED, 0xA0, 0x80]),
            V4,
            "valid UTF-8",
        );
        assert_malformed(&frame(0x30, &[0, 3, b'a', 0, b'b']), V4, "U+0000");
    }

    #[test]
    fn connect_properties_must_belong_to_connect() {
        // Topic Alias (0x23) is a PUBLISH property.
        assert_malformed(
            &connect_v5(0x00, &[0x23, 0x00, 0x01], &[0, 0]),
            V5,
            "Topic Alias",
        );
        // 0x05 is no property at all.
        assert_malformed(
            &connect_v5(0x00, &[0x05, 0x00], &[0, 0]),
            V5,
            "unknown property",
        );
    }

    #[test]
    fn will_properties_refuse_topic_alias_and_subscription_identifier() {
        let will = |props: &[u8]| {
            let mut rest = vec![0, 0, props.len() as u8];
            rest.extend_from_slice(props);
            rest.extend_from_slice(&[0, 1, b't', 0, 0]);
            connect_v5(0x04, &[], &rest)
        };
        assert_malformed(&will(&[0x23, 0x00, 0x01]), V5, "Topic Alias");
        assert_malformed(&will(&[0x0B, 0x01]), V5, "Subscription Identifier");
        assert_protocol_error(&will(&[0x18, 0, 0, 0, 1, 0x18, 0, 0, 0, 2]), V5, "twice");
    }

    #[test]
    fn duplicate_single_valued_property_is_a_protocol_error() {
        let props = [0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2];
        assert_protocol_error(
            &connect_v5(0x00, &props, &[0, 0]),
            V5,
            "Session Expiry Interval",
        );
    }

    #[test]
    fn connect_authentication_data_needs_a_method() {
        let data = [0x16, 0x00, 0x01, 0xAA];
        assert_protocol_error(
            &connect_v5(0x00, &data, &[0, 0]),
            V5,
            "Authentication Method",
        );
        let both = [0x15, 0x00, 0x01, b'm', 0x16, 0x00, 0x01, 0xAA];
        let Packet::Connect(connect) = decode_ok(&connect_v5(0x00, &both, &[0, 0]), V5) else {
            panic!("expected CONNECT");
        };
        assert_eq!(
            connect.properties.authentication_method.as_deref(),
            Some("m")
        );
        assert_eq!(
            connect.properties.authentication_data.as_deref(),
            Some(&[0xAA][..])
        );
    }

    #[test]
    fn user_properties_may_repeat_and_keep_their_order() {
        let props = [0x26, 0, 1, b'k', 0, 1, b'1', 0x26, 0, 1, b'k', 0, 1, b'2'];
        let Packet::Connect(connect) = decode_ok(&connect_v5(0x00, &props, &[0, 0]), V5) else {
            panic!("expected CONNECT");
        };
        assert_eq!(
            connect.properties.user_properties,
            vec![
                ("k".to_owned(), "1".to_owned()),
                ("k".to_owned(), "2".to_owned())
            ]
        );
    }

    #[test]
    fn property_values_out_of_range_are_protocol_errors() {
        let cases: [(&[u8], &str); 5] = [
            (&[0x21, 0x00, 0x00], "Receive Maximum"),
            (&[0x27, 0, 0, 0, 0], "Maximum Packet Size"),
            (&[0x17, 0x02], "Request Problem Information"),
            (&[0x19, 0x02], "Request Response Information"),
            (&[0x21, 0x00], "Receive Maximum"),
        ];
        for (props, name) in &cases[..4] {
            assert_protocol_error(&connect_v5(0x00, props, &[0, 0]), V5, name);
        }
        // A value cut short by the end of the property list is malformed.
        let (props, name) = cases[4];
        assert_malformed(&connect_v5(0x00, props, &[0, 0]), V5, name);
    }

    #[test]
    fn property_length_beyond_the_packet_is_malformed() {
        let mut bytes = connect_v5(0x00, &[], &[0, 0]);
        bytes[12] = 0x20; // property length 32, packet has 2 bytes left
        assert_malformed(&bytes, V5, "properties");
    }

    // ----- CONNACK -----

    #[test]
    fn connack_v311_maps_return_codes_to_reason_codes() {
        let cases = [
            (0, ReasonCode::Success),
            (1, ReasonCode::UnsupportedProtocolVersion),
            (2, ReasonCode::ClientIdentifierNotValid),
            (3, ReasonCode::ServerUnavailable),
            (4, ReasonCode::BadUserNameOrPassword),
            (5, ReasonCode::NotAuthorized),
        ];
        for (code, reason) in cases {
            assert_eq!(
                decode_ok(&[0x20, 0x02, 0x00, code], V4),
                Packet::ConnAck(ConnAck {
                    reason,
                    ..ConnAck::default()
                })
            );
        }
        assert_eq!(
            decode_ok(&[0x20, 0x02, 0x01, 0x00], V4),
            Packet::ConnAck(ConnAck {
                session_present: true,
                ..ConnAck::default()
            })
        );
        assert_malformed(
            &[0x20, 0x02, 0x00, 0x06],
            V4,
            "return code must be 0 to 5, got 6",
        );
    }

    #[test]
    fn connack_reserved_flags_and_session_present_with_refusal() {
        assert_malformed(&[0x20, 0x02, 0x02, 0x00], V4, "reserved");
        assert_protocol_error(&[0x20, 0x02, 0x01, 0x05], V4, "session present");
    }

    #[test]
    fn connack_v5_with_properties() {
        let bytes = [
            0x20, 0x0C, 0x00, 0x00, 0x09, // flags, success, property length 9
            0x24, 0x01, // maximum QoS 1
            0x25, 0x00, // retain not available
            0x12, 0x00, 0x02, b'i', b'd', // assigned client id
        ];
        assert_eq!(
            decode_ok(&bytes, V5),
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason: ReasonCode::Success,
                properties: ConnAckProperties {
                    maximum_qos: Some(QoS::AtLeastOnce),
                    retain_available: Some(false),
                    assigned_client_identifier: Some("id".to_owned()),
                    ..ConnAckProperties::default()
                },
            })
        );
    }

    #[test]
    fn connack_v5_refuses_reason_codes_of_other_packets_and_bad_values() {
        assert_malformed(
            &[0x20, 0x03, 0x00, 0x04, 0x00],
            V5,
            "not allowed in CONNACK",
        );
        assert_malformed(&[0x20, 0x03, 0x00, 0x03, 0x00], V5, "undefined value 0x03");
        assert_protocol_error(
            &[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02],
            V5,
            "Maximum QoS",
        );
        assert_protocol_error(
            &[0x20, 0x05, 0x00, 0x00, 0x02, 0x25, 0x02],
            V5,
            "Retain Available",
        );
    }

    // ----- PUBLISH -----

    #[test]
    fn publish_v311_qos1() {
        let bytes = [
            0x32, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'e', b'y',
        ];
        assert_eq!(
            decode_ok(&bytes, V4),
            Packet::Publish(Publish {
                qos: QoS::AtLeastOnce,
                topic: "a/b".to_owned(),
                packet_id: Some(10),
                payload: Bytes::from_static(b"hey"),
                ..Publish::default()
            })
        );
    }

    #[test]
    fn publish_flags_dup_qos2_retain() {
        let bytes = [0x3D, 0x05, 0x00, 0x01, b't', 0x00, 0x01];
        let Packet::Publish(publish) = decode_ok(&bytes, V4) else {
            panic!("expected PUBLISH");
        };
        assert!(publish.dup && publish.retain);
        assert_eq!(publish.qos, QoS::ExactlyOnce);
        assert!(publish.payload.is_empty());
    }

    #[test]
    fn publish_v5_with_properties() {
        let bytes = [
            0x30, 0x0A, 0x00, 0x01, b't', // topic
            0x05, 0x01, 0x01, 0x23, 0x00, 0x05, // payload format 1, topic alias 5
            b'x',
        ];
        assert_eq!(
            decode_ok(&bytes, V5),
            Packet::Publish(Publish {
                topic: "t".to_owned(),
                properties: PublishProperties {
                    payload_format_indicator: Some(1),
                    topic_alias: Some(5),
                    ..PublishProperties::default()
                },
                payload: Bytes::from_static(b"x"),
                ..Publish::default()
            })
        );
    }

    #[test]
    fn publish_payload_is_a_slice_of_the_input_buffer() {
        let bytes = [0x30, 0x07, 0x00, 0x01, b't', b'd', b'a', b't', b'a'];
        let mut buf = BytesMut::from(&bytes[..]);
        let base = buf.as_ptr() as usize;
        let Ok(Some(Packet::Publish(publish))) = decode(&mut buf, V4, 1024) else {
            panic!("expected PUBLISH");
        };
        assert_eq!(
            publish.payload.as_ptr() as usize,
            base + 5,
            "payload was copied"
        );
    }

    #[test]
    fn publish_v5_may_repeat_subscription_identifiers() {
        let bytes = [0x30, 0x08, 0x00, 0x01, b't', 0x04, 0x0B, 0x01, 0x0B, 0x02];
        let Packet::Publish(publish) = decode_ok(&bytes, V5) else {
            panic!("expected PUBLISH");
        };
        assert_eq!(publish.properties.subscription_identifiers, vec![1, 2]);
    }

    #[test]
    fn publish_v5_property_values_are_checked() {
        let publish = |props: &[u8]| {
            let mut body = vec![0x00, 0x01, b't', props.len() as u8];
            body.extend_from_slice(props);
            frame(0x30, &body)
        };
        assert_protocol_error(
            &publish(&[0x0B, 0x00]),
            V5,
            "Subscription Identifier must be 1",
        );
        assert_protocol_error(&publish(&[0x23, 0x00, 0x00]), V5, "Topic Alias must be 1");
        assert_protocol_error(&publish(&[0x01, 0x02]), V5, "Payload Format Indicator");
        assert_protocol_error(&publish(&[0x08, 0x00, 0x01, b'#']), V5, "Response Topic");
        assert_protocol_error(&publish(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 1]), V5, "twice");
        assert_malformed(&publish(&[0x11, 0, 0, 0, 1]), V5, "not allowed in PUBLISH");
        assert_malformed(
            &publish(&[0x0B, 0x80, 0x80, 0x80, 0x80, 0x01]),
            V5,
            "at most 4 bytes",
        );
        assert_malformed(&publish(&[0x0B, 0x80, 0x00]), V5, "fewest bytes");
    }

    #[test]
    fn publish_topic_must_not_hold_wildcards() {
        assert_malformed(&frame(0x30, &[0, 3, b'a', b'/', b'+']), V4, "wildcards");
        assert_malformed(&frame(0x30, &[0, 1, b'#', 0]), V5, "wildcards");
    }

    #[test]
    fn publish_empty_topic_needs_v5_and_a_topic_alias() {
        assert_malformed(&frame(0x30, &[0, 0]), V4, "must not be empty");
        assert_protocol_error(&frame(0x30, &[0, 0, 0]), V5, "Topic Alias");
        let Packet::Publish(publish) =
            decode_ok(&[0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x07], V5)
        else {
            panic!("expected PUBLISH");
        };
        assert_eq!(publish.topic, "");
        assert_eq!(publish.properties.topic_alias, Some(7));
    }

    #[test]
    fn publish_packet_id_zero_is_malformed() {
        assert_malformed(
            &frame(0x32, &[0, 1, b't', 0, 0]),
            V4,
            "packet identifier must be non-zero",
        );
    }

    // ----- PUBACK, PUBREC, PUBREL, PUBCOMP -----

    #[test]
    fn pub_responses_v311() {
        let id = |packet_id| PubResponse {
            packet_id,
            ..PubResponse::default()
        };
        assert_eq!(
            decode_ok(&[0x40, 0x02, 0x00, 0x01], V4),
            Packet::PubAck(id(1))
        );
        assert_eq!(
            decode_ok(&[0x50, 0x02, 0x01, 0x00], V4),
            Packet::PubRec(id(256))
        );
        assert_eq!(
            decode_ok(&[0x62, 0x02, 0xFF, 0xFF], V4),
            Packet::PubRel(id(65535))
        );
        assert_eq!(
            decode_ok(&[0x70, 0x02, 0x00, 0x02], V4),
            Packet::PubComp(id(2))
        );
        assert_malformed(&[0x40, 0x02, 0x00, 0x00], V4, "non-zero");
    }

    #[test]
    fn pub_responses_v5_short_and_long_forms() {
        let short = decode_ok(&[0x40, 0x02, 0x00, 0x01], V5);
        assert_eq!(
            short,
            Packet::PubAck(PubResponse {
                packet_id: 1,
                ..PubResponse::default()
            })
        );
        let reason_only = decode_ok(&[0x50, 0x03, 0x00, 0x01, 0x10], V5);
        assert_eq!(
            reason_only,
            Packet::PubRec(PubResponse {
                packet_id: 1,
                reason: ReasonCode::NoMatchingSubscribers,
                ..PubResponse::default()
            })
        );
        assert_eq!(
            decode_ok(&[0x50, 0x04, 0x00, 0x01, 0x10, 0x00], V5),
            reason_only
        );
        let full = [
            0x40, 0x09, 0x00, 0x01, 0x80, 0x05, 0x1F, 0x00, 0x02, b'n', b'o',
        ];
        assert_eq!(
            decode_ok(&full, V5),
            Packet::PubAck(PubResponse {
                packet_id: 1,
                reason: ReasonCode::UnspecifiedError,
                properties: AckProperties {
                    reason_string: Some("no".to_owned()),
                    user_properties: Vec::new(),
                },
            })
        );
    }

    #[test]
    fn pub_responses_v5_refuse_foreign_reason_codes() {
        assert_malformed(&[0x40, 0x03, 0x00, 0x01, 0x92], V5, "not allowed in PUBACK");
        assert_malformed(&[0x62, 0x03, 0x00, 0x01, 0x10], V5, "not allowed in PUBREL");
        assert_malformed(
            &[0x70, 0x03, 0x00, 0x01, 0x80],
            V5,
            "not allowed in PUBCOMP",
        );
        assert_eq!(
            decode_ok(&[0x70, 0x03, 0x00, 0x01, 0x92], V5),
            Packet::PubComp(PubResponse {
                packet_id: 1,
                reason: ReasonCode::PacketIdentifierNotFound,
                ..PubResponse::default()
            })
        );
    }

    // ----- SUBSCRIBE, SUBACK -----

    #[test]
    fn subscribe_v311() {
        let bytes = [
            0x82, 0x0C, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x01, 0x00, 0x01, b'#', 0x02,
        ];
        let sub = |filter: &str, qos| Subscription {
            filter: filter.to_owned(),
            options: SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            },
        };
        assert_eq!(
            decode_ok(&bytes, V4),
            Packet::Subscribe(Subscribe {
                packet_id: 10,
                subscriptions: vec![sub("a/b", QoS::AtLeastOnce), sub("#", QoS::ExactlyOnce)],
                ..Subscribe::default()
            })
        );
    }

    #[test]
    fn subscribe_v5_with_options_and_identifier() {
        let bytes = [
            0x82, 0x09, 0x00, 0x0A, 0x02, 0x0B, 0x05, 0x00, 0x01, b'a', 0x2E,
        ];
        assert_eq!(
            decode_ok(&bytes, V5),
            Packet::Subscribe(Subscribe {
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
            })
        );
    }

    #[test]
    fn subscribe_rules() {
        assert_protocol_error(&frame(0x82, &[0, 1]), V4, "at least one topic filter");
        assert_protocol_error(&frame(0x82, &[0, 1, 0]), V5, "at least one topic filter");
        assert_malformed(&frame(0x82, &[0, 0, 0, 1, b'a', 0]), V4, "non-zero");
        assert_malformed(&frame(0x82, &[0, 1, 0, 1, b'a', 0x04]), V4, "reserved");
        assert_malformed(&frame(0x82, &[0, 1, 0, 1, b'a', 0x03]), V4, "QoS");
        assert_malformed(&frame(0x82, &[0, 1, 0, 0, 1, b'a', 0x80]), V5, "reserved");
        assert_protocol_error(
            &frame(0x82, &[0, 1, 0, 0, 1, b'a', 0x30]),
            V5,
            "retain handling",
        );
        assert_malformed(
            &frame(0x82, &[0, 1, 0, 0, 2, b'a', b'#', 0]),
            V5,
            "misplaced wildcard",
        );
        assert_malformed(&frame(0x82, &[0, 1, 0, 0, 0, 0]), V5, "empty");
        assert_malformed(
            &frame(0x82, &[0, 1, 0, 0, 1, b'a']),
            V5,
            "subscription options",
        );
        let shared = b"$share/g/a";
        let mut body = vec![0, 1, 0, 0, shared.len() as u8];
        body.extend_from_slice(shared);
        body.push(0x04);
        assert_protocol_error(&frame(0x82, &body), V5, "no local");
        let bad_share = b"$share/g";
        let mut body = vec![0, 1, 0, 0, bad_share.len() as u8];
        body.extend_from_slice(bad_share);
        body.push(0x00);
        assert_malformed(&frame(0x82, &body), V5, "shared subscription");
        // Subscription identifier: not 0, not twice.
        assert_protocol_error(
            &frame(0x82, &[0, 1, 2, 0x0B, 0, 0, 1, b'a', 0]),
            V5,
            "must be 1",
        );
        assert_protocol_error(
            &frame(0x82, &[0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1, b'a', 0]),
            V5,
            "twice",
        );
        assert_malformed(
            &frame(0x82, &[0, 1, 3, 0x1F, 0, 0, 0, 1, b'a', 0]),
            V5,
            "Reason String",
        );
    }

    #[test]
    fn suback_v311_maps_0x80_to_unspecified_error() {
        assert_eq!(
            decode_ok(&[0x90, 0x05, 0x00, 0x0A, 0x00, 0x02, 0x80], V4),
            Packet::SubAck(SubAck {
                packet_id: 10,
                reasons: vec![
                    ReasonCode::Success,
                    ReasonCode::GrantedQoS2,
                    ReasonCode::UnspecifiedError
                ],
                properties: AckProperties::default(),
            })
        );
        assert_malformed(&[0x90, 0x03, 0x00, 0x0A, 0x03], V4, "0x03");
        assert_malformed(&[0x90, 0x03, 0x00, 0x0A, 0x87], V4, "0x87");
        assert_protocol_error(&[0x90, 0x02, 0x00, 0x0A], V4, "at least one");
    }

    #[test]
    fn suback_v5() {
        assert_eq!(
            decode_ok(&[0x90, 0x05, 0x00, 0x0A, 0x00, 0x01, 0x8F], V5),
            Packet::SubAck(SubAck {
                packet_id: 10,
                reasons: vec![ReasonCode::GrantedQoS1, ReasonCode::TopicFilterInvalid],
                properties: AckProperties::default(),
            })
        );
        assert_malformed(
            &[0x90, 0x04, 0x00, 0x0A, 0x00, 0x11],
            V5,
            "not allowed in SUBACK",
        );
    }

    // ----- UNSUBSCRIBE, UNSUBACK -----

    #[test]
    fn unsubscribe_both_versions() {
        let expected = Packet::Unsubscribe(Unsubscribe {
            packet_id: 10,
            filters: vec!["a".to_owned()],
            user_properties: Vec::new(),
        });
        assert_eq!(
            decode_ok(&[0xA2, 0x05, 0x00, 0x0A, 0x00, 0x01, b'a'], V4),
            expected
        );
        assert_eq!(
            decode_ok(&[0xA2, 0x06, 0x00, 0x0A, 0x00, 0x00, 0x01, b'a'], V5),
            expected
        );
        assert_protocol_error(&[0xA2, 0x02, 0x00, 0x0A], V4, "at least one topic filter");
        assert_protocol_error(
            &[0xA2, 0x03, 0x00, 0x0A, 0x00],
            V5,
            "at least one topic filter",
        );
        assert_malformed(&frame(0xA2, &[0, 0x0A, 0, 1, b'+', 0]), V4, "topic filter");
        assert_malformed(
            &[0xA2, 0x06, 0x00, 0x0A, 0x00, 0x02, b'a', b'+'],
            V4,
            "misplaced",
        );
        assert_malformed(
            &[0xA2, 0x08, 0x00, 0x0A, 0x02, 0x0B, 0x01, 0x00, 0x01, b'a'],
            V5,
            "not allowed in UNSUBSCRIBE",
        );
    }

    #[test]
    fn unsuback_both_versions() {
        assert_eq!(
            decode_ok(&[0xB0, 0x02, 0x00, 0x0A], V4),
            Packet::UnsubAck(UnsubAck {
                packet_id: 10,
                ..UnsubAck::default()
            })
        );
        assert_eq!(
            decode_ok(&[0xB0, 0x05, 0x00, 0x0A, 0x00, 0x11, 0x00], V5),
            Packet::UnsubAck(UnsubAck {
                packet_id: 10,
                reasons: vec![ReasonCode::NoSubscriptionExisted, ReasonCode::Success],
                properties: AckProperties::default(),
            })
        );
        assert_malformed(
            &[0xB0, 0x04, 0x00, 0x0A, 0x00, 0x01],
            V5,
            "not allowed in UNSUBACK",
        );
        assert_protocol_error(&[0xB0, 0x03, 0x00, 0x0A, 0x00], V5, "at least one");
    }

    // ----- PINGREQ, PINGRESP, DISCONNECT, AUTH -----

    #[test]
    fn pings() {
        assert_eq!(decode_ok(&[0xC0, 0x00], V4), Packet::PingReq);
        assert_eq!(decode_ok(&[0xD0, 0x00], V5), Packet::PingResp);
    }

    #[test]
    fn disconnect_forms() {
        let normal = Packet::Disconnect(Disconnect::default());
        assert_eq!(decode_ok(&[0xE0, 0x00], V4), normal);
        assert_eq!(decode_ok(&[0xE0, 0x00], V5), normal);
        assert_eq!(
            decode_ok(&[0xE0, 0x01, 0x04], V5),
            Packet::Disconnect(Disconnect {
                reason: ReasonCode::DisconnectWithWill,
                ..Disconnect::default()
            })
        );
        assert_eq!(
            decode_ok(&[0xE0, 0x06, 0x8E, 0x04, 0x1F, 0x00, 0x01, b'x'], V5),
            Packet::Disconnect(Disconnect {
                reason: ReasonCode::SessionTakenOver,
                properties: DisconnectProperties {
                    reason_string: Some("x".to_owned()),
                    ..DisconnectProperties::default()
                },
            })
        );
        assert_malformed(&[0xE0, 0x01, 0x01], V5, "not allowed in DISCONNECT");
        assert_malformed(
            &[0xE0, 0x03, 0x00, 0x01, 0x01],
            V5,
            "not allowed in DISCONNECT",
        );
    }

    #[test]
    fn auth_forms() {
        assert_eq!(decode_ok(&[0xF0, 0x00], V5), Packet::Auth(Auth::default()));
        let bytes = [
            0xF0, 0x0A, 0x18, 0x08, 0x15, 0x00, 0x01, b'm', 0x16, 0x00, 0x01, 0xFF,
        ];
        assert_eq!(
            decode_ok(&bytes, V5),
            Packet::Auth(Auth {
                reason: ReasonCode::ContinueAuthentication,
                authentication_method: Some("m".to_owned()),
                authentication_data: Some(Bytes::from_static(&[0xFF])),
                ..Auth::default()
            })
        );
        assert_malformed(&[0xF0, 0x02, 0x80, 0x00], V5, "not allowed in AUTH");
        assert_malformed(
            &[0xF0, 0x04, 0x00, 0x02, 0x11, 0x00],
            V5,
            "Session Expiry Interval",
        );
    }
}
