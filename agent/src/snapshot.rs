//! Work done once, just before the host snapshots the VM, that every clone
//! of the snapshot would otherwise repeat after its restore.
//!
//! Under TCG a clone pays for every guest code path it runs for the first
//! time (its QEMU process starts with an empty translation cache), so what
//! is not done after a restore matters:
//! - the pages of the files the runtime and the agent map (binaries, shared
//!   libraries) are read into the page cache here; a clone that touches one
//!   of their pages for the first time then maps a page already in memory
//!   instead of reading it from its disk and decompressing it (the runtime
//!   images are LZ4-compressed EROFS);
//! - the memory meter learns the processes (`memory.rs`);
//! - about a second after boot the kernel replaces its early TSC
//!   clocksource with the calibrated one (a `stop_machine`, a log line); a
//!   runtime snapshot taken before that made every clone do it.

use std::collections::BTreeSet;
use std::io::Read;
use std::time::{Duration, Instant};

/// What was prepared.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Prepared {
    pub files: u32,
    pub bytes: u64,
}

const CLOCKSOURCE: &str = "/sys/devices/system/clocksource/clocksource0/current_clocksource";

/// Prepares the VM for its snapshot; takes at most a few seconds.
pub fn prepare() -> Prepared {
    // A quarter of the memory still available: the page cache of a clone
    // must not crowd out its function.
    let budget = meminfo_kb("MemAvailable:").map_or(64 << 20, |kb| kb * 1024 / 4);
    let prepared = read_mapped_files(&mapped_files(), budget);
    // The memory meter lists the processes now, so that a clone's first
    // invocation only reads the status of the ones it knows.
    crate::memory::max_used_kb();
    wait_for_calibrated_clocksource(Duration::from_secs(3));
    // Deferred kernel work queued by init (RCU callbacks, work items) runs
    // now rather than in every clone.
    std::thread::sleep(Duration::from_millis(50));
    prepared
}

/// The regular files mapped by any process, from `/proc/*/maps`.
fn mapped_files() -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return files;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let path = entry.path().join("maps");
        if let Ok(maps) = std::fs::read_to_string(path) {
            files.extend(parse_maps(&maps));
        }
    }
    files
}

/// The file paths of a `maps` listing: mappings with an inode and an
/// absolute path that still exists.
fn parse_maps(maps: &str) -> impl Iterator<Item = String> + '_ {
    maps.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let inode = fields.nth(4)?;
        let path = fields.next()?;
        let deleted = fields.next().is_some();
        (inode != "0" && path.starts_with('/') && !deleted).then(|| path.to_string())
    })
}

/// Reads `files` whole, up to `budget` bytes in all.
fn read_mapped_files(files: &BTreeSet<String>, budget: u64) -> Prepared {
    let mut out = Prepared::default();
    let mut buf = vec![0u8; 256 * 1024];
    for path in files {
        let Ok(mut f) = std::fs::File::open(path) else {
            continue;
        };
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        if out.bytes + size > budget {
            continue;
        }
        let mut read = 0u64;
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            read += n as u64;
        }
        out.files += 1;
        out.bytes += read;
    }
    out
}

fn wait_for_calibrated_clocksource(limit: Duration) {
    let started = Instant::now();
    while started.elapsed() < limit {
        match std::fs::read_to_string(CLOCKSOURCE) {
            Ok(cs) if cs.trim() == "tsc-early" => std::thread::sleep(Duration::from_millis(20)),
            _ => return,
        }
    }
}

fn meminfo_kb(key: &str) -> Option<u64> {
    crate::memory::kb_field(&std::fs::read_to_string("/proc/meminfo").ok()?, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_yield_mapped_files_only() {
        let maps = "\
55d0c0000000-55d0c0010000 r--p 00000000 fe:00 1234 /sbin/flint-agent
55d0c0010000-55d0c0020000 r-xp 00010000 fe:00 1234 /sbin/flint-agent
7f0000000000-7f0000001000 rw-p 00000000 00:00 0
7f0000001000-7f0000002000 r-xp 00000000 fe:01 77 /var/task/bootstrap
7f0000002000-7f0000003000 rw-s 00000000 00:05 9 /memfd:x (deleted)
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
7f0000003000-7f0000004000 r--p 00000000 fe:01 78 /tmp/gone (deleted)
";
        let files: BTreeSet<String> = parse_maps(maps).collect();
        let want: BTreeSet<String> = ["/sbin/flint-agent", "/var/task/bootstrap"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(files, want);
    }

    #[test]
    fn reading_stops_at_the_budget() {
        let dir = std::env::temp_dir().join(format!("flint-prefetch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, vec![1u8; 3000]).unwrap();
        std::fs::write(&b, vec![2u8; 5000]).unwrap();
        let files: BTreeSet<String> = [&a, &b].iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            read_mapped_files(&files, 4000),
            Prepared {
                files: 1,
                bytes: 3000
            }
        );
        assert_eq!(
            read_mapped_files(&files, 10_000),
            Prepared {
                files: 2,
                bytes: 8000
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
