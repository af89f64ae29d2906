//! Text that reaches a log line or a terminal. Whatever a peer sent (client ids, user names,
//! topics, filters, reason strings, a server's error message) is shown with its control
//! characters escaped, so that it can neither end the line and forge the next one (`\n`,
//! `\r`), nor drive the terminal (ESC sequences, BEL), nor turn text around (bidirectional
//! overrides, Unicode line separators).
//!
//! Two layers, so that one forgotten call site is not a hole:
//! - [`LogFields`], the log's field formatter (`cli` installs it): every field value and every
//!   message of every log line, whoever wrote the call, has its control characters escaped.
//! - At call sites, a peer-supplied string is a field formatted with `?` (Debug: quoted, so it
//!   cannot pose as further `key=value` fields of the line either). A test below holds the
//!   broker, the store and `cli` to it. [`escape`] is for text printed on a terminal outside
//!   the log (`firehose pub`, `sub`, `replay` and their errors).
//!
//! A leaf: depends on nothing else in this crate.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;

/// Whether `c` must not reach a log or a terminal as it is: C0 and C1 control characters
/// (newline, carriage return, ESC, BEL, NEL...), DEL, the Unicode line and paragraph
/// separators, and the bidirectional marks, embeddings, overrides and isolates.
fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with every character of [`must_escape`] written as an escape: `\n`, `\r`, `\t`, or
/// `\u{1b}` (Rust's notation). Borrowed when there is nothing to escape.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(must_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if must_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The log's field formatter: the message, then `name=value` for each field, as
/// tracing-subscriber's default one writes them, but with [`escape`] applied to each (its
/// default escapes ESC in messages only, and newlines nowhere). Install it with
/// `tracing_subscriber::fmt().fmt_fields(LogFields)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogFields;

impl<'w> MakeVisitor<Writer<'w>> for LogFields {
    type Visitor = LogFieldsVisitor<'w>;

    fn make_visitor(&self, writer: Writer<'w>) -> LogFieldsVisitor<'w> {
        LogFieldsVisitor {
            writer,
            first: true,
            result: Ok(()),
        }
    }
}

/// Writes the fields of one log line or span for [`LogFields`].
#[derive(Debug)]
pub struct LogFieldsVisitor<'w> {
    /// Where the line is being written.
    writer: Writer<'w>,
    /// Whether no field was written yet (no separating space).
    first: bool,
    /// The first write error, if any.
    result: fmt::Result,
}

impl Visit for LogFieldsVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        // `log` crate records arrive with their metadata as fields, shown elsewhere.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let text = format!("{value:?}");
        let separator = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        self.result = if name == "message" {
            write!(self.writer, "{separator}{}", escape(&text))
        } else {
            let name = name.strip_prefix("r#").unwrap_or(name);
            write!(self.writer, "{separator}{name}={}", escape(&text))
        };
    }
}

impl VisitOutput<fmt::Result> for LogFieldsVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for LogFieldsVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn control_characters_are_escaped_and_plain_text_is_borrowed() {
        assert!(matches!(escape("client-1/ü"), Cow::Borrowed(_)));
        assert_eq!(
            escape("a\nb\rc\td\u{1b}[2J\u{7}\u{85}\u{7f}"),
            "a\\nb\\rc\\td\\u{1b}[2J\\u{7}\\u{85}\\u{7f}"
        );
        assert_eq!(
            escape("x\u{2028}y\u{202E}z\u{2066}"),
            "x\\u{2028}y\\u{202e}z\\u{2066}"
        );
    }

    /// A log writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_field_and_message_of_a_log_line_is_escaped() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(LogFields)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let forged = "x\n2030-01-01T00:00:00Z  INFO firehose: forged\u{1b}[2J";
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("conn", id = %forged);
            let _entered = span.enter();
            tracing::info!(display = %forged, debug = ?forged, r#type = "t", "said {forged}");
        });
        let log = String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("UTF-8");
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(!log.contains('\u{1b}'), "{log}");
        let escaped = "x\\n2030-01-01T00:00:00Z  INFO firehose: forged\\u{1b}[2J";
        for expected in [
            format!("said {escaped} display={escaped} "),
            format!("debug=\"{escaped}\" type=\"t\""),
            format!("conn{{id={escaped}}}"),
        ] {
            assert!(log.contains(&expected), "{expected} not in {log}");
        }
    }

    /// The call-site convention: in the broker, the store and `cli`, a field that holds a
    /// peer-supplied string (named after a client, topic, filter, user, will or reason) is
    /// formatted with `?`, never `%` (Display writes it bare, free to pose as more fields).
    #[test]
    fn peer_strings_are_logged_quoted_in_the_broker_store_and_cli() {
        let bare = regex_lite::Regex::new(
            r"\b(client|topic|filter|user|will|reason)\w*\s*=\s*%|%([\w.]*\.)?(client|topic|filter|user|will|reason)\w*",
        )
        .expect("regex");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut offences = Vec::new();
        let mut seen = 0;
        let mut dirs: Vec<_> = ["broker", "store", "cli"]
            .iter()
            .map(|dir| root.join(dir))
            .collect();
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("source directory") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    seen += 1;
                    let text = std::fs::read_to_string(&path).expect("source file");
                    for (n, line) in text.lines().enumerate() {
                        if bare.is_match(line) {
                            offences.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                        }
                    }
                }
            }
        }
        assert!(
            seen > 20,
            "found only {seen} source files under {}",
            root.display()
        );
        assert!(
            offences.is_empty(),
            "log peer strings with `?`:\n{}",
            offences.join("\n")
        );
    }
}
