//! The configuration: a TOML file, overridden by `FIREHOSE_*` environment variables and flags.
//!
//! A leaf module: plain data with defaults and validation. Every field is documented because the
//! example config (`docs/firehose.example.toml`) and the operator's expectations are built on it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why a configuration could not be used; each message names the file or the field to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message, with line and column.
        message: String,
    },
    /// A listener address that is neither `HOST:PORT` nor `off`.
    #[error("invalid {field} address {value:?}: expected HOST:PORT (e.g. 0.0.0.0:1883) or \"off\"")]
    Address {
        /// Which setting.
        field: &'static str,
        /// What was given.
        value: String,
    },
    /// A limit outside its allowed range.
    #[error("invalid limit {field} = {value}: {expected}")]
    Limit {
        /// Which setting.
        field: &'static str,
        /// What was given.
        value: u64,
        /// The allowed range.
        expected: &'static str,
    },
}

/// A listener address: `HOST:PORT`, or `off` to disable the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// Do not open this listener.
    Off,
    /// Bind here (port 0 picks a free port, which the log reports).
    On(SocketAddr),
}

impl Listen {
    /// Parses `off` or a socket address, naming `field` in the error.
    ///
    /// # Errors
    /// [`ConfigError::Address`] when the text is neither.
    pub fn parse(field: &'static str, value: &str) -> Result<Listen, ConfigError> {
        let value = value.trim();
        if value.eq_ignore_ascii_case("off") {
            return Ok(Listen::Off);
        }
        value.parse().map(Listen::On).map_err(|_| ConfigError::Address {
            field,
            value: value.to_owned(),
        })
    }
}

/// The whole configuration, as the file spells it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the event log and sessions are stored.
    pub data_dir: PathBuf,
    /// Users file (publishers and their ACLs); none means everyone is anonymous and read-only.
    pub users: Option<PathBuf>,
    /// The MQTT over TCP listener.
    pub mqtt: ListenerConfig,
    /// The HTTP listener (WebSocket, SSE, API, metrics).
    pub http: ListenerConfig,
    /// Resource limits.
    pub limits: Limits,
    /// `$SYS/broker/...` statistics.
    pub sys: SysConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./firehose-data"),
            users: None,
            mqtt: ListenerConfig {
                listen: "0.0.0.0:1883".into(),
            },
            http: ListenerConfig {
                listen: "0.0.0.0:8080".into(),
            },
            limits: Limits::default(),
            sys: SysConfig::default(),
        }
    }
}

/// One listener's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `HOST:PORT` or `off`.
    pub listen: String,
}

/// Limits that keep one client, or many, from exhausting the broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest MQTT packet accepted, in bytes (fixed header included). Default 1 MiB.
    pub max_packet_size: u32,
    /// Most simultaneous MQTT connections; further ones are closed at once. 0 = no limit.
    pub max_connections: u64,
    /// Most simultaneous connections from one IP address. 0 = no limit.
    pub max_connections_per_ip: u64,
    /// Most subscriptions one session may hold.
    pub max_subscriptions_per_client: u64,
    /// Messages queued for one client (connected or offline) before further ones are dropped
    /// and counted.
    pub send_queue: u64,
    /// Unacknowledged QoS 1/2 publishes the broker accepts from one client (MQTT 5 Receive
    /// Maximum sent in CONNACK).
    pub receive_maximum: u16,
    /// Unacknowledged QoS 1/2 publishes the broker sends to one client at once (further limited
    /// by the client's own Receive Maximum).
    pub max_inflight: u16,
    /// Highest topic alias a client may use towards the broker (MQTT 5). 0 disables aliases.
    pub topic_alias_maximum: u16,
    /// Seconds a new connection has to send CONNECT before it is closed.
    pub connect_timeout_secs: u64,
    /// Highest keep alive, in seconds, granted to clients (MQTT 5 Server Keep Alive when the
    /// client asks for more or for none). 0 = accept whatever the client asks.
    pub max_keep_alive: u16,
    /// Longest session expiry, in seconds, granted to MQTT 5 clients; 3.1.1 persistent sessions
    /// get this too.
    pub max_session_expiry_secs: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet_size: 1024 * 1024,
            max_connections: 0,
            max_connections_per_ip: 0,
            max_subscriptions_per_client: 1000,
            send_queue: 10_000,
            receive_maximum: 1024,
            max_inflight: 1024,
            topic_alias_maximum: 1024,
            connect_timeout_secs: 10,
            max_keep_alive: 0,
            max_session_expiry_secs: 7 * 24 * 3600,
        }
    }
}

/// Settings of the `$SYS` statistics publisher.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SysConfig {
    /// Seconds between two publications; 0 disables them.
    pub interval_secs: u64,
}

impl Default for SysConfig {
    fn default() -> Self {
        SysConfig { interval_secs: 10 }
    }
}

impl Config {
    /// Reads and validates a config file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and what is wrong in it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; called after the file and after flags are applied.
    ///
    /// # Errors
    /// The first invalid setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.mqtt_listen()?;
        self.http_listen()?;
        let l = &self.limits;
        let limit = |field, value: u64, ok: bool, expected| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Limit {
                    field,
                    value,
                    expected,
                })
            }
        };
        limit(
            "max_packet_size",
            l.max_packet_size.into(),
            (64..=268_435_460).contains(&l.max_packet_size),
            "between 64 and 268435460 bytes",
        )?;
        limit(
            "send_queue",
            l.send_queue,
            l.send_queue >= 1,
            "at least 1",
        )?;
        limit(
            "receive_maximum",
            l.receive_maximum.into(),
            l.receive_maximum >= 1,
            "between 1 and 65535",
        )?;
        limit(
            "max_inflight",
            l.max_inflight.into(),
            l.max_inflight >= 1,
            "between 1 and 65535",
        )?;
        limit(
            "max_subscriptions_per_client",
            l.max_subscriptions_per_client,
            l.max_subscriptions_per_client >= 1,
            "at least 1",
        )?;
        limit(
            "connect_timeout_secs",
            l.connect_timeout_secs,
            (1..=3600).contains(&l.connect_timeout_secs),
            "between 1 and 3600",
        )?;
        Ok(())
    }

    /// The MQTT listener address.
    ///
    /// # Errors
    /// [`ConfigError::Address`] for a malformed address.
    pub fn mqtt_listen(&self) -> Result<Listen, ConfigError> {
        Listen::parse("mqtt.listen", &self.mqtt.listen)
    }

    /// The HTTP listener address.
    ///
    /// # Errors
    /// [`ConfigError::Address`] for a malformed address.
    pub fn http_listen(&self) -> Result<Listen, ConfigError> {
        Listen::parse("http.listen", &self.http.listen)
    }

    /// The `$SYS` interval, `None` when disabled.
    pub fn sys_interval(&self) -> Option<Duration> {
        (self.sys.interval_secs > 0).then(|| Duration::from_secs(self.sys.interval_secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = Config::default();
        config.validate().expect("defaults validate");
        assert_eq!(
            config.mqtt_listen().expect("mqtt"),
            Listen::On("0.0.0.0:1883".parse().expect("addr"))
        );
        assert_eq!(config.limits.max_packet_size, 1024 * 1024);
    }

    #[test]
    fn example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/firehose.example.toml");
        let config = Config::load(&path).expect("example config loads");
        assert_eq!(config.mqtt_listen().expect("mqtt"), Listen::On("0.0.0.0:1883".parse().expect("addr")));
    }

    #[test]
    fn unknown_key_is_refused_with_its_name() {
        let err = toml::from_str::<Config>("[limits]\nmax_packet_sise = 3\n").expect_err("refused");
        assert!(err.to_string().contains("max_packet_sise"), "{err}");
    }

    #[test]
    fn off_and_bad_addresses() {
        assert_eq!(Listen::parse("x", "off").expect("off"), Listen::Off);
        let err = Listen::parse("mqtt.listen", "localhost").expect_err("bad");
        assert!(err.to_string().contains("mqtt.listen"), "{err}");
    }

    #[test]
    fn zero_send_queue_is_refused() {
        let mut config = Config::default();
        config.limits.send_queue = 0;
        assert!(config.validate().is_err());
    }
}
