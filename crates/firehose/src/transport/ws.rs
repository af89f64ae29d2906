//! MQTT over WebSocket: an axum [`WebSocket`] seen as a byte stream, so the broker serves it
//! exactly like a TCP connection.
//!
//! MQTT rides in binary frames, and the frames carry a byte stream: a packet may be split over
//! several frames and one frame may hold several packets (MQTT 3.1.1 §6, MQTT 5 §6). Text
//! frames are a protocol error: reading fails, the broker ends the connection and the close
//! frame says 1003 (unsupported data). Ping and pong frames are answered by tungstenite.
//!
//! Writes: everything the broker hands over in one (vectored) write becomes one binary frame,
//! so a batch of packets costs one frame, not one per buffer.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket};
use bytes::{Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A WebSocket carrying MQTT, as `AsyncRead + AsyncWrite`.
#[derive(Debug)]
pub struct WsStream {
    /// The upgraded connection.
    ws: WebSocket,
    /// The rest of the last binary frame, not yet read by the broker.
    pending: Bytes,
    /// A written frame that the sink accepted but has not flushed yet.
    unflushed: bool,
    /// The close code to send when the broker shuts the stream down, set when the client broke
    /// the WebSocket rules of MQTT.
    close_code: Option<u16>,
    /// Reading reached the end (close frame, end of stream or error).
    read_done: bool,
}

fn io_error(error: axum::Error) -> io::Error {
    io::Error::other(error)
}

impl WsStream {
    /// Wraps an upgraded WebSocket.
    pub fn new(ws: WebSocket) -> WsStream {
        WsStream {
            ws,
            pending: Bytes::new(),
            unflushed: false,
            close_code: None,
            read_done: false,
        }
    }

    /// Drives a pending flush; `Ready` once nothing written is held back.
    fn poll_flush_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.unflushed {
            ready!(Pin::new(&mut self.ws).poll_flush(cx)).map_err(io_error)?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    fn send_frame(&mut self, cx: &mut Context<'_>, frame: Bytes) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_error)?;
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(frame))
            .map_err(io_error)?;
        self.unflushed = true;
        // Flush now when the socket takes it; otherwise the next read or write drives the flush
        // (the broker always polls one of them), and the bytes count as written already.
        if let Poll::Ready(result) = Pin::new(&mut self.ws).poll_flush(cx) {
            result.map_err(io_error)?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for WsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Writes that are waiting for the socket make progress while the broker waits to read.
        if let Poll::Ready(Err(error)) = this.poll_flush_pending(cx) {
            return Poll::Ready(Err(error));
        }
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Text(_))) => {
                    this.read_done = true;
                    this.close_code = Some(close_code::UNSUPPORTED);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text WebSocket frame: MQTT needs binary frames",
                    )));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => {
                    this.read_done = true;
                    return Poll::Ready(Ok(()));
                }
                Some(Err(error)) => {
                    this.read_done = true;
                    return Poll::Ready(Err(io_error(error)));
                }
            }
        }
    }
}

impl AsyncWrite for WsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_flush_pending(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(this.send_frame(cx, Bytes::copy_from_slice(buf)))?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_flush_pending(cx))?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        let mut frame = BytesMut::with_capacity(total);
        for buf in bufs {
            frame.extend_from_slice(buf);
        }
        ready!(this.send_frame(cx, frame.freeze()))?;
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.ws).poll_flush(cx)).map_err(io_error)?;
        this.unflushed = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(code) = this.close_code.take() {
            // Best effort: a peer that broke the rules gets told why, if the socket takes it.
            if let Poll::Ready(Ok(())) = Pin::new(&mut this.ws).poll_ready(cx) {
                let frame = CloseFrame {
                    code,
                    reason: "MQTT over WebSocket needs binary frames".into(),
                };
                let _ = Pin::new(&mut this.ws).start_send(Message::Close(Some(frame)));
            }
        }
        // Errors here mean the connection is gone already, which is what shutdown wants.
        let _ = ready!(Pin::new(&mut this.ws).poll_close(cx));
        Poll::Ready(Ok(()))
    }
}
