//! MQTT over WebSocket: an upgraded HTTP connection seen as a byte stream, so the broker serves
//! it exactly like a TCP connection.
//!
//! MQTT rides in binary frames, and the frames carry a byte stream: a packet may be split over
//! several frames and one frame may hold several packets (MQTT 3.1.1 §6, MQTT 5 §6). Text
//! frames are a protocol error: reading fails, the broker ends the connection and the close
//! frame says 1003 (unsupported data); other broken frames get 1002, frames over
//! `max_ws_message` 1009. Pings are answered with pongs.
//!
//! # Why the framing is ours
//! A subscriber's writes are the point: the broker hands over up to 1024 shared, already
//! encoded packets (often a quarter of a megabyte) as one vectored write. Through axum's
//! `WebSocket` (tungstenite) they were copied into one message, then copied again into
//! tungstenite's write buffer, then written with a plain `write`. Server frames are not
//! masked, so the payload needs no change: here a write is one `writev` of a 2 to 10 byte
//! frame header followed by the caller's buffers, untouched ([`writer`]). Reads decode frames
//! in the caller's buffer, in place ([`reader`]). The opening handshake is ours too
//! ([`handshake`]), since it hands over the raw connection this framing needs.
//!
//! # Layout
//! - [`handshake`]: the HTTP upgrade request checked, the subprotocol chosen, the 101 answer.
//! - [`frame`]: RFC 6455 headers, masking, close codes; no I/O.
//! - [`reader`]: client frames to the byte stream, in place; no I/O.
//! - [`writer`]: the byte stream to server frames, partial writes, queued control frames.
//! - [`WsStream`]: the two over a connection, as `AsyncRead + AsyncWrite`.
//!
//! Depends on nothing of the broker: only on tokio's I/O traits (and axum's HTTP types in
//! [`handshake`]).

pub mod handshake;

mod frame;
mod reader;
mod writer;

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use frame::FrameError;
use reader::{Control, Cursor, Reader};
use writer::Writer;

/// The most one read asks of the connection: the caller's buffer is zeroed up to this much
/// first (reading in place needs initialized bytes, and this crate has no `unsafe`).
const MAX_READ: usize = 64 * 1024;

/// A WebSocket carrying MQTT, as `AsyncRead + AsyncWrite`, over the upgraded connection `S`.
#[derive(Debug)]
pub struct WsStream<S> {
    /// The upgraded connection.
    io: S,
    /// Inbound frames.
    reader: Reader,
    /// Outbound frames.
    writer: Writer,
    /// The close frame to send when the broker shuts the stream down, set when the client
    /// broke the rules: code and reason.
    close: Option<(u16, String)>,
    /// How reading ended, for the calls after the one that returned the last data.
    read_end: Option<ReadEnd>,
}

/// How reading ended.
#[derive(Debug)]
enum ReadEnd {
    /// Close frame or end of stream: reads return no more data.
    Eof,
    /// An error not yet reported (later reads return the end).
    Failed(io::Error),
}

impl<S> WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Frames over `io`, a connection whose WebSocket handshake is done, refusing data frames
    /// longer than `max_frame` bytes (close code 1009).
    pub fn new(io: S, max_frame: usize) -> WsStream<S> {
        WsStream {
            io,
            reader: Reader::new(max_frame),
            writer: Writer::new(),
            close: None,
            read_end: None,
        }
    }

    /// Decodes `data` (just read) in place; returns how many bytes of stream data it left at
    /// its start, and how reading ends if it does.
    fn decode(&mut self, data: &mut [u8]) -> (usize, Option<ReadEnd>) {
        let mut cursor = Cursor::default();
        loop {
            match self.reader.decode(data, &mut cursor) {
                Ok(None) => return (cursor.data, None),
                Ok(Some(Control::Ping(payload))) => self.writer.queue_pong(&payload),
                Ok(Some(Control::Close(code))) => {
                    // The usual answer echoes the client's code (RFC 6455 §5.5.1).
                    self.writer.queue_close(code, "");
                    return (cursor.data, Some(ReadEnd::Eof));
                }
                Err(error) => return (cursor.data, Some(ReadEnd::Failed(self.refuse(error)))),
            }
        }
    }

    /// Remembers the close frame that answers `error` at shutdown; the error for the broker.
    fn refuse(&mut self, error: FrameError) -> io::Error {
        let reason = match error {
            FrameError::Text => "MQTT over WebSocket needs binary frames".to_string(),
            ref other => other.to_string(),
        };
        self.close = Some((error.close_code(), reason));
        io::Error::new(io::ErrorKind::InvalidData, error)
    }
}

impl<S> AsyncRead for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // A pong or close reply waits for the end of the frame being written; the broker
            // may have nothing to write, so reads send it too.
            if let Poll::Ready(Err(error)) = this.writer.poll_control(&mut this.io, cx) {
                return Poll::Ready(Err(error));
            }
            match this.read_end.take() {
                Some(ReadEnd::Failed(error)) => {
                    this.read_end = Some(ReadEnd::Eof);
                    return Poll::Ready(Err(error));
                }
                Some(ReadEnd::Eof) => {
                    this.read_end = Some(ReadEnd::Eof);
                    return Poll::Ready(Ok(()));
                }
                None => {}
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let want = buf.remaining().min(MAX_READ);
            let mut space = ReadBuf::new(buf.initialize_unfilled_to(want));
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut space))?;
            if space.filled().is_empty() {
                if this.reader.is_mid_frame() {
                    this.read_end = Some(ReadEnd::Failed(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection closed inside a WebSocket frame",
                    )));
                } else {
                    this.read_end = Some(ReadEnd::Eof);
                }
                continue;
            }
            let (data, end) = this.decode(space.filled_mut());
            buf.advance(data);
            if let Some(end) = end {
                this.read_end = Some(end);
            }
            if data > 0 {
                // Answers to the frames just read go out now if they can.
                if let Poll::Ready(Err(error)) = this.writer.poll_control(&mut this.io, cx) {
                    return Poll::Ready(Err(error));
                }
                return Poll::Ready(Ok(()));
            }
            // Only headers and control frames: read on.
        }
    }
}

impl<S> AsyncWrite for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.writer
            .poll_write(&mut this.io, cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.writer.poll_write(&mut this.io, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.writer.poll_control(&mut this.io, cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// Sends the close frame (with the code of the client's offence, if any), then shuts the
    /// connection down. A frame left half written (the broker gave up writing) gets no close
    /// frame: the connection just ends.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.writer.between_frames() {
            if !this.writer.close_queued() {
                match this.close.take() {
                    Some((code, reason)) => this.writer.queue_close(Some(code), &reason),
                    None => this.writer.queue_close(None, ""),
                }
            }
            if ready!(this.writer.poll_control(&mut this.io, cx)).is_err() {
                // The connection is gone, which is what shutdown wants.
                this.writer.drop_control();
            }
        }
        // Errors here mean the connection is gone already, too.
        let _ = ready!(Pin::new(&mut this.io).poll_flush(cx));
        let _ = ready!(Pin::new(&mut this.io).poll_shutdown(cx));
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests;
