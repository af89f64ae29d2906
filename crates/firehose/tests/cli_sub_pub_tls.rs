//! `firehose sub` and `firehose pub` over every transport besides plain MQTT: `ws://`, `wss://`,
//! `mqtts://` and `https://` (Server-Sent Events), against a real server with HTTP, HTTPS and
//! MQTTS listeners on 127.0.0.1 port 0 and a CA made with `openssl` in the test, trusted with
//! `--ca-file`. Every wait is bounded.

mod common;
mod transport_support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::thread;
use std::time::Duration;

use common::cli::{firehose, Sub};
use common::durable::payloads;
use common::durable::{eventually, http_get};
use common::{run_with_timeout, ServerOptions, PUB_PASSWORD};
use common::{Server, TIMEOUT};
use transport_support::{start, tls_toml, Addrs, Listeners, Pki};

/// A server with every listener, and the CA that signed its certificate.
struct Tls {
    _server: Server,
    addrs: Addrs,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tls {
    fn start() -> Tls {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new(&dir.path().join("pki"), "cli-test-ca");
        let cert = pki.server("server", "localhost");
        let options = ServerOptions::standard().with_config(&tls_toml(&cert, None, false));
        let (server, addrs) = start(
            options,
            Listeners {
                http: true,
                https: true,
                mqtts: true,
            },
        );
        Tls {
            _server: server,
            addrs,
            ca: pki.ca,
            _dir: dir,
        }
    }

    fn ca(&self) -> &str {
        self.ca.to_str().expect("UTF-8 temp path")
    }

    /// `ws://` on the HTTP listener, `wss://` and `https://` on the HTTPS one, `mqtts://`.
    fn url(&self, scheme: &str) -> String {
        let addr = match scheme {
            "ws" | "http" => self.addrs.http(),
            "wss" | "https" => self.addrs.https(),
            "mqtts" => self.addrs.mqtts(),
            other => panic!("no listener for {other}"),
        };
        format!("{scheme}://{addr}")
    }

    /// Waits until the server counts `n` connected MQTT clients (a subscriber is in place).
    fn wait_clients(&self, n: usize) {
        let want = format!("firehose_clients_connected {n}");
        eventually(TIMEOUT, &want, || {
            let (_, body) = http_get(self.addrs.http(), "/metrics");
            body.lines().any(|l| l == want)
        });
        // SUBSCRIBE follows CONNACK on the same connection: give it a moment to be routed.
        thread::sleep(Duration::from_millis(200));
    }
}

/// `firehose pub --server URL ARGS...` as the standard publisher.
fn publish(server: &str, args: &[&str]) -> Output {
    let mut cmd = firehose();
    cmd.args(["pub", "--server", server, "-u", "pub", "-P", PUB_PASSWORD])
        .args(args);
    run_with_timeout(&mut cmd, b"", TIMEOUT)
}

fn publish_ok(server: &str, ca: &str, topic: &str, payload: &str) {
    let out = publish(server, &["--ca-file", ca, topic, payload]);
    assert!(
        out.status.success(),
        "pub to {server}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sub` and `pub` over one MQTT transport: live delivery, then the next message.
fn sub_and_pub_over(tls: &Tls, scheme: &str) {
    let url = tls.url(scheme);
    let topic = format!("cli/{scheme}/x");
    let mut sub = Sub::start(&[
        "--server",
        &url,
        "--ca-file",
        tls.ca(),
        &format!("cli/{scheme}/#"),
        "-n",
        "2",
    ]);
    tls.wait_clients(1);
    publish_ok(&url, tls.ca(), &topic, r#"{"n":1}"#);
    publish_ok(&url, tls.ca(), &topic, "plain text");
    let events = sub.events(2);
    assert_eq!(payloads(&events), [r#"{"n":1}"#, "plain text"]);
    assert_eq!(events[0]["topic"], topic.as_str());
    assert_eq!(events[0]["payload_encoding"], "json");
    assert_eq!(events[1]["payload_encoding"], "text");
    sub.wait_success();
}

#[test]
fn sub_and_pub_over_ws() {
    sub_and_pub_over(&Tls::start(), "ws");
}

#[test]
fn sub_and_pub_over_wss_with_ca_file() {
    sub_and_pub_over(&Tls::start(), "wss");
}

#[test]
fn sub_and_pub_over_mqtts_with_ca_file() {
    sub_and_pub_over(&Tls::start(), "mqtts");
}

#[test]
fn sub_over_https_replays_then_follows() {
    let tls = Tls::start();
    let mqtts = tls.url("mqtts");
    publish_ok(&mqtts, tls.ca(), "sse/a", "one");
    publish_ok(&mqtts, tls.ca(), "other/b", "not for us");
    publish_ok(&mqtts, tls.ca(), "sse/c", "two");
    let https = tls.url("https");
    let mut sub = Sub::start(&[
        "--server",
        &https,
        "--ca-file",
        tls.ca(),
        "sse/#",
        "--after",
        "0",
        "-n",
        "3",
    ]);
    let replayed = sub.events(2);
    assert_eq!(payloads(&replayed), ["one", "two"]);
    assert_eq!(replayed[0]["id"], 1);
    assert_eq!(replayed[1]["id"], 3);
    // Live, after the replay, with no gap.
    publish_ok(&tls.url("wss"), tls.ca(), "sse/d", "three");
    let live = sub.events(1);
    assert_eq!(payloads(&live), ["three"]);
    assert_eq!(live[0]["id"], 4);
    sub.wait_success();
}

#[test]
fn sub_over_https_resume_file_continues_after_the_last_event() {
    let tls = Tls::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let resume = dir.path().join("resume.json");
    let resume = resume.to_str().expect("UTF-8 temp path");
    let https = tls.url("https");
    let wss = tls.url("wss");
    let args = |count: &'static str| {
        vec![
            "--server".to_owned(),
            https.clone(),
            "--ca-file".to_owned(),
            tls.ca().to_owned(),
            "r/#".to_owned(),
            "--after".to_owned(),
            "0".to_owned(),
            "--resume-file".to_owned(),
            resume.to_owned(),
            "-n".to_owned(),
            count.to_owned(),
        ]
    };
    publish_ok(&wss, tls.ca(), "r/1", "first");
    let first = args("1");
    let mut sub = Sub::start(&first.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(payloads(&sub.events(1)), ["first"]);
    sub.wait_success();
    publish_ok(&wss, tls.ca(), "r/2", "second");
    let second = args("1");
    let mut sub = Sub::start(&second.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(payloads(&sub.events(1)), ["second"]);
    sub.wait_success();
}

#[test]
fn tls_servers_fall_back_in_order() {
    let tls = Tls::start();
    // Nothing listens on the first; the second is the HTTPS listener spoken to as wss://.
    let closed = closed_port();
    let servers = format!("mqtts://{closed},{}", tls.url("wss"));
    let mut sub = Sub::start(&[
        "--server",
        &servers,
        "--ca-file",
        tls.ca(),
        "fb/#",
        "-n",
        "1",
    ]);
    tls.wait_clients(1);
    let out = publish(&servers, &["--ca-file", tls.ca(), "fb/x", "fell back"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(payloads(&sub.events(1)), ["fell back"]);
    sub.wait_success();
}

#[test]
fn untrusted_certificates_are_refused_with_a_plain_message() {
    let tls = Tls::start();
    // A CA file that does not hold the server's CA, and the system bundle: both refuse.
    let dir = tempfile::tempdir().expect("tempdir");
    let other = Pki::new(&dir.path().join("other"), "other-ca");
    let other_ca = other.ca.to_str().expect("UTF-8 temp path");
    for scheme in ["mqtts", "wss"] {
        let url = tls.url(scheme);
        for ca in [Some(other_ca), None] {
            let mut args = vec!["t/x", "hello"];
            if let Some(ca) = ca {
                args.extend(["--ca-file", ca]);
            }
            let out = publish(&url, &args);
            assert!(!out.status.success(), "pub to {url} with {ca:?} succeeded");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("TLS handshake") && err.contains("certificate"),
                "{url} with {ca:?}: {err}"
            );
        }
    }
    let missing = dir.path().join("missing.pem");
    let out = publish(
        &tls.url("mqtts"),
        &[
            "--ca-file",
            missing.to_str().expect("UTF-8"),
            "t/x",
            "hello",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read CA file"), "{err}");
    // sub would retry an unreachable server for ever, but a bad --ca-file is an error at once.
    for scheme in ["https", "wss"] {
        let mut sub = firehose();
        sub.args(["sub", "--server", &tls.url(scheme), "--ca-file"])
            .arg(&missing)
            .arg("t/#");
        let out = run_with_timeout(&mut sub, b"", TIMEOUT);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cannot read CA file") && !err.contains("retrying"),
            "{err}"
        );
    }
    assert_no_events(tls.addrs.http());
}

/// `pub` refuses an http(s):// server (publishing is MQTT only) with a plain message.
#[test]
fn pub_to_an_https_server_is_refused_plainly() {
    let tls = Tls::start();
    let out = publish(&tls.url("https"), &["--ca-file", tls.ca(), "t/x", "hello"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not an MQTT server URL"), "{err}");
}

fn assert_no_events(http: SocketAddr) {
    let history = common::durable::history(http, "", 10);
    assert!(history.is_empty(), "nothing stored: {history:?}");
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}
