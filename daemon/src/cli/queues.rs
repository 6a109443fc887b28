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
    json!({"Attributes": {
        "QueueArn": a.queue_arn,
        "VisibilityTimeout": a.visibility_timeout.to_string(),
        "CreatedTimestamp": a.created_timestamp,
        "ApproximateNumberOfMessages": a.approximate_number_of_messages.to_string(),
        "ApproximateNumberOfMessagesNotVisible": a.approximate_number_of_messages_not_visible.to_string(),
    }})
}

fn visibility(attributes: Option<String>) -> Result<Option<u32>, CliError> {
    let Some(a) = attributes else { return Ok(None) };
    let v = a
        .strip_prefix("VisibilityTimeout=")
        .ok_or_else(|| CliError::Usage("--attributes: VisibilityTimeout=SECONDS".into()))?;
    v.parse()
        .map(Some)
        .map_err(|_| CliError::Usage(format!("--attributes: {v:?} is not a number of seconds")))
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
                .create_queue(pb::CreateQueueRequest {
                    queue_name,
                    visibility_timeout: visibility(attributes)?,
                })
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
        } => {
            let r = q
                .send_message(pb::SendMessageRequest {
                    queue_name,
                    message_body,
                    message_attributes: Default::default(),
                })
                .await
                .map_err(svc("SendMessage"))?
                .into_inner();
            emit(output, json!({"MessageId": r.message_id}), &[], vec![]);
        }
        Command::ReceiveMessage {
            queue_name,
            max_number_of_messages,
        } => {
            let r = q
                .receive_message(pb::ReceiveMessageRequest {
                    queue_name,
                    max_number_of_messages,
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
                        },
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
        assert_eq!(
            visibility(Some("VisibilityTimeout=5".into())).unwrap(),
            Some(5)
        );
        assert!(visibility(Some("Visibility=5".into())).is_err());
    }
}
