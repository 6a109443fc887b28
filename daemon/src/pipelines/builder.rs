//! The build stage's commands run inside a microVM of the application's
//! runtime: the pushed tree and a small build handler become the code of
//! a builder function, which copies the tree to /tmp, runs the commands
//! there as the guest's unprivileged user, and answers the files they
//! left (less `__pycache__` folders, which would make every build's
//! package differ). Nothing of the build runs on the host.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;

use super::git::{check_path, Tree};
use super::PipelineError;
use crate::functions::{FunctionSpec, LATEST};
use crate::invoke::{InvocationType, InvokeRequest};
use crate::node::Node;

const PYTHON: &str = r#"import base64, os, shutil, stat, subprocess

LIMIT = 64 * 1024

def handler(event, context):
    work = "/tmp/build"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree("/var/task/tree", work)
    log = []
    for cmd in event["commands"]:
        log.append("$ " + cmd)
        p = subprocess.run(cmd, shell=True, cwd=work, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=event.get("timeout", 600))
        log.append(p.stdout.decode("utf-8", "replace")[-LIMIT:])
        if p.returncode != 0:
            return {"ok": False, "failed": cmd, "exit": p.returncode, "log": "\n".join(log)}
    files = []
    for root, dirs, names in os.walk(work):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for n in sorted(names):
            path = os.path.join(root, n)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                continue
            with open(path, "rb") as f:
                data = f.read()
            files.append({"path": os.path.relpath(path, work),
                          "mode": 0o755 if st.st_mode & 0o111 else 0o644,
                          "data": base64.b64encode(data).decode()})
    return {"ok": True, "log": "\n".join(log), "files": files}
"#;

const NODE: &str = r#"const fs = require("fs");
const path = require("path");
const { execSync } = require("child_process");

const LIMIT = 64 * 1024;

function walk(root, dir, out) {
  for (const n of fs.readdirSync(dir).sort()) {
    const p = path.join(dir, n);
    const st = fs.lstatSync(p);
    if (st.isDirectory()) { if (n !== "__pycache__") walk(root, p, out); }
    else if (st.isFile())
      out.push({ path: path.relative(root, p), mode: st.mode & 0o111 ? 0o755 : 0o644,
                 data: fs.readFileSync(p).toString("base64") });
  }
}

exports.handler = async (event) => {
  const work = "/tmp/build";
  fs.rmSync(work, { recursive: true, force: true });
  fs.cpSync("/var/task/tree", work, { recursive: true });
  const log = [];
  for (const cmd of event.commands) {
    log.push("$ " + cmd);
    try {
      const out = execSync(cmd, { cwd: work, stdio: ["ignore", "pipe", "pipe"],
                                  timeout: (event.timeout || 600) * 1000, shell: "/bin/sh" });
      log.push(out.toString().slice(-LIMIT));
    } catch (e) {
      log.push(((e.stdout || "").toString() + (e.stderr || "").toString()).slice(-LIMIT));
      return { ok: false, failed: cmd, exit: e.status, log: log.join("\n") };
    }
  }
  const files = [];
  walk(work, work, files);
  return { ok: true, log: log.join("\n"), files };
};
"#;

#[derive(Deserialize)]
struct File {
    path: String,
    mode: u32,
    data: String,
}

#[derive(Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default)]
    failed: String,
    #[serde(default)]
    exit: Option<i64>,
    #[serde(default)]
    log: String,
    #[serde(default)]
    files: Vec<File>,
}

/// The builder function's name for a pipeline.
pub fn function_name(pipeline: &str) -> String {
    let mut n = format!("flint-build-{pipeline}");
    n.truncate(64);
    n
}

/// Runs `commands` on `tree` in a microVM of `runtime`; the tree they
/// leave, and the build's log.
pub async fn build(
    node: &Arc<Node>,
    pipeline: &str,
    runtime: &str,
    commands: &[String],
    timeout_s: u32,
    tree: &Tree,
    log: &mut String,
) -> Result<Tree, PipelineError> {
    let (file, handler, script) = match runtime {
        "python3.11" => ("__flint_build__.py", "__flint_build__.handler", PYTHON),
        "nodejs18.x" => ("__flint_build__.js", "__flint_build__.handler", NODE),
        other => {
            return Err(PipelineError::Invalid(format!(
                "build commands run in a microVM of the application's runtime; {other} has no shell tools to run them (python3.11 and nodejs18.x do)"
            )))
        }
    };
    let mut code = Tree::new();
    code.insert(file.to_string(), (script.as_bytes().to_vec(), 0o644));
    for (p, v) in tree {
        code.insert(format!("tree/{p}"), v.clone());
    }
    let zip = super::git::zip_folder(&code, "")?;
    let name = function_name(pipeline);
    let timeout_s = timeout_s.clamp(1, 900);
    match node.get_function(&name, LATEST) {
        Ok(f) if f.runtime.name() == runtime => {
            node.update_function_code(&name, zip, false, None).await?;
            node.update_function_configuration(
                &name,
                crate::functions::ConfigUpdate {
                    timeout_s: Some(timeout_s),
                    ..Default::default()
                },
            )
            .await?;
        }
        other => {
            if other.is_ok() {
                node.delete_function(&name).await?;
            }
            node.create_function(
                FunctionSpec {
                    name: name.clone(),
                    runtime: runtime.to_string(),
                    handler: handler.to_string(),
                    memory_mb: 1024,
                    timeout_s,
                    environment: BTreeMap::new(),
                    description: format!("Runs the build commands of pipeline {pipeline}"),
                    layers: Vec::new(),
                    ephemeral_mb: 2048,
                    dead_letter_target: None,
                    network: Default::default(),
                },
                zip,
            )
            .await?;
        }
    }
    let payload = serde_json::to_vec(&serde_json::json!({
        "commands": commands,
        "timeout": timeout_s,
    }))
    .map_err(|e| PipelineError::Invalid(e.to_string()))?;
    let r = node
        .invoke(InvokeRequest {
            function_name: name.clone(),
            qualifier: String::new(),
            invocation_type: InvocationType::RequestResponse,
            log_tail: false,
            payload,
            client_context: String::new(),
            trace: None,
        })
        .await?;
    if let Some(e) = r.function_error {
        return Err(PipelineError::Stage(format!(
            "the build microVM failed ({}): {}",
            e.name(),
            String::from_utf8_lossy(&r.payload)
        )));
    }
    let a: Answer = serde_json::from_slice(&r.payload)
        .map_err(|e| PipelineError::Stage(format!("the build answered no build result: {e}")))?;
    log.push_str(&a.log);
    log.push('\n');
    if !a.ok {
        return Err(PipelineError::Stage(format!(
            "`{}` exited with {}",
            a.failed,
            a.exit
                .map(|x| x.to_string())
                .unwrap_or_else(|| "a signal".into())
        )));
    }
    // What the guest answers is checked like any package from outside.
    let mut out = Tree::new();
    for f in a.files {
        check_path(&f.path)?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(f.data.as_bytes())
            .map_err(|e| PipelineError::Stage(format!("{}: {e}", f.path)))?;
        let mode = if f.mode & 0o111 != 0 { 0o755 } else { 0o644 };
        out.insert(f.path, (data, mode));
    }
    Ok(out)
}
