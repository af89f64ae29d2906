//! Steps 3 and 4 of the publish pipeline: the hand-over of a group of accepted publishes to the
//! log ([`Shared::accept_all`], one [`Append`] per group) and its completion: the log's writer
//! thread, once the group is committed, sends it on to routing as a [`CommittedGroup`], or
//! tells each publisher it could not be stored.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::group::{Accepted, Publications};
use crate::broker::message::Message;
use crate::broker::retained::{Claim, QuotaFull};
use crate::broker::shared::Shared;
use crate::broker::stats;
use crate::store::{Append, NewEvent, StoreError};

impl Shared {
    /// Appends an accepted message (after access checks), received at `received_ms` (UTC
    /// milliseconds, the event's time), to the log; once it is durable `done` is told and the
    /// routing task routes it, in log order.
    ///
    /// # Errors
    /// [`QuotaFull`] for a retained message the quota has no room for (counted; `done` is
    /// dropped untold).
    pub(crate) fn accept(
        self: &Arc<Self>,
        message: Message,
        publisher: Arc<str>,
        received_ms: i64,
        done: Option<Accepted>,
    ) -> Result<(), QuotaFull> {
        let claim = if message.retain {
            self.claim_retained(&message.topic, message.payload.len())?
        } else {
            None
        };
        // Room for exactly one: bridges publish one message at a time, at high rates too.
        let mut publications = Publications {
            events: Vec::with_capacity(1),
            entries: Vec::with_capacity(1),
        };
        publications.push(message, publisher, received_ms, done, claim);
        self.accept_all(publications);
        Ok(())
    }

    /// [`Shared::accept`] for several messages at once, in order: the publishes of one read.
    pub(crate) fn accept_all(self: &Arc<Self>, mut publications: Publications) {
        if publications.is_empty() {
            return;
        }
        publications.fit();
        self.store().append_boxed(Box::new(Logged {
            publications,
            shared: Arc::clone(self),
        }));
    }
}

/// [`Publications`] handed to the log.
struct Logged {
    /// The messages.
    publications: Publications,
    /// The broker whose routing task delivers them.
    shared: Arc<Shared>,
}

impl Append for Logged {
    fn events(&self) -> &[NewEvent] {
        &self.publications.events
    }

    fn done(self: Box<Self>, result: Result<u64, StoreError>) {
        let Logged {
            publications: Publications { events, entries },
            shared,
        } = *self;
        drop(events);
        let pipeline = shared.pipeline();
        match result {
            Ok(first_id) => {
                let count = entries.len();
                pipeline.routing_backlog.fetch_add(count, Ordering::AcqRel);
                let group = CommittedGroup { first_id, entries };
                if pipeline.to_route.send(group).is_err() {
                    // Only when the runtime is gone: nobody is left to deliver to or tell.
                    pipeline.routing_backlog.fetch_sub(count, Ordering::AcqRel);
                }
            }
            Err(error) => {
                for Committed { message, done, .. } in entries {
                    tracing::error!(topic = ?message.topic, "cannot store event: {error}");
                    stats::add(&shared.stats().store_errors, 1);
                    if let Some(done) = done {
                        done(None);
                    }
                }
            }
        }
    }
}

/// A committed event for routing.
pub(super) struct Committed {
    /// The event, with its id.
    pub(super) message: Arc<Message>,
    /// Tells the publisher it is stored; run on the runtime by whichever task routes the
    /// event, so that the writer thread wakes the runtime once per batch, not once per
    /// publishing connection.
    pub(super) done: Option<Accepted>,
    /// The room a retained message claimed in the quota, given back when the entry is
    /// dropped: once the message is in place, or when it is not stored. Held, never read.
    pub(super) _claim: Option<Box<Claim>>,
}

/// Committed events for routing: the [`Publications`] of one hand-over.
pub(super) struct CommittedGroup {
    /// The id of the first; the others follow it, one apart.
    pub(super) first_id: u64,
    /// The events, not yet numbered.
    pub(super) entries: Vec<Committed>,
}

impl CommittedGroup {
    /// Gives each message its id, on the runtime, which reads the message next anyway (the
    /// writer thread only passes the group on). Returns how many it could not
    /// number and dropped.
    pub(super) fn number(&mut self) -> usize {
        let before = self.entries.len();
        let mut id = self.first_id;
        self.entries.retain_mut(|entry| {
            let numbered = match Arc::get_mut(&mut entry.message) {
                Some(unrouted) => {
                    unrouted.id = id;
                    true
                }
                None => {
                    // Cannot happen: the group holds the only handle until it is routed.
                    tracing::error!(topic = ?entry.message.topic, "committed event shared before routing");
                    if let Some(done) = entry.done.take() {
                        done(None);
                    }
                    false
                }
            };
            id += 1;
            numbered
        });
        before - self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use firehose_codec::{PublishProperties, QoS};
    use tokio::sync::mpsc;

    use super::*;
    use crate::auth::Users;
    use crate::broker::message::now_ms;
    use crate::broker::test_broker;
    use crate::config::Limits;

    #[tokio::test]
    async fn a_group_is_numbered_in_order_and_acknowledged_with_each_id() {
        let (broker, _dir) = test_broker(Limits::default(), Users::none());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut group = Publications::default();
        for topic in ["a", "b", "c"] {
            let tx = tx.clone();
            let message = Message::new(
                0,
                topic.into(),
                bytes::Bytes::from_static(b"p"),
                QoS::AtLeastOnce,
                false,
                PublishProperties::default(),
                "client".into(),
            );
            let done: Accepted = Box::new(move |id| {
                let _ = tx.send((topic, id));
            });
            group.push(message, "user".into(), now_ms(), Some(done), None);
        }
        broker.shared.accept_all(group);
        let mut acknowledged = Vec::new();
        for _ in 0..3 {
            let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
            acknowledged.push(got.expect("acknowledged in time").expect("open"));
        }
        assert_eq!(
            acknowledged,
            [("a", Some(1)), ("b", Some(2)), ("c", Some(3))]
        );
        let stored: Vec<_> = (1..=3)
            .map(|id| {
                broker
                    .store()
                    .get(id)
                    .expect("read")
                    .map(|e| e.event.topic.to_string())
            })
            .collect();
        assert_eq!(
            stored,
            [Some("a".into()), Some("b".into()), Some("c".into())]
        );
    }
}
