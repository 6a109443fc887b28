//! gRPC services: `flint.node.v1.Functions`, health and reflection. Proto in,
//! domain types to the node, proto out; errors mapped in [`status`].

mod status;

use std::sync::Arc;

use flint_proto::node::v1 as pb;
use flint_proto::node::v1::functions_server::{Functions, FunctionsServer};
use tonic::{Request, Response, Status};

use crate::functions::{Function, FunctionSpec};
use crate::invoke::{InvocationType, InvokeRequest};
use crate::node::Node;

/// Large enough for a 50 MB package plus framing.
pub const MAX_MESSAGE: usize = 70 * 1024 * 1024;

pub struct FunctionsService {
    node: Arc<Node>,
}

impl FunctionsService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    pub fn into_server(self) -> FunctionsServer<Self> {
        FunctionsServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    fn to_pb(&self, f: &Function) -> pb::FunctionConfiguration {
        pb::FunctionConfiguration {
            function_name: f.name.clone(),
            function_arn: self.node.arn(f),
            runtime: f.runtime.name().into(),
            handler: f.handler.clone(),
            memory_size: f.memory_mb,
            timeout: f.timeout_s,
            environment: f.environment.clone().into_iter().collect(),
            code_sha256: f.code_sha256_b64.clone(),
            code_size: f.code_size,
            last_modified: f.last_modified.clone(),
            version: "$LATEST".into(),
            description: f.description.clone(),
            state: "Active".into(),
        }
    }
}

#[tonic::async_trait]
impl Functions for FunctionsService {
    async fn create_function(
        &self,
        request: Request<pb::CreateFunctionRequest>,
    ) -> Result<Response<pb::FunctionConfiguration>, Status> {
        let r = request.into_inner();
        let spec = FunctionSpec {
            name: r.function_name,
            runtime: r.runtime,
            handler: r.handler,
            memory_mb: r.memory_size,
            timeout_s: r.timeout,
            environment: r.environment.into_iter().collect(),
            description: r.description,
        };
        if r.zip_file.is_empty() {
            return Err(status::invalid("ZipFile: a deployment package is required"));
        }
        let f = self.node.create_function(spec, r.zip_file).await?;
        Ok(Response::new(self.to_pb(&f)))
    }

    async fn get_function(
        &self,
        request: Request<pb::GetFunctionRequest>,
    ) -> Result<Response<pb::GetFunctionResponse>, Status> {
        let r = request.into_inner();
        let f = self.node.get_function(&r.function_name, &r.qualifier)?;
        Ok(Response::new(pb::GetFunctionResponse {
            configuration: Some(self.to_pb(&f)),
            code_location: self.node.code_location(&f),
        }))
    }

    async fn list_functions(
        &self,
        _request: Request<pb::ListFunctionsRequest>,
    ) -> Result<Response<pb::ListFunctionsResponse>, Status> {
        let fs = self.node.list_functions()?;
        Ok(Response::new(pb::ListFunctionsResponse {
            functions: fs.iter().map(|f| self.to_pb(f)).collect(),
        }))
    }

    async fn delete_function(
        &self,
        request: Request<pb::DeleteFunctionRequest>,
    ) -> Result<Response<pb::DeleteFunctionResponse>, Status> {
        let r = request.into_inner();
        self.node.delete_function(&r.function_name).await?;
        Ok(Response::new(pb::DeleteFunctionResponse {}))
    }

    async fn invoke(
        &self,
        request: Request<pb::InvokeRequest>,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        let r = request.into_inner();
        let invocation_type = match pb::InvocationType::try_from(r.invocation_type) {
            Ok(pb::InvocationType::RequestResponse) => InvocationType::RequestResponse,
            Ok(pb::InvocationType::Event) => InvocationType::Event,
            Ok(pb::InvocationType::DryRun) => InvocationType::DryRun,
            Err(_) => return Err(status::invalid("InvocationType: unknown value")),
        };
        let log_tail = match pb::LogType::try_from(r.log_type) {
            Ok(pb::LogType::Tail) => true,
            Ok(pb::LogType::None) => false,
            Err(_) => return Err(status::invalid("LogType: unknown value")),
        };
        let res = self
            .node
            .invoke(InvokeRequest {
                function_name: r.function_name,
                qualifier: r.qualifier,
                invocation_type,
                log_tail,
                payload: r.payload,
                client_context: r.client_context,
            })
            .await?;
        use base64::Engine as _;
        Ok(Response::new(pb::InvokeResponse {
            status_code: res.status_code,
            function_error: res
                .function_error
                .map(|e| e.name().to_string())
                .unwrap_or_default(),
            log_result: res
                .log_tail
                .map(|t| base64::engine::general_purpose::STANDARD.encode(t))
                .unwrap_or_default(),
            executed_version: res.executed_version,
            payload: res.payload,
            request_id: res.request_id,
        }))
    }
}
