//! `[bridge.webhooks]`: which forges may post webhooks, with which secrets, how large a body
//! may be, and how long and how many delivery ids are remembered to refuse replays. Each
//! configured source is a bridge of its own, named `webhooks-<source>`.
//!
//! Depends on [`crate::config`] (errors) and the bridge framework ([`crate::bridge`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Source, WebhookBridge};
use crate::bridge::{BridgeConfig, BridgeKind};
use crate::config::ConfigError;

/// Shortest `replay_window_secs`: a minute (replays are refused by remembering ids).
const MIN_REPLAY_WINDOW_SECS: u64 = 60;
/// Longest `replay_window_secs`: 30 days, ten times GitHub's redelivery horizon.
const MAX_REPLAY_WINDOW_SECS: u64 = 30 * 24 * 3600;
/// Fewest `replay_max_ids`: below, a busy forge would push ids out within minutes.
const MIN_REPLAY_IDS: usize = 100;
/// Most `replay_max_ids`: about 800 MiB per source.
const MAX_REPLAY_IDS: usize = 10_000_000;

/// `[bridge.webhooks]`: `POST /hooks/github`, `/hooks/gitlab`, `/hooks/gitea` on the HTTP
/// listener. A source without a table is not served (404).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// How long a delivery id is remembered, in seconds: a request with the same id within
    /// this time (a forge's redelivery, or a captured request sent again) is answered 200
    /// `{"duplicate": true}` and not published. 72 hours by default, the time GitHub lets a
    /// delivery be redelivered; 60 s to 30 days.
    pub replay_window_secs: u64,
    /// Most delivery ids remembered per source (each about 80 bytes: 100,000 take about 8 MiB).
    /// When more arrive within the window, the oldest are forgotten early, with a warning.
    /// 100 to 10,000,000.
    pub replay_max_ids: usize,
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
            replay_window_secs: 72 * 3600,
            replay_max_ids: 100_000,
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

impl WebhooksConfig {
    /// The configured sources, with the bridge section that names each.
    fn sources(&self) -> impl Iterator<Item = (Source, &'static str, &WebhookSourceConfig)> {
        [
            (Source::GitHub, "bridge.webhooks.github", &self.github),
            (Source::GitLab, "bridge.webhooks.gitlab", &self.gitlab),
            (Source::Gitea, "bridge.webhooks.gitea", &self.gitea),
        ]
        .into_iter()
        .filter_map(|(source, field, config)| Some((source, field, config.as_ref()?)))
    }
}

impl BridgeKind for WebhooksConfig {
    fn bridges(&self) -> Vec<Box<dyn BridgeConfig>> {
        self.sources()
            .map(|(source, _, config)| {
                Box::new(WebhookBridge {
                    source,
                    config: config.clone(),
                    max_body_bytes: self.max_body_bytes,
                    replay_window: Duration::from_secs(self.replay_window_secs),
                    replay_max_ids: self.replay_max_ids,
                }) as Box<dyn BridgeConfig>
            })
            .collect()
    }

    fn fixed_names(&self) -> bool {
        true
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_body_bytes == 0 {
            return Err(ConfigError::Invalid {
                field: "bridge.webhooks.max_body_bytes",
                message: "must be at least 1".into(),
            });
        }
        if !(MIN_REPLAY_WINDOW_SECS..=MAX_REPLAY_WINDOW_SECS).contains(&self.replay_window_secs) {
            return Err(ConfigError::Invalid {
                field: "bridge.webhooks.replay_window_secs",
                message: format!(
                    "{}: expected {MIN_REPLAY_WINDOW_SECS} (a minute) to \
                     {MAX_REPLAY_WINDOW_SECS} (30 days); delivery ids cannot be forgotten \
                     at once, they are how replays are refused",
                    self.replay_window_secs
                ),
            });
        }
        if !(MIN_REPLAY_IDS..=MAX_REPLAY_IDS).contains(&self.replay_max_ids) {
            return Err(ConfigError::Invalid {
                field: "bridge.webhooks.replay_max_ids",
                message: format!(
                    "{}: expected {MIN_REPLAY_IDS} to {MAX_REPLAY_IDS} (about 80 bytes each)",
                    self.replay_max_ids
                ),
            });
        }
        for (_, field, source) in self.sources() {
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

#[cfg(test)]
mod tests {
    use crate::bridge::config::tests::{assert_refused, Config};

    #[test]
    fn replay_settings_have_defaults_and_bounds() {
        let text = "[bridge.webhooks.github]\nsecret = \"s\"\n";
        let config: Config = toml::from_str(text).expect("parses");
        config.validate().expect("valid");
        let webhooks = &config.bridge.webhooks;
        assert_eq!(webhooks.replay_window_secs, 259_200);
        assert_eq!(webhooks.replay_max_ids, 100_000);
        let check =
            |edit: &dyn Fn(&mut Config), expected: &str| assert_refused(&config, edit, expected);
        check(
            &|c| c.bridge.webhooks.replay_window_secs = 0,
            "bridge.webhooks.replay_window_secs: 0: expected 60",
        );
        check(
            &|c| c.bridge.webhooks.replay_window_secs = 31 * 24 * 3600,
            "bridge.webhooks.replay_window_secs",
        );
        check(
            &|c| c.bridge.webhooks.replay_max_ids = 10,
            "bridge.webhooks.replay_max_ids: 10: expected 100",
        );
        check(
            &|c| c.bridge.webhooks.replay_max_ids = 20_000_000,
            "bridge.webhooks.replay_max_ids",
        );
        let text = "[bridge.webhooks]\nreplay_window_secs = 600\nreplay_max_ids = 5000\n";
        let config: Config = toml::from_str(text).expect("parses");
        config.validate().expect("valid");
        assert!(toml::from_str::<Config>("[bridge.webhooks]\nreplay_window = 1\n").is_err());
    }
}
