//! `flintctl init`, `flintctl deploy` and `create-function --blueprint`.

use std::path::{Path, PathBuf};

use flint_proto::node::v1 as pb;
use flint_proto::node::v1::functions_client::FunctionsClient;
use serde_json::json;
use tonic::transport::Channel;

use super::commands::svc;
use super::{emit, CliError, Output};
use crate::blueprints::{BlueprintError, Deployable, Wiring};
use flint_proto::node::v1::queues_client::QueuesClient;
use flint_proto::node::v1::scheduler_client::SchedulerClient;
use flint_proto::node::v1::streams_client::StreamsClient;

pub(super) fn usage(e: BlueprintError) -> CliError {
    CliError::Usage(e.to_string())
}

/// `init --list`, or `init --blueprint NAME [--runtime R] DIR`.
pub fn init(
    list: bool,
    blueprint: Option<&str>,
    runtime: Option<&str>,
    dir: Option<&Path>,
    output: Output,
) -> Result<(), CliError> {
    if list {
        let all = crate::blueprints::list().map_err(usage)?;
        let rows = all
            .iter()
            .map(|b| {
                vec![
                    b.name.clone(),
                    b.meta
                        .runtimes
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(","),
                    b.meta.summary.clone(),
                ]
            })
            .collect();
        let apps = super::apps::list();
        let mut rows: Vec<Vec<String>> = rows;
        for (name, summary) in &apps {
            rows.push(vec![
                format!("{name} (--app-template)"),
                "python3.11".into(),
                summary.clone(),
            ]);
        }
        let doc = json!({"AppTemplates": apps.iter().map(|(n, s)| json!({"Name": n, "Summary": s})).collect::<Vec<_>>(),
        "Blueprints": all.iter().map(|b| json!({
            "Name": b.name,
            "Summary": b.meta.summary,
            "Runtimes": b.meta.runtimes.keys().collect::<Vec<_>>(),
            "MemorySize": b.meta.presets.memory_size,
            "Timeout": b.meta.presets.timeout,
            "Publish": b.meta.presets.publish,
        })).collect::<Vec<_>>()});
        emit(output, doc, &["NAME", "RUNTIMES", "SUMMARY"], rows);
        return Ok(());
    }
    let (Some(name), Some(dir)) = (blueprint, dir) else {
        return Err(CliError::Usage(
            "init needs --list, or --blueprint NAME and a folder".into(),
        ));
    };
    let b = crate::blueprints::get(name).map_err(usage)?;
    let p = b.write(runtime, dir).map_err(usage)?;
    emit(
        output,
        json!({"Blueprint": p.blueprint, "Runtime": p.runtime, "Handler": p.handler, "Directory": dir}),
        &["BLUEPRINT", "RUNTIME", "HANDLER", "DIRECTORY"],
        vec![vec![
            p.blueprint.clone(),
            p.runtime.clone(),
            p.handler.clone(),
            dir.display().to_string(),
        ]],
    );
    Ok(())
}

/// Creates `name` from a packaged project (or updates its code and
/// settings where it exists): its layer first, then the function with
/// the layer and `extra_layers`, then a version where the project says so.
pub async fn deploy(
    channel: &Channel,
    c: &mut FunctionsClient<Channel>,
    name: &str,
    d: Deployable,
    extra_layers: Vec<String>,
) -> Result<pb::FunctionConfiguration, CliError> {
    let p = d.project;
    let pre = &p.presets;
    let mut layers = Vec::new();
    if let Some(zip) = d.layer {
        let l = c
            .publish_layer_version(pb::PublishLayerVersionRequest {
                layer_name: format!("{name}-deps"),
                zip_file: zip,
                description: format!("the layer of {name} ({} blueprint)", p.blueprint),
                compatible_runtimes: vec![p.runtime.clone()],
            })
            .await
            .map_err(svc("PublishLayerVersion"))?
            .into_inner();
        layers.push(l.layer_version_arn);
    }
    layers.extend(extra_layers);
    let exists = match c
        .get_function(pb::GetFunctionRequest {
            function_name: name.to_string(),
            qualifier: String::new(),
        })
        .await
    {
        Ok(_) => true,
        Err(s) if s.code() == tonic::Code::NotFound => false,
        Err(s) => return Err(CliError::from_status("GetFunction", s)),
    };
    let f = if exists {
        c.update_function_code(pb::UpdateFunctionCodeRequest {
            function_name: name.to_string(),
            zip_file: d.code,
            publish: false,
            revision_id: String::new(),
        })
        .await
        .map_err(svc("UpdateFunctionCode"))?;
        c.update_function_configuration(pb::UpdateFunctionConfigurationRequest {
            function_name: name.to_string(),
            handler: Some(p.handler.clone()),
            runtime: Some(p.runtime.clone()),
            memory_size: Some(pre.memory_size),
            timeout: Some(pre.timeout),
            environment: Some(pb::Environment {
                variables: pre.environment.clone().into_iter().collect(),
            }),
            layers: Some(pb::LayerList { arns: layers }),
            description: Some(p.description.clone()),
            ..Default::default()
        })
        .await
        .map_err(svc("UpdateFunctionConfiguration"))?
        .into_inner()
    } else {
        c.create_function(pb::CreateFunctionRequest {
            function_name: name.to_string(),
            runtime: p.runtime.clone(),
            handler: p.handler.clone(),
            zip_file: d.code,
            memory_size: pre.memory_size,
            timeout: pre.timeout,
            environment: pre.environment.clone().into_iter().collect(),
            description: p.description.clone(),
            layers,
            ..Default::default()
        })
        .await
        .map_err(svc("CreateFunction"))?
        .into_inner()
    };
    let f = if pre.publish {
        c.publish_version(pb::PublishVersionRequest {
            function_name: name.to_string(),
            description: format!("deployed from the {} blueprint", p.blueprint),
        })
        .await
        .map_err(svc("PublishVersion"))?
        .into_inner()
    } else {
        f
    };
    wire(channel, c, name, &f, &pre.wiring).await?;
    Ok(f)
}

/// Creates what the project says the function is wired to, where it is
/// not there yet: its queue or stream and their mapping, its schedule,
/// its destinations.
async fn wire(
    channel: &Channel,
    c: &mut FunctionsClient<Channel>,
    name: &str,
    f: &pb::FunctionConfiguration,
    w: &Wiring,
) -> Result<(), CliError> {
    // arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]
    let parts: Vec<&str> = f.function_arn.split(':').collect();
    let (region, account) = match parts.as_slice() {
        [_, _, _, region, account, ..] => (*region, *account),
        _ => {
            return Err(CliError::Usage(format!(
                "unexpected function ARN {}",
                f.function_arn
            )))
        }
    };
    let function_arn = parts[..7.min(parts.len())].join(":");
    if let Some(q) = &w.queue {
        let mut queues = QueuesClient::new(channel.clone());
        let queue_name = q.name.clone().unwrap_or_else(|| format!("{name}-queue"));
        let arn = match queues
            .get_queue_attributes(pb::QueueRequest {
                queue_name: queue_name.clone(),
            })
            .await
        {
            Ok(a) => a.into_inner().queue_arn,
            Err(s) if s.code() == tonic::Code::NotFound => {
                queues
                    .create_queue(pb::CreateQueueRequest {
                        queue_name,
                        visibility_timeout: Some(6 * f.timeout.max(5)),
                        ..Default::default()
                    })
                    .await
                    .map_err(svc("CreateQueue"))?
                    .into_inner()
                    .queue_arn
            }
            Err(s) => return Err(CliError::from_status("GetQueueAttributes", s)),
        };
        map(
            c,
            name,
            &arn,
            q.batch_size,
            q.report_batch_item_failures,
            "",
        )
        .await?;
    }
    if let Some(s) = &w.stream {
        let mut streams = StreamsClient::new(channel.clone());
        let stream_name = s.name.clone().unwrap_or_else(|| format!("{name}-stream"));
        let arn = match streams
            .describe_stream(pb::StreamRequest {
                stream_name: stream_name.clone(),
            })
            .await
        {
            Ok(d) => d.into_inner().stream_arn,
            Err(e) if e.code() == tonic::Code::NotFound => {
                streams
                    .create_stream(pb::CreateStreamRequest {
                        stream_name,
                        shard_count: s.shard_count,
                        retention_period_hours: None,
                    })
                    .await
                    .map_err(svc("CreateStream"))?
                    .into_inner()
                    .stream_arn
            }
            Err(e) => return Err(CliError::from_status("DescribeStream", e)),
        };
        map(
            c,
            name,
            &arn,
            s.batch_size,
            s.report_batch_item_failures,
            &s.starting_position,
        )
        .await?;
    }
    if let Some(s) = &w.schedule {
        let mut scheduler = SchedulerClient::new(channel.clone());
        let schedule = pb::ScheduleRequest {
            name: format!("{name}-schedule"),
            schedule_expression: s.expression.clone(),
            target: Some(pb::ScheduleTarget {
                arn: function_arn.clone(),
                input: s.input.as_ref().map(|v| v.to_string()),
                role_arn: String::new(),
            }),
            description: format!("runs {name}"),
            ..Default::default()
        };
        let exists = scheduler
            .get_schedule(pb::GetScheduleRequest {
                name: schedule.name.clone(),
            })
            .await
            .is_ok();
        if exists {
            scheduler
                .update_schedule(schedule)
                .await
                .map_err(svc("UpdateSchedule"))?;
        } else {
            scheduler
                .create_schedule(schedule)
                .await
                .map_err(svc("CreateSchedule"))?;
        }
    }
    if let Some(d) = &w.destinations {
        let bus = |b: &String| format!("arn:aws:events:{region}:{account}:event-bus/{name}-{b}");
        c.put_function_event_invoke_config(pb::PutFunctionEventInvokeConfigRequest {
            function_name: name.to_string(),
            qualifier: String::new(),
            maximum_retry_attempts: d.maximum_retry_attempts,
            maximum_event_age_in_seconds: None,
            destination_config: Some(pb::DestinationConfig {
                on_success: d.on_success.as_ref().map(|b| pb::OnSuccess {
                    destination: bus(b),
                }),
                on_failure: d.on_failure.as_ref().map(|b| pb::OnFailure {
                    destination: bus(b),
                }),
            }),
        })
        .await
        .map_err(svc("PutFunctionEventInvokeConfig"))?;
    }
    Ok(())
}

/// An event source mapping from `source_arn` to `name`, unless there is one.
async fn map(
    c: &mut FunctionsClient<Channel>,
    name: &str,
    source_arn: &str,
    batch_size: Option<u32>,
    report_failures: bool,
    starting_position: &str,
) -> Result<(), CliError> {
    let existing = c
        .list_event_source_mappings(pb::ListEventSourceMappingsRequest {
            event_source_arn: source_arn.to_string(),
            function_name: name.to_string(),
        })
        .await
        .map_err(svc("ListEventSourceMappings"))?
        .into_inner();
    if !existing.event_source_mappings.is_empty() {
        return Ok(());
    }
    c.create_event_source_mapping(pb::CreateEventSourceMappingRequest {
        event_source_arn: source_arn.to_string(),
        function_name: name.to_string(),
        batch_size,
        function_response_types: if report_failures {
            vec!["ReportBatchItemFailures".into()]
        } else {
            vec![]
        },
        starting_position: starting_position.to_string(),
        ..Default::default()
    })
    .await
    .map_err(svc("CreateEventSourceMapping"))?;
    Ok(())
}

/// A folder of its own under the temporary directory, removed when
/// dropped: where `create-function --blueprint` writes the project it
/// deploys.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new() -> Result<Self, BlueprintError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "flintctl-blueprint-{}-{nanos:x}",
            std::process::id()
        ));
        // A new folder (create_dir fails on one that exists: nothing is
        // written through a link someone planted).
        std::fs::create_dir(&dir).map_err(|source| BlueprintError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self(dir.join("project")))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}
