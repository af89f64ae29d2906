//! The Gerrit bridge against a real OpenSSH `sshd` (Debian's openssh-server) whose
//! `ForceCommand` plays recorded `gerrit stream-events` output: topics, byte-exact payloads,
//! order, malformed lines, a connection cut mid-stream and the reconnection, status events,
//! `/healthz` and `/metrics`, two bridge instances, and host keys that must be refused.

mod bridge_support;
mod common;

use std::time::{Duration, Instant};

use serde_json::Value;

use bridge_support::{
    assert_log_intact, event_lines, fingerprint, fixture, get, keygen, node_with, play_key, schema,
    user_toml, wait_until, Sshd,
};
use common::durable::http_json;
use common::wire::PublishIn;
use common::{RawClient, TIMEOUT};

const STREAM: &str = "gerrit stream-events";
const MIRROR_STREAM: &str = "gerrit stream-events -s change-abandoned";

/// A subscriber to the bridges' topics and status events.
fn subscriber(node: &common::durable::Node) -> RawClient {
    let mut sub = RawClient::anonymous(node.mqtt, true, "bridge-sub");
    sub.subscribe("gerrit/#", 1);
    sub.subscribe("mirror/#", 1);
    sub.subscribe("firehose/bridges/+/status", 1);
    sub
}

/// Reads publishes until `done` says the collection is complete.
fn collect(sub: &mut RawClient, done: impl Fn(&[PublishIn]) -> bool) -> Vec<PublishIn> {
    let deadline = Instant::now() + TIMEOUT * 3;
    let mut got = Vec::new();
    while !done(&got) {
        assert!(
            Instant::now() < deadline,
            "publishes so far: {:#?}",
            got.iter()
                .map(|p: &PublishIn| (
                    p.topic.clone(),
                    String::from_utf8_lossy(&p.payload).into_owned()
                ))
                .collect::<Vec<_>>()
        );
        got.push(sub.expect_publish());
    }
    got
}

/// Starts a server with `config`, lets `sshd` play, and collects what is published until the
/// change-abandoned event that ends the second stream of the reconnection fixtures.
fn until_abandoned(
    sshd: &Sshd,
    config: &str,
) -> (
    common::durable::DataDir,
    common::durable::Node,
    Vec<PublishIn>,
) {
    let (dir, node) = node_with(&user_toml("pub", "pw", None, &["#"]), config);
    let mut sub = subscriber(&node);
    sshd.go();
    let got = collect(&mut sub, |got| {
        got.iter()
            .any(|p| p.topic == "gerrit/infra/zuul-jobs/change-abandoned")
    });
    (dir, node, got)
}

/// The payloads published under `gerrit/`, in order, as text.
fn gerrit_payloads(got: &[PublishIn]) -> Vec<String> {
    texts(
        got.iter()
            .filter(|p| p.topic.starts_with("gerrit/"))
            .map(|p| &p.payload),
    )
}

/// Lines as text, for readable comparisons.
fn texts<'a>(lines: impl IntoIterator<Item = &'a Vec<u8>>) -> Vec<String> {
    lines
        .into_iter()
        .map(|line| String::from_utf8_lossy(line).into_owned())
        .collect()
}

fn status_of(p: &PublishIn) -> Value {
    serde_json::from_slice(&p.payload).expect("status payload is JSON")
}

#[test]
fn streams_events_survives_a_dropped_connection_and_reports_it() {
    let first = fixture("gerrit/stream-1.txt");
    let second = fixture("gerrit/stream-2.txt");
    let sshd = Sshd::start(&[
        (&play_key(STREAM, Some(1)), &first),
        (&play_key(STREAM, None), &second),
        (&play_key(MIRROR_STREAM, None), &second),
    ]);
    let known_hosts = sshd.dir.path().join("known_hosts");
    std::fs::write(&known_hosts, sshd.known_hosts_line()).expect("known_hosts");
    let config = sshd.bridge_toml(
        "review",
        &format!("known_hosts = \"{}\"", known_hosts.display()),
    ) + &sshd.bridge_toml(
        "mirror",
        &format!(
            "host_key_fingerprint = \"{}\"\ntopic_prefix = \"mirror/gerrit\"\ncommand = \"{MIRROR_STREAM}\"",
            fingerprint(&sshd.host_pub)
        ),
    );
    let (_dir, node) = node_with(&user_toml("pub", "pw", None, &["#"]), &config);
    let mut sub = subscriber(&node);
    sshd.go();

    let expected_gerrit: Vec<Vec<u8>> = event_lines(&first)
        .into_iter()
        .chain(event_lines(&second))
        .collect();
    assert_eq!(expected_gerrit.len(), 6, "fixture events");
    let got = collect(&mut sub, |got| {
        let gerrit = got
            .iter()
            .filter(|p| p.topic.starts_with("gerrit/"))
            .count();
        let mirror = got
            .iter()
            .filter(|p| p.topic.starts_with("mirror/"))
            .count();
        let reconnected = got.iter().any(|p| {
            p.topic == "firehose/bridges/review/status"
                && status_of(p)["state"] == "connected"
                && status_of(p)["reconnects"] == 1
        });
        gerrit >= 6 && mirror >= 3 && reconnected
    });

    // Topics and payloads, byte for byte and in Gerrit's order; nothing malformed published.
    let gerrit: Vec<&PublishIn> = got
        .iter()
        .filter(|p| p.topic.starts_with("gerrit/"))
        .collect();
    let topics: Vec<&str> = gerrit.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "gerrit/openstack/nova/patchset-created",
            "gerrit/openstack/nova/comment-added",
            "gerrit/openstack/nova/change-merged",
            "gerrit/openstack/nova/ref-updated",
            "gerrit/openstack/nova/ref-replicated",
            "gerrit/infra/zuul-jobs/change-abandoned",
        ]
    );
    for (publish, line) in gerrit.iter().zip(&expected_gerrit) {
        assert_eq!(&publish.payload, line, "payload of {}", publish.topic);
        assert_eq!(publish.qos, 1);
    }
    // The second instance: its own prefix, its own command, the pinned fingerprint.
    let mirror: Vec<&str> = got
        .iter()
        .filter(|p| p.topic.starts_with("mirror/"))
        .map(|p| p.topic.as_str())
        .collect();
    assert_eq!(
        mirror,
        [
            "mirror/gerrit/openstack/nova/ref-updated",
            "mirror/gerrit/openstack/nova/ref-replicated",
            "mirror/gerrit/infra/zuul-jobs/change-abandoned",
        ]
    );

    // Status events tell the story: connected, lost (with the reason), connected again with
    // the gap announced (no events-log plugin configured).
    let statuses: Vec<Value> = got
        .iter()
        .filter(|p| p.topic == "firehose/bridges/review/status")
        .map(status_of)
        .collect();
    let states: Vec<&str> = statuses
        .iter()
        .filter_map(|s| s["state"].as_str())
        .collect();
    let lost = states
        .iter()
        .position(|s| *s == "disconnected")
        .unwrap_or_else(|| panic!("no disconnected status in {statuses:#?}"));
    assert!(states[..lost].contains(&"connected"), "{states:?}");
    assert_eq!(states.last(), Some(&"connected"), "{states:?}");
    let last = statuses.last().expect("a status");
    assert_eq!(last["bridge"], "review");
    assert_eq!(last["kind"], "gerrit");
    assert_eq!(last["connected"], true);
    assert_eq!(last["reconnects"], 1);
    assert!(
        last["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("connection was lost") || e.contains("ended")),
        "{last:#}"
    );
    let gap = &last["gap"];
    assert_eq!(gap["filled"], false, "{last:#}");
    assert!(
        gap["from"].as_str().is_some() && gap["to"].as_str().is_some(),
        "{last:#}"
    );
    assert!(gap["from"].as_str() <= gap["to"].as_str(), "{gap}");

    // The commands the server was asked to run.
    let commands = sshd.commands();
    assert_eq!(
        commands.iter().filter(|c| *c == STREAM).count(),
        2,
        "{commands:?}"
    );
    assert!(commands.iter().any(|c| c == MIRROR_STREAM), "{commands:?}");

    // Counters in /healthz (JSON and text) and /metrics.
    let health = wait_until("review's counters in /healthz", || {
        let health = http_json(node.http, "/healthz?format=json");
        let review = health["bridges"]
            .as_array()?
            .iter()
            .find(|b| b["bridge"] == "review")?
            .clone();
        (review["events_in"] == 6 && review["rejected"] == 3).then_some(health)
    });
    assert_eq!(health["status"], "ok");
    let text = get(node.http, "/healthz").text();
    assert!(text.starts_with("ok\n"), "{text}");
    assert!(
        text.contains("bridge review (gerrit): connected, 6 events in, 1 reconnects"),
        "{text}"
    );
    assert!(text.contains("bridge mirror (gerrit): connected"), "{text}");
    let metrics = get(node.http, "/metrics").text();
    for line in [
        "firehose_bridge_connected{bridge=\"review\",kind=\"gerrit\"} 1",
        "firehose_bridge_events_total{bridge=\"review\",kind=\"gerrit\"} 6",
        "firehose_bridge_reconnects_total{bridge=\"review\",kind=\"gerrit\"} 1",
        "firehose_bridge_rejected_total{bridge=\"review\",kind=\"gerrit\"} 3",
        "firehose_bridge_events_total{bridge=\"mirror\",kind=\"gerrit\"} 3",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("firehose_bridge_last_event_timestamp_seconds{bridge=\"review\""),
        "{metrics}"
    );

    // The events are in the log under the bridge's name.
    let history = http_json(node.http, "/api/v1/events?topic=gerrit%2F%23");
    let events = history["events"].as_array().expect("events");
    assert_eq!(events.len(), 6, "{history:#}");
    assert!(
        events.iter().all(|e| e["publisher"] == "bridge:review"),
        "{history:#}"
    );

    // A new subscriber gets the current status at once (retained).
    let mut late = RawClient::anonymous(node.mqtt, true, "late");
    late.subscribe("firehose/bridges/review/status", 1);
    let retained = late.expect_publish();
    assert!(retained.retain, "status events are retained");
    assert_eq!(status_of(&retained)["state"], "connected");
}

#[test]
fn unknown_host_keys_are_refused() {
    let second = fixture("gerrit/stream-2.txt");
    let sshd = Sshd::start(&[(&play_key(STREAM, None), &second)]);
    sshd.go();
    // A known_hosts file and a pin that name another key than the server's.
    let other = sshd.dir.path().join("other_host_key");
    keygen(&other);
    let other_pub = sshd.dir.path().join("other_host_key.pub");
    let key = std::fs::read_to_string(&other_pub).expect("other key");
    let mut parts = key.split_whitespace();
    let line = format!(
        "[127.0.0.1]:{} {} {}\n",
        sshd.port,
        parts.next().expect("type"),
        parts.next().expect("key")
    );
    let known_hosts = sshd.dir.path().join("known_hosts");
    std::fs::write(&known_hosts, line).expect("known_hosts");
    let empty = sshd.dir.path().join("empty_known_hosts");
    std::fs::write(&empty, "# nothing here\n").expect("known_hosts");
    let config = sshd.bridge_toml(
        "changed-key",
        &format!("known_hosts = \"{}\"", known_hosts.display()),
    ) + &sshd.bridge_toml(
        "unknown-key",
        &format!("known_hosts = \"{}\"", empty.display()),
    ) + &sshd.bridge_toml(
        "wrong-pin",
        &format!("host_key_fingerprint = \"{}\"", fingerprint(&other_pub)),
    );
    let (_dir, node) = node_with(&user_toml("pub", "pw", None, &["#"]), &config);
    let mut sub = subscriber(&node);

    let expect = [
        ("changed-key", "is not among the 1 key(s)"),
        ("unknown-key", "is unknown"),
        ("wrong-pin", "does not match the pinned"),
    ];
    let got = collect(&mut sub, |got| {
        expect.iter().all(|(name, _)| {
            got.iter().any(|p| {
                p.topic == format!("firehose/bridges/{name}/status")
                    && status_of(p)["state"] == "disconnected"
            })
        })
    });
    for (name, why) in expect {
        let status = got
            .iter()
            .filter(|p| p.topic == format!("firehose/bridges/{name}/status"))
            .map(status_of)
            .find(|s| s["state"] == "disconnected")
            .expect("a disconnected status");
        let error = status["last_error"].as_str().unwrap_or_default();
        assert!(
            error.contains(why) && error.contains("refused"),
            "{name}: {status:#}"
        );
        assert_eq!(status["connected"], false);
        assert!(status["errors"].as_u64() >= Some(1), "{status:#}");
    }
    assert!(
        got.iter().all(|p| !p.topic.starts_with("gerrit/")),
        "nothing may be published from an untrusted server"
    );
    // It keeps refusing, with backoff, and never logs in.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(sshd.commands().is_empty(), "{:?}", sshd.commands());
    let history = http_json(node.http, "/api/v1/events?topic=gerrit%2F%23");
    assert_eq!(
        history["events"].as_array().map(Vec::len),
        Some(0),
        "{history:#}"
    );
    let health = get(node.http, "/healthz").text();
    assert!(health.contains("bridge wrong-pin (gerrit): "), "{health}");
    assert!(!health.contains("(gerrit): connected"), "{health}");
}

#[test]
fn the_events_log_plugin_fills_the_gap_without_duplicates() {
    let first = fixture("gerrit/stream-1.txt");
    let second = fixture("gerrit/stream-2.txt");
    let log_answer = fixture("gerrit/events-log.txt");
    let events_log = bridge_support::FakeEventsLog::start(log_answer);
    let sshd = Sshd::start(&[
        (&play_key(STREAM, Some(1)), &first),
        (&play_key(STREAM, None), &second),
    ]);
    let password_file = sshd.dir.path().join("http-password");
    std::fs::write(&password_file, "http secret\n").expect("password file");
    let config = sshd.bridge_toml(
        "review",
        &format!(
            "host_key_fingerprint = \"{}\"\nevents_log_url = \"{}\"\n\
             events_log_user = \"firehose\"\nevents_log_password_file = \"{}\"",
            fingerprint(&sshd.host_pub),
            events_log.url,
            password_file.display()
        ),
    );
    let (_dir, node, got) = until_abandoned(&sshd, &config);
    let gerrit: Vec<&PublishIn> = got
        .iter()
        .filter(|p| p.topic.starts_with("gerrit/"))
        .collect();
    let topics: Vec<&str> = gerrit.iter().map(|p| p.topic.as_str()).collect();
    // The change-merged and ref-updated that the plugin and the streams both have are
    // published once; the reviewer-added that only the plugin saw fills the gap, in order.
    assert_eq!(
        topics,
        [
            "gerrit/openstack/nova/patchset-created",
            "gerrit/openstack/nova/comment-added",
            "gerrit/openstack/nova/change-merged",
            "gerrit/openstack/neutron/reviewer-added",
            "gerrit/openstack/nova/ref-updated",
            "gerrit/openstack/nova/ref-replicated",
            "gerrit/infra/zuul-jobs/change-abandoned",
        ]
    );
    let from_log = bridge_support::event_lines(&fixture("gerrit/events-log.txt"));
    let reviewer_added = from_log
        .iter()
        .find(|l| l.windows(14).any(|w| w == b"reviewer-added"))
        .expect("fixture line");
    assert_eq!(&gerrit[3].payload, reviewer_added, "the plugin's bytes");

    let requests = events_log.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let (line, authorization) = &requests[0];
    assert_eq!(
        line, "GET /plugins/events-log/events/?t1=2023-11-14%2022%3A33%3A19 HTTP/1.1",
        "t1 is the last eventCreatedOn seen, less a second, in UTC"
    );
    use base64::Engine;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("firehose:http secret")
    );
    assert_eq!(authorization.as_deref(), Some(expected.as_str()));

    let status = wait_until("the filled gap in the status", || {
        let health = http_json(node.http, "/healthz?format=json");
        let review = health["bridges"].as_array()?.first()?.clone();
        (review["gap"]["filled"] == true && review["events_in"] == 7).then_some(review)
    });
    assert_eq!(status["gap"]["events_filled"], 2, "{status:#}");
}

/// Issue 27: Gerrit can send the same line twice (replication events carry no revision, so two
/// quick updates of one branch in one second give identical lines). Both are events: both
/// are published, and the counters say so.
/// germqtt's edge cases: an event without a project (`project-created` names it
/// `projectName`, `dropped-output` has none) goes to `gerrit//<type>`, as germqtt's
/// `get_topic` joined its empty project; and the bridge's QoS is its `qos` setting (germqtt's
/// `[mqtt] qos`), 1 by default: a QoS 1 subscriber gets a `qos = 0` bridge's events at QoS 0.
#[test]
fn events_without_a_project_and_the_qos_as_germqtt_had_them() {
    let stream = fixture("gerrit/stream-no-project.txt");
    let sshd = Sshd::start(&[(&play_key(STREAM, None), &stream)]);
    let pin = format!("host_key_fingerprint = \"{}\"", fingerprint(&sshd.host_pub));
    let config = sshd.bridge_toml("review", &pin)
        + &sshd.bridge_toml(
            "germqtt",
            &format!("{pin}\ntopic_prefix = \"mirror/gerrit\"\nqos = 0"),
        );
    let (_dir, node) = node_with(&user_toml("pub", "pw", None, &["#"]), &config);
    let mut sub = subscriber(&node);
    sshd.go();

    let last = |prefix: &str| format!("{prefix}/openstack/new-service/ref-updated");
    let got = collect(&mut sub, |got| {
        got.iter().any(|p| p.topic == last("gerrit"))
            && got.iter().any(|p| p.topic == last("mirror/gerrit"))
    });
    let events: Vec<(&str, u8)> = got
        .iter()
        .filter(|p| !p.topic.starts_with("firehose/"))
        .map(|p| (p.topic.as_str(), p.qos))
        .collect();
    for (prefix, qos) in [("gerrit", 1), ("mirror/gerrit", 0)] {
        let mine: Vec<(&str, u8)> = events
            .iter()
            .copied()
            .filter(|(t, _)| t.starts_with(&format!("{prefix}/")))
            .collect();
        assert_eq!(
            mine,
            [
                (format!("{prefix}//project-created").as_str(), qos),
                (format!("{prefix}//dropped-output").as_str(), qos),
                (last(prefix).as_str(), qos),
            ],
            "{events:?}"
        );
    }
    assert_eq!(
        gerrit_payloads(&got),
        texts(event_lines(&stream).iter()),
        "byte for byte"
    );
    let gerrit = schema::served(node.http, "gerrit");
    for p in &got {
        if !p.topic.starts_with("firehose/") {
            let value: Value = serde_json::from_slice(&p.payload).expect("JSON");
            schema::assert_valid(&gerrit, &value, &p.topic);
        }
    }
}

#[test]
fn identical_live_events_are_all_published() {
    let stream = fixture("gerrit/stream-identical.txt");
    let sshd = Sshd::start(&[(&play_key(STREAM, None), &stream)]);
    let config = sshd.bridge_toml(
        "review",
        &format!("host_key_fingerprint = \"{}\"", fingerprint(&sshd.host_pub)),
    );
    let (_dir, node) = node_with(&user_toml("pub", "pw", None, &["#"]), &config);
    let mut sub = subscriber(&node);
    sshd.go();

    let expected = event_lines(&stream);
    assert_eq!(expected.len(), 3, "fixture events");
    assert_eq!(
        expected[0], expected[1],
        "the fixture's first two lines are identical"
    );
    let got = collect(&mut sub, |got| {
        got.iter()
            .any(|p| p.topic == "gerrit/openstack/nova/ref-replicated")
    });
    assert_eq!(
        gerrit_payloads(&got),
        texts(expected.iter()),
        "every line, in order"
    );
    let review = wait_until("review's counters in /healthz", || {
        let health = http_json(node.http, "/healthz?format=json");
        let review = health["bridges"].as_array()?.first()?.clone();
        (review["events_in"] == 3).then_some(review)
    });
    assert_eq!(review["rejected"], 0, "{review:#}");
    assert_eq!(review["duplicates"], 0, "{review:#}");
}

/// Issue 27: after a reconnection, only the overlap between the events-log plugin's answer
/// and the streams is dropped, by position: the refill's events that the first stream had
/// already published, and the new stream's first lines that the refill has just published.
/// Identical events inside the refill, and identical lines of the new stream after the
/// overlap, are all published.
#[test]
fn the_refill_overlap_is_dropped_by_position_not_by_content() {
    let first = fixture("gerrit/refill-1.txt");
    let second = fixture("gerrit/refill-2.txt");
    let answer = fixture("gerrit/refill-events-log.txt");
    let events_log = bridge_support::FakeEventsLog::start(answer.clone());
    let sshd = Sshd::start(&[
        (&play_key(STREAM, Some(1)), &first),
        (&play_key(STREAM, None), &second),
    ]);
    let config = sshd.bridge_toml(
        "review",
        &format!(
            "host_key_fingerprint = \"{}\"\nevents_log_url = \"{}\"",
            fingerprint(&sshd.host_pub),
            events_log.url
        ),
    );
    let (_dir, node, got) = until_abandoned(&sshd, &config);
    let first = event_lines(&first);
    let refill = event_lines(&answer);
    let second = event_lines(&second);
    // The first stream's ref-updated; the refill's two identical replication events (its
    // ref-updated was published already); the new stream without its first line (the
    // refill's last event), with its two identical lines.
    let expected = [
        &first[0], &refill[1], &refill[2], &second[1], &second[2], &second[3],
    ];
    assert_eq!(
        gerrit_payloads(&got),
        texts(expected),
        "published, in order"
    );
    let requests = events_log.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let review = wait_until("the filled gap in /healthz", || {
        let health = http_json(node.http, "/healthz?format=json");
        let review = health["bridges"].as_array()?.first()?.clone();
        (review["gap"]["filled"] == true && review["events_in"] == 6).then_some(review)
    });
    assert_eq!(review["gap"]["events_filled"], 2, "{review:#}");
    assert_eq!(review["duplicates"], 2, "{review:#}");
}

/// Issue 21 point 6: what Gerrit sends is logged escaped. A line that is not an event and the
/// server's explanation on stderr both carry a newline, a carriage return and terminal escape
/// sequences; the server's log keeps one line per entry, with no control character.
#[test]
fn peer_text_is_logged_escaped() {
    let play = b"not an event \x1b[31mred\rFORGED-STDOUT\nEXIT\n".to_vec();
    let stderr = b"fatal: refused\nFORGED-STDERR \x1b[2J\x1b]0;title\x07".to_vec();
    let sshd = Sshd::start(&[(&play_key(STREAM, None), &play)]);
    let stderr_file = sshd
        .dir
        .path()
        .join(format!("{}.stderr", play_key(STREAM, None)));
    std::fs::write(&stderr_file, &stderr).expect("stderr file");
    let config = sshd.bridge_toml(
        "review",
        &format!("host_key_fingerprint = \"{}\"", fingerprint(&sshd.host_pub)),
    );
    let (_dir, node) = node_with(&user_toml("pub", "pw", None, &["#"]), &config);
    sshd.go();

    let status = wait_until("the refusal reported", || {
        let health = http_json(node.http, "/healthz?format=json");
        let review = health["bridges"].as_array()?.first()?.clone();
        let error = review["last_error"].as_str()?;
        (error.contains("FORGED-STDERR") && review["rejected"].as_u64() >= Some(1))
            .then_some(review)
    });
    // The status event keeps the server's words (JSON escapes them itself).
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("refused\nFORGED-STDERR \u{1b}[2J"),
        "{status:#}"
    );
    let log = wait_until("both log lines", || {
        let log = node.log();
        (log.contains("FORGED-STDOUT") && log.contains("FORGED-STDERR")).then_some(log)
    });
    assert_log_intact(&log);
    assert!(
        log.contains(r"refused\nFORGED-STDERR \u{1b}[2J\u{1b}]0;title\u{7}"),
        "the stderr, escaped: {log}"
    );
    assert!(
        log.contains(r"not an event \u{1b}[31mred\rFORGED-STDOUT"),
        "the line, escaped: {log}"
    );
}
