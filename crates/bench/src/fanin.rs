//! Fan-in: M publishers, each on its own topic, to one subscriber of them all (`<run>/+`):
//! delivered/s, loss, and whether a flood of publishers starves the subscriber.
//!
//! A scenario: depends on `load`, `wire` and `report`, like the others.

use crate::load::{self, PublisherSpec};
use crate::packets::QoS;
use crate::report::RunReport;
use crate::wire::{Clock, Conn, PublishTemplate, Role, Transport};
use crate::{connect_all, Common, Monitor};

/// Options of `bench fanin`.
#[derive(Debug, clap::Args)]
pub(crate) struct FaninArgs {
    #[command(flatten)]
    common: Common,
    /// Publishers, each publishing to its own topic.
    #[arg(long, default_value_t = 100)]
    publishers: usize,
    /// QoS of the publishes and of the subscription.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Payload bytes (at least 20).
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Publishes per second of all publishers together; 0 for as fast as the broker takes them.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Most unacknowledged QoS 1 publishes per publisher.
    #[arg(long, default_value_t = 100)]
    inflight: usize,
}

/// Runs `bench fanin`.
///
/// # Errors
/// A connection or subscription fails during setup.
pub(crate) async fn run(args: FaninArgs) -> anyhow::Result<RunReport> {
    let common = &args.common;
    let target = common.target();
    let clock = Clock::start();
    let monitor = Monitor::new(common.broker_pid);
    let topic = common.run_topic("fanin");
    let qos = if args.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let pid = std::process::id();
    let mut subscriber = Conn::connect(
        &target,
        Transport::Tcp,
        &format!("fhb{pid}s0"),
        Role {
            publisher: false,
            clean: true,
        },
        None,
    )
    .await?;
    subscriber.subscribe(&format!("{topic}/+"), qos).await?;
    let rate = (args.rate > 0).then(|| args.rate as f64 / args.publishers.max(1) as f64);
    let publishers = connect_all(args.publishers, common.connect_concurrency, |i| {
        let target = &target;
        let topic = &topic;
        async move {
            let role = Role {
                publisher: true,
                clean: true,
            };
            let id = format!("fhb{pid}p{i}");
            let conn = Conn::connect(target, Transport::Tcp, &id, role, None).await?;
            let template =
                PublishTemplate::new(&format!("{topic}/{i}"), args.payload, qos, target.protocol)?;
            Ok(PublisherSpec {
                conn,
                template,
                rate,
                inflight: args.inflight,
            })
        }
    })
    .await?;
    let outcome = load::run(common, clock, monitor, vec![subscriber], publishers, 1).await?;
    let mut report = common.report("fanin");
    report.transport = "tcp".into();
    report.qos = args.qos;
    report.payload_bytes = args.payload;
    report.publishers = args.publishers;
    report.subscribers = 1;
    report.rate = (args.rate > 0).then_some(args.rate);
    outcome.fill(&mut report);
    Ok(report)
}
