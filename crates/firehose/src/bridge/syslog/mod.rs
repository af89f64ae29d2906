//! Syslog: log lines from hosts and log shippers, published to `logs/<host>/<app>`.
//!
//! Three listeners, each optional (`[[bridge.syslog]]`):
//! - `udp`: one RFC 5424 or RFC 3164 message per datagram;
//! - `tcp`: a stream of messages framed as RFC 6587 says, by octet counting (`LEN SP MSG`) or
//!   by newlines, frame by frame;
//! - `json_tcp`: newline-delimited JSON objects from log shippers (Vector, Fluent Bit...).
//!
//! Messages are parsed with `syslog_loose` ([`parse`]); the payload is JSON (time, severity,
//! facility, host, app, procid, msgid, message, structured data; see `docs/topics.md`).
//! Each connection is read in order and each event is durable before the next frame is read,
//! so a TCP sender is slowed down by the log rather than buffered without bound. A message
//! that is not syslog (or JSON), or is longer than `max_line_bytes`, is counted as a refused
//! input and logged (at most one warning per second per bridge); it never closes the listener.
//!
//! Depends on the bridge framework ([`super`]) only. Its table,
//! `[[bridge.syslog]]`, and the table's checks are in [`config`].

pub mod config;
mod parse;

pub use config::SyslogBridgeConfig;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chrono::Utc;
use firehose_codec::PublishProperties;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use self::parse::{Frame, Framer, LogEvent};
use super::{BridgeContext, BridgeError, BuiltBridge, Throttle};

/// First topic level of every log event.
const TOPIC_ROOT: &str = "logs";

/// Bytes read from a TCP connection at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Larger than any UDP datagram (65,507 bytes of payload over IPv4, 65,527 over IPv6).
const MAX_DATAGRAM: usize = 65_536;

/// What a listener receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    /// Syslog messages over UDP.
    Udp,
    /// Syslog messages over TCP.
    Tcp,
    /// JSON lines over TCP.
    JsonTcp,
}

impl Input {
    /// The listener's name, as in the config.
    fn as_str(self) -> &'static str {
        match self {
            Input::Udp => "udp",
            Input::Tcp => "tcp",
            Input::JsonTcp => "json_tcp",
        }
    }
}

/// Sockets bound at build time, so that a busy address stops `serve` at start.
struct Sockets {
    /// The UDP socket.
    udp: Option<std::net::UdpSocket>,
    /// The syslog TCP listener.
    tcp: Option<std::net::TcpListener>,
    /// The JSON-lines TCP listener.
    json_tcp: Option<std::net::TcpListener>,
}

/// Binds the listeners of one `[[bridge.syslog]]` table (so that a busy address stops `serve`
/// at start) and returns the task that serves them.
fn build(config: &SyslogBridgeConfig, cx: BridgeContext) -> Result<BuiltBridge, BridgeError> {
    let name = &config.name;
    let bind_error = |input: Input, addr: SocketAddr, e: std::io::Error| BridgeError::Invalid {
        bridge: name.clone(),
        message: format!("cannot bind the {} listener on {addr}: {e}", input.as_str()),
    };
    let udp = match config.udp {
        Some(addr) => {
            let socket = std::net::UdpSocket::bind(addr)
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .map_err(|e| bind_error(Input::Udp, addr, e))?;
            let bound = socket.local_addr().unwrap_or(addr);
            info!(addr = %bound, "bridge {name}: syslog UDP listener bound");
            Some(socket)
        }
        None => None,
    };
    let tcp_listener = |input: Input, addr: Option<SocketAddr>, label: &str| {
        let Some(addr) = addr else {
            return Ok(None);
        };
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| bind_error(input, addr, e))?;
        let bound = listener.local_addr().unwrap_or(addr);
        info!(addr = %bound, "bridge {name}: {label} listener bound");
        Ok::<_, BridgeError>(Some(listener))
    };
    let tcp = tcp_listener(Input::Tcp, config.tcp, "syslog TCP")?;
    let json_tcp = tcp_listener(Input::JsonTcp, config.json_tcp, "JSON lines TCP")?;
    let sockets = Sockets { udp, tcp, json_tcp };
    let limits = Limits {
        max_line: config.max_line_bytes,
        connections: Arc::new(Semaphore::new(config.max_connections)),
    };
    Ok(BuiltBridge {
        task: Some(Box::pin(run(cx, sockets, limits))),
        routes: None,
    })
}

/// Limits shared by the listeners of one bridge.
#[derive(Debug, Clone)]
struct Limits {
    /// Longest message accepted.
    max_line: usize,
    /// TCP connections that may be open.
    connections: Arc<Semaphore>,
}

/// Counts and logs refused inputs, with at most one warning a second per bridge.
#[derive(Debug, Default)]
struct Refusals {
    /// Rations the warnings.
    throttle: Throttle,
}

impl Refusals {
    /// Counts one refused input from `peer` on `input` and logs why.
    fn refuse(&self, cx: &BridgeContext, input: Input, peer: SocketAddr, reason: &str, raw: &[u8]) {
        cx.rejected();
        let sample = String::from_utf8_lossy(&raw[..raw.len().min(80)]).into_owned();
        match self.throttle.warning() {
            Some(quiet) => warn!(
                bridge = %cx.state().name(),
                listener = input.as_str(),
                %peer,
                also_refused = quiet,
                sample = ?sample,
                "refused input: {reason}"
            ),
            None => debug!(bridge = %cx.state().name(), listener = input.as_str(), %peer,
                sample = ?sample, "refused input: {reason}"),
        }
    }
}

/// Runs the listeners until shutdown.
async fn run(cx: BridgeContext, sockets: Sockets, limits: Limits) {
    cx.set_state("listening", true).await;
    let refusals = Arc::new(Refusals::default());
    let mut listeners = JoinSet::new();
    if let Some(socket) = sockets.udp {
        listeners.spawn(udp_loop(
            cx.clone(),
            socket,
            limits.max_line,
            refusals.clone(),
        ));
    }
    for (input, listener) in [
        (Input::Tcp, sockets.tcp),
        (Input::JsonTcp, sockets.json_tcp),
    ] {
        if let Some(listener) = listener {
            listeners.spawn(tcp_loop(
                cx.clone(),
                listener,
                input,
                limits.clone(),
                refusals.clone(),
            ));
        }
    }
    cx.shutdown().await;
    // Dropping the set aborts the listeners, and with them their connections.
    listeners.shutdown().await;
}

/// Receives datagrams, one message each.
async fn udp_loop(
    cx: BridgeContext,
    socket: std::net::UdpSocket,
    max_line: usize,
    refusals: Arc<Refusals>,
) {
    let socket = match UdpSocket::from_std(socket) {
        Ok(socket) => socket,
        Err(e) => {
            cx.error(format!("UDP listener: {e}"));
            return;
        }
    };
    // Room for a message at the limit, its line ending (`\r\n`, which some senders add and
    // which is not counted, as over TCP) and one byte more: a datagram that fills the buffer
    // may have been cut by the kernel, and is over the limit.
    let mut buf = vec![0u8; max_line.saturating_add(3).min(MAX_DATAGRAM)];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                debug!(bridge = %cx.state().name(), "UDP receive: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let datagram = &buf[..n];
        let message = parse::without_line_ending(datagram);
        if message.len() > max_line || (n == buf.len() && n < MAX_DATAGRAM) {
            refusals.refuse(
                &cx,
                Input::Udp,
                peer,
                "datagram over max_line_bytes",
                datagram,
            );
            continue;
        }
        // Empty datagrams are not messages (load balancers probe UDP ports with them).
        if datagram.iter().all(|b| b.is_ascii_whitespace() || *b == 0) {
            continue;
        }
        handle(&cx, Input::Udp, peer, datagram, &refusals).await;
    }
}

/// Accepts connections, at most `limits.connections` open at once.
async fn tcp_loop(
    cx: BridgeContext,
    listener: std::net::TcpListener,
    input: Input,
    limits: Limits,
    refusals: Arc<Refusals>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            cx.error(format!("{} listener: {e}", input.as_str()));
            return;
        }
    };
    // Dropped with this task: every connection stops with its listener.
    let mut connections = JoinSet::new();
    loop {
        let Ok(permit) = limits.connections.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, mostly: wait instead of spinning.
                warn!(bridge = %cx.state().name(), listener = input.as_str(), "accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(connection(
            cx.clone(),
            stream,
            peer,
            input,
            limits.max_line,
            refusals.clone(),
            permit,
        ));
    }
}

/// Reads one TCP connection to its end, frame by frame.
async fn connection(
    cx: BridgeContext,
    mut stream: TcpStream,
    peer: SocketAddr,
    input: Input,
    max_line: usize,
    refusals: Arc<Refusals>,
    _permit: OwnedSemaphorePermit,
) {
    let mut framer = Framer::new(max_line, input == Input::Tcp);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        while let Some(frame) = framer.next(&mut buf) {
            match frame {
                Frame::Message(message) => handle(&cx, input, peer, &message, &refusals).await,
                Frame::Oversized(len) => {
                    let what = format!("message of {len} bytes over max_line_bytes");
                    refusals.refuse(&cx, input, peer, &what, b"");
                }
            }
        }
        buf.reserve(READ_CHUNK);
        match stream.read_buf(&mut buf).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                debug!(bridge = %cx.state().name(), %peer, "connection lost: {e}");
                break;
            }
        }
    }
    match framer.finish(&mut buf) {
        Ok(Some(last)) => handle(&cx, input, peer, &last, &refusals).await,
        Ok(None) => {}
        Err(len) => {
            let what = format!("connection closed inside an octet-counted frame ({len} bytes)");
            refusals.refuse(&cx, input, peer, &what, b"");
        }
    }
}

/// Parses one message and publishes it; refuses what does not parse.
async fn handle(
    cx: &BridgeContext,
    input: Input,
    peer: SocketAddr,
    raw: &[u8],
    refusals: &Refusals,
) {
    let ip: IpAddr = peer.ip().to_canonical();
    let parsed = match input {
        Input::Udp | Input::Tcp => parse::syslog_event(raw, ip, Utc::now()),
        Input::JsonTcp => parse::json_event(raw, ip, Utc::now()),
    };
    match parsed {
        Ok(event) => publish(cx, event).await,
        Err(reason) => refusals.refuse(cx, input, peer, reason, raw),
    }
}

/// Publishes one event as JSON; failures are counted and logged by the framework.
async fn publish(cx: &BridgeContext, event: LogEvent) {
    let topic = format!("{TOPIC_ROOT}/{}/{}", event.host, event.app);
    let properties = PublishProperties {
        content_type: Some("application/json".into()),
        ..PublishProperties::default()
    };
    let payload = Bytes::from(event.payload.to_string());
    let _ = cx.publish_with(&topic, payload, properties).await;
}
