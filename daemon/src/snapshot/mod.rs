//! Snapshots on disk: content-addressed directories holding a VM's device
//! state and its memory file, with a manifest that carries a magic, a format
//! version and checksums. A snapshot whose files are missing or do not match
//! their checksums is never restored: it is removed and rebuilt.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot store I/O failed on {0}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("snapshot {0} is damaged: {1}")]
    Damaged(String, String),
}

const MAGIC: &str = "flint-snapshot";
const FORMAT: u32 = 1;

/// Size of the code and layer disks in every VM: images are padded to it
/// (sparsely), so that a restored snapshot sees the same disk size whatever
/// the function.
pub const DISK_BYTES: u64 = 512 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotKind {
    /// A runtime image booted until its agent was ready (no function yet).
    Runtime,
    /// A function version initialised until its runtime waited for an event.
    Function,
}

/// The manifest, written last: a snapshot without one is incomplete.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub magic: String,
    pub format: u32,
    pub key: String,
    pub kind: SnapshotKind,
    pub memory_mb: u32,
    pub vcpus: u32,
    pub state_sha256: String,
    pub memory_sha256: String,
    pub created: String,
    /// What it was made of, for people.
    pub description: String,
}

/// A usable snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub key: String,
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Snapshot {
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn memory(&self) -> PathBuf {
        self.dir.join("memory")
    }
}

pub struct SnapshotStore {
    dir: PathBuf,
    /// Snapshots whose checksums this process has verified.
    verified: Mutex<HashSet<String>>,
}

/// A key from the parts a snapshot depends on.
pub fn key_of(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// The key of a runtime snapshot: the engine, the accelerator, the kernel
/// and runtime image it booted, and the VM's shape.
pub fn runtime_key(accel: &str, kernel: &Path, image: &Path, memory_mb: u32, vcpus: u32) -> String {
    key_of(&[
        "runtime",
        &crate::engine::ENGINE_VERSION.to_string(),
        accel,
        &file_identity(kernel),
        &file_identity(image),
        &memory_mb.to_string(),
        &vcpus.to_string(),
        &DISK_BYTES.to_string(),
    ])
}

/// The key of a function snapshot: its runtime snapshot's key and
/// everything the function's init depends on.
pub fn function_key(
    runtime_key: &str,
    f: &crate::functions::Function,
    region: &str,
    account_id: &str,
) -> String {
    let env = serde_json::to_string(&f.environment).unwrap_or_default();
    let layers: Vec<&str> = f.layers.iter().map(|l| l.sha256_hex.as_str()).collect();
    // The init ran with (or without) this network.
    let net = serde_json::to_string(&f.network).unwrap_or_default();
    key_of(&[
        &net,
        "function",
        runtime_key,
        &f.name,
        &f.version,
        f.runtime.name(),
        &f.handler,
        &env,
        &f.timeout_s.to_string(),
        &f.ephemeral_mb.to_string(),
        &f.code_sha256_hex,
        &layers.join(","),
        region,
        account_id,
    ])
}

/// Identity of a file for keys: its canonical path, size and modification time.
pub fn file_identity(p: &Path) -> String {
    let canon = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let meta = std::fs::metadata(&canon).ok();
    let size = meta.as_ref().map(|m| m.len()).unwrap_or(0);
    let mtime = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}:{size}:{mtime}", canon.display())
}

fn sha256_file(p: &Path) -> Result<String, SnapshotError> {
    let io = |e| SnapshotError::Io(p.to_path_buf(), e);
    let mut f = std::fs::File::open(p).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Pads a disk image to [`DISK_BYTES`] (sparse; erofs ignores the tail).
pub fn pad_disk(p: &Path) -> Result<(), SnapshotError> {
    let io = |e| SnapshotError::Io(p.to_path_buf(), e);
    let len = std::fs::metadata(p).map_err(io)?.len();
    if len < DISK_BYTES {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .map_err(io)?;
        f.set_len(DISK_BYTES).map_err(io)?;
    }
    Ok(())
}

impl SnapshotStore {
    pub fn new(dir: PathBuf) -> Result<Self, SnapshotError> {
        std::fs::create_dir_all(&dir).map_err(|e| SnapshotError::Io(dir.clone(), e))?;
        // Half-built snapshots of an earlier run.
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".tmp") {
                    let _ = std::fs::remove_dir_all(e.path());
                } else if name.ends_with(".part") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(Self {
            dir,
            verified: Mutex::new(HashSet::new()),
        })
    }

    /// The empty disk that stands for code and layers in runtime snapshots.
    pub fn placeholder(&self) -> Result<PathBuf, SnapshotError> {
        let p = self.dir.join("placeholder.img");
        if !p.exists() {
            let tmp = self.dir.join("placeholder.img.part");
            let f = std::fs::File::create(&tmp).map_err(|e| SnapshotError::Io(tmp.clone(), e))?;
            f.set_len(DISK_BYTES)
                .map_err(|e| SnapshotError::Io(tmp.clone(), e))?;
            std::fs::rename(&tmp, &p).map_err(|e| SnapshotError::Io(p.clone(), e))?;
        }
        Ok(p)
    }

    /// A directory to build a snapshot in; [`SnapshotStore::commit`] publishes it.
    pub fn staging(&self, key: &str) -> Result<PathBuf, SnapshotError> {
        let p = self
            .dir
            .join(format!("{key}.{}.tmp", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&p).map_err(|e| SnapshotError::Io(p.clone(), e))?;
        Ok(p)
    }

    /// Checksums the staged files, writes the manifest and publishes.
    pub fn commit(
        &self,
        staging: &Path,
        key: &str,
        kind: SnapshotKind,
        memory_mb: u32,
        vcpus: u32,
        description: String,
    ) -> Result<Snapshot, SnapshotError> {
        let manifest = Manifest {
            magic: MAGIC.into(),
            format: FORMAT,
            key: key.into(),
            kind,
            memory_mb,
            vcpus,
            state_sha256: sha256_file(&staging.join("state"))?,
            memory_sha256: sha256_file(&staging.join("memory"))?,
            created: crate::time::rfc3339(std::time::SystemTime::now()),
            description,
        };
        let m = staging.join("manifest.json");
        std::fs::write(
            &m,
            serde_json::to_vec_pretty(&manifest).expect("serialisable"),
        )
        .map_err(|e| SnapshotError::Io(m.clone(), e))?;
        let dir = self.dir.join(key);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(staging, &dir).map_err(|e| SnapshotError::Io(dir.clone(), e))?;
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string());
        Ok(Snapshot {
            key: key.into(),
            dir,
            manifest,
        })
    }

    /// The snapshot `key` if it exists and is sound. A damaged one is
    /// logged and removed (so that it is rebuilt), never returned.
    /// Blocking (checksums the files the first time).
    pub fn get(&self, key: &str) -> Option<Snapshot> {
        let dir = self.dir.join(key);
        if !dir.exists() {
            return None;
        }
        match self.check(key, &dir) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(snapshot = %key, error = %e, "damaged snapshot removed; it will be rebuilt");
                let _ = std::fs::remove_dir_all(&dir);
                self.verified
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(key);
                None
            }
        }
    }

    fn check(&self, key: &str, dir: &Path) -> Result<Snapshot, SnapshotError> {
        let damaged = |m: String| SnapshotError::Damaged(key.into(), m);
        let text = std::fs::read(dir.join("manifest.json"))
            .map_err(|e| damaged(format!("manifest: {e}")))?;
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|e| damaged(format!("manifest: {e}")))?;
        if manifest.magic != MAGIC || manifest.format != FORMAT || manifest.key != key {
            return Err(damaged("manifest magic, format or key mismatch".into()));
        }
        let snap = Snapshot {
            key: key.into(),
            dir: dir.to_path_buf(),
            manifest,
        };
        let done = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key);
        if !done {
            for (file, want) in [
                (snap.state(), &snap.manifest.state_sha256),
                (snap.memory(), &snap.manifest.memory_sha256),
            ] {
                let got = sha256_file(&file).map_err(|e| damaged(e.to_string()))?;
                if &got != want {
                    return Err(damaged(format!("{} checksum mismatch", file.display())));
                }
            }
            self.verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.to_string());
        }
        Ok(snap)
    }

    /// Removes snapshots that are not in `live`. Returns how many went.
    pub fn collect(&self, live: &HashSet<String>) -> usize {
        let mut n = 0;
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if e.path().is_dir() && !name.ends_with(".tmp") && !live.contains(&name) {
                    if std::fs::remove_dir_all(e.path()).is_ok() {
                        n += 1;
                    }
                    self.verified
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&name);
                }
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(store: &SnapshotStore, key: &str, state: &[u8], memory: &[u8]) -> Snapshot {
        let s = store.staging(key).unwrap();
        std::fs::write(s.join("state"), state).unwrap();
        std::fs::write(s.join("memory"), memory).unwrap();
        store
            .commit(&s, key, SnapshotKind::Runtime, 128, 1, "test".into())
            .unwrap()
    }

    #[test]
    fn committed_snapshots_survive_a_new_store_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path().to_path_buf()).unwrap();
        let k = key_of(&["a", "b"]);
        stage(&store, &k, b"state", b"memory");
        assert!(store.get(&k).is_some());
        // A new process verifies checksums again.
        let store = SnapshotStore::new(dir.path().to_path_buf()).unwrap();
        assert_eq!(store.get(&k).unwrap().manifest.memory_mb, 128);
        // Damage: a flipped byte in the memory file.
        let store = SnapshotStore::new(dir.path().to_path_buf()).unwrap();
        std::fs::write(dir.path().join(&k).join("memory"), b"memorx").unwrap();
        assert!(store.get(&k).is_none());
        assert!(
            !dir.path().join(&k).exists(),
            "a damaged snapshot is removed"
        );
        // A missing file.
        stage(&store, &k, b"state", b"memory");
        let store = SnapshotStore::new(dir.path().to_path_buf()).unwrap();
        std::fs::remove_file(dir.path().join(&k).join("state")).unwrap();
        assert!(store.get(&k).is_none());
    }

    #[test]
    fn keys_depend_on_every_part_and_collection_keeps_live_ones() {
        assert_ne!(key_of(&["ab", "c"]), key_of(&["a", "bc"]));
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path().to_path_buf()).unwrap();
        stage(&store, "k1", b"s", b"m");
        stage(&store, "k2", b"s", b"m");
        let live: HashSet<String> = ["k1".to_string()].into();
        assert_eq!(store.collect(&live), 1);
        assert!(store.get("k1").is_some() && store.get("k2").is_none());
        assert!(!dir.path().join("k2").exists());
    }

    #[test]
    fn placeholder_and_padding_have_the_disk_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path().to_path_buf()).unwrap();
        let p = store.placeholder().unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), DISK_BYTES);
        let img = dir.path().join("img");
        std::fs::write(&img, b"erofs").unwrap();
        pad_disk(&img).unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), DISK_BYTES);
        assert_eq!(&std::fs::read(&img).unwrap()[..5], b"erofs");
    }
}
