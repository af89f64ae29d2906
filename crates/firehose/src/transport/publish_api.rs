//! HTTP publish: `POST /api/v1/publish/<topic>` with the payload as the body, for publishers
//! that do not speak MQTT (a CI job's `curl`, a cron script).
//!
//! Depends on [`crate::broker`] (publishing, the users file), [`crate::auth`] and the HTTP
//! listener's [`super::limits`], [`super::cross_site`] and [`super::http_body`].
//!
//! - Cross-site browser requests are refused with 403 before anything else
//!   ([`super::cross_site`]): a page of another site cannot make a visitor's browser publish
//!   with the credentials it holds.
//! - Authentication comes from the headers alone, before the body is read: `Authorization:
//!   Basic` with a user name and password of the users file, or `Authorization: Bearer
//!   <user>:<token>` for a user with a `token` hash (a bare token works while only one user
//!   has one: [`crate::auth::Users::authenticate_token`]). Wrong or missing credentials get 401
//!   and the body is never read (nor a `100 Continue` sent); a topic outside the user's
//!   `publish` filters gets 403, exactly as the MQTT access model decides.
//! - The answer, 200 `{"id": <event id>, "topic": ...}`, comes once the event is committed to
//!   the log: the id can be fed to `GET /api/v1/events/<id>`.
//! - `?qos=0|1|2` (default 1) and `?retain=true` set the message's QoS and retain flag;
//!   a body larger than `limits.max_packet_size` gets 413 (from its `Content-Length` alone
//!   when it declares one), a body that does not arrive within `http.body_timeout_secs` 408.
//! - A topic with more levels than `limits.max_topic_levels` gets 400; a retained message to a
//!   new topic beyond the retained quota (`limits.max_retained_messages`,
//!   `limits.max_retained_bytes`) gets 507.
//!
//! Passwords (Basic) go through the broker's own checks ([`Broker::check_password`]): the same
//! remembered logins, backoff after failures by address and by user name, and bounded queue as
//! an MQTT CONNECT, so guessing over HTTP is held to the same limits; a login refused unchecked
//! (backing off, too many checks) gets 503. Tokens (Bearer) cost one argon2 hash each (tens of
//! milliseconds, on a blocking thread): at most [`MAX_CONCURRENT_CHECKS`] run at once and
//! [`MAX_WAITING_CHECKS`] more may wait; beyond that a request gets 503 at once rather than a
//! place in an ever longer queue. Successful tokens are remembered by their SHA-256 so that a
//! publisher posting in a loop pays that once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, Request, State};
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

use super::http::ClientAddr;
use super::http_body::BodyError;
use super::limits::{HttpLimits, Reason};
use crate::auth::Identity;
use crate::broker::{Broker, LoginRefusal, PublishError};

/// Password or token checks running at once. Bounds the CPU an attacker who posts random
/// credentials can take.
pub const MAX_CONCURRENT_CHECKS: usize = 4;

/// Checks that may wait for one of the [`MAX_CONCURRENT_CHECKS`]; a request beyond them gets
/// 503 at once, so a flood of bad credentials cannot queue good ones behind it for long.
pub const MAX_WAITING_CHECKS: usize = 32;

/// Credentials remembered after a successful check; the cache is emptied when full.
const CACHE_CAPACITY: usize = 1024;

/// What the publish API needs from the HTTP listener.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Largest payload accepted (`limits.max_packet_size`).
    pub max_body: usize,
    /// Origins besides this server's that may publish from a browser (`http.allowed_origins`).
    pub allowed_origins: Vec<String>,
    /// Where refusals are counted and logged.
    pub limits: Arc<HttpLimits>,
}

/// The route, ready to merge into the HTTP server.
pub fn router(broker: Broker, options: PublishOptions) -> Router {
    let api = Arc::new(PublishApi {
        broker,
        options,
        checks: Semaphore::new(MAX_CONCURRENT_CHECKS),
        checks_wanted: AtomicUsize::new(0),
        verified: Mutex::new(HashMap::new()),
    });
    Router::new()
        .route("/api/v1/publish/{*topic}", post(publish))
        .route("/api/v1/publish", post(no_topic))
        .route("/api/v1/publish/", post(no_topic))
        .with_state(api)
}

struct PublishApi {
    broker: Broker,
    options: PublishOptions,
    checks: Semaphore,
    /// Checks running or waiting, bounded by [`MAX_CONCURRENT_CHECKS`] +
    /// [`MAX_WAITING_CHECKS`].
    checks_wanted: AtomicUsize,
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

/// Why credentials did not give an identity.
enum Unverified {
    /// They are wrong.
    Bad,
    /// Too many checks are waiting: try again shortly.
    Busy,
}

impl Credentials {
    /// The user name they claim, for the log (a bearer token's prefix is only a claim).
    fn claimed_user(&self) -> &str {
        match self {
            Credentials::Basic { user, .. } => user,
            Credentials::Bearer(token) => token.split_once(':').map_or("", |(user, _)| user),
        }
    }
}

impl PublishApi {
    /// Who the credentials identify, presented from `ip`.
    async fn identify(
        &self,
        credentials: &Credentials,
        ip: IpAddr,
    ) -> Result<Identity, Unverified> {
        if let Credentials::Basic { user, password } = credentials {
            // The broker's checks: the same remembered logins, backoff by address and user
            // name, and queue of checks as an MQTT CONNECT, so HTTP is no way around them.
            return self
                .broker
                .check_password(ip, user, password.as_bytes())
                .await
                .map_err(|refusal| match refusal {
                    LoginRefusal::BadCredentials => Unverified::Bad,
                    LoginRefusal::BackingOff | LoginRefusal::Busy => Unverified::Busy,
                });
        }
        let key = credentials.digest();
        if let Some(identity) = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(identity.clone());
        }
        let _wanted = WantedCheck::claim(&self.checks_wanted).ok_or(Unverified::Busy)?;
        let _permit = self.checks.acquire().await.map_err(|_| Unverified::Busy)?;
        let users = self.broker.users().clone();
        let check = match credentials {
            Credentials::Basic { user, password } => {
                let (user, password) = (user.clone(), password.clone());
                tokio::task::spawn_blocking(move || {
                    users.authenticate(Some(&user), Some(password.as_bytes()))
                })
            }
            Credentials::Bearer(token) => {
                let token = token.clone();
                tokio::task::spawn_blocking(move || users.authenticate_token(token.as_bytes()))
            }
        };
        let identity = match check.await {
            Ok(Ok(identity)) => identity,
            _ => return Err(Unverified::Bad),
        };
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= CACHE_CAPACITY {
            verified.clear();
        }
        verified.insert(key, identity.clone());
        Ok(identity)
    }
}

/// A place among the checks running or waiting, given back when dropped.
struct WantedCheck<'a>(&'a AtomicUsize);

impl<'a> WantedCheck<'a> {
    fn claim(wanted: &'a AtomicUsize) -> Option<WantedCheck<'a>> {
        let before = wanted.fetch_add(1, Ordering::AcqRel);
        if before >= MAX_CONCURRENT_CHECKS + MAX_WAITING_CHECKS {
            wanted.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(WantedCheck(wanted))
    }
}

impl Drop for WantedCheck<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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

/// Refusals before the body, in order: a cross-site browser request, missing or malformed
/// credentials, a bad query, wrong credentials, a declared length over the limit. Only then is
/// the body read.
async fn publish(
    State(api): State<Arc<PublishApi>>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    Path(topic): Path<String>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let headers = request.headers();
    if let Err(refusal) = super::cross_site::check(headers, &api.options.allowed_origins) {
        api.options
            .limits
            .refused(Reason::CrossSite, client.ip(), Some(&refusal.origin));
        return answer(StatusCode::FORBIDDEN, refusal.to_string());
    }
    let credentials = match Credentials::parse(headers) {
        Ok(credentials) => credentials,
        Err(message) => return unauthorized(message),
    };
    let (qos, retain) = match options(query.as_deref()) {
        Ok(options) => options,
        Err(message) => return answer(StatusCode::BAD_REQUEST, message),
    };
    let identity = match api.identify(&credentials, client.ip()).await {
        Ok(identity) => identity,
        Err(Unverified::Bad) => {
            api.options.limits.refused(
                Reason::BadCredentials,
                client.ip(),
                Some(credentials.claimed_user()),
            );
            return unauthorized(match credentials {
                Credentials::Basic { .. } => "bad user name, password or token",
                Credentials::Bearer(_) => {
                    "bad token (send it as \"Bearer <user>:<token>\"; a bare token works only \
                     while a single user has one)"
                }
            });
        }
        Err(Unverified::Busy) => {
            api.options
                .limits
                .refused(Reason::ChecksBusy, client.ip(), None);
            return busy();
        }
    };
    if declared_length(request.headers()).is_some_and(|length| length > api.options.max_body) {
        return too_large();
    }
    let body = match read_body(request.into_body(), api.options.max_body).await {
        Ok(body) => body,
        Err(response) => return response,
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

fn busy() -> Response {
    let mut response = answer(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many password checks are waiting; try again in a moment",
    );
    response.headers_mut().insert(
        header::RETRY_AFTER,
        header::HeaderValue::from(Reason::ChecksBusy.retry_after_secs()),
    );
    response
}

fn too_large() -> Response {
    answer(
        StatusCode::PAYLOAD_TOO_LARGE,
        "the payload is larger than limits.max_packet_size",
    )
}

/// The `Content-Length` a request declares, if it declares a readable one.
fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The whole body, at most `max` bytes; an error answer when it is larger (413), late (408,
/// see [`super::http_body`]) or broken (400).
async fn read_body(body: Body, max: usize) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, max).await.map_err(|error| {
        let source = std::error::Error::source(&error);
        let mut cause = source;
        while let Some(error) = cause {
            if error.is::<http_body_util::LengthLimitError>() {
                return too_large();
            }
            if let Some(BodyError::Timeout(timeout)) = error.downcast_ref::<BodyError>() {
                return answer(StatusCode::REQUEST_TIMEOUT, timeout.to_string());
            }
            cause = error.source();
        }
        answer(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {error}"),
        )
    })
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
