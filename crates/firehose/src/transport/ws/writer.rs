//! The outbound half of the framing: the broker's bytes out as binary frames, each written
//! with the caller's buffers in one vectored write, the frame header as one more buffer before
//! them. Server frames are not masked, so nothing is copied.
//!
//! # Partial writes
//! A frame's header states its length, so once any byte of a frame is on the socket, the next
//! bytes of the stream must fill exactly that frame. The writer remembers the payload bytes the
//! frame still owes and any header bytes the socket did not take; the next write sends exactly
//! those, then, in the same system call, starts a new frame with whatever the caller offers
//! beyond them. A write reports only payload bytes: one that got only header bytes onto the
//! socket tries again, and answers `Pending` when the socket is full.
//!
//! Control frames (pong, close) are queued and go out only between frames, never inside a
//! half-written one.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;

use super::frame::{self, OpCode, MAX_SERVER_HEADER};

/// Largest payload of one frame written: a frame is written whole or continued before anything
/// else (control frames included) may go, so it is bounded. Far above one write's worth.
pub(super) const MAX_FRAME: usize = 1 << 20;

/// Buffers of one write while the caller gives few (the header takes one of them).
const FEW_SLICES: usize = 128;

/// Buffers of one write at most: Linux's `IOV_MAX`; the system call refuses more.
const MAX_SLICES: usize = 1024;

/// Control frames queued beyond this many bytes are dropped (pongs to a ping flood from a
/// client that does not read); a close frame is always queued.
const MAX_CONTROL_QUEUE: usize = 1024;

/// Writing state between calls.
#[derive(Debug)]
pub(super) struct Writer {
    /// The header of the frame being written.
    head: [u8; MAX_SERVER_HEADER],
    /// Its length.
    head_len: usize,
    /// Its bytes already on the socket.
    head_sent: usize,
    /// Payload bytes the frame being written still owes; 0 between frames.
    owed: usize,
    /// Whole control frames waiting for the next frame boundary.
    control: Vec<u8>,
    /// Bytes of `control` already on the socket.
    control_sent: usize,
    /// A close frame is queued or sent: no data frame may follow it.
    close_queued: bool,
}

impl Writer {
    /// A writer between frames, with nothing queued.
    pub(super) fn new() -> Writer {
        Writer {
            head: [0; MAX_SERVER_HEADER],
            head_len: 0,
            head_sent: 0,
            owed: 0,
            control: Vec::new(),
            control_sent: 0,
            close_queued: false,
        }
    }

    /// Whether the last frame started is complete on the socket.
    pub(super) fn between_frames(&self) -> bool {
        self.owed == 0 && self.head_sent == self.head_len
    }

    /// Whether a close frame is queued or sent.
    pub(super) fn close_queued(&self) -> bool {
        self.close_queued
    }

    /// Queues a pong answering a ping with `payload` (at most 125 bytes).
    pub(super) fn queue_pong(&mut self, payload: &[u8]) {
        if self.close_queued || self.control.len() >= MAX_CONTROL_QUEUE {
            return;
        }
        self.control
            .extend(frame::server_control(OpCode::Pong, payload));
    }

    /// Queues a close frame with `code` and `reason` (nothing after a first one).
    pub(super) fn queue_close(&mut self, code: Option<u16>, reason: &str) {
        if !self.close_queued {
            self.close_queued = true;
            self.control.extend(frame::server_close(code, reason));
        }
    }

    /// Gives up on queued control frames (the connection failed while writing them).
    pub(super) fn drop_control(&mut self) {
        self.control = Vec::new();
        self.control_sent = 0;
    }

    /// Writes queued control frames if the writer is between frames; `Ready` once none waits
    /// (or while a frame is half written, when they must wait for its end).
    ///
    /// # Errors
    /// The socket's error; `WriteZero` if it takes nothing.
    pub(super) fn poll_control<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.between_frames() {
            return Poll::Ready(Ok(()));
        }
        while self.control_sent < self.control.len() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.control[self.control_sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "connection closed while writing a WebSocket control frame",
                )));
            }
            self.control_sent += n;
        }
        if !self.control.is_empty() {
            self.drop_control();
        }
        Poll::Ready(Ok(()))
    }

    /// Writes `bufs` as the payload of binary frames, in one vectored write on `io`; returns
    /// how many payload bytes were written.
    ///
    /// # Errors
    /// The socket's error; `BrokenPipe` after a close frame was queued.
    pub(super) fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // The header and the continuation of a half-written frame take one buffer each.
        if bufs.len() + 2 <= FEW_SLICES {
            self.poll_write_n::<FEW_SLICES, S>(io, cx, bufs)
        } else {
            self.poll_write_n::<MAX_SLICES, S>(io, cx, bufs)
        }
    }

    /// [`Writer::poll_write`] with at most `N` buffers per system call.
    fn poll_write_n<const N: usize, S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if bufs.iter().all(|buf| buf.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        loop {
            if self.between_frames() {
                ready!(self.poll_control(io, cx))?;
                if self.close_queued {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the WebSocket is closing: no data may follow a close frame",
                    )));
                }
            }
            let mut next_head = [0; MAX_SERVER_HEADER];
            let mut slices = Slices::<N>::new();
            let mut source = Source::new(bufs);
            // First what the frame being written still owes: its header's rest, its payload.
            slices.push(&self.head[self.head_sent..self.head_len]);
            let continued = source.take(self.owed, &mut slices);
            // Then a new frame with what is left, unless a control frame waits for this
            // boundary: its header goes in a slot reserved before its payload's.
            let mut next = None;
            if continued == self.owed && self.control.is_empty() {
                if let Some(slot) = slices.reserve() {
                    let len = source.take(MAX_FRAME, &mut slices);
                    if len > 0 {
                        let n = frame::server_header(OpCode::Binary, len, &mut next_head);
                        slices.set(slot, &next_head[..n]);
                        next = Some(len);
                    }
                }
            }
            let written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, slices.filled()))?;
            if written == 0 {
                return Poll::Ready(Ok(0));
            }
            let payload = self.advance(written, next);
            if payload > 0 {
                return Poll::Ready(Ok(payload));
            }
            // Only header bytes went: the caller's bytes are not written yet. Go on (the
            // socket most likely answers `Pending` now).
        }
    }

    /// Accounts for `n` bytes on the socket: the rest of the frame being written first, then
    /// a new frame of `next` payload bytes if the write offered one; returns the payload bytes
    /// among them.
    fn advance(&mut self, mut n: usize, mut next: Option<usize>) -> usize {
        let mut payload = 0;
        loop {
            let head = n.min(self.head_len - self.head_sent);
            self.head_sent += head;
            n -= head;
            let body = n.min(self.owed);
            self.owed -= body;
            n -= body;
            payload += body;
            if n == 0 {
                return payload;
            }
            let Some(len) = next.take() else {
                debug_assert!(false, "the socket took {n} bytes more than it was offered");
                return payload;
            };
            self.head_len = frame::server_header(OpCode::Binary, len, &mut self.head);
            self.head_sent = 0;
            self.owed = len;
        }
    }
}

/// The buffers of one vectored write, on the stack.
struct Slices<'a, const N: usize> {
    /// The buffers; the first `count` are used.
    slices: [IoSlice<'a>; N],
    /// How many are used.
    count: usize,
}

impl<'a, const N: usize> Slices<'a, N> {
    fn new() -> Self {
        Slices {
            slices: [IoSlice::new(&[]); N],
            count: 0,
        }
    }

    /// Adds `bytes` unless it is empty; `false` when full.
    fn push(&mut self, bytes: &'a [u8]) -> bool {
        if bytes.is_empty() {
            return true;
        }
        let Some(slot) = self.slices.get_mut(self.count) else {
            return false;
        };
        *slot = IoSlice::new(bytes);
        self.count += 1;
        true
    }

    /// Reserves a slot to fill later with [`Slices::set`] if at least one more stays free
    /// after it; a reserved slot left empty is harmless.
    fn reserve(&mut self) -> Option<usize> {
        if self.count + 2 > N {
            return None;
        }
        self.count += 1;
        Some(self.count - 1)
    }

    fn set(&mut self, slot: usize, bytes: &'a [u8]) {
        self.slices[slot] = IoSlice::new(bytes);
    }

    fn filled(&self) -> &[IoSlice<'a>] {
        &self.slices[..self.count]
    }
}

/// The caller's bytes not yet put into this write.
struct Source<'a> {
    /// The caller's buffers.
    bufs: &'a [IoSlice<'a>],
    /// The buffer to take from next.
    index: usize,
    /// Bytes of it already taken.
    offset: usize,
}

impl<'a> Source<'a> {
    fn new(bufs: &'a [IoSlice<'a>]) -> Self {
        Source {
            bufs,
            index: 0,
            offset: 0,
        }
    }

    /// Moves up to `limit` bytes into `slices` (fewer when they fill up); returns how many.
    fn take<const N: usize>(&mut self, limit: usize, slices: &mut Slices<'a, N>) -> usize {
        let mut taken = 0;
        while taken < limit {
            let Some(buf) = self.bufs.get(self.index) else {
                break;
            };
            let rest = &buf[self.offset..];
            let n = rest.len().min(limit - taken);
            if !slices.push(&rest[..n]) {
                break;
            }
            taken += n;
            if n == rest.len() {
                self.index += 1;
                self.offset = 0;
            } else {
                self.offset += n;
            }
        }
        taken
    }
}
