//! The `[bridge]` section's machinery: what every kind of bridge shares. The list of kinds
//! itself is [`BridgesConfig`] in `bridge/mod.rs`, declared with
//! `bridge_kinds!`; each kind's tables and their checks are in its own folder
//! (`bridge/<kind>/config.rs`).
//!
//! Every bridge's name is checked here, once, whatever its kind: one topic level, and unique
//! among all bridges (a syslog bridge may not take a Gerrit bridge's name, since both would
//! publish `firehose/bridges/<name>/status` and share a metrics label).
//!
//! # Why `[bridge]` is not in `crate::config`
//! `config` is a leaf (layer 1) and bridges are layer 4: for config to list the bridges' tables
//! it would have to import them. Instead [`crate::config::Config`] takes the section's type as
//! a parameter, [`BridgesConfig`] implements
//! [`crate::config::BridgeSection`] here, and `cli` names the whole file's type. Arrows point
//! down (bridge -> config, cli -> both), the file still parses in one pass (unknown keys
//! reported with their line), and a bridge author stays in `bridge/`.
//!
//! Depends on [`crate::config`] and the bridge framework ([`super::BridgeConfig`]).

use crate::config::{BridgeSection, ConfigError};

use super::{BridgeConfig, BridgesConfig};

/// One kind of bridge in `[bridge]` (`gerrit`, `webhooks`...): its tables, seen as bridges.
/// A list of tables (`[[bridge.<kind>]]`) is one already; a section of another shape
/// (`[bridge.webhooks]`) implements it by hand.
pub trait BridgeKind {
    /// The bridges configured, in file order.
    fn bridges(&self) -> Vec<Box<dyn BridgeConfig>>;

    /// Whether the bridges' names are given by the code (`webhooks-<source>`) rather than
    /// chosen in the file. Those are taken first, so that a clash is reported on the table
    /// whose name the operator can change.
    fn fixed_names(&self) -> bool {
        false
    }

    /// Checks the settings that the kind's bridges share (`bridge.webhooks.max_body_bytes`),
    /// after every bridge's own.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the setting.
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

impl<T: BridgeConfig + Clone + 'static> BridgeKind for Vec<T> {
    fn bridges(&self) -> Vec<Box<dyn BridgeConfig>> {
        self.iter()
            .map(|table| Box::new(table.clone()) as Box<dyn BridgeConfig>)
            .collect()
    }
}

/// Declares [`BridgesConfig`], the `[bridge]` section, from its fields
/// (one line per kind of bridge: `pub <kind>: <type implementing BridgeKind>,`), and from the
/// same lines its list of kinds (`kinds()`), so that the section and the list that is checked
/// and built cannot disagree.
macro_rules! bridge_kinds {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $kind:ident: $type:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $( $(#[$field_meta])* pub $kind: $type, )*
        }

        impl $name {
            /// Every kind with its section's name (`bridge.<kind>`), in the order of the
            /// fields.
            pub(crate) fn kinds(&self) -> Vec<(&'static str, &dyn $crate::bridge::BridgeKind)> {
                vec![$(
                    (
                        concat!("bridge.", stringify!($kind)),
                        &self.$kind as &dyn $crate::bridge::BridgeKind,
                    ),
                )*]
            }
        }
    };
}
pub(crate) use bridge_kinds;

impl BridgeSection for BridgesConfig {
    /// Names first, for every bridge at once; then each bridge's own settings; then the
    /// settings each kind's bridges share.
    fn validate(&self) -> Result<(), ConfigError> {
        let kinds = self.kinds();
        check_names(&kinds)?;
        for (section, kind) in &kinds {
            for bridge in kind.bridges() {
                bridge
                    .validate()
                    .map_err(|message| invalid(section, bridge.name(), message))?;
            }
        }
        kinds.iter().try_for_each(|(_, kind)| kind.validate())
    }
}

/// Checks that every bridge's name is a topic level and that no two bridges, of any kinds,
/// share one.
fn check_names(kinds: &[(&'static str, &dyn BridgeKind)]) -> Result<(), ConfigError> {
    let fixed = kinds.iter().filter(|(_, kind)| kind.fixed_names());
    let chosen = kinds.iter().filter(|(_, kind)| !kind.fixed_names());
    let mut taken: Vec<String> = Vec::new();
    for (section, kind) in fixed.chain(chosen) {
        for bridge in kind.bridges() {
            let name = bridge.name();
            if !valid_bridge_name(name) {
                return Err(invalid(
                    section,
                    name,
                    "name must be 1 to 64 letters, digits, '-', '_' or '.' (it becomes a \
                     topic level)"
                        .into(),
                ));
            }
            if taken.iter().any(|other| other == name) {
                return Err(invalid(
                    section,
                    name,
                    "another bridge has this name; names must be unique".into(),
                ));
            }
            taken.push(name.to_owned());
        }
    }
    Ok(())
}

/// A bridge's setting that is wrong, reported as `invalid bridge.<kind>: bridge "<name>": ...`.
fn invalid(section: &'static str, bridge: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        field: section,
        message: format!("bridge {bridge:?}: {message}"),
    }
}

/// Whether `name` can be a bridge name: one topic level of letters, digits, `-`, `_`, `.`.
pub fn valid_bridge_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `backoff_initial_ms` of the bridges that reconnect: the first delay, in milliseconds.
pub(crate) fn default_backoff_initial_ms() -> u64 {
    1000
}

/// `backoff_max_secs` of the bridges that reconnect: the longest delay, in seconds.
pub(crate) fn default_backoff_max_secs() -> u64 {
    60
}

/// `qos` of the bridges that have one: the QoS of their events.
pub(crate) fn default_qos() -> u8 {
    1
}

/// Checks a bridge's `qos` setting.
///
/// # Errors
/// What is wrong, for [`BridgeConfig::validate`].
pub(crate) fn check_qos(qos: u8) -> Result<(), String> {
    if qos > 2 {
        return Err(format!(
            "qos {qos}: expected 0, 1 or 2 (the QoS of the bridge's events)"
        ));
    }
    Ok(())
}

/// Checks a reconnecting bridge's backoff settings.
///
/// # Errors
/// What is wrong, for [`BridgeConfig::validate`].
pub(crate) fn check_backoff(initial_ms: u64, max_secs: u64) -> Result<(), String> {
    if initial_ms == 0 || max_secs == 0 || initial_ms > max_secs.saturating_mul(1000) {
        return Err("backoff_initial_ms must be at least 1 and at most backoff_max_secs".into());
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The whole file's type, as `cli` names it.
    pub(crate) type Config = crate::config::Config<BridgesConfig>;

    /// Asserts that `edit` makes `config` invalid, with `expected` in the message.
    pub(crate) fn assert_refused(config: &Config, edit: &dyn Fn(&mut Config), expected: &str) {
        let mut bad = config.clone();
        edit(&mut bad);
        let err = bad.validate().expect_err(expected).to_string();
        assert!(err.contains(expected), "{err}");
    }

    /// The commented-out `[[bridge.<kind>]]` table of `docs/firehose.example.toml`,
    /// uncommented, so that the settings it documents are parsed and checked like any others.
    pub(crate) fn example_table(kind: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/firehose.example.toml");
        let text = std::fs::read_to_string(&path).expect("read the example config");
        let header = format!("# [[bridge.{kind}]]");
        let lines: Vec<&str> = text
            .lines()
            .skip_while(|line| *line != header)
            .take_while(|line| line.starts_with('#'))
            .map(|line| line.strip_prefix("# ").unwrap_or(line))
            .collect();
        assert!(!lines.is_empty(), "no {header} in {}", path.display());
        lines.join("\n")
    }

    #[test]
    fn the_example_config_s_bridge_tables_are_valid() {
        for kind in ["gerrit", "syslog", "mail"] {
            let config: Config = toml::from_str(&example_table(kind))
                .unwrap_or_else(|e| panic!("example [[bridge.{kind}]]: {e}"));
            config
                .validate()
                .unwrap_or_else(|e| panic!("example [[bridge.{kind}]]: {e}"));
        }
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
        assert_eq!(gerrit.qos(), firehose_codec::QoS::AtLeastOnce);
        let webhooks: Vec<String> = config
            .bridge
            .webhooks
            .bridges()
            .iter()
            .map(|bridge| bridge.name().to_owned())
            .collect();
        assert_eq!(webhooks, ["webhooks-github"]);

        let check = |edit: &dyn Fn(&mut Config), expected: &str| {
            assert_refused(&config, edit, expected);
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
        check(&|c| c.bridge.gerrit[0].qos = 3, "qos 3: expected 0, 1 or 2");
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
    fn names_are_unique_across_kinds_and_blame_the_chosen_name() {
        let text = "[[bridge.syslog]]\nname = \"logs\"\nudp = \"127.0.0.1:5514\"\n\
                    [[bridge.mail]]\nname = \"logs\"\nhost = \"h\"\nuser = \"u\"\n\
                    password = \"p\"\n";
        let config: Config = toml::from_str(text).expect("parses");
        let err = config.validate().expect_err("clash").to_string();
        assert_eq!(
            err,
            "invalid bridge.mail: bridge \"logs\": another bridge has this name; names must be \
             unique"
        );
        let text = "[bridge.webhooks.gitlab]\nsecret = \"s\"\n\
                    [[bridge.syslog]]\nname = \"webhooks-gitlab\"\nudp = \"127.0.0.1:5514\"\n";
        let config: Config = toml::from_str(text).expect("parses");
        let err = config.validate().expect_err("clash").to_string();
        assert!(err.starts_with("invalid bridge.syslog: "), "{err}");
    }
}
