//! Reserved and provisioned concurrency: the API's rules, and the loop that
//! keeps each provisioned-concurrency config's instances ready.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::{Node, NodeError};
use crate::functions::{
    parse_qualifier, Function, FunctionsError, ProvisionedConfig, Qualifier, LATEST,
};
use crate::invoke::Invoker;
use crate::launch::{InstanceState, Started};
use crate::pool::{Lease, Pool};

/// Provisioned instances of one config started at the same time.
const PARALLEL_STARTS: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisionedStatus {
    InProgress,
    Ready,
    Failed,
}

impl ProvisionedStatus {
    pub fn name(self) -> &'static str {
        match self {
            ProvisionedStatus::InProgress => "IN_PROGRESS",
            ProvisionedStatus::Ready => "READY",
            ProvisionedStatus::Failed => "FAILED",
        }
    }
}

/// A config as `GetProvisionedConcurrencyConfig` reports it.
#[derive(Debug, Clone)]
pub struct ProvisionedView {
    pub config: ProvisionedConfig,
    pub function_arn: String,
    /// Instances initialised.
    pub allocated: u32,
    /// Instances initialised and not serving an invocation.
    pub available: u32,
    pub status: ProvisionedStatus,
    pub reason: String,
    /// Set when a scalable target follows load with it.
    pub scaling: Option<super::ScalingView>,
}

/// Why a config failed.
#[derive(Debug, Clone)]
struct Failure {
    reason: String,
    /// Tried again on the next pass (capacity may come back); an init
    /// failure is not retried until the config is put again.
    retry: bool,
}

/// The provisioning loop's state.
#[derive(Default)]
pub struct Provisioning {
    failed: Mutex<HashMap<String, Failure>>,
    wake: tokio::sync::Notify,
}

impl Provisioning {
    fn failed(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failure>> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a failure; logged when the config was not failing already.
    fn fail(&self, key: &str, reason: String, retry: bool) {
        let mut failed = self.failed();
        if !failed.contains_key(key) {
            tracing::warn!(config = key, %reason, "provisioned concurrency failed");
        }
        failed.insert(key.to_string(), Failure { reason, retry });
    }

    /// Wakes the loop (a config changed, an instance started or died).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits for a wake-up or for `period`.
    pub async fn wait(&self, period: std::time::Duration) {
        let _ = tokio::time::timeout(period, self.wake.notified()).await;
    }
}

fn invalid(field: &'static str, rule: impl Into<String>) -> NodeError {
    FunctionsError::Invalid {
        field,
        rule: rule.into(),
    }
    .into()
}

impl Node {
    /// What reservations may take in all: the node's instances less the
    /// unreserved share.
    fn reservable(&self) -> u32 {
        self.config
            .max_instances
            .saturating_sub(self.config.unreserved_min())
    }

    /// What is set aside of the node: every reservation except `function`'s,
    /// and the provisioned concurrency of functions without a reservation,
    /// of the configs `count` keeps.
    fn set_aside(
        &self,
        count: impl Fn(&ProvisionedConfig) -> bool,
        function: &str,
    ) -> Result<u32, NodeError> {
        let reserved = self.store.reserved()?;
        let reserved_total: u32 = reserved
            .iter()
            .filter(|(n, _)| n != function)
            .map(|(_, r)| r)
            .sum();
        let provisioned: u32 = self
            .store
            .list_provisioned("")?
            .iter()
            .filter(|p| !reserved.iter().any(|(n, _)| *n == p.function))
            .filter(|p| count(p))
            .map(|p| p.requested)
            .sum();
        Ok(reserved_total + provisioned)
    }

    /// Sets a function's reserved concurrency (0 throttles it entirely).
    pub fn put_function_concurrency(&self, name: &str, reserved: i64) -> Result<u32, NodeError> {
        self.store.get(name)?;
        let reserved = u32::try_from(reserved)
            .map_err(|_| invalid("ReservedConcurrentExecutions", "must be at least 0"))?;
        // Set aside already: the other reservations, and the provisioned
        // concurrency of the other functions without one.
        let others = self.set_aside(|p| p.function != name, name)?;
        if others + reserved > self.reservable() {
            return Err(invalid(
                "ReservedConcurrentExecutions",
                format!(
                    "Specified ReservedConcurrentExecutions for function decreases the node's UnreservedConcurrentExecution below its minimum value of [{}] ({} of {} instances are set aside by other functions)",
                    self.config.unreserved_min(),
                    others,
                    self.config.max_instances
                ),
            ));
        }
        let provisioned: u32 = self
            .store
            .list_provisioned(name)?
            .iter()
            .map(|p| p.requested)
            .sum();
        if provisioned > reserved {
            return Err(invalid(
                "ReservedConcurrentExecutions",
                format!(
                    "cannot be less than the function's provisioned concurrency ({provisioned})"
                ),
            ));
        }
        self.store.set_reserved(name, Some(reserved))?;
        self.pool.set_reserved(name, Some(reserved));
        tracing::info!(function = %name, reserved, "reserved concurrency set");
        Ok(reserved)
    }

    /// A function's reserved concurrency, if it has one.
    pub fn get_function_concurrency(&self, name: &str) -> Result<Option<u32>, NodeError> {
        self.store.get(name)?;
        Ok(self
            .store
            .reserved()?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r))
    }

    pub fn delete_function_concurrency(&self, name: &str) -> Result<(), NodeError> {
        self.store.get(name)?;
        // Its provisioned concurrency then comes out of the unreserved share.
        let own: u32 = self
            .store
            .list_provisioned(name)?
            .iter()
            .map(|p| p.requested)
            .sum();
        if own > 0 && self.set_aside(|_| true, name)? + own > self.reservable() {
            return Err(invalid(
                "ReservedConcurrentExecutions",
                format!(
                    "removing it would take the function's provisioned concurrency ({own}) out of the node's unreserved share, below its minimum value of [{}]",
                    self.config.unreserved_min()
                ),
            ));
        }
        self.store.set_reserved(name, None)?;
        self.pool.set_reserved(name, None);
        Ok(())
    }

    /// The version a provisioned-concurrency config keeps instances of.
    pub(super) fn provisioned_target(
        &self,
        function: &str,
        qualifier: &str,
    ) -> Result<Function, NodeError> {
        let version = match parse_qualifier(qualifier)? {
            Qualifier::Latest => {
                return Err(invalid(
                    "Qualifier",
                    "Provisioned Concurrency Configs cannot be applied to unpublished function versions",
                ))
            }
            Qualifier::Version(v) => v.to_string(),
            Qualifier::Alias(a) => self.store.get_alias(function, &a)?.version,
        };
        if version == LATEST {
            return Err(invalid(
                "Qualifier",
                "Provisioned Concurrency Configs cannot be applied to an alias of $LATEST",
            ));
        }
        Ok(self.store.get_qualified(function, &version)?)
    }

    /// Creates or changes a provisioned-concurrency config; its instances
    /// are started in the background.
    pub fn put_provisioned_concurrency(
        &self,
        function: &str,
        qualifier: &str,
        requested: i64,
    ) -> Result<ProvisionedView, NodeError> {
        self.store.get(function)?;
        self.provisioned_target(function, qualifier)?;
        let requested = u32::try_from(requested)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| invalid("ProvisionedConcurrentExecutions", "must be at least 1"))?;
        let all = self.store.list_provisioned("")?;
        let same_function: u32 = all
            .iter()
            .filter(|p| p.function == function && p.qualifier != qualifier)
            .map(|p| p.requested)
            .sum();
        if let Some(reserved) = self.get_function_concurrency(function)? {
            if same_function + requested > reserved {
                return Err(invalid(
                    "ProvisionedConcurrentExecutions",
                    format!(
                        "the function's provisioned concurrency ({}) cannot exceed its reserved concurrency ({reserved})",
                        same_function + requested
                    ),
                ));
            }
        } else {
            // Without a reservation it comes out of the unreserved share.
            let key = format!("{function}:{qualifier}");
            let aside = self.set_aside(|p| p.key() != key, "")?;
            if aside + requested > self.reservable() {
                return Err(invalid(
                    "ProvisionedConcurrentExecutions",
                    format!(
                        "Specified ProvisionedConcurrentExecutions decreases the node's UnreservedConcurrentExecution below its minimum value of [{}] ({aside} of {} instances are set aside)",
                        self.config.unreserved_min(),
                        self.config.max_instances
                    ),
                ));
            }
        }
        let config = ProvisionedConfig {
            function: function.to_string(),
            qualifier: qualifier.to_string(),
            requested,
            last_modified: crate::time::lambda_timestamp(SystemTime::now()),
        };
        self.store.put_provisioned(&config)?;
        self.provisioning.failed().remove(&config.key());
        self.provisioning.wake();
        tracing::info!(
            function,
            qualifier,
            requested,
            "provisioned concurrency set"
        );
        Ok(self.provisioned_view(config))
    }

    fn provisioned_view(&self, config: ProvisionedConfig) -> ProvisionedView {
        let key = config.key();
        let count = self.pool.provisioned_count(&key);
        let failure = self.provisioning.failed().get(&key).cloned();
        let (status, reason) = match failure {
            Some(f) => (ProvisionedStatus::Failed, f.reason),
            None if count.ready >= config.requested => (ProvisionedStatus::Ready, String::new()),
            None => (ProvisionedStatus::InProgress, String::new()),
        };
        let (region, account) = self.region_account();
        let scaling = self
            .scaling_views(&config.function)
            .into_iter()
            .find(|v| v.target.key() == key);
        ProvisionedView {
            scaling,
            function_arn: format!(
                "arn:aws:lambda:{region}:{account}:function:{}:{}",
                config.function, config.qualifier
            ),
            allocated: count.ready,
            available: count.ready - count.busy,
            status,
            reason,
            config,
        }
    }

    pub fn get_provisioned_concurrency(
        &self,
        function: &str,
        qualifier: &str,
    ) -> Result<ProvisionedView, NodeError> {
        self.store.get(function)?;
        let config = self
            .store
            .list_provisioned(function)?
            .into_iter()
            .find(|p| p.qualifier == qualifier)
            .ok_or_else(|| {
                FunctionsError::ProvisionedNotFound(format!("{function}:{qualifier}"))
            })?;
        Ok(self.provisioned_view(config))
    }

    pub fn list_provisioned_concurrency(
        &self,
        function: &str,
    ) -> Result<Vec<ProvisionedView>, NodeError> {
        self.store.get(function)?;
        Ok(self
            .store
            .list_provisioned(function)?
            .into_iter()
            .map(|c| self.provisioned_view(c))
            .collect())
    }

    /// Deletes a config and stops its instances; a scalable target of it
    /// goes too (it would put the config back).
    pub async fn delete_provisioned_concurrency(
        &self,
        function: &str,
        qualifier: &str,
    ) -> Result<(), NodeError> {
        self.store.get(function)?;
        self.store.delete_provisioned(function, qualifier)?;
        self.store.delete_scaling(function, qualifier)?;
        let key = format!("{function}:{qualifier}");
        self.provisioning.failed().remove(&key);
        self.pool.prune_provisioned(&key, None).await;
        Ok(())
    }

    /// One pass of the provisioning loop: every config's instances are
    /// checked (dead ones and those of a version the config no longer
    /// names are stopped) and missing ones started, a few at a time.
    pub async fn reconcile_provisioned(&self) {
        let configs = match self.store.list_provisioned("") {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reading provisioned concurrency configs failed");
                return;
            }
        };
        let keys: Vec<String> = configs.iter().map(|c| c.key()).collect();
        self.provisioning
            .failed()
            .retain(|k, _| keys.iter().any(|x| x == k));
        for config in configs {
            let key = config.key();
            let f = match self.provisioned_target(&config.function, &config.qualifier) {
                Ok(f) => f,
                Err(e) => {
                    self.provisioning.fail(&key, e.to_string(), true);
                    self.pool.prune_provisioned(&key, None).await;
                    continue;
                }
            };
            let replaced = self.pool.prune_provisioned(&key, Some(&f)).await;
            if replaced > 0 {
                tracing::info!(config = %key, replaced, "provisioned instances replaced");
            }
            if self
                .provisioning
                .failed()
                .get(&key)
                .is_some_and(|f| !f.retry)
            {
                continue;
            }
            let count = self.pool.provisioned_count(&key);
            let have = count.starting + count.ready;
            if have > config.requested {
                self.pool
                    .shrink_provisioned(&key, (have - config.requested) as usize)
                    .await;
                continue;
            }
            let room = PARALLEL_STARTS.saturating_sub(count.starting);
            for _ in 0..(config.requested - have).min(room) {
                match self.pool.book(&f, Some(key.clone())).await {
                    Ok(lease) => {
                        tokio::spawn(provision_one(
                            self.invoker.clone(),
                            self.pool.clone(),
                            self.provisioning.clone(),
                            f.clone(),
                            key.clone(),
                            lease,
                        ));
                    }
                    Err(e) => {
                        // Instances still starting may free what they hold
                        // once idle: wait for them before calling it failed.
                        if self.pool.provisioned_count(&key).starting == 0 {
                            self.provisioning.fail(
                                &key,
                                format!(
                                    "INSUFFICIENT_CAPACITY: {e} ({} of {} ready)",
                                    count.ready, config.requested
                                ),
                                true,
                            );
                        }
                        break;
                    }
                }
            }
            if have == config.requested && count.starting == 0 {
                let mut failed = self.provisioning.failed();
                if failed.get(&key).is_some_and(|f| f.retry) {
                    failed.remove(&key);
                }
            }
        }
    }
}

/// Starts one provisioned instance into its booked place.
async fn provision_one(
    invoker: Arc<Invoker>,
    pool: Arc<Pool>,
    provisioning: Arc<Provisioning>,
    f: Function,
    key: String,
    mut lease: Lease,
) {
    let started = match invoker.logs.open_stream(&f.name, &f.version, &lease.id) {
        Ok(log) => invoker
            .start_instance(&f, lease.id.clone(), log, None)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match started {
        Ok(Started::Ready(mut inst)) => {
            inst.mark_provisioned();
            inst.set_state(InstanceState::Idle);
            tracing::info!(instance = %inst.id, config = %key, "provisioned instance ready");
            lease.set(inst);
            pool.release(lease);
        }
        Ok(Started::InitFailed(failure)) => provisioning.fail(
            &key,
            format!(
                "FUNCTION_ERROR_INIT_FAILURE: the function's init failed: {}",
                failure.error_type
            ),
            false,
        ),
        // Tried again on the next pass.
        Err(e) => provisioning.fail(
            &key,
            format!("the instance could not be started: {e}"),
            true,
        ),
    }
    provisioning.wake();
}
