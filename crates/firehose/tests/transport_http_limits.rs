//! The HTTP listener's limits against the real binary, as an anonymous attacker with a script
//! would meet them: connections in total and per address (WebSocket and SSE streams
//! included, behind a trusted proxy too), the deadline on request bodies, authentication
//! before a publish body is read, cross-site browser requests, the cost of history queries,
//! the security headers of the page, and log lines that peers cannot forge.
//!
//! Raw sockets and bare HTTP/1.1, so each test says exactly what was sent; every wait is
//! bounded by `common::TIMEOUT`, and nothing asserts how long anything took.

mod common;
mod transport_support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use common::durable::{history, Sse};
use common::{ServerOptions, User, PUB_PASSWORD, TIMEOUT};
use transport_support::{
    http_get, http_request, log_count, metric, start, tcp, wait_for_log, Io, MqttConn, HTTP,
};

/// The standard server (users `pub` and `limited`) with HTTP on a free port and the `[http]`
/// settings `settings` (TOML lines).
fn http_server(settings: &str) -> (common::Server, SocketAddr, transport_support::Addrs) {
    let options =
        ServerOptions::standard().with_config(&format!("[http]\nlisten = \"off\"\n{settings}"));
    let (server, addrs) = start(options, HTTP);
    (server, addrs.http(), addrs)
}

fn basic(user: &str, password: &str) -> String {
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// A TCP connection to `addr` from the loopback address `from` (Linux routes all of
/// 127.0.0.0/8 to the loopback interface), so one test can play several clients.
async fn tcp_from(from: &str, addr: SocketAddr) -> Box<dyn Io> {
    let socket = TcpSocket::new_v4().expect("socket");
    let local: IpAddr = from.parse().expect("address");
    socket
        .bind(SocketAddr::new(local, 0))
        .expect("bind the source address");
    let stream = tokio::time::timeout(TIMEOUT, socket.connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    Box::new(stream)
}

/// Reads until the end of a response head; the head, or what came before the connection
/// closed.
async fn read_head<R: AsyncRead + Unpin>(io: &mut R) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(TIMEOUT, async {
        while !head.ends_with(b"\r\n\r\n") {
            match io.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no response head within {TIMEOUT:?}: {head:?}"
    );
    String::from_utf8_lossy(&head).into_owned()
}

/// Sends `request` on a new connection and reads the answer's head; the connection stays
/// open for more.
async fn ask(http: SocketAddr, request: &str) -> (Box<dyn Io>, String) {
    let mut io = tcp(http).await;
    io.write_all(request.as_bytes())
        .await
        .expect("send request");
    let head = read_head(&mut io).await;
    (io, head)
}

/// The value of header `name` in a response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Asserts that the server closed `io` without answering: what a connection refused at
/// accept sees (after a request was sent, the close may come as a reset).
async fn expect_closed_unanswered(mut io: Box<dyn Io>) {
    let _ = io
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(TIMEOUT, io.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "still open after {TIMEOUT:?}");
    assert!(
        answer.is_empty(),
        "a refused connection was answered: {:?}",
        String::from_utf8_lossy(&answer)
    );
}

/// `GET /metrics` from `from`; the value of `line` in it.
async fn metric_from(from: &str, http: SocketAddr, line: &str) -> f64 {
    let request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let (status, body) = http_request(tcp_from(from, http).await, request).await;
    assert_eq!(status, 200, "{body}");
    metric(&body, line).unwrap_or_else(|| panic!("no {line} in:\n{body}"))
}

/// Retries `GET /healthz` from `from` until it is answered 200 (the server saw a stream
/// close and gave its place back).
async fn eventually_served(from: &str, http: SocketAddr) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut io = tcp_from(from, http).await;
        let _ = io
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await;
        if read_head(&mut io).await.starts_with("HTTP/1.1 200") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{from} is still refused after {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An SSE stream opened from a blocking thread (the SSE reader is synchronous).
async fn sse(http: SocketAddr, target: &'static str, headers: &'static [(&str, &str)]) -> Sse {
    tokio::task::spawn_blocking(move || Sse::open(http, target, headers))
        .await
        .expect("SSE task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limits_are_closed_at_accept_and_streams_count_while_they_live() {
    let (server, http, _) = http_server("max_connections = 3\nmax_connections_per_ip = 2");

    // A WebSocket and an SSE stream: 127.0.0.1 holds its two connections while they live.
    let mut ws = MqttConn::ws(http).await;
    ws.anonymous(false).await;
    let stream = sse(http, "/api/v1/stream?topic=a", &[]).await;
    assert_eq!(stream.status, 200);
    for _ in 0..3 {
        expect_closed_unanswered(tcp_from("127.0.0.1", http).await).await;
    }
    // Another address is served meanwhile; once it holds the third connection, the total
    // refuses everyone.
    let (status, _) = http_request(
        tcp_from("127.0.0.2", http).await,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let idle = tcp_from("127.0.0.2", http).await;
    expect_closed_unanswered(tcp_from("127.0.0.3", http).await).await;
    drop(idle);

    // The stream's place comes back when it ends, the WebSocket's too.
    drop(stream);
    eventually_served("127.0.0.1", http).await;
    drop(ws);
    let refused = |reason: &str| format!("firehose_http_refused_total{{reason=\"{reason}\"}}");
    assert!(metric_from("127.0.0.4", http, &refused("connections_per_ip")).await >= 3.0);
    assert!(metric_from("127.0.0.4", http, &refused("connections")).await >= 1.0);
    // Logged once for the run, not once per refused connection.
    assert_eq!(
        log_count(&server, "refusing HTTP connections of an address"),
        1,
        "{}",
        server.log()
    );
    wait_for_log(
        &server,
        "refusing HTTP connections: http.max_connections are open",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_address_has_its_share() {
    let (_server, http, _) =
        http_server("trusted_proxies = [\"127.0.0.1\"]\nmax_connections_per_ip = 1");
    let get_as = |client: &str| {
        format!(
            "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: {client}\r\n\
             Connection: close\r\n\r\n"
        )
    };
    // 203.0.113.7's stream holds its only place, for as long as it streams.
    let stream = sse(
        http,
        "/api/v1/stream?topic=a",
        &[("X-Forwarded-For", "203.0.113.7")],
    )
    .await;
    assert_eq!(stream.status, 200);
    let (_refused, head) = ask(http, &get_as("203.0.113.7")).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(header(&head, "retry-after").is_some(), "{head}");
    // Other clients of the same proxy are served; the proxy's own connections are not
    // limited per address (it holds two here).
    let (status, _) = http_request(tcp(http).await, &get_as("203.0.113.8")).await;
    assert_eq!(status, 200);
    drop(stream);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (status, _) = http_request(tcp(http).await, &get_as("203.0.113.7")).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "203.0.113.7 still refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A publish that declares a body of nearly 1 MiB with valid credentials.
fn declared_publish() -> String {
    format!(
        "POST /api/v1/publish/t/slow HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\
         Content-Length: 1000000\r\n\r\n",
        basic("pub", PUB_PASSWORD)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_comes_or_trickles_ends_at_its_deadline() {
    let (server, http, _) =
        http_server("body_timeout_secs = 1\n[bridge.webhooks.github]\nsecret = \"s\"");

    // Declares a megabyte, sends nothing.
    let (mut silent, head) = ask(http, &declared_publish()).await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    transport_support::expect_eof(&mut silent).await;

    // Sends a byte every 100 ms: never idle for long, still ended by the total deadline.
    let mut trickle = tcp(http).await;
    trickle
        .write_all(declared_publish().as_bytes())
        .await
        .expect("send head");
    let (mut reader, mut writer) = tokio::io::split(trickle);
    let dripping = tokio::spawn(async move {
        while writer.write_all(b"x").await.is_ok() && writer.flush().await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let head = read_head(&mut reader).await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    drop(reader);
    dripping.abort();

    // A webhook reads its body before checking its signature (the signature is of the body):
    // the same deadline ends it.
    let hook = "POST /hooks/github HTTP/1.1\r\nHost: localhost\r\nX-GitHub-Event: push\r\n\
                X-GitHub-Delivery: 1\r\nX-Hub-Signature-256: sha256=00\r\n\
                Content-Length: 1000\r\n\r\n";
    let (mut hook, head) = ask(http, hook).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    transport_support::expect_eof(&mut hook).await;

    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    let timeouts = metric(
        &body,
        "firehose_http_refused_total{reason=\"body_timeout\"}",
    );
    assert!(timeouts >= Some(3.0), "{body}");
    assert_eq!(
        log_count(&server, "did not arrive within http.body_timeout_secs"),
        1,
        "one line per run: {}",
        server.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_checks_credentials_before_reading_the_body() {
    // The body deadline (30 s by default) is longer than any wait here: an answer can only
    // come before the body was read.
    let (_server, http, _) = http_server("");
    for authorization in [
        String::new(),
        format!("Authorization: {}\r\n", basic("pub", "wrong")),
        format!("Authorization: {}\r\n", basic("nobody", "x")),
        "Authorization: Bearer pub:not-the-token\r\n".to_owned(),
    ] {
        let request = format!(
            "POST /api/v1/publish/t/x HTTP/1.1\r\nHost: localhost\r\n{authorization}\
             Content-Length: 1000000\r\nExpect: 100-continue\r\n\r\n"
        );
        let (_io, head) = ask(http, &request).await;
        // No 100 Continue: the body is not wanted.
        assert!(
            head.starts_with("HTTP/1.1 401"),
            "{authorization:?}: {head}"
        );
        assert!(header(&head, "www-authenticate").is_some(), "{head}");
    }
    // Good credentials: 100 Continue, then the body is read and published.
    let request = format!(
        "POST /api/v1/publish/t/x HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\
         Content-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        basic("pub", PUB_PASSWORD)
    );
    let (io, head) = ask(http, &request).await;
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    let (status, body) = http_request(io, "hello").await;
    assert_eq!(status, 200, "{body}");
}

/// A POST to the publish API as a browser sends it, with `headers` and `pub`'s Basic
/// credentials (what a browser that once showed its login prompt adds by itself).
async fn browser_post(http: SocketAddr, topic: &str, headers: &str) -> (u16, String) {
    let request = format!(
        "POST /api/v1/publish/{topic} HTTP/1.1\r\nHost: {http}\r\nAuthorization: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n{headers}\
         Connection: close\r\n\r\nmessage",
        basic("pub", PUB_PASSWORD)
    );
    http_request(tcp(http).await, &request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_form_post_cannot_publish() {
    let (server, http, _) = http_server("allowed_origins = [\"https://dashboard.example.org\"]");
    let refused = [
        // A current browser: Sec-Fetch-Site is what counts.
        "Origin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\n".to_owned(),
        "Origin: null\r\nSec-Fetch-Site: cross-site\r\n".to_owned(),
        format!("Origin: http://{http}\r\nSec-Fetch-Site: same-site\r\n"),
        // An older one: only Origin, compared with Host.
        "Origin: https://evil.example\r\n".to_owned(),
    ];
    for headers in &refused {
        let (status, body) = browser_post(http, "t/csrf", headers).await;
        assert_eq!(status, 403, "{headers:?}: {body}");
        assert!(body.contains("cross-site"), "{body}");
    }
    let allowed = [
        // Firehose's own pages, an allowed origin, and clients that are no browser.
        "Sec-Fetch-Site: same-origin\r\n".to_owned(),
        format!("Origin: http://{http}\r\n"),
        "Origin: https://dashboard.example.org\r\nSec-Fetch-Site: cross-site\r\n".to_owned(),
        String::new(),
    ];
    for headers in &allowed {
        let (status, body) = browser_post(http, "t/ok", headers).await;
        assert_eq!(status, 200, "{headers:?}: {body}");
    }
    // curl, as the docs show it.
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok()
    {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "-u",
                &format!("pub:{PUB_PASSWORD}"),
                "--data-binary",
                "by curl",
            ])
            .arg(format!("http://{http}/api/v1/publish/t/ok"))
            .output()
            .expect("run curl");
        let answer = String::from_utf8_lossy(&out.stdout);
        assert!(answer.contains("\"id\""), "curl: {answer} {:?}", out.stderr);
    }
    // Nothing refused reached the log.
    let events = tokio::task::spawn_blocking(move || history(http, "topic=t%2F%23", 1000))
        .await
        .expect("history");
    let topics: Vec<&str> = events.iter().filter_map(|e| e["topic"].as_str()).collect();
    assert!(!topics.contains(&"t/csrf"), "{topics:?}");
    assert!(
        topics.iter().filter(|t| **t == "t/ok").count() >= 4,
        "{topics:?}"
    );
    wait_for_log(&server, "refusing cross-site browser requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_name_their_user() {
    let mut options = ServerOptions::standard();
    options.users = vec![
        User::new("ci", "ci password", &["ci/#"]).token("ci-token"),
        User::new("deploy", "deploy password", &["deploy/#"]).token("deploy-token"),
    ];
    let (_server, addrs) = start(options, HTTP);
    let http = addrs.http();
    let post = |authorization: &str| {
        format!(
            "POST /api/v1/publish/ci/x HTTP/1.1\r\nHost: localhost\r\nAuthorization: \
             {authorization}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        )
    };
    let (status, body) = http_request(tcp(http).await, &post("Bearer ci:ci-token")).await;
    assert_eq!(status, 200, "{body}");
    // With two token holders a bare token cannot say whose it is (it was tried against each
    // user's hash, one argon2 check per user and request).
    let (status, body) = http_request(tcp(http).await, &post("Bearer ci-token")).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Bearer <user>:<token>"), "{body}");
    let (status, _) = http_request(tcp(http).await, &post("Bearer deploy:ci-token")).await;
    assert_eq!(status, 401);
    let (status, _) = http_request(tcp(http).await, &post("Bearer deploy:deploy-token")).await;
    assert_eq!(status, 403, "deploy may not publish to ci/x");
}

/// Issue 21 point 3: HTTP Basic is no way around the password checks' limits. Wrong passwords
/// from one address are backed off as MQTT logins are (503 without a check), the same counters
/// show it in `/metrics`, and another address's good login still gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_passwords_are_backed_off_like_mqtt_logins() {
    let (_server, http, _) = http_server("");
    let post = |password: &str| {
        format!(
            "POST /api/v1/publish/t/x HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\
             Content-Length: 2\r\nConnection: close\r\n\r\nok",
            basic("pub", password)
        )
    };
    let mut statuses = Vec::new();
    while statuses.last() != Some(&503) && statuses.len() < 20 {
        let (status, _) = http_request(tcp_from("127.0.0.7", http).await, &post("wrong")).await;
        statuses.push(status);
    }
    let checked = statuses.iter().filter(|&&s| s == 401).count();
    assert_eq!(
        statuses.last(),
        Some(&503),
        "never backed off: {statuses:?}"
    );
    assert!(
        checked >= 3 && statuses[..checked].iter().all(|&s| s == 401),
        "the first few wrong passwords are checked and refused: {statuses:?}"
    );
    // Backed off: even the right password from that address is not checked now.
    let (status, _) = http_request(tcp_from("127.0.0.7", http).await, &post(PUB_PASSWORD)).await;
    assert_eq!(status, 503);
    let (status, body) = http_request(tcp_from("127.0.0.8", http).await, &post(PUB_PASSWORD)).await;
    assert_eq!(status, 200, "{body}");
    let failures = metric_from("127.0.0.8", http, "firehose_password_failures_total").await;
    assert_eq!(failures, checked as f64);
    let backoff = metric_from(
        "127.0.0.8",
        http,
        "firehose_logins_refused_total{reason=\"backoff\"}",
    )
    .await;
    assert_eq!(
        backoff, 2.0,
        "the last wrong password and the right one, unchecked"
    );
}

/// Publishes `count` events of `payload` to `topic` over MQTT as `pub`.
async fn publish_events(mqtt: SocketAddr, topic: &str, payload: &[u8], count: usize) {
    let mut publisher = MqttConn::stream(tcp(mqtt).await);
    publisher.publisher(true).await;
    for _ in 0..count {
        assert_eq!(publisher.publish(topic, payload, 1).await, 0);
    }
}

/// `GET target`: status and JSON body.
async fn get_json(http: SocketAddr, target: &str) -> (u16, Value) {
    let (status, body) = http_get(http, target).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{target}: {e}: {body}"));
    (status, json)
}

/// Every event of `query`, page after page; and how many pages it took.
async fn walk(http: SocketAddr, query: &str) -> (Vec<u64>, usize) {
    let (mut ids, mut pages, mut after) = (Vec::new(), 0, 0);
    loop {
        let (status, page) = get_json(http, &format!("/api/v1/events?{query}&after={after}")).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        ids.extend(
            page["events"]
                .as_array()
                .expect("events")
                .iter()
                .map(|e| e["id"].as_u64().expect("id")),
        );
        match page["next_after"].as_u64() {
            Some(next) if page["more"] == true => after = next,
            _ => return (ids, pages),
        }
        assert!(pages < 1000, "endless pages");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_queries_are_capped_in_filters_work_and_bytes() {
    let (server, http, addrs) = http_server(
        "max_history_filters = 600\nhistory_scan_budget = 1000\n\
         max_page_bytes = 1024\nmax_streams_per_ip = 2",
    );
    publish_events(addrs.mqtt, "b/x", b"small", 30).await;

    // Too many filters: a clear 400 (thousands used to answer 500 from SQLite).
    let filters = |n: usize| {
        (0..n)
            .map(|i| format!("topic=c{i}%2F%23"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let (status, body) = get_json(http, &format!("/api/v1/events?{}", filters(601))).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("http.max_history_filters")),
        "{body}"
    );
    let (status, _) = get_json(http, &format!("/api/v1/stream?{}", filters(601))).await;
    assert_eq!(status, 400);
    // 600 filters: answered, within the budget (1000 / 600: one row per page).
    let (status, page) = get_json(
        http,
        &format!("/api/v1/events?{}&topic=b%2F%23", filters(599)),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["more"], true, "{page}");
    assert_eq!(page["events"].as_array().map(Vec::len), Some(1), "{page}");

    // 100 filters, one of which matches: 10 rows per page, every event found across pages.
    let query = format!("{}&topic=b%2Fx&limit=1000", filters(99));
    let (ids, pages) = walk(http, &query).await;
    assert_eq!(ids.len(), 30);
    assert!(pages >= 3, "{pages} pages: the budget did not cut them");

    // Bytes: 1 KiB per page, so 600-byte events come two to a page.
    publish_events(addrs.mqtt, "big/x", &[b'y'; 600], 4).await;
    let (ids, pages) = walk(http, "topic=big%2F%23&limit=1000").await;
    assert_eq!((ids.len(), pages), (4, 2));

    // SSE streams per address.
    let first = sse(http, "/api/v1/stream?topic=a", &[]).await;
    let second = sse(http, "/api/v1/stream?topic=a", &[]).await;
    assert_eq!((first.status, second.status), (200, 200));
    let third = sse(http, "/api/v1/stream?topic=a", &[]).await;
    assert_eq!(third.status, 429);
    assert!(
        third.headers.iter().any(|(n, _)| n == "retry-after"),
        "{:?}",
        third.headers
    );
    drop((first, third));
    let deadline = Instant::now() + TIMEOUT;
    while sse(http, "/api/v1/stream?topic=a", &[]).await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "the closed stream's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(second);
    let (_, metrics) = http_get(http, "/metrics").await;
    for line in [
        "firehose_http_refused_total{reason=\"history_filters\"}",
        "firehose_http_refused_total{reason=\"streams_per_ip\"}",
        "firehose_history_pages_cut_total",
    ] {
        assert!(metric(&metrics, line) >= Some(1.0), "{line}: {metrics}");
    }
    wait_for_log(&server, "more than http.max_history_filters");
}

/// A client at `from` that asks for the three big events and reads only the answer's head:
/// with a small receive buffer, most of the answer stays on the server's side.
async fn slow_reader(from: &str, http: SocketAddr) -> Box<dyn Io> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let local: IpAddr = from.parse().expect("address");
    socket.bind(SocketAddr::new(local, 0)).expect("bind");
    let mut slow: Box<dyn Io> = Box::new(
        tokio::time::timeout(TIMEOUT, socket.connect(http))
            .await
            .expect("connect timed out")
            .expect("connect"),
    );
    slow.write_all(
        b"GET /api/v1/events?topic=big%2F%23&limit=3 HTTP/1.1\r\nHost: localhost\r\n\
          Connection: close\r\n\r\n",
    )
    .await
    .expect("send");
    let head = read_head(&mut slow).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    slow
}

/// `GET /api/v1/events?limit=1` from `from`: the status, and the start of the body.
async fn small_read(from: &str, http: SocketAddr) -> (u16, String) {
    let request =
        "GET /api/v1/events?limit=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let (status, body) = http_request(tcp_from(from, http).await, request).await;
    (status, body.chars().take(300).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_answer_being_sent_holds_its_place() {
    let (_server, http, addrs) = http_server("max_history_reads = 2\nmax_history_reads_per_ip = 1");
    // Control characters are shown escaped, six bytes each: three events of nearly 1 MiB make
    // an answer of about 18 MB, more than the kernel buffers between a client that stops
    // reading and the server (4 MiB of send buffer by default).
    publish_events(addrs.mqtt, "big/x", &vec![1u8; 1_000_000], 3).await;

    // An answer in memory until sent holds its address's only read...
    let mut slow = slow_reader("127.0.0.1", http).await;
    let (status, body) = small_read("127.0.0.1", http).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("http.max_history_reads_per_ip"), "{body}");
    // ...and one of the server's two.
    let other = slow_reader("127.0.0.2", http).await;
    let (status, body) = small_read("127.0.0.3", http).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("http.max_history_reads"), "{body}");
    drop(other);
    // Once it has read its answer, the address may read again.
    let mut rest = Vec::new();
    let drained = tokio::time::timeout(TIMEOUT, slow.read_to_end(&mut rest)).await;
    assert!(
        matches!(drained, Ok(Ok(_))) && rest.len() > 17_000_000,
        "read {} bytes of the answer",
        rest.len()
    );
    let deadline = Instant::now() + TIMEOUT;
    while small_read("127.0.0.1", http).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the read's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_every_answer_carry_security_headers() {
    let (_server, http, _) = http_server("");
    for path in ["/", "/events/1", "/assets/app.js", "/assets/app.css"] {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let (_io, head) = ask(http, &request).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        let csp = header(&head, "content-security-policy")
            .unwrap_or_else(|| panic!("{path}: no CSP: {head}"));
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(header(&head, "x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(
            header(&head, "x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(
            header(&head, "referrer-policy"),
            Some("no-referrer"),
            "{path}"
        );
    }
    // API answers: nothing may run or be framed if a browser is made to show one.
    let request = "GET /api/v1/events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let (_io, head) = ask(http, request).await;
    assert_eq!(
        header(&head, "content-security-policy"),
        Some("default-src 'none'; frame-ancestors 'none'"),
        "{head}"
    );
    assert_eq!(header(&head, "x-content-type-options"), Some("nosniff"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_peers_send_is_logged_escaped() {
    let (server, http, _) = http_server("");
    // A user name that tries to end the log line and start a forged one, with an escape
    // sequence for a terminal on the way.
    let forged = "mallory\n2026-01-01T00:00:00.000000Z  INFO firehose: FORGED\x1b[2J";
    let request = format!(
        "POST /api/v1/publish/t/x HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\
         Content-Length: 1\r\nConnection: close\r\n\r\nx",
        basic(forged, "wrong")
    );
    let (status, _) = http_request(tcp(http).await, &request).await;
    assert_eq!(status, 401);
    let line = wait_for_log(&server, "refusing HTTP publish with bad credentials");
    assert!(line.contains(r"mallory\n2026"), "{line}");
    let log = server.log();
    assert!(
        !log.contains('\x1b'),
        "an escape sequence reached the log: {log:?}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("FORGED") && !l.contains("bad credentials")),
        "a forged line: {log}"
    );
}
