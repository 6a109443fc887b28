//! gRPC services: `flint.node.v1.Functions` and `flint.node.v1.Node`, health
//! and reflection (`flint.node.v1.Queues` is in `queues.rs`). Proto in,
//! domain types to the node, proto out; errors mapped in [`status`].
//!
//! Why one file of 1,000 lines: one method per RPC of the two services,
//! each only converting proto to domain types and back; the shapes of
//! scaling and async are in `scaling.rs` and `events.rs`, the error
//! mapping in `status.rs`.

mod events;
mod pipelines;
mod queues;
mod scaling;
mod schedules;
mod sources;
mod stacks;
mod status;
mod streams;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flint_proto::node::v1 as pb;
use flint_proto::node::v1::functions_server::{Functions, FunctionsServer};
use flint_proto::node::v1::node_server::{Node as NodeApi, NodeServer};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::functions::{Alias, ConfigUpdate, Function, FunctionSpec, LayerVersion};
use crate::invoke::{InvocationType, InvokeRequest};
use crate::launch::Preparation;
use crate::logs::LogRecord;
use crate::node::{AliasSpec, InstanceStatus, Node};

/// Large enough for a 50 MB package plus framing.
pub const MAX_MESSAGE: usize = 70 * 1024 * 1024;

pub use pipelines::PipelinesService;
pub use queues::QueuesService;
pub use schedules::SchedulerService;
pub use stacks::StacksService;
pub use streams::StreamsService;

pub struct FunctionsService {
    node: Arc<Node>,
}

/// A version's `State` and `LastUpdateStatus`, as Lambda reports them,
/// from where its function snapshot stands.
struct VersionState {
    state: &'static str,
    state_reason: String,
    state_reason_code: &'static str,
    last_update_status: &'static str,
    last_update_status_reason: String,
    last_update_status_reason_code: &'static str,
}

impl VersionState {
    fn of(p: Option<Preparation>) -> Self {
        let ok = Self {
            state: "Active",
            state_reason: String::new(),
            state_reason_code: "",
            last_update_status: "Successful",
            last_update_status_reason: String::new(),
            last_update_status_reason_code: "",
        };
        match p {
            None => ok,
            Some(Preparation::Pending) => Self {
                state: "Pending",
                state_reason: "The function snapshot is being created.".into(),
                state_reason_code: "Creating",
                last_update_status: "InProgress",
                last_update_status_reason: "The function snapshot is being created.".into(),
                last_update_status_reason_code: "Creating",
            },
            Some(Preparation::InitFailed(error_type)) => {
                let why = format!(
                    "The function's init failed while its snapshot was created ({error_type}); invocations run the init again."
                );
                Self {
                    state: "Failed",
                    state_reason: why.clone(),
                    state_reason_code: "FunctionError",
                    last_update_status: "Failed",
                    last_update_status_reason: why,
                    last_update_status_reason_code: "FunctionError",
                }
            }
            Some(Preparation::SnapshotFailed(e)) => Self {
                last_update_status: "Failed",
                last_update_status_reason: format!(
                    "The function snapshot could not be created ({e}); instances start from the runtime snapshot."
                ),
                last_update_status_reason_code: "InternalError",
                ..ok
            },
        }
    }
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
        let state = VersionState::of(self.node.preparation(f));
        pb::FunctionConfiguration {
            function_name: f.name.clone(),
            function_arn: if f.version == crate::functions::LATEST {
                self.node.arn(f)
            } else {
                let (r, a) = self.node.region_account();
                f.version_arn(r, a)
            },
            runtime: f.runtime.name().into(),
            handler: f.handler.clone(),
            memory_size: f.memory_mb,
            timeout: f.timeout_s,
            environment: f.environment.clone().into_iter().collect(),
            code_sha256: f.code_sha256_b64.clone(),
            code_size: f.code_size,
            last_modified: f.last_modified.clone(),
            version: f.version.clone(),
            description: f.description.clone(),
            state: state.state.into(),
            state_reason: state.state_reason,
            state_reason_code: state.state_reason_code.into(),
            last_update_status: state.last_update_status.into(),
            last_update_status_reason: state.last_update_status_reason,
            last_update_status_reason_code: state.last_update_status_reason_code.into(),
            layers: f
                .layers
                .iter()
                .map(|l| pb::Layer {
                    arn: l.arn.clone(),
                    code_size: l.code_size,
                })
                .collect(),
            ephemeral_storage: f.ephemeral_mb,
            dead_letter_config: f.dead_letter_target.as_ref().map(|t| pb::DeadLetterConfig {
                target_arn: t.clone(),
            }),
            network_config: Some(network_pb(&f.network)),
            revision_id: f.revision_id(),
        }
    }

    fn event_config_pb(
        &self,
        c: &crate::functions::event_config::EventInvokeConfig,
    ) -> pb::FunctionEventInvokeConfig {
        let cfg = self.node.config();
        events::config_pb(&cfg.region, &cfg.account_id, c)
    }

    fn alias_pb(&self, a: &Alias) -> pb::AliasConfiguration {
        let (r, acct) = self.node.region_account();
        pb::AliasConfiguration {
            alias_arn: a.arn(r, acct),
            name: a.name.clone(),
            function_version: a.version.clone(),
            description: a.description.clone(),
            routing_config: a
                .additional
                .as_ref()
                .map(|(v, w)| pb::AliasRoutingConfiguration {
                    additional_version_weights: [(v.clone(), *w)].into(),
                }),
        }
    }

    fn layer_pb(&self, l: &LayerVersion) -> pb::LayerVersion {
        let (r, a) = self.node.region_account();
        pb::LayerVersion {
            layer_arn: l.layer_arn(r, a),
            layer_version_arn: l.version_arn(r, a),
            layer_name: l.name.clone(),
            version: l.version,
            description: l.description.clone(),
            created_date: l.created.clone(),
            compatible_runtimes: l.compatible_runtimes.clone(),
            code_sha256: l.sha256_b64.clone(),
            code_size: l.code_size,
        }
    }
}

fn routing(r: Option<pb::AliasRoutingConfiguration>) -> Option<Vec<(String, f64)>> {
    r.map(|r| r.additional_version_weights.into_iter().collect())
}

impl FunctionsService {
    fn mapping_pb(&self, v: crate::sources::MappingView) -> pb::EventSourceMappingConfiguration {
        let (r, a) = self.node.region_account();
        sources::mapping_pb(r, a, &v)
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
            layers: r.layers,
            ephemeral_mb: r.ephemeral_storage,
            dead_letter_target: r
                .dead_letter_config
                .map(|d| d.target_arn)
                .filter(|t| !t.is_empty()),
            network: r
                .network_config
                .map(network_from_pb)
                .transpose()?
                .unwrap_or_default(),
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

    async fn update_function_code(
        &self,
        request: Request<pb::UpdateFunctionCodeRequest>,
    ) -> Result<Response<pb::FunctionConfiguration>, Status> {
        let r = request.into_inner();
        let f = self
            .node
            .update_function_code(
                &r.function_name,
                r.zip_file,
                r.publish,
                non_empty(r.revision_id),
            )
            .await?;
        Ok(Response::new(self.to_pb(&f)))
    }

    async fn update_function_configuration(
        &self,
        request: Request<pb::UpdateFunctionConfigurationRequest>,
    ) -> Result<Response<pb::FunctionConfiguration>, Status> {
        let r = request.into_inner();
        let u = ConfigUpdate {
            handler: r.handler,
            runtime: r.runtime,
            memory_mb: r.memory_size,
            timeout_s: r.timeout,
            environment: r.environment.map(|e| e.variables.into_iter().collect()),
            layers: r.layers.map(|l| l.arns),
            ephemeral_mb: r.ephemeral_storage,
            description: r.description,
            dead_letter_target: r.dead_letter_config.map(|d| d.target_arn),
            network: r.network_config.map(network_from_pb).transpose()?,
            revision_id: non_empty(r.revision_id),
        };
        let f = self
            .node
            .update_function_configuration(&r.function_name, u)
            .await?;
        Ok(Response::new(self.to_pb(&f)))
    }

    async fn invoke(
        &self,
        request: Request<pb::InvokeRequest>,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        // A caller's trace context: W3C `traceparent`, or X-Ray's header.
        let header = |k: &str| request.metadata().get(k).and_then(|v| v.to_str().ok());
        let trace = crate::observe::trace::Incoming::parse(
            header("traceparent"),
            header("x-amzn-trace-id"),
        );
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
                trace,
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

    async fn publish_version(
        &self,
        request: Request<pb::PublishVersionRequest>,
    ) -> Result<Response<pb::FunctionConfiguration>, Status> {
        let r = request.into_inner();
        let f = self
            .node
            .publish_version(&r.function_name, &r.description)?;
        Ok(Response::new(self.to_pb(&f)))
    }

    async fn list_versions_by_function(
        &self,
        request: Request<pb::ListVersionsByFunctionRequest>,
    ) -> Result<Response<pb::ListVersionsByFunctionResponse>, Status> {
        let r = request.into_inner();
        let vs = self.node.list_versions(&r.function_name)?;
        Ok(Response::new(pb::ListVersionsByFunctionResponse {
            versions: vs.iter().map(|f| self.to_pb(f)).collect(),
        }))
    }

    async fn create_alias(
        &self,
        request: Request<pb::CreateAliasRequest>,
    ) -> Result<Response<pb::AliasConfiguration>, Status> {
        let r = request.into_inner();
        let a = self.node.create_alias(AliasSpec {
            function: r.function_name,
            name: r.name,
            version: Some(r.function_version),
            description: Some(r.description),
            routing: routing(r.routing_config),
        })?;
        Ok(Response::new(self.alias_pb(&a)))
    }

    async fn update_alias(
        &self,
        request: Request<pb::UpdateAliasRequest>,
    ) -> Result<Response<pb::AliasConfiguration>, Status> {
        let r = request.into_inner();
        let a = self.node.update_alias(AliasSpec {
            function: r.function_name,
            name: r.name,
            version: r.function_version,
            description: r.description,
            routing: routing(r.routing_config),
        })?;
        Ok(Response::new(self.alias_pb(&a)))
    }

    async fn get_alias(
        &self,
        request: Request<pb::GetAliasRequest>,
    ) -> Result<Response<pb::AliasConfiguration>, Status> {
        let r = request.into_inner();
        let a = self.node.get_alias(&r.function_name, &r.name)?;
        Ok(Response::new(self.alias_pb(&a)))
    }

    async fn list_aliases(
        &self,
        request: Request<pb::ListAliasesRequest>,
    ) -> Result<Response<pb::ListAliasesResponse>, Status> {
        let r = request.into_inner();
        let list = self.node.list_aliases(&r.function_name)?;
        Ok(Response::new(pb::ListAliasesResponse {
            aliases: list.iter().map(|a| self.alias_pb(a)).collect(),
        }))
    }

    async fn delete_alias(
        &self,
        request: Request<pb::DeleteAliasRequest>,
    ) -> Result<Response<pb::DeleteAliasResponse>, Status> {
        let r = request.into_inner();
        self.node.delete_alias(&r.function_name, &r.name)?;
        Ok(Response::new(pb::DeleteAliasResponse {}))
    }

    async fn put_function_concurrency(
        &self,
        request: Request<pb::PutFunctionConcurrencyRequest>,
    ) -> Result<Response<pb::Concurrency>, Status> {
        let r = request.into_inner();
        let n = self
            .node
            .put_function_concurrency(&r.function_name, r.reserved_concurrent_executions)?;
        Ok(Response::new(pb::Concurrency {
            reserved_concurrent_executions: Some(n.into()),
        }))
    }

    async fn get_function_concurrency(
        &self,
        request: Request<pb::GetFunctionConcurrencyRequest>,
    ) -> Result<Response<pb::Concurrency>, Status> {
        let r = request.into_inner();
        let n = self.node.get_function_concurrency(&r.function_name)?;
        Ok(Response::new(pb::Concurrency {
            reserved_concurrent_executions: n.map(i64::from),
        }))
    }

    async fn delete_function_concurrency(
        &self,
        request: Request<pb::DeleteFunctionConcurrencyRequest>,
    ) -> Result<Response<pb::DeleteFunctionConcurrencyResponse>, Status> {
        let r = request.into_inner();
        self.node.delete_function_concurrency(&r.function_name)?;
        Ok(Response::new(pb::DeleteFunctionConcurrencyResponse {}))
    }

    async fn put_provisioned_concurrency_config(
        &self,
        request: Request<pb::PutProvisionedConcurrencyConfigRequest>,
    ) -> Result<Response<pb::ProvisionedConcurrencyConfig>, Status> {
        let r = request.into_inner();
        let v = self.node.put_provisioned_concurrency(
            &r.function_name,
            &r.qualifier,
            r.provisioned_concurrent_executions,
        )?;
        Ok(Response::new(provisioned_pb(v)))
    }

    async fn get_provisioned_concurrency_config(
        &self,
        request: Request<pb::GetProvisionedConcurrencyConfigRequest>,
    ) -> Result<Response<pb::ProvisionedConcurrencyConfig>, Status> {
        let r = request.into_inner();
        let v = self
            .node
            .get_provisioned_concurrency(&r.function_name, &r.qualifier)?;
        Ok(Response::new(provisioned_pb(v)))
    }

    async fn list_provisioned_concurrency_configs(
        &self,
        request: Request<pb::ListProvisionedConcurrencyConfigsRequest>,
    ) -> Result<Response<pb::ListProvisionedConcurrencyConfigsResponse>, Status> {
        let r = request.into_inner();
        let list = self.node.list_provisioned_concurrency(&r.function_name)?;
        Ok(Response::new(
            pb::ListProvisionedConcurrencyConfigsResponse {
                provisioned_concurrency_configs: list.into_iter().map(provisioned_pb).collect(),
            },
        ))
    }

    async fn delete_provisioned_concurrency_config(
        &self,
        request: Request<pb::DeleteProvisionedConcurrencyConfigRequest>,
    ) -> Result<Response<pb::DeleteProvisionedConcurrencyConfigResponse>, Status> {
        let r = request.into_inner();
        self.node
            .delete_provisioned_concurrency(&r.function_name, &r.qualifier)
            .await?;
        Ok(Response::new(
            pb::DeleteProvisionedConcurrencyConfigResponse {},
        ))
    }

    async fn put_function_event_invoke_config(
        &self,
        request: Request<pb::PutFunctionEventInvokeConfigRequest>,
    ) -> Result<Response<pb::FunctionEventInvokeConfig>, Status> {
        let r = request.into_inner();
        let c = self.node.put_event_config(
            &r.function_name,
            &r.qualifier,
            events::change(&r),
            false,
        )?;
        Ok(Response::new(self.event_config_pb(&c)))
    }

    async fn update_function_event_invoke_config(
        &self,
        request: Request<pb::PutFunctionEventInvokeConfigRequest>,
    ) -> Result<Response<pb::FunctionEventInvokeConfig>, Status> {
        let r = request.into_inner();
        let c =
            self.node
                .put_event_config(&r.function_name, &r.qualifier, events::change(&r), true)?;
        Ok(Response::new(self.event_config_pb(&c)))
    }

    async fn get_function_event_invoke_config(
        &self,
        request: Request<pb::GetFunctionEventInvokeConfigRequest>,
    ) -> Result<Response<pb::FunctionEventInvokeConfig>, Status> {
        let r = request.into_inner();
        let c = self.node.get_event_config(&r.function_name, &r.qualifier)?;
        Ok(Response::new(self.event_config_pb(&c)))
    }

    async fn list_function_event_invoke_configs(
        &self,
        request: Request<pb::ListFunctionEventInvokeConfigsRequest>,
    ) -> Result<Response<pb::ListFunctionEventInvokeConfigsResponse>, Status> {
        let r = request.into_inner();
        let list = self.node.list_event_configs(&r.function_name)?;
        Ok(Response::new(pb::ListFunctionEventInvokeConfigsResponse {
            function_event_invoke_configs: list.iter().map(|c| self.event_config_pb(c)).collect(),
        }))
    }

    async fn delete_function_event_invoke_config(
        &self,
        request: Request<pb::GetFunctionEventInvokeConfigRequest>,
    ) -> Result<Response<pb::DeleteFunctionEventInvokeConfigResponse>, Status> {
        let r = request.into_inner();
        self.node
            .delete_event_config(&r.function_name, &r.qualifier)?;
        Ok(Response::new(
            pb::DeleteFunctionEventInvokeConfigResponse {},
        ))
    }

    async fn create_event_source_mapping(
        &self,
        request: Request<pb::CreateEventSourceMappingRequest>,
    ) -> Result<Response<pb::EventSourceMappingConfiguration>, Status> {
        let r = request.into_inner();
        let src = self.node.sources();
        let m = src
            .create(
                &r.event_source_arn,
                &r.function_name,
                &sources::create_change(&r),
            )
            .await
            .map_err(crate::node::NodeError::from)?;
        Ok(Response::new(self.mapping_pb(src.view(m).await)))
    }

    async fn update_event_source_mapping(
        &self,
        request: Request<pb::UpdateEventSourceMappingRequest>,
    ) -> Result<Response<pb::EventSourceMappingConfiguration>, Status> {
        let r = request.into_inner();
        let src = self.node.sources();
        let function = Some(r.function_name.as_str()).filter(|f| !f.is_empty());
        let m = src
            .update(&r.uuid, function, &sources::update_change(&r))
            .await
            .map_err(crate::node::NodeError::from)?;
        Ok(Response::new(self.mapping_pb(src.view(m).await)))
    }

    async fn get_event_source_mapping(
        &self,
        request: Request<pb::EventSourceMappingRequest>,
    ) -> Result<Response<pb::EventSourceMappingConfiguration>, Status> {
        let r = request.into_inner();
        let src = self.node.sources();
        let m = src.get(&r.uuid).map_err(crate::node::NodeError::from)?;
        Ok(Response::new(self.mapping_pb(src.view(m).await)))
    }

    async fn delete_event_source_mapping(
        &self,
        request: Request<pb::EventSourceMappingRequest>,
    ) -> Result<Response<pb::EventSourceMappingConfiguration>, Status> {
        let r = request.into_inner();
        let src = self.node.sources();
        let m = src.delete(&r.uuid).map_err(crate::node::NodeError::from)?;
        Ok(Response::new(self.mapping_pb(src.view(m).await)))
    }

    async fn list_event_source_mappings(
        &self,
        request: Request<pb::ListEventSourceMappingsRequest>,
    ) -> Result<Response<pb::ListEventSourceMappingsResponse>, Status> {
        let r = request.into_inner();
        let src = self.node.sources();
        let list = src
            .list(
                Some(r.event_source_arn.as_str()).filter(|a| !a.is_empty()),
                Some(r.function_name.as_str()).filter(|f| !f.is_empty()),
            )
            .map_err(crate::node::NodeError::from)?;
        let mut out = Vec::new();
        for m in list {
            out.push(self.mapping_pb(src.view(m).await));
        }
        Ok(Response::new(pb::ListEventSourceMappingsResponse {
            event_source_mappings: out,
        }))
    }

    type SubscribeInvocationRecordsStream = RecordStreamOut;

    async fn subscribe_invocation_records(
        &self,
        request: Request<pb::SubscribeInvocationRecordsRequest>,
    ) -> Result<Response<Self::SubscribeInvocationRecordsStream>, Status> {
        let r = request.into_inner();
        if r.event_bus.is_empty() {
            return Err(status::invalid("EventBus: name the event bus"));
        }
        let events = self.node.events().clone();
        // Subscribed before the first read, so nothing written meanwhile
        // is missed.
        let mut written = events.records_written();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut after = r.after;
            loop {
                let batch = match events.records_after(r.event_bus.clone(), after, 256).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::from(crate::node::NodeError::from(e))))
                            .await;
                        return;
                    }
                };
                let full = batch.len() == 256;
                for rec in batch {
                    after = rec.seq;
                    let out = pb::InvocationRecord {
                        sequence: rec.seq,
                        event_bus: rec.bus,
                        function_name: rec.function,
                        record: rec.record,
                    };
                    if tx.send(Ok(out)).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue;
                }
                if !r.follow {
                    return;
                }
                tokio::select! {
                    changed = written.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn register_scalable_target(
        &self,
        request: Request<pb::RegisterScalableTargetRequest>,
    ) -> Result<Response<pb::ScalableTarget>, Status> {
        let r = request.into_inner();
        let t = self.node.register_scalable_target(
            &r.service_namespace,
            &r.resource_id,
            &r.scalable_dimension,
            r.min_capacity,
            r.max_capacity,
        )?;
        Ok(Response::new(scaling::target_pb(&t)))
    }

    async fn describe_scalable_targets(
        &self,
        request: Request<pb::DescribeScalableTargetsRequest>,
    ) -> Result<Response<pb::DescribeScalableTargetsResponse>, Status> {
        let r = request.into_inner();
        let list = self.node.describe_scalable_targets(&r.resource_ids)?;
        Ok(Response::new(pb::DescribeScalableTargetsResponse {
            scalable_targets: list.iter().map(scaling::target_pb).collect(),
        }))
    }

    async fn deregister_scalable_target(
        &self,
        request: Request<pb::DeregisterScalableTargetRequest>,
    ) -> Result<Response<pb::DeregisterScalableTargetResponse>, Status> {
        let r = request.into_inner();
        self.node.deregister_scalable_target(
            &r.service_namespace,
            &r.resource_id,
            &r.scalable_dimension,
        )?;
        Ok(Response::new(pb::DeregisterScalableTargetResponse {}))
    }

    async fn put_scaling_policy(
        &self,
        request: Request<pb::PutScalingPolicyRequest>,
    ) -> Result<Response<pb::ScalingPolicy>, Status> {
        let r = request.into_inner();
        let c = r
            .target_tracking_scaling_policy_configuration
            .ok_or_else(|| {
                status::invalid("TargetTrackingScalingPolicyConfiguration is required")
            })?;
        let (t, p) = self.node.put_scaling_policy(
            &r.service_namespace,
            &r.resource_id,
            &r.scalable_dimension,
            &r.policy_name,
            &r.policy_type,
            &c.predefined_metric_type,
            c.target_value,
            (c.scale_out_cooldown, c.scale_in_cooldown),
            c.disable_scale_in,
        )?;
        let (region, account) = self.node.region_account();
        Ok(Response::new(scaling::policy_pb(region, account, &t, &p)))
    }

    async fn describe_scaling_policies(
        &self,
        request: Request<pb::DescribeScalingPoliciesRequest>,
    ) -> Result<Response<pb::DescribeScalingPoliciesResponse>, Status> {
        let r = request.into_inner();
        let (region, account) = self.node.region_account();
        let list = self
            .node
            .describe_scaling_policies(&r.resource_id, &r.policy_names)?;
        Ok(Response::new(pb::DescribeScalingPoliciesResponse {
            scaling_policies: list
                .iter()
                .map(|(t, p)| scaling::policy_pb(region, account, t, p))
                .collect(),
        }))
    }

    async fn delete_scaling_policy(
        &self,
        request: Request<pb::DeleteScalingPolicyRequest>,
    ) -> Result<Response<pb::DeleteScalingPolicyResponse>, Status> {
        let r = request.into_inner();
        self.node.delete_scaling_policy(
            &r.service_namespace,
            &r.resource_id,
            &r.scalable_dimension,
            &r.policy_name,
        )?;
        Ok(Response::new(pb::DeleteScalingPolicyResponse {}))
    }

    async fn describe_scaling_activities(
        &self,
        request: Request<pb::DescribeScalingActivitiesRequest>,
    ) -> Result<Response<pb::DescribeScalingActivitiesResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(pb::DescribeScalingActivitiesResponse {
            scaling_activities: self
                .node
                .describe_scaling_activities(&r.resource_id)
                .into_iter()
                .map(scaling::activity_pb)
                .collect(),
        }))
    }

    async fn publish_layer_version(
        &self,
        request: Request<pb::PublishLayerVersionRequest>,
    ) -> Result<Response<pb::LayerVersion>, Status> {
        let r = request.into_inner();
        let l = self
            .node
            .publish_layer_version(
                &r.layer_name,
                r.zip_file,
                r.description,
                r.compatible_runtimes,
            )
            .await?;
        Ok(Response::new(self.layer_pb(&l)))
    }

    async fn list_layers(
        &self,
        _request: Request<pb::ListLayersRequest>,
    ) -> Result<Response<pb::ListLayersResponse>, Status> {
        let ls = self.node.list_layers()?;
        Ok(Response::new(pb::ListLayersResponse {
            layers: ls.iter().map(|l| self.layer_pb(l)).collect(),
        }))
    }

    async fn list_layer_versions(
        &self,
        request: Request<pb::ListLayerVersionsRequest>,
    ) -> Result<Response<pb::ListLayerVersionsResponse>, Status> {
        let r = request.into_inner();
        let ls = self.node.list_layer_versions(&r.layer_name)?;
        Ok(Response::new(pb::ListLayerVersionsResponse {
            layer_versions: ls.iter().map(|l| self.layer_pb(l)).collect(),
        }))
    }

    async fn get_layer_version(
        &self,
        request: Request<pb::GetLayerVersionRequest>,
    ) -> Result<Response<pb::LayerVersion>, Status> {
        let r = request.into_inner();
        let l = self.node.get_layer_version(&r.layer_name, r.version)?;
        Ok(Response::new(self.layer_pb(&l)))
    }

    async fn delete_layer_version(
        &self,
        request: Request<pb::DeleteLayerVersionRequest>,
    ) -> Result<Response<pb::DeleteLayerVersionResponse>, Status> {
        let r = request.into_inner();
        self.node.delete_layer_version(&r.layer_name, r.version)?;
        Ok(Response::new(pb::DeleteLayerVersionResponse {}))
    }
}

/// Node inspection and operation.
pub struct NodeService {
    node: Arc<Node>,
}

impl NodeService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    pub fn into_server(self) -> NodeServer<Self> {
        NodeServer::new(self)
    }
}

fn instance_pb(s: &InstanceStatus) -> pb::InstanceInfo {
    let (i, rss_kb) = (&s.info, s.rss_kb);
    pb::InstanceInfo {
        id: i.id.clone(),
        function_name: i.function.clone(),
        function_version: i.version.clone(),
        state: format!("{:?}", i.state),
        memory_size: i.memory_mb,
        rss_kb,
        created: crate::time::rfc3339(i.created),
        age_seconds: SystemTime::now()
            .duration_since(i.created)
            .unwrap_or_default()
            .as_secs_f64(),
        invocations: i.invocations,
        last_used: i.last_used.map(crate::time::rfc3339).unwrap_or_default(),
        start_kind: i.start_kind.name().into(),
        provisioned: i.provisioned,
        vmm_pid: i.pid,
    }
}

fn provisioned_pb(v: crate::node::ProvisionedView) -> pb::ProvisionedConcurrencyConfig {
    pb::ProvisionedConcurrencyConfig {
        function_arn: v.function_arn,
        requested_provisioned_concurrent_executions: v.config.requested.into(),
        available_provisioned_concurrent_executions: v.available.into(),
        allocated_provisioned_concurrent_executions: v.allocated.into(),
        status: v.status.name().into(),
        status_reason: v.reason,
        last_modified: v.config.last_modified,
        scaling: v.scaling.as_ref().map(scaling::view_pb),
    }
}

fn record_pb(r: LogRecord) -> pb::LogLine {
    pb::LogLine {
        timestamp: r.timestamp,
        function_name: r.function,
        log_stream: r.stream,
        request_id: r.request_id,
        message: r.message,
    }
}

type RecordStreamOut = Pin<Box<dyn Stream<Item = Result<pb::InvocationRecord, Status>> + Send>>;
type LogStreamOut = Pin<Box<dyn Stream<Item = Result<pb::LogLine, Status>> + Send>>;

#[tonic::async_trait]
impl NodeApi for NodeService {
    async fn get_metric_statistics(
        &self,
        request: Request<pb::GetMetricStatisticsRequest>,
    ) -> Result<Response<pb::GetMetricStatisticsResponse>, Status> {
        let r = request.into_inner();
        let q = crate::node::StatisticsQuery {
            metric: r.metric_name,
            function: r.function_name,
            qualifier: r.qualifier,
            start_s: r.start_time,
            end_s: r.end_time,
            period_s: r.period,
            statistics: r.statistics,
        };
        let st = self.node.metric_statistics(&q)?;
        let want = |s: &str| q.statistics.iter().any(|x| x == s);
        let unit = st.metric.unit().to_string();
        let datapoints = st
            .datapoints
            .iter()
            .map(|d| pb::MetricDatapoint {
                timestamp: d.timestamp_s as i64,
                sample_count: want("SampleCount").then_some(d.stat.count as f64),
                average: want("Average").then_some(d.stat.average()),
                sum: want("Sum").then_some(d.stat.sum),
                minimum: want("Minimum").then_some(d.stat.min),
                maximum: want("Maximum").then_some(d.stat.max),
                unit: unit.clone(),
            })
            .collect();
        Ok(Response::new(pb::GetMetricStatisticsResponse {
            label: st.metric.name().to_string(),
            datapoints,
        }))
    }

    async fn get_node_info(
        &self,
        _request: Request<pb::GetNodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfo>, Status> {
        let n = self.node.info();
        let rss_kb: u64 = n.instances.iter().map(|i| i.rss_kb).sum();
        let path = |p: &std::path::Path| p.display().to_string();
        Ok(Response::new(pb::NodeInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            engine: n.engine,
            accelerator: n.accel.accel.name().into(),
            accelerator_reason: n.accel.reason,
            kernel: path(&n.kernel),
            runtime_images: n
                .runtime_images
                .iter()
                .map(|r| pb::RuntimeImage {
                    runtime: r.runtime.into(),
                    path: path(&r.path),
                    size: r.size,
                })
                .collect(),
            cpus: n.cpus,
            memory_total_mb: n.memory_total_mb,
            memory_available_mb: n.memory_available_mb,
            instances: n.instances.len() as u32,
            instance_memory_mb: n.instances.iter().map(|i| i.info.memory_mb as u64).sum(),
            instance_rss_mb: rss_kb / 1024,
            functions: n.functions,
            data_dir: path(&n.data_dir),
            started_at: crate::time::rfc3339(n.started),
            max_instances: n.capacity.max_instances,
            memory_budget_mb: n.capacity.memory_budget_mb,
            memory_charged_mb: n.capacity.charged_mb,
            reserved_concurrency: n.capacity.reserved_total,
            unreserved_concurrency_min: n.capacity.unreserved_min,
            running_invocations: n.capacity.running,
            log_bytes_stored: n.log_bytes_stored,
            log_bytes_dropped: n.log_bytes_dropped,
            vmm_confinement: n.vmm_confinement,
            init_timeout_seconds: n.init_limits.0.as_secs_f64(),
            snapshot_init_timeout_seconds: n.init_limits.1.as_secs_f64(),
            start_slots: n.starts.slots,
            starts_in_flight: n.start_counts.in_flight,
            starts_waiting: n.start_counts.waiting,
            scale_instances: n.starts.scale_instances,
            scale_interval_seconds: n.starts.scale_interval.as_secs_f64(),
            networks: n.networks,
        }))
    }

    async fn list_instances(
        &self,
        request: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(pb::ListInstancesResponse {
            instances: self
                .node
                .instance_status(&r.function_name)
                .iter()
                .map(instance_pb)
                .collect(),
            starts: self
                .node
                .starts()
                .1
                .by_function
                .into_iter()
                .filter(|(f, _, _)| r.function_name.is_empty() || *f == r.function_name)
                .map(|(function_name, in_flight, waiting)| pb::StartQueue {
                    function_name,
                    in_flight,
                    waiting,
                })
                .collect(),
            scaling: self
                .node
                .scaling_views(&r.function_name)
                .iter()
                .map(scaling::view_pb)
                .collect(),
        }))
    }

    async fn stop_instances(
        &self,
        request: Request<pb::StopInstancesRequest>,
    ) -> Result<Response<pb::StopInstancesResponse>, Status> {
        let r = request.into_inner();
        if r.instance_id.is_empty() == r.function_name.is_empty() {
            return Err(status::invalid(
                "InstanceId, FunctionName: give exactly one of them",
            ));
        }
        let stopped = self
            .node
            .stop_instances(&r.instance_id, &r.function_name)
            .await?;
        Ok(Response::new(pb::StopInstancesResponse { stopped }))
    }

    async fn get_event_queues(
        &self,
        _request: Request<pb::GetEventQueuesRequest>,
    ) -> Result<Response<pb::GetEventQueuesResponse>, Status> {
        let queues = self.node.event_queues().await?;
        Ok(Response::new(pb::GetEventQueuesResponse {
            queues: queues.iter().map(events::queue_pb).collect(),
        }))
    }

    type TailLogsStream = LogStreamOut;

    async fn tail_logs(
        &self,
        request: Request<pb::TailLogsRequest>,
    ) -> Result<Response<Self::TailLogsStream>, Status> {
        let r = request.into_inner();
        self.node.get_function(&r.function_name, "")?;
        // A `since` before the epoch means "everything", never a panic.
        let since = (r.since_seconds > 0).then(|| {
            SystemTime::now()
                .checked_sub(Duration::from_secs(r.since_seconds))
                .unwrap_or(SystemTime::UNIX_EPOCH)
                .max(SystemTime::UNIX_EPOCH)
        });
        let logs = self.node.logs().clone();
        // Subscribe first so nothing written meanwhile is missed.
        let live = r.follow.then(|| logs.subscribe());
        let backlog = logs.read(&r.function_name, since);
        let function = r.function_name.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let last = backlog.last().map(|l| l.timestamp.clone());
            for rec in backlog {
                if tx.send(Ok(record_pb(rec))).await.is_err() {
                    return;
                }
            }
            let Some(mut live) = live else { return };
            loop {
                match live.recv().await {
                    Ok(rec) if rec.function == function => {
                        // Lines already sent from the files are not repeated.
                        if last.as_deref().is_some_and(|l| rec.timestamp.as_str() < l) {
                            continue;
                        }
                        if tx.send(Ok(record_pb(rec))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let note = pb::LogLine {
                            message: format!("[flintd: {n} log lines dropped for a slow reader]"),
                            function_name: function.clone(),
                            ..Default::default()
                        };
                        if tx.send(Ok(note)).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// An empty proto string as "not given".
fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// A function's network as the API carries it (also what flintctl and the
/// benchmark send).
pub fn network_pb(n: &crate::network::NetworkConfig) -> pb::NetworkConfig {
    pb::NetworkConfig {
        mode: n.mode.name().into(),
        egress: n
            .egress
            .iter()
            .map(|r| pb::EgressRule {
                cidr: r.cidr.to_string(),
                protocol: r.protocol.name().into(),
                from_port: r.ports.map_or(0, |p| u32::from(p.0)),
                to_port: r.ports.map_or(0, |p| u32::from(p.1)),
            })
            .collect(),
    }
}

/// A caller's network configuration, checked.
fn network_from_pb(n: pb::NetworkConfig) -> Result<crate::network::NetworkConfig, Status> {
    use crate::network::{Cidr, EgressRule, Mode, NetworkConfig, Protocol};
    let bad = |m: String| status::invalid(format!("NetworkConfig: {m}"));
    let mode = Mode::parse(&n.mode).map_err(|e| bad(e.to_string()))?;
    let mut egress = Vec::new();
    for r in n.egress {
        let protocol = Protocol::parse(&r.protocol).map_err(|e| bad(e.to_string()))?;
        let port = |p: u32| u16::try_from(p).map_err(|_| bad(format!("port {p} is out of range")));
        let ports = match (r.from_port, r.to_port) {
            (0, 0) => None,
            (a, b) => Some((port(a)?, port(b)?)),
        };
        egress.push(EgressRule {
            cidr: Cidr::parse(&r.cidr).map_err(|e| bad(e.to_string()))?,
            protocol,
            ports,
        });
    }
    let c = NetworkConfig { mode, egress };
    c.validate().map_err(|e| bad(e.to_string()))?;
    Ok(c)
}
