//! The configuration: a TOML file, overridden by `FIREHOSE_*` environment variables and flags.
//!
//! A leaf module: plain data with defaults and validation. Every field is documented because the
//! example config (`docs/firehose.example.toml`) and the operator's expectations are built on it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::store::{Durability, RetentionRule};
use crate::topic;

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
    #[error(
        "invalid {field} address {value:?}: expected HOST:PORT (e.g. 0.0.0.0:1883) or \"off\""
    )]
    Address {
        /// Which setting.
        field: &'static str,
        /// What was given.
        value: String,
    },
    /// A setting that is present but unusable, or settings that do not fit together.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// Which setting (or settings).
        field: &'static str,
        /// What is wrong and what would be accepted.
        message: String,
    },
    /// A retention rule that cannot be applied.
    #[error("invalid retention rule for {filter:?}: {message}")]
    Retention {
        /// The rule's filter.
        filter: String,
        /// What is wrong.
        message: String,
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
        value
            .parse()
            .map(Listen::On)
            .map_err(|_| ConfigError::Address {
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
    pub mqtt: MqttListenerConfig,
    /// The MQTT over TLS listener (off unless configured; needs `[tls]`).
    pub mqtts: MqttListenerConfig,
    /// The HTTP listener (WebSocket, SSE, API, metrics).
    pub http: HttpListenerConfig,
    /// The HTTPS listener: the same service as `[http]` over TLS (off unless configured; needs
    /// `[tls]`). The `[http]` settings other than `listen` apply to it too.
    pub https: ListenerConfig,
    /// Certificate, key and client certificates for the TLS listeners.
    pub tls: TlsConfig,
    /// Resource limits.
    pub limits: Limits,
    /// `$SYS/broker/...` statistics.
    pub sys: SysConfig,
    /// The event log.
    pub log: LogConfig,
    /// Bridges that turn foreign events (Gerrit, webhooks) into publishes.
    pub bridge: BridgesConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./firehose-data"),
            users: None,
            mqtt: MqttListenerConfig {
                listen: "0.0.0.0:1883".into(),
                proxy_protocol: false,
            },
            mqtts: MqttListenerConfig {
                listen: "off".into(),
                proxy_protocol: false,
            },
            http: HttpListenerConfig {
                listen: "0.0.0.0:8080".into(),
                ws_path: default_ws_path(),
                trusted_proxies: Vec::new(),
            },
            https: ListenerConfig {
                listen: "off".into(),
            },
            tls: TlsConfig::default(),
            limits: Limits::default(),
            sys: SysConfig::default(),
            log: LogConfig::default(),
            bridge: BridgesConfig::default(),
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

/// An MQTT listener's settings (`[mqtt]`, `[mqtts]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttListenerConfig {
    /// `HOST:PORT` or `off`.
    pub listen: String,
    /// Expect a PROXY protocol v1 or v2 header (HAProxy, nginx `proxy_protocol on`, AWS NLB) at
    /// the start of every connection, and take the client address from it. Only for listeners
    /// that nothing but the proxy can reach: with it on, a connection without the header is
    /// closed.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// The HTTP listener's settings (`[http]`); all but `listen` apply to `[https]` too.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpListenerConfig {
    /// `HOST:PORT` or `off`.
    pub listen: String,
    /// Path of the MQTT over WebSocket endpoint.
    #[serde(default = "default_ws_path")]
    pub ws_path: String,
    /// Reverse proxies (IP addresses or CIDR blocks such as `10.0.0.0/8`) whose
    /// `X-Forwarded-For` header is believed: the client address is the last address in that
    /// header that is not itself a trusted proxy. From anyone else the header is ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

fn default_ws_path() -> String {
    "/mqtt".into()
}

/// TLS settings (`[tls]`) shared by the MQTTS and HTTPS listeners. The files are read at start
/// and again on SIGHUP; a reload that fails keeps the previous certificate.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the server certificate, followed by its intermediate certificates.
    pub cert: Option<PathBuf>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// PEM file with the CA certificates that sign client certificates. When set, clients may
    /// present a certificate; one whose subject common name (CN) is a user of the users file is
    /// logged in as that user without a password.
    pub client_ca: Option<PathBuf>,
    /// Refuse TLS clients that present no valid client certificate (needs `client_ca`).
    pub client_cert_required: bool,
}

/// A trusted proxy: an address and a prefix length (`10.0.0.0/8`, `::1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    /// The network address.
    pub addr: IpAddr,
    /// Leading bits that must match.
    pub prefix: u8,
}

impl IpBlock {
    /// Parses `ADDR` or `ADDR/PREFIX`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `http.trusted_proxies`.
    pub fn parse(value: &str) -> Result<IpBlock, ConfigError> {
        let bad = || {
            ConfigError::Invalid {
            field: "http.trusted_proxies",
            message: format!(
                "{value:?} is not an IP address or CIDR block (e.g. \"127.0.0.1\", \"10.0.0.0/8\", \"::1\")"
            ),
        }
        };
        let (addr, prefix) = match value.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (value.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(IpBlock { addr, prefix })
    }

    /// Whether `ip` is inside the block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_match(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_match(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_match(net: &[u8], ip: &[u8], prefix: u8) -> bool {
    let mut bits = usize::from(prefix);
    for (n, i) in net.iter().zip(ip) {
        if bits == 0 {
            return true;
        }
        let take = bits.min(8);
        let mask = !0xffu8.checked_shr(take as u32).unwrap_or(0);
        if n & mask != i & mask {
            return false;
        }
        bits -= take;
    }
    true
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
    /// Most levels (`a/b/c` has three) in a topic name or filter. Every level is a node in the
    /// subscription trie or the retained tree, so without it one 64 KiB topic of empty levels
    /// costs megabytes. 0 = no limit.
    pub max_topic_levels: u32,
    /// Most retained messages kept at once; a retained publish to a further topic is refused
    /// (MQTT 5: reason 0x97, Quota exceeded). Replacing or clearing one always works.
    /// 0 = no limit.
    pub max_retained_messages: u64,
    /// Most memory for retained messages, in bytes: each is charged its topic and payload,
    /// and 320 bytes for itself and per topic level (what the message and its index take).
    /// Refused like `max_retained_messages`. 0 = no limit.
    pub max_retained_bytes: u64,
    /// Messages queued for one client (connected or offline) before further ones are dropped
    /// and counted.
    pub send_queue: u64,
    /// Pause clients that publish (5 ms at a time) while most subscribers of their messages
    /// are behind, so that a publisher faster than the fan-out is slowed down instead of its
    /// QoS 0 messages being dropped for everyone. `false`: publishers are never slowed for
    /// their subscribers (only by the log).
    pub pause_publishers: bool,
    /// Unacknowledged QoS 1/2 publishes the broker accepts from one client (MQTT 5 Receive
    /// Maximum sent in CONNACK).
    pub receive_maximum: u16,
    /// Unacknowledged QoS 1/2 publishes the broker sends to one client at once (further limited
    /// by the client's own Receive Maximum).
    pub max_inflight: u16,
    /// Highest topic alias a client may use towards the broker (MQTT 5), and the most aliases
    /// the broker uses towards a client (each holds a topic name for the life of the
    /// connection). 0 disables aliases.
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

impl Limits {
    /// The number of levels of `topic` when it has more than `max_topic_levels`, for the
    /// refusal to name; `None` when it fits.
    pub fn topic_too_deep(&self, topic: &str) -> Option<usize> {
        if self.max_topic_levels == 0 {
            return None;
        }
        // Checked once per connection that uses the topic (see `Connection::shared_topic`).
        let levels = crate::topic::level_count(topic);
        (levels > self.max_topic_levels as usize).then_some(levels)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet_size: 1024 * 1024,
            max_connections: 0,
            max_connections_per_ip: 0,
            max_subscriptions_per_client: 1000,
            max_topic_levels: 128,
            max_retained_messages: 100_000,
            max_retained_bytes: 256 * 1024 * 1024,
            send_queue: 10_000,
            pause_publishers: true,
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

/// The event log: how safe an acknowledged event is, and how long events are kept.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `process` (default): an acknowledged event survives a crash of the process (`kill -9`);
    /// `power-loss`: it also survives power loss, at the price of an fsync per group commit.
    pub durability: Durability,
    /// Retention rules, first match wins; events matching none are kept forever.
    pub retention: Vec<RetentionConfig>,
}

/// One retention rule as written in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Topic filter the rule applies to, e.g. `logs/#`.
    pub filter: String,
    /// Delete events older than this: a number with a unit, `90s`, `30m`, `12h`, `7d`, `2w`.
    pub max_age: Option<String>,
    /// Keep at most this many of the rule's events.
    pub max_count: Option<u64>,
    /// Keep at most this many bytes (topic + payload) of the rule's events.
    pub max_bytes: Option<u64>,
}

/// Parses a duration written as a number and a unit (`s`, `m`, `h`, `d`, `w`), e.g. `2h`.
///
/// # Errors
/// A message saying what was expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("expected a number and a unit like 30m, 2h or 7d, got {text:?}"))?;
    let unit_secs = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use s, m, h, d or w"
            ))
        }
    };
    number
        .checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

impl LogConfig {
    /// The retention rules for the store.
    ///
    /// # Errors
    /// [`ConfigError::Retention`] naming the rule that is wrong.
    pub fn retention_rules(&self) -> Result<Vec<RetentionRule>, ConfigError> {
        self.retention
            .iter()
            .map(|rule| {
                let bad = |message: String| ConfigError::Retention {
                    filter: rule.filter.clone(),
                    message,
                };
                topic::check_filter(&rule.filter).map_err(|e| bad(e.to_string()))?;
                if rule.max_age.is_none() && rule.max_count.is_none() && rule.max_bytes.is_none() {
                    return Err(bad(
                        "set at least one of max_age, max_count, max_bytes".into()
                    ));
                }
                let max_age = rule
                    .max_age
                    .as_deref()
                    .map(parse_duration)
                    .transpose()
                    .map_err(bad)?;
                Ok(RetentionRule {
                    filter: rule.filter.clone(),
                    max_age,
                    max_count: rule.max_count,
                    max_bytes: rule.max_bytes,
                })
            })
            .collect()
    }
}

/// `[bridge]`: every bridge, each an internal publisher with its own ACL.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgesConfig {
    /// `[[bridge.gerrit]]`: one table per Gerrit server.
    pub gerrit: Vec<GerritBridgeConfig>,
    /// `[bridge.webhooks]`: GitHub, GitLab and Gitea/Forgejo webhooks on the HTTP listener.
    pub webhooks: WebhooksConfig,
    /// `[[bridge.syslog]]`: syslog (UDP, TCP) and JSON-lines listeners, one table each.
    pub syslog: Vec<SyslogBridgeConfig>,
    /// `[[bridge.mail]]`: IMAP mailboxes watched with IDLE, one table each.
    pub mail: Vec<MailBridgeConfig>,
}

/// What the mail bridge does with a message once its event is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnProcessed {
    /// Set the `\Seen` flag (the message stays in the mailbox).
    #[default]
    Seen,
    /// Set `\Deleted` and expunge the message.
    Delete,
}

/// One IMAP mailbox watched with IDLE: unseen messages become events (Launchpad bug mail to
/// `launchpad/<project>/<event-type>/<bug>`, other mail to `mail/<name>/...`), and each is
/// marked seen (or deleted) only once its event is durable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailBridgeConfig {
    /// The bridge's name (see [`GerritBridgeConfig::name`]); other mail goes to `mail/<name>/...`.
    pub name: String,
    /// The IMAP server.
    pub host: String,
    /// Its port (default 143, or 993 with `tls = true`).
    pub port: Option<u16>,
    /// The IMAP user.
    pub user: String,
    /// The password; set exactly one of `password` and `password_file`.
    pub password: Option<String>,
    /// A file holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// The mailbox watched.
    #[serde(default = "default_mail_mailbox")]
    pub mailbox: String,
    /// Implicit TLS (IMAPS, rustls); plain TCP otherwise.
    #[serde(default)]
    pub tls: bool,
    /// With `tls`: a PEM file of the CA certificates to trust (else the system CA bundle).
    pub ca_file: Option<PathBuf>,
    /// What to do with a message once its event is durable: `"seen"` or `"delete"`.
    #[serde(default)]
    pub on_processed: OnProcessed,
    /// Seconds after which IDLE is re-issued (servers drop it after 29 minutes).
    #[serde(default = "default_mail_idle_secs")]
    pub idle_secs: u64,
    /// First delay before reconnecting, in milliseconds; doubled after every failed attempt.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Longest delay between reconnection attempts, in seconds.
    #[serde(default = "default_backoff_max_secs")]
    pub backoff_max_secs: u64,
}

fn default_mail_mailbox() -> String {
    "INBOX".into()
}
fn default_mail_idle_secs() -> u64 {
    25 * 60
}

impl MailBridgeConfig {
    /// The port, defaulted by `tls`.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.tls { 993 } else { 143 })
    }

    /// Checks the server, credentials and timers.
    fn validate(&self) -> Result<(), String> {
        if self.host.trim().is_empty() || self.user.is_empty() || self.mailbox.is_empty() {
            return Err("host, user and mailbox must not be empty".into());
        }
        if self.password.is_some() == self.password_file.is_some() {
            return Err("set exactly one of password and password_file".into());
        }
        if self.idle_secs == 0 || self.idle_secs > 29 * 60 {
            return Err(format!(
                "idle_secs {}: expected 1 to 1740 (servers end IDLE after 29 minutes)",
                self.idle_secs
            ));
        }
        if self.backoff_initial_ms == 0
            || self.backoff_max_secs == 0
            || self.backoff_initial_ms > self.backoff_max_secs.saturating_mul(1000)
        {
            return Err(
                "backoff_initial_ms must be at least 1 and at most backoff_max_secs".into(),
            );
        }
        Ok(())
    }
}

/// One syslog bridge: listeners for RFC 3164 / RFC 5424 messages over UDP and TCP (RFC 6587
/// octet counting or newline framing) and for JSON lines over TCP, publishing to
/// `logs/<host>/<app>`. At least one listener is required; port 0 binds a free port (logged).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogBridgeConfig {
    /// The bridge's name (see [`GerritBridgeConfig::name`]).
    pub name: String,
    /// UDP address for syslog datagrams, one message each (e.g. `"127.0.0.1:5514"`).
    pub udp: Option<SocketAddr>,
    /// TCP address for syslog streams, framed by octet counting or newlines (RFC 6587).
    pub tcp: Option<SocketAddr>,
    /// TCP address for JSON lines (one object per line) from log shippers.
    pub json_tcp: Option<SocketAddr>,
    /// Longest message (line, frame or datagram) accepted, in bytes; longer ones are counted
    /// as refused inputs and dropped.
    #[serde(default = "default_syslog_max_line")]
    pub max_line_bytes: usize,
    /// Most TCP connections open at once (both TCP listeners together); more wait to be
    /// accepted.
    #[serde(default = "default_syslog_max_connections")]
    pub max_connections: usize,
}

fn default_syslog_max_line() -> usize {
    64 * 1024
}
fn default_syslog_max_connections() -> usize {
    1024
}

impl SyslogBridgeConfig {
    /// Checks the listeners and limits.
    fn validate(&self) -> Result<(), String> {
        if self.udp.is_none() && self.tcp.is_none() && self.json_tcp.is_none() {
            return Err(
                "set at least one of udp, tcp and json_tcp (e.g. udp = \"127.0.0.1:5514\")".into(),
            );
        }
        if self.max_line_bytes < 480 || self.max_line_bytes > 16 * 1024 * 1024 {
            return Err(format!(
                "max_line_bytes {}: expected 480 (RFC 3164's minimum) to 16 MiB",
                self.max_line_bytes
            ));
        }
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        Ok(())
    }
}

/// One Gerrit server streamed over SSH (`gerrit stream-events`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GerritBridgeConfig {
    /// The bridge's name: one topic level (letters, digits, `-`, `_`, `.`), unique among the
    /// bridges. Names the publisher (`bridge:<name>`), the status topic
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
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Longest delay between reconnection attempts, in seconds (each delay gets up to 20%
    /// random jitter).
    #[serde(default = "default_backoff_max_secs")]
    pub backoff_max_secs: u64,
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
fn default_backoff_initial_ms() -> u64 {
    1000
}
fn default_backoff_max_secs() -> u64 {
    60
}

/// `[bridge.webhooks]`: `POST /hooks/github`, `/hooks/gitlab`, `/hooks/gitea` on the HTTP
/// listener. A source without a table is not served (404).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// GitHub: `X-Hub-Signature-256` (HMAC-SHA256 of the body with the secret).
    pub github: Option<WebhookSourceConfig>,
    /// GitLab: `X-Gitlab-Token` (the secret itself).
    pub gitlab: Option<WebhookSourceConfig>,
    /// Gitea and Forgejo: `X-Gitea-Signature` / `X-Forgejo-Signature` (HMAC-SHA256, hex).
    pub gitea: Option<WebhookSourceConfig>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            max_body_bytes: 1024 * 1024,
            github: None,
            gitlab: None,
            gitea: None,
        }
    }
}

/// The secret of one webhook source: `secret` or `secret_file`, exactly one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSourceConfig {
    /// The shared secret, as entered in the forge's webhook settings.
    pub secret: Option<String>,
    /// A file holding the secret (surrounding whitespace is ignored).
    pub secret_file: Option<PathBuf>,
}

/// Whether `name` can be a bridge name: one topic level of letters, digits, `-`, `_`, `.`.
pub fn valid_bridge_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl BridgesConfig {
    /// The names of the webhook sources that are configured, as bridge names.
    pub fn webhook_names(&self) -> Vec<&'static str> {
        let w = &self.webhooks;
        [
            (w.github.is_some(), "webhooks-github"),
            (w.gitlab.is_some(), "webhooks-gitlab"),
            (w.gitea.is_some(), "webhooks-gitea"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }

    /// Checks names, prefixes, host key settings and secrets.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the bridge and the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names: Vec<&str> = self.webhook_names();
        for gerrit in &self.gerrit {
            let bad = |message: String| ConfigError::Invalid {
                field: "bridge.gerrit",
                message: format!("bridge {:?}: {message}", gerrit.name),
            };
            if !valid_bridge_name(&gerrit.name) {
                return Err(bad(
                    "name must be 1 to 64 letters, digits, '-', '_' or '.' (it becomes a topic level)"
                        .into(),
                ));
            }
            if names.contains(&gerrit.name.as_str()) {
                return Err(bad(
                    "another bridge has this name; names must be unique".into()
                ));
            }
            names.push(&gerrit.name);
            if gerrit.host.trim().is_empty() || gerrit.user.trim().is_empty() {
                return Err(bad("host and user must not be empty".into()));
            }
            match (&gerrit.known_hosts, &gerrit.host_key_fingerprint) {
                (None, None) => {
                    return Err(bad(
                        "set known_hosts (a file, e.g. from `ssh-keyscan -p 29418 HOST`) or \
                         host_key_fingerprint (\"SHA256:...\" as `ssh-keygen -lf` prints it): \
                         unknown host keys are refused"
                            .into(),
                    ))
                }
                (Some(_), Some(_)) => {
                    return Err(bad(
                        "set only one of known_hosts and host_key_fingerprint".into()
                    ))
                }
                (None, Some(fingerprint)) => {
                    let digest = fingerprint.strip_prefix("SHA256:").unwrap_or("");
                    if digest.len() != 43 {
                        return Err(bad(format!(
                            "host_key_fingerprint {fingerprint:?}: expected \"SHA256:\" and 43 \
                             base64 characters, as `ssh-keygen -lf KEY` prints"
                        )));
                    }
                }
                (Some(_), None) => {}
            }
            let prefix = &gerrit.topic_prefix;
            if prefix.is_empty()
                || prefix.ends_with('/')
                || prefix.starts_with('$')
                || prefix.contains(['+', '#', '\0'])
            {
                return Err(bad(format!(
                    "topic_prefix {prefix:?}: expected topic levels without wildcards, not \
                     starting with '$' or ending with '/' (e.g. \"gerrit\")"
                )));
            }
            if gerrit.command.trim().is_empty() {
                return Err(bad("command must not be empty".into()));
            }
            if let Some(url) = &gerrit.events_log_url {
                if !url.starts_with("http://") {
                    return Err(bad(format!(
                        "events_log_url {url:?}: expected an http:// URL (for https, put a TLS \
                         proxy such as stunnel or nginx in front)"
                    )));
                }
            }
            if gerrit.events_log_user.is_some() != gerrit.events_log_password_file.is_some() {
                return Err(bad(
                    "events_log_user and events_log_password_file go together".into(),
                ));
            }
            if gerrit.keepalive_secs == 0 || gerrit.keepalive_max == 0 {
                return Err(bad(
                    "keepalive_secs and keepalive_max must be at least 1".into()
                ));
            }
            if gerrit.backoff_initial_ms == 0
                || gerrit.backoff_max_secs == 0
                || gerrit.backoff_initial_ms > gerrit.backoff_max_secs.saturating_mul(1000)
            {
                return Err(bad(
                    "backoff_initial_ms must be at least 1 and at most backoff_max_secs".into(),
                ));
            }
        }
        for syslog in &self.syslog {
            let bad = |message: String| ConfigError::Invalid {
                field: "bridge.syslog",
                message: format!("bridge {:?}: {message}", syslog.name),
            };
            if !valid_bridge_name(&syslog.name) {
                return Err(bad(
                    "name must be 1 to 64 letters, digits, '-', '_' or '.' (it becomes a topic level)"
                        .into(),
                ));
            }
            if names.contains(&syslog.name.as_str()) {
                return Err(bad(
                    "another bridge has this name; names must be unique".into()
                ));
            }
            names.push(&syslog.name);
            syslog.validate().map_err(bad)?;
        }
        for mail in &self.mail {
            let bad = |message: String| ConfigError::Invalid {
                field: "bridge.mail",
                message: format!("bridge {:?}: {message}", mail.name),
            };
            if !valid_bridge_name(&mail.name) {
                return Err(bad(
                    "name must be 1 to 64 letters, digits, '-', '_' or '.' (it becomes a topic level)"
                        .into(),
                ));
            }
            if names.contains(&mail.name.as_str()) {
                return Err(bad(
                    "another bridge has this name; names must be unique".into()
                ));
            }
            names.push(&mail.name);
            mail.validate().map_err(bad)?;
        }
        let w = &self.webhooks;
        if w.max_body_bytes == 0 {
            return Err(ConfigError::Invalid {
                field: "bridge.webhooks.max_body_bytes",
                message: "must be at least 1".into(),
            });
        }
        for (field, source) in [
            ("bridge.webhooks.github", &w.github),
            ("bridge.webhooks.gitlab", &w.gitlab),
            ("bridge.webhooks.gitea", &w.gitea),
        ] {
            let Some(source) = source else { continue };
            match (&source.secret, &source.secret_file) {
                (Some(secret), None) if !secret.is_empty() => {}
                (None, Some(_)) => {}
                _ => {
                    return Err(ConfigError::Invalid {
                        field,
                        message: "set exactly one of secret and secret_file (a non-empty \
                                  shared secret is required: unsigned webhooks are refused)"
                            .into(),
                    })
                }
            }
        }
        Ok(())
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
        let mqtts = self.mqtts_listen()?;
        self.mqtt_listen()?;
        self.http_listen()?;
        self.log.retention_rules()?;
        self.bridge.validate()?;
        let https = self.https_listen()?;
        self.trusted_proxies()?;
        let path = &self.http.ws_path;
        if !path.starts_with('/') || path == "/" || path == "/healthz" || path == "/metrics" {
            return Err(ConfigError::Invalid {
                field: "http.ws_path",
                message: format!(
                    "{path:?}: expected a path starting with '/' other than \"/\", \"/healthz\" and \"/metrics\" (e.g. \"/mqtt\")"
                ),
            });
        }
        let tls_wanted = mqtts != Listen::Off || https != Listen::Off;
        if tls_wanted && (self.tls.cert.is_none() || self.tls.key.is_none()) {
            return Err(ConfigError::Invalid {
                field: "tls.cert, tls.key",
                message:
                    "mqtts.listen or https.listen is on, so [tls] needs both `cert` and `key` \
                          (PEM files; or --tls-cert and --tls-key)"
                        .into(),
            });
        }
        if self.tls.client_cert_required && self.tls.client_ca.is_none() {
            return Err(ConfigError::Invalid {
                field: "tls.client_cert_required",
                message: "client certificates are required but tls.client_ca is not set: \
                          give the PEM file of the CA that signs them"
                    .into(),
            });
        }
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
        limit("send_queue", l.send_queue, l.send_queue >= 1, "at least 1")?;
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

    /// The MQTT over TLS listener address.
    ///
    /// # Errors
    /// [`ConfigError::Address`] for a malformed address.
    pub fn mqtts_listen(&self) -> Result<Listen, ConfigError> {
        Listen::parse("mqtts.listen", &self.mqtts.listen)
    }

    /// The HTTPS listener address.
    ///
    /// # Errors
    /// [`ConfigError::Address`] for a malformed address.
    pub fn https_listen(&self) -> Result<Listen, ConfigError> {
        Listen::parse("https.listen", &self.https.listen)
    }

    /// The parsed `http.trusted_proxies`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for an entry that is not an address or CIDR block.
    pub fn trusted_proxies(&self) -> Result<Vec<IpBlock>, ConfigError> {
        self.http
            .trusted_proxies
            .iter()
            .map(|p| IpBlock::parse(p))
            .collect()
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
    fn topic_levels_are_counted_with_empty_levels_and_zero_lifts_the_limit() {
        let limits = Limits {
            max_topic_levels: 3,
            ..Limits::default()
        };
        for fits in ["a", "a/b/c", "/a/", "+/+/#"] {
            assert_eq!(limits.topic_too_deep(fits), None, "{fits}");
        }
        assert_eq!(limits.topic_too_deep("a/b/c/d"), Some(4));
        assert_eq!(limits.topic_too_deep("///"), Some(4));
        let deep = "/".repeat(60_000);
        assert_eq!(limits.topic_too_deep(&deep), Some(60_001));
        let unlimited = Limits {
            max_topic_levels: 0,
            ..Limits::default()
        };
        assert_eq!(unlimited.topic_too_deep(&deep), None);
        assert_eq!(Limits::default().max_topic_levels, 128);
    }

    #[test]
    fn example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/firehose.example.toml");
        let config = Config::load(&path).expect("example config loads");
        assert_eq!(
            config.mqtt_listen().expect("mqtt"),
            Listen::On("0.0.0.0:1883".parse().expect("addr"))
        );
    }

    #[test]
    fn production_config_loads() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/firehose.production.toml");
        let config = Config::load(&path).expect("production config loads");
        let port = |listen: Result<Listen, ConfigError>| match listen.expect("listen") {
            Listen::On(addr) => addr.port(),
            Listen::Off => 0,
        };
        assert_eq!(port(config.mqtt_listen()), 1883);
        assert_eq!(port(config.mqtts_listen()), 8883);
        assert_eq!(port(config.http_listen()), 80);
        assert_eq!(port(config.https_listen()), 443);
        assert!(config.tls.cert.is_some() && config.tls.key.is_some());
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
    fn tls_listener_without_cert_names_the_fields() {
        let mut config = Config::default();
        config.mqtts.listen = "127.0.0.1:0".into();
        let err = config.validate().expect_err("no cert");
        assert!(err.to_string().contains("tls.cert"), "{err}");
        config.tls.cert = Some("cert.pem".into());
        config.tls.key = Some("key.pem".into());
        config.validate().expect("cert and key given");
        config.tls.client_cert_required = true;
        let err = config.validate().expect_err("no client CA");
        assert!(err.to_string().contains("tls.client_ca"), "{err}");
    }

    #[test]
    fn sections_parse() {
        let config: Config = toml::from_str(
            "[mqtt]\nlisten = \"127.0.0.1:1\"\nproxy_protocol = true\n\
             [http]\nlisten = \"off\"\nws_path = \"/ws\"\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
        )
        .expect("parses");
        config.validate().expect("valid");
        assert!(config.mqtt.proxy_protocol);
        assert_eq!(config.http.ws_path, "/ws");
        assert_eq!(config.mqtts_listen().expect("mqtts"), Listen::Off);
        let bad: Config =
            toml::from_str("[http]\nlisten = \"off\"\nws_path = \"mqtt\"\n").expect("parses");
        let err = bad.validate().expect_err("relative path");
        assert!(err.to_string().contains("http.ws_path"), "{err}");
    }

    #[test]
    fn ip_blocks() {
        let block = IpBlock::parse("10.1.0.0/16").expect("block");
        assert!(block.contains("10.1.2.3".parse().expect("ip")));
        assert!(!block.contains("10.2.0.1".parse().expect("ip")));
        assert!(block.contains("::ffff:10.1.0.9".parse().expect("mapped")));
        let one = IpBlock::parse("127.0.0.1").expect("address");
        assert!(one.contains("127.0.0.1".parse().expect("ip")));
        assert!(!one.contains("127.0.0.2".parse().expect("ip")));
        let v6 = IpBlock::parse("fd00::/8").expect("v6");
        assert!(v6.contains("fd12::1".parse().expect("ip")));
        assert!(!v6.contains("fe80::1".parse().expect("ip")));
        assert!(IpBlock::parse("0.0.0.0/0")
            .expect("all")
            .contains("192.0.2.1".parse().expect("ip")));
        let err = IpBlock::parse("10.0.0.0/33").expect_err("bad prefix");
        assert!(err.to_string().contains("http.trusted_proxies"), "{err}");
        assert!(IpBlock::parse("proxy.example").is_err());
    }

    #[test]
    fn durations_and_retention_rules() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("x1h").is_err());
        assert!(parse_duration("1y").is_err());
        let config: Config = toml::from_str(
            "[log]\ndurability = \"power-loss\"\n[[log.retention]]\nfilter = \"logs/#\"\nmax_age = \"2d\"\n",
        )
        .expect("parses");
        assert_eq!(config.log.durability, Durability::PowerLoss);
        let rules = config.log.retention_rules().expect("valid");
        assert_eq!(rules[0].max_age, Some(Duration::from_secs(2 * 86_400)));
        let bad: Config =
            toml::from_str("[[log.retention]]\nfilter = \"logs/#\"\n").expect("parses");
        assert!(bad
            .validate()
            .expect_err("no limit")
            .to_string()
            .contains("logs/#"));
    }

    #[test]
    fn mail_bridges_parse_and_validate() {
        let text = "[[bridge.mail]]\nname = \"lp\"\nhost = \"127.0.0.1\"\nuser = \"u\"\n\
                    password = \"p\"\n";
        let config: Config = toml::from_str(text).expect("parses");
        config.validate().expect("valid");
        let mail = &config.bridge.mail[0];
        assert_eq!(mail.mailbox, "INBOX");
        assert_eq!(mail.port(), 143);
        assert_eq!(mail.on_processed, OnProcessed::Seen);
        assert_eq!(mail.idle_secs, 1500);
        let check = |change: &dyn Fn(&mut Config), needle: &str| {
            let mut bad = config.clone();
            change(&mut bad);
            let error = bad.validate().expect_err(needle).to_string();
            assert!(error.contains(needle), "{error}");
        };
        check(
            &|c| c.bridge.mail[0].password = None,
            "exactly one of password",
        );
        check(
            &|c| c.bridge.mail[0].password_file = Some("/p".into()),
            "exactly one of password",
        );
        check(&|c| c.bridge.mail[0].idle_secs = 0, "idle_secs");
        check(&|c| c.bridge.mail.push(c.bridge.mail[0].clone()), "unique");
        let delete = format!("{text}on_processed = \"delete\"\ntls = true\n");
        let config: Config = toml::from_str(&delete).expect("parses");
        assert_eq!(config.bridge.mail[0].on_processed, OnProcessed::Delete);
        assert_eq!(config.bridge.mail[0].port(), 993);
        assert!(toml::from_str::<Config>(&format!("{text}on_processed = \"x\"\n")).is_err());
    }

    #[test]
    fn syslog_bridges_parse_and_validate() {
        let text = "[[bridge.syslog]]\nname = \"logs\"\nudp = \"127.0.0.1:5514\"\n";
        let config: Config = toml::from_str(text).expect("parses");
        config.validate().expect("valid");
        let syslog = &config.bridge.syslog[0];
        assert_eq!(syslog.max_line_bytes, 65536);
        assert_eq!(syslog.tcp, None);
        let check = |edit: &dyn Fn(&mut Config), expected: &str| {
            let mut bad = config.clone();
            edit(&mut bad);
            let err = bad.validate().expect_err(expected).to_string();
            assert!(err.contains(expected), "{err}");
        };
        check(&|c| c.bridge.syslog[0].udp = None, "at least one of udp");
        check(
            &|c| c.bridge.syslog[0].max_line_bytes = 10,
            "max_line_bytes",
        );
        check(&|c| c.bridge.syslog[0].name = "a b".into(), "name must be");
        check(
            &|c| c.bridge.syslog.push(c.bridge.syslog[0].clone()),
            "unique",
        );
        assert!(
            toml::from_str::<Config>("[[bridge.syslog]]\nname = \"x\"\nudp = \"nope\"\n").is_err()
        );
    }

    #[test]
    fn bridges_parse_and_validate() {
        let text = r#"
[[bridge.gerrit]]
name = "review"
host = "review.example.org"
user = "firehose"
private_key = "/etc/firehose/id_ed25519"
host_key_fingerprint = "SHA256:huPqT1PMM1W2RS0oXTRGwUr/sEzzThQ5fR7OvF7HWws"

[bridge.webhooks.github]
secret = "s"
"#;
        let config: Config = toml::from_str(text).expect("parses");
        config.validate().expect("valid");
        let gerrit = &config.bridge.gerrit[0];
        assert_eq!(gerrit.port, 29418);
        assert_eq!(gerrit.topic_prefix, "gerrit");
        assert_eq!(gerrit.command, "gerrit stream-events");
        assert_eq!(config.bridge.webhook_names(), ["webhooks-github"]);

        let check = |edit: &dyn Fn(&mut Config), expected: &str| {
            let mut bad = config.clone();
            edit(&mut bad);
            let err = bad.validate().expect_err(expected).to_string();
            assert!(err.contains(expected), "{err}");
        };
        check(&|c| c.bridge.gerrit[0].name = "a/b".into(), "name must be");
        check(
            &|c| c.bridge.gerrit[0].name = "webhooks-github".into(),
            "unique",
        );
        check(
            &|c| c.bridge.gerrit[0].host_key_fingerprint = None,
            "unknown host keys are refused",
        );
        check(
            &|c| c.bridge.gerrit[0].host_key_fingerprint = Some("MD5:aa".into()),
            "host_key_fingerprint",
        );
        check(
            &|c| c.bridge.gerrit[0].topic_prefix = "g/#".into(),
            "topic_prefix",
        );
        check(
            &|c| c.bridge.gerrit[0].events_log_url = Some("ftp://x".into()),
            "events_log_url",
        );
        check(
            &|c| {
                if let Some(github) = &mut c.bridge.webhooks.github {
                    github.secret = None;
                }
            },
            "bridge.webhooks.github",
        );
        let err = toml::from_str::<Config>("[[bridge.gerrit]]\nname = \"x\"\nhots = \"y\"\n")
            .expect_err("unknown key");
        assert!(err.to_string().contains("hots"), "{err}");
    }

    #[test]
    fn zero_send_queue_is_refused() {
        let mut config = Config::default();
        config.limits.send_queue = 0;
        assert!(config.validate().is_err());
    }
}
