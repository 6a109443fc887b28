//! flintd's settings, with embedded defaults so that `flintd` alone runs.
//!
//! Why one file of 700 lines: the whole schema of `flintd.toml`, its
//! embedded defaults and their checks stay side by side, so that a setting
//! and the rule that refuses a bad value of it are read together.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid listen address {0:?}: expected a unix socket path or host:port")]
    Listen(String),
    #[error("invalid accelerator {0:?}: expected auto, kvm or tcg")]
    Accel(String),
    #[error("reading the configuration file {0} failed")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("configuration file {0}: {1}")]
    Parse(PathBuf, String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Where the gRPC API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Listen::Unix(PathBuf::from(p)));
        }
        if s.starts_with('/') || s.starts_with('.') {
            return Ok(Listen::Unix(PathBuf::from(s)));
        }
        let s = s.strip_prefix("http://").unwrap_or(s);
        if let Ok(a) = s.parse() {
            return Ok(Listen::Tcp(a));
        }
        if let Some(port) = s.strip_prefix("localhost:") {
            if let Ok(p) = port.parse::<u16>() {
                return Ok(Listen::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], p))));
            }
        }
        Err(ConfigError::Listen(s.into()))
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
            Listen::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// Which accelerator the engine asks QEMU for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for AccelChoice {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            other => Err(ConfigError::Accel(other.into())),
        }
    }
}

/// The broker `scripts/setup` installs and starts for the embedded
/// defaults: Debian's redis-server on loopback.
pub const DEFAULT_BROKER_URL: &str = "redis://127.0.0.1:6379/";

#[derive(Debug, Clone)]
pub struct Config {
    /// Metadata, code, logs and per-instance files.
    pub data_dir: PathBuf,
    pub listen: Vec<Listen>,
    /// The group that may use the unix sockets (mode 0660, owner root).
    pub socket_group: String,
    /// Guest kernel (`vmlinux`) and runtime images (`<runtime>.erofs`), as
    /// `scripts/setup` leaves them.
    pub artifacts_dir: PathBuf,
    pub qemu: PathBuf,
    pub accel: AccelChoice,
    /// Region and account in ARNs and the guest environment.
    pub region: String,
    pub account_id: String,
    /// From QEMU start to the agent's first message.
    pub boot_timeout: Duration,
    /// From configuring the instance to the runtime's first `next`. `None`:
    /// Lambda's 10 s under KVM, [`TCG_INIT_FACTOR`] times that under TCG
    /// ([`Config::init_timeout_for`]).
    pub init_timeout: Option<Duration>,
    /// The init that builds a function snapshot (SnapStart: 15 minutes).
    pub snapshot_init_timeout: Duration,
    /// On SIGTERM, how long in-flight invocations may take to finish.
    pub shutdown_grace: Duration,
    /// Bytes of deployment packages (functions and layers) the node keeps.
    pub code_storage_limit: u64,
    pub logs: crate::logs::LogLimits,
    /// Start instances from snapshots (runtime and function snapshots).
    pub snapshots: bool,
    /// Function snapshots for `$LATEST` too (published versions always).
    pub snapshot_latest: bool,
    /// Keep a QEMU process started ahead for each function snapshot in use.
    pub spare_vms: bool,
    /// Stop an instance's vCPUs between invocations.
    pub freeze_idle: bool,
    /// Stop instances idle for longer than this.
    pub idle_timeout: Duration,
    /// At most this many instances on the node.
    pub max_instances: u32,
    /// Host memory the instances may use, in MB (default: 3/4 of the host's).
    pub memory_budget_mb: u64,
    /// Concurrency kept for functions without a reservation (default: a
    /// tenth of `max_instances`, at least 1).
    pub unreserved_min: Option<u32>,
    /// How each VMM process is confined (uid, namespace, cgroup, seccomp).
    pub vmm: crate::engine::jail::JailSettings,
    /// Mutual TLS for TCP listeners; without it flintd serves no TCP.
    pub tls: Option<TlsFiles>,
    /// The start scheduler (`[starts]`); unset fields take the host's
    /// defaults ([`Config::start_settings`]).
    pub starts: FileStarts,
    /// The period of one utilization datapoint of provisioned-concurrency
    /// autoscaling (`[autoscaling] period_s`; CloudWatch's minute).
    pub autoscaling_period: Duration,
    /// How often each pipeline's branch is read (`[pipelines]
    /// poll_interval_ms`).
    pub pipeline_poll: Duration,
    /// The dispatcher of asynchronous events (`[async]`, and the test-only
    /// `[testing] async_time_scale`).
    pub events: crate::events::EventSettings,
    /// The broker that holds queues (`[broker] url`, a `redis://` URL);
    /// `None` (or empty): no queues on this node.
    pub broker_url: Option<String>,
    /// Instance networks (`[network]`).
    pub network: crate::network::NetworkSettings,
    /// The Prometheus endpoint's address (`[metrics] listen`); `None`: off.
    pub metrics_listen: Option<String>,
    /// How long `GetMetricStatistics` can look back (`[metrics] window_s`).
    pub metrics_window: Duration,
    /// OTLP traces (`[tracing]`); `None`: off.
    pub tracing: Option<crate::observe::trace::TraceSettings>,
}

/// The PEM files of mutual TLS on TCP (`[tls]` in flintd.toml).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA that signs the certificates of allowed clients.
    pub ca: PathBuf,
    /// flintd's certificate (chain) and private key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The TOML configuration file: every key optional, defaults as in
/// [`Config::default`]. Documented in `docs/configuration.md`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<Vec<String>>,
    pub socket_group: Option<String>,
    pub artifacts_dir: Option<PathBuf>,
    pub qemu: Option<PathBuf>,
    pub accel: Option<String>,
    pub region: Option<String>,
    pub account_id: Option<String>,
    pub boot_timeout_s: Option<u64>,
    pub init_timeout_s: Option<u64>,
    pub snapshot_init_timeout_s: Option<u64>,
    pub shutdown_grace_s: Option<u64>,
    pub code_storage_limit_mb: Option<u64>,
    pub logs: Option<FileLogs>,
    pub snapshots: Option<FileSnapshots>,
    pub instances: Option<FileInstances>,
    pub vmm: Option<FileVmm>,
    pub tls: Option<TlsFiles>,
    pub starts: Option<FileStarts>,
    pub autoscaling: Option<FileAutoscaling>,
    #[serde(rename = "async")]
    pub events: Option<FileAsync>,
    pub testing: Option<FileTesting>,
    pub pipelines: Option<FilePipelines>,
    pub broker: Option<FileBroker>,
    pub network: Option<FileNetwork>,
    pub metrics: Option<FileMetrics>,
    pub tracing: Option<FileTracing>,
}

/// `[metrics]`: the Prometheus endpoint and the statistics window (see
/// `docs/observability.md`).
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMetrics {
    /// Serve the endpoint on [`DEFAULT_METRICS`] when `listen` is unset.
    pub enabled: Option<bool>,
    /// `HOST:PORT` of the endpoint (`127.0.0.1:9464`); unset: off, unless
    /// `enabled`.
    pub listen: Option<String>,
    /// Seconds `GetMetricStatistics` can look back (default 10800).
    pub window_s: Option<u64>,
}

/// `[tracing]`: OTLP traces of invocations.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTracing {
    /// The collector's OTLP/gRPC endpoint (`http://127.0.0.1:4317`);
    /// unset: tracing is off.
    pub otlp_endpoint: Option<String>,
    /// Share of new traces sampled, 0 to 1 (default 1).
    pub sample_ratio: Option<f64>,
    /// `service.name` of the spans (default `flintd`).
    pub service_name: Option<String>,
}

/// `[network]`: instance networks (see `docs/networking.md`).
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileNetwork {
    /// Off: every instance's NIC has nothing behind it.
    pub enabled: Option<bool>,
    /// The veth pairs' addresses, one /30 per instance (`10.200.0.0/16`).
    pub instance_cidr: Option<String>,
    /// The resolver behind the guest's `169.254.0.1`; empty: no DNS.
    /// Default: the host's first non-loopback nameserver.
    pub dns: Option<String>,
    /// Namespaces prepared ahead.
    pub prepared: Option<usize>,
    /// Names this node's host table and links apart from another node's
    /// on the same host (tests): at most 3 of a-z, 0-9.
    pub tag: Option<String>,
}

/// `[broker]`: the Redis server that holds SQS-shaped queues.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBroker {
    /// `redis://HOST:PORT[/DB]`; empty: no broker.
    pub url: Option<String>,
}

/// `[async]`: how many asynchronous events run at once, over all functions.
#[derive(Debug, Default, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAsync {
    pub concurrency: Option<u32>,
}

/// `[pipelines]`: how often flintd reads the branches pipelines watch.
#[derive(Debug, Default, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePipelines {
    pub poll_interval_ms: Option<u64>,
}

/// `[testing]`: settings that exist for the test suite only. They shorten
/// Lambda's fixed delays and are never meant for a node that serves users.
#[derive(Debug, Default, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTesting {
    /// Multiplies every delay and age of asynchronous invocation (retry
    /// delays, backoffs, maximum event age): 0.001 makes a minute 60 ms.
    pub async_time_scale: Option<f64>,
}

/// `[autoscaling]`: how provisioned concurrency that follows load measures
/// utilization.
#[derive(Debug, Default, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAutoscaling {
    pub period_s: Option<f64>,
}

/// `[starts]`: how many starts run at once, and each function's scaling
/// rate (`scale_instances` new instances per `scale_interval_s`).
#[derive(Debug, Default, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStarts {
    pub slots: Option<u32>,
    pub scale_instances: Option<u32>,
    pub scale_interval_s: Option<f64>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileVmm {
    pub confine: Option<bool>,
    pub uid_base: Option<u32>,
    pub uid_count: Option<u32>,
    pub gid: Option<u32>,
    pub overhead_mb: Option<u32>,
    pub mb_per_vcpu: Option<u32>,
    pub pids_max: Option<u32>,
    pub cgroup: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileInstances {
    pub freeze_idle: Option<bool>,
    pub idle_timeout_s: Option<u64>,
    pub max_instances: Option<u32>,
    pub memory_budget_mb: Option<u64>,
    pub unreserved_min: Option<u32>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSnapshots {
    pub enabled: Option<bool>,
    pub latest: Option<bool>,
    pub spare_vms: Option<bool>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLogs {
    pub max_stream_mb: Option<u64>,
    pub retention_days: Option<u64>,
    pub max_function_mb: Option<u64>,
    pub max_node_mb: Option<u64>,
}

/// A field of `/proc/meminfo` (`"MemTotal:"`, ...) in KiB, if it can be read.
pub fn meminfo_kb(key: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    })
}

/// The host's memory in MB (4096 when it cannot be read).
pub fn host_memory_mb() -> u64 {
    meminfo_kb("MemTotal:").map(|kb| kb / 1024).unwrap_or(4096)
}

/// Where `scripts/setup` leaves a runtime's image in the artefacts folder.
pub fn runtime_image_in(artifacts_dir: &std::path::Path, runtime: &str) -> PathBuf {
    artifacts_dir.join(format!("{runtime}.erofs"))
}

/// The default unix socket, shared by flintd and flintctl.
pub const DEFAULT_SOCKET: &str = "/run/flint/flintd.sock";
/// Lambda's on-demand init limit.
pub const LAMBDA_INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much longer the default init limit is under TCG: guest code is
/// emulated there, roughly 5 to 10 times slower than under KVM (a cold
/// boot with Python's init takes about 3.3 s here against a few hundred
/// ms on KVM hosts), so an init that fits Lambda's 10 s on KVM gets 60 s.
pub const TCG_INIT_FACTOR: u32 = 6;

/// The Prometheus endpoint's address when `[metrics] enabled` names none:
/// loopback, on the port OpenTelemetry's Prometheus exporters use.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9464";

/// The default TCP address.
pub const DEFAULT_TCP: &str = "127.0.0.1:50051";

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/flint"),
            // TCP only where mutual TLS is configured.
            listen: vec![Listen::Unix(PathBuf::from(DEFAULT_SOCKET))],
            socket_group: "flint".into(),
            artifacts_dir: PathBuf::from("/var/cache/flint/current"),
            qemu: PathBuf::from("qemu-system-x86_64"),
            accel: AccelChoice::Auto,
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
            boot_timeout: Duration::from_secs(30),
            init_timeout: None,
            snapshot_init_timeout: Duration::from_secs(15 * 60),
            shutdown_grace: Duration::from_secs(30),
            code_storage_limit: 75 * 1024 * 1024 * 1024,
            logs: crate::logs::LogLimits::default(),
            snapshots: true,
            snapshot_latest: false,
            spare_vms: true,
            freeze_idle: true,
            idle_timeout: Duration::from_secs(600),
            max_instances: 256,
            memory_budget_mb: host_memory_mb() * 3 / 4,
            unreserved_min: None,
            vmm: crate::engine::jail::JailSettings::default(),
            tls: None,
            starts: FileStarts::default(),
            autoscaling_period: Duration::from_secs(60),
            pipeline_poll: Duration::from_secs(2),
            events: crate::events::EventSettings::default(),
            broker_url: Some(DEFAULT_BROKER_URL.into()),
            network: crate::network::NetworkSettings::default(),
            metrics_listen: None,
            metrics_window: Duration::from_secs(3 * 3600),
            tracing: None,
        }
    }
}

impl Config {
    /// The on-demand init limit in force under `accel`.
    pub fn init_timeout_for(&self, accel: crate::engine::Accel) -> Duration {
        self.init_timeout.unwrap_or(match accel {
            crate::engine::Accel::Kvm => LAMBDA_INIT_TIMEOUT,
            crate::engine::Accel::Tcg => LAMBDA_INIT_TIMEOUT * TCG_INIT_FACTOR,
        })
    }

    /// The start scheduler in force under `accel` on a host with `cpus`
    /// CPUs: the configured values over [`StartSettings::for_host`].
    ///
    /// [`StartSettings::for_host`]: crate::launch::StartSettings::for_host
    pub fn start_settings(
        &self,
        accel: crate::engine::Accel,
        cpus: u32,
    ) -> crate::launch::StartSettings {
        let d = crate::launch::StartSettings::for_host(cpus, accel == crate::engine::Accel::Kvm);
        let s = &self.starts;
        crate::launch::StartSettings {
            slots: s.slots.unwrap_or(d.slots),
            scale_instances: s.scale_instances.unwrap_or(d.scale_instances),
            scale_interval: s
                .scale_interval_s
                .map(Duration::from_secs_f64)
                .unwrap_or(d.scale_interval),
        }
    }

    /// Refuses what flintd must not serve: TCP without mutual TLS.
    pub fn check(&self) -> Result<(), ConfigError> {
        let tcp = self.listen.iter().find(|l| matches!(l, Listen::Tcp(_)));
        if let (Some(l), None) = (tcp, &self.tls) {
            return Err(ConfigError::Invalid(format!(
                "listen {l}: TCP is served only with mutual TLS; set [tls] ca, cert and key"
            )));
        }
        Ok(())
    }

    /// Reads a TOML file over the defaults.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse(_, m) => ConfigError::Parse(path.to_path_buf(), m),
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let f: FileConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(PathBuf::new(), e.to_string()))?;
        let mut c = Config::default();
        if let Some(v) = f.data_dir {
            c.data_dir = v;
        }
        if let Some(v) = f.listen {
            c.listen = v.iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
        }
        if let Some(v) = f.socket_group {
            c.socket_group = v;
        }
        if let Some(v) = f.artifacts_dir {
            c.artifacts_dir = v;
        }
        if let Some(v) = f.qemu {
            c.qemu = v;
        }
        if let Some(v) = f.accel {
            c.accel = v.parse()?;
        }
        if let Some(v) = f.region {
            c.region = v;
        }
        if let Some(v) = f.account_id {
            c.account_id = v;
        }
        if let Some(v) = f.boot_timeout_s {
            c.boot_timeout = Duration::from_secs(v);
        }
        if let Some(v) = f.snapshot_init_timeout_s {
            c.snapshot_init_timeout = Duration::from_secs(v);
        }
        if let Some(v) = f.init_timeout_s {
            c.init_timeout = Some(Duration::from_secs(v));
        }
        if let Some(v) = f.shutdown_grace_s {
            c.shutdown_grace = Duration::from_secs(v);
        }
        if let Some(v) = f.code_storage_limit_mb {
            c.code_storage_limit = v * 1024 * 1024;
        }
        if let Some(sn) = f.snapshots {
            if let Some(v) = sn.enabled {
                c.snapshots = v;
            }
            if let Some(v) = sn.latest {
                c.snapshot_latest = v;
            }
            if let Some(v) = sn.spare_vms {
                c.spare_vms = v;
            }
        }
        if let Some(i) = f.instances {
            if let Some(v) = i.freeze_idle {
                c.freeze_idle = v;
            }
            if let Some(v) = i.idle_timeout_s {
                c.idle_timeout = Duration::from_secs(v);
            }
            if let Some(v) = i.max_instances {
                c.max_instances = v;
            }
            if let Some(v) = i.memory_budget_mb {
                c.memory_budget_mb = v;
            }
            if i.unreserved_min.is_some() {
                c.unreserved_min = i.unreserved_min;
            }
        }
        if let Some(v) = f.vmm {
            let j = &mut c.vmm;
            j.enabled = v.confine.unwrap_or(j.enabled);
            j.uid_base = v.uid_base.unwrap_or(j.uid_base);
            j.uid_count = v.uid_count.unwrap_or(j.uid_count);
            j.gid = v.gid.unwrap_or(j.gid);
            j.overhead_mb = v.overhead_mb.unwrap_or(j.overhead_mb);
            if v.mb_per_vcpu.is_some() {
                j.mb_per_vcpu = v.mb_per_vcpu;
            }
            j.pids_max = v.pids_max.unwrap_or(j.pids_max);
            if let Some(cg) = v.cgroup {
                c.vmm.cgroup_parent = cg;
            }
            if c.vmm.uid_base == 0 || c.vmm.gid == 0 {
                return Err(ConfigError::Invalid(
                    "vmm.uid_base and vmm.gid must not be 0 (root)".into(),
                ));
            }
        }
        c.tls = f.tls;
        if let Some(st) = f.starts {
            if st.slots == Some(0) || st.scale_instances == Some(0) {
                return Err(ConfigError::Invalid(
                    "starts.slots and starts.scale_instances must be at least 1".into(),
                ));
            }
            if st
                .scale_interval_s
                .is_some_and(|v| !(0.001..=3600.0).contains(&v))
            {
                return Err(ConfigError::Invalid(
                    "starts.scale_interval_s must be between 0.001 and 3600".into(),
                ));
            }
            c.starts = st;
        }
        if let Some(period) = f.autoscaling.and_then(|a| a.period_s) {
            if !(0.2..=3600.0).contains(&period) {
                return Err(ConfigError::Invalid(
                    "autoscaling.period_s must be between 0.2 and 3600".into(),
                ));
            }
            c.autoscaling_period = Duration::from_secs_f64(period);
        }
        if let Some(n) = f.events.and_then(|a| a.concurrency) {
            if !(1..=1000).contains(&n) {
                return Err(ConfigError::Invalid(
                    "async.concurrency must be between 1 and 1000".into(),
                ));
            }
            c.events.concurrency = n as usize;
        }
        if let Some(m) = f.metrics {
            let listen = match (m.listen.filter(|l| !l.is_empty()), m.enabled) {
                (_, Some(false)) => None,
                (Some(l), _) => Some(l),
                (None, Some(true)) => Some(DEFAULT_METRICS.to_string()),
                (None, None) => None,
            };
            if let Some(l) = listen {
                l.parse::<std::net::SocketAddr>().map_err(|e| {
                    ConfigError::Invalid(format!("metrics.listen {l:?}: {e} (HOST:PORT)"))
                })?;
                c.metrics_listen = Some(l);
            }
            if let Some(w) = m.window_s {
                if !(600..=7 * 86400).contains(&w) {
                    return Err(ConfigError::Invalid(
                        "metrics.window_s must be between 600 and 604800".into(),
                    ));
                }
                c.metrics_window = Duration::from_secs(w);
            }
        }
        if let Some(t) = f.tracing {
            if let Some(endpoint) = t.otlp_endpoint.filter(|e| !e.is_empty()) {
                let ratio = t.sample_ratio.unwrap_or(1.0);
                if !(0.0..=1.0).contains(&ratio) {
                    return Err(ConfigError::Invalid(
                        "tracing.sample_ratio must be between 0 and 1".into(),
                    ));
                }
                if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
                    return Err(ConfigError::Invalid(format!(
                        "tracing.otlp_endpoint {endpoint:?}: must be http://HOST:PORT"
                    )));
                }
                c.tracing = Some(crate::observe::trace::TraceSettings {
                    endpoint,
                    sample_ratio: ratio,
                    service_name: t.service_name.unwrap_or_else(|| "flintd".into()),
                });
            }
        }
        if let Some(url) = f.broker.and_then(|b| b.url) {
            c.broker_url = Some(url);
        }
        if let Some(n) = f.network {
            let bad =
                |e: crate::network::NetworkError| ConfigError::Invalid(format!("network: {e}"));
            let s = &mut c.network;
            if let Some(e) = n.enabled {
                s.enabled = e;
            }
            if let Some(cidr) = n.instance_cidr {
                s.instance_cidr = crate::network::Cidr::parse(&cidr).map_err(bad)?;
            }
            if let Some(dns) = n.dns {
                s.dns = if dns.is_empty() {
                    None
                } else {
                    Some(dns.parse().map_err(|_| {
                        ConfigError::Invalid(format!("network.dns {dns:?} is not an IPv4 address"))
                    })?)
                };
            }
            if let Some(p) = n.prepared {
                s.prepared = p.min(64);
            }
            if let Some(t) = n.tag {
                s.tag = t;
            }
            s.validate().map_err(bad)?;
        }
        if let Some(scale) = f.testing.and_then(|t| t.async_time_scale) {
            if !(scale > 0.0 && scale <= 1.0) {
                return Err(ConfigError::Invalid(
                    "testing.async_time_scale must be above 0 and at most 1".into(),
                ));
            }
            c.events.time_scale = scale;
        }
        if let Some(ms) = f.pipelines.and_then(|p| p.poll_interval_ms) {
            if !(100..=3_600_000).contains(&ms) {
                return Err(ConfigError::Invalid(
                    "pipelines.poll_interval_ms must be from 100 to 3600000".into(),
                ));
            }
            c.pipeline_poll = Duration::from_millis(ms);
        }
        c.check()?;
        if let Some(l) = f.logs {
            if let Some(v) = l.max_stream_mb {
                c.logs.max_stream_bytes = v * 1024 * 1024;
            }
            if let Some(v) = l.max_function_mb {
                c.logs.max_function_bytes = v * 1024 * 1024;
            }
            if let Some(v) = l.max_node_mb {
                c.logs.max_node_bytes = v * 1024 * 1024;
            }
            if let Some(v) = l.retention_days {
                c.logs.retention = Duration::from_secs(v * 24 * 3600);
            }
        }
        Ok(c)
    }

    /// Concurrency that reservations leave to the other functions.
    pub fn unreserved_min(&self) -> u32 {
        self.unreserved_min
            .unwrap_or(self.max_instances / 10)
            .clamp(1, self.max_instances.max(1))
    }

    pub fn log_limits(&self) -> crate::logs::LogLimits {
        self.logs
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("flint.db")
    }
    pub fn code_dir(&self) -> PathBuf {
        self.data_dir.join("code")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }
    pub fn snapshot_dir(&self) -> PathBuf {
        self.data_dir.join("snapshots")
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.data_dir.join("tmp")
    }
    pub fn kernel(&self) -> PathBuf {
        self.artifacts_dir.join("vmlinux")
    }
    pub fn runtime_image(&self, runtime: &str) -> PathBuf {
        runtime_image_in(&self.artifacts_dir, runtime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_limit_follows_the_accelerator_unless_set() {
        use crate::engine::Accel;
        let c = Config::default();
        assert_eq!(c.init_timeout_for(Accel::Kvm), Duration::from_secs(10));
        assert_eq!(c.init_timeout_for(Accel::Tcg), Duration::from_secs(60));
        assert_eq!(c.snapshot_init_timeout, Duration::from_secs(900));
        let c = Config::from_toml("init_timeout_s = 20\nsnapshot_init_timeout_s = 30\n").unwrap();
        assert_eq!(c.init_timeout_for(Accel::Tcg), Duration::from_secs(20));
        assert_eq!(c.snapshot_init_timeout, Duration::from_secs(30));
    }

    #[test]
    fn start_slots_default_from_the_host_and_bad_values_are_refused() {
        use crate::engine::Accel;
        let c = Config::default();
        assert_eq!(c.start_settings(Accel::Tcg, 4).slots, 4);
        assert_eq!(c.start_settings(Accel::Kvm, 4).slots, 8);
        let c =
            Config::from_toml("[starts]\nslots = 3\nscale_instances = 5\nscale_interval_s = 2.5\n")
                .unwrap();
        let s = c.start_settings(Accel::Kvm, 16);
        assert_eq!((s.slots, s.scale_instances), (3, 5));
        assert_eq!(s.scale_interval, Duration::from_millis(2500));
        for bad in [
            "slots = 0",
            "scale_instances = 0",
            "scale_interval_s = 0",
            "scale_interval_s = 1e9",
        ] {
            let e = Config::from_toml(&format!("[starts]\n{bad}\n")).unwrap_err();
            assert!(matches!(e, ConfigError::Invalid(_)), "{bad}: {e}");
        }
        assert!(
            Config::from_toml("[starts]\nslot = 1\n").is_err(),
            "unknown key"
        );
    }

    #[test]
    fn tcp_without_mutual_tls_is_refused() {
        let e = Config::from_toml("listen = [\"127.0.0.1:7000\"]\n").unwrap_err();
        assert!(e.to_string().contains("mutual TLS"), "{e}");
        assert!(Config::from_toml("[tls]\nca = \"/c\"\ncert = \"/p\"\n").is_err());
        // The default serves the unix socket only.
        assert!(Config::default()
            .listen
            .iter()
            .all(|l| matches!(l, Listen::Unix(_))));
        Config::default().check().unwrap();
    }

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            "/tmp/x.sock".parse::<Listen>().unwrap(),
            Listen::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            "unix:/a".parse::<Listen>().unwrap(),
            Listen::Unix("/a".into())
        );
        assert_eq!(
            "127.0.0.1:9".parse::<Listen>().unwrap(),
            Listen::Tcp("127.0.0.1:9".parse().unwrap())
        );
        assert_eq!(
            "localhost:9".parse::<Listen>().unwrap(),
            Listen::Tcp("127.0.0.1:9".parse().unwrap())
        );
        assert!("nonsense".parse::<Listen>().is_err());
    }

    #[test]
    fn metrics_and_tracing_are_off_unless_configured() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(
            (c.metrics_listen.clone(), c.tracing.is_none()),
            (None, true)
        );
        let c = Config::from_toml("[metrics]\nenabled = true\n").unwrap();
        assert_eq!(c.metrics_listen.as_deref(), Some(DEFAULT_METRICS));
        let c =
            Config::from_toml("[metrics]\nlisten = \"127.0.0.1:9100\"\nenabled = false\n").unwrap();
        assert_eq!(c.metrics_listen, None);
        let c =
            Config::from_toml("[metrics]\nlisten = \"127.0.0.1:9100\"\nwindow_s = 3600\n").unwrap();
        assert_eq!(c.metrics_listen.as_deref(), Some("127.0.0.1:9100"));
        assert_eq!(c.metrics_window, Duration::from_secs(3600));
        for bad in [
            "[metrics]\nlisten = \"localhost\"\n",
            "[metrics]\nwindow_s = 10\n",
            "[tracing]\notlp_endpoint = \"127.0.0.1:4317\"\n",
            "[tracing]\notlp_endpoint = \"http://127.0.0.1:4317\"\nsample_ratio = 2.0\n",
        ] {
            assert!(Config::from_toml(bad).is_err(), "{bad}");
        }
        let t = Config::from_toml(
            "[tracing]\notlp_endpoint = \"http://127.0.0.1:4317\"\nsample_ratio = 0.1\n",
        )
        .unwrap()
        .tracing
        .unwrap();
        assert_eq!((t.sample_ratio, t.service_name.as_str()), (0.1, "flintd"));
    }

    #[test]
    fn toml_overrides_defaults_and_refuses_unknown_keys() {
        let c = Config::from_toml(
            "data_dir = \"/srv/flint\"\nlisten = [\"127.0.0.1:7000\"]\naccel = \"tcg\"\n\
             shutdown_grace_s = 5\n[logs]\nretention_days = 1\n\
             [tls]\nca = \"/etc/flint/ca.pem\"\ncert = \"/etc/flint/flintd.pem\"\nkey = \"/etc/flint/flintd.key\"\n",
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/flint"));
        assert_eq!(
            c.listen,
            vec![Listen::Tcp("127.0.0.1:7000".parse().unwrap())]
        );
        assert_eq!(c.accel, AccelChoice::Tcg);
        assert_eq!(c.shutdown_grace, Duration::from_secs(5));
        assert_eq!(c.logs.retention, Duration::from_secs(86_400));
        assert_eq!(c.region, "us-east-1");
        assert!(Config::from_toml("no_such_key = 1").is_err());
        assert!(Config::from_toml("accel = \"fast\"").is_err());
        // The example shipped in scripts/ parses and matches the defaults.
        let example = include_str!("../../scripts/flintd.toml");
        let c = Config::from_toml(example).unwrap();
        assert_eq!(c.data_dir, Config::default().data_dir);
        assert_eq!(c.listen, Config::default().listen);
        assert_eq!(c.code_storage_limit, Config::default().code_storage_limit);
        assert_eq!(c.broker_url, Config::default().broker_url);
        assert_eq!(c.events.concurrency, Config::default().events.concurrency);
        // The async settings, and the test-only time scale, within bounds.
        let t = Config::from_toml(
            "[async]\nconcurrency = 4\n[testing]\nasync_time_scale = 0.01\n[broker]\nurl = \"\"\n",
        )
        .unwrap();
        assert_eq!((t.events.concurrency, t.events.time_scale), (4, 0.01));
        assert_eq!(t.broker_url.as_deref(), Some(""));
        assert!(Config::from_toml("[async]\nconcurrency = 0").is_err());
        assert!(Config::from_toml("[testing]\nasync_time_scale = 2.0").is_err());
        // [network]: the example's values are the defaults; bad ones are
        // refused.
        assert_eq!(
            c.network.instance_cidr,
            Config::default().network.instance_cidr
        );
        assert_eq!(c.network.prepared, Config::default().network.prepared);
        let n = Config::from_toml(
            "[network]\ninstance_cidr = \"10.9.0.0/20\"\ndns = \"\"\ntag = \"t1\"\n",
        )
        .unwrap();
        assert_eq!(n.network.instance_cidr.to_string(), "10.9.0.0/20");
        assert_eq!((n.network.dns, n.network.tag.as_str()), (None, "t1"));
        assert!(Config::from_toml("[network]\ninstance_cidr = \"10.9.0.1/20\"").is_err());
        assert!(Config::from_toml("[network]\ninstance_cidr = \"10.9.0.0/30\"").is_err());
        assert!(Config::from_toml("[network]\ndns = \"resolver\"").is_err());
        assert!(Config::from_toml("[network]\ntag = \"TOO-LONG\"").is_err());
    }
}
