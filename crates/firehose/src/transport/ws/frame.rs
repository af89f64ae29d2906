//! RFC 6455 frame headers both ways, masking, and the close codes that answer broken frames:
//! the whole wire format `WsStream` needs, with no I/O and no state.
//!
//! Only what MQTT over WebSocket uses: no extensions (the reserved bits must be clear), client
//! frames masked, server frames not.

/// The longest client header: 2 bytes, an 8-byte length, the 4-byte masking key (§5.2).
pub(super) const MAX_CLIENT_HEADER: usize = 14;

/// The longest server header: 2 bytes and an 8-byte length (server frames are not masked).
pub(super) const MAX_SERVER_HEADER: usize = 10;

/// Largest payload of a control frame (§5.5).
pub(super) const MAX_CONTROL_PAYLOAD: usize = 125;

/// Close code: the peer broke the protocol.
pub(super) const CLOSE_PROTOCOL: u16 = 1002;
/// Close code: a kind of data this endpoint does not take (text frames, for MQTT).
pub(super) const CLOSE_UNSUPPORTED: u16 = 1003;
/// Close code: data inconsistent with its type (a close reason that is not UTF-8).
pub(super) const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code: a frame too big to process.
pub(super) const CLOSE_TOO_BIG: u16 = 1009;

const FIN: u8 = 0x80;
const RESERVED_BITS: u8 = 0x70;
const MASK_BIT: u8 = 0x80;

/// A frame's kind (§5.2; the values not listed here are reserved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OpCode {
    /// The next fragment of a data message.
    Continuation,
    /// UTF-8 text: not MQTT.
    Text,
    /// Binary data: the MQTT byte stream.
    Binary,
    /// The closing handshake.
    Close,
    /// Asks for a pong with the same payload.
    Ping,
    /// Answers a ping (or comes unasked, as a heartbeat).
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Close, ping and pong: never fragmented, at most 125 bytes, allowed between the fragments
    /// of a data message.
    pub(super) fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A client frame's header, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    /// The last frame of its message.
    pub(super) fin: bool,
    /// The frame's kind.
    pub(super) opcode: OpCode,
    /// The masking key of the payload.
    pub(super) mask: [u8; 4],
    /// Payload length in bytes.
    pub(super) len: u64,
}

/// Client frames that break RFC 6455 or what MQTT over WebSocket accepts; each knows the close
/// code that answers it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum FrameError {
    /// Reserved bits set, though no extension was negotiated.
    #[error("WebSocket frame with reserved bits set (first byte 0x{0:02X}): no extension was negotiated")]
    ReservedBits(u8),
    /// An opcode RFC 6455 reserves.
    #[error("WebSocket frame with reserved opcode 0x{0:X}")]
    ReservedOpcode(u8),
    /// A client frame without a masking key.
    #[error("unmasked WebSocket frame: client frames must be masked")]
    Unmasked,
    /// A control frame without FIN.
    #[error("fragmented WebSocket {0:?} frame: control frames must not be fragmented")]
    FragmentedControl(OpCode),
    /// A control frame with more than 125 bytes.
    #[error("WebSocket {opcode:?} frame of {len} bytes: control frames carry at most 125")]
    ControlTooLong {
        /// Close, ping or pong.
        opcode: OpCode,
        /// The length it announced.
        len: u64,
    },
    /// A 64-bit length with its most significant bit set.
    #[error("WebSocket frame length 0x{0:X} has its most significant bit set")]
    BadLength(u64),
    /// MQTT rides in binary frames only.
    #[error("text WebSocket frame: MQTT needs binary frames")]
    Text,
    /// A data frame over the configured limit.
    #[error("WebSocket frame of {len} bytes, more than the {max} accepted")]
    TooLarge {
        /// The length it announced.
        len: u64,
        /// The limit (`max_ws_message`).
        max: u64,
    },
    /// A continuation frame with no fragmented message open.
    #[error("WebSocket continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A new data message while a fragmented one is still open.
    #[error("WebSocket {0:?} frame inside a fragmented message: expected a continuation frame")]
    ExpectedContinuation(OpCode),
    /// A close payload of one byte: half a close code.
    #[error("WebSocket close frame with a 1-byte payload: expected none or a 2-byte code first")]
    CloseTooShort,
    /// A close code that must not appear on the wire, or that nobody defined.
    #[error("WebSocket close code {0} is not one a peer may send")]
    BadCloseCode(u16),
    /// The close reason must be UTF-8.
    #[error("WebSocket close reason is not UTF-8")]
    CloseReasonNotUtf8,
}

impl FrameError {
    /// The close code that tells the client what it did wrong (§7.4.1).
    pub(super) fn close_code(&self) -> u16 {
        match self {
            FrameError::Text => CLOSE_UNSUPPORTED,
            FrameError::TooLarge { .. } => CLOSE_TOO_BIG,
            FrameError::CloseReasonNotUtf8 => CLOSE_INVALID_DATA,
            _ => CLOSE_PROTOCOL,
        }
    }
}

/// The full length of a client header, from its first two bytes, which it checks: reserved
/// bits, opcode, masking, and the rules of control frames.
///
/// # Errors
/// The [`FrameError`] those two bytes already show.
pub(super) fn client_header_len(first: u8, second: u8) -> Result<usize, FrameError> {
    if first & RESERVED_BITS != 0 {
        return Err(FrameError::ReservedBits(first));
    }
    let opcode = OpCode::from_bits(first & 0x0F).ok_or(FrameError::ReservedOpcode(first & 0x0F))?;
    if second & MASK_BIT == 0 {
        return Err(FrameError::Unmasked);
    }
    let len7 = second & 0x7F;
    if opcode.is_control() {
        if first & FIN == 0 {
            return Err(FrameError::FragmentedControl(opcode));
        }
        if usize::from(len7) > MAX_CONTROL_PAYLOAD {
            // The real length follows; 126 says enough.
            return Err(FrameError::ControlTooLong {
                opcode,
                len: len7.into(),
            });
        }
    }
    let extended = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    Ok(2 + extended + 4)
}

/// Parses the client header at the start of `head` (the bytes past [`client_header_len`]
/// are not read); returns it and its length.
///
/// # Errors
/// As [`client_header_len`], and [`FrameError::BadLength`].
pub(super) fn parse_client_header(
    head: &[u8; MAX_CLIENT_HEADER],
) -> Result<(Header, usize), FrameError> {
    let (first, second) = (head[0], head[1]);
    let header_len = client_header_len(first, second)?;
    let (len, mask_at) = match second & 0x7F {
        126 => (u64::from(u16::from_be_bytes([head[2], head[3]])), 4),
        127 => {
            let mut ext = [0; 8];
            ext.copy_from_slice(&head[2..10]);
            (u64::from_be_bytes(ext), 10)
        }
        len7 => (u64::from(len7), 2),
    };
    if len >> 63 != 0 {
        return Err(FrameError::BadLength(len));
    }
    let mut mask = [0; 4];
    mask.copy_from_slice(&head[mask_at..mask_at + 4]);
    let opcode = OpCode::from_bits(first & 0x0F).ok_or(FrameError::ReservedOpcode(first & 0x0F))?;
    let header = Header {
        fin: first & FIN != 0,
        opcode,
        mask,
        len,
    };
    Ok((header, header_len))
}

/// Writes the header of a server frame (final, unmasked) into `out`; returns its length.
pub(super) fn server_header(
    opcode: OpCode,
    len: usize,
    out: &mut [u8; MAX_SERVER_HEADER],
) -> usize {
    out[0] = FIN | opcode.bits();
    if len < 126 {
        // `len` < 126 fits in the 7 bits.
        out[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// XORs `bytes` with the masking key, starting `offset` bytes into the key's 4-byte cycle
/// (§5.3): the payload byte at position `i` of its frame uses `mask[i % 4]`. Masking and
/// unmasking are the same operation.
pub(super) fn apply_mask(bytes: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut key = mask;
    key.rotate_left(offset % 4);
    // Eight bytes at a time: the compiler turns the inner loop into one 64-bit XOR.
    let wide = [key, key].concat();
    let mut chunks = bytes.chunks_exact_mut(8);
    for chunk in &mut chunks {
        for (byte, k) in chunk.iter_mut().zip(&wide) {
            *byte ^= k;
        }
    }
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
}

/// Whether a peer may send `code` in a close frame (§7.4): the defined codes except those
/// reserved for reporting (1005, 1006, 1015), and the ranges for libraries and applications.
pub(super) fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A server close frame whole: header, `code` (none for an empty payload) and `reason`, cut
/// to the 123 bytes a control frame leaves for it (at a character boundary).
pub(super) fn server_close(code: Option<u16>, reason: &str) -> Vec<u8> {
    let mut payload = Vec::with_capacity(MAX_CONTROL_PAYLOAD);
    if let Some(code) = code {
        payload.extend_from_slice(&code.to_be_bytes());
        let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        payload.extend_from_slice(&reason.as_bytes()[..end]);
    }
    server_control(OpCode::Close, &payload)
}

/// A server control frame whole: header and `payload` (at most 125 bytes; longer is cut).
pub(super) fn server_control(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    let mut head = [0; MAX_SERVER_HEADER];
    let n = server_header(opcode, payload.len(), &mut head);
    let mut frame = Vec::with_capacity(n + payload.len());
    frame.extend_from_slice(&head[..n]);
    frame.extend_from_slice(payload);
    frame
}

/// The header of a masked client frame whose first byte is `first` (FIN, RSV, opcode) and
/// whose payload is `len` bytes: what the framing's tests feed the reader.
#[cfg(test)]
pub(super) fn masked_header(first: u8, len: u64, mask: [u8; 4]) -> Vec<u8> {
    let mut bytes = vec![first];
    if len < 126 {
        bytes.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        bytes.push(0x80 | 126);
        bytes.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        bytes.push(0x80 | 127);
        bytes.extend_from_slice(&len.to_be_bytes());
    }
    bytes.extend_from_slice(&mask);
    bytes
}

/// A whole masked client frame: [`masked_header`], then `payload` masked with `mask`.
#[cfg(test)]
pub(super) fn masked_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut bytes = masked_header(first, payload.len() as u64, mask);
    let mut body = payload.to_vec();
    apply_mask(&mut body, mask, 0);
    bytes.extend(body);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> [u8; MAX_CLIENT_HEADER] {
        let mut head = [0; MAX_CLIENT_HEADER];
        head[..bytes.len()].copy_from_slice(bytes);
        head
    }

    #[test]
    fn client_headers_of_every_length_form() {
        for len in [0, 1, 125, 126, 65535, 65536, 1 << 40] {
            let bytes = masked_header(0x82, len, [1, 2, 3, 4]);
            assert_eq!(client_header_len(bytes[0], bytes[1]), Ok(bytes.len()));
            let (header, header_len) = parse_client_header(&head(&bytes)).expect("valid header");
            assert_eq!(header_len, bytes.len());
            assert_eq!(
                header,
                Header {
                    fin: true,
                    opcode: OpCode::Binary,
                    mask: [1, 2, 3, 4],
                    len
                }
            );
        }
        let (continuation, _) =
            parse_client_header(&head(&masked_header(0x00, 3, [0; 4]))).expect("valid");
        assert_eq!(
            (continuation.fin, continuation.opcode),
            (false, OpCode::Continuation)
        );
    }

    #[test]
    fn broken_headers_say_what_is_wrong() {
        assert_eq!(
            client_header_len(0xC2, 0x80),
            Err(FrameError::ReservedBits(0xC2))
        );
        assert_eq!(
            client_header_len(0x83, 0x80),
            Err(FrameError::ReservedOpcode(3))
        );
        assert_eq!(
            client_header_len(0x8B, 0x80),
            Err(FrameError::ReservedOpcode(0xB))
        );
        assert_eq!(client_header_len(0x82, 0x02), Err(FrameError::Unmasked));
        assert_eq!(
            client_header_len(0x09, 0x80),
            Err(FrameError::FragmentedControl(OpCode::Ping))
        );
        assert_eq!(
            client_header_len(0x88, 0x80 | 126),
            Err(FrameError::ControlTooLong {
                opcode: OpCode::Close,
                len: 126
            })
        );
        let mut huge = masked_header(0x82, 0, [0; 4]);
        huge[1] = 0x80 | 127;
        huge.splice(2..2, (1u64 << 63).to_be_bytes());
        assert_eq!(
            parse_client_header(&head(&huge)),
            Err(FrameError::BadLength(1 << 63))
        );
    }

    #[test]
    fn close_codes_of_errors() {
        assert_eq!(FrameError::Text.close_code(), 1003);
        assert_eq!(FrameError::TooLarge { len: 2, max: 1 }.close_code(), 1009);
        assert_eq!(FrameError::Unmasked.close_code(), 1002);
        assert_eq!(FrameError::CloseReasonNotUtf8.close_code(), 1007);
    }

    #[test]
    fn server_headers_use_the_shortest_length_form() {
        let mut out = [0; MAX_SERVER_HEADER];
        assert_eq!(server_header(OpCode::Binary, 0, &mut out), 2);
        assert_eq!(out[..2], [0x82, 0]);
        assert_eq!(server_header(OpCode::Binary, 125, &mut out), 2);
        assert_eq!(out[..2], [0x82, 125]);
        assert_eq!(server_header(OpCode::Binary, 126, &mut out), 4);
        assert_eq!(out[..4], [0x82, 126, 0, 126]);
        assert_eq!(server_header(OpCode::Binary, 65535, &mut out), 4);
        assert_eq!(out[..4], [0x82, 126, 0xFF, 0xFF]);
        assert_eq!(server_header(OpCode::Binary, 65536, &mut out), 10);
        assert_eq!(out[..10], [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(server_header(OpCode::Pong, 3, &mut out), 2);
        assert_eq!(out[..2], [0x8A, 3]);
    }

    #[test]
    fn masking_at_any_offset_matches_the_definition() {
        let mask = [0x37, 0xFA, 0x21, 0x3D];
        let plain: Vec<u8> = (0..=255).collect();
        for offset in 0..4 {
            for len in [0, 1, 3, 7, 8, 9, 17, 256] {
                let mut bytes = plain[..len].to_vec();
                apply_mask(&mut bytes, mask, offset);
                let expected: Vec<u8> = plain[..len]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[(i + offset) % 4])
                    .collect();
                assert_eq!(bytes, expected, "offset {offset}, length {len}");
            }
        }
    }

    #[test]
    fn close_frames_and_codes() {
        assert_eq!(server_close(None, "ignored"), vec![0x88, 0]);
        assert_eq!(
            server_close(Some(1003), "no"),
            vec![0x88, 4, 0x03, 0xEB, b'n', b'o']
        );
        let long = "é".repeat(100);
        let frame = server_close(Some(1002), &long);
        assert_eq!(frame.len(), 2 + 125 - 1, "cut before a split character");
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
        for code in [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert!(is_valid_close_code(code), "{code}");
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert!(!is_valid_close_code(code), "{code}");
        }
    }
}
