//! Asynchronous invocation's shapes: event invoke configurations, invocation
//! records and the queue's view, domain values to proto and back.

use flint_proto::node::v1 as pb;

use crate::events::QueueView;
use crate::functions::event_config::{EventConfigChange, EventInvokeConfig};

pub fn change(r: &pb::PutFunctionEventInvokeConfigRequest) -> EventConfigChange {
    let d = r.destination_config.as_ref();
    EventConfigChange {
        maximum_retry_attempts: r.maximum_retry_attempts,
        maximum_event_age_s: r.maximum_event_age_in_seconds,
        on_success: d
            .and_then(|d| d.on_success.as_ref())
            .map(|s| s.destination.clone()),
        on_failure: d
            .and_then(|d| d.on_failure.as_ref())
            .map(|s| s.destination.clone()),
    }
}

pub fn config_pb(
    region: &str,
    account: &str,
    c: &EventInvokeConfig,
) -> pb::FunctionEventInvokeConfig {
    // Stored qualifiers are `$LATEST`, a version or an alias, never empty.
    let q = &c.qualifier;
    pb::FunctionEventInvokeConfig {
        function_arn: format!(
            "arn:aws:lambda:{region}:{account}:function:{}:{q}",
            c.function
        ),
        last_modified: c.last_modified.clone(),
        maximum_retry_attempts: c.maximum_retry_attempts,
        maximum_event_age_in_seconds: c.maximum_event_age_s,
        destination_config: Some(pb::DestinationConfig {
            on_success: c.on_success.as_ref().map(|d| pb::OnSuccess {
                destination: d.clone(),
            }),
            on_failure: c.on_failure.as_ref().map(|d| pb::OnFailure {
                destination: d.clone(),
            }),
        }),
    }
}

pub fn queue_pb(v: &QueueView) -> pb::EventQueue {
    pb::EventQueue {
        function_name: v.function.clone(),
        waiting: v.waiting,
        in_flight: v.in_flight,
        oldest_age_ms: v.oldest_age_ms,
        events_received: v.received,
        events_dropped: v.dropped,
        events_succeeded: v.succeeded,
        last_event_age_ms: v.last_event_age_ms,
        undelivered: v.undelivered,
        dropped: v
            .recent_drops
            .iter()
            .map(|d| pb::DroppedEvent {
                request_id: d.request_id.clone(),
                qualifier: d.qualifier.clone(),
                reason: d.reason.clone(),
                dropped_at: crate::time::rfc3339_ms(d.at_ms),
            })
            .collect(),
    }
}
