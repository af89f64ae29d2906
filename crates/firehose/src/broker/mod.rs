//! The broker: sessions, routing, retained messages, QoS, wills, keepalive and `$SYS`
//! statistics.
//!
//! It serves any `AsyncRead + AsyncWrite` stream ([`Broker::serve`]) and knows nothing of
//! sockets, so TCP, TLS and WebSocket transports share one code path. It depends on
//! [`crate::auth`], [`crate::topic`], [`crate::config`] and the codec crate, never on transports.
//!
//! # Layout
//! - [`connection`]: one task per connection: reads packets, runs the MQTT state machines,
//!   writes batches.
//! - [`session`]: what outlives a connection, and the client-id registry (takeover, resume).
//! - [`router`]: the subscription table and retained messages; fan-out.
//! - [`message`]: a routed message with its shared encodings.
//! - [`outbox`]: the per-connection write queue (vectored writes).
//! - [`stats`] and [`sys`]: counters and their `$SYS/broker/...` publication.

pub mod connection;
pub mod message;
pub mod outbox;
pub mod router;
pub mod session;
pub mod stats;
pub mod sys;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Notify};

use crate::auth::Users;
use crate::config::Limits;
use message::Message;
use router::Router;
use session::Registry;
use stats::Stats;

/// The broker's shared state; one per process, shared by every connection task.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Configured limits.
    pub(crate) limits: Limits,
    /// Users and their ACLs.
    pub(crate) users: Arc<Users>,
    /// Subscriptions and retained messages.
    pub(crate) router: Router,
    /// Sessions by client id.
    pub(crate) registry: Registry,
    /// Counters.
    pub(crate) stats: Stats,
    /// Becomes `true` when the broker shuts down.
    pub(crate) shutdown: watch::Sender<bool>,
    /// Connection admission (limits).
    admission: Admission,
}

impl Shared {
    /// Routes an accepted message (after access checks) to its subscribers.
    pub(crate) fn publish(&self, message: Message) -> usize {
        let message = Arc::new(message);
        self.router.publish(&message, &self.stats)
    }
}

/// What the transport knows about a connection before MQTT starts.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The client's address (from PROXY protocol or `X-Forwarded-For` when trusted).
    pub peer: SocketAddr,
    /// Transport name for logs and metrics (`tcp`, `tls`, `ws`, `wss`).
    pub transport: &'static str,
    /// A user of the users file the transport already authenticated (TLS client certificate).
    /// The client then needs no password; a CONNECT naming another user is refused.
    pub authenticated_user: Option<String>,
}

impl ConnectionInfo {
    /// A connection known only by its address.
    pub fn new(peer: SocketAddr, transport: &'static str) -> ConnectionInfo {
        ConnectionInfo {
            peer,
            transport,
            authenticated_user: None,
        }
    }
}

/// The broker handle that transports use. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

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
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.admission.release(self.ip);
    }
}

#[derive(Debug, Default)]
struct Admission {
    open: AtomicU64,
    per_ip: Mutex<HashMap<IpAddr, u64>>,
    idle: Notify,
}

impl Admission {
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
}

impl Broker {
    /// A broker with these limits and users.
    pub fn new(limits: Limits, users: Users) -> Broker {
        let (shutdown, _) = watch::channel(false);
        Broker {
            shared: Arc::new(Shared {
                limits,
                users: Arc::new(users),
                router: Router::default(),
                registry: Registry::default(),
                stats: Stats::new(),
                shutdown,
                admission: Admission::default(),
            }),
        }
    }

    /// Admits a new connection from `peer`, or says which limit refuses it.
    ///
    /// # Errors
    /// [`Refusal`] when a connection limit is reached (counted in the statistics).
    pub fn admit(&self, peer: SocketAddr) -> Result<Permit, Refusal> {
        match self.shared.admission.admit(&self.shared.limits, peer.ip()) {
            Ok(()) => Ok(Permit {
                shared: self.shared.clone(),
                ip: peer.ip(),
            }),
            Err(refusal) => {
                stats::add(&self.shared.stats.connections_refused, 1);
                Err(refusal)
            }
        }
    }

    /// Serves one MQTT connection until it ends. The permit is held for its whole life.
    pub async fn serve<S>(&self, stream: S, info: ConnectionInfo, permit: Permit)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        connection::run(self.shared.clone(), stream, info).await;
        drop(permit);
    }

    /// Starts publishing `$SYS/broker/...` statistics every `interval`.
    pub fn spawn_sys(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(sys::run(self.shared.clone(), interval))
    }

    /// Counters, for tests and metrics.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Tells every connection to close (MQTT 5 clients get DISCONNECT 0x8B) and waits up to
    /// `grace` for them to finish.
    pub async fn shutdown(&self, grace: Duration) {
        self.shared.shutdown.send_replace(true);
        let admission = &self.shared.admission;
        let _ = tokio::time::timeout(grace, async {
            loop {
                let idle = admission.idle.notified();
                if admission.open.load(Ordering::Acquire) == 0 {
                    break;
                }
                idle.await;
            }
        })
        .await;
    }
}
