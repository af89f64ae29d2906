//! The broker's hot path without sockets: matching a topic against 100,000 subscriptions in the
//! topic trie, the fan-out of one message into the queues of 1,000 subscribed sessions
//! (`Router::publish`: trie walk, per-session lock, queue push, wake-up), and finding the
//! retained messages of a new subscription among 100,000 (`TopicNames`, beside testing every
//! topic as the broker did before).
//!
//! `cargo bench -p firehose --bench routing` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use firehose::broker::message::Message;
use firehose::broker::router::Router;
use firehose::broker::session::{Link, Owner, Session};
use firehose::broker::stats::Stats;
use firehose::broker::subscription::SubOptions;
use firehose::topic::{matches, TopicNames, TopicTrie};
use firehose_codec::{Protocol, PublishProperties, QoS};

const EVENTS: [&str; 10] = [
    "comment-added",
    "patchset-created",
    "change-merged",
    "change-abandoned",
    "ref-updated",
    "reviewer-added",
    "topic-changed",
    "wip-state-changed",
    "hashtags-changed",
    "vote-deleted",
];

/// 60,000 exact Gerrit topics (6,000 projects, ten event types), with room for 100,000: the
/// first part of both the filters and the retained topics below.
fn gerrit_topics() -> Vec<String> {
    let mut all = Vec::with_capacity(100_000);
    for i in 0..60_000 {
        all.push(format!(
            "gerrit/project-{}/{}",
            i % 6_000,
            EVENTS[i / 6_000]
        ));
    }
    all
}

/// 100,000 filters shaped like Firehose's topic scheme: exact Gerrit topics, per-host log
/// filters ending in `+`, per-repository webhook filters ending in `#`, and a few broad ones.
fn filters() -> Vec<String> {
    let mut all = gerrit_topics();
    for i in 0..20_000 {
        all.push(format!("logs/host-{i}/+"));
    }
    for i in 0..19_997 {
        all.push(format!("webhooks/github/owner-{i}/#"));
    }
    all.extend(["gerrit/#", "#", "+/+/comment-added"].map(String::from));
    all
}

fn bench_trie(c: &mut Criterion) {
    let mut trie = TopicTrie::new();
    for (i, filter) in filters().iter().enumerate() {
        trie.insert(filter, i);
    }
    assert_eq!(trie.len(), 100_000);
    let mut group = c.benchmark_group("trie_match_100k_filters");
    group.throughput(Throughput::Elements(1));
    for (name, topic, matches) in [
        ("gerrit_4_matches", "gerrit/project-42/comment-added", 4),
        ("logs_2_matches", "logs/host-777/sshd", 2),
        ("webhook_2_matches", "webhooks/github/owner-5/repo/push", 2),
        ("unknown_1_match", "nothing/here/at-all", 1),
    ] {
        let mut found = 0;
        trie.for_each_match(topic, |_, _| found += 1);
        assert_eq!(found, matches, "{topic}");
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut found = 0usize;
                trie.for_each_match(black_box(topic), |_, v| found += *v);
                black_box(found)
            })
        });
    }
    group.finish();
}

/// Sessions that are connected as far as the router can tell (a link is attached), each
/// subscribed to `topic`.
fn subscribed_sessions(router: &Router, count: usize, topic: &str) -> Vec<Arc<Session>> {
    (0..count)
        .map(|i| {
            let session = Arc::new(Session::new(
                format!("sub-{i}").into(),
                Protocol::V311,
                0,
                10_000,
                0,
            ));
            session.lock().link = Some(Link::new());
            session.set_online(true);
            let options = SubOptions {
                qos: QoS::AtMostOnce,
                no_local: false,
                retain_as_published: false,
                id: None,
            };
            router.subscribe(&session, &Owner::Anonymous, topic, options);
            session
        })
        .collect()
}

fn bench_fanout(c: &mut Criterion) {
    let topic = "gerrit/openstack/nova/comment-added";
    let router = Router::default();
    let stats = Stats::new();
    let sessions = subscribed_sessions(&router, 1_000, topic);
    let payload = Bytes::from(vec![b'x'; 256]);
    let mut group = c.benchmark_group("fanout_enqueue");
    group.throughput(Throughput::Elements(sessions.len() as u64));
    group.bench_function("1_message_to_1000_sessions", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                // Id 0: a message outside the log (as `$SYS` ones are), so that queues are not
                // switched to catch-up from a log this benchmark does not have.
                let message = Arc::new(Message::new(
                    0,
                    topic.into(),
                    payload.clone(),
                    QoS::AtMostOnce,
                    false,
                    PublishProperties::default(),
                    "publisher".into(),
                ));
                let start = Instant::now();
                let reached = router.publish(black_box(&message), &stats).reached;
                spent += start.elapsed();
                assert_eq!(reached, sessions.len());
                for session in &sessions {
                    session.lock().queue.clear();
                }
            }
            spent
        })
    });
    group.finish();
}

/// 100,000 retained topics shaped like the filters above: the last event of each Gerrit
/// project, a status per host, a last push per webhook repository.
fn retained_topics() -> Vec<String> {
    let mut all = gerrit_topics();
    for i in 0..20_000 {
        all.push(format!("status/host-{i}"));
    }
    for i in 0..20_000 {
        all.push(format!(
            "webhooks/github/owner-{}/repo-{}/push",
            i % 2_000,
            i
        ));
    }
    all
}

fn bench_retained(c: &mut Criterion) {
    let topics = retained_topics();
    let mut names = TopicNames::default();
    for (i, topic) in topics.iter().enumerate() {
        names.insert(topic, i);
    }
    assert_eq!(names.len(), 100_000);
    let mut group = c.benchmark_group("retained_lookup_100k_topics");
    group.throughput(Throughput::Elements(1));
    for (name, filter, found) in [
        ("exact_1", "gerrit/project-42/comment-added", 1),
        ("project_10", "gerrit/project-42/+", 10),
        ("owner_10", "webhooks/github/owner-7/#", 10),
        ("none", "nothing/here/#", 0),
    ] {
        assert_eq!(names.matching(filter).len(), found, "{filter}");
        group.bench_function(format!("tree_{name}"), |b| {
            b.iter(|| black_box(names.matching(black_box(filter)).len()))
        });
        group.bench_function(format!("scan_{name}"), |b| {
            b.iter(|| {
                let filter = black_box(filter);
                black_box(topics.iter().filter(|t| matches(filter, t)).count())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_trie, bench_fanout, bench_retained);
criterion_main!(benches);
