//! One load run, whatever its shape: start connected subscribers and publishers, warm up,
//! measure the window (with the broker's CPU and memory), let what is in flight arrive, stop.
//!
//! Depends on `clients`, `wire` and `report`; the scenarios depend on it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::clients::{self, Progress, Published, PublisherPlan, Received};
use crate::report::RunReport;
use crate::wire::{Clock, Conn, PublishTemplate};
use crate::{sleep_until_ns, Common, Monitor, Usage, Window};

/// After publishing stops, a run waiting for messages in flight gives up once nothing has
/// arrived for this long.
const QUIET: Duration = Duration::from_secs(1);

/// One publisher to start.
#[derive(Debug)]
pub(crate) struct PublisherSpec {
    /// Its connection (TCP, after CONNACK).
    pub(crate) conn: Conn,
    /// What it publishes.
    pub(crate) template: PublishTemplate,
    /// Publishes per second, `None` for as fast as possible.
    pub(crate) rate: Option<f64>,
    /// Most unacknowledged QoS 1 publishes.
    pub(crate) inflight: usize,
}

/// What a run measured.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// All subscribers together.
    pub(crate) received: Received,
    /// All publishers together.
    pub(crate) published: Published,
    /// CPU and memory over the window.
    pub(crate) usage: Usage,
    /// The measured window.
    pub(crate) window: Window,
    /// How many subscribers receive each message.
    pub(crate) copies: u64,
}

impl Outcome {
    /// Fills the counts, rates, latencies and usage of `report`.
    pub(crate) fn fill(&self, report: &mut RunReport) {
        let seconds = self.window.seconds();
        let per_s = |n: u64| (n as f64 / seconds).round();
        let expected = self.published.in_window * self.copies;
        report.published = self.published.in_window;
        report.published_per_s = per_s(self.published.in_window);
        report.delivered = self.received.delivered_in_window;
        report.delivered_per_s = per_s(self.received.delivered_in_window);
        report.expected = expected;
        report.lost = expected.saturating_sub(self.received.of_window);
        report.loss_pct = if expected == 0 {
            0.0
        } else {
            (report.lost as f64 / expected as f64 * 1e6).round() / 1e4
        };
        report.latency = crate::stats::Latency::from_nanos(&self.received.latency);
        report.read_latency = crate::stats::Latency::from_nanos(&self.received.read_latency);
        if self.published.ack_latency.len() > 0 {
            report.acked_per_s = Some(per_s(self.published.acked_in_window));
            report.ack_latency = crate::stats::Latency::from_nanos(&self.published.ack_latency);
        }
        report.apply_usage(&self.usage);
        report
            .notes
            .extend(self.received.failures.note("subscriber"));
        report
            .notes
            .extend(self.published.failures.note("publisher"));
        if self.copies > 0 && self.published.in_window > 0 && self.received.total == 0 {
            report.notes.push(
                "nothing was delivered: does the broker let this publisher publish? (Firehose \
                 drops anonymous publishes: pass --username and --password)"
                    .into(),
            );
        }
    }
}

/// Runs subscribers and publishers through warm-up, window and drain.
///
/// # Errors
/// `/proc/self` cannot be read.
pub(crate) async fn run(
    common: &Common,
    clock: Clock,
    mut monitor: Monitor,
    subscribers: Vec<Conn>,
    publishers: Vec<PublisherSpec>,
    copies: u64,
) -> anyhow::Result<Outcome> {
    let window = Window::after(clock.now_ns(), common.warmup, common.duration);
    let (stop_tx, stop_rx) = watch::channel(false);
    let progress = Arc::new(Progress::default());
    let receiving: Vec<_> = subscribers
        .into_iter()
        .map(|conn| {
            tokio::spawn(clients::subscriber(
                conn,
                clock,
                window,
                progress.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    let publisher_count = publishers.len() as u64;
    let publishing: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(index, spec)| {
            let plan = PublisherPlan {
                index: u32::try_from(index).unwrap_or(u32::MAX),
                rate: spec.rate,
                window,
                inflight: spec.inflight,
            };
            tokio::spawn(clients::publisher(
                spec.conn,
                spec.template,
                plan,
                clock,
                progress.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();

    sleep_until_ns(&clock, window.start_ns).await;
    monitor.start_window()?;
    sleep_until_ns(&clock, window.end_ns).await;
    let usage = monitor.end_window()?;

    // Let what was published in the window arrive: until everything has, or nothing more
    // arrives for a while (the rest is lost), or the drain time is up.
    let deadline = tokio::time::Instant::now() + common.drain;
    let mut last = (u64::MAX, u64::MAX);
    let mut last_change = tokio::time::Instant::now();
    loop {
        let now = tokio::time::Instant::now();
        let writers_done = progress.writers_done.load(Ordering::Relaxed) == publisher_count;
        let expected = progress.published_in_window.load(Ordering::Relaxed) * copies;
        let received = progress.received_of_window.load(Ordering::Relaxed);
        let unacked = progress.unacked.load(Ordering::Relaxed);
        let moving = (progress.received.load(Ordering::Relaxed), unacked);
        if moving != last {
            last = moving;
            last_change = now;
        }
        let done = writers_done && received >= expected && unacked == 0;
        let quiet = writers_done && now - last_change >= QUIET;
        if done || quiet || now >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(true);

    let mut received = Received::default();
    for handle in receiving {
        match handle.await {
            Ok(r) => received.merge(&r),
            Err(error) => anyhow::bail!("a subscriber task failed: {error}"),
        }
    }
    let mut published = Published::default();
    for handle in publishing {
        match handle.await {
            Ok(p) => published.merge(&p),
            Err(error) => anyhow::bail!("a publisher task failed: {error}"),
        }
    }
    Ok(Outcome {
        received,
        published,
        usage,
        window,
        copies,
    })
}
