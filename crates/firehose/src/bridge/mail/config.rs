//! `[[bridge.mail]]`: one IMAP mailbox, its checks, and how it builds.
//!
//! Depends on the bridge framework ([`crate::bridge`]) only.

use std::path::PathBuf;

use serde::Deserialize;

use crate::bridge::config::check_backoff;
use crate::bridge::{BridgeConfig, BridgeContext, BridgeError, BuiltBridge};

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

/// One IMAP mailbox watched with IDLE: unseen Launchpad notifications become events as lpmqtt
/// published them (`launchpad/<project>/bug/<bug-number>`, `launchpad`), other mail only with
/// `publish_other_mail` (to `mail/<name>/...`); each message is marked seen (or deleted) once
/// its event is durable, or once it is dropped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailBridgeConfig {
    /// The bridge's name: one topic level, unique among the bridges of every kind (see
    /// [`GerritBridgeConfig::name`](crate::bridge::gerrit::GerritBridgeConfig::name)); other
    /// mail goes to `mail/<name>/...`.
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
    #[serde(default = "crate::bridge::config::default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Longest delay between reconnection attempts, in seconds.
    #[serde(default = "crate::bridge::config::default_backoff_max_secs")]
    pub backoff_max_secs: u64,
    /// Whether mail that is not a Launchpad notification is published (to
    /// `mail/<name>/<sender-domain>`). Off by default: a mailbox fed by a public MX receives
    /// whatever anyone sends, and publishing it to anonymous readers would leak private mail.
    /// Off, such mail is dropped, counted (`rejected`) and logged, and marked like published
    /// mail so that it is counted once.
    #[serde(default)]
    pub publish_other_mail: bool,
    /// Sender domains whose mail is considered; empty (the default) considers every sender.
    /// Compared with the domain of the first `From` address, case-insensitively; an entry
    /// also admits its subdomains (`launchpad.net` admits `bugs.launchpad.net`). Anyone can
    /// write any `From`: this narrows what is published, it authenticates nobody.
    #[serde(default)]
    pub sender_domains: Vec<String>,
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
}

impl BridgeConfig for MailBridgeConfig {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "mail"
    }

    /// Launchpad's topics, and `mail/<name>/#` only when other mail is published: what the
    /// bridge was not asked to publish, its identity may not publish either.
    fn topics(&self) -> Vec<String> {
        let mut topics = vec!["launchpad/#".into(), "launchpad".into()];
        if self.publish_other_mail {
            topics.push(format!("mail/{}/#", self.name));
        }
        topics
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
        for domain in &self.sender_domains {
            check_domain(domain)?;
        }
        check_backoff(self.backoff_initial_ms, self.backoff_max_secs)
    }

    fn build(&self, cx: BridgeContext) -> Result<BuiltBridge, BridgeError> {
        super::build(self, cx)
    }
}

/// Checks one `sender_domains` entry: a domain name, not an address or a pattern.
fn check_domain(domain: &str) -> Result<(), String> {
    let valid = !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "sender_domains entry {domain:?}: expected a domain name such as \
             \"bugs.launchpad.net\" (no '@', no wildcard: an entry admits its subdomains)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::config::tests::{assert_refused, Config};

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
        assert!(
            !mail.publish_other_mail,
            "other mail is off unless asked for"
        );
        assert!(mail.sender_domains.is_empty());
        assert_eq!(mail.topics(), ["launchpad/#", "launchpad"]);
        let check =
            |change: &dyn Fn(&mut Config), needle: &str| assert_refused(&config, change, needle);
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
        for bad in ["", "*.launchpad.net", "bugs@launchpad.net", "a..b", "-a b"] {
            check(
                &|c| c.bridge.mail[0].sender_domains = vec![bad.into()],
                "sender_domains entry",
            );
        }
        let other =
            format!("{text}publish_other_mail = true\nsender_domains = [\"bugs.launchpad.net\"]\n");
        let config: Config = toml::from_str(&other).expect("parses");
        config.validate().expect("valid");
        assert_eq!(
            config.bridge.mail[0].topics(),
            ["launchpad/#", "launchpad", "mail/lp/#"]
        );
        let delete = format!("{text}on_processed = \"delete\"\ntls = true\n");
        let config: Config = toml::from_str(&delete).expect("parses");
        assert_eq!(config.bridge.mail[0].on_processed, OnProcessed::Delete);
        assert_eq!(config.bridge.mail[0].port(), 993);
        assert!(toml::from_str::<Config>(&format!("{text}on_processed = \"x\"\n")).is_err());
    }
}
