//! Pipelines: every push to a watched branch of an application's Git
//! repository is built, tested on a staging stack and deployed to the
//! application's stack.
//!
//! flintd watches the repository (it reads the branch's commit every
//! poll interval) rather than installing a hook: a hook runs as whoever
//! pushes and needs flintd's socket, can be removed or bypassed, and a
//! push made while flintd was down would be lost; the branch's commit,
//! compared with the last one a run took, is never missed.

pub mod builder;
pub mod git;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::invoke::{InvocationType, InvokeRequest};
use crate::node::{Node, NodeError};
use crate::stacks::{DeployInput, StackError, Stacks};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("invalid pipeline: {0}")]
    Invalid(String),
    #[error("Pipeline {0} does not exist")]
    NotFound(String),
    #[error("Pipeline {0} already exists")]
    Exists(String),
    #[error("repository {path}: {message}")]
    Repository { path: String, message: String },
    #[error("git: {0}")]
    Git(String),
    #[error("{0}")]
    Stage(String),
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("pipeline database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("pipeline database record is corrupt: {0}")]
    Corrupt(String),
}

/// A stage's log is cut to its last this many bytes.
const MAX_LOG: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pipeline {
    pub name: String,
    pub repository: PathBuf,
    pub branch: String,
    pub stack_name: String,
    pub created_ms: i64,
    /// The commit the last run took.
    pub last_commit: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    /// Pending, InProgress, Succeeded, Failed or Skipped.
    pub status: String,
    pub log: String,
    pub started_ms: i64,
    pub ended_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub pipeline: String,
    pub commit: String,
    pub message: String,
    /// InProgress, Succeeded or Failed.
    pub status: String,
    pub reason: String,
    pub started_ms: i64,
    pub ended_ms: i64,
    pub stages: Vec<Stage>,
}

/// `pipeline.yaml` at the root of the repository.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    #[serde(default = "default_template")]
    pub template: String,
    #[serde(default)]
    pub build: BuildSpec,
    #[serde(default)]
    pub test: Vec<TestCase>,
    #[serde(default)]
    pub staging: Environment,
    #[serde(default)]
    pub production: Environment,
    /// Seconds one minute of a `DeploymentPreference` lasts (tests).
    #[serde(default)]
    pub deployment_minute_seconds: Option<u32>,
}

fn default_template() -> String {
    "template.yaml".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    #[serde(default)]
    pub commands: Vec<String>,
    /// Default: the runtime of the template's functions.
    pub runtime: Option<String>,
    pub timeout: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// The function's logical ID in the template.
    pub function: String,
    /// A JSON file of the tree.
    pub event: String,
    /// Contained in the answer: every key of an object, anything else equal.
    #[serde(default)]
    pub expect: serde_json::Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

fn corrupt(e: serde_json::Error) -> PipelineError {
    PipelineError::Corrupt(e.to_string())
}

struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    fn open(path: &Path) -> Result<Self, PipelineError> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS pipelines (name TEXT PRIMARY KEY, body TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS runs (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 id TEXT NOT NULL UNIQUE,
                 pipeline TEXT NOT NULL,
                 body TEXT NOT NULL
             );",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put(&self, p: &Pipeline) -> Result<(), PipelineError> {
        let body = serde_json::to_string(p).map_err(corrupt)?;
        self.conn().execute(
            "INSERT INTO pipelines (name, body) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET body = excluded.body",
            params![p.name, body],
        )?;
        Ok(())
    }

    fn get(&self, name: &str) -> Result<Option<Pipeline>, PipelineError> {
        let b: Option<String> = self
            .conn()
            .query_row(
                "SELECT body FROM pipelines WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?;
        b.map(|b| serde_json::from_str(&b).map_err(corrupt))
            .transpose()
    }

    fn list(&self) -> Result<Vec<Pipeline>, PipelineError> {
        let c = self.conn();
        let mut st = c.prepare("SELECT body FROM pipelines ORDER BY name")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for b in rows {
            out.push(serde_json::from_str(&b?).map_err(corrupt)?);
        }
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<(), PipelineError> {
        let c = self.conn();
        c.execute("DELETE FROM runs WHERE pipeline = ?1", params![name])?;
        c.execute("DELETE FROM pipelines WHERE name = ?1", params![name])?;
        Ok(())
    }

    fn put_run(&self, r: &Run) -> Result<(), PipelineError> {
        let body = serde_json::to_string(r).map_err(corrupt)?;
        self.conn().execute(
            "INSERT INTO runs (id, pipeline, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET body = excluded.body",
            params![r.id, r.pipeline, body],
        )?;
        Ok(())
    }

    fn runs(&self, pipeline: &str) -> Result<Vec<Run>, PipelineError> {
        let c = self.conn();
        let mut st = c.prepare("SELECT body FROM runs WHERE pipeline = ?1 ORDER BY seq DESC")?;
        let rows = st.query_map(params![pipeline], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for b in rows {
            out.push(serde_json::from_str(&b?).map_err(corrupt)?);
        }
        Ok(out)
    }

    fn count_runs(&self, pipeline: &str) -> Result<i64, PipelineError> {
        Ok(self.conn().query_row(
            "SELECT COUNT(*) FROM runs WHERE pipeline = ?1",
            params![pipeline],
            |r| r.get(0),
        )?)
    }
}

pub struct Pipelines {
    node: Arc<Node>,
    stacks: Arc<Stacks>,
    store: Store,
    poll: Duration,
    /// Pipelines with a run in progress.
    running: Mutex<std::collections::HashSet<String>>,
    wake: tokio::sync::Notify,
}

fn now_ms() -> i64 {
    crate::time::now_ms()
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 100
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Pipelines {
    pub fn open(
        node: Arc<Node>,
        stacks: Arc<Stacks>,
        poll: Duration,
    ) -> Result<Arc<Self>, PipelineError> {
        let store = Store::open(&node.config().data_dir.join("pipelines.db"))?;
        // A run flintd did not finish is not running any more.
        for p in store.list()? {
            for mut r in store.runs(&p.name)? {
                if r.status == "InProgress" {
                    r.status = "Failed".into();
                    r.reason = "flintd stopped while the run was in progress".into();
                    r.ended_ms = now_ms();
                    store.put_run(&r)?;
                }
            }
        }
        Ok(Arc::new(Self {
            node,
            stacks,
            store,
            poll,
            running: Mutex::new(Default::default()),
            wake: tokio::sync::Notify::new(),
        }))
    }

    pub fn create(&self, p: Pipeline) -> Result<Pipeline, PipelineError> {
        if !valid_name(&p.name) {
            return Err(PipelineError::Invalid(format!(
                "name {:?}: letters, digits, - and _, at most 100",
                p.name
            )));
        }
        if !p.repository.is_absolute() {
            return Err(PipelineError::Invalid(
                "the repository is an absolute path on the node".into(),
            ));
        }
        if self.store.get(&p.name)?.is_some() {
            return Err(PipelineError::Exists(p.name));
        }
        // The repository must be one, and the branch well formed.
        git::head(&p.repository, &p.branch)?;
        let p = Pipeline {
            created_ms: now_ms(),
            last_commit: None,
            ..p
        };
        self.store.put(&p)?;
        self.wake.notify_one();
        Ok(p)
    }

    pub fn list(&self) -> Result<Vec<Pipeline>, PipelineError> {
        self.store.list()
    }

    pub fn runs(&self, name: &str) -> Result<Vec<Run>, PipelineError> {
        self.store
            .get(name)?
            .ok_or_else(|| PipelineError::NotFound(name.to_string()))?;
        self.store.runs(name)
    }

    /// Deletes the pipeline and its runs (not the stacks it deployed).
    pub async fn delete(&self, name: &str) -> Result<(), PipelineError> {
        self.store
            .get(name)?
            .ok_or_else(|| PipelineError::NotFound(name.to_string()))?;
        self.store.delete(name)?;
        let _ = self
            .node
            .delete_function(&builder::function_name(name))
            .await;
        Ok(())
    }

    /// Watches every pipeline's branch until flintd stops.
    pub async fn run(self: Arc<Self>) {
        loop {
            match self.store.list() {
                Ok(list) => {
                    for p in list {
                        self.check(p).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading the pipelines failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.poll) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    async fn check(self: &Arc<Self>, p: Pipeline) {
        if self
            .running
            .lock()
            .unwrap_or_else(|x| x.into_inner())
            .contains(&p.name)
        {
            return;
        }
        let (repo, branch) = (p.repository.clone(), p.branch.clone());
        let head = match tokio::task::spawn_blocking(move || git::head(&repo, &branch)).await {
            Ok(Ok(Some(h))) => h,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::debug!(pipeline = %p.name, error = %e, "reading the branch failed");
                return;
            }
            Err(_) => return,
        };
        if p.last_commit.as_deref() == Some(head.as_str()) {
            return;
        }
        self.running
            .lock()
            .unwrap_or_else(|x| x.into_inner())
            .insert(p.name.clone());
        let this = self.clone();
        tokio::spawn(async move {
            let name = p.name.clone();
            this.execute(p, head).await;
            this.running
                .lock()
                .unwrap_or_else(|x| x.into_inner())
                .remove(&name);
            this.wake.notify_one();
        });
    }

    async fn execute(self: &Arc<Self>, mut p: Pipeline, commit: String) {
        let n = self.store.count_runs(&p.name).unwrap_or(0) + 1;
        let repo = p.repository.clone();
        let c2 = commit.clone();
        let message = tokio::task::spawn_blocking(move || git::subject(&repo, &c2))
            .await
            .unwrap_or_default();
        let mut run = Run {
            id: format!("{}-{n}", p.name),
            pipeline: p.name.clone(),
            commit: commit.clone(),
            message,
            status: "InProgress".into(),
            reason: String::new(),
            started_ms: now_ms(),
            ended_ms: 0,
            stages: ["Build", "Test", "Deploy"]
                .iter()
                .map(|s| Stage {
                    name: s.to_string(),
                    status: "Pending".into(),
                    log: String::new(),
                    started_ms: 0,
                    ended_ms: 0,
                })
                .collect(),
        };
        // The commit is taken whatever the outcome: a failed push is
        // not retried until the next one.
        p.last_commit = Some(commit.clone());
        if let Err(e) = self.store.put(&p).and_then(|_| self.store.put_run(&run)) {
            tracing::warn!(pipeline = %p.name, error = %e, "storing the run failed");
            return;
        }
        tracing::info!(pipeline = %p.name, run = %run.id, commit = %commit, "pipeline run started");
        let outcome = self.stages(&p, &commit, &mut run).await;
        run.ended_ms = now_ms();
        match outcome {
            Ok(()) => run.status = "Succeeded".into(),
            Err(e) => {
                run.status = "Failed".into();
                run.reason = e.to_string();
            }
        }
        for s in run.stages.iter_mut() {
            if s.status == "Pending" {
                s.status = "Skipped".into();
            }
        }
        if let Err(e) = self.store.put_run(&run) {
            tracing::warn!(pipeline = %p.name, error = %e, "storing the run failed");
        }
        tracing::info!(pipeline = %p.name, run = %run.id, status = %run.status, reason = %run.reason, "pipeline run ended");
    }

    /// Runs stage `i`: marks it, runs `f` with its log, records the end.
    async fn stage<F, Fut, T>(&self, run: &mut Run, i: usize, f: F) -> Result<T, PipelineError>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = (Result<T, PipelineError>, String)>,
    {
        run.stages[i].status = "InProgress".into();
        run.stages[i].started_ms = now_ms();
        let _ = self.store.put_run(run);
        let (r, mut log) = f(String::new()).await;
        if let Err(e) = &r {
            log.push_str(&format!("\nFAILED: {e}\n"));
        }
        if log.len() > MAX_LOG {
            let mut cut = log.len() - MAX_LOG;
            while !log.is_char_boundary(cut) {
                cut += 1;
            }
            log = log[cut..].to_string();
        }
        let s = &mut run.stages[i];
        s.log = log;
        s.ended_ms = now_ms();
        s.status = if r.is_ok() { "Succeeded" } else { "Failed" }.into();
        let _ = self.store.put_run(run);
        r
    }

    async fn stages(&self, p: &Pipeline, commit: &str, run: &mut Run) -> Result<(), PipelineError> {
        let node = self.node.clone();
        let (repo, c) = (p.repository.clone(), commit.to_string());
        // Build: the pushed tree, the build commands in a microVM, the packages.
        let (def, template, artifacts) = self
            .stage(run, 0, |mut log| async move {
                let r = async {
                    let tree = tokio::task::spawn_blocking(move || git::tree(&repo, &c))
                        .await
                        .map_err(|e| PipelineError::Git(e.to_string()))??;
                    log.push_str(&format!("{} files at {}\n", tree.len(), &commit[..12]));
                    let def: Definition = match tree.get("pipeline.yaml") {
                        Some((b, _)) => serde_yaml_ng::from_slice(b)
                            .map_err(|e| PipelineError::Invalid(format!("pipeline.yaml: {e}")))?,
                        None => Definition {
                            template: default_template(),
                            ..Definition::default()
                        },
                    };
                    let text = tree.get(&def.template).ok_or_else(|| {
                        PipelineError::Invalid(format!("no {} in the tree", def.template))
                    })?;
                    let text = String::from_utf8(text.0.clone()).map_err(|_| {
                        PipelineError::Invalid(format!("{} is not UTF-8", def.template))
                    })?;
                    let template = crate::stacks::template::Template::parse(&text)?;
                    let tree = if def.build.commands.is_empty() {
                        log.push_str("no build commands\n");
                        tree
                    } else {
                        let runtime = match &def.build.runtime {
                            Some(r) => r.clone(),
                            None => app_runtime(&template)?,
                        };
                        log.push_str(&format!("building in a {runtime} microVM\n"));
                        builder::build(
                            &node,
                            &p.name,
                            &runtime,
                            &def.build.commands,
                            def.build.timeout.unwrap_or(600),
                            &tree,
                            &mut log,
                        )
                        .await?
                    };
                    let mut artifacts = BTreeMap::new();
                    let base = Path::new(&def.template)
                        .parent()
                        .map(|p| p.to_string_lossy().to_string())
                        .unwrap_or_default();
                    for uri in code_uris(&template) {
                        let path = if base.is_empty() {
                            uri.clone()
                        } else {
                            format!("{base}/{uri}")
                        };
                        let zip = if uri.ends_with(".zip") {
                            tree.get(path.trim_start_matches("./"))
                                .map(|(b, _)| b.clone())
                                .ok_or_else(|| {
                                    PipelineError::Invalid(format!("no {uri} in the tree"))
                                })?
                        } else {
                            git::zip_folder(&tree, &path)?
                        };
                        log.push_str(&format!("packaged {uri}: {} bytes\n", zip.len()));
                        artifacts.insert(uri, zip);
                    }
                    let events: BTreeMap<String, Vec<u8>> = def
                        .test
                        .iter()
                        .map(|t| {
                            tree.get(&t.event)
                                .map(|(b, _)| (t.event.clone(), b.clone()))
                                .ok_or_else(|| {
                                    PipelineError::Invalid(format!(
                                        "no test event {} in the tree",
                                        t.event
                                    ))
                                })
                        })
                        .collect::<Result<_, _>>()?;
                    Ok((def, text, (artifacts, events)))
                }
                .await;
                (r, log)
            })
            .await?;
        let (artifacts, events) = artifacts;
        let minute = Duration::from_secs(u64::from(
            def.deployment_minute_seconds.unwrap_or(60).max(1),
        ));
        let staging = format!("{}-staging", p.stack_name);
        // Test: the staging stack, then the sample events against it.
        let stacks = self.stacks.clone();
        let node = self.node.clone();
        let (t2, a2) = (template.clone(), artifacts.clone());
        let def_ref = &def;
        self.stage(run, 1, |mut log| async move {
            let r = async {
                deploy_and_wait(
                    &stacks,
                    &staging,
                    &t2,
                    &def_ref.staging.parameters,
                    a2,
                    // Staging has no traffic to protect: new versions
                    // take their aliases at once.
                    None,
                    &mut log,
                )
                .await?;
                let resources = stacks.resources(&staging)?;
                for t in &def_ref.test {
                    let r = resources
                        .iter()
                        .find(|r| r.logical_id == t.function)
                        .ok_or_else(|| {
                            PipelineError::Invalid(format!(
                                "test: the template has no function {}",
                                t.function
                            ))
                        })?;
                    let crate::stacks::defs::Def::Function(f) = &r.def else {
                        return Err(PipelineError::Invalid(format!(
                            "test: {} is not a function",
                            t.function
                        )));
                    };
                    let res = node
                        .invoke(InvokeRequest {
                            function_name: f.name.clone(),
                            qualifier: f.alias.clone().unwrap_or_default(),
                            invocation_type: InvocationType::RequestResponse,
                            log_tail: false,
                            payload: events[&t.event].clone(),
                            client_context: String::new(),
                            trace: None,
                        })
                        .await?;
                    let answer = String::from_utf8_lossy(&res.payload).to_string();
                    if let Some(e) = res.function_error {
                        return Err(PipelineError::Stage(format!(
                            "{} with {}: {} error: {answer}",
                            t.function,
                            t.event,
                            e.name()
                        )));
                    }
                    let got: serde_json::Value =
                        serde_json::from_slice(&res.payload).unwrap_or(serde_json::Value::Null);
                    if !contains(&got, &t.expect) {
                        return Err(PipelineError::Stage(format!(
                            "{} with {}: the answer {answer} does not contain {}",
                            t.function, t.event, t.expect
                        )));
                    }
                    log.push_str(&format!(
                        "ok: {} with {} (version {})\n",
                        t.function, t.event, res.executed_version
                    ));
                }
                Ok(())
            }
            .await;
            (r, log)
        })
        .await?;
        // Deploy: the application's stack, with its deployment preference.
        let stacks = self.stacks.clone();
        let stack = p.stack_name.clone();
        self.stage(run, 2, |mut log| async move {
            let r = deploy_and_wait(
                &stacks,
                &stack,
                &template,
                &def_ref.production.parameters,
                artifacts,
                Some(minute),
                &mut log,
            )
            .await;
            (r, log)
        })
        .await?;
        Ok(())
    }
}

/// The runtime the template's functions use (the first one's).
fn app_runtime(t: &crate::stacks::template::Template) -> Result<String, PipelineError> {
    t.resources
        .values()
        .filter(|r| r.kind == crate::stacks::template::Kind::Function)
        .find_map(|r| {
            r.properties
                .get("Runtime")
                .and_then(crate::stacks::template::scalar)
        })
        .ok_or_else(|| {
            PipelineError::Invalid("build: no function names a Runtime; set build.runtime".into())
        })
}

/// Every `CodeUri` / `ContentUri` of the template, as written.
fn code_uris(t: &crate::stacks::template::Template) -> Vec<String> {
    use crate::stacks::template::Kind;
    let mut out: Vec<String> = t
        .resources
        .values()
        .filter_map(|r| {
            let key = match r.kind {
                Kind::Function => "CodeUri",
                Kind::Layer => "ContentUri",
                _ => return None,
            };
            r.properties
                .get(key)
                .and_then(crate::stacks::template::scalar)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `want` is contained in `got`: every key of an object with a contained
/// value, anything else equal (`null` expects nothing).
pub fn contains(got: &serde_json::Value, want: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (got, want) {
        (_, Value::Null) => true,
        (Value::Object(g), Value::Object(w)) => w
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|gv| contains(gv, v))),
        (Value::Array(g), Value::Array(w)) => {
            g.len() == w.len() && g.iter().zip(w).all(|(a, b)| contains(a, b))
        }
        _ => got == want,
    }
}

/// Deploys `template` as `stack` and waits for the end; an empty change
/// set is a success.
async fn deploy_and_wait(
    stacks: &Arc<Stacks>,
    stack: &str,
    template: &str,
    parameters: &BTreeMap<String, String>,
    artifacts: BTreeMap<String, Vec<u8>>,
    minute: Option<Duration>,
    log: &mut String,
) -> Result<(), PipelineError> {
    let plan = stacks
        .deploy(DeployInput {
            stack_name: stack.to_string(),
            template: template.to_string(),
            parameters: parameters.clone(),
            artifacts,
            execute: true,
            minute,
        })
        .await?;
    for c in &plan.changes {
        log.push_str(&format!(
            "{stack}: {} {} ({}){}\n",
            c.action.name(),
            c.logical_id,
            c.resource_type,
            if c.details.is_empty() {
                String::new()
            } else {
                format!(": {}", c.details)
            }
        ));
    }
    if !plan.executing {
        log.push_str(&format!("{stack}: no changes\n"));
        return Ok(());
    }
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let s = stacks.describe(stack)?;
        if s.status.ends_with("_IN_PROGRESS") {
            continue;
        }
        log.push_str(&format!("{stack}: {} {}\n", s.status, s.reason));
        if s.status == "CREATE_COMPLETE" || s.status == "UPDATE_COMPLETE" {
            return Ok(());
        }
        return Err(PipelineError::Stage(format!(
            "stack {stack} ended in {}: {}",
            s.status, s.reason
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_file_is_read_strictly() {
        let d: Definition = serde_yaml_ng::from_str(
            "build: {commands: [make]}\ntest: [{function: A, event: e.json, expect: {statusCode: 200}}]\n",
        )
        .unwrap();
        assert_eq!(d.template, "template.yaml");
        assert_eq!(d.build.commands, vec!["make"]);
        assert!(serde_yaml_ng::from_str::<Definition>("stages: {}\n").is_err());
    }

    #[test]
    fn expectations_are_contained() {
        let got = serde_json::json!({"statusCode": 200, "body": "x", "list": [{"a": 1, "b": 2}]});
        assert!(contains(&got, &serde_json::json!({"statusCode": 200})));
        assert!(contains(&got, &serde_json::json!({"list": [{"a": 1}]})));
        assert!(!contains(&got, &serde_json::json!({"statusCode": 500})));
        assert!(contains(&got, &serde_json::Value::Null));
    }
}
