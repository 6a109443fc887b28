//! What the node shows of itself: capacity, instances, node information,
//! and the operator's stop commands.

use std::sync::Arc;

use super::{InstanceStatus, Node, NodeError, NodeInfo, Provisioning, RuntimeImage};
use crate::functions::FunctionsError;
use crate::launch::InstanceInfo;
use crate::packages::Runtime;
use crate::pool::Capacity;

impl Node {
    /// The node's capacity and its use.
    pub fn capacity(&self) -> Capacity {
        self.pool.capacity()
    }

    /// The provisioning loop's state (the server runs the loop).
    pub fn provisioning(&self) -> &Arc<Provisioning> {
        &self.provisioning
    }

    pub fn instances(&self, function: &str) -> Vec<InstanceInfo> {
        self.pool
            .instances()
            .into_iter()
            .filter(|i| function.is_empty() || i.function == function)
            .collect()
    }

    /// A function's instances (every instance with `""`) with the host
    /// memory each VMM holds.
    pub fn instance_status(&self, function: &str) -> Vec<InstanceStatus> {
        self.instances(function)
            .into_iter()
            .map(|info| InstanceStatus {
                rss_kb: crate::engine::process_rss_kb(info.pid),
                info,
            })
            .collect()
    }

    /// The node: engine, artefacts, host, instances, capacity and limits.
    pub fn info(&self) -> NodeInfo {
        let cfg = &self.config;
        let mb = |key| crate::config::meminfo_kb(key).unwrap_or(0) / 1024;
        let resolved = |p: std::path::PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
        NodeInfo {
            engine: crate::engine::qemu_version(&cfg.qemu),
            accel: self.accel().clone(),
            kernel: resolved(cfg.kernel()),
            runtime_images: Runtime::ALL
                .iter()
                .map(|r| {
                    let path = cfg.runtime_image(r.name());
                    RuntimeImage {
                        runtime: r.name(),
                        size: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
                        path: resolved(path),
                    }
                })
                .collect(),
            cpus: crate::engine::host_cpus(),
            memory_total_mb: mb("MemTotal:"),
            memory_available_mb: mb("MemAvailable:"),
            instances: self.instance_status(""),
            functions: self.list_functions().map(|f| f.len() as u32).unwrap_or(0),
            data_dir: cfg.data_dir.clone(),
            started: self.started,
            capacity: self.capacity(),
            log_bytes_stored: self.logs.stored_bytes(None),
            log_bytes_dropped: self.logs.dropped_bytes(None),
            vmm_confinement: self.confinement(),
            init_limits: self.init_limits(),
            starts: self.pool.launcher().start_settings(),
            start_counts: self.pool.launcher().start_counts(),
            networks: match self.pool.launcher().network() {
                Some(n) => {
                    let s = n.stats();
                    format!(
                        "{} ({} in use, {} ready, {} prepared, mean {:.2} ms each)",
                        n.settings().instance_cidr,
                        s.in_use,
                        s.ready,
                        s.prepared_total,
                        s.prepare_mean_us as f64 / 1000.0
                    )
                }
                None if cfg.network.enabled => "unavailable".into(),
                None => "off".into(),
            },
        }
    }

    /// Stops one instance, or all of a function's. Returns the ids stopped.
    pub async fn stop_instances(
        &self,
        instance_id: &str,
        function: &str,
    ) -> Result<Vec<String>, NodeError> {
        if !instance_id.is_empty() {
            if self.pool.stop_instance(instance_id).await {
                return Ok(vec![instance_id.to_string()]);
            }
            return Err(FunctionsError::Invalid {
                field: "InstanceId",
                rule: format!("no instance {instance_id:?} on this node"),
            }
            .into());
        }
        self.store.get(function)?;
        Ok(self.pool.stop_function(function).await)
    }

    /// Stops instances idle for longer than the configured idle timeout.
    pub async fn reclaim_idle(&self) -> Vec<String> {
        let stopped = self.pool.reclaim_idle().await;
        if !stopped.is_empty() {
            tracing::info!(instances = stopped.len(), "idle instances reclaimed");
        }
        stopped
    }
}
