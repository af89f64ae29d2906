//! Broker-wide counters, read by the `$SYS` publisher (and later by `/metrics`).
//!
//! Connections add their local counts in batches (once per read or write), so the hot path does
//! not bounce one cache line between cores for every packet.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Counters since the broker started. All monotonic except the gauges noted.
#[derive(Debug)]
pub struct Stats {
    /// When the broker started, for `$SYS/broker/uptime`.
    pub started: Instant,
    /// Gauge: connections that completed CONNECT and are still open.
    pub clients_connected: AtomicU64,
    /// Connections refused by a limit (total or per IP) before CONNECT.
    pub connections_refused: AtomicU64,
    /// PUBLISH packets received from clients (accepted or not).
    pub messages_received: AtomicU64,
    /// PUBLISH packets sent to clients.
    pub messages_sent: AtomicU64,
    /// Bytes read from client connections.
    pub bytes_received: AtomicU64,
    /// Bytes written to client connections.
    pub bytes_sent: AtomicU64,
    /// Deliveries dropped because a client's send queue was full.
    pub dropped_queue_full: AtomicU64,
    /// QoS 0 deliveries not kept for offline sessions (MQTT does not require it).
    pub dropped_offline_qos0: AtomicU64,
    /// Deliveries skipped because the packet exceeded the client's Maximum Packet Size.
    pub dropped_too_large: AtomicU64,
    /// Deliveries skipped because their Message Expiry Interval had passed.
    pub dropped_expired: AtomicU64,
    /// PUBLISH packets refused by the access model (anonymous or outside the user's ACL).
    pub publish_denied: AtomicU64,
    /// Publishes refused by a limit: a topic deeper than `limits.max_topic_levels`, or a new
    /// retained message beyond the retained quota.
    pub publish_over_limits: AtomicU64,
    /// Connections closed for a protocol violation or malformed packet.
    pub protocol_errors: AtomicU64,
    /// Times a live session's queue filled and it switched to reading from the log.
    pub lagging_switches: AtomicU64,
    /// QoS 0 events a lagging or offline session skipped during catch-up (QoS 0 is at most
    /// once: only QoS >= 1 is replayed from the log).
    pub skipped_qos0_catchup: AtomicU64,
    /// Events delivered from the log by catch-up rather than live routing.
    pub catchup_delivered: AtomicU64,
    /// Events the log failed to store (the publisher was told, or disconnected).
    pub store_errors: AtomicU64,
    /// Times publishers were paused because most subscribers of a message were behind.
    pub publisher_pauses: AtomicU64,
    /// CONNECTs refused because their client id is the session of another identity.
    pub sessions_not_owner: AtomicU64,
    /// Anonymous persistent sessions refused by `limits.max_anonymous_sessions` or
    /// `limits.max_anonymous_sessions_per_ip`.
    pub sessions_over_quota: AtomicU64,
    /// Filters of anonymous clients refused by the filter quotas (per filter, per session, in
    /// total).
    pub subscriptions_over_quota: AtomicU64,
    /// Subscriptions a session held that its owner may no longer subscribe (`subscribe` in the
    /// users file), dropped when it was restored or resumed.
    pub subscriptions_revoked: AtomicU64,
    /// Connections closed because their handshake (CONNECT and its password check) outlasted
    /// `limits.connect_timeout_secs`.
    pub connect_timeouts: AtomicU64,
    /// Password checks at CONNECT. Shared with the checks themselves, which count from the
    /// blocking threads they run on.
    pub auth: Arc<AuthStats>,
}

/// What password checks cost and what they refused (see `broker::passwords`).
#[derive(Debug, Default)]
pub struct AuthStats {
    /// Password hashes checked (argon2 runs): what a crowd or a flood cost.
    pub checks: AtomicU64,
    /// Checks that failed (unknown user or wrong password).
    pub failures: AtomicU64,
    /// Logins refused without a check because their address or user name was backed off
    /// after failures ("Server busy").
    pub refused_backoff: AtomicU64,
    /// Logins refused without a check because too many checks were waiting, in all, from
    /// their address or from suspect logins ("Server unavailable").
    pub refused_busy: AtomicU64,
    /// Gauge: checks waiting or running.
    pub pending: AtomicU64,
    /// Gauge: addresses with recent failures (the records kept, `limits.max_auth_records`).
    pub tracked_addresses: AtomicU64,
    /// Gauge: user names with recent failures.
    pub tracked_users: AtomicU64,
}

impl Stats {
    /// Fresh counters starting now.
    pub fn new() -> Stats {
        Stats {
            started: Instant::now(),
            clients_connected: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            dropped_queue_full: AtomicU64::new(0),
            dropped_offline_qos0: AtomicU64::new(0),
            dropped_too_large: AtomicU64::new(0),
            dropped_expired: AtomicU64::new(0),
            publish_denied: AtomicU64::new(0),
            publish_over_limits: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            lagging_switches: AtomicU64::new(0),
            skipped_qos0_catchup: AtomicU64::new(0),
            catchup_delivered: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            publisher_pauses: AtomicU64::new(0),
            sessions_not_owner: AtomicU64::new(0),
            sessions_over_quota: AtomicU64::new(0),
            subscriptions_over_quota: AtomicU64::new(0),
            subscriptions_revoked: AtomicU64::new(0),
            connect_timeouts: AtomicU64::new(0),
            auth: Arc::default(),
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

/// Adds `n` to a counter (relaxed: these are statistics, not synchronisation).
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Reads a counter.
pub(crate) fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Sets a gauge.
pub(crate) fn set(gauge: &AtomicU64, value: u64) {
    gauge.store(value, Ordering::Relaxed);
}
