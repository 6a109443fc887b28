//! gRPC service `flint.node.v1.Stacks`: applications deployed from SAM
//! templates. Proto in, [`crate::stacks::Stacks`], proto out.

use std::sync::Arc;
use std::time::Duration;

use flint_proto::node::v1 as pb;
use flint_proto::node::v1::stacks_server::{Stacks as StacksApi, StacksServer};
use tonic::{Request, Response, Status};

use crate::stacks::store::StackRecord;
use crate::stacks::{DeployInput, Stacks};

/// A template with its packages; a stack of many functions fits.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

pub struct StacksService {
    stacks: Arc<Stacks>,
}

impl StacksService {
    pub fn server(stacks: Arc<Stacks>) -> StacksServer<Self> {
        StacksServer::new(Self { stacks })
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }
}

fn stack_pb(s: StackRecord) -> pb::Stack {
    pb::Stack {
        stack_name: s.name,
        stack_id: s.id,
        stack_status: s.status,
        stack_status_reason: s.reason,
        description: s.description,
        parameters: s.parameters.into_iter().collect(),
        outputs: s
            .outputs
            .into_iter()
            .map(|(k, v, d)| pb::StackOutput {
                output_key: k,
                output_value: v,
                description: d,
            })
            .collect(),
        creation_time: crate::time::rfc3339_ms(s.created_ms),
        last_updated_time: crate::time::rfc3339_ms(s.updated_ms),
    }
}

#[tonic::async_trait]
impl StacksApi for StacksService {
    async fn deploy_stack(
        &self,
        request: Request<pb::DeployStackRequest>,
    ) -> Result<Response<pb::DeployStackResponse>, Status> {
        let r = request.into_inner();
        let minute = match r.deployment_minute_seconds {
            0 => Some(Duration::from_secs(60)),
            s => Some(Duration::from_secs(u64::from(s))),
        };
        let plan = self
            .stacks
            .deploy(DeployInput {
                stack_name: r.stack_name,
                template: r.template_body,
                parameters: r.parameter_overrides.into_iter().collect(),
                artifacts: r
                    .artifacts
                    .into_iter()
                    .map(|a| (a.uri, a.zip_file))
                    .collect(),
                execute: !r.no_execute_changeset,
                minute,
            })
            .await?;
        Ok(Response::new(pb::DeployStackResponse {
            stack_id: plan.stack_id,
            changes: plan
                .changes
                .into_iter()
                .map(|c| pb::StackChange {
                    action: c.action.name().into(),
                    logical_resource_id: c.logical_id,
                    physical_resource_id: c.physical_id,
                    resource_type: c.resource_type.into(),
                    replacement: c.replacement,
                    details: c.details,
                })
                .collect(),
            executing: plan.executing,
        }))
    }

    async fn describe_stacks(
        &self,
        request: Request<pb::DescribeStacksRequest>,
    ) -> Result<Response<pb::DescribeStacksResponse>, Status> {
        let name = request.into_inner().stack_name;
        let stacks = if name.is_empty() {
            self.stacks
                .list()?
                .into_iter()
                .filter(|s| s.status != "DELETE_COMPLETE")
                .collect()
        } else {
            vec![self.stacks.describe(&name)?]
        };
        Ok(Response::new(pb::DescribeStacksResponse {
            stacks: stacks.into_iter().map(stack_pb).collect(),
        }))
    }

    async fn list_stacks(
        &self,
        _request: Request<pb::ListStacksRequest>,
    ) -> Result<Response<pb::ListStacksResponse>, Status> {
        Ok(Response::new(pb::ListStacksResponse {
            stacks: self.stacks.list()?.into_iter().map(stack_pb).collect(),
        }))
    }

    async fn delete_stack(
        &self,
        request: Request<pb::DeleteStackRequest>,
    ) -> Result<Response<pb::DeleteStackResponse>, Status> {
        self.stacks.delete(&request.into_inner().stack_name).await?;
        Ok(Response::new(pb::DeleteStackResponse {}))
    }

    async fn describe_stack_events(
        &self,
        request: Request<pb::DescribeStackEventsRequest>,
    ) -> Result<Response<pb::DescribeStackEventsResponse>, Status> {
        let name = request.into_inner().stack_name;
        let events = self.stacks.events(&name)?;
        Ok(Response::new(pb::DescribeStackEventsResponse {
            events: events
                .into_iter()
                .map(|e| pb::StackEvent {
                    event_id: e.event_id,
                    stack_name: name.clone(),
                    logical_resource_id: e.logical_id,
                    physical_resource_id: e.physical_id,
                    resource_type: e.resource_type,
                    timestamp: crate::time::rfc3339_ms(e.timestamp_ms),
                    resource_status: e.status,
                    resource_status_reason: e.reason,
                })
                .collect(),
        }))
    }

    async fn list_stack_resources(
        &self,
        request: Request<pb::ListStackResourcesRequest>,
    ) -> Result<Response<pb::ListStackResourcesResponse>, Status> {
        let name = request.into_inner().stack_name;
        Ok(Response::new(pb::ListStackResourcesResponse {
            resources: self
                .stacks
                .resources(&name)?
                .into_iter()
                .map(|r| pb::StackResource {
                    logical_resource_id: r.logical_id,
                    physical_resource_id: match &r.def {
                        crate::stacks::defs::Def::Layer(_) => r.physical.reference.clone(),
                        _ => r.physical_id.clone(),
                    },
                    resource_type: r.kind.type_name().into(),
                })
                .collect(),
        }))
    }
}
