//! Black-box test harness: start the real `firehose` binary on port 0 and talk to it.
//!
//! # Layout
//! - [`Server`]: spawns `firehose serve` with a temporary data dir, users file and config file,
//!   waits (bounded) for the `MQTT listener bound addr=...` log line, kills the child on drop.
//! - [`User`], [`hash_password`]: users files made with `firehose passwd`.
//! - [`wire`]: a small MQTT 3.1.1/5.0 packet builder and parser written for the tests alone, so
//!   the broker is checked against an implementation that shares no code with it.
//! - [`RawClient`]: a TCP client that sends bytes and reads packets, closes and silences, each
//!   with a timeout; plus convenience steps (`connect`, `subscribe`, `publish`...) that read like
//!   a short script.
//! - [`MosquittoSub`], [`mosquitto_pub`]: Mosquitto's command-line clients as child processes.
//!
//! Every wait in here is bounded: a test fails with a message instead of hanging.
//!
//! Set `FIREHOSE_BIN` to run the suite against another build of the binary.

#![allow(dead_code)] // each test binary uses a different subset of the harness

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Generates one `#[test]` module per case with a test per protocol version, `v311` and `v5`,
/// calling the case's function with `v5: bool`: `name;` calls `name`, `name => body;` calls
/// `body`. Test files take it with `#[macro_use] mod common;`.
#[allow(unused_macros)] // each test binary uses a different subset of the harness
macro_rules! both_versions {
    ($($name:ident => $body:ident;)*) => {$(
        mod $name {
            #[test]
            fn v311() {
                super::$body(false)
            }
            #[test]
            fn v5() {
                super::$body(true)
            }
        }
    )*};
    ($($name:ident;)*) => {
        both_versions! { $($name => $name;)* }
    };
}

/// How long any single expected event may take before the test fails. Generous: CI machines
/// are small and busy, and a passing test never waits this long.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// How long a test listens to make sure something does *not* happen. Only used where no later
/// event can prove the absence (see [`RawClient::expect_silence`]).
pub(crate) const QUIET: Duration = Duration::from_millis(700);

/// Password of the users made by [`ServerOptions::standard`].
pub(crate) const PUB_PASSWORD: &str = "pub-secret";
/// Password of the restricted user made by [`ServerOptions::standard`].
pub(crate) const LIMITED_PASSWORD: &str = "limited-secret";

/// The binary under test: `$FIREHOSE_BIN` if set, else the one cargo built for this package.
pub(crate) fn firehose_bin() -> PathBuf {
    match std::env::var_os("FIREHOSE_BIN") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_firehose")),
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes with deadlines
// ---------------------------------------------------------------------------------------------

/// Waits for `child` to exit; kills it and panics after `timeout`.
pub(crate) fn wait_with_timeout(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not exit within {timeout:?}");
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    }
}

/// Runs a command to completion with `stdin` as input, killing it after `timeout`.
pub(crate) fn run_with_timeout(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let mut input = child.stdin.take().expect("stdin is piped");
    let stdin = stdin.to_vec();
    let writer = thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let out_reader = thread::spawn(move || read_all(stdout));
    let err_reader = thread::spawn(move || read_all(stderr));
    let status = wait_with_timeout(&mut child, timeout, &what);
    let _ = writer.join();
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

fn read_all(mut from: impl Read) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = from.read_to_end(&mut buf);
    buf
}

/// Sends SIGTERM to a process.
fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {pid} failed");
}

// ---------------------------------------------------------------------------------------------
// Users and passwords
// ---------------------------------------------------------------------------------------------

/// Hashes a password with `firehose passwd` (once per password and test process).
///
/// # Panics
/// If the command fails or prints something that is not an argon2id hash.
pub(crate) fn hash_password(password: &str) -> String {
    static CACHE: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hash) = cache.lock().expect("hash cache").get(password) {
        return hash.clone();
    }
    let out = run_with_timeout(
        Command::new(firehose_bin()).arg("passwd"),
        format!("{password}\n").as_bytes(),
        Duration::from_secs(30),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "firehose passwd failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let hash = stdout.trim().to_string();
    assert!(
        hash.starts_with("$argon2id$"),
        "firehose passwd printed {stdout:?}, expected an argon2id hash"
    );
    cache
        .lock()
        .expect("hash cache")
        .insert(password.to_string(), hash.clone());
    hash
}

/// One `[[user]]` table of the users file.
#[derive(Debug, Clone)]
pub(crate) struct User {
    /// User name.
    pub(crate) name: String,
    /// Clear-text password, hashed with `firehose passwd` when the file is written.
    pub(crate) password: String,
    /// Topic filters the user may publish to.
    pub(crate) publish: Vec<String>,
    /// Topic filters the user may subscribe to; `None` leaves the key out (default: all).
    pub(crate) subscribe: Option<Vec<String>>,
    /// Clear-text bearer token, hashed into `token` when the file is written; `None` leaves
    /// the key out.
    pub(crate) token: Option<String>,
}

impl User {
    /// A publisher allowed to write to `publish`.
    pub(crate) fn new(name: &str, password: &str, publish: &[&str]) -> User {
        User {
            name: name.to_string(),
            password: password.to_string(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
            subscribe: None,
            token: None,
        }
    }

    /// With a bearer token for HTTP publish.
    pub(crate) fn token(mut self, token: &str) -> User {
        self.token = Some(token.to_string());
        self
    }
}

/// Quotes a string as a TOML basic string.
pub(crate) fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// The text of a users file for `users`.
pub(crate) fn users_toml(users: &[User]) -> String {
    let mut text = String::new();
    for user in users {
        text.push_str("[[user]]\n");
        text.push_str(&format!("name = {}\n", toml_str(&user.name)));
        text.push_str(&format!(
            "password = {}\n",
            toml_str(&hash_password(&user.password))
        ));
        text.push_str(&format!("publish = {}\n", toml_list(&user.publish)));
        if let Some(subscribe) = &user.subscribe {
            text.push_str(&format!("subscribe = {}\n", toml_list(subscribe)));
        }
        if let Some(token) = &user.token {
            text.push_str(&format!("token = {}\n", toml_str(&hash_password(token))));
        }
        text.push('\n');
    }
    text
}

// ---------------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------------

/// How to start a [`Server`].
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerOptions {
    /// Users file content; no `--users` flag when empty.
    pub(crate) users: Vec<User>,
    /// Config file content; no `--config` flag when empty.
    pub(crate) config: String,
    /// Pass `--mqtt 127.0.0.1:0` (else the config file must say where to listen).
    pub(crate) no_mqtt_flag: bool,
    /// Extra command-line arguments after the usual ones.
    pub(crate) extra_args: Vec<String>,
}

impl ServerOptions {
    /// The setup most tests use: user `pub` may publish anywhere, user `limited` only under
    /// `test/allowed/#`; `$SYS` statistics every second.
    pub(crate) fn standard() -> ServerOptions {
        ServerOptions {
            users: vec![
                User::new("pub", PUB_PASSWORD, &["#"]),
                User::new("limited", LIMITED_PASSWORD, &["test/allowed/#"]),
            ],
            config: "[sys]\ninterval_secs = 1\n".to_string(),
            ..ServerOptions::default()
        }
    }

    /// Appends TOML to the config file.
    pub(crate) fn with_config(mut self, toml: &str) -> ServerOptions {
        self.config.push_str(toml);
        self.config.push('\n');
        self
    }
}

/// A running `firehose serve`, killed when dropped.
pub(crate) struct Server {
    child: Option<Child>,
    /// The bound MQTT address.
    pub(crate) addr: SocketAddr,
    /// Holds the data dir, users file and config file.
    pub(crate) dir: tempfile::TempDir,
    log: Arc<Mutex<String>>,
}

/// What a started `firehose serve` did before it announced its address (or failed to).
pub(crate) enum Startup {
    /// It logged the bound MQTT address.
    Bound(SocketAddr),
    /// It exited first, with this status.
    Exited(ExitStatus),
}

impl Server {
    /// Starts the server with the [`ServerOptions::standard`] setup.
    pub(crate) fn standard() -> Server {
        Server::start(ServerOptions::standard())
    }

    /// Starts the server and waits until it listens.
    ///
    /// # Panics
    /// If it exits or logs no bound address within 10 seconds.
    pub(crate) fn start(options: ServerOptions) -> Server {
        let (mut server, startup) = Server::spawn(options);
        match startup {
            Startup::Bound(addr) => {
                server.addr = addr;
                server
            }
            Startup::Exited(status) => panic!(
                "firehose serve exited with {status} before listening; log:\n{}",
                server.log()
            ),
        }
    }

    /// Starts the server and reports how startup went, for tests of bad configurations.
    pub(crate) fn spawn(options: ServerOptions) -> (Server, Startup) {
        let dir = tempfile::Builder::new()
            .prefix("firehose-test-")
            .tempdir()
            .expect("create temp dir");
        let data_dir = dir.path().join("data");
        let mut cmd = Command::new(firehose_bin());
        cmd.arg("serve");
        if !options.no_mqtt_flag {
            cmd.args(["--mqtt", "127.0.0.1:0"]);
        }
        cmd.args(["--http", "off"]).arg("--data-dir").arg(&data_dir);
        if !options.users.is_empty() {
            let path = dir.path().join("users.toml");
            std::fs::write(&path, users_toml(&options.users)).expect("write users file");
            cmd.arg("--users").arg(path);
        }
        if !options.config.is_empty() {
            let path = dir.path().join("firehose.toml");
            std::fs::write(&path, &options.config).expect("write config file");
            cmd.arg("--config").arg(path);
        }
        cmd.args(&options.extra_args);
        // The developer's FIREHOSE_* settings (and log filters) must not change what is tested.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("FIREHOSE_") || key == "RUST_LOG" {
                cmd.env_remove(key);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", firehose_bin()));

        // Read stderr for the life of the child, so that the pipe never fills, and report the
        // bound address as soon as it is logged.
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr is piped");
        let log_writer = Arc::clone(&log);
        thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).into_owned();
                        // Log first: whoever hears of the address may read the log at once.
                        log_writer.lock().expect("log lock").push_str(&text);
                        if let Some(addr) = parse_bound_addr(&text) {
                            let _ = tx.send(addr);
                        }
                    }
                }
            }
        });

        let mut server = Server {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            log,
        };
        let deadline = Instant::now() + TIMEOUT;
        let startup = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => break Startup::Bound(addr),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
            }
            if let Some(status) = server.try_wait() {
                // Give the reader a moment to collect the last lines.
                thread::sleep(Duration::from_millis(100));
                break Startup::Exited(status);
            }
            if Instant::now() >= deadline {
                panic!(
                    "firehose serve logged no 'MQTT listener bound addr=' line within {TIMEOUT:?}; log:\n{}",
                    server.log()
                );
            }
        };
        (server, startup)
    }

    /// Everything the server wrote to stderr so far.
    pub(crate) fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// The data directory given with `--data-dir`.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// Waits (bounded) for the server to exit on its own.
    pub(crate) fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server still owned");
        wait_with_timeout(&mut child, TIMEOUT, "firehose serve")
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub(crate) fn terminate(&mut self) -> ExitStatus {
        let child = self.child.as_ref().expect("server still owned");
        sigterm(child.id());
        self.wait_exit()
    }

    /// A client id that no other test connection uses.
    pub(crate) fn client_id(prefix: &str) -> String {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{prefix}-{}-{n}", std::process::id())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            // The test failed: the server's side of the story goes with the failure.
            eprintln!(
                "---- firehose serve log ({}) ----\n{}---- end of log ----",
                self.addr,
                self.log()
            );
        }
    }
}

/// Extracts the address from a `MQTT listener bound addr=127.0.0.1:PORT` log line.
pub(crate) fn parse_bound_addr(line: &str) -> Option<SocketAddr> {
    const MARK: &str = "MQTT listener bound addr=";
    let start = line.find(MARK)? + MARK.len();
    let rest = &line[start..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    rest[..end].trim_matches('"').parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Wire format, written independently of the codec under test
// ---------------------------------------------------------------------------------------------

pub(crate) mod wire;

use wire::{ConnAck, ConnectOpts, PublishIn, PublishOut, RawPacket};

// ---------------------------------------------------------------------------------------------
// Raw TCP client
// ---------------------------------------------------------------------------------------------

/// What a read from the server produced.
#[derive(Debug)]
pub(crate) enum Got {
    /// A whole packet.
    Packet(RawPacket),
    /// The server closed the connection (EOF or reset).
    Closed,
    /// Nothing within the timeout.
    Timeout,
}

/// A TCP connection that speaks bytes and packets, every read bounded by a timeout.
pub(crate) struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Packets read while waiting for another one, returned first by later reads.
    stash: VecDeque<RawPacket>,
    /// Whether packets are parsed as MQTT 5 (set by [`RawClient::connect`]).
    pub(crate) v5: bool,
    /// Label for messages.
    pub(crate) name: String,
    next_id: u16,
}

impl RawClient {
    /// Opens a TCP connection.
    pub(crate) fn tcp(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        RawClient::over(stream, "raw".to_string())
    }

    /// A client over a connected stream.
    fn over(stream: TcpStream, name: String) -> RawClient {
        stream.set_nodelay(true).expect("set_nodelay");
        RawClient {
            stream,
            buf: Vec::new(),
            stash: VecDeque::new(),
            v5: false,
            name,
            next_id: 1,
        }
    }

    /// Opens a TCP connection from the loopback address `source` (any of 127.0.0.0/8), so
    /// that a test can speak for several client addresses.
    pub(crate) fn tcp_from(source: &str, addr: SocketAddr) -> RawClient {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let source: SocketAddr = format!("{source}:0").parse().expect("source address");
        let stream = runtime
            .block_on(async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(source)?;
                tokio::time::timeout(TIMEOUT, socket.connect(addr))
                    .await
                    .map_err(|_| std::io::ErrorKind::TimedOut)?
            })
            .and_then(|stream| stream.into_std())
            .unwrap_or_else(|e| panic!("connect from {source} to {addr}: {e}"));
        stream.set_nonblocking(false).expect("blocking");
        RawClient::over(stream, format!("raw from {source}"))
    }

    /// Opens a connection, sends CONNECT and returns the client with the CONNACK, whatever its
    /// code.
    pub(crate) fn connect_with(addr: SocketAddr, opts: &ConnectOpts) -> (RawClient, ConnAck) {
        let mut client = RawClient::tcp(addr);
        client.v5 = opts.v5;
        client.name = if opts.client_id.is_empty() {
            "(empty id)".to_string()
        } else {
            opts.client_id.clone()
        };
        client.send(&opts.encode());
        let packet = client.expect_packet();
        let connack = packet
            .connack(opts.v5)
            .unwrap_or_else(|e| panic!("{}: bad CONNACK: {e}", client.name));
        (client, connack)
    }

    /// Connects and asserts that the CONNACK accepts the connection.
    pub(crate) fn connect(addr: SocketAddr, opts: &ConnectOpts) -> (RawClient, ConnAck) {
        let (client, connack) = RawClient::connect_with(addr, opts);
        assert_eq!(
            connack.code, 0,
            "{}: CONNACK refused the connection: {connack:?}",
            client.name
        );
        (client, connack)
    }

    /// An anonymous clean client.
    pub(crate) fn anonymous(addr: SocketAddr, v5: bool, prefix: &str) -> RawClient {
        RawClient::connect(addr, &ConnectOpts::new(v5, &Server::client_id(prefix))).0
    }

    /// A clean client logged in as the standard `pub` user (may publish anywhere).
    pub(crate) fn publisher(addr: SocketAddr, v5: bool) -> RawClient {
        let opts = ConnectOpts::new(v5, &Server::client_id("pub")).auth("pub", PUB_PASSWORD);
        RawClient::connect(addr, &opts).0
    }

    /// Writes bytes; a write error (server already closed) is ignored, reads will tell.
    pub(crate) fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
        let _ = self.stream.flush();
    }

    /// Closes our writing half (the server reads EOF).
    pub(crate) fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Drops the connection abruptly (no DISCONNECT).
    pub(crate) fn drop_connection(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Reads one packet, or reports close or timeout.
    ///
    /// # Panics
    /// If the server sends bytes that are not a packet.
    pub(crate) fn read(&mut self, timeout: Duration) -> Got {
        if let Some(packet) = self.stash.pop_front() {
            return Got::Packet(packet);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match wire::split_packet(&mut self.buf) {
                Ok(Some(packet)) => return Got::Packet(packet),
                Ok(None) => {}
                Err(e) => panic!("{}: server sent an invalid packet: {e}", self.name),
            }
            let now = Instant::now();
            if now >= deadline {
                return Got::Timeout;
            }
            self.stream
                .set_read_timeout(Some(deadline - now))
                .expect("set_read_timeout");
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    if self.buf.is_empty() {
                        return Got::Closed;
                    }
                    panic!(
                        "{}: server closed in the middle of a packet: {:02x?}",
                        self.name, self.buf
                    );
                }
                Ok(n) => self.buf.extend(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Got::Timeout
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Got::Closed, // reset, aborted...
            }
        }
    }

    /// Reads one packet.
    ///
    /// # Panics
    /// On close or timeout.
    pub(crate) fn expect_packet(&mut self) -> RawPacket {
        match self.read(TIMEOUT) {
            Got::Packet(p) => p,
            Got::Closed => panic!("{}: connection closed, expected a packet", self.name),
            Got::Timeout => panic!("{}: no packet within {TIMEOUT:?}", self.name),
        }
    }

    /// Reads packets until one satisfies `pred`; the others are kept, in order, for later reads
    /// (a PUBLISH may arrive while the client waits for its PUBACK, say).
    ///
    /// # Panics
    /// On close or timeout.
    pub(crate) fn expect_matching(
        &mut self,
        what: &str,
        pred: impl Fn(&RawPacket) -> bool,
    ) -> RawPacket {
        let deadline = Instant::now() + TIMEOUT;
        let mut skipped = Vec::new();
        let found = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read(left) {
                Got::Packet(p) if pred(&p) => break p,
                Got::Packet(p) => skipped.push(p),
                Got::Closed => panic!(
                    "{}: connection closed while waiting for {what}; got meanwhile {skipped:?}",
                    self.name
                ),
                Got::Timeout => panic!(
                    "{}: no {what} within {TIMEOUT:?}; got meanwhile {skipped:?}",
                    self.name
                ),
            }
        };
        for p in skipped.into_iter().rev() {
            self.stash.push_front(p);
        }
        found
    }

    /// Waits for the acknowledgement of type `kind` for `packet_id`; returns its reason code.
    pub(crate) fn expect_ack(&mut self, kind: u8, packet_id: u16) -> u8 {
        let what = format!("{} for packet id {packet_id}", wire::type_name(kind));
        let p = self.expect_matching(&what, |p| {
            p.kind() == kind && p.ack(kind).map(|a| a.packet_id) == Ok(packet_id)
        });
        p.ack(kind).map(|a| a.reason).unwrap_or_default()
    }

    /// Reads exactly the bytes `expected`.
    pub(crate) fn expect_bytes(&mut self, expected: &[u8]) {
        let packet = self.expect_packet();
        assert_eq!(
            packet.to_bytes(),
            expected,
            "{}: got {}, expected other bytes",
            self.name,
            packet.name()
        );
    }

    /// Waits for the server to close the connection and returns the packets it sent before
    /// (a v5 DISCONNECT, say).
    ///
    /// # Panics
    /// If the connection is still open after `timeout`.
    pub(crate) fn expect_closed_within(&mut self, timeout: Duration) -> Vec<RawPacket> {
        let deadline = Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read(left) {
                Got::Closed => return before,
                Got::Packet(p) => before.push(p),
                Got::Timeout => panic!(
                    "{}: connection still open after {timeout:?}; received meanwhile: {:?}",
                    self.name,
                    before.iter().map(RawPacket::name).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// [`RawClient::expect_closed_within`] with the standard timeout.
    pub(crate) fn expect_closed(&mut self) -> Vec<RawPacket> {
        self.expect_closed_within(TIMEOUT)
    }

    /// Asserts that nothing arrives for `quiet` (and the connection stays open).
    pub(crate) fn expect_silence(&mut self, quiet: Duration) {
        match self.read(quiet) {
            Got::Timeout => {}
            Got::Closed => panic!("{}: connection closed, expected it open", self.name),
            Got::Packet(p) => panic!(
                "{}: expected nothing, got {} {:02x?}",
                self.name,
                p.name(),
                p.to_bytes()
            ),
        }
    }

    /// Asserts that the connection is alive: PINGREQ gets PINGRESP.
    pub(crate) fn ping(&mut self) {
        self.send(&wire::pingreq());
        self.expect_matching("PINGRESP", |p| p.kind() == wire::PINGRESP);
    }

    fn next_packet_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Subscribes to filters with option bytes (QoS in the low bits) and returns the SUBACK codes.
    pub(crate) fn subscribe_with(
        &mut self,
        filters: &[(&str, u8)],
        sub_id: Option<u32>,
    ) -> Vec<u8> {
        let id = self.next_packet_id();
        self.send(&wire::subscribe(self.v5, id, filters, sub_id));
        let p = self.expect_matching("SUBACK", |p| p.kind() == wire::SUBACK);
        let (ack_id, codes) = p
            .suback(wire::SUBACK, self.v5)
            .unwrap_or_else(|e| panic!("{}: {e}", self.name));
        assert_eq!(ack_id, id, "{}: SUBACK packet id", self.name);
        assert_eq!(
            codes.len(),
            filters.len(),
            "{}: SUBACK codes {codes:?}",
            self.name
        );
        codes
    }

    /// Subscribes to one filter and asserts the granted QoS.
    pub(crate) fn subscribe(&mut self, filter: &str, qos: u8) {
        let codes = self.subscribe_with(&[(filter, qos)], None);
        assert_eq!(codes, vec![qos], "{}: SUBACK for {filter:?}", self.name);
    }

    /// Unsubscribes and waits for UNSUBACK.
    pub(crate) fn unsubscribe(&mut self, filter: &str) {
        let id = self.next_packet_id();
        self.send(&wire::unsubscribe(self.v5, id, &[filter]));
        let p = self.expect_matching("UNSUBACK", |p| p.kind() == wire::UNSUBACK);
        let (ack_id, _) = p
            .suback(wire::UNSUBACK, self.v5)
            .unwrap_or_else(|e| panic!("{}: {e}", self.name));
        assert_eq!(ack_id, id, "{}: UNSUBACK packet id", self.name);
    }

    /// Publishes and completes the QoS flow; returns the reason code of PUBACK/PUBREC (0 for
    /// QoS 0). A QoS 2 publish refused with PUBREC >= 0x80 ends there, as the spec says.
    pub(crate) fn publish(&mut self, mut publish: PublishOut) -> u8 {
        if publish.qos > 0 {
            publish.packet_id = self.next_packet_id();
        }
        self.send(&publish.encode(self.v5));
        match publish.qos {
            0 => 0,
            1 => self.expect_ack(wire::PUBACK, publish.packet_id),
            _ => {
                let reason = self.expect_ack(wire::PUBREC, publish.packet_id);
                if reason >= 0x80 {
                    return reason;
                }
                self.send(&wire::ack(wire::PUBREL, publish.packet_id));
                let comp = self.expect_ack(wire::PUBCOMP, publish.packet_id);
                assert_eq!(comp, 0, "{}: PUBCOMP reason", self.name);
                reason
            }
        }
    }

    /// Publishes a QoS 0 message.
    pub(crate) fn publish0(&mut self, topic: &str, payload: &[u8]) {
        self.publish(PublishOut::new(topic, payload));
    }

    /// Reads the next packet, which must be a PUBLISH, without acknowledging it. A PUBREL that
    /// a resumed session resends for a QoS 2 exchange left half done is answered with PUBCOMP
    /// on the way, as a real client does.
    pub(crate) fn expect_publish_raw(&mut self) -> PublishIn {
        loop {
            let p = self.expect_packet();
            if p.kind() == wire::PUBREL && p.body.len() >= 2 {
                let id = u16::from_be_bytes([p.body[0], p.body[1]]);
                self.send(&wire::ack(wire::PUBCOMP, id));
                continue;
            }
            return p
                .publish(self.v5)
                .unwrap_or_else(|e| panic!("{}: {e}", self.name));
        }
    }

    /// Reads the next PUBLISH and acknowledges it (PUBACK, or PUBREC/PUBREL/PUBCOMP).
    pub(crate) fn expect_publish(&mut self) -> PublishIn {
        let publish = self.expect_publish_raw();
        self.ack_publish(&publish);
        publish
    }

    /// Acknowledges a received PUBLISH, completing the QoS 2 exchange.
    pub(crate) fn ack_publish(&mut self, publish: &PublishIn) {
        let Some(id) = publish.packet_id else { return };
        if publish.qos == 1 {
            self.send(&wire::ack(wire::PUBACK, id));
        } else {
            self.send(&wire::ack(wire::PUBREC, id));
            let reason = self.expect_ack(wire::PUBREL, id);
            assert_eq!(reason, 0, "{}: PUBREL reason", self.name);
            self.send(&wire::ack(wire::PUBCOMP, id));
        }
    }

    /// Reads (and acknowledges) PUBLISHes until one with `payload` arrives; returns those
    /// before it. Lets a test prove that something was *not* delivered: publish the forbidden
    /// message, then a marker, and check what came before the marker.
    pub(crate) fn publishes_until(&mut self, payload: &[u8]) -> Vec<PublishIn> {
        let mut before = Vec::new();
        loop {
            let p = self.expect_publish();
            if p.payload == payload {
                return before;
            }
            before.push(p);
        }
    }

    /// Sends a normal DISCONNECT and waits for the server to close.
    pub(crate) fn disconnect(mut self) {
        self.send(&wire::disconnect(self.v5, 0));
        let _ = self.read(TIMEOUT);
    }
}

/// Asserts that the server still serves: a fresh subscriber receives a fresh publish.
pub(crate) fn assert_serves(addr: SocketAddr) {
    let mut sub = RawClient::anonymous(addr, true, "health-sub");
    sub.subscribe("health/check", 1);
    let mut publisher = RawClient::publisher(addr, false);
    let reason = publisher.publish(PublishOut::new("health/check", b"alive").qos(1, 1));
    assert_eq!(reason, 0, "health publish refused");
    let p = sub.expect_publish();
    assert_eq!(p.topic, "health/check");
    assert_eq!(p.payload, b"alive");
}

// ---------------------------------------------------------------------------------------------
// Mosquitto command-line clients
// ---------------------------------------------------------------------------------------------

/// `-V` value for a protocol version.
pub(crate) fn mosquitto_version(v5: bool) -> &'static str {
    if v5 {
        "mqttv5"
    } else {
        "mqttv311"
    }
}

/// Whether the Mosquitto clients are installed (scripts/test installs them).
pub(crate) fn have_mosquitto_clients() -> bool {
    Command::new("mosquitto_sub")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// A message printed by [`MosquittoSub`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubMessage {
    /// QoS of the delivered PUBLISH.
    pub(crate) qos: u8,
    /// Retain flag of the delivered PUBLISH.
    pub(crate) retain: bool,
    /// Topic.
    pub(crate) topic: String,
    /// Payload as text.
    pub(crate) payload: String,
}

// No `@` or `%` here: mosquitto_sub -F gives them a meaning.
const MSG_MARK: &str = "MSG>>";

/// A running `mosquitto_sub`, its output collected line by line.
pub(crate) struct MosquittoSub {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    /// Every message line parsed so far.
    pub(crate) messages: Vec<SubMessage>,
    /// Every output line so far (debug lines included).
    pub(crate) output: Vec<String>,
}

impl MosquittoSub {
    /// Starts `mosquitto_sub` on `addr` with extra arguments (topics with `-t`, `-u`/`-P`...) and
    /// waits until its SUBACK is in. Exits by itself after 30 s at most (`-W 30`).
    pub(crate) fn start(addr: SocketAddr, v5: bool, args: &[&str]) -> MosquittoSub {
        MosquittoSub::start_with_format(addr, v5, "", args)
    }

    /// [`MosquittoSub::start`] with `extra` (`-F` codes such as `%P`) printed between the topic
    /// and the payload, so that [`SubMessage::payload`] begins with it.
    pub(crate) fn start_with_format(
        addr: SocketAddr,
        v5: bool,
        extra: &str,
        args: &[&str],
    ) -> MosquittoSub {
        let mut sub = MosquittoSub::spawn(addr, v5, extra, args);
        sub.wait_for_line(|l| l.contains("received SUBACK"), "its SUBACK");
        sub
    }

    /// Starts `mosquitto_sub` without waiting for anything.
    pub(crate) fn spawn(addr: SocketAddr, v5: bool, extra: &str, args: &[&str]) -> MosquittoSub {
        let format = if extra.is_empty() {
            format!("{MSG_MARK} %q %r %t %p")
        } else {
            format!("{MSG_MARK} %q %r %t {extra} %p")
        };
        // stdbuf makes stdout line-buffered so that debug lines arrive as they happen.
        let mut cmd = Command::new("stdbuf");
        cmd.args(["-oL", "mosquitto_sub", "-h"])
            .arg(addr.ip().to_string())
            .arg("-p")
            .arg(addr.port().to_string())
            .args(["-V", mosquitto_version(v5), "-d", "-W", "30"])
            .args(["-F", &format])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .expect("start mosquitto_sub (is mosquitto-clients installed?)");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr_text = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&stderr_text);
        thread::spawn(move || {
            let text = read_all(stderr);
            sink.lock()
                .expect("stderr lock")
                .push_str(&String::from_utf8_lossy(&text));
        });
        MosquittoSub {
            child,
            lines: rx,
            stderr: stderr_text,
            messages: Vec::new(),
            output: Vec::new(),
        }
    }

    fn take_line(&mut self, timeout: Duration) -> Option<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix(MSG_MARK) {
                    let mut parts = rest.trim_start().splitn(4, ' ');
                    let qos = parts.next().and_then(|q| q.parse().ok()).unwrap_or(9);
                    let retain = parts.next() == Some("1");
                    let topic = parts.next().unwrap_or_default().to_string();
                    let payload = parts.next().unwrap_or_default().to_string();
                    self.messages.push(SubMessage {
                        qos,
                        retain,
                        topic,
                        payload,
                    });
                }
                self.output.push(line.clone());
                Some(line)
            }
            Err(_) => None,
        }
    }

    /// Waits for an output line matching `pred`.
    ///
    /// # Panics
    /// After [`TIMEOUT`], or if mosquitto_sub exits first.
    pub(crate) fn wait_for_line(&mut self, pred: impl Fn(&str) -> bool, what: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "mosquitto_sub: no {what} within {TIMEOUT:?}; output: {:#?}\nstderr: {}",
                    self.output,
                    self.stderr()
                );
            }
            match self.take_line(left.min(Duration::from_millis(200))) {
                Some(line) if pred(&line) => return line,
                Some(_) => {}
                None => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        // Drain what is left before giving up.
                        while let Some(line) = self.take_line(Duration::from_millis(100)) {
                            if pred(&line) {
                                return line;
                            }
                        }
                        panic!(
                            "mosquitto_sub exited ({status}) before {what}; output: {:#?}\nstderr: {}",
                            self.output,
                            self.stderr()
                        );
                    }
                }
            }
        }
    }

    /// Waits until a message with `payload` arrives; returns all messages so far, marker
    /// included.
    pub(crate) fn wait_for_payload(&mut self, payload: &str) -> Vec<SubMessage> {
        let mark = format!(" {payload}");
        self.wait_for_line(
            |l| l.starts_with(MSG_MARK) && l.ends_with(&mark),
            &format!("message {payload:?}"),
        );
        self.messages.clone()
    }

    /// Waits until `count` messages in all arrived.
    pub(crate) fn wait_for_count(&mut self, count: usize) -> Vec<SubMessage> {
        let deadline = Instant::now() + TIMEOUT;
        while self.messages.len() < count {
            if Instant::now() >= deadline {
                panic!(
                    "mosquitto_sub: {} of {count} messages within {TIMEOUT:?}: {:#?}\nstderr: {}",
                    self.messages.len(),
                    self.messages,
                    self.stderr()
                );
            }
            self.take_line(Duration::from_millis(100));
        }
        self.messages.clone()
    }

    /// What it wrote to stderr.
    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Waits (bounded) for it to exit by itself, collecting the rest of its output.
    pub(crate) fn wait_exit(&mut self) -> ExitStatus {
        let status = wait_with_timeout(&mut self.child, Duration::from_secs(40), "mosquitto_sub");
        while self.take_line(Duration::from_millis(200)).is_some() {}
        status
    }
}

impl Drop for MosquittoSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `mosquitto_pub` against `addr` with extra arguments; returns its output.
pub(crate) fn mosquitto_pub(addr: SocketAddr, v5: bool, args: &[&str]) -> Output {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.arg("-h")
        .arg(addr.ip().to_string())
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["-V", mosquitto_version(v5)])
        .args(args);
    run_with_timeout(&mut cmd, b"", Duration::from_secs(30))
}

/// Runs `mosquitto_pub` and asserts it succeeded.
pub(crate) fn mosquitto_pub_ok(addr: SocketAddr, v5: bool, args: &[&str]) {
    let out = mosquitto_pub(addr, v5, args);
    assert!(
        out.status.success(),
        "mosquitto_pub {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates a file under `dir` and returns its path.
pub(crate) fn write_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
    path
}

/// The durable-log harness: restartable data dirs, the HTTP listener, history and SSE clients.
pub(crate) mod cli;
pub(crate) mod durable;

// ---------------------------------------------------------------------------------------------
// Signals (transport tests)
// ---------------------------------------------------------------------------------------------

impl Server {
    /// The process id of the running server.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("server still owned").id()
    }

    /// Sends SIGHUP (the server reloads its TLS certificate).
    pub(crate) fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP failed");
    }
}
