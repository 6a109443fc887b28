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
pub const STREAM_BATCH_DEFAULT: u32 = 100;
pub const MAX_PARALLELIZATION: u32 = 10;
pub const MAX_RETRY_ATTEMPTS: i64 = 10_000;
pub const RECORD_AGE_RANGE_S: (i64, i64) = (60, 604_800);
pub const MAX_TUMBLING_WINDOW_S: u32 = 900;
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
    /// A Kinesis-shaped stream on the broker, by name.
    Stream(String),
}

impl SourceKind {
    pub fn is_stream(&self) -> bool {
        matches!(self, SourceKind::Stream(_))
    }
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
    /// Streams: `TRIM_HORIZON`, `LATEST` or `AT_TIMESTAMP`.
    #[serde(default)]
    pub starting_position: Option<String>,
    #[serde(default)]
    pub starting_position_timestamp_ms: Option<i64>,
    #[serde(default = "one")]
    pub parallelization_factor: u32,
    #[serde(default)]
    pub bisect_on_error: bool,
    /// -1: until the record expires.
    #[serde(default = "minus_one")]
    pub max_retry_attempts: i64,
    /// -1: no limit.
    #[serde(default = "minus_one")]
    pub max_record_age_s: i64,
    /// Streams: a queue ARN for the metadata of batches that failed for
    /// good.
    #[serde(default)]
    pub on_failure: Option<String>,
    #[serde(default)]
    pub tumbling_window_s: u32,
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
    pub starting_position: Option<String>,
    pub starting_position_timestamp_ms: Option<i64>,
    pub parallelization_factor: Option<u32>,
    pub bisect_on_error: Option<bool>,
    pub max_retry_attempts: Option<i64>,
    pub max_record_age_s: Option<i64>,
    /// `Some("")` removes the destination.
    pub on_failure: Option<String>,
    pub tumbling_window_s: Option<u32>,
}

fn one() -> u32 {
    1
}

fn minus_one() -> i64 {
    -1
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
    if arn.starts_with("arn:aws:kinesis:") {
        return crate::broker::parse_stream_arn(arn, region, account)
            .map(SourceKind::Stream)
            .map_err(|e| invalid("EventSourceArn", e.to_string()));
    }
    Err(invalid(
        "EventSourceArn",
        format!("{arn:?}: this node reads queues (arn:aws:sqs:…) and streams (arn:aws:kinesis:…) on its broker"),
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
    /// A new mapping with Lambda's defaults for its kind of source, the
    /// change applied.
    pub fn new(
        uuid: String,
        event_source_arn: String,
        function_name: String,
        qualifier: String,
        kind: &SourceKind,
        change: &MappingChange,
    ) -> Result<Self, SourcesError> {
        let mut m = Mapping {
            uuid,
            event_source_arn,
            function_name,
            qualifier,
            enabled: true,
            batch_size: if kind.is_stream() {
                STREAM_BATCH_DEFAULT
            } else {
                QUEUE_BATCH_DEFAULT
            },
            window_s: 0,
            filters: Vec::new(),
            report_batch_item_failures: false,
            max_concurrency: None,
            starting_position: None,
            starting_position_timestamp_ms: None,
            parallelization_factor: 1,
            bisect_on_error: false,
            max_retry_attempts: -1,
            max_record_age_s: -1,
            on_failure: None,
            tumbling_window_s: 0,
            state: State::Creating,
            state_reason: "USER_INITIATED".into(),
            last_modified_ms: crate::time::now_ms(),
            last_processing_result: "No records processed".into(),
        };
        if kind.is_stream() && change.starting_position.is_none() {
            return Err(invalid(
                "StartingPosition",
                "a stream's mapping needs one: TRIM_HORIZON, LATEST or AT_TIMESTAMP",
            ));
        }
        m.apply(change, kind)?;
        Ok(m)
    }

    /// Applies a change and checks the result against Lambda's rules.
    pub fn apply(&mut self, c: &MappingChange, kind: &SourceKind) -> Result<(), SourcesError> {
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
        let stream_only = [
            ("StartingPosition", c.starting_position.is_some()),
            ("ParallelizationFactor", c.parallelization_factor.is_some()),
            ("BisectBatchOnFunctionError", c.bisect_on_error.is_some()),
            ("MaximumRetryAttempts", c.max_retry_attempts.is_some()),
            ("MaximumRecordAgeInSeconds", c.max_record_age_s.is_some()),
            ("DestinationConfig", c.on_failure.is_some()),
            ("TumblingWindowInSeconds", c.tumbling_window_s.is_some()),
        ];
        if !kind.is_stream() {
            if let Some((field, _)) = stream_only.iter().find(|(_, set)| *set) {
                return Err(invalid(field, "applies to streams, not queues"));
            }
            // SQS: a batch of more than 10 needs a batching window.
            if self.batch_size > 10 && self.window_s == 0 {
                return Err(invalid(
                    "MaximumBatchingWindowInSeconds",
                    "a BatchSize over 10 needs a batching window of at least 1 second",
                ));
            }
        } else {
            if c.max_concurrency.is_some_and(|m| m.is_some()) {
                return Err(invalid(
                    "ScalingConfig",
                    "applies to queues; a stream scales by ParallelizationFactor",
                ));
            }
            self.apply_stream(c)?;
        }
        self.last_modified_ms = crate::time::now_ms();
        Ok(())
    }

    fn apply_stream(&mut self, c: &MappingChange) -> Result<(), SourcesError> {
        if let Some(p) = &c.starting_position {
            if self
                .starting_position
                .as_deref()
                .is_some_and(|cur| cur != p)
            {
                return Err(invalid(
                    "StartingPosition",
                    "cannot change once the mapping exists",
                ));
            }
            match p.as_str() {
                "TRIM_HORIZON" | "LATEST" => {}
                "AT_TIMESTAMP" => {
                    if c.starting_position_timestamp_ms.is_none() {
                        return Err(invalid(
                            "StartingPositionTimestamp",
                            "AT_TIMESTAMP needs a timestamp",
                        ));
                    }
                    self.starting_position_timestamp_ms = c.starting_position_timestamp_ms;
                }
                other => {
                    return Err(invalid(
                        "StartingPosition",
                        format!("{other:?}: TRIM_HORIZON, LATEST or AT_TIMESTAMP"),
                    ))
                }
            }
            self.starting_position = Some(p.clone());
        }
        if let Some(f) = c.parallelization_factor {
            if !(1..=MAX_PARALLELIZATION).contains(&f) {
                return Err(invalid(
                    "ParallelizationFactor",
                    format!("must be between 1 and {MAX_PARALLELIZATION} (got {f})"),
                ));
            }
            self.parallelization_factor = f;
        }
        if let Some(b) = c.bisect_on_error {
            self.bisect_on_error = b;
        }
        if let Some(r) = c.max_retry_attempts {
            if !(-1..=MAX_RETRY_ATTEMPTS).contains(&r) {
                return Err(invalid(
                    "MaximumRetryAttempts",
                    format!("must be between -1 and {MAX_RETRY_ATTEMPTS} (got {r})"),
                ));
            }
            self.max_retry_attempts = r;
        }
        if let Some(a) = c.max_record_age_s {
            let (lo, hi) = RECORD_AGE_RANGE_S;
            if a != -1 && !(lo..=hi).contains(&a) {
                return Err(invalid(
                    "MaximumRecordAgeInSeconds",
                    format!("must be -1 or between {lo} and {hi} (got {a})"),
                ));
            }
            self.max_record_age_s = a;
        }
        if let Some(d) = &c.on_failure {
            self.on_failure = if d.is_empty() {
                None
            } else if d.starts_with("arn:aws:sqs:") {
                Some(d.clone())
            } else {
                return Err(invalid(
                    "DestinationConfig.OnFailure",
                    format!(
                        "{d:?}: the on-failure destination of a stream is a queue (arn:aws:sqs:…)"
                    ),
                ));
            };
        }
        if let Some(w) = c.tumbling_window_s {
            if w > MAX_TUMBLING_WINDOW_S {
                return Err(invalid(
                    "TumblingWindowInSeconds",
                    format!("must be between 0 and {MAX_TUMBLING_WINDOW_S} (got {w})"),
                ));
            }
            self.tumbling_window_s = w;
        }
        if self.tumbling_window_s > 0 && self.parallelization_factor > 1 {
            return Err(invalid(
                "TumblingWindowInSeconds",
                "Flint keeps a window's state per shard: tumbling windows need ParallelizationFactor 1",
            ));
        }
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
             );
             CREATE TABLE IF NOT EXISTS checkpoints (
                 uuid TEXT NOT NULL,
                 shard TEXT NOT NULL,
                 -- The last sequence number processed; NULL: before the
                 -- oldest record.
                 sequence TEXT,
                 -- Tumbling windows: the open window's start (ms) and state.
                 window_start INTEGER,
                 window_state TEXT,
                 PRIMARY KEY (uuid, shard)
             );",
        )?;
        conn.execute_batch(super::schedule::SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    pub(super) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
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
        let c = self.conn();
        c.execute("DELETE FROM checkpoints WHERE uuid = ?1", params![uuid])?;
        c.execute("DELETE FROM mappings WHERE uuid = ?1", params![uuid])?;
        Ok(())
    }

    /// A shard's checkpoint, if one was stored.
    pub fn checkpoint(&self, uuid: &str, shard: &str) -> Result<Option<Checkpoint>, SourcesError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT sequence, window_start, window_state FROM checkpoints
                 WHERE uuid = ?1 AND shard = ?2",
                params![uuid, shard],
                |r| {
                    Ok(Checkpoint {
                        sequence: r.get(0)?,
                        window_start_ms: r.get(1)?,
                        window_state: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Stores a shard's checkpoint (synced: a restart resumes here).
    pub fn save_checkpoint(
        &self,
        uuid: &str,
        shard: &str,
        cp: &Checkpoint,
    ) -> Result<(), SourcesError> {
        self.conn().execute(
            "INSERT INTO checkpoints (uuid, shard, sequence, window_start, window_state)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (uuid, shard) DO UPDATE SET sequence = ?3, window_start = ?4,
             window_state = ?5",
            params![
                uuid,
                shard,
                cp.sequence,
                cp.window_start_ms,
                cp.window_state
            ],
        )?;
        Ok(())
    }
}

/// Where a stream mapping is in one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last sequence number processed; `None`: before the oldest.
    pub sequence: Option<String>,
    pub window_start_ms: Option<i64>,
    pub window_state: Option<String>,
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

    fn q() -> SourceKind {
        SourceKind::Queue("q".into())
    }

    #[test]
    fn stream_fields_and_ranges() {
        let st = SourceKind::Stream("s".into());
        let new = |c: &MappingChange| {
            Mapping::new("u".into(), "arn".into(), "f".into(), "".into(), &st, c)
        };
        assert!(
            new(&change()).is_err(),
            "a stream needs a starting position"
        );
        let base = MappingChange {
            starting_position: Some("TRIM_HORIZON".into()),
            ..change()
        };
        let m = new(&base).unwrap();
        assert_eq!(m.batch_size, 100);
        assert_eq!((m.max_retry_attempts, m.max_record_age_s), (-1, -1));
        let bad = [
            MappingChange {
                starting_position: Some("EARLIEST".into()),
                ..change()
            },
            MappingChange {
                starting_position: Some("AT_TIMESTAMP".into()),
                ..change()
            },
            MappingChange {
                parallelization_factor: Some(11),
                ..base.clone()
            },
            MappingChange {
                max_retry_attempts: Some(-2),
                ..base.clone()
            },
            MappingChange {
                max_record_age_s: Some(59),
                ..base.clone()
            },
            MappingChange {
                tumbling_window_s: Some(901),
                ..base.clone()
            },
            MappingChange {
                on_failure: Some("arn:aws:sns:x".into()),
                ..base.clone()
            },
            MappingChange {
                max_concurrency: Some(Some(5)),
                ..base.clone()
            },
        ];
        for c in bad {
            assert!(new(&c).is_err(), "{c:?}");
        }
        // Stream settings on a queue are errors.
        assert!(Mapping::new("u".into(), "a".into(), "f".into(), "".into(), &q(), &base).is_err());
    }

    #[test]
    fn defaults_and_ranges() {
        let m = Mapping::new(
            "u".into(),
            "arn".into(),
            "f".into(),
            "".into(),
            &q(),
            &change(),
        )
        .unwrap();
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
                Mapping::new("u".into(), "arn".into(), "f".into(), "".into(), &q(), &c).is_err(),
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
        let m = Mapping::new("u".into(), "arn".into(), "f".into(), "".into(), &q(), &ok).unwrap();
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
        let m = Mapping::new(
            "u1".into(),
            "a".into(),
            "f".into(),
            "".into(),
            &q(),
            &change(),
        )
        .unwrap();
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
