//! Extraction of validated entries into a staging folder without ever
//! following a link.
//!
//! Every path is opened one component at a time, relative to the folder
//! opened before it, with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`:
//! a component that is a link (or a file where a folder is needed) makes the
//! entry fail; it is never followed. Links are created last, after every file
//! and folder of the package, so no entry of the same package can be written
//! through them. Links stay links in the image and are resolved only in the
//! guest.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

use super::{Entry, EntryKind, PackageError, MAX_UNZIPPED};

/// Resolution that cannot leave the folder it starts in, or pass a link.
fn resolve() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
        | ResolveFlag::RESOLVE_NO_XDEV
}

/// Opens one name inside `dir`, following nothing.
fn open_beneath(dir: impl AsFd, name: &str, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    openat2(
        dir,
        name,
        OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .mode(mode)
            .resolve(resolve()),
    )
}

fn bad(entry: &Entry, reason: &str) -> PackageError {
    PackageError::BadEntry {
        name: entry.path.clone(),
        reason: reason.into(),
    }
}

fn io(e: impl std::fmt::Display) -> PackageError {
    PackageError::Store(e.to_string())
}

/// The staging folder, held open: every entry is created relative to it.
pub(super) struct Stage {
    root: OwnedFd,
}

impl Stage {
    /// Opens `dir`, which must be a folder (not a link to one).
    pub(super) fn open(dir: &Path) -> Result<Self, PackageError> {
        let root = nix::fcntl::open(
            dir,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        Ok(Self { root })
    }

    /// Opens (creating as needed) the folder at `comps` for `entry`.
    fn dir(&self, entry: &Entry, comps: &[&str]) -> Result<OwnedFd, PackageError> {
        let mut cur = self.root.try_clone().map_err(io)?;
        for c in comps {
            let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY;
            let next = match open_beneath(&cur, c, flags, Mode::empty()) {
                Err(Errno::ENOENT) => {
                    match nix::sys::stat::mkdirat(&cur, *c, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(io(e)),
                    }
                    open_beneath(&cur, c, flags, Mode::empty())
                }
                r => r,
            };
            cur = match next {
                Ok(fd) => fd,
                // O_NOFOLLOW | O_DIRECTORY on a link is ENOTDIR: say which.
                Err(Errno::ELOOP) | Err(Errno::EXDEV) | Err(Errno::ENOTDIR) => {
                    let link =
                        nix::sys::stat::fstatat(&cur, *c, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK);
                    return Err(bad(
                        entry,
                        if link {
                            "its path passes through a link"
                        } else {
                            "its path passes through a file"
                        },
                    ));
                }
                Err(e) => return Err(io(e)),
            };
        }
        Ok(cur)
    }

    /// Removes what an earlier layer left at `name` (a later layer wins),
    /// never a folder.
    fn clear(&self, entry: &Entry, dir: &OwnedFd, name: &str) -> Result<(), PackageError> {
        match nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(Errno::EISDIR) | Err(Errno::EPERM) => {
                Err(bad(entry, "a folder of the same name is already there"))
            }
            Err(e) => Err(io(e)),
        }
    }
}

/// Extracts validated entries into the stage, counting the bytes really
/// written (a ZIP's declared sizes can lie). Links come last.
pub(super) fn extract(zip: &[u8], stage: &Stage, entries: &[Entry]) -> Result<(), PackageError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip))
        .map_err(|e| PackageError::NotZip(e.to_string()))?;
    let mut written: u64 = 0;
    let mut links = Vec::new();
    for entry in entries {
        let comps: Vec<&str> = entry.path.split('/').collect();
        let Some((name, parents)) = comps.split_last() else {
            continue;
        };
        match &entry.kind {
            EntryKind::Dir => {
                stage.dir(entry, &comps)?;
            }
            EntryKind::Symlink(_) => links.push(entry),
            EntryKind::File { executable } => {
                let dir = stage.dir(entry, parents)?;
                stage.clear(entry, &dir, name)?;
                let fd = open_beneath(
                    &dir,
                    name,
                    OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| match e {
                    Errno::ELOOP | Errno::EEXIST => bad(entry, "a link of the same name is there"),
                    e => io(e),
                })?;
                let mut out = std::fs::File::from(fd);
                let mut zf = archive
                    .by_index(entry.index)
                    .map_err(|e| PackageError::NotZip(e.to_string()))?;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = zf
                        .read(&mut buf)
                        .map_err(|e| bad(entry, &format!("cannot be decompressed: {e}")))?;
                    if n == 0 {
                        break;
                    }
                    written += n as u64;
                    if written > MAX_UNZIPPED {
                        return Err(PackageError::TooLargeUnzipped);
                    }
                    out.write_all(&buf[..n]).map_err(io)?;
                }
                let mode = if *executable { 0o755 } else { 0o644 };
                out.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(io)?;
            }
        }
    }
    for entry in links {
        let EntryKind::Symlink(to) = &entry.kind else {
            continue;
        };
        let comps: Vec<&str> = entry.path.split('/').collect();
        let Some((name, parents)) = comps.split_last() else {
            continue;
        };
        let dir = stage.dir(entry, parents)?;
        stage.clear(entry, &dir, name).map_err(|e| match e {
            PackageError::BadEntry { .. } => bad(entry, "a link and a folder have the same path"),
            e => e,
        })?;
        nix::unistd::symlinkat(to.as_str(), &dir, *name).map_err(|e| match e {
            Errno::EEXIST => bad(entry, "a link and a folder have the same path"),
            e => io(e),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::PathBuf;
    use zip::write::SimpleFileOptions;

    /// One entry of a generated archive.
    #[derive(Debug, Clone)]
    enum Gen {
        File(String),
        Dir(String),
        Link(String, String),
    }

    fn archive(gens: &[Gen]) -> (Vec<u8>, Vec<Entry>) {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let mut entries = Vec::new();
        for (index, g) in gens.iter().enumerate() {
            let opts = SimpleFileOptions::default().unix_permissions(0o644);
            let (path, kind) = match g {
                Gen::File(p) => {
                    w.start_file(format!("{p}#{index}"), opts).unwrap();
                    w.write_all(b"pwned").unwrap();
                    (p, EntryKind::File { executable: false })
                }
                Gen::Dir(p) => {
                    w.add_directory(format!("{p}#{index}"), opts).unwrap();
                    (p, EntryKind::Dir)
                }
                Gen::Link(p, to) => {
                    w.add_symlink(format!("{p}#{index}"), to, opts).unwrap();
                    (p, EntryKind::Symlink(to.clone()))
                }
            };
            // Entries are built by hand, skipping validation: extraction
            // alone must contain whatever it is given.
            entries.push(Entry {
                index,
                path: path.clone(),
                kind,
                size: 5,
            });
        }
        (w.finish().unwrap().into_inner(), entries)
    }

    /// Everything under `root`, as paths relative to it.
    fn tree(root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                out.push(p.strip_prefix(root).unwrap().to_path_buf());
                if e.file_type().unwrap().is_dir() {
                    todo.push(p);
                }
            }
        }
        out.sort();
        out
    }

    /// Extracts into `<tmp>/outer/stage` and returns the result and what
    /// appeared in `<tmp>` outside the stage.
    fn run(gens: &[Gen]) -> (Result<(), PackageError>, Vec<PathBuf>) {
        let tmp = tempfile::tempdir().unwrap();
        let stage_dir = tmp.path().join("outer/stage");
        std::fs::create_dir_all(&stage_dir).unwrap();
        let (zip, entries) = archive(gens);
        let r = extract(&zip, &Stage::open(&stage_dir).unwrap(), &entries);
        let outside = tree(tmp.path())
            .into_iter()
            .filter(|p| !p.starts_with("outer/stage") && p != Path::new("outer"))
            .collect();
        (r, outside)
    }

    #[test]
    fn a_chain_of_links_each_one_level_up_is_not_followed() {
        // a/up -> .., a/e1 -> up/.., a/e2 -> e1/.., ... then a file under
        // the last one: the attack that wrote into the host's /tmp.
        let mut gens = vec![Gen::Link("a/up".into(), "..".into())];
        let mut prev = "up".to_string();
        for i in 1..8 {
            gens.push(Gen::Link(format!("a/e{i}"), format!("{prev}/..")));
            prev = format!("e{i}");
        }
        gens.push(Gen::File(format!("a/{prev}/sentinel")));
        let (r, outside) = run(&gens);
        assert!(outside.is_empty(), "{outside:?}");
        assert!(r.is_err(), "a file under a link of the package was written");
    }

    #[test]
    fn absolute_links_and_links_to_folders_are_never_written_through() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().display().to_string();
        for gens in [
            vec![
                Gen::Link("d".into(), target.clone()),
                Gen::File("d/sentinel".into()),
            ],
            vec![
                Gen::Link("d".into(), "../..".into()),
                Gen::Dir("d/x".into()),
                Gen::File("d/x/sentinel".into()),
            ],
            vec![
                Gen::Link("a/l".into(), "../b/l2".into()),
                Gen::Link("b/l2".into(), "../..".into()),
                Gen::File("a/l/sentinel".into()),
            ],
            // A file whose own name is a link of the package.
            vec![
                Gen::Link("f".into(), format!("{target}/sentinel")),
                Gen::File("f".into()),
            ],
        ] {
            let (_, outside) = run(&gens);
            assert!(outside.is_empty(), "{gens:?}: {outside:?}");
            assert!(tree(tmp.path()).is_empty(), "{gens:?}");
        }
    }

    #[test]
    fn links_stay_links_and_files_are_written() {
        let (r, outside) = run(&[
            Gen::Dir("lib".into()),
            Gen::File("lib/real.py".into()),
            Gen::Link("lib/alias.py".into(), "real.py".into()),
            Gen::Link("abs".into(), "/opt/python".into()),
        ]);
        r.unwrap();
        assert!(outside.is_empty());
    }

    fn component() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("up".to_string()),
            Just("x".to_string()),
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        proptest::collection::vec(component(), 1..4).prop_map(|c| c.join("/"))
    }

    fn target() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::collection::vec(
                prop_oneof![component(), Just("..".to_string()), Just(".".to_string())],
                1..5
            )
            .prop_map(|c| c.join("/")),
            Just("/".to_string()),
            Just("/tmp".to_string()),
            Just("../../..".to_string()),
        ]
    }

    fn gen() -> impl Strategy<Value = Gen> {
        prop_oneof![
            path().prop_map(Gen::File),
            path().prop_map(Gen::Dir),
            (path(), target()).prop_map(|(p, t)| Gen::Link(p, t)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("FLINT_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256)
        ))]
        /// Arbitrary link graphs in arbitrary orders: nothing is ever
        /// created outside the staging folder, whether extraction succeeds
        /// or not.
        #[test]
        fn nothing_is_created_outside_the_stage(gens in proptest::collection::vec(gen(), 1..12)) {
            let (_, outside) = run(&gens);
            prop_assert!(outside.is_empty(), "{:?}", outside);
        }
    }
}
