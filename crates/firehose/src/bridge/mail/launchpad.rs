//! Launchpad notification mail as lpmqtt published it: the original Firehose's Launchpad
//! publisher (openstack-infra/lpmqtt: `LPImapWatcher._process_msg` and `_process_bug` in
//! `lpmqtt/lp.py` make the payload, `process_event` in `lpmqtt/daemon.py` the topic), rule by
//! rule, so that its consumers keep working; what Firehose adds goes under keys lpmqtt never
//! wrote ([`Additions`]).
//!
//! lpmqtt's rules, as its code has them:
//! - a message is considered only when its `X-Generated-By` header contains `Launchpad`
//!   ([`is_launchpad`]);
//! - with `X-Launchpad-Notification-Type: bug`: `event-type` is `"bug"`; `commenters` is
//!   `X-Launchpad-Bug-Commenters` split into a list; `bug-reporter` and `bug-modifier` are
//!   `X-Launchpad-Bug-Reporter` and `-Modifier` (`null` without them); `tags` is
//!   `X-Launchpad-Bug-Tags` split into a list, only when the header is there and not empty;
//!   `bug-number` is the second word of the bracketed group that starts the subject
//!   (`[Bug 1234]` gives `"1234"`), absent when there is none; then every `key=value` pair of
//!   the first `X-Launchpad-Bug` header (`;`-separated; a pair with more or fewer than one
//!   `=` is skipped), `product` written `project`; last `body`;
//! - any other Launchpad notification: every header whose name starts with `X-Launchpad`, under
//!   its name as written, with the value of its first occurrence, and `body`;
//! - the topic: `launchpad`, then `/<project>` if the payload has `project`, then
//!   `/<event-type>` if it has that too, then `/<bug-number>` likewise: levels filled left to
//!   right while known, so a bug whose first task is a distribution's (no `product`) and every
//!   other notification go to `launchpad`;
//! - header values are as Python's `email` returned them: raw (RFC 2047 words left encoded),
//!   without the blanks after the colon; `body` is the message's body as it came, still
//!   transfer-encoded (quoted-printable for Launchpad's bug mail, with its CRLF line ends).
//!
//! Where Firehose differs, on purpose: folded headers are unfolded (lpmqtt kept the line
//! break inside the value, so a long commenters list gave names ending in `"\r\n"`), lists
//! never hold empty names, and the mail lpmqtt died on is published rather than lost:
//! `body` of a multipart message is its whole MIME body as text (lpmqtt's `get_payload()`
//! returned a list and `json.dumps` raised), invalid UTF-8 becomes U+FFFD, a bug notification
//! without `X-Launchpad-Bug` or `-Commenters` has no pairs or `commenters: []`, and a subject
//! whose bracketed group has one word has no `bug-number`.
//!
//! Pure: a parsed message in, topic and JSON out. Depends on `mail_parser` and
//! [`super::parse`]'s helpers only.

use mail_parser::{Header, Message};
use serde_json::{Map, Value};

use super::parse::{cut, level};

/// What Firehose adds to lpmqtt's payload, each under a key lpmqtt never wrote, inserted only
/// when the payload does not hold that key already (lpmqtt's keys win).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Additions {
    /// `subject`: the Subject, unfolded, RFC 2047 words decoded.
    pub(super) subject: Option<String>,
    /// `date`: the Date header in RFC 3339.
    pub(super) date: Option<String>,
    /// `message-id`: the Message-ID without its angle brackets.
    pub(super) message_id: Option<String>,
    /// `body-text`: the first text part, transfer encoding and charset decoded, LF line ends.
    pub(super) body_text: String,
}

/// Whether lpmqtt would have considered the message: its first `X-Generated-By` header
/// contains `Launchpad` (case-sensitive, as Python's `in`). Anyone can write that header: it
/// tells Launchpad's mail from other mail, it proves nothing.
pub(super) fn is_launchpad(message: &Message<'_>) -> bool {
    first(message, "X-Generated-By").is_some_and(|v| v.contains("Launchpad"))
}

/// The topic and payload of a Launchpad notification ([`is_launchpad`]).
pub(super) fn event(message: &Message<'_>, additions: Additions) -> (String, Value) {
    let body = Value::String(raw_body(message));
    let bug = first(message, "X-Launchpad-Notification-Type").as_deref() == Some("bug");
    let mut payload = if bug {
        bug_payload(message, additions.subject.as_deref())
    } else {
        notification_payload(message)
    };
    payload.insert("body".into(), body);
    let mut added = vec![
        ("subject", additions.subject.clone().map(Value::String)),
        ("date", additions.date.map(Value::String)),
        ("message-id", additions.message_id.map(Value::String)),
    ];
    if bug {
        let kind = bug_event(additions.subject.as_deref(), &additions.body_text);
        let tasks: Vec<Value> = all(message, "X-Launchpad-Bug")
            .map(|header| Value::Object(pairs(&header)))
            .collect();
        added.push(("bug-event", Some(Value::String(kind.into()))));
        added.push(("tasks", Some(Value::Array(tasks))));
    }
    added.push(("body-text", Some(Value::String(additions.body_text))));
    for (key, value) in added {
        payload
            .entry(key)
            .or_insert_with(|| value.unwrap_or(Value::Null));
    }
    (topic(&payload), Value::Object(payload))
}

/// lpmqtt's `_process_bug`, `body` apart.
fn bug_payload(message: &Message<'_>, subject: Option<&str>) -> Map<String, Value> {
    let mut payload = Map::new();
    payload.insert("event-type".into(), Value::String("bug".into()));
    let commenters = first(message, "X-Launchpad-Bug-Commenters").unwrap_or_default();
    payload.insert("commenters".into(), words(&commenters));
    for (key, header) in [
        ("bug-reporter", "X-Launchpad-Bug-Reporter"),
        ("bug-modifier", "X-Launchpad-Bug-Modifier"),
    ] {
        let value = first(message, header).map_or(Value::Null, Value::String);
        payload.insert(key.into(), value);
    }
    if let Some(tags) = first(message, "X-Launchpad-Bug-Tags").filter(|t| !t.is_empty()) {
        payload.insert("tags".into(), words(&tags));
    }
    if let Some(number) = subject.and_then(bug_number) {
        payload.insert("bug-number".into(), Value::String(number));
    }
    if let Some(header) = first(message, "X-Launchpad-Bug") {
        payload.extend(pairs(&header));
    }
    payload
}

/// lpmqtt's payload for Launchpad notifications other than bugs, `body` apart: every
/// `X-Launchpad*` header under its name as written, with its first occurrence's value.
fn notification_payload(message: &Message<'_>) -> Map<String, Value> {
    let mut payload = Map::new();
    for header in message.headers() {
        let name = header.name();
        if name.starts_with("X-Launchpad") && !payload.contains_key(name) {
            payload.insert(name.to_owned(), Value::String(value(message, header)));
        }
    }
    payload
}

/// `launchpad`, then the payload's `project`, `event-type` and `bug-number` while present.
fn topic(payload: &Map<String, Value>) -> String {
    let mut topic = String::from("launchpad");
    for key in ["project", "event-type", "bug-number"] {
        match payload.get(key).and_then(Value::as_str) {
            Some(part) => {
                topic.push('/');
                topic.push_str(&level(part));
            }
            None => break,
        }
    }
    topic
}

/// `[Bug 1234] ...` gives `1234`: the second space-separated word of the bracketed group that
/// starts the subject, without its `]`, as lpmqtt took it.
fn bug_number(subject: &str) -> Option<String> {
    let rest = subject.strip_prefix('[')?;
    let group = &rest[..rest.find(']')? + 1];
    if group.contains('\n') {
        return None;
    }
    let word = group.split(' ').nth(1)?;
    Some(word.trim_end_matches(']').to_owned())
}

/// The `key=value` pairs of one `X-Launchpad-Bug` header, `product` renamed `project`.
fn pairs(header: &str) -> Map<String, Value> {
    let mut map = Map::new();
    for info in header.split(';') {
        let parts: Vec<&str> = info.trim_start().split('=').collect();
        if let [key, value] = parts[..] {
            let key = if key == "product" { "project" } else { key };
            map.insert(key.to_owned(), Value::String(value.to_owned()));
        }
    }
    map
}

/// `new` for a `[NEW]` subject, `change` when the text starts with Launchpad's `** ` lines
/// (`** Changed in: nova`), `comment` otherwise.
fn bug_event(subject: Option<&str>, text: &str) -> &'static str {
    if subject.is_some_and(|s| s.contains("[NEW]")) {
        "new"
    } else if text.trim_start().starts_with("** ") {
        "change"
    } else {
        "comment"
    }
}

/// A space-separated header as a list of its words.
fn words(text: &str) -> Value {
    Value::Array(
        text.split_whitespace()
            .map(|w| Value::String(w.to_owned()))
            .collect(),
    )
}

/// The value of the first header `name` (any case), as lpmqtt read it but unfolded.
fn first(message: &Message<'_>, name: &str) -> Option<String> {
    all(message, name).next()
}

/// The values of every header `name` (any case), in order.
fn all<'m>(message: &'m Message<'_>, name: &'m str) -> impl Iterator<Item = String> + 'm {
    message
        .headers()
        .iter()
        .filter(move |h| h.name().eq_ignore_ascii_case(name))
        .map(move |h| value(message, h))
}

/// A header's raw value: without the blanks after the colon, line breaks removed (unfolded),
/// RFC 2047 words left as they are.
fn value(message: &Message<'_>, header: &Header<'_>) -> String {
    let (start, end) = (header.offset_start() as usize, header.offset_end() as usize);
    let raw = message.raw_message().get(start..end).unwrap_or_default();
    String::from_utf8_lossy(raw)
        .trim_start_matches([' ', '\t'])
        .chars()
        .filter(|c| !matches!(c, '\r' | '\n'))
        .collect()
}

/// The message's body as it came (everything after the header), still transfer-encoded;
/// invalid UTF-8 replaced by U+FFFD, at most [`super::parse::MAX_BODY`] bytes.
fn raw_body(message: &Message<'_>) -> String {
    let root = message.root_part();
    let (start, end) = (
        root.raw_body_offset() as usize,
        root.raw_end_offset() as usize,
    );
    let raw = message.raw_message().get(start..end).unwrap_or_default();
    cut(&String::from_utf8_lossy(raw)).to_owned()
}

#[cfg(test)]
mod tests {
    use mail_parser::MessageParser;
    use serde_json::json;

    use super::*;

    fn parse(raw: &[u8]) -> (String, Value) {
        let message = MessageParser::default().parse(raw).expect("parses");
        assert!(is_launchpad(&message));
        let additions = Additions {
            subject: message.subject().map(str::to_owned),
            body_text: message.body_text(0).unwrap_or_default().into_owned(),
            ..Additions::default()
        };
        event(&message, additions)
    }

    const HEAD: &str = "X-Generated-By: Launchpad (canonical.com); Revision=\"1\"\r\n";

    #[test]
    fn bug_mail_keys_and_topic_as_lpmqtt_wrote_them() {
        let raw = format!(
            "{HEAD}Subject: [Bug 1234] [NEW] It broke\r\n\
             X-Launchpad-Notification-Type: bug\r\n\
             X-Launchpad-Bug: product=nova; status=New; importance=Undecided;\r\n assignee=None; odd=a=b;\r\n\
             X-Launchpad-Bug: distribution=ubuntu; sourcepackage=nova\r\n\
             X-Launchpad-Bug-Tags: compute libvirt\r\n\
             X-Launchpad-Bug-Commenters: jane\r\n bob\r\n\
             X-Launchpad-Bug-Reporter: =?utf-8?q?Jos=C3=A9?= (jose)\r\n\
             Content-Transfer-Encoding: quoted-printable\r\n\r\nIt broke =E2=80=94 badly.\r\n"
        );
        let (topic, p) = parse(raw.as_bytes());
        assert_eq!(topic, "launchpad/nova/bug/1234");
        assert_eq!(p["event-type"], "bug");
        assert_eq!(p["project"], "nova");
        assert_eq!(p["assignee"], "None");
        assert!(p.get("odd").is_none(), "lpmqtt skipped pairs with two '='");
        assert!(p.get("product").is_none());
        assert_eq!(p["tags"], json!(["compute", "libvirt"]));
        assert_eq!(p["commenters"], json!(["jane", "bob"]));
        assert_eq!(p["bug-reporter"], "=?utf-8?q?Jos=C3=A9?= (jose)");
        assert_eq!(p["bug-modifier"], Value::Null);
        assert_eq!(p["bug-number"], "1234");
        assert_eq!(p["body"], "It broke =E2=80=94 badly.\r\n");
        assert_eq!(p["body-text"], "It broke \u{2014} badly.\r\n");
        assert_eq!(p["bug-event"], "new");
        assert_eq!(p["tasks"][1]["distribution"], "ubuntu");
        assert_eq!(p["tasks"][0]["project"], "nova");
        assert_eq!(p["subject"], "[Bug 1234] [NEW] It broke");
    }

    #[test]
    fn levels_stop_at_the_first_unknown() {
        // The first task is a distribution's: no project, so no level at all.
        let raw = format!(
            "{HEAD}Subject: [Bug 9] Re: x\r\nX-Launchpad-Notification-Type: bug\r\n\
             X-Launchpad-Bug: distribution=ubuntu; status=New\r\n\r\n** Changed in: x\r\n"
        );
        let (topic, p) = parse(raw.as_bytes());
        assert_eq!(topic, "launchpad");
        assert_eq!(p["bug-number"], "9");
        assert_eq!(p["bug-event"], "change");
        assert_eq!(
            p["commenters"],
            json!([]),
            "lpmqtt died here; an empty list"
        );
        assert!(p.get("tags").is_none(), "no tags header, no tags key");
        // No bug number in the subject: the topic stops after the event type.
        let raw = format!(
            "{HEAD}Subject: [NEW] x\r\nX-Launchpad-Notification-Type: bug\r\n\
             X-Launchpad-Bug: product=a/b+c; status=New\r\nX-Launchpad-Bug-Tags: \r\n\r\nhi\r\n"
        );
        let (topic, p) = parse(raw.as_bytes());
        assert_eq!(topic, "launchpad/a_b_c/bug");
        assert!(p.get("bug-number").is_none());
        assert!(p.get("tags").is_none(), "an empty tags header, no tags key");
        assert_eq!(p["bug-event"], "new");
    }

    #[test]
    fn other_notifications_carry_every_x_launchpad_header() {
        let raw = format!(
            "{HEAD}Subject: [Merge] lp:~a/nova/b into lp:nova\r\n\
             X-Launchpad-Notification-Type: code-review\r\n\
             X-Launchpad-Project: nova\r\nX-Launchpad-Project: second\r\n\
             x-launchpad-lower: not lpmqtt's prefix\r\n\
             X-Launchpad-Branch: ~a/nova/b\r\n\r\nReview: Approve\r\n"
        );
        let (topic, p) = parse(raw.as_bytes());
        assert_eq!(topic, "launchpad");
        assert_eq!(p["X-Launchpad-Notification-Type"], "code-review");
        assert_eq!(p["X-Launchpad-Project"], "nova", "the first occurrence");
        assert_eq!(p["X-Launchpad-Branch"], "~a/nova/b");
        assert!(p.get("x-launchpad-lower").is_none());
        assert!(p.get("bug-event").is_none() && p.get("tasks").is_none());
        assert_eq!(p["body"], "Review: Approve\r\n");
        assert_eq!(p["subject"], "[Merge] lp:~a/nova/b into lp:nova");
    }

    #[test]
    fn a_multipart_body_is_published_whole_where_lpmqtt_died() {
        let raw = format!(
            "{HEAD}Subject: [Merge] x\r\nX-Launchpad-Notification-Type: code-review\r\n\
             MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nReview: Approve\r\n\
             --b\r\nContent-Type: text/x-diff\r\n\r\n+a\r\n--b--\r\n"
        );
        let (_, p) = parse(raw.as_bytes());
        let body = p["body"].as_str().expect("body");
        assert!(
            body.starts_with("--b\r\nContent-Type: text/plain"),
            "{body:?}"
        );
        assert!(body.contains("+a\r\n--b--"), "{body:?}");
        assert_eq!(p["body-text"], "Review: Approve");
    }

    #[test]
    fn only_mail_generated_by_launchpad_is_considered() {
        let message = MessageParser::default()
            .parse(b"X-Generated-By: launchpad\r\nSubject: x\r\n\r\nhi\r\n")
            .expect("parses");
        assert!(!is_launchpad(&message), "case-sensitive, as lpmqtt's `in`");
        let message = MessageParser::default()
            .parse(b"Subject: [Bug 1] x\r\nX-Launchpad-Bug: product=nova\r\n\r\nhi\r\n")
            .expect("parses");
        assert!(!is_launchpad(&message));
    }

    #[test]
    fn bug_numbers_as_lpmqtt_split_them() {
        assert_eq!(
            bug_number("[Bug 1987654] Re: x").as_deref(),
            Some("1987654")
        );
        assert_eq!(bug_number("[Bug 1 extra] x").as_deref(), Some("1"));
        assert_eq!(bug_number("[NEW] x"), None, "one word: lpmqtt died");
        assert_eq!(bug_number("Re: [Bug 1] x"), None, "not at the start");
        assert_eq!(bug_number("[Bug 1"), None);
    }
}
