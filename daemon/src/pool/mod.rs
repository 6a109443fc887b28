//! Instances of functions: starting them (boot, configure, init), lending a
//! free one to each invocation, and the node's books on capacity: reserved
//! concurrency, the unreserved share, the instance and memory limits, and
//! eviction of the least recently used idle instance.
//!
//! A function version has any number of instances, each serving one
//! invocation at a time. An invocation is first *admitted* (a [`Ticket`]:
//! its function's reserved concurrency, or the node's unreserved share, has
//! room), then *leased* an instance ([`Lease`]): a free one of its version,
//! provisioned ones first and then the most recently used, or a new one
//! when the node has room (after evicting idle instances if it must).

#[cfg(test)]
mod fake;
mod instance;
mod spare;
mod start;
mod starts;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;

use crate::engine::{Engine, EngineError};
use crate::functions::Function;
use crate::logs::FunctionLogs;
use crate::snapshot::SnapshotStore;

pub use instance::{unix_ms, AgentEvent, Instance, InstanceInfo, InstanceState, Origin};
pub use starts::{StartCounts, StartSettings, StartSlot, Starts};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// What the VMM failed at (a start, a pause, a snapshot) says itself.
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the VM gave no agent channel")]
    NoChannel,
    #[error("the agent channel is closed")]
    ChannelClosed,
    #[error("the guest agent did not start within {0:?}; console: {1}")]
    BootTimeout(Duration, String),
    #[error("the guest stopped while booting; console: {0}")]
    BootFailed(String),
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error("the restored guest did not answer: {0}")]
    ResumeFailed(String),
    #[error("a spare's guest did not warm up: {0}")]
    WarmUpFailed(String),
    #[error("Rate Exceeded: {detail}")]
    Throttled { reason: Throttle, detail: String },
}

/// Why an invocation was refused for lack of capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// The function's reserved concurrency is all in use (or is 0).
    Reserved,
    /// The node's unreserved share, its instance limit or its memory budget
    /// is used up.
    Node,
    /// No start slot came free within the invocation's budget.
    StartQueue,
}

impl Throttle {
    /// Lambda's `Reason` of a `TooManyRequestsException`.
    pub fn reason(self) -> &'static str {
        match self {
            Throttle::Reserved => "ReservedFunctionConcurrentInvocationLimitExceeded",
            Throttle::Node => "ConcurrentInvocationLimitExceeded",
            Throttle::StartQueue => "StartSlotTimeout",
        }
    }
}

/// Where instances come from, and the node's limits.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub kernel: PathBuf,
    pub artifacts_dir: PathBuf,
    pub run_dir: PathBuf,
    pub boot_timeout: Duration,
    /// The on-demand init limit in force.
    pub init_timeout: Duration,
    /// The limit of the init that builds a function snapshot.
    pub snapshot_init_timeout: Duration,
    pub region: String,
    pub account_id: String,
    /// Function snapshots for `$LATEST` too (always for published versions).
    pub snapshot_latest: bool,
    /// Keep a QEMU process started ahead for each function snapshot in use.
    pub spare_vms: bool,
    /// Stop the vCPUs of an instance between invocations.
    pub freeze_idle: bool,
    /// Stop instances idle for longer than this.
    pub idle_timeout: Duration,
    /// At most this many instances on the node (busy, idle and starting).
    pub max_instances: u32,
    /// Host memory the instances may use, in MB.
    pub memory_budget_mb: u64,
    /// Concurrency that reservations can never take from the functions
    /// without one.
    pub unreserved_min: u32,
    /// Start slots and the per-function scaling rate.
    pub starts: StartSettings,
}

impl PoolSettings {
    /// The image a runtime's instances run as `/`.
    pub fn runtime_image(&self, runtime: crate::packages::Runtime) -> PathBuf {
        crate::config::runtime_image_in(&self.artifacts_dir, runtime.name())
    }
}

/// The result of starting an instance: ready, or its init failed (a function
/// error, reported to the invoker, not a node failure). Short-lived and moved
/// once, so the size of the `Ready` variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Started {
    Ready(Instance),
    InitFailed {
        error_type: String,
        payload: Vec<u8>,
        init_duration: Option<Duration>,
    },
}

/// Where a version's function snapshot stands, when it is not simply built
/// (or not needed): what `State` and `LastUpdateStatus` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preparation {
    /// Being built (its init running): `Pending`, `InProgress`.
    Pending,
    /// The function's init failed while building it: `Failed`, with the
    /// init's error type. Invocations retry the init.
    InitFailed(String),
    /// The node could not build it: the version stays invocable (from the
    /// runtime snapshot), `LastUpdateStatus` is `Failed`.
    SnapshotFailed(String),
}

/// QEMU processes started ahead for one function snapshot.
#[derive(Default)]
struct SpareList {
    function: String,
    vms: Vec<spare::Spare>,
}

/// A spare being started (its task stops it when cancelled, or when its
/// entry is gone from the book by the time it is ready).
struct StartingSpare {
    id: String,
    function: String,
    cancel: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Spares by snapshot key, and the spares being started.
#[derive(Default)]
struct SpareBook {
    lists: HashMap<String, SpareList>,
    starting: Vec<StartingSpare>,
}

type Spares = Mutex<SpareBook>;

/// Stops spares, and the starts of spares in flight (each is cancelled,
/// and its task stops what it started before it ends).
async fn stop_spares(spares: Vec<spare::Spare>, starting: Vec<StartingSpare>) {
    for s in &starting {
        let _ = s.cancel.send(true);
    }
    for s in starting {
        let _ = s.task.await;
    }
    for mut spare in spares {
        let _ = spare.vm.stop().await;
    }
}

/// The place of one instance; empty while it starts, and after it stopped.
type Cell = Arc<tokio::sync::Mutex<Option<Instance>>>;

/// One instance in the books.
struct Member {
    function: String,
    version: String,
    /// The provisioned-concurrency config (`function:qualifier`) it serves.
    provisioned: Option<String>,
    /// Leased to an invocation, or starting.
    busy: bool,
    /// Started and not yet stopped.
    ready: bool,
    last_used: Instant,
    memory_mb: u64,
    /// What it counts against the memory budget: its full size while busy
    /// or starting, the host memory it was measured to use while idle.
    charge_mb: u64,
    /// What it was measured to use when last idle, and when.
    idle_mb: Option<(u64, Instant)>,
    cell: Cell,
}

/// How long a measurement of an idle instance's memory stands.
const MEASURE_EVERY: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Books {
    members: HashMap<String, Member>,
    /// Concurrent invocations per function.
    running: HashMap<String, u32>,
    /// Reserved concurrency per function.
    reserved: HashMap<String, u32>,
}

impl Books {
    fn charged_mb(&self) -> u64 {
        self.members.values().map(|m| m.charge_mb).sum()
    }
}

type SharedBooks = Arc<Mutex<Books>>;

fn lock(books: &SharedBooks) -> std::sync::MutexGuard<'_, Books> {
    books.lock().unwrap_or_else(|p| p.into_inner())
}

/// An admitted invocation; it counts against its function's concurrency
/// until dropped.
pub struct Ticket {
    books: SharedBooks,
    function: String,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut b = lock(&self.books);
        if let Some(n) = b.running.get_mut(&self.function) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                b.running.remove(&self.function);
            }
        }
    }
}

/// An instance lent to one invocation (or being started). Given back with
/// [`Pool::release`] or [`Pool::discard`]; dropped otherwise, the instance
/// is stopped.
pub struct Lease {
    pub id: String,
    guard: Option<OwnedMutexGuard<Option<Instance>>>,
    books: SharedBooks,
}

impl Lease {
    /// The leased instance; `None` while it starts.
    pub fn instance(&mut self) -> Option<&mut Instance> {
        self.guard.as_mut().and_then(|g| g.as_mut())
    }

    /// Puts a started instance in its place.
    pub fn set(&mut self, inst: Instance) {
        if let Some(g) = self.guard.as_mut() {
            **g = Some(inst);
        }
        if let Some(m) = lock(&self.books).members.get_mut(&self.id) {
            m.ready = true;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        lock(&self.books).members.remove(&self.id);
        if let Some(inst) = guard.take() {
            tokio::spawn(inst.stop());
        }
    }
}

/// How many instances a provisioned-concurrency config has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProvisionedCount {
    pub starting: u32,
    pub ready: u32,
    pub busy: u32,
}

/// The node's capacity and its use, for `GetNodeInfo`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Capacity {
    pub max_instances: u32,
    pub memory_budget_mb: u64,
    pub charged_mb: u64,
    pub reserved_total: u32,
    pub unreserved_min: u32,
    pub running: u32,
}

pub struct Pool {
    engine: Arc<dyn Engine>,
    settings: PoolSettings,
    books: SharedBooks,
    registry: instance::Registry,
    /// None when snapshots are off.
    snapshots: Option<Arc<SnapshotStore>>,
    /// Log streams of snapshot templates.
    template_logs: FunctionLogs,
    /// One lock per snapshot key, so that one snapshot is built once.
    building: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// QEMU processes started ahead, waiting for a function snapshot's state.
    spares: Arc<Spares>,
    /// Start slots: the starts in flight and those waiting for one.
    starts: Arc<Starts>,
    /// Versions whose function snapshot is being built or failed to be.
    preparations: Mutex<HashMap<(String, String), Preparation>>,
}

fn mb(kb: u64) -> u64 {
    kb.div_ceil(1024)
}

impl Pool {
    pub fn new(
        engine: Arc<dyn Engine>,
        settings: PoolSettings,
        snapshots: Option<Arc<SnapshotStore>>,
        template_logs: FunctionLogs,
    ) -> Self {
        Self {
            engine,
            books: Default::default(),
            registry: Default::default(),
            snapshots,
            template_logs,
            building: Mutex::new(HashMap::new()),
            spares: Arc::new(Mutex::new(SpareBook::default())),
            starts: Starts::new(settings.starts),
            preparations: Mutex::new(HashMap::new()),
            settings,
        }
    }

    pub fn snapshots(&self) -> Option<&Arc<SnapshotStore>> {
        self.snapshots.as_ref()
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// The start scheduler's settings in force.
    pub fn start_settings(&self) -> StartSettings {
        self.starts.settings()
    }

    /// Where the function snapshot of `function:version` stands (`None`:
    /// built, or not needed).
    pub fn preparation(&self, function: &str, version: &str) -> Option<Preparation> {
        self.preparations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(function.to_string(), version.to_string()))
            .cloned()
    }

    /// Whether `f` starts from a function snapshot of its own: published
    /// versions, and `$LATEST` where configured, when snapshots are on.
    fn gets_function_snapshot(&self, f: &Function) -> bool {
        self.snapshots.is_some()
            && (f.version != crate::functions::LATEST || self.settings.snapshot_latest)
    }

    /// Marks `f`'s function snapshot as about to be built, if `f` gets one;
    /// returns whether it does.
    pub fn expect_preparation(&self, f: &Function) -> bool {
        let applies = self.gets_function_snapshot(f);
        if applies {
            self.set_preparation(f, Some(Preparation::Pending));
        }
        applies
    }

    fn set_preparation(&self, f: &Function, p: Option<Preparation>) {
        let mut m = self.preparations.lock().unwrap_or_else(|p| p.into_inner());
        let k = (f.name.clone(), f.version.clone());
        match p {
            Some(p) => m.insert(k, p),
            None => m.remove(&k),
        };
    }

    /// Starts in flight and waiting for a slot.
    pub fn start_counts(&self) -> StartCounts {
        self.starts.counts()
    }

    // ------------------------------------------------------------ admission

    /// Sets (or, with `None`, removes) a function's reserved concurrency.
    pub fn set_reserved(&self, function: &str, reserved: Option<u32>) {
        let mut b = lock(&self.books);
        match reserved {
            Some(n) => b.reserved.insert(function.to_string(), n),
            None => b.reserved.remove(function),
        };
    }

    /// Admits one invocation of `function`, or throttles it: over its
    /// reserved concurrency, or (without a reservation) over the node's
    /// unreserved share.
    pub fn admit(&self, function: &str) -> Result<Ticket, PoolError> {
        let mut b = lock(&self.books);
        let running = b.running.get(function).copied().unwrap_or(0);
        match b.reserved.get(function) {
            Some(&r) if running >= r => {
                return Err(PoolError::Throttled {
                    reason: Throttle::Reserved,
                    detail: format!(
                        "function {function} has a reserved concurrency of {r} and {running} invocations running"
                    ),
                });
            }
            Some(_) => {}
            None => {
                let reserved_total: u32 = b.reserved.values().sum();
                let share = self.settings.max_instances.saturating_sub(reserved_total);
                // What the functions without a reservation hold of their
                // share: their provisioned instances, and their invocations
                // running on other instances.
                let (mut provisioned, mut on_provisioned, mut idle_own) = (0u32, 0u32, false);
                for m in b.members.values() {
                    if m.provisioned.is_none() || b.reserved.contains_key(&m.function) {
                        continue;
                    }
                    provisioned += 1;
                    if m.busy && m.ready {
                        on_provisioned += 1;
                    }
                    idle_own |= m.function == function && !m.busy && m.ready;
                }
                let running: u32 = b
                    .running
                    .iter()
                    .filter(|(f, _)| !b.reserved.contains_key(*f))
                    .map(|(_, n)| n)
                    .sum();
                let held = provisioned + running.saturating_sub(on_provisioned);
                // On a free provisioned instance it takes nothing more.
                if held + u32::from(!idle_own) > share {
                    return Err(PoolError::Throttled {
                        reason: Throttle::Node,
                        detail: format!("the node's unreserved concurrency of {share} is in use"),
                    });
                }
            }
        }
        *b.running.entry(function.to_string()).or_default() += 1;
        Ok(Ticket {
            books: self.books.clone(),
            function: function.to_string(),
        })
    }

    // -------------------------------------------------------------- leasing

    /// Leases a free instance of `f`'s version: a provisioned one first,
    /// then the most recently used. Instances of an older revision and dead
    /// ones met on the way are stopped.
    pub async fn checkout(&self, f: &Function) -> Option<Lease> {
        loop {
            let (id, cell) = {
                let mut b = lock(&self.books);
                let id = b
                    .members
                    .iter()
                    .filter(|(_, m)| {
                        !m.busy && m.ready && m.function == f.name && m.version == f.version
                    })
                    .max_by_key(|(_, m)| (m.provisioned.is_some(), m.last_used))
                    .map(|(id, _)| id.clone())?;
                let m = b.members.get_mut(&id).expect("member just found");
                m.busy = true;
                m.charge_mb = m.memory_mb;
                (id, m.cell.clone())
            };
            let mut lease = Lease {
                id,
                guard: Some(cell.lock_owned().await),
                books: self.books.clone(),
            };
            // Still in the books (not evicted or pruned while we waited),
            // of the current revision, and alive.
            let booked = lock(&self.books).members.contains_key(&lease.id);
            let usable = booked
                && lease.instance().is_some_and(|i| {
                    i.revision == f.revision && i.code_sha256 == f.code_sha256_hex && i.is_alive()
                });
            if usable {
                return Some(lease);
            }
            // Dropping the lease stops it.
        }
    }

    /// Makes room for and books a new instance of `f` (an empty lease, to
    /// [`Lease::set`] once started). Idle on-demand instances are evicted,
    /// least recently used first, when the node's instance limit or memory
    /// budget is reached; busy and provisioned ones never are.
    pub async fn book(
        &self,
        f: &Function,
        provisioned: Option<String>,
    ) -> Result<Lease, PoolError> {
        let (lease, evicted) = self.book_now(f, provisioned)?;
        // Stopped before the new one starts, so that their memory is free.
        for cell in evicted {
            stop_cell(cell).await;
        }
        Ok(lease)
    }

    /// The bookkeeping of [`Pool::book`]: the new lease and the cells of
    /// the instances evicted for it.
    fn book_now(
        &self,
        f: &Function,
        provisioned: Option<String>,
    ) -> Result<(Lease, Vec<Cell>), PoolError> {
        let need = f.memory_mb as u64;
        let (max, budget) = (
            self.settings.max_instances as usize,
            self.settings.memory_budget_mb,
        );
        let spares = self.spares_mb();
        let mut b = lock(&self.books);
        let mut candidates: Vec<(&String, &Member)> = b
            .members
            .iter()
            .filter(|(_, m)| !m.busy && m.provisioned.is_none())
            .collect();
        candidates.sort_by_key(|(_, m)| m.last_used);
        let (mut count, mut charged) = (b.members.len(), b.charged_mb() + spares);
        let mut victims = Vec::new();
        let mut candidates = candidates.into_iter();
        while count >= max || charged + need > budget {
            let Some((id, m)) = candidates.next() else {
                let detail = if count >= max {
                    format!("the node's {max} instances are in use")
                } else {
                    format!(
                        "the node's memory budget of {budget} MB cannot fit another {need} MB instance ({charged} MB in use)"
                    )
                };
                return Err(PoolError::Throttled {
                    reason: Throttle::Node,
                    detail,
                });
            };
            victims.push(id.clone());
            count -= 1;
            charged -= m.charge_mb;
        }
        let mut evicted = Vec::new();
        for id in victims {
            if let Some(m) = b.members.remove(&id) {
                tracing::info!(instance = %id, function = %m.function, "evicting the least recently used idle instance");
                evicted.push(m.cell);
            }
        }
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let cell: Cell = Default::default();
        let guard = cell
            .clone()
            .try_lock_owned()
            .expect("a new cell is unlocked");
        b.members.insert(
            id.clone(),
            Member {
                function: f.name.clone(),
                version: f.version.clone(),
                provisioned,
                busy: true,
                ready: false,
                last_used: Instant::now(),
                memory_mb: need,
                charge_mb: need,
                idle_mb: None,
                cell,
            },
        );
        let lease = Lease {
            id,
            guard: Some(guard),
            books: self.books.clone(),
        };
        Ok((lease, evicted))
    }

    /// Gives a leased instance back: it is free for the next invocation,
    /// and frozen (when configured) and measured off the response path.
    pub fn release(&self, mut lease: Lease) {
        let Some(guard) = lease.guard.take() else {
            return;
        };
        let (cell, measure) = {
            let mut b = lock(&self.books);
            let Some(m) = b.members.get_mut(&lease.id) else {
                // Stopped meanwhile (its function was deleted).
                drop(b);
                let mut guard = guard;
                if let Some(inst) = guard.take() {
                    tokio::spawn(inst.stop());
                }
                return;
            };
            m.busy = false;
            m.last_used = Instant::now();
            let measure = match m.idle_mb {
                Some((mb, at)) if at.elapsed() < MEASURE_EVERY => {
                    m.charge_mb = mb;
                    false
                }
                _ => true,
            };
            (m.cell.clone(), measure)
        };
        drop(guard);
        let (books, id, freeze) = (
            self.books.clone(),
            lease.id.clone(),
            self.settings.freeze_idle,
        );
        tokio::spawn(async move {
            let mut slot = cell.lock().await;
            let busy = lock(&books).members.get(&id).map(|m| m.busy);
            match busy {
                // Taken out of the books meanwhile: it is ours to stop.
                None => {
                    if let Some(inst) = slot.take() {
                        inst.stop().await;
                    }
                    return;
                }
                // An invocation that came first finds it running.
                Some(true) => return,
                Some(false) => {}
            }
            let Some(inst) = slot.as_mut() else {
                return;
            };
            if freeze && inst.state == InstanceState::Idle {
                if let Err(e) = inst.freeze().await {
                    // An instance that cannot be frozen cannot be trusted either.
                    tracing::warn!(instance = %id, error = %e, "freezing failed; stopping the instance");
                    lock(&books).members.remove(&id);
                    if let Some(inst) = slot.take() {
                        inst.stop().await;
                    }
                    return;
                }
            }
            if !measure {
                return;
            }
            // Measured without holding the instance: reading PSS walks the
            // VMM's page tables, and the next invocation must not wait.
            let pid = inst.pid();
            drop(slot);
            let Ok(used) =
                tokio::task::spawn_blocking(move || mb(crate::engine::process_pss_kb(pid)).max(1))
                    .await
            else {
                return;
            };
            if let Some(m) = lock(&books).members.get_mut(&id) {
                m.idle_mb = Some((used, Instant::now()));
                if !m.busy {
                    m.charge_mb = used;
                }
            }
        });
    }

    /// Stops a leased instance that cannot be reused.
    pub async fn discard(&self, mut lease: Lease) {
        lock(&self.books).members.remove(&lease.id);
        if let Some(mut guard) = lease.guard.take() {
            if let Some(inst) = guard.take() {
                inst.stop().await;
            }
        }
    }

    // ------------------------------------------------------------ reclaiming

    /// Removes the members `pick` selects from the books and stops their
    /// instances, each after its running invocation. Returns their ids.
    async fn stop_where(&self, pick: impl Fn(&str, &Member) -> bool) -> Vec<String> {
        let cells: Vec<(String, Cell)> = {
            let b = lock(&self.books);
            b.members
                .iter()
                .filter(|(id, m)| pick(id, m))
                .map(|(id, m)| (id.clone(), m.cell.clone()))
                .collect()
        };
        let mut stopped = Vec::new();
        for (id, cell) in cells {
            let mut slot = cell.lock().await;
            lock(&self.books).members.remove(&id);
            if let Some(inst) = slot.take() {
                inst.stop().await;
                stopped.push(id);
            }
        }
        stopped
    }

    /// Stops on-demand instances idle for longer than the idle timeout.
    /// Returns the ids stopped.
    pub async fn reclaim_idle(&self) -> Vec<String> {
        let Some(cutoff) = Instant::now().checked_sub(self.settings.idle_timeout) else {
            return Vec::new();
        };
        let ids: Vec<(String, Cell)> = {
            let mut b = lock(&self.books);
            let ids: Vec<String> = b
                .members
                .iter()
                .filter(|(_, m)| {
                    !m.busy && m.ready && m.provisioned.is_none() && m.last_used < cutoff
                })
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| b.members.remove(&id).map(|m| (id, m.cell)))
                .collect()
        };
        let mut stopped = Vec::new();
        for (id, cell) in ids {
            if stop_cell(cell).await {
                stopped.push(id);
            }
        }
        stopped
    }

    /// Every instance, as the node shows them.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<InstanceInfo> = reg
            .values()
            .map(|i| i.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect();
        out.sort_by_key(|i| i.created);
        out
    }

    /// Stops one instance, after its running invocation if it has one.
    /// Returns whether it was found.
    pub async fn stop_instance(&self, id: &str) -> bool {
        !self.stop_where(|mid, _| mid == id).await.is_empty()
    }

    /// Stops the spares of a function's snapshots, and cancels those being
    /// started; returns once none is left (its next restore starts one
    /// again).
    async fn drop_spares(&self, function: &str) {
        let (spares, starting): (Vec<_>, Vec<_>) = {
            let mut book = self.spares.lock().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<String> = book
                .lists
                .iter()
                .filter(|(_, l)| l.function == function)
                .map(|(k, _)| k.clone())
                .collect();
            let spares = keys
                .into_iter()
                .filter_map(|k| book.lists.remove(&k))
                .flat_map(|l| l.vms)
                .collect();
            let (starting, others) = std::mem::take(&mut book.starting)
                .into_iter()
                .partition(|s| s.function == function);
            book.starting = others;
            (spares, starting)
        };
        stop_spares(spares, starting).await;
    }

    /// Stops the instances of one function version, each after its running
    /// invocation.
    pub async fn retire_version(&self, function: &str, version: &str) {
        self.drop_spares(function).await;
        self.stop_where(|_, m| m.function == function && m.version == version)
            .await;
    }

    /// Stops every instance of a function (each after its running
    /// invocation). Returns the ids stopped.
    pub async fn stop_function(&self, function: &str) -> Vec<String> {
        self.stop_where(|_, m| m.function == function).await
    }

    /// Stops every instance of a deleted function, and the QEMU processes
    /// started ahead for its snapshots. Returns the ids stopped.
    pub async fn retire(&self, function: &str) -> Vec<String> {
        self.preparations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(f, _), _| f != function);
        self.drop_spares(function).await;
        self.stop_function(function).await
    }

    /// Stops every instance.
    pub async fn shutdown(&self) {
        self.stop_where(|_, _| true).await;
        let (spares, starting) = {
            let mut book = self.spares.lock().unwrap_or_else(|p| p.into_inner());
            let spares = book.lists.drain().flat_map(|(_, l)| l.vms).collect();
            (spares, std::mem::take(&mut book.starting))
        };
        stop_spares(spares, starting).await;
    }

    // ------------------------------------------------------------ provisioned

    /// The instances of a provisioned-concurrency config.
    pub fn provisioned_count(&self, config: &str) -> ProvisionedCount {
        let b = lock(&self.books);
        let mut c = ProvisionedCount::default();
        for m in b.members.values() {
            if m.provisioned.as_deref() != Some(config) {
                continue;
            }
            if !m.ready {
                c.starting += 1;
            } else {
                c.ready += 1;
                if m.busy {
                    c.busy += 1;
                }
            }
        }
        c
    }

    /// Stops a config's instances that no longer serve it: of another
    /// version or revision than `f`, dead, or (with `f` `None`) all of them.
    /// Returns how many were stopped.
    pub async fn prune_provisioned(&self, config: &str, f: Option<&Function>) -> usize {
        let mut stopped = 0;
        let idle: Vec<(String, Cell, bool)> = {
            let mut b = lock(&self.books);
            let ids: Vec<String> = b
                .members
                .iter()
                .filter(|(_, m)| m.provisioned.as_deref() == Some(config))
                .map(|(id, _)| id.clone())
                .collect();
            let mut idle = Vec::new();
            for id in ids {
                let m = &b.members[&id];
                let other = f.is_none_or(|f| m.function != f.name || m.version != f.version);
                if m.busy || !m.ready {
                    // Serving or starting: out of the books, it is stopped
                    // by whoever holds it when it finds itself gone.
                    if other {
                        b.members.remove(&id);
                        stopped += 1;
                    }
                    continue;
                }
                idle.push((id, m.cell.clone(), other));
            }
            idle
        };
        for (id, cell, other) in idle {
            let Ok(mut slot) = cell.try_lock() else {
                // Being frozen (or just leased): as above.
                if other {
                    lock(&self.books).members.remove(&id);
                    stopped += 1;
                }
                continue;
            };
            let keep = !other
                && slot.as_mut().is_some_and(|i| {
                    f.is_some_and(|f| {
                        i.revision == f.revision && i.code_sha256 == f.code_sha256_hex
                    }) && i.is_alive()
                });
            if !keep {
                lock(&self.books).members.remove(&id);
                if let Some(inst) = slot.take() {
                    tracing::info!(instance = %id, config, "stopping a provisioned instance that no longer serves its config");
                    inst.stop().await;
                }
                stopped += 1;
            }
        }
        stopped
    }

    /// Stops `n` idle instances of a config (a lowered request), least
    /// recently used first.
    pub async fn shrink_provisioned(&self, config: &str, n: usize) {
        let cells: Vec<Cell> = {
            let mut b = lock(&self.books);
            let mut idle: Vec<(&String, &Member)> = b
                .members
                .iter()
                .filter(|(_, m)| m.provisioned.as_deref() == Some(config) && m.ready && !m.busy)
                .collect();
            idle.sort_by_key(|(_, m)| m.last_used);
            let ids: Vec<String> = idle.into_iter().take(n).map(|(id, _)| id.clone()).collect();
            ids.iter()
                .filter_map(|id| b.members.remove(id).map(|m| m.cell))
                .collect()
        };
        for cell in cells {
            stop_cell(cell).await;
        }
    }

    /// Host memory of the QEMU processes started ahead (RSS: cheap to read,
    /// and they share little).
    fn spares_mb(&self) -> u64 {
        let spares = self.spares.lock().unwrap_or_else(|p| p.into_inner());
        let kb: u64 = spares
            .lists
            .values()
            .flat_map(|l| l.vms.iter())
            .map(|spare| spare.vm.stats().rss_kb)
            .sum();
        mb(kb)
    }

    /// Whether the memory budget has room for `mb` more.
    fn has_room(&self, mb: u64) -> bool {
        let spares = self.spares_mb();
        lock(&self.books).charged_mb() + spares + mb <= self.settings.memory_budget_mb
    }

    /// The node's capacity and its use.
    pub fn capacity(&self) -> Capacity {
        let spares = self.spares_mb();
        let b = lock(&self.books);
        Capacity {
            max_instances: self.settings.max_instances,
            memory_budget_mb: self.settings.memory_budget_mb,
            charged_mb: b.charged_mb() + spares,
            reserved_total: b.reserved.values().sum(),
            unreserved_min: self.settings.unreserved_min,
            running: b.running.values().sum(),
        }
    }
}

/// Stops the instance in a cell (after the invocation or freeze holding it).
/// Returns whether there was one.
async fn stop_cell(cell: Cell) -> bool {
    let Some(inst) = cell.lock().await.take() else {
        return false;
    };
    inst.stop().await;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Accel, AccelInfo, Vm, VmSpec};

    /// The books never boot anything: an engine that refuses to.
    struct NoEngine(AccelInfo);

    #[async_trait::async_trait]
    impl Engine for NoEngine {
        async fn boot(&self, _spec: VmSpec) -> Result<Box<dyn Vm>, EngineError> {
            unreachable!("the books do not boot VMs")
        }
        fn accel(&self) -> &AccelInfo {
            &self.0
        }
    }

    /// Settings for pools in tests, with files under `dir`: snapshots,
    /// spares and freezing off, short limits.
    pub(super) fn settings(dir: &std::path::Path) -> PoolSettings {
        PoolSettings {
            kernel: dir.join("vmlinux"),
            artifacts_dir: dir.to_path_buf(),
            run_dir: dir.join("run"),
            boot_timeout: Duration::from_secs(1),
            init_timeout: Duration::from_secs(1),
            snapshot_init_timeout: Duration::from_secs(1),
            region: "r".into(),
            account_id: "a".into(),
            snapshot_latest: false,
            spare_vms: false,
            freeze_idle: false,
            idle_timeout: Duration::from_secs(600),
            max_instances: 16,
            memory_budget_mb: 100_000,
            unreserved_min: 1,
            starts: StartSettings::for_host(2, false),
        }
    }

    fn pool(max_instances: u32, memory_budget_mb: u64) -> Pool {
        let dir = std::env::temp_dir();
        Pool::new(
            Arc::new(NoEngine(AccelInfo {
                accel: Accel::Tcg,
                reason: "test".into(),
            })),
            PoolSettings {
                max_instances,
                memory_budget_mb,
                ..settings(&dir)
            },
            None,
            FunctionLogs::new(dir.join("flint-pool-test-logs"), Default::default()),
        )
    }

    fn function(name: &str) -> Function {
        Function {
            name: name.into(),
            ..Function::placeholder()
        }
    }

    /// An idle, started member last used `age_ms` ago.
    fn idle(pool: &Pool, id: &str, function: &str, age_ms: u64, provisioned: bool) {
        lock(&pool.books).members.insert(
            id.into(),
            Member {
                function: function.into(),
                version: "$LATEST".into(),
                provisioned: provisioned.then(|| format!("{function}:1")),
                busy: false,
                ready: true,
                last_used: Instant::now() - Duration::from_millis(age_ms),
                memory_mb: 128,
                charge_mb: 40,
                idle_mb: None,
                cell: Default::default(),
            },
        );
    }

    fn ids(pool: &Pool) -> Vec<String> {
        let mut v: Vec<String> = lock(&pool.books)
            .members
            .iter()
            .filter(|(_, m)| m.ready)
            .map(|(id, _)| id.clone())
            .collect();
        v.sort();
        v
    }

    fn reason(r: Result<impl Sized, PoolError>) -> Throttle {
        match r {
            Err(PoolError::Throttled { reason, .. }) => reason,
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("admitted"),
        }
    }

    #[test]
    fn reserved_concurrency_caps_and_sets_aside() {
        let p = pool(4, 100_000);
        p.set_reserved("r", Some(2));
        p.set_reserved("zero", Some(0));
        assert_eq!(reason(p.admit("zero")), Throttle::Reserved);
        let r1 = p.admit("r").unwrap();
        let _r2 = p.admit("r").unwrap();
        assert_eq!(reason(p.admit("r")), Throttle::Reserved);
        // The others share 4 - 2 = 2.
        let _a = p.admit("a").unwrap();
        let _b = p.admit("b").unwrap();
        assert_eq!(reason(p.admit("c")), Throttle::Node);
        // A finished invocation frees its place.
        drop(r1);
        let _r3 = p.admit("r").unwrap();
        assert_eq!(p.capacity().running, 4);
        assert_eq!(p.capacity().reserved_total, 2);
    }

    #[test]
    fn provisioned_instances_hold_their_share_of_the_unreserved_concurrency() {
        let p = pool(3, 100_000);
        idle(&p, "p1", "a", 10, true);
        idle(&p, "p2", "a", 20, true);
        // Two of three held by a's provisioned instances: one more for b.
        let _b = p.admit("b").unwrap();
        assert_eq!(reason(p.admit("c")), Throttle::Node);
        // a still has free provisioned instances: admitted.
        let _a = p.admit("a").unwrap();
    }

    #[tokio::test]
    async fn a_full_node_evicts_idle_on_demand_instances_least_recently_used_first() {
        let p = pool(3, 100_000);
        idle(&p, "old", "a", 3000, false);
        idle(&p, "prov", "b", 9000, true);
        idle(&p, "new", "c", 1000, false);
        let (lease, evicted) = p.book_now(&function("d"), None).unwrap();
        assert_eq!(evicted.len(), 1);
        // The provisioned one is older but never evicted.
        assert_eq!(ids(&p), ["new", "prov"]);
        drop(lease);
        assert_eq!(ids(&p), ["new", "prov"]);

        // Busy instances are not evicted either: nothing left to evict.
        lock(&p.books).members.get_mut("new").unwrap().busy = true;
        let _l = p.book_now(&function("e"), None).unwrap();
        assert_eq!(reason(p.book_now(&function("f"), None)), Throttle::Node);
    }

    #[tokio::test]
    async fn the_memory_budget_counts_idle_instances_by_what_they_use() {
        // 3 idle instances count 40 MB each: a 128 MB one fits in 220 MB
        // only after one of them goes.
        let p = pool(100, 220);
        idle(&p, "x", "a", 3000, false);
        idle(&p, "y", "a", 2000, false);
        idle(&p, "z", "a", 1000, false);
        let (_lease, evicted) = p.book_now(&function("b"), None).unwrap();
        assert_eq!(evicted.len(), 1);
        assert_eq!(ids(&p), ["y", "z"]);
        assert_eq!(p.capacity().charged_mb, 40 + 40 + 128);
    }

    /// One step of a random workload on the books.
    #[derive(Debug, Clone)]
    enum Op {
        Admit(usize),
        Finish(usize),
        Book(usize, u32),
        Release(usize),
        Drop(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0..4usize).prop_map(Op::Admit),
            any::<usize>().prop_map(Op::Finish),
            (0..4usize, prop::sample::select(vec![128u32, 256, 512]))
                .prop_map(|(f, m)| Op::Book(f, m)),
            any::<usize>().prop_map(Op::Release),
            any::<usize>().prop_map(Op::Drop),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(
            std::env::var("FLINT_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(200)
        ))]

        /// Whatever the order of admissions, bookings, releases and drops:
        /// a reserved function never runs beyond its reservation, the
        /// others never beyond what reservations leave, the node never
        /// holds more instances or memory than its limits, and what is
        /// dropped gives its capacity back.
        #[test]
        fn the_books_keep_their_invariants(
            reserved in proptest::collection::vec(proptest::option::of(0u32..3), 4),
            max in 1u32..8,
            budget in 256u64..2048,
            ops in proptest::collection::vec(op(), 1..60),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let p = pool(max, budget);
                let names = ["f0", "f1", "f2", "f3"];
                for (n, r) in names.iter().zip(&reserved) {
                    p.set_reserved(n, *r);
                }
                let reserved_total: u32 = reserved.iter().flatten().sum();
                let (mut tickets, mut leases) = (Vec::new(), Vec::new());
                for op in ops {
                    match op {
                        Op::Admit(f) => {
                            if let Ok(t) = p.admit(names[f]) {
                                tickets.push(t);
                            }
                        }
                        Op::Finish(i) if !tickets.is_empty() => {
                            let n = tickets.len();
                            tickets.remove(i % n);
                        }
                        Op::Book(f, mb) => {
                            let mut fun = function(names[f]);
                            fun.memory_mb = mb;
                            if let Ok((lease, evicted)) = p.book_now(&fun, None) {
                                for cell in evicted {
                                    stop_cell(cell).await;
                                }
                                if let Some(m) = lock(&p.books).members.get_mut(&lease.id) {
                                    m.ready = true;
                                }
                                leases.push(lease);
                            }
                        }
                        Op::Release(i) if !leases.is_empty() => {
                            let n = leases.len();
                            p.release(leases.remove(i % n));
                            tokio::task::yield_now().await;
                        }
                        Op::Drop(i) if !leases.is_empty() => {
                            let n = leases.len();
                            leases.remove(i % n);
                        }
                        _ => {}
                    }
                    let b = lock(&p.books);
                    for (n, r) in names.iter().zip(&reserved) {
                        let running = b.running.get(*n).copied().unwrap_or(0);
                        if let Some(r) = r {
                            proptest::prop_assert!(running <= *r, "{n} runs {running} over its {r}");
                        }
                    }
                    let unreserved: u32 = names
                        .iter()
                        .zip(&reserved)
                        .filter(|(_, r)| r.is_none())
                        .map(|(n, _)| b.running.get(*n).copied().unwrap_or(0))
                        .sum();
                    proptest::prop_assert!(unreserved <= max.saturating_sub(reserved_total));
                    proptest::prop_assert!(b.members.len() as u32 <= max);
                    proptest::prop_assert!(b.charged_mb() <= budget, "{} MB over {budget}", b.charged_mb());
                    let busy = b.members.values().filter(|m| m.busy).count();
                    proptest::prop_assert_eq!(busy, leases.len(), "a busy member without its lease");
                }
                drop(tickets);
                drop(leases);
                let b = lock(&p.books);
                proptest::prop_assert!(b.running.is_empty(), "{:?}", b.running);
                proptest::prop_assert!(b.members.values().all(|m| !m.busy));
                Ok(())
            })?;
        }
    }
}
