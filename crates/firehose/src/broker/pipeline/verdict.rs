//! Step 1 of the publish pipeline: whether a publish is accepted at all. The access model and
//! the topic depth decide for every publish ([`publish_verdict`]); a retained message also
//! needs room in the retained quota ([`Shared::claim_retained`]).

use std::sync::atomic::Ordering;

use firehose_codec::ReasonCode;

use crate::auth::Identity;
use crate::broker::retained::{Claim, QuotaFull};
use crate::broker::shared::Shared;
use crate::broker::stats;
use crate::config::Limits;

/// Whether `identity` may publish to `topic`: `Success`, `TopicNameInvalid` beyond
/// `limits.max_topic_levels`, or `NotAuthorized` outside its access. One verdict for a
/// connection's publishes, its will and in-process publishes (bridges, HTTP).
pub(crate) fn publish_verdict(limits: &Limits, identity: &Identity, topic: &str) -> ReasonCode {
    if limits.topic_too_deep(topic).is_some() {
        ReasonCode::TopicNameInvalid
    } else if identity.may_publish(topic) {
        ReasonCode::Success
    } else {
        ReasonCode::NotAuthorized
    }
}

impl Shared {
    /// Claims room in the retained quota for a retained message (see
    /// [`crate::broker::retained::Retained::claim`]); a refusal is counted, and logged as a
    /// warning once until a new retained topic fits again.
    ///
    /// # Errors
    /// [`QuotaFull`] when the quota has no room for the message.
    pub(crate) fn claim_retained(
        &self,
        topic: &str,
        payload_len: usize,
    ) -> Result<Option<Box<Claim>>, QuotaFull> {
        let claimed = self.router().retained().claim(topic, payload_len);
        let warned = &self.pipeline().retained_full_warned;
        match &claimed {
            Ok(Some(_)) => warned.store(false, Ordering::Relaxed),
            Ok(None) => {}
            Err(full) => {
                stats::add(&self.stats().publish_over_limits, 1);
                if !warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "retained message refused: {full}; new retained topics are refused until some are cleared"
                    );
                }
            }
        }
        claimed
    }
}
