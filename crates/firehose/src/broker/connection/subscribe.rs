//! SUBSCRIBE and UNSUBSCRIBE: each filter checked (access, depth, quota) and put in the
//! subscription table and the session, the retained messages a new subscription brings, and
//! the SUBACK/UNSUBACK, held for a persistent session until the change is durable.
//!
//! Depends on the broker's shared state (subscription table, retained messages), the
//! subscription options and the session.

use firehose_codec::{
    AckProperties, Packet, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, UnsubAck,
    Unsubscribe,
};
use tracing::debug;

use super::end::End;
use super::Connection;
use crate::broker::message::Delivery;
use crate::broker::outbox::Outbox;
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
        let mut reasons = Vec::with_capacity(subscribe.subscriptions.len());
        let mut retained = Vec::new();
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
            let count = {
                let state = self.session.lock();
                if state.subscriptions.contains_key(&sub.filter) {
                    0
                } else {
                    state.subscriptions.len() as u64
                }
            };
            if count >= limit {
                reasons.push(ReasonCode::QuotaExceeded);
                continue;
            }
            let v5 = self.is_v5();
            let options = SubOptions {
                qos: sub.options.qos,
                no_local: v5 && sub.options.no_local,
                retain_as_published: v5 && sub.options.retain_as_published,
                id: subscribe.subscription_identifier.filter(|_| v5),
            };
            let existed = self.shared.subscribe(&self.session, &sub.filter, options);
            self.session
                .lock()
                .subscriptions
                .insert(sub.filter.clone(), options);
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
        self.acknowledge_change(ack, retained, outbox);
        None
    }

    /// Sends a SUBACK or UNSUBACK (then the retained messages a SUBACK brings). For a
    /// persistent session it waits until the changed session is durable, so that a client told
    /// "subscribed" keeps its subscription across a crash.
    fn acknowledge_change(&mut self, ack: Packet, retained: Vec<Delivery>, outbox: &mut Outbox) {
        if self.is_persistent() {
            let ticket = self.request_save();
            self.extra().deferred.push_back((ticket, ack, retained));
            return;
        }
        self.shared.save_session(&self.session, true, None);
        self.push_or_log(outbox, &ack);
        for delivery in retained {
            self.session.enqueue_direct(delivery, self.shared.stats());
        }
    }

    /// An UNSUBSCRIBE: each filter out of the table and the session.
    pub(super) fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe, outbox: &mut Outbox) {
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        for filter in &unsubscribe.filters {
            let existed = self.shared.unsubscribe(&self.session, filter);
            self.session.lock().subscriptions.remove(filter);
            reasons.push(if existed {
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
        self.acknowledge_change(ack, Vec::new(), outbox);
    }
}
