//! flintctl's queue commands, shaped like `aws sqs …`, on the node's
//! broker; and the `--dead-letter-config` argument of the function
//! commands.

use flint_proto::node::v1 as pb;
use flint_proto::node::v1::queues_client::QueuesClient;
use serde_json::{json, Value};
use tonic::transport::Channel;

use super::commands::{svc, Command};
use super::{emit, CliError, Output};

/// `TargetArn=ARN` or `{"TargetArn":"ARN"}`.
pub fn dead_letter_config(s: &str) -> Result<pb::DeadLetterConfig, CliError> {
    let target = if s.trim_start().starts_with('{') {
        let v: Value = serde_json::from_str(s)
            .map_err(|e| CliError::Usage(format!("--dead-letter-config: {e}")))?;
        v.get("TargetArn")
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or_else(|| CliError::Usage("--dead-letter-config: TargetArn is required".into()))?
    } else {
        s.strip_prefix("TargetArn=")
            .map(String::from)
            .ok_or_else(|| CliError::Usage("--dead-letter-config: TargetArn=ARN".into()))?
    };
    Ok(pb::DeadLetterConfig { target_arn: target })
}

fn attributes_json(a: &pb::QueueAttributes) -> Value {
    let mut m = json!({
        "QueueArn": a.queue_arn,
        "VisibilityTimeout": a.visibility_timeout.to_string(),
        "DelaySeconds": a.delay_seconds.to_string(),
        "MessageRetentionPeriod": a.message_retention_period.to_string(),
        "CreatedTimestamp": a.created_timestamp,
        "ApproximateNumberOfMessages": a.approximate_number_of_messages.to_string(),
        "ApproximateNumberOfMessagesNotVisible": a.approximate_number_of_messages_not_visible.to_string(),
        "ApproximateNumberOfMessagesDelayed": a.approximate_number_of_messages_delayed.to_string(),
    });
    if a.fifo_queue {
        m["FifoQueue"] = json!("true");
        m["ContentBasedDeduplication"] = json!(a.content_based_deduplication.to_string());
    }
    if !a.redrive_policy.is_empty() {
        m["RedrivePolicy"] = json!(a.redrive_policy);
    }
    json!({ "Attributes": m })
}

/// `--attributes` of create-queue: `Key=Value,Key=Value` (a value may be
/// a JSON object, commas and all) or a JSON object of strings.
fn queue_attributes(
    queue_name: String,
    attributes: Option<String>,
) -> Result<pb::CreateQueueRequest, CliError> {
    let mut r = pb::CreateQueueRequest {
        queue_name,
        ..Default::default()
    };
    let Some(text) = attributes else { return Ok(r) };
    let usage = |m: String| CliError::Usage(format!("--attributes: {m}"));
    let pairs: Vec<(String, String)> = if text.trim_start().starts_with('{') {
        let v: serde_json::Map<String, Value> =
            serde_json::from_str(&text).map_err(|e| usage(e.to_string()))?;
        v.into_iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect()
    } else {
        let mut pairs = Vec::new();
        let (mut depth, mut start) = (0i32, 0usize);
        let bytes = text.as_bytes();
        for i in 0..=bytes.len() {
            let c = bytes.get(i).copied();
            match c {
                Some(b'{') => depth += 1,
                Some(b'}') => depth -= 1,
                Some(b',') | None if depth == 0 => {
                    let item = &text[start..i];
                    let (k, v) = item
                        .split_once('=')
                        .ok_or_else(|| usage(format!("{item:?} is not Key=Value")))?;
                    pairs.push((k.trim().to_string(), v.trim().to_string()));
                    start = i + 1;
                }
                _ => {}
            }
        }
        pairs
    };
    let num = |k: &str, v: &str| {
        v.parse::<u32>()
            .map_err(|_| usage(format!("{k}: {v:?} is not a number")))
    };
    let flag = |k: &str, v: &str| match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(usage(format!("{k}: {v:?} is not true or false"))),
    };
    for (k, v) in pairs {
        match k.as_str() {
            "VisibilityTimeout" => r.visibility_timeout = Some(num(&k, &v)?),
            "DelaySeconds" => r.delay_seconds = Some(num(&k, &v)?),
            "MessageRetentionPeriod" => r.message_retention_period = Some(num(&k, &v)?),
            "FifoQueue" => r.fifo_queue = Some(flag(&k, &v)?),
            "ContentBasedDeduplication" => r.content_based_deduplication = Some(flag(&k, &v)?),
            "RedrivePolicy" => r.redrive_policy = Some(v),
            other => {
                return Err(usage(format!(
                    "{other} is not an attribute Flint's queues have"
                )))
            }
        }
    }
    Ok(r)
}

/// Runs one of the queue commands.
pub async fn run(
    q: &mut QueuesClient<Channel>,
    output: Output,
    command: Command,
) -> Result<(), CliError> {
    match command {
        Command::CreateQueue {
            queue_name,
            attributes,
        } => {
            let a = q
                .create_queue(queue_attributes(queue_name, attributes)?)
                .await
                .map_err(svc("CreateQueue"))?
                .into_inner();
            emit(
                output,
                json!({"QueueUrl": a.queue_arn, "QueueArn": a.queue_arn}),
                &[],
                vec![],
            );
        }
        Command::DeleteQueue { queue_name } => {
            q.delete_queue(pb::QueueRequest { queue_name })
                .await
                .map_err(svc("DeleteQueue"))?;
        }
        Command::ListQueues { queue_name_prefix } => {
            let r = q
                .list_queues(pb::ListQueuesRequest { queue_name_prefix })
                .await
                .map_err(svc("ListQueues"))?
                .into_inner();
            emit(output, json!({"QueueUrls": r.queue_arns}), &[], vec![]);
        }
        Command::GetQueueAttributes { queue_name } => {
            let a = q
                .get_queue_attributes(pb::QueueRequest { queue_name })
                .await
                .map_err(svc("GetQueueAttributes"))?
                .into_inner();
            emit(output, attributes_json(&a), &[], vec![]);
        }
        Command::SendMessage {
            queue_name,
            message_body,
            delay_seconds,
            message_group_id,
            message_deduplication_id,
        } => {
            let r = q
                .send_message(pb::SendMessageRequest {
                    queue_name,
                    message_body,
                    message_attributes: Default::default(),
                    delay_seconds,
                    message_group_id,
                    message_deduplication_id,
                })
                .await
                .map_err(svc("SendMessage"))?
                .into_inner();
            emit(output, json!({"MessageId": r.message_id}), &[], vec![]);
        }
        Command::ReceiveMessage {
            queue_name,
            max_number_of_messages,
            visibility_timeout,
        } => {
            let r = q
                .receive_message(pb::ReceiveMessageRequest {
                    queue_name,
                    max_number_of_messages,
                    visibility_timeout,
                })
                .await
                .map_err(svc("ReceiveMessage"))?
                .into_inner();
            let messages: Vec<Value> = r
                .messages
                .iter()
                .map(|m| {
                    json!({
                        "MessageId": m.message_id,
                        "ReceiptHandle": m.receipt_handle,
                        "Body": m.body,
                        "Attributes": {
                            "ApproximateReceiveCount": m.approximate_receive_count.to_string(),
                            "SentTimestamp": m.sent_timestamp,
                            "ApproximateFirstReceiveTimestamp": m.approximate_first_receive_timestamp,
                            "MessageGroupId": m.message_group_id,
                            "MessageDeduplicationId": m.message_deduplication_id,
                        },
                        "MD5OfBody": m.md5_of_body,
                        "MessageAttributes": m.message_attributes.iter().map(|(k, v)| {
                            (k.clone(), json!({"DataType": "String", "StringValue": v}))
                        }).collect::<serde_json::Map<_, _>>(),
                    })
                })
                .collect();
            emit(output, json!({"Messages": messages}), &[], vec![]);
        }
        Command::DeleteMessage {
            queue_name,
            receipt_handle,
        } => {
            q.delete_message(pb::DeleteMessageRequest {
                queue_name,
                receipt_handle,
            })
            .await
            .map_err(svc("DeleteMessage"))?;
        }
        Command::PurgeQueue { queue_name } => {
            q.purge_queue(pb::QueueRequest { queue_name })
                .await
                .map_err(svc("PurgeQueue"))?;
        }
        _ => unreachable!("not a queue command"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_config_shorthand_and_json() {
        assert_eq!(
            dead_letter_config("TargetArn=arn:x").unwrap().target_arn,
            "arn:x"
        );
        assert_eq!(dead_letter_config("TargetArn=").unwrap().target_arn, "");
        assert_eq!(
            dead_letter_config(r#"{"TargetArn":"arn:y"}"#)
                .unwrap()
                .target_arn,
            "arn:y"
        );
        assert!(dead_letter_config("arn:z").is_err());
        assert!(dead_letter_config("{}").is_err());
        let r = queue_attributes(
            "q".into(),
            Some(r#"VisibilityTimeout=5,RedrivePolicy={"deadLetterTargetArn":"arn:d","maxReceiveCount":2},DelaySeconds=1"#.into()),
        )
        .unwrap();
        assert_eq!(r.visibility_timeout, Some(5));
        assert_eq!(r.delay_seconds, Some(1));
        assert_eq!(
            r.redrive_policy.as_deref(),
            Some(r#"{"deadLetterTargetArn":"arn:d","maxReceiveCount":2}"#)
        );
        let r = queue_attributes(
            "q.fifo".into(),
            Some(r#"{"FifoQueue": "true", "ContentBasedDeduplication": true}"#.into()),
        )
        .unwrap();
        assert_eq!(r.fifo_queue, Some(true));
        assert_eq!(r.content_based_deduplication, Some(true));
        assert!(queue_attributes("q".into(), Some("Visibility=5".into())).is_err());
        assert!(queue_attributes("q".into(), Some("VisibilityTimeout=x".into())).is_err());
    }
}
