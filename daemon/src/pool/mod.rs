//! The pool: instances lent to invocations, over the node's books. An
//! invocation is first *admitted* (a [`Ticket`]: its function's reserved
//! concurrency, or the node's unreserved share, has room), then *leased* an
//! instance ([`Lease`]): a free one of its version, provisioned ones first
//! and then the most recently used, or a new one when the node has room
//! (after evicting idle instances if it must), started by the launcher.
//!
//! The decisions are the books' (`books.rs`: synchronous, no I/O); this
//! file holds the instances themselves, each in a cell its lease locks, and
//! stops those that leave the books.

mod books;
#[cfg(test)]
mod lifecycle_tests;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;

use crate::functions::Function;
use crate::launch::{
    Images, Instance, InstanceInfo, InstanceState, LaunchError, Launcher, Started,
};
use crate::logs::LogStream;

pub use books::ProvisionedCount;
use books::{Books, Limits};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
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
}

impl Throttle {
    /// Lambda's `Reason` of a `TooManyRequestsException`.
    pub fn reason(self) -> &'static str {
        match self {
            Throttle::Reserved => "ReservedFunctionConcurrentInvocationLimitExceeded",
            Throttle::Node => "ConcurrentInvocationLimitExceeded",
        }
    }
}

/// The node's limits, and what happens to idle instances.
#[derive(Debug, Clone)]
pub struct PoolSettings {
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
}

/// The place of one instance; empty while it starts, and after it stopped.
type Cell = Arc<tokio::sync::Mutex<Option<Instance>>>;

type SharedBooks = Arc<Mutex<Books<Cell>>>;

fn lock(books: &SharedBooks) -> std::sync::MutexGuard<'_, Books<Cell>> {
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
        lock(&self.books).finish(&self.function);
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
        lock(&self.books).mark_ready(&self.id);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        lock(&self.books).remove(&self.id);
        if let Some(inst) = guard.take() {
            tokio::spawn(inst.stop());
        }
    }
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
    launcher: Arc<Launcher>,
    settings: PoolSettings,
    books: SharedBooks,
}

fn mb(kb: u64) -> u64 {
    kb.div_ceil(1024)
}

impl Pool {
    pub fn new(launcher: Arc<Launcher>, settings: PoolSettings) -> Self {
        Self {
            launcher,
            settings,
            books: Default::default(),
        }
    }

    /// What starts the pool's instances.
    pub fn launcher(&self) -> &Arc<Launcher> {
        &self.launcher
    }

    fn limits(&self) -> Limits {
        Limits {
            max_instances: self.settings.max_instances,
            memory_budget_mb: self.settings.memory_budget_mb,
        }
    }

    // ------------------------------------------------------------ admission

    /// Sets (or, with `None`, removes) a function's reserved concurrency.
    pub fn set_reserved(&self, function: &str, reserved: Option<u32>) {
        lock(&self.books).set_reserved(function, reserved);
    }

    /// Admits one invocation of `function`, or throttles it: over its
    /// reserved concurrency, or (without a reservation) over the node's
    /// unreserved share.
    pub fn admit(&self, function: &str) -> Result<Ticket, PoolError> {
        lock(&self.books).admit(function, self.settings.max_instances)?;
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
            let (id, cell) = lock(&self.books).lend(&f.name, &f.version)?;
            let mut lease = Lease {
                id,
                guard: Some(cell.lock_owned().await),
                books: self.books.clone(),
            };
            // Still in the books (not evicted or pruned while we waited),
            // of the current revision, and alive.
            let booked = lock(&self.books).is_busy(&lease.id).is_some();
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
        for _ in &evicted {
            crate::observe::count(&crate::observe::NODE.evictions);
        }
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
        let spares = self.launcher.spares_mb();
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let cell: Cell = Default::default();
        let guard = cell
            .clone()
            .try_lock_owned()
            .expect("a new cell is unlocked");
        let evicted = lock(&self.books).book(
            id.clone(),
            &f.name,
            &f.version,
            f.memory_mb as u64,
            provisioned,
            self.limits(),
            spares,
            cell,
        )?;
        let lease = Lease {
            id,
            guard: Some(guard),
            books: self.books.clone(),
        };
        Ok((lease, evicted))
    }

    /// Starts the instance of a booked lease through the launcher (see
    /// [`Launcher::start`]); a spare for the next restore is started only
    /// where spares are on and the memory budget has room for one.
    pub async fn start(
        &self,
        f: &Function,
        images: Images,
        instance_id: String,
        log: LogStream,
        deadline: Option<Instant>,
    ) -> Result<Started, LaunchError> {
        let spare = self.launcher.settings().spare_vms && self.has_room(crate::launch::SPARE_MB);
        self.launcher
            .start(f, images, instance_id, log, deadline, spare)
            .await
    }

    /// Gives a leased instance back: it is free for the next invocation,
    /// and frozen (when configured) and measured off the response path.
    pub fn release(&self, mut lease: Lease) {
        let Some(guard) = lease.guard.take() else {
            return;
        };
        let Some((cell, measure)) = lock(&self.books).give_back(&lease.id) else {
            // Stopped meanwhile (its function was deleted).
            let mut guard = guard;
            if let Some(inst) = guard.take() {
                tokio::spawn(inst.stop());
            }
            return;
        };
        drop(guard);
        let (books, id, freeze) = (
            self.books.clone(),
            lease.id.clone(),
            self.settings.freeze_idle,
        );
        tokio::spawn(async move {
            let mut slot = cell.lock().await;
            let busy = lock(&books).is_busy(&id);
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
            if freeze && inst.state() == InstanceState::Idle {
                if let Err(e) = inst.freeze().await {
                    // An instance that cannot be frozen cannot be trusted either.
                    tracing::warn!(instance = %id, error = %e, "freezing failed; stopping the instance");
                    lock(&books).remove(&id);
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
            lock(&books).measured(&id, used);
        });
    }

    /// Stops a leased instance that cannot be reused.
    pub async fn discard(&self, mut lease: Lease) {
        lock(&self.books).remove(&lease.id);
        if let Some(mut guard) = lease.guard.take() {
            if let Some(inst) = guard.take() {
                inst.stop().await;
            }
        }
    }

    // ------------------------------------------------------------ reclaiming

    /// Removes the members `pick` selects from the books and stops their
    /// instances, each after its running invocation. Returns their ids.
    async fn stop_where(&self, pick: impl Fn(&str, &books::Member<Cell>) -> bool) -> Vec<String> {
        let cells = lock(&self.books).select(pick);
        let mut stopped = Vec::new();
        for (id, cell) in cells {
            let mut slot = cell.lock().await;
            lock(&self.books).remove(&id);
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
        let idle = lock(&self.books).take_idle_since(cutoff);
        let mut stopped = Vec::new();
        for (id, cell) in idle {
            if stop_cell(cell).await {
                stopped.push(id);
            }
        }
        stopped
    }

    /// Every instance, as the node shows them.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        self.launcher.instances()
    }

    /// Stops one instance, after its running invocation if it has one.
    /// Returns whether it was found.
    pub async fn stop_instance(&self, id: &str) -> bool {
        !self.stop_where(|mid, _| mid == id).await.is_empty()
    }

    /// Stops the instances of one function version, each after its running
    /// invocation, and the spares of its function's snapshots.
    pub async fn retire_version(&self, function: &str, version: &str) {
        self.launcher.drop_spares(function).await;
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
        self.launcher.retire(function).await;
        self.stop_function(function).await
    }

    /// Stops every instance and every spare.
    pub async fn shutdown(&self) {
        self.stop_where(|_, _| true).await;
        self.launcher.shutdown().await;
    }

    // ------------------------------------------------------------ provisioned

    /// The instances of a provisioned-concurrency config.
    /// The provisioned-concurrency config that keeps instance `id`.
    pub fn provisioned_key(&self, id: &str) -> Option<String> {
        lock(&self.books)
            .members
            .get(id)
            .and_then(|m| m.provisioned.clone())
    }

    pub fn provisioned_count(&self, config: &str) -> ProvisionedCount {
        lock(&self.books).provisioned_count(config)
    }

    /// Stops a config's instances that no longer serve it: of another
    /// version or revision than `f`, dead, or (with `f` `None`) all of them.
    /// Returns how many were stopped.
    pub async fn prune_provisioned(&self, config: &str, f: Option<&Function>) -> usize {
        let mut stopped = 0;
        let idle: Vec<(String, Cell, bool)> = {
            let mut b = lock(&self.books);
            let mut idle = Vec::new();
            for (id, cell) in b.select(|_, m| m.provisioned.as_deref() == Some(config)) {
                let m = &b.members[&id];
                let other = f.is_none_or(|f| m.function != f.name || m.version != f.version);
                if m.busy || !m.ready {
                    // Serving or starting: out of the books, it is stopped
                    // by whoever holds it when it finds itself gone.
                    if other {
                        b.remove(&id);
                        stopped += 1;
                    }
                    continue;
                }
                idle.push((id, cell, other));
            }
            idle
        };
        for (id, cell, other) in idle {
            let Ok(mut slot) = cell.try_lock() else {
                // Being frozen (or just leased): as above.
                if other {
                    lock(&self.books).remove(&id);
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
                lock(&self.books).remove(&id);
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
        let cells = lock(&self.books).take_idle_provisioned(config, n);
        for cell in cells {
            stop_cell(cell).await;
        }
    }

    /// Whether the memory budget has room for `mb` more.
    fn has_room(&self, mb: u64) -> bool {
        let spares = self.launcher.spares_mb();
        lock(&self.books).charged_mb() + spares + mb <= self.settings.memory_budget_mb
    }

    /// The node's capacity and its use.
    pub fn capacity(&self) -> Capacity {
        let spares = self.launcher.spares_mb();
        let b = lock(&self.books);
        Capacity {
            max_instances: self.settings.max_instances,
            memory_budget_mb: self.settings.memory_budget_mb,
            charged_mb: b.charged_mb() + spares,
            reserved_total: b.reserved_total(),
            unreserved_min: self.settings.unreserved_min,
            running: b.running_total(),
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
mod tests;
