//! The broker's codec as a test oracle (tests only; `firehose-codec` is a dev-dependency): the
//! unit tests of `packets` and `wire` decode what the generator writes with it, and feed the
//! generator what it writes. Two independent implementations that agree are the check; the
//! generator never calls the codec itself.

use bytes::BytesMut;
use firehose_codec as codec;

use crate::packets::{Protocol, QoS};

/// The codec's name for `protocol`.
pub(crate) fn protocol(protocol: Protocol) -> codec::Protocol {
    match protocol {
        Protocol::V311 => codec::Protocol::V311,
        Protocol::V5 => codec::Protocol::V5,
    }
}

/// The codec's name for `qos`.
pub(crate) fn qos(qos: QoS) -> codec::QoS {
    match qos {
        QoS::AtMostOnce => codec::QoS::AtMostOnce,
        QoS::AtLeastOnce => codec::QoS::AtLeastOnce,
    }
}

/// Decodes `bytes` with the codec: exactly one packet, every byte used.
pub(crate) fn reads(bytes: &[u8], version: Protocol) -> codec::Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = codec::decode(&mut buf, protocol(version), usize::MAX)
        .unwrap_or_else(|e| panic!("{version:?} {bytes:02x?}: {e}"))
        .unwrap_or_else(|| panic!("{version:?} {bytes:02x?}: incomplete"));
    assert!(buf.is_empty(), "{version:?}: bytes left after the packet");
    packet
}

/// Encodes `packet` with the codec.
pub(crate) fn writes(packet: &codec::Packet, version: Protocol) -> BytesMut {
    let mut buf = BytesMut::new();
    codec::encode(packet, protocol(version), &mut buf).expect("the codec encodes");
    buf
}
