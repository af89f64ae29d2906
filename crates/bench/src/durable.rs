//! The durable path: QoS 1 publishes whose PUBACK (for Firehose) means "in the event log", with
//! one persistent subscriber (clean session off) so that a broker with persistence has a
//! session to keep the messages for. Reports PUBACKs per second and their latency.
//!
//! A scenario: depends on `load`, `wire` and `report`, like the others.

use crate::load::{self, PublisherSpec};
use crate::packets::QoS;
use crate::report::RunReport;
use crate::wire::{Clock, Conn, PublishTemplate, Role, Target, Transport};
use crate::{connect_all, Common, Monitor};

/// Options of `bench durable`.
#[derive(Debug, clap::Args)]
pub(crate) struct DurableArgs {
    #[command(flatten)]
    common: Common,
    /// Publishers.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Most unacknowledged publishes per publisher.
    #[arg(long, default_value_t = 100)]
    inflight: usize,
    /// Payload bytes (at least 20).
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Publishes per second of all publishers together; 0 for as fast as the broker acknowledges.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Persistent subscribers (0 to measure publishing alone).
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
}

/// Runs `bench durable`.
///
/// # Errors
/// A connection or subscription fails during setup.
pub(crate) async fn run(args: DurableArgs) -> anyhow::Result<RunReport> {
    let common = &args.common;
    let target = common.target();
    let clock = Clock::start();
    let monitor = Monitor::new(common.broker_pid);
    let topic = common.run_topic("durable");
    let pid = std::process::id();
    let persistent = Role {
        publisher: false,
        clean: false,
    };
    let sub_id = |i: usize| format!("fhb{pid}d{i}");
    let subscribers = connect_all(args.subscribers, common.connect_concurrency, |i| {
        let target = &target;
        let filter = format!("{topic}/+");
        let id = sub_id(i);
        async move {
            let mut conn = Conn::connect(target, Transport::Tcp, &id, persistent, None).await?;
            conn.subscribe(&filter, QoS::AtLeastOnce).await?;
            Ok(conn)
        }
    })
    .await?;
    let rate = (args.rate > 0).then(|| args.rate as f64 / args.publishers.max(1) as f64);
    let publishers = connect_all(args.publishers, common.connect_concurrency, |i| {
        let target = &target;
        let topic = &topic;
        async move {
            let role = Role {
                publisher: true,
                clean: true,
            };
            let conn =
                Conn::connect(target, Transport::Tcp, &format!("fhb{pid}p{i}"), role, None).await?;
            let template = PublishTemplate::new(
                &format!("{topic}/{i}"),
                args.payload,
                QoS::AtLeastOnce,
                target.protocol,
            )?;
            Ok(PublisherSpec {
                conn,
                template,
                rate,
                inflight: args.inflight,
            })
        }
    })
    .await?;
    let copies = args.subscribers as u64;
    let outcome = load::run(common, clock, monitor, subscribers, publishers, copies).await?;
    let mut report = common.report("durable");
    report.transport = "tcp".into();
    report.qos = 1;
    report.payload_bytes = args.payload;
    report.publishers = args.publishers;
    report.subscribers = args.subscribers;
    report.rate = (args.rate > 0).then_some(args.rate);
    outcome.fill(&mut report);
    for i in 0..args.subscribers {
        if let Err(error) = forget_session(&target, &sub_id(i)).await {
            report.notes.push(format!(
                "could not remove the persistent session {}: {error:#}",
                sub_id(i)
            ));
        }
    }
    Ok(report)
}

/// Connects once more as `client_id` with a clean session and leaves, so the broker drops the
/// persistent session (and stops keeping messages for it).
async fn forget_session(target: &Target, client_id: &str) -> anyhow::Result<()> {
    let role = Role {
        publisher: false,
        clean: true,
    };
    let mut conn = Conn::connect(target, Transport::Tcp, client_id, role, None).await?;
    conn.disconnect().await
}
