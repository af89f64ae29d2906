//! CONNECT and CONNACK: the protocol name and level, the connect flags and what they require,
//! the will, the login, and the broker's answer (MQTT 3.1.1 return codes become reason codes).
//!
//! Depends on `packet`, `reason` and `topic` of this crate and the decoder's `reader`,
//! `properties` and `reasons`.

use super::properties::{read_properties, CONNACK_PROPS, CONNECT_PROPS, WILL_PROPS};
use super::reader::Reader;
use super::reasons::{reason_in, CONNACK_REASONS};
use super::DecodeError;
use crate::packet::{
    ConnAck, ConnAckProperties, Connect, ConnectProperties, Protocol, PublishProperties, QoS, Will,
};
use crate::reason::ReasonCode;
use crate::topic::validate_topic_name;

pub(super) fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
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

pub(super) fn decode_connack(r: &mut Reader, v5: bool) -> Result<ConnAck, DecodeError> {
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::decode::testing::*;
    use crate::packet::*;

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
}
