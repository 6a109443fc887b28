//! How instances start: a restored function snapshot, a restored runtime
//! snapshot followed by the function's init, or a cold boot. And how
//! snapshots are built.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use flint_proto::agent::v1::{host_message, Configure, Resume};

use super::spare::Spare;
use super::{
    unix_ms, AgentEvent, Instance, InstanceState, Origin, Pool, PoolError, Preparation, Started,
    StartingSpare,
};
use crate::engine::{Memory, VmSpec};
use crate::functions::Function;
use crate::guest::{error_doc, exit_reason};
use crate::logs::LogStream;
use crate::snapshot::{Snapshot, SnapshotKind};

/// Host memory a spare takes (measured with TCG and a 128 MB guest: RSS
/// 58 MB, of which 14 MB snapshot pages shared with the clones and 8 MB code
/// translated during the warm-up).
const SPARE_MB: u64 = 60;

/// A function snapshot, or the init failure that prevented it.
enum FunctionSnapshot {
    Ready(Snapshot),
    InitFailed(Started),
}

/// The code and layer disks of a VM (the layer disk may be the placeholder).
struct Disks {
    code: PathBuf,
    opt: PathBuf,
    has_layers: bool,
}

fn entropy() -> Vec<u8> {
    let mut e = vec![0u8; 64];
    if let Ok(mut r) = std::fs::File::open("/dev/urandom") {
        let _ = r.read_exact(&mut e);
    }
    e
}

/// Sends `Resume`: the wall clock, fresh entropy and the instance's
/// identity, applied by the agent before anything else.
fn send_resume(inst: &Instance) -> Result<(), PoolError> {
    inst.send(host_message::Kind::Resume(Resume {
        wall_clock_unix_ms: unix_ms(SystemTime::now()),
        entropy: entropy(),
        instance_id: inst.id.clone(),
    }))
}

fn vcpus(memory_mb: u32) -> u32 {
    // Lambda gives a full vCPU at 1769 MB.
    memory_mb.div_ceil(1769).clamp(1, 6)
}

/// Checksums and publishes a staged snapshot of `f`'s VM (blocking work).
async fn commit(
    snaps: Arc<crate::snapshot::SnapshotStore>,
    staging: PathBuf,
    key: &str,
    kind: SnapshotKind,
    f: &Function,
    description: String,
) -> Result<Snapshot, PoolError> {
    let (key, memory_mb, n) = (key.to_string(), f.memory_mb, vcpus(f.memory_mb));
    tokio::task::spawn_blocking(move || {
        snaps.commit(&staging, &key, kind, memory_mb, n, description)
    })
    .await
    .map_err(snap_err)?
    .map_err(snap_err)
}

fn snap_err(e: impl std::fmt::Display) -> PoolError {
    PoolError::Snapshot(e.to_string())
}

impl Pool {
    /// Starts an instance of `f`: a restored function snapshot where there
    /// is one (published versions, and `$LATEST` when configured), else a
    /// restored runtime snapshot that then runs the function's init, else
    /// (no snapshots, or they fail) a cold boot.
    ///
    /// The start waits for a slot ([`Starts`]) until `deadline` (none: as
    /// long as it takes); the init limit runs from when it has one.
    pub async fn start(
        &self,
        f: &Function,
        code_image: PathBuf,
        opt_image: Option<PathBuf>,
        instance_id: String,
        log: LogStream,
        deadline: Option<Instant>,
    ) -> Result<Started, PoolError> {
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
        self.start_in_slot(f, code_image, opt_image, instance_id, log)
            .await
    }

    /// Builds `f`'s function snapshot ahead of its first invocation (when a
    /// version is published). `Ok(None)`: built, or snapshots do not apply;
    /// `Ok(Some(error type))`: the function's init failed.
    pub async fn prepare(
        &self,
        f: &Function,
        code_image: PathBuf,
        opt_image: Option<PathBuf>,
    ) -> Result<Option<String>, PoolError> {
        if !self.gets_function_snapshot(f) {
            return Ok(None);
        }
        let key = self.function_key(f);
        let lock = self.build_lock(&key);
        let _guard = lock.lock().await;
        let found = self.lookup(&key).await;
        if !matches!(found, Ok(None)) {
            self.set_preparation(f, None);
            return found.map(|_| None);
        }
        let _slot = self.starts.acquire(&f.name, None).await?;
        let disks = match self.disks(&code_image, opt_image.as_ref()).await {
            Ok(d) => d,
            Err(e) => {
                self.set_preparation(f, Some(Preparation::SnapshotFailed(e.to_string())));
                return Err(e);
            }
        };
        match self.build_function_snapshot(f, &disks, &key).await? {
            FunctionSnapshot::Ready(_) => Ok(None),
            FunctionSnapshot::InitFailed(Started::InitFailed { error_type, .. }) => {
                Ok(Some(error_type))
            }
            FunctionSnapshot::InitFailed(Started::Ready(inst)) => {
                inst.stop().await;
                Ok(None)
            }
        }
    }

    /// The drives a restore needs, padded to the snapshot's sizes.
    async fn disks(
        &self,
        code_image: &std::path::Path,
        opt_image: Option<&PathBuf>,
    ) -> Result<Disks, PoolError> {
        let snaps = self
            .snapshots
            .clone()
            .ok_or_else(|| snap_err("snapshots are off"))?;
        let (code, opt) = (code_image.to_path_buf(), opt_image.cloned());
        tokio::task::spawn_blocking(move || -> Result<Disks, PoolError> {
            crate::snapshot::pad_disk(&code).map_err(snap_err)?;
            let has_layers = opt.is_some();
            let opt = match opt {
                Some(o) => {
                    crate::snapshot::pad_disk(&o).map_err(snap_err)?;
                    o
                }
                None => snaps.placeholder().map_err(snap_err)?,
            };
            Ok(Disks {
                code,
                opt,
                has_layers,
            })
        })
        .await
        .map_err(snap_err)
        .and_then(|r| r)
    }

    async fn start_in_slot(
        &self,
        f: &Function,
        code_image: PathBuf,
        opt_image: Option<PathBuf>,
        instance_id: String,
        log: LogStream,
    ) -> Result<Started, PoolError> {
        if self.snapshots.is_none() {
            return self
                .boot_and_init(f, code_image, opt_image, instance_id, log)
                .await;
        };
        let disks = match self.disks(&code_image, opt_image.as_ref()).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(function = %f.name, error = %e, "preparing the disks for a restore failed; booting");
                return self
                    .boot_and_init(f, code_image, opt_image, instance_id, log)
                    .await;
            }
        };
        if self.gets_function_snapshot(f) {
            // A transient failure (a VMM that did not start, a slow guest)
            // gets one more try before the instance is started without the
            // function snapshot.
            for attempt in 1..=2 {
                match self.function_snapshot(f, &disks).await {
                    Ok(FunctionSnapshot::Ready(snap)) => {
                        match self
                            .restore_function(f, &snap, &disks, instance_id.clone(), log.clone())
                            .await
                        {
                            Ok(started) => return Ok(started),
                            Err(e) => tracing::warn!(function = %f.name, attempt, error = %e,
                                "restoring the function snapshot failed"),
                        }
                    }
                    Ok(FunctionSnapshot::InitFailed(failed)) => return Ok(failed),
                    Err(e) => tracing::warn!(function = %f.name, attempt, error = %e,
                        "building the function snapshot failed"),
                }
            }
            tracing::warn!(function = %f.name, version = %f.version,
                "starting without the function snapshot: from the runtime snapshot");
        }
        match self.runtime_snapshot(f).await {
            Ok(rs) => {
                let restored = self
                    .restore_vm(
                        f,
                        &rs,
                        Memory::Clone(rs.memory()),
                        &disks,
                        instance_id.clone(),
                        log.clone(),
                        Origin::RuntimeSnapshot,
                        None,
                    )
                    .await;
                match restored {
                    Ok(mut inst) => {
                        self.resumed(&mut inst).await?;
                        self.configure_and_init(inst, f, disks.has_layers, false)
                            .await
                    }
                    Err(e) => {
                        tracing::warn!(function = %f.name, error = %e, "restoring the runtime snapshot failed; booting");
                        self.boot_and_init(f, code_image, opt_image, instance_id, log)
                            .await
                    }
                }
            }
            Err(e) => {
                tracing::warn!(function = %f.name, error = ?e, "no runtime snapshot; booting");
                self.boot_and_init(f, code_image, opt_image, instance_id, log)
                    .await
            }
        }
    }

    fn build_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.building
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    /// The key of the runtime snapshot `f` starts from.
    pub fn runtime_key(&self, f: &Function) -> String {
        crate::snapshot::runtime_key(
            self.engine.accel().accel.name(),
            &self.settings.kernel,
            &self.settings.runtime_image(f.runtime),
            f.memory_mb,
            vcpus(f.memory_mb),
        )
    }

    /// The key of `f`'s function snapshot: everything its init depends on.
    pub fn function_key(&self, f: &Function) -> String {
        let s = &self.settings;
        crate::snapshot::function_key(&self.runtime_key(f), f, &s.region, &s.account_id)
    }

    async fn lookup(&self, key: &str) -> Result<Option<Snapshot>, PoolError> {
        let snaps = self
            .snapshots
            .clone()
            .ok_or_else(|| snap_err("snapshots are off"))?;
        let k = key.to_string();
        tokio::task::spawn_blocking(move || snaps.get(&k))
            .await
            .map_err(snap_err)
    }

    /// The runtime snapshot for `f`'s runtime and memory size, built by a
    /// cold boot if there is none.
    pub(super) async fn runtime_snapshot(&self, f: &Function) -> Result<Snapshot, PoolError> {
        let snaps = self
            .snapshots
            .clone()
            .ok_or_else(|| snap_err("snapshots are off"))?;
        let key = self.runtime_key(f);
        let lock = self.build_lock(&key);
        let _guard = lock.lock().await;
        if let Some(s) = self.lookup(&key).await? {
            return Ok(s);
        }
        let s = &self.settings;
        let started = Instant::now();
        let staging = snaps.staging(&key).map_err(snap_err)?;
        let placeholder = snaps.placeholder().map_err(snap_err)?;
        let id = format!("rt-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let spec = self.spec(
            f,
            &id,
            Memory::Template(staging.join("memory")),
            vec![placeholder.clone(), placeholder],
            false,
        );
        let built = async {
            let vm = self.engine.boot(spec).await?;
            let log = self
                .template_logs
                .open_stream("_snapshots", "runtime", &id)
                .map_err(snap_err)?;
            let mut inst = Instance::attach(
                f,
                id.clone(),
                vm,
                log,
                self.registry.clone(),
                Origin::SnapshotBuild,
            )?;
            let r = match self.await_ready(&mut inst, started + s.boot_timeout).await {
                Ok(()) => inst.snapshot(&staging.join("state")).await,
                Err(e) => Err(e),
            };
            inst.stop().await;
            r
        }
        .await;
        if let Err(e) = built {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        let desc = format!("runtime {} with {} MB", f.runtime.name(), f.memory_mb);
        let snap = commit(snaps, staging, &key, SnapshotKind::Runtime, f, desc).await?;
        tracing::info!(snapshot = %key, ms = started.elapsed().as_millis() as u64, "runtime snapshot built");
        Ok(snap)
    }

    /// `f`'s function snapshot, built if there is none: a runtime snapshot
    /// restored into a copy of its memory, the function's init run (with
    /// `AWS_LAMBDA_INITIALIZATION_TYPE=snap-start`), and the VM snapshotted
    /// when the runtime waits (in `restore/next` or `next`).
    async fn function_snapshot(
        &self,
        f: &Function,
        disks: &Disks,
    ) -> Result<FunctionSnapshot, PoolError> {
        let key = self.function_key(f);
        let lock = self.build_lock(&key);
        let _guard = lock.lock().await;
        if let Some(s) = self.lookup(&key).await? {
            return Ok(FunctionSnapshot::Ready(s));
        }
        self.build_function_snapshot(f, disks, &key).await
    }

    /// Builds `f`'s function snapshot under `key`; the caller holds its
    /// build lock. The version's state says so meanwhile, and after.
    async fn build_function_snapshot(
        &self,
        f: &Function,
        disks: &Disks,
        key: &str,
    ) -> Result<FunctionSnapshot, PoolError> {
        self.set_preparation(f, Some(Preparation::Pending));
        let r = self.build_function_snapshot_now(f, disks, key).await;
        self.set_preparation(
            f,
            match &r {
                Ok(FunctionSnapshot::Ready(_)) => None,
                Ok(FunctionSnapshot::InitFailed(Started::InitFailed { error_type, .. })) => {
                    Some(Preparation::InitFailed(error_type.clone()))
                }
                Ok(FunctionSnapshot::InitFailed(Started::Ready(_))) => None,
                Err(e) => Some(Preparation::SnapshotFailed(e.to_string())),
            },
        );
        r
    }

    async fn build_function_snapshot_now(
        &self,
        f: &Function,
        disks: &Disks,
        key: &str,
    ) -> Result<FunctionSnapshot, PoolError> {
        let snaps = self
            .snapshots
            .clone()
            .ok_or_else(|| snap_err("snapshots are off"))?;
        let started = Instant::now();
        let rs = self.runtime_snapshot(f).await?;
        let staging = snaps.staging(key).map_err(snap_err)?;
        // The template writes into its own copy of the runtime's memory.
        let (from, to) = (rs.memory(), staging.join("memory"));
        let copied = tokio::task::spawn_blocking(move || {
            std::process::Command::new("cp")
                .arg("--sparse=always")
                .arg(&from)
                .arg(&to)
                .status()
        })
        .await
        .map_err(snap_err)?
        .map_err(snap_err)?;
        if !copied.success() {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(snap_err("copying the runtime snapshot's memory failed"));
        }
        let id = format!("fn-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let log = self
            .template_logs
            .open_stream(&f.name, &f.version, &format!("snapshot-{}", &key[..8]))
            .map_err(snap_err)?;
        let outcome = async {
            let mut inst = self
                .restore_vm(
                    f,
                    &rs,
                    Memory::Template(staging.join("memory")),
                    disks,
                    id.clone(),
                    log.clone(),
                    Origin::SnapshotBuild,
                    None,
                )
                .await?;
            self.resumed(&mut inst).await?;
            match self
                .configure_and_init(inst, f, disks.has_layers, true)
                .await?
            {
                Started::Ready(mut inst) => {
                    let r = inst.snapshot(&staging.join("state")).await;
                    inst.stop().await;
                    r.map(|_| None)
                }
                failed => Ok(Some(failed)),
            }
        }
        .await;
        match outcome {
            Ok(None) => {}
            Ok(Some(failed)) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Ok(FunctionSnapshot::InitFailed(failed));
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        }
        let desc = format!("function {}:{}", f.name, f.version);
        let snap = commit(snaps, staging, key, SnapshotKind::Function, f, desc).await?;
        tracing::info!(function = %f.name, version = %f.version, snapshot = %key,
            ms = started.elapsed().as_millis() as u64, "function snapshot built");
        Ok(FunctionSnapshot::Ready(snap))
    }

    /// The one place a VM of `f` is described: its kernel, its runtime's
    /// image as `/`, `drives` after it, its memory and vCPUs. `incoming`:
    /// it waits for a snapshot's state instead of booting.
    fn spec(
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
        }
    }

    /// A VM that restores a snapshot of `f` with `disks`.
    fn vm_spec(&self, f: &Function, id: &str, memory: Memory, disks: &Disks) -> VmSpec {
        let drives = vec![disks.code.clone(), disks.opt.clone()];
        self.spec(f, id, memory, drives, true)
    }

    /// A VM restored from `snap`: a spare ([`Spare`]: started, loaded and
    /// warmed up ahead, then paused) resumed when there is one.
    #[allow(clippy::too_many_arguments)]
    async fn restore_vm(
        &self,
        f: &Function,
        snap: &Snapshot,
        memory: Memory,
        disks: &Disks,
        id: String,
        log: LogStream,
        kind: Origin,
        spare: Option<Spare>,
    ) -> Result<Instance, PoolError> {
        // A spare keeps its own directory; the instance takes the new id.
        let (inst, loaded) = match spare {
            Some(spare) => {
                if let Err(e) = spare.vm.foreground() {
                    tracing::warn!(error = %e, "a spare keeps the lowest CPU priority");
                }
                (
                    Instance::attach_channel(
                        f,
                        id,
                        spare.vm,
                        spare.channel,
                        log,
                        self.registry.clone(),
                        kind,
                    ),
                    true,
                )
            }
            None => {
                let vm = self
                    .engine
                    .boot(self.vm_spec(f, &id, memory, disks))
                    .await?;
                (
                    Instance::attach(f, id, vm, log, self.registry.clone(), kind)?,
                    false,
                )
            }
        };
        let restored = async {
            if !loaded {
                inst.load(&snap.state()).await?;
            }
            // `Resume` waits in the channel before the guest runs (again,
            // for a spare): the agent reads it at once. Only once the state
            // is loaded: QEMU's main loop runs during a load, and a message
            // handed to the half-loaded serial device could be lost.
            send_resume(&inst)?;
            inst.run_loaded().await
        };
        if let Err(e) = restored.await {
            inst.stop().await;
            return Err(e);
        }
        Ok(inst)
    }

    /// Waits for the agent's answer to `Resume` (sent by `restore_vm`).
    async fn resumed(&self, inst: &mut Instance) -> Result<(), PoolError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match inst.next_event(deadline).await {
                Some(AgentEvent::Resumed) => return Ok(()),
                Some(AgentEvent::Closed) | None => {
                    return Err(PoolError::ResumeFailed(inst.console_tail()));
                }
                Some(_) => {}
            }
        }
    }

    /// Restores a clone of a function snapshot and waits until its runtime
    /// asks for an event (after its after-restore hooks, if any).
    async fn restore_function(
        &self,
        f: &Function,
        snap: &Snapshot,
        disks: &Disks,
        id: String,
        log: LogStream,
    ) -> Result<Started, PoolError> {
        let started = Instant::now();
        let spare = self.take_spare(&snap.key);
        let had_spare = spare.is_some();
        let mut inst = self
            .restore_vm(
                f,
                snap,
                Memory::Clone(snap.memory()),
                disks,
                id,
                log,
                Origin::FunctionSnapshot,
                spare,
            )
            .await?;
        let restored = started.elapsed();
        self.refill_spare(f, snap, disks);
        self.resumed(&mut inst).await?;
        let resumed = started.elapsed();
        let deadline = Instant::now() + self.settings.init_timeout;
        loop {
            match inst.next_event(deadline).await {
                Some(AgentEvent::RestoreDone { restore_duration }) => {
                    tracing::debug!(instance = %inst.id, had_spare, restored_ms = restored.as_millis() as u64,
                        resumed_ms = resumed.as_millis() as u64, hooks_ms = restore_duration.as_millis() as u64,
                        total_ms = started.elapsed().as_millis() as u64, "function snapshot restored");
                    inst.pending_restore = Some(started.elapsed());
                    inst.set_state(InstanceState::Idle);
                    return Ok(Started::Ready(inst));
                }
                Some(AgentEvent::RestoreError {
                    error_type,
                    payload,
                }) => {
                    inst.stop().await;
                    return Ok(Started::InitFailed {
                        error_type,
                        payload,
                        init_duration: None,
                    });
                }
                Some(AgentEvent::RuntimeExit { exit_code, signal }) => {
                    inst.stop().await;
                    let reason = exit_reason(exit_code, signal);
                    return Ok(Started::InitFailed {
                        error_type: "Runtime.ExitError".into(),
                        payload: error_doc(
                            "Runtime.ExitError",
                            &format!("Runtime exited with error: {reason}"),
                        ),
                        init_duration: None,
                    });
                }
                Some(AgentEvent::Closed) | None => {
                    let console = inst.console_tail();
                    inst.stop().await;
                    return Err(PoolError::ResumeFailed(console));
                }
                Some(_) => {}
            }
        }
    }

    fn take_spare(&self, key: &str) -> Option<Spare> {
        let mut spares = self.spares.lock().unwrap_or_else(|p| p.into_inner());
        let list = spares.lists.get_mut(key)?;
        while let Some(spare) = list.vms.pop() {
            if !spare.vm.has_exited() {
                return Some(spare);
            }
        }
        None
    }

    /// Starts a spare for the next clone of `snap` ([`Spare`]: its QEMU
    /// process started, the state loaded, the guest warmed up and paused),
    /// so that none of it is on the critical path.
    fn refill_spare(&self, f: &Function, snap: &Snapshot, disks: &Disks) {
        // A spare counts against the memory budget like an instance; where
        // there is no room for one, restores start their own process.
        if !self.settings.spare_vms || !self.has_room(SPARE_MB) {
            return;
        }
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let spec = VmSpec {
            background: true,
            ..self.vm_spec(f, &id, Memory::Clone(snap.memory()), disks)
        };
        let engine = self.engine.clone();
        let spares = self.spares.clone();
        let key = snap.key.clone();
        let function = f.name.clone();
        let state = snap.state();
        let (cancel, cancelled) = tokio::sync::watch::channel(false);
        let mut book = self.spares.lock().unwrap_or_else(|p| p.into_inner());
        let task = tokio::spawn({
            let (id, function) = (id.clone(), function.clone());
            async move {
                let started =
                    Spare::start(engine.as_ref(), spec, &state, entropy(), cancelled).await;
                let extra = {
                    let mut book = spares.lock().unwrap_or_else(|p| p.into_inner());
                    // Gone from the book: its function's spares were dropped.
                    let wanted = match book.starting.iter().position(|s| s.id == id) {
                        Some(i) => {
                            book.starting.swap_remove(i);
                            true
                        }
                        None => false,
                    };
                    match started {
                        Ok(Some(spare)) if wanted => {
                            let list = book.lists.entry(key).or_default();
                            if list.vms.is_empty() {
                                list.function = function;
                                list.vms.push(spare);
                                None
                            } else {
                                Some(spare)
                            }
                        }
                        Ok(Some(spare)) => Some(spare),
                        Ok(None) => None, // cancelled, and stopped
                        Err(e) => {
                            tracing::warn!(error = %e, "starting a spare VMM failed");
                            None
                        }
                    }
                };
                if let Some(mut spare) = extra {
                    let _ = spare.vm.stop().await;
                }
            }
        });
        book.starting.push(StartingSpare {
            id,
            function,
            cancel,
            task,
        });
    }

    /// Boots a VM for `f`, configures it and waits for the runtime's init.
    pub(super) async fn boot_and_init(
        &self,
        f: &Function,
        code_image: PathBuf,
        opt_image: Option<PathBuf>,
        instance_id: String,
        log: LogStream,
    ) -> Result<Started, PoolError> {
        let s = &self.settings;
        let has_layers = opt_image.is_some();
        let drives = std::iter::once(code_image).chain(opt_image).collect();
        let spec = self.spec(f, &instance_id, Memory::Anonymous, drives, false);
        let boot_started = Instant::now();
        let vm = self.engine.boot(spec).await?;
        let mut inst = Instance::attach(
            f,
            instance_id.clone(),
            vm,
            log,
            self.registry.clone(),
            Origin::Boot,
        )?;
        self.await_ready(&mut inst, boot_started + s.boot_timeout)
            .await?;
        tracing::debug!(instance = %instance_id, boot_ms = boot_started.elapsed().as_millis() as u64, "guest agent ready");
        self.configure_and_init(inst, f, has_layers, false).await
    }

    async fn await_ready(&self, inst: &mut Instance, deadline: Instant) -> Result<(), PoolError> {
        loop {
            match inst.next_event(deadline).await {
                Some(AgentEvent::Ready) => return Ok(()),
                Some(AgentEvent::Closed) | Some(AgentEvent::RuntimeExit { .. }) => {
                    return Err(PoolError::BootFailed(inst.console_tail()));
                }
                Some(_) => {}
                None => {
                    return Err(PoolError::BootTimeout(
                        self.settings.boot_timeout,
                        inst.console_tail(),
                    ));
                }
            }
        }
    }

    /// Sends `Configure` and waits for the runtime's init. On failure the
    /// instance is stopped and the failure is the outcome.
    async fn configure_and_init(
        &self,
        mut inst: Instance,
        f: &Function,
        has_layers: bool,
        snap_start: bool,
    ) -> Result<Started, PoolError> {
        let s = &self.settings;
        inst.send(host_message::Kind::Configure(Configure {
            instance_id: inst.id.clone(),
            function_name: f.name.clone(),
            function_version: f.version.clone(),
            function_arn: f.arn(&s.region, &s.account_id),
            handler: f.handler.clone(),
            runtime_entry: f.runtime.entry_point().into(),
            memory_size_mb: f.memory_mb,
            timeout_s: f.timeout_s,
            region: s.region.clone(),
            log_group: crate::logs::FunctionLogs::group(&f.name),
            log_stream: inst.log.name.clone(),
            environment: f.environment.clone().into_iter().collect(),
            wall_clock_unix_ms: unix_ms(SystemTime::now()),
            entropy: entropy(),
            code_device: "/dev/vdb".into(),
            runtime: f.runtime.name().into(),
            ephemeral_storage_mb: f.ephemeral_mb,
            opt_device: if has_layers {
                "/dev/vdc".into()
            } else {
                String::new()
            },
            snap_start,
        }))?;
        // The init that builds a function snapshot has SnapStart's limit.
        let limit = if snap_start {
            s.snapshot_init_timeout
        } else {
            s.init_timeout
        };
        let deadline = Instant::now() + limit;
        loop {
            match inst.next_event(deadline).await {
                Some(AgentEvent::InitDone { init_duration }) => {
                    inst.pending_init = Some(init_duration);
                    inst.set_state(InstanceState::Idle);
                    return Ok(Started::Ready(inst));
                }
                Some(AgentEvent::InitError {
                    error_type,
                    payload,
                    init_duration,
                }) => {
                    inst.stop().await;
                    return Ok(Started::InitFailed {
                        error_type,
                        payload,
                        init_duration: Some(init_duration),
                    });
                }
                Some(AgentEvent::RuntimeExit { exit_code, signal }) => {
                    let reason = exit_reason(exit_code, signal);
                    inst.stop().await;
                    return Ok(Started::InitFailed {
                        error_type: "Runtime.ExitError".into(),
                        payload: error_doc(
                            "Runtime.ExitError",
                            &format!("Runtime exited with error: {reason}"),
                        ),
                        init_duration: None,
                    });
                }
                Some(AgentEvent::Closed) => {
                    let console = inst.console_tail();
                    let id = inst.id.clone();
                    inst.stop().await;
                    tracing::warn!(instance = %id, %console, "guest stopped during init");
                    return Ok(Started::InitFailed {
                        error_type: "Runtime.ExitError".into(),
                        payload: error_doc(
                            "Runtime.ExitError",
                            "Runtime exited without providing a reason",
                        ),
                        init_duration: None,
                    });
                }
                Some(_) => {}
                None => {
                    inst.stop().await;
                    let secs = limit.as_secs_f64();
                    return Ok(Started::InitFailed {
                        error_type: "Sandbox.Timedout".into(),
                        payload: error_doc(
                            "Sandbox.Timedout",
                            &format!("Init timed out after {secs:.2} seconds"),
                        ),
                        init_duration: Some(limit),
                    });
                }
            }
        }
    }
}
