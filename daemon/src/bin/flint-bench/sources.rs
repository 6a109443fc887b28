//! The sources suite: messages per second from a queue on a real Redis
//! through an event source mapping (batch 10) into a trivial function, and
//! how long a message waits from its write to the start of the handler
//! that gets it, at a steady light rate and in a backlog; then the same
//! backlog through a stream of one shard and of four (batch 100).
//!
//! The handler's start is read by the guest's clock, which flintd sets from
//! the host's at every restore and wake.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use flint_daemon::broker::{Broker, QueueSettings, SendOptions};
use flint_daemon::config::{Config, Listen};
use flint_daemon::engine::AccelInfo;
use flint_proto::node::v1 as pb;

use super::{percentile, serve, zip_app, Args};

const SINK: &[u8] = b"import json, time
def handler(event, context):
    t = int(time.time() * 1000)
    sent = [int(r['attributes']['SentTimestamp']) if 'attributes' in r
            else int(r['kinesis']['approximateArrivalTimestamp'] * 1000)
            for r in event.get('Records', [])]
    print('SINK %d %s' % (t, json.dumps(sent)))
";

struct Redis(std::process::Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis(dir: &Path) -> anyhow::Result<(Redis, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    std::fs::create_dir_all(dir)?;
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let redis = Redis(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((redis, format!("redis://127.0.0.1:{port}/")))
}

/// (handler start, sent) of every record the sink logged.
async fn deliveries(
    node: &mut pb::node_client::NodeClient<tonic::transport::Channel>,
) -> anyhow::Result<Vec<(i64, i64)>> {
    use tokio_stream::StreamExt;
    let mut s = node
        .tail_logs(pb::TailLogsRequest {
            function_name: "sink".into(),
            since_seconds: 0,
            follow: false,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(l) = s.next().await {
        let m = l?.message;
        let Some(rest) = m.trim().strip_prefix("SINK ") else {
            continue;
        };
        let Some((t, sent)) = rest.split_once(' ') else {
            continue;
        };
        let t: i64 = t.parse()?;
        for s in serde_json::from_str::<Vec<i64>>(sent)? {
            out.push((t, s));
        }
    }
    Ok(out)
}

struct Phase {
    name: &'static str,
    messages: usize,
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn wait_for(
    node: &mut pb::node_client::NodeClient<tonic::transport::Channel>,
    total: usize,
) -> anyhow::Result<Vec<(i64, i64)>> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let d = deliveries(node).await?;
        if d.len() >= total {
            return Ok(d);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {total} messages arrived",
            d.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn latencies(d: &[(i64, i64)]) -> Vec<f64> {
    let mut ms: Vec<f64> = d.iter().map(|(t, s)| (t - s).max(0) as f64).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    ms
}

pub async fn run(args: &Args, accel: &AccelInfo, root: &Path) -> anyhow::Result<()> {
    eprintln!(
        "flint-bench sources: accelerator {} ({})",
        accel.accel.name(),
        accel.reason
    );
    std::fs::create_dir_all(root)?;
    let (_redis, url) = start_redis(&root.join("redis"))?;
    let sock = root.join("sources/flintd.sock");
    let config = Config {
        data_dir: root.join("sources/data"),
        listen: vec![Listen::Unix(sock.clone())],
        artifacts_dir: args.artifacts_dir.clone(),
        accel: args.accel,
        vmm: args.vmm(),
        broker_url: Some(url.clone()),
        ..Config::default()
    };
    let region = config.region.clone();
    let account = config.account_id.clone();
    let mut s = serve(config, &sock).await?;
    s.fns
        .create_function(pb::CreateFunctionRequest {
            function_name: "sink".into(),
            runtime: "python3.11".into(),
            handler: "app.handler".into(),
            zip_file: zip_app(SINK),
            memory_size: args.memory,
            timeout: 30,
            ..Default::default()
        })
        .await?;
    // The runtime snapshot is built before anything is measured.
    s.invoke("sink", "", 0).await?;
    let broker = Broker::new(&url)?;
    broker
        .create_queue(
            "bench",
            &QueueSettings {
                visibility_timeout_s: Some(120),
                ..Default::default()
            },
        )
        .await?;
    s.fns
        .create_event_source_mapping(pb::CreateEventSourceMappingRequest {
            event_source_arn: format!("arn:aws:sqs:{region}:{account}:bench"),
            function_name: "sink".into(),
            batch_size: Some(10),
            ..Default::default()
        })
        .await?;
    let none = BTreeMap::new();
    let opts = SendOptions::default();
    let mut phases = Vec::new();

    // A steady light rate: 10 messages a second.
    let steady = args.source_messages / 10;
    let t = Instant::now();
    for i in 0..steady {
        broker
            .send_message("bench", &format!("{{\"i\":{i}}}"), &none, &opts)
            .await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let d = wait_for(&mut s.node, steady).await?;
    let secs = t.elapsed().as_secs_f64();
    let ms = latencies(&d);
    phases.push(Phase {
        name: "steady, 10/s",
        messages: steady,
        per_s: steady as f64 / secs,
        p50_ms: percentile(&ms, 50.0),
        p99_ms: percentile(&ms, 99.0),
    });
    eprintln!("flint-bench sources: steady done");

    // A backlog: written as fast as one client can, drained meanwhile.
    let backlog = args.source_messages;
    let t = Instant::now();
    for i in 0..backlog {
        broker
            .send_message("bench", &format!("{{\"b\":{i}}}"), &none, &opts)
            .await?;
    }
    let written = t.elapsed().as_secs_f64();
    let d = wait_for(&mut s.node, steady + backlog).await?;
    let secs = t.elapsed().as_secs_f64();
    let mut latest: Vec<(i64, i64)> = d;
    latest.sort_by_key(|(_, sent)| *sent);
    let ms = latencies(&latest[latest.len() - backlog..]);
    phases.push(Phase {
        name: "backlog",
        messages: backlog,
        per_s: backlog as f64 / secs,
        p50_ms: percentile(&ms, 50.0),
        p99_ms: percentile(&ms, 99.0),
    });
    let m = s
        .fns
        .list_event_source_mappings(pb::ListEventSourceMappingsRequest::default())
        .await?
        .into_inner()
        .event_source_mappings;
    let status = m.first().and_then(|m| m.status.clone()).unwrap_or_default();
    eprintln!("flint-bench sources: queue done");

    // Streams: the same backlog through a stream of one shard, then of
    // four, read with Kinesis's default batch of 100: written while the
    // mapping reads (write-to-start latency), then written first and
    // drained from the start (the drain rate).
    let mut done = steady + backlog;
    for shards in [1u32, 4] {
        for drained in [false, true] {
            let name = format!("bench-{shards}-{drained}");
            broker.create_stream(&name, shards, None).await?;
            let map = || pb::CreateEventSourceMappingRequest {
                event_source_arn: format!("arn:aws:kinesis:{region}:{account}:stream/{name}"),
                function_name: "sink".into(),
                starting_position: "TRIM_HORIZON".into(),
                ..Default::default()
            };
            if !drained {
                s.fns.create_event_source_mapping(map()).await?;
            }
            let t = Instant::now();
            for i in 0..backlog {
                let data = format!("{{\"s\":{i}}}");
                broker
                    .put_record(&name, &format!("k{}", i % 64), data.as_bytes())
                    .await?;
            }
            let t = if drained {
                let t = Instant::now();
                s.fns.create_event_source_mapping(map()).await?;
                t
            } else {
                t
            };
            done += backlog;
            let d = wait_for(&mut s.node, done).await?;
            let secs = t.elapsed().as_secs_f64();
            let mut latest = d;
            latest.sort_by_key(|(_, sent)| *sent);
            let ms = latencies(&latest[latest.len() - backlog..]);
            phases.push(Phase {
                name: match (shards, drained) {
                    (1, false) => "stream 1 shard",
                    (1, true) => "  drain, 1 shard",
                    (_, false) => "stream 4 shards",
                    (_, true) => " drain, 4 shards",
                },
                messages: backlog,
                per_s: backlog as f64 / secs,
                // A drained backlog waited for its mapping: no latency.
                p50_ms: if drained {
                    f64::NAN
                } else {
                    percentile(&ms, 50.0)
                },
                p99_ms: if drained {
                    f64::NAN
                } else {
                    percentile(&ms, 99.0)
                },
            });
            eprintln!("flint-bench sources: stream of {shards} (drained: {drained}) done");
        }
    }
    s.shutdown().await;

    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "Event source mappings on Redis → python3.11 ({} MB): a queue (batch 10), streams (batch 100)",
        args.memory
    );
    println!("accelerator: {} ({})", accel.accel.name(), accel.reason);
    println!("host CPUs: {cpus}");
    println!(
        "backlog of {backlog} written in {written:.1} s by one client; {} batches, {} failed",
        status.batches, status.failed_batches
    );
    println!();
    println!(
        "{:>17} {:>9} {:>12} {:>14} {:>14}",
        "phase", "messages", "messages/s", "write→start p50", "write→start p99"
    );
    for p in &phases {
        let ms = |v: f64| {
            if v.is_nan() {
                "–".to_string()
            } else {
                format!("{v:.0}ms")
            }
        };
        println!(
            "{:>17} {:>9} {:>12.0} {:>14} {:>14}",
            p.name,
            p.messages,
            p.per_s,
            ms(p.p50_ms),
            ms(p.p99_ms)
        );
    }
    let json = serde_json::json!({
        "benchmark": "sources",
        "accelerator": accel.accel.name(),
        "accelerator_reason": accel.reason,
        "host_cpus": cpus,
        "memory_mb": args.memory,
        "batch_size": 10,
        "backlog_write_s": written,
        "batches": status.batches,
        "failed_batches": status.failed_batches,
        "phases": phases.iter().map(|p| serde_json::json!({
            "phase": p.name, "messages": p.messages, "messages_per_s": p.per_s,
            "write_to_start_p50_ms": p.p50_ms, "write_to_start_p99_ms": p.p99_ms,
        })).collect::<Vec<_>>(),
    });
    println!();
    println!("{}", serde_json::to_string_pretty(&json)?);
    if let Some(p) = &args.json_out {
        std::fs::write(p, serde_json::to_string_pretty(&json)?)?;
    }
    Ok(())
}
