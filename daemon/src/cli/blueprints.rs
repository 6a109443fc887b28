//! `flintctl init`, `flintctl deploy` and `create-function --blueprint`.

use std::path::{Path, PathBuf};

use flint_proto::node::v1 as pb;
use flint_proto::node::v1::functions_client::FunctionsClient;
use serde_json::json;
use tonic::transport::Channel;

use super::commands::svc;
use super::{emit, CliError, Output};
use crate::blueprints::{BlueprintError, Deployable};

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
        let doc = json!({"Blueprints": all.iter().map(|b| json!({
            "Name": b.name,
            "Summary": b.meta.summary,
            "Runtimes": b.meta.runtimes.keys().collect::<Vec<_>>(),
            "MemorySize": b.meta.memory_size,
            "Timeout": b.meta.timeout,
            "Publish": b.meta.publish,
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
    c: &mut FunctionsClient<Channel>,
    name: &str,
    d: Deployable,
    extra_layers: Vec<String>,
) -> Result<pb::FunctionConfiguration, CliError> {
    let p = d.project;
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
            memory_size: Some(p.memory_size),
            timeout: Some(p.timeout),
            environment: Some(pb::Environment {
                variables: p.environment.clone().into_iter().collect(),
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
            memory_size: p.memory_size,
            timeout: p.timeout,
            environment: p.environment.clone().into_iter().collect(),
            description: p.description.clone(),
            layers,
            ..Default::default()
        })
        .await
        .map_err(svc("CreateFunction"))?
        .into_inner()
    };
    if p.publish {
        return Ok(c
            .publish_version(pb::PublishVersionRequest {
                function_name: name.to_string(),
                description: format!("deployed from the {} blueprint", p.blueprint),
            })
            .await
            .map_err(svc("PublishVersion"))?
            .into_inner());
    }
    Ok(f)
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
