//! The broker: sessions, routing, retained messages, QoS, wills, keepalive and `$SYS`
//! statistics.
//!
//! It serves any `AsyncRead + AsyncWrite` stream ([`Broker::serve`]) and knows nothing of
//! sockets, so TCP, TLS and WebSocket transports share one code path. It depends on
//! [`crate::auth`], [`crate::topic`], [`crate::config`] and the codec crate, never on transports.
//!
//! # Layout
//! - [`connection`]: one task per connection: reads packets, runs the MQTT state machines,
//!   writes batches.
//! - [`session`]: what outlives a connection, and the client-id registry (takeover, resume).
//! - [`router`]: the subscription table and retained messages; fan-out.
//! - `routing`: committed events to their fan-out, in log order.
//! - [`retained`]: the retained messages by topic, and their quota.
//! - [`message`]: a routed message with its shared encodings.
//! - [`outbox`]: the per-connection write queue (vectored writes).
//! - [`stats`] and [`sys`]: counters and their `$SYS/broker/...` publication.

pub mod connection;
pub mod message;
pub mod outbox;
mod passwords;
mod restore;
pub mod retained;
pub mod router;
mod routing;
pub mod session;
pub mod stats;
pub mod subscription;
pub mod sys;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch, Notify};

use crate::auth::{Identity, Users};
use crate::config::Limits;
use crate::store::{
    Append, NewEvent, Store, StoreError, StoredInflight, StoredSession, StoredSubscription,
};
use firehose_codec::topic::validate_topic_name;
use firehose_codec::{PublishProperties, QoS, ReasonCode};
use message::{now_ms, Message};
use retained::{Claim, QuotaFull, Retained};
use router::Router;
use routing::{CommittedGroup, RoutingQueue};
use session::Registry;
use stats::Stats;

/// The broker's shared state; one per process, shared by every connection task.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Configured limits.
    pub(crate) limits: Limits,
    /// Users and their ACLs.
    pub(crate) users: Arc<Users>,
    /// Bounded, remembered password checks for CONNECT.
    pub(crate) passwords: passwords::PasswordChecks,
    /// Subscriptions and retained messages.
    pub(crate) router: Router,
    /// Sessions by client id.
    pub(crate) registry: Registry,
    /// Counters.
    pub(crate) stats: Stats,
    /// Becomes `true` when the broker shuts down.
    pub(crate) shutdown: watch::Sender<bool>,
    /// The same flag for connections, which read it at every turn of their loop: an atomic
    /// load rather than the watch's lock. Set before `Registry::wake_all` wakes them.
    pub(crate) closing: AtomicBool,
    /// Connection admission (limits).
    admission: Admission,
    /// The event log, retained messages and persistent sessions.
    pub(crate) store: Store,
    /// Id of the logged event being routed (or last routed): a lagging session may return to
    /// live routing once its cursor has reached it.
    pub(crate) routing_started: AtomicU64,
    /// Woken after every logged event is routed, for readers that follow the log.
    log_advanced: Notify,
    /// Committed events on their way from the log's writer thread to routing, with what their
    /// publisher is told.
    to_route: mpsc::UnboundedSender<CommittedGroup>,
    /// What was committed and is not yet routed: the receiving end of `to_route`.
    routing_queue: RoutingQueue,
    /// Events sent to routing and not yet routed; counted with the store's backlog when
    /// connections decide whether to keep reading, and read by connections that route a few
    /// waiting events themselves (see `routing`).
    routing_backlog: AtomicUsize,
    /// Until when (milliseconds after `started`) publishing connections are not read, because
    /// most subscribers of a recent message were behind.
    publishers_wait_until: AtomicU64,
    /// The broker's clock origin.
    started: std::time::Instant,
    /// Whether the retained quota's refusal was logged since a new retained topic last fit:
    /// a flood of refused messages logs one warning, not one per message.
    retained_full_warned: AtomicBool,
}

/// How long publishers pause when most subscribers of a message are behind. Short: they read
/// again after it and pause again only if the subscribers are still behind.
const PUBLISHER_PAUSE_MS: u64 = 5;

/// `publishers_wait_until` when publishers are not paused. Pauses end at least
/// [`PUBLISHER_PAUSE_MS`] after the clock's origin, so no pause is ever 0.
const NO_PAUSE: u64 = 0;

/// Accepted messages on their way into the log, in order: what the log stores, and what the
/// routing task delivers once they are committed.
///
/// Why a group: a connection hands over the publishes of one read (often dozens) together,
/// and the log takes them as one [`Append`] with one completion. Per publish there is then
/// no box, no queue entry, no hand-off to the routing task and no count of the broker's
/// handle of its own.
#[derive(Default)]
pub(crate) struct Publications {
    /// What the log stores, one per message.
    events: Vec<NewEvent>,
    /// What the routing task delivers, in the same order.
    entries: Vec<Committed>,
}

/// Room made at the first push of a group: a read of a fast publisher brings dozens of
/// publishes (60 to 80 in a fan-in flood), and growing from one would copy them six times.
const PUBLICATIONS_ROOM: usize = 64;

impl Publications {
    /// Adds a message received at `received_ms` (UTC milliseconds, the event's time) from
    /// `publisher`; `done` is told once it is durable, or not stored.
    ///
    /// The message is put in its `Arc` here, on the connection's thread, and numbered in
    /// place once committed (nobody else holds it before it is routed).
    pub(crate) fn push(
        &mut self,
        message: Message,
        publisher: Arc<str>,
        received_ms: i64,
        done: Option<Accepted>,
        claim: Option<Box<Claim>>,
    ) {
        if self.entries.capacity() == 0 {
            self.events.reserve(PUBLICATIONS_ROOM);
            self.entries.reserve(PUBLICATIONS_ROOM);
        }
        self.events
            .push(message.to_new_event(received_ms, publisher));
        self.entries.push(Committed {
            message: Arc::new(message),
            done,
            _claim: claim,
        });
    }

    /// Whether no message was added.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Gives back the room of a group that used less than half of it, before it waits in the
    /// log's queue: a read with one publish would otherwise hold room for
    /// [`PUBLICATIONS_ROOM`] events (13 KiB) there, and the queue holds up to 16,384 groups.
    fn fit(&mut self) {
        if self.entries.len() * 2 < self.entries.capacity() {
            self.events.shrink_to_fit();
            self.entries.shrink_to_fit();
        }
    }
}

/// [`Publications`] handed to the log.
struct Logged {
    /// The messages.
    publications: Publications,
    /// The broker whose routing task delivers them.
    shared: Arc<Shared>,
}

impl Append for Logged {
    fn events(&self) -> &[NewEvent] {
        &self.publications.events
    }

    fn done(self: Box<Self>, result: Result<u64, StoreError>) {
        let Logged {
            publications: Publications { events, entries },
            shared,
        } = *self;
        drop(events);
        match result {
            Ok(first_id) => {
                let count = entries.len();
                shared.routing_backlog.fetch_add(count, Ordering::AcqRel);
                let group = CommittedGroup { first_id, entries };
                if shared.to_route.send(group).is_err() {
                    // Only when the runtime is gone: nobody is left to deliver to or tell.
                    shared.routing_backlog.fetch_sub(count, Ordering::AcqRel);
                }
            }
            Err(error) => {
                for Committed { message, done, .. } in entries {
                    tracing::error!(topic = %message.topic, "cannot store event: {error}");
                    stats::add(&shared.stats.store_errors, 1);
                    if let Some(done) = done {
                        done(None);
                    }
                }
            }
        }
    }
}

/// A committed event for routing.
struct Committed {
    /// The event, with its id.
    message: Arc<Message>,
    /// Tells the publisher it is stored; run on the runtime by whichever task routes the
    /// event, so that the writer thread wakes the runtime once per batch, not once per
    /// publishing connection.
    done: Option<Accepted>,
    /// The room a retained message claimed in the quota, given back when the entry is
    /// dropped: once the message is in place, or when it is not stored. Held, never read.
    _claim: Option<Box<Claim>>,
}

/// Whether `identity` may publish to `topic`: `Success`, `TopicNameInvalid` beyond
/// `limits.max_topic_levels`, or `NotAuthorized` outside its access. One verdict for a
/// connection's publishes, its will and in-process publishes (bridges, HTTP).
pub(crate) fn publish_verdict(limits: &Limits, identity: &Identity, topic: &str) -> ReasonCode {
    if limits.topic_too_deep(topic).is_some() {
        ReasonCode::TopicNameInvalid
    } else if identity.may_publish(topic) {
        ReasonCode::Success
    } else {
        ReasonCode::NotAuthorized
    }
}

/// Called once a session save is durable.
pub(crate) type SaveDone = Box<dyn FnOnce() + Send>;

/// Called once an accepted message is durable (with its event id) or could not be stored.
pub(crate) type Accepted = Box<dyn FnOnce(Option<u64>) + Send>;

impl Shared {
    /// Routes a message that is not logged (`$SYS` statistics).
    pub(crate) fn route_unlogged(&self, message: Message) {
        self.router.publish(&Arc::new(message), &self.stats);
    }

    fn clock_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Pauses publishing connections for a moment: most subscribers of a message are behind
    /// (their queues half full or reading from the log).
    ///
    /// Why: without it a publisher faster than the fan-out fills every queue and the broker
    /// then drops QoS 0 messages for everyone (two thirds of them at the maximum rate) and
    /// holds seconds of backlog. Mosquitto, single threaded, slows publishers the same way
    /// implicitly. A stuck minority of subscribers never slows anyone: they fill their own
    /// queue and lose their own messages.
    fn slow_publishers(&self) {
        let now = self.clock_ms();
        let until = now.saturating_add(PUBLISHER_PAUSE_MS);
        if self
            .publishers_wait_until
            .fetch_max(until, Ordering::AcqRel)
            <= now
        {
            stats::add(&self.stats.publisher_pauses, 1);
        }
    }

    /// Whether connections that publish should stop reading for now (see `slow_publishers`).
    ///
    /// Asked at every turn of a publishing connection's loop, so the clock is read only while
    /// a pause is set: once it is over it is cleared (0), unless a new one replaced it.
    pub(crate) fn publishers_wait(&self) -> bool {
        let until = self.publishers_wait_until.load(Ordering::Acquire);
        if until == NO_PAUSE {
            return false;
        }
        if until > self.clock_ms() {
            return true;
        }
        let _ = self.publishers_wait_until.compare_exchange(
            until,
            NO_PAUSE,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        false
    }

    /// Events accepted but not yet routed (in the log's queue or the routing task's).
    pub(crate) fn delivery_backlog(&self) -> usize {
        self.store.backlog() + self.routing_backlog.load(Ordering::Acquire)
    }

    /// Appends an accepted message (after access checks), received at `received_ms` (UTC
    /// milliseconds, the event's time), to the log; once it is durable `done` is told and the
    /// routing task routes it, in log order.
    ///
    /// # Errors
    /// [`QuotaFull`] for a retained message the quota has no room for (counted; `done` is
    /// dropped untold).
    pub(crate) fn accept(
        self: &Arc<Self>,
        message: Message,
        publisher: Arc<str>,
        received_ms: i64,
        done: Option<Accepted>,
    ) -> Result<(), QuotaFull> {
        let claim = if message.retain {
            self.claim_retained(&message.topic, message.payload.len())?
        } else {
            None
        };
        // Room for exactly one: bridges publish one message at a time, at high rates too.
        let mut publications = Publications {
            events: Vec::with_capacity(1),
            entries: Vec::with_capacity(1),
        };
        publications.push(message, publisher, received_ms, done, claim);
        self.accept_all(publications);
        Ok(())
    }

    /// Claims room in the retained quota for a retained message (see [`Retained::claim`]); a
    /// refusal is counted, and logged as a warning once until a new retained topic fits again.
    pub(crate) fn claim_retained(
        &self,
        topic: &str,
        payload_len: usize,
    ) -> Result<Option<Box<Claim>>, QuotaFull> {
        let claimed = self.router.retained().claim(topic, payload_len);
        match &claimed {
            Ok(Some(_)) => self.retained_full_warned.store(false, Ordering::Relaxed),
            Ok(None) => {}
            Err(full) => {
                stats::add(&self.stats.publish_over_limits, 1);
                if !self.retained_full_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "retained message refused: {full}; new retained topics are refused until some are cleared"
                    );
                }
            }
        }
        claimed
    }

    /// [`Shared::accept`] for several messages at once, in order: the publishes of one read.
    pub(crate) fn accept_all(self: &Arc<Self>, mut publications: Publications) {
        if publications.is_empty() {
            return;
        }
        publications.fit();
        self.store.append_boxed(Box::new(Logged {
            publications,
            shared: Arc::clone(self),
        }));
    }

    /// Saves a persistent session (or forgets one whose expiry is 0). `done` runs once the save
    /// is durable, or at once when there is nothing to save.
    pub(crate) fn save_session(
        &self,
        session: &session::Session,
        connected: bool,
        done: Option<SaveDone>,
    ) {
        let finish = |done: Option<SaveDone>| {
            if let Some(done) = done {
                done();
            }
        };
        let stored = {
            let mut state = session.lock();
            if state.ended {
                drop(state);
                return finish(done);
            }
            state.dirty = false;
            if state.expiry_interval == 0 {
                if !std::mem::replace(&mut state.persisted, false) {
                    drop(state);
                    return finish(done);
                }
                None
            } else {
                state.persisted = true;
                Some(StoredSession {
                    client_id: session.client_id.to_string(),
                    expiry_interval: state.expiry_interval,
                    disconnected_at_ms: (!connected).then(now_ms),
                    cursor: state.acknowledged_cursor(),
                    subscriptions: state
                        .subscriptions
                        .iter()
                        .map(|(filter, o)| StoredSubscription {
                            filter: filter.clone(),
                            qos: o.qos as u8,
                            no_local: o.no_local,
                            retain_as_published: o.retain_as_published,
                            subscription_id: o.id,
                        })
                        .collect(),
                    inflight: state
                        .inflight_in_order()
                        .into_iter()
                        .filter(|(_, f)| f.delivery.from_log)
                        .map(|(packet_id, f)| StoredInflight {
                            packet_id,
                            event_id: f.delivery.message.id,
                            qos: f.delivery.qos as u8,
                            stage: u8::from(f.stage.is_release()),
                        })
                        .chain(
                            // Completed out of order after a restart: only remembered so that
                            // catch-up skips them (stage 2).
                            state
                                .delivered_ahead
                                .iter()
                                .filter(|id| {
                                    !state
                                        .inflight
                                        .values()
                                        .any(|f| f.delivery.message.id == *id)
                                })
                                .map(|event_id| StoredInflight {
                                    packet_id: 0,
                                    event_id,
                                    qos: 2,
                                    stage: 2,
                                }),
                        )
                        .collect(),
                    incoming_qos2: state.incoming_qos2.iter().copied().collect(),
                })
            }
        };
        match stored {
            Some(stored) => self.store.save_session(
                stored,
                done.map(|done| -> crate::store::Completion { Box::new(move |_| done()) }),
            ),
            None => {
                self.store.delete_session(&session.client_id);
                finish(done);
            }
        }
    }

    /// Ends a session for good: out of the registry, the router and the store.
    pub(crate) fn end_session(&self, session: &Arc<session::Session>, generation: u64) -> bool {
        match self.registry.end_if_current(session, generation) {
            Some((filters, persisted)) => {
                self.router.remove_all(session, &filters);
                if persisted {
                    self.store.delete_session(&session.client_id);
                }
                true
            }
            None => false,
        }
    }

    /// Ends `session` after `secs` unless a connection resumed it meanwhile.
    pub(crate) fn schedule_expiry(
        self: &Arc<Self>,
        session: Arc<session::Session>,
        generation: u64,
        secs: u64,
    ) {
        let shared = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            if shared.end_session(&session, generation) {
                tracing::debug!(client = %session.client_id, "session expired");
            }
        });
    }
}

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

/// Why a new connection was refused before it could speak MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `limits.max_connections` reached.
    #[error("too many connections (limit {0})")]
    TooManyConnections(u64),
    /// `limits.max_connections_per_ip` reached for this address.
    #[error("too many connections from this address (limit {0})")]
    TooManyFromAddress(u64),
}

/// Proof that a connection was admitted; releases its slot when dropped.
#[derive(Debug)]
pub struct Permit {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.admission.release(self.ip);
    }
}

#[derive(Debug, Default)]
struct Admission {
    open: AtomicU64,
    per_ip: Mutex<HashMap<IpAddr, u64>>,
    idle: Notify,
}

impl Admission {
    fn admit(&self, limits: &Limits, ip: IpAddr) -> Result<(), Refusal> {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        if limits.max_connections > 0 && open > limits.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::TooManyConnections(limits.max_connections));
        }
        if limits.max_connections_per_ip > 0 {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= limits.max_connections_per_ip {
                drop(per_ip);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::TooManyFromAddress(limits.max_connections_per_ip));
            }
            *count += 1;
        }
        Ok(())
    }

    fn release(&self, ip: IpAddr) {
        {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

impl Broker {
    /// A broker with these limits and users over an opened store, restoring the retained
    /// messages and persistent sessions the store holds. Must run inside a Tokio runtime
    /// (it starts the routing task; restored sessions get expiry timers).
    ///
    /// # Errors
    /// [`StoreError`] when the stored state cannot be read.
    pub fn open(limits: Limits, users: Users, store: Store) -> Result<Broker, StoreError> {
        let (shutdown, _) = watch::channel(false);
        let last_id = store.last_id();
        let users = Arc::new(users);
        let (to_route, committed) = mpsc::unbounded_channel();
        let routing_queue = routing::queue(committed);
        let retained = Retained::new(limits.max_retained_messages, limits.max_retained_bytes);
        let shared = Arc::new(Shared {
            limits,
            passwords: passwords::PasswordChecks::new(users.clone()),
            users,
            router: Router::new(retained),
            registry: Registry::default(),
            stats: Stats::new(),
            shutdown,
            closing: AtomicBool::new(false),
            admission: Admission::default(),
            store,
            routing_started: AtomicU64::new(last_id),
            log_advanced: Notify::new(),
            to_route,
            routing_queue: routing_queue.clone(),
            routing_backlog: AtomicUsize::new(0),
            publishers_wait_until: AtomicU64::new(NO_PAUSE),
            started: std::time::Instant::now(),
            retained_full_warned: AtomicBool::new(false),
        });
        tokio::spawn(routing::run(Arc::downgrade(&shared), routing_queue));
        restore::retained(&shared)?;
        restore::sessions(&shared)?;
        Ok(Broker { shared })
    }

    /// Admits a new connection from `peer`, or says which limit refuses it.
    ///
    /// # Errors
    /// [`Refusal`] when a connection limit is reached (counted in the statistics).
    pub fn admit(&self, peer: SocketAddr) -> Result<Permit, Refusal> {
        match self.shared.admission.admit(&self.shared.limits, peer.ip()) {
            Ok(()) => Ok(Permit {
                shared: self.shared.clone(),
                ip: peer.ip(),
            }),
            Err(refusal) => {
                stats::add(&self.shared.stats.connections_refused, 1);
                Err(refusal)
            }
        }
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
        &self.shared.stats
    }

    /// The retained messages kept and what they take of the quota, for metrics.
    pub fn retained_usage(&self) -> retained::Usage {
        self.shared.router.retained().usage()
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
        match publish_verdict(&self.shared.limits, publisher, topic) {
            ReasonCode::Success => {}
            ReasonCode::TopicNameInvalid => {
                stats::add(&self.shared.stats.publish_over_limits, 1);
                return Err(PublishError::InvalidTopic(format!(
                    "the topic has {} levels, more than limits.max_topic_levels ({})",
                    crate::topic::level_count(topic),
                    self.shared.limits.max_topic_levels
                )));
            }
            _ => {
                stats::add(&self.shared.stats.publish_denied, 1);
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
        stats::add(&self.shared.stats.messages_received, 1);
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

    /// The users file, for transports and bridges that authenticate on their own.
    pub fn users(&self) -> &Users {
        &self.shared.users
    }

    /// The event log, for the history API.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Id of the newest event that live subscribers have been given (or are being given).
    pub fn log_position(&self) -> u64 {
        self.shared.routing_started.load(Ordering::SeqCst)
    }

    /// Waits until the log holds an event after `id` that has been routed live; followers
    /// (SSE, `replay --follow`) then read it from the log.
    pub async fn wait_for_events_after(&self, id: u64) {
        loop {
            let advanced = self.shared.log_advanced.notified();
            if self.log_position() > id {
                return;
            }
            advanced.await;
        }
    }

    /// Tells every connection to close (MQTT 5 clients get DISCONNECT 0x8B), waits up to
    /// `grace` for them to finish (saving their sessions), then flushes and closes the log.
    pub async fn shutdown(&self, grace: Duration) {
        self.shared.shutdown.send_replace(true);
        self.shared.closing.store(true, Ordering::SeqCst);
        // After the flag: every connection woken now finds it (see `Registry::wake_all`).
        self.shared.registry.wake_all();
        let admission = &self.shared.admission;
        let _ = tokio::time::timeout(grace, async {
            loop {
                let idle = admission.idle.notified();
                if admission.open.load(Ordering::Acquire) == 0 {
                    break;
                }
                idle.await;
            }
        })
        .await;
        let store = self.shared.store.clone();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publishers_wait_only_for_a_moment_after_subscribers_fell_behind() {
        let (broker, _dir) = test_broker(Limits::default(), Users::none());
        let shared = &broker.shared;
        assert!(!shared.publishers_wait());
        shared.slow_publishers();
        shared.slow_publishers();
        assert!(shared.publishers_wait());
        assert_eq!(
            stats::get(&shared.stats.publisher_pauses),
            1,
            "one pause, extended"
        );
        // Twice the pause has certainly passed.
        tokio::time::sleep(Duration::from_millis(2 * PUBLISHER_PAUSE_MS + 1)).await;
        assert!(
            !shared.publishers_wait(),
            "the pause ends by itself: publishers are read again"
        );
        assert_eq!(
            shared.publishers_wait_until.load(Ordering::Acquire),
            NO_PAUSE,
            "an ended pause is cleared, so later turns need no clock"
        );
        shared.slow_publishers();
        assert!(shared.publishers_wait(), "a new pause after a cleared one");
        assert_eq!(stats::get(&shared.stats.publisher_pauses), 2);
    }

    fn publications(count: usize) -> Publications {
        let mut publications = Publications::default();
        for i in 0..count {
            let message = Message::new(
                0,
                "t".into(),
                bytes::Bytes::from(i.to_string()),
                QoS::AtMostOnce,
                false,
                PublishProperties::default(),
                "client".into(),
            );
            publications.push(message, "user".into(), 1, None, None);
        }
        publications
    }

    #[test]
    fn a_group_waits_for_the_log_without_room_it_does_not_use() {
        let mut one = publications(1);
        assert_eq!(one.entries.capacity(), PUBLICATIONS_ROOM);
        one.fit();
        assert_eq!(
            (one.events.capacity(), one.entries.capacity()),
            (1, 1),
            "a read with one publish holds room for one"
        );
        let mut many = publications(PUBLICATIONS_ROOM / 2 + 1);
        many.fit();
        assert_eq!(
            many.entries.capacity(),
            PUBLICATIONS_ROOM,
            "a group that used more than half keeps its room (no copy)"
        );
        assert_eq!(many.events.len(), PUBLICATIONS_ROOM / 2 + 1);
    }

    #[tokio::test]
    async fn a_group_is_numbered_in_order_and_acknowledged_with_each_id() {
        let (broker, _dir) = test_broker(Limits::default(), Users::none());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut group = Publications::default();
        for topic in ["a", "b", "c"] {
            let tx = tx.clone();
            let message = Message::new(
                0,
                topic.into(),
                bytes::Bytes::from_static(b"p"),
                QoS::AtLeastOnce,
                false,
                PublishProperties::default(),
                "client".into(),
            );
            let done: Accepted = Box::new(move |id| {
                let _ = tx.send((topic, id));
            });
            group.push(message, "user".into(), now_ms(), Some(done), None);
        }
        broker.shared.accept_all(group);
        let mut acknowledged = Vec::new();
        for _ in 0..3 {
            let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
            acknowledged.push(got.expect("acknowledged in time").expect("open"));
        }
        assert_eq!(
            acknowledged,
            [("a", Some(1)), ("b", Some(2)), ("c", Some(3))]
        );
        let stored: Vec<_> = (1..=3)
            .map(|id| {
                broker
                    .store()
                    .get(id)
                    .expect("read")
                    .map(|e| e.event.topic.to_string())
            })
            .collect();
        assert_eq!(
            stored,
            [Some("a".into()), Some("b".into()), Some("c".into())]
        );
    }
}
