//! The JSON form of an event: what the history API (`GET /api/v1/events`, the SSE stream)
//! answers and what `firehose sub` prints for an MQTT message, so that a consumer sees one
//! shape whichever way it reads (`docs/consumers.md`).
//!
//! A leaf beside the store (layer 2): depends on the store's [`Event`] type only, and on
//! serde_json, base64 and humantime. Used by `transport::history` ([`event_json`]) and
//! `cli::sub` ([`to_json`] of an MQTT message).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::store::Event;

/// What an event's JSON is made of. An event of the log has all of it; an MQTT message that
/// `firehose sub` prints has no log id and no publisher (MQTT carries neither), and the time
/// it was received.
#[derive(Debug, Clone, Copy)]
pub struct EventParts<'a> {
    /// The log's id of the event, when known.
    pub id: Option<u64>,
    /// When the event was received.
    pub time: SystemTime,
    /// Its topic.
    pub topic: &'a str,
    /// QoS as published (0, 1 or 2).
    pub qos: u8,
    /// The retain flag.
    pub retain: bool,
    /// The identity that published it, when known.
    pub publisher: Option<&'a str>,
    /// The payload (shown as JSON, text or base64, with its `payload_encoding`).
    pub payload: &'a [u8],
    /// MQTT 5 content type.
    pub content_type: Option<&'a str>,
    /// MQTT 5 user properties, in order.
    pub user_properties: &'a [(String, String)],
    /// MQTT 5 response topic.
    pub response_topic: Option<&'a str>,
}

/// The JSON object of an event: `id`, `time` (RFC 3339, UTC, milliseconds), `topic`, `qos`,
/// `retain`, `publisher`, `payload` and its `payload_encoding`, then the MQTT 5 properties a
/// consumer may use, those that are set. `id` and `publisher` are left out when unknown.
pub fn to_json(event: EventParts<'_>) -> Value {
    let (payload, encoding) = payload_json(event.payload);
    let mut map = Map::new();
    if let Some(id) = event.id {
        map.insert("id".into(), json!(id));
    }
    let time = humantime::format_rfc3339_millis(event.time).to_string();
    map.insert("time".into(), json!(time));
    map.insert("topic".into(), json!(event.topic));
    map.insert("qos".into(), json!(event.qos));
    map.insert("retain".into(), json!(event.retain));
    if let Some(publisher) = event.publisher {
        map.insert("publisher".into(), json!(publisher));
    }
    map.insert("payload".into(), payload);
    map.insert("payload_encoding".into(), json!(encoding));
    if let Some(content_type) = event.content_type {
        map.insert("content_type".into(), json!(content_type));
    }
    if !event.user_properties.is_empty() {
        map.insert("user_properties".into(), json!(event.user_properties));
    }
    if let Some(response_topic) = event.response_topic {
        map.insert("response_topic".into(), json!(response_topic));
    }
    Value::Object(map)
}

/// An event of the log as the history API (and its SSE stream) shows it ([`to_json`]).
pub fn event_json(event: &Event) -> Value {
    let e = &event.event;
    let p = &e.properties;
    to_json(EventParts {
        id: Some(event.id),
        time: UNIX_EPOCH + Duration::from_millis(u64::try_from(e.time_ms).unwrap_or(0)),
        topic: &e.topic,
        qos: e.qos,
        retain: e.retain,
        publisher: Some(&e.publisher),
        payload: &e.payload,
        content_type: p.content_type.as_deref(),
        user_properties: &p.user_properties,
        response_topic: p.response_topic.as_deref(),
    })
}

/// A payload as events show it, with its `payload_encoding`: JSON embedded as JSON, UTF-8 text
/// as a string, anything else as base64.
fn payload_json(payload: &[u8]) -> (Value, &'static str) {
    match serde_json::from_slice::<Value>(payload) {
        Ok(value) if !payload.is_empty() => (value, "json"),
        _ => match std::str::from_utf8(payload) {
            Ok(text) => (Value::String(text.to_owned()), "text"),
            Err(_) => (
                Value::String(base64::engine::general_purpose::STANDARD.encode(payload)),
                "base64",
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_json_text_or_base64() {
        let event = |payload: &'static [u8]| Event {
            id: 1,
            event: crate::store::NewEvent {
                time_ms: 0,
                topic: "t".into(),
                payload: bytes::Bytes::from_static(payload),
                qos: 0,
                retain: false,
                publisher: "p".into(),
                properties: Default::default(),
            },
        };
        let json = event_json(&event(br#"{"type":"comment-added"}"#));
        assert_eq!(json["payload"]["type"], "comment-added");
        assert_eq!(json["payload_encoding"], "json");
        assert_eq!(json["time"], "1970-01-01T00:00:00.000Z");
        let text = event_json(&event(b"hello world"));
        assert_eq!(
            (text["payload"].as_str(), text["payload_encoding"].as_str()),
            (Some("hello world"), Some("text"))
        );
        let binary = event_json(&event(&[0xff, 0x00, 0x10]));
        assert_eq!(
            (
                binary["payload"].as_str(),
                binary["payload_encoding"].as_str()
            ),
            (Some("/wAQ"), Some("base64"))
        );
    }
}
