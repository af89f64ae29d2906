//! Bytes waiting to be written to one connection, written many packets per system call.
//!
//! Shared PUBLISH encodings go in as `Bytes` handles (no copy); small control packets are
//! encoded into one scratch buffer and split off from it.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;

use bytes::{Buf, Bytes, BytesMut};
use firehose_codec::{encode, EncodeError, Packet, Protocol};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Most buffers handed to one `writev`.
const MAX_IOVECS: usize = 64;

/// The write queue of one connection.
#[derive(Debug, Default)]
pub struct Outbox {
    chunks: VecDeque<Bytes>,
    scratch: BytesMut,
    pending: usize,
}

impl Outbox {
    /// Bytes not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.pending
    }

    /// Whether everything has been written.
    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Queues shared bytes.
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.pending += bytes.len();
            self.chunks.push_back(bytes);
        }
    }

    /// Queues a two-byte packet identifier (between the parts of a shared PUBLISH).
    pub fn push_packet_id(&mut self, id: u16) {
        self.reserve_scratch(2);
        self.scratch.extend_from_slice(&id.to_be_bytes());
        let bytes = self.scratch.split().freeze();
        self.push(bytes);
    }

    /// Encodes and queues a packet; returns its size.
    ///
    /// # Errors
    /// [`EncodeError`] if the packet cannot be represented.
    pub fn push_packet(
        &mut self,
        packet: &Packet,
        protocol: Protocol,
    ) -> Result<usize, EncodeError> {
        self.reserve_scratch(64);
        encode(packet, protocol, &mut self.scratch)?;
        let bytes = self.scratch.split().freeze();
        let len = bytes.len();
        self.push(bytes);
        Ok(len)
    }

    fn reserve_scratch(&mut self, at_least: usize) {
        if self.scratch.capacity() < at_least {
            // Small to start: an idle connection only ever writes small control packets here
            // (shared PUBLISH encodings are not copied into it).
            self.scratch.reserve(at_least.max(1024));
        }
    }

    /// Writes as much as one `writev` takes; returns the number of bytes written.
    ///
    /// Cancel safe: nothing is consumed unless the write completed.
    ///
    /// # Errors
    /// The I/O error, or `WriteZero` when the peer stopped reading for good.
    pub async fn write_some<W: AsyncWrite + Unpin>(&mut self, writer: &mut W) -> io::Result<usize> {
        // The slices are gathered on every poll, on the stack: held across the await they would
        // be 1 KiB in the task of every connection, idle ones included.
        let written = std::future::poll_fn(|cx| {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (slot, chunk) in slices.iter_mut().zip(&self.chunks) {
                *slot = IoSlice::new(chunk);
                count += 1;
            }
            Pin::new(&mut *writer).poll_write_vectored(cx, &slices[..count])
        })
        .await?;
        if written == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "connection closed while writing",
            ));
        }
        self.advance(written);
        Ok(written)
    }

    /// Writes everything, then flushes.
    ///
    /// # Errors
    /// The I/O error.
    pub async fn write_all<W: AsyncWrite + Unpin>(&mut self, writer: &mut W) -> io::Result<()> {
        while !self.is_empty() {
            self.write_some(writer).await?;
        }
        writer.flush().await
    }

    /// Gives back the memory of an outbox that has been written out: its scratch buffer and
    /// its queue's capacity. Why: a connection that goes idle right after a write (a subscriber
    /// after its SUBACK) would otherwise keep them for as long as it stays connected.
    pub fn release_if_empty(&mut self) {
        if self.is_empty() {
            self.scratch = BytesMut::new();
            self.chunks = Default::default();
        }
    }

    fn advance(&mut self, mut n: usize) {
        self.pending -= n;
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if front.len() <= n {
                n -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
}
