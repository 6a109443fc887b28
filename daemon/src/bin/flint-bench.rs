//! flint-bench: Invoke-to-response latency of a cold start and of warm
//! invocations, against a flintd started in-process with real microVMs.
//! Prints a table and JSON, and names the accelerator.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Parser;
use flint_daemon::config::{AccelChoice, Config, Listen};
use flint_proto::node::v1 as pb;

#[derive(Parser)]
#[command(about = "Measure Flint's cold-start and warm-invoke latency")]
struct Args {
    /// Cold starts per runtime (each on a new function).
    #[arg(long, default_value_t = 5)]
    cold_runs: usize,
    /// Warm invocations per runtime.
    #[arg(long, default_value_t = 300)]
    warm_runs: usize,
    /// Accelerator: auto, kvm or tcg.
    #[arg(long, default_value = "auto")]
    accel: AccelChoice,
    /// Guest kernel and runtime images.
    #[arg(
        long,
        env = "FLINT_ARTIFACTS_DIR",
        default_value = "/var/cache/flint/current"
    )]
    artifacts_dir: std::path::PathBuf,
    /// Runtimes to measure.
    #[arg(long, value_delimiter = ',', default_value = "python3.11,provided")]
    runtimes: Vec<String>,
    /// Write the JSON here as well as to stdout.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
}

const PYTHON_APP: &[u8] = b"def handler(event, context):\n    return event\n";
const BASH_BOOTSTRAP: &[u8] = b"#!/bin/bash
set -euo pipefail
API=\"http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation\"
while true; do
  H=$(mktemp)
  EVENT=$(curl -sS -D \"$H\" \"$API/next\")
  ID=$(grep -Fi Lambda-Runtime-Aws-Request-Id \"$H\" | tr -d '[:space:]' | cut -d: -f2)
  curl -sS -o /dev/null \"$API/$ID/response\" -d \"$EVENT\"
  rm -f \"$H\"
done
";

fn package(runtime: &str) -> (Vec<u8>, &'static str) {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let (name, data, mode, handler) = match runtime {
        "python3.11" => ("app.py", PYTHON_APP, 0o644, "app.handler"),
        _ => ("bootstrap", BASH_BOOTSTRAP, 0o755, "bootstrap.handler"),
    };
    w.start_file(
        name,
        zip::write::SimpleFileOptions::default().unix_permissions(mode),
    )
    .expect("zip");
    w.write_all(data).expect("zip");
    (w.finish().expect("zip").into_inner(), handler)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

struct Series {
    runtime: String,
    kind: &'static str,
    ms: Vec<f64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new()?;
    let dir = std::env::temp_dir().join(format!("flint-bench-{}", std::process::id()));
    let sock = dir.join("flintd.sock");
    let config = Config {
        data_dir: dir.join("data"),
        listen: vec![Listen::Unix(sock.clone())],
        artifacts_dir: args.artifacts_dir.clone(),
        accel: args.accel,
        ..Config::default()
    };
    let accel = flint_daemon::engine::detect_accel(config.accel)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(flint_daemon::server::run(config, async {
        let _ = stop_rx.await;
    }));
    let series = rt.block_on(async {
        for _ in 0..200 {
            if sock.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let mut c = flint_daemon::client::functions(&format!("unix:{}", sock.display())).await?;
        let mut out = Vec::new();
        for runtime in &args.runtimes {
            let (zip, handler) = package(runtime);
            let mut cold = Vec::new();
            let mut last = String::new();
            for i in 0..args.cold_runs.max(1) {
                let name = format!("bench-{}-{i}", runtime.replace('.', "-"));
                c.create_function(pb::CreateFunctionRequest {
                    function_name: name.clone(),
                    runtime: runtime.clone(),
                    handler: handler.into(),
                    zip_file: zip.clone(),
                    ..Default::default()
                })
                .await?;
                let t = Instant::now();
                let r = c
                    .invoke(pb::InvokeRequest {
                        function_name: name.clone(),
                        payload: b"{\"cold\":true}".to_vec(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                anyhow::ensure!(
                    r.function_error.is_empty(),
                    "cold invoke failed: {:?}",
                    String::from_utf8_lossy(&r.payload)
                );
                cold.push(t.elapsed().as_secs_f64() * 1000.0);
                if i + 1 < args.cold_runs.max(1) {
                    c.delete_function(pb::DeleteFunctionRequest {
                        function_name: name,
                    })
                    .await?;
                } else {
                    last = name;
                }
            }
            let mut warm = Vec::with_capacity(args.warm_runs);
            for i in 0..args.warm_runs {
                let payload = format!("{{\"i\":{i}}}").into_bytes();
                let t = Instant::now();
                let r = c
                    .invoke(pb::InvokeRequest {
                        function_name: last.clone(),
                        payload: payload.clone(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                warm.push(t.elapsed().as_secs_f64() * 1000.0);
                anyhow::ensure!(
                    serde_json::from_slice::<serde_json::Value>(&r.payload).ok()
                        == serde_json::from_slice::<serde_json::Value>(&payload).ok(),
                    "warm invoke returned {:?}",
                    String::from_utf8_lossy(&r.payload)
                );
            }
            c.delete_function(pb::DeleteFunctionRequest {
                function_name: last,
            })
            .await?;
            out.push(Series {
                runtime: runtime.clone(),
                kind: "cold start",
                ms: cold,
            });
            out.push(Series {
                runtime: runtime.clone(),
                kind: "warm invoke",
                ms: warm,
            });
        }
        Ok::<_, anyhow::Error>(out)
    })?;
    let _ = stop_tx.send(());
    let _ = rt.block_on(server);
    let _ = std::fs::remove_dir_all(&dir);

    println!("Flint invoke latency (Invoke to response, through gRPC)");
    println!("accelerator: {} ({})", accel.accel.name(), accel.reason);
    println!();
    println!(
        "{:<12} {:<12} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "runtime", "kind", "n", "p50 ms", "p99 ms", "min ms", "max ms"
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
            "{:<12} {:<12} {:>6} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            s.runtime,
            s.kind,
            v.len(),
            p50,
            p99,
            min,
            max
        );
        rows.push(serde_json::json!({
            "runtime": s.runtime, "kind": s.kind, "n": v.len(),
            "p50_ms": p50, "p99_ms": p99, "min_ms": min, "max_ms": max,
        }));
    }
    let json = serde_json::json!({
        "benchmark": "invoke-latency",
        "accelerator": accel.accel.name(),
        "accelerator_reason": accel.reason,
        "host_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "results": rows,
    });
    println!();
    println!("{}", serde_json::to_string_pretty(&json)?);
    if let Some(p) = args.json_out {
        std::fs::write(p, serde_json::to_string_pretty(&json)?)?;
    }
    Ok(())
}
