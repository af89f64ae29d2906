//! The database file: opening it (lock-free part: pragmas, integrity, schema), the table
//! definitions and migrations, and the compact binary encoding of the columns that hold
//! structured values (event properties, session subscriptions and in-flight state).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, TransactionBehavior,
};

use super::sessions;
use super::{Durability, Event, EventProperties, NewEvent, StoreError};

/// Schema version written to `PRAGMA user_version`; bump it and add a step to [`migrate`]
/// when the tables change.
pub(super) const SCHEMA_VERSION: i64 = 3;

/// The writer records a time mark (see [`V1_TO_V2`]) for every event whose id is a multiple
/// of this. A time query reads at most this many rows on either side of its bounds to make
/// them exact; the marks add about 20 bytes per this many events.
pub(super) const TIME_MARK_EVERY: u64 = 1024;

/// Page size of new databases, in bytes (see [`open_writer`] for why).
const PAGE_SIZE: u32 = 16 * 1024;

/// Page cache of the write connection, in KiB. SQLite's default (2 MiB) is smaller than one
/// full batch of events with payloads of a few KiB; a batch that does not fit spills pages to
/// the WAL before its commit and writes them again at the commit.
const WRITER_CACHE_KIB: u32 = 16 * 1024;

/// WAL pages at which the writer checkpoints itself (64 MiB at 16 KiB pages); normally the
/// checkpointer thread has copied them long before (`checkpoint.rs`).
const FALLBACK_CHECKPOINT_PAGES: u32 = 4096;

/// Databases up to this size get a full `PRAGMA quick_check` at open. Above it the check
/// would delay startup by seconds to minutes, so only the cheap checks run (header and schema
/// are read); damage deeper in the file shows up as a read error when it is reached.
const QUICK_CHECK_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// How long a connection waits for a lock held by another connection before failing. Only
/// checkpoints and WAL recovery take locks that make our readers wait.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The tables of schema version 1; a new database is made by these, then [`V1_TO_V2`].
///
/// - `log_state`: one row; `last_id` is the highest id ever assigned, so that an id is never
///   reused even when retention deleted the newest events; `max_time_ms`/`time_skew_ms` bound
///   how far `time_ms` ever went backwards, which keeps time queries exact when the clock
///   stepped back.
/// - `events`: the log. Columns are ordered so that the ones a scan filters on come first and
///   the payload, usually the largest, last.
/// - `retained`: one full copy of the last retained event per topic, independent of the log's
///   retention.
/// - `retention_rules`: per rule, the count and bytes of the events it governs, kept in the
///   same transactions as the events so that count and byte limits need no scan at startup.
const SCHEMA_V1: &str = "
CREATE TABLE log_state (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    last_id INTEGER NOT NULL,
    event_count INTEGER NOT NULL,
    max_time_ms INTEGER,
    time_skew_ms INTEGER NOT NULL
);
INSERT INTO log_state (id, last_id, event_count, max_time_ms, time_skew_ms) VALUES (0, 0, 0, NULL, 0);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    topic TEXT NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    publisher TEXT NOT NULL,
    properties BLOB,
    payload BLOB NOT NULL
);
CREATE INDEX events_time ON events (time_ms);
CREATE TABLE retained (
    topic TEXT PRIMARY KEY,
    id INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    publisher TEXT NOT NULL,
    properties BLOB,
    payload BLOB NOT NULL
);
CREATE TABLE sessions (
    client_id TEXT PRIMARY KEY,
    expiry_interval INTEGER NOT NULL,
    disconnected_at_ms INTEGER,
    cursor INTEGER NOT NULL,
    subscriptions BLOB NOT NULL,
    inflight BLOB NOT NULL,
    incoming_qos2 BLOB NOT NULL
);
CREATE TABLE retention_rules (
    position INTEGER PRIMARY KEY,
    filter TEXT NOT NULL,
    count INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
";

/// Schema version 2: the time index `events_time` (one entry per event, about a tenth of the
/// writer's work) gives way to `time_marks`, one row per [`TIME_MARK_EVERY`] ids.
///
/// A mark `(id, max_time_ms)` holds the highest `time_ms` of every event with an id up to
/// `id`, deleted ones included. Times are not monotonic in id order (a publisher's receive
/// time is taken before its event is queued, on any of the runtime's threads, and the clock
/// may step back), but their running maximum is, so the marks are sorted by time as by id
/// and one index lookup finds the last mark before a time. Existing events get marks from
/// the running maximum of the events left (deleted ones are gone, and need no bound).
const V1_TO_V2: &str = "
CREATE TABLE time_marks (
    id INTEGER PRIMARY KEY,
    max_time_ms INTEGER NOT NULL
);
CREATE INDEX time_marks_time ON time_marks (max_time_ms);
DROP INDEX events_time;
";

/// The marks of the events already in a version 1 log: the first event of every block of
/// [`TIME_MARK_EVERY`] ids (`?1`) that has one, with the running maximum of `time_ms`.
const MARK_EXISTING_EVENTS: &str = "
INSERT INTO time_marks (id, max_time_ms)
    SELECT id, running_max FROM (
        SELECT id,
               max(time_ms) OVER (ORDER BY id ROWS UNBOUNDED PRECEDING) AS running_max,
               id / ?1 AS block,
               lag(id / ?1) OVER (ORDER BY id) AS previous_block
        FROM events
    )
    WHERE previous_block IS NULL OR block <> previous_block";

/// The columns of an event row in `events` and `retained`, in the order [`event_from_row`]
/// reads them.
pub(super) const EVENT_COLUMNS: &str =
    "id, time_ms, topic, qos, retain, publisher, properties, payload";

/// Parameters per row of the statements of [`insert_events_sql`].
pub(super) const EVENT_INSERT_COLUMNS: usize = 7;

/// Rows per multi-row `INSERT` into `events`, largest first: a batch is cut into as many
/// statements of the largest size as fit, then smaller ones. Few sizes, so that the writer's
/// statement cache keeps them all; 64 rows of 7 parameters stay far below SQLite's limit of
/// 32766 parameters per statement.
pub(super) const INSERT_CHUNKS: [usize; 4] = [64, 16, 4, 1];

/// Inserts the first event of a batch with its id (`?1`), then the other columns as in
/// [`insert_events_sql`].
pub(super) const INSERT_FIRST_EVENT_SQL: &str = "INSERT OR ROLLBACK INTO events \
    (id, time_ms, topic, qos, retain, publisher, properties, payload) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// The `INSERT INTO events` statement for `INSERT_CHUNKS[size]` rows, with
/// [`EVENT_INSERT_COLUMNS`] parameters per row in the order time_ms, topic, qos, retain,
/// publisher, properties, payload. Built once per size.
///
/// # Panics
/// If `size` is not an index of [`INSERT_CHUNKS`] (a bug in the writer).
pub(super) fn insert_events_sql(size: usize) -> &'static str {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    SQL.get_or_init(|| INSERT_CHUNKS.iter().map(|&n| build_insert_sql(n)).collect())[size].as_str()
}

/// Builds the text of [`insert_events_sql`].
///
/// The rows get no id: SQLite gives each the highest id in the table plus one, which is the
/// next id because [`INSERT_FIRST_EVENT_SQL`] put the batch's first event in place. An id
/// given for each row would make SQLite keep a statement journal (a copy of every page the
/// statement touches, so that it can undo just that statement if an id is not an integer),
/// measured at about a tenth of the writer's CPU; so would a conflict clause other than
/// `OR ROLLBACK`. A failed append fails its whole batch anyway, so undoing the whole
/// transaction loses nothing.
fn build_insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT OR ROLLBACK INTO events (time_ms, topic, qos, retain, publisher, properties, payload) VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push(',');
        }
        sql.push('(');
        for col in 0..EVENT_INSERT_COLUMNS {
            if col > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("?{}", row * EVENT_INSERT_COLUMNS + col + 1));
        }
        sql.push(')');
    }
    sql
}

/// Maps a SQLite error to the store's error: damage to [`StoreError::Corrupt`] naming the
/// file, anything else to [`StoreError::Sqlite`] saying what we were doing.
pub(super) fn sql_error(path: &Path, context: &'static str, error: rusqlite::Error) -> StoreError {
    match error.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path: path.to_path_buf(),
            message: error.to_string(),
        },
        _ => StoreError::Sqlite {
            context,
            message: error.to_string(),
        },
    }
}

/// Opens the write connection: WAL, the durability's `synchronous` level, an integrity check
/// and the schema (created or migrated). The caller holds the directory lock.
///
/// # Errors
/// [`StoreError::Io`] when the file cannot be opened, [`StoreError::Corrupt`] when it is not a
/// (Firehose) database or is damaged.
pub(super) fn open_writer(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
    let err = |context| move |e| sql_error(path, context, e);
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(err("setting the busy timeout"))?;
    // Only takes effect while the file is still empty (a new data directory); an existing
    // database keeps its page size, which is just slower. Pages of 16 KiB instead of the
    // default 4 KiB measured a quarter less writer CPU per appended event: a quarter as many
    // WAL frames (each a header, a checksum and two write calls), checkpoint reads and writes,
    // and B-tree page splits. Larger pages gained little and cost more per small commit,
    // which rewrites its partly filled pages whole.
    conn.execute_batch(&format!("PRAGMA page_size = {PAGE_SIZE}"))
        .map_err(|e| open_error(path, e))?;
    // The first statement that reads the header: a file that is not a database fails here.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(|e| open_error(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Sqlite {
            context: "switching to WAL mode",
            message: format!("SQLite kept journal mode {mode:?}"),
        });
    }
    let synchronous = synchronous(durability);
    // The checkpointer thread copies the WAL into the database; the writer checkpoints only
    // if the WAL grew this large anyway (the thread fell behind or could not start).
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {synchronous}; PRAGMA temp_store = MEMORY; \
         PRAGMA cache_size = -{WRITER_CACHE_KIB}; \
         PRAGMA wal_autocheckpoint = {FALLBACK_CHECKPOINT_PAGES};"
    ))
    .map_err(err("setting pragmas"))?;
    // Every statement the writer runs per batch stays prepared (the default keeps 16).
    conn.set_prepared_statement_cache_capacity(32);
    check_integrity(&conn, path)?;
    migrate(&conn, path)?;
    Ok(conn)
}

/// The `synchronous` setting for a durability: every connection that writes pages (the
/// writer, the checkpointer) must sync alike.
pub(super) fn synchronous(durability: Durability) -> &'static str {
    match durability {
        Durability::Process => "NORMAL",
        Durability::PowerLoss => "FULL",
    }
}

/// Opens a read-only connection for the reader pool.
///
/// # Errors
/// As [`open_writer`].
pub(super) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| sql_error(path, "setting the busy timeout", e))?;
    Ok(conn)
}

/// Like [`sql_error`], but an open that the OS refused is an I/O error on the file.
fn open_error(path: &Path, error: rusqlite::Error) -> StoreError {
    match error.sqlite_error_code() {
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied | ErrorCode::ReadOnly) => {
            StoreError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(error.to_string()),
            }
        }
        _ => sql_error(path, "opening the database", error),
    }
}

/// Runs `PRAGMA quick_check` on databases small enough for it to be quick.
fn check_integrity(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size > QUICK_CHECK_MAX_BYTES {
        return Ok(());
    }
    let corrupt = |e| corrupt_or(path, "checking integrity", e);
    let mut stmt = conn.prepare("PRAGMA quick_check(10)").map_err(corrupt)?;
    let problems = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .map_err(corrupt)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(corrupt)?;
    if problems.len() == 1 && problems[0] == "ok" {
        return Ok(());
    }
    Err(StoreError::Corrupt {
        path: path.to_path_buf(),
        message: problems.join("; "),
    })
}

/// Any failure of an integrity check means the file is damaged.
fn corrupt_or(path: &Path, context: &'static str, error: rusqlite::Error) -> StoreError {
    match error.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            sql_error(path, context, error)
        }
        _ => StoreError::Corrupt {
            path: path.to_path_buf(),
            message: error.to_string(),
        },
    }
}

/// Creates the tables in a new database, or checks that an existing one is ours and brings it
/// to [`SCHEMA_VERSION`].
fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let err = |context| move |e| sql_error(path, context, e);
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(err("reading the schema version"))?;
    match version {
        0 => {
            let tables: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                    [],
                    |row| row.get(0),
                )
                .map_err(err("reading the schema"))?;
            if tables > 0 {
                return Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    message: format!(
                        "it has {tables} tables but no Firehose schema version; \
                         move it away or point the data directory elsewhere"
                    ),
                });
            }
            upgrade(conn, 1, Some(SCHEMA_V1)).map_err(err("creating the tables"))
        }
        1 => upgrade(conn, 1, None).map_err(err("upgrading the schema from version 1")),
        2 => upgrade(conn, 2, None).map_err(err("upgrading the schema from version 2")),
        SCHEMA_VERSION => Ok(()),
        newer if newer > SCHEMA_VERSION => Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            message: format!(
                "schema version {newer} was written by a newer Firehose \
                 (this one understands up to {SCHEMA_VERSION})"
            ),
        }),
        other => Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            message: format!("unknown schema version {other}"),
        }),
    }
}

/// In one transaction: runs `create` (the version 1 tables of a new database), then every
/// step from version `from` to [`SCHEMA_VERSION`].
fn upgrade(conn: &Connection, from: i64, create: Option<&str>) -> rusqlite::Result<()> {
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    if let Some(create) = create {
        tx.execute_batch(create)?;
    }
    if from <= 1 {
        tx.execute_batch(V1_TO_V2)?;
        tx.execute(MARK_EXISTING_EVENTS, [to_i64(TIME_MARK_EVERY)])?;
    }
    if from <= 2 {
        // Version 3: session subscriptions in rows of their own, owners and addresses.
        tx.execute_batch(sessions::V2_TO_V3)?;
        let moved = sessions::move_subscriptions(&tx)?;
        tx.execute_batch(sessions::V2_TO_V3_SWAP)?;
        if moved > 0 {
            tracing::info!(
                sessions = moved,
                "event log upgraded to schema version 3: the stored persistent sessions, made \
                 before sessions had owners, now belong to anonymous clients"
            );
        }
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()
}

/// The single row of `log_state`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LogState {
    /// Highest id ever assigned.
    pub(super) last_id: u64,
    /// Events in the log.
    pub(super) event_count: u64,
    /// Highest `time_ms` ever appended.
    pub(super) max_time_ms: Option<i64>,
    /// Largest step back in `time_ms` ever seen: for any two events, the later one's time is
    /// at least the earlier one's minus this.
    pub(super) time_skew_ms: i64,
}

/// Reads `log_state`; also makes sure `last_id` covers the events table, in case a database
/// was edited by hand.
pub(super) fn load_state(conn: &Connection, path: &Path) -> Result<LogState, StoreError> {
    let err = |e| sql_error(path, "reading the log state", e);
    let state = conn
        .query_row(
            "SELECT last_id, event_count, max_time_ms, time_skew_ms FROM log_state WHERE id = 0",
            [],
            |row| {
                Ok(LogState {
                    last_id: to_u64(row.get(0)?),
                    event_count: to_u64(row.get(1)?),
                    max_time_ms: row.get(2)?,
                    time_skew_ms: row.get::<_, i64>(3)?.max(0),
                })
            },
        )
        .optional()
        .map_err(err)?
        .ok_or_else(|| StoreError::Corrupt {
            path: path.to_path_buf(),
            message: "the log_state row is missing".to_string(),
        })?;
    let max_id: i64 = conn
        .query_row("SELECT coalesce(max(id), 0) FROM events", [], |row| {
            row.get(0)
        })
        .map_err(err)?;
    Ok(LogState {
        last_id: state.last_id.max(to_u64(max_id)),
        ..state
    })
}

/// Reads the time skew bound inside a reader's snapshot.
pub(super) fn load_skew(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT time_skew_ms FROM log_state WHERE id = 0",
        [],
        |row| row.get::<_, i64>(0),
    )
    .map(|skew| skew.max(0))
}

/// SQLite integers are signed; ids and counts are never negative.
pub(super) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Ids and counts into SQLite; anything beyond `i64::MAX` is beyond every stored id.
pub(super) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Reads an event row laid out as [`EVENT_COLUMNS`].
pub(super) fn event_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let id = to_u64(row.get(0)?);
    let properties = match row.get_ref(6)?.as_blob_or_null()? {
        None => EventProperties::default(),
        Some(blob) => decode_properties(blob).map_err(|message| {
            rusqlite::Error::FromSqlConversionFailure(
                6,
                rusqlite::types::Type::Blob,
                format!("event {id}: properties: {message}").into(),
            )
        })?,
    };
    let qos: i64 = row.get(3)?;
    Ok(Event {
        id,
        event: NewEvent {
            time_ms: row.get(1)?,
            topic: row.get_ref(2)?.as_str()?.into(),
            payload: Bytes::copy_from_slice(row.get_ref(7)?.as_blob()?),
            qos: u8::try_from(qos).unwrap_or(0),
            retain: row.get(4)?,
            publisher: row.get_ref(5)?.as_str()?.into(),
            properties,
        },
    })
}

/// A growing buffer of big-endian fields, length-prefixed strings and byte strings.
#[derive(Default)]
pub(super) struct Enc(pub(super) Vec<u8>);

impl Enc {
    /// One byte.
    pub(super) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    /// Two bytes, big-endian.
    pub(super) fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    /// Four bytes, big-endian.
    pub(super) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    /// Eight bytes, big-endian.
    pub(super) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    /// A 4-byte length, then the bytes.
    pub(super) fn bytes(&mut self, v: &[u8]) {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(v);
    }
    /// A count, for a list that follows.
    pub(super) fn count(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
}

/// Reads what [`Enc`] wrote; every read checks the remaining length.
pub(super) struct Dec<'a>(pub(super) &'a [u8]);

impl<'a> Dec<'a> {
    /// Takes `n` bytes.
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!(
                "truncated: wanted {n} bytes, {} left",
                self.0.len()
            ));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    /// Takes exactly `N` bytes as an array.
    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    /// One byte.
    pub(super) fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }
    /// Two bytes, big-endian.
    pub(super) fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    /// Four bytes, big-endian.
    pub(super) fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    /// Eight bytes, big-endian.
    pub(super) fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    /// A length-prefixed byte string.
    pub(super) fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    /// A length-prefixed UTF-8 string.
    pub(super) fn string(&mut self) -> Result<String, String> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }
    /// A list count, checked against what is left so that a damaged count cannot make us
    /// allocate much (every element takes at least one byte).
    pub(super) fn count(&mut self) -> Result<usize, String> {
        let n = self.u32()? as usize;
        if n > self.0.len() {
            return Err(format!("count {n} exceeds the {} bytes left", self.0.len()));
        }
        Ok(n)
    }
    /// The version byte every blob starts with.
    pub(super) fn version(&mut self) -> Result<(), String> {
        match self.u8()? {
            ENCODING_VERSION => Ok(()),
            other => Err(format!("unknown encoding version {other}")),
        }
    }
    /// Fails if bytes are left over.
    pub(super) fn end(&self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(format!("{} trailing bytes", self.0.len()))
        }
    }
}

/// First byte of every encoded blob, so that the format can change.
pub(super) const ENCODING_VERSION: u8 = 1;

/// Tags of the optional fields in an encoded [`EventProperties`].
mod tag {
    /// Payload Format Indicator, one byte.
    pub(super) const PAYLOAD_FORMAT: u8 = 1;
    /// Message Expiry Interval, four bytes.
    pub(super) const MESSAGE_EXPIRY: u8 = 2;
    /// Content Type, a string.
    pub(super) const CONTENT_TYPE: u8 = 3;
    /// Response Topic, a string.
    pub(super) const RESPONSE_TOPIC: u8 = 4;
    /// Correlation Data, a byte string.
    pub(super) const CORRELATION_DATA: u8 = 5;
    /// One user property, two strings.
    pub(super) const USER_PROPERTY: u8 = 6;
}

/// Encodes event properties; `None` (a NULL column) for the common case of none at all.
pub(super) fn encode_properties(p: &EventProperties) -> Option<Vec<u8>> {
    if *p == EventProperties::default() {
        return None;
    }
    let mut e = Enc::default();
    e.u8(ENCODING_VERSION);
    if let Some(v) = p.payload_format_indicator {
        e.u8(tag::PAYLOAD_FORMAT);
        e.u8(v);
    }
    if let Some(v) = p.message_expiry_interval {
        e.u8(tag::MESSAGE_EXPIRY);
        e.u32(v);
    }
    if let Some(v) = &p.content_type {
        e.u8(tag::CONTENT_TYPE);
        e.bytes(v.as_bytes());
    }
    if let Some(v) = &p.response_topic {
        e.u8(tag::RESPONSE_TOPIC);
        e.bytes(v.as_bytes());
    }
    if let Some(v) = &p.correlation_data {
        e.u8(tag::CORRELATION_DATA);
        e.bytes(v);
    }
    for (key, value) in &p.user_properties {
        e.u8(tag::USER_PROPERTY);
        e.bytes(key.as_bytes());
        e.bytes(value.as_bytes());
    }
    Some(e.0)
}

/// Decodes what [`encode_properties`] wrote.
pub(super) fn decode_properties(blob: &[u8]) -> Result<EventProperties, String> {
    let mut d = Dec(blob);
    d.version()?;
    let mut p = EventProperties::default();
    while !d.0.is_empty() {
        match d.u8()? {
            tag::PAYLOAD_FORMAT => p.payload_format_indicator = Some(d.u8()?),
            tag::MESSAGE_EXPIRY => p.message_expiry_interval = Some(d.u32()?),
            tag::CONTENT_TYPE => p.content_type = Some(d.string()?),
            tag::RESPONSE_TOPIC => p.response_topic = Some(d.string()?),
            tag::CORRELATION_DATA => p.correlation_data = Some(Bytes::copy_from_slice(d.bytes()?)),
            tag::USER_PROPERTY => {
                let key = d.string()?;
                let value = d.string()?;
                p.user_properties.push((key, value));
            }
            other => return Err(format!("unknown property tag {other}")),
        }
    }
    Ok(p)
}

/// Paths of the files in the data directory.
#[derive(Debug, Clone)]
pub(super) struct Files {
    /// `events.db`.
    pub(super) db: PathBuf,
    /// `events.db-wal`.
    pub(super) wal: PathBuf,
    /// `LOCK`.
    pub(super) lock: PathBuf,
}

impl Files {
    /// The files inside `data_dir`.
    pub(super) fn new(data_dir: &Path) -> Files {
        Files {
            db: data_dir.join("events.db"),
            wal: data_dir.join("events.db-wal"),
            lock: data_dir.join("LOCK"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::tests::{jittery_time, read_all, time_query_and_truth};
    use crate::store::{Store, StoreConfig};

    /// A log written by schema version 1 (with the time index, gaps left by retention, times
    /// that go back and forth) answers time queries the same after the upgrade to version 2,
    /// and appends go on from its last id.
    #[test]
    fn version_1_log_is_upgraded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = Files::new(dir.path());
        let n = 3 * TIME_MARK_EVERY + 100;
        {
            let conn = Connection::open(&files.db).expect("open");
            conn.execute_batch(&format!(
                "PRAGMA journal_mode = WAL; BEGIN; {SCHEMA_V1} PRAGMA user_version = 1;"
            ))
            .expect("version 1 tables");
            let (mut max, mut skew, mut count) = (i64::MIN, 0, 0);
            for id in 1..=n {
                let time = jittery_time(id);
                skew = skew.max(max.saturating_sub(time));
                max = max.max(time);
                // Retention deleted every 7th event and a whole block (marks included).
                if id % 7 == 0 || (1100..1600).contains(&id) {
                    continue;
                }
                count += 1;
                conn.execute(
                    "INSERT INTO events (id, time_ms, topic, qos, retain, publisher, payload) \
                     VALUES (?1, ?2, 't', 1, 0, 'p', x'00')",
                    (to_i64(id), time),
                )
                .expect("insert");
            }
            conn.execute(
                "UPDATE log_state SET last_id = ?1, event_count = ?2, max_time_ms = ?3, \
                 time_skew_ms = ?4",
                (to_i64(n + 5), count, max, skew),
            )
            .expect("log state");
            conn.execute_batch("COMMIT").expect("commit");
        }
        let store = Store::open(StoreConfig {
            data_dir: dir.path().to_path_buf(),
            durability: Durability::Process,
            retention: Vec::new(),
        })
        .expect("open version 1");
        {
            let conn = open_reader(&files.db).expect("reader");
            let version: i64 = conn
                .query_row("PRAGMA user_version", [], |row| row.get(0))
                .expect("version");
            assert_eq!(version, SCHEMA_VERSION);
            let index: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE name = 'events_time'",
                    [],
                    |row| row.get(0),
                )
                .expect("index");
            assert_eq!(index, 0, "the time index is dropped");
        }
        let all = read_all(&store);
        let times = [
            None,
            Some(jittery_time(1)),
            Some(jittery_time(1_200)),
            Some(jittery_time(1_700) + 1),
            Some(jittery_time(2_500)),
            Some(jittery_time(3_100)),
        ];
        for since in times {
            for until in times {
                let (got, truth) = time_query_and_truth(&store, &all, since, until, 500);
                assert_eq!(got, truth, "since {since:?} until {until:?}");
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let event = NewEvent {
            time_ms: jittery_time(n + 6),
            topic: "t".into(),
            payload: Bytes::from_static(b"new"),
            qos: 1,
            retain: false,
            publisher: "p".into(),
            properties: EventProperties::default(),
        };
        store.append(
            event,
            Box::new(move |result| {
                let _ = tx.send(result.ok());
            }),
        );
        assert_eq!(rx.recv().expect("completion"), Some(n + 6));
        store.close();
    }

    /// Sessions stored by schema version 2 (subscriptions in one column, no owner) keep their
    /// subscriptions, cursor and inflight records through the upgrade, and belong to
    /// anonymous clients after it.
    #[test]
    fn version_2_sessions_are_upgraded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = Files::new(dir.path());
        let subscriptions = vec![
            crate::store::StoredSubscription {
                filter: "a/+".into(),
                qos: 1,
                no_local: true,
                retain_as_published: false,
                subscription_id: Some(7),
            },
            crate::store::StoredSubscription {
                filter: "$share/g/#".into(),
                qos: 2,
                no_local: false,
                retain_as_published: true,
                subscription_id: None,
            },
        ];
        {
            let conn = Connection::open(&files.db).expect("open");
            conn.execute_batch(&format!(
                "PRAGMA journal_mode = WAL; BEGIN; {SCHEMA_V1} {V1_TO_V2} PRAGMA user_version = 2;"
            ))
            .expect("version 2 tables");
            conn.execute(
                "INSERT INTO sessions (client_id, expiry_interval, disconnected_at_ms, cursor, \
                 subscriptions, inflight, incoming_qos2) \
                 VALUES ('old', 3600, 1234, 42, ?1, x'0100000001000700000000000000290200', x'01000000010009')",
                [sessions::encode_v2_subscriptions(&subscriptions)],
            )
            .expect("version 2 session");
            conn.execute_batch("COMMIT").expect("commit");
        }
        let store = Store::open(StoreConfig {
            data_dir: dir.path().to_path_buf(),
            durability: Durability::Process,
            retention: Vec::new(),
        })
        .expect("open version 2");
        let loaded = store.load_sessions().expect("sessions");
        assert_eq!(loaded.len(), 1);
        let old = &loaded[0];
        assert_eq!(old.owner, None, "anonymous-owned");
        assert_eq!(old.address, None);
        assert_eq!(old.state.cursor, 42);
        assert_eq!(old.state.disconnected_at_ms, Some(1234));
        assert_eq!(old.state.inflight.len(), 1);
        assert_eq!(old.state.inflight[0].event_id, 41);
        assert_eq!(old.state.incoming_qos2, [9]);
        let mut got = old.subscriptions.clone();
        got.sort_by(|a, b| a.filter.cmp(&b.filter));
        let mut want = subscriptions;
        want.sort_by(|a, b| a.filter.cmp(&b.filter));
        assert_eq!(got, want);
        store.close();
    }

    #[test]
    fn properties_round_trip() {
        assert_eq!(encode_properties(&EventProperties::default()), None);
        let p = EventProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            content_type: Some("application/json".into()),
            response_topic: Some("r/t".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
        };
        let blob = encode_properties(&p).expect("some properties");
        assert_eq!(decode_properties(&blob), Ok(p));
        assert!(decode_properties(&blob[..blob.len() - 1]).is_err());
        assert!(decode_properties(&[9]).is_err());
    }
}
