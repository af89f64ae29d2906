//! Proptest strategies for packets that are valid for a protocol version, and the normalisation
//! that says what a 3.1.1 round trip can preserve. Shared by the round-trip and cross-check tests.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

use bytes::{Bytes, BytesMut};
use firehose_codec::{
    decode, encode, AckProperties, Auth, ConnAck, ConnAckProperties, Connect, ConnectProperties,
    Disconnect, DisconnectProperties, Packet, Protocol, PubResponse, Publish, PublishProperties,
    QoS, ReasonCode, RetainHandling, SubAck, Subscribe, Subscription, SubscriptionOptions,
    UnsubAck, Unsubscribe, UserProperty, Will,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

/// Largest value of a variable byte integer.
pub const MAX_VARINT: u32 = 268_435_455;

/// Encodes then decodes, asserting the frame is consumed exactly.
pub fn round_trip(packet: &Packet, protocol: Protocol) -> Packet {
    let mut buf = BytesMut::new();
    encode(packet, protocol, &mut buf).expect("a valid packet encodes");
    let len = buf.len();
    buf.extend_from_slice(&[0xC0, 0x00]); // a PINGREQ after it must stay in the buffer
    let decoded = decode(&mut buf, protocol, usize::MAX)
        .unwrap_or_else(|e| {
            panic!(
                "decoding our own {} ({len} bytes) failed: {e}",
                packet.name()
            )
        })
        .expect("a whole frame decodes");
    assert_eq!(&buf[..], &[0xC0, 0x00], "decode consumed exactly the frame");
    decoded
}

/// Short UTF-8 text without U+0000, multi-byte characters included.
pub fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,10}"
}

/// A valid topic name (no wildcards, not empty).
pub fn topic_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9/ $é€_-]{1,16}"
}

/// A valid topic filter, sometimes shared.
pub fn topic_filter() -> impl Strategy<Value = String> {
    let level = prop_oneof![3 => "[a-z0-9é$]{0,5}", 1 => Just("+".to_owned())];
    (vec(level, 1..4), any::<bool>(), option::of("[a-z0-9]{1,5}")).prop_map(
        |(levels, hash, share)| {
            let mut filter = levels.join("/");
            if hash {
                filter.push_str("/#");
            }
            if filter.is_empty() {
                filter.push('#');
            }
            match share {
                Some(group) => format!("$share/{group}/{filter}"),
                None => filter,
            }
        },
    )
}

pub fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

pub fn user_properties() -> impl Strategy<Value = Vec<UserProperty>> {
    vec((text(), text()), 0..3)
}

pub fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

pub fn nonzero_u16() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

pub fn reason_from(codes: &'static [ReasonCode]) -> impl Strategy<Value = ReasonCode> {
    proptest::sample::select(codes)
}

use ReasonCode as R;

pub const CONNACK_REASONS: &[ReasonCode] = &[
    R::Success,
    R::UnspecifiedError,
    R::MalformedPacket,
    R::ProtocolError,
    R::ImplementationSpecificError,
    R::UnsupportedProtocolVersion,
    R::ClientIdentifierNotValid,
    R::BadUserNameOrPassword,
    R::NotAuthorized,
    R::ServerUnavailable,
    R::ServerBusy,
    R::Banned,
    R::BadAuthenticationMethod,
    R::TopicNameInvalid,
    R::PacketTooLarge,
    R::QuotaExceeded,
    R::PayloadFormatInvalid,
    R::RetainNotSupported,
    R::QoSNotSupported,
    R::UseAnotherServer,
    R::ServerMoved,
    R::ConnectionRateExceeded,
];
pub const PUBACK_REASONS: &[ReasonCode] = &[
    R::Success,
    R::NoMatchingSubscribers,
    R::UnspecifiedError,
    R::ImplementationSpecificError,
    R::NotAuthorized,
    R::TopicNameInvalid,
    R::PacketIdentifierInUse,
    R::QuotaExceeded,
    R::PayloadFormatInvalid,
];
pub const PUBREL_REASONS: &[ReasonCode] = &[R::Success, R::PacketIdentifierNotFound];
pub const SUBACK_REASONS: &[ReasonCode] = &[
    R::Success,
    R::GrantedQoS1,
    R::GrantedQoS2,
    R::UnspecifiedError,
    R::ImplementationSpecificError,
    R::NotAuthorized,
    R::TopicFilterInvalid,
    R::PacketIdentifierInUse,
    R::QuotaExceeded,
    R::SharedSubscriptionsNotSupported,
    R::SubscriptionIdentifiersNotSupported,
    R::WildcardSubscriptionsNotSupported,
];
pub const UNSUBACK_REASONS: &[ReasonCode] = &[
    R::Success,
    R::NoSubscriptionExisted,
    R::UnspecifiedError,
    R::ImplementationSpecificError,
    R::NotAuthorized,
    R::TopicFilterInvalid,
    R::PacketIdentifierInUse,
];
pub const DISCONNECT_REASONS: &[ReasonCode] = &[
    R::Success,
    R::DisconnectWithWill,
    R::UnspecifiedError,
    R::MalformedPacket,
    R::ProtocolError,
    R::ImplementationSpecificError,
    R::NotAuthorized,
    R::ServerBusy,
    R::ServerShuttingDown,
    R::KeepAliveTimeout,
    R::SessionTakenOver,
    R::TopicFilterInvalid,
    R::TopicNameInvalid,
    R::ReceiveMaximumExceeded,
    R::TopicAliasInvalid,
    R::PacketTooLarge,
    R::MessageRateTooHigh,
    R::QuotaExceeded,
    R::AdministrativeAction,
    R::PayloadFormatInvalid,
    R::RetainNotSupported,
    R::QoSNotSupported,
    R::UseAnotherServer,
    R::ServerMoved,
    R::SharedSubscriptionsNotSupported,
    R::ConnectionRateExceeded,
    R::MaximumConnectTime,
    R::SubscriptionIdentifiersNotSupported,
    R::WildcardSubscriptionsNotSupported,
];
pub const AUTH_REASONS: &[ReasonCode] = &[R::Success, R::ContinueAuthentication, R::ReAuthenticate];

/// Message properties valid in a will (no topic alias, no subscription identifiers).
pub fn message_properties() -> impl Strategy<Value = PublishProperties> {
    (
        option::of(0..=1u8),
        option::of(any::<u32>()),
        option::of(topic_name()),
        option::of(bytes(8)),
        user_properties(),
        option::of(text()),
    )
        .prop_map(
            |(
                payload_format_indicator,
                message_expiry_interval,
                response_topic,
                correlation_data,
                user_properties,
                content_type,
            )| PublishProperties {
                payload_format_indicator,
                message_expiry_interval,
                topic_alias: None,
                response_topic,
                correlation_data,
                user_properties,
                subscription_identifiers: Vec::new(),
                content_type,
            },
        )
}

pub fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        message_properties(),
        option::of(nonzero_u16()),
        vec(1..=MAX_VARINT, 0..3),
    )
        .prop_map(|(mut p, topic_alias, subscription_identifiers)| {
            p.topic_alias = topic_alias;
            p.subscription_identifiers = subscription_identifiers;
            p
        })
}

pub fn will() -> impl Strategy<Value = Will> {
    (
        topic_name(),
        bytes(16),
        qos(),
        any::<bool>(),
        option::of(any::<u32>()),
        message_properties(),
    )
        .prop_map(
            |(topic, payload, qos, retain, delay_interval, properties)| Will {
                topic,
                payload,
                qos,
                retain,
                delay_interval,
                properties,
            },
        )
}

pub fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        option::of(any::<u32>()),
        option::of(nonzero_u16()),
        option::of(1..=u32::MAX),
        option::of(any::<u16>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        user_properties(),
        option::of(text()),
        option::of(bytes(8)),
    )
        .prop_map(|(a, b, c, d, e, f, g, h, i)| ConnectProperties {
            session_expiry_interval: a,
            receive_maximum: b,
            maximum_packet_size: c,
            topic_alias_maximum: d,
            request_response_information: e,
            request_problem_information: f,
            user_properties: g,
            // Authentication data without a method is a protocol error.
            authentication_data: i.filter(|_| h.is_some()),
            authentication_method: h,
        })
}

pub fn connect(protocol: Protocol) -> impl Strategy<Value = Connect> {
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        option::of(will()),
        option::of(text()),
        option::of(bytes(12)),
        connect_properties(),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                Connect {
                    protocol,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }
            },
        )
}

pub fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    (
        (
            option::of(any::<u32>()),
            option::of(nonzero_u16()),
            option::of(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
            option::of(any::<bool>()),
            option::of(1..=u32::MAX),
            option::of(text()),
            option::of(any::<u16>()),
            option::of(text()),
            user_properties(),
        ),
        (
            option::of(any::<bool>()),
            option::of(any::<bool>()),
            option::of(any::<bool>()),
            option::of(any::<u16>()),
            option::of(text()),
            option::of(text()),
            option::of(text()),
            option::of(bytes(8)),
        ),
    )
        .prop_map(|((a, b, c, d, e, f, g, h, i), (j, k, l, m, n, o, p, q))| {
            ConnAckProperties {
                session_expiry_interval: a,
                receive_maximum: b,
                maximum_qos: c,
                retain_available: d,
                maximum_packet_size: e,
                assigned_client_identifier: f,
                topic_alias_maximum: g,
                reason_string: h,
                user_properties: i,
                wildcard_subscription_available: j,
                subscription_identifiers_available: k,
                shared_subscription_available: l,
                server_keep_alive: m,
                response_information: n,
                server_reference: o,
                authentication_method: p,
                authentication_data: q,
            }
        })
}

pub fn connack() -> impl Strategy<Value = ConnAck> {
    (
        any::<bool>(),
        reason_from(CONNACK_REASONS),
        connack_properties(),
    )
        .prop_map(|(session_present, reason, properties)| ConnAck {
            // A refusal never comes with a session.
            session_present: session_present && !reason.is_error(),
            reason,
            properties,
        })
}

pub fn publish() -> impl Strategy<Value = Publish> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        prop_oneof![4 => topic_name(), 1 => Just(String::new())],
        nonzero_u16(),
        publish_properties(),
        bytes(64),
    )
        .prop_map(|(dup, qos, retain, topic, id, mut properties, payload)| {
            if topic.is_empty() && properties.topic_alias.is_none() {
                properties.topic_alias = Some(1);
            }
            Publish {
                dup: dup && qos != QoS::AtMostOnce,
                qos,
                retain,
                topic,
                packet_id: (qos != QoS::AtMostOnce).then_some(id),
                properties,
                payload,
            }
        })
}

pub fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (option::of(text()), user_properties()).prop_map(|(reason_string, user_properties)| {
        AckProperties {
            reason_string,
            user_properties,
        }
    })
}

pub fn pub_response(reasons: &'static [ReasonCode]) -> impl Strategy<Value = PubResponse> {
    (nonzero_u16(), reason_from(reasons), ack_properties()).prop_map(
        |(packet_id, reason, properties)| PubResponse {
            packet_id,
            reason,
            properties,
        },
    )
}

pub fn subscription() -> impl Strategy<Value = Subscription> {
    (
        topic_filter(),
        qos(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just(RetainHandling::SendAtSubscribe),
            Just(RetainHandling::SendIfNew),
            Just(RetainHandling::DoNotSend)
        ],
    )
        .prop_map(
            |(filter, qos, no_local, retain_as_published, retain_handling)| {
                Subscription {
                    // No Local on a shared subscription is a protocol error.
                    options: SubscriptionOptions {
                        qos,
                        no_local: no_local && !filter.starts_with("$share/"),
                        retain_as_published,
                        retain_handling,
                    },
                    filter,
                }
            },
        )
}

pub fn subscribe() -> impl Strategy<Value = Subscribe> {
    (
        nonzero_u16(),
        vec(subscription(), 1..4),
        option::of(1..=MAX_VARINT),
        user_properties(),
    )
        .prop_map(
            |(packet_id, subscriptions, subscription_identifier, user_properties)| Subscribe {
                packet_id,
                subscriptions,
                subscription_identifier,
                user_properties,
            },
        )
}

pub fn suback() -> impl Strategy<Value = SubAck> {
    (
        nonzero_u16(),
        vec(reason_from(SUBACK_REASONS), 1..5),
        ack_properties(),
    )
        .prop_map(|(packet_id, reasons, properties)| SubAck {
            packet_id,
            reasons,
            properties,
        })
}

pub fn unsubscribe() -> impl Strategy<Value = Unsubscribe> {
    (nonzero_u16(), vec(topic_filter(), 1..4), user_properties()).prop_map(
        |(packet_id, filters, user_properties)| Unsubscribe {
            packet_id,
            filters,
            user_properties,
        },
    )
}

pub fn unsuback() -> impl Strategy<Value = UnsubAck> {
    (
        nonzero_u16(),
        vec(reason_from(UNSUBACK_REASONS), 1..5),
        ack_properties(),
    )
        .prop_map(|(packet_id, reasons, properties)| UnsubAck {
            packet_id,
            reasons,
            properties,
        })
}

pub fn disconnect() -> impl Strategy<Value = Disconnect> {
    (
        reason_from(DISCONNECT_REASONS),
        option::of(any::<u32>()),
        option::of(text()),
        user_properties(),
        option::of(text()),
    )
        .prop_map(|(reason, a, b, c, d)| Disconnect {
            reason,
            properties: DisconnectProperties {
                session_expiry_interval: a,
                reason_string: b,
                user_properties: c,
                server_reference: d,
            },
        })
}

pub fn auth() -> impl Strategy<Value = Auth> {
    (
        reason_from(AUTH_REASONS),
        option::of(text()),
        option::of(bytes(8)),
        option::of(text()),
        user_properties(),
    )
        .prop_map(|(reason, a, b, c, d)| Auth {
            reason,
            authentication_method: a,
            authentication_data: b,
            reason_string: c,
            user_properties: d,
        })
}

/// Any packet valid for MQTT 5, with every field it can carry.
pub fn packet_v5() -> impl Strategy<Value = Packet> {
    prop_oneof![
        1 => connect(Protocol::V5).prop_map(|c| Packet::Connect(Box::new(c))),
        1 => connack().prop_map(Packet::ConnAck),
        3 => publish().prop_map(Packet::Publish),
        1 => pub_response(PUBACK_REASONS).prop_map(Packet::PubAck),
        1 => pub_response(PUBACK_REASONS).prop_map(Packet::PubRec),
        1 => pub_response(PUBREL_REASONS).prop_map(Packet::PubRel),
        1 => pub_response(PUBREL_REASONS).prop_map(Packet::PubComp),
        1 => subscribe().prop_map(Packet::Subscribe),
        1 => suback().prop_map(Packet::SubAck),
        1 => unsubscribe().prop_map(Packet::Unsubscribe),
        1 => unsuback().prop_map(Packet::UnsubAck),
        1 => Just(Packet::PingReq),
        1 => Just(Packet::PingResp),
        1 => disconnect().prop_map(Packet::Disconnect),
        1 => auth().prop_map(Packet::Auth),
    ]
}

/// Any packet valid for MQTT 3.1.1, already reduced to what 3.1.1 carries.
pub fn packet_v311() -> impl Strategy<Value = Packet> {
    packet_v5()
        .prop_filter("AUTH does not exist in 3.1.1", |p| {
            !matches!(p, Packet::Auth(_))
        })
        .prop_map(normalize_v311)
}

/// What a packet becomes after a 3.1.1 round trip: the fields 3.1.1 cannot carry take their
/// defaults, reason codes fold into the 3.1.1 return codes.
pub fn normalize_v311(packet: Packet) -> Packet {
    match packet {
        Packet::Connect(mut c) => {
            c.protocol = Protocol::V311;
            c.properties = ConnectProperties::default();
            if let Some(will) = &mut c.will {
                will.delay_interval = None;
                will.properties = PublishProperties::default();
            }
            if c.username.is_none() {
                c.password = None;
            }
            Packet::Connect(c)
        }
        Packet::ConnAck(c) => Packet::ConnAck(ConnAck {
            session_present: c.session_present,
            reason: ReasonCode::from_v311_connack(c.reason.to_v311_connack())
                .expect("to_v311_connack gives 0-5"),
            properties: ConnAckProperties::default(),
        }),
        Packet::Publish(mut p) => {
            p.properties = PublishProperties::default();
            if p.topic.is_empty() {
                p.topic = "t".to_owned();
            }
            Packet::Publish(p)
        }
        Packet::PubAck(r) => Packet::PubAck(bare_response(r)),
        Packet::PubRec(r) => Packet::PubRec(bare_response(r)),
        Packet::PubRel(r) => Packet::PubRel(bare_response(r)),
        Packet::PubComp(r) => Packet::PubComp(bare_response(r)),
        Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            packet_id: s.packet_id,
            subscriptions: s
                .subscriptions
                .into_iter()
                .map(|sub| Subscription {
                    filter: sub.filter,
                    options: SubscriptionOptions {
                        qos: sub.options.qos,
                        ..SubscriptionOptions::default()
                    },
                })
                .collect(),
            subscription_identifier: None,
            user_properties: Vec::new(),
        }),
        Packet::SubAck(s) => Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reasons: s
                .reasons
                .into_iter()
                .map(|r| match r.to_v311_suback() {
                    0x00 => ReasonCode::Success,
                    0x01 => ReasonCode::GrantedQoS1,
                    0x02 => ReasonCode::GrantedQoS2,
                    _ => ReasonCode::UnspecifiedError,
                })
                .collect(),
            properties: AckProperties::default(),
        }),
        Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            user_properties: Vec::new(),
            ..u
        }),
        Packet::UnsubAck(u) => Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            ..UnsubAck::default()
        }),
        Packet::Disconnect(_) => Packet::Disconnect(Disconnect::default()),
        other => other,
    }
}

fn bare_response(r: PubResponse) -> PubResponse {
    PubResponse {
        packet_id: r.packet_id,
        ..PubResponse::default()
    }
}

/// A publish as the given protocol carries it.
pub fn normalize_for(publish: Publish, protocol: Protocol) -> Publish {
    match protocol {
        Protocol::V5 => publish,
        Protocol::V311 => match normalize_v311(Packet::Publish(publish)) {
            Packet::Publish(p) => p,
            _ => unreachable!("normalize_v311 keeps the packet type"),
        },
    }
}
