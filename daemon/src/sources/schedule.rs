//! Schedules (EventBridge Scheduler's shape): a function invoked
//! asynchronously at the times of a `rate`, `cron` or `at` expression, with
//! EventBridge's scheduled-event JSON (or the target's `Input`).
//!
//! Definitions live in `sources.db`. Each firing is queued as an
//! asynchronous event in the same transaction that records the schedule's
//! last firing time (in `events.db`), so a firing happens exactly once even
//! across a crash. Occurrences that came due while flintd was down (or
//! behind) fire once, late, for the latest of them; how many were folded
//! into it is logged and shown (`missed`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::expr::{time_zone, Schedule};
use super::{Sources, SourcesError};

/// A schedule as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleDef {
    pub name: String,
    pub expression: String,
    /// IANA name; empty: UTC.
    pub timezone: String,
    pub function_name: String,
    pub qualifier: String,
    /// The target's `Input`: the payload instead of the scheduled event.
    pub input: Option<String>,
    pub enabled: bool,
    pub description: String,
    pub created_ms: i64,
    pub modified_ms: i64,
}

/// What `create-schedule` and `update-schedule` give.
#[derive(Debug, Clone, Default)]
pub struct ScheduleInput {
    pub name: String,
    pub expression: String,
    pub timezone: String,
    /// The function's ARN (with a qualifier or not) or its name.
    pub target_arn: String,
    pub input: Option<String>,
    /// `ENABLED` (default) or `DISABLED`.
    pub state: String,
    pub description: String,
    /// `OFF` (default); `FLEXIBLE` is not supported.
    pub flexible_time_window: String,
}

/// A schedule with what it has done.
#[derive(Debug, Clone)]
pub struct ScheduleView {
    pub def: ScheduleDef,
    pub next_ms: Option<i64>,
    pub last_ms: Option<i64>,
    pub invocations: u64,
    pub missed: u64,
    pub last_error: Option<String>,
}

/// In-memory counts per schedule since flintd started.
#[derive(Default, Clone)]
pub(super) struct Counts {
    missed: u64,
    last_error: Option<String>,
}

fn invalid(field: &'static str, rule: impl Into<String>) -> SourcesError {
    SourcesError::Invalid {
        field,
        rule: rule.into(),
    }
}

/// EventBridge Scheduler's name rule: 1 to 64 of `[0-9A-Za-z_.-]`.
fn validate_name(name: &str) -> Result<(), SourcesError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "Name",
            format!("{name:?}: 1 to 64 of A-Z a-z 0-9 - _ ."),
        ))
    }
}

pub(super) const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL
);";

impl super::mapping::MappingStore {
    pub fn put_schedule(&self, s: &ScheduleDef, create: bool) -> Result<(), SourcesError> {
        let body = serde_json::to_string(s).map_err(|e| SourcesError::Corrupt(e.to_string()))?;
        let c = self.conn();
        if create {
            let n = c.execute(
                "INSERT INTO schedules (name, body) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                params![s.name, body],
            )?;
            if n == 0 {
                return Err(SourcesError::Conflict(format!(
                    "the schedule {} exists",
                    s.name
                )));
            }
        } else {
            let n = c.execute(
                "UPDATE schedules SET body = ?2 WHERE name = ?1",
                params![s.name, body],
            )?;
            if n == 0 {
                return Err(SourcesError::NoSchedule(s.name.clone()));
            }
        }
        Ok(())
    }

    pub fn get_schedule(&self, name: &str) -> Result<ScheduleDef, SourcesError> {
        let b: Option<String> = self
            .conn()
            .query_row(
                "SELECT body FROM schedules WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?;
        let b = b.ok_or_else(|| SourcesError::NoSchedule(name.to_string()))?;
        serde_json::from_str(&b).map_err(|e| SourcesError::Corrupt(e.to_string()))
    }

    pub fn list_schedules(&self) -> Result<Vec<ScheduleDef>, SourcesError> {
        let c = self.conn();
        let mut st = c.prepare("SELECT body FROM schedules ORDER BY name")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for b in rows {
            out.push(serde_json::from_str(&b?).map_err(|e| SourcesError::Corrupt(e.to_string()))?);
        }
        Ok(out)
    }

    pub fn delete_schedule(&self, name: &str) -> Result<(), SourcesError> {
        let n = self
            .conn()
            .execute("DELETE FROM schedules WHERE name = ?1", params![name])?;
        if n == 0 {
            return Err(SourcesError::NoSchedule(name.to_string()));
        }
        Ok(())
    }
}

impl Sources {
    fn schedule_def(
        &self,
        i: &ScheduleInput,
        created_ms: i64,
    ) -> Result<ScheduleDef, SourcesError> {
        validate_name(&i.name)?;
        Schedule::parse(&i.expression)?;
        time_zone(&i.timezone)?;
        let (region, account) = self.region_account();
        let (function_name, qualifier) =
            super::mapping::parse_function_name(&i.target_arn, &region, &account).map_err(
                |_| {
                    invalid(
                        "Target.Arn",
                        format!("{:?} is not a function", i.target_arn),
                    )
                },
            )?;
        self.invoker
            .resolve(&function_name, &qualifier)
            .map_err(|e| match e {
                crate::invoke::InvokeError::Functions(f) => SourcesError::Functions(f),
                other => invalid("Target.Arn", other.to_string()),
            })?;
        if let Some(input) = &i.input {
            if input.len() > crate::events::MAX_ASYNC_PAYLOAD {
                return Err(invalid("Target.Input", "at most 1 MB"));
            }
        }
        let enabled = match i.state.as_str() {
            "" | "ENABLED" => true,
            "DISABLED" => false,
            other => return Err(invalid("State", format!("{other:?}: ENABLED or DISABLED"))),
        };
        match i.flexible_time_window.as_str() {
            "" | "OFF" => {}
            other => {
                return Err(invalid(
                    "FlexibleTimeWindow.Mode",
                    format!("{other:?}: only OFF (every firing at its time)"),
                ))
            }
        }
        Ok(ScheduleDef {
            name: i.name.clone(),
            expression: i.expression.trim().to_string(),
            timezone: i.timezone.clone(),
            function_name,
            qualifier,
            input: i.input.clone(),
            enabled,
            description: i.description.clone(),
            created_ms,
            modified_ms: crate::time::now_ms(),
        })
    }

    pub fn create_schedule(&self, i: &ScheduleInput) -> Result<ScheduleDef, SourcesError> {
        let def = self.schedule_def(i, crate::time::now_ms())?;
        self.store.put_schedule(&def, true)?;
        self.wake_schedules.notify_one();
        Ok(def)
    }

    /// Replaces a schedule's settings, as EventBridge Scheduler's update
    /// does; a rate keeps counting from the schedule's creation.
    pub fn update_schedule(&self, i: &ScheduleInput) -> Result<ScheduleDef, SourcesError> {
        let old = self.store.get_schedule(&i.name)?;
        let def = self.schedule_def(i, old.created_ms)?;
        self.store.put_schedule(&def, false)?;
        self.wake_schedules.notify_one();
        Ok(def)
    }

    pub async fn delete_schedule(&self, name: &str) -> Result<(), SourcesError> {
        self.store.delete_schedule(name)?;
        self.events.forget_schedule(name).await?;
        self.counts().remove(name);
        Ok(())
    }

    pub fn get_schedule(&self, name: &str) -> Result<ScheduleDef, SourcesError> {
        self.store.get_schedule(name)
    }

    pub fn list_schedules(&self) -> Result<Vec<ScheduleDef>, SourcesError> {
        self.store.list_schedules()
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<String, Counts>> {
        self.schedule_counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub async fn schedule_view(&self, def: ScheduleDef) -> ScheduleView {
        let fired = self.events.schedule_fired(&def.name).await.ok().flatten();
        let next_ms = next_due(&def, fired.map(|f| f.0));
        let counts = self.counts().get(&def.name).cloned().unwrap_or_default();
        ScheduleView {
            next_ms: next_ms.filter(|_| def.enabled),
            last_ms: fired.map(|f| f.0),
            invocations: fired.map(|f| f.1).unwrap_or(0),
            missed: counts.missed,
            last_error: counts.last_error,
            def,
        }
    }

    /// Fires schedules as they come due, for ever.
    pub async fn run_schedules(self: Arc<Self>) {
        loop {
            let wait = match self.fire_due().await {
                Ok(next) => next
                    .map(|ms| ms - crate::time::now_ms())
                    .unwrap_or(1000)
                    .clamp(10, 1000),
                Err(e) => {
                    tracing::warn!(error = %e, "schedules could not be read");
                    1000
                }
            };
            tokio::select! {
                _ = self.wake_schedules.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
            }
        }
    }

    /// Fires what is due; answers when the next firing is.
    async fn fire_due(&self) -> Result<Option<i64>, SourcesError> {
        let (region, account) = self.region_account();
        let mut soonest: Option<i64> = None;
        for def in self.store.list_schedules()? {
            if !def.enabled {
                continue;
            }
            let last = self.events.schedule_fired(&def.name).await?.map(|f| f.0);
            let Some(first) = next_due(&def, last) else {
                continue;
            };
            let now = crate::time::now_ms();
            if first > now {
                soonest = Some(soonest.map_or(first, |s: i64| s.min(first)));
                continue;
            }
            let (latest, folded) = latest_due(&def, first, now);
            if folded > 0 {
                tracing::warn!(schedule = %def.name, folded,
                    "occurrences of a schedule came due while flintd was down or behind; they fire once, for the latest");
                self.counts().entry(def.name.clone()).or_default().missed += folded;
            }
            let payload = match &def.input {
                Some(input) => input.clone().into_bytes(),
                None => json!({
                    "version": "0",
                    "id": uuid::Uuid::new_v4().to_string(),
                    "detail-type": "Scheduled Event",
                    "source": "aws.events",
                    "account": account,
                    "time": crate::time::rfc3339_s(latest),
                    "region": region,
                    "resources": [schedule_arn(&region, &account, &def.name)],
                    "detail": {},
                })
                .to_string()
                .into_bytes(),
            };
            match self
                .events
                .fire_schedule(
                    &def.name,
                    latest,
                    &def.function_name,
                    &def.qualifier,
                    payload,
                )
                .await
            {
                Ok(true) => {
                    tracing::info!(schedule = %def.name, function = %def.function_name,
                        at = %crate::time::rfc3339_s(latest), "a schedule fired");
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(schedule = %def.name, error = %e, "a schedule could not fire; it is tried again");
                    self.counts()
                        .entry(def.name.clone())
                        .or_default()
                        .last_error = Some(e.to_string());
                }
            }
        }
        Ok(soonest)
    }
}

pub fn schedule_arn(region: &str, account: &str, name: &str) -> String {
    format!("arn:aws:scheduler:{region}:{account}:schedule/default/{name}")
}

/// The first occurrence after the last firing (or the creation).
fn next_due(def: &ScheduleDef, last_fire_ms: Option<i64>) -> Option<i64> {
    let expr = Schedule::parse(&def.expression).ok()?;
    let tz = time_zone(&def.timezone).ok()?;
    expr.next_after(last_fire_ms.unwrap_or(def.created_ms), def.created_ms, tz)
}

/// The latest occurrence at or before `now`, from `first`; and how many
/// earlier ones it folds in.
fn latest_due(def: &ScheduleDef, first: i64, now: i64) -> (i64, u64) {
    let (Ok(expr), Ok(tz)) = (Schedule::parse(&def.expression), time_zone(&def.timezone)) else {
        return (first, 0);
    };
    let mut latest = first;
    let mut folded = 0u64;
    // A rate's occurrences are counted without walking them.
    if let Schedule::Rate { every_ms } = expr {
        let k = (now - first) / every_ms;
        return (first + k * every_ms, k as u64);
    }
    while folded < 100_000 {
        match expr.next_after(latest, def.created_ms, tz) {
            Some(n) if n <= now => {
                latest = n;
                folded += 1;
            }
            _ => break,
        }
    }
    (latest, folded)
}

/// Shared state the scheduler needs beside the mappings'.
pub(super) type ScheduleCounts = Mutex<HashMap<String, Counts>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn def(expr: &str, created: i64) -> ScheduleDef {
        ScheduleDef {
            name: "s".into(),
            expression: expr.into(),
            timezone: String::new(),
            function_name: "f".into(),
            qualifier: String::new(),
            input: None,
            enabled: true,
            description: String::new(),
            created_ms: created,
            modified_ms: created,
        }
    }

    #[test]
    fn missed_occurrences_fold_into_the_latest() {
        let d = def("rate(1 minute)", 0);
        let first = next_due(&d, None).unwrap();
        assert_eq!(first, 60_000);
        // Down for ten minutes: one firing, for minute 10, folding nine.
        assert_eq!(latest_due(&d, first, 630_000), (600_000, 9));
        assert_eq!(next_due(&d, Some(600_000)), Some(660_000));
        let c = def("cron(* * * * ? *)", 0);
        let first = next_due(&c, None).unwrap();
        assert_eq!(first, 60_000);
        assert_eq!(latest_due(&c, first, 185_000), (180_000, 2));
        assert!(validate_name("nightly-report.v2").is_ok());
        assert!(validate_name("a/b").is_err());
    }
}
