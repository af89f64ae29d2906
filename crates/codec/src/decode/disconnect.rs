//! DISCONNECT and AUTH: both empty in their shortest form, then a reason code, then
//! properties.
//!
//! Depends on `packet` of this crate and the decoder's `reader`, `properties` and `reasons`.

use super::properties::{read_properties, AUTH_PROPS, DISCONNECT_PROPS};
use super::reader::Reader;
use super::reasons::{reason_in, AUTH_REASONS, DISCONNECT_REASONS};
use super::DecodeError;
use crate::packet::{Auth, Disconnect, DisconnectProperties};

pub(super) fn decode_disconnect(r: &mut Reader, v5: bool) -> Result<Disconnect, DecodeError> {
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

pub(super) fn decode_auth(r: &mut Reader) -> Result<Auth, DecodeError> {
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::decode::testing::*;
    use crate::packet::*;
    use crate::reason::ReasonCode;

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
