//! What password checks remember, as plain data over a clock passed in (no I/O, no tasks):
//! failures and their backoff by address and by user name, and bounded maps for the rest
//! (logins remembered as right, addresses a user logged in from).
//!
//! Every table is bounded. A new entry in a full table first drops the stale ones, then the one
//! that matters least (the backoff that ends first, the oldest success), so a flood of distinct
//! addresses or names costs a fixed amount of memory; what it buys the flood is that the least
//! backed-off of the others is forgotten early.
//!
//! Depends on nothing but `std`; the checks (`super`) keep one of each behind their lock.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// The part of a client's address that backoff and limits count by: an IPv4 address, or the
/// /64 of an IPv6 one (a single subscriber line gets a whole /64, so counting IPv6 addresses
/// one by one would count nothing). IPv4-mapped IPv6 addresses count as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Source(IpAddr);

impl Source {
    /// The source `ip` counts as.
    pub(super) fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !(u128::from(u64::MAX));
                    Source(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// How failures turn into backoff (`limits.auth_*`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy {
    /// Failures allowed before the first backoff.
    pub(super) free: u32,
    /// The first backoff.
    pub(super) initial: Duration,
    /// The longest backoff; a record quiet this long after its backoff ended is stale.
    pub(super) max: Duration,
}

impl Policy {
    /// The backoff after the `failures`-th failure in a row: none for the free ones, then
    /// `initial`, doubling, up to `max`.
    pub(super) fn backoff(&self, failures: u32) -> Duration {
        if failures <= self.free {
            return Duration::ZERO;
        }
        let doublings = failures - self.free - 1;
        let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// `at + by`, or a far instant when that does not fit.
fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by)
        .unwrap_or_else(|| at + Duration::from_secs(86_400 * 365))
}

/// A map of at most `capacity` entries.
#[derive(Debug)]
pub(super) struct Bounded<K, V> {
    /// The entries.
    entries: HashMap<K, V>,
    /// Most entries kept.
    capacity: usize,
}

impl<K: Hash + Eq + Copy, V> Bounded<K, V> {
    /// An empty map that will hold at most `capacity` entries (at least one).
    pub(super) fn new(capacity: usize) -> Self {
        Bounded {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Entries held.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The value of `key`.
    pub(super) fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key)
    }

    /// Forgets `key`.
    pub(super) fn remove(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Sets `key` to `value`. A new key in a full map first drops the stale entries and, when
    /// none was, the one `rank` puts first (the least worth keeping).
    pub(super) fn insert<R: Ord>(
        &mut self,
        key: K,
        value: V,
        stale: impl Fn(&V) -> bool,
        rank: impl Fn(&V) -> R,
    ) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, v| !stale(v));
            if self.entries.len() >= self.capacity {
                let least = self
                    .entries
                    .iter()
                    .min_by_key(|(_, v)| rank(v))
                    .map(|(k, _)| *k);
                if let Some(least) = least {
                    self.entries.remove(&least);
                }
            }
        }
        self.entries.insert(key, value);
    }
}

/// Failures of one address or user name.
#[derive(Debug, Clone, Copy)]
struct Record {
    /// Failures in a row (the record is forgotten after a quiet `Policy::max`).
    failures: u32,
    /// End of the backoff (the last failure's time when there is none).
    until: Instant,
}

/// Failures and backoff by key (an address, or a user name's hash).
#[derive(Debug)]
pub(super) struct Failures<K> {
    /// The records, bounded by `limits.max_auth_records`.
    records: Bounded<K, Record>,
    /// How failures turn into backoff.
    policy: Policy,
}

impl<K: Hash + Eq + Copy> Failures<K> {
    /// An empty table keeping at most `capacity` records.
    pub(super) fn new(policy: Policy, capacity: usize) -> Self {
        Failures {
            records: Bounded::new(capacity),
            policy,
        }
    }

    /// Records held.
    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    /// The record of `key` unless it is stale at `now`.
    fn live(&self, key: &K, now: Instant) -> Option<&Record> {
        let max = self.policy.max;
        self.records
            .get(key)
            .filter(|record| now < later(record.until, max))
    }

    /// Whether `key` is backed off at `now`: its logins are refused without a check.
    pub(super) fn backing_off(&self, key: &K, now: Instant) -> bool {
        self.live(key, now).is_some_and(|record| now < record.until)
    }

    /// Whether `key` failed recently (its record is not stale): its checks are suspect.
    pub(super) fn suspect(&self, key: &K, now: Instant) -> bool {
        self.live(key, now).is_some()
    }

    /// Records a failure of `key` at `now`; returns the failures in a row and the backoff
    /// that starts.
    pub(super) fn fail(&mut self, key: K, now: Instant) -> (u32, Duration) {
        let failures = self
            .live(&key, now)
            .map_or(0, |record| record.failures)
            .saturating_add(1);
        let backoff = self.policy.backoff(failures);
        let max = self.policy.max;
        self.records.insert(
            key,
            Record {
                failures,
                until: later(now, backoff),
            },
            |record| now >= later(record.until, max),
            |record| record.until,
        );
        (failures, backoff)
    }

    /// Forgets the failures of `key` (it logged in).
    pub(super) fn forget(&mut self, key: &K) {
        self.records.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            free: 2,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }

    #[test]
    fn backoff_starts_after_the_free_failures_doubles_and_is_capped() {
        let backoffs: Vec<u64> = (1..=10).map(|n| policy().backoff(n).as_secs()).collect();
        assert_eq!(backoffs, [0, 0, 1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(policy().backoff(u32::MAX), Duration::from_secs(60));
        let no_free = Policy {
            free: u32::MAX,
            ..policy()
        };
        assert_eq!(no_free.backoff(u32::MAX), Duration::ZERO);
    }

    #[test]
    fn an_address_is_backed_off_then_suspect_then_forgotten() {
        let mut table = Failures::new(policy(), 10);
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let key = Source::of("192.0.2.1".parse().expect("ip"));
        assert!(!table.suspect(&key, t0));
        assert_eq!(table.fail(key, t0), (1, Duration::ZERO));
        assert_eq!(table.fail(key, t0), (2, Duration::ZERO));
        assert!(!table.backing_off(&key, t0) && table.suspect(&key, t0));
        assert_eq!(table.fail(key, t0), (3, Duration::from_secs(1)));
        assert!(table.backing_off(&key, t0));
        assert!(!table.backing_off(&key, at(1)), "the backoff ended");
        assert_eq!(table.fail(key, at(1)), (4, Duration::from_secs(2)));
        assert!(table.backing_off(&key, at(2)));
        // Quiet for the longest backoff after its own ended: forgotten, the count starts over.
        assert!(table.suspect(&key, at(62)));
        assert!(!table.suspect(&key, at(63)));
        assert_eq!(table.fail(key, at(63)), (1, Duration::ZERO));
        table.forget(&key);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_flood_of_distinct_keys_keeps_the_table_bounded_and_the_longest_backoffs() {
        let mut table = Failures::new(policy(), 100);
        let t0 = Instant::now();
        let old = 1_000_000u32;
        for _ in 0..8 {
            table.fail(old, t0);
        }
        assert!(table.backing_off(&old, t0));
        for key in 0..10_000u32 {
            table.fail(key, t0);
            assert!(table.len() <= 100);
        }
        assert_eq!(table.len(), 100);
        assert!(
            table.backing_off(&old, t0),
            "the record backed off longest is the last to go"
        );
        // Stale records go first, whatever their rank.
        let later_on = t0 + Duration::from_secs(1000);
        table.fail(20_000, later_on);
        assert_eq!(
            table.len(),
            1,
            "every stale record was dropped for the new one"
        );
    }

    #[test]
    fn bounded_maps_drop_the_least_worth_keeping() {
        let mut map = Bounded::new(2);
        let never = |_: &u32| false;
        map.insert("a", 3, never, |v| *v);
        map.insert("b", 1, never, |v| *v);
        map.insert("a", 5, never, |v| *v);
        assert_eq!(map.len(), 2, "replacing a key makes no room");
        map.insert("c", 4, never, |v| *v);
        assert_eq!((map.get(&"a"), map.get(&"b")), (Some(&5), None));
        map.insert("d", 9, |v| *v == 5, |v| *v);
        assert_eq!((map.get(&"a"), map.get(&"c")), (None, Some(&4)));
        assert_eq!(Bounded::<u8, u8>::new(0).capacity, 1);
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a = Source::of("2001:db8:1:2:aaaa::1".parse().expect("ip"));
        let b = Source::of("2001:db8:1:2:bbbb::2".parse().expect("ip"));
        let c = Source::of("2001:db8:1:3::1".parse().expect("ip"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        let mapped = Source::of("::ffff:192.0.2.7".parse().expect("ip"));
        assert_eq!(mapped, Source::of("192.0.2.7".parse().expect("ip")));
        assert_eq!(mapped.to_string(), "192.0.2.7");
    }
}
