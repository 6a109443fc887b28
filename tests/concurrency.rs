//! Instances on demand under concurrency, reserved and provisioned
//! concurrency, node capacity and eviction of the least recently used idle
//! instance.

use std::time::{Duration, Instant};

use flint_e2e::*;
use flint_proto::node::v1 as pb;
use tonic::transport::Channel;

/// A handler that says which event it ran, when, and on which instance.
const WORKER: &[u8] = b"import os, time
def handler(e, c):
    start = time.time()
    print('ran', e['id'])
    time.sleep(e.get('sleep', 0))
    return {'id': e['id'], 'start': start, 'end': time.time(),
            'stream': os.environ['AWS_LAMBDA_LOG_STREAM_NAME']}
";

fn worker_zip() -> Vec<u8> {
    zip_files(&[("app.py", WORKER, 0o644)])
}

/// Creates the worker function on a node driven in-process.
async fn create_worker(node: &flint_daemon::node::Node, name: &str) {
    node.create_function(
        flint_daemon::functions::FunctionSpec {
            name: name.into(),
            runtime: "python3.11".into(),
            handler: "app.handler".into(),
            ..Default::default()
        },
        worker_zip(),
    )
    .await
    .unwrap();
}

/// `n` invocations at once; each result with how long it took.
async fn burst(
    name: &str,
    qualifier: &str,
    n: usize,
    sleep_s: f64,
) -> Vec<(usize, Result<pb::InvokeResponse, tonic::Status>, Duration)> {
    let mut tasks = Vec::new();
    for id in 0..n {
        let (name, qualifier) = (name.to_string(), qualifier.to_string());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = invoke_at(
                &name,
                &qualifier,
                &format!(r#"{{"id": {id}, "sleep": {sleep_s}}}"#),
            )
            .await;
            (id, r, t.elapsed())
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_burst_of_20_against_reserved_concurrency_5_runs_5_and_throttles_15_at_once() {
    let name = unique("reserved");
    create(&name, "python3.11", "app.handler", worker_zip(), 30)
        .await
        .unwrap();
    let mut c = client().await;
    let r = c
        .put_function_concurrency(pb::PutFunctionConcurrencyRequest {
            function_name: name.clone(),
            reserved_concurrent_executions: 5,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.reserved_concurrent_executions, Some(5));

    let results = burst(&name, "", 20, 3.0).await;
    let mut ran = Vec::new();
    let mut throttled = 0;
    let mut slowest_throttle = Duration::ZERO;
    let mut fastest_run = Duration::MAX;
    for (id, r, took) in &results {
        match r {
            Ok(resp) => {
                assert!(resp.function_error.is_empty(), "{}", tail(resp));
                let v = json(resp);
                assert_eq!(v["id"], *id as u64);
                ran.push(v);
                fastest_run = fastest_run.min(*took);
            }
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
                assert!(s.message().starts_with("TooManyRequestsException"), "{s:?}");
                assert!(
                    s.message()
                        .contains("ReservedFunctionConcurrentInvocationLimitExceeded"),
                    "{s:?}"
                );
                slowest_throttle = slowest_throttle.max(*took);
                throttled += 1;
            }
        }
    }
    assert_eq!(ran.len(), 5, "{results:?}");
    assert_eq!(throttled, 15);
    // At once: every throttle was answered before any of the five (each
    // sleeping 3 s) finished, not after waiting for a running one. An
    // order, not a wall-clock figure: it holds on a slow machine too.
    assert!(
        slowest_throttle < fastest_run,
        "a throttle took {slowest_throttle:?}, a run {fastest_run:?}"
    );
    // The five were admitted together, so each got an instance of its
    // own (none was idle to reuse). Their starts take turns for the node's
    // start slots, so they need not have run at the same moment.
    let mut streams: Vec<&str> = ran.iter().map(|v| v["stream"].as_str().unwrap()).collect();
    streams.sort();
    streams.dedup();
    assert_eq!(streams.len(), 5);
    assert_eq!(instances(&name).await.len(), 5);
    // Nothing ran twice, and nothing throttled ran at all.
    let lines = log_messages(&node().endpoint, &name).await;
    for (id, r, _) in &results {
        let n = lines
            .iter()
            .filter(|l| l.trim_end() == format!("ran {id}"))
            .count();
        assert_eq!(n, usize::from(r.is_ok()), "event {id} ran {n} times");
    }
    // The instances are reused; no more are started.
    let again = burst(&name, "", 5, 0.0).await;
    assert!(again.iter().all(|(_, r, _)| r.is_ok()), "{again:?}");
    assert_eq!(instances(&name).await.len(), 5);
}

#[tokio::test]
async fn reserved_concurrency_zero_throttles_and_the_rules_are_checked() {
    let name = unique("throttled");
    create(&name, "python3.11", "app.handler", worker_zip(), 3)
        .await
        .unwrap();
    let mut c = client().await;
    let get = |c: &mut flint_proto::node::v1::functions_client::FunctionsClient<Channel>| {
        let mut c = c.clone();
        let name = name.clone();
        async move {
            c.get_function_concurrency(pb::GetFunctionConcurrencyRequest {
                function_name: name,
            })
            .await
            .unwrap()
            .into_inner()
            .reserved_concurrent_executions
        }
    };
    assert_eq!(get(&mut c).await, None);
    c.put_function_concurrency(pb::PutFunctionConcurrencyRequest {
        function_name: name.clone(),
        reserved_concurrent_executions: 0,
    })
    .await
    .unwrap();
    assert_eq!(get(&mut c).await, Some(0));
    let e = invoke(&name, r#"{"id": 1}"#).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert!(e.message().contains("TooManyRequestsException"), "{e:?}");
    assert!(instances(&name).await.is_empty());

    // More than the node can set aside, and negative values, are refused.
    for bad in [-1, 100_000] {
        let e = c
            .put_function_concurrency(pb::PutFunctionConcurrencyRequest {
                function_name: name.clone(),
                reserved_concurrent_executions: bad,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().starts_with("InvalidParameterValueException"),
            "{e:?}"
        );
    }
    // Unknown functions are not found.
    let e = c
        .put_function_concurrency(pb::PutFunctionConcurrencyRequest {
            function_name: "no-such-function".into(),
            reserved_concurrent_executions: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    c.delete_function_concurrency(pb::DeleteFunctionConcurrencyRequest {
        function_name: name.clone(),
    })
    .await
    .unwrap();
    assert_eq!(get(&mut c).await, None);
    let r = invoke(&name, r#"{"id": 2}"#).await.unwrap();
    assert_eq!(json(&r)["id"], 2);
}

async fn provisioned(name: &str, qualifier: &str) -> pb::ProvisionedConcurrencyConfig {
    client()
        .await
        .get_provisioned_concurrency_config(pb::GetProvisionedConcurrencyConfigRequest {
            function_name: name.into(),
            qualifier: qualifier.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Polls the config until its status is `status` (and it has `allocated`
/// instances) or the time is up.
async fn wait_status(
    name: &str,
    qualifier: &str,
    status: &str,
    allocated: i64,
) -> pb::ProvisionedConcurrencyConfig {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = provisioned(name, qualifier).await;
        if p.status == status && p.allocated_provisioned_concurrent_executions == allocated {
            return p;
        }
        assert!(Instant::now() < deadline, "still {p:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls a function's provisioned instances until `done` holds of them or
/// the time is up.
async fn wait_provisioned(name: &str, what: &str, done: impl Fn(&[&pb::InstanceInfo]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = instances(name).await;
        let prov: Vec<_> = list.iter().filter(|i| i.provisioned).collect();
        if done(&prov) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {list:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn provisioned_instances_answer_without_init_are_replaced_and_spill_over() {
    let name = unique("provisioned");
    create(&name, "python3.11", "app.handler", worker_zip(), 30)
        .await
        .unwrap();
    let mut c = client().await;
    let v = publish(&name).await;
    c.create_alias(pb::CreateAliasRequest {
        function_name: name.clone(),
        name: "live".into(),
        function_version: v.version.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    // Not on $LATEST.
    let e = c
        .put_provisioned_concurrency_config(pb::PutProvisionedConcurrencyConfigRequest {
            function_name: name.clone(),
            qualifier: "$LATEST".into(),
            provisioned_concurrent_executions: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = client()
        .await
        .get_provisioned_concurrency_config(pb::GetProvisionedConcurrencyConfigRequest {
            function_name: name.clone(),
            qualifier: "live".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e
        .message()
        .starts_with("ProvisionedConcurrencyConfigNotFoundException"));

    let p = c
        .put_provisioned_concurrency_config(pb::PutProvisionedConcurrencyConfigRequest {
            function_name: name.clone(),
            qualifier: "live".into(),
            provisioned_concurrent_executions: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.requested_provisioned_concurrent_executions, 2);
    assert!(p.function_arn.ends_with(&format!(":function:{name}:live")));
    wait_status(&name, "live", "READY", 2).await;
    let list = instances(&name).await;
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|i| i.provisioned), "{list:?}");

    // Invocations go to them, and show neither init nor restore.
    for id in 0..3 {
        let r = invoke_at(&name, "live", &format!(r#"{{"id": {id}}}"#))
            .await
            .unwrap();
        let t = tail(&r);
        assert!(t.contains("REPORT RequestId"), "{t}");
        assert!(!t.contains("Init Duration"), "{t}");
        assert!(!t.contains("Restore Duration"), "{t}");
    }
    let list = instances(&name).await;
    assert_eq!(list.len(), 2);
    assert_eq!(list.iter().map(|i| i.invocations).sum::<u64>(), 3);

    // Three at once: two on provisioned instances, one spills over.
    let results = burst(&name, "live", 3, 2.0).await;
    assert!(results.iter().all(|(_, r, _)| r.is_ok()), "{results:?}");
    let list = instances(&name).await;
    assert_eq!(list.iter().filter(|i| i.provisioned).count(), 2, "{list:?}");
    assert_eq!(
        list.iter().filter(|i| !i.provisioned).count(),
        1,
        "{list:?}"
    );

    // A provisioned instance that dies is replaced.
    let victim = list.iter().find(|i| i.provisioned).unwrap().id.clone();
    let pid = vmm_pid(&victim);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_provisioned(&name, "not replaced", |prov| {
        prov.len() == 2 && prov.iter().all(|i| i.id != victim)
    })
    .await;
    wait_status(&name, "live", "READY", 2).await;

    // Lowered: the surplus goes.
    c.put_provisioned_concurrency_config(pb::PutProvisionedConcurrencyConfigRequest {
        function_name: name.clone(),
        qualifier: "live".into(),
        provisioned_concurrent_executions: 1,
    })
    .await
    .unwrap();
    wait_status(&name, "live", "READY", 1).await;
    // The alias moves to a new version: its provisioned instance follows.
    c.update_function_configuration(pb::UpdateFunctionConfigurationRequest {
        function_name: name.clone(),
        description: Some("v2".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let v2 = publish(&name).await;
    c.update_alias(pb::UpdateAliasRequest {
        function_name: name.clone(),
        name: "live".into(),
        function_version: Some(v2.version.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    wait_provisioned(&name, "not moved", |prov| {
        prov.len() == 1 && prov[0].function_version == v2.version && prov[0].state == "Frozen"
    })
    .await;
    wait_status(&name, "live", "READY", 1).await;

    // Deleted: its instances go.
    c.delete_provisioned_concurrency_config(pb::DeleteProvisionedConcurrencyConfigRequest {
        function_name: name.clone(),
        qualifier: "live".into(),
    })
    .await
    .unwrap();
    assert!(instances(&name).await.iter().all(|i| !i.provisioned));
}

#[tokio::test]
async fn a_function_whose_init_fails_cannot_be_provisioned() {
    let name = unique("prov-fail");
    create(
        &name,
        "python3.11",
        "app.handler",
        zip_files(&[(
            "app.py",
            b"raise RuntimeError('no init')\ndef handler(e, c):\n    return 1\n",
            0o644,
        )]),
        3,
    )
    .await
    .unwrap();
    let mut c = client().await;
    let v = publish(&name).await;
    c.put_provisioned_concurrency_config(pb::PutProvisionedConcurrencyConfigRequest {
        function_name: name.clone(),
        qualifier: v.version.clone(),
        provisioned_concurrent_executions: 1,
    })
    .await
    .unwrap();
    let p = wait_status(&name, &v.version, "FAILED", 0).await;
    assert!(
        p.status_reason.contains("FUNCTION_ERROR_INIT_FAILURE"),
        "{p:?}"
    );
}

#[tokio::test]
async fn a_full_node_evicts_the_least_recently_used_idle_instance_and_throttles_when_all_are_busy()
{
    use flint_daemon::config::Config;
    use flint_daemon::functions::FunctionSpec;
    use flint_daemon::invoke::{InvocationType, InvokeRequest};
    use flint_daemon::node::Node;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let node = Arc::new(
        Node::open(Config {
            data_dir: dir.path().join("data"),
            listen: vec![],
            artifacts_dir: artifacts_dir(),
            max_instances: 3,
            ..Config::default()
        })
        .unwrap(),
    );
    for f in ["a", "b", "c", "d"] {
        node.create_function(
            FunctionSpec {
                name: f.into(),
                runtime: "python3.11".into(),
                handler: "app.handler".into(),
                timeout_s: 30,
                ..Default::default()
            },
            worker_zip(),
        )
        .await
        .unwrap();
    }
    let req = |f: &str, sleep: f64| InvokeRequest {
        function_name: f.into(),
        qualifier: String::new(),
        invocation_type: InvocationType::RequestResponse,
        log_tail: false,
        payload: format!(r#"{{"id": 0, "sleep": {sleep}}}"#).into_bytes(),
        client_context: String::new(),
        trace: None,
    };
    let on_node = |node: &Node| {
        let mut v: Vec<String> = node.instances("").into_iter().map(|i| i.function).collect();
        v.sort();
        v
    };
    for f in ["a", "b", "c", "a"] {
        node.invoke(req(f, 0.0)).await.unwrap();
    }
    assert_eq!(on_node(&node), ["a", "b", "c"]);
    // b is the least recently used: d takes its place.
    node.invoke(req("d", 0.0)).await.unwrap();
    assert_eq!(on_node(&node), ["a", "c", "d"]);
    // c next.
    node.invoke(req("b", 0.0)).await.unwrap();
    assert_eq!(on_node(&node), ["a", "b", "d"]);

    // Four at once on a node of three: one is throttled for node capacity.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let node = node.clone();
        let r = req("a", 2.0);
        tasks.push(tokio::spawn(async move { node.invoke(r).await }));
    }
    let mut throttled = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => assert!(r.function_error.is_none()),
            Err(e) => {
                let s = tonic::Status::from(e);
                assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
                assert!(
                    s.message().contains("ConcurrentInvocationLimitExceeded"),
                    "{s:?}"
                );
                throttled += 1;
            }
        }
    }
    assert_eq!(throttled, 1);
    assert_eq!(on_node(&node), ["a", "a", "a"]);
    node.shutdown().await;
}

#[tokio::test]
async fn flintctl_sets_reserved_and_provisioned_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(bin("flintctl"))
            .env("FLINT_ENDPOINT", &node().endpoint)
            .args(args)
            .output()
            .expect("run flintctl")
    };
    let ctl = |args: &[&str]| {
        let out = run(args);
        assert!(
            out.status.success(),
            "flintctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let jctl = |args: &[&str]| -> serde_json::Value {
        let out = ctl(args);
        if out.trim().is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::from_str(&out).unwrap()
    };
    let name = unique("ctl-conc");
    let zip = dir.path().join("fn.zip");
    std::fs::write(&zip, worker_zip()).unwrap();
    let zip = format!("fileb://{}", zip.display());
    ctl(&[
        "create-function",
        "--function-name",
        &name,
        "--runtime",
        "python3.11",
        "--handler",
        "app.handler",
        "--zip-file",
        &zip,
    ]);

    let r = jctl(&[
        "put-function-concurrency",
        "--function-name",
        &name,
        "--reserved-concurrent-executions",
        "0",
    ]);
    assert_eq!(r["ReservedConcurrentExecutions"], 0);
    let r = jctl(&["get-function-concurrency", "--function-name", &name]);
    assert_eq!(r["ReservedConcurrentExecutions"], 0);
    let out_file = dir.path().join("out.json");
    let out = run(&[
        "invoke",
        "--function-name",
        &name,
        "--payload",
        r#"{"id": 1}"#,
        out_file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TooManyRequestsException"), "{err}");
    assert!(
        err.contains("ReservedFunctionConcurrentInvocationLimitExceeded"),
        "{err}"
    );
    ctl(&[
        "put-function-concurrency",
        "--function-name",
        &name,
        "--reserved-concurrent-executions",
        "3",
    ]);

    let v = jctl(&["publish-version", "--function-name", &name]);
    let version = v["Version"].as_str().unwrap().to_string();
    let p = jctl(&[
        "put-provisioned-concurrency-config",
        "--function-name",
        &name,
        "--qualifier",
        &version,
        "--provisioned-concurrent-executions",
        "1",
    ]);
    assert_eq!(p["RequestedProvisionedConcurrentExecutions"], 1);
    // More than the reservation is refused.
    let out = run(&[
        "put-provisioned-concurrency-config",
        "--function-name",
        &name,
        "--qualifier",
        &version,
        "--provisioned-concurrent-executions",
        "4",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("InvalidParameterValueException"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = jctl(&[
            "get-provisioned-concurrency-config",
            "--function-name",
            &name,
            "--qualifier",
            &version,
        ]);
        if p["Status"] == "READY" {
            assert_eq!(p["AllocatedProvisionedConcurrentExecutions"], 1);
            break;
        }
        assert!(Instant::now() < deadline, "{p}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let list = jctl(&[
        "list-provisioned-concurrency-configs",
        "--function-name",
        &name,
    ]);
    assert_eq!(
        list["ProvisionedConcurrencyConfigs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let table = ctl(&["instances", "--function-name", &name, "--output", "table"]);
    assert!(
        table.contains("KIND") && table.contains("provisioned"),
        "{table}"
    );
    let info = jctl(&["node", "info", "--output", "json"]);
    assert!(info["MaxInstances"].as_u64().unwrap() > 0, "{info}");
    assert!(info["ReservedConcurrency"].as_u64().unwrap() >= 3, "{info}");

    ctl(&[
        "delete-provisioned-concurrency-config",
        "--function-name",
        &name,
        "--qualifier",
        &version,
    ]);
    let out = run(&[
        "get-provisioned-concurrency-config",
        "--function-name",
        &name,
        "--qualifier",
        &version,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("ProvisionedConcurrencyConfigNotFoundException"));
    ctl(&["delete-function-concurrency", "--function-name", &name]);
    let r = jctl(&["get-function-concurrency", "--function-name", &name]);
    assert!(r.get("ReservedConcurrentExecutions").is_none(), "{r}");
}

#[tokio::test]
async fn reservations_and_provisioned_configs_survive_a_restart() {
    use flint_daemon::config::Config;
    use flint_daemon::node::{Node, ProvisionedStatus};

    let dir = tempfile::tempdir().unwrap();
    let config = || Config {
        data_dir: dir.path().join("data"),
        listen: vec![],
        artifacts_dir: artifacts_dir(),
        ..Config::default()
    };
    // The server runs the provisioning loop; here the test turns it.
    async fn ready(node: &Node) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            node.reconcile_provisioned().await;
            let p = node.get_provisioned_concurrency("p", "1").unwrap();
            if p.status == ProvisionedStatus::Ready {
                assert_eq!(p.allocated, 1);
                return;
            }
            assert!(Instant::now() < deadline, "{p:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    {
        let node = Node::open(config()).unwrap();
        create_worker(&node, "p").await;
        node.publish_version("p", "").unwrap();
        node.put_function_concurrency("p", 4).unwrap();
        node.put_provisioned_concurrency("p", "1", 1).unwrap();
        ready(&node).await;
        node.shutdown().await;
    }
    let node = Node::open(config()).unwrap();
    assert_eq!(node.get_function_concurrency("p").unwrap(), Some(4));
    assert_eq!(node.capacity().reserved_total, 4);
    ready(&node).await;
    let list = node.instances("p");
    assert_eq!(list.len(), 1);
    assert!(list[0].provisioned);
    node.shutdown().await;
}

/// Reservations and the provisioned concurrency of functions without one
/// share what the node sets aside; neither may take the unreserved minimum.
/// (No VM: the provisioning loop is not turned.)
#[tokio::test]
async fn reservations_and_provisioned_concurrency_leave_the_unreserved_minimum() {
    use flint_daemon::config::Config;
    use flint_daemon::node::Node;

    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(Config {
        data_dir: dir.path().join("data"),
        listen: vec![],
        artifacts_dir: artifacts_dir(),
        max_instances: 10,
        unreserved_min: Some(1),
        ..Config::default()
    })
    .unwrap();
    for f in ["a", "b"] {
        create_worker(&node, f).await;
        node.publish_version(f, "").unwrap();
    }
    let refused = |r: Result<(), flint_daemon::node::NodeError>| {
        let s = tonic::Status::from(r.expect_err("refused"));
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
        assert!(
            s.message().contains("UnreservedConcurrentExecution"),
            "{s:?}"
        );
    };
    // 9 of 10 can be set aside.
    node.put_provisioned_concurrency("a", "1", 5).unwrap();
    refused(node.put_function_concurrency("b", 5).map(drop));
    node.put_function_concurrency("b", 4).unwrap();
    refused(node.put_provisioned_concurrency("a", "1", 6).map(drop));
    // Within its own reservation a function may provision what it reserved.
    node.put_provisioned_concurrency("b", "1", 4).unwrap();
    assert!(node.put_provisioned_concurrency("b", "1", 5).is_err());
    // Without its reservation, b's provisioned concurrency comes out of the
    // unreserved share: 5 + 4 still fits, and then nothing more does.
    node.delete_function_concurrency("b").unwrap();
    refused(node.put_provisioned_concurrency("a", "1", 6).map(drop));
    node.delete_provisioned_concurrency("b", "1").await.unwrap();
    node.put_provisioned_concurrency("a", "1", 9).unwrap();
    node.shutdown().await;
}

/// A `provided` runtime whose init takes 3 s (a sleep before its first
/// `next`), and hardly anything else: the shell and curl start in a few
/// hundred ms even on a slow, busy host.
const SLOW_INIT: &[u8] = br#"#!/bin/sh
sleep 3
API="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation"
while true; do
  H="$(mktemp)"
  curl -sS -o /dev/null -D "$H" "$API/next"
  ID=$(grep -Fi Lambda-Runtime-Aws-Request-Id "$H" | tr -d '[:space:]' | cut -d: -f2)
  curl -sS -o /dev/null "$API/$ID/response" -d "{\"stream\": \"$AWS_LAMBDA_LOG_STREAM_NAME\"}"
done
"#;

/// `Init Duration: N ms` of a log tail, in ms.
fn init_ms(tail: &str) -> f64 {
    let at = tail.find("Init Duration: ").expect("an Init Duration") + 15;
    tail[at..].split(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn starts_beyond_the_slots_wait_their_turn_and_the_wait_is_not_init_time() {
    use flint_daemon::engine::jail::JailSettings;
    // One start at a time, an init limit of 8 s, and inits of at least 3 s:
    // the fourth of four cold starts waits at least 9 s for its slot —
    // longer than the init limit — and still succeeds, because the limit
    // runs from when its VM runs. Bounds the node enforces (the sleeps and
    // the slot), not the machine's speed.
    let small = start_node(|c| {
        c.init_timeout = Some(Duration::from_secs(8));
        c.starts = flint_daemon::config::FileStarts {
            slots: Some(1),
            scale_instances: Some(50),
            scale_interval_s: Some(20.0),
        };
        c.vmm = JailSettings {
            uid_base: JailSettings::default().uid_base + 0x2_0000,
            uid_count: 1024,
            ..JailSettings::default()
        };
    });
    let channel = flint_daemon::client::channel(&small.endpoint)
        .await
        .unwrap();
    let mut functions = pb::functions_client::FunctionsClient::new(channel.clone());
    let mut nodes = pb::node_client::NodeClient::new(channel);
    let name = unique("slots");
    functions
        .create_function(pb::CreateFunctionRequest {
            function_name: name.clone(),
            runtime: "provided".into(),
            handler: "function.handler".into(),
            zip_file: zip_files(&[("bootstrap", SLOW_INIT, 0o755)]),
            timeout: 30,
            ..Default::default()
        })
        .await
        .unwrap();
    let info = nodes
        .get_node_info(pb::GetNodeInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            info.start_slots,
            info.scale_instances,
            info.scale_interval_seconds
        ),
        (1, 50, 20.0)
    );
    assert_eq!(info.init_timeout_seconds, 8.0);

    let mut tasks = Vec::new();
    for id in 0..4 {
        let (mut f, name) = (functions.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            f.invoke(pb::InvokeRequest {
                function_name: name,
                payload: format!(r#"{{"id": {id}}}"#).into_bytes(),
                log_type: pb::LogType::Tail as i32,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
        }));
    }
    // While they start: never more than the one slot in flight, and the
    // others seen waiting, in node info and in the instance list.
    let (mut max_in_flight, mut max_waiting, mut listed_waiting) = (0, 0, 0);
    while !tasks.iter().all(|t| t.is_finished()) {
        let i = nodes
            .get_node_info(pb::GetNodeInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        max_in_flight = max_in_flight.max(i.starts_in_flight);
        max_waiting = max_waiting.max(i.starts_waiting);
        let l = nodes
            .list_instances(pb::ListInstancesRequest {
                function_name: name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        for q in &l.starts {
            assert_eq!(q.function_name, name);
            listed_waiting = listed_waiting.max(q.waiting);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(max_in_flight, 1);
    assert!(max_waiting >= 2, "never saw the starts wait: {max_waiting}");
    assert!(
        listed_waiting >= 2,
        "ListInstances never showed them waiting"
    );
    let mut streams = Vec::new();
    for t in tasks {
        let r = t
            .await
            .unwrap()
            .expect("an admitted start waits, it is not throttled");
        let log = tail(&r);
        assert!(r.function_error.is_empty(), "{log}");
        // What the function did, not what the queue did.
        let ms = init_ms(&log);
        assert!(
            (3000.0..8000.0).contains(&ms),
            "Init Duration {ms} ms: {log}"
        );
        streams.push(json(&r)["stream"].as_str().unwrap().to_string());
    }
    streams.sort();
    streams.dedup();
    assert_eq!(streams.len(), 4);
    let after = nodes
        .get_node_info(pb::GetNodeInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((after.starts_in_flight, after.starts_waiting), (0, 0));
}
