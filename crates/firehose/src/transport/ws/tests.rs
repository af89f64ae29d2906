//! `WsStream` over a fake connection that takes writes in pieces and answers `Pending` when
//! told, and over `tokio::io::duplex` with tungstenite as the client.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::frame;
use super::writer::MAX_FRAME;
use super::WsStream;

/// A connection for the tests: writes take at most `write_limit` bytes per call (the next
/// entries of `limits` first, if any), reads hand out `input` in pieces of `read_step` bytes,
/// then the end of stream.
#[derive(Debug)]
struct FakeIo {
    /// Everything written.
    written: Vec<u8>,
    /// Per-call write limits to use first, in order; `0` answers `Pending`.
    limits: VecDeque<usize>,
    /// The write limit once `limits` is used up.
    write_limit: usize,
    /// Bytes still to read.
    input: VecDeque<u8>,
    /// Bytes per read at most.
    read_step: usize,
    /// Reads answer `Pending` instead of the end of stream when the input is used up.
    open: bool,
    /// Vectored writes made.
    writes: usize,
    /// `poll_shutdown` was called.
    shut_down: bool,
}

impl FakeIo {
    fn new() -> FakeIo {
        FakeIo {
            written: Vec::new(),
            limits: VecDeque::new(),
            write_limit: usize::MAX,
            input: VecDeque::new(),
            read_step: usize::MAX,
            open: true,
            writes: 0,
            shut_down: false,
        }
    }
}

impl AsyncRead for FakeIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.input.is_empty() && self.open {
            return Poll::Pending;
        }
        let n = self.read_step.min(buf.remaining()).min(self.input.len());
        let bytes: Vec<u8> = self.input.drain(..n).collect();
        buf.put_slice(&bytes);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for FakeIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let limit = self.limits.pop_front().unwrap_or(self.write_limit);
        if limit == 0 {
            return Poll::Pending;
        }
        self.writes += 1;
        let mut n = 0;
        for buf in bufs {
            let take = buf.len().min(limit - n);
            self.written.extend_from_slice(&buf[..take]);
            n += take;
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shut_down = true;
        Poll::Ready(Ok(()))
    }
}

fn cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

/// A server frame as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerFrame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// Parses everything written as server frames (unmasked, no reserved bits).
///
/// # Panics
/// On anything that is not a valid, complete server frame.
fn server_frames(mut bytes: &[u8]) -> Vec<ServerFrame> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 2, "cut header: {bytes:02X?}");
        let (first, second) = (bytes[0], bytes[1]);
        assert_eq!(first & 0x70, 0, "reserved bits");
        assert_eq!(second & 0x80, 0, "server frames are not masked");
        let (len, at) = match second & 0x7F {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => {
                let mut ext = [0; 8];
                ext.copy_from_slice(&bytes[2..10]);
                (u64::from_be_bytes(ext) as usize, 10)
            }
            len => (len as usize, 2),
        };
        assert!(bytes.len() >= at + len, "cut payload");
        let minimal = match len {
            0..=125 => 2,
            126..=65535 => 4,
            _ => 10,
        };
        assert_eq!(at, minimal, "shortest length form");
        frames.push(ServerFrame {
            fin: first & 0x80 != 0,
            opcode: first & 0x0F,
            payload: bytes[at..at + len].to_vec(),
        });
        bytes = &bytes[at + len..];
    }
    frames
}

/// The binary payloads joined, after checking every frame is a final binary frame.
fn binary_stream(frames: &[ServerFrame]) -> Vec<u8> {
    let mut data = Vec::new();
    for frame in frames {
        assert!(frame.fin && frame.opcode == 2, "{frame:?}");
        data.extend_from_slice(&frame.payload);
    }
    data
}

/// A masked client frame.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    frame::masked_frame(first, payload, [0xA1, 0xB2, 0xC3, 0xD4])
}

/// Writes `chunks` as an outbox does: all that is left, as one vectored write, again and
/// again (retrying `Pending`) until everything is written; returns the write calls' results.
fn write_chunks(stream: &mut WsStream<FakeIo>, chunks: &[Vec<u8>]) -> Vec<usize> {
    let mut cx = cx();
    let mut results = Vec::new();
    let (mut index, mut offset) = (0, 0);
    let mut pendings = 0;
    while index < chunks.len() {
        let mut slices = vec![IoSlice::new(&chunks[index][offset..])];
        slices.extend(chunks[index + 1..].iter().map(|c| IoSlice::new(c)));
        match Pin::new(&mut *stream).poll_write_vectored(&mut cx, &slices) {
            Poll::Pending => {
                pendings += 1;
                assert!(pendings < 10_000, "no progress");
                continue;
            }
            Poll::Ready(result) => {
                let mut n = result.expect("write");
                assert!(n > 0, "a write of something wrote nothing");
                results.push(n);
                while n > 0 {
                    let left = chunks[index].len() - offset;
                    if n >= left {
                        n -= left;
                        index += 1;
                        offset = 0;
                    } else {
                        offset += n;
                        n = 0;
                    }
                }
                while index < chunks.len() && chunks[index].len() == offset {
                    index += 1;
                    offset = 0;
                }
            }
        }
    }
    results
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn one_frame_per_write_header_first_then_the_callers_buffers() {
    let chunks = vec![
        pattern(100, 1),
        pattern(30, 2),
        Vec::new(),
        pattern(70_000, 3),
    ];
    let mut stream = WsStream::new(FakeIo::new(), 1024);
    let results = write_chunks(&mut stream, &chunks);
    assert_eq!(results, vec![70_130]);
    assert_eq!(stream.io.writes, 1, "one vectored write");
    let frames = server_frames(&stream.io.written);
    assert_eq!(frames.len(), 1);
    assert_eq!(binary_stream(&frames), chunks.concat());
}

#[test]
fn partial_writes_at_every_offset_of_header_and_payload_make_whole_frames() {
    // Headers of 2, 4 and 10 bytes; the socket first takes `cut` bytes of the first write
    // (and answers `Pending` once), then `step` bytes per call.
    for sizes in [vec![5, 3], vec![200, 100], vec![70_000, 10]] {
        let chunks: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| pattern(len, i as u8))
            .collect();
        let total: usize = sizes.iter().sum();
        let first_frame = if total < 126 {
            2
        } else if total < 65536 {
            4
        } else {
            10
        } + total;
        let cuts: Vec<usize> = (1..=first_frame.min(300))
            .chain((first_frame.saturating_sub(20)..first_frame).filter(|&c| c > 300))
            .collect();
        for cut in cuts {
            // Byte by byte through 70 KB for each of 300 cuts would take minutes unoptimised.
            let steps = if total > 1000 {
                [997, 4096, 65536, usize::MAX]
            } else {
                [1, 3, 7, usize::MAX]
            };
            for step in steps {
                let mut io = FakeIo::new();
                io.limits = VecDeque::from([cut, 0]);
                io.write_limit = step;
                let mut stream = WsStream::new(io, 1024);
                write_chunks(&mut stream, &chunks);
                // A second burst after the first, to see the boundary state is clean.
                write_chunks(&mut stream, &[pattern(10, 9)]);
                let frames = server_frames(&stream.io.written);
                let mut expected = chunks.concat();
                expected.extend(pattern(10, 9));
                assert_eq!(
                    binary_stream(&frames),
                    expected,
                    "sizes {sizes:?}, cut {cut}, step {step}"
                );
            }
        }
    }
}

#[test]
fn the_continuation_and_the_next_frame_share_one_write() {
    let mut cx = cx();
    let mut io = FakeIo::new();
    io.limits = VecDeque::from([600]);
    let mut stream = WsStream::new(io, 1024);
    // 600 bytes = 4 of header + 596 of payload.
    let (a, b) = (pattern(1000, 1), pattern(300, 2));
    let first = Pin::new(&mut stream).poll_write(&mut cx, &a);
    assert!(matches!(first, Poll::Ready(Ok(596))), "{first:?}");
    // The rest of the frame, then a new frame for `b`, in one system call.
    let slices = [IoSlice::new(&a[596..]), IoSlice::new(&b)];
    let second = Pin::new(&mut stream).poll_write_vectored(&mut cx, &slices);
    assert!(matches!(second, Poll::Ready(Ok(704))), "{second:?}");
    assert_eq!(stream.io.writes, 2);
    let frames = server_frames(&stream.io.written);
    assert_eq!(frames.len(), 2);
    assert_eq!((&frames[0].payload, &frames[1].payload), (&a, &b));
    // Cut inside the new frame's header: its first byte only.
    let mut io = FakeIo::new();
    io.limits = VecDeque::from([10, 994 + 1, 0]);
    let mut stream = WsStream::new(io, 1024);
    let first = Pin::new(&mut stream).poll_write(&mut cx, &a);
    assert!(matches!(first, Poll::Ready(Ok(6))), "{first:?}");
    let slices = [IoSlice::new(&a[6..]), IoSlice::new(&b)];
    let second = Pin::new(&mut stream).poll_write_vectored(&mut cx, &slices);
    assert!(matches!(second, Poll::Ready(Ok(994))), "{second:?}");
    let third = Pin::new(&mut stream).poll_write(&mut cx, &b);
    assert!(
        matches!(third, Poll::Pending),
        "only the header's rest could go: {third:?}"
    );
    let third = Pin::new(&mut stream).poll_write(&mut cx, &b);
    assert!(matches!(third, Poll::Ready(Ok(300))), "{third:?}");
    let frames = server_frames(&stream.io.written);
    assert_eq!((&frames[0].payload, &frames[1].payload), (&a, &b));
}

#[test]
fn frames_are_capped_and_slices_stay_within_iov_max() {
    // 1500 slices of 1 KiB: at most 1024 buffers per system call, frames of at most 1 MiB.
    let chunks: Vec<Vec<u8>> = (0..1500).map(|i| pattern(1024, i as u8)).collect();
    let mut stream = WsStream::new(FakeIo::new(), 1024);
    let results = write_chunks(&mut stream, &chunks);
    assert!(results.iter().all(|&n| n <= MAX_FRAME), "{results:?}");
    let frames = server_frames(&stream.io.written);
    assert!(frames.iter().all(|f| f.payload.len() <= MAX_FRAME));
    assert_eq!(binary_stream(&frames), chunks.concat());
    let big = vec![pattern(3 * MAX_FRAME + 5, 7)];
    let mut stream = WsStream::new(FakeIo::new(), 1024);
    let results = write_chunks(&mut stream, &big);
    assert_eq!(results, vec![MAX_FRAME, MAX_FRAME, MAX_FRAME, 5]);
    assert_eq!(binary_stream(&server_frames(&stream.io.written)), big[0]);
}

#[test]
fn poll_write_and_empty_writes() {
    let mut cx = cx();
    let mut stream = WsStream::new(FakeIo::new(), 1024);
    let empty = Pin::new(&mut stream).poll_write(&mut cx, b"");
    assert!(matches!(empty, Poll::Ready(Ok(0))));
    let written = Pin::new(&mut stream).poll_write(&mut cx, b"abc");
    assert!(matches!(written, Poll::Ready(Ok(3))));
    assert_eq!(stream.io.written, [0x82, 3, b'a', b'b', b'c']);
}

/// Reads once; `Some(Ok(data))` for data, `Some(Ok([]))` at the end, `None` when pending.
fn read(stream: &mut WsStream<FakeIo>) -> Option<io::Result<Vec<u8>>> {
    let mut storage = [0u8; 256];
    let mut buf = ReadBuf::new(&mut storage);
    match Pin::new(stream).poll_read(&mut cx(), &mut buf) {
        Poll::Pending => None,
        Poll::Ready(Ok(())) => Some(Ok(buf.filled().to_vec())),
        Poll::Ready(Err(error)) => Some(Err(error)),
    }
}

/// Reads until pending or the end, joining the data; the error if one came.
fn read_all(stream: &mut WsStream<FakeIo>) -> (Vec<u8>, Option<io::Error>) {
    let mut data = Vec::new();
    loop {
        match read(stream) {
            None => return (data, None),
            Some(Ok(bytes)) if bytes.is_empty() => return (data, None),
            Some(Ok(bytes)) => data.extend(bytes),
            Some(Err(error)) => return (data, Some(error)),
        }
    }
}

fn stream_reading(input: &[u8], read_step: usize, open: bool) -> WsStream<FakeIo> {
    let mut io = FakeIo::new();
    io.input = input.iter().copied().collect();
    io.read_step = read_step;
    io.open = open;
    WsStream::new(io, 1000)
}

/// Shuts the stream down; returns the frames written.
fn shutdown(stream: &mut WsStream<FakeIo>) -> Vec<ServerFrame> {
    let shut = Pin::new(&mut *stream).poll_shutdown(&mut cx());
    assert!(matches!(shut, Poll::Ready(Ok(()))));
    assert!(stream.io.shut_down);
    server_frames(&stream.io.written)
}

#[test]
fn masked_frames_split_across_reads_and_fragments_make_one_stream() {
    let payload = pattern(3000, 5);
    // Frames of 1 to 1000 bytes (the limit), lengths in 7 and 16 bits.
    let mut input = client_frame(0x02, &payload[..1]);
    input.extend(client_frame(0x00, &payload[1..200]));
    input.extend(client_frame(0x00, &payload[200..1000]));
    input.extend(client_frame(0x80, &payload[1000..2000]));
    input.extend(client_frame(0x82, &payload[2000..]));
    for step in [1, 2, 9, 100, 255, 4096] {
        let mut stream = stream_reading(&input, step, false);
        let (data, error) = read_all(&mut stream);
        assert!(error.is_none(), "{error:?}");
        assert_eq!(data, payload, "read step {step}");
        // The end of stream between frames is a plain end; the close frame is empty.
        assert!(matches!(read(&mut stream), Some(Ok(ref end)) if end.is_empty()));
        assert_eq!(
            shutdown(&mut stream),
            vec![ServerFrame {
                fin: true,
                opcode: 8,
                payload: vec![]
            }]
        );
    }
}

#[test]
fn broken_frames_fail_the_read_and_close_with_their_code() {
    let cases: [(&str, Vec<u8>, u16); 6] = [
        ("text", client_frame(0x81, b"hello"), 1003),
        ("unmasked", vec![0x82, 0x02, 0xC0, 0x00], 1002),
        ("reserved opcode", vec![0x83, 0x80, 1, 2, 3, 4], 1002),
        ("reserved bits", vec![0xF2, 0x80, 1, 2, 3, 4], 1002),
        ("oversized", client_frame(0x82, &[0; 1001]), 1009),
        ("garbage", b"GET / HTTP/1.1\r\n".to_vec(), 1002),
    ];
    for (what, input, code) in cases {
        let mut input = [client_frame(0x82, b"ok"), input].concat();
        input.extend(client_frame(0x82, b"never read"));
        let mut stream = stream_reading(&input, usize::MAX, true);
        // The data before the broken frame is delivered, then the error.
        let (data, error) = read_all(&mut stream);
        assert_eq!(data, b"ok", "{what}");
        let error = error.unwrap_or_else(|| panic!("{what}: no error"));
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{what}");
        assert!(matches!(read(&mut stream), Some(Ok(ref end)) if end.is_empty()));
        let frames = shutdown(&mut stream);
        assert_eq!(frames.len(), 1, "{what}");
        assert_eq!(frames[0].opcode, 8, "{what}");
        assert_eq!(frames[0].payload[..2], code.to_be_bytes(), "{what}");
    }
    let mut stream = stream_reading(&client_frame(0x81, b"hi"), usize::MAX, true);
    let (_, error) = read_all(&mut stream);
    let message = error.expect("error").to_string();
    assert!(message.contains("text WebSocket frame"), "{message}");
    let close = &shutdown(&mut stream)[0].payload;
    assert_eq!(&close[2..], b"MQTT over WebSocket needs binary frames");
}

#[test]
fn a_stream_cut_inside_a_frame_is_an_unexpected_end() {
    let frame = client_frame(0x82, &pattern(300, 1));
    for cut in [1, 2, 3, 5, 7, 8, 9, 100, frame.len() - 1] {
        let mut stream = stream_reading(&frame[..cut], 64, false);
        let (_, error) = read_all(&mut stream);
        let error = error.unwrap_or_else(|| panic!("cut at {cut}: no error"));
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
    }
}

#[test]
fn a_client_close_is_answered_and_ends_the_stream() {
    let input = [
        client_frame(0x82, b"bye"),
        client_frame(0x88, &[0x03, 0xE9]),
        client_frame(0x82, b"after"),
    ]
    .concat();
    let mut stream = stream_reading(&input, usize::MAX, true);
    let (data, error) = read_all(&mut stream);
    assert_eq!((data.as_slice(), error.is_none()), (&b"bye"[..], true));
    // The reply went out with the read (nothing was being written), echoing 1001.
    assert_eq!(stream.io.written, [0x88, 2, 0x03, 0xE9]);
    let write = Pin::new(&mut stream).poll_write(&mut cx(), b"late");
    match write {
        Poll::Ready(Err(error)) => assert_eq!(error.kind(), io::ErrorKind::BrokenPipe),
        other => panic!("a write after the close: {other:?}"),
    }
    assert_eq!(shutdown(&mut stream).len(), 1, "one close frame only");
}

#[test]
fn pings_get_pongs_between_frames_never_inside_one() {
    let mut cx = cx();
    let mut io = FakeIo::new();
    io.input = client_frame(0x89, b"ping 1").into_iter().collect();
    // The first frame gets half written, then the socket is full.
    io.limits = VecDeque::from([50, 0]);
    let mut stream = WsStream::new(io, 1000);
    let data = pattern(100, 1);
    let first = Pin::new(&mut stream).poll_write(&mut cx, &data);
    assert!(matches!(first, Poll::Ready(Ok(48))), "{first:?}");
    // The ping is read while the frame is half written: its pong waits.
    assert!(read(&mut stream).is_none());
    assert_eq!(stream.io.written.len(), 50);
    // A second ping queues a second pong.
    stream.io.input.extend(client_frame(0x89, b"ping 2"));
    assert!(read(&mut stream).is_none());
    assert_eq!(stream.io.written.len(), 50);
    // The rest of the frame goes first (the socket is full once: Pending), then the pongs,
    // then the next frame.
    let rest = Pin::new(&mut stream).poll_write(&mut cx, &data[48..]);
    assert!(matches!(rest, Poll::Pending), "{rest:?}");
    let rest = Pin::new(&mut stream).poll_write(&mut cx, &data[48..]);
    assert!(matches!(rest, Poll::Ready(Ok(52))), "{rest:?}");
    let next = Pin::new(&mut stream).poll_write(&mut cx, b"next");
    assert!(matches!(next, Poll::Ready(Ok(4))), "{next:?}");
    let frames = server_frames(&stream.io.written);
    let kinds: Vec<(u8, &[u8])> = frames
        .iter()
        .map(|f| (f.opcode, f.payload.as_slice()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (2, data.as_slice()),
            (0xA, &b"ping 1"[..]),
            (0xA, &b"ping 2"[..]),
            (2, &b"next"[..]),
        ]
    );
    // Between frames, a read answers a ping by itself (the broker may have nothing to write).
    stream.io.input.extend(client_frame(0x89, b""));
    assert!(read(&mut stream).is_none());
    assert_eq!(stream.io.written[stream.io.written.len() - 2..], [0x8A, 0]);
}

#[test]
fn a_half_written_frame_gets_no_close_frame_at_shutdown() {
    let mut io = FakeIo::new();
    io.limits = VecDeque::from([10]);
    let mut stream = WsStream::new(io, 1000);
    let write = Pin::new(&mut stream).poll_write(&mut cx(), &pattern(100, 0));
    assert!(matches!(write, Poll::Ready(Ok(8))));
    let shut = Pin::new(&mut stream).poll_shutdown(&mut cx());
    assert!(matches!(shut, Poll::Ready(Ok(()))));
    assert_eq!(stream.io.written.len(), 10, "nothing inside the frame");
    assert!(stream.io.shut_down);
}

/// End to end with tungstenite as the client over an in-memory pipe small enough that every
/// frame is written in pieces.
#[tokio::test]
async fn tungstenite_reads_a_burst_written_in_pieces() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
    use tokio_tungstenite::tungstenite::Message;

    let (client_io, server_io) = tokio::io::duplex(4096);
    let config = WebSocketConfig::default()
        .max_frame_size(Some(2 << 20))
        .max_message_size(Some(2 << 20));
    let mut client =
        tokio_tungstenite::WebSocketStream::from_raw_socket(client_io, Role::Client, Some(config))
            .await;
    let mut server = WsStream::new(server_io, 1 << 20);
    let chunks: Vec<Vec<u8>> = (0..300)
        .map(|i| pattern(1 + i * 37 % 5000, i as u8))
        .collect();
    let expected = chunks.concat();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        for batch in chunks.chunks(40) {
            let slices: Vec<IoSlice<'_>> = batch.iter().map(|c| IoSlice::new(c)).collect();
            let mut left: usize = batch.iter().map(Vec::len).sum();
            let mut skip = 0;
            while left > 0 {
                // What is left of the batch, as the outbox would offer it.
                let mut rest = Vec::new();
                let mut to_skip = skip;
                for slice in &slices {
                    if to_skip >= slice.len() {
                        to_skip -= slice.len();
                    } else {
                        rest.push(IoSlice::new(&slice[to_skip..]));
                        to_skip = 0;
                    }
                }
                let n = server.write_vectored(&rest).await.expect("write");
                skip += n;
                left -= n;
                sent += n;
            }
        }
        // A ping from the client is answered while the server reads.
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"after");
        server.shutdown().await.expect("shutdown");
        sent
    });
    let mut received = Vec::new();
    let mut frames = 0;
    while received.len() < expected.len() {
        match client.next().await {
            Some(Ok(Message::Binary(data))) => {
                frames += 1;
                received.extend_from_slice(&data);
            }
            other => panic!("expected binary data, got {other:?}"),
        }
    }
    assert_eq!(received, expected);
    assert!(frames > 1, "{frames} frames");
    client
        .send(Message::Ping(b"hi".to_vec().into()))
        .await
        .expect("ping");
    client
        .send(Message::Binary(b"after".to_vec().into()))
        .await
        .expect("send");
    let mut pong = false;
    loop {
        match client.next().await {
            Some(Ok(Message::Pong(payload))) => {
                assert_eq!(&payload[..], b"hi");
                pong = true;
            }
            Some(Ok(Message::Close(frame))) => {
                assert_eq!(frame, None, "a plain close");
                break;
            }
            other => panic!("expected a pong and a close, got {other:?}"),
        }
    }
    assert!(pong, "the ping was answered");
    assert_eq!(writer.await.expect("server task"), expected.len());
}
