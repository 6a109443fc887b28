//! Checks a ZIP before anything is extracted or stored: sizes, entry paths,
//! links, and the handler the runtime will look for.

use std::io::Read;

use super::{PackageError, MAX_UNZIPPED, MAX_ZIPPED};

/// The runtimes a node offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Runtime {
    /// The function brings an executable `bootstrap`.
    #[serde(rename = "provided")]
    Provided,
    /// Python 3.11 with AWS's runtime interface client.
    #[serde(rename = "python3.11")]
    Python311,
    /// Node.js 18 (Debian's) with AWS's runtime interface client.
    #[serde(rename = "nodejs18.x")]
    Nodejs18,
}

impl Runtime {
    pub const ALL: [Runtime; 3] = [Runtime::Provided, Runtime::Python311, Runtime::Nodejs18];

    pub fn name(self) -> &'static str {
        match self {
            Runtime::Provided => "provided",
            Runtime::Python311 => "python3.11",
            Runtime::Nodejs18 => "nodejs18.x",
        }
    }

    /// The executable the agent starts.
    pub fn entry_point(self) -> &'static str {
        match self {
            Runtime::Provided => "/var/task/bootstrap",
            Runtime::Python311 | Runtime::Nodejs18 => "/var/runtime/bootstrap",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Runtime::ALL.into_iter().find(|r| r.name() == s)
    }
}

/// What the package must contain: a function's handler, or nothing in
/// particular (a layer, `runtime: None`).
#[derive(Debug, Clone)]
pub struct PackageRules {
    pub runtime: Option<Runtime>,
    pub handler: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File { executable: bool },
    Dir,
    Symlink(String),
}

/// One checked entry, with its normalised relative path.
#[derive(Debug, Clone)]
pub struct Entry {
    pub index: usize,
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
}

const S_IFMT: u32 = 0o170000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;

fn bad(name: &str, reason: &str) -> PackageError {
    PackageError::BadEntry {
        name: name.into(),
        reason: reason.into(),
    }
}

/// Splits an entry name into normal components, refusing absolute paths and
/// any `..`.
fn components(name: &str) -> Result<Vec<&str>, PackageError> {
    if name.contains('\0') {
        return Err(bad(name, "contains a NUL byte"));
    }
    let b = name.as_bytes();
    if name.starts_with('/') || name.starts_with('\\') || (b.len() >= 2 && b[1] == b':') {
        return Err(bad(name, "absolute paths are not allowed"));
    }
    let mut out = Vec::new();
    for c in name.split(['/', '\\']) {
        match c {
            "" | "." => {}
            ".." => return Err(bad(name, "path escapes the package (\"..\")")),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Whether a link at `at` (components) pointing to `target` stays inside.
fn link_stays_inside(at: &[&str], target: &str) -> bool {
    if target.starts_with('/') {
        return false;
    }
    let mut depth = at.len() as i64 - 1; // the link's directory
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

/// Validates a deployment package. Returns its entries in archive order.
pub fn validate(zip: &[u8], rules: &PackageRules) -> Result<Vec<Entry>, PackageError> {
    if zip.len() as u64 > MAX_ZIPPED {
        return Err(PackageError::TooLargeZipped {
            size: zip.len() as u64,
        });
    }
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip))
        .map_err(|e| PackageError::NotZip(e.to_string()))?;
    let mut entries = Vec::with_capacity(archive.len());
    let mut seen = std::collections::HashSet::new();
    let mut total: u64 = 0;
    for index in 0..archive.len() {
        let (name, is_dir, mode, size) = {
            let f = archive
                .by_index_raw(index)
                .map_err(|e| PackageError::NotZip(e.to_string()))?;
            (
                String::from_utf8_lossy(f.name_raw()).into_owned(),
                f.is_dir(),
                f.unix_mode(),
                f.size(),
            )
        };
        let comps = components(&name)?;
        if comps.is_empty() {
            continue;
        }
        let path = comps.join("/");
        if !seen.insert(path.clone()) {
            return Err(bad(&name, "the package has two entries of this name"));
        }
        // Only files, folders and links: no device nodes, FIFOs or sockets
        // (a ZIP has no hard links; a type it does not name is refused).
        if let Some(kind) = mode.map(|m| m & S_IFMT) {
            if ![0, S_IFREG, S_IFDIR, S_IFLNK].contains(&kind) {
                return Err(bad(
                    &name,
                    "only files, folders and links are allowed (a device node, FIFO or socket)",
                ));
            }
        }
        let kind = if is_dir {
            EntryKind::Dir
        } else if mode.map(|m| m & S_IFMT == S_IFLNK).unwrap_or(false) {
            if size > 4096 {
                return Err(bad(&name, "link target is too long"));
            }
            let mut target = String::new();
            archive
                .by_index(index)
                .map_err(|e| PackageError::NotZip(e.to_string()))?
                .read_to_string(&mut target)
                .map_err(|_| bad(&name, "link target is not readable text"))?;
            if !link_stays_inside(&comps, &target) {
                return Err(bad(
                    &name,
                    &format!("link points outside the package ({target:?})"),
                ));
            }
            EntryKind::Symlink(target)
        } else {
            total = total.saturating_add(size);
            if total > MAX_UNZIPPED {
                return Err(PackageError::TooLargeUnzipped);
            }
            EntryKind::File {
                executable: mode.map(|m| m & 0o111 != 0).unwrap_or(false),
            }
        };
        entries.push(Entry {
            index,
            path,
            kind,
            size: if is_dir { 0 } else { size },
        });
    }
    check_handler(&entries, rules)?;
    Ok(entries)
}

fn find<'a>(entries: &'a [Entry], path: &str) -> Option<&'a Entry> {
    entries.iter().find(|e| e.path == path)
}

/// Checks a Python handler's form: `module.function`, where the module may
/// be a dotted or slashed path.
pub fn python_module_file(handler: &str) -> Result<(String, String), PackageError> {
    let err = || {
        PackageError::Handler(format!(
            "handler {handler:?} is not of the form module.function (for example app.handler)"
        ))
    };
    let (module, function) = handler.rsplit_once('.').ok_or_else(err)?;
    let ident = |s: &str| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if !ident(function) || module.is_empty() {
        return Err(err());
    }
    let path = module.replace('.', "/");
    if !path.split('/').all(ident) {
        return Err(err());
    }
    Ok((format!("{path}.py"), format!("{path}/__init__.py")))
}

/// The files a Node.js handler `path/file.function` may live in: the
/// module `path/file` as CommonJS (`.js`, `.cjs`) or an ES module (`.mjs`,
/// or `.js` in a package of `"type": "module"`), as Lambda's runtime
/// looks for them.
pub fn node_module_files(handler: &str) -> Result<[String; 3], PackageError> {
    let err = || {
        PackageError::Handler(format!(
            "handler {handler:?} is not of the form file.function (for example index.handler)"
        ))
    };
    let (module, function) = handler.rsplit_once('.').ok_or_else(err)?;
    let ident = !function.is_empty()
        && !function.starts_with(|c: char| c.is_ascii_digit())
        && function
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    let part = |s: &str| {
        !s.is_empty()
            && s != ".."
            && s != "."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    if !ident || !module.split('/').all(part) {
        return Err(err());
    }
    Ok(["js", "mjs", "cjs"].map(|ext| format!("{module}.{ext}")))
}

fn check_handler(entries: &[Entry], rules: &PackageRules) -> Result<(), PackageError> {
    let Some(runtime) = rules.runtime else {
        return Ok(());
    };
    match runtime {
        Runtime::Provided => match find(entries, "bootstrap") {
            None => Err(PackageError::Handler(
                "the package has no bootstrap file at its root; the provided runtime starts \
                 /var/task/bootstrap"
                    .into(),
            )),
            Some(Entry {
                kind: EntryKind::File { executable: false },
                ..
            }) => Err(PackageError::Handler(
                "bootstrap is not executable: give it mode 0755 in the ZIP".into(),
            )),
            Some(Entry {
                kind: EntryKind::Dir,
                ..
            }) => Err(PackageError::Handler("bootstrap is a directory".into())),
            Some(_) => Ok(()),
        },
        Runtime::Python311 => {
            let (file, package) = python_module_file(&rules.handler)?;
            if find(entries, &file).is_some() || find(entries, &package).is_some() {
                Ok(())
            } else {
                Err(PackageError::Handler(format!(
                    "handler {:?}: the package has no {file}",
                    rules.handler
                )))
            }
        }
        Runtime::Nodejs18 => {
            let files = node_module_files(&rules.handler)?;
            let is_file = |f: &String| {
                matches!(
                    find(entries, f),
                    Some(Entry {
                        kind: EntryKind::File { .. } | EntryKind::Symlink(_),
                        ..
                    })
                )
            };
            if files.iter().any(is_file) {
                Ok(())
            } else {
                Err(PackageError::Handler(format!(
                    "handler {:?}: the package has none of {}",
                    rules.handler,
                    files.join(", ")
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    fn build(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, data, mode) in files {
            w.start_file(*name, SimpleFileOptions::default().unix_permissions(*mode))
                .unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn python(handler: &str) -> PackageRules {
        PackageRules {
            runtime: Some(Runtime::Python311),
            handler: handler.into(),
        }
    }

    fn provided() -> PackageRules {
        PackageRules {
            runtime: Some(Runtime::Provided),
            handler: "function.handler".into(),
        }
    }

    #[test]
    fn good_packages_pass() {
        let z = build(&[("app.py", b"def handler(e, c): return 1", 0o644)]);
        assert_eq!(validate(&z, &python("app.handler")).unwrap().len(), 1);
        let z = build(&[("pkg/mod.py", b"", 0o644)]);
        validate(&z, &python("pkg.mod.handler")).unwrap();
        let z = build(&[("bootstrap", b"#!/bin/sh", 0o755)]);
        validate(&z, &provided()).unwrap();
    }

    #[test]
    fn traversal_and_absolute_paths_are_refused() {
        for name in [
            "../evil",
            "a/../../evil",
            "/etc/passwd",
            "C:/x",
            "a\\..\\..\\x",
        ] {
            let z = build(&[(name, b"x", 0o644), ("app.py", b"", 0o644)]);
            let e = validate(&z, &python("app.handler")).unwrap_err();
            assert!(matches!(e, PackageError::BadEntry { .. }), "{name}: {e}");
        }
    }

    #[test]
    fn links_must_stay_inside() {
        assert!(link_stays_inside(&["a", "b"], "c"));
        assert!(link_stays_inside(&["a", "b"], "../c"));
        assert!(!link_stays_inside(&["a", "b"], "../../c"));
        assert!(!link_stays_inside(&["b"], "/etc/passwd"));
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.add_symlink("bootstrap", "/bin/sh", SimpleFileOptions::default())
            .unwrap();
        let z = w.finish().unwrap().into_inner();
        let e = validate(&z, &provided()).unwrap_err();
        assert!(e.to_string().contains("outside the package"), "{e}");
    }

    #[test]
    fn duplicate_names_are_refused() {
        // The check used to read the first, extraction kept the last.
        for (a, b) in [("app.py", "./app.py"), ("lib/x", "lib//x"), ("d", "d/")] {
            let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            let o = SimpleFileOptions::default();
            w.start_file("app.py", o).unwrap();
            w.start_file(format!("z/{a}"), o).unwrap();
            if b.ends_with('/') {
                w.add_directory(format!("z/{b}"), o).unwrap();
            } else {
                w.start_file(format!("z/{b}"), o).unwrap();
            }
            let z = w.finish().unwrap().into_inner();
            let e = validate(&z, &python("app.handler")).unwrap_err();
            assert!(e.to_string().contains("two entries"), "{a} {b}: {e}");
        }
    }

    /// Sets the Unix mode of entry `name` in the central directory (the
    /// writer keeps only permission bits).
    fn with_mode(mut z: Vec<u8>, name: &str, mode: u32) -> Vec<u8> {
        let mut i = 0;
        while i + 46 <= z.len() {
            if z[i..i + 4] == [0x50, 0x4b, 0x01, 0x02] {
                let len = u16::from_le_bytes([z[i + 28], z[i + 29]]) as usize;
                if &z[i + 46..i + 46 + len] == name.as_bytes() {
                    z[i + 5] = 3; // made by: Unix
                    z[i + 38..i + 42].copy_from_slice(&(mode << 16).to_le_bytes());
                    return z;
                }
            }
            i += 1;
        }
        panic!("no entry {name}");
    }

    #[test]
    fn devices_fifos_and_sockets_are_refused() {
        for kind in [0o020000u32, 0o060000, 0o010000, 0o140000] {
            let z = build(&[("app.py", b"", 0o644), ("node", b"", 0o644)]);
            let z = with_mode(z, "node", kind | 0o644);
            let e = validate(&z, &python("app.handler")).unwrap_err();
            assert!(e.to_string().contains("only files"), "{kind:o}: {e}");
        }
    }

    #[test]
    fn handler_and_bootstrap_are_checked() {
        let z = build(&[("other.py", b"", 0o644)]);
        let e = validate(&z, &python("app.handler")).unwrap_err();
        assert!(e.to_string().contains("no app.py"), "{e}");
        let e = validate(&z, &python("nodot")).unwrap_err();
        assert!(e.to_string().contains("module.function"), "{e}");
        let z = build(&[("bootstrap", b"#!/bin/sh", 0o644)]);
        let e = validate(&z, &provided()).unwrap_err();
        assert!(e.to_string().contains("not executable"), "{e}");
        let z = build(&[("app.py", b"", 0o644)]);
        let e = validate(&z, &provided()).unwrap_err();
        assert!(e.to_string().contains("no bootstrap"), "{e}");
    }

    #[test]
    fn node_handlers_name_a_commonjs_or_es_module() {
        let node = |handler: &str| PackageRules {
            runtime: Some(Runtime::Nodejs18),
            handler: handler.into(),
        };
        for file in ["index.js", "index.mjs", "index.cjs"] {
            let z = build(&[(file, b"", 0o644)]);
            validate(&z, &node("index.handler")).unwrap();
        }
        let z = build(&[("src/app.mjs", b"", 0o644)]);
        validate(&z, &node("src/app.handler")).unwrap();
        let e = validate(&z, &node("app.handler")).unwrap_err();
        assert!(
            e.to_string().contains("none of app.js, app.mjs, app.cjs"),
            "{e}"
        );
        for bad in [
            "nodot",
            "index.",
            "../index.handler",
            "a//b.handler",
            "index.1x",
        ] {
            let e = validate(&z, &node(bad)).unwrap_err();
            assert!(e.to_string().contains("file.function"), "{bad}: {e}");
        }
        // A directory named like the module is not the module.
        let z = build(&[("index.js/x", b"", 0o644)]);
        assert!(validate(&z, &node("index.handler")).is_err());
    }

    #[test]
    fn malformed_and_oversize_archives_are_refused() {
        let e = validate(b"not a zip at all", &python("app.handler")).unwrap_err();
        assert!(matches!(e, PackageError::NotZip(_)), "{e}");
        let big = vec![0u8; MAX_ZIPPED as usize + 1];
        let e = validate(&big, &python("app.handler")).unwrap_err();
        assert!(matches!(e, PackageError::TooLargeZipped { .. }), "{e}");
    }

    #[test]
    fn declared_unzipped_size_is_capped() {
        // Highly compressible: 260 MB of zeros in a small archive.
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(true);
        w.start_file("app.py", opts).unwrap();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..260 {
            w.write_all(&chunk).unwrap();
        }
        let z = w.finish().unwrap().into_inner();
        assert!((z.len() as u64) < MAX_ZIPPED);
        let e = validate(&z, &python("app.handler")).unwrap_err();
        assert!(matches!(e, PackageError::TooLargeUnzipped), "{e}");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    fn one_entry(name: &str) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.start_file(name, SimpleFileOptions::default().unix_permissions(0o644))
            .unwrap();
        w.write_all(b"x").unwrap();
        w.finish().unwrap().into_inner()
    }

    fn layer() -> PackageRules {
        PackageRules {
            runtime: None,
            handler: String::new(),
        }
    }

    proptest! {
        #[test]
        fn entries_with_a_parent_component_are_refused(
            before in proptest::collection::vec("[a-z0-9_]{1,8}", 0..4),
            after in proptest::collection::vec("[a-z0-9_]{1,8}", 0..4),
        ) {
            let mut parts = before.clone();
            parts.push("..".into());
            parts.extend(after);
            let name = parts.join("/");
            let r = validate(&one_entry(&name), &layer());
            let refused = matches!(r, Err(PackageError::BadEntry { .. }));
            prop_assert!(refused, "{} was accepted", name);
        }

        #[test]
        fn absolute_entries_are_refused(parts in proptest::collection::vec("[a-z0-9_]{1,8}", 1..4)) {
            let name = format!("/{}", parts.join("/"));
            let refused = validate(&one_entry(&name), &layer()).is_err();
            prop_assert!(refused);
        }

        #[test]
        fn plain_relative_entries_are_kept_normalised(parts in proptest::collection::vec("[a-z0-9_]{1,8}", 1..5)) {
            let name = parts.join("/./");
            let entries = validate(&one_entry(&name), &layer()).unwrap();
            prop_assert_eq!(entries.len(), 1);
            prop_assert_eq!(&entries[0].path, &parts.join("/"));
        }

        #[test]
        fn links_inside_the_package_stay_inside(
            at in proptest::collection::vec("[a-z]{1,5}", 1..5),
            up in 0usize..5,
            down in proptest::collection::vec("[a-z]{1,5}", 0..3),
        ) {
            let at: Vec<&str> = at.iter().map(String::as_str).collect();
            let target = std::iter::repeat_n("..", up)
                .chain(down.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join("/");
            // A link in directory depth d may climb at most d levels.
            prop_assert_eq!(link_stays_inside(&at, &target), up < at.len());
            let absolute = format!("/{target}");
            prop_assert!(!link_stays_inside(&at, &absolute));
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = validate(&data, &layer());
        }
    }
}
