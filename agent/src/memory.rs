//! The memory the function used, as Lambda's `Max Memory Used` reports it:
//! the sum of the peak resident memory (`VmHWM`) of every user process but
//! PID 1.
//!
//! Measured when each invocation ends, so it must be cheap, most of all in
//! a freshly restored clone, where every kernel path runs for the first time
//! (under TCG, translated first). The meter keeps `/proc/<pid>/status` open
//! for the user processes it knows and reads them in place; it lists
//! `/proc` (and opens the status of every process, kernel threads included)
//! only when the kernel's count of threads changed or a known process is
//! gone.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

static METER: Mutex<Option<Meter>> = Mutex::new(None);

/// Peak resident memory of the user processes, in KiB.
pub fn max_used_kb() -> u64 {
    let mut meter = METER.lock().unwrap_or_else(|p| p.into_inner());
    meter
        .get_or_insert_with(|| Meter::new(SysProc))
        .max_used_kb()
}

/// Where the meter reads processes from (the real `/proc`, or a fake in
/// tests).
trait Processes {
    /// Threads in the system (`sysinfo`'s process count).
    fn threads(&self) -> u64;
    /// Every process id.
    fn pids(&self) -> Vec<u32>;
    fn open_status(&self, pid: u32) -> Option<Box<dyn Status>>;
}

trait Status: Send {
    /// The whole status text, or `None` when the process is gone.
    fn read(&self, buf: &mut Vec<u8>) -> Option<()>;
}

struct SysProc;

impl Processes for SysProc {
    fn threads(&self) -> u64 {
        nix::sys::sysinfo::sysinfo()
            .map(|s| s.process_count() as u64)
            .unwrap_or(0)
    }

    fn pids(&self) -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect()
    }

    fn open_status(&self, pid: u32) -> Option<Box<dyn Status>> {
        let f = File::open(format!("/proc/{pid}/status")).ok()?;
        Some(Box::new(f))
    }
}

impl Status for File {
    fn read(&self, buf: &mut Vec<u8>) -> Option<()> {
        buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            // A process that exited answers ESRCH.
            let n = self.read_at(&mut chunk, buf.len() as u64).ok()?;
            if n == 0 {
                return Some(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

struct Meter<P = SysProc> {
    sys: P,
    /// The user processes' status files, by pid.
    known: HashMap<u32, Box<dyn Status>>,
    /// The thread count when `known` was listed.
    threads: Option<u64>,
    buf: Vec<u8>,
}

impl<P: Processes> Meter<P> {
    fn new(sys: P) -> Self {
        Self {
            sys,
            known: HashMap::new(),
            threads: None,
            buf: Vec::with_capacity(4096),
        }
    }

    fn max_used_kb(&mut self) -> u64 {
        let threads = self.sys.threads();
        if self.threads != Some(threads) {
            self.list(threads);
        }
        match self.sum() {
            Some(kb) => kb,
            None => {
                // A known process is gone: list again.
                self.list(threads);
                self.sum().unwrap_or(0)
            }
        }
    }

    /// The sum over the known processes, or `None` if one is gone.
    fn sum(&mut self) -> Option<u64> {
        let mut total = 0;
        for status in self.known.values() {
            status.read(&mut self.buf)?;
            total += parse_hwm_kb(&String::from_utf8_lossy(&self.buf));
        }
        Some(total)
    }

    fn list(&mut self, threads: u64) {
        self.known.clear();
        for pid in self.sys.pids() {
            if pid == 1 {
                continue;
            }
            let Some(status) = self.sys.open_status(pid) else {
                continue;
            };
            // Kernel threads have no VmHWM line.
            if status.read(&mut self.buf).is_some()
                && String::from_utf8_lossy(&self.buf).contains("\nVmHWM:")
            {
                self.known.insert(pid, status);
            }
        }
        self.threads = Some(threads);
    }
}

fn parse_hwm_kb(status: &str) -> u64 {
    kb_field(status, "VmHWM:").unwrap_or(0)
}

/// The number after `key` in a `/proc` listing of `Key:   123 kB` lines
/// (`status`, `meminfo`).
pub fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A fake `/proc`: pid -> VmHWM (None: a kernel thread), and a count of
    /// how often it was listed.
    #[derive(Clone, Default)]
    struct Fake {
        procs: Arc<Mutex<HashMap<u32, Option<u64>>>>,
        threads: Arc<Mutex<u64>>,
        listings: Arc<Mutex<u32>>,
    }

    struct FakeStatus {
        pid: u32,
        procs: Arc<Mutex<HashMap<u32, Option<u64>>>>,
    }

    impl Status for FakeStatus {
        fn read(&self, buf: &mut Vec<u8>) -> Option<()> {
            let procs = self.procs.lock().unwrap();
            let hwm = procs.get(&self.pid)?;
            buf.clear();
            buf.extend_from_slice(format!("Name:\tp{}\n", self.pid).as_bytes());
            if let Some(kb) = hwm {
                buf.extend_from_slice(format!("VmHWM:\t {kb} kB\n").as_bytes());
            }
            Some(())
        }
    }

    impl Processes for Fake {
        fn threads(&self) -> u64 {
            *self.threads.lock().unwrap()
        }
        fn pids(&self) -> Vec<u32> {
            *self.listings.lock().unwrap() += 1;
            self.procs.lock().unwrap().keys().copied().collect()
        }
        fn open_status(&self, pid: u32) -> Option<Box<dyn Status>> {
            self.procs.lock().unwrap().get(&pid)?;
            Some(Box::new(FakeStatus {
                pid,
                procs: self.procs.clone(),
            }))
        }
    }

    #[test]
    fn hwm_is_parsed_from_proc_status() {
        assert_eq!(
            parse_hwm_kb("Name:\tx\nVmHWM:\t   1234 kB\nVmRSS:\t 1 kB\n"),
            1234
        );
        assert_eq!(parse_hwm_kb("Name:\tkthread\n"), 0);
    }

    #[test]
    fn sums_user_processes_and_lists_proc_only_on_change() {
        let fake = Fake::default();
        {
            let mut p = fake.procs.lock().unwrap();
            p.insert(1, Some(5000)); // the agent: not the function's
            p.insert(2, None); // a kernel thread
            p.insert(40, Some(1000));
            *fake.threads.lock().unwrap() = 3;
        }
        let mut m = Meter::new(fake.clone());
        assert_eq!(m.max_used_kb(), 1000);
        // Nothing changed: the status is read again, /proc is not listed.
        fake.procs.lock().unwrap().insert(40, Some(1500));
        assert_eq!(m.max_used_kb(), 1500);
        assert_eq!(*fake.listings.lock().unwrap(), 1);
        // A new process: the thread count changed.
        fake.procs.lock().unwrap().insert(41, Some(300));
        *fake.threads.lock().unwrap() = 4;
        assert_eq!(m.max_used_kb(), 1800);
        assert_eq!(*fake.listings.lock().unwrap(), 2);
        // One process replaced by another, the count unchanged: the gone
        // one's status fails, so /proc is listed again.
        {
            let mut p = fake.procs.lock().unwrap();
            p.remove(&41);
            p.insert(42, Some(700));
        }
        assert_eq!(m.max_used_kb(), 2200);
        assert_eq!(*fake.listings.lock().unwrap(), 3);
    }
}
