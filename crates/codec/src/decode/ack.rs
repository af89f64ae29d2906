//! PUBACK, PUBREC, PUBREL and PUBCOMP: a packet identifier, and in MQTT 5 a reason code and
//! properties, each left out in the short forms.
//!
//! Depends on `packet` and `reason` of this crate and the decoder's `reader`, `properties`.

use super::properties::{read_properties, ACK_PROPS};
use super::reader::Reader;
use super::reasons::reason_in;
use super::DecodeError;
use crate::packet::PubResponse;
use crate::reason::ReasonCode;

pub(super) fn decode_pub_response(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::testing::*;
    use crate::packet::*;

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
}
