//! Gerrit events as data: the topic of an event, its identity for deduplication, and the
//! events-log plugin's answers. Pure functions, tested below.

use std::collections::{HashSet, VecDeque};

use ring::digest;
use serde_json::Value;

/// Digests of recently published events remembered to drop the ones that arrive twice (from
/// the events-log plugin and from the stream) after a reconnection.
const RECENT_CAPACITY: usize = 8192;

/// What a line of `stream-events` output is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// A JSON object with a `type`: publish to this topic.
    Event {
        /// `<prefix>/<project>/<type>`.
        topic: String,
        /// `eventCreatedOn`, seconds since the epoch, when present.
        created_on: Option<i64>,
        /// The canonical digest, for deduplication.
        digest: [u8; 32],
    },
    /// Not an event: why.
    Invalid(String),
}

/// Reads one line of `stream-events` output (without its newline).
pub(crate) fn parse_line(prefix: &str, line: &[u8]) -> Line {
    let value: Value = match serde_json::from_slice(line) {
        Ok(value) => value,
        Err(error) => return Line::Invalid(format!("not JSON: {error}")),
    };
    let Some(kind) = value.get("type").and_then(Value::as_str) else {
        return Line::Invalid("a JSON value without a string \"type\"".into());
    };
    let kind = level(kind);
    if kind.is_empty() {
        return Line::Invalid("an empty \"type\"".into());
    }
    let project = project_of(&value)
        .map(|p| {
            p.split('/')
                .map(level)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("/")
        })
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "-".to_owned());
    Line::Event {
        topic: format!("{prefix}/{project}/{kind}"),
        created_on: value.get("eventCreatedOn").and_then(Value::as_i64),
        digest: canonical_digest(&value),
    }
}

/// The project of an event: `project` (a string, or an object with `name` as some plugins
/// send), else `change.project`, else `refUpdate.project`.
fn project_of(value: &Value) -> Option<&str> {
    fn name(v: &Value) -> Option<&str> {
        match v {
            Value::String(s) => Some(s.as_str()),
            Value::Object(o) => o.get("name").and_then(Value::as_str),
            _ => None,
        }
    }
    value
        .get("project")
        .and_then(name)
        .or_else(|| value.pointer("/change/project").and_then(Value::as_str))
        .or_else(|| value.pointer("/refUpdate/project").and_then(Value::as_str))
}

/// A topic level: MQTT wildcards and NUL become `_`.
fn level(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '+' | '#' | '\0' | '/' => '_',
            c => c,
        })
        .collect()
}

/// SHA-256 of the value written with object keys sorted and no whitespace, so that the same
/// event read from the stream and from the events-log plugin has the same digest.
pub(crate) fn canonical_digest(value: &Value) -> [u8; 32] {
    let mut text = String::new();
    canonical(value, &mut text);
    let mut out = [0; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, text.as_bytes()).as_ref());
    out
}

fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(key) {
                    canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The digests of the most recent events.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    set: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
}

impl Recent {
    /// Records `digest`; false if it is already there (a duplicate).
    pub(crate) fn insert(&mut self, digest: [u8; 32]) -> bool {
        if !self.set.insert(digest) {
            return false;
        }
        self.order.push_back(digest);
        if self.order.len() > RECENT_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// Splits an events-log answer (JSON objects one after the other, usually one per line) into
/// the raw bytes of each object, in order. Stops at the first invalid value.
pub(crate) fn split_objects(body: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut stream =
        serde_json::Deserializer::from_slice(body).into_iter::<serde::de::IgnoredAny>();
    let mut start = 0;
    while let Some(Ok(_)) = stream.next() {
        let end = stream.byte_offset();
        if let Some(raw) = body.get(start..end) {
            let raw = raw.trim_ascii();
            if !raw.is_empty() {
                out.push(raw);
            }
        }
        start = end;
    }
    out
}

/// `yyyy-MM-dd HH:mm:ss` in UTC, as the events-log plugin's `t1` expects, for `secs` since the
/// epoch.
pub(crate) fn events_log_time(secs: i64) -> String {
    let secs = u64::try_from(secs).unwrap_or(0);
    let text = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
    )
    .to_string();
    // 2026-01-31T12:00:00Z -> 2026-01-31 12:00:00
    text.trim_end_matches('Z').replacen('T', " ", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(line: &str) -> String {
        match parse_line("gerrit", line.as_bytes()) {
            Line::Event { topic, .. } => topic,
            Line::Invalid(why) => panic!("{line}: {why}"),
        }
    }

    #[test]
    fn topics_follow_germqtt() {
        assert_eq!(
            topic(r#"{"type":"comment-added","change":{"project":"openstack/nova"}}"#),
            "gerrit/openstack/nova/comment-added"
        );
        assert_eq!(
            topic(r#"{"type":"ref-replicated","project":"a/b","change":{"project":"x"}}"#),
            "gerrit/a/b/ref-replicated"
        );
        assert_eq!(
            topic(r#"{"type":"ref-updated","refUpdate":{"project":"infra/ci"}}"#),
            "gerrit/infra/ci/ref-updated"
        );
        assert_eq!(
            topic(r#"{"type":"project-created","project":{"name":"p"}}"#),
            "gerrit/p/project-created"
        );
        assert_eq!(
            topic(r#"{"type":"dropped-output"}"#),
            "gerrit/-/dropped-output"
        );
        assert_eq!(topic(r#"{"type":"a+b","project":"x#y"}"#), "gerrit/x_y/a_b");
        assert!(matches!(parse_line("g", b"not json"), Line::Invalid(_)));
        assert!(matches!(parse_line("g", b"[1]"), Line::Invalid(_)));
        assert!(matches!(parse_line("g", b"{\"type\":1}"), Line::Invalid(_)));
    }

    #[test]
    fn digests_ignore_key_order_and_spacing() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":[1,2],"x":"s"}}"#).expect("json");
        let b: Value = serde_json::from_str("{ \"a\": {\"x\": \"s\", \"y\": [1, 2]}, \"b\": 1 }")
            .expect("json");
        assert_eq!(canonical_digest(&a), canonical_digest(&b));
        let c: Value = serde_json::from_str(r#"{"b":2,"a":{"y":[1,2],"x":"s"}}"#).expect("json");
        assert_ne!(canonical_digest(&a), canonical_digest(&c));
        let mut recent = Recent::default();
        assert!(recent.insert(canonical_digest(&a)));
        assert!(!recent.insert(canonical_digest(&b)));
    }

    #[test]
    fn events_log_answers_and_times() {
        let body = b"{\"type\":\"a\"}\n{\n \"type\": \"b\"\n}\n\n";
        let objects = split_objects(body);
        assert_eq!(
            objects,
            vec![&b"{\"type\":\"a\"}"[..], &b"{\n \"type\": \"b\"\n}"[..]]
        );
        assert_eq!(events_log_time(1_700_000_000), "2023-11-14 22:13:20");
    }
}
