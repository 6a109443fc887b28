//! The guest's serial console, bounded. QEMU appends it to `console.log`
//! (`append=on`); a keeper beside each VM moves the newest
//! [`CONSOLE_KEEP`] bytes to `console.log.1` and empties `console.log`
//! whenever it passes [`CONSOLE_CAP`], so a guest that writes gigabytes to
//! its console costs the host at most about `CONSOLE_CAP + CONSOLE_KEEP`
//! plus what it writes between two checks. Reading the tail reads only the
//! tail.

use std::io::{Read, Seek, SeekFrom, Write};
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

/// Opens a file in an instance folder, which the VMM's uid owns: never
/// through a link (a VMM taken over by its guest could plant one pointing
/// at any file on the host), and only a regular file.
fn open_own(path: &Path, opts: &mut std::fs::OpenOptions) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = opts
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(f)
}

/// The last `max` bytes of `path` (a file in an instance folder: QEMU's
/// console or its stderr), read from its end, never through a link.
pub fn tail_of(path: &Path, max: u64) -> Vec<u8> {
    let Ok(mut f) = open_own(path, std::fs::OpenOptions::new().read(true)) else {
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
    let len = match std::fs::symlink_metadata(&current) {
        Ok(m) if m.is_file() => m.len(),
        _ => return Ok(false),
    };
    if len <= CONSOLE_CAP {
        return Ok(false);
    }
    let keep = tail_of(&current, CONSOLE_KEEP);
    // Neither file is opened through a link the VMM may have planted.
    let _ = std::fs::remove_file(rotated(dir));
    open_own(
        &rotated(dir),
        std::fs::OpenOptions::new().write(true).create_new(true),
    )?
    .write_all(&keep)?;
    // QEMU writes with O_APPEND: after this its next write lands at 0.
    open_own(&current, std::fs::OpenOptions::new().write(true))?.set_len(0)?;
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

    #[test]
    fn links_planted_by_the_vmm_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, vec![b's'; (CONSOLE_CAP + 10) as usize]).unwrap();
        let inst = dir.path().join("instance");
        std::fs::create_dir(&inst).unwrap();
        std::os::unix::fs::symlink(&secret, path(&inst)).unwrap();
        // Not read, not rotated, not truncated.
        assert_eq!(tail(&inst, 100), "");
        assert!(!rotate_if_full(&inst).unwrap());
        assert_eq!(std::fs::metadata(&secret).unwrap().len(), CONSOLE_CAP + 10);
        // A planted `.1` link is replaced, not written through.
        std::fs::remove_file(path(&inst)).unwrap();
        std::fs::write(path(&inst), vec![b'c'; (CONSOLE_CAP + 10) as usize]).unwrap();
        std::os::unix::fs::symlink(&secret, rotated(&inst)).unwrap();
        assert!(rotate_if_full(&inst).unwrap());
        assert_eq!(std::fs::read(&secret).unwrap()[0], b's');
        assert!(!std::fs::symlink_metadata(rotated(&inst))
            .unwrap()
            .is_symlink());
    }
}
