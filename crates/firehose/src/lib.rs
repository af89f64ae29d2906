//! Firehose: one place to consume every event of an infrastructure.
//!
//! # Layout
//! Dependencies point down only; each module's `//!` comment says what it may use.
//! 1. Leaf modules: [`config`] (the config file and flags as data), [`topic`] (the wildcard trie
//!    that routing and ACLs share).
//! 2. [`auth`]: the users file, password checks and per-user topic ACLs; [`store`]: the durable
//!    event log, retained messages and persistent sessions (SQLite).
//! 3. [`broker`]: sessions, routing, retained messages, QoS, wills, `$SYS` statistics. It serves
//!    any `AsyncRead + AsyncWrite` stream and knows nothing of sockets.
//! 4. [`transport`]: listeners that accept connections and hand streams to the broker;
//!    [`bridge`]: Gerrit, webhooks and other sources turned into publishes.
//! 5. [`cli`]: the `firehose` command (`serve`, `passwd`); `main.rs` only calls it.
//!
//! The MQTT wire format lives in the separate `firehose-codec` crate.

pub mod auth;
pub mod bridge;
pub mod broker;
pub mod cli;
pub mod config;
pub mod event;
pub mod health;
pub mod store;
pub mod topic;
pub mod transport;
