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
    }
}

pub fn update_change(r: &pb::UpdateEventSourceMappingRequest) -> MappingChange {
    MappingChange {
        enabled: r.enabled,
        batch_size: r.batch_size,
        window_s: r.maximum_batching_window_in_seconds,
        filters: r.filter_criteria.as_ref().map(|f| f.patterns.clone()),
        function_response_types: r.function_response_types.as_ref().map(|t| t.types.clone()),
        max_concurrency: r.scaling_config.as_ref().map(|s| s.maximum_concurrency),
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
