//! The durable event log, black-box: the real binary, killed with SIGKILL and restarted on the
//! same data directory; raw MQTT 3.1.1 and 5.0 clients, Mosquitto's clients, the HTTP history
//! API, Server-Sent Events and `firehose replay`.
//!
//! No test asserts a duration: every "eventually" is a bounded poll, every read has a generous
//! timeout.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::cli::spawn_with_lines;
use common::durable::{
    enc, eventually, history, http_get, http_get_headers, http_get_with, http_json, ids, payloads,
    DataDir, Node, Sse, SseItem,
};
use common::wire::{self, prop, ConnectOpts, PropsOut, PublishIn, PublishOut};
use common::{
    firehose_bin, have_mosquitto_clients, run_with_timeout, MosquittoSub, RawClient, Server,
    PUB_PASSWORD, QUIET, TIMEOUT,
};
use serde_json::Value;

fn version_name(v5: bool) -> &'static str {
    if v5 {
        "v5"
    } else {
        "v311"
    }
}

/// CONNECT options of a persistent session: clean session 0 (3.1.1), or clean start 0 with a
/// session expiry of 600 s (5.0).
fn persistent(v5: bool, client_id: &str) -> ConnectOpts {
    ConnectOpts::persistent(v5, client_id, 600)
}

/// Publishes QoS 1 and asserts the PUBACK accepts it.
fn publish1(client: &mut RawClient, topic: &str, payload: &[u8]) {
    let reason = client.publish(PublishOut::new(topic, payload).qos(1, 0));
    assert_eq!(reason, 0, "publish {topic} refused");
}

/// Publishes with a QoS and asserts the acknowledgement accepts it.
fn publish_qos(client: &mut RawClient, topic: &str, payload: &[u8], qos: u8) {
    let reason = client.publish(PublishOut::new(topic, payload).qos(qos, 0));
    assert_eq!(reason, 0, "publish {topic} (QoS {qos}) refused");
}

/// Asserts the text has no trace of a panic.
fn assert_no_panic(what: &str, text: &str) {
    assert!(
        !text.contains("panicked"),
        "{what} panicked; output:\n{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. kill -9 while QoS 1 publishers run
// ---------------------------------------------------------------------------------------------

/// What a crash publisher recorded: every payload whose PUBACK (QoS 1) or PUBREC (QoS 2) arrived,
/// in the order it published them.
type Acked = Arc<Mutex<Vec<String>>>;

/// Publishes `{tag}-{seq}` on `topic` with up to 8 messages in flight until the connection
/// closes (the server was killed); records each acknowledged payload. Speaks raw bytes so that a
/// packet cut short by the kill ends the loop instead of failing it.
fn crash_publisher(addr: SocketAddr, v5: bool, qos: u8, tag: String, acked: Acked) {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect publisher");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("set_read_timeout");
    let opts = ConnectOpts::new(v5, &Server::client_id(&tag)).auth("pub", PUB_PASSWORD);
    stream.write_all(&opts.encode()).expect("send CONNECT");
    let mut buf = Vec::new();
    let next_packet = move |stream: &mut TcpStream, buf: &mut Vec<u8>| loop {
        if let Ok(Some(p)) = wire::split_packet(buf) {
            return Some(p);
        }
        let mut chunk = [0u8; 65536];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend(&chunk[..n]),
        }
    };
    let connack = next_packet(&mut stream, &mut buf).expect("CONNACK");
    assert_eq!(
        connack.connack(v5).expect("CONNACK").code,
        0,
        "{tag}: refused"
    );

    let mut inflight: HashMap<u16, String> = HashMap::new();
    let mut next_id: u16 = 1;
    let mut seq = 0u32;
    loop {
        while inflight.len() < 8 {
            let payload = format!("{tag}-{seq:06}");
            seq += 1;
            let id = next_id;
            next_id = next_id.checked_add(1).unwrap_or(1);
            let packet = PublishOut::new("crash/load", payload.as_bytes())
                .qos(qos, id)
                .encode(v5);
            if stream.write_all(&packet).is_err() {
                return;
            }
            inflight.insert(id, payload);
        }
        let Some(p) = next_packet(&mut stream, &mut buf) else {
            return;
        };
        match p.kind() {
            wire::PUBACK | wire::PUBREC => {
                let ack = p.ack(p.kind()).expect("ack");
                assert!(ack.reason < 0x80, "{tag}: publish refused: {ack:?}");
                let payload = if p.kind() == wire::PUBACK {
                    inflight.remove(&ack.packet_id)
                } else {
                    // QoS 2: stored at PUBREC; the id stays in flight until PUBCOMP.
                    let payload = inflight.get(&ack.packet_id).cloned();
                    if stream
                        .write_all(&wire::ack(wire::PUBREL, ack.packet_id))
                        .is_err()
                    {
                        if let Some(payload) = payload {
                            acked.lock().expect("acked").push(payload);
                        }
                        return;
                    }
                    payload
                };
                let payload = payload.unwrap_or_else(|| {
                    panic!(
                        "{tag}: acknowledgement for unknown packet id {}",
                        ack.packet_id
                    )
                });
                acked.lock().expect("acked").push(payload);
            }
            wire::PUBCOMP => {
                let ack = p.ack(wire::PUBCOMP).expect("PUBCOMP");
                inflight.remove(&ack.packet_id);
            }
            _ => panic!("{tag}: unexpected {} {:02x?}", p.name(), p.to_bytes()),
        }
    }
}

/// Four publishers (three QoS 1, one QoS 2) run while the server is killed with SIGKILL; after a
/// restart on the same data every acknowledged payload is in the history, once, in each
/// publisher's order, and new events get higher ids.
fn acknowledged_events_survive_kill9(v5: bool) {
    let dd = DataDir::standard("");
    let node = dd.start();
    let publishers: Vec<(String, u8, Acked)> = (0..4)
        .map(|i| {
            let qos = if i == 3 { 2 } else { 1 };
            (
                format!("{}-p{i}", version_name(v5)),
                qos,
                Arc::new(Mutex::new(Vec::new())),
            )
        })
        .collect();
    let threads: Vec<_> = publishers
        .iter()
        .map(|(tag, qos, acked)| {
            let (addr, tag, qos, acked) = (node.mqtt, tag.clone(), *qos, Arc::clone(acked));
            thread::spawn(move || crash_publisher(addr, v5, qos, tag, acked))
        })
        .collect();
    // Kill once every publisher has had a good number of acknowledgements.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts: Vec<usize> = publishers
            .iter()
            .map(|(_, _, acked)| acked.lock().expect("acked").len())
            .collect();
        if counts.iter().all(|&n| n >= 200) {
            break;
        }
        let finished: Vec<bool> = threads.iter().map(|t| t.is_finished()).collect();
        assert!(
            Instant::now() < deadline && !finished.iter().any(|&f| f),
            "publishers stalled: acks {counts:?}, finished {finished:?}; server log:\n{}",
            node.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
    node.kill9();
    for t in threads {
        t.join().expect("publisher thread");
    }

    let node = dd.start();
    let events = history(node.http, &format!("topic={}", enc("crash/#")), 1000);
    let stored = payloads(&events);
    let event_ids = ids(&events);
    assert!(
        event_ids.windows(2).all(|w| w[0] < w[1]),
        "history ids not increasing"
    );
    let mut position: HashMap<&str, usize> = HashMap::new();
    for (i, p) in stored.iter().enumerate() {
        assert!(
            position.insert(p.as_str(), i).is_none(),
            "payload {p} stored twice"
        );
    }
    for (tag, _, acked) in &publishers {
        let acked = acked.lock().expect("acked");
        let missing: Vec<&String> = acked
            .iter()
            .filter(|p| !position.contains_key(p.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "{tag}: {} of {} acknowledged payloads lost after kill -9, e.g. {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(5)]
        );
        let order: Vec<usize> = acked.iter().map(|p| position[p.as_str()]).collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "{tag}: stored out of publishing order"
        );
    }
    // The log goes on after the last id it had.
    let mut publisher = RawClient::publisher(node.mqtt, v5);
    publish1(&mut publisher, "crash/after", b"after restart");
    let after = history(node.http, &format!("topic={}", enc("crash/after")), 10);
    assert_eq!(payloads(&after), ["after restart"]);
    let last = event_ids.last().copied().unwrap_or(0);
    assert!(
        ids(&after)[0] > last,
        "new event id {} not above {last}",
        ids(&after)[0]
    );
    assert_no_panic("firehose serve", &node.log());
}

#[test]
fn acknowledged_events_survive_kill9_v311() {
    acknowledged_events_survive_kill9(false);
}

#[test]
fn acknowledged_events_survive_kill9_v5() {
    acknowledged_events_survive_kill9(true);
}

// ---------------------------------------------------------------------------------------------
// 2. Persistent sessions across kill -9
// ---------------------------------------------------------------------------------------------

/// A subscriber's persistent session survives kill -9: it receives, in order and once, every
/// QoS >= 1 message published while it was away (before and after the crash), QoS 0 ones not,
/// with session present = 1.
fn session_survives_kill9(v5: bool) {
    let dd = DataDir::standard("");
    let node = dd.start();
    let id = Server::client_id("durable-sub");
    let (mut sub, connack) = RawClient::connect(node.mqtt, &persistent(v5, &id));
    assert!(!connack.session_present, "new session reported present");
    sub.subscribe("sess/#", 2);
    sub.disconnect();

    let mut publisher = RawClient::publisher(node.mqtt, v5);
    publish_qos(&mut publisher, "sess/a", b"m1", 1);
    publish_qos(&mut publisher, "sess/b", b"m2", 2);
    publish_qos(&mut publisher, "sess/a", b"q0-before", 0);
    publish_qos(&mut publisher, "sess/c/d", b"m3", 1);
    // The QoS 0 publish is routed once the QoS 1 after it is acknowledged (log order).
    node.kill9();

    let node = dd.start();
    let mut publisher = RawClient::publisher(node.mqtt, v5);
    publish_qos(&mut publisher, "sess/b", b"m4", 2);
    // QoS 0 before a QoS 1 publish, so that it is routed (in log order) before the subscriber
    // is back: a QoS 0 message still in the broker's input while it reconnects may be
    // delivered live, rightly.
    publish_qos(&mut publisher, "sess/a", b"q0-after", 0);
    publish_qos(&mut publisher, "other/x", b"not subscribed", 1);
    publish_qos(&mut publisher, "sess/a", b"m5", 1);

    let (mut sub, connack) = RawClient::connect(node.mqtt, &persistent(v5, &id));
    assert!(
        connack.session_present,
        "session present = 0 after restart: session lost"
    );
    // A live marker proves the subscription survived too and bounds what came before it.
    publish1(&mut publisher, "sess/marker", b"marker");
    let got = sub.publishes_until(b"marker");
    let summary: Vec<(String, String, u8)> = got
        .iter()
        .map(|p| {
            (
                p.topic.clone(),
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.qos,
            )
        })
        .collect();
    let expected: Vec<(String, String, u8)> = [
        ("sess/a", "m1", 1),
        ("sess/b", "m2", 2),
        ("sess/c/d", "m3", 1),
        ("sess/b", "m4", 2),
        ("sess/a", "m5", 1),
    ]
    .iter()
    .map(|(t, p, q)| (t.to_string(), p.to_string(), *q))
    .collect();
    assert_eq!(
        summary,
        expected,
        "{}: missed messages after kill -9",
        version_name(v5)
    );
    sub.expect_silence(QUIET);
    assert_no_panic("firehose serve", &node.log());
}

#[test]
fn session_survives_kill9_v311() {
    session_survives_kill9(false);
}

#[test]
fn session_survives_kill9_v5() {
    session_survives_kill9(true);
}

/// What a persistent session changed before the crash is what is restored: an unsubscribed
/// filter stays unsubscribed, a session ended with a clean connect stays ended.
fn session_changes_survive_kill9(v5: bool) {
    let dd = DataDir::standard("");
    let node = dd.start();
    let kept = Server::client_id("kept");
    let (mut sub, _) = RawClient::connect(node.mqtt, &persistent(v5, &kept));
    sub.subscribe("chg/a/#", 1);
    sub.subscribe("chg/b/#", 1);
    sub.unsubscribe("chg/b/#");
    sub.disconnect();
    let ended = Server::client_id("ended");
    let (mut sub, _) = RawClient::connect(node.mqtt, &persistent(v5, &ended));
    sub.subscribe("chg/#", 1);
    sub.disconnect();
    // A clean connect ends the stored session; a 3.1.1 clean session (or v5 expiry 0) is not
    // stored.
    let (sub, connack) = RawClient::connect(node.mqtt, &ConnectOpts::new(v5, &ended));
    assert!(!connack.session_present);
    sub.disconnect();
    let mut publisher = RawClient::publisher(node.mqtt, v5);
    publish1(&mut publisher, "chg/b/x", b"unsubscribed");
    publish1(&mut publisher, "chg/a/x", b"wanted");
    node.kill9();

    let node = dd.start();
    let (mut sub, connack) = RawClient::connect(node.mqtt, &persistent(v5, &kept));
    assert!(connack.session_present, "kept session lost");
    let mut publisher = RawClient::publisher(node.mqtt, v5);
    publish1(&mut publisher, "chg/b/x", b"unsubscribed again");
    publish1(&mut publisher, "chg/a/x", b"marker");
    let got: Vec<String> = sub
        .publishes_until(b"marker")
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    assert_eq!(got, ["wanted"], "{}", version_name(v5));

    let (mut sub, connack) = RawClient::connect(node.mqtt, &persistent(v5, &ended));
    assert!(
        !connack.session_present,
        "{}: a session ended by a clean connect came back after kill -9",
        version_name(v5)
    );
    sub.expect_silence(QUIET);
}

#[test]
fn session_changes_survive_kill9_v311() {
    session_changes_survive_kill9(false);
}

#[test]
fn session_changes_survive_kill9_v5() {
    session_changes_survive_kill9(true);
}

/// A subscription acknowledged with SUBACK is part of the session even if the server is
/// killed right after.
fn subscription_survives_immediate_kill9(v5: bool) {
    let dd = DataDir::standard("");
    let node = dd.start();
    let id = Server::client_id("quick-sub");
    let (mut sub, connack) = RawClient::connect(node.mqtt, &persistent(v5, &id));
    assert!(!connack.session_present);
    sub.subscribe("quick/#", 1);
    node.kill9();
    drop(sub);
    let node = dd.start();
    let mut publisher = RawClient::publisher(node.mqtt, v5);
    publish1(&mut publisher, "quick/t", b"missed");
    let (mut sub, connack) = RawClient::connect(node.mqtt, &persistent(v5, &id));
    assert!(
        connack.session_present,
        "{}: session acknowledged by CONNACK and SUBACK lost by kill -9",
        version_name(v5)
    );
    publish1(&mut publisher, "quick/t", b"marker");
    let got: Vec<String> = sub
        .publishes_until(b"marker")
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    assert_eq!(got, ["missed"]);
}

#[test]
fn subscription_survives_immediate_kill9_v311() {
    subscription_survives_immediate_kill9(false);
}

#[test]
fn subscription_survives_immediate_kill9_v5() {
    subscription_survives_immediate_kill9(true);
}

/// A v5 session whose expiry passed while the server was down is not restored.
fn expired_v5_session_is_not_restored(expiry: u32, settle: Duration) {
    let dd = DataDir::standard("");
    let node = dd.start();
    let id = Server::client_id("expiring");
    let opts = ConnectOpts::new(true, &id)
        .clean(false)
        .props(PropsOut::new().u32(prop::SESSION_EXPIRY, expiry));
    let (mut sub, _) = RawClient::connect(node.mqtt, &opts);
    sub.subscribe("exp/#", 1);
    sub.disconnect();
    thread::sleep(settle);
    node.kill9();
    // Longer than the expiry, whatever the clock resolution.
    thread::sleep(Duration::from_millis(u64::from(expiry) * 1000 + 500));
    let node = dd.start();
    let (_sub, connack) = RawClient::connect(node.mqtt, &opts);
    assert!(
        !connack.session_present,
        "expired session restored (crash {settle:?} after the DISCONNECT)"
    );
}

#[test]
fn expired_v5_session_is_not_restored_after_settling() {
    expired_v5_session_is_not_restored(3, Duration::from_millis(1500));
}

#[test]
fn expired_v5_session_is_not_restored_right_after_disconnect() {
    expired_v5_session_is_not_restored(3, Duration::ZERO);
}

/// A subscriber that was online at the crash and had not acknowledged its last deliveries gets
/// them again after the restart (QoS 1 at least once, QoS 2 once), followed by what it missed.
fn unacknowledged_deliveries_survive_kill9(v5: bool) {
    let dd = DataDir::standard("");
    let node = dd.start();
    let id = Server::client_id("inflight-sub");
    let (mut sub, _) = RawClient::connect(node.mqtt, &persistent(v5, &id));
    sub.subscribe("inf/#", 2);
    let mut publisher = RawClient::publisher(node.mqtt, v5);
    publish_qos(&mut publisher, "inf/t", b"acked", 1);
    let first = sub.expect_publish();
    assert_eq!(first.payload, b"acked");
    publish_qos(&mut publisher, "inf/t", b"unacked-1", 1);
    publish_qos(&mut publisher, "inf/t", b"unacked-2", 2);
    // Received but never acknowledged.
    let a = sub.expect_publish_raw();
    let b = sub.expect_publish_raw();
    assert_eq!(
        (a.payload.as_slice(), b.payload.as_slice()),
        (&b"unacked-1"[..], &b"unacked-2"[..])
    );
    node.kill9();
    drop(sub);

    let node = dd.start();
    let mut publisher = RawClient::publisher(node.mqtt, v5);
    publish_qos(&mut publisher, "inf/t", b"missed", 1);
    let (mut sub, connack) = RawClient::connect(node.mqtt, &persistent(v5, &id));
    assert!(connack.session_present, "session lost");
    publish1(&mut publisher, "inf/t", b"marker");
    let mut got: Vec<String> = sub
        .publishes_until(b"marker")
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    // The acknowledged QoS 1 message may come again (at least once: the session's cursor is
    // saved periodically, not at every PUBACK).
    if got.first().map(String::as_str) == Some("acked") {
        got.remove(0);
    }
    assert_eq!(
        got,
        ["unacked-1", "unacked-2", "missed"],
        "{}: redelivery after kill -9",
        version_name(v5)
    );
}

/// A QoS 2 delivery whose exchange the subscriber completed (PUBREC, PUBREL, PUBCOMP) before
/// the crash must not be delivered again after it: exactly once.
fn completed_qos2_not_redelivered_after_kill9(v5: bool) {
    let dd = DataDir::standard("");
    let node = dd.start();
    let id = Server::client_id("qos2-sub");
    let (mut sub, _) = RawClient::connect(node.mqtt, &persistent(v5, &id));
    sub.subscribe("once/#", 2);
    let mut publisher = RawClient::publisher(node.mqtt, v5);
    publish_qos(&mut publisher, "once/t", b"done", 2);
    let p = sub.expect_publish();
    assert_eq!((p.payload.as_slice(), p.qos), (&b"done"[..], 2));
    // The exchange is complete when PUBCOMP is sent; a ping makes sure the server read it.
    sub.ping();
    node.kill9();
    drop(sub);

    let node = dd.start();
    let (mut sub, connack) = RawClient::connect(node.mqtt, &persistent(v5, &id));
    assert!(connack.session_present, "session lost");
    let mut publisher = RawClient::publisher(node.mqtt, v5);
    publish_qos(&mut publisher, "once/t", b"marker", 2);
    let before: Vec<String> = sub
        .publishes_until(b"marker")
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    assert!(
        before.is_empty(),
        "{}: completed QoS 2 message delivered again after kill -9: {before:?}",
        version_name(v5)
    );
}

#[test]
fn completed_qos2_not_redelivered_after_kill9_v311() {
    completed_qos2_not_redelivered_after_kill9(false);
}

#[test]
fn completed_qos2_not_redelivered_after_kill9_v5() {
    completed_qos2_not_redelivered_after_kill9(true);
}

#[test]
fn unacknowledged_deliveries_survive_kill9_v311() {
    unacknowledged_deliveries_survive_kill9(false);
}

#[test]
fn unacknowledged_deliveries_survive_kill9_v5() {
    unacknowledged_deliveries_survive_kill9(true);
}

/// `mosquitto_sub -c -i ID` (3.1.1, and 5.0 with `-x 600`) gets what it missed across kill -9.
fn mosquitto_session_survives_kill9(v5: bool) {
    if !have_mosquitto_clients() {
        eprintln!("SKIPPED: mosquitto-clients not installed (scripts/test installs them)");
        return;
    }
    let dd = DataDir::standard("");
    let node = dd.start();
    let id = Server::client_id("mosq-durable");
    let mut args = vec!["-c", "-i", id.as_str(), "-q", "2", "-t", "msess/#"];
    if v5 {
        args.extend(["-x", "600"]);
    }
    // First visit: subscribe, receive one message, disconnect cleanly (-C 1).
    let mut first_args = args.clone();
    first_args.extend(["-C", "1"]);
    let mut sub = MosquittoSub::start(node.mqtt, v5, &first_args);
    let mut publisher = RawClient::publisher(node.mqtt, v5);
    publish1(&mut publisher, "msess/x", b"hello");
    sub.wait_for_payload("hello");
    assert!(sub.wait_exit().success(), "mosquitto_sub: {}", sub.stderr());
    // mosquitto_sub exits right after sending DISCONNECT, before the broker has read it. The
    // broker saves the session (its cursor past "hello") before it counts the client gone;
    // a kill -9 before that would legitimately deliver "hello" again (QoS 1 is at least
    // once), which is not what this test is about. Only the publisher stays connected.
    eventually(Duration::from_secs(30), "first visit ended", || {
        metric(&node, "firehose_clients_connected") == 1.0
    });

    publish_qos(&mut publisher, "msess/x", b"one", 1);
    publish_qos(&mut publisher, "msess/y", b"two", 2);
    node.kill9();
    let node = dd.start();
    let mut publisher = RawClient::publisher(node.mqtt, v5);
    publish_qos(&mut publisher, "msess/x", b"three", 2);
    publish_qos(&mut publisher, "msess/z", b"four", 1);

    let mut second_args = args.clone();
    second_args.extend(["-C", "4"]);
    let mut sub = MosquittoSub::spawn(node.mqtt, v5, "", &second_args);
    let got = sub.wait_for_count(4);
    assert!(sub.wait_exit().success(), "mosquitto_sub: {}", sub.stderr());
    // mosquitto_sub prints a QoS 2 message at PUBREL, so its output order is not the
    // delivery order: check the order of the PUBLISH packets it received, and that each
    // payload was printed once.
    let mut printed: Vec<&str> = got.iter().map(|m| m.payload.as_str()).collect();
    printed.sort_unstable();
    assert_eq!(
        printed,
        ["four", "one", "three", "two"],
        "{:#?}",
        sub.output
    );
    let received: Vec<&str> = sub
        .output
        .iter()
        .filter(|l| l.contains("received PUBLISH"))
        .filter_map(|l| l.split_once(", '").map(|(_, rest)| rest))
        .collect();
    assert_eq!(
        received,
        [
            "msess/x', ... (3 bytes))",
            "msess/y', ... (3 bytes))",
            "msess/x', ... (5 bytes))",
            "msess/z', ... (4 bytes))",
        ],
        "mosquitto_sub {}: delivery order: {:#?}",
        version_name(v5),
        sub.output
    );
}

#[test]
fn mosquitto_session_survives_kill9_v311() {
    mosquitto_session_survives_kill9(false);
}

#[test]
fn mosquitto_session_survives_kill9_v5() {
    mosquitto_session_survives_kill9(true);
}

// ---------------------------------------------------------------------------------------------
// 3. Retained messages survive restarts
// ---------------------------------------------------------------------------------------------

/// The retained messages a fresh subscriber to `ret/#` gets, as (topic, payload), sorted.
fn retained_seen(node: &Node, v5: bool) -> Vec<(String, String)> {
    let mut sub = RawClient::anonymous(node.mqtt, v5, "ret-sub");
    sub.subscribe("ret/#", 1);
    let mut publisher = RawClient::publisher(node.mqtt, v5);
    publish1(&mut publisher, "ret/marker", b"marker");
    let got = sub.publishes_until(b"marker");
    let mut seen: Vec<(String, String)> = got
        .iter()
        .map(|p: &PublishIn| {
            assert!(p.retain, "{} delivered without retain=1", p.topic);
            (
                p.topic.clone(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            )
        })
        .collect();
    seen.sort();
    seen
}

fn retained_survive_restarts(v5: bool) {
    let dd = DataDir::standard("");
    let node = dd.start();
    let mut publisher = RawClient::publisher(node.mqtt, v5);
    for (topic, payload) in [
        ("ret/a", &b"keep"[..]),
        ("ret/b", b"to be cleared"),
        ("ret/c", b"v1"),
        ("ret/c", b"v2"),
        ("ret/b", b""),
    ] {
        let reason = publisher.publish(PublishOut::new(topic, payload).qos(1, 0).retain());
        assert_eq!(reason, 0);
    }
    let expected = vec![
        ("ret/a".to_string(), "keep".to_string()),
        ("ret/c".to_string(), "v2".to_string()),
    ];
    assert_eq!(retained_seen(&node, v5), expected, "before restart");
    node.kill9();
    let node = dd.start();
    assert_eq!(retained_seen(&node, v5), expected, "after kill -9");
    let status = node.terminate();
    assert!(status.success(), "SIGTERM exit: {status}");
    let node = dd.start();
    assert_eq!(retained_seen(&node, v5), expected, "after SIGTERM");
    // Clearing after a restart stays cleared through the next one.
    let mut publisher = RawClient::publisher(node.mqtt, v5);
    let reason = publisher.publish(PublishOut::new("ret/a", b"").qos(1, 0).retain());
    assert_eq!(reason, 0);
    node.kill9();
    let node = dd.start();
    assert_eq!(
        retained_seen(&node, v5),
        vec![("ret/c".to_string(), "v2".to_string())],
        "cleared retained message back after restart"
    );
}

/// `limits.max_retained_messages` counts the retained messages restored from the log too: a
/// new retained topic beyond it is refused (PUBACK 0x97) before and after `kill -9`; a quota
/// lowered below what is stored keeps every stored message, says so in the log, and refuses
/// new topics until enough are cleared.
#[test]
fn the_retained_quota_holds_across_restarts_and_a_lowered_one_forgets_nothing() {
    let quota =
        |max: u32| format!("[sys]\ninterval_secs = 0\n[limits]\nmax_retained_messages = {max}\n");
    let dd = DataDir::standard(&quota(3));
    let publish = |node: &Node, topic: &str, payload: &[u8]| {
        RawClient::publisher(node.mqtt, true)
            .publish(PublishOut::new(topic, payload).qos(1, 0).retain())
    };
    let kept = |topics: &[&str]| -> Vec<(String, String)> {
        topics
            .iter()
            .map(|t| (t.to_string(), format!("{t} kept")))
            .collect()
    };
    let node = dd.start();
    for topic in ["ret/a", "ret/b", "ret/c"] {
        assert_eq!(publish(&node, topic, format!("{topic} kept").as_bytes()), 0);
    }
    assert_eq!(
        publish(&node, "ret/d", b"one too many"),
        0x97,
        "quota exceeded"
    );
    assert_eq!(
        publish(&node, "ret/c", b"ret/c kept"),
        0,
        "a replacement passes"
    );
    assert_eq!(
        retained_seen(&node, true),
        kept(&["ret/a", "ret/b", "ret/c"])
    );
    node.kill9();

    let node = dd.start();
    assert_eq!(
        publish(&node, "ret/d", b"one too many"),
        0x97,
        "restored ones count"
    );
    assert_eq!(
        retained_seen(&node, true),
        kept(&["ret/a", "ret/b", "ret/c"])
    );
    let status = node.terminate();
    assert!(status.success(), "SIGTERM exit: {status}");

    std::fs::write(dd.dir.path().join("firehose.toml"), quota(2)).expect("lower the quota");
    let node = dd.start();
    assert_eq!(
        retained_seen(&node, true),
        kept(&["ret/a", "ret/b", "ret/c"])
    );
    assert!(
        node.log().contains("exceed the retained quota"),
        "no warning about the lowered quota:\n{}",
        node.log()
    );
    assert_eq!(publish(&node, "ret/a", b""), 0, "a clear passes");
    assert_eq!(
        publish(&node, "ret/d", b"ret/d kept"),
        0x97,
        "still at the quota"
    );
    assert_eq!(publish(&node, "ret/b", b""), 0);
    assert_eq!(publish(&node, "ret/d", b"ret/d kept"), 0, "room again");
    assert_eq!(retained_seen(&node, true), kept(&["ret/c", "ret/d"]));
}

#[test]
fn retained_survive_restarts_v311() {
    retained_survive_restarts(false);
}

#[test]
fn retained_survive_restarts_v5() {
    retained_survive_restarts(true);
}

// ---------------------------------------------------------------------------------------------
// 4. Slow consumer
// ---------------------------------------------------------------------------------------------

/// With `send_queue = 10`, a QoS 1 subscriber that stops reading while 500 messages are
/// published loses none: a fast subscriber gets all 500 meanwhile, then the slow one reads all
/// 500, in order, once.
fn slow_consumer_loses_nothing(v5: bool, config: &str, payload_size: usize) {
    let dd = DataDir::standard(config);
    let node = dd.start();
    let mut slow = RawClient::anonymous(node.mqtt, v5, "slow");
    slow.subscribe("slow/#", 1);
    let mut fast = RawClient::anonymous(node.mqtt, !v5, "fast");
    fast.subscribe("slow/#", 1);
    const N: usize = 500;
    let padding = "x".repeat(payload_size);
    let payload = move |i: usize| format!("m{i:04}-{padding}");
    let expected: Vec<String> = (0..N).map(&payload).collect();

    let fast_thread = thread::spawn(move || {
        (0..N)
            .map(|_| String::from_utf8_lossy(&fast.expect_publish().payload).into_owned())
            .collect::<Vec<_>>()
    });
    let mut publisher = RawClient::publisher(node.mqtt, v5);
    for i in 0..N {
        publish1(&mut publisher, "slow/t", payload(i).as_bytes());
    }
    let fast_got = fast_thread.join().expect("fast subscriber");
    assert!(
        fast_got == expected,
        "fast subscriber: wrong messages (first difference at {:?})",
        fast_got.iter().zip(&expected).position(|(a, b)| a != b)
    );

    for (i, want) in expected.iter().enumerate() {
        let p = slow.expect_publish();
        let got = String::from_utf8_lossy(&p.payload);
        assert!(
            got == *want,
            "slow subscriber: message {i} is {:?}, expected {:?}",
            &got[..got.len().min(12)],
            &want[..12]
        );
        assert_eq!(p.qos, 1);
    }
    publish1(&mut publisher, "slow/t", b"marker");
    let extra = slow.publishes_until(b"marker");
    assert!(
        extra.is_empty(),
        "slow subscriber got {} extra (duplicate) messages",
        extra.len()
    );
    assert_no_panic("firehose serve", &node.log());
}

#[test]
fn slow_consumer_socket_backpressure_v311() {
    // Large payloads and the default inflight window: the socket fills first.
    slow_consumer_loses_nothing(false, "[limits]\nsend_queue = 10\n", 4096);
}

#[test]
fn slow_consumer_inflight_window_v5() {
    // Small payloads, a small inflight window: unacknowledged deliveries fill the queue.
    slow_consumer_loses_nothing(true, "[limits]\nsend_queue = 10\nmax_inflight = 5\n", 16);
}

#[test]
fn slow_consumer_socket_backpressure_v5() {
    slow_consumer_loses_nothing(true, "[limits]\nsend_queue = 10\n", 4096);
}

#[test]
fn slow_consumer_inflight_window_v311() {
    slow_consumer_loses_nothing(false, "[limits]\nsend_queue = 10\nmax_inflight = 5\n", 16);
}

// ---------------------------------------------------------------------------------------------
// 5. History API
// ---------------------------------------------------------------------------------------------

/// A node with a known history: topics hist/a, hist/b/x, hist/c/x and other/z.
fn history_node() -> (DataDir, Node) {
    let dd = DataDir::standard("");
    let node = dd.start();
    let mut v3 = RawClient::publisher(node.mqtt, false);
    let mut v5 = RawClient::publisher(node.mqtt, true);
    publish1(&mut v3, "hist/a", br#"{"n":1,"kind":"json"}"#);
    publish1(&mut v3, "hist/b/x", b"plain text");
    publish_qos(&mut v3, "hist/c/x", &[0xff, 0x00, 0x01, 0x02], 2);
    publish1(&mut v3, "other/z", b"elsewhere");
    let reason = v5.publish(
        PublishOut::new("hist/a", br#"[1,2,3]"#).qos(1, 0).props(
            PropsOut::new()
                .str(prop::CONTENT_TYPE, "application/json")
                .pair("source", "test")
                .pair("k", "v"),
        ),
    );
    assert_eq!(reason, 0);
    publish_qos(&mut v5, "hist/b/y", b"zero", 0);
    // PINGRESP comes after the QoS 0 publish was handled, so it is in the log before the next.
    v5.ping();
    publish1(&mut v3, "hist/c/x", b"");
    let reason = v3.publish(PublishOut::new("hist/r", b"retained").qos(1, 0).retain());
    assert_eq!(reason, 0);
    eventually(TIMEOUT, "8 events in the log", || {
        history(node.http, "", 1000).len() >= 8
    });
    (dd, node)
}

#[test]
fn history_lists_every_event_with_its_fields() {
    let (_dd, node) = history_node();
    let all = history(node.http, "", 1000);
    assert_eq!(all.len(), 8, "{all:#?}");
    let topics: Vec<&str> = all
        .iter()
        .map(|e| e["topic"].as_str().expect("topic"))
        .collect();
    assert_eq!(
        topics,
        ["hist/a", "hist/b/x", "hist/c/x", "other/z", "hist/a", "hist/b/y", "hist/c/x", "hist/r"]
    );
    let event_ids = ids(&all);
    assert!(event_ids.windows(2).all(|w| w[0] < w[1]), "{event_ids:?}");
    for e in &all {
        assert_eq!(e["publisher"], "pub", "{e}");
        let time = e["time"].as_str().expect("time");
        assert!(
            time.len() >= 20 && time.ends_with('Z') && time.contains('T'),
            "time {time:?} not RFC 3339 UTC"
        );
    }
    // Payload encodings.
    assert_eq!(
        all[0]["payload"],
        serde_json::json!({"n": 1, "kind": "json"})
    );
    assert_eq!(all[0]["payload_encoding"], "json");
    assert_eq!(all[1]["payload"], "plain text");
    assert_eq!(all[1]["payload_encoding"], "text");
    assert_eq!(all[2]["payload"], "/wABAg==");
    assert_eq!(all[2]["payload_encoding"], "base64");
    assert_eq!(all[2]["qos"], 2);
    assert_eq!(all[4]["payload"], serde_json::json!([1, 2, 3]));
    assert_eq!(all[4]["content_type"], "application/json");
    assert_eq!(
        all[4]["user_properties"],
        serde_json::json!([["source", "test"], ["k", "v"]])
    );
    assert_eq!(all[5]["qos"], 0);
    assert_eq!(all[6]["payload"], "", "empty payload: {}", all[6]);
    assert_eq!(all[7]["retain"], true);
    assert_eq!(all[0]["retain"], false);
    assert_eq!(all[0]["qos"], 1);
    assert!(all[0].get("content_type").is_none());

    // One event by id; 404 for none; 400 for a non-number.
    for e in &all {
        let one = http_json(node.http, &format!("/api/v1/events/{}", e["id"]));
        assert_eq!(&one, e);
    }
    let (status, body) = http_get(node.http, "/api/v1/events/999999");
    assert_eq!(status, 404, "{body}");
    assert!(serde_json::from_str::<Value>(&body).expect("JSON 404")["error"].is_string());
    let (status, body) = http_get(node.http, "/api/v1/events/abc");
    assert_eq!(status, 400, "{body}");
}

#[test]
fn history_pages_equal_the_full_list() {
    let (_dd, node) = history_node();
    let full = http_json(node.http, "/api/v1/events?limit=1000");
    assert_eq!(full["more"], false);
    assert!(full["next_after"].is_null());
    let full = full["events"].as_array().expect("events").clone();
    for limit in [1, 2, 3, 7, 8, 100] {
        assert_eq!(history(node.http, "", limit), full, "pages of {limit}");
    }
    let filtered = history(node.http, &format!("topic={}", enc("hist/#")), 1000);
    assert_eq!(
        history(node.http, &format!("topic={}", enc("hist/#")), 2),
        filtered
    );
    // after= starts after an id.
    let third = full[2]["id"].as_u64().expect("id");
    let rest = http_json(node.http, &format!("/api/v1/events?after={third}"));
    assert_eq!(rest["events"].as_array().expect("events")[..], full[3..]);
}

#[test]
fn history_topic_filters_are_ored_and_wildcards_match() {
    let (_dd, node) = history_node();
    let topics_of = |query: &str| -> Vec<String> {
        history(node.http, query, 1000)
            .iter()
            .map(|e| e["topic"].as_str().expect("topic").to_string())
            .collect()
    };
    assert_eq!(topics_of("topic=hist%2Fa"), ["hist/a", "hist/a"]);
    assert_eq!(
        topics_of("topic=hist%2Fa&topic=other%2Fz"),
        ["hist/a", "other/z", "hist/a"]
    );
    assert_eq!(
        topics_of(&format!("topic={}", enc("hist/+/x"))),
        ["hist/b/x", "hist/c/x", "hist/c/x"]
    );
    assert_eq!(
        topics_of(&format!(
            "topic={}&topic={}",
            enc("hist/b/#"),
            enc("other/+")
        )),
        ["hist/b/x", "other/z", "hist/b/y"]
    );
    assert_eq!(topics_of(&format!("topic={}", enc("#"))).len(), 8);
    assert_eq!(topics_of(&format!("topic={}", enc("+/+/x"))).len(), 3);
    // Overlapping filters do not duplicate.
    assert_eq!(
        topics_of(&format!("topic={}&topic={}", enc("hist/#"), enc("hist/a"))).len(),
        7
    );
    assert!(topics_of("topic=nothing%2Fhere").is_empty());
}

#[test]
fn history_since_and_until() {
    let dd = DataDir::standard("");
    let node = dd.start();
    let mut publisher = RawClient::publisher(node.mqtt, true);
    for i in 0..3 {
        publish1(&mut publisher, "time/early", format!("early{i}").as_bytes());
    }
    // Let the clock move on so that the two batches have different times.
    thread::sleep(Duration::from_millis(50));
    for i in 0..3 {
        publish1(&mut publisher, "time/late", format!("late{i}").as_bytes());
    }
    let all = history(node.http, "", 1000);
    assert_eq!(all.len(), 6);
    let split = all[3]["time"].as_str().expect("time").to_string();
    assert!(
        all[2]["time"].as_str().expect("time") < split.as_str(),
        "batches share a millisecond: {all:#?}"
    );
    let query = |q: &str| payloads(&history(node.http, q, 1000));
    assert_eq!(
        query(&format!("since={}", enc(&split))),
        ["late0", "late1", "late2"],
        "since is inclusive"
    );
    assert_eq!(
        query(&format!("until={}", enc(&split))),
        ["early0", "early1", "early2"],
        "until is exclusive"
    );
    let first = all[0]["time"].as_str().expect("time");
    let last = all[5]["time"].as_str().expect("time");
    assert_eq!(
        query(&format!("since={}&until={}", enc(first), enc(&split))).len(),
        3
    );
    assert_eq!(
        query(&format!("since={}&topic={}", enc(first), enc("time/late"))).len(),
        3
    );
    let at_last: Vec<String> = all
        .iter()
        .filter(|e| e["time"].as_str().expect("time") >= last)
        .map(|e| e["payload"].as_str().expect("payload").to_string())
        .collect();
    assert_eq!(query(&format!("since={}", enc(last))), at_last);
    // Durations back from now.
    assert_eq!(query("since=2h").len(), 6);
    assert_eq!(query("since=7d").len(), 6);
    assert!(query("until=2h").is_empty());
    assert_eq!(query("until=1970-01-02T00:00:00Z").len(), 0);
    assert_eq!(query("since=1970-01-01T00:00:00Z").len(), 6);
}

/// RFC 3339 allows numeric offsets (`+02:00`), not only `Z`.
#[test]
fn history_since_accepts_rfc3339_offsets() {
    let dd = DataDir::standard("");
    let node = dd.start();
    let mut publisher = RawClient::publisher(node.mqtt, true);
    publish1(&mut publisher, "off/t", b"one");
    let query = |q: &str| payloads(&history(node.http, q, 1000));
    assert_eq!(query("since=2000-01-01T02:00:00%2B02:00"), ["one"]);
    assert_eq!(
        query("until=2000-01-01T02:00:00-05:00"),
        Vec::<String>::new()
    );
}

#[test]
fn history_bad_parameters_are_400_naming_the_parameter() {
    let dd = DataDir::standard("");
    let node = dd.start();
    for (target, word) in [
        ("/api/v1/events?topic=a%2F%23%2Fb", "topic"),
        ("/api/v1/events?topic=", "topic"),
        ("/api/v1/events?since=yesterday", "since"),
        ("/api/v1/events?until=soon", "until"),
        ("/api/v1/events?limit=0", "limit"),
        ("/api/v1/events?limit=abc", "limit"),
        ("/api/v1/events?limit=100000", "limit"),
        ("/api/v1/events?after=-1", "after"),
        ("/api/v1/events?colour=red", "colour"),
        (
            "/api/v1/events?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
            "until",
        ),
        ("/api/v1/stream?topic=a%2B", "topic"),
        ("/api/v1/stream?heartbeat=0", "heartbeat"),
        ("/api/v1/stream?limit=5", "limit"),
    ] {
        let (status, body) = http_get(node.http, target);
        assert_eq!(status, 400, "GET {target}: {body}");
        let json: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {target}: 400 body not JSON ({e}): {body}"));
        let error = json["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(word),
            "GET {target}: error {error:?} does not name {word}"
        );
    }
    let (status, body) = http_get_with(
        node.http,
        "/api/v1/stream",
        &[("Last-Event-ID", "not-a-number")],
    );
    assert_eq!(status, 400, "bad Last-Event-ID: {body}");
    assert!(body.contains("Last-Event-ID"), "{body}");
    assert_no_panic("firehose serve", &node.log());
}

#[test]
fn sys_topics_are_not_logged_and_odd_topics_round_trip() {
    let dd = DataDir::standard("[sys]\ninterval_secs = 1\n");
    let node = dd.start();
    let mut sys = RawClient::anonymous(node.mqtt, true, "sys-sub");
    sys.subscribe("$SYS/broker/#", 0);
    let p = sys.expect_publish();
    assert!(p.topic.starts_with("$SYS/"), "{}", p.topic);
    let mut publisher = RawClient::publisher(node.mqtt, true);
    let odd = "uni/\u{fc}ber/with space/&=%?".to_string();
    publish1(&mut publisher, &odd, "caf\u{e9}".as_bytes());
    let all = history(node.http, "", 1000);
    assert!(
        all.iter()
            .all(|e| !e["topic"].as_str().expect("topic").starts_with('$')),
        "$SYS in the log: {all:#?}"
    );
    assert!(history(node.http, &format!("topic={}", enc("$SYS/#")), 1000).is_empty());
    let found = history(node.http, &format!("topic={}", enc(&odd)), 1000);
    assert_eq!(found.len(), 1, "{all:#?}");
    assert_eq!(found[0]["topic"], odd.as_str());
    assert_eq!(found[0]["payload"], "caf\u{e9}");
    assert_eq!(found[0]["payload_encoding"], "text");
}

/// A QoS 2 publisher that got PUBREC before the crash sends PUBREL after it: the server
/// completes the exchange (PUBCOMP) and the message is in the log once.
fn qos2_publisher_completes_after_kill9(v5: bool) {
    let dd = DataDir::standard("");
    let node = dd.start();
    let id = Server::client_id("q2pub");
    let opts = persistent(v5, &id).auth("pub", PUB_PASSWORD);
    let (mut publisher, _) = RawClient::connect(node.mqtt, &opts);
    publisher.send(&PublishOut::new("q2/t", b"stored").qos(2, 7).encode(v5));
    let reason = publisher.expect_ack(wire::PUBREC, 7);
    assert_eq!(reason, 0);
    node.kill9();
    drop(publisher);
    let node = dd.start();
    let (mut publisher, _) = RawClient::connect(node.mqtt, &opts);
    publisher.send(&wire::ack(wire::PUBREL, 7));
    let reason = publisher.expect_ack(wire::PUBCOMP, 7);
    // v5 may say 0x92 (packet identifier not found) if the id was not kept.
    assert!(
        reason == 0 || (v5 && reason == 0x92),
        "PUBCOMP reason {reason:#x}"
    );
    publisher.ping();
    let events = history(node.http, &format!("topic={}", enc("q2/t")), 10);
    assert_eq!(payloads(&events), ["stored"]);
}

#[test]
fn qos2_publisher_completes_after_kill9_v311() {
    qos2_publisher_completes_after_kill9(false);
}

#[test]
fn qos2_publisher_completes_after_kill9_v5() {
    qos2_publisher_completes_after_kill9(true);
}

#[test]
fn openapi_document_is_json() {
    let dd = DataDir::standard("");
    let node = dd.start();
    let doc = http_json(node.http, "/api/v1/openapi.json");
    assert!(doc["openapi"].is_string(), "no openapi key: {doc}");
    let paths = doc["paths"].as_object().expect("paths");
    for path in ["/api/v1/events", "/api/v1/stream"] {
        assert!(paths.contains_key(path), "{path} not documented");
    }
    assert!(
        paths.keys().any(|k| k.starts_with("/api/v1/events/")),
        "event by id not documented"
    );
}

/// The public, read-only history may be read by pages served from anywhere (dashboards).
#[test]
fn history_and_stream_allow_any_origin() {
    let dd = DataDir::standard("");
    let node = dd.start();
    for target in [
        "/api/v1/events",
        "/api/v1/events/1",
        "/api/v1/stream?heartbeat=1",
    ] {
        let (_, headers) = http_get_headers(node.http, target);
        let allowed = headers
            .iter()
            .find(|(name, _)| name == "access-control-allow-origin")
            .map(|(_, value)| value.as_str());
        assert_eq!(allowed, Some("*"), "{target}: {headers:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Server-Sent Events
// ---------------------------------------------------------------------------------------------

#[test]
fn sse_replays_then_goes_live_and_resumes_with_last_event_id() {
    let dd = DataDir::standard("");
    let node = dd.start();
    let mut publisher = RawClient::publisher(node.mqtt, true);
    for i in 0..5 {
        publish1(&mut publisher, "sse/t", format!("old{i}").as_bytes());
        publish1(&mut publisher, "nosse/t", format!("noise{i}").as_bytes());
    }
    let old = history(node.http, &format!("topic={}", enc("sse/#")), 1000);
    let second = ids(&old)[1];
    let target = format!("/api/v1/stream?topic={}&after={second}", enc("sse/#"));
    let mut sse = Sse::open(node.http, &target, &[]);
    assert_eq!(sse.status, 200);
    assert!(
        sse.headers
            .iter()
            .any(|(n, v)| n == "content-type" && v.starts_with("text/event-stream")),
        "{:?}",
        sse.headers
    );
    let got = sse.events(3);
    assert_eq!(
        got.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        ids(&old)[2..]
    );
    for ((id, data), expected) in got.iter().zip(&old[2..]) {
        assert_eq!(data, expected, "SSE data of {id} differs from the history");
    }
    // Live events, published while the stream is open.
    for i in 0..3 {
        publish1(&mut publisher, "nosse/t", b"noise");
        publish1(&mut publisher, "sse/t", format!("live{i}").as_bytes());
    }
    let live = sse.events(3);
    assert_eq!(
        live.iter()
            .map(|(_, d)| d["payload"].as_str().expect("payload").to_string())
            .collect::<Vec<_>>(),
        ["live0", "live1", "live2"]
    );
    let resume_from = live[0].0;
    drop(sse);

    // Published while disconnected.
    publish1(&mut publisher, "sse/t", b"gap0");
    publish1(&mut publisher, "sse/t", b"gap1");
    let resume_id = resume_from.to_string();
    // Last-Event-ID wins over after=.
    let target = format!("/api/v1/stream?topic={}&after=0", enc("sse/#"));
    let mut sse = Sse::open(node.http, &target, &[("Last-Event-ID", &resume_id)]);
    assert_eq!(sse.status, 200);
    let resumed = sse.events(4);
    publish1(&mut publisher, "sse/t", b"live-after");
    let after = sse.events(1);
    let texts: Vec<String> = resumed
        .iter()
        .chain(&after)
        .map(|(_, d)| d["payload"].as_str().expect("payload").to_string())
        .collect();
    assert_eq!(texts, ["live1", "live2", "gap0", "gap1", "live-after"]);
    let all_ids: Vec<u64> = resumed.iter().chain(&after).map(|(id, _)| *id).collect();
    let history_ids: Vec<u64> = ids(&history(
        node.http,
        &format!("topic={}", enc("sse/#")),
        1000,
    ))
    .into_iter()
    .filter(|id| *id > resume_from)
    .collect();
    assert_eq!(all_ids, history_ids, "SSE ids must be the event ids");
}

#[test]
fn sse_without_position_starts_live() {
    let dd = DataDir::standard("");
    let node = dd.start();
    let mut publisher = RawClient::publisher(node.mqtt, false);
    publish1(&mut publisher, "live/t", b"before");
    let mut sse = Sse::open(node.http, "/api/v1/stream?topic=live%2Ft", &[]);
    assert_eq!(sse.status, 200);
    // The stream may not be registered yet when the next publish happens: publish until one
    // arrives, and check it is not the old one.
    let deadline = Instant::now() + TIMEOUT;
    let first = loop {
        publish1(&mut publisher, "live/t", b"after");
        match sse.next_within(Duration::from_millis(500)) {
            Some(SseItem::Event { data, .. }) => break data,
            Some(SseItem::Comment(_)) | None => {}
        }
        assert!(Instant::now() < deadline, "no live SSE event");
    };
    assert_eq!(first["payload"], "after");
}

#[test]
fn sse_heartbeat_comments() {
    let dd = DataDir::standard("");
    let node = dd.start();
    let mut sse = Sse::open(
        node.http,
        "/api/v1/stream?topic=quiet%2F%23&heartbeat=1",
        &[],
    );
    assert_eq!(sse.status, 200);
    let deadline = Instant::now() + TIMEOUT;
    let mut heartbeats = 0;
    while heartbeats < 2 {
        match sse.next_within(deadline.saturating_duration_since(Instant::now())) {
            Some(SseItem::Comment(text)) => {
                assert_eq!(text, "heartbeat");
                heartbeats += 1;
            }
            Some(other) => panic!("unexpected {other:?} on a quiet topic"),
            None => panic!("{heartbeats} heartbeat comments within {TIMEOUT:?}"),
        }
    }
}

#[test]
fn sse_since_starts_at_a_time() {
    let dd = DataDir::standard("");
    let node = dd.start();
    let mut publisher = RawClient::publisher(node.mqtt, true);
    publish1(&mut publisher, "ss/t", b"early");
    thread::sleep(Duration::from_millis(50));
    publish1(&mut publisher, "other/t", b"other");
    publish1(&mut publisher, "ss/t", b"late");
    let all = history(node.http, "", 1000);
    let since = all[1]["time"].as_str().expect("time");
    assert!(all[0]["time"].as_str().expect("time") < since);
    let mut sse = Sse::open(
        node.http,
        &format!("/api/v1/stream?topic=ss%2Ft&since={}", enc(since)),
        &[],
    );
    let got = sse.events(1);
    assert_eq!(got[0].1["payload"], "late");
}

// ---------------------------------------------------------------------------------------------
// 7. firehose replay
// ---------------------------------------------------------------------------------------------

fn replay_output(args: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(firehose_bin());
    cmd.arg("replay").args(args);
    let out = run_with_timeout(&mut cmd, b"", Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "firehose replay {args:?}: {stderr}");
    assert_no_panic("firehose replay", &stderr);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

#[test]
fn replay_prints_the_history() {
    let dd = DataDir::standard("");
    let node = dd.start();
    let mut publisher = RawClient::publisher(node.mqtt, true);
    // More than one page of 1000.
    for i in 0..1205 {
        let topic = match i % 3 {
            0 => "rep/a",
            1 => "rep/b/c",
            _ => "else/x",
        };
        publisher.publish0(topic, format!("{{\"i\":{i}}}").as_bytes());
    }
    publish1(&mut publisher, "rep/a", &[0xfe, 0xff]);
    eventually(TIMEOUT, "1206 events", || {
        history(node.http, "", 1000).len() == 1206
    });
    let base = node.base_url();
    let expected = history(node.http, &format!("topic={}", enc("rep/#")), 1000);
    assert_eq!(expected.len(), 805);
    assert_eq!(replay_output(&["rep/#", "--server", &base]), expected);
    let both = history(
        node.http,
        &format!("topic={}&topic={}", enc("rep/a"), enc("else/+")),
        1000,
    );
    assert_eq!(replay_output(&["rep/a", "else/+", "--server", &base]), both);
    assert_eq!(replay_output(&["--server", &base]).len(), 1206);
    let after = ids(&expected)[100];
    let tail: Vec<Value> = expected[101..].to_vec();
    assert_eq!(
        replay_output(&["rep/#", "--server", &base, "--after", &after.to_string()]),
        tail
    );
    assert_eq!(
        replay_output(&["rep/#", "--server", &base, "--since", "1h"]),
        expected
    );
    assert!(replay_output(&["rep/#", "--server", &base, "--until", "1h"]).is_empty());
    let until = expected[10]["time"].as_str().expect("time");
    let before: Vec<Value> = expected
        .iter()
        .filter(|e| e["time"].as_str().expect("time") < until)
        .cloned()
        .collect();
    assert_eq!(
        replay_output(&["rep/#", "--server", &base, "--until", until]),
        before
    );
}

#[test]
fn replay_reports_a_bad_filter_and_an_unreachable_server() {
    let dd = DataDir::standard("");
    let node = dd.start();
    let mut cmd = Command::new(firehose_bin());
    cmd.args(["replay", "a/#/b", "--server", &node.base_url()]);
    let out = run_with_timeout(&mut cmd, b"", Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "bad filter accepted");
    assert!(stderr.contains("topic"), "{stderr}");
    assert_no_panic("firehose replay", &stderr);
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let mut cmd = Command::new(firehose_bin());
    cmd.args(["replay", "--server", &format!("http://127.0.0.1:{port}")]);
    let out = run_with_timeout(&mut cmd, b"", Duration::from_secs(40));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "unreachable server: success");
    assert!(stderr.contains(&port.to_string()), "{stderr}");
    assert_no_panic("firehose replay", &stderr);
}

/// A running `firehose replay --follow`, its stdout lines on a channel; killed on drop.
struct Follow {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follow {
    fn start(args: &[&str]) -> Follow {
        let mut cmd = Command::new(firehose_bin());
        cmd.arg("replay").args(args).arg("--follow");
        let (child, lines) = spawn_with_lines(cmd, "firehose replay");
        Follow { child, lines }
    }

    fn take(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => out.push(
                    serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")),
                ),
                Err(_) => panic!(
                    "replay --follow printed {} of {n} lines within {timeout:?}; exited: {:?}",
                    out.len(),
                    self.child.try_wait()
                ),
            }
        }
        out
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--follow` while a publisher keeps publishing: what it prints is exactly the log of the
/// filter, history then live, with no gap and no duplicate at the switch.
#[test]
fn replay_follow_has_no_gap_or_duplicate_at_the_switch() {
    let dd = DataDir::standard("");
    let node = dd.start();
    let mut publisher = RawClient::publisher(node.mqtt, false);
    for i in 0..300 {
        publish1(&mut publisher, "fol/t", format!("h{i}").as_bytes());
        publish1(&mut publisher, "nofol/t", b"noise");
    }
    // Keep publishing while replay reads the history and switches to the stream.
    let stop = Arc::new(AtomicUsize::new(0));
    let mqtt = node.mqtt;
    let stop_flag = Arc::clone(&stop);
    let background = thread::spawn(move || {
        let mut publisher = RawClient::publisher(mqtt, true);
        let mut n = 0;
        while stop_flag.load(Ordering::Relaxed) == 0 && n < 20_000 {
            publish1(&mut publisher, "fol/t", format!("live{n}").as_bytes());
            publish1(&mut publisher, "nofol/t", b"noise");
            n += 1;
        }
        n
    });
    let base = node.base_url();
    let mut follow = Follow::start(&["fol/#", "--server", &base]);
    // Enough lines to be well past the switch, while publishing goes on.
    let first = follow.take(500, Duration::from_secs(60));
    stop.store(1, Ordering::Relaxed);
    let published = background.join().expect("publisher thread");
    // Everything published (bounded), then the end of what it printed.
    let total = 300 + published;
    let rest = follow.take(total - 500, Duration::from_secs(60));
    drop(follow);
    let printed: Vec<Value> = first.into_iter().chain(rest).collect();
    let expected = history(node.http, &format!("topic={}", enc("fol/#")), 1000);
    assert_eq!(expected.len(), total);
    let printed_ids = ids(&printed);
    let expected_ids = ids(&expected);
    if printed_ids != expected_ids {
        let first_diff = printed_ids
            .iter()
            .zip(&expected_ids)
            .position(|(a, b)| a != b);
        panic!(
            "replay --follow printed a different sequence; first difference at {first_diff:?}: printed {:?}, log {:?}",
            first_diff.map(|i| &printed_ids[i.saturating_sub(2)..(i + 3).min(printed_ids.len())]),
            first_diff.map(|i| &expected_ids[i.saturating_sub(2)..(i + 3).min(expected_ids.len())]),
        );
    }
    assert_eq!(printed, expected);
}

/// `--follow --since T` where nothing matches since T must not print older events.
#[test]
fn replay_follow_with_empty_history_respects_since() {
    let dd = DataDir::standard("");
    let node = dd.start();
    let mut publisher = RawClient::publisher(node.mqtt, false);
    publish1(&mut publisher, "fs/t", b"old");
    thread::sleep(Duration::from_millis(50));
    publish1(&mut publisher, "other/t", b"boundary");
    let all = history(node.http, "", 1000);
    let since = all[1]["time"].as_str().expect("time").to_string();
    let base = node.base_url();
    let mut follow = Follow::start(&["fs/#", "--server", &base, "--since", &since]);
    // Give replay time to find no history and switch to the stream (if it is slower, the new
    // event is in its history and the test proves less, but still passes only if correct).
    thread::sleep(Duration::from_secs(1));
    publish1(&mut publisher, "fs/t", b"new");
    let first = follow.take(1, TIMEOUT);
    assert_eq!(
        first[0]["payload"], "new",
        "replay --follow --since printed an event older than --since: {}",
        first[0]
    );
}

/// `--follow --after ID` with nothing after ID: only new events.
#[test]
fn replay_follow_after_starts_after_the_id() {
    let dd = DataDir::standard("");
    let node = dd.start();
    let mut publisher = RawClient::publisher(node.mqtt, false);
    publish1(&mut publisher, "fa/t", b"old");
    let last = ids(&history(node.http, "", 10))[0];
    let base = node.base_url();
    let mut follow = Follow::start(&["fa/#", "--server", &base, "--after", &last.to_string()]);
    thread::sleep(Duration::from_millis(300));
    publish1(&mut publisher, "fa/t", b"new1");
    publish1(&mut publisher, "fa/t", b"new2");
    let got = follow.take(2, TIMEOUT);
    assert_eq!(payloads(&got), ["new1", "new2"]);
}

// ---------------------------------------------------------------------------------------------
// 8. Startup errors
// ---------------------------------------------------------------------------------------------

/// Runs `serve` on `data_dir` and expects it to fail; returns its log.
fn expect_startup_failure(dd: &DataDir, data_dir: &std::path::Path) -> String {
    match dd.spawn_serve(data_dir) {
        Ok(node) => panic!(
            "firehose serve started on {data_dir:?}; log:\n{}",
            node.log()
        ),
        Err((status, log)) => {
            assert!(!status.success(), "exit status {status}; log:\n{log}");
            assert_no_panic("firehose serve", &log);
            log
        }
    }
}

#[test]
fn data_dir_that_is_a_file_is_a_clear_error() {
    let dd = DataDir::new(&[], "");
    let file = dd.dir.path().join("not-a-dir");
    std::fs::write(&file, b"just a file").expect("write file");
    let log = expect_startup_failure(&dd, &file);
    assert!(
        log.contains(&file.display().to_string()),
        "path not named:\n{log}"
    );
    // A data dir below a regular file.
    let below = file.join("data");
    let log = expect_startup_failure(&dd, &below);
    assert!(
        log.contains(&below.display().to_string()),
        "path not named:\n{log}"
    );
}

#[test]
fn unwritable_data_dir_is_a_clear_error() {
    let dd = DataDir::new(&[], "");
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let path = if is_root {
        // Permissions do not stop root; sysfs refuses new directories to everyone.
        std::path::PathBuf::from(format!("/sys/firehose-test-{}", std::process::id()))
    } else {
        use std::os::unix::fs::PermissionsExt;
        let locked = dd.dir.path().join("read-only");
        std::fs::create_dir(&locked).expect("mkdir");
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        locked.join("data")
    };
    let log = expect_startup_failure(&dd, &path);
    assert!(
        log.contains(&path.display().to_string()),
        "path not named:\n{log}"
    );
}

#[test]
fn corrupt_database_is_a_clear_error() {
    let dd = DataDir::new(&[], "");
    let data = dd.data();
    std::fs::create_dir_all(&data).expect("mkdir");
    let db = data.join("events.db");
    let garbage: Vec<u8> = (0..20_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&db, garbage).expect("write garbage");
    let log = expect_startup_failure(&dd, &data);
    assert!(log.to_lowercase().contains("corrupt"), "{log}");
    assert!(log.contains("events.db"), "file not named:\n{log}");
}

#[test]
fn truncated_database_is_a_clear_error_or_recovers() {
    // A real database cut in half by a disk problem: refused with "corrupt", or opened; never a
    // panic or a hang.
    let dd = DataDir::standard("");
    let node = dd.start();
    let mut publisher = RawClient::publisher(node.mqtt, false);
    for i in 0..200 {
        publish1(&mut publisher, "trunc/t", format!("{i:0200}").as_bytes());
    }
    node.terminate();
    let db = dd.data().join("events.db");
    let len = std::fs::metadata(&db).expect("db").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .expect("open db");
    file.set_len(len / 2).expect("truncate");
    drop(file);
    match dd.spawn_serve(&dd.data()) {
        Ok(node) => {
            // If it opened, reading must not panic the server.
            let (status, _) = http_get(node.http, "/api/v1/events?limit=1000");
            assert!(status == 200 || status == 500, "status {status}");
            assert_no_panic("firehose serve", &node.log());
        }
        Err((status, log)) => {
            assert!(!status.success());
            assert_no_panic("firehose serve", &log);
            assert!(log.to_lowercase().contains("corrupt"), "{log}");
        }
    }
}

#[test]
fn second_server_on_the_same_data_dir_is_refused_as_locked() {
    let dd = DataDir::standard("");
    let mut first = dd.start();
    let log = expect_startup_failure(&dd, &dd.data());
    assert!(log.to_lowercase().contains("locked"), "{log}");
    assert!(first.running(), "the first server stopped");
    common::assert_serves(first.mqtt);
    let (status, _) = http_get(first.http, "/api/v1/events");
    assert_eq!(status, 200);
}

// ---------------------------------------------------------------------------------------------
// 9. Retention
// ---------------------------------------------------------------------------------------------

#[test]
fn retention_max_count_keeps_the_newest() {
    let dd = DataDir::standard("[[log.retention]]\nfilter = \"logs/#\"\nmax_count = 5\n");
    let node = dd.start();
    let mut publisher = RawClient::publisher(node.mqtt, true);
    for i in 0..3 {
        publish1(&mut publisher, "keep/t", format!("keep{i}").as_bytes());
    }
    for i in 0..20 {
        let topic = if i % 2 == 0 { "logs/x" } else { "logs/y/z" };
        publish1(&mut publisher, topic, format!("log{i:02}").as_bytes());
    }
    for i in 3..5 {
        publish1(&mut publisher, "keep/t", format!("keep{i}").as_bytes());
    }
    let logs_query = format!("topic={}", enc("logs/#"));
    eventually(
        Duration::from_secs(30),
        "retention leaves 5 events under logs/",
        || history(node.http, &logs_query, 1000).len() <= 5,
    );
    let logs = history(node.http, &logs_query, 1000);
    assert_eq!(
        payloads(&logs),
        ["log15", "log16", "log17", "log18", "log19"]
    );
    let keep = history(node.http, &format!("topic={}", enc("keep/#")), 1000);
    assert_eq!(
        payloads(&keep),
        ["keep0", "keep1", "keep2", "keep3", "keep4"]
    );
    // Deleted events are gone by id too.
    let (status, _) = http_get(node.http, "/api/v1/events/4");
    assert_eq!(status, 404);
    // And the rule holds across a restart.
    node.kill9();
    let node = dd.start();
    let mut publisher = RawClient::publisher(node.mqtt, false);
    publish1(&mut publisher, "logs/x", b"log20");
    eventually(Duration::from_secs(30), "retention after restart", || {
        history(node.http, &logs_query, 1000).len() <= 5
    });
    assert_eq!(
        payloads(&history(node.http, &logs_query, 1000)),
        ["log16", "log17", "log18", "log19", "log20"]
    );
    assert_eq!(
        history(node.http, &format!("topic={}", enc("keep/#")), 1000).len(),
        5
    );
}

#[test]
fn retention_max_age_and_max_bytes() {
    let dd = DataDir::standard(
        "[[log.retention]]\nfilter = \"tmp/#\"\nmax_age = \"1s\"\n\
         [[log.retention]]\nfilter = \"big/#\"\nmax_bytes = 1000\n",
    );
    let node = dd.start();
    let mut publisher = RawClient::publisher(node.mqtt, false);
    for i in 0..3 {
        publish1(&mut publisher, "tmp/x", format!("tmp{i}").as_bytes());
    }
    // Topic "big/x" (5 bytes) + 300 bytes of payload: three fit in 1000 bytes, four do not.
    for i in 0..10 {
        publish1(
            &mut publisher,
            "big/x",
            format!("{i}{}", "b".repeat(299)).as_bytes(),
        );
    }
    publish1(&mut publisher, "keep/x", b"kept");
    let tmp = format!("topic={}", enc("tmp/#"));
    eventually(
        Duration::from_secs(30),
        "tmp/# older than 1s deleted",
        || history(node.http, &tmp, 1000).is_empty(),
    );
    let big = format!("topic={}", enc("big/#"));
    eventually(Duration::from_secs(30), "big/# within 1000 bytes", || {
        history(node.http, &big, 1000).len() <= 3
    });
    let firsts: Vec<char> = payloads(&history(node.http, &big, 1000))
        .iter()
        .map(|p| p.chars().next().expect("payload"))
        .collect();
    assert_eq!(firsts, ['7', '8', '9'], "not the newest kept");
    assert_eq!(
        payloads(&history(node.http, &format!("topic={}", enc("keep/#")), 10)),
        ["kept"]
    );
    // Visible in /metrics.
    let (status, metrics) = http_get(node.http, "/metrics");
    assert_eq!(status, 200);
    let deleted = metrics
        .lines()
        .find(|l| l.starts_with("firehose_log_retention_deleted"))
        .unwrap_or_else(|| panic!("no retention metric in /metrics:\n{metrics}"));
    let value: f64 = deleted
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric line {deleted:?}"));
    assert!(value >= 10.0, "{deleted}");
}

// ---------------------------------------------------------------------------------------------
// Slow and stuck subscribers
// ---------------------------------------------------------------------------------------------

/// The value of a counter in `/metrics`.
fn metric(node: &Node, name: &str) -> f64 {
    let (status, metrics) = http_get(node.http, "/metrics");
    assert_eq!(status, 200);
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}"))
}

/// 20,000 QoS 0 publishes of 7 bytes in one write arrive in reads of thousands, and the log
/// hands each read to the routing task as one group. With `send_queue = 1000` the subscriber
/// gets every message, in order, and nothing is dropped: the routing task routes a few
/// hundred events at a time and lets the subscriber's connection write between them. (Routing
/// a whole group at once filled the queue and dropped most of them.)
#[test]
fn a_burst_read_at_once_is_routed_in_steps_and_a_reading_subscriber_loses_nothing() {
    let dd = DataDir::standard("[limits]\nsend_queue = 1000\n");
    let node = dd.start();
    let mut subscriber = RawClient::anonymous(node.mqtt, false, "burst-sub");
    subscriber.subscribe("b", 0);
    const N: usize = 20_000;
    let reader = thread::spawn(move || {
        (0..N)
            .map(|_| subscriber.expect_publish().payload)
            .collect::<Vec<_>>()
    });
    let mut publisher = RawClient::publisher(node.mqtt, false);
    let burst: Vec<u8> = (0..N)
        .flat_map(|i| PublishOut::new("b", format!("{i:05}").as_bytes()).encode(false))
        .collect();
    publisher.send(&burst);
    let got = reader.join().expect("subscriber");
    let expected: Vec<Vec<u8>> = (0..N).map(|i| format!("{i:05}").into_bytes()).collect();
    assert!(
        got == expected,
        "messages out of order or wrong (first difference at {:?})",
        got.iter().zip(&expected).position(|(a, b)| a != b)
    );
    assert_eq!(
        metric(&node, "firehose_messages_dropped_queue_full_total"),
        0.0
    );
    assert_no_panic("firehose serve", &node.log());
}

/// Publishes `count` 1 KiB QoS 1 messages to a topic whose only subscriber never reads, and
/// returns how many times publishers were paused.
fn pauses_with_a_subscriber_that_never_reads(limits: &str, count: usize) -> f64 {
    let dd = DataDir::standard(&format!("[limits]\nsend_queue = 100\n{limits}"));
    let node = dd.start();
    // The only subscriber of the topic, so "most subscribers": it never reads, so its socket
    // buffers, its outbox and then half its queue fill up.
    let mut stuck = RawClient::connect(node.mqtt, &ConnectOpts::new(false, "stuck")).0;
    stuck.subscribe("flood/t", 1);
    let mut publisher = RawClient::publisher(node.mqtt, false);
    let payload = vec![b'x'; 1024];
    for _ in 0..count {
        publish1(&mut publisher, "flood/t", &payload);
    }
    let pauses = metric(&node, "firehose_publisher_pauses_total");
    drop(stuck);
    pauses
}

#[test]
fn a_subscriber_that_stops_reading_pauses_the_publisher_only_until_it_counts_as_stuck() {
    let pauses = pauses_with_a_subscriber_that_never_reads("", 20_000);
    assert!(pauses >= 1.0, "the publisher was never paused");
    // Pauses last 5 ms each and only while the subscriber is slow, not stuck (it takes
    // nothing for a second): about 200 at most, however slow this machine. Without the
    // distinction every publish after the queue half filled (more than 10,000) would pause.
    assert!(
        pauses < 2_000.0,
        "{pauses} pauses: a stuck subscriber kept slowing the publisher"
    );
}

#[test]
fn pause_publishers_false_never_pauses() {
    let pauses = pauses_with_a_subscriber_that_never_reads("pause_publishers = false\n", 20_000);
    assert_eq!(pauses, 0.0);
}
