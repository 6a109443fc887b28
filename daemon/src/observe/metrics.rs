//! Lambda's per-function metrics, kept as Prometheus counters, gauges and
//! histograms and written in Prometheus' text format.
//!
//! Every series is labelled `function`, `alias` and `version` (the alias
//! invoked, if any, and the version that ran): the functions, aliases and
//! versions on the node bound them, and a function's series go when it is
//! deleted ([`Registry::forget`]). No request id is ever a label.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::Metric;

/// The labels of one function series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels {
    pub function: String,
    /// The alias invoked; empty when a version (or `$LATEST`) was.
    pub alias: String,
    /// The version that ran (or that an event source or async queue
    /// names); empty when only the alias is known.
    pub version: String,
}

impl Labels {
    /// The labels of an invocation of `qualifier` (as the caller named it)
    /// that ran `version`.
    pub fn invoked(function: &str, qualifier: &str, version: &str) -> Self {
        let alias = if qualifier.is_empty() || qualifier == "$LATEST" || is_version(qualifier) {
            String::new()
        } else {
            qualifier.to_string()
        };
        Self {
            function: function.to_string(),
            alias,
            version: version.to_string(),
        }
    }

    /// The labels of something that names only `function:qualifier` (an
    /// asynchronous event, an event source): the alias or the version.
    pub fn qualified(function: &str, qualifier: &str) -> Self {
        if qualifier.is_empty() || qualifier == "$LATEST" || is_version(qualifier) {
            let version = if qualifier.is_empty() {
                "$LATEST"
            } else {
                qualifier
            };
            Self::invoked(function, "", version)
        } else {
            Self::invoked(function, qualifier, "")
        }
    }

    /// Whether the series answers a query for `qualifier` (empty: every
    /// series of the function).
    pub fn matches(&self, function: &str, qualifier: &str) -> bool {
        self.function == function
            && (qualifier.is_empty() || self.alias == qualifier || self.version == qualifier)
    }
}

fn is_version(q: &str) -> bool {
    !q.is_empty() && q.bytes().all(|b| b.is_ascii_digit())
}

/// Buckets (seconds) of the duration histograms: Lambda's durations run
/// from under a millisecond to 15 minutes.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0,
];

/// Buckets (seconds) of the age histograms: an asynchronous event or a
/// stream record waits up to 6 hours, or a week.
const AGE_BUCKETS: &[f64] = &[
    0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0, 604800.0,
];

/// How a metric is kept and named in Prometheus.
pub(super) enum Kind {
    Counter,
    Gauge,
    /// Observations in seconds, with these bucket bounds.
    Histogram(&'static [f64]),
}

/// A metric's Prometheus name, help and kind.
pub(super) fn prometheus(m: Metric) -> (&'static str, &'static str, Kind) {
    use Metric::*;
    match m {
        Invocations => ("flint_function_invocations_total", "Invocations that ran the function's code (Lambda's Invocations), failed or not; throttles excluded.", Kind::Counter),
        Errors => ("flint_function_errors_total", "Invocations that ended in a function error, Handled or Unhandled (Lambda's Errors).", Kind::Counter),
        Throttles => ("flint_function_throttles_total", "Invocations refused for concurrency (Lambda's Throttles).", Kind::Counter),
        Duration => ("flint_function_duration_seconds", "Time the function's code ran per invocation (Lambda's Duration).", Kind::Histogram(DURATION_BUCKETS)),
        ConcurrentExecutions => ("flint_function_concurrent_executions", "Invocations running now (Lambda's ConcurrentExecutions).", Kind::Gauge),
        ProvisionedConcurrentExecutions => ("flint_function_provisioned_concurrent_executions", "Invocations running now on provisioned instances of this alias or version.", Kind::Gauge),
        ProvisionedConcurrencyUtilization => ("flint_function_provisioned_concurrency_utilization", "Provisioned concurrent executions over the allocated provisioned concurrency (0 to 1).", Kind::Gauge),
        ProvisionedConcurrencySpilloverInvocations => ("flint_function_provisioned_concurrency_spillover_invocations_total", "Invocations of an alias or version with provisioned concurrency that ran on an on-demand instance.", Kind::Counter),
        InitDuration => ("flint_function_init_duration_seconds", "Init phase durations of instances that started by booting or from a runtime snapshot.", Kind::Histogram(DURATION_BUCKETS)),
        RestoreDuration => ("flint_function_restore_duration_seconds", "Restore durations of instances that started from a function snapshot.", Kind::Histogram(DURATION_BUCKETS)),
        AsyncEventsReceived => ("flint_function_async_events_received_total", "Asynchronous events queued (Lambda's AsyncEventsReceived).", Kind::Counter),
        AsyncEventAge => ("flint_function_async_event_age_seconds", "Time from queueing to each invocation attempt of an asynchronous event (Lambda's AsyncEventAge).", Kind::Histogram(AGE_BUCKETS)),
        AsyncEventsDropped => ("flint_function_async_events_dropped_total", "Asynchronous events dropped: retries exhausted, too old, or their function gone (Lambda's AsyncEventsDropped).", Kind::Counter),
        DeadLetterErrors => ("flint_function_dead_letter_errors_total", "Dropped events whose dead-letter message could not be sent (Lambda's DeadLetterErrors).", Kind::Counter),
        DestinationDeliveryFailures => ("flint_function_destination_delivery_failures_total", "Invocation records that could not be sent to their destination (Lambda's DestinationDeliveryFailures).", Kind::Counter),
        IteratorAge => ("flint_function_iterator_age_seconds", "Age of the newest record of each stream batch when the function got it (Lambda's IteratorAge).", Kind::Histogram(AGE_BUCKETS)),
        EventSourceBatches => ("flint_function_event_source_batches_total", "Batches an event source mapping handed to the function.", Kind::Counter),
        EventSourceFailedItems => ("flint_function_event_source_failed_items_total", "Items of event source batches that failed (reported by the function, or in a failed batch).", Kind::Counter),
    }
}

/// A Prometheus histogram: cumulative on output, per bucket inside.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket; the last is above every bound.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Debug, Clone)]
enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(Histogram),
}

/// The function series, by metric then labels (the text format groups a
/// metric's samples under its `# TYPE`).
#[derive(Default)]
pub struct Registry {
    series: std::sync::Mutex<BTreeMap<Metric, BTreeMap<Labels, Value>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Metric, BTreeMap<Labels, Value>>> {
        self.series.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one event, observes one value (seconds), or sets a gauge,
    /// as `m`'s kind says.
    pub fn record(&self, m: Metric, labels: &Labels, v: f64) {
        let (_, _, kind) = prometheus(m);
        let mut s = self.lock();
        let per = s.entry(m).or_default();
        if !per.contains_key(labels) {
            let init = match kind {
                Kind::Counter => Value::Counter(0),
                Kind::Gauge => Value::Gauge(0.0),
                Kind::Histogram(b) => Value::Histogram(Histogram::new(b)),
            };
            per.insert(labels.clone(), init);
        }
        match per.get_mut(labels).expect("inserted above") {
            Value::Counter(c) => *c += v.max(0.0) as u64,
            Value::Gauge(g) => *g = v,
            Value::Histogram(h) => h.observe(v),
        }
    }

    /// Adds `d` to a gauge (concurrent executions), returning its new value.
    pub fn add_gauge(&self, m: Metric, labels: &Labels, d: f64) -> f64 {
        let mut s = self.lock();
        let g = s
            .entry(m)
            .or_default()
            .entry(labels.clone())
            .or_insert(Value::Gauge(0.0));
        match g {
            Value::Gauge(g) => {
                *g = (*g + d).max(0.0);
                *g
            }
            _ => 0.0,
        }
    }

    /// A counter's value (tests, the load benchmark).
    pub fn counter(&self, m: Metric, labels: &Labels) -> u64 {
        match self.lock().get(&m).and_then(|p| p.get(labels)) {
            Some(Value::Counter(c)) => *c,
            _ => 0,
        }
    }

    /// Drops every series of a deleted function.
    pub fn forget(&self, function: &str) {
        for per in self.lock().values_mut() {
            per.retain(|l, _| l.function != function);
        }
    }

    /// Drops the series of a deleted version or alias.
    pub fn forget_qualifier(&self, function: &str, qualifier: &str) {
        for per in self.lock().values_mut() {
            per.retain(|l, _| {
                l.function != function || (l.alias != qualifier && l.version != qualifier)
            });
        }
    }

    /// Writes the series in Prometheus' text format; `extra` gauges
    /// (computed at scrape time) are written with them.
    pub fn render(&self, out: &mut String, extra: &[(Metric, Labels, f64)]) {
        let s = self.lock();
        let mut metrics: Vec<Metric> = s.keys().copied().collect();
        metrics.extend(extra.iter().map(|(m, _, _)| *m));
        metrics.sort();
        metrics.dedup();
        for m in metrics {
            let (name, help, kind) = prometheus(m);
            let ty = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram(_) => "histogram",
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}");
            for (labels, v) in s.get(&m).into_iter().flatten() {
                let l = label_text(labels);
                match v {
                    Value::Counter(c) => {
                        let _ = writeln!(out, "{name}{{{l}}} {c}");
                    }
                    Value::Gauge(g) => {
                        let _ = writeln!(out, "{name}{{{l}}} {}", number(*g));
                    }
                    Value::Histogram(h) => {
                        let base = name;
                        let mut cum = 0;
                        for (i, b) in h.bounds.iter().enumerate() {
                            cum += h.counts[i];
                            let _ =
                                writeln!(out, "{base}_bucket{{{l},le=\"{}\"}} {cum}", number(*b));
                        }
                        let _ = writeln!(out, "{base}_bucket{{{l},le=\"+Inf\"}} {}", h.count);
                        let _ = writeln!(out, "{base}_sum{{{l}}} {}", number(h.sum));
                        let _ = writeln!(out, "{base}_count{{{l}}} {}", h.count);
                    }
                }
            }
            for (_, labels, v) in extra.iter().filter(|(em, _, _)| *em == m) {
                let _ = writeln!(out, "{name}{{{}}} {}", label_text(labels), number(*v));
            }
        }
    }
}

fn label_text(l: &Labels) -> String {
    format!(
        "function=\"{}\",alias=\"{}\",version=\"{}\"",
        escape(&l.function),
        escape(&l.alias),
        escape(&l.version)
    )
}

/// A label value as the text format quotes it.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value: integers without a fraction, others in full.
pub fn number(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_the_alias_and_the_version_that_ran() {
        let l = Labels::invoked("f", "live", "3");
        assert_eq!((l.alias.as_str(), l.version.as_str()), ("live", "3"));
        let l = Labels::invoked("f", "2", "2");
        assert_eq!((l.alias.as_str(), l.version.as_str()), ("", "2"));
        let l = Labels::qualified("f", "");
        assert_eq!((l.alias.as_str(), l.version.as_str()), ("", "$LATEST"));
        assert!(Labels::invoked("f", "live", "3").matches("f", "live"));
        assert!(Labels::invoked("f", "live", "3").matches("f", "3"));
        assert!(!Labels::invoked("f", "live", "3").matches("f", "4"));
        assert!(!Labels::invoked("f", "live", "3").matches("g", ""));
    }

    #[test]
    fn text_format_has_cumulative_buckets_and_forgets_deleted_functions() {
        let r = Registry::default();
        let l = Labels::invoked("f", "", "$LATEST");
        r.record(Metric::Invocations, &l, 1.0);
        r.record(Metric::Invocations, &l, 1.0);
        r.record(Metric::Duration, &l, 0.003);
        r.record(Metric::Duration, &l, 2.0);
        r.record(Metric::Invocations, &Labels::invoked("g\"x", "", "1"), 1.0);
        let mut out = String::new();
        r.render(&mut out, &[]);
        let l = r#"function="f",alias="",version="$LATEST""#;
        assert!(
            out.contains("# TYPE flint_function_invocations_total counter"),
            "{out}"
        );
        assert!(
            out.contains(&format!("flint_function_invocations_total{{{l}}} 2")),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "flint_function_duration_seconds_bucket{{{l},le=\"0.0025\"}} 0"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "flint_function_duration_seconds_bucket{{{l},le=\"0.005\"}} 1"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "flint_function_duration_seconds_bucket{{{l},le=\"2.5\"}} 2"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "flint_function_duration_seconds_bucket{{{l},le=\"+Inf\"}} 2"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!("flint_function_duration_seconds_count{{{l}}} 2")),
            "{out}"
        );
        assert!(out.contains(r#"function="g\"x""#), "{out}");
        r.forget("f");
        let mut out = String::new();
        r.render(&mut out, &[]);
        assert!(!out.contains(r#"function="f""#), "{out}");
        assert_eq!(
            r.counter(Metric::Invocations, &Labels::invoked("g\"x", "", "1")),
            1
        );
    }
}
