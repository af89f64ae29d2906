//! The syslog bridge against the real binary and a real sender: util-linux `logger --server`
//! over UDP and TCP, RFC 3164 and RFC 5424, newline and octet-counting framing; JSON lines;
//! garbage, oversized and truncated input over raw sockets, which is counted and never stops
//! a listener; and the events still there after a restart.

mod bridge_support;
mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;

use serde_json::Value;

use bridge_support::{assert_log_intact, get, wait_until};
use common::durable::{enc, history, http_json, DataDir, Node};
use common::{run_with_timeout, TIMEOUT};

/// Largest message the bridge accepts in these tests.
const MAX_LINE: usize = 1024;

const CONFIG: &str = r#"
[[bridge.syslog]]
name = "logs"
udp = "127.0.0.1:0"
tcp = "127.0.0.1:0"
json_tcp = "127.0.0.1:0"
max_line_bytes = 1024
"#;

/// The three listeners' addresses, read from the server's log.
struct Listeners {
    udp: SocketAddr,
    tcp: SocketAddr,
    json: SocketAddr,
}

fn listeners(node: &Node) -> Listeners {
    let log = node.log();
    let find = |mark: &str| -> SocketAddr {
        log.lines()
            .find_map(|line| {
                let rest = &line[line.find(mark)? + mark.len()..];
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                rest[..end].trim_matches('"').parse().ok()
            })
            .unwrap_or_else(|| panic!("no {mark:?} in the log:\n{log}"))
    };
    Listeners {
        udp: find("syslog UDP listener bound addr="),
        tcp: find("syslog TCP listener bound addr="),
        json: find("JSON lines TCP listener bound addr="),
    }
}

/// Runs `logger --server 127.0.0.1 --port PORT -t TAG ARGS...`, with `stdin` as its input
/// (one message per line) when `message` is empty.
fn logger(port: u16, tag: &str, args: &[&str], message: &str, stdin: &str) {
    let mut cmd = Command::new("logger");
    cmd.args([
        "--server",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "-t",
        tag,
    ])
    .args(args);
    if !message.is_empty() {
        cmd.arg(message);
    }
    let out = run_with_timeout(&mut cmd, stdin.as_bytes(), TIMEOUT);
    assert!(
        out.status.success(),
        "logger {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every event under `logs/`, as (topic, payload JSON).
fn log_events(node: &Node) -> Vec<(String, Value)> {
    history(node.http, &format!("topic={}", enc("logs/#")), 200)
        .into_iter()
        .map(|event| {
            let topic = event["topic"].as_str().unwrap_or_default().to_owned();
            let payload = match &event["payload"] {
                Value::String(text) => serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("payload of {topic} is not JSON ({e}): {text}")),
                other => other.clone(),
            };
            (topic, payload)
        })
        .collect()
}

/// Waits until the events whose `app` is `app` number `n`, and returns them.
fn wait_for_app(node: &Node, app: &str, n: usize) -> Vec<(String, Value)> {
    wait_until(&format!("{n} events from {app}"), || {
        let events: Vec<_> = log_events(node)
            .into_iter()
            .filter(|(_, p)| p["app"] == app)
            .collect();
        (events.len() >= n).then_some(events)
    })
}

/// Checks that `topic` is `logs/<payload host>/<app>`.
fn assert_topic(topic: &str, payload: &Value, app: &str) {
    let host = payload["host"].as_str().expect("host");
    assert!(!host.is_empty(), "{payload}");
    assert_eq!(topic, format!("logs/{host}/{app}"), "{payload}");
}

#[test]
fn logger_in_every_mode() {
    let dir = DataDir::standard(CONFIG);
    let node = dir.start();
    let l = listeners(&node);
    let short_host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .split('.')
        .next()
        .unwrap_or_default()
        .to_owned();

    // UDP, RFC 3164.
    logger(
        l.udp.port(),
        "udp3164",
        &["--udp", "--rfc3164"],
        "hello over udp",
        "",
    );
    let events = wait_for_app(&node, "udp3164", 1);
    let (topic, p) = &events[0];
    assert_topic(topic, p, "udp3164");
    assert_eq!(p["host"], short_host.as_str());
    assert_eq!(p["message"], "hello over udp");
    assert_eq!(p["severity"], "notice");
    assert_eq!(p["facility"], "user");
    assert_eq!(p["protocol"], "rfc3164");
    assert!(p["time"].as_str().expect("time").ends_with('Z'), "{p}");

    // UDP, RFC 5424 with priority, msgid, procid and structured data.
    logger(
        l.udp.port(),
        "udp5424",
        &[
            "--udp",
            "--rfc5424",
            "-p",
            "local3.warning",
            "--msgid",
            "ID47",
            "--id=4242",
            "--sd-id",
            "zoo@123",
            "--sd-param",
            "tiger=\"hungry\"",
        ],
        "structured hello",
        "",
    );
    let events = wait_for_app(&node, "udp5424", 1);
    let (topic, p) = &events[0];
    assert_topic(topic, p, "udp5424");
    assert_eq!(p["severity"], "warning");
    assert_eq!(p["facility"], "local3");
    assert_eq!(p["msgid"], "ID47");
    assert_eq!(p["procid"], "4242");
    assert_eq!(p["message"], "structured hello");
    assert_eq!(p["structured_data"]["zoo@123"]["tiger"], "hungry");
    assert_eq!(p["protocol"], "rfc5424");

    // TCP, each format with newline framing and with octet counting; several messages on one
    // connection (logger sends one per line of its input).
    let modes: [(&str, &[&str]); 4] = [
        ("tcp3164", &["--tcp", "--rfc3164"]),
        ("tcp5424", &["--tcp", "--rfc5424"]),
        ("oct3164", &["--tcp", "--octet-count", "--rfc3164"]),
        ("oct5424", &["--tcp", "--octet-count", "--rfc5424"]),
    ];
    for (tag, args) in modes {
        logger(
            l.tcp.port(),
            tag,
            args,
            "",
            "first line\nsecond line\nthird: with [brackets]\n",
        );
        let events = wait_for_app(&node, tag, 3);
        let messages: Vec<&str> = events
            .iter()
            .map(|(topic, p)| {
                assert_topic(topic, p, tag);
                p["message"].as_str().expect("message")
            })
            .collect();
        assert_eq!(
            messages,
            ["first line", "second line", "third: with [brackets]"],
            "{tag}"
        );
    }

    // A tag with topic wildcards and a separator becomes one safe level.
    logger(l.udp.port(), "a/b+c#d", &["--udp"], "odd tag", "");
    let events = wait_until("the odd tag's event", || {
        log_events(&node)
            .into_iter()
            .find(|(_, p)| p["message"] == "odd tag")
    });
    assert!(events.0.ends_with("/a_b_c_d"), "{}", events.0);
    assert_eq!(events.1["app"], "a/b+c#d");

    let status = http_json(node.http, "/healthz?format=json");
    let bridge = status["bridges"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["bridge"] == "logs"))
        .unwrap_or_else(|| panic!("no logs bridge in {status}"));
    assert_eq!(bridge["kind"], "syslog");
    assert_eq!(bridge["state"], "listening");
    assert_eq!(bridge["events_in"], 2 + 4 * 3 + 1);
    assert_eq!(bridge["rejected"], 0);
}

#[test]
fn bad_input_is_counted_and_never_stops_a_listener() {
    let dir = DataDir::standard(CONFIG);
    let node = dir.start();
    let l = listeners(&node);

    // UDP: garbage, an oversized datagram, then a good one.
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    udp.send_to(b"hello, no PRI here", l.udp).expect("send");
    let big = format!("<13>Nov 25 10:00:57 h big: {}", "x".repeat(MAX_LINE * 2));
    udp.send_to(big.as_bytes(), l.udp).expect("send");
    udp.send_to(b"\xff\xfe\x00garbage", l.udp).expect("send");
    udp.send_to(b"<13>Nov 25 10:00:57 h1 udpok: after garbage", l.udp)
        .expect("send");

    // TCP: one connection with garbage, an oversized line, an oversized octet-counted frame,
    // and good messages between them.
    let mut tcp = TcpStream::connect(l.tcp).expect("connect");
    let mut stream = Vec::new();
    stream.extend_from_slice(b"just some text\n");
    stream.extend_from_slice(b"<13>Nov 25 10:00:57 h2 tcpok: one\n");
    stream.extend_from_slice(format!("<13>{}\n", "y".repeat(MAX_LINE * 3)).as_bytes());
    stream.extend_from_slice(b"<13>Nov 25 10:00:57 h2 tcpok: two\n");
    let frame = format!("<13>Nov 25 10:00:57 h2 big: {}", "z".repeat(MAX_LINE * 2));
    stream.extend_from_slice(format!("{} {frame}", frame.len()).as_bytes());
    let three = "<13>Nov 25 10:00:57 h2 tcpok: three";
    stream.extend_from_slice(format!("{} {three}", three.len()).as_bytes());
    tcp.write_all(&stream).expect("write");
    drop(tcp);
    // A connection that ends inside an octet-counted frame.
    let mut cut = TcpStream::connect(l.tcp).expect("connect");
    cut.write_all(b"500 <13>Nov 25 10:00:57 h3 cut: never complete")
        .expect("write");
    drop(cut);

    // JSON lines: not JSON, not an object, oversized, then good ones.
    let mut json = TcpStream::connect(l.json).expect("connect");
    let good =
        r#"{"host":"web/1","program":"nginx","message":"GET / 200","severity":6,"status":200}"#;
    let long = format!(r#"{{"message":"{}"}}"#, "j".repeat(MAX_LINE * 2));
    for line in ["not json", "[1,2]", &long, good, r#"{"msg":"bare"}"#] {
        json.write_all(line.as_bytes()).expect("write");
        json.write_all(b"\n").expect("write");
    }
    drop(json);

    let expected_refusals = 3 + 4 + 3;
    let health = wait_until("the refusals and events in /healthz", || {
        let health = http_json(node.http, "/healthz?format=json");
        let bridge = health["bridges"]
            .as_array()?
            .iter()
            .find(|b| b["bridge"] == "logs")?
            .clone();
        (bridge["rejected"] == expected_refusals && bridge["events_in"] == 6).then_some(bridge)
    });
    assert_eq!(health["state"], "listening");
    assert_eq!(health["errors"], 0);

    // The listeners run side by side: order holds within a connection, not across them.
    let mut events = log_events(&node);
    events.sort_by(|a, b| a.0.cmp(&b.0));
    let topics: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            "logs/127.0.0.1/-",
            "logs/h1/udpok",
            "logs/h2/tcpok",
            "logs/h2/tcpok",
            "logs/h2/tcpok",
            "logs/web_1/nginx",
        ]
    );
    let nginx = &events[5].1;
    assert_eq!(nginx["host"], "web/1");
    assert_eq!(nginx["severity"], "info");
    assert_eq!(nginx["message"], "GET / 200");
    assert_eq!(nginx["fields"]["status"], 200);
    let messages: Vec<&Value> = events[2..5].iter().map(|(_, p)| &p["message"]).collect();
    assert_eq!(messages, ["one", "two", "three"]);

    let metrics = get(node.http, "/metrics").text();
    let line = format!(
        "firehose_bridge_rejected_total{{bridge=\"logs\",kind=\"syslog\"}} {expected_refusals}"
    );
    assert!(
        metrics.lines().any(|l| l == line),
        "missing {line:?}:\n{metrics}"
    );
    let log = node.log();
    assert!(log.contains("refused input"), "{log}");

    // The events are in the log: a restart finds them all.
    let status = node.terminate();
    assert!(status.success(), "{status}");
    let node = dir.start();
    assert_eq!(log_events(&node).len(), 6);
}

/// The bytes `logger` sends over TCP for `input` (its standard input, one message per line),
/// read by a listener of this test: to learn the length of the header it writes before a
/// message.
fn logger_wire(tag: &str, args: &[&str], input: &str) -> Vec<u8> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let reader = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let mut wire = Vec::new();
        std::io::Read::read_to_end(&mut stream, &mut wire).expect("read");
        wire
    });
    logger(port, tag, args, "", input);
    reader.join().expect("reader")
}

/// Issue 27: over TCP with newline framing, a line of exactly `max_line_bytes` is accepted
/// whether it ends with LF or CRLF (the `\r` is framing, not message), and one byte more is
/// refused either way. The lines come from util-linux `logger`, which sends a `\r` at the end
/// of an input line as it is, before its own `\n`.
#[test]
fn a_crlf_line_of_exactly_max_line_bytes_is_accepted_over_tcp() {
    let dir = DataDir::standard(CONFIG);
    let node = dir.start();
    let l = listeners(&node);
    let args = ["--tcp", "--rfc3164", "--size", "4096"];

    // RFC 3164 headers have a fixed width (`Mmm dd hh:mm:ss`): measure this host's once.
    let probe = logger_wire("crlfmax", &args, "probe\r\n");
    assert!(probe.ends_with(b" crlfmax: probe\r\n"), "{probe:?}");
    let header = probe.len() - "probe\r\n".len();
    let body = |len: usize, mark: char| -> String {
        let mut text = format!("{mark}{len}-");
        text.push_str(&"m".repeat(len - header - text.len()));
        text
    };
    let exact_crlf = body(MAX_LINE, 'c');
    let exact_lf = body(MAX_LINE, 'l');
    let over_crlf = body(MAX_LINE + 1, 'o');
    let over_lf = body(MAX_LINE + 1, 'p');
    let input = format!("{exact_crlf}\r\n{over_crlf}\r\n{exact_lf}\n{over_lf}\nlast\r\n");
    logger(l.tcp.port(), "crlfmax", &args, "", &input);

    let events = wait_for_app(&node, "crlfmax", 3);
    let messages: Vec<&str> = events
        .iter()
        .map(|(_, p)| p["message"].as_str().expect("message"))
        .collect();
    assert_eq!(
        messages,
        [exact_crlf.as_str(), exact_lf.as_str(), "last"],
        "the exact-limit lines, CRLF and LF, without their \\r"
    );

    // The same over UDP, where some senders end a datagram with CRLF too (raw socket).
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let datagram = |len: usize, app: &str| {
        let mut text = format!("<13>Nov 25 10:00:57 h {app}: ");
        text.push_str(&"u".repeat(len - text.len()));
        text + "\r\n"
    };
    for (len, app) in [(MAX_LINE + 1, "udpover"), (MAX_LINE, "udpexact")] {
        udp.send_to(datagram(len, app).as_bytes(), l.udp)
            .expect("send");
    }
    let events = wait_for_app(&node, "udpexact", 1);
    assert_eq!(
        events[0].1["message"].as_str().map(str::len),
        Some(MAX_LINE - "<13>Nov 25 10:00:57 h udpexact: ".len())
    );

    let bridge = wait_until("the three refusals in /healthz", || {
        let health = http_json(node.http, "/healthz?format=json");
        let bridge = health["bridges"].as_array()?.first()?.clone();
        (bridge["rejected"] == 3).then_some(bridge)
    });
    assert_eq!(bridge["events_in"], 4, "{bridge}");
    assert!(
        log_events(&node).iter().all(|(_, p)| p["app"] != "udpover"),
        "the datagram over the limit is not published"
    );
}

/// Issue 21 point 6: a refused message is logged with a sample of it, escaped, so that its
/// newlines and escape sequences neither forge log lines nor reach a terminal; host and
/// program names with control characters give topic levels without them.
#[test]
fn peer_text_is_logged_escaped() {
    let dir = DataDir::standard(CONFIG);
    let node = dir.start();
    let l = listeners(&node);
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    udp.send_to(b"<13>Nov 25 10:00:57 web\x1b[31m1 app\x07: hi", l.udp)
        .expect("send");
    udp.send_to(b"no PRI \x1b[2J\rFORGED-UDP\nline", l.udp)
        .expect("send");
    let events = wait_for_app(&node, "app\u{7}", 1);
    assert_eq!(events[0].0, "logs/web_[31m1/app_", "{events:?}");
    // One warning a second: the first refusal is the one logged at warning level.
    let log = wait_until("the refusal in the log", || {
        let log = node.log();
        log.contains("FORGED-UDP").then_some(log)
    });
    assert_log_intact(&log);
    assert!(log.contains(r"no PRI \u{1b}[2J\rFORGED-UDP\nline"), "{log}");
}
