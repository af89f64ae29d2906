//! The checkpointer: a thread with its own connection that copies the WAL into the database
//! file, so that the writer never does it between two commits.
//!
//! Why: with SQLite's automatic checkpoints the writer copied every page a second time (and,
//! at `synchronous=NORMAL` or `FULL`, waited for the disk to sync both files) right after the
//! commit that crossed the threshold, while publishers waited for their acknowledgements.
//! A passive checkpoint on another connection runs beside the writer's commits and never
//! blocks them. The writer keeps a much larger automatic threshold as a fallback, so that the
//! WAL stays bounded if this thread falls behind or cannot open the database.
//!
//! The WAL only starts over from its beginning when a write begins after a checkpoint copied
//! every frame, and under a steady stream of commits a passive checkpoint never quite does:
//! the writer adds frames while it copies. Left alone the WAL grew to the writer's fallback,
//! which then checkpointed after every commit, waiting for the disk while the broker's readers
//! stopped for want of room in the store's queue (6 % of the core idle in a fan-in flood). So
//! once the WAL passes 2048 frames ([`CADENCE`]), the checkpointer repeats its pass while the
//! writer adds much during one, then holds the writer between two batches ([`Hold`]) for one
//! last pass, which copies everything; the writer's next commit starts the WAL over.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::page_cache::PageCache;
use super::{schema, Durability};

/// When the checkpointer works; tests shrink both.
#[derive(Debug, Clone, Copy)]
struct Cadence {
    /// How often the WAL is copied into the database.
    interval: Duration,
    /// WAL frames past which the checkpointer makes the WAL start over.
    restart_frames: i64,
}

/// Every 100 ms: short enough that the WAL stays a few megabytes at full ingest speed; a
/// checkpoint with nothing new to copy costs a few reads. A restart past 2048 frames (32 MiB
/// at 16 KiB pages): half the writer's fallback threshold, so that the fallback stays one.
const CADENCE: Cadence = Cadence {
    interval: Duration::from_millis(100),
    restart_frames: 2048,
};

/// New frames few enough to copy with the writer held: a pass over them (and its two syncs)
/// takes a few milliseconds, which the store's queue absorbs.
const SHORT_REST_FRAMES: i64 = 128;

/// At most this many passes beside the writer before holding it, each copying what the writer
/// added while the previous one ran. On a core shared with the writer, or on a slow disk,
/// they do not always get shorter, hence the bound.
const CATCH_UP_PASSES: usize = 3;

/// How long the checkpointer waits for the writer to reach the end of its batch. An idle
/// writer never stops there, and needs not: it adds no frames.
const HOLD_PATIENCE: Duration = Duration::from_millis(20);

/// The longest the writer stays held, should the last pass be slow (a disk that takes long
/// to sync): the WAL then starts over at a later try, or at the writer's fallback.
const MAX_HOLD: Duration = Duration::from_millis(50);

/// Lets the checkpointer stop the writer between two batches for one pass.
#[derive(Debug, Default)]
pub(super) struct Hold {
    /// The checkpointer wants the writer to stop.
    requested: AtomicBool,
    /// The writer has stopped and waits.
    parked: Mutex<bool>,
    /// Signals changes of either.
    changed: Condvar,
}

impl Hold {
    /// Called by the writer between batches: waits while the checkpointer holds it (at most
    /// [`MAX_HOLD`]). One atomic load when no hold is asked for.
    pub(super) fn pause_here(&self) {
        if !self.requested.load(Ordering::Acquire) {
            return;
        }
        let deadline = Instant::now() + MAX_HOLD;
        let mut parked = self.lock();
        *parked = true;
        self.changed.notify_all();
        while self.requested.load(Ordering::Acquire) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            parked = self
                .changed
                .wait_timeout(parked, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *parked = false;
    }

    /// Asks the writer to stop, and waits until it has or [`HOLD_PATIENCE`] passed.
    fn request(&self) {
        self.requested.store(true, Ordering::Release);
        let parked = self.lock();
        let _ = self
            .changed
            .wait_timeout_while(parked, HOLD_PATIENCE, |parked| !*parked)
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// Lets the writer go on.
    fn release(&self) {
        self.requested.store(false, Ordering::Release);
        let _parked = self.lock();
        self.changed.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, bool> {
        // The flag stays meaningful whatever a panicking holder left.
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running checkpointer; stopping it (or dropping it) waits for the thread to end.
pub(super) struct Checkpointer {
    /// Dropped to tell the thread to stop.
    stop: Option<Sender<()>>,
    /// The thread.
    thread: Option<JoinHandle<()>>,
    /// Shared with the thread; the writer pauses on it between batches.
    hold: Arc<Hold>,
}

impl Checkpointer {
    /// Starts checkpointing `db`. A failure to start is logged, not returned: the writer's
    /// automatic fallback still checkpoints, only later.
    pub(super) fn start(db: &Path, durability: Durability) -> Checkpointer {
        Checkpointer::start_with(db, durability, CADENCE)
    }

    fn start_with(db: &Path, durability: Durability, cadence: Cadence) -> Checkpointer {
        let (stop, stopped) = mpsc::channel::<()>();
        let path = db.to_path_buf();
        let hold = Arc::new(Hold::default());
        let thread_hold = Arc::clone(&hold);
        let thread = thread::Builder::new()
            .name("firehose-checkpoint".to_string())
            .spawn(move || run(&path, durability, cadence, &stopped, &thread_hold));
        match thread {
            Ok(thread) => Checkpointer {
                stop: Some(stop),
                thread: Some(thread),
                hold,
            },
            Err(error) => {
                tracing::warn!(%error, "cannot start the event log checkpointer; the writer checkpoints instead");
                Checkpointer {
                    stop: None,
                    thread: None,
                    hold,
                }
            }
        }
    }

    /// The writer's side of the hold: call between batches, outside any transaction.
    pub(super) fn pause_here(&self) {
        self.hold.pause_here();
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the event log checkpointer panicked");
            }
        }
    }
}

/// What one passive checkpoint found, in WAL frames. A pass copies every frame that was in
/// the WAL when it began (no reader here keeps old snapshots for long); what the writer added
/// meanwhile shows as the next pass's growth.
#[derive(Debug, Clone, Copy)]
struct Pass {
    /// Frames in the WAL when the pass began; -1 when it could not run.
    frames: i64,
    /// Frames in the database, copied by this pass or earlier ones.
    copied: i64,
}

/// The thread's body: a passive checkpoint every interval until told to stop, and a restart
/// of the WAL whenever it grew past the cadence's frames.
fn run(
    path: &Path,
    durability: Durability,
    cadence: Cadence,
    stopped: &mpsc::Receiver<()>,
    hold: &Hold,
) {
    let conn = match open(path, durability) {
        Ok(conn) => conn,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error,
                "cannot open the event log for checkpoints; the writer checkpoints instead");
            return;
        }
    };
    let mut checkpointer = Passes {
        conn: &conn,
        path,
        failing: false,
    };
    let mut cache = PageCache::open(path);
    // Frames at the previous interval's pass: a WAL that did not change since is copied whole
    // already, and starts over at the next write without the writer being held.
    let mut previous_frames = -1;
    loop {
        match stopped.recv_timeout(cadence.interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(pass) = checkpointer.pass() else {
            continue;
        };
        if pass.frames >= cadence.restart_frames && pass.frames != previous_frames {
            checkpointer.copy_all(pass, hold);
        }
        previous_frames = pass.frames;
        if let Some(cache) = &mut cache {
            cache.trim();
        }
    }
}

/// Runs passive checkpoints on the checkpointer's connection, logging the first of a run of
/// failures only.
struct Passes<'a> {
    conn: &'a Connection,
    path: &'a Path,
    /// The last pass failed (and said so).
    failing: bool,
}

impl Passes<'_> {
    /// One passive checkpoint: copies what no reader still needs and never waits for a lock.
    fn pass(&mut self) -> Option<Pass> {
        let result = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                Ok(Pass {
                    frames: row.get(1)?,
                    copied: row.get(2)?,
                })
            });
        match result {
            Ok(pass) => {
                self.failing = false;
                Some(pass)
            }
            Err(error) => {
                if !self.failing {
                    tracing::warn!(path = %self.path.display(), %error,
                        "event log checkpoint failed; retrying");
                }
                self.failing = true;
                None
            }
        }
    }

    /// Copies the whole WAL, so that the writer's next commit starts it over: passes beside
    /// the writer until one had little new to copy, then one with the writer held.
    fn copy_all(&mut self, mut previous: Pass, hold: &Hold) {
        for _ in 0..CATCH_UP_PASSES {
            let Some(pass) = self.pass() else {
                return;
            };
            if pass.frames < previous.frames {
                // The WAL started over meanwhile, or this pass could not run (-1: the writer's
                // fallback checkpoint has the lock). Either way, the next interval decides.
                return;
            }
            let added = pass.frames - previous.copied;
            previous = pass;
            if added <= SHORT_REST_FRAMES {
                break;
            }
        }
        hold.request();
        let last = self.pass();
        hold.release();
        if let Some(last) = last {
            tracing::trace!(frames = last.frames, "WAL copied with the writer held");
        }
    }
}

/// A read-write connection that only checkpoints. It syncs as the writer does, since the
/// checkpoint is what moves committed pages into the database file.
fn open(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(1))?;
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {}; PRAGMA wal_autocheckpoint = 0;",
        schema::synchronous(durability)
    ))?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames in a WAL file of `len` bytes with 4 KiB pages (a 32-byte header, then a 24-byte
    /// header per frame).
    fn frames(len: u64) -> u64 {
        len.saturating_sub(32) / (24 + 4096)
    }

    #[test]
    fn a_writer_held_by_nobody_goes_on_by_itself() {
        let hold = Hold::default();
        hold.requested.store(true, Ordering::Release);
        // Nobody releases: the writer still returns, after MAX_HOLD.
        hold.pause_here();
        assert!(!*hold.lock());
    }

    #[test]
    fn the_wal_starts_over_under_a_writer_that_never_rests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.db");
        let wal = dir.path().join("events.db-wal");
        let mut conn = Connection::open(&path).expect("open");
        // No automatic checkpoints at all: only the checkpointer can keep the WAL short.
        conn.execute_batch(
            "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; \
             PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (x BLOB);",
        )
        .expect("set up");
        let cadence = Cadence {
            interval: Duration::from_millis(5),
            restart_frames: 64,
        };
        let checkpointer = Checkpointer::start_with(&path, Durability::Process, cadence);
        let row = vec![7u8; 3000];
        let mut largest = 0;
        // 4000 commits (about three frames each), as close together as the writer can make them.
        for _ in 0..4000 {
            checkpointer.pause_here();
            let tx = conn.transaction().expect("begin");
            tx.execute("INSERT INTO t (x) VALUES (?1)", [&row])
                .expect("insert");
            tx.commit().expect("commit");
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| frames(m.len())));
        }
        drop(checkpointer);
        // Without the hold the WAL only grows (to about 12,000 frames), since a passive
        // checkpoint never finds it fully copied when the writer begins.
        assert!(largest < 1000, "the WAL grew to {largest} frames");
        let count: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(count, 4000);
    }
}
