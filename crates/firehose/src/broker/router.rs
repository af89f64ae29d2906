//! Routing: the subscription table (a [`TopicTrie`] of filters to subscribers), shared
//! subscription groups, retained messages, and the fan-out of one message to every session
//! that wants it.
//!
//! A `$share` group is one per filter, name and owner of its members' sessions: anonymous
//! clients and each user have groups of their own, so that nobody takes another identity's
//! share of its messages by joining a group of the same name.
//!
//! Publishers only take the table's read lock, so publishes from many connections route in
//! parallel; subscribe and unsubscribe take the write lock briefly.
//!
//! Depends on sessions (it offers them deliveries), the subscription options, the retained
//! messages and the topic trie; sessions know nothing of it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use super::message::{Delivery, Message};
use super::retained::Retained;
use super::session::{Owner, Session};
use super::stats::Stats;
use super::subscription::{parse_filter, ParsedFilter, SubOptions};
use crate::topic::TopicTrie;

#[derive(Debug)]
struct Subscriber {
    session: Arc<Session>,
    options: SubOptions,
}

#[derive(Debug)]
struct SharedGroup {
    /// The group name of `$share/<name>/<filter>`.
    name: String,
    /// Whose sessions the members are: a group of the same name and filter by another
    /// identity is another group.
    owner: Owner,
    /// The sessions that take turns.
    members: Vec<Subscriber>,
    /// Where the round robin goes next.
    next: AtomicUsize,
}

impl SharedGroup {
    /// Whether this is the group `name` of `owner`'s sessions.
    fn is(&self, name: &str, owner: &Owner) -> bool {
        self.name == name && self.owner == *owner
    }
}

#[derive(Debug, Default)]
struct FilterEntry {
    direct: Vec<Subscriber>,
    shared: Vec<SharedGroup>,
}

impl FilterEntry {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_empty()
    }
}

/// Subscriptions and retained messages.
#[derive(Debug, Default)]
pub struct Router {
    table: RwLock<TopicTrie<FilterEntry>>,
    /// Retained messages by topic, and their quota.
    retained: Retained,
}

impl Router {
    /// A router whose retained messages are bounded by `retained`'s limits.
    pub fn new(retained: Retained) -> Router {
        Router {
            table: RwLock::default(),
            retained,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, TopicTrie<FilterEntry>> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, TopicTrie<FilterEntry>> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds or replaces `session`'s subscription to `raw_filter`; `owner` is the session's
    /// (it picks the `$share` group). Returns whether it existed.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        owner: &Owner,
        raw_filter: &str,
        options: SubOptions,
    ) -> bool {
        let parsed = parse_filter(raw_filter);
        let mut table = self.write();
        let entry = table.entry_or_insert_with(parsed.filter, FilterEntry::default);
        let list = match parsed.group {
            None => &mut entry.direct,
            Some(name) => {
                let index = match entry.shared.iter().position(|g| g.is(name, owner)) {
                    Some(i) => i,
                    None => {
                        entry.shared.push(SharedGroup {
                            name: name.to_owned(),
                            owner: owner.clone(),
                            members: Vec::new(),
                            next: AtomicUsize::new(0),
                        });
                        entry.shared.len() - 1
                    }
                };
                &mut entry.shared[index].members
            }
        };
        if let Some(existing) = list.iter_mut().find(|s| Arc::ptr_eq(&s.session, session)) {
            existing.options = options;
            true
        } else {
            if list.capacity() == 0 {
                // Most filters have one subscriber (a topic per client); the first push would
                // otherwise make room for four.
                list.reserve_exact(1);
            }
            list.push(Subscriber {
                session: session.clone(),
                options,
            });
            false
        }
    }

    /// Removes `session`'s subscription to `raw_filter` (`owner` is the session's). Returns
    /// whether it existed.
    pub fn unsubscribe(&self, session: &Arc<Session>, owner: &Owner, raw_filter: &str) -> bool {
        let parsed = parse_filter(raw_filter);
        let mut table = self.write();
        Self::remove_locked(&mut table, session, owner, parsed)
    }

    /// Removes every listed subscription of `session` (`owner` is the session's): it ended, or
    /// lost them.
    pub fn remove_all(&self, session: &Arc<Session>, owner: &Owner, raw_filters: &[String]) {
        if raw_filters.is_empty() {
            return;
        }
        let mut table = self.write();
        for raw in raw_filters {
            Self::remove_locked(&mut table, session, owner, parse_filter(raw));
        }
    }

    fn remove_locked(
        table: &mut TopicTrie<FilterEntry>,
        session: &Arc<Session>,
        owner: &Owner,
        parsed: ParsedFilter<'_>,
    ) -> bool {
        let Some(entry) = table.get_mut(parsed.filter) else {
            return false;
        };
        let removed = match parsed.group {
            None => remove_member(&mut entry.direct, session),
            Some(name) => match entry.shared.iter().position(|g| g.is(name, owner)) {
                Some(i) => {
                    let removed = remove_member(&mut entry.shared[i].members, session);
                    if entry.shared[i].members.is_empty() {
                        entry.shared.swap_remove(i);
                    }
                    removed
                }
                None => false,
            },
        };
        if entry.is_empty() {
            table.remove(parsed.filter);
        }
        removed
    }

    /// The retained messages: kept, found by filter, and their quota.
    pub fn retained(&self) -> &Retained {
        &self.retained
    }

    /// Number of distinct filters with subscribers.
    pub fn filter_count(&self) -> usize {
        self.read().len()
    }

    /// Routes a message to every matching session (one delivery per session, with the highest
    /// granted QoS among its matching subscriptions) and to one member of each matching shared
    /// group. Retained messages are stored first. Returns the number of sessions reached.
    ///
    /// Logged messages must be routed in id order (the store's commit order): sessions use the
    /// id as their cursor into the log.
    pub fn publish(&self, message: &Arc<Message>, stats: &Stats) -> Fanout {
        if message.retain {
            self.retained.set(message);
        }
        self.deliver(message, stats, Instant::now())
    }

    /// [`Router::publish`] without storing the retained message (the caller did). `now` is
    /// when routing started: the routing task reads the clock once per batch of messages,
    /// not once per message.
    pub fn deliver(&self, message: &Arc<Message>, stats: &Stats, now: Instant) -> Fanout {
        let table = self.read();
        // The first match apart: most topics match one filter, and a vector for it was an
        // allocation per message.
        let mut first: Option<&FilterEntry> = None;
        let mut more: Vec<&FilterEntry> = Vec::new();
        table.for_each_match(&message.topic, |_, entry| match first {
            None => first = Some(entry),
            Some(_) => more.push(entry),
        });
        let wanted = |sub: &&Subscriber| {
            !(sub.options.no_local && *sub.session.client_id == *message.publisher)
        };
        let Some(first) = first else {
            return Fanout::default();
        };
        if more.is_empty() && first.shared.is_empty() {
            // The common case: one filter matched, so no session appears twice (an entry
            // holds one subscriber per session) and nothing needs merging.
            let mut fanout = Fanout::default();
            for sub in first.direct.iter().filter(wanted) {
                fanout.add(offer(
                    message,
                    &sub.session,
                    sub.options,
                    Vec::new(),
                    stats,
                    now,
                ));
            }
            return fanout;
        }
        let mut entries = more;
        entries.insert(0, first);
        let capacity = entries
            .iter()
            .map(|e| e.direct.len() + e.shared.len())
            .sum();
        let mut targets: Vec<(&Arc<Session>, SubOptions)> = Vec::with_capacity(capacity);
        for entry in &entries {
            for sub in entry.direct.iter().filter(wanted) {
                targets.push((&sub.session, sub.options));
            }
            for group in &entry.shared {
                if let Some(sub) = pick_member(group) {
                    targets.push((&sub.session, sub.options));
                }
            }
        }
        // A session appears more than once when several of its filters (or groups) matched;
        // its deliveries are merged into one.
        targets.sort_unstable_by_key(|(s, _)| Arc::as_ptr(s) as usize);
        let mut fanout = Fanout::default();
        let mut i = 0;
        while i < targets.len() {
            let (session, first) = targets[i];
            let mut options = first;
            let mut ids: Vec<u32> = Vec::new();
            let mut j = i + 1;
            while j < targets.len() && Arc::ptr_eq(targets[j].0, session) {
                let more = targets[j].1;
                options.qos = options.qos.max(more.qos);
                options.retain_as_published |= more.retain_as_published;
                ids.extend(more.id);
                j += 1;
            }
            i = j;
            fanout.add(offer(message, session, options, ids, stats, now));
        }
        fanout
    }
}

/// What routing one message found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    /// Sessions the message was offered to.
    pub reached: usize,
    /// Of those, connected sessions that are behind (see [`Session::offer`]).
    pub behind: usize,
}

impl Fanout {
    fn add(&mut self, behind: bool) {
        self.reached += 1;
        self.behind += usize::from(behind);
    }

    /// Whether most of the sessions reached are behind: then publishers should wait.
    pub fn mostly_behind(&self) -> bool {
        self.reached > 0 && self.behind * 2 > self.reached
    }
}

/// Offers `message` to one session with the (merged) options of its matching subscriptions;
/// `more_ids` are the subscription identifiers of the other matching subscriptions.
fn offer(
    message: &Arc<Message>,
    session: &Session,
    options: SubOptions,
    more_ids: Vec<u32>,
    stats: &Stats,
    now: Instant,
) -> bool {
    let mut subscription_ids = more_ids;
    if let Some(id) = options.id {
        subscription_ids.insert(0, id);
    }
    session.offer(
        Delivery {
            message: message.clone(),
            qos: options.qos.min(message.qos),
            retain: message.retain && options.retain_as_published,
            subscription_ids,
            from_log: message.id != 0,
        },
        stats,
        now,
    )
}

fn remove_member(list: &mut Vec<Subscriber>, session: &Arc<Session>) -> bool {
    match list.iter().position(|s| Arc::ptr_eq(&s.session, session)) {
        Some(i) => {
            list.swap_remove(i);
            true
        }
        None => false,
    }
}

/// Round robin over the group, preferring members that are connected.
fn pick_member(group: &SharedGroup) -> Option<&Subscriber> {
    let n = group.members.len();
    if n == 0 {
        return None;
    }
    let start = group.next.fetch_add(1, Ordering::Relaxed);
    (0..n)
        .map(|k| &group.members[(start + k) % n])
        .find(|s| s.session.is_online())
        .or_else(|| group.members.get(start % n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use firehose_codec::{Protocol, PublishProperties, QoS};

    use crate::broker::registry::{AttachRequest, Registry};

    fn online(registry: &Registry, id: &str) -> Arc<Session> {
        registry
            .attach(
                &Arc::from(id),
                AttachRequest {
                    clean_start: true,
                    expiry_interval: 0,
                    protocol: Protocol::V5,
                    queue_limit: 100,
                    cursor: 0,
                    owner: Owner::Anonymous,
                    address: std::net::Ipv4Addr::LOCALHOST.into(),
                },
            )
            .expect("attached")
            .session
    }

    fn message(topic: &str, qos: QoS, retain: bool, payload: &'static [u8]) -> Arc<Message> {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Arc::new(Message::new(
            NEXT_ID.fetch_add(1, Ordering::Relaxed),
            topic.into(),
            Bytes::from_static(payload),
            qos,
            retain,
            PublishProperties::default(),
            Arc::from("publisher"),
        ))
    }

    fn opts(qos: QoS) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            id: None,
        }
    }

    fn queued(session: &Session) -> Vec<(String, QoS, Vec<u32>)> {
        session
            .lock()
            .queue
            .iter()
            .map(|d| {
                (
                    d.message.topic.to_string(),
                    d.qos,
                    d.subscription_ids.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn overlapping_subscriptions_deliver_once_with_highest_qos_and_all_ids() {
        let registry = Registry::default();
        let router = Router::default();
        let stats = Stats::new();
        let a = online(&registry, "a");
        router.subscribe(
            &a,
            &Owner::Anonymous,
            "x/+",
            SubOptions {
                id: Some(1),
                ..opts(QoS::AtMostOnce)
            },
        );
        router.subscribe(
            &a,
            &Owner::Anonymous,
            "x/#",
            SubOptions {
                id: Some(2),
                ..opts(QoS::AtLeastOnce)
            },
        );
        assert_eq!(
            router
                .publish(&message("x/y", QoS::ExactlyOnce, false, b"1"), &stats)
                .reached,
            1
        );
        let got = queued(&a);
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].1,
            QoS::AtLeastOnce,
            "highest granted QoS, capped by the message"
        );
        let mut ids = got[0].2.clone();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 2]);
    }

    #[test]
    fn qos_is_downgraded_to_the_message_qos() {
        let registry = Registry::default();
        let router = Router::default();
        let a = online(&registry, "a");
        router.subscribe(&a, &Owner::Anonymous, "t", opts(QoS::ExactlyOnce));
        router.publish(&message("t", QoS::AtLeastOnce, false, b"1"), &Stats::new());
        assert_eq!(queued(&a)[0].1, QoS::AtLeastOnce);
    }

    #[test]
    fn no_local_skips_the_publisher() {
        let registry = Registry::default();
        let router = Router::default();
        let me = online(&registry, "publisher");
        router.subscribe(
            &me,
            &Owner::Anonymous,
            "t",
            SubOptions {
                no_local: true,
                ..opts(QoS::AtLeastOnce)
            },
        );
        assert_eq!(
            router
                .publish(&message("t", QoS::AtLeastOnce, false, b"1"), &Stats::new())
                .reached,
            0
        );
        assert!(queued(&me).is_empty());
    }

    #[test]
    fn shared_group_delivers_each_message_to_one_member_in_turn() {
        let registry = Registry::default();
        let router = Router::default();
        let stats = Stats::new();
        let a = online(&registry, "a");
        let b = online(&registry, "b");
        router.subscribe(
            &a,
            &Owner::Anonymous,
            "$share/g/jobs/#",
            opts(QoS::AtLeastOnce),
        );
        router.subscribe(
            &b,
            &Owner::Anonymous,
            "$share/g/jobs/#",
            opts(QoS::AtLeastOnce),
        );
        for _ in 0..10 {
            assert_eq!(
                router
                    .publish(&message("jobs/1", QoS::AtLeastOnce, false, b"1"), &stats)
                    .reached,
                1
            );
        }
        assert_eq!(queued(&a).len(), 5);
        assert_eq!(queued(&b).len(), 5);
    }

    #[test]
    fn a_shared_group_of_the_same_name_is_another_group_for_another_owner() {
        let registry = Registry::default();
        let router = Router::default();
        let stats = Stats::new();
        let user = online(&registry, "u");
        let anonymous = online(&registry, "a");
        let alice = Owner::User("alice".into());
        router.subscribe(&user, &alice, "$share/g/jobs/#", opts(QoS::AtLeastOnce));
        router.subscribe(
            &anonymous,
            &Owner::Anonymous,
            "$share/g/jobs/#",
            opts(QoS::AtLeastOnce),
        );
        for _ in 0..4 {
            let fanout = router.publish(&message("jobs/1", QoS::AtLeastOnce, false, b"1"), &stats);
            assert_eq!(fanout.reached, 2, "one member of each group");
        }
        assert_eq!(
            queued(&user).len(),
            4,
            "the user's group takes every message"
        );
        assert_eq!(queued(&anonymous).len(), 4);
        assert!(
            !router.unsubscribe(&user, &Owner::Anonymous, "$share/g/jobs/#"),
            "another owner's group is not the user's"
        );
        assert!(router.unsubscribe(&user, &alice, "$share/g/jobs/#"));
    }

    #[test]
    fn retained_messages_are_replaced_and_cleared_by_an_empty_payload() {
        let router = Router::default();
        let stats = Stats::new();
        router.publish(&message("r/1", QoS::AtMostOnce, true, b"old"), &stats);
        router.publish(&message("r/1", QoS::AtMostOnce, true, b"new"), &stats);
        router.publish(&message("r/2", QoS::AtMostOnce, true, b"two"), &stats);
        let found = router.retained().matching("r/1");
        assert_eq!(found.len(), 1);
        assert_eq!(&found[0].payload[..], b"new");
        assert_eq!(router.retained().matching("r/+").len(), 2);
        assert!(router.retained().matching("#").len() == 2);
        router.publish(&message("r/1", QoS::AtMostOnce, true, b""), &stats);
        assert_eq!(router.retained().usage().messages, 1);
    }

    #[test]
    fn unsubscribe_prunes_the_table() {
        let registry = Registry::default();
        let router = Router::default();
        let a = online(&registry, "a");
        assert!(!router.subscribe(&a, &Owner::Anonymous, "a/b", opts(QoS::AtMostOnce)));
        assert!(
            router.subscribe(&a, &Owner::Anonymous, "a/b", opts(QoS::AtLeastOnce)),
            "second time it existed"
        );
        router.subscribe(&a, &Owner::Anonymous, "$share/g/a/b", opts(QoS::AtMostOnce));
        assert!(router.unsubscribe(&a, &Owner::Anonymous, "a/b"));
        assert!(!router.unsubscribe(&a, &Owner::Anonymous, "a/b"));
        assert_eq!(router.filter_count(), 1);
        router.remove_all(&a, &Owner::Anonymous, &["$share/g/a/b".to_owned()]);
        assert_eq!(router.filter_count(), 0);
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        let registry = Registry::default();
        let router = Router::default();
        let a = online(&registry, "a");
        router.subscribe(&a, &Owner::Anonymous, "#", opts(QoS::AtLeastOnce));
        assert_eq!(
            router
                .publish(
                    &message("$SYS/x", QoS::AtLeastOnce, false, b"1"),
                    &Stats::new()
                )
                .reached,
            0
        );
    }

    #[test]
    fn most_reached_sessions_behind_means_publishers_wait() {
        let fanout = |reached, behind| Fanout { reached, behind };
        assert!(!fanout(0, 0).mostly_behind(), "nobody reached");
        assert!(!fanout(10, 5).mostly_behind(), "half is not most");
        assert!(fanout(10, 6).mostly_behind());
        assert!(fanout(1, 1).mostly_behind());
    }
}
