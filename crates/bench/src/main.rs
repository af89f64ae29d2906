//! `firehose-bench`: a load generator that speaks MQTT to any broker (Firehose, Mosquitto,
//! rumqttd) and reports delivered messages per second, loss, latency, and the CPU and memory of
//! the broker and of itself. `scripts/bench-compare` runs it against each broker in turn and
//! writes `BENCHMARKS.md`.
//!
//! # Layout
//! - this file: the command line, the measured [`Window`], and the [`Monitor`] of the broker's
//!   and the generator's CPU and memory.
//! - [`packets`]: the MQTT packets it sends and the little it reads back, written by hand, and
//!   the allocation-free frame scanner of the receive path.
//! - [`arrival`]: the kernel's receive timestamps, so latency ends when a delivery reached its
//!   subscriber's socket, not when the generator got round to reading it.
//! - [`wire`]: connections (TCP, WebSocket), the CONNECT and SUBSCRIBE handshakes, pre-encoded
//!   PUBLISH packets stamped for every send.
//! - [`stats`]: the latency histogram and `/proc` readings.
//! - [`clients`]: the publisher and subscriber loops every scenario is made of.
//! - [`fanout`], [`fanin`], [`idle`], [`durable`]: the scenarios.
//! - [`report`]: one run as a JSON line and a table; `bench report` turns the JSON lines of
//!   several brokers into the Markdown tables of `BENCHMARKS.md`.
//!
//! Why it is cheap enough not to be the bottleneck: it runs on one thread (a current-thread
//! runtime, so a run pinned to one core measures what one core can do), encodes each PUBLISH
//! once and only stamps the payload, batches writes, takes one clock reading per socket read,
//! and never decodes a received PUBLISH beyond its payload's first 20 bytes. It reports its own
//! CPU so a reader can tell when it was the limit anyway.
//!
//! It shares nothing with the broker it measures: no dependency on the `firehose` crate, and
//! none on `firehose-codec` (a generator that spoke MQTT through the broker's own codec would
//! share its bugs; the codec is a test oracle only, see `packets`). Depends on tokio,
//! tokio-tungstenite and nix (receive timestamps); `anyhow` carries errors to `main`.

mod arrival;
mod clients;
mod durable;
mod fanin;
mod fanout;
mod idle;
mod load;
mod packets;
mod report;
mod stats;
mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use packets::Protocol;
use report::RunReport;
use stats::{Pid, ProcSample};
use wire::{Clock, Target};

/// Load-test an MQTT broker (Firehose, Mosquitto, rumqttd): fan-out, fan-in, idle connections,
/// the durable path; or build the comparison report of BENCHMARKS.md.
#[derive(Debug, clap::Parser)]
#[command(name = "firehose-bench", version)]
struct Cli {
    /// What to run.
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, clap::Subcommand)]
enum Scenario {
    /// One publisher to N subscribers of one topic (QoS 0 or 1, fixed rate or as fast as the
    /// broker takes it), over TCP or WebSocket.
    Fanout(fanout::FanoutArgs),
    /// M publishers to one subscriber: delivered/s and loss.
    Fanin(fanin::FaninArgs),
    /// C idle subscribers: connect rate and broker memory per connection.
    Idle(idle::IdleArgs),
    /// QoS 1 publishes acknowledged by the broker (its durable path), with one persistent
    /// subscriber: acknowledgements per second and their latency.
    Durable(durable::DurableArgs),
    /// Turn the JSON lines of runs against several brokers into Markdown tables, with ratios
    /// and the targets of the performance issue marked met or not met.
    Report(report::ReportArgs),
}

/// MQTT version of the generator's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum MqttVersion {
    /// MQTT 3.1.1.
    #[value(name = "3.1.1", alias = "3", alias = "4")]
    V311,
    /// MQTT 5.0.
    #[value(name = "5", alias = "5.0")]
    V5,
}

impl MqttVersion {
    fn protocol(self) -> Protocol {
        match self {
            MqttVersion::V311 => Protocol::V311,
            MqttVersion::V5 => Protocol::V5,
        }
    }

    fn label(self) -> &'static str {
        match self {
            MqttVersion::V311 => "3.1.1",
            MqttVersion::V5 => "5",
        }
    }
}

/// Options every scenario shares.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Common {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker MQTT (TCP) port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Broker MQTT-over-WebSocket port (for --transport ws).
    #[arg(long, default_value_t = 8080)]
    ws_port: u16,
    /// MQTT-over-WebSocket path.
    #[arg(long, default_value = "/mqtt")]
    ws_path: String,
    /// MQTT version.
    #[arg(long, value_enum, default_value = "3.1.1")]
    mqtt: MqttVersion,
    /// User name of the publishers (Firehose drops anonymous publishes); subscribers connect
    /// anonymously.
    #[arg(long, env = "FIREHOSE_BENCH_USER")]
    username: Option<String>,
    /// Password of the publishers.
    #[arg(long, env = "FIREHOSE_BENCH_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Measured time, after the warm-up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Load before the measurement starts (not counted).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Longest wait, after publishing stops, for messages still on their way: in queues and
    /// socket buffers (what has not arrived when nothing more arrives for a second, or after
    /// this, counts as lost).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// Process id of the broker, to report its CPU and memory from /proc.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Broker name in the report.
    #[arg(long, default_value = "broker")]
    broker: String,
    /// Case name, which `bench report` uses to put runs of different brokers side by side.
    #[arg(long)]
    case: Option<String>,
    /// Topic prefix; each run adds a unique level so runs never see each other's messages.
    #[arg(long, default_value = "bench")]
    topic_prefix: String,
    /// Keep alive of every connection, seconds (some brokers refuse 0). The generator sends
    /// nothing to keep connections alive, so runs must end before 1.5 times this.
    #[arg(long, default_value_t = 600)]
    keep_alive: u16,
    /// Connections opened at once while setting up.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
}

impl Common {
    fn target(&self) -> Target {
        Target {
            host: self.host.clone(),
            port: self.port,
            ws_port: self.ws_port,
            ws_path: self.ws_path.clone(),
            protocol: self.mqtt.protocol(),
            keep_alive: self.keep_alive,
            credentials: self.username.clone().map(|user| {
                let password = self.password.clone().unwrap_or_default();
                (user, password)
            }),
            stamp_arrivals: false,
        }
    }

    /// A topic level unique to this run: the process id and the time.
    fn run_topic(&self, scenario: &str) -> String {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!(
            "{}/{scenario}/{}-{millis}",
            self.topic_prefix,
            std::process::id()
        )
    }

    /// The report skeleton every scenario fills in.
    fn report(&self, scenario: &str) -> RunReport {
        RunReport {
            scenario: scenario.to_string(),
            case: self.case.clone().unwrap_or_else(|| scenario.to_string()),
            broker: self.broker.clone(),
            mqtt: self.mqtt.label().to_string(),
            duration_s: self.duration.as_secs_f64(),
            warmup_s: self.warmup.as_secs_f64(),
            ..RunReport::default()
        }
    }
}

/// The measured part of a run, in nanoseconds of the run's [`Clock`]: counts and latencies are
/// taken for what happens within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// First measured nanosecond (after the warm-up).
    pub(crate) start_ns: u64,
    /// First nanosecond after the measurement.
    pub(crate) end_ns: u64,
}

impl Window {
    /// A window that opens `warmup` after `now_ns` and lasts `duration`.
    fn after(now_ns: u64, warmup: Duration, duration: Duration) -> Window {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let start_ns = now_ns.saturating_add(nanos(warmup));
        Window {
            start_ns,
            end_ns: start_ns.saturating_add(nanos(duration)),
        }
    }

    /// Whether `ns` falls in the window.
    pub(crate) fn contains(&self, ns: u64) -> bool {
        (self.start_ns..self.end_ns).contains(&ns)
    }

    /// Length in seconds.
    pub(crate) fn seconds(&self) -> f64 {
        (self.end_ns - self.start_ns) as f64 / 1e9
    }
}

/// CPU and memory of the broker and of the generator over the measured window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Usage {
    /// Broker CPU, percent of one core.
    pub(crate) broker_cpu_pct: Option<f64>,
    /// Broker resident memory at the end of the window, MiB.
    pub(crate) broker_rss_mib: Option<f64>,
    /// Highest broker resident memory seen during the run (sampled every 100 ms), MiB.
    pub(crate) broker_rss_max_mib: Option<f64>,
    /// Generator CPU, percent of one core.
    pub(crate) generator_cpu_pct: f64,
}

/// Samples the broker's memory every 100 ms from the start of a run, and CPU times at the
/// window's edges.
#[derive(Debug)]
pub(crate) struct Monitor {
    /// The broker, if its pid was given.
    broker: Option<u32>,
    /// Highest broker RSS seen, KiB.
    rss_max_kib: Arc<AtomicU64>,
    /// The sampling task.
    sampler: Option<tokio::task::JoinHandle<()>>,
    /// Readings at the window's start: broker, generator.
    at_start: Option<(Option<ProcSample>, ProcSample)>,
    /// When the window started.
    started: std::time::Instant,
}

impl Monitor {
    /// Starts sampling the broker's memory (call inside the runtime).
    pub(crate) fn new(broker: Option<u32>) -> Monitor {
        let rss_max_kib = Arc::new(AtomicU64::new(0));
        let sampler = broker.map(|pid| {
            let rss_max_kib = rss_max_kib.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    match stats::sample(Pid::Other(pid)) {
                        Ok(s) => {
                            rss_max_kib.fetch_max(s.rss_kib, Ordering::Relaxed);
                        }
                        Err(_) => return,
                    }
                }
            })
        });
        Monitor {
            broker,
            rss_max_kib,
            sampler,
            at_start: None,
            started: std::time::Instant::now(),
        }
    }

    fn broker_sample(&self) -> Option<ProcSample> {
        self.broker
            .and_then(|pid| stats::sample(Pid::Other(pid)).ok())
    }

    /// Broker RSS now, KiB.
    pub(crate) fn broker_rss_kib(&self) -> Option<u64> {
        self.broker_sample().map(|s| s.rss_kib)
    }

    /// Marks the start of the measured window.
    ///
    /// # Errors
    /// `/proc/self` cannot be read.
    pub(crate) fn start_window(&mut self) -> anyhow::Result<()> {
        let me = stats::sample(Pid::Myself).context("cannot read /proc/self")?;
        self.at_start = Some((self.broker_sample(), me));
        self.started = std::time::Instant::now();
        Ok(())
    }

    /// Ends the window and returns what it used.
    ///
    /// # Errors
    /// `/proc/self` cannot be read.
    pub(crate) fn end_window(&mut self) -> anyhow::Result<Usage> {
        let me = stats::sample(Pid::Myself).context("cannot read /proc/self")?;
        let broker = self.broker_sample();
        let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
        let (broker_start, me_start) = self.at_start.unwrap_or((broker, me));
        let pct = |cpu: f64| (cpu / seconds * 1000.0).round() / 10.0;
        let mib = |kib: u64| (kib as f64 / 1024.0 * 10.0).round() / 10.0;
        let rss_max = self
            .rss_max_kib
            .load(Ordering::Relaxed)
            .max(broker.map_or(0, |b| b.rss_kib));
        Ok(Usage {
            broker_cpu_pct: match (broker_start, broker) {
                (Some(a), Some(b)) => Some(pct(b.cpu_seconds - a.cpu_seconds)),
                _ => None,
            },
            broker_rss_mib: broker.map(|b| mib(b.rss_kib)),
            broker_rss_max_mib: broker.map(|_| mib(rss_max)),
            generator_cpu_pct: pct(me.cpu_seconds - me_start.cpu_seconds),
        })
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(sampler) = self.sampler.take() {
            sampler.abort();
        }
    }
}

/// Runs the command line and turns any error into a message on stderr and exit status 1.
fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("firehose-bench: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one scenario, or the report.
///
/// # Errors
/// The broker cannot be reached or refuses the generator's connections, or a file cannot be
/// read or written.
fn run(args: Cli) -> anyhow::Result<()> {
    if let Scenario::Report(args) = args.scenario {
        return report::run(args);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(async move {
        match args.scenario {
            Scenario::Fanout(args) => fanout::run(args).await,
            Scenario::Fanin(args) => fanin::run(args).await,
            Scenario::Idle(args) => idle::run(args).await,
            Scenario::Durable(args) => durable::run(args).await,
            Scenario::Report(_) => unreachable!("handled above"),
        }
    })?;
    report.emit()
}

/// Connects `count` clients, `concurrency` at a time, with `connect(i)`; returns them in order.
///
/// # Errors
/// The first connection that fails.
pub(crate) async fn connect_all<T, F, Fut>(
    count: usize,
    concurrency: usize,
    connect: F,
) -> anyhow::Result<Vec<T>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    use futures_util::StreamExt;
    let mut all: Vec<(usize, T)> = futures_util::stream::iter(0..count)
        .map(|i| {
            let fut = connect(i);
            async move { fut.await.map(|t| (i, t)) }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, t)| t).collect())
}

/// Sleeps until `ns` on the run's clock.
pub(crate) async fn sleep_until_ns(clock: &Clock, ns: u64) {
    tokio::time::sleep_until(clock.at(ns).into()).await;
}

#[cfg(test)]
mod oracle;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_bounds() {
        let w = Window::after(1_000, Duration::from_secs(2), Duration::from_secs(10));
        assert_eq!(w.start_ns, 2_000_001_000);
        assert_eq!(w.end_ns, 12_000_001_000);
        assert!(!w.contains(2_000_000_999));
        assert!(w.contains(2_000_001_000));
        assert!(!w.contains(12_000_001_000));
        assert!((w.seconds() - 10.0).abs() < 1e-9);
    }

    #[test]
    fn every_scenario_parses() {
        for line in [
            "x fanout --subscribers 10 --qos 1 --rate 100 --transport ws",
            "x fanin --publishers 5 --mqtt 5",
            "x idle --connections 100 --duration 1s",
            "x durable --publishers 2 --inflight 10",
            "x report results.jsonl",
        ] {
            Cli::try_parse_from(line.split_whitespace()).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }
}
