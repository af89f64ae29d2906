//! Inbound packets: the packets of one read decoded and dispatched ([`Connection::process`],
//! [`Connection::handle`]), with the acknowledgements a client sends for what it was sent
//! (PUBACK, PUBREC, PUBCOMP), PUBREL for what it sent, PINGREQ and DISCONNECT. PUBLISH,
//! SUBSCRIBE and UNSUBSCRIBE have files of their own.
//!
//! Depends on the codec's decoder, the session's QoS state and the QoS rules (`qos`).

use std::collections::hash_map::Entry;

use bytes::BytesMut;
use firehose_codec::{decode, Disconnect, Packet, ReasonCode};

use super::end::End;
use super::qos::{self, Completion, PubRecAction};
use super::{pub_response, Connection};
use crate::broker::outbox::Outbox;
use crate::broker::pipeline::Publications;
use crate::broker::quota::granted_expiry;
use crate::broker::session::Stage;
use crate::broker::stats;

/// What the packets of one read share.
#[derive(Default)]
pub(super) struct ReadBatch {
    /// When the read's bytes were received (UTC milliseconds): one clock read for all its
    /// publishes (a read per publish was a measurable part of the publish path), made at the
    /// first of them (reads without a publish need none).
    pub(super) received_ms: Option<i64>,
    /// Publishes accepted from the read and not yet handed to the log: they go in one send
    /// (a read often brings dozens).
    pub(super) publications: Publications,
}

impl Connection {
    /// Decodes and handles every complete packet in `rbuf`.
    pub(super) fn process(&mut self, rbuf: &mut BytesMut, outbox: &mut Outbox) -> Option<End> {
        let max = self.shared.limits().max_packet_size as usize;
        let mut publishes = 0;
        let mut read = ReadBatch::default();
        let end = loop {
            match decode(rbuf, self.protocol, max) {
                Ok(Some(packet)) => {
                    if matches!(packet, Packet::Publish(_)) {
                        publishes += 1;
                    } else {
                        // Whatever else the packet asks of the log comes after the publishes
                        // before it.
                        self.hand_over(&mut read);
                    }
                    if let Some(end) = self.handle(packet, &mut read, outbox) {
                        break Some(end);
                    }
                }
                Ok(None) => break None,
                Err(error) => break Some(End::from_decode(error)),
            }
        };
        self.hand_over(&mut read);
        stats::add(&self.shared.stats().messages_received, publishes);
        end
    }

    /// Hands the publishes accepted so far in this read to the log, in one send (none when
    /// there are none: `accept_all` sees to that).
    fn hand_over(&self, read: &mut ReadBatch) {
        self.shared
            .accept_all(std::mem::take(&mut read.publications));
    }

    /// Handles one packet of a read; `read` holds what the read's packets share (its time,
    /// the publishes not yet handed to the log).
    fn handle(&mut self, packet: Packet, read: &mut ReadBatch, outbox: &mut Outbox) -> Option<End> {
        match packet {
            Packet::Publish(publish) => {
                return self.on_publish(publish, read, outbox);
            }
            Packet::PubAck(ack) => {
                let mut state = self.session.lock();
                if let Entry::Occupied(entry) = state.inflight.entry(ack.packet_id) {
                    if qos::completes(Completion::PubAck, entry.get().stage) {
                        entry.remove();
                    }
                }
            }
            Packet::PubRec(rec) => {
                let persistent = self.is_persistent();
                let next_ticket = self.save_ticket + 1;
                let mut state = self.session.lock();
                let found = state.inflight.get_mut(&rec.packet_id);
                let action = qos::on_pubrec(
                    found.as_deref().map(|f| (f.stage, f.delivery.from_log)),
                    rec.reason.is_error(),
                    persistent,
                );
                match (action, found) {
                    (PubRecAction::Forget, _) => {
                        state.inflight.remove(&rec.packet_id);
                    }
                    // PUBREL leaves once the store knows the client has the message.
                    (PubRecAction::SaveThenRelease, Some(f)) => {
                        f.stage = Stage::ReleaseUnsaved {
                            ticket: next_ticket,
                        };
                    }
                    (PubRecAction::Release, Some(f)) => f.stage = Stage::AwaitPubComp,
                    _ => {}
                }
                drop(state);
                if action == PubRecAction::SaveThenRelease {
                    self.request_save();
                }
                if let Some(reason) = action.pubrel() {
                    self.push_or_log(outbox, &pub_response(Packet::PubRel, rec.packet_id, reason));
                }
            }
            Packet::PubRel(rel) => {
                let found = self.session.lock().incoming_qos2.remove(&rel.packet_id);
                let reason = qos::pubcomp_reason(found);
                self.push_or_log(
                    outbox,
                    &pub_response(Packet::PubComp, rel.packet_id, reason),
                );
            }
            Packet::PubComp(comp) => {
                let mut state = self.session.lock();
                if state
                    .inflight
                    .get(&comp.packet_id)
                    .is_some_and(|f| qos::completes(Completion::PubComp, f.stage))
                {
                    state.inflight.remove(&comp.packet_id);
                }
            }
            Packet::Subscribe(subscribe) => return self.on_subscribe(subscribe, outbox),
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(unsubscribe, outbox),
            Packet::PingReq => self.push_or_log(outbox, &Packet::PingResp),
            Packet::Disconnect(disconnect) => return Some(self.on_disconnect(disconnect)),
            Packet::Connect(_) => {
                return Some(End::violation(
                    ReasonCode::ProtocolError,
                    "second CONNECT on one connection",
                ))
            }
            Packet::Auth(_) => {
                return Some(End::violation(
                    ReasonCode::ProtocolError,
                    "AUTH without an authentication method in CONNECT",
                ))
            }
            other @ (Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp) => {
                return Some(End::violation(
                    ReasonCode::ProtocolError,
                    format!("{} is sent by servers, not clients", other.name()),
                ))
            }
        }
        None
    }

    /// A client's DISCONNECT: a v5 client may change its session expiry (never from 0).
    fn on_disconnect(&mut self, disconnect: Disconnect) -> End {
        if let Some(expiry) = disconnect
            .properties
            .session_expiry_interval
            .filter(|_| self.is_v5())
        {
            if self.expiry == 0 && expiry != 0 {
                // MQTT 5 section 3.14.2.2.2.
                return End::violation(
                    ReasonCode::ProtocolError,
                    "DISCONNECT: session expiry set after connecting with 0",
                );
            }
            self.expiry = granted_expiry(self.shared.limits(), &self.identity, expiry);
            self.session.lock().expiry_interval = self.expiry;
        }
        End::Client {
            with_will: disconnect.reason == ReasonCode::DisconnectWithWill,
        }
    }
}
