//! Event source mappings' shapes: proto to the domain's changes, and
//! mappings (with their counters) back to proto.

use flint_proto::node::v1 as pb;

use crate::sources::{MappingChange, MappingView};

pub fn create_change(r: &pb::CreateEventSourceMappingRequest) -> MappingChange {
    MappingChange {
        enabled: r.enabled,
        batch_size: r.batch_size,
        window_s: r.maximum_batching_window_in_seconds,
        filters: r.filter_criteria.as_ref().map(|f| f.patterns.clone()),
        function_response_types: Some(r.function_response_types.clone()),
        max_concurrency: r.scaling_config.as_ref().map(|s| s.maximum_concurrency),
        starting_position: Some(r.starting_position.clone()).filter(|p| !p.is_empty()),
        starting_position_timestamp_ms: r.starting_position_timestamp.map(|t| (t * 1000.0) as i64),
        parallelization_factor: r.parallelization_factor,
        bisect_on_error: r.bisect_batch_on_function_error,
        max_retry_attempts: r.maximum_retry_attempts,
        max_record_age_s: r.maximum_record_age_in_seconds,
        on_failure: on_failure(r.destination_config.as_ref()),
        tumbling_window_s: r.tumbling_window_in_seconds,
    }
}

fn on_failure(d: Option<&pb::DestinationConfig>) -> Option<String> {
    d.and_then(|d| d.on_failure.as_ref())
        .map(|f| f.destination.clone())
}

pub fn update_change(r: &pb::UpdateEventSourceMappingRequest) -> MappingChange {
    MappingChange {
        enabled: r.enabled,
        batch_size: r.batch_size,
        window_s: r.maximum_batching_window_in_seconds,
        filters: r.filter_criteria.as_ref().map(|f| f.patterns.clone()),
        function_response_types: r.function_response_types.as_ref().map(|t| t.types.clone()),
        max_concurrency: r.scaling_config.as_ref().map(|s| s.maximum_concurrency),
        starting_position: None,
        starting_position_timestamp_ms: None,
        parallelization_factor: r.parallelization_factor,
        bisect_on_error: r.bisect_batch_on_function_error,
        max_retry_attempts: r.maximum_retry_attempts,
        max_record_age_s: r.maximum_record_age_in_seconds,
        on_failure: on_failure(r.destination_config.as_ref()),
        tumbling_window_s: r.tumbling_window_in_seconds,
    }
}

pub fn mapping_pb(
    region: &str,
    account: &str,
    v: &MappingView,
) -> pb::EventSourceMappingConfiguration {
    let m = &v.mapping;
    let mut function_arn = crate::functions::function_arn(region, account, &m.function_name);
    if !m.qualifier.is_empty() {
        function_arn = format!("{function_arn}:{}", m.qualifier);
    }
    pb::EventSourceMappingConfiguration {
        uuid: m.uuid.clone(),
        event_source_arn: m.event_source_arn.clone(),
        function_arn,
        batch_size: m.batch_size,
        maximum_batching_window_in_seconds: m.window_s,
        filter_criteria: (!m.filters.is_empty()).then(|| pb::FilterCriteria {
            patterns: m.filters.clone(),
        }),
        function_response_types: if m.report_batch_item_failures {
            vec!["ReportBatchItemFailures".into()]
        } else {
            Vec::new()
        },
        scaling_config: m.max_concurrency.map(|n| pb::ScalingConfig {
            maximum_concurrency: Some(n),
        }),
        state: m.state.name().into(),
        state_transition_reason: m.state_reason.clone(),
        last_modified: crate::time::rfc3339_ms(m.last_modified_ms),
        last_processing_result: m.last_processing_result.clone(),
        starting_position: m.starting_position.clone().unwrap_or_default(),
        starting_position_timestamp: m.starting_position_timestamp_ms.map(|t| t as f64 / 1000.0),
        parallelization_factor: m.parallelization_factor,
        bisect_batch_on_function_error: m.bisect_on_error,
        maximum_retry_attempts: m.max_retry_attempts,
        maximum_record_age_in_seconds: m.max_record_age_s,
        destination_config: m.on_failure.as_ref().map(|d| pb::DestinationConfig {
            on_success: None,
            on_failure: Some(pb::OnFailure {
                destination: d.clone(),
            }),
        }),
        tumbling_window_in_seconds: m.tumbling_window_s,
        status: Some(pb::EventSourceMappingStatus {
            batches: v.batches,
            records: v.records,
            failed_batches: v.failed_batches,
            failed_items: v.failed_items,
            filtered: v.filtered,
            throttles: v.throttles,
            batches_in_flight: v.in_flight,
            lag: v.lag,
            last_error: v
                .last_error
                .as_ref()
                .map(|e| e.1.clone())
                .unwrap_or_default(),
            last_error_time: v
                .last_error
                .as_ref()
                .map(|e| crate::time::rfc3339_ms(e.0))
                .unwrap_or_default(),
        }),
    }
}
