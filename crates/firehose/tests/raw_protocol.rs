//! Black-box protocol tests with raw packets: QoS flows, retained messages, wildcards, `$SYS`,
//! shared subscriptions, wills, keepalive, takeover, persistent sessions, access control and
//! bad input, each on MQTT 3.1.1 and 5.0 where the feature exists in both.
//!
//! The packets are built and parsed by `common::wire`, which shares no code with the broker.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::wire::{self, prop, ConnectOpts, PropsOut, PublishOut, WillOpts};
use common::{
    assert_serves, Got, RawClient, Server, ServerOptions, LIMITED_PASSWORD, PUB_PASSWORD, QUIET,
    TIMEOUT,
};

both_versions! {
    qos_levels_delivered => qos_levels_delivered;
    qos_downgraded_to_granted => qos_downgraded_to_granted;
    qos2_duplicate_publish_delivered_once => qos2_duplicate_publish_delivered_once;
    retained_set_replace_clear => retained_set_replace_clear;
    wildcards_match => wildcards_match;
    dollar_topics_not_matched_by_wildcards => dollar_topics_not_matched_by_wildcards;
    sys_topics_published => sys_topics_published;
    shared_subscription_delivers_once_per_group => shared_subscription_delivers_once_per_group;
    unsubscribe_stops_delivery => unsubscribe_stops_delivery;
    will_published_on_abnormal_close => will_published_on_abnormal_close;
    will_not_published_after_disconnect => will_not_published_after_disconnect;
    will_retained => will_retained;
    anonymous_will_never_published => anonymous_will_never_published;
    keepalive_timeout_closes_and_fires_will => keepalive_timeout_closes_and_fires_will;
    client_id_takeover => client_id_takeover;
    takeover_of_an_idle_connection => takeover_of_an_idle_connection;
    session_resumes_with_dup_redelivery => session_resumes_with_dup_redelivery;
    clean_session_discards_state => clean_session_discards_state;
    bad_password_refused => bad_password_refused;
    unknown_user_refused => unknown_user_refused;
    anonymous_publish_not_delivered => anonymous_publish_not_delivered;
    publish_outside_acl_not_delivered => publish_outside_acl_not_delivered;
    packet_before_connect_closes => packet_before_connect_closes;
    second_connect_closes => second_connect_closes;
    malformed_packets_close => malformed_packets_close;
    oversized_remaining_length_closes => oversized_remaining_length_closes;
    packet_over_max_packet_size_closes => packet_over_max_packet_size_closes;
    garbage_closes => garbage_closes;
    truncated_packet_then_close => truncated_packet_then_close;
    max_connections_refuses_extra => max_connections_refuses_extra;
    max_connections_per_ip_refuses_extra => max_connections_per_ip_refuses_extra;
    max_subscriptions_per_client => max_subscriptions_per_client;
    outgoing_inflight_window => outgoing_inflight_window;
    packets_pipelined_behind_connect_are_served => packets_pipelined_behind_connect_are_served;
}

// ---------------------------------------------------------------------------------------------
// Publish / subscribe
// ---------------------------------------------------------------------------------------------

fn qos_levels_delivered(v5: bool) {
    let server = Server::standard();
    let mut sub = RawClient::anonymous(server.addr, v5, "sub");
    sub.subscribe("test/qos", 2);
    let mut publisher = RawClient::publisher(server.addr, v5);
    for qos in 0..=2u8 {
        let payload = format!("qos{qos}");
        let reason = publisher.publish(PublishOut::new("test/qos", payload.as_bytes()).qos(qos, 1));
        assert_eq!(reason, 0, "publish at QoS {qos} refused");
        let p = sub.expect_publish();
        assert_eq!(p.topic, "test/qos");
        assert_eq!(p.payload, payload.as_bytes());
        assert_eq!(
            p.qos, qos,
            "delivered QoS for a QoS {qos} publish to a QoS 2 subscription"
        );
        assert_eq!(p.packet_id.is_some(), qos > 0);
        assert!(!p.retain && !p.dup);
    }
}

fn qos_downgraded_to_granted(v5: bool) {
    let server = Server::standard();
    let mut subs: Vec<RawClient> = (0..=2u8)
        .map(|qos| {
            let mut sub = RawClient::anonymous(server.addr, v5, &format!("sub{qos}"));
            sub.subscribe("test/down", qos);
            sub
        })
        .collect();
    let mut publisher = RawClient::publisher(server.addr, v5);
    for pub_qos in 0..=2u8 {
        let payload = format!("p{pub_qos}");
        publisher.publish(PublishOut::new("test/down", payload.as_bytes()).qos(pub_qos, 1));
        for (sub_qos, sub) in subs.iter_mut().enumerate() {
            let p = sub.expect_publish();
            assert_eq!(p.payload, payload.as_bytes());
            assert_eq!(
                p.qos,
                pub_qos.min(sub_qos as u8),
                "QoS {pub_qos} publish to a QoS {sub_qos} subscription"
            );
        }
    }
}

fn qos2_duplicate_publish_delivered_once(v5: bool) {
    let server = Server::standard();
    let mut sub = RawClient::anonymous(server.addr, v5, "sub");
    sub.subscribe("test/once", 2);
    let mut publisher = RawClient::publisher(server.addr, v5);
    let mut first = PublishOut::new("test/once", b"exactly-once").qos(2, 77);
    publisher.send(&first.encode(v5));
    assert_eq!(publisher.expect_ack(wire::PUBREC, 77), 0);
    // The PUBREC was "lost": the client resends the PUBLISH with DUP before releasing it.
    first.dup = true;
    publisher.send(&first.encode(v5));
    assert_eq!(publisher.expect_ack(wire::PUBREC, 77), 0, "second PUBREC");
    publisher.send(&wire::ack(wire::PUBREL, 77));
    assert_eq!(publisher.expect_ack(wire::PUBCOMP, 77), 0);
    publisher.publish(PublishOut::new("test/once", b"marker").qos(1, 1));

    let before = sub.publishes_until(b"marker");
    let payloads: Vec<_> = before.iter().map(|p| p.payload.clone()).collect();
    assert_eq!(
        payloads,
        vec![b"exactly-once".to_vec()],
        "QoS 2 message delivered once"
    );
}

fn retained_set_replace_clear(v5: bool) {
    let server = Server::standard();
    let mut publisher = RawClient::publisher(server.addr, v5);
    let mut live = RawClient::anonymous(server.addr, v5, "live");
    live.subscribe("test/ret/#", 1);

    publisher.publish(PublishOut::new("test/ret/a", b"first").qos(1, 1).retain());
    let p = live.expect_publish();
    assert_eq!(p.payload, b"first");
    assert!(
        !p.retain,
        "live delivery of a retained message has retain=0"
    );

    let mut late = RawClient::anonymous(server.addr, v5, "late");
    late.subscribe("test/ret/#", 1);
    let p = late.expect_publish();
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        ("test/ret/a", &b"first"[..])
    );
    assert!(
        p.retain,
        "retained message delivered on subscribe has retain=1"
    );

    publisher.publish(PublishOut::new("test/ret/a", b"second").qos(1, 1).retain());
    assert_eq!(live.expect_publish().payload, b"second");
    let mut later = RawClient::anonymous(server.addr, v5, "later");
    later.subscribe("test/ret/#", 1);
    publisher.publish(PublishOut::new("test/ret/live", b"marker").qos(1, 1));
    let before = later.publishes_until(b"marker");
    let got: Vec<_> = before
        .iter()
        .map(|p| (p.payload.clone(), p.retain))
        .collect();
    assert_eq!(
        got,
        vec![(b"second".to_vec(), true)],
        "replaced retained message"
    );

    // An empty retained payload clears it.
    publisher.publish(PublishOut::new("test/ret/a", b"").qos(1, 1).retain());
    let mut last = RawClient::anonymous(server.addr, v5, "last");
    last.subscribe("test/ret/#", 1);
    publisher.publish(PublishOut::new("test/ret/live", b"marker").qos(1, 1));
    let before = last.publishes_until(b"marker");
    assert!(
        before.is_empty(),
        "cleared retained message still delivered: {before:?}"
    );
}

fn wildcards_match(v5: bool) {
    let server = Server::standard();
    let filters = ["w/+/c", "w/#", "+/b", "w/+", "#", "+"];
    let mut subs: Vec<RawClient> = filters
        .iter()
        .map(|filter| {
            let mut sub = RawClient::anonymous(server.addr, v5, "wild");
            sub.subscribe(filter, 0);
            if *filter != "#" {
                sub.subscribe("marker/x/y/z", 0);
            }
            sub
        })
        .collect();
    let mut publisher = RawClient::publisher(server.addr, v5);
    let topics = [
        "w/b/c", "w/x/y/c", "w", "w/b", "w/c", "x/b", "w/b/c/d", "/b",
    ];
    for topic in topics {
        publisher.publish(PublishOut::new(topic, topic.as_bytes()).qos(1, 1));
    }
    publisher.publish(PublishOut::new("marker/x/y/z", b"marker").qos(1, 1));
    let expected: [&[&str]; 6] = [
        &["w/b/c"],
        &["w/b/c", "w/x/y/c", "w", "w/b", "w/c", "w/b/c/d"],
        &["w/b", "x/b", "/b"],
        &["w/b", "w/c"],
        &topics,
        &["w"],
    ];
    for ((sub, filter), want) in subs.iter_mut().zip(filters).zip(expected) {
        let got: BTreeSet<String> = sub
            .publishes_until(b"marker")
            .into_iter()
            .map(|p| p.topic)
            .collect();
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, want, "topics matched by {filter:?}");
    }
}

fn dollar_topics_not_matched_by_wildcards(v5: bool) {
    let server = Server::standard();
    let mut all = RawClient::anonymous(server.addr, v5, "all");
    all.subscribe("#", 0);
    let mut plus = RawClient::anonymous(server.addr, v5, "plus");
    plus.subscribe("+/broker/#", 0);
    plus.subscribe("marker", 0);
    let mut sys = RawClient::anonymous(server.addr, v5, "sys");
    sys.subscribe("$SYS/broker/uptime", 0);
    // Two $SYS rounds after both wildcard subscriptions exist.
    for _ in 0..2 {
        let p = sys.expect_publish();
        assert_eq!(p.topic, "$SYS/broker/uptime");
    }
    let mut publisher = RawClient::publisher(server.addr, v5);
    publisher.publish(PublishOut::new("marker", b"marker").qos(1, 1));
    for (name, client) in [("#", &mut all), ("+/broker/#", &mut plus)] {
        let before = client.publishes_until(b"marker");
        let dollar: Vec<_> = before.iter().filter(|p| p.topic.starts_with('$')).collect();
        assert!(dollar.is_empty(), "{name} matched $-topics: {dollar:?}");
    }
}

/// The leading integer of a `$SYS` payload (`"12"` or Mosquitto's `"12 seconds"`).
fn leading_int(payload: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(payload).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn sys_topics_published(v5: bool) {
    let server = Server::standard();
    let mut publisher = RawClient::publisher(server.addr, v5);
    for i in 0..3 {
        publisher.publish(PublishOut::new("test/count", format!("{i}").as_bytes()).qos(1, 1));
    }
    let mut sub = RawClient::anonymous(server.addr, v5, "sys");
    sub.subscribe("$SYS/broker/#", 0);
    let wanted = [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/bytes/received",
        "$SYS/broker/bytes/sent",
    ];
    // The first values may be retained from before this test's traffic: read until the latest
    // values reflect it.
    let mut latest: std::collections::HashMap<String, Vec<u8>> = Default::default();
    let int = |latest: &std::collections::HashMap<String, Vec<u8>>, topic: &str| {
        latest.get(topic).and_then(|v| leading_int(v))
    };
    let done = |latest: &std::collections::HashMap<String, Vec<u8>>| {
        latest
            .get("$SYS/broker/version")
            .is_some_and(|v| !String::from_utf8_lossy(v).trim().is_empty())
            && wanted[1..].iter().all(|t| int(latest, t).is_some())
            && int(latest, "$SYS/broker/clients/connected").unwrap_or(0) >= 2
            && int(latest, "$SYS/broker/messages/received").unwrap_or(0) >= 3
            && int(latest, "$SYS/broker/messages/sent").unwrap_or(0) >= 1
            && int(latest, "$SYS/broker/bytes/received").unwrap_or(0) > 0
            && int(latest, "$SYS/broker/bytes/sent").unwrap_or(0) > 0
    };
    let deadline = Instant::now() + TIMEOUT;
    while !done(&latest) {
        let shown: std::collections::BTreeMap<_, _> = latest
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        assert!(
            Instant::now() < deadline,
            "after {TIMEOUT:?}, $SYS values do not show 2 clients connected, 3 messages \
             received, bytes sent and received: {shown:#?}"
        );
        let p = sub.expect_publish();
        assert!(
            p.topic.starts_with("$SYS/broker/"),
            "unexpected topic {}",
            p.topic
        );
        latest.insert(p.topic, p.payload);
    }
}

fn shared_subscription_delivers_once_per_group(v5: bool) {
    let server = Server::standard();
    let mut members: Vec<RawClient> = (0..2)
        .map(|_| {
            let mut m = RawClient::anonymous(server.addr, v5, "member");
            m.subscribe("$share/g/test/shared", 1);
            m
        })
        .collect();
    let mut plain = RawClient::anonymous(server.addr, v5, "plain");
    plain.subscribe("test/shared", 1);
    let mut publisher = RawClient::publisher(server.addr, v5);
    const N: usize = 20;
    for i in 0..N {
        publisher.publish(PublishOut::new("test/shared", format!("m{i}").as_bytes()).qos(1, 1));
    }
    let all: BTreeSet<Vec<u8>> = (0..N).map(|i| format!("m{i}").into_bytes()).collect();

    let plain_got: BTreeSet<Vec<u8>> = (0..N).map(|_| plain.expect_publish().payload).collect();
    assert_eq!(plain_got, all, "a plain subscriber gets every message");

    let mut shared_got = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while shared_got.len() < N && Instant::now() < deadline {
        for m in members.iter_mut() {
            if let Got::Packet(p) = m.read(Duration::from_millis(50)) {
                let publish = p.publish(v5).expect("PUBLISH");
                m.ack_publish(&publish);
                shared_got.push(publish.payload);
            }
        }
    }
    for m in members.iter_mut() {
        m.expect_silence(QUIET);
    }
    let unique: BTreeSet<Vec<u8>> = shared_got.iter().cloned().collect();
    assert_eq!(
        shared_got.len(),
        N,
        "the group got {} deliveries of {N} messages",
        shared_got.len()
    );
    assert_eq!(unique, all, "each message to exactly one group member");
}

fn unsubscribe_stops_delivery(v5: bool) {
    let server = Server::standard();
    let mut sub = RawClient::anonymous(server.addr, v5, "unsub");
    sub.subscribe("test/unsub", 1);
    sub.subscribe("test/marker", 1);
    let mut publisher = RawClient::publisher(server.addr, v5);
    publisher.publish(PublishOut::new("test/unsub", b"one").qos(1, 1));
    assert_eq!(sub.expect_publish().payload, b"one");
    sub.unsubscribe("test/unsub");
    publisher.publish(PublishOut::new("test/unsub", b"two").qos(1, 1));
    publisher.publish(PublishOut::new("test/marker", b"marker").qos(1, 1));
    assert!(sub.publishes_until(b"marker").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Wills, keepalive, takeover
// ---------------------------------------------------------------------------------------------

fn will_client_at(addr: std::net::SocketAddr, v5: bool, will: WillOpts) -> RawClient {
    let opts = ConnectOpts::new(v5, &Server::client_id("will"))
        .auth("pub", PUB_PASSWORD)
        .will(will);
    RawClient::connect(addr, &opts).0
}

fn will_published_on_abnormal_close(v5: bool) {
    let server = Server::standard();
    let mut sub = RawClient::anonymous(server.addr, v5, "sub");
    sub.subscribe("test/will", 1);
    let mut will = WillOpts::new("test/will", b"gone");
    will.qos = 1;
    let client = will_client_at(server.addr, v5, will);
    client.drop_connection();
    let p = sub.expect_publish();
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        ("test/will", &b"gone"[..])
    );
    assert_eq!(p.qos, 1);
}

fn will_not_published_after_disconnect(v5: bool) {
    let server = Server::standard();
    let mut sub = RawClient::anonymous(server.addr, v5, "sub");
    sub.subscribe("test/will", 1);
    let client = will_client_at(server.addr, v5, WillOpts::new("test/will", b"must-not"));
    client.disconnect();
    let mut publisher = RawClient::publisher(server.addr, v5);
    publisher.publish(PublishOut::new("test/will", b"marker").qos(1, 1));
    let before = sub.publishes_until(b"marker");
    assert!(
        before.is_empty(),
        "will published after DISCONNECT: {before:?}"
    );
}

fn will_retained(v5: bool) {
    let server = Server::standard();
    let mut will = WillOpts::new("test/will/retained", b"last-words");
    will.retain = true;
    will.qos = 1;
    let mut watcher = RawClient::anonymous(server.addr, v5, "watch");
    watcher.subscribe("test/will/retained", 1);
    will_client_at(server.addr, v5, will).drop_connection();
    assert_eq!(watcher.expect_publish().payload, b"last-words");
    let mut late = RawClient::anonymous(server.addr, v5, "late");
    late.subscribe("test/will/retained", 1);
    let p = late.expect_publish();
    assert_eq!(p.payload, b"last-words");
    assert!(p.retain, "a retained will is delivered as retained");
}

fn anonymous_will_never_published(v5: bool) {
    let server = Server::standard();
    let mut sub = RawClient::anonymous(server.addr, v5, "sub");
    sub.subscribe("test/will", 1);
    let opts = ConnectOpts::new(v5, &Server::client_id("anon-will"))
        .will(WillOpts::new("test/will", b"anonymous-will"));
    let (client, connack) = RawClient::connect_with(server.addr, &opts);
    // Refusing the CONNECT outright is acceptable too; publishing the will is not.
    if connack.code == 0 {
        client.drop_connection();
    }
    let mut publisher = RawClient::publisher(server.addr, v5);
    publisher.publish(PublishOut::new("test/will", b"marker").qos(1, 1));
    let before = sub.publishes_until(b"marker");
    assert!(before.is_empty(), "anonymous will published: {before:?}");
}

fn keepalive_timeout_closes_and_fires_will(v5: bool) {
    let server = Server::standard();
    let mut sub = RawClient::anonymous(server.addr, v5, "sub");
    sub.subscribe("test/ka", 1);
    let opts = ConnectOpts::new(v5, &Server::client_id("silent"))
        .auth("pub", PUB_PASSWORD)
        .keep_alive(1)
        .will(WillOpts::new("test/ka", b"timed-out"));
    let (mut silent, connack) = RawClient::connect(server.addr, &opts);
    // A v5 server may impose its own keep alive; the client must then honour that one.
    let keep_alive = connack.props.int(0x13).unwrap_or(1);
    assert!(
        keep_alive <= 5,
        "server keep alive {keep_alive} too long for this test"
    );
    let before = silent.expect_closed_within(TIMEOUT);
    if v5 {
        for p in &before {
            assert_eq!(p.kind(), wire::DISCONNECT, "before close: {p:?}");
            assert_eq!(
                p.disconnect_reason().expect("reason"),
                0x8D,
                "keep alive timeout"
            );
        }
    } else {
        assert!(
            before.is_empty(),
            "3.1.1 server sent {before:?} before closing"
        );
    }
    assert_eq!(sub.expect_publish().payload, b"timed-out");
}

fn client_id_takeover(v5: bool) {
    let server = Server::standard();
    let id = Server::client_id("same");
    let (mut first, _) = RawClient::connect(server.addr, &ConnectOpts::new(v5, &id));
    let (mut second, _) = RawClient::connect(server.addr, &ConnectOpts::new(v5, &id));
    let before = first.expect_closed();
    if v5 {
        let reasons: Vec<u8> = before
            .iter()
            .map(|p| p.disconnect_reason().expect("only DISCONNECT before close"))
            .collect();
        assert_eq!(
            reasons,
            vec![0x8E],
            "first connection gets DISCONNECT Session taken over"
        );
    } else {
        assert!(
            before.is_empty(),
            "3.1.1 connection got {before:?} before close"
        );
    }
    second.ping();
    second.subscribe("test/takeover", 0);
}

/// A connection with nothing to do waits on its session's link; a takeover must still reach
/// it, for a persistent session (resumed: the session's generation moves on) as for a clean
/// one (discarded).
fn takeover_of_an_idle_connection(v5: bool) {
    let server = Server::standard();
    for clean in [false, true] {
        let id = Server::client_id("idle-same");
        let opts = if clean {
            ConnectOpts::new(v5, &id)
        } else {
            persistent(v5, &id)
        };
        let (mut first, _) = RawClient::connect(server.addr, &opts);
        first.subscribe("test/idle-takeover", 1);
        // Long enough for the first connection to have nothing left to do.
        std::thread::sleep(Duration::from_millis(200));
        let (mut second, _) = RawClient::connect(server.addr, &opts);
        let before = first.expect_closed_within(Duration::from_secs(3));
        if v5 {
            let reasons: Vec<u8> = before
                .iter()
                .map(|p| p.disconnect_reason().expect("only DISCONNECT before close"))
                .collect();
            assert_eq!(reasons, vec![0x8E], "clean {clean}: Session taken over");
        }
        second.ping();
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

/// CONNECT for a persistent session: 3.1.1 clean session 0, v5 clean start 0 + expiry 300 s.
fn persistent(v5: bool, id: &str) -> ConnectOpts {
    ConnectOpts::persistent(v5, id, 300)
}

fn session_resumes_with_dup_redelivery(v5: bool) {
    let server = Server::standard();
    let id = Server::client_id("persist");
    let (mut client, connack) = RawClient::connect(server.addr, &persistent(v5, &id));
    assert!(!connack.session_present, "new session reported as present");
    client.subscribe("test/sess", 1);
    client.subscribe("test/sess2", 2);
    let mut publisher = RawClient::publisher(server.addr, v5);
    publisher.publish(PublishOut::new("test/sess", b"unacked").qos(1, 1));
    let first = client.expect_publish_raw();
    assert_eq!(first.payload, b"unacked");
    assert!(!first.dup);
    client.drop_connection(); // no PUBACK

    publisher.publish(PublishOut::new("test/sess", b"offline-1").qos(1, 1));
    publisher.publish(PublishOut::new("test/sess2", b"offline-2").qos(2, 1));

    let (mut client, connack) = RawClient::connect(server.addr, &persistent(v5, &id));
    assert!(connack.session_present, "session not present on reconnect");
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(client.expect_publish());
    }
    let redelivered = got
        .iter()
        .find(|p| p.payload == b"unacked")
        .unwrap_or_else(|| panic!("unacknowledged message not redelivered: {got:?}"));
    assert!(redelivered.dup, "redelivered message must have DUP set");
    assert_eq!(redelivered.qos, 1);
    let o1 = got
        .iter()
        .find(|p| p.payload == b"offline-1")
        .expect("offline QoS 1 message");
    // The broker may not have seen the dropped connection yet when these were published; then
    // it sent them into the dead socket and resends them now with DUP set, as it must. Only the
    // QoS is certain.
    assert_eq!(o1.qos, 1);
    let o2 = got
        .iter()
        .find(|p| p.payload == b"offline-2")
        .expect("offline QoS 2 message");
    assert_eq!(o2.qos, 2);
    assert_eq!(o2.topic, "test/sess2");

    // The subscriptions survived too: live delivery continues.
    publisher.publish(PublishOut::new("test/sess", b"live").qos(1, 1));
    let before = client.publishes_until(b"live");
    assert!(before.is_empty(), "extra deliveries: {before:?}");
}

fn clean_session_discards_state(v5: bool) {
    let server = Server::standard();
    let id = Server::client_id("clean");
    let (mut client, _) = RawClient::connect(server.addr, &persistent(v5, &id));
    client.subscribe("test/old", 1);
    client.disconnect();

    let (mut client, connack) = RawClient::connect(server.addr, &ConnectOpts::new(v5, &id));
    assert!(
        !connack.session_present,
        "clean connect must not resume a session"
    );
    client.subscribe("test/marker", 1);
    let mut publisher = RawClient::publisher(server.addr, v5);
    publisher.publish(PublishOut::new("test/old", b"old-subscription").qos(1, 1));
    publisher.publish(PublishOut::new("test/marker", b"marker").qos(1, 1));
    let before = client.publishes_until(b"marker");
    assert!(
        before.is_empty(),
        "discarded subscription still delivers: {before:?}"
    );
    client.disconnect();

    // The clean session ended with its connection: nothing to resume.
    let (_client, connack) = RawClient::connect(server.addr, &persistent(v5, &id));
    assert!(!connack.session_present, "clean session was kept");
}

// ---------------------------------------------------------------------------------------------
// Authentication and authorization
// ---------------------------------------------------------------------------------------------

fn assert_refused_bad_credentials(v5: bool, user: &str, password: &str) {
    let server = Server::standard();
    let opts = ConnectOpts::new(v5, &Server::client_id("bad")).auth(user, password);
    let (mut client, connack) = RawClient::connect_with(server.addr, &opts);
    let allowed: &[u8] = if v5 { &[0x86, 0x87] } else { &[4, 5] };
    assert!(
        allowed.contains(&connack.code),
        "CONNACK code {:#04x} for bad credentials, expected one of {allowed:02x?}",
        connack.code
    );
    client.expect_closed();
    assert_serves(server.addr);
}

fn bad_password_refused(v5: bool) {
    assert_refused_bad_credentials(v5, "pub", "wrong-password");
}

fn unknown_user_refused(v5: bool) {
    assert_refused_bad_credentials(v5, "nobody", PUB_PASSWORD);
}

/// Sends a publish that the server must not accept; returns the PUBACK/PUBREC reason if any
/// came (the connection may also be closed, or nothing sent for QoS 0).
fn publish_refused(client: &mut RawClient, publish: PublishOut) -> Option<u8> {
    let qos = publish.qos;
    client.send(&publish.encode(client.v5));
    if qos == 0 {
        return None;
    }
    match client.read(TIMEOUT) {
        Got::Packet(p) => {
            let kind = if qos == 1 { wire::PUBACK } else { wire::PUBREC };
            if p.kind() == wire::DISCONNECT {
                return None;
            }
            Some(p.ack(kind).expect("acknowledgement").reason)
        }
        Got::Closed | Got::Timeout => None,
    }
}

fn anonymous_publish_not_delivered(v5: bool) {
    let server = Server::standard();
    let mut sub = RawClient::anonymous(server.addr, v5, "sub");
    sub.subscribe("test/anon", 2);
    for qos in 0..=2u8 {
        let mut anon = RawClient::anonymous(server.addr, v5, "anon");
        let reason = publish_refused(
            &mut anon,
            PublishOut::new("test/anon", format!("anon-{qos}").as_bytes()).qos(qos, 5),
        );
        if v5 && qos > 0 {
            assert_eq!(
                reason,
                Some(0x87),
                "v5 anonymous QoS {qos} publish: Not authorized"
            );
        } else if let Some(reason) = reason {
            // 3.1.1 may acknowledge a dropped message; it has no way to say why.
            assert!(qos > 0, "unexpected acknowledgement {reason:#04x}");
        }
    }
    let mut publisher = RawClient::publisher(server.addr, v5);
    // At QoS 2, like the highest forbidden message: only then must it come after them.
    publisher.publish(PublishOut::new("test/anon", b"marker").qos(2, 1));
    let before = sub.publishes_until(b"marker");
    assert!(
        before.is_empty(),
        "anonymous publishes delivered: {before:?}"
    );
}

fn publish_outside_acl_not_delivered(v5: bool) {
    let server = Server::standard();
    let mut sub = RawClient::anonymous(server.addr, v5, "sub");
    sub.subscribe("test/#", 1);
    let opts =
        ConnectOpts::new(v5, &Server::client_id("limited")).auth("limited", LIMITED_PASSWORD);
    let (mut limited, _) = RawClient::connect(server.addr, &opts);
    let reason = limited.publish(PublishOut::new("test/allowed/x", b"inside").qos(1, 1));
    assert_eq!(reason, 0, "publish inside the ACL refused");
    assert_eq!(sub.expect_publish().payload, b"inside");

    let reason = publish_refused(
        &mut limited,
        PublishOut::new("test/other", b"outside").qos(1, 9),
    );
    if v5 {
        assert_eq!(
            reason,
            Some(0x87),
            "v5 publish outside the ACL: Not authorized"
        );
    }
    // The broker remembers the verdict with the last topic: going back and forth between an
    // allowed and a forbidden topic must give each its own.
    let reason = limited.publish(PublishOut::new("test/allowed/x", b"inside again").qos(1, 2));
    assert_eq!(
        reason, 0,
        "publish inside the ACL refused after one outside"
    );
    assert_eq!(sub.expect_publish().payload, b"inside again");
    let reason = publish_refused(
        &mut limited,
        PublishOut::new("test/other", b"outside again").qos(1, 10),
    );
    if v5 {
        assert_eq!(reason, Some(0x87), "v5 second publish outside the ACL");
    }
    let mut publisher = RawClient::publisher(server.addr, v5);
    publisher.publish(PublishOut::new("test/marker", b"marker").qos(1, 1));
    let before = sub.publishes_until(b"marker");
    assert!(
        before.is_empty(),
        "publish outside the ACL delivered: {before:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Bad input: each case ends with the server still serving others
// ---------------------------------------------------------------------------------------------

/// Opens a connection, sends `bytes`, and expects the server to close it; before closing it may
/// send only the packets in `allowed` (a CONNACK refusal, a v5 DISCONNECT...).
fn expect_rejected(server: &Server, connect_first: Option<bool>, bytes: &[u8], allowed: &[u8]) {
    let mut client = match connect_first {
        Some(v5) => RawClient::anonymous(server.addr, v5, "bad"),
        None => RawClient::tcp(server.addr),
    };
    client.send(bytes);
    let before = client.expect_closed();
    for p in &before {
        assert!(
            allowed.contains(&p.kind()),
            "sent {bytes:02x?}; server answered {} {:02x?} before closing",
            p.name(),
            p.to_bytes()
        );
    }
}

fn packet_before_connect_closes(v5: bool) {
    let server = Server::standard();
    expect_rejected(
        &server,
        None,
        &wire::subscribe(v5, 1, &[("test/#", 0)], None),
        &[],
    );
    expect_rejected(&server, None, &wire::pingreq(), &[]);
    expect_rejected(
        &server,
        None,
        &PublishOut::new("test/x", b"x").encode(v5),
        &[],
    );
    assert_serves(server.addr);
}

/// A client may send packets right behind its CONNECT, in the same write, before the CONNACK
/// (MQTT allows it, and clients that pipeline do): they are served at once, not left in the
/// read buffer until the client next sends something.
fn packets_pipelined_behind_connect_are_served(v5: bool) {
    let server = Server::standard();
    let mut bytes = ConnectOpts::new(v5, &Server::client_id("pipelined")).encode();
    bytes.extend(wire::subscribe(v5, 1, &[("test/pipelined", 0)], None));
    bytes.extend(wire::pingreq());
    let mut client = RawClient::tcp(server.addr);
    client.send(&bytes);
    let kinds: Vec<u8> = (0..3).map(|_| client.expect_packet().first >> 4).collect();
    assert_eq!(kinds, [wire::CONNACK, wire::SUBACK, wire::PINGRESP]);
}

fn second_connect_closes(v5: bool) {
    let server = Server::standard();
    let again = ConnectOpts::new(v5, &Server::client_id("again")).encode();
    expect_rejected(&server, Some(v5), &again, &[wire::DISCONNECT]);
    assert_serves(server.addr);
}

fn malformed_packets_close(v5: bool) {
    let server = Server::standard();
    let level = if v5 { 5 } else { 4 };
    // CONNECT with a wrong protocol name.
    let mut body = Vec::new();
    wire::put_bin(&mut body, b"MQTX");
    body.extend([level, 0x02, 0, 60]);
    if v5 {
        body.push(0);
    }
    wire::put_bin(&mut body, b"badname");
    expect_rejected(&server, None, &wire::packet(0x10, &body), &[wire::CONNACK]);
    // CONNECT with the reserved flag bit set.
    let mut connect = ConnectOpts::new(v5, "reserved").encode();
    connect[2 + 6 + 1] |= 0x01;
    expect_rejected(&server, None, &connect, &[wire::CONNACK]);

    // After a good CONNECT:
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "PUBLISH to a wildcard topic",
            PublishOut::new("test/#", b"x").encode(v5),
        ),
        ("PUBLISH with QoS 3", {
            let mut p = PublishOut::new("test/x", b"x").qos(1, 1).encode(v5);
            p[0] |= 0x06;
            p
        }),
        ("SUBSCRIBE with reserved header flags 0", {
            let mut p = wire::subscribe(v5, 1, &[("test/x", 0)], None);
            p[0] = 0x80;
            p
        }),
        (
            "SUBSCRIBE with no filter",
            wire::subscribe(v5, 1, &[], None),
        ),
        (
            "SUBSCRIBE with a bad filter",
            wire::subscribe(v5, 1, &[("test/#/x", 0)], None),
        ),
        ("PUBLISH with invalid UTF-8 topic", {
            let mut body = Vec::new();
            wire::put_bin(&mut body, &[b't', 0xFF, 0xFE]);
            if v5 {
                body.push(0);
            }
            body.extend(b"x");
            wire::packet(0x30, &body)
        }),
        (
            "PUBLISH with a topic length past the end",
            wire::packet(0x30, &[0x00, 0x40, b't']),
        ),
        ("reserved packet type 0", vec![0x00, 0x00]),
        ("reserved packet type 15 (AUTH in v5 before anything)", {
            if v5 {
                // AUTH with an unknown reason code.
                wire::packet(0xF0, &[0x55, 0x00])
            } else {
                vec![0xF0, 0x00]
            }
        }),
    ];
    for (what, bytes) in cases {
        let mut client = RawClient::anonymous(server.addr, v5, "malformed");
        client.send(&bytes);
        let before = client.expect_closed();
        for p in &before {
            // A v5 server may say why (DISCONNECT 0x81/0x82/0x8F...); SUBACK failure codes are
            // also a valid answer to a bad filter in 3.1.1, but the spec says close.
            assert!(
                p.kind() == wire::DISCONNECT && v5,
                "{what}: got {} {:02x?} before close",
                p.name(),
                p.to_bytes()
            );
        }
    }
    assert_serves(server.addr);
}

fn oversized_remaining_length_closes(v5: bool) {
    let server = Server::standard();
    let five_bytes = [0xFF, 0xFF, 0xFF, 0xFF, 0x7F];
    let mut before_connect = vec![0x10];
    before_connect.extend(five_bytes);
    expect_rejected(&server, None, &before_connect, &[]);
    let mut after_connect = vec![0x30];
    after_connect.extend(five_bytes);
    expect_rejected(&server, Some(v5), &after_connect, &[wire::DISCONNECT]);
    // The largest valid remaining length: must be refused (over max_packet_size) without the
    // server waiting for 256 MiB.
    let mut huge = vec![0x30];
    huge.extend([0xFF, 0xFF, 0xFF, 0x7F]);
    expect_rejected(&server, Some(v5), &huge, &[wire::DISCONNECT]);
    assert_serves(server.addr);
}

fn packet_over_max_packet_size_closes(v5: bool) {
    let server =
        Server::start(ServerOptions::standard().with_config("[limits]\nmax_packet_size = 1024"));
    let mut sub = RawClient::anonymous(server.addr, v5, "sub");
    sub.subscribe("test/big", 1);
    let opts = ConnectOpts::new(v5, &Server::client_id("big")).auth("pub", PUB_PASSWORD);
    let (mut big, connack) = RawClient::connect(server.addr, &opts);
    if v5 {
        assert_eq!(
            connack.props.int(prop::MAXIMUM_PACKET_SIZE),
            Some(1024),
            "v5 CONNACK announces the server's Maximum Packet Size"
        );
    }
    big.send(
        &PublishOut::new("test/big", &[b'x'; 2000])
            .qos(1, 1)
            .encode(v5),
    );
    let before = big.expect_closed();
    for p in &before {
        assert!(v5, "3.1.1 got {} before close", p.name());
        assert_eq!(
            p.disconnect_reason().expect("DISCONNECT"),
            0x95,
            "Packet too large"
        );
    }
    // Just under the limit is fine.
    let mut publisher = RawClient::publisher(server.addr, v5);
    publisher.publish(PublishOut::new("test/big", &[b'y'; 900]).qos(1, 1));
    publisher.publish(PublishOut::new("test/big", b"marker").qos(1, 1));
    let before = sub.publishes_until(b"marker");
    let sizes: Vec<usize> = before.iter().map(|p| p.payload.len()).collect();
    assert_eq!(
        sizes,
        vec![900],
        "only the message under the limit is delivered"
    );
}

fn garbage_closes(v5: bool) {
    let server = Server::standard();
    expect_rejected(
        &server,
        None,
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        &[],
    );
    // 0xFF: type 15 with a remaining length that never ends.
    expect_rejected(&server, None, &[0xFF; 64], &[]);
    expect_rejected(&server, Some(v5), &[0xFF; 64], &[wire::DISCONNECT]);
    // Reserved packet type 0 with a complete body.
    expect_rejected(&server, None, &[0x00, 0x03, 1, 2, 3], &[]);
    expect_rejected(
        &server,
        Some(v5),
        &[0x00, 0x03, 1, 2, 3],
        &[wire::DISCONNECT],
    );
    assert_serves(server.addr);
}

fn truncated_packet_then_close(v5: bool) {
    let server = Server::standard();
    let connect = ConnectOpts::new(v5, &Server::client_id("trunc")).encode();
    let mut client = RawClient::tcp(server.addr);
    client.send(&connect[..connect.len() / 2]);
    client.shutdown_write();
    let before = client.expect_closed();
    assert!(before.is_empty(), "answer to half a CONNECT: {before:?}");

    let mut client = RawClient::anonymous(server.addr, v5, "trunc");
    let publish = PublishOut::new("test/trunc", b"payload").encode(v5);
    client.send(&publish[..publish.len() - 3]);
    client.shutdown_write();
    client.expect_closed();
    assert_serves(server.addr);
}

/// Asserts that a connection attempt is refused (closed, or CONNACK with a refusal code).
fn assert_connection_refused(addr: std::net::SocketAddr, v5: bool) {
    let mut client = RawClient::tcp(addr);
    client.v5 = v5;
    client.send(&ConnectOpts::new(v5, &Server::client_id("extra")).encode());
    match client.read(TIMEOUT) {
        Got::Closed => {}
        Got::Timeout => panic!("extra connection neither refused nor accepted"),
        Got::Packet(p) => {
            let connack = p.connack(v5).expect("CONNACK");
            let allowed: &[u8] = if v5 { &[0x97, 0x89, 0x88, 0x9F] } else { &[3] };
            assert!(
                allowed.contains(&connack.code),
                "extra connection got CONNACK {:#04x}, expected one of {allowed:02x?}",
                connack.code
            );
            client.expect_closed();
        }
    }
}

fn connection_limit(v5: bool, key: &str) {
    let server =
        Server::start(ServerOptions::standard().with_config(&format!("[limits]\n{key} = 3")));
    let mut clients: Vec<RawClient> = (0..3)
        .map(|_| RawClient::anonymous(server.addr, v5, "limit"))
        .collect();
    assert_connection_refused(server.addr, v5);
    for c in clients.iter_mut() {
        c.ping();
    }
    // Freeing a slot lets a new client in (once the server noticed the close).
    clients.pop().expect("a client").disconnect();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let opts = ConnectOpts::new(v5, &Server::client_id("retry"));
        let mut client = RawClient::tcp(server.addr);
        client.send(&opts.encode());
        if let Got::Packet(p) = client.read(TIMEOUT) {
            if p.connack(v5).map(|c| c.code) == Ok(0) {
                client.ping();
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no connection accepted after one closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn max_connections_refuses_extra(v5: bool) {
    connection_limit(v5, "max_connections");
}

fn max_connections_per_ip_refuses_extra(v5: bool) {
    connection_limit(v5, "max_connections_per_ip");
}

fn max_subscriptions_per_client(v5: bool) {
    let server = Server::start(
        ServerOptions::standard().with_config("[limits]\nmax_subscriptions_per_client = 2"),
    );
    let mut client = RawClient::anonymous(server.addr, v5, "subs");
    client.subscribe("test/a", 0);
    client.subscribe("test/b", 0);
    // Re-subscribing to an existing filter replaces it: still two.
    client.subscribe("test/a", 1);
    client.send(&wire::subscribe(v5, 50, &[("test/c", 0)], None));
    match client.read(TIMEOUT) {
        Got::Packet(p) if p.kind() == wire::SUBACK => {
            let (_, codes) = p.suback(wire::SUBACK, v5).expect("SUBACK");
            assert!(
                codes.len() == 1 && codes[0] >= 0x80,
                "third subscription granted: {codes:02x?}"
            );
        }
        Got::Packet(p) => assert!(
            v5 && p.kind() == wire::DISCONNECT,
            "answer to a subscription over the limit: {p:?}"
        ),
        Got::Closed => {}
        Got::Timeout => panic!("no answer to a subscription over the limit"),
    }
}

/// With `max_inflight = 2` the server keeps at most two QoS 1 messages unacknowledged.
fn outgoing_inflight_window(v5: bool) {
    let server = Server::start(ServerOptions::standard().with_config("[limits]\nmax_inflight = 2"));
    let mut sub = RawClient::anonymous(server.addr, v5, "slow");
    sub.subscribe("test/window", 1);
    let mut publisher = RawClient::publisher(server.addr, v5);
    for i in 0..5 {
        publisher.publish(PublishOut::new("test/window", format!("w{i}").as_bytes()).qos(1, 1));
    }
    expect_window(&mut sub, 2, 5);
}

/// Reads `total` QoS 1 publishes that arrive at most `window` unacknowledged at a time.
fn expect_window(sub: &mut RawClient, window: usize, total: usize) {
    let mut unacked = Vec::new();
    let mut payloads = BTreeSet::new();
    while payloads.len() < total {
        while unacked.len() < window && payloads.len() + unacked.len() < total {
            let p = sub.expect_publish_raw();
            assert_eq!(p.qos, 1);
            unacked.push(p);
        }
        // The window is full: nothing more may come until we acknowledge.
        sub.expect_silence(QUIET);
        let p = unacked.remove(0);
        sub.ack_publish(&p);
        payloads.insert(p.payload);
    }
    assert_eq!(payloads.len(), total);
}

// ---------------------------------------------------------------------------------------------
// Protocol level and MQTT 5 specifics
// ---------------------------------------------------------------------------------------------

#[test]
fn unsupported_protocol_levels_refused() {
    let server = Server::standard();
    for (name, level) in [(&b"MQIsdp"[..], 3u8), (&b"MQTT"[..], 3), (&b"MQTT"[..], 6)] {
        let mut body = Vec::new();
        wire::put_bin(&mut body, name);
        body.extend([level, 0x02, 0, 60]);
        wire::put_bin(&mut body, b"oldclient");
        let mut client = RawClient::tcp(server.addr);
        client.send(&wire::packet(0x10, &body));
        let before = client.expect_closed();
        for p in &before {
            let connack = p.connack(false).expect("only CONNACK before close");
            assert!(
                [1, 0x84].contains(&connack.code),
                "level {level}: CONNACK {:#04x}, expected 1 (unacceptable protocol version)",
                connack.code
            );
        }
    }
    assert_serves(server.addr);
}

#[test]
fn pingreq_gets_pingresp() {
    let server = Server::standard();
    for v5 in [false, true] {
        let mut client = RawClient::anonymous(server.addr, v5, "ping");
        client.send(&wire::pingreq());
        client.expect_bytes(&[0xD0, 0x00]);
    }
}

#[test]
fn v5_disconnect_with_will_publishes_will() {
    let server = Server::standard();
    let mut sub = RawClient::anonymous(server.addr, true, "sub");
    sub.subscribe("test/will", 1);
    let mut client = will_client_at(server.addr, true, WillOpts::new("test/will", b"asked-for"));
    client.send(&wire::disconnect(true, 0x04));
    client.expect_closed();
    assert_eq!(sub.expect_publish().payload, b"asked-for");
}

#[test]
fn v5_receive_maximum_respected() {
    let server = Server::standard();
    let opts = ConnectOpts::new(true, &Server::client_id("recvmax"))
        .props(PropsOut::new().u16(prop::RECEIVE_MAXIMUM, 2));
    let (mut sub, _) = RawClient::connect(server.addr, &opts);
    sub.subscribe("test/recvmax", 1);
    let mut publisher = RawClient::publisher(server.addr, true);
    for i in 0..5 {
        publisher.publish(PublishOut::new("test/recvmax", format!("r{i}").as_bytes()).qos(1, 1));
    }
    expect_window(&mut sub, 2, 5);
}

#[test]
fn v5_connack_announces_receive_maximum() {
    let server =
        Server::start(ServerOptions::standard().with_config("[limits]\nreceive_maximum = 5"));
    let (_client, connack) = RawClient::connect(
        server.addr,
        &ConnectOpts::new(true, &Server::client_id("rm")),
    );
    assert_eq!(connack.props.int(prop::RECEIVE_MAXIMUM), Some(5));
}

#[test]
fn v5_client_maximum_packet_size_respected() {
    let server = Server::standard();
    let opts = ConnectOpts::new(true, &Server::client_id("small"))
        .props(PropsOut::new().u32(prop::MAXIMUM_PACKET_SIZE, 256));
    let (mut sub, _) = RawClient::connect(server.addr, &opts);
    sub.subscribe("test/size", 1);
    let mut publisher = RawClient::publisher(server.addr, true);
    publisher.publish(PublishOut::new("test/size", &[b'z'; 1000]).qos(1, 1));
    publisher.publish(PublishOut::new("test/size", b"small").qos(1, 1));
    let p = sub.expect_publish();
    assert_eq!(
        p.payload, b"small",
        "a message larger than the client's maximum was sent"
    );
    sub.ping();
}

#[test]
fn v5_topic_alias_from_client() {
    let server = Server::standard();
    let mut sub = RawClient::anonymous(server.addr, true, "sub");
    sub.subscribe("test/alias", 1);
    let opts = ConnectOpts::new(true, &Server::client_id("alias")).auth("pub", PUB_PASSWORD);
    let (mut publisher, connack) = RawClient::connect(server.addr, &opts);
    let max = connack.props.int(prop::TOPIC_ALIAS_MAXIMUM).unwrap_or(0);
    assert!(max >= 1, "CONNACK Topic Alias Maximum is {max}");
    let set = PropsOut::new().u16(prop::TOPIC_ALIAS, 1);
    publisher.publish(
        PublishOut::new("test/alias", b"with-topic")
            .qos(1, 1)
            .props(set.clone()),
    );
    publisher.publish(PublishOut::new("", b"alias-only").qos(1, 1).props(set));
    for payload in [&b"with-topic"[..], b"alias-only"] {
        let p = sub.expect_publish();
        assert_eq!(
            (p.topic.as_str(), p.payload.as_slice()),
            ("test/alias", payload)
        );
        assert_eq!(
            p.props.get(prop::TOPIC_ALIAS),
            None,
            "alias leaked to a subscriber"
        );
    }
    // An alias that was never set is a protocol error.
    publisher.send(
        &PublishOut::new("", b"x")
            .props(PropsOut::new().u16(prop::TOPIC_ALIAS, 2))
            .encode(true),
    );
    let before = publisher.expect_closed();
    for p in before {
        let reason = p.disconnect_reason().expect("DISCONNECT");
        assert!(
            [0x82, 0x94].contains(&reason),
            "DISCONNECT reason {reason:#04x}"
        );
    }
}

/// Topic aliases cannot hold a connection's memory: an anonymous client (its publishes are
/// refused, but an alias is set first) setting aliases to topics of 60 KB is disconnected
/// with 0x97 once they would hold more than 256 KiB, and the broker uses no more aliases
/// towards a subscriber than `limits.topic_alias_maximum`, whatever the subscriber allows.
#[test]
fn v5_topic_aliases_are_bounded_both_ways() {
    let server =
        Server::start(ServerOptions::standard().with_config("[limits]\ntopic_alias_maximum = 5"));
    let mut anonymous = RawClient::anonymous(server.addr, true, "aliases");
    let long = |alias: u16, fill: &str| format!("{alias}/{}", fill.repeat(60_000));
    for alias in 1..=4u16 {
        let set = PropsOut::new().u16(prop::TOPIC_ALIAS, alias);
        assert_eq!(
            anonymous.publish(
                PublishOut::new(&long(alias, "x"), b"x")
                    .qos(1, alias)
                    .props(set)
            ),
            0x87,
            "refused by the access model, alias {alias} kept"
        );
    }
    // Replacing an alias gives its room back: four long topics, 240 KB, stay.
    let set = PropsOut::new().u16(prop::TOPIC_ALIAS, 4);
    assert_eq!(
        anonymous.publish(PublishOut::new(&long(4, "y"), b"x").qos(1, 5).props(set)),
        0x87
    );
    // A fifth would make 300 KB.
    let set = PropsOut::new().u16(prop::TOPIC_ALIAS, 5);
    anonymous.send(&PublishOut::new(&long(5, "x"), b"x").props(set).encode(true));
    let before = anonymous.expect_closed();
    let reasons: Vec<_> = before
        .iter()
        .filter_map(|p| p.disconnect_reason().ok())
        .collect();
    assert_eq!(reasons, [0x97], "DISCONNECT Quota exceeded: {before:?}");

    let opts = ConnectOpts::new(true, &Server::client_id("alias-sub"))
        .props(PropsOut::new().u16(prop::TOPIC_ALIAS_MAXIMUM, 100));
    let (mut sub, _) = RawClient::connect(server.addr, &opts);
    sub.subscribe("test/out/#", 0);
    let mut publisher = RawClient::publisher(server.addr, true);
    for i in 0..7 {
        publisher.publish(PublishOut::new(&format!("test/out/{i}"), b"p").qos(1, 1));
    }
    let aliases: Vec<Option<u32>> = (0..7)
        .map(|_| sub.expect_publish().props.int(prop::TOPIC_ALIAS))
        .collect();
    assert_eq!(
        aliases,
        [Some(1), Some(2), Some(3), Some(4), Some(5), None, None]
    );
}

#[test]
fn v5_server_assigns_client_id() {
    let server = Server::standard();
    let (mut client, connack) = RawClient::connect(server.addr, &ConnectOpts::new(true, ""));
    let assigned = connack
        .props
        .string(prop::ASSIGNED_CLIENT_ID)
        .unwrap_or_default();
    assert!(
        !assigned.is_empty(),
        "no Assigned Client Identifier in {connack:?}"
    );
    client.ping();
    let (_other, connack2) = RawClient::connect(server.addr, &ConnectOpts::new(true, ""));
    let assigned2 = connack2
        .props
        .string(prop::ASSIGNED_CLIENT_ID)
        .unwrap_or_default();
    assert_ne!(assigned, assigned2, "two clients got the same id");
    client.ping(); // not taken over by the second one
}

#[test]
fn v5_subscription_identifier_delivered() {
    let server = Server::standard();
    let mut sub = RawClient::anonymous(server.addr, true, "subid");
    let codes = sub.subscribe_with(&[("test/subid/#", 1)], Some(42));
    assert_eq!(codes, vec![1]);
    let codes = sub.subscribe_with(&[("test/+/x", 1)], Some(7));
    assert_eq!(codes, vec![1]);
    let mut publisher = RawClient::publisher(server.addr, true);
    publisher.publish(PublishOut::new("test/subid/x", b"both").qos(1, 1));
    let mut ids = BTreeSet::new();
    // A server may send one message per matching subscription or one with both identifiers.
    let deadline = Instant::now() + TIMEOUT;
    while ids.len() < 2 && Instant::now() < deadline {
        let p = sub.expect_publish();
        assert_eq!(p.payload, b"both");
        for v in p.props.all(prop::SUBSCRIPTION_ID) {
            if let wire::Value::Varint(id) = v {
                ids.insert(*id);
            }
        }
    }
    assert_eq!(ids, BTreeSet::from([7, 42]));
}

#[test]
fn v5_session_expiry_zero_discards_on_disconnect() {
    let server = Server::standard();
    let id = Server::client_id("expiry0");
    // Clean start 0 but no Session Expiry Interval: the session ends with the connection.
    let (mut client, _) =
        RawClient::connect(server.addr, &ConnectOpts::new(true, &id).clean(false));
    client.subscribe("test/e0", 1);
    client.disconnect();
    let (_client, connack) =
        RawClient::connect(server.addr, &ConnectOpts::new(true, &id).clean(false));
    assert!(!connack.session_present, "session without expiry survived");
}

#[test]
fn v5_session_expires_after_interval() {
    let server = Server::standard();
    let id = Server::client_id("expiry");
    let opts = ConnectOpts::new(true, &id)
        .clean(false)
        .props(PropsOut::new().u32(prop::SESSION_EXPIRY, 1));
    let (mut client, _) = RawClient::connect(server.addr, &opts);
    client.subscribe("test/exp", 1);
    client.disconnect();
    // The interval is 1 s; give the server plenty of slack before looking.
    std::thread::sleep(Duration::from_secs(3));
    let (_client, connack) = RawClient::connect(server.addr, &opts);
    assert!(
        !connack.session_present,
        "session outlived its 1 s expiry by 2 s"
    );
}

#[test]
fn v5_session_within_interval_is_present() {
    let server = Server::standard();
    let id = Server::client_id("expiry-ok");
    let opts = ConnectOpts::new(true, &id)
        .clean(false)
        .props(PropsOut::new().u32(prop::SESSION_EXPIRY, 60));
    let (mut client, _) = RawClient::connect(server.addr, &opts);
    client.subscribe("test/exp", 1);
    client.disconnect();
    let (_client, connack) = RawClient::connect(server.addr, &opts);
    assert!(
        connack.session_present,
        "session with 60 s expiry gone at once"
    );
}

#[test]
fn connect_timeout_closes_idle_connections() {
    let server =
        Server::start(ServerOptions::standard().with_config("[limits]\nconnect_timeout_secs = 1"));
    // Nothing at all...
    let mut idle = RawClient::tcp(server.addr);
    // ... and half a CONNECT, left hanging.
    let mut partial = RawClient::tcp(server.addr);
    let connect = ConnectOpts::new(true, "partial").encode();
    partial.send(&connect[..5]);
    assert!(idle.expect_closed().is_empty());
    assert!(partial.expect_closed().is_empty());
    assert_serves(server.addr);
}

#[test]
fn v5_server_keep_alive_caps_client_keep_alive() {
    let server =
        Server::start(ServerOptions::standard().with_config("[limits]\nmax_keep_alive = 5"));
    let opts = ConnectOpts::new(true, &Server::client_id("ka")).keep_alive(600);
    let (_client, connack) = RawClient::connect(server.addr, &opts);
    assert_eq!(
        connack.props.int(0x13),
        Some(5),
        "CONNACK Server Keep Alive"
    );
}
