//! The broker's shared state ([`Shared`]): one per process, behind the `Arc` that every
//! connection task, the routing task and the transports' [`super::Broker`] handle hold.
//!
//! Its fields are private to this file. Connections reach it through the named methods below
//! (and those of the publish pipeline, [`super::pipeline`], and of [`super::admission`]),
//! which say what they do to the broker rather than which part they reach into; the broker's
//! own modules (pipeline, restore, `$SYS`) get the parts they are built on through the
//! `pub(super)` accessors. Depends on the router, the session registry and the anonymous
//! quotas, the store, the users and the limits.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::admission::Admission;
use super::message::{now_ms, Message};
use super::passwords::{LoginRefusal, PasswordChecks};
use super::pipeline::Pipeline;
use super::quota::Quotas;
use super::registry::{AttachRefusal, AttachRequest, Attached, Registry};
use super::retained::Retained;
use super::router::Router;
use super::session::{Owner, Session, SessionState};
use super::stats::{self, Stats};
use super::subscription::SubOptions;
use crate::auth::{Identity, Users};
use crate::config::Limits;
use crate::store::{
    Page, SessionChanges, Store, StoreError, StoredInflight, StoredSession, StoredSessionState,
    StoredSubscription,
};

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
    /// Sessions by client id, their owners and the anonymous session quota.
    registry: Registry,
    /// The anonymous subscriptions and the runs of quota refusals.
    quotas: Quotas,
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
        let registry = Registry::new(&limits);
        let stats = Stats::new();
        Arc::new(Shared {
            passwords: PasswordChecks::new(users.clone(), &limits, stats.auth.clone()),
            limits,
            users,
            router: Router::new(retained),
            registry,
            quotas: Quotas::default(),
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

    /// The quotas of anonymous clients: SUBSCRIBE checks them, restore and `$SYS` count.
    pub(crate) fn quotas(&self) -> &Quotas {
        &self.quotas
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

    /// Attaches a connection of `identity` from `peer` to the session of `client_id` (resume
    /// or takeover, see [`Registry::attach`]), removes the subscriptions of a session it
    /// discarded, and drops those of a resumed session that `identity` may no longer
    /// subscribe to.
    ///
    /// # Errors
    /// [`AttachRefusal`] (counted; a quota's logged once per run) when the client id is another
    /// identity's or a new anonymous persistent session is beyond its quota.
    pub(crate) fn attach(
        &self,
        client_id: &Arc<str>,
        identity: &Identity,
        peer: SocketAddr,
        request: AttachRequest,
    ) -> Result<Attached, AttachRefusal> {
        let owner = request.owner.clone();
        let counted = owner.is_anonymous() && request.expiry_interval > 0;
        let attached = match self.registry.attach(client_id, request) {
            Ok(attached) => attached,
            Err(refusal) => {
                match &refusal {
                    AttachRefusal::NotOwner(_) => stats::add(&self.stats.sessions_not_owner, 1),
                    AttachRefusal::Quota(full) => {
                        self.quotas
                            .session_refused(&self.stats, *full, peer, client_id)
                    }
                }
                return Err(refusal);
            }
        };
        if counted && !attached.session_present {
            self.quotas.session_fitted();
        }
        if let Some((old, filters)) = &attached.discarded {
            self.forget_subscriptions(old, &owner, filters);
        }
        if attached.session_present {
            self.revoke_forbidden(&attached.session, identity, &owner);
        }
        Ok(attached)
    }

    /// Removes `filters`, which `session` (of `owner`) no longer holds, from the subscription
    /// table and the anonymous count.
    fn forget_subscriptions(&self, session: &Arc<Session>, owner: &Owner, filters: &[String]) {
        self.router.remove_all(session, owner, filters);
        if owner.is_anonymous() {
            self.quotas.release_subscriptions(filters.len());
        }
    }

    /// Drops the subscriptions of a resumed session that `identity` may not subscribe to (the
    /// users file changed since they were made): out of the subscription table first, so that
    /// nothing more is routed by them, then out of the session and the store. Logged and
    /// counted.
    fn revoke_forbidden(&self, session: &Arc<Session>, identity: &Identity, owner: &Owner) {
        let forbidden: Vec<String> = session
            .lock()
            .subscriptions
            .keys()
            .filter(|filter| !identity.may_subscribe(filter))
            .cloned()
            .collect();
        if forbidden.is_empty() {
            return;
        }
        self.router.remove_all(session, owner, &forbidden);
        let removed = {
            let mut state = session.lock();
            forbidden
                .iter()
                .filter(|filter| state.subscriptions.remove(filter).is_some())
                .count()
        };
        if owner.is_anonymous() {
            self.quotas.release_subscriptions(removed);
        }
        stats::add(&self.stats.subscriptions_revoked, removed as u64);
        tracing::warn!(client = ?session.client_id, owner = %owner, filters = ?forbidden,
            "subscriptions dropped on resume: the users file no longer lets their owner subscribe to them");
        self.save_session(session, true, &forbidden, None);
    }

    /// Adds or replaces `session`'s subscription to `filter` in the subscription table
    /// (`owner` is the session's: it picks the `$share` group); returns whether it existed.
    pub(crate) fn subscribe(
        &self,
        session: &Arc<Session>,
        owner: &Owner,
        filter: &str,
        options: SubOptions,
    ) -> bool {
        self.router.subscribe(session, owner, filter, options)
    }

    /// Removes `session`'s subscription to `filter` from the subscription table; returns
    /// whether it existed. (The anonymous count follows the session's own list: the caller's.)
    pub(crate) fn unsubscribe(&self, session: &Arc<Session>, owner: &Owner, filter: &str) -> bool {
        self.router.unsubscribe(session, owner, filter)
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

    /// Saves a persistent session (or forgets one whose expiry is 0). `changed` are the filters
    /// subscribed, changed or unsubscribed since its last save: a session whose stored copy is
    /// its own writes its state and those only ([`SessionChanges`]); its first save writes it
    /// whole. A save of a session whose connection ended (`connected` false) first sheds its
    /// queue ([`SessionState::shed_queue`]). `done` runs once the save is durable, or at once
    /// when there is nothing to save.
    pub(crate) fn save_session(
        &self,
        session: &Arc<Session>,
        connected: bool,
        changed: &[String],
        done: Option<SaveDone>,
    ) {
        let finish = |done: Option<SaveDone>| {
            if let Some(done) = done {
                done();
            }
        };
        // The registry before the session (lock order), and only for a first save.
        let origin = if session.lock().saved_whole {
            None
        } else {
            self.registry.origin(session)
        };
        let mut state = session.lock();
        if state.ended {
            drop(state);
            return finish(done);
        }
        if state.expiry_interval == 0 {
            state.saved_whole = false;
            let persisted = std::mem::replace(&mut state.persisted, false);
            drop(state);
            if persisted {
                self.store.delete_session(&session.client_id);
            }
            return finish(done);
        }
        if !connected {
            state.shed_queue();
        }
        let done = done.map(|done| -> crate::store::Completion { Box::new(move |_| done()) });
        let progress = stored_state(&state, connected);
        // Sent while the session is locked: its saves reach the writer in the order they were
        // made, which incremental saves need.
        if state.saved_whole {
            let mut changes = SessionChanges {
                client_id: session.client_id.to_string(),
                state: Some(progress),
                subscribed: Vec::new(),
                unsubscribed: Vec::new(),
            };
            for filter in changed {
                match state.subscriptions.get(filter) {
                    Some(options) => changes
                        .subscribed
                        .push(stored_subscription(filter, options)),
                    None => changes.unsubscribed.push(filter.clone()),
                }
            }
            state.persisted = true;
            self.store.update_session(changes, done);
        } else {
            let Some((owner, address)) = origin else {
                // No longer registered: replaced or ended meanwhile, nothing to save.
                drop(state);
                if let Some(done) = done {
                    done(Ok(0));
                }
                return;
            };
            state.persisted = true;
            state.saved_whole = true;
            let whole = StoredSession {
                client_id: session.client_id.to_string(),
                owner: owner.user().map(str::to_owned),
                address: address.map(|a| a.to_string()),
                state: progress,
                subscriptions: state
                    .subscriptions
                    .iter()
                    .map(|(filter, options)| stored_subscription(filter, options))
                    .collect(),
            };
            self.store.save_session(whole, done);
        }
    }

    /// Ends a session for good: out of the registry, the router and the store.
    pub(crate) fn end_session(&self, session: &Arc<Session>, generation: u64) -> bool {
        match self.registry.end_if_current(session, generation) {
            Some(ended) => {
                self.forget_subscriptions(session, &ended.owner, &ended.filters);
                if ended.persisted {
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

/// A subscription as the store keeps it.
fn stored_subscription(filter: &str, options: &SubOptions) -> StoredSubscription {
    StoredSubscription {
        filter: filter.to_owned(),
        qos: options.qos as u8,
        no_local: options.no_local,
        retain_as_published: options.retain_as_published,
        subscription_id: options.id,
    }
}

/// The state of a session as the store keeps it: expiry, disconnect time, the acknowledged
/// cursor, logged deliveries not yet acknowledged, and incoming QoS 2 ids.
fn stored_state(state: &SessionState, connected: bool) -> StoredSessionState {
    StoredSessionState {
        expiry_interval: state.expiry_interval,
        disconnected_at_ms: (!connected).then(now_ms),
        cursor: state.acknowledged_cursor(),
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
                // Completed out of order after a restart: only remembered so that catch-up
                // skips them (stage 2).
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
    }
}

#[cfg(test)]
mod tests {
    use firehose_codec::{Protocol, QoS};

    use super::*;
    use crate::auth::hash_password;

    fn options() -> SubOptions {
        SubOptions {
            qos: QoS::AtLeastOnce,
            no_local: false,
            retain_as_published: false,
            id: None,
        }
    }

    /// A session resumed by its user keeps only the filters the user may still subscribe to;
    /// the others leave the subscription table, so nothing more is routed by them.
    #[tokio::test]
    async fn a_resumed_session_loses_the_filters_its_owner_may_no_longer_subscribe() {
        let hash = hash_password(b"secret").expect("hash");
        let users = Users::parse(&format!(
            "[[user]]\nname = \"reader\"\npassword = \"{hash}\"\nsubscribe = [\"a/#\"]\n"
        ))
        .expect("users");
        let (broker, _dir) = crate::broker::test_broker(Limits::default(), users);
        let shared = &broker.shared;
        let identity = shared.identity_of("reader").expect("user");
        let peer: SocketAddr = "192.0.2.1:1883".parse().expect("address");
        let request = || AttachRequest {
            clean_start: false,
            expiry_interval: 60,
            protocol: Protocol::V5,
            queue_limit: 10,
            cursor: 0,
            owner: Owner::of(&identity),
            address: peer.ip(),
        };
        let client_id: Arc<str> = "reader-session".into();
        let first = shared
            .attach(&client_id, &identity, peer, request())
            .expect("attached");
        // As if the users file had allowed more when they were subscribed.
        for filter in ["a/1", "b/#"] {
            shared.subscribe(&first.session, &Owner::of(&identity), filter, options());
            first
                .session
                .lock()
                .subscriptions
                .insert(filter.into(), options());
        }
        first.session.lock().link = None;
        let resumed = shared
            .attach(&client_id, &identity, peer, request())
            .expect("resumed");
        assert!(resumed.session_present);
        let kept: Vec<String> = resumed
            .session
            .lock()
            .subscriptions
            .keys()
            .cloned()
            .collect();
        assert_eq!(kept, ["a/1"]);
        assert_eq!(shared.router().filter_count(), 1, "b/# left the table");
        assert_eq!(stats::get(&shared.stats().subscriptions_revoked), 1);
    }
}
