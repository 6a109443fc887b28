//! SQLite (WAL) store of functions, versions, aliases and layers. Each row
//! keeps its record as JSON next to the keys it is looked up by; changes that
//! touch several rows run in one transaction.
//!
//! Why one file of 800 lines: every SQL statement of the store is here,
//! next to the schema and its migrations, so that a query and the table it
//! reads are reviewed together; a third of it is tests.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::de::DeserializeOwned;

use super::event_config::EventInvokeConfig;
use super::scaling::ScalableTarget;
use super::{Alias, Function, FunctionsError, LayerVersion, ProvisionedConfig, LATEST};

pub struct FunctionStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS fn_latest (
    name         TEXT PRIMARY KEY,
    record       TEXT NOT NULL,
    next_version INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS fn_versions (
    name    TEXT NOT NULL,
    version INTEGER NOT NULL,
    record  TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS fn_aliases (
    function TEXT NOT NULL,
    name     TEXT NOT NULL,
    record   TEXT NOT NULL,
    PRIMARY KEY (function, name)
);
CREATE TABLE IF NOT EXISTS layer_versions (
    name    TEXT NOT NULL,
    version INTEGER NOT NULL,
    record  TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS fn_concurrency (
    name     TEXT PRIMARY KEY,
    reserved INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS fn_provisioned (
    function      TEXT NOT NULL,
    qualifier     TEXT NOT NULL,
    requested     INTEGER NOT NULL,
    last_modified TEXT NOT NULL,
    PRIMARY KEY (function, qualifier)
);
CREATE TABLE IF NOT EXISTS fn_scaling (
    function  TEXT NOT NULL,
    qualifier TEXT NOT NULL,
    record    TEXT NOT NULL,
    PRIMARY KEY (function, qualifier)
);
CREATE TABLE IF NOT EXISTS fn_event_invoke (
    function  TEXT NOT NULL,
    qualifier TEXT NOT NULL,
    record    TEXT NOT NULL,
    PRIMARY KEY (function, qualifier)
);
CREATE TABLE IF NOT EXISTS layer_names (
    name         TEXT PRIMARY KEY,
    next_version INTEGER NOT NULL
);
";

fn to_json<T: serde::Serialize>(what: &str, v: &T) -> Result<String, FunctionsError> {
    serde_json::to_string(v).map_err(|e| FunctionsError::Corrupt(what.into(), e.to_string()))
}

fn from_json<T: DeserializeOwned>(what: &str, s: &str) -> Result<T, FunctionsError> {
    serde_json::from_str(s).map_err(|e| FunctionsError::Corrupt(what.into(), e.to_string()))
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

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

    // ------------------------------------------------------------ functions

    /// Inserts a new function's `$LATEST`; fails if the name is taken.
    pub fn insert(&self, f: &Function) -> Result<(), FunctionsError> {
        let r = self.conn().execute(
            "INSERT INTO fn_latest (name, record) VALUES (?1, ?2)",
            params![f.name, to_json(&f.name, f)?],
        );
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_constraint(&e) => Err(FunctionsError::AlreadyExists(f.name.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces a function's `$LATEST`.
    pub fn update(&self, f: &Function) -> Result<(), FunctionsError> {
        let n = self.conn().execute(
            "UPDATE fn_latest SET record = ?2 WHERE name = ?1",
            params![f.name, to_json(&f.name, f)?],
        )?;
        if n == 0 {
            return Err(FunctionsError::NotFound(f.name.clone()));
        }
        Ok(())
    }

    /// Replaces `$LATEST` only if it is still at revision `expected`: the
    /// write half of a read-modify-write. `Ok(false)` when another update
    /// came between.
    pub fn update_if(&self, f: &Function, expected: u64) -> Result<bool, FunctionsError> {
        let n = self.conn().execute(
            "UPDATE fn_latest SET record = ?2 WHERE name = ?1 \
             AND json_extract(record, '$.revision') = ?3",
            params![f.name, to_json(&f.name, f)?, expected as i64],
        )?;
        if n == 0 {
            self.get(&f.name)?;
            return Ok(false);
        }
        Ok(true)
    }

    /// A function's `$LATEST`.
    pub fn get(&self, name: &str) -> Result<Function, FunctionsError> {
        let rec: Option<String> = self
            .conn()
            .query_row(
                "SELECT record FROM fn_latest WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?;
        from_json(
            name,
            &rec.ok_or_else(|| FunctionsError::NotFound(name.into()))?,
        )
    }

    pub fn list(&self) -> Result<Vec<Function>, FunctionsError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, record FROM fn_latest ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|r| {
            let (n, rec) = r?;
            from_json(&n, &rec)
        })
        .collect()
    }

    /// Deletes a function with its versions and aliases; returns every
    /// version that was deleted.
    pub fn delete(&self, name: &str) -> Result<Vec<Function>, FunctionsError> {
        let mut deleted = vec![self.get(name)?];
        deleted.extend(self.list_versions(name)?);
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM fn_latest WHERE name = ?1", params![name])?;
        tx.execute("DELETE FROM fn_versions WHERE name = ?1", params![name])?;
        tx.execute("DELETE FROM fn_aliases WHERE function = ?1", params![name])?;
        tx.execute("DELETE FROM fn_concurrency WHERE name = ?1", params![name])?;
        tx.execute(
            "DELETE FROM fn_provisioned WHERE function = ?1",
            params![name],
        )?;
        tx.execute("DELETE FROM fn_scaling WHERE function = ?1", params![name])?;
        tx.execute(
            "DELETE FROM fn_event_invoke WHERE function = ?1",
            params![name],
        )?;
        tx.commit()?;
        Ok(deleted)
    }

    // ------------------------------------------------------------- versions

    /// Publishes `$LATEST` as a new version, unless the last published
    /// version has the same code and configuration: then that one is returned.
    pub fn publish_version(
        &self,
        name: &str,
        description: &str,
    ) -> Result<Function, FunctionsError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (rec, next): (String, i64) = tx
            .query_row(
                "SELECT record, next_version FROM fn_latest WHERE name = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .ok_or_else(|| FunctionsError::NotFound(name.into()))?;
        let latest: Function = from_json(name, &rec)?;
        let last: Option<String> = tx
            .query_row(
                "SELECT record FROM fn_versions WHERE name = ?1 ORDER BY version DESC LIMIT 1",
                params![name],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(last) = last {
            let last: Function = from_json(name, &last)?;
            if last.same_code_and_configuration(&latest) {
                return Ok(last);
            }
        }
        let mut v = latest;
        v.version = next.to_string();
        if !description.is_empty() {
            v.description = description.to_string();
        }
        v.last_modified = crate::time::lambda_timestamp(std::time::SystemTime::now());
        tx.execute(
            "INSERT INTO fn_versions (name, version, record) VALUES (?1, ?2, ?3)",
            params![name, next, to_json(name, &v)?],
        )?;
        tx.execute(
            "UPDATE fn_latest SET next_version = ?2 WHERE name = ?1",
            params![name, next + 1],
        )?;
        tx.commit()?;
        Ok(v)
    }

    pub fn get_version(&self, name: &str, version: u64) -> Result<Function, FunctionsError> {
        let rec: Option<String> = self
            .conn()
            .query_row(
                "SELECT record FROM fn_versions WHERE name = ?1 AND version = ?2",
                params![name, version as i64],
                |r| r.get(0),
            )
            .optional()?;
        match rec {
            Some(rec) => from_json(name, &rec),
            None => Err(FunctionsError::NotFound(format!("{name}:{version}"))),
        }
    }

    /// Published versions, oldest first (without `$LATEST`).
    pub fn list_versions(&self, name: &str) -> Result<Vec<Function>, FunctionsError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT record FROM fn_versions WHERE name = ?1 ORDER BY version")?;
        let rows = stmt.query_map(params![name], |r| r.get::<_, String>(0))?;
        rows.map(|r| from_json(name, &r?)).collect()
    }

    /// A version by its name: `$LATEST` or a number.
    pub fn get_qualified(&self, name: &str, version: &str) -> Result<Function, FunctionsError> {
        if version == LATEST {
            return self.get(name);
        }
        let n = version
            .parse::<u64>()
            .map_err(|_| FunctionsError::NotFound(format!("{name}:{version}")))?;
        self.get_version(name, n)
    }

    // -------------------------------------------------------------- aliases

    pub fn insert_alias(&self, a: &Alias) -> Result<(), FunctionsError> {
        let r = self.conn().execute(
            "INSERT INTO fn_aliases (function, name, record) VALUES (?1, ?2, ?3)",
            params![a.function, a.name, to_json(&a.name, a)?],
        );
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_constraint(&e) => Err(FunctionsError::AliasExists(format!(
                "{}:{}",
                a.function, a.name
            ))),
            Err(e) => Err(e.into()),
        }
    }

    pub fn update_alias(&self, a: &Alias) -> Result<(), FunctionsError> {
        let n = self.conn().execute(
            "UPDATE fn_aliases SET record = ?3 WHERE function = ?1 AND name = ?2",
            params![a.function, a.name, to_json(&a.name, a)?],
        )?;
        if n == 0 {
            return Err(FunctionsError::AliasNotFound(format!(
                "{}:{}",
                a.function, a.name
            )));
        }
        Ok(())
    }

    pub fn get_alias(&self, function: &str, name: &str) -> Result<Alias, FunctionsError> {
        let rec: Option<String> = self
            .conn()
            .query_row(
                "SELECT record FROM fn_aliases WHERE function = ?1 AND name = ?2",
                params![function, name],
                |r| r.get(0),
            )
            .optional()?;
        match rec {
            Some(rec) => from_json(name, &rec),
            None => Err(FunctionsError::AliasNotFound(format!("{function}:{name}"))),
        }
    }

    pub fn list_aliases(&self, function: &str) -> Result<Vec<Alias>, FunctionsError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT record FROM fn_aliases WHERE function = ?1 ORDER BY name")?;
        let rows = stmt.query_map(params![function], |r| r.get::<_, String>(0))?;
        rows.map(|r| from_json(function, &r?)).collect()
    }

    /// Deletes an alias, its provisioned-concurrency config and its
    /// scalable target.
    pub fn delete_alias(&self, function: &str, name: &str) -> Result<(), FunctionsError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM fn_aliases WHERE function = ?1 AND name = ?2",
            params![function, name],
        )?;
        if n == 0 {
            return Err(FunctionsError::AliasNotFound(format!("{function}:{name}")));
        }
        for table in ["fn_provisioned", "fn_scaling", "fn_event_invoke"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE function = ?1 AND qualifier = ?2"),
                params![function, name],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    // ---------------------------------------------------------- concurrency

    /// Sets or (with `None`) removes a function's reserved concurrency.
    pub fn set_reserved(&self, name: &str, reserved: Option<u32>) -> Result<(), FunctionsError> {
        let conn = self.conn();
        match reserved {
            Some(n) => conn.execute(
                "INSERT INTO fn_concurrency (name, reserved) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET reserved = excluded.reserved",
                params![name, n],
            )?,
            None => conn.execute("DELETE FROM fn_concurrency WHERE name = ?1", params![name])?,
        };
        Ok(())
    }

    /// Every reservation, by function.
    pub fn reserved(&self) -> Result<Vec<(String, u32)>, FunctionsError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, reserved FROM fn_concurrency ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Creates or replaces a provisioned-concurrency config.
    pub fn put_provisioned(&self, p: &ProvisionedConfig) -> Result<(), FunctionsError> {
        self.conn().execute(
            "INSERT INTO fn_provisioned (function, qualifier, requested, last_modified)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (function, qualifier) DO UPDATE
             SET requested = excluded.requested, last_modified = excluded.last_modified",
            params![p.function, p.qualifier, p.requested, p.last_modified],
        )?;
        Ok(())
    }

    /// Provisioned-concurrency configs: of one function, or (empty) all.
    pub fn list_provisioned(
        &self,
        function: &str,
    ) -> Result<Vec<ProvisionedConfig>, FunctionsError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT function, qualifier, requested, last_modified FROM fn_provisioned
             WHERE ?1 = '' OR function = ?1 ORDER BY function, qualifier",
        )?;
        let rows = stmt.query_map(params![function], |r| {
            Ok(ProvisionedConfig {
                function: r.get(0)?,
                qualifier: r.get(1)?,
                requested: r.get(2)?,
                last_modified: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn delete_provisioned(
        &self,
        function: &str,
        qualifier: &str,
    ) -> Result<(), FunctionsError> {
        let n = self.conn().execute(
            "DELETE FROM fn_provisioned WHERE function = ?1 AND qualifier = ?2",
            params![function, qualifier],
        )?;
        if n == 0 {
            return Err(FunctionsError::ProvisionedNotFound(format!(
                "{function}:{qualifier}"
            )));
        }
        Ok(())
    }

    // --------------------------------------------------------------- layers

    /// Stores a new version of a layer; assigns its number.
    pub fn publish_layer(&self, mut l: LayerVersion) -> Result<LayerVersion, FunctionsError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let next: i64 = tx
            .query_row(
                "SELECT next_version FROM layer_names WHERE name = ?1",
                params![l.name],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(1);
        l.version = next as u64;
        tx.execute(
            "INSERT INTO layer_versions (name, version, record) VALUES (?1, ?2, ?3)",
            params![l.name, next, to_json(&l.name, &l)?],
        )?;
        tx.execute(
            "INSERT INTO layer_names (name, next_version) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET next_version = excluded.next_version",
            params![l.name, next + 1],
        )?;
        tx.commit()?;
        Ok(l)
    }

    pub fn get_layer(&self, name: &str, version: u64) -> Result<LayerVersion, FunctionsError> {
        let rec: Option<String> = self
            .conn()
            .query_row(
                "SELECT record FROM layer_versions WHERE name = ?1 AND version = ?2",
                params![name, version as i64],
                |r| r.get(0),
            )
            .optional()?;
        match rec {
            Some(rec) => from_json(name, &rec),
            None => Err(FunctionsError::LayerNotFound(format!("{name}:{version}"))),
        }
    }

    pub fn list_layer_versions(&self, name: &str) -> Result<Vec<LayerVersion>, FunctionsError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT record FROM layer_versions WHERE name = ?1 ORDER BY version DESC")?;
        let rows = stmt.query_map(params![name], |r| r.get::<_, String>(0))?;
        rows.map(|r| from_json(name, &r?)).collect()
    }

    /// The latest version of every layer.
    pub fn list_layers(&self) -> Result<Vec<LayerVersion>, FunctionsError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT record FROM layer_versions l WHERE version =
                (SELECT MAX(version) FROM layer_versions WHERE name = l.name) ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.map(|r| from_json("layer", &r?)).collect()
    }

    pub fn delete_layer(&self, name: &str, version: u64) -> Result<LayerVersion, FunctionsError> {
        let l = self.get_layer(name, version)?;
        self.conn().execute(
            "DELETE FROM layer_versions WHERE name = ?1 AND version = ?2",
            params![name, version as i64],
        )?;
        Ok(l)
    }

    // -------------------------------------------------------------- scaling

    /// Creates or replaces a scalable target (with its policies).
    pub fn put_scaling(&self, t: &ScalableTarget) -> Result<(), FunctionsError> {
        self.conn().execute(
            "INSERT INTO fn_scaling (function, qualifier, record) VALUES (?1, ?2, ?3)
             ON CONFLICT(function, qualifier) DO UPDATE SET record = excluded.record",
            params![t.function, t.qualifier, to_json(&t.function, t)?],
        )?;
        Ok(())
    }

    /// The scalable targets of a function (every function's with `""`).
    pub fn list_scaling(&self, function: &str) -> Result<Vec<ScalableTarget>, FunctionsError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT record FROM fn_scaling WHERE ?1 = '' OR function = ?1
             ORDER BY function, qualifier",
        )?;
        let rows = stmt.query_map(params![function], |r| r.get::<_, String>(0))?;
        rows.map(|r| from_json("scalable target", &r?)).collect()
    }

    /// Deletes a scalable target; `false` if there was none.
    pub fn delete_scaling(&self, function: &str, qualifier: &str) -> Result<bool, FunctionsError> {
        let n = self.conn().execute(
            "DELETE FROM fn_scaling WHERE function = ?1 AND qualifier = ?2",
            params![function, qualifier],
        )?;
        Ok(n > 0)
    }

    // ------------------------------------------------------------------ gc

    // ------------------------------------------------- event invoke config

    /// Stores (replaces) an event invoke configuration.
    pub fn put_event_config(&self, c: &EventInvokeConfig) -> Result<(), FunctionsError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO fn_event_invoke (function, qualifier, record) VALUES (?1, ?2, ?3)",
            params![c.function, c.qualifier, to_json(&c.function, c)?],
        )?;
        Ok(())
    }

    pub fn get_event_config(
        &self,
        function: &str,
        qualifier: &str,
    ) -> Result<Option<EventInvokeConfig>, FunctionsError> {
        let rec: Option<String> = self
            .conn()
            .query_row(
                "SELECT record FROM fn_event_invoke WHERE function = ?1 AND qualifier = ?2",
                params![function, qualifier],
                |r| r.get(0),
            )
            .optional()?;
        rec.map(|r| from_json(function, &r)).transpose()
    }

    pub fn list_event_configs(
        &self,
        function: &str,
    ) -> Result<Vec<EventInvokeConfig>, FunctionsError> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT record FROM fn_event_invoke WHERE function = ?1 ORDER BY qualifier")?;
        let rows = st.query_map(params![function], |r| r.get::<_, String>(0))?;
        rows.map(|r| from_json(function, &r?)).collect()
    }

    /// Removes a configuration; false when there was none.
    pub fn delete_event_config(
        &self,
        function: &str,
        qualifier: &str,
    ) -> Result<bool, FunctionsError> {
        let n = self.conn().execute(
            "DELETE FROM fn_event_invoke WHERE function = ?1 AND qualifier = ?2",
            params![function, qualifier],
        )?;
        Ok(n > 0)
    }

    /// Digests of every package still referenced: function code (all
    /// versions) and layers (published ones and those functions use).
    pub fn referenced_packages(&self) -> Result<HashSet<String>, FunctionsError> {
        let mut out = HashSet::new();
        let conn = self.conn();
        for sql in [
            "SELECT record FROM fn_latest",
            "SELECT record FROM fn_versions",
        ] {
            let mut stmt = conn.prepare(sql)?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            for r in rows {
                let f: Function = from_json("function", &r?)?;
                out.insert(f.code_sha256_hex);
                out.extend(f.layers.into_iter().map(|l| l.sha256_hex));
            }
        }
        let mut stmt = conn.prepare("SELECT record FROM layer_versions")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        for r in rows {
            let l: LayerVersion = from_json("layer", &r?)?;
            out.insert(l.sha256_hex);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::Runtime;

    fn f(name: &str) -> Function {
        Function {
            dead_letter_target: None,
            network: Default::default(),
            name: name.into(),
            version: LATEST.into(),
            runtime: Runtime::Python311,
            handler: "app.handler".into(),
            memory_mb: 128,
            timeout_s: 3,
            environment: [("A".to_string(), "1".to_string())].into(),
            description: String::new(),
            code_sha256_hex: "ab".into(),
            code_sha256_b64: "qw==".into(),
            code_size: 10,
            unzipped_size: 20,
            layers: vec![],
            ephemeral_mb: 512,
            last_modified: "now".into(),
            revision: 1,
        }
    }

    fn store() -> (tempfile::TempDir, FunctionStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = FunctionStore::open(&dir.path().join("db")).unwrap();
        (dir, s)
    }

    #[test]
    fn round_trip_conflict_and_delete() {
        let (dir, s) = store();
        s.insert(&f("a")).unwrap();
        s.insert(&f("b")).unwrap();
        assert!(matches!(
            s.insert(&f("a")),
            Err(FunctionsError::AlreadyExists(_))
        ));
        assert_eq!(s.get("a").unwrap(), f("a"));
        assert_eq!(s.list().unwrap().len(), 2);
        assert!(s.referenced_packages().unwrap().contains("ab"));
        s.delete("a").unwrap();
        assert!(matches!(s.get("a"), Err(FunctionsError::NotFound(_))));
        drop(s);
        let s = FunctionStore::open(&dir.path().join("db")).unwrap();
        assert_eq!(s.list().unwrap(), vec![f("b")]);
    }

    #[test]
    fn event_invoke_configs_survive_a_reopen_and_go_with_their_alias_or_function() {
        use crate::functions::event_config::EventInvokeConfig;
        let (dir, s) = store();
        s.insert(&f("a")).unwrap();
        let mut dlq = f("a");
        dlq.dead_letter_target = Some("arn:aws:sqs:r:a:dlq".into());
        s.update(&dlq).unwrap();
        let c = |q: &str| EventInvokeConfig {
            maximum_retry_attempts: Some(1),
            ..EventInvokeConfig::defaults("a", q)
        };
        s.put_event_config(&c(LATEST)).unwrap();
        s.put_event_config(&c("live")).unwrap();
        s.insert_alias(&Alias {
            function: "a".into(),
            name: "live".into(),
            version: "1".into(),
            description: String::new(),
            additional: None,
        })
        .unwrap();
        drop(s);
        let s = FunctionStore::open(&dir.path().join("db")).unwrap();
        assert_eq!(s.get_event_config("a", LATEST).unwrap(), Some(c(LATEST)));
        assert_eq!(s.list_event_configs("a").unwrap().len(), 2);
        assert_eq!(
            s.get("a").unwrap().dead_letter_target.as_deref(),
            Some("arn:aws:sqs:r:a:dlq")
        );
        s.delete_alias("a", "live").unwrap();
        assert_eq!(s.get_event_config("a", "live").unwrap(), None);
        s.delete("a").unwrap();
        assert!(s.list_event_configs("a").unwrap().is_empty());
        assert!(!s.delete_event_config("a", LATEST).unwrap());
    }

    #[test]
    fn publishing_numbers_versions_and_dedupes_unchanged_code() {
        let (_d, s) = store();
        s.insert(&f("a")).unwrap();
        let v1 = s.publish_version("a", "").unwrap();
        assert_eq!(v1.version, "1");
        assert_eq!(s.publish_version("a", "").unwrap().version, "1");
        let mut changed = f("a");
        changed.code_sha256_hex = "cd".into();
        s.update(&changed).unwrap();
        assert_eq!(s.publish_version("a", "second").unwrap().version, "2");
        // A new dead-letter queue is a new configuration: a new version.
        changed.dead_letter_target = Some("arn:aws:sqs:r:a:dlq".into());
        s.update(&changed).unwrap();
        let v3 = s.publish_version("a", "").unwrap();
        assert_eq!(v3.version, "3");
        assert_eq!(v3.dead_letter_target, changed.dead_letter_target);
        let vs = s.list_versions("a").unwrap();
        assert_eq!(vs.len(), 3);
        assert_eq!(vs[1].description, "second");
        assert_eq!(s.get_qualified("a", "1").unwrap().code_sha256_hex, "ab");
        assert!(matches!(
            s.get_version("a", 9),
            Err(FunctionsError::NotFound(_))
        ));
        // Deleting the function deletes its versions; numbers restart only
        // for a new function.
        assert_eq!(s.delete("a").unwrap().len(), 4);
        assert!(s.list_versions("a").unwrap().is_empty());
    }

    #[test]
    fn aliases_and_layers() {
        let (_d, s) = store();
        let a = Alias {
            function: "f".into(),
            name: "live".into(),
            version: "1".into(),
            description: String::new(),
            additional: Some(("2".into(), 0.2)),
        };
        s.insert_alias(&a).unwrap();
        assert!(matches!(
            s.insert_alias(&a),
            Err(FunctionsError::AliasExists(_))
        ));
        assert_eq!(s.get_alias("f", "live").unwrap(), a);
        s.delete_alias("f", "live").unwrap();
        assert!(matches!(
            s.get_alias("f", "live"),
            Err(FunctionsError::AliasNotFound(_))
        ));

        let l = LayerVersion {
            name: "deps".into(),
            version: 0,
            description: String::new(),
            compatible_runtimes: vec![],
            sha256_hex: "ee".into(),
            sha256_b64: String::new(),
            code_size: 1,
            unzipped_size: 1,
            created: "now".into(),
        };
        assert_eq!(s.publish_layer(l.clone()).unwrap().version, 1);
        assert_eq!(s.publish_layer(l.clone()).unwrap().version, 2);
        s.delete_layer("deps", 2).unwrap();
        // Numbers are never reused.
        assert_eq!(s.publish_layer(l).unwrap().version, 3);
        assert_eq!(s.list_layers().unwrap()[0].version, 3);
        assert_eq!(s.list_layer_versions("deps").unwrap().len(), 2);
    }

    #[test]
    fn scalable_targets_survive_a_reopen_and_go_with_their_alias_or_function() {
        use crate::functions::scaling::{ScalableTarget, ScalingPolicy};
        let (dir, s) = store();
        s.insert(&f("a")).unwrap();
        let t = |q: &str| ScalableTarget {
            function: "a".into(),
            qualifier: q.into(),
            min_capacity: 1,
            max_capacity: 4,
            created: "now".into(),
            policies: vec![ScalingPolicy {
                name: "p".into(),
                target_value: 0.7,
                scale_out_cooldown_s: 0,
                scale_in_cooldown_s: 30,
                disable_scale_in: false,
                created: "now".into(),
            }],
        };
        s.put_scaling(&t("live")).unwrap();
        s.put_scaling(&t("2")).unwrap();
        drop(s);
        let s = FunctionStore::open(&dir.path().join("db")).unwrap();
        assert_eq!(s.list_scaling("a").unwrap(), vec![t("2"), t("live")]);
        assert!(s.delete_scaling("a", "2").unwrap());
        assert!(!s.delete_scaling("a", "2").unwrap());
        s.delete("a").unwrap();
        assert!(s.list_scaling("").unwrap().is_empty());
    }
}
