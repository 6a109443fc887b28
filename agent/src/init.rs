//! PID 1 duties: mounts from a table, the loopback interface, `flint.*` keys
//! from the kernel command line, reaping, and a clean power-off.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::mount::{mount, MsFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("mounting {target} failed")]
    Mount {
        target: String,
        #[source]
        source: nix::Error,
    },
    #[error("bringing up the loopback interface failed")]
    Loopback(#[source] std::io::Error),
    #[error("reading the kernel command line failed")]
    Cmdline(#[source] std::io::Error),
    #[error("configuring {0} failed ({1})")]
    Interface(&'static str, &'static str, #[source] std::io::Error),
    #[error("invalid network setting {0:?}")]
    NetworkSetting(String),
}

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

/// Mounted at boot, in order. /var/task and /tmp follow when the host
/// configures the instance.
const BOOT_MOUNTS: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755,size=16m"),
    },
];

pub fn mount_boot_filesystems() -> Result<(), InitError> {
    for m in BOOT_MOUNTS {
        match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
            // devtmpfs may already be mounted by the kernel (DEVTMPFS_MOUNT).
            Ok(()) | Err(nix::Error::EBUSY) => {}
            Err(source) => {
                return Err(InitError::Mount {
                    target: m.target.into(),
                    source,
                })
            }
        }
    }
    let _ = std::fs::create_dir_all("/dev/shm");
    let _ = mount(
        Some("tmpfs"),
        "/dev/shm",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777,size=64m"),
    );
    let _ = std::fs::create_dir_all("/dev/pts");
    let _ = mount(
        Some("devpts"),
        "/dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("ptmxmode=0666"),
    );
    Ok(())
}

/// Mounts `fstype` from `source` at `target`, creating nothing on the
/// read-only root: the image has the mount points.
pub fn mount_at(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    mount(Some(source), target, Some(fstype), flags, data).map_err(|source| InitError::Mount {
        target: target.into(),
        source,
    })
}

/// Sets the `lo` interface up, so that the Runtime API can listen on 127.0.0.1.
pub fn loopback_up() -> Result<(), InitError> {
    // SAFETY: socket(2) with constant arguments has no memory-safety preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(InitError::Loopback(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads a valid, NUL-terminated ifreq that outlives the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    if rc < 0 {
        return Err(InitError::Loopback(std::io::Error::last_os_error()));
    }
    Ok(())
}

fn sockaddr_in(a: std::net::Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux and both
    // are plain old data; the kernel reads the bytes as a sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Configures `eth0` from `flint.ip=A.B.C.D/N` and `flint.gw=A.B.C.D`: its
/// address, up, and the default route. Every clone of a snapshot keeps
/// these (the host side translates them).
pub fn network_up(ip: &str, gateway: Option<&str>) -> Result<(), InitError> {
    const IF: &str = "eth0";
    let bad = || InitError::NetworkSetting(ip.to_string());
    let (addr, prefix) = ip.split_once('/').ok_or_else(bad)?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u32 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
    let mask = std::net::Ipv4Addr::from(u32::MAX.checked_shl(32 - prefix).unwrap_or(0));
    let fail = |what| move |e| InitError::Interface(IF, what, e);
    // SAFETY: socket(2) with constant arguments has no memory-safety preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(fail("socket")(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let request = || {
        // SAFETY: ifreq is plain old data; all-zero bytes are a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(IF.bytes()) {
            *dst = src as libc::c_char;
        }
        req
    };
    let ioctl = |op: libc::c_ulong, req: &mut libc::ifreq, what: &'static str| {
        // SAFETY: the request is a valid ifreq with a NUL-terminated name
        // that outlives the call; the kernel reads (or fills) it.
        if unsafe { libc::ioctl(sock.as_raw_fd(), op, req as *mut libc::ifreq) } < 0 {
            return Err(fail(what)(std::io::Error::last_os_error()));
        }
        Ok(())
    };
    let mut req = request();
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    ioctl(libc::SIOCSIFADDR, &mut req, "address")?;
    let mut req = request();
    req.ifr_ifru.ifru_netmask = sockaddr_in(mask);
    ioctl(libc::SIOCSIFNETMASK, &mut req, "netmask")?;
    let mut req = request();
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(libc::SIOCSIFFLAGS, &mut req, "up")?;
    if let Some(gw) = gateway {
        let gw: std::net::Ipv4Addr = gw
            .parse()
            .map_err(|_| InitError::NetworkSetting(gw.to_string()))?;
        // SAFETY: rtentry is plain old data; all-zero bytes are a valid value.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr_in(std::net::Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr_in(std::net::Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr_in(gw);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        // SAFETY: SIOCADDRT reads a valid rtentry that outlives the call
        // (rt_dev is null: the kernel picks the interface by the gateway).
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &rt) } < 0 {
            return Err(fail("default route")(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// The `flint.*` keys of the kernel command line, without the prefix.
pub fn flint_cmdline() -> Result<HashMap<String, String>, InitError> {
    let text = std::fs::read_to_string("/proc/cmdline").map_err(InitError::Cmdline)?;
    Ok(parse_cmdline(&text))
}

pub fn parse_cmdline(text: &str) -> HashMap<String, String> {
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix("flint."))
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

/// `_IOW('R', 0x03, int[2])`: add entropy, with credit.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the CRNG now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
/// `_IO(0x12, 97)`: flush a block device's buffers.
const BLKFLSBUF: libc::c_ulong = 0x1261;

/// `/dev/urandom`, opened once at boot: a restored clone reseeds with two
/// ioctls, without walking a path (under TCG, a clone pays for every kernel
/// path it runs for the first time).
static URANDOM: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();

fn urandom() -> Option<&'static std::fs::File> {
    URANDOM
        .get_or_init(|| {
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/urandom")
                .ok()
        })
        .as_ref()
}

/// Opens what the agent keeps open for restores; called before the first
/// snapshot can be taken.
pub fn open_for_restores() {
    urandom();
}

/// Credits host entropy to the kernel's pool and reseeds the CRNG, so that
/// clones of one snapshot draw different random numbers from now on.
pub fn reseed_rng(entropy: &[u8]) {
    if entropy.is_empty() {
        return;
    }
    let Some(f) = urandom() else {
        return;
    };
    let n = entropy.len().min(512);
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + n);
    info.extend_from_slice(&((n * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(n as i32).to_ne_bytes());
    info.extend_from_slice(&entropy[..n]);
    info.resize(8 + n.div_ceil(4) * 4, 0);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buf_size bytes of
    // data follow the two ints; `info` holds exactly that and outlives the call.
    let added = unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) };
    if added < 0 {
        // Without CAP_SYS_ADMIN or support: mix in without credit.
        use std::io::Write;
        let _ = (&*f).write_all(&entropy[..n]);
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let _ = unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG as _) };
}

/// Drops a block device's cached pages, so that a device whose backing
/// file changed under a restored snapshot is read afresh.
pub fn flush_block_device(dev: &str) {
    if let Ok(f) = std::fs::File::open(dev) {
        // SAFETY: BLKFLSBUF takes no argument besides the open block device.
        let _ = unsafe { libc::ioctl(f.as_raw_fd(), BLKFLSBUF as _) };
    }
}

/// Reaps every exited child; returns those with their exit code (or -1) and signal.
pub fn reap() -> Vec<(i32, i32, i32)> {
    let mut out = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => out.push((pid.as_raw(), code, 0)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => out.push((pid.as_raw(), -1, sig as i32)),
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => {}
        }
    }
    out
}

/// Flushes file systems and ends the VM. The host runs QEMU with
/// `-no-reboot`, so a reboot stops the VM. Never returns.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // reboot(2) only returns on error; there is nothing left to do.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_keys_are_read_without_prefix() {
        let m = parse_cmdline("console=ttyS0 flint.channel=/dev/vport0p1 quiet flint.debug\n");
        assert_eq!(m.get("channel").map(String::as_str), Some("/dev/vport0p1"));
        assert_eq!(m.get("debug").map(String::as_str), Some(""));
        assert_eq!(m.len(), 2);
    }
}
