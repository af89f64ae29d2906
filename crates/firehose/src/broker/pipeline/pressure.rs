//! What flows back up the publish pipeline: connections stop reading while the log or
//! routing is behind ([`Shared::delivery_backlog`]), and publishers pause for a moment while
//! most subscribers of a routed message are behind ([`Shared::publishers_wait`], set by
//! routing through `Shared::slow_publishers`).

use std::sync::atomic::Ordering;

use crate::broker::shared::Shared;
use crate::broker::stats;

/// How long publishers pause when most subscribers of a message are behind. Short: they read
/// again after it and pause again only if the subscribers are still behind.
const PUBLISHER_PAUSE_MS: u64 = 5;

/// `publishers_wait_until` when publishers are not paused. Pauses end at least
/// [`PUBLISHER_PAUSE_MS`] after the clock's origin, so no pause is ever 0.
pub(super) const NO_PAUSE: u64 = 0;

impl Shared {
    /// Milliseconds since the pipeline's clock origin: what pauses are measured in.
    fn clock_ms(&self) -> u64 {
        u64::try_from(self.pipeline().started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Pauses publishing connections for a moment: most subscribers of a message are behind
    /// (their queues half full or reading from the log).
    ///
    /// Why: without it a publisher faster than the fan-out fills every queue and the broker
    /// then drops QoS 0 messages for everyone (two thirds of them at the maximum rate) and
    /// holds seconds of backlog. Mosquitto, single threaded, slows publishers the same way
    /// implicitly. A stuck minority of subscribers never slows anyone: they fill their own
    /// queue and lose their own messages.
    pub(super) fn slow_publishers(&self) {
        let now = self.clock_ms();
        let until = now.saturating_add(PUBLISHER_PAUSE_MS);
        if self
            .pipeline()
            .publishers_wait_until
            .fetch_max(until, Ordering::AcqRel)
            <= now
        {
            stats::add(&self.stats().publisher_pauses, 1);
        }
    }

    /// Whether connections that publish should stop reading for now (see `slow_publishers`).
    ///
    /// Asked at every turn of a publishing connection's loop, so the clock is read only while
    /// a pause is set: once it is over it is cleared (0), unless a new one replaced it.
    #[inline]
    pub(crate) fn publishers_wait(&self) -> bool {
        let wait_until = &self.pipeline().publishers_wait_until;
        let until = wait_until.load(Ordering::Acquire);
        if until == NO_PAUSE {
            return false;
        }
        if until > self.clock_ms() {
            return true;
        }
        let _ = wait_until.compare_exchange(until, NO_PAUSE, Ordering::AcqRel, Ordering::Relaxed);
        false
    }

    /// Events accepted but not yet routed (in the log's queue or the routing task's).
    #[inline]
    pub(crate) fn delivery_backlog(&self) -> usize {
        self.store().backlog() + self.pipeline().routing_backlog.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::Users;
    use crate::broker::test_broker;
    use crate::config::Limits;

    #[tokio::test]
    async fn publishers_wait_only_for_a_moment_after_subscribers_fell_behind() {
        let (broker, _dir) = test_broker(Limits::default(), Users::none());
        let shared = &broker.shared;
        assert!(!shared.publishers_wait());
        shared.slow_publishers();
        shared.slow_publishers();
        assert!(shared.publishers_wait());
        assert_eq!(
            stats::get(&shared.stats().publisher_pauses),
            1,
            "one pause, extended"
        );
        // Twice the pause has certainly passed.
        tokio::time::sleep(Duration::from_millis(2 * PUBLISHER_PAUSE_MS + 1)).await;
        assert!(
            !shared.publishers_wait(),
            "the pause ends by itself: publishers are read again"
        );
        assert_eq!(
            shared
                .pipeline()
                .publishers_wait_until
                .load(Ordering::Acquire),
            NO_PAUSE,
            "an ended pause is cleared, so later turns need no clock"
        );
        shared.slow_publishers();
        assert!(shared.publishers_wait(), "a new pause after a cleared one");
        assert_eq!(stats::get(&shared.stats().publisher_pauses), 2);
    }
}
