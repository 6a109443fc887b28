//! gRPC service `flint.node.v1.Pipelines`. Proto in,
//! [`crate::pipelines::Pipelines`], proto out.

use std::sync::Arc;

use flint_proto::node::v1 as pb;
use flint_proto::node::v1::pipelines_server::{Pipelines as PipelinesApi, PipelinesServer};
use tonic::{Request, Response, Status};

use crate::pipelines::{Pipeline, Pipelines};

pub struct PipelinesService {
    pipelines: Arc<Pipelines>,
}

impl PipelinesService {
    pub fn server(pipelines: Arc<Pipelines>) -> PipelinesServer<Self> {
        PipelinesServer::new(Self { pipelines })
    }
}

fn ts(ms: i64) -> String {
    if ms == 0 {
        String::new()
    } else {
        crate::time::rfc3339_ms(ms)
    }
}

fn describe(p: Pipeline) -> pb::PipelineDescription {
    pb::PipelineDescription {
        name: p.name,
        repository: p.repository.display().to_string(),
        branch: p.branch,
        stack_name: p.stack_name,
        created: ts(p.created_ms),
        last_commit: p.last_commit.unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl PipelinesApi for PipelinesService {
    async fn create_pipeline(
        &self,
        request: Request<pb::CreatePipelineRequest>,
    ) -> Result<Response<pb::PipelineDescription>, Status> {
        let r = request.into_inner();
        let p = self.pipelines.create(Pipeline {
            name: r.name,
            repository: r.repository.into(),
            branch: if r.branch.is_empty() {
                "main".into()
            } else {
                r.branch
            },
            stack_name: r.stack_name,
            created_ms: 0,
            last_commit: None,
        })?;
        Ok(Response::new(describe(p)))
    }

    async fn list_pipelines(
        &self,
        _request: Request<pb::ListPipelinesRequest>,
    ) -> Result<Response<pb::ListPipelinesResponse>, Status> {
        Ok(Response::new(pb::ListPipelinesResponse {
            pipelines: self.pipelines.list()?.into_iter().map(describe).collect(),
        }))
    }

    async fn delete_pipeline(
        &self,
        request: Request<pb::DeletePipelineRequest>,
    ) -> Result<Response<pb::DeletePipelineResponse>, Status> {
        self.pipelines.delete(&request.into_inner().name).await?;
        Ok(Response::new(pb::DeletePipelineResponse {}))
    }

    async fn list_pipeline_runs(
        &self,
        request: Request<pb::ListPipelineRunsRequest>,
    ) -> Result<Response<pb::ListPipelineRunsResponse>, Status> {
        let runs = self.pipelines.runs(&request.into_inner().name)?;
        Ok(Response::new(pb::ListPipelineRunsResponse {
            runs: runs
                .into_iter()
                .map(|r| pb::PipelineRun {
                    id: r.id,
                    commit: r.commit,
                    message: r.message,
                    status: r.status,
                    reason: r.reason,
                    started: ts(r.started_ms),
                    ended: ts(r.ended_ms),
                    stages: r
                        .stages
                        .into_iter()
                        .map(|s| pb::PipelineStage {
                            name: s.name,
                            status: s.status,
                            log: s.log,
                            started: ts(s.started_ms),
                            ended: ts(s.ended_ms),
                        })
                        .collect(),
                })
                .collect(),
        }))
    }
}
