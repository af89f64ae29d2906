//! Step 2 of the publish pipeline: the accepted publishes of one read, grouped
//! ([`Publications`]) so that they cost one hand-over to the log, one completion and one
//! hand-off to routing between them.

use std::sync::Arc;

use super::log::Committed;
use crate::broker::message::Message;
use crate::broker::retained::Claim;
use crate::store::NewEvent;

/// Called once an accepted message is durable (with its event id) or could not be stored.
pub(crate) type Accepted = Box<dyn FnOnce(Option<u64>) + Send>;

/// Accepted messages on their way into the log, in order: what the log stores, and what the
/// routing task delivers once they are committed.
///
/// Why a group: a connection hands over the publishes of one read (often dozens) together,
/// and the log takes them as one [`crate::store::Append`] with one completion. Per publish
/// there is then no box, no queue entry, no hand-off to the routing task and no count of the
/// broker's handle of its own.
#[derive(Default)]
pub(crate) struct Publications {
    /// What the log stores, one per message.
    pub(super) events: Vec<NewEvent>,
    /// What the routing task delivers, in the same order.
    pub(super) entries: Vec<Committed>,
}

/// Room made at the first push of a group: a read of a fast publisher brings dozens of
/// publishes (60 to 80 in a fan-in flood), and growing from one would copy them six times.
const PUBLICATIONS_ROOM: usize = 64;

impl Publications {
    /// Adds a message received at `received_ms` (UTC milliseconds, the event's time) from
    /// `publisher`; `done` is told once it is durable, or not stored.
    ///
    /// The message is put in its `Arc` here, on the connection's thread, and numbered in
    /// place once committed (nobody else holds it before it is routed).
    pub(crate) fn push(
        &mut self,
        message: Message,
        publisher: Arc<str>,
        received_ms: i64,
        done: Option<Accepted>,
        claim: Option<Box<Claim>>,
    ) {
        if self.entries.capacity() == 0 {
            self.events.reserve(PUBLICATIONS_ROOM);
            self.entries.reserve(PUBLICATIONS_ROOM);
        }
        self.events
            .push(message.to_new_event(received_ms, publisher));
        self.entries.push(Committed {
            message: Arc::new(message),
            done,
            _claim: claim,
        });
    }

    /// Whether no message was added.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Gives back the room of a group that used less than half of it, before it waits in the
    /// log's queue: a read with one publish would otherwise hold room for
    /// [`PUBLICATIONS_ROOM`] events (13 KiB) there, and the queue holds up to 16,384 groups.
    pub(super) fn fit(&mut self) {
        if self.entries.len() * 2 < self.entries.capacity() {
            self.events.shrink_to_fit();
            self.entries.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use firehose_codec::{PublishProperties, QoS};

    use super::*;

    fn publications(count: usize) -> Publications {
        let mut publications = Publications::default();
        for i in 0..count {
            let message = Message::new(
                0,
                "t".into(),
                bytes::Bytes::from(i.to_string()),
                QoS::AtMostOnce,
                false,
                PublishProperties::default(),
                "client".into(),
            );
            publications.push(message, "user".into(), 1, None, None);
        }
        publications
    }

    #[test]
    fn a_group_waits_for_the_log_without_room_it_does_not_use() {
        let mut one = publications(1);
        assert_eq!(one.entries.capacity(), PUBLICATIONS_ROOM);
        one.fit();
        assert_eq!(
            (one.events.capacity(), one.entries.capacity()),
            (1, 1),
            "a read with one publish holds room for one"
        );
        let mut many = publications(PUBLICATIONS_ROOM / 2 + 1);
        many.fit();
        assert_eq!(
            many.entries.capacity(),
            PUBLICATIONS_ROOM,
            "a group that used more than half keeps its room (no copy)"
        );
        assert_eq!(many.events.len(), PUBLICATIONS_ROOM / 2 + 1);
    }
}
