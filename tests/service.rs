//! flintd as a service: the real binary, its TOML configuration, systemd
//! readiness, SIGTERM draining in-flight invocations, cleanup of an earlier
//! run's leftovers, and everything back after a restart.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flint_e2e::*;
use flint_proto::node::v1 as pb;
use flint_proto::node::v1::functions_client::FunctionsClient;
use flint_proto::node::v1::node_client::NodeClient;
use tonic::transport::Channel;

struct Flintd {
    child: Child,
    endpoint: String,
}

fn start(dir: &Path, notify: Option<&Path>) -> Flintd {
    start_under(dir, notify, &[], &bin("flintd"))
}

/// Starts the flintd binary `flintd` through `wrapper` (a command and its
/// arguments that end in `--`, for example setpriv's).
fn start_under(dir: &Path, notify: Option<&Path>, wrapper: &[String], flintd: &Path) -> Flintd {
    let sock = dir.join("flintd.sock");
    let config = dir.join("flintd.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = [{:?}]\nartifacts_dir = {:?}\nshutdown_grace_s = 20\n",
            dir.join("data"),
            format!("unix:{}", sock.display()),
            artifacts_dir()
        ),
    )
    .unwrap();
    let _ = std::fs::remove_file(&sock);
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(flintd);
            c
        }
        None => Command::new(flintd),
    };
    cmd.arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("flintd.log"))
                .unwrap(),
        );
    if let Some(n) = notify {
        cmd.env("NOTIFY_SOCKET", n);
    }
    let child = cmd.spawn().expect("start flintd");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "flintd did not start: {}",
            std::fs::read_to_string(dir.join("flintd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Flintd {
        child,
        endpoint: format!("unix:{}", sock.display()),
    }
}

impl Flintd {
    async fn functions(&self) -> FunctionsClient<Channel> {
        flint_daemon::client::functions(&self.endpoint)
            .await
            .unwrap()
    }

    async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(flint_daemon::client::channel(&self.endpoint).await.unwrap())
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "flintd did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Flintd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// QEMU processes whose files live under `dir`.
fn qemus_under(dir: &Path) -> usize {
    vmm_pids(&dir.display().to_string()).len()
}

#[tokio::test]
async fn sigterm_drains_in_flight_work_and_a_restart_finds_everything_back() {
    let dir = tempfile::Builder::new()
        .prefix("flint-svc-")
        .tempdir()
        .unwrap();
    // A leftover of an "earlier run" that the start must clean up.
    std::fs::create_dir_all(dir.path().join("data/run/stale-instance")).unwrap();
    std::fs::write(
        dir.path().join("data/run/stale-instance/console.log"),
        "old",
    )
    .unwrap();
    // And a VMM an earlier flintd left running (as if it had escaped its
    // parent's death): a paused QEMU whose files live under the data dir.
    let mut stale = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm",
            "-display",
            "none",
            "-nodefaults",
            "-S",
            "-serial",
        ])
        .arg(format!(
            "file:{}",
            dir.path()
                .join("data/run/stale-instance/console.log")
                .display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(qemus_under(dir.path()), 1);

    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut d = start(dir.path(), Some(&notify_path));
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).expect("readiness notification");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(!dir.path().join("data/run/stale-instance").exists());
    let gone = stale.wait().unwrap();
    assert!(!gone.success(), "the leftover VMM was killed");
    assert_eq!(qemus_under(dir.path()), 0);

    let name = "svc-slow";
    d.functions()
        .await
        .create_function(pb::CreateFunctionRequest {
            function_name: name.into(),
            runtime: "python3.11".into(),
            handler: "app.slow".into(),
            zip_file: zip_fixture("python"),
            timeout: 20,
            ..Default::default()
        })
        .await
        .unwrap();
    d.functions()
        .await
        .publish_version(pb::PublishVersionRequest {
            function_name: name.into(),
            description: String::new(),
        })
        .await
        .unwrap();
    d.functions()
        .await
        .create_alias(pb::CreateAliasRequest {
            function_name: name.into(),
            name: "prod".into(),
            function_version: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let layer = d
        .functions()
        .await
        .publish_layer_version(pb::PublishLayerVersionRequest {
            layer_name: "svc-layer".into(),
            zip_file: zip_files(&[("python/x.py", b"X = 1\n", 0o644)]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    // Version 1's function snapshot is built at publish (`Pending`); once
    // it is `Active` the only VM is the invocation's below.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let v = d
            .functions()
            .await
            .get_function(pb::GetFunctionRequest {
                function_name: name.into(),
                qualifier: "1".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .configuration
            .unwrap();
        if v.state == "Active" {
            break;
        }
        assert!(v.state == "Pending" && Instant::now() < deadline, "{v:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // An invocation that is still running when SIGTERM comes.
    let mut fc = d.functions().await;
    let running = tokio::spawn(async move {
        fc.invoke(pb::InvokeRequest {
            function_name: name.into(),
            payload: br#"{"seconds": 3}"#.to_vec(),
            ..Default::default()
        })
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let busy = d
            .node()
            .await
            .list_instances(pb::ListInstancesRequest {
                function_name: name.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .instances
            .iter()
            .any(|i| i.state == "Busy");
        if busy {
            break;
        }
        assert!(Instant::now() < deadline, "the invocation did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(qemus_under(dir.path()), 1);
    let status = tokio::task::spawn_blocking(move || {
        let s = d.terminate();
        (s, d)
    });
    let r = running
        .await
        .unwrap()
        .expect("the in-flight invocation completes");
    let r = r.into_inner();
    assert_eq!(
        r.function_error,
        "",
        "{}",
        String::from_utf8_lossy(&r.payload)
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap(),
        "too late"
    );
    let (status, d) = status.await.unwrap();
    assert!(status.success(), "{status:?}");
    drop(d);
    let n = notify.recv(&mut buf).expect("stopping notification");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(qemus_under(dir.path()), 0, "every VM is stopped");

    // Restart on the same data: everything is back and works.
    let d = start(dir.path(), None);
    let fns = d
        .functions()
        .await
        .list_functions(pb::ListFunctionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fns.functions.len(), 1);
    let versions = d
        .functions()
        .await
        .list_versions_by_function(pb::ListVersionsByFunctionRequest {
            function_name: name.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert_eq!(versions.len(), 2);
    let alias = d
        .functions()
        .await
        .get_alias(pb::GetAliasRequest {
            function_name: name.into(),
            name: "prod".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alias.function_version, "1");
    let l = d
        .functions()
        .await
        .get_layer_version(pb::GetLayerVersionRequest {
            layer_name: "svc-layer".into(),
            version: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.layer_version_arn, layer.layer_version_arn);
    let r = d
        .functions()
        .await
        .invoke(pb::InvokeRequest {
            function_name: name.into(),
            qualifier: "prod".into(),
            payload: br#"{"seconds": 0}"#.to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.executed_version, "1");
    assert_eq!(r.function_error, "");
}

/// Packages are counted against the node's code storage, and a call that
/// fails leaves nothing behind. No VM is needed: the node is used directly.
#[tokio::test]
async fn code_storage_limit_and_failed_calls_leave_nothing_behind() {
    use flint_daemon::config::Config;
    use flint_daemon::functions::FunctionSpec;
    use flint_daemon::node::{Node, NodeError};

    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().join("data"),
        artifacts_dir: artifacts_dir(),
        code_storage_limit: 4096,
        ..Config::default()
    };
    let node = Node::open(config).unwrap();
    let spec = |name: &str, layers: Vec<String>| FunctionSpec {
        name: name.into(),
        runtime: "python3.11".into(),
        handler: "app.handler".into(),
        layers,
        ..Default::default()
    };
    let small = zip_files(&[("app.py", b"def handler(e, c):\n    return 1\n", 0o644)]);
    node.create_function(spec("small", vec![]), small)
        .await
        .unwrap();
    let code_files = || {
        std::fs::read_dir(dir.path().join("data/code"))
            .unwrap()
            .count()
    };
    let before = code_files();

    // Over the limit: refused, with Lambda's exception, nothing stored.
    let big: Vec<u8> = (0..8000u32).flat_map(|i| i.to_le_bytes()).collect();
    let zip = zip_files(&[
        ("app.py", b"def handler(e, c):\n    return 1\n", 0o644),
        ("data.bin", &big, 0o644),
    ]);
    let e = node
        .create_function(spec("big", vec![]), zip)
        .await
        .unwrap_err();
    assert!(matches!(e, NodeError::CodeStorageExceeded { .. }), "{e}");
    let status: tonic::Status = e.into();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status.message().starts_with("CodeStorageExceededException"),
        "{}",
        status.message()
    );
    assert_eq!(code_files(), before);

    // A layer that does not exist: refused before anything is stored.
    let other = zip_files(&[("app.py", b"def handler(e, c):\n    return 2\n", 0o644)]);
    let e = node
        .create_function(
            spec(
                "layered",
                vec!["arn:aws:lambda:us-east-1:000000000000:layer:nope:1".into()],
            ),
            other.clone(),
        )
        .await
        .unwrap_err();
    let status: tonic::Status = e.into();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(
        status.message().starts_with("ResourceNotFoundException"),
        "{}",
        status.message()
    );
    assert_eq!(code_files(), before);
    assert!(node.get_function("layered", "").is_err());

    // A name that is taken: conflict, and the new package is not kept.
    let e = node
        .create_function(spec("small", vec![]), other)
        .await
        .unwrap_err();
    let status: tonic::Status = e.into();
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    assert!(
        status.message().starts_with("ResourceConflictException"),
        "{}",
        status.message()
    );
    assert_eq!(code_files(), before);

    // Deleting the function removes its package.
    node.delete_function("small").await.unwrap();
    assert_eq!(code_files(), 0);
}

/// The value of `key=` in `scripts/flintd.service`.
fn unit_option(key: &str) -> String {
    let unit = std::fs::read_to_string(fixture("../../scripts/flintd.service")).unwrap();
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} is not in flintd.service"))
        .trim()
        .to_string()
}

/// flintd under the unit's hardening, applied as systemd would: in mount
/// and UTS namespaces of its own, `ProtectSystem=strict` (the file system
/// read-only but for `ReadWritePaths`), `ProtectHome`, `PrivateTmp`,
/// `ProtectKernelModules` (no modules folder), `ProtectKernelLogs` (no
/// kmsg), `ProtectHostname`; then, through setpriv, `CapabilityBoundingSet`
/// and `NoNewPrivileges`. Its VMMs start
/// confined, a function is created and invoked, an instance's memory is
/// measured, and SIGTERM stops it all.
#[tokio::test]
async fn flintd_runs_under_the_units_hardening() {
    let caps: Vec<String> = unit_option("CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectHostname", "yes"),
    ] {
        assert_eq!(unit_option(key), value, "{key}");
    }
    let writable = unit_option("ReadWritePaths");
    assert!(writable.split_whitespace().any(|p| p == "/var/lib/flint"));
    // The node's folder is where the unit lets flintd write (not /tmp,
    // which PrivateTmp replaces).
    std::fs::create_dir_all("/var/lib/flint").unwrap();
    let dir = tempfile::Builder::new()
        .prefix("svc-hardened-")
        .tempdir_in("/var/lib/flint")
        .unwrap();
    let script = format!(
        "set -e\n\
         mount --make-rprivate /\n\
         mount --rbind / / && mount -o remount,bind,ro /\n\
         for p in {writable}; do [ -e \"$p\" ] && mount --rbind \"$p\" \"$p\" && mount -o remount,bind,rw \"$p\"; done\n\
         for p in /home /root /run/user; do [ -d \"$p\" ] && mount -t tmpfs -o ro,mode=0755 tmpfs \"$p\"; done\n\
         mount -t tmpfs -o mode=1777 tmpfs /tmp && mount -t tmpfs -o mode=1777 tmpfs /var/tmp\n\
         for p in /usr/lib/modules /lib/modules; do [ -d \"$p\" ] && mount -t tmpfs -o ro tmpfs \"$p\"; done\n\
         for p in /proc/kmsg /dev/kmsg; do [ -e \"$p\" ] && mount --bind /dev/null \"$p\"; done\n\
         hostname flint-hardened\n\
         exec \"$@\"\n"
    );
    let wrapper = vec![
        "unshare".to_string(),
        "--mount".into(),
        // ProtectHostname: a UTS namespace of its own.
        "--uts".into(),
        "--".into(),
        "sh".into(),
        "-c".into(),
        script,
        "hardened".into(),
        "setpriv".into(),
        "--no-new-privs".into(),
        format!("--bounding-set=-all,{}", caps.join(",")),
        "--inh-caps=-all".into(),
        "--".into(),
    ];
    // Installed where the unit lets it be seen: the checkout may be under
    // /tmp or /home, which PrivateTmp and ProtectHome hide.
    let installed = dir.path().join("flintd");
    std::fs::copy(bin("flintd"), &installed).unwrap();
    let mut flintd = start_under(dir.path(), None, &wrapper, &installed);
    let mut functions = flintd.functions().await;
    let name = "hardened";
    functions
        .create_function(pb::CreateFunctionRequest {
            function_name: name.into(),
            runtime: "python3.11".into(),
            handler: "app.handler".into(),
            zip_file: zip_fixture("python"),
            ..Default::default()
        })
        .await
        .unwrap();
    let r = functions
        .invoke(pb::InvokeRequest {
            function_name: name.into(),
            payload: b"{}".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.function_error,
        "",
        "{}",
        String::from_utf8_lossy(&r.payload)
    );
    let inst = flintd
        .node()
        .await
        .list_instances(pb::ListInstancesRequest {
            function_name: name.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .instances;
    assert_eq!(inst.len(), 1);
    let vmm = std::fs::read_to_string(format!("/proc/{}/status", inst[0].vmm_pid)).unwrap();
    assert!(vmm.contains("Seccomp:\t2"), "{vmm}");
    // flintd itself: no_new_privs, and only the unit's capabilities.
    let flintd_pid = vmm_parent(inst[0].vmm_pid);
    let own = std::fs::read_to_string(format!("/proc/{flintd_pid}/status")).unwrap();
    assert!(own.contains("NoNewPrivs:\t1"), "{own}");
    assert!(!own.contains("CapBnd:\t000001ffffffffff"), "{own}");
    // It measured the VMM's memory (PSS needs CAP_SYS_PTRACE across uids).
    let info = flintd
        .node()
        .await
        .get_node_info(pb::GetNodeInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(info.memory_charged_mb > 0, "{info:?}");
    assert!(info.vmm_confinement.contains("seccomp"), "{info:?}");
    assert!(flintd.terminate().success());
    assert_eq!(qemus_under(dir.path()), 0);
}

/// The parent process of `pid`.
fn vmm_parent(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}
