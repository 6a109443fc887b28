//! `flintctl deploy --template-file`, and the stack commands shaped like
//! `aws cloudformation`'s.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flint_proto::node::v1 as pb;
use flint_proto::node::v1::stacks_client::StacksClient;
use serde_json::{json, Value};
use tonic::transport::Channel;

use super::args::Command;
use super::commands::svc;
use super::{emit, CliError, Output};
use crate::stacks::template::{scalar, Kind, Template};

pub fn client(channel: &Channel) -> StacksClient<Channel> {
    StacksClient::new(channel.clone())
        .max_decoding_message_size(256 * 1024 * 1024)
        .max_encoding_message_size(256 * 1024 * 1024)
}

pub struct DeployOptions {
    pub template: PathBuf,
    pub stack: String,
    pub parameters: Vec<String>,
    pub execute: bool,
    pub minute_seconds: u32,
    pub wait: bool,
}

/// The packages a template names: each `CodeUri` / `ContentUri` folder
/// zipped (links refused), or a `.zip` file as it is, by the text that
/// names it.
pub fn package(template_path: &Path) -> Result<(String, BTreeMap<String, Vec<u8>>), CliError> {
    let text = std::fs::read_to_string(template_path)
        .map_err(|e| CliError::Read(template_path.display().to_string(), e))?;
    let t = Template::parse(&text).map_err(|e| CliError::Usage(e.to_string()))?;
    let base = template_path.parent().unwrap_or(Path::new("."));
    let mut artifacts = BTreeMap::new();
    for (id, r) in &t.resources {
        let key = match r.kind {
            Kind::Function => "CodeUri",
            Kind::Layer => "ContentUri",
            _ => continue,
        };
        let Some(v) = r.properties.get(key) else {
            continue;
        };
        let uri = scalar(v).ok_or_else(|| {
            CliError::Usage(format!(
                "Resources.{id}.Properties.{key}: a folder or a .zip file, written as a plain string"
            ))
        })?;
        if artifacts.contains_key(&uri) {
            continue;
        }
        let path = base.join(&uri);
        let zip = if path.is_dir() {
            crate::blueprints::zip_dir(&path).map_err(|e| CliError::Usage(e.to_string()))?
        } else if uri.ends_with(".zip") {
            std::fs::read(&path).map_err(|e| CliError::Read(path.display().to_string(), e))?
        } else {
            return Err(CliError::Usage(format!(
                "Resources.{id}.Properties.{key}: {uri:?} is neither a folder nor a .zip file (beside {})",
                template_path.display()
            )));
        };
        artifacts.insert(uri, zip);
    }
    Ok((text, artifacts))
}

fn overrides(items: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    let mut out = BTreeMap::new();
    for i in items {
        // `Key=Value`, or the AWS CLI's `ParameterKey=K,ParameterValue=V`.
        let (k, v) = if let Some(rest) = i.strip_prefix("ParameterKey=") {
            rest.split_once(",ParameterValue=")
                .ok_or_else(|| CliError::Usage(format!("--parameter-overrides {i:?}")))?
        } else {
            i.split_once('=')
                .ok_or_else(|| CliError::Usage(format!("--parameter-overrides {i:?}: Key=Value")))?
        };
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

fn change_json(c: &pb::StackChange) -> Value {
    json!({
        "Action": c.action,
        "LogicalResourceId": c.logical_resource_id,
        "PhysicalResourceId": c.physical_resource_id,
        "ResourceType": c.resource_type,
        "Replacement": if c.replacement { "True" } else { "False" },
        "Details": c.details,
    })
}

fn stack_json(s: &pb::Stack) -> Value {
    json!({
        "StackName": s.stack_name,
        "StackId": s.stack_id,
        "StackStatus": s.stack_status,
        "StackStatusReason": s.stack_status_reason,
        "Description": s.description,
        "Parameters": s.parameters.iter().map(|(k, v)| json!({"ParameterKey": k, "ParameterValue": v})).collect::<Vec<_>>(),
        "Outputs": s.outputs.iter().map(|o| json!({"OutputKey": o.output_key, "OutputValue": o.output_value, "Description": o.description})).collect::<Vec<_>>(),
        "CreationTime": s.creation_time,
        "LastUpdatedTime": s.last_updated_time,
    })
}

fn event_json(e: &pb::StackEvent) -> Value {
    json!({
        "EventId": e.event_id,
        "StackName": e.stack_name,
        "LogicalResourceId": e.logical_resource_id,
        "PhysicalResourceId": e.physical_resource_id,
        "ResourceType": e.resource_type,
        "Timestamp": e.timestamp,
        "ResourceStatus": e.resource_status,
        "ResourceStatusReason": e.resource_status_reason,
    })
}

fn event_line(e: &pb::StackEvent) -> String {
    format!(
        "{}  {:<36} {:<30} {:<22} {}",
        e.timestamp,
        e.resource_status,
        e.resource_type,
        e.logical_resource_id,
        e.resource_status_reason
    )
}

/// A final status that means the operation did not do what was asked.
fn failed(status: &str) -> bool {
    status.contains("ROLLBACK") || status.ends_with("_FAILED")
}

/// Follows a stack's events until its status is final; prints each new
/// event on stderr. Answers the stack (None: deleted).
async fn follow(
    c: &mut StacksClient<Channel>,
    name: &str,
    seen: &mut HashSet<String>,
) -> Result<Option<pb::Stack>, CliError> {
    loop {
        let events = c
            .describe_stack_events(pb::DescribeStackEventsRequest {
                stack_name: name.to_string(),
            })
            .await
            .map_err(svc("DescribeStackEvents"))?
            .into_inner()
            .events;
        for e in events.iter().rev() {
            if seen.insert(e.event_id.clone()) {
                eprintln!("{}", event_line(e));
            }
        }
        let all = c
            .list_stacks(pb::ListStacksRequest {})
            .await
            .map_err(svc("ListStacks"))?
            .into_inner()
            .stacks;
        let Some(s) = all.into_iter().find(|s| s.stack_name == name) else {
            return Ok(None);
        };
        if !s.stack_status.ends_with("_IN_PROGRESS") {
            return Ok((s.stack_status != "DELETE_COMPLETE").then_some(s));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn seen_events(c: &mut StacksClient<Channel>, name: &str) -> HashSet<String> {
    match c
        .describe_stack_events(pb::DescribeStackEventsRequest {
            stack_name: name.to_string(),
        })
        .await
    {
        Ok(r) => r
            .into_inner()
            .events
            .into_iter()
            .map(|e| e.event_id)
            .collect(),
        Err(_) => HashSet::new(),
    }
}

pub async fn deploy(
    c: &mut StacksClient<Channel>,
    o: DeployOptions,
    output: Output,
) -> Result<(), CliError> {
    let (template, artifacts) = package(&o.template)?;
    let mut seen = seen_events(c, &o.stack).await;
    let r = c
        .deploy_stack(pb::DeployStackRequest {
            stack_name: o.stack.clone(),
            template_body: template,
            parameter_overrides: overrides(&o.parameters)?.into_iter().collect(),
            artifacts: artifacts
                .into_iter()
                .map(|(uri, zip_file)| pb::StackArtifact { uri, zip_file })
                .collect(),
            no_execute_changeset: !o.execute,
            deployment_minute_seconds: o.minute_seconds,
        })
        .await
        .map_err(svc("DeployStack"))?
        .into_inner();
    let changes: Vec<Value> = r.changes.iter().map(change_json).collect();
    if output == Output::Table {
        let rows = r
            .changes
            .iter()
            .map(|c| {
                vec![
                    c.action.clone(),
                    c.logical_resource_id.clone(),
                    c.resource_type.clone(),
                    if c.replacement { "True" } else { "False" }.into(),
                    c.details.clone(),
                ]
            })
            .collect();
        emit(
            output,
            Value::Null,
            &["ACTION", "LOGICAL ID", "TYPE", "REPLACEMENT", "DETAILS"],
            rows,
        );
        if r.changes.is_empty() {
            println!("No changes to deploy. Stack {} is up to date.", o.stack);
        }
    }
    let mut doc = json!({"StackId": r.stack_id, "Changes": changes, "Executing": r.executing});
    if r.executing && o.wait {
        let s = follow(c, &o.stack, &mut seen).await?;
        if let Some(s) = &s {
            doc["Stack"] = stack_json(s);
            if output == Output::Table {
                println!(
                    "{}: {} {}",
                    s.stack_name, s.stack_status, s.stack_status_reason
                );
                for out in &s.outputs {
                    println!("  {} = {}", out.output_key, out.output_value);
                }
            }
            if failed(&s.stack_status) {
                if output == Output::Json {
                    emit(output, doc, &[], vec![]);
                }
                return Err(CliError::Service {
                    operation: "DeployStack",
                    exception: s.stack_status.clone(),
                    message: s.stack_status_reason.clone(),
                });
            }
        }
    }
    if output == Output::Json {
        emit(output, doc, &[], vec![]);
    }
    Ok(())
}

pub async fn run(
    c: &mut StacksClient<Channel>,
    output: Output,
    cmd: Command,
) -> Result<(), CliError> {
    match cmd {
        Command::DescribeStacks { stack_name } => {
            let r = c
                .describe_stacks(pb::DescribeStacksRequest {
                    stack_name: stack_name.unwrap_or_default(),
                })
                .await
                .map_err(svc("DescribeStacks"))?
                .into_inner();
            let rows = r
                .stacks
                .iter()
                .map(|s| {
                    vec![
                        s.stack_name.clone(),
                        s.stack_status.clone(),
                        s.last_updated_time.clone(),
                        s.stack_status_reason.clone(),
                    ]
                })
                .collect();
            emit(
                output,
                json!({"Stacks": r.stacks.iter().map(stack_json).collect::<Vec<_>>()}),
                &["STACK", "STATUS", "UPDATED", "REASON"],
                rows,
            );
        }
        Command::ListStacks => {
            let r = c
                .list_stacks(pb::ListStacksRequest {})
                .await
                .map_err(svc("ListStacks"))?
                .into_inner();
            let rows = r
                .stacks
                .iter()
                .map(|s| {
                    vec![
                        s.stack_name.clone(),
                        s.stack_status.clone(),
                        s.creation_time.clone(),
                    ]
                })
                .collect();
            emit(
                output,
                json!({"StackSummaries": r.stacks.iter().map(|s| json!({
                    "StackName": s.stack_name, "StackId": s.stack_id,
                    "StackStatus": s.stack_status, "CreationTime": s.creation_time,
                })).collect::<Vec<_>>()}),
                &["STACK", "STATUS", "CREATED"],
                rows,
            );
        }
        Command::DeleteStack {
            stack_name,
            no_wait,
        } => {
            let mut seen = seen_events(c, &stack_name).await;
            c.delete_stack(pb::DeleteStackRequest {
                stack_name: stack_name.clone(),
            })
            .await
            .map_err(svc("DeleteStack"))?;
            if !no_wait {
                if let Some(s) = follow(c, &stack_name, &mut seen).await? {
                    return Err(CliError::Service {
                        operation: "DeleteStack",
                        exception: s.stack_status,
                        message: s.stack_status_reason,
                    });
                }
            }
        }
        Command::DescribeStackEvents { stack_name } => {
            let r = c
                .describe_stack_events(pb::DescribeStackEventsRequest { stack_name })
                .await
                .map_err(svc("DescribeStackEvents"))?
                .into_inner();
            let rows = r
                .events
                .iter()
                .map(|e| {
                    vec![
                        e.timestamp.clone(),
                        e.resource_status.clone(),
                        e.resource_type.clone(),
                        e.logical_resource_id.clone(),
                        e.resource_status_reason.clone(),
                    ]
                })
                .collect();
            emit(
                output,
                json!({"StackEvents": r.events.iter().map(event_json).collect::<Vec<_>>()}),
                &["TIME", "STATUS", "TYPE", "LOGICAL ID", "REASON"],
                rows,
            );
        }
        Command::ListStackResources { stack_name } => {
            let r = c
                .list_stack_resources(pb::ListStackResourcesRequest { stack_name })
                .await
                .map_err(svc("ListStackResources"))?
                .into_inner();
            let rows = r
                .resources
                .iter()
                .map(|x| {
                    vec![
                        x.logical_resource_id.clone(),
                        x.physical_resource_id.clone(),
                        x.resource_type.clone(),
                    ]
                })
                .collect();
            emit(
                output,
                json!({"StackResourceSummaries": r.resources.iter().map(|x| json!({
                    "LogicalResourceId": x.logical_resource_id,
                    "PhysicalResourceId": x.physical_resource_id,
                    "ResourceType": x.resource_type,
                })).collect::<Vec<_>>()}),
                &["LOGICAL ID", "PHYSICAL ID", "TYPE"],
                rows,
            );
        }
        _ => unreachable!("not a stack command"),
    }
    Ok(())
}

/// `flintctl pipeline ...`.
pub async fn pipeline(
    c: &mut flint_proto::node::v1::pipelines_client::PipelinesClient<Channel>,
    output: Output,
    cmd: super::args::PipelineCommand,
) -> Result<(), CliError> {
    use super::args::PipelineCommand as P;
    let describe = |p: &pb::PipelineDescription| {
        json!({
            "Name": p.name, "Repository": p.repository, "Branch": p.branch,
            "StackName": p.stack_name, "Created": p.created, "LastCommit": p.last_commit,
        })
    };
    let row = |p: &pb::PipelineDescription| {
        vec![
            p.name.clone(),
            p.repository.clone(),
            p.branch.clone(),
            p.stack_name.clone(),
            p.last_commit.chars().take(12).collect(),
        ]
    };
    const HEADERS: &[&str] = &["PIPELINE", "REPOSITORY", "BRANCH", "STACK", "LAST COMMIT"];
    match cmd {
        P::Create {
            name,
            repository,
            branch,
            stack_name,
        } => {
            let repository = std::fs::canonicalize(&repository)
                .map_err(|e| CliError::Read(repository.display().to_string(), e))?;
            let p = c
                .create_pipeline(pb::CreatePipelineRequest {
                    name,
                    repository: repository.display().to_string(),
                    branch,
                    stack_name,
                })
                .await
                .map_err(svc("CreatePipeline"))?
                .into_inner();
            emit(output, describe(&p), HEADERS, vec![row(&p)]);
        }
        P::List => {
            let r = c
                .list_pipelines(pb::ListPipelinesRequest {})
                .await
                .map_err(svc("ListPipelines"))?
                .into_inner();
            emit(
                output,
                json!({"Pipelines": r.pipelines.iter().map(describe).collect::<Vec<_>>()}),
                HEADERS,
                r.pipelines.iter().map(row).collect(),
            );
        }
        P::Runs { name } => {
            let r = c
                .list_pipeline_runs(pb::ListPipelineRunsRequest { name })
                .await
                .map_err(svc("ListPipelineRuns"))?
                .into_inner();
            if output == Output::Table {
                for run in &r.runs {
                    println!(
                        "{}  {}  {}  {}  {}",
                        run.id,
                        run.status,
                        run.commit.chars().take(12).collect::<String>(),
                        run.message,
                        run.reason
                    );
                    for s in &run.stages {
                        println!("  {:<7} {:<10} {} {}", s.name, s.status, s.started, s.ended);
                        for line in s.log.lines() {
                            println!("    | {line}");
                        }
                    }
                }
            } else {
                emit(
                    output,
                    json!({"Runs": r.runs.iter().map(|run| json!({
                        "Id": run.id, "Commit": run.commit, "Message": run.message,
                        "Status": run.status, "Reason": run.reason,
                        "Started": run.started, "Ended": run.ended,
                        "Stages": run.stages.iter().map(|s| json!({
                            "Name": s.name, "Status": s.status, "Log": s.log,
                            "Started": s.started, "Ended": s.ended,
                        })).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>()}),
                    &[],
                    vec![],
                );
            }
        }
        P::Delete { name } => {
            c.delete_pipeline(pb::DeletePipelineRequest { name })
                .await
                .map_err(svc("DeletePipeline"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_s_folders_and_zips_are_packaged_and_links_refused() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("template.yaml");
        std::fs::write(
            &t,
            "Resources:\n  A:\n    Type: AWS::Serverless::Function\n    Properties: {CodeUri: src/, Handler: app.h, Runtime: python3.11}\n  B:\n    Type: AWS::Serverless::Function\n    Properties: {CodeUri: b.zip, Handler: app.h, Runtime: python3.11}\n  C:\n    Type: AWS::Serverless::Function\n    Properties: {CodeUri: src/, Handler: app.g, Runtime: python3.11}\n",
        )
        .unwrap();
        std::fs::create_dir(d.path().join("src")).unwrap();
        std::fs::write(d.path().join("src/app.py"), "x = 1\n").unwrap();
        std::fs::write(d.path().join("b.zip"), b"PK-not-checked-here").unwrap();
        let (text, a) = package(&t).unwrap();
        assert!(text.contains("CodeUri: b.zip"));
        assert_eq!(a.keys().collect::<Vec<_>>(), vec!["b.zip", "src/"]);
        assert_eq!(a["b.zip"], b"PK-not-checked-here");
        let files = crate::pipelines::git::read_zip(&a["src/"]).unwrap();
        assert_eq!(files.keys().collect::<Vec<_>>(), vec!["app.py"]);
        // A link in a folder is refused, not followed.
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("src/passwd")).unwrap();
        assert!(package(&t).is_err());
        std::fs::remove_file(d.path().join("src/passwd")).unwrap();
        // A CodeUri that is neither a folder nor a .zip is named.
        std::fs::write(&t, "Resources:\n  A:\n    Type: AWS::Serverless::Function\n    Properties: {CodeUri: nope, Handler: a.b, Runtime: python3.11}\n").unwrap();
        let e = package(&t).unwrap_err().to_string();
        assert!(e.contains("Resources.A.Properties.CodeUri"), "{e}");
    }

    #[test]
    fn parameter_overrides_take_both_forms() {
        let o = overrides(&["A=1".into(), "ParameterKey=B,ParameterValue=x=y".into()]).unwrap();
        assert_eq!(o["A"], "1");
        assert_eq!(o["B"], "x=y");
        assert!(overrides(&["novalue".into()]).is_err());
    }
}
