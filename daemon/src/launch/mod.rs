//! How an instance comes to be, and how it goes: the launcher owns the
//! engine, the snapshot store and the spares, and turns a function version
//! into a running instance whose runtime waits for its first event.
//!
//! A start takes a slot ([`Starts`]), then goes down the first path that
//! works:
//!
//! 1. **Function snapshot** (published versions; `$LATEST` when
//!    configured): a spare, or a new VMM, restores the snapshot taken after
//!    the function's init; `Resume` gives the clone its clock, entropy and
//!    identity; the runtime's after-restore hooks run.
//! 2. **Runtime snapshot**: a VM restored from the snapshot of the bare
//!    runtime (booted once per runtime and memory size), then `Configure`
//!    and the function's init.
//! 3. **Cold boot**: the kernel boots, the agent says `Ready`, then
//!    `Configure` and the init.
//!
//! Snapshots are built on the way when missing (`build.rs`), once per key.
//! The books (who may have an instance, and which) are the pool's; the
//! conversation with the guest is the guest link's.

mod build;
mod instance;
mod spare;
mod start;
mod starts;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::{Engine, EngineError};
use crate::functions::Function;
use crate::guest::GuestError;
use crate::logs::FunctionLogs;
use crate::snapshot::SnapshotStore;

pub use instance::{Instance, InstanceInfo, InstanceState, Origin};
pub use spare::SPARE_MB;
pub use starts::{StartCounts, StartSettings, StartSlot, Starts};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// What the VMM failed at (a start, a pause, a snapshot) says itself.
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error("the VM gave no agent channel")]
    NoChannel,
    #[error("the guest agent did not start within {0:?}; console: {1}")]
    BootTimeout(Duration, String),
    #[error("the guest stopped while booting; console: {0}")]
    BootFailed(String),
    #[error("snapshots are off")]
    SnapshotsOff,
    /// A step of building or restoring a snapshot, with its cause.
    #[error("{what}")]
    Snapshot {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the agent did not prepare its snapshot: {0}")]
    PrepareFailed(String),
    #[error("the restored guest did not answer; console: {0}")]
    ResumeFailed(String),
    #[error("a spare's guest did not warm up within {0:?}; console: {1}")]
    WarmUpTimeout(Duration, String),
    /// No start slot came free within the invocation's budget.
    #[error("Rate Exceeded: {0}")]
    StartQueue(String),
    #[error("the function's init failed: {0}")]
    InitFailed(String),
    #[error("preparing the instance's network failed")]
    Network(#[from] crate::network::NetworkError),
}

impl LaunchError {
    /// The error and every cause under it, `: `-separated: what a log line
    /// and a version's state reason show.
    pub fn chain(&self) -> String {
        crate::error_chain(self)
    }

    /// A failed step of a snapshot's build or restore, keeping its cause.
    fn snapshot(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Snapshot {
            what: what.into(),
            source: Box::new(source),
        }
    }
}

/// Lambda's `Reason` of a start that waited too long for a slot.
pub const START_QUEUE_REASON: &str = "StartSlotTimeout";

/// Where instances come from.
#[derive(Debug, Clone)]
pub struct LaunchSettings {
    pub kernel: PathBuf,
    pub artifacts_dir: PathBuf,
    pub run_dir: PathBuf,
    pub boot_timeout: Duration,
    /// The on-demand init limit in force.
    pub init_timeout: Duration,
    /// The limit of the init that builds a function snapshot.
    pub snapshot_init_timeout: Duration,
    pub region: String,
    pub account_id: String,
    /// Function snapshots for `$LATEST` too (always for published versions).
    pub snapshot_latest: bool,
    /// Keep a QEMU process started ahead for each function snapshot in use.
    pub spare_vms: bool,
    /// Start slots and the per-function scaling rate.
    pub starts: StartSettings,
}

impl LaunchSettings {
    /// The image a runtime's instances run as `/`.
    pub fn runtime_image(&self, runtime: crate::packages::Runtime) -> PathBuf {
        crate::config::runtime_image_in(&self.artifacts_dir, runtime.name())
    }
}

/// The result of starting an instance: ready, or its init failed (a function
/// error, reported to the invoker, not a node failure). Short-lived and moved
/// once, so the size of the `Ready` variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Started {
    Ready(Instance),
    InitFailed(crate::guest::FunctionFailure),
}

/// Where a version's function snapshot stands, when it is not simply built
/// (or not needed): what `State` and `LastUpdateStatus` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preparation {
    /// Being built (its init running): `Pending`, `InProgress`.
    Pending,
    /// The function's init failed while building it: `Failed`, with the
    /// init's error type. Invocations retry the init.
    InitFailed(String),
    /// The node could not build it: the version stays invocable (from the
    /// runtime snapshot), `LastUpdateStatus` is `Failed`.
    SnapshotFailed(String),
}

/// What a start needs of a function beyond its model: its code image, and
/// the merged image of its layers.
#[derive(Debug, Clone)]
pub struct Images {
    pub code: PathBuf,
    pub opt: Option<PathBuf>,
}

pub struct Launcher {
    engine: Arc<dyn Engine>,
    settings: LaunchSettings,
    /// Every instance started and not stopped, as the node shows them.
    registry: instance::Registry,
    /// None when snapshots are off.
    snapshots: Option<Arc<SnapshotStore>>,
    /// Log streams of snapshot templates.
    template_logs: FunctionLogs,
    /// One lock per snapshot key, so that one snapshot is built once.
    building: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// QEMU processes started ahead, waiting for a function snapshot's state.
    spares: Arc<spare::Spares>,
    /// Start slots: the starts in flight and those waiting for one.
    starts: Arc<Starts>,
    /// Versions whose function snapshot is being built or failed to be.
    preparations: Mutex<HashMap<(String, String), Preparation>>,
    /// Instance networks; none: the node runs without (every NIC has
    /// nothing behind it).
    network: Option<Arc<crate::network::Network>>,
}

impl Launcher {
    pub fn new(
        engine: Arc<dyn Engine>,
        settings: LaunchSettings,
        snapshots: Option<Arc<SnapshotStore>>,
        template_logs: FunctionLogs,
    ) -> Self {
        Self {
            engine,
            registry: Default::default(),
            snapshots,
            template_logs,
            building: Mutex::new(HashMap::new()),
            spares: Default::default(),
            starts: Starts::new(settings.starts),
            preparations: Mutex::new(HashMap::new()),
            network: None,
            settings,
        }
    }

    /// Gives instances networks of their own.
    pub fn with_network(mut self, network: Option<Arc<crate::network::Network>>) -> Self {
        self.network = network;
        self
    }

    pub fn network(&self) -> Option<&Arc<crate::network::Network>> {
        self.network.as_ref()
    }

    /// The network of a new VM of `f` (none without networking, or for
    /// mode `none`).
    pub(super) async fn network_for(
        &self,
        f: &Function,
    ) -> Result<Option<Arc<dyn crate::network::NetBackend>>, LaunchError> {
        match &self.network {
            Some(n) => Ok(n.acquire(&f.network).await?),
            None => Ok(None),
        }
    }

    pub fn snapshots(&self) -> Option<&Arc<SnapshotStore>> {
        self.snapshots.as_ref()
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    pub fn settings(&self) -> &LaunchSettings {
        &self.settings
    }

    /// The start scheduler's settings in force.
    pub fn start_settings(&self) -> StartSettings {
        self.starts.settings()
    }

    /// Starts in flight and waiting for a slot.
    pub fn start_counts(&self) -> StartCounts {
        self.starts.counts()
    }

    /// Every instance started and not stopped (snapshot builds included).
    pub fn instances(&self) -> Vec<InstanceInfo> {
        instance::listed(&self.registry)
    }

    /// Where the function snapshot of `function:version` stands (`None`:
    /// built, or not needed).
    pub fn preparation(&self, function: &str, version: &str) -> Option<Preparation> {
        self.preparations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(function.to_string(), version.to_string()))
            .cloned()
    }

    /// Whether `f` starts from a function snapshot of its own: published
    /// versions, and `$LATEST` where configured, when snapshots are on.
    fn gets_function_snapshot(&self, f: &Function) -> bool {
        self.snapshots.is_some()
            && (f.version != crate::functions::LATEST || self.settings.snapshot_latest)
    }

    /// Marks `f`'s function snapshot as about to be built, if `f` gets one;
    /// returns whether it does.
    pub fn expect_preparation(&self, f: &Function) -> bool {
        let applies = self.gets_function_snapshot(f);
        if applies {
            self.set_preparation(f, Some(Preparation::Pending));
        }
        applies
    }

    fn set_preparation(&self, f: &Function, p: Option<Preparation>) {
        let mut m = self.preparations.lock().unwrap_or_else(|p| p.into_inner());
        let k = (f.name.clone(), f.version.clone());
        match p {
            Some(p) => m.insert(k, p),
            None => m.remove(&k),
        };
    }

    /// Forgets a deleted function: its preparations, and the spares of its
    /// snapshots (stopped; those being started are cancelled).
    pub async fn retire(&self, function: &str) {
        self.preparations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(f, _), _| f != function);
        self.drop_spares(function).await;
    }

    /// Stops every spare.
    pub async fn shutdown(&self) {
        let (spares, starting) = self.spares.take_all();
        spare::stop_spares(spares, starting).await;
    }
}

/// vCPUs of an instance of `memory_mb`: Lambda gives a full vCPU at 1769 MB.
fn vcpus(memory_mb: u32) -> u32 {
    memory_mb.div_ceil(1769).clamp(1, 6)
}

/// Settings for launchers in tests, with files under `dir`: snapshots and
/// spares off, short limits.
#[cfg(test)]
pub(crate) fn test_settings(dir: &std::path::Path) -> LaunchSettings {
    LaunchSettings {
        kernel: dir.join("vmlinux"),
        artifacts_dir: dir.to_path_buf(),
        run_dir: dir.join("run"),
        boot_timeout: Duration::from_secs(1),
        init_timeout: Duration::from_secs(1),
        snapshot_init_timeout: Duration::from_secs(1),
        region: "r".into(),
        account_id: "a".into(),
        snapshot_latest: false,
        spare_vms: false,
        starts: StartSettings::for_host(2, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_shows_what_failed_and_why() {
        let e = LaunchError::snapshot(
            "padding the disks of a restore",
            std::io::Error::other("no space left on device"),
        );
        assert_eq!(e.to_string(), "padding the disks of a restore");
        assert_eq!(
            e.chain(),
            "padding the disks of a restore: no space left on device"
        );
        assert!(std::error::Error::source(&e).is_some());
    }
}
