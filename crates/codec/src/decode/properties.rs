//! MQTT 5 property lists: which properties each packet may carry, and reading a list into one
//! struct from which each packet keeps the fields it allows. A property repeated where the
//! specification allows it once, or a value out of its range, is a protocol error.
//!
//! Depends on `packet`, `property` and `topic` of this crate and the decoder's `reader`.

use bytes::Bytes;

use super::reader::{Reader, MAX_VARINT};
use super::DecodeError;
use crate::packet::{AckProperties, PublishProperties, QoS, UserProperty};
use crate::property::*;
use crate::topic::validate_topic_name;

/// Which properties a packet may carry, as a set of identifiers.
#[derive(Clone, Copy)]
pub(super) struct Allowed {
    /// Bit `n` set: the property with identifier `n` may appear.
    ids: u64,
    /// PUBLISH may repeat the subscription identifier (one per matching subscription).
    repeat_subscription_identifier: bool,
}

pub(super) const fn allowed(ids: &[u8]) -> Allowed {
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

pub(super) const CONNECT_PROPS: Allowed = allowed(&[
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
pub(super) const WILL_PROPS: Allowed = allowed(&[
    WILL_DELAY_INTERVAL,
    PAYLOAD_FORMAT_INDICATOR,
    MESSAGE_EXPIRY_INTERVAL,
    CONTENT_TYPE,
    RESPONSE_TOPIC,
    CORRELATION_DATA,
    USER_PROPERTY,
]);
pub(super) const CONNACK_PROPS: Allowed = allowed(&[
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
pub(super) const PUBLISH_PROPS: Allowed = Allowed {
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
pub(super) const ACK_PROPS: Allowed = allowed(&[REASON_STRING, USER_PROPERTY]);
pub(super) const SUBSCRIBE_PROPS: Allowed = allowed(&[SUBSCRIPTION_IDENTIFIER, USER_PROPERTY]);
pub(super) const UNSUBSCRIBE_PROPS: Allowed = allowed(&[USER_PROPERTY]);
pub(super) const DISCONNECT_PROPS: Allowed = allowed(&[
    SESSION_EXPIRY_INTERVAL,
    REASON_STRING,
    USER_PROPERTY,
    SERVER_REFERENCE,
]);
pub(super) const AUTH_PROPS: Allowed = allowed(&[
    AUTHENTICATION_METHOD,
    AUTHENTICATION_DATA,
    REASON_STRING,
    USER_PROPERTY,
]);

/// Every property any packet may carry; each packet keeps the fields it allows.
#[derive(Default)]
pub(super) struct Properties {
    /// Payload Format Indicator (0x01).
    pub(super) payload_format_indicator: Option<u8>,
    /// Message Expiry Interval (0x02), seconds.
    pub(super) message_expiry_interval: Option<u32>,
    /// Content Type (0x03).
    pub(super) content_type: Option<String>,
    /// Response Topic (0x08), a valid topic name.
    pub(super) response_topic: Option<String>,
    /// Correlation Data (0x09).
    pub(super) correlation_data: Option<Bytes>,
    /// Subscription Identifier (0x0B): several only in PUBLISH, one per matching subscription.
    pub(super) subscription_identifiers: Vec<u32>,
    /// Session Expiry Interval (0x11), seconds.
    pub(super) session_expiry_interval: Option<u32>,
    /// Assigned Client Identifier (0x12).
    pub(super) assigned_client_identifier: Option<String>,
    /// Server Keep Alive (0x13), seconds.
    pub(super) server_keep_alive: Option<u16>,
    /// Authentication Method (0x15).
    pub(super) authentication_method: Option<String>,
    /// Authentication Data (0x16).
    pub(super) authentication_data: Option<Bytes>,
    /// Request Problem Information (0x17).
    pub(super) request_problem_information: Option<bool>,
    /// Will Delay Interval (0x18), seconds.
    pub(super) will_delay_interval: Option<u32>,
    /// Request Response Information (0x19).
    pub(super) request_response_information: Option<bool>,
    /// Response Information (0x1A).
    pub(super) response_information: Option<String>,
    /// Server Reference (0x1C).
    pub(super) server_reference: Option<String>,
    /// Reason String (0x1F).
    pub(super) reason_string: Option<String>,
    /// Receive Maximum (0x21), never 0.
    pub(super) receive_maximum: Option<u16>,
    /// Topic Alias Maximum (0x22).
    pub(super) topic_alias_maximum: Option<u16>,
    /// Topic Alias (0x23), never 0.
    pub(super) topic_alias: Option<u16>,
    /// Maximum QoS (0x24): 0 or 1, absent means 2.
    pub(super) maximum_qos: Option<QoS>,
    /// Retain Available (0x25).
    pub(super) retain_available: Option<bool>,
    /// User Property (0x26), every pair in the order received.
    pub(super) user_properties: Vec<UserProperty>,
    /// Maximum Packet Size (0x27), never 0.
    pub(super) maximum_packet_size: Option<u32>,
    /// Wildcard Subscription Available (0x28).
    pub(super) wildcard_subscription_available: Option<bool>,
    /// Subscription Identifier Available (0x29).
    pub(super) subscription_identifiers_available: Option<bool>,
    /// Shared Subscription Available (0x2A).
    pub(super) shared_subscription_available: Option<bool>,
}

impl Properties {
    pub(super) fn into_publish(self) -> PublishProperties {
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

    pub(super) fn into_ack(self) -> AckProperties {
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
pub(super) fn read_properties(
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
    use crate::decode::testing::*;
    use crate::packet::*;

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
}
