//! The node's metrics: the Prometheus text a scrape gets (function series
//! and the node's own), and `GetMetricStatistics`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Node, NodeError};
use crate::launch::InstanceState;
use crate::observe::metrics::{escape, number};
use crate::observe::window::Datapoint;
use crate::observe::{Labels, Metric, ObserveError, Observer, NODE};

/// CloudWatch's statistics.
pub const STATISTICS: [&str; 5] = ["SampleCount", "Average", "Sum", "Minimum", "Maximum"];

/// At most this many datapoints per query (CloudWatch's limit).
pub const MAX_DATAPOINTS: u64 = 1440;

/// A `GetMetricStatistics` query.
#[derive(Debug, Clone)]
pub struct StatisticsQuery {
    pub metric: String,
    pub function: String,
    pub qualifier: String,
    pub start_s: i64,
    pub end_s: i64,
    pub period_s: u32,
    pub statistics: Vec<String>,
}

/// Its answer: the metric's unit and the datapoints, oldest first.
#[derive(Debug, Clone)]
pub struct Statistics {
    pub metric: Metric,
    pub datapoints: Vec<Datapoint>,
}

fn invalid(field: &'static str, rule: impl Into<String>) -> NodeError {
    ObserveError::Invalid {
        field,
        rule: rule.into(),
    }
    .into()
}

/// One metric of the node in the text format.
fn write_metric(out: &mut String, name: &str, ty: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {}", number(*v));
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {}", number(*v));
        }
    }
}

impl Node {
    pub fn observer(&self) -> &Arc<Observer> {
        &self.invoker.observe
    }

    /// What a Prometheus scrape gets.
    pub fn prometheus_text(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Provisioned concurrency's gauges, from the books now.
        let mut extra = Vec::new();
        for c in self.store.list_provisioned("").unwrap_or_default() {
            let count = self.pool.provisioned_count(&c.key());
            let labels = Labels::qualified(&c.function, &c.qualifier);
            let allocated = count.ready + count.busy;
            extra.push((
                Metric::ProvisionedConcurrentExecutions,
                labels.clone(),
                count.busy as f64,
            ));
            extra.push((
                Metric::ProvisionedConcurrencyUtilization,
                labels,
                if allocated == 0 {
                    0.0
                } else {
                    count.busy as f64 / allocated as f64
                },
            ));
        }
        self.observer().metrics.render(&mut out, &extra);
        self.node_metrics(&mut out);
        out
    }

    fn node_metrics(&self, out: &mut String) {
        let instances = self.pool.instances();
        let states = [
            ("initializing", InstanceState::Initializing),
            ("idle", InstanceState::Idle),
            ("busy", InstanceState::Busy),
            ("frozen", InstanceState::Frozen),
        ];
        let by_state: Vec<(String, f64)> = states
            .iter()
            .map(|(name, s)| {
                let n = instances.iter().filter(|i| i.state == *s).count();
                (format!("state=\"{name}\""), n as f64)
            })
            .collect();
        write_metric(
            out,
            "flint_instances",
            "gauge",
            "Function instances on the node, by state.",
            &by_state,
        );
        let provisioned = instances.iter().filter(|i| i.provisioned).count();
        write_metric(
            out,
            "flint_instances_provisioned",
            "gauge",
            "Instances kept by provisioned-concurrency configs.",
            &[(String::new(), provisioned as f64)],
        );
        let launcher = self.pool.launcher();
        let starts = launcher.start_counts();
        write_metric(
            out,
            "flint_starts_in_flight",
            "gauge",
            "Instance starts running now.",
            &[(String::new(), starts.in_flight as f64)],
        );
        write_metric(
            out,
            "flint_starts_waiting",
            "gauge",
            "Instance starts waiting for a start slot.",
            &[(String::new(), starts.waiting as f64)],
        );
        write_metric(
            out,
            "flint_spare_vms",
            "gauge",
            "QEMU processes started ahead for the next restore.",
            &[(String::new(), launcher.spare_count() as f64)],
        );
        let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as f64;
        write_metric(
            out,
            "flint_snapshot_builds_total",
            "counter",
            "Snapshots (runtime and function) built, by result.",
            &[
                ("result=\"ok\"".into(), n(&NODE.snapshot_builds)),
                ("result=\"failed\"".into(), n(&NODE.snapshot_build_failures)),
            ],
        );
        let cap = self.capacity();
        const MB: f64 = 1024.0 * 1024.0;
        write_metric(
            out,
            "flint_memory_budget_bytes",
            "gauge",
            "Host memory the instances may use ([instances] memory_budget_mb).",
            &[(String::new(), cap.memory_budget_mb as f64 * MB)],
        );
        write_metric(
            out,
            "flint_memory_charged_bytes",
            "gauge",
            "Memory counted against the budget: instances and spares.",
            &[(String::new(), cap.charged_mb as f64 * MB)],
        );
        let kb = |key| crate::config::meminfo_kb(key).unwrap_or(0) as f64 * 1024.0;
        write_metric(
            out,
            "flint_host_memory_total_bytes",
            "gauge",
            "The host's memory (MemTotal).",
            &[(String::new(), kb("MemTotal:"))],
        );
        write_metric(
            out,
            "flint_host_memory_available_bytes",
            "gauge",
            "The host's available memory (MemAvailable).",
            &[(String::new(), kb("MemAvailable:"))],
        );
        write_metric(
            out,
            "flint_instance_evictions_total",
            "counter",
            "Idle instances stopped to make room for a start.",
            &[(String::new(), n(&NODE.evictions))],
        );
        write_metric(
            out,
            "flint_vmm_crashes_total",
            "counter",
            "Instances whose VMM or guest died under an invocation.",
            &[(String::new(), n(&NODE.vmm_crashes))],
        );
        write_metric(out, "flint_guest_frames_rejected_total", "counter", "Invocations ended because their guest broke the agent protocol (oversize, malformed or out-of-order frames).", &[(String::new(), n(&NODE.guest_frames_rejected))]);
        write_metric(
            out,
            "flint_log_bytes_dropped_total",
            "counter",
            "Function log bytes dropped over the log limits.",
            &[(String::new(), self.logs.dropped_bytes(None) as f64)],
        );
        write_metric(
            out,
            "flint_log_bytes_stored",
            "gauge",
            "Function log bytes stored.",
            &[(String::new(), self.logs.stored_bytes(None) as f64)],
        );
        let functions = self.list_functions().map(|f| f.len()).unwrap_or(0);
        write_metric(
            out,
            "flint_functions",
            "gauge",
            "Functions on the node.",
            &[(String::new(), functions as f64)],
        );
        if let Some(t) = self.observer().tracer() {
            write_metric(
                out,
                "flint_trace_spans_total",
                "counter",
                "Spans sent to the OTLP collector, by result.",
                &[
                    (
                        "result=\"exported\"".into(),
                        t.exported.load(Ordering::Relaxed) as f64,
                    ),
                    (
                        "result=\"dropped\"".into(),
                        t.dropped.load(Ordering::Relaxed) as f64,
                    ),
                ],
            );
        }
        let _ = writeln!(out, "# HELP flint_build_info flintd's version.\n# TYPE flint_build_info gauge\nflint_build_info{{version=\"{}\"}} 1", escape(env!("CARGO_PKG_VERSION")));
    }

    /// `GetMetricStatistics`: `q.metric` of `q.function` (and qualifier)
    /// per period over the window flintd keeps.
    pub fn metric_statistics(&self, q: &StatisticsQuery) -> Result<Statistics, NodeError> {
        let metric = Metric::parse(&q.metric).ok_or_else(|| {
            let names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
            invalid(
                "MetricName",
                format!("{:?} is not one of {}", q.metric, names.join(", ")),
            )
        })?;
        self.store.get(&q.function)?;
        if q.period_s == 0 {
            return Err(invalid("Period", "must be at least 1 second"));
        }
        if q.start_s < 0 || q.end_s <= q.start_s {
            return Err(invalid("EndTime", "must be after StartTime"));
        }
        let span = (q.end_s - q.start_s) as u64;
        if span.div_ceil(q.period_s as u64) > MAX_DATAPOINTS {
            return Err(invalid(
                "Period",
                format!("the query would return more than {MAX_DATAPOINTS} datapoints; use a longer period"),
            ));
        }
        if q.statistics.is_empty() {
            return Err(invalid(
                "Statistics",
                format!("name at least one of {}", STATISTICS.join(", ")),
            ));
        }
        if let Some(bad) = q
            .statistics
            .iter()
            .find(|s| !STATISTICS.contains(&s.as_str()))
        {
            return Err(invalid(
                "Statistics",
                format!("{bad:?} is not one of {}", STATISTICS.join(", ")),
            ));
        }
        let datapoints = self.observer().window.query(
            metric,
            &q.function,
            &q.qualifier,
            q.start_s as u64,
            q.end_s as u64,
            q.period_s as u64,
        );
        Ok(Statistics { metric, datapoints })
    }
}
