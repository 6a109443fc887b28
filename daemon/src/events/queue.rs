//! The durable queue of asynchronous events: its own SQLite database in
//! WAL mode with `synchronous=FULL`, so that a commit is on disk before the
//! caller hears 202. Every change of an event's fate — accepted, put back
//! with a later due time, finished with its records and follow-up events,
//! dropped — is one transaction, so a crash at any moment leaves each
//! event either queued or finished with everything that follows from it.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use super::EventsError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id  TEXT NOT NULL,
    function    TEXT NOT NULL,
    qualifier   TEXT NOT NULL,
    payload     BLOB NOT NULL,
    received_ms INTEGER NOT NULL,
    due_ms      INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    backoffs    INTEGER NOT NULL DEFAULT 0,
    last        TEXT
);
CREATE INDEX IF NOT EXISTS events_due ON events (due_ms);
CREATE TABLE IF NOT EXISTS records (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    bus      TEXT NOT NULL,
    function TEXT NOT NULL,
    record   TEXT NOT NULL,
    at_ms    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS records_bus ON records (bus, seq);
CREATE TABLE IF NOT EXISTS dropped (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    function   TEXT NOT NULL,
    qualifier  TEXT NOT NULL,
    reason     TEXT NOT NULL,
    at_ms      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    function   TEXT NOT NULL,
    queue      TEXT NOT NULL,
    body       TEXT NOT NULL,
    attributes TEXT NOT NULL,
    due_ms     INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0
);
-- Schedules: the last time each fired. Written in the transaction that
-- queues the firing's event, so that a firing happens exactly once.
CREATE TABLE IF NOT EXISTS schedule_fires (
    schedule     TEXT PRIMARY KEY,
    last_fire_ms INTEGER NOT NULL,
    fires        INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS counts (
    function  TEXT PRIMARY KEY,
    received  INTEGER NOT NULL DEFAULT 0,
    succeeded INTEGER NOT NULL DEFAULT 0,
    dropped   INTEGER NOT NULL DEFAULT 0
);
";

/// The columns [`event_row`] reads, in its order.
const EVENT_COLUMNS: &str =
    "id, request_id, function, qualifier, payload, received_ms, due_ms, attempts, backoffs, last";

/// Dropped events kept per function for `flintctl`.
const DROPPED_KEPT: i64 = 100;

/// An event to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub request_id: String,
    pub function: String,
    pub qualifier: String,
    pub payload: Vec<u8>,
    pub received_ms: i64,
}

/// An event in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    pub id: i64,
    pub request_id: String,
    pub function: String,
    pub qualifier: String,
    pub payload: Vec<u8>,
    pub received_ms: i64,
    pub due_ms: i64,
    /// Invocations that ran to a function error (or are running).
    pub attempts: u32,
    /// Times it went back for a throttle or a system error.
    pub backoffs: u32,
    /// The last response, JSON, for the record if it is dropped later.
    pub last: Option<String>,
}

/// How an event leaves the queue.
#[derive(Debug, Clone, Default)]
pub struct Finish {
    pub succeeded: bool,
    /// `Some(reason)`: dropped (counted, and listed for `flintctl`).
    pub dropped: Option<String>,
    /// Records for event-bus destinations: (bus, record JSON).
    pub records: Vec<(String, String)>,
    /// Events for function destinations.
    pub follow_ups: Vec<NewEvent>,
    /// Messages for the broker's queues (destinations and the
    /// dead-letter queue), delivered after the commit.
    pub outbox: Vec<OutboxMessage>,
}

/// A message waiting to be written to a queue on the broker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutboxMessage {
    pub seq: i64,
    pub function: String,
    pub queue: String,
    pub body: String,
    pub attributes: std::collections::BTreeMap<String, String>,
    pub attempts: u32,
}

/// A record on an event bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusRecord {
    pub seq: u64,
    pub bus: String,
    pub function: String,
    pub record: String,
}

/// What the queue holds for one function.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub function: String,
    pub waiting: u64,
    pub oldest_received_ms: Option<i64>,
    pub received: u64,
    pub succeeded: u64,
    pub dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedEvent {
    pub request_id: String,
    pub qualifier: String,
    pub reason: String,
    pub at_ms: i64,
}

pub struct EventQueue {
    conn: Mutex<Connection>,
}

fn insert(tx: &Connection, e: &NewEvent) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO events (request_id, function, qualifier, payload, received_ms, due_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        params![
            e.request_id,
            e.function,
            e.qualifier,
            e.payload,
            e.received_ms
        ],
    )?;
    tx.execute(
        "INSERT INTO counts (function, received) VALUES (?1, 1)
         ON CONFLICT (function) DO UPDATE SET received = received + 1",
        params![e.function],
    )?;
    Ok(())
}

impl EventQueue {
    pub fn open(path: &Path) -> Result<Self, EventsError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // Every commit reaches the disk before it returns.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an event; when this returns, it is on disk.
    pub fn accept(&self, e: &NewEvent) -> Result<(), EventsError> {
        self.accept_all(&[e])
    }

    /// Queues the event of a schedule's firing at `fire_ms`, unless the
    /// schedule already fired at or after that time: answers whether it
    /// was queued. The event and the schedule's mark are one transaction.
    pub fn fire_schedule(
        &self,
        schedule: &str,
        fire_ms: i64,
        e: &NewEvent,
    ) -> Result<bool, EventsError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let last: Option<i64> = tx
            .query_row(
                "SELECT last_fire_ms FROM schedule_fires WHERE schedule = ?1",
                params![schedule],
                |r| r.get(0),
            )
            .optional()?;
        if last.is_some_and(|l| l >= fire_ms) {
            return Ok(false);
        }
        insert(&tx, e)?;
        tx.execute(
            "INSERT INTO schedule_fires (schedule, last_fire_ms, fires) VALUES (?1, ?2, 1)
             ON CONFLICT (schedule) DO UPDATE SET last_fire_ms = ?2, fires = fires + 1",
            params![schedule, fire_ms],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// When a schedule last fired, and how often it has.
    pub fn schedule_fired(&self, schedule: &str) -> Result<Option<(i64, u64)>, EventsError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT last_fire_ms, fires FROM schedule_fires WHERE schedule = ?1",
                params![schedule],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .optional()?)
    }

    pub fn forget_schedule(&self, schedule: &str) -> Result<(), EventsError> {
        self.conn().execute(
            "DELETE FROM schedule_fires WHERE schedule = ?1",
            params![schedule],
        )?;
        Ok(())
    }

    /// Queues events in one transaction (one sync for all of them).
    pub fn accept_all(&self, events: &[&NewEvent]) -> Result<(), EventsError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for e in events {
            insert(&tx, e)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Events due by `now_ms`, oldest due first, leaving out those running
    /// (`skip_ids`) and the functions at their concurrency (`skip_functions`).
    pub fn due(
        &self,
        now_ms: i64,
        skip_ids: &[i64],
        skip_functions: &[String],
        limit: usize,
    ) -> Result<Vec<QueuedEvent>, EventsError> {
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE due_ms <= ?");
        let mut args: Vec<rusqlite::types::Value> = vec![now_ms.into()];
        if !skip_ids.is_empty() {
            sql.push_str(&format!(" AND id NOT IN ({})", marks(skip_ids.len())));
            args.extend(skip_ids.iter().map(|&i| i.into()));
        }
        if !skip_functions.is_empty() {
            sql.push_str(&format!(
                " AND function NOT IN ({})",
                marks(skip_functions.len())
            ));
            args.extend(skip_functions.iter().map(|f| f.clone().into()));
        }
        sql.push_str(&format!(" ORDER BY due_ms, id LIMIT {limit}"));
        let conn = self.conn();
        let mut st = conn.prepare(&sql)?;
        let rows = st.query_map(params_from_iter(args), event_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// When the next event not running falls due.
    pub fn next_due(&self, skip_ids: &[i64]) -> Result<Option<i64>, EventsError> {
        let mut sql = String::from("SELECT MIN(due_ms) FROM events");
        if !skip_ids.is_empty() {
            sql.push_str(&format!(" WHERE id NOT IN ({})", marks(skip_ids.len())));
        }
        let conn = self.conn();
        let v: Option<i64> =
            conn.query_row(&sql, params_from_iter(skip_ids.iter()), |r| r.get(0))?;
        Ok(v)
    }

    /// Puts an event back, due at `due_ms`.
    pub fn retry(
        &self,
        id: i64,
        due_ms: i64,
        attempts: u32,
        backoffs: u32,
        last: Option<&str>,
    ) -> Result<(), EventsError> {
        self.conn().execute(
            "UPDATE events SET due_ms = ?2, attempts = ?3, backoffs = ?4, last = COALESCE(?5, last)
             WHERE id = ?1",
            params![id, due_ms, attempts, backoffs, last],
        )?;
        Ok(())
    }

    /// Removes an event with everything that follows from it, at once.
    pub fn finish(&self, e: &QueuedEvent, f: &Finish, now_ms: i64) -> Result<(), EventsError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM events WHERE id = ?1", params![e.id])?;
        for (bus, record) in &f.records {
            tx.execute(
                "INSERT INTO records (bus, function, record, at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![bus, e.function, record, now_ms],
            )?;
        }
        for next in &f.follow_ups {
            insert(&tx, next)?;
        }
        for m in &f.outbox {
            tx.execute(
                "INSERT INTO outbox (function, queue, body, attributes, due_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    m.function,
                    m.queue,
                    m.body,
                    serde_json::to_string(&m.attributes).unwrap_or_else(|_| "{}".into()),
                    now_ms
                ],
            )?;
        }
        if f.succeeded {
            tx.execute(
                "INSERT INTO counts (function, succeeded) VALUES (?1, 1)
                 ON CONFLICT (function) DO UPDATE SET succeeded = succeeded + 1",
                params![e.function],
            )?;
        }
        if let Some(reason) = &f.dropped {
            tx.execute(
                "INSERT INTO counts (function, dropped) VALUES (?1, 1)
                 ON CONFLICT (function) DO UPDATE SET dropped = dropped + 1",
                params![e.function],
            )?;
            tx.execute(
                "INSERT INTO dropped (request_id, function, qualifier, reason, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![e.request_id, e.function, e.qualifier, reason, now_ms],
            )?;
            tx.execute(
                "DELETE FROM dropped WHERE function = ?1 AND seq NOT IN
                 (SELECT seq FROM dropped WHERE function = ?1 ORDER BY seq DESC LIMIT ?2)",
                params![e.function, DROPPED_KEPT],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Broker messages due by `now_ms`, oldest first.
    pub fn outbox_due(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxMessage>, EventsError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT seq, function, queue, body, attributes, attempts FROM outbox
             WHERE due_ms <= ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = st.query_map(params![now_ms, limit as i64], |r| {
            Ok(OutboxMessage {
                seq: r.get(0)?,
                function: r.get(1)?,
                queue: r.get(2)?,
                body: r.get(3)?,
                attributes: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
                attempts: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A broker message was written (or given up on).
    pub fn outbox_done(&self, seq: i64) -> Result<(), EventsError> {
        self.conn()
            .execute("DELETE FROM outbox WHERE seq = ?1", params![seq])?;
        Ok(())
    }

    /// A broker message waits until `due_ms`.
    pub fn outbox_retry(&self, seq: i64, due_ms: i64, attempts: u32) -> Result<(), EventsError> {
        self.conn().execute(
            "UPDATE outbox SET due_ms = ?2, attempts = ?3 WHERE seq = ?1",
            params![seq, due_ms, attempts],
        )?;
        Ok(())
    }

    /// Broker messages not yet written, per function.
    pub fn outbox_waiting(&self) -> Result<Vec<(String, u64)>, EventsError> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT function, COUNT(*) FROM outbox GROUP BY function")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records on `bus` after `after`, oldest first.
    pub fn records_after(
        &self,
        bus: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<BusRecord>, EventsError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT seq, bus, function, record FROM records WHERE bus = ?1 AND seq > ?2
             ORDER BY seq LIMIT ?3",
        )?;
        let rows = st.query_map(params![bus, after as i64, limit as i64], |r| {
            Ok(BusRecord {
                seq: r.get::<_, i64>(0)? as u64,
                bus: r.get(1)?,
                function: r.get(2)?,
                record: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes records written before `before_ms`.
    pub fn prune_records(&self, before_ms: i64) -> Result<usize, EventsError> {
        Ok(self
            .conn()
            .execute("DELETE FROM records WHERE at_ms < ?1", params![before_ms])?)
    }

    /// Per function: events waiting (or running), the oldest's arrival,
    /// and the counts.
    pub fn counts(&self) -> Result<Vec<QueueCounts>, EventsError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT c.function, c.received, c.succeeded, c.dropped,
                    (SELECT COUNT(*) FROM events e WHERE e.function = c.function),
                    (SELECT MIN(received_ms) FROM events e WHERE e.function = c.function)
             FROM counts c ORDER BY c.function",
        )?;
        let rows = st.query_map([], |r| {
            Ok(QueueCounts {
                function: r.get(0)?,
                received: r.get::<_, i64>(1)? as u64,
                succeeded: r.get::<_, i64>(2)? as u64,
                dropped: r.get::<_, i64>(3)? as u64,
                waiting: r.get::<_, i64>(4)? as u64,
                oldest_received_ms: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The last dropped events of a function, newest first.
    pub fn dropped(&self, function: &str, limit: usize) -> Result<Vec<DroppedEvent>, EventsError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT request_id, qualifier, reason, at_ms FROM dropped WHERE function = ?1
             ORDER BY seq DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![function, limit as i64], |r| {
            Ok(DroppedEvent {
                request_id: r.get(0)?,
                qualifier: r.get(1)?,
                reason: r.get(2)?,
                at_ms: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// An event by request id (tests and `flintctl`).
    pub fn find(&self, request_id: &str) -> Result<Option<QueuedEvent>, EventsError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                &format!("SELECT {EVENT_COLUMNS} FROM events WHERE request_id = ?1"),
                params![request_id],
                event_row,
            )
            .optional()?)
    }
}

/// An event from a row of `SELECT` [`EVENT_COLUMNS`].
fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<QueuedEvent> {
    Ok(QueuedEvent {
        id: r.get(0)?,
        request_id: r.get(1)?,
        function: r.get(2)?,
        qualifier: r.get(3)?,
        payload: r.get(4)?,
        received_ms: r.get(5)?,
        due_ms: r.get(6)?,
        attempts: r.get(7)?,
        backoffs: r.get(8)?,
        last: r.get(9)?,
    })
}

fn marks(n: usize) -> String {
    vec!["?"; n].join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, function: &str, at: i64) -> NewEvent {
        NewEvent {
            request_id: id.into(),
            function: function.into(),
            qualifier: "$LATEST".into(),
            payload: b"{}".to_vec(),
            received_ms: at,
        }
    }

    #[test]
    fn events_survive_a_reopen_and_leave_with_their_records_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        {
            let q = EventQueue::open(&path).unwrap();
            q.accept(&ev("a", "f", 10)).unwrap();
            q.accept(&ev("b", "g", 20)).unwrap();
            q.accept(&ev("c", "f", 30)).unwrap();
        }
        let q = EventQueue::open(&path).unwrap();
        let due = q.due(25, &[], &[], 10).unwrap();
        assert_eq!(
            due.iter()
                .map(|e| e.request_id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        // Running ones and functions at their limit are left out.
        let due = q.due(100, &[due[0].id], &["g".to_string()], 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].request_id, "c");

        let a = q.find("a").unwrap().unwrap();
        q.retry(a.id, 500, 1, 0, Some("{\"statusCode\":200}"))
            .unwrap();
        assert_eq!(q.next_due(&[]).unwrap(), Some(20));
        let a = q.find("a").unwrap().unwrap();
        assert_eq!((a.due_ms, a.attempts), (500, 1));
        assert!(a.last.is_some());

        q.finish(
            &a,
            &Finish {
                succeeded: false,
                dropped: Some("RetriesExhausted".into()),
                records: vec![("ops".into(), "{\"r\":1}".into())],
                follow_ups: vec![ev("d", "h", 600)],
                outbox: vec![OutboxMessage {
                    function: "f".into(),
                    queue: "dlq".into(),
                    body: "{}".into(),
                    ..OutboxMessage::default()
                }],
            },
            600,
        )
        .unwrap();
        assert!(q.find("a").unwrap().is_none());
        assert!(q.find("d").unwrap().is_some());
        let recs = q.records_after("ops", 0, 10).unwrap();
        assert_eq!(recs.len(), 1);
        assert!(q.records_after("ops", recs[0].seq, 10).unwrap().is_empty());
        assert!(q.records_after("other", 0, 10).unwrap().is_empty());
        let counts = q.counts().unwrap();
        let f = counts.iter().find(|c| c.function == "f").unwrap();
        assert_eq!((f.received, f.dropped, f.waiting), (2, 1, 1));
        assert_eq!(f.oldest_received_ms, Some(30));
        let h = counts.iter().find(|c| c.function == "h").unwrap();
        assert_eq!(h.received, 1);
        let d = q.dropped("f", 10).unwrap();
        assert_eq!(d[0].reason, "RetriesExhausted");
        assert_eq!(q.prune_records(601).unwrap(), 1);
        // The broker message waits in the outbox until it is written.
        let out = q.outbox_due(600, 10).unwrap();
        assert_eq!((out.len(), out[0].queue.as_str()), (1, "dlq"));
        assert_eq!(q.outbox_waiting().unwrap(), vec![("f".to_string(), 1)]);
        q.outbox_retry(out[0].seq, 900, 1).unwrap();
        assert!(q.outbox_due(899, 10).unwrap().is_empty());
        q.outbox_done(out[0].seq).unwrap();
        assert!(q.outbox_due(i64::MAX, 10).unwrap().is_empty());
    }
}
