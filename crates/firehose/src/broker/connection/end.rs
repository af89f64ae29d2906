//! The ends of a connection: every way one ends is an [`End`], which decides the DISCONNECT an
//! MQTT 5 client is owed and whether the will is published; [`Connection::finish`] settles the
//! session (ended now, or kept until its expiry), closes and publishes the will (at once or
//! after its delay).
//!
//! A connection the broker ends (a violation, keep alive, takeover, shutdown, a refused
//! CONNECT) is closed gracefully: its last packets written, the write half shut (FIN), then
//! whatever the client still sends read and discarded for a moment ([`DRAIN_TIME`],
//! [`DRAIN_BYTES`]). Closing a socket with unread bytes makes the kernel answer with a reset,
//! which destroys the DISCONNECT (or CONNACK) on its way and greets a client that is still
//! writing with a broken pipe instead of the reason.
//!
//! Depends on the broker's shared state (session end and expiry, will acceptance) and the
//! session saves.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use firehose_codec::{DecodeError, Disconnect, DisconnectProperties, Packet, Protocol, ReasonCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, timeout_at, Instant};
use tracing::{debug, info};

use super::save::save_and_wait;
use super::{Connection, CLOSE_GRACE};
use crate::broker::message::{now_ms, Message};
use crate::broker::outbox::Outbox;
use crate::broker::shared::Shared;
use crate::broker::stats;

/// Longest a closing connection is read after its write half was shut: enough for what a
/// client had in flight to arrive, and short enough that closing connections cannot be used
/// to hold slots (a client that keeps sending is cut off then).
pub(super) const DRAIN_TIME: Duration = Duration::from_secs(2);
/// Most bytes read and discarded from a closing connection: one default-sized packet that the
/// client was still writing, and what it pipelined behind the offending one.
pub(super) const DRAIN_BYTES: usize = 1024 * 1024;

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

    /// Whether the broker decided this end, so the client may still be writing and is owed a
    /// graceful close (the client's own DISCONNECT, or a broken connection, is not).
    fn broker_decided(&self) -> bool {
        !matches!(self, End::Client { .. } | End::Lost(_))
    }
}

/// Answers a CONNECT with `packet` (a refusing CONNACK) and closes gracefully.
pub(super) async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    packet: &Packet,
    protocol: Protocol,
) {
    let mut outbox = Outbox::default();
    if outbox.push_packet(packet, protocol).is_ok() {
        close(stream, &mut outbox, true).await;
    }
}

/// Writes what `outbox` holds and shuts the write half, each within [`CLOSE_GRACE`]; then,
/// when `drain`, reads and discards until the client closes, for at most [`DRAIN_TIME`] and
/// [`DRAIN_BYTES`], so that what was written is not destroyed by a reset.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    outbox: &mut Outbox,
    drain: bool,
) {
    let Ok(Ok(())) = timeout(CLOSE_GRACE, outbox.write_all(stream)).await else {
        return;
    };
    let Ok(Ok(())) = timeout(CLOSE_GRACE, stream.shutdown()).await else {
        return;
    };
    if drain {
        let deadline = Instant::now() + DRAIN_TIME;
        let mut scratch = [0u8; 4096];
        let mut left = DRAIN_BYTES;
        while left > 0 {
            match timeout_at(deadline, stream.read(&mut scratch)).await {
                Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
                // The client closed (0), the connection failed, or time is up.
                _ => break,
            }
        }
    }
}

impl Connection {
    /// Sends what the end owes the client, closes, then settles the will and the session.
    pub(super) async fn finish<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        end: End,
        stream: &mut S,
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
        close(stream, outbox, end.broker_decided()).await;
        shared
            .stats()
            .clients_connected
            .fetch_sub(1, Ordering::Relaxed);
        match &end {
            End::Client { .. } => {
                debug!(client = ?self.session.client_id, peer = %self.peer, "client disconnected")
            }
            End::Lost(why) => {
                info!(client = ?self.session.client_id, peer = %self.peer, "connection lost: {why}")
            }
            End::Violation { message, reason } => {
                stats::add(&shared.stats().protocol_errors, 1);
                info!(client = ?self.session.client_id, peer = %self.peer,
                    "closing connection: {message} (reason 0x{:02X})", reason.as_u8());
            }
            End::KeepAliveTimeout => info!(client = ?self.session.client_id, peer = %self.peer,
                "closing connection: keep alive expired"),
            End::TakenOver => info!(client = ?self.session.client_id, peer = %self.peer,
                "closing connection: client id taken over by a new connection"),
            End::Shutdown => {
                debug!(client = ?self.session.client_id, "closing connection: shutdown")
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
        debug!(?client, ?topic, "will not published: {full}");
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
