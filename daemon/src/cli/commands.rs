//! flintctl's commands, named like the AWS CLI's `aws lambda` commands, plus
//! `logs`, `node` and `instances` for operators.
//!
//! Why one file of 800 lines: one match arm per command, each a request
//! and its output, so that a command is read in one place; the command
//! line itself is in `args.rs`.

use std::collections::BTreeMap;

use flint_proto::node::v1 as pb;
use flint_proto::node::v1::node_client::NodeClient;
use serde_json::json;

pub use super::args::*;
use super::blueprints::usage;
use super::*;
use crate::client;

pub(super) fn svc(op: &'static str) -> impl Fn(tonic::Status) -> CliError {
    move |s| CliError::from_status(op, s)
}

const ALIAS_HEADERS: &[&str] = &["NAME", "VERSION", "ROUTING", "DESCRIPTION"];
const LAYER_HEADERS: &[&str] = &["LAYER", "VERSION", "CODE SIZE", "CREATED", "ARN"];
const INSTANCE_HEADERS: &[&str] = &[
    "ID",
    "FUNCTION",
    "VERSION",
    "STATE",
    "MEMORY",
    "RSS",
    "AGE",
    "INVOCATIONS",
    "LAST USED",
    "STARTED BY",
    "KIND",
];
const PROVISIONED_HEADERS: &[&str] = &[
    "ARN",
    "REQUESTED",
    "ALLOCATED",
    "AVAILABLE",
    "STATUS",
    "REASON",
];

fn concurrency_json(c: &pb::Concurrency) -> serde_json::Value {
    match c.reserved_concurrent_executions {
        Some(n) => json!({"ReservedConcurrentExecutions": n}),
        None => json!({}),
    }
}

fn provisioned_json(p: &pb::ProvisionedConcurrencyConfig) -> serde_json::Value {
    let mut v = json!({
        "FunctionArn": p.function_arn,
        "RequestedProvisionedConcurrentExecutions": p.requested_provisioned_concurrent_executions,
        "AvailableProvisionedConcurrentExecutions": p.available_provisioned_concurrent_executions,
        "AllocatedProvisionedConcurrentExecutions": p.allocated_provisioned_concurrent_executions,
        "Status": p.status,
        "LastModified": p.last_modified,
    });
    if !p.status_reason.is_empty() {
        v["StatusReason"] = json!(p.status_reason);
    }
    if let Some(s) = &p.scaling {
        v["AutoScaling"] = super::scaling::scaling_json(s);
    }
    v
}

fn provisioned_row(p: &pb::ProvisionedConcurrencyConfig) -> Vec<String> {
    vec![
        p.function_arn.clone(),
        p.requested_provisioned_concurrent_executions.to_string(),
        p.allocated_provisioned_concurrent_executions.to_string(),
        p.available_provisioned_concurrent_executions.to_string(),
        p.status.clone(),
        p.status_reason.clone(),
    ]
}

/// `--routing-config` as the API takes it.
fn routing_pb(arg: Option<String>) -> Result<Option<pb::AliasRoutingConfiguration>, CliError> {
    Ok(arg
        .map(|r| parse_routing(&r))
        .transpose()?
        .map(|w| pb::AliasRoutingConfiguration {
            additional_version_weights: w.into_iter().collect(),
        }))
}

fn environment(e: Option<String>) -> Result<Option<BTreeMap<String, String>>, CliError> {
    e.map(|e| parse_environment(&e)).transpose()
}

/// Runs one command against `endpoint`.
pub async fn run(
    endpoint: &str,
    tls: Option<&client::ClientTls>,
    output: Output,
    command: Command,
) -> Result<(), CliError> {
    if let Command::Init {
        app_template: Some(app),
        dir: Some(dir),
        ..
    } = &command
    {
        return super::apps::init(app, dir, output);
    }
    if let Command::Init {
        list,
        blueprint,
        runtime,
        dir,
        ..
    } = &command
    {
        return super::blueprints::init(
            *list,
            blueprint.as_deref(),
            runtime.as_deref(),
            dir.as_deref(),
            output,
        );
    }
    let channel = client::channel_with(endpoint, tls).await?;
    let mut c = flint_proto::node::v1::functions_client::FunctionsClient::new(channel.clone())
        .max_decoding_message_size(crate::api::MAX_MESSAGE)
        .max_encoding_message_size(crate::api::MAX_MESSAGE);
    let mut n = NodeClient::new(channel.clone());
    match command {
        cmd @ (Command::RegisterScalableTarget { .. }
        | Command::DescribeScalableTargets { .. }
        | Command::DeregisterScalableTarget { .. }
        | Command::PutScalingPolicy { .. }
        | Command::DescribeScalingPolicies { .. }
        | Command::DeleteScalingPolicy { .. }
        | Command::DescribeScalingActivities { .. }) => {
            super::scaling::run(&mut c, output, cmd).await?;
        }
        cmd @ (Command::PutFunctionEventInvokeConfig { .. }
        | Command::UpdateFunctionEventInvokeConfig { .. }
        | Command::GetFunctionEventInvokeConfig { .. }
        | Command::ListFunctionEventInvokeConfigs { .. }
        | Command::DeleteFunctionEventInvokeConfig { .. }
        | Command::SubscribeInvocationRecords { .. }
        | Command::EventQueues) => {
            super::events::run(&mut c, &mut n, output, cmd).await?;
        }
        cmd @ Command::GetMetricStatistics { .. } => {
            super::metrics::run(&mut n, output, cmd).await?;
        }
        cmd @ (Command::CreateSchedule { .. }
        | Command::UpdateSchedule { .. }
        | Command::GetSchedule { .. }
        | Command::DeleteSchedule { .. }
        | Command::ListSchedules) => {
            let mut s =
                flint_proto::node::v1::scheduler_client::SchedulerClient::new(channel.clone());
            super::schedules::run(&mut s, output, cmd).await?;
        }
        cmd @ (Command::CreateStream { .. }
        | Command::DeleteStream { .. }
        | Command::ListStreams
        | Command::DescribeStream { .. }
        | Command::PutRecord { .. }
        | Command::GetShardIterator { .. }
        | Command::GetRecords { .. }) => {
            let mut s = flint_proto::node::v1::streams_client::StreamsClient::new(channel.clone());
            super::streams::run(&mut s, output, cmd).await?;
        }
        cmd @ (Command::CreateEventSourceMapping { .. }
        | Command::UpdateEventSourceMapping { .. }
        | Command::GetEventSourceMapping { .. }
        | Command::DeleteEventSourceMapping { .. }
        | Command::ListEventSourceMappings { .. }) => {
            super::sources::run(&mut c, output, cmd).await?;
        }
        cmd @ (Command::CreateQueue { .. }
        | Command::DeleteQueue { .. }
        | Command::ListQueues { .. }
        | Command::GetQueueAttributes { .. }
        | Command::SendMessage { .. }
        | Command::ReceiveMessage { .. }
        | Command::DeleteMessage { .. }
        | Command::PurgeQueue { .. }) => {
            let mut q = flint_proto::node::v1::queues_client::QueuesClient::new(channel.clone());
            super::queues::run(&mut q, output, cmd).await?;
        }
        Command::CreateFunction {
            function_name,
            blueprint: Some(blueprint),
            runtime,
            memory_size,
            timeout,
            environment: env,
            description,
            layers,
            ..
        } => {
            let b = crate::blueprints::get(&blueprint).map_err(usage)?;
            let runtime = b.runtime(runtime.as_deref()).map_err(usage)?;
            let scratch = super::blueprints::Scratch::new().map_err(usage)?;
            b.write(Some(&runtime), scratch.path()).map_err(usage)?;
            let mut d = crate::blueprints::load(scratch.path()).map_err(usage)?;
            let pre = &mut d.project.presets;
            pre.memory_size = memory_size.unwrap_or(pre.memory_size);
            pre.timeout = timeout.unwrap_or(pre.timeout);
            if let Some(e) = environment(env)? {
                pre.environment = e;
            }
            if !description.is_empty() {
                d.project.description = description;
            }
            let f = super::blueprints::deploy(&channel, &mut c, &function_name, d, layers).await?;
            print_configuration(&f, output);
        }
        Command::Deploy {
            template_file: Some(template),
            stack_name: Some(stack),
            parameter_overrides,
            no_execute_changeset,
            deployment_minute_seconds,
            no_wait,
            ..
        } => {
            let mut s = super::stacks::client(&channel);
            let opts = super::stacks::DeployOptions {
                template,
                stack,
                parameters: parameter_overrides,
                execute: !no_execute_changeset,
                minute_seconds: deployment_minute_seconds.unwrap_or(0),
                wait: !no_wait,
            };
            super::stacks::deploy(&mut s, opts, output).await?;
        }
        Command::Pipeline { command } => {
            let mut p =
                flint_proto::node::v1::pipelines_client::PipelinesClient::new(channel.clone());
            super::stacks::pipeline(&mut p, output, command).await?;
        }
        cmd @ (Command::DescribeStacks { .. }
        | Command::ListStacks
        | Command::DeleteStack { .. }
        | Command::DescribeStackEvents { .. }
        | Command::ListStackResources { .. }) => {
            let mut s = super::stacks::client(&channel);
            super::stacks::run(&mut s, output, cmd).await?;
        }
        Command::Deploy {
            function_name, dir, ..
        } => {
            let function_name = function_name.ok_or_else(|| {
                CliError::Usage(
                    "deploy needs --function-name, or --template-file and --stack-name".into(),
                )
            })?;
            let d = crate::blueprints::load(&dir).map_err(usage)?;
            let f = super::blueprints::deploy(&channel, &mut c, &function_name, d, vec![]).await?;
            print_configuration(&f, output);
        }
        Command::Init { .. } => {
            // Answered before connecting (`run`).
        }
        Command::CreateFunction {
            function_name,
            blueprint: None,
            runtime,
            handler,
            zip_file,
            memory_size,
            timeout,
            environment: env,
            description,
            layers,
            ephemeral_storage,
            dead_letter_config,
            network_mode,
            egress_rules,
        } => {
            let network_config = network_config(network_mode, egress_rules)?;
            let f = c
                .create_function(pb::CreateFunctionRequest {
                    function_name,
                    runtime: runtime.unwrap_or_default(),
                    handler: handler.unwrap_or_default(),
                    zip_file: read_file_arg(&zip_file.unwrap_or_default())?,
                    memory_size: memory_size.unwrap_or(0),
                    timeout: timeout.unwrap_or(0),
                    environment: environment(env)?.unwrap_or_default().into_iter().collect(),
                    description,
                    layers,
                    ephemeral_storage: ephemeral_storage
                        .map(|e| parse_ephemeral(&e))
                        .transpose()?
                        .unwrap_or(0),
                    dead_letter_config: dead_letter_config
                        .map(|d| super::queues::dead_letter_config(&d))
                        .transpose()?,
                    network_config,
                })
                .await
                .map_err(svc("CreateFunction"))?
                .into_inner();
            print_configuration(&f, output);
        }
        Command::GetFunction {
            function_name,
            qualifier,
        } => {
            let r = c
                .get_function(pb::GetFunctionRequest {
                    function_name,
                    qualifier,
                })
                .await
                .map_err(svc("GetFunction"))?
                .into_inner();
            print_get_function(&r, output);
        }
        Command::ListFunctions => {
            let r = c
                .list_functions(pb::ListFunctionsRequest {})
                .await
                .map_err(svc("ListFunctions"))?
                .into_inner();
            print_functions(&r.functions, output);
        }
        Command::DeleteFunction { function_name } => {
            c.delete_function(pb::DeleteFunctionRequest { function_name })
                .await
                .map_err(svc("DeleteFunction"))?;
        }
        Command::UpdateFunctionCode {
            function_name,
            zip_file,
            publish,
            revision_id,
        } => {
            let f = c
                .update_function_code(pb::UpdateFunctionCodeRequest {
                    function_name,
                    zip_file: read_file_arg(&zip_file)?,
                    publish,
                    revision_id: revision_id.unwrap_or_default(),
                })
                .await
                .map_err(svc("UpdateFunctionCode"))?
                .into_inner();
            print_configuration(&f, output);
        }
        Command::UpdateFunctionConfiguration {
            function_name,
            handler,
            runtime,
            memory_size,
            timeout,
            environment: env,
            layers,
            no_layers,
            ephemeral_storage,
            description,
            revision_id,
            dead_letter_config,
            network_mode,
            egress_rules,
        } => {
            let network_config = network_config(network_mode, egress_rules)?;
            let layers = if no_layers { Some(Vec::new()) } else { layers };
            let f = c
                .update_function_configuration(pb::UpdateFunctionConfigurationRequest {
                    function_name,
                    handler,
                    runtime,
                    memory_size,
                    timeout,
                    environment: environment(env)?.map(|v| pb::Environment {
                        variables: v.into_iter().collect(),
                    }),
                    layers: layers.map(|arns| pb::LayerList { arns }),
                    ephemeral_storage: ephemeral_storage
                        .map(|e| parse_ephemeral(&e))
                        .transpose()?,
                    description,
                    revision_id: revision_id.unwrap_or_default(),
                    dead_letter_config: dead_letter_config
                        .map(|d| super::queues::dead_letter_config(&d))
                        .transpose()?,
                    network_config,
                })
                .await
                .map_err(svc("UpdateFunctionConfiguration"))?
                .into_inner();
            print_configuration(&f, output);
        }
        Command::Invoke {
            function_name,
            payload,
            qualifier,
            invocation_type: it,
            log_type: lt,
            cli_binary_format,
            client_context,
            outfile,
        } => {
            let r = c
                .invoke(pb::InvokeRequest {
                    function_name,
                    qualifier,
                    invocation_type: invocation_type(&it)? as i32,
                    log_type: log_type(&lt)? as i32,
                    payload: read_payload(&payload, &cli_binary_format)?,
                    client_context,
                })
                .await
                .map_err(svc("Invoke"))?
                .into_inner();
            write_outfile(&outfile, &r.payload)?;
            print_invoke(&r, output);
        }
        Command::PublishVersion {
            function_name,
            description,
        } => {
            let f = c
                .publish_version(pb::PublishVersionRequest {
                    function_name,
                    description,
                })
                .await
                .map_err(svc("PublishVersion"))?
                .into_inner();
            print_configuration(&f, output);
        }
        Command::ListVersionsByFunction { function_name } => {
            let r = c
                .list_versions_by_function(pb::ListVersionsByFunctionRequest { function_name })
                .await
                .map_err(svc("ListVersionsByFunction"))?
                .into_inner();
            emit(
                output,
                json!({"Versions": r.versions.iter().map(configuration_json).collect::<Vec<_>>()}),
                &["VERSION", "CODE SHA256", "LAST MODIFIED", "DESCRIPTION"],
                r.versions
                    .iter()
                    .map(|v| {
                        vec![
                            v.version.clone(),
                            v.code_sha256.clone(),
                            v.last_modified.clone(),
                            v.description.clone(),
                        ]
                    })
                    .collect(),
            );
        }
        Command::CreateAlias {
            function_name,
            name,
            function_version,
            description,
            routing_config,
        } => {
            let a = c
                .create_alias(pb::CreateAliasRequest {
                    function_name,
                    name,
                    function_version,
                    description,
                    routing_config: routing_pb(routing_config)?,
                })
                .await
                .map_err(svc("CreateAlias"))?
                .into_inner();
            emit(output, alias_json(&a), ALIAS_HEADERS, vec![alias_row(&a)]);
        }
        Command::UpdateAlias {
            function_name,
            name,
            function_version,
            description,
            routing_config,
        } => {
            let a = c
                .update_alias(pb::UpdateAliasRequest {
                    function_name,
                    name,
                    function_version,
                    description,
                    routing_config: routing_pb(routing_config)?,
                })
                .await
                .map_err(svc("UpdateAlias"))?
                .into_inner();
            emit(output, alias_json(&a), ALIAS_HEADERS, vec![alias_row(&a)]);
        }
        Command::GetAlias {
            function_name,
            name,
        } => {
            let a = c
                .get_alias(pb::GetAliasRequest {
                    function_name,
                    name,
                })
                .await
                .map_err(svc("GetAlias"))?
                .into_inner();
            emit(output, alias_json(&a), ALIAS_HEADERS, vec![alias_row(&a)]);
        }
        Command::ListAliases { function_name } => {
            let r = c
                .list_aliases(pb::ListAliasesRequest { function_name })
                .await
                .map_err(svc("ListAliases"))?
                .into_inner();
            emit(
                output,
                json!({"Aliases": r.aliases.iter().map(alias_json).collect::<Vec<_>>()}),
                ALIAS_HEADERS,
                r.aliases.iter().map(alias_row).collect(),
            );
        }
        Command::DeleteAlias {
            function_name,
            name,
        } => {
            c.delete_alias(pb::DeleteAliasRequest {
                function_name,
                name,
            })
            .await
            .map_err(svc("DeleteAlias"))?;
        }
        Command::PutFunctionConcurrency {
            function_name,
            reserved_concurrent_executions,
        } => {
            let r = c
                .put_function_concurrency(pb::PutFunctionConcurrencyRequest {
                    function_name,
                    reserved_concurrent_executions,
                })
                .await
                .map_err(svc("PutFunctionConcurrency"))?
                .into_inner();
            let n = r.reserved_concurrent_executions.unwrap_or_default();
            emit(
                output,
                concurrency_json(&r),
                &["RESERVED"],
                vec![vec![n.to_string()]],
            );
        }
        Command::GetFunctionConcurrency { function_name } => {
            let r = c
                .get_function_concurrency(pb::GetFunctionConcurrencyRequest { function_name })
                .await
                .map_err(svc("GetFunctionConcurrency"))?
                .into_inner();
            let n = r
                .reserved_concurrent_executions
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into());
            emit(output, concurrency_json(&r), &["RESERVED"], vec![vec![n]]);
        }
        Command::DeleteFunctionConcurrency { function_name } => {
            c.delete_function_concurrency(pb::DeleteFunctionConcurrencyRequest { function_name })
                .await
                .map_err(svc("DeleteFunctionConcurrency"))?;
        }
        Command::PutProvisionedConcurrencyConfig {
            function_name,
            qualifier,
            provisioned_concurrent_executions,
        } => {
            let p = c
                .put_provisioned_concurrency_config(pb::PutProvisionedConcurrencyConfigRequest {
                    function_name,
                    qualifier,
                    provisioned_concurrent_executions,
                })
                .await
                .map_err(svc("PutProvisionedConcurrencyConfig"))?
                .into_inner();
            emit(
                output,
                provisioned_json(&p),
                PROVISIONED_HEADERS,
                vec![provisioned_row(&p)],
            );
        }
        Command::GetProvisionedConcurrencyConfig {
            function_name,
            qualifier,
        } => {
            let p = c
                .get_provisioned_concurrency_config(pb::GetProvisionedConcurrencyConfigRequest {
                    function_name,
                    qualifier,
                })
                .await
                .map_err(svc("GetProvisionedConcurrencyConfig"))?
                .into_inner();
            emit(
                output,
                provisioned_json(&p),
                PROVISIONED_HEADERS,
                vec![provisioned_row(&p)],
            );
        }
        Command::ListProvisionedConcurrencyConfigs { function_name } => {
            let r = c
                .list_provisioned_concurrency_configs(
                    pb::ListProvisionedConcurrencyConfigsRequest { function_name },
                )
                .await
                .map_err(svc("ListProvisionedConcurrencyConfigs"))?
                .into_inner();
            let list = &r.provisioned_concurrency_configs;
            emit(
                output,
                json!({"ProvisionedConcurrencyConfigs": list.iter().map(provisioned_json).collect::<Vec<_>>()}),
                PROVISIONED_HEADERS,
                list.iter().map(provisioned_row).collect(),
            );
        }
        Command::DeleteProvisionedConcurrencyConfig {
            function_name,
            qualifier,
        } => {
            c.delete_provisioned_concurrency_config(
                pb::DeleteProvisionedConcurrencyConfigRequest {
                    function_name,
                    qualifier,
                },
            )
            .await
            .map_err(svc("DeleteProvisionedConcurrencyConfig"))?;
        }
        Command::PublishLayerVersion {
            layer_name,
            zip_file,
            description,
            compatible_runtimes,
        } => {
            let l = c
                .publish_layer_version(pb::PublishLayerVersionRequest {
                    layer_name,
                    zip_file: read_file_arg(&zip_file)?,
                    description,
                    compatible_runtimes,
                })
                .await
                .map_err(svc("PublishLayerVersion"))?
                .into_inner();
            emit(output, layer_json(&l), LAYER_HEADERS, vec![layer_row(&l)]);
        }
        Command::ListLayers => {
            let r = c
                .list_layers(pb::ListLayersRequest {})
                .await
                .map_err(svc("ListLayers"))?
                .into_inner();
            emit(
                output,
                json!({"Layers": r.layers.iter().map(|l| json!({
                    "LayerName": l.layer_name,
                    "LayerArn": l.layer_arn,
                    "LatestMatchingVersion": layer_json(l),
                })).collect::<Vec<_>>()}),
                LAYER_HEADERS,
                r.layers.iter().map(layer_row).collect(),
            );
        }
        Command::ListLayerVersions { layer_name } => {
            let r = c
                .list_layer_versions(pb::ListLayerVersionsRequest { layer_name })
                .await
                .map_err(svc("ListLayerVersions"))?
                .into_inner();
            emit(
                output,
                json!({"LayerVersions": r.layer_versions.iter().map(layer_json).collect::<Vec<_>>()}),
                LAYER_HEADERS,
                r.layer_versions.iter().map(layer_row).collect(),
            );
        }
        Command::GetLayerVersion {
            layer_name,
            version_number,
        } => {
            let l = c
                .get_layer_version(pb::GetLayerVersionRequest {
                    layer_name,
                    version: version_number,
                })
                .await
                .map_err(svc("GetLayerVersion"))?
                .into_inner();
            emit(output, layer_json(&l), LAYER_HEADERS, vec![layer_row(&l)]);
        }
        Command::DeleteLayerVersion {
            layer_name,
            version_number,
        } => {
            c.delete_layer_version(pb::DeleteLayerVersionRequest {
                layer_name,
                version: version_number,
            })
            .await
            .map_err(svc("DeleteLayerVersion"))?;
        }
        Command::Logs {
            action:
                LogsAction::Tail {
                    function_name,
                    follow,
                    since,
                },
        } => {
            let since_seconds = since.map(|s| parse_since(&s)).transpose()?.unwrap_or(0);
            let mut stream = n
                .tail_logs(pb::TailLogsRequest {
                    function_name,
                    since_seconds,
                    follow,
                })
                .await
                .map_err(svc("TailLogs"))?
                .into_inner();
            while let Some(line) = stream.message().await.map_err(svc("TailLogs"))? {
                match output {
                    Output::Json => println!(
                        "{}",
                        json!({
                            "Timestamp": line.timestamp,
                            "LogStreamName": line.log_stream,
                            "RequestId": line.request_id,
                            "Message": line.message,
                        })
                    ),
                    Output::Table => {
                        println!("{} {} {}", line.timestamp, line.log_stream, line.message)
                    }
                }
            }
        }
        Command::Node {
            action: NodeAction::Info,
        } => {
            let info = n
                .get_node_info(pb::GetNodeInfoRequest {})
                .await
                .map_err(svc("GetNodeInfo"))?
                .into_inner();
            let mut rows = vec![
                vec!["version".into(), info.version.clone()],
                vec!["engine".into(), info.engine.clone()],
                vec![
                    "accelerator".into(),
                    format!("{} ({})", info.accelerator, info.accelerator_reason),
                ],
                vec!["kernel".into(), info.kernel.clone()],
            ];
            for r in &info.runtime_images {
                rows.push(vec![
                    format!("image {}", r.runtime),
                    format!("{} ({} MB)", r.path, r.size / (1024 * 1024)),
                ]);
            }
            rows.push(vec!["cpus".into(), info.cpus.to_string()]);
            rows.push(vec![
                "memory".into(),
                format!(
                    "{} MB total, {} MB available",
                    info.memory_total_mb, info.memory_available_mb
                ),
            ]);
            rows.push(vec![
                "instances".into(),
                format!(
                    "{} ({} MB guest memory, {} MB host RSS)",
                    info.instances, info.instance_memory_mb, info.instance_rss_mb
                ),
            ]);
            rows.push(vec![
                "capacity".into(),
                format!(
                    "{} instances max; memory budget {} MB ({} MB counted)",
                    info.max_instances, info.memory_budget_mb, info.memory_charged_mb
                ),
            ]);
            rows.push(vec![
                "concurrency".into(),
                format!(
                    "{} running; {} reserved; unreserved minimum {}",
                    info.running_invocations,
                    info.reserved_concurrency,
                    info.unreserved_concurrency_min
                ),
            ]);
            rows.push(vec!["functions".into(), info.functions.to_string()]);
            rows.push(vec![
                "logs".into(),
                format!(
                    "{} bytes stored; {} bytes dropped (caps)",
                    info.log_bytes_stored, info.log_bytes_dropped
                ),
            ]);
            rows.push(vec!["VMM confinement".into(), info.vmm_confinement.clone()]);
            rows.push(vec!["Instance networks".into(), info.networks.clone()]);
            rows.push(vec![
                "init limit".into(),
                format!(
                    "{:.0} s on demand; {:.0} s building a function snapshot",
                    info.init_timeout_seconds, info.snapshot_init_timeout_seconds
                ),
            ]);
            rows.push(vec![
                "starts".into(),
                format!(
                    "{} in flight, {} waiting; {} slots; scaling rate {} new instances per function per {} s",
                    info.starts_in_flight,
                    info.starts_waiting,
                    info.start_slots,
                    info.scale_instances,
                    info.scale_interval_seconds
                ),
            ]);
            rows.push(vec!["data dir".into(), info.data_dir.clone()]);
            rows.push(vec!["started".into(), info.started_at.clone()]);
            emit(output, node_info_json(&info), &["FIELD", "VALUE"], rows);
        }
        Command::Instances {
            function_name,
            action: None,
        } => {
            let r = n
                .list_instances(pb::ListInstancesRequest {
                    function_name: function_name.unwrap_or_default(),
                })
                .await
                .map_err(svc("ListInstances"))?
                .into_inner();
            emit(
                output,
                json!({
                    "Instances": r.instances.iter().map(instance_json).collect::<Vec<_>>(),
                    "Starts": r.starts.iter().map(|q| json!({
                        "FunctionName": q.function_name,
                        "InFlight": q.in_flight,
                        "Waiting": q.waiting,
                    })).collect::<Vec<_>>(),
                    "AutoScaling": r.scaling.iter().map(super::scaling::scaling_json).collect::<Vec<_>>(),
                }),
                INSTANCE_HEADERS,
                r.instances.iter().map(instance_row).collect(),
            );
            if output == Output::Table && !r.starts.is_empty() {
                println!();
                emit(
                    output,
                    json!({}),
                    &["STARTING", "IN FLIGHT", "WAITING"],
                    r.starts
                        .iter()
                        .map(|q| {
                            vec![
                                q.function_name.clone(),
                                q.in_flight.to_string(),
                                q.waiting.to_string(),
                            ]
                        })
                        .collect(),
                );
            }
            if output == Output::Table && !r.scaling.is_empty() {
                println!();
                emit(
                    output,
                    json!({}),
                    super::scaling::SCALING_HEADERS,
                    r.scaling.iter().map(super::scaling::scaling_row).collect(),
                );
            }
        }
        Command::Instances {
            function_name: outer,
            action:
                Some(InstancesAction::Stop {
                    instance_id,
                    function_name,
                }),
        } => {
            let function_name = function_name.or(outer).unwrap_or_default();
            let instance_id = instance_id.unwrap_or_default();
            if instance_id.is_empty() == function_name.is_empty() {
                return Err(CliError::Usage(
                    "instances stop: give an instance id or --function-name".into(),
                ));
            }
            let r = n
                .stop_instances(pb::StopInstancesRequest {
                    instance_id,
                    function_name,
                })
                .await
                .map_err(svc("StopInstances"))?
                .into_inner();
            emit(
                output,
                json!({"Stopped": r.stopped}),
                &["STOPPED"],
                r.stopped.iter().map(|s| vec![s.clone()]).collect(),
            );
        }
    }
    Ok(())
}

/// `--network-mode` and `--egress-rule`s as the API takes them (none of
/// either: unchanged, or the default).
fn network_config(
    mode: Option<String>,
    rules: Vec<String>,
) -> Result<Option<pb::NetworkConfig>, CliError> {
    use crate::network::{EgressRule, Mode, NetworkConfig};
    if mode.is_none() && rules.is_empty() {
        return Ok(None);
    }
    let mode = Mode::parse(mode.as_deref().unwrap_or(""))
        .map_err(|e| CliError::Usage(format!("--network-mode: {e}")))?;
    let egress = rules
        .iter()
        .map(|r| {
            EgressRule::parse(r).map_err(|e| CliError::Usage(format!("--egress-rule {r}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    Ok(Some(crate::api::network_pb(&NetworkConfig {
        mode,
        egress,
    })))
}
