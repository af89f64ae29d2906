//! The checkpointer: a thread with its own connection that copies the WAL into the database
//! file, so that the writer never does it between two commits.
//!
//! Why: with SQLite's automatic checkpoints the writer copied every page a second time (and,
//! at `synchronous=NORMAL` or `FULL`, waited for the disk to sync both files) right after the
//! commit that crossed the threshold, while publishers waited for their acknowledgements.
//! A passive checkpoint on another connection runs beside the writer's commits and never
//! blocks them. The writer keeps a much larger automatic threshold as a fallback, so that the
//! WAL stays bounded if this thread falls behind or cannot open the database.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{schema, Durability};

/// How often the WAL is copied into the database. Short enough that the WAL stays a few
/// megabytes at full ingest speed; a checkpoint with nothing new to copy costs a few reads.
const INTERVAL: Duration = Duration::from_millis(100);

/// A running checkpointer; stopping it (or dropping it) waits for the thread to end.
pub(super) struct Checkpointer {
    /// Dropped to tell the thread to stop.
    stop: Option<Sender<()>>,
    /// The thread.
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing `db`. A failure to start is logged, not returned: the writer's
    /// automatic fallback still checkpoints, only later.
    pub(super) fn start(db: &Path, durability: Durability) -> Checkpointer {
        let (stop, stopped) = mpsc::channel::<()>();
        let path = db.to_path_buf();
        let thread = thread::Builder::new()
            .name("firehose-checkpoint".to_string())
            .spawn(move || run(&path, durability, &stopped));
        match thread {
            Ok(thread) => Checkpointer {
                stop: Some(stop),
                thread: Some(thread),
            },
            Err(error) => {
                tracing::warn!(%error, "cannot start the event log checkpointer; the writer checkpoints instead");
                Checkpointer {
                    stop: None,
                    thread: None,
                }
            }
        }
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

/// The thread's body: a passive checkpoint every [`INTERVAL`] until told to stop.
fn run(path: &Path, durability: Durability, stopped: &mpsc::Receiver<()>) {
    let conn = match open(path, durability) {
        Ok(conn) => conn,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error,
                "cannot open the event log for checkpoints; the writer checkpoints instead");
            return;
        }
    };
    let mut failing = false;
    loop {
        match stopped.recv_timeout(INTERVAL) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        // Passive: copies what no reader still needs and never waits for a lock.
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        match result {
            Ok(()) => failing = false,
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(path = %path.display(), %error, "event log checkpoint failed; retrying");
            }
            Err(_) => {}
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
