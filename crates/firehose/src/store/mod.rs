//! The store: the durable event log (every accepted PUBLISH, with a monotonically increasing
//! id), retained messages and persistent sessions, in one embedded SQLite database.
//!
//! Layer 2: depends on [`crate::topic`], and on [`crate::config`] for the settings it is opened
//! with ([`Durability`], [`RetentionRule`]). The broker appends through [`Store::append`] and is
//! told, in commit order, once each event is durable; it never assumes it holds the only copy of
//! an event (the clustered mode replaces this module with NATS JetStream).
//!
//! # Layout
//! - this file: the public types and the [`Store`] handle.
//! - `writer`: the single writer thread: group commit, retained upserts, session saves,
//!   incremental retention.
//! - `read`: queries by id, topic filter and time, used by session catch-up and the history API.
//! - `schema`: table definitions and migrations, and the compact binary encoding of event
//!   properties.
//! - `sessions`: the session tables, saved whole or by what changed, and loaded at startup.
//!
//! # Behaviour
//! - **Acknowledged means committed.** A completion runs only after its transaction
//!   committed, in append order, on the writer thread. With [`Durability::Process`] (WAL,
//!   `synchronous=NORMAL`) a committed event survives `kill -9`; with
//!   [`Durability::PowerLoss`] (`synchronous=FULL`) also an OS crash or power loss.
//! - **Group commit.** The writer takes everything queued (up to a few thousand operations)
//!   into one transaction. If it fails, every completion of that batch gets the error, no id
//!   is used up, and the writer reopens its connection before the next batch.
//! - **Ids** increase by one per event and are never reused: the highest id ever assigned is
//!   kept in the database, so deleting the newest events (retention) does not free their ids.
//! - **Retention** runs on the writer between batches (and every 100 ms when idle), deleting
//!   at most about a thousand events more than the batch appended, oldest first, per rule; the
//!   first rule whose filter matches a topic governs it. Per-rule counts and bytes live in the
//!   database; changing the rules makes the next open count them once (a scan of the log).
//!   Retained messages are a separate copy and are never deleted by retention.
//! - **Checkpoints** (copying the WAL into `events.db`) run every 100 ms on a thread of their
//!   own (`checkpoint.rs`), beside the writer's commits. Past 2048 pages of WAL it holds the
//!   writer between two batches for one last pass, so that the WAL starts over; the writer
//!   checkpoints itself only if the WAL reaches 4096 pages anyway.
//! - **Reads** use a pool of read-only connections: they see a consistent snapshot and never
//!   block the writer. A page examines a bounded id window, so a rare topic costs many cheap
//!   pages rather than one unbounded one; `scanned_to` always moves forward.
//! - **Startup** checks: the lock file (`LOCK`, an OS lock released when the process dies), the
//!   SQLite header, the schema version, and `PRAGMA quick_check` on databases up to 256 MiB.

mod checkpoint;
mod page_cache;
mod read;
mod schema;
mod sessions;
mod writer;

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, SendError, Sender};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::{self, JoinHandle, ThreadId};

use bytes::Bytes;

use self::schema::Files;
use self::writer::{Op, Pending, Shared, Writer};
/// The store's settings are defined by the configuration (a leaf), which the store imports;
/// they are named here too because they are part of [`StoreConfig`].
pub use crate::config::{Durability, RetentionRule};

/// Why the store failed; messages name the file and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory or database file cannot be created or written.
    #[error("cannot use data directory {path}: {source}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Another process (another `firehose serve`) holds the database.
    #[error("database {path} is locked by another process (is another firehose running with the same data directory?)")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The file is not a SQLite database or is damaged.
    #[error("database {path} is corrupt or not a Firehose database: {message}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// SQLite's message.
        message: String,
    },
    /// Any other SQLite error, with what we were doing.
    #[error("database error while {context}: {message}")]
    Sqlite {
        /// What the store was doing.
        context: &'static str,
        /// SQLite's message.
        message: String,
    },
    /// The writer thread has stopped (after a fatal error or shutdown).
    #[error("the event log writer has stopped")]
    Closed,
}

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory holding `events.db` (and its WAL) and the lock file.
    pub data_dir: PathBuf,
    /// Crash safety of acknowledged events.
    pub durability: Durability,
    /// Retention rules, in order; events matching no rule are kept forever.
    pub retention: Vec<RetentionRule>,
}

/// The MQTT 5 properties kept with an event, those consumers need.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventProperties {
    /// Payload Format Indicator (1 = UTF-8).
    pub payload_format_indicator: Option<u8>,
    /// Message Expiry Interval in seconds, from the publish time.
    pub message_expiry_interval: Option<u32>,
    /// Content type.
    pub content_type: Option<String>,
    /// Response topic.
    pub response_topic: Option<String>,
    /// Correlation data.
    pub correlation_data: Option<Bytes>,
    /// User properties, in order.
    pub user_properties: Vec<(String, String)>,
}

/// An event to append (its id is assigned at commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Receive time, UTC milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Topic name; shared with the broker's message, which routes it after the commit.
    pub topic: Arc<str>,
    /// Payload.
    pub payload: Bytes,
    /// QoS as published (0, 1 or 2).
    pub qos: u8,
    /// Retain flag; a retained event also replaces (or, with an empty payload, clears) the
    /// retained message of its topic, in the same transaction.
    pub retain: bool,
    /// Who published it (user name, or the client id for internal publishers).
    pub publisher: Arc<str>,
    /// MQTT 5 properties.
    pub properties: EventProperties,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the log: increasing, never reused.
    pub id: u64,
    /// Everything else, as appended.
    pub event: NewEvent,
}

/// Called once per appended event, in commit order, after its transaction committed (or
/// failed). Runs on the writer thread: keep it short (route, signal, return).
pub type Completion = Box<dyn FnOnce(Result<u64, StoreError>) + Send>;

/// Events to append, in order, together with what to do once they are committed, for
/// [`Store::append_boxed`].
///
/// Why a group with one completion: the broker hands over the publishes of one read of a
/// connection (often dozens) as one `Append`, so that a publish costs no box, no queue entry
/// and no completion call of its own. [`Store::append`] is a group of one.
pub trait Append: Send {
    /// The events to store, in order; read on the writer thread, before the commit. The
    /// writer reads them more than once: they must not change.
    fn events(&self) -> &[NewEvent];

    /// Runs once, on the writer thread, in append order, after the events' transaction
    /// committed or failed. On success it gets the id of the first event; the others have
    /// the ids that follow, one apart (a group without events gets the id the next event
    /// will have). Keep it short (route, signal, return).
    fn done(self: Box<Self>, result: Result<u64, StoreError>);
}

/// [`Store::append`]'s event and completion as one [`Append`].
struct WithCompletion {
    event: NewEvent,
    done: Completion,
}

impl Append for WithCompletion {
    fn events(&self) -> &[NewEvent] {
        std::slice::from_ref(&self.event)
    }

    fn done(self: Box<Self>, result: Result<u64, StoreError>) {
        (self.done)(result);
    }
}

/// One subscription of a stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    /// Filter as subscribed (may be `$share/...`).
    pub filter: String,
    /// Granted QoS (0-2).
    pub qos: u8,
    /// MQTT 5 No Local.
    pub no_local: bool,
    /// MQTT 5 Retain As Published.
    pub retain_as_published: bool,
    /// MQTT 5 subscription identifier.
    pub subscription_id: Option<u32>,
}

/// An outgoing QoS 1/2 message of a session not yet fully acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInflight {
    /// Packet identifier used when it was sent.
    pub packet_id: u16,
    /// The event.
    pub event_id: u64,
    /// QoS of the delivery (1 or 2).
    pub qos: u8,
    /// 0 = PUBLISH sent awaiting PUBACK/PUBREC, 1 = PUBREL sent awaiting PUBCOMP, 2 = completed
    /// out of log order (kept only so that catch-up does not deliver it again).
    pub stage: u8,
}

/// A persistent session as stored, whole: what a session's first save writes (in place of
/// whatever its client id had) and what loading returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// Client identifier.
    pub client_id: String,
    /// The user that created it; `None` for anonymous clients (and for every session stored
    /// before owners were recorded, schema version 2).
    pub owner: Option<String>,
    /// The address an anonymous session is counted under in the per-address quota, as text;
    /// `None` for users' sessions and sessions stored before addresses were recorded.
    pub address: Option<String>,
    /// Expiry, cursor and unacknowledged messages.
    pub state: StoredSessionState,
    /// Subscriptions.
    pub subscriptions: Vec<StoredSubscription>,
}

/// The part of a stored session that changes while it runs, rewritten (one small row) by every
/// save that has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSessionState {
    /// Session Expiry Interval in seconds (`u32::MAX` = never).
    pub expiry_interval: u32,
    /// When the client disconnected (UTC ms), `None` while connected.
    pub disconnected_at_ms: Option<i64>,
    /// Every event with an id <= cursor has been delivered (or skipped) for this session.
    pub cursor: u64,
    /// Unacknowledged outgoing messages.
    pub inflight: Vec<StoredInflight>,
    /// Incoming QoS 2 packet ids awaiting PUBREL.
    pub incoming_qos2: Vec<u16>,
}

/// What changed in a stored session since its last save: written without touching the rest, so
/// that a session with many filters costs a cursor move no more than one without.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionChanges {
    /// Client identifier of a stored session; changes to one no longer stored are dropped.
    pub client_id: String,
    /// Its new state, if the save has one.
    pub state: Option<StoredSessionState>,
    /// Subscriptions added or changed.
    pub subscribed: Vec<StoredSubscription>,
    /// Filters unsubscribed.
    pub unsubscribed: Vec<String>,
}

/// A page of history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Matching events, by increasing id.
    pub events: Vec<Event>,
    /// Highest id examined: the next page starts after it. Equal to the last event's id, or
    /// beyond it when a scan limit stopped the search among non-matching events.
    pub scanned_to: u64,
    /// Whether the log may hold more matching events after `scanned_to` (within `until`).
    pub more: bool,
}

/// A history query.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Query {
    /// MQTT topic filters, OR'ed; empty means every topic not starting with `$`.
    pub filters: Vec<String>,
    /// Only events with id > after.
    pub after: u64,
    /// Only events at or after this time (UTC ms).
    pub since_ms: Option<i64>,
    /// Only events before this time (UTC ms).
    pub until_ms: Option<i64>,
    /// Most events to return.
    pub limit: usize,
    /// Most rows to examine; `None`: [`QUERY_SCAN_LIMIT`]. The history API lowers it for
    /// queries with many filters, whose rows each cost more.
    pub scan_limit: Option<usize>,
    /// The page ends once its events' topics and payloads reach this many bytes (the event
    /// that reaches it included, so one always fits); `None`: no limit.
    pub max_bytes: Option<usize>,
}

/// Statistics for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Events appended since start.
    pub appended: u64,
    /// Transactions committed since start (appended / commits = mean group size).
    pub commits: u64,
    /// Events deleted by retention since start.
    pub retention_deleted: u64,
    /// Events currently in the log.
    pub events: u64,
    /// Size of the database files in bytes (db + WAL).
    pub bytes: u64,
    /// Appends queued but not yet committed.
    pub backlog: u64,
    /// Id of the newest committed event (0 when empty).
    pub last_id: u64,
}

/// The most rows one [`Store::query`] examines before it returns a partial page (fewer than
/// `limit` events, `more` set); the caller continues after `scanned_to`.
pub const QUERY_SCAN_LIMIT: usize = 1_000_000;

/// Rows examined per read transaction by [`Store::query`], so that no snapshot is held long.
const QUERY_CHUNK: usize = 65_536;

/// The handle to the store. Cheap to clone; the writer thread stops when the last handle is
/// closed or dropped.
#[derive(Debug, Clone)]
pub struct Store {
    /// Shared by every clone; dropping the last one closes the store.
    inner: Arc<Inner>,
}

/// What the clones of a [`Store`] share.
struct Inner {
    /// The files in the data directory.
    files: Files,
    /// The writer's queue; `None` once closed, so that later appends fail at once instead of
    /// being queued behind a writer that is gone.
    sender: RwLock<Option<Sender<Op>>>,
    /// The writer thread, taken by the first `close`.
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The writer thread's id: a completion that drops the last handle runs on it, and a
    /// thread cannot join itself.
    writer_id: ThreadId,
    /// Counters the writer keeps.
    shared: Arc<Shared>,
    /// Read-only connections.
    readers: read::Pool,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("db", &self.files.db)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// See [`Store::close`].
    fn close(&self) {
        // Idle readers go first, so that the writer's connection is the last one and SQLite
        // checkpoints and removes the WAL when it closes.
        self.readers.clear();
        // Dropping the only sender lets the writer drain the queue and stop.
        drop(
            self.sender
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            if thread::current().id() == self.writer_id {
                // Closed from a completion: the writer finishes the queue on its own and
                // releases the lock when it ends.
                return;
            }
            if handle.join().is_err() {
                tracing::error!("the event log writer thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

impl Store {
    /// Opens (creating if needed) the database in `config.data_dir`, takes the lock file,
    /// checks integrity, and starts the writer thread.
    ///
    /// When retention rules differ from the previous run's, the events they govern are
    /// counted once here (a scan of the log).
    ///
    /// # Errors
    /// [`StoreError`] for an unwritable directory, a locked or corrupt database.
    pub fn open(config: StoreConfig) -> Result<Store, StoreError> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        let files = Files::new(dir);
        let lock = lock(&files.lock)?;
        let conn = schema::open_writer(&files.db, config.durability)?;
        let shared = Arc::new(Shared::default());
        let writer = Writer::new(
            conn,
            files.db.clone(),
            config.durability,
            lock,
            config.retention,
            Arc::clone(&shared),
        )?;
        let (tx, rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("firehose-store".to_string())
            .spawn(move || writer.run(rx))
            .map_err(|source| StoreError::Io {
                path: files.db.clone(),
                source,
            })?;
        Ok(Store {
            inner: Arc::new(Inner {
                readers: read::Pool::new(files.db.clone()),
                files,
                sender: RwLock::new(Some(tx)),
                writer_id: thread.thread().id(),
                thread: Mutex::new(Some(thread)),
                shared,
            }),
        })
    }

    /// Queues an event; `done` runs on the writer thread after the commit, in append order.
    /// Never blocks.
    ///
    /// `done` gets the event's id, or the error that made its transaction fail. After
    /// [`Store::close`] it gets [`StoreError::Closed`], on the calling thread.
    pub fn append(&self, event: NewEvent, done: Completion) {
        self.append_boxed(Box::new(WithCompletion { event, done }));
    }

    /// [`Store::append`] for events that carry their own completion ([`Append`]): the broker
    /// hands over the publishes of one read this way, in one send.
    pub fn append_boxed(&self, append: Box<dyn Append>) {
        let count = append.events().len() as u64;
        self.inner
            .shared
            .backlog
            .fetch_add(count, Ordering::Relaxed);
        if let Err(op) = self.send(Op::Append(Pending::new(append))) {
            self.inner
                .shared
                .backlog
                .fetch_sub(count, Ordering::Relaxed);
            drop(op); // runs the completion with `Closed`
        }
    }

    /// Sends an operation to the writer, or gives it back if the store is closed.
    fn send(&self, op: Op) -> Result<(), Op> {
        let sender = self
            .inner
            .sender
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match &*sender {
            Some(tx) => tx.send(op).map_err(|SendError(op)| op),
            None => Err(op),
        }
    }

    /// Appends queued but not yet committed, to let producers slow down.
    pub fn backlog(&self) -> usize {
        usize::try_from(self.inner.shared.backlog.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }

    /// Events after `after` matching any of `filters`, oldest first, at most `limit`, examining
    /// at most `scan_limit` rows. Blocking: call from a blocking thread.
    ///
    /// An empty `filters` means every topic not starting with `$`. The page's `scanned_to` is
    /// where the next call continues (`after = scanned_to`), also when nothing matched; `more`
    /// is false once the page reached the newest committed event.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] on a read error.
    pub fn read_after(
        &self,
        after: u64,
        filters: &[String],
        limit: usize,
        scan_limit: usize,
    ) -> Result<Page, StoreError> {
        self.read_after_at_most(after, filters, limit, scan_limit, usize::MAX)
    }

    /// [`Store::read_after`], ending the page once its events' topics and payloads reach
    /// `max_bytes` (the event that reaches it included): what a reader that buffers a page
    /// for a slow client (an SSE stream) may hold. Blocking.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] on a read error.
    pub fn read_after_at_most(
        &self,
        after: u64,
        filters: &[String],
        limit: usize,
        scan_limit: usize,
        max_bytes: usize,
    ) -> Result<Page, StoreError> {
        self.inner.readers.read(&read::Scan {
            after,
            filters,
            limit,
            scan_limit,
            max_bytes,
            since_ms: None,
            until_ms: None,
        })
    }

    /// A history query (see [`Query`]). Blocking.
    ///
    /// Examines at most `scan_limit` rows ([`QUERY_SCAN_LIMIT`] by default): a page can hold
    /// fewer than `limit` events and still have `more` set; continue with `after = scanned_to`.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] on a read error.
    pub fn query(&self, query: &Query) -> Result<Page, StoreError> {
        let mut page = Page {
            events: Vec::new(),
            scanned_to: query.after,
            more: true,
        };
        let scan_limit = query.scan_limit.unwrap_or(QUERY_SCAN_LIMIT).max(1);
        let max_bytes = query.max_bytes.unwrap_or(usize::MAX);
        let mut scanned = 0;
        let mut bytes = 0;
        while page.more
            && page.events.len() < query.limit
            && scanned < scan_limit
            && bytes < max_bytes
        {
            let chunk = QUERY_CHUNK.min(scan_limit - scanned);
            let next = self.inner.readers.read(&read::Scan {
                after: page.scanned_to,
                filters: &query.filters,
                limit: query.limit - page.events.len(),
                scan_limit: chunk,
                max_bytes: max_bytes - bytes,
                since_ms: query.since_ms,
                until_ms: query.until_ms,
            })?;
            scanned += chunk;
            bytes += next.events.iter().map(read::event_bytes).sum::<usize>();
            page.events.extend(next.events);
            page.scanned_to = next.scanned_to;
            page.more = next.more;
        }
        if query.limit == 0 {
            page.more = query.after < self.last_id();
        }
        Ok(page)
    }

    /// One event by id. Blocking.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] on a read error.
    pub fn get(&self, id: u64) -> Result<Option<Event>, StoreError> {
        self.inner.readers.get(id)
    }

    /// Id of the newest committed event (0 when the log is empty).
    ///
    /// Never goes down, even when retention deleted the newest events. Updated before the
    /// completions of a batch run.
    pub fn last_id(&self) -> u64 {
        self.inner.shared.last_id.load(Ordering::Acquire)
    }

    /// The retained messages (one event per topic). Blocking; used at startup.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] on a read error.
    pub fn load_retained(&self) -> Result<Vec<Event>, StoreError> {
        self.inner.readers.retained()
    }

    /// Every stored session. Blocking; used at startup.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] on a read error.
    pub fn load_sessions(&self) -> Result<Vec<StoredSession>, StoreError> {
        self.inner.readers.sessions()
    }

    /// Saves a session whole, replacing whatever its client id had (row and subscriptions),
    /// through the writer, in order with appends. `done` runs after the commit (with `Ok(0)`).
    ///
    /// Saves of the same client id queued together are coalesced: a whole save or a delete
    /// makes the saves queued before it in the same batch unnecessary, and they are skipped.
    pub fn save_session(&self, session: StoredSession, done: Option<Completion>) {
        let op = Op::SaveSession(Box::new(session), done.map(Pending::new));
        if let Err(op) = self.send(op) {
            drop(op); // runs the completion, if any, with `Closed`
        }
    }

    /// Saves what changed in a stored session (see [`SessionChanges`]), through the writer, in
    /// order with appends and other saves. `done` runs after the commit (with `Ok(0)`).
    pub fn update_session(&self, changes: SessionChanges, done: Option<Completion>) {
        let op = Op::UpdateSession(Box::new(changes), done.map(Pending::new));
        if let Err(op) = self.send(op) {
            drop(op);
        }
    }

    /// Deletes a session, through the writer.
    pub fn delete_session(&self, client_id: &str) {
        if self.send(Op::DeleteSession(client_id.to_string())).is_err() {
            tracing::warn!(client_id, "session not deleted: the event log is closed");
        }
    }

    /// Current statistics.
    pub fn stats(&self) -> StoreStats {
        let shared = &self.inner.shared;
        let size = |path: &PathBuf| std::fs::metadata(path).map_or(0, |m| m.len());
        StoreStats {
            appended: shared.appended.load(Ordering::Relaxed),
            commits: shared.commits.load(Ordering::Relaxed),
            retention_deleted: shared.retention_deleted.load(Ordering::Relaxed),
            events: shared.events.load(Ordering::Relaxed),
            bytes: size(&self.inner.files.db) + size(&self.inner.files.wal),
            backlog: shared.backlog.load(Ordering::Relaxed),
            last_id: self.last_id(),
        }
    }

    /// Commits everything queued and stops the writer thread; later appends fail with
    /// [`StoreError::Closed`]. Blocking.
    ///
    /// Idempotent. Also releases the data directory's lock, so that the store can be opened
    /// again (reads through this handle keep working).
    pub fn close(&self) {
        self.inner.close();
    }
}

/// Creates and exclusively locks the lock file; the lock is held while the file stays open.
fn lock(path: &std::path::Path) -> Result<File, StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: path.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::{BufRead, BufReader, Write};
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::sync::mpsc::Receiver;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    fn config(dir: &Path) -> StoreConfig {
        StoreConfig {
            data_dir: dir.to_path_buf(),
            durability: Durability::Process,
            retention: Vec::new(),
        }
    }

    fn open(dir: &Path) -> Store {
        Store::open(config(dir)).expect("open store")
    }

    fn now_ms() -> i64 {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970");
        i64::try_from(since.as_millis()).expect("time fits i64")
    }

    fn ev(topic: &str, payload: &str) -> NewEvent {
        NewEvent {
            time_ms: now_ms(),
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            qos: 1,
            retain: false,
            publisher: "tester".into(),
            properties: EventProperties::default(),
        }
    }

    fn at(topic: &str, time_ms: i64) -> NewEvent {
        NewEvent {
            time_ms,
            ..ev(topic, "p")
        }
    }

    /// Appends and returns a receiver of the completion's result.
    fn append(store: &Store, event: NewEvent) -> Receiver<Result<u64, StoreError>> {
        let (tx, rx) = mpsc::channel();
        store.append(
            event,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx
    }

    /// Appends all, waits for every completion, returns the ids.
    fn append_all(store: &Store, events: impl IntoIterator<Item = NewEvent>) -> Vec<u64> {
        let pending: Vec<_> = events.into_iter().map(|e| append(store, e)).collect();
        pending
            .into_iter()
            .map(|rx| {
                rx.recv_timeout(Duration::from_secs(10))
                    .expect("completion ran")
                    .expect("append committed")
            })
            .collect()
    }

    fn append_one(store: &Store, event: NewEvent) -> u64 {
        append_all(store, [event])[0]
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn filters(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn topics(page: &Page) -> Vec<&str> {
        page.events.iter().map(|e| &*e.event.topic).collect()
    }

    fn session(client_id: &str, cursor: u64) -> StoredSession {
        StoredSession {
            client_id: client_id.to_string(),
            owner: None,
            address: Some("192.0.2.1".into()),
            state: StoredSessionState {
                expiry_interval: 3600,
                disconnected_at_ms: Some(1234),
                cursor,
                inflight: vec![StoredInflight {
                    packet_id: 7,
                    event_id: cursor,
                    qos: 2,
                    stage: 1,
                }],
                incoming_qos2: vec![9],
            },
            subscriptions: vec![StoredSubscription {
                filter: "a/#".to_string(),
                qos: 1,
                no_local: false,
                retain_as_published: true,
                subscription_id: Some(3),
            }],
        }
    }

    #[test]
    fn store_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Store>();
        assert_send_sync::<StoreError>();
    }

    #[test]
    fn committed_pages_reach_the_database_file_while_the_store_is_open() {
        // About 2 MiB of events: far below the writer's own checkpoint threshold, so only the
        // checkpointer thread copies them out of the WAL before the store closes.
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let db = dir.path().join("events.db");
        let before = std::fs::metadata(&db).expect("events.db").len();
        let payload = "x".repeat(1024);
        append_all(&store, (0..2000).map(|_| ev("load/t", &payload)));
        wait_until("the WAL to be checkpointed into events.db", || {
            std::fs::metadata(&db).map_or(0, |m| m.len()) >= before + 2_000_000
        });
        assert_eq!(store.stats().events, 2000);
        store.close();
    }

    #[test]
    fn appends_complete_in_order_with_increasing_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        assert_eq!(store.last_id(), 0);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        for i in 0..1000 {
            let seen = Arc::clone(&seen);
            let tx = tx.clone();
            store.append(
                ev("t", &i.to_string()),
                Box::new(move |r| {
                    seen.lock().expect("lock").push(r.expect("committed"));
                    let _ = tx.send(());
                }),
            );
        }
        for _ in 0..1000 {
            rx.recv_timeout(Duration::from_secs(10))
                .expect("completion");
        }
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen, (1..=1000).collect::<Vec<u64>>());
        assert_eq!(store.last_id(), 1000);
        let stats = store.stats();
        assert_eq!(stats.appended, 1000);
        assert_eq!(stats.events, 1000);
        assert_eq!(stats.last_id, 1000);
        assert_eq!(stats.backlog, 0);
        assert!(stats.bytes > 0);
        let e = store.get(500).expect("get").expect("event 500");
        assert_eq!(e.event.payload, Bytes::from_static(b"499"));
        assert_eq!(store.get(1001).expect("get"), None);
    }

    #[test]
    fn completion_runs_after_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let (tx, rx) = mpsc::channel();
        let reader = store.clone();
        store.append(
            ev("t", "visible"),
            Box::new(move |r| {
                let id = r.expect("committed");
                let found = reader.get(id).expect("read in completion");
                let _ = tx.send((id, reader.last_id(), found));
            }),
        );
        let (id, last_id, found) = rx.recv_timeout(Duration::from_secs(10)).expect("done");
        assert_eq!(last_id, id);
        assert_eq!(found.expect("event visible").event.payload, "visible");
    }

    #[test]
    fn group_commit_groups_a_burst() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let ids = append_all(&store, (0..5000).map(|i| ev("burst", &i.to_string())));
        assert_eq!(ids.len(), 5000);
        let stats = store.stats();
        assert_eq!(stats.appended, 5000);
        assert!(
            stats.commits < stats.appended / 2,
            "{} commits for {} events",
            stats.commits,
            stats.appended
        );
    }

    #[test]
    fn properties_and_fields_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let event = NewEvent {
            time_ms: 42,
            topic: "a/b".into(),
            payload: Bytes::from_static(b"\x00\xffbinary"),
            qos: 2,
            retain: true,
            publisher: "bridge".into(),
            properties: EventProperties {
                payload_format_indicator: Some(0),
                message_expiry_interval: Some(30),
                content_type: Some("application/octet-stream".to_string()),
                response_topic: None,
                correlation_data: Some(Bytes::from_static(b"c")),
                user_properties: vec![("k".to_string(), "v".to_string())],
            },
        };
        let id = append_one(&store, event.clone());
        let got = store.get(id).expect("get").expect("event");
        assert_eq!(got, Event { id, event });
    }

    #[test]
    fn retained_messages_are_upserted_and_cleared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let retained = |topic: &str, payload: &str| NewEvent {
            retain: true,
            ..ev(topic, payload)
        };
        append_all(
            &store,
            [
                retained("r/a", "1"),
                retained("r/a", "2"),
                retained("r/b", "3"),
                ev("r/c", "not retained"),
            ],
        );
        let clear_id = append_one(&store, retained("r/b", ""));
        let got = store.load_retained().expect("load retained");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, 2);
        assert_eq!(&*got[0].event.topic, "r/a");
        assert_eq!(got[0].event.payload, "2");
        assert!(got[0].event.retain);
        // The clearing publish is in the log like any other.
        assert!(store.get(clear_id).expect("get").is_some());
    }

    #[test]
    fn retained_messages_survive_retention() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(StoreConfig {
            retention: vec![RetentionRule {
                filter: "#".to_string(),
                max_age: None,
                max_count: Some(0),
                max_bytes: None,
            }],
            ..config(dir.path())
        })
        .expect("open");
        let id = append_one(
            &store,
            NewEvent {
                retain: true,
                ..ev("keep/me", "retained")
            },
        );
        wait_until("retention", || store.stats().events == 0);
        assert_eq!(store.get(id).expect("get"), None);
        let got = store.load_retained().expect("load retained");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, id);
        assert_eq!(got[0].event.payload, "retained");
        assert!(store.stats().retention_deleted >= 1);
    }

    /// Incremental saves queued together all apply, in order; a whole save or a delete still
    /// makes the earlier operations of its client id unnecessary.
    #[test]
    fn session_updates_apply_in_order_and_whole_saves_replace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let sub = |filter: &str| StoredSubscription {
            filter: filter.to_string(),
            qos: 1,
            no_local: false,
            retain_as_published: false,
            subscription_id: None,
        };
        let changes = |subscribed: Vec<StoredSubscription>, unsubscribed: &[&str]| SessionChanges {
            client_id: "u".into(),
            state: None,
            subscribed,
            unsubscribed: unsubscribed.iter().map(|f| f.to_string()).collect(),
        };
        store.save_session(session("u", 1), None);
        store.update_session(changes(vec![sub("b/#"), sub("c")], &[]), None);
        store.update_session(changes(Vec::new(), &["a/#", "c"]), None);
        let mut moved = session("u", 9).state;
        moved.incoming_qos2.clear();
        store.update_session(
            SessionChanges {
                state: Some(moved.clone()),
                ..changes(Vec::new(), &[])
            },
            None,
        );
        store.update_session(changes(vec![sub("late")], &[]), None);
        store.delete_session("v");
        store.update_session(
            SessionChanges {
                client_id: "v".into(),
                ..changes(vec![sub("x")], &[])
            },
            None,
        );
        let (tx, rx) = mpsc::channel();
        store.save_session(
            session("w", 2),
            Some(Box::new(move |r| {
                let _ = tx.send(r);
            })),
        );
        rx.recv_timeout(Duration::from_secs(10))
            .expect("completion")
            .expect("saved");
        let got = store.load_sessions().expect("load sessions");
        let u = StoredSession {
            state: moved,
            subscriptions: vec![sub("b/#"), sub("late")],
            ..session("u", 1)
        };
        assert_eq!(got, vec![u, session("w", 2)], "v was never stored");
    }

    #[test]
    fn sessions_save_load_coalesce_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        store.save_session(session("one", 1), None);
        store.save_session(session("two", 2), None);
        store.save_session(session("one", 5), None);
        store.delete_session("two");
        store.save_session(session("three", 3), None);
        let (tx, rx) = mpsc::channel();
        store.save_session(
            session("three", 4),
            Some(Box::new(move |r| {
                let _ = tx.send(r);
            })),
        );
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10))
                .expect("completion")
                .expect("saved"),
            0
        );
        let got = store.load_sessions().expect("load sessions");
        assert_eq!(got, vec![session("one", 5), session("three", 4)]);

        store.delete_session("one");
        drop(store);
        let store = open(dir.path());
        assert_eq!(
            store.load_sessions().expect("load sessions"),
            vec![session("three", 4)]
        );
    }

    #[test]
    fn read_after_filters_by_topic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        append_all(
            &store,
            ["a", "a/b", "a/c", "a/b/c", "$SYS/x", "b", "a/", "ab", "a0"]
                .into_iter()
                .map(|t| ev(t, "p")),
        );
        let read = |list: &[&str]| {
            store
                .read_after(0, &filters(list), 100, 1000)
                .expect("read_after")
        };
        assert_eq!(topics(&read(&["a/+"])), ["a/b", "a/c", "a/"]);
        assert_eq!(topics(&read(&["a/#"])), ["a", "a/b", "a/c", "a/b/c", "a/"]);
        assert_eq!(topics(&read(&["a/+/c"])), ["a/b/c"]);
        assert_eq!(topics(&read(&["a"])), ["a"]);
        assert_eq!(
            topics(&read(&["#"])),
            ["a", "a/b", "a/c", "a/b/c", "b", "a/", "ab", "a0"]
        );
        assert_eq!(topics(&read(&[])), topics(&read(&["#"])));
        assert_eq!(topics(&read(&["+/x"])), Vec::<&str>::new());
        assert_eq!(topics(&read(&["$SYS/#"])), ["$SYS/x"]);
        assert_eq!(topics(&read(&["+/#"])).len(), 8);
        assert_eq!(topics(&read(&["b", "a/b/#"])), ["a/b", "a/b/c", "b"]);
        let page = read(&["a/#"]);
        assert_eq!(page.scanned_to, 9);
        assert!(!page.more);
        // After the end.
        let page = store
            .read_after(50, &filters(&["#"]), 10, 10)
            .expect("read_after");
        assert_eq!(
            (page.events.len(), page.scanned_to, page.more),
            (0, 50, false)
        );
    }

    #[test]
    fn read_after_limits_and_scanned_to() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        append_all(&store, (0..10).map(|_| ev("x", "p")));
        append_one(&store, ev("y", "p"));
        let y = filters(&["y"]);
        let page = store.read_after(0, &y, 10, 5).expect("read");
        assert_eq!(
            (page.events.len(), page.scanned_to, page.more),
            (0, 5, true)
        );
        let page = store.read_after(5, &y, 10, 5).expect("read");
        assert_eq!(
            (page.events.len(), page.scanned_to, page.more),
            (0, 10, true)
        );
        let page = store.read_after(10, &y, 10, 5).expect("read");
        assert_eq!(page.events.len(), 1);
        assert_eq!((page.scanned_to, page.more), (11, false));

        let x = filters(&["x"]);
        let page = store.read_after(0, &x, 3, 100).expect("read");
        let ids: Vec<u64> = page.events.iter().map(|e| e.id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!((page.scanned_to, page.more), (3, true));
        let page = store.read_after(3, &x, 100, 100).expect("read");
        assert_eq!(page.events.len(), 7);
        assert_eq!((page.scanned_to, page.more), (11, false));
        let page = store.read_after(3, &x, 0, 100).expect("read");
        assert_eq!(
            (page.events.len(), page.scanned_to, page.more),
            (0, 3, true)
        );
    }

    #[test]
    fn pages_end_at_their_scan_and_byte_budgets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        // Topic "t" and 99 bytes of payload: 100 bytes each.
        append_all(&store, (0..10).map(|_| ev("t", &"p".repeat(99))));
        let page = store
            .query(&Query {
                limit: 100,
                max_bytes: Some(250),
                ..Query::default()
            })
            .expect("query");
        // The event that reaches the budget is the last one: one always fits.
        assert_eq!(page.events.len(), 3);
        assert_eq!((page.scanned_to, page.more), (3, true));
        let page = store.read_after_at_most(3, &[], 100, 100, 1).expect("read");
        assert_eq!(page.events.len(), 1);
        assert_eq!((page.scanned_to, page.more), (4, true));
        let page = store
            .query(&Query {
                limit: 100,
                scan_limit: Some(4),
                filters: filters(&["nothing"]),
                ..Query::default()
            })
            .expect("query");
        assert!(page.events.is_empty());
        assert_eq!((page.scanned_to, page.more), (4, true));
    }

    #[test]
    fn time_queries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        append_all(&store, (1..=10).map(|i| at("t", i * 1000)));
        let times = |q: Query| -> Vec<i64> {
            let page = store.query(&q).expect("query");
            page.events.iter().map(|e| e.event.time_ms).collect()
        };
        let q = Query {
            since_ms: Some(3000),
            until_ms: Some(6000),
            limit: 100,
            ..Query::default()
        };
        assert_eq!(times(q.clone()), [3000, 4000, 5000]);
        let page = store.query(&q).expect("query");
        assert!(!page.more);
        assert_eq!(
            times(Query {
                limit: 2,
                ..q.clone()
            }),
            [3000, 4000]
        );
        assert_eq!(
            times(Query {
                after: 4,
                ..q.clone()
            }),
            [5000]
        );
        assert_eq!(
            times(Query {
                filters: filters(&["other"]),
                ..q.clone()
            }),
            Vec::<i64>::new()
        );
        // The clock steps back: 20000, then 15000, then 25000. Time bounds stay exact.
        append_all(&store, [at("t", 20_000), at("t", 15_000), at("t", 25_000)]);
        assert_eq!(
            times(Query {
                since_ms: Some(16_000),
                limit: 100,
                ..Query::default()
            }),
            [20_000, 25_000]
        );
        assert_eq!(
            times(Query {
                since_ms: Some(9_500),
                until_ms: Some(18_000),
                limit: 100,
                ..Query::default()
            }),
            [10_000, 15_000]
        );
        assert_eq!(
            times(Query {
                until_ms: Some(1_500),
                limit: 100,
                ..Query::default()
            }),
            [1000]
        );
    }

    /// Receive times as publishers on several threads and a clock that steps back give them:
    /// jitter of up to 40 ms between neighbours, and one step back of five seconds.
    pub(super) fn jittery_time(i: u64) -> i64 {
        let jitter = (i.wrapping_mul(2_654_435_761) >> 7) % 40;
        let step_back = if i >= 2_500 { 5_000 } else { 0 };
        1_000_000 + 10 * i as i64 - jitter as i64 - step_back
    }

    /// Every event in the log.
    pub(super) fn read_all(store: &Store) -> Vec<Event> {
        store
            .read_after(0, &[], usize::MAX, usize::MAX)
            .expect("read the log")
            .events
    }

    /// The ids of every event of `store` with `since <= time < until`, in pages of `limit`
    /// (as a client walks them), and the same picked from `all`, the whole log.
    pub(super) fn time_query_and_truth(
        store: &Store,
        all: &[Event],
        since: Option<i64>,
        until: Option<i64>,
        limit: usize,
    ) -> (Vec<u64>, Vec<u64>) {
        let mut got = Vec::new();
        let mut after = 0;
        loop {
            let page = store
                .query(&Query {
                    after,
                    since_ms: since,
                    until_ms: until,
                    limit,
                    ..Query::default()
                })
                .expect("query");
            got.extend(page.events.iter().map(|e| e.id));
            assert!(page.scanned_to >= after, "scanned_to went back");
            if !page.more {
                break;
            }
            after = page.scanned_to;
        }
        let truth = all
            .iter()
            .filter(|e| since.is_none_or(|s| e.event.time_ms >= s))
            .filter(|e| until.is_none_or(|u| e.event.time_ms < u))
            .map(|e| e.id)
            .collect();
        (got, truth)
    }

    /// Time bounds within and across blocks of time marks, when times go back and forth.
    #[test]
    fn time_queries_across_time_marks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let n = 3 * schema::TIME_MARK_EVERY + 100;
        append_all(&store, (1..=n).map(|i| at("t", jittery_time(i))));
        let times = [
            None,
            Some(0),
            Some(jittery_time(1)),
            Some(jittery_time(700)),
            Some(jittery_time(1024)),
            Some(jittery_time(1025) + 3),
            Some(jittery_time(2_499)),
            Some(jittery_time(2_600)),
            Some(jittery_time(3_000)),
            Some(jittery_time(n)),
            Some(i64::MAX),
        ];
        let all = read_all(&store);
        assert_eq!(all.len() as u64, n);
        for since in times {
            for until in times {
                for limit in [10_000, 700] {
                    let (got, truth) = time_query_and_truth(&store, &all, since, until, limit);
                    assert_eq!(got, truth, "since {since:?} until {until:?} limit {limit}");
                }
            }
        }
    }

    fn rule(filter: &str) -> RetentionRule {
        RetentionRule {
            filter: filter.to_string(),
            max_age: None,
            max_count: None,
            max_bytes: None,
        }
    }

    fn open_with(dir: &Path, rules: Vec<RetentionRule>) -> Store {
        Store::open(StoreConfig {
            retention: rules,
            ..config(dir)
        })
        .expect("open")
    }

    fn ids_of(store: &Store, filter: &str) -> Vec<u64> {
        let mut ids = Vec::new();
        let mut after = 0;
        loop {
            let page = store
                .read_after(after, &filters(&[filter]), 1000, 1000)
                .expect("read");
            ids.extend(page.events.iter().map(|e| e.id));
            after = page.scanned_to;
            if !page.more {
                return ids;
            }
        }
    }

    #[test]
    fn retention_by_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_with(
            dir.path(),
            vec![RetentionRule {
                max_age: Some(Duration::from_secs(3600)),
                ..rule("logs/#")
            }],
        );
        let old = now_ms() - 2 * 3600 * 1000;
        let ids = append_all(
            &store,
            [
                at("logs/a", old),
                at("other/x", old),
                at("logs/b", old),
                at("logs/a", now_ms()),
                at("other/y", old),
                at("logs/c", now_ms()),
            ],
        );
        wait_until("age retention", || store.stats().events == 4);
        assert_eq!(ids_of(&store, "#"), [ids[1], ids[3], ids[4], ids[5]]);
        assert_eq!(store.stats().retention_deleted, 2);
    }

    #[test]
    fn retention_by_count_and_first_rule_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = vec![
            rule("c/keep/#"),
            RetentionRule {
                max_count: Some(5),
                ..rule("c/#")
            },
        ];
        let store = open_with(dir.path(), rules.clone());
        let ids = append_all(
            &store,
            (0..20).map(|i| ev(if i % 4 == 0 { "c/keep/x" } else { "c/x" }, "p")),
        );
        let kept: Vec<u64> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 4 != 0)
            .map(|(_, id)| *id)
            .collect();
        wait_until("count retention", || store.stats().events == 10);
        assert_eq!(ids_of(&store, "c/x"), kept[kept.len() - 5..]);
        assert_eq!(ids_of(&store, "c/keep/x").len(), 5);

        // The totals persist: after reopening, one more event deletes exactly one.
        drop(store);
        let store = open_with(dir.path(), rules);
        let id = append_one(&store, ev("c/y", "p"));
        wait_until("count retention", || store.stats().events == 10);
        let mut expect = kept[kept.len() - 4..].to_vec();
        expect.push(id);
        let mut got = ids_of(&store, "c/x");
        got.extend(ids_of(&store, "c/y"));
        assert_eq!(got, expect);
    }

    #[test]
    fn retention_by_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_with(
            dir.path(),
            vec![RetentionRule {
                max_bytes: Some(100),
                ..rule("b/#")
            }],
        );
        // 3 topic bytes + 17 payload bytes = 20 per event: 5 fit.
        let ids = append_all(&store, (0..10).map(|_| ev("b/x", "12345678901234567")));
        wait_until("bytes retention", || store.stats().events == 5);
        assert_eq!(ids_of(&store, "#"), ids[5..]);
    }

    #[test]
    fn ids_are_never_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_with(
            dir.path(),
            vec![RetentionRule {
                max_count: Some(0),
                ..rule("#")
            }],
        );
        let ids = append_all(&store, (0..5).map(|_| ev("t", "p")));
        assert_eq!(ids, [1, 2, 3, 4, 5]);
        wait_until("retention", || store.stats().events == 0);
        store.close();
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.last_id(), 5);
        assert_eq!(append_one(&store, ev("t", "p")), 6);
    }

    #[test]
    fn reopen_keeps_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(StoreConfig {
            durability: Durability::PowerLoss,
            ..config(dir.path())
        })
        .expect("open");
        let ids = append_all(&store, (0..100).map(|i| ev("t", &i.to_string())));
        append_one(
            &store,
            NewEvent {
                retain: true,
                ..ev("r", "kept")
            },
        );
        store.save_session(session("s", 7), None);
        let clone = store.clone();
        drop(store);
        // A clone keeps the store open.
        assert!(matches!(
            Store::open(config(dir.path())),
            Err(StoreError::Locked { .. })
        ));
        drop(clone);
        let store = open(dir.path());
        assert_eq!(store.last_id(), 101);
        assert_eq!(store.stats().events, 101);
        assert_eq!(ids_of(&store, "t"), ids);
        assert_eq!(store.load_retained().expect("retained").len(), 1);
        assert_eq!(
            store.load_sessions().expect("sessions"),
            vec![session("s", 7)]
        );
        assert_eq!(append_one(&store, ev("t", "p")), 102);
    }

    /// An [`Append`] that reports its topic and result.
    struct Reporting {
        event: NewEvent,
        report: mpsc::Sender<(String, Result<u64, StoreError>)>,
    }

    impl Append for Reporting {
        fn events(&self) -> &[NewEvent] {
            std::slice::from_ref(&self.event)
        }

        fn done(self: Box<Self>, result: Result<u64, StoreError>) {
            let _ = self.report.send((self.event.topic.to_string(), result));
        }
    }

    #[test]
    fn boxed_appends_complete_once_each_in_order_and_with_closed_after_close() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let (tx, rx) = mpsc::channel();
        for topic in ["a", "b", "c"] {
            store.append_boxed(Box::new(Reporting {
                event: ev(topic, "p"),
                report: tx.clone(),
            }));
        }
        store.close();
        store.append_boxed(Box::new(Reporting {
            event: ev("late", "p"),
            report: tx,
        }));
        let reports: Vec<_> = rx.iter().collect();
        assert_eq!(reports.len(), 4, "{reports:?}");
        for (i, topic) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(reports[i].0, *topic);
            assert_eq!(reports[i].1.as_ref().ok(), Some(&(i as u64 + 1)));
        }
        assert_eq!(reports[3].0, "late");
        assert!(matches!(reports[3].1, Err(StoreError::Closed)));
        assert_eq!(
            store.get(3).expect("get").map(|e| e.event.topic),
            Some("c".into())
        );
    }

    /// An [`Append`] of several events that reports its result.
    struct Group {
        events: Vec<NewEvent>,
        report: mpsc::Sender<Result<u64, StoreError>>,
    }

    impl Append for Group {
        fn events(&self) -> &[NewEvent] {
            &self.events
        }

        fn done(self: Box<Self>, result: Result<u64, StoreError>) {
            let _ = self.report.send(result);
        }
    }

    #[test]
    fn a_group_is_stored_in_order_and_completes_once_with_the_id_of_its_first_event() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let (tx, rx) = mpsc::channel();
        let group = |topics: &[&str]| -> Box<dyn Append> {
            Box::new(Group {
                events: topics.iter().map(|t| ev(t, "p")).collect(),
                report: tx.clone(),
            })
        };
        assert_eq!(append_one(&store, ev("before", "p")), 1);
        for topics in [&["a", "b", "c"][..], &[], &["d", "e"], &["f"]] {
            store.append_boxed(group(topics));
        }
        let results: Vec<_> = (0..4)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("completed"))
            .collect();
        let ids: Vec<_> = results
            .iter()
            .map(|r| *r.as_ref().expect("stored"))
            .collect();
        // A group without events gets the id the next event gets.
        assert_eq!(ids, [2, 5, 5, 7]);
        let stored: Vec<_> = read_all(&store)
            .into_iter()
            .map(|e| (e.id, e.event.topic.to_string()))
            .collect();
        let expected: Vec<_> = ["before", "a", "b", "c", "d", "e", "f"]
            .iter()
            .zip(1..)
            .map(|(t, id)| (id, t.to_string()))
            .collect();
        assert_eq!(stored, expected);
        assert_eq!(store.backlog(), 0, "the backlog counts events, not groups");
        assert_eq!(store.stats().appended, 7);
        store.close();
        store.append_boxed(group(&["late", "later"]));
        assert!(matches!(
            rx.recv_timeout(Duration::from_secs(1)),
            Ok(Err(StoreError::Closed))
        ));
    }

    #[test]
    fn close_is_idempotent_and_later_appends_fail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let pending = append(&store, ev("t", "p"));
        store.close();
        assert_eq!(
            pending
                .recv_timeout(Duration::from_secs(1))
                .expect("completed")
                .expect("committed by close"),
            1
        );
        store.close();
        let late = append(&store, ev("t", "p"));
        assert!(matches!(
            late.recv_timeout(Duration::from_secs(1))
                .expect("completed"),
            Err(StoreError::Closed)
        ));
        assert_eq!(store.backlog(), 0);
        // Closing released the lock; reads through the old handle still work.
        let reopened = open(dir.path());
        assert_eq!(reopened.last_id(), 1);
        assert!(store.get(1).expect("get").is_some());
    }

    #[test]
    fn a_failed_transaction_fails_its_appends_and_the_writer_recovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        assert_eq!(append_one(&store, ev("ok", "1")), 1);
        // Another connection makes the next inserts fail.
        let conn = rusqlite::Connection::open(dir.path().join("events.db")).expect("side conn");
        conn.busy_timeout(Duration::from_secs(5))
            .expect("busy timeout");
        conn.execute_batch(
            "CREATE TRIGGER fail BEFORE INSERT ON events WHEN NEW.topic = 'fail'
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .expect("create trigger");
        let failed = append(&store, ev("fail", "x"))
            .recv_timeout(Duration::from_secs(10))
            .expect("completion ran");
        match failed {
            Err(StoreError::Sqlite { message, .. }) => {
                assert!(message.contains("injected failure"), "{message}")
            }
            other => panic!("expected a SQLite error, got {other:?}"),
        }
        conn.execute_batch("DROP TRIGGER fail")
            .expect("drop trigger");
        // The failed append used no id; the writer goes on.
        assert_eq!(append_one(&store, ev("ok", "2")), 2);
        assert_eq!(ids_of(&store, "#"), [1, 2]);
        assert_eq!(store.stats().events, 2);
        assert_eq!(store.stats().backlog, 0);
    }

    #[test]
    fn second_open_is_locked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _store = open(dir.path());
        let err = Store::open(config(dir.path())).expect_err("second open fails");
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    }

    #[test]
    fn garbage_database_is_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("events.db"), vec![b'x'; 8192]).expect("write garbage");
        let err = Store::open(config(dir.path())).expect_err("garbage rejected");
        match err {
            StoreError::Corrupt { path, .. } => assert_eq!(path, dir.path().join("events.db")),
            other => panic!("expected Corrupt, got {other}"),
        }
    }

    #[test]
    fn foreign_database_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn =
            rusqlite::Connection::open(dir.path().join("events.db")).expect("create foreign db");
        conn.execute_batch("CREATE TABLE t (x)")
            .expect("create table");
        drop(conn);
        let err = Store::open(config(dir.path())).expect_err("foreign rejected");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn unusable_directory_is_io() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"").expect("write file");
        let err = Store::open(config(&file.join("data"))).expect_err("cannot create");
        assert!(matches!(err, StoreError::Io { .. }), "{err}");
    }

    /// Set in the child process of [`kill_9_loses_no_acknowledged_event`] to the data dir.
    const CRASH_CHILD_ENV: &str = "FIREHOSE_STORE_CRASH_CHILD";

    /// The child of [`kill_9_loses_no_acknowledged_event`]; does nothing in a normal run.
    #[test]
    fn crash_child() {
        let Some(dir) = std::env::var_os(CRASH_CHILD_ENV) else {
            return;
        };
        let store = open(Path::new(&dir));
        for i in 0u64.. {
            while store.backlog() > 200 {
                thread::sleep(Duration::from_millis(1));
            }
            store.append(
                ev("crash/t", &i.to_string()),
                Box::new(|r| {
                    if let Ok(id) = r {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "committed {id}");
                        let _ = out.flush();
                    }
                }),
            );
        }
    }

    #[test]
    fn kill_9_loses_no_acknowledged_event() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "store::tests::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let mut acknowledged = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read child output");
            // The first line follows libtest's "test ... " without a newline.
            if let Some((_, id)) = line.split_once("committed ") {
                acknowledged.push(id.trim().parse::<u64>().expect("id"));
                if acknowledged.len() == 3000 {
                    child.kill().expect("kill -9 the child");
                }
            }
        }
        child.wait().expect("reap child");
        assert!(
            acknowledged.len() >= 3000,
            "child printed {}",
            acknowledged.len()
        );
        let store = open(dir.path());
        let stored = ids_of(&store, "crash/t");
        let missing: Vec<&u64> = acknowledged
            .iter()
            .filter(|id| stored.binary_search(id).is_err())
            .collect();
        assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
        let expected: Vec<u64> = (1..=acknowledged.len() as u64).collect();
        assert!(
            acknowledged == expected,
            "ids not acknowledged as 1, 2, 3..."
        );
    }
}
