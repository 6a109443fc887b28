//! The three ways an instance starts — a restored function snapshot, a
//! restored runtime snapshot and the function's init, a cold boot and the
//! init — in the order they are tried, and the one place a VM is described.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::build::{Disks, FunctionSnapshot};
use super::spare::Spare;
use super::{vcpus, Images, Instance, InstanceState, LaunchError, Launcher, Origin, Started};
use crate::engine::{Memory, VmSpec};
use crate::functions::Function;
use crate::guest::{Setup, Waited};
use crate::logs::LogStream;
use crate::snapshot::Snapshot;

/// How long a restored guest's agent may take to answer `Resume`.
const RESUME_LIMIT: Duration = Duration::from_secs(10);

impl Launcher {
    /// Starts an instance of `f`: a restored function snapshot where there
    /// is one (published versions, and `$LATEST` when configured), else a
    /// restored runtime snapshot that then runs the function's init, else
    /// (no snapshots, or they fail) a cold boot. `spare`: start a spare for
    /// the next restore (spares are on and the node has room for one).
    ///
    /// The start waits for a slot ([`super::Starts`]) until `deadline`
    /// (none: as long as it takes); the init limit runs from when it has
    /// one.
    pub async fn start(
        &self,
        f: &Function,
        images: Images,
        instance_id: String,
        log: LogStream,
        deadline: Option<Instant>,
        spare: bool,
    ) -> Result<Started, LaunchError> {
        // A snapshot that is being built holds a slot of its own: wait for
        // it without holding another.
        if self.snapshots.is_some() {
            let runtime_key = self.runtime_key(f);
            let _ = self.build_lock(&runtime_key).lock().await;
            if self.gets_function_snapshot(f) {
                let s = &self.settings;
                let key = crate::snapshot::function_key(&runtime_key, f, &s.region, &s.account_id);
                let _ = self.build_lock(&key).lock().await;
            }
        }
        let _slot = self.starts.acquire(&f.name, deadline).await?;
        let start = Start {
            f,
            id: instance_id,
            log,
        };
        self.start_in_slot(&start, images, spare).await
    }

    async fn start_in_slot(
        &self,
        s: &Start<'_>,
        images: Images,
        spare: bool,
    ) -> Result<Started, LaunchError> {
        if self.snapshots.is_none() {
            return self.boot_and_init(s, images).await;
        };
        let disks = match self.disks(&images).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(function = %s.f.name, error = %e.chain(), "preparing the disks for a restore failed; booting");
                return self.boot_and_init(s, images).await;
            }
        };
        if self.gets_function_snapshot(s.f) {
            // A transient failure (a VMM that did not start, a slow guest)
            // gets one more try before the instance is started without the
            // function snapshot.
            for attempt in 1..=2 {
                match self.function_snapshot(s.f, &disks).await {
                    Ok(FunctionSnapshot::Ready(snap)) => {
                        match self.restore_function(s, &snap, &disks, spare).await {
                            Ok(started) => return Ok(started),
                            Err(e) => {
                                tracing::warn!(function = %s.f.name, attempt, error = %e.chain(),
                                "restoring the function snapshot failed")
                            }
                        }
                    }
                    Ok(FunctionSnapshot::InitFailed(failure)) => {
                        return Ok(Started::InitFailed(failure))
                    }
                    Err(e) => tracing::warn!(function = %s.f.name, attempt, error = %e.chain(),
                        "building the function snapshot failed"),
                }
            }
            tracing::warn!(function = %s.f.name, version = %s.f.version,
                "starting without the function snapshot: from the runtime snapshot");
        }
        let rs = match self.runtime_snapshot(s.f).await {
            Ok(rs) => rs,
            Err(e) => {
                tracing::warn!(function = %s.f.name, error = %e.chain(), "no runtime snapshot; booting");
                return self.boot_and_init(s, images).await;
            }
        };
        let spec = self.restore_spec(s.f, &s.id, Memory::Clone(rs.memory()), &disks);
        let restored = self
            .restore_vm(s, &rs, spec, Origin::RuntimeSnapshot, None)
            .await;
        match restored {
            Ok(mut inst) => {
                resumed(&mut inst).await?;
                Ok(self
                    .configure_and_init(inst, s.f, disks.has_layers, false)
                    .await)
            }
            Err(e) => {
                tracing::warn!(function = %s.f.name, error = %e.chain(), "restoring the runtime snapshot failed; booting");
                self.boot_and_init(s, images).await
            }
        }
    }

    /// The one place a VM of `f` is described: its kernel, its runtime's
    /// image as `/`, `drives` after it, its memory and vCPUs. `incoming`:
    /// it waits for a snapshot's state instead of booting.
    pub(super) fn spec(
        &self,
        f: &Function,
        id: &str,
        memory: Memory,
        drives: Vec<PathBuf>,
        incoming: bool,
    ) -> VmSpec {
        let s = &self.settings;
        VmSpec {
            id: id.to_string(),
            dir: s.run_dir.join(id),
            kernel: s.kernel.clone(),
            rootfs: s.runtime_image(f.runtime),
            drives,
            memory_mb: f.memory_mb,
            vcpus: vcpus(f.memory_mb),
            memory,
            incoming,
            background: false,
            net: None,
        }
    }

    /// A VM that restores a snapshot of `f` with `disks`.
    pub(super) fn restore_spec(
        &self,
        f: &Function,
        id: &str,
        memory: Memory,
        disks: &Disks,
    ) -> VmSpec {
        let drives = vec![disks.code.clone(), disks.opt.clone()];
        self.spec(f, id, memory, drives, true)
    }

    /// A VM restored from `snap` as `spec` describes it: a spare (started,
    /// loaded and warmed up ahead, then paused) resumed when there is one.
    /// `Resume` is sent; the caller awaits its answer.
    pub(super) async fn restore_vm(
        &self,
        s: &Start<'_>,
        snap: &Snapshot,
        spec: VmSpec,
        kind: Origin,
        spare: Option<Spare>,
    ) -> Result<Instance, LaunchError> {
        let (f, id, log) = (s.f, s.id.clone(), s.log.clone());
        // A spare keeps its own directory; the instance takes the new id.
        let (inst, loaded) = match spare {
            Some(spare) => {
                if let Err(e) = spare.vm.foreground() {
                    tracing::warn!(error = %e, "a spare keeps the lowest CPU priority");
                }
                let registry = self.registry.clone();
                let inst =
                    Instance::attach_channel(f, id, spare.vm, spare.channel, log, registry, kind);
                (inst, true)
            }
            None => {
                let mut spec = spec;
                spec.net = self.network_for(f).await?;
                let vm = self.engine.boot(spec).await?;
                let inst = Instance::attach(f, id, vm, log, self.registry.clone(), kind)?;
                (inst, false)
            }
        };
        let mut inst = inst;
        let restored = async {
            if !loaded {
                inst.load(&snap.state()).await?;
            }
            // `Resume` waits in the channel before the guest runs (again,
            // for a spare): the agent reads it at once. Only once the state
            // is loaded: QEMU's main loop runs during a load, and a message
            // handed to the half-loaded serial device could be lost.
            let id = inst.id.clone();
            inst.link().resume(&id)?;
            inst.run_loaded().await
        };
        if let Err(e) = restored.await {
            inst.stop().await;
            return Err(e);
        }
        Ok(inst)
    }

    /// Restores a clone of a function snapshot and waits until its runtime
    /// asks for an event (after its after-restore hooks, if any).
    async fn restore_function(
        &self,
        s: &Start<'_>,
        snap: &Snapshot,
        disks: &Disks,
        spare: bool,
    ) -> Result<Started, LaunchError> {
        let started = Instant::now();
        let taken = self.take_spare(&snap.key);
        let had_spare = taken.is_some();
        let spec = self.restore_spec(s.f, &s.id, Memory::Clone(snap.memory()), disks);
        let mut inst = self
            .restore_vm(s, snap, spec, Origin::FunctionSnapshot, taken)
            .await?;
        let restored = started.elapsed();
        if spare {
            let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
            let spec = self.restore_spec(s.f, &id, Memory::Clone(snap.memory()), disks);
            self.refill_spare(s.f, snap, spec);
        }
        resumed(&mut inst).await?;
        let resumed_at = started.elapsed();
        match inst
            .link()
            .restored(Instant::now() + self.settings.init_timeout)
            .await
        {
            Ok(hooks) => {
                tracing::debug!(instance = %inst.id, had_spare, restored_ms = restored.as_millis() as u64,
                    resumed_ms = resumed_at.as_millis() as u64, hooks_ms = hooks.as_millis() as u64,
                    total_ms = started.elapsed().as_millis() as u64, "function snapshot restored");
                inst.pending_restore = Some(started.elapsed());
                inst.set_state(InstanceState::Idle);
                Ok(Started::Ready(inst))
            }
            Err(Some(failure)) => {
                inst.stop().await;
                Ok(Started::InitFailed(failure))
            }
            Err(None) => {
                let console = inst.console_tail();
                inst.stop().await;
                Err(LaunchError::ResumeFailed(console))
            }
        }
    }

    /// Boots a VM for `f`, configures it and waits for the runtime's init.
    async fn boot_and_init(&self, s: &Start<'_>, images: Images) -> Result<Started, LaunchError> {
        let has_layers = images.opt.is_some();
        let drives = std::iter::once(images.code).chain(images.opt).collect();
        let mut spec = self.spec(s.f, &s.id, Memory::Anonymous, drives, false);
        spec.net = self.network_for(s.f).await?;
        let boot_started = Instant::now();
        let vm = self.engine.boot(spec).await?;
        let mut inst = Instance::attach(
            s.f,
            s.id.clone(),
            vm,
            s.log.clone(),
            self.registry.clone(),
            Origin::Boot,
        )?;
        self.await_ready(&mut inst, boot_started).await?;
        tracing::debug!(instance = %s.id, boot_ms = boot_started.elapsed().as_millis() as u64, "guest agent ready");
        Ok(self.configure_and_init(inst, s.f, has_layers, false).await)
    }

    /// Waits for the agent of a VM booted at `booted` to say `Ready`.
    pub(super) async fn await_ready(
        &self,
        inst: &mut Instance,
        booted: Instant,
    ) -> Result<(), LaunchError> {
        let limit = self.settings.boot_timeout;
        match inst.link().ready(booted + limit).await {
            Waited::Got(()) => Ok(()),
            Waited::Ended(_) => Err(LaunchError::BootFailed(inst.console_tail())),
            Waited::TimedOut => Err(LaunchError::BootTimeout(limit, inst.console_tail())),
        }
    }

    /// Sends `Configure` and waits for the runtime's init. On failure the
    /// instance is stopped and the failure is the outcome.
    pub(super) async fn configure_and_init(
        &self,
        mut inst: Instance,
        f: &Function,
        has_layers: bool,
        snap_start: bool,
    ) -> Started {
        let s = &self.settings;
        let (id, stream) = (inst.id.clone(), inst.log.name.clone());
        let configured = inst.link().configure(&Setup {
            function: f,
            instance_id: &id,
            function_arn: f.arn(&s.region, &s.account_id),
            region: &s.region,
            log_stream: &stream,
            has_layers,
            snap_start,
        });
        // The init that builds a function snapshot has SnapStart's limit.
        let limit = if snap_start {
            s.snapshot_init_timeout
        } else {
            s.init_timeout
        };
        let outcome = match configured {
            Ok(()) => inst.link().init(limit).await,
            Err(_) => Err(crate::guest::FunctionFailure::exited_early()),
        };
        match outcome {
            Ok(init_duration) => {
                inst.pending_init = Some(init_duration);
                inst.set_state(InstanceState::Idle);
                Started::Ready(inst)
            }
            Err(failure) => {
                if failure.error_type == "Runtime.ExitError" {
                    tracing::warn!(instance = %id, console = %inst.console_tail(), "guest stopped during init");
                }
                inst.stop().await;
                Started::InitFailed(failure)
            }
        }
    }
}

/// What every path of a start carries: the function, the new instance's
/// id and its log stream.
pub(super) struct Start<'a> {
    pub f: &'a Function,
    pub id: String,
    pub log: LogStream,
}

/// Waits for the agent's answer to `Resume` (sent by `restore_vm`).
pub(super) async fn resumed(inst: &mut Instance) -> Result<(), LaunchError> {
    match inst.link().resumed(Instant::now() + RESUME_LIMIT).await {
        Waited::Got(()) => Ok(()),
        Waited::Ended(_) | Waited::TimedOut => Err(LaunchError::ResumeFailed(inst.console_tail())),
    }
}
