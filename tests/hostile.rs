//! A hostile guest: the guest kernel and everything in it belong to the
//! attacker. An image whose PID 1 is `tests/fixtures/hostile-agent` (in
//! place of Flint's agent) frames garbage, announces a 4 GiB frame, floods
//! events, sends frames out of order, floods its logs and its console, or
//! stops answering. Each time its invocation fails with a clear error, its
//! instance is stopped, a function beside it keeps serving throughout, and
//! flintd's memory and disk stay bounded.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flint_e2e::*;
use flint_proto::node::v1 as pb;
use flint_proto::node::v1::functions_client::FunctionsClient;
use flint_proto::node::v1::node_client::NodeClient;
use tonic::transport::Channel;

/// Per-function and per-node log caps of the hostile node.
const FUNCTION_LOG_CAP: u64 = 8 << 20;
const NODE_LOG_CAP: u64 = 24 << 20;
/// What flintd's memory may grow by over all the attacks: one partial
/// frame (8 MiB) and the queued events (16 MiB) of the instance under
/// attack, plus the log writer and allocator slack.
const MEMORY_BOUND_KB: u64 = 64 * 1024;

/// Artefacts whose `provided` image boots the hostile agent; the kernel and
/// the Python image are the real ones.
fn hostile_artifacts(dir: &Path) -> PathBuf {
    let real = artifacts_dir();
    let out = dir.join("artifacts");
    std::fs::create_dir_all(&out).unwrap();
    for name in ["vmlinux", "python3.11.erofs"] {
        std::os::unix::fs::symlink(
            std::fs::canonicalize(real.join(name)).unwrap(),
            out.join(name),
        )
        .unwrap();
    }
    let tree = dir.join("tree");
    for d in [
        "sbin", "dev", "proc", "sys", "tmp", "run", "var/task", "opt",
    ] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::copy(hostile_agent(), tree.join("sbin/flint-agent")).unwrap();
    let st = std::process::Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(out.join("provided.erofs"))
        .arg(&tree)
        .status()
        .expect("mkfs.erofs");
    assert!(st.success());
    out
}

/// flintd's resident memory: it runs in this test process.
fn self_rss_kb() -> u64 {
    flint_daemon::engine::process_rss_kb(std::process::id())
}

fn dir_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

async fn invoke_on(c: &mut FunctionsClient<Channel>, name: &str) -> pb::InvokeResponse {
    c.invoke(pb::InvokeRequest {
        function_name: name.into(),
        payload: br#"{"hello":"world"}"#.to_vec(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("invoking {name}: {e}"))
    .into_inner()
}

#[tokio::test]
async fn a_hostile_guest_is_stopped_and_the_node_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let artifacts = hostile_artifacts(tmp.path());
    let node = start_node(|c| {
        c.artifacts_dir = artifacts;
        c.snapshots = false;
        c.logs.max_function_bytes = FUNCTION_LOG_CAP;
        c.logs.max_node_bytes = NODE_LOG_CAP;
        c.vmm.uid_base = flint_daemon::engine::jail::JailSettings::default().uid_base + 0x2_0000;
        c.vmm.uid_count = 1024;
    });
    let channel = flint_daemon::client::channel(&node.endpoint).await.unwrap();
    let mut functions = FunctionsClient::new(channel.clone())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let mut nodes = NodeClient::new(channel);

    let bystander = "bystander";
    functions
        .create_function(pb::CreateFunctionRequest {
            function_name: bystander.into(),
            runtime: "python3.11".into(),
            handler: "app.handler".into(),
            zip_file: zip_fixture("python"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        invoke_on(&mut functions, bystander).await.function_error,
        ""
    );
    let rss_before = self_rss_kb();

    for (mode, error_type, timeout) in [
        ("garbage", "Sandbox.ProtocolError", 30),
        ("oversize", "Sandbox.ProtocolError", 30),
        ("flood", "Sandbox.ProtocolError", 30),
        ("disorder", "Sandbox.ProtocolError", 30),
        ("logs", "Sandbox.Timedout", 4),
        ("console", "Sandbox.Timedout", 6),
        ("silent", "Sandbox.Timedout", 3),
    ] {
        let name = format!("hostile-{mode}");
        functions
            .create_function(pb::CreateFunctionRequest {
                function_name: name.clone(),
                runtime: "provided".into(),
                handler: "unused".into(),
                zip_file: zip_files(&[("bootstrap", b"#!/bin/sh\n", 0o755)]),
                timeout,
                environment: [("HOSTILE".to_string(), format!("hostile:{mode};"))].into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let attack = tokio::spawn({
            let mut functions = functions.clone();
            let name = name.clone();
            async move { invoke_on(&mut functions, &name).await }
        });
        // The function beside it is served throughout, and the attacked
        // instance's console stays within its bound.
        let mut served = 0;
        let mut console_max = 0;
        while !attack.is_finished() {
            let r = invoke_on(&mut functions, bystander).await;
            assert_eq!(r.function_error, "", "bystander failed during {mode}");
            served += 1;
            for i in nodes
                .list_instances(pb::ListInstancesRequest {
                    function_name: name.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .instances
            {
                let console = node.data_dir.join("run").join(&i.id).join("console.log");
                console_max =
                    console_max.max(std::fs::metadata(console).map(|m| m.len()).unwrap_or(0));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = attack.await.unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        eprintln!(
            "{mode}: {doc}; bystander served {served} times; console peaked at {console_max} bytes"
        );
        assert_eq!(r.function_error, "Unhandled", "{mode}: {doc}");
        assert_eq!(doc["errorType"], error_type, "{mode}: {doc}");
        assert!(served > 0);
        assert!(
            console_max <= (1 << 20) + (64 << 10) + (256 << 10),
            "{mode}: console at {console_max}"
        );
        // Its instance is gone.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = nodes
                .list_instances(pb::ListInstancesRequest {
                    function_name: name.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .instances;
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "{mode}: instance left: {left:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The log flood stayed within its function's cap, oldest dropped first
    // and counted.
    let logs_dir = node.data_dir.join("logs");
    let flood = dir_bytes(&logs_dir.join("hostile-logs"));
    let info = nodes
        .get_node_info(pb::GetNodeInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    eprintln!(
        "logs: hostile-logs {flood} bytes on disk; node {} stored, {} dropped",
        info.log_bytes_stored, info.log_bytes_dropped
    );
    assert!(flood <= FUNCTION_LOG_CAP + (256 << 10), "{flood}");
    assert!(info.log_bytes_dropped > 0, "{info:?}");
    assert!(
        info.log_bytes_stored <= NODE_LOG_CAP + (256 << 10),
        "{info:?}"
    );

    // flintd's memory is bounded, and the bystander still answers.
    let rss_after = self_rss_kb();
    eprintln!("test process RSS: {rss_before} KiB before the attacks, {rss_after} KiB after");
    assert!(
        rss_after.saturating_sub(rss_before) < MEMORY_BOUND_KB,
        "flintd grew by {} KiB",
        rss_after - rss_before
    );
    assert_eq!(
        invoke_on(&mut functions, bystander).await.function_error,
        ""
    );
}
