//! An accepted application message, shared by every subscriber it is delivered to.
//!
//! Encoding is the costly part of fan-out, so a message keeps its wire encoding per variant
//! (protocol version x QoS x retain flag), made once on first use and shared as `Bytes` by every
//! connection that sends it.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use firehose_codec::{encode_publish_split, EncodeError, Protocol, Publish, PublishParts, PublishProperties, QoS};

/// One application message as the broker routes it.
#[derive(Debug)]
pub struct Message {
    /// Topic name.
    pub topic: Arc<str>,
    /// Payload as received (a slice of the publisher's read buffer).
    pub payload: Bytes,
    /// QoS the publisher used; the upper bound for every delivery.
    pub qos: QoS,
    /// Retain flag as published.
    pub retain: bool,
    /// MQTT 5 properties passed through to subscribers (no topic alias, no subscription ids).
    pub properties: PublishProperties,
    /// Client id of the publisher, for No Local.
    pub publisher: Arc<str>,
    /// When the message expires (MQTT 5 Message Expiry Interval), if ever.
    pub expires_at: Option<Instant>,
    /// Cached encodings, indexed by [`variant_index`].
    encoded: [OnceLock<PublishParts>; 12],
}

fn variant_index(protocol: Protocol, qos: QoS, retain: bool) -> usize {
    let p = match protocol {
        Protocol::V311 => 0,
        Protocol::V5 => 1,
    };
    p * 6 + (qos as usize) * 2 + usize::from(retain)
}

impl Message {
    /// Builds a message; `properties.topic_alias` and subscription identifiers are cleared since
    /// they belong to one connection, not to the message.
    pub fn new(
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
        Message {
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

    /// The shared encoding for one variant. Only valid for messages without an expiry (whose
    /// forwarded interval changes with time) and for deliveries that add no per-subscriber
    /// properties.
    ///
    /// # Errors
    /// [`EncodeError`] if the message cannot be represented (cannot happen for a message that
    /// was decoded, but is not assumed).
    pub fn shared_parts(
        &self,
        protocol: Protocol,
        qos: QoS,
        retain: bool,
    ) -> Result<&PublishParts, EncodeError> {
        let slot = &self.encoded[variant_index(protocol, qos, retain)];
        if let Some(parts) = slot.get() {
            return Ok(parts);
        }
        let parts = encode_publish_split(&self.to_publish(qos, retain), protocol)?;
        Ok(slot.get_or_init(|| parts))
    }

    /// The PUBLISH packet for one delivery (packet id unset), for the per-subscriber path.
    pub fn to_publish(&self, qos: QoS, retain: bool) -> Publish {
        Publish {
            dup: false,
            qos,
            retain,
            topic: self.topic.to_string(),
            packet_id: None,
            properties: self.properties.clone(),
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
    /// MQTT 5 subscription identifiers of the matching subscriptions.
    pub subscription_ids: Vec<u32>,
}
