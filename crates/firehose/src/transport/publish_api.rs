//! HTTP publish: `POST /api/v1/publish/<topic>` with the payload as the body, for publishers
//! that do not speak MQTT (a CI job's `curl`, a cron script).
//!
//! - Authentication: `Authorization: Basic` with a user name and password of the users file,
//!   or `Authorization: Bearer <token>` for a user with a `token` hash. Wrong or missing
//!   credentials get 401; a topic outside the user's `publish` filters gets 403, exactly as
//!   the MQTT access model decides.
//! - The answer, 200 `{"id": <event id>, "topic": ...}`, comes once the event is committed to
//!   the log: the id can be fed to `GET /api/v1/events/<id>`.
//! - `?qos=0|1|2` (default 1) and `?retain=true` set the message's QoS and retain flag;
//!   a body larger than `limits.max_packet_size` gets 413.
//! - A topic with more levels than `limits.max_topic_levels` gets 400; a retained message to a
//!   new topic beyond the retained quota (`limits.max_retained_messages`,
//!   `limits.max_retained_bytes`) gets 507.
//!
//! Password and token checks cost an argon2 hash each (tens of milliseconds, on a blocking
//! thread, at most [`MAX_CONCURRENT_CHECKS`] at once); successful credentials are remembered by
//! their SHA-256 so that a publisher posting in a loop pays that once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use firehose_codec::{PublishProperties, QoS};
use ring::digest;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::auth::Identity;
use crate::broker::{Broker, PublishError};

/// Password or token checks running at once; more wait. Bounds the CPU an attacker who posts
/// random credentials can take.
pub const MAX_CONCURRENT_CHECKS: usize = 4;

/// Credentials remembered after a successful check; the cache is emptied when full.
const CACHE_CAPACITY: usize = 1024;

/// The route, ready to merge into the HTTP server. `max_body` is the largest payload accepted.
pub fn router(broker: Broker, max_body: usize) -> Router {
    let api = Arc::new(PublishApi {
        broker,
        checks: Semaphore::new(MAX_CONCURRENT_CHECKS),
        verified: Mutex::new(HashMap::new()),
    });
    Router::new()
        .route("/api/v1/publish/{*topic}", post(publish))
        .route("/api/v1/publish", post(no_topic))
        .route("/api/v1/publish/", post(no_topic))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(api)
}

struct PublishApi {
    broker: Broker,
    checks: Semaphore,
    /// SHA-256 of credentials that verified, and whom they identify.
    verified: Mutex<HashMap<[u8; 32], Identity>>,
}

/// A JSON error answer.
fn answer(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn unauthorized(message: &str) -> Response {
    let mut response = answer(StatusCode::UNAUTHORIZED, message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"firehose\", Bearer realm=\"firehose\""),
    );
    response
}

async fn no_topic() -> Response {
    answer(
        StatusCode::NOT_FOUND,
        "POST /api/v1/publish/<topic>: the topic is the rest of the path",
    )
}

/// Credentials from the `Authorization` header.
enum Credentials {
    Basic { user: String, password: String },
    Bearer(String),
}

impl Credentials {
    fn parse(headers: &HeaderMap) -> Result<Credentials, &'static str> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or(
                "authentication required: HTTP basic (user name and password) or a bearer token",
            )?
            .to_str()
            .map_err(|_| "the Authorization header is not text")?;
        let (scheme, rest) = value
            .split_once(' ')
            .ok_or("the Authorization header must be \"Basic ...\" or \"Bearer ...\"")?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            if rest.is_empty() {
                return Err("empty bearer token");
            }
            return Ok(Credentials::Bearer(rest.to_owned()));
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err("the Authorization header must be \"Basic ...\" or \"Bearer ...\"");
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| "basic credentials are not base64")?;
        let text = String::from_utf8(decoded).map_err(|_| "basic credentials are not UTF-8")?;
        let (user, password) = text
            .split_once(':')
            .ok_or("basic credentials must be user:password")?;
        Ok(Credentials::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }

    /// What the cache knows them by.
    fn digest(&self) -> [u8; 32] {
        let mut context = digest::Context::new(&digest::SHA256);
        match self {
            Credentials::Basic { user, password } => {
                context.update(b"basic\0");
                context.update(user.as_bytes());
                context.update(b"\0");
                context.update(password.as_bytes());
            }
            Credentials::Bearer(token) => {
                context.update(b"bearer\0");
                context.update(token.as_bytes());
            }
        }
        let mut out = [0; 32];
        out.copy_from_slice(context.finish().as_ref());
        out
    }
}

impl PublishApi {
    /// Who the credentials identify, or `None` if they do not verify.
    async fn identify(&self, credentials: Credentials) -> Option<Identity> {
        let key = credentials.digest();
        if let Some(identity) = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Some(identity.clone());
        }
        let _permit = self.checks.acquire().await.ok()?;
        let users = self.broker.users().clone();
        let identity = tokio::task::spawn_blocking(move || match credentials {
            Credentials::Basic { user, password } => {
                users.authenticate(Some(&user), Some(password.as_bytes()))
            }
            Credentials::Bearer(token) => users.authenticate_token(token.as_bytes()),
        })
        .await
        .ok()?
        .ok()?;
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= CACHE_CAPACITY {
            verified.clear();
        }
        verified.insert(key, identity.clone());
        Some(identity)
    }
}

/// `qos` and `retain` from the query string.
fn options(query: Option<&str>) -> Result<(QoS, bool), String> {
    let mut qos = QoS::AtLeastOnce;
    let mut retain = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "qos" => {
                qos = match value {
                    "0" => QoS::AtMostOnce,
                    "1" => QoS::AtLeastOnce,
                    "2" => QoS::ExactlyOnce,
                    _ => return Err(format!("parameter qos: expected 0, 1 or 2, got {value:?}")),
                }
            }
            "retain" => {
                retain = match value {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(format!(
                            "parameter retain: expected true or false, got {value:?}"
                        ))
                    }
                }
            }
            _ => return Err(format!("unknown parameter {key:?}; expected qos or retain")),
        }
    }
    Ok((qos, retain))
}

async fn publish(
    State(api): State<Arc<PublishApi>>,
    Path(topic): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let credentials = match Credentials::parse(&headers) {
        Ok(credentials) => credentials,
        Err(message) => return unauthorized(message),
    };
    let (qos, retain) = match options(query.as_deref()) {
        Ok(options) => options,
        Err(message) => return answer(StatusCode::BAD_REQUEST, message),
    };
    let Some(identity) = api.identify(credentials).await else {
        return unauthorized("bad user name, password or token");
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the payload is larger than limits.max_packet_size",
            )
        }
        Err(rejection) => return answer(rejection.status(), rejection.body_text()),
    };
    match api
        .broker
        .publish(
            &identity,
            &topic,
            body,
            qos,
            retain,
            PublishProperties::default(),
        )
        .await
    {
        Ok(id) => (StatusCode::OK, Json(json!({ "id": id, "topic": topic }))).into_response(),
        Err(error @ PublishError::NotAuthorized { .. }) => {
            answer(StatusCode::FORBIDDEN, error.to_string())
        }
        Err(error @ PublishError::InvalidTopic(_)) => {
            answer(StatusCode::BAD_REQUEST, error.to_string())
        }
        Err(error @ PublishError::NotStored) => {
            answer(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
        }
        Err(error @ PublishError::RetainedQuotaFull(_)) => {
            answer(StatusCode::INSUFFICIENT_STORAGE, error.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_credentials_and_options() {
        let mut headers = HeaderMap::new();
        assert!(Credentials::parse(&headers).is_err());
        headers.insert(
            header::AUTHORIZATION,
            "Basic dXNlcjpwYTpzcw==".parse().expect("value"),
        );
        match Credentials::parse(&headers) {
            Ok(Credentials::Basic { user, password }) => {
                assert_eq!((user.as_str(), password.as_str()), ("user", "pa:ss"))
            }
            _ => panic!("basic credentials"),
        }
        headers.insert(header::AUTHORIZATION, "bearer abc".parse().expect("value"));
        assert!(matches!(
            Credentials::parse(&headers),
            Ok(Credentials::Bearer(t)) if t == "abc"
        ));
        headers.insert(header::AUTHORIZATION, "Digest x".parse().expect("value"));
        assert!(Credentials::parse(&headers).is_err());

        assert_eq!(options(None), Ok((QoS::AtLeastOnce, false)));
        assert_eq!(
            options(Some("qos=0&retain=true")),
            Ok((QoS::AtMostOnce, true))
        );
        assert!(options(Some("qos=3")).is_err());
        assert!(options(Some("x=1")).is_err());
    }
}
