//! Session state: what outlives a connection (subscriptions, queued and unacknowledged
//! messages, QoS 2 packet ids), and who owns it ([`Owner`]). The registry that maps client ids
//! to sessions is [`super::registry`].
//!
//! Depends on messages, counters, the subscription options and the identity a session's owner
//! is made of, never on the router (which points at sessions).
//!
//! Lock order: registry, then one session. Never call into the router while holding a session
//! lock: the router's publish path takes the subscription table, then session locks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use firehose_codec::{Protocol, QoS};

use super::message::Delivery;
use super::stats::{self, Stats};
use super::subscription::SubOptions;
use crate::auth::Identity;

/// How long a session may be behind without taking a single delivery before it counts as
/// stuck (a client that stopped reading) rather than slow: a stuck subscriber only loses its
/// own messages, it does not slow publishers down.
pub const STUCK_AFTER: Duration = Duration::from_secs(1);

/// Where an outgoing QoS 1/2 message stands in its handshake.
///
/// For a persistent session, a QoS 2 message is recorded in the store before its PUBLISH and
/// again before its PUBREL leave (`*Unsaved` stages wait for that), so that after a crash it is
/// resent with the same packet id and never delivered twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// QoS 1 sent, waiting for PUBACK.
    AwaitPubAck,
    /// QoS 2 PUBLISH waiting for its record to be durable before it is sent.
    PublishUnsaved {
        /// The save that makes it durable.
        ticket: u64,
    },
    /// QoS 2 sent, waiting for PUBREC.
    AwaitPubRec,
    /// PUBREC received; PUBREL waits for the new stage to be durable.
    ReleaseUnsaved {
        /// The save that makes it durable.
        ticket: u64,
    },
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitPubComp,
}

impl Stage {
    /// Whether the PUBLISH has been acknowledged (PUBREC) and only the release remains.
    pub fn is_release(self) -> bool {
        matches!(self, Stage::ReleaseUnsaved { .. } | Stage::AwaitPubComp)
    }
}

/// Hashing for maps keyed by packet identifier.
///
/// Packet ids are handed out in sequence and mostly acknowledged in sequence, so the id itself
/// picks the slot: consecutive messages sit side by side in memory, and an acknowledgement finds
/// its entry in a cache line the previous one already brought in. (With a random hash every
/// PUBACK of a fan-out was a cache miss: the largest cost of QoS 1 fan-out.) The id is repeated
/// in the top bits, which the table uses to tell entries of one group apart.
pub type PacketIds = std::hash::BuildHasherDefault<PacketIdHasher>;

/// See [`PacketIds`].
#[derive(Debug, Default, Clone, Copy)]
pub struct PacketIdHasher(u64);

impl std::hash::Hasher for PacketIdHasher {
    fn finish(&self) -> u64 {
        self.0 | (self.0 << 57)
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u16` keys use this hasher; any other input still hashes, just not as well.
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)) & 0xffff;
        }
    }

    fn write_u16(&mut self, id: u16) {
        self.0 = u64::from(id);
    }
}

/// An outgoing message that the client has not finished acknowledging.
#[derive(Debug, Clone)]
pub struct Inflight {
    /// The delivery, kept to resend it with DUP on session resume.
    pub delivery: Delivery,
    /// Handshake position.
    pub stage: Stage,
    /// Send order, to resend in the original order.
    pub seq: u64,
}

/// The connection currently attached to a session.
///
/// Its waker is how everything reaches an idle connection: the queue stopping being empty
/// (`woken`), a takeover (a new connection attaches: the session's generation is no
/// longer the old connection's) and shutdown (`Registry::wake_all`). Why not a `Notify`
/// each: a connection waits on them all its life, and every `Notified` it keeps registered is
/// 64 bytes in its task, besides the `Notify` itself.
///
/// The attached connection's generation is [`SessionState::generation`]: every attach bumps it.
#[derive(Debug, Default)]
pub struct Link {
    /// The waker of the connection's task, taken by whoever wakes it.
    waker: Option<Waker>,
    /// The queue stopped being empty since the connection last looked.
    woken: bool,
}

impl Link {
    /// The link of a connection that just attached.
    pub fn new() -> Link {
        Link::default()
    }

    /// Takes the waker, to wake the connection once the session lock is released.
    pub(super) fn take_waker(&mut self) -> Option<Waker> {
        self.waker.take()
    }
}

/// The identity a session belongs to: the one that created it. Anonymous clients are one
/// identity; a user is known by name (the users file's, or the TLS client certificate's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Created by a client without credentials: any anonymous client may resume it.
    Anonymous,
    /// Created by this user: only this user may resume it or take its client id.
    User(Arc<str>),
}

impl Owner {
    /// The owner of the sessions `identity` creates.
    pub fn of(identity: &Identity) -> Owner {
        match identity {
            Identity::Anonymous => Owner::Anonymous,
            Identity::User(_) => Owner::User(identity.shared_name()),
        }
    }

    /// The owner as the store records it: the user name, `None` for anonymous.
    pub fn user(&self) -> Option<&str> {
        match self {
            Owner::Anonymous => None,
            Owner::User(name) => Some(name),
        }
    }

    /// Whether anonymous clients own the session.
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Owner::Anonymous)
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Anonymous => f.write_str("anonymous clients"),
            Owner::User(name) => write!(f, "user {name:?}"),
        }
    }
}

/// What a connection finds when it looks at its session's link ([`Session::poll_link`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkSignal {
    /// Nothing new; the connection's waker is registered.
    Quiet,
    /// The queue stopped being empty.
    Woken,
    /// Another connection took the session over (or it was discarded).
    Kicked,
}

/// Mutable session state, behind the session's mutex.
#[derive(Debug)]
pub struct SessionState {
    /// Topic filter (as subscribed, `$share/...` included) to options.
    pub subscriptions: Subscriptions,
    /// Deliveries waiting to be sent, oldest first.
    pub queue: VecDeque<Delivery>,
    /// Sent QoS 1/2 deliveries awaiting acknowledgement, by packet id.
    pub inflight: HashMap<u16, Inflight, PacketIds>,
    /// Next send sequence number.
    pub next_seq: u64,
    /// Next packet id to try for an outgoing message.
    pub next_packet_id: u16,
    /// Received QoS 2 packet ids awaiting PUBREL (so a duplicate is not routed twice). Hashed
    /// by [`PacketIds`] like `inflight`: no random state (16 bytes) in every session.
    pub incoming_qos2: HashSet<u16, PacketIds>,
    /// The attached connection, `None` while offline.
    pub link: Option<Link>,
    /// Bumped by every connection that attaches; timers compare it to know if they are stale,
    /// and a connection to know whether it is still the attached one.
    pub generation: u64,
    /// Session Expiry Interval in seconds (0: ends with the connection; `u32::MAX`: never).
    pub expiry_interval: u32,
    /// Protocol of the last connection (for logs).
    pub protocol: Protocol,
    /// Set once the session has been discarded, so that late timers leave it alone.
    pub ended: bool,
    /// Every logged event with an id <= cursor has been queued for this session or skipped.
    pub cursor: u64,
    /// While set, live routing skips this session and its connection reads what it missed from
    /// the log instead (offline, or fallen behind with a full queue).
    pub lagging: bool,
    /// Whether the store's copy of the session, as of its last save, is this session's: then
    /// a save writes only what changed. `false` for a new session (its first save replaces
    /// whatever a previous session of its client id left) and after the copy was deleted.
    pub saved_whole: bool,
    /// Whether the store may hold a copy of this session (so ending it must delete that).
    pub persisted: bool,
    /// When the connection last took a delivery from the queue: a session behind that takes
    /// nothing for [`STUCK_AFTER`] is stuck, not slow, and no longer slows publishers.
    pub last_progress: Instant,
    /// Logged events above the cursor that were already delivered out of order (resent from a
    /// stored inflight record after a restart): catch-up must not send them again.
    pub delivered_ahead: DeliveredAhead,
}

/// Logged events above a session's cursor that were already delivered out of order.
///
/// Boxed and made on first use: only sessions restored with inflight messages ever hold any,
/// and an empty set in place would be 24 bytes of every session (what keeps a session record
/// within the allocator's 256-byte class).
#[derive(Debug, Default)]
// The box is the point: 8 bytes in place instead of the set's 24.
#[allow(clippy::box_collection)]
pub struct DeliveredAhead(Option<Box<std::collections::BTreeSet<u64>>>);

impl DeliveredAhead {
    /// Remembers `id`.
    pub fn insert(&mut self, id: u64) {
        self.0.get_or_insert_with(Box::default).insert(id);
    }

    /// Whether `id` was delivered ahead.
    pub fn contains(&self, id: u64) -> bool {
        self.0.as_ref().is_some_and(|ids| ids.contains(&id))
    }

    /// Every id, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().flat_map(|ids| ids.iter().copied())
    }

    /// Forgets the ids at or below `cursor`: catch-up has passed them.
    pub fn forget_up_to(&mut self, cursor: u64) {
        if let Some(ids) = &mut self.0 {
            ids.retain(|id| *id > cursor);
            if ids.is_empty() {
                self.0 = None;
            }
        }
    }
}

/// A session's subscriptions: topic filter (as subscribed, `$share/...` included) to options.
///
/// A list rather than a hash map: most sessions hold one or a few subscriptions, and the
/// smallest table of a map is about 180 bytes even for one entry, in every session for as long
/// as it lives. Lookups scan the list: for a few entries that costs no more than hashing, and a
/// client at `max_subscriptions_per_client` (1000 by default) pays microseconds per SUBSCRIBE.
#[derive(Debug, Default, Clone)]
pub struct Subscriptions(Vec<(String, SubOptions)>);

impl Subscriptions {
    /// The options of `filter`, if subscribed.
    pub fn get(&self, filter: &str) -> Option<&SubOptions> {
        self.0.iter().find(|(f, _)| f == filter).map(|(_, o)| o)
    }

    /// Whether `filter` is subscribed.
    pub fn contains_key(&self, filter: &str) -> bool {
        self.get(filter).is_some()
    }

    /// Subscribes `filter` or replaces its options; returns the options it replaces.
    pub fn insert(&mut self, filter: String, options: SubOptions) -> Option<SubOptions> {
        if let Some((_, old)) = self.0.iter_mut().find(|(f, _)| *f == filter) {
            return Some(std::mem::replace(old, options));
        }
        if self.0.capacity() == 0 {
            // Room for exactly one: the first push would make room for four.
            self.0.reserve_exact(1);
        }
        self.0.push((filter, options));
        None
    }

    /// Unsubscribes `filter`; returns its options if it was subscribed.
    pub fn remove(&mut self, filter: &str) -> Option<SubOptions> {
        let index = self.0.iter().position(|(f, _)| f == filter)?;
        Some(self.0.swap_remove(index).1)
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every filter with its options, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &SubOptions)> {
        self.0.iter().map(|(f, o)| (f, o))
    }

    /// Every filter.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(f, _)| f)
    }

    /// Every subscription's options.
    pub fn values(&self) -> impl Iterator<Item = &SubOptions> {
        self.0.iter().map(|(_, o)| o)
    }

    /// Removes and returns every subscription.
    pub fn drain(&mut self) -> impl Iterator<Item = (String, SubOptions)> + '_ {
        self.0.drain(..)
    }
}

/// A session, shared by the registry, the subscription table and its connection.
#[derive(Debug)]
pub struct Session {
    /// The client identifier.
    pub client_id: Arc<str>,
    /// Whether a connection is attached (read without the lock by shared-subscription routing).
    online: AtomicBool,
    /// Most deliveries kept in `queue` (32 bits: with `online`, it fits where a `usize` would
    /// push the session record past 256 bytes).
    queue_limit: u32,
    /// Everything else.
    state: Mutex<SessionState>,
}

impl Session {
    /// A fresh, empty session.
    pub fn new(
        client_id: Arc<str>,
        protocol: Protocol,
        expiry_interval: u32,
        queue_limit: usize,
        cursor: u64,
    ) -> Session {
        Session {
            client_id,
            online: AtomicBool::new(false),
            queue_limit: u32::try_from(queue_limit).unwrap_or(u32::MAX),
            state: Mutex::new(SessionState {
                subscriptions: Subscriptions::default(),
                queue: VecDeque::new(),
                inflight: HashMap::default(),
                next_seq: 0,
                next_packet_id: 1,
                incoming_qos2: HashSet::default(),
                link: None,
                generation: 0,
                expiry_interval,
                protocol,
                ended: false,
                cursor,
                lagging: false,
                saved_whole: false,
                persisted: false,
                last_progress: Instant::now(),
                delivered_ahead: DeliveredAhead::default(),
            }),
        }
    }

    /// Locks the state. A poisoned lock (a panic elsewhere while holding it) still yields the
    /// state: session data stays consistent at every unlock point.
    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a connection is attached.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    /// Records whether a connection is attached.
    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
    }

    /// Most deliveries kept in the queue.
    pub fn queue_limit(&self) -> usize {
        usize::try_from(self.queue_limit).unwrap_or(usize::MAX)
    }

    /// Offers a routed delivery, in log order. It is queued unless the session is offline or
    /// lagging (the log has it: catch-up will read it), or already has it. A full queue switches
    /// the session to lagging instead of dropping a logged message.
    ///
    /// Returns whether the connected session is behind: lagging, or with its queue at least
    /// half full, while still taking deliveries (not stuck, see [`STUCK_AFTER`]). When most
    /// subscribers of a message are behind, publishers are slowed down (see
    /// `Shared::publishers_wait`) rather than their messages dropped.
    ///
    /// `now` is read once per routed message by the caller, not once per delivery.
    pub fn offer(&self, delivery: Delivery, stats: &Stats, now: Instant) -> bool {
        let mut state = self.lock();
        let id = delivery.message.id;
        if state.ended || state.link.is_none() {
            if id == 0 {
                stats::add(&stats.dropped_offline_qos0, 1);
            }
            return false;
        }
        if state.lagging {
            return state.is_slow(now);
        }
        if id != 0 && id <= state.cursor {
            return false;
        }
        if state.queue.len() >= self.queue_limit() {
            // QoS 0 is at most once and catch-up would skip it anyway: drop it (counted). A
            // logged QoS >= 1 delivery is never dropped: the session reads it from the log.
            if id == 0 || delivery.qos == QoS::AtMostOnce {
                stats::add(&stats.dropped_queue_full, 1);
            } else {
                state.lagging = true;
                stats::add(&stats.lagging_switches, 1);
            }
            return state.is_slow(now);
        }
        let was_empty = state.queue.is_empty();
        state.queue.push_back(delivery);
        if id != 0 {
            state.cursor = id;
        }
        let behind = state.queue.len() * 2 >= self.queue_limit() && state.is_slow(now);
        let waker = if was_empty {
            state.queue_started()
        } else {
            None
        };
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        behind
    }

    /// Queues a delivery outside log order (a retained message sent on subscribe), or drops
    /// it (counted) when the queue is full or nobody is connected.
    pub fn enqueue_direct(&self, delivery: Delivery, stats: &Stats) {
        let mut state = self.lock();
        if state.ended || state.link.is_none() {
            return;
        }
        if state.queue.len() >= self.queue_limit() {
            stats::add(&stats.dropped_queue_full, 1);
            return;
        }
        let was_empty = state.queue.is_empty();
        state.queue.push_back(delivery);
        let waker = if was_empty {
            state.queue_started()
        } else {
            None
        };
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// What the connection of `generation` should know: whether it was taken over, whether the
    /// queue stopped being empty since it last looked. Registers its waker for the next change
    /// when there is none.
    pub fn poll_link(&self, generation: u64, cx: &mut Context<'_>) -> LinkSignal {
        let mut state = self.lock();
        if state.generation != generation {
            return LinkSignal::Kicked;
        }
        let Some(link) = state.link.as_mut() else {
            return LinkSignal::Kicked;
        };
        if std::mem::take(&mut link.woken) {
            return LinkSignal::Woken;
        }
        match &mut link.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        LinkSignal::Quiet
    }

    /// Wakes the attached connection, if any (shutdown: it then reads the broker's flag).
    pub fn wake_connection(&self) {
        let waker = self.lock().link.as_mut().and_then(Link::take_waker);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl SessionState {
    /// Notes that the queue stopped being empty and returns the connection's waker, to wake
    /// it once the lock is released.
    ///
    /// Only that transition wakes: the connection looks at the queue again after everything
    /// else it does (writes, reads, acknowledgements), so a queue that already held something
    /// needs no second wake, and a wake per message would cost one scheduling per delivery.
    fn queue_started(&mut self) -> Option<Waker> {
        let link = self.link.as_mut()?;
        link.woken = true;
        link.take_waker()
    }

    /// Records a delivery as sent (or about to be) under `packet_id`, after every earlier one:
    /// resends after a resume follow this order.
    pub fn add_inflight(&mut self, packet_id: u16, delivery: Delivery, stage: Stage) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.inflight.insert(
            packet_id,
            Inflight {
                delivery,
                stage,
                seq,
            },
        );
    }

    /// Whether a session that is behind still takes deliveries (slow), as opposed to stuck.
    fn is_slow(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_progress) < STUCK_AFTER
    }

    /// A packet id not used by any inflight message.
    ///
    /// Callers keep the inflight window below 65,535, so one is always free.
    pub fn allocate_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.inflight.contains_key(&id) {
                return id;
            }
        }
    }

    /// The cursor that is safe to persist: every logged event at or below it has been fully
    /// acknowledged (or skipped). Events above it are delivered again after a crash.
    pub fn acknowledged_cursor(&self) -> u64 {
        let pending = self
            .queue
            .iter()
            .chain(self.inflight.values().map(|f| &f.delivery))
            .filter(|d| d.from_log)
            .map(|d| d.message.id)
            .min();
        match pending {
            Some(id) => id.saturating_sub(1).min(self.cursor),
            None => self.cursor,
        }
    }

    /// Lets go of the queue of a persistent session whose connection ended, so that an
    /// offline session keeps no deliveries but its unacknowledged ones (`inflight`, resent on
    /// resume as MQTT requires).
    ///
    /// Why: a client that stops reading fills its queue up to `limits.send_queue` deliveries,
    /// which would otherwise stay in memory for as long as the session is kept. The logged
    /// messages in it are read again from the log on resume: the cursor goes back to before
    /// the first of them, and inflight messages above it are remembered as delivered ahead so
    /// that catch-up does not send them twice. The rest (QoS 0, retained messages sent on
    /// subscribe) are dropped, as MQTT allows for a session without a connection.
    pub fn shed_queue(&mut self) {
        let first_logged = self
            .queue
            .iter()
            .filter(|d| d.from_log && d.message.id != 0)
            .map(|d| d.message.id)
            .min();
        // A new, empty queue: the old one's buffer (up to `send_queue` slots) is freed.
        self.queue = VecDeque::new();
        let Some(first) = first_logged else {
            return;
        };
        let cursor = first - 1;
        if cursor >= self.cursor {
            return;
        }
        let ahead: Vec<u64> = self
            .inflight
            .values()
            .filter(|f| f.delivery.from_log && f.delivery.message.id > cursor)
            .map(|f| f.delivery.message.id)
            .collect();
        for id in ahead {
            self.delivered_ahead.insert(id);
        }
        self.cursor = cursor;
    }

    /// Inflight messages in the order they were first sent.
    pub fn inflight_in_order(&self) -> Vec<(u16, Inflight)> {
        let mut all: Vec<(u16, Inflight)> = self
            .inflight
            .iter()
            .map(|(id, f)| (*id, f.clone()))
            .collect();
        all.sort_by_key(|(_, f)| f.seq);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use firehose_codec::PublishProperties;

    use crate::broker::message::Message;
    use crate::broker::registry::{AttachRequest, Attached, Registry};

    #[test]
    fn subscriptions_replace_remove_and_drain_like_a_map() {
        let options = |qos| SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            id: None,
        };
        let mut subs = Subscriptions::default();
        assert_eq!(subs.insert("a/+".into(), options(QoS::AtMostOnce)), None);
        assert_eq!(
            subs.insert("$share/g/b".into(), options(QoS::AtLeastOnce)),
            None
        );
        assert_eq!(
            subs.insert("a/+".into(), options(QoS::ExactlyOnce)),
            Some(options(QoS::AtMostOnce))
        );
        assert_eq!(subs.len(), 2);
        assert_eq!(subs.get("a/+"), Some(&options(QoS::ExactlyOnce)));
        assert!(subs.contains_key("$share/g/b"));
        assert!(!subs.contains_key("a"));
        assert_eq!(subs.remove("a"), None);
        assert_eq!(subs.remove("a/+"), Some(options(QoS::ExactlyOnce)));
        assert_eq!(subs.keys().collect::<Vec<_>>(), ["$share/g/b"]);
        let drained: Vec<String> = subs.drain().map(|(f, _)| f).collect();
        assert_eq!(drained, ["$share/g/b"]);
        assert!(subs.is_empty());
    }

    fn delivery(qos: QoS) -> Delivery {
        Delivery {
            message: Arc::new(Message::new(
                0,
                "t".into(),
                Bytes::from_static(b"x"),
                qos,
                false,
                PublishProperties::default(),
                "p".into(),
            )),
            qos,
            retain: false,
            subscription_ids: Vec::new(),
            from_log: false,
        }
    }

    fn attach(registry: &Registry, clean: bool) -> Attached {
        registry
            .attach(
                &Arc::from("c"),
                AttachRequest {
                    clean_start: clean,
                    expiry_interval: 60,
                    protocol: Protocol::V5,
                    queue_limit: 2,
                    cursor: 0,
                    owner: Owner::Anonymous,
                    address: std::net::Ipv4Addr::LOCALHOST.into(),
                },
            )
            .expect("attached")
    }

    /// A waker that counts its wakes, standing for a connection's task.
    #[derive(Default)]
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl CountingWaker {
        fn wakes(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// Polls the link of the connection of `generation` with a counting waker.
    fn poll_link(session: &Session, generation: u64, waker: &Arc<CountingWaker>) -> LinkSignal {
        let waker = Waker::from(waker.clone());
        session.poll_link(generation, &mut Context::from_waker(&waker))
    }

    #[test]
    fn resume_keeps_state_and_clean_start_discards_it() {
        let registry = Registry::default();
        let first = attach(&registry, false);
        assert!(!first.session_present);
        first.session.lock().subscriptions.insert(
            "t".into(),
            SubOptions {
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                id: None,
            },
        );
        let second = attach(&registry, false);
        assert!(second.session_present);
        assert!(Arc::ptr_eq(&first.session, &second.session));
        assert_eq!(second.generation, 2);
        let third = attach(&registry, true);
        assert!(!third.session_present);
        let (old, filters) = third.discarded.expect("old session discarded");
        assert!(Arc::ptr_eq(&old, &first.session));
        assert_eq!(filters, vec!["t".to_owned()]);
        assert!(old.lock().ended);
    }

    /// Every connection keeps a session: with the `Arc`'s two counts (16 bytes) it fits the
    /// allocator's 256-byte class; 8 bytes more and it would take 320.
    #[test]
    fn a_session_fits_in_256_bytes() {
        let size = std::mem::size_of::<Session>() + 16;
        assert!(size <= 256, "a session record grew to {size} bytes");
    }

    #[test]
    fn delivered_ahead_forgets_what_catch_up_passed() {
        let mut ahead = DeliveredAhead::default();
        assert!(!ahead.contains(5));
        for id in [5, 9, 7] {
            ahead.insert(id);
        }
        assert!(ahead.contains(7));
        assert_eq!(ahead.iter().collect::<Vec<_>>(), [5, 7, 9]);
        ahead.forget_up_to(7);
        assert_eq!(ahead.iter().collect::<Vec<_>>(), [9]);
        ahead.forget_up_to(9);
        assert!(ahead.0.is_none(), "an emptied set gives its box back");
    }

    #[test]
    fn takeover_kicks_the_attached_connection() {
        let registry = Registry::default();
        let first = attach(&registry, false);
        let waker = Arc::new(CountingWaker::default());
        let generation = first.generation;
        assert_eq!(
            poll_link(&first.session, generation, &waker),
            LinkSignal::Quiet
        );
        let second = attach(&registry, false);
        assert_eq!(waker.wakes(), 1, "the first connection is woken");
        assert_eq!(
            poll_link(&first.session, generation, &waker),
            LinkSignal::Kicked
        );
        assert_eq!(
            poll_link(&second.session, second.generation, &waker),
            LinkSignal::Quiet,
            "the new connection is not kicked"
        );
        let third = attach(&registry, true);
        assert_eq!(waker.wakes(), 2, "a clean start kicks too");
        assert_eq!(
            poll_link(&second.session, second.generation, &waker),
            LinkSignal::Kicked
        );
        assert_eq!(poll_link(&third.session, 1, &waker), LinkSignal::Quiet);
    }

    #[test]
    fn wake_all_wakes_every_attached_connection() {
        let registry = Registry::default();
        let first = attach(&registry, true);
        let waker = Arc::new(CountingWaker::default());
        assert_eq!(
            poll_link(&first.session, first.generation, &waker),
            LinkSignal::Quiet
        );
        registry.wake_all();
        assert_eq!(waker.wakes(), 1);
        assert_eq!(
            poll_link(&first.session, first.generation, &waker),
            LinkSignal::Quiet,
            "shutdown is the broker's flag, not a signal of the link"
        );
    }

    fn logged(id: u64) -> Delivery {
        let mut d = delivery(QoS::AtLeastOnce);
        let mut message = Message::new(
            id,
            "t".into(),
            Bytes::from_static(b"x"),
            QoS::AtLeastOnce,
            false,
            PublishProperties::default(),
            "p".into(),
        );
        message.id = id;
        d.message = Arc::new(message);
        d.from_log = true;
        d
    }

    #[test]
    fn a_full_queue_switches_to_lagging_instead_of_dropping_logged_messages() {
        let registry = Registry::default();
        let stats = Stats::new();
        let attached = attach(&registry, false);
        let session = attached.session;
        for id in 1..=3 {
            session.offer(logged(id), &stats, Instant::now());
        }
        let state = session.lock();
        assert_eq!(state.queue.len(), 2, "limit is 2");
        assert!(state.lagging);
        assert_eq!(state.cursor, 2, "event 3 is left for catch-up");
        assert_eq!(stats::get(&stats.dropped_queue_full), 0);
    }

    #[test]
    fn an_offline_session_sheds_its_queue_and_reads_it_again_from_the_log() {
        let registry = Registry::default();
        let stats = Stats::new();
        let session = attach(&registry, false).session;
        session.offer(logged(1), &stats, Instant::now());
        let mut state = session.lock();
        let sent = state.queue.pop_front().expect("queued");
        state.add_inflight(1, sent, Stage::AwaitPubAck);
        // Resent from a stored record after a restart: above the queue in the log.
        state.add_inflight(2, logged(9), Stage::AwaitPubAck);
        drop(state);
        session.offer(logged(4), &stats, Instant::now());
        session.enqueue_direct(delivery(QoS::AtLeastOnce), &stats);
        let mut state = session.lock();
        let acknowledged = state.acknowledged_cursor();
        state.shed_queue();
        assert!(state.queue.is_empty());
        assert_eq!(state.cursor, 3, "catch-up reads event 4 again");
        assert_eq!(state.acknowledged_cursor(), acknowledged);
        assert!(
            state.delivered_ahead.contains(9),
            "inflight above the cursor"
        );
        assert!(!state.delivered_ahead.contains(1));
        assert_eq!(state.inflight.len(), 2, "unacknowledged deliveries stay");
    }

    #[test]
    fn offer_says_when_the_session_is_behind() {
        let registry = Registry::default();
        let stats = Stats::new();
        let attached = registry
            .attach(
                &Arc::from("c"),
                AttachRequest {
                    clean_start: true,
                    expiry_interval: 0,
                    protocol: Protocol::V311,
                    queue_limit: 4,
                    cursor: 0,
                    owner: Owner::Anonymous,
                    address: std::net::Ipv4Addr::LOCALHOST.into(),
                },
            )
            .expect("attached");
        let session = attached.session;
        let behind: Vec<bool> = (1..=6)
            .map(|id| session.offer(logged(id), &stats, Instant::now()))
            .collect();
        // Half full from the second delivery; full (lagging) from the fifth.
        assert_eq!(behind, [false, true, true, true, true, true]);
        assert!(session.lock().lagging);
        if let Some(long_ago) = Instant::now().checked_sub(2 * STUCK_AFTER) {
            session.lock().last_progress = long_ago;
            assert!(
                !session.offer(logged(7), &stats, Instant::now()),
                "a session that took nothing for a while is stuck, not behind"
            );
        }
        session.lock().link = None;
        assert!(
            !session.offer(logged(8), &stats, Instant::now()),
            "an offline session is not behind: it is not being sent anything"
        );
    }

    #[test]
    fn only_the_first_delivery_into_an_empty_queue_wakes_the_connection() {
        let registry = Registry::default();
        let stats = Stats::new();
        let attached = attach(&registry, true);
        let (session, generation) = (attached.session, attached.generation);
        let waker = Arc::new(CountingWaker::default());
        assert_eq!(poll_link(&session, generation, &waker), LinkSignal::Quiet);
        session.offer(logged(1), &stats, Instant::now());
        assert_eq!(waker.wakes(), 1, "the first delivery wakes");
        assert_eq!(poll_link(&session, generation, &waker), LinkSignal::Woken);
        session.offer(logged(2), &stats, Instant::now());
        assert_eq!(
            poll_link(&session, generation, &waker),
            LinkSignal::Quiet,
            "the queue was not empty: the connection will find it when it drains"
        );
        assert_eq!(waker.wakes(), 1);
        session.lock().queue.clear();
        session.enqueue_direct(delivery(QoS::AtMostOnce), &stats);
        assert_eq!(waker.wakes(), 2);
        assert_eq!(poll_link(&session, generation, &waker), LinkSignal::Woken);
    }

    #[test]
    fn a_delivery_before_the_connection_looks_is_not_lost() {
        let registry = Registry::default();
        let stats = Stats::new();
        let attached = attach(&registry, true);
        attached.session.offer(logged(1), &stats, Instant::now());
        let waker = Arc::new(CountingWaker::default());
        assert_eq!(
            poll_link(&attached.session, attached.generation, &waker),
            LinkSignal::Woken
        );
    }

    #[test]
    fn packet_ids_are_their_own_slot_in_the_inflight_map() {
        use std::hash::BuildHasher;
        let ids = PacketIds::default();
        // Consecutive ids, consecutive slots (the low bits), distinct tags (the top 7 bits).
        assert_eq!(ids.hash_one(7u16) & 0xffff, 7);
        assert_eq!(ids.hash_one(8u16) & 0xffff, 8);
        assert_ne!(ids.hash_one(7u16) >> 57, ids.hash_one(8u16) >> 57);
        let registry = Registry::default();
        let attached = attach(&registry, true);
        let mut state = attached.session.lock();
        for id in [u16::MAX, 1, 2, 300] {
            state.inflight.insert(
                id,
                Inflight {
                    delivery: delivery(QoS::AtLeastOnce),
                    stage: Stage::AwaitPubAck,
                    seq: u64::from(id),
                },
            );
        }
        assert_eq!(state.inflight.get(&300).map(|f| f.seq), Some(300));
        assert!(state.inflight.remove(&u16::MAX).is_some());
        assert!(!state.inflight.contains_key(&u16::MAX));
        assert_eq!(state.inflight.len(), 3);
    }

    #[test]
    fn offers_at_or_below_the_cursor_are_ignored() {
        let registry = Registry::default();
        let stats = Stats::new();
        let attached = attach(&registry, false);
        attached.session.lock().cursor = 5;
        attached.session.offer(logged(5), &stats, Instant::now());
        attached.session.offer(logged(6), &stats, Instant::now());
        let state = attached.session.lock();
        assert_eq!(state.queue.len(), 1);
        assert_eq!(state.cursor, 6);
        assert_eq!(
            state.acknowledged_cursor(),
            5,
            "event 6 is not acknowledged yet"
        );
    }

    #[test]
    fn offline_sessions_take_nothing_from_live_routing() {
        let registry = Registry::default();
        let stats = Stats::new();
        let attached = attach(&registry, false);
        attached.session.lock().link = None;
        attached.session.offer(logged(1), &stats, Instant::now());
        attached
            .session
            .enqueue_direct(delivery(QoS::AtLeastOnce), &stats);
        assert!(attached.session.lock().queue.is_empty());
    }

    #[test]
    fn end_if_current_ignores_a_resumed_session() {
        let registry = Registry::default();
        let first = attach(&registry, false);
        first.session.lock().link = None;
        let second = attach(&registry, false);
        assert!(registry
            .end_if_current(&first.session, first.generation)
            .is_none());
        second.session.lock().link = None;
        assert!(registry
            .end_if_current(&second.session, second.generation)
            .is_some());
        assert!(registry.is_empty());
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_wrap() {
        let registry = Registry::default();
        let attached = attach(&registry, true);
        let mut state = attached.session.lock();
        state.next_packet_id = u16::MAX;
        assert_eq!(state.allocate_packet_id(), u16::MAX);
        state.inflight.insert(
            1,
            Inflight {
                delivery: delivery(QoS::AtLeastOnce),
                stage: Stage::AwaitPubAck,
                seq: 0,
            },
        );
        assert_eq!(state.allocate_packet_id(), 2);
    }
}
