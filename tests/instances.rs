//! Instances between invocations: frozen (no CPU used) and thawed on the
//! next invocation; reclaimed after the idle timeout.

use std::time::Duration;

use flint_e2e::*;
use flint_proto::node::v1 as pb;
use flint_proto::node::v1::node_client::NodeClient;

/// User + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[tokio::test]
async fn an_idle_instance_is_frozen_uses_no_cpu_and_thaws_on_the_next_invocation() {
    let name = unique("freeze");
    create(
        &name,
        "python3.11",
        "app.handler",
        zip_files(&[("app.py", b"import time\nCOUNT = [0]\ndef handler(e, c):\n    COUNT[0] += 1\n    return {'n': COUNT[0], 'now': time.time()}\n", 0o644)]),
        0,
    )
    .await
    .unwrap();
    let r = invoke(&name, "{}").await.unwrap();
    assert_eq!(json(&r)["n"], 1);
    let mut node_api = NodeClient::new(
        flint_daemon::client::channel(&node().endpoint)
            .await
            .unwrap(),
    );
    // Freezing happens just after the response.
    let mut list = Vec::new();
    for _ in 0..100 {
        list = node_api
            .list_instances(pb::ListInstancesRequest {
                function_name: name.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .instances;
        if list.first().is_some_and(|i| i.state == "Frozen") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].state, "Frozen");
    let pid = vmm_pid(&list[0].id);
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = cpu_ticks(pid);
    // Clock ticks are 10 ms: a frozen VM's process may wake for a tick or
    // two (about 1 here). The bound, 3% of a core, leaves room for a
    // machine several times slower.
    assert!(
        after - before <= 9,
        "a frozen instance used {} ticks of CPU in 3 s",
        after - before
    );

    // Thawed by the next invocation: the same instance, its state kept, and
    // its clock right again.
    let r = invoke(&name, "{}").await.unwrap();
    let v = json(&r);
    assert_eq!(v["n"], 2);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (v["now"].as_f64().unwrap() - now).abs() < 1.0,
        "guest clock after thaw: {}",
        v["now"]
    );
    assert!(!tail(&r).contains("Init Duration"));
}

#[tokio::test]
async fn instances_idle_past_the_timeout_are_reclaimed() {
    use flint_daemon::config::Config;
    use flint_daemon::functions::FunctionSpec;
    use flint_daemon::invoke::{InvocationType, InvokeRequest};
    use flint_daemon::node::Node;

    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(Config {
        data_dir: dir.path().join("data"),
        listen: vec![],
        artifacts_dir: artifacts_dir(),
        idle_timeout: Duration::from_secs(1),
        ..Config::default()
    })
    .unwrap();
    node.create_function(
        FunctionSpec {
            name: "idle".into(),
            runtime: "python3.11".into(),
            handler: "app.handler".into(),
            ..Default::default()
        },
        zip_files(&[("app.py", b"def handler(e, c):\n    return 1\n", 0o644)]),
    )
    .await
    .unwrap();
    let req = InvokeRequest {
        function_name: "idle".into(),
        qualifier: String::new(),
        invocation_type: InvocationType::RequestResponse,
        log_tail: false,
        payload: b"{}".to_vec(),
        client_context: String::new(),
        trace: None,
    };
    node.invoke(req.clone()).await.unwrap();
    assert_eq!(node.instances("idle").len(), 1);
    // Not yet idle long enough.
    assert!(node.reclaim_idle().await.is_empty());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stopped = node.reclaim_idle().await;
    assert_eq!(stopped.len(), 1);
    assert!(node.instances("idle").is_empty());
    // The next invocation starts a new instance.
    node.invoke(req).await.unwrap();
    assert_eq!(node.instances("idle").len(), 1);
    node.shutdown().await;
}
