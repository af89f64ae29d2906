//! The quotas that bound what anonymous clients make the broker keep: persistent sessions (in
//! total and per address, [`SessionQuota`]), how long they outlive their connection
//! ([`granted_expiry`]), and the filters they subscribe (per filter, per session and in total,
//! [`Quotas::reserve_subscription`]).
//!
//! Why only anonymous clients: anyone on the internet may connect without an account, so
//! everything they make the broker keep must have a bound that does not depend on their good
//! will; users are accounts the operator made, and their sessions are not counted. The checks
//! run at CONNECT and SUBSCRIBE, never per delivered message.
//!
//! A refusal is counted ([`Stats`]) and logged as a warning once per run of refusals: the first
//! refusal after something fitted logs, the rest of a flood does not.
//!
//! Depends on the limits, the identity (anonymous or a user) and the counters; the registry
//! (sessions) and the SUBSCRIBE handler call it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use firehose_codec::ReasonCode;

use super::stats::{self, Stats};
use crate::auth::Identity;
use crate::config::Limits;
use crate::topic::level_count;

/// What a filter of an anonymous client is charged per topic level, and once more for the
/// subscription itself, besides three times its length.
///
/// Measured with a counting allocator (2026-12, Rust 1.95): a filter whose levels share no
/// prefix with any other takes 482 bytes per literal level (the one-entry map of the
/// subscription trie allocates four buckets of 104 bytes, plus the map's box and the level's
/// text), 91 per `+` level, and about 280 for the subscription itself (the subscriber entry,
/// the session's list entry and the table's growth); the text is kept three times (the
/// session's list, the trie's copy of the filter, the levels' keys). mimalloc rounds the
/// level's 436-byte table to 448, hence 512: the charge bounds what the filter takes, deep
/// filters of empty levels included.
pub const FILTER_LEVEL_CHARGE: u64 = 512;

/// What `filter` (as subscribed, `$share/<group>/` included) is charged in the filter quotas:
/// three times its length and [`FILTER_LEVEL_CHARGE`] per level and once more.
pub fn filter_charge(filter: &str) -> u64 {
    let levels = level_count(filter) as u64;
    3 * filter.len() as u64 + FILTER_LEVEL_CHARGE * (levels + 1)
}

/// The Session Expiry Interval granted to `identity` for the `requested` one: at most
/// `limits.max_session_expiry_secs`, and for anonymous clients at most
/// `limits.max_anonymous_session_expiry_secs`. Used at CONNECT and when an MQTT 5 DISCONNECT
/// changes the expiry, so that neither lengthens an anonymous session past its bound.
pub fn granted_expiry(limits: &Limits, identity: &Identity, requested: u32) -> u32 {
    let most = if identity.is_anonymous() {
        limits
            .max_session_expiry_secs
            .min(limits.max_anonymous_session_expiry_secs)
    } else {
        limits.max_session_expiry_secs
    };
    requested.min(most)
}

/// The address a session is counted under in `limits.max_anonymous_sessions_per_ip`: the IPv4
/// address (an IPv4-mapped IPv6 address counts as IPv4), or the IPv6 /64 prefix, because one
/// host (or one customer of a provider) usually holds a whole /64 and could otherwise count as
/// 2^64 addresses.
pub fn quota_address(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

/// Why a new anonymous persistent session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionQuotaFull {
    /// `limits.max_anonymous_sessions` reached.
    #[error("anonymous clients hold {0} persistent sessions, the most allowed (limits.max_anonymous_sessions)")]
    Total(u64),
    /// `limits.max_anonymous_sessions_per_ip` reached for this address.
    #[error("this address holds {0} anonymous persistent sessions, the most allowed (limits.max_anonymous_sessions_per_ip)")]
    Address(u64),
}

impl SessionQuotaFull {
    /// The CONNACK reason: the broker-wide quota is a state of the server that passes as
    /// sessions expire, hence Server busy (0x89); the address's quota is that address's own
    /// doing, hence Quota exceeded (0x97). MQTT 3.1.1 clients get return code 3 (server
    /// unavailable) for both.
    pub fn reason(self) -> ReasonCode {
        match self {
            SessionQuotaFull::Total(_) => ReasonCode::ServerBusy,
            SessionQuotaFull::Address(_) => ReasonCode::QuotaExceeded,
        }
    }
}

/// Where an anonymous persistent session is counted: in the total, and under the address
/// that created it (`None` for a session stored before addresses were recorded: counted in the
/// total only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(pub Option<IpAddr>);

/// The anonymous persistent sessions, in total and per address: pure bookkeeping, kept under
/// the session registry's lock so that the check and the count are one step.
#[derive(Debug, Default)]
pub struct SessionQuota {
    /// `limits.max_anonymous_sessions` (0: no limit).
    max_total: u64,
    /// `limits.max_anonymous_sessions_per_ip` (0: no limit).
    max_per_address: u64,
    /// Sessions counted.
    total: u64,
    /// Sessions counted per [`quota_address`]; an address leaves with its last session.
    per_address: HashMap<IpAddr, u64>,
}

impl SessionQuota {
    /// A quota of these limits, with nothing counted.
    pub fn new(limits: &Limits) -> SessionQuota {
        SessionQuota {
            max_total: limits.max_anonymous_sessions,
            max_per_address: limits.max_anonymous_sessions_per_ip,
            ..SessionQuota::default()
        }
    }

    /// Sessions counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether more sessions are counted than the limits allow (after a restart with lower
    /// limits: stored sessions are all kept).
    pub fn over(&self) -> bool {
        self.max_total > 0 && self.total > self.max_total
    }

    /// Counts a new session at `slot` in place of `replaced` (a session of the same client id
    /// that the new one discards), unless that passes a limit; then nothing changes.
    ///
    /// # Errors
    /// [`SessionQuotaFull`] naming the limit.
    pub fn admit(&mut self, slot: Slot, replaced: Option<Slot>) -> Result<(), SessionQuotaFull> {
        if let Some(old) = replaced {
            self.release(old);
        }
        let fits_total = self.max_total == 0 || self.total < self.max_total;
        let at_address = slot
            .0
            .map_or(0, |a| self.per_address.get(&a).copied().unwrap_or(0));
        let fits_address = self.max_per_address == 0 || at_address < self.max_per_address;
        if fits_total && fits_address {
            self.count(slot);
            return Ok(());
        }
        if let Some(old) = replaced {
            self.count(old);
        }
        Err(if fits_total {
            SessionQuotaFull::Address(self.max_per_address)
        } else {
            SessionQuotaFull::Total(self.max_total)
        })
    }

    /// Counts a session whatever the limits (a session restored from the store).
    pub fn count(&mut self, slot: Slot) {
        self.total += 1;
        if let Some(address) = slot.0 {
            *self.per_address.entry(address).or_insert(0) += 1;
        }
    }

    /// Forgets a session that ended.
    pub fn release(&mut self, slot: Slot) {
        self.total = self.total.saturating_sub(1);
        if let Some(address) = slot.0 {
            if let Some(n) = self.per_address.get_mut(&address) {
                *n -= 1;
                if *n == 0 {
                    self.per_address.remove(&address);
                }
            }
        }
    }
}

/// Why a filter of an anonymous client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionQuotaFull {
    /// The filter alone is charged more than `limits.max_anonymous_filter_bytes`.
    #[error(
        "a filter charged {charge} bytes, more than limits.max_anonymous_filter_bytes ({max})"
    )]
    Filter {
        /// What the filter is charged ([`filter_charge`]).
        charge: u64,
        /// The limit.
        max: u64,
    },
    /// The session's filters would be charged more than
    /// `limits.max_anonymous_session_filter_bytes`.
    #[error("a session's filters would be charged more than limits.max_anonymous_session_filter_bytes ({0})")]
    Session(u64),
    /// Anonymous clients hold `limits.max_anonymous_subscriptions` subscriptions.
    #[error("anonymous clients hold {0} subscriptions, the most allowed (limits.max_anonymous_subscriptions)")]
    Total(u64),
}

/// A run of refusals of one kind: the first refusal after something of that kind fitted is
/// logged, the others only counted.
#[derive(Debug, Default)]
struct RefusalRun(AtomicBool);

impl RefusalRun {
    /// Notes a refusal; whether it is the first of its run (and should be logged).
    fn refused(&self) -> bool {
        !self.0.swap(true, Ordering::Relaxed)
    }

    /// Notes that one fitted: the run, if any, is over.
    fn fitted(&self) {
        if self.0.load(Ordering::Relaxed) {
            self.0.store(false, Ordering::Relaxed);
        }
    }
}

/// One refusal, as it is counted and logged.
struct Refusal<'a> {
    /// What was refused, for the log.
    what: &'static str,
    /// The `$SYS/broker/...` counter that counts it, for the log.
    sys: &'static str,
    /// Who asked.
    peer: SocketAddr,
    /// With which client id.
    client_id: &'a str,
}

impl Refusal<'_> {
    /// Counts the refusal in `counter`, and logs it when it is the first of its `run`.
    fn note(&self, run: &RefusalRun, counter: &AtomicU64, why: &dyn std::fmt::Display) {
        stats::add(counter, 1);
        if run.refused() {
            tracing::warn!(peer = %self.peer, client = ?self.client_id,
                "{} refused: {why}; further refusals are counted ($SYS/broker/{}) but not \
                 logged until one fits again", self.what, self.sys);
        }
    }
}

/// The broker-wide part of the anonymous quotas that lives outside the registry's lock: the
/// subscriptions anonymous clients hold, and the runs of refusals.
#[derive(Debug, Default)]
pub struct Quotas {
    /// Subscriptions held by anonymous sessions, in every session (persistent or not).
    anonymous_subscriptions: AtomicU64,
    /// Refusals of new anonymous persistent sessions.
    session_refusals: RefusalRun,
    /// Refusals of filters of anonymous clients.
    subscription_refusals: RefusalRun,
}

impl Quotas {
    /// Subscriptions anonymous clients hold.
    pub fn anonymous_subscriptions(&self) -> u64 {
        self.anonymous_subscriptions.load(Ordering::Relaxed)
    }

    /// Checks a new subscription of an anonymous session whose filters are charged
    /// `session_charge` so far, and counts it in the broker-wide total.
    ///
    /// # Errors
    /// [`SubscriptionQuotaFull`] naming the limit; nothing is counted then.
    pub fn reserve_subscription(
        &self,
        limits: &Limits,
        session_charge: u64,
        filter: &str,
    ) -> Result<u64, SubscriptionQuotaFull> {
        let charge = filter_charge(filter);
        let max = limits.max_anonymous_filter_bytes;
        if max > 0 && charge > max {
            return Err(SubscriptionQuotaFull::Filter { charge, max });
        }
        let max = limits.max_anonymous_session_filter_bytes;
        if max > 0 && session_charge.saturating_add(charge) > max {
            return Err(SubscriptionQuotaFull::Session(max));
        }
        let max = limits.max_anonymous_subscriptions;
        let held = self.anonymous_subscriptions.fetch_add(1, Ordering::Relaxed);
        if max > 0 && held >= max {
            self.anonymous_subscriptions.fetch_sub(1, Ordering::Relaxed);
            return Err(SubscriptionQuotaFull::Total(max));
        }
        Ok(charge)
    }

    /// Counts subscriptions of anonymous sessions whatever the limits (restored sessions).
    pub fn count_subscriptions(&self, n: usize) {
        self.anonymous_subscriptions
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Forgets `n` subscriptions of anonymous sessions (unsubscribed, or their session ended).
    pub fn release_subscriptions(&self, n: usize) {
        if n > 0 {
            self.anonymous_subscriptions
                .fetch_sub(n as u64, Ordering::Relaxed);
        }
    }

    /// Counts and logs (once per run) a refused anonymous persistent session.
    pub fn session_refused(
        &self,
        stats: &Stats,
        full: SessionQuotaFull,
        peer: SocketAddr,
        client_id: &str,
    ) {
        let refusal = Refusal {
            what: "anonymous persistent session",
            sys: "sessions/refused/quota",
            peer,
            client_id,
        };
        refusal.note(&self.session_refusals, &stats.sessions_over_quota, &full);
    }

    /// Ends a run of session refusals: an anonymous persistent session fitted.
    pub fn session_fitted(&self) {
        self.session_refusals.fitted();
    }

    /// Counts and logs (once per run) a refused filter of an anonymous client.
    pub fn subscription_refused(
        &self,
        stats: &Stats,
        full: SubscriptionQuotaFull,
        peer: SocketAddr,
        client_id: &str,
    ) {
        let refusal = Refusal {
            what: "anonymous subscription",
            sys: "subscriptions/refused/quota",
            peer,
            client_id,
        };
        refusal.note(
            &self.subscription_refusals,
            &stats.subscriptions_over_quota,
            &full,
        );
    }

    /// Ends a run of subscription refusals: a filter of an anonymous client fitted.
    pub fn subscription_fitted(&self) {
        self.subscription_refusals.fitted();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn limits() -> Limits {
        Limits {
            max_anonymous_sessions: 3,
            max_anonymous_sessions_per_ip: 2,
            max_anonymous_filter_bytes: 2000,
            max_anonymous_session_filter_bytes: 5000,
            max_anonymous_subscriptions: 4,
            ..Limits::default()
        }
    }

    fn at(last: u8) -> Slot {
        Slot(Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))))
    }

    #[test]
    fn a_filter_is_charged_its_text_thrice_and_512_bytes_per_level_and_once_more() {
        assert_eq!(filter_charge("#"), 3 + 2 * 512);
        assert_eq!(filter_charge("a/b"), 9 + 3 * 512);
        assert_eq!(filter_charge("$share/g/a"), 30 + 4 * 512);
        assert_eq!(filter_charge("///"), 9 + 5 * 512, "empty levels are levels");
    }

    #[test]
    fn anonymous_sessions_expire_sooner_and_users_keep_the_general_maximum() {
        let limits = Limits {
            max_session_expiry_secs: 1000,
            max_anonymous_session_expiry_secs: 60,
            ..Limits::default()
        };
        assert_eq!(granted_expiry(&limits, &Identity::Anonymous, u32::MAX), 60);
        assert_eq!(granted_expiry(&limits, &Identity::Anonymous, 30), 30);
        let user = Identity::internal("u", &[]).expect("identity");
        assert_eq!(granted_expiry(&limits, &user, u32::MAX), 1000);
    }

    #[test]
    fn an_ipv6_host_counts_as_its_slash_64_and_a_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("address");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("address");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("address");
        assert_eq!(quota_address(a), quota_address(b));
        assert_ne!(quota_address(a), quota_address(c));
        assert_eq!(
            quota_address(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped())),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))
        );
        assert_eq!(
            quota_address(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        );
    }

    #[test]
    fn sessions_are_refused_per_address_then_in_total_and_room_comes_back() {
        let mut quota = SessionQuota::new(&limits());
        assert_eq!(quota.admit(at(1), None), Ok(()));
        assert_eq!(quota.admit(at(1), None), Ok(()));
        assert_eq!(quota.admit(at(1), None), Err(SessionQuotaFull::Address(2)));
        assert_eq!(quota.admit(at(2), None), Ok(()));
        assert_eq!(quota.admit(at(3), None), Err(SessionQuotaFull::Total(3)));
        assert_eq!(quota.total(), 3);
        // A session that replaces one of its own client id needs no new room.
        assert_eq!(quota.admit(at(1), Some(at(1))), Ok(()));
        // A refused replacement leaves the count as it was.
        assert_eq!(
            quota.admit(at(1), Some(at(2))),
            Err(SessionQuotaFull::Address(2))
        );
        assert_eq!(quota.total(), 3);
        quota.release(at(2));
        assert_eq!(quota.admit(at(3), None), Ok(()));
        assert!(!quota.over());
        quota.count(Slot(None));
        assert!(quota.over(), "restored sessions are kept beyond the limit");
    }

    #[test]
    fn subscriptions_are_refused_per_filter_per_session_and_in_total() {
        let quotas = Quotas::default();
        let limits = limits();
        let big = "a/".repeat(3);
        assert_eq!(
            quotas.reserve_subscription(&limits, 0, &big),
            Err(SubscriptionQuotaFull::Filter {
                charge: filter_charge(&big),
                max: 2000
            })
        );
        assert_eq!(
            quotas.reserve_subscription(&limits, 4000, "a/b"),
            Err(SubscriptionQuotaFull::Session(5000))
        );
        for _ in 0..4 {
            assert_eq!(
                quotas.reserve_subscription(&limits, 0, "a/b"),
                Ok(filter_charge("a/b"))
            );
        }
        assert_eq!(
            quotas.reserve_subscription(&limits, 0, "a/b"),
            Err(SubscriptionQuotaFull::Total(4))
        );
        assert_eq!(quotas.anonymous_subscriptions(), 4);
        quotas.release_subscriptions(1);
        assert!(quotas.reserve_subscription(&limits, 0, "a/b").is_ok());
    }

    #[test]
    fn a_run_of_refusals_is_logged_once() {
        let run = RefusalRun::default();
        assert!(run.refused());
        assert!(!run.refused());
        run.fitted();
        assert!(run.refused(), "a new run after something fitted");
    }
}
