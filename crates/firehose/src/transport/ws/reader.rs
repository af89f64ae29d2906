//! The inbound half of the framing: client frames in, the MQTT byte stream out, decoded in
//! place in the buffer the bytes were read into. No I/O; `WsStream` reads and answers.
//!
//! Why in place: one socket read may hold several frames (or the end of one and the start of
//! the next), and the reader's caller already owns a buffer. Payload bytes are unmasked and
//! moved down over the headers before them, so a read costs one system call whatever the
//! framing, and data is never buffered here: only a header cut by the end of a read (at most
//! 14 bytes) and the payload of a control frame (at most 125) wait for the next read.

use super::frame::{self, FrameError, Header, OpCode, MAX_CLIENT_HEADER};

/// Decoding state between reads.
#[derive(Debug)]
pub(super) struct Reader {
    /// Largest data frame accepted (`max_ws_message`).
    max_frame: u64,
    /// The next frame's header bytes received so far.
    head: [u8; MAX_CLIENT_HEADER],
    /// How many bytes of `head` are filled.
    head_len: usize,
    /// Where in a frame the next byte falls.
    state: State,
    /// A fragmented binary message is open: the next data frame must be a continuation.
    in_message: bool,
}

/// Where in a frame the next byte falls.
#[derive(Debug)]
enum State {
    /// In a header (maybe its first byte).
    Header,
    /// In the payload of a binary or continuation frame, which goes to the caller.
    Data {
        /// Payload bytes still to come.
        left: u64,
        /// The frame's masking key.
        mask: [u8; 4],
        /// Payload bytes already unmasked, modulo 4: where in the key the next byte starts.
        offset: usize,
    },
    /// In the payload of a control frame, which is collected whole.
    Control {
        /// Close, ping or pong.
        opcode: OpCode,
        /// Payload bytes still to come.
        left: usize,
        /// The frame's masking key.
        mask: [u8; 4],
        /// The payload so far, still masked.
        payload: Vec<u8>,
    },
    /// After a close frame: nothing more is read.
    Closed,
}

/// A control frame the stream must act on (pongs need nothing).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Control {
    /// Answer with a pong carrying this payload.
    Ping(Vec<u8>),
    /// The client closes, with this code if it gave one.
    Close(Option<u16>),
}

/// Positions in the buffer being decoded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cursor {
    /// Bytes of the buffer decoded.
    pub(super) read: usize,
    /// Payload bytes moved to the buffer's start, unmasked: the stream's data.
    pub(super) data: usize,
}

impl Reader {
    /// A reader that refuses data frames longer than `max_frame` bytes.
    pub(super) fn new(max_frame: usize) -> Reader {
        Reader {
            max_frame: max_frame as u64,
            head: [0; MAX_CLIENT_HEADER],
            head_len: 0,
            state: State::Header,
            in_message: false,
        }
    }

    /// Whether the bytes so far end inside a frame: an end of stream here cut a frame short.
    pub(super) fn is_mid_frame(&self) -> bool {
        match self.state {
            State::Header => self.head_len > 0,
            State::Data { .. } | State::Control { .. } => true,
            State::Closed => false,
        }
    }

    /// Decodes `buf[cursor.read..]`, moving payload bytes to `buf[cursor.data..]` unmasked,
    /// until the bytes run out (`None`) or a ping or close frame is complete (the cursor then
    /// stands just after it, so the caller can act on it and call again). Bytes after a close
    /// frame are skipped.
    ///
    /// # Errors
    /// The first [`FrameError`]; the reader is of no further use after one.
    pub(super) fn decode(
        &mut self,
        buf: &mut [u8],
        cursor: &mut Cursor,
    ) -> Result<Option<Control>, FrameError> {
        while cursor.read < buf.len() {
            let input = &buf[cursor.read..];
            match &mut self.state {
                State::Closed => cursor.read = buf.len(),
                State::Header => {
                    let (taken, complete) = self.take_header_bytes(input)?;
                    cursor.read += taken;
                    if complete {
                        if let Some(control) = self.start_frame()? {
                            return Ok(Some(control));
                        }
                    }
                }
                State::Data { left, mask, offset } => {
                    let n =
                        usize::try_from(*left).map_or(input.len(), |left| left.min(input.len()));
                    let (from, to) = (cursor.read, cursor.data);
                    buf.copy_within(from..from + n, to);
                    frame::apply_mask(&mut buf[to..to + n], *mask, *offset);
                    *offset = (*offset + n) % 4;
                    *left -= n as u64;
                    cursor.read += n;
                    cursor.data += n;
                    if *left == 0 {
                        self.state = State::Header;
                    }
                }
                State::Control {
                    opcode,
                    left,
                    mask,
                    payload,
                } => {
                    let n = (*left).min(input.len());
                    payload.extend_from_slice(&input[..n]);
                    *left -= n;
                    cursor.read += n;
                    if *left == 0 {
                        let (opcode, mask, mut payload) = (*opcode, *mask, std::mem::take(payload));
                        frame::apply_mask(&mut payload, mask, 0);
                        self.state = State::Header;
                        if let Some(control) = self.finish_control(opcode, payload)? {
                            return Ok(Some(control));
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// Copies header bytes from `input` into `head`, no further than the header's end (known
    /// from its first two bytes, which are checked as soon as they are in); returns how many,
    /// and whether the header is complete.
    fn take_header_bytes(&mut self, input: &[u8]) -> Result<(usize, bool), FrameError> {
        let taken = self.fill_head(2, input);
        if self.head_len < 2 {
            return Ok((taken, false));
        }
        let header_len = frame::client_header_len(self.head[0], self.head[1])?;
        let taken = taken + self.fill_head(header_len, &input[taken..]);
        Ok((taken, self.head_len == header_len))
    }

    /// Copies bytes from `input` until `head` holds `goal` bytes; returns how many.
    fn fill_head(&mut self, goal: usize, input: &[u8]) -> usize {
        let n = goal.saturating_sub(self.head_len).min(input.len());
        self.head[self.head_len..self.head_len + n].copy_from_slice(&input[..n]);
        self.head_len += n;
        n
    }

    /// `head` holds a whole header: checks the frame against what came before and enters its
    /// payload. A control frame without payload is finished at once.
    fn start_frame(&mut self) -> Result<Option<Control>, FrameError> {
        let (header, _) = frame::parse_client_header(&self.head)?;
        self.head_len = 0;
        let Header {
            fin,
            opcode,
            mask,
            len,
        } = header;
        match opcode {
            OpCode::Text => Err(FrameError::Text),
            OpCode::Continuation if !self.in_message => Err(FrameError::UnexpectedContinuation),
            OpCode::Binary if self.in_message => Err(FrameError::ExpectedContinuation(opcode)),
            OpCode::Continuation | OpCode::Binary => {
                if len > self.max_frame {
                    return Err(FrameError::TooLarge {
                        len,
                        max: self.max_frame,
                    });
                }
                self.in_message = !fin;
                if len > 0 {
                    self.state = State::Data {
                        left: len,
                        mask,
                        offset: 0,
                    };
                }
                Ok(None)
            }
            OpCode::Close | OpCode::Ping | OpCode::Pong => {
                // At most 125: `client_header_len` checked it.
                let len = len as usize;
                if len == 0 {
                    return self.finish_control(opcode, Vec::new());
                }
                self.state = State::Control {
                    opcode,
                    left: len,
                    mask,
                    payload: Vec::with_capacity(len),
                };
                Ok(None)
            }
        }
    }

    /// A control frame's unmasked payload is complete: what the stream must do about it.
    fn finish_control(
        &mut self,
        opcode: OpCode,
        payload: Vec<u8>,
    ) -> Result<Option<Control>, FrameError> {
        match opcode {
            OpCode::Ping => Ok(Some(Control::Ping(payload))),
            OpCode::Close => {
                let code = match payload.as_slice() {
                    [] => None,
                    [_] => return Err(FrameError::CloseTooShort),
                    [high, low, reason @ ..] => {
                        let code = u16::from_be_bytes([*high, *low]);
                        if !frame::is_valid_close_code(code) {
                            return Err(FrameError::BadCloseCode(code));
                        }
                        if std::str::from_utf8(reason).is_err() {
                            return Err(FrameError::CloseReasonNotUtf8);
                        }
                        Some(code)
                    }
                };
                self.state = State::Closed;
                Ok(Some(Control::Close(code)))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

    /// A masked client frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        frame::masked_frame(first, payload, MASK)
    }

    /// Everything `reader` makes of `input` fed in pieces of `step` bytes: the data, the
    /// controls, and the first error.
    fn feed(
        reader: &mut Reader,
        input: &[u8],
        step: usize,
    ) -> (Vec<u8>, Vec<Control>, Option<FrameError>) {
        let (mut data, mut controls) = (Vec::new(), Vec::new());
        for piece in input.chunks(step) {
            let mut buf = piece.to_vec();
            let mut cursor = Cursor::default();
            loop {
                match reader.decode(&mut buf, &mut cursor) {
                    Ok(None) => break,
                    Ok(Some(control)) => controls.push(control),
                    Err(error) => {
                        data.extend_from_slice(&buf[..cursor.data]);
                        return (data, controls, Some(error));
                    }
                }
            }
            assert!(cursor.data <= cursor.read && cursor.read == buf.len());
            data.extend_from_slice(&buf[..cursor.data]);
        }
        (data, controls, None)
    }

    #[test]
    fn fragments_and_frames_join_into_one_stream_however_they_are_cut() {
        let payload: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut input = frame(0x02, &payload[..10]); // first fragment
        input.extend(frame(0x89, b"are you there")); // ping between fragments
        input.extend(frame(0x00, &payload[10..300])); // continuation, 16-bit length
        input.extend(frame(0x80, &payload[300..301])); // last fragment
        input.extend(frame(0x82, &[])); // empty frame
        input.extend(frame(0x8A, b"unasked pong"));
        input.extend(frame(0x82, &payload[301..])); // 64-bit length
        for step in [1, 2, 3, 5, 13, 14, 15, 127, 4096, input.len()] {
            let mut reader = Reader::new(1 << 20);
            let (data, controls, error) = feed(&mut reader, &input, step);
            assert_eq!(error, None, "step {step}");
            assert_eq!(data, payload, "step {step}");
            assert_eq!(controls, vec![Control::Ping(b"are you there".to_vec())]);
            assert!(!reader.is_mid_frame());
        }
    }

    #[test]
    fn close_ends_the_stream_and_later_bytes_are_skipped() {
        let mut input = frame(0x82, b"last");
        input.extend(frame(0x88, &[0x03, 0xE8, b'b', b'y', b'e']));
        input.extend(frame(0x82, b"ignored"));
        for step in [1, 7, input.len()] {
            let mut reader = Reader::new(100);
            let (data, controls, error) = feed(&mut reader, &input, step);
            assert_eq!((data.as_slice(), error), (&b"last"[..], None));
            assert_eq!(controls, vec![Control::Close(Some(1000))]);
        }
        let mut reader = Reader::new(100);
        let (_, controls, _) = feed(&mut reader, &frame(0x88, &[]), 1);
        assert_eq!(controls, vec![Control::Close(None)]);
    }

    #[test]
    fn broken_frames_are_errors_with_their_close_code() {
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (frame(0x81, b"text"), FrameError::Text),
            (vec![0x82, 0x02, 0xC0, 0x00], FrameError::Unmasked),
            (vec![0x83, 0x80, 1, 2, 3, 4], FrameError::ReservedOpcode(3)),
            (vec![0xF2, 0x80, 1, 2, 3, 4], FrameError::ReservedBits(0xF2)),
            (frame(0x80, b"x"), FrameError::UnexpectedContinuation),
            (
                [frame(0x02, b"a"), frame(0x82, b"b")].concat(),
                FrameError::ExpectedContinuation(OpCode::Binary),
            ),
            (
                frame(0x09, b"fragmented ping"),
                FrameError::FragmentedControl(OpCode::Ping),
            ),
            (
                frame(0x89, &[0; 126]),
                FrameError::ControlTooLong {
                    opcode: OpCode::Ping,
                    len: 126,
                },
            ),
            (
                frame(0x82, &[0; 101]),
                FrameError::TooLarge { len: 101, max: 100 },
            ),
            (frame(0x88, &[3]), FrameError::CloseTooShort),
            (frame(0x88, &[0x03, 0xED]), FrameError::BadCloseCode(1005)),
            (
                frame(0x88, &[0x03, 0xE8, 0xFF]),
                FrameError::CloseReasonNotUtf8,
            ),
        ];
        for (input, expected) in cases {
            for step in [1, input.len()] {
                let mut reader = Reader::new(100);
                let (_, _, error) = feed(&mut reader, &input, step);
                assert_eq!(error.as_ref(), Some(&expected), "{input:02X?} by {step}");
            }
        }
        // Exactly the limit is fine.
        let mut reader = Reader::new(100);
        let (data, _, error) = feed(&mut reader, &frame(0x82, &[9; 100]), 100);
        assert_eq!((data.len(), error), (100, None));
    }

    #[test]
    fn data_before_an_error_is_kept() {
        let input = [frame(0x82, b"good"), frame(0x81, b"bad")].concat();
        let mut reader = Reader::new(100);
        let (data, _, error) = feed(&mut reader, &input, input.len());
        assert_eq!(
            (data.as_slice(), error),
            (&b"good"[..], Some(FrameError::Text))
        );
    }

    #[test]
    fn a_stream_cut_inside_a_frame_is_mid_frame() {
        let input = frame(0x82, b"payload");
        for cut in 1..input.len() {
            let mut reader = Reader::new(100);
            feed(&mut reader, &input[..cut], 1);
            assert!(reader.is_mid_frame(), "cut at {cut}");
        }
        let mut reader = Reader::new(100);
        feed(&mut reader, &input, 3);
        assert!(!reader.is_mid_frame());
    }
}
