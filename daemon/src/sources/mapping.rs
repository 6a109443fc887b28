//! An event source mapping as Lambda's API has it: its fields, their
//! ranges and defaults, and the store that keeps mappings and their states
//! across restarts (`DATA_DIR/sources.db`).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::filter::Filters;
use super::SourcesError;

/// Lambda's bounds.
pub const MAX_BATCH_SIZE: u32 = 10_000;
pub const QUEUE_BATCH_DEFAULT: u32 = 10;
pub const MAX_WINDOW_S: u32 = 300;
pub const CONCURRENCY_RANGE: (u32, u32) = (2, 1000);

/// A mapping's lifecycle, as Lambda names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Creating,
    Enabling,
    Enabled,
    Disabling,
    Disabled,
    Updating,
    Deleting,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Creating => "Creating",
            State::Enabling => "Enabling",
            State::Enabled => "Enabled",
            State::Disabling => "Disabling",
            State::Disabled => "Disabled",
            State::Updating => "Updating",
            State::Deleting => "Deleting",
        }
    }

    /// Whether the poller should run once the state settles.
    pub fn settles_enabled(self, enabled: bool) -> Option<State> {
        match self {
            State::Creating | State::Updating | State::Enabling | State::Disabling => {
                Some(if enabled {
                    State::Enabled
                } else {
                    State::Disabled
                })
            }
            _ => None,
        }
    }
}

/// What a mapping reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// An SQS-shaped queue on the broker, by name.
    Queue(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mapping {
    pub uuid: String,
    pub event_source_arn: String,
    pub function_name: String,
    /// Empty: `$LATEST`.
    pub qualifier: String,
    pub enabled: bool,
    pub batch_size: u32,
    pub window_s: u32,
    pub filters: Vec<String>,
    pub report_batch_item_failures: bool,
    pub max_concurrency: Option<u32>,
    pub state: State,
    pub state_reason: String,
    pub last_modified_ms: i64,
    /// "No records processed", "OK", or "PROBLEM: …".
    pub last_processing_result: String,
}

/// Fields of a create or an update; `None` keeps the current value (or
/// takes the default on create).
#[derive(Debug, Clone, Default)]
pub struct MappingChange {
    pub enabled: Option<bool>,
    pub batch_size: Option<u32>,
    pub window_s: Option<u32>,
    pub filters: Option<Vec<String>>,
    pub function_response_types: Option<Vec<String>>,
    /// `Some(None)` removes the limit.
    pub max_concurrency: Option<Option<u32>>,
}

fn invalid(field: &'static str, rule: impl Into<String>) -> SourcesError {
    SourcesError::Invalid {
        field,
        rule: rule.into(),
    }
}

/// The kind of source an ARN names, on this node's region and account.
pub fn source_kind(arn: &str, region: &str, account: &str) -> Result<SourceKind, SourcesError> {
    if arn.starts_with("arn:aws:sqs:") {
        return crate::broker::parse_queue_arn(arn, region, account)
            .map(SourceKind::Queue)
            .map_err(|e| invalid("EventSourceArn", e.to_string()));
    }
    Err(invalid(
        "EventSourceArn",
        format!("{arn:?}: this node reads queues on its broker (arn:aws:sqs:…); Kinesis-shaped streams have not landed"),
    ))
}

/// `FunctionName` as Lambda takes it: a name, `NAME:QUALIFIER`, or a
/// function ARN (with or without a qualifier).
pub fn parse_function_name(
    s: &str,
    region: &str,
    account: &str,
) -> Result<(String, String), SourcesError> {
    use crate::functions::event_config::{parse_destination, Destination};
    let (name, qualifier) = if s.starts_with("arn:") {
        match parse_destination(s, region, account)
            .map_err(|e| invalid("FunctionName", e.to_string()))?
        {
            Destination::Function { name, qualifier } => (name, qualifier),
            _ => return Err(invalid("FunctionName", format!("{s:?} is not a function"))),
        }
    } else {
        let (n, q) = s.split_once(':').unwrap_or((s, ""));
        (n.to_string(), q.to_string())
    };
    crate::functions::validate_name(&name)
        .map_err(|_| invalid("FunctionName", format!("{s:?} is not a function name")))?;
    if !qualifier.is_empty() {
        crate::functions::parse_qualifier(&qualifier)
            .map_err(|e| invalid("FunctionName", e.to_string()))?;
    }
    let qualifier = if qualifier == crate::functions::LATEST {
        String::new()
    } else {
        qualifier
    };
    Ok((name, qualifier))
}

impl Mapping {
    /// A new mapping with Lambda's defaults, the change applied.
    pub fn new(
        uuid: String,
        event_source_arn: String,
        function_name: String,
        qualifier: String,
        change: &MappingChange,
    ) -> Result<Self, SourcesError> {
        let mut m = Mapping {
            uuid,
            event_source_arn,
            function_name,
            qualifier,
            enabled: true,
            batch_size: QUEUE_BATCH_DEFAULT,
            window_s: 0,
            filters: Vec::new(),
            report_batch_item_failures: false,
            max_concurrency: None,
            state: State::Creating,
            state_reason: "USER_INITIATED".into(),
            last_modified_ms: crate::time::now_ms(),
            last_processing_result: "No records processed".into(),
        };
        m.apply(change)?;
        Ok(m)
    }

    /// Applies a change and checks the result against Lambda's rules.
    pub fn apply(&mut self, c: &MappingChange) -> Result<(), SourcesError> {
        if let Some(e) = c.enabled {
            self.enabled = e;
        }
        if let Some(b) = c.batch_size {
            if !(1..=MAX_BATCH_SIZE).contains(&b) {
                return Err(invalid(
                    "BatchSize",
                    format!("must be between 1 and {MAX_BATCH_SIZE} (got {b})"),
                ));
            }
            self.batch_size = b;
        }
        if let Some(w) = c.window_s {
            if w > MAX_WINDOW_S {
                return Err(invalid(
                    "MaximumBatchingWindowInSeconds",
                    format!("must be between 0 and {MAX_WINDOW_S} (got {w})"),
                ));
            }
            self.window_s = w;
        }
        if let Some(f) = &c.filters {
            Filters::parse(f)?;
            self.filters = f.clone();
        }
        if let Some(t) = &c.function_response_types {
            for x in t {
                if x != "ReportBatchItemFailures" {
                    return Err(invalid(
                        "FunctionResponseTypes",
                        format!("{x:?}: the only type is ReportBatchItemFailures"),
                    ));
                }
            }
            self.report_batch_item_failures = !t.is_empty();
        }
        if let Some(mc) = c.max_concurrency {
            if let Some(n) = mc {
                let (lo, hi) = CONCURRENCY_RANGE;
                if !(lo..=hi).contains(&n) {
                    return Err(invalid(
                        "ScalingConfig.MaximumConcurrency",
                        format!("must be between {lo} and {hi} (got {n})"),
                    ));
                }
            }
            self.max_concurrency = mc;
        }
        // SQS: a batch of more than 10 needs a batching window.
        if self.batch_size > 10 && self.window_s == 0 {
            return Err(invalid(
                "MaximumBatchingWindowInSeconds",
                "a BatchSize over 10 needs a batching window of at least 1 second",
            ));
        }
        self.last_modified_ms = crate::time::now_ms();
        Ok(())
    }

    /// `NAME` or `NAME:QUALIFIER`, for messages.
    pub fn target(&self) -> String {
        if self.qualifier.is_empty() {
            self.function_name.clone()
        } else {
            format!("{}:{}", self.function_name, self.qualifier)
        }
    }
}

/// The mappings, durably.
pub struct MappingStore {
    conn: Mutex<Connection>,
}

impl MappingStore {
    pub fn open(path: &Path) -> Result<Self, SourcesError> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS mappings (
                 uuid TEXT PRIMARY KEY,
                 source_arn TEXT NOT NULL,
                 function TEXT NOT NULL,
                 body TEXT NOT NULL
             );",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a mapping; one of the same source and function (with the same
    /// qualifier) is `ResourceConflictException`.
    pub fn insert(&self, m: &Mapping) -> Result<(), SourcesError> {
        let c = self.conn();
        let existing: Option<String> = c
            .query_row(
                "SELECT uuid FROM mappings WHERE source_arn = ?1 AND function = ?2",
                params![m.event_source_arn, m.target()],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(uuid) = existing {
            return Err(SourcesError::Conflict(format!(
                "the event source {} is already mapped to {} (UUID {uuid})",
                m.event_source_arn,
                m.target()
            )));
        }
        c.execute(
            "INSERT INTO mappings (uuid, source_arn, function, body) VALUES (?1, ?2, ?3, ?4)",
            params![m.uuid, m.event_source_arn, m.target(), body(m)?],
        )?;
        Ok(())
    }

    pub fn put(&self, m: &Mapping) -> Result<(), SourcesError> {
        let n = self.conn().execute(
            "UPDATE mappings SET body = ?2 WHERE uuid = ?1",
            params![m.uuid, body(m)?],
        )?;
        if n == 0 {
            return Err(SourcesError::NotFound(m.uuid.clone()));
        }
        Ok(())
    }

    pub fn get(&self, uuid: &str) -> Result<Mapping, SourcesError> {
        let b: Option<String> = self
            .conn()
            .query_row(
                "SELECT body FROM mappings WHERE uuid = ?1",
                params![uuid],
                |r| r.get(0),
            )
            .optional()?;
        let b = b.ok_or_else(|| SourcesError::NotFound(uuid.to_string()))?;
        serde_json::from_str(&b).map_err(|e| SourcesError::Corrupt(e.to_string()))
    }

    pub fn list(&self) -> Result<Vec<Mapping>, SourcesError> {
        let c = self.conn();
        let mut st = c.prepare("SELECT body FROM mappings ORDER BY rowid")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for b in rows {
            out.push(serde_json::from_str(&b?).map_err(|e| SourcesError::Corrupt(e.to_string()))?);
        }
        Ok(out)
    }

    pub fn remove(&self, uuid: &str) -> Result<(), SourcesError> {
        self.conn()
            .execute("DELETE FROM mappings WHERE uuid = ?1", params![uuid])?;
        Ok(())
    }
}

fn body(m: &Mapping) -> Result<String, SourcesError> {
    serde_json::to_string(m).map_err(|e| SourcesError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change() -> MappingChange {
        MappingChange::default()
    }

    #[test]
    fn defaults_and_ranges() {
        let m = Mapping::new("u".into(), "arn".into(), "f".into(), "".into(), &change()).unwrap();
        assert_eq!((m.batch_size, m.window_s, m.enabled), (10, 0, true));
        assert_eq!(m.state, State::Creating);
        let bad = [
            MappingChange {
                batch_size: Some(0),
                ..change()
            },
            MappingChange {
                batch_size: Some(10_001),
                window_s: Some(1),
                ..change()
            },
            MappingChange {
                batch_size: Some(11),
                ..change()
            },
            MappingChange {
                window_s: Some(301),
                ..change()
            },
            MappingChange {
                max_concurrency: Some(Some(1)),
                ..change()
            },
            MappingChange {
                function_response_types: Some(vec!["Other".into()]),
                ..change()
            },
            MappingChange {
                filters: Some(vec!["{}".into()]),
                ..change()
            },
        ];
        for c in bad {
            assert!(
                Mapping::new("u".into(), "arn".into(), "f".into(), "".into(), &c).is_err(),
                "{c:?}"
            );
        }
        let ok = MappingChange {
            batch_size: Some(100),
            window_s: Some(1),
            max_concurrency: Some(Some(2)),
            function_response_types: Some(vec!["ReportBatchItemFailures".into()]),
            ..change()
        };
        let m = Mapping::new("u".into(), "arn".into(), "f".into(), "".into(), &ok).unwrap();
        assert!(m.report_batch_item_failures);
    }

    #[test]
    fn function_names_in_each_form() {
        let p = |s| parse_function_name(s, "us-east-1", "000000000000");
        assert_eq!(p("f").unwrap(), ("f".into(), "".into()));
        assert_eq!(p("f:live").unwrap(), ("f".into(), "live".into()));
        assert_eq!(p("f:$LATEST").unwrap(), ("f".into(), "".into()));
        assert_eq!(
            p("arn:aws:lambda:us-east-1:000000000000:function:f:3").unwrap(),
            ("f".into(), "3".into())
        );
        for bad in [
            "",
            "a/b",
            "arn:aws:lambda:eu-west-1:000000000000:function:f",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_mapping_per_source_and_function() {
        let dir = tempfile::tempdir().unwrap();
        let s = MappingStore::open(&dir.path().join("s.db")).unwrap();
        let m = Mapping::new("u1".into(), "a".into(), "f".into(), "".into(), &change()).unwrap();
        s.insert(&m).unwrap();
        let again = Mapping {
            uuid: "u2".into(),
            ..m.clone()
        };
        assert!(matches!(s.insert(&again), Err(SourcesError::Conflict(_))));
        let other = Mapping {
            uuid: "u3".into(),
            qualifier: "live".into(),
            ..m.clone()
        };
        s.insert(&other).unwrap();
        assert_eq!(s.list().unwrap().len(), 2);
        s.remove("u1").unwrap();
        assert!(matches!(s.get("u1"), Err(SourcesError::NotFound(_))));
    }
}
