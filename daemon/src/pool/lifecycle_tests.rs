//! The middle tier of tests: a fake engine whose VMs are a socket pair and
//! a scripted agent, so that the lifecycle of an instance — boot, init,
//! init failure, timeout, crash, the start slots — is tested in
//! milliseconds without QEMU. The end-to-end tests boot real VMs.
//!
//! The fake engine and its scripted agent are in `crate::testing`.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::launch::{LaunchSettings, Origin, StartCounts, StartSettings};
use crate::logs::FunctionLogs;
use crate::testing::{Counters, FakeEngine, Script};

/// What a test node has on.
#[derive(Clone, Copy, Default)]
struct Opts {
    snapshots: bool,
    spares: bool,
    freeze: bool,
}

/// A pool (snapshots off: every start a boot) on the fake engine.
fn pool(script: Script, slots: u32) -> (Pool, Arc<Counters>, tempfile::TempDir) {
    pool_with(script, slots, Opts::default())
}

fn pool_with(script: Script, slots: u32, o: Opts) -> (Pool, Arc<Counters>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("code.erofs"), b"code").unwrap();
    let (engine, counters) = FakeEngine::new(script);
    let snapshots = o.snapshots.then(|| {
        Arc::new(crate::snapshot::SnapshotStore::new(dir.path().join("snapshots")).unwrap())
    });
    let launcher = Launcher::new(
        Arc::new(engine),
        LaunchSettings {
            boot_timeout: Duration::from_secs(5),
            init_timeout: Duration::from_millis(300),
            snapshot_init_timeout: Duration::from_secs(2),
            spare_vms: o.spares,
            starts: StartSettings {
                slots,
                scale_instances: 1000,
                scale_interval: Duration::from_secs(10),
            },
            ..crate::launch::test_settings(dir.path())
        },
        snapshots,
        FunctionLogs::new(dir.path().join("logs"), Default::default()),
    );
    let settings = PoolSettings {
        freeze_idle: o.freeze,
        ..super::tests::settings(16, 100_000)
    };
    let p = Pool::new(Arc::new(launcher), settings);
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

/// Waits (a little) until `done` holds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never: {what}");
}

fn version(name: &str, v: &str) -> Function {
    Function {
        name: name.into(),
        version: v.into(),
        ..Function::placeholder()
    }
}

async fn start_version(p: &Pool, dir: &Path, f: &Function, id: &str) -> Instance {
    let log = logs(dir).open_stream(&f.name, &f.version, id).unwrap();
    match p.start(f, images(dir), id.into(), log, None).await.unwrap() {
        Started::Ready(inst) => inst,
        Started::InitFailed(failure) => panic!("the init failed: {failure:?}"),
    }
}

#[tokio::test]
async fn a_published_version_is_restored_from_its_function_snapshot_and_the_next_restore_takes_a_spare(
) {
    let o = Opts {
        snapshots: true,
        spares: true,
        ..Opts::default()
    };
    let (p, c, dir) = pool_with(Script::Init(Duration::from_millis(5)), 2, o);
    let f = version("f", "1");
    let first = start_version(&p, dir.path(), &f, "i1").await;
    // The runtime snapshot's boot, the function snapshot's template, the
    // restore itself, and a spare for the next one.
    assert!(first.pending_restore.is_some() && first.pending_init.is_none());
    let listed = p.instances();
    assert_eq!(listed.len(), 1, "templates are stopped once snapshotted");
    assert_eq!(listed[0].start_kind, Origin::FunctionSnapshot);
    eventually("a spare warmed up", || c.warmed.load(Ordering::SeqCst) == 1).await;
    assert_eq!(c.booted.load(Ordering::SeqCst), 4);

    // The next restore resumes the spare (no boot of its own) and starts
    // the one after it.
    let second = start_version(&p, dir.path(), &f, "i2").await;
    assert!(second.pending_restore.is_some());
    eventually("the spare replaced", || {
        c.warmed.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(c.booted.load(Ordering::SeqCst), 5);

    first.stop().await;
    second.stop().await;
    p.shutdown().await;
    assert_eq!(
        c.running.load(Ordering::SeqCst),
        0,
        "spares stop with the node"
    );
}

#[tokio::test]
async fn latest_restores_the_runtime_snapshot_and_runs_its_init() {
    let o = Opts {
        snapshots: true,
        ..Opts::default()
    };
    let (p, c, dir) = pool_with(Script::Init(Duration::from_millis(5)), 2, o);
    let f = version("f", "$LATEST");
    let inst = start_version(&p, dir.path(), &f, "i1").await;
    assert_eq!(inst.pending_init, Some(Duration::from_millis(5)));
    assert_eq!(p.instances()[0].start_kind, Origin::RuntimeSnapshot);
    // Built once: a second start restores without another boot of the
    // runtime.
    let again = start_version(&p, dir.path(), &f, "i2").await;
    assert_eq!(c.booted.load(Ordering::SeqCst), 3);
    assert_eq!(c.loaded.load(Ordering::SeqCst), 2);
    inst.stop().await;
    again.stop().await;
}

#[tokio::test]
async fn an_idle_instance_is_frozen_and_thawed_for_its_next_invocation() {
    let o = Opts {
        freeze: true,
        ..Opts::default()
    };
    let (p, c, dir) = pool_with(Script::Init(Duration::from_millis(1)), 2, o);
    run_once(&p, dir.path(), "f").await;
    eventually("frozen", || p.instances()[0].state == InstanceState::Frozen).await;
    assert_eq!(c.paused.load(Ordering::SeqCst), 1);
    let mut lease = p.checkout(&version("f", "$LATEST")).await.unwrap();
    let inst = lease.instance().unwrap();
    assert_eq!(inst.state(), InstanceState::Frozen);
    inst.thaw().await.unwrap();
    assert_eq!(p.instances()[0].state, InstanceState::Idle);
    // Answers as before.
    let answer = invoke_once(lease.instance().unwrap()).await;
    assert!(
        matches!(answer, crate::guest::Answer::Response { .. }),
        "{answer:?}"
    );
    drop(lease);
}

#[tokio::test]
async fn a_guest_that_dies_mid_invocation_ends_it_and_is_not_lent_again() {
    let (p, c, dir) = pool(Script::CrashOnInvoke, 2);
    run_once(&p, dir.path(), "f").await;
    let f = version("f", "$LATEST");
    let mut lease = p.checkout(&f).await.unwrap();
    let answer = invoke_once(lease.instance().unwrap()).await;
    assert!(
        matches!(
            answer,
            crate::guest::Answer::Ended(crate::guest::End::Closed)
        ),
        "{answer:?}"
    );
    p.discard(lease).await;
    assert_eq!(c.running.load(Ordering::SeqCst), 0);
    assert!(
        p.checkout(&f).await.is_none(),
        "a dead instance is not lent"
    );
}

#[tokio::test]
async fn provisioned_instances_are_counted_lent_first_and_pruned_when_the_version_moves() {
    let (p, c, dir) = pool(Script::Init(Duration::from_millis(1)), 2);
    let f = version("f", "1");
    // One on-demand instance, used more recently than the provisioned one.
    let config = "f:live".to_string();
    let mut lease = p.book(&f, Some(config.clone())).await.unwrap();
    assert_eq!(p.provisioned_count(&config).starting, 1);
    let mut inst = start_version(&p, dir.path(), &f, &lease.id).await;
    inst.mark_provisioned();
    let provisioned_id = lease.id.clone();
    lease.set(inst);
    p.release(lease);
    let on_demand = run_once_version(&p, dir.path(), &f).await;
    let count = p.provisioned_count(&config);
    assert_eq!((count.starting, count.ready, count.busy), (0, 1, 0));
    // The provisioned instance is lent first.
    let lease = p.checkout(&f).await.unwrap();
    assert_eq!(lease.id, provisioned_id);
    assert_eq!(p.provisioned_count(&config).busy, 1);
    p.release(lease);
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The alias moves to version 2: the instance of version 1 goes.
    assert_eq!(
        p.prune_provisioned(&config, Some(&version("f", "2"))).await,
        1
    );
    assert_eq!(p.provisioned_count(&config), ProvisionedCount::default());
    assert_eq!(c.running.load(Ordering::SeqCst), 1, "{on_demand} stays");
}

/// Books an on-demand instance of `f`, starts it and gives it back idle.
async fn run_once_version(p: &Pool, dir: &Path, f: &Function) -> String {
    let mut lease = p.book(f, None).await.unwrap();
    let inst = start_version(p, dir, f, &lease.id).await;
    lease.set(inst);
    let id = lease.id.clone();
    p.release(lease);
    id
}

/// Sends one event to an instance and waits (a second at most) for how it
/// ends.
async fn invoke_once(inst: &mut Instance) -> crate::guest::Answer {
    let link = inst.link();
    link.invoke(&crate::guest::Invocation {
        request_id: "r1",
        payload: b"{}",
        timeout: Duration::from_secs(1),
        invoked_function_arn: String::new(),
        trace_id: String::new(),
        client_context: "",
    })
    .unwrap();
    link.answer("r1", Instant::now() + Duration::from_secs(1))
        .await
}
