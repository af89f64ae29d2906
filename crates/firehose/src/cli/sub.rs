//! `firehose sub`: subscribe over MQTT (TCP, TLS, WebSocket) or Server-Sent Events (HTTP,
//! HTTPS), print events as JSON lines or for humans, or run a command per event, and resume
//! after a restart exactly where the last run stopped.
//!
//! One loop per transport reads events and hands them to a [`Runner`], which filters, prints,
//! runs `--exec` jobs (at most `--jobs` at once) and says when an event is *done*. Only a done
//! event is acknowledged (MQTT PUBACK/PUBREC) or recorded in the resume file (SSE event id), so
//! a consumer killed mid-job receives that event again, and one that finished is never re-run.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use firehose_codec::{
    Connect, ConnectProperties, Packet, Protocol, PubResponse, Publish, QoS, ReasonCode, Subscribe,
    Subscription, SubscriptionOptions,
};
use serde_json::Value;
use tokio::task::JoinSet;

use super::event_filter::{all_match, Condition};
use super::http_client::HttpClient;
use super::mqtt_client::{bytes_of, MqttClient};
use super::net::{servers_and_tls, ServerUrl, TlsOptions};
use crate::broker::registry::unguessable_id;
use crate::event::{self, EventParts};

/// Longest wait between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// MQTT keep alive of the subscriber's connection.
const KEEP_ALIVE: u16 = 30;

/// How events are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// One JSON object per line: id, time, topic, payload, ...
    Json,
    /// A coloured header line and the payload indented, for humans.
    Pretty,
}

/// What to do when `--exec` fails (non-zero exit or cannot start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnFailure {
    /// Run it again up to --retries times (1 s, 2 s, 4 s ... apart), then skip it.
    Retry,
    /// Log the failure and go on: the event counts as done.
    Skip,
    /// Exit with status 1 without marking the event done: the next run starts with it.
    Stop,
}

/// Flags of `firehose sub`.
#[derive(Debug, clap::Args)]
#[command(after_help = SUB_HELP)]
pub(crate) struct SubArgs {
    /// MQTT topic filters (`gerrit/#`, `gerrit/+/comment-added`); default: every topic.
    filters: Vec<String>,
    /// Servers in order of preference: mqtt://, mqtts://, ws://, wss:// (MQTT) or http://,
    /// https:// (Server-Sent Events). When one cannot be reached the next is tried.
    #[arg(
        long,
        short = 's',
        value_delimiter = ',',
        default_value = "mqtt://localhost:1883"
    )]
    server: Vec<String>,
    /// Exit after this many events (that passed --filter) are done.
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// Replay from this time, then follow live with no gap: RFC 3339 or a duration back from
    /// now (`30m`, `2h`, `7d`). Needs an http(s):// server.
    #[arg(long, conflicts_with = "after")]
    since: Option<String>,
    /// Replay after this event id, then follow live. Needs an http(s):// server.
    #[arg(long)]
    after: Option<u64>,
    /// Remember progress in this file so that a restarted consumer gets exactly what it missed
    /// (see below).
    #[arg(long)]
    resume_file: Option<PathBuf>,
    /// Only events whose JSON payload matches: `PATH`, `!PATH`, `PATH=VALUE`, `PATH!=VALUE`,
    /// `PATH~REGEX`, `PATH!~REGEX`; PATH is dotted (`change.project`). Repeatable: all must hold.
    #[arg(long, short = 'F')]
    filter: Vec<String>,
    /// Run this shell command per event (`sh -c`), the event JSON on its stdin, FIREHOSE_TOPIC
    /// and FIREHOSE_EVENT_ID in its environment. Events are then not printed.
    #[arg(long, short = 'x')]
    exec: Option<String>,
    /// How many --exec commands may run at once.
    #[arg(long, short = 'j', default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    jobs: u64,
    /// What to do when a command fails.
    #[arg(long, value_enum, default_value_t = OnFailure::Retry)]
    on_failure: OnFailure,
    /// Retries of a failed command with --on-failure retry.
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// MQTT: QoS of the subscriptions (persistent sessions replay only QoS 1 and 2).
    #[arg(long, short = 'q', default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// MQTT: client identifier; with it the session is persistent. Anonymous clients may
    /// resume each other's sessions, so pick one nobody can guess. Default: kept in the resume
    /// file (128 random bits, made on first use), else assigned by the server (clean session).
    #[arg(long, short = 'i')]
    client_id: Option<String>,
    /// MQTT: how long the server keeps a persistent session while disconnected, seconds.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    session_expiry: u32,
    /// MQTT version: 5 (default) or 3 (3.1.1).
    #[arg(long = "mqtt-version", default_value = "5", value_parser = ["3", "4", "5", "3.1.1"])]
    mqtt_version: String,
    /// User name (only needed for private topics).
    #[arg(long, short = 'u', env = "FIREHOSE_USERNAME")]
    username: Option<String>,
    /// Password (better: the FIREHOSE_PASSWORD environment variable).
    #[arg(long, short = 'P', env = "FIREHOSE_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// PEM file of CA certificates to trust for mqtts://, wss://, https:// (default: the
    /// system's).
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

const SUB_HELP: &str = "\
Resume (--resume-file FILE):
  http(s)://  FILE holds the id of the last event done; a restart streams from the event after
              it (--since/--after only apply while FILE has no id yet).
  MQTT        FILE holds the client id of a persistent session (clean session 0, session expiry
              --session-expiry); the server keeps the session's place in its log, and each
              message is acknowledged only once it is done, so a restart receives every QoS 1/2
              message that was not done. The id is 128 random bits, made on first use:
              anonymous clients may resume any anonymous session whose id they know. Servers
              keep an anonymous session for at most limits.max_anonymous_session_expiry_secs
              (a day by default) while it is away.
  An event is done when it did not pass --filter, was printed, or its --exec command finished
  (succeeded, or failed and was skipped). No event is run twice across restarts; the one
  exception is a kill in the instant between a command's exit and the record of it (about a
  millisecond), after which that one event runs again. The file is replaced atomically.

--exec: the command gets the event JSON on stdin, FIREHOSE_TOPIC and FIREHOSE_EVENT_ID (the log's
  id; empty over MQTT, which carries no id) in its environment, and the terminal for output.
  Up to --jobs commands run at once, started in event order; with --jobs > 1 they may finish out
  of order, and the resume file advances only past events whose predecessors are all done.
  On failure (exit status not 0): --on-failure retry (default) runs it again up to --retries
  times, 1 s, 2 s, 4 s... apart, then skips it with a message; skip goes on at once; stop exits
  with status 1 without marking the event done, so the next run starts with it.

Servers: several --server (or a comma-separated list) are tried in order, at start and after
  every lost connection (reconnecting with a backoff up to 30 s). Mix MQTT and HTTP servers only
  without --resume-file: their positions are not interchangeable.

Examples:
  firehose sub 'gerrit/#'
  firehose sub --server http://firehose.example.org 'gerrit/+/comment-added' --since 2h --format pretty
  firehose sub --server mqtt://firehose.example.org:1883 --server https://firehose.example.org \\
      'gerrit/openstack/nova/comment-added' --filter 'comment~(?m)^recheck' \\
      --resume-file ~/.cache/recheck.json --exec ./run-ci-job.sh";

/// An event ready for the runner.
#[derive(Debug)]
struct Event {
    /// The log id (SSE); MQTT carries none.
    id: Option<u64>,
    topic: String,
    json: Value,
    /// The MQTT acknowledgement owed once it is done.
    ack: Option<Ack>,
}

/// An MQTT acknowledgement to send when an event is done.
#[derive(Debug, Clone, Copy)]
struct Ack {
    packet_id: u16,
    qos: QoS,
}

/// The result of one event.
#[derive(Debug)]
struct Done {
    id: Option<u64>,
    ack: Option<Ack>,
    matched: bool,
    /// Exit the program: the command failed with --on-failure stop.
    stop: Option<String>,
}

/// Progress kept in `--resume-file`.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct ResumeState {
    /// The last SSE event id done (and all before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_event_id: Option<u64>,
    /// The MQTT client id of the persistent session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
}

impl ResumeState {
    fn load(path: &Path) -> anyhow::Result<ResumeState> {
        match std::fs::read(path) {
            Ok(data) if data.iter().all(u8::is_ascii_whitespace) => Ok(ResumeState::default()),
            Ok(data) => serde_json::from_slice(&data).with_context(|| {
                format!(
                    "resume file {} is not what firehose sub writes (JSON with last_event_id, client_id)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ResumeState::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes a temp file beside `path` and renames it over, so a crash leaves the old or the
    /// new state, never half of one.
    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let text = serde_json::to_string(self).context("encode resume state")?;
        std::fs::write(&tmp, format!("{text}\n"))
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
    }
}

/// Filters, prints, runs commands and tracks what is done.
struct Runner {
    conditions: Vec<Condition>,
    exec: Option<String>,
    jobs: usize,
    on_failure: OnFailure,
    retries: u32,
    format: Format,
    colour: bool,
    running: JoinSet<Done>,
    /// Matching events handed out (stops intake at --count).
    submitted: u64,
    /// Matching events done.
    done: u64,
    count: Option<u64>,
    resume_file: Option<PathBuf>,
    state: ResumeState,
    /// SSE ids in arrival order with whether each is done: the resume file records the last of
    /// the done prefix.
    order: VecDeque<(u64, bool)>,
}

impl Runner {
    /// Whether another event may be taken.
    fn can_take(&self) -> bool {
        self.running.len() < self.jobs && self.count.is_none_or(|n| self.submitted < n)
    }

    /// Whether --count events are done.
    fn finished(&self) -> bool {
        self.count.is_some_and(|n| self.done >= n) && self.running.is_empty()
    }

    /// Takes an event: done at once unless a command runs for it.
    fn submit(&mut self, event: Event) -> anyhow::Result<Option<Done>> {
        if let Some(id) = event.id {
            self.order.push_back((id, false));
        }
        let payload = &event.json["payload"];
        if !all_match(&self.conditions, payload) {
            return Ok(Some(Done {
                id: event.id,
                ack: event.ack,
                matched: false,
                stop: None,
            }));
        }
        self.submitted += 1;
        let Some(command) = self.exec.clone() else {
            self.print(&event)?;
            return Ok(Some(Done {
                id: event.id,
                ack: event.ack,
                matched: true,
                stop: None,
            }));
        };
        let (on_failure, retries) = (self.on_failure, self.retries);
        let handle =
            tokio::task::spawn_blocking(move || run_command(&command, &event, on_failure, retries));
        self.running.spawn(async move {
            handle.await.unwrap_or_else(|e| Done {
                id: None,
                ack: None,
                matched: true,
                stop: Some(format!("the command's thread failed: {e}")),
            })
        });
        Ok(None)
    }

    /// Records a done event; an error ends the program (--on-failure stop).
    fn complete(&mut self, done: &Done) -> anyhow::Result<()> {
        if let Some(reason) = &done.stop {
            bail!("{reason} (--on-failure stop: the event stays pending for the next run)");
        }
        if done.matched {
            self.done += 1;
        }
        if let Some(id) = done.id {
            if let Some(slot) = self.order.iter_mut().find(|(i, d)| *i == id && !*d) {
                slot.1 = true;
            }
            let mut last = None;
            while let Some(&(id, true)) = self.order.front() {
                last = Some(id);
                self.order.pop_front();
            }
            if let (Some(last), Some(path)) = (last, &self.resume_file) {
                self.state.last_event_id = Some(last);
                self.state.save(path)?;
            }
        }
        Ok(())
    }

    fn print(&self, event: &Event) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        match self.format {
            Format::Json => writeln!(out, "{}", event.json),
            Format::Pretty => {
                let id = event.id.map(|i| format!("#{i} ")).unwrap_or_default();
                let time = event.json["time"].as_str().unwrap_or("");
                let payload = serde_json::to_string_pretty(&event.json["payload"])
                    .unwrap_or_default()
                    .replace('\n', "\n  ");
                if self.colour {
                    writeln!(
                        out,
                        "\x1b[2m{id}{time}\x1b[0m \x1b[1;36m{}\x1b[0m\n  {payload}",
                        event.topic
                    )
                } else {
                    writeln!(out, "{id}{time} {}\n  {payload}", event.topic)
                }
            }
        }
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
    }
}

/// Runs `--exec` for one event, with retries; blocking (a thread of its own).
fn run_command(command: &str, event: &Event, on_failure: OnFailure, retries: u32) -> Done {
    let attempts = if on_failure == OnFailure::Retry {
        retries.saturating_add(1)
    } else {
        1
    };
    let mut delay = Duration::from_secs(1);
    let mut failure = String::new();
    for attempt in 1..=attempts {
        match run_once(command, event) {
            Ok(()) => {
                return Done {
                    id: event.id,
                    ack: event.ack,
                    matched: true,
                    stop: None,
                }
            }
            Err(e) => {
                failure = format!(
                    "--exec for event {} on {}: {e:#}",
                    id_text(event.id),
                    event.topic
                );
                if attempt < attempts {
                    super::say(format_args!("firehose: {failure}; retrying in {delay:?}"));
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
    if on_failure == OnFailure::Stop {
        return Done {
            id: event.id,
            ack: event.ack,
            matched: true,
            stop: Some(failure),
        };
    }
    super::say(format_args!("firehose: {failure}; skipped"));
    Done {
        id: event.id,
        ack: event.ack,
        matched: true,
        stop: None,
    }
}

fn id_text(id: Option<u64>) -> String {
    id.map(|i| i.to_string()).unwrap_or_else(|| "-".into())
}

fn run_once(command: &str, event: &Event) -> anyhow::Result<()> {
    let mut child = Process::new("sh")
        .arg("-c")
        .arg(command)
        .env("FIREHOSE_TOPIC", &event.topic)
        .env(
            "FIREHOSE_EVENT_ID",
            event.id.map(|i| i.to_string()).unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .spawn()
        .context("cannot start sh")?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input closes the pipe: not an error.
        let _ = writeln!(stdin, "{}", event.json);
    }
    let status = child.wait().context("cannot wait for the command")?;
    if status.success() {
        Ok(())
    } else {
        bail!("the command failed ({status})")
    }
}

/// Runs the command.
///
/// # Errors
/// Bad flags, a bad resume file, a broken stdout, or a command failing with --on-failure stop.
pub(crate) fn run(args: SubArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(subscribe(args))
}

async fn subscribe(args: SubArgs) -> anyhow::Result<()> {
    let (servers, tls) = servers_and_tls(&args.server, args.ca_file.as_deref())?;
    if (args.since.is_some() || args.after.is_some()) && servers.iter().any(|s| s.scheme.mqtt()) {
        bail!("--since and --after read the history over HTTP: use --server http(s)://HOST:PORT");
    }
    let conditions = args
        .filter
        .iter()
        .map(|f| Condition::parse(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let state = match &args.resume_file {
        Some(path) => ResumeState::load(path)?,
        None => ResumeState::default(),
    };
    let mut runner = Runner {
        conditions,
        exec: args.exec.clone(),
        jobs: usize::try_from(args.jobs).unwrap_or(1),
        on_failure: args.on_failure,
        retries: args.retries,
        format: args.format,
        colour: std::io::stdout().is_terminal(),
        running: JoinSet::new(),
        submitted: 0,
        done: 0,
        count: args.count,
        resume_file: args.resume_file.clone(),
        state,
        order: VecDeque::new(),
    };
    if runner.count == Some(0) {
        return Ok(());
    }
    let session = MqttSession::new(&args, &mut runner)?;
    let http = HttpClient::with_tls(tls.clone());
    // Where the SSE stream resumes: the resume file, else --after; --since only at first.
    let mut cursor = runner.state.last_event_id.or(args.after);
    let mut since = args.since.clone().filter(|_| cursor.is_none());
    let mut backoff = Duration::from_millis(500);
    loop {
        let mut errors = Vec::new();
        for server in &servers {
            let outcome = if server.scheme.mqtt() {
                session.run(server, &tls, &mut runner).await
            } else {
                follow_sse(
                    &http,
                    server,
                    &args.filters,
                    &mut cursor,
                    &mut since,
                    &mut runner,
                )
                .await
            };
            match outcome {
                Ok(Outcome::Finished) => return Ok(()),
                Ok(Outcome::Lost(e)) => {
                    // It worked, then broke: start again from the first server.
                    super::say(format_args!("firehose: {e:#}; reconnecting"));
                    backoff = Duration::from_millis(500);
                    errors.clear();
                    break;
                }
                Err(e) => {
                    // A fatal error (bad output, --on-failure stop) is not worth a retry.
                    if let Some(fatal) = e.downcast_ref::<Fatal>() {
                        bail!("{}", fatal.0);
                    }
                    errors.push(format!("{e:#}"));
                }
            }
        }
        if !errors.is_empty() {
            super::say(format_args!(
                "firehose: no server reachable ({}); retrying in {backoff:?}",
                errors.join("; ")
            ));
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// How a connection to one server ended.
enum Outcome {
    /// --count reached.
    Finished,
    /// It served, then the connection was lost: reconnect.
    Lost(anyhow::Error),
}

/// An error that ends the command instead of trying another server.
#[derive(Debug)]
struct Fatal(String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

fn fatal(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(Fatal(format!("{e:#}")))
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

async fn follow_sse(
    http: &HttpClient,
    server: &ServerUrl,
    filters: &[String],
    cursor: &mut Option<u64>,
    since: &mut Option<String>,
    runner: &mut Runner,
) -> anyhow::Result<Outcome> {
    let mut query: Vec<String> = filters
        .iter()
        .map(|f| format!("topic={}", encode(f)))
        .collect();
    if let Some(after) = cursor {
        query.push(format!("after={after}"));
    } else if let Some(since) = since {
        query.push(format!("since={}", encode(since)));
    }
    let url = format!("{}/api/v1/stream?{}", server.http_base(), query.join("&"));
    let mut stream = http.open_sse(&url, None).await?;
    // Connected: from now on a restart must not replay --since again.
    *since = None;
    loop {
        if runner.finished() {
            return Ok(Outcome::Finished);
        }
        tokio::select! {
            Some(joined) = runner.running.join_next(), if !runner.running.is_empty() => {
                let done = joined.context("a command task failed").map_err(fatal)?;
                runner.complete(&done).map_err(fatal)?;
            }
            next = stream.next(), if runner.can_take() => {
                let (sse_id, data) = match next {
                    Ok(event) => event,
                    Err(e) => return Ok(Outcome::Lost(e)),
                };
                let json: Value = match serde_json::from_str(&data) {
                    Ok(v) => v,
                    Err(e) => {
                        super::say(format_args!("firehose: ignoring an event that is not JSON ({e}): {data}"));
                        continue;
                    }
                };
                let id = json["id"].as_u64().or(sse_id);
                if id.is_some() {
                    *cursor = id;
                }
                let topic = json["topic"].as_str().unwrap_or_default().to_owned();
                if let Some(done) = runner.submit(Event { id, topic, json, ack: None }).map_err(fatal)? {
                    runner.complete(&done).map_err(fatal)?;
                }
            }
        }
    }
}

/// The MQTT side: connection settings and the persistent session's identity.
struct MqttSession {
    connect: Connect,
    subscribe: Vec<Subscription>,
}

impl MqttSession {
    fn new(args: &SubArgs, runner: &mut Runner) -> anyhow::Result<MqttSession> {
        let protocol = if args.mqtt_version == "5" {
            Protocol::V5
        } else {
            Protocol::V311
        };
        let uses_mqtt = args.server.iter().any(|s| {
            ServerUrl::parse(s)
                .map(|u| u.scheme.mqtt())
                .unwrap_or(false)
        });
        let mut client_id = args.client_id.clone().or(runner.state.client_id.clone());
        if client_id.is_none() && uses_mqtt {
            if let Some(path) = &runner.resume_file {
                // Unguessable: anonymous clients may resume any anonymous session whose client
                // id they know, so a persistent session is only as private as its id.
                let id = unguessable_id("firehose-sub-");
                runner.state.client_id = Some(id.clone());
                runner.state.save(path)?;
                client_id = Some(id);
            }
        }
        let persistent = client_id.is_some();
        let qos = QoS::from_u8(args.qos).unwrap_or(QoS::AtLeastOnce);
        let filters = if args.filters.is_empty() {
            vec!["#".to_owned()]
        } else {
            args.filters.clone()
        };
        Ok(MqttSession {
            connect: Connect {
                protocol,
                clean_start: !persistent,
                keep_alive: KEEP_ALIVE,
                client_id: client_id.unwrap_or_default(),
                username: args.username.clone(),
                password: args.password.as_deref().map(bytes_of),
                properties: ConnectProperties {
                    session_expiry_interval: (persistent && protocol == Protocol::V5)
                        .then_some(args.session_expiry),
                    ..ConnectProperties::default()
                },
                ..Connect::default()
            },
            subscribe: filters
                .into_iter()
                .map(|filter| Subscription {
                    filter,
                    options: SubscriptionOptions {
                        qos,
                        ..SubscriptionOptions::default()
                    },
                })
                .collect(),
        })
    }

    async fn run(
        &self,
        server: &ServerUrl,
        tls: &TlsOptions,
        runner: &mut Runner,
    ) -> anyhow::Result<Outcome> {
        let (mut client, _) = MqttClient::connect(server, tls, self.connect.clone()).await?;
        let packet_id = client.packet_id();
        client
            .send(&Packet::Subscribe(Subscribe {
                packet_id,
                subscriptions: self.subscribe.clone(),
                ..Subscribe::default()
            }))
            .await?;
        let mut ping = tokio::time::interval(Duration::from_secs(u64::from(KEEP_ALIVE) / 2));
        ping.reset();
        loop {
            if runner.finished() {
                client.disconnect().await;
                return Ok(Outcome::Finished);
            }
            tokio::select! {
                Some(joined) = runner.running.join_next(), if !runner.running.is_empty() => {
                    let done = joined.context("a command task failed").map_err(fatal)?;
                    runner.complete(&done).map_err(fatal)?;
                    if let Err(e) = acknowledge(&mut client, done.ack).await {
                        return Ok(Outcome::Lost(e));
                    }
                }
                _ = ping.tick() => {
                    if let Err(e) = client.send(&Packet::PingReq).await {
                        return Ok(Outcome::Lost(e));
                    }
                }
                packet = client.recv(), if runner.can_take() => {
                    let packet = match packet {
                        Ok(Some(p)) => p,
                        Ok(None) => return Ok(Outcome::Lost(anyhow::anyhow!("{} closed the connection", server.text))),
                        Err(e) => return Ok(Outcome::Lost(e)),
                    };
                    match packet {
                        Packet::Publish(publish) => {
                            let event = mqtt_event(publish);
                            if let Some(done) = runner.submit(event).map_err(fatal)? {
                                runner.complete(&done).map_err(fatal)?;
                                if let Err(e) = acknowledge(&mut client, done.ack).await {
                                    return Ok(Outcome::Lost(e));
                                }
                            }
                        }
                        Packet::SubAck(ack) => {
                            if let Some(bad) = ack.reasons.iter().find(|r| r.is_error()) {
                                return Err(fatal(anyhow::anyhow!(
                                    "{} refused the subscription: {bad:?} ({:#04x})",
                                    server.text,
                                    bad.as_u8()
                                )));
                            }
                        }
                        Packet::PubRel(rel) => {
                            let comp = PubResponse { packet_id: rel.packet_id, reason: ReasonCode::Success, properties: Default::default() };
                            if let Err(e) = client.send(&Packet::PubComp(comp)).await {
                                return Ok(Outcome::Lost(e));
                            }
                        }
                        Packet::Disconnect(d) => {
                            return Ok(Outcome::Lost(anyhow::anyhow!(
                                "{} disconnected: {:?} ({:#04x})", server.text, d.reason, d.reason.as_u8()
                            )));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// Sends the acknowledgement a done message owes (PUBACK for QoS 1, PUBREC for QoS 2).
async fn acknowledge(client: &mut MqttClient, ack: Option<Ack>) -> anyhow::Result<()> {
    let Some(ack) = ack else {
        return Ok(());
    };
    let response = PubResponse {
        packet_id: ack.packet_id,
        reason: ReasonCode::Success,
        properties: Default::default(),
    };
    match ack.qos {
        QoS::AtMostOnce => Ok(()),
        QoS::AtLeastOnce => client.send(&Packet::PubAck(response)).await,
        QoS::ExactlyOnce => client.send(&Packet::PubRec(response)).await,
    }
}

/// The JSON an MQTT message is printed as: the shape of the history API, without the log id
/// (MQTT does not carry it), with the time it was received.
fn mqtt_event(publish: Publish) -> Event {
    let p = &publish.properties;
    let json = event::to_json(EventParts {
        id: None,
        time: SystemTime::now(),
        topic: &publish.topic,
        qos: publish.qos as u8,
        retain: publish.retain,
        publisher: None,
        payload: &publish.payload,
        content_type: p.content_type.as_deref(),
        user_properties: &p.user_properties,
        response_topic: p.response_topic.as_deref(),
    });
    let ack = publish.packet_id.map(|packet_id| Ack {
        packet_id,
        qos: publish.qos,
    });
    Event {
        id: None,
        topic: publish.topic,
        json,
        ack,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_state_round_trips_and_tolerates_missing_or_empty_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.json");
        assert_eq!(
            ResumeState::load(&path).expect("missing"),
            ResumeState::default()
        );
        std::fs::write(&path, "\n").expect("write");
        assert_eq!(
            ResumeState::load(&path).expect("empty"),
            ResumeState::default()
        );
        let state = ResumeState {
            last_event_id: Some(42),
            client_id: Some("c".into()),
        };
        state.save(&path).expect("save");
        assert_eq!(ResumeState::load(&path).expect("load"), state);
        std::fs::write(&path, "garbage").expect("write");
        assert!(ResumeState::load(&path).is_err());
    }
}
