//! The event log on its own: durable ingest with group commit (events appended as fast as they
//! come, each completion waited for), and replay (`read_after` through the whole log, as a
//! catching-up session or the history API does).
//!
//! `cargo bench -p firehose --bench store` (add `-- --quick` for a short run). Durability is the
//! default (`synchronous=NORMAL`: an acknowledged event survives `kill -9`).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use firehose::store::{Durability, EventProperties, NewEvent, Store, StoreConfig};

/// Events per measured batch.
const BATCH: u64 = 20_000;
/// Events in the log that replay reads.
const LOG: u64 = 200_000;

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(StoreConfig {
        data_dir: dir.path().to_owned(),
        durability: Durability::Process,
        retention: Vec::new(),
    })
    .expect("store opens")
}

fn event(i: u64) -> NewEvent {
    NewEvent {
        time_ms: 1_795_000_000_000 + i as i64,
        topic: format!("gerrit/openstack/project-{}/comment-added", i % 100).into(),
        payload: Bytes::from(vec![b'x'; 256]),
        qos: 1,
        retain: false,
        publisher: "gerrit-bridge".into(),
        properties: EventProperties::default(),
    }
}

/// Numbers the events of a run, so that their times increase from one measured batch to the
/// next as a broker's do (times that start over at every batch would measure inserts into
/// the middle of the log's time order).
static NEXT_EVENT: AtomicU64 = AtomicU64::new(0);

/// Appends `n` events and waits until the last one is durable (completions run in order).
fn append(store: &Store, n: u64) {
    let (tx, rx) = mpsc::channel();
    let first = NEXT_EVENT.fetch_add(n, Ordering::Relaxed);
    for i in 0..n {
        let tx = tx.clone();
        store.append(
            event(first + i),
            Box::new(move |result| {
                if i + 1 == n {
                    let _ = tx.send(result.is_ok());
                }
            }),
        );
    }
    assert!(rx.recv().expect("last completion"), "append failed");
}

fn ingest(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open(&dir);
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(10);
    group.bench_function("durable_ingest_20k_events_256B", |b| {
        b.iter(|| append(&store, BATCH))
    });
    group.finish();
    store.close();
}

fn replay(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open(&dir);
    append(&store, LOG);
    let filters = vec!["gerrit/#".to_owned()];
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(LOG));
    group.sample_size(10);
    group.bench_function("replay_200k_events_read_after", |b| {
        b.iter(|| {
            let mut after = 0;
            let mut seen = 0;
            loop {
                let page = store
                    .read_after(after, &filters, 1000, 20_000)
                    .expect("read");
                seen += page.events.len();
                after = page.scanned_to;
                if !page.more {
                    break;
                }
            }
            black_box(seen)
        })
    });
    group.finish();
    store.close();
}

criterion_group!(benches, ingest, replay);
criterion_main!(benches);
