//! flint-agent: PID 1 inside every Flint microVM.
//!
//! It mounts the guest's file systems, opens the host channel, waits for the
//! host to configure the instance, starts the function's runtime, serves the
//! Lambda Runtime API to it, and relays events, results and log lines. On any
//! fatal error it syncs and powers the VM off: init never just returns.

mod channel;
mod init;
mod memory;
mod runtime;
mod runtime_api;
mod snapshot;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flint_proto::agent::v1::{
    agent_message::Kind, host_message, AgentMessage, Configure, Ready, Resumed, RuntimeExit,
    SnapshotPrepared, Warmed,
};
use nix::mount::MsFlags;
use tokio::signal::unix::{signal, SignalKind};

use crate::channel::HostSink;
use crate::runtime_api::state::Event;
use crate::runtime_api::RuntimeApi;

#[derive(Debug, thiserror::Error)]
enum AgentError {
    #[error("not running as PID 1")]
    NotInit,
    #[error(transparent)]
    Init(#[from] init::InitError),
    #[error(transparent)]
    Channel(#[from] channel::ChannelError),
    #[error(transparent)]
    RuntimeApi(#[from] runtime_api::RuntimeApiError),
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error("the host closed the channel")]
    HostGone,
    #[error("starting the async runtime failed")]
    Tokio(#[source] std::io::Error),
    #[error("installing the SIGCHLD handler failed")]
    Signal(#[source] std::io::Error),
}

fn main() {
    if std::process::id() != 1 {
        eprintln!("flint-agent: {}", AgentError::NotInit);
        std::process::exit(2);
    }
    let result = std::panic::catch_unwind(run);
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let mut msg = format!("flint-agent: fatal: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("{msg}");
        }
        Err(_) => eprintln!("flint-agent: fatal: panic"),
    }
    init::power_off();
}

fn run() -> Result<(), AgentError> {
    init::mount_boot_filesystems()?;
    init::loopback_up()?;
    init::open_for_restores();
    let cmdline = init::flint_cmdline()?;
    if let Some(ip) = cmdline.get("ip") {
        // A guest whose NIC cannot be set up still serves (without a
        // network); the console says why.
        if let Err(e) = init::network_up(ip, cmdline.get("gw").map(String::as_str)) {
            let cause = std::error::Error::source(&e).map(ToString::to_string);
            eprintln!("flint-agent: {e}: {}", cause.unwrap_or_default());
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Tokio)?;
    rt.block_on(serve(cmdline))
}

async fn serve(cmdline: std::collections::HashMap<String, String>) -> Result<(), AgentError> {
    // Before any child exists, so that no exit is missed.
    let mut sigchld = signal(SignalKind::child()).map_err(AgentError::Signal)?;
    let path = cmdline
        .get("channel")
        .cloned()
        .unwrap_or_else(|| "flint.agent".into());
    let (sink, mut from_host) = channel::open(&path)?;
    let current = Arc::new(Mutex::new(String::new()));
    let api = RuntimeApi::new(sink.clone(), current.clone());
    api.bind().await?;

    let uptime_ms = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64) * 1000 + (t.tv_nsec() as u64) / 1_000_000)
        .unwrap_or(0);
    sink.send(AgentMessage {
        kind: Some(Kind::Ready(Ready {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            uptime_ms,
        })),
    });

    let mut runtime_pid: Option<i32> = None;
    loop {
        tokio::select! {
            msg = from_host.recv() => {
                let Some(msg) = msg else { return Err(AgentError::HostGone) };
                match msg.kind {
                    Some(host_message::Kind::Configure(cfg)) => {
                        if runtime_pid.is_some() {
                            continue; // configured once per instance
                        }
                        configure(&cfg)?;
                        api.init_started();
                        runtime_pid = Some(runtime::spawn(&cfg, &sink, &current)?);
                    }
                    Some(host_message::Kind::Invoke(inv)) => {
                        correct_clock(inv.host_unix_ms);
                        api.deliver(Event {
                            request_id: inv.request_id,
                            payload: inv.payload,
                            deadline_unix_ms: inv.deadline_unix_ms,
                            invoked_function_arn: inv.invoked_function_arn,
                            trace_id: inv.trace_id,
                            client_context: inv.client_context,
                            cognito_identity: inv.cognito_identity,
                        });
                    }
                    Some(host_message::Kind::Resume(r)) => {
                        // Uniqueness first: clock, entropy, then the answer.
                        apply_uniqueness(r.wall_clock_unix_ms, &r.entropy, &r.instance_id);
                        sink.send(AgentMessage { kind: Some(Kind::Resumed(Resumed {})) });
                        api.resume();
                    }
                    Some(host_message::Kind::Warm(w)) => {
                        // A spare: the steps of a Resume, of the runtime's
                        // first request after it and of the memory meter's
                        // reading, run once ahead; the runtime stays parked.
                        let started = std::time::Instant::now();
                        apply_uniqueness(w.wall_clock_unix_ms, &w.entropy, &w.instance_id);
                        runtime_api::warm_up().await;
                        memory::max_used_kb();
                        sink.send(AgentMessage {
                            kind: Some(Kind::Warmed(Warmed {
                                duration_us: started.elapsed().as_micros() as u64,
                            })),
                        });
                    }
                    Some(host_message::Kind::PrepareSnapshot(_)) => {
                        // In this thread, blocking the loop: the instance is
                        // idle, and a helper thread would still be exiting
                        // when the snapshot is taken, in every clone.
                        let started = std::time::Instant::now();
                        let p = snapshot::prepare();
                        sink.send(AgentMessage {
                            kind: Some(Kind::SnapshotPrepared(SnapshotPrepared {
                                files: p.files,
                                bytes: p.bytes,
                                duration_us: started.elapsed().as_micros() as u64,
                            })),
                        });
                    }
                    Some(host_message::Kind::Shutdown(_)) => return Ok(()),
                    None => {}
                }
            }
            _ = sigchld.recv() => {
                for (pid, code, sig) in init::reap() {
                    if Some(pid) == runtime_pid {
                        // Its last words reach the host before the news of its end.
                        runtime::drain_output().await;
                        report_exit(&sink, code, sig);
                    }
                }
            }
        }
    }
}

fn report_exit(sink: &HostSink, exit_code: i32, signal: i32) {
    sink.send(AgentMessage {
        kind: Some(Kind::RuntimeExit(RuntimeExit { exit_code, signal })),
    });
}

/// Steps the guest's wall clock to the host's when they differ by more than
/// 20 ms (an emulated guest's clock can drift).
fn correct_clock(host_unix_ms: u64) {
    if host_unix_ms == 0 {
        return;
    }
    // Also after a restore the clock is set at once (by Resume); this only
    // catches drift.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    if now.abs_diff(host_unix_ms) > 20 {
        set_clock(host_unix_ms);
    }
}

/// What makes a restored clone unique: the host's wall clock, fresh
/// entropy for the kernel's RNG, its own host name.
fn apply_uniqueness(wall_clock_unix_ms: u64, entropy: &[u8], instance_id: &str) {
    set_clock(wall_clock_unix_ms);
    init::reseed_rng(entropy);
    set_identity(instance_id);
}

/// The instance's identity inside the guest: its host name.
fn set_identity(instance_id: &str) {
    if !instance_id.is_empty() {
        let _ = nix::unistd::sethostname(instance_id);
    }
}

fn set_clock(unix_ms: u64) {
    if unix_ms == 0 {
        return;
    }
    let d = Duration::from_millis(unix_ms);
    let ts = nix::sys::time::TimeSpec::new(d.as_secs() as i64, d.subsec_nanos() as i64);
    let _ = nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts);
}

/// Applies the host's settings: clock, entropy, /var/task, /tmp.
fn configure(cfg: &Configure) -> Result<(), AgentError> {
    apply_uniqueness(cfg.wall_clock_unix_ms, &cfg.entropy, &cfg.instance_id);
    if !cfg.code_device.is_empty() {
        // A restored runtime snapshot saw a placeholder at this device.
        init::flush_block_device(&cfg.code_device);
        init::mount_at(
            &cfg.code_device,
            "/var/task",
            "erofs",
            MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            None,
        )?;
    }
    if !cfg.opt_device.is_empty() {
        init::flush_block_device(&cfg.opt_device);
        init::mount_at(
            &cfg.opt_device,
            "/opt",
            "erofs",
            MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            None,
        )?;
    }
    let tmp_mb = if cfg.ephemeral_storage_mb == 0 {
        512
    } else {
        cfg.ephemeral_storage_mb
    };
    init::mount_at(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&format!("mode=1777,size={tmp_mb}m")),
    )?;
    Ok(())
}
