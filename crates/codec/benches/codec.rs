//! Encode and decode of the packet that dominates a broker's work: a 256-byte PUBLISH, in MQTT
//! 3.1.1 and 5.0, and the split encoding that fan-out shares between subscribers.
//!
//! `cargo bench -p firehose-codec` (add `-- --quick` for a short run).

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use firehose_codec::{
    decode, encode, encode_publish_split, Packet, Protocol, Publish, PublishProperties, QoS,
};
use std::hint::black_box;

const PAYLOAD: usize = 256;

fn publish(qos: QoS, protocol: Protocol) -> Publish {
    let mut properties = PublishProperties::default();
    if protocol == Protocol::V5 {
        // What a bridge typically sets on a JSON event.
        properties.payload_format_indicator = Some(1);
        properties.content_type = Some("application/json".into());
    }
    Publish {
        qos,
        topic: "gerrit/openstack/nova/comment-added".into(),
        packet_id: (qos != QoS::AtMostOnce).then_some(42),
        payload: Bytes::from(vec![b'x'; PAYLOAD]),
        properties,
        ..Publish::default()
    }
}

fn name(protocol: Protocol, qos: QoS) -> String {
    let v = match protocol {
        Protocol::V311 => "v3",
        Protocol::V5 => "v5",
    };
    format!("{v}/qos{}", qos as u8)
}

fn cases() -> Vec<(Protocol, QoS)> {
    let mut all = Vec::new();
    for protocol in [Protocol::V311, Protocol::V5] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            all.push((protocol, qos));
        }
    }
    all
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_publish_256B");
    for (protocol, qos) in cases() {
        let packet = Packet::Publish(publish(qos, protocol));
        let mut buf = BytesMut::with_capacity(1024);
        encode(&packet, protocol, &mut buf).expect("encodes");
        group.throughput(Throughput::Bytes(buf.len() as u64));
        group.bench_function(name(protocol, qos), |b| {
            b.iter(|| {
                buf.clear();
                encode(black_box(&packet), protocol, &mut buf).expect("encodes");
                black_box(buf.len())
            })
        });
    }
    group.finish();
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_publish_256B");
    for (protocol, qos) in cases() {
        let mut buf = BytesMut::new();
        encode(&Packet::Publish(publish(qos, protocol)), protocol, &mut buf).expect("encodes");
        let wire = buf.freeze();
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_function(name(protocol, qos), |b| {
            b.iter_batched_ref(
                || BytesMut::from(&wire[..]),
                |input| {
                    let packet = decode(input, protocol, 1 << 20).expect("decodes");
                    black_box(packet)
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn bench_split(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_publish_split_256B");
    for (protocol, qos) in cases() {
        let publish = publish(qos, protocol);
        group.throughput(Throughput::Bytes(PAYLOAD as u64));
        group.bench_function(name(protocol, qos), |b| {
            b.iter(|| {
                black_box(encode_publish_split(black_box(&publish), protocol).expect("encodes"))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_encode, bench_decode, bench_split);
criterion_main!(benches);
