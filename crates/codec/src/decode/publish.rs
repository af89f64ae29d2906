//! PUBLISH: flags, topic name (or MQTT 5 topic alias), packet identifier, properties; the
//! payload is a slice of the input buffer, never a copy.
//!
//! Depends on `packet` and `topic` of this crate and the decoder's `reader` and `properties`.

use super::properties::{read_properties, PUBLISH_PROPS};
use super::reader::Reader;
use super::DecodeError;
use crate::packet::{Publish, PublishProperties, QoS};
use crate::topic::validate_topic_name;

pub(super) fn decode_publish(flags: u8, r: &mut Reader, v5: bool) -> Result<Publish, DecodeError> {
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

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};

    use crate::decode::decode;
    use crate::decode::testing::*;
    use crate::packet::*;

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
}
