//! The MQTT the generator speaks, written by hand: the packets it sends (CONNECT, SUBSCRIBE,
//! PUBLISH, PUBACK, DISCONNECT) and the little it reads back (CONNACK and SUBACK during the
//! handshakes, then frame boundaries, PUBLISH payloads and PUBACKs), for MQTT 3.1.1 and 5.0.
//!
//! Why not the broker's codec: a generator that encoded and decoded with `firehose-codec` would
//! share its bugs, and a packet both ends get wrong the same way would pass unseen. The codec is
//! a dev-dependency only, as an oracle: the unit tests below decode what this module writes with
//! it, and read with this module what it writes.
//!
//! Why so little: the generator never uses QoS 2, wills, topic aliases or MQTT 5 properties
//! beyond a session expiry, so nothing here handles them. What it reads it reads only as far as
//! it must, without allocating: a subscriber of a fan-out run receives up to a million PUBLISH
//! packets a second, and decoding each into an owned packet would make the generator the
//! bottleneck.
//!
//! Pure code over byte buffers: depends on `bytes` and `thiserror` only.

use bytes::{BufMut, BytesMut};

/// First byte of a CONNECT.
const CONNECT: u8 = 0x10;
/// Packet type of a CONNACK (high nibble of its first byte).
const CONNACK_TYPE: u8 = 2;
/// Packet type of a PUBLISH; its low nibble holds DUP, QoS and RETAIN.
const PUBLISH_TYPE: u8 = 3;
/// Packet type of a PUBACK.
const PUBACK_TYPE: u8 = 4;
/// First byte of a SUBSCRIBE (its reserved flags are 0b0010).
const SUBSCRIBE: u8 = 0x82;
/// Packet type of a SUBACK.
const SUBACK_TYPE: u8 = 9;
/// First byte of a DISCONNECT.
const DISCONNECT: u8 = 0xE0;
/// MQTT 5 property identifier of the Session Expiry Interval.
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
/// The largest remaining length (four bytes of seven bits).
const MAX_REMAINING: usize = 268_435_455;

/// MQTT version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5): a property length in CONNECT, SUBSCRIBE and PUBLISH.
    V5,
}

impl Protocol {
    /// The protocol level byte of CONNECT.
    fn level(self) -> u8 {
        match self {
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }
}

/// Quality of service of publishes and subscriptions: the generator uses 0 and 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QoS {
    /// QoS 0: no packet identifier, no acknowledgement.
    AtMostOnce,
    /// QoS 1: a packet identifier, acknowledged by PUBACK.
    AtLeastOnce,
}

impl QoS {
    /// The two QoS bits as they stand in a PUBLISH's flags and in subscription options.
    fn bits(self) -> u8 {
        match self {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => 1,
        }
    }
}

/// Why a packet could not be written, or why bytes from the broker are not MQTT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PacketError {
    /// A string or binary field longer than its 16-bit length prefix can say.
    #[error("{what} is {len} bytes long; MQTT allows at most 65,535")]
    FieldTooLong {
        /// Which field.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// A packet longer than a remaining length can say.
    #[error("a packet of {0} bytes is longer than MQTT allows")]
    PacketTooLong(usize),
    /// The broker sent bytes that are not the MQTT expected here.
    #[error("malformed packet from the broker: {0}")]
    Malformed(&'static str),
}

/// Appends a fixed header: the first byte and the remaining length as a variable byte integer.
///
/// # Errors
/// `remaining` is more than a remaining length can say.
fn put_header(out: &mut BytesMut, first: u8, remaining: usize) -> Result<(), PacketError> {
    if remaining > MAX_REMAINING {
        return Err(PacketError::PacketTooLong(remaining));
    }
    out.put_u8(first);
    put_varint(out, remaining);
    Ok(())
}

/// Appends `value` (at most [`MAX_REMAINING`]) as a variable byte integer: seven bits a byte,
/// least significant first, the high bit saying another byte follows.
fn put_varint(out: &mut BytesMut, mut value: usize) {
    loop {
        let byte = (value % 128) as u8;
        value /= 128;
        if value == 0 {
            out.put_u8(byte);
            return;
        }
        out.put_u8(byte | 0x80);
    }
}

/// Appends a string or binary field: its length in two bytes, then its bytes.
///
/// # Errors
/// The field is longer than 65,535 bytes.
fn put_field(out: &mut BytesMut, what: &'static str, bytes: &[u8]) -> Result<(), PacketError> {
    let len = u16::try_from(bytes.len()).map_err(|_| PacketError::FieldTooLong {
        what,
        len: bytes.len(),
    })?;
    out.put_u16(len);
    out.put_slice(bytes);
    Ok(())
}

/// Appends a whole packet: the fixed header for `body`, then `body`.
fn put_packet(out: &mut BytesMut, first: u8, body: &[u8]) -> Result<(), PacketError> {
    put_header(out, first, body.len())?;
    out.put_slice(body);
    Ok(())
}

/// What a CONNECT says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectSpec<'a> {
    /// MQTT version.
    pub(crate) protocol: Protocol,
    /// Clean session (3.1.1) or clean start (5.0).
    pub(crate) clean_start: bool,
    /// Keep alive, seconds.
    pub(crate) keep_alive: u16,
    /// Client identifier.
    pub(crate) client_id: &'a str,
    /// User name and password, for publishers.
    pub(crate) login: Option<(&'a str, &'a [u8])>,
    /// MQTT 5 Session Expiry Interval, seconds: how long a persistent session outlives its
    /// connection (3.1.1 keeps it until a clean session ends it, and ignores this).
    pub(crate) session_expiry: Option<u32>,
}

/// Appends a CONNECT.
///
/// # Errors
/// A client id, user name or password longer than 65,535 bytes.
pub(crate) fn connect(out: &mut BytesMut, spec: &ConnectSpec<'_>) -> Result<(), PacketError> {
    let mut body = BytesMut::with_capacity(64);
    put_field(&mut body, "protocol name", b"MQTT")?;
    body.put_u8(spec.protocol.level());
    let mut flags = u8::from(spec.clean_start) << 1;
    if spec.login.is_some() {
        flags |= 0xC0; // user name and password
    }
    body.put_u8(flags);
    body.put_u16(spec.keep_alive);
    if spec.protocol == Protocol::V5 {
        match spec.session_expiry {
            Some(seconds) => {
                body.put_u8(5); // property length: identifier and four bytes
                body.put_u8(SESSION_EXPIRY_INTERVAL);
                body.put_u32(seconds);
            }
            None => body.put_u8(0),
        }
    }
    put_field(&mut body, "client id", spec.client_id.as_bytes())?;
    if let Some((user, password)) = spec.login {
        put_field(&mut body, "user name", user.as_bytes())?;
        put_field(&mut body, "password", password)?;
    }
    put_packet(out, CONNECT, &body)
}

/// Appends a SUBSCRIBE of one filter at `qos` (MQTT 5 options other than QoS left at 0:
/// local messages delivered, retain as published off, retained messages sent).
///
/// # Errors
/// The filter is longer than 65,535 bytes.
pub(crate) fn subscribe(
    out: &mut BytesMut,
    protocol: Protocol,
    packet_id: u16,
    filter: &str,
    qos: QoS,
) -> Result<(), PacketError> {
    let mut body = BytesMut::with_capacity(filter.len() + 8);
    body.put_u16(packet_id);
    if protocol == Protocol::V5 {
        body.put_u8(0); // no properties
    }
    put_field(&mut body, "topic filter", filter.as_bytes())?;
    body.put_u8(qos.bits());
    put_packet(out, SUBSCRIBE, &body)
}

/// Appends a PUBACK of `packet_id`: the same two bytes in both versions (MQTT 5's short form
/// for Success without properties).
pub(crate) fn puback(out: &mut BytesMut, packet_id: u16) {
    out.put_u8(PUBACK_TYPE << 4);
    out.put_u8(2);
    out.put_u16(packet_id);
}

/// Appends a DISCONNECT: empty in both versions (MQTT 5's short form of a normal
/// disconnection).
pub(crate) fn disconnect(out: &mut BytesMut) {
    out.put_u8(DISCONNECT);
    out.put_u8(0);
}

/// A PUBLISH in two parts around its packet identifier, so that a template can put a new
/// identifier between them for every send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublishParts {
    /// Fixed header and topic.
    pub(crate) head: BytesMut,
    /// MQTT 5's (empty) property list, then the payload.
    pub(crate) tail: BytesMut,
}

/// Encodes a PUBLISH of `payload` to `topic` (not retained, not a duplicate), leaving out the
/// packet identifier of QoS 1, which the caller writes between the two parts.
///
/// # Errors
/// The topic is longer than 65,535 bytes or the packet longer than MQTT allows.
pub(crate) fn publish_parts(
    topic: &str,
    payload: &[u8],
    qos: QoS,
    protocol: Protocol,
) -> Result<PublishParts, PacketError> {
    let mut tail = BytesMut::with_capacity(payload.len() + 1);
    if protocol == Protocol::V5 {
        tail.put_u8(0); // no properties
    }
    tail.put_slice(payload);
    let id_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let mut head = BytesMut::with_capacity(topic.len() + 7);
    let remaining = 2 + topic.len() + id_len + tail.len();
    put_header(&mut head, PUBLISH_TYPE << 4 | qos.bits() << 1, remaining)?;
    put_field(&mut head, "topic", topic.as_bytes())?;
    Ok(PublishParts { head, tail })
}

/// Reads the remaining length at the start of `bytes`: its value and how many bytes it took;
/// `None` while incomplete.
///
/// # Errors
/// A fifth byte would follow.
fn read_varint(bytes: &[u8]) -> Result<Option<(usize, usize)>, PacketError> {
    let mut value = 0usize;
    for (i, byte) in bytes.iter().enumerate().take(4) {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        return Err(PacketError::Malformed(
            "remaining length longer than 4 bytes",
        ));
    }
    Ok(None)
}

/// The size of the complete packet at the start of `buf` (fixed header included), and where its
/// body starts; `None` while the packet is incomplete.
///
/// # Errors
/// A remaining length longer than four bytes.
fn frame_at(buf: &[u8]) -> Result<Option<(usize, usize)>, PacketError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let Some((remaining, len_len)) = read_varint(&buf[1..])? else {
        return Ok(None);
    };
    let size = 1 + len_len + remaining;
    Ok((buf.len() >= size).then_some((size, 1 + len_len)))
}

/// One complete frame found by [`scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A PUBLISH, read just enough to know its QoS, packet id and payload.
    Publish {
        /// 0, 1 or 2.
        qos: u8,
        /// Present for QoS 1 and 2.
        packet_id: Option<u16>,
        /// The application payload.
        payload: &'a [u8],
    },
    /// A PUBACK: only its packet id matters here.
    PubAck(u16),
    /// Anything else, whole (fixed header included).
    Other(&'a [u8]),
}

/// Calls `each` for every complete frame at the start of `buf` and returns how many bytes they
/// took; an incomplete frame at the end is left for the next read.
///
/// # Errors
/// A remaining length longer than four bytes, or a PUBLISH too short for its own fields.
pub(crate) fn scan(
    buf: &[u8],
    protocol: Protocol,
    mut each: impl FnMut(Frame<'_>),
) -> Result<usize, PacketError> {
    let mut at = 0;
    while let Some((size, body_at)) = frame_at(&buf[at..])? {
        let frame = &buf[at..at + size];
        let body = &frame[body_at..];
        each(match frame[0] >> 4 {
            PUBLISH_TYPE => publish_frame(frame[0], body, protocol)?,
            PUBACK_TYPE if body.len() >= 2 => Frame::PubAck(u16::from_be_bytes([body[0], body[1]])),
            _ => Frame::Other(frame),
        });
        at += size;
    }
    Ok(at)
}

/// Reads a PUBLISH's QoS, packet id and payload, skipping its topic and MQTT 5 properties.
fn publish_frame(first: u8, body: &[u8], protocol: Protocol) -> Result<Frame<'_>, PacketError> {
    let qos = (first >> 1) & 0x03;
    let short = PacketError::Malformed("PUBLISH shorter than its fields");
    let topic_len = usize::from(u16::from_be_bytes([
        *body.first().ok_or(short.clone())?,
        *body.get(1).ok_or(short.clone())?,
    ]));
    let mut at = 2 + topic_len;
    let packet_id = if qos > 0 {
        let id = body.get(at..at + 2).ok_or(short.clone())?;
        at += 2;
        Some(u16::from_be_bytes([id[0], id[1]]))
    } else {
        None
    };
    if protocol == Protocol::V5 {
        at = skip_properties(body, at, "PUBLISH properties length cut short")?;
    }
    let payload = body.get(at..).ok_or(short)?;
    Ok(Frame::Publish {
        qos,
        packet_id,
        payload,
    })
}

/// Where the MQTT 5 property list that starts at `at` in `body` ends (it is not read).
///
/// # Errors
/// The body ends before the property list's length does.
fn skip_properties(body: &[u8], at: usize, short: &'static str) -> Result<usize, PacketError> {
    let rest = body.get(at..).ok_or(PacketError::Malformed(short))?;
    let (props_len, len_len) = read_varint(rest)?.ok_or(PacketError::Malformed(short))?;
    Ok(at + len_len + props_len)
}

/// The broker's answer to a handshake step, as far as the generator needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A CONNACK with its return code (3.1.1) or reason code (5.0): 0 is success.
    ConnAck(u8),
    /// A SUBACK with the code for its first filter: the granted QoS, or 0x80 and above for a
    /// refusal; `None` if it carries none.
    SubAck(Option<u8>),
    /// Another packet, by its type's name.
    Other(&'static str),
}

/// Takes the first complete packet off `buf` and reads it as an [`Answer`]; `None` while it is
/// incomplete (nothing is taken then).
///
/// # Errors
/// The bytes are not MQTT: a remaining length longer than four bytes, or a CONNACK or SUBACK
/// too short for its fields.
pub(crate) fn take_answer(
    buf: &mut BytesMut,
    protocol: Protocol,
) -> Result<Option<Answer>, PacketError> {
    let Some((size, body_at)) = frame_at(buf)? else {
        return Ok(None);
    };
    let frame = buf.split_to(size);
    let body = &frame[body_at..];
    let answer = match frame[0] >> 4 {
        CONNACK_TYPE => {
            // Acknowledge flags, then the code; MQTT 5 properties after it are not needed.
            let code = body
                .get(1)
                .ok_or(PacketError::Malformed("CONNACK too short"))?;
            Answer::ConnAck(*code)
        }
        SUBACK_TYPE => {
            let mut at = 2; // packet identifier
            if protocol == Protocol::V5 {
                at = skip_properties(body, at, "SUBACK too short")?;
            }
            Answer::SubAck(body.get(at).copied())
        }
        kind => Answer::Other(packet_name(kind)),
    };
    Ok(Some(answer))
}

/// The name of a packet type (the high nibble of its first byte).
fn packet_name(kind: u8) -> &'static str {
    const NAMES: [&str; 16] = [
        "reserved packet type 0",
        "CONNECT",
        "CONNACK",
        "PUBLISH",
        "PUBACK",
        "PUBREC",
        "PUBREL",
        "PUBCOMP",
        "SUBSCRIBE",
        "SUBACK",
        "UNSUBSCRIBE",
        "UNSUBACK",
        "PINGREQ",
        "PINGRESP",
        "DISCONNECT",
        "AUTH",
    ];
    NAMES[usize::from(kind & 0x0F)]
}

/// What a refusing CONNACK code means, for the error message: 3.1.1 return codes 1 to 5 and
/// the MQTT 5 reason codes a broker most often refuses a CONNECT with.
pub(crate) fn refusal(code: u8, protocol: Protocol) -> String {
    let reason = match (protocol, code) {
        (Protocol::V311, 1) | (Protocol::V5, 0x84) => "unsupported protocol version",
        (Protocol::V311, 2) | (Protocol::V5, 0x85) => "client identifier not valid",
        (Protocol::V311, 3) | (Protocol::V5, 0x88) => "server unavailable",
        (Protocol::V311, 4) | (Protocol::V5, 0x86) => "bad user name or password",
        (Protocol::V311, 5) | (Protocol::V5, 0x87) => "not authorized",
        (Protocol::V5, 0x89) => "server busy",
        (Protocol::V5, 0x8A) => "banned",
        (Protocol::V5, 0x9F) => "connection rate exceeded",
        _ => "",
    };
    let kind = match protocol {
        Protocol::V311 => "return code",
        Protocol::V5 => "reason code",
    };
    if reason.is_empty() {
        format!("{kind} {code:#04x}")
    } else {
        format!("{kind} {code:#04x} ({reason})")
    }
}

#[cfg(test)]
mod tests {
    //! Cross-checks against the broker's codec, in both directions: what this module writes,
    //! the codec decodes to the packet meant (and encodes to the same bytes); what the codec
    //! writes, this module reads.

    use super::*;
    use crate::oracle;
    use bytes::Bytes;
    use firehose_codec as codec;

    const BOTH: [Protocol; 2] = [Protocol::V311, Protocol::V5];

    /// Asserts that the codec reads `ours` as `expected` and writes `expected` as `ours`.
    fn agrees(ours: &[u8], expected: codec::Packet, protocol: Protocol) {
        assert_eq!(oracle::reads(ours, protocol), expected, "{protocol:?}");
        assert_eq!(
            &oracle::writes(&expected, protocol)[..],
            ours,
            "{protocol:?}: the same packet in other bytes"
        );
    }

    #[test]
    fn connect_is_what_the_codec_reads() {
        for protocol in BOTH {
            for (clean_start, login, session_expiry) in [
                (true, None, None),
                (true, Some(("bench", &b"secret"[..])), None),
                (false, None, Some(3600)),
            ] {
                let spec = ConnectSpec {
                    protocol,
                    clean_start,
                    keep_alive: 600,
                    client_id: "fhb42s7",
                    login,
                    session_expiry,
                };
                let mut ours = BytesMut::new();
                connect(&mut ours, &spec).expect("CONNECT");
                let mut expected = codec::Connect {
                    protocol: oracle::protocol(protocol),
                    clean_start,
                    keep_alive: 600,
                    client_id: "fhb42s7".into(),
                    username: login.map(|(user, _)| user.to_string()),
                    password: login.map(|(_, password)| Bytes::copy_from_slice(password)),
                    ..codec::Connect::default()
                };
                if protocol == Protocol::V5 {
                    expected.properties.session_expiry_interval = session_expiry;
                }
                agrees(&ours, codec::Packet::Connect(Box::new(expected)), protocol);
            }
        }
    }

    #[test]
    fn subscribe_is_what_the_codec_reads() {
        for protocol in BOTH {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
                let mut ours = BytesMut::new();
                subscribe(&mut ours, protocol, 1, "bench/fanout/1-2/+", qos).expect("SUBSCRIBE");
                let expected = codec::Subscribe {
                    packet_id: 1,
                    subscriptions: vec![codec::Subscription {
                        filter: "bench/fanout/1-2/+".into(),
                        options: codec::SubscriptionOptions {
                            qos: oracle::qos(qos),
                            ..codec::SubscriptionOptions::default()
                        },
                    }],
                    ..codec::Subscribe::default()
                };
                agrees(&ours, codec::Packet::Subscribe(expected), protocol);
            }
        }
    }

    #[test]
    fn puback_and_disconnect_are_what_the_codec_reads() {
        for protocol in BOTH {
            let mut ours = BytesMut::new();
            puback(&mut ours, 513);
            let ack = codec::PubResponse {
                packet_id: 513,
                ..codec::PubResponse::default()
            };
            agrees(&ours, codec::Packet::PubAck(ack), protocol);
            let mut ours = BytesMut::new();
            disconnect(&mut ours);
            let bye = codec::Disconnect::default();
            agrees(&ours, codec::Packet::Disconnect(bye), protocol);
        }
    }

    /// The template's bytes against the codec are checked in `wire`, with the stamp; here the
    /// parts themselves, and a length that needs a two-byte remaining length.
    #[test]
    fn publish_parts_are_what_the_codec_reads() {
        for protocol in BOTH {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
                let payload = vec![7u8; 300];
                let parts = publish_parts("a/b", &payload, qos, protocol).expect("PUBLISH");
                let mut ours = parts.head.clone();
                let packet_id = (qos == QoS::AtLeastOnce).then_some(9);
                if let Some(id) = packet_id {
                    ours.put_u16(id);
                }
                ours.extend_from_slice(&parts.tail);
                let expected = codec::Publish {
                    qos: oracle::qos(qos),
                    topic: "a/b".into(),
                    packet_id,
                    payload: Bytes::from(payload),
                    ..codec::Publish::default()
                };
                agrees(&ours, codec::Packet::Publish(expected), protocol);
            }
        }
    }

    #[test]
    fn fields_longer_than_their_length_prefix_are_refused() {
        let long = "x".repeat(65_536);
        let mut out = BytesMut::new();
        assert_eq!(
            subscribe(&mut out, Protocol::V311, 1, &long, QoS::AtMostOnce),
            Err(PacketError::FieldTooLong {
                what: "topic filter",
                len: 65_536
            })
        );
        assert!(publish_parts(&long, b"", QoS::AtMostOnce, Protocol::V5).is_err());
    }

    #[test]
    fn answers_written_by_the_codec_are_read() {
        for protocol in BOTH {
            let connack = |reason, session_present| {
                let mut ack = codec::ConnAck {
                    session_present,
                    reason,
                    ..codec::ConnAck::default()
                };
                if protocol == Protocol::V5 {
                    // Properties the generator skips: they must not be taken for the code.
                    ack.properties.maximum_qos = Some(codec::QoS::AtLeastOnce);
                    ack.properties.assigned_client_identifier = Some("id".into());
                }
                oracle::writes(&codec::Packet::ConnAck(ack), protocol)
            };
            let suback = |reasons: Vec<codec::ReasonCode>| {
                let mut ack = codec::SubAck {
                    packet_id: 1,
                    reasons,
                    ..codec::SubAck::default()
                };
                ack.properties.reason_string = Some("why".into());
                oracle::writes(&codec::Packet::SubAck(ack), protocol)
            };
            let refused = match protocol {
                Protocol::V311 => 5,
                Protocol::V5 => 0x87,
            };
            let mut buf = connack(codec::ReasonCode::Success, true);
            buf.extend_from_slice(&connack(codec::ReasonCode::NotAuthorized, false));
            buf.extend_from_slice(&suback(vec![
                codec::ReasonCode::GrantedQoS1,
                codec::ReasonCode::Success,
            ]));
            buf.extend_from_slice(&suback(vec![codec::ReasonCode::UnspecifiedError]));
            buf.extend_from_slice(&oracle::writes(&codec::Packet::PingResp, protocol));
            let mut answers = Vec::new();
            while let Some(answer) = take_answer(&mut buf, protocol).expect("well formed") {
                answers.push(answer);
            }
            assert_eq!(
                answers,
                [
                    Answer::ConnAck(0),
                    Answer::ConnAck(refused),
                    Answer::SubAck(Some(1)),
                    Answer::SubAck(Some(0x80)),
                    Answer::Other("PINGRESP"),
                ],
                "{protocol:?}"
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn an_incomplete_answer_stays_in_the_buffer() {
        let mut buf = BytesMut::from(&[0x20, 0x02, 0x00][..]);
        assert_eq!(take_answer(&mut buf, Protocol::V311), Ok(None));
        assert_eq!(&buf[..], &[0x20, 0x02, 0x00]);
        buf.put_u8(0x00);
        assert_eq!(
            take_answer(&mut buf, Protocol::V311),
            Ok(Some(Answer::ConnAck(0)))
        );
        let mut short = BytesMut::from(&[0x20, 0x01, 0x00][..]);
        assert!(take_answer(&mut short, Protocol::V311).is_err());
    }

    #[test]
    fn refusals_are_named_in_both_versions() {
        assert_eq!(
            refusal(5, Protocol::V311),
            "return code 0x05 (not authorized)"
        );
        assert_eq!(
            refusal(0x87, Protocol::V5),
            "reason code 0x87 (not authorized)"
        );
        assert_eq!(refusal(0x99, Protocol::V5), "reason code 0x99");
    }

    #[test]
    fn scan_stops_at_an_incomplete_length() {
        assert_eq!(scan(&[0x30], Protocol::V311, |_| {}), Ok(0));
        assert_eq!(scan(&[0x30, 0x80, 0x80], Protocol::V311, |_| {}), Ok(0));
        assert_eq!(scan(&[], Protocol::V311, |_| {}), Ok(0));
    }

    #[test]
    fn scan_refuses_garbage() {
        assert!(scan(
            &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            Protocol::V311,
            |_| {}
        )
        .is_err());
        // A PUBLISH whose topic length runs past its end.
        assert!(scan(&[0x30, 0x02, 0x00, 0x09], Protocol::V311, |_| {}).is_err());
    }

    #[test]
    fn scan_reads_a_qos0_publish_with_v5_properties() {
        let publish = codec::Publish {
            topic: "t".into(),
            payload: Bytes::from_static(&[1u8; 24]),
            properties: codec::PublishProperties {
                content_type: Some("application/json".into()),
                ..Default::default()
            },
            ..codec::Publish::default()
        };
        let buf = oracle::writes(&codec::Packet::Publish(publish), Protocol::V5);
        let mut payloads = Vec::new();
        let used = scan(&buf, Protocol::V5, |frame| {
            if let Frame::Publish { payload, .. } = frame {
                payloads.push(payload.to_vec());
            }
        })
        .expect("scan");
        assert_eq!(used, buf.len());
        assert_eq!(payloads, [vec![1u8; 24]]);
    }
}
