//! Harness for the durable-log tests: a data directory that outlives server processes (so a
//! test can `kill -9` the server and start another on the same data), the HTTP listener's
//! address, a small HTTP/1.1 client for the history API and a Server-Sent Events reader.
//!
//! # Layout
//! - [`DataDir`]: temp dir with `data/`, the users file and the config file; [`DataDir::start`]
//!   starts a [`Node`] on it, [`DataDir::spawn_serve`] runs `firehose serve` for startup-error
//!   tests.
//! - [`Node`]: one running `firehose serve` with MQTT and HTTP on 127.0.0.1 port 0; killed
//!   (SIGKILL) on drop or by [`Node::kill9`].
//! - [`http_get`], [`http_json`], [`history`]: GET requests with `Connection: close`.
//! - [`Sse`]: a streaming GET whose events and comments arrive on a channel.
//!
//! Every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{firehose_bin, users_toml, wait_with_timeout, User, TIMEOUT};

/// A data directory plus the users and config files of the servers started on it.
pub(crate) struct DataDir {
    /// The temp dir holding everything.
    pub(crate) dir: tempfile::TempDir,
    users: Option<PathBuf>,
    config: Option<PathBuf>,
}

impl DataDir {
    /// A fresh directory with users `users` and config text `config` (none when empty).
    pub(crate) fn new(users: &[User], config: &str) -> DataDir {
        let dir = tempfile::Builder::new()
            .prefix("firehose-durable-")
            .tempdir()
            .expect("create temp dir");
        let users = (!users.is_empty()).then(|| {
            let path = dir.path().join("users.toml");
            std::fs::write(&path, users_toml(users)).expect("write users file");
            path
        });
        let config = (!config.is_empty()).then(|| {
            let path = dir.path().join("firehose.toml");
            std::fs::write(&path, config).expect("write config file");
            path
        });
        DataDir { dir, users, config }
    }

    /// The standard users (`pub` may publish anywhere) and `config`.
    pub(crate) fn standard(config: &str) -> DataDir {
        DataDir::new(&super::ServerOptions::standard().users, config)
    }

    /// The `--data-dir` of servers started here.
    pub(crate) fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `firehose serve` on this directory's files with `--data-dir data_dir`, not yet waited
    /// for.
    pub(crate) fn serve_command(&self, data_dir: &Path) -> Command {
        let mut cmd = Command::new(firehose_bin());
        cmd.args(["serve", "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir);
        if let Some(users) = &self.users {
            cmd.arg("--users").arg(users);
        }
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("FIREHOSE_") || key == "RUST_LOG" {
                cmd.env_remove(key);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts a server on this data and waits until both listeners are bound.
    ///
    /// # Panics
    /// If it exits or does not log both addresses within [`TIMEOUT`].
    pub(crate) fn start(&self) -> Node {
        match self.spawn_serve(&self.data()) {
            Ok(node) => node,
            Err((status, log)) => {
                panic!("firehose serve exited with {status} before listening; log:\n{log}")
            }
        }
    }

    /// Runs `firehose serve` on `data_dir`: the node once both listeners are bound, or the exit
    /// status and log if it exits first.
    pub(crate) fn spawn_serve(&self, data_dir: &Path) -> Result<Node, (ExitStatus, String)> {
        let mut child = self
            .serve_command(data_dir)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", firehose_bin()));
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel::<()>();
        let sink = Arc::clone(&log);
        let reader = thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        sink.lock()
                            .expect("log lock")
                            .push_str(&String::from_utf8_lossy(&line));
                        let _ = tx.send(());
                    }
                }
            }
        });
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let text = log.lock().expect("log lock").clone();
            if let (Some(mqtt), Some(http)) = (
                bound_addr(&text, "MQTT listener bound addr="),
                bound_addr(&text, "HTTP listener bound addr="),
            ) {
                return Ok(Node {
                    child: Some(child),
                    mqtt,
                    http,
                    log,
                });
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                let _ = reader.join();
                let text = log.lock().expect("log lock").clone();
                return Err((status, text));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("firehose serve did not log both listener addresses within {TIMEOUT:?}; log:\n{text}");
            }
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(()) | Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
            }
        }
    }
}

fn bound_addr(log: &str, mark: &str) -> Option<SocketAddr> {
    log.lines().find_map(|line| {
        let start = line.find(mark)? + mark.len();
        let rest = &line[start..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        rest[..end].trim_matches('"').parse().ok()
    })
}

/// A running `firehose serve` with MQTT and HTTP listeners; SIGKILLed on drop.
pub(crate) struct Node {
    child: Option<Child>,
    /// MQTT listener.
    pub(crate) mqtt: SocketAddr,
    /// HTTP listener.
    pub(crate) http: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Node {
    /// Everything it wrote to stderr so far.
    pub(crate) fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// `kill -9` and reap: no chance to flush or close anything.
    pub(crate) fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL firehose serve");
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (bounded) for the exit status.
    pub(crate) fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server still owned");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        wait_with_timeout(&mut child, TIMEOUT, "firehose serve after SIGTERM")
    }

    /// Whether the process is still running.
    pub(crate) fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("try_wait").is_none())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if thread::panicking() {
                // The test failed: the server's side of the story goes with the failure.
                eprintln!(
                    "---- firehose serve log (mqtt {}, http {}) ----\n{}---- end of log ----",
                    self.mqtt,
                    self.http,
                    self.log()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// Percent-encodes a query parameter value (everything but unreserved characters).
pub(crate) fn enc(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(byte))
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn request(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> TcpStream {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("send GET {target}: {e}"));
    stream
}

/// Reads the status line and headers; returns the status and the lower-cased headers.
fn read_head(reader: &mut impl BufRead, target: &str) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("GET {target}: reading status line: {e}"));
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET {target}: bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("GET {target}: reading headers: {e}"));
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    (status, headers)
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"))
}

/// Reads one chunk of a chunked body; `None` at the last chunk or EOF.
fn read_chunk(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut size_line = String::new();
    if reader.read_line(&mut size_line).ok()? == 0 {
        return None;
    }
    let size = usize::from_str_radix(size_line.trim().split(';').next()?.trim(), 16).ok()?;
    if size == 0 {
        return None;
    }
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk).ok()?;
    chunk.truncate(size);
    Some(chunk)
}

/// `GET target` (path and query); returns the status and body.
///
/// # Panics
/// On a connection error, or no complete answer within [`TIMEOUT`].
pub(crate) fn http_get_with(
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let stream = request(addr, target, headers);
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("set_read_timeout");
    let mut reader = BufReader::new(stream);
    let (status, head) = read_head(&mut reader, target);
    let mut body = Vec::new();
    if is_chunked(&head) {
        while let Some(chunk) = read_chunk(&mut reader) {
            body.extend(chunk);
        }
    } else {
        reader
            .read_to_end(&mut body)
            .unwrap_or_else(|e| panic!("GET {target}: reading body: {e}"));
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `GET target` without extra headers.
pub(crate) fn http_get(addr: SocketAddr, target: &str) -> (u16, String) {
    http_get_with(addr, target, &[])
}

/// `GET target`, asserting 200 and a JSON body.
pub(crate) fn http_json(addr: SocketAddr, target: &str) -> Value {
    let (status, body) = http_get(addr, target);
    assert_eq!(status, 200, "GET {target}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {target}: not JSON ({e}): {body}"))
}

/// Every event matching `query` (without `after`/`limit`), paging with `limit` and `after` =
/// `next_after` until `next_after` is null.
///
/// # Panics
/// If paging does not end within 10,000 pages or a page is malformed.
pub(crate) fn history(addr: SocketAddr, query: &str, limit: usize) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after: Option<u64> = None;
    for _ in 0..10_000 {
        let mut target = format!("/api/v1/events?limit={limit}");
        if !query.is_empty() {
            target.push('&');
            target.push_str(query);
        }
        if let Some(after) = after {
            target.push_str(&format!("&after={after}"));
        }
        let page = http_json(addr, &target);
        let batch = page["events"]
            .as_array()
            .unwrap_or_else(|| panic!("GET {target}: no events array: {page}"));
        assert!(
            batch.len() <= limit,
            "GET {target}: more than {limit} events"
        );
        events.extend(batch.iter().cloned());
        match &page["next_after"] {
            Value::Null => {
                assert_eq!(
                    page["more"], false,
                    "GET {target}: next_after null but more"
                );
                return events;
            }
            next => {
                let next = next
                    .as_u64()
                    .unwrap_or_else(|| panic!("GET {target}: next_after {next}"));
                assert!(
                    after.is_none_or(|a| next > a),
                    "GET {target}: next_after {next} does not advance"
                );
                after = Some(next);
            }
        }
    }
    panic!("history of {query:?} did not end within 10,000 pages");
}

/// The event ids of a list of events.
pub(crate) fn ids(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| {
            e["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("event without id: {e}"))
        })
        .collect()
}

/// The text payloads of a list of events.
pub(crate) fn payloads(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match &e["payload"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

/// Polls `cond` every 100 ms until it holds; panics with `what` after `timeout`.
pub(crate) fn eventually(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events
// ---------------------------------------------------------------------------------------------

/// What an SSE stream delivered.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SseItem {
    /// An event: its `id:` and its `data:` parsed as JSON.
    Event {
        /// The SSE id.
        id: Option<String>,
        /// The data.
        data: Value,
    },
    /// A comment line (`: heartbeat`), without the colon.
    Comment(String),
}

/// An open SSE stream; closed on drop.
pub(crate) struct Sse {
    stream: TcpStream,
    /// HTTP status.
    pub(crate) status: u16,
    /// Lower-cased response headers.
    pub(crate) headers: Vec<(String, String)>,
    items: Receiver<SseItem>,
}

impl Sse {
    /// Opens `GET target` with extra headers and starts reading events in a thread.
    pub(crate) fn open(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Sse {
        let mut all = vec![("Accept", "text/event-stream")];
        all.extend_from_slice(headers);
        let stream = request(addr, target, &all);
        stream
            .set_read_timeout(Some(TIMEOUT))
            .expect("set_read_timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
        let (status, head) = read_head(&mut reader, target);
        let (tx, items) = mpsc::channel();
        // No read timeout from now on: silence is for the test to judge.
        stream.set_read_timeout(None).expect("set_read_timeout");
        let chunked = is_chunked(&head);
        thread::spawn(move || {
            let mut pending = String::new();
            let mut id = None;
            let mut data = Vec::<String>::new();
            loop {
                let bytes = if chunked {
                    match read_chunk(&mut reader) {
                        Some(b) => b,
                        None => break,
                    }
                } else {
                    let mut buf = [0u8; 8192];
                    match reader.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf[..n].to_vec(),
                    }
                };
                pending.push_str(&String::from_utf8_lossy(&bytes));
                while let Some(end) = pending.find('\n') {
                    let line: String = pending.drain(..=end).collect();
                    let line = line.trim_end_matches(['\n', '\r']);
                    if line.is_empty() {
                        if !data.is_empty() {
                            let text = data.join("\n");
                            let data = serde_json::from_str(&text)
                                .unwrap_or_else(|_| Value::String(text.clone()));
                            if tx
                                .send(SseItem::Event {
                                    id: id.take(),
                                    data,
                                })
                                .is_err()
                            {
                                return;
                            }
                        }
                        data.clear();
                        id = None;
                    } else if let Some(comment) = line.strip_prefix(':') {
                        if tx
                            .send(SseItem::Comment(comment.trim().to_string()))
                            .is_err()
                        {
                            return;
                        }
                    } else if let Some(value) = line.strip_prefix("id:") {
                        id = Some(value.trim_start().to_string());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push(value.strip_prefix(' ').unwrap_or(value).to_string());
                    }
                }
            }
        });
        Sse {
            stream,
            status,
            headers: head,
            items,
        }
    }

    /// The next item, or `None` after `timeout` or when the stream ended.
    pub(crate) fn next_within(&mut self, timeout: Duration) -> Option<SseItem> {
        self.items.recv_timeout(timeout).ok()
    }

    /// The next `n` events (comments skipped).
    ///
    /// # Panics
    /// If they do not all arrive within [`TIMEOUT`].
    pub(crate) fn events(&mut self, n: usize) -> Vec<(u64, Value)> {
        let deadline = Instant::now() + TIMEOUT;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.items.recv_timeout(left) {
                Ok(SseItem::Event { id, data }) => {
                    let id: u64 = id
                        .as_deref()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| panic!("SSE event without a numeric id: {data}"));
                    out.push((id, data));
                }
                Ok(SseItem::Comment(_)) => {}
                Err(_) => panic!(
                    "SSE: {} of {n} events within {TIMEOUT:?}: {out:?}",
                    out.len()
                ),
            }
        }
        out
    }
}

impl Drop for Sse {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// `GET target`; returns the status and the response headers (names in lower case), without
/// reading the body (so it also works on an endless stream).
///
/// # Panics
/// On a connection error, or no answer within [`TIMEOUT`].
pub(crate) fn http_get_headers(addr: SocketAddr, target: &str) -> (u16, Vec<(String, String)>) {
    let stream = request(addr, target, &[]);
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("set_read_timeout");
    let mut reader = BufReader::new(stream);
    read_head(&mut reader, target)
}
