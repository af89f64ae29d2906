//! The broker's shared state ([`Shared`]): one per process, behind the `Arc` that every
//! connection task, the routing task and the transports' [`super::Broker`] handle hold.
//!
//! Its fields are private to this file. Connections reach it through the named methods below
//! (and those of the publish pipeline, [`super::pipeline`], and of [`super::admission`]),
//! which say what they do to the broker rather than which part they reach into; the broker's
//! own modules (pipeline, restore, `$SYS`) get the parts they are built on through the
//! `pub(super)` accessors. Depends on the router, the session registry, the store, the users
//! and the limits.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::admission::Admission;
use super::message::{now_ms, Message};
use super::passwords::{LoginRefusal, PasswordChecks};
use super::pipeline::Pipeline;
use super::retained::Retained;
use super::router::Router;
use super::session::{AttachRequest, Attached, Registry, Session};
use super::stats::Stats;
use super::subscription::SubOptions;
use crate::auth::{Identity, Users};
use crate::config::Limits;
use crate::store::{Page, Store, StoreError, StoredInflight, StoredSession, StoredSubscription};

/// The broker's shared state; one per process, shared by every connection task.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Configured limits.
    limits: Limits,
    /// Users and their ACLs.
    users: Arc<Users>,
    /// Bounded, remembered password checks for CONNECT.
    passwords: PasswordChecks,
    /// Subscriptions and retained messages.
    router: Router,
    /// Sessions by client id.
    registry: Registry,
    /// Counters.
    stats: Stats,
    /// Becomes `true` when the broker shuts down.
    shutdown: watch::Sender<bool>,
    /// The same flag for connections, which read it at every turn of their loop: an atomic
    /// load rather than the watch's lock. Set before `Registry::wake_all` wakes them.
    closing: AtomicBool,
    /// Connection admission (limits).
    admission: Admission,
    /// The event log, retained messages and persistent sessions.
    store: Store,
    /// Accepted publishes on their way through the log to routing (see [`super::pipeline`]).
    pipeline: Pipeline,
}

/// Called once a session save is durable.
pub(crate) type SaveDone = Box<dyn FnOnce() + Send>;

impl Shared {
    /// The state of a broker with these limits and users over an opened store, before its
    /// routing task runs and before anything is restored.
    pub(super) fn new(limits: Limits, users: Users, store: Store) -> Arc<Shared> {
        let (shutdown, _) = watch::channel(false);
        let last_id = store.last_id();
        let users = Arc::new(users);
        let retained = Retained::new(limits.max_retained_messages, limits.max_retained_bytes);
        let stats = Stats::new();
        Arc::new(Shared {
            passwords: PasswordChecks::new(users.clone(), &limits, stats.auth.clone()),
            limits,
            users,
            router: Router::new(retained),
            registry: Registry::default(),
            stats,
            shutdown,
            closing: AtomicBool::new(false),
            admission: Admission::default(),
            store,
            pipeline: Pipeline::new(last_id),
        })
    }

    /// Configured limits.
    #[inline]
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Counters, which connections add to in batches.
    #[inline]
    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The users file, for the broker handle (transports and bridges authenticate with it).
    pub(super) fn users(&self) -> &Users {
        &self.users
    }

    /// The event log, for the pipeline, the restore at startup and the broker handle.
    #[inline]
    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    /// The subscription table and retained messages, for the pipeline, restore and `$SYS`.
    #[inline]
    pub(super) fn router(&self) -> &Router {
        &self.router
    }

    /// Sessions by client id, for restore and `$SYS`.
    pub(super) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Connection admission, for the permits it hands out and shutdown, which waits for them.
    pub(super) fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The publish pipeline's own state (only [`super::pipeline`] reads its fields).
    #[inline]
    pub(super) fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Whether the broker is shutting down: read by every connection at every turn of its loop.
    #[inline]
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Sets the shutdown flag and wakes every connection, so that each finds it and closes.
    pub(super) fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
        self.closing.store(true, Ordering::SeqCst);
        // After the flag: every connection woken now finds it (see `Registry::wake_all`).
        self.registry.wake_all();
    }

    /// The shutdown flag, for tasks that wait on it (`$SYS`).
    pub(super) fn watch_shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Who a client connecting from `ip` is, from its CONNECT user name and password: bounded,
    /// backed-off and remembered password checks (see `passwords`).
    ///
    /// # Errors
    /// [`LoginRefusal`]: unknown users and wrong passwords, and logins refused unchecked (backoff,
    /// too many checks waiting).
    pub(crate) async fn check_password(
        &self,
        ip: IpAddr,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Identity, LoginRefusal> {
        self.passwords.check(ip, username, password).await
    }

    /// The password checks, for tests that hold their cores.
    #[cfg(test)]
    pub(crate) fn passwords(&self) -> &PasswordChecks {
        &self.passwords
    }

    /// The identity of a user of the users file, for a client its transport authenticated.
    pub(crate) fn identity_of(&self, user: &str) -> Option<Identity> {
        self.users.identity_of(user)
    }

    /// Id of the newest event in the log: where a new session starts reading.
    pub(crate) fn last_event_id(&self) -> u64 {
        self.store.last_id()
    }

    /// Attaches a connection to the session of `client_id` (resume or takeover, see
    /// [`Registry::attach`]), and removes the subscriptions of a session it discarded.
    pub(crate) fn attach(&self, client_id: &Arc<str>, request: AttachRequest) -> Attached {
        let attached = self.registry.attach(client_id, request);
        if let Some((old, filters)) = &attached.discarded {
            self.router.remove_all(old, filters);
        }
        attached
    }

    /// Adds or replaces `session`'s subscription to `filter` in the subscription table;
    /// returns whether it existed.
    pub(crate) fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &str,
        options: SubOptions,
    ) -> bool {
        self.router.subscribe(session, filter, options)
    }

    /// Removes `session`'s subscription to `filter` from the subscription table; returns
    /// whether it existed.
    pub(crate) fn unsubscribe(&self, session: &Arc<Session>, filter: &str) -> bool {
        self.router.unsubscribe(session, filter)
    }

    /// The retained messages whose topics match `filter`, for a new subscription.
    pub(crate) fn retained_matching(&self, filter: &str) -> Vec<Arc<Message>> {
        self.router.retained().matching(filter)
    }

    /// Reads, on a blocking thread, up to `most` events after `from` that match `filters`,
    /// examining at most `scan` rows (see [`Store::read_after`]): a session's catch-up.
    pub(crate) fn read_log_after(
        &self,
        from: u64,
        filters: Vec<String>,
        most: usize,
        scan: usize,
    ) -> JoinHandle<Result<Page, StoreError>> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.read_after(from, &filters, most, scan))
    }

    /// Saves a persistent session (or forgets one whose expiry is 0). `done` runs once the save
    /// is durable, or at once when there is nothing to save.
    pub(crate) fn save_session(&self, session: &Session, connected: bool, done: Option<SaveDone>) {
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
    pub(crate) fn end_session(&self, session: &Arc<Session>, generation: u64) -> bool {
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
        session: Arc<Session>,
        generation: u64,
        secs: u64,
    ) {
        let shared = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            if shared.end_session(&session, generation) {
                tracing::debug!(client = ?session.client_id, "session expired");
            }
        });
    }
}
