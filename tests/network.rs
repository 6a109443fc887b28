//! Instance networks on real microVMs. A test host (a network namespace
//! this test makes, joined to the host by a veth pair, 198.51.100.0/24)
//! runs an HTTP server and a DNS server; functions reach them through
//! their own namespaces, and reach nothing they must not: another
//! instance, flintd's TCP port, a host service, the metadata range. 50
//! instances reach the server at once; after they stop, and after `kill -9`
//! of flintd and a restart, the host's namespaces, links, addresses and
//! tables are counted back to what they were.
//!
//! The test host is set up with `ip` (test glue; flintd itself uses
//! netlink).

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use flint_e2e::*;
use flint_proto::node::v1 as pb;
use serde_json::{json, Value};
use tonic::transport::Channel;

const HOST_SIDE: &str = "198.51.100.1";
const SERVER: &str = "198.51.100.2";
const INSTANCE_CIDR: &str = "10.203.0.0/16";

const CODE: &[u8] = b"import socket, threading, time, urllib.request

def handler(event, context):
    op = event['op']
    if op == 'fetch':
        try:
            with urllib.request.urlopen(event['url'], timeout=event.get('timeout', 20)) as r:
                body = r.read()
            return {'ok': True, 'body': body.decode()}
        except Exception as e:
            return {'ok': False, 'error': repr(e)}
    if op == 'connect':
        out = {}
        def attempt(target):
            host, port = target.rsplit(':', 1)
            s = socket.socket()
            s.settimeout(event.get('timeout', 2))
            try:
                s.connect((host, int(port)))
                out[target] = 'open'
            except Exception as e:
                out[target] = type(e).__name__
            finally:
                s.close()
        threads = [threading.Thread(target=attempt, args=(t,)) for t in event['targets']]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out
    if op == 'resolve':
        try:
            return {'ok': True, 'addr': socket.gethostbyname(event['name'])}
        except Exception as e:
            return {'ok': False, 'error': repr(e)}
    raise ValueError(op)
";

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test host: a namespace with `SERVER`, joined to the host's
/// `HOST_SIDE`.
struct TestHost {
    ns: String,
    link: String,
}

impl TestHost {
    fn create() -> Self {
        let id = std::process::id() % 100_000;
        let (ns, link) = (format!("fltest{id}"), format!("ftv{id}"));
        // Left by a run that crashed.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &ns])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &link])
            .output();
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &link, "type", "veth", "peer", "name", "eth1", "netns", &ns,
        ]);
        ip(&["addr", "add", &format!("{HOST_SIDE}/24"), "dev", &link]);
        ip(&["link", "set", &link, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{SERVER}/24"),
            "dev",
            "eth1",
        ]);
        ip(&["-n", &ns, "link", "set", "eth1", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "route", "add", "default", "via", HOST_SIDE]);
        TestHost { ns, link }
    }

    /// Runs `f` on a thread inside the test host (sockets it opens stay
    /// there).
    fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(path).unwrap();
            // SAFETY: setns(2) on a descriptor that outlives the call; it
            // moves only this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0);
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.link])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .output();
    }
}

/// Requests that wait at `/barrier/N` until N have arrived.
#[derive(Default)]
struct Barrier {
    arrived: Mutex<usize>,
    cv: Condvar,
}

/// A small HTTP/1.0 server: `/hello`, `/bytes/N`, `/barrier/N`.
fn serve_http(l: TcpListener, barrier: Arc<Barrier>) {
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let barrier = barrier.clone();
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
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                let body: Vec<u8> = if path == "/hello" {
                    b"hello from the test host".to_vec()
                } else if let Some(n) = path.strip_prefix("/bytes/") {
                    vec![b'x'; n.parse().unwrap_or(0)]
                } else if let Some(n) = path.strip_prefix("/barrier/") {
                    let want: usize = n.parse().unwrap_or(1);
                    let mut arrived = barrier.arrived.lock().unwrap();
                    *arrived += 1;
                    barrier.cv.notify_all();
                    let (arrived, _) = barrier
                        .cv
                        .wait_timeout_while(arrived, Duration::from_secs(900), |a| *a < want)
                        .unwrap();
                    format!("released at {}", *arrived).into_bytes()
                } else {
                    b"not found".to_vec()
                };
                let head = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&body);
            });
        }
    });
}

/// Answers `A server.test` with `SERVER`; every other name is NXDOMAIN.
fn serve_dns(sock: UdpSocket) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if n < 17 {
                continue;
            }
            let q = &buf[..n];
            // The question: labels from byte 12, then type and class.
            let mut i = 12;
            let mut labels = Vec::new();
            while i < n && q[i] != 0 {
                let len = q[i] as usize;
                labels.push(String::from_utf8_lossy(&q[i + 1..(i + 1 + len).min(n)]).to_string());
                i += 1 + len;
            }
            let end = (i + 5).min(n);
            let qtype = u16::from_be_bytes([q[(i + 1).min(n - 1)], q[(i + 2).min(n - 1)]]);
            let known = labels.join(".") == "server.test" && qtype == 1;
            let mut r = Vec::from(&q[..2]);
            r.extend_from_slice(if known { &[0x81, 0x80] } else { &[0x81, 0x83] });
            r.extend_from_slice(&[0, 1, 0, u8::from(known), 0, 0, 0, 0]);
            r.extend_from_slice(&q[12..end]);
            if known {
                r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                r.extend_from_slice(&SERVER.parse::<std::net::Ipv4Addr>().unwrap().octets());
            }
            let _ = sock.send_to(&r, from);
        }
    });
}

/// What the host has that instance networks add to: namespaces (of
/// processes and held open), links, IPv4 addresses, nftables tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HostCounts {
    namespaces: usize,
    links: usize,
    addresses: usize,
    tables: usize,
}

fn host_counts() -> HostCounts {
    let mut ns = std::collections::BTreeSet::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
            .is_none()
        {
            continue;
        }
        if let Ok(l) = std::fs::read_link(e.path().join("ns/net")) {
            ns.insert(l.to_string_lossy().to_string());
        }
        if let Ok(fds) = std::fs::read_dir(e.path().join("fd")) {
            for fd in fds.flatten() {
                if let Ok(l) = std::fs::read_link(fd.path()) {
                    let l = l.to_string_lossy().to_string();
                    if l.starts_with("net:[") {
                        ns.insert(l);
                    }
                }
            }
        }
    }
    let out = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .unwrap();
    HostCounts {
        namespaces: ns.len(),
        links: std::fs::read_dir("/sys/class/net").unwrap().count(),
        addresses: String::from_utf8_lossy(&out.stdout).lines().count(),
        tables: flint_daemon::network::nft::Socket::open()
            .unwrap()
            .tables()
            .unwrap()
            .len(),
    }
}

/// What a failed count is made of: the instance links on the host and
/// the VMM processes still running (by their run directory).
fn leftovers() -> String {
    let mut out = String::new();
    for l in std::fs::read_dir("/sys/class/net").unwrap().flatten() {
        let name = l.file_name().to_string_lossy().to_string();
        if name.starts_with("fl") {
            out += &format!("link {name}\n");
        }
    }
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.starts_with("qemu") {
            let cmd = std::fs::read_to_string(e.path().join("cmdline")).unwrap_or_default();
            let dir = cmd
                .split('\0')
                .find_map(|a| a.strip_prefix("socket,id=qmp,path="))
                .unwrap_or("?");
            out += &format!("vmm {} {dir}\n", e.file_name().to_string_lossy());
        }
    }
    out
}

/// Waits (60 s at most) until the host has no instance link (`fl<TAG>-*`)
/// of any node.
async fn settle_instance_links() {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let links: Vec<String> = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .map(|l| l.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("fl") && n.contains('-'))
            .collect();
        if links.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "instance links of another node are still here: {links:?}\n{}",
            leftovers()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn await_counts(want: impl Fn(&HostCounts) -> bool, what: &str) -> HostCounts {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = host_counts();
        if want(&c) {
            return c;
        }
        assert!(Instant::now() < deadline, "{what}: {c:?}\n{}", leftovers());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The IPv4 addresses of the instance links on the host, and the
/// namespace ends beside them.
fn instance_addresses() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .unwrap();
    let mut v = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(a) = line.split_whitespace().nth(3) else {
            continue;
        };
        let a = a.split('/').next().unwrap();
        if a.starts_with("10.203.") {
            let ip: std::net::Ipv4Addr = a.parse().unwrap();
            v.push(a.to_string());
            v.push(std::net::Ipv4Addr::from(u32::from(ip) + 1).to_string());
        }
    }
    v
}

async fn create(
    c: &mut flint_proto::node::v1::functions_client::FunctionsClient<Channel>,
    name: &str,
    network: Option<pb::NetworkConfig>,
    timeout: u32,
) {
    c.create_function(pb::CreateFunctionRequest {
        function_name: name.into(),
        runtime: "python3.11".into(),
        handler: "app.handler".into(),
        zip_file: zip_files(&[("app.py", CODE, 0o644)]),
        timeout,
        network_config: network,
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn call(
    c: &mut flint_proto::node::v1::functions_client::FunctionsClient<Channel>,
    name: &str,
    qualifier: &str,
    payload: Value,
) -> Value {
    let r = c
        .invoke(pb::InvokeRequest {
            function_name: name.into(),
            qualifier: qualifier.into(),
            payload: payload.to_string().into_bytes(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("invoke {name}: {e}"))
        .into_inner();
    assert!(
        r.function_error.is_empty(),
        "{name}: {}",
        String::from_utf8_lossy(&r.payload)
    );
    serde_json::from_slice(&r.payload).unwrap()
}

/// Invokes `name` to fetch `url` and asserts that it got an answer.
async fn fetch_ok(
    c: &mut flint_proto::node::v1::functions_client::FunctionsClient<Channel>,
    name: &str,
    qualifier: &str,
    url: &str,
) {
    let r = call(c, name, qualifier, json!({"op": "fetch", "url": url})).await;
    assert_eq!(r["ok"], true, "{name}: {r}");
}

/// Publishes `$LATEST`; returns the version.
async fn publish(
    c: &mut flint_proto::node::v1::functions_client::FunctionsClient<Channel>,
    name: &str,
) -> String {
    c.publish_version(pb::PublishVersionRequest {
        function_name: name.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .version
}

fn rule(cidr: &str, protocol: &str, from: u32, to: u32) -> pb::EgressRule {
    pb::EgressRule {
        cidr: cidr.into(),
        protocol: protocol.into(),
        from_port: from,
        to_port: to,
    }
}

fn free_port(addr: &str) -> u16 {
    TcpListener::bind((addr, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_reach_what_their_rules_allow_and_nothing_else() {
    let dir = tempfile::Builder::new()
        .prefix("flint-network-")
        .tempdir()
        .unwrap();
    let test_host = TestHost::create();
    let barrier = Arc::new(Barrier::default());
    {
        let barrier = barrier.clone();
        test_host.inside(move || {
            for port in [8080, 8081] {
                serve_http(TcpListener::bind((SERVER, port)).unwrap(), barrier.clone());
            }
            serve_dns(UdpSocket::bind((SERVER, 53)).unwrap());
        });
    }
    // A host service that no rule allows, and one that a rule names.
    let accepted = Arc::new(AtomicUsize::new(0));
    let host_service = TcpListener::bind((HOST_SIDE, 0)).unwrap();
    let service_port = host_service.local_addr().unwrap().port();
    {
        let accepted = accepted.clone();
        std::thread::spawn(move || {
            for c in host_service.incoming().flatten() {
                accepted.fetch_add(1, Ordering::SeqCst);
                drop(c);
            }
        });
    }
    let tls = TestTls::generate(dir.path());
    let flintd_port = free_port("0.0.0.0");
    let extra = format!(
        "[network]\ninstance_cidr = {INSTANCE_CIDR:?}\ndns = {SERVER:?}\nprepared = 2\n\
         [tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        tls.ca, tls.server_cert, tls.server_key
    );
    let listen = [format!("0.0.0.0:{flintd_port}")];
    // The baseline is taken once the instance networks of earlier test
    // binaries are gone: the kernel destroys a namespace (and the link pair
    // in it) some time after its last descriptor closes, so one left by the
    // binary that ran just before may still be there now and vanish later.
    settle_instance_links().await;
    let before = host_counts();
    {
        let mut probe =
            std::net::TcpStream::connect((SERVER, 8080)).expect("the test host's server");
        probe.write_all(b"GET /hello HTTP/1.0\r\n\r\n").unwrap();
        let mut answer = String::new();
        probe.read_to_string(&mut answer).unwrap();
        assert!(answer.ends_with("hello from the test host"), "{answer}");
    }

    let mut flintd = spawn_flintd_with(dir.path(), "", 0xc_0000, &listen, &extra);
    let endpoint = flintd.endpoint.clone();
    let mut c = flint_daemon::client::functions(&endpoint).await.unwrap();
    let hello = format!("http://{SERVER}:8080/hello");

    // Outbound by default, by address and by name.
    create(&mut c, "net-open", None, 30).await;
    let r = call(&mut c, "net-open", "", json!({"op": "fetch", "url": hello})).await;
    assert_eq!(
        r,
        json!({"ok": true, "body": "hello from the test host"}),
        "{r}"
    );
    let r = call(
        &mut c,
        "net-open",
        "",
        json!({"op": "resolve", "name": "server.test"}),
    )
    .await;
    assert_eq!(r["addr"], SERVER, "{r}");
    fetch_ok(&mut c, "net-open", "", "http://server.test:8081/hello").await;

    // From a function snapshot: the first invocation of a restored clone
    // reaches the server at once, and so does a second clone (a spare).
    let v = publish(&mut c, "net-open").await;
    fetch_ok(&mut c, "net-open", &v, &hello).await;
    let (mut c1, mut c2) = (c.clone(), c.clone());
    let slow = |port| json!({"op": "fetch", "url": format!("http://{SERVER}:{port}/hello")});
    let (a, b) = tokio::join!(
        call(&mut c1, "net-open", &v, slow(8080)),
        call(&mut c2, "net-open", &v, slow(8081))
    );
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(b["ok"], true, "{b}");
    let mut node = flint_proto::node::v1::node_client::NodeClient::new(
        flint_daemon::client::channel(&endpoint).await.unwrap(),
    );
    let listed = node
        .list_instances(pb::ListInstancesRequest {
            function_name: "net-open".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .instances;
    let restored: Vec<_> = listed
        .iter()
        .filter(|i| i.function_version == v)
        .map(|i| i.start_kind.as_str())
        .collect();
    assert!(
        !restored.is_empty() && restored.iter().all(|k| *k == "function-snapshot"),
        "{restored:?}"
    );

    // What no instance reaches: the namespaces of other instances (of this
    // function, and of another one started here) and the host's ends of
    // their links, flintd's TCP port, a host service, the metadata
    // address. The test host's server is the control.
    create(&mut c, "net-other", None, 30).await;
    fetch_ok(&mut c, "net-other", "", &hello).await;
    let mut targets: Vec<String> = instance_addresses()
        .iter()
        .flat_map(|a| [format!("{a}:22"), format!("{a}:{flintd_port}")])
        .collect();
    assert!(targets.len() >= 4, "no instance links found: {targets:?}");
    targets.push(format!("{HOST_SIDE}:{flintd_port}"));
    targets.push(format!("{HOST_SIDE}:{service_port}"));
    targets.push("169.254.169.254:80".into());
    targets.push("169.254.0.1:22".into());
    targets.push(format!("{SERVER}:8080"));
    let r = call(
        &mut c,
        "net-open",
        "",
        json!({"op": "connect", "targets": targets}),
    )
    .await;
    for t in &targets {
        let want_open = t == &format!("{SERVER}:8080");
        assert_eq!(r[t] == "open", want_open, "{t}: {r}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0);

    // `none`: nothing at all, not even the resolver.
    create(
        &mut c,
        "net-none",
        Some(pb::NetworkConfig {
            mode: "none".into(),
            egress: vec![],
        }),
        30,
    )
    .await;
    let r = call(
        &mut c,
        "net-none",
        "",
        json!({"op": "connect", "targets": [format!("{SERVER}:8080")]}),
    )
    .await;
    assert_ne!(r[format!("{SERVER}:8080")], "open", "{r}");
    let r = call(
        &mut c,
        "net-none",
        "",
        json!({"op": "resolve", "name": "server.test"}),
    )
    .await;
    assert_eq!(r["ok"], false, "{r}");

    // A rule allows exactly its CIDR and port; one that names a host
    // address opens that address (and port) only.
    create(
        &mut c,
        "net-rule",
        Some(pb::NetworkConfig {
            mode: "egress".into(),
            egress: vec![
                rule(&format!("{SERVER}/32"), "tcp", 8080, 8080),
                rule(
                    &format!("{HOST_SIDE}/32"),
                    "tcp",
                    u32::from(service_port),
                    u32::from(service_port),
                ),
            ],
        }),
        30,
    )
    .await;
    let targets = [
        format!("{SERVER}:8080"),
        format!("{SERVER}:8081"),
        format!("{HOST_SIDE}:{service_port}"),
        format!("{HOST_SIDE}:{flintd_port}"),
    ];
    let r = call(
        &mut c,
        "net-rule",
        "",
        json!({"op": "connect", "targets": targets}),
    )
    .await;
    assert_eq!(r[&targets[0]], "open", "{r}");
    assert_ne!(r[&targets[1]], "open", "{r}");
    assert_eq!(r[&targets[2]], "open", "{r}");
    assert_ne!(r[&targets[3]], "open", "{r}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // Bad rules are typed errors.
    let bad = c
        .create_function(pb::CreateFunctionRequest {
            function_name: "net-bad".into(),
            runtime: "python3.11".into(),
            handler: "app.handler".into(),
            zip_file: zip_files(&[("app.py", CODE, 0o644)]),
            network_config: Some(pb::NetworkConfig {
                mode: "egress".into(),
                egress: vec![rule("10.0.0.1/8", "tcp", 80, 80)],
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad}");
    assert!(bad.message().contains("host bits"), "{bad}");

    // 50 instances at once: each holds its request at the server until all
    // 50 have arrived.
    const MANY: usize = 50;
    create(&mut c, "net-many", None, 600).await;
    let v = publish(&mut c, "net-many").await;
    let started = Instant::now();
    let calls: Vec<_> = (0..MANY)
        .map(|_| {
            let mut c = c.clone();
            let v = v.clone();
            tokio::spawn(async move {
                let url = format!("http://{SERVER}:8080/barrier/{MANY}");
                call(
                    &mut c,
                    "net-many",
                    &v,
                    json!({"op": "fetch", "url": url, "timeout": 900}),
                )
                .await
            })
        })
        .collect();
    for h in calls {
        let r = h.await.unwrap();
        assert_eq!(r["ok"], true, "{r}");
    }
    eprintln!(
        "{MANY} instances reached the server together after {:?}",
        started.elapsed()
    );
    let n = node
        .list_instances(pb::ListInstancesRequest {
            function_name: "net-many".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .instances
        .len();
    assert!(n >= MANY, "{n} instances");
    let during = host_counts();
    assert!(during.links >= before.links + MANY, "{before:?} {during:?}");

    // Stopping them tears their networks down: only the prepared ones and
    // those of the other functions' instances remain.
    for f in ["net-many", "net-open", "net-none", "net-rule", "net-other"] {
        c.delete_function(pb::DeleteFunctionRequest {
            function_name: f.into(),
        })
        .await
        .unwrap();
    }
    let after_delete = await_counts(
        |c| c.links <= before.links + 2 + 1,
        "networks of stopped instances",
    )
    .await;
    eprintln!(
        "before {before:?}, with {MANY} instances {during:?}, after deleting {after_delete:?}"
    );

    // A crash leaves nothing that a restart does not remove; a graceful
    // stop removes the rest.
    create(&mut c, "net-crash", None, 30).await;
    fetch_ok(&mut c, "net-crash", "", &hello).await;
    flintd.child.kill().unwrap();
    flintd.child.wait().unwrap();
    drop(flintd);
    let flintd = spawn_flintd_with(dir.path(), "", 0xc_0000, &listen, &extra);
    let mut c = flint_daemon::client::functions(&flintd.endpoint)
        .await
        .unwrap();
    fetch_ok(&mut c, "net-crash", "", &hello).await;
    // SAFETY: kill(2) on flintd's pid, which this test started.
    unsafe { libc::kill(flintd.child.id() as i32, libc::SIGTERM) };
    let mut flintd = flintd;
    flintd.child.wait().unwrap();
    let after = await_counts(|c| c == &before, "the host after flintd stopped").await;
    assert_eq!(after, before);
}
