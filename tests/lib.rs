//! Shared harness of the end-to-end tests: one real flintd (real QEMU
//! microVMs, a real SQLite database) serving all tests of a run, plus helpers
//! to build deployment packages.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use flint_daemon::config::{Config, Listen};
use flint_proto::node::v1 as pb;
use flint_proto::node::v1::functions_client::FunctionsClient;
use tonic::transport::Channel;

pub struct TestNode {
    pub endpoint: String,
    /// `127.0.0.1:PORT`, served with mutual TLS ([`TestTls`]).
    pub tcp: String,
    pub tls: TestTls,
    pub data_dir: PathBuf,
    _dir: tempfile::TempDir,
}

static NODE: OnceLock<TestNode> = OnceLock::new();

/// The artefacts that `scripts/setup` builds. Tests that need VMs fail (never
/// skip) without them.
pub fn artifacts_dir() -> PathBuf {
    let dir = std::env::var_os("FLINT_ARTIFACTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/flint/current"));
    for f in ["vmlinux", "provided.erofs", "python3.11.erofs"] {
        assert!(
            dir.join(f).exists(),
            "{} is missing: run scripts/setup first",
            dir.join(f).display()
        );
    }
    dir
}

/// Starts flintd once per test binary, in its own runtime thread. With
/// `FLINT_TEST_LOG=FILE`, flintd's log goes to FILE (for diagnosing a failure).
///
/// A static is never dropped, so its temporary directory (hundreds of MB of
/// snapshot memory) is removed when the test binary exits.
pub fn node() -> &'static TestNode {
    NODE.get_or_init(|| {
        let node = start_node(|_| {});
        // SAFETY: registers a plain function that takes nothing and reads
        // only the static set just above; atexit calls it once at exit.
        unsafe {
            libc::atexit(remove_shared_node_dir);
        }
        node
    })
}

extern "C" fn remove_shared_node_dir() {
    if let Some(dir) = NODE.get().and_then(|n| n.data_dir.parent()) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Starts another flintd in this process, with the defaults of [`node`]
/// changed by `configure`. Two nodes on one host need disjoint VMM uid
/// ranges (`vmm.uid_base`).
pub fn start_node(configure: impl FnOnce(&mut Config)) -> TestNode {
    {
        static LOG: std::sync::Once = std::sync::Once::new();
        LOG.call_once(|| {
            if let Some(path) = std::env::var_os("FLINT_TEST_LOG") {
                if let Ok(file) = std::fs::File::create(path) {
                    let _ = tracing_subscriber::fmt()
                        .with_writer(std::sync::Mutex::new(file))
                        .with_ansi(false)
                        .with_env_filter(tracing_subscriber::EnvFilter::new(
                            "info,flint_daemon=debug",
                        ))
                        .try_init();
                }
            }
        });
        let dir = tempfile::Builder::new()
            .prefix("flint-e2e-")
            .tempdir()
            .expect("temp dir");
        let data_dir = dir.path().join("data");
        let sock = dir.path().join("flintd.sock");
        let tls = TestTls::generate(dir.path());
        let tcp = free_port();
        let mut config = Config {
            data_dir: data_dir.clone(),
            listen: vec![Listen::Unix(sock.clone()), tcp.parse().unwrap()],
            artifacts_dir: artifacts_dir(),
            tls: Some(flint_daemon::config::TlsFiles {
                ca: tls.ca.clone(),
                cert: tls.server_cert.clone(),
                key: tls.server_key.clone(),
            }),
            ..Config::default()
        };
        configure(&mut config);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async {
                if let Err(e) = flint_daemon::server::run(config, std::future::pending()).await {
                    panic!("flintd failed: {e}");
                }
            });
        });
        let endpoint = format!("unix:{}", sock.display());
        for _ in 0..200 {
            if sock.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        assert!(sock.exists(), "flintd did not start");
        TestNode {
            endpoint,
            tcp,
            tls,
            data_dir,
            _dir: dir,
        }
    }
}

/// `127.0.0.1:PORT` with a port free a moment ago.
fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// PEM files for mutual TLS: a CA, flintd's certificate from it, a client
/// certificate from it, and a client certificate from another CA.
pub struct TestTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
}

impl TestTls {
    pub fn generate(dir: &std::path::Path) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair,
        };
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, name);
            let cert = p.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(p, key))
        };
        let leaf = |issuer: &Issuer<KeyPair>, names: Vec<String>, usage| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(names).unwrap();
            p.extended_key_usages = vec![usage];
            let cert = p.signed_by(&key, issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (ca_pem, issuer) = ca("flint test CA");
        let (_, other) = ca("another CA");
        let server = leaf(
            &issuer,
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = leaf(
            &issuer,
            vec!["controller".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let stranger = leaf(
            &other,
            vec!["controller".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let tls = dir.join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        let write = |name: &str, pem: &str| {
            let p = tls.join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        TestTls {
            ca: write("ca.pem", &ca_pem),
            server_cert: write("flintd.pem", &server.0),
            server_key: write("flintd.key", &server.1),
            client_cert: write("client.pem", &client.0),
            client_key: write("client.key", &client.1),
            stranger_cert: write("stranger.pem", &stranger.0),
            stranger_key: write("stranger.key", &stranger.1),
        }
    }
}

/// The instances of a function, as `ListInstances` gives them.
pub async fn instances(name: &str) -> Vec<pb::InstanceInfo> {
    node_client()
        .await
        .list_instances(pb::ListInstancesRequest {
            function_name: name.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .instances
}

/// A process's command line, its arguments joined by spaces ("" once it is
/// gone).
pub fn cmdline(pid: i32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .replace('\0', " ")
}

/// The QEMU processes whose command line contains `needle`.
pub fn vmm_pids(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let c = cmdline(pid);
            c.contains("qemu-system") && c.contains(needle)
        })
        .collect()
}

/// The VMM process of an instance (its files live in `run/<id>/`).
pub fn vmm_pid(id: &str) -> i32 {
    match vmm_pids(&format!("/run/{id}/")).first() {
        Some(&pid) => pid,
        None => panic!("no VMM for instance {id}"),
    }
}

pub async fn node_client() -> flint_proto::node::v1::node_client::NodeClient<Channel> {
    flint_proto::node::v1::node_client::NodeClient::new(
        flint_daemon::client::channel(&node().endpoint)
            .await
            .expect("connect to flintd"),
    )
}

/// Publishes `$LATEST` as a version (without a description).
pub async fn publish(name: &str) -> pb::FunctionConfiguration {
    client()
        .await
        .publish_version(pb::PublishVersionRequest {
            function_name: name.into(),
            ..Default::default()
        })
        .await
        .expect("publish version")
        .into_inner()
}

pub async fn client() -> FunctionsClient<Channel> {
    flint_daemon::client::functions(&node().endpoint)
        .await
        .expect("connect to flintd")
}

/// A ZIP of `(name, contents, mode)` entries.
pub fn zip_files(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data, mode) in files {
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
        w.start_file(*name, opts).expect("zip entry");
        w.write_all(data).expect("zip write");
    }
    w.finish().expect("zip finish").into_inner()
}

/// A ZIP of every file in a fixture directory, keeping executable bits.
pub fn zip_fixture(name: &str) -> Vec<u8> {
    use std::os::unix::fs::PermissionsExt;
    let dir = fixture(name);
    let mut entries: Vec<(String, Vec<u8>, u32)> = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("fixture dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(&dir).unwrap().to_string_lossy().into_owned();
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            entries.push((rel, std::fs::read(&p).unwrap(), mode));
        }
    }
    entries.sort();
    let refs: Vec<(&str, &[u8], u32)> = entries
        .iter()
        .map(|(n, d, m)| (n.as_str(), d.as_slice(), *m))
        .collect();
    zip_files(&refs)
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A unique function name for one test.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id() % 100_000)
}

pub async fn create(
    name: &str,
    runtime: &str,
    handler: &str,
    zip: Vec<u8>,
    timeout: u32,
) -> Result<pb::FunctionConfiguration, tonic::Status> {
    client()
        .await
        .create_function(pb::CreateFunctionRequest {
            function_name: name.into(),
            runtime: runtime.into(),
            handler: handler.into(),
            zip_file: zip,
            timeout,
            environment: [("GREETING".to_string(), "hello".to_string())].into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// Invokes `$LATEST`, asking for the log tail.
pub async fn invoke(name: &str, payload: &str) -> Result<pb::InvokeResponse, tonic::Status> {
    invoke_at(name, "", payload).await
}

/// Invokes a version or alias (`""`: `$LATEST`), asking for the log tail.
pub async fn invoke_at(
    name: &str,
    qualifier: &str,
    payload: &str,
) -> Result<pb::InvokeResponse, tonic::Status> {
    client()
        .await
        .invoke(pb::InvokeRequest {
            function_name: name.into(),
            qualifier: qualifier.into(),
            payload: payload.as_bytes().to_vec(),
            log_type: pb::LogType::Tail as i32,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// The `REPORT` line of an invocation's log tail.
pub fn report(r: &pb::InvokeResponse) -> String {
    let t = tail(r);
    t.lines()
        .find(|l| l.starts_with("REPORT "))
        .unwrap_or_else(|| panic!("no REPORT in {t}"))
        .to_string()
}

/// The decoded `LogResult`.
pub fn tail(r: &pb::InvokeResponse) -> String {
    use base64::Engine as _;
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(&r.log_result)
            .expect("LogResult is base64"),
    )
    .expect("LogResult is UTF-8")
}

pub fn json(r: &pb::InvokeResponse) -> serde_json::Value {
    serde_json::from_slice(&r.payload).unwrap_or_else(|_| {
        panic!(
            "payload is not JSON: {}",
            String::from_utf8_lossy(&r.payload)
        )
    })
}

/// The path of a workspace binary (built by `cargo build --bins`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run cargo build --bins",
        p.display()
    );
    p
}

/// The `bootstrap` binary of the `rust-fn` fixture, built with AWS's
/// `lambda_runtime`, dynamically or statically linked. Built once and cached
/// outside the repository.
/// `$FLINT_CACHE` (default `/var/cache/flint`): the slow artefacts and the
/// test fixtures built or downloaded once.
fn flint_cache() -> PathBuf {
    std::env::var_os("FLINT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/flint"))
}

/// Builds the Cargo fixture `tests/fixtures/<name>` (not in the workspace)
/// in its own cached target folder; returns the path of its binary `bin`.
fn build_fixture(name: &str, bin: &str, static_link: bool) -> PathBuf {
    let target_dir = flint_cache().join("fixtures").join(name);
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(fixture(name))
        .args(["build", "--release", "--quiet"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    let path = if static_link {
        cmd.args(["--target", "x86_64-unknown-linux-gnu"])
            .env("RUSTFLAGS", "-C target-feature=+crt-static");
        target_dir
            .join("x86_64-unknown-linux-gnu/release")
            .join(bin)
    } else {
        target_dir.join("release").join(bin)
    };
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("run cargo for the {name} fixture: {e}"));
    assert!(status.success(), "building the {name} fixture failed");
    path
}

/// The hostile guest agent (`tests/fixtures/hostile-agent`), statically
/// linked: it is PID 1 of an image with nothing else in it.
pub fn hostile_agent() -> PathBuf {
    build_fixture("hostile-agent", "hostile-agent", true)
}

pub fn rust_bootstrap(static_link: bool) -> Vec<u8> {
    std::fs::read(build_fixture("rust-fn", "bootstrap", static_link)).expect("rust-fn bootstrap")
}

/// A layer ZIP of a real third-party wheel, numpy 1.26.4 for CPython 3.11
/// (`python/numpy/...`, as Lambda layers lay Python packages out). The
/// wheel is downloaded once into `$FLINT_CACHE/fixtures/wheels`.
pub fn numpy_layer_zip() -> Vec<u8> {
    use std::io::Read;
    let dir = flint_cache().join("fixtures").join("wheels");
    let wheel = dir.join("numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl");
    if !wheel.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new(python_with_grpcio())
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args([
                "--only-binary=:all:",
                "--no-deps",
                "--python-version",
                "3.11",
            ])
            .args([
                "--platform",
                "manylinux2014_x86_64",
                "--implementation",
                "cp",
            ])
            .arg("numpy==1.26.4")
            .arg("-d")
            .arg(&dir)
            .status()
            .expect("run pip download");
        assert!(
            status.success() && wheel.exists(),
            "downloading the numpy wheel failed"
        );
    }
    let mut src = zip::ZipArchive::new(std::fs::File::open(&wheel).unwrap()).unwrap();
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for i in 0..src.len() {
        let mut e = src.by_index(i).unwrap();
        if e.is_dir() {
            continue;
        }
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o644);
        w.start_file(format!("python/{}", e.name()), opts).unwrap();
        w.write_all(&data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// The Python interpreter of the test tools environment (grpcio and
/// friends), which `scripts/test` creates under `$FLINT_CACHE/pyenv`.
pub fn python_with_grpcio() -> PathBuf {
    let py = flint_cache().join("pyenv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: scripts/test creates it (python3 -m venv + pip install grpcio grpcio-tools grpcio-health-checking grpcio-reflection)",
        py.display()
    );
    py
}

/// Runs the flintctl binary against `endpoint`: its stdout, or its stderr
/// when it fails.
pub fn flintctl(endpoint: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(bin("flintctl"))
        .env("FLINT_ENDPOINT", endpoint)
        .args(args)
        .output()
        .expect("run flintctl");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A redis-server (Debian's) of a test, on a free loopback port, with its
/// data (append-only file) in `dir` so that a restart finds its queues.
pub struct Redis {
    child: Option<std::process::Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Redis {
    pub fn start(dir: &std::path::Path) -> Self {
        let port = free_port().rsplit(':').next().unwrap().parse().unwrap();
        let mut r = Redis {
            child: None,
            port,
            dir: dir.to_path_buf(),
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts it (again, after [`Redis::stop`]) and waits until it answers.
    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server (scripts/setup installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills it, as a broker that goes away would.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A flintd process of its own (for tests that kill it), with the
/// region and account the tests use, the async clock shrunk 100 times
/// (an event's maximum age of 6 hours is 216 s: longer than a burst of cold
/// starts takes on a loaded 2-core machine; at 1000 times it was 21.6 s,
/// and events were dropped as too old before their instance had started),
/// and VMM uids `uid_offset` above the default.
pub struct Flintd {
    pub child: std::process::Child,
    pub endpoint: String,
}

impl Drop for Flintd {
    /// Stops it as systemd would (SIGTERM, then SIGKILL after 20 s), so
    /// that it removes what it made on the host (its network table).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on the pid of a child this test started and
            // has not reaped.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn_flintd(dir: &Path, broker: &str, uid_offset: u32) -> Flintd {
    spawn_flintd_with(dir, broker, uid_offset, &[], "")
}

/// [`spawn_flintd`], listening also on `listen` and with `extra` (TOML
/// sections) at the end of its configuration.
pub fn spawn_flintd_with(
    dir: &Path,
    broker: &str,
    uid_offset: u32,
    listen: &[String],
    extra: &str,
) -> Flintd {
    let sock = dir.join("flintd.sock");
    let config = dir.join("flintd.toml");
    let mut endpoints = vec![format!("unix:{}", sock.display())];
    endpoints.extend(listen.iter().cloned());
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = {:?}\nartifacts_dir = {:?}\nregion = \"us-east-1\"\naccount_id = \"000000000000\"\n\
             [vmm]\nuid_base = {}\n[testing]\nasync_time_scale = 0.01\n[broker]\nurl = {broker:?}\n{extra}",
            dir.join("data"),
            endpoints,
            artifacts_dir(),
            flint_daemon::engine::jail::JailSettings::default().uid_base + uid_offset,
        ),
    )
    .unwrap();
    let _ = std::fs::remove_file(&sock);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("flintd.log"))
        .unwrap();
    let child = std::process::Command::new(bin("flintd"))
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start flintd");
    let deadline = Instant::now() + Duration::from_secs(30);
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

/// Creates a python3.11 function whose `app.py` is `code` (handler
/// `app.handler`, timeout 30 s).
pub async fn create_python(c: &mut FunctionsClient<Channel>, name: &str, code: &[u8]) {
    c.create_function(pb::CreateFunctionRequest {
        function_name: name.into(),
        runtime: "python3.11".into(),
        handler: "app.handler".into(),
        zip_file: zip_files(&[("app.py", code, 0o644)]),
        timeout: 30,
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Every log line of `function` on the node at `endpoint`, in order.
pub async fn log_messages(endpoint: &str, function: &str) -> Vec<String> {
    use tokio_stream::StreamExt;
    let channel = flint_daemon::client::channel(endpoint).await.unwrap();
    let mut stream = pb::node_client::NodeClient::new(channel)
        .tail_logs(pb::TailLogsRequest {
            function_name: function.into(),
            since_seconds: 0,
            follow: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(l) = stream.next().await {
        out.push(l.unwrap().message);
    }
    out
}
