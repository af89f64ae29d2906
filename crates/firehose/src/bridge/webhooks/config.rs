//! `[bridge.webhooks]`: which forges may post webhooks, with which secrets, and how large a
//! body may be. Each configured source is a bridge of its own, named `webhooks-<source>`.
//!
//! Depends on [`crate::config`] (errors) and the bridge framework ([`crate::bridge`]).

use std::path::PathBuf;

use serde::Deserialize;

use super::{Source, WebhookBridge};
use crate::bridge::{BridgeConfig, BridgeKind};
use crate::config::ConfigError;

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
