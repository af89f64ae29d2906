//! Outbound: what a resumed session left unacknowledged, resent ([`Connection::start`]);
//! queued deliveries moved into the outbox within the inflight window and the write queue's
//! high-water mark ([`Connection::drain`]); one PUBLISH encoded, shared or per delivery
//! ([`Connection::write_publish`]).
//!
//! Depends on the session's queue and inflight state, the QoS rules, the topic aliases and
//! the message's shared encodings.

use bytes::BytesMut;
use firehose_codec::{encode, EncodeError, Packet, QoS, ReasonCode};
use tracing::warn;

use super::aliases::{OutboundAlias, TopicAliases};
use super::qos::{self, Window};
use super::{pub_response, Connection, WRITE_HIGH_WATER};
use crate::broker::message::{Delivery, Variant};
use crate::broker::outbox::Outbox;
use crate::broker::session::Stage;
use crate::broker::stats;

impl Connection {
    /// Resends what the resumed session left unacknowledged, DUP set, in the original order.
    pub(super) fn start(&mut self, outbox: &mut Outbox) {
        let pending = self.session.lock().inflight_in_order();
        let now = std::time::Instant::now();
        for (id, inflight) in pending {
            // A previous connection's unsaved stages were either saved by now or lost with it:
            // resend as if they had been sent.
            let result = match inflight.stage {
                Stage::AwaitPubAck | Stage::AwaitPubRec | Stage::PublishUnsaved { .. } => self
                    .write_publish(&inflight.delivery, Some(id), true, now, outbox)
                    .map(|_| ()),
                Stage::AwaitPubComp | Stage::ReleaseUnsaved { .. } => self.push(
                    outbox,
                    &pub_response(Packet::PubRel, id, ReasonCode::Success),
                ),
            };
            if let Some(stage) = qos::settled(inflight.stage) {
                if let Some(f) = self.session.lock().inflight.get_mut(&id) {
                    f.stage = stage;
                }
            }
            if let Err(error) = result {
                warn!(client = ?self.session.client_id, "cannot resend message {id}: {error}");
            }
        }
    }

    /// Moves queued deliveries into the outbox, within the inflight window and the outbox's
    /// high-water mark.
    pub(super) fn drain(&mut self, outbox: &mut Outbox) {
        let session = self.session.clone();
        let mut state = session.lock();
        if state.queue.is_empty() {
            // Most turns of a publisher's loop: nothing to send, and no clock to read.
            return;
        }
        let now = std::time::Instant::now();
        let mut sent = 0;
        let next_ticket = self.save_ticket + 1;
        let mut save = false;
        let persistent = state.expiry_interval > 0;
        while outbox.pending_bytes() < WRITE_HIGH_WATER {
            let Some(front) = state.queue.front() else {
                break;
            };
            let window = Window {
                max: self.window,
                inflight: state.inflight.len(),
                unsaved_publishes: self.unsaved_publishes,
                saving: save,
                persistent,
            };
            if !qos::may_send(front.qos, front.from_log, window) {
                break;
            }
            let Some(delivery) = state.queue.pop_front() else {
                break;
            };
            state.last_progress = now;
            if delivery.message.is_expired(now) {
                stats::add(&self.shared.stats().dropped_expired, 1);
                continue;
            }
            let id = (delivery.qos != QoS::AtMostOnce).then(|| state.allocate_packet_id());
            let stage = id.map(|_| {
                qos::first_stage(delivery.qos, delivery.from_log, persistent, next_ticket)
            });
            if let (Some(id), Some(stage @ Stage::PublishUnsaved { .. })) = (id, stage) {
                // Recorded before it is sent, so that after a crash it is resent with the same
                // packet id instead of as a new message.
                state.add_inflight(id, delivery, stage);
                self.unsaved_publishes += 1;
                save = true;
                continue;
            }
            match self.write_publish(&delivery, id, false, now, outbox) {
                Ok(true) => {
                    sent += 1;
                    if let (Some(id), Some(stage)) = (id, stage) {
                        state.add_inflight(id, delivery, stage);
                    }
                }
                Ok(false) => stats::add(&self.shared.stats().dropped_too_large, 1),
                Err(error) => {
                    warn!(client = ?self.session.client_id, topic = ?delivery.message.topic,
                        "cannot encode PUBLISH: {error}");
                }
            }
        }
        if state.queue.is_empty() && state.queue.capacity() > 1024 {
            // A burst is over: give its memory back.
            state.queue.shrink_to(64);
        }
        drop(state);
        stats::add(&self.shared.stats().messages_sent, sent);
        if save {
            self.request_save();
        }
    }

    /// Queues one PUBLISH; `Ok(false)` when it exceeds the client's Maximum Packet Size and
    /// was skipped (MQTT 5 section 3.1.2.11.4: as if delivered).
    pub(super) fn write_publish(
        &mut self,
        delivery: &Delivery,
        packet_id: Option<u16>,
        dup: bool,
        now: std::time::Instant,
        outbox: &mut Outbox,
    ) -> Result<bool, EncodeError> {
        let message = &delivery.message;
        let per_delivery = dup
            || (self.is_v5()
                && (!delivery.subscription_ids.is_empty()
                    || message.expires_at.is_some()
                    || self.alias_out_max > 0));
        if !per_delivery {
            let variant = Variant {
                protocol: self.protocol,
                qos: delivery.qos,
                retain: delivery.retain,
            };
            let parts = message.shared_parts(variant)?;
            if self.too_large_for_client(parts.len(packet_id.is_some())) {
                return Ok(false);
            }
            outbox.push_shared(message, variant, packet_id)?;
            return Ok(true);
        }
        let mut publish = message.to_publish(delivery.qos, delivery.retain);
        publish.dup = dup;
        publish.packet_id = packet_id;
        let mut new_alias = None;
        if self.is_v5() {
            publish.properties.subscription_identifiers = delivery.subscription_ids.clone();
            publish.properties.message_expiry_interval = message.remaining_expiry(now);
            if self.alias_out_max > 0 {
                let aliases = self.extra.as_deref().map(|e| &e.aliases);
                match TopicAliases::outbound(aliases, &message.topic, self.alias_out_max) {
                    Some(OutboundAlias::Set(alias)) => {
                        publish.properties.topic_alias = Some(alias);
                        publish.topic.clear();
                    }
                    Some(OutboundAlias::New(alias)) => {
                        publish.properties.topic_alias = Some(alias);
                        new_alias = Some(alias);
                    }
                    None => {}
                }
            }
        }
        let mut buf = BytesMut::new();
        encode(&Packet::Publish(publish), self.protocol, &mut buf)?;
        if self.too_large_for_client(buf.len()) {
            return Ok(false);
        }
        if let Some(alias) = new_alias {
            self.extra().aliases.remember(message.topic.clone(), alias);
        }
        outbox.push(buf.freeze());
        Ok(true)
    }
}
