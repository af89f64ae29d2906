//! The client-id registry: which session a client id names, which identity owns it, and the
//! quota of anonymous persistent sessions, under one lock, so that the ownership check, the
//! quota check and the attach they allow are one step that no other CONNECT can interleave.
//!
//! A session belongs to the identity that created it ([`Owner`]): a connection of another
//! identity with that client id is refused before anything happens to the session, so its
//! connection is neither kicked nor its will published. Anonymous clients are one identity:
//! they may resume each other's sessions (hence unguessable client ids, [`unguessable_id`]).
//!
//! Depends on sessions and the session quota ([`super::quota`]). Lock order: registry, then one
//! session.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use firehose_codec::{Protocol, ReasonCode};

use super::quota::{quota_address, SessionQuota, SessionQuotaFull, Slot};
use super::session::{Link, Owner, Session};
use crate::config::Limits;

/// Client id to session, for takeover and resume, with each session's owner.
#[derive(Debug, Default)]
pub struct Registry {
    /// Everything, behind one lock (see the module documentation).
    inner: Mutex<Inner>,
}

/// What the registry's lock guards.
#[derive(Debug, Default)]
struct Inner {
    /// Sessions by client id.
    sessions: HashMap<Arc<str>, Entry>,
    /// Where each anonymous persistent session is counted, by client id: a map of its own, so
    /// that the entry every connection has stays small.
    slots: HashMap<Arc<str>, Slot>,
    /// Anonymous persistent sessions, in total and per address.
    quota: SessionQuota,
}

/// A registered session with its owner. The owner lives here rather than in [`Session`]: every
/// connection has a session, and its record is kept within the allocator's 256-byte class.
#[derive(Debug)]
struct Entry {
    /// The session.
    session: Arc<Session>,
    /// The identity that created it; only it may resume the session or take its client id.
    owner: Owner,
}

/// What a new connection asks of the registry.
#[derive(Debug)]
pub struct AttachRequest {
    /// Discard any existing session.
    pub clean_start: bool,
    /// Session Expiry Interval granted, in seconds.
    pub expiry_interval: u32,
    /// Protocol of the connection.
    pub protocol: Protocol,
    /// Most deliveries queued for the session.
    pub queue_limit: usize,
    /// Log position a new session starts from.
    pub cursor: u64,
    /// Who connects: a session of another owner with this client id refuses the connection.
    pub owner: Owner,
    /// Where from: a new anonymous persistent session is counted under this address.
    pub address: IpAddr,
}

/// Result of attaching a new connection to a session.
#[derive(Debug)]
pub struct Attached {
    /// The session the connection now owns.
    pub session: Arc<Session>,
    /// Whether it existed before (CONNACK session present).
    pub session_present: bool,
    /// The connection's generation.
    pub generation: u64,
    /// Subscriptions of a discarded previous session, for the caller to remove from the router.
    pub discarded: Option<(Arc<Session>, Vec<String>)>,
}

/// Why a connection may not attach; nothing happened to any session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachRefusal {
    /// The client id names a session of another identity.
    #[error("the client id is the session of {0}, not of this client")]
    NotOwner(Owner),
    /// A new anonymous persistent session beyond its quota.
    #[error("{0}")]
    Quota(SessionQuotaFull),
}

impl AttachRefusal {
    /// The CONNACK reason: Client Identifier not valid (0x85; 3.1.1 return code 2) for another
    /// identity's client id, else the quota's (see [`SessionQuotaFull::reason`]).
    pub fn reason(&self) -> ReasonCode {
        match self {
            AttachRefusal::NotOwner(_) => ReasonCode::ClientIdentifierNotValid,
            AttachRefusal::Quota(full) => full.reason(),
        }
    }
}

/// What ending a session leaves for the caller to clean up.
#[derive(Debug)]
pub struct Ended {
    /// Its subscriptions, to remove from the router.
    pub filters: Vec<String>,
    /// Whether the store may hold a copy to delete.
    pub persisted: bool,
    /// Its owner (anonymous subscriptions are counted broker-wide).
    pub owner: Owner,
}

impl Registry {
    /// An empty registry whose anonymous persistent sessions are bounded by `limits`.
    pub fn new(limits: &Limits) -> Registry {
        Registry {
            inner: Mutex::new(Inner {
                sessions: HashMap::new(),
                slots: HashMap::new(),
                quota: SessionQuota::new(limits),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Number of sessions, connected or not.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Whether there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Anonymous persistent sessions counted in their quota.
    pub fn anonymous_sessions(&self) -> u64 {
        self.lock().quota.total()
    }

    /// Whether more anonymous persistent sessions are kept than their quota allows (restored
    /// after the limit was lowered).
    pub fn over_quota(&self) -> bool {
        self.lock().quota.over()
    }

    /// Attaches a connection to the session of `client_id`: resumes it unless `clean_start`,
    /// and kicks any connection already attached (client-id takeover). Only the session's owner
    /// may do either; a new anonymous persistent session must fit its quota.
    ///
    /// # Errors
    /// [`AttachRefusal`] when the client id is another identity's, or the quota is full; no
    /// session was touched.
    pub fn attach(
        &self,
        client_id: &Arc<str>,
        request: AttachRequest,
    ) -> Result<Attached, AttachRefusal> {
        let AttachRequest {
            clean_start,
            expiry_interval,
            protocol,
            queue_limit,
            cursor,
            owner,
            address,
        } = request;
        let mut guard = self.lock();
        let inner = &mut *guard;
        let mut replaced = None;
        if let Some(entry) = inner.sessions.get(client_id) {
            if entry.owner != owner {
                return Err(AttachRefusal::NotOwner(entry.owner.clone()));
            }
            let existing = entry.session.clone();
            let mut state = existing.lock();
            // A session with expiry 0 ends with its connection, even when a takeover closes
            // that connection: it is never resumed.
            if !clean_start && !state.ended && state.expiry_interval != 0 {
                // Taking the link is the kick: the old connection no longer finds its
                // generation.
                if let Some(waker) = state.link.take().and_then(|mut old| old.take_waker()) {
                    waker.wake();
                }
                state.generation += 1;
                let generation = state.generation;
                state.link = Some(Link::new());
                state.expiry_interval = expiry_interval;
                state.protocol = protocol;
                drop(state);
                existing.set_online(true);
                return Ok(Attached {
                    session: existing,
                    session_present: true,
                    generation,
                    discarded: None,
                });
            }
            drop(state);
            replaced = Some(existing);
        }
        // Room first: a refusal must leave the old session and its connection as they were.
        let old_slot = match &replaced {
            Some(_) => inner.slots.remove(client_id),
            None => None,
        };
        let slot = (owner.is_anonymous() && expiry_interval > 0)
            .then(|| Slot(Some(quota_address(address))));
        match slot {
            Some(slot) => {
                if let Err(full) = inner.quota.admit(slot, old_slot) {
                    if let Some(old) = old_slot {
                        inner.slots.insert(client_id.clone(), old);
                    }
                    return Err(AttachRefusal::Quota(full));
                }
                inner.slots.insert(client_id.clone(), slot);
            }
            None => {
                if let Some(old) = old_slot {
                    inner.quota.release(old);
                }
            }
        }
        let mut discarded = None;
        let mut old_persisted = false;
        if let Some(existing) = replaced {
            let mut state = existing.lock();
            if let Some(waker) = state.link.take().and_then(|mut old| old.take_waker()) {
                waker.wake();
            }
            state.ended = true;
            state.queue.clear();
            state.inflight.clear();
            // The new session replaces the stored copy (or deletes it when it is not persistent).
            old_persisted = std::mem::replace(&mut state.persisted, false);
            let filters = state.subscriptions.drain().map(|(f, _)| f).collect();
            drop(state);
            existing.set_online(false);
            discarded = Some((existing, filters));
        }
        let session = Arc::new(Session::new(
            client_id.clone(),
            protocol,
            expiry_interval,
            queue_limit,
            cursor,
        ));
        {
            let mut state = session.lock();
            state.generation = 1;
            state.link = Some(Link::new());
            state.persisted = old_persisted;
        }
        session.set_online(true);
        inner.sessions.insert(
            client_id.clone(),
            Entry {
                session: session.clone(),
                owner,
            },
        );
        Ok(Attached {
            session,
            session_present: false,
            generation: 1,
            discarded,
        })
    }

    /// The owner of `session` and the address it is counted under, while it is registered:
    /// what a whole save of the session records.
    pub fn origin(&self, session: &Arc<Session>) -> Option<(Owner, Option<IpAddr>)> {
        let inner = self.lock();
        let entry = inner.sessions.get(&session.client_id)?;
        Arc::ptr_eq(&entry.session, session).then(|| {
            let address = inner.slots.get(&session.client_id).and_then(|slot| slot.0);
            (entry.owner.clone(), address)
        })
    }

    /// Wakes every attached connection: at shutdown, after the broker's flag is set, so that
    /// each finds it. A connection registers its waker before it reads the flag, under its
    /// session's lock, and this takes the same lock after the flag is set: either it sees the
    /// waker, or the connection sees the flag.
    pub fn wake_all(&self) {
        let sessions: Vec<Arc<Session>> = self
            .lock()
            .sessions
            .values()
            .map(|entry| entry.session.clone())
            .collect();
        for session in sessions {
            session.wake_connection();
        }
    }

    /// Registers a session restored from the store (offline, lagging from its cursor), owned by
    /// `owner` and, if anonymous, counted under `address` (`None`: stored before addresses were)
    /// whatever the quota: stored sessions are all kept.
    pub fn restore(&self, session: Arc<Session>, owner: Owner, address: Option<IpAddr>) {
        {
            let mut state = session.lock();
            state.lagging = true;
            state.persisted = true;
            state.saved_whole = true;
        }
        let mut inner = self.lock();
        let slot = owner
            .is_anonymous()
            .then(|| Slot(address.map(quota_address)));
        if let Some(slot) = slot {
            inner.quota.count(slot);
            inner.slots.insert(session.client_id.clone(), slot);
        }
        inner
            .sessions
            .insert(session.client_id.clone(), Entry { session, owner });
    }

    /// Ends `session` if it is still the registered one and `generation` is still current and
    /// offline; returns what the caller must remove from the router and the store.
    pub fn end_if_current(&self, session: &Arc<Session>, generation: u64) -> Option<Ended> {
        let mut inner = self.lock();
        let registered = inner
            .sessions
            .get(&session.client_id)
            .is_some_and(|entry| Arc::ptr_eq(&entry.session, session));
        if !registered {
            // Only a session that was replaced (and so ended) leaves the registry otherwise.
            return None;
        }
        let mut state = session.lock();
        if state.ended || state.generation != generation || state.link.is_some() {
            return None;
        }
        state.ended = true;
        state.queue.clear();
        state.inflight.clear();
        let filters = state.subscriptions.drain().map(|(f, _)| f).collect();
        let persisted = std::mem::replace(&mut state.persisted, false);
        drop(state);
        let entry = inner.sessions.remove(&session.client_id)?;
        if let Some(slot) = inner.slots.remove(&session.client_id) {
            inner.quota.release(slot);
        }
        Some(Ended {
            filters,
            persisted,
            owner: entry.owner,
        })
    }
}

/// A client id nobody can guess: `prefix` and 128 random bits from the operating system, in
/// hex. Anonymous clients share one identity, so a session is only as private as its client
/// id is hard to guess: server-assigned ids and `firehose sub`'s are made here.
pub fn unguessable_id(prefix: &str) -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // The system's generator failed (it does not on Linux): hash the time and a counter
        // with the process's random SipHash keys instead, which another host cannot predict.
        use std::hash::{BuildHasher, Hash, Hasher};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let keys = std::collections::hash_map::RandomState::new();
        for half in bytes.chunks_mut(8) {
            let mut hasher = keys.build_hasher();
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
                .hash(&mut hasher);
            NEXT.fetch_add(1, Ordering::Relaxed).hash(&mut hasher);
            half.copy_from_slice(&hasher.finish().to_be_bytes());
        }
    }
    let mut id = String::with_capacity(prefix.len() + 32);
    id.push_str(prefix);
    for byte in bytes {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn request(owner: Owner, clean_start: bool, expiry_interval: u32, last: u8) -> AttachRequest {
        AttachRequest {
            clean_start,
            expiry_interval,
            protocol: Protocol::V5,
            queue_limit: 10,
            cursor: 0,
            owner,
            address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)),
        }
    }

    fn user(name: &str) -> Owner {
        Owner::User(name.into())
    }

    #[test]
    fn another_identity_is_refused_and_the_owner_keeps_its_connection() {
        let registry = Registry::default();
        let id: Arc<str> = "bridge".into();
        let first = registry
            .attach(&id, request(user("alice"), false, 60, 1))
            .expect("alice attaches");
        for intruder in [Owner::Anonymous, user("bob")] {
            for clean_start in [false, true] {
                let refused = registry.attach(&id, request(intruder.clone(), clean_start, 60, 2));
                assert_eq!(
                    refused.map(|a| a.generation),
                    Err(AttachRefusal::NotOwner(user("alice")))
                );
            }
        }
        let state = first.session.lock();
        assert_eq!(state.generation, first.generation, "not taken over");
        assert!(state.link.is_some(), "still attached");
        drop(state);
        let again = registry
            .attach(&id, request(user("alice"), false, 60, 3))
            .expect("the owner resumes");
        assert!(again.session_present);
    }

    #[test]
    fn anonymous_clients_share_one_identity() {
        let registry = Registry::default();
        let id: Arc<str> = "shared".into();
        registry
            .attach(&id, request(Owner::Anonymous, false, 60, 1))
            .expect("first");
        let second = registry
            .attach(&id, request(Owner::Anonymous, false, 60, 2))
            .expect("another anonymous client resumes it");
        assert!(second.session_present);
    }

    #[test]
    fn a_full_quota_refuses_new_anonymous_sessions_without_touching_the_old_one() {
        let limits = Limits {
            max_anonymous_sessions: 2,
            max_anonymous_sessions_per_ip: 1,
            ..Limits::default()
        };
        let registry = Registry::new(&limits);
        let attach = |id: &str, owner: Owner, clean, expiry, last| {
            registry.attach(&Arc::from(id), request(owner, clean, expiry, last))
        };
        let a = attach("a", Owner::Anonymous, false, 60, 1).expect("a");
        assert_eq!(
            attach("b", Owner::Anonymous, false, 60, 1).map(|_| ()),
            Err(AttachRefusal::Quota(SessionQuotaFull::Address(1)))
        );
        attach("c", Owner::Anonymous, true, 0, 1).expect("sessions without expiry do not count");
        attach("d", user("alice"), false, 60, 1).expect("users are not counted");
        attach("e", Owner::Anonymous, false, 60, 2).expect("another address");
        assert_eq!(
            attach("f", Owner::Anonymous, false, 60, 3).map(|_| ()),
            Err(AttachRefusal::Quota(SessionQuotaFull::Total(2)))
        );
        // A clean start from another full address is refused and leaves the session attached.
        assert!(attach("a", Owner::Anonymous, true, 60, 2).is_err());
        assert!(a.session.lock().link.is_some());
        // Replacing one's own session needs no more room.
        let replaced = attach("a", Owner::Anonymous, true, 60, 1).expect("same address");
        assert_eq!(registry.anonymous_sessions(), 2);
        replaced.session.lock().link = None;
        let ended = registry
            .end_if_current(&replaced.session, replaced.generation)
            .expect("ended");
        assert!(ended.owner.is_anonymous());
        assert_eq!(registry.anonymous_sessions(), 1);
        attach("f", Owner::Anonymous, false, 60, 3).expect("room came back");
    }

    #[test]
    fn restored_sessions_count_whatever_the_quota_and_say_whose_they_are() {
        let limits = Limits {
            max_anonymous_sessions: 1,
            ..Limits::default()
        };
        let registry = Registry::new(&limits);
        for id in ["x", "y"] {
            let session = Arc::new(Session::new(id.into(), Protocol::V5, 60, 10, 0));
            registry.restore(session, Owner::Anonymous, None);
        }
        let session = Arc::new(Session::new("z".into(), Protocol::V5, 60, 10, 0));
        registry.restore(session.clone(), user("alice"), None);
        assert_eq!(registry.anonymous_sessions(), 2);
        assert!(registry.over_quota());
        assert_eq!(registry.origin(&session), Some((user("alice"), None)));
    }

    #[test]
    fn unguessable_ids_are_128_random_bits() {
        let a = unguessable_id("p-");
        assert_eq!(a.len(), 2 + 32);
        assert!(a.starts_with("p-"));
        assert_ne!(a, unguessable_id("p-"));
    }
}
