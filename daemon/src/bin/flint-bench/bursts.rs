//! The burst suite: `n` invocations at once against a function with no
//! instance, on a node with the start scheduler (its default slots) and on
//! one without it (as many slots as starts). For `$LATEST` every start is a
//! runtime-snapshot restore plus the function's init; for a published
//! version, a function-snapshot restore. Reports the time until the last
//! invocation answered, how many failed (and how), and the init durations
//! the functions reported.

use std::path::Path;
use std::time::{Duration, Instant};

use flint_daemon::config::{Config, FileStarts, Listen};
use flint_daemon::engine::AccelInfo;
use flint_proto::node::v1 as pb;
use flint_proto::node::v1::functions_client::FunctionsClient;
use tonic::transport::Channel;

use super::{percentile, serve, Args};

/// An init with real work in it: the standard library modules a typical
/// handler imports.
const APP: &[u8] = b"import json, decimal, email.parser, http.client, xml.etree.ElementTree, urllib.request, logging
def handler(event, context):
    return event
";

/// One invocation's outcome: answered ok, a function error (its type), or
/// refused (the status).
enum Outcome {
    Ok { init_ms: Option<f64> },
    FunctionError(String),
    Refused(tonic::Code),
}

async fn invoke(fns: &mut FunctionsClient<Channel>, qualifier: &str, i: usize) -> Outcome {
    let r = fns
        .invoke(pb::InvokeRequest {
            function_name: "burst".into(),
            qualifier: qualifier.into(),
            payload: format!("{{\"i\":{i}}}").into_bytes(),
            log_type: pb::LogType::Tail as i32,
            ..Default::default()
        })
        .await;
    let r = match r {
        Ok(r) => r.into_inner(),
        Err(s) => return Outcome::Refused(s.code()),
    };
    use base64::Engine as _;
    let tail = base64::engine::general_purpose::STANDARD
        .decode(&r.log_result)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    if !r.function_error.is_empty() {
        let doc: serde_json::Value = serde_json::from_slice(&r.payload).unwrap_or_default();
        return Outcome::FunctionError(doc["errorType"].as_str().unwrap_or("?").to_string());
    }
    let init_ms = tail.find("Init Duration: ").and_then(|at| {
        tail[at + 15..]
            .split(' ')
            .next()
            .and_then(|v| v.parse().ok())
    });
    Outcome::Ok { init_ms }
}

struct Burst {
    mode: &'static str,
    kind: &'static str,
    n: usize,
    last_ms: f64,
    ok: usize,
    failed: usize,
    throttled: usize,
    failures: Vec<String>,
    init_p50_ms: f64,
    init_max_ms: f64,
    slots: u32,
}

pub async fn run(args: &Args, accel: &AccelInfo, root: &Path) -> anyhow::Result<()> {
    eprintln!(
        "flint-bench bursts: accelerator {} ({})",
        accel.accel.name(),
        accel.reason
    );
    let mut results = Vec::new();
    for (mode, slots) in [("scheduler", None), ("no scheduler", Some(1_000_000))] {
        let name = if slots.is_some() {
            "unlimited"
        } else {
            "sched"
        };
        let config = Config {
            data_dir: root.join(name).join("data"),
            listen: vec![Listen::Unix(root.join(name).join("flintd.sock"))],
            artifacts_dir: args.artifacts_dir.clone(),
            accel: args.accel,
            max_instances: 1024,
            vmm: args.vmm(),
            starts: FileStarts {
                slots,
                ..Default::default()
            },
            ..Config::default()
        };
        let mut s = serve(config, &root.join(name).join("flintd.sock")).await?;
        s.fns
            .create_function(pb::CreateFunctionRequest {
                function_name: "burst".into(),
                runtime: "python3.11".into(),
                handler: "app.handler".into(),
                zip_file: super::zip_app(APP),
                memory_size: args.memory,
                timeout: 30,
                ..Default::default()
            })
            .await?;
        s.fns
            .publish_version(pb::PublishVersionRequest {
                function_name: "burst".into(),
                description: String::new(),
            })
            .await?;
        // Snapshots built before anything is measured.
        if let Outcome::FunctionError(e) = invoke(&mut s.fns, "1", 0).await {
            anyhow::bail!("the warm-up invocation failed: {e}");
        }
        let info = s
            .node
            .get_node_info(pb::GetNodeInfoRequest {})
            .await?
            .into_inner();
        for (kind, qualifier) in [("$LATEST init", ""), ("version restore", "1")] {
            for &n in &args.bursts {
                s.stop_instances("burst").await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let t = Instant::now();
                let mut tasks = Vec::new();
                for i in 0..n {
                    let mut fns = s.fns.clone();
                    let q = qualifier.to_string();
                    tasks.push(tokio::spawn(async move { invoke(&mut fns, &q, i).await }));
                }
                let mut b = Burst {
                    mode,
                    kind,
                    n,
                    last_ms: 0.0,
                    ok: 0,
                    failed: 0,
                    throttled: 0,
                    failures: Vec::new(),
                    init_p50_ms: 0.0,
                    init_max_ms: 0.0,
                    slots: info.start_slots,
                };
                let mut inits = Vec::new();
                for task in tasks {
                    match task.await? {
                        Outcome::Ok { init_ms } => {
                            b.ok += 1;
                            inits.extend(init_ms);
                        }
                        Outcome::FunctionError(e) => {
                            b.failed += 1;
                            b.failures.push(e);
                        }
                        Outcome::Refused(tonic::Code::ResourceExhausted) => b.throttled += 1,
                        Outcome::Refused(c) => {
                            b.failed += 1;
                            b.failures.push(format!("{c:?}"));
                        }
                    }
                }
                b.last_ms = t.elapsed().as_secs_f64() * 1000.0;
                b.failures.sort();
                b.failures.dedup();
                inits.sort_by(|a, b| a.total_cmp(b));
                b.init_p50_ms = percentile(&inits, 50.0);
                b.init_max_ms = inits.last().copied().unwrap_or(0.0);
                eprintln!(
                    "flint-bench bursts: {mode}, {kind}, {n}: last answered after {:.0} ms, {} ok, {} failed",
                    b.last_ms, b.ok, b.failed
                );
                results.push(b);
            }
        }
        s.shutdown().await;
    }

    println!(
        "Bursts from zero instances (python3.11, {} MB; init imports 7 standard modules)",
        args.memory
    );
    println!("accelerator: {} ({})", accel.accel.name(), accel.reason);
    println!(
        "host CPUs: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!();
    println!(
        "{:<13} {:<16} {:>5} {:>6} {:>12} {:>5} {:>7} {:>10} {:>13} {:>13}",
        "mode",
        "start",
        "burst",
        "slots",
        "last ms",
        "ok",
        "failed",
        "throttled",
        "init p50 ms",
        "init max ms"
    );
    let mut rows = Vec::new();
    for b in &results {
        println!(
            "{:<13} {:<16} {:>5} {:>6} {:>12.0} {:>5} {:>7} {:>10} {:>13.0} {:>13.0}{}",
            b.mode,
            b.kind,
            b.n,
            if b.slots >= 1_000_000 {
                "-".to_string()
            } else {
                b.slots.to_string()
            },
            b.last_ms,
            b.ok,
            b.failed,
            b.throttled,
            b.init_p50_ms,
            b.init_max_ms,
            if b.failures.is_empty() {
                String::new()
            } else {
                format!("  ({})", b.failures.join(", "))
            }
        );
        rows.push(serde_json::json!({
            "mode": b.mode, "start": b.kind, "burst": b.n, "slots": b.slots,
            "last_answered_ms": b.last_ms, "ok": b.ok, "failed": b.failed,
            "throttled": b.throttled, "failures": b.failures,
            "init_p50_ms": b.init_p50_ms, "init_max_ms": b.init_max_ms,
        }));
    }
    let json = serde_json::json!({
        "benchmark": "bursts",
        "accelerator": accel.accel.name(),
        "accelerator_reason": accel.reason,
        "host_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_mb": args.memory,
        "bursts": rows,
    });
    println!();
    println!("{}", serde_json::to_string_pretty(&json)?);
    if let Some(p) = &args.json_out {
        std::fs::write(p, serde_json::to_string_pretty(&json)?)?;
    }
    Ok(())
}
