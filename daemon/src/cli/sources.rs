//! flintctl's event source mapping commands, shaped like
//! `aws lambda create-event-source-mapping …`.

use flint_proto::node::v1 as pb;
use flint_proto::node::v1::functions_client::FunctionsClient;
use serde_json::{json, Value};
use tonic::transport::Channel;

use super::args::MappingArgs;
use super::commands::{svc, Command};
use super::{emit, CliError, Output};

const HEADERS: &[&str] = &[
    "UUID",
    "STATE",
    "FUNCTION",
    "SOURCE",
    "LAG",
    "BATCHES",
    "FAILED",
    "LAST ERROR",
];

fn mapping_json(m: &pb::EventSourceMappingConfiguration) -> Value {
    let mut v = json!({
        "UUID": m.uuid,
        "EventSourceArn": m.event_source_arn,
        "FunctionArn": m.function_arn,
        "BatchSize": m.batch_size,
        "MaximumBatchingWindowInSeconds": m.maximum_batching_window_in_seconds,
        "FunctionResponseTypes": m.function_response_types,
        "State": m.state,
        "StateTransitionReason": m.state_transition_reason,
        "LastModified": m.last_modified,
        "LastProcessingResult": m.last_processing_result,
    });
    if let Some(f) = &m.filter_criteria {
        v["FilterCriteria"] = json!({
            "Filters": f.patterns.iter().map(|p| json!({"Pattern": p})).collect::<Vec<_>>()
        });
    }
    if let Some(s) = &m.scaling_config {
        v["ScalingConfig"] = json!({"MaximumConcurrency": s.maximum_concurrency});
    }
    if !m.starting_position.is_empty() {
        v["StartingPosition"] = json!(m.starting_position);
        if let Some(t) = m.starting_position_timestamp {
            v["StartingPositionTimestamp"] = json!(t);
        }
        v["ParallelizationFactor"] = json!(m.parallelization_factor);
        v["BisectBatchOnFunctionError"] = json!(m.bisect_batch_on_function_error);
        v["MaximumRetryAttempts"] = json!(m.maximum_retry_attempts);
        v["MaximumRecordAgeInSeconds"] = json!(m.maximum_record_age_in_seconds);
        v["TumblingWindowInSeconds"] = json!(m.tumbling_window_in_seconds);
        let on_failure = m
            .destination_config
            .as_ref()
            .and_then(|d| d.on_failure.as_ref())
            .map(|f| json!({"Destination": f.destination}));
        v["DestinationConfig"] = json!({"OnFailure": on_failure.unwrap_or(json!({}))});
    }
    if let Some(s) = &m.status {
        v["Status"] = json!({
            "Batches": s.batches,
            "Records": s.records,
            "FailedBatches": s.failed_batches,
            "FailedItems": s.failed_items,
            "Filtered": s.filtered,
            "Throttles": s.throttles,
            "BatchesInFlight": s.batches_in_flight,
            "Lag": s.lag,
            "LastError": s.last_error,
            "LastErrorTime": s.last_error_time,
        });
    }
    v
}

fn mapping_row(m: &pb::EventSourceMappingConfiguration) -> Vec<String> {
    let s = m.status.clone().unwrap_or_default();
    vec![
        m.uuid.clone(),
        m.state.clone(),
        m.function_arn
            .rsplit(":function:")
            .next()
            .unwrap_or_default()
            .to_string(),
        m.event_source_arn.clone(),
        s.lag.map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
        s.batches.to_string(),
        format!("{}/{}", s.failed_batches, s.failed_items),
        s.last_error,
    ]
}

fn show(output: Output, m: &pb::EventSourceMappingConfiguration) {
    emit(output, mapping_json(m), HEADERS, vec![mapping_row(m)]);
}

/// `{"Filters":[{"Pattern":"..."}]}`.
pub fn filter_criteria(s: &str) -> Result<pb::FilterCriteria, CliError> {
    let bad = |m: String| CliError::Usage(format!("--filter-criteria: {m}"));
    let v: Value = serde_json::from_str(s).map_err(|e| bad(e.to_string()))?;
    let filters = v
        .get("Filters")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("{\"Filters\":[{\"Pattern\":\"...\"}]}".into()))?;
    let mut patterns = Vec::new();
    for f in filters {
        match f.get("Pattern") {
            Some(Value::String(p)) => patterns.push(p.clone()),
            // A pattern written as an object is taken as its JSON.
            Some(p @ Value::Object(_)) => patterns.push(p.to_string()),
            _ => return Err(bad("each filter is {\"Pattern\": \"...\"}".into())),
        }
    }
    Ok(pb::FilterCriteria { patterns })
}

/// `MaximumConcurrency=N` or `{"MaximumConcurrency":N}`.
pub fn scaling_config(s: &str) -> Result<pb::ScalingConfig, CliError> {
    let bad = || CliError::Usage("--scaling-config: MaximumConcurrency=N".into());
    let n = if s.trim_start().starts_with('{') {
        let v: Value = serde_json::from_str(s).map_err(|_| bad())?;
        match v.get("MaximumConcurrency") {
            None => None,
            Some(n) => Some(n.as_u64().ok_or_else(bad)? as u32),
        }
    } else {
        Some(
            s.strip_prefix("MaximumConcurrency=")
                .and_then(|n| n.parse().ok())
                .ok_or_else(bad)?,
        )
    };
    Ok(pb::ScalingConfig {
        maximum_concurrency: n,
    })
}

fn enabled(a: &MappingArgs) -> Option<bool> {
    match (a.enabled, a.no_enabled) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

fn bisect(a: &MappingArgs) -> Option<bool> {
    match (
        a.bisect_batch_on_function_error,
        a.no_bisect_batch_on_function_error,
    ) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

fn destination(a: &MappingArgs) -> Result<Option<pb::DestinationConfig>, CliError> {
    a.destination_config
        .as_deref()
        .map(super::events::destination_config)
        .transpose()
}

fn response_types(a: &MappingArgs) -> Option<Vec<String>> {
    a.function_response_types
        .as_ref()
        .map(|t| t.iter().filter(|x| !x.is_empty()).cloned().collect())
}

pub async fn run(
    c: &mut FunctionsClient<Channel>,
    output: Output,
    command: Command,
) -> Result<(), CliError> {
    match command {
        Command::CreateEventSourceMapping {
            event_source_arn,
            function_name,
            starting_position,
            starting_position_timestamp,
            settings,
        } => {
            let r = pb::CreateEventSourceMappingRequest {
                event_source_arn,
                function_name,
                enabled: enabled(&settings),
                batch_size: settings.batch_size,
                maximum_batching_window_in_seconds: settings.maximum_batching_window_in_seconds,
                filter_criteria: settings
                    .filter_criteria
                    .as_deref()
                    .map(filter_criteria)
                    .transpose()?,
                function_response_types: response_types(&settings).unwrap_or_default(),
                scaling_config: settings
                    .scaling_config
                    .as_deref()
                    .map(scaling_config)
                    .transpose()?,
                starting_position,
                starting_position_timestamp,
                parallelization_factor: settings.parallelization_factor,
                bisect_batch_on_function_error: bisect(&settings),
                maximum_retry_attempts: settings.maximum_retry_attempts,
                maximum_record_age_in_seconds: settings.maximum_record_age_in_seconds,
                destination_config: destination(&settings)?,
                tumbling_window_in_seconds: settings.tumbling_window_in_seconds,
            };
            let m = c
                .create_event_source_mapping(r)
                .await
                .map_err(svc("CreateEventSourceMapping"))?
                .into_inner();
            show(output, &m);
        }
        Command::UpdateEventSourceMapping {
            uuid,
            function_name,
            settings,
        } => {
            let r = pb::UpdateEventSourceMappingRequest {
                uuid,
                function_name,
                enabled: enabled(&settings),
                batch_size: settings.batch_size,
                maximum_batching_window_in_seconds: settings.maximum_batching_window_in_seconds,
                filter_criteria: settings
                    .filter_criteria
                    .as_deref()
                    .map(filter_criteria)
                    .transpose()?,
                function_response_types: response_types(&settings)
                    .map(|types| pb::FunctionResponseTypes { types }),
                scaling_config: settings
                    .scaling_config
                    .as_deref()
                    .map(scaling_config)
                    .transpose()?,
                parallelization_factor: settings.parallelization_factor,
                bisect_batch_on_function_error: bisect(&settings),
                maximum_retry_attempts: settings.maximum_retry_attempts,
                maximum_record_age_in_seconds: settings.maximum_record_age_in_seconds,
                destination_config: destination(&settings)?,
                tumbling_window_in_seconds: settings.tumbling_window_in_seconds,
            };
            let m = c
                .update_event_source_mapping(r)
                .await
                .map_err(svc("UpdateEventSourceMapping"))?
                .into_inner();
            show(output, &m);
        }
        Command::GetEventSourceMapping { uuid } => {
            let m = c
                .get_event_source_mapping(pb::EventSourceMappingRequest { uuid })
                .await
                .map_err(svc("GetEventSourceMapping"))?
                .into_inner();
            show(output, &m);
        }
        Command::DeleteEventSourceMapping { uuid } => {
            let m = c
                .delete_event_source_mapping(pb::EventSourceMappingRequest { uuid })
                .await
                .map_err(svc("DeleteEventSourceMapping"))?
                .into_inner();
            show(output, &m);
        }
        Command::ListEventSourceMappings {
            event_source_arn,
            function_name,
        } => {
            let r = c
                .list_event_source_mappings(pb::ListEventSourceMappingsRequest {
                    event_source_arn,
                    function_name,
                })
                .await
                .map_err(svc("ListEventSourceMappings"))?
                .into_inner();
            let list = &r.event_source_mappings;
            emit(
                output,
                json!({"EventSourceMappings": list.iter().map(mapping_json).collect::<Vec<_>>()}),
                HEADERS,
                list.iter().map(mapping_row).collect(),
            );
        }
        _ => unreachable!("not an event source mapping command"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_criteria_and_scaling_config_as_the_aws_cli_writes_them() {
        let f = filter_criteria(
            r#"{"Filters":[{"Pattern":"{\"body\":{\"a\":[1]}}"},{"Pattern":{"body":{"b":[2]}}}]}"#,
        )
        .unwrap();
        assert_eq!(f.patterns.len(), 2);
        assert_eq!(f.patterns[1], r#"{"body":{"b":[2]}}"#);
        assert!(filter_criteria(r#"{"Filters":[]}"#)
            .unwrap()
            .patterns
            .is_empty());
        assert!(filter_criteria("[]").is_err());
        assert_eq!(
            scaling_config("MaximumConcurrency=5")
                .unwrap()
                .maximum_concurrency,
            Some(5)
        );
        assert_eq!(
            scaling_config(r#"{"MaximumConcurrency":7}"#)
                .unwrap()
                .maximum_concurrency,
            Some(7)
        );
        assert_eq!(scaling_config("{}").unwrap().maximum_concurrency, None);
        assert!(scaling_config("Max=5").is_err());
    }
}
