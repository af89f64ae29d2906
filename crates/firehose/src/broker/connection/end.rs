//! The ends of a connection: every way one ends is an [`End`], which decides the DISCONNECT an
//! MQTT 5 client is owed and whether the will is published; [`Connection::finish`] settles the
//! session (ended now, or kept until its expiry), closes and publishes the will (at once or
//! after its delay).
//!
//! Depends on the broker's shared state (session end and expiry, will acceptance) and the
//! session saves.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use firehose_codec::{DecodeError, Disconnect, DisconnectProperties, Packet, ReasonCode};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tracing::{debug, info};

use super::save::save_and_wait;
use super::{Connection, CLOSE_GRACE};
use crate::broker::message::{now_ms, Message};
use crate::broker::outbox::Outbox;
use crate::broker::shared::Shared;
use crate::broker::stats;

/// How a connection ended.
#[derive(Debug)]
pub(super) enum End {
    /// The client sent DISCONNECT; `with_will` for MQTT 5 reason 0x04.
    Client {
        /// MQTT 5 reason 0x04: publish the will all the same.
        with_will: bool,
    },
    /// The connection broke or the client vanished: the will is published.
    Lost(String),
    /// The client broke the protocol; MQTT 5 clients get DISCONNECT with `reason`.
    Violation {
        /// The DISCONNECT reason code.
        reason: ReasonCode,
        /// What was violated, for the log and the MQTT 5 reason string.
        message: String,
    },
    /// No packet within 1.5 times the keep alive.
    KeepAliveTimeout,
    /// Another connection with the same client id took the session.
    TakenOver,
    /// The broker is shutting down.
    Shutdown,
}

impl End {
    /// A protocol violation: MQTT 5 clients get DISCONNECT with `reason`, and `message`.
    pub(super) fn violation(reason: ReasonCode, message: impl Into<String>) -> End {
        End::Violation {
            reason,
            message: message.into(),
        }
    }

    /// The violation a packet that cannot be decoded is (malformed, too large, protocol).
    pub(super) fn from_decode(error: DecodeError) -> End {
        let reason = match &error {
            DecodeError::Malformed { .. } => ReasonCode::MalformedPacket,
            DecodeError::TooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::Protocol { .. } | DecodeError::UnsupportedProtocol(_) => {
                ReasonCode::ProtocolError
            }
        };
        End::violation(reason, error.to_string())
    }

    /// The DISCONNECT reason owed to an MQTT 5 client, if any.
    fn disconnect_reason(&self) -> Option<ReasonCode> {
        match self {
            End::Client { .. } | End::Lost(_) => None,
            End::Violation { reason, .. } => Some(*reason),
            End::KeepAliveTimeout => Some(ReasonCode::KeepAliveTimeout),
            End::TakenOver => Some(ReasonCode::SessionTakenOver),
            End::Shutdown => Some(ReasonCode::ServerShuttingDown),
        }
    }

    /// Whether the will is published (a DISCONNECT without will is the only end that
    /// drops it; the broker's shutdown is handled by [`Connection::finish`]).
    fn publishes_will(&self) -> bool {
        !matches!(self, End::Client { with_will: false })
    }
}

impl Connection {
    /// Sends what the end owes the client, closes, then settles the will and the session.
    pub(super) async fn finish<W: AsyncWrite + Unpin>(
        self,
        end: End,
        writer: &mut W,
        outbox: &mut Outbox,
    ) {
        let shared = &self.shared;
        // The session first, so that a client reconnecting as soon as it sees the close finds
        // it settled. A takeover leaves it to the new connection.
        let mut expiry = None;
        {
            let mut state = self.session.lock();
            if state.generation == self.generation && !state.ended {
                state.link = None;
                state.lagging = true;
                self.session.set_online(false);
                expiry = Some(state.expiry_interval);
            }
        }
        match expiry {
            Some(0) => {
                shared.end_session(&self.session, self.generation);
            }
            Some(secs) => {
                // Durable before the socket closes: a client that saw the close may rely on
                // the session's disconnect time (its expiry) even if the broker crashes next.
                save_and_wait(shared, &self.session, false).await;
                if secs != u32::MAX {
                    shared.schedule_expiry(self.session.clone(), self.generation, secs.into());
                }
            }
            None => {}
        }

        if let Some(reason) = end.disconnect_reason().filter(|_| self.is_v5()) {
            let reason_string = match &end {
                End::Violation { message, .. } if self.problem_information => Some(message.clone()),
                _ => None,
            };
            let packet = Packet::Disconnect(Disconnect {
                reason,
                properties: DisconnectProperties {
                    reason_string,
                    ..DisconnectProperties::default()
                },
            });
            self.push_or_log(outbox, &packet);
        }
        if let Ok(Ok(())) = timeout(CLOSE_GRACE, outbox.write_all(writer)).await {
            let _ = timeout(CLOSE_GRACE, writer.shutdown()).await;
        }
        shared
            .stats()
            .clients_connected
            .fetch_sub(1, Ordering::Relaxed);
        match &end {
            End::Client { .. } => {
                debug!(client = %self.session.client_id, peer = %self.peer, "client disconnected")
            }
            End::Lost(why) => {
                info!(client = %self.session.client_id, peer = %self.peer, "connection lost: {why}")
            }
            End::Violation { message, reason } => {
                stats::add(&shared.stats().protocol_errors, 1);
                info!(client = %self.session.client_id, peer = %self.peer,
                    "closing connection: {message} (reason 0x{:02X})", reason.as_u8());
            }
            End::KeepAliveTimeout => info!(client = %self.session.client_id, peer = %self.peer,
                "closing connection: keep alive expired"),
            End::TakenOver => info!(client = %self.session.client_id, peer = %self.peer,
                "closing connection: client id taken over by a new connection"),
            End::Shutdown => {
                debug!(client = %self.session.client_id, "closing connection: shutdown")
            }
        }

        if let (Some(will), true) = (
            self.will,
            end.publishes_will() && !matches!(end, End::Shutdown),
        ) {
            let delay = will.delay_interval.unwrap_or(0).min(self.expiry);
            let message = Message::new(
                0,
                will.topic.into(),
                will.payload,
                will.qos,
                will.retain,
                will.properties,
                self.session.client_id.clone(),
            );
            let publisher = self.identity.shared_name();
            if delay == 0 {
                accept_will(shared, message, publisher);
            } else {
                let shared = shared.clone();
                let session = self.session.clone();
                let generation = self.generation;
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(delay.into())).await;
                    let resumed = {
                        let state = session.lock();
                        !state.ended && state.generation != generation
                    };
                    if !resumed {
                        accept_will(&shared, message, publisher);
                    }
                });
            }
        }
    }
}

/// Publishes a will. A retained will beyond the retained quota is not published: its client
/// is gone and cannot be told, so the refusal is logged (and counted).
fn accept_will(shared: &Arc<Shared>, message: Message, publisher: Arc<str>) {
    let (client, topic) = (message.publisher.clone(), message.topic.clone());
    if let Err(full) = shared.accept(message, publisher, now_ms(), None) {
        debug!(%client, %topic, "will not published: {full}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_end() -> [End; 7] {
        [
            End::Client { with_will: false },
            End::Client { with_will: true },
            End::Lost("gone".into()),
            End::violation(ReasonCode::ProtocolError, "bad"),
            End::KeepAliveTimeout,
            End::TakenOver,
            End::Shutdown,
        ]
    }

    #[test]
    fn only_a_normal_disconnect_drops_the_will() {
        let wills: Vec<bool> = every_end().iter().map(End::publishes_will).collect();
        assert_eq!(wills, [false, true, true, true, true, true, true]);
    }

    #[test]
    fn the_broker_owes_a_disconnect_only_for_the_ends_it_decided() {
        let reasons: Vec<Option<ReasonCode>> =
            every_end().iter().map(End::disconnect_reason).collect();
        assert_eq!(
            reasons,
            [
                None,
                None,
                None,
                Some(ReasonCode::ProtocolError),
                Some(ReasonCode::KeepAliveTimeout),
                Some(ReasonCode::SessionTakenOver),
                Some(ReasonCode::ServerShuttingDown),
            ]
        );
    }

    #[test]
    fn a_decode_error_ends_with_the_matching_reason() {
        let end = End::from_decode(DecodeError::TooLarge { size: 10, max: 5 });
        assert_eq!(end.disconnect_reason(), Some(ReasonCode::PacketTooLarge));
    }
}
