//! `firehose replay`: print the history of some topics as JSON lines, then optionally follow
//! the live stream like `tail -f`, with no gap and no duplicate at the switch.

use std::io::Write;

use anyhow::Context;

use super::http_client::HttpClient;

/// Flags of `firehose replay`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    /// MQTT topic filters to replay (`gerrit/#`, `logs/+/sshd`); default: every topic.
    filters: Vec<String>,
    /// The Firehose HTTP listener.
    #[arg(long, env = "FIREHOSE_SERVER", default_value = "http://localhost:8080")]
    server: String,
    /// Start at this time: RFC 3339 (`2026-01-31T12:00:00Z`) or a duration back from now
    /// (`90s`, `30m`, `2h`, `7d`).
    #[arg(long)]
    since: Option<String>,
    /// Stop before this time (same forms as --since). Not with --follow.
    #[arg(long, conflicts_with = "follow")]
    until: Option<String>,
    /// Start after this event id (e.g. the last id a previous run printed).
    #[arg(long)]
    after: Option<u64>,
    /// After the history, keep printing new events as they arrive.
    #[arg(long)]
    follow: bool,
}

/// Percent-encodes a query parameter value.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(byte));
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

impl ReplayArgs {
    fn query(&self, extra: &[(&str, String)]) -> String {
        let mut parts: Vec<String> = self
            .filters
            .iter()
            .map(|f| format!("topic={}", encode(f)))
            .collect();
        for (key, value) in extra {
            parts.push(format!("{key}={}", encode(value)));
        }
        parts.join("&")
    }
}

/// Runs the command.
///
/// # Errors
/// An unreachable server, a refused parameter (the server's message), or a broken stdout.
pub(crate) fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(replay(args))
}

async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let client = HttpClient::new();
    let base = args.server.trim_end_matches('/').to_owned();
    let stdout = std::io::stdout();
    let mut cursor = args.after;
    // Where the history stopped: the highest id the server examined, matching or not.
    let mut scanned_to = args.after.unwrap_or(0);
    loop {
        let mut extra = vec![("limit", "1000".to_owned())];
        if let Some(after) = cursor {
            extra.push(("after", after.to_string()));
        }
        if let Some(since) = &args.since {
            extra.push(("since", since.clone()));
        }
        if let Some(until) = &args.until {
            extra.push(("until", until.clone()));
        }
        let url = format!("{base}/api/v1/events?{}", args.query(&extra));
        let page = client.get_json(&url).await?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        {
            let mut out = stdout.lock();
            for event in &events {
                writeln!(out, "{event}").context("cannot write to stdout")?;
                cursor = event["id"].as_u64().or(cursor);
            }
            out.flush().context("cannot write to stdout")?;
        }
        scanned_to = scanned_to.max(page["scanned_to"].as_u64().unwrap_or(0));
        scanned_to = scanned_to.max(cursor.unwrap_or(0));
        match page["next_after"].as_u64() {
            Some(next) if page["more"].as_bool() == Some(true) => cursor = Some(next),
            _ => break,
        }
    }
    if !args.follow {
        return Ok(());
    }
    // Follow from exactly where the history stopped: the stream starts after that id, so the
    // switch neither skips nor repeats an event.
    let start = scanned_to;
    let url = format!(
        "{base}/api/v1/stream?{}",
        args.query(&[("after", start.to_string())])
    );
    client
        .follow_sse(&url, None, |_, data| {
            let mut out = stdout.lock();
            writeln!(out, "{data}").context("cannot write to stdout")?;
            out.flush().context("cannot write to stdout")?;
            Ok(true)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_percent_encoded() {
        assert_eq!(encode("gerrit/+/x #"), "gerrit%2F%2B%2Fx%20%23");
    }
}
