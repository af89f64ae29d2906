//! Reading the log: a small pool of read-only connections (WAL readers never block the writer
//! nor each other), and the queries by id, topic filter and time.
//!
//! Every page is read inside one read transaction, so it is a consistent snapshot: an id at or
//! below the snapshot's newest id that is missing from the page was deleted or did not match,
//! never "not yet committed" (ids are assigned and committed in order by the single writer).

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};

use super::schema::{self, to_i64, to_u64, EVENT_COLUMNS};
use super::sessions;
use super::{Event, Page, StoreError, StoredSession};
use crate::topic;

/// Idle read connections kept open; more are opened when more threads read at once, and
/// closed again after use.
const MAX_IDLE: usize = 4;

/// The reader pool.
#[derive(Debug)]
pub(super) struct Pool {
    /// `events.db`.
    path: PathBuf,
    /// Idle connections.
    idle: Mutex<Vec<Connection>>,
}

impl Pool {
    /// A pool for the database at `path`; opens connections on demand.
    pub(super) fn new(path: PathBuf) -> Pool {
        Pool {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Closes the idle connections.
    pub(super) fn clear(&self) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Runs `f` with a connection inside a read transaction; SQLite errors are reported as
    /// happening while doing `context`.
    fn with<T>(
        &self,
        context: &'static str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => schema::open_reader(&self.path)?,
        };
        let result = (|| {
            let tx = conn.unchecked_transaction()?;
            let out = f(&tx)?;
            tx.finish()?;
            Ok(out)
        })();
        match result {
            Ok(out) => {
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                if idle.len() < MAX_IDLE {
                    idle.push(conn);
                }
                Ok(out)
            }
            // A connection that failed is dropped rather than reused.
            Err(e) => Err(schema::sql_error(&self.path, context, e)),
        }
    }

    /// See [`super::Store::read_after`] and [`super::Store::query`].
    pub(super) fn read(&self, scan: &Scan<'_>) -> Result<Page, StoreError> {
        self.with("reading events", |conn| read_page(conn, scan))
    }

    /// See [`super::Store::get`].
    pub(super) fn get(&self, id: u64) -> Result<Option<Event>, StoreError> {
        self.with("reading an event", |conn| {
            conn.prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1"))?
                .query_row([to_i64(id)], schema::event_from_row)
                .optional()
        })
    }

    /// See [`super::Store::load_retained`].
    pub(super) fn retained(&self) -> Result<Vec<Event>, StoreError> {
        self.with("loading retained messages", |conn| {
            let mut stmt =
                conn.prepare(&format!("SELECT {EVENT_COLUMNS} FROM retained ORDER BY id"))?;
            let rows = stmt.query_map([], schema::event_from_row)?;
            rows.collect()
        })
    }

    /// See [`super::Store::load_sessions`].
    pub(super) fn sessions(&self) -> Result<Vec<StoredSession>, StoreError> {
        self.with("loading sessions", sessions::load_all)
    }
}

/// One page's worth of search.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scan<'a> {
    /// Only ids above this.
    pub(super) after: u64,
    /// Topic filters, OR'ed; empty means `#`. `$share/<group>/` prefixes are ignored.
    pub(super) filters: &'a [String],
    /// Most events returned.
    pub(super) limit: usize,
    /// Most rows examined.
    pub(super) scan_limit: usize,
    /// The page ends once its events' topics and payloads reach this many bytes.
    pub(super) max_bytes: usize,
    /// Only `time_ms >= since_ms`.
    pub(super) since_ms: Option<i64>,
    /// Only `time_ms < until_ms`.
    pub(super) until_ms: Option<i64>,
}

/// The SQL pre-filter for one topic filter: cheap comparisons on the topic column that every
/// topic the filter matches passes. It only narrows; [`topic::matches`] decides.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Narrow {
    /// No wildcard: the topic equals the filter.
    Exact(String),
    /// `a/b/+...`: the topic starts with `a/b/` (`lo <= topic < hi`).
    Prefix {
        /// The literal levels and their trailing `/`.
        lo: String,
        /// `lo` with its final `/` replaced by the next byte, `0`.
        hi: String,
        /// For `a/b/#`, which also matches `a/b` itself.
        parent: Option<String>,
    },
    /// The first level is a wildcard: nothing to narrow by.
    Any,
}

/// Computes the [`Narrow`] of a filter, by the level rules of [`crate::topic`].
fn narrow(filter: &str) -> Narrow {
    let mut literal = Vec::new();
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let hash = level == "#" && levels.peek().is_none();
        if level == "+" || hash {
            if literal.is_empty() {
                return Narrow::Any;
            }
            let parent = literal.join("/");
            let lo = format!("{parent}/");
            let hi = format!("{parent}0");
            return Narrow::Prefix {
                lo,
                hi,
                parent: hash.then_some(parent),
            };
        }
        literal.push(level);
    }
    Narrow::Exact(filter.to_string())
}

/// Most filters narrowed in SQL. Each adds one or two `OR` terms, and SQLite refuses an
/// expression deeper than 1000 ("Expression tree is too large"): a query with a few hundred
/// filters answered 500. Beyond this many, rows are matched in Rust only.
const MAX_SQL_FILTERS: usize = 64;

/// The SQL condition (with its parameters appended to `params`) that pre-filters rows for
/// `filters`, or `None` when some filter cannot be narrowed or there are too many of them.
fn topic_condition(filters: &[&str], params: &mut Vec<Value>) -> Option<String> {
    if filters.len() > MAX_SQL_FILTERS {
        return None;
    }
    let narrows: Vec<Narrow> = filters.iter().map(|f| narrow(f)).collect();
    if narrows.is_empty() || narrows.contains(&Narrow::Any) {
        return None;
    }
    let mut parts = Vec::new();
    for n in narrows {
        match n {
            Narrow::Exact(topic) => {
                params.push(Value::Text(topic));
                parts.push(format!("topic = ?{}", params.len()));
            }
            Narrow::Prefix { lo, hi, parent } => {
                params.push(Value::Text(lo));
                params.push(Value::Text(hi));
                let range = format!(
                    "(topic >= ?{} AND topic < ?{})",
                    params.len() - 1,
                    params.len()
                );
                match parent {
                    Some(parent) => {
                        params.push(Value::Text(parent));
                        parts.push(format!("{range} OR topic = ?{}", params.len()));
                    }
                    None => parts.push(range),
                }
            }
            Narrow::Any => {}
        }
    }
    Some(format!("({})", parts.join(" OR ")))
}

/// Whether any filter matches (no filters: every non-`$` topic).
fn matches_any(filters: &[&str], topic: &str) -> bool {
    if filters.is_empty() {
        return !topic.starts_with('$');
    }
    filters.iter().any(|f| topic::matches(f, topic))
}

/// The statement that reads the rows of the window `(lo, window_end]` that may match: a walk
/// of the rowid range, which yields rows already in id order.
fn scan_statement(
    lo: u64,
    window_end: u64,
    scan: &Scan<'_>,
    filters: &[&str],
) -> (String, Vec<Value>) {
    let mut params = vec![
        Value::Integer(to_i64(lo)),
        Value::Integer(to_i64(window_end)),
    ];
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE id > ?1 AND id <= ?2");
    if let Some(since) = scan.since_ms {
        params.push(Value::Integer(since));
        sql.push_str(&format!(" AND time_ms >= ?{}", params.len()));
    }
    if let Some(until) = scan.until_ms {
        params.push(Value::Integer(until));
        sql.push_str(&format!(" AND time_ms < ?{}", params.len()));
    }
    if let Some(condition) = topic_condition(filters, &mut params) {
        sql.push_str(" AND ");
        sql.push_str(&condition);
    }
    sql.push_str(" ORDER BY id");
    (sql, params)
}

/// The topic filter of a shared subscription (`$share/<group>/<filter>`) is `<filter>`.
fn unshare(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(filter, |(_group, filter)| filter)
}

/// The highest id up to which every event is earlier than `time`: the last id at which the
/// running maximum of `time_ms` (over the events in id order, deleted ones included) is below
/// `time`; 0 if there is none. Deleted ids count as well: whatever it returns bounds the
/// events that are there.
///
/// The last time mark below `time` (one index lookup, since marks are ordered by time as by
/// id) gives a lower bound; the events up to the next mark, at most
/// [`schema::TIME_MARK_EVERY`], make it exact.
fn last_id_before(conn: &Connection, time: i64) -> rusqlite::Result<u64> {
    let (mut last, mut running_max) = conn
        .prepare_cached(
            "SELECT id, max_time_ms FROM time_marks WHERE max_time_ms < ?1 \
             ORDER BY max_time_ms DESC, id DESC LIMIT 1",
        )?
        .query_row([time], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })
        .optional()?
        .unwrap_or((0, i64::MIN));
    // The next mark's running maximum is at or after `time`, or there is none.
    let next: Option<i64> = conn
        .prepare_cached("SELECT id FROM time_marks WHERE id > ?1 ORDER BY id LIMIT 1")?
        .query_row([last], |row| row.get(0))
        .optional()?;
    let mut stmt = conn
        .prepare_cached("SELECT id, time_ms FROM events WHERE id > ?1 AND id < ?2 ORDER BY id")?;
    let mut rows = stmt.query([last, next.unwrap_or(i64::MAX)])?;
    while let Some(row) = rows.next()? {
        running_max = running_max.max(row.get(1)?);
        if running_max >= time {
            break;
        }
        last = row.get(0)?;
    }
    Ok(to_u64(last))
}

/// What an event counts against a page's byte budget: its topic and payload.
pub(super) fn event_bytes(event: &Event) -> usize {
    event.event.topic.len() + event.event.payload.len()
}

/// Reads one page inside the caller's read transaction.
///
/// The examined rows are an id window: from the first row after the lower bound, `scan_limit`
/// ids wide, so that the work per page is bounded however rare the matches are. Time bounds
/// become id bounds through the time marks ([`last_id_before`]); `until` is widened by the
/// largest step back the clock ever took (`time_skew_ms`), so that it stays exact when time
/// was not monotonic. Within the bounds every row's time is checked.
fn read_page(conn: &Connection, scan: &Scan<'_>) -> rusqlite::Result<Page> {
    let newest: Option<i64> = conn
        .prepare_cached("SELECT id FROM events ORDER BY id DESC LIMIT 1")?
        .query_row([], |row| row.get(0))
        .optional()?;
    let newest = newest.map_or(0, to_u64);
    // Rows in (lo, hi] are candidates; everything outside is provably excluded.
    let mut lo = scan.after;
    let mut hi = newest;
    if let Some(since) = scan.since_ms {
        lo = lo.max(last_id_before(conn, since)?);
    }
    if let Some(until) = scan.until_ms {
        // Every event after the last one before until + skew is at or after until: its
        // time is at least that of any earlier event minus the skew.
        let skew = schema::load_skew(conn)?;
        hi = hi.min(last_id_before(conn, until.saturating_add(skew))?);
    }
    let done = |scanned_to: u64| Page {
        events: Vec::new(),
        scanned_to,
        more: false,
    };
    if scan.limit == 0 {
        return Ok(Page {
            events: Vec::new(),
            scanned_to: scan.after,
            more: scan.after < hi,
        });
    }
    if lo >= hi {
        return Ok(done(scan.after.max(hi)));
    }
    let first: Option<i64> = conn
        .prepare_cached("SELECT id FROM events WHERE id > ?1 ORDER BY id LIMIT 1")?
        .query_row([to_i64(lo)], |row| row.get(0))
        .optional()?;
    let first = match first.map(to_u64) {
        Some(first) if first <= hi => first,
        _ => return Ok(done(scan.after.max(hi))),
    };
    let window_end = first
        .saturating_add(scan.scan_limit.max(1) as u64 - 1)
        .min(hi);

    let filters: Vec<&str> = scan.filters.iter().map(|f| unshare(f)).collect();
    let (sql, params) = scan_statement(lo, window_end, scan, &filters);
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let mut events = Vec::new();
    let mut bytes = 0;
    let mut scanned_to = window_end;
    while let Some(row) = rows.next()? {
        let topic = row.get_ref(2)?.as_str()?;
        if !matches_any(&filters, topic) {
            continue;
        }
        let event = schema::event_from_row(row)?;
        let id = event.id;
        bytes += event_bytes(&event);
        events.push(event);
        if events.len() >= scan.limit || bytes >= scan.max_bytes {
            scanned_to = id;
            break;
        }
    }
    let more = scanned_to < hi;
    Ok(Page {
        events,
        scanned_to: scanned_to.max(scan.after),
        more,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_walk_the_rowid_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.db");
        let conn = schema::open_writer(&path, super::super::Durability::Process).expect("open");
        let filters = ["a/+", "b"];
        let scan = Scan {
            after: 0,
            filters: &[],
            limit: 10,
            scan_limit: 10,
            max_bytes: usize::MAX,
            since_ms: Some(1),
            until_ms: Some(2),
        };
        let (sql, params) = scan_statement(0, 10, &scan, &filters);
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("explain");
        let plan: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(params), |row| row.get(3))
            .expect("plan")
            .collect::<Result<_, _>>()
            .expect("plan rows");
        let plan = plan.join("; ");
        assert!(plan.contains("INTEGER PRIMARY KEY"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }

    #[test]
    fn many_filters_are_matched_without_sql_narrowing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.db");
        let conn = schema::open_writer(&path, super::super::Durability::Process).expect("open");
        let owned: Vec<String> = (0..2000).map(|i| format!("a{i}/b/#")).collect();
        let filters: Vec<&str> = owned.iter().map(String::as_str).collect();
        let scan = Scan {
            after: 0,
            filters: &owned,
            limit: 10,
            scan_limit: 10,
            max_bytes: usize::MAX,
            since_ms: None,
            until_ms: None,
        };
        let (sql, params) = scan_statement(0, 10, &scan, &filters);
        // It used to be refused: "Expression tree is too large (maximum depth 1000)".
        let mut stmt = conn.prepare(&sql).expect("prepares");
        stmt.query(rusqlite::params_from_iter(params))
            .expect("runs")
            .next()
            .expect("reads");
        let few = &filters[..MAX_SQL_FILTERS];
        let (sql, _) = scan_statement(0, 10, &scan, few);
        assert!(sql.contains("topic >="), "{sql}");
    }

    #[test]
    fn shared_subscription_filters() {
        assert_eq!(unshare("$share/g/a/#"), "a/#");
        assert_eq!(unshare("$share/g"), "$share/g");
        assert_eq!(unshare("a/b"), "a/b");
        assert_eq!(unshare("$SYS/#"), "$SYS/#");
    }

    #[test]
    fn narrowing() {
        assert_eq!(narrow("a/b"), Narrow::Exact("a/b".into()));
        assert_eq!(narrow("#"), Narrow::Any);
        assert_eq!(narrow("+/a"), Narrow::Any);
        assert_eq!(
            narrow("a/b/#"),
            Narrow::Prefix {
                lo: "a/b/".into(),
                hi: "a/b0".into(),
                parent: Some("a/b".into())
            }
        );
        assert_eq!(
            narrow("a/+/c"),
            Narrow::Prefix {
                lo: "a/".into(),
                hi: "a0".into(),
                parent: None
            }
        );
        // `#` not last and `a+` are literal text, as topic::matches treats them.
        assert_eq!(narrow("a/#/b"), Narrow::Exact("a/#/b".into()));
        assert_eq!(narrow("a+/b"), Narrow::Exact("a+/b".into()));
        // An empty first level is a literal level.
        assert_eq!(
            narrow("/+"),
            Narrow::Prefix {
                lo: "/".into(),
                hi: "0".into(),
                parent: None
            }
        );
    }
}
