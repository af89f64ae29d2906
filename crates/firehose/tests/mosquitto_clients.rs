//! The broker as seen by Mosquitto's command-line clients (`mosquitto_sub`, `mosquitto_pub`),
//! with `-V mqttv311` and `-V mqttv5`: what operators and scripts use.
//!
//! `scripts/test` installs `mosquitto-clients`; without them these tests fail with a message
//! that says so.

#[macro_use]
mod common;

use std::collections::BTreeSet;

use common::{
    have_mosquitto_clients, mosquitto_pub, mosquitto_pub_ok, MosquittoSub, Server, SubMessage,
    LIMITED_PASSWORD, PUB_PASSWORD,
};

both_versions! {
    publish_subscribe_all_qos;
    qos_downgraded_to_subscription;
    retained_set_replace_clear;
    wildcard_subscriptions;
    authenticated_subscriber;
    bad_credentials_refused;
    anonymous_publish_not_delivered;
    publish_outside_acl_not_delivered;
    sys_topics;
    hash_does_not_match_sys;
}

fn server() -> Server {
    assert!(
        have_mosquitto_clients(),
        "mosquitto_sub not found: install mosquitto-clients (scripts/test does)"
    );
    Server::standard()
}

/// `mosquitto_pub` arguments for the `pub` user.
fn as_pub<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["-u", "pub", "-P", PUB_PASSWORD];
    all.extend(args);
    all
}

fn payloads(messages: &[SubMessage]) -> Vec<&str> {
    messages.iter().map(|m| m.payload.as_str()).collect()
}

fn publish_subscribe_all_qos(v5: bool) {
    let server = server();
    let mut sub = MosquittoSub::start(server.addr, v5, &["-t", "test/qos", "-q", "2"]);
    for qos in ["0", "1", "2"] {
        let payload = format!("message at qos {qos}");
        mosquitto_pub_ok(
            server.addr,
            v5,
            &as_pub(&["-t", "test/qos", "-q", qos, "-m", &payload]),
        );
        let got = sub.wait_for_payload(&payload);
        let last = got.last().expect("a message");
        assert_eq!(last.topic, "test/qos");
        assert_eq!(last.qos.to_string(), qos, "delivered QoS");
        assert!(!last.retain);
    }
    assert_eq!(
        payloads(&sub.messages),
        vec!["message at qos 0", "message at qos 1", "message at qos 2"]
    );
}

fn qos_downgraded_to_subscription(v5: bool) {
    let server = server();
    let mut sub0 = MosquittoSub::start(server.addr, v5, &["-t", "test/down", "-q", "0"]);
    let mut sub1 = MosquittoSub::start(server.addr, v5, &["-t", "test/down", "-q", "1"]);
    mosquitto_pub_ok(
        server.addr,
        v5,
        &as_pub(&["-t", "test/down", "-q", "2", "-m", "down"]),
    );
    assert_eq!(sub0.wait_for_payload("down")[0].qos, 0);
    assert_eq!(sub1.wait_for_payload("down")[0].qos, 1);
}

fn retained_set_replace_clear(v5: bool) {
    let server = server();
    let publish = |args: &[&str]| mosquitto_pub_ok(server.addr, v5, &as_pub(args));
    publish(&["-t", "test/ret", "-r", "-q", "1", "-m", "first"]);
    let mut sub = MosquittoSub::start(server.addr, v5, &["-t", "test/ret", "-q", "1"]);
    let got = sub.wait_for_payload("first");
    assert_eq!(got.len(), 1);
    assert!(
        got[0].retain,
        "retained message delivered with the retain flag"
    );

    publish(&["-t", "test/ret", "-r", "-q", "1", "-m", "second"]);
    let got = sub.wait_for_payload("second");
    assert!(!got[1].retain, "live delivery clears the retain flag");
    let mut late = MosquittoSub::start(server.addr, v5, &["-t", "test/ret", "-t", "test/live"]);
    publish(&["-t", "test/live", "-m", "marker"]);
    let got = late.wait_for_payload("marker");
    assert_eq!(payloads(&got), vec!["second", "marker"]);
    assert!(got[0].retain);

    // -n: a zero-length retained message clears the topic.
    publish(&["-t", "test/ret", "-r", "-q", "1", "-n"]);
    let mut cleared = MosquittoSub::start(server.addr, v5, &["-t", "test/ret", "-t", "test/live"]);
    publish(&["-t", "test/live", "-m", "marker"]);
    let got = cleared.wait_for_payload("marker");
    assert_eq!(
        payloads(&got),
        vec!["marker"],
        "cleared retained message delivered"
    );
}

fn wildcard_subscriptions(v5: bool) {
    let server = server();
    let mut plus = MosquittoSub::start(server.addr, v5, &["-t", "w/+/c", "-t", "marker"]);
    let mut hash = MosquittoSub::start(server.addr, v5, &["-t", "w/#", "-t", "marker"]);
    for topic in ["w/b/c", "w/x/y/c", "w", "v/b/c"] {
        mosquitto_pub_ok(server.addr, v5, &as_pub(&["-t", topic, "-m", topic]));
    }
    mosquitto_pub_ok(server.addr, v5, &as_pub(&["-t", "marker", "-m", "marker"]));
    let topics = |got: Vec<SubMessage>| -> BTreeSet<String> {
        got.into_iter()
            .map(|m| m.topic)
            .filter(|t| t != "marker")
            .collect()
    };
    assert_eq!(
        topics(plus.wait_for_payload("marker")),
        BTreeSet::from(["w/b/c".to_string()])
    );
    assert_eq!(
        topics(hash.wait_for_payload("marker")),
        ["w/b/c", "w/x/y/c", "w"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}

fn authenticated_subscriber(v5: bool) {
    let server = server();
    let mut sub = MosquittoSub::start(
        server.addr,
        v5,
        &["-u", "limited", "-P", LIMITED_PASSWORD, "-t", "test/#"],
    );
    mosquitto_pub_ok(
        server.addr,
        v5,
        &as_pub(&["-t", "test/x", "-m", "to-a-user"]),
    );
    assert_eq!(sub.wait_for_payload("to-a-user")[0].topic, "test/x");
}

fn bad_credentials_refused(v5: bool) {
    let server = server();
    let mut sub = MosquittoSub::start(server.addr, v5, &["-t", "test/auth"]);
    for (user, password) in [("pub", "wrong"), ("nobody", PUB_PASSWORD)] {
        let out = mosquitto_pub(
            server.addr,
            v5,
            &[
                "-u",
                user,
                "-P",
                password,
                "-t",
                "test/auth",
                "-m",
                "refused",
            ],
        );
        assert!(
            !out.status.success(),
            "mosquitto_pub as {user}/{password} succeeded"
        );
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(
            stderr.contains("not authori") || stderr.contains("bad user"),
            "mosquitto_pub as {user}: {stderr}"
        );
    }
    mosquitto_pub_ok(
        server.addr,
        v5,
        &as_pub(&["-t", "test/auth", "-m", "marker"]),
    );
    assert_eq!(payloads(&sub.wait_for_payload("marker")), vec!["marker"]);
}

fn anonymous_publish_not_delivered(v5: bool) {
    let server = server();
    let mut sub = MosquittoSub::start(server.addr, v5, &["-t", "test/anon", "-q", "1"]);
    for qos in ["0", "1", "2"] {
        // 3.1.1 may close the connection (non-zero exit); v5 reports "Not authorized" per
        // message. Either way the message must not arrive.
        let _ = mosquitto_pub(
            server.addr,
            v5,
            &["-t", "test/anon", "-q", qos, "-m", "anonymous"],
        );
    }
    mosquitto_pub_ok(
        server.addr,
        v5,
        &as_pub(&["-t", "test/anon", "-m", "marker"]),
    );
    assert_eq!(payloads(&sub.wait_for_payload("marker")), vec!["marker"]);
}

fn publish_outside_acl_not_delivered(v5: bool) {
    let server = server();
    let mut sub = MosquittoSub::start(server.addr, v5, &["-t", "test/#", "-q", "1"]);
    let limited = ["-u", "limited", "-P", LIMITED_PASSWORD, "-q", "1"];
    let mut args = limited.to_vec();
    args.extend(["-t", "test/other", "-m", "outside"]);
    let _ = mosquitto_pub(server.addr, v5, &args);
    let mut args = limited.to_vec();
    args.extend(["-t", "test/allowed/x", "-m", "inside"]);
    mosquitto_pub_ok(server.addr, v5, &args);
    mosquitto_pub_ok(
        server.addr,
        v5,
        &as_pub(&["-t", "test/marker", "-m", "marker"]),
    );
    let got = sub.wait_for_payload("marker");
    assert_eq!(payloads(&got), vec!["inside", "marker"]);
}

fn sys_topics(v5: bool) {
    let server = server();
    let wanted = [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/bytes/received",
        "$SYS/broker/bytes/sent",
    ];
    let mut sub = MosquittoSub::start(server.addr, v5, &["-t", "$SYS/broker/#"]);
    for topic in wanted {
        sub.wait_for_line(
            |l| l.contains(&format!(" {topic} ")),
            &format!("a message on {topic}"),
        );
    }
    let uptime = sub
        .messages
        .iter()
        .find(|m| m.topic == "$SYS/broker/uptime")
        .expect("uptime");
    let seconds = uptime.payload.split_whitespace().next().unwrap_or_default();
    assert!(
        seconds.parse::<u64>().is_ok(),
        "uptime {:?} does not start with a number",
        uptime.payload
    );
}

fn hash_does_not_match_sys(v5: bool) {
    let server = server();
    let mut all = MosquittoSub::start(server.addr, v5, &["-t", "#"]);
    let mut sys = MosquittoSub::start(server.addr, v5, &["-t", "$SYS/broker/uptime"]);
    // Two $SYS rounds after `#` subscribed.
    sys.wait_for_count(2);
    mosquitto_pub_ok(server.addr, v5, &as_pub(&["-t", "marker", "-m", "marker"]));
    let got = all.wait_for_payload("marker");
    let dollar: Vec<_> = got.iter().filter(|m| m.topic.starts_with('$')).collect();
    assert!(dollar.is_empty(), "# matched $-topics: {dollar:?}");
}

#[test]
fn v5_properties_pass_through() {
    let server = server();
    let mut sub =
        MosquittoSub::start_with_format(server.addr, true, "[%P][%C][%R]", &["-t", "test/props"]);
    mosquitto_pub_ok(
        server.addr,
        true,
        &as_pub(&[
            "-t",
            "test/props",
            "-m",
            "with-properties",
            "-D",
            "publish",
            "user-property",
            "origin",
            "ci",
            "-D",
            "publish",
            "content-type",
            "application/json",
            "-D",
            "publish",
            "response-topic",
            "test/reply",
        ]),
    );
    let got = sub.wait_for_payload("with-properties");
    assert_eq!(
        got[0].payload,
        "[origin:ci][application/json][test/reply] with-properties"
    );
}

#[test]
fn v5_anonymous_publish_reports_not_authorized() {
    let server = server();
    let out = mosquitto_pub(
        server.addr,
        true,
        &["-t", "test/anon", "-q", "1", "-m", "x"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        stderr.contains("not authorized"),
        "mosquitto_pub should report the PUBACK reason: {stderr}"
    );
}
