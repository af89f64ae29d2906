//! MQTT 3.1.1 and 5.0 packets, decoded from and encoded to `bytes` buffers.
//!
//! This crate is pure: no I/O, no runtime, no allocation beyond what a packet needs. Payloads are
//! `Bytes` slices of the input buffer (zero-copy). It is the only place in Firehose that knows the
//! wire format; the broker speaks in [`Packet`] values.
//!
//! # Layout
//! - [`packet`]: the packet types, one struct per control packet, with their v5 properties.
//! - [`reason`]: MQTT 5 reason codes and their MQTT 3.1.1 equivalents.
//! - [`decode`](mod@decode): bytes to packets, with strict validation; `Ok(None)` means "need more bytes".
//! - [`encode`](mod@encode): packets to bytes, plus the split PUBLISH encoding used by fan-out.
//! - [`topic`]: topic name and topic filter validation rules shared by decoder and broker.

pub mod decode;
pub mod encode;
pub mod packet;
mod property;
pub mod reason;
pub mod topic;

pub use decode::{decode, DecodeError};
pub use encode::{
    encode, encode_publish_parts, encode_publish_split, EncodeError, PublishParts, PublishRef,
};
pub use packet::*;
pub use reason::ReasonCode;
