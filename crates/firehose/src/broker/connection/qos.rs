//! The QoS 1 and 2 rules of a connection as decisions without I/O (state in, decision out),
//! so that each is unit-tested deterministically; the connection's other files apply them to
//! the session and the write queue.
//! - Outgoing messages: the inflight window ([`may_send`]), the first stage of a delivery
//!   ([`first_stage`]), what an acknowledgement from the client does ([`completes`],
//!   [`on_pubrec`]) and what a durable save or a resume settles ([`settled`],
//!   [`released_by_save`]).
//! - Incoming publishes: the QoS 2 duplicate check and Receive Maximum ([`qos2_arrival`]), the
//!   PUBCOMP for a PUBREL ([`pubcomp_reason`]) and the acknowledgement once the log answered
//!   ([`logged_ack`]).
//!
//! Depends on the session's stage of a message ([`Stage`]) and the codec's QoS and reason
//! codes only.

use std::collections::HashSet;
use std::ops::Deref;

use firehose_codec::{QoS, ReasonCode};

use crate::broker::session::{SessionState, Stage};

/// What the inflight window holds at one step of draining a session's queue.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    /// Most unacknowledged QoS 1/2 deliveries at once (the client's Receive Maximum, capped
    /// by `limits.max_inflight`).
    pub(super) max: u16,
    /// QoS 1/2 deliveries sent (or recorded) and not yet acknowledged.
    pub(super) inflight: usize,
    /// QoS 2 deliveries recorded and waiting for their save before they are sent.
    pub(super) unsaved_publishes: u32,
    /// Whether this drain recorded such a delivery already: its save follows the drain.
    pub(super) saving: bool,
    /// Whether the session outlives the connection (its expiry is not 0).
    pub(super) persistent: bool,
}

/// Whether the delivery at the front of the queue (of `qos`, read from the log or not) may
/// leave now. Nothing overtakes a QoS 2 message waiting for its record to be durable, except
/// the QoS 2 messages recorded by the same drain (they are saved together); QoS 1/2 needs room
/// in the window, QoS 0 does not.
#[inline]
pub(super) fn may_send(qos: QoS, from_log: bool, window: Window) -> bool {
    let qos2_run = qos == QoS::ExactlyOnce && from_log && window.persistent;
    if window.unsaved_publishes > 0 && !(window.saving && qos2_run) {
        return false;
    }
    !(qos != QoS::AtMostOnce && window.inflight >= usize::from(window.max))
}

/// The stage a QoS 1/2 delivery starts at once it has a packet id. A QoS 2 message from the
/// log to a persistent session is recorded before it is sent (`PublishUnsaved` until the save
/// `ticket` is durable), so that after a crash it is resent with the same packet id instead of
/// as a new message; the others leave at once and wait for PUBACK or PUBREC.
#[inline]
pub(super) fn first_stage(qos: QoS, from_log: bool, persistent: bool, ticket: u64) -> Stage {
    match qos {
        QoS::ExactlyOnce if from_log && persistent => Stage::PublishUnsaved { ticket },
        QoS::AtLeastOnce => Stage::AwaitPubAck,
        _ => Stage::AwaitPubRec,
    }
}

/// An acknowledgement from the client that ends an outgoing message's handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Completion {
    /// PUBACK, for QoS 1.
    PubAck,
    /// PUBCOMP, the last packet of QoS 2.
    PubComp,
}

/// Whether `ack` completes the outgoing message at `stage`, which is then forgotten: a PUBACK
/// only a QoS 1 message, a PUBCOMP only a released QoS 2 message. Any other leaves it as it is.
#[inline]
pub(super) fn completes(ack: Completion, stage: Stage) -> bool {
    match ack {
        Completion::PubAck => stage == Stage::AwaitPubAck,
        Completion::PubComp => stage == Stage::AwaitPubComp,
    }
}

/// What a PUBREC from the client does to the outgoing QoS 2 message it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PubRecAction {
    /// The client refused the message (an error reason): it is forgotten, no PUBREL.
    Forget,
    /// PUBREL leaves once the store knows the client has the message: the stage becomes
    /// `ReleaseUnsaved` and the session is saved.
    SaveThenRelease,
    /// PUBREL now; the stage becomes `AwaitPubComp`.
    Release,
    /// A repeated PUBREC while the release waits for its save: nothing more.
    Ignore,
    /// A repeated PUBREC after PUBREL left: PUBREL again.
    ReleaseAgain,
    /// No message waits for this PUBREC: PUBREL with "packet identifier not found".
    Unknown,
}

impl PubRecAction {
    /// The reason of the PUBREL to send now, if any.
    pub(super) fn pubrel(self) -> Option<ReasonCode> {
        match self {
            PubRecAction::Release | PubRecAction::ReleaseAgain => Some(ReasonCode::Success),
            PubRecAction::Unknown => Some(ReasonCode::PacketIdentifierNotFound),
            PubRecAction::Forget | PubRecAction::SaveThenRelease | PubRecAction::Ignore => None,
        }
    }
}

/// What a PUBREC (`refused`: with an error reason) does to the outgoing message it names:
/// `found` is that message's stage and whether it was read from the log, `None` when no
/// message has its packet id; `persistent` says whether the session outlives the connection.
pub(super) fn on_pubrec(
    found: Option<(Stage, bool)>,
    refused: bool,
    persistent: bool,
) -> PubRecAction {
    match found {
        Some((Stage::AwaitPubRec, _)) if refused => PubRecAction::Forget,
        Some((Stage::AwaitPubRec, from_log)) if persistent && from_log => {
            PubRecAction::SaveThenRelease
        }
        Some((Stage::AwaitPubRec, _)) => PubRecAction::Release,
        Some((Stage::ReleaseUnsaved { .. }, _)) => PubRecAction::Ignore,
        Some((Stage::AwaitPubComp, _)) => PubRecAction::ReleaseAgain,
        _ => PubRecAction::Unknown,
    }
}

/// The stage an outgoing message at an unsaved `stage` takes once its packet leaves: after the
/// save that records it, or at a resume (a previous connection's unsaved stages were either
/// saved by then or lost with it, and the message is resent as if they had been). `None` for a
/// stage that is already settled.
pub(super) fn settled(stage: Stage) -> Option<Stage> {
    match stage {
        Stage::PublishUnsaved { .. } => Some(Stage::AwaitPubRec),
        Stage::ReleaseUnsaved { .. } => Some(Stage::AwaitPubComp),
        Stage::AwaitPubAck | Stage::AwaitPubRec | Stage::AwaitPubComp => None,
    }
}

/// Whether the packet of an outgoing message at `stage` waited for a save that the durable
/// save `ticket` covers (saves are numbered in order).
pub(super) fn released_by_save(stage: Stage, ticket: u64) -> bool {
    match stage {
        Stage::PublishUnsaved { ticket: t } | Stage::ReleaseUnsaved { ticket: t } => t <= ticket,
        _ => false,
    }
}

/// What an incoming QoS 2 PUBLISH is, by its packet id ([`qos2_arrival`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Qos2Arrival {
    /// A resend of a publish the log has not committed yet: its PUBREC follows when the first
    /// copy is durable.
    Uncommitted,
    /// A resend of a publish stored and not yet released: PUBREC again, not stored twice.
    Unreleased,
    /// A new publish beyond Receive Maximum unreleased ones: the connection ends (0x93).
    OverReceiveMaximum,
    /// A new publish.
    New,
}

/// What the incoming QoS 2 PUBLISH with packet id `id` is. `uncommitted` are this connection's
/// QoS 2 packet ids handed to the log and not yet committed (`None` while it has none);
/// `session` gives the session's state, whose `incoming_qos2` ids were stored and not yet
/// released. It is called (the session locked) only when the id is not uncommitted.
pub(super) fn qos2_arrival<G: Deref<Target = SessionState>>(
    id: u16,
    uncommitted: Option<&HashSet<u16>>,
    receive_maximum: u16,
    session: impl FnOnce() -> G,
) -> Qos2Arrival {
    if uncommitted.is_some_and(|ids| ids.contains(&id)) {
        return Qos2Arrival::Uncommitted;
    }
    let state = session();
    if state.incoming_qos2.contains(&id) {
        return Qos2Arrival::Unreleased;
    }
    let unreleased = state.incoming_qos2.len() + uncommitted.map_or(0, HashSet::len);
    if unreleased >= usize::from(receive_maximum) {
        Qos2Arrival::OverReceiveMaximum
    } else {
        Qos2Arrival::New
    }
}

/// The PUBCOMP reason for a PUBREL: whether its packet id was waiting for release.
pub(super) fn pubcomp_reason(released: bool) -> ReasonCode {
    if released {
        ReasonCode::Success
    } else {
        ReasonCode::PacketIdentifierNotFound
    }
}

/// How a QoS 1/2 publish is acknowledged once the log answered ([`logged_ack`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LoggedAck {
    /// PUBACK with this reason (QoS 1).
    PubAck(ReasonCode),
    /// PUBREC with this reason (QoS 2); on success the packet id waits for PUBREL.
    PubRec(ReasonCode),
    /// No acknowledgement: the connection closes, so that the client publishes again.
    Close,
}

/// How a publish of `qos` is acknowledged once the log `stored` it or failed to. MQTT 3.1.1
/// has no negative acknowledgement: a publish the log could not store closes the connection.
pub(super) fn logged_ack(qos: QoS, stored: bool, v5: bool) -> LoggedAck {
    let reason = if stored {
        ReasonCode::Success
    } else if v5 {
        ReasonCode::UnspecifiedError
    } else {
        return LoggedAck::Close;
    };
    if qos == QoS::ExactlyOnce {
        LoggedAck::PubRec(reason)
    } else {
        LoggedAck::PubAck(reason)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use firehose_codec::Protocol;

    use super::*;
    use crate::broker::session::Session;

    fn window() -> Window {
        Window {
            max: 2,
            inflight: 0,
            unsaved_publishes: 0,
            saving: false,
            persistent: true,
        }
    }

    #[test]
    fn the_window_holds_back_qos_1_and_2_when_full_but_never_qos_0() {
        let full = Window {
            inflight: 2,
            ..window()
        };
        assert!(may_send(QoS::AtLeastOnce, true, window()));
        assert!(!may_send(QoS::AtLeastOnce, true, full));
        assert!(!may_send(QoS::ExactlyOnce, false, full));
        assert!(may_send(QoS::AtMostOnce, true, full));
    }

    #[test]
    fn nothing_overtakes_a_qos_2_message_waiting_for_its_save_but_its_own_run() {
        let waiting = Window {
            unsaved_publishes: 1,
            ..window()
        };
        assert!(
            !may_send(QoS::AtMostOnce, false, waiting),
            "QoS 0 waits too: order is kept"
        );
        assert!(
            !may_send(QoS::ExactlyOnce, true, waiting),
            "recorded by an earlier drain: wait for its save"
        );
        let same_drain = Window {
            saving: true,
            ..waiting
        };
        assert!(may_send(QoS::ExactlyOnce, true, same_drain));
        assert!(!may_send(QoS::AtLeastOnce, true, same_drain));
        assert!(
            !may_send(QoS::ExactlyOnce, false, same_drain),
            "a live QoS 2 message is not recorded first: it waits"
        );
    }

    #[test]
    fn only_logged_qos_2_to_a_persistent_session_is_recorded_before_it_is_sent() {
        assert_eq!(
            first_stage(QoS::ExactlyOnce, true, true, 7),
            Stage::PublishUnsaved { ticket: 7 }
        );
        assert_eq!(
            first_stage(QoS::ExactlyOnce, false, true, 7),
            Stage::AwaitPubRec
        );
        assert_eq!(
            first_stage(QoS::ExactlyOnce, true, false, 7),
            Stage::AwaitPubRec
        );
        assert_eq!(
            first_stage(QoS::AtLeastOnce, true, true, 7),
            Stage::AwaitPubAck
        );
    }

    #[test]
    fn an_acknowledgement_completes_only_the_stage_that_waits_for_it() {
        assert!(completes(Completion::PubAck, Stage::AwaitPubAck));
        assert!(!completes(Completion::PubAck, Stage::AwaitPubRec));
        assert!(!completes(Completion::PubAck, Stage::AwaitPubComp));
        assert!(completes(Completion::PubComp, Stage::AwaitPubComp));
        assert!(!completes(Completion::PubComp, Stage::AwaitPubRec));
        assert!(!completes(
            Completion::PubComp,
            Stage::ReleaseUnsaved { ticket: 1 }
        ));
    }

    #[test]
    fn pubrec_releases_forgets_or_waits_for_the_save_by_stage() {
        let rec = |stage, from_log, refused, persistent| {
            let action = on_pubrec(Some((stage, from_log)), refused, persistent);
            (action, action.pubrel())
        };
        assert_eq!(
            rec(Stage::AwaitPubRec, true, false, false),
            (PubRecAction::Release, Some(ReasonCode::Success))
        );
        assert_eq!(
            rec(Stage::AwaitPubRec, true, false, true),
            (PubRecAction::SaveThenRelease, None),
            "a logged message to a persistent session: the store learns first"
        );
        assert_eq!(
            rec(Stage::AwaitPubRec, false, false, true),
            (PubRecAction::Release, Some(ReasonCode::Success)),
            "a live message is not in the stored session"
        );
        assert_eq!(
            rec(Stage::AwaitPubRec, true, true, true),
            (PubRecAction::Forget, None)
        );
        assert_eq!(
            rec(Stage::ReleaseUnsaved { ticket: 3 }, true, false, true),
            (PubRecAction::Ignore, None)
        );
        assert_eq!(
            rec(Stage::AwaitPubComp, true, false, true),
            (PubRecAction::ReleaseAgain, Some(ReasonCode::Success))
        );
        for found in [None, Some((Stage::AwaitPubAck, true))] {
            let action = on_pubrec(found, false, true);
            assert_eq!(action, PubRecAction::Unknown);
            assert_eq!(action.pubrel(), Some(ReasonCode::PacketIdentifierNotFound));
        }
    }

    #[test]
    fn a_save_or_a_resume_settles_unsaved_stages_only() {
        assert_eq!(
            settled(Stage::PublishUnsaved { ticket: 1 }),
            Some(Stage::AwaitPubRec)
        );
        assert_eq!(
            settled(Stage::ReleaseUnsaved { ticket: 1 }),
            Some(Stage::AwaitPubComp)
        );
        assert_eq!(settled(Stage::AwaitPubRec), None);
        assert!(released_by_save(Stage::PublishUnsaved { ticket: 4 }, 4));
        assert!(released_by_save(Stage::ReleaseUnsaved { ticket: 3 }, 4));
        assert!(
            !released_by_save(Stage::PublishUnsaved { ticket: 5 }, 4),
            "a later save has not happened yet"
        );
        assert!(!released_by_save(Stage::AwaitPubRec, 4));
    }

    fn session() -> Session {
        Session::new(Arc::from("c"), Protocol::V5, 0, 10, 0)
    }

    #[test]
    fn a_qos_2_resend_is_never_stored_twice() {
        let session = session();
        session.lock().incoming_qos2.insert(5);
        let uncommitted: HashSet<u16> = [6].into_iter().collect();
        let arrival = |id| qos2_arrival(id, Some(&uncommitted), 10, || session.lock());
        assert_eq!(arrival(5), Qos2Arrival::Unreleased);
        assert_eq!(arrival(6), Qos2Arrival::Uncommitted);
        assert_eq!(arrival(7), Qos2Arrival::New);
        assert_eq!(
            qos2_arrival(
                6,
                Some(&uncommitted),
                10,
                || -> std::sync::MutexGuard<'_, SessionState> {
                    panic!("an uncommitted id needs no session lock")
                }
            ),
            Qos2Arrival::Uncommitted
        );
    }

    #[test]
    fn unreleased_and_uncommitted_qos_2_publishes_count_against_receive_maximum() {
        let session = session();
        session.lock().incoming_qos2.insert(1);
        let uncommitted: HashSet<u16> = [2].into_iter().collect();
        assert_eq!(
            qos2_arrival(3, Some(&uncommitted), 3, || session.lock()),
            Qos2Arrival::New
        );
        assert_eq!(
            qos2_arrival(3, Some(&uncommitted), 2, || session.lock()),
            Qos2Arrival::OverReceiveMaximum
        );
        assert_eq!(
            qos2_arrival(3, None, 2, || session.lock()),
            Qos2Arrival::New
        );
    }

    #[test]
    fn a_pubrel_for_an_unknown_id_is_answered_not_found() {
        assert_eq!(pubcomp_reason(true), ReasonCode::Success);
        assert_eq!(pubcomp_reason(false), ReasonCode::PacketIdentifierNotFound);
    }

    #[test]
    fn a_publish_the_log_could_not_store_is_refused_in_v5_and_closes_v3() {
        use LoggedAck::{Close, PubAck, PubRec};
        use ReasonCode::{Success, UnspecifiedError};
        assert_eq!(logged_ack(QoS::AtLeastOnce, true, false), PubAck(Success));
        assert_eq!(logged_ack(QoS::ExactlyOnce, true, true), PubRec(Success));
        assert_eq!(
            logged_ack(QoS::ExactlyOnce, false, true),
            PubRec(UnspecifiedError)
        );
        assert_eq!(
            logged_ack(QoS::AtLeastOnce, false, true),
            PubAck(UnspecifiedError)
        );
        assert_eq!(logged_ack(QoS::ExactlyOnce, false, false), Close, "3.1.1");
    }
}
