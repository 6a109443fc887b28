//! Instances of functions: starting them (boot, configure, init), keeping
//! the warm one for reuse, retiring stale or broken ones.
//!
//! For now a function has at most one instance; concurrent invocations of
//! one function wait for it in turn.

mod instance;
mod start;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::{Engine, EngineError};
use crate::logs::FunctionLogs;
use crate::snapshot::SnapshotStore;

pub use instance::{unix_ms, AgentEvent, Instance, InstanceInfo, InstanceState};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("starting the microVM failed")]
    Engine(#[from] EngineError),
    #[error("the VM gave no agent channel")]
    NoChannel,
    #[error("the agent channel is closed")]
    ChannelClosed,
    #[error("the guest agent did not start within {0:?}; console: {1}")]
    BootTimeout(Duration, String),
    #[error("the guest stopped while booting; console: {0}")]
    BootFailed(String),
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error("the restored guest did not answer: {0}")]
    ResumeFailed(String),
}

/// Where instances come from.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub kernel: PathBuf,
    pub artifacts_dir: PathBuf,
    pub run_dir: PathBuf,
    pub boot_timeout: Duration,
    pub init_timeout: Duration,
    pub region: String,
    pub account_id: String,
    /// Function snapshots for `$LATEST` too (always for published versions).
    pub snapshot_latest: bool,
    /// Keep a QEMU process started ahead for each function snapshot in use.
    pub spare_vms: bool,
    /// Stop the vCPUs of an instance between invocations.
    pub freeze_idle: bool,
    /// Stop instances idle for longer than this.
    pub idle_timeout: Duration,
}

/// The per-function place of its instance.
#[derive(Default)]
pub struct Slot {
    pub instance: Option<Instance>,
}

/// The result of starting an instance: ready, or its init failed (a function
/// error, reported to the invoker, not a node failure). Short-lived and moved
/// once, so the size of the `Ready` variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Started {
    Ready(Instance),
    InitFailed {
        error_type: String,
        payload: Vec<u8>,
        init_duration: Option<Duration>,
    },
}

/// QEMU processes started ahead for one function snapshot.
#[derive(Default)]
struct SpareList {
    function: String,
    vms: Vec<Box<dyn crate::engine::Vm>>,
}

/// Spares by snapshot key.
type Spares = Mutex<HashMap<String, SpareList>>;

pub struct Pool {
    engine: Arc<dyn Engine>,
    settings: PoolSettings,
    /// One slot per function version, keyed `name:version`.
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    registry: instance::Registry,
    /// None when snapshots are off.
    snapshots: Option<Arc<SnapshotStore>>,
    /// Log streams of snapshot templates.
    template_logs: FunctionLogs,
    /// One lock per snapshot key, so that one snapshot is built once.
    building: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// QEMU processes started ahead, waiting for a function snapshot's state.
    spares: Arc<Spares>,
}

/// The slot key of a function version.
pub fn slot_key(function: &str, version: &str) -> String {
    format!("{function}:{version}")
}

fn error_doc(error_type: &str, message: &str) -> Vec<u8> {
    serde_json::json!({"errorType": error_type, "errorMessage": message})
        .to_string()
        .into_bytes()
}

impl Pool {
    pub fn new(
        engine: Arc<dyn Engine>,
        settings: PoolSettings,
        snapshots: Option<Arc<SnapshotStore>>,
        template_logs: FunctionLogs,
    ) -> Self {
        Self {
            engine,
            settings,
            slots: Mutex::new(HashMap::new()),
            registry: Default::default(),
            snapshots,
            template_logs,
            building: Mutex::new(HashMap::new()),
            spares: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn snapshots(&self) -> Option<&Arc<SnapshotStore>> {
        self.snapshots.as_ref()
    }

    /// Whether idle instances are frozen.
    pub fn freeze_idle(&self) -> bool {
        self.settings.freeze_idle
    }

    /// Stops instances idle for longer than the idle timeout (busy ones are
    /// skipped). Returns the ids stopped.
    pub async fn reclaim_idle(&self) -> Vec<String> {
        let slots: Vec<_> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let cutoff = std::time::SystemTime::now() - self.settings.idle_timeout;
        let mut stopped = Vec::new();
        for slot in slots {
            // A slot that is locked is in use: not idle.
            let Ok(mut slot) = slot.try_lock() else {
                continue;
            };
            let idle = slot
                .instance
                .as_ref()
                .is_some_and(|i| i.last_used() < cutoff);
            if idle {
                if let Some(inst) = slot.instance.take() {
                    stopped.push(inst.id.clone());
                    inst.stop().await;
                }
            }
        }
        stopped
    }

    /// Every instance, as the node shows them.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<InstanceInfo> = reg
            .values()
            .map(|i| i.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect();
        out.sort_by_key(|i| i.created);
        out
    }

    /// Stops one instance, after its running invocation if it has one.
    /// Returns whether it was found.
    pub async fn stop_instance(&self, id: &str) -> bool {
        let Some((function, version)) = self
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|i| {
                let i = i.lock().unwrap_or_else(|p| p.into_inner());
                (i.function.clone(), i.version.clone())
            })
        else {
            return false;
        };
        let slot = self.slot(&slot_key(&function, &version));
        let mut slot = slot.lock().await;
        if slot.instance.as_ref().is_some_and(|i| i.id == id) {
            if let Some(inst) = slot.instance.take() {
                inst.stop().await;
                return true;
            }
        }
        false
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    pub fn slot(&self, function: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(function.to_string())
            .or_default()
            .clone()
    }

    /// Stops the QEMU processes started ahead for a function's snapshots
    /// (they are started again by its next restore).
    async fn drop_spares(&self, function: &str) {
        let vms: Vec<_> = {
            let mut map = self.spares.lock().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<String> = map
                .iter()
                .filter(|(_, l)| l.function == function)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| map.remove(&k))
                .flat_map(|l| l.vms)
                .collect()
        };
        for mut vm in vms {
            let _ = vm.stop().await;
        }
    }

    /// Stops the instance of one function version, after its running
    /// invocation if it has one.
    pub async fn retire_version(&self, function: &str, version: &str) {
        self.drop_spares(function).await;
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&slot_key(function, version))
            .cloned();
        if let Some(slot) = slot {
            let mut slot = slot.lock().await;
            if let Some(inst) = slot.instance.take() {
                inst.stop().await;
            }
        }
    }

    /// Stops every instance of a function (each after its running
    /// invocation). Returns the ids stopped.
    pub async fn retire(&self, function: &str) -> Vec<String> {
        self.drop_spares(function).await;
        let prefix = format!("{function}:");
        let slots: Vec<_> = {
            let mut map = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<String> = map
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .cloned()
                .collect();
            keys.into_iter().filter_map(|k| map.remove(&k)).collect()
        };
        let mut stopped = Vec::new();
        for slot in slots {
            if let Some(inst) = slot.lock().await.instance.take() {
                stopped.push(inst.id.clone());
                inst.stop().await;
            }
        }
        stopped
    }

    /// Stops every instance.
    pub async fn shutdown(&self) {
        let slots: Vec<_> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, s)| s)
            .collect();
        for slot in slots {
            if let Some(inst) = slot.lock().await.instance.take() {
                inst.stop().await;
            }
        }
        let spares: Vec<_> = self
            .spares
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .flat_map(|(_, l)| l.vms)
            .collect();
        for mut vm in spares {
            let _ = vm.stop().await;
        }
    }
}

/// Lambda's wording of a process end: `exit status 1` or `signal: killed`.
pub fn exit_reason(exit_code: i32, signal: i32) -> String {
    if signal != 0 {
        let name = match signal {
            9 => "killed".to_string(),
            6 => "aborted".to_string(),
            11 => "segmentation fault".to_string(),
            15 => "terminated".to_string(),
            n => format!("{n}"),
        };
        format!("signal: {name}")
    } else {
        format!("exit status {exit_code}")
    }
}
