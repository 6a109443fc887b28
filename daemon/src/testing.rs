//! A fake engine for the middle tier of tests: its VMs are a socket pair
//! with a scripted agent at the other end, and its "snapshots" are files
//! that remember whether the guest was initialised. The pool, the launcher,
//! the guest link and the node run on it as on QEMU, in milliseconds.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flint_proto::agent::v1::{
    agent_message, host_message, AgentMessage, HostMessage, InitDone, InitError, InvokeResponse,
    Ready, RestoreDone, Resumed, SnapshotPrepared, Warmed,
};
use flint_proto::frame::{self, FrameBuffer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::engine::{Accel, AccelInfo, Engine, EngineError, Vm, VmSpec, VmStats};

/// What the scripted agent does once configured.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Script {
    /// Its runtime's init takes this long, then waits for an event.
    Init(Duration),
    /// The init fails with `Runtime.Unknown`.
    InitError,
    /// The init never ends.
    Hang,
    /// The guest goes away.
    Crash,
    /// The init succeeds; the guest goes away during its first invocation.
    CrashOnInvoke,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) booted: AtomicUsize,
    pub(crate) running: AtomicUsize,
    /// VMs booted and not yet initialised, now and at most.
    pub(crate) initialising: AtomicUsize,
    pub(crate) max_initialising: AtomicUsize,
    /// States loaded into a VM (restores and spares).
    pub(crate) loaded: AtomicUsize,
    /// Spares warmed up.
    pub(crate) warmed: AtomicUsize,
    /// VMs paused (frozen) and resumed.
    pub(crate) paused: AtomicUsize,
    pub(crate) resumed: AtomicUsize,
}

pub(crate) struct FakeEngine {
    accel: AccelInfo,
    script: Script,
    counters: Arc<Counters>,
}

impl FakeEngine {
    /// An engine whose agents follow `script`, and its counters.
    pub(crate) fn new(script: Script) -> (Self, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        let engine = FakeEngine {
            accel: AccelInfo {
                accel: Accel::Tcg,
                reason: "fake".into(),
            },
            script,
            counters: counters.clone(),
        };
        (engine, counters)
    }
}

/// What the guest was doing when its VM was snapshotted: its agent ready
/// (a runtime snapshot) or its runtime initialised (a function snapshot).
/// The fake "state file" holds it, and a VM that loads it resumes there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    #[default]
    Booted,
    Initialised,
}

struct FakeVm {
    channel: Option<UnixStream>,
    counters: Arc<Counters>,
    stopped: bool,
    /// The guest's phase, shared with its agent.
    phase: Arc<std::sync::Mutex<Phase>>,
}

async fn say(s: &mut UnixStream, kind: agent_message::Kind) {
    let _ = s
        .write_all(&frame::encode(&AgentMessage { kind: Some(kind) }))
        .await;
}

/// The guest side. A booted guest says `Ready`; a restored one waits for
/// `Resume` (or a spare's `Warm`), and a restored function snapshot then
/// reports its restore. `Configure` runs the script's init; `Invoke` echoes
/// the payload (one starting `fail` is a handled error, `sleepN` waits N
/// ms first); `PrepareSnapshot` is answered at once.
async fn agent(
    mut s: UnixStream,
    script: Script,
    c: Arc<Counters>,
    restored: bool,
    phase: Arc<std::sync::Mutex<Phase>>,
) {
    use agent_message::Kind;
    if !restored {
        say(&mut s, Kind::Ready(Ready::default())).await;
    }
    let mut fb = FrameBuffer::default();
    let mut buf = vec![0u8; 4096];
    loop {
        while let Ok(Some(m)) = fb.next_frame::<HostMessage>() {
            match m.kind {
                Some(host_message::Kind::Configure(_)) => match script {
                    Script::Init(_) | Script::CrashOnInvoke => {
                        let d = match script {
                            Script::Init(d) => d,
                            _ => Duration::from_millis(1),
                        };
                        tokio::time::sleep(d).await;
                        c.initialising.fetch_sub(1, Ordering::SeqCst);
                        *phase.lock().unwrap() = Phase::Initialised;
                        let done = InitDone {
                            init_duration_us: d.as_micros() as u64,
                        };
                        say(&mut s, Kind::InitDone(done)).await;
                    }
                    Script::InitError => {
                        c.initialising.fetch_sub(1, Ordering::SeqCst);
                        let e = InitError {
                            error_type: "Runtime.Unknown".into(),
                            payload: b"{}".to_vec(),
                            init_duration_us: 1000,
                        };
                        say(&mut s, Kind::InitError(e)).await;
                    }
                    Script::Hang => {}
                    Script::Crash => {
                        c.initialising.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                },
                Some(host_message::Kind::Warm(_)) => {
                    c.warmed.fetch_add(1, Ordering::SeqCst);
                    say(&mut s, Kind::Warmed(Warmed { duration_us: 10 })).await;
                }
                Some(host_message::Kind::Resume(_)) => {
                    say(&mut s, Kind::Resumed(Resumed {})).await;
                    if *phase.lock().unwrap() == Phase::Initialised {
                        c.initialising.fetch_sub(1, Ordering::SeqCst);
                        let done = RestoreDone {
                            restore_duration_us: 100,
                        };
                        say(&mut s, Kind::RestoreDone(done)).await;
                    }
                }
                Some(host_message::Kind::PrepareSnapshot(_)) => {
                    let p = SnapshotPrepared::default();
                    say(&mut s, Kind::SnapshotPrepared(p)).await;
                }
                Some(host_message::Kind::Invoke(i)) => {
                    if let Script::CrashOnInvoke = script {
                        return;
                    }
                    if i.payload.starts_with(b"fail") {
                        let e = flint_proto::agent::v1::InvokeError {
                            request_id: i.request_id,
                            error_type: "Failed".into(),
                            payload: br#"{"errorMessage":"asked to fail"}"#.to_vec(),
                            max_memory_used_kb: 1024,
                            unhandled: false,
                        };
                        say(&mut s, Kind::Error(e)).await;
                        continue;
                    }
                    if let Some(ms) = i.payload.strip_prefix(b"sleep") {
                        let ms = String::from_utf8_lossy(ms).trim().parse().unwrap_or(0);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    let r = InvokeResponse {
                        request_id: i.request_id,
                        payload: i.payload,
                        max_memory_used_kb: 1024,
                    };
                    say(&mut s, Kind::Response(r)).await;
                }
                _ => {}
            }
        }
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => fb.extend(&buf[..n]),
        }
    }
}

#[async_trait]
impl Engine for FakeEngine {
    async fn boot(&self, spec: VmSpec) -> Result<Box<dyn Vm>, EngineError> {
        let (host, guest) = UnixStream::pair().map_err(EngineError::Spawn)?;
        if let crate::engine::Memory::Template(path) = &spec.memory {
            std::fs::write(path, b"guest memory").map_err(EngineError::Spawn)?;
        }
        let c = &self.counters;
        c.booted.fetch_add(1, Ordering::SeqCst);
        c.running.fetch_add(1, Ordering::SeqCst);
        let now = c.initialising.fetch_add(1, Ordering::SeqCst) + 1;
        c.max_initialising.fetch_max(now, Ordering::SeqCst);
        let phase = Arc::new(std::sync::Mutex::new(Phase::Booted));
        tokio::spawn(agent(
            guest,
            self.script,
            c.clone(),
            spec.incoming,
            phase.clone(),
        ));
        Ok(Box::new(FakeVm {
            channel: Some(host),
            counters: c.clone(),
            stopped: false,
            phase,
        }))
    }
    fn accel(&self) -> &AccelInfo {
        &self.accel
    }
}

#[async_trait]
impl Vm for FakeVm {
    fn take_channel(&mut self) -> Option<UnixStream> {
        self.channel.take()
    }
    async fn pause(&self) -> Result<(), EngineError> {
        self.counters.paused.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn resume(&self) -> Result<(), EngineError> {
        self.counters.resumed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn snapshot(&self, state: &Path) -> Result<(), EngineError> {
        let phase = *self.phase.lock().unwrap();
        std::fs::write(state, format!("{phase:?}")).map_err(EngineError::Spawn)
    }
    async fn load(&self, state: &Path) -> Result<(), EngineError> {
        let saved = std::fs::read_to_string(state).map_err(EngineError::Spawn)?;
        self.counters.loaded.fetch_add(1, Ordering::SeqCst);
        *self.phase.lock().unwrap() = if saved == "Initialised" {
            Phase::Initialised
        } else {
            Phase::Booted
        };
        Ok(())
    }
    async fn stop(&mut self) -> Result<(), EngineError> {
        if !std::mem::replace(&mut self.stopped, true) {
            self.counters.running.fetch_sub(1, Ordering::SeqCst);
        }
        self.channel = None;
        Ok(())
    }
    fn foreground(&self) -> Result<(), EngineError> {
        Ok(())
    }
    fn has_exited(&self) -> bool {
        self.stopped
    }
    fn stats(&self) -> VmStats {
        VmStats { pid: 0, rss_kb: 0 }
    }
    fn pss_kb(&self) -> u64 {
        0
    }
    fn console_tail(&self, _max_bytes: usize) -> String {
        "(fake console)".into()
    }
}
