//! Instances of functions: starting them (boot, configure, init), keeping
//! the warm one for reuse, retiring stale or broken ones.
//!
//! For now a function has at most one instance; concurrent invocations of
//! one function wait for it in turn.

mod instance;

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use flint_proto::agent::v1::{host_message, Configure};

use crate::engine::{Engine, EngineError, VmSpec};
use crate::functions::Function;
use crate::logs::LogStream;

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
}

/// The per-function place of its instance.
#[derive(Default)]
pub struct Slot {
    pub instance: Option<Instance>,
}

/// The result of starting an instance: ready, or its init failed (a function
/// error, reported to the invoker, not a node failure).
pub enum Started {
    Ready(Instance),
    InitFailed {
        error_type: String,
        payload: Vec<u8>,
        init_duration: Option<Duration>,
    },
}

pub struct Pool {
    engine: Arc<dyn Engine>,
    settings: PoolSettings,
    /// One slot per function version, keyed `name:version`.
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    registry: instance::Registry,
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
    pub fn new(engine: Arc<dyn Engine>, settings: PoolSettings) -> Self {
        Self {
            engine,
            settings,
            slots: Mutex::new(HashMap::new()),
            registry: Default::default(),
        }
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

    /// Stops the instance of one function version, after its running
    /// invocation if it has one.
    pub async fn retire_version(&self, function: &str, version: &str) {
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
    }

    /// Boots a VM for `f`, configures it and waits for the runtime's init.
    pub async fn start(
        &self,
        f: &Function,
        code_image: PathBuf,
        opt_image: Option<PathBuf>,
        instance_id: String,
        log: LogStream,
    ) -> Result<Started, PoolError> {
        let s = &self.settings;
        let spec = VmSpec {
            id: instance_id.clone(),
            dir: s.run_dir.join(&instance_id),
            kernel: s.kernel.clone(),
            rootfs: s.artifacts_dir.join(format!("{}.erofs", f.runtime.name())),
            drives: std::iter::once(code_image)
                .chain(opt_image.clone())
                .collect(),
            memory_mb: f.memory_mb,
            // Lambda gives a full vCPU at 1769 MB.
            vcpus: f.memory_mb.div_ceil(1769).clamp(1, 6),
        };
        let boot_started = Instant::now();
        let vm = self.engine.boot(spec).await?;
        let mut inst = Instance::attach(
            f,
            instance_id.clone(),
            vm,
            log.clone(),
            self.registry.clone(),
        )?;

        let deadline = boot_started + s.boot_timeout;
        loop {
            match inst.next_event(deadline).await {
                Some(AgentEvent::Ready) => break,
                Some(AgentEvent::Closed) | Some(AgentEvent::RuntimeExit { .. }) => {
                    let console = inst.console_tail();
                    inst.stop().await;
                    return Err(PoolError::BootFailed(console));
                }
                Some(_) => {}
                None => {
                    let console = inst.console_tail();
                    inst.stop().await;
                    return Err(PoolError::BootTimeout(s.boot_timeout, console));
                }
            }
        }
        tracing::debug!(instance = %instance_id, boot_ms = boot_started.elapsed().as_millis() as u64, "guest agent ready");

        let mut entropy = vec![0u8; 64];
        if let Ok(mut r) = std::fs::File::open("/dev/urandom") {
            let _ = r.read_exact(&mut entropy);
        }
        inst.send(host_message::Kind::Configure(Configure {
            instance_id: instance_id.clone(),
            function_name: f.name.clone(),
            function_version: f.version.clone(),
            function_arn: f.arn(&s.region, &s.account_id),
            handler: f.handler.clone(),
            runtime_entry: f.runtime.entry_point().into(),
            memory_size_mb: f.memory_mb,
            timeout_s: f.timeout_s,
            region: s.region.clone(),
            log_group: crate::logs::FunctionLogs::group(&f.name),
            log_stream: log.name.clone(),
            environment: f.environment.clone().into_iter().collect(),
            wall_clock_unix_ms: unix_ms(SystemTime::now()),
            entropy,
            code_device: "/dev/vdb".into(),
            runtime: f.runtime.name().into(),
            ephemeral_storage_mb: f.ephemeral_mb,
            opt_device: if opt_image.is_some() {
                "/dev/vdc".into()
            } else {
                String::new()
            },
        }))?;

        let deadline = Instant::now() + s.init_timeout;
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
                    inst.stop().await;
                    tracing::warn!(instance = %instance_id, %console, "guest stopped during init");
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
                    let secs = s.init_timeout.as_secs_f64();
                    return Ok(Started::InitFailed {
                        error_type: "Sandbox.Timedout".into(),
                        payload: error_doc(
                            "Sandbox.Timedout",
                            &format!("Init timed out after {secs:.2} seconds"),
                        ),
                        init_duration: Some(s.init_timeout),
                    });
                }
            }
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
