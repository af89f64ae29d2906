//! What one subscription is: its options, and its filter split from its `$share` group.
//!
//! A leaf of the broker: the router (the subscription table), the session (its own list of
//! subscriptions) and the connection (SUBSCRIBE, catch-up) all use these, and it uses nothing
//! of theirs, so dependencies between them point one way (router -> session, both -> here).

use firehose_codec::QoS;

/// The options of one subscription, as the router needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    /// Highest QoS granted.
    pub qos: QoS,
    /// MQTT 5 No Local: skip the subscriber's own publishes.
    pub no_local: bool,
    /// MQTT 5 Retain As Published.
    pub retain_as_published: bool,
    /// MQTT 5 subscription identifier.
    pub id: Option<u32>,
}

/// A filter as subscribed, split into its shared-subscription group (if any) and the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    /// `Some(group)` for `$share/<group>/<filter>`.
    pub group: Option<&'a str>,
    /// The topic filter proper.
    pub filter: &'a str,
}

/// Splits `$share/<group>/<filter>`; other filters pass unchanged.
pub fn parse_filter(raw: &str) -> ParsedFilter<'_> {
    if let Some(rest) = raw.strip_prefix("$share/") {
        if let Some((group, filter)) = rest.split_once('/') {
            return ParsedFilter {
                group: Some(group),
                filter,
            };
        }
    }
    ParsedFilter {
        group: None,
        filter: raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_filter_splits_shared_subscriptions() {
        assert_eq!(
            parse_filter("$share/g/a/#"),
            ParsedFilter {
                group: Some("g"),
                filter: "a/#"
            }
        );
        assert_eq!(
            parse_filter("a/#"),
            ParsedFilter {
                group: None,
                filter: "a/#"
            }
        );
    }
}
