//! Deployment packages: ZIP validation, and the read-only code images that
//! instances mount at `/var/task`. Images are content-addressed by the
//! package's SHA-256; nothing is stored for a package that fails validation.

mod validate;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use validate::{validate, Entry, EntryKind, PackageRules, Runtime};

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
}

/// Content-addressed store of packages and their images.
pub struct CodeStore {
    dir: PathBuf,
    tmp: PathBuf,
}

impl CodeStore {
    pub fn new(dir: PathBuf, tmp: PathBuf) -> Self {
        Self { dir, tmp }
    }

    pub fn image_path(&self, sha256_hex: &str) -> PathBuf {
        self.dir.join(format!("{sha256_hex}.erofs"))
    }

    pub fn zip_path(&self, sha256_hex: &str) -> PathBuf {
        self.dir.join(format!("{sha256_hex}.zip"))
    }

    /// Validates `zip` against `rules` and stores it with its image. Blocking.
    pub fn store(&self, zip: &[u8], rules: &PackageRules) -> Result<CodeImage, PackageError> {
        let entries = validate(zip, rules)?;
        let digest = Sha256::digest(zip);
        let sha256_hex = hex::encode(digest);
        use base64::Engine as _;
        let sha256_b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        let unzipped_size = entries.iter().map(|e| e.size).sum();
        let image = self.image_path(&sha256_hex);
        let store = |e: std::io::Error| PackageError::Store(e.to_string());
        if !image.exists() {
            std::fs::create_dir_all(&self.dir).map_err(store)?;
            std::fs::create_dir_all(&self.tmp).map_err(store)?;
            let stage = tempfile_dir(&self.tmp).map_err(store)?;
            let result = extract(zip, &stage, &entries).and_then(|_| build_image(&stage, &image));
            let _ = std::fs::remove_dir_all(&stage);
            result?;
            let zip_path = self.zip_path(&sha256_hex);
            let tmp = zip_path.with_extension("zip.tmp");
            std::fs::write(&tmp, zip).map_err(store)?;
            std::fs::rename(&tmp, &zip_path).map_err(store)?;
        }
        Ok(CodeImage {
            sha256_hex,
            sha256_b64,
            zip_size: zip.len() as u64,
            unzipped_size,
            image,
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
        if image.exists() {
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
            for sha in layer_shas {
                let zip = self.zip_bytes(sha)?;
                let entries = validate(&zip, &rules)?;
                extract(&zip, &stage, &entries)?;
            }
            build_image(&stage, &image)
        })();
        let _ = std::fs::remove_dir_all(&stage);
        result.map(|_| image)
    }

    /// Removes packages, their images and `/opt` images that nothing refers
    /// to any more.
    pub fn collect(
        &self,
        packages: &std::collections::HashSet<String>,
        opt_keys: &std::collections::HashSet<String>,
    ) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
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
                packages.contains(sha)
            } else {
                true
            };
            if !keep {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn tempfile_dir(parent: &Path) -> std::io::Result<PathBuf> {
    let p = parent.join(format!("pkg-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&p)?;
    Ok(p)
}

/// Extracts validated entries into `dest`, counting the bytes really written
/// (a ZIP's declared sizes can lie).
fn extract(zip: &[u8], dest: &Path, entries: &[Entry]) -> Result<(), PackageError> {
    use std::os::unix::fs::PermissionsExt;
    let store = |e: std::io::Error| PackageError::Store(e.to_string());
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip))
        .map_err(|e| PackageError::NotZip(e.to_string()))?;
    let mut written: u64 = 0;
    for entry in entries {
        let target = dest.join(&entry.path);
        match &entry.kind {
            EntryKind::Dir => std::fs::create_dir_all(&target).map_err(store)?,
            EntryKind::Symlink(to) => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(store)?;
                }
                let _ = std::fs::remove_file(&target); // a later layer wins
                std::os::unix::fs::symlink(to, &target).map_err(store)?;
            }
            EntryKind::File { executable } => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(store)?;
                }
                let mut zf = archive
                    .by_index(entry.index)
                    .map_err(|e| PackageError::NotZip(e.to_string()))?;
                if target.is_symlink() {
                    let _ = std::fs::remove_file(&target);
                }
                let mut out = std::fs::File::create(&target).map_err(store)?;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = zf.read(&mut buf).map_err(|e| PackageError::BadEntry {
                        name: entry.path.clone(),
                        reason: format!("cannot be decompressed: {e}"),
                    })?;
                    if n == 0 {
                        break;
                    }
                    written += n as u64;
                    if written > MAX_UNZIPPED {
                        return Err(PackageError::TooLargeUnzipped);
                    }
                    out.write_all(&buf[..n]).map_err(store)?;
                }
                let mode = if *executable { 0o755 } else { 0o644 };
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
                    .map_err(store)?;
            }
        }
    }
    Ok(())
}

fn build_image(stage: &Path, image: &Path) -> Result<(), PackageError> {
    let tmp = image.with_extension("erofs.tmp");
    let out = std::process::Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg("--all-root")
        .arg(&tmp)
        .arg(stage)
        .output()
        .map_err(|e| PackageError::Store(format!("running mkfs.erofs: {e}")))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(PackageError::Store(format!(
            "mkfs.erofs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::rename(&tmp, image).map_err(|e| PackageError::Store(e.to_string()))
}
