//! Fan-out: one publisher, N subscribers of one topic. Firehose's common case: few publishers,
//! very many subscribers. Over TCP, or with the subscribers over WebSocket.
//!
//! A scenario: depends on `load`, `wire` and `report`, like the others.

use crate::load::{self, PublisherSpec};
use crate::packets::QoS;
use crate::report::RunReport;
use crate::wire::{Clock, Conn, PublishTemplate, Role, Transport};
use crate::{connect_all, Common, Monitor};

/// Options of `bench fanout`.
#[derive(Debug, clap::Args)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Subscribers of the topic.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// QoS of the publishes and of the subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Payload bytes (at least 20: send time, sequence number, publisher).
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Publishes per second; 0 for as fast as the broker takes them.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// How the subscribers connect (the publisher always uses TCP).
    #[arg(long, value_enum, default_value = "tcp")]
    transport: Transport,
    /// Most unacknowledged QoS 1 publishes of the publisher.
    #[arg(long, default_value_t = 100)]
    inflight: usize,
}

/// Runs `bench fanout`.
///
/// # Errors
/// A connection or subscription fails during setup.
pub(crate) async fn run(args: FanoutArgs) -> anyhow::Result<RunReport> {
    let common = &args.common;
    let mut target = common.target();
    target.stamp_arrivals = args.rate > 0;
    let clock = Clock::start();
    let monitor = Monitor::new(common.broker_pid);
    let topic = common.run_topic("fanout");
    let qos = if args.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let template = PublishTemplate::new(&topic, args.payload, qos, target.protocol)?;
    let pid = std::process::id();
    let subscribers = connect_all(args.subscribers, common.connect_concurrency, |i| {
        let target = &target;
        let topic = &topic;
        async move {
            let role = Role {
                publisher: false,
                clean: true,
            };
            let id = format!("fhb{pid}s{i}");
            let mut conn = Conn::connect(target, args.transport, &id, role, None).await?;
            conn.subscribe(topic, qos).await?;
            Ok(conn)
        }
    })
    .await?;
    let publisher = Conn::connect(
        &target,
        Transport::Tcp,
        &format!("fhb{pid}p0"),
        Role {
            publisher: true,
            clean: true,
        },
        None,
    )
    .await?;
    let publishers = vec![PublisherSpec {
        conn: publisher,
        template,
        rate: (args.rate > 0).then_some(args.rate as f64),
        inflight: args.inflight,
    }];
    let copies = args.subscribers as u64;
    let outcome = load::run(common, clock, monitor, subscribers, publishers, copies).await?;
    let mut report = common.report("fanout");
    report.transport = format!("{:?}", args.transport).to_lowercase();
    report.qos = args.qos;
    report.payload_bytes = args.payload;
    report.publishers = 1;
    report.subscribers = args.subscribers;
    report.rate = (args.rate > 0).then_some(args.rate);
    outcome.fill(&mut report);
    Ok(report)
}
