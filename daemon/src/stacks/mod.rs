//! Applications: SAM templates deployed as stacks (CloudFormation's
//! model). A deploy plans a change set against the stack's stored
//! resources, applies it in dependency order, removes what the template
//! dropped only once everything else succeeded, and on any failure puts
//! back every resource it had touched.

pub mod apply;
pub mod defs;
pub mod store;
pub mod template;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apply::Applier;
use defs::Def;
use store::{ResourceRecord, StackEvent, StackRecord, StackStore};
use template::{Kind, Physical, PseudoParams, Scope, Template};

use crate::node::{Node, NodeError};

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("Template error at {at}: {rule}")]
    Template { at: String, rule: String },
    #[error("Flint does not support {property} (resource {resource})")]
    Unsupported { resource: String, property: String },
    #[error("Stack with name {0} does not exist")]
    NotFound(String),
    #[error("Stack {name} is in {status} state and can not be updated now")]
    Busy { name: String, status: String },
    #[error("{0} already exists")]
    Exists(String),
    #[error("invalid stack name {0:?}: letters, digits and hyphens, starting with a letter, at most 128")]
    Name(String),
    #[error("{at}: no package was sent for {uri:?}")]
    MissingCode { at: String, uri: String },
    #[error("the deployment failed: {0}")]
    DeploymentFailed(String),
    #[error("installing the dependencies of {resource} failed: {message}")]
    Build { resource: String, message: String },
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("stack database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("stack database record is corrupt: {0}")]
    Corrupt(String),
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Add,
    Modify,
    Remove,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Add => "Add",
            Action::Modify => "Modify",
            Action::Remove => "Remove",
        }
    }
}

/// One line of a change set.
#[derive(Debug, Clone)]
pub struct Change {
    pub action: Action,
    pub logical_id: String,
    pub physical_id: String,
    pub resource_type: &'static str,
    /// A modification that makes a new physical resource (a new name, a
    /// new layer version) and removes the old one after the update.
    pub replacement: bool,
    /// Why: the properties that changed, or the resource it depends on.
    pub details: String,
}

pub struct DeployInput {
    pub stack_name: String,
    pub template: String,
    pub parameters: BTreeMap<String, String>,
    /// Packages by the `CodeUri` / `ContentUri` text that names them.
    pub artifacts: BTreeMap<String, Vec<u8>>,
    pub execute: bool,
    /// How long a minute of a `DeploymentPreference` lasts (tests shorten
    /// it); `None`: preferences are not followed and a new version takes
    /// its alias at once (a pipeline's staging stack, which has no traffic
    /// to protect).
    pub minute: Option<Duration>,
}

pub struct DeployPlan {
    pub stack_id: String,
    pub changes: Vec<Change>,
    /// The change set is being applied (false: only shown, or empty).
    pub executing: bool,
}

pub struct Stacks {
    node: Arc<Node>,
    store: StackStore,
    busy: Mutex<HashSet<String>>,
}

fn now_ms() -> i64 {
    crate::time::now_ms()
}

fn valid_stack_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && n.len() <= 128
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// A planned resource: its definition with other resources' names still
/// symbolic, as JSON to compare with the stored one.
struct Planned {
    def: Def,
    text: String,
}

/// What one applied step did, for a rollback.
struct Done {
    id: String,
    action: Action,
    replacement: bool,
    record: ResourceRecord,
    old: Option<ResourceRecord>,
    old_code: Option<Vec<u8>>,
}

const TERMINAL_FAILED_CREATE: &str = "ROLLBACK_COMPLETE";

impl Stacks {
    pub fn open(node: Arc<Node>) -> Result<Arc<Self>, StackError> {
        let store = StackStore::open(&node.config().data_dir.join("stacks.db"))?;
        // An operation flintd did not finish is not running any more.
        for mut s in store.list_stacks()? {
            if s.status.ends_with("_IN_PROGRESS") {
                s.status = match s.status.as_str() {
                    "CREATE_IN_PROGRESS" | "ROLLBACK_IN_PROGRESS" => "ROLLBACK_FAILED",
                    "DELETE_IN_PROGRESS" => "DELETE_FAILED",
                    _ => "UPDATE_ROLLBACK_FAILED",
                }
                .into();
                s.reason =
                    "flintd stopped while the operation ran; deploy again or delete the stack"
                        .into();
                store.put_stack(&s)?;
            }
        }
        Ok(Arc::new(Self {
            node,
            store,
            busy: Mutex::new(HashSet::new()),
        }))
    }

    fn event(
        &self,
        s: &StackRecord,
        logical_id: &str,
        physical_id: &str,
        kind: &str,
        status: &str,
        reason: &str,
    ) {
        let e = StackEvent {
            event_id: uuid::Uuid::new_v4().to_string(),
            timestamp_ms: now_ms(),
            logical_id: logical_id.to_string(),
            physical_id: physical_id.to_string(),
            resource_type: kind.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
        };
        if let Err(err) = self.store.add_event(&s.name, &s.id, &e) {
            tracing::warn!(stack = %s.name, error = %err, "stack event not stored");
        }
    }

    fn set_status(
        &self,
        s: &mut StackRecord,
        status: &str,
        reason: &str,
    ) -> Result<(), StackError> {
        s.status = status.to_string();
        s.reason = reason.to_string();
        s.updated_ms = now_ms();
        self.store.put_stack(s)?;
        self.event(
            s,
            &s.name.clone(),
            &s.id.clone(),
            "AWS::CloudFormation::Stack",
            status,
            reason,
        );
        Ok(())
    }

    /// A live stack (not deleted).
    pub fn describe(&self, name: &str) -> Result<StackRecord, StackError> {
        match self.store.get_stack(name)? {
            Some(s) if s.status != "DELETE_COMPLETE" => Ok(s),
            _ => Err(StackError::NotFound(name.to_string())),
        }
    }

    pub fn list(&self) -> Result<Vec<StackRecord>, StackError> {
        self.store.list_stacks()
    }

    pub fn resources(&self, name: &str) -> Result<Vec<ResourceRecord>, StackError> {
        self.describe(name)?;
        self.store.resources(name)
    }

    pub fn events(&self, name: &str) -> Result<Vec<StackEvent>, StackError> {
        let s = self
            .store
            .get_stack(name)?
            .ok_or_else(|| StackError::NotFound(name.to_string()))?;
        self.store.events(&s.id)
    }

    fn claim(&self, name: &str, status: &str) -> Result<(), StackError> {
        let mut b = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !b.insert(name.to_string()) {
            return Err(StackError::Busy {
                name: name.to_string(),
                status: status.to_string(),
            });
        }
        Ok(())
    }

    fn release(&self, name: &str) {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    fn pseudo(&self, s: &StackRecord) -> PseudoParams {
        let (region, account) = self.node.region_account();
        PseudoParams {
            stack_name: s.name.clone(),
            stack_id: s.id.clone(),
            region: region.to_string(),
            account: account.to_string(),
        }
    }

    /// Plans a deploy, and unless only asked for the change set, starts
    /// applying it; [`Stacks::describe`] and [`Stacks::events`] follow it.
    pub async fn deploy(self: &Arc<Self>, input: DeployInput) -> Result<DeployPlan, StackError> {
        if !valid_stack_name(&input.stack_name) {
            return Err(StackError::Name(input.stack_name));
        }
        let template = Template::parse(&input.template)?;
        let params = template.parameter_values(&input.parameters)?;
        let existing = self.store.get_stack(&input.stack_name)?;
        let live = existing
            .as_ref()
            .filter(|s| s.status != "DELETE_COMPLETE" && s.status != TERMINAL_FAILED_CREATE);
        if let Some(s) = live {
            if s.status.ends_with("_IN_PROGRESS") {
                return Err(StackError::Busy {
                    name: s.name.clone(),
                    status: s.status.clone(),
                });
            }
        }
        let (region, account) = self.node.region_account();
        let record = match live {
            Some(s) => s.clone(),
            None => StackRecord {
                name: input.stack_name.clone(),
                id: format!(
                    "arn:aws:cloudformation:{region}:{account}:stack/{}/{}",
                    input.stack_name,
                    uuid::Uuid::new_v4()
                ),
                status: "REVIEW_IN_PROGRESS".into(),
                reason: String::new(),
                description: String::new(),
                template: String::new(),
                parameters: BTreeMap::new(),
                outputs: Vec::new(),
                created_ms: now_ms(),
                updated_ms: now_ms(),
            },
        };
        let previous: BTreeMap<String, ResourceRecord> = match live {
            Some(_) => self
                .store
                .resources(&record.name)?
                .into_iter()
                .map(|r| (r.logical_id.clone(), r))
                .collect(),
            None => BTreeMap::new(),
        };
        let pseudo = self.pseudo(&record);
        let order = template.order()?;
        let input = DeployInput {
            artifacts: self
                .install_dependencies(&input.stack_name, &template, input.artifacts)
                .await?,
            ..input
        };
        let digests: BTreeMap<&String, String> = input
            .artifacts
            .iter()
            .map(|(k, v)| (k, apply::sha256_hex(v)))
            .collect();
        let code = |uri: &str, at: &str| {
            digests
                .get(&uri.to_string())
                .cloned()
                .ok_or_else(|| StackError::MissingCode {
                    at: at.to_string(),
                    uri: uri.to_string(),
                })
        };
        let scope = Scope::symbolic(&template, &params, &pseudo);
        let mut planned = BTreeMap::new();
        for id in &order {
            let r = &template.resources[id];
            let props = scope.resolve(
                &serde_json::Value::Object(r.properties.clone()),
                &format!("Resources.{id}.Properties"),
            )?;
            let def = defs::read(&record.name, id, r.kind, props, &r.metadata, &code)?;
            let text =
                serde_json::to_string(&def).map_err(|e| StackError::Internal(e.to_string()))?;
            planned.insert(id.clone(), Planned { def, text });
        }
        let changes = plan(&template, &order, &planned, &previous);
        let unchanged_stack =
            live.is_some_and(|s| s.parameters == params && s.template == input.template);
        if !input.execute || (changes.is_empty() && unchanged_stack) {
            return Ok(DeployPlan {
                stack_id: record.id,
                changes,
                executing: false,
            });
        }
        self.claim(&record.name, &record.status)?;
        let this = self.clone();
        let mut record = record;
        let creating = live.is_none();
        let status = if creating {
            "CREATE_IN_PROGRESS"
        } else {
            "UPDATE_IN_PROGRESS"
        };
        if let Err(e) = self.set_status(&mut record, status, "User Initiated") {
            self.release(&record.name);
            return Err(e);
        }
        let plan_out = DeployPlan {
            stack_id: record.id.clone(),
            changes: changes.clone(),
            executing: true,
        };
        let run = Run {
            template,
            params,
            order,
            planned,
            previous,
            changes,
            artifacts: input.artifacts,
            minute: input.minute,
            template_text: input.template,
        };
        tokio::spawn(async move {
            let name = record.name.clone();
            this.execute(record, run, creating).await;
            this.release(&name);
        });
        Ok(plan_out)
    }

    /// What `sam build` does for python3.11: a function folder with a
    /// `requirements.txt` gets its dependencies installed beside its code,
    /// by pip inside a microVM of the runtime (never on the host). Built
    /// packages are kept by the digest of what was sent, so a redeploy of
    /// the same folder builds nothing.
    async fn install_dependencies(
        &self,
        stack: &str,
        template: &Template,
        mut artifacts: BTreeMap<String, Vec<u8>>,
    ) -> Result<BTreeMap<String, Vec<u8>>, StackError> {
        use crate::pipelines::{builder, git};
        let mut done = BTreeSet::new();
        for (id, r) in &template.resources {
            let prop = |k: &str| r.properties.get(k).and_then(template::scalar);
            let (Some(runtime), Some(uri)) = (prop("Runtime"), prop("CodeUri")) else {
                continue;
            };
            if r.kind != Kind::Function || runtime != "python3.11" || !done.insert(uri.clone()) {
                continue;
            }
            let Some(zip) = artifacts.get(&uri) else {
                continue;
            };
            let fail = |message: String| StackError::Build {
                resource: id.clone(),
                message,
            };
            let tree = git::read_zip(zip).map_err(|e| fail(e.to_string()))?;
            if !tree.contains_key("requirements.txt") {
                continue;
            }
            let dir = self.node.config().data_dir.join("stack-builds");
            let cached = dir.join(format!("{}.zip", apply::sha256_hex(zip)));
            let built = match std::fs::read(&cached) {
                Ok(b) => b,
                Err(_) => {
                    let mut log = String::new();
                    let out = builder::build(
                        &self.node,
                        &format!("stack-{stack}"),
                        &runtime,
                        &["python3 -m pip install --no-input --disable-pip-version-check --no-compile -r requirements.txt -t .".to_string()],
                        600,
                        &tree,
                        &mut log,
                    )
                    .await
                    .map_err(|e| {
                        let tail: String = log.chars().rev().take(2000).collect::<Vec<_>>().into_iter().rev().collect();
                        fail(format!("{e}\n{tail}"))
                    })?;
                    let built = git::zip_folder(&out, "").map_err(|e| fail(e.to_string()))?;
                    let tmp = cached.with_extension("tmp");
                    let stored = std::fs::create_dir_all(&dir)
                        .and_then(|_| std::fs::write(&tmp, &built))
                        .and_then(|_| std::fs::rename(&tmp, &cached));
                    if let Err(e) = stored {
                        tracing::warn!(stack, error = %e, "keeping a built package failed");
                    }
                    prune_builds(&dir, KEPT_BUILDS);
                    built
                }
            };
            artifacts.insert(uri, built);
        }
        Ok(artifacts)
    }

    async fn execute(self: &Arc<Self>, mut record: StackRecord, run: Run, creating: bool) {
        let applier = Applier {
            node: self.node.clone(),
            minute: run.minute,
        };
        let pseudo = self.pseudo(&record);
        let changes: BTreeMap<&String, &Change> =
            run.changes.iter().map(|c| (&c.logical_id, c)).collect();
        let mut applied: BTreeMap<String, Physical> = BTreeMap::new();
        let mut records: Vec<ResourceRecord> = Vec::new();
        let mut done: Vec<Done> = Vec::new();
        let mut failure: Option<String> = None;
        for id in &run.order {
            let kind = run.template.resources[id].kind;
            let prev = run.previous.get(id);
            let Some(change) = changes.get(id) else {
                let p = prev
                    .expect("an unchanged resource was applied before")
                    .clone();
                applied.insert(id.clone(), p.physical.clone());
                records.push(p);
                continue;
            };
            let scope = Scope::applied(&run.template, &run.params, &pseudo, &applied);
            let r = &run.template.resources[id];
            let at = format!("Resources.{id}.Properties");
            let def = scope
                .resolve(&serde_json::Value::Object(r.properties.clone()), &at)
                .and_then(|props| {
                    defs::read(
                        &record.name,
                        id,
                        kind,
                        props,
                        &r.metadata,
                        &|uri: &str, _at: &str| Ok(apply::sha256_hex(&run.artifacts[uri])),
                    )
                });
            let def = match def {
                Ok(d) => d,
                Err(e) => {
                    failure = Some(format!("{id}: {e}"));
                    self.event(
                        &record,
                        id,
                        "",
                        kind.type_name(),
                        failed(change.action),
                        &e.to_string(),
                    );
                    break;
                }
            };
            let code = code_of(&def).map(|uri| run.artifacts[uri].clone());
            let physical_name = def.physical_name().to_string();
            self.event(
                &record,
                id,
                &physical_name,
                kind.type_name(),
                in_progress(change.action),
                &change.details,
            );
            let progress_record = record.clone();
            let progress_id = id.clone();
            let this = self.clone();
            let progress = move |msg: String| {
                this.event(
                    &progress_record,
                    &progress_id,
                    "",
                    kind.type_name(),
                    "UPDATE_IN_PROGRESS",
                    &msg,
                );
            };
            let mut old_code = None;
            let result = match (change.action, prev) {
                (Action::Modify, Some(p)) if !change.replacement => {
                    if let Def::Function(f) = &p.def {
                        old_code = self
                            .node
                            .get_function(&f.name, crate::functions::LATEST)
                            .and_then(|cur| self.node.function_code(&cur))
                            .ok();
                    }
                    applier
                        .update(&def, code, &p.def, &p.state, None, &progress)
                        .await
                }
                _ => applier.create(&def, code, &progress).await,
            };
            match result {
                Ok(state) => {
                    let physical = applier.physical(&def, &state);
                    let rec = ResourceRecord {
                        logical_id: id.clone(),
                        kind,
                        physical_id: physical_name.clone(),
                        planned: run.planned[id].text.clone(),
                        def,
                        state,
                        physical: physical.clone(),
                        depends_on: run.template.dependencies(id).into_iter().collect(),
                    };
                    self.event(
                        &record,
                        id,
                        &physical_name,
                        kind.type_name(),
                        complete(change.action),
                        "",
                    );
                    applied.insert(id.clone(), physical);
                    records.push(rec.clone());
                    done.push(Done {
                        id: id.clone(),
                        action: change.action,
                        replacement: change.replacement,
                        record: rec,
                        old: prev.cloned(),
                        old_code,
                    });
                }
                Err(e) => {
                    let why = e.to_string();
                    self.event(
                        &record,
                        id,
                        &physical_name,
                        kind.type_name(),
                        failed(change.action),
                        &why,
                    );
                    // A failed update may have changed part of the resource:
                    // it is put back with the rest.
                    if let (Action::Modify, Some(p)) = (change.action, prev) {
                        if !change.replacement {
                            done.push(Done {
                                id: id.clone(),
                                action: Action::Modify,
                                replacement: false,
                                record: p.clone(),
                                old: Some(p.clone()),
                                old_code,
                            });
                        }
                    }
                    failure = Some(format!("{id}: {why}"));
                    break;
                }
            }
        }
        let outputs = if failure.is_none() {
            let scope = Scope::applied(&run.template, &run.params, &pseudo, &applied);
            let mut out = Vec::new();
            for (name, o) in &run.template.outputs {
                match scope.resolve(&o.value, &format!("Outputs.{name}")) {
                    Ok(v) => out.push((
                        name.clone(),
                        template::scalar(&v).unwrap_or_else(|| v.to_string()),
                        o.description.clone(),
                    )),
                    Err(e) => {
                        failure = Some(format!("Outputs.{name}: {e}"));
                        break;
                    }
                }
            }
            out
        } else {
            Vec::new()
        };
        if let Some(why) = failure {
            self.roll_back(&mut record, &applier, done, creating, &run.previous, &why)
                .await;
            return;
        }
        // Cleanup: what the template dropped, and what a replacement left.
        let mut cleanup: Vec<ResourceRecord> = Vec::new();
        for c in &run.changes {
            if let Some(p) = run.previous.get(&c.logical_id) {
                if c.action == Action::Remove || c.replacement {
                    cleanup.push(p.clone());
                }
            }
        }
        if !cleanup.is_empty() && !creating {
            let _ = self.set_status(&mut record, "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", "");
        }
        for p in deletion_order(cleanup) {
            self.remove(&record, &applier, &p).await;
        }
        record.template = run.template_text;
        record.parameters = run.params;
        record.outputs = outputs;
        record.description = run.template.description.clone();
        if let Err(e) = self.store.set_resources(&record.name, &records) {
            let _ = self.set_status(&mut record, "UPDATE_ROLLBACK_FAILED", &e.to_string());
            return;
        }
        let status = if creating {
            "CREATE_COMPLETE"
        } else {
            "UPDATE_COMPLETE"
        };
        if let Err(e) = self.set_status(&mut record, status, "") {
            tracing::warn!(stack = %record.name, error = %e, "stack status not stored");
        }
    }

    async fn remove(&self, record: &StackRecord, applier: &Applier, p: &ResourceRecord) {
        let t = p.kind.type_name();
        self.event(
            record,
            &p.logical_id,
            &p.physical_id,
            t,
            "DELETE_IN_PROGRESS",
            "",
        );
        match applier.delete(&p.def, &p.state).await {
            Ok(true) => self.event(
                record,
                &p.logical_id,
                &p.physical_id,
                t,
                "DELETE_COMPLETE",
                "",
            ),
            Ok(false) => self.event(
                record,
                &p.logical_id,
                &p.physical_id,
                t,
                "DELETE_SKIPPED",
                "RetentionPolicy: Retain",
            ),
            Err(e) => self.event(
                record,
                &p.logical_id,
                &p.physical_id,
                t,
                "DELETE_FAILED",
                &e.to_string(),
            ),
        }
    }

    async fn roll_back(
        &self,
        record: &mut StackRecord,
        applier: &Applier,
        done: Vec<Done>,
        creating: bool,
        previous: &BTreeMap<String, ResourceRecord>,
        why: &str,
    ) {
        let (going, gone, broken) = if creating {
            (
                "ROLLBACK_IN_PROGRESS",
                "ROLLBACK_COMPLETE",
                "ROLLBACK_FAILED",
            )
        } else {
            (
                "UPDATE_ROLLBACK_IN_PROGRESS",
                "UPDATE_ROLLBACK_COMPLETE",
                "UPDATE_ROLLBACK_FAILED",
            )
        };
        let _ = self.set_status(record, going, why);
        let mut failed_any = None;
        let noop = |_: String| {};
        for d in done.into_iter().rev() {
            let t = d.record.kind.type_name();
            let undo = match (d.action, &d.old) {
                (Action::Modify, Some(old)) if !d.replacement => {
                    self.event(
                        record,
                        &d.id,
                        &old.physical_id,
                        t,
                        "UPDATE_IN_PROGRESS",
                        "rollback",
                    );
                    applier
                        .update(
                            &old.def,
                            d.old_code.clone(),
                            &d.record.def,
                            &d.record.state,
                            old.state.version.clone(),
                            &noop,
                        )
                        .await
                        .map(|_| ())
                }
                _ => {
                    self.event(
                        record,
                        &d.id,
                        &d.record.physical_id,
                        t,
                        "DELETE_IN_PROGRESS",
                        "rollback",
                    );
                    applier
                        .delete(&d.record.def, &d.record.state)
                        .await
                        .map(|_| ())
                }
            };
            match undo {
                Ok(()) => {
                    let status = match (d.action, d.replacement) {
                        (Action::Modify, false) => "UPDATE_COMPLETE",
                        _ => "DELETE_COMPLETE",
                    };
                    self.event(record, &d.id, &d.record.physical_id, t, status, "rollback");
                }
                Err(e) => {
                    self.event(
                        record,
                        &d.id,
                        &d.record.physical_id,
                        t,
                        "UPDATE_FAILED",
                        &e.to_string(),
                    );
                    failed_any = Some(e.to_string());
                }
            }
        }
        // The stored resources stay those of before the update.
        let _ = self.store.set_resources(
            &record.name,
            &previous.values().cloned().collect::<Vec<_>>(),
        );
        match failed_any {
            None => {
                let _ = self.set_status(record, gone, why);
            }
            Some(e) => {
                let _ = self.set_status(record, broken, &format!("{why}; rollback: {e}"));
            }
        }
    }

    /// Deletes a stack's resources, dependents first, then the stack.
    pub async fn delete(self: &Arc<Self>, name: &str) -> Result<(), StackError> {
        let mut record = match self.store.get_stack(name)? {
            Some(s) if s.status != "DELETE_COMPLETE" => s,
            // Deleting what is not there succeeds, as in CloudFormation.
            _ => return Ok(()),
        };
        if record.status.ends_with("_IN_PROGRESS") {
            return Err(StackError::Busy {
                name: name.to_string(),
                status: record.status,
            });
        }
        self.claim(name, &record.status)?;
        let resources = self.store.resources(name)?;
        let this = self.clone();
        let _ = self.set_status(&mut record, "DELETE_IN_PROGRESS", "User Initiated");
        tokio::spawn(async move {
            let applier = Applier {
                node: this.node.clone(),
                minute: None,
            };
            for p in deletion_order(resources) {
                this.remove(&record, &applier, &p).await;
            }
            let _ = this.store.set_resources(&record.name, &[]);
            // The function that installed the stack's dependencies, if any.
            let builder =
                crate::pipelines::builder::function_name(&format!("stack-{}", record.name));
            let _ = this.node.delete_function(&builder).await;
            let _ = this.set_status(&mut record, "DELETE_COMPLETE", "");
            this.release(&record.name);
        });
        Ok(())
    }
}

struct Run {
    template: Template,
    params: BTreeMap<String, String>,
    order: Vec<String>,
    planned: BTreeMap<String, Planned>,
    previous: BTreeMap<String, ResourceRecord>,
    changes: Vec<Change>,
    artifacts: BTreeMap<String, Vec<u8>>,
    minute: Option<Duration>,
    template_text: String,
}

/// How many built packages `stack-builds/` keeps (the newest).
const KEPT_BUILDS: usize = 64;

/// Deletes all but the `keep` newest files of `dir`.
fn prune_builds(dir: &std::path::Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, std::path::PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            if !m.is_file() {
                return None;
            }
            Some((m.modified().ok()?, e.path()))
        })
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, path) in files.into_iter().skip(keep) {
        let _ = std::fs::remove_file(path);
    }
}

fn code_of(def: &Def) -> Option<&str> {
    match def {
        Def::Function(f) => Some(&f.code_uri),
        Def::Layer(l) => Some(&l.content_uri),
        _ => None,
    }
}

// A first deploy has no previous resources, so only Adds: its events are
// CREATE_* without asking.
fn in_progress(a: Action) -> &'static str {
    match a {
        Action::Add => "CREATE_IN_PROGRESS",
        Action::Modify => "UPDATE_IN_PROGRESS",
        Action::Remove => "DELETE_IN_PROGRESS",
    }
}

fn complete(a: Action) -> &'static str {
    match a {
        Action::Add => "CREATE_COMPLETE",
        Action::Modify => "UPDATE_COMPLETE",
        Action::Remove => "DELETE_COMPLETE",
    }
}

fn failed(a: Action) -> &'static str {
    match a {
        Action::Add => "CREATE_FAILED",
        Action::Modify => "UPDATE_FAILED",
        Action::Remove => "DELETE_FAILED",
    }
}

/// Records in an order that deletes a resource before those it uses.
fn deletion_order(mut rs: Vec<ResourceRecord>) -> Vec<ResourceRecord> {
    let mut out = Vec::new();
    while !rs.is_empty() {
        // One that no remaining resource depends on.
        let pos = rs
            .iter()
            .position(|r| {
                !rs.iter()
                    .any(|o| o.logical_id != r.logical_id && o.depends_on.contains(&r.logical_id))
            })
            .unwrap_or(0);
        out.push(rs.remove(pos));
    }
    out
}

/// The change set: added, modified (and why) and removed resources.
fn plan(
    template: &Template,
    order: &[String],
    planned: &BTreeMap<String, Planned>,
    previous: &BTreeMap<String, ResourceRecord>,
) -> Vec<Change> {
    let mut changes: Vec<Change> = Vec::new();
    let mut replaced: BTreeSet<String> = BTreeSet::new();
    for id in order {
        let p = &planned[id];
        let kind = p.def.kind();
        let t = kind.type_name();
        match previous.get(id) {
            None => changes.push(Change {
                action: Action::Add,
                logical_id: id.clone(),
                physical_id: String::new(),
                resource_type: t,
                replacement: false,
                details: String::new(),
            }),
            Some(old) => {
                let own = old.planned != p.text || old.kind != kind;
                let deps: Vec<String> = template
                    .dependencies(id)
                    .into_iter()
                    .filter(|d| replaced.contains(d))
                    .collect();
                if !own && deps.is_empty() {
                    continue;
                }
                let replacement = old.kind != kind
                    || old.def.physical_name() != p.def.physical_name()
                    || (kind == Kind::Layer && own);
                if replacement {
                    replaced.insert(id.clone());
                }
                let details = if own {
                    changed_fields(&old.planned, &p.text).join(", ")
                } else {
                    format!("uses {}, which is replaced", deps.join(", "))
                };
                changes.push(Change {
                    action: Action::Modify,
                    logical_id: id.clone(),
                    physical_id: old.physical_id.clone(),
                    resource_type: t,
                    replacement,
                    details,
                });
            }
        }
    }
    for (id, old) in previous {
        if !planned.contains_key(id) {
            changes.push(Change {
                action: Action::Remove,
                logical_id: id.clone(),
                physical_id: old.physical_id.clone(),
                resource_type: old.kind.type_name(),
                replacement: false,
                details: String::new(),
            });
        }
    }
    changes
}

/// The top-level fields of two definitions that differ.
fn changed_fields(old: &str, new: &str) -> Vec<String> {
    let inner = |s: &str| -> serde_json::Map<String, serde_json::Value> {
        match serde_json::from_str::<serde_json::Value>(s) {
            Ok(serde_json::Value::Object(m)) => match m.into_iter().next() {
                Some((_, serde_json::Value::Object(inner))) => inner,
                _ => serde_json::Map::new(),
            },
            _ => serde_json::Map::new(),
        }
    };
    let (a, b) = (inner(old), inner(new));
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| k.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_builds_are_kept() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..5 {
            let p = d.path().join(format!("{i}.zip"));
            std::fs::write(&p, b"x").unwrap();
            let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1000 + i);
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        prune_builds(d.path(), 2);
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        left.sort();
        assert_eq!(left, vec!["3.zip", "4.zip"]);
    }

    #[test]
    fn stack_names() {
        assert!(valid_stack_name("app-1"));
        assert!(!valid_stack_name("1app"));
        assert!(!valid_stack_name("a_b"));
        assert!(!valid_stack_name(""));
    }

    #[test]
    fn changed_fields_name_what_differs() {
        let a = r#"{"Function":{"memory_mb":128,"handler":"a"}}"#;
        let b = r#"{"Function":{"memory_mb":256,"handler":"a"}}"#;
        assert_eq!(changed_fields(a, b), vec!["memory_mb".to_string()]);
    }
}
