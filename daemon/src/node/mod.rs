//! The node: functions, packages, instances and invocations wired together.
//! The API layer calls these methods with domain types only.
//!
//! Why one file of 700 lines: creating and updating functions (packages,
//! layers, garbage collection of stored code) is one sequence of steps that
//! must stay in order; versions and aliases (`versions.rs`), concurrency
//! (`concurrency.rs`) and what the node shows (`status.rs`) live apart.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::Config;
use crate::engine::{AccelInfo, Engine, EngineError, QemuEngine};
use crate::functions::{
    self, parse_layer_version_arn, parse_qualifier, ConfigUpdate, Function, FunctionSpec,
    FunctionStore, FunctionsError, LayerRef, Qualifier, LATEST,
};
use crate::invoke::{InvokeError, InvokeRequest, InvokeResult, Invoker};
use crate::launch::{InstanceInfo, LaunchSettings, Launcher};
use crate::logs::FunctionLogs;
use crate::packages::{CodeImage, CodeStore, PackageError, PackageRules, Runtime, MAX_UNZIPPED};
use crate::pool::{Capacity, Pool, PoolSettings};

mod autoscaling;
mod concurrency;
mod events;
#[cfg(test)]
mod events_tests;
mod metrics;
mod status;
#[cfg(test)]
mod tests;
mod versions;

pub use autoscaling::{Activity, Autoscaling, ScalingView};
pub use concurrency::{ProvisionedStatus, ProvisionedView, Provisioning};
pub use metrics::{Statistics, StatisticsQuery, MAX_DATAPOINTS, STATISTICS};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Functions(#[from] FunctionsError),
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error(transparent)]
    Invoke(#[from] InvokeError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Events(#[from] crate::events::EventsError),
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    #[error("this node has no broker: set [broker] url in its configuration")]
    NoBroker,
    #[error(transparent)]
    Sources(#[from] crate::sources::SourcesError),
    #[error("Code storage limit of {limit} bytes would be exceeded ({used} bytes in use)")]
    CodeStorageExceeded { used: u64, limit: u64 },
    #[error("preparing the data directory failed")]
    DataDir(#[source] std::io::Error),
    #[error("a blocking task failed: {0}")]
    Join(String),
    #[error(transparent)]
    Observe(#[from] crate::observe::ObserveError),
}

/// An alias as the API asks for it.
#[derive(Debug, Clone, Default)]
pub struct AliasSpec {
    pub function: String,
    pub name: String,
    pub version: Option<String>,
    pub description: Option<String>,
    /// `Some` replaces the routing (an empty map removes it).
    pub routing: Option<Vec<(String, f64)>>,
}

/// A runtime image the node starts instances from.
#[derive(Debug, Clone)]
pub struct RuntimeImage {
    pub runtime: &'static str,
    /// Resolved (the artefacts folder holds links into the image cache).
    pub path: std::path::PathBuf,
    pub size: u64,
}

/// An instance as the node shows it: its books, and the host memory its
/// VMM holds now.
#[derive(Debug, Clone)]
pub struct InstanceStatus {
    pub info: InstanceInfo,
    pub rss_kb: u64,
}

/// What `GetNodeInfo` reports, gathered by the node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub engine: String,
    pub accel: AccelInfo,
    pub kernel: std::path::PathBuf,
    pub runtime_images: Vec<RuntimeImage>,
    pub cpus: u32,
    pub memory_total_mb: u64,
    pub memory_available_mb: u64,
    pub instances: Vec<InstanceStatus>,
    pub functions: u32,
    pub data_dir: std::path::PathBuf,
    pub started: SystemTime,
    pub capacity: Capacity,
    pub log_bytes_stored: u64,
    pub log_bytes_dropped: u64,
    pub vmm_confinement: String,
    /// On demand, and while building a function snapshot.
    pub init_limits: (std::time::Duration, std::time::Duration),
    pub starts: crate::launch::StartSettings,
    pub start_counts: crate::launch::StartCounts,
    /// Instance networks, in words.
    pub networks: String,
}

pub struct Node {
    config: Config,
    store: Arc<FunctionStore>,
    code: Arc<CodeStore>,
    pool: Arc<Pool>,
    logs: FunctionLogs,
    invoker: Arc<Invoker>,
    events: Arc<crate::events::Events>,
    sources: Arc<crate::sources::Sources>,
    provisioning: Arc<Provisioning>,
    autoscaling: Autoscaling,
    started: SystemTime,
}

impl Node {
    /// Opens (or creates) the node's state under the data directory.
    pub fn open(config: Config) -> Result<Self, NodeError> {
        let accel = crate::engine::detect_accel(config.accel)?;
        if accel.accel == crate::engine::Accel::Tcg {
            tracing::warn!(reason = %accel.reason, "guests run under TCG");
        } else {
            tracing::info!(reason = %accel.reason, "guests run under KVM");
        }
        let engine: Arc<dyn Engine> =
            Arc::new(QemuEngine::new(config.qemu.clone(), accel, &config.vmm)?);
        Self::with_engine(config, engine)
    }

    /// Opens the node's state with `engine` running its VMs (QEMU in
    /// flintd; a fake one in the middle tier of tests).
    pub fn with_engine(config: Config, engine: Arc<dyn Engine>) -> Result<Self, NodeError> {
        for d in [
            config.data_dir.clone(),
            config.code_dir(),
            config.logs_dir(),
            config.run_dir(),
            config.tmp_dir(),
        ] {
            std::fs::create_dir_all(&d).map_err(NodeError::DataDir)?;
        }
        crate::engine::reap_leftovers(&config.run_dir());
        // Leftovers of an earlier run: instance directories and staging files.
        for d in [config.run_dir(), config.tmp_dir()] {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let store = Arc::new(FunctionStore::open(&config.db_path())?);
        let code = Arc::new(CodeStore::new(config.code_dir(), config.tmp_dir()));
        let snapshots = if config.snapshots {
            Some(Arc::new(
                crate::snapshot::SnapshotStore::new(config.snapshot_dir())
                    .map_err(|e| NodeError::DataDir(std::io::Error::other(e.to_string())))?,
            ))
        } else {
            None
        };
        let logs = FunctionLogs::new(config.logs_dir(), config.log_limits());
        let accel_kind = engine.accel().accel;
        let launcher = Launcher::new(
            engine,
            LaunchSettings {
                kernel: config.kernel(),
                artifacts_dir: config.artifacts_dir.clone(),
                run_dir: config.run_dir(),
                boot_timeout: config.boot_timeout,
                init_timeout: config.init_timeout_for(accel_kind),
                snapshot_init_timeout: config.snapshot_init_timeout,
                region: config.region.clone(),
                account_id: config.account_id.clone(),
                snapshot_latest: config.snapshot_latest,
                spare_vms: config.spare_vms,
                starts: config.start_settings(accel_kind, crate::engine::host_cpus()),
            },
            snapshots,
            logs.clone(),
        )
        .with_network(start_network(&config));
        let pool = Arc::new(Pool::new(
            Arc::new(launcher),
            PoolSettings {
                freeze_idle: config.freeze_idle,
                idle_timeout: config.idle_timeout,
                max_instances: config.max_instances,
                memory_budget_mb: config.memory_budget_mb,
                unreserved_min: config.unreserved_min(),
            },
        ));
        for (function, reserved) in store.reserved()? {
            pool.set_reserved(&function, Some(reserved));
        }
        let invoker = Arc::new(Invoker {
            store: store.clone(),
            code: code.clone(),
            pool: pool.clone(),
            logs: logs.clone(),
            region: config.region.clone(),
            account_id: config.account_id.clone(),
            tally: Default::default(),
            observe: Arc::new(crate::observe::Observer::new(
                config.metrics_window.as_secs(),
                match &config.tracing {
                    Some(t) => Some(crate::observe::trace::Tracer::start(t.clone())?),
                    None => None,
                },
            )),
        });
        let broker = match config.broker_url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => Some(Arc::new(crate::broker::Broker::new(url)?)),
            None => None,
        };
        let events = Arc::new(crate::events::Events::open(
            &config.data_dir.join("events.db"),
            invoker.clone(),
            store.clone(),
            broker.clone(),
            config.events,
        )?);
        let sources = Arc::new(crate::sources::Sources::open(
            &config.data_dir.join("sources.db"),
            invoker.clone(),
            events.clone(),
            broker,
        )?);
        let node = Self {
            config,
            store,
            code,
            pool,
            logs,
            invoker,
            events,
            sources,
            provisioning: Default::default(),
            autoscaling: Default::default(),
            started: SystemTime::now(),
        };
        // What a crash left: half-written files, and packages stored but
        // never recorded by a function or layer.
        let partial = node.code.remove_partial_files();
        if partial > 0 {
            tracing::info!(files = partial, "half-written package files removed");
        }
        node.collect_garbage();
        Ok(node)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn accel(&self) -> &AccelInfo {
        self.pool.launcher().engine().accel()
    }

    /// The on-demand and snapshot-building init limits in force.
    pub fn init_limits(&self) -> (std::time::Duration, std::time::Duration) {
        let s = self.pool.launcher().settings();
        (s.init_timeout, s.snapshot_init_timeout)
    }

    /// How VMMs are confined, in words.
    pub fn confinement(&self) -> String {
        self.pool.launcher().engine().confinement()
    }

    pub fn logs(&self) -> &FunctionLogs {
        &self.logs
    }

    pub fn started(&self) -> SystemTime {
        self.started
    }

    pub fn arn(&self, f: &Function) -> String {
        f.arn(&self.config.region, &self.config.account_id)
    }

    pub fn region_account(&self) -> (&str, &str) {
        (&self.config.region, &self.config.account_id)
    }

    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, PackageError> + Send + 'static,
    ) -> Result<T, NodeError> {
        Ok(tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| NodeError::Join(e.to_string()))??)
    }

    /// Bytes of packages stored on the node.
    fn code_storage_used(&self) -> u64 {
        std::fs::read_dir(self.config.code_dir())
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".zip"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Validates and stores a package (function code when `rules.runtime` is set).
    async fn store_package(
        &self,
        zip: Vec<u8>,
        rules: PackageRules,
    ) -> Result<CodeImage, NodeError> {
        let used = self.code_storage_used();
        let limit = self.config.code_storage_limit;
        if used + zip.len() as u64 > limit {
            return Err(NodeError::CodeStorageExceeded { used, limit });
        }
        let code = self.code.clone();
        Self::blocking(move || code.store(&zip, &rules)).await
    }

    /// Removes packages, `/opt` images and snapshots that no function
    /// version refers to any more.
    fn collect_garbage(&self) {
        let Ok(packages) = self.store.referenced_packages() else {
            return;
        };
        let mut opt_keys = HashSet::new();
        let mut snapshots = HashSet::new();
        for f in self.store.list().unwrap_or_default() {
            let versions = self.store.list_versions(&f.name).unwrap_or_default();
            for v in std::iter::once(f).chain(versions) {
                let shas: Vec<String> = v.layers.iter().map(|l| l.sha256_hex.clone()).collect();
                opt_keys.insert(CodeStore::opt_key(&shas));
                snapshots.insert(self.pool.launcher().runtime_key(&v));
                snapshots.insert(self.pool.launcher().function_key(&v));
            }
        }
        self.code.collect(&packages, &opt_keys);
        if let Some(snaps) = self.pool.launcher().snapshots() {
            // The default runtime snapshots stay for the next function.
            for r in Runtime::ALL {
                let probe = Function {
                    runtime: r,
                    ..Function::placeholder()
                };
                snapshots.insert(self.pool.launcher().runtime_key(&probe));
            }
            let n = snaps.collect(&snapshots);
            if n > 0 {
                tracing::info!(snapshots = n, "unused snapshots removed");
            }
        }
    }

    /// Layer ARNs to references, checking the combined unzipped size.
    fn resolve_layers(
        &self,
        arns: &[String],
        code_unzipped: u64,
    ) -> Result<Vec<LayerRef>, NodeError> {
        let mut refs = Vec::with_capacity(arns.len());
        let mut total = code_unzipped;
        for arn in arns {
            let (name, version) = parse_layer_version_arn(arn)?;
            let l = self.store.get_layer(&name, version)?;
            total += l.unzipped_size;
            refs.push(LayerRef {
                arn: arn.clone(),
                sha256_hex: l.sha256_hex,
                code_size: l.code_size,
                unzipped_size: l.unzipped_size,
            });
        }
        if total > MAX_UNZIPPED {
            return Err(FunctionsError::Invalid {
                field: "Layers",
                rule: format!(
                    "function code combined with layers exceeds the maximum allowed size of {MAX_UNZIPPED} bytes (got {total})"
                ),
            }
            .into());
        }
        Ok(refs)
    }

    pub async fn create_function(
        &self,
        mut spec: FunctionSpec,
        zip: Vec<u8>,
    ) -> Result<Function, NodeError> {
        let runtime = functions::validate_spec(&mut spec)?;
        self.check_dead_letter(spec.dead_letter_target.as_deref())?;
        match self.store.get(&spec.name) {
            Ok(_) => return Err(FunctionsError::AlreadyExists(spec.name).into()),
            Err(FunctionsError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        // Layers are checked before the package is stored.
        self.resolve_layers(&spec.layers, 0)?;
        let rules = PackageRules {
            runtime: Some(runtime),
            handler: spec.handler.clone(),
        };
        let image = self.store_package(zip, rules).await?;
        let layers = match self.resolve_layers(&spec.layers, image.unzipped_size) {
            Ok(l) => l,
            Err(e) => {
                self.collect_garbage();
                return Err(e);
            }
        };
        let f = Function {
            name: spec.name,
            version: LATEST.into(),
            runtime,
            handler: spec.handler,
            memory_mb: spec.memory_mb,
            timeout_s: spec.timeout_s,
            environment: spec.environment,
            description: spec.description,
            code_sha256_hex: image.sha256_hex.clone(),
            code_sha256_b64: image.sha256_b64,
            code_size: image.zip_size,
            unzipped_size: image.unzipped_size,
            layers,
            ephemeral_mb: spec.ephemeral_mb,
            dead_letter_target: spec.dead_letter_target,
            network: spec.network,
            last_modified: crate::time::lambda_timestamp(SystemTime::now()),
            revision: 1,
        };
        if let Err(e) = self.store.insert(&f) {
            // Nothing half-created: drop the package unless something uses it.
            self.collect_garbage();
            return Err(e.into());
        }
        tracing::info!(function = %f.name, runtime = f.runtime.name(), "function created");
        Ok(f)
    }

    /// A function at a qualifier; an alias gives its primary version.
    pub fn get_function(&self, name: &str, qualifier: &str) -> Result<Function, NodeError> {
        let latest = self.store.get(name)?;
        Ok(match parse_qualifier(qualifier)? {
            Qualifier::Latest => latest,
            Qualifier::Version(v) => self.store.get_version(name, v)?,
            Qualifier::Alias(a) => {
                let alias = self.store.get_alias(name, &a)?;
                self.store.get_qualified(name, &alias.version)?
            }
        })
    }

    pub fn list_functions(&self) -> Result<Vec<Function>, NodeError> {
        Ok(self.store.list()?)
    }

    pub fn code_location(&self, f: &Function) -> String {
        self.code.zip_path(&f.code_sha256_hex).display().to_string()
    }

    pub async fn delete_function(&self, name: &str) -> Result<(), NodeError> {
        self.store.delete(name)?;
        self.invoker.tally.forget(name);
        self.invoker.observe.forget(name);
        self.pool.set_reserved(name, None);
        self.pool.retire(name).await;
        self.collect_garbage();
        tracing::info!(function = %name, "function deleted");
        Ok(())
    }

    pub async fn update_function_code(
        &self,
        name: &str,
        zip: Vec<u8>,
        publish: bool,
        revision_id: Option<String>,
    ) -> Result<Function, NodeError> {
        self.update_code_as(name, zip, publish, revision_id, None)
            .await
    }

    /// (invocations, failed invocations) of one function version since
    /// flintd started.
    pub fn version_tally(&self, name: &str, version: &str) -> (u64, u64) {
        self.invoker.tally.get(name, version)
    }

    /// The package `$LATEST` runs.
    pub fn function_code(&self, f: &Function) -> Result<Vec<u8>, NodeError> {
        Ok(self.code.zip_bytes(&f.code_sha256_hex)?)
    }

    /// New code together with the runtime and handler it is checked
    /// against and runs under (a stack that renames its handler's file
    /// changes both at once).
    pub async fn update_function_code_and_handler(
        &self,
        name: &str,
        zip: Vec<u8>,
        runtime: crate::packages::Runtime,
        handler: String,
    ) -> Result<Function, NodeError> {
        self.update_code_as(name, zip, false, None, Some((runtime, handler)))
            .await
    }

    async fn update_code_as(
        &self,
        name: &str,
        zip: Vec<u8>,
        publish: bool,
        revision_id: Option<String>,
        target: Option<(crate::packages::Runtime, String)>,
    ) -> Result<Function, NodeError> {
        let f = self.store.get(name)?;
        let (runtime, handler) = target.unwrap_or((f.runtime, f.handler.clone()));
        f.check_revision(revision_id.as_deref())?;
        if zip.is_empty() {
            return Err(FunctionsError::Invalid {
                field: "ZipFile",
                rule: "a deployment package is required".into(),
            }
            .into());
        }
        let rules = PackageRules {
            runtime: Some(runtime),
            handler: handler.clone(),
        };
        let image = self.store_package(zip, rules).await?;
        let layers_unzipped: u64 = f.layers.iter().map(|l| l.unzipped_size).sum();
        if image.unzipped_size + layers_unzipped > MAX_UNZIPPED {
            self.collect_garbage();
            return Err(FunctionsError::Invalid {
                field: "ZipFile",
                rule: format!("function code combined with layers exceeds the maximum allowed size of {MAX_UNZIPPED} bytes"),
            }
            .into());
        }
        let f = self.read_modify_write(name, revision_id.as_deref(), |old| {
            if (old.runtime, &old.handler, &old.layers) != (f.runtime, &f.handler, &f.layers) {
                // The package was checked against other settings.
                return Err(FunctionsError::UpdateConflict(name.to_string()).into());
            }
            Ok(Function {
                runtime,
                handler: handler.clone(),
                code_sha256_hex: image.sha256_hex.clone(),
                code_sha256_b64: image.sha256_b64.clone(),
                code_size: image.zip_size,
                unzipped_size: image.unzipped_size,
                ..old.clone()
            })
        });
        drop(image);
        self.collect_garbage();
        let f = f?;
        tracing::info!(function = %name, revision = f.revision, "function code updated");
        self.retire_latest(name);
        if publish {
            let v = self.store.publish_version(name, "")?;
            self.prepare_in_background(&v);
            return Ok(v);
        }
        Ok(f)
    }

    pub async fn update_function_configuration(
        &self,
        name: &str,
        u: ConfigUpdate,
    ) -> Result<Function, NodeError> {
        functions::validate_update(&u)?;
        self.check_dead_letter(u.dead_letter_target.as_deref())?;
        let old = self.store.get(name)?;
        old.check_revision(u.revision_id.as_deref())?;
        let (spec, runtime) = Self::apply_update(&old, &u)?;
        if runtime != old.runtime || spec.handler != old.handler {
            // The stored package must still have what the runtime looks for.
            let zip = self.code.zip_bytes(&old.code_sha256_hex)?;
            let rules = PackageRules {
                runtime: Some(runtime),
                handler: spec.handler.clone(),
            };
            Self::blocking(move || crate::packages::validate(&zip, &rules).map(drop)).await?;
        }
        let layers = match u.layers {
            Some(_) => Some(self.resolve_layers(&spec.layers, old.unzipped_size)?),
            None => None,
        };
        let checked = (old.code_sha256_hex.clone(), runtime, spec.handler.clone());
        let f = self.read_modify_write(name, u.revision_id.as_deref(), |old| {
            if (
                old.code_sha256_hex.clone(),
                old.runtime,
                old.handler.clone(),
            ) != checked
            {
                // The package changed under us: the handler check above
                // was for another one.
                return Err(FunctionsError::UpdateConflict(name.to_string()).into());
            }
            let (spec, runtime) = Self::apply_update(old, &u)?;
            Ok(Function {
                runtime,
                handler: spec.handler,
                memory_mb: spec.memory_mb,
                timeout_s: spec.timeout_s,
                environment: spec.environment,
                description: spec.description,
                layers: layers.clone().unwrap_or_else(|| old.layers.clone()),
                ephemeral_mb: spec.ephemeral_mb,
                dead_letter_target: spec.dead_letter_target,
                network: spec.network,
                ..old.clone()
            })
        })?;
        tracing::info!(function = %name, revision = f.revision, "function configuration updated");
        self.retire_latest(name);
        Ok(f)
    }

    /// The settings of `old` with the update's applied, validated.
    fn apply_update(
        old: &Function,
        u: &ConfigUpdate,
    ) -> Result<(FunctionSpec, Runtime), NodeError> {
        let mut spec = FunctionSpec {
            name: old.name.clone(),
            runtime: u
                .runtime
                .clone()
                .unwrap_or_else(|| old.runtime.name().to_string()),
            handler: u.handler.clone().unwrap_or_else(|| old.handler.clone()),
            memory_mb: u.memory_mb.unwrap_or(old.memory_mb),
            timeout_s: u.timeout_s.unwrap_or(old.timeout_s),
            environment: u
                .environment
                .clone()
                .unwrap_or_else(|| old.environment.clone()),
            description: u
                .description
                .clone()
                .unwrap_or_else(|| old.description.clone()),
            layers: u
                .layers
                .clone()
                .unwrap_or_else(|| old.layers.iter().map(|l| l.arn.clone()).collect()),
            ephemeral_mb: u.ephemeral_mb.unwrap_or(old.ephemeral_mb),
            dead_letter_target: match &u.dead_letter_target {
                Some(t) if t.is_empty() => None,
                Some(t) => Some(t.clone()),
                None => old.dead_letter_target.clone(),
            },
            network: u.network.clone().unwrap_or_else(|| old.network.clone()),
        };
        let runtime = functions::validate_spec(&mut spec)?;
        Ok((spec, runtime))
    }

    /// Reads `$LATEST`, applies `change`, and writes the result only if no
    /// other update came between (the revision is the version of the row).
    /// Without a `RevisionId` a lost race is retried, so no update is lost;
    /// with one, it fails its precondition as AWS does.
    fn read_modify_write(
        &self,
        name: &str,
        revision_id: Option<&str>,
        mut change: impl FnMut(&Function) -> Result<Function, NodeError>,
    ) -> Result<Function, NodeError> {
        for _ in 0..64 {
            let old = self.store.get(name)?;
            old.check_revision(revision_id)?;
            let mut f = change(&old)?;
            f.revision = old.revision + 1;
            f.last_modified = crate::time::lambda_timestamp(SystemTime::now());
            if self.store.update_if(&f, old.revision)? {
                return Ok(f);
            }
        }
        Err(FunctionsError::UpdateConflict(name.to_string()).into())
    }

    /// Retires `$LATEST`'s instance in the background: it holds the old code
    /// or configuration (a running invocation finishes first).
    fn retire_latest(&self, name: &str) {
        let pool = self.pool.clone();
        let name = name.to_string();
        tokio::spawn(async move { pool.retire_version(&name, LATEST).await });
    }

    /// Starts an idle instance of a function version outside the invocation
    /// path and hands it to the caller (who stops it). Used to measure how
    /// many clones a node holds.
    pub async fn start_detached(
        &self,
        name: &str,
        qualifier: &str,
    ) -> Result<crate::launch::Instance, NodeError> {
        let f = self.invoker.resolve(name, qualifier)?;
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let log = self
            .logs
            .open_stream(&f.name, &f.version, &id)
            .map_err(InvokeError::from)?;
        match self.invoker.start_instance(&f, id, log, None).await? {
            crate::launch::Started::Ready(inst) => Ok(inst),
            crate::launch::Started::InitFailed(failure) => Err(NodeError::Invoke(
                InvokeError::Launch(crate::launch::LaunchError::InitFailed(failure.error_type)),
            )),
        }
    }

    /// Runs an invocation to its end even if the caller goes away: an
    /// accepted invocation is never cut off half way.
    pub async fn invoke(&self, req: InvokeRequest) -> Result<InvokeResult, NodeError> {
        if req.invocation_type == crate::invoke::InvocationType::Event {
            // Queued whether or not the caller stays for the answer.
            let events = self.events.clone();
            return tokio::spawn(async move { events.accept(req).await })
                .await
                .map_err(|e| NodeError::Join(e.to_string()))?
                .map_err(NodeError::from);
        }
        let invoker = self.invoker.clone();
        tokio::spawn(async move { invoker.invoke(req).await })
            .await
            .map_err(|e| NodeError::Join(e.to_string()))?
            .map_err(NodeError::from)
    }

    /// Stops every instance.
    pub async fn shutdown(&self) {
        self.pool.shutdown().await;
        if let Some(n) = self.pool.launcher().network() {
            n.shutdown().await;
        }
    }
}

/// The node's instance networks, when they are on and can be set up (a
/// node that cannot set them up runs without, and says so).
fn start_network(config: &Config) -> Option<Arc<crate::network::Network>> {
    if !config.network.enabled {
        return None;
    }
    let mut settings = config.network.clone();
    if settings.tag.is_empty() {
        settings.tag = node_tag(&config.data_dir);
    }
    match crate::network::Network::start(settings) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::error!(error = %crate::error_chain(&e),
                "instance networks are unavailable: instances run without a network");
            None
        }
    }
}

/// Three characters (a-z, 0-9) from the data directory: what names this
/// node's host table and links, the same across its restarts and apart
/// from another node's on the same host.
fn node_tag(data_dir: &std::path::Path) -> String {
    use sha2::Digest;
    let canon = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let digest = sha2::Sha256::digest(canon.as_os_str().as_encoded_bytes());
    let mut n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..3)
        .map(|_| {
            let c = alphabet[(n % 36) as usize] as char;
            n /= 36;
            c
        })
        .collect()
}
