//! Fuzzes the decoder with both protocol versions.
//!
//! Properties checked for every input:
//! - `decode` never panics, whatever the bytes;
//! - an incomplete packet leaves the buffer untouched, and a decoded one consumes bytes;
//! - every decoded packet re-encodes, and those bytes decode to the same packet (so the encoder
//!   and the decoder agree on everything the decoder accepts).

#![no_main]

use bytes::BytesMut;
use firehose_codec::{decode, encode, Packet, Protocol};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut buf = BytesMut::from(data);
        loop {
            let before = buf.clone();
            match decode(&mut buf, protocol, 1 << 20) {
                Ok(Some(packet)) => {
                    assert!(buf.len() < before.len(), "a decoded packet consumes bytes");
                    check_round_trip(&packet, protocol);
                }
                Ok(None) => {
                    assert_eq!(buf, before, "an incomplete packet leaves the buffer untouched");
                    break;
                }
                Err(_) => break,
            }
        }
    }
});

fn check_round_trip(packet: &Packet, protocol: Protocol) {
    // A decoded CONNECT carries its own version; every later packet uses the argument.
    let protocol = match packet {
        Packet::Connect(connect) => connect.protocol,
        _ => protocol,
    };
    let mut encoded = BytesMut::new();
    encode(packet, protocol, &mut encoded).expect("a decoded packet re-encodes");
    let total = encoded.len();
    let again = decode(&mut encoded, protocol, usize::MAX)
        .unwrap_or_else(|e| panic!("re-encoded {} ({total} bytes) fails to decode: {e}", packet.name()))
        .expect("a re-encoded packet is complete");
    assert!(encoded.is_empty(), "re-encoding is exactly one frame");
    assert_eq!(&again, packet, "decode(encode(p)) == p");
}
