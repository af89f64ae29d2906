//! An inbound PUBLISH: its topic (or topic alias), QoS 2 duplicate check and verdict, then
//! either its place in the read's group for the log ([`Connection::on_publish`]) or its
//! refusal; and its PUBACK/PUBREC once the log has it ([`Connection::on_accepted`]).
//!
//! Depends on the topic aliases, the QoS rules and the publish pipeline (verdict, group, log).

use std::sync::Arc;

use firehose_codec::{Packet, PubResponse, Publish, QoS, ReasonCode};
use tracing::debug;

use super::aliases::TopicAliases;
use super::end::End;
use super::inbound::ReadBatch;
use super::qos::{self, LoggedAck, Qos2Arrival};
use super::{pub_response, AcceptedPublish, ConnEvent, Connection};
use crate::broker::message::{now_ms, Message};
use crate::broker::outbox::Outbox;
use crate::broker::pipeline::{publish_verdict, Accepted};
use crate::broker::stats;

impl Connection {
    /// One PUBLISH of a read: accepted into `read`'s group for the log, or refused (and
    /// acknowledged as MQTT 3.1.1 or 5 wants).
    pub(super) fn on_publish(
        &mut self,
        publish: Publish,
        read: &mut ReadBatch,
        outbox: &mut Outbox,
    ) -> Option<End> {
        self.publishes = true;
        let (topic, verdict) = match publish.properties.topic_alias.filter(|_| self.is_v5()) {
            Some(alias) => {
                let max = self.shared.limits().topic_alias_maximum;
                let resolved = match self.extra.as_deref_mut() {
                    Some(extra) => extra.aliases.inbound(alias, &publish.topic, max),
                    // No alias set yet: the state is made only for one that gets set.
                    None => {
                        let mut aliases = TopicAliases::default();
                        let resolved = aliases.inbound(alias, &publish.topic, max);
                        if resolved.is_ok() {
                            self.extra().aliases = aliases;
                        }
                        resolved
                    }
                };
                let topic = match resolved {
                    Ok(topic) => topic,
                    Err(refused) => {
                        return Some(End::violation(refused.reason(), refused.to_string()))
                    }
                };
                let verdict = publish_verdict(self.shared.limits(), &self.identity, &topic);
                (topic, verdict)
            }
            None if publish.topic.is_empty() => {
                return Some(End::violation(
                    ReasonCode::ProtocolError,
                    "PUBLISH: empty topic name without a topic alias",
                ))
            }
            None => self.shared_topic(&publish.topic),
        };
        let id = publish.packet_id.unwrap_or(0);
        if publish.qos == QoS::ExactlyOnce {
            let uncommitted = self.extra.as_ref().map(|e| &e.uncommitted_qos2);
            let receive_maximum = self.shared.limits().receive_maximum;
            match qos::qos2_arrival(id, uncommitted, receive_maximum, || self.session.lock()) {
                // Its PUBREC follows when the first copy is durable.
                Qos2Arrival::Uncommitted => return None,
                Qos2Arrival::Unreleased => {
                    self.push_or_log(
                        outbox,
                        &pub_response(Packet::PubRec, id, ReasonCode::Success),
                    );
                    return None;
                }
                Qos2Arrival::OverReceiveMaximum => {
                    return Some(End::violation(
                        ReasonCode::ReceiveMaximumExceeded,
                        format!("more than {receive_maximum} unreleased QoS 2 publishes"),
                    ))
                }
                Qos2Arrival::New => {}
            }
        }
        let mut reason = verdict;
        if reason == ReasonCode::NotAuthorized {
            stats::add(&self.shared.stats().publish_denied, 1);
            debug!(client = ?self.session.client_id, user = ?self.identity.name(), ?topic,
                "PUBLISH refused by the access model");
        } else if reason == ReasonCode::TopicNameInvalid {
            stats::add(&self.shared.stats().publish_over_limits, 1);
            debug!(client = ?self.session.client_id, user = ?self.identity.name(),
                "PUBLISH refused: its topic has more than limits.max_topic_levels levels");
        } else if self.is_v5()
            && publish.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&publish.payload).is_err()
        {
            reason = ReasonCode::PayloadFormatInvalid;
        }
        let mut claim = None;
        let mut quota_full = None;
        if reason == ReasonCode::Success && publish.retain {
            match self.shared.claim_retained(&topic, publish.payload.len()) {
                Ok(claimed) => claim = claimed,
                Err(full) => {
                    debug!(client = ?self.session.client_id, ?topic, "PUBLISH refused: {full}");
                    quota_full = Some(full);
                    reason = ReasonCode::QuotaExceeded;
                }
            }
        }
        if reason == ReasonCode::Success {
            let message = Message::new(
                0,
                topic,
                publish.payload,
                publish.qos,
                publish.retain,
                publish.properties,
                self.session.client_id.clone(),
            );
            let done: Option<Accepted> = match publish.qos {
                QoS::AtMostOnce => None,
                qos => {
                    self.pending_acks += 1;
                    if qos == QoS::ExactlyOnce {
                        self.extra().uncommitted_qos2.insert(id);
                    }
                    let tx = self.events_sender();
                    Some(Box::new(move |event_id| {
                        let _ = tx.send(ConnEvent::Accepted(AcceptedPublish {
                            packet_id: id,
                            qos,
                            stored: event_id.is_some(),
                        }));
                    }))
                }
            };
            let publisher = self.identity.shared_name();
            let received_ms = *read.received_ms.get_or_insert_with(now_ms);
            read.publications
                .push(message, publisher, received_ms, done, claim);
            return None;
        }
        // Refused. MQTT 3.1.1 has no negative acknowledgement: the message is acknowledged and
        // dropped, as Mosquitto does.
        let ack_reason = if self.is_v5() {
            reason
        } else {
            ReasonCode::Success
        };
        let explain = |kind: fn(PubResponse) -> Packet| {
            let mut packet = pub_response(kind, id, ack_reason);
            if let (Packet::PubAck(r) | Packet::PubRec(r), true) = (
                &mut packet,
                self.problem_information && ack_reason.is_error(),
            ) {
                r.properties.reason_string = Some(match ack_reason {
                    ReasonCode::NotAuthorized => {
                        format!("{} may not publish to {topic}", self.identity.name())
                    }
                    ReasonCode::TopicNameInvalid => format!(
                        "the topic has more than {} levels (limits.max_topic_levels)",
                        self.shared.limits().max_topic_levels
                    ),
                    ReasonCode::QuotaExceeded => {
                        quota_full.map(|full| full.to_string()).unwrap_or_default()
                    }
                    _ => "payload is not valid UTF-8 but its format indicator says so".into(),
                });
            }
            packet
        };
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let ack = explain(Packet::PubAck);
                self.push_or_log(outbox, &ack);
            }
            QoS::ExactlyOnce => {
                if !ack_reason.is_error() {
                    self.session.lock().incoming_qos2.insert(id);
                }
                let rec = explain(Packet::PubRec);
                self.push_or_log(outbox, &rec);
            }
        }
        None
    }

    /// `topic` as a shared string, and its [`publish_verdict`]: the last publish's
    /// when it is the same. A publisher mostly publishes to one topic or a few, and
    /// a copy and an ACL walk per message were an allocation and a trie walk per message.
    fn shared_topic(&mut self, topic: &str) -> (Arc<str>, ReasonCode) {
        if let Some((last, verdict)) = self.extra.as_ref().and_then(|e| e.last_topic.as_ref()) {
            if **last == *topic {
                return (last.clone(), *verdict);
            }
        }
        let shared: Arc<str> = Arc::from(topic);
        let verdict = publish_verdict(self.shared.limits(), &self.identity, topic);
        self.extra().last_topic = Some((shared.clone(), verdict));
        (shared, verdict)
    }

    /// Acknowledges a publish once the log has it.
    pub(super) fn on_accepted(
        &mut self,
        done: AcceptedPublish,
        outbox: &mut Outbox,
    ) -> Option<End> {
        self.pending_acks = self.pending_acks.saturating_sub(1);
        let id = done.packet_id;
        if done.qos == QoS::ExactlyOnce {
            if let Some(extra) = self.extra.as_mut() {
                extra.uncommitted_qos2.remove(&id);
            }
        }
        let (kind, reason): (fn(PubResponse) -> Packet, _) =
            match qos::logged_ack(done.qos, done.stored, self.is_v5()) {
                // 3.1.1 has no negative acknowledgement: close so the client publishes again.
                LoggedAck::Close => {
                    return Some(End::Lost("the event log could not store a publish".into()))
                }
                LoggedAck::PubAck(reason) => (Packet::PubAck, reason),
                LoggedAck::PubRec(reason) => {
                    if reason == ReasonCode::Success {
                        self.session.lock().incoming_qos2.insert(id);
                    }
                    (Packet::PubRec, reason)
                }
            };
        let mut packet = pub_response(kind, id, reason);
        if let (Packet::PubAck(ack) | Packet::PubRec(ack), true) =
            (&mut packet, reason.is_error() && self.problem_information)
        {
            ack.properties.reason_string = Some("the event log could not store it".into());
        }
        self.push_or_log(outbox, &packet);
        None
    }
}
