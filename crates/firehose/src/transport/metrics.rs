//! `/metrics`: Prometheus text format, built with prometheus-client on a registry of our own
//! (no global registry).
//!
//! Two kinds of metrics:
//! - the broker's counters ([`crate::broker::stats::Stats`]), read at scrape time by a
//!   [`Collector`], so the hot path keeps its plain atomics;
//! - per-transport connection counts, kept here by the listeners through [`ConnectionGuard`].
//!
//! Every name carries its unit (`_bytes`, `_seconds`) and counters end in `_total`.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::broker::stats::Stats;
use crate::broker::Broker;
use crate::health::{BridgeState, BridgeStates};

/// The transports, as the `transport` label spells them.
pub const TRANSPORTS: [&str; 4] = ["tcp", "tls", "ws", "wss"];

/// The `transport` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

/// The `transport` and `stage` labels of a failed handshake.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabel {
    transport: &'static str,
    stage: &'static str,
}

/// The `reason` label of an HTTP refusal or a login refused unchecked.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The `kind` label of the records kept of failed logins.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// The registry and the metrics the transports update.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    open: Family<TransportLabel, Gauge>,
    accepted: Family<TransportLabel, Counter>,
    failed: Family<HandshakeLabel, Counter>,
    http_requests: Counter,
    http_open: Gauge,
    http_refused: Family<ReasonLabel, Counter>,
    history_cut: Counter,
}

impl Metrics {
    /// A registry with the broker's counters and the transport metrics.
    pub fn new(broker: Broker) -> Metrics {
        let mut registry = Registry::default();
        let open = Family::<TransportLabel, Gauge>::default();
        let accepted = Family::<TransportLabel, Counter>::default();
        let failed = Family::<HandshakeLabel, Counter>::default();
        let http_requests = Counter::default();
        registry.register(
            "firehose_connections_open",
            "Client connections open now, by transport (before and after MQTT CONNECT)",
            open.clone(),
        );
        registry.register(
            "firehose_connections_accepted",
            "Client connections accepted and admitted, by transport",
            accepted.clone(),
        );
        registry.register(
            "firehose_handshake_failures",
            "Connections closed before MQTT started: stage is proxy (bad PROXY header), tls, \
             or upgrade (refused WebSocket upgrade)",
            failed.clone(),
        );
        registry.register(
            "firehose_http_requests",
            "HTTP requests received (WebSocket upgrades included)",
            http_requests.clone(),
        );
        // Make every transport visible from the first scrape, at zero.
        for transport in TRANSPORTS {
            let label = TransportLabel { transport };
            let _ = open.get_or_create(&label);
            let _ = accepted.get_or_create(&label);
        }
        let http_open = Gauge::default();
        registry.register(
            "firehose_http_connections",
            "HTTP(S) connections open now, WebSocket and SSE streams included",
            http_open.clone(),
        );
        let http_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "firehose_http_refused",
            "HTTP connections and requests refused by a limit or a check, by reason",
            http_refused.clone(),
        );
        let history_cut = Counter::default();
        registry.register(
            "firehose_history_pages_cut",
            "History pages that ended early, with fewer events than asked, at http.history_scan_budget",
            history_cut.clone(),
        );
        registry.register_collector(Box::new(BrokerCollector { broker }));
        Metrics {
            registry,
            open,
            accepted,
            failed,
            http_requests,
            http_open,
            http_refused,
            history_cut,
        }
    }

    /// Adds the bridges' states (`firehose_bridge_*{bridge}`), read at scrape time.
    pub fn with_bridges(mut self, bridges: BridgeStates) -> Metrics {
        self.registry
            .register_collector(Box::new(BridgeCollector { bridges }));
        self
    }

    /// Counts a new connection of `transport` until the guard is dropped.
    pub fn connection(&self, transport: &'static str) -> ConnectionGuard {
        let label = TransportLabel { transport };
        self.accepted.get_or_create(&label).inc();
        let gauge = self.open.get_or_create(&label).clone();
        gauge.inc();
        ConnectionGuard { gauge }
    }

    /// Counts a connection that failed before MQTT started.
    pub fn handshake_failed(&self, transport: &'static str, stage: &'static str) {
        self.failed
            .get_or_create(&HandshakeLabel { transport, stage })
            .inc();
    }

    /// Counts one HTTP request.
    pub fn http_request(&self) {
        self.http_requests.inc();
    }

    /// Counts an HTTP(S) connection as open (`firehose_http_connections`) until the guard
    /// is dropped.
    pub fn http_connection(&self) -> ConnectionGuard {
        self.http_open.inc();
        ConnectionGuard {
            gauge: self.http_open.clone(),
        }
    }

    /// Counts `count` HTTP refusals for `reason` (0 makes the reason visible at zero).
    pub fn http_refused(&self, reason: &'static str, count: u64) {
        self.http_refused
            .get_or_create(&ReasonLabel { reason })
            .inc_by(count);
    }

    /// Counts a history page cut short by the scan budget.
    pub fn history_cut(&self) {
        self.history_cut.inc();
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail; an encoder error would be a bug in a metric name.
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!("cannot encode metrics: {error}");
        }
        out
    }
}

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Decrements an open-connections gauge when dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    gauge: Gauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Reads the broker's atomics at scrape time.
#[derive(Debug)]
struct BrokerCollector {
    broker: Broker,
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    let metric_encoder = encoder.encode_descriptor(name, help, unit, metric.metric_type())?;
    metric.encode(metric_encoder)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    let metric_encoder = encoder.encode_descriptor(name, help, unit, metric.metric_type())?;
    metric.encode(metric_encoder)
}

/// The password checks at CONNECT and HTTP Basic: what they cost and what they refused
/// unchecked (`broker::passwords`), and the handshakes that ran out of time.
fn encode_auth(e: &mut DescriptorEncoder, stats: &Stats) -> Result<(), std::fmt::Error> {
    let auth = &stats.auth;
    counter(
        e,
        "firehose_password_checks",
        "Password hashes checked (argon2 runs) for MQTT CONNECT and HTTP Basic",
        None,
        read(&auth.checks),
    )?;
    counter(
        e,
        "firehose_password_failures",
        "Password checks that failed: unknown user or wrong password",
        None,
        read(&auth.failures),
    )?;
    let mut refused = e.encode_descriptor(
        "firehose_logins_refused",
        "Logins refused without a password check: reason=backoff (the address or user name is backed off after failures), reason=busy (too many checks waiting)",
        None,
        MetricType::Counter,
    )?;
    for (reason, value) in [
        ("backoff", read(&auth.refused_backoff)),
        ("busy", read(&auth.refused_busy)),
    ] {
        ConstCounter::new(value).encode(refused.encode_family(&ReasonLabel { reason })?)?;
    }
    gauge(
        e,
        "firehose_password_checks_pending",
        "Password checks waiting or running (limits.max_password_checks)",
        None,
        i64::try_from(read(&auth.pending)).unwrap_or(i64::MAX),
    )?;
    let mut records = e.encode_descriptor(
        "firehose_auth_backoff_records",
        "Addresses (kind=address) and user names (kind=user) with recent failed logins kept (limits.max_auth_records)",
        None,
        MetricType::Gauge,
    )?;
    for (kind, value) in [
        ("address", read(&auth.tracked_addresses)),
        ("user", read(&auth.tracked_users)),
    ] {
        ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
            .encode(records.encode_family(&KindLabel { kind })?)?;
    }
    counter(
        e,
        "firehose_connect_timeouts",
        "Connections whose CONNECT and password check did not end within limits.connect_timeout_secs",
        None,
        read(&stats.connect_timeouts),
    )
}

impl Collector for BrokerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.broker.stats();
        let e = &mut encoder;
        gauge(
            e,
            "firehose_clients_connected",
            "MQTT clients that completed CONNECT and are connected",
            None,
            i64::try_from(read(&stats.clients_connected)).unwrap_or(i64::MAX),
        )?;
        let retained = self.broker.retained_usage();
        gauge(
            e,
            "firehose_retained_messages",
            "Retained messages kept (limits.max_retained_messages)",
            None,
            i64::try_from(retained.messages).unwrap_or(i64::MAX),
        )?;
        gauge(
            e,
            "firehose_retained",
            "What the retained messages are charged (limits.max_retained_bytes): topics, payloads, and 320 bytes per message and per topic level",
            Some(&Unit::Bytes),
            i64::try_from(retained.bytes).unwrap_or(i64::MAX),
        )?;
        let anonymous = self.broker.anonymous_usage();
        gauge(
            e,
            "firehose_anonymous_sessions",
            "Persistent sessions of anonymous clients (limits.max_anonymous_sessions)",
            None,
            i64::try_from(anonymous.sessions).unwrap_or(i64::MAX),
        )?;
        gauge(
            e,
            "firehose_anonymous_subscriptions",
            "Filters of anonymous sessions (limits.max_anonymous_subscriptions)",
            None,
            i64::try_from(anonymous.subscriptions).unwrap_or(i64::MAX),
        )?;
        gauge(
            e,
            "firehose_uptime",
            "Time since the broker started",
            Some(&Unit::Seconds),
            i64::try_from(stats.started.elapsed().as_secs()).unwrap_or(i64::MAX),
        )?;
        counter(
            e,
            "firehose_connections_refused",
            "Connections refused by a connection limit before CONNECT",
            None,
            read(&stats.connections_refused),
        )?;
        counter(
            e,
            "firehose_messages_received",
            "PUBLISH packets received from clients (accepted or not)",
            None,
            read(&stats.messages_received),
        )?;
        counter(
            e,
            "firehose_messages_sent",
            "PUBLISH packets sent to clients",
            None,
            read(&stats.messages_sent),
        )?;
        counter(
            e,
            "firehose_received",
            "Bytes read from client connections (MQTT packets)",
            Some(&Unit::Bytes),
            read(&stats.bytes_received),
        )?;
        counter(
            e,
            "firehose_sent",
            "Bytes written to client connections (MQTT packets)",
            Some(&Unit::Bytes),
            read(&stats.bytes_sent),
        )?;
        counter(
            e,
            "firehose_messages_dropped_queue_full",
            "Deliveries dropped because the client's send queue was full",
            None,
            read(&stats.dropped_queue_full),
        )?;
        counter(
            e,
            "firehose_messages_dropped_offline_qos0",
            "QoS 0 deliveries not kept for offline sessions",
            None,
            read(&stats.dropped_offline_qos0),
        )?;
        counter(
            e,
            "firehose_messages_dropped_too_large",
            "Deliveries skipped because they exceeded the client's Maximum Packet Size",
            None,
            read(&stats.dropped_too_large),
        )?;
        counter(
            e,
            "firehose_messages_dropped_expired",
            "Deliveries skipped because their Message Expiry Interval had passed",
            None,
            read(&stats.dropped_expired),
        )?;
        counter(
            e,
            "firehose_publish_denied",
            "PUBLISH packets refused by the access model",
            None,
            read(&stats.publish_denied),
        )?;
        counter(
            e,
            "firehose_publish_over_limits",
            "Publishes refused by a limit: a topic deeper than max_topic_levels, or a new retained message beyond the retained quota",
            None,
            read(&stats.publish_over_limits),
        )?;
        counter(
            e,
            "firehose_protocol_errors",
            "Connections closed for a protocol violation or malformed packet",
            None,
            read(&stats.protocol_errors),
        )?;
        counter(
            e,
            "firehose_sessions_lagging",
            "Times a live session's send queue filled and it switched to catching up from the log",
            None,
            read(&stats.lagging_switches),
        )?;
        counter(
            e,
            "firehose_session_owner_refusals",
            "CONNECTs refused because the client id's session belongs to another identity",
            None,
            read(&stats.sessions_not_owner),
        )?;
        counter(
            e,
            "firehose_session_quota_refusals",
            "New anonymous persistent sessions refused by a session quota",
            None,
            read(&stats.sessions_over_quota),
        )?;
        counter(
            e,
            "firehose_subscription_quota_refusals",
            "Filters of anonymous clients refused by a filter or subscription quota",
            None,
            read(&stats.subscriptions_over_quota),
        )?;
        counter(
            e,
            "firehose_subscriptions_revoked",
            "Filters dropped on resume or restore because the user's subscribe list no longer allows them",
            None,
            read(&stats.subscriptions_revoked),
        )?;
        counter(
            e,
            "firehose_publisher_pauses",
            "Times publishers were paused (5 ms) because most subscribers of a message were behind",
            None,
            read(&stats.publisher_pauses),
        )?;
        counter(
            e,
            "firehose_catchup_delivered",
            "Events delivered from the log by catch-up rather than live routing",
            None,
            read(&stats.catchup_delivered),
        )?;
        counter(
            e,
            "firehose_catchup_skipped_qos0",
            "QoS 0 events a lagging or offline session skipped during catch-up",
            None,
            read(&stats.skipped_qos0_catchup),
        )?;
        counter(
            e,
            "firehose_store_errors",
            "Events the log failed to store",
            None,
            read(&stats.store_errors),
        )?;
        encode_auth(e, stats)?;
        let log = self.broker.store().stats();
        let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        gauge(
            e,
            "firehose_log_events",
            "Events currently in the log",
            None,
            signed(log.events),
        )?;
        gauge(
            e,
            "firehose_log_size",
            "Size of the log's database files (database and write-ahead log)",
            Some(&Unit::Bytes),
            signed(log.bytes),
        )?;
        gauge(
            e,
            "firehose_log_backlog",
            "Appends queued for the log writer and not yet committed",
            None,
            signed(log.backlog),
        )?;
        gauge(
            e,
            "firehose_log_last_event_id",
            "Id of the newest committed event",
            None,
            signed(log.last_id),
        )?;
        counter(
            e,
            "firehose_log_appended",
            "Events appended to the log since start",
            None,
            log.appended,
        )?;
        counter(
            e,
            "firehose_log_commits",
            "Log transactions committed since start (appended / commits = mean group size)",
            None,
            log.commits,
        )?;
        counter(
            e,
            "firehose_log_retention_deleted",
            "Events deleted by retention rules since start",
            None,
            log.retention_deleted,
        )?;
        Ok(())
    }
}

/// The `bridge` and `kind` labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BridgeLabel {
    bridge: String,
    kind: &'static str,
}

/// Reads the bridges' states at scrape time.
#[derive(Debug)]
struct BridgeCollector {
    bridges: BridgeStates,
}

impl Collector for BridgeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.bridges.is_empty() {
            return Ok(());
        }
        type Read = fn(&BridgeState) -> i64;
        type Count = fn(&BridgeState) -> u64;
        let gauges: [(&str, &str, Option<Unit>, Read); 2] = [
            (
                "firehose_bridge_connected",
                "1 when the bridge is connected to its source (webhooks: listening), else 0",
                None,
                |s| i64::from(s.connected()),
            ),
            (
                "firehose_bridge_last_event_timestamp",
                "When the bridge last published an event, seconds since the epoch (0: never)",
                Some(Unit::Seconds),
                |s| s.last_event_ms().unwrap_or(0) / 1000,
            ),
        ];
        for (name, help, unit, read) in gauges {
            let family = Family::<BridgeLabel, Gauge>::default();
            for state in self.bridges.iter() {
                family
                    .get_or_create(&BridgeLabel {
                        bridge: state.name().to_owned(),
                        kind: state.kind(),
                    })
                    .set(read(state));
            }
            let metric_encoder =
                encoder.encode_descriptor(name, help, unit.as_ref(), family.metric_type())?;
            family.encode(metric_encoder)?;
        }
        let counters: [(&str, &str, Count); 5] = [
            (
                "firehose_bridge_events",
                "Events the bridge published",
                BridgeState::events_in,
            ),
            (
                "firehose_bridge_reconnects",
                "Connections the bridge re-established after losing one",
                BridgeState::reconnects,
            ),
            (
                "firehose_bridge_errors",
                "Failed or lost connections and events the log refused",
                BridgeState::errors,
            ),
            (
                "firehose_bridge_rejected",
                "Inputs refused as invalid: non-JSON lines, bad signatures, oversized bodies",
                BridgeState::rejected,
            ),
            (
                "firehose_bridge_duplicates",
                "Inputs not published on purpose because they repeat one already published: \
                 webhook redeliveries, Gerrit events both the events-log refill and the stream gave",
                BridgeState::duplicates,
            ),
        ];
        for (name, help, read) in counters {
            let family = Family::<BridgeLabel, Counter>::default();
            for state in self.bridges.iter() {
                family
                    .get_or_create(&BridgeLabel {
                        bridge: state.name().to_owned(),
                        kind: state.kind(),
                    })
                    .inc_by(read(state));
            }
            let metric_encoder =
                encoder.encode_descriptor(name, help, None, family.metric_type())?;
            family.encode(metric_encoder)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Users;
    use crate::config::Limits;

    #[tokio::test]
    async fn names_carry_units_and_transports_start_at_zero() {
        let (broker, _dir) = crate::broker::test_broker(Limits::default(), Users::none());
        let metrics = Metrics::new(broker);
        let guard = metrics.connection("ws");
        metrics.handshake_failed("tls", "tls");
        let text = metrics.render();
        for line in [
            "firehose_connections_open{transport=\"ws\"} 1",
            "firehose_connections_open{transport=\"tcp\"} 0",
            "firehose_connections_accepted_total{transport=\"ws\"} 1",
            "firehose_handshake_failures_total{transport=\"tls\",stage=\"tls\"} 1",
            "firehose_received_bytes_total 0",
            "firehose_sent_bytes_total 0",
            "firehose_messages_sent_total 0",
            "firehose_clients_connected 0",
            "firehose_retained_messages 0",
            "firehose_retained_bytes 0",
            "firehose_publish_over_limits_total 0",
            "firehose_log_events 0",
            "firehose_log_backlog 0",
            "firehose_log_appended_total 0",
            "firehose_store_errors_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(
            text.contains("# TYPE firehose_uptime_seconds gauge"),
            "{text}"
        );
        drop(guard);
        let text = metrics.render();
        assert!(
            text.lines()
                .any(|l| l == "firehose_connections_open{transport=\"ws\"} 0"),
            "{text}"
        );
    }
}
