//! Function blueprints: sample code with configuration presets, embedded
//! in the binary (`blueprints/` in the crate, see `build.rs`), written out
//! as a project a user can read, change and deploy (`flintctl init`,
//! `flintctl deploy`, `flintctl create-function --blueprint`).
//!
//! A blueprint is a folder: `blueprint.json` (summary, runtimes with their
//! handler, presets, and the answer its sample event gets), `event.json`,
//! and per runtime `RUNTIME/src/` (the code) and optionally
//! `RUNTIME/layer/` (a layer deployed with it, mounted at `/opt`).
//!
//! A project is a folder: `flint.json` (the presets), `src/`, `layer/`,
//! `event.json` and a `README.md`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/blueprints.rs"));
}

/// The project file of a generated project.
pub const PROJECT_FILE: &str = "flint.json";

#[derive(Debug, thiserror::Error)]
pub enum BlueprintError {
    #[error("no blueprint named {0:?} (flintctl init --list shows them)")]
    Unknown(String),
    #[error("blueprint {blueprint} is offered for {offered}, not {runtime:?}")]
    Runtime {
        blueprint: String,
        runtime: String,
        offered: String,
    },
    #[error("blueprint {blueprint} is offered for {offered}: say which with --runtime")]
    WhichRuntime { blueprint: String, offered: String },
    #[error("{0} exists and is not empty: give a new folder")]
    NotEmpty(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Project { path: PathBuf, message: String },
    #[error("the embedded blueprint {0} is malformed: {1}")]
    Malformed(String, String),
    #[error("building {path} failed: {message}")]
    Build { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BlueprintError + '_ {
    move |source| BlueprintError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One runtime a blueprint is offered for.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RuntimeMeta {
    pub handler: String,
}

/// A queue on the node's broker that feeds the function (an event source
/// mapping); named `<function>-queue` unless `name` says otherwise.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QueueSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    #[serde(default)]
    pub report_batch_item_failures: bool,
}

/// A stream on the node's broker that feeds the function; named
/// `<function>-stream` unless `name` says otherwise.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StreamSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default = "one")]
    pub shard_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    #[serde(default = "trim_horizon")]
    pub starting_position: String,
    #[serde(default)]
    pub report_batch_item_failures: bool,
}

fn one() -> u32 {
    1
}

fn trim_horizon() -> String {
    "TRIM_HORIZON".into()
}

/// A schedule that invokes the function; named `<function>-schedule`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScheduleSpec {
    pub expression: String,
    /// The payload instead of EventBridge's scheduled event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
}

/// Where the outcomes of asynchronous invocations go: event buses named
/// `<function>-<on_success>` and `<function>-<on_failure>`, read with
/// `flintctl subscribe-invocation-records`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Destinations {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_retry_attempts: Option<u32>,
}

/// What a function is wired to (`queue`, `stream`, `schedule`,
/// `destinations` in `blueprint.json` and `flint.json`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Wiring {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destinations: Option<Destinations>,
}

/// The settings a blueprint gives its projects (in `blueprint.json`, and
/// copied into `flint.json`, where the user changes them).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Presets {
    pub memory_size: u32,
    pub timeout: u32,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Deploying publishes a version (SnapStart-style functions restore
    /// published versions from their snapshot).
    #[serde(default)]
    pub publish: bool,
    /// `cargo`: `cargo build --release` in the project, and its binary
    /// `bootstrap` is the code (see [`load`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    #[serde(flatten)]
    pub wiring: Wiring,
}

/// `blueprint.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    pub summary: String,
    pub runtimes: BTreeMap<String, RuntimeMeta>,
    #[serde(flatten)]
    pub presets: Presets,
    /// What the sample event's answer contains (a subset of it).
    pub expect: serde_json::Value,
}

/// An embedded blueprint.
#[derive(Debug, Clone)]
pub struct Blueprint {
    pub name: String,
    pub meta: Meta,
}

/// `flint.json`: what `flintctl deploy` creates.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Project {
    pub blueprint: String,
    pub runtime: String,
    pub handler: String,
    #[serde(default)]
    pub description: String,
    #[serde(flatten)]
    pub presets: Presets,
}

/// The embedded blueprints, by name.
pub fn list() -> Result<Vec<Blueprint>, BlueprintError> {
    let mut out = Vec::new();
    for (path, data, _) in embedded::FILES {
        let Some(name) = path.strip_suffix("/blueprint.json") else {
            continue;
        };
        let meta: Meta = serde_json::from_slice(data)
            .map_err(|e| BlueprintError::Malformed(name.to_string(), e.to_string()))?;
        out.push(Blueprint {
            name: name.to_string(),
            meta,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub fn get(name: &str) -> Result<Blueprint, BlueprintError> {
    list()?
        .into_iter()
        .find(|b| b.name == name)
        .ok_or_else(|| BlueprintError::Unknown(name.to_string()))
}

impl Blueprint {
    /// The runtime to write: `runtime`, or the only one offered.
    pub fn runtime(&self, runtime: Option<&str>) -> Result<String, BlueprintError> {
        let offered = || {
            self.meta
                .runtimes
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        };
        match runtime {
            Some(r) if self.meta.runtimes.contains_key(r) => Ok(r.to_string()),
            Some(r) => Err(BlueprintError::Runtime {
                blueprint: self.name.clone(),
                runtime: r.to_string(),
                offered: offered(),
            }),
            None if self.meta.runtimes.len() == 1 => Ok(self
                .meta
                .runtimes
                .keys()
                .next()
                .cloned()
                .unwrap_or_default()),
            None => Err(BlueprintError::WhichRuntime {
                blueprint: self.name.clone(),
                offered: offered(),
            }),
        }
    }

    /// The project of this blueprint in `runtime`.
    pub fn project(&self, runtime: &str) -> Project {
        Project {
            blueprint: self.name.clone(),
            runtime: runtime.to_string(),
            handler: self
                .meta
                .runtimes
                .get(runtime)
                .map(|r| r.handler.clone())
                .unwrap_or_default(),
            description: self.meta.summary.clone(),
            presets: self.meta.presets.clone(),
        }
    }

    /// Writes the project of this blueprint in `runtime` into `dir` (new,
    /// or empty). Returns what it wrote in `flint.json`.
    pub fn write(&self, runtime: Option<&str>, dir: &Path) -> Result<Project, BlueprintError> {
        let runtime = self.runtime(runtime)?;
        if dir.exists() {
            let mut entries = std::fs::read_dir(dir).map_err(io(dir))?;
            if entries.next().is_some() {
                return Err(BlueprintError::NotEmpty(dir.to_path_buf()));
            }
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let own = format!("{}/{runtime}/", self.name);
        let shared = format!("{}/", self.name);
        for (path, data, mode) in embedded::FILES {
            let rel = match path.strip_prefix(&own) {
                Some(rel) => rel,
                None => match path.strip_prefix(&shared) {
                    Some("event.json") => "event.json",
                    _ => continue,
                },
            };
            let target = dir.join(rel);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::write(&target, data).map_err(io(&target))?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode))
                .map_err(io(&target))?;
        }
        let project = self.project(&runtime);
        let file = dir.join(PROJECT_FILE);
        let mut text = serde_json::to_string_pretty(&project)
            .map_err(|e| BlueprintError::Malformed(self.name.clone(), e.to_string()))?;
        text.push('\n');
        std::fs::write(&file, text).map_err(io(&file))?;
        let readme = dir.join("README.md");
        std::fs::write(&readme, self.readme(&project, dir)).map_err(io(&readme))?;
        Ok(project)
    }

    fn readme(&self, p: &Project, dir: &Path) -> String {
        let layer = if dir.join("layer").is_dir() {
            "\n- `layer/`: a layer of its own, deployed with it and mounted at `/opt`."
        } else {
            ""
        };
        let qualifier = if p.presets.publish {
            " --qualifier 1"
        } else {
            ""
        };
        let mut wired = String::new();
        let w = &p.presets.wiring;
        if let Some(q) = &w.queue {
            let queue = q.name.clone().unwrap_or_else(|| "<function>-queue".into());
            wired += &format!(
                "\n- the queue `{queue}` (made if missing) feeds it through an event source mapping; \
                 `flintctl send-message --queue-name {queue} --message-body '...'`."
            );
        }
        if let Some(s) = &w.stream {
            let stream = s.name.clone().unwrap_or_else(|| "<function>-stream".into());
            wired += &format!(
                "\n- the stream `{stream}` ({} shards, made if missing) feeds it from {}; \
                 `flintctl put-record --stream-name {stream} --partition-key K --data '...'`.",
                s.shard_count, s.starting_position
            );
        }
        if let Some(s) = &w.schedule {
            wired += &format!(
                "\n- the schedule `<function>-schedule` invokes it: `{}`.",
                s.expression
            );
        }
        if let Some(d) = &w.destinations {
            wired += &format!(
                "\n- asynchronous invocations (`--invocation-type Event`) are retried {} time(s); \
                 outcomes go to the event buses `<function>-{}` and `<function>-{}` \
                 (`flintctl subscribe-invocation-records --event-bus ...`).",
                d.maximum_retry_attempts.unwrap_or(2),
                d.on_success.as_deref().unwrap_or("-"),
                d.on_failure.as_deref().unwrap_or("-"),
            );
        }
        let code = if p.presets.build.as_deref() == Some("cargo") {
            "`Cargo.toml`, `src/`: a Rust project; `flintctl deploy` runs `cargo build --release` \
             here and deploys `target/release/bootstrap` as the function's code"
        } else {
            "`src/`: the function's code, deployed as it is"
        };
        format!(
            "# {name} ({runtime})\n\n{summary}\n\n\
             - {code}; its handler is `{handler}`.{layer}{wired}\n\
             - `flint.json`: its settings ({memory} MB, {timeout} s{publish}); change them there.\n\
             - `event.json`: a sample event.\n\n\
             Deploy it, and invoke it with the sample event:\n\n\
             ```\nflintctl deploy --function-name my-{name} .\n\
             flintctl invoke --function-name my-{name}{qualifier} --payload file://event.json -\n```\n\n\
             Deploying again updates the function's code and settings.\n",
            name = self.name,
            runtime = p.runtime,
            summary = self.meta.summary,
            handler = p.handler,
            memory = p.presets.memory_size,
            timeout = p.presets.timeout,
            publish = if p.presets.publish {
                "; each deploy publishes a version"
            } else {
                ""
            },
        )
    }
}

/// A project read back for deployment: its settings, its code as a ZIP,
/// and its layer as a ZIP where it has one.
pub struct Deployable {
    pub project: Project,
    pub code: Vec<u8>,
    pub layer: Option<Vec<u8>>,
}

/// Reads the project in `dir` and packages it (building it first where
/// `flint.json` says `"build": "cargo"`).
pub fn load(dir: &Path) -> Result<Deployable, BlueprintError> {
    let d = load_unbuilt(dir)?;
    match d.project.presets.build.as_deref() {
        None => Ok(d),
        Some("cargo") => Ok(Deployable {
            code: build_cargo(dir)?,
            ..d
        }),
        Some(other) => Err(BlueprintError::Project {
            path: dir.join(PROJECT_FILE),
            message: format!("build {other:?}: the only build there is is \"cargo\""),
        }),
    }
}

/// `cargo build --release` in `dir`, as the user running flintctl (as
/// `cargo lambda build` would), into `$CARGO_TARGET_DIR` or `dir/target`;
/// a ZIP of the binary `bootstrap` it makes.
fn build_cargo(dir: &Path) -> Result<Vec<u8>, BlueprintError> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(dir)
        .args(["build", "--release", "--quiet", "--bin", "bootstrap"])
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .map_err(|e| BlueprintError::Build {
            path: dir.to_path_buf(),
            message: format!("cannot run cargo: {e}"),
        })?;
    if !status.success() {
        return Err(BlueprintError::Build {
            path: dir.to_path_buf(),
            message: format!("cargo build --release exited with {status}"),
        });
    }
    let bin = target.join("release").join("bootstrap");
    zip_paths(vec![("bootstrap".into(), bin, 0o755)], &target)
}

/// Reads the project in `dir` and packages `src/` (and `layer/`) as they
/// are.
pub fn load_unbuilt(dir: &Path) -> Result<Deployable, BlueprintError> {
    let file = dir.join(PROJECT_FILE);
    let text = std::fs::read(&file).map_err(io(&file))?;
    let project: Project = serde_json::from_slice(&text).map_err(|e| BlueprintError::Project {
        path: file.clone(),
        message: e.to_string(),
    })?;
    let src = dir.join("src");
    if !src.is_dir() {
        return Err(BlueprintError::Project {
            path: src,
            message: "the project has no src/ folder".into(),
        });
    }
    let code = zip_dir(&src)?;
    let layer_dir = dir.join("layer");
    let layer = if layer_dir.is_dir() {
        Some(zip_dir(&layer_dir)?)
    } else {
        None
    };
    Ok(Deployable {
        project,
        code,
        layer,
    })
}

/// A ZIP of the files under `root` (paths relative to it, modes kept).
/// Links are refused rather than followed: what is deployed is what the
/// folder holds.
pub fn zip_dir(root: &Path) -> Result<Vec<u8>, BlueprintError> {
    let mut files = Vec::new();
    collect(root, root, &mut files)?;
    zip_paths(files, root)
}

/// A ZIP of `files` (name in the ZIP, path on disk, mode); `what` names
/// the folder in an error of the ZIP writer.
fn zip_paths(files: Vec<(String, PathBuf, u32)>, what: &Path) -> Result<Vec<u8>, BlueprintError> {
    let mut read = Vec::with_capacity(files.len());
    for (name, path, mode) in files {
        let data = std::fs::read(&path).map_err(io(&path))?;
        read.push((name, data, mode));
    }
    crate::packages::write_zip(read.iter().map(|(n, d, m)| (n.as_str(), d.as_slice(), *m))).map_err(
        |e| BlueprintError::Project {
            path: what.to_path_buf(),
            message: e.to_string(),
        },
    )
}

fn collect(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, PathBuf, u32)>,
) -> Result<(), BlueprintError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        let rel = path
            .strip_prefix(root)
            .ok()
            .and_then(|p| p.to_str())
            .ok_or_else(|| BlueprintError::Project {
                path: path.clone(),
                message: "not a UTF-8 path".into(),
            })?
            .to_string();
        if meta.is_dir() {
            collect(root, &path, out)?;
        } else if meta.is_file() {
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            out.push((rel, path, mode));
        } else {
            return Err(BlueprintError::Project {
                path,
                message: "only plain files and folders are deployed (a link or a device is not)"
                    .into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_blueprint_is_well_formed_and_has_its_code() {
        let all = list().unwrap();
        assert!(all.len() >= 4, "{all:?}");
        for b in &all {
            assert!(!b.meta.summary.is_empty(), "{}", b.name);
            assert!(b.meta.expect.is_object(), "{}", b.name);
            for (runtime, rt) in &b.meta.runtimes {
                assert!(
                    crate::packages::Runtime::parse(runtime).is_some(),
                    "{}: {runtime}",
                    b.name
                );
                let dir = tempfile::tempdir().unwrap();
                let p = b.write(Some(runtime), &dir.path().join("p")).unwrap();
                assert_eq!(p.handler, rt.handler);
                let d = load_unbuilt(&dir.path().join("p")).unwrap();
                assert_eq!(d.project, p);
                if p.presets.build.is_some() {
                    // Built on deploy (the e2e test builds it).
                    assert!(dir.path().join("p/Cargo.toml").is_file());
                    continue;
                }
                let rules = crate::packages::PackageRules {
                    runtime: crate::packages::Runtime::parse(runtime),
                    handler: p.handler.clone(),
                };
                crate::packages::validate(&d.code, &rules)
                    .unwrap_or_else(|e| panic!("{} {runtime}: {e}", b.name));
                assert!(dir.path().join("p/event.json").is_file());
                assert!(dir.path().join("p/README.md").is_file());
            }
        }
    }

    #[test]
    fn runtimes_and_folders_are_checked() {
        let b = get("hello-world").unwrap();
        assert!(matches!(
            b.runtime(Some("java21")),
            Err(BlueprintError::Runtime { .. })
        ));
        assert!(matches!(
            b.runtime(None),
            Err(BlueprintError::WhichRuntime { .. })
        ));
        assert!(matches!(get("nope"), Err(BlueprintError::Unknown(_))));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x"), b"").unwrap();
        assert!(matches!(
            b.write(Some("python3.11"), dir.path()),
            Err(BlueprintError::NotEmpty(_))
        ));
    }

    #[test]
    fn links_in_a_project_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", dir.path().join("src/app.py")).unwrap();
        let e = zip_dir(&dir.path().join("src")).unwrap_err();
        assert!(e.to_string().contains("only plain files"), "{e}");
    }
}
