//! Saving a persistent session: its cursor when it moved, and every change a client must not
//! lose once told (a SUBACK/UNSUBACK, a QoS 2 PUBLISH or PUBREL of a logged message), which
//! waits until the save is durable ([`Connection::on_saved`]). A save names the filters it
//! changed: the store writes those and the session's state, never its other filters again.
//!
//! Depends on the broker's shared state (`Shared::save_session`), the session and the QoS rules.

use std::sync::Arc;

use firehose_codec::{Packet, ReasonCode};
use tokio::time::timeout;
use tracing::warn;

use super::qos;
use super::{pub_response, ConnEvent, Connection, CLOSE_GRACE};
use crate::broker::message::Delivery;
use crate::broker::outbox::Outbox;
use crate::broker::session::{Inflight, Session, Stage};
use crate::broker::shared::Shared;
use crate::broker::stats;

impl Connection {
    /// Saves a persistent session when its acknowledged cursor moved.
    pub(super) fn save_if_moved(&mut self) {
        let cursor = {
            let state = self.session.lock();
            if state.expiry_interval == 0 {
                return;
            }
            state.acknowledged_cursor()
        };
        if cursor != self.saved_cursor {
            self.saved_cursor = cursor;
            self.shared.save_session(&self.session, true, &[], None);
        }
    }

    /// Whether changes to this session must be durable before the client is told about them.
    pub(super) fn is_persistent(&self) -> bool {
        self.session.lock().expiry_interval > 0
    }

    /// Saves the session; `ConnEvent::Saved(ticket)` arrives once it is durable.
    pub(super) fn request_save(&mut self) -> u64 {
        self.request_save_of(&[])
    }

    /// Saves the session with the filters subscribed, changed or unsubscribed since its last
    /// save (the store writes those, not the others); `ConnEvent::Saved(ticket)` arrives once
    /// it is durable.
    pub(super) fn request_save_of(&mut self, changed: &[String]) -> u64 {
        self.save_ticket += 1;
        let ticket = self.save_ticket;
        let tx = self.events_sender();
        self.shared.save_session(
            &self.session,
            true,
            changed,
            Some(Box::new(move || {
                let _ = tx.send(ConnEvent::Saved(ticket));
            })),
        );
        ticket
    }

    /// The oldest SUBACK/UNSUBACK (with its retained messages) that waited for a save up to
    /// `ticket`, if any.
    fn pop_deferred(&mut self, ticket: u64) -> Option<(Packet, Vec<Delivery>)> {
        let deferred = &mut self.extra.as_mut()?.deferred;
        if deferred.front()?.0 > ticket {
            return None;
        }
        deferred
            .pop_front()
            .map(|(_, ack, retained)| (ack, retained))
    }

    /// Sends what waited for the session save `ticket`: SUBACK/UNSUBACK (and retained messages),
    /// QoS 2 PUBLISH and PUBREL packets.
    pub(super) fn on_saved(&mut self, ticket: u64, outbox: &mut Outbox) {
        while let Some((ack, retained)) = self.pop_deferred(ticket) {
            self.push_or_log(outbox, &ack);
            for delivery in retained {
                self.session.enqueue_direct(delivery, self.shared.stats());
            }
        }
        let ready: Vec<(u16, Inflight)> = self
            .session
            .lock()
            .inflight_in_order()
            .into_iter()
            .filter(|(_, f)| qos::released_by_save(f.stage, ticket))
            .collect();
        let now = std::time::Instant::now();
        for (id, inflight) in ready {
            let settled = qos::settled(inflight.stage);
            match inflight.stage {
                Stage::PublishUnsaved { .. } => {
                    self.unsaved_publishes = self.unsaved_publishes.saturating_sub(1);
                    match self.write_publish(&inflight.delivery, Some(id), false, now, outbox) {
                        Ok(true) => stats::add(&self.shared.stats().messages_sent, 1),
                        Ok(false) => stats::add(&self.shared.stats().dropped_too_large, 1),
                        Err(error) => {
                            warn!(client = ?self.session.client_id, "cannot encode PUBLISH: {error}")
                        }
                    }
                }
                _ => {
                    self.push_or_log(
                        outbox,
                        &pub_response(Packet::PubRel, id, ReasonCode::Success),
                    );
                }
            }
            if let (Some(next), Some(f)) = (settled, self.session.lock().inflight.get_mut(&id)) {
                f.stage = next;
            }
        }
    }
}

/// Saves a session and waits (a bounded time) until the save is durable.
pub(super) async fn save_and_wait(shared: &Shared, session: &Arc<Session>, connected: bool) {
    let (saved_tx, saved_rx) = tokio::sync::oneshot::channel::<()>();
    shared.save_session(
        session,
        connected,
        &[],
        Some(Box::new(move || {
            let _ = saved_tx.send(());
        })),
    );
    if timeout(CLOSE_GRACE, saved_rx).await.is_err() {
        warn!(client = ?session.client_id, "session save not confirmed within {CLOSE_GRACE:?}");
    }
}
