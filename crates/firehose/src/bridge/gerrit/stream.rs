//! The reconnect loop of one Gerrit bridge: a session after another with backoff, each
//! event published once, and the gap after a reconnection filled from the events-log plugin
//! or announced in the status event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use firehose_codec::PublishProperties;
use tracing::{debug, info, warn};

use super::events::{self, Digest, Line, Overlap, Published};
use super::ssh;
use super::GerritBridgeConfig;
use crate::bridge::{now_ms, BridgeContext, BridgeError, BuiltBridge};
use crate::health::Gap;

/// A connection that lasted this long counts as good: the next wait starts from the beginning.
const STABLE: Duration = Duration::from_secs(30);
/// Longest line accepted from `stream-events`; longer ones are dropped and counted.
const MAX_LINE: usize = 16 * 1024 * 1024;

/// Reads the files one `[[bridge.gerrit]]` table names and returns its task (see
/// [`GerritBridgeConfig`]'s [`BridgeConfig::build`](crate::bridge::BridgeConfig::build)).
pub(super) fn build(
    config: &GerritBridgeConfig,
    cx: BridgeContext,
) -> Result<BuiltBridge, BridgeError> {
    let session = ssh::SessionConfig::load(config)?;
    let events_log = match &config.events_log_url {
        Some(url) => Some(EventsLog::load(config, url)?),
        None => None,
    };
    let bridge = Runner {
        config: config.clone(),
        session: Arc::new(session),
        events_log,
        cx: cx.with_qos(config.qos()),
    };
    Ok(BuiltBridge {
        task: Some(Box::pin(bridge.run())),
        routes: None,
    })
}

/// The events-log plugin's REST API.
#[derive(Debug, Clone)]
struct EventsLog {
    /// Base URL, ending in `/`.
    url: String,
    /// `Authorization` header value, if any.
    authorization: Option<String>,
}

impl EventsLog {
    fn load(config: &GerritBridgeConfig, url: &str) -> Result<EventsLog, BridgeError> {
        let authorization = match (&config.events_log_user, &config.events_log_password_file) {
            (Some(user), Some(path)) => {
                let password =
                    std::fs::read_to_string(path).map_err(|error| BridgeError::File {
                        bridge: config.name.clone(),
                        what: "events_log_password_file",
                        path: path.display().to_string(),
                        reason: error.to_string(),
                    })?;
                use base64::Engine;
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{}", password.trim()));
                Some(format!("Basic {token}"))
            }
            _ => None,
        };
        let mut url = url.to_owned();
        if !url.ends_with('/') {
            url.push('/');
        }
        Ok(EventsLog { url, authorization })
    }

    /// The events after `since_secs` (the plugin's `t1`), as raw JSON objects.
    async fn fetch(&self, since_secs: i64) -> Result<Answer, String> {
        use http_body_util::{BodyExt, Empty};
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;

        let t1: String = events::events_log_time(since_secs)
            .bytes()
            .map(|b| match b {
                b' ' => "%20".to_owned(),
                b':' => "%3A".to_owned(),
                b => char::from(b).to_string(),
            })
            .collect();
        let url = format!("{}events/?t1={t1}", self.url);
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let mut request = hyper::Request::get(&url);
        if let Some(authorization) = &self.authorization {
            request = request.header(hyper::header::AUTHORIZATION, authorization);
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| format!("bad events-log URL {url}: {e}"))?;
        let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
            .await
            .map_err(|_| format!("events-log {url}: no answer within 30 s"))?
            .map_err(|e| format!("events-log {url}: {e}"))?;
        let status = response.status();
        let body = tokio::time::timeout(Duration::from_secs(60), response.into_body().collect())
            .await
            .map_err(|_| format!("events-log {url}: body not received within 60 s"))?
            .map_err(|e| format!("events-log {url}: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("events-log {url}: HTTP {status}"));
        }
        let (objects, rest) = events::split_objects(&body);
        Ok(Answer {
            objects: objects.into_iter().map(|raw| body.slice_ref(raw)).collect(),
            invalid_rest: (!rest.trim_ascii().is_empty()).then_some(rest.len()),
        })
    }
}

/// What the events-log plugin answered.
struct Answer {
    /// The JSON values, in order, as raw bytes.
    objects: Vec<Bytes>,
    /// The length of what follows the last value when it is not JSON (a cut answer).
    invalid_rest: Option<usize>,
}

/// Exponential backoff with up to 20% jitter.
#[derive(Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The next wait, and doubles the one after.
    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let mut random = [0u8; 2];
        let jitter =
            match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random) {
                Ok(()) => f64::from(u16::from_le_bytes(random)) / f64::from(u16::MAX) * 0.2,
                Err(_) => 0.1,
            };
        base.mul_f64(1.0 + jitter)
    }
}

/// One running Gerrit bridge.
struct Runner {
    config: GerritBridgeConfig,
    session: Arc<ssh::SessionConfig>,
    events_log: Option<EventsLog>,
    cx: BridgeContext,
}

/// What the bridge remembers across connections.
#[derive(Debug, Default)]
struct Memory {
    /// `eventCreatedOn` of the newest event published (the events-log plugin's clock).
    last_created_on: Option<i64>,
    /// When the last event was received, or the last connection started if it had none.
    last_seen_ms: Option<i64>,
    /// The events published lately, which the plugin's next answer may repeat.
    published: Published,
    /// This connection's overlap with the refill that started it (empty without a refill).
    overlap: Overlap,
}

/// An event read from Gerrit, ready to publish.
struct Event {
    /// Its topic.
    topic: String,
    /// `eventCreatedOn`.
    created_on: Option<i64>,
    /// Its digest.
    digest: Digest,
    /// The JSON exactly as Gerrit sent it.
    line: Bytes,
}

impl Runner {
    async fn run(self) {
        let c = &self.config;
        let mut backoff = Backoff::new(
            Duration::from_millis(c.backoff_initial_ms),
            Duration::from_secs(c.backoff_max_secs),
        );
        let mut memory = Memory::default();
        // Retries of a server that stays unreachable publish a status event only when the
        // reason changes, so that a long outage does not fill the log with status events.
        let mut reported: Option<String> = None;
        self.cx.set_state("connecting", false).await;
        while !self.cx.stopping() {
            let started = Instant::now();
            let outcome = tokio::select! {
                outcome = self.session(&mut memory) => outcome,
                _ = self.cx.shutdown() => return,
            };
            let (published, error) = match outcome {
                Ok(published) => (
                    published,
                    format!("{}:{}: the stream ended", c.host, c.port),
                ),
                Err(SessionError { published, message }) => (published, message),
            };
            if published > 0 || started.elapsed() >= STABLE {
                backoff.reset();
            }
            // The server's stderr is in it: escaped.
            warn!(bridge = %c.name, error = ?error, "Gerrit stream ended");
            self.cx.error(error.clone());
            let changed = self.cx.set_state("disconnected", false).await;
            if !changed && reported.as_deref() != Some(error.as_str()) {
                self.cx.report().await;
            }
            reported = Some(error);
            let delay = backoff.next_delay();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.cx.shutdown() => return,
            }
        }
    }

    /// One connection, from the TCP connect to the end of the stream. Returns the number of
    /// events published when the stream ends.
    async fn session(&self, memory: &mut Memory) -> Result<u64, SessionError> {
        let fail = |published, message: String| SessionError { published, message };
        let mut stream = self
            .session
            .open()
            .await
            .map_err(|message| fail(0, message))?;
        let reconnected_at = now_ms();
        self.cx.set_state("connected", true).await;
        info!(bridge = %self.config.name, host = %self.config.host, port = self.config.port, "streaming Gerrit events");
        let mut published = 0u64;
        memory.overlap = Overlap::default();
        match memory.last_seen_ms {
            // Connected before: what happened since the last event may be missing.
            Some(from) => published += self.fill_gap(memory, from, reconnected_at).await,
            None => memory.last_seen_ms = Some(reconnected_at),
        }
        let mut pending: Vec<u8> = Vec::new();
        // Inside a line already refused as too long: its rest is dropped up to its newline.
        let mut skipping = false;
        loop {
            let chunk = match stream.next_chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(message) => return Err(fail(published, message)),
            };
            let mut rest = chunk.as_slice();
            while let Some(end) = rest.iter().position(|&b| b == b'\n') {
                let (head, tail) = rest.split_at(end);
                rest = &tail[1..];
                if std::mem::take(&mut skipping) {
                    continue;
                }
                pending.extend_from_slice(head);
                let line = std::mem::take(&mut pending);
                let line = line.strip_suffix(b"\r").unwrap_or(&line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if self.live_line(memory, Bytes::copy_from_slice(line)).await {
                    published += 1;
                }
            }
            if skipping {
                continue;
            }
            pending.extend_from_slice(rest);
            if pending.len() > MAX_LINE {
                self.cx.rejected();
                warn!(bridge = %self.config.name, "dropped a line longer than {MAX_LINE} bytes");
                pending = Vec::new();
                skipping = true;
            }
        }
        if !skipping && !pending.iter().all(u8::is_ascii_whitespace) {
            // The stream ended inside a line: it was cut, not sent whole.
            self.cx.rejected();
            warn!(bridge = %self.config.name, "dropped an incomplete last line ({} bytes)", pending.len());
        }
        match stream.finish() {
            Some(message) => Err(fail(published, message)),
            None => Ok(published),
        }
    }

    /// Reads one line as an event; a line that is not one is counted, logged and `None`.
    fn event(&self, memory: &mut Memory, line: Bytes) -> Option<Event> {
        match events::parse_line(&self.config.topic_prefix, &line) {
            Line::Invalid(why) => {
                self.cx.rejected();
                let shown = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
                warn!(bridge = %self.config.name, line = ?shown, "not publishing a line that is {why}");
                None
            }
            Line::Event {
                topic,
                created_on,
                digest,
            } => {
                memory.last_seen_ms = Some(now_ms());
                if let Some(created_on) = created_on {
                    memory.last_created_on = Some(
                        memory
                            .last_created_on
                            .map_or(created_on, |t| t.max(created_on)),
                    );
                }
                Some(Event {
                    topic,
                    created_on,
                    digest,
                    line,
                })
            }
        }
    }

    /// Publishes a line of the stream unless the refill that started the connection has just
    /// published it (see [`Overlap`]); true if it was published.
    async fn live_line(&self, memory: &mut Memory, line: Bytes) -> bool {
        let Some(event) = self.event(memory, line) else {
            return false;
        };
        if memory.overlap.take(&event.digest) {
            self.cx.duplicate();
            debug!(bridge = %self.config.name, topic = ?event.topic,
                "not publishing a stream event that the events-log plugin gave already");
            return false;
        }
        self.publish(memory, event).await
    }

    /// Publishes an event and remembers it; true if it was published.
    async fn publish(&self, memory: &mut Memory, event: Event) -> bool {
        let properties = PublishProperties {
            content_type: Some("application/json".into()),
            ..PublishProperties::default()
        };
        let published = self
            .cx
            .publish_with(&event.topic, event.line, properties)
            .await
            .is_ok();
        if published {
            memory
                .published
                .record(event.created_on, event.digest, memory.last_created_on);
        }
        published
    }

    /// After a reconnection: publishes the events of the gap from the events-log plugin, or
    /// announces the gap. Returns the number of events published.
    ///
    /// The plugin's answer starts a second before the newest event seen, so it repeats the
    /// events published since then: each is dropped as many times as it was published
    /// ([`Published::counts`]). What it publishes is the overlap the new stream's first lines
    /// are compared with.
    async fn fill_gap(&self, memory: &mut Memory, from_ms: i64, to_ms: i64) -> u64 {
        let mut gap = Gap {
            from_ms,
            to_ms,
            filled: None,
        };
        if let Some(log) = &self.events_log {
            let since = memory
                .last_created_on
                .unwrap_or(from_ms / 1000)
                .saturating_sub(1);
            match log.fetch(since).await {
                Ok(answer) => {
                    if let Some(rest) = answer.invalid_rest {
                        self.cx.rejected();
                        warn!(bridge = %self.config.name, bytes = rest,
                            "the events-log answer ends with bytes that are not JSON: dropped");
                    }
                    let mut already = memory.published.counts();
                    let mut refilled = Vec::new();
                    let mut repeated = 0u64;
                    for raw in answer.objects {
                        let Some(event) = self.event(memory, raw) else {
                            continue;
                        };
                        if already.take(&event.digest) {
                            self.cx.duplicate();
                            repeated += 1;
                            continue;
                        }
                        let digest = event.digest;
                        if self.publish(memory, event).await {
                            refilled.push(digest);
                        }
                    }
                    let published = refilled.len() as u64;
                    memory.overlap = Overlap::after(refilled);
                    info!(bridge = %self.config.name, published, already_published = repeated,
                        "gap filled from the events-log plugin");
                    gap.filled = Some(published);
                    self.cx.gap(gap).await;
                    return published;
                }
                Err(message) => {
                    warn!(bridge = %self.config.name, error = ?message, "cannot fill the gap");
                    self.cx.error(message);
                }
            }
        }
        self.cx.gap(gap).await;
        0
    }
}

/// Why a session ended with an error.
#[derive(Debug)]
struct SessionError {
    /// Events it published before it ended.
    published: u64,
    /// What happened.
    message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<Duration> = (0..5).map(|_| backoff.next_delay()).collect();
        let bases = [100, 200, 350, 350, 350];
        for (delay, base) in delays.iter().zip(bases) {
            let base = Duration::from_millis(base);
            assert!(
                *delay >= base && *delay <= base.mul_f64(1.2),
                "{delay:?} vs {base:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(120));
    }
}
