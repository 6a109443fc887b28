//! The node: functions, packages, instances and invocations wired together.
//! The API layer calls these methods with domain types only.

use std::sync::Arc;
use std::time::SystemTime;

use crate::config::Config;
use crate::engine::{AccelInfo, Engine, EngineError, QemuEngine};
use crate::functions::{self, Function, FunctionSpec, FunctionStore, FunctionsError};
use crate::invoke::{InvokeError, InvokeRequest, InvokeResult, Invoker};
use crate::logs::FunctionLogs;
use crate::packages::{CodeStore, PackageError, PackageRules};
use crate::pool::{Pool, PoolSettings};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Functions(#[from] FunctionsError),
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error(transparent)]
    Invoke(#[from] InvokeError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("preparing the data directory failed")]
    DataDir(#[source] std::io::Error),
    #[error("a blocking task failed: {0}")]
    Join(String),
}

pub struct Node {
    config: Config,
    store: Arc<FunctionStore>,
    code: Arc<CodeStore>,
    pool: Arc<Pool>,
    invoker: Invoker,
}

impl Node {
    /// Opens (or creates) the node's state under the data directory.
    pub fn open(config: Config) -> Result<Self, NodeError> {
        for d in [
            config.data_dir.clone(),
            config.code_dir(),
            config.logs_dir(),
            config.run_dir(),
            config.tmp_dir(),
        ] {
            std::fs::create_dir_all(&d).map_err(NodeError::DataDir)?;
        }
        // Leftovers of an earlier run: instance directories and staging files.
        for d in [config.run_dir(), config.tmp_dir()] {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let accel = crate::engine::detect_accel(config.accel)?;
        if accel.accel == crate::engine::Accel::Tcg {
            tracing::warn!(reason = %accel.reason, "guests run under TCG");
        } else {
            tracing::info!(reason = %accel.reason, "guests run under KVM");
        }
        let engine: Arc<dyn Engine> = Arc::new(QemuEngine::new(config.qemu.clone(), accel));
        let store = Arc::new(FunctionStore::open(&config.db_path())?);
        let code = Arc::new(CodeStore::new(config.code_dir(), config.tmp_dir()));
        let pool = Arc::new(Pool::new(
            engine,
            PoolSettings {
                kernel: config.kernel(),
                artifacts_dir: config.artifacts_dir.clone(),
                run_dir: config.run_dir(),
                boot_timeout: config.boot_timeout,
                init_timeout: config.init_timeout,
                region: config.region.clone(),
                account_id: config.account_id.clone(),
            },
        ));
        let invoker = Invoker {
            store: store.clone(),
            code: code.clone(),
            pool: pool.clone(),
            logs: FunctionLogs::new(config.logs_dir()),
            region: config.region.clone(),
            account_id: config.account_id.clone(),
        };
        Ok(Self {
            config,
            store,
            code,
            pool,
            invoker,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn accel(&self) -> &AccelInfo {
        self.pool.engine().accel()
    }

    pub fn arn(&self, f: &Function) -> String {
        f.arn(&self.config.region, &self.config.account_id)
    }

    pub async fn create_function(
        &self,
        mut spec: FunctionSpec,
        zip: Vec<u8>,
    ) -> Result<Function, NodeError> {
        let runtime = functions::validate_spec(&mut spec)?;
        match self.store.get(&spec.name) {
            Ok(_) => return Err(FunctionsError::AlreadyExists(spec.name).into()),
            Err(FunctionsError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let rules = PackageRules {
            runtime,
            handler: spec.handler.clone(),
        };
        let code = self.code.clone();
        let image = tokio::task::spawn_blocking(move || code.store(&zip, &rules))
            .await
            .map_err(|e| NodeError::Join(e.to_string()))??;
        let f = Function {
            name: spec.name,
            runtime,
            handler: spec.handler,
            memory_mb: spec.memory_mb,
            timeout_s: spec.timeout_s,
            environment: spec.environment,
            description: spec.description,
            code_sha256_hex: image.sha256_hex.clone(),
            code_sha256_b64: image.sha256_b64,
            code_size: image.zip_size,
            last_modified: crate::time::lambda_timestamp(SystemTime::now()),
            revision: 1,
        };
        if let Err(e) = self.store.insert(&f) {
            // Nothing half-created: drop the package unless another function uses it.
            if !self.store.code_in_use(&image.sha256_hex).unwrap_or(true) {
                self.code.remove(&image.sha256_hex);
            }
            return Err(e.into());
        }
        tracing::info!(function = %f.name, runtime = f.runtime.name(), "function created");
        Ok(f)
    }

    pub fn get_function(&self, name: &str, qualifier: &str) -> Result<Function, NodeError> {
        if !(qualifier.is_empty() || qualifier == "$LATEST") {
            return Err(InvokeError::Qualifier(qualifier.into()).into());
        }
        Ok(self.store.get(name)?)
    }

    pub fn list_functions(&self) -> Result<Vec<Function>, NodeError> {
        Ok(self.store.list()?)
    }

    pub fn code_location(&self, f: &Function) -> String {
        self.code.zip_path(&f.code_sha256_hex).display().to_string()
    }

    pub async fn delete_function(&self, name: &str) -> Result<(), NodeError> {
        let f = self.store.delete(name)?;
        self.pool.retire(name).await;
        if !self.store.code_in_use(&f.code_sha256_hex)? {
            self.code.remove(&f.code_sha256_hex);
        }
        tracing::info!(function = %name, "function deleted");
        Ok(())
    }

    pub async fn invoke(&self, req: InvokeRequest) -> Result<InvokeResult, NodeError> {
        Ok(self.invoker.invoke(req).await?)
    }

    /// Stops every instance.
    pub async fn shutdown(&self) {
        self.pool.shutdown().await;
    }
}
