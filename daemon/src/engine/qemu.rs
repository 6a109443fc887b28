//! The QEMU `microvm` engine: one QEMU process per instance, driven over QMP
//! with the `qapi` crate. QEMU connects to two unix sockets that the engine
//! listens on before starting it: QMP, and the agent's virtio-serial port.
//!
//! Why one file of 800 lines: the QEMU command line, the QMP conversation
//! and the process's life are one engine; each part relies on choices of
//! the others (sockets opened before start, `-incoming defer` for loads).

use std::io::BufReader;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use qapi::qmp;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::jail::{self, Hierarchy, JailSettings, Limits, PlanBuilder, UidPool, VmCgroup};
use super::{Accel, AccelInfo, Engine, EngineError, Memory, Vm, VmSpec, VmStats};

type QmpConn = qapi::Qmp<qapi::Stream<BufReader<StdUnixStream>, StdUnixStream>>;

/// Time QEMU gets to connect its sockets after it starts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a QMP command gets before the VM is considered hung.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);

pub struct QemuEngine {
    qemu: PathBuf,
    accel: AccelInfo,
    /// Host TSC frequency; under TCG the guest's TSC is the host's.
    tsc_khz: Option<u64>,
    /// How VMMs are confined; `None`: they run as flintd does (root).
    jail: Option<Jail>,
}

/// The confinement every VMM gets ([`jail`]).
struct Jail {
    settings: JailSettings,
    /// Guest MB per full vCPU of quota, resolved for the accelerator.
    mb_per_vcpu: u32,
    uids: Arc<UidPool>,
    cgroups: Hierarchy,
    /// The owner group of `/dev/kvm`, given to VMMs under KVM.
    kvm_gid: Option<u32>,
}

/// The QEMU seccomp filter: no obsolete calls, no set*id, no fork/exec, no
/// scheduler or resource changes.
const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// Measures the host TSC frequency against CLOCK_MONOTONIC.
fn host_tsc_khz() -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        let t0 = std::time::Instant::now();
        // SAFETY: RDTSC only reads the time-stamp counter; every x86_64 CPU has it.
        let c0 = unsafe { std::arch::x86_64::_rdtsc() };
        std::thread::sleep(Duration::from_millis(50));
        // SAFETY: as above.
        let c1 = unsafe { std::arch::x86_64::_rdtsc() };
        let us = t0.elapsed().as_micros() as u64;
        (us > 0 && c1 > c0).then(|| (c1 - c0) * 1000 / us)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

impl QemuEngine {
    /// An engine whose VMMs are confined as `jail` says (or not at all,
    /// where `jail.enabled` is false).
    pub fn new(qemu: PathBuf, accel: AccelInfo, jail: &JailSettings) -> Result<Self, EngineError> {
        // Under TCG the guest cannot calibrate its TSC reliably (the PIT is
        // emulated too, and a busy host skews it): tell it the frequency, or
        // its clock drifts and Lambda deadlines go wrong.
        let tsc_khz = match accel.accel {
            Accel::Tcg => host_tsc_khz(),
            Accel::Kvm => None,
        };
        // The binary by its full path: the confined VMM sees no PATH.
        let qemu = resolve(&qemu);
        let jail = if jail.enabled {
            let cgroups = Hierarchy::detect(Path::new("/sys/fs/cgroup"), &jail.cgroup_parent)?;
            let left = cgroups.remove_leftovers();
            if left > 0 {
                tracing::info!(
                    cgroups = left,
                    "removed the cgroups of VMMs an earlier run left"
                );
            }
            let kvm_gid = match accel.accel {
                Accel::Kvm => {
                    use std::os::unix::fs::MetadataExt;
                    std::fs::metadata("/dev/kvm").ok().map(|m| m.gid())
                }
                Accel::Tcg => None,
            };
            let mb_per_vcpu = jail.mb_per_vcpu.unwrap_or(match accel.accel {
                Accel::Kvm => jail::LAMBDA_MB_PER_VCPU,
                Accel::Tcg => 0,
            });
            tracing::info!(
                uids = format!(
                    "{}..{}",
                    jail.uid_base,
                    jail.uid_base as u64 + jail.uid_count as u64
                ),
                gid = jail.gid,
                cgroup = cgroups.version(),
                mb_per_vcpu,
                "VMMs are confined"
            );
            Some(Jail {
                mb_per_vcpu,
                settings: jail.clone(),
                uids: UidPool::new(jail.uid_base, jail.uid_count),
                cgroups,
                kvm_gid,
            })
        } else {
            tracing::warn!("VMM confinement is off: every QEMU runs as root, unconfined");
            None
        };
        Ok(Self {
            qemu,
            accel,
            tsc_khz,
            jail,
        })
    }

    fn args(&self, spec: &VmSpec, agent_sock: &Path, qmp_sock: &Path) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        let machine = match spec.memory {
            Memory::Anonymous => "microvm,rtc=on,acpi=off,pcie=off",
            _ => "microvm,rtc=on,acpi=off,pcie=off,memory-backend=mem",
        };
        push(&[
            "-M",
            machine,
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
        if self.jail.is_some() {
            push(&["-sandbox", SANDBOX]);
        }
        // Named threads (`CPU 0/TCG`): the vCPUs are found by name for their
        // CPU quota.
        push(&["-name", "flint,debug-threads=on"]);
        match self.accel.accel {
            Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
            // A bounded translation cache keeps each clone's RSS small. An
            // x86-64-v2 CPU without AVX: emulating AVX paths (picked by
            // glibc and python under `-cpu max`) made every start and
            // invocation 10-15% slower.
            Accel::Tcg => push(&["-accel", "tcg,tb-size=64", "-cpu", "Nehalem"]),
        }
        let backing = match &spec.memory {
            Memory::Anonymous => None,
            Memory::Template(p) => Some((p, "on")),
            Memory::Clone(p) => Some((p, "off")),
        };
        if let Some((path, share)) = backing {
            a.push("-object".into());
            a.push(format!(
                "memory-backend-file,id=mem,size={}M,mem-path={},share={share}",
                spec.memory_mb,
                path.display()
            ));
        }
        if spec.incoming {
            a.push("-incoming".into());
            a.push("defer".into());
        }
        let console = super::console::path(&spec.dir);
        a.push("-smp".into());
        a.push(spec.vcpus.max(1).to_string());
        a.push("-m".into());
        a.push(format!("{}M", spec.memory_mb));
        a.push("-kernel".into());
        a.push(spec.kernel.display().to_string());
        a.push("-append".into());
        let mut cmdline = String::from(
            "console=ttyS0 reboot=t panic=-1 root=/dev/vda ro rootfstype=erofs \
             init=/sbin/flint-agent quiet loglevel=4 8250.nr_uarts=1 \
             flint.channel=flint.agent",
        );
        // The guest's side of its network: the same in every clone.
        cmdline.push_str(&format!(
            " flint.ip={}/{} flint.gw={}",
            crate::network::GUEST_ADDR,
            crate::network::GUEST_PREFIX,
            crate::network::GATEWAY
        ));
        if let Some(khz) = self.tsc_khz {
            cmdline.push_str(&format!(
                " tsc_early_khz={khz} tsc=reliable clocksource=tsc"
            ));
        }
        a.push(cmdline);
        // Appended, so that the console keeper can empty it under QEMU.
        a.push("-chardev".into());
        a.push(format!(
            "file,id=console,path={},append=on",
            console.display()
        ));
        a.push("-serial".into());
        a.push("chardev:console".into());
        let drives = std::iter::once(&spec.rootfs).chain(spec.drives.iter());
        for (i, d) in drives.enumerate() {
            a.push("-drive".into());
            a.push(format!(
                "id=d{i},file={},format=raw,if=none,readonly=on",
                d.display()
            ));
            a.push("-device".into());
            a.push(format!("virtio-blk-device,drive=d{i}"));
        }
        a.push("-device".into());
        a.push("virtio-rng-device".into());
        // The NIC, in every VM: a TAP passed by descriptor, or a hub port
        // with nothing else on its hub. No vnet header either way (the TAP
        // is opened without IFF_VNET_HDR, which QEMU reads from the
        // descriptor), so that the device offers the same features to a
        // snapshot and its clones.
        a.push("-netdev".into());
        a.push(match &spec.net {
            Some(n) => format!("tap,id=net0,fd={}", n.tap_fd()),
            None => "hubport,id=net0,hubid=0".into(),
        });
        a.push("-device".into());
        let m = crate::network::GUEST_MAC;
        a.push(format!(
            "virtio-net-device,netdev=net0,mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        ));
        a.push("-device".into());
        a.push("virtio-serial-device,max_ports=2".into());
        a.push("-chardev".into());
        a.push(format!("socket,id=agent,path={}", agent_sock.display()));
        a.push("-device".into());
        a.push("virtserialport,chardev=agent,name=flint.agent,nr=1".into());
        a.push("-chardev".into());
        a.push(format!("socket,id=qmp,path={}", qmp_sock.display()));
        a.push("-mon".into());
        a.push("chardev=qmp,mode=control".into());
        a
    }
}

/// `name` looked up in `PATH` when it has no `/` (as exec would), made
/// absolute and free of links.
fn resolve(name: &Path) -> PathBuf {
    let found = if name.components().count() > 1 {
        Some(name.to_path_buf())
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    };
    found
        .and_then(|p| std::fs::canonicalize(p).ok())
        .unwrap_or_else(|| name.to_path_buf())
}

/// What [`QemuEngine::confine`] prepares for one VMM.
struct Confined {
    plan: Arc<jail::Plan>,
    cgroup: Arc<VmCgroup>,
    lease: jail::UidLease,
}

impl QemuEngine {
    /// Takes a uid, makes the VMM's cgroup, gives it its folder, sockets
    /// and memory file, and plans its root.
    fn confine(&self, j: &Jail, spec: &VmSpec, sockets: &[&Path]) -> Result<Confined, EngineError> {
        let lease = j.uids.take()?;
        let (uid, gid) = (lease.uid, j.settings.gid);
        jail::give_to(&spec.dir, uid, gid)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&spec.dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| EngineError::Prepare(spec.dir.clone(), e))?;
        }
        for s in sockets {
            jail::give_to(s, uid, gid)?;
        }
        let root = spec.dir.join("root");
        std::fs::create_dir_all(&root).map_err(|e| EngineError::Prepare(root.clone(), e))?;
        let mut b = PlanBuilder::new(root)
            .read_only(Path::new("/usr"))
            .read_only(&spec.kernel)
            .read_only(&spec.rootfs)
            .device(Path::new("/dev/null"))
            .device(Path::new("/dev/urandom"))
            .writable(&spec.dir);
        if !self.qemu.starts_with("/usr") {
            b = b.read_only(&self.qemu);
        }
        for d in &spec.drives {
            b = b.read_only(d);
        }
        match &spec.memory {
            Memory::Anonymous => {}
            Memory::Template(p) | Memory::Clone(p) => {
                if !p.exists() {
                    std::fs::File::create(p).map_err(|e| EngineError::Prepare(p.clone(), e))?;
                }
                jail::share_with_vmm(p, gid)?;
                b = b.writable(p);
            }
        }
        let mut groups = vec![gid];
        if let Some(kvm) = j.kvm_gid {
            b = b.device(Path::new("/dev/kvm"));
            groups.push(kvm);
        }
        let cgroup = VmCgroup::create(
            &j.cgroups,
            &spec.id,
            Limits::for_guest(&j.settings, j.mb_per_vcpu, spec.memory_mb),
        )?;
        let plan = match b.build(uid, gid, groups, cgroup.procs_files()) {
            Ok(p) => p,
            Err(e) => {
                cgroup.remove();
                return Err(e.into());
            }
        };
        Ok(Confined {
            plan: Arc::new(plan),
            cgroup: Arc::new(cgroup),
            lease,
        })
    }
}

#[async_trait]
impl Engine for QemuEngine {
    async fn boot(&self, spec: VmSpec) -> Result<Box<dyn Vm>, EngineError> {
        for p in std::iter::once(&spec.kernel)
            .chain(std::iter::once(&spec.rootfs))
            .chain(spec.drives.iter())
        {
            if !p.exists() {
                return Err(EngineError::MissingArtefact(p.clone()));
            }
        }
        let prep = |e| EngineError::Prepare(spec.dir.clone(), e);
        std::fs::create_dir_all(&spec.dir).map_err(prep)?;
        let agent_sock = spec.dir.join("agent.sock");
        let qmp_sock = spec.dir.join("qmp.sock");
        let _ = std::fs::remove_file(&agent_sock);
        let _ = std::fs::remove_file(&qmp_sock);
        // A console an earlier VMM of this id left (a failed restore, then
        // the cold boot that replaces it) belongs to that VMM's uid.
        let _ = std::fs::remove_file(super::console::path(&spec.dir));
        let agent_l = UnixListener::bind(&agent_sock).map_err(prep)?;
        let qmp_l = UnixListener::bind(&qmp_sock).map_err(prep)?;
        let log = std::fs::File::create(spec.dir.join("qemu.log")).map_err(prep)?;
        let confined = match &self.jail {
            Some(j) => Some(self.confine(j, &spec, &[&agent_sock, &qmp_sock])?),
            None => None,
        };

        let mut cmd = tokio::process::Command::new(&self.qemu);
        cmd.args(self.args(&spec, &agent_sock, &qmp_sock))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(false);
        let background = spec.background;
        let plan = confined.as_ref().map(|c| c.plan.clone());
        let net_fds = spec.net.as_ref().map(|n| (n.tap_fd(), n.netns_fd()));
        // SAFETY: the closure runs in the child between fork and exec and only
        // makes system calls (fcntl(2) and setns(2) on descriptors the spec
        // keeps open, prctl(2), sched_setscheduler(2), and those of
        // `Plan::enter` on memory prepared before the fork); no allocation,
        // no lock.
        unsafe {
            cmd.pre_exec(move || {
                if let Some((tap, netns)) = net_fds {
                    // The TAP goes through exec (its number is in the
                    // arguments); the VMM lives in the instance's network
                    // namespace, where it can reach nothing of the host.
                    if libc::fcntl(tap, libc::F_SETFD, 0) < 0
                        || libc::setns(netns, libc::CLONE_NEWNET) < 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if background {
                    // Inherited by every thread QEMU starts.
                    set_idle_priority();
                }
                if let Some(plan) = &plan {
                    plan.enter()?;
                }
                // QEMU dies with flintd rather than outliving it. Set after
                // the change of uid, which clears it.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let vmm_uid = confined.as_ref().map(|c| c.lease.uid);
        let (cgroup, lease) = match confined {
            Some(c) => (Some(c.cgroup), Some(c.lease)),
            None => (None, None),
        };
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                if let Some(cg) = &cgroup {
                    cg.remove();
                }
                return Err(EngineError::Spawn(e));
            }
        };
        let pid = child.id().unwrap_or(0);

        let (exit_tx, exit_rx) = watch::channel(None::<String>);
        // Until the `QemuVm` owns it, the process dies with this boot: on an
        // error below, and when the boot's future is dropped (a start
        // abandoned by its caller) at any await.
        let unclaimed = Unclaimed {
            pid,
            exited: exit_rx.clone(),
        };
        let owned = cgroup.clone();
        let net = spec.net.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            // Its network goes with it.
            drop(net);
            // The process is reaped: its cgroup can go, and its uid can serve
            // another VMM.
            if let Some(cg) = owned {
                let _ = tokio::task::spawn_blocking(move || cg.remove()).await;
            }
            drop(lease);
            let _ = exit_tx.send(Some(match status {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            }));
        });

        let connect = async {
            let (qmp, _) = qmp_l.accept().await?;
            let (agent, _) = agent_l.accept().await?;
            Ok::<_, std::io::Error>((qmp, agent))
        };
        let mut early = exit_rx.clone();
        let (qmp_stream, agent) = tokio::select! {
            r = tokio::time::timeout(CONNECT_TIMEOUT, connect) => match r {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => return Err(EngineError::Prepare(spec.dir.clone(), e)),
                Err(_) => return Err(EngineError::ConnectTimeout(CONNECT_TIMEOUT)),
            },
            _ = early.wait_for(|s| s.is_some()) => {
                let err = qemu_log(&spec.dir);
                return Err(EngineError::EarlyExit(err.trim().to_string()));
            }
        };
        let _ = std::fs::remove_file(&agent_sock);
        let _ = std::fs::remove_file(&qmp_sock);

        let std_qmp = qmp_stream
            .into_std()
            .and_then(|s| s.set_nonblocking(false).map(|_| s))
            .map_err(|e| EngineError::Prepare(spec.dir.clone(), e))?;
        let _ = std_qmp.set_read_timeout(Some(QMP_TIMEOUT));
        let qmp = tokio::task::spawn_blocking(move || -> Result<QmpConn, EngineError> {
            let reader = std_qmp.try_clone().map_err(|e| EngineError::Qmp {
                command: "qmp_capabilities",
                message: e.to_string(),
            })?;
            let mut conn = qapi::Qmp::new(qapi::Stream::new(BufReader::new(reader), std_qmp));
            conn.handshake().map_err(|e| EngineError::Qmp {
                command: "qmp_capabilities",
                message: e.to_string(),
            })?;
            Ok(conn)
        })
        .await
        .map_err(|e| EngineError::Qmp {
            command: "qmp_capabilities",
            message: e.to_string(),
        })??;

        super::console::keep(spec.dir.clone(), exit_rx.clone());
        unclaimed.claim();
        Ok(Box::new(QemuVm {
            dir: spec.dir,
            pid,
            qmp: Arc::new(Mutex::new(qmp)),
            channel: Some(agent),
            exited: exit_rx,
            stopped: false,
            cgroup,
            vmm: self
                .jail
                .as_ref()
                .zip(vmm_uid)
                .map(|(j, uid)| (uid, j.settings.gid)),
        }))
    }

    fn accel(&self) -> &AccelInfo {
        &self.accel
    }

    fn confinement(&self) -> String {
        match &self.jail {
            None => "off".into(),
            Some(j) => format!(
                "uid per VMM, no capabilities, no_new_privs, mount namespace, seccomp, cgroup v{}; vCPU quota {}",
                j.cgroups.version(),
                match j.mb_per_vcpu {
                    0 => "none".to_string(),
                    n => format!("{n} MB per vCPU"),
                }
            ),
        }
    }
}

fn ignore_shared() -> qmp::migrate_set_capabilities {
    qmp::migrate_set_capabilities {
        capabilities: vec![qmp::MigrationCapabilityStatus {
            capability: qmp::MigrationCapability::x_ignore_shared,
            state: true,
        }],
    }
}

/// Puts the calling thread under `SCHED_IDLE`: it runs only when no other
/// thread wants the CPU. Best effort (called between fork and exec).
fn set_idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the sched_param through a valid
    // pointer to a local; pid 0 is the calling thread.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
}

/// Puts every thread of process `pid` under the normal scheduling policy
/// (`SCHED_OTHER`). Twice over the thread list: a thread started meanwhile
/// by one still at the lowest priority is caught by the second pass.
fn set_normal_priority(pid: u32) -> Result<(), EngineError> {
    if pid == 0 {
        return Ok(());
    }
    for _ in 0..2 {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Ok(()); // the process is gone: nothing to lift
        };
        for tid in tasks.flatten() {
            let Some(tid) = tid.file_name().to_str().and_then(|t| t.parse::<i32>().ok()) else {
                continue;
            };
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: sched_setscheduler reads the sched_param through a
            // valid pointer to a local; tid is a thread id (a stale one only
            // makes the call fail with ESRCH).
            let rc = unsafe { libc::sched_setscheduler(tid, libc::SCHED_OTHER, &param) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(EngineError::Priority(tid, e));
                }
            }
        }
    }
    Ok(())
}

/// The end of QEMU's stderr (at most 16 KiB), read without following a
/// link: the folder belongs to the VMM's uid.
fn qemu_log(dir: &Path) -> String {
    String::from_utf8_lossy(&super::console::tail_of(&dir.join("qemu.log"), 16 * 1024)).into_owned()
}

fn kill(pid: u32) {
    if pid > 0 {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A VMM process that no [`QemuVm`] owns yet: killed when dropped unclaimed.
struct Unclaimed {
    pid: u32,
    exited: watch::Receiver<Option<String>>,
}

impl Unclaimed {
    fn claim(mut self) {
        self.pid = 0;
    }
}

impl Drop for Unclaimed {
    fn drop(&mut self) {
        // Reaped already: the pid may be another process's now.
        if self.exited.borrow().is_none() {
            kill(self.pid);
        }
    }
}

pub struct QemuVm {
    dir: PathBuf,
    pid: u32,
    qmp: Arc<Mutex<QmpConn>>,
    channel: Option<UnixStream>,
    exited: watch::Receiver<Option<String>>,
    stopped: bool,
    /// The VMM's cgroup, where it is confined.
    cgroup: Option<Arc<VmCgroup>>,
    /// The VMM's uid and group, where it is confined.
    vmm: Option<(u32, u32)>,
}

impl QemuVm {
    /// Waits until an outgoing migration has completed.
    async fn await_migration(&self) -> Result<(), EngineError> {
        let fail = |e: EngineError| EngineError::Snapshot(e.to_string());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let info = self.execute(qmp::query_migrate {}).await.map_err(fail)?;
            match info.status {
                Some(qmp::MigrationStatus::completed) => return Ok(()),
                Some(qmp::MigrationStatus::failed) | Some(qmp::MigrationStatus::cancelled) => {
                    return Err(EngineError::Snapshot(
                        info.error_desc.unwrap_or_else(|| "migration failed".into()),
                    ))
                }
                _ if std::time::Instant::now() > deadline => {
                    return Err(EngineError::Snapshot("timed out".into()))
                }
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }

    async fn execute<C>(&self, command: C) -> Result<C::Ok, EngineError>
    where
        C: qapi::Command + Send + 'static,
        C::Ok: Send + 'static,
    {
        let qmp = self.qmp.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = qmp.lock().map_err(|_| EngineError::Qmp {
                command: C::NAME,
                message: "QMP connection poisoned".into(),
            })?;
            conn.execute(&command).map_err(|e| EngineError::Qmp {
                command: C::NAME,
                message: e.to_string(),
            })
        })
        .await
        .map_err(|e| EngineError::Qmp {
            command: C::NAME,
            message: e.to_string(),
        })?
    }
}

#[async_trait]
impl Vm for QemuVm {
    fn take_channel(&mut self) -> Option<UnixStream> {
        self.channel.take()
    }

    async fn pause(&self) -> Result<(), EngineError> {
        self.execute(qmp::stop {}).await.map(drop)
    }

    async fn resume(&self) -> Result<(), EngineError> {
        self.execute(qmp::cont {}).await.map(drop)
    }

    async fn snapshot(&self, state: &Path) -> Result<(), EngineError> {
        let fail = |e: EngineError| EngineError::Snapshot(e.to_string());
        self.execute(qmp::stop {}).await.map_err(fail)?;
        self.execute(ignore_shared()).await.map_err(fail)?;
        // The state streams out through a socket flintd listens on: the
        // sandboxed VMM may neither spawn a process nor open host files.
        let sock = self.dir.join("outgoing.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock)
            .map_err(|e| EngineError::Snapshot(format!("listening for the state: {e}")))?;
        if let Some((uid, gid)) = self.vmm {
            jail::give_to(&sock, uid, gid).map_err(|e| EngineError::Snapshot(e.to_string()))?;
        }
        let _ = std::fs::remove_file(state);
        let out = tokio::fs::File::create(state)
            .await
            .map_err(|e| EngineError::Snapshot(format!("creating {}: {e}", state.display())))?;
        let copy = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await?;
            let mut out = out;
            tokio::io::copy(&mut conn, &mut out).await?;
            use tokio::io::AsyncWriteExt;
            out.flush().await?;
            Ok::<_, std::io::Error>(())
        });
        let started = self
            .execute(qmp::migrate {
                uri: Some(format!("unix:{}", sock.display())),
                channels: None,
                detach: None,
                resume: None,
            })
            .await
            .map_err(fail);
        if let Err(e) = started {
            copy.abort();
            let _ = std::fs::remove_file(&sock);
            return Err(e);
        }
        let result = self.await_migration().await;
        let _ = std::fs::remove_file(&sock);
        if result.is_err() {
            copy.abort();
            return result;
        }
        match tokio::time::timeout(Duration::from_secs(30), copy).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(EngineError::Snapshot(format!("writing the state: {e}"))),
            Ok(Err(e)) => Err(EngineError::Snapshot(e.to_string())),
            Err(_) => Err(EngineError::Snapshot("writing the state timed out".into())),
        }
    }

    async fn load(&self, state: &Path) -> Result<(), EngineError> {
        let fail = |e: EngineError| EngineError::Restore(e.to_string());
        let data = tokio::fs::read(state)
            .await
            .map_err(|e| EngineError::Restore(format!("reading {}: {e}", state.display())))?;
        self.execute(ignore_shared()).await.map_err(fail)?;
        let sock = self.dir.join("incoming.sock");
        let _ = std::fs::remove_file(&sock);
        self.execute(qmp::migrate_incoming {
            uri: Some(format!("unix:{}", sock.display())),
            channels: None,
            exit_on_error: None,
        })
        .await
        .map_err(fail)?;
        // QEMU listens on the socket; the state streams in through it.
        let mut stream = None;
        for _ in 0..2000 {
            match tokio::net::UnixStream::connect(&sock).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_micros(500)).await,
            }
        }
        let mut stream = stream
            .ok_or_else(|| EngineError::Restore("QEMU did not listen for the state".into()))?;
        use tokio::io::AsyncWriteExt;
        stream
            .write_all(&data)
            .await
            .map_err(|e| EngineError::Restore(format!("sending the state: {e}")))?;
        drop(stream);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let st = self.execute(qmp::query_status {}).await.map_err(fail)?;
            match st.status {
                qmp::RunState::inmigrate => {}
                qmp::RunState::paused | qmp::RunState::postmigrate | qmp::RunState::prelaunch => {
                    break
                }
                qmp::RunState::running => break,
                other => {
                    return Err(EngineError::Restore(format!(
                        "VM in state {other:?} after loading; {}",
                        qemu_log(&self.dir).trim()
                    )))
                }
            }
            if self.has_exited() {
                return Err(EngineError::Restore(qemu_log(&self.dir).trim().to_string()));
            }
            if std::time::Instant::now() > deadline {
                return Err(EngineError::Restore("loading the state timed out".into()));
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let _ = std::fs::remove_file(&sock);
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), EngineError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        if !self.has_exited() {
            let quit = tokio::time::timeout(Duration::from_secs(1), self.execute(qmp::quit {}));
            let _ = quit.await;
            let mut exited = self.exited.clone();
            let gone = matches!(
                tokio::time::timeout(Duration::from_secs(2), exited.wait_for(|s| s.is_some()))
                    .await,
                Ok(Ok(_))
            );
            if !gone {
                kill(self.pid);
                let _ = matches!(
                    tokio::time::timeout(Duration::from_secs(5), exited.wait_for(|s| s.is_some()))
                        .await,
                    Ok(Ok(_))
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }

    fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    fn limit_cpu(&self) -> Result<(), EngineError> {
        match &self.cgroup {
            Some(cg) => Ok(cg.limit_cpu(self.pid)?),
            None => Ok(()),
        }
    }

    fn foreground(&self) -> Result<(), EngineError> {
        set_normal_priority(self.pid)
    }

    fn stats(&self) -> VmStats {
        let rss_kb = super::process_rss_kb(self.pid);
        VmStats {
            pid: self.pid,
            rss_kb,
        }
    }

    fn console_tail(&self, max_bytes: usize) -> String {
        super::console::tail(&self.dir, max_bytes)
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        if !self.stopped && !self.has_exited() {
            kill(self.pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    fn policies(pid: u32) -> Vec<i32> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .map(|t| {
                let tid: i32 = t.file_name().to_str().unwrap().parse().unwrap();
                // SAFETY: sched_getscheduler takes a thread id and nothing else.
                unsafe { libc::sched_getscheduler(tid) }
            })
            .collect()
    }

    #[test]
    fn a_background_process_is_brought_to_the_normal_policy() {
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        // SAFETY: the closure only makes a system call.
        unsafe {
            cmd.pre_exec(|| {
                set_idle_priority();
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let pid = child.id();
        assert_eq!(policies(pid), [libc::SCHED_IDLE]);
        set_normal_priority(pid).unwrap();
        assert_eq!(policies(pid), [libc::SCHED_OTHER]);
        let _ = child.kill();
        let _ = child.wait();
        // A process that is gone has nothing to lift.
        set_normal_priority(pid).unwrap();
    }

    /// A start abandoned while its VMM runs (its caller gone, or an error
    /// after the spawn) leaves no process behind: nothing else would ever
    /// stop it, and it would hold its network and memory until flintd ends.
    #[tokio::test]
    async fn a_boot_dropped_after_the_spawn_kills_its_vmm() {
        let dir = tempfile::tempdir().unwrap();
        // A VMM that never connects: it records its pid and waits.
        let fake = dir.path().join("qemu");
        let pid_file = dir.path().join("pid");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho $$ > {}\nexec sleep 60\n",
                pid_file.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let accel = AccelInfo {
            accel: Accel::Tcg,
            reason: "test".into(),
        };
        let jail = JailSettings {
            enabled: false,
            ..Default::default()
        };
        let engine = QemuEngine::new(fake, accel, &jail).unwrap();
        for artefact in ["vmlinux", "rootfs"] {
            std::fs::write(dir.path().join(artefact), b"").unwrap();
        }
        let spec = VmSpec {
            id: "abandoned".into(),
            dir: dir.path().join("run"),
            kernel: dir.path().join("vmlinux"),
            rootfs: dir.path().join("rootfs"),
            drives: vec![],
            memory_mb: 128,
            vcpus: 1,
            memory: Memory::Anonymous,
            incoming: false,
            background: false,
            net: None,
        };
        let spawned = async {
            loop {
                if let Ok(pid) = std::fs::read_to_string(&pid_file) {
                    if let Ok(pid) = pid.trim().parse::<u32>() {
                        return pid;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let pid = tokio::select! {
            r = engine.boot(spec) => panic!("a VMM that never connects booted: {:?}", r.err()),
            pid = spawned => pid,
        };
        // The boot's future is dropped here.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the VMM of an abandoned boot still runs"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
