//! Catch-up: a lagging session (offline, or fallen behind with a full queue) reads what it
//! missed from the log on a blocking thread ([`Connection::start_catchup`]), queues what
//! matches its subscriptions in log order, and returns to live routing once its cursor has
//! reached the event being routed ([`Connection::apply_catchup`]).
//!
//! Depends on the broker's shared state (the log read, the routing position), the session and
//! the topic matcher.

use std::sync::Arc;

use firehose_codec::QoS;

use super::Connection;
use crate::broker::message::{Delivery, Message};
use crate::broker::session::Subscriptions;
use crate::broker::stats;
use crate::broker::subscription::parse_filter;
use crate::store::{Page, StoreError};
use crate::topic;

/// Most events one catch-up read returns, and most rows it examines.
const CATCHUP_BATCH: usize = 1000;
/// See [`CATCHUP_BATCH`].
const CATCHUP_SCAN: usize = 20_000;

/// A catch-up read of the log in progress.
pub(super) struct CatchUp {
    /// The cursor it reads after.
    pub(super) from: u64,
    /// The blocking read.
    pub(super) read: tokio::task::JoinHandle<Result<Page, StoreError>>,
}

impl Connection {
    /// Starts reading from the log when the session is lagging and its queue has room.
    pub(super) fn start_catchup(&self) -> Option<CatchUp> {
        let (from, filters) = {
            let mut state = self.session.lock();
            if !state.lagging || state.queue.len() > self.session.queue_limit() / 2 {
                return None;
            }
            let filters: Vec<String> = state
                .subscriptions
                .keys()
                .filter(|f| parse_filter(f).group.is_none())
                .cloned()
                .collect();
            let only_qos0 = state
                .subscriptions
                .values()
                .all(|o| o.qos == QoS::AtMostOnce);
            if filters.is_empty() || only_qos0 {
                // Nothing to read (catch-up replays QoS >= 1 only): back to live routing from
                // the current position.
                state.cursor = state.cursor.max(self.shared.log_position());
                state.lagging = false;
                return None;
            }
            (state.cursor, filters)
        };
        let read = self
            .shared
            .read_log_after(from, filters, CATCHUP_BATCH, CATCHUP_SCAN);
        Some(CatchUp { from, read })
    }

    /// Queues what a catch-up read found, in log order, and returns the session to live routing
    /// once it has reached the event being routed.
    pub(super) fn apply_catchup(&mut self, from: u64, page: Page) {
        let stats = self.shared.stats();
        let mut state = self.session.lock();
        if state.cursor != from || !state.lagging {
            return; // a takeover or clean start moved the session meanwhile
        }
        let limit = self.session.queue_limit();
        let mut full = false;
        let mut delivered = 0;
        for event in &page.events {
            if event.id <= state.cursor {
                continue;
            }
            if state.queue.len() >= limit {
                full = true;
                break;
            }
            let already_inflight = state.delivered_ahead.contains(event.id)
                || state
                    .inflight
                    .values()
                    .any(|f| f.delivery.from_log && f.delivery.message.id == event.id);
            if !already_inflight && self.identity.may_receive(&event.event.topic) {
                let message = Arc::new(Message::from_event(event));
                match delivery_for(&state.subscriptions, message) {
                    Some(d) if d.qos == QoS::AtMostOnce => {
                        stats::add(&stats.skipped_qos0_catchup, 1)
                    }
                    Some(d) => {
                        state.queue.push_back(d);
                        delivered += 1;
                    }
                    None => {}
                }
            }
            state.cursor = event.id;
        }
        if !full {
            state.cursor = state.cursor.max(page.scanned_to);
        }
        let cursor = state.cursor;
        state.delivered_ahead.forget_up_to(cursor);
        if !full && !page.more && state.cursor >= self.shared.log_position() {
            state.lagging = false;
        }
        drop(state);
        stats::add(&stats.catchup_delivered, delivered);
    }
}

/// The delivery of a logged message to a session, judged by its own (non-shared)
/// subscriptions: the highest granted QoS, every subscription id, Retain As Published.
fn delivery_for(subscriptions: &Subscriptions, message: Arc<Message>) -> Option<Delivery> {
    let mut found: Option<(QoS, bool, Vec<u32>)> = None;
    for (filter, options) in subscriptions.iter() {
        if parse_filter(filter).group.is_some() || !topic::matches(filter, &message.topic) {
            continue;
        }
        let entry = found.get_or_insert((QoS::AtMostOnce, false, Vec::new()));
        entry.0 = entry.0.max(options.qos);
        entry.1 |= options.retain_as_published;
        entry.2.extend(options.id);
    }
    let (qos, retain_as_published, subscription_ids) = found?;
    Some(Delivery {
        qos: qos.min(message.qos),
        retain: message.retain && retain_as_published,
        subscription_ids,
        from_log: true,
        message,
    })
}
