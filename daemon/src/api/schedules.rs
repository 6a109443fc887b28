//! gRPC service `flint.node.v1.Scheduler`: schedules that invoke functions
//! asynchronously. Proto in, the node's schedule calls, proto out.

use std::sync::Arc;

use flint_proto::node::v1 as pb;
use flint_proto::node::v1::scheduler_server::{Scheduler, SchedulerServer};
use tonic::{Request, Response, Status};

use crate::node::{Node, NodeError};
use crate::sources::schedule::{schedule_arn, ScheduleInput, ScheduleView};

pub struct SchedulerService {
    node: Arc<Node>,
}

impl SchedulerService {
    pub fn server(node: Arc<Node>) -> SchedulerServer<Self> {
        SchedulerServer::new(Self { node })
    }

    async fn schedule_pb(&self, def: crate::sources::schedule::ScheduleDef) -> pb::Schedule {
        let v: ScheduleView = self.node.sources().schedule_view(def).await;
        let (region, account) = self.node.region_account();
        let d = &v.def;
        let mut arn = crate::functions::function_arn(region, account, &d.function_name);
        if !d.qualifier.is_empty() {
            arn = format!("{arn}:{}", d.qualifier);
        }
        let ts = |ms: Option<i64>| ms.map(crate::time::rfc3339_ms).unwrap_or_default();
        pb::Schedule {
            name: d.name.clone(),
            arn: schedule_arn(region, account, &d.name),
            schedule_expression: d.expression.clone(),
            schedule_expression_timezone: d.timezone.clone(),
            target: Some(pb::ScheduleTarget {
                arn,
                input: d.input.clone(),
                role_arn: String::new(),
            }),
            state: if d.enabled { "ENABLED" } else { "DISABLED" }.into(),
            description: d.description.clone(),
            creation_date: ts(Some(d.created_ms)),
            last_modification_date: ts(Some(d.modified_ms)),
            next_invocation: ts(v.next_ms),
            last_invocation: ts(v.last_ms),
            invocations: v.invocations,
            missed: v.missed,
            last_error: v.last_error.clone().unwrap_or_default(),
        }
    }
}

fn input(r: pb::ScheduleRequest) -> ScheduleInput {
    let target = r.target.unwrap_or_default();
    ScheduleInput {
        name: r.name,
        expression: r.schedule_expression,
        timezone: r.schedule_expression_timezone,
        target_arn: target.arn,
        input: target.input,
        state: r.state,
        description: r.description,
        flexible_time_window: r.flexible_time_window_mode,
    }
}

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    async fn create_schedule(
        &self,
        request: Request<pb::ScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let def = self
            .node
            .sources()
            .create_schedule(&input(request.into_inner()))
            .map_err(NodeError::from)?;
        Ok(Response::new(self.schedule_pb(def).await))
    }

    async fn update_schedule(
        &self,
        request: Request<pb::ScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let def = self
            .node
            .sources()
            .update_schedule(&input(request.into_inner()))
            .map_err(NodeError::from)?;
        Ok(Response::new(self.schedule_pb(def).await))
    }

    async fn get_schedule(
        &self,
        request: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let def = self
            .node
            .sources()
            .get_schedule(&request.into_inner().name)
            .map_err(NodeError::from)?;
        Ok(Response::new(self.schedule_pb(def).await))
    }

    async fn delete_schedule(
        &self,
        request: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        self.node
            .sources()
            .delete_schedule(&request.into_inner().name)
            .await
            .map_err(NodeError::from)?;
        Ok(Response::new(pb::DeleteScheduleResponse {}))
    }

    async fn list_schedules(
        &self,
        _request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let list = self
            .node
            .sources()
            .list_schedules()
            .map_err(NodeError::from)?;
        let mut out = Vec::new();
        for d in list {
            out.push(self.schedule_pb(d).await);
        }
        Ok(Response::new(pb::ListSchedulesResponse { schedules: out }))
    }
}
