//! Helpers for the bridge tests (`bridge_*.rs`), on top of `common`:
//! - [`node_with`]: a server with HTTP and MQTT on free loopback ports, a users file written
//!   verbatim (so it can hold `token` hashes) and a config file;
//! - [`post`]: a bare HTTP/1.1 request with a body, answering status, headers and body;
//! - [`hmac_hex`]: HMAC-SHA256 with the `openssl` command, independent of the code under test;
//! - [`Sshd`]: a real OpenSSH `sshd` on a free loopback port with its own host key, an
//!   authorized key made with `ssh-keygen`, and a `ForceCommand` that plays recorded Gerrit
//!   `stream-events` output (see [`Sshd::start`]);
//! - [`wait_until`]: polls a condition with a deadline;
//! - [`assert_log_intact`]: no line of a server's log was forged by a peer;
//! - [`schema`]: published payloads checked against the JSON Schemas the server serves.
//!
//! Every wait is bounded by `common::TIMEOUT`.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::durable::{DataDir, Node};
use crate::common::{run_with_timeout, User, TIMEOUT};

pub(crate) mod schema;

/// Where Debian's `openssh-server` puts the daemon.
pub(crate) const SSHD: &str = "/usr/sbin/sshd";

/// The fixtures directory of this package.
pub(crate) fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Reads a fixture file.
pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let path = fixtures().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read fixture {}: {e}", path.display()))
}

/// A server whose users file is `users_toml` verbatim and whose config is `config`.
pub(crate) fn node_with(users_toml: &str, config: &str) -> (DataDir, Node) {
    // DataDir writes a users file only for a non-empty list: give it one, then replace it.
    let dir = DataDir::new(&[User::new("placeholder", "placeholder", &[])], config);
    std::fs::write(dir.dir.path().join("users.toml"), users_toml).expect("write users file");
    let node = dir.start();
    (dir, node)
}

/// A `[[user]]` table with a hashed password, optional hashed token and publish filters.
pub(crate) fn user_toml(
    name: &str,
    password: &str,
    token: Option<&str>,
    publish: &[&str],
) -> String {
    let mut text = format!(
        "[[user]]\nname = \"{name}\"\npassword = \"{}\"\n",
        crate::common::hash_password(password)
    );
    if let Some(token) = token {
        text.push_str(&format!(
            "token = \"{}\"\n",
            crate::common::hash_password(token)
        ));
    }
    let quoted: Vec<String> = publish.iter().map(|f| format!("\"{f}\"")).collect();
    text.push_str(&format!("publish = [{}]\n\n", quoted.join(", ")));
    text
}

/// An HTTP answer.
#[derive(Debug)]
pub(crate) struct Answer {
    /// Status code.
    pub(crate) status: u16,
    /// Headers, names lower-cased.
    pub(crate) headers: Vec<(String, String)>,
    /// Body.
    pub(crate) body: Vec<u8>,
}

impl Answer {
    /// The body as JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer {} is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `METHOD target` with `headers` and `body`, `Connection: close`; reads the whole answer.
///
/// # Panics
/// On a connection error or no answer within [`TIMEOUT`].
pub(crate) fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send head");
    // The server may answer (413) before reading all of a large body and close: ignore that.
    let _ = stream.write_all(body);
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {target}: bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header line");
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            if reader.read_line(&mut size).unwrap_or(0) == 0 {
                break;
            }
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).expect("chunk");
            chunk.truncate(size);
            body.extend(chunk);
        }
    } else {
        let _ = reader.read_to_end(&mut body);
    }
    Answer {
        status,
        headers,
        body,
    }
}

/// `POST target` with `headers` and `body`.
pub(crate) fn post(
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    request(addr, "POST", target, headers, body)
}

/// `GET target`.
pub(crate) fn get(addr: SocketAddr, target: &str) -> Answer {
    request(addr, "GET", target, &[], b"")
}

/// Hex HMAC-SHA256 of `body` with `secret`, computed by `openssl dgst`.
pub(crate) fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let out = run_with_timeout(
        Command::new("openssl").args(["dgst", "-sha256", "-hmac", secret, "-r"]),
        body,
        TIMEOUT,
    );
    assert!(out.status.success(), "openssl dgst failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(hex.len(), 64, "openssl printed {text:?}");
    hex
}

/// Asserts that every line of a server's log is one the server wrote: a timestamp and a
/// level first, and no control character anywhere. A peer's newline would start a forged
/// line; an escape sequence would drive the terminal of whoever reads the log.
pub(crate) fn assert_log_intact(log: &str) {
    for line in log.lines() {
        let own = line.len() > 30
            && line.as_bytes()[..4].iter().all(u8::is_ascii_digit)
            && line.as_bytes()[4] == b'-'
            && ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
                .iter()
                .any(|level| line.get(27..).unwrap_or("").trim_start().starts_with(level));
        assert!(
            own,
            "a log line the server did not write: {line:?}\nlog:\n{log}"
        );
        assert!(
            !line.chars().any(char::is_control),
            "a control character in log line {line:?}"
        );
    }
}

/// Polls `check` every 50 ms until it gives a value or [`TIMEOUT`] passes.
///
/// # Panics
/// With `what` when the deadline passes.
pub(crate) fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "no {what} within {TIMEOUT:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The lines of a recorded `stream-events` fixture that are Gerrit events (JSON objects with a
/// `type`), in order, byte for byte.
pub(crate) fn event_lines(fixture_bytes: &[u8]) -> Vec<Vec<u8>> {
    fixture_bytes
        .split(|&b| b == b'\n')
        .filter(|line| {
            serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .is_some_and(|v| v.get("type").is_some_and(|t| t.is_string()))
        })
        .map(<[u8]>::to_vec)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A real sshd playing Gerrit
// ---------------------------------------------------------------------------------------------

/// Runs a command and asserts it succeeded.
fn run(cmd: &mut Command) -> Vec<u8> {
    let out = run_with_timeout(cmd, b"", Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Makes an Ed25519 key pair `path` and `path.pub` with `ssh-keygen`.
pub(crate) fn keygen(path: &Path) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "firehose-test", "-f"])
        .arg(path));
}

/// `SHA256:...` of a public key file, by `ssh-keygen -lf`.
pub(crate) fn fingerprint(public_key: &Path) -> String {
    let out = run(Command::new("ssh-keygen").arg("-lf").arg(public_key));
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("ssh-keygen -lf printed {text:?}"))
        .to_owned()
}

/// A free loopback port (bound, read and released: a small race the tests accept).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// The user the tests run as.
fn current_user() -> String {
    let out = run(Command::new("id").arg("-un"));
    String::from_utf8_lossy(&out).trim().to_owned()
}

/// The `ForceCommand` script: records the command asked for, then plays a fixture. Its
/// behaviour per connection comes from files in its directory, keyed by the command asked for
/// (see [`play_key`]), so that several bridges can share one server:
/// - the `n`th connection asking for a command plays `play-<key>-<n>` if present, else
///   `play-<key>`, else nothing;
/// - nothing is played before the file `go` exists ([`Sshd::go`], at most 30 s), so that a
///   test can subscribe first;
/// - a play file ending with a line `DROP` has the connection cut there (the per-connection
///   `sshd` process is killed: the TCP connection drops without an SSH close);
/// - a play file ending with a line `EXIT` has the command exit there with status 1, after
///   writing the file `<play file>.stderr`, if any, to its standard error (as Gerrit explains
///   a refusal);
/// - otherwise the stream stays open, silent, until the file `stop` appears (at most 2 min).
const STUB: &str = r#"#!/bin/sh
dir="$(dirname "$0")"
printf '%s\n' "$SSH_ORIGINAL_COMMAND" >> "$dir/commands"
w=0
while [ ! -e "$dir/go" ] && [ "$w" -lt 300 ]; do sleep 0.1; w=$((w + 1)); done
key=$(printf '%s' "$SSH_ORIGINAL_COMMAND" | tr -c 'a-zA-Z0-9' '_')
n=$(( $(cat "$dir/count-$key" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$dir/count-$key"
play="$dir/play-$key-$n"
[ -e "$play" ] || play="$dir/play-$key"
[ -e "$play" ] || play=/dev/null
if [ -s "$play" ] && tail -n 1 "$play" | grep -qx DROP; then
    sed '$d' "$play"
    sleep 1
    kill -9 "$PPID"
    exit 0
fi
if [ -s "$play" ] && tail -n 1 "$play" | grep -qx EXIT; then
    sed '$d' "$play"
    [ -e "$play.stderr" ] && cat "$play.stderr" >&2
    exit 1
fi
cat "$play"
i=0
while [ ! -e "$dir/stop" ] && [ "$i" -lt 600 ]; do sleep 0.2; i=$((i + 1)); done
"#;

/// The name of the play file for the `n`th connection asking for `command` (`None`: every
/// connection without a numbered file).
pub(crate) fn play_key(command: &str, n: Option<u32>) -> String {
    let key: String = command
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    match n {
        Some(n) => format!("play-{key}-{n}"),
        None => format!("play-{key}"),
    }
}

/// A running `sshd` that plays Gerrit; killed (and its sessions told to stop) on drop.
pub(crate) struct Sshd {
    /// Holds keys, config, script and play files.
    pub(crate) dir: tempfile::TempDir,
    /// The port it listens on (127.0.0.1).
    pub(crate) port: u16,
    /// The user to log in as (the one running the tests).
    pub(crate) user: String,
    /// The client's private key (authorized).
    pub(crate) client_key: PathBuf,
    /// The host's public key file.
    pub(crate) host_pub: PathBuf,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl Sshd {
    /// Starts `sshd` with `plays` as the play files (named with [`play_key`]).
    ///
    /// # Panics
    /// If `/usr/sbin/sshd` is missing (run `scripts/test-bridges`, which installs Debian's
    /// `openssh-server`), or if it does not accept connections within [`TIMEOUT`].
    pub(crate) fn start(plays: &[(&str, &[u8])]) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: the Gerrit bridge tests need a real OpenSSH server. \
             Install Debian's openssh-server (scripts/test-bridges does it)."
        );
        let dir = tempfile::Builder::new()
            .prefix("firehose-sshd-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        let host_key = d.join("host_ed25519");
        let client_key = d.join("client_ed25519");
        keygen(&host_key);
        keygen(&client_key);
        std::fs::copy(d.join("client_ed25519.pub"), d.join("authorized_keys"))
            .expect("authorized_keys");
        let stub = d.join("gerrit-stub.sh");
        std::fs::write(&stub, STUB).expect("write stub");
        run(Command::new("chmod").arg("755").arg(&stub));
        for (name, content) in plays {
            std::fs::write(d.join(name), content).expect("write play file");
        }
        let user = current_user();
        if user == "root" {
            // sshd started by root separates privileges and needs this directory.
            std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        }
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nPidFile {pid}\n\
             AuthorizedKeysFile {keys}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin yes\n\
             ForceCommand {stub}\nAllowUsers {user}\nLogLevel VERBOSE\nMaxStartups 50\n",
            host = host_key.display(),
            pid = d.join("sshd.pid").display(),
            keys = d.join("authorized_keys").display(),
            stub = stub.display(),
        );
        let config_path = d.join("sshd_config");
        std::fs::write(&config_path, config).expect("write sshd_config");
        let mut child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {SSHD}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr piped");
        let sink = log.clone();
        thread::spawn(move || {
            let reader = BufReader::new(stderr);
            for line in reader.lines().map_while(Result::ok) {
                let mut log = sink.lock().expect("log");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut sshd = Sshd {
            port,
            user,
            client_key,
            host_pub: d.join("host_ed25519.pub"),
            child: Some(child),
            log,
            dir,
        };
        // Ready when it greets with its SSH banner.
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut banner = [0u8; 4];
                if stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-" {
                    break;
                }
            }
            if let Some(child) = sshd.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("sshd exited with {status}; log:\n{}", sshd.log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not accept connections on port {port} within {TIMEOUT:?}; log:\n{}",
                sshd.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        sshd
    }

    /// Lets the scripts play (see [`STUB`]).
    pub(crate) fn go(&self) {
        std::fs::write(self.dir.path().join("go"), b"").expect("write go");
    }

    /// What sshd logged.
    pub(crate) fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// A known_hosts line for this server's host key.
    pub(crate) fn known_hosts_line(&self) -> String {
        let key = std::fs::read_to_string(&self.host_pub).expect("host key");
        let mut parts = key.split_whitespace();
        let (kind, data) = (parts.next().expect("type"), parts.next().expect("key"));
        format!("[127.0.0.1]:{} {kind} {data}\n", self.port)
    }

    /// The commands the script was asked to run, one per connection that logged in.
    pub(crate) fn commands(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("commands"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// A `[[bridge.gerrit]]` table for this server; `extra` adds lines (host key settings).
    pub(crate) fn bridge_toml(&self, name: &str, extra: &str) -> String {
        format!(
            "[[bridge.gerrit]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {}\n\
             user = \"{}\"\nprivate_key = \"{}\"\nbackoff_initial_ms = 200\n\
             backoff_max_secs = 1\nkeepalive_secs = 2\n{extra}\n",
            self.port,
            self.user,
            self.client_key.display()
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.path().join("stop"), b"");
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "---- sshd log ----\n{}---- end of sshd log ----",
                self.log()
            );
        }
        // Let the scripts of open sessions see `stop` before the directory goes.
        thread::sleep(Duration::from_millis(300));
    }
}

/// A one-route HTTP server playing Gerrit's events-log plugin: every request gets `body`; the
/// request lines and `Authorization` headers are recorded.
pub(crate) struct FakeEventsLog {
    /// `http://127.0.0.1:PORT/plugins/events-log/`.
    pub(crate) url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

/// A request line and its `Authorization` header.
pub(crate) type Request = (String, Option<String>);

impl FakeEventsLog {
    /// Starts serving `body` on a free loopback port (for the life of the test process).
    pub(crate) fn start(body: Vec<u8>) -> FakeEventsLog {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(TIMEOUT));
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut request_line = String::new();
                let _ = reader.read_line(&mut request_line);
                let mut authorization = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("authorization") {
                            authorization = Some(value.trim().to_owned());
                        }
                    }
                }
                seen.lock()
                    .expect("requests")
                    .push((request_line.trim().to_owned(), authorization));
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json;charset=UTF-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        FakeEventsLog {
            url: format!("http://{addr}/plugins/events-log/"),
            requests,
        }
    }

    /// The requests so far: request line and `Authorization` header.
    pub(crate) fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("requests").clone()
    }
}
