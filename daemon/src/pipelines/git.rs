//! Reading a repository: a branch's commit and the tree of a commit, with
//! `git`, run as the repository's owner and with hooks, fsmonitor and
//! pagers off, so that a repository's configuration never runs anything
//! as flintd's user.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::PipelineError;

/// A tree of files (path → (content, mode)).
pub type Tree = BTreeMap<String, (Vec<u8>, u32)>;

/// A pushed tree larger than this (as a ZIP from `git archive`) is refused.
pub const MAX_TREE: u64 = 256 * 1024 * 1024;

fn git(repo: &Path) -> Result<Command, PipelineError> {
    let meta = std::fs::metadata(repo).map_err(|e| PipelineError::Repository {
        path: repo.display().to_string(),
        message: e.to_string(),
    })?;
    let mut c = Command::new("git");
    c.arg("-C")
        .arg(repo)
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.fsmonitor=false",
            "-c",
            "core.pager=cat",
            "-c",
            "protocol.allow=never",
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/nonexistent")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null());
    // As the repository's owner: its configuration is theirs to trust.
    if meta.uid() != 0 {
        c.uid(meta.uid()).gid(meta.gid());
    } else {
        // Root's own repository; git's ownership check passes.
    }
    Ok(c)
}

/// The commit `branch` points at; `None` when the branch does not exist.
pub fn head(repo: &Path, branch: &str) -> Result<Option<String>, PipelineError> {
    if branch.is_empty()
        || branch.starts_with('-')
        || branch.contains("..")
        || !branch
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    {
        return Err(PipelineError::Invalid(format!("branch name {branch:?}")));
    }
    let out = git(repo)?
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("refs/heads/{branch}^{{commit}}"))
        .stderr(Stdio::null())
        .output()
        .map_err(|e| PipelineError::Git(e.to_string()))?;
    if !out.status.success() {
        // Not a repository at all is an error; a missing branch is not.
        let check = git(repo)?
            .args(["rev-parse", "--git-dir"])
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| PipelineError::Git(e.to_string()))?;
        if !check.status.success() {
            return Err(PipelineError::Repository {
                path: repo.display().to_string(),
                message: String::from_utf8_lossy(&check.stderr).trim().to_string(),
            });
        }
        return Ok(None);
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if id.len() < 40 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(PipelineError::Git(format!("rev-parse answered {id:?}")));
    }
    Ok(Some(id))
}

/// The first line of a commit's message.
pub fn subject(repo: &Path, commit: &str) -> String {
    let Ok(mut c) = git(repo) else {
        return String::new();
    };
    c.args(["log", "-1", "--format=%s", commit])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The files of `commit`, read from `git archive --format=zip` in memory:
/// nothing of the tree is written on the host. Links are refused.
pub fn tree(repo: &Path, commit: &str) -> Result<Tree, PipelineError> {
    let mut child = git(repo)?
        .args(["archive", "--format=zip", commit])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| PipelineError::Git(e.to_string()))?;
    let mut zip = Vec::new();
    child
        .stdout
        .take()
        .expect("piped")
        .take(MAX_TREE + 1)
        .read_to_end(&mut zip)
        .map_err(|e| PipelineError::Git(e.to_string()))?;
    if zip.len() as u64 > MAX_TREE {
        let _ = child.kill();
        let _ = child.wait();
        return Err(PipelineError::Invalid(format!(
            "the tree of {commit} is over {MAX_TREE} bytes"
        )));
    }
    let out = child
        .wait_with_output()
        .map_err(|e| PipelineError::Git(e.to_string()))?;
    if !out.status.success() {
        return Err(PipelineError::Git(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    read_zip(&zip)
}

/// A ZIP's regular files; a link, an absolute or `..` path is an error.
pub fn read_zip(zip: &[u8]) -> Result<Tree, PipelineError> {
    let mut a = zip::ZipArchive::new(std::io::Cursor::new(zip))
        .map_err(|e| PipelineError::Invalid(format!("the tree's archive: {e}")))?;
    let mut out = Tree::new();
    let mut total: u64 = 0;
    for i in 0..a.len() {
        let mut f = a
            .by_index(i)
            .map_err(|e| PipelineError::Invalid(format!("the tree's archive: {e}")))?;
        if f.is_dir() {
            continue;
        }
        let name = f.name().to_string();
        check_path(&name)?;
        let mode = f.unix_mode().unwrap_or(0o644);
        if mode & 0o170000 == 0o120000 {
            return Err(PipelineError::Invalid(format!(
                "{name} is a link; a pushed tree holds plain files"
            )));
        }
        total += f.size();
        if total > MAX_TREE {
            return Err(PipelineError::Invalid(format!(
                "the tree is over {MAX_TREE} bytes unzipped"
            )));
        }
        let mut data = Vec::new();
        (&mut f)
            .take(MAX_TREE)
            .read_to_end(&mut data)
            .map_err(|e| PipelineError::Invalid(format!("{name}: {e}")))?;
        let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
        out.insert(name, (data, mode));
    }
    Ok(out)
}

/// A relative path of plain components.
pub fn check_path(name: &str) -> Result<(), PipelineError> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name.contains('\0')
        || name.contains('\\')
        || name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(PipelineError::Invalid(format!("path {name:?} in a tree")));
    }
    Ok(())
}

/// The files under `prefix` (a folder), as a ZIP with paths relative to
/// it, in name order with fixed times, so the same files give the same
/// package.
pub fn zip_folder(tree: &Tree, prefix: &str) -> Result<Vec<u8>, PipelineError> {
    let prefix = prefix.trim_start_matches("./").trim_end_matches('/');
    let dir = if prefix.is_empty() || prefix == "." {
        String::new()
    } else {
        format!("{prefix}/")
    };
    let files: Vec<(&str, &[u8], u32)> = tree
        .range(dir.clone()..)
        .map_while(|(name, (data, mode))| Some((name.strip_prefix(&dir)?, data.as_slice(), *mode)))
        .collect();
    if files.is_empty() {
        return Err(PipelineError::Invalid(format!(
            "{prefix:?}: no such folder in the tree"
        )));
    }
    crate::packages::write_zip(files)
        .map_err(|e| PipelineError::Invalid(format!("packaging {prefix}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_from_a_tree_are_plain() {
        for bad in ["/etc/passwd", "../x", "a/../../b", "a//b", "", "a/./b"] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        check_path("src/app.py").unwrap();
    }

    fn run(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@localhost"])
            .args(args)
            .output()
            .unwrap()
            .status
            .success();
        assert!(ok, "git {args:?}");
    }

    #[test]
    fn a_repository_is_read_without_running_its_hooks_and_links_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path();
        run(repo, &["init", "-q", "-b", "main"]);
        std::fs::create_dir(repo.join("src")).unwrap();
        std::fs::write(repo.join("src/app.py"), "x = 1\n").unwrap();
        // A hook that would leave a mark if git ran it for flintd.
        let mark = repo.join("hooked");
        std::fs::write(
            repo.join(".git/hooks/post-checkout"),
            format!("#!/bin/sh\ntouch {}\n", mark.display()),
        )
        .unwrap();
        run(repo, &["add", "-A"]);
        run(repo, &["commit", "-qm", "one"]);
        let head1 = head(repo, "main").unwrap().unwrap();
        assert_eq!(head(repo, "other").unwrap(), None);
        for bad in ["--output=/tmp/x", "a..b", "x y", ""] {
            assert!(head(repo, bad).is_err(), "{bad:?}");
        }
        let t = tree(repo, &head1).unwrap();
        assert_eq!(t.keys().collect::<Vec<_>>(), vec!["src/app.py"]);
        assert_eq!(subject(repo, &head1), "one");
        std::os::unix::fs::symlink("/etc/passwd", repo.join("src/link")).unwrap();
        run(repo, &["add", "-A"]);
        run(repo, &["commit", "-qm", "two"]);
        let head2 = head(repo, "main").unwrap().unwrap();
        let e = tree(repo, &head2).unwrap_err().to_string();
        assert!(e.contains("link"), "{e}");
        assert!(!mark.exists());
        let e = head(&repo.join("nope"), "main").unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn a_folder_is_zipped_alone_and_the_same_files_give_the_same_zip() {
        let mut t = Tree::new();
        t.insert("src/app.py".into(), (b"x".to_vec(), 0o644));
        t.insert("src/lib/a.py".into(), (b"y".to_vec(), 0o755));
        t.insert("srcx/other.py".into(), (b"z".to_vec(), 0o644));
        t.insert("template.yaml".into(), (b"t".to_vec(), 0o644));
        let z = zip_folder(&t, "src/").unwrap();
        let back = read_zip(&z).unwrap();
        assert_eq!(back.keys().collect::<Vec<_>>(), vec!["app.py", "lib/a.py"]);
        assert_eq!(back["lib/a.py"].1, 0o755);
        assert_eq!(z, zip_folder(&t, "src").unwrap());
        assert!(zip_folder(&t, "nope/").is_err());
    }
}
