//! Building snapshots: the runtime snapshot (a cold boot of the bare
//! runtime, snapshotted when its agent is ready) and a version's function
//! snapshot (the runtime snapshot restored into a copy of its memory, the
//! function's init run, the VM snapshotted when the runtime waits for its
//! first event). One build per key at a time; the keys are the snapshot
//! store's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::start::{resumed, Start};
use super::{vcpus, Images, Instance, LaunchError, Launcher, Origin, Preparation, Started};
use crate::engine::Memory;
use crate::functions::Function;
use crate::guest::FunctionFailure;
use crate::snapshot::{Snapshot, SnapshotKind, SnapshotStore};

/// A function snapshot, or the init failure that prevented it.
pub(super) enum FunctionSnapshot {
    Ready(Snapshot),
    InitFailed(FunctionFailure),
}

/// The code and layer disks of a restored VM (the layer disk may be the
/// placeholder), padded to the size every snapshot was taken with.
pub(super) struct Disks {
    pub code: PathBuf,
    pub opt: PathBuf,
    pub has_layers: bool,
}

/// Runs blocking snapshot-store work off the runtime.
async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T, crate::snapshot::SnapshotError> + Send + 'static,
) -> Result<T, LaunchError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| LaunchError::snapshot(what, e))?
        .map_err(|e| LaunchError::snapshot(what, e))
}

impl Launcher {
    fn store(&self) -> Result<Arc<SnapshotStore>, LaunchError> {
        self.snapshots.clone().ok_or(LaunchError::SnapshotsOff)
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

    pub(super) fn build_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.building
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    async fn lookup(&self, key: &str) -> Result<Option<Snapshot>, LaunchError> {
        let snaps = self.store()?;
        let k = key.to_string();
        tokio::task::spawn_blocking(move || snaps.get(&k))
            .await
            .map_err(|e| LaunchError::snapshot("looking up a snapshot", e))
    }

    /// The drives a restore needs, padded to the snapshot's sizes.
    pub(super) async fn disks(&self, images: &Images) -> Result<Disks, LaunchError> {
        let snaps = self.store()?;
        let (code, opt) = (images.code.clone(), images.opt.clone());
        blocking("padding the disks of a restore", move || {
            crate::snapshot::pad_disk(&code)?;
            let has_layers = opt.is_some();
            let opt = match opt {
                Some(o) => {
                    crate::snapshot::pad_disk(&o)?;
                    o
                }
                None => snaps.placeholder()?,
            };
            Ok(Disks {
                code,
                opt,
                has_layers,
            })
        })
        .await
    }

    /// Builds `f`'s function snapshot ahead of its first invocation (when a
    /// version is published). `Ok(None)`: built, or snapshots do not apply;
    /// `Ok(Some(error type))`: the function's init failed.
    pub async fn prepare(
        &self,
        f: &Function,
        images: Images,
    ) -> Result<Option<String>, LaunchError> {
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
        let disks = match self.disks(&images).await {
            Ok(d) => d,
            Err(e) => {
                self.set_preparation(f, Some(Preparation::SnapshotFailed(e.chain())));
                return Err(e);
            }
        };
        match self.build_function_snapshot(f, &disks, &key).await? {
            FunctionSnapshot::Ready(_) => Ok(None),
            FunctionSnapshot::InitFailed(failure) => Ok(Some(failure.error_type)),
        }
    }

    /// Checksums and publishes a staged snapshot of `f`'s VM.
    async fn commit(
        &self,
        staging: PathBuf,
        key: &str,
        kind: SnapshotKind,
        f: &Function,
        description: String,
    ) -> Result<Snapshot, LaunchError> {
        let snaps = self.store()?;
        let (key, memory_mb, n) = (key.to_string(), f.memory_mb, vcpus(f.memory_mb));
        blocking("publishing a snapshot", move || {
            snaps.commit(&staging, &key, kind, memory_mb, n, description)
        })
        .await
    }

    /// The runtime snapshot for `f`'s runtime and memory size, built by a
    /// cold boot if there is none.
    pub(super) async fn runtime_snapshot(&self, f: &Function) -> Result<Snapshot, LaunchError> {
        let snaps = self.store()?;
        let key = self.runtime_key(f);
        let lock = self.build_lock(&key);
        let _guard = lock.lock().await;
        if let Some(s) = self.lookup(&key).await? {
            return Ok(s);
        }
        let started = Instant::now();
        let (staging, placeholder) = {
            let (snaps, key) = (snaps.clone(), key.clone());
            blocking("staging a runtime snapshot", move || {
                Ok((snaps.staging(&key)?, snaps.placeholder()?))
            })
            .await?
        };
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
                .map_err(|e| LaunchError::snapshot("opening a template's log", e))?;
            let registry = self.registry.clone();
            let mut inst =
                Instance::attach(f, id.clone(), vm, log, registry, Origin::SnapshotBuild)?;
            let r = match self.await_ready(&mut inst, started).await {
                Ok(()) => inst.snapshot(&staging.join("state")).await,
                Err(e) => Err(e),
            };
            inst.stop().await;
            r
        }
        .await;
        if let Err(e) = built {
            crate::observe::count(&crate::observe::NODE.snapshot_build_failures);
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        crate::observe::count(&crate::observe::NODE.snapshot_builds);
        let desc = format!("runtime {} with {} MB", f.runtime.name(), f.memory_mb);
        let snap = self
            .commit(staging, &key, SnapshotKind::Runtime, f, desc)
            .await?;
        tracing::info!(snapshot = %key, ms = started.elapsed().as_millis() as u64, "runtime snapshot built");
        Ok(snap)
    }

    /// `f`'s function snapshot, built if there is none.
    pub(super) async fn function_snapshot(
        &self,
        f: &Function,
        disks: &Disks,
    ) -> Result<FunctionSnapshot, LaunchError> {
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
    ) -> Result<FunctionSnapshot, LaunchError> {
        self.set_preparation(f, Some(Preparation::Pending));
        let r = self.build_function_snapshot_now(f, disks, key).await;
        crate::observe::count(match &r {
            Ok(FunctionSnapshot::Ready(_)) => &crate::observe::NODE.snapshot_builds,
            _ => &crate::observe::NODE.snapshot_build_failures,
        });
        self.set_preparation(
            f,
            match &r {
                Ok(FunctionSnapshot::Ready(_)) => None,
                Ok(FunctionSnapshot::InitFailed(failure)) => {
                    Some(Preparation::InitFailed(failure.error_type.clone()))
                }
                Err(e) => Some(Preparation::SnapshotFailed(e.chain())),
            },
        );
        r
    }

    /// A runtime snapshot restored into a copy of its memory, the
    /// function's init run (with `AWS_LAMBDA_INITIALIZATION_TYPE=snap-start`),
    /// and the VM snapshotted when the runtime waits (in `restore/next` or
    /// `next`).
    async fn build_function_snapshot_now(
        &self,
        f: &Function,
        disks: &Disks,
        key: &str,
    ) -> Result<FunctionSnapshot, LaunchError> {
        let snaps = self.store()?;
        let started = Instant::now();
        let rs = self.runtime_snapshot(f).await?;
        let staging = {
            let (snaps, key) = (snaps.clone(), key.to_string());
            blocking("staging a function snapshot", move || snaps.staging(&key)).await?
        };
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
        .map_err(|e| LaunchError::snapshot("copying the runtime snapshot's memory", e))?
        .map_err(|e| LaunchError::snapshot("copying the runtime snapshot's memory", e));
        match copied {
            Ok(status) if status.success() => {}
            Ok(status) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(LaunchError::snapshot(
                    "copying the runtime snapshot's memory",
                    std::io::Error::other(format!("cp: {status}")),
                ));
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        }
        let id = format!("fn-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let log = self
            .template_logs
            .open_stream(&f.name, &f.version, &format!("snapshot-{}", &key[..8]))
            .map_err(|e| LaunchError::snapshot("opening a template's log", e))?;
        let template = Start { f, id, log };
        let outcome = async {
            let spec = self.restore_spec(
                f,
                &template.id,
                Memory::Template(staging.join("memory")),
                disks,
            );
            let mut inst = self
                .restore_vm(&template, &rs, spec, Origin::SnapshotBuild, None)
                .await?;
            resumed(&mut inst).await?;
            match self
                .configure_and_init(inst, f, disks.has_layers, true)
                .await
            {
                Started::Ready(mut inst) => {
                    let r = inst.snapshot(&staging.join("state")).await;
                    inst.stop().await;
                    r.map(|_| None)
                }
                Started::InitFailed(failure) => Ok(Some(failure)),
            }
        }
        .await;
        match outcome {
            Ok(None) => {}
            Ok(Some(failure)) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Ok(FunctionSnapshot::InitFailed(failure));
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        }
        let desc = format!("function {}:{}", f.name, f.version);
        let snap = self
            .commit(staging, key, SnapshotKind::Function, f, desc)
            .await?;
        tracing::info!(function = %f.name, version = %f.version, snapshot = %key,
            ms = started.elapsed().as_millis() as u64, "function snapshot built");
        Ok(FunctionSnapshot::Ready(snap))
    }
}
