//! Schedule expressions as EventBridge Scheduler takes them: `rate(N unit)`,
//! the six-field `cron(minutes hours day-of-month month day-of-week year)`
//! and the one-time `at(yyyy-mm-ddThh:mm:ss)`, the last two in an IANA
//! time zone (UTC by default).
//!
//! Cron fields take `*`, numbers, `a-b`, `a/step`, `*/step`, lists, month
//! names (`JAN`–`DEC`) and day names (`SUN`–`SAT`, where 1 is Sunday).
//! One of day-of-month and day-of-week is `?`. Day-of-month also takes
//! `L` (the last day); day-of-week takes `D#N` (the Nth such day of the
//! month). `W` and `L` in day-of-week are not supported (a typed error).

use std::collections::BTreeSet;

use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExprError {
    #[error("ScheduleExpression: {0}")]
    Invalid(String),
    #[error("ScheduleExpressionTimezone: {0:?} is not an IANA time zone")]
    TimeZone(String),
}

fn invalid(m: impl Into<String>) -> ExprError {
    ExprError::Invalid(m.into())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Rate { every_ms: i64 },
    Cron(Box<Cron>),
    At(NaiveDateTime),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: BTreeSet<u32>,
    hours: BTreeSet<u32>,
    /// `None`: `?`.
    days: Option<DaySpec>,
    months: BTreeSet<u32>,
    /// `None`: `?`. Values 1 (Sunday) to 7 (Saturday).
    weekdays: Option<WeekdaySpec>,
    years: BTreeSet<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DaySpec {
    Set(BTreeSet<u32>),
    Last,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum WeekdaySpec {
    Set(BTreeSet<u32>),
    /// The Nth (1–5) such weekday of the month.
    Nth(u32, u32),
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn value(s: &str, names: &[&str], lo: u32, hi: u32, field: &str) -> Result<u32, ExprError> {
    let upper = s.to_ascii_uppercase();
    if let Some(i) = names.iter().position(|n| *n == upper) {
        return Ok(i as u32 + lo);
    }
    let v: u32 = s
        .parse()
        .map_err(|_| invalid(format!("{field}: {s:?} is not a value")))?;
    if !(lo..=hi).contains(&v) {
        return Err(invalid(format!(
            "{field}: {v} is not between {lo} and {hi}"
        )));
    }
    Ok(v)
}

/// A cron field's set of values.
fn field(
    s: &str,
    lo: u32,
    hi: u32,
    names: &[&str],
    name: &str,
) -> Result<BTreeSet<u32>, ExprError> {
    let mut out = BTreeSet::new();
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => {
                let st: u32 = st
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| invalid(format!("{name}: {part:?} has a bad step")))?;
                (r, st)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                value(a, names, lo, hi, name)?,
                value(b, names, lo, hi, name)?,
            )
        } else {
            let a = value(range, names, lo, hi, name)?;
            (a, if part.contains('/') { hi } else { a })
        };
        if a > b {
            return Err(invalid(format!("{name}: {part:?} runs backwards")));
        }
        out.extend((a..=b).step_by(step as usize));
    }
    Ok(out)
}

impl Schedule {
    pub fn parse(expr: &str) -> Result<Self, ExprError> {
        let expr = expr.trim();
        let inner = |prefix: &str| {
            expr.strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(')'))
                .map(str::trim)
        };
        if let Some(r) = inner("rate(") {
            let (n, unit) = r
                .split_once(' ')
                .ok_or_else(|| invalid(format!("{expr:?}: rate(VALUE UNIT)")))?;
            let n: i64 = n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                invalid(format!("{expr:?}: the value is a positive whole number"))
            })?;
            let unit_ms = match unit.trim() {
                "minute" | "minutes" => 60_000,
                "hour" | "hours" => 3_600_000,
                "day" | "days" => 86_400_000,
                other => {
                    return Err(invalid(format!(
                        "{expr:?}: {other:?} is not minutes, hours or days"
                    )))
                }
            };
            return Ok(Schedule::Rate {
                every_ms: n * unit_ms,
            });
        }
        if let Some(r) = inner("at(") {
            let t = NaiveDateTime::parse_from_str(r, "%Y-%m-%dT%H:%M:%S")
                .map_err(|_| invalid(format!("{expr:?}: at(yyyy-mm-ddThh:mm:ss)")))?;
            return Ok(Schedule::At(t));
        }
        if let Some(r) = inner("cron(") {
            let f: Vec<&str> = r.split_whitespace().collect();
            if f.len() != 6 {
                return Err(invalid(format!(
                    "{expr:?}: cron takes six fields (minutes hours day-of-month month day-of-week year)"
                )));
            }
            let minutes = field(f[0], 0, 59, &[], "minutes")?;
            let hours = field(f[1], 0, 23, &[], "hours")?;
            let days = match f[2] {
                "?" => None,
                "L" => Some(DaySpec::Last),
                s if s.contains('W') || s.contains('L') => {
                    return Err(invalid(format!(
                        "day-of-month: {s:?}: W and nL are not supported"
                    )))
                }
                s => Some(DaySpec::Set(field(s, 1, 31, &[], "day-of-month")?)),
            };
            let months = field(f[3], 1, 12, &MONTHS, "month")?;
            let weekdays = match f[4] {
                "?" => None,
                s if s.contains('#') => {
                    let (d, n) = s.split_once('#').expect("contains #");
                    let d = value(d, &DAYS, 1, 7, "day-of-week")?;
                    let n: u32 = n
                        .parse()
                        .ok()
                        .filter(|n| (1..=5).contains(n))
                        .ok_or_else(|| invalid(format!("day-of-week: {s:?}: D#N with N 1 to 5")))?;
                    Some(WeekdaySpec::Nth(d, n))
                }
                s if s.contains('L') => {
                    return Err(invalid(format!("day-of-week: {s:?}: L is not supported")))
                }
                s => Some(WeekdaySpec::Set(field(s, 1, 7, &DAYS, "day-of-week")?)),
            };
            if days.is_some() == weekdays.is_some() {
                return Err(invalid(format!(
                    "{expr:?}: one of day-of-month and day-of-week must be ?"
                )));
            }
            let years = field(f[5], 1970, 2199, &[], "year")?
                .into_iter()
                .map(|y| y as i32)
                .collect();
            return Ok(Schedule::Cron(Box::new(Cron {
                minutes,
                hours,
                days,
                months,
                weekdays,
                years,
            })));
        }
        Err(invalid(format!(
            "{expr:?}: rate(...), cron(...) or at(...)"
        )))
    }

    /// The first occurrence strictly after `after_ms`, for a schedule that
    /// began at `start_ms` (rates count from it), in time zone `tz`.
    pub fn next_after(&self, after_ms: i64, start_ms: i64, tz: Tz) -> Option<i64> {
        match self {
            Schedule::Rate { every_ms } => {
                let k = if after_ms < start_ms {
                    1
                } else {
                    (after_ms - start_ms) / every_ms + 1
                };
                Some(start_ms + k * every_ms)
            }
            Schedule::At(t) => {
                let at = tz.from_local_datetime(t).earliest()?.timestamp_millis();
                (at > after_ms).then_some(at)
            }
            Schedule::Cron(c) => c.next_after(after_ms, tz),
        }
    }
}

impl Cron {
    fn day_matches(&self, d: NaiveDate) -> bool {
        if !self.months.contains(&d.month()) || !self.years.contains(&d.year()) {
            return false;
        }
        match (&self.days, &self.weekdays) {
            (Some(DaySpec::Set(s)), _) => s.contains(&d.day()),
            (Some(DaySpec::Last), _) => d.succ_opt().is_none_or(|n| n.month() != d.month()),
            (None, Some(WeekdaySpec::Set(s))) => {
                s.contains(&(d.weekday().num_days_from_sunday() + 1))
            }
            (None, Some(WeekdaySpec::Nth(wd, n))) => {
                d.weekday().num_days_from_sunday() + 1 == *wd && (d.day() - 1) / 7 + 1 == *n
            }
            (None, None) => false,
        }
    }

    fn next_after(&self, after_ms: i64, tz: Tz) -> Option<i64> {
        let after = Utc
            .timestamp_millis_opt(after_ms)
            .single()?
            .with_timezone(&tz);
        let mut day = after.date_naive();
        // Ten years of days at most: an expression that never matches
        // (30 FEB) has no next occurrence.
        for _ in 0..3700 {
            if day.year() > *self.years.iter().next_back()? {
                return None;
            }
            if self.day_matches(day) {
                for h in &self.hours {
                    for m in &self.minutes {
                        let local = day.and_time(NaiveTime::from_hms_opt(*h, *m, 0)?);
                        // A time that a clock change skips does not occur.
                        let Some(t) = tz.from_local_datetime(&local).earliest() else {
                            continue;
                        };
                        let ms = t.timestamp_millis();
                        if ms > after_ms {
                            return Some(ms);
                        }
                    }
                }
            }
            day = day.succ_opt()?;
        }
        None
    }
}

/// An IANA time zone by name (empty: UTC).
pub fn time_zone(name: &str) -> Result<Tz, ExprError> {
    if name.is_empty() {
        return Ok(Tz::UTC);
    }
    name.parse::<Tz>()
        .map_err(|_| ExprError::TimeZone(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    }

    fn next(expr: &str, tz: &str, after: &str) -> Option<String> {
        let s = Schedule::parse(expr).unwrap();
        let t = s.next_after(ms(after), ms(after), time_zone(tz).unwrap())?;
        Some(
            Utc.timestamp_millis_opt(t)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string(),
        )
    }

    #[test]
    fn cron_in_utc_and_in_a_time_zone() {
        assert_eq!(
            next("cron(0 10 * * ? *)", "", "2026-11-30T09:00:00Z").unwrap(),
            "2026-11-30T10:00:00Z"
        );
        assert_eq!(
            next("cron(0 10 * * ? *)", "", "2026-11-30T10:00:00Z").unwrap(),
            "2026-12-01T10:00:00Z"
        );
        // 10:00 in New York is 15:00 UTC in winter, 14:00 in summer.
        assert_eq!(
            next(
                "cron(0 10 * * ? *)",
                "America/New_York",
                "2026-11-30T00:00:00Z"
            )
            .unwrap(),
            "2026-11-30T15:00:00Z"
        );
        assert_eq!(
            next(
                "cron(0 10 * * ? *)",
                "America/New_York",
                "2026-07-01T00:00:00Z"
            )
            .unwrap(),
            "2026-07-01T14:00:00Z"
        );
        // Every 15 minutes on weekdays.
        assert_eq!(
            next("cron(0/15 * ? * MON-FRI *)", "", "2026-11-28T12:00:00Z").unwrap(),
            "2026-11-30T00:00:00Z"
        );
        // The last day of the month; the second Tuesday.
        assert_eq!(
            next("cron(30 8 L * ? *)", "", "2026-02-01T00:00:00Z").unwrap(),
            "2026-02-28T08:30:00Z"
        );
        assert_eq!(
            next("cron(0 9 ? * 3#2 *)", "", "2026-12-01T00:00:00Z").unwrap(),
            "2026-12-08T09:00:00Z"
        );
        // A local time that a clock change skips does not occur that day.
        assert_eq!(
            next(
                "cron(30 2 * * ? *)",
                "Europe/Berlin",
                "2026-03-29T00:00:00Z"
            )
            .unwrap(),
            "2026-03-30T00:30:00Z"
        );
        assert_eq!(
            next("cron(0 0 30 FEB ? *)", "", "2026-01-01T00:00:00Z"),
            None
        );
        assert_eq!(
            next("cron(0 0 1 1 ? 2025)", "", "2026-01-01T00:00:00Z"),
            None
        );
    }

    #[test]
    fn rate_and_at() {
        let s = Schedule::parse("rate(5 minutes)").unwrap();
        let start = ms("2026-11-30T10:00:00Z");
        assert_eq!(s.next_after(start, start, Tz::UTC), Some(start + 300_000));
        assert_eq!(
            s.next_after(start + 300_000, start, Tz::UTC),
            Some(start + 600_000)
        );
        assert_eq!(
            next(
                "at(2026-12-24T18:00:00)",
                "Europe/Paris",
                "2026-11-30T00:00:00Z"
            )
            .unwrap(),
            "2026-12-24T17:00:00Z"
        );
        assert_eq!(
            next("at(2026-01-01T00:00:00)", "", "2026-11-30T00:00:00Z"),
            None
        );
    }

    #[test]
    fn bad_expressions_are_typed_errors() {
        for bad in [
            "rate(0 minutes)",
            "rate(5 weeks)",
            "rate(five minutes)",
            "cron(* * * * *)",
            "cron(0 10 * * * *)",
            "cron(0 10 ? * ? *)",
            "cron(60 10 * * ? *)",
            "cron(0 24 * * ? *)",
            "cron(0 10 15W * ? *)",
            "cron(0 10 ? * 6L *)",
            "cron(0 10 ? * 2#6 *)",
            "cron(0 10 5-1 * ? *)",
            "at(tomorrow)",
            "every 5 minutes",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
        assert!(time_zone("Mars/Olympus").is_err());
        assert!(time_zone("Asia/Tokyo").is_ok());
    }
}
