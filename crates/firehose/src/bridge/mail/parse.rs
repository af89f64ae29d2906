//! Mail to events, and which mail is not published: Launchpad notifications go to
//! `launchpad/...` as lpmqtt made them ([`super::launchpad`]); any other mail to
//! `mail/<bridge>/<sender-domain>` only when the bridge's `publish_other_mail` asks for it,
//! and only from `sender_domains` when that list is set. Everything else is dropped, with the
//! reason, for the bridge to count and log.
//!
//! Pure: bytes in, a verdict out; the IMAP side is in [`super`]. Depends on `mail_parser` and
//! [`super::launchpad`] only.

use mail_parser::{Address, MessageParser, MimeHeaders};
use serde_json::{json, Value};

use super::launchpad::{self, Additions};

/// Longest body put in a payload, in bytes (cut at a character boundary); each of a Launchpad
/// payload's `body` and `body-text` may take this much.
pub(super) const MAX_BODY: usize = 256 * 1024;

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

/// Which mail the bridge publishes besides Launchpad's (see
/// [`MailBridgeConfig`](super::MailBridgeConfig)).
#[derive(Debug, Clone, Copy)]
pub(super) struct Filter<'a> {
    /// `publish_other_mail`: publish mail that is not from Launchpad.
    pub(super) other_mail: bool,
    /// `sender_domains`: when not empty, only mail whose first From address is in one of
    /// these domains (or a subdomain) is considered.
    pub(super) sender_domains: &'a [String],
}

/// What becomes of one message.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Verdict {
    /// Publish this event.
    Publish(MailEvent),
    /// Publish nothing, for this reason (to count and log).
    Drop(String),
}

/// Decides what one raw message becomes for bridge `bridge`.
pub(super) fn verdict(bridge: &str, raw: &[u8], filter: Filter<'_>) -> Verdict {
    let Some(message) = MessageParser::default().parse(raw) else {
        return malformed(bridge, raw, "not a mail message", filter);
    };
    let from = message.from().and_then(first_address);
    let subject = message.subject().map(str::to_owned);
    let message_id = message.message_id().map(str::to_owned);
    if from.is_none() && subject.is_none() && message_id.is_none() {
        return malformed(bridge, raw, "no From, Subject or Message-ID header", filter);
    }
    let domain = from.as_deref().and_then(domain_of);
    if !filter.sender_domains.is_empty()
        && !domain
            .as_deref()
            .is_some_and(|d| allowed(d, filter.sender_domains))
    {
        return Verdict::Drop(format!(
            "the sender's domain ({}) is not in sender_domains",
            domain.as_deref().unwrap_or("none")
        ));
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

    if launchpad::is_launchpad(&message) {
        let additions = Additions {
            subject,
            date,
            message_id,
            body_text: body,
        };
        let (topic, payload) = launchpad::event(&message, additions);
        return Verdict::Publish(MailEvent {
            topic,
            payload,
            malformed: problem,
        });
    }
    if !filter.other_mail {
        return Verdict::Drop(
            "not from Launchpad (no X-Generated-By: Launchpad) and publish_other_mail is off"
                .into(),
        );
    }
    let to: Vec<String> = message
        .to()
        .map(|to| to.iter().filter_map(format_addr).collect())
        .unwrap_or_default();
    Verdict::Publish(MailEvent {
        topic: format!(
            "mail/{bridge}/{}",
            domain.unwrap_or_else(|| "unknown".into())
        ),
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
    })
}

/// A message that could not be read: with `publish_other_mail` (and no `sender_domains`, since
/// it has no sender to check), published to `mail/<bridge>/malformed` with its start.
fn malformed(bridge: &str, raw: &[u8], why: &'static str, filter: Filter<'_>) -> Verdict {
    if !filter.other_mail || !filter.sender_domains.is_empty() {
        return Verdict::Drop(format!("malformed ({why}), not from Launchpad"));
    }
    let text = String::from_utf8_lossy(&raw[..raw.len().min(4096)]).into_owned();
    Verdict::Publish(MailEvent {
        topic: format!("mail/{bridge}/malformed"),
        payload: json!({ "error": why, "raw": text, "size": raw.len() }),
        malformed: Some(why),
    })
}

/// The domain of an address, lower-cased, as one topic level; `None` when it has none.
fn domain_of(address: &str) -> Option<String> {
    let (_, domain) = address.rsplit_once('@')?;
    let domain = level(domain.trim().trim_end_matches('>').trim()).to_lowercase();
    (!domain.is_empty()).then_some(domain)
}

/// Whether `domain` (lower-case) is one of `allowed` or a subdomain of one.
fn allowed(domain: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|entry| {
        let entry = entry.to_ascii_lowercase();
        domain == entry
            || domain
                .strip_suffix(entry.as_str())
                .is_some_and(|head| head.ends_with('.'))
    })
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
pub(super) fn level(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '/' | '+' | '#' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect()
}

/// At most [`MAX_BODY`] bytes of `text`.
pub(super) fn cut(text: &str) -> &str {
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

    const OTHER: Filter<'static> = Filter {
        other_mail: true,
        sender_domains: &[],
    };

    fn publish(verdict: Verdict) -> MailEvent {
        match verdict {
            Verdict::Publish(event) => event,
            Verdict::Drop(why) => panic!("dropped: {why}"),
        }
    }

    fn dropped(verdict: Verdict) -> String {
        match verdict {
            Verdict::Publish(event) => panic!("published: {event:?}"),
            Verdict::Drop(why) => why,
        }
    }

    #[test]
    fn levels_hold_no_separator_wildcard_or_control_character() {
        assert_eq!(level("No/va+#\u{1b}[2J\n"), "No_va___[2J_");
        assert_eq!(
            domain_of("a@ Example.ORG> ").as_deref(),
            Some("example.org")
        );
        assert_eq!(domain_of("nobody"), None);
    }

    const PLAIN: &[u8] = b"From: A <a@Example.org>\r\nTo: b@x.org, C <c@y.org>\r\nSubject: hi\r\n\
Message-ID: <1@x>\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\r\nhello\r\n";

    #[test]
    fn other_mail_and_garbage_only_when_asked_for() {
        let event = publish(verdict("box", PLAIN, OTHER));
        assert_eq!(event.topic, "mail/box/example.org");
        assert_eq!(event.payload["to"], json!(["b@x.org", "C <c@y.org>"]));
        assert_eq!(event.payload["message_id"], "1@x");
        assert_eq!(event.payload["date"], "2026-11-24T10:00:00Z");
        let garbage = b"\xff\xfe garbage with no headers at all";
        let event = publish(verdict("box", garbage, OTHER));
        assert_eq!(event.topic, "mail/box/malformed");
        assert!(event.malformed.is_some());
        assert!(publish(verdict("box", b"", OTHER)).malformed.is_some());

        let off = Filter {
            other_mail: false,
            ..OTHER
        };
        assert!(dropped(verdict("box", PLAIN, off)).contains("not from Launchpad"));
        assert!(dropped(verdict("box", garbage, off)).contains("malformed"));
        let launchpad = b"From: J <1@bugs.launchpad.net>\r\nSubject: [Bug 1] x\r\n\
X-Generated-By: Launchpad (canonical.com)\r\nX-Launchpad-Notification-Type: bug\r\n\
X-Launchpad-Bug: product=nova\r\n\r\nhi\r\n";
        assert_eq!(
            publish(verdict("box", launchpad, off)).topic,
            "launchpad/nova/bug/1"
        );
    }

    #[test]
    fn sender_domains_admit_their_subdomains_only() {
        let domains = ["Launchpad.net".to_owned(), "example.org".to_owned()];
        let only = Filter {
            other_mail: true,
            sender_domains: &domains,
        };
        assert_eq!(
            publish(verdict("box", PLAIN, only)).topic,
            "mail/box/example.org"
        );
        let other = b"From: a@evil-launchpad.net\r\nSubject: x\r\n\r\nhi\r\n";
        assert!(dropped(verdict("box", other, only)).contains("(evil-launchpad.net)"));
        let sub = b"From: a@bugs.launchpad.net\r\nSubject: x\r\n\r\nhi\r\n";
        assert_eq!(
            publish(verdict("box", sub, only)).topic,
            "mail/box/bugs.launchpad.net"
        );
        let nobody = b"Subject: x\r\n\r\nhi\r\n";
        assert!(dropped(verdict("box", nobody, only)).contains("(none)"));
        assert!(dropped(verdict("box", b"", only)).contains("malformed"));
    }
}
