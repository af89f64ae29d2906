//! The MQTT client of `firehose sub` and `firehose pub`: one connection over TCP, TLS,
//! WebSocket or secure WebSocket, speaking the codec crate's packets. No background task: the
//! caller drives reads and writes, so it decides when a message is acknowledged.

use std::io;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use firehose_codec::{decode, encode, ConnAck, Connect, Packet, Protocol};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use super::net::{self, ByteStream, Scheme, ServerUrl, TlsOptions};

/// Largest packet accepted from a server.
const MAX_PACKET: usize = 64 << 20;
/// How long CONNACK may take.
const CONNACK_TIMEOUT: Duration = Duration::from_secs(10);

/// The byte stream under MQTT.
enum Stream {
    /// MQTT directly on TCP or TLS.
    Raw(ByteStream),
    /// MQTT in binary WebSocket frames.
    Ws(Box<WebSocketStream<ByteStream>>),
}

/// One MQTT connection after a successful CONNACK.
pub(crate) struct MqttClient {
    stream: Stream,
    rbuf: BytesMut,
    /// The MQTT version of the connection.
    pub(crate) protocol: Protocol,
    next_id: u16,
}

impl std::fmt::Debug for MqttClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttClient")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl MqttClient {
    /// Connects to `url` and sends `connect`; returns the client and the accepting CONNACK.
    ///
    /// # Errors
    /// Unreachable server, failed handshake, or a refusing CONNACK (with its reason).
    pub(crate) async fn connect(
        url: &ServerUrl,
        tls: &TlsOptions,
        connect: Connect,
    ) -> anyhow::Result<(MqttClient, ConnAck)> {
        if !url.scheme.mqtt() {
            bail!("{} is not an MQTT server URL", url.text);
        }
        let bytes = net::connect(url, tls).await?;
        let stream = match url.scheme {
            Scheme::Ws | Scheme::Wss => {
                let scheme = if url.scheme == Scheme::Wss {
                    "wss"
                } else {
                    "ws"
                };
                let target = format!("{scheme}://{}{}", url.authority(), url.path);
                let mut request = target
                    .as_str()
                    .into_client_request()
                    .with_context(|| format!("invalid WebSocket URL {target}"))?;
                request
                    .headers_mut()
                    .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
                let (ws, _) = tokio::time::timeout(
                    net::CONNECT_TIMEOUT,
                    tokio_tungstenite::client_async(request, bytes),
                )
                .await
                .with_context(|| format!("{}: no WebSocket upgrade in time", url.text))?
                .with_context(|| format!("WebSocket upgrade at {} failed", url.text))?;
                Stream::Ws(Box::new(ws))
            }
            _ => Stream::Raw(bytes),
        };
        let protocol = connect.protocol;
        let mut client = MqttClient {
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            protocol,
            next_id: 0,
        };
        client.send(&Packet::Connect(Box::new(connect))).await?;
        let packet = tokio::time::timeout(CONNACK_TIMEOUT, client.recv())
            .await
            .with_context(|| format!("{}: no CONNACK within {CONNACK_TIMEOUT:?}", url.text))??;
        match packet {
            Some(Packet::ConnAck(ack)) if !ack.reason.is_error() => Ok((client, ack)),
            Some(Packet::ConnAck(ack)) => {
                let why = ack
                    .properties
                    .reason_string
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                bail!(
                    "{} refused the connection: {:?} ({:#04x}){why}",
                    url.text,
                    ack.reason,
                    ack.reason.as_u8()
                )
            }
            Some(other) => bail!("{}: expected CONNACK, got {}", url.text, other.name()),
            None => bail!("{} closed the connection before CONNACK", url.text),
        }
    }

    /// A fresh packet identifier (1..=65535).
    pub(crate) fn packet_id(&mut self) -> u16 {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.next_id
    }

    /// Sends one packet.
    ///
    /// # Errors
    /// An unencodable packet or a broken connection.
    pub(crate) async fn send(&mut self, packet: &Packet) -> anyhow::Result<()> {
        let mut buf = BytesMut::new();
        encode(packet, self.protocol, &mut buf)
            .with_context(|| format!("cannot encode {}", packet.name()))?;
        let result = match &mut self.stream {
            Stream::Raw(s) => s.write_all(&buf).await,
            Stream::Ws(ws) => ws
                .send(WsMessage::Binary(buf.freeze()))
                .await
                .map_err(io::Error::other),
        };
        result.with_context(|| format!("cannot send {}", packet.name()))
    }

    /// The next packet, `None` when the server closed the connection. Cancel-safe: a
    /// cancelled call loses no bytes.
    ///
    /// # Errors
    /// A malformed packet or a broken connection.
    pub(crate) async fn recv(&mut self) -> anyhow::Result<Option<Packet>> {
        loop {
            if let Some(packet) = decode(&mut self.rbuf, self.protocol, MAX_PACKET)
                .map_err(|e| anyhow::anyhow!("malformed packet from the server: {e}"))?
            {
                return Ok(Some(packet));
            }
            let n = match &mut self.stream {
                Stream::Raw(s) => s.read_buf(&mut self.rbuf).await,
                Stream::Ws(ws) => loop {
                    match ws.next().await {
                        None | Some(Ok(WsMessage::Close(_))) => break Ok(0),
                        Some(Ok(WsMessage::Binary(data))) => {
                            self.rbuf.extend_from_slice(&data);
                            break Ok(data.len().max(1));
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => break Err(io::Error::other(e)),
                    }
                },
            }
            .context("connection to the server broke")?;
            if n == 0 {
                return Ok(None);
            }
        }
    }

    /// Sends DISCONNECT and closes the stream, ignoring errors (the server may be gone).
    pub(crate) async fn disconnect(mut self) {
        let _ = self
            .send(&Packet::Disconnect(firehose_codec::Disconnect::default()))
            .await;
        match &mut self.stream {
            Stream::Raw(s) => {
                let _ = s.shutdown().await;
            }
            Stream::Ws(ws) => {
                let _ = ws.send(WsMessage::Close(None)).await;
            }
        }
    }
}

/// Converts a user-supplied string to payload bytes.
pub(crate) fn bytes_of(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}
