//! The serve loop and its I/O: one poll per wake of the connection's task
//! ([`Connection::poll_serve`]) that routes what is waiting, drains the session's queue, then
//! waits on everything a connection waits on at once ([`poll_step`], in priority order): the
//! session's signals (takeover, new deliveries), shutdown, writes, the log's answers, catch-up
//! reads, reads from the client and the one timer.
//!
//! Depends on the stream (any `AsyncRead + AsyncWrite`), the session's link, the outbox and
//! the broker's shared state; calls into the other concerns of the connection for each step.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant, Sleep};
use tracing::warn;

use super::catchup::CatchUp;
use super::end::End;
use super::{ConnEvent, Connection, WRITE_HIGH_WATER};
use crate::broker::outbox::Outbox;
use crate::broker::session::{LinkSignal, Session};
use crate::broker::shared::Shared;
use crate::broker::stats;
use crate::store::{Page, StoreError};

/// Read buffer growth step while a packet is incomplete, and the most one read of a connection
/// with an empty read buffer takes.
const READ_CHUNK: usize = 16 * 1024;
/// Free space below which the read buffer of an incomplete packet grows by [`READ_CHUNK`].
const MIN_READ_SPACE: usize = 512;
/// Stop reading from clients while this many accepted messages wait for the log writer or the
/// routing task: four of the writer's largest batches, so it always has a full one waiting,
/// while the messages held in memory stay few.
const MAX_STORE_BACKLOG: usize = 16_384;
/// How often a connected persistent session saves its cursor when it moved.
const SAVE_INTERVAL: Duration = Duration::from_secs(1);

impl Connection {
    /// The connected loop, one call per wake of the task: reads and handles packets, moves
    /// queued deliveries into the outbox and writes them, until the connection ends.
    ///
    /// Why a poll function instead of an async loop over `select!`: every connection spends
    /// most of its life waiting here, and whatever the wait keeps is memory of every idle
    /// connection. Polling the stream, the channel, the catch-up read and the session's link
    /// directly keeps nothing but [`Turns`] and the one timer, both owned by the caller; an
    /// async loop kept a future per branch, or at least a `Notified` per notification. The
    /// order of [`poll_step`] is the priority of the branches.
    pub(super) fn poll_serve<S>(
        &mut self,
        cx: &mut Context<'_>,
        served: &mut Served<S>,
    ) -> Poll<End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Served {
            stream,
            rbuf,
            outbox: outbox_slot,
            turns,
        } = served;
        if std::mem::take(&mut turns.unread) {
            let outbox = outbox_slot.get_or_insert_with(Box::default);
            if let Some(end) = self.process(rbuf, outbox) {
                return Poll::Ready(end);
            }
        }
        loop {
            if turns.paused {
                // Nothing is polled meanwhile; what became ready is found afterwards.
                ready!(turns.poll_timer(cx));
                turns.paused = false;
            }
            // Before draining: an event committed while this task waited its turn joins the
            // queue, to be written with what is already there.
            self.shared.route_waiting();
            let outbox = outbox_slot.get_or_insert_with(Box::default);
            self.drain(outbox);
            if turns.catchup.is_none() {
                turns.catchup = self.start_catchup();
            }
            let store_busy = self.shared.delivery_backlog() >= MAX_STORE_BACKLOG
                || (self.publishes && self.shared.publishers_wait());
            let read_open = outbox.pending_bytes() < WRITE_HIGH_WATER
                && self.pending_acks < u32::from(self.shared.limits().receive_maximum)
                && !store_busy;
            // After everything above that may have made the channel (drain saves sessions).
            if let Some(receiver) = self.extra.as_mut().and_then(|e| e.new_events.take()) {
                turns.events = Some(receiver);
            }
            // One timer serves the keep alive, the periodic save and the pause while the store
            // is busy: each timer is space in every connection's task.
            let deadline = self.keep_alive().map(|ka| turns.last_seen + ka);
            let saves = self.expiry > 0;
            let busy_until = store_busy.then(|| Instant::now() + Duration::from_millis(5));
            let wake_at = [deadline, saves.then_some(turns.next_save), busy_until]
                .into_iter()
                .flatten()
                .min();
            if let Some(at) = wake_at {
                turns.set_timer(at);
            }
            let open = Open {
                read: read_open,
                timer: wake_at.is_some(),
            };
            let signals = Signals {
                session: &self.session,
                generation: self.generation,
                shared: &self.shared,
            };
            let io = Io {
                stream: &mut *stream,
                rbuf: &mut *rbuf,
                outbox: &mut *outbox,
            };
            let Poll::Ready(step) = poll_step(cx, open, signals, io, turns) else {
                if outbox_slot.as_ref().is_some_and(|o| o.is_empty()) {
                    // Caught up and written: the connection waits with no write queue.
                    *outbox_slot = None;
                }
                return Poll::Pending;
            };
            match step {
                Step::Kicked => return Poll::Ready(End::TakenOver),
                Step::ShuttingDown => return Poll::Ready(End::Shutdown),
                Step::Written(Ok(n)) => stats::add(&self.shared.stats().bytes_sent, n as u64),
                Step::Written(Err(error)) => {
                    return Poll::Ready(End::Lost(format!("write failed: {error}")))
                }
                Step::Event(event) => {
                    // All that is there, so that the acknowledgements leave in one write.
                    let mut next = Some(event);
                    while let Some(event) = next {
                        if let Some(end) = self.on_event(event, outbox) {
                            return Poll::Ready(end);
                        }
                        next = turns.events.as_mut().and_then(|rx| rx.try_recv().ok());
                    }
                }
                Step::CaughtUp(page) => {
                    let from = turns.catchup.take().map_or(0, |c| c.from);
                    match page {
                        Ok(Ok(page)) => self.apply_catchup(from, page),
                        Ok(Err(error)) => {
                            warn!(client = ?self.session.client_id, "cannot read the log to catch up: {error}");
                            turns.set_timer(Instant::now() + Duration::from_secs(1));
                            turns.paused = true;
                        }
                        Err(error) => {
                            warn!(client = ?self.session.client_id, "catch-up read failed: {error}")
                        }
                    }
                }
                Step::Read(Ok(0)) => {
                    return Poll::Ready(End::Lost("connection closed without DISCONNECT".into()))
                }
                Step::Read(Ok(n)) => {
                    stats::add(&self.shared.stats().bytes_received, n as u64);
                    turns.last_seen = Instant::now();
                    if let Some(end) = self.process(rbuf, outbox) {
                        return Poll::Ready(end);
                    }
                }
                Step::Read(Err(error)) => {
                    return Poll::Ready(End::Lost(format!("read failed: {error}")))
                }
                // The queue is drained at the top of every turn.
                Step::Woken => {}
                Step::Timer => {
                    let now = Instant::now();
                    if saves && now >= turns.next_save {
                        self.save_if_moved();
                        turns.next_save = now + SAVE_INTERVAL;
                    }
                    if deadline.is_some_and(|deadline| now >= deadline) {
                        return Poll::Ready(End::KeepAliveTimeout);
                    }
                }
            }
        }
    }

    /// Handles what the log's writer (or the routing task) told this connection.
    pub(super) fn on_event(&mut self, event: ConnEvent, outbox: &mut Outbox) -> Option<End> {
        match event {
            ConnEvent::Accepted(done) => self.on_accepted(done, outbox),
            ConnEvent::Saved(ticket) => {
                self.on_saved(ticket, outbox);
                None
            }
        }
    }
}

/// What the serve loop keeps from one turn to the next, besides the connection: all of it
/// stays in the task while the connection is idle, so it is kept small.
pub(super) struct Turns {
    /// When the client last sent something (the keep alive counts from it).
    pub(super) last_seen: Instant,
    /// When a persistent session next saves its cursor if it moved: at once, then every
    /// [`SAVE_INTERVAL`].
    next_save: Instant,
    /// The catch-up read in progress.
    catchup: Option<CatchUp>,
    /// Where the log's events for this connection arrive, once the channel is made.
    events: Option<mpsc::UnboundedReceiver<ConnEvent>>,
    /// The one timer, for the keep alive, the periodic save and the pauses; made when first
    /// needed. Boxed: it is only polled through this box, and a connection without keep alive
    /// or persistent session never needs it.
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer is set and has not fired: its deadline is what it is set to.
    timer_armed: bool,
    /// Reading the log failed: nothing is done until the timer fires.
    paused: bool,
    /// The read buffer holds bytes that came with the CONNECT, not yet decoded: the loop
    /// decodes only after a read, and the client might not send again.
    pub(super) unread: bool,
}

impl Turns {
    /// The state of a loop that has not turned yet.
    pub(super) fn new() -> Turns {
        let now = Instant::now();
        Turns {
            last_seen: now,
            next_save: now,
            catchup: None,
            events: None,
            timer: None,
            timer_armed: false,
            paused: false,
            unread: false,
        }
    }

    /// Sets the timer to `at` unless it is set to it already: a reset takes the timer driver's
    /// lock, and a subscriber turns the loop twice per delivery at low rates.
    pub(super) fn set_timer(&mut self, at: Instant) {
        match &mut self.timer {
            Some(timer) if self.timer_armed && timer.deadline() == at => {}
            Some(timer) => timer.as_mut().reset(at),
            None => self.timer = Some(Box::pin(sleep_until(at))),
        }
        self.timer_armed = true;
    }

    /// Polls the timer; once it fired it stays ready until it is set again.
    pub(super) fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(timer) = self.timer.as_mut() else {
            return Poll::Pending;
        };
        ready!(timer.as_mut().poll(cx));
        self.timer_armed = false;
        Poll::Ready(())
    }
}

/// What the serve loop works on besides the connection, owned by the task.
pub(super) struct Served<S> {
    /// The client's stream, read and written by the one task.
    pub(super) stream: S,
    /// Bytes read and not yet decoded.
    pub(super) rbuf: BytesMut,
    /// Bytes waiting to be written; `None` while the connection waits with nothing to write,
    /// so that an idle connection keeps no write queue.
    pub(super) outbox: Option<Box<Outbox>>,
    /// The loop's own state.
    pub(super) turns: Turns,
}

/// The stream and the buffers on either side of it, for one poll.
struct Io<'a, S> {
    /// The client's stream.
    stream: &'a mut S,
    /// Bytes read and not yet decoded.
    rbuf: &'a mut BytesMut,
    /// Bytes waiting to be written.
    outbox: &'a mut Outbox,
}

/// How the serve loop learns of a takeover, of new deliveries and of shutdown.
struct Signals<'a> {
    /// The connection's session, whose link carries wakes and takeovers.
    session: &'a Session,
    /// The connection's generation: another one in the session's link means a takeover.
    generation: u64,
    /// The broker, whose shutdown flag ([`Shared::is_closing`]) is set before
    /// `Registry::wake_all` wakes every connection.
    shared: &'a Shared,
}

/// Which of the optional branches of one turn of the serve loop may fire.
#[derive(Debug, Clone, Copy)]
struct Open {
    /// Reading is allowed (not held back by the write queue, unacknowledged publishes or a
    /// busy store).
    read: bool,
    /// The timer has a reason to fire.
    timer: bool,
}

/// What ended one wait of the serve loop.
enum Step {
    /// Another connection took the session over.
    Kicked,
    /// The broker is shutting down.
    ShuttingDown,
    /// Part of the outbox was written (or the write failed).
    Written(io::Result<usize>),
    /// The log answered: a publish committed or a session save durable.
    Event(ConnEvent),
    /// A catch-up read of the log finished.
    CaughtUp(Result<Result<Page, StoreError>, tokio::task::JoinError>),
    /// Bytes arrived from the client (0: it closed), or the read failed.
    Read(io::Result<usize>),
    /// The session's queue stopped being empty.
    Woken,
    /// The timer fired (keep alive, periodic save, or the end of a pause).
    Timer,
}

/// Polls everything one turn of the serve loop waits on, in priority order: the first that is
/// ready ends the wait.
fn poll_step<S>(
    cx: &mut Context<'_>,
    open: Open,
    signals: Signals<'_>,
    io: Io<'_, S>,
    turns: &mut Turns,
) -> Poll<Step>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The waker is registered before the shutdown flag is read (see `Registry::wake_all`).
    let signal = signals.session.poll_link(signals.generation, cx);
    if signal == LinkSignal::Kicked {
        return Poll::Ready(Step::Kicked);
    }
    if signals.shared.is_closing() {
        return Poll::Ready(Step::ShuttingDown);
    }
    let Io {
        stream,
        rbuf,
        outbox,
    } = io;
    if !outbox.is_empty() {
        if let Poll::Ready(written) = outbox.poll_write_some(stream, cx) {
            return Poll::Ready(Step::Written(written));
        }
    }
    // A closed channel has nothing more to say (it cannot close while the connection holds
    // its sender); the other branches still wait.
    if let Some(Poll::Ready(Some(event))) = turns.events.as_mut().map(|rx| rx.poll_recv(cx)) {
        return Poll::Ready(Step::Event(event));
    }
    if let Some(catchup) = turns.catchup.as_mut() {
        if let Poll::Ready(page) = Pin::new(&mut catchup.read).poll(cx) {
            return Poll::Ready(Step::CaughtUp(page));
        }
    }
    if open.read {
        if let Poll::Ready(read) = poll_read_some(stream, rbuf, cx) {
            return Poll::Ready(Step::Read(read));
        }
    }
    if signal == LinkSignal::Woken {
        return Poll::Ready(Step::Woken);
    }
    if open.timer && turns.poll_timer(cx).is_ready() {
        return Poll::Ready(Step::Timer);
    }
    Poll::Pending
}

/// Reads what is available into `rbuf`; returns the number of bytes read (0 at end of stream).
///
/// Why not `read_buf` into a buffer kept per connection: tens of thousands of connections wait
/// for their next packet most of the time, and a buffer each would be most of their memory.
/// When `rbuf` is empty (no incomplete packet) the read lands in a buffer on the stack, which
/// exists only while the read is polled, and just the bytes that arrived are copied into `rbuf`;
/// its old capacity is given back first. Only an incomplete packet keeps a buffer between reads.
///
/// A poll function rather than an async fn so that the serve loop keeps no read future (and
/// no split stream) while it waits.
pub(super) fn poll_read_some<R: AsyncRead + Unpin>(
    reader: &mut R,
    rbuf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if !rbuf.is_empty() {
        if rbuf.capacity() - rbuf.len() < MIN_READ_SPACE {
            rbuf.reserve(READ_CHUNK);
        }
        return tokio_util::io::poll_read_buf(Pin::new(reader), cx, rbuf);
    }
    // Even at zero capacity an emptied buffer may still hold the allocation it was split from.
    if rbuf.capacity() > 0 {
        *rbuf = BytesMut::new();
    }
    let mut storage = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut buf = ReadBuf::uninit(&mut storage);
    ready!(Pin::new(reader).poll_read(cx, &mut buf))?;
    rbuf.extend_from_slice(buf.filled());
    Poll::Ready(Ok(buf.filled().len()))
}
