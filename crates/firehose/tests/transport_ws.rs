//! The HTTP listener: MQTT over WebSocket (both protocol versions, frames that split or join
//! packets, subprotocols), `/healthz`, `/metrics`, and bad clients that must close only their
//! own connection: text frames, malformed frames, oversized frames, plain HTTP on `/mqtt`,
//! slow request headers. Also 1000 WebSocket subscribers receiving a burst, and
//! `X-Forwarded-For` from trusted proxies.

mod common;
mod transport_support;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use common::wire::ConnectOpts;
use common::{RawClient, Server, ServerOptions, TIMEOUT};
use transport_support::{
    assert_ws_serves, http_get, metric, start, tcp, wait_for_log, MqttConn, Read, HTTP,
};

fn both(v5: bool) -> &'static str {
    if v5 {
        "v5"
    } else {
        "v311"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_index() {
    let (_server, addrs) = start(ServerOptions::standard(), HTTP);
    let (status, body) = http_get(addrs.http(), "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = http_get(addrs.http(), "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("/mqtt"), "{body}");
    let (status, _) = http_get(addrs.http(), "/no-such-page").await;
    assert_eq!(status, 404);

    let mut ws = MqttConn::ws(addrs.http()).await;
    ws.anonymous(true).await;
    let mut tcp_client = RawClient::publisher(addrs.mqtt, false);
    let reason = tcp_client.publish(common::wire::PublishOut::new("metrics/a", b"x").qos(1, 1));
    assert_eq!(reason, 0);
    let (status, body) = http_get(addrs.http(), "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(&body, "firehose_connections_open{transport=\"ws\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "firehose_connections_open{transport=\"tcp\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "firehose_clients_connected"),
        Some(2.0),
        "{body}"
    );
    assert!(
        metric(&body, "firehose_received_bytes_total").unwrap_or(0.0) > 0.0,
        "{body}"
    );
    assert!(
        body.contains("# TYPE firehose_sent_bytes_total counter"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE firehose_uptime_seconds gauge"),
        "{body}"
    );
    for name in [
        "firehose_messages_received_total",
        "firehose_log_appended_total",
        "firehose_log_size_bytes",
    ] {
        assert!(metric(&body, name).unwrap_or(0.0) >= 1.0, "{name}: {body}");
    }
}

async fn ws_pubsub(v5: bool) {
    let (_server, addrs) = start(ServerOptions::standard(), HTTP);
    let topic = format!("ws/{}", both(v5));
    // WebSocket subscriber, TCP publisher.
    let mut sub = MqttConn::ws(addrs.http()).await;
    assert_eq!(sub.subprotocol.as_deref(), Some("mqtt"));
    sub.anonymous(v5).await;
    sub.subscribe(&format!("{topic}/#"), 1).await;
    let mut tcp_pub = RawClient::publisher(addrs.mqtt, v5);
    tcp_pub.publish0(&format!("{topic}/a"), b"from tcp");
    let p = sub.expect_publish().await;
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        (&*format!("{topic}/a"), &b"from tcp"[..])
    );

    // WebSocket publisher (QoS 1), TCP subscriber and WebSocket subscriber.
    let mut tcp_sub = RawClient::anonymous(addrs.mqtt, v5, "tcp-sub");
    tcp_sub.subscribe(&format!("{topic}/#"), 1);
    let mut ws_pub = MqttConn::ws(addrs.http()).await;
    ws_pub.publisher(v5).await;
    assert_eq!(
        ws_pub.publish(&format!("{topic}/b"), b"from ws", 1).await,
        0
    );
    let p = tcp_sub.expect_publish();
    assert_eq!(p.payload, b"from ws");
    let p = sub.expect_publish().await;
    assert_eq!((p.qos, p.payload.as_slice()), (1, &b"from ws"[..]));

    // Anonymous publishes over WebSocket are refused exactly as over TCP.
    let mut anon = MqttConn::ws(addrs.http()).await;
    anon.anonymous(v5).await;
    let reason = anon.publish(&format!("{topic}/c"), b"anonymous", 1).await;
    assert_eq!(reason, if v5 { 0x87 } else { 0 });
    assert_eq!(ws_pub.publish(&format!("{topic}/d"), b"marker", 1).await, 0);
    let p = sub.expect_publish().await;
    assert_eq!(
        p.payload, b"marker",
        "the anonymous publish must not be delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_pubsub_v311() {
    ws_pubsub(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_pubsub_v5() {
    ws_pubsub(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprotocols_mqttv31_and_none() {
    let (_server, addrs) = start(ServerOptions::standard(), HTTP);
    let mut old = MqttConn::ws_with(tcp(addrs.http()).await, "/mqtt", "mqttv3.1", &[])
        .await
        .expect("mqttv3.1 accepted");
    assert_eq!(old.subprotocol.as_deref(), Some("mqttv3.1"));
    old.anonymous(false).await;
    old.ping().await;
    // Both offered: mqtt is preferred.
    let both = MqttConn::ws_with(tcp(addrs.http()).await, "/mqtt", "mqttv3.1, mqtt", &[])
        .await
        .expect("accepted");
    assert_eq!(both.subprotocol.as_deref(), Some("mqtt"));
    // No subprotocol at all: served anyway (some clients send none).
    let mut none = MqttConn::ws_with(tcp(addrs.http()).await, "/mqtt", "", &[])
        .await
        .expect("accepted without a subprotocol");
    assert_eq!(none.subprotocol, None);
    none.anonymous(true).await;
    none.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_split_across_frames_and_joined_in_one() {
    let (_server, addrs) = start(ServerOptions::standard(), HTTP);
    let mut ws = MqttConn::ws(addrs.http()).await;
    ws.v5 = true;
    // CONNECT one byte per frame.
    let connect = ConnectOpts::new(true, &Server::client_id("split")).encode();
    for byte in &connect {
        ws.send(&[*byte]).await;
    }
    let connack = ws.packet().await.connack(true).expect("CONNACK");
    assert_eq!(connack.code, 0);
    // SUBSCRIBE, PUBLISH-to-self and PINGREQ in one frame, the PINGREQ cut in half across
    // the next frame.
    let mut publisher = MqttConn::ws(addrs.http()).await;
    publisher.publisher(true).await;
    let mut frame = common::wire::subscribe(true, 7, &[("split/t", 0)], None);
    frame.extend(common::wire::pingreq());
    let (first, second) = frame.split_at(frame.len() - 1);
    ws.send(first).await;
    ws.send(second).await;
    let (id, codes) = ws
        .packet()
        .await
        .suback(common::wire::SUBACK, true)
        .expect("SUBACK");
    assert_eq!((id, codes), (7, vec![0]));
    assert_eq!(ws.packet().await.kind(), common::wire::PINGRESP);
    // Several PUBLISH packets from the publisher in one frame arrive in order.
    let mut batch = Vec::new();
    for i in 0..5 {
        batch.extend(
            common::wire::PublishOut::new("split/t", format!("m{i}").as_bytes()).encode(true),
        );
    }
    publisher.send(&batch).await;
    for i in 0..5 {
        assert_eq!(
            ws.expect_publish().await.payload,
            format!("m{i}").as_bytes()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tungstenite_receives_a_large_burst_across_many_frames() {
    // More than loopback socket buffers hold, so the server's frames are cut by partial
    // writes and continued; a ping halfway gets its pong between frames.
    const MESSAGES: usize = 300;
    let payload = |n: usize| -> Vec<u8> {
        let len = 20_000 + n * 997 % 60_000;
        (0..len).map(|i| (i * 31 + n) as u8).collect()
    };
    let (server, addrs) = start(ServerOptions::standard(), HTTP);
    let mut sub = MqttConn::ws(addrs.http()).await;
    sub.anonymous(true).await;
    sub.subscribe("large/#", 0).await;
    let mut publisher = RawClient::publisher(addrs.mqtt, true);
    let mut total = 0;
    for n in 0..MESSAGES {
        let body = payload(n);
        total += body.len();
        publisher.publish0(&format!("large/{n}"), &body);
    }
    for n in 0..MESSAGES {
        if n == MESSAGES / 2 {
            sub.send_ws(Message::Ping(b"halfway".to_vec().into())).await;
        }
        let p = sub.expect_publish().await;
        assert_eq!(p.topic, format!("large/{n}"));
        assert!(p.payload == payload(n), "message {n}: payload differs");
    }
    sub.ping().await;
    assert_eq!(sub.pongs, 1, "the ping was answered");
    assert!(sub.frames > 1, "{total} bytes in {} frame(s)", sub.frames);
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_frame_closes_only_that_connection() {
    let (server, addrs) = start(ServerOptions::standard(), HTTP);
    let mut bystander = MqttConn::ws(addrs.http()).await;
    bystander.anonymous(false).await;
    let mut ws = MqttConn::ws(addrs.http()).await;
    ws.anonymous(false).await;
    ws.send_ws(Message::Text("hello".into())).await;
    assert_eq!(
        ws.expect_closed().await,
        Some(1003),
        "close code: unsupported data"
    );
    wait_for_log(&server, "text WebSocket frame");
    bystander.ping().await;
    assert_ws_serves(addrs.http()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_that_connection() {
    let (_server, addrs) = start(ServerOptions::standard(), HTTP);
    let mut bystander = MqttConn::ws(addrs.http()).await;
    bystander.anonymous(true).await;
    // After a valid upgrade, raw bytes that are not WebSocket frames: an unmasked frame (client
    // frames must be masked), a reserved opcode, reserved bits set.
    for garbage in [
        &[0x82, 0x02, 0xC0, 0x00][..],
        &[0x83, 0x80, 1, 2, 3, 4][..],
        &[0xF2, 0x80, 1, 2, 3, 4][..],
    ] {
        let mut io = tcp(addrs.http()).await;
        let request = "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
                       Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                       Sec-WebSocket-Protocol: mqtt\r\n\r\n";
        io.write_all(request.as_bytes())
            .await
            .expect("send upgrade");
        // The 101 response is not MQTT; read it byte by byte until the headers end.
        let mut head = Vec::new();
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let n = tokio::time::timeout_at(deadline, io.read(&mut byte))
                .await
                .expect("101 within the timeout")
                .expect("read 101");
            assert!(
                n == 1,
                "closed before 101: {}",
                String::from_utf8_lossy(&head)
            );
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let mut conn = MqttConn::stream(io);
        conn.send(garbage).await;
        match conn.read(TIMEOUT).await {
            Read::Closed(_) => {}
            // A close frame (bytes 0x88 ...) is not MQTT; any bytes then the end are fine.
            Read::Packet(_) => {}
            Read::Timeout => panic!("malformed frame {garbage:?} did not close the connection"),
        }
    }
    bystander.ping().await;
    assert_ws_serves(addrs.http()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_only_that_connection() {
    // max_packet_size 1024 → frames and messages up to 64 KiB.
    let options = ServerOptions::standard().with_config("[limits]\nmax_packet_size = 1024");
    let (server, addrs) = start(options, HTTP);
    let mut bystander = MqttConn::ws(addrs.http()).await;
    bystander.anonymous(false).await;
    let mut ws = MqttConn::ws(addrs.http()).await;
    ws.anonymous(false).await;
    ws.send(&vec![0u8; 200 * 1024]).await;
    assert!(
        matches!(ws.read(TIMEOUT).await, Read::Closed(_)),
        "oversized frame not refused"
    );
    // An MQTT packet over max_packet_size inside an acceptable frame: the broker's own limit.
    let mut big = MqttConn::ws(addrs.http()).await;
    big.publisher(true).await;
    big.send(&common::wire::PublishOut::new("big", &[7u8; 4000]).encode(true))
        .await;
    big.expect_closed().await;
    wait_for_log(&server, "closing connection");
    bystander.ping().await;
    assert_ws_serves(addrs.http()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_websocket_path() {
    let (_server, addrs) = start(ServerOptions::standard(), HTTP);
    let (status, body) = http_get(addrs.http(), "/mqtt").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("MQTT over WebSocket"), "{body}");
    let request = "POST /mqtt HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\
                   Connection: close\r\n\r\nhi";
    let (status, _) = transport_support::http_request(tcp(addrs.http()).await, request).await;
    assert!(status >= 400, "POST /mqtt answered {status}");
    // A WebSocket upgrade on another path is not MQTT.
    let err = MqttConn::ws_with(tcp(addrs.http()).await, "/other", "mqtt", &[]).await;
    assert!(err.is_err(), "upgrade on /other accepted");
    assert_ws_serves(addrs.http()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_headers_are_closed() {
    let options = ServerOptions::standard().with_config("[limits]\nconnect_timeout_secs = 1");
    let (_server, addrs) = start(options, HTTP);
    // Slowloris: a request whose headers never end, one byte at a time.
    let mut slow = tcp(addrs.http()).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("start request");
    let slow_task = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if slow.write_all(b"X").await.is_err() || slow.flush().await.is_err() {
                return true;
            }
            // A closed socket shows on read too: the server answers 408 or just closes.
            let mut buf = [0u8; 256];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await
            {
                if n == 0 || buf.starts_with(b"HTTP/1.1 408") {
                    return true;
                }
            }
        }
    });
    // A connection that sends nothing at all is closed too.
    let mut idle = tcp(addrs.http()).await;
    // Meanwhile everyone else is served.
    let (status, _) = http_get(addrs.http(), "/healthz").await;
    assert_eq!(status, 200);
    assert_ws_serves(addrs.http()).await;
    assert!(
        slow_task.await.expect("slow client task"),
        "the slow client was not closed within {TIMEOUT:?}"
    );
    transport_support::expect_eof(&mut idle).await;
    let (status, _) = http_get(addrs.http(), "/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_disconnects_websocket_clients_and_exits_cleanly() {
    let (mut server, addrs) = start(ServerOptions::standard(), HTTP);
    let mut v5 = MqttConn::ws(addrs.http()).await;
    v5.anonymous(true).await;
    let mut v311 = MqttConn::ws(addrs.http()).await;
    v311.anonymous(false).await;
    // An HTTP keep-alive connection in the middle of nothing.
    let mut keep_alive = tcp(addrs.http()).await;
    keep_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    let mut response = [0u8; 12];
    keep_alive
        .read_exact(&mut response)
        .await
        .expect("response");
    assert_eq!(&response, b"HTTP/1.1 200");
    let terminated = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (server, status)
    });
    // MQTT 5 clients are told why (server shutting down, 0x8B); both see the end.
    let packet = v5.packet().await;
    assert_eq!(packet.disconnect_reason(), Ok(0x8B), "{packet:?}");
    v5.expect_closed().await;
    v311.expect_closed().await;
    transport_support::expect_eof(&mut keep_alive).await;
    let (server, status) = terminated.await.expect("terminate");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        server.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_websocket_subscribers_receive_a_burst() {
    const SUBSCRIBERS: usize = 1000;
    const BURST: usize = 20;
    let (server, addrs) = start(ServerOptions::standard(), HTTP);
    let http = addrs.http();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(100));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(SUBSCRIBERS);
    let mut tasks = Vec::with_capacity(SUBSCRIBERS);
    for i in 0..SUBSCRIBERS {
        let gate = gate.clone();
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut sub = {
                let _permit = gate.acquire().await.expect("semaphore");
                let mut sub = MqttConn::ws(http).await;
                sub.anonymous(i % 2 == 0).await;
                sub.subscribe("burst/#", 0).await;
                sub
            };
            ready.send(()).await.expect("ready");
            let mut got = Vec::with_capacity(BURST);
            while got.len() < BURST {
                match sub.read(Duration::from_secs(60)).await {
                    Read::Packet(p) => {
                        let publish = p.publish(sub.v5).expect("PUBLISH");
                        got.push(String::from_utf8_lossy(&publish.payload).into_owned());
                    }
                    other => panic!("subscriber {i}: {other:?} after {} messages", got.len()),
                }
            }
            got
        }));
    }
    drop(ready_tx);
    for _ in 0..SUBSCRIBERS {
        tokio::time::timeout(Duration::from_secs(120), ready_rx.recv())
            .await
            .expect("all subscribers connected within 120 s")
            .expect("a subscriber failed to connect");
    }
    let (_, body) = http_get(http, "/metrics").await;
    assert_eq!(
        metric(&body, "firehose_connections_open{transport=\"ws\"}"),
        Some(SUBSCRIBERS as f64)
    );
    let mut publisher = RawClient::publisher(addrs.mqtt, true);
    for n in 0..BURST {
        publisher.publish0(&format!("burst/{n}"), format!("event {n}").as_bytes());
    }
    let expected: Vec<String> = (0..BURST).map(|n| format!("event {n}")).collect();
    for task in tasks {
        let got = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("every subscriber got the burst within 120 s")
            .expect("subscriber task");
        assert_eq!(got, expected);
    }
    let (_, body) = http_get(http, "/metrics").await;
    assert_eq!(
        metric(&body, "firehose_messages_dropped_queue_full_total"),
        Some(0.0)
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_trusted_proxies_only() {
    // One connection per client address: the address the broker sees decides.
    let trusted = ServerOptions::standard().with_config(
        "[limits]\nmax_connections_per_ip = 1\n[http]\nlisten = \"off\"\ntrusted_proxies = [\"127.0.0.0/8\"]",
    );
    let (server, addrs) = start(trusted, HTTP);
    let xff = |ip: &'static str| vec![("X-Forwarded-For", ip)];
    let mut a = MqttConn::ws_with(
        tcp(addrs.http()).await,
        "/mqtt",
        "mqtt",
        &xff("203.0.113.1"),
    )
    .await
    .expect("first client");
    a.anonymous(false).await;
    let mut b = MqttConn::ws_with(
        tcp(addrs.http()).await,
        "/mqtt",
        "mqtt",
        &xff("203.0.113.2"),
    )
    .await
    .expect("another client address is admitted");
    b.anonymous(false).await;
    wait_for_log(&server, "peer=203.0.113.2");
    let again = MqttConn::ws_with(
        tcp(addrs.http()).await,
        "/mqtt",
        "mqtt",
        &xff("203.0.113.1"),
    )
    .await;
    let refused = again.expect_err("a second connection from 203.0.113.1 is refused");
    assert!(refused.contains("503"), "{refused}");

    // Without trusted proxies the header is ignored: both come from 127.0.0.1.
    let untrusted = ServerOptions::standard().with_config("[limits]\nmax_connections_per_ip = 1");
    let (_server2, addrs2) = start(untrusted, HTTP);
    let mut c = MqttConn::ws_with(
        tcp(addrs2.http()).await,
        "/mqtt",
        "mqtt",
        &xff("203.0.113.1"),
    )
    .await
    .expect("first client");
    c.anonymous(false).await;
    let second = MqttConn::ws_with(
        tcp(addrs2.http()).await,
        "/mqtt",
        "mqtt",
        &xff("203.0.113.2"),
    )
    .await;
    assert!(
        second.is_err(),
        "X-Forwarded-For from an untrusted peer was believed"
    );
}
