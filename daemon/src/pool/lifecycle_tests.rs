//! The middle tier of tests: a fake engine whose VMs are a socket pair and
//! a scripted agent, so that the lifecycle of an instance — boot, init,
//! init failure, timeout, crash, the start slots — is tested in
//! milliseconds without QEMU. The end-to-end tests boot real VMs.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use flint_proto::agent::v1::{
    agent_message, host_message, AgentMessage, HostMessage, InitDone, InitError, Ready,
};
use flint_proto::frame::{self, FrameBuffer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::*;
use crate::engine::{Accel, AccelInfo, Engine, EngineError, Vm, VmSpec, VmStats};
use crate::launch::{LaunchSettings, Origin, StartCounts, StartSettings};
use crate::logs::FunctionLogs;

/// What the scripted agent does once configured.
#[derive(Debug, Clone, Copy)]
enum Script {
    /// Its runtime's init takes this long, then waits for an event.
    Init(Duration),
    /// The init fails with `Runtime.Unknown`.
    InitError,
    /// The init never ends.
    Hang,
    /// The guest goes away.
    Crash,
}

#[derive(Default)]
struct Counters {
    booted: AtomicUsize,
    running: AtomicUsize,
    /// VMs booted and not yet initialised, now and at most.
    initialising: AtomicUsize,
    max_initialising: AtomicUsize,
}

struct FakeEngine {
    accel: AccelInfo,
    script: Script,
    counters: Arc<Counters>,
}

struct FakeVm {
    channel: Option<UnixStream>,
    counters: Arc<Counters>,
    stopped: bool,
}

async fn say(s: &mut UnixStream, kind: agent_message::Kind) {
    let _ = s
        .write_all(&frame::encode(&AgentMessage { kind: Some(kind) }))
        .await;
}

/// The guest side: `Ready`, then the script once `Configure` arrives.
async fn agent(mut s: UnixStream, script: Script, c: Arc<Counters>) {
    say(&mut s, agent_message::Kind::Ready(Ready::default())).await;
    let mut fb = FrameBuffer::default();
    let mut buf = vec![0u8; 4096];
    loop {
        while let Ok(Some(m)) = fb.next_frame::<HostMessage>() {
            if let Some(host_message::Kind::Configure(_)) = m.kind {
                match script {
                    Script::Init(d) => {
                        tokio::time::sleep(d).await;
                        c.initialising.fetch_sub(1, Ordering::SeqCst);
                        let done = InitDone {
                            init_duration_us: d.as_micros() as u64,
                        };
                        say(&mut s, agent_message::Kind::InitDone(done)).await;
                    }
                    Script::InitError => {
                        c.initialising.fetch_sub(1, Ordering::SeqCst);
                        let e = InitError {
                            error_type: "Runtime.Unknown".into(),
                            payload: b"{}".to_vec(),
                            init_duration_us: 1000,
                        };
                        say(&mut s, agent_message::Kind::InitError(e)).await;
                    }
                    Script::Hang => {}
                    Script::Crash => {
                        c.initialising.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                }
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
    async fn boot(&self, _spec: VmSpec) -> Result<Box<dyn Vm>, EngineError> {
        let (host, guest) = UnixStream::pair().map_err(EngineError::Spawn)?;
        let c = &self.counters;
        c.booted.fetch_add(1, Ordering::SeqCst);
        c.running.fetch_add(1, Ordering::SeqCst);
        let now = c.initialising.fetch_add(1, Ordering::SeqCst) + 1;
        c.max_initialising.fetch_max(now, Ordering::SeqCst);
        tokio::spawn(agent(guest, self.script, c.clone()));
        Ok(Box::new(FakeVm {
            channel: Some(host),
            counters: c.clone(),
            stopped: false,
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
        Ok(())
    }
    async fn resume(&self) -> Result<(), EngineError> {
        Ok(())
    }
    async fn snapshot(&self, _state: &Path) -> Result<(), EngineError> {
        Err(EngineError::Snapshot("the fake engine takes none".into()))
    }
    async fn load(&self, _state: &Path) -> Result<(), EngineError> {
        Err(EngineError::Restore("the fake engine takes none".into()))
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

/// A pool (snapshots off: every start a boot) on the fake engine.
fn pool(script: Script, slots: u32) -> (Pool, Arc<Counters>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let counters = Arc::new(Counters::default());
    let engine = FakeEngine {
        accel: AccelInfo {
            accel: Accel::Tcg,
            reason: "fake".into(),
        },
        script,
        counters: counters.clone(),
    };
    let launcher = Launcher::new(
        Arc::new(engine),
        LaunchSettings {
            boot_timeout: Duration::from_secs(5),
            init_timeout: Duration::from_millis(300),
            starts: StartSettings {
                slots,
                scale_instances: 1000,
                scale_interval: Duration::from_secs(10),
            },
            ..crate::launch::test_settings(dir.path())
        },
        None,
        FunctionLogs::new(dir.path().join("logs"), Default::default()),
    );
    let p = Pool::new(Arc::new(launcher), super::tests::settings(16, 100_000));
    (p, counters, dir)
}

fn logs(dir: &Path) -> FunctionLogs {
    FunctionLogs::new(dir.join("logs"), Default::default())
}

fn images(dir: &Path) -> Images {
    Images {
        code: dir.join("code.erofs"),
        opt: None,
    }
}

async fn start(p: &Pool, dir: &Path, id: &str) -> Result<Started, LaunchError> {
    let f = Function {
        name: "f".into(),
        ..Function::placeholder()
    };
    let log = logs(dir).open_stream("f", "$LATEST", id).unwrap();
    let deadline = Some(Instant::now() + Duration::from_secs(10));
    p.start(&f, images(dir), id.into(), log, deadline).await
}

fn failed(s: Started) -> String {
    match s {
        Started::InitFailed(failure) => failure.error_type,
        Started::Ready(_) => panic!("started"),
    }
}

#[tokio::test]
async fn a_boot_runs_the_init_and_reports_its_duration() {
    let (p, c, dir) = pool(Script::Init(Duration::from_millis(20)), 2);
    let Started::Ready(inst) = start(&p, dir.path(), "i1").await.unwrap() else {
        panic!("the init failed");
    };
    assert_eq!(inst.pending_init, Some(Duration::from_millis(20)));
    assert_eq!(p.instances().len(), 1);
    assert_eq!(p.instances()[0].start_kind, Origin::Boot);
    inst.stop().await;
    assert_eq!(c.running.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_init_that_fails_hangs_or_crashes_is_the_functions_error_and_its_vm_is_stopped() {
    for (script, error) in [
        (Script::InitError, "Runtime.Unknown"),
        (Script::Hang, "Sandbox.Timedout"),
        (Script::Crash, "Runtime.ExitError"),
    ] {
        let (p, c, dir) = pool(script, 2);
        let s = start(&p, dir.path(), "i1").await.unwrap();
        assert_eq!(failed(s), error, "{script:?}");
        assert_eq!(c.running.load(Ordering::SeqCst), 0, "{script:?}");
        assert_eq!(p.launcher().start_counts().in_flight, 0);
    }
}

#[tokio::test]
async fn starts_take_the_slots_in_turn() {
    let (p, c, dir) = pool(Script::Init(Duration::from_millis(50)), 2);
    let p = Arc::new(p);
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (p, dir) = (p.clone(), dir.path().to_path_buf());
        tasks.push(tokio::spawn(async move {
            start(&p, &dir, &format!("i{i}")).await
        }));
    }
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Ok(Started::Ready(_))));
    }
    assert_eq!(c.booted.load(Ordering::SeqCst), 6);
    assert_eq!(c.max_initialising.load(Ordering::SeqCst), 2);
    assert_eq!(p.launcher().start_counts(), StartCounts::default());
}

#[tokio::test]
async fn a_start_that_waits_past_its_deadline_never_boots() {
    let (p, c, dir) = pool(Script::Hang, 1);
    let p = Arc::new(p);
    // The one slot is held by an init that hangs until its limit (300 ms).
    let first = {
        let (p, dir) = (p.clone(), dir.path().to_path_buf());
        tokio::spawn(async move { start(&p, &dir, "hung").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let f = Function {
        name: "g".into(),
        ..Function::placeholder()
    };
    let log = logs(dir.path())
        .open_stream("g", "$LATEST", "late")
        .unwrap();
    let deadline = Some(Instant::now() + Duration::from_millis(100));
    let r = p
        .start(&f, images(dir.path()), "late".into(), log, deadline)
        .await;
    assert!(
        matches!(r, Err(LaunchError::StartQueue(_))),
        "a start slot beyond the deadline"
    );
    assert_eq!(failed(first.await.unwrap().unwrap()), "Sandbox.Timedout");
    assert_eq!(c.booted.load(Ordering::SeqCst), 1);
}

/// Books an instance of `f` and starts it; the lease is given back idle.
async fn run_once(p: &Pool, dir: &Path, function: &str) -> String {
    let f = Function {
        name: function.into(),
        ..Function::placeholder()
    };
    let mut lease = p.book(&f, None).await.unwrap();
    let log = logs(dir)
        .open_stream(function, "$LATEST", &lease.id)
        .unwrap();
    let Started::Ready(inst) = p
        .start(&f, images(dir), lease.id.clone(), log, None)
        .await
        .unwrap()
    else {
        panic!("the init failed");
    };
    lease.set(inst);
    let id = lease.id.clone();
    p.release(lease);
    id
}

#[tokio::test]
async fn a_full_node_evicts_the_least_recently_used_idle_instance_and_stops_its_vm() {
    let (mut p, c, dir) = pool(Script::Init(Duration::from_millis(5)), 2);
    p.settings.max_instances = 2;
    let oldest = run_once(&p, dir.path(), "a").await;
    let newer = run_once(&p, dir.path(), "b").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(c.running.load(Ordering::SeqCst), 2);
    // A third instance fits only in the place of the least recently used.
    let third = run_once(&p, dir.path(), "c").await;
    let mut left: Vec<String> = lock(&p.books).members.keys().cloned().collect();
    left.sort();
    let mut want = vec![newer, third];
    want.sort();
    assert_eq!(left, want);
    assert!(!left.contains(&oldest));
    assert_eq!(c.booted.load(Ordering::SeqCst), 3);
    assert_eq!(
        c.running.load(Ordering::SeqCst),
        2,
        "the evicted VM is stopped"
    );
}
