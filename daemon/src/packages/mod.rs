//! Deployment packages: ZIP validation, and the read-only code images that
//! instances mount at `/var/task`. Images are content-addressed by the
//! package's SHA-256; nothing is stored for a package that fails validation.

mod extract;
mod validate;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use extract::{extract, Stage};

use sha2::{Digest, Sha256};

pub use validate::{validate, Entry, EntryKind, PackageRules, Runtime};

/// Writes a deployment package: `files` (name, content, mode) in the order
/// given, deflated, with ZIP's fixed default time, so that the same files
/// make the same package (and the same digest).
pub fn write_zip<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8], u32)>,
) -> Result<Vec<u8>, zip::result::ZipError> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data, mode) in files {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(mode);
        w.start_file(name, opts)?;
        w.write_all(data)?;
    }
    Ok(w.finish()?.into_inner())
}

/// Lambda's limit on a directly uploaded package, 50 MB.
pub const MAX_ZIPPED: u64 = 50 * 1024 * 1024;
/// Lambda's limit on the unzipped function (and its layers), 250 MB.
pub const MAX_UNZIPPED: u64 = 250 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("the deployment package is {size} bytes; the limit is {MAX_ZIPPED} bytes zipped")]
    TooLargeZipped { size: u64 },
    #[error("the unzipped package would be over {MAX_UNZIPPED} bytes")]
    TooLargeUnzipped,
    #[error("the deployment package is not a valid ZIP archive: {0}")]
    NotZip(String),
    #[error("entry {name:?}: {reason}")]
    BadEntry { name: String, reason: String },
    #[error("{0}")]
    Handler(String),
    #[error("writing the code image failed: {0}")]
    Store(String),
}

/// A stored, validated package.
#[derive(Debug, Clone)]
pub struct CodeImage {
    /// Hex SHA-256 of the ZIP.
    pub sha256_hex: String,
    /// Base64 SHA-256, as Lambda reports `CodeSha256`.
    pub sha256_b64: String,
    pub zip_size: u64,
    pub unzipped_size: u64,
    /// The read-only file system image.
    pub image: PathBuf,
    /// Keeps the package from garbage collection until the caller has
    /// recorded it (dropped with the last clone).
    pub pin: Arc<PackagePin>,
}

/// A package that is stored but perhaps not yet recorded by a function or
/// layer: collection leaves it alone while this lives.
#[derive(Debug)]
pub struct PackagePin {
    sha256_hex: String,
    pins: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for PackagePin {
    fn drop(&mut self) {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = pins.get_mut(&self.sha256_hex) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.sha256_hex);
            }
        }
    }
}

/// Content-addressed store of packages and their images.
///
/// Every file is written under a name of its own (`*.<uuid>.tmp`), synced,
/// renamed into place and its folder synced: concurrent stores of the same
/// package, or builds of the same `/opt` image, never share a file, and a
/// crash leaves either nothing or a whole file. The ZIP is published before
/// its image. An image is checked before it is reused.
pub struct CodeStore {
    dir: PathBuf,
    tmp: PathBuf,
    pins: Arc<Mutex<HashMap<String, usize>>>,
}

impl CodeStore {
    pub fn new(dir: PathBuf, tmp: PathBuf) -> Self {
        Self {
            dir,
            tmp,
            pins: Default::default(),
        }
    }

    pub fn image_path(&self, sha256_hex: &str) -> PathBuf {
        self.dir.join(format!("{sha256_hex}.erofs"))
    }

    pub fn zip_path(&self, sha256_hex: &str) -> PathBuf {
        self.dir.join(format!("{sha256_hex}.zip"))
    }

    fn pin(&self, sha256_hex: &str) -> Arc<PackagePin> {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        *pins.entry(sha256_hex.to_string()).or_default() += 1;
        Arc::new(PackagePin {
            sha256_hex: sha256_hex.to_string(),
            pins: self.pins.clone(),
        })
    }

    /// Validates `zip` against `rules` and stores it with its image. Blocking.
    pub fn store(&self, zip: &[u8], rules: &PackageRules) -> Result<CodeImage, PackageError> {
        let entries = validate(zip, rules)?;
        let digest = Sha256::digest(zip);
        let sha256_hex = hex::encode(digest);
        use base64::Engine as _;
        let sha256_b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        let unzipped_size = entries.iter().map(|e| e.size).sum();
        // Pinned before anything is written: a collection running beside
        // this store must not take the files away before they are recorded.
        let pin = self.pin(&sha256_hex);
        let image = self.image_path(&sha256_hex);
        let store = |e: std::io::Error| PackageError::Store(e.to_string());
        std::fs::create_dir_all(&self.dir).map_err(store)?;
        std::fs::create_dir_all(&self.tmp).map_err(store)?;
        let zip_path = self.zip_path(&sha256_hex);
        if !matches!(std::fs::read(&zip_path), Ok(b) if b == zip) {
            publish(&zip_path, |f| f.write_all(zip))?;
        }
        if !image_is_sound(&image) {
            let stage = tempfile_dir(&self.tmp).map_err(store)?;
            let result = Stage::open(&stage)
                .and_then(|s| extract(zip, &s, &entries))
                .and_then(|_| build_image(&stage, &image));
            let _ = std::fs::remove_dir_all(&stage);
            result?;
        }
        Ok(CodeImage {
            sha256_hex,
            sha256_b64,
            zip_size: zip.len() as u64,
            unzipped_size,
            image,
            pin,
        })
    }

    /// The stored ZIP of a package.
    pub fn zip_bytes(&self, sha256_hex: &str) -> Result<Vec<u8>, PackageError> {
        std::fs::read(self.zip_path(sha256_hex)).map_err(|e| PackageError::Store(e.to_string()))
    }

    /// The key of the `/opt` image for a list of layer packages, in order.
    pub fn opt_key(layer_shas: &[String]) -> String {
        let mut h = Sha256::new();
        for s in layer_shas {
            h.update(s.as_bytes());
            h.update(b"\n");
        }
        hex::encode(h.finalize())
    }

    pub fn opt_image_path(&self, layer_shas: &[String]) -> PathBuf {
        self.dir
            .join(format!("opt-{}.erofs", Self::opt_key(layer_shas)))
    }

    /// The read-only image mounted at `/opt`: the layers extracted in order,
    /// later ones overwriting earlier ones. Built once per list. Blocking.
    pub fn opt_image(&self, layer_shas: &[String]) -> Result<PathBuf, PackageError> {
        let image = self.opt_image_path(layer_shas);
        if image_is_sound(&image) {
            return Ok(image);
        }
        let store = |e: std::io::Error| PackageError::Store(e.to_string());
        std::fs::create_dir_all(&self.tmp).map_err(store)?;
        let stage = tempfile_dir(&self.tmp).map_err(store)?;
        let rules = PackageRules {
            runtime: None,
            handler: String::new(),
        };
        let result = (|| {
            let s = Stage::open(&stage)?;
            for sha in layer_shas {
                let zip = self.zip_bytes(sha)?;
                let entries = validate(&zip, &rules)?;
                extract(&zip, &s, &entries)?;
            }
            build_image(&stage, &image)
        })();
        let _ = std::fs::remove_dir_all(&stage);
        result.map(|_| image)
    }

    /// Removes packages, their images and `/opt` images that nothing refers
    /// to any more, except packages pinned by a store in flight.
    pub fn collect(
        &self,
        packages: &std::collections::HashSet<String>,
        opt_keys: &std::collections::HashSet<String>,
    ) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let keep = if let Some(k) = name
                .strip_prefix("opt-")
                .and_then(|n| n.strip_suffix(".erofs"))
            {
                opt_keys.contains(k)
            } else if let Some(sha) = name
                .strip_suffix(".zip")
                .or_else(|| name.strip_suffix(".erofs"))
            {
                packages.contains(sha) || pins.contains_key(sha)
            } else {
                true
            };
            if !keep {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Removes what an earlier run left half-written (`*.tmp`). Only at
    /// start: while the node runs, such files belong to stores in flight.
    pub fn remove_partial_files(&self) -> usize {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        rd.flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .filter(|e| std::fs::remove_file(e.path()).is_ok())
            .count()
    }
}

fn tempfile_dir(parent: &Path) -> std::io::Result<PathBuf> {
    let p = parent.join(format!("pkg-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&p)?;
    Ok(p)
}

/// A name of its own beside `path` for writing it.
fn private_tmp(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    path.with_file_name(name)
}

/// Writes `path` through a private temporary file: written, synced,
/// renamed into place, and its folder synced.
fn publish(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<(), PackageError> {
    let tmp = private_tmp(path);
    let result = (|| {
        let mut f = std::fs::File::create_new(&tmp)?;
        write(&mut f)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        sync_dir(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| PackageError::Store(e.to_string()))
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// EROFS's superblock: magic at byte 1024, block size bits at 1036, block
/// count at 1060.
const EROFS_MAGIC: u32 = 0xE0F5_E1E2;

/// Whether `path` is a whole EROFS image: its magic is there and the file is
/// as long as its superblock says. A torn or foreign file is rebuilt, never
/// mounted.
fn image_is_sound(path: &Path) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let Ok(len) = f.metadata().map(|m| m.len()) else {
        return false;
    };
    let mut sb = [0u8; 64];
    use std::io::Seek;
    if f.seek(std::io::SeekFrom::Start(1024)).is_err() || f.read_exact(&mut sb).is_err() {
        return false;
    }
    let magic = u32::from_le_bytes([sb[0], sb[1], sb[2], sb[3]]);
    let blkszbits = u32::from(sb[12]);
    let blocks = u64::from(u32::from_le_bytes([sb[36], sb[37], sb[38], sb[39]]));
    magic == EROFS_MAGIC && (9..=16).contains(&blkszbits) && blocks << blkszbits <= len
}

fn build_image(stage: &Path, image: &Path) -> Result<(), PackageError> {
    let tmp = private_tmp(image);
    let out = std::process::Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg("--all-root")
        .arg(&tmp)
        .arg(stage)
        .output()
        .map_err(|e| PackageError::Store(format!("running mkfs.erofs: {e}")))?;
    let result = if !out.status.success() {
        Err(PackageError::Store(format!(
            "mkfs.erofs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    } else {
        (|| {
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, image)?;
            sync_dir(image)
        })()
        .map_err(|e| PackageError::Store(e.to_string()))
    };
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;

    fn layer_rules() -> PackageRules {
        PackageRules {
            runtime: None,
            handler: String::new(),
        }
    }

    fn store_in(tmp: &Path) -> CodeStore {
        CodeStore::new(tmp.join("data/code"), tmp.join("data/tmp"))
    }

    /// The chain of links from the report, each passing the textual check,
    /// then a file under the last one aimed at `tmp`.
    fn chain_zip(depth: usize) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let o = SimpleFileOptions::default();
        w.add_symlink("a/up", "..", o).unwrap();
        let mut prev = "up".to_string();
        for i in 1..=depth {
            w.add_symlink(format!("a/e{i}"), format!("{prev}/.."), o)
                .unwrap();
            prev = format!("e{i}");
        }
        w.start_file(format!("a/{prev}/sentinel"), o).unwrap();
        w.write_all(b"pwned").unwrap();
        w.finish().unwrap().into_inner()
    }

    fn sentinels(root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_name() == "sentinel" {
                    out.push(e.path());
                }
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    todo.push(e.path());
                }
            }
        }
        out
    }

    #[test]
    fn the_link_chain_is_refused_as_a_package_and_as_a_layer() {
        let tmp = tempfile::tempdir().unwrap();
        let code = store_in(tmp.path());
        for depth in [1, 3, 6, 12] {
            let e = code.store(&chain_zip(depth), &layer_rules()).unwrap_err();
            assert!(matches!(e, PackageError::BadEntry { .. }), "{e}");
            assert!(sentinels(tmp.path()).is_empty(), "depth {depth}");
        }
        // Through /opt: a stored layer with links, then one that writes
        // under them.
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let o = SimpleFileOptions::default();
        w.add_symlink("python/up", "..", o).unwrap();
        w.add_symlink("python/e1", "up/..", o).unwrap();
        let first = code
            .store(&w.finish().unwrap().into_inner(), &layer_rules())
            .unwrap();
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.start_file("python/e1/sentinel", o).unwrap();
        let second = code
            .store(&w.finish().unwrap().into_inner(), &layer_rules())
            .unwrap();
        let e = code
            .opt_image(&[first.sha256_hex.clone(), second.sha256_hex.clone()])
            .unwrap_err();
        assert!(e.to_string().contains("link"), "{e}");
        assert!(sentinels(tmp.path()).is_empty());
    }

    #[test]
    fn concurrent_stores_of_one_package_share_no_file() {
        let tmp = tempfile::tempdir().unwrap();
        let code = Arc::new(store_in(tmp.path()));
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.start_file("python/m.py", SimpleFileOptions::default())
            .unwrap();
        w.write_all(&vec![b'#'; 1 << 20]).unwrap();
        let zip = Arc::new(w.finish().unwrap().into_inner());
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (code, zip) = (code.clone(), zip.clone());
                std::thread::spawn(move || {
                    let img = code.store(&zip, &layer_rules()).unwrap();
                    let opt = code.opt_image(std::slice::from_ref(&img.sha256_hex));
                    (img, opt.unwrap())
                })
            })
            .collect();
        for t in threads {
            let (img, opt) = t.join().unwrap();
            assert!(image_is_sound(&img.image));
            assert!(image_is_sound(&opt));
        }
        let names: Vec<String> = std::fs::read_dir(tmp.path().join("data/code"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn a_torn_image_is_rebuilt_and_leftovers_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let code = store_in(tmp.path());
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.start_file("x", SimpleFileOptions::default()).unwrap();
        w.write_all(&vec![7u8; 100_000]).unwrap();
        let zip = w.finish().unwrap().into_inner();
        let img = code.store(&zip, &layer_rules()).unwrap();
        let whole = std::fs::metadata(&img.image).unwrap().len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&img.image)
            .unwrap();
        f.set_len(whole / 2).unwrap();
        assert!(!image_is_sound(&img.image));
        code.store(&zip, &layer_rules()).unwrap();
        assert!(image_is_sound(&img.image));
        assert_eq!(std::fs::metadata(&img.image).unwrap().len(), whole);

        std::fs::write(tmp.path().join("data/code/abc.erofs.1234.tmp"), b"x").unwrap();
        assert_eq!(code.remove_partial_files(), 1);
    }

    #[test]
    fn a_pinned_package_survives_collection() {
        let tmp = tempfile::tempdir().unwrap();
        let code = store_in(tmp.path());
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.start_file("x", SimpleFileOptions::default()).unwrap();
        let img = code
            .store(&w.finish().unwrap().into_inner(), &layer_rules())
            .unwrap();
        let none = Default::default();
        code.collect(&none, &none);
        assert!(img.image.exists() && code.zip_path(&img.sha256_hex).exists());
        let (path, sha) = (img.image.clone(), img.sha256_hex.clone());
        drop(img);
        code.collect(&none, &none);
        assert!(!path.exists() && !code.zip_path(&sha).exists());
    }
}
