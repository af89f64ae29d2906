//! The generator's side of the wire: connecting over TCP or WebSocket, the CONNECT and SUBSCRIBE
//! handshakes (with the codec crate), pre-encoded PUBLISH packets, and a scanner that reads
//! received frames without allocating.
//!
//! Why not the codec's `decode` for everything: a subscriber of a fan-out run receives up to a
//! million PUBLISH packets a second, and decoding each into a [`Publish`] (topic `String`,
//! properties) would make the generator the bottleneck. The scanner finds frame boundaries and
//! reads only the payload's [`Stamp`]; every other packet is handed to the codec.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use firehose_codec::{
    decode, encode, encode_publish_split, Connect, Packet, Protocol, PubResponse, Publish, QoS,
    ReasonCode, Subscribe, Subscription, SubscriptionOptions,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use super::arrival::{self, Arrival};

/// Largest packet the generator accepts from a broker.
const MAX_PACKET: usize = 16 << 20;
/// How long a handshake step (TCP, WebSocket upgrade, CONNACK, SUBACK) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes the generator reads from a socket at most at once.
pub(crate) const READ_CHUNK: usize = 64 * 1024;
/// Socket send buffer of publishers, bytes (the kernel doubles it).
const PUBLISHER_SNDBUF: u32 = 64 * 1024;

/// Bytes at the start of every payload the generator publishes: send time, sequence number and
/// publisher index, so a receiver knows latency and loss without any other channel.
pub(crate) const STAMP_LEN: usize = 20;

/// What the generator writes at the start of each payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Stamp {
    /// When the publish was written, in nanoseconds of the run's [`Clock`].
    pub(crate) sent_ns: u64,
    /// Per publisher, from 0.
    pub(crate) seq: u64,
    /// Which publisher sent it.
    pub(crate) publisher: u32,
}

impl Stamp {
    /// Writes the stamp into the first [`STAMP_LEN`] bytes of `payload` (which must be as long).
    fn write(&self, payload: &mut [u8]) {
        payload[0..8].copy_from_slice(&self.sent_ns.to_be_bytes());
        payload[8..16].copy_from_slice(&self.seq.to_be_bytes());
        payload[16..20].copy_from_slice(&self.publisher.to_be_bytes());
    }

    /// Reads a stamp from the start of a payload; `None` when the payload is too short (a
    /// message that someone else published on our topic).
    pub(crate) fn read(payload: &[u8]) -> Option<Stamp> {
        let field = |at: usize, len: usize| payload.get(at..at + len);
        Some(Stamp {
            sent_ns: u64::from_be_bytes(field(0, 8)?.try_into().ok()?),
            seq: u64::from_be_bytes(field(8, 8)?.try_into().ok()?),
            publisher: u32::from_be_bytes(field(16, 4)?.try_into().ok()?),
        })
    }
}

/// The run's time base: every stamp and every receive time is nanoseconds since it. Publishers
/// and subscribers live in one process, so one monotonic clock serves both ends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// Time zero.
    base: Instant,
}

impl Clock {
    /// A clock starting now.
    pub(crate) fn start() -> Clock {
        Clock {
            base: Instant::now(),
        }
    }

    /// Nanoseconds since time zero.
    pub(crate) fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant `ns` nanoseconds after time zero.
    pub(crate) fn at(&self, ns: u64) -> Instant {
        self.base + Duration::from_nanos(ns)
    }
}

/// How the generator reaches the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transport {
    /// MQTT over TCP.
    Tcp,
    /// MQTT over WebSocket (binary frames, subprotocol `mqtt`).
    Ws,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Broker host (an address or a name).
    pub(crate) host: String,
    /// MQTT over TCP port.
    pub(crate) port: u16,
    /// WebSocket port (for [`Transport::Ws`]).
    pub(crate) ws_port: u16,
    /// WebSocket path (for [`Transport::Ws`]).
    pub(crate) ws_path: String,
    /// MQTT version of every connection.
    pub(crate) protocol: Protocol,
    /// Keep alive asked for in CONNECT, seconds.
    pub(crate) keep_alive: u16,
    /// User name and password of publishers.
    pub(crate) credentials: Option<(String, String)>,
    /// Whether TCP connections ask the kernel for receive timestamps, so that latency ends
    /// when a delivery reached its socket (see [`arrival`]). Fixed-rate runs, where latency is
    /// the measurement, turn it on; at full speed latency is queueing, and with stamps the
    /// kernel no longer merges segments that wait in a receive queue, which costs the broker
    /// (it does the receiving side's work over loopback).
    pub(crate) stamp_arrivals: bool,
}

/// A connected byte stream to the broker.
pub(crate) enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// WebSocket over TCP; boxed because the handshake state is large.
    Ws(Box<WebSocketStream<TcpStream>>),
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stream::Tcp(_) => "Stream::Tcp",
            Stream::Ws(_) => "Stream::Ws",
        })
    }
}

impl Stream {
    /// Reads what is available into `buf` (0 bytes at the end of the stream), with the kernel's
    /// word on when it arrived where there is one (TCP with `stamped`).
    pub(crate) async fn read(&mut self, buf: &mut BytesMut, stamped: bool) -> io::Result<Arrival> {
        match self {
            Stream::Tcp(tcp) => arrival::read(tcp, buf, stamped).await,
            Stream::Ws(ws) => loop {
                match ws.next().await {
                    None | Some(Ok(WsMessage::Close(_))) => return Ok(Arrival::unstamped(0)),
                    Some(Ok(WsMessage::Binary(data))) => {
                        buf.extend_from_slice(&data);
                        return Ok(Arrival::unstamped(data.len()));
                    }
                    Some(Ok(_)) => continue, // ping, pong: tungstenite answers pings itself
                    Some(Err(error)) => return Err(io::Error::other(error)),
                }
            },
        }
    }

    /// Writes all of `data` (one binary frame on a WebSocket).
    pub(crate) async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Stream::Tcp(tcp) => tcp.write_all(data).await,
            Stream::Ws(ws) => ws
                .send(WsMessage::Binary(Bytes::copy_from_slice(data)))
                .await
                .map_err(io::Error::other),
        }
    }

    /// The TCP stream, for publishers that read and write from two tasks.
    ///
    /// # Errors
    /// The stream is a WebSocket.
    pub(crate) fn into_tcp(self) -> anyhow::Result<TcpStream> {
        match self {
            Stream::Tcp(tcp) => Ok(tcp),
            Stream::Ws(_) => bail!("publishers connect over TCP"),
        }
    }
}

/// An MQTT connection after CONNACK.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The byte stream.
    pub(crate) stream: Stream,
    /// Received bytes not yet scanned.
    pub(crate) rbuf: BytesMut,
    /// MQTT version.
    pub(crate) protocol: Protocol,
    /// The kernel stamps what arrives (see [`Target::stamp_arrivals`]).
    pub(crate) stamped: bool,
}

/// What a connection is for, which decides its credentials and session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Role {
    /// A publisher: logs in with the target's credentials (subscribers stay anonymous) and
    /// gets a small socket send buffer.
    pub(crate) publisher: bool,
    /// MQTT clean session / clean start.
    pub(crate) clean: bool,
}

/// Opens a TCP connection to the target's MQTT port (or its WebSocket port), from `source` when
/// given (idle-connection runs spread their connections over several loopback addresses, as one
/// address has only about 28,000 ephemeral ports).
async fn open(
    target: &Target,
    transport: Transport,
    source: Option<IpAddr>,
    publisher: bool,
) -> anyhow::Result<Stream> {
    let port = match transport {
        Transport::Tcp => target.port,
        Transport::Ws => target.ws_port,
    };
    let addr: SocketAddr = tokio::net::lookup_host((target.host.as_str(), port))
        .await
        .with_context(|| format!("cannot resolve {}", target.host))?
        .next()
        .with_context(|| format!("{} resolves to no address", target.host))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if publisher {
        // A small send buffer keeps an open-loop publisher from parking seconds of messages in
        // the kernel when the broker cannot keep up: they would show up as latency and, cut off
        // by the drain time, as loss, though the broker never saw them.
        socket.set_send_buffer_size(PUBLISHER_SNDBUF)?;
    }
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("cannot bind a local address on {ip}"))?;
    }
    let tcp = socket
        .connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    if target.stamp_arrivals {
        arrival::enable(&tcp).context("cannot ask for receive timestamps (SO_TIMESTAMPNS)")?;
    }
    match transport {
        Transport::Tcp => Ok(Stream::Tcp(tcp)),
        Transport::Ws => {
            let url = format!("ws://{}:{}{}", target.host, port, target.ws_path);
            let mut request = url.as_str().into_client_request()?;
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
            let (ws, _) = tokio_tungstenite::client_async(request, tcp)
                .await
                .with_context(|| format!("WebSocket upgrade at {url} failed"))?;
            Ok(Stream::Ws(Box::new(ws)))
        }
    }
}

impl Conn {
    /// Connects and completes CONNECT/CONNACK.
    ///
    /// # Errors
    /// The connection fails, times out, or the broker refuses the CONNECT.
    pub(crate) async fn connect(
        target: &Target,
        transport: Transport,
        client_id: &str,
        role: Role,
        source: Option<IpAddr>,
    ) -> anyhow::Result<Conn> {
        let opening = open(target, transport, source, role.publisher);
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, opening)
            .await
            .context("connecting timed out")??;
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(4096),
            protocol: target.protocol,
            stamped: target.stamp_arrivals && transport == Transport::Tcp,
        };
        let (username, password) = match (&target.credentials, role.publisher) {
            (Some((user, pass)), true) => (
                Some(user.clone()),
                Some(Bytes::copy_from_slice(pass.as_bytes())),
            ),
            _ => (None, None),
        };
        let mut connect = Connect {
            protocol: target.protocol,
            clean_start: role.clean,
            keep_alive: target.keep_alive,
            client_id: client_id.to_string(),
            username,
            password,
            ..Connect::default()
        };
        if !role.clean && target.protocol == Protocol::V5 {
            connect.properties.session_expiry_interval = Some(3600);
        }
        conn.send(&Packet::Connect(Box::new(connect))).await?;
        match conn.expect_packet().await? {
            Packet::ConnAck(ack) if ack.reason == ReasonCode::Success => Ok(conn),
            Packet::ConnAck(ack) => bail!("{client_id}: CONNECT refused: {:?}", ack.reason),
            other => bail!("{client_id}: expected CONNACK, got {}", other.name()),
        }
    }

    /// Subscribes to `filter` at `qos` and waits for the SUBACK.
    ///
    /// # Errors
    /// The broker refuses the subscription or the connection fails.
    pub(crate) async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        let subscribe = Subscribe {
            packet_id: 1,
            subscriptions: vec![Subscription {
                filter: filter.to_string(),
                options: SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            }],
            ..Subscribe::default()
        };
        self.send(&Packet::Subscribe(subscribe)).await?;
        match self.expect_packet().await? {
            Packet::SubAck(ack) => match ack.reasons.first() {
                Some(reason) if !reason.is_error() => Ok(()),
                other => bail!("SUBSCRIBE {filter} refused: {other:?}"),
            },
            other => bail!("expected SUBACK, got {}", other.name()),
        }
    }

    /// Encodes and writes one packet.
    ///
    /// # Errors
    /// Encoding or writing fails.
    pub(crate) async fn send(&mut self, packet: &Packet) -> anyhow::Result<()> {
        let mut buf = BytesMut::new();
        encode(packet, self.protocol, &mut buf)?;
        self.stream.write_all(&buf).await?;
        Ok(())
    }

    /// Reads the next packet with the codec (handshakes only).
    async fn expect_packet(&mut self) -> anyhow::Result<Packet> {
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        loop {
            if let Some(packet) = decode(&mut self.rbuf, self.protocol, MAX_PACKET)? {
                return Ok(packet);
            }
            let reading = self.stream.read(&mut self.rbuf, self.stamped);
            let read = tokio::time::timeout_at(deadline, reading)
                .await
                .context("no answer from the broker")??;
            if read.bytes == 0 {
                bail!("the broker closed the connection");
            }
        }
    }
}

/// A PUBLISH encoded once with the codec, stamped and copied out for every send.
#[derive(Debug, Clone)]
pub(crate) struct PublishTemplate {
    /// Fixed header and topic.
    head: Bytes,
    /// Properties (MQTT 5) and payload; the stamp is rewritten in place for every send.
    tail: Vec<u8>,
    /// Where the payload starts in `tail`.
    payload_at: usize,
    /// Whether a packet identifier goes between head and tail.
    with_id: bool,
}

impl PublishTemplate {
    /// Encodes a PUBLISH of `payload_len` bytes (at least [`STAMP_LEN`]) to `topic`.
    ///
    /// # Errors
    /// The payload is shorter than a stamp, or the codec cannot encode the packet.
    pub(crate) fn new(
        topic: &str,
        payload_len: usize,
        qos: QoS,
        protocol: Protocol,
    ) -> anyhow::Result<PublishTemplate> {
        if payload_len < STAMP_LEN {
            bail!("payloads carry a {STAMP_LEN}-byte timestamp: --payload must be at least {STAMP_LEN}, got {payload_len}");
        }
        let publish = Publish {
            qos,
            topic: topic.to_string(),
            packet_id: (qos != QoS::AtMostOnce).then_some(1),
            payload: Bytes::from(vec![b'x'; payload_len]),
            ..Publish::default()
        };
        let parts = encode_publish_split(&publish, protocol)?;
        let tail = parts.tail.to_vec();
        Ok(PublishTemplate {
            head: parts.head,
            payload_at: tail.len() - payload_len,
            tail,
            with_id: qos != QoS::AtMostOnce,
        })
    }

    /// Whether the broker acknowledges these publishes (QoS 1).
    pub(crate) fn acknowledged(&self) -> bool {
        self.with_id
    }

    /// Bytes of one packet.
    pub(crate) fn len(&self) -> usize {
        self.head.len() + self.tail.len() + if self.with_id { 2 } else { 0 }
    }

    /// Appends one PUBLISH carrying `stamp` (and `packet_id` for QoS 1) to `out`.
    pub(crate) fn append(&mut self, out: &mut BytesMut, packet_id: u16, stamp: &Stamp) {
        out.extend_from_slice(&self.head);
        if self.with_id {
            out.extend_from_slice(&packet_id.to_be_bytes());
        }
        stamp.write(&mut self.tail[self.payload_at..]);
        out.extend_from_slice(&self.tail);
    }
}

/// Appends a PUBACK for `packet_id` to `out`, with the codec.
pub(crate) fn append_puback(out: &mut BytesMut, packet_id: u16, protocol: Protocol) {
    let ack = Packet::PubAck(PubResponse {
        packet_id,
        ..PubResponse::default()
    });
    // A PUBACK without properties always encodes.
    let _ = encode(&ack, protocol, out);
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
    /// Anything else, whole (fixed header included), for the codec.
    Other(&'a [u8]),
}

/// Why [`scan`] gave up: the broker sent bytes that are not MQTT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed packet from the broker: {0}")]
pub(crate) struct ScanError(&'static str);

/// Calls `each` for every complete frame at the start of `buf` and returns how many bytes they
/// took; an incomplete frame at the end is left for the next read.
///
/// # Errors
/// A remaining length longer than four bytes, or a PUBLISH too short for its own fields.
pub(crate) fn scan(
    buf: &[u8],
    protocol: Protocol,
    mut each: impl FnMut(Frame<'_>),
) -> Result<usize, ScanError> {
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        let Some(&first) = rest.first() else {
            return Ok(at);
        };
        let Some((remaining, len_len)) = read_varint(&rest[1..])? else {
            return Ok(at);
        };
        let size = 1 + len_len + remaining;
        if rest.len() < size {
            return Ok(at);
        }
        let body = &rest[1 + len_len..size];
        let frame = match first >> 4 {
            3 => publish_frame(first, body, protocol)?,
            4 if body.len() >= 2 => Frame::PubAck(u16::from_be_bytes([body[0], body[1]])),
            _ => Frame::Other(&rest[..size]),
        };
        each(frame);
        at += size;
    }
}

/// The remaining length at the start of `bytes` and its own length; `None` while incomplete.
fn read_varint(bytes: &[u8]) -> Result<Option<(usize, usize)>, ScanError> {
    let mut value = 0usize;
    for (i, byte) in bytes.iter().enumerate().take(4) {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        return Err(ScanError("remaining length longer than 4 bytes"));
    }
    Ok(None)
}

fn publish_frame(first: u8, body: &[u8], protocol: Protocol) -> Result<Frame<'_>, ScanError> {
    let qos = (first >> 1) & 0x03;
    let short = ScanError("PUBLISH shorter than its fields");
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
        let (props_len, len_len) = read_varint(body.get(at..).ok_or(short.clone())?)?
            .ok_or(ScanError("PUBLISH properties length cut short"))?;
        at += len_len + props_len;
    }
    let payload = body.get(at..).ok_or(short)?;
    Ok(Frame::Publish {
        qos,
        packet_id,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(bytes: &[u8], protocol: Protocol) -> Publish {
        let mut buf = BytesMut::from(bytes);
        match decode(&mut buf, protocol, MAX_PACKET) {
            Ok(Some(Packet::Publish(p))) => p,
            other => panic!("expected a PUBLISH, got {other:?}"),
        }
    }

    #[test]
    fn stamp_round_trip() {
        let stamp = Stamp {
            sent_ns: 123_456_789_012,
            seq: 42,
            publisher: 7,
        };
        let mut payload = [0u8; 32];
        stamp.write(&mut payload);
        assert_eq!(Stamp::read(&payload), Some(stamp));
        assert_eq!(Stamp::read(&payload[..STAMP_LEN - 1]), None);
    }

    #[test]
    fn template_encodes_what_the_codec_decodes() {
        for protocol in [Protocol::V311, Protocol::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
                let mut template =
                    PublishTemplate::new("bench/x/fanout", 256, qos, protocol).expect("template");
                let mut out = BytesMut::new();
                let stamp = Stamp {
                    sent_ns: 99,
                    seq: 3,
                    publisher: 1,
                };
                template.append(&mut out, 513, &stamp);
                assert_eq!(out.len(), template.len());
                let publish = decoded(&out, protocol);
                assert_eq!(publish.topic, "bench/x/fanout");
                assert_eq!(publish.qos, qos);
                assert_eq!(publish.payload.len(), 256);
                assert_eq!(Stamp::read(&publish.payload), Some(stamp));
                let expected_id = (qos != QoS::AtMostOnce).then_some(513);
                assert_eq!(publish.packet_id, expected_id);
            }
        }
    }

    #[test]
    fn template_refuses_a_payload_too_short_for_the_stamp() {
        assert!(PublishTemplate::new("t", STAMP_LEN - 1, QoS::AtMostOnce, Protocol::V311).is_err());
    }

    #[test]
    fn scan_finds_publishes_acks_and_others_and_keeps_a_partial_frame() {
        for protocol in [Protocol::V311, Protocol::V5] {
            let mut template =
                PublishTemplate::new("a/b", 40, QoS::AtLeastOnce, protocol).expect("template");
            let mut buf = BytesMut::new();
            for seq in 0..3 {
                let stamp = Stamp {
                    sent_ns: 1000 + seq,
                    seq,
                    publisher: 0,
                };
                template.append(&mut buf, seq as u16 + 1, &stamp);
            }
            append_puback(&mut buf, 77, protocol);
            encode(&Packet::PingResp, protocol, &mut buf).expect("PINGRESP");
            let whole = buf.len();
            template.append(&mut buf, 9, &Stamp::default());
            let partial = &buf[..buf.len() - 5];

            let mut seen = Vec::new();
            let used = scan(partial, protocol, |frame| {
                seen.push(match frame {
                    Frame::Publish {
                        qos,
                        packet_id,
                        payload,
                    } => format!(
                        "publish qos{qos} id{packet_id:?} seq{}",
                        Stamp::read(payload).expect("stamp").seq
                    ),
                    Frame::PubAck(id) => format!("puback {id}"),
                    Frame::Other(bytes) => format!("other {bytes:?}"),
                })
            })
            .expect("well formed");
            assert_eq!(used, whole, "{protocol:?}");
            assert_eq!(
                seen,
                [
                    "publish qos1 idSome(1) seq0",
                    "publish qos1 idSome(2) seq1",
                    "publish qos1 idSome(3) seq2",
                    "puback 77",
                    "other [208, 0]",
                ],
                "{protocol:?}"
            );
        }
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
        let publish = Publish {
            topic: "t".into(),
            payload: Bytes::from_static(&[1u8; 24]),
            properties: firehose_codec::PublishProperties {
                content_type: Some("application/json".into()),
                ..Default::default()
            },
            ..Publish::default()
        };
        let mut buf = BytesMut::new();
        encode(&Packet::Publish(publish), Protocol::V5, &mut buf).expect("encode");
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
