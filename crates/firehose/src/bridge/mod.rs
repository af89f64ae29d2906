//! Bridges: components that turn foreign events into publishes (Gerrit's `stream-events`,
//! GitHub/GitLab/Gitea webhooks, syslog, mail). A bridge only translates: everything after
//! [`Broker::publish`] (ACL, log, routing) is the broker's.
//!
//! Depends on [`crate::broker`], [`crate::auth`], [`crate::config`] and [`crate::health`];
//! only `cli` starts bridges, and hands their [`BridgeStates`] and routes to the HTTP listener.
//!
//! # Layout
//! - this file: the framework. A bridge is a config table that checks and builds itself
//!   ([`BridgeConfig`], the Vector habit); [`build`] builds every configured bridge, each with
//!   its own internal identity ([`Identity::internal`]) whose ACL is the bridge's topics plus
//!   its status topic; [`Built::spawn`] runs them and [`Running::shutdown`] stops them. The
//!   bridges' health ([`crate::health::BridgeState`]) is shown in `/metrics`, `/healthz` and as
//!   a retained status event on `firehose/bridges/<name>/status`.
//! - [`BridgesConfig`], below: the `[bridge]` section, one field per kind of bridge; [`config`]:
//!   what every kind shares (names checked once for all, backoff settings).
//! - [`gerrit`]: `gerrit stream-events` over SSH (runs only with the cargo feature `gerrit`).
//! - [`webhooks`]: `POST /hooks/github`, `/hooks/gitlab`, `/hooks/gitea` on the HTTP listener.
//! - [`syslog`]: syslog over UDP and TCP, JSON lines over TCP, to `logs/<host>/<app>`.
//! - [`mail`]: an IMAP mailbox (IDLE) to `launchpad/...` and `mail/<name>/...`.
//! - [`schemas`]: the JSON Schemas of the topic families, served at `/api/v1/schemas`.
//!
//! # Logs
//! Everything a bridge's peer sends is untrusted text: Gerrit's events and stderr, syslog host
//! and program names, mail headers, an IMAP server's answers, webhook headers and payloads.
//! It reaches a log line only Debug-formatted, as a `?field` (tracing's fmt layer writes a
//! `%field`, and the message's `{}` arguments, as they are): `"a\nb"` is logged as
//! `"a\\nb"`, so no newline can start a forged line and no escape sequence reaches a
//! terminal. Topic levels made from such text have their control characters replaced by `_`
//! as well, for subscribers that print topics. Refusals that anyone can cause are logged
//! through a [`Throttle`]: one warning a second at most.
//!
//! # Adding a bridge
//! A folder `bridge/<kind>/` whose `config.rs` holds its table (a struct implementing
//! [`BridgeConfig`]), its `pub mod <kind>;` line below, and one field in [`BridgesConfig`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use firehose_codec::{PublishProperties, QoS};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::auth::Identity;
use crate::broker::{Broker, PublishError};
use crate::health::{BridgeState, BridgeStates, Gap};

pub mod config;
pub mod gerrit;
pub mod mail;
pub mod schemas;
pub mod syslog;
pub mod webhooks;

pub use config::BridgeKind;

config::bridge_kinds! {
    /// `[bridge]`: every bridge, each an internal publisher with its own ACL. One field per
    /// kind of bridge, in the order bridges are checked, built and shown in `/healthz`.
    pub struct BridgesConfig {
        /// `[[bridge.gerrit]]`: one table per Gerrit server.
        pub gerrit: Vec<gerrit::GerritBridgeConfig>,
        /// `[bridge.webhooks]`: GitHub, GitLab and Gitea/Forgejo webhooks on the HTTP listener.
        pub webhooks: webhooks::WebhooksConfig,
        /// `[[bridge.syslog]]`: syslog (UDP, TCP) and JSON-lines listeners, one table each.
        pub syslog: Vec<syslog::SyslogBridgeConfig>,
        /// `[[bridge.mail]]`: IMAP mailboxes watched with IDLE, one table each.
        pub mail: Vec<mail::MailBridgeConfig>,
    }
}

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

/// A bridge's configuration table, which knows how to check and build the bridge.
pub trait BridgeConfig {
    /// The bridge's name: one topic level, unique among bridges (checked for every bridge at
    /// once by [`BridgesConfig`]).
    fn name(&self) -> &str;
    /// The kind of bridge (`gerrit`, `webhook`), for logs, metrics and the status event.
    fn kind(&self) -> &'static str;
    /// The topic filters the bridge publishes to: its ACL (its status topic is added).
    fn topics(&self) -> Vec<String>;
    /// Checks the table's settings, its name apart, when the config is loaded.
    ///
    /// # Errors
    /// What is wrong and what would be accepted; the message is shown after the section and
    /// the bridge's name.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
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

/// What a bridge gets to work with: the broker, its identity, its state, and a shutdown signal.
#[derive(Debug, Clone)]
pub struct BridgeContext {
    broker: Broker,
    identity: Identity,
    state: Arc<BridgeState>,
    status_topic: String,
    shutdown: watch::Receiver<bool>,
    /// The QoS of the bridge's events (its status events are always QoS 1).
    qos: QoS,
}

impl BridgeContext {
    /// This context, publishing the bridge's events at `qos` instead of 1 (a bridge's `qos`
    /// setting: germqtt published at the QoS its config said).
    pub fn with_qos(mut self, qos: QoS) -> Self {
        self.qos = qos;
        self
    }

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

    /// Publishes one event (at the bridge's QoS, 1 unless [`BridgeContext::with_qos`] said
    /// otherwise; not retained) as the bridge, counting it; resolves once it is durable, with
    /// its id, whatever the QoS.
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
            .publish(&self.identity, topic, payload, self.qos, false, properties)
            .await
        {
            Ok(id) => {
                self.state.count_event(now_ms());
                Ok(id)
            }
            Err(error) => {
                warn!(bridge = %self.state.name(), topic = ?topic, error = ?error.to_string(),
                    "publish failed");
                self.state
                    .count_error(format!("publish to {topic}: {error}"));
                Err(error)
            }
        }
    }

    /// Counts an input refused as invalid (logged by the caller).
    pub fn rejected(&self) {
        self.state.count_rejected();
    }

    /// Counts an input not published on purpose because it repeats one already published
    /// (logged by the caller).
    pub fn duplicate(&self) {
        self.state.count_duplicate();
    }

    /// Records an error without changing the state; the status event follows with the next
    /// change, or with [`BridgeContext::report`].
    pub fn error(&self, message: impl Into<String>) {
        self.state.count_error(message.into());
    }

    /// Sets the state (`connecting`, `connected`, `disconnected`, `listening`...) and, if it
    /// changed, publishes the status event and returns true. `connected` counts as a
    /// reconnection when it is not the bridge's first.
    pub async fn set_state(&self, state: &'static str, connected: bool) -> bool {
        if !self.state.set_state(state, connected, now_ms()) {
            return false;
        }
        self.report().await;
        true
    }

    /// Records a gap and publishes the status event.
    pub async fn gap(&self, gap: Gap) {
        self.state.set_gap(gap);
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
            warn!(bridge = %self.state.name(), error = ?error.to_string(),
                "cannot publish the status event");
        }
    }
}

/// Every configured bridge, built and ready to run.
pub struct Built {
    states: BridgeStates,
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
    let configs = config
        .kinds()
        .into_iter()
        .flat_map(|(_, kind)| kind.bridges());
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
        let state = Arc::new(BridgeState::new(&name, bridge.kind(), now_ms()));
        let cx = BridgeContext {
            broker: broker.clone(),
            identity,
            state: state.clone(),
            status_topic,
            shutdown: stopped.clone(),
            qos: QoS::AtLeastOnce,
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
        states: states.into_iter().collect(),
        routes,
        tasks,
        contexts,
        stop,
    })
}

impl Built {
    /// The bridges' states, for `/metrics` and `/healthz`.
    pub fn states(&self) -> BridgeStates {
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
            info!(bridge = %state.name(), kind = state.kind(), "bridge started");
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

/// Rations the warnings about inputs a bridge refuses or drops: at most one a second, so that
/// a flood (bad signatures from anyone on the internet, garbage datagrams) cannot flood the
/// log. The others are logged at debug level, and the next warning says how many there were.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    /// When the last warning was logged, milliseconds since the epoch.
    last_warn_ms: AtomicI64,
    /// Inputs not warned about since then.
    quiet: AtomicU64,
}

impl Throttle {
    /// `Some(n)` when this input gets a warning, `n` being how many did not since the last
    /// one; `None` when it is to be logged at debug level only.
    pub(crate) fn warning(&self) -> Option<u64> {
        let now = now_ms();
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        if now - last >= 1000
            && self
                .last_warn_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.quiet.swap(0, Ordering::Relaxed))
        } else {
            self.quiet.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Milliseconds since the epoch, now.
pub(crate) fn now_ms() -> i64 {
    crate::broker::message::now_ms()
}
