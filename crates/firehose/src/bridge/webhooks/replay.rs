//! The delivery ids a webhook source has sent lately, so that a delivery sent again (a forge's
//! redelivery, or a captured request replayed by someone else) is answered without being
//! published twice.
//!
//! Bounded twice, so that no sender can make it grow: an id is remembered for a time window
//! (`bridge.webhooks.replay_window_secs`) and at most `bridge.webhooks.replay_max_ids` are
//! kept; beyond that the oldest is forgotten early. An id is kept as the first 128 bits of its
//! SHA-256, so each takes the same room whatever its length (about 80 bytes with the table's
//! overhead).
//!
//! Pure data with no clock of its own: callers pass the time. Depends on nothing of this crate.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use ring::digest;

/// A delivery id as remembered.
type Key = [u8; 16];

/// What [`Deliveries::claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claim {
    /// The first time in the window: publish it.
    New,
    /// New, but the memory was full: an id younger than the window had to be forgotten (a
    /// replay of that one would now pass).
    NewForgettingOne,
    /// Seen within the window: do not publish it again.
    Repeated,
}

/// The delivery ids of one source, claimed within the window.
#[derive(Debug)]
pub(super) struct Deliveries {
    /// How long an id is remembered.
    window: Duration,
    /// How many ids are remembered at most.
    max: usize,
    /// The ids remembered, each with the sequence number of its claim in `claims`.
    ids: HashMap<Key, u64>,
    /// Claims, oldest first: when, sequence number, id. A released id's claim stays here until
    /// it expires (its sequence number no longer matches `ids`), and counts against `max`, so
    /// that both collections stay within it.
    claims: VecDeque<(Instant, u64, Key)>,
    /// The next claim's sequence number.
    next: u64,
}

impl Deliveries {
    /// A memory of at most `max` ids (at least 1), each for `window`.
    pub(super) fn new(window: Duration, max: usize) -> Deliveries {
        Deliveries {
            window,
            max: max.max(1),
            ids: HashMap::new(),
            claims: VecDeque::new(),
            next: 0,
        }
    }

    /// Claims delivery `id` at `now`: [`Claim::Repeated`] if it was claimed within the window
    /// (and not released), else remembers it.
    pub(super) fn claim(&mut self, id: &str, now: Instant) -> Claim {
        while let Some(&(at, _, _)) = self.claims.front() {
            if now.saturating_duration_since(at) < self.window {
                break;
            }
            self.forget_oldest();
        }
        let key = key(id);
        if self.ids.contains_key(&key) {
            return Claim::Repeated;
        }
        let mut claim = Claim::New;
        while self.claims.len() >= self.max {
            if self.forget_oldest() {
                claim = Claim::NewForgettingOne;
            }
        }
        let sequence = self.next;
        self.next += 1;
        self.ids.insert(key, sequence);
        self.claims.push_back((now, sequence, key));
        claim
    }

    /// Forgets `id`: its event could not be stored, so that a redelivery must get through.
    pub(super) fn release(&mut self, id: &str) {
        self.ids.remove(&key(id));
    }

    /// Drops the oldest claim; true if it was an id still remembered.
    fn forget_oldest(&mut self) -> bool {
        let Some((_, sequence, key)) = self.claims.pop_front() else {
            return false;
        };
        if self.ids.get(&key) == Some(&sequence) {
            self.ids.remove(&key);
            return true;
        }
        false
    }

    /// How many ids are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.ids.len()
    }
}

/// The first 128 bits of the id's SHA-256.
fn key(id: &str) -> Key {
    let mut key = Key::default();
    let hash = digest::digest(&digest::SHA256, id.as_bytes());
    key.copy_from_slice(&hash.as_ref()[..16]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn an_id_is_refused_within_the_window_and_passes_after_it() {
        let start = Instant::now();
        let mut seen = Deliveries::new(HOUR, 10);
        assert_eq!(seen.claim("a", start), Claim::New);
        assert_eq!(seen.claim("b", start), Claim::New);
        let later = start + HOUR - Duration::from_secs(1);
        assert_eq!(seen.claim("a", later), Claim::Repeated);
        assert_eq!(
            seen.claim("a", start + HOUR),
            Claim::New,
            "the window passed"
        );
        assert_eq!(seen.len(), 1, "b expired too");
    }

    #[test]
    fn a_released_id_passes_again_and_its_old_claim_forgets_nothing() {
        let start = Instant::now();
        let mut seen = Deliveries::new(HOUR, 10);
        assert_eq!(seen.claim("a", start), Claim::New);
        seen.release("a");
        let later = start + Duration::from_secs(60);
        assert_eq!(seen.claim("a", later), Claim::New);
        // The first claim expires; the second one still holds.
        let after_first = start + HOUR + Duration::from_secs(1);
        assert_eq!(seen.claim("a", after_first), Claim::Repeated);
    }

    #[test]
    fn a_flood_of_new_ids_keeps_at_most_max() {
        let start = Instant::now();
        let mut seen = Deliveries::new(HOUR, 100);
        for n in 0..100 {
            assert_eq!(seen.claim(&format!("id-{n}"), start), Claim::New);
        }
        for n in 100..10_000 {
            assert_eq!(
                seen.claim(&format!("id-{n}"), start),
                Claim::NewForgettingOne
            );
            assert!(seen.ids.len() <= 100 && seen.claims.len() <= 100);
        }
        // The newest are remembered, the oldest were forgotten early.
        assert_eq!(seen.claim("id-9999", start), Claim::Repeated);
        assert_eq!(seen.claim("id-0", start), Claim::NewForgettingOne);
        // Releases do not let the claims grow past the bound either.
        for n in 0..1000 {
            let id = format!("again-{n}");
            seen.claim(&id, start);
            seen.release(&id);
            assert!(seen.claims.len() <= 100);
        }
    }
}
