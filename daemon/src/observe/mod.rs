//! What an operator sees of the node besides logs: Lambda's per-function
//! metrics and the node's own, as a Prometheus endpoint
//! ([`http`]) and as CloudWatch-shaped statistics over a bounded window
//! ([`window`], `GetMetricStatistics`); and OpenTelemetry traces of
//! invocations ([`trace`]).
//!
//! Every function metric goes through [`Observer::record`], so that the
//! endpoint and the statistics agree.

pub mod http;
pub mod metrics;
pub mod trace;
pub mod window;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

pub use metrics::Labels;
use trace::{SpanData, SpanId, TraceContext, Tracer};

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("the metrics endpoint cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("{field}: {rule}")]
    Invalid { field: &'static str, rule: String },
    #[error("tracing.otlp_endpoint {0:?}: {1}")]
    Endpoint(String, String),
}

/// Lambda's function metrics, by their CloudWatch names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    Invocations,
    Errors,
    Throttles,
    Duration,
    ConcurrentExecutions,
    ProvisionedConcurrentExecutions,
    ProvisionedConcurrencyUtilization,
    ProvisionedConcurrencySpilloverInvocations,
    InitDuration,
    RestoreDuration,
    AsyncEventsReceived,
    AsyncEventAge,
    AsyncEventsDropped,
    DeadLetterErrors,
    DestinationDeliveryFailures,
    IteratorAge,
    EventSourceBatches,
    EventSourceFailedItems,
}

impl Metric {
    pub const ALL: [Metric; 18] = [
        Metric::Invocations,
        Metric::Errors,
        Metric::Throttles,
        Metric::Duration,
        Metric::ConcurrentExecutions,
        Metric::ProvisionedConcurrentExecutions,
        Metric::ProvisionedConcurrencyUtilization,
        Metric::ProvisionedConcurrencySpilloverInvocations,
        Metric::InitDuration,
        Metric::RestoreDuration,
        Metric::AsyncEventsReceived,
        Metric::AsyncEventAge,
        Metric::AsyncEventsDropped,
        Metric::DeadLetterErrors,
        Metric::DestinationDeliveryFailures,
        Metric::IteratorAge,
        Metric::EventSourceBatches,
        Metric::EventSourceFailedItems,
    ];

    /// Its CloudWatch name (`GetMetricStatistics --metric-name`).
    pub fn name(self) -> &'static str {
        use Metric::*;
        match self {
            Invocations => "Invocations",
            Errors => "Errors",
            Throttles => "Throttles",
            Duration => "Duration",
            ConcurrentExecutions => "ConcurrentExecutions",
            ProvisionedConcurrentExecutions => "ProvisionedConcurrentExecutions",
            ProvisionedConcurrencyUtilization => "ProvisionedConcurrencyUtilization",
            ProvisionedConcurrencySpilloverInvocations => {
                "ProvisionedConcurrencySpilloverInvocations"
            }
            InitDuration => "InitDuration",
            RestoreDuration => "RestoreDuration",
            AsyncEventsReceived => "AsyncEventsReceived",
            AsyncEventAge => "AsyncEventAge",
            AsyncEventsDropped => "AsyncEventsDropped",
            DeadLetterErrors => "DeadLetterErrors",
            DestinationDeliveryFailures => "DestinationDeliveryFailures",
            IteratorAge => "IteratorAge",
            EventSourceBatches => "EventSourceBatches",
            EventSourceFailedItems => "EventSourceFailedItems",
        }
    }

    pub fn parse(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// CloudWatch's unit: durations and ages in milliseconds, the
    /// utilization a ratio, the rest counts.
    pub fn unit(self) -> &'static str {
        use Metric::*;
        match self {
            Duration | InitDuration | RestoreDuration | AsyncEventAge | IteratorAge => {
                "Milliseconds"
            }
            ProvisionedConcurrencyUtilization => "None",
            _ => "Count",
        }
    }

    /// Whether Prometheus keeps it in seconds (the window in milliseconds).
    fn is_time(self) -> bool {
        self.unit() == "Milliseconds"
    }
}

/// Counters of the node's own events, kept where they happen (one node
/// per process; the values only grow).
#[derive(Default)]
pub struct NodeCounters {
    /// Idle instances stopped to make room for a start.
    pub evictions: AtomicU64,
    /// VMMs (or their guests) that died under an invocation.
    pub vmm_crashes: AtomicU64,
    /// Frames from a guest refused: oversize, malformed, or out of order.
    pub guest_frames_rejected: AtomicU64,
    /// Snapshots built (runtime and function), and those that failed.
    pub snapshot_builds: AtomicU64,
    pub snapshot_build_failures: AtomicU64,
}

pub static NODE: NodeCounters = NodeCounters {
    evictions: AtomicU64::new(0),
    vmm_crashes: AtomicU64::new(0),
    guest_frames_rejected: AtomicU64::new(0),
    snapshot_builds: AtomicU64::new(0),
    snapshot_build_failures: AtomicU64::new(0),
};

/// Adds one to a node counter.
pub fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The metrics, the statistics window and the tracer of one node.
pub struct Observer {
    pub metrics: metrics::Registry,
    pub window: window::Window,
    tracer: Option<Arc<Tracer>>,
}

fn now_s() -> u64 {
    crate::time::now_ms().max(0) as u64 / 1000
}

impl Default for Observer {
    fn default() -> Self {
        Self::new(3 * 3600, None)
    }
}

impl Observer {
    pub fn new(window_s: u64, tracer: Option<Arc<Tracer>>) -> Self {
        Self {
            metrics: Default::default(),
            window: window::Window::new(window_s),
            tracer,
        }
    }

    pub fn tracer(&self) -> Option<&Arc<Tracer>> {
        self.tracer.as_ref()
    }

    /// Records one value of `m`: a count (1 for one event), a duration
    /// or age in seconds, or a gauge's sample.
    pub fn record(&self, m: Metric, labels: &Labels, v: f64) {
        self.metrics.record(m, labels, v);
        let cw = if m.is_time() { v * 1000.0 } else { v };
        self.sample(m, labels, cw);
    }

    /// Records a sample in the statistics window only (its Prometheus
    /// gauge is read at scrape time), in the metric's CloudWatch unit.
    pub fn sample(&self, m: Metric, labels: &Labels, v: f64) {
        self.window.record(m, labels, v, now_s());
    }

    /// One more invocation running under `labels`; the guard ends it.
    pub fn running(self: &Arc<Self>, labels: &Labels) -> Running {
        let n = self
            .metrics
            .add_gauge(Metric::ConcurrentExecutions, labels, 1.0);
        // CloudWatch's Maximum of ConcurrentExecutions is the peak.
        self.sample(Metric::ConcurrentExecutions, labels, n);
        Running {
            observer: self.clone(),
            labels: labels.clone(),
        }
    }

    /// Drops a deleted function's series.
    pub fn forget(&self, function: &str) {
        self.metrics.forget(function);
        self.window.forget(function);
    }

    /// The trace of a new invocation: `None` when tracing is off and no
    /// caller's context came (the runtime still gets a fresh, unsampled
    /// trace id).
    pub fn begin_trace(&self, incoming: Option<trace::Incoming>) -> InvocationTrace {
        let ctx = match (&self.tracer, incoming) {
            (Some(t), i) => t.begin(i),
            // Tracing off: a caller's id still reaches the runtime.
            (None, Some(i)) => TraceContext {
                sampled: false,
                ..i.ctx
            },
            (None, None) => TraceContext::new(false),
        };
        InvocationTrace {
            ctx,
            root: trace::new_span_id(),
            invocation: trace::new_span_id(),
            started: SystemTime::now(),
            spans: Vec::new(),
            tracer: self.tracer.clone().filter(|_| ctx.sampled),
        }
    }
}

/// An invocation in flight: [`Metric::ConcurrentExecutions`] counts it
/// until dropped.
pub struct Running {
    observer: Arc<Observer>,
    labels: Labels,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.observer
            .metrics
            .add_gauge(Metric::ConcurrentExecutions, &self.labels, -1.0);
    }
}

/// The spans of one invocation, sent when it ends (when sampled).
pub struct InvocationTrace {
    pub ctx: TraceContext,
    /// The `Invoke` span.
    pub root: SpanId,
    /// The `Invocation` span: `Parent=` of the runtime's trace header.
    pub invocation: SpanId,
    started: SystemTime,
    spans: Vec<SpanData>,
    tracer: Option<Arc<Tracer>>,
}

impl InvocationTrace {
    /// Whether its spans are exported.
    pub fn recording(&self) -> bool {
        self.tracer.is_some()
    }

    /// What the runtime gets in `Lambda-Runtime-Trace-Id`.
    pub fn runtime_header(&self) -> String {
        self.ctx.xray_header(self.invocation)
    }

    /// Adds a finished span under `parent` (the `Invoke` span: `None`).
    #[allow(clippy::too_many_arguments)]
    pub fn span(
        &mut self,
        name: &'static str,
        id: Option<SpanId>,
        parent: Option<SpanId>,
        start: SystemTime,
        end: SystemTime,
        attributes: Vec<(&'static str, trace::Attr)>,
        error: Option<String>,
    ) -> SpanId {
        let span_id = id.unwrap_or_else(trace::new_span_id);
        if self.recording() {
            self.spans.push(SpanData {
                trace_id: self.ctx.trace_id,
                span_id,
                parent: Some(parent.unwrap_or(self.root)),
                name,
                server: false,
                start,
                end,
                attributes,
                error,
            });
        }
        span_id
    }

    /// Ends the `Invoke` span and sends every span.
    pub fn finish(mut self, attributes: Vec<(&'static str, trace::Attr)>, error: Option<String>) {
        let Some(tracer) = self.tracer.take() else {
            return;
        };
        tracer.emit(SpanData {
            trace_id: self.ctx.trace_id,
            span_id: self.root,
            parent: self.ctx.parent,
            name: "Invoke",
            server: true,
            start: self.started,
            end: SystemTime::now(),
            attributes,
            error,
        });
        for s in self.spans.drain(..) {
            tracer.emit(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_round_trip() {
        for m in Metric::ALL {
            assert_eq!(Metric::parse(m.name()), Some(m));
        }
        assert_eq!(Metric::parse("invocations"), None);
        assert_eq!(Metric::Duration.unit(), "Milliseconds");
        assert_eq!(Metric::Invocations.unit(), "Count");
    }

    #[test]
    fn window_keeps_milliseconds_and_prometheus_seconds() {
        let o = Observer::default();
        let l = Labels::invoked("f", "", "$LATEST");
        o.record(Metric::Duration, &l, 0.25);
        let d = o
            .window
            .query(Metric::Duration, "f", "", 0, u64::MAX / 2, u64::MAX / 4);
        assert_eq!(d[0].stat.sum, 250.0);
        let mut out = String::new();
        o.metrics.render(&mut out, &[]);
        assert!(out.contains("flint_function_duration_seconds_sum{function=\"f\",alias=\"\",version=\"$LATEST\"} 0.25"), "{out}");
    }

    #[test]
    fn the_running_guard_counts_concurrent_executions() {
        let o = Arc::new(Observer::default());
        let l = Labels::invoked("f", "", "1");
        let a = o.running(&l);
        let b = o.running(&l);
        let peak = o.window.query(
            Metric::ConcurrentExecutions,
            "f",
            "",
            0,
            u64::MAX / 2,
            u64::MAX / 4,
        );
        assert_eq!(peak[0].stat.max, 2.0);
        drop(a);
        drop(b);
        let mut out = String::new();
        o.metrics.render(&mut out, &[]);
        assert!(
            out.contains(
                "flint_function_concurrent_executions{function=\"f\",alias=\"\",version=\"1\"} 0"
            ),
            "{out}"
        );
    }

    #[test]
    fn the_documented_dashboard_uses_metrics_that_exist() {
        let doc = include_str!("../../../docs/observability.md");
        let start = doc.find("```json\n").expect("the dashboard JSON") + 8;
        let end = start + doc[start..].find("```").unwrap();
        let dash: serde_json::Value = serde_json::from_str(&doc[start..end]).expect("valid JSON");
        let sources = [
            include_str!("metrics.rs"),
            include_str!("../node/metrics.rs"),
        ];
        let mut checked = 0;
        for p in dash["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if !word.starts_with("flint_") {
                        continue;
                    }
                    let base = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|s| word.strip_suffix(s))
                        .unwrap_or(word);
                    assert!(
                        sources.iter().any(|s| s.contains(&format!("\"{base}\""))),
                        "the dashboard's {word} is not a metric flintd writes"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 10);
    }
}
