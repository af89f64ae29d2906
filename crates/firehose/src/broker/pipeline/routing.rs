//! Step 5 of the publish pipeline: routing committed events to the sessions that want them,
//! in log order.
//!
//! The log's writer thread hands every committed group over through a channel. Two kinds of
//! task route from it, one at a time (a lock over the channel and what was taken from it):
//! - the routing task ([`run`]), which waits on the channel and routes bursts
//!   [`ROUTE_BATCH`] at a time;
//! - any connection that, at the start of its turn, finds a few events committed and not yet
//!   routed ([`Shared::route_waiting`]).
//!
//! Why connections help: a fan-out wakes every subscriber's connection task, and Tokio runs
//! them in the order they were woken, most of them through its shared injection queue. The
//! routing task, woken by the writer thread for the next event, joins the end of that queue.
//! When a fan-out took longer than the time to the next message (1000 subscribers at 100
//! messages a second, on a busy core), the next one was routed only after every connection
//! had written the one before, and every connection then wrote it alone: each fan-out took as
//! long as the last, and the delay piled up. Routed by the next connection to run, a new event
//! joins the queues of the connections that have not written the previous one yet, and they
//! write both in one `writev`.

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};
use std::task::{ready, Context, Poll};

use tokio::sync::mpsc;

use super::log::{Committed, CommittedGroup};
use crate::broker::message::Message;
use crate::broker::shared::Shared;

/// Most committed events routed before the routing task yields, so that the connections it
/// woke write their queues before more is put in them: without the yield, a burst filled
/// every subscriber's queue and the broker dropped QoS 0 messages.
const ROUTE_BATCH: usize = 256;

/// Most committed events waiting for which a connection routes them at the start of its turn.
/// More is a burst, left to the routing task, which paces it with its yields (see
/// [`ROUTE_BATCH`]).
const ROUTED_BY_A_CONNECTION: usize = 16;

/// Committed events not yet routed, shared by the routing task and the connections.
pub(super) type RoutingQueue = Arc<Mutex<Waiting>>;

/// The channel from the log's writer thread, and what was taken from it and not yet routed.
pub(super) struct Waiting {
    /// Committed groups, in log order.
    committed: mpsc::UnboundedReceiver<CommittedGroup>,
    /// Numbered events taken from the channel, in log order.
    queued: VecDeque<Committed>,
    /// The events being routed; kept for its allocation.
    batch: Vec<Committed>,
}

impl fmt::Debug for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiting")
            .field("queued", &self.queued.len())
            .finish_non_exhaustive()
    }
}

/// The routing queue fed by the channel whose sending end the log's writer uses.
pub(super) fn queue(committed: mpsc::UnboundedReceiver<CommittedGroup>) -> RoutingQueue {
    Arc::new(Mutex::new(Waiting {
        committed,
        queued: VecDeque::new(),
        batch: Vec::with_capacity(ROUTE_BATCH),
    }))
}

/// The routing task: routes committed events, in log order, on the runtime.
///
/// Why a task and not the writer thread: fan-out wakes every subscriber's connection task, and
/// a wake from inside the runtime is a push onto the worker's own queue, while a wake from a
/// foreign thread goes through the shared injection queue and unparks a worker, once per
/// subscriber. On a machine with more cores, SQLite commits and fan-out also overlap.
///
/// The task holds the broker weakly, and ends with it: the broker holds the channel's sending
/// end, whose drop wakes the task.
pub(super) async fn run(shared: Weak<Shared>, queue: RoutingQueue) {
    loop {
        let routed = poll_fn(|cx| {
            let Some(mut waiting) = try_lock(&queue) else {
                // A connection on another worker is routing a few events: come back after it
                // rather than block this worker's thread.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            };
            if !ready!(waiting.poll_committed(&shared, cx)) {
                return Poll::Ready(None);
            }
            let Some(shared) = shared.upgrade() else {
                return Poll::Ready(None);
            };
            Poll::Ready(Some(waiting.route(&shared, ROUTE_BATCH)))
        });
        match routed.await {
            None => return,
            // More waiting: let the connections just woken write before the next batch is
            // routed.
            Some(true) => tokio::task::yield_now().await,
            // Nothing waiting: wait on the channel, without a yield, which would put the task
            // behind every connection it woke.
            Some(false) => {}
        }
    }
}

impl Shared {
    /// Routes the events committed and not yet routed, when they are few and no other task is
    /// routing. Connections call it at the start of every turn (see the module's
    /// documentation): it costs them one atomic load when nothing waits.
    #[inline]
    pub(crate) fn route_waiting(&self) {
        let pipeline = self.pipeline();
        let waiting = pipeline.routing_backlog.load(Ordering::Acquire);
        if waiting == 0 || waiting > ROUTED_BY_A_CONNECTION {
            return;
        }
        if let Some(mut queue) = try_lock(&pipeline.routing_queue) {
            queue.route(self, ROUTED_BY_A_CONNECTION);
        }
    }

    /// Id of the logged event being routed (or last routed): a lagging session may return to
    /// live routing once its cursor has reached it, and followers of the log read up to it.
    pub(crate) fn log_position(&self) -> u64 {
        self.pipeline().routing_started.load(Ordering::SeqCst)
    }

    /// Waits until the log holds an event after `id` that has been routed live.
    pub(crate) async fn wait_for_events_after(&self, id: u64) {
        loop {
            let advanced = self.pipeline().log_advanced.notified();
            if self.log_position() > id {
                return;
            }
            advanced.await;
        }
    }

    /// Routes a message that is not logged (`$SYS` statistics): the one way around the log.
    pub(crate) fn route_unlogged(&self, message: Message) {
        self.router().publish(&Arc::new(message), self.stats());
    }
}

/// The routing queue, unless another task is routing. A panic while routing leaves nothing
/// half done that routing the rest would make worse.
fn try_lock(queue: &Mutex<Waiting>) -> Option<MutexGuard<'_, Waiting>> {
    match queue.try_lock() {
        Ok(waiting) => Some(waiting),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

impl Waiting {
    /// Ready with `true` once events are queued, with `false` when the channel closed or the
    /// broker is gone.
    fn poll_committed(&mut self, shared: &Weak<Shared>, cx: &mut Context<'_>) -> Poll<bool> {
        if !self.queued.is_empty() {
            return Poll::Ready(true);
        }
        match self.committed.poll_recv(cx) {
            Poll::Ready(Some(group)) => match shared.upgrade() {
                Some(shared) => {
                    queue_group(&shared, group, &mut self.queued);
                    Poll::Ready(true)
                }
                None => Poll::Ready(false),
            },
            Poll::Ready(None) => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Routes up to `most` events, taking what the channel holds first; returns whether more
    /// are waiting.
    fn route(&mut self, shared: &Shared, most: usize) -> bool {
        while self.queued.len() < most {
            match self.committed.try_recv() {
                Ok(group) => queue_group(shared, group, &mut self.queued),
                Err(_) => break,
            }
        }
        let take = self.queued.len().min(most);
        self.batch.extend(self.queued.drain(..take));
        let pipeline = shared.pipeline();
        // Publishers first: their acknowledgements need not wait for the fan-out.
        for entry in &mut self.batch {
            if entry.message.retain {
                // A publisher told "stored" must find its retained message in place.
                shared.router().retained().set(&entry.message);
            }
            if let Some(done) = entry.done.take() {
                done(Some(entry.message.id));
            }
        }
        // Once per batch: a clock read per message was a measurable part of routing.
        let now = std::time::Instant::now();
        for Committed { message, .. } in self.batch.drain(..) {
            pipeline.routing_started.store(message.id, Ordering::SeqCst);
            let fanout = shared.router().deliver(&message, shared.stats(), now);
            pipeline.routing_backlog.fetch_sub(1, Ordering::AcqRel);
            if fanout.mostly_behind() && shared.limits().pause_publishers {
                shared.slow_publishers();
            }
        }
        if take > 0 {
            pipeline.log_advanced.notify_waiters();
        }
        if self.queued.capacity() > 4 * ROUTE_BATCH && self.queued.len() < ROUTE_BATCH {
            self.queued.shrink_to(ROUTE_BATCH);
        }
        !self.queued.is_empty() || !self.committed.is_empty()
    }
}

/// Numbers a committed group's events and queues them for routing; those it cannot number
/// leave the routing backlog at once.
fn queue_group(shared: &Shared, mut group: CommittedGroup, queued: &mut VecDeque<Committed>) {
    let unnumbered = group.number();
    if unnumbered > 0 {
        shared
            .pipeline()
            .routing_backlog
            .fetch_sub(unnumbered, Ordering::AcqRel);
    }
    queued.extend(group.entries);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::time::{Duration, Instant};

    use firehose_codec::{PublishProperties, QoS};

    use super::*;
    use crate::auth::Users;
    use crate::broker::message::{now_ms, Message};
    use crate::broker::pipeline::{Accepted, Publications};
    use crate::broker::test_broker;
    use crate::config::Limits;

    /// `count` publishes to `t`, each acknowledging by storing its id into `acked`.
    fn publications(count: usize, acked: &Arc<AtomicU64>) -> Publications {
        let mut publications = Publications::default();
        for _ in 0..count {
            let message = Message::new(
                0,
                "t".into(),
                bytes::Bytes::from_static(b"p"),
                QoS::AtLeastOnce,
                false,
                PublishProperties::default(),
                "client".into(),
            );
            let acked = Arc::clone(acked);
            let done: Accepted = Box::new(move |id| {
                acked.fetch_max(id.unwrap_or(0), Ordering::SeqCst);
            });
            publications.push(message, "user".into(), now_ms(), Some(done), None);
        }
        publications
    }

    /// Events committed and not yet routed.
    fn backlog(shared: &Shared) -> usize {
        shared.pipeline().routing_backlog.load(Ordering::Acquire)
    }

    /// Blocks the thread (so the current-thread runtime's routing task cannot run) until the
    /// log's writer has committed `count` events and handed them over for routing.
    fn wait_until_committed(shared: &Shared, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while backlog(shared) < count {
            assert!(Instant::now() < deadline, "the log commits in time");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Lets the runtime's other tasks run until `done` holds; fails after 10 s, saying `what`.
    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn a_connection_routes_a_few_committed_events_before_the_routing_task_runs() {
        let (broker, _dir) = test_broker(Limits::default(), Users::none());
        let shared = &broker.shared;
        let acked = Arc::new(AtomicU64::new(0));
        shared.accept_all(publications(2, &acked));
        wait_until_committed(shared, 2);
        assert_eq!(acked.load(Ordering::SeqCst), 0, "nothing routed yet");

        shared.route_waiting();
        assert_eq!(acked.load(Ordering::SeqCst), 2, "both routed, in order");
        assert_eq!(backlog(shared), 0);
        assert_eq!(shared.pipeline().routing_started.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_burst_is_left_to_the_routing_task() {
        let (broker, _dir) = test_broker(Limits::default(), Users::none());
        let shared = &broker.shared;
        let acked = Arc::new(AtomicU64::new(0));
        let burst = ROUTED_BY_A_CONNECTION + 1;
        shared.accept_all(publications(burst, &acked));
        wait_until_committed(shared, burst);

        shared.route_waiting();
        assert_eq!(
            acked.load(Ordering::SeqCst),
            0,
            "a connection leaves a burst"
        );
        assert_eq!(backlog(shared), burst);

        eventually("the routing task routes the burst", || backlog(shared) == 0).await;
        assert_eq!(acked.load(Ordering::SeqCst), burst as u64);
    }

    // The lock is held across the sleep on purpose: it stands for another worker routing.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn the_routing_task_waits_for_another_router_without_blocking_its_thread() {
        let (broker, _dir) = test_broker(Limits::default(), Users::none());
        let shared = &broker.shared;
        let acked = Arc::new(AtomicU64::new(0));
        let burst = ROUTED_BY_A_CONNECTION + 1;
        // Another task routing: on this current-thread runtime, a routing task that blocked on
        // the lock would stop the runtime, and the sleep below would never end.
        let held = try_lock(&shared.pipeline().routing_queue).expect("nobody routes yet");
        shared.accept_all(publications(burst, &acked));
        wait_until_committed(shared, burst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            acked.load(Ordering::SeqCst),
            0,
            "nothing routed past the lock"
        );
        drop(held);

        eventually("the routing task routes once it may", || {
            backlog(shared) == 0
        })
        .await;
        assert_eq!(acked.load(Ordering::SeqCst), burst as u64);
    }

    #[tokio::test]
    async fn the_routing_task_ends_with_the_broker() {
        let (broker, _dir) = test_broker(Limits::default(), Users::none());
        let queue = Arc::clone(&broker.shared.pipeline().routing_queue);
        tokio::task::yield_now().await; // the task starts waiting on the channel
        assert_eq!(
            Arc::strong_count(&queue),
            3,
            "the broker's, the task's, this one"
        );
        drop(broker);
        eventually("the routing task ends", || Arc::strong_count(&queue) == 1).await;
    }
}
