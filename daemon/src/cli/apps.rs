//! `flintctl init --app-template`: an application (code, `template.yaml`,
//! `pipeline.yaml`, sample events) written into a new Git repository.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;

use serde_json::json;

use super::{emit, CliError, Output};

include!(concat!(env!("OUT_DIR"), "/apps.rs"));

/// The application templates, with the first line of each README.
pub fn list() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (path, data, _) in APPS {
        if let Some(name) = path.strip_suffix("/README.md") {
            let summary = String::from_utf8_lossy(data)
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("# ")
                .to_string();
            out.push((name.to_string(), summary));
        }
    }
    out.sort();
    out
}

fn git(dir: &Path, args: &[&str]) -> Result<(), CliError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|e| CliError::Usage(format!("running git: {e} (install git)")))?;
    if !out.status.success() {
        return Err(CliError::Usage(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Whether git has a committer identity here.
fn has_identity(dir: &Path) -> bool {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["config", "user.email"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

pub fn init(name: &str, dir: &Path, output: Output) -> Result<(), CliError> {
    let prefix = format!("{name}/");
    let files: Vec<_> = APPS
        .iter()
        .filter_map(|(p, d, m)| p.strip_prefix(&prefix).map(|rel| (rel, *d, *m)))
        .collect();
    if files.is_empty() {
        let names: Vec<String> = list().into_iter().map(|(n, _)| n).collect();
        return Err(CliError::Usage(format!(
            "no application template {name:?}; there are {}",
            names.join(", ")
        )));
    }
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| CliError::Read(dir.display().to_string(), e))?
            .next()
            .is_some()
    {
        return Err(CliError::Usage(format!(
            "{} exists and is not empty: give a new folder",
            dir.display()
        )));
    }
    for (rel, data, mode) in &files {
        let path = dir.join(rel);
        let werr = |e| CliError::Write(path.display().to_string(), e);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(werr)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(*mode)
            .open(&path)
            .map_err(werr)?;
        f.write_all(data).map_err(werr)?;
    }
    git(dir, &["init", "-q", "-b", "main"])?;
    git(dir, &["add", "-A"])?;
    let message = format!("An application from Flint's {name} template");
    if has_identity(dir) {
        git(dir, &["commit", "-q", "-m", &message])?;
    } else {
        git(
            dir,
            &[
                "-c",
                "user.name=flintctl",
                "-c",
                "user.email=flintctl@localhost",
                "commit",
                "-q",
                "-m",
                &message,
            ],
        )?;
    }
    emit(
        output,
        json!({"AppTemplate": name, "Directory": dir, "Branch": "main", "Files": files.len()}),
        &["APP TEMPLATE", "DIRECTORY", "BRANCH", "FILES"],
        vec![vec![
            name.to_string(),
            dir.display().to_string(),
            "main".into(),
            files.len().to_string(),
        ]],
    );
    Ok(())
}
