//! Topic name and topic filter rules (MQTT 5 section 4.7), shared by the decoder and the broker.

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Topic names and filters must be at least one character long.
    #[error("topic must not be empty")]
    Empty,
    /// Topic names may not contain `+` or `#`.
    #[error("topic name must not contain wildcards, got {0:?}")]
    WildcardInName(String),
    /// `#` must be last and alone in its level; `+` alone in its level.
    #[error("topic filter has a misplaced wildcard: {0:?}")]
    MisplacedWildcard(String),
    /// U+0000 is never allowed.
    #[error("topic contains a NUL character")]
    Nul,
    /// `$share/<group>/<filter>` with an empty or wildcard group, or no filter.
    #[error("malformed shared subscription: {0:?}")]
    BadShare(String),
}

/// Checks a topic name as used in PUBLISH (no wildcards).
///
/// # Errors
/// The rule the name breaks.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.contains('\0') {
        return Err(TopicError::Nul);
    }
    if name.contains(['+', '#']) {
        return Err(TopicError::WildcardInName(name.to_owned()));
    }
    Ok(())
}

/// Checks a topic filter as used in SUBSCRIBE/UNSUBSCRIBE, including `$share/<group>/<filter>`.
///
/// # Errors
/// The rule the filter breaks.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.contains('\0') {
        return Err(TopicError::Nul);
    }
    let inner = match filter.strip_prefix(SHARE_PREFIX) {
        Some(rest) => {
            // The group ends at the first '/'; everything after it is an ordinary filter.
            let (group, inner) = rest
                .split_once('/')
                .ok_or_else(|| TopicError::BadShare(filter.to_owned()))?;
            if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
                return Err(TopicError::BadShare(filter.to_owned()));
            }
            inner
        }
        None => filter,
    };
    let mut levels = inner.split('/').peekable();
    while let Some(level) = levels.next() {
        let misplaced = match level {
            "#" => levels.peek().is_some(),
            "+" => false,
            other => other.contains(['+', '#']),
        };
        if misplaced {
            return Err(TopicError::MisplacedWildcard(filter.to_owned()));
        }
    }
    Ok(())
}

/// The prefix that marks a shared subscription (MQTT 5 section 4.8.2).
const SHARE_PREFIX: &str = "$share/";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_accept_ordinary_and_system_topics() {
        for name in [
            "a",
            "a/b/c",
            "/",
            "a//b",
            "$SYS/broker/uptime",
            "sport/tennis/player1",
            " ",
        ] {
            assert_eq!(validate_topic_name(name), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn topic_names_refuse_empty_nul_and_wildcards() {
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::Nul));
        for name in ["a/+", "#", "a/b#", "+/x"] {
            assert_eq!(
                validate_topic_name(name),
                Err(TopicError::WildcardInName(name.to_owned())),
                "{name:?}"
            );
        }
    }

    #[test]
    fn topic_filters_accept_well_placed_wildcards() {
        for filter in [
            "#",
            "+",
            "+/+",
            "/+",
            "a/#",
            "a/+/c",
            "sport/tennis/#",
            "$SYS/#",
            "$share/group/a/b",
            "$share/g/#",
            "$share/g/+/x",
            "$share",
            "$sharex/a",
        ] {
            assert_eq!(validate_topic_filter(filter), Ok(()), "{filter:?}");
        }
    }

    #[test]
    fn topic_filters_refuse_misplaced_wildcards() {
        for filter in [
            "a#",
            "a/#/b",
            "#/a",
            "a+",
            "a/b+/c",
            "++",
            "##",
            "$share/g/a#",
        ] {
            assert_eq!(
                validate_topic_filter(filter),
                Err(TopicError::MisplacedWildcard(filter.to_owned())),
                "{filter:?}"
            );
        }
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_filter("a/\0"), Err(TopicError::Nul));
    }

    #[test]
    fn shared_subscriptions_need_a_plain_group_and_a_filter() {
        for filter in [
            "$share/",
            "$share/group",
            "$share//a",
            "$share/g+/a",
            "$share/#/a",
            "$share/g/",
        ] {
            assert_eq!(
                validate_topic_filter(filter),
                Err(TopicError::BadShare(filter.to_owned())),
                "{filter:?}"
            );
        }
    }
}
