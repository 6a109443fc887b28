//! `--suite network`: what instance networks cost.
//!
//! - Function-snapshot restore, Invoke to response, of two functions with
//!   the same code: one with a network (`egress`), one without (`none`),
//!   measured in alternation so that both see the same machine.
//! - Preparing a namespace (netns, TAP, veth pair, addresses, routes, base
//!   rules) on demand, and taking a prepared one (the function's egress
//!   rules: one netlink batch), on a node of its own.
//! - Throughput: a function downloads from an HTTP server on a host
//!   address (which its egress rule names) and reports MB/s.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use flint_daemon::config::{Config, Listen};
use flint_daemon::engine::AccelInfo;
use flint_daemon::network::{Cidr, EgressRule, Mode, Network, NetworkConfig, NetworkSettings};
use flint_proto::node::v1 as pb;

use super::{percentile, serve, zip_app, Args};

const APP: &[u8] = b"import time, urllib.request
def handler(event, context):
    if 'url' not in event:
        return event
    t = time.monotonic()
    n = 0
    with urllib.request.urlopen(event['url'], timeout=120) as r:
        while True:
            b = r.read(1 << 16)
            if not b:
                break
            n += len(b)
    return {'bytes': n, 'seconds': time.monotonic() - t}
";

/// The host's address on its default route: a UDP socket "connected" to
/// a documentation address (nothing is sent) says which one it would use.
fn host_address() -> anyhow::Result<Ipv4Addr> {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0")?;
    probe.connect("203.0.113.1:9")?;
    match probe.local_addr()?.ip() {
        std::net::IpAddr::V4(a) if !a.is_unspecified() => Ok(a),
        other => anyhow::bail!("no IPv4 address on the default route ({other})"),
    }
}

/// Serves `GET /N`: N bytes.
fn serve_bytes(l: TcpListener) {
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req).to_string();
                let n: usize = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.trim_start_matches('/').parse().ok())
                    .unwrap_or(0);
                let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {n}\r\n\r\n");
                let _ = conn.write_all(head.as_bytes());
                let chunk = vec![b'x'; 1 << 16];
                let mut left = n;
                while left > 0 {
                    let k = left.min(chunk.len());
                    if conn.write_all(&chunk[..k]).is_err() {
                        return;
                    }
                    left -= k;
                }
            });
        }
    });
}

fn stats(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (percentile(v, 50.0), percentile(v, 99.0))
}

pub async fn run(args: &Args, accel: &AccelInfo, root: &Path) -> anyhow::Result<()> {
    eprintln!(
        "flint-bench network: accelerator {} ({})",
        accel.accel.name(),
        accel.reason
    );
    std::fs::create_dir_all(root)?;
    let host = host_address()?;
    let server = TcpListener::bind((host, 0))?;
    let port = server.local_addr()?.port();
    serve_bytes(server);

    // Preparing namespaces, on a network of its own.
    let prepared = {
        let net = Network::start(NetworkSettings {
            instance_cidr: Cidr::parse("10.205.0.0/24")?,
            prepared: 0,
            tag: "bn".into(),
            ..Default::default()
        })?;
        let cfg = NetworkConfig::default();
        let (mut on_demand, mut slots) = (Vec::new(), Vec::new());
        for _ in 0..args.runs.min(40) {
            let t = Instant::now();
            slots.push(net.acquire(&cfg).await?);
            on_demand.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        drop(slots);
        tokio::time::sleep(Duration::from_millis(500)).await;
        net.shutdown().await;
        let net = Network::start(NetworkSettings {
            instance_cidr: Cidr::parse("10.205.0.0/24")?,
            prepared: args.runs.min(40),
            tag: "bn".into(),
            ..Default::default()
        })?;
        // The first acquire starts the refill; then wait for the pool.
        drop(net.acquire(&cfg).await?);
        let deadline = Instant::now() + Duration::from_secs(60);
        while net.stats().ready < args.runs.min(40) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut taken = Vec::new();
        let mut slots = Vec::new();
        for _ in 0..net.stats().ready {
            let t = Instant::now();
            slots.push(net.acquire(&cfg).await?);
            taken.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        drop(slots);
        tokio::time::sleep(Duration::from_millis(500)).await;
        net.shutdown().await;
        (on_demand, taken)
    };

    let sock = root.join("network/flintd.sock");
    let mut config = Config {
        data_dir: root.join("network/data"),
        listen: vec![Listen::Unix(sock.clone())],
        artifacts_dir: args.artifacts_dir.clone(),
        accel: args.accel,
        vmm: args.vmm(),
        ..Config::default()
    };
    config.network.instance_cidr = Cidr::parse("10.204.0.0/16")?;
    let mut s = serve(config, &sock).await?;
    let egress = NetworkConfig {
        mode: Mode::Egress,
        egress: vec![EgressRule::parse(&format!("{host}/32,tcp,{port}"))?],
    };
    for (name, net) in [
        ("bench-net", Some(&egress)),
        (
            "bench-none",
            Some(&NetworkConfig {
                mode: Mode::None,
                egress: vec![],
            }),
        ),
    ] {
        let network_config = net.map(flint_daemon::api::network_pb);
        s.fns
            .create_function(pb::CreateFunctionRequest {
                function_name: name.into(),
                runtime: "python3.11".into(),
                handler: "app.handler".into(),
                zip_file: zip_app(APP),
                memory_size: args.memory,
                timeout: 300,
                network_config,
                ..Default::default()
            })
            .await?;
        s.fns
            .publish_version(pb::PublishVersionRequest {
                function_name: name.into(),
                description: String::new(),
            })
            .await?;
        s.invoke(name, "1", 0).await?;
    }
    eprintln!("flint-bench network: snapshots built");
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for i in 0..args.runs {
        for (name, into) in [("bench-net", &mut with), ("bench-none", &mut without)] {
            s.stop_instances(name).await?;
            tokio::time::sleep(Duration::from_millis(150)).await;
            into.push(s.invoke(name, "1", i).await?);
        }
    }

    // Throughput into a function.
    let size = 64usize << 20;
    let mut mbps = Vec::new();
    for _ in 0..3 {
        let r = s
            .fns
            .invoke(pb::InvokeRequest {
                function_name: "bench-net".into(),
                qualifier: "1".into(),
                payload: serde_json::json!({"url": format!("http://{host}:{port}/{size}")})
                    .to_string()
                    .into_bytes(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let v: serde_json::Value = serde_json::from_slice(&r.payload)?;
        anyhow::ensure!(
            v["bytes"].as_u64() == Some(size as u64),
            "download failed: {v}"
        );
        mbps.push(size as f64 / 1e6 / v["seconds"].as_f64().unwrap_or(f64::INFINITY));
    }
    s.shutdown().await;

    let (w50, w99) = stats(&mut with);
    let (n50, n99) = stats(&mut without);
    let (o50, o99) = stats(&mut prepared.0.clone());
    let (t50, t99) = stats(&mut prepared.1.clone());
    mbps.sort_by(|a, b| a.total_cmp(b));
    let mbps50 = percentile(&mbps, 50.0);
    println!(
        "Flint instance networks, python3.11, {} MB; accelerator: {} ({})",
        args.memory,
        accel.accel.name(),
        accel.reason
    );
    println!();
    println!(
        "{:<44} {:>6} {:>10} {:>10}",
        "measure", "n", "p50 ms", "p99 ms"
    );
    let rows = [
        (
            "function-snapshot restore, network egress",
            with.len(),
            w50,
            w99,
        ),
        (
            "function-snapshot restore, network none",
            without.len(),
            n50,
            n99,
        ),
        (
            "namespace prepared on demand (+ rules)",
            prepared.0.len(),
            o50,
            o99,
        ),
        (
            "prepared namespace taken (rules only)",
            prepared.1.len(),
            t50,
            t99,
        ),
    ];
    for (k, n, p50, p99) in rows {
        println!("{k:<44} {n:>6} {p50:>10.2} {p99:>10.2}");
    }
    let overhead = if n50 > 0.0 {
        (w50 / n50 - 1.0) * 100.0
    } else {
        0.0
    };
    println!();
    println!("restore with a network vs without (p50): {overhead:+.1}%");
    println!("host server into a function: {mbps50:.1} MB/s (median of 3 downloads of 64 MiB)");
    let json = serde_json::json!({
        "benchmark": "network",
        "accelerator": accel.accel.name(),
        "accelerator_reason": accel.reason,
        "host_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_mb": args.memory,
        "restore_ms": {
            "egress": {"n": with.len(), "p50": w50, "p99": w99},
            "none": {"n": without.len(), "p50": n50, "p99": n99},
            "overhead_pct_p50": overhead,
        },
        "namespace_ms": {
            "on_demand": {"n": prepared.0.len(), "p50": o50, "p99": o99},
            "prepared_taken": {"n": prepared.1.len(), "p50": t50, "p99": t99},
        },
        "throughput_mb_s": {"median": mbps50, "runs": mbps},
    });
    println!();
    println!("{}", serde_json::to_string_pretty(&json)?);
    if let Some(p) = &args.json_out {
        std::fs::write(p, serde_json::to_string_pretty(&json)?)?;
    }
    Ok(())
}
