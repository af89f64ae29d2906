//! The broker: sessions, routing, retained messages, QoS, wills, keepalive and `$SYS`
//! statistics.
//!
//! It serves any `AsyncRead + AsyncWrite` stream ([`Broker::serve`]) and knows nothing of
//! sockets, so TCP, TLS and WebSocket transports share one code path. It depends on
//! [`crate::auth`], [`crate::topic`], [`crate::config`] and the codec crate, never on transports.
//!
//! # Layout
//! - [`connection`] (a folder, one concern per file): one task per connection. `handshake`
//!   (CONNECT, authentication, CONNACK), `serve` (the serve loop and its I/O), `inbound`,
//!   `publish` and `subscribe` (packets from the client), `outbound` (deliveries within the
//!   inflight window, one `writev` per batch), `qos` (the QoS 1/2 rules, without I/O),
//!   `aliases` (topic aliases both ways), `catchup` (reading the log for a lagging session),
//!   `save` (persistent session saves) and `end` (how a connection ends, wills).
//! - `pipeline` (a folder, in data-flow order): the path of an accepted publish. `verdict`
//!   (ACL, topic depth, retained quota), `group` (the publishes of one read), `log` (the
//!   hand-over to the log and its completion), `routing` (committed events to their fan-out,
//!   in log order) and `pressure` (what flows back: paused readers and publishers).
//! - `shared`: the broker's shared state, reached through named methods.
//! - `admission`: connection limits, and the permit that holds a connection's slot.
//! - [`session`]: what outlives a connection, and who owns it.
//! - [`registry`]: the client-id registry (takeover, resume), ownership and the anonymous
//!   session quota under one lock.
//! - [`quota`]: what anonymous clients may make the broker keep: sessions, their expiry,
//!   filters.
//! - [`subscription`]: one subscription's options and its filter (`$share` groups).
//! - [`router`]: the subscription table and retained messages; fan-out.
//! - [`retained`]: the retained messages by topic, and their quota.
//! - [`message`]: a routed message with its shared encodings.
//! - [`outbox`]: the per-connection write queue (vectored writes).
//! - `passwords` (a folder) and `restore`: password checks with backoff and a bounded queue;
//!   the state restored at startup.
//! - [`stats`] and [`sys`]: counters and their `$SYS/broker/...` publication.

mod admission;
pub mod connection;
pub mod message;
pub mod outbox;
mod passwords;
mod pipeline;
pub mod quota;
pub mod registry;
mod restore;
pub mod retained;
pub mod router;
pub mod session;
mod shared;
pub mod stats;
pub mod subscription;
pub mod sys;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::auth::{Identity, Users};
use crate::config::Limits;
use crate::store::{Store, StoreError};
pub use admission::{Permit, Refusal};
use firehose_codec::topic::validate_topic_name;
use firehose_codec::{PublishProperties, QoS, ReasonCode};
use message::{now_ms, Message};
pub use passwords::LoginRefusal;
use pipeline::publish_verdict;
use retained::QuotaFull;
use shared::Shared;
use stats::Stats;

/// What the transport knows about a connection before MQTT starts.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The client's address (from PROXY protocol or `X-Forwarded-For` when trusted).
    pub peer: SocketAddr,
    /// Transport name for logs and metrics (`tcp`, `tls`, `ws`, `wss`).
    pub transport: &'static str,
    /// A user of the users file the transport already authenticated (TLS client certificate).
    /// The client then needs no password; a CONNECT naming another user is refused.
    pub authenticated_user: Option<String>,
}

impl ConnectionInfo {
    /// A connection known only by its address.
    pub fn new(peer: SocketAddr, transport: &'static str) -> ConnectionInfo {
        ConnectionInfo {
            peer,
            transport,
            authenticated_user: None,
        }
    }
}

/// The broker handle that transports use. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Broker {
    /// The state every connection of this broker shares.
    shared: Arc<Shared>,
}

/// Why an in-process publish was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The topic is not within the publisher's ACL.
    #[error("{user} may not publish to {topic}")]
    NotAuthorized {
        /// The publisher.
        user: String,
        /// The topic.
        topic: String,
    },
    /// Not a valid MQTT topic name.
    #[error("invalid topic name: {0}")]
    InvalidTopic(String),
    /// The log could not store the event.
    #[error("the event log could not store the event")]
    NotStored,
    /// A retained message the retained quota has no room for.
    #[error("retained message refused: {0}")]
    RetainedQuotaFull(QuotaFull),
}

/// What anonymous clients hold now ([`Broker::anonymous_usage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnonymousUsage {
    /// Persistent sessions created by anonymous clients, online or not.
    pub sessions: u64,
    /// Filters of anonymous sessions in the subscription table.
    pub subscriptions: u64,
}

impl Broker {
    /// A broker with these limits and users over an opened store, restoring the retained
    /// messages and persistent sessions the store holds. Must run inside a Tokio runtime
    /// (it starts the routing task; restored sessions get expiry timers).
    ///
    /// # Errors
    /// [`StoreError`] when the stored state cannot be read.
    pub fn open(limits: Limits, users: Users, store: Store) -> Result<Broker, StoreError> {
        let shared = Shared::new(limits, users, store);
        pipeline::start(&shared);
        restore::retained(&shared)?;
        restore::sessions(&shared)?;
        Ok(Broker { shared })
    }

    /// Admits a new connection from `peer`, or says which limit refuses it.
    ///
    /// # Errors
    /// [`Refusal`] when a connection limit is reached (counted in the statistics).
    pub fn admit(&self, peer: SocketAddr) -> Result<Permit, Refusal> {
        admission::admit(&self.shared, peer)
    }

    /// Serves one MQTT connection until it ends. The permit, and whatever else the transport
    /// passes as `held` (its metrics guard), is kept for the connection's whole life.
    ///
    /// Not an async fn: the future is made of exactly what the connection keeps, so that a
    /// transport may spawn it as a task of its own and leave its accept-phase state behind.
    pub fn serve<S, H>(
        &self,
        stream: S,
        info: ConnectionInfo,
        permit: Permit,
        held: H,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Send + 'static,
    {
        connection::run(self.shared.clone(), stream, info, (permit, held))
    }

    /// Starts publishing `$SYS/broker/...` statistics every `interval`.
    pub fn spawn_sys(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(sys::run(self.shared.clone(), interval))
    }

    /// Counters, for tests and metrics.
    pub fn stats(&self) -> &Stats {
        self.shared.stats()
    }

    /// The retained messages kept and what they take of the quota, for metrics.
    pub fn retained_usage(&self) -> retained::Usage {
        self.shared.router().retained().usage()
    }

    /// What anonymous clients hold now, against their quotas, for metrics: persistent
    /// sessions (`limits.max_anonymous_sessions`) and subscriptions
    /// (`limits.max_anonymous_subscriptions`).
    pub fn anonymous_usage(&self) -> AnonymousUsage {
        AnonymousUsage {
            sessions: self.shared.registry().anonymous_sessions(),
            subscriptions: self.shared.quotas().anonymous_subscriptions(),
        }
    }

    /// Publishes as `publisher` from inside the process (bridges, HTTP publish), with the same
    /// access checks as MQTT. Resolves once the event is durable, with its id.
    ///
    /// # Errors
    /// [`PublishError`] for a topic the publisher may not write, an invalid topic name, or a
    /// log that could not store the event.
    pub async fn publish(
        &self,
        publisher: &Identity,
        topic: &str,
        payload: bytes::Bytes,
        qos: QoS,
        retain: bool,
        properties: PublishProperties,
    ) -> Result<u64, PublishError> {
        validate_topic_name(topic).map_err(|e| PublishError::InvalidTopic(e.to_string()))?;
        match publish_verdict(self.shared.limits(), publisher, topic) {
            ReasonCode::Success => {}
            ReasonCode::TopicNameInvalid => {
                stats::add(&self.shared.stats().publish_over_limits, 1);
                return Err(PublishError::InvalidTopic(format!(
                    "the topic has {} levels, more than limits.max_topic_levels ({})",
                    crate::topic::level_count(topic),
                    self.shared.limits().max_topic_levels
                )));
            }
            _ => {
                stats::add(&self.shared.stats().publish_denied, 1);
                return Err(PublishError::NotAuthorized {
                    user: publisher.name().to_owned(),
                    topic: topic.to_owned(),
                });
            }
        }
        let message = Message::new(
            0,
            topic.into(),
            payload,
            qos,
            retain,
            properties,
            publisher.name().into(),
        );
        stats::add(&self.shared.stats().messages_received, 1);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared
            .accept(
                message,
                publisher.shared_name(),
                now_ms(),
                Some(Box::new(move |id| {
                    let _ = tx.send(id);
                })),
            )
            .map_err(PublishError::RetainedQuotaFull)?;
        match rx.await {
            Ok(Some(id)) => Ok(id),
            _ => Err(PublishError::NotStored),
        }
    }

    /// Who presents this user name and password from `ip`, by the same checks as an MQTT
    /// CONNECT: remembered logins, backoff by address and by user name, the bounded queue of
    /// checks. For transports that take passwords too (HTTP Basic), so that guessing through
    /// them is held to the same limits and counted in the same tables.
    ///
    /// # Errors
    /// [`LoginRefusal`]: bad credentials, or refused unchecked (backoff, too many checks).
    pub async fn check_password(
        &self,
        ip: IpAddr,
        user: &str,
        password: &[u8],
    ) -> Result<Identity, LoginRefusal> {
        self.shared
            .check_password(ip, Some(user), Some(password))
            .await
    }

    /// The users file, for transports and bridges that authenticate on their own.
    pub fn users(&self) -> &Users {
        self.shared.users()
    }

    /// The event log, for the history API.
    pub fn store(&self) -> &Store {
        self.shared.store()
    }

    /// Id of the newest event that live subscribers have been given (or are being given).
    pub fn log_position(&self) -> u64 {
        self.shared.log_position()
    }

    /// Waits until the log holds an event after `id` that has been routed live; followers
    /// (SSE, `replay --follow`) then read it from the log.
    pub async fn wait_for_events_after(&self, id: u64) {
        self.shared.wait_for_events_after(id).await;
    }

    /// Tells every connection to close (MQTT 5 clients get DISCONNECT 0x8B), waits up to
    /// `grace` for them to finish (saving their sessions), then flushes and closes the log.
    pub async fn shutdown(&self, grace: Duration) {
        self.shared.begin_shutdown();
        let _ = tokio::time::timeout(grace, self.shared.admission().all_closed()).await;
        let store = self.shared.store().clone();
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
    }
}

/// A broker over a fresh store in a temporary directory, for unit tests elsewhere in the
/// crate. Keep the directory alive as long as the broker.
#[cfg(test)]
pub(crate) fn test_broker(limits: Limits, users: Users) -> (Broker, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::open(crate::store::StoreConfig {
        data_dir: dir.path().to_owned(),
        durability: crate::store::Durability::Process,
        retention: Vec::new(),
    })
    .expect("store opens");
    let broker = Broker::open(limits, users, store).expect("broker opens");
    (broker, dir)
}
