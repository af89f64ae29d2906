//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK: topic filters with their options, and the
//! broker's answer per filter.
//!
//! Depends on `packet`, `reason` and `topic` of this crate and the decoder's `reader`,
//! `properties` and `reasons`.

use super::properties::{read_properties, ACK_PROPS, SUBSCRIBE_PROPS, UNSUBSCRIBE_PROPS};
use super::reader::Reader;
use super::reasons::{reason_in, SUBACK_REASONS, UNSUBACK_REASONS};
use super::DecodeError;
use crate::packet::{
    AckProperties, QoS, RetainHandling, SubAck, Subscribe, Subscription, SubscriptionOptions,
    UnsubAck, Unsubscribe,
};
use crate::reason::ReasonCode;
use crate::topic::validate_topic_filter;

pub(super) fn decode_subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
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

pub(super) fn decode_suback(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
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

pub(super) fn decode_unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
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

pub(super) fn decode_unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::testing::*;
    use crate::packet::*;

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
}
