//! Confinement of each VMM process, after Firecracker's jailer.
//!
//! Between `fork` and `exec` the child QEMU:
//! 1. joins its own cgroup (memory, pids, cpu; v1 or v2),
//! 2. enters its own mount namespace, whose root is an empty tmpfs holding
//!    only bind mounts of what this VM needs: `/usr` (QEMU and its
//!    libraries) read-only, the kernel and drives read-only, its memory file
//!    and its instance folder,
//! 3. drops every capability from its bounding set, takes its own uid (one
//!    per VM from a configured range) and the VMM group, and sets
//!    `no_new_privs`;
//!
//! and QEMU then installs its own seccomp filter (`-sandbox`, in `qemu.rs`).
//!
//! Everything the child does is prepared here, before the fork, as C
//! strings: the child only makes system calls (no allocation, no lock).
//!
//! Why one file of 700 lines: the steps between `fork` and `exec` are one
//! async-signal-safe sequence whose order is the security argument; split,
//! it could no longer be checked step by step.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Lambda's ratio: a function with 1,769 MB gets one full vCPU.
pub const LAMBDA_MB_PER_VCPU: u32 = 1769;
/// CFS period for the vCPU quota.
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("every VMM uid of the range {base}..{end} is in use")]
    NoUid { base: u32, end: u32 },
    #[error("preparing the cgroup {0} failed")]
    Cgroup(PathBuf, #[source] io::Error),
    #[error("no cgroup controller for {0} is mounted (neither cgroup v1 nor v2)")]
    NoController(&'static str),
    #[error("preparing the VMM's files failed: {0}")]
    Files(PathBuf, #[source] io::Error),
    #[error("a path holds a NUL byte: {0}")]
    Nul(PathBuf),
}

/// How VMM processes are confined (`[vmm]` in flintd.toml).
#[derive(Debug, Clone)]
pub struct JailSettings {
    /// Confine VMMs at all (uid, namespace, capabilities, cgroup, seccomp).
    pub enabled: bool,
    /// First uid of the range VMMs run as; one uid per running VMM.
    pub uid_base: u32,
    /// Size of the uid range: at most this many VMMs at once.
    pub uid_count: u32,
    /// The group every VMM runs as (owner group of the files they share).
    pub gid: u32,
    /// Memory a VMM may use beyond its guest's, MB (QEMU, its translation
    /// cache under TCG, device buffers).
    pub overhead_mb: u32,
    /// Guest memory per full vCPU of CPU time, MB (Lambda: 1,769); 0: no
    /// CPU quota. `None`: Lambda's under KVM, none under TCG (where every
    /// guest instruction is emulated, and Lambda's share of a core made
    /// the AWS tutorial's bash bootstrap time out at 3 s).
    pub mb_per_vcpu: Option<u32>,
    /// Tasks (threads) one VMM may have.
    pub pids_max: u32,
    /// The cgroup (below each hierarchy's root) that holds one per VMM.
    pub cgroup_parent: String,
}

impl Default for JailSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            uid_base: 0x2f00_0000,
            uid_count: 65_536,
            gid: 0x2f00_0000,
            overhead_mb: 256,
            mb_per_vcpu: None,
            pids_max: 128,
            cgroup_parent: "flint".into(),
        }
    }
}

/// The cgroup layout found on this host.
#[derive(Debug, Clone)]
pub enum Hierarchy {
    /// One folder per controller (`memory`, `cpu`, `pids`): the parent
    /// cgroup in each.
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        pids: PathBuf,
    },
    /// The unified hierarchy: the parent cgroup.
    V2(PathBuf),
}

impl Hierarchy {
    /// Finds the hierarchy under `/sys/fs/cgroup` and creates `parent` in it.
    pub fn detect(root: &Path, parent: &str) -> Result<Self, JailError> {
        let h = if root.join("cgroup.controllers").exists() {
            let p = root.join(parent);
            mkdir(&p)?;
            // Controllers must be enabled top-down for the VMM cgroups.
            for dir in [root, p.as_path()] {
                write(&dir.join("cgroup.subtree_control"), "+memory +pids +cpu")?;
            }
            Hierarchy::V2(p)
        } else {
            let find = |c: &'static str| {
                let d = root.join(c);
                if d.join("tasks").exists() {
                    Ok(d.join(parent))
                } else {
                    Err(JailError::NoController(c))
                }
            };
            let h = Hierarchy::V1 {
                memory: find("memory")?,
                cpu: find("cpu")?,
                pids: find("pids")?,
            };
            if let Hierarchy::V1 { memory, cpu, pids } = &h {
                for d in [memory, cpu, pids] {
                    mkdir(d)?;
                }
            }
            h
        };
        Ok(h)
    }

    /// Removes the cgroups of VMMs that are gone (left by an earlier flintd
    /// that did not stop cleanly); those with live tasks stay. Returns how
    /// many were removed.
    pub fn remove_leftovers(&self) -> usize {
        let parents: Vec<&PathBuf> = match self {
            Hierarchy::V1 { memory, cpu, pids } => vec![memory, cpu, pids],
            Hierarchy::V2(p) => vec![p],
        };
        let mut n = 0;
        for parent in parents {
            let Ok(rd) = std::fs::read_dir(parent) else {
                continue;
            };
            for e in rd.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                // A cgroup made a moment ago may belong to another node on
                // this host, about to start its VMM.
                let young = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_none_or(|age| age < std::time::Duration::from_secs(60));
                if young {
                    continue;
                }
                let _ = std::fs::remove_dir(e.path().join("vcpu"));
                if std::fs::remove_dir(e.path()).is_ok() {
                    n += 1;
                }
            }
        }
        n
    }

    pub fn version(&self) -> u32 {
        match self {
            Hierarchy::V1 { .. } => 1,
            Hierarchy::V2(_) => 2,
        }
    }
}

fn mkdir(p: &Path) -> Result<(), JailError> {
    match std::fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(JailError::Cgroup(p.to_path_buf(), e)),
    }
}

fn write(p: &Path, v: &str) -> Result<(), JailError> {
    std::fs::write(p, v).map_err(|e| JailError::Cgroup(p.to_path_buf(), e))
}

/// The limits of one VMM's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u32,
    /// vCPU quota per [`CPU_PERIOD_US`], once [`VmCgroup::limit_cpu`] runs.
    pub cpu_quota_us: Option<u64>,
}

impl Limits {
    /// The limits of a VMM with `guest_mb` of memory, where a full vCPU
    /// takes `mb_per_vcpu` (0: no CPU quota).
    pub fn for_guest(s: &JailSettings, mb_per_vcpu: u32, guest_mb: u32) -> Self {
        let cpu_quota_us = (mb_per_vcpu > 0)
            .then(|| (CPU_PERIOD_US * guest_mb as u64 / mb_per_vcpu as u64).max(1_000));
        Self {
            memory_bytes: (guest_mb as u64 + s.overhead_mb as u64) << 20,
            pids: s.pids_max,
            cpu_quota_us,
        }
    }
}

/// One VMM's cgroup(s). The process is in `main`; its vCPU threads move to
/// the `vcpu` child, which carries the CPU quota: the VMM's own work
/// (loading a snapshot, device emulation outside the vCPUs) is the
/// platform's, and is not throttled.
#[derive(Debug)]
pub struct VmCgroup {
    /// Folders made, removed deepest first.
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` files the child writes itself into.
    procs: Vec<PathBuf>,
    /// Where a vCPU thread id is written.
    vcpu_threads: PathBuf,
    /// Where the quota is written, and how.
    vcpu_quota: (PathBuf, bool),
    limits: Limits,
}

impl VmCgroup {
    pub fn create(h: &Hierarchy, id: &str, limits: Limits) -> Result<Self, JailError> {
        let mut dirs = Vec::new();
        let made = |p: PathBuf, dirs: &mut Vec<PathBuf>| -> Result<PathBuf, JailError> {
            mkdir(&p)?;
            dirs.push(p.clone());
            Ok(p)
        };
        let cg = match h {
            Hierarchy::V1 { memory, cpu, pids } => {
                let m = made(memory.join(id), &mut dirs)?;
                write(
                    &m.join("memory.limit_in_bytes"),
                    &limits.memory_bytes.to_string(),
                )?;
                // With swap accounting, swap counts too (absent otherwise).
                let memsw = m.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &limits.memory_bytes.to_string())?;
                }
                let p = made(pids.join(id), &mut dirs)?;
                write(&p.join("pids.max"), &limits.pids.to_string())?;
                // The process stays in the root of the cpu hierarchy: a
                // cgroup of its own there made every warm invocation about
                // 2 ms slower (group scheduling of the ping-pong between
                // flintd and QEMU's threads). v1 places threads one by one,
                // so only the vCPU threads move, and only under a quota.
                let v = cpu.join(id).join("vcpu");
                if limits.cpu_quota_us.is_some() {
                    made(cpu.join(id), &mut dirs)?;
                    made(v.clone(), &mut dirs)?;
                    write(&v.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                }
                VmCgroup {
                    procs: vec![m.join("cgroup.procs"), p.join("cgroup.procs")],
                    vcpu_threads: v.join("tasks"),
                    vcpu_quota: (v.join("cpu.cfs_quota_us"), false),
                    dirs: Vec::new(),
                    limits,
                }
            }
            Hierarchy::V2(parent) => {
                let g = made(parent.join(id), &mut dirs)?;
                write(&g.join("memory.max"), &limits.memory_bytes.to_string())?;
                let swap = g.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0")?;
                }
                write(&g.join("pids.max"), &limits.pids.to_string())?;
                // A threaded child: threads of one process may sit in it.
                let v = made(g.join("vcpu"), &mut dirs)?;
                write(&v.join("cgroup.type"), "threaded")?;
                write(&g.join("cgroup.subtree_control"), "+cpu")?;
                VmCgroup {
                    procs: vec![g.join("cgroup.procs")],
                    vcpu_threads: v.join("cgroup.threads"),
                    vcpu_quota: (v.join("cpu.max"), true),
                    dirs: Vec::new(),
                    limits,
                }
            }
        };
        Ok(VmCgroup { dirs, ..cg })
    }

    /// Moves the VMM's vCPU threads into the `vcpu` cgroup and gives it the
    /// quota. Idempotent.
    pub fn limit_cpu(&self, pid: u32) -> Result<(), JailError> {
        let Some(quota) = self.limits.cpu_quota_us else {
            return Ok(());
        };
        for tid in vcpu_threads(pid) {
            // A thread that just ended is not an error.
            if let Err(e) = std::fs::write(&self.vcpu_threads, tid.to_string()) {
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(JailError::Cgroup(self.vcpu_threads.clone(), e));
                }
            }
        }
        let (file, v2) = &self.vcpu_quota;
        if *v2 {
            write(file, &format!("{quota} {CPU_PERIOD_US}"))
        } else {
            write(file, &quota.to_string())
        }
    }

    pub fn procs_files(&self) -> &[PathBuf] {
        &self.procs
    }

    /// Removes the folders once the process is gone. A cgroup whose last
    /// task has just exited can be busy for a moment: a few tries.
    pub fn remove(&self) {
        for d in self.dirs.iter().rev() {
            for attempt in 0..50 {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(_) if attempt < 49 => {
                        std::thread::sleep(std::time::Duration::from_millis(20))
                    }
                    Err(e) => {
                        tracing::warn!(cgroup = %d.display(), error = %e, "removing a VMM cgroup failed")
                    }
                }
            }
        }
    }
}

/// Thread ids of a QEMU process's vCPU threads (named `CPU n/KVM`,
/// `CPU n/TCG` or `ALL CPUs/TCG`).
pub fn vcpu_threads(pid: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|t| {
            let tid: u32 = t.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let comm = comm.trim_end();
            (comm.ends_with("/TCG") || comm.ends_with("/KVM")).then_some(tid)
        })
        .collect()
}

/// Hands out VMM uids; a uid comes back when its process has been reaped.
#[derive(Debug)]
pub struct UidPool {
    base: u32,
    count: u32,
    state: Mutex<(HashSet<u32>, u32)>,
}

impl UidPool {
    pub fn new(base: u32, count: u32) -> Arc<Self> {
        Arc::new(Self {
            base,
            count: count.max(1),
            state: Mutex::new((HashSet::new(), 0)),
        })
    }

    /// The next free uid after the last one handed out (not the lowest: a
    /// uid is not reused at once).
    pub fn take(self: &Arc<Self>) -> Result<UidLease, JailError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for i in 0..self.count {
            let off = (st.1 + i) % self.count;
            if st.0.insert(off) {
                st.1 = (off + 1) % self.count;
                return Ok(UidLease {
                    uid: self.base + off,
                    pool: self.clone(),
                });
            }
        }
        Err(JailError::NoUid {
            base: self.base,
            end: self.base.saturating_add(self.count),
        })
    }
}

/// A uid in use by one VMM; returned to the pool when dropped.
#[derive(Debug)]
pub struct UidLease {
    pub uid: u32,
    pool: Arc<UidPool>,
}

impl Drop for UidLease {
    fn drop(&mut self) {
        let mut st = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0.remove(&(self.uid - self.pool.base));
    }
}

/// One bind mount into the VMM's root.
#[derive(Debug)]
struct Bind {
    source: CString,
    /// Inside the new root (prefixed with the root's path).
    target: CString,
    file: bool,
    writable: bool,
    device: bool,
}

/// What the child does between fork and exec, prepared before the fork.
#[derive(Debug)]
pub struct Plan {
    root: CString,
    dirs: Vec<CString>,
    binds: Vec<Bind>,
    links: Vec<(CString, CString)>,
    procs: Vec<CString>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

fn cstr(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| JailError::Nul(p.to_path_buf()))
}

/// Builds [`Plan`]s: which paths a VMM sees, and as whom it runs.
#[derive(Debug, Default)]
pub struct PlanBuilder {
    root: PathBuf,
    binds: Vec<(PathBuf, bool, bool)>,
    devices: Vec<PathBuf>,
}

impl PlanBuilder {
    /// `root`: an empty folder the new root is mounted on.
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            ..Default::default()
        }
    }

    /// Makes `path` (a file or a folder) visible at the same path, read-only.
    pub fn read_only(mut self, path: &Path) -> Self {
        self.binds.push((path.to_path_buf(), false, false));
        self
    }

    /// Makes `path` visible at the same path, writable.
    pub fn writable(mut self, path: &Path) -> Self {
        self.binds.push((path.to_path_buf(), true, false));
        self
    }

    /// Makes the device node `path` usable at the same path.
    pub fn device(mut self, path: &Path) -> Self {
        self.devices.push(path.to_path_buf());
        self
    }

    pub fn build(
        self,
        uid: u32,
        gid: u32,
        groups: Vec<u32>,
        procs: &[PathBuf],
    ) -> Result<Plan, JailError> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut binds = Vec::new();
        let mut links = Vec::new();
        let add_parents = |p: &Path, dirs: &mut Vec<PathBuf>| {
            let mut acc = PathBuf::from("/");
            if let Some(parent) = p.parent() {
                for c in parent.components().skip(1) {
                    acc.push(c);
                    if !dirs.contains(&acc) {
                        dirs.push(acc.clone());
                    }
                }
            }
        };
        // Top-level links of a merged /usr (`/lib -> usr/lib`) are copied.
        for name in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(name);
            if let Ok(target) = std::fs::read_link(&host) {
                links.push((cstr(&target)?, cstr(&self.root.join(name))?));
            }
        }
        let all = self
            .binds
            .iter()
            .map(|(p, w, _)| (p.clone(), *w, false))
            .chain(self.devices.iter().map(|p| (p.clone(), true, true)));
        let mut seen: Vec<PathBuf> = Vec::new();
        for (path, writable, device) in all {
            // One mount per path (two drives may be the same placeholder).
            if seen.contains(&path) {
                continue;
            }
            seen.push(path.clone());
            let meta = std::fs::metadata(&path).map_err(|e| JailError::Files(path.clone(), e))?;
            add_parents(&path, &mut dirs);
            let file = !meta.is_dir();
            if !file && !dirs.contains(&path) {
                dirs.push(path.clone());
            }
            let inside = self.root.join(path.strip_prefix("/").unwrap_or(&path));
            binds.push(Bind {
                source: cstr(&path)?,
                target: cstr(&inside)?,
                file,
                writable,
                device,
            });
        }
        let dirs = dirs
            .iter()
            .map(|d| cstr(&self.root.join(d.strip_prefix("/").unwrap_or(d))))
            .collect::<Result<_, _>>()?;
        Ok(Plan {
            root: cstr(&self.root)?,
            dirs,
            binds,
            links,
            procs: procs.iter().map(|p| cstr(p)).collect::<Result<_, _>>()?,
            uid,
            gid,
            groups,
        })
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Plan {
    /// Confines the calling process. Runs in the child between fork and
    /// exec: system calls only, on memory prepared before the fork.
    pub fn enter(&self) -> io::Result<()> {
        let null = std::ptr::null::<libc::c_char>();
        // SAFETY: every call below is a plain system call; each pointer is
        // either null where the call allows it, or points to a
        // NUL-terminated string or an array owned by `self`, alive for the
        // whole call.
        unsafe {
            // 1. The cgroups, while we may still write there.
            for p in &self.procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                check(fd)?;
                let rc = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if rc != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            // 2. The mount namespace: nothing propagates back to the host.
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                c"tmpfs".as_ptr(),
                self.root.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"mode=0755,size=64k,nr_inodes=256".as_ptr().cast(),
            ))?;
            for d in &self.dirs {
                if libc::mkdir(d.as_ptr(), 0o755) < 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(e);
                    }
                }
            }
            for b in &self.binds {
                if b.file {
                    let fd = libc::open(
                        b.target.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o600,
                    );
                    check(fd)?;
                    libc::close(fd);
                }
                check(libc::mount(
                    b.source.as_ptr(),
                    b.target.as_ptr(),
                    null,
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
                let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID;
                if !b.device {
                    flags |= libc::MS_NODEV;
                }
                if !b.writable {
                    flags |= libc::MS_RDONLY;
                }
                check(libc::mount(
                    null,
                    b.target.as_ptr(),
                    null,
                    flags,
                    std::ptr::null(),
                ))?;
            }
            for (target, link) in &self.links {
                check(libc::symlink(target.as_ptr(), link.as_ptr()))?;
            }
            // 3. The new root; the old one is detached and gone.
            check(libc::chdir(self.root.as_ptr()))?;
            check(
                libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int,
            )?;
            check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
            check(libc::chdir(c"/".as_ptr()))?;
            check(libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
                std::ptr::null(),
            ))?;
            // 4. No capability can come back: the bounding set is emptied
            // while we still hold CAP_SETPCAP.
            for cap in 0..64 {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::EINVAL) {
                        break; // past the last capability of this kernel
                    }
                    return Err(e);
                }
            }
            // 5. Our own uid. Leaving uid 0 clears the permitted, effective
            // and ambient sets.
            check(libc::setgroups(self.groups.len(), self.groups.as_ptr()))?;
            check(libc::setresgid(self.gid, self.gid, self.gid))?;
            check(libc::setresuid(self.uid, self.uid, self.uid))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        Ok(())
    }
}

/// Gives the VMM group access to a file the VMM opens (its memory file):
/// `root:<gid>`, mode 0660.
pub fn share_with_vmm(path: &Path, gid: u32) -> Result<(), JailError> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(path, Some(0), Some(gid))
        .and_then(|_| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)))
        .map_err(|e| JailError::Files(path.to_path_buf(), e))
}

/// Gives the VMM `uid` its instance folder (or a socket in it). Never
/// through a link: a VMM that plants one in its folder gets its own link.
pub fn give_to(path: &Path, uid: u32, gid: u32) -> Result<(), JailError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(|e| JailError::Files(path.to_path_buf(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_unique_and_come_back() {
        let pool = UidPool::new(1000, 3);
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        let c = pool.take().unwrap();
        let mut uids = vec![a.uid, b.uid, c.uid];
        uids.sort();
        assert_eq!(uids, [1000, 1001, 1002]);
        assert!(matches!(pool.take(), Err(JailError::NoUid { .. })));
        let freed = b.uid;
        drop(b);
        assert_eq!(pool.take().unwrap().uid, freed);
    }

    #[test]
    fn limits_follow_lambda() {
        let s = JailSettings::default();
        let l = Limits::for_guest(&s, LAMBDA_MB_PER_VCPU, 1769);
        assert_eq!(l.cpu_quota_us, Some(CPU_PERIOD_US));
        let l = Limits::for_guest(&s, LAMBDA_MB_PER_VCPU, 128);
        assert_eq!(l.cpu_quota_us, Some(7_235));
        assert_eq!(l.memory_bytes, (128 + 256) << 20);
        assert_eq!(Limits::for_guest(&s, 0, 128).cpu_quota_us, None);
    }

    #[test]
    fn a_plan_makes_every_parent_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("x/y");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(a.join("f"), b"").unwrap();
        let plan = PlanBuilder::new(PathBuf::from("/jail"))
            .read_only(&a.join("f"))
            .writable(&a)
            .build(1, 2, vec![2], &[])
            .unwrap();
        let dirs: Vec<_> = plan.dirs.iter().map(|d| d.to_str().unwrap()).collect();
        let mut unique = dirs.clone();
        unique.dedup();
        assert_eq!(dirs, unique);
        assert!(dirs.last().unwrap().ends_with("x/y"));
        assert!(plan.binds[0].file && !plan.binds[0].writable);
        assert!(!plan.binds[1].file && plan.binds[1].writable);
    }
}
