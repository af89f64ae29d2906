//! Results: one run as a JSON line (stdout) and a table (stderr); `bench report` reads the JSON
//! lines of runs against several brokers and writes Markdown tables, brokers side by side, with
//! the ratio of the subject (Firehose) to the baseline (Mosquitto) and the targets of the
//! performance issue marked met or not met.
//!
//! Depends on `stats` and serde_json only: `report` runs without a broker, on files.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;

use crate::stats::Latency;
use crate::Usage;

/// Generator CPU (percent of one core) from which a run is called generator-bound.
const GENERATOR_BOUND_PCT: f64 = 90.0;

/// Everything one run measured. Fields that do not apply to a scenario are absent.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct RunReport {
    /// `fanout`, `fanin`, `idle` or `durable`.
    pub(crate) scenario: String,
    /// Name that groups runs of different brokers (defaults to the scenario).
    pub(crate) case: String,
    /// Broker name.
    pub(crate) broker: String,
    /// `tcp` or `ws` (subscribers' transport).
    pub(crate) transport: String,
    /// `3.1.1` or `5`.
    pub(crate) mqtt: String,
    /// QoS of publishes and subscriptions.
    pub(crate) qos: u8,
    /// Payload bytes.
    pub(crate) payload_bytes: usize,
    /// Publisher connections.
    pub(crate) publishers: usize,
    /// Subscriber connections.
    pub(crate) subscribers: usize,
    /// Publishes per second asked for, all publishers together; absent for "as fast as the
    /// broker takes them".
    pub(crate) rate: Option<u64>,
    /// Measured seconds.
    pub(crate) duration_s: f64,
    /// Warm-up seconds.
    pub(crate) warmup_s: f64,
    /// Messages published in the window.
    pub(crate) published: u64,
    /// Of which per second.
    pub(crate) published_per_s: f64,
    /// Messages that reached a subscriber within the window.
    pub(crate) delivered: u64,
    /// Of which per second: the headline number.
    pub(crate) delivered_per_s: f64,
    /// Deliveries owed for the messages published in the window.
    pub(crate) expected: u64,
    /// Of those, never received (within the drain time).
    pub(crate) lost: u64,
    /// `lost` in percent of `expected`.
    pub(crate) loss_pct: f64,
    /// Publish-to-delivery latency of what arrived in the window: until the delivery reached
    /// the subscriber's socket by the kernel's receive timestamp in fixed-rate runs over TCP,
    /// until the generator read it otherwise.
    pub(crate) latency: Option<Latency>,
    /// Publish-to-read latency where `latency` is by kernel stamps: until the generator read
    /// the delivery, which adds its own wait for its turn among a thousand subscribers on one
    /// thread.
    pub(crate) read_latency: Option<Latency>,
    /// QoS 1 PUBACKs received per second.
    pub(crate) acked_per_s: Option<f64>,
    /// Publish-to-PUBACK latency.
    pub(crate) ack_latency: Option<Latency>,
    /// Idle connections held.
    pub(crate) connections: Option<u64>,
    /// Connections (CONNECT, CONNACK, SUBSCRIBE, SUBACK) completed per second.
    pub(crate) connect_per_s: Option<f64>,
    /// Broker memory per idle connection, KiB.
    pub(crate) rss_per_connection_kib: Option<f64>,
    /// Broker CPU over the window, percent of one core.
    pub(crate) broker_cpu_pct: Option<f64>,
    /// Broker resident memory at the end of the window, MiB.
    pub(crate) broker_rss_mib: Option<f64>,
    /// Highest broker resident memory seen during the run, MiB.
    pub(crate) broker_rss_max_mib: Option<f64>,
    /// Generator CPU over the window, percent of one core.
    pub(crate) generator_cpu_pct: f64,
    /// Anything the reader should know (failures, generator-bound).
    pub(crate) notes: Vec<String>,
}

impl RunReport {
    /// Copies CPU and memory readings in, and notes a generator-bound run.
    pub(crate) fn apply_usage(&mut self, usage: &Usage) {
        self.broker_cpu_pct = usage.broker_cpu_pct;
        self.broker_rss_mib = usage.broker_rss_mib;
        self.broker_rss_max_mib = usage.broker_rss_max_mib;
        self.generator_cpu_pct = usage.generator_cpu_pct;
        if usage.generator_cpu_pct >= GENERATOR_BOUND_PCT {
            self.notes.push(format!(
                "the generator used {:.0} % of its core: the broker may be faster than shown",
                usage.generator_cpu_pct
            ));
        }
    }

    /// Prints the JSON line on stdout and the table on stderr.
    ///
    /// # Errors
    /// Writing to stdout fails.
    pub(crate) fn emit(&self) -> anyhow::Result<()> {
        let json = serde_json::to_string(self)?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{json}").context("cannot write to stdout")?;
        stdout.flush().context("cannot write to stdout")?;
        eprint!("{}", self.table());
        Ok(())
    }

    /// The run as a human-readable table.
    pub(crate) fn table(&self) -> String {
        let mut t = String::new();
        let rate = self.rate.map_or("max".to_string(), |r| {
            format!("{} publishes/s", group(r as f64))
        });
        let _ = writeln!(
            t,
            "{} [{}] against {}: MQTT {} over {}, QoS {}, {} B payload, {} publisher(s) -> {} \
             subscriber(s), rate {rate}, {} s measured after {} s warm-up",
            self.scenario,
            self.case,
            self.broker,
            self.mqtt,
            self.transport,
            self.qos,
            self.payload_bytes,
            self.publishers,
            self.subscribers,
            self.duration_s,
            self.warmup_s,
        );
        let mut row = |name: &str, value: String| {
            let _ = writeln!(t, "  {name:<22} {value}");
        };
        if let Some(connections) = self.connections {
            row("connections", group(connections as f64));
        }
        if let Some(rate) = self.connect_per_s {
            row("connects/s", group(rate));
        }
        if let Some(kib) = self.rss_per_connection_kib {
            row("broker RSS/connection", format!("{kib:.2} KiB"));
        }
        if self.scenario != "idle" {
            row("published/s", group(self.published_per_s));
            row("delivered/s", group(self.delivered_per_s));
            row(
                "lost",
                format!(
                    "{} of {} ({:.4} %)",
                    group(self.lost as f64),
                    group(self.expected as f64),
                    self.loss_pct
                ),
            );
            row("latency ms", latency_text(self.latency.as_ref()));
            row("read latency ms", latency_text(self.read_latency.as_ref()));
        }
        if let Some(acked) = self.acked_per_s {
            row("PUBACKs/s", group(acked));
            row("ack latency ms", latency_text(self.ack_latency.as_ref()));
        }
        row(
            "broker CPU",
            opt(self.broker_cpu_pct, |v| format!("{v:.1} %")),
        );
        row(
            "broker RSS",
            match (self.broker_rss_mib, self.broker_rss_max_mib) {
                (Some(end), Some(max)) => format!("{end:.1} MiB (max {max:.1} MiB)"),
                _ => "- (no --broker-pid)".into(),
            },
        );
        row("generator CPU", format!("{:.1} %", self.generator_cpu_pct));
        for note in &self.notes {
            let _ = writeln!(t, "  note: {note}");
        }
        t
    }
}

fn latency_text(latency: Option<&Latency>) -> String {
    latency.map_or("-".into(), |l| {
        format!(
            "p50 {:.3}  p99 {:.3}  max {:.3}",
            l.p50_ms, l.p99_ms, l.max_ms
        )
    })
}

fn opt(value: Option<f64>, show: impl Fn(f64) -> String) -> String {
    value.map_or("-".into(), show)
}

/// A number with thousands separators, rounded to an integer (or two decimals below 10).
fn group(value: f64) -> String {
    if value.abs() < 10.0 && value.fract() != 0.0 {
        return format!("{value:.2}");
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// `firehose bench report`: Markdown tables from JSON lines.
#[derive(Debug, clap::Args)]
pub(crate) struct ReportArgs {
    /// Files of JSON lines written by bench runs.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Broker whose targets are judged.
    #[arg(long, default_value = "firehose")]
    subject: String,
    /// Broker the ratios are taken against.
    #[arg(long, default_value = "mosquitto")]
    baseline: String,
    /// Firehose's per-client send queue (`limits.send_queue`), for the memory bound.
    #[arg(long, default_value_t = 10_000)]
    send_queue: u64,
}

/// Runs `bench report`: Markdown on stdout.
///
/// # Errors
/// An input cannot be read or holds a line that is not a run.
pub(crate) fn run(args: ReportArgs) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for path in &args.inputs {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let run: RunReport = serde_json::from_str(line).with_context(|| {
                format!("{}:{}: expected a bench run as JSON", path.display(), n + 1)
            })?;
            runs.push(run);
        }
    }
    let markdown = markdown(&runs, &args.subject, &args.baseline, args.send_queue);
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(markdown.as_bytes())
        .context("cannot write to stdout")?;
    Ok(())
}

/// Runs of one case, by broker, brokers in the order they first appear: for each broker its
/// median run and how many runs it had.
struct Case<'a> {
    name: &'a str,
    brokers: Vec<(&'a str, &'a RunReport)>,
    /// Runs per broker (the most any broker had).
    rounds: usize,
}

/// Every run of one case by one broker.
type BrokerRuns<'a> = (&'a str, Vec<&'a RunReport>);

fn cases(runs: &[RunReport]) -> Vec<Case<'_>> {
    let mut grouped: Vec<(&str, Vec<BrokerRuns<'_>>)> = Vec::new();
    for run in runs {
        let index = match grouped.iter().position(|(name, _)| *name == run.case) {
            Some(index) => index,
            None => {
                grouped.push((&run.case, Vec::new()));
                grouped.len() - 1
            }
        };
        let brokers = &mut grouped[index].1;
        match brokers.iter_mut().find(|(b, _)| *b == run.broker) {
            Some((_, runs)) => runs.push(run),
            None => brokers.push((&run.broker, vec![run])),
        }
    }
    grouped
        .into_iter()
        .map(|(name, brokers)| Case {
            name,
            rounds: brokers
                .iter()
                .map(|(_, runs)| runs.len())
                .max()
                .unwrap_or(0),
            brokers: brokers
                .into_iter()
                .filter_map(|(broker, runs)| Some((broker, median_run(runs)?)))
                .collect(),
        })
        .collect()
}

/// The run in the middle when a broker's runs of one case are ordered by their headline
/// figure: one whole run, so its figures stay consistent with each other. Of two middle runs
/// the worse one, so repeating runs can only make a broker look no better than its typical run.
fn median_run(mut runs: Vec<&RunReport>) -> Option<&RunReport> {
    runs.sort_by(|a, b| headline(a).total_cmp(&headline(b)));
    runs.get(runs.len().saturating_sub(1) / 2).copied()
}

/// The figure a case is about, larger is better: p99 latency for a fixed rate (negated),
/// connections per second for idle connections, acknowledgements per second for the durable
/// path, deliveries per second otherwise.
fn headline(run: &RunReport) -> f64 {
    if run.rate.is_some() {
        return run.latency.map_or(f64::NEG_INFINITY, |l| -l.p99_ms);
    }
    match run.scenario.as_str() {
        "idle" => run.connect_per_s.unwrap_or(0.0),
        "durable" => run.acked_per_s.unwrap_or(0.0),
        _ => run.delivered_per_s,
    }
}

/// What [`headline`] reads, for the report.
fn headline_name(run: &RunReport) -> &'static str {
    if run.rate.is_some() {
        return "latency p99";
    }
    match run.scenario.as_str() {
        "idle" => "connects/s",
        "durable" => "PUBACKs/s",
        _ => "delivered/s",
    }
}

impl Case<'_> {
    fn get(&self, broker: &str) -> Option<&RunReport> {
        self.brokers
            .iter()
            .find(|(b, _)| *b == broker)
            .map(|(_, r)| *r)
    }
}

/// A metric row: its name, how to read it from a run, and how to show it.
type Metric = (
    &'static str,
    fn(&RunReport) -> Option<f64>,
    fn(f64) -> String,
);

fn metrics(scenario: &str) -> Vec<Metric> {
    let count: fn(f64) -> String = group;
    let ms: fn(f64) -> String = |v| format!("{v:.3}");
    let pct: fn(f64) -> String = |v| format!("{v:.1} %");
    let mib: fn(f64) -> String = |v| format!("{v:.1}");
    let kib: fn(f64) -> String = |v| format!("{v:.2}");
    let loss: fn(f64) -> String = |v| format!("{v:.4} %");
    let mut rows: Vec<Metric> = Vec::new();
    if scenario == "idle" {
        rows.push(("connections", |r| r.connections.map(|c| c as f64), count));
        rows.push(("connects/s", |r| r.connect_per_s, count));
        rows.push((
            "broker RSS per connection (KiB)",
            |r| r.rss_per_connection_kib,
            kib,
        ));
        rows.push(("broker RSS (MiB)", |r| r.broker_rss_mib, mib));
        rows.push(("broker CPU while idle", |r| r.broker_cpu_pct, pct));
        rows.push(("generator CPU", |r| Some(r.generator_cpu_pct), pct));
        return rows;
    }
    if scenario == "durable" {
        rows.push(("PUBACKs/s", |r| r.acked_per_s, count));
        rows.push((
            "ack latency p50 (ms)",
            |r| r.ack_latency.map(|l| l.p50_ms),
            ms,
        ));
        rows.push((
            "ack latency p99 (ms)",
            |r| r.ack_latency.map(|l| l.p99_ms),
            ms,
        ));
        rows.push((
            "ack latency max (ms)",
            |r| r.ack_latency.map(|l| l.max_ms),
            ms,
        ));
    }
    rows.push(("published/s", |r| Some(r.published_per_s), count));
    rows.push(("delivered/s", |r| Some(r.delivered_per_s), count));
    rows.push(("lost", |r| Some(r.lost as f64), count));
    rows.push(("loss", |r| Some(r.loss_pct), loss));
    rows.push(("latency p50 (ms)", |r| r.latency.map(|l| l.p50_ms), ms));
    rows.push(("latency p99 (ms)", |r| r.latency.map(|l| l.p99_ms), ms));
    rows.push(("latency max (ms)", |r| r.latency.map(|l| l.max_ms), ms));
    rows.push((
        "latency p99 when read (ms)",
        |r| r.read_latency.map(|l| l.p99_ms),
        ms,
    ));
    if scenario != "durable" {
        if let Some(position) = rows.iter().position(|m| m.0 == "delivered/s") {
            rows.swap(0, position);
        }
    }
    rows.push(("broker CPU", |r| r.broker_cpu_pct, pct));
    rows.push(("broker RSS max (MiB)", |r| r.broker_rss_max_mib, mib));
    rows.push(("generator CPU", |r| Some(r.generator_cpu_pct), pct));
    rows
}

/// One line describing what a case ran.
fn describe(run: &RunReport) -> String {
    if run.scenario == "idle" {
        return format!(
            "{} idle subscriber connections over {}, MQTT {}, each subscribed to its own topic",
            group(run.connections.unwrap_or(0) as f64),
            run.transport,
            run.mqtt
        );
    }
    let rate = run
        .rate
        .map_or("as fast as the broker takes them".into(), |r| {
            format!("{} publishes/s", group(r as f64))
        });
    format!(
        "{}: {} publisher(s) -> {} subscriber(s) over {}, MQTT {}, QoS {}, {} B payload, {rate}, \
         {} s measured after {} s warm-up",
        run.scenario,
        run.publishers,
        run.subscribers,
        run.transport,
        run.mqtt,
        run.qos,
        run.payload_bytes,
        run.duration_s,
        run.warmup_s
    )
}

/// The Markdown: one table per case, then the targets.
pub(crate) fn markdown(
    runs: &[RunReport],
    subject: &str,
    baseline: &str,
    send_queue: u64,
) -> String {
    let cases = cases(runs);
    let mut md = String::new();
    for case in &cases {
        let Some((_, first)) = case.brokers.first() else {
            continue;
        };
        let _ = writeln!(md, "### {}\n", case.name);
        let _ = writeln!(md, "{}.\n", describe(first));
        if case.rounds > 1 {
            let _ = writeln!(
                md,
                "{} runs per broker, taking turns with the other brokers; each column is the \
                 broker's median run by {}.\n",
                case.rounds,
                headline_name(first)
            );
        }
        let names: Vec<&str> = case.brokers.iter().map(|(b, _)| *b).collect();
        let ratio = case.get(subject).is_some() && case.get(baseline).is_some();
        let _ = write!(md, "| metric | {} |", names.join(" | "));
        if ratio {
            let _ = write!(md, " {subject}/{baseline} |");
        }
        let _ = write!(md, "\n|---|{}", "---:|".repeat(names.len()));
        if ratio {
            md.push_str("---:|");
        }
        md.push('\n');
        for (name, read, show) in metrics(&first.scenario) {
            let _ = write!(md, "| {name} |");
            for (_, run) in &case.brokers {
                let _ = write!(md, " {} |", read(run).map_or("-".into(), show));
            }
            if ratio {
                let r = match (
                    case.get(subject).and_then(read),
                    case.get(baseline).and_then(read),
                ) {
                    (Some(s), Some(b)) if b != 0.0 => format!("{:.2}", s / b),
                    _ => "-".into(),
                };
                let _ = write!(md, " {r} |");
            }
            md.push('\n');
        }
        for (broker, run) in &case.brokers {
            for note in &run.notes {
                let _ = writeln!(md, "\n- {broker}: {note}");
            }
        }
        md.push('\n');
    }
    md.push_str(&targets(&cases, subject, baseline, send_queue));
    md
}

/// Verdict of one target.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Met,
    NotMet,
    /// The runs needed were not made (or failed).
    NotMeasured,
}

impl Verdict {
    fn from(ok: bool) -> Verdict {
        if ok {
            Verdict::Met
        } else {
            Verdict::NotMet
        }
    }

    fn text(&self) -> &'static str {
        match self {
            Verdict::Met => "**met**",
            Verdict::NotMet => "**not met**",
            Verdict::NotMeasured => "not measured",
        }
    }
}

/// A target row: what, what was measured, the verdict.
struct Target {
    what: String,
    measured: String,
    verdict: Verdict,
}

fn bound_note(run: &RunReport) -> &'static str {
    if run.generator_cpu_pct >= GENERATOR_BOUND_PCT {
        " (generator-bound: a lower bound)"
    } else {
        ""
    }
}

/// `subject` delivered (or acked) at least `factor` times `other` in `case`.
fn ratio_target(
    cases: &[Case<'_>],
    case: &str,
    what: &str,
    subject: &str,
    other: &str,
    factor: f64,
    read: fn(&RunReport) -> Option<f64>,
) -> Target {
    let found = cases.iter().find(|c| c.name == case);
    let pair = found.and_then(|c| Some((c.get(subject)?, c.get(other)?)));
    let Some((s, o)) = pair else {
        return Target {
            what: what.into(),
            measured: format!("needs case `{case}` for {subject} and {other}"),
            verdict: Verdict::NotMeasured,
        };
    };
    match (read(s), read(o)) {
        (Some(a), Some(b)) if b > 0.0 => Target {
            what: what.into(),
            measured: format!(
                "{subject} {} vs {other} {}: {:.2}x{}",
                group(a),
                group(b),
                a / b,
                bound_note(s)
            ),
            verdict: Verdict::from(a >= factor * b),
        },
        _ => Target {
            what: what.into(),
            measured: format!("no value for `{case}`"),
            verdict: Verdict::NotMeasured,
        },
    }
}

/// Design bound of Firehose's memory under a flood, MiB: every subscriber's queue full
/// (`send_queue` deliveries of about 64 bytes) with a full 256 KiB outbox, the backlog of
/// 16,384 events waiting for the log or the routing task, each message (about 1 KiB of bookkeeping plus payload) held once, and
/// 64 MiB for the process itself.
fn memory_bound_mib(run: &RunReport, send_queue: u64) -> f64 {
    let subscribers = run.subscribers.max(1) as f64;
    let per_subscriber = send_queue as f64 * 64.0 + 256.0 * 1024.0;
    let messages = (send_queue + 16_384) as f64 * (1024.0 + run.payload_bytes as f64);
    64.0 + (subscribers * per_subscriber + messages) / (1024.0 * 1024.0)
}

fn targets(cases: &[Case<'_>], subject: &str, baseline: &str, send_queue: u64) -> String {
    let delivered: fn(&RunReport) -> Option<f64> = |r| Some(r.delivered_per_s);
    let acked: fn(&RunReport) -> Option<f64> = |r| r.acked_per_s;
    let case = |name: &str| cases.iter().find(|c| c.name == name);
    let subject_run = |name: &str| case(name).and_then(|c| c.get(subject));
    let has_rumqttd = cases.iter().any(|c| c.get("rumqttd").is_some());
    let mut rows = vec![ratio_target(
        cases,
        "fanout-q0-max",
        "fan-out 1→1000, QoS 0, 256 B, max rate: >= 20x Mosquitto delivered/s",
        subject,
        baseline,
        20.0,
        delivered,
    )];
    if has_rumqttd {
        rows.push(ratio_target(
            cases,
            "fanout-q0-max",
            "... and >= rumqttd",
            subject,
            "rumqttd",
            1.0,
            delivered,
        ));
    }
    rows.push(match subject_run("fanout-q0-rate100") {
        Some(run) => match run.latency {
            Some(l) => Target {
                what: "100 publishes/s to 1000 subscribers (100k deliveries/s): p99 <= 10 ms"
                    .into(),
                measured: format!(
                    "p99 {:.3} ms at {} delivered/s, {} lost (p99 when read by the generator: {})",
                    l.p99_ms,
                    group(run.delivered_per_s),
                    group(run.lost as f64),
                    run.read_latency
                        .map_or("-".into(), |read| format!("{:.3} ms", read.p99_ms))
                ),
                verdict: Verdict::from(l.p99_ms <= 10.0 && run.lost == 0),
            },
            None => not_measured("100 publishes/s to 1000 subscribers: p99 <= 10 ms"),
        },
        None => not_measured("100 publishes/s to 1000 subscribers: p99 <= 10 ms"),
    });
    rows.push(ratio_target(
        cases,
        "fanout-q1-max",
        "fan-out QoS 1: >= 10x Mosquitto delivered/s",
        subject,
        baseline,
        10.0,
        delivered,
    ));
    if has_rumqttd {
        rows.push(ratio_target(
            cases,
            "fanout-q1-max",
            "... and >= rumqttd",
            subject,
            "rumqttd",
            1.0,
            delivered,
        ));
    }
    rows.push(ratio_target(
        cases,
        "fanin-q0-max",
        "fan-in 100→1: >= 3x Mosquitto delivered/s",
        subject,
        baseline,
        3.0,
        delivered,
    ));
    rows.push(match subject_run("fanin-q1-max") {
        Some(run) => Target {
            what: "fan-in 100→1 at QoS 1: nothing lost".into(),
            measured: format!(
                "{} lost of {}",
                group(run.lost as f64),
                group(run.expected as f64)
            ),
            verdict: Verdict::from(run.lost == 0 && run.expected > 0),
        },
        None => not_measured("fan-in 100→1 at QoS 1: nothing lost"),
    });
    rows.extend(idle_targets(case("idle"), subject, baseline));
    rows.push(memory_target(cases, subject, send_queue));
    rows.push(
        match (
            subject_run("ws-fanout-q0-max"),
            subject_run("fanout-q0-max"),
        ) {
            (Some(ws), Some(tcp)) if tcp.delivered_per_s > 0.0 => Target {
                what: "WebSocket fan-out >= 80% of TCP".into(),
                measured: format!(
                    "{} vs {} delivered/s: {:.0} %{}",
                    group(ws.delivered_per_s),
                    group(tcp.delivered_per_s),
                    ws.delivered_per_s / tcp.delivered_per_s * 100.0,
                    bound_note(ws)
                ),
                verdict: Verdict::from(ws.delivered_per_s >= 0.8 * tcp.delivered_per_s),
            },
            _ => not_measured("WebSocket fan-out >= 80% of TCP"),
        },
    );
    rows.push(ratio_target(
        cases,
        "durable-q1",
        "QoS 1 with the durable log: >= 2x Mosquitto with persistence (PUBACKs/s)",
        subject,
        baseline,
        2.0,
        acked,
    ));
    let mut md = String::from("### Targets\n\n| target | measured | verdict |\n|---|---|---|\n");
    for t in rows {
        let _ = writeln!(md, "| {} | {} | {} |", t.what, t.measured, t.verdict.text());
    }
    md
}

fn not_measured(what: &str) -> Target {
    Target {
        what: what.into(),
        measured: "not run".into(),
        verdict: Verdict::NotMeasured,
    }
}

fn idle_targets(case: Option<&Case<'_>>, subject: &str, baseline: &str) -> Vec<Target> {
    let run = case.and_then(|c| c.get(subject));
    let base = case.and_then(|c| c.get(baseline));
    let Some(run) = run else {
        return vec![not_measured("idle connections: <= 2 KiB RSS each")];
    };
    let mut rows = Vec::new();
    rows.push(match run.rss_per_connection_kib {
        Some(kib) => Target {
            what: "idle connections: <= 2 KiB RSS each".into(),
            measured: format!(
                "{kib:.2} KiB over {} connections",
                group(run.connections.unwrap_or(0) as f64)
            ),
            verdict: Verdict::from(kib <= 2.0),
        },
        None => not_measured("idle connections: <= 2 KiB RSS each"),
    });
    let connections = run.connections.unwrap_or(0);
    rows.push(Target {
        what: "100k connections on one node".into(),
        measured: format!("{} held", group(connections as f64)),
        verdict: if connections >= 100_000 {
            Verdict::Met
        } else {
            Verdict::NotMeasured
        },
    });
    rows.push(
        match (run.connect_per_s, base.and_then(|b| b.connect_per_s)) {
            (Some(a), Some(b)) => Target {
                what: "connect rate >= Mosquitto's".into(),
                measured: format!("{} vs {} connects/s", group(a), group(b)),
                verdict: Verdict::from(a >= b),
            },
            _ => not_measured("connect rate >= Mosquitto's"),
        },
    );
    rows
}

fn memory_target(cases: &[Case<'_>], subject: &str, send_queue: u64) -> Target {
    let what = "memory stays bounded under any flood (peak RSS of max-rate runs <= design bound)";
    let floods: Vec<&RunReport> = cases
        .iter()
        .filter_map(|c| c.get(subject))
        .filter(|r| r.rate.is_none() && r.scenario != "idle")
        .collect();
    let mut worst: Option<(&RunReport, f64, f64)> = None;
    for run in floods {
        let Some(peak) = run.broker_rss_max_mib else {
            continue;
        };
        let bound = memory_bound_mib(run, send_queue);
        if worst.is_none_or(|(_, p, b)| peak / bound > p / b) {
            worst = Some((run, peak, bound));
        }
    }
    match worst {
        Some((run, peak, bound)) => Target {
            what: what.into(),
            measured: format!(
                "closest to its bound: `{}` peaked at {peak:.1} MiB, bound {bound:.0} MiB",
                run.case
            ),
            verdict: Verdict::from(peak <= bound),
        },
        None => not_measured(what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Percentiles in milliseconds.
    fn latency(p50_ms: f64, p99_ms: f64, max_ms: f64) -> Option<Latency> {
        Some(Latency {
            p50_ms,
            p99_ms,
            max_ms,
        })
    }

    fn run(case: &str, broker: &str, delivered: f64) -> RunReport {
        RunReport {
            scenario: "fanout".into(),
            case: case.into(),
            broker: broker.into(),
            transport: "tcp".into(),
            mqtt: "3.1.1".into(),
            subscribers: 1000,
            publishers: 1,
            payload_bytes: 256,
            delivered_per_s: delivered,
            broker_rss_max_mib: Some(100.0),
            generator_cpu_pct: 50.0,
            ..RunReport::default()
        }
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(group(0.0), "0");
        assert_eq!(group(999.0), "999");
        assert_eq!(group(1000.0), "1,000");
        assert_eq!(group(1_234_567.4), "1,234,567");
        assert_eq!(group(-12_345.0), "-12,345");
        assert_eq!(group(2.5), "2.50");
    }

    #[test]
    fn json_round_trip() {
        let mut r = run("c", "firehose", 10.0);
        r.latency = latency(1.0, 2.0, 3.0);
        let line = serde_json::to_string(&r).expect("serialize");
        let back: RunReport = serde_json::from_str(&line).expect("deserialize");
        assert_eq!(back, r);
        let sparse: RunReport =
            serde_json::from_str(r#"{"scenario":"idle","broker":"x"}"#).expect("defaults");
        assert_eq!(sparse.scenario, "idle");
        assert_eq!(sparse.latency, None);
    }

    #[test]
    fn side_by_side_with_ratio() {
        let runs = vec![
            run("fanout-q0-max", "firehose", 2_000_000.0),
            run("fanout-q0-max", "mosquitto", 100_000.0),
            run("fanout-q0-max", "rumqttd", 2_500_000.0),
        ];
        let md = markdown(&runs, "firehose", "mosquitto", 10_000);
        assert!(
            md.contains("| metric | firehose | mosquitto | rumqttd | firehose/mosquitto |"),
            "{md}"
        );
        assert!(
            md.contains("| delivered/s | 2,000,000 | 100,000 | 2,500,000 | 20.00 |"),
            "{md}"
        );
        assert!(md.contains("20.00x | **met** |"), "{md}");
        assert!(md.contains("| ... and >= rumqttd | firehose 2,000,000 vs rumqttd 2,500,000: 0.80x | **not met** |"), "{md}");
        assert!(md.contains("| fan-in 100→1: >= 3x Mosquitto delivered/s | needs case `fanin-q0-max` for firehose and mosquitto | not measured |"), "{md}");
    }

    #[test]
    fn repeated_runs_are_summed_up_by_the_median_run() {
        let runs = vec![
            run("c", "firehose", 1.0),
            run("c", "mosquitto", 1.0),
            run("c", "firehose", 5.0),
            run("c", "firehose", 3.0),
        ];
        let cases = cases(&runs);
        assert_eq!(cases.len(), 1);
        assert_eq!(cases[0].brokers.len(), 2);
        assert_eq!(cases[0].rounds, 3);
        assert_eq!(
            cases[0].get("firehose").map(|r| r.delivered_per_s),
            Some(3.0)
        );
        let md = markdown(&runs, "firehose", "mosquitto", 10_000);
        assert!(
            md.contains(
                "3 runs per broker, taking turns with the other brokers; each column is \
                 the broker's median run by delivered/s."
            ),
            "{md}"
        );
    }

    #[test]
    fn of_two_middle_runs_the_worse_one_counts() {
        let slow = run("c", "firehose", 2.0);
        let fast = run("c", "firehose", 4.0);
        assert_eq!(
            median_run(vec![&fast, &slow]).map(|r| r.delivered_per_s),
            Some(2.0)
        );
        let mut calm = run("r", "firehose", 100.0);
        calm.rate = Some(100);
        calm.latency = latency(1.0, 5.0, 9.0);
        let mut jumpy = calm.clone();
        jumpy.latency = latency(1.0, 15.0, 30.0);
        assert_eq!(
            median_run(vec![&calm, &jumpy])
                .and_then(|r| r.latency)
                .map(|l| l.p99_ms),
            Some(15.0)
        );
    }

    #[test]
    fn generator_bound_runs_are_flagged() {
        let mut fast = run("fanout-q0-max", "firehose", 3_000_000.0);
        fast.generator_cpu_pct = 99.0;
        let runs = vec![fast, run("fanout-q0-max", "mosquitto", 100_000.0)];
        let md = markdown(&runs, "firehose", "mosquitto", 10_000);
        assert!(
            md.contains("30.00x (generator-bound: a lower bound)"),
            "{md}"
        );
    }

    #[test]
    fn websocket_against_tcp_and_latency_targets() {
        let mut rate = run("fanout-q0-rate100", "firehose", 100_000.0);
        rate.rate = Some(100);
        rate.latency = latency(0.5, 12.0, 30.0);
        rate.read_latency = latency(4.0, 19.5, 40.0);
        let runs = vec![
            run("fanout-q0-max", "firehose", 1_000_000.0),
            run("ws-fanout-q0-max", "firehose", 850_000.0),
            rate,
        ];
        let md = markdown(&runs, "firehose", "mosquitto", 10_000);
        assert!(
            md.contains("850,000 vs 1,000,000 delivered/s: 85 % | **met** |"),
            "{md}"
        );
        assert!(
            md.contains(
                "p99 12.000 ms at 100,000 delivered/s, 0 lost (p99 when read by the generator: \
                 19.500 ms) | **not met** |"
            ),
            "{md}"
        );
    }

    #[test]
    fn memory_bound_grows_with_subscribers() {
        let mut one = run("fanin-q0-max", "firehose", 1.0);
        one.subscribers = 1;
        let many = run("fanout-q0-max", "firehose", 1.0);
        let small = memory_bound_mib(&one, 10_000);
        let large = memory_bound_mib(&many, 10_000);
        assert!(small > 64.0 && small < 200.0, "{small}");
        assert!(large > small + 800.0, "{large}");
        let runs = vec![one];
        let md = markdown(&runs, "firehose", "mosquitto", 10_000);
        assert!(md.contains("`fanin-q0-max` peaked at 100.0 MiB"), "{md}");
    }

    #[test]
    fn idle_targets_compare_connect_rates() {
        let mut f = run("idle", "firehose", 0.0);
        f.scenario = "idle".into();
        f.connections = Some(10_000);
        f.connect_per_s = Some(20_000.0);
        f.rss_per_connection_kib = Some(1.5);
        let mut m = f.clone();
        m.broker = "mosquitto".into();
        m.connect_per_s = Some(25_000.0);
        let md = markdown(&[f, m], "firehose", "mosquitto", 10_000);
        assert!(md.contains("| idle connections: <= 2 KiB RSS each | 1.50 KiB over 10,000 connections | **met** |"), "{md}");
        assert!(
            md.contains(
                "| connect rate >= Mosquitto's | 20,000 vs 25,000 connects/s | **not met** |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| 100k connections on one node | 10,000 held | not measured |"),
            "{md}"
        );
        assert!(
            md.contains("| broker RSS per connection (KiB) | 1.50 | 1.50 | 1.00 |"),
            "{md}"
        );
    }
}
