//! flint-bench: how fast a Flint node starts and serves instances, and how
//! densely it packs idle ones. Runs flintd in-process with real microVMs and
//! prints a table and JSON naming the accelerator.
//!
//! `--suite start` (the default), each Invoke-to-response through gRPC: a
//! cold boot (snapshots off), a restore of the runtime snapshot (`$LATEST`,
//! whose init then runs), a restore of a function snapshot (a published
//! version), and a warm instance. Then the host memory of 1, 10 and 50 idle
//! clones of one function snapshot.
//!
//! `--suite load`: concurrent clients on a warm function, a burst from zero
//! instances, and how many frozen instances fit a memory budget (see
//! `load.rs`).
//!
//! `--suite bursts`: 16 and 64 invocations at once against a function with
//! no instance, with and without the start scheduler (see `bursts.rs`).
//!
//! `--suite async`: `Event` invocations acknowledged per second and the
//! 202's latency, against one synced write; the time to drain the queued
//! events into a function with reserved concurrency 4 (see `events.rs`).
//!
//! `--suite sources`: messages per second from a queue on Redis through an
//! event source mapping, and write-to-handler-start latency (see
//! `sources.rs`).
//!
//! `--suite network`: function-snapshot restores with a network and
//! without, preparing namespaces, and MB/s from a host server into a
//! function (see `network.rs`).

mod bursts;
mod events;
mod load;
mod network;
mod observe;
mod sources;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use flint_daemon::config::{AccelChoice, Config, Listen};
use flint_proto::node::v1 as pb;
use flint_proto::node::v1::functions_client::FunctionsClient;
use flint_proto::node::v1::node_client::NodeClient;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(about = "Measure Flint's start, invoke latency and instance density")]
struct Args {
    /// Runs of each start kind (cold boot, runtime snapshot, function snapshot).
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Warm invocations.
    #[arg(long, default_value_t = 200)]
    warm_runs: usize,
    /// Idle clone counts to measure memory for.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    clones: Vec<usize>,
    /// Memory size of the function, MB.
    #[arg(long, default_value_t = 128)]
    memory: u32,
    /// Accelerator: auto, kvm or tcg.
    #[arg(long, default_value = "auto")]
    accel: AccelChoice,
    /// Guest kernel and runtime images.
    #[arg(
        long,
        env = "FLINT_ARTIFACTS_DIR",
        default_value = "/var/cache/flint/current"
    )]
    artifacts_dir: PathBuf,
    /// Write the JSON here as well as to stdout.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Also measure function-snapshot restores of a `provided` function with
    /// this bootstrap (for example a binary built with AWS's lambda_runtime).
    #[arg(long)]
    provided_bootstrap: Option<PathBuf>,
    /// Which measurements: `start` (latency by start kind, idle clones),
    /// `load` (concurrent clients, burst, frozen instances in a budget) or
    /// `bursts` (bursts from zero instances with and without the start
    /// scheduler), `async` (Event invocations), `sources` (a queue through
    /// an event source mapping), `network` (instance networks) or
    /// `observe` (the warm path with metrics and tracing off and on).
    #[arg(long, default_value = "start")]
    suite: String,
    /// Load suite: concurrent client counts.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    clients: Vec<usize>,
    /// Load suite: seconds measured at each client count.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Load suite: the node's instance limit.
    #[arg(long, default_value_t = 64)]
    max_instances: u32,
    /// Load suite: concurrent invocations of the burst from zero instances.
    #[arg(long, default_value_t = 16)]
    burst: usize,
    /// Burst suite: the sizes of the bursts from zero instances.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    bursts: Vec<usize>,
    /// Async suite: events sent by 16 clients (one client sends a tenth
    /// as many first); all of them are then drained.
    #[arg(long, default_value_t = 10_000)]
    async_events: usize,
    /// Sources suite: messages in the backlog (a tenth as many are sent
    /// first at 10 a second).
    #[arg(long, default_value_t = 2_000)]
    source_messages: usize,
    /// Load suite: the memory budget filled with frozen instances, MB.
    #[arg(long, default_value_t = 4096)]
    budget_mb: u64,
    /// Confine the VMMs (uid, mount namespace, cgroup, seccomp): `true`
    /// as flintd does by default; `false` to measure what it costs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    confine: bool,
    /// Guest MB per full vCPU of CPU quota (Lambda: 1769); 0: no quota.
    /// Default: flintd's (Lambda's under KVM, none under TCG).
    #[arg(long)]
    mb_per_vcpu: Option<u32>,
}

impl Args {
    /// The VMM confinement the node under test gets.
    fn vmm(&self) -> flint_daemon::engine::jail::JailSettings {
        flint_daemon::engine::jail::JailSettings {
            enabled: self.confine,
            mb_per_vcpu: self.mb_per_vcpu,
            ..Default::default()
        }
    }
}

const APP: &[u8] = b"def handler(event, context):\n    return event\n";

/// The Node.js function of the start rows: the same echo.
const NODE_APP: &[u8] = b"exports.handler = async (event) => event;\n";

fn package() -> Vec<u8> {
    zip_app(APP)
}

/// A deployment package holding `app.py`.
fn zip_app(app: &[u8]) -> Vec<u8> {
    zip_file("app.py", app)
}

/// A deployment package of one file.
fn zip_file(name: &str, data: &[u8]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file(
        name,
        zip::write::SimpleFileOptions::default().unix_permissions(0o644),
    )
    .expect("zip");
    w.write_all(data).expect("zip");
    w.finish().expect("zip").into_inner()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

struct Series {
    kind: &'static str,
    ms: Vec<f64>,
}

struct Served {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), flint_daemon::server::ServerError>>,
    fns: FunctionsClient<Channel>,
    node: NodeClient<Channel>,
}

async fn serve(config: Config, sock: &Path) -> anyhow::Result<Served> {
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(flint_daemon::server::run(config, async {
        let _ = rx.await;
    }));
    for _ in 0..400 {
        if sock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let endpoint = format!("unix:{}", sock.display());
    let fns = flint_daemon::client::functions(&endpoint).await?;
    let node = NodeClient::new(flint_daemon::client::channel(&endpoint).await?);
    Ok(Served {
        stop,
        task,
        fns,
        node,
    })
}

impl Served {
    async fn create(&mut self, name: &str, memory: u32) -> anyhow::Result<()> {
        self.create_in(name, "python3.11", memory).await
    }

    /// The echo function of the start rows, in `runtime` (python3.11 or
    /// nodejs18.x).
    async fn create_in(&mut self, name: &str, runtime: &str, memory: u32) -> anyhow::Result<()> {
        let (handler, zip) = match runtime {
            "nodejs18.x" => ("index.handler", zip_file("index.js", NODE_APP)),
            _ => ("app.handler", package()),
        };
        self.fns
            .create_function(pb::CreateFunctionRequest {
                function_name: name.into(),
                runtime: runtime.into(),
                handler: handler.into(),
                zip_file: zip,
                memory_size: memory,
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// Invoke-to-response, in ms.
    async fn invoke(&mut self, name: &str, qualifier: &str, i: usize) -> anyhow::Result<f64> {
        let payload = format!("{{\"i\":{i}}}").into_bytes();
        let t = Instant::now();
        let r = self
            .fns
            .invoke(pb::InvokeRequest {
                function_name: name.into(),
                qualifier: qualifier.into(),
                payload,
                ..Default::default()
            })
            .await?
            .into_inner();
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        anyhow::ensure!(
            r.function_error.is_empty(),
            "invoke failed: {}",
            String::from_utf8_lossy(&r.payload)
        );
        Ok(ms)
    }

    async fn stop_instances(&mut self, name: &str) -> anyhow::Result<()> {
        self.node
            .stop_instances(pb::StopInstancesRequest {
                function_name: name.into(),
                instance_id: String::new(),
            })
            .await?;
        Ok(())
    }

    async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

fn meminfo_kb(key: &str) -> u64 {
    flint_daemon::config::meminfo_kb(key).unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,netlink_packet_route=error".into()),
        )
        .init();
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new()?;
    let root = std::env::temp_dir().join(format!("flint-bench-{}", std::process::id()));
    let accel = flint_daemon::engine::detect_accel(args.accel)?;
    if args.suite == "bursts" {
        let r = rt.block_on(bursts::run(&args, &accel, &root));
        let _ = std::fs::remove_dir_all(&root);
        return r;
    }
    if args.suite == "async" {
        let r = rt.block_on(events::run(&args, &accel, &root));
        let _ = std::fs::remove_dir_all(&root);
        return r;
    }
    if args.suite == "sources" {
        let r = rt.block_on(sources::run(&args, &accel, &root));
        let _ = std::fs::remove_dir_all(&root);
        return r;
    }
    if args.suite == "network" {
        let r = rt.block_on(network::run(&args, &accel, &root));
        let _ = std::fs::remove_dir_all(&root);
        return r;
    }
    if args.suite == "observe" {
        let r = rt.block_on(observe::run(&args, &accel, &root));
        let _ = std::fs::remove_dir_all(&root);
        return r;
    }
    if args.suite == "load" {
        let r = rt.block_on(load::run(&args, &accel, &root));
        let _ = std::fs::remove_dir_all(&root);
        return r;
    }
    anyhow::ensure!(
        args.suite == "start",
        "--suite is start, load, observe, bursts, async, sources or network"
    );
    let config = |name: &str, snapshots: bool| Config {
        data_dir: root.join(name).join("data"),
        listen: vec![Listen::Unix(root.join(name).join("flintd.sock"))],
        artifacts_dir: args.artifacts_dir.clone(),
        accel: args.accel,
        snapshots,
        vmm: args.vmm(),
        ..Config::default()
    };
    let result = rt.block_on(async {
        let mut series = Vec::new();
        eprintln!("flint-bench: accelerator {} ({})", accel.accel.name(), accel.reason);

        // Snapshots on: runtime snapshot, function snapshot, warm.
        let c = config("snap", true);
        let sock = root.join("snap/flintd.sock");
        let mut s = serve(c.clone(), &sock).await?;
        s.create("bench", args.memory).await?;
        s.fns
            .publish_version(pb::PublishVersionRequest {
                function_name: "bench".into(),
                description: String::new(),
            })
            .await?;
        let t = Instant::now();
        s.invoke("bench", "", 0).await?;
        let runtime_snapshot_build = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        s.invoke("bench", "1", 0).await?;
        let function_snapshot_build = t.elapsed().as_secs_f64() * 1000.0;
        eprintln!("flint-bench: snapshots built (first invocations: {runtime_snapshot_build:.0} ms, {function_snapshot_build:.0} ms)");

        let mut ms = Vec::new();
        for i in 0..args.runs {
            s.stop_instances("bench").await?;
            ms.push(s.invoke("bench", "", i).await?);
        }
        series.push(Series { kind: "runtime-snapshot restore + init", ms });
        let mut ms = Vec::new();
        for i in 0..args.runs {
            s.stop_instances("bench").await?;
            // Idle time, as between real arrivals: the spare VMM starts.
            tokio::time::sleep(Duration::from_millis(150)).await;
            ms.push(s.invoke("bench", "1", i).await?);
        }
        series.push(Series { kind: "function-snapshot restore", ms });
        if let Some(bootstrap) = &args.provided_bootstrap {
            let bin = std::fs::read(bootstrap)?;
            let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            w.start_file("bootstrap", zip::write::SimpleFileOptions::default().unix_permissions(0o755))?;
            w.write_all(&bin)?;
            let zip = w.finish()?.into_inner();
            s.fns
                .create_function(pb::CreateFunctionRequest {
                    function_name: "bench-provided".into(),
                    runtime: "provided".into(),
                    handler: "bootstrap".into(),
                    zip_file: zip,
                    memory_size: args.memory,
                    ..Default::default()
                })
                .await?;
            s.fns
                .publish_version(pb::PublishVersionRequest {
                    function_name: "bench-provided".into(),
                    description: String::new(),
                })
                .await?;
            s.invoke("bench-provided", "1", 0).await?;
            let mut ms = Vec::new();
            for i in 0..args.runs {
                s.stop_instances("bench-provided").await?;
                tokio::time::sleep(Duration::from_millis(150)).await;
                ms.push(s.invoke("bench-provided", "1", i).await?);
            }
            series.push(Series { kind: "function-snapshot restore (provided)", ms });
        }
        let mut ms = Vec::new();
        for i in 0..args.warm_runs {
            ms.push(s.invoke("bench", "1", i).await?);
        }
        series.push(Series { kind: "warm", ms });

        // The same rows for Node.js (its runtime snapshot is built first).
        s.create_in("bench-node", "nodejs18.x", args.memory).await?;
        s.fns
            .publish_version(pb::PublishVersionRequest {
                function_name: "bench-node".into(),
                description: String::new(),
            })
            .await?;
        s.invoke("bench-node", "", 0).await?;
        s.invoke("bench-node", "1", 0).await?;
        let mut ms = Vec::new();
        for i in 0..args.runs {
            s.stop_instances("bench-node").await?;
            ms.push(s.invoke("bench-node", "", i).await?);
        }
        series.push(Series { kind: "runtime-snapshot restore + init (nodejs18.x)", ms });
        let mut ms = Vec::new();
        for i in 0..args.runs {
            s.stop_instances("bench-node").await?;
            tokio::time::sleep(Duration::from_millis(150)).await;
            ms.push(s.invoke("bench-node", "1", i).await?);
        }
        series.push(Series { kind: "function-snapshot restore (nodejs18.x)", ms });
        let mut ms = Vec::new();
        for i in 0..args.warm_runs {
            ms.push(s.invoke("bench-node", "1", i).await?);
        }
        series.push(Series { kind: "warm (nodejs18.x)", ms });
        s.shutdown().await;

        // Snapshots off: cold boots.
        let c_cold = config("cold", false);
        let mut s = serve(c_cold, &root.join("cold/flintd.sock")).await?;
        s.create("bench", args.memory).await?;
        let mut ms = Vec::new();
        for i in 0..args.runs {
            s.stop_instances("bench").await?;
            ms.push(s.invoke("bench", "", i).await?);
        }
        series.insert(0, Series { kind: "cold boot", ms });
        s.create_in("bench-node", "nodejs18.x", args.memory).await?;
        let mut ms = Vec::new();
        for i in 0..args.runs {
            s.stop_instances("bench-node").await?;
            ms.push(s.invoke("bench-node", "", i).await?);
        }
        series.push(Series { kind: "cold boot (nodejs18.x)", ms });
        s.shutdown().await;

        // Density: idle clones of the function snapshot.
        let node = flint_daemon::node::Node::open(c)?;
        let mut density = Vec::new();
        for &n in &args.clones {
            let before = meminfo_kb("MemAvailable:");
            let mut clones = Vec::with_capacity(n);
            for _ in 0..n {
                clones.push(node.start_detached("bench", "1").await?);
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let pss: u64 = clones.iter().map(|c| c.pss_kb()).sum();
            let rss: u64 = clones.iter().map(|c| c.rss_kb()).sum();
            let used = before.saturating_sub(meminfo_kb("MemAvailable:"));
            density.push((n, pss, rss, used));
            for c in clones {
                c.stop().await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        node.shutdown().await;
        Ok::<_, anyhow::Error>((series, density, runtime_snapshot_build, function_snapshot_build))
    });
    let _ = std::fs::remove_dir_all(&root);
    let (series, density, rt_build, fn_build) = result?;

    println!(
        "Flint start and invoke latency (Invoke to response, through gRPC), python3.11 unless noted, {} MB",
        args.memory
    );
    println!("accelerator: {} ({})", accel.accel.name(), accel.reason);
    println!(
        "VMMs confined: {}; vCPU quota: {}",
        args.confine,
        match args.mb_per_vcpu {
            None => "flintd's default for the accelerator".to_string(),
            Some(0) => "none".to_string(),
            Some(n) => format!("{n} MB per vCPU"),
        }
    );
    println!();
    println!(
        "{:<46} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "kind", "n", "p50 ms", "p99 ms", "min ms", "max ms"
    );
    let mut rows = Vec::new();
    for s in &series {
        let mut v = s.ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let (p50, p99) = (percentile(&v, 50.0), percentile(&v, 99.0));
        let (min, max) = (
            v.first().copied().unwrap_or(0.0),
            v.last().copied().unwrap_or(0.0),
        );
        println!(
            "{:<46} {:>6} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            s.kind,
            v.len(),
            p50,
            p99,
            min,
            max
        );
        rows.push(serde_json::json!({
            "kind": s.kind, "n": v.len(), "p50_ms": p50, "p99_ms": p99, "min_ms": min, "max_ms": max,
        }));
    }
    println!();
    println!(
        "first invocations (snapshot builds): runtime {rt_build:.0} ms, function {fn_build:.0} ms"
    );
    println!();
    println!(
        "{:<8} {:>14} {:>14} {:>14} {:>16}",
        "clones", "PSS total MB", "PSS/clone MB", "RSS total MB", "host used MB"
    );
    let mut mem = Vec::new();
    for (n, pss, rss, used) in &density {
        println!(
            "{:<8} {:>14.1} {:>14.1} {:>14.1} {:>16.1}",
            n,
            *pss as f64 / 1024.0,
            *pss as f64 / 1024.0 / *n as f64,
            *rss as f64 / 1024.0,
            *used as f64 / 1024.0
        );
        mem.push(serde_json::json!({
            "clones": n, "pss_total_mb": *pss as f64 / 1024.0, "pss_per_clone_mb": *pss as f64 / 1024.0 / *n as f64,
            "rss_total_mb": *rss as f64 / 1024.0, "host_memory_used_mb": *used as f64 / 1024.0,
        }));
    }
    let json = serde_json::json!({
        "benchmark": "start-invoke-density",
        "accelerator": accel.accel.name(),
        "accelerator_reason": accel.reason,
        "host_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_mb": args.memory,
        "vmm_confined": args.confine,
        "mb_per_vcpu": args.mb_per_vcpu,
        "latency": rows,
        "snapshot_build_first_invoke_ms": {"runtime": rt_build, "function": fn_build},
        "idle_clones": mem,
    });
    println!();
    println!("{}", serde_json::to_string_pretty(&json)?);
    if let Some(p) = args.json_out {
        std::fs::write(p, serde_json::to_string_pretty(&json)?)?;
    }
    Ok(())
}
