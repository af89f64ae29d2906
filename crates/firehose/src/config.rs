//! The configuration: a TOML file, overridden by `FIREHOSE_*` environment variables and flags.
//!
//! A leaf module: plain data with defaults and validation. Every field is documented because the
//! example config (`docs/firehose.example.toml`) and the operator's expectations are built on it.
//! Depends on [`crate::topic`] only (to check retention filters).
//!
//! It defines the settings of the lower layers: the broker's [`Limits`], the listeners', and
//! the store's ([`Durability`], [`RetentionRule`]), so that those modules import config and
//! never the reverse. The `[bridge]` section is the one exception: each bridge owns its
//! settings in its own folder (`bridge/<kind>/config.rs`), which a leaf cannot name, so
//! [`Config`] takes that section's type as a parameter ([`BridgeSection`]) and `cli` names the
//! whole file's type (`Config<bridge::BridgesConfig>`). The file is still parsed in one pass,
//! so an unknown or mistyped key anywhere is reported with its line and column.

use std::fmt::Debug;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

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

/// The `[bridge]` section as config sees it: something that parses, has a default (no
/// bridges) and checks itself. Its type lives in `crate::bridge` (layer 4), beside the
/// bridges whose settings it lists.
pub trait BridgeSection: Debug + Clone + Default + DeserializeOwned {
    /// Checks every bridge's settings; called by [`Config::validate`].
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the section (`bridge.<kind>`) and the bridge.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// The whole configuration, as the file spells it; `B` is the `[bridge]` section
/// ([`BridgeSection`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default, bound(deserialize = "B: BridgeSection"))]
pub struct Config<B> {
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
    /// Bridges that turn foreign events (Gerrit, webhooks, syslog, mail) into publishes.
    pub bridge: B,
}

impl<B: BridgeSection> Default for Config<B> {
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
                body_timeout_secs: default_body_timeout_secs(),
                max_connections: default_http_max_connections(),
                max_connections_per_ip: default_http_max_connections_per_ip(),
                max_history_filters: default_max_history_filters(),
                history_scan_budget: default_history_scan_budget(),
                max_page_bytes: default_max_page_bytes(),
                max_history_reads: default_max_history_reads(),
                max_history_reads_per_ip: default_max_history_reads_per_ip(),
                max_streams_per_ip: default_max_streams_per_ip(),
                allowed_origins: Vec::new(),
            },
            https: ListenerConfig {
                listen: "off".into(),
            },
            tls: TlsConfig::default(),
            limits: Limits::default(),
            sys: SysConfig::default(),
            log: LogConfig::default(),
            bridge: B::default(),
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
    /// Seconds a request has to send its whole body, counted from the end of its headers: a
    /// total deadline, so that a body trickled a byte at a time ends too. Beyond it the
    /// request gets 408 (or 400 from a webhook) and its connection is closed.
    #[serde(default = "default_body_timeout_secs")]
    pub body_timeout_secs: u64,
    /// Most HTTP(S) connections open at once, WebSocket and SSE streams included (they live
    /// on their connection). A connection beyond it is closed as soon as it is accepted.
    /// 0 = no limit.
    #[serde(default = "default_http_max_connections")]
    pub max_connections: u64,
    /// Most HTTP(S) connections from one client address (IPv6: one /64), closed at accept
    /// beyond it. Behind a trusted proxy the client address is known only per request, so
    /// there it bounds the requests in progress of one address (streams included), and the
    /// one beyond gets 503 with `Retry-After`. 0 = no limit.
    #[serde(default = "default_http_max_connections_per_ip")]
    pub max_connections_per_ip: u64,
    /// Most `topic=` filters in one history query or SSE stream; more get 400.
    #[serde(default = "default_max_history_filters")]
    pub max_history_filters: u64,
    /// The work one history request may do: events examined times filters (at least one).
    /// A page that reaches it ends early, with `more` and `next_after` to continue from; an
    /// SSE stream reads in steps of at most this.
    #[serde(default = "default_history_scan_budget")]
    pub history_scan_budget: u64,
    /// Bytes of topics and payloads one history page (or one read of an SSE stream) holds: the
    /// page ends early, with `more` and `next_after`, after the event that reaches it (so one
    /// event always fits). Bounds the memory one request takes whatever `limit` asks.
    #[serde(default = "default_max_page_bytes")]
    pub max_page_bytes: u64,
    /// Most history reads (`/api/v1/events...`) in progress at once, answers being sent
    /// included (each holds its page, up to `max_page_bytes`); more get 503 with
    /// `Retry-After`. 0 = no limit.
    #[serde(default = "default_max_history_reads")]
    pub max_history_reads: u64,
    /// Most history reads in progress at once for one client address, answers being sent
    /// included; more get 429 with `Retry-After`. 0 = no limit.
    #[serde(default = "default_max_history_reads_per_ip")]
    pub max_history_reads_per_ip: u64,
    /// Most SSE streams (`/api/v1/stream`) open at once for one client address; more get 429
    /// with `Retry-After`. 0 = no limit.
    #[serde(default = "default_max_streams_per_ip")]
    pub max_streams_per_ip: u64,
    /// Origins (`https://dashboard.example.org`) whose pages may make state-changing requests
    /// (HTTP publish) from a browser, besides Firehose's own. Empty: none.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

fn default_ws_path() -> String {
    "/mqtt".into()
}

fn default_body_timeout_secs() -> u64 {
    30
}

fn default_http_max_connections() -> u64 {
    10_000
}

fn default_http_max_connections_per_ip() -> u64 {
    1024
}

fn default_max_history_filters() -> u64 {
    100
}

fn default_history_scan_budget() -> u64 {
    1_000_000
}

fn default_max_page_bytes() -> u64 {
    4 * 1024 * 1024
}

fn default_max_history_reads() -> u64 {
    32
}

fn default_max_history_reads_per_ip() -> u64 {
    4
}

fn default_max_streams_per_ip() -> u64 {
    32
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

/// Most `http.max_history_filters` allowed: enough for any real consumer, and a query URL with
/// that many filters still fits the HTTP listener's 64 KiB of request head.
pub const MAX_HISTORY_FILTERS: u64 = 1000;

/// An origin as browsers send it in `Origin` (`https://host` or `http://host:8080`), lower-cased;
/// `None` for anything else (a path, a query, no scheme, `null`).
pub fn parse_origin(text: &str) -> Option<String> {
    let text = text.trim().to_ascii_lowercase();
    let (scheme, authority) = text.split_once("://")?;
    let scheme_ok = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    let authority_ok = !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    (scheme_ok && authority_ok).then_some(text)
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
    /// Seconds a new connection has from its first byte to the end of its authentication:
    /// sending CONNECT, and the password check (with its wait for a free check). One deadline
    /// over both, so a client can neither trickle its CONNECT nor park in the queue of checks.
    pub connect_timeout_secs: u64,
    /// Password checks (argon2, tens of milliseconds of a core each) waiting or running at
    /// once; a login beyond them is answered at once with CONNACK "Server unavailable"
    /// (0x88; MQTT 3.1.1 return code 3) instead of waiting. Half of them at most go to logins
    /// from an address, or for a user name, with recent failures.
    pub max_password_checks: u32,
    /// Password checks waiting or running at once for one client address (IPv6: one /64),
    /// so that one address cannot fill the queue of checks; refused like
    /// `max_password_checks`. Logins with the same name and password share one check.
    pub max_password_checks_per_address: u32,
    /// Failed password checks an address may have before it is backed off; for a user name,
    /// the addresses with failed checks for it (each counted once an hour).
    pub auth_failures_before_backoff: u32,
    /// The first backoff, in seconds: while an address or user name is backed off its logins
    /// are answered "Server busy" (0x89; 3.1.1: 3) without a password check. Each further
    /// failure doubles it, up to `auth_backoff_max_secs`.
    pub auth_backoff_initial_secs: u64,
    /// The longest backoff, in seconds; a record quiet this long after its backoff ended is
    /// forgotten.
    pub auth_backoff_max_secs: u64,
    /// Records kept of each kind: addresses with failures, user names with failures, and
    /// addresses a user logged in from (which the user's own backoff spares). Beyond it the
    /// record whose backoff ends first is forgotten, so memory stays bounded.
    pub max_auth_records: u32,
    /// Highest keep alive, in seconds, granted to clients (MQTT 5 Server Keep Alive when the
    /// client asks for more or for none). 0 = accept whatever the client asks.
    pub max_keep_alive: u16,
    /// Longest session expiry, in seconds, granted to MQTT 5 clients; 3.1.1 persistent sessions
    /// get this too.
    pub max_session_expiry_secs: u32,
    /// Most persistent sessions anonymous clients may hold at once, connected or not; a further
    /// one is refused at CONNECT (MQTT 5: 0x89 Server busy; 3.1.1: return code 3). Sessions of
    /// users are not counted. 0 = no limit.
    pub max_anonymous_sessions: u64,
    /// Most persistent sessions anonymous clients may create from one address (an IPv4
    /// address, or an IPv6 /64: one host's share); a further one is refused at CONNECT (MQTT 5:
    /// 0x97 Quota exceeded; 3.1.1: return code 3). 0 = no limit.
    pub max_anonymous_sessions_per_ip: u64,
    /// Longest session expiry, in seconds, granted to anonymous clients (MQTT 5: CONNACK says
    /// the Session Expiry Interval granted): how long the session of a client id never used
    /// again holds its place in the two quotas above. 0: anonymous sessions end with their
    /// connection.
    pub max_anonymous_session_expiry_secs: u32,
    /// Most bytes one filter of an anonymous client is charged: its length three times (the
    /// session's copy, the subscription table's and its levels) and 512 bytes per level and
    /// once more (what a level of the subscription table takes). A larger filter gets SUBACK
    /// 0x97 (3.1.1: 0x80). 0 = no limit.
    pub max_anonymous_filter_bytes: u64,
    /// Most bytes the filters of one anonymous session are charged in all (as
    /// `max_anonymous_filter_bytes` charges them); beyond, SUBACK 0x97 (3.1.1: 0x80). 0 = no
    /// limit.
    pub max_anonymous_session_filter_bytes: u64,
    /// Most subscriptions anonymous clients hold in all, broker-wide, persistent sessions or
    /// not; beyond, SUBACK 0x97 (3.1.1: 0x80). Users' subscriptions are not counted. 0 = no
    /// limit.
    pub max_anonymous_subscriptions: u64,
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
            max_password_checks: 64,
            max_password_checks_per_address: 2,
            auth_failures_before_backoff: 3,
            auth_backoff_initial_secs: 1,
            auth_backoff_max_secs: 60,
            max_auth_records: 10_000,
            max_keep_alive: 0,
            max_session_expiry_secs: 7 * 24 * 3600,
            max_anonymous_sessions: 1000,
            max_anonymous_sessions_per_ip: 32,
            max_anonymous_session_expiry_secs: 24 * 3600,
            max_anonymous_filter_bytes: 4096,
            max_anonymous_session_filter_bytes: 64 * 1024,
            max_anonymous_subscriptions: 25_000,
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

/// How far an acknowledged event is safe: the store's setting, chosen in `[log]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Survives a crash of the process (`kill -9`): SQLite WAL with `synchronous=NORMAL`.
    #[default]
    Process,
    /// Also survives power loss or an OS crash: `synchronous=FULL` (an fsync per commit).
    PowerLoss,
}

/// A retention rule, checked, as the store applies it: events whose topic matches `filter`
/// are deleted when older than `max_age`, or beyond the newest `max_count` / `max_bytes` of
/// that filter's events. Made from a [`RetentionConfig`] by [`LogConfig::retention_rules`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRule {
    /// MQTT topic filter the rule applies to (e.g. `logs/#`). The first matching rule wins.
    pub filter: String,
    /// Delete events older than this.
    pub max_age: Option<Duration>,
    /// Keep at most this many events matching the filter.
    pub max_count: Option<u64>,
    /// Keep at most this many payload+topic bytes of events matching the filter.
    pub max_bytes: Option<u64>,
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

impl<B: BridgeSection> Config<B> {
    /// Reads and validates a config file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and what is wrong in it.
    pub fn load(path: &Path) -> Result<Config<B>, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config<B> = toml::from_str(&text).map_err(|e| ConfigError::Parse {
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
        // The [http] limits (they apply to [https] too).
        let h = &self.http;
        limit(
            "http.body_timeout_secs",
            h.body_timeout_secs,
            (1..=3600).contains(&h.body_timeout_secs),
            "between 1 and 3600",
        )?;
        limit(
            "http.max_connections_per_ip",
            h.max_connections_per_ip,
            h.max_connections == 0 || h.max_connections_per_ip <= h.max_connections,
            "at most http.max_connections (0 = no limit)",
        )?;
        limit(
            "http.max_history_filters",
            h.max_history_filters,
            (1..=MAX_HISTORY_FILTERS).contains(&h.max_history_filters),
            "between 1 and 1000",
        )?;
        limit(
            "http.history_scan_budget",
            h.history_scan_budget,
            (1000..=1_000_000_000).contains(&h.history_scan_budget),
            "between 1000 and 1000000000",
        )?;
        limit(
            "http.max_page_bytes",
            h.max_page_bytes,
            h.max_page_bytes >= 1024,
            "at least 1024",
        )?;
        self.allowed_origins()?;
        limit(
            "max_password_checks",
            l.max_password_checks.into(),
            l.max_password_checks >= 1,
            "at least 1",
        )?;
        limit(
            "max_password_checks_per_address",
            l.max_password_checks_per_address.into(),
            l.max_password_checks_per_address >= 1,
            "at least 1",
        )?;
        limit(
            "auth_backoff_initial_secs",
            l.auth_backoff_initial_secs,
            (1..=86_400).contains(&l.auth_backoff_initial_secs),
            "between 1 and 86400",
        )?;
        limit(
            "auth_backoff_max_secs",
            l.auth_backoff_max_secs,
            (l.auth_backoff_initial_secs..=86_400).contains(&l.auth_backoff_max_secs),
            "between auth_backoff_initial_secs and 86400",
        )?;
        limit(
            "max_auth_records",
            l.max_auth_records.into(),
            l.max_auth_records >= 1,
            "at least 1",
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

    /// The parsed `http.allowed_origins`, each as `scheme://host[:port]` in lower case (the
    /// form browsers send in `Origin`).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for an entry that is not such an origin.
    pub fn allowed_origins(&self) -> Result<Vec<String>, ConfigError> {
        self.http
            .allowed_origins
            .iter()
            .map(|origin| {
                parse_origin(origin).ok_or_else(|| ConfigError::Invalid {
                    field: "http.allowed_origins",
                    message: format!(
                        "{origin:?} is not an origin: expected scheme://host or scheme://host:port \
                         with no path (e.g. \"https://dashboard.example.org\")"
                    ),
                })
            })
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

    /// The file's type here, with a `[bridge]` section that takes anything: the bridges' own
    /// settings are tested beside them (`crate::bridge`), and the example configs where the
    /// whole file's type is named (`cli::serve`).
    type Config = super::Config<AnyBridges>;

    /// Any `[bridge]` section, read and ignored.
    #[derive(Debug, Clone, Default, Deserialize)]
    struct AnyBridges {}

    impl BridgeSection for AnyBridges {
        fn validate(&self) -> Result<(), ConfigError> {
            Ok(())
        }
    }

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
    fn http_limits_are_checked_and_named() {
        let config = Config::default();
        assert_eq!(config.http.body_timeout_secs, 30);
        assert_eq!(config.http.max_history_filters, 100);
        for (toml, field) in [
            ("body_timeout_secs = 0", "http.body_timeout_secs"),
            ("max_history_filters = 0", "http.max_history_filters"),
            ("max_history_filters = 1001", "http.max_history_filters"),
            ("history_scan_budget = 10", "http.history_scan_budget"),
            ("max_page_bytes = 10", "http.max_page_bytes"),
            (
                "max_connections = 10\nmax_connections_per_ip = 11",
                "http.max_connections_per_ip",
            ),
            (
                "allowed_origins = [\"https://a.example/path\"]",
                "http.allowed_origins",
            ),
            ("allowed_origins = [\"a.example\"]", "http.allowed_origins"),
        ] {
            let config: Config =
                toml::from_str(&format!("[http]\nlisten = \"off\"\n{toml}\n")).expect(toml);
            let err = config.validate().expect_err(toml).to_string();
            assert!(err.contains(field), "{toml}: {err}");
        }
        let config: Config = toml::from_str(
            "[http]\nlisten = \"off\"\nmax_connections = 0\nmax_connections_per_ip = 5\n\
             allowed_origins = [\"HTTPS://Dash.Example.org:8443\"]\n",
        )
        .expect("parses");
        config.validate().expect("0 lifts the total");
        assert_eq!(
            config.allowed_origins().expect("origins"),
            ["https://dash.example.org:8443"]
        );
    }

    #[test]
    fn the_example_config_shows_the_http_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/firehose.example.toml");
        let config = Config::load(&path).expect("example config loads");
        let (shown, default) = (&config.http, &Config::default().http);
        let limits = |h: &HttpListenerConfig| {
            [
                h.body_timeout_secs,
                h.max_connections,
                h.max_connections_per_ip,
                h.max_history_filters,
                h.history_scan_budget,
                h.max_page_bytes,
                h.max_history_reads,
                h.max_history_reads_per_ip,
                h.max_streams_per_ip,
            ]
        };
        assert_eq!(limits(shown), limits(default));
        assert_eq!(shown.allowed_origins, default.allowed_origins);
    }

    #[test]
    fn zero_send_queue_is_refused() {
        let mut config = Config::default();
        config.limits.send_queue = 0;
        assert!(config.validate().is_err());
    }
}
