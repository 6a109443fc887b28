//! The guest's serial console, bounded. QEMU appends it to `console.log`
//! (`append=on`); a keeper beside each VM moves the newest
//! [`CONSOLE_KEEP`] bytes to `console.log.1` and empties `console.log`
//! whenever it passes [`CONSOLE_CAP`], so a guest that writes gigabytes to
//! its console costs the host at most about `CONSOLE_CAP + CONSOLE_KEEP`
//! plus what it writes between two checks. Reading the tail reads only the
//! tail.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

/// Size at which `console.log` is rotated.
pub const CONSOLE_CAP: u64 = 1024 * 1024;
/// Bytes kept of a rotated console (the newest).
pub const CONSOLE_KEEP: u64 = 64 * 1024;
/// How often the keeper looks.
const CHECK_EVERY: Duration = Duration::from_millis(500);

pub fn path(dir: &Path) -> PathBuf {
    dir.join("console.log")
}

fn rotated(dir: &Path) -> PathBuf {
    dir.join("console.log.1")
}

/// The last `max` bytes of `path`, read from its end.
fn tail_of(path: &Path, max: u64) -> Vec<u8> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut out = Vec::with_capacity((len - start) as usize);
    let _ = f.take(max).read_to_end(&mut out);
    out
}

/// The last `max_bytes` of the console, across a rotation.
pub fn tail(dir: &Path, max_bytes: usize) -> String {
    let max = max_bytes as u64;
    let mut text = tail_of(&path(dir), max);
    if (text.len() as u64) < max {
        let mut older = tail_of(&rotated(dir), max - text.len() as u64);
        older.extend_from_slice(&text);
        text = older;
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// Rotates the console once if it is over the cap. Returns whether it did.
pub fn rotate_if_full(dir: &Path) -> std::io::Result<bool> {
    let current = path(dir);
    let len = match std::fs::metadata(&current) {
        Ok(m) => m.len(),
        Err(_) => return Ok(false),
    };
    if len <= CONSOLE_CAP {
        return Ok(false);
    }
    let keep = tail_of(&current, CONSOLE_KEEP);
    std::fs::write(rotated(dir), keep)?;
    // QEMU writes with O_APPEND: after this its next write lands at 0.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&current)?
        .set_len(0)?;
    Ok(true)
}

/// Keeps the console of the VM whose exit `exited` reports within bounds
/// until it exits.
pub fn keep(dir: PathBuf, mut exited: watch::Receiver<Option<String>>) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = exited.wait_for(|s| s.is_some()) => return,
                _ = tokio::time::sleep(CHECK_EVERY) => {}
            }
            let d = dir.clone();
            match tokio::task::spawn_blocking(move || rotate_if_full(&d)).await {
                Ok(Ok(true)) => {
                    tracing::debug!(dir = %dir.display(), "guest console rotated")
                }
                Ok(Ok(false)) => {}
                // The directory is gone: the VM is being torn down.
                _ => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_flooded_console_stays_bounded_and_keeps_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path(dir.path()))
            .unwrap();
        for i in 0..40u32 {
            // 40 x 256 KB = 10 MB written, like a guest flooding it.
            f.write_all(&vec![b'a' + (i % 26) as u8; 256 * 1024])
                .unwrap();
            rotate_if_full(dir.path()).unwrap();
            let total: u64 = [path(dir.path()), rotated(dir.path())]
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            assert!(total <= CONSOLE_CAP + CONSOLE_KEEP + 256 * 1024, "{total}");
        }
        writeln!(f, "the last words").unwrap();
        let t = tail(dir.path(), 100);
        assert!(t.ends_with("the last words\n"), "{t:?}");
        assert!(t.len() <= 100);
    }
}
