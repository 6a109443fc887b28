//! End-to-end attacks on the node's doors: packages built to escape
//! extraction, hostile API input, and a runtime that misuses the Runtime
//! API. Each must get a clear, typed error while the node keeps serving.

use std::io::Write;
use std::path::{Path, PathBuf};

use flint_e2e::*;
use flint_proto::node::v1 as pb;
use tonic::Code;
use zip::write::SimpleFileOptions;

/// The chain from the report: `a/up -> ..`, `a/e1 -> up/..`, ... each
/// passing a textual check, then a regular file under the last link.
fn chain_zip(depth: usize, sentinel: &str, extra: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o = SimpleFileOptions::default();
    for (name, data, mode) in extra {
        w.start_file(*name, o.unix_permissions(*mode)).unwrap();
        w.write_all(data).unwrap();
    }
    w.add_symlink("a/up", "..", o).unwrap();
    let mut prev = "up".to_string();
    for i in 1..=depth {
        w.add_symlink(format!("a/e{i}"), format!("{prev}/.."), o)
            .unwrap();
        prev = format!("e{i}");
    }
    w.start_file(format!("a/{prev}/{sentinel}"), o).unwrap();
    w.write_all(b"written on the host").unwrap();
    w.finish().unwrap().into_inner()
}

/// Every folder the chain can reach from the node's staging folder.
fn reachable(data_dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![data_dir.join("tmp"), data_dir.join("code")];
    let mut d = Some(data_dir);
    while let Some(p) = d {
        out.push(p.to_path_buf());
        d = p.parent();
    }
    out.push(std::env::temp_dir());
    out
}

#[tokio::test]
async fn packages_and_layers_built_to_escape_extraction_are_refused() {
    let data_dir = node().data_dir.clone();
    let sentinel = format!("flint-sentinel-{}", std::process::id());
    let app: &[(&str, &[u8], u32)] = &[("app.py", b"def handler(e, c):\n    return 1\n", 0o644)];
    for depth in 1..=8 {
        let name = unique(&format!("escape{depth}"));
        let e = create(
            &name,
            "python3.11",
            "app.handler",
            chain_zip(depth, &sentinel, app),
            0,
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("link"), "{}", e.message());
        let e = client()
            .await
            .publish_layer_version(pb::PublishLayerVersionRequest {
                layer_name: name,
                zip_file: chain_zip(depth, &sentinel, &[]),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    // A layer whose links pass every check, then a second layer that
    // writes under them when the two are merged into /opt.
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o = SimpleFileOptions::default();
    w.add_symlink("python/up", "..", o).unwrap();
    w.add_symlink("python/e1", "up/..", o).unwrap();
    w.add_symlink("python/e2", "e1/..", o).unwrap();
    let links = w.finish().unwrap().into_inner();
    let under = zip_files(&[(&format!("python/e2/{sentinel}"), b"x", 0o644)]);
    let mut arns = Vec::new();
    for (i, zip) in [links, under].into_iter().enumerate() {
        let l = client()
            .await
            .publish_layer_version(pb::PublishLayerVersionRequest {
                layer_name: unique(&format!("linklayer{i}")),
                zip_file: zip,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        arns.push(l.layer_version_arn);
    }
    let name = unique("twolayers");
    client()
        .await
        .create_function(pb::CreateFunctionRequest {
            function_name: name.clone(),
            runtime: "python3.11".into(),
            handler: "app.handler".into(),
            zip_file: zip_files(app),
            layers: arns,
            ..Default::default()
        })
        .await
        .unwrap();
    let e = invoke(&name, "{}").await.unwrap_err();
    assert!(e.message().contains("link"), "{e:?}");
    // Duplicate names: the check read the first, extraction kept the last.
    let e = create(
        &unique("dup"),
        "python3.11",
        "app.handler",
        zip_files(&[
            ("app.py", b"def handler(e, c):\n    return 1\n", 0o644),
            ("./app.py", b"import os; os.system('x')\n", 0o644),
        ]),
        0,
    )
    .await
    .unwrap_err();
    assert!(e.message().contains("two entries"), "{e:?}");

    for dir in reachable(&data_dir) {
        assert!(
            !dir.join(&sentinel).exists(),
            "{} was written",
            dir.join(&sentinel).display()
        );
    }
    // The node keeps serving.
    let ok = unique("afterescape");
    create(&ok, "python3.11", "app.handler", zip_files(app), 0)
        .await
        .unwrap();
    assert_eq!(json(&invoke(&ok, "{}").await.unwrap()), 1);
}

#[test]
fn the_unix_socket_is_0660() {
    use std::os::unix::fs::PermissionsExt;
    let sock = node().endpoint.strip_prefix("unix:").unwrap().to_string();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660, "{mode:o}");
}

/// `$LATEST`'s configuration.
async fn configuration(name: &str) -> pb::FunctionConfiguration {
    client()
        .await
        .get_function(pb::GetFunctionRequest {
            function_name: name.into(),
            qualifier: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .configuration
        .unwrap()
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn bad_api_input_gets_typed_errors_and_updates_are_not_lost() {
    let name = unique("badinput");
    let handler = "def handler(e, c):\n    cc = c.client_context\n    return {'custom': cc.custom if cc else None}\n";
    create(
        &name,
        "python3.11",
        "app.handler",
        zip_files(&[("app.py", handler.as_bytes(), 0o644)]),
        0,
    )
    .await
    .unwrap();

    // ClientContext: base64 of a JSON object of at most 3,583 bytes; the
    // runtime gets the decoded JSON.
    let invoke_cc = |cc: String| {
        let name = name.clone();
        async move {
            client()
                .await
                .invoke(pb::InvokeRequest {
                    function_name: name,
                    payload: b"{}".to_vec(),
                    client_context: cc,
                    ..Default::default()
                })
                .await
        }
    };
    let r = invoke_cc(b64(r#"{"custom": {"tenant": "t1"}}"#))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(json(&r)["custom"]["tenant"], "t1", "{r:?}");
    for bad in [
        "%%%".to_string(),
        b64("[]"),
        b64(&format!(
            r#"{{"custom": {{"k": "{}"}}}}"#,
            "x".repeat(1 << 20)
        )),
    ] {
        let e = invoke_cc(bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(
            e.message()
                .starts_with("InvalidParameterValueException: ClientContext"),
            "{}",
            e.message()
        );
    }

    // Zeros in an update are refused, not silently reset to defaults.
    for u in [
        pb::UpdateFunctionConfigurationRequest {
            memory_size: Some(0),
            ..Default::default()
        },
        pb::UpdateFunctionConfigurationRequest {
            timeout: Some(0),
            ..Default::default()
        },
        pb::UpdateFunctionConfigurationRequest {
            environment: Some(pb::Environment {
                variables: [("K".to_string(), "a\0b".to_string())].into(),
            }),
            ..Default::default()
        },
    ] {
        let e = client()
            .await
            .update_function_configuration(pb::UpdateFunctionConfigurationRequest {
                function_name: name.clone(),
                ..u
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    let f = configuration(&name).await;
    assert_eq!((f.memory_size, f.timeout), (128, 3));

    // RevisionId: a stale one fails its precondition; the current one works.
    let e = client()
        .await
        .update_function_configuration(pb::UpdateFunctionConfigurationRequest {
            function_name: name.clone(),
            description: Some("stale".into()),
            revision_id: "0-stale".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().starts_with("PreconditionFailedException"));
    let g = client()
        .await
        .update_function_configuration(pb::UpdateFunctionConfigurationRequest {
            function_name: name.clone(),
            description: Some("current".into()),
            revision_id: f.revision_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(g.revision_id, f.revision_id);

    // Concurrent updates of different settings: none is lost.
    let updates = [
        pb::UpdateFunctionConfigurationRequest {
            memory_size: Some(256),
            ..Default::default()
        },
        pb::UpdateFunctionConfigurationRequest {
            timeout: Some(30),
            ..Default::default()
        },
        pb::UpdateFunctionConfigurationRequest {
            description: Some("both".into()),
            ..Default::default()
        },
        pb::UpdateFunctionConfigurationRequest {
            ephemeral_storage: Some(1024),
            ..Default::default()
        },
    ];
    let tasks: Vec<_> = updates
        .into_iter()
        .map(|u| {
            let name = name.clone();
            tokio::spawn(async move {
                client()
                    .await
                    .update_function_configuration(pb::UpdateFunctionConfigurationRequest {
                        function_name: name,
                        ..u
                    })
                    .await
                    .unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let f = configuration(&name).await;
    assert_eq!(
        (
            f.memory_size,
            f.timeout,
            f.description.as_str(),
            f.ephemeral_storage
        ),
        (256, 30, "both", 1024)
    );

    // A `since` far in the past is "everything", not a panic.
    let mut logs = node_client()
        .await
        .tail_logs(pb::TailLogsRequest {
            function_name: name.clone(),
            since_seconds: u64::MAX,
            follow: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut lines = 0;
    while let Some(l) = tokio_stream::StreamExt::next(&mut logs).await {
        l.unwrap();
        lines += 1;
    }
    assert!(lines > 0);

    // The START line names the version that ran.
    let v = publish(&name).await.version;
    let r = invoke_at(&name, &v, "{}").await.unwrap();
    assert!(
        tail(&r).contains(&format!("Version: {v}\n")),
        "{}",
        tail(&r)
    );
    let r = invoke_at(&name, "", "{}").await.unwrap();
    assert!(tail(&r).contains("Version: $LATEST\n"), "{}", tail(&r));
}

/// A runtime that misuses the Runtime API: two parked `next` calls, a
/// `next` during its invocation, a response body that cannot be read. It
/// reports what the agent answered each time.
const MISUSING_BOOTSTRAP: &str = r#"#!/bin/bash
API=http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime
cd /tmp
curl -s -D h1 -o b1 -w '%{http_code}' $API/invocation/next > c1 &
curl -s -D h2 -o b2 -w '%{http_code}' $API/invocation/next > c2 &
wait
if [ "$(cat c1)" = 200 ]; then ev=1; other=2; else ev=2; other=1; fi
id=$(grep -i '^lambda-runtime-aws-request-id' h$ev | tr -d '\r' | cut -d' ' -f2)
third=$(curl -s -o b3 -w '%{http_code}' $API/invocation/next)
exec 3<>/dev/tcp/127.0.0.1/9001
printf 'POST /2018-06-01/runtime/invocation/%s/response HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n' "$id" >&3
read -r _ bad _ <&3
exec 3>&-
printf '{"second": %s, "second_body": %s, "during": %s, "during_body": %s, "bad_body": %s}' \
  "$(cat c$other)" "$(cat b$other)" "$third" "$(cat b3)" "$bad" > resp
curl -s -o /dev/null -X POST --data-binary @resp $API/invocation/$id/response
while true; do
  curl -s -D h -o ev $API/invocation/next
  id=$(grep -i '^lambda-runtime-aws-request-id' h | tr -d '\r' | cut -d' ' -f2)
  curl -s -o /dev/null -X POST -d '"again"' $API/invocation/$id/response
done
"#;

#[tokio::test]
async fn runtime_api_misuse_gets_aws_status_codes() {
    let name = unique("misuse");
    create(
        &name,
        "provided",
        "unused",
        zip_files(&[("bootstrap", MISUSING_BOOTSTRAP.as_bytes(), 0o755)]),
        30,
    )
    .await
    .unwrap();
    let r = invoke(&name, "{}").await.unwrap();
    assert!(r.function_error.is_empty(), "{r:?} {}", tail(&r));
    let v = json(&r);
    assert_eq!(v["second"], 403, "{v}");
    assert_eq!(
        v["second_body"]["errorType"], "InvalidStateTransition",
        "{v}"
    );
    assert_eq!(v["during"], 403, "{v}");
    assert_eq!(
        v["during_body"]["errorType"], "InvalidStateTransition",
        "{v}"
    );
    assert_eq!(v["bad_body"], 500, "{v}");
    // The instance is still in order: the next invocation is answered.
    assert_eq!(json(&invoke(&name, "{}").await.unwrap()), "again");
}

/// A function that reports what it may do, or spins for `spin` seconds.
const PROBE: &str = r#"
import glob, json, os, time

def attempt(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return e.errno

def handler(event, context):
    if event.get("spin"):
        end, n = time.time() + event["spin"], 0
        while time.time() < end:
            n += 1
        return {"n": n}
    status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
    devices = glob.glob("/dev/vport*") + ["/dev/vda"]
    return {
        "uid": [os.getuid(), os.geteuid()],
        "gid": [os.getgid(), os.getegid()],
        "groups": os.getgroups(),
        "nnp": status["NoNewPrivs"].strip(),
        "cap_eff": status["CapEff"].strip(),
        "write_task": attempt(lambda: open("/var/task/evil", "w")),
        "write_opt": attempt(lambda: open("/opt/evil", "w")),
        "write_tmp": attempt(lambda: open("/tmp/mine", "w").write("x")),
        "devices": {d: attempt(lambda d=d: open(d, "rb").close()) for d in devices},
        "setuid": attempt(lambda: os.setuid(0)),
        "setgid": attempt(lambda: os.setgid(0)),
    }
"#;

/// `Name:\tvalue` lines of `/proc/<pid>/status`.
fn proc_status(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// The cgroup v1 folder of `pid` for `controller`.
fn cgroup_dir(pid: u32, controller: &str) -> PathBuf {
    cgroup_dir_of(&pid.to_string(), controller)
}

/// The cgroup v1 folder of `/proc/<task>` for `controller`.
fn cgroup_dir_of(task: &str, controller: &str) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{task}/cgroup")).unwrap();
    let rel = text
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            ctrls
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })
        .unwrap_or_else(|| panic!("{task} has no {controller} cgroup: {text}"));
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(rel.trim_start_matches('/'))
}

fn read_trim(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

/// CPU time (user + system) of one thread, in clock ticks.
fn thread_ticks(pid: u32, tid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

#[tokio::test]
async fn the_vmm_and_the_function_are_confined() {
    let name = unique("confined");
    create(
        &name,
        "python3.11",
        "app.handler",
        zip_files(&[("app.py", PROBE.as_bytes(), 0o644)]),
        30,
    )
    .await
    .unwrap();

    // In the guest: Lambda's user, no way back to root, nothing of the host's.
    let r = invoke(&name, "{}").await.unwrap();
    assert!(r.function_error.is_empty(), "{r:?} {}", tail(&r));
    let v = json(&r);
    assert_eq!(v["uid"], serde_json::json!([993, 993]), "{v}");
    assert_eq!(v["gid"], serde_json::json!([990, 990]), "{v}");
    assert_eq!(v["groups"], serde_json::json!([]), "{v}");
    assert_eq!(v["nnp"], "1", "{v}");
    assert_eq!(v["cap_eff"], "0000000000000000", "{v}");
    assert_ne!(v["write_task"], "ok", "{v}");
    assert_ne!(v["write_opt"], "ok", "{v}");
    assert_eq!(v["write_tmp"], "ok", "{v}");
    let devices = v["devices"].as_object().unwrap();
    assert!(devices.len() >= 2, "the agent's port is missing: {v}");
    for (dev, result) in devices {
        assert_eq!(result, 13, "{dev} opened by the function: {v}"); // EACCES
    }
    assert_eq!(v["setuid"], 1, "{v}"); // EPERM
    assert_eq!(v["setgid"], 1, "{v}");

    // On the host: the VMM.
    let inst = instances(&name).await;
    let pid = inst[0].vmm_pid;
    assert!(pid > 0, "{inst:?}");
    let uids: Vec<u64> = proc_status(pid, "Uid")
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect();
    assert_eq!(uids.len(), 4);
    assert!(
        uids.iter().all(|&u| u != 0 && u == uids[0]),
        "uids {uids:?}"
    );
    assert_ne!(proc_status(pid, "Gid").split_whitespace().next(), Some("0"));
    assert_eq!(proc_status(pid, "Seccomp"), "2");
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(proc_status(pid, caps), "0000000000000000", "{caps}");
    }
    // Its own mount namespace, whose root holds nothing of the host's but
    // /usr and its own files.
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).unwrap();
    assert_ne!(ns(&pid.to_string()), ns("self"));
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    for absent in ["etc", "root", "home", "proc", "sys"] {
        assert!(
            !root.join(absent).exists(),
            "/{absent} is visible to the VMM"
        );
    }
    let data = node().data_dir.clone();
    assert!(data.exists());
    assert!(
        !root
            .join(data.strip_prefix("/").unwrap())
            .join("flint.db")
            .exists(),
        "the database is visible to the VMM"
    );
    assert!(root.join("usr/bin").is_dir());
    // Two VMMs never share a uid.
    let other = unique("confined-other");
    create(
        &other,
        "python3.11",
        "app.handler",
        zip_files(&[("app.py", PROBE.as_bytes(), 0o644)]),
        30,
    )
    .await
    .unwrap();
    invoke(&other, "{}").await.unwrap();
    let other_pid = instances(&other).await[0].vmm_pid;
    assert_ne!(proc_status(other_pid, "Uid"), proc_status(pid, "Uid"));

    // Its cgroup: memory = guest + overhead and a pids limit. Under TCG
    // there is no CPU quota by default (see `cpu_follows_memory_as_lambda`).
    let jail = flint_daemon::engine::jail::JailSettings::default();
    let mem = cgroup_dir(pid, "memory");
    assert_eq!(
        read_trim(&mem.join("memory.limit_in_bytes")),
        (((128 + jail.overhead_mb) as u64) << 20).to_string()
    );
    let pids = cgroup_dir(pid, "pids");
    assert_eq!(read_trim(&pids.join("pids.max")), jail.pids_max.to_string());

    // Deleting the functions ends their VMMs; their cgroups go with them.
    for f in [&name, &other] {
        client()
            .await
            .delete_function(pb::DeleteFunctionRequest {
                function_name: f.to_string(),
            })
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while (mem.exists() || pids.exists()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        !mem.exists() && !pids.exists(),
        "the VMM's cgroups are left"
    );
}

/// With Lambda's ratio (the default under KVM; set here, as TCG has none by
/// default), a busy loop in a 128 MB function gets about 128/1769 of a core,
/// measured on its VMM's vCPU threads, while init ran unthrottled.
#[tokio::test]
async fn cpu_follows_memory_as_lambda() {
    use flint_daemon::engine::jail::{JailSettings, LAMBDA_MB_PER_VCPU};
    let lambda = start_node(|c| {
        c.vmm = JailSettings {
            mb_per_vcpu: Some(LAMBDA_MB_PER_VCPU),
            // Disjoint from the shared test node's uids.
            uid_base: JailSettings::default().uid_base + 0x1_0000,
            uid_count: 1024,
            ..JailSettings::default()
        };
    });
    let mut functions = pb::functions_client::FunctionsClient::new(
        flint_daemon::client::channel(&lambda.endpoint)
            .await
            .unwrap(),
    );
    let mut nodes = pb::node_client::NodeClient::new(
        flint_daemon::client::channel(&lambda.endpoint)
            .await
            .unwrap(),
    );
    let name = unique("quota");
    functions
        .create_function(pb::CreateFunctionRequest {
            function_name: name.clone(),
            runtime: "python3.11".into(),
            handler: "app.handler".into(),
            zip_file: zip_files(&[("app.py", PROBE.as_bytes(), 0o644)]),
            timeout: 30,
            ..Default::default()
        })
        .await
        .unwrap();
    let invoke = |payload: &'static str| {
        let mut functions = functions.clone();
        let name = name.clone();
        async move {
            functions
                .invoke(pb::InvokeRequest {
                    function_name: name,
                    payload: payload.as_bytes().to_vec(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let r = invoke("{}").await;
    assert!(r.function_error.is_empty(), "{r:?}");
    let pid = nodes
        .list_instances(pb::ListInstancesRequest {
            function_name: name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .instances[0]
        .vmm_pid;
    // The vCPU threads (named by QEMU) are in the quota's cgroup; the rest
    // of the VMM is not throttled.
    let vcpus = flint_daemon::engine::jail::vcpu_threads(pid);
    assert!(!vcpus.is_empty());
    let vcpu = cgroup_dir_of(&format!("{pid}/task/{}", vcpus[0]), "cpu");
    assert!(vcpu.ends_with("vcpu"), "{}", vcpu.display());
    assert_ne!(cgroup_dir(pid, "cpu"), vcpu);
    assert_eq!(read_trim(&vcpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(read_trim(&vcpu.join("cpu.cfs_quota_us")), "7235");
    let vcpu_tids: Vec<u32> = read_trim(&vcpu.join("tasks"))
        .lines()
        .map(|t| t.parse().unwrap())
        .collect();
    assert!(!vcpu_tids.is_empty(), "no vCPU thread under the quota");

    let spinning = tokio::spawn(invoke(r#"{"spin": 6}"#));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let ticks = |tids: &[u32]| tids.iter().map(|&t| thread_ticks(pid, t)).sum::<u64>();
    let t0 = std::time::Instant::now();
    let c0 = ticks(&vcpu_tids);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let c1 = ticks(&vcpu_tids);
    let elapsed = t0.elapsed().as_secs_f64();
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let share = (c1 - c0) as f64 / hz / elapsed;
    let r = spinning.await.unwrap();
    assert!(r.function_error.is_empty(), "{r:?}");
    let expected = 128.0 / 1769.0;
    eprintln!("busy loop: {share:.4} of a core (expected {expected:.4})");
    assert!(
        share > expected * 0.5 && share < expected * 1.5,
        "the busy loop got {share:.3} of a core, expected about {expected:.3}"
    );
}

/// Runs `tests/grpc_client.py` against `endpoint` with the given client
/// certificate and key.
async fn grpcio(endpoint: &str, function: &str, cert: &Path, key: &Path) -> std::process::Output {
    let python = python_with_grpcio();
    let tls = &node().tls;
    let mut cmd = std::process::Command::new(python);
    cmd.arg(fixture("..").join("grpc_client.py"))
        .arg(endpoint)
        .arg(function)
        .env("FLINT_TLS_CA", &tls.ca)
        .env("FLINT_TLS_CERT", cert)
        .env("FLINT_TLS_KEY", key);
    tokio::task::spawn_blocking(move || cmd.output().expect("run the grpcio client"))
        .await
        .unwrap()
}

/// Whether a health check over `channel` is answered.
async fn answered(
    channel: Result<tonic::transport::Channel, flint_daemon::client::ClientError>,
) -> bool {
    let Ok(ch) = channel else {
        return false;
    };
    tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok()
}

#[tokio::test]
async fn tcp_is_served_only_with_mutual_tls() {
    use flint_daemon::client::{channel_with, ClientTls};
    let n = node();
    let tls = &n.tls;
    let with = |cert: Option<&PathBuf>, key: Option<&PathBuf>| ClientTls {
        ca: tls.ca.clone(),
        cert: cert.cloned(),
        key: key.cloned(),
        domain: None,
    };
    // The right certificate: served.
    let good = with(Some(&tls.client_cert), Some(&tls.client_key));
    assert!(answered(channel_with(&n.tcp, Some(&good)).await).await);
    // No client certificate, or one from another CA: refused.
    let none = with(None, None);
    assert!(!answered(channel_with(&n.tcp, Some(&none)).await).await);
    let stranger = with(Some(&tls.stranger_cert), Some(&tls.stranger_key));
    assert!(!answered(channel_with(&n.tcp, Some(&stranger)).await).await);
    // Plaintext HTTP/2: refused.
    let plain = tonic::transport::Endpoint::try_from(format!("http://{}", n.tcp))
        .unwrap()
        .connect()
        .await
        .map_err(|e| flint_daemon::client::ClientError::Connect(n.tcp.clone(), e));
    assert!(!answered(plain).await);
    // Our client does not even try TCP without TLS.
    assert!(matches!(
        channel_with(&n.tcp, None).await,
        Err(flint_daemon::client::ClientError::NoTls)
    ));

    // Python's grpcio with the right certificate: health, reflection, Invoke.
    let name = unique("mtls");
    create(&name, "python3.11", "app.handler", zip_fixture("python"), 0)
        .await
        .unwrap();
    let out = grpcio(&n.tcp, &name, &tls.client_cert, &tls.client_key).await;
    assert!(
        out.status.success(),
        "grpcio over mutual TLS failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["health"], "SERVING");
    assert_eq!(v["status_code"], 200);
    assert_eq!(v["payload"]["event"]["from"], "grpcio");
    // With a certificate from another CA: refused.
    let out = grpcio(&n.tcp, &name, &tls.stranger_cert, &tls.stranger_key).await;
    assert!(
        !out.status.success(),
        "grpcio with a stranger's certificate was served"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("UNAVAILABLE"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
