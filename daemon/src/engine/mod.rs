//! The VMM behind one trait. Only this module knows QEMU and QMP; the pool
//! sees [`Vm`] handles and a small set of operations.

mod accel;
mod console;
pub mod jail;
mod qemu;

use std::path::PathBuf;

use async_trait::async_trait;
use tokio::net::UnixStream;

pub use accel::{detect as detect_accel, Accel, AccelInfo};

/// Bumped when the device layout or the way VMs are started changes:
/// snapshots of another engine version are not restored.
pub const ENGINE_VERSION: u32 = 3;
pub use qemu::QemuEngine;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("preparing the instance directory {0} failed")]
    Prepare(PathBuf, #[source] std::io::Error),
    #[error("starting QEMU failed")]
    Spawn(#[source] std::io::Error),
    #[error("QEMU exited during start: {0}")]
    EarlyExit(String),
    #[error("QEMU did not connect within {0:?}")]
    ConnectTimeout(std::time::Duration),
    #[error("QMP command {command} failed: {message}")]
    Qmp {
        command: &'static str,
        message: String,
    },
    #[error("the accelerator {0} is not usable here: {1}")]
    Accel(&'static str, String),
    #[error("missing artefact {0}: run scripts/setup")]
    MissingArtefact(PathBuf),
    #[error("snapshot failed: {0}")]
    Snapshot(String),
    #[error("restore failed: {0}")]
    Restore(String),
    #[error("confining the VMM failed")]
    Jail(#[from] jail::JailError),
    #[error("setting the scheduling policy of VMM thread {0} failed")]
    Priority(i32, #[source] std::io::Error),
}

/// How guest RAM is backed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Memory {
    /// Anonymous memory.
    Anonymous,
    /// A file mapped shared: the guest's writes land in the file, which
    /// becomes a snapshot's memory (the VM is a snapshot template).
    Template(PathBuf),
    /// A snapshot's memory file mapped privately: pages are shared
    /// copy-on-write between all clones of the snapshot.
    Clone(PathBuf),
}

/// What one microVM is made of.
#[derive(Clone)]
pub struct VmSpec {
    pub id: String,
    /// Per-instance directory: sockets, console log.
    pub dir: PathBuf,
    pub kernel: PathBuf,
    /// Read-only root file system (`/dev/vda`).
    pub rootfs: PathBuf,
    /// Further read-only drives, `/dev/vdb` onwards.
    pub drives: Vec<PathBuf>,
    pub memory_mb: u32,
    pub vcpus: u32,
    pub memory: Memory,
    /// Start paused, waiting for [`Vm::load`] instead of booting.
    pub incoming: bool,
    /// Run the VMM at the lowest CPU priority (`SCHED_IDLE`) until
    /// [`Vm::foreground`]: work done ahead (a spare's start) then takes only
    /// CPU time that nothing else wants.
    pub background: bool,
    /// The network behind the NIC (a TAP in a namespace of its own); none:
    /// the NIC is there (every VM has the same devices, for snapshots) but
    /// nothing is behind it. The VMM holds it until its process is reaped.
    pub net: Option<std::sync::Arc<dyn crate::network::NetBackend>>,
}

/// Host-side resource use of one VM.
#[derive(Debug, Clone, Default)]
pub struct VmStats {
    pub pid: u32,
    pub rss_kb: u64,
}

/// Starts microVMs.
#[async_trait]
pub trait Engine: Send + Sync {
    /// Boots a VM; it returns once the VMM is running and connected.
    async fn boot(&self, spec: VmSpec) -> Result<Box<dyn Vm>, EngineError>;
    /// The accelerator in use and why it was chosen.
    fn accel(&self) -> &AccelInfo;
    /// How VMMs are confined, in words ("off" where they are not).
    fn confinement(&self) -> String {
        "off".into()
    }
}

/// One running microVM.
#[async_trait]
pub trait Vm: Send + Sync {
    /// The host end of the agent channel; taken once.
    fn take_channel(&mut self) -> Option<UnixStream>;
    /// Stops the vCPUs.
    async fn pause(&self) -> Result<(), EngineError>;
    /// Restarts the vCPUs.
    async fn resume(&self) -> Result<(), EngineError>;
    /// Pauses the VM and writes its device state to `state` (RAM stays in
    /// the template's memory file). The VM stays paused.
    async fn snapshot(&self, state: &std::path::Path) -> Result<(), EngineError>;
    /// Loads `state` into a VM started with `incoming`; it stays paused
    /// until [`Vm::resume`] (a restore is the two). The guest runs no
    /// instruction in between.
    async fn load(&self, state: &std::path::Path) -> Result<(), EngineError>;
    /// Ends the VM and frees its resources. Idempotent.
    async fn stop(&mut self) -> Result<(), EngineError>;
    /// Gives a VM started in the background the normal CPU priority.
    fn foreground(&self) -> Result<(), EngineError>;
    /// Puts the VMM's vCPU threads under the CPU quota of its memory size
    /// (Lambda's share). Called when the instance first serves: booting and
    /// init run unthrottled, as Lambda's init does.
    fn limit_cpu(&self) -> Result<(), EngineError> {
        Ok(())
    }
    /// Whether the VMM process has exited.
    fn has_exited(&self) -> bool;
    fn stats(&self) -> VmStats;
    /// Proportional set size of the VMM process, in KiB: its share of
    /// memory pages that clones share.
    fn pss_kb(&self) -> u64 {
        process_pss_kb(self.stats().pid)
    }
    /// The last lines of the guest console, for diagnostics.
    fn console_tail(&self, max_bytes: usize) -> String;
}

/// Kills VMM processes left by an earlier flintd whose files live under
/// `run_dir` (normally none: QEMU dies with its parent). Returns how many.
pub fn reap_leftovers(run_dir: &std::path::Path) -> usize {
    let needle = run_dir.display().to_string();
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_qemu = args.first().is_some_and(|a| a.contains("qemu-system"));
        if is_qemu && args.iter().any(|a| a.contains(&needle)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            tracing::warn!(pid, "killed a VMM left by an earlier run");
            n += 1;
        }
    }
    n
}

/// Resident memory of a process, in KiB (0 if it is gone).
/// Proportional set size of a process, in KiB (0 if it is gone). Reading it
/// walks the process's page tables: not for a hot path.
pub fn process_pss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

pub fn process_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// The QEMU version string, for node information.
pub fn qemu_version(qemu: &std::path::Path) -> String {
    std::process::Command::new(qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// The CPUs flintd may use (its affinity and cgroup quota), at least 1.
pub fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}
