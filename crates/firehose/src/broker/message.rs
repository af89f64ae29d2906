//! An accepted application message, shared by every subscriber it is delivered to.
//!
//! Encoding is the costly part of fan-out, so a message keeps its wire encoding per variant
//! (protocol version x QoS x retain flag), made once on first use and shared as `Bytes` by every
//! connection that sends it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use firehose_codec::{
    encode_publish_parts, EncodeError, Protocol, Publish, PublishParts, PublishProperties,
    PublishRef, QoS,
};
use once_cell::race::OnceBox;

use crate::store::{Event, EventProperties, NewEvent};

/// One application message as the broker routes it.
#[derive(Debug)]
pub struct Message {
    /// Event id in the log; 0 for messages that are not logged (`$SYS`).
    pub id: u64,
    /// Topic name.
    pub topic: Arc<str>,
    /// Payload as received (a slice of the publisher's read buffer).
    pub payload: Bytes,
    /// QoS the publisher used; the upper bound for every delivery.
    pub qos: QoS,
    /// Retain flag as published.
    pub retain: bool,
    /// MQTT 5 properties passed through to subscribers (no topic alias, no subscription ids);
    /// `None` when there are none, as for most messages (see [`Message::properties`]).
    properties: Option<Box<PublishProperties>>,
    /// Client id of the publisher, for No Local.
    pub publisher: Arc<str>,
    /// When the message expires (MQTT 5 Message Expiry Interval), if ever.
    pub expires_at: Option<Instant>,
    /// Cached encodings, indexed by [`Variant`]. Boxed: most messages use one variant, and
    /// twelve inline slots would make every message (also those waiting for the log) three
    /// times larger. A `OnceBox` is one pointer, half a `OnceLock<Box<_>>`.
    encoded: [OnceBox<PublishParts>; 12],
}

/// The properties of a message that has none.
static NO_PROPERTIES: PublishProperties = PublishProperties {
    payload_format_indicator: None,
    message_expiry_interval: None,
    topic_alias: None,
    response_topic: None,
    correlation_data: None,
    user_properties: Vec::new(),
    subscription_identifiers: Vec::new(),
    content_type: None,
};

/// Whether `p` holds no property, field by field: the derived `==` against
/// [`NO_PROPERTIES`] called `memcmp` per field and cost as much as the copy it saves.
fn is_empty(p: &PublishProperties) -> bool {
    let PublishProperties {
        payload_format_indicator,
        message_expiry_interval,
        topic_alias,
        response_topic,
        correlation_data,
        user_properties,
        subscription_identifiers,
        content_type,
    } = p;
    payload_format_indicator.is_none()
        && message_expiry_interval.is_none()
        && topic_alias.is_none()
        && response_topic.is_none()
        && correlation_data.is_none()
        && user_properties.is_empty()
        && subscription_identifiers.is_empty()
        && content_type.is_none()
}

/// Which of a message's shared encodings a delivery uses: protocol version x QoS x retain flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// Protocol of the receiving connection.
    pub protocol: Protocol,
    /// QoS of the delivery.
    pub qos: QoS,
    /// Retain flag sent.
    pub retain: bool,
}

impl Variant {
    fn index(self) -> usize {
        let p = match self.protocol {
            Protocol::V311 => 0,
            Protocol::V5 => 1,
        };
        p * 6 + (self.qos as usize) * 2 + usize::from(self.retain)
    }
}

impl Message {
    /// Builds a message; `properties.topic_alias` and subscription identifiers are cleared since
    /// they belong to one connection, not to the message.
    ///
    /// Properties are boxed only when there are some: a message is moved on its way into its
    /// `Arc`, and inline properties made each move three times longer.
    pub fn new(
        id: u64,
        topic: Arc<str>,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        mut properties: PublishProperties,
        publisher: Arc<str>,
    ) -> Message {
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        let expires_at = properties
            .message_expiry_interval
            .map(|secs| Instant::now() + Duration::from_secs(secs.into()));
        let properties = (!is_empty(&properties)).then(|| Box::new(properties));
        Message {
            id,
            topic,
            payload,
            qos,
            retain,
            properties,
            publisher,
            expires_at,
            encoded: Default::default(),
        }
    }

    /// MQTT 5 properties passed through to subscribers (no topic alias, no subscription ids).
    pub fn properties(&self) -> &PublishProperties {
        self.properties.as_deref().unwrap_or(&NO_PROPERTIES)
    }

    /// Whether the message may no longer be delivered.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Seconds left before expiry (at least 1 while not expired), for the forwarded Message
    /// Expiry Interval.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now).as_secs();
            u32::try_from(left.max(1)).unwrap_or(u32::MAX)
        })
    }

    /// The shared encoding for one variant, made on first use. Only valid for messages without
    /// an expiry (whose forwarded interval changes with time) and for deliveries that add no
    /// per-subscriber properties.
    ///
    /// # Errors
    /// [`EncodeError`] if the message cannot be represented (cannot happen for a message that
    /// was decoded, but is not assumed).
    #[inline]
    pub fn shared_parts(&self, variant: Variant) -> Result<&PublishParts, EncodeError> {
        match self.encoded[variant.index()].get() {
            Some(parts) => Ok(parts),
            None => self.encode_variant(variant),
        }
    }

    /// The first use of a variant: encodes it (once, whoever wins a race).
    #[cold]
    fn encode_variant(&self, variant: Variant) -> Result<&PublishParts, EncodeError> {
        let slot = &self.encoded[variant.index()];
        // Borrowed, not a `Publish`: that copied the topic and properties of every message.
        let publish = PublishRef {
            dup: false,
            qos: variant.qos,
            retain: variant.retain,
            topic: &self.topic,
            properties: self.properties(),
            payload: &self.payload,
        };
        let parts = Box::new(encode_publish_parts(&publish, variant.protocol)?);
        Ok(slot.get_or_init(|| parts))
    }

    /// The shared encoding for one variant if [`Message::shared_parts`] made it already.
    pub fn encoded_parts(&self, variant: Variant) -> Option<&PublishParts> {
        self.encoded[variant.index()].get()
    }

    /// The PUBLISH packet for one delivery (packet id unset), for the per-subscriber path.
    pub fn to_publish(&self, qos: QoS, retain: bool) -> Publish {
        Publish {
            dup: false,
            qos,
            retain,
            topic: self.topic.to_string(),
            packet_id: None,
            properties: self.properties().clone(),
            payload: self.payload.clone(),
        }
    }
}

/// One message on its way to one session, with the options of the subscription that chose it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared message.
    pub message: Arc<Message>,
    /// QoS of this delivery: the lower of the message's and the subscription's.
    pub qos: QoS,
    /// Retain flag to send (set for retained messages sent on subscribe, or Retain As Published).
    pub retain: bool,
    /// Whether it came through the log in id order (live routing or catch-up), so that its id
    /// counts for the session's cursor; retained messages sent on subscribe do not.
    pub from_log: bool,
    /// MQTT 5 subscription identifiers of the matching subscriptions.
    pub subscription_ids: Vec<u32>,
}

/// Milliseconds since the Unix epoch, the log's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Message {
    /// The log's record of this message, received at `time_ms` from `publisher`.
    pub fn to_new_event(&self, time_ms: i64, publisher: Arc<str>) -> NewEvent {
        let p = self.properties();
        NewEvent {
            time_ms,
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            qos: self.qos as u8,
            retain: self.retain,
            publisher,
            properties: EventProperties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: p.message_expiry_interval,
                content_type: p.content_type.clone(),
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
            },
        }
    }

    /// A message read back from the log (session catch-up, retained messages at startup). Its
    /// expiry counts from the time it was received, not from now.
    pub fn from_event(event: &Event) -> Message {
        let e = &event.event;
        let p = &e.properties;
        let properties = PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: None,
            topic_alias: None,
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
            subscription_identifiers: Vec::new(),
            content_type: p.content_type.clone(),
        };
        let mut message = Message::new(
            event.id,
            e.topic.clone(),
            e.payload.clone(),
            QoS::from_u8(e.qos).unwrap_or(QoS::AtMostOnce),
            e.retain,
            properties,
            e.publisher.clone(),
        );
        if let Some(secs) = p.message_expiry_interval {
            let expires_ms = e.time_ms.saturating_add(i64::from(secs) * 1000);
            let left = u64::try_from(expires_ms.saturating_sub(now_ms())).unwrap_or(0);
            message
                .properties
                .get_or_insert_with(Box::default)
                .message_expiry_interval = Some(secs);
            message.expires_at = Some(Instant::now() + Duration::from_millis(left));
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(properties: PublishProperties) -> Message {
        Message::new(
            7,
            "a/b".into(),
            Bytes::from_static(b"hello"),
            QoS::AtLeastOnce,
            false,
            properties,
            "publisher".into(),
        )
    }

    #[test]
    fn a_message_stays_small_enough_to_move_cheaply() {
        // Every publish moves its message into an `Arc` and its publication; the properties
        // and encodings were once inline and made it over 400 bytes.
        let size = std::mem::size_of::<Message>();
        assert!(size <= 224, "Message is {size} bytes");
    }

    #[test]
    fn properties_are_boxed_only_when_there_are_some() {
        let plain = message(PublishProperties {
            topic_alias: Some(3),
            subscription_identifiers: vec![1, 2],
            ..PublishProperties::default()
        });
        assert!(
            plain.properties.is_none(),
            "alias and subscription ids are not kept"
        );
        assert_eq!(plain.properties(), &PublishProperties::default());

        let typed = message(PublishProperties {
            content_type: Some("text/plain".into()),
            topic_alias: Some(3),
            ..PublishProperties::default()
        });
        assert_eq!(
            typed.properties().content_type.as_deref(),
            Some("text/plain")
        );
        assert_eq!(typed.properties().topic_alias, None);
        let event = typed.to_new_event(1, "user".into());
        assert_eq!(event.properties.content_type.as_deref(), Some("text/plain"));
    }

    #[test]
    fn each_variant_is_encoded_once_and_shared() {
        let m = message(PublishProperties::default());
        let variant = Variant {
            protocol: Protocol::V5,
            qos: QoS::AtLeastOnce,
            retain: false,
        };
        assert!(m.encoded_parts(variant).is_none());
        let first: *const PublishParts = m.shared_parts(variant).expect("encodes");
        let again: *const PublishParts = m.shared_parts(variant).expect("encodes");
        assert_eq!(first, again);
        assert!(m.encoded_parts(variant).is_some());
        let other = Variant {
            protocol: Protocol::V311,
            ..variant
        };
        assert!(m.encoded_parts(other).is_none());
    }
}
