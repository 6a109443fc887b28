//! Event source mappings: pollers that read a source on the broker, batch
//! its records, invoke a function with them, and settle each record by
//! the outcome.
//!
//! Mappings and their states are kept in `DATA_DIR/sources.db`. A
//! reconciler ([`Sources::run`]) moves each mapping from `Creating`,
//! `Updating`, `Enabling` or `Disabling` to `Enabled` or `Disabled`, starts
//! and stops its poller, and removes a `Deleting` one once its poller has
//! stopped. After a restart of flintd it starts the pollers of every
//! enabled mapping again.
//!
//! Layering: `node/` → `sources/` → `invoke/`, `broker/`.

pub mod expr;
pub mod filter;
pub mod mapping;
mod poller;
pub mod schedule;
mod sqs;
mod stream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::broker::{Broker, BrokerError};
use crate::functions::FunctionsError;
use crate::invoke::Invoker;

pub use filter::{FilterError, Filters};
pub use mapping::{Mapping, MappingChange, MappingStore, SourceKind, State};
pub use poller::{QueueSource, SourceMessage};
pub use stream::StreamSource;

#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    #[error("ResourceNotFoundException: the event source mapping {0} does not exist")]
    NotFound(String),
    #[error("ResourceNotFoundException: the schedule {0} does not exist")]
    NoSchedule(String),
    #[error(transparent)]
    Expr(#[from] expr::ExprError),
    #[error(transparent)]
    Events(#[from] crate::events::EventsError),
    #[error("ResourceConflictException: {0}")]
    Conflict(String),
    #[error("ResourceInUseException: {0}")]
    InUse(String),
    #[error("{field}: {rule}")]
    Invalid { field: &'static str, rule: String },
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Functions(#[from] FunctionsError),
    #[error("this node has no broker: set [broker] url in its configuration")]
    NoBroker,
    #[error("the event source store failed")]
    Store(#[from] rusqlite::Error),
    #[error("a stored event source mapping cannot be read: {0}")]
    Corrupt(String),
}

/// A mapping's counters since flintd started, and its last problem.
#[derive(Default)]
pub struct Stats {
    pub batches: AtomicU64,
    pub records: AtomicU64,
    pub failed_batches: AtomicU64,
    pub failed_items: AtomicU64,
    pub filtered: AtomicU64,
    pub throttles: AtomicU64,
    pub in_flight: AtomicUsize,
    last: Mutex<Last>,
}

#[derive(Default, Clone)]
struct Last {
    /// "OK" or "PROBLEM: …" of the last batch.
    result: Option<String>,
    error: Option<(i64, String)>,
    paused_until: Option<Instant>,
}

impl Stats {
    fn last(&self) -> std::sync::MutexGuard<'_, Last> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_ok(&self) {
        self.last().result = Some("OK".into());
    }

    fn set_error(&self, e: &str) {
        let mut l = self.last();
        l.error = Some((crate::time::now_ms(), e.to_string()));
    }

    fn fail_batch(&self, why: &str) {
        self.failed_batches.fetch_add(1, Ordering::Relaxed);
        let mut l = self.last();
        l.result = Some(why.to_string());
        l.error = Some((crate::time::now_ms(), why.to_string()));
    }

    fn pause(&self, d: Duration) {
        self.last().paused_until = Some(Instant::now() + d);
    }

    fn paused(&self) -> Option<Duration> {
        let until = self.last().paused_until?;
        until.checked_duration_since(Instant::now())
    }
}

/// A mapping as `flintctl` shows it.
#[derive(Clone)]
pub struct MappingView {
    pub mapping: Mapping,
    pub batches: u64,
    pub records: u64,
    pub failed_batches: u64,
    pub failed_items: u64,
    pub filtered: u64,
    pub throttles: u64,
    pub in_flight: u64,
    /// Messages waiting or in flight on the source; `None` when it cannot
    /// be read.
    pub lag: Option<u64>,
    pub last_error: Option<(i64, String)>,
}

/// A mapping's source, by kind.
enum Source {
    Queue(Arc<dyn QueueSource>),
    Stream(Arc<dyn StreamSource>),
}

struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    /// The mapping as the poller was started with it.
    mapping: Mapping,
    /// Ends once the poller has stopped and its batches have settled.
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

pub struct Sources {
    store: MappingStore,
    invoker: Arc<Invoker>,
    events: Arc<crate::events::Events>,
    wake_schedules: tokio::sync::Notify,
    schedule_counts: schedule::ScheduleCounts,
    broker: Option<Arc<Broker>>,
    wake: tokio::sync::Notify,
    running: Mutex<HashMap<String, Running>>,
    /// Pollers told to stop that have not finished yet.
    stopping: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    stats: Mutex<HashMap<String, Arc<Stats>>>,
}

impl Sources {
    pub fn open(
        path: &std::path::Path,
        invoker: Arc<Invoker>,
        events: Arc<crate::events::Events>,
        broker: Option<Arc<Broker>>,
    ) -> Result<Self, SourcesError> {
        Ok(Self {
            store: MappingStore::open(path)?,
            invoker,
            events,
            wake_schedules: tokio::sync::Notify::new(),
            schedule_counts: Default::default(),
            broker,
            wake: tokio::sync::Notify::new(),
            running: Mutex::new(HashMap::new()),
            stopping: Mutex::new(HashMap::new()),
            stats: Mutex::new(HashMap::new()),
        })
    }

    fn region_account(&self) -> (String, String) {
        let (r, a) = self.invoker.region_account();
        (r.to_string(), a.to_string())
    }

    fn broker(&self) -> Result<&Arc<Broker>, SourcesError> {
        self.broker.as_ref().ok_or(SourcesError::NoBroker)
    }

    fn stats(&self, uuid: &str) -> Arc<Stats> {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(uuid.to_string())
            .or_default()
            .clone()
    }

    /// Checks that the source exists on the broker.
    async fn check_source(&self, kind: &SourceKind) -> Result<(), SourcesError> {
        match kind {
            SourceKind::Queue(name) => {
                self.broker()?.queue_info(name).await?;
            }
            SourceKind::Stream(name) => {
                self.broker()?.describe_stream(name).await?;
            }
        }
        Ok(())
    }

    /// `CreateEventSourceMapping`.
    pub async fn create(
        &self,
        event_source_arn: &str,
        function_name: &str,
        change: &MappingChange,
    ) -> Result<Mapping, SourcesError> {
        let (region, account) = self.region_account();
        let kind = mapping::source_kind(event_source_arn, &region, &account)?;
        let (name, qualifier) = mapping::parse_function_name(function_name, &region, &account)?;
        self.invoker
            .resolve(&name, &qualifier)
            .map_err(|e| match e {
                crate::invoke::InvokeError::Functions(f) => SourcesError::Functions(f),
                other => SourcesError::Invalid {
                    field: "FunctionName",
                    rule: other.to_string(),
                },
            })?;
        self.check_source(&kind).await?;
        let m = Mapping::new(
            uuid::Uuid::new_v4().to_string(),
            event_source_arn.to_string(),
            name,
            qualifier,
            &kind,
            change,
        )?;
        if let Some(d) = &m.on_failure {
            let queue = crate::broker::parse_queue_arn(d, &region, &account)?;
            self.broker()?.queue_info(&queue).await?;
        }
        self.store.insert(&m)?;
        self.wake.notify_one();
        Ok(m)
    }

    /// `UpdateEventSourceMapping`: the function may change too.
    pub async fn update(
        &self,
        uuid: &str,
        function_name: Option<&str>,
        change: &MappingChange,
    ) -> Result<Mapping, SourcesError> {
        let mut m = self.store.get(uuid)?;
        if m.state == State::Deleting {
            return Err(SourcesError::InUse(format!(
                "the event source mapping {uuid} is being deleted"
            )));
        }
        if let Some(f) = function_name {
            let (region, account) = self.region_account();
            let (name, qualifier) = mapping::parse_function_name(f, &region, &account)?;
            self.invoker.store.get(&name)?;
            m.function_name = name;
            m.qualifier = qualifier;
        }
        let was_enabled = m.enabled;
        let (region, account) = self.region_account();
        let kind = mapping::source_kind(&m.event_source_arn, &region, &account)?;
        m.apply(change, &kind)?;
        m.state = match (was_enabled, m.enabled) {
            (false, true) => State::Enabling,
            (true, false) => State::Disabling,
            _ => State::Updating,
        };
        m.state_reason = "USER_INITIATED".into();
        self.store.put(&m)?;
        self.wake.notify_one();
        Ok(m)
    }

    pub fn get(&self, uuid: &str) -> Result<Mapping, SourcesError> {
        self.store.get(uuid)
    }

    /// `ListEventSourceMappings`, optionally of one source and/or one
    /// function (by name: every qualifier).
    pub fn list(
        &self,
        event_source_arn: Option<&str>,
        function_name: Option<&str>,
    ) -> Result<Vec<Mapping>, SourcesError> {
        let (region, account) = self.region_account();
        let function = match function_name {
            Some(f) => Some(mapping::parse_function_name(f, &region, &account)?),
            None => None,
        };
        Ok(self
            .store
            .list()?
            .into_iter()
            .filter(|m| event_source_arn.is_none_or(|a| m.event_source_arn == a))
            .filter(|m| {
                function.as_ref().is_none_or(|(n, q)| {
                    m.function_name == *n && (q.is_empty() || m.qualifier == *q)
                })
            })
            .collect())
    }

    /// `DeleteEventSourceMapping`: answers the mapping in `Deleting`; it
    /// is gone once its poller has stopped.
    pub fn delete(&self, uuid: &str) -> Result<Mapping, SourcesError> {
        let mut m = self.store.get(uuid)?;
        m.state = State::Deleting;
        m.state_reason = "USER_INITIATED".into();
        self.store.put(&m)?;
        self.wake.notify_one();
        Ok(m)
    }

    /// A mapping with its counters and lag.
    pub async fn view(&self, m: Mapping) -> MappingView {
        let s = self.stats(&m.uuid);
        let lag = match self.source(&m) {
            Ok(Source::Queue(src)) => src.backlog().await.ok(),
            Ok(Source::Stream(src)) => self.stream_lag(&m, &*src).await.ok(),
            Err(_) => None,
        };
        let last = s.last().clone();
        MappingView {
            batches: s.batches.load(Ordering::Relaxed),
            records: s.records.load(Ordering::Relaxed),
            failed_batches: s.failed_batches.load(Ordering::Relaxed),
            failed_items: s.failed_items.load(Ordering::Relaxed),
            filtered: s.filtered.load(Ordering::Relaxed),
            throttles: s.throttles.load(Ordering::Relaxed),
            in_flight: s.in_flight.load(Ordering::Relaxed) as u64,
            lag,
            last_error: last.error,
            mapping: Mapping {
                last_processing_result: last.result.unwrap_or(m.last_processing_result.clone()),
                ..m
            },
        }
    }

    fn source(&self, m: &Mapping) -> Result<Source, SourcesError> {
        let (region, account) = self.region_account();
        match mapping::source_kind(&m.event_source_arn, &region, &account)? {
            SourceKind::Queue(name) => Ok(Source::Queue(Arc::new(sqs::BrokerQueue {
                broker: self.broker()?.clone(),
                name,
                arn: m.event_source_arn.clone(),
                region,
                account,
            }))),
            SourceKind::Stream(name) => Ok(Source::Stream(Arc::new(stream::BrokerStream {
                broker: self.broker()?.clone(),
                name,
            }))),
        }
    }

    /// Records behind the checkpoints, over every shard.
    async fn stream_lag(&self, m: &Mapping, src: &dyn StreamSource) -> Result<u64, SourcesError> {
        let mut total = 0;
        for shard in src.shards().await? {
            let cp = self.store.checkpoint(&m.uuid, &shard)?.unwrap_or_default();
            total += src.behind(&shard, cp.sequence.as_deref()).await?;
        }
        Ok(total)
    }

    /// How many batches of a mapping may run at once: its maximum
    /// concurrency, the function's reserved concurrency, and the node's
    /// instance limit, whichever is least.
    fn poller_limit(&self, m: &Mapping) -> usize {
        let node = self.invoker.pool.capacity().max_instances as usize;
        let reserved = self
            .invoker
            .store
            .reserved()
            .ok()
            .and_then(|r| r.into_iter().find(|(f, _)| *f == m.function_name))
            .map(|(_, n)| n as usize);
        let mut limit = m
            .max_concurrency
            .map(|n| n as usize)
            .unwrap_or(node)
            .min(node);
        if let Some(r) = reserved {
            limit = limit.min(r);
        }
        limit.max(1)
    }

    /// Keeps the pollers in step with the stored mappings, forever.
    pub async fn run(self: Arc<Self>) {
        loop {
            if let Err(e) = self.reconcile() {
                tracing::warn!(error = %e, "the event source mappings could not be read");
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    fn reconcile(self: &Arc<Self>) -> Result<(), SourcesError> {
        let mappings = self.store.list()?;
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut stopping = self.stopping.lock().unwrap_or_else(|p| p.into_inner());
        stopping.retain(|_, task| !task.is_finished());
        fn stop(
            running: &mut HashMap<String, Running>,
            stopping: &mut HashMap<String, tokio::task::JoinHandle<()>>,
            uuid: &str,
        ) {
            if let Some(r) = running.remove(uuid) {
                r.stop();
                stopping.insert(uuid.to_string(), r.task);
            }
        }
        let known: std::collections::HashSet<String> =
            mappings.iter().map(|m| m.uuid.clone()).collect();
        let gone: Vec<String> = running
            .keys()
            .filter(|u| !known.contains(*u))
            .cloned()
            .collect();
        for uuid in gone {
            stop(&mut running, &mut stopping, &uuid);
        }
        for mut m in mappings {
            let settle = m.state == State::Deleting || m.state.settles_enabled(m.enabled).is_some();
            let changed = running
                .get(&m.uuid)
                .is_some_and(|r| !same_config(&r.mapping, &m));
            if settle || changed || m.state != State::Enabled {
                stop(&mut running, &mut stopping, &m.uuid);
            }
            // A state settles only once the old poller has stopped and its
            // batches have settled: "Disabled" means nothing runs.
            let draining = stop_pending(&stopping, &m.uuid);
            if m.state == State::Deleting {
                if !draining {
                    self.store.remove(&m.uuid)?;
                    self.stats
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&m.uuid);
                    tracing::info!(uuid = %m.uuid, "an event source mapping was deleted");
                }
                continue;
            }
            if let Some(settled) = m.state.settles_enabled(m.enabled) {
                if draining {
                    continue;
                }
                m.state = settled;
                self.store.put(&m)?;
                tracing::info!(uuid = %m.uuid, source = %m.event_source_arn,
                    function = %m.target(), state = settled.name(), "an event source mapping settled");
            }
            if m.state == State::Enabled && !running.contains_key(&m.uuid) && !draining {
                match self.source(&m) {
                    Ok(src) => {
                        let (tx, rx) = tokio::sync::watch::channel(false);
                        let stats = self.stats(&m.uuid);
                        let this = self.clone();
                        let started = m.clone();
                        let task = tokio::spawn(async move {
                            match src {
                                Source::Queue(q) => {
                                    this.clone().run_queue(started, q, stats, rx).await
                                }
                                Source::Stream(s) => {
                                    this.clone().run_stream(started, s, stats, rx).await
                                }
                            }
                            // The reconciler settles what waited for this.
                            this.wake.notify_one();
                        });
                        running.insert(
                            m.uuid.clone(),
                            Running {
                                stop: tx,
                                mapping: m,
                                task,
                            },
                        );
                    }
                    Err(e) => {
                        self.stats(&m.uuid).set_error(&e.to_string());
                    }
                }
            }
        }
        Ok(())
    }
}

fn stop_pending(stopping: &HashMap<String, tokio::task::JoinHandle<()>>, uuid: &str) -> bool {
    stopping.get(uuid).is_some_and(|t| !t.is_finished())
}

/// Whether a running poller can go on with a stored mapping as it is.
fn same_config(a: &Mapping, b: &Mapping) -> bool {
    Mapping {
        state: b.state,
        state_reason: b.state_reason.clone(),
        last_modified_ms: b.last_modified_ms,
        last_processing_result: b.last_processing_result.clone(),
        ..a.clone()
    } == *b
}
