//! Bridges: components that turn foreign events into publishes (Gerrit's `stream-events`,
//! GitHub/GitLab/Gitea webhooks). A bridge only translates: everything after
//! [`Broker::publish`] (ACL, log, routing) is the broker's.
//!
//! Depends on [`crate::broker`], [`crate::auth`] and [`crate::config`]; only `cli` starts
//! bridges, and the HTTP listener reads their [`Bridges`] states for `/healthz` and `/metrics`.
//!
//! # Layout
//! - this file: the framework. A bridge is a config section that knows how to build itself
//!   ([`BridgeConfig`], the Vector habit); [`build`] builds every configured bridge, each with
//!   its own internal identity ([`Identity::internal`]) whose ACL is the bridge's topics plus
//!   its status topic; [`Built::spawn`] runs them and [`Running::shutdown`] stops them.
//! - [`BridgeState`]: what every bridge reports (connected, last event, reconnects, events in,
//!   errors, refused inputs, the last gap), shown in `/metrics`, `/healthz` and as a retained
//!   status event on `firehose/bridges/<name>/status`.
//! - [`gerrit`] (cargo feature `gerrit`): `gerrit stream-events` over SSH.
//! - [`webhooks`]: `POST /hooks/github`, `/hooks/gitlab`, `/hooks/gitea` on the HTTP listener.
//! - [`syslog`]: syslog over UDP and TCP, JSON lines over TCP, to `logs/<host>/<app>`.
//! - [`mail`]: an IMAP mailbox (IDLE) to `launchpad/...` and `mail/<name>/...`.
//! - [`schemas`]: the JSON Schemas of the topic families, served at `/api/v1/schemas`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use firehose_codec::{PublishProperties, QoS};
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::auth::Identity;
use crate::broker::{Broker, PublishError};
use crate::config::BridgesConfig;

#[cfg(feature = "gerrit")]
pub mod gerrit;
pub mod mail;
pub mod schemas;
pub mod syslog;
pub mod webhooks;

/// How long bridges get to stop at shutdown before their tasks are dropped.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Why a bridge could not be built; stops `serve` at start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A file named in the bridge's config could not be read or used.
    #[error("bridge {bridge:?}: {what} {path}: {reason}")]
    File {
        /// The bridge.
        bridge: String,
        /// What the file is for (`private_key`, `known_hosts`, ...).
        what: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A setting that validation could not catch (e.g. a topic filter the ACL refuses).
    #[error("bridge {bridge:?}: {message}")]
    Invalid {
        /// The bridge.
        bridge: String,
        /// What is wrong.
        message: String,
    },
}

/// A future that runs a bridge until its [`BridgeContext::shutdown`] fires.
pub type BridgeTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What building a bridge gives: a task to run, routes for the HTTP listener, or both.
#[derive(Default)]
pub struct BuiltBridge {
    /// The bridge's long-running task (a client connection to its source).
    pub task: Option<BridgeTask>,
    /// Routes that receive the bridge's events (webhooks), merged into the HTTP listener.
    pub routes: Option<Router>,
}

/// A bridge's configuration section, which knows how to build the bridge.
pub trait BridgeConfig {
    /// The bridge's name: one topic level, unique among bridges.
    fn name(&self) -> &str;
    /// The kind of bridge (`gerrit`, `webhook`), for logs, metrics and the status event.
    fn kind(&self) -> &'static str;
    /// The topic filters the bridge publishes to: its ACL (its status topic is added).
    fn topics(&self) -> Vec<String>;
    /// Reads the files the bridge needs and returns what to run.
    ///
    /// # Errors
    /// [`BridgeError`] naming the file or setting that cannot be used.
    fn build(&self, cx: BridgeContext) -> Result<BuiltBridge, BridgeError>;
}

/// The status topic of bridge `name`.
pub fn status_topic(name: &str) -> String {
    format!("firehose/bridges/{name}/status")
}

/// A gap in a bridge's stream: from the last event before a disconnection to the reconnection,
/// and whether the events of that time were recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// Milliseconds since the epoch: the last event seen (or the disconnection, if later).
    pub from_ms: i64,
    /// Milliseconds since the epoch: the reconnection.
    pub to_ms: i64,
    /// Events recovered for the gap (events-log plugin); `None` when not recovered.
    pub filled: Option<u64>,
}

/// The parts of a state that change together and are read rarely.
#[derive(Debug, Default)]
struct Detail {
    /// `starting`, `connecting`, `connected`, `disconnected`, `listening`, `stopped`.
    state: &'static str,
    /// Since when `state` holds, in milliseconds since the epoch.
    since_ms: i64,
    /// The most recent error, for operators.
    last_error: Option<String>,
    /// The most recent gap.
    gap: Option<Gap>,
}

/// What one bridge reports. Counters are atomics so the hot path never takes a lock.
#[derive(Debug)]
pub struct BridgeState {
    /// The bridge's name.
    name: String,
    /// Its kind.
    kind: &'static str,
    /// Whether it is connected to its source (webhooks: listening).
    connected: AtomicBool,
    /// Whether it has been connected before, so that the next connection is a reconnection.
    ever_connected: AtomicBool,
    /// Time of the last event published, milliseconds since the epoch; 0 before the first.
    last_event_ms: AtomicI64,
    /// Connections re-established after a loss.
    reconnects: AtomicU64,
    /// Events published.
    events_in: AtomicU64,
    /// Failures: connections that failed or dropped, events the log refused.
    errors: AtomicU64,
    /// Inputs refused as invalid (non-JSON lines, bad signatures, oversized bodies).
    rejected: AtomicU64,
    /// State name, last error and gap.
    detail: Mutex<Detail>,
}

impl BridgeState {
    fn new(name: &str, kind: &'static str) -> BridgeState {
        BridgeState {
            name: name.to_owned(),
            kind,
            connected: AtomicBool::new(false),
            ever_connected: AtomicBool::new(false),
            last_event_ms: AtomicI64::new(0),
            reconnects: AtomicU64::new(0),
            events_in: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            detail: Mutex::new(Detail {
                state: "starting",
                since_ms: now_ms(),
                ..Detail::default()
            }),
        }
    }

    /// The bridge's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bridge's kind.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Whether it is connected to its source.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Events published so far.
    pub fn events_in(&self) -> u64 {
        self.events_in.load(Ordering::Relaxed)
    }

    /// Reconnections so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Errors so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Refused inputs so far.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Time of the last event, milliseconds since the epoch; `None` before the first.
    pub fn last_event_ms(&self) -> Option<i64> {
        Some(self.last_event_ms.load(Ordering::Relaxed)).filter(|&ms| ms > 0)
    }

    fn detail(&self) -> std::sync::MutexGuard<'_, Detail> {
        self.detail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The status as JSON: the payload of the status event and of `/healthz?format=json`.
    pub fn to_json(&self) -> Value {
        let detail = self.detail();
        let gap = detail.gap.map(|gap| {
            json!({
                "from": format_time(gap.from_ms),
                "to": format_time(gap.to_ms),
                "filled": gap.filled.is_some(),
                "events_filled": gap.filled,
            })
        });
        json!({
            "bridge": self.name,
            "kind": self.kind,
            "state": detail.state,
            "connected": self.connected(),
            "since": format_time(detail.since_ms),
            "last_event_time": self.last_event_ms().map(format_time),
            "events_in": self.events_in(),
            "reconnects": self.reconnects(),
            "errors": self.errors(),
            "rejected": self.rejected(),
            "last_error": detail.last_error,
            "gap": gap,
        })
    }

    /// One line for `/healthz`.
    pub fn summary(&self) -> String {
        let detail = self.detail();
        let mut line = format!(
            "bridge {} ({}): {}, {} events in, {} reconnects, {} errors, {} rejected",
            self.name,
            self.kind,
            detail.state,
            self.events_in(),
            self.reconnects(),
            self.errors(),
            self.rejected()
        );
        if let Some(ms) = self.last_event_ms() {
            line.push_str(&format!(", last event {}", format_time(ms)));
        }
        if let Some(error) = &detail.last_error {
            line.push_str(&format!(", last error: {error}"));
        }
        line
    }
}

/// Every bridge's state, in configuration order. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Bridges {
    states: Arc<[Arc<BridgeState>]>,
}

impl Bridges {
    /// The states.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<BridgeState>> {
        self.states.iter()
    }

    /// Whether no bridge is configured.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
}

/// What a bridge gets to work with: the broker, its identity, its state, and a shutdown signal.
#[derive(Debug, Clone)]
pub struct BridgeContext {
    broker: Broker,
    identity: Identity,
    state: Arc<BridgeState>,
    status_topic: String,
    shutdown: watch::Receiver<bool>,
}

impl BridgeContext {
    /// The bridge's state, for its counters.
    pub fn state(&self) -> &Arc<BridgeState> {
        &self.state
    }

    /// The broker.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Resolves when the bridge must stop.
    pub async fn shutdown(&self) {
        let mut shutdown = self.shutdown.clone();
        let _ = shutdown.wait_for(|stop| *stop).await;
    }

    /// Whether the bridge must stop.
    pub fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Publishes one event (QoS 1, not retained) as the bridge, counting it; resolves once it
    /// is durable, with its id.
    ///
    /// # Errors
    /// [`PublishError`] from the broker (counted as an error of the bridge).
    pub async fn publish(&self, topic: &str, payload: Bytes) -> Result<u64, PublishError> {
        self.publish_with(topic, payload, PublishProperties::default())
            .await
    }

    /// [`BridgeContext::publish`] with MQTT 5 properties (content type, user properties).
    ///
    /// # Errors
    /// [`PublishError`] from the broker (counted as an error of the bridge).
    pub async fn publish_with(
        &self,
        topic: &str,
        payload: Bytes,
        properties: PublishProperties,
    ) -> Result<u64, PublishError> {
        match self
            .broker
            .publish(
                &self.identity,
                topic,
                payload,
                QoS::AtLeastOnce,
                false,
                properties,
            )
            .await
        {
            Ok(id) => {
                self.state.events_in.fetch_add(1, Ordering::Relaxed);
                self.state.last_event_ms.store(now_ms(), Ordering::Relaxed);
                Ok(id)
            }
            Err(error) => {
                self.state.errors.fetch_add(1, Ordering::Relaxed);
                warn!(bridge = %self.state.name, %topic, "publish failed: {error}");
                self.state.detail().last_error = Some(format!("publish to {topic}: {error}"));
                Err(error)
            }
        }
    }

    /// Counts an input refused as invalid (logged by the caller).
    pub fn rejected(&self) {
        self.state.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Records an error without changing the state; the status event follows with the next
    /// change, or with [`BridgeContext::report`].
    pub fn error(&self, message: impl Into<String>) {
        self.state.errors.fetch_add(1, Ordering::Relaxed);
        self.state.detail().last_error = Some(message.into());
    }

    /// Sets the state (`connecting`, `connected`, `disconnected`, `listening`...) and, if it
    /// changed, publishes the status event and returns true. `connected` counts as a
    /// reconnection when it is not the bridge's first.
    pub async fn set_state(&self, state: &'static str, connected: bool) -> bool {
        {
            let mut detail = self.state.detail();
            if detail.state == state {
                return false;
            }
            if state == "connected" && self.state.ever_connected.swap(true, Ordering::Relaxed) {
                self.state.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            detail.state = state;
            detail.since_ms = now_ms();
        }
        self.state.connected.store(connected, Ordering::Relaxed);
        self.report().await;
        true
    }

    /// Records a gap and publishes the status event.
    pub async fn gap(&self, gap: Gap) {
        self.state.detail().gap = Some(gap);
        self.report().await;
    }

    /// Publishes the status event (retained), now.
    pub async fn report(&self) {
        let payload = Bytes::from(self.state.to_json().to_string());
        let properties = PublishProperties {
            content_type: Some("application/json".into()),
            ..PublishProperties::default()
        };
        if let Err(error) = self
            .broker
            .publish(
                &self.identity,
                &self.status_topic,
                payload,
                QoS::AtLeastOnce,
                true,
                properties,
            )
            .await
        {
            warn!(bridge = %self.state.name, "cannot publish the status event: {error}");
        }
    }
}

/// Every configured bridge, built and ready to run.
pub struct Built {
    states: Bridges,
    routes: Router,
    tasks: Vec<(Arc<BridgeState>, BridgeTask)>,
    contexts: Vec<BridgeContext>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Built")
            .field("states", &self.states)
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

/// Builds every bridge of `config`: reads their files, makes their identities. Nothing runs
/// yet (see [`Built::spawn`]), so a bad file stops `serve` before it binds anything.
///
/// # Errors
/// The first bridge that cannot be built.
pub fn build(config: &BridgesConfig, broker: &Broker) -> Result<Built, BridgeError> {
    let mut configs: Vec<Box<dyn BridgeConfig>> = Vec::new();
    #[cfg(feature = "gerrit")]
    for gerrit in &config.gerrit {
        configs.push(Box::new(gerrit::GerritBridge::new(gerrit.clone())));
    }
    #[cfg(not(feature = "gerrit"))]
    if let Some(gerrit) = config.gerrit.first() {
        return Err(BridgeError::Invalid {
            bridge: gerrit.name.clone(),
            message: "this firehose was built without the `gerrit` cargo feature".into(),
        });
    }
    configs.extend(webhooks::configs(&config.webhooks));
    for syslog in &config.syslog {
        configs.push(Box::new(syslog::SyslogBridge::new(syslog.clone())));
    }
    for mail in &config.mail {
        configs.push(Box::new(mail::MailBridge::new(mail.clone())));
    }

    let (stop, stopped) = watch::channel(false);
    let mut states = Vec::new();
    let mut routes = schemas::router();
    let mut tasks = Vec::new();
    let mut contexts = Vec::new();
    for bridge in configs {
        let name = bridge.name().to_owned();
        let status_topic = status_topic(&name);
        let mut acl = bridge.topics();
        acl.push(status_topic.clone());
        let identity =
            Identity::internal(&format!("bridge:{name}"), &acl).map_err(|(filter, reason)| {
                BridgeError::Invalid {
                    bridge: name.clone(),
                    message: format!("topic filter {filter:?} is invalid: {reason}"),
                }
            })?;
        let state = Arc::new(BridgeState::new(&name, bridge.kind()));
        let cx = BridgeContext {
            broker: broker.clone(),
            identity,
            state: state.clone(),
            status_topic,
            shutdown: stopped.clone(),
        };
        let built = bridge.build(cx.clone())?;
        if let Some(router) = built.routes {
            routes = routes.merge(router);
        }
        if let Some(task) = built.task {
            tasks.push((state.clone(), task));
        }
        contexts.push(cx);
        states.push(state);
    }
    Ok(Built {
        states: Bridges {
            states: states.into(),
        },
        routes,
        tasks,
        contexts,
        stop,
    })
}

impl Built {
    /// The bridges' states, for `/metrics` and `/healthz`.
    pub fn states(&self) -> Bridges {
        self.states.clone()
    }

    /// The routes of the bridges that listen on the HTTP listener (webhooks).
    pub fn routes(&self) -> Router {
        self.routes.clone()
    }

    /// Starts every bridge's task.
    pub fn spawn(self) -> Running {
        let mut handles = Vec::new();
        for (state, task) in self.tasks {
            info!(bridge = %state.name, kind = state.kind, "bridge started");
            handles.push(tokio::spawn(task));
        }
        Running {
            handles,
            contexts: self.contexts,
            stop: self.stop,
        }
    }
}

/// The running bridges.
#[derive(Debug)]
pub struct Running {
    handles: Vec<tokio::task::JoinHandle<()>>,
    contexts: Vec<BridgeContext>,
    stop: watch::Sender<bool>,
}

impl Running {
    /// Stops every bridge (waiting up to 3 s), then publishes their `stopped` status events.
    /// Call before the broker shuts down, so that the status events are stored.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let mut handles = self.handles;
        let all = futures_util::future::join_all(handles.iter_mut());
        if tokio::time::timeout(STOP_GRACE, all).await.is_err() {
            for handle in &handles {
                handle.abort();
            }
        }
        for cx in &self.contexts {
            cx.set_state("stopped", false).await;
        }
    }
}

/// Milliseconds since the epoch, now.
pub(crate) fn now_ms() -> i64 {
    crate::broker::message::now_ms()
}

/// RFC 3339 in UTC with milliseconds.
pub(crate) fn format_time(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0);
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}
