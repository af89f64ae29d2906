//! Webhooks from GitHub, GitLab and Gitea/Forgejo: `POST /hooks/<source>` on the HTTP
//! listener, verified with the source's shared secret, published to
//! `webhooks/<source>/<owner>/<repo>/<event>` with the body exactly as received.
//!
//! Each configured source is a bridge of its own (`webhooks-github`, ...), with its own state
//! and status event. What differs between sources ([`Source`]): the signature header and how
//! it is checked, the event and delivery headers, and where the repository is in the payload.
//! - GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`, `X-GitHub-Event`,
//!   `X-GitHub-Delivery` (the same on a redelivery).
//! - GitLab: `X-Gitlab-Token` is the secret itself (compared in constant time),
//!   `X-Gitlab-Event` (`Merge Request Hook` becomes `merge_request`), `Idempotency-Key`
//!   (GitLab 17.4 and later; the same on a retry). Not `X-Gitlab-Event-UUID`, which the
//!   webhooks triggered by an earlier webhook share, nor `X-Gitlab-Webhook-UUID`, new on each
//!   retry.
//! - Gitea and Forgejo: `X-Forgejo-Signature` or `X-Gitea-Signature` (hex HMAC-SHA256 of the
//!   body), `X-Forgejo-Event` or `X-Gitea-Event`, `X-Forgejo-Delivery` or `X-Gitea-Delivery`.
//!
//! A request is checked in this order, and nothing is remembered before its signature is
//! verified: a body over `bridge.webhooks.max_body_bytes` gets 413; a missing or wrong
//! signature 401; a missing event header, or an event name that is not one topic level of
//! `[a-z0-9_]`, 400; a missing delivery id (or one over 128 bytes) 400; a payload that is not
//! JSON 400. Each is counted as a refused input of the source's bridge and logged (one warning
//! a second at most). Then the delivery id is claimed: one seen within
//! `bridge.webhooks.replay_window_secs` ([`replay`]) is answered 200 `{"duplicate": true,
//! ...}` (a 4xx would make GitHub show a failed delivery and GitLab disable the webhook after
//! four) and not published again, counted in the bridge's `duplicates`.
//!
//! The section, `[bridge.webhooks]`, and its checks are in [`config`]. Depends on the bridge
//! framework ([`super`]), [`crate::broker`] (its publish errors) and [`crate::config`].

pub mod config;
mod replay;

pub use config::{WebhookSourceConfig, WebhooksConfig};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
use tracing::{debug, info, warn};

use self::replay::{Claim, Deliveries};
use super::{BridgeConfig, BridgeContext, BridgeError, BuiltBridge, Throttle};
use crate::broker::PublishError;

/// Longest event name accepted, in bytes (GitHub's longest are about 40).
const MAX_EVENT: usize = 64;

/// Longest delivery id accepted, in bytes (the forges send UUIDs: 36).
const MAX_DELIVERY: usize = 128;

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

    /// The event header's name, for messages.
    fn event_header(self) -> &'static str {
        match self {
            Source::GitHub => "X-GitHub-Event",
            Source::GitLab => "X-Gitlab-Event",
            Source::Gitea => "X-Gitea-Event (or X-Forgejo-Event)",
        }
    }

    /// The event name from the headers: exactly one topic level of `[a-z0-9_]`, so that no
    /// header can add levels or wildcards to the topic.
    ///
    /// # Errors
    /// Why the header is refused, for a 400.
    fn event(self, headers: &HeaderMap) -> Result<String, String> {
        let names: &[&str] = match self {
            Source::GitHub => &["x-github-event"],
            Source::GitLab => &["x-gitlab-event"],
            Source::Gitea => &["x-forgejo-event", "x-gitea-event"],
        };
        let Some(value) = names.iter().find_map(|name| headers.get(*name)) else {
            return Err(format!("missing {} header", self.event_header()));
        };
        // Not text is refused below like any other name, quoted in the message.
        let raw = String::from_utf8_lossy(value.as_bytes());
        let raw = raw.trim();
        let name = match self {
            // "Merge Request Hook" -> "merge_request", as GitLab's own `object_kind`.
            Source::GitLab => raw
                .strip_suffix(" Hook")
                .unwrap_or(raw)
                .to_ascii_lowercase()
                .replace(' ', "_"),
            Source::GitHub | Source::Gitea => raw.to_owned(),
        };
        let one_level = !name.is_empty()
            && name.len() <= MAX_EVENT
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !one_level {
            return Err(format!(
                "{} {raw:?}: an event name is 1 to {MAX_EVENT} of a-z, 0-9 and _",
                self.event_header()
            ));
        }
        Ok(name)
    }

    /// The delivery id, which a redelivery of the same event repeats.
    ///
    /// # Errors
    /// Why there is none that can be used, for a 400.
    fn delivery(self, headers: &HeaderMap) -> Result<&str, String> {
        let (names, name): (&[&str], _) = match self {
            Source::GitHub => (&["x-github-delivery"], "X-GitHub-Delivery"),
            Source::GitLab => (
                &["idempotency-key"],
                "Idempotency-Key (sent by GitLab 17.4 and later)",
            ),
            Source::Gitea => (
                &["x-forgejo-delivery", "x-gitea-delivery"],
                "X-Gitea-Delivery (or X-Forgejo-Delivery)",
            ),
        };
        // Present but not visible ASCII: `Some(None)`.
        let id = names
            .iter()
            .find_map(|header| headers.get(*header))
            .map(|value| value.to_str().ok());
        match id.map(|id| id.map(str::trim)) {
            Some(Some(id)) if !id.is_empty() && id.len() <= MAX_DELIVERY => Ok(id),
            Some(Some(id)) if !id.is_empty() => Err(format!(
                "the {name} header is longer than {MAX_DELIVERY} bytes"
            )),
            Some(None) => Err(format!("the {name} header is not visible ASCII")),
            _ => Err(format!(
                "missing {name} header: a delivery id is required, to refuse replays"
            )),
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
            return (levels(owner), levels(repo));
        }
        let owner = match self {
            Source::GitHub => str_at("/organization/login").or_else(|| str_at("/sender/login")),
            Source::GitLab => str_at("/project/namespace").or_else(|| str_at("/user_username")),
            Source::Gitea => str_at("/organization/username")
                .or_else(|| str_at("/organization/login"))
                .or_else(|| str_at("/sender/login")),
        };
        (levels(owner.unwrap_or_default()), "-".to_owned())
    }
}

/// A header's value as text, if present and visible ASCII.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A name made safe as topic levels: MQTT wildcards and control characters become `_`, an
/// empty level `-`; slashes are kept (GitLab namespaces: `group/subgroup`).
fn levels(value: &str) -> String {
    value
        .split('/')
        .map(|level| {
            let level: String = level
                .chars()
                .map(|c| match c {
                    '+' | '#' => '_',
                    c if c.is_control() => '_',
                    c => c,
                })
                .collect();
            if level.is_empty() {
                "-".to_owned()
            } else {
                level
            }
        })
        .collect::<Vec<_>>()
        .join("/")
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
    /// `bridge.webhooks.replay_window_secs`.
    replay_window: Duration,
    /// `bridge.webhooks.replay_max_ids`.
    replay_max_ids: usize,
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
            deliveries: Mutex::new(Deliveries::new(self.replay_window, self.replay_max_ids)),
            refusals: Throttle::default(),
            repeats: Throttle::default(),
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
    /// The delivery ids seen within the replay window.
    deliveries: Mutex<Deliveries>,
    /// Rations the warnings about refused requests.
    refusals: Throttle,
    /// Rations the log lines about repeated deliveries and a full replay memory.
    repeats: Throttle,
    cx: BridgeContext,
}

impl Hook {
    /// Counts a refused request, logs why (escaped: it may quote the request) and answers.
    fn refuse(&self, status: StatusCode, message: impl Into<String>) -> Response {
        let message = message.into();
        self.cx.rejected();
        let bridge = self.cx.state().name();
        let code = status.as_u16();
        match self.refusals.warning() {
            Some(quiet) => warn!(bridge = %bridge, status = code, reason = ?message,
                also_refused = quiet, "webhook refused"),
            None => debug!(bridge = %bridge, status = code, reason = ?message, "webhook refused"),
        }
        (status, Json(json!({ "error": message }))).into_response()
    }

    /// Claims a delivery id: `None` when it is new, else the answer to a repeated one.
    fn claim(&self, delivery: &str) -> Option<Response> {
        let claim = self
            .deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .claim(delivery, Instant::now());
        let bridge = self.cx.state().name();
        match claim {
            Claim::New => None,
            Claim::NewForgettingOne => {
                if let Some(quiet) = self.repeats.warning() {
                    warn!(bridge = %bridge, also = quiet,
                        "the replay memory is full: delivery ids are forgotten before \
                         bridge.webhooks.replay_window_secs (raise replay_max_ids)");
                }
                None
            }
            Claim::Repeated => {
                self.cx.duplicate();
                match self.repeats.warning() {
                    Some(quiet) => info!(bridge = %bridge, delivery = ?delivery, also = quiet,
                        "duplicate delivery, ignored"),
                    None => debug!(bridge = %bridge, delivery = ?delivery,
                        "duplicate delivery, ignored"),
                }
                let body = json!({
                    "duplicate": true,
                    "delivery": delivery,
                    "message": "duplicate delivery, ignored",
                });
                Some((StatusCode::OK, Json(body)).into_response())
            }
        }
    }

    /// Forgets a claimed delivery id whose event could not be stored.
    fn release(&self, delivery: &str) {
        self.deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release(delivery);
    }
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

/// One webhook request. Everything that can be checked is, in the order of the module's
/// documentation, before the delivery id is claimed: a refused request, above all one without
/// a valid signature, changes nothing but the counters.
async fn receive(
    State(hook): State<Arc<Hook>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let source = hook.source.as_str();
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return hook.refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the body is larger than bridge.webhooks.max_body_bytes",
            )
        }
        Err(rejection) => return hook.refuse(rejection.status(), rejection.body_text()),
    };
    let checked = hook
        .source
        .verify(&hook.secret, &headers, &body)
        .map_err(|reason| (StatusCode::UNAUTHORIZED, reason.to_owned()))
        .and_then(|()| {
            let bad = |reason| (StatusCode::BAD_REQUEST, reason);
            let event = hook.source.event(&headers).map_err(bad)?;
            let delivery = hook.source.delivery(&headers).map_err(bad)?;
            Ok((event, delivery.to_owned()))
        });
    let (event, delivery) = match checked {
        Ok(checked) => checked,
        Err((status, reason)) => {
            return hook.refuse(status, format!("{source} webhook refused: {reason}"))
        }
    };
    let Some(payload) = payload_of(&headers, &body) else {
        return hook.refuse(
            StatusCode::BAD_REQUEST,
            "form-encoded webhook without a payload field",
        );
    };
    let json: Value = match serde_json::from_slice(&payload) {
        Ok(json) => json,
        Err(error) => {
            return hook.refuse(
                StatusCode::BAD_REQUEST,
                format!("the payload is not JSON: {error}"),
            )
        }
    };
    if let Some(answer) = hook.claim(&delivery) {
        return answer;
    }
    let (owner, repo) = hook.source.repository(&json);
    let topic = format!("webhooks/{source}/{owner}/{repo}/{event}");
    let properties = PublishProperties {
        content_type: Some("application/json".into()),
        user_properties: vec![
            ("event".to_owned(), event),
            ("delivery".to_owned(), delivery.clone()),
        ],
        ..PublishProperties::default()
    };
    match hook.cx.publish_with(&topic, payload, properties).await {
        Ok(id) => (StatusCode::OK, Json(json!({ "id": id, "topic": topic }))).into_response(),
        Err(error) => {
            // Not stored: a redelivery must be able to try again.
            hook.release(&delivery);
            let status = match error {
                PublishError::InvalidTopic(_) => StatusCode::BAD_REQUEST,
                PublishError::NotAuthorized { .. } | PublishError::NotStored => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                PublishError::RetainedQuotaFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            };
            (status, Json(json!({ "error": error.to_string() }))).into_response()
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
        assert_eq!(Source::GitLab.event(&ok).as_deref(), Ok("merge_request"));
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
        assert_eq!(levels("a+b#c"), "a_b_c");
        assert_eq!(levels("a\nb/\u{1b}[2J//"), "a_b/_[2J/-/-");
        assert_eq!(
            Source::GitHub.repository(&json!({})),
            ("-".into(), "-".into())
        );
    }

    #[test]
    fn form_payloads() {
        let form = headers(&[("content-type", "application/x-www-form-urlencoded")]);
        let body = Bytes::from_static(b"payload=%7B%22a%22%3A+1%7D");
        assert_eq!(
            payload_of(&form, &body).as_deref(),
            Some(&b"{\"a\": 1}"[..])
        );
    }

    #[test]
    fn event_names_are_one_level_of_a_z_0_9_and_underscore() {
        let event = |source: Source, name: &str, value: &str| {
            let name = axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name");
            let mut map = HeaderMap::new();
            map.insert(name, value.parse().expect("header value"));
            source.event(&map)
        };
        assert_eq!(
            event(Source::GitHub, "x-github-event", "pull_request"),
            Ok("pull_request".to_owned())
        );
        assert_eq!(
            event(Source::GitLab, "x-gitlab-event", "Tag Push Hook"),
            Ok("tag_push".to_owned())
        );
        assert_eq!(
            event(Source::Gitea, "x-forgejo-event", "issue_comment"),
            Ok("issue_comment".to_owned())
        );
        for (source, header, value) in [
            (Source::GitHub, "x-github-event", "push/x"),
            (Source::GitHub, "x-github-event", "push/#"),
            (Source::GitHub, "x-github-event", "+"),
            (Source::GitHub, "x-github-event", "Push"),
            (Source::GitHub, "x-github-event", "push-event"),
            (Source::Gitea, "x-gitea-event", ""),
            (Source::GitLab, "x-gitlab-event", "Push/Hook"),
            (Source::GitLab, "x-gitlab-event", "Merge-Request Hook"),
        ] {
            let refused = event(source, header, value);
            assert!(refused.is_err(), "{value:?}: {refused:?}");
        }
        let long = "a".repeat(MAX_EVENT + 1);
        assert!(event(Source::GitHub, "x-github-event", &long).is_err());
        assert!(Source::GitHub.event(&HeaderMap::new()).is_err());
    }

    #[test]
    fn delivery_ids_are_required() {
        let one = |name: &'static str, value: &str| headers(&[(name, value)]);
        assert_eq!(
            Source::GitHub.delivery(&one("x-github-delivery", "72d3162e")),
            Ok("72d3162e")
        );
        assert_eq!(
            Source::GitLab.delivery(&one("idempotency-key", "f5e5f430")),
            Ok("f5e5f430")
        );
        assert_eq!(
            Source::Gitea.delivery(&one("x-gitea-delivery", "f6266f16")),
            Ok("f6266f16")
        );
        // GitLab's per-request and recursion UUIDs are not delivery ids.
        for name in ["x-gitlab-event-uuid", "x-gitlab-webhook-uuid"] {
            assert!(Source::GitLab.delivery(&one(name, "13792a34")).is_err());
        }
        assert!(Source::GitHub
            .delivery(&one("x-github-delivery", " "))
            .is_err());
        let long = "d".repeat(MAX_DELIVERY + 1);
        assert!(Source::GitHub
            .delivery(&one("x-github-delivery", &long))
            .is_err_and(|e| e.contains("longer")));
    }
}
