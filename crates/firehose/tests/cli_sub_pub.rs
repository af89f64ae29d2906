//! `firehose pub` and `firehose sub`, black-box: the real binary against a real server with
//! MQTT and HTTP listeners on 127.0.0.1 port 0. Every wait is bounded.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::cli::{firehose, Sub};
use common::durable::payloads;
use common::durable::{eventually, history, http_get, DataDir, Node};
use common::{firehose_bin, run_with_timeout, PUB_PASSWORD, TIMEOUT};
use serde_json::Value;

fn mqtt_url(node: &Node) -> String {
    format!("mqtt://{}", node.mqtt)
}

/// `firehose pub --server mqtt://node` with `args`, `stdin` as input.
fn publish(node: &Node, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = firehose();
    cmd.arg("pub")
        .arg("--server")
        .arg(mqtt_url(node))
        .args(args);
    run_with_timeout(&mut cmd, stdin, TIMEOUT)
}

/// Publishes as the standard publisher and asserts success.
fn publish_ok(node: &Node, topic: &str, payload: &str) {
    let out = publish(
        node,
        &["-u", "pub", "-P", PUB_PASSWORD, topic, payload],
        b"",
    );
    assert!(
        out.status.success(),
        "pub {topic}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until the server counts `n` connected MQTT clients (so a subscriber is in place).
fn wait_clients(node: &Node, n: usize) {
    let want = format!("firehose_clients_connected {n}");
    eventually(TIMEOUT, &want, || {
        let (_, body) = http_get(node.http, "/metrics");
        body.lines().any(|l| l == want)
    });
    // SUBSCRIBE follows CONNACK on the same connection: give it a moment to be routed.
    thread::sleep(Duration::from_millis(200));
}

#[test]
fn pub_refusals_exit_non_zero_with_the_reason() {
    let data = DataDir::standard("");
    let node = data.start();
    let anonymous = publish(&node, &["t/x", "hi"], b"");
    assert!(!anonymous.status.success());
    let err = String::from_utf8_lossy(&anonymous.stderr);
    assert!(
        err.contains("0x87") && err.contains("NotAuthorized"),
        "{err}"
    );

    let bad = publish(&node, &["-u", "pub", "-P", "wrong", "t/x", "hi"], b"");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("BadUserNameOrPassword"), "{err}");

    let limited = publish(
        &node,
        &["-u", "limited", "-P", common::LIMITED_PASSWORD, "t/x", "hi"],
        b"",
    );
    assert!(!limited.status.success());

    let mut unreachable = firehose();
    unreachable.args([
        "pub",
        "--server",
        &format!("mqtt://{}", closed_port()),
        "t",
        "x",
    ]);
    let out = run_with_timeout(&mut unreachable, b"", TIMEOUT);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
    assert!(history(node.http, "", 100).is_empty(), "nothing was stored");
}

#[test]
fn pub_qos_retain_properties_and_payload_sources() {
    let data = DataDir::standard("");
    let node = data.start();
    let auth = ["-u", "pub", "-P", PUB_PASSWORD];
    for qos in ["0", "1", "2"] {
        let topic = format!("p/qos{qos}");
        let mut args = auth.to_vec();
        args.extend(["-q", qos, &topic, "from-arg"]);
        let out = publish(&node, &args, b"");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut args = auth.to_vec();
    args.extend(["p/stdin"]);
    assert!(publish(&node, &args, b"from-stdin").status.success());
    let file = data.dir.path().join("payload.json");
    std::fs::write(&file, r#"{"from":"file"}"#).expect("write payload");
    let mut args = auth.to_vec();
    let file_arg = file.to_string_lossy().into_owned();
    args.extend([
        "--file",
        &file_arg,
        "-r",
        "-D",
        "a=1",
        "--content-type",
        "application/json",
        "--response-topic",
        "p/reply",
        "p/file",
    ]);
    let out = publish(&node, &args, b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut events = Vec::new();
    eventually(TIMEOUT, "5 events", || {
        events = history(node.http, "", 100);
        events.len() == 5
    });
    let by_topic = |t: &str| {
        events
            .iter()
            .find(|e| e["topic"] == t)
            .unwrap_or_else(|| panic!("no event on {t}: {events:?}"))
            .clone()
    };
    for qos in 0..3u64 {
        let e = by_topic(&format!("p/qos{qos}"));
        assert_eq!(
            (e["qos"].as_u64(), e["payload"].as_str()),
            (Some(qos), Some("from-arg"))
        );
    }
    assert_eq!(by_topic("p/stdin")["payload"], "from-stdin");
    let f = by_topic("p/file");
    assert_eq!(f["payload"]["from"], "file");
    assert_eq!(f["retain"], true);
    assert_eq!(f["content_type"], "application/json");
    assert_eq!(f["response_topic"], "p/reply");
    assert_eq!(f["user_properties"][0][0], "a");
}

#[test]
fn sub_over_mqtt_prints_json_lines_and_stops_at_count() {
    let data = DataDir::standard("");
    let node = data.start();
    let mut sub = Sub::start(&["--server", &mqtt_url(&node), "s/#", "--count", "2"]);
    wait_clients(&node, 1);
    publish_ok(&node, "s/a", r#"{"n":1}"#);
    publish_ok(&node, "other", "ignored");
    publish_ok(&node, "s/b", "two");
    let events = sub.events(2);
    assert_eq!(events[0]["topic"], "s/a");
    assert_eq!(events[0]["payload"]["n"], 1);
    assert_eq!(events[1]["payload"], "two");
    assert!(events[1]["time"].is_string());
    sub.wait_success();
}

/// `--format pretty` is for people: id, time and topic on one line, the payload indented below
/// (no colour when stdout is not a terminal).
#[test]
fn sub_pretty_format_shows_id_time_topic_and_indented_payload() {
    let data = DataDir::standard("");
    let node = data.start();
    publish_ok(&node, "p/a", r#"{"change":{"project":"nova"}}"#);
    let http = format!("http://{}", node.http);
    let mut cmd = firehose();
    cmd.args([
        "sub", "--server", &http, "p/#", "--after", "0", "--count", "1",
    ])
    .args(["--format", "pretty"]);
    let out = run_with_timeout(&mut cmd, b"", TIMEOUT);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let head = lines.next().expect("a heading line");
    assert!(head.starts_with("#1 "), "{text}");
    assert!(head.ends_with(" p/a"), "{text}");
    assert!(!text.contains('\x1b'), "colour on a pipe: {text:?}");
    let body: Vec<&str> = lines.collect();
    assert!(body.iter().all(|l| l.starts_with("  ")), "{text}");
    assert!(
        body.iter().any(|l| l.contains("\"project\": \"nova\"")),
        "{text}"
    );
}

#[test]
fn sub_over_sse_replays_since_then_follows_with_no_gap() {
    let data = DataDir::standard("");
    let node = data.start();
    publish_ok(&node, "r/1", "old-1");
    publish_ok(&node, "r/2", "old-2");
    let server = node.base_url();
    let mut sub = Sub::start(&["--server", &server, "r/#", "--since", "1h", "-n", "4"]);
    let first = sub.events(2);
    assert_eq!(payloads(&first), ["old-1", "old-2"]);
    publish_ok(&node, "r/3", "new-3");
    publish_ok(&node, "x/no", "not matching");
    publish_ok(&node, "r/4", "new-4");
    let rest = sub.events(2);
    assert_eq!(payloads(&rest), ["new-3", "new-4"]);
    let ids: Vec<u64> = first
        .iter()
        .chain(&rest)
        .filter_map(|e| e["id"].as_u64())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    sub.wait_success();

    // --after: the events after an id, then live.
    let mut sub = Sub::start(&[
        "--server",
        &server,
        "r/#",
        "--after",
        &ids[1].to_string(),
        "-n",
        "2",
    ]);
    assert_eq!(payloads(&sub.events(2)), ["new-3", "new-4"]);
    sub.wait_success();
}

#[test]
fn sub_filter_on_payload_fields() {
    let data = DataDir::standard("");
    let node = data.start();
    for (n, comment, project) in [
        (1, "recheck", "openstack/nova"),
        (2, "looks good", "openstack/nova"),
        (3, "recheck please", "openstack/neutron"),
        (4, "recheck", "openstack/nova"),
    ] {
        let payload = format!(
            r#"{{"type":"comment-added","n":{n},"comment":"{comment}","change":{{"project":"{project}"}}}}"#
        );
        publish_ok(&node, "gerrit/x/comment-added", &payload);
    }
    let mut sub = Sub::start(&[
        "--server",
        &node.base_url(),
        "gerrit/#",
        "--after",
        "0",
        "--filter",
        "comment~^recheck",
        "--filter",
        "change.project=openstack/nova",
        "--filter",
        "type",
        "-n",
        "2",
    ]);
    let events = sub.events(2);
    let ns: Vec<u64> = events
        .iter()
        .filter_map(|e| e["payload"]["n"].as_u64())
        .collect();
    assert_eq!(ns, [1, 4]);
    sub.wait_success();
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn exec_with_resume_file_over_sse_runs_each_event_once_across_restarts() {
    let data = DataDir::standard("");
    let node = data.start();
    let dir = data.dir.path();
    let resume = dir.join("resume.json");
    let log = dir.join("ran.log");
    let inputs = dir.join("inputs.log");
    let command = format!(
        "echo \"$FIREHOSE_EVENT_ID $FIREHOSE_TOPIC\" >> {}; cat >> {}",
        log.display(),
        inputs.display()
    );
    for i in 1..=3 {
        publish_ok(&node, &format!("e/{i}"), &format!("{{\"i\":{i}}}"));
    }
    let server = node.base_url();
    let resume_arg = resume.to_string_lossy().into_owned();
    let run = |count: &str| {
        let mut sub = Sub::start(&[
            "--server",
            &server,
            "e/#",
            "--after",
            "0",
            "--resume-file",
            &resume_arg,
            "--exec",
            &command,
            "-n",
            count,
        ]);
        sub.wait_success();
    };
    run("2");
    assert_eq!(read_lines(&log), ["1 e/1", "2 e/2"]);
    // Restart: the third event was missed, two more arrive while the consumer is down.
    publish_ok(&node, "e/4", r#"{"i":4}"#);
    publish_ok(&node, "e/5", r#"{"i":5}"#);
    run("3");
    assert_eq!(
        read_lines(&log),
        ["1 e/1", "2 e/2", "3 e/3", "4 e/4", "5 e/5"]
    );
    let inputs = read_lines(&inputs);
    assert_eq!(inputs.len(), 5);
    let third: Value = serde_json::from_str(&inputs[2]).expect("event JSON on stdin");
    assert_eq!(
        (third["id"].as_u64(), &third["payload"]["i"]),
        (Some(3), &Value::from(3))
    );
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(&resume).expect("resume file"))
            .expect("JSON");
    assert_eq!(state["last_event_id"], 5);
}

#[test]
fn exec_failure_with_stop_leaves_the_event_for_the_next_run() {
    let data = DataDir::standard("");
    let node = data.start();
    let dir = data.dir.path();
    let resume = dir.join("resume.json");
    let flag = dir.join("fail");
    std::fs::write(&flag, "").expect("flag");
    let log = dir.join("ran.log");
    publish_ok(&node, "f/1", "one");
    publish_ok(&node, "f/2", "two");
    let command = format!(
        "if [ -e {flag} ] && [ \"$FIREHOSE_EVENT_ID\" = 2 ]; then exit 3; fi; echo $FIREHOSE_EVENT_ID >> {log}",
        flag = flag.display(),
        log = log.display()
    );
    let args = |count: &'static str| {
        vec![
            "sub".to_owned(),
            "--server".into(),
            node.base_url(),
            "f/#".into(),
            "--after".into(),
            "0".into(),
            "--resume-file".into(),
            resume.to_string_lossy().into_owned(),
            "--exec".into(),
            command.clone(),
            "--on-failure".into(),
            "stop".into(),
            "-n".into(),
            count.into(),
        ]
    };
    let out = run_with_timeout(firehose().args(args("2")), b"", TIMEOUT);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("on-failure stop"));
    assert_eq!(read_lines(&log), ["1"]);
    std::fs::remove_file(&flag).expect("unflag");
    let out = run_with_timeout(firehose().args(args("1")), b"", TIMEOUT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read_lines(&log), ["1", "2"]);
}

#[test]
fn resume_file_over_mqtt_gets_what_was_missed_while_down() {
    let data = DataDir::standard("");
    let node = data.start();
    let resume = data.dir.path().join("mqtt-resume.json");
    let resume_arg = resume.to_string_lossy().into_owned();
    let url = mqtt_url(&node);
    let mut sub = Sub::start(&[
        "--server",
        &url,
        "m/#",
        "--resume-file",
        &resume_arg,
        "-n",
        "1",
    ]);
    wait_clients(&node, 1);
    publish_ok(&node, "m/1", "first");
    assert_eq!(payloads(&sub.events(1)), ["first"]);
    sub.wait_success();
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(&resume).expect("resume file"))
            .expect("JSON");
    assert!(state["client_id"].is_string(), "{state}");
    // Unguessable: anonymous clients may resume any anonymous session whose id they know.
    let random = state["client_id"]
        .as_str()
        .and_then(|id| id.strip_prefix("firehose-sub-"))
        .unwrap_or_default();
    assert!(
        random.len() == 32 && random.bytes().all(|b| b.is_ascii_hexdigit()),
        "128 random bits: {state}"
    );
    // Published while the consumer is down.
    publish_ok(&node, "m/2", "second");
    publish_ok(&node, "m/3", "third");
    let mut sub = Sub::start(&[
        "--server",
        &url,
        "m/#",
        "--resume-file",
        &resume_arg,
        "-n",
        "2",
    ]);
    assert_eq!(payloads(&sub.events(2)), ["second", "third"]);
    sub.wait_success();
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

#[test]
fn sub_falls_back_to_the_next_server() {
    let data = DataDir::standard("");
    let node = data.start();
    publish_ok(&node, "b/1", "via-sse");
    let started = Instant::now();
    let servers = format!("http://{},{}", closed_port(), node.base_url());
    let mut sub = Sub::start(&["--server", &servers, "b/#", "--after", "0", "-n", "1"]);
    assert_eq!(payloads(&sub.events(1)), ["via-sse"]);
    sub.wait_success();
    // MQTT first (unreachable), then MQTT that works.
    let servers = format!("mqtt://{},{}", closed_port(), mqtt_url(&node));
    let mut sub = Sub::start(&["--server", &servers, "b/#", "-n", "1"]);
    wait_clients(&node, 1);
    publish_ok(&node, "b/2", "via-mqtt");
    assert_eq!(payloads(&sub.events(1)), ["via-mqtt"]);
    sub.wait_success();
    assert!(started.elapsed() < TIMEOUT * 3);
}

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/examples")
        .join(name)
}

/// `sh docs/examples/<name>` with `firehose` on the PATH (as the examples expect) and no
/// FIREHOSE_ settings of the developer.
fn shell_example(name: &str) -> Command {
    let bin = firehose_bin();
    let dir = bin.parent().expect("binary has a directory").to_owned();
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("sh");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FIREHOSE_") {
            cmd.env_remove(key);
        }
    }
    cmd.arg(example(name)).env("PATH", path);
    cmd
}

#[test]
fn docs_example_recheck_runs_each_matching_comment_once_across_restarts() {
    let data = DataDir::standard("");
    let node = data.start();
    let dir = data.dir.path();
    let jobs = dir.join("jobs.txt");
    let topic = "gerrit/openstack/nova/comment-added";
    publish_ok(
        &node,
        topic,
        r#"{"comment":"Patch Set 1:\n\nrecheck","n":1}"#,
    );
    publish_ok(&node, topic, r#"{"comment":"lgtm","n":2}"#);
    let run = |count: &str| {
        let mut cmd = shell_example("recheck.sh");
        cmd.args(["--after", "0", "-n", count])
            .env("FIREHOSE_SERVER", node.base_url())
            .env("RESUME_FILE", dir.join("resume.json"))
            .env(
                "JOB",
                format!("echo $FIREHOSE_EVENT_ID >> {}", jobs.display()),
            );
        let out = run_with_timeout(&mut cmd, b"", TIMEOUT);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run("1");
    publish_ok(&node, topic, r#"{"comment":"recheck","n":3}"#);
    run("1");
    assert_eq!(read_lines(&jobs), ["1", "3"]);
}

#[test]
fn docs_example_curl_sse_resumes_after_the_last_event() {
    use std::os::unix::process::CommandExt;
    let data = DataDir::standard("");
    let node = data.start();
    let state = data.dir.path().join("last-event-id");
    let run = |want: usize| -> Vec<Value> {
        let mut child = shell_example("sse-curl.sh")
            .env("FIREHOSE_URL", node.base_url())
            .env("STATE", &state)
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("run sse-curl.sh");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let events: Vec<Value> = (0..want)
            .map(|_| {
                let line = rx.recv_timeout(TIMEOUT).expect("an event from curl");
                serde_json::from_str(&line).expect("JSON event")
            })
            .collect();
        // The script saves an event's id just after printing it: stopping it between the two
        // would be a test of bad timing, not of resuming. Wait for the save of the last one.
        let last = events
            .last()
            .map(|e| e["id"].to_string())
            .unwrap_or_default();
        eventually(TIMEOUT, "state file", || {
            std::fs::read_to_string(&state).is_ok_and(|s| s.trim() == last)
        });
        // The whole pipeline (sh, curl, the loop) is one process group.
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", child.id())])
            .status();
        let _ = child.wait();
        events
    };
    publish_ok(&node, "gerrit/a/comment-added", r#"{"n":1}"#);
    publish_ok(&node, "gerrit/a/comment-added", r#"{"n":2}"#);
    let first = run(2);
    assert_eq!(payloads(&first), [r#"{"n":1}"#, r#"{"n":2}"#]);
    assert_eq!(
        std::fs::read_to_string(&state)
            .ok()
            .as_deref()
            .map(str::trim),
        Some("2")
    );
    publish_ok(&node, "gerrit/a/comment-added", r#"{"n":3}"#);
    let second = run(1);
    assert_eq!(payloads(&second), [r#"{"n":3}"#]);
}

#[test]
fn docs_example_mosquitto_sub_resumes_its_session() {
    assert!(
        common::have_mosquitto_clients(),
        "mosquitto_sub not found: install mosquitto-clients (scripts/test does)"
    );
    let data = DataDir::standard("");
    let node = data.start();
    let port = node.mqtt.port().to_string();
    let client_id = format!("docs-mosquitto-{}", std::process::id());
    let run = move |count: &str| {
        let mut cmd = shell_example("mosquitto-sub.sh");
        cmd.args(["-C", count, "-W", "20"])
            .env("FIREHOSE_HOST", "127.0.0.1")
            .env("FIREHOSE_PORT", &port)
            .env("CLIENT_ID", &client_id);
        let out = run_with_timeout(&mut cmd, b"", TIMEOUT);
        assert!(
            out.status.success(),
            "mosquitto-sub.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = {
        let run = run.clone();
        thread::spawn(move || run("1"))
    };
    wait_clients(&node, 1);
    publish_ok(&node, "gerrit/a/comment-added", r#"{"n":1}"#);
    assert_eq!(
        first.join().expect("first run"),
        "gerrit/a/comment-added {\"n\":1}\n"
    );
    // Published while it is down: the persistent session gets exactly these on restart.
    publish_ok(&node, "gerrit/a/comment-added", r#"{"n":2}"#);
    publish_ok(&node, "gerrit/b/patchset-created", r#"{"n":3}"#);
    publish_ok(&node, "other/topic", r#"{"n":4}"#);
    assert_eq!(
        run("2"),
        "gerrit/a/comment-added {\"n\":2}\ngerrit/b/patchset-created {\"n\":3}\n"
    );
}
