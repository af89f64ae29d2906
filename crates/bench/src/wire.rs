//! The generator's side of the wire: connecting over TCP or WebSocket, the CONNECT and SUBSCRIBE
//! handshakes, pre-encoded PUBLISH packets stamped for every send, and the run's clock.
//!
//! The bytes of each packet are [`crate::packets`]' business; this module moves them over
//! sockets. Depends on `packets`, `arrival`, tokio and tokio-tungstenite.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::arrival::{self, Arrival};
use crate::packets::{self, Answer, ConnectSpec, Protocol, QoS};

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
        let login = match (&target.credentials, role.publisher) {
            (Some((user, pass)), true) => Some((user.as_str(), pass.as_bytes())),
            _ => None,
        };
        let spec = ConnectSpec {
            protocol: target.protocol,
            clean_start: role.clean,
            keep_alive: target.keep_alive,
            client_id,
            login,
            session_expiry: (!role.clean).then_some(3600),
        };
        conn.send(|out| packets::connect(out, &spec)).await?;
        match conn.expect_answer().await? {
            Answer::ConnAck(0) => Ok(conn),
            Answer::ConnAck(code) => bail!(
                "{client_id}: CONNECT refused: {}",
                packets::refusal(code, conn.protocol)
            ),
            Answer::SubAck(_) => bail!("{client_id}: expected CONNACK, got SUBACK"),
            Answer::Other(name) => bail!("{client_id}: expected CONNACK, got {name}"),
        }
    }

    /// Subscribes to `filter` at `qos` and waits for the SUBACK.
    ///
    /// # Errors
    /// The broker refuses the subscription or the connection fails.
    pub(crate) async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        let protocol = self.protocol;
        self.send(|out| packets::subscribe(out, protocol, 1, filter, qos))
            .await?;
        match self.expect_answer().await? {
            Answer::SubAck(Some(code)) if code < 0x80 => Ok(()),
            Answer::SubAck(Some(code)) => bail!("SUBSCRIBE {filter} refused: {code:#04x}"),
            Answer::SubAck(None) => bail!("SUBSCRIBE {filter}: a SUBACK without a return code"),
            Answer::ConnAck(_) => bail!("expected SUBACK, got CONNACK"),
            Answer::Other(name) => bail!("expected SUBACK, got {name}"),
        }
    }

    /// Says goodbye with a DISCONNECT (normal disconnection: the broker drops the will).
    ///
    /// # Errors
    /// Writing fails.
    pub(crate) async fn disconnect(&mut self) -> anyhow::Result<()> {
        self.send(|out| {
            packets::disconnect(out);
            Ok(())
        })
        .await
    }

    /// Writes the packet that `write` appends to an empty buffer (handshakes and goodbyes:
    /// publishes and acknowledgements are batched by their loops instead).
    ///
    /// # Errors
    /// The packet cannot be written in MQTT, or the write fails.
    async fn send(
        &mut self,
        write: impl FnOnce(&mut BytesMut) -> Result<(), packets::PacketError>,
    ) -> anyhow::Result<()> {
        let mut packet = BytesMut::new();
        write(&mut packet)?;
        self.stream.write_all(&packet).await?;
        Ok(())
    }

    /// Reads the broker's answer to a handshake step.
    async fn expect_answer(&mut self) -> anyhow::Result<Answer> {
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        loop {
            if let Some(answer) = packets::take_answer(&mut self.rbuf, self.protocol)? {
                return Ok(answer);
            }
            if self.rbuf.len() > MAX_PACKET {
                bail!(
                    "the broker sent a packet of more than {MAX_PACKET} bytes during a handshake"
                );
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

/// A PUBLISH encoded once, stamped and copied out for every send.
#[derive(Debug, Clone)]
pub(crate) struct PublishTemplate {
    /// Fixed header and topic.
    head: Bytes,
    /// Properties (MQTT 5) and payload; the stamp is rewritten in place for every send.
    tail: BytesMut,
    /// Where the payload starts in `tail`.
    payload_at: usize,
    /// Whether a packet identifier goes between head and tail.
    with_id: bool,
}

impl PublishTemplate {
    /// Encodes a PUBLISH of `payload_len` bytes (at least [`STAMP_LEN`]) to `topic`.
    ///
    /// # Errors
    /// The payload is shorter than a stamp, or the topic too long for MQTT.
    pub(crate) fn new(
        topic: &str,
        payload_len: usize,
        qos: QoS,
        protocol: Protocol,
    ) -> anyhow::Result<PublishTemplate> {
        if payload_len < STAMP_LEN {
            bail!("payloads carry a {STAMP_LEN}-byte timestamp: --payload must be at least {STAMP_LEN}, got {payload_len}");
        }
        let parts = packets::publish_parts(topic, &vec![b'x'; payload_len], qos, protocol)?;
        Ok(PublishTemplate {
            head: parts.head.freeze(),
            payload_at: parts.tail.len() - payload_len,
            tail: parts.tail,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle;
    use crate::packets::{puback, scan, Frame};
    use firehose_codec as codec;

    /// What the broker's codec reads in `bytes`: a PUBLISH.
    fn decoded(bytes: &[u8], protocol: Protocol) -> codec::Publish {
        match oracle::reads(bytes, protocol) {
            codec::Packet::Publish(p) => p,
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
                assert_eq!(publish.qos, oracle::qos(qos));
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
            puback(&mut buf, 77);
            buf.extend_from_slice(&oracle::writes(&codec::Packet::PingResp, protocol));
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
}
