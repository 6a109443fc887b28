//! SQLite (WAL) store of functions.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use super::{Function, FunctionsError};
use crate::packages::Runtime;

pub struct FunctionStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS functions (
    name            TEXT PRIMARY KEY,
    runtime         TEXT NOT NULL,
    handler         TEXT NOT NULL,
    memory_mb       INTEGER NOT NULL,
    timeout_s       INTEGER NOT NULL,
    environment     TEXT NOT NULL,
    description     TEXT NOT NULL,
    code_sha256     TEXT NOT NULL,
    code_sha256_b64 TEXT NOT NULL,
    code_size       INTEGER NOT NULL,
    last_modified   TEXT NOT NULL,
    revision        INTEGER NOT NULL
);
";

impl FunctionStore {
    pub fn open(path: &Path) -> Result<Self, FunctionsError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts a new function; fails if the name is taken.
    pub fn insert(&self, f: &Function) -> Result<(), FunctionsError> {
        let env = serde_json::to_string(&f.environment)
            .map_err(|e| FunctionsError::Corrupt(f.name.clone(), e.to_string()))?;
        let r = self.conn().execute(
            "INSERT INTO functions (name, runtime, handler, memory_mb, timeout_s, environment,
                description, code_sha256, code_sha256_b64, code_size, last_modified, revision)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                f.name,
                f.runtime.name(),
                f.handler,
                f.memory_mb,
                f.timeout_s,
                env,
                f.description,
                f.code_sha256_hex,
                f.code_sha256_b64,
                f.code_size as i64,
                f.last_modified,
                f.revision as i64,
            ],
        );
        match r {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(FunctionsError::AlreadyExists(f.name.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn get(&self, name: &str) -> Result<Function, FunctionsError> {
        self.conn()
            .query_row(
                "SELECT name, runtime, handler, memory_mb, timeout_s, environment, description,
                    code_sha256, code_sha256_b64, code_size, last_modified, revision
                 FROM functions WHERE name = ?1",
                params![name],
                row_to_raw,
            )
            .optional()?
            .ok_or_else(|| FunctionsError::NotFound(name.into()))
            .and_then(RawFunction::into_function)
    }

    pub fn list(&self) -> Result<Vec<Function>, FunctionsError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, runtime, handler, memory_mb, timeout_s, environment, description,
                code_sha256, code_sha256_b64, code_size, last_modified, revision
             FROM functions ORDER BY name",
        )?;
        let rows = stmt.query_map([], row_to_raw)?;
        rows.map(|r| {
            r.map_err(FunctionsError::from)
                .and_then(RawFunction::into_function)
        })
        .collect()
    }

    /// Deletes a function; returns it.
    pub fn delete(&self, name: &str) -> Result<Function, FunctionsError> {
        let f = self.get(name)?;
        self.conn()
            .execute("DELETE FROM functions WHERE name = ?1", params![name])?;
        Ok(f)
    }

    /// Whether any function still uses the package with this SHA-256.
    pub fn code_in_use(&self, sha256_hex: &str) -> Result<bool, FunctionsError> {
        let n: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM functions WHERE code_sha256 = ?1",
            params![sha256_hex],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }
}

struct RawFunction {
    name: String,
    runtime: String,
    handler: String,
    memory_mb: u32,
    timeout_s: u32,
    environment: String,
    description: String,
    code_sha256_hex: String,
    code_sha256_b64: String,
    code_size: i64,
    last_modified: String,
    revision: i64,
}

fn row_to_raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawFunction> {
    Ok(RawFunction {
        name: r.get(0)?,
        runtime: r.get(1)?,
        handler: r.get(2)?,
        memory_mb: r.get(3)?,
        timeout_s: r.get(4)?,
        environment: r.get(5)?,
        description: r.get(6)?,
        code_sha256_hex: r.get(7)?,
        code_sha256_b64: r.get(8)?,
        code_size: r.get(9)?,
        last_modified: r.get(10)?,
        revision: r.get(11)?,
    })
}

impl RawFunction {
    fn into_function(self) -> Result<Function, FunctionsError> {
        let runtime = Runtime::parse(&self.runtime).ok_or_else(|| {
            FunctionsError::Corrupt(self.name.clone(), format!("runtime {}", self.runtime))
        })?;
        let environment = serde_json::from_str(&self.environment)
            .map_err(|e| FunctionsError::Corrupt(self.name.clone(), e.to_string()))?;
        Ok(Function {
            name: self.name,
            runtime,
            handler: self.handler,
            memory_mb: self.memory_mb,
            timeout_s: self.timeout_s,
            environment,
            description: self.description,
            code_sha256_hex: self.code_sha256_hex,
            code_sha256_b64: self.code_sha256_b64,
            code_size: self.code_size as u64,
            last_modified: self.last_modified,
            revision: self.revision as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str) -> Function {
        Function {
            name: name.into(),
            runtime: Runtime::Python311,
            handler: "app.handler".into(),
            memory_mb: 128,
            timeout_s: 3,
            environment: [("A".to_string(), "1".to_string())].into(),
            description: String::new(),
            code_sha256_hex: "ab".into(),
            code_sha256_b64: "qw==".into(),
            code_size: 10,
            last_modified: "now".into(),
            revision: 1,
        }
    }

    #[test]
    fn round_trip_conflict_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = FunctionStore::open(&dir.path().join("db")).unwrap();
        s.insert(&f("a")).unwrap();
        s.insert(&f("b")).unwrap();
        assert!(matches!(
            s.insert(&f("a")),
            Err(FunctionsError::AlreadyExists(_))
        ));
        assert_eq!(s.get("a").unwrap(), f("a"));
        assert_eq!(s.list().unwrap().len(), 2);
        assert!(s.code_in_use("ab").unwrap());
        s.delete("a").unwrap();
        assert!(matches!(s.get("a"), Err(FunctionsError::NotFound(_))));
        // Survives reopening.
        drop(s);
        let s = FunctionStore::open(&dir.path().join("db")).unwrap();
        assert_eq!(s.list().unwrap(), vec![f("b")]);
    }
}
