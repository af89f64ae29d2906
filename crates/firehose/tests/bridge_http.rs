//! The bridges that listen on the HTTP listener, against the real binary: `POST
//! /api/v1/publish/<topic>` (basic auth, bearer tokens, ACL, limits), GitHub, GitLab and
//! Gitea/Forgejo webhooks with the services' documented example payloads and real HMAC
//! signatures (made with `openssl`), and the JSON Schemas at `/api/v1/schemas`.

mod bridge_support;
mod common;

use base64::Engine;
use serde_json::Value;

use bridge_support::{
    assert_log_intact, fixture, get, hmac_hex, node_with, post, user_toml, wait_until, Answer,
};
use common::durable::{enc, history, http_json};
use common::wire::prop;
use common::{RawClient, QUIET};

const CI_PASSWORD: &str = "ci password";
const CI_TOKEN: &str = "fh_7c1d2a9e4b6f8a0c3e5d7b9f1a2c4e6d";
const GITHUB_SECRET: &str = "It's a Secret to Everybody";
const GITLAB_SECRET: &str = "gitlab-shared-token";
const GITEA_SECRET: &str = "gitea secret";

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A refused publish: target, headers, body, expected status and message.
type Refusal = (
    &'static str,
    Vec<(&'static str, String)>,
    Vec<u8>,
    u16,
    &'static str,
);

/// A refused webhook: headers, body, expected message.
type BadHook<'a> = (Vec<(&'a str, &'a str)>, &'a [u8], &'a str);

fn users() -> String {
    user_toml("ci", CI_PASSWORD, Some(CI_TOKEN), &["ci/#"])
        + &user_toml("reader", "reader pw", None, &[])
}

#[test]
fn http_publish_with_basic_auth_or_token_once_durable() {
    let (_dir, node) = node_with(&users(), "[limits]\nmax_packet_size = 4096\n");
    let mut sub = RawClient::anonymous(node.mqtt, true, "http-sub");
    sub.subscribe("#", 1);
    let auth = basic("ci", CI_PASSWORD);

    // Binary payload, byte-exact, with its id once stored.
    let payload: Vec<u8> = vec![0, 159, 146, 150, b'{', 0xff, b'\n'];
    let answer = post(
        node.http,
        "/api/v1/publish/ci/builds/42",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/octet-stream"),
        ],
        &payload,
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let id = answer.json()["id"].as_u64().expect("event id");
    assert_eq!(answer.json()["topic"], "ci/builds/42");
    let got = sub.expect_publish();
    assert_eq!(
        (got.topic.as_str(), &got.payload),
        ("ci/builds/42", &payload)
    );
    let event = http_json(node.http, &format!("/api/v1/events/{id}"));
    assert_eq!(event["topic"], "ci/builds/42");
    assert_eq!(event["publisher"], "ci");

    // A bearer token, QoS and retain from the query.
    let bearer = format!("Bearer {CI_TOKEN}");
    let answer = post(
        node.http,
        "/api/v1/publish/ci/status?qos=0&retain=true",
        &[("Authorization", &bearer)],
        b"{\"state\":\"green\"}",
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.json()["id"].as_u64() > Some(id));
    let got = sub.expect_publish();
    assert_eq!(got.topic, "ci/status");
    let mut late = RawClient::anonymous(node.mqtt, false, "late");
    late.subscribe("ci/status", 0);
    let retained = late.expect_publish();
    assert!(retained.retain);
    assert_eq!(retained.payload, b"{\"state\":\"green\"}");

    // Refusals, each with a message that says what is wrong, and nothing published.
    let refusals: [Refusal; 8] = [
        (
            "/api/v1/publish/ci/x",
            vec![],
            b"x".to_vec(),
            401,
            "authentication required",
        ),
        (
            "/api/v1/publish/ci/x",
            vec![("Authorization", basic("ci", "wrong"))],
            b"x".to_vec(),
            401,
            "bad user name, password or token",
        ),
        (
            "/api/v1/publish/ci/x",
            vec![("Authorization", basic("nobody", CI_PASSWORD))],
            b"x".to_vec(),
            401,
            "bad user name",
        ),
        (
            "/api/v1/publish/ci/x",
            vec![("Authorization", "Bearer not-a-token".to_owned())],
            b"x".to_vec(),
            401,
            "token",
        ),
        (
            "/api/v1/publish/gerrit/nova/comment-added",
            vec![("Authorization", auth.clone())],
            b"x".to_vec(),
            403,
            "ci may not publish to gerrit/nova/comment-added",
        ),
        (
            "/api/v1/publish/ci/x",
            vec![("Authorization", basic("reader", "reader pw"))],
            b"x".to_vec(),
            403,
            "may not publish",
        ),
        (
            "/api/v1/publish/ci/+/x",
            vec![("Authorization", auth.clone())],
            b"x".to_vec(),
            400,
            "invalid topic",
        ),
        (
            "/api/v1/publish/ci/big",
            vec![("Authorization", auth.clone())],
            vec![b'x'; 5000],
            413,
            "max_packet_size",
        ),
    ];
    for (target, headers, body, status, message) in refusals {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let answer = post(node.http, target, &headers, &body);
        assert_eq!(
            answer.status,
            status,
            "{target} {headers:?}: {}",
            answer.text()
        );
        let error = answer.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            error.contains(message),
            "{target}: {error:?} lacks {message:?}"
        );
        if status == 401 {
            assert!(
                answer
                    .header("www-authenticate")
                    .is_some_and(|v| v.contains("Basic")),
                "{:?}",
                answer.headers
            );
        }
    }
    sub.expect_silence(QUIET);
    let history = http_json(node.http, "/api/v1/events?topic=%23");
    let topics: Vec<&str> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["topic"].as_str())
        .filter(|t| !t.starts_with("firehose/"))
        .collect();
    assert_eq!(topics, ["ci/builds/42", "ci/status"]);
}

/// `limits.max_topic_levels` and the retained quota through HTTP publish: a deep topic gets
/// 400, a retained message to a new topic beyond `max_retained_bytes` 507; both say which
/// limit, and neither is published. Replacing a retained message with a smaller one passes.
#[test]
fn http_publish_refuses_deep_topics_and_retained_messages_beyond_the_quota() {
    // Each retained message is charged its topic, payload and 320 bytes per message and level:
    // `ci/status` with 500 bytes takes 1469 of the 3000, `ci/other` with 1000 bytes 1968.
    let (_dir, node) = node_with(
        &users(),
        "[sys]\ninterval_secs = 0\n\
         [limits]\nmax_topic_levels = 4\nmax_retained_bytes = 3000\n",
    );
    let mut sub = RawClient::anonymous(node.mqtt, true, "limits-sub");
    sub.subscribe("ci/#", 1);
    let auth = basic("ci", CI_PASSWORD);
    let publish = |target: &str, body: &[u8]| {
        post(node.http, target, &[("Authorization", auth.as_str())], body)
    };
    let fits = publish("/api/v1/publish/ci/a/b/c", b"four levels");
    assert_eq!(fits.status, 200, "{}", fits.text());
    let retained = publish("/api/v1/publish/ci/status?retain=true", &[b's'; 500]);
    assert_eq!(retained.status, 200, "{}", retained.text());
    assert_eq!(sub.expect_publish().topic, "ci/a/b/c");
    assert_eq!(sub.expect_publish().topic, "ci/status");

    let refusals = [
        (
            "/api/v1/publish/ci/a/b/c/d",
            vec![b'x'],
            400,
            "max_topic_levels",
        ),
        (
            "/api/v1/publish/ci/other?retain=true",
            vec![b'x'; 1000],
            507,
            "max_retained_bytes",
        ),
        (
            "/api/v1/publish/ci/status?retain=true",
            vec![b'x'; 2300],
            507,
            "max_retained_bytes",
        ),
    ];
    for (target, body, status, limit) in refusals {
        let answer = publish(target, &body);
        assert_eq!(answer.status, status, "{target}: {}", answer.text());
        let error = answer.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(error.contains(limit), "{target}: {error:?} lacks {limit:?}");
    }
    sub.expect_silence(QUIET);

    let smaller = publish("/api/v1/publish/ci/status?retain=true", b"small");
    assert_eq!(
        smaller.status,
        200,
        "a smaller replacement: {}",
        smaller.text()
    );
    let other = publish("/api/v1/publish/ci/other?retain=true", &[b'x'; 1000]);
    assert_eq!(
        other.status,
        200,
        "room made by the smaller one: {}",
        other.text()
    );
    let mut late = RawClient::anonymous(node.mqtt, true, "late");
    late.subscribe("ci/#", 0);
    let mut kept: Vec<(String, usize)> = (0..2)
        .map(|_| {
            let got = late.expect_publish();
            assert!(got.retain);
            (got.topic, got.payload.len())
        })
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        [("ci/other".to_owned(), 1000), ("ci/status".to_owned(), 5)]
    );
    late.expect_silence(QUIET);
}

/// The config for the webhook sources, with the Gitea secret in a file.
fn webhook_config(dir: &std::path::Path) -> String {
    let secret_file = dir.join("gitea-secret");
    std::fs::write(&secret_file, format!("{GITEA_SECRET}\n")).expect("secret file");
    format!(
        "[bridge.webhooks]\nmax_body_bytes = 65536\n\
         [bridge.webhooks.github]\nsecret = \"{GITHUB_SECRET}\"\n\
         [bridge.webhooks.gitlab]\nsecret = \"{GITLAB_SECRET}\"\n\
         [bridge.webhooks.gitea]\nsecret_file = \"{}\"\n",
        secret_file.display()
    )
}

/// What a webhook test's server needs kept until its end: the Gitea secret's and the
/// server's directories.
type Keep = (tempfile::TempDir, common::durable::DataDir);

/// A server with the three webhook sources of [`webhook_config`], `before` ahead of it in the
/// config and `webhooks` lines added to `[bridge.webhooks]`; and a subscriber to `webhooks/#`.
fn webhook_node(before: &str, webhooks: &str) -> (Keep, common::durable::Node, RawClient) {
    let scratch = tempfile::tempdir().expect("tempdir");
    let config = webhook_config(scratch.path()).replace(
        "max_body_bytes = 65536\n",
        &format!("max_body_bytes = 65536\n{webhooks}"),
    );
    let (dir, node) = node_with(&users(), &format!("{before}{config}"));
    let mut sub = RawClient::anonymous(node.mqtt, true, "webhooks-sub");
    sub.subscribe("webhooks/#", 1);
    ((scratch, dir), node, sub)
}

#[test]
fn webhooks_are_verified_published_and_deduplicated() {
    let (_keep, node, mut sub) = webhook_node("", "");

    // GitHub: signature over the exact body, event and delivery headers.
    let github = fixture("webhooks/github-push.json");
    let signature = format!("sha256={}", hmac_hex(GITHUB_SECRET, &github));
    let delivery = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
    let github_headers = [
        ("Content-Type", "application/json"),
        ("X-GitHub-Event", "push"),
        ("X-GitHub-Delivery", delivery),
        ("X-Hub-Signature-256", signature.as_str()),
    ];
    let answer = post(node.http, "/hooks/github", &github_headers, &github);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        answer.json()["topic"],
        "webhooks/github/Codertocat/Hello-World/push"
    );
    let got = sub.expect_publish();
    assert_eq!(got.topic, "webhooks/github/Codertocat/Hello-World/push");
    assert_eq!(got.payload, github, "the body exactly as received");
    assert_eq!(
        got.props.string(prop::CONTENT_TYPE),
        Some("application/json")
    );
    let pairs: Vec<(String, String)> = got
        .props
        .all(prop::USER_PROPERTY)
        .into_iter()
        .filter_map(|v| match v {
            common::wire::Value::Pair(k, v) => Some((k.clone(), v.clone())),
            _ => None,
        })
        .collect();
    assert!(
        pairs.contains(&("delivery".into(), delivery.into())),
        "{pairs:?}"
    );
    assert!(
        pairs.contains(&("event".into(), "push".into())),
        "{pairs:?}"
    );

    // A redelivery is acknowledged and not published again.
    let again = post(node.http, "/hooks/github", &github_headers, &github);
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["duplicate"], true);

    // Bad, missing or malformed signatures: 401, nothing published.
    let wrong = format!("sha256={}", hmac_hex("another secret", &github));
    let tampered_body = [&github[..], b" "].concat();
    let bad: [BadHook; 5] = [
        (
            vec![("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &wrong)],
            &github,
            "does not match",
        ),
        (
            vec![("X-GitHub-Event", "push")],
            &github,
            "missing X-Hub-Signature-256",
        ),
        (
            vec![
                ("X-GitHub-Event", "push"),
                ("X-Hub-Signature-256", &signature),
            ],
            &tampered_body,
            "does not match",
        ),
        (
            vec![
                ("X-GitHub-Event", "push"),
                ("X-Hub-Signature-256", "sha256=zz"),
            ],
            &github,
            "hex",
        ),
        (
            vec![
                ("X-GitHub-Event", "push"),
                (
                    "X-Hub-Signature-256",
                    signature.trim_start_matches("sha256="),
                ),
            ],
            &github,
            "sha256=",
        ),
    ];
    for (headers, body, message) in bad {
        let answer = post(node.http, "/hooks/github", &headers, body);
        assert_eq!(answer.status, 401, "{headers:?}: {}", answer.text());
        let error = answer.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(error.contains(message), "{error:?} lacks {message:?}");
    }
    // Signed but without an event header: 400. Over the body limit: 413.
    let no_event = post(
        node.http,
        "/hooks/github",
        &[("X-Hub-Signature-256", signature.as_str())],
        &github,
    );
    assert_eq!(no_event.status, 400, "{}", no_event.text());
    let big = vec![b' '; 70_000];
    let big_signature = format!("sha256={}", hmac_hex(GITHUB_SECRET, &big));
    let too_big = post(
        node.http,
        "/hooks/github",
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &big_signature),
        ],
        &big,
    );
    assert_eq!(too_big.status, 413, "{}", too_big.text());

    // GitLab: the token itself; "Push Hook" becomes "push"; namespaces keep their slashes.
    let gitlab = fixture("webhooks/gitlab-push.json");
    let answer = post(
        node.http,
        "/hooks/gitlab",
        &[
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", GITLAB_SECRET),
            ("Idempotency-Key", "f5e5f430-f57b-4e6e-9fac-d9128cd7232f"),
        ],
        &gitlab,
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let got = sub.expect_publish();
    assert_eq!(got.topic, "webhooks/gitlab/mike/diaspora/push");
    assert_eq!(got.payload, gitlab);
    for token in [None, Some("gitlab-shared-tokeN"), Some("")] {
        let mut headers = vec![("X-Gitlab-Event", "Push Hook")];
        if let Some(token) = token {
            headers.push(("X-Gitlab-Token", token));
        }
        let answer = post(node.http, "/hooks/gitlab", &headers, &gitlab);
        assert_eq!(answer.status, 401, "{token:?}: {}", answer.text());
    }

    // Gitea and Forgejo: hex HMAC without prefix, each with its own header names.
    let gitea = fixture("webhooks/gitea-push.json");
    let gitea_signature = hmac_hex(GITEA_SECRET, &gitea);
    let answer = post(
        node.http,
        "/hooks/gitea",
        &[
            ("X-Gitea-Event", "push"),
            ("X-Gitea-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
            ("X-Gitea-Signature", &gitea_signature),
        ],
        &gitea,
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let got = sub.expect_publish();
    assert_eq!(got.topic, "webhooks/gitea/gitea/webhooks/push");
    assert_eq!(got.payload, gitea);
    let answer = post(
        node.http,
        "/hooks/gitea",
        &[
            ("X-Forgejo-Event", "push"),
            ("X-Forgejo-Delivery", "0d2e3c4b-5a69-4788-97a6-b5c4d3e2f100"),
            ("X-Forgejo-Signature", &gitea_signature),
        ],
        &gitea,
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        sub.expect_publish().topic,
        "webhooks/gitea/gitea/webhooks/push"
    );
    let wrong = hmac_hex("not the secret", &gitea);
    for headers in [
        vec![
            ("X-Gitea-Event", "push"),
            ("X-Gitea-Signature", wrong.as_str()),
        ],
        vec![("X-Forgejo-Event", "push")],
    ] {
        let answer = post(node.http, "/hooks/gitea", &headers, &gitea);
        assert_eq!(answer.status, 401, "{headers:?}: {}", answer.text());
    }
    sub.expect_silence(QUIET);

    // Each source is a bridge with its status, health line and metrics.
    let mut status_sub = RawClient::anonymous(node.mqtt, true, "status-sub");
    status_sub.subscribe("firehose/bridges/webhooks-github/status", 1);
    let status: Value =
        serde_json::from_slice(&status_sub.expect_publish().payload).expect("status JSON");
    assert_eq!(status["kind"], "webhook");
    assert_eq!(status["state"], "listening");
    let health = get(node.http, "/healthz").text();
    assert!(
        health.contains("bridge webhooks-github (webhook): listening, 1 events in"),
        "{health}"
    );
    let metrics = get(node.http, "/metrics").text();
    for line in [
        "firehose_bridge_events_total{bridge=\"webhooks-github\",kind=\"webhook\"} 1",
        "firehose_bridge_rejected_total{bridge=\"webhooks-github\",kind=\"webhook\"} 7",
        "firehose_bridge_events_total{bridge=\"webhooks-gitlab\",kind=\"webhook\"} 1",
        "firehose_bridge_rejected_total{bridge=\"webhooks-gitlab\",kind=\"webhook\"} 3",
        "firehose_bridge_events_total{bridge=\"webhooks-gitea\",kind=\"webhook\"} 2",
        "firehose_bridge_connected{bridge=\"webhooks-gitea\",kind=\"webhook\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in:\n{metrics}"
        );
    }
}

#[test]
fn unconfigured_sources_and_schemas() {
    let (_dir, node) = node_with(&users(), "[sys]\ninterval_secs = 0\n");
    let answer = post(
        node.http,
        "/hooks/github",
        &[("X-GitHub-Event", "ping")],
        b"{}",
    );
    assert_eq!(answer.status, 404, "{}", answer.text());
    assert_eq!(get(node.http, "/healthz").text(), "ok\n");

    let list = http_json(node.http, "/api/v1/schemas");
    let families: Vec<&str> = list["families"]
        .as_array()
        .expect("families")
        .iter()
        .filter_map(|f| f["family"].as_str())
        .collect();
    assert_eq!(
        families,
        [
            "gerrit",
            "webhooks",
            "logs",
            "launchpad",
            "mail",
            "ansible",
            "gearman-subunit",
            "gearman-logstash",
            "bridge-status"
        ]
    );
    for family in families {
        let schema = wait_until("schema", || {
            let answer = get(node.http, &format!("/api/v1/schemas/{family}"));
            (answer.status == 200).then(|| answer.json())
        });
        assert_eq!(schema["$id"], format!("/api/v1/schemas/{family}"));
        assert!(schema["$schema"]
            .as_str()
            .is_some_and(|s| s.contains("json-schema.org")));
    }
    assert_eq!(get(node.http, "/api/v1/schemas/nope").status, 404);
}

/// A bridge's entry in `/healthz?format=json`.
fn bridge_health(node: &common::durable::Node, name: &str) -> Value {
    let health = http_json(node.http, "/healthz?format=json");
    health["bridges"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["bridge"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no bridge {name} in {health}"))
}

/// Asserts a refusal: `status`, and `message` in the error.
fn assert_refused(answer: &Answer, status: u16, message: &str) {
    assert_eq!(answer.status, status, "{}", answer.text());
    let error = answer.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains(message), "{error:?} lacks {message:?}");
}

/// Asserts the answer to a repeated delivery id: 200, so that the forge neither retries nor
/// counts a failure, saying that nothing was published.
fn assert_duplicate(answer: &Answer, delivery: &str) {
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["duplicate"], true, "{body}");
    assert_eq!(body["delivery"], delivery, "{body}");
    assert_eq!(body["message"], "duplicate delivery, ignored", "{body}");
    assert!(body.get("id").is_none(), "{body}");
}

/// Issue 21 point 5: every source requires its delivery id, remembers it for the replay
/// window (in a memory of at most `replay_max_ids`), answers a repeated one without publishing
/// it, and counts both refusals and repeats. A forged request cannot burn an id: the
/// signature is checked first.
#[test]
fn webhook_delivery_ids_are_required_and_replays_refused() {
    let (_keep, node, mut sub) =
        webhook_node("", "replay_window_secs = 3600\nreplay_max_ids = 100\n");

    let github = fixture("webhooks/github-push.json");
    let signature = format!("sha256={}", hmac_hex(GITHUB_SECRET, &github));
    let forged = format!("sha256={}", hmac_hex("not the secret", &github));
    let send = |delivery: Option<&str>, signature: &str| {
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", signature),
        ];
        if let Some(delivery) = delivery {
            headers.push(("X-GitHub-Delivery", delivery));
        }
        post(node.http, "/hooks/github", &headers, &github)
    };
    let topic = "webhooks/github/Codertocat/Hello-World/push";

    // Signed, without a delivery id: 400, nothing published.
    assert_refused(&send(None, &signature), 400, "missing X-GitHub-Delivery");
    // A forged request with a new id: 401, and the id is still free for the real one.
    assert_refused(&send(Some("d-1"), &forged), 401, "does not match");
    let first = send(Some("d-1"), &signature);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.json()["topic"], topic);
    assert_eq!(sub.expect_publish().topic, topic);
    // The same id again: answered, not published.
    assert_duplicate(&send(Some("d-1"), &signature), "d-1");
    sub.expect_silence(QUIET);

    // GitLab's delivery id is Idempotency-Key; its per-request UUIDs are not enough.
    let gitlab = fixture("webhooks/gitlab-push.json");
    let gitlab_send = |extra: (&'static str, &'static str)| {
        let headers = [
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", GITLAB_SECRET),
            extra,
        ];
        post(node.http, "/hooks/gitlab", &headers, &gitlab)
    };
    let uuid = "13792a34-cac6-4fda-95a8-c58e00a3954e";
    assert_refused(
        &gitlab_send(("X-Gitlab-Event-UUID", uuid)),
        400,
        "Idempotency-Key",
    );
    let key = "f5e5f430-f57b-4e6e-9fac-d9128cd7232f";
    assert_eq!(gitlab_send(("Idempotency-Key", key)).status, 200);
    assert_eq!(
        sub.expect_publish().topic,
        "webhooks/gitlab/mike/diaspora/push"
    );
    assert_duplicate(&gitlab_send(("Idempotency-Key", key)), key);

    // Gitea and Forgejo share the memory of their source, whichever header carries the id.
    let gitea = fixture("webhooks/gitea-push.json");
    let gitea_signature = hmac_hex(GITEA_SECRET, &gitea);
    let gitea_send = |event: &'static str, delivery: Option<(&'static str, &'static str)>| {
        let mut headers = vec![
            ("X-Gitea-Event", event),
            ("X-Gitea-Signature", gitea_signature.as_str()),
        ];
        headers.extend(delivery);
        post(node.http, "/hooks/gitea", &headers, &gitea)
    };
    assert_refused(&gitea_send("push", None), 400, "X-Gitea-Delivery");
    let id = "f6266f16-1bf3-46a5-9ea4-602e06ead473";
    assert_eq!(
        gitea_send("push", Some(("X-Gitea-Delivery", id))).status,
        200
    );
    assert_eq!(
        sub.expect_publish().topic,
        "webhooks/gitea/gitea/webhooks/push"
    );
    assert_duplicate(&gitea_send("push", Some(("X-Forgejo-Delivery", id))), id);
    sub.expect_silence(QUIET);

    // A flood of new ids: the memory keeps the newest 100, and forgets the oldest early
    // (with a warning) rather than growing.
    for n in 0..100 {
        let answer = send(Some(&format!("flood-{n}")), &signature);
        assert_eq!(answer.status, 200, "flood-{n}: {}", answer.text());
    }
    assert_duplicate(&send(Some("flood-99"), &signature), "flood-99");
    let again = send(Some("d-1"), &signature);
    assert_eq!(again.status, 200, "d-1 was pushed out: {}", again.text());
    assert!(again.json()["id"].is_u64(), "{}", again.text());
    assert!(
        node.log().contains("the replay memory is full"),
        "{}",
        node.log()
    );

    let published = history(node.http, &format!("topic={}", enc("webhooks/#")), 500);
    assert_eq!(
        published.len(),
        1 + 1 + 1 + 100 + 1,
        "each id once, d-1 twice"
    );
    for (name, events, rejected, duplicates) in [
        ("webhooks-github", 102, 2, 2),
        ("webhooks-gitlab", 1, 1, 1),
        ("webhooks-gitea", 1, 1, 1),
    ] {
        let bridge = bridge_health(&node, name);
        assert_eq!(
            (
                &bridge["events_in"],
                &bridge["rejected"],
                &bridge["duplicates"]
            ),
            (&events.into(), &rejected.into(), &duplicates.into()),
            "{bridge:#}"
        );
    }
    let metrics = get(node.http, "/metrics").text();
    for line in [
        "firehose_bridge_rejected_total{bridge=\"webhooks-github\",kind=\"webhook\"} 2",
        "firehose_bridge_duplicates_total{bridge=\"webhooks-github\",kind=\"webhook\"} 2",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in:\n{metrics}"
        );
    }
}

/// Issue 21 point 5: the event header becomes exactly one topic level of `[a-z0-9_]`;
/// anything else is refused with 400 and counted, before its delivery id is remembered.
#[test]
fn webhook_event_names_are_one_topic_level() {
    let (_keep, node, mut sub) = webhook_node("", "");
    let github = fixture("webhooks/github-push.json");
    let signature = format!("sha256={}", hmac_hex(GITHUB_SECRET, &github));
    let send = |event: &str, delivery: &str| {
        let headers = [
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", delivery),
            ("X-Hub-Signature-256", signature.as_str()),
        ];
        post(node.http, "/hooks/github", &headers, &github)
    };
    let bad = [
        "push/x",
        "push/#",
        "#",
        "+",
        "Push",
        "push-event",
        "push event",
        "$SYS",
        "..",
        "pushé",
    ];
    for event in bad {
        let answer = send(event, "same-id");
        assert_refused(&answer, 400, "an event name is 1 to 64 of a-z, 0-9 and _");
    }
    // The id was not remembered by the refused requests.
    let answer = send("pull_request_review", "same-id");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        answer.json()["topic"],
        "webhooks/github/Codertocat/Hello-World/pull_request_review"
    );
    let got = sub.expect_publish();
    assert_eq!(
        got.topic,
        "webhooks/github/Codertocat/Hello-World/pull_request_review"
    );
    sub.expect_silence(QUIET);

    // GitLab's names are made one level first: "Merge Request Hook" is merge_request.
    let gitlab = fixture("webhooks/gitlab-push.json");
    let gitlab_send = |event: &'static str, key: &'static str| {
        let headers = [
            ("X-Gitlab-Event", event),
            ("X-Gitlab-Token", GITLAB_SECRET),
            ("Idempotency-Key", key),
        ];
        post(node.http, "/hooks/gitlab", &headers, &gitlab)
    };
    assert_eq!(gitlab_send("Merge Request Hook", "k-1").status, 200);
    assert_eq!(
        sub.expect_publish().topic,
        "webhooks/gitlab/mike/diaspora/merge_request"
    );
    assert_refused(
        &gitlab_send("Merge/Request Hook", "k-2"),
        400,
        "X-Gitlab-Event",
    );
    assert_refused(&gitlab_send("Push+ Hook", "k-3"), 400, "X-Gitlab-Event");
    sub.expect_silence(QUIET);
    let bridge = bridge_health(&node, "webhooks-github");
    assert_eq!(bridge["rejected"], bad.len(), "{bridge:#}");
    assert_eq!(bridge_health(&node, "webhooks-gitlab")["rejected"], 2);
}

/// Issue 21 point 6: text from a webhook's payload that reaches the log (here the topic of an
/// event the broker refuses: too many levels) is escaped, and its control characters do not
/// reach the topic either. The event is not stored, so its delivery id is forgotten: the
/// forge may deliver it again.
#[test]
fn webhook_payload_text_is_logged_escaped() {
    let (_keep, node, _sub) = webhook_node("[limits]\nmax_topic_levels = 6\n", "");
    let body = br#"{"repository":{"full_name":"a/b/c\nFORGED-WEBHOOK \u001b[2J/repo"}}"#;
    let signature = format!("sha256={}", hmac_hex(GITHUB_SECRET, body));
    let send = || {
        let headers = [
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "d-escaped"),
            ("X-Hub-Signature-256", signature.as_str()),
        ];
        post(node.http, "/hooks/github", &headers, body)
    };
    assert_refused(&send(), 400, "max_topic_levels");
    assert_refused(&send(), 400, "max_topic_levels");
    let log = wait_until("the publish failures in the log", || {
        let log = node.log();
        (log.matches("FORGED-WEBHOOK").count() >= 2).then_some(log)
    });
    assert_log_intact(&log);
    assert!(
        log.contains("webhooks/github/a/b/c_FORGED-WEBHOOK _[2J/repo/push"),
        "{log}"
    );
    let bridge = bridge_health(&node, "webhooks-github");
    assert_eq!(bridge["duplicates"], 0, "{bridge:#}");
    assert_eq!(bridge["errors"], 2, "{bridge:#}");
}
