//! Making a resource's definition true on the node, and undoing it.
//!
//! Each operation goes through the same [`Node`] methods the gRPC API
//! calls, so a stack's function is in every way a function.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::defs::{Def, EventDef, FunctionDef, LayerDef, QueueDef, StreamDef};
use super::template::Physical;
use super::StackError;
use crate::broker::{QueueSettings, RedrivePolicy};
use crate::functions::event_config::EventConfigChange;
use crate::functions::{ConfigUpdate, FunctionSpec, FunctionsError, LATEST};
use crate::node::{AliasSpec, Node, NodeError};
use crate::sources::mapping::MappingChange;
use crate::sources::schedule::ScheduleInput;

/// What was made for a resource beyond its name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// A function's alias points at this version.
    pub version: Option<String>,
    /// A function's event source mappings, by event name.
    pub mappings: BTreeMap<String, String>,
    /// A function's schedules, by event name.
    pub schedules: BTreeMap<String, String>,
    /// A layer's version.
    pub layer_version: Option<u64>,
}

/// Reports progress of a long step (a traffic shift) as a stack event.
pub type Progress<'a> = &'a (dyn Fn(String) + Send + Sync);

pub struct Applier {
    pub node: Arc<Node>,
    /// How long one minute of a `DeploymentPreference` lasts; `None`:
    /// new versions take their alias at once.
    pub minute: Option<Duration>,
}

fn node(e: impl Into<NodeError>) -> StackError {
    StackError::Node(e.into())
}

fn is_not_found(e: &NodeError) -> bool {
    matches!(
        e,
        NodeError::Functions(FunctionsError::NotFound(_))
            | NodeError::Functions(FunctionsError::AliasNotFound(_))
            | NodeError::Functions(FunctionsError::ProvisionedNotFound(_))
            | NodeError::Functions(FunctionsError::EventConfigNotFound(_))
            | NodeError::Functions(FunctionsError::LayerNotFound(_))
    )
}

impl Applier {
    fn arns(&self) -> (String, String) {
        let (r, a) = self.node.region_account();
        (r.to_string(), a.to_string())
    }

    /// What `Ref` and `Fn::GetAtt` answer for an applied resource.
    pub fn physical(&self, def: &Def, state: &State) -> Physical {
        let (region, account) = self.arns();
        let mut attributes = BTreeMap::new();
        let reference = match def {
            Def::Function(f) => {
                let arn = format!("arn:aws:lambda:{region}:{account}:function:{}", f.name);
                if let Some(a) = &f.alias {
                    attributes.insert("Alias".into(), format!("{arn}:{a}"));
                }
                if let Some(v) = &state.version {
                    attributes.insert("Version".into(), format!("{arn}:{v}"));
                }
                attributes.insert("Arn".into(), arn);
                f.name.clone()
            }
            Def::Layer(l) => format!(
                "arn:aws:lambda:{region}:{account}:layer:{}:{}",
                l.name,
                state.layer_version.unwrap_or(0)
            ),
            Def::Queue(q) => {
                attributes.insert(
                    "Arn".into(),
                    format!("arn:aws:sqs:{region}:{account}:{}", q.name),
                );
                attributes.insert("QueueName".into(), q.name.clone());
                attributes.insert("QueueUrl".into(), q.name.clone());
                q.name.clone()
            }
            Def::Stream(s) => {
                attributes.insert(
                    "Arn".into(),
                    format!("arn:aws:kinesis:{region}:{account}:stream/{}", s.name),
                );
                s.name.clone()
            }
        };
        Physical {
            reference,
            attributes,
        }
    }

    /// Creates a resource that does not exist yet.
    pub async fn create(
        &self,
        def: &Def,
        code: Option<Vec<u8>>,
        progress: Progress<'_>,
    ) -> Result<State, StackError> {
        match def {
            Def::Function(f) => {
                if self.node.get_function(&f.name, LATEST).is_ok() {
                    return Err(StackError::Exists(format!("function {}", f.name)));
                }
                self.function(f, code.unwrap_or_default(), None, None, progress)
                    .await
            }
            Def::Layer(l) => self.layer(l, code.unwrap_or_default()).await,
            Def::Queue(q) => {
                let b = self.node.broker().map_err(node)?;
                if b.queue_info(&q.name).await.is_ok() {
                    return Err(StackError::Exists(format!("queue {}", q.name)));
                }
                self.queue(q).await
            }
            Def::Stream(s) => self.stream(s).await,
        }
    }

    /// Changes a resource in place from `old` to `new`. `restore` (a
    /// rollback) puts a function's alias back on that version without
    /// publishing or shifting.
    pub async fn update(
        &self,
        new: &Def,
        code: Option<Vec<u8>>,
        old: &Def,
        old_state: &State,
        restore: Option<String>,
        progress: Progress<'_>,
    ) -> Result<State, StackError> {
        match (new, old) {
            (Def::Function(f), Def::Function(o)) => {
                self.function(
                    f,
                    code.unwrap_or_default(),
                    Some((o, old_state)),
                    restore,
                    progress,
                )
                .await
            }
            (Def::Queue(q), Def::Queue(_)) => self.queue(q).await,
            (Def::Stream(s), Def::Stream(o)) => {
                if (s.shard_count, s.retention_hours) != (o.shard_count, o.retention_hours) {
                    return Err(StackError::Unsupported {
                        resource: s.name.clone(),
                        property: "ShardCount or RetentionPeriodHours of an existing stream (Flint cannot reshard; rename the stream to replace it)".into(),
                    });
                }
                Ok(old_state.clone())
            }
            (Def::Layer(l), _) => self.layer(l, code.unwrap_or_default()).await,
            _ => Err(StackError::Internal(
                "a resource changed its type in place".into(),
            )),
        }
    }

    /// Deletes what was made for a resource; what is already gone is fine.
    pub async fn delete(&self, def: &Def, state: &State) -> Result<bool, StackError> {
        match def {
            Def::Function(f) => {
                for uuid in state.mappings.values() {
                    match self.node.sources().delete(uuid) {
                        Ok(_) | Err(crate::sources::SourcesError::NotFound(_)) => {}
                        Err(e) => return Err(node(e)),
                    }
                }
                for s in state.schedules.values() {
                    let _ = self.node.sources().delete_schedule(s).await;
                }
                match self.node.delete_function(&f.name).await {
                    Ok(()) => Ok(true),
                    Err(e) if is_not_found(&e) => Ok(true),
                    Err(e) => Err(node(e)),
                }
            }
            Def::Layer(l) => {
                if l.retain {
                    return Ok(false);
                }
                match self
                    .node
                    .delete_layer_version(&l.name, state.layer_version.unwrap_or(0))
                {
                    Ok(()) => Ok(true),
                    Err(e) if is_not_found(&e) => Ok(true),
                    Err(e) => Err(node(e)),
                }
            }
            Def::Queue(q) => {
                let b = self.node.broker().map_err(node)?;
                b.delete_queue(&q.name).await.map_err(node)?;
                Ok(true)
            }
            Def::Stream(s) => {
                let b = self.node.broker().map_err(node)?;
                b.delete_stream(&s.name).await.map_err(node)?;
                Ok(true)
            }
        }
    }

    async fn layer(&self, l: &LayerDef, zip: Vec<u8>) -> Result<State, StackError> {
        let v = self
            .node
            .publish_layer_version(
                &l.name,
                zip,
                l.description.clone(),
                l.compatible_runtimes.clone(),
            )
            .await
            .map_err(node)?;
        Ok(State {
            layer_version: Some(v.version),
            ..State::default()
        })
    }

    async fn queue(&self, q: &QueueDef) -> Result<State, StackError> {
        let b = self.node.broker().map_err(node)?;
        let settings = QueueSettings {
            visibility_timeout_s: Some(q.visibility_timeout_s),
            delay_s: Some(q.delay_s),
            retention_s: Some(q.retention_s),
            fifo: Some(q.fifo),
            content_based_deduplication: q.fifo.then_some(q.content_based_deduplication),
            redrive_policy: Some(q.redrive.as_ref().map(|(arn, n)| RedrivePolicy {
                dead_letter_target_arn: arn.clone(),
                max_receive_count: *n,
            })),
        };
        b.create_queue(&q.name, &settings).await.map_err(node)?;
        Ok(State::default())
    }

    async fn stream(&self, s: &StreamDef) -> Result<State, StackError> {
        let b = self.node.broker().map_err(node)?;
        if b.describe_stream(&s.name).await.is_ok() {
            return Err(StackError::Exists(format!("stream {}", s.name)));
        }
        b.create_stream(&s.name, s.shard_count, Some(s.retention_hours))
            .await
            .map_err(node)?;
        Ok(State::default())
    }

    async fn function(
        &self,
        f: &FunctionDef,
        zip: Vec<u8>,
        old: Option<(&FunctionDef, &State)>,
        restore: Option<String>,
        progress: Progress<'_>,
    ) -> Result<State, StackError> {
        let n = &self.node;
        let current = match n.get_function(&f.name, LATEST) {
            Ok(c) => Some(c),
            Err(e) if is_not_found(&e) => None,
            Err(e) => return Err(node(e)),
        };
        match current {
            None => {
                let spec = FunctionSpec {
                    name: f.name.clone(),
                    runtime: f.runtime.clone(),
                    handler: f.handler.clone(),
                    memory_mb: f.memory_mb,
                    timeout_s: f.timeout_s,
                    environment: f.environment.clone(),
                    description: f.description.clone(),
                    layers: f.layers.clone(),
                    ephemeral_mb: f.ephemeral_mb,
                    dead_letter_target: Some(f.dead_letter_target.clone())
                        .filter(|d| !d.is_empty()),
                    network: Default::default(),
                };
                n.create_function(spec, zip).await.map_err(node)?;
            }
            Some(cur) => {
                let new_code = !zip.is_empty() && sha256_hex(&zip) != cur.code_sha256_hex;
                let same_entry = cur.runtime.name() == f.runtime && cur.handler == f.handler;
                if new_code && !same_entry {
                    let runtime = crate::packages::Runtime::parse(&f.runtime).ok_or_else(|| {
                        StackError::Template {
                            at: format!("function {}", f.name),
                            rule: format!("Runtime {:?} is not one Flint runs", f.runtime),
                        }
                    })?;
                    n.update_function_code_and_handler(&f.name, zip, runtime, f.handler.clone())
                        .await
                        .map_err(node)?;
                } else if new_code {
                    n.update_function_code(&f.name, zip, false, None)
                        .await
                        .map_err(node)?;
                }
                let u = ConfigUpdate {
                    handler: Some(f.handler.clone()),
                    runtime: Some(f.runtime.clone()),
                    memory_mb: Some(f.memory_mb),
                    timeout_s: Some(f.timeout_s),
                    environment: Some(f.environment.clone()),
                    layers: Some(f.layers.clone()),
                    ephemeral_mb: Some(f.ephemeral_mb),
                    description: Some(f.description.clone()),
                    dead_letter_target: Some(f.dead_letter_target.clone()),
                    network: None,
                    revision_id: None,
                };
                n.update_function_configuration(&f.name, u)
                    .await
                    .map_err(node)?;
            }
        }
        match f.reserved {
            Some(r) => {
                n.put_function_concurrency(&f.name, i64::from(r))
                    .map_err(node)?;
            }
            None if old.is_some_and(|(o, _)| o.reserved.is_some()) => {
                n.delete_function_concurrency(&f.name).map_err(node)?;
            }
            None => {}
        }
        let mut state = State::default();
        let old_alias = old.and_then(|(o, _)| o.alias.clone());
        if let (Some(a), Some(o)) = (&old_alias, old) {
            if o.0.alias != f.alias {
                if o.0.provisioned.is_some() {
                    let _ = n.delete_provisioned_concurrency(&f.name, a).await;
                }
                match n.delete_alias(&f.name, a) {
                    Ok(()) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(node(e)),
                }
            }
        }
        if let Some(alias) = &f.alias {
            let target = match &restore {
                Some(v) => v.clone(),
                None => n.publish_version(&f.name, "").map_err(node)?.version,
            };
            match n.get_alias(&f.name, alias) {
                Err(e) if is_not_found(&e) => {
                    n.create_alias(AliasSpec {
                        function: f.name.clone(),
                        name: alias.clone(),
                        version: Some(target.clone()),
                        description: None,
                        routing: None,
                    })
                    .map_err(node)?;
                }
                Err(e) => return Err(node(e)),
                Ok(cur) => {
                    let gradual = f
                        .deployment
                        .as_ref()
                        .filter(|d| !d.steps.is_empty())
                        .zip(self.minute);
                    if cur.version != target && restore.is_none() {
                        if let Some(plan) = gradual {
                            self.shift(&f.name, alias, &cur.version, &target, plan, progress)
                                .await?;
                        }
                    }
                    self.route(&f.name, alias, &target, Vec::new())?;
                }
            }
            state.version = Some(target);
        }
        let qualifier = f.alias.clone().unwrap_or_else(|| LATEST.to_string());
        match (f.provisioned, &f.alias) {
            (Some(p), Some(a)) => {
                n.put_provisioned_concurrency(&f.name, a, i64::from(p))
                    .map_err(node)?;
            }
            (None, Some(a))
                if old.is_some_and(|(o, _)| o.provisioned.is_some() && o.alias == f.alias) =>
            {
                match n.delete_provisioned_concurrency(&f.name, a).await {
                    Ok(()) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(node(e)),
                }
            }
            _ => {}
        }
        let has_config = f.max_event_age_s.is_some()
            || f.max_retries.is_some()
            || f.on_success.is_some()
            || f.on_failure.is_some();
        if has_config {
            let change = EventConfigChange {
                maximum_retry_attempts: f.max_retries,
                maximum_event_age_s: f.max_event_age_s,
                on_success: f.on_success.clone(),
                on_failure: f.on_failure.clone(),
            };
            n.put_event_config(&f.name, &qualifier, change, false)
                .map_err(node)?;
        } else if old.is_some() {
            match n.delete_event_config(&f.name, &qualifier) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(node(e)),
            }
        }
        self.events(f, &qualifier, old, &mut state).await?;
        Ok(state)
    }

    /// Makes the function's event sources those of `f`: unchanged ones
    /// are kept (a stream's checkpoints with them), changed ones updated
    /// in place where they can be, the rest replaced or removed.
    async fn events(
        &self,
        f: &FunctionDef,
        qualifier: &str,
        old: Option<(&FunctionDef, &State)>,
        state: &mut State,
    ) -> Result<(), StackError> {
        let sources = self.node.sources();
        let target = if qualifier == LATEST {
            f.name.clone()
        } else {
            format!("{}:{qualifier}", f.name)
        };
        let empty = State::default();
        let (old_events, old_state) = match old {
            Some((o, s)) => (Some(&o.events), s),
            None => (None, &empty),
        };
        let same_target = old.is_some_and(|(o, _)| o.alias == f.alias && o.name == f.name);
        for (name, ev) in &f.events {
            let before = old_events.and_then(|e| e.get(name));
            match ev {
                EventDef::Schedule {
                    expression,
                    timezone,
                    input,
                    enabled,
                    description,
                } => {
                    let schedule = schedule_name(&f.name, name);
                    let i = ScheduleInput {
                        name: schedule.clone(),
                        expression: expression.clone(),
                        timezone: timezone.clone(),
                        target_arn: target.clone(),
                        input: input.clone(),
                        state: if *enabled { "ENABLED" } else { "DISABLED" }.into(),
                        description: description.clone(),
                        flexible_time_window: String::new(),
                    };
                    if old_state.schedules.contains_key(name) {
                        if before != Some(ev) || !same_target {
                            sources.update_schedule(&i).map_err(node)?;
                        }
                    } else {
                        sources.create_schedule(&i).map_err(node)?;
                    }
                    state.schedules.insert(name.clone(), schedule);
                }
                EventDef::Queue { arn, .. } | EventDef::Stream { arn, .. } => {
                    let change = mapping_change(ev);
                    let old_uuid = old_state.mappings.get(name);
                    let old_arn = match before {
                        Some(EventDef::Queue { arn, .. }) | Some(EventDef::Stream { arn, .. }) => {
                            Some(arn)
                        }
                        _ => None,
                    };
                    let uuid = match old_uuid {
                        Some(u) if old_arn == Some(arn) => {
                            if before != Some(ev) || !same_target {
                                let fname = (!same_target).then_some(target.as_str());
                                sources.update(u, fname, &change).await.map_err(node)?;
                            }
                            u.clone()
                        }
                        _ => {
                            if let Some(u) = old_uuid {
                                let _ = sources.delete(u);
                            }
                            sources
                                .create(arn, &target, &change)
                                .await
                                .map_err(node)?
                                .uuid
                        }
                    };
                    state.mappings.insert(name.clone(), uuid);
                }
            }
        }
        // Events no longer in the template go, and so do those that moved
        // from a schedule to a mapping or back.
        for (name, uuid) in &old_state.mappings {
            if !state.mappings.contains_key(name) {
                let _ = sources.delete(uuid);
            }
        }
        for (name, s) in &old_state.schedules {
            if !state.schedules.contains_key(name) {
                let _ = sources.delete_schedule(s).await;
            }
        }
        Ok(())
    }

    /// Points `alias` at `version`, with `routing` (empty: none).
    fn route(
        &self,
        function: &str,
        alias: &str,
        version: &str,
        routing: Vec<(String, f64)>,
    ) -> Result<(), StackError> {
        self.node
            .update_alias(AliasSpec {
                function: function.to_string(),
                name: alias.to_string(),
                version: Some(version.to_string()),
                description: None,
                routing: Some(routing),
            })
            .map(drop)
            .map_err(node)
    }

    /// Shifts `alias` from version `from` to `to` in `d`'s steps; after
    /// each step the new version's failed share of invocations in that
    /// step is compared with the threshold, and above it the alias goes
    /// back to `from` and the deployment fails.
    async fn shift(
        &self,
        function: &str,
        alias: &str,
        from: &str,
        to: &str,
        (d, minute): (&super::defs::Deployment, Duration),
        progress: Progress<'_>,
    ) -> Result<(), StackError> {
        let n = &self.node;
        for (pct, minutes) in &d.steps {
            self.route(
                function,
                alias,
                from,
                vec![(to.to_string(), f64::from(*pct) / 100.0)],
            )?;
            progress(format!(
                "{}: {pct}% of alias {alias} routed to version {to} for {minutes} minute(s)",
                d.kind
            ));
            let (calls0, failed0) = n.version_tally(function, to);
            tokio::time::sleep(minute * *minutes).await;
            let (calls1, failed1) = n.version_tally(function, to);
            let (calls, failed) = (calls1 - calls0, failed1 - failed0);
            #[allow(clippy::cast_precision_loss)]
            let rate = if calls == 0 {
                0.0
            } else {
                failed as f64 / calls as f64
            };
            if calls > 0 && rate > d.max_error_rate {
                self.route(function, alias, from, Vec::new())?;
                return Err(StackError::DeploymentFailed(format!(
                    "version {to} of {function} failed {failed} of {calls} invocations ({:.0}%) while it had {pct}% of alias {alias}, over the threshold of {:.0}%; alias {alias} is back on version {from}",
                    rate * 100.0,
                    d.max_error_rate * 100.0
                )));
            }
            progress(format!(
                "version {to} of {function}: {failed} of {calls} invocations failed in the step"
            ));
        }
        Ok(())
    }
}

/// A package's SHA-256 in hex, as the code store names it.
pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// A schedule's name: the function's and the event's, cut to 64.
fn schedule_name(function: &str, event: &str) -> String {
    let mut n = format!("{function}-{event}");
    n.truncate(64);
    n
}

fn mapping_change(ev: &EventDef) -> MappingChange {
    match ev {
        EventDef::Queue {
            batch_size,
            window_s,
            enabled,
            response_types,
            ..
        } => MappingChange {
            enabled: Some(*enabled),
            batch_size: *batch_size,
            window_s: *window_s,
            function_response_types: Some(response_types.clone()),
            ..MappingChange::default()
        },
        EventDef::Stream {
            starting_position,
            batch_size,
            window_s,
            enabled,
            bisect,
            max_retries,
            max_age_s,
            parallelization,
            response_types,
            ..
        } => MappingChange {
            enabled: Some(*enabled),
            batch_size: *batch_size,
            window_s: *window_s,
            function_response_types: Some(response_types.clone()),
            starting_position: Some(starting_position.clone()),
            bisect_on_error: *bisect,
            max_retry_attempts: *max_retries,
            max_record_age_s: *max_age_s,
            parallelization_factor: *parallelization,
            ..MappingChange::default()
        },
        EventDef::Schedule { .. } => MappingChange::default(),
    }
}
