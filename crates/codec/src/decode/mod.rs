//! Bytes to packets: [`decode`] reads the fixed header, refuses what it can from it alone, and
//! hands the body to the decoder of its packet family.
//!
//! # Layout
//! - this file: [`decode`], [`DecodeError`] and the fixed header (packet type, flags, length).
//! - `reader`: the primitives every body is made of (integers, variable byte integers, strings,
//!   binary data), over one complete frame.
//! - `properties`: MQTT 5 property lists and which properties each packet may carry.
//! - `reasons`: which reason codes each MQTT 5 packet may carry.
//! - one file per packet family: `connect` (CONNECT, CONNACK), `publish`, `ack` (PUBACK,
//!   PUBREC, PUBREL, PUBCOMP), `subscribe` (SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK),
//!   `disconnect` (DISCONNECT, AUTH).
//!
//! Depends on `packet`, `property`, `reason` and `topic` of this crate, and on `bytes`.

mod ack;
mod connect;
mod disconnect;
mod properties;
mod publish;
mod reader;
mod reasons;
mod subscribe;

use bytes::{Buf, BytesMut};

use crate::packet::{Packet, Protocol};
use ack::decode_pub_response;
use connect::{decode_connack, decode_connect};
use disconnect::{decode_auth, decode_disconnect};
use publish::decode_publish;
use reader::{read_varint, Reader, Varint};
use reasons::{PUBACK_REASONS, PUBREL_REASONS};
use subscribe::{decode_suback, decode_subscribe, decode_unsuback, decode_unsubscribe};

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

pub(super) fn malformed(packet: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Malformed {
        packet,
        reason: reason.into(),
    }
}

pub(super) fn protocol_error(packet: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Protocol {
        packet,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod testing;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::testing::*;
    use crate::packet::*;

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

    // ----- PINGREQ, PINGRESP -----

    #[test]
    fn pings() {
        assert_eq!(decode_ok(&[0xC0, 0x00], V4), Packet::PingReq);
        assert_eq!(decode_ok(&[0xD0, 0x00], V5), Packet::PingResp);
    }
}
