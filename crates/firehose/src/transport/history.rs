//! The history API on the HTTP listener: `GET /api/v1/events` (pages of the log by topic
//! filter, time and id), `GET /api/v1/events/{id}`, `GET /api/v1/stream` (Server-Sent Events:
//! the log from a position, then live, resumable with `Last-Event-ID`) and the OpenAPI document.
//!
//! Everything is read from the store, so an SSE client that reads slowly only slows its own
//! reads: nothing is buffered for it beyond one page. Events are shown in their JSON form
//! ([`crate::event`]), the one `firehose sub` prints too.
//!
//! Depends on [`crate::broker`] (the store, the log position), [`crate::event`] and the HTTP
//! listener's [`super::limits`].
//!
//! Anyone may query, so what one query may cost is bounded: at most
//! `http.max_history_filters` filters (400 beyond); per page, or per read of an SSE stream,
//! at most `http.history_scan_budget` events examined times filters, and
//! `http.max_page_bytes` of topics and payloads (the page then ends early with `more` and
//! `next_after`, as a page ends at any scan limit). The server takes `http.max_history_reads`
//! reads at once (503 beyond), one client address `http.max_history_reads_per_ip` (answers
//! being sent included) and `http.max_streams_per_ip` streams (429 beyond). Each read runs
//! on a blocking thread; an SSE stream buffers at most [`STREAM_BYTES`] per read.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::Stream;
use serde_json::{json, Value};

use super::http::ClientAddr;
use super::http_body::Holding;
use super::limits::{HttpLimits, Reason, Slot};
use crate::broker::Broker;
use crate::config::parse_duration;
use crate::event::event_json;
use crate::store::{Event, Page, Query};
use crate::topic;

/// Default and largest page size of `GET /api/v1/events`.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Rows one read of an SSE stream may examine while looking for matches (fewer with many
/// filters: see [`History::scan_rows`]).
const SCAN_LIMIT: usize = 50_000;
/// Events an SSE stream reads from the log at once.
const STREAM_BATCH: usize = 256;
/// Bytes of topics and payloads an SSE stream reads from the log at once (one event always
/// fits): a stream holds what it read until its client takes it, and streams are many.
const STREAM_BYTES: usize = 256 * 1024;

/// What one history request may cost (`[http]`).
#[derive(Debug, Clone)]
pub struct HistoryOptions {
    /// Most `topic=` filters per query or stream (`http.max_history_filters`).
    pub max_filters: usize,
    /// Events examined times filters per page or stream read (`http.history_scan_budget`).
    pub scan_budget: usize,
    /// Bytes of topics and payloads per page or stream read (`http.max_page_bytes`).
    pub max_page_bytes: usize,
    /// Reads and streams per client address, and where refusals are counted.
    pub limits: Arc<HttpLimits>,
}

/// The routes' state.
#[derive(Debug)]
struct History {
    broker: Broker,
    options: HistoryOptions,
}

impl History {
    /// The rows a read with `filters` filters may examine: the budget shared among them, as
    /// each row is matched against each filter (in SQL and again exactly).
    fn scan_rows(&self, filters: usize) -> usize {
        (self.options.scan_budget / filters.max(1)).max(1)
    }

    /// A 400 when there are more filters than allowed (counted and logged).
    fn check_filters(&self, params: &Params, client: ClientAddr) -> Result<(), BadRequest> {
        let count = params.filters.len();
        if count <= self.options.max_filters {
            return Ok(());
        }
        self.options
            .limits
            .refused(Reason::HistoryFilters, client.0.ip(), None);
        Err(BadRequest(format!(
            "parameter topic: at most {} filters per query (http.max_history_filters), got {count}",
            self.options.max_filters
        )))
    }
}

/// The routes of the history API, ready to merge into the HTTP server.
///
/// Everything here is public and read-only, so any web page may read it from the browser:
/// responses allow every origin (CORS), which is what dashboards served elsewhere need.
pub fn router(broker: Broker, options: HistoryOptions) -> Router {
    Router::new()
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/events/{id}", get(one_event))
        .route("/api/v1/stream", get(stream))
        .route("/api/v1/openapi.json", get(openapi))
        .with_state(Arc::new(History { broker, options }))
        .layer(axum::middleware::map_response(allow_any_origin))
}

/// The answer to a request refused by a limit: 429 with `Retry-After` for a client's share,
/// 503 when the server has the most reads it takes.
fn too_many(reason: Reason) -> Response {
    let (status, message) = match reason {
        Reason::HistoryReads => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the server has the most history reads in progress (http.max_history_reads)",
        ),
        Reason::StreamsPerIp => (
            StatusCode::TOO_MANY_REQUESTS,
            "this address has the most SSE streams open (http.max_streams_per_ip)",
        ),
        _ => (
            StatusCode::TOO_MANY_REQUESTS,
            "this address has the most history reads in progress \
             (http.max_history_reads_per_ip)",
        ),
    };
    let mut response = (
        status,
        Json(json!({ "error": format!("{message}; try again later") })),
    )
        .into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        header::HeaderValue::from(reason.retry_after_secs()),
    );
    response
}

async fn allow_any_origin(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    response
}

/// A 400 answer naming the parameter that is wrong.
#[derive(Debug)]
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, Json(json!({ "error": self.0 }))).into_response()
    }
}

fn internal(error: impl std::fmt::Display) -> Response {
    tracing::warn!("history API: {error}");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "error": error.to_string() })),
    )
        .into_response()
}

/// The query parameters shared by the list and the stream.
#[derive(Debug, Default)]
struct Params {
    filters: Vec<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    after: Option<u64>,
    limit: Option<usize>,
    heartbeat: Option<Duration>,
}

fn parse_params(raw: Option<&str>, allowed: &[&str]) -> Result<Params, BadRequest> {
    let mut params = Params::default();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key).map_err(BadRequest)?;
        let value = percent_decode(value).map_err(BadRequest)?;
        if !allowed.contains(&key.as_str()) {
            return Err(BadRequest(format!(
                "parameter {key}: unknown; expected one of {}",
                allowed.join(", ")
            )));
        }
        match key.as_str() {
            "topic" => {
                topic::check_filter(&value)
                    .map_err(|e| BadRequest(format!("parameter topic: {value:?}: {e}")))?;
                params.filters.push(value);
            }
            "since" => params.since_ms = Some(parse_time("since", &value)?),
            "until" => params.until_ms = Some(parse_time("until", &value)?),
            "after" => {
                params.after = Some(value.parse().map_err(|_| {
                    BadRequest(format!(
                        "parameter after: expected an event id, got {value:?}"
                    ))
                })?)
            }
            "limit" => {
                let limit: usize = value.parse().map_err(|_| {
                    BadRequest(format!("parameter limit: expected a number, got {value:?}"))
                })?;
                if !(1..=MAX_LIMIT).contains(&limit) {
                    return Err(BadRequest(format!(
                        "parameter limit: must be between 1 and {MAX_LIMIT}, got {limit}"
                    )));
                }
                params.limit = Some(limit);
            }
            "heartbeat" => {
                let secs: u64 = value
                    .parse()
                    .ok()
                    .filter(|s| (1..=300).contains(s))
                    .ok_or_else(|| {
                        BadRequest(format!(
                            "parameter heartbeat: expected 1 to 300 seconds, got {value:?}"
                        ))
                    })?;
                params.heartbeat = Some(Duration::from_secs(secs));
            }
            _ => {}
        }
    }
    if let (Some(since), Some(until)) = (params.since_ms, params.until_ms) {
        if since > until {
            return Err(BadRequest("parameter since is after until".into()));
        }
    }
    Ok(params)
}

/// An RFC 3339 time (`2026-11-25T09:00:00Z`) or a duration back from now (`2h`, `30m`).
fn parse_time(name: &str, value: &str) -> Result<i64, BadRequest> {
    if let Ok(ago) = parse_duration(value) {
        let ago_ms = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
        return Ok(now_ms().saturating_sub(ago_ms));
    }
    parse_rfc3339_ms(value).ok_or_else(|| {
        BadRequest(format!(
            "parameter {name}: expected an RFC 3339 time (2026-01-31T12:00:00Z or with an offset like +02:00) or a duration (90s, 30m, 2h, 7d), got {value:?}"
        ))
    })
}

/// Milliseconds since the Unix epoch of an RFC 3339 time: `YYYY-MM-DDTHH:MM:SS[.frac]` then `Z`
/// or `+HH:MM`/`-HH:MM` (a space may replace the `T`).
fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        millis = padded.parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ => {
            let ob = rest.as_bytes();
            if ob.len() != 6 || ob[3] != b':' {
                return None;
            }
            let sign = match ob[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let hours: i64 = rest.get(1..3)?.parse().ok()?;
            let minutes: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (hours * 60 + minutes)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            // `+` stays `+`: it is the MQTT single-level wildcard, and this API takes no HTML
            // form posts (write a space as %20).
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-encoding in {text:?}"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("query parameter {text:?} is not UTF-8"))
}

fn page_json(page: &Page, limit: usize) -> Value {
    let events: Vec<Value> = page.events.iter().map(event_json).collect();
    let more = page.more || page.events.len() >= limit;
    json!({
        "events": events,
        "next_after": if more { Some(page.scanned_to) } else { None },
        "more": more,
        "scanned_to": page.scanned_to,
    })
}

async fn list_events(
    State(history): State<Arc<History>>,
    Extension(client): Extension<ClientAddr>,
    RawQuery(raw): RawQuery,
) -> Response {
    let params = match parse_params(
        raw.as_deref(),
        &["topic", "since", "until", "after", "limit"],
    ) {
        Ok(p) => p,
        Err(bad) => return bad.into_response(),
    };
    if let Err(refusal) = history.check_filters(&params, client) {
        return refusal.into_response();
    }
    let reading = match history.options.limits.history_read(client.0.ip()) {
        Ok(slot) => slot,
        Err(reason) => return too_many(reason),
    };
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    let query = Query {
        scan_limit: Some(history.scan_rows(params.filters.len())),
        max_bytes: Some(history.options.max_page_bytes),
        filters: params.filters,
        after: params.after.unwrap_or(0),
        since_ms: params.since_ms,
        until_ms: params.until_ms,
        limit,
    };
    let store = history.broker.store().clone();
    match tokio::task::spawn_blocking(move || store.query(&query)).await {
        Ok(Ok(page)) => {
            if page.more && page.events.len() < limit {
                history.options.limits.history_cut();
            }
            holding(&page_json(&page, limit), reading)
        }
        Ok(Err(error)) => internal(error),
        Err(error) => internal(error),
    }
}

/// Bytes of an answer handed to hyper at a time: hyper asks for the next piece only when its
/// write buffer (`http::REQUEST_HEAD_MAX`) has room, so a body in pieces ends when the client
/// has nearly read it, where a body in one piece ends at once.
const ANSWER_PIECE: usize = 16 * 1024;

/// `json` as an answer whose body keeps `reading` (the client's place under
/// `http.max_history_reads_per_ip`) until the client has read all but its last pieces: the
/// page is in memory until then, so a client that reads its answers slowly holds its place,
/// and may not start more reads.
fn holding(json: &Value, reading: Slot) -> Response {
    let bytes = bytes::Bytes::from(json.to_string());
    let length = bytes.len();
    let pieces = (0..length).step_by(ANSWER_PIECE).map(move |start| {
        Ok::<_, Infallible>(bytes.slice(start..(start + ANSWER_PIECE).min(length)))
    });
    let body = axum::body::Body::from_stream(futures_util::stream::iter(pieces));
    (
        [
            (
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            ),
            (header::CONTENT_LENGTH, header::HeaderValue::from(length)),
        ],
        axum::body::Body::new(Holding::new(body, reading)),
    )
        .into_response()
}

async fn one_event(
    State(history): State<Arc<History>>,
    Extension(client): Extension<ClientAddr>,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return BadRequest(format!("event id must be a number, got {id:?}")).into_response();
    };
    let reading = match history.options.limits.history_read(client.0.ip()) {
        Ok(slot) => slot,
        Err(reason) => return too_many(reason),
    };
    let store = history.broker.store().clone();
    match tokio::task::spawn_blocking(move || store.get(id)).await {
        Ok(Ok(Some(event))) => holding(&event_json(&event), reading),
        Ok(Ok(None)) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no event {id} (never existed or removed by retention)") })),
        )
            .into_response(),
        Ok(Err(error)) => internal(error),
        Err(error) => internal(error),
    }
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

/// Where an SSE stream starts: after `Last-Event-ID`, else `after=`, else the first event at or
/// after `since=`, else now.
async fn stream(
    State(history): State<Arc<History>>,
    Extension(client): Extension<ClientAddr>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let params = match parse_params(raw.as_deref(), &["topic", "since", "after", "heartbeat"]) {
        Ok(p) => p,
        Err(bad) => return bad.into_response(),
    };
    if let Err(refusal) = history.check_filters(&params, client) {
        return refusal.into_response();
    }
    let streaming = match history.options.limits.stream(client.0.ip()) {
        Ok(slot) => slot,
        Err(reason) => return too_many(reason),
    };
    let broker = &history.broker;
    let last_event_id = match headers.get("last-event-id").map(|v| v.to_str()) {
        None => None,
        Some(Ok(text)) => match text.trim().parse::<u64>() {
            Ok(id) => Some(id),
            Err(_) => {
                return BadRequest(format!(
                    "header Last-Event-ID: expected an event id, got {text:?}"
                ))
                .into_response()
            }
        },
        Some(Err(_)) => {
            return BadRequest("header Last-Event-ID is not text".into()).into_response()
        }
    };
    let start = match (last_event_id.or(params.after), params.since_ms) {
        (Some(id), _) => id,
        (None, Some(since_ms)) => {
            let store = broker.store().clone();
            let query = Query {
                since_ms: Some(since_ms),
                limit: 1,
                ..Query::default()
            };
            match tokio::task::spawn_blocking(move || store.query(&query)).await {
                Ok(Ok(page)) => page.events.first().map_or(page.scanned_to, |e| e.id - 1),
                Ok(Err(error)) => return internal(error),
                Err(error) => return internal(error),
            }
        }
        // Live: after everything committed so far, so that no event acknowledged before the
        // stream opened is sent (the routing position may still be behind the log).
        (None, None) => broker.store().last_id(),
    };
    let follower = Follower {
        broker: broker.clone(),
        scan_rows: history.scan_rows(params.filters.len()).min(SCAN_LIMIT),
        max_bytes: history.options.max_page_bytes.min(STREAM_BYTES),
        filters: params.filters,
        cursor: start,
        buffer: VecDeque::new(),
        _streaming: streaming,
    };
    let keep_alive = KeepAlive::new()
        .interval(params.heartbeat.unwrap_or(Duration::from_secs(15)))
        .text("heartbeat");
    Sse::new(follower.into_stream())
        .keep_alive(keep_alive)
        .into_response()
}

/// Reads the log from a cursor and then waits for new events: the whole SSE stream.
struct Follower {
    broker: Broker,
    filters: Vec<String>,
    /// Rows one read may examine.
    scan_rows: usize,
    /// Bytes of topics and payloads one read may buffer.
    max_bytes: usize,
    cursor: u64,
    buffer: VecDeque<Event>,
    /// The client's place under `http.max_streams_per_ip`, for as long as the stream lives.
    _streaming: Slot,
}

impl Follower {
    fn into_stream(self) -> impl Stream<Item = Result<SseEvent, Infallible>> {
        futures_util::stream::unfold(self, |mut follower| async move {
            let event = follower.next().await?;
            let sse = SseEvent::default()
                .id(event.id.to_string())
                .data(event_json(&event).to_string());
            Some((Ok(sse), follower))
        })
    }

    /// The next matching event, waiting for it if the log has none yet. `None` ends the stream
    /// (the log cannot be read).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Some(event);
            }
            let store = self.broker.store().clone();
            let filters = self.filters.clone();
            let cursor = self.cursor;
            let (scan_rows, max_bytes) = (self.scan_rows, self.max_bytes);
            let read = tokio::task::spawn_blocking(move || {
                store.read_after_at_most(cursor, &filters, STREAM_BATCH, scan_rows, max_bytes)
            })
            .await;
            let page = match read {
                Ok(Ok(page)) => page,
                Ok(Err(error)) => {
                    tracing::warn!("SSE stream stops: cannot read the log: {error}");
                    return None;
                }
                Err(error) => {
                    tracing::warn!("SSE stream stops: {error}");
                    return None;
                }
            };
            self.cursor = self.cursor.max(page.scanned_to);
            let more = page.more;
            self.buffer.extend(page.events);
            if self.buffer.is_empty() && !more {
                self.broker.wait_for_events_after(self.cursor).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_validated_with_the_parameter_named() {
        let p = parse_params(
            Some("topic=a%2F%23&topic=b/%2B&after=7&limit=5"),
            &["topic", "after", "limit"],
        )
        .expect("valid");
        assert_eq!(p.filters, vec!["a/#".to_owned(), "b/+".to_owned()]);
        assert_eq!((p.after, p.limit), (Some(7), Some(5)));
        for (query, word) in [
            ("topic=a/%23/b", "topic"),
            ("after=x", "after"),
            ("limit=0", "limit"),
            ("limit=100000", "limit"),
            ("since=yesterday", "since"),
            ("colour=red", "parameter colour: unknown"),
            ("topic=%zz", "percent"),
        ] {
            let err =
                parse_params(Some(query), &["topic", "after", "limit", "since"]).expect_err(query);
            assert!(err.0.contains(word), "{query}: {}", err.0);
        }
    }

    #[test]
    fn times_accept_rfc3339_and_durations() {
        assert_eq!(
            parse_time("since", "1970-01-01T00:00:01Z").expect("rfc3339"),
            1000
        );
        let cases = [
            ("1970-01-01T02:00:01.5+02:00", 1500),
            ("2000-03-01T00:00:00-01:30", 951_874_200_000),
            ("2026-11-25T09:10:43.205Z", 1_795_597_843_205),
            ("2024-02-29 23:59:59z", 1_709_251_199_000),
        ];
        for (text, ms) in cases {
            assert_eq!(parse_time("since", text).expect(text), ms, "{text}");
        }
        for bad in [
            "2026-13-01T00:00:00Z",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00:00+0200",
        ] {
            assert!(parse_time("since", bad).is_err(), "{bad}");
        }
        let two_hours_ago = parse_time("since", "2h").expect("duration");
        let expected = now_ms() - 7_200_000;
        assert!((two_hours_ago - expected).abs() < 5_000);
        let p = parse_params(
            Some("since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z"),
            &["since", "until"],
        );
        assert!(p.expect_err("since after until").0.contains("until"));
    }
}
