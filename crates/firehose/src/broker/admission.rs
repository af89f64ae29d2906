//! Connection admission: the connection limits (total and per address) a new connection is
//! checked against before it may speak MQTT, and the [`Permit`] that holds its slot for as long
//! as it lives.
//!
//! Depends on the limits, the counters and the broker's shared state (a permit releases its
//! slot there when dropped); transports call it through [`super::Broker::admit`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::shared::Shared;
use super::stats;
use crate::config::Limits;

/// Why a new connection was refused before it could speak MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `limits.max_connections` reached.
    #[error("too many connections (limit {0})")]
    TooManyConnections(u64),
    /// `limits.max_connections_per_ip` reached for this address.
    #[error("too many connections from this address (limit {0})")]
    TooManyFromAddress(u64),
}

/// Proof that a connection was admitted; releases its slot when dropped.
#[derive(Debug)]
pub struct Permit {
    /// The broker whose admission counted the connection.
    shared: Arc<Shared>,
    /// The address it was counted under.
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.admission().release(self.ip);
    }
}

/// Admits a new connection from `peer` to `shared`'s broker, or says which limit refuses it.
///
/// # Errors
/// [`Refusal`] when a connection limit is reached (counted in the statistics).
pub(super) fn admit(shared: &Arc<Shared>, peer: SocketAddr) -> Result<Permit, Refusal> {
    match shared.admission().admit(shared.limits(), peer.ip()) {
        Ok(()) => Ok(Permit {
            shared: shared.clone(),
            ip: peer.ip(),
        }),
        Err(refusal) => {
            stats::add(&shared.stats().connections_refused, 1);
            Err(refusal)
        }
    }
}

/// The connections open, in total and by address.
#[derive(Debug, Default)]
pub(super) struct Admission {
    /// Connections admitted and not yet closed.
    open: AtomicU64,
    /// Open connections by address, for `limits.max_connections_per_ip` (only counted when
    /// that limit is set); an address leaves the map with its last connection.
    per_ip: Mutex<HashMap<IpAddr, u64>>,
    /// Woken when the last open connection closes (shutdown waits for it).
    idle: Notify,
}

impl Admission {
    /// Counts a new connection from `ip`, unless that would pass a limit.
    fn admit(&self, limits: &Limits, ip: IpAddr) -> Result<(), Refusal> {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        if limits.max_connections > 0 && open > limits.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::TooManyConnections(limits.max_connections));
        }
        if limits.max_connections_per_ip > 0 {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= limits.max_connections_per_ip {
                drop(per_ip);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::TooManyFromAddress(limits.max_connections_per_ip));
            }
            *count += 1;
        }
        Ok(())
    }

    /// Uncounts a connection from `ip` that closed; wakes shutdown after the last one.
    fn release(&self, ip: IpAddr) {
        {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Waits until every admitted connection has closed (shutdown bounds the wait).
    pub(super) async fn all_closed(&self) {
        loop {
            let idle = self.idle.notified();
            if self.open.load(Ordering::Acquire) == 0 {
                break;
            }
            idle.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: u64, per_ip: u64) -> Limits {
        Limits {
            max_connections: total,
            max_connections_per_ip: per_ip,
            ..Limits::default()
        }
    }

    #[test]
    fn the_address_limit_counts_each_address_apart_until_its_connections_close() {
        let admission = Admission::default();
        let limits = limits(0, 2);
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        assert_eq!(admission.admit(&limits, a), Ok(()));
        assert_eq!(admission.admit(&limits, a), Ok(()));
        assert_eq!(
            admission.admit(&limits, a),
            Err(Refusal::TooManyFromAddress(2))
        );
        assert_eq!(admission.admit(&limits, b), Ok(()), "another address");
        admission.release(a);
        assert_eq!(admission.admit(&limits, a), Ok(()), "a slot freed");
        assert_eq!(
            admission.open.load(Ordering::Acquire),
            3,
            "a refusal is not counted"
        );
    }

    #[test]
    fn the_total_limit_refuses_beyond_it_and_a_close_makes_room() {
        let admission = Admission::default();
        let limits = limits(2, 0);
        let ip: IpAddr = [10, 0, 0, 1].into();
        assert_eq!(admission.admit(&limits, ip), Ok(()));
        assert_eq!(admission.admit(&limits, [10, 0, 0, 2].into()), Ok(()));
        assert_eq!(
            admission.admit(&limits, [10, 0, 0, 3].into()),
            Err(Refusal::TooManyConnections(2))
        );
        admission.release(ip);
        assert_eq!(admission.admit(&limits, [10, 0, 0, 3].into()), Ok(()));
        assert!(
            admission.per_ip.lock().expect("lock").is_empty(),
            "addresses are only counted under an address limit"
        );
    }
}
