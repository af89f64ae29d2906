//! The primitives every packet body is made of, read from one complete frame: integers,
//! variable byte integers, UTF-8 strings and binary data, each refused with a message that says
//! what was expected and what came.
//!
//! Depends on `bytes` and the decoder's error helpers only.

use bytes::{Buf, Bytes};

use super::{malformed, protocol_error, DecodeError};

/// The largest value a variable byte integer can carry (four bytes of seven bits).
pub(super) const MAX_VARINT: u32 = 268_435_455;

/// Outcome of reading a variable byte integer from a byte slice.
pub(super) enum Varint {
    /// The value and how many bytes encoded it.
    Value(u32, usize),
    /// The slice ends before the last byte of the integer.
    Incomplete,
    /// What is wrong with the encoding.
    Invalid(&'static str),
}

/// Reads a variable byte integer (MQTT 5 section 1.5.5). A fifth byte is refused as soon as the
/// fourth one says another follows, and so is a non-minimal encoding, which the specification
/// forbids ([MQTT-1.5.5-1]) and which would let two byte strings mean the same packet.
pub(super) fn read_varint(bytes: &[u8]) -> Varint {
    let mut value: u32 = 0;
    for (i, &byte) in bytes.iter().enumerate().take(4) {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Varint::Invalid("must use the fewest bytes, got a trailing zero byte");
            }
            return Varint::Value(value, i + 1);
        }
        if i == 3 {
            return Varint::Invalid("must be at most 4 bytes, got a 5th");
        }
    }
    Varint::Incomplete
}

/// Cursor over the body of one complete frame. Running out of bytes here is malformed, never
/// "incomplete": the fixed header promised exactly this many.
pub(super) struct Reader {
    /// What is left of the body.
    pub(super) buf: Bytes,
    /// The packet's name, for error messages.
    pub(super) packet: &'static str,
}

impl Reader {
    pub(super) fn malformed(&self, reason: impl Into<String>) -> DecodeError {
        malformed(self.packet, reason)
    }

    pub(super) fn protocol_error(&self, reason: impl Into<String>) -> DecodeError {
        protocol_error(self.packet, reason)
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(super) fn need(&self, n: usize, what: &str) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            return Err(self.malformed(format!(
                "expected {what} ({n} bytes), got {} bytes left",
                self.buf.len()
            )));
        }
        Ok(())
    }

    pub(super) fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    pub(super) fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        self.need(2, what)?;
        Ok(self.buf.get_u16())
    }

    pub(super) fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }

    pub(super) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        let id = self.u16("packet identifier")?;
        if id == 0 {
            return Err(self.malformed("packet identifier must be non-zero, got 0"));
        }
        Ok(id)
    }

    pub(super) fn varint(&mut self, what: &str) -> Result<u32, DecodeError> {
        match read_varint(&self.buf) {
            Varint::Value(value, len) => {
                self.buf.advance(len);
                Ok(value)
            }
            Varint::Incomplete => Err(self.malformed(format!(
                "expected {what} (variable byte integer), got end of packet"
            ))),
            Varint::Invalid(why) => Err(self.malformed(format!("{what} {why}"))),
        }
    }

    pub(super) fn take(&mut self, n: usize, what: &str) -> Result<Bytes, DecodeError> {
        self.need(n, what)?;
        Ok(self.buf.split_to(n))
    }

    pub(super) fn binary(&mut self, what: &str) -> Result<Bytes, DecodeError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    pub(super) fn string(&mut self, what: &str) -> Result<String, DecodeError> {
        let bytes = self.binary(what)?;
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            self.malformed(format!(
                "{what} must be valid UTF-8, got invalid bytes ({e})"
            ))
        })?;
        if text.contains('\0') {
            return Err(self.malformed(format!("{what} must not contain U+0000, got {text:?}")));
        }
        Ok(text.to_owned())
    }

    pub(super) fn rest(&mut self) -> Bytes {
        self.buf.split_off(0)
    }

    pub(super) fn expect_end(&self) -> Result<(), DecodeError> {
        if !self.buf.is_empty() {
            return Err(self.malformed(format!(
                "expected end of packet, got {} more bytes",
                self.buf.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::decode::testing::*;

    #[test]
    fn strings_must_be_utf8_without_nul() {
        assert_malformed(&connect_v4(0x00, &[0, 2, 0xFF, 0xFE]), V4, "valid UTF-8");
        assert_malformed(&connect_v4(0x00, &[0, 2, b'a', 0x00]), V4, "U+0000");
        // An encoded surrogate (U+D800) is not valid UTF-8.
        assert_malformed(
            &connect_v4(0x00, &[0, 3, 0xED, 0xA0, 0x80]),
            V4,
            "valid UTF-8",
        );
        assert_malformed(&frame(0x30, &[0, 3, b'a', 0, b'b']), V4, "U+0000");
    }
}
