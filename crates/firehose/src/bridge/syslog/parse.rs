//! Pure parts of the syslog bridge, no I/O: RFC 6587 framing of a TCP stream ([`Framer`]),
//! a syslog message or a JSON line turned into a topic and payload ([`syslog_event`],
//! [`json_event`]), and topic levels made safe ([`topic_level`]).

use std::net::IpAddr;

use bytes::{Buf, Bytes, BytesMut};
use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use syslog_loose::{SyslogSeverity, Variant};

/// Longest topic level made from a host or program name, in bytes.
const MAX_LEVEL: usize = 255;

/// What a [`Framer`] cut from a stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// One message, without its framing (count, newline).
    Message(Bytes),
    /// A message longer than the limit, dropped; its announced or seen length.
    Oversized(usize),
}

/// What the framer is skipping: the rest of an oversized message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    /// Up to and including the next newline.
    Line,
    /// This many more bytes (an octet-counted frame).
    Bytes(usize),
}

/// RFC 6587 framing: each frame is either octet counted (`LEN SP MSG`, recognised by a leading
/// digit, as a syslog message starts with `<`) or ends with a newline (non-transparent
/// framing; a trailing `\r` is removed, and is not counted against the limit: a line of
/// exactly `max` bytes is accepted whether it ends with LF or CRLF). Both may alternate on
/// one connection.
#[derive(Debug)]
pub(crate) struct Framer {
    /// Longest message accepted.
    max: usize,
    /// What is being skipped, if anything.
    skip: Option<Skip>,
    /// Whether octet counting is recognised (not for JSON lines).
    octet_counting: bool,
}

impl Framer {
    /// A framer for syslog streams (octet counting or newlines) when `octet_counting`, else
    /// for newline-delimited lines only.
    pub(crate) fn new(max: usize, octet_counting: bool) -> Framer {
        Framer {
            max,
            skip: None,
            octet_counting,
        }
    }

    /// The next frame in `buf`, consuming it; `None` when more bytes are needed.
    pub(crate) fn next(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        match self.skip {
            Some(Skip::Bytes(n)) => {
                let take = n.min(buf.len());
                buf.advance(take);
                if take < n {
                    self.skip = Some(Skip::Bytes(n - take));
                    return None;
                }
                self.skip = None;
            }
            Some(Skip::Line) => match buf.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    buf.advance(end + 1);
                    self.skip = None;
                }
                None => {
                    buf.clear();
                    return None;
                }
            },
            None => {}
        }
        // Blank lines and NULs between frames (some senders end frames with NUL).
        let blank = buf
            .iter()
            .take_while(|&&b| matches!(b, b'\n' | b'\r' | b'\0'))
            .count();
        buf.advance(blank);
        let first = *buf.first()?;
        if self.octet_counting && first.is_ascii_digit() {
            match octet_count(buf) {
                Count::NeedMore => return None,
                Count::Len(header, len) if len > self.max => {
                    buf.advance(header);
                    self.skip = Some(Skip::Bytes(len));
                    return Some(Frame::Oversized(len));
                }
                Count::Len(header, len) => {
                    if buf.len() < header + len {
                        buf.reserve(header + len - buf.len());
                        return None;
                    }
                    buf.advance(header);
                    return Some(Frame::Message(buf.split_to(len).freeze()));
                }
                // Digits without a space: not a count; read it as a line.
                Count::Absent => {}
            }
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(end) => {
                let mut line = buf.split_to(end + 1);
                line.truncate(end);
                // The `\r` of a CRLF ending is framing: the limit applies to the message.
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                if line.len() > self.max {
                    return Some(Frame::Oversized(line.len()));
                }
                Some(Frame::Message(line.freeze()))
            }
            // Without its newline yet, a line of `max` bytes may be followed by the `\r` of
            // its CRLF: one byte more is over the limit only if it is not that `\r`.
            None if buf.len() > self.max + usize::from(buf.last() == Some(&b'\r')) => {
                let seen = buf.len();
                buf.clear();
                self.skip = Some(Skip::Line);
                Some(Frame::Oversized(seen))
            }
            None => None,
        }
    }

    /// What is left in `buf` when the stream ends: a last line without its newline is a
    /// message; a truncated octet-counted frame is dropped (`Err` with its length so far).
    pub(crate) fn finish(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, usize> {
        let rest = buf.split().freeze();
        if self.skip.is_some() || rest.iter().all(|b| b.is_ascii_whitespace() || *b == 0) {
            return Ok(None);
        }
        if self.octet_counting && rest[0].is_ascii_digit() {
            if let Count::Len(..) | Count::NeedMore = octet_count(&rest) {
                return Err(rest.len());
            }
        }
        Ok(Some(rest))
    }
}

/// `raw` without the line ending a sender may put after a message (`\n`, `\r\n`, NULs):
/// what the limit of a datagram applies to, as for a line.
pub(crate) fn without_line_ending(raw: &[u8]) -> &[u8] {
    let end = raw
        .iter()
        .rposition(|b| !matches!(b, b'\n' | b'\r' | b'\0'))
        .map_or(0, |last| last + 1);
    &raw[..end]
}

/// The head of an octet-counted frame.
enum Count {
    /// Header length (digits and space) and message length.
    Len(usize, usize),
    /// Only digits so far.
    NeedMore,
    /// Not an octet count.
    Absent,
}

/// Reads `LEN SP` at the start of `buf` (at most 9 digits, no leading zero).
fn octet_count(buf: &[u8]) -> Count {
    let digits = buf.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits > 9 || buf.first() == Some(&b'0') {
        return Count::Absent;
    }
    match buf.get(digits) {
        None => Count::NeedMore,
        Some(b' ') => {
            let len = buf[..digits]
                .iter()
                .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
            Count::Len(digits + 1, len)
        }
        Some(_) => Count::Absent,
    }
}

/// A topic level from a host or program name: `/`, `+`, `#` and control characters become
/// `_`, an empty name `-`, and it is cut to 255 bytes.
pub(crate) fn topic_level(raw: &str) -> String {
    let mut level: String = raw
        .trim()
        .chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#') || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if level.len() > MAX_LEVEL {
        let mut end = MAX_LEVEL;
        while !level.is_char_boundary(end) {
            end -= 1;
        }
        level.truncate(end);
    }
    if level.is_empty() {
        "-".to_owned()
    } else {
        level
    }
}

/// A message turned into an event: topic levels and the JSON payload.
#[derive(Debug)]
pub(crate) struct LogEvent {
    /// `<host>` level.
    pub(crate) host: String,
    /// `<app>` level.
    pub(crate) app: String,
    /// The payload.
    pub(crate) payload: Value,
}

/// Time as the payloads carry it: RFC 3339, UTC, milliseconds.
fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A syslog message (RFC 5424 tried first, then RFC 3164) received from `peer` at `now`.
///
/// # Errors
/// Why the message is not syslog: not UTF-8 text is accepted (lossily), but a message
/// without a `<PRI>` or that neither RFC's grammar accepts is refused.
pub(crate) fn syslog_event(
    raw: &[u8],
    peer: IpAddr,
    now: DateTime<Utc>,
) -> Result<LogEvent, &'static str> {
    let text = String::from_utf8_lossy(without_line_ending(raw));
    let text: &str = &text;
    if !text.starts_with('<') {
        return Err("no <PRI> at the start");
    }
    let message = syslog_loose::parse_message_with_year_exact_tz(
        text,
        |_| now.year(),
        Some(Utc),
        Variant::Either,
    )
    .map_err(|_| "neither RFC 5424 nor RFC 3164")?;
    let (Some(facility), Some(severity)) = (message.facility, message.severity) else {
        return Err("no valid <PRI>");
    };
    let host = message
        .hostname
        .map(str::to_owned)
        .unwrap_or_else(|| peer.to_string());
    let app = message.appname.unwrap_or("-").to_owned();
    let mut structured = Map::new();
    for element in &message.structured_data {
        let params: Map<String, Value> = element
            .params()
            .map(|(name, value)| (name.to_string(), Value::String(value)))
            .collect();
        match structured.get_mut(element.id) {
            Some(Value::Object(existing)) => existing.extend(params),
            _ => {
                structured.insert(element.id.to_owned(), Value::Object(params));
            }
        }
    }
    let time = message
        .timestamp
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now);
    let protocol = match message.protocol {
        syslog_loose::Protocol::RFC3164 => "rfc3164",
        syslog_loose::Protocol::RFC5424(_) => "rfc5424",
    };
    let payload = json!({
        "time": rfc3339(time),
        "severity": severity.as_str(),
        "facility": facility.as_str(),
        "host": host,
        "app": message.appname,
        "procid": message.procid.map(|p| p.to_string()),
        "msgid": message.msgid,
        "message": message.msg,
        "structured_data": structured,
        "protocol": protocol,
        "peer": peer.to_string(),
    });
    Ok(LogEvent {
        host: topic_level(&host),
        app: topic_level(&app),
        payload,
    })
}

/// Fields of a JSON line and the names log shippers give them, first match wins.
const JSON_FIELDS: [(&str, &[&str]); 7] = [
    ("host", &["host", "hostname"]),
    ("app", &["app", "appname", "program", "ident"]),
    ("message", &["message", "msg"]),
    ("time", &["time", "timestamp", "@timestamp"]),
    ("procid", &["procid", "pid"]),
    ("msgid", &["msgid"]),
    ("facility", &["facility"]),
];

/// A JSON line (one object) from a log shipper, received from `peer` at `now`: the known
/// fields (see [`JSON_FIELDS`]) normalised like a syslog message, every other member under
/// `fields`.
///
/// # Errors
/// Why the line is refused: not JSON, or not an object.
pub(crate) fn json_event(
    raw: &[u8],
    peer: IpAddr,
    now: DateTime<Utc>,
) -> Result<LogEvent, &'static str> {
    let value: Value = serde_json::from_slice(raw).map_err(|_| "not JSON")?;
    let Value::Object(mut object) = value else {
        return Err("not a JSON object");
    };
    let mut payload = Map::new();
    for (field, names) in JSON_FIELDS {
        let found = names.iter().find_map(|name| object.remove(*name));
        for name in names.iter() {
            object.remove(*name);
        }
        let found = match found {
            Some(Value::Number(n)) if field != "time" => Value::String(n.to_string()),
            Some(v) => v,
            None => Value::Null,
        };
        payload.insert(field.to_owned(), found);
    }
    // Severity: a name, or a number 0-7 (as in syslog) turned into its name.
    let severity = object.remove("severity").or_else(|| object.remove("level"));
    let severity = match severity {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .and_then(severity_name)
            .map(|s| Value::String(s.to_owned()))
            .unwrap_or(Value::Number(n)),
        Some(v) => v,
        None => Value::Null,
    };
    payload.insert("severity".into(), severity);
    let structured = object
        .remove("structured_data")
        .filter(Value::is_object)
        .unwrap_or_else(|| Value::Object(Map::new()));
    payload.insert("structured_data".into(), structured);
    if payload["time"].is_null() {
        payload.insert("time".into(), Value::String(rfc3339(now)));
    }
    let as_text = |v: &Value| v.as_str().map(str::to_owned);
    let host = as_text(&payload["host"]).unwrap_or_else(|| peer.to_string());
    payload.insert("host".into(), Value::String(host.clone()));
    let app = as_text(&payload["app"]).unwrap_or_default();
    payload.insert("peer".into(), Value::String(peer.to_string()));
    payload.insert("fields".into(), Value::Object(object));
    Ok(LogEvent {
        host: topic_level(&host),
        app: topic_level(&app),
        payload: Value::Object(payload),
    })
}

/// The name of syslog severity `n` (0 = emerg ... 7 = debug).
fn severity_name(n: u8) -> Option<&'static str> {
    // A PRI of facility 0 (kern) is the severity alone.
    if n > 7 {
        return None;
    }
    syslog_loose::decompose_pri(n).1.map(SyslogSeverity::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(framer: &mut Framer, input: &[u8]) -> Vec<Frame> {
        let mut buf = BytesMut::from(input);
        std::iter::from_fn(|| framer.next(&mut buf)).collect()
    }

    fn msg(text: &str) -> Frame {
        Frame::Message(Bytes::copy_from_slice(text.as_bytes()))
    }

    #[test]
    fn octet_counting_and_newlines_alternate() {
        let mut framer = Framer::new(100, true);
        let got = frames(&mut framer, b"5 <13>a9 <14>b\nc d<15>x y\r\n\n\0<16>z\n");
        assert_eq!(
            got,
            [
                msg("<13>a"),
                msg("<14>b\nc d"),
                msg("<15>x y"),
                msg("<16>z")
            ]
        );
    }

    #[test]
    fn frames_split_across_reads() {
        let mut framer = Framer::new(100, true);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in [&b"1"[..], b"0 <13>", b"abcd", b"ef<1", b"4>line", b"\n"] {
            buf.extend_from_slice(chunk);
            while let Some(frame) = framer.next(&mut buf) {
                got.push(frame);
            }
        }
        assert_eq!(got, [msg("<13>abcdef"), msg("<14>line")]);
    }

    #[test]
    fn oversized_frames_are_skipped_not_fatal() {
        let mut framer = Framer::new(8, true);
        let mut buf = BytesMut::from(&b"20 <13>0123456789"[..]);
        assert_eq!(framer.next(&mut buf), Some(Frame::Oversized(20)));
        assert_eq!(framer.next(&mut buf), None);
        buf.extend_from_slice(b"abcdef<13>ok\n");
        assert_eq!(framer.next(&mut buf), Some(msg("<13>ok")));
        // A line without newline over the limit: dropped up to its newline.
        buf.extend_from_slice(b"<13>aaaaaaaaaaaaa");
        assert_eq!(framer.next(&mut buf), Some(Frame::Oversized(17)));
        buf.extend_from_slice(b"bbbb\n<13>ok2\n");
        assert_eq!(framer.next(&mut buf), Some(msg("<13>ok2")));
        let mut buf = BytesMut::from(&b"<13>0123456789\n<1>x\n"[..]);
        assert_eq!(framer.next(&mut buf), Some(Frame::Oversized(14)));
        assert_eq!(framer.next(&mut buf), Some(msg("<1>x")));
    }

    #[test]
    fn the_limit_excludes_the_line_ending() {
        let max = 8;
        for ending in [&b"\n"[..], b"\r\n"] {
            let exact = [&b"<13>abcd"[..], ending].concat();
            let over = [&b"<13>abcde"[..], ending].concat();
            let mut framer = Framer::new(max, true);
            assert_eq!(frames(&mut framer, &exact), [msg("<13>abcd")], "{ending:?}");
            assert_eq!(
                frames(&mut framer, &over),
                [Frame::Oversized(9)],
                "{ending:?}"
            );
            // The same lines arriving a byte at a time: the `\r` of an exact line waits for
            // its `\n` instead of making the line oversized.
            let mut framer = Framer::new(max, false);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for byte in exact.iter().chain(&over) {
                buf.extend_from_slice(&[*byte]);
                got.extend(std::iter::from_fn(|| framer.next(&mut buf)));
            }
            assert_eq!(got[0], msg("<13>abcd"), "{ending:?}");
            assert!(matches!(got[1], Frame::Oversized(_)), "{ending:?}: {got:?}");
            assert_eq!(got.len(), 2, "{ending:?}: {got:?}");
        }
    }

    #[test]
    fn finish_keeps_a_last_line_and_drops_a_truncated_frame() {
        let mut framer = Framer::new(100, true);
        let mut buf = BytesMut::from(&b"<13>last"[..]);
        assert_eq!(framer.next(&mut buf), None);
        assert_eq!(
            framer.finish(&mut buf),
            Ok(Some(Bytes::from_static(b"<13>last")))
        );
        let mut buf = BytesMut::from(&b"30 <13>short"[..]);
        assert_eq!(framer.next(&mut buf), None);
        assert_eq!(framer.finish(&mut buf), Err(12));
    }

    #[test]
    fn json_lines_are_not_octet_counted() {
        let mut framer = Framer::new(100, false);
        assert_eq!(frames(&mut framer, b"12 {}\n"), [msg("12 {}")]);
    }

    fn peer() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    #[test]
    fn rfc5424_with_structured_data() {
        let line = br#"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog 42 ID47 [exampleSDID@32473 iut="3" eventSource="Application"] An application event"#;
        let event = syslog_event(line, peer(), Utc::now()).expect("parses");
        assert_eq!(
            (event.host.as_str(), event.app.as_str()),
            ("mymachine.example.com", "evntslog")
        );
        let p = &event.payload;
        assert_eq!(p["time"], "2003-10-11T22:14:15.003Z");
        assert_eq!(p["severity"], "notice");
        assert_eq!(p["facility"], "local4");
        assert_eq!(p["procid"], "42");
        assert_eq!(p["msgid"], "ID47");
        assert_eq!(p["message"], "An application event");
        assert_eq!(
            p["structured_data"]["exampleSDID@32473"]["eventSource"],
            "Application"
        );
        assert_eq!(p["protocol"], "rfc5424");
    }

    #[test]
    fn rfc3164_with_tag_and_pid() {
        let now = Utc::now();
        let event = syslog_event(
            b"<34>Oct 11 22:14:15 mymachine su[230]: 'su root' failed",
            peer(),
            now,
        )
        .expect("parses");
        assert_eq!(
            (event.host.as_str(), event.app.as_str()),
            ("mymachine", "su")
        );
        assert_eq!(event.payload["severity"], "crit");
        assert_eq!(event.payload["facility"], "auth");
        assert_eq!(event.payload["procid"], "230");
        assert_eq!(event.payload["message"], "'su root' failed");
        assert_eq!(event.payload["protocol"], "rfc3164");
    }

    #[test]
    fn garbage_is_refused() {
        for line in [&b"hello world"[..], b"", b"<999>x", b"\xff\xfe"] {
            assert!(syslog_event(line, peer(), Utc::now()).is_err(), "{line:?}");
        }
    }

    #[test]
    fn topic_levels_are_sanitised() {
        assert_eq!(topic_level("a/b+c#d"), "a_b_c_d");
        assert_eq!(topic_level("  "), "-");
        assert_eq!(topic_level("x\0y"), "x_y");
        assert_eq!(topic_level(&"é".repeat(200)).len(), 254);
    }

    #[test]
    fn json_lines_are_normalised() {
        let line = br#"{"hostname":"web1","program":"nginx","msg":"GET /","level":3,"pid":77,"extra":{"a":1}}"#;
        let event = json_event(line, peer(), Utc::now()).expect("parses");
        assert_eq!((event.host.as_str(), event.app.as_str()), ("web1", "nginx"));
        let p = &event.payload;
        assert_eq!(p["message"], "GET /");
        assert_eq!(p["severity"], "err");
        assert_eq!(p["procid"], "77");
        assert_eq!(p["fields"]["extra"]["a"], 1);
        assert!(p["time"].is_string());
        assert!(json_event(b"[1]", peer(), Utc::now()).is_err());
        assert!(json_event(b"{nope", peer(), Utc::now()).is_err());
        let bare = json_event(br#"{"message":"x"}"#, peer(), Utc::now()).expect("parses");
        assert_eq!((bare.host.as_str(), bare.app.as_str()), ("127.0.0.1", "-"));
    }
}
