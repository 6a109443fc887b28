//! `flintctl get-metric-statistics`: Lambda's function metrics as
//! CloudWatch's `get-metric-statistics` shows them.

use flint_proto::node::v1 as pb;
use flint_proto::node::v1::node_client::NodeClient;
use serde_json::{json, Map, Value};
use tonic::transport::Channel;

use super::commands::{svc, Command};
use super::{emit, CliError, Output};

/// RFC 3339 (`2026-12-01T10:00:00Z`) or Unix seconds.
pub fn parse_time(v: &str) -> Result<i64, CliError> {
    if let Ok(n) = v.parse::<i64>() {
        return Ok(n);
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp())
        .map_err(|e| CliError::Usage(format!("{v:?} is neither RFC 3339 nor Unix seconds: {e}")))
}

fn rfc3339(secs: i64) -> String {
    crate::time::rfc3339_s(secs.saturating_mul(1000))
}

pub async fn run(
    n: &mut NodeClient<Channel>,
    output: Output,
    cmd: Command,
) -> Result<(), CliError> {
    let Command::GetMetricStatistics {
        metric_name,
        function_name,
        qualifier,
        start_time,
        end_time,
        period,
        statistics,
    } = cmd
    else {
        unreachable!("only metrics commands are routed here")
    };
    let end = match end_time {
        Some(t) => parse_time(&t)?,
        None => chrono::Utc::now().timestamp() + 1,
    };
    let start = match start_time {
        Some(t) => parse_time(&t)?,
        None => end - 3600,
    };
    let r = n
        .get_metric_statistics(pb::GetMetricStatisticsRequest {
            metric_name,
            function_name,
            qualifier,
            start_time: start,
            end_time: end,
            period,
            statistics: statistics.clone(),
        })
        .await
        .map_err(svc("GetMetricStatistics"))?
        .into_inner();
    let fields = |d: &pb::MetricDatapoint| -> Vec<(&'static str, Option<f64>)> {
        vec![
            ("SampleCount", d.sample_count),
            ("Average", d.average),
            ("Sum", d.sum),
            ("Minimum", d.minimum),
            ("Maximum", d.maximum),
        ]
    };
    let mut rows = Vec::new();
    let points: Vec<Value> = r
        .datapoints
        .iter()
        .map(|d| {
            let mut o = Map::new();
            o.insert("Timestamp".into(), json!(rfc3339(d.timestamp)));
            let mut row = vec![rfc3339(d.timestamp)];
            for (k, v) in fields(d) {
                if let Some(v) = v {
                    o.insert(k.into(), json!(v));
                }
                if statistics.iter().any(|s| s == k) {
                    row.push(v.map(|v| format!("{v:.2}")).unwrap_or_default());
                }
            }
            o.insert("Unit".into(), json!(d.unit));
            row.push(d.unit.clone());
            rows.push(row);
            Value::Object(o)
        })
        .collect();
    let mut headers = vec!["TIMESTAMP"];
    for k in ["SampleCount", "Average", "Sum", "Minimum", "Maximum"] {
        if statistics.iter().any(|s| s == k) {
            headers.push(k);
        }
    }
    headers.push("UNIT");
    emit(
        output,
        json!({"Label": r.label, "Datapoints": points}),
        &headers,
        rows,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_unix_seconds() {
        assert_eq!(parse_time("1764583200").unwrap(), 1764583200);
        assert_eq!(parse_time("2025-12-01T10:00:00Z").unwrap(), 1764583200);
        assert_eq!(rfc3339(1764583200), "2025-12-01T10:00:00Z");
        assert!(parse_time("yesterday").is_err());
    }
}
