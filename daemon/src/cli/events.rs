//! flintctl's asynchronous-invocation commands: event invoke
//! configurations (shaped like `aws lambda put-function-event-invoke-config
//! …`), the records of event-bus destinations, and the queue's view.

use flint_proto::node::v1 as pb;
use flint_proto::node::v1::functions_client::FunctionsClient;
use flint_proto::node::v1::node_client::NodeClient;
use serde_json::{json, Value};
use tonic::transport::Channel;

use super::args::EventConfigArgs;
use super::commands::{svc, Command};
use super::{emit, CliError, Output};

fn config_json(c: &pb::FunctionEventInvokeConfig) -> Value {
    let mut v = json!({
        "FunctionArn": c.function_arn,
        "LastModified": c.last_modified,
    });
    if let Some(r) = c.maximum_retry_attempts {
        v["MaximumRetryAttempts"] = json!(r);
    }
    if let Some(a) = c.maximum_event_age_in_seconds {
        v["MaximumEventAgeInSeconds"] = json!(a);
    }
    let d = c.destination_config.clone().unwrap_or_default();
    let mut dest = json!({});
    if let Some(s) = d.on_success {
        dest["OnSuccess"] = json!({"Destination": s.destination});
    }
    if let Some(f) = d.on_failure {
        dest["OnFailure"] = json!({"Destination": f.destination});
    }
    v["DestinationConfig"] = dest;
    v
}

/// `{"OnSuccess":{"Destination":ARN},"OnFailure":{"Destination":ARN}}`; a
/// key left out is not changed by an update, an empty `{}` removes it.
pub fn destination_config(s: &str) -> Result<pb::DestinationConfig, CliError> {
    let bad = |m: &str| CliError::Usage(format!("--destination-config: {m}"));
    let v: Value = serde_json::from_str(s).map_err(|e| bad(&e.to_string()))?;
    let obj = v.as_object().ok_or_else(|| bad("must be a JSON object"))?;
    for k in obj.keys() {
        if k != "OnSuccess" && k != "OnFailure" {
            return Err(bad(&format!("unknown key {k:?} (OnSuccess, OnFailure)")));
        }
    }
    let dest = |k: &str| -> Result<Option<String>, CliError> {
        match obj.get(k) {
            None => Ok(None),
            Some(d) => Ok(Some(
                d.get("Destination")
                    .map(|x| {
                        x.as_str()
                            .map(String::from)
                            .ok_or_else(|| bad("Destination must be a string"))
                    })
                    .transpose()?
                    .unwrap_or_default(),
            )),
        }
    };
    Ok(pb::DestinationConfig {
        on_success: dest("OnSuccess")?.map(|destination| pb::OnSuccess { destination }),
        on_failure: dest("OnFailure")?.map(|destination| pb::OnFailure { destination }),
    })
}

fn put_request(a: EventConfigArgs) -> Result<pb::PutFunctionEventInvokeConfigRequest, CliError> {
    Ok(pb::PutFunctionEventInvokeConfigRequest {
        function_name: a.function_name,
        qualifier: a.qualifier,
        maximum_retry_attempts: a.maximum_retry_attempts,
        maximum_event_age_in_seconds: a.maximum_event_age_in_seconds,
        destination_config: a
            .destination_config
            .as_deref()
            .map(destination_config)
            .transpose()?,
    })
}

fn age(ms: u64) -> String {
    if ms == 0 {
        "-".into()
    } else if ms < 10_000 {
        format!("{ms} ms")
    } else {
        format!("{} s", ms / 1000)
    }
}

/// Runs one of the asynchronous-invocation commands.
pub async fn run(
    c: &mut FunctionsClient<Channel>,
    n: &mut NodeClient<Channel>,
    output: Output,
    command: Command,
) -> Result<(), CliError> {
    match command {
        Command::PutFunctionEventInvokeConfig { config } => {
            let r = c
                .put_function_event_invoke_config(put_request(config)?)
                .await
                .map_err(svc("PutFunctionEventInvokeConfig"))?
                .into_inner();
            emit(output, config_json(&r), &[], vec![]);
        }
        Command::UpdateFunctionEventInvokeConfig { config } => {
            let r = c
                .update_function_event_invoke_config(put_request(config)?)
                .await
                .map_err(svc("UpdateFunctionEventInvokeConfig"))?
                .into_inner();
            emit(output, config_json(&r), &[], vec![]);
        }
        Command::GetFunctionEventInvokeConfig {
            function_name,
            qualifier,
        } => {
            let r = c
                .get_function_event_invoke_config(pb::GetFunctionEventInvokeConfigRequest {
                    function_name,
                    qualifier,
                })
                .await
                .map_err(svc("GetFunctionEventInvokeConfig"))?
                .into_inner();
            emit(output, config_json(&r), &[], vec![]);
        }
        Command::ListFunctionEventInvokeConfigs { function_name } => {
            let r = c
                .list_function_event_invoke_configs(pb::ListFunctionEventInvokeConfigsRequest {
                    function_name,
                })
                .await
                .map_err(svc("ListFunctionEventInvokeConfigs"))?
                .into_inner();
            let list: Vec<Value> = r
                .function_event_invoke_configs
                .iter()
                .map(config_json)
                .collect();
            emit(
                output,
                json!({"FunctionEventInvokeConfigs": list}),
                &[],
                vec![],
            );
        }
        Command::DeleteFunctionEventInvokeConfig {
            function_name,
            qualifier,
        } => {
            c.delete_function_event_invoke_config(pb::GetFunctionEventInvokeConfigRequest {
                function_name,
                qualifier,
            })
            .await
            .map_err(svc("DeleteFunctionEventInvokeConfig"))?;
        }
        Command::SubscribeInvocationRecords {
            event_bus,
            after,
            follow,
        } => {
            let mut stream = c
                .subscribe_invocation_records(pb::SubscribeInvocationRecordsRequest {
                    event_bus,
                    after,
                    follow,
                })
                .await
                .map_err(svc("SubscribeInvocationRecords"))?
                .into_inner();
            while let Some(r) = stream
                .message()
                .await
                .map_err(svc("SubscribeInvocationRecords"))?
            {
                let record: Value =
                    serde_json::from_str(&r.record).unwrap_or(Value::String(r.record));
                println!(
                    "{}",
                    json!({"Sequence": r.sequence, "FunctionName": r.function_name, "Record": record})
                );
            }
        }
        Command::EventQueues => {
            let r = n
                .get_event_queues(pb::GetEventQueuesRequest {})
                .await
                .map_err(svc("GetEventQueues"))?
                .into_inner();
            let json = json!({"EventQueues": r.queues.iter().map(|q| json!({
                "FunctionName": q.function_name,
                "Waiting": q.waiting,
                "InFlight": q.in_flight,
                "OldestAgeMs": q.oldest_age_ms,
                "AsyncEventsReceived": q.events_received,
                "AsyncEventsSucceeded": q.events_succeeded,
                "AsyncEventsDropped": q.events_dropped,
                "AsyncEventAgeMs": q.last_event_age_ms,
                "Undelivered": q.undelivered,
                "Dropped": q.dropped.iter().map(|d| json!({
                    "RequestId": d.request_id,
                    "Qualifier": d.qualifier,
                    "Reason": d.reason,
                    "DroppedAt": d.dropped_at,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>()});
            let mut rows = Vec::new();
            for q in &r.queues {
                let last_drop = q
                    .dropped
                    .first()
                    .map(|d| format!("{} {} {}", d.dropped_at, d.reason, d.request_id))
                    .unwrap_or_else(|| "-".into());
                rows.push(vec![
                    q.function_name.clone(),
                    q.waiting.to_string(),
                    q.in_flight.to_string(),
                    age(q.oldest_age_ms),
                    q.events_received.to_string(),
                    q.events_succeeded.to_string(),
                    q.events_dropped.to_string(),
                    q.undelivered.to_string(),
                    last_drop,
                ]);
            }
            emit(
                output,
                json,
                &[
                    "FUNCTION",
                    "WAITING",
                    "IN FLIGHT",
                    "OLDEST",
                    "RECEIVED",
                    "SUCCEEDED",
                    "DROPPED",
                    "UNDELIVERED",
                    "LAST DROPPED",
                ],
                rows,
            );
        }
        _ => unreachable!("not an asynchronous-invocation command"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_config_reads_the_aws_cli_json() {
        let d =
            destination_config(r#"{"OnSuccess":{"Destination":"arn:a"},"OnFailure":{}}"#).unwrap();
        assert_eq!(d.on_success.unwrap().destination, "arn:a");
        assert_eq!(d.on_failure.unwrap().destination, "");
        let only = destination_config(r#"{"OnFailure":{"Destination":"arn:b"}}"#).unwrap();
        assert!(only.on_success.is_none());
        for bad in [
            "[]",
            "{\"OnWhatever\":{}}",
            "{\"OnSuccess\":{\"Destination\":1}}",
            "x",
        ] {
            assert!(destination_config(bad).is_err(), "{bad}");
        }
    }
}
