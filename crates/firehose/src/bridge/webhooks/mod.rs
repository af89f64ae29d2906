//! Webhooks from GitHub, GitLab and Gitea/Forgejo: `POST /hooks/<source>` on the HTTP
//! listener, verified with the source's shared secret, published to
//! `webhooks/<source>/<owner>/<repo>/<event>` with the body exactly as received.
//!
//! Each configured source is a bridge of its own (`webhooks-github`, ...), with its own state
//! and status event. What differs between sources ([`Source`]): the signature header and how
//! it is checked, the event header, and where the repository is in the payload.
//! - GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`, `X-GitHub-Event`,
//!   deliveries deduplicated on `X-GitHub-Delivery` (redeliveries are answered, not published).
//! - GitLab: `X-Gitlab-Token` is the secret itself (compared in constant time),
//!   `X-Gitlab-Event` (`Merge Request Hook` becomes `merge_request`), deduplicated on
//!   `Idempotency-Key` when GitLab sends it.
//! - Gitea and Forgejo: `X-Forgejo-Signature` or `X-Gitea-Signature` (hex HMAC-SHA256 of the
//!   body), `X-Forgejo-Event` or `X-Gitea-Event`, deduplicated on `X-Forgejo-Delivery` or
//!   `X-Gitea-Delivery`.
//!
//! A missing or wrong signature gets 401 and publishes nothing; a body over
//! `bridge.webhooks.max_body_bytes` gets 413; a request without an event header or whose
//! payload is not JSON gets 400. Each is counted as a refused input of the source's bridge.
//!
//! The section, `[bridge.webhooks]`, and its checks are in [`config`]. Depends on the bridge
//! framework ([`super`]), [`crate::broker`] (its publish errors) and [`crate::config`].

pub mod config;

pub use config::{WebhookSourceConfig, WebhooksConfig};

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use firehose_codec::PublishProperties;
use ring::hmac;
use serde_json::{json, Value};
use tracing::{debug, info};

use super::{BridgeConfig, BridgeContext, BridgeError, BuiltBridge};
use crate::broker::PublishError;

/// Delivery ids remembered per source for deduplication.
const DEDUPE_CAPACITY: usize = 10_000;

/// A webhook source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// GitHub (github.com and GitHub Enterprise).
    GitHub,
    /// GitLab.
    GitLab,
    /// Gitea and Forgejo.
    Gitea,
}

impl Source {
    /// The name in the path (`/hooks/<name>`) and the topic (`webhooks/<name>/...`).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::GitHub => "github",
            Source::GitLab => "gitlab",
            Source::Gitea => "gitea",
        }
    }

    /// The event name from the headers, as a topic level.
    fn event(self, headers: &HeaderMap) -> Option<String> {
        let raw = match self {
            Source::GitHub => header(headers, "x-github-event")?.to_owned(),
            Source::GitLab => {
                // "Merge Request Hook" -> "merge_request", as GitLab's own `object_kind`.
                let raw = header(headers, "x-gitlab-event")?.trim();
                let raw = raw.strip_suffix(" Hook").unwrap_or(raw);
                raw.to_ascii_lowercase().replace(' ', "_")
            }
            Source::Gitea => header(headers, "x-forgejo-event")
                .or_else(|| header(headers, "x-gitea-event"))?
                .to_owned(),
        };
        let level = topic_level(raw.trim());
        (!level.is_empty()).then_some(level)
    }

    /// The delivery id that identifies redeliveries of one event.
    fn delivery(self, headers: &HeaderMap) -> Option<&str> {
        match self {
            Source::GitHub => header(headers, "x-github-delivery"),
            Source::GitLab => header(headers, "idempotency-key"),
            Source::Gitea => header(headers, "x-forgejo-delivery")
                .or_else(|| header(headers, "x-gitea-delivery")),
        }
    }

    /// Checks the request's signature or token against the secret.
    fn verify(self, secret: &Secret, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
        match self {
            Source::GitHub => {
                let signature = header(headers, "x-hub-signature-256")
                    .ok_or("missing X-Hub-Signature-256 header")?;
                let hex = signature
                    .strip_prefix("sha256=")
                    .ok_or("X-Hub-Signature-256 must start with sha256=")?;
                secret.verify_hmac(body, hex)
            }
            Source::GitLab => {
                let token =
                    header(headers, "x-gitlab-token").ok_or("missing X-Gitlab-Token header")?;
                secret.verify_token(token.as_bytes())
            }
            Source::Gitea => {
                let hex = header(headers, "x-forgejo-signature")
                    .or_else(|| header(headers, "x-gitea-signature"))
                    .ok_or("missing X-Gitea-Signature (or X-Forgejo-Signature) header")?;
                secret.verify_hmac(body, hex)
            }
        }
    }

    /// Owner and repository from the payload; `-` where the event has none (organization,
    /// system hooks). GitLab namespaces keep their slashes (`group/subgroup`).
    fn repository(self, payload: &Value) -> (String, String) {
        let str_at = |pointer: &str| payload.pointer(pointer).and_then(Value::as_str);
        let full = match self {
            Source::GitHub | Source::Gitea => str_at("/repository/full_name"),
            Source::GitLab => str_at("/project/path_with_namespace")
                .or_else(|| str_at("/repository/path_with_namespace")),
        };
        if let Some((owner, repo)) = full.and_then(|full| full.rsplit_once('/')) {
            return (topic_level(owner), topic_level(repo));
        }
        let owner = match self {
            Source::GitHub => str_at("/organization/login").or_else(|| str_at("/sender/login")),
            Source::GitLab => str_at("/project/namespace").or_else(|| str_at("/user_username")),
            Source::Gitea => str_at("/organization/username")
                .or_else(|| str_at("/organization/login"))
                .or_else(|| str_at("/sender/login")),
        };
        let level = |value: Option<&str>| {
            value
                .map(topic_level)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "-".to_owned())
        };
        (level(owner), "-".to_owned())
    }
}

/// A header's value as text, if present and visible ASCII.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A name made safe as topic levels: MQTT wildcards and NUL become `_`; slashes are kept.
fn topic_level(value: &str) -> String {
    value
        .chars()
        .map(|c| match c {
            '+' | '#' | '\0' => '_',
            c => c,
        })
        .collect()
}

/// A source's secret, kept as HMAC keys so that every comparison is constant-time.
struct Secret {
    /// The secret as the HMAC-SHA256 key of signatures.
    signing: hmac::Key,
    /// A random per-process key, and the secret's tag under it: a token is compared by
    /// verifying its tag, in constant time, without keeping the secret itself around.
    token_key: hmac::Key,
    token_tag: hmac::Tag,
}

impl Secret {
    fn new(secret: &[u8]) -> Result<Secret, ring::error::Unspecified> {
        let token_key = hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())?;
        Ok(Secret {
            signing: hmac::Key::new(hmac::HMAC_SHA256, secret),
            token_tag: hmac::sign(&token_key, secret),
            token_key,
        })
    }

    fn verify_hmac(&self, body: &[u8], hex: &str) -> Result<(), &'static str> {
        let signature = decode_hex(hex.trim()).ok_or("the signature is not 64 hex digits")?;
        hmac::verify(&self.signing, body, &signature).map_err(|_| "the signature does not match")
    }

    fn verify_token(&self, token: &[u8]) -> Result<(), &'static str> {
        hmac::verify(&self.token_key, token, self.token_tag.as_ref())
            .map_err(|_| "the token does not match")
    }
}

/// 32 bytes from 64 hex digits.
fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() != 64 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect()
}

/// Recently seen delivery ids, oldest first out.
#[derive(Default)]
struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    /// Records `id`; false if it was already there.
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() >= DEDUPE_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }

    fn forget(&mut self, id: &str) {
        if self.set.remove(id) {
            self.order.retain(|seen| seen != id);
        }
    }
}

/// One webhook source's bridge, made from `[bridge.webhooks]` by its
/// [`BridgeKind`](crate::bridge::BridgeKind) implementation.
#[derive(Debug, Clone)]
pub struct WebhookBridge {
    /// The forge.
    source: Source,
    /// Its secret.
    config: WebhookSourceConfig,
    /// `bridge.webhooks.max_body_bytes`.
    max_body_bytes: usize,
}

impl WebhookBridge {
    fn name_of(source: Source) -> &'static str {
        match source {
            Source::GitHub => "webhooks-github",
            Source::GitLab => "webhooks-gitlab",
            Source::Gitea => "webhooks-gitea",
        }
    }
}

impl BridgeConfig for WebhookBridge {
    fn name(&self) -> &str {
        WebhookBridge::name_of(self.source)
    }

    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn topics(&self) -> Vec<String> {
        vec![format!("webhooks/{}/#", self.source.as_str())]
    }

    fn build(&self, cx: BridgeContext) -> Result<BuiltBridge, BridgeError> {
        let name = self.name().to_owned();
        let secret = match (&self.config.secret, &self.config.secret_file) {
            (Some(secret), _) => secret.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|error| BridgeError::File {
                    bridge: name.clone(),
                    what: "secret_file",
                    path: path.display().to_string(),
                    reason: error.to_string(),
                })?
                .trim()
                .to_owned(),
            (None, None) => String::new(),
        };
        if secret.is_empty() {
            return Err(BridgeError::Invalid {
                bridge: name,
                message: "the secret is empty: unsigned webhooks are refused".into(),
            });
        }
        let secret = Secret::new(secret.as_bytes()).map_err(|_| BridgeError::Invalid {
            bridge: name.clone(),
            message: "the system's random generator failed".into(),
        })?;
        let hook = Arc::new(Hook {
            source: self.source,
            secret,
            seen: Mutex::new(Seen::default()),
            cx: cx.clone(),
        });
        let startup = cx.clone();
        let routes = Router::new()
            .route(&format!("/hooks/{}", self.source.as_str()), post(receive))
            .layer(DefaultBodyLimit::max(self.max_body_bytes))
            .with_state(hook);
        // Webhooks are "connected" as soon as the listener serves them.
        let task = Box::pin(async move {
            startup.set_state("listening", true).await;
        });
        Ok(BuiltBridge {
            task: Some(task),
            routes: Some(routes),
        })
    }
}

/// What the handler of one source needs.
struct Hook {
    source: Source,
    secret: Secret,
    seen: Mutex<Seen>,
    cx: BridgeContext,
}

/// A JSON error answer.
fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// The JSON payload of a request: the body, or for GitHub's form encoding its `payload` field.
fn payload_of(headers: &HeaderMap, body: &Bytes) -> Option<Bytes> {
    let form = header(headers, "content-type")
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    if !form {
        return Some(body.clone());
    }
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|pair| {
        let value = pair.strip_prefix("payload=")?;
        form_decode(value).map(Bytes::from)
    })
}

/// Decodes an `application/x-www-form-urlencoded` value.
fn form_decode(value: &str) -> Option<Vec<u8>> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = value.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

async fn receive(
    State(hook): State<Arc<Hook>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let source = hook.source.as_str();
    let cx = &hook.cx;
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            cx.rejected();
            let status = rejection.status();
            info!(bridge = %cx.state().name(), "webhook refused: {}", rejection.body_text());
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "the body is larger than bridge.webhooks.max_body_bytes".to_owned()
            } else {
                rejection.body_text()
            };
            return refuse(status, message);
        }
    };
    if let Err(reason) = hook.source.verify(&hook.secret, &headers, &body) {
        cx.rejected();
        info!(bridge = %cx.state().name(), "webhook refused: {reason}");
        return refuse(
            StatusCode::UNAUTHORIZED,
            format!("{source} webhook refused: {reason}"),
        );
    }
    let Some(event) = hook.source.event(&headers) else {
        cx.rejected();
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("{source} webhook without its event header"),
        );
    };
    let Some(payload) = payload_of(&headers, &body) else {
        cx.rejected();
        return refuse(
            StatusCode::BAD_REQUEST,
            "form-encoded webhook without a payload field",
        );
    };
    let json: Value = match serde_json::from_slice(&payload) {
        Ok(json) => json,
        Err(error) => {
            cx.rejected();
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("the payload is not JSON: {error}"),
            );
        }
    };
    let delivery = hook.source.delivery(&headers).map(str::to_owned);
    if let Some(id) = &delivery {
        let fresh = hook
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        if !fresh {
            debug!(bridge = %cx.state().name(), delivery = %id, "duplicate delivery");
            return (
                StatusCode::OK,
                Json(json!({ "duplicate": true, "delivery": id })),
            )
                .into_response();
        }
    }
    let (owner, repo) = hook.source.repository(&json);
    let topic = format!("webhooks/{source}/{owner}/{repo}/{event}");
    let mut user_properties = vec![("event".to_owned(), event.clone())];
    if let Some(id) = &delivery {
        user_properties.push(("delivery".to_owned(), id.clone()));
    }
    let properties = PublishProperties {
        content_type: Some("application/json".into()),
        user_properties,
        ..PublishProperties::default()
    };
    match cx.publish_with(&topic, payload, properties).await {
        Ok(id) => (StatusCode::OK, Json(json!({ "id": id, "topic": topic }))).into_response(),
        Err(error) => {
            if let Some(id) = &delivery {
                // Not stored: a redelivery must be able to try again.
                hook.seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .forget(id);
            }
            let status = match error {
                PublishError::InvalidTopic(_) => StatusCode::BAD_REQUEST,
                PublishError::NotAuthorized { .. } | PublishError::NotStored => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                PublishError::RetainedQuotaFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            };
            refuse(status, error.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("header value"));
        }
        map
    }

    #[test]
    fn github_signature() {
        let secret = Secret::new(b"It's a Secret to Everybody").expect("secret");
        // The example from GitHub's documentation ("Validating webhook deliveries").
        let good = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let body = b"Hello, World!";
        let ok = headers(&[("x-hub-signature-256", &format!("sha256={good}"))]);
        assert_eq!(Source::GitHub.verify(&secret, &ok, body), Ok(()));
        let bad = headers(&[("x-hub-signature-256", &format!("sha256={}", "0".repeat(64)))]);
        assert!(Source::GitHub.verify(&secret, &bad, body).is_err());
        let short = headers(&[("x-hub-signature-256", "sha256=abc")]);
        assert!(Source::GitHub.verify(&secret, &short, body).is_err());
        assert!(Source::GitHub.verify(&secret, &headers(&[]), body).is_err());
        let unprefixed = headers(&[("x-hub-signature-256", good)]);
        assert!(Source::GitHub.verify(&secret, &unprefixed, body).is_err());
    }

    #[test]
    fn gitlab_token_and_event() {
        let secret = Secret::new(b"tok").expect("secret");
        let ok = headers(&[
            ("x-gitlab-token", "tok"),
            ("x-gitlab-event", "Merge Request Hook"),
        ]);
        assert_eq!(Source::GitLab.verify(&secret, &ok, b""), Ok(()));
        assert_eq!(Source::GitLab.event(&ok).as_deref(), Some("merge_request"));
        let bad = headers(&[("x-gitlab-token", "tok2")]);
        assert!(Source::GitLab.verify(&secret, &bad, b"").is_err());
    }

    #[test]
    fn repositories_and_levels() {
        let github = json!({"repository": {"full_name": "octo-org/hello-world"}});
        assert_eq!(
            Source::GitHub.repository(&github),
            ("octo-org".into(), "hello-world".into())
        );
        let org = json!({"organization": {"login": "octo-org"}});
        assert_eq!(
            Source::GitHub.repository(&org),
            ("octo-org".into(), "-".into())
        );
        let gitlab = json!({"project": {"path_with_namespace": "group/sub/proj"}});
        assert_eq!(
            Source::GitLab.repository(&gitlab),
            ("group/sub".into(), "proj".into())
        );
        assert_eq!(topic_level("a+b#c"), "a_b_c");
        assert_eq!(
            Source::GitHub.repository(&json!({})),
            ("-".into(), "-".into())
        );
    }

    #[test]
    fn form_payloads_and_dedupe() {
        let form = headers(&[("content-type", "application/x-www-form-urlencoded")]);
        let body = Bytes::from_static(b"payload=%7B%22a%22%3A+1%7D");
        assert_eq!(
            payload_of(&form, &body).as_deref(),
            Some(&b"{\"a\": 1}"[..])
        );
        let mut seen = Seen::default();
        assert!(seen.insert("a"));
        assert!(!seen.insert("a"));
        seen.forget("a");
        assert!(seen.insert("a"));
    }
}
