//! Idle connections: C subscribers, each subscribed to its own topic, then silent. Measures how
//! fast the broker takes connections and what each costs it in resident memory.
//!
//! A scenario: depends on `wire` and `report` (no load, so not on `load`).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use crate::packets::QoS;
use crate::report::RunReport;
use crate::wire::{Clock, Conn, Role, Transport};
use crate::{connect_all, sleep_until_ns, Common, Monitor, Window};

/// Options of `bench idle`. `--warmup` is the time left for the broker to settle after the last
/// connection, `--duration` the idle time over which its CPU is measured.
#[derive(Debug, clap::Args)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to open and hold. The broker and the generator each need this many file
    /// descriptors (`ulimit -n`).
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connections per local address: above this many, connections to a loopback broker come
    /// from 127.0.0.2, 127.0.0.3, ... too, since one address has about 28,000 ephemeral ports.
    #[arg(long, default_value_t = 20_000)]
    per_source: usize,
}

/// The local address of connection `i`, when connections must be spread.
fn source_for(host: &str, connections: usize, per_source: usize, i: usize) -> Option<IpAddr> {
    let ip: Ipv4Addr = host.parse().ok()?;
    if !ip.is_loopback() || connections <= per_source || per_source == 0 {
        return None;
    }
    let n = u32::try_from(i / per_source).ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(127, 0, 0, 1)) + n,
    )))
}

/// Runs `bench idle`.
///
/// # Errors
/// A connection fails (often: too few file descriptors; raise `ulimit -n`).
pub(crate) async fn run(args: IdleArgs) -> anyhow::Result<RunReport> {
    let common = &args.common;
    let target = common.target();
    let clock = Clock::start();
    let mut monitor = Monitor::new(common.broker_pid);
    let topic = common.run_topic("idle");
    let pid = std::process::id();
    let rss_before = monitor.broker_rss_kib();
    let started = Instant::now();
    let conns = connect_all(args.connections, common.connect_concurrency, |i| {
        let target = &target;
        let topic = &topic;
        let source = source_for(&target.host, args.connections, args.per_source, i);
        async move {
            let role = Role {
                publisher: false,
                clean: true,
            };
            let id = format!("fhb{pid}i{i}");
            let mut conn = Conn::connect(target, Transport::Tcp, &id, role, source).await?;
            conn.subscribe(&format!("{topic}/{i}"), QoS::AtMostOnce)
                .await?;
            // Keep the socket only: the generator's own memory stays small.
            Ok(conn.stream)
        }
    })
    .await
    .map_err(|e| {
        e.context("opening idle connections (is `ulimit -n` high enough on both sides?)")
    })?;
    let connect_seconds = started.elapsed().as_secs_f64();

    let window = Window::after(clock.now_ns(), common.warmup, common.duration);
    sleep_until_ns(&clock, window.start_ns).await;
    monitor.start_window()?;
    sleep_until_ns(&clock, window.end_ns).await;
    let usage = monitor.end_window()?;
    let rss_after = monitor.broker_rss_kib();
    drop(conns);

    let mut report = common.report("idle");
    report.transport = "tcp".into();
    report.subscribers = args.connections;
    report.connections = Some(args.connections as u64);
    report.connect_per_s = Some((args.connections as f64 / connect_seconds.max(1e-9)).round());
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        let per = after.saturating_sub(before) as f64 / args.connections.max(1) as f64;
        report.rss_per_connection_kib = Some((per * 100.0).round() / 100.0);
    }
    report.apply_usage(&usage);
    // Idle: the generator's CPU says nothing about saturation here.
    report
        .notes
        .retain(|n| !n.starts_with("the generator used"));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_only_when_needed() {
        assert_eq!(source_for("127.0.0.1", 10_000, 20_000, 9_999), None);
        assert_eq!(source_for("localhost", 100_000, 20_000, 50_000), None);
        assert_eq!(source_for("10.0.0.1", 100_000, 20_000, 50_000), None);
        assert_eq!(
            source_for("127.0.0.1", 100_000, 20_000, 0),
            Some("127.0.0.1".parse().expect("ip"))
        );
        assert_eq!(
            source_for("127.0.0.1", 100_000, 20_000, 45_000),
            Some("127.0.0.3".parse().expect("ip"))
        );
    }
}
