//! `$SYS/broker/...`: broker statistics published periodically as retained messages, with the
//! topic names Mosquitto uses so existing dashboards keep working.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use firehose_codec::{PublishProperties, QoS};

use super::message::Message;
use super::shared::Shared;
use super::stats::get;

/// Publishes the statistics every `interval` until shutdown.
pub(crate) async fn run(shared: Arc<Shared>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    let mut shutdown = shared.watch_shutdown();
    loop {
        tokio::select! {
            _ = ticker.tick() => publish_all(&shared),
            _ = shutdown.changed() => return,
        }
    }
}

/// The current statistics as `(topic suffix, value)` pairs.
pub(crate) fn snapshot(shared: &Shared) -> Vec<(&'static str, String)> {
    let s = shared.stats();
    let connected = get(&s.clients_connected);
    let total = shared.registry().len() as u64;
    let dropped = get(&s.dropped_queue_full)
        + get(&s.dropped_offline_qos0)
        + get(&s.dropped_too_large)
        + get(&s.dropped_expired);
    vec![
        (
            "version",
            format!("firehose version {}", env!("CARGO_PKG_VERSION")),
        ),
        (
            "uptime",
            format!("{} seconds", s.started.elapsed().as_secs()),
        ),
        ("clients/connected", connected.to_string()),
        ("clients/active", connected.to_string()),
        ("clients/total", total.max(connected).to_string()),
        (
            "clients/disconnected",
            total.saturating_sub(connected).to_string(),
        ),
        ("messages/received", get(&s.messages_received).to_string()),
        ("messages/sent", get(&s.messages_sent).to_string()),
        (
            "publish/messages/received",
            get(&s.messages_received).to_string(),
        ),
        ("publish/messages/sent", get(&s.messages_sent).to_string()),
        ("publish/messages/dropped", dropped.to_string()),
        (
            "publish/messages/denied",
            get(&s.publish_denied).to_string(),
        ),
        (
            "publish/messages/over_limits",
            get(&s.publish_over_limits).to_string(),
        ),
        ("bytes/received", get(&s.bytes_received).to_string()),
        ("bytes/sent", get(&s.bytes_sent).to_string()),
        (
            "subscriptions/count",
            shared.router().filter_count().to_string(),
        ),
        (
            "retained messages/count",
            shared.router().retained().usage().messages.to_string(),
        ),
        (
            "connections/refused",
            get(&s.connections_refused).to_string(),
        ),
        ("protocol/errors", get(&s.protocol_errors).to_string()),
        (
            "sessions/anonymous/count",
            shared.registry().anonymous_sessions().to_string(),
        ),
        (
            "sessions/refused/owner",
            get(&s.sessions_not_owner).to_string(),
        ),
        (
            "sessions/refused/quota",
            get(&s.sessions_over_quota).to_string(),
        ),
        (
            "subscriptions/anonymous/count",
            shared.quotas().anonymous_subscriptions().to_string(),
        ),
        (
            "subscriptions/refused/quota",
            get(&s.subscriptions_over_quota).to_string(),
        ),
        (
            "subscriptions/revoked",
            get(&s.subscriptions_revoked).to_string(),
        ),
        (
            "connections/timed_out",
            get(&s.connect_timeouts).to_string(),
        ),
        ("auth/password_checks", get(&s.auth.checks).to_string()),
        ("auth/password_failures", get(&s.auth.failures).to_string()),
        (
            "auth/refused/backoff",
            get(&s.auth.refused_backoff).to_string(),
        ),
        ("auth/refused/busy", get(&s.auth.refused_busy).to_string()),
        ("auth/checks_pending", get(&s.auth.pending).to_string()),
        (
            "auth/backoff/addresses",
            get(&s.auth.tracked_addresses).to_string(),
        ),
        ("auth/backoff/users", get(&s.auth.tracked_users).to_string()),
    ]
}

fn publish_all(shared: &Shared) {
    let publisher: Arc<str> = Arc::from("$SYS");
    for (name, value) in snapshot(shared) {
        let topic: Arc<str> = format!("$SYS/broker/{name}").into();
        shared.route_unlogged(Message::new(
            0,
            topic,
            Bytes::from(value),
            QoS::AtMostOnce,
            true,
            PublishProperties::default(),
            publisher.clone(),
        ));
    }
}
