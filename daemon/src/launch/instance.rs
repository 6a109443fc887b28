//! One function instance: a VM, the link to its guest's agent, its log
//! stream, and the one record of its state, which `ListInstances` reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::engine::Vm;
use crate::functions::Function;
use crate::guest::{AgentChannel, GuestLink, Waited};
use crate::logs::LogStream;

use super::LaunchError;

/// Where an instance came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A cold boot, then the function's init.
    Boot,
    /// A restore of the runtime snapshot, then the function's init.
    RuntimeSnapshot,
    /// A restore of the function snapshot (its init ran in the snapshot).
    FunctionSnapshot,
    /// A VM that builds a snapshot; it never serves an invocation.
    SnapshotBuild,
}

impl Origin {
    /// As `ListInstances` and `flintctl instances` show it.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Boot => "boot",
            Origin::RuntimeSnapshot => "runtime-snapshot",
            Origin::FunctionSnapshot => "function-snapshot",
            Origin::SnapshotBuild => "snapshot-build",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    Initializing,
    Idle,
    Busy,
    /// Idle with its vCPUs stopped: it uses no CPU until thawed.
    Frozen,
}

/// What the node shows of an instance (`ListInstances`). The instance
/// keeps its state here and nowhere else; the registry shares it, so that
/// a busy instance can be listed without waiting for it.
#[derive(Debug, Clone)]
pub struct InstanceInfo {
    pub id: String,
    pub function: String,
    pub version: String,
    pub state: InstanceState,
    pub memory_mb: u32,
    pub created: SystemTime,
    pub invocations: u64,
    pub last_used: Option<SystemTime>,
    /// How it started.
    pub start_kind: Origin,
    pub pid: u32,
    /// Kept ready by a provisioned-concurrency config.
    pub provisioned: bool,
}

pub type Registry = Arc<Mutex<HashMap<String, Arc<Mutex<InstanceInfo>>>>>;

/// Every instance in a registry, oldest first.
pub fn listed(registry: &Registry) -> Vec<InstanceInfo> {
    let reg = registry.lock().unwrap_or_else(|p| p.into_inner());
    let mut out: Vec<InstanceInfo> = reg
        .values()
        .map(|i| i.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .collect();
    out.sort_by_key(|i| i.created);
    out
}

pub struct Instance {
    pub id: String,
    /// The function revision this instance runs.
    pub revision: u64,
    pub code_sha256: String,
    pub log: LogStream,
    /// Set until the first invocation has reported it.
    pub pending_init: Option<Duration>,
    /// Set (for a restored function snapshot) until the first invocation
    /// has reported it.
    pub pending_restore: Option<Duration>,
    /// Whether the vCPUs are under the function's CPU quota yet.
    cpu_limited: bool,
    vm: Box<dyn Vm>,
    link: GuestLink,
    /// Its state: the one record of it.
    info: Arc<Mutex<InstanceInfo>>,
    registry: Registry,
}

impl Instance {
    /// Wires the agent channel of a freshly booted VM.
    pub fn attach(
        f: &Function,
        id: String,
        mut vm: Box<dyn Vm>,
        log: LogStream,
        registry: Registry,
        start_kind: Origin,
    ) -> Result<Self, LaunchError> {
        let stream = vm.take_channel().ok_or(LaunchError::NoChannel)?;
        let channel = AgentChannel {
            stream,
            received: Default::default(),
        };
        Ok(Self::attach_channel(
            f, id, vm, channel, log, registry, start_kind,
        ))
    }

    /// Wires an agent channel already in use (a spare's).
    pub fn attach_channel(
        f: &Function,
        id: String,
        vm: Box<dyn Vm>,
        channel: AgentChannel,
        log: LogStream,
        registry: Registry,
        start_kind: Origin,
    ) -> Self {
        let info = Arc::new(Mutex::new(InstanceInfo {
            id: id.clone(),
            function: f.name.clone(),
            version: f.version.clone(),
            state: InstanceState::Initializing,
            memory_mb: f.memory_mb,
            created: SystemTime::now(),
            invocations: 0,
            last_used: None,
            start_kind,
            pid: vm.stats().pid,
            provisioned: false,
        }));
        registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), info.clone());
        Self {
            id,
            revision: f.revision,
            code_sha256: f.code_sha256_hex.clone(),
            link: GuestLink::open(channel, log.clone()),
            log,
            pending_init: None,
            pending_restore: None,
            cpu_limited: false,
            vm,
            info,
            registry,
        }
    }

    fn info(&self) -> std::sync::MutexGuard<'_, InstanceInfo> {
        self.info.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> InstanceState {
        self.info().state
    }

    /// How it started.
    pub fn origin(&self) -> Origin {
        self.info().start_kind
    }

    /// Whether a provisioned-concurrency config keeps it.
    pub fn is_provisioned(&self) -> bool {
        self.info().provisioned
    }

    /// Records a state change (and, for `Idle` after `Busy`, a served invocation).
    pub fn set_state(&mut self, state: InstanceState) {
        let mut info = self.info();
        if info.state == InstanceState::Busy && state != InstanceState::Busy {
            info.invocations += 1;
            info.last_used = Some(SystemTime::now());
        }
        info.state = state;
    }

    /// The conversation with its agent.
    pub fn link(&mut self) -> &mut GuestLink {
        &mut self.link
    }

    /// Puts the vCPUs under the function's CPU quota, once: from the first
    /// invocation on (init ran unthrottled).
    pub fn limit_cpu(&mut self) -> Result<(), LaunchError> {
        if !self.cpu_limited {
            self.vm.limit_cpu()?;
            self.cpu_limited = true;
        }
        Ok(())
    }

    /// Whether the instance can take an invocation: its VM runs and its
    /// runtime has not exited since the last invocation.
    pub fn is_alive(&mut self) -> bool {
        self.link.is_open() && !self.vm.has_exited()
    }

    /// Stops the vCPUs of an idle instance.
    pub async fn freeze(&mut self) -> Result<(), LaunchError> {
        self.vm.pause().await?;
        self.set_state(InstanceState::Frozen);
        Ok(())
    }

    /// Restarts the vCPUs of a frozen instance; returns how long it took.
    pub async fn thaw(&mut self) -> Result<Duration, LaunchError> {
        let t = Instant::now();
        self.vm.resume().await?;
        self.set_state(InstanceState::Idle);
        Ok(t.elapsed())
    }

    /// Marks it as kept by a provisioned-concurrency config, whose
    /// invocations report neither init nor restore.
    pub fn mark_provisioned(&mut self) {
        self.pending_init = None;
        self.pending_restore = None;
        self.info().provisioned = true;
    }

    /// Loads a snapshot's state into this (incoming) VM; it stays paused.
    pub async fn load(&self, state: &std::path::Path) -> Result<(), LaunchError> {
        Ok(self.vm.load(state).await?)
    }

    /// Runs a VM whose snapshot state is loaded ([`Vm::load`]).
    pub async fn run_loaded(&self) -> Result<(), LaunchError> {
        Ok(self.vm.resume().await?)
    }

    /// Has the agent prepare the guest (`PrepareSnapshot`: the files its
    /// processes map read into the page cache, the kernel's clocksource
    /// settled), then pauses the VM and writes its state (a snapshot
    /// template).
    pub async fn snapshot(&mut self, state: &std::path::Path) -> Result<(), LaunchError> {
        const LIMIT: Duration = Duration::from_secs(15);
        self.link.prepare_snapshot()?;
        match self.link.prepared(Instant::now() + LIMIT).await {
            Waited::Got((files, bytes, duration)) => {
                tracing::debug!(instance = %self.id, files, bytes,
                    ms = duration.as_millis() as u64, "guest prepared for its snapshot");
            }
            Waited::Ended(end) => {
                return Err(LaunchError::PrepareFailed(format!(
                    "the guest ended the conversation ({end:?}); console: {}",
                    self.console_tail()
                )))
            }
            Waited::TimedOut => {
                return Err(LaunchError::PrepareFailed(format!(
                    "no answer in {LIMIT:?}"
                )))
            }
        }
        Ok(self.vm.snapshot(state).await?)
    }

    /// The VMM's process id.
    pub fn pid(&self) -> u32 {
        self.vm.stats().pid
    }

    pub fn pss_kb(&self) -> u64 {
        self.vm.pss_kb()
    }

    pub fn console_tail(&self) -> String {
        self.vm.console_tail(2048)
    }

    pub fn rss_kb(&self) -> u64 {
        self.vm.stats().rss_kb
    }

    pub async fn stop(mut self) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        if let Err(e) = self.vm.stop().await {
            tracing::warn!(instance = %self.id, error = %e, "stopping instance");
        }
    }
}
