//! SUBSCRIBE and UNSUBSCRIBE: each filter checked (access, depth, the session's count, and
//! for anonymous clients the filter quotas) and put in the subscription table and the session,
//! the retained messages a new subscription brings, and the SUBACK/UNSUBACK, held for a
//! persistent session until the change is durable (the save writes the changed filters only).
//!
//! Depends on the broker's shared state (subscription table, retained messages, anonymous
//! quotas), the subscription options and the session.

use firehose_codec::{
    AckProperties, Packet, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, UnsubAck,
    Unsubscribe,
};
use tracing::debug;

use super::end::End;
use super::Connection;
use crate::broker::message::Delivery;
use crate::broker::outbox::Outbox;
use crate::broker::quota::filter_charge;
use crate::broker::session::Owner;
use crate::broker::subscription::{parse_filter, SubOptions};

impl Connection {
    /// A SUBSCRIBE: a reason per filter (granted QoS or refusal) and the retained messages
    /// of the new subscriptions; a `$share` filter with No Local ends the connection.
    pub(super) fn on_subscribe(
        &mut self,
        subscribe: Subscribe,
        outbox: &mut Outbox,
    ) -> Option<End> {
        let limit = self.shared.limits().max_subscriptions_per_client;
        let owner = Owner::of(&self.identity);
        // What the session's filters are charged so far, for the anonymous quotas: at most
        // `limits.max_anonymous_session_filter_bytes`, so a short walk.
        let mut charged: u64 = if owner.is_anonymous() {
            let state = self.session.lock();
            state.subscriptions.keys().map(|f| filter_charge(f)).sum()
        } else {
            0
        };
        let mut reasons = Vec::with_capacity(subscribe.subscriptions.len());
        let mut retained = Vec::new();
        let mut changed = Vec::with_capacity(subscribe.subscriptions.len());
        for sub in &subscribe.subscriptions {
            let parsed = parse_filter(&sub.filter);
            if self.is_v5() && parsed.group.is_some() && sub.options.no_local {
                return Some(End::violation(
                    ReasonCode::ProtocolError,
                    format!(
                        "SUBSCRIBE: No Local set on shared subscription {:?}",
                        sub.filter
                    ),
                ));
            }
            if !self.identity.may_subscribe(&sub.filter) {
                debug!(client = ?self.session.client_id, filter = ?sub.filter, "SUBSCRIBE refused by the access model");
                reasons.push(ReasonCode::NotAuthorized);
                continue;
            }
            if let Some(levels) = self.shared.limits().topic_too_deep(parsed.filter) {
                debug!(client = ?self.session.client_id, levels,
                    "SUBSCRIBE refused: the filter has more than limits.max_topic_levels levels");
                reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            let (exists, count) = {
                let state = self.session.lock();
                (
                    state.subscriptions.contains_key(&sub.filter),
                    state.subscriptions.len() as u64,
                )
            };
            if !exists && count >= limit {
                reasons.push(ReasonCode::QuotaExceeded);
                continue;
            }
            let reserved = owner.is_anonymous() && !exists;
            if reserved {
                let quotas = self.shared.quotas();
                match quotas.reserve_subscription(self.shared.limits(), charged, &sub.filter) {
                    Ok(charge) => {
                        charged += charge;
                        quotas.subscription_fitted();
                    }
                    Err(full) => {
                        let stats = self.shared.stats();
                        quotas.subscription_refused(
                            stats,
                            full,
                            self.peer,
                            &self.session.client_id,
                        );
                        reasons.push(ReasonCode::QuotaExceeded);
                        continue;
                    }
                }
            }
            let v5 = self.is_v5();
            let options = SubOptions {
                qos: sub.options.qos,
                no_local: v5 && sub.options.no_local,
                retain_as_published: v5 && sub.options.retain_as_published,
                id: subscribe.subscription_identifier.filter(|_| v5),
            };
            let existed = self
                .shared
                .subscribe(&self.session, &owner, &sub.filter, options);
            // The session's list is what counts: another connection of the session (taken
            // over, its last packets still being read) may have added the filter meanwhile.
            let (replaced, ended) = {
                let mut state = self.session.lock();
                let replaced = state
                    .subscriptions
                    .insert(sub.filter.clone(), options)
                    .is_some();
                (replaced, state.ended)
            };
            if ended {
                // A clean start of the client id replaced the session meanwhile and took its
                // filters out of the table: this one goes too, or it would stay there forever.
                self.shared.unsubscribe(&self.session, &owner, &sub.filter);
                if reserved {
                    self.shared.quotas().release_subscriptions(1);
                }
                reasons.push(ReasonCode::UnspecifiedError);
                continue;
            }
            if reserved && replaced {
                self.shared.quotas().release_subscriptions(1);
            }
            changed.push(sub.filter.clone());
            let send_retained = parsed.group.is_none()
                && match sub.options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                for message in self.shared.retained_matching(parsed.filter) {
                    retained.push(Delivery {
                        qos: options.qos.min(message.qos),
                        retain: true,
                        subscription_ids: options.id.into_iter().collect(),
                        from_log: false,
                        message,
                    });
                }
            }
            reasons.push(match options.qos {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
            });
        }
        let ack = Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            reasons,
            properties: AckProperties::default(),
        });
        self.acknowledge_change(ack, retained, &changed, outbox);
        None
    }

    /// Sends a SUBACK or UNSUBACK (then the retained messages a SUBACK brings). For a
    /// persistent session it waits until the `changed` filters are durable, so that a client
    /// told "subscribed" keeps its subscription across a crash.
    fn acknowledge_change(
        &mut self,
        ack: Packet,
        retained: Vec<Delivery>,
        changed: &[String],
        outbox: &mut Outbox,
    ) {
        if self.is_persistent() {
            let ticket = self.request_save_of(changed);
            self.extra().deferred.push_back((ticket, ack, retained));
            return;
        }
        self.shared.save_session(&self.session, true, changed, None);
        self.push_or_log(outbox, &ack);
        for delivery in retained {
            self.session.enqueue_direct(delivery, self.shared.stats());
        }
    }

    /// An UNSUBSCRIBE: each filter out of the table and the session.
    pub(super) fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe, outbox: &mut Outbox) {
        let owner = Owner::of(&self.identity);
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        let mut changed = Vec::new();
        for filter in &unsubscribe.filters {
            let existed = self.shared.unsubscribe(&self.session, &owner, filter);
            let removed = self.session.lock().subscriptions.remove(filter).is_some();
            if removed && owner.is_anonymous() {
                self.shared.quotas().release_subscriptions(1);
            }
            reasons.push(if existed {
                changed.push(filter.clone());
                ReasonCode::Success
            } else {
                ReasonCode::NoSubscriptionExisted
            });
        }
        let ack = Packet::UnsubAck(UnsubAck {
            packet_id: unsubscribe.packet_id,
            reasons,
            properties: AckProperties::default(),
        });
        self.acknowledge_change(ack, Vec::new(), &changed, outbox);
    }
}
