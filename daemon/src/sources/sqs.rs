//! The queue source on the node's broker: SQS-shaped queues, their
//! records in AWS's `aws:sqs` event shape.

use std::sync::Arc;

use serde_json::{json, Value};

use super::poller::{QueueSource, SourceMessage};
use super::SourcesError;
use crate::broker::{Broker, Message};

pub struct BrokerQueue {
    pub broker: Arc<Broker>,
    pub name: String,
    pub arn: String,
    pub region: String,
    pub account: String,
}

impl BrokerQueue {
    /// A message as Lambda's SQS event record.
    fn record(&self, m: &Message) -> Value {
        let mut attributes = json!({
            "ApproximateReceiveCount": m.receive_count.to_string(),
            "SentTimestamp": m.sent_ms.to_string(),
            "SenderId": self.account,
            "ApproximateFirstReceiveTimestamp": m.first_receive_ms.to_string(),
        });
        if let Some(g) = &m.group_id {
            attributes["MessageGroupId"] = json!(g);
        }
        if let Some(d) = &m.deduplication_id {
            attributes["MessageDeduplicationId"] = json!(d);
        }
        let message_attributes: serde_json::Map<String, Value> = m
            .attributes
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    json!({
                        "stringValue": v,
                        "stringListValues": [],
                        "binaryListValues": [],
                        "dataType": "String",
                    }),
                )
            })
            .collect();
        json!({
            "messageId": m.message_id,
            "receiptHandle": m.receipt_handle,
            "body": m.body,
            "attributes": attributes,
            "messageAttributes": message_attributes,
            "md5OfBody": m.md5_of_body(),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.arn,
            "awsRegion": self.region,
        })
    }
}

/// What filter patterns see of a record: the record, its body parsed
/// when it is JSON (Lambda's rule for SQS).
pub fn filter_view(record: &Value) -> Value {
    let mut v = record.clone();
    if let Some(parsed) = record["body"]
        .as_str()
        .and_then(|b| serde_json::from_str::<Value>(b).ok())
    {
        v["body"] = parsed;
    }
    v
}

#[async_trait::async_trait]
impl QueueSource for BrokerQueue {
    async fn receive(&self, max: u32) -> Result<Vec<SourceMessage>, SourcesError> {
        let got = self.broker.receive_message(&self.name, max, None).await?;
        Ok(got
            .iter()
            .map(|m| {
                let record = self.record(m);
                SourceMessage {
                    id: m.message_id.clone(),
                    handle: m.receipt_handle.clone(),
                    filter_view: filter_view(&record),
                    record,
                }
            })
            .collect())
    }

    async fn delete(&self, handles: &[String]) -> Result<(), SourcesError> {
        // A stale receipt: the message was received again meanwhile (its
        // visibility timeout ran out) and that newer receive owns it now.
        self.broker.delete_messages(&self.name, handles).await?;
        Ok(())
    }

    async fn release(&self, handles: &[String], delay_ms: u64) -> Result<(), SourcesError> {
        self.broker
            .release_messages(&self.name, handles, delay_ms)
            .await?;
        Ok(())
    }

    async fn backlog(&self) -> Result<u64, SourcesError> {
        let q = self.broker.queue_info(&self.name).await?;
        Ok(q.visible + q.not_visible + q.delayed)
    }
}
