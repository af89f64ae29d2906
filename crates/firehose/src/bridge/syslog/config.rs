//! `[[bridge.syslog]]`: one syslog bridge's listeners and limits, their checks, and how it
//! builds.
//!
//! Depends on the bridge framework ([`crate::bridge`]) only.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::bridge::{BridgeConfig, BridgeContext, BridgeError, BuiltBridge};

/// One syslog bridge: listeners for RFC 3164 / RFC 5424 messages over UDP and TCP (RFC 6587
/// octet counting or newline framing) and for JSON lines over TCP, publishing to
/// `logs/<host>/<app>`. At least one listener is required; port 0 binds a free port (logged).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogBridgeConfig {
    /// The bridge's name: one topic level, unique among the bridges of every kind (see
    /// [`GerritBridgeConfig::name`](crate::bridge::gerrit::GerritBridgeConfig::name)).
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

impl BridgeConfig for SyslogBridgeConfig {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "syslog"
    }

    fn topics(&self) -> Vec<String> {
        vec![format!("{}/#", super::TOPIC_ROOT)]
    }

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

    fn build(&self, cx: BridgeContext) -> Result<BuiltBridge, BridgeError> {
        super::build(self, cx)
    }
}

#[cfg(test)]
mod tests {
    use crate::bridge::config::tests::{assert_refused, Config};

    #[test]
    fn syslog_bridges_parse_and_validate() {
        let text = "[[bridge.syslog]]\nname = \"logs\"\nudp = \"127.0.0.1:5514\"\n";
        let config: Config = toml::from_str(text).expect("parses");
        config.validate().expect("valid");
        let syslog = &config.bridge.syslog[0];
        assert_eq!(syslog.max_line_bytes, 65536);
        assert_eq!(syslog.tcp, None);
        let check =
            |edit: &dyn Fn(&mut Config), expected: &str| assert_refused(&config, edit, expected);
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
}
