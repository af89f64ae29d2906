//! The Gerrit bridge: runs `gerrit stream-events` over SSH and publishes every event to
//! `<topic_prefix>/<project>/<type>` with the JSON exactly as Gerrit sent it, as the original
//! Firehose's germqtt did, so that its consumers work unchanged.
//!
//! Better than germqtt:
//! - the server's host key is checked against a known_hosts file or a pinned SHA-256
//!   fingerprint; an unknown key is refused and reported;
//! - SSH keepalives detect a dead connection (`keepalive_secs` x `keepalive_max`);
//! - reconnection waits grow exponentially (with jitter) up to `backoff_max_secs`, and start
//!   again from `backoff_initial_ms` once a connection has carried events;
//! - a line that is not a JSON event is counted (`rejected`) and logged, never published;
//!   every other line is published, identical ones too (Gerrit sends byte-identical
//!   replication events when a branch moves twice in a second);
//! - after a reconnection, the events Gerrit sent meanwhile are read from the events-log
//!   plugin when `events_log_url` is set, and published once each: only the overlap of the
//!   plugin's answer with the streams is dropped and counted (`duplicates`), recognised by a
//!   digest of the canonical JSON and by position (the events published in the second
//!   before, as many times as they were; the new stream's first lines while they follow the
//!   answer's last events), never two lines of a stream;
//!   without the plugin, the gap (from the last event to the reconnection) is published in
//!   the bridge's status event.
//!
//! Depends on the bridge framework ([`crate::bridge`]), [`crate::config`] and
//! [`crate::health`].
//!
//! # Layout
//! - [`config`]: `[[bridge.gerrit]]`, its checks and its [`BridgeConfig`] implementation.
//!   Always compiled, so that a binary built without the `gerrit` cargo feature still reads
//!   the table and says why it cannot run it.
//! - `stream` (feature `gerrit`): the reconnect loop, the gap and the events-log plugin;
//! - `ssh` (feature `gerrit`): one SSH session: host key check, public key login, the
//!   command's output;
//! - `events` (feature `gerrit`): topics, digests and events-log answers, as pure functions.
//!
//! [`BridgeConfig`]: crate::bridge::BridgeConfig

pub mod config;
#[cfg(feature = "gerrit")]
pub(crate) mod events;
#[cfg(feature = "gerrit")]
pub(crate) mod ssh;
#[cfg(feature = "gerrit")]
mod stream;

pub use config::GerritBridgeConfig;
