//! The function's runtime process: its environment, its output captured line
//! by line.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use flint_proto::agent::v1::{agent_message::Kind, AgentMessage, Configure, Log};

use crate::channel::HostSink;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("starting the runtime {path} failed")]
    Spawn {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Longest log line forwarded in one piece; longer lines are split.
const MAX_LINE: usize = 256 * 1024;

pub const RUNTIME_API: &str = "127.0.0.1:9001";

/// The user and group the function's code runs as: Lambda's
/// (`sbx_user1051`, uid 993, gid 990). Not root: it cannot write
/// `/var/task` or `/opt`, open the agent's port, or load modules.
pub const FUNCTION_UID: u32 = 993;
pub const FUNCTION_GID: u32 = 990;

/// Lambda's environment for the runtime, then the function's own variables
/// (which the host has checked do not override reserved ones).
pub fn environment(cfg: &Configure) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("AWS_LAMBDA_FUNCTION_NAME", cfg.function_name.clone()),
        ("AWS_LAMBDA_FUNCTION_VERSION", cfg.function_version.clone()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", cfg.memory_size_mb.to_string()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", cfg.log_group.clone()),
        ("AWS_LAMBDA_LOG_STREAM_NAME", cfg.log_stream.clone()),
        ("AWS_LAMBDA_RUNTIME_API", RUNTIME_API.to_string()),
        (
            "AWS_LAMBDA_INITIALIZATION_TYPE",
            if cfg.snap_start { "snap-start" } else { "on-demand" }.to_string(),
        ),
        ("_HANDLER", cfg.handler.clone()),
        ("LAMBDA_TASK_ROOT", "/var/task".to_string()),
        ("LAMBDA_RUNTIME_DIR", "/var/runtime".to_string()),
        ("AWS_REGION", cfg.region.clone()),
        ("AWS_DEFAULT_REGION", cfg.region.clone()),
        ("AWS_EXECUTION_ENV", format!("AWS_Lambda_{}", cfg.runtime)),
        ("TZ", ":UTC".to_string()),
        ("LANG", "C.UTF-8".to_string()),
        ("HOME", "/tmp".to_string()),
        ("PATH", "/usr/local/bin:/usr/bin/:/bin:/opt/bin".to_string()),
        (
            "LD_LIBRARY_PATH",
            "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib"
                .to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut own: Vec<_> = cfg.environment.iter().collect();
    own.sort();
    for (k, v) in own {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// The request id that log lines are attributed to.
pub type CurrentRequest = Arc<Mutex<String>>;

/// Starts the runtime; returns its pid. The process is reaped by PID 1's
/// reaper, never waited on here.
pub fn spawn(
    cfg: &Configure,
    sink: &HostSink,
    current: &CurrentRequest,
) -> Result<i32, RuntimeError> {
    let mut cmd = Command::new(&cfg.runtime_entry);
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes one system call (prctl(2)).
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            // No set-uid program can make the function root again.
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // `uid` and `gid` also drop the supplementary groups (std calls
    // setgroups(0) when it changes the uid as root).
    std::os::unix::process::CommandExt::uid(&mut cmd, FUNCTION_UID);
    std::os::unix::process::CommandExt::gid(&mut cmd, FUNCTION_GID);
    let mut child = cmd
        .current_dir("/var/task")
        .env_clear()
        .envs(environment(cfg))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RuntimeError::Spawn {
            path: cfg.runtime_entry.clone(),
            source,
        })?;
    let pid = child.id() as i32;
    if let Some(out) = child.stdout.take() {
        forward_lines(out, 1, sink.clone(), current.clone());
    }
    if let Some(err) = child.stderr.take() {
        forward_lines(err, 2, sink.clone(), current.clone());
    }
    // Dropping a std Child neither waits nor kills.
    drop(child);
    Ok(pid)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Raw fds of the runtime's stdout and stderr pipes while they are read.
static OUTPUT_FDS: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());
/// Readers holding bytes they have not sent yet.
static FORWARDING: AtomicUsize = AtomicUsize::new(0);

/// Bytes waiting in a pipe.
fn pipe_pending(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the valid pointer; fd is an
    // open pipe end (readers remove their fd from OUTPUT_FDS before closing it).
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    if rc < 0 {
        0
    } else {
        n.max(0) as usize
    }
}

/// Waits (briefly) until everything the runtime wrote to stdout and stderr
/// before this moment has been sent to the host, so that an invocation's log
/// lines precede its result on the channel.
pub async fn drain_output() {
    for _ in 0..200 {
        let busy = FORWARDING.load(Ordering::SeqCst) > 0
            || OUTPUT_FDS
                .lock()
                .map(|fds| fds.iter().any(|fd| pipe_pending(*fd) > 0))
                .unwrap_or(false);
        if !busy {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_micros(500)).await;
    }
}

fn forward_lines<R: Read + AsRawFd + Send + 'static>(
    mut from: R,
    stream: u32,
    sink: HostSink,
    current: CurrentRequest,
) {
    let fd = from.as_raw_fd();
    if let Ok(mut fds) = OUTPUT_FDS.lock() {
        fds.push(fd);
    }
    std::thread::spawn(move || {
        let send = |line: &[u8]| {
            let mut line = line;
            while let Some(rest) = line.strip_suffix(b"\r") {
                line = rest;
            }
            let request_id = current.lock().map(|c| c.clone()).unwrap_or_default();
            sink.send(AgentMessage {
                kind: Some(Kind::Log(Log {
                    request_id,
                    stream,
                    line: String::from_utf8_lossy(line).into_owned(),
                    timestamp_unix_ms: now_ms(),
                })),
            });
        };
        let mut chunk = vec![0u8; 64 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let n = match from.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            FORWARDING.fetch_add(1, Ordering::SeqCst);
            pending.extend_from_slice(&chunk[..n]);
            while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                send(&pending[..pos]);
                pending.drain(..=pos);
            }
            if pending.len() >= MAX_LINE {
                send(&pending);
                pending.clear();
            }
            FORWARDING.fetch_sub(1, Ordering::SeqCst);
        }
        if !pending.is_empty() {
            send(&pending);
        }
        if let Ok(mut fds) = OUTPUT_FDS.lock() {
            fds.retain(|f| *f != fd);
        }
        drop(from);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn lambda_environment_is_complete_and_own_variables_follow() {
        let mut cfg = Configure {
            function_name: "f".into(),
            function_version: "$LATEST".into(),
            memory_size_mb: 256,
            handler: "app.handler".into(),
            runtime: "python3.11".into(),
            region: "local-1".into(),
            ..Default::default()
        };
        cfg.environment.insert("GREETING".into(), "hi".into());
        cfg.environment.insert("TZ".into(), "Europe/Paris".into());
        let env: HashMap<_, _> = environment(&cfg).into_iter().collect();
        for k in [
            "AWS_LAMBDA_FUNCTION_NAME",
            "AWS_LAMBDA_FUNCTION_VERSION",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            "AWS_LAMBDA_LOG_GROUP_NAME",
            "AWS_LAMBDA_LOG_STREAM_NAME",
            "AWS_LAMBDA_RUNTIME_API",
            "_HANDLER",
            "LAMBDA_TASK_ROOT",
            "LAMBDA_RUNTIME_DIR",
            "AWS_REGION",
            "TZ",
            "PATH",
            "LD_LIBRARY_PATH",
        ] {
            assert!(env.contains_key(k), "{k} missing");
        }
        assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "256");
        assert_eq!(env["AWS_LAMBDA_RUNTIME_API"], "127.0.0.1:9001");
        assert_eq!(env["GREETING"], "hi");
        assert_eq!(env["TZ"], "Europe/Paris");
    }
}
