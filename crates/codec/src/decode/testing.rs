//! Helpers of the decoder's unit tests: frames built by hand and assertions on what decoding
//! them gives.

use bytes::BytesMut;

use super::{decode, DecodeError};
use crate::packet::{Packet, Protocol};

pub(super) const V4: Protocol = Protocol::V311;
pub(super) const V5: Protocol = Protocol::V5;

/// A frame with the remaining length computed, for error cases where only the body matters.
pub(super) fn frame(first: u8, body: &[u8]) -> Vec<u8> {
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

pub(super) fn try_decode(bytes: &[u8], protocol: Protocol) -> Result<Option<Packet>, DecodeError> {
    decode(&mut BytesMut::from(bytes), protocol, usize::MAX)
}

/// Decodes a whole valid packet, checking that every strict prefix is merely incomplete and
/// that exactly the frame is consumed.
pub(super) fn decode_ok(bytes: &[u8], protocol: Protocol) -> Packet {
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

pub(super) fn malformed_reason(bytes: &[u8], protocol: Protocol) -> String {
    match try_decode(bytes, protocol) {
        Err(DecodeError::Malformed { reason, .. }) => reason,
        other => panic!("{bytes:02x?}: expected Malformed, got {other:?}"),
    }
}

pub(super) fn assert_malformed(bytes: &[u8], protocol: Protocol, needle: &str) {
    let reason = malformed_reason(bytes, protocol);
    assert!(
        reason.contains(needle),
        "{reason:?} should mention {needle:?}"
    );
}

pub(super) fn assert_protocol_error(bytes: &[u8], protocol: Protocol, needle: &str) {
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

pub(super) fn connect_v4(flags: u8, rest: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, flags, 0x00, 0x00];
    body.extend_from_slice(rest);
    frame(0x10, &body)
}

pub(super) fn connect_v5(flags: u8, props: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, flags, 0x00, 0x00];
    body.push(props.len() as u8);
    body.extend_from_slice(props);
    body.extend_from_slice(rest);
    frame(0x10, &body)
}
