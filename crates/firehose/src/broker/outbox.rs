//! Bytes waiting to be written to one connection, written many packets per system call.
//!
//! A shared PUBLISH goes in as one handle on its [`Message`] (one reference count per
//! delivery, no copy): its cached encoding is two buffers, with this connection's packet
//! identifier written between them. Small control packets are encoded into one scratch buffer
//! and split off from it.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use firehose_codec::{encode, EncodeError, Packet, Protocol};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::message::{Message, Variant};

/// Buffers handed to one `writev` while few packets wait (a shared PUBLISH takes two or three).
const FEW_IOVECS: usize = 128;

/// Buffers handed to one `writev` when more packets wait than [`FEW_IOVECS`] holds: Linux's
/// limit (`IOV_MAX`). Why: a subscriber that many publishers feed (fan-in) got 64 messages per
/// system call, and each call pays its own TCP push and loopback delivery; the small array
/// stays for the common case, since the array is filled on every call.
const MAX_IOVECS: usize = 1024;

/// One queued packet, or what is left of it.
#[derive(Debug)]
enum Chunk {
    /// Bytes of their own (control packets, per-subscriber PUBLISH encodings).
    Bytes(Bytes),
    /// A PUBLISH from a message's shared encoding.
    Shared {
        message: Arc<Message>,
        variant: Variant,
        /// The packet identifier, big endian, for QoS 1 and 2.
        packet_id: Option<[u8; 2]>,
        /// Bytes of it already written.
        written: usize,
    },
}

impl Chunk {
    /// Adds this chunk's unwritten parts to `slices`; returns how many it added, or `None`
    /// when they do not all fit (the chunk waits for the next write).
    fn add_slices<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> Option<usize> {
        match self {
            Chunk::Bytes(bytes) => {
                let slot = slices.first_mut()?;
                *slot = IoSlice::new(bytes);
                Some(1)
            }
            Chunk::Shared {
                message,
                variant,
                packet_id,
                written,
            } => {
                // Made by `Outbox::push_shared` before the chunk was queued.
                let parts = message.encoded_parts(*variant)?;
                let id: &[u8] = packet_id.as_ref().map_or(&[], |id| id.as_slice());
                let mut skip = *written;
                let mut count = 0;
                for part in [&parts.head[..], id, &parts.tail[..]] {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    *slices.get_mut(count)? = IoSlice::new(&part[skip..]);
                    skip = 0;
                    count += 1;
                }
                Some(count)
            }
        }
    }

    /// Marks up to `n` bytes as written; returns what was left of `n` once the chunk is done,
    /// or `None` while part of the chunk remains.
    fn advance(&mut self, n: usize) -> Option<usize> {
        match self {
            Chunk::Bytes(bytes) => {
                if bytes.len() <= n {
                    Some(n - bytes.len())
                } else {
                    bytes.advance(n);
                    None
                }
            }
            Chunk::Shared {
                message,
                variant,
                packet_id,
                written,
            } => {
                let total = message
                    .encoded_parts(*variant)
                    .map_or(0, |p| p.len(packet_id.is_some()));
                let left = total - *written;
                if left <= n {
                    Some(n - left)
                } else {
                    *written += n;
                    None
                }
            }
        }
    }
}

/// The write queue of one connection.
#[derive(Debug, Default)]
pub struct Outbox {
    chunks: VecDeque<Chunk>,
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

    /// Queues bytes of their own.
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.pending += bytes.len();
            self.chunks.push_back(Chunk::Bytes(bytes));
        }
    }

    /// Queues a PUBLISH of `message` from its shared encoding for `variant`, with `packet_id`
    /// for QoS 1 and 2; returns its size.
    ///
    /// # Errors
    /// [`EncodeError`] if the message cannot be encoded.
    pub fn push_shared(
        &mut self,
        message: &Arc<Message>,
        variant: Variant,
        packet_id: Option<u16>,
    ) -> Result<usize, EncodeError> {
        let len = message.shared_parts(variant)?.len(packet_id.is_some());
        self.pending += len;
        self.chunks.push_back(Chunk::Shared {
            message: message.clone(),
            variant,
            packet_id: packet_id.map(u16::to_be_bytes),
            written: 0,
        });
        Ok(len)
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
        if self.scratch.capacity() < 64 {
            // Small to start: an idle connection only ever writes small control packets here
            // (shared PUBLISH encodings are not copied into it).
            self.scratch.reserve(1024);
        }
        encode(packet, protocol, &mut self.scratch)?;
        let bytes = self.scratch.split().freeze();
        let len = bytes.len();
        self.push(bytes);
        Ok(len)
    }

    /// Writes as much as one `writev` takes; returns the number of bytes written.
    ///
    /// Cancel safe: nothing is consumed unless the write completed.
    ///
    /// # Errors
    /// The I/O error, or `WriteZero` when the peer stopped reading for good.
    pub async fn write_some<W: AsyncWrite + Unpin>(&mut self, writer: &mut W) -> io::Result<usize> {
        poll_fn(|cx| self.poll_write_some(writer, cx)).await
    }

    /// [`Outbox::write_some`] as a poll function, for a loop that polls its stream itself.
    ///
    /// # Errors
    /// As [`Outbox::write_some`].
    pub fn poll_write_some<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if self.chunks.len() > FEW_IOVECS / 2 {
            self.poll_write_slices::<MAX_IOVECS, W>(writer, cx)
        } else {
            self.poll_write_slices::<FEW_IOVECS, W>(writer, cx)
        }
    }

    /// [`Outbox::poll_write_some`] with at most `N` buffers.
    fn poll_write_slices<const N: usize, W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        // The slices are gathered on every poll, on the stack: held across a wait they would be
        // 2 KiB in the task of every connection, idle ones included.
        let mut slices = [IoSlice::new(&[]); N];
        let mut count = 0;
        for chunk in &self.chunks {
            match chunk.add_slices(&mut slices[count..]) {
                Some(added) => count += added,
                None => break,
            }
        }
        let written = ready!(Pin::new(&mut *writer).poll_write_vectored(cx, &slices[..count]))?;
        if written == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "connection closed while writing",
            )));
        }
        self.advance(written);
        Poll::Ready(Ok(written))
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

    fn advance(&mut self, mut n: usize) {
        self.pending -= n;
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            match front.advance(n) {
                Some(rest) => {
                    n = rest;
                    self.chunks.pop_front();
                }
                None => n = 0,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firehose_codec::{decode, PublishProperties, QoS};

    fn message(payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message::new(
            1,
            "a/b".into(),
            Bytes::from_static(payload),
            QoS::AtLeastOnce,
            false,
            PublishProperties::default(),
            "publisher".into(),
        ))
    }

    /// A writer that takes at most `step` bytes per call, to split packets anywhere, and counts
    /// its calls.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
        calls: usize,
    }

    impl Trickle {
        fn new(step: usize) -> Trickle {
            Trickle {
                out: Vec::new(),
                step,
                calls: 0,
            }
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.calls += 1;
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> std::task::Poll<io::Result<usize>> {
            self.calls += 1;
            let mut left = self.step;
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(left);
                self.out.extend_from_slice(&buf[..take]);
                left -= take;
                n += take;
                if left == 0 {
                    break;
                }
            }
            std::task::Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn shared_and_own_packets_arrive_whole_in_order_across_partial_writes() {
        let first = message(b"first payload");
        let second = message(b"second");
        for step in [1, 2, 3, 7, 1000] {
            let mut outbox = Outbox::default();
            let v311 = |qos| Variant {
                protocol: Protocol::V311,
                qos,
                retain: false,
            };
            outbox
                .push_shared(&first, v311(QoS::AtLeastOnce), Some(0x0102))
                .expect("encodes");
            outbox
                .push_packet(&Packet::PingResp, Protocol::V311)
                .expect("encodes");
            outbox
                .push_shared(&second, v311(QoS::AtMostOnce), None)
                .expect("encodes");
            let mut writer = Trickle::new(step);
            outbox.write_all(&mut writer).await.expect("writes");
            assert!(outbox.is_empty());
            let mut wire = BytesMut::from(&writer.out[..]);
            let mut packets = Vec::new();
            while let Some(packet) = decode(&mut wire, Protocol::V311, 1 << 20).expect("decodes") {
                packets.push(packet);
            }
            assert_eq!(packets.len(), 3, "step {step}");
            match &packets[0] {
                Packet::Publish(p) => {
                    assert_eq!(p.packet_id, Some(0x0102));
                    assert_eq!(&p.payload[..], b"first payload");
                }
                other => panic!("expected PUBLISH, got {other:?}"),
            }
            assert_eq!(packets[1], Packet::PingResp);
            match &packets[2] {
                Packet::Publish(p) => {
                    assert_eq!(p.packet_id, None);
                    assert_eq!(&p.payload[..], b"second");
                }
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_long_queue_leaves_in_few_large_writes_in_order() {
        let v311 = Variant {
            protocol: Protocol::V311,
            qos: QoS::AtLeastOnce,
            retain: false,
        };
        let messages: Vec<Arc<Message>> = (0..1000u16)
            .map(|i| {
                Arc::new(Message::new(
                    u64::from(i),
                    "a/b".into(),
                    Bytes::from(i.to_string()),
                    QoS::AtLeastOnce,
                    false,
                    PublishProperties::default(),
                    "publisher".into(),
                ))
            })
            .collect();
        let mut outbox = Outbox::default();
        for (i, message) in (0u16..).zip(&messages) {
            outbox
                .push_shared(message, v311, Some(i + 1))
                .expect("encodes");
        }
        let mut writer = Trickle::new(usize::MAX);
        outbox.write_all(&mut writer).await.expect("writes");
        // Three buffers per message: head, packet id, payload.
        assert_eq!(writer.calls, 3000usize.div_ceil(MAX_IOVECS));
        let mut wire = BytesMut::from(&writer.out[..]);
        for i in 0..1000u16 {
            match decode(&mut wire, Protocol::V311, 1 << 20).expect("decodes") {
                Some(Packet::Publish(p)) => {
                    assert_eq!(p.packet_id, Some(i + 1));
                    assert_eq!(p.payload, Bytes::from(i.to_string()));
                }
                other => panic!("expected PUBLISH {i}, got {other:?}"),
            }
        }
        assert!(wire.is_empty());
    }
}
