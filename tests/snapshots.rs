//! Snapshots end to end: published versions restore a function snapshot
//! (init skipped, SnapStart hooks run), clones are unique, restore errors
//! reach the invoker, snapshots survive a restart and damaged ones are
//! rebuilt, never restored.

use std::time::{SystemTime, UNIX_EPOCH};

use flint_e2e::*;
use flint_proto::node::v1 as pb;

const SCHED_OTHER: u32 = 0;
const SCHED_IDLE: u32 = 5;

/// The distinct scheduling policies of a process's threads.
fn scheduling_policies(pid: i32) -> Vec<u32> {
    let mut policies: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .map(|stat| {
            // Field 41 of stat(5); the fields after the command name start at 3.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            rest.split(' ').nth(41 - 3).unwrap().parse().unwrap()
        })
        .collect();
    policies.sort();
    policies.dedup();
    policies
}

/// The other VMMs that map the same snapshot memory as `pid`.
fn vmms_of_same_snapshot(pid: i32) -> Vec<i32> {
    let own = cmdline(pid);
    let memory = own
        .split([' ', ','])
        .find(|a| a.starts_with("mem-path="))
        .unwrap();
    vmm_pids(memory).into_iter().filter(|&p| p != pid).collect()
}

async fn stop_all(name: &str) {
    node_client()
        .await
        .stop_instances(pb::StopInstancesRequest {
            function_name: name.into(),
            instance_id: String::new(),
        })
        .await
        .unwrap();
}

async fn invoke_v(name: &str, q: &str) -> pb::InvokeResponse {
    invoke_at(name, q, "{}").await.unwrap()
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn published_versions_restore_a_function_snapshot_and_clones_are_unique() {
    let name = unique("snap");
    create(
        &name,
        "python3.11",
        "app.handler",
        zip_fixture("snapstart"),
        10,
    )
    .await
    .unwrap();
    publish(&name).await;

    let sent = now_s();
    let r1 = invoke_v(&name, "1").await;
    assert_eq!(
        r1.function_error,
        "",
        "{}",
        String::from_utf8_lossy(&r1.payload)
    );
    let v1 = json(&r1);
    let rep = report(&r1);
    assert!(rep.contains("Restore Duration: "), "{rep}");
    assert!(!rep.contains("Init Duration"), "{rep}");
    assert_eq!(v1["init_type"], "snap-start");
    assert_eq!(v1["before_snapshot_hooks"], 1);
    assert_eq!(v1["after_restore_hooks"], 1);
    // The guest's clock was set at the restore: it reads a time between
    // the request and the response (an order, whatever the machine's
    // speed; 0.5 s for the clocks' granularity).
    let within = |guest: f64, sent: f64| guest > sent - 0.5 && guest < now_s() + 0.5;
    assert!(
        within(v1["now"].as_f64().unwrap(), sent),
        "guest clock: {}",
        v1["now"]
    );

    // A second clone of the same snapshot.
    stop_all(&name).await;
    let started = std::time::Instant::now();
    let sent = now_s();
    let r2 = invoke_v(&name, "1").await;
    let restore_ms = started.elapsed().as_millis();
    let v2 = json(&r2);
    assert!(report(&r2).contains("Restore Duration: "));
    // Init ran once, in the snapshot: both clones carry its results...
    assert_eq!(v1["init_at"], v2["init_at"]);
    assert_eq!(v1["init_random"], v2["init_random"]);
    // ...and each draws fresh randomness and identity after the restore.
    assert_ne!(v1["random"], v2["random"]);
    assert_ne!(v1["uuid"], v2["uuid"]);
    assert_ne!(v1["hostname"], v2["hostname"]);
    assert!(
        within(v2["now"].as_f64().unwrap(), sent),
        "guest clock: {}",
        v2["now"]
    );
    // The 1 s init is not paid again: the clone carries the init's results
    // (above) and its REPORT has a Restore Duration, no Init Duration. How
    // fast a restore is belongs to flint-bench, not to a test that must pass
    // on a slow machine.
    assert!(!report(&r2).contains("Init Duration"));
    eprintln!("a restored invocation took {restore_ms} ms");
    // A third clone from a VMM that was started, and had the snapshot's
    // state loaded, seconds before: paused until this invocation, its
    // clock, entropy and identity are still fresh.
    stop_all(&name).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let r3 = invoke_v(&name, "1").await;
    let v3 = json(&r3);
    assert!(report(&r3).contains("Restore Duration: "));
    assert_eq!(v1["init_random"], v3["init_random"]);
    for v in [&v1, &v2] {
        assert_ne!(v["random"], v3["random"]);
        assert_ne!(v["uuid"], v3["uuid"]);
        assert_ne!(v["hostname"], v3["hostname"]);
    }
    assert!(
        (v3["now"].as_f64().unwrap() - now_s()).abs() < 1.0,
        "guest clock of a clone from a spare loaded 3 s earlier: {}",
        v3["now"]
    );
    // The clone took its own identity, not its spare's, and runs at the
    // normal CPU priority; the spare started for the next clone waits at the
    // lowest.
    let listed = instances(&name).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(v3["hostname"], listed[0].id.as_str());
    let clone = listed[0].vmm_pid as i32;
    assert_eq!(scheduling_policies(clone), [SCHED_OTHER]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let spare = loop {
        if let Some(&pid) = vmms_of_same_snapshot(clone).first() {
            break pid;
        }
        assert!(std::time::Instant::now() < deadline, "no spare started");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(scheduling_policies(spare), [SCHED_IDLE]);

    let warm = invoke_v(&name, "1").await;
    assert!(!report(&warm).contains("Duration: ") || !report(&warm).contains("Restore Duration"));

    // $LATEST is not snapshotted by default: it runs its init.
    let latest = invoke_v(&name, "").await;
    assert!(report(&latest).contains("Init Duration: "));
    assert_eq!(json(&latest)["init_type"], "on-demand");
}

#[tokio::test]
async fn a_failing_after_restore_hook_is_an_unhandled_error() {
    let name = unique("snapfail");
    client()
        .await
        .create_function(pb::CreateFunctionRequest {
            function_name: name.clone(),
            runtime: "python3.11".into(),
            handler: "app.handler".into(),
            zip_file: zip_fixture("snapstart"),
            timeout: 10,
            environment: [("FAIL_RESTORE".to_string(), "1".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    publish(&name).await;
    let r = invoke_v(&name, "1").await;
    assert_eq!(r.function_error, "Unhandled");
    let v = json(&r);
    assert!(
        v.to_string().contains("the after-restore hook failed"),
        "{v}"
    );
}

#[tokio::test]
async fn bash_runtime_versions_restore_without_hooks() {
    let name = unique("snapbash");
    create(
        &name,
        "provided",
        "function.handler",
        zip_fixture("bash-echo"),
        0,
    )
    .await
    .unwrap();
    publish(&name).await;
    for _ in 0..2 {
        let r = invoke_at(&name, "1", r#"{"k":"v"}"#).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&r.payload),
            r#"Echoing request: '{"k":"v"}'"#
        );
        assert!(report(&r).contains("Restore Duration: "), "{}", report(&r));
        stop_all(&name).await;
    }
}

/// The function snapshots under a data directory: (key, created).
fn function_snapshots(data: &std::path::Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(data.join("snapshots")).unwrap().flatten() {
        if let Ok(t) = std::fs::read(e.path().join("manifest.json")) {
            let m: serde_json::Value = serde_json::from_slice(&t).unwrap();
            if m["kind"] == "Function" {
                out.push((
                    m["key"].as_str().unwrap().to_string(),
                    m["created"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    out
}

#[tokio::test]
async fn snapshots_survive_a_restart_and_damaged_ones_are_rebuilt_never_restored() {
    use flint_daemon::config::Config;
    use flint_daemon::functions::FunctionSpec;
    use flint_daemon::invoke::{InvocationType, InvokeRequest};
    use flint_daemon::node::Node;

    let dir = tempfile::Builder::new()
        .prefix("flint-snaplife-")
        .tempdir()
        .unwrap();
    let config = Config {
        data_dir: dir.path().join("data"),
        listen: vec![],
        artifacts_dir: artifacts_dir(),
        ..Config::default()
    };
    let data = config.data_dir.clone();
    let request = || InvokeRequest {
        function_name: "life".into(),
        qualifier: "1".into(),
        invocation_type: InvocationType::RequestResponse,
        log_tail: true,
        payload: b"{}".to_vec(),
        client_context: String::new(),
        trace: None,
    };
    let restored = |r: &flint_daemon::invoke::InvokeResult| {
        assert!(
            r.function_error.is_none(),
            "{}",
            String::from_utf8_lossy(&r.payload)
        );
        let t = r.log_tail.clone().unwrap();
        assert!(t.contains("Restore Duration: "), "{t}");
    };

    let node = Node::open(config.clone()).unwrap();
    node.create_function(
        FunctionSpec {
            name: "life".into(),
            runtime: "python3.11".into(),
            handler: "app.handler".into(),
            timeout_s: 10,
            ..Default::default()
        },
        zip_fixture("snapstart"),
    )
    .await
    .unwrap();
    node.publish_version("life", "").unwrap();
    restored(&node.invoke(request()).await.unwrap());
    let first = function_snapshots(&data);
    assert_eq!(first.len(), 1);
    node.shutdown().await;
    drop(node);

    // A new flintd finds the snapshot and restores it (not rebuilt).
    let node = Node::open(config.clone()).unwrap();
    restored(&node.invoke(request()).await.unwrap());
    assert_eq!(function_snapshots(&data), first);
    node.shutdown().await;
    drop(node);

    // Damage the memory file: detected, logged, rebuilt, never restored.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(data.join("snapshots").join(&first[0].0).join("memory"))
            .unwrap();
        f.seek(SeekFrom::Start(4096)).unwrap();
        f.write_all(b"damaged").unwrap();
    }
    let node = Node::open(config.clone()).unwrap();
    restored(&node.invoke(request()).await.unwrap());
    let rebuilt = function_snapshots(&data);
    assert_eq!(rebuilt.len(), 1);
    assert_eq!(rebuilt[0].0, first[0].0, "same inputs, same key");
    assert_ne!(rebuilt[0].1, first[0].1, "the damaged snapshot was rebuilt");

    // Deleting the function collects its snapshots and stops its VMMs: the
    // clone's and the one started ahead for the next clone.
    let spares = || vmm_pids(&data.join("snapshots").display().to_string()).len();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        spares(),
        2,
        "the clone, and one VMM waiting for the next clone"
    );
    node.delete_function("life").await.unwrap();
    assert!(function_snapshots(&data).is_empty());
    assert_eq!(spares(), 0);
    node.shutdown().await;
}

/// A function whose layer holds a real third-party wheel (numpy, whose
/// import takes seconds under TCG) initialises on demand within the node's
/// limit, and its published version builds a function snapshot under
/// SnapStart's limit and restores from it.
#[tokio::test]
async fn a_layer_of_real_wheels_initialises_publishes_and_restores() {
    let mut c = client().await;
    let layer = c
        .publish_layer_version(pb::PublishLayerVersionRequest {
            layer_name: unique("numpy"),
            zip_file: numpy_layer_zip(),
            description: "numpy 1.26.4".into(),
            compatible_runtimes: vec!["python3.11".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let name = unique("wheels");
    let code = "import numpy as np\nA = np.arange(1000.0)\ndef handler(e, c):\n    return {'numpy': np.__version__, 'sum': float(A.sum())}\n";
    c.create_function(pb::CreateFunctionRequest {
        function_name: name.clone(),
        runtime: "python3.11".into(),
        handler: "app.handler".into(),
        zip_file: zip_files(&[("app.py", code.as_bytes(), 0o644)]),
        layers: vec![layer.layer_version_arn.clone()],
        timeout: 30,
        ..Default::default()
    })
    .await
    .unwrap();
    let expect = serde_json::json!({"numpy": "1.26.4", "sum": 499500.0});
    // $LATEST: an on-demand init.
    let r = invoke_v(&name, "");
    let r = r.await;
    assert_eq!(r.function_error, "", "{}", tail(&r));
    assert_eq!(json(&r), expect);
    let rep = report(&r);
    assert!(rep.contains("Init Duration"), "{rep}");
    eprintln!("$LATEST: {rep}");
    // A published version: its snapshot is built, and clones restore.
    let v = c
        .publish_version(pb::PublishVersionRequest {
            function_name: name.clone(),
            description: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // SnapStart's publish: the version is Pending while its snapshot (and
    // the init in it) is built, then Active, before anything invokes it.
    assert_eq!(
        (
            v.state.as_str(),
            v.last_update_status.as_str(),
            v.state_reason_code.as_str()
        ),
        ("Pending", "InProgress", "Creating")
    );
    let active = wait_active(&name, &v.version).await;
    assert_eq!(active.last_update_status, "Successful");
    assert!(active.state_reason.is_empty(), "{active:?}");
    for _ in 0..2 {
        let r = invoke_v(&name, &v.version).await;
        assert_eq!(r.function_error, "", "{}", tail(&r));
        assert_eq!(json(&r), expect);
        let rep = report(&r);
        assert!(rep.contains("Restore Duration"), "{rep}");
        assert!(!rep.contains("Init Duration"), "{rep}");
        eprintln!("version {}: {rep}", v.version);
        stop_all(&name).await;
    }
}

/// Polls a version until it leaves `Pending`; its configuration then.
async fn wait_active(name: &str, version: &str) -> pb::FunctionConfiguration {
    let mut c = client().await;
    loop {
        let f = c
            .get_function(pb::GetFunctionRequest {
                function_name: name.into(),
                qualifier: version.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .configuration
            .expect("a configuration");
        if f.state != "Pending" {
            return f;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_version_whose_init_fails_while_its_snapshot_is_built_is_failed_and_says_why() {
    let name = unique("failing-version");
    let code = b"import os\nif os.environ.get('AWS_LAMBDA_INITIALIZATION_TYPE') == 'snap-start':\n    raise RuntimeError('no snapshot for me')\ndef handler(e, c):\n    return 'ok'\n";
    create(
        &name,
        "python3.11",
        "app.handler",
        zip_files(&[("app.py", code, 0o644)]),
        10,
    )
    .await
    .unwrap();
    let v = publish(&name).await;
    assert_eq!(v.state, "Pending");
    let failed = wait_active(&name, &v.version).await;
    assert_eq!(
        (
            failed.state.as_str(),
            failed.state_reason_code.as_str(),
            failed.last_update_status.as_str()
        ),
        ("Failed", "FunctionError", "Failed"),
        "{failed:?}"
    );
    assert!(failed.state_reason.contains("RuntimeError"), "{failed:?}");
    // $LATEST is untouched, and an invocation of the version reports the
    // init's error as Lambda does: a function error, not a node failure.
    let latest = invoke(&name, "{}").await.unwrap();
    assert_eq!(latest.function_error, "", "{}", tail(&latest));
    let r = invoke_v(&name, &v.version).await;
    assert_eq!(r.function_error, "Unhandled", "{}", tail(&r));
    let payload = String::from_utf8_lossy(&r.payload);
    assert!(payload.contains("no snapshot for me"), "{payload}");
}
