//! Transports: listeners that accept connections and hand each stream to the broker.
//!
//! Depends on [`crate::broker`] and [`crate::config`]; only `cli` uses it.

pub mod tcp;
