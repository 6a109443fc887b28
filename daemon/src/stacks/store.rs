//! Stacks, their resources and their events, in SQLite.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::StackError;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackRecord {
    pub name: String,
    pub id: String,
    pub status: String,
    pub reason: String,
    pub description: String,
    pub template: String,
    pub parameters: std::collections::BTreeMap<String, String>,
    pub outputs: Vec<(String, String, String)>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A resource as applied: its definition (resolved), what it was planned
/// as (references symbolic), and what was made for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceRecord {
    pub logical_id: String,
    pub kind: super::template::Kind,
    pub physical_id: String,
    pub planned: String,
    pub def: super::defs::Def,
    pub state: super::apply::State,
    pub physical: super::template::Physical,
    pub depends_on: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackEvent {
    pub event_id: String,
    pub timestamp_ms: i64,
    pub logical_id: String,
    pub physical_id: String,
    pub resource_type: String,
    pub status: String,
    pub reason: String,
}

pub struct StackStore {
    conn: Mutex<Connection>,
}

fn corrupt(e: serde_json::Error) -> StackError {
    StackError::Corrupt(e.to_string())
}

impl StackStore {
    pub fn open(path: &Path) -> Result<Self, StackError> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS stacks (
                 name TEXT PRIMARY KEY,
                 body TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS stack_resources (
                 stack TEXT NOT NULL,
                 logical_id TEXT NOT NULL,
                 body TEXT NOT NULL,
                 PRIMARY KEY (stack, logical_id)
             );
             CREATE TABLE IF NOT EXISTS stack_events (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 stack TEXT NOT NULL,
                 stack_id TEXT NOT NULL,
                 body TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS stack_events_by_stack ON stack_events (stack_id, seq);",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn put_stack(&self, s: &StackRecord) -> Result<(), StackError> {
        let body = serde_json::to_string(s).map_err(corrupt)?;
        self.conn().execute(
            "INSERT INTO stacks (name, body) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET body = excluded.body",
            params![s.name, body],
        )?;
        Ok(())
    }

    pub fn get_stack(&self, name: &str) -> Result<Option<StackRecord>, StackError> {
        let b: Option<String> = self
            .conn()
            .query_row(
                "SELECT body FROM stacks WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?;
        b.map(|b| serde_json::from_str(&b).map_err(corrupt))
            .transpose()
    }

    pub fn list_stacks(&self) -> Result<Vec<StackRecord>, StackError> {
        let c = self.conn();
        let mut st = c.prepare("SELECT body FROM stacks ORDER BY name")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for b in rows {
            out.push(serde_json::from_str(&b?).map_err(corrupt)?);
        }
        Ok(out)
    }

    pub fn resources(&self, stack: &str) -> Result<Vec<ResourceRecord>, StackError> {
        let c = self.conn();
        let mut st =
            c.prepare("SELECT body FROM stack_resources WHERE stack = ?1 ORDER BY logical_id")?;
        let rows = st.query_map(params![stack], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for b in rows {
            out.push(serde_json::from_str(&b?).map_err(corrupt)?);
        }
        Ok(out)
    }

    /// Replaces the stack's resources with `resources`, in one transaction.
    pub fn set_resources(
        &self,
        stack: &str,
        resources: &[ResourceRecord],
    ) -> Result<(), StackError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        tx.execute(
            "DELETE FROM stack_resources WHERE stack = ?1",
            params![stack],
        )?;
        for r in resources {
            let body = serde_json::to_string(r).map_err(corrupt)?;
            tx.execute(
                "INSERT INTO stack_resources (stack, logical_id, body) VALUES (?1, ?2, ?3)",
                params![stack, r.logical_id, body],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn add_event(&self, stack: &str, stack_id: &str, e: &StackEvent) -> Result<(), StackError> {
        let body = serde_json::to_string(e).map_err(corrupt)?;
        self.conn().execute(
            "INSERT INTO stack_events (stack, stack_id, body) VALUES (?1, ?2, ?3)",
            params![stack, stack_id, body],
        )?;
        Ok(())
    }

    /// A stack's events, newest first (as CloudFormation lists them).
    pub fn events(&self, stack_id: &str) -> Result<Vec<StackEvent>, StackError> {
        let c = self.conn();
        let mut st =
            c.prepare("SELECT body FROM stack_events WHERE stack_id = ?1 ORDER BY seq DESC")?;
        let rows = st.query_map(params![stack_id], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for b in rows {
            out.push(serde_json::from_str(&b?).map_err(corrupt)?);
        }
        Ok(out)
    }

    pub fn delete_stack(&self, name: &str) -> Result<(), StackError> {
        let c = self.conn();
        c.execute(
            "DELETE FROM stack_resources WHERE stack = ?1",
            params![name],
        )?;
        c.execute("DELETE FROM stacks WHERE name = ?1", params![name])?;
        Ok(())
    }
}
