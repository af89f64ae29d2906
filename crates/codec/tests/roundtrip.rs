//! Property tests: every valid packet survives encode then decode, for both protocol versions,
//! and no input bytes make the decoder panic.

mod common;

use bytes::BytesMut;
use firehose_codec::{decode, encode, encode_publish_split, Packet, Protocol, QoS};
use proptest::prelude::*;

use common::{normalize_v311, packet_v311, packet_v5, publish, round_trip};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn v5_packets_round_trip(packet in packet_v5()) {
        prop_assert_eq!(round_trip(&packet, Protocol::V5), packet);
    }

    #[test]
    fn v311_packets_round_trip(packet in packet_v311()) {
        prop_assert_eq!(round_trip(&packet, Protocol::V311), packet);
    }

    #[test]
    fn v5_packets_encoded_for_v311_decode_to_their_normal_form(packet in packet_v5()) {
        // AUTH does not exist in 3.1.1; CONNECT is encoded for its own protocol field; a PUBLISH
        // that relies on a topic alias has no 3.1.1 form (the broker resolves aliases first).
        prop_assume!(!matches!(packet, Packet::Auth(_) | Packet::Connect(_)));
        prop_assume!(!matches!(&packet, Packet::Publish(p) if p.topic.is_empty()));
        let expected = normalize_v311(packet.clone());
        prop_assert_eq!(round_trip(&packet, Protocol::V311), expected);
    }

    #[test]
    fn split_publish_matches_encode(publish in publish(), id in 1..=u16::MAX, v5 in any::<bool>()) {
        let protocol = if v5 { Protocol::V5 } else { Protocol::V311 };
        let mut publish = common::normalize_for(publish, protocol);
        let parts = encode_publish_split(&publish, protocol).expect("valid publish");
        let positive = publish.qos != QoS::AtMostOnce;
        publish.packet_id = positive.then_some(id);
        let mut joined = BytesMut::new();
        joined.extend_from_slice(&parts.head);
        if positive {
            joined.extend_from_slice(&id.to_be_bytes());
        }
        joined.extend_from_slice(&parts.tail);
        prop_assert_eq!(joined.len(), parts.len(positive));
        let mut whole = BytesMut::new();
        encode(&Packet::Publish(publish), protocol, &mut whole).expect("valid publish");
        prop_assert_eq!(joined, whole);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        for protocol in [Protocol::V311, Protocol::V5] {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode(&mut buf, protocol, 1 << 16) {}
        }
    }

    #[test]
    fn decoding_corrupted_packets_never_panics(
        packet in packet_v5(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut buf = BytesMut::new();
        encode(&packet, Protocol::V5, &mut buf).expect("valid packet");
        for (at, byte) in flips {
            let i = at.index(buf.len());
            buf[i] = byte;
        }
        for protocol in [Protocol::V311, Protocol::V5] {
            let mut copy = buf.clone();
            // Whatever decodes must re-encode and decode to itself.
            if let Ok(Some(decoded)) = decode(&mut copy, protocol, usize::MAX) {
                let again = round_trip(&decoded, protocol);
                prop_assert_eq!(again, decoded);
            }
        }
    }
}
