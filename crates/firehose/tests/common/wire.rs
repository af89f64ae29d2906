//! A small MQTT 3.1.1/5.0 packet builder and parser, written for the tests alone so that the
//! broker is checked against code it shares nothing with.

/// Packet types (upper nibble of the first byte).
pub(crate) const CONNECT: u8 = 1;
/// CONNACK.
pub(crate) const CONNACK: u8 = 2;
/// PUBLISH.
pub(crate) const PUBLISH: u8 = 3;
/// PUBACK.
pub(crate) const PUBACK: u8 = 4;
/// PUBREC.
pub(crate) const PUBREC: u8 = 5;
/// PUBREL.
pub(crate) const PUBREL: u8 = 6;
/// PUBCOMP.
pub(crate) const PUBCOMP: u8 = 7;
/// SUBSCRIBE.
pub(crate) const SUBSCRIBE: u8 = 8;
/// SUBACK.
pub(crate) const SUBACK: u8 = 9;
/// UNSUBSCRIBE.
pub(crate) const UNSUBSCRIBE: u8 = 10;
/// UNSUBACK.
pub(crate) const UNSUBACK: u8 = 11;
/// PINGREQ.
pub(crate) const PINGREQ: u8 = 12;
/// PINGRESP.
pub(crate) const PINGRESP: u8 = 13;
/// DISCONNECT.
pub(crate) const DISCONNECT: u8 = 14;

/// Name of a packet type, for messages.
pub(crate) fn type_name(kind: u8) -> &'static str {
    match kind {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => "PUBLISH",
        4 => "PUBACK",
        5 => "PUBREC",
        6 => "PUBREL",
        7 => "PUBCOMP",
        8 => "SUBSCRIBE",
        9 => "SUBACK",
        10 => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        15 => "AUTH",
        _ => "reserved",
    }
}

/// MQTT 5 property identifiers used by the tests.
pub(crate) mod prop {
    /// Payload Format Indicator (byte).
    pub(crate) const PAYLOAD_FORMAT: u8 = 0x01;
    /// Message Expiry Interval (u32).
    pub(crate) const MESSAGE_EXPIRY: u8 = 0x02;
    /// Content Type (string).
    pub(crate) const CONTENT_TYPE: u8 = 0x03;
    /// Response Topic (string).
    pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
    /// Correlation Data (binary).
    pub(crate) const CORRELATION_DATA: u8 = 0x09;
    /// Subscription Identifier (varint).
    pub(crate) const SUBSCRIPTION_ID: u8 = 0x0B;
    /// Session Expiry Interval (u32).
    pub(crate) const SESSION_EXPIRY: u8 = 0x11;
    /// Assigned Client Identifier (string).
    pub(crate) const ASSIGNED_CLIENT_ID: u8 = 0x12;
    /// Will Delay Interval (u32).
    pub(crate) const WILL_DELAY: u8 = 0x18;
    /// Reason String (string).
    pub(crate) const REASON_STRING: u8 = 0x1F;
    /// Receive Maximum (u16).
    pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
    /// Topic Alias Maximum (u16).
    pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    /// Topic Alias (u16).
    pub(crate) const TOPIC_ALIAS: u8 = 0x23;
    /// User Property (string pair).
    pub(crate) const USER_PROPERTY: u8 = 0x26;
    /// Maximum Packet Size (u32).
    pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
}

/// A decoded MQTT 5 property value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// One byte.
    Byte(u8),
    /// Two-byte integer.
    U16(u16),
    /// Four-byte integer.
    U32(u32),
    /// Variable byte integer.
    Varint(u32),
    /// UTF-8 string.
    Str(String),
    /// Binary data.
    Bin(Vec<u8>),
    /// String pair (user property).
    Pair(String, String),
}

/// Decoded properties, in wire order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Props(pub(crate) Vec<(u8, Value)>);

impl Props {
    /// First value of property `id`.
    pub(crate) fn get(&self, id: u8) -> Option<&Value> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }
    /// Every value of property `id`.
    pub(crate) fn all(&self, id: u8) -> Vec<&Value> {
        self.0
            .iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, v)| v)
            .collect()
    }
    /// An integer property of any width.
    pub(crate) fn int(&self, id: u8) -> Option<u32> {
        match self.get(id)? {
            Value::Byte(v) => Some(u32::from(*v)),
            Value::U16(v) => Some(u32::from(*v)),
            Value::U32(v) | Value::Varint(v) => Some(*v),
            _ => None,
        }
    }
    /// A string property.
    pub(crate) fn string(&self, id: u8) -> Option<&str> {
        match self.get(id)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Properties to encode.
#[derive(Debug, Clone, Default)]
pub(crate) struct PropsOut(Vec<u8>);

impl PropsOut {
    /// No properties.
    pub(crate) fn new() -> PropsOut {
        PropsOut::default()
    }
    /// Adds a one-byte property.
    pub(crate) fn byte(mut self, id: u8, v: u8) -> PropsOut {
        self.0.extend([id, v]);
        self
    }
    /// Adds a two-byte integer property.
    pub(crate) fn u16(mut self, id: u8, v: u16) -> PropsOut {
        self.0.push(id);
        self.0.extend(v.to_be_bytes());
        self
    }
    /// Adds a four-byte integer property.
    pub(crate) fn u32(mut self, id: u8, v: u32) -> PropsOut {
        self.0.push(id);
        self.0.extend(v.to_be_bytes());
        self
    }
    /// Adds a variable byte integer property.
    pub(crate) fn varint(mut self, id: u8, v: u32) -> PropsOut {
        self.0.push(id);
        put_varint(&mut self.0, v as usize);
        self
    }
    /// Adds a string property.
    pub(crate) fn str(mut self, id: u8, v: &str) -> PropsOut {
        self.0.push(id);
        put_bin(&mut self.0, v.as_bytes());
        self
    }
    /// Adds a binary property.
    pub(crate) fn bin(mut self, id: u8, v: &[u8]) -> PropsOut {
        self.0.push(id);
        put_bin(&mut self.0, v);
        self
    }
    /// Adds a user property.
    pub(crate) fn pair(mut self, k: &str, v: &str) -> PropsOut {
        self.0.push(prop::USER_PROPERTY);
        put_bin(&mut self.0, k.as_bytes());
        put_bin(&mut self.0, v.as_bytes());
        self
    }
    fn write(&self, out: &mut Vec<u8>) {
        put_varint(out, self.0.len());
        out.extend(&self.0);
    }
}

/// Appends a variable byte integer.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    loop {
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if v == 0 {
            break;
        }
    }
}

/// Appends a two-byte length and the bytes.
pub(crate) fn put_bin(out: &mut Vec<u8>, v: &[u8]) {
    let len = u16::try_from(v.len()).expect("field shorter than 64 KiB");
    out.extend(len.to_be_bytes());
    out.extend(v);
}

/// A whole packet from its first byte and body.
pub(crate) fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    put_varint(&mut out, body.len());
    out.extend(body);
    out
}

/// A will message for [`ConnectOpts`].
#[derive(Debug, Clone, Default)]
pub(crate) struct WillOpts {
    /// Will topic.
    pub(crate) topic: String,
    /// Will payload.
    pub(crate) payload: Vec<u8>,
    /// Will QoS.
    pub(crate) qos: u8,
    /// Will retain flag.
    pub(crate) retain: bool,
    /// Will properties (MQTT 5).
    pub(crate) props: PropsOut,
}

impl WillOpts {
    /// A QoS 0 will.
    pub(crate) fn new(topic: &str, payload: &[u8]) -> WillOpts {
        WillOpts {
            topic: topic.to_string(),
            payload: payload.to_vec(),
            ..WillOpts::default()
        }
    }
}

/// Everything CONNECT can say.
#[derive(Debug, Clone)]
pub(crate) struct ConnectOpts {
    /// MQTT 5 (level 5) or 3.1.1 (level 4).
    pub(crate) v5: bool,
    /// Client identifier (may be empty).
    pub(crate) client_id: String,
    /// Clean session / clean start.
    pub(crate) clean: bool,
    /// Keep alive in seconds.
    pub(crate) keep_alive: u16,
    /// User name.
    pub(crate) username: Option<String>,
    /// Password.
    pub(crate) password: Option<String>,
    /// Will message.
    pub(crate) will: Option<WillOpts>,
    /// CONNECT properties (MQTT 5).
    pub(crate) props: PropsOut,
}

impl ConnectOpts {
    /// An anonymous clean-session CONNECT with keep alive 60.
    pub(crate) fn new(v5: bool, client_id: &str) -> ConnectOpts {
        ConnectOpts {
            v5,
            client_id: client_id.to_string(),
            clean: true,
            keep_alive: 60,
            username: None,
            password: None,
            will: None,
            props: PropsOut::new(),
        }
    }
    /// A persistent session's CONNECT: clean session 0 (3.1.1), or clean start 0 with a
    /// Session Expiry Interval of `expiry_secs` (5.0).
    pub(crate) fn persistent(v5: bool, client_id: &str, expiry_secs: u32) -> ConnectOpts {
        let opts = ConnectOpts::new(v5, client_id).clean(false);
        if v5 {
            opts.props(PropsOut::new().u32(prop::SESSION_EXPIRY, expiry_secs))
        } else {
            opts
        }
    }
    /// With user name and password.
    pub(crate) fn auth(mut self, user: &str, password: &str) -> ConnectOpts {
        self.username = Some(user.to_string());
        self.password = Some(password.to_string());
        self
    }
    /// With the clean session / clean start flag.
    pub(crate) fn clean(mut self, clean: bool) -> ConnectOpts {
        self.clean = clean;
        self
    }
    /// With a will.
    pub(crate) fn will(mut self, will: WillOpts) -> ConnectOpts {
        self.will = Some(will);
        self
    }
    /// With a keep alive.
    pub(crate) fn keep_alive(mut self, secs: u16) -> ConnectOpts {
        self.keep_alive = secs;
        self
    }
    /// With CONNECT properties.
    pub(crate) fn props(mut self, props: PropsOut) -> ConnectOpts {
        self.props = props;
        self
    }
    /// The encoded packet.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        put_bin(&mut body, b"MQTT");
        body.push(if self.v5 { 5 } else { 4 });
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if let Some(will) = &self.will {
            flags |= 0x04 | (will.qos << 3);
            if will.retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        body.push(flags);
        body.extend(self.keep_alive.to_be_bytes());
        if self.v5 {
            self.props.write(&mut body);
        }
        put_bin(&mut body, self.client_id.as_bytes());
        if let Some(will) = &self.will {
            if self.v5 {
                will.props.write(&mut body);
            }
            put_bin(&mut body, will.topic.as_bytes());
            put_bin(&mut body, &will.payload);
        }
        if let Some(user) = &self.username {
            put_bin(&mut body, user.as_bytes());
        }
        if let Some(password) = &self.password {
            put_bin(&mut body, password.as_bytes());
        }
        packet(0x10, &body)
    }
}

/// An outgoing PUBLISH.
#[derive(Debug, Clone, Default)]
pub(crate) struct PublishOut {
    /// Topic name.
    pub(crate) topic: String,
    /// Payload.
    pub(crate) payload: Vec<u8>,
    /// QoS 0-2.
    pub(crate) qos: u8,
    /// Retain flag.
    pub(crate) retain: bool,
    /// DUP flag.
    pub(crate) dup: bool,
    /// Packet identifier (used when qos > 0).
    pub(crate) packet_id: u16,
    /// Properties (MQTT 5).
    pub(crate) props: PropsOut,
}

impl PublishOut {
    /// A QoS 0 message.
    pub(crate) fn new(topic: &str, payload: &[u8]) -> PublishOut {
        PublishOut {
            topic: topic.to_string(),
            payload: payload.to_vec(),
            packet_id: 1,
            ..PublishOut::default()
        }
    }
    /// With QoS and packet identifier.
    pub(crate) fn qos(mut self, qos: u8, packet_id: u16) -> PublishOut {
        self.qos = qos;
        self.packet_id = packet_id;
        self
    }
    /// With the retain flag.
    pub(crate) fn retain(mut self) -> PublishOut {
        self.retain = true;
        self
    }
    /// With properties.
    pub(crate) fn props(mut self, props: PropsOut) -> PublishOut {
        self.props = props;
        self
    }
    /// The encoded packet.
    pub(crate) fn encode(&self, v5: bool) -> Vec<u8> {
        let mut body = Vec::new();
        put_bin(&mut body, self.topic.as_bytes());
        if self.qos > 0 {
            body.extend(self.packet_id.to_be_bytes());
        }
        if v5 {
            self.props.write(&mut body);
        }
        body.extend(&self.payload);
        let first = 0x30 | (u8::from(self.dup) << 3) | (self.qos << 1) | u8::from(self.retain);
        packet(first, &body)
    }
}

/// SUBSCRIBE with one `(filter, options byte)` per entry; `sub_id` only for MQTT 5.
pub(crate) fn subscribe(
    v5: bool,
    packet_id: u16,
    filters: &[(&str, u8)],
    sub_id: Option<u32>,
) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if v5 {
        let mut props = PropsOut::new();
        if let Some(id) = sub_id {
            props = props.varint(prop::SUBSCRIPTION_ID, id);
        }
        props.write(&mut body);
    }
    for (filter, options) in filters {
        put_bin(&mut body, filter.as_bytes());
        body.push(*options);
    }
    packet(0x82, &body)
}

/// UNSUBSCRIBE.
pub(crate) fn unsubscribe(v5: bool, packet_id: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    for filter in filters {
        put_bin(&mut body, filter.as_bytes());
    }
    packet(0xA2, &body)
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP (by type) with success.
pub(crate) fn ack(kind: u8, packet_id: u16) -> Vec<u8> {
    let first = (kind << 4) | if kind == PUBREL { 0x02 } else { 0 };
    packet(first, &packet_id.to_be_bytes())
}

/// PINGREQ.
pub(crate) fn pingreq() -> Vec<u8> {
    vec![0xC0, 0x00]
}

/// DISCONNECT; MQTT 5 carries `reason`.
pub(crate) fn disconnect(v5: bool, reason: u8) -> Vec<u8> {
    if v5 {
        packet(0xE0, &[reason, 0])
    } else {
        vec![0xE0, 0x00]
    }
}

/// A packet as read from the wire: first byte and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawPacket {
    /// Fixed header first byte.
    pub(crate) first: u8,
    /// Everything after the remaining length.
    pub(crate) body: Vec<u8>,
}

/// A decoding failure, for test messages.
pub(crate) type ParseError = String;

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8]) -> Cursor<'a> {
        Cursor { data, pos: 0 }
    }
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if self.remaining() < n {
            return Err(format!(
                "need {n} bytes at offset {}, have {}",
                self.pos,
                self.remaining()
            ));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, ParseError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn varint(&mut self) -> Result<u32, ParseError> {
        let mut value = 0u32;
        for i in 0..4 {
            let b = self.u8()?;
            value |= u32::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("variable byte integer longer than 4 bytes".to_string())
    }
    fn bin(&mut self) -> Result<Vec<u8>, ParseError> {
        let n = self.u16()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn str(&mut self) -> Result<String, ParseError> {
        String::from_utf8(self.bin()?).map_err(|e| format!("invalid UTF-8 string: {e}"))
    }
    fn rest(&mut self) -> Vec<u8> {
        let s = self.data[self.pos..].to_vec();
        self.pos = self.data.len();
        s
    }
    fn props(&mut self) -> Result<Props, ParseError> {
        let len = self.varint()? as usize;
        let mut inner = Cursor::new(self.take(len)?);
        let mut props = Vec::new();
        while inner.remaining() > 0 {
            let id = inner.u8()?;
            let value = match id {
                0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => Value::Byte(inner.u8()?),
                0x13 | 0x21 | 0x22 | 0x23 => Value::U16(inner.u16()?),
                0x02 | 0x11 | 0x18 | 0x27 => Value::U32(inner.u32()?),
                0x0B => Value::Varint(inner.varint()?),
                0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => Value::Str(inner.str()?),
                0x09 | 0x16 => Value::Bin(inner.bin()?),
                0x26 => Value::Pair(inner.str()?, inner.str()?),
                other => return Err(format!("unknown property identifier {other:#04x}")),
            };
            props.push((id, value));
        }
        Ok(Props(props))
    }
}

/// A decoded CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnAck {
    /// Session present flag.
    pub(crate) session_present: bool,
    /// Return code (3.1.1) or reason code (5).
    pub(crate) code: u8,
    /// Properties (MQTT 5).
    pub(crate) props: Props,
}

/// A decoded PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublishIn {
    /// DUP flag.
    pub(crate) dup: bool,
    /// QoS.
    pub(crate) qos: u8,
    /// Retain flag.
    pub(crate) retain: bool,
    /// Topic name.
    pub(crate) topic: String,
    /// Packet identifier when qos > 0.
    pub(crate) packet_id: Option<u16>,
    /// Properties (MQTT 5).
    pub(crate) props: Props,
    /// Payload.
    pub(crate) payload: Vec<u8>,
}

/// A decoded PUBACK/PUBREC/PUBREL/PUBCOMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ack {
    /// Packet identifier.
    pub(crate) packet_id: u16,
    /// Reason code (0 when absent).
    pub(crate) reason: u8,
}

impl RawPacket {
    /// Packet type (upper nibble).
    pub(crate) fn kind(&self) -> u8 {
        self.first >> 4
    }
    /// Packet type name.
    pub(crate) fn name(&self) -> &'static str {
        type_name(self.kind())
    }
    /// The encoded packet again.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        packet(self.first, &self.body)
    }
    fn expect_kind(&self, kind: u8) -> Result<(), ParseError> {
        if self.kind() == kind {
            Ok(())
        } else {
            Err(format!(
                "expected {}, got {} {:02x?}",
                type_name(kind),
                self.name(),
                self.to_bytes()
            ))
        }
    }
    /// Decodes a CONNACK.
    pub(crate) fn connack(&self, v5: bool) -> Result<ConnAck, ParseError> {
        self.expect_kind(CONNACK)?;
        let mut c = Cursor::new(&self.body);
        let flags = c.u8()?;
        let code = c.u8()?;
        let props = if v5 && c.remaining() > 0 {
            c.props()?
        } else {
            Props::default()
        };
        Ok(ConnAck {
            session_present: flags & 1 == 1,
            code,
            props,
        })
    }
    /// Decodes a PUBLISH.
    pub(crate) fn publish(&self, v5: bool) -> Result<PublishIn, ParseError> {
        self.expect_kind(PUBLISH)?;
        let qos = (self.first >> 1) & 3;
        let mut c = Cursor::new(&self.body);
        let topic = c.str()?;
        let packet_id = if qos > 0 { Some(c.u16()?) } else { None };
        let props = if v5 { c.props()? } else { Props::default() };
        Ok(PublishIn {
            dup: self.first & 0x08 != 0,
            qos,
            retain: self.first & 1 == 1,
            topic,
            packet_id,
            props,
            payload: c.rest(),
        })
    }
    /// Decodes PUBACK/PUBREC/PUBREL/PUBCOMP.
    pub(crate) fn ack(&self, kind: u8) -> Result<Ack, ParseError> {
        self.expect_kind(kind)?;
        let mut c = Cursor::new(&self.body);
        let packet_id = c.u16()?;
        let reason = if c.remaining() > 0 { c.u8()? } else { 0 };
        Ok(Ack { packet_id, reason })
    }
    /// Decodes a SUBACK or UNSUBACK: packet identifier and reason codes.
    pub(crate) fn suback(&self, kind: u8, v5: bool) -> Result<(u16, Vec<u8>), ParseError> {
        self.expect_kind(kind)?;
        let mut c = Cursor::new(&self.body);
        let packet_id = c.u16()?;
        if v5 {
            c.props()?;
        }
        Ok((packet_id, c.rest()))
    }
    /// The reason code of a DISCONNECT (0 when absent).
    pub(crate) fn disconnect_reason(&self) -> Result<u8, ParseError> {
        self.expect_kind(DISCONNECT)?;
        Ok(self.body.first().copied().unwrap_or(0))
    }
}

/// Splits one packet off the front of `buf`: `Ok(None)` while incomplete.
pub(crate) fn split_packet(buf: &mut Vec<u8>) -> Result<Option<RawPacket>, ParseError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut len = 0usize;
    let mut i = 1;
    loop {
        if i >= buf.len() {
            return Ok(None);
        }
        if i > 4 {
            return Err("remaining length longer than 4 bytes".to_string());
        }
        let b = buf[i];
        len |= usize::from(b & 0x7F) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    if buf.len() < i + len {
        return Ok(None);
    }
    let first = buf[0];
    let body = buf[i..i + len].to_vec();
    buf.drain(..i + len);
    Ok(Some(RawPacket { first, body }))
}
