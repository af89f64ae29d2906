//! What HTTP clients can make the server keep, bounded: connections and history reads in
//! total and per client address, and SSE streams per address. Every refusal is
//! counted in `firehose_http_refused_total{reason}` and logged once per run of refusals.
//!
//! Depends on [`crate::config`] (the `[http]` settings, trusted proxies) and
//! [`super::metrics`]. The HTTP listener, the history API and the publish API use it.
//!
//! "Address" is the client's: the TCP peer, or behind a trusted proxy the address its
//! `X-Forwarded-For` names ([`super::proxy::forwarded_client`]). IPv6 addresses count by
//! their /64, the block one customer line gets, so that a client cannot multiply its share by
//! picking addresses inside it. Behind a trusted proxy the TCP peer is the proxy, which carries
//! every client: its connections count towards the total only, and each request in progress
//! holds a connection of its client's address instead (SSE streams and WebSockets for their
//! whole life).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::{HttpListenerConfig, IpBlock};
use crate::transport::metrics::{ConnectionGuard, Metrics};

/// A run of refusals of one reason ends after this long without one; the next refusal is
/// logged again. One line per run keeps a flood from filling the log, and the metric counts
/// every refusal.
const RUN_QUIET: Duration = Duration::from_secs(30);

/// Why an HTTP connection or request was refused: the `reason` label of
/// `firehose_http_refused_total` and the line logged at the start of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `http.max_connections` connections are open.
    Connections,
    /// The client address holds `http.max_connections_per_ip` connections (requests in
    /// progress, behind a proxy).
    ConnectionsPerIp,
    /// `http.max_history_reads` history reads are in progress.
    HistoryReads,
    /// The client address has `http.max_history_reads_per_ip` history reads in progress.
    HistoryReadsPerIp,
    /// The client address has `http.max_streams_per_ip` SSE streams open.
    StreamsPerIp,
    /// A history query or stream with more than `http.max_history_filters` filters.
    HistoryFilters,
    /// A request body that did not arrive within `http.body_timeout_secs`.
    BodyTimeout,
    /// A cross-site browser request to a state-changing endpoint.
    CrossSite,
    /// HTTP publish with a wrong user name, password or token.
    BadCredentials,
    /// HTTP publish while too many password checks wait.
    ChecksBusy,
}

impl Reason {
    /// Every reason, for the metric's zero values.
    pub const ALL: [Reason; 10] = [
        Reason::Connections,
        Reason::ConnectionsPerIp,
        Reason::HistoryReads,
        Reason::HistoryReadsPerIp,
        Reason::StreamsPerIp,
        Reason::HistoryFilters,
        Reason::BodyTimeout,
        Reason::CrossSite,
        Reason::BadCredentials,
        Reason::ChecksBusy,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Connections => "connections",
            Reason::ConnectionsPerIp => "connections_per_ip",
            Reason::HistoryReads => "history_reads",
            Reason::HistoryReadsPerIp => "history_reads_per_ip",
            Reason::StreamsPerIp => "streams_per_ip",
            Reason::HistoryFilters => "history_filters",
            Reason::BodyTimeout => "body_timeout",
            Reason::CrossSite => "cross_site",
            Reason::BadCredentials => "bad_credentials",
            Reason::ChecksBusy => "checks_busy",
        }
    }

    /// What the log says at the start of a run, naming the setting when there is one.
    fn message(self) -> &'static str {
        match self {
            Reason::Connections => "refusing HTTP connections: http.max_connections are open",
            Reason::ConnectionsPerIp => {
                "refusing HTTP connections of an address that holds http.max_connections_per_ip"
            }
            Reason::HistoryReads => {
                "refusing history reads: http.max_history_reads are in progress"
            }
            Reason::HistoryReadsPerIp => {
                "refusing history reads of an address that has http.max_history_reads_per_ip \
                 in progress"
            }
            Reason::StreamsPerIp => {
                "refusing SSE streams of an address that has http.max_streams_per_ip open"
            }
            Reason::HistoryFilters => {
                "refusing history queries with more than http.max_history_filters filters"
            }
            Reason::BodyTimeout => {
                "ending requests whose body did not arrive within http.body_timeout_secs"
            }
            Reason::CrossSite => "refusing cross-site browser requests to HTTP publish",
            Reason::BadCredentials => "refusing HTTP publish with bad credentials",
            Reason::ChecksBusy => "refusing HTTP publish: too many password checks are waiting",
        }
    }

    /// The `Retry-After` a refused request is told, in seconds: history reads are short,
    /// connections and streams long.
    pub fn retry_after_secs(self) -> u64 {
        match self {
            Reason::HistoryReads | Reason::HistoryReadsPerIp | Reason::ChecksBusy => 1,
            _ => 5,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What one address holds under a per-address limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Connections (behind a proxy: requests in progress).
    Connection,
    /// History reads in progress.
    HistoryRead,
    /// SSE streams open.
    Stream,
}

impl Kind {
    fn index(self) -> usize {
        self as usize
    }

    fn refusal(self) -> Reason {
        match self {
            Kind::Connection => Reason::ConnectionsPerIp,
            Kind::HistoryRead => Reason::HistoryReadsPerIp,
            Kind::Stream => Reason::StreamsPerIp,
        }
    }
}

/// The counts and settings of the HTTP(S) listeners (one value shared by both).
#[derive(Debug)]
pub struct HttpLimits {
    /// `http.max_connections`; 0 = none.
    max_connections: usize,
    /// `http.max_history_reads`; 0 = none.
    max_history_reads: usize,
    /// Per-address limits by [`Kind`]; 0 = none.
    per_address: [usize; 3],
    /// Proxies whose connections carry many clients.
    trusted_proxies: Vec<IpBlock>,
    /// HTTP(S) connections open.
    open: AtomicUsize,
    /// History reads in progress (answers being sent included).
    history_reads: AtomicUsize,
    /// What each address holds, by [`Kind`]; an address holding nothing has no entry, so the
    /// map is as large as the clients present.
    held: Mutex<HashMap<IpAddr, [u32; 3]>>,
    /// When each [`Reason`] last refused, for logging once per run.
    last_refusal: Mutex<[Option<Instant>; Reason::ALL.len()]>,
    /// Where refusals are counted.
    metrics: Arc<Metrics>,
}

/// A place held under the limits, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<HttpLimits>,
    /// Counts towards `http.max_connections` (and the open-connections gauge).
    connection: Option<ConnectionGuard>,
    /// Counts towards `http.max_history_reads`.
    history_read: bool,
    /// The address and kind it counts towards, when that limit is on.
    address: Option<(IpAddr, Kind)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.connection.take().is_some() {
            self.limits.open.fetch_sub(1, Ordering::AcqRel);
        }
        if self.history_read {
            self.limits.history_reads.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some((key, kind)) = self.address {
            self.limits.release(key, kind);
        }
    }
}

impl HttpLimits {
    /// Limits as `[http]` sets them, counting refusals in `metrics`.
    pub fn new(
        config: &HttpListenerConfig,
        trusted_proxies: Vec<IpBlock>,
        metrics: Arc<Metrics>,
    ) -> Arc<HttpLimits> {
        let size = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
        for reason in Reason::ALL {
            metrics.http_refused(reason.label(), 0);
        }
        Arc::new(HttpLimits {
            max_connections: size(config.max_connections),
            max_history_reads: size(config.max_history_reads),
            per_address: [
                size(config.max_connections_per_ip),
                size(config.max_history_reads_per_ip),
                size(config.max_streams_per_ip),
            ],
            trusted_proxies,
            open: AtomicUsize::new(0),
            history_reads: AtomicUsize::new(0),
            held: Mutex::new(HashMap::new()),
            last_refusal: Mutex::new([None; Reason::ALL.len()]),
            metrics,
        })
    }

    /// Whether `ip` is a trusted proxy: its connections carry many clients.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|block| block.contains(ip))
    }

    /// The proxies whose `X-Forwarded-For` is believed.
    pub fn trusted_proxies(&self) -> &[IpBlock] {
        &self.trusted_proxies
    }

    /// Admits a connection just accepted from `peer`: within `http.max_connections`, and
    /// within `http.max_connections_per_ip` unless `peer` is a trusted proxy.
    ///
    /// # Errors
    /// The limit that refuses it (counted and logged).
    pub fn connection(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Reason> {
        self.take(&self.open, self.max_connections, Reason::Connections, peer)?;
        let address = if self.trusts(peer) {
            None
        } else {
            match self.hold(peer, Kind::Connection) {
                Ok(address) => address,
                Err(reason) => {
                    self.open.fetch_sub(1, Ordering::AcqRel);
                    return Err(reason);
                }
            }
        };
        Ok(Slot {
            limits: self.clone(),
            connection: Some(self.metrics.http_connection()),
            history_read: false,
            address,
        })
    }

    /// Admits a request that came through a trusted proxy for `client`: it holds one of the
    /// client's connections while it is in progress.
    ///
    /// # Errors
    /// [`Reason::ConnectionsPerIp`] (counted and logged).
    pub fn proxied_request(self: &Arc<Self>, client: IpAddr) -> Result<Slot, Reason> {
        self.per_address_slot(client, Kind::Connection)
    }

    /// Admits a history read of `client`, within `http.max_history_reads` and
    /// `http.max_history_reads_per_ip`.
    ///
    /// # Errors
    /// [`Reason::HistoryReads`] or [`Reason::HistoryReadsPerIp`] (counted and logged).
    pub fn history_read(self: &Arc<Self>, client: IpAddr) -> Result<Slot, Reason> {
        self.take(
            &self.history_reads,
            self.max_history_reads,
            Reason::HistoryReads,
            client,
        )?;
        // From here a dropped slot gives the read back.
        let mut slot = Slot {
            limits: self.clone(),
            connection: None,
            history_read: true,
            address: None,
        };
        slot.address = self.hold(client, Kind::HistoryRead)?;
        Ok(slot)
    }

    /// Admits an SSE stream of `client`, for as long as the slot lives.
    ///
    /// # Errors
    /// [`Reason::StreamsPerIp`] (counted and logged).
    pub fn stream(self: &Arc<Self>, client: IpAddr) -> Result<Slot, Reason> {
        self.per_address_slot(client, Kind::Stream)
    }

    fn per_address_slot(self: &Arc<Self>, client: IpAddr, kind: Kind) -> Result<Slot, Reason> {
        Ok(Slot {
            limits: self.clone(),
            connection: None,
            history_read: false,
            address: self.hold(client, kind)?,
        })
    }

    /// Counts one more in `count`, or refuses for `reason` when that makes more than `max`
    /// (0: no limit).
    fn take(
        &self,
        count: &AtomicUsize,
        max: usize,
        reason: Reason,
        client: IpAddr,
    ) -> Result<(), Reason> {
        let now = count.fetch_add(1, Ordering::AcqRel) + 1;
        if max != 0 && now > max {
            count.fetch_sub(1, Ordering::AcqRel);
            self.refused(reason, client, None);
            return Err(reason);
        }
        Ok(())
    }

    /// Counts one more `kind` for `ip`'s address, or refuses; `None` when that limit is off.
    fn hold(&self, ip: IpAddr, kind: Kind) -> Result<Option<(IpAddr, Kind)>, Reason> {
        let max = self.per_address[kind.index()];
        if max == 0 {
            return Ok(None);
        }
        let key = address_key(ip);
        {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            let counts = held.entry(key).or_default();
            let count = &mut counts[kind.index()];
            if (*count as usize) < max {
                *count += 1;
                return Ok(Some((key, kind)));
            }
            if counts.iter().all(|&n| n == 0) {
                held.remove(&key);
            }
        }
        self.refused(kind.refusal(), ip, None);
        Err(kind.refusal())
    }

    fn release(&self, key: IpAddr, kind: Kind) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(counts) = held.get_mut(&key) {
            let count = &mut counts[kind.index()];
            *count = count.saturating_sub(1);
            if counts.iter().all(|&n| n == 0) {
                held.remove(&key);
            }
        }
    }

    /// Counts a refusal and, at the start of a run of them, logs it with the client address
    /// and `value`, the peer-supplied text that caused it (an `Origin`, a user name), which is
    /// logged escaped: no control character of a peer reaches the log.
    pub fn refused(&self, reason: Reason, client: IpAddr, value: Option<&str>) {
        self.metrics.http_refused(reason.label(), 1);
        let now = Instant::now();
        let new_run = {
            let mut last = self
                .last_refusal
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let previous = last[reason.index()].replace(now);
            previous.is_none_or(|at| now.duration_since(at) >= RUN_QUIET)
        };
        if !new_run {
            return;
        }
        let message = reason.message();
        let note = format!(
            "further refusals are counted in firehose_http_refused_total{{reason=\"{}\"}} and \
             logged again after {}s without any",
            reason.label(),
            RUN_QUIET.as_secs()
        );
        match value {
            Some(value) => tracing::warn!(%client, value = ?value, "{message} ({note})"),
            None => tracing::warn!(%client, "{message} ({note})"),
        }
    }

    /// Counts a history page cut short by the scan budget.
    pub fn history_cut(&self) {
        self.metrics.history_cut();
    }
}

/// What an address counts as: IPv4 addresses (IPv4-mapped IPv6 ones too) as themselves, IPv6
/// addresses by their /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(Ipv6Addr::from(segments))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Users;
    use crate::config::Limits;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    fn limits(per_ip: u64, total: u64) -> (Arc<HttpLimits>, impl Drop) {
        let (broker, dir) = crate::broker::test_broker(Limits::default(), Users::none());
        let config: HttpListenerConfig = toml::from_str(&format!(
            "listen = \"off\"\nmax_connections = {total}\nmax_connections_per_ip = {per_ip}\n\
             max_history_reads_per_ip = 1\nmax_history_reads = 2\nmax_streams_per_ip = 0\n"
        ))
        .expect("config");
        let proxies = vec![IpBlock::parse("10.0.0.1").expect("block")];
        let limits = HttpLimits::new(&config, proxies, Arc::new(Metrics::new(broker)));
        (limits, dir)
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            address_key(ip("2001:db8:1:2:3:4:5:6")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(address_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(address_key(ip("192.0.2.1")), ip("192.0.2.1"));
    }

    #[tokio::test]
    async fn slots_are_given_back_and_the_map_empties() {
        let (limits, _dir) = limits(2, 4);
        let a = limits.connection(ip("192.0.2.1")).expect("first");
        let b = limits.connection(ip("192.0.2.1")).expect("second");
        assert_eq!(
            limits.connection(ip("192.0.2.1")).map(drop),
            Err(Reason::ConnectionsPerIp)
        );
        // The proxy counts towards the total only; the total then refuses anyone.
        let proxy = limits.connection(ip("10.0.0.1")).expect("proxy");
        let c = limits.connection(ip("192.0.2.9")).expect("fourth");
        assert_eq!(
            limits.connection(ip("192.0.2.10")).map(drop),
            Err(Reason::Connections)
        );
        drop((a, b, c, proxy));
        // IPv6 addresses of one /64 share a count.
        let v6: Vec<Slot> = ["2001:db8::1", "2001:db8::2", "2001:db8:0:1::1"]
            .into_iter()
            .map(|a| limits.connection(ip(a)).expect("room"))
            .collect();
        assert_eq!(
            limits.connection(ip("2001:db8::3")).map(drop),
            Err(Reason::ConnectionsPerIp)
        );
        drop(v6);
        assert!(limits.held.lock().expect("lock").is_empty());
        assert_eq!(limits.open.load(Ordering::Acquire), 0);

        let read = limits.history_read(ip("192.0.2.1")).expect("read");
        assert_eq!(
            limits.history_read(ip("192.0.2.1")).map(drop),
            Err(Reason::HistoryReadsPerIp)
        );
        let other = limits
            .history_read(ip("192.0.2.2"))
            .expect("another address");
        assert_eq!(
            limits.history_read(ip("192.0.2.3")).map(drop),
            Err(Reason::HistoryReads)
        );
        drop(other);
        assert_eq!(limits.history_reads.load(Ordering::Acquire), 1);
        // 0 turns a limit off.
        let streams: Vec<Slot> = (0..10)
            .map(|_| limits.stream(ip("192.0.2.1")).expect("no stream limit"))
            .collect();
        drop((read, streams));
        assert!(limits.held.lock().expect("lock").is_empty());
    }

    #[test]
    fn every_reason_has_its_own_label() {
        let mut labels: Vec<&str> = Reason::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Reason::ALL.len());
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
    }
}
