//! Mail to events: Launchpad bug notifications to `launchpad/<project>/<event-type>/<bug>`
//! (lpmqtt's payload fields), any other mail to `mail/<bridge>/<sender-domain>`.
//!
//! Pure: bytes in, topic and JSON out; the IMAP side is in [`super`].

use mail_parser::{Address, MessageParser, MimeHeaders};
use serde_json::{json, Map, Value};

/// Longest text body put in a payload, in bytes (cut at a character boundary).
const MAX_BODY: usize = 256 * 1024;

/// What one message becomes.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct MailEvent {
    /// The topic.
    pub(super) topic: String,
    /// The JSON payload.
    pub(super) payload: Value,
    /// Why the message is malformed (it is still published, best effort).
    pub(super) malformed: Option<&'static str>,
}

/// Turns one raw message into an event for bridge `bridge`.
pub(super) fn to_event(bridge: &str, raw: &[u8]) -> MailEvent {
    let Some(message) = MessageParser::default().parse(raw) else {
        return malformed(bridge, raw, "not a mail message");
    };
    let from = message.from().and_then(first_address);
    let subject = message.subject().map(str::to_owned);
    let message_id = message.message_id().map(str::to_owned);
    if from.is_none() && subject.is_none() && message_id.is_none() {
        return malformed(bridge, raw, "no From, Subject or Message-ID header");
    }
    let mut problem = None;
    if let Some(ct) = message.content_type() {
        if ct.ctype().eq_ignore_ascii_case("multipart") && ct.attribute("boundary").is_none() {
            problem = Some("multipart message without a boundary");
        }
    }
    let body = message
        .body_text(0)
        .map(|text| cut(&text).replace("\r\n", "\n"))
        .unwrap_or_default();
    let date = message.date().map(|d| d.to_rfc3339());

    if let Some(event) = launchpad(&message, subject.as_deref(), &body, date.as_deref()) {
        return MailEvent {
            malformed: problem,
            ..event
        };
    }
    let to: Vec<String> = message
        .to()
        .map(|to| to.iter().filter_map(format_addr).collect())
        .unwrap_or_default();
    let domain = from
        .as_deref()
        .and_then(|addr| addr.rsplit_once('@'))
        .map(|(_, domain)| level(domain.trim_end_matches('>')))
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "unknown".into());
    MailEvent {
        topic: format!("mail/{bridge}/{domain}"),
        payload: json!({
            "from": message.from().and_then(|a| a.first()).and_then(format_addr),
            "from_address": from,
            "to": to,
            "subject": subject,
            "date": date,
            "message_id": message_id,
            "body": body,
        }),
        malformed: problem,
    }
}

/// A message that could not be read: published to `mail/<bridge>/malformed` with its start.
fn malformed(bridge: &str, raw: &[u8], why: &'static str) -> MailEvent {
    let text = String::from_utf8_lossy(&raw[..raw.len().min(4096)]).into_owned();
    MailEvent {
        topic: format!("mail/{bridge}/malformed"),
        payload: json!({ "error": why, "raw": text, "size": raw.len() }),
        malformed: Some(why),
    }
}

/// A Launchpad bug notification (it has an `X-Launchpad-Bug` header), as lpmqtt made it.
fn launchpad(
    message: &mail_parser::Message<'_>,
    subject: Option<&str>,
    body: &str,
    date: Option<&str>,
) -> Option<MailEvent> {
    let header = |name: &str| message.header_raw(name).map(unfold);
    let bug_headers: Vec<String> = message
        .headers()
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case("X-Launchpad-Bug"))
        .filter_map(|h| {
            let (start, end) = (h.offset_start() as usize, h.offset_end() as usize);
            message
                .raw_message()
                .get(start..end)
                .map(|raw| unfold(&String::from_utf8_lossy(raw)))
        })
        .collect();
    if bug_headers.is_empty() {
        return None;
    }
    let tasks: Vec<Map<String, Value>> = bug_headers.iter().map(|h| bug_fields(h)).collect();
    let mut payload = tasks.first().cloned().unwrap_or_default();
    let bug_number = subject.and_then(bug_number);
    let event_type = event_type(subject.unwrap_or_default(), body);
    for (key, name) in [
        ("tags", "X-Launchpad-Bug-Tags"),
        ("reporter", "X-Launchpad-Bug-Reporter"),
        ("modifier", "X-Launchpad-Bug-Modifier"),
    ] {
        if let Some(value) = header(name) {
            payload.insert(key.into(), Value::String(value));
        }
    }
    if let Some(commenters) = header("X-Launchpad-Bug-Commenters") {
        let list: Vec<Value> = commenters
            .split_whitespace()
            .map(|c| Value::String(c.into()))
            .collect();
        payload.insert("commenters".into(), Value::Array(list));
    }
    for (key, value) in [
        ("bug_number", bug_number.clone()),
        ("event_type", Some(event_type.to_owned())),
        ("subject", subject.map(str::to_owned)),
        ("date", date.map(str::to_owned)),
        ("message_id", message.message_id().map(str::to_owned)),
    ] {
        payload.insert(key.into(), value.map_or(Value::Null, Value::String));
    }
    payload.insert("body".into(), Value::String(body.to_owned()));
    if tasks.len() > 1 {
        payload.insert(
            "tasks".into(),
            Value::Array(tasks.into_iter().map(Value::Object).collect()),
        );
    }
    let mut topic = String::from("launchpad");
    let project = payload.get("project").and_then(Value::as_str).map(level);
    for part in [project, Some(event_type.to_owned()), bug_number] {
        match part.filter(|p| !p.is_empty()) {
            Some(part) => {
                topic.push('/');
                topic.push_str(&part);
            }
            None => break,
        }
    }
    Some(MailEvent {
        topic,
        payload: Value::Object(payload),
        malformed: None,
    })
}

/// `product=nova; status=New; importance=Undecided; assignee=None;` as JSON fields
/// (`product` becomes `project`).
fn bug_fields(header: &str) -> Map<String, Value> {
    header
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| {
            let key = match key.trim() {
                "product" => "project",
                other => other,
            };
            (key.to_owned(), Value::String(value.trim().to_owned()))
        })
        .filter(|(key, _)| !key.is_empty())
        .collect()
}

/// The number in `[Bug 1234567]`.
fn bug_number(subject: &str) -> Option<String> {
    let start = subject.find("[Bug ")? + 5;
    let digits: String = subject[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!digits.is_empty()).then_some(digits)
}

/// `new` for `[NEW]` subjects, `change` when the body starts with Launchpad's `** ` change
/// lines, `comment` otherwise.
fn event_type(subject: &str, body: &str) -> &'static str {
    if subject.contains("[NEW]") {
        "new"
    } else if body.trim_start().starts_with("** ") {
        "change"
    } else {
        "comment"
    }
}

/// A header value on one line.
fn unfold(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The first address of a header, bare.
fn first_address(address: &Address<'_>) -> Option<String> {
    address.first()?.address().map(str::to_owned)
}

/// `Name <addr>` or `addr`.
fn format_addr(addr: &mail_parser::Addr<'_>) -> Option<String> {
    match (addr.name(), addr.address()) {
        (Some(name), Some(address)) => Some(format!("{name} <{address}>")),
        (None, Some(address)) => Some(address.to_owned()),
        (Some(name), None) => Some(name.to_owned()),
        (None, None) => None,
    }
}

/// One safe topic level: separators, wildcards and control characters become `_`.
fn level(text: &str) -> String {
    text.trim()
        .chars()
        .map(|c| match c {
            '/' | '+' | '#' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect::<String>()
        .to_lowercase()
}

/// At most [`MAX_BODY`] bytes of `text`.
fn cut(text: &str) -> &str {
    if text.len() <= MAX_BODY {
        return text;
    }
    let mut end = MAX_BODY;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launchpad_fields_and_topic() {
        let raw = b"From: Jane <1234@bugs.launchpad.net>\r\nTo: me@example.org\r\n\
Subject: [Bug 1234] [NEW] It broke\r\n\
X-Launchpad-Bug: product=nova; status=New; importance=Undecided;\r\n assignee=None;\r\n\
X-Launchpad-Bug-Tags: compute libvirt\r\n\
X-Launchpad-Bug-Commenters: jane bob\r\n\
X-Launchpad-Bug-Reporter: Jane (jane)\r\n\r\nPublic bug reported:\r\n\r\nIt broke.\r\n";
        let event = to_event("lp", raw);
        assert_eq!(event.topic, "launchpad/nova/new/1234");
        let p = &event.payload;
        assert_eq!(p["project"], "nova");
        assert_eq!(p["assignee"], "None");
        assert_eq!(p["tags"], "compute libvirt");
        assert_eq!(p["commenters"], json!(["jane", "bob"]));
        assert_eq!(p["bug_number"], "1234");
        assert!(p["body"].as_str().unwrap_or_default().contains("It broke."));
        assert_eq!(event.malformed, None);
    }

    #[test]
    fn levels_stop_at_the_first_unknown() {
        let raw = b"From: x@bugs.launchpad.net\r\nSubject: no number\r\n\
X-Launchpad-Bug: status=New\r\n\r\n** Changed in: x\r\n";
        let event = to_event("lp", raw);
        assert_eq!(event.topic, "launchpad");
        assert_eq!(event.payload["event_type"], "change");
    }

    #[test]
    fn levels_hold_no_separator_wildcard_or_control_character() {
        assert_eq!(level(" No/va+#\u{1b}[2J\n "), "no_va___[2j");
    }

    #[test]
    fn other_mail_and_garbage() {
        let raw = b"From: A <a@Example.org>\r\nTo: b@x.org, C <c@y.org>\r\nSubject: hi\r\n\
Message-ID: <1@x>\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\r\nhello\r\n";
        let event = to_event("box", raw);
        assert_eq!(event.topic, "mail/box/example.org");
        assert_eq!(event.payload["to"], json!(["b@x.org", "C <c@y.org>"]));
        assert_eq!(event.payload["message_id"], "1@x");
        assert_eq!(event.payload["date"], "2026-11-24T10:00:00Z");
        let event = to_event("box", b"\xff\xfe garbage with no headers at all");
        assert_eq!(event.topic, "mail/box/malformed");
        assert!(event.malformed.is_some());
        assert!(to_event("box", b"").malformed.is_some());
    }
}
