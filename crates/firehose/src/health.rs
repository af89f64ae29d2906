//! Bridge health: what every bridge reports (connected, last event, reconnects, events in,
//! errors, refused inputs, repeated inputs dropped, the last gap in its stream), read by `/healthz`, `/metrics` and the
//! bridges' own status events (`firehose/bridges/<name>/status`).
//!
//! A leaf (layer 1): depends on no module of this crate (std, serde_json and humantime only),
//! so that the HTTP listener can show the bridges' health without knowing any bridge. The
//! bridges (`crate::bridge`) write it; `cli` hands the same [`BridgeStates`] to both sides.
//! It holds no clock: callers pass the time, so every state change is plain data.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};

/// A gap in a bridge's stream: from the last event before a disconnection to the reconnection,
/// and whether the events of that time were recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// Milliseconds since the epoch: the last event seen (or the disconnection, if later).
    pub from_ms: i64,
    /// Milliseconds since the epoch: the reconnection.
    pub to_ms: i64,
    /// Events recovered for the gap (events-log plugin); `None` when not recovered.
    pub filled: Option<u64>,
}

/// The parts of a state that change together and are read rarely.
#[derive(Debug, Default)]
struct Detail {
    /// `starting`, `connecting`, `connected`, `disconnected`, `listening`, `stopped`.
    state: &'static str,
    /// Since when `state` holds, in milliseconds since the epoch.
    since_ms: i64,
    /// The most recent error, for operators.
    last_error: Option<String>,
    /// The most recent gap.
    gap: Option<Gap>,
}

/// What one bridge reports. Counters are atomics so the hot path never takes a lock.
#[derive(Debug)]
pub struct BridgeState {
    /// The bridge's name.
    name: String,
    /// Its kind.
    kind: &'static str,
    /// Whether it is connected to its source (webhooks: listening).
    connected: AtomicBool,
    /// Whether it has been connected before, so that the next connection is a reconnection.
    ever_connected: AtomicBool,
    /// Time of the last event published, milliseconds since the epoch; 0 before the first.
    last_event_ms: AtomicI64,
    /// Connections re-established after a loss.
    reconnects: AtomicU64,
    /// Events published.
    events_in: AtomicU64,
    /// Failures: connections that failed or dropped, events the log refused.
    errors: AtomicU64,
    /// Inputs refused as invalid (non-JSON lines, bad signatures, oversized bodies).
    rejected: AtomicU64,
    /// Inputs not published because they repeat one already published (a webhook's
    /// redelivery, an event both the Gerrit events-log plugin and a stream sent).
    duplicates: AtomicU64,
    /// State name, last error and gap.
    detail: Mutex<Detail>,
}

impl BridgeState {
    /// The state of bridge `name` of `kind`, `starting` since `now_ms`.
    pub fn new(name: &str, kind: &'static str, now_ms: i64) -> BridgeState {
        BridgeState {
            name: name.to_owned(),
            kind,
            connected: AtomicBool::new(false),
            ever_connected: AtomicBool::new(false),
            last_event_ms: AtomicI64::new(0),
            reconnects: AtomicU64::new(0),
            events_in: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            detail: Mutex::new(Detail {
                state: "starting",
                since_ms: now_ms,
                ..Detail::default()
            }),
        }
    }

    /// The bridge's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bridge's kind.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Whether it is connected to its source.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Events published so far.
    pub fn events_in(&self) -> u64 {
        self.events_in.load(Ordering::Relaxed)
    }

    /// Reconnections so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Errors so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Refused inputs so far.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Repeated inputs dropped so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Time of the last event, milliseconds since the epoch; `None` before the first.
    pub fn last_event_ms(&self) -> Option<i64> {
        Some(self.last_event_ms.load(Ordering::Relaxed)).filter(|&ms| ms > 0)
    }

    /// Counts an event published at `now_ms`.
    pub fn count_event(&self, now_ms: i64) {
        self.events_in.fetch_add(1, Ordering::Relaxed);
        self.last_event_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Counts an error and keeps its message as the last error.
    pub fn count_error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.detail().last_error = Some(message);
    }

    /// Counts an input refused as invalid.
    pub fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an input dropped because it repeats one already published.
    pub fn count_duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the state (`connecting`, `connected`, `listening`...) as of `now_ms`; false when
    /// it already was that state (nothing changes then). `connected` counts as a
    /// reconnection when it is not the bridge's first.
    pub fn set_state(&self, state: &'static str, connected: bool, now_ms: i64) -> bool {
        {
            let mut detail = self.detail();
            if detail.state == state {
                return false;
            }
            if state == "connected" && self.ever_connected.swap(true, Ordering::Relaxed) {
                self.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            detail.state = state;
            detail.since_ms = now_ms;
        }
        self.connected.store(connected, Ordering::Relaxed);
        true
    }

    /// Records the most recent gap.
    pub fn set_gap(&self, gap: Gap) {
        self.detail().gap = Some(gap);
    }

    fn detail(&self) -> MutexGuard<'_, Detail> {
        self.detail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The status as JSON: the payload of the status event and of `/healthz?format=json`.
    pub fn to_json(&self) -> Value {
        let detail = self.detail();
        let gap = detail.gap.map(|gap| {
            json!({
                "from": format_time(gap.from_ms),
                "to": format_time(gap.to_ms),
                "filled": gap.filled.is_some(),
                "events_filled": gap.filled,
            })
        });
        json!({
            "bridge": self.name,
            "kind": self.kind,
            "state": detail.state,
            "connected": self.connected(),
            "since": format_time(detail.since_ms),
            "last_event_time": self.last_event_ms().map(format_time),
            "events_in": self.events_in(),
            "reconnects": self.reconnects(),
            "errors": self.errors(),
            "rejected": self.rejected(),
            "duplicates": self.duplicates(),
            "last_error": detail.last_error,
            "gap": gap,
        })
    }

    /// One line for `/healthz`.
    pub fn summary(&self) -> String {
        let detail = self.detail();
        let mut line = format!(
            "bridge {} ({}): {}, {} events in, {} reconnects, {} errors, {} rejected",
            self.name,
            self.kind,
            detail.state,
            self.events_in(),
            self.reconnects(),
            self.errors(),
            self.rejected()
        );
        if let Some(ms) = self.last_event_ms() {
            line.push_str(&format!(", last event {}", format_time(ms)));
        }
        if let Some(error) = &detail.last_error {
            line.push_str(&format!(", last error: {error}"));
        }
        line
    }
}

/// Every bridge's state, in configuration order: what `/healthz` and `/metrics` show. Cheap
/// to clone.
#[derive(Debug, Clone, Default)]
pub struct BridgeStates {
    /// The states, shared with the bridges that update them.
    states: Arc<[Arc<BridgeState>]>,
}

impl BridgeStates {
    /// The states.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<BridgeState>> {
        self.states.iter()
    }

    /// Whether no bridge is configured.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
}

impl FromIterator<Arc<BridgeState>> for BridgeStates {
    fn from_iter<I: IntoIterator<Item = Arc<BridgeState>>>(states: I) -> BridgeStates {
        BridgeStates {
            states: states.into_iter().collect(),
        }
    }
}

/// RFC 3339 in UTC with milliseconds.
fn format_time(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0);
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_count_reconnections_and_show_gaps() {
        let state = BridgeState::new("review", "gerrit", 0);
        assert!(state.set_state("connected", true, 1_000));
        assert!(!state.set_state("connected", true, 2_000));
        assert_eq!(state.reconnects(), 0);
        assert!(state.set_state("disconnected", false, 3_000));
        assert!(state.set_state("connected", true, 4_000));
        assert_eq!(state.reconnects(), 1);
        state.count_event(5_000);
        state.set_gap(Gap {
            from_ms: 3_000,
            to_ms: 4_000,
            filled: None,
        });
        state.count_duplicate();
        let json = state.to_json();
        assert_eq!(json["duplicates"], 1);
        assert_eq!(json["since"], "1970-01-01T00:00:04.000Z");
        assert_eq!(json["last_event_time"], "1970-01-01T00:00:05.000Z");
        assert_eq!(json["gap"]["filled"], false);
        assert_eq!(
            state.summary(),
            "bridge review (gerrit): connected, 1 events in, 1 reconnects, 0 errors, 0 rejected, \
             last event 1970-01-01T00:00:05.000Z"
        );
    }
}
