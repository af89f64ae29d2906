//! Firehose: one place to consume every event of an infrastructure.
//!
//! # Layout
//! Dependencies point down only; each module's `//!` comment says its job and what it may use.
//! `docs/architecture.md` follows a message through these rooms and says which file to open for
//! the common changes.
//! 1. Leaves, importing no other module of this crate but `topic`: [`config`] (the config file,
//!    flags and environment as data, the store's settings included), [`topic`] (the wildcard
//!    trie that routing and ACLs share), [`health`] (what every bridge reports, read by
//!    `/healthz` and `/metrics`), [`escape`] (peer-supplied text escaped for logs and
//!    terminals, and the log's field formatter that escapes every line).
//! 2. [`auth`]: the users file, password checks and per-user topic ACLs; [`store`]: the durable
//!    event log, retained messages and persistent sessions (SQLite: `writer`, `read`, `schema`,
//!    `sessions`, `checkpoint`, `page_cache`); [`event`]: the JSON form of a stored event, one for the
//!    history API and `firehose sub`.
//! 3. [`broker`]: sessions, routing, retained messages, QoS, wills, `$SYS`. It serves any
//!    `AsyncRead + AsyncWrite` stream and knows nothing of sockets. Inside: `connection/` (one
//!    file per concern of a connection: handshake, serve loop, inbound, publish, subscribe,
//!    outbound, QoS rules, topic aliases, catch-up, save, end), `pipeline/` (an accepted
//!    PUBLISH from verdict to routing, in data-flow order), `admission`, `session`, `registry`
//!    (client ids, owners), `quota` (what anonymous clients may make it keep), `router`.
//! 4. [`transport`]: listeners that accept connections and hand streams to the broker (TCP, TLS,
//!    WebSocket, the HTTP service with the history and publish APIs); [`bridge`]: one folder
//!    per source (`gerrit`, `webhooks`, `syslog`, `mail`), each with its own `config.rs`, turned
//!    into publishes. Neither imports the other.
//! 5. [`cli`]: the `firehose` command (`serve`, `sub`, `pub`, `replay`, `passwd`); `main.rs` only
//!    calls it. Only `cli` imports `transport` and `bridge`.
//!
//! The MQTT wire format lives in the separate, pure `firehose-codec` crate; the load generator
//! `firehose-bench` is a crate of its own that shares no code with either.

pub mod auth;
pub mod bridge;
pub mod broker;
pub mod cli;
pub mod config;
pub mod escape;
pub mod event;
pub mod health;
pub mod store;
pub mod topic;
pub mod transport;
