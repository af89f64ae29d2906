//! Bytes to packets.

use bytes::{Buf, Bytes, BytesMut};

use crate::packet::{
    AckProperties, Auth, ConnAck, ConnAckProperties, Connect, ConnectProperties, Disconnect,
    DisconnectProperties, Packet, Protocol, PubResponse, Publish, PublishProperties, QoS,
    RetainHandling, SubAck, Subscribe, Subscription, SubscriptionOptions, UnsubAck, Unsubscribe,
    UserProperty, Will,
};
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
            self.malformed(format!("{what} must be valid UTF-8, got invalid bytes ({e})"))
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
        subscribe.subscriptions.push(Subscription { filter, options });
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

// Property identifiers (MQTT 5 section 2.2.2.2).
const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
const SERVER_KEEP_ALIVE: u8 = 0x13;
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
const WILL_DELAY_INTERVAL: u8 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
const RESPONSE_INFORMATION: u8 = 0x1A;
const SERVER_REFERENCE: u8 = 0x1C;
const REASON_STRING: u8 = 0x1F;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const TOPIC_ALIAS: u8 = 0x23;
const MAXIMUM_QOS: u8 = 0x24;
const RETAIN_AVAILABLE: u8 = 0x25;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

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

/// The specification's name of a property, `None` for identifiers it does not define.
fn property_name(id: u32) -> Option<&'static str> {
    let id = u8::try_from(id).ok()?;
    Some(match id {
        PAYLOAD_FORMAT_INDICATOR => "Payload Format Indicator",
        MESSAGE_EXPIRY_INTERVAL => "Message Expiry Interval",
        CONTENT_TYPE => "Content Type",
        RESPONSE_TOPIC => "Response Topic",
        CORRELATION_DATA => "Correlation Data",
        SUBSCRIPTION_IDENTIFIER => "Subscription Identifier",
        SESSION_EXPIRY_INTERVAL => "Session Expiry Interval",
        ASSIGNED_CLIENT_IDENTIFIER => "Assigned Client Identifier",
        SERVER_KEEP_ALIVE => "Server Keep Alive",
        AUTHENTICATION_METHOD => "Authentication Method",
        AUTHENTICATION_DATA => "Authentication Data",
        REQUEST_PROBLEM_INFORMATION => "Request Problem Information",
        WILL_DELAY_INTERVAL => "Will Delay Interval",
        REQUEST_RESPONSE_INFORMATION => "Request Response Information",
        RESPONSE_INFORMATION => "Response Information",
        SERVER_REFERENCE => "Server Reference",
        REASON_STRING => "Reason String",
        RECEIVE_MAXIMUM => "Receive Maximum",
        TOPIC_ALIAS_MAXIMUM => "Topic Alias Maximum",
        TOPIC_ALIAS => "Topic Alias",
        MAXIMUM_QOS => "Maximum QoS",
        RETAIN_AVAILABLE => "Retain Available",
        USER_PROPERTY => "User Property",
        MAXIMUM_PACKET_SIZE => "Maximum Packet Size",
        WILDCARD_SUBSCRIPTION_AVAILABLE => "Wildcard Subscription Available",
        SUBSCRIPTION_IDENTIFIER_AVAILABLE => "Subscription Identifier Available",
        SHARED_SUBSCRIPTION_AVAILABLE => "Shared Subscription Available",
        _ => return None,
    })
}

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
fn read_properties(r: &mut Reader, allowed: Allowed, what: &str) -> Result<Properties, DecodeError> {
    let len = r.varint(&format!("{what} length"))? as usize;
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
                    return Err(p.protocol_error(format!("{what}: {name} must be 0 or 1, got {value}")));
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
                    return Err(p.protocol_error(format!("{what}: {name} must be 1 to {MAX_VARINT}, got 0")));
                }
                if !allowed.repeat_subscription_identifier && !props.subscription_identifiers.is_empty() {
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
                    return Err(p.protocol_error(format!("{what}: {name} must be 1 to 65535, got 0")));
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
                    return Err(p.protocol_error(format!("{what}: {name} must be 1 to 65535, got 0")));
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
                    return Err(p.protocol_error(format!("{what}: {name} must be at least 1, got 0")));
                }
                set_once(&p, &mut props.maximum_packet_size, value, id, what)?;
            }
            WILDCARD_SUBSCRIPTION_AVAILABLE => {
                let value = read_bool(&mut p, id, what)?;
                set_once(&p, &mut props.wildcard_subscription_available, value, id, what)?;
            }
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                let value = read_bool(&mut p, id, what)?;
                set_once(&p, &mut props.subscription_identifiers_available, value, id, what)?;
            }
            SHARED_SUBSCRIPTION_AVAILABLE => {
                let value = read_bool(&mut p, id, what)?;
                set_once(&p, &mut props.shared_subscription_available, value, id, what)?;
            }
            _ => {
                return Err(p.malformed(format!("{what}: unknown property identifier {id:#04x}")));
            }
        }
    }
    Ok(props)
}
