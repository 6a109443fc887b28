//! The observe suite: what metrics and tracing cost on the warm path. Two
//! nodes serve the same published function, one with neither, one with
//! the Prometheus endpoint (scraped every second, as an aggressive
//! Prometheus would) and every invocation traced to an OTLP receiver in
//! this process. Rounds alternate between them at each client count, so
//! that drift on a noisy host hits both alike.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flint_daemon::config::{Config, Listen};
use flint_daemon::engine::AccelInfo;
use flint_daemon::observe::trace::TraceSettings;
use flint_proto::opentelemetry::proto::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

use super::load::{clients, start, summary, Tally};
use super::Args;

/// Counts the spans it is sent.
#[derive(Clone, Default)]
struct Sink(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        r: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = r
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|rs| rs.scope_spans.iter())
            .map(|ss| ss.spans.len())
            .sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn scrape(addr: &str) -> Option<(usize, f64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    Some((out.len(), t.elapsed().as_secs_f64() * 1000.0))
}

pub async fn run(args: &Args, accel: &AccelInfo, root: &Path) -> anyhow::Result<()> {
    let sink = Sink::default();
    let otlp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let otlp_addr = otlp.local_addr()?;
    let served = sink.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(served))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(otlp)),
    );
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let config = |name: &str, observed: bool| {
        let mut c = Config {
            data_dir: root.join(name).join("data"),
            listen: vec![Listen::Unix(root.join(name).join("flintd.sock"))],
            artifacts_dir: args.artifacts_dir.clone(),
            accel: args.accel,
            max_instances: args.max_instances,
            vmm: args.vmm(),
            ..Config::default()
        };
        if observed {
            c.metrics_listen = Some(metrics_addr.clone());
            c.tracing = Some(TraceSettings {
                endpoint: format!("http://{otlp_addr}"),
                sample_ratio: 1.0,
                service_name: "flint-bench".into(),
            });
        }
        c
    };
    eprintln!(
        "flint-bench observe: accelerator {} ({})",
        accel.accel.name(),
        accel.reason
    );
    let off = start(config("off", false), root, "off", args.memory).await?;
    let on = start(config("on", true), root, "on", args.memory).await?;
    // The scraper: every second while the rounds run.
    let scrapes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let scraper = {
        let (addr, scrapes) = (metrics_addr.clone(), scrapes.clone());
        tokio::spawn(async move {
            loop {
                if let Some(s) = scrape(&addr).await {
                    scrapes.lock().unwrap().push(s);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let levels: Vec<usize> = args.clients.iter().copied().filter(|n| *n <= 16).collect();
    let mut rows = Vec::new();
    println!(
        "Flint's warm path with metrics and tracing off and on (Invoke through gRPC, python3.11, {} MB, published version)",
        args.memory
    );
    println!("accelerator: {} ({})", accel.accel.name(), accel.reason);
    println!();
    println!(
        "{:<8} {:<5} {:>10} {:>10} {:>10} {:>8}",
        "clients", "obs", "req/s", "p50 ms", "p99 ms", "ok"
    );
    for &n in &levels {
        // Warm-up: as many instances as clients, on both.
        for s in [&off, &on] {
            clients(&s.fns, n, Instant::now() + Duration::from_secs(3)).await;
        }
        let (mut t_off, mut t_on) = (Tally::default(), Tally::default());
        let (mut s_off, mut s_on) = (0.0, 0.0);
        let round = Duration::from_secs(args.seconds.div_ceil(2).max(1));
        for _ in 0..2 {
            for (s, tally, secs) in [(&off, &mut t_off, &mut s_off), (&on, &mut t_on, &mut s_on)] {
                let t = Instant::now();
                tally.merge(clients(&s.fns, n, t + round).await);
                *secs += t.elapsed().as_secs_f64();
            }
        }
        let mut row = serde_json::json!({"clients": n});
        for (name, t, secs) in [("off", &t_off, s_off), ("on", &t_on, s_on)] {
            let (p50, p99) = summary(t);
            let rps = t.ms.len() as f64 / secs;
            println!(
                "{:<8} {:<5} {:>10.1} {:>10.2} {:>10.2} {:>8}",
                n,
                name,
                rps,
                p50,
                p99,
                t.ms.len()
            );
            row[name] = serde_json::json!({
                "requests_per_s": rps, "p50_ms": p50, "p99_ms": p99,
                "ok": t.ms.len(), "throttled": t.throttled, "errors": t.errors,
            });
        }
        let ratio = |k: &str| {
            row["on"][k].as_f64().unwrap_or(0.0) / row["off"][k].as_f64().unwrap_or(1.0).max(1e-9)
        };
        row["on_over_off"] = serde_json::json!({
            "requests_per_s": ratio("requests_per_s"), "p50_ms": ratio("p50_ms"), "p99_ms": ratio("p99_ms"),
        });
        rows.push(row);
    }
    scraper.abort();
    // The last spans reach the sink within the exporter's flush interval.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spans = sink.0.load(Ordering::Relaxed);
    let scrapes = scrapes.lock().unwrap().clone();
    let mut scrape_ms: Vec<f64> = scrapes.iter().map(|s| s.1).collect();
    scrape_ms.sort_by(|a, b| a.total_cmp(b));
    let scrape_bytes = scrapes.last().map(|s| s.0).unwrap_or(0);
    let p50 = super::percentile(&scrape_ms, 50.0);
    println!();
    println!(
        "observed node: {spans} spans received by the OTLP sink; {} scrapes, p50 {p50:.2} ms, {scrape_bytes} bytes each",
        scrapes.len()
    );
    off.shutdown().await;
    on.shutdown().await;
    let json = serde_json::json!({
        "benchmark": "observe",
        "accelerator": accel.accel.name(),
        "accelerator_reason": accel.reason,
        "host_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_mb": args.memory,
        "seconds_per_level": args.seconds,
        "levels": rows,
        "spans_received": spans,
        "scrapes": scrapes.len(),
        "scrape_p50_ms": p50,
        "scrape_bytes": scrape_bytes,
    });
    println!();
    println!("{}", serde_json::to_string_pretty(&json)?);
    if let Some(p) = &args.json_out {
        std::fs::write(p, serde_json::to_string_pretty(&json)?)?;
    }
    Ok(())
}
