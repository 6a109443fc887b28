//! The async suite: how fast a node acknowledges `Event` invocations (one
//! client, then many), what one synced write of the queue costs on the same
//! disk for comparison, and how long the node takes to drain the queued
//! events into a trivial function with reserved concurrency 4.

use std::path::Path;
use std::time::{Duration, Instant};

use flint_daemon::config::{Config, Listen};
use flint_daemon::engine::AccelInfo;
use flint_daemon::events::{EventQueue, NewEvent};
use flint_proto::node::v1 as pb;
use flint_proto::node::v1::functions_client::FunctionsClient;
use tonic::transport::Channel;

use super::{percentile, serve, Args};

async fn send(fns: &mut FunctionsClient<Channel>, i: usize) -> anyhow::Result<f64> {
    let t = Instant::now();
    let r = fns
        .invoke(pb::InvokeRequest {
            function_name: "drain".into(),
            invocation_type: pb::InvocationType::Event as i32,
            payload: format!("{{\"i\":{i}}}").into_bytes(),
            ..Default::default()
        })
        .await?
        .into_inner();
    anyhow::ensure!(r.status_code == 202, "status {}", r.status_code);
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

struct Accepted {
    clients: usize,
    events: usize,
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `events` events from `clients` clients at once.
async fn accept(
    fns: &FunctionsClient<Channel>,
    clients: usize,
    events: usize,
) -> anyhow::Result<Accepted> {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut fns = fns.clone();
        let n = events / clients + usize::from(c < events % clients);
        tasks.push(tokio::spawn(async move {
            let mut ms = Vec::with_capacity(n);
            for i in 0..n {
                ms.push(send(&mut fns, c * 1_000_000 + i).await?);
            }
            anyhow::Ok(ms)
        }));
    }
    let mut ms = Vec::new();
    for task in tasks {
        ms.extend(task.await??);
    }
    let secs = t.elapsed().as_secs_f64();
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok(Accepted {
        clients,
        events,
        per_s: events as f64 / secs,
        p50_ms: percentile(&ms, 50.0),
        p99_ms: percentile(&ms, 99.0),
    })
}

/// One synced commit of the queue, on the disk under `root`.
fn synced_write_ms(root: &Path) -> anyhow::Result<(f64, f64)> {
    let q = EventQueue::open(&root.join("write-probe.db"))?;
    let mut ms = Vec::new();
    for i in 0..500 {
        let e = NewEvent {
            request_id: format!("probe-{i}"),
            function: "probe".into(),
            qualifier: String::new(),
            payload: b"{\"i\":0}".to_vec(),
            received_ms: 0,
        };
        let t = Instant::now();
        q.accept(&e)?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok((percentile(&ms, 50.0), percentile(&ms, 99.0)))
}

pub async fn run(args: &Args, accel: &AccelInfo, root: &Path) -> anyhow::Result<()> {
    eprintln!(
        "flint-bench async: accelerator {} ({})",
        accel.accel.name(),
        accel.reason
    );
    std::fs::create_dir_all(root)?;
    let probe_root = root.to_path_buf();
    let (write_p50, write_p99) =
        tokio::task::spawn_blocking(move || synced_write_ms(&probe_root)).await??;
    let sock = root.join("async/flintd.sock");
    let config = Config {
        data_dir: root.join("async/data"),
        listen: vec![Listen::Unix(sock.clone())],
        artifacts_dir: args.artifacts_dir.clone(),
        accel: args.accel,
        vmm: args.vmm(),
        ..Config::default()
    };
    let mut s = serve(config, &sock).await?;
    s.create("drain", args.memory).await?;
    s.fns
        .put_function_concurrency(pb::PutFunctionConcurrencyRequest {
            function_name: "drain".into(),
            reserved_concurrent_executions: 4,
        })
        .await?;
    // The runtime snapshot is built before anything is measured.
    s.invoke("drain", "", 0).await?;
    // A gRPC round trip that reads the function, as the 202 does, for
    // comparison.
    let mut rt = Vec::new();
    for _ in 0..500 {
        let t = Instant::now();
        s.fns
            .get_function(pb::GetFunctionRequest {
                function_name: "drain".into(),
                ..Default::default()
            })
            .await?;
        rt.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    rt.sort_by(|a, b| a.total_cmp(b));
    let (rt_p50, rt_p99) = (percentile(&rt, 50.0), percentile(&rt, 99.0));

    let started = Instant::now();
    let mut accepted = vec![accept(&s.fns, 1, args.async_events / 10).await?];
    eprintln!("flint-bench async: one client done");
    accepted.push(accept(&s.fns, 16, args.async_events).await?);
    eprintln!("flint-bench async: 16 clients done");
    let accepted_at = started.elapsed().as_secs_f64();
    let total = (args.async_events / 10 + args.async_events) as u64;
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut most_in_flight = 0;
    let (succeeded, dropped) = loop {
        let q = s
            .node
            .get_event_queues(pb::GetEventQueuesRequest {})
            .await?
            .into_inner()
            .queues
            .into_iter()
            .find(|q| q.function_name == "drain")
            .unwrap_or_default();
        most_in_flight = most_in_flight.max(q.in_flight);
        if q.events_succeeded + q.events_dropped >= total || Instant::now() > deadline {
            break (q.events_succeeded, q.events_dropped);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let drained = started.elapsed().as_secs_f64();
    s.shutdown().await;

    println!(
        "Asynchronous invocation (python3.11, {} MB, reserved concurrency 4)",
        args.memory
    );
    println!("accelerator: {} ({})", accel.accel.name(), accel.reason);
    println!(
        "host CPUs: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "one synced commit of the queue on this disk: p50 {write_p50:.2} ms, p99 {write_p99:.2} ms"
    );
    println!("one GetFunction round trip (one client): p50 {rt_p50:.2} ms, p99 {rt_p99:.2} ms");
    println!();
    println!(
        "{:>8} {:>8} {:>12} {:>10} {:>10}",
        "clients", "events", "accepted/s", "202 p50", "202 p99"
    );
    for a in &accepted {
        println!(
            "{:>8} {:>8} {:>12.0} {:>8.2}ms {:>8.2}ms",
            a.clients, a.events, a.per_s, a.p50_ms, a.p99_ms
        );
    }
    println!();
    println!(
        "drain: {total} events, {succeeded} succeeded, {dropped} dropped, all accepted after {accepted_at:.1} s, all run after {drained:.1} s ({:.0} events/s), at most {most_in_flight} in flight",
        total as f64 / drained
    );
    let json = serde_json::json!({
        "benchmark": "async",
        "accelerator": accel.accel.name(),
        "accelerator_reason": accel.reason,
        "host_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_mb": args.memory,
        "synced_write_p50_ms": write_p50,
        "synced_write_p99_ms": write_p99,
        "get_function_p50_ms": rt_p50,
        "get_function_p99_ms": rt_p99,
        "accept": accepted.iter().map(|a| serde_json::json!({
            "clients": a.clients, "events": a.events, "accepted_per_s": a.per_s,
            "p50_ms": a.p50_ms, "p99_ms": a.p99_ms,
        })).collect::<Vec<_>>(),
        "drain": {
            "events": total, "succeeded": succeeded, "dropped": dropped,
            "reserved_concurrency": 4, "most_in_flight": most_in_flight,
            "all_accepted_s": accepted_at, "all_run_s": drained,
            "events_per_s": total as f64 / drained,
        },
    });
    println!();
    println!("{}", serde_json::to_string_pretty(&json)?);
    if let Some(p) = &args.json_out {
        std::fs::write(p, serde_json::to_string_pretty(&json)?)?;
    }
    Ok(())
}
