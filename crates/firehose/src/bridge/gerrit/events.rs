//! Gerrit events as data: the topic of an event, its identity for recognising the overlap of
//! the events-log plugin's answers with the streams, and those answers. Pure functions and
//! data, tested below.

use std::collections::{HashMap, VecDeque};

use ring::digest;
use serde_json::Value;

/// Most events remembered to recognise them in the events-log plugin's answer after a
/// reconnection (see [`Published`]).
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
        /// The canonical digest, to recognise the event in the events-log plugin's answer.
        digest: Digest,
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
        // No project: an empty level, `gerrit//project-created`, as germqtt's `get_topic`
        // joined its empty string.
        .unwrap_or_default();
    Line::Event {
        topic: format!("{prefix}/{project}/{kind}"),
        created_on: value.get("eventCreatedOn").and_then(Value::as_i64),
        digest: canonical_digest(&value),
    }
}

/// The project of an event, as germqtt's `get_topic` looked for it: `project` (a string, or
/// an object with `name` as some plugins send, on which germqtt failed), else
/// `change.project`, else `refUpdate.project`.
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

/// A topic level: MQTT wildcards, `/` and control characters become `_`.
fn level(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '+' | '#' | '/' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect()
}

/// SHA-256 of the value written with object keys sorted and no whitespace, so that the same
/// event read from the stream and from the events-log plugin has the same digest.
pub(crate) fn canonical_digest(value: &Value) -> Digest {
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

/// The digest of an event ([`canonical_digest`]).
pub(crate) type Digest = [u8; 32];

/// The events published lately, in order: what the events-log plugin's next answer may repeat.
///
/// The plugin is asked for the events since the newest `eventCreatedOn` seen, less a second,
/// so only events of that second or later can be in its answer: older ones are forgotten as
/// newer ones come. At most [`RECENT_CAPACITY`] are kept (a burst in one second, or events
/// without `eventCreatedOn`).
#[derive(Debug, Default)]
pub(crate) struct Published {
    /// `eventCreatedOn` and digest, oldest first.
    events: VecDeque<(Option<i64>, Digest)>,
}

impl Published {
    /// Records an event just published; `newest` is the newest `eventCreatedOn` seen so far.
    pub(crate) fn record(&mut self, created_on: Option<i64>, digest: Digest, newest: Option<i64>) {
        self.events.push_back((created_on, digest));
        let oldest_wanted = newest.map(|t| t.saturating_sub(1));
        while let Some(&(Some(t), _)) = self.events.front() {
            if oldest_wanted.is_some_and(|oldest| t < oldest) {
                self.events.pop_front();
            } else {
                break;
            }
        }
        while self.events.len() > RECENT_CAPACITY {
            self.events.pop_front();
        }
    }

    /// How many times each recent event was published: a refill's event is dropped while its
    /// count lasts, so that two identical events published before are two dropped, and a third
    /// identical one in the plugin's answer is published.
    pub(crate) fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for (_, digest) in &self.events {
            *counts.0.entry(*digest).or_insert(0) += 1;
        }
        counts
    }
}

/// A multiset of digests ([`Published::counts`]).
#[derive(Debug, Default)]
pub(crate) struct Counts(HashMap<Digest, usize>);

impl Counts {
    /// Takes one `digest` out; false if none is left.
    pub(crate) fn take(&mut self, digest: &Digest) -> bool {
        match self.0.get_mut(digest) {
            Some(count) if *count > 0 => {
                *count -= 1;
                true
            }
            _ => false,
        }
    }
}

/// The events a refill from the events-log plugin published, in order, while the new stream's
/// first lines are read.
///
/// The new stream was opened before the plugin was asked, so the events that happened in
/// between are in both: the end of the refill is the start of the stream. A stream line is
/// taken for the refill's event when it is the same as one of the refill's events not yet
/// passed, and everything before that one is passed; the first line that matches none ends
/// the overlap for good. Two identical lines of the stream are thus two events unless the
/// refill has two identical events there too.
#[derive(Debug, Default)]
pub(crate) struct Overlap {
    /// The refill's events not yet passed, oldest first.
    refill: VecDeque<Digest>,
}

impl Overlap {
    /// The overlap after a refill that published `refill`, in order.
    pub(crate) fn after(refill: Vec<Digest>) -> Overlap {
        Overlap {
            refill: refill.into(),
        }
    }

    /// Whether the stream line with `digest` is an event the refill published (drop it).
    pub(crate) fn take(&mut self, digest: &Digest) -> bool {
        match self.refill.iter().position(|d| d == digest) {
            Some(at) => {
                self.refill.drain(..=at);
                true
            }
            None => {
                self.refill.clear();
                false
            }
        }
    }
}

/// Splits an events-log answer (JSON values one after the other, usually one object per line)
/// into the raw bytes of each value, in order, and what follows the last one: empty (or
/// whitespace) unless the answer holds something that is not JSON, from which on nothing can
/// be told apart. Values that are not events are refused one by one by [`parse_line`].
pub(crate) fn split_objects(body: &[u8]) -> (Vec<&[u8]>, &[u8]) {
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
    (out, body.get(start..).unwrap_or_default())
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
        // germqtt's topic for events without a project: an empty level.
        assert_eq!(
            topic(r#"{"type":"dropped-output"}"#),
            "gerrit//dropped-output"
        );
        assert_eq!(
            topic(r#"{"type":"project-created","projectName":"a/b","projectHead":"x"}"#),
            "gerrit//project-created"
        );
        assert_eq!(topic(r#"{"type":"x","project":"/"}"#), "gerrit//x");
        assert_eq!(topic(r#"{"type":"a+b","project":"x#y"}"#), "gerrit/x_y/a_b");
        assert_eq!(
            topic(r#"{"type":"a\u001b[2J","project":"x\ny/z\u0000"}"#),
            "gerrit/x_y/z_/a_[2J"
        );
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
    }

    fn d(n: u8) -> Digest {
        [n; 32]
    }

    #[test]
    fn refills_drop_what_was_published_as_many_times_as_it_was() {
        let mut published = Published::default();
        published.record(Some(100), d(1), Some(100));
        published.record(Some(200), d(2), Some(200));
        published.record(Some(200), d(2), Some(200));
        published.record(None, d(3), Some(200));
        // Older than the second before the newest: the plugin's answer cannot have it.
        let mut counts = published.counts();
        assert!(!counts.take(&d(1)));
        assert!(counts.take(&d(2)));
        assert!(counts.take(&d(2)));
        assert!(!counts.take(&d(2)), "a third identical event is new");
        assert!(counts.take(&d(3)));
    }

    #[test]
    fn the_overlap_is_a_prefix_of_the_stream_in_the_refill_s_order() {
        // The stream started between the refill's 1st and 2nd events.
        let mut overlap = Overlap::after(vec![d(1), d(2), d(3)]);
        assert!(overlap.take(&d(2)));
        assert!(overlap.take(&d(3)));
        assert!(
            !overlap.take(&d(3)),
            "an identical line after the overlap is new"
        );
        assert!(!overlap.take(&d(1)), "the overlap has ended");
        // Identical events: one in the overlap, the next ones new.
        let mut overlap = Overlap::after(vec![d(7), d(7)]);
        assert!(overlap.take(&d(7)));
        assert!(overlap.take(&d(7)));
        assert!(!overlap.take(&d(7)));
        // A first line the refill does not have: no overlap at all.
        let mut overlap = Overlap::after(vec![d(1), d(2)]);
        assert!(!overlap.take(&d(5)));
        assert!(!overlap.take(&d(2)));
        // Nothing refilled: nothing dropped.
        assert!(!Overlap::default().take(&d(1)));
    }

    #[test]
    fn events_log_answers_and_times() {
        let body = b"{\"type\":\"a\"}\n{\n \"type\": \"b\"\n}\n\n";
        let (objects, rest) = split_objects(body);
        assert_eq!(
            objects,
            vec![&b"{\"type\":\"a\"}"[..], &b"{\n \"type\": \"b\"\n}"[..]]
        );
        assert!(rest.trim_ascii().is_empty(), "{rest:?}");
        let (objects, rest) = split_objects(b"{\"type\":\"a\"}\n{\"type\":\"b\",\"cut");
        assert_eq!(objects, vec![&b"{\"type\":\"a\"}"[..]]);
        assert_eq!(rest, b"\n{\"type\":\"b\",\"cut");
        assert_eq!(events_log_time(1_700_000_000), "2023-11-14 22:13:20");
    }
}
