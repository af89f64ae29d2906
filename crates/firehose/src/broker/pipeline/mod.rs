//! The publish pipeline: what happens to an accepted PUBLISH between the connection (or
//! in-process publisher) that received it and the sessions it is delivered to. Its files read
//! in the order the data flows:
//!
//! 1. [`verdict`]: whether the publisher may write to the topic ([`publish_verdict`]: ACL and
//!    `limits.max_topic_levels`), and room in the retained quota for a retained message
//!    ([`Shared::claim_retained`]). A refused publish stops here.
//! 2. [`group`]: the accepted publishes of one read of a connection travel together as one
//!    [`Publications`] (one event for the log and one entry for routing per message, each
//!    message in its `Arc` already).
//! 3. [`log`], the hand-over: [`Shared::accept_all`] gives the group to the log's writer
//!    thread as one `Append` (one queue entry); the writer commits many groups in one SQLite
//!    transaction.
//! 4. [`log`], the completion: the writer completes each group, in commit (= id) order, by
//!    sending it to routing as one `CommittedGroup` (or by telling its publishers it could
//!    not be stored).
//! 5. [`routing`]: one task at a time, in id order, takes the committed groups, numbers their
//!    messages (first id + position), stores retained messages, tells the publishers (PUBACK,
//!    PUBREC) and fans out through [`super::router::Router::deliver`]. The routing task does
//!    bursts; a connection that finds a few events waiting at the start of its turn routes
//!    them itself ([`Shared::route_waiting`]), so that they join the queues of connections that
//!    have not written the previous message yet.
//!
//! Then what flows back ([`pressure`]): connections stop reading while too many accepted
//! messages wait for the log or routing ([`Shared::delivery_backlog`]), and publishers pause
//! while most subscribers of the last routed message are behind ([`Shared::publishers_wait`]).
//!
//! The pipeline's own state ([`Pipeline`]) sits in the broker's [`Shared`] state; only this
//! module reads its fields. Depends on the router, the retained quota, the store and the
//! counters; connections call into it, it never calls a connection (publishers hear back
//! through the `Accepted` callbacks they hand in).

mod group;
mod log;
mod pressure;
mod routing;
mod verdict;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, Notify};

pub(crate) use group::{Accepted, Publications};
use log::CommittedGroup;
use pressure::NO_PAUSE;
use routing::RoutingQueue;
pub(crate) use verdict::publish_verdict;

use super::shared::Shared;

/// The pipeline's state: what links the log's writer thread, the routing task, the
/// connections that route and the publishers that pause.
#[derive(Debug)]
pub(super) struct Pipeline {
    /// Id of the logged event being routed (or last routed): a lagging session may return to
    /// live routing once its cursor has reached it.
    routing_started: AtomicU64,
    /// Woken after every logged event is routed, for readers that follow the log.
    log_advanced: Notify,
    /// Committed events on their way from the log's writer thread to routing, with what their
    /// publisher is told.
    to_route: mpsc::UnboundedSender<CommittedGroup>,
    /// What was committed and is not yet routed: the receiving end of `to_route`.
    routing_queue: RoutingQueue,
    /// Events sent to routing and not yet routed; counted with the store's backlog when
    /// connections decide whether to keep reading, and read by connections that route a few
    /// waiting events themselves (see `routing`).
    routing_backlog: AtomicUsize,
    /// Until when (milliseconds after `started`) publishing connections are not read, because
    /// most subscribers of a recent message were behind.
    publishers_wait_until: AtomicU64,
    /// The broker's clock origin.
    started: Instant,
    /// Whether the retained quota's refusal was logged since a new retained topic last fit:
    /// a flood of refused messages logs one warning, not one per message.
    retained_full_warned: AtomicBool,
}

impl Pipeline {
    /// An empty pipeline over a log whose newest event is `last_id`.
    pub(super) fn new(last_id: u64) -> Pipeline {
        let (to_route, committed) = mpsc::unbounded_channel();
        Pipeline {
            routing_started: AtomicU64::new(last_id),
            log_advanced: Notify::new(),
            to_route,
            routing_queue: routing::queue(committed),
            routing_backlog: AtomicUsize::new(0),
            publishers_wait_until: AtomicU64::new(NO_PAUSE),
            started: Instant::now(),
            retained_full_warned: AtomicBool::new(false),
        }
    }
}

/// Starts the routing task of `shared`'s pipeline, on the current runtime. It holds the broker
/// weakly and ends with it.
pub(super) fn start(shared: &Arc<Shared>) {
    let queue = Arc::clone(&shared.pipeline().routing_queue);
    tokio::spawn(routing::run(Arc::downgrade(shared), queue));
}
