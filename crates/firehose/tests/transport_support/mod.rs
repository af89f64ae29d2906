//! Helpers for the transport tests (`transport_*.rs`), on top of `common`:
//! - [`start`]: the server with its HTTP, HTTPS and MQTTS listeners on free loopback ports, and
//!   the addresses it logged;
//! - [`Pki`]: a CA, server and client certificates made with the `openssl` command;
//! - [`MqttConn`]: an async MQTT client over WebSocket (ws/wss), TLS or TCP that speaks through
//!   `common::wire`, so it shares no code with the broker;
//! - [`http_get`]: a bare HTTP/1.1 request.
//!
//! Every wait is bounded by `common::TIMEOUT`.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::common::wire::{self, ConnAck, ConnectOpts, PublishIn, PublishOut, RawPacket};
use crate::common::{Server, ServerOptions, PUB_PASSWORD, TIMEOUT};

/// The addresses a started server logged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Addrs {
    /// MQTT over TCP.
    pub(crate) mqtt: SocketAddr,
    /// HTTP, when asked for.
    pub(crate) http: Option<SocketAddr>,
    /// HTTPS, when asked for.
    pub(crate) https: Option<SocketAddr>,
    /// MQTT over TLS, when asked for.
    pub(crate) mqtts: Option<SocketAddr>,
}

impl Addrs {
    /// The HTTP address.
    pub(crate) fn http(&self) -> SocketAddr {
        self.http.expect("the HTTP listener was started")
    }
    /// The HTTPS address.
    pub(crate) fn https(&self) -> SocketAddr {
        self.https.expect("the HTTPS listener was started")
    }
    /// The MQTTS address.
    pub(crate) fn mqtts(&self) -> SocketAddr {
        self.mqtts.expect("the MQTTS listener was started")
    }
}

/// Which listeners to open besides MQTT (all on 127.0.0.1, port 0).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Listeners {
    /// `--http 127.0.0.1:0`.
    pub(crate) http: bool,
    /// `--https 127.0.0.1:0` (needs a certificate in the config or flags).
    pub(crate) https: bool,
    /// `--mqtts 127.0.0.1:0` (needs a certificate in the config or flags).
    pub(crate) mqtts: bool,
}

/// HTTP only.
pub(crate) const HTTP: Listeners = Listeners {
    http: true,
    https: false,
    mqtts: false,
};

/// Starts the server with the chosen listeners and waits until each logged its address.
pub(crate) fn start(mut options: ServerOptions, listeners: Listeners) -> (Server, Addrs) {
    let mut flags = Vec::new();
    for (on, flag) in [
        (listeners.http, "--http"),
        (listeners.https, "--https"),
        (listeners.mqtts, "--mqtts"),
    ] {
        if on {
            flags.push(flag.to_string());
            flags.push("127.0.0.1:0".to_string());
        }
    }
    flags.append(&mut options.extra_args);
    options.extra_args = flags;
    let server = Server::start(options);
    let addrs = Addrs {
        mqtt: server.addr,
        http: listeners.http.then(|| logged_addr(&server, "HTTP")),
        https: listeners.https.then(|| logged_addr(&server, "HTTPS")),
        mqtts: listeners.mqtts.then(|| logged_addr(&server, "MQTTS")),
    };
    (server, addrs)
}

/// The address in the server's `<NAME> listener bound addr=...` line.
pub(crate) fn logged_addr(server: &Server, name: &str) -> SocketAddr {
    let mark = format!(" {name} listener bound addr=");
    let line = wait_for_log(server, &mark);
    let start = line.find(&mark).expect("mark") + mark.len();
    let rest = &line[start..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    rest[..end]
        .trim_matches('"')
        .parse()
        .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"))
}

/// Waits until the server logged a line containing `needle`; returns that line.
pub(crate) fn wait_for_log(server: &Server, needle: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let log = server.log();
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the server logged no {needle:?} within {TIMEOUT:?}; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Counts the server's log lines containing `needle`.
pub(crate) fn log_count(server: &Server, needle: &str) -> usize {
    server.log().lines().filter(|l| l.contains(needle)).count()
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub(crate) struct CertFiles {
    /// PEM certificate.
    pub(crate) cert: PathBuf,
    /// PEM private key.
    pub(crate) key: PathBuf,
}

/// A test CA in a directory, made with the `openssl` command.
#[derive(Debug)]
pub(crate) struct Pki {
    dir: PathBuf,
    /// The CA certificate.
    pub(crate) ca: PathBuf,
    ca_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (is it installed?)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// A new CA named `name` (P-256 keys: fast to make).
    pub(crate) fn new(dir: &Path, name: &str) -> Pki {
        std::fs::create_dir_all(dir).expect("create PKI dir");
        let ca = dir.join(format!("{name}.pem"));
        let ca_key = dir.join(format!("{name}.key"));
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/O=Firehose tests/CN={name}"),
                "-keyout",
                path_str(&ca_key),
                "-out",
                path_str(&ca),
            ],
        );
        Pki {
            dir: dir.to_path_buf(),
            ca,
            ca_key,
        }
    }

    fn issue(&self, file: &str, cn: &str, extensions: &str) -> CertFiles {
        let key = self.dir.join(format!("{file}.key"));
        let csr = self.dir.join(format!("{file}.csr"));
        let cert = self.dir.join(format!("{file}.pem"));
        let ext = self.dir.join(format!("{file}.ext"));
        std::fs::write(&ext, extensions).expect("write extensions");
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/O=Firehose tests/CN={cn}"),
                "-keyout",
                path_str(&key),
                "-out",
                path_str(&csr),
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                path_str(&csr),
                "-CA",
                path_str(&self.ca),
                "-CAkey",
                path_str(&self.ca_key),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                path_str(&ext),
                "-out",
                path_str(&cert),
            ],
        );
        CertFiles { cert, key }
    }

    /// A server certificate for `localhost` and 127.0.0.1, with subject CN `cn`.
    pub(crate) fn server(&self, file: &str, cn: &str) -> CertFiles {
        self.issue(
            file,
            cn,
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n\
             subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
    }

    /// A client certificate with subject CN `cn`.
    pub(crate) fn client(&self, file: &str, cn: &str) -> CertFiles {
        self.issue(
            file,
            cn,
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
        )
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// TOML for `[tls]` with these files.
pub(crate) fn tls_toml(server: &CertFiles, client_ca: Option<&Path>, required: bool) -> String {
    let mut text = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n",
        path_str(&server.cert),
        path_str(&server.key)
    );
    if let Some(ca) = client_ca {
        text.push_str(&format!("client_ca = {:?}\n", path_str(ca)));
    }
    if required {
        text.push_str("client_cert_required = true\n");
    }
    text
}

/// A TLS client configuration trusting `ca`, presenting `client` if given.
pub(crate) fn client_config(ca: &Path, client: Option<&CertFiles>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let config = match client {
        Some(files) => {
            let certs = CertificateDer::pem_file_iter(&files.cert)
                .expect("read client cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("client cert PEM");
            let key = PrivateKeyDer::from_pem_file(&files.key).expect("client key");
            builder
                .with_client_auth_cert(certs, key)
                .expect("client cert and key")
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// Opens TLS to `addr` as `localhost`.
pub(crate) async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::other("TCP connect timed out"))??;
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

// ---------------------------------------------------------------------------------------------
// An async MQTT client over any transport
// ---------------------------------------------------------------------------------------------

/// A byte stream.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What carries the MQTT bytes.
pub(crate) enum Link {
    /// WebSocket frames.
    Ws(Box<WebSocketStream<Box<dyn Io>>>),
    /// A plain byte stream (TCP or TLS).
    Stream(Box<dyn Io>),
}

/// What a read found.
#[derive(Debug)]
pub(crate) enum Read {
    /// A complete packet.
    Packet(RawPacket),
    /// The connection ended; for WebSocket, with the close code if a close frame came.
    Closed(Option<u16>),
    /// Nothing within the timeout.
    Timeout,
}

/// An MQTT connection speaking through `common::wire`.
pub(crate) struct MqttConn {
    link: Link,
    buf: Vec<u8>,
    /// MQTT 5 or 3.1.1.
    pub(crate) v5: bool,
    /// The subprotocol the server chose (WebSocket only).
    pub(crate) subprotocol: Option<String>,
    /// Binary frames received (WebSocket only).
    pub(crate) frames: usize,
    /// Pong frames received (WebSocket only).
    pub(crate) pongs: usize,
    next_id: u16,
}

impl std::fmt::Debug for MqttConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConn")
            .field("v5", &self.v5)
            .field("subprotocol", &self.subprotocol)
            .finish_non_exhaustive()
    }
}

/// A WebSocket upgrade over `io` to `path` with the `mqtt` subprotocol (or `protocol`).
pub(crate) async fn ws_handshake(
    io: Box<dyn Io>,
    host: &str,
    path: &str,
    protocol: &str,
    headers: &[(&str, &str)],
) -> Result<(WebSocketStream<Box<dyn Io>>, Option<String>), String> {
    let mut request = format!("ws://{host}{path}")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    if !protocol.is_empty() {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(protocol).map_err(|e| e.to_string())?,
        );
    }
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
        request.headers_mut().append(
            name,
            HeaderValue::from_str(value).map_err(|e| e.to_string())?,
        );
    }
    // A client limit far above the server's, so oversized-frame tests see the server's answer.
    let config = WebSocketConfig::default()
        .max_message_size(Some(256 << 20))
        .max_frame_size(Some(256 << 20));
    let handshake = tokio_tungstenite::client_async_with_config(request, io, Some(config));
    let (ws, response) = tokio::time::timeout(TIMEOUT, handshake)
        .await
        .map_err(|_| "WebSocket handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let chosen = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((ws, chosen))
}

/// Opens TCP to `addr`.
pub(crate) async fn tcp(addr: SocketAddr) -> Box<dyn Io> {
    let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("TCP connect timed out")
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_nodelay(true).expect("nodelay");
    Box::new(stream)
}

impl MqttConn {
    /// A WebSocket connection to `ws://addr/mqtt` (subprotocol `mqtt`), no CONNECT yet.
    pub(crate) async fn ws(addr: SocketAddr) -> MqttConn {
        MqttConn::ws_with(tcp(addr).await, "/mqtt", "mqtt", &[])
            .await
            .unwrap_or_else(|e| panic!("WebSocket to {addr}: {e}"))
    }

    /// A WebSocket connection over `io`.
    pub(crate) async fn ws_with(
        io: Box<dyn Io>,
        path: &str,
        protocol: &str,
        headers: &[(&str, &str)],
    ) -> Result<MqttConn, String> {
        let (ws, subprotocol) = ws_handshake(io, "localhost", path, protocol, headers).await?;
        Ok(MqttConn {
            link: Link::Ws(Box::new(ws)),
            buf: Vec::new(),
            v5: false,
            subprotocol,
            frames: 0,
            pongs: 0,
            next_id: 1,
        })
    }

    /// A connection over a byte stream (TCP or TLS), no CONNECT yet.
    pub(crate) fn stream(io: Box<dyn Io>) -> MqttConn {
        MqttConn {
            link: Link::Stream(io),
            buf: Vec::new(),
            v5: false,
            subprotocol: None,
            frames: 0,
            pongs: 0,
            next_id: 1,
        }
    }

    /// Sends bytes: one binary frame on WebSocket. Errors are ignored; reads tell.
    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        match &mut self.link {
            Link::Ws(ws) => {
                let _ = ws.send(Message::Binary(bytes.to_vec().into())).await;
            }
            Link::Stream(io) => {
                let _ = io.write_all(bytes).await;
                let _ = io.flush().await;
            }
        }
    }

    /// Sends a WebSocket message of any kind.
    pub(crate) async fn send_ws(&mut self, message: Message) {
        match &mut self.link {
            Link::Ws(ws) => {
                let _ = ws.send(message).await;
            }
            Link::Stream(_) => panic!("not a WebSocket"),
        }
    }

    /// Reads until a packet is complete, the connection ends, or `timeout` passes.
    pub(crate) async fn read(&mut self, timeout: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match wire::split_packet(&mut self.buf) {
                Ok(Some(packet)) => return Read::Packet(packet),
                Ok(None) => {}
                Err(e) => panic!("the server sent a malformed packet: {e}"),
            }
            let more = tokio::time::timeout_at(deadline, async {
                match &mut self.link {
                    Link::Ws(ws) => loop {
                        match ws.next().await {
                            Some(Ok(Message::Binary(data))) => {
                                self.frames += 1;
                                return Ok(data.to_vec());
                            }
                            Some(Ok(Message::Pong(_))) => self.pongs += 1,
                            Some(Ok(Message::Close(frame))) => {
                                return Err(frame.map(|f| u16::from(f.code)))
                            }
                            Some(Ok(Message::Text(text))) => {
                                panic!("the server sent a text frame: {text}")
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => return Err(None),
                        }
                    },
                    Link::Stream(io) => {
                        let mut chunk = vec![0u8; 16 * 1024];
                        match io.read(&mut chunk).await {
                            Ok(0) | Err(_) => Err(None),
                            Ok(n) => {
                                chunk.truncate(n);
                                Ok(chunk)
                            }
                        }
                    }
                }
            })
            .await;
            match more {
                Ok(Ok(data)) => self.buf.extend(data),
                Ok(Err(code)) => return Read::Closed(code),
                Err(_) => return Read::Timeout,
            }
        }
    }

    /// The next packet.
    ///
    /// # Panics
    /// If the connection ends or nothing comes within `TIMEOUT`.
    pub(crate) async fn packet(&mut self) -> RawPacket {
        match self.read(TIMEOUT).await {
            Read::Packet(p) => p,
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    /// Waits for the end of the connection, skipping packets; returns the WebSocket close code.
    ///
    /// # Panics
    /// If the connection is still open after `TIMEOUT`.
    pub(crate) async fn expect_closed(&mut self) -> Option<u16> {
        loop {
            match self.read(TIMEOUT).await {
                Read::Packet(_) => {}
                Read::Closed(code) => return code,
                Read::Timeout => panic!("the connection is still open after {TIMEOUT:?}"),
            }
        }
    }

    /// Sends CONNECT and returns the CONNACK.
    pub(crate) async fn connect_with(&mut self, opts: &ConnectOpts) -> ConnAck {
        self.v5 = opts.v5;
        self.send(&opts.encode()).await;
        let packet = self.packet().await;
        packet
            .connack(opts.v5)
            .unwrap_or_else(|e| panic!("bad CONNACK: {e}"))
    }

    /// Sends CONNECT and asserts success.
    pub(crate) async fn connect(&mut self, opts: &ConnectOpts) {
        let connack = self.connect_with(opts).await;
        assert_eq!(connack.code, 0, "CONNACK refused: {connack:?}");
    }

    /// Connects anonymously with a fresh client id.
    pub(crate) async fn anonymous(&mut self, v5: bool) {
        self.connect(&ConnectOpts::new(v5, &Server::client_id("t")))
            .await;
    }

    /// Connects as the standard `pub` user.
    pub(crate) async fn publisher(&mut self, v5: bool) {
        let opts = ConnectOpts::new(v5, &Server::client_id("pub")).auth("pub", PUB_PASSWORD);
        self.connect(&opts).await;
    }

    fn next_packet_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Subscribes to `filter` and checks the SUBACK grants `qos`.
    pub(crate) async fn subscribe(&mut self, filter: &str, qos: u8) {
        let id = self.next_packet_id();
        self.send(&wire::subscribe(self.v5, id, &[(filter, qos)], None))
            .await;
        let (got_id, codes) = self
            .packet()
            .await
            .suback(wire::SUBACK, self.v5)
            .unwrap_or_else(|e| panic!("bad SUBACK: {e}"));
        assert_eq!(got_id, id, "SUBACK packet id");
        assert_eq!(codes, vec![qos], "SUBACK codes for {filter}");
    }

    /// Publishes; for QoS 1 returns the PUBACK reason (0 on 3.1.1).
    pub(crate) async fn publish(&mut self, topic: &str, payload: &[u8], qos: u8) -> u8 {
        let mut publish = PublishOut::new(topic, payload);
        if qos > 0 {
            let id = self.next_packet_id();
            publish = publish.qos(qos, id);
        }
        self.send(&publish.encode(self.v5)).await;
        if qos == 0 {
            return 0;
        }
        assert_eq!(qos, 1, "this helper does QoS 0 and 1");
        let packet = self.packet().await;
        let ack = packet
            .ack(wire::PUBACK)
            .unwrap_or_else(|e| panic!("bad PUBACK: {e}"));
        ack.reason
    }

    /// The next PUBLISH (acknowledged if QoS 1).
    pub(crate) async fn expect_publish(&mut self) -> PublishIn {
        let packet = self.packet().await;
        let publish = packet
            .publish(self.v5)
            .unwrap_or_else(|e| panic!("expected PUBLISH: {e}"));
        if let (1, Some(id)) = (publish.qos, publish.packet_id) {
            self.send(&wire::ack(wire::PUBACK, id)).await;
        }
        publish
    }

    /// PINGREQ → PINGRESP.
    pub(crate) async fn ping(&mut self) {
        self.send(&wire::pingreq()).await;
        let packet = self.packet().await;
        assert_eq!(
            packet.kind(),
            wire::PINGRESP,
            "expected PINGRESP, got {packet:?}"
        );
    }
}

/// Asserts that MQTT over WebSocket on `http` still works end to end.
pub(crate) async fn assert_ws_serves(http: SocketAddr) {
    let mut sub = MqttConn::ws(http).await;
    sub.anonymous(false).await;
    let topic = format!("health/{}", Server::client_id("ws"));
    sub.subscribe(&topic, 1).await;
    let mut publisher = MqttConn::ws(http).await;
    publisher.publisher(true).await;
    assert_eq!(publisher.publish(&topic, b"alive", 1).await, 0);
    let p = sub.expect_publish().await;
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        (topic.as_str(), &b"alive"[..])
    );
}

/// Reads (and discards) until the server closes `io`.
///
/// # Panics
/// If it is still open after `TIMEOUT`.
pub(crate) async fn expect_eof(io: &mut Box<dyn Io>) {
    let mut sink = vec![0u8; 4096];
    let closed = tokio::time::timeout(TIMEOUT, async {
        loop {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the connection is still open after {TIMEOUT:?}"
    );
}

/// Sends a bare HTTP/1.1 request over `io`; returns the status and body.
pub(crate) async fn http_request(mut io: Box<dyn Io>, request: &str) -> (u16, String) {
    io.write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = Vec::new();
    tokio::time::timeout(TIMEOUT, io.read_to_end(&mut response))
        .await
        .expect("HTTP response within the timeout")
        .expect("read response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// GET `path` on `addr` with `Connection: close`.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    http_request(tcp(addr).await, &request).await
}

/// The value of the metric line `name` (with labels, as printed) in a `/metrics` body.
pub(crate) fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
