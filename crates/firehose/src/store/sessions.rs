//! The session tables: one `sessions` row per persistent session (owner, creating address,
//! expiry, cursor, unacknowledged deliveries, incoming QoS 2 ids) and one
//! `session_subscriptions` row per subscription, so that a save writes what changed: a cursor
//! that moved rewrites one small row, a SUBSCRIBE adds its filters, and a session's other
//! filters are never written again (schema version 3; before, every save rewrote them all in
//! one column, which delayed the writer, and everyone's acknowledgements, by the size of the
//! biggest session).
//!
//! Depends on the schema's encodings ([`super::schema`]); the writer thread writes through it,
//! the reader pool loads through it, and the version 2 to 3 upgrade moves the old column here.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::schema::{to_i64, to_u64, Dec, Enc, ENCODING_VERSION};
use super::{
    SessionChanges, StoredInflight, StoredSession, StoredSessionState, StoredSubscription,
};

/// Schema version 3, the tables: `sessions` gains an integer key (its subscriptions refer to it
/// rather than repeating a client id of up to 64 KiB per filter), the owner (`NULL`: anonymous)
/// and the address that created it; the subscriptions move to rows of their own.
/// [`move_subscriptions`] fills them from the old column, then the old table goes.
pub(super) const V2_TO_V3: &str = "
CREATE TABLE sessions_v3 (
    id INTEGER PRIMARY KEY,
    client_id TEXT NOT NULL UNIQUE,
    owner TEXT,
    address TEXT,
    expiry_interval INTEGER NOT NULL,
    disconnected_at_ms INTEGER,
    cursor INTEGER NOT NULL,
    inflight BLOB NOT NULL,
    incoming_qos2 BLOB NOT NULL
);
CREATE TABLE session_subscriptions (
    session INTEGER NOT NULL,
    filter TEXT NOT NULL,
    qos INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    subscription_id INTEGER,
    PRIMARY KEY (session, filter)
) WITHOUT ROWID;
INSERT INTO sessions_v3 (client_id, expiry_interval, disconnected_at_ms, cursor, inflight, incoming_qos2)
    SELECT client_id, expiry_interval, disconnected_at_ms, cursor, inflight, incoming_qos2 FROM sessions;
";

/// After [`move_subscriptions`]: the version 3 table takes the old one's name.
pub(super) const V2_TO_V3_SWAP: &str = "
DROP TABLE sessions;
ALTER TABLE sessions_v3 RENAME TO sessions;
";

/// Bits of a subscription's flags (the `flags` column, and the version 2 encoding).
const NO_LOCAL: u8 = 1;
/// See [`NO_LOCAL`].
const RETAIN_AS_PUBLISHED: u8 = 2;
/// See [`NO_LOCAL`]; only in the version 2 encoding, where a subscription identifier follows.
const HAS_SUBSCRIPTION_ID: u8 = 4;

/// The flags of a subscription's row.
fn flags(sub: &StoredSubscription) -> u8 {
    let mut flags = 0;
    if sub.no_local {
        flags |= NO_LOCAL;
    }
    if sub.retain_as_published {
        flags |= RETAIN_AS_PUBLISHED;
    }
    flags
}

/// The version 2 to 3 data step, between [`V2_TO_V3`] and [`V2_TO_V3_SWAP`]: every session's
/// encoded subscriptions become rows. Sessions of version 2 have no owner: they are
/// anonymous-owned from now on (see docs/durability.md). Returns the sessions moved.
///
/// # Errors
/// A column that does not decode, naming the session, or an SQL error.
pub(super) fn move_subscriptions(tx: &Transaction<'_>) -> rusqlite::Result<usize> {
    let mut read = tx.prepare(
        "SELECT v3.id, s.client_id, s.subscriptions FROM sessions s \
         JOIN sessions_v3 v3 ON v3.client_id = s.client_id",
    )?;
    let mut rows = read.query([])?;
    let mut moved = 0;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let client_id: String = row.get(1)?;
        let subscriptions = decode_v2_subscriptions(row.get_ref(2)?.as_blob()?).map_err(|m| {
            rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Blob,
                format!("session {client_id:?}: subscriptions: {m}").into(),
            )
        })?;
        insert_subscriptions(tx, id, &subscriptions)?;
        moved += 1;
    }
    Ok(moved)
}

/// Inserts (or replaces) subscription rows of the session keyed `id`.
fn insert_subscriptions(
    tx: &Transaction<'_>,
    id: i64,
    subscriptions: &[StoredSubscription],
) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT OR REPLACE INTO session_subscriptions (session, filter, qos, flags, subscription_id) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for sub in subscriptions {
        insert.execute(params![
            id,
            sub.filter,
            sub.qos,
            flags(sub),
            sub.subscription_id
        ])?;
    }
    Ok(())
}

/// Writes a whole session in place of whatever its client id had: the first save of a session
/// (after a clean start, or a new client id). It has no subscriptions yet, except in tests.
pub(super) fn write_whole(tx: &Transaction<'_>, s: &StoredSession) -> rusqlite::Result<()> {
    delete(tx, &s.client_id)?;
    tx.prepare_cached(
        "INSERT INTO sessions (client_id, owner, address, expiry_interval, cursor, inflight, \
         incoming_qos2) VALUES (?1, ?2, ?3, 0, 0, x'', x'')",
    )?
    .execute(params![s.client_id, s.owner, s.address])?;
    let id = tx.last_insert_rowid();
    write_state(tx, &s.client_id, &s.state)?;
    insert_subscriptions(tx, id, &s.subscriptions)
}

/// Writes the state of the stored session `client_id`; its key, `None` when none is stored.
fn write_state(
    tx: &Transaction<'_>,
    client_id: &str,
    state: &StoredSessionState,
) -> rusqlite::Result<Option<i64>> {
    tx.prepare_cached(
        "UPDATE sessions SET expiry_interval = ?2, disconnected_at_ms = ?3, cursor = ?4, \
         inflight = ?5, incoming_qos2 = ?6 WHERE client_id = ?1 RETURNING id",
    )?
    .query_row(
        params![
            client_id,
            state.expiry_interval,
            state.disconnected_at_ms,
            to_i64(state.cursor),
            encode_inflight(&state.inflight),
            encode_qos2(&state.incoming_qos2),
        ],
        |row| row.get(0),
    )
    .optional()
}

/// Writes what changed in a stored session: its state if given, the subscriptions added or
/// changed, those removed. Returns `false` when no session of that client id is stored (it was
/// deleted since: nothing is written).
pub(super) fn write_changes(tx: &Transaction<'_>, c: &SessionChanges) -> rusqlite::Result<bool> {
    let id: Option<i64> = match &c.state {
        Some(state) => write_state(tx, &c.client_id, state)?,
        None => tx
            .prepare_cached("SELECT id FROM sessions WHERE client_id = ?1")?
            .query_row([&c.client_id], |row| row.get(0))
            .optional()?,
    };
    let Some(id) = id else {
        return Ok(false);
    };
    insert_subscriptions(tx, id, &c.subscribed)?;
    let mut remove =
        tx.prepare_cached("DELETE FROM session_subscriptions WHERE session = ?1 AND filter = ?2")?;
    for filter in &c.unsubscribed {
        remove.execute(params![id, filter])?;
    }
    Ok(true)
}

/// Deletes a session and its subscriptions.
pub(super) fn delete(tx: &Transaction<'_>, client_id: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "DELETE FROM session_subscriptions WHERE session IN \
         (SELECT id FROM sessions WHERE client_id = ?1)",
    )?
    .execute([client_id])?;
    tx.prepare_cached("DELETE FROM sessions WHERE client_id = ?1")?
        .execute([client_id])?;
    Ok(())
}

/// Every stored session with its subscriptions, by client id.
pub(super) fn load_all(conn: &Connection) -> rusqlite::Result<Vec<StoredSession>> {
    let mut by_session: HashMap<i64, Vec<StoredSubscription>> = HashMap::new();
    let mut subs = conn.prepare(
        "SELECT session, filter, qos, flags, subscription_id FROM session_subscriptions \
         ORDER BY session, filter",
    )?;
    let mut rows = subs.query([])?;
    while let Some(row) = rows.next()? {
        let flags: u8 = row.get(3)?;
        by_session
            .entry(row.get(0)?)
            .or_default()
            .push(StoredSubscription {
                filter: row.get(1)?,
                qos: row.get(2)?,
                no_local: flags & NO_LOCAL != 0,
                retain_as_published: flags & RETAIN_AS_PUBLISHED != 0,
                subscription_id: row.get(4)?,
            });
    }
    let mut stmt = conn.prepare(
        "SELECT id, client_id, owner, address, expiry_interval, disconnected_at_ms, cursor, \
         inflight, incoming_qos2 FROM sessions ORDER BY client_id",
    )?;
    let mut rows = stmt.query([])?;
    let mut sessions = Vec::new();
    while let Some(row) = rows.next()? {
        let client_id: String = row.get(1)?;
        let bad = |column: usize, message: String| {
            rusqlite::Error::FromSqlConversionFailure(
                column,
                rusqlite::types::Type::Blob,
                format!("session {client_id:?}: {message}").into(),
            )
        };
        let inflight = decode_inflight(row.get_ref(7)?.as_blob()?).map_err(|m| bad(7, m))?;
        let incoming_qos2 = decode_qos2(row.get_ref(8)?.as_blob()?).map_err(|m| bad(8, m))?;
        let expiry: i64 = row.get(4)?;
        let id: i64 = row.get(0)?;
        sessions.push(StoredSession {
            owner: row.get(2)?,
            address: row.get(3)?,
            state: StoredSessionState {
                expiry_interval: u32::try_from(expiry).unwrap_or(u32::MAX),
                disconnected_at_ms: row.get(5)?,
                cursor: to_u64(row.get(6)?),
                inflight,
                incoming_qos2,
            },
            subscriptions: by_session.remove(&id).unwrap_or_default(),
            client_id,
        });
    }
    Ok(sessions)
}

/// Encodes `sessions.inflight`.
fn encode_inflight(inflight: &[StoredInflight]) -> Vec<u8> {
    let mut e = Enc::default();
    e.u8(ENCODING_VERSION);
    e.count(inflight.len());
    for m in inflight {
        e.u16(m.packet_id);
        e.u64(m.event_id);
        e.u8(m.qos);
        e.u8(m.stage);
    }
    e.0
}

/// Encodes `sessions.incoming_qos2`.
fn encode_qos2(ids: &[u16]) -> Vec<u8> {
    let mut e = Enc::default();
    e.u8(ENCODING_VERSION);
    e.count(ids.len());
    for id in ids {
        e.u16(*id);
    }
    e.0
}

/// Decodes a list column: the version byte, a count, then that many items.
fn decode_list<'a, T>(
    blob: &'a [u8],
    item: impl Fn(&mut Dec<'a>) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    let mut d = Dec(blob);
    d.version()?;
    let n = d.count()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(item(&mut d)?);
    }
    d.end()?;
    Ok(out)
}

/// Decodes the subscriptions column of schema version 2.
fn decode_v2_subscriptions(blob: &[u8]) -> Result<Vec<StoredSubscription>, String> {
    decode_list(blob, |d| {
        let filter = d.string()?;
        let qos = d.u8()?;
        let flags = d.u8()?;
        let subscription_id = if flags & HAS_SUBSCRIPTION_ID != 0 {
            Some(d.u32()?)
        } else {
            None
        };
        Ok(StoredSubscription {
            filter,
            qos,
            no_local: flags & NO_LOCAL != 0,
            retain_as_published: flags & RETAIN_AS_PUBLISHED != 0,
            subscription_id,
        })
    })
}

/// Decodes `sessions.inflight`.
fn decode_inflight(blob: &[u8]) -> Result<Vec<StoredInflight>, String> {
    decode_list(blob, |d| {
        Ok(StoredInflight {
            packet_id: d.u16()?,
            event_id: d.u64()?,
            qos: d.u8()?,
            stage: d.u8()?,
        })
    })
}

/// Decodes `sessions.incoming_qos2`.
fn decode_qos2(blob: &[u8]) -> Result<Vec<u16>, String> {
    decode_list(blob, Dec::u16)
}

/// The version 2 encoding of a session's subscriptions, which only databases of that version
/// hold: for the upgrade's tests.
#[cfg(test)]
pub(super) fn encode_v2_subscriptions(subscriptions: &[StoredSubscription]) -> Vec<u8> {
    let mut e = Enc::default();
    e.u8(ENCODING_VERSION);
    e.count(subscriptions.len());
    for sub in subscriptions {
        e.bytes(sub.filter.as_bytes());
        e.u8(sub.qos);
        let mut flags = flags(sub);
        if sub.subscription_id.is_some() {
            flags |= HAS_SUBSCRIPTION_ID;
        }
        e.u8(flags);
        if let Some(id) = sub.subscription_id {
            e.u32(id);
        }
    }
    e.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(filter: &str, qos: u8) -> StoredSubscription {
        StoredSubscription {
            filter: filter.into(),
            qos,
            no_local: true,
            retain_as_published: false,
            subscription_id: Some(7),
        }
    }

    fn whole(client_id: &str, subscriptions: Vec<StoredSubscription>) -> StoredSession {
        StoredSession {
            client_id: client_id.into(),
            owner: Some("alice".into()),
            address: None,
            state: StoredSessionState {
                expiry_interval: 10,
                disconnected_at_ms: None,
                cursor: 5,
                inflight: vec![StoredInflight {
                    packet_id: 3,
                    event_id: 99,
                    qos: 2,
                    stage: 1,
                }],
                incoming_qos2: vec![1, 65535],
            },
            subscriptions,
        }
    }

    /// The session tables of a fresh version 3 database, in memory.
    fn tables() -> Connection {
        let conn = Connection::open_in_memory().expect("memory database");
        conn.execute_batch(
            "CREATE TABLE sessions (client_id TEXT PRIMARY KEY, expiry_interval INTEGER NOT NULL, \
             disconnected_at_ms INTEGER, cursor INTEGER NOT NULL, subscriptions BLOB NOT NULL, \
             inflight BLOB NOT NULL, incoming_qos2 BLOB NOT NULL);",
        )
        .expect("version 2 table");
        conn.execute_batch(V2_TO_V3).expect("version 3 tables");
        conn.execute_batch(V2_TO_V3_SWAP).expect("swap");
        conn
    }

    #[test]
    fn columns_round_trip() {
        let s = whole("c", vec![sub("a/+", 1), sub("#", 2)]);
        let state = &s.state;
        assert_eq!(
            decode_inflight(&encode_inflight(&state.inflight)),
            Ok(state.inflight.clone())
        );
        assert_eq!(
            decode_qos2(&encode_qos2(&state.incoming_qos2)),
            Ok(state.incoming_qos2.clone())
        );
        assert_eq!(
            decode_v2_subscriptions(&encode_v2_subscriptions(&s.subscriptions)),
            Ok(s.subscriptions.clone())
        );
        assert!(decode_qos2(&[1, 255, 255, 255, 255]).is_err());
    }

    /// The point of version 3: a cursor that moved rewrites one row, whatever the session's
    /// filters; a SUBSCRIBE writes its own filters only.
    #[test]
    fn a_save_writes_what_changed_and_nothing_else() {
        let mut conn = tables();
        let filters: Vec<StoredSubscription> = (0..1000)
            .map(|i| sub(&format!("{i}/{}", "x".repeat(1000)), 1))
            .collect();
        let tx = conn.transaction().expect("transaction");
        write_whole(&tx, &whole("big", filters.clone())).expect("whole save");
        tx.commit().expect("commit");
        assert_eq!(load_all(&conn).expect("load")[0].subscriptions.len(), 1000);

        let changed = |conn: &mut Connection, changes: SessionChanges| {
            let before = conn.total_changes();
            let tx = conn.transaction().expect("transaction");
            assert!(write_changes(&tx, &changes).expect("changes"));
            tx.commit().expect("commit");
            conn.total_changes() - before
        };
        let mut moved = whole("big", Vec::new()).state;
        moved.cursor = 6;
        let cursor_only = SessionChanges {
            client_id: "big".into(),
            state: Some(moved),
            subscribed: Vec::new(),
            unsubscribed: Vec::new(),
        };
        assert_eq!(changed(&mut conn, cursor_only), 1, "one row for a cursor");
        let subscribe = SessionChanges {
            client_id: "big".into(),
            state: None,
            subscribed: vec![sub("new/#", 0), filters[3].clone()],
            unsubscribed: vec![filters[4].filter.clone(), "never/subscribed".into()],
        };
        assert_eq!(changed(&mut conn, subscribe), 3, "its own filters only");

        let loaded = load_all(&conn).expect("load");
        assert_eq!(loaded[0].state.cursor, 6);
        let subs = &loaded[0].subscriptions;
        assert_eq!(subs.len(), 1000);
        assert!(subs.contains(&sub("new/#", 0)));
        assert!(!subs.contains(&filters[4]));
        assert_eq!(loaded[0].owner.as_deref(), Some("alice"));
    }

    #[test]
    fn changes_to_a_deleted_session_write_nothing_and_a_whole_save_replaces() {
        let mut conn = tables();
        let tx = conn.transaction().expect("transaction");
        write_whole(&tx, &whole("c", vec![sub("old", 1)])).expect("save");
        delete(&tx, "c").expect("delete");
        let late = SessionChanges {
            client_id: "c".into(),
            state: None,
            subscribed: vec![sub("late", 1)],
            unsubscribed: Vec::new(),
        };
        assert!(!write_changes(&tx, &late).expect("changes"));
        write_whole(&tx, &whole("c", vec![sub("a", 1)])).expect("save");
        write_whole(&tx, &whole("c", vec![sub("b", 1)])).expect("replace");
        tx.commit().expect("commit");
        let loaded = load_all(&conn).expect("load");
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].subscriptions, vec![sub("b", 1)]);
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM session_subscriptions", [], |r| {
                r.get(0)
            })
            .expect("count");
        assert_eq!(rows, 1, "a replaced session leaves no rows behind");
    }
}
