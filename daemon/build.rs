//! Embeds the blueprints (`blueprints/`) and the application templates
//! (`apps/`) in the binaries: `flintctl init` writes them without a network
//! or a checkout.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf, u32)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry"))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path).expect("metadata");
        if meta.is_dir() {
            walk(root, &path, out);
        } else if meta.is_file() {
            let rel = path
                .strip_prefix(root)
                .expect("under the root")
                .to_str()
                .expect("a UTF-8 path")
                .to_string();
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            out.push((rel, path.canonicalize().expect("a path"), mode));
        } else {
            panic!(
                "{}: blueprints and apps hold plain files only",
                path.display()
            );
        }
    }
}

/// `static NAME` in `$OUT_DIR/OUT`: every file under `dir`, by relative path.
fn embed(dir: &str, out: &str, name: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    let mut src = format!("pub static {name}: &[(&str, &[u8], u32)] = &[\n");
    for (rel, abs, mode) in files {
        writeln!(src, "    ({rel:?}, include_bytes!({abs:?}), 0o{mode:o}),").unwrap();
    }
    src.push_str("];\n");
    let path = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join(out);
    std::fs::write(path, src).expect("writing the embedded files");
}

fn main() {
    embed("blueprints", "blueprints.rs", "FILES");
    embed("apps", "apps.rs", "APPS");
}
