//! Retained messages: the last message kept for each topic, and the quota that bounds them.
//!
//! Why a quota: every retained message stays in memory (and in the log's `retained` table)
//! until it is cleared, so a publisher writing to ever new topics would grow the broker
//! without end. A new retained topic, or a replacement that grows one, first claims its
//! room; the claim is held from acceptance until the message is in place (or dropped), so
//! that messages on their way through the log count too and the limits hold however many
//! are in flight. Replacing a topic with a message no larger, and clearing one, always pass.

use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use super::message::Message;
use crate::topic::{level_count, TopicNames};

/// What a retained message is charged besides its topic and payload, once for the message
/// and once per topic level. Measured as the broker's RSS growth per retained message
/// (release build, 2026-11-26): about 170 bytes per message and 240-261 bytes per level of
/// the tree (a map, its table and a key per level), the most at 128 levels. With 320 the
/// byte limit bounds the memory retained messages take, deep topics included.
pub const RETAINED_ALLOWANCE: u64 = 320;

/// The room a retained message takes in the byte limit: see [`RETAINED_ALLOWANCE`].
pub fn retained_cost(topic: &str, payload_len: usize) -> u64 {
    let levels = level_count(topic) as u64;
    (topic.len() + payload_len) as u64 + RETAINED_ALLOWANCE * (levels + 1)
}

/// Messages and bytes, kept or claimed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Retained messages.
    pub messages: u64,
    /// Their [`retained_cost`]s.
    pub bytes: u64,
}

/// Why a retained message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuotaFull {
    /// `limits.max_retained_messages` reached.
    #[error("the broker keeps at most {0} retained messages (limits.max_retained_messages)")]
    Messages(u64),
    /// `limits.max_retained_bytes` reached.
    #[error("retained messages may take at most {0} bytes (limits.max_retained_bytes)")]
    Bytes(u64),
}

/// The retained messages by topic, with what they take.
#[derive(Debug)]
pub struct Retained {
    kept: RwLock<Kept>,
    quota: Arc<Quota>,
}

#[derive(Default)]
struct Kept {
    /// Found by filter on subscribe without testing every topic.
    names: TopicNames<Arc<Message>>,
    /// The sum of the kept messages' [`retained_cost`]s.
    bytes: u64,
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept")
            .field("messages", &self.names.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

#[derive(Debug)]
struct Quota {
    /// 0 = no limit.
    max_messages: u64,
    /// 0 = no limit.
    max_bytes: u64,
    /// Room held by accepted messages not yet in place.
    claimed: Mutex<Usage>,
}

impl Quota {
    fn claimed(&self) -> MutexGuard<'_, Usage> {
        self.claimed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The limit `usage` goes beyond, if any.
    fn exceeded_by(&self, usage: Usage) -> Option<QuotaFull> {
        if self.max_messages > 0 && usage.messages > self.max_messages {
            return Some(QuotaFull::Messages(self.max_messages));
        }
        if self.max_bytes > 0 && usage.bytes > self.max_bytes {
            return Some(QuotaFull::Bytes(self.max_bytes));
        }
        None
    }
}

/// Room claimed for one accepted retained message, given back when it is dropped: after the
/// message is in place (where the kept usage counts it) or when it is not stored.
#[derive(Debug)]
pub struct Claim {
    quota: Arc<Quota>,
    usage: Usage,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut claimed = self.quota.claimed();
        claimed.messages -= self.usage.messages;
        claimed.bytes -= self.usage.bytes;
    }
}

impl Default for Retained {
    /// No limits.
    fn default() -> Self {
        Retained::new(0, 0)
    }
}

impl Retained {
    /// At most `max_messages` messages taking at most `max_bytes` ([`retained_cost`]); 0 lifts
    /// a limit.
    pub fn new(max_messages: u64, max_bytes: u64) -> Retained {
        Retained {
            kept: RwLock::default(),
            quota: Arc::new(Quota {
                max_messages,
                max_bytes,
                claimed: Mutex::default(),
            }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Kept> {
        self.kept.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims room for a retained message of `payload_len` bytes to `topic`, to be held until
    /// it is in place. `None` when it needs no room: a clear (empty payload), or a replacement
    /// no larger than the message it replaces.
    ///
    /// # Errors
    /// [`QuotaFull`] when the kept and claimed messages leave no room for it.
    pub fn claim(&self, topic: &str, payload_len: usize) -> Result<Option<Box<Claim>>, QuotaFull> {
        if payload_len == 0 {
            return Ok(None);
        }
        let cost = retained_cost(topic, payload_len);
        let kept = self.read();
        let replaced = kept
            .names
            .get(topic)
            .map(|old| retained_cost(&old.topic, old.payload.len()));
        let usage = Usage {
            messages: u64::from(replaced.is_none()),
            bytes: cost.saturating_sub(replaced.unwrap_or(0)),
        };
        if usage == Usage::default() {
            return Ok(None);
        }
        let quota = &self.quota;
        let mut claimed = quota.claimed();
        let total = Usage {
            messages: kept.names.len() as u64 + claimed.messages + usage.messages,
            bytes: kept.bytes + claimed.bytes + usage.bytes,
        };
        if let Some(full) = quota.exceeded_by(total) {
            return Err(full);
        }
        claimed.messages += usage.messages;
        claimed.bytes += usage.bytes;
        Ok(Some(Box::new(Claim {
            quota: Arc::clone(quota),
            usage,
        })))
    }

    /// Keeps `message` as its topic's retained message, or clears the topic (empty payload).
    /// Unchecked: the limits were checked when its room was claimed (`$SYS` statistics and
    /// messages restored at startup claim none).
    pub fn set(&self, message: &Arc<Message>) {
        let mut kept = self.kept.write().unwrap_or_else(|p| p.into_inner());
        let old = if message.payload.is_empty() {
            kept.names.remove(&message.topic)
        } else {
            kept.bytes += retained_cost(&message.topic, message.payload.len());
            kept.names.insert(&message.topic, Arc::clone(message))
        };
        if let Some(old) = old {
            kept.bytes -= retained_cost(&old.topic, old.payload.len());
        }
    }

    /// What the kept messages take.
    pub fn usage(&self) -> Usage {
        let kept = self.read();
        Usage {
            messages: kept.names.len() as u64,
            bytes: kept.bytes,
        }
    }

    /// The limit the kept messages go beyond, if any: only after a restart with a lowered
    /// quota, since nothing beyond it is kept otherwise.
    pub fn over_quota(&self) -> Option<QuotaFull> {
        self.quota.exceeded_by(self.usage())
    }

    /// Retained messages whose topic matches `filter`.
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        self.read()
            .names
            .matching(filter)
            .into_iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use firehose_codec::{PublishProperties, QoS};

    use super::*;

    fn message(topic: &str, payload: &str) -> Arc<Message> {
        Arc::new(Message::new(
            0,
            topic.into(),
            Bytes::copy_from_slice(payload.as_bytes()),
            QoS::AtMostOnce,
            true,
            PublishProperties::default(),
            "test".into(),
        ))
    }

    /// Claims room and puts the message in place, as the broker does.
    fn publish(retained: &Retained, topic: &str, payload: &str) -> Result<(), QuotaFull> {
        let claim = retained.claim(topic, payload.len())?;
        retained.set(&message(topic, payload));
        drop(claim);
        Ok(())
    }

    #[test]
    fn the_cost_counts_topic_payload_and_an_allowance_per_message_and_level() {
        assert_eq!(retained_cost("a", 10), 1 + 10 + 2 * RETAINED_ALLOWANCE);
        assert_eq!(retained_cost("a/b/", 0), 4 + 4 * RETAINED_ALLOWANCE);
    }

    #[test]
    fn new_topics_are_refused_at_the_message_limit_but_replacements_and_clears_pass() {
        let retained = Retained::new(2, 0);
        publish(&retained, "r/1", "one").expect("first");
        publish(&retained, "r/2", "two").expect("second");
        assert_eq!(
            publish(&retained, "r/3", "three"),
            Err(QuotaFull::Messages(2))
        );
        assert_eq!(retained.usage().messages, 2);
        publish(&retained, "r/1", "one, larger").expect("a replacement needs no new message");
        publish(&retained, "r/1", "").expect("a clear always passes");
        publish(&retained, "r/3", "three").expect("room again after the clear");
        let topics: Vec<_> = retained
            .matching("r/#")
            .iter()
            .map(|m| m.topic.to_string())
            .collect();
        assert_eq!(topics.len(), 2);
        assert!(topics.contains(&"r/2".to_owned()) && topics.contains(&"r/3".to_owned()));
    }

    #[test]
    fn the_byte_limit_refuses_growth_but_not_shrinking() {
        let room = retained_cost("t", 1000);
        let retained = Retained::new(0, room);
        publish(&retained, "t", &"x".repeat(1000)).expect("fits exactly");
        assert_eq!(retained.usage().bytes, room);
        assert_eq!(
            publish(&retained, "t", &"x".repeat(1001)),
            Err(QuotaFull::Bytes(room)),
            "growing past the limit"
        );
        assert_eq!(publish(&retained, "u", "x"), Err(QuotaFull::Bytes(room)));
        publish(&retained, "t", "small").expect("shrinking");
        assert_eq!(retained.usage().bytes, retained_cost("t", 5));
        publish(&retained, "u", "x").expect("room made by shrinking");
        publish(&retained, "t", "").expect("clear");
        publish(&retained, "u", "").expect("clear");
        assert_eq!(retained.usage(), Usage::default());
    }

    #[test]
    fn claims_in_flight_count_until_dropped() {
        let retained = Retained::new(2, 0);
        let first = retained
            .claim("a", 1)
            .expect("room")
            .expect("a new topic claims");
        let second = retained
            .claim("b", 1)
            .expect("room")
            .expect("a new topic claims");
        assert_eq!(
            retained.claim("c", 1).map(|c| c.is_some()),
            Err(QuotaFull::Messages(2)),
            "two messages on their way fill the quota"
        );
        drop(first); // not stored, say
        retained.set(&message("b", "1"));
        drop(second);
        assert!(retained.claim("c", 1).expect("room").is_some());
        assert!(
            retained.claim("b", 1).expect("room").is_none(),
            "a replacement of the same size claims nothing"
        );
        assert!(
            retained.claim("c", 0).expect("room").is_none(),
            "a clear claims nothing"
        );
    }

    #[test]
    fn no_limits_keep_everything() {
        let retained = Retained::default();
        for i in 0..1000 {
            publish(&retained, &format!("many/{i}"), "x").expect("no limit");
        }
        assert_eq!(retained.usage().messages, 1000);
    }
}
