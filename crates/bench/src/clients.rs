//! The two loops every scenario is made of: a subscriber that counts, times and acknowledges
//! what it receives, and a publisher that stamps and sends at a fixed rate or as fast as the
//! broker takes it, keeping at most a window of QoS 1 publishes unacknowledged.
//!
//! What "in the window" means, so that counts add up: a message counts as published in the
//! window when its stamp (send time) lies in it, and a subscriber counts it against loss by the
//! same stamp, however late it arrives; delivered/s and latency count what arrives within the
//! window, by arrival time.
//!
//! Depends on `wire` (connections, templates), `packets` (the frame scanner, PUBACK), `arrival`
//! and `stats`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{watch, Notify};

use crate::arrival::{self, Arrival};
use crate::packets::{self, scan, Frame, Protocol};
use crate::stats::Histogram;
use crate::wire::{Clock, Conn, PublishTemplate, Stamp};
use crate::{sleep_until_ns, Window};

/// Packet identifiers cycle through 1..=65535.
const PACKET_IDS: u64 = 65_535;
/// Bytes a publisher writes at once when sending as fast as it can.
const BATCH_BYTES: usize = 32 * 1024;

/// Counters the orchestrating task watches to know when a run has drained.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Messages published with a send time in the window (all publishers).
    pub(crate) published_in_window: AtomicU64,
    /// Messages received with a send time in the window (all subscribers).
    pub(crate) received_of_window: AtomicU64,
    /// Messages received (all subscribers), to tell a run still draining from a finished one.
    pub(crate) received: AtomicU64,
    /// Publishers that stopped writing.
    pub(crate) writers_done: AtomicU64,
    /// QoS 1 publishes sent and not yet acknowledged (all publishers).
    pub(crate) unacked: AtomicU64,
}

/// What one or more subscribers received.
#[derive(Debug, Clone, Default)]
pub(crate) struct Received {
    /// Messages that arrived within the window.
    pub(crate) delivered_in_window: u64,
    /// Messages whose send time lies in the window, whenever they arrived (for loss).
    pub(crate) of_window: u64,
    /// Every message received.
    pub(crate) total: u64,
    /// Send-to-arrival time of the messages that arrived within the window, nanoseconds: until
    /// the delivery reached the subscriber's socket (see [`crate::arrival`]).
    pub(crate) latency: Histogram,
    /// Send-to-read time of the messages the generator read within the window, nanoseconds:
    /// includes the generator's own wait before it read the socket. Only where the kernel
    /// stamped arrivals (otherwise `latency` is this already).
    pub(crate) read_latency: Histogram,
    /// Subscribers whose connection failed or was closed by the broker.
    pub(crate) failures: Failures,
}

/// Clients whose connection failed, and the first reason, for the run's notes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Failures {
    /// How many failed.
    pub(crate) count: u64,
    /// The first failure.
    pub(crate) first: Option<String>,
}

impl Failures {
    /// Counts one more failure, keeping the first reason.
    fn record(&mut self, error: String) {
        self.count += 1;
        self.first.get_or_insert(error);
    }

    /// Adds another client's failures.
    fn merge(&mut self, other: &Failures) {
        self.count += other.count;
        if self.first.is_none() {
            self.first.clone_from(&other.first);
        }
    }

    /// A note for the report (`None` when nothing failed); `who` names the kind of client.
    pub(crate) fn note(&self, who: &str) -> Option<String> {
        (self.count > 0).then(|| {
            format!(
                "{} {who} connection(s) failed: {}",
                self.count,
                self.first.as_deref().unwrap_or("?")
            )
        })
    }
}

impl Received {
    /// Adds another subscriber's counts.
    pub(crate) fn merge(&mut self, other: &Received) {
        self.delivered_in_window += other.delivered_in_window;
        self.of_window += other.of_window;
        self.total += other.total;
        self.latency.merge(&other.latency);
        self.read_latency.merge(&other.read_latency);
        self.failures.merge(&other.failures);
    }

    fn fail(&mut self, error: String) {
        self.failures.record(error);
    }
}

/// Receives until `stop` turns true: counts and times every stamped PUBLISH and acknowledges
/// QoS 1 ones (all acknowledgements of one read in one write).
pub(crate) async fn subscriber(
    mut conn: Conn,
    clock: Clock,
    window: Window,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> Received {
    let mut received = Received::default();
    let mut acks = BytesMut::with_capacity(1024);
    let protocol = conn.protocol;
    loop {
        let read = tokio::select! {
            biased;
            read = conn.stream.read(&mut conn.rbuf, conn.stamped) => read,
            _ = stop.changed() => break,
        };
        let arrival = match read {
            Ok(arrival) if arrival.bytes == 0 => {
                received.fail("the broker closed a subscriber's connection".into());
                break;
            }
            Ok(arrival) => arrival,
            Err(error) => {
                received.fail(format!("subscriber read failed: {error}"));
                break;
            }
        };
        let read_at = clock.now_ns();
        let now = arrived_at(read_at, arrival);
        let arrived_in_window = window.contains(now);
        let read_in_window = window.contains(read_at);
        let (before, total_before) = (received.of_window, received.total);
        let mut disconnected = false;
        let scanned = scan(&conn.rbuf, protocol, |frame| match frame {
            Frame::Publish {
                qos,
                packet_id,
                payload,
            } => {
                if let Some(stamp) = Stamp::read(payload) {
                    received.total += 1;
                    if arrived_in_window {
                        received.delivered_in_window += 1;
                        received.latency.record(now.saturating_sub(stamp.sent_ns));
                    }
                    if read_in_window && arrival.age.is_some() {
                        received
                            .read_latency
                            .record(read_at.saturating_sub(stamp.sent_ns));
                    }
                    if window.contains(stamp.sent_ns) {
                        received.of_window += 1;
                    }
                }
                if let (1, Some(id)) = (qos, packet_id) {
                    packets::puback(&mut acks, id);
                }
            }
            Frame::PubAck(_) => {}
            Frame::Other(bytes) => disconnected |= bytes.first().is_some_and(|b| b >> 4 == 14),
        });
        let used = match scanned {
            Ok(used) => used,
            Err(error) => {
                received.fail(error.to_string());
                break;
            }
        };
        conn.rbuf.advance(used);
        progress
            .received_of_window
            .fetch_add(received.of_window - before, Ordering::Relaxed);
        progress
            .received
            .fetch_add(received.total - total_before, Ordering::Relaxed);
        if disconnected {
            received.fail("the broker sent DISCONNECT to a subscriber".into());
            break;
        }
        if !acks.is_empty() {
            if let Err(error) = conn.stream.write_all(&acks).await {
                received.fail(format!("subscriber write failed: {error}"));
                break;
            }
            acks.clear();
        }
    }
    received
}

/// When the bytes of a read reached the socket, on the generator's clock: the read time less
/// the age the kernel gave them, or the read time where it gave none.
fn arrived_at(read_at: u64, arrival: Arrival) -> u64 {
    let age = arrival
        .age
        .map_or(0, |age| u64::try_from(age.as_nanos()).unwrap_or(u64::MAX));
    read_at.saturating_sub(age)
}

/// How one publisher sends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PublisherPlan {
    /// Index written into every stamp.
    pub(crate) index: u32,
    /// Publishes per second; `None` for as fast as the broker takes them.
    pub(crate) rate: Option<f64>,
    /// The measured window; publishing stops at its end.
    pub(crate) window: Window,
    /// Most unacknowledged QoS 1 publishes (ignored for QoS 0).
    pub(crate) inflight: usize,
}

/// What one or more publishers did.
#[derive(Debug, Clone, Default)]
pub(crate) struct Published {
    /// Messages written.
    pub(crate) total: u64,
    /// Messages written with a send time in the window.
    pub(crate) in_window: u64,
    /// PUBACKs received within the window.
    pub(crate) acked_in_window: u64,
    /// Publish-to-PUBACK time of those, nanoseconds.
    pub(crate) ack_latency: Histogram,
    /// Publishers whose connection failed.
    pub(crate) failures: Failures,
}

impl Published {
    /// Adds another publisher's counts.
    pub(crate) fn merge(&mut self, other: &Published) {
        self.total += other.total;
        self.in_window += other.in_window;
        self.acked_in_window += other.acked_in_window;
        self.ack_latency.merge(&other.ack_latency);
        self.failures.merge(&other.failures);
    }

    fn fail(&mut self, error: String) {
        self.failures.record(error);
    }
}

/// State shared by a QoS 1 publisher's writing and reading halves.
#[derive(Debug)]
struct Acks {
    /// Send time of the publish with each packet identifier.
    sent_at: Vec<AtomicU64>,
    /// PUBACKs received.
    acked: AtomicU64,
    /// Woken when PUBACKs open the window.
    opened: Notify,
}

/// How many publishes are due at `now_ns` for a publisher that started at `start_ns`, counting
/// one at the start itself.
fn due(rate: f64, start_ns: u64, now_ns: u64) -> u64 {
    (now_ns.saturating_sub(start_ns) as f64 * rate / 1e9) as u64 + 1
}

/// Publishes until the window ends (or `stop`), then, for QoS 1, waits for the outstanding
/// PUBACKs until `stop`.
pub(crate) async fn publisher(
    conn: Conn,
    template: PublishTemplate,
    plan: PublisherPlan,
    clock: Clock,
    progress: Arc<Progress>,
    stop: watch::Receiver<bool>,
) -> Published {
    let protocol = conn.protocol;
    let tcp = match conn.stream.into_tcp() {
        Ok(tcp) => tcp,
        Err(error) => {
            let mut published = Published::default();
            published.fail(error.to_string());
            progress.writers_done.fetch_add(1, Ordering::Relaxed);
            return published;
        }
    };
    let (reader, writer) = tcp.into_split();
    let acks = template.acknowledged().then(|| {
        Arc::new(Acks {
            sent_at: (0..=PACKET_IDS).map(|_| AtomicU64::new(0)).collect(),
            acked: AtomicU64::new(0),
            opened: Notify::new(),
        })
    });
    let reading = acks.clone().map(|acks| {
        tokio::spawn(read_acks(
            reader,
            conn.rbuf,
            conn.stamped,
            protocol,
            clock,
            plan.window,
            acks,
            progress.clone(),
            stop.clone(),
        ))
    });
    // The write half lives until the PUBACKs are in: dropping it shuts the socket down for
    // writing, and a broker reading end-of-stream closes the connection.
    let mut writer = writer;
    let mut published = write_publishes(
        &mut writer,
        template,
        plan,
        clock,
        &progress,
        acks.as_deref(),
        stop,
    )
    .await;
    progress.writers_done.fetch_add(1, Ordering::Relaxed);
    if let Some(reading) = reading {
        match reading.await {
            Ok(acked) => published.merge(&acked),
            Err(error) => published.fail(format!("PUBACK reader failed: {error}")),
        }
    }
    drop(writer);
    published
}

async fn write_publishes(
    mut writer: impl AsyncWrite + Unpin,
    mut template: PublishTemplate,
    plan: PublisherPlan,
    clock: Clock,
    progress: &Progress,
    acks: Option<&Acks>,
    mut stop: watch::Receiver<bool>,
) -> Published {
    let mut published = Published::default();
    let batch_max = (BATCH_BYTES / template.len()).clamp(1, 1024) as u64;
    let mut out = BytesMut::with_capacity(BATCH_BYTES + template.len());
    let start_ns = clock.now_ns();
    let end_ns = plan.window.end_ns;
    let mut seq = 0u64;
    loop {
        let now = clock.now_ns();
        if now >= end_ns || *stop.borrow() {
            break;
        }
        let mut count = batch_max;
        if let Some(rate) = plan.rate {
            let due = due(rate, start_ns, now);
            if due <= seq {
                let next_ns = start_ns + (seq as f64 * 1e9 / rate) as u64;
                sleep_until_ns(&clock, next_ns.min(end_ns)).await;
                continue;
            }
            count = count.min(due - seq);
        }
        if let Some(acks) = acks {
            let outstanding = seq - acks.acked.load(Ordering::Relaxed);
            let room = (plan.inflight as u64).saturating_sub(outstanding);
            if room == 0 {
                let opened = acks.opened.notified();
                tokio::select! {
                    _ = opened => {}
                    _ = sleep_until_ns(&clock, end_ns) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            count = count.min(room);
        }
        let stamp_ns = clock.now_ns();
        out.clear();
        for s in seq..seq + count {
            let packet_id = (s % PACKET_IDS) as u16 + 1;
            if let Some(acks) = acks {
                acks.sent_at[usize::from(packet_id)].store(stamp_ns, Ordering::Relaxed);
            }
            let stamp = Stamp {
                sent_ns: stamp_ns,
                seq: s,
                publisher: plan.index,
            };
            template.append(&mut out, packet_id, &stamp);
        }
        if acks.is_some() {
            progress.unacked.fetch_add(count, Ordering::Relaxed);
        }
        // A broker that stopped reading must not keep the run beyond its window.
        let written = tokio::select! {
            written = writer.write_all(&out) => written,
            _ = sleep_until_ns(&clock, end_ns) => break,
            _ = stop.changed() => break,
        };
        if let Err(error) = written {
            published.fail(format!("publisher write failed: {error}"));
            break;
        }
        seq += count;
        published.total += count;
        if plan.window.contains(stamp_ns) {
            published.in_window += count;
            progress
                .published_in_window
                .fetch_add(count, Ordering::Relaxed);
        }
    }
    published
}

#[allow(clippy::too_many_arguments)]
async fn read_acks(
    reader: OwnedReadHalf,
    mut rbuf: BytesMut,
    stamped: bool,
    protocol: Protocol,
    clock: Clock,
    window: Window,
    acks: Arc<Acks>,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> Published {
    let mut published = Published::default();
    loop {
        let read = tokio::select! {
            biased;
            read = arrival::read(reader.as_ref(), &mut rbuf, stamped) => read,
            _ = stop.changed() => break,
        };
        let arrival = match read {
            Ok(arrival) if arrival.bytes == 0 => {
                published.fail("the broker closed a publisher's connection".into());
                break;
            }
            Ok(arrival) => arrival,
            Err(error) => {
                published.fail(format!("publisher read failed: {error}"));
                break;
            }
        };
        let now = arrived_at(clock.now_ns(), arrival);
        let mut acked = 0;
        let scanned = scan(&rbuf, protocol, |frame| {
            if let Frame::PubAck(id) = frame {
                acked += 1;
                if window.contains(now) {
                    let sent = acks.sent_at[usize::from(id)].load(Ordering::Relaxed);
                    published.acked_in_window += 1;
                    published.ack_latency.record(now.saturating_sub(sent));
                }
            }
        });
        match scanned {
            Ok(used) => rbuf.advance(used),
            Err(error) => {
                published.fail(error.to_string());
                break;
            }
        }
        if acked > 0 {
            acks.acked.fetch_add(acked, Ordering::Relaxed);
            progress.unacked.fetch_sub(acked, Ordering::Relaxed);
            acks.opened.notify_one();
        }
    }
    published
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_counts_the_first_publish_at_the_start() {
        assert_eq!(due(100.0, 0, 0), 1);
        assert_eq!(due(100.0, 0, 9_999_999), 1);
        assert_eq!(due(100.0, 0, 10_000_000), 2);
        assert_eq!(due(100.0, 5, 1_000_000_005), 101);
        assert_eq!(due(100.0, 10, 0), 1);
    }

    #[test]
    fn received_counts_merge() {
        let mut a = Received {
            delivered_in_window: 1,
            of_window: 2,
            total: 3,
            ..Received::default()
        };
        a.latency.record(5);
        let mut b = a.clone();
        b.fail("closed".into());
        a.merge(&b);
        assert_eq!(
            (
                a.delivered_in_window,
                a.of_window,
                a.total,
                a.failures.count
            ),
            (2, 4, 6, 1)
        );
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.failures.first.as_deref(), Some("closed"));
        assert_eq!(
            a.failures.note("subscriber").as_deref(),
            Some("1 subscriber connection(s) failed: closed")
        );
        assert_eq!(Failures::default().note("publisher"), None);
    }
}
