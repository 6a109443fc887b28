//! gRPC service `flint.node.v1.Queues`: SQS-shaped queues on the node's
//! broker. Proto in, the node's broker calls, proto out.

use std::sync::Arc;

use flint_proto::node::v1 as pb;
use flint_proto::node::v1::queues_server::{Queues, QueuesServer};
use tonic::{Request, Response, Status};

use crate::broker::{BrokerError, Message, QueueInfo, QueueSettings, RedrivePolicy, SendOptions};
use crate::node::Node;

pub struct QueuesService {
    node: Arc<Node>,
}

impl QueuesService {
    pub fn server(node: Arc<Node>) -> QueuesServer<Self> {
        QueuesServer::new(Self { node })
    }

    fn arn(&self, name: &str) -> String {
        let c = self.node.config();
        format!("arn:aws:sqs:{}:{}:{name}", c.region, c.account_id)
    }

    fn attributes(&self, q: &QueueInfo) -> pb::QueueAttributes {
        pb::QueueAttributes {
            queue_name: q.name.clone(),
            queue_arn: self.arn(&q.name),
            visibility_timeout: q.visibility_timeout_s,
            created_timestamp: timestamp(q.created_ms),
            approximate_number_of_messages: q.visible,
            approximate_number_of_messages_not_visible: q.not_visible,
            approximate_number_of_messages_delayed: q.delayed,
            delay_seconds: q.delay_s,
            message_retention_period: q.retention_s,
            fifo_queue: q.fifo,
            content_based_deduplication: q.content_based_deduplication,
            redrive_policy: q
                .redrive
                .as_ref()
                .map(|(dlq, n)| {
                    serde_json::json!({
                        "deadLetterTargetArn": self.arn(dlq),
                        "maxReceiveCount": n,
                    })
                    .to_string()
                })
                .unwrap_or_default(),
        }
    }
}

use crate::time::rfc3339_ms as timestamp;

fn message_pb(m: Message) -> pb::QueueMessage {
    pb::QueueMessage {
        md5_of_body: m.md5_of_body(),
        approximate_first_receive_timestamp: timestamp(m.first_receive_ms),
        message_group_id: m.group_id.unwrap_or_default(),
        message_deduplication_id: m.deduplication_id.unwrap_or_default(),
        message_id: m.message_id,
        receipt_handle: m.receipt_handle,
        body: m.body,
        message_attributes: m.attributes.into_iter().collect(),
        approximate_receive_count: m.receive_count,
        sent_timestamp: timestamp(m.sent_ms),
    }
}

#[tonic::async_trait]
impl Queues for QueuesService {
    async fn create_queue(
        &self,
        request: Request<pb::CreateQueueRequest>,
    ) -> Result<Response<pb::QueueAttributes>, Status> {
        let r = request.into_inner();
        let b = self.node.broker()?;
        let redrive_policy = match r.redrive_policy.as_deref() {
            None => None,
            Some("") => Some(None),
            Some(json) => Some(Some(serde_json::from_str::<RedrivePolicy>(json).map_err(
                |e| {
                    crate::node::NodeError::from(BrokerError::Invalid {
                        field: "RedrivePolicy",
                        rule: format!("not SQS's redrive policy JSON: {e}"),
                    })
                },
            )?)),
        };
        let settings = QueueSettings {
            visibility_timeout_s: r.visibility_timeout,
            delay_s: r.delay_seconds,
            retention_s: r.message_retention_period,
            fifo: r.fifo_queue,
            content_based_deduplication: r.content_based_deduplication,
            redrive_policy,
        };
        b.create_queue(&r.queue_name, &settings)
            .await
            .map_err(crate::node::NodeError::from)?;
        let q = b
            .queue_info(&r.queue_name)
            .await
            .map_err(crate::node::NodeError::from)?;
        Ok(Response::new(self.attributes(&q)))
    }

    async fn delete_queue(
        &self,
        request: Request<pb::QueueRequest>,
    ) -> Result<Response<pb::DeleteQueueResponse>, Status> {
        let r = request.into_inner();
        self.node
            .broker()?
            .delete_queue(&r.queue_name)
            .await
            .map_err(crate::node::NodeError::from)?;
        Ok(Response::new(pb::DeleteQueueResponse {}))
    }

    async fn list_queues(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let r = request.into_inner();
        let names = self
            .node
            .broker()?
            .list_queues(&r.queue_name_prefix)
            .await
            .map_err(crate::node::NodeError::from)?;
        Ok(Response::new(pb::ListQueuesResponse {
            queue_arns: names.iter().map(|n| self.arn(n)).collect(),
        }))
    }

    async fn get_queue_attributes(
        &self,
        request: Request<pb::QueueRequest>,
    ) -> Result<Response<pb::QueueAttributes>, Status> {
        let r = request.into_inner();
        let q = self
            .node
            .broker()?
            .queue_info(&r.queue_name)
            .await
            .map_err(crate::node::NodeError::from)?;
        Ok(Response::new(self.attributes(&q)))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let r = request.into_inner();
        let id = self
            .node
            .broker()?
            .send_message(
                &r.queue_name,
                &r.message_body,
                &r.message_attributes.into_iter().collect(),
                &SendOptions {
                    delay_s: r.delay_seconds,
                    group_id: Some(r.message_group_id).filter(|g| !g.is_empty()),
                    deduplication_id: Some(r.message_deduplication_id).filter(|d| !d.is_empty()),
                },
            )
            .await
            .map_err(crate::node::NodeError::from)?;
        Ok(Response::new(pb::SendMessageResponse { message_id: id }))
    }

    async fn receive_message(
        &self,
        request: Request<pb::ReceiveMessageRequest>,
    ) -> Result<Response<pb::ReceiveMessageResponse>, Status> {
        let r = request.into_inner();
        let max = r.max_number_of_messages.max(1);
        let got = self
            .node
            .broker()?
            .receive_message(&r.queue_name, max, r.visibility_timeout)
            .await
            .map_err(crate::node::NodeError::from)?;
        Ok(Response::new(pb::ReceiveMessageResponse {
            messages: got.into_iter().map(message_pb).collect(),
        }))
    }

    async fn delete_message(
        &self,
        request: Request<pb::DeleteMessageRequest>,
    ) -> Result<Response<pb::DeleteMessageResponse>, Status> {
        let r = request.into_inner();
        self.node
            .broker()?
            .delete_message(&r.queue_name, &r.receipt_handle)
            .await
            .map_err(crate::node::NodeError::from)?;
        Ok(Response::new(pb::DeleteMessageResponse {}))
    }

    async fn purge_queue(
        &self,
        request: Request<pb::QueueRequest>,
    ) -> Result<Response<pb::PurgeQueueResponse>, Status> {
        let r = request.into_inner();
        self.node
            .broker()?
            .purge_queue(&r.queue_name)
            .await
            .map_err(crate::node::NodeError::from)?;
        Ok(Response::new(pb::PurgeQueueResponse {}))
    }
}
