//! The load suite: 1, 4, 16 and 64 concurrent clients on a warm function
//! (throughput, latency, throttles), a burst from zero instances, and how
//! many frozen instances of a function fill a memory budget (found by asking
//! for more provisioned concurrency than fits and counting what the node
//! started before it ran out of room).

use std::path::Path;
use std::time::{Duration, Instant};

use flint_daemon::config::{Config, Listen};
use flint_daemon::engine::AccelInfo;
use flint_proto::node::v1 as pb;
use flint_proto::node::v1::functions_client::FunctionsClient;
use tonic::transport::Channel;

use super::{meminfo_kb, percentile, serve, Args, Served};

/// What a group of clients saw.
#[derive(Default)]
pub(super) struct Tally {
    pub ms: Vec<f64>,
    pub throttled: usize,
    pub errors: usize,
}

impl Tally {
    pub fn merge(&mut self, o: Tally) {
        self.ms.extend(o.ms);
        self.throttled += o.throttled;
        self.errors += o.errors;
    }
}

async fn invoke(fns: &mut FunctionsClient<Channel>, i: usize) -> Result<f64, tonic::Status> {
    let t = Instant::now();
    let r = fns
        .invoke(pb::InvokeRequest {
            function_name: "load".into(),
            qualifier: "1".into(),
            payload: format!("{{\"i\":{i}}}").into_bytes(),
            ..Default::default()
        })
        .await?
        .into_inner();
    if !r.function_error.is_empty() {
        return Err(tonic::Status::internal(
            String::from_utf8_lossy(&r.payload).into_owned(),
        ));
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

fn count(tally: &mut Tally, r: Result<f64, tonic::Status>) {
    match r {
        Ok(ms) => tally.ms.push(ms),
        Err(s) if s.code() == tonic::Code::ResourceExhausted => tally.throttled += 1,
        Err(s) => {
            tracing::warn!(error = %s, "invocation failed");
            tally.errors += 1;
        }
    }
}

/// `clients` clients invoking back to back until `until`.
pub(super) async fn clients(
    fns: &FunctionsClient<Channel>,
    clients: usize,
    until: Instant,
) -> Tally {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut fns = fns.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut i = c * 1_000_000;
            while Instant::now() < until {
                let r = invoke(&mut fns, i).await;
                let throttled = matches!(&r, Err(s) if s.code() == tonic::Code::ResourceExhausted);
                count(&mut tally, r);
                if throttled {
                    // A throttled client backs off a little, as AWS's SDKs do.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                i += 1;
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        if let Ok(t) = t.await {
            all.merge(t);
        }
    }
    all
}

pub(super) fn summary(t: &Tally) -> (f64, f64) {
    let mut v = t.ms.clone();
    v.sort_by(|a, b| a.total_cmp(b));
    (percentile(&v, 50.0), percentile(&v, 99.0))
}

/// A node serving `load`, published as version 1 and invoked once (its
/// snapshots built).
pub(super) async fn start(
    config: Config,
    root: &Path,
    name: &str,
    memory: u32,
) -> anyhow::Result<Served> {
    let mut s = serve(config, &root.join(name).join("flintd.sock")).await?;
    s.create("load", memory).await?;
    s.fns
        .publish_version(pb::PublishVersionRequest {
            function_name: "load".into(),
            description: String::new(),
        })
        .await?;
    invoke(&mut s.fns, 0).await?;
    Ok(s)
}

async fn instances(s: &mut Served) -> anyhow::Result<Vec<pb::InstanceInfo>> {
    Ok(s.node
        .list_instances(pb::ListInstancesRequest {
            function_name: "load".into(),
        })
        .await?
        .into_inner()
        .instances)
}

pub async fn run(args: &Args, accel: &AccelInfo, root: &Path) -> anyhow::Result<()> {
    let config = |name: &str, max_instances: u32, budget_mb: Option<u64>| {
        let mut c = Config {
            data_dir: root.join(name).join("data"),
            listen: vec![Listen::Unix(root.join(name).join("flintd.sock"))],
            artifacts_dir: args.artifacts_dir.clone(),
            accel: args.accel,
            max_instances,
            vmm: args.vmm(),
            ..Config::default()
        };
        if let Some(b) = budget_mb {
            c.memory_budget_mb = b;
        }
        c
    };
    eprintln!(
        "flint-bench load: accelerator {} ({})",
        accel.accel.name(),
        accel.reason
    );

    // Concurrent clients on a warm function.
    let mut s = start(
        config("load", args.max_instances, None),
        root,
        "load",
        args.memory,
    )
    .await?;
    let mut levels = Vec::new();
    for &n in &args.clients {
        // Warm-up: as many instances as clients exist before measuring.
        let warm = clients(&s.fns, n, Instant::now() + Duration::from_secs(3)).await;
        let t = Instant::now();
        let tally = clients(&s.fns, n, t + Duration::from_secs(args.seconds)).await;
        let secs = t.elapsed().as_secs_f64();
        let instances = instances(&mut s).await?.len();
        eprintln!(
            "flint-bench load: {n} clients: {} ok, {} throttled ({} in warm-up)",
            tally.ms.len(),
            tally.throttled,
            warm.throttled
        );
        levels.push((n, tally, secs, instances));
    }

    // A burst from zero instances.
    s.stop_instances("load").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.burst {
        let mut fns = s.fns.clone();
        tasks.push(tokio::spawn(async move { invoke(&mut fns, i).await }));
    }
    let mut burst = Tally::default();
    for task in tasks {
        count(&mut burst, task.await?);
    }
    let burst_ms = t.elapsed().as_secs_f64() * 1000.0;
    s.shutdown().await;

    // Frozen instances in a memory budget: more provisioned concurrency than
    // fits, and what the node started before it had no more room.
    let before = meminfo_kb("MemAvailable:");
    let mut s = start(
        config("density", 100_000, Some(args.budget_mb)),
        root,
        "density",
        args.memory,
    )
    .await?;
    s.stop_instances("load").await?;
    let t = Instant::now();
    s.fns
        .put_provisioned_concurrency_config(pb::PutProvisionedConcurrencyConfigRequest {
            function_name: "load".into(),
            qualifier: "1".into(),
            provisioned_concurrent_executions: 50_000,
        })
        .await?;
    let mut last = 0;
    let p = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let p = s
            .fns
            .get_provisioned_concurrency_config(pb::GetProvisionedConcurrencyConfigRequest {
                function_name: "load".into(),
                qualifier: "1".into(),
            })
            .await?
            .into_inner();
        if p.allocated_provisioned_concurrent_executions >= last + 10 {
            last = p.allocated_provisioned_concurrent_executions;
            eprintln!("flint-bench load: {last} frozen instances");
        }
        if p.status != "IN_PROGRESS" || t.elapsed() > Duration::from_secs(1200) {
            break p;
        }
    };
    // Instances that were starting still join, and the retries after
    // FAILED add more as measured charges replace full ones: wait until the
    // count holds for 3 s.
    let (mut held, mut count) = (0, 0);
    while held < 3 && t.elapsed() < Duration::from_secs(1200) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let n = instances(&mut s).await?.len();
        if n == count {
            held += 1;
        } else {
            (held, count) = (0, n);
        }
    }
    let fill_s = t.elapsed().as_secs_f64();
    let info = s
        .node
        .get_node_info(pb::GetNodeInfoRequest {})
        .await?
        .into_inner();
    let list = instances(&mut s).await?;
    let frozen = list.iter().filter(|i| i.state == "Frozen").count();
    let rss_mb: u64 = list.iter().map(|i| i.rss_kb).sum::<u64>() / 1024;
    let used_mb = before.saturating_sub(meminfo_kb("MemAvailable:")) / 1024;
    s.shutdown().await;

    println!(
        "Flint under load (Invoke to response through gRPC, python3.11, {} MB, published version)",
        args.memory
    );
    println!("accelerator: {} ({})", accel.accel.name(), accel.reason);
    println!("node: max_instances {}", args.max_instances);
    println!();
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "clients", "req/s", "p50 ms", "p99 ms", "ok", "throttled", "instances"
    );
    let mut rows = Vec::new();
    for (n, t, secs, instances) in &levels {
        let (p50, p99) = summary(t);
        let rps = t.ms.len() as f64 / secs;
        println!(
            "{:<8} {:>10.1} {:>10.2} {:>10.2} {:>10} {:>10} {:>10}",
            n,
            rps,
            p50,
            p99,
            t.ms.len(),
            t.throttled,
            instances
        );
        rows.push(serde_json::json!({
            "clients": n, "requests_per_s": rps, "p50_ms": p50, "p99_ms": p99,
            "ok": t.ms.len(), "throttled": t.throttled, "errors": t.errors, "instances": instances,
        }));
    }
    let (b50, b99) = summary(&burst);
    println!();
    println!(
        "burst 0 -> {}: all answered in {burst_ms:.0} ms; p50 {b50:.1} ms, p99 {b99:.1} ms; {} ok, {} throttled, {} errors",
        args.burst,
        burst.ms.len(),
        burst.throttled,
        burst.errors
    );
    println!(
        "frozen instances in a {} MB budget: {} ({} frozen; {} MB counted, {} MB RSS, {} MB host memory used; filled in {fill_s:.0} s; status {} {})",
        args.budget_mb,
        list.len(),
        frozen,
        info.memory_charged_mb,
        rss_mb,
        used_mb,
        p.status,
        p.status_reason
    );
    let json = serde_json::json!({
        "benchmark": "load",
        "accelerator": accel.accel.name(),
        "accelerator_reason": accel.reason,
        "host_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_mb": args.memory,
        "max_instances": args.max_instances,
        "seconds_per_level": args.seconds,
        "levels": rows,
        "burst": {
            "invocations": args.burst, "all_answered_ms": burst_ms, "p50_ms": b50, "p99_ms": b99,
            "ok": burst.ms.len(), "throttled": burst.throttled, "errors": burst.errors,
        },
        "density": {
            "budget_mb": args.budget_mb,
            "instances": list.len(),
            "frozen": frozen,
            "counted_mb": info.memory_charged_mb,
            "rss_mb": rss_mb,
            "host_memory_used_mb": used_mb,
            "fill_s": fill_s,
            "status": p.status,
            "status_reason": p.status_reason,
        },
    });
    println!();
    println!("{}", serde_json::to_string_pretty(&json)?);
    if let Some(p) = &args.json_out {
        std::fs::write(p, serde_json::to_string_pretty(&json)?)?;
    }
    Ok(())
}
