//! MQTT 5 topic aliases, both directions, as one type ([`TopicAliases`]): the aliases a client
//! sets for its PUBLISH packets (bounded by [`MAX_ALIAS_TOPIC_BYTES`] of topic names) and the
//! aliases the broker sets towards the client. No I/O: an alias and a topic go in, a topic, an
//! alias or a refusal comes out, so every rule is unit-tested here.
//!
//! Depends on nothing of the broker; the connection keeps one per client that uses aliases.

use std::collections::HashMap;
use std::sync::Arc;

use firehose_codec::ReasonCode;

/// Most bytes of topic names a client's topic aliases may hold. Without it, any client
/// (anonymous ones too: an alias is set before the publish is judged) could keep
/// `topic_alias_maximum` topics of 64 KiB each, 64 MiB, for the life of its connection. The
/// same room as the write queue's.
pub(super) const MAX_ALIAS_TOPIC_BYTES: usize = 256 * 1024;

/// The topic aliases of one connection, in both directions. Each holds a topic name for the
/// life of the connection.
#[derive(Debug, Default)]
pub(super) struct TopicAliases {
    /// Topic aliases the client set (MQTT 5).
    inbound: HashMap<u16, Arc<str>>,
    /// The bytes of the topic names in `inbound` (at most [`MAX_ALIAS_TOPIC_BYTES`]).
    inbound_bytes: usize,
    /// Topic aliases we set towards the client (MQTT 5).
    outbound: HashMap<Arc<str>, u16>,
}

/// Why a client's topic alias ends its connection: each is a protocol violation, with the
/// DISCONNECT reason [`AliasError::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum AliasError {
    /// 0 or beyond the Topic Alias Maximum the broker granted.
    #[error("PUBLISH: topic alias {alias} outside 1..={max}")]
    OutOfRange {
        /// The alias the client used.
        alias: u16,
        /// The Topic Alias Maximum granted in CONNACK.
        max: u16,
    },
    /// An empty topic name with an alias the client never set.
    #[error("PUBLISH: topic alias {0} was never set")]
    NeverSet(u16),
    /// Setting the alias would make the client's aliases hold more than
    /// [`MAX_ALIAS_TOPIC_BYTES`] of topic names.
    #[error(
        "PUBLISH: topic aliases would hold more than {} KiB of topic names",
        MAX_ALIAS_TOPIC_BYTES / 1024
    )]
    TooManyBytes,
}

impl AliasError {
    /// The reason code of the DISCONNECT (MQTT 5) that ends the connection.
    pub(super) fn reason(self) -> ReasonCode {
        match self {
            AliasError::OutOfRange { .. } => ReasonCode::TopicAliasInvalid,
            AliasError::NeverSet(_) => ReasonCode::ProtocolError,
            AliasError::TooManyBytes => ReasonCode::QuotaExceeded,
        }
    }
}

/// The alias a PUBLISH towards the client carries ([`TopicAliases::outbound`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OutboundAlias {
    /// Set earlier for this topic: the PUBLISH carries the alias and an empty topic name.
    Set(u16),
    /// A new alias: the PUBLISH carries the alias and the topic name, and the alias is
    /// remembered ([`TopicAliases::remember`]) once the packet is sure to leave.
    New(u16),
}

impl TopicAliases {
    /// The topic of an inbound PUBLISH that carries `alias` with `topic` (empty: the topic the
    /// alias was set to), setting the alias when a topic is given. `max` is the Topic Alias
    /// Maximum the broker granted.
    ///
    /// # Errors
    /// [`AliasError`] for an alias out of range, never set, or one that would pass the byte
    /// limit (it is set all the same: the connection ends).
    pub(super) fn inbound(
        &mut self,
        alias: u16,
        topic: &str,
        max: u16,
    ) -> Result<Arc<str>, AliasError> {
        if alias == 0 || alias > max {
            return Err(AliasError::OutOfRange { alias, max });
        }
        if topic.is_empty() {
            return self
                .inbound
                .get(&alias)
                .cloned()
                .ok_or(AliasError::NeverSet(alias));
        }
        let topic: Arc<str> = topic.into();
        self.inbound_bytes += topic.len();
        if let Some(replaced) = self.inbound.insert(alias, topic.clone()) {
            self.inbound_bytes -= replaced.len();
        }
        if self.inbound_bytes > MAX_ALIAS_TOPIC_BYTES {
            return Err(AliasError::TooManyBytes);
        }
        Ok(topic)
    }

    /// The alias for a PUBLISH of `topic` towards the client, when `max` (the client's Topic
    /// Alias Maximum, capped by the broker's) allows any: the alias set for the topic, else a
    /// new one while fewer than `max` are set, else none. `aliases` is `None` while the
    /// connection has set none, so that asking makes nothing.
    pub(super) fn outbound(
        aliases: Option<&TopicAliases>,
        topic: &str,
        max: u16,
    ) -> Option<OutboundAlias> {
        let set = aliases.map_or(0, |a| a.outbound.len());
        if let Some(alias) = aliases.and_then(|a| a.outbound.get(topic)) {
            Some(OutboundAlias::Set(*alias))
        } else if set < usize::from(max) {
            Some(OutboundAlias::New(set as u16 + 1))
        } else {
            None
        }
    }

    /// Remembers a new alias towards the client once its PUBLISH is in the write queue.
    pub(super) fn remember(&mut self, topic: Arc<str>, alias: u16) {
        self.outbound.insert(topic, alias);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inbound_alias_is_set_by_a_topic_and_then_stands_for_it() {
        let mut aliases = TopicAliases::default();
        let set = aliases.inbound(3, "a/b", 10).expect("set");
        assert_eq!(&*set, "a/b");
        let used = aliases.inbound(3, "", 10).expect("used");
        assert!(Arc::ptr_eq(&set, &used), "the topic is shared, not copied");
        assert_eq!(&*aliases.inbound(3, "c", 10).expect("reset"), "c");
        assert_eq!(&*aliases.inbound(3, "", 10).expect("used"), "c");
    }

    #[test]
    fn inbound_aliases_outside_the_granted_range_or_never_set_are_refused() {
        let mut aliases = TopicAliases::default();
        for alias in [0, 11] {
            let refused = aliases.inbound(alias, "t", 10);
            assert_eq!(refused, Err(AliasError::OutOfRange { alias, max: 10 }));
            assert_eq!(
                refused.map_err(AliasError::reason),
                Err(ReasonCode::TopicAliasInvalid)
            );
        }
        assert_eq!(aliases.inbound(10, "", 10), Err(AliasError::NeverSet(10)));
        assert_eq!(AliasError::NeverSet(10).reason(), ReasonCode::ProtocolError);
        assert!(aliases.inbound.is_empty(), "a refused alias sets nothing");
    }

    #[test]
    fn inbound_aliases_hold_at_most_their_byte_limit_counting_replacements_once() {
        let mut aliases = TopicAliases::default();
        let half = "x".repeat(MAX_ALIAS_TOPIC_BYTES / 2);
        aliases.inbound(1, &half, 10).expect("half");
        aliases
            .inbound(2, &half, 10)
            .expect("the other half: exactly the limit");
        aliases
            .inbound(2, &half, 10)
            .expect("a replacement by as long a topic takes no more room");
        assert_eq!(aliases.inbound_bytes, MAX_ALIAS_TOPIC_BYTES);
        assert_eq!(aliases.inbound(3, "y", 10), Err(AliasError::TooManyBytes));
        assert_eq!(AliasError::TooManyBytes.reason(), ReasonCode::QuotaExceeded);
        let mut shrunk = TopicAliases::default();
        shrunk.inbound(1, &half, 10).expect("half");
        shrunk.inbound(1, "short", 10).expect("shrinks");
        assert_eq!(shrunk.inbound_bytes, "short".len());
    }

    #[test]
    fn outbound_aliases_are_new_until_the_clients_maximum_then_reused() {
        assert_eq!(
            TopicAliases::outbound(None, "a", 2),
            Some(OutboundAlias::New(1)),
            "asking before any alias is set"
        );
        assert_eq!(
            TopicAliases::outbound(None, "a", 0),
            None,
            "no aliases allowed"
        );
        let mut aliases = TopicAliases::default();
        aliases.remember("a".into(), 1);
        assert_eq!(
            TopicAliases::outbound(Some(&aliases), "a", 2),
            Some(OutboundAlias::Set(1))
        );
        assert_eq!(
            TopicAliases::outbound(Some(&aliases), "b", 2),
            Some(OutboundAlias::New(2))
        );
        aliases.remember("b".into(), 2);
        assert_eq!(
            TopicAliases::outbound(Some(&aliases), "c", 2),
            None,
            "all aliases are taken: the topic goes in full"
        );
        assert_eq!(
            TopicAliases::outbound(Some(&aliases), "b", 2),
            Some(OutboundAlias::Set(2))
        );
    }
}
