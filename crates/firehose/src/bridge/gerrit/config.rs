//! `[[bridge.gerrit]]`: one Gerrit server streamed over SSH, its checks, and how it builds.
//!
//! Compiled with or without the `gerrit` cargo feature: without it the table still parses and
//! is checked, and building it says that this binary cannot run it.
//!
//! Depends on the bridge framework ([`crate::bridge`]) only.

use std::path::PathBuf;

use firehose_codec::QoS;
use serde::Deserialize;

use crate::bridge::config::{check_backoff, check_qos};
use crate::bridge::{BridgeConfig, BridgeContext, BridgeError, BuiltBridge};

/// One Gerrit server streamed over SSH (`gerrit stream-events`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GerritBridgeConfig {
    /// The bridge's name: one topic level (letters, digits, `-`, `_`, `.`), unique among the
    /// bridges of every kind. Names the publisher (`bridge:<name>`), the status topic
    /// `firehose/bridges/<name>/status` and the metrics' `bridge` label.
    pub name: String,
    /// Gerrit's SSH host.
    pub host: String,
    /// Gerrit's SSH port.
    #[serde(default = "default_gerrit_port")]
    pub port: u16,
    /// The Gerrit user that runs `stream-events` (it needs the "Stream Events" capability).
    pub user: String,
    /// That user's private key file (OpenSSH format; Ed25519, ECDSA or RSA), unencrypted.
    pub private_key: PathBuf,
    /// A known_hosts file (`ssh-keyscan -p 29418 host`) holding the server's host key. One of
    /// `known_hosts` and `host_key_fingerprint` is required: unknown host keys are refused.
    pub known_hosts: Option<PathBuf>,
    /// The server's host key fingerprint, `SHA256:...` as `ssh-keygen -lf` prints it.
    pub host_key_fingerprint: Option<String>,
    /// First topic levels; events go to `<topic_prefix>/<project>/<type>`.
    #[serde(default = "default_gerrit_prefix")]
    pub topic_prefix: String,
    /// The command run on the server.
    #[serde(default = "default_gerrit_command")]
    pub command: String,
    /// Base URL of the events-log plugin's REST API (e.g.
    /// `http://review.example.org/a/plugins/events-log/`); after a reconnect the events missed
    /// meanwhile are read from it. Without it, the gap is announced in the status event.
    pub events_log_url: Option<String>,
    /// User for the events-log REST API (HTTP basic authentication).
    pub events_log_user: Option<String>,
    /// File holding that user's HTTP password.
    pub events_log_password_file: Option<PathBuf>,
    /// Seconds of silence from the server after which an SSH keepalive is sent.
    #[serde(default = "default_keepalive_secs")]
    pub keepalive_secs: u64,
    /// Unanswered keepalives after which the connection is considered dead.
    #[serde(default = "default_keepalive_max")]
    pub keepalive_max: usize,
    /// First delay before reconnecting, in milliseconds; doubled after every failed attempt.
    #[serde(default = "crate::bridge::config::default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Longest delay between reconnection attempts, in seconds (each delay gets up to 20%
    /// random jitter).
    #[serde(default = "crate::bridge::config::default_backoff_max_secs")]
    pub backoff_max_secs: u64,
    /// The QoS of the events, 0 to 2 (default 1). A subscriber gets an event at the lower of
    /// this and its subscription's QoS, and a persistent session is replayed only what was
    /// published at QoS 1 or 2: with 0 (what germqtt, whose `qos` setting defaulted to 0,
    /// published as deployed) a subscriber that was away misses those events.
    #[serde(default = "crate::bridge::config::default_qos")]
    pub qos: u8,
}

impl GerritBridgeConfig {
    /// The QoS of the events ([`GerritBridgeConfig::qos`], checked by `validate`).
    pub fn qos(&self) -> QoS {
        QoS::from_u8(self.qos).unwrap_or(QoS::AtLeastOnce)
    }
}

fn default_gerrit_port() -> u16 {
    29418
}
fn default_gerrit_prefix() -> String {
    "gerrit".into()
}
fn default_gerrit_command() -> String {
    "gerrit stream-events".into()
}
fn default_keepalive_secs() -> u64 {
    15
}
fn default_keepalive_max() -> usize {
    3
}

impl BridgeConfig for GerritBridgeConfig {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "gerrit"
    }

    fn topics(&self) -> Vec<String> {
        vec![format!("{}/#", self.topic_prefix)]
    }

    fn validate(&self) -> Result<(), String> {
        if self.host.trim().is_empty() || self.user.trim().is_empty() {
            return Err("host and user must not be empty".into());
        }
        match (&self.known_hosts, &self.host_key_fingerprint) {
            (None, None) => {
                return Err(
                    "set known_hosts (a file, e.g. from `ssh-keyscan -p 29418 HOST`) or \
                     host_key_fingerprint (\"SHA256:...\" as `ssh-keygen -lf` prints it): \
                     unknown host keys are refused"
                        .into(),
                )
            }
            (Some(_), Some(_)) => {
                return Err("set only one of known_hosts and host_key_fingerprint".into())
            }
            (None, Some(fingerprint)) => {
                let digest = fingerprint.strip_prefix("SHA256:").unwrap_or("");
                if digest.len() != 43 {
                    return Err(format!(
                        "host_key_fingerprint {fingerprint:?}: expected \"SHA256:\" and 43 \
                         base64 characters, as `ssh-keygen -lf KEY` prints"
                    ));
                }
            }
            (Some(_), None) => {}
        }
        let prefix = &self.topic_prefix;
        if prefix.is_empty()
            || prefix.ends_with('/')
            || prefix.starts_with('$')
            || prefix.contains(['+', '#', '\0'])
        {
            return Err(format!(
                "topic_prefix {prefix:?}: expected topic levels without wildcards, not \
                 starting with '$' or ending with '/' (e.g. \"gerrit\")"
            ));
        }
        if self.command.trim().is_empty() {
            return Err("command must not be empty".into());
        }
        if let Some(url) = &self.events_log_url {
            if !url.starts_with("http://") {
                return Err(format!(
                    "events_log_url {url:?}: expected an http:// URL (for https, put a TLS \
                     proxy such as stunnel or nginx in front)"
                ));
            }
        }
        if self.events_log_user.is_some() != self.events_log_password_file.is_some() {
            return Err("events_log_user and events_log_password_file go together".into());
        }
        if self.keepalive_secs == 0 || self.keepalive_max == 0 {
            return Err("keepalive_secs and keepalive_max must be at least 1".into());
        }
        check_qos(self.qos)?;
        check_backoff(self.backoff_initial_ms, self.backoff_max_secs)
    }

    fn build(&self, cx: BridgeContext) -> Result<BuiltBridge, BridgeError> {
        #[cfg(feature = "gerrit")]
        let built = super::stream::build(self, cx);
        #[cfg(not(feature = "gerrit"))]
        let built = {
            drop(cx);
            Err(BridgeError::Invalid {
                bridge: self.name.clone(),
                message: "this firehose was built without the `gerrit` cargo feature".into(),
            })
        };
        built
    }
}
