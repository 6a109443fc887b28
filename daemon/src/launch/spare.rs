//! Spares: QEMU processes started ahead for a function snapshot. A spare's
//! process is started, the snapshot's state loaded, and the guest run once
//! through what a restore will run (`Warm`: the agent applies a clock,
//! entropy and a host name and sends itself a request on the Runtime API's
//! port), then paused. Its runtime stays parked, and the clone has no
//! identity of its own until it is taken: the restore then sends `Resume`
//! with fresh values and runs it.
//!
//! Under TCG a first run of guest code is translated, and QEMU empties its
//! translation cache when it loads a state: the warm-up moves those first
//! runs of the kernel's interrupt, timekeeping and TCP paths and of the
//! agent's out of the restore.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use super::{LaunchError, Launcher};
use crate::engine::{Engine, Vm, VmSpec};
use crate::functions::Function;
use crate::guest::{AgentChannel, GuestError};
use crate::snapshot::Snapshot;

/// How long a spare's guest may take to answer `Warm`.
const WARM_TIMEOUT: Duration = Duration::from_secs(10);

/// Host memory a spare takes (measured with TCG and a 128 MB guest: RSS
/// 58 MB, of which 14 MB snapshot pages shared with the clones and 8 MB code
/// translated during the warm-up).
pub const SPARE_MB: u64 = 60;

/// A paused clone of a function snapshot that has not been given its
/// identity yet.
pub struct Spare {
    pub vm: Box<dyn Vm>,
    pub channel: AgentChannel,
}

/// QEMU processes started ahead for one function snapshot.
#[derive(Default)]
struct SpareList {
    function: String,
    vms: Vec<Spare>,
}

/// A spare being started (its task stops it when cancelled, or when its
/// entry is gone from the book by the time it is ready).
pub struct StartingSpare {
    id: String,
    function: String,
    cancel: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Spares by snapshot key, and the spares being started.
#[derive(Default)]
struct SpareBook {
    lists: HashMap<String, SpareList>,
    starting: Vec<StartingSpare>,
}

#[derive(Default)]
pub struct Spares(Mutex<SpareBook>);

impl Spares {
    fn lock(&self) -> std::sync::MutexGuard<'_, SpareBook> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes every spare and every start of one out of the book.
    pub fn take_all(&self) -> (Vec<Spare>, Vec<StartingSpare>) {
        let mut book = self.lock();
        let spares = book.lists.drain().flat_map(|(_, l)| l.vms).collect();
        (spares, std::mem::take(&mut book.starting))
    }

    pub fn count(&self) -> usize {
        self.lock().lists.values().map(|l| l.vms.len()).sum()
    }

    /// Host memory of the spares (RSS: cheap to read, and they share little).
    pub fn rss_kb(&self) -> u64 {
        self.lock()
            .lists
            .values()
            .flat_map(|l| l.vms.iter())
            .map(|spare| spare.vm.stats().rss_kb)
            .sum()
    }
}

/// Stops spares, and the starts of spares in flight (each is cancelled,
/// and its task stops what it started before it ends).
pub async fn stop_spares(spares: Vec<Spare>, starting: Vec<StartingSpare>) {
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

impl Launcher {
    /// Host memory of the QEMU processes started ahead, in MB.
    pub fn spares_mb(&self) -> u64 {
        self.spares.rss_kb().div_ceil(1024)
    }

    /// QEMU processes started ahead, ready for a restore.
    pub fn spare_count(&self) -> usize {
        self.spares.count()
    }

    /// A live spare of the snapshot `key`, if there is one.
    pub(super) fn take_spare(&self, key: &str) -> Option<Spare> {
        let mut spares = self.spares.lock();
        let list = spares.lists.get_mut(key)?;
        while let Some(spare) = list.vms.pop() {
            if !spare.vm.has_exited() {
                return Some(spare);
            }
        }
        None
    }

    /// Starts a spare for the next clone of `snap` (its QEMU process
    /// started, the state loaded, the guest warmed up and paused), so that
    /// none of it is on the critical path. `spec` is the VM of a restore.
    pub(super) fn refill_spare(&self, f: &Function, snap: &Snapshot, spec: VmSpec) {
        let spec = VmSpec {
            background: true,
            ..spec
        };
        let id = spec.id.clone();
        let engine = self.engine.clone();
        let network = self.network.clone();
        let net_config = f.network.clone();
        let spares = self.spares.clone();
        let key = snap.key.clone();
        let function = f.name.clone();
        let state = snap.state();
        let (cancel, cancelled) = watch::channel(false);
        let mut book = self.spares.lock();
        let task = tokio::spawn({
            let (id, function) = (id.clone(), function.clone());
            async move {
                // Its network, rules included, is ready with it.
                let started = match network.map(|n| async move { n.acquire(&net_config).await }) {
                    Some(acquiring) => acquiring.await.map_err(LaunchError::from),
                    None => Ok(None),
                };
                let started = match started {
                    Ok(net) => {
                        let spec = VmSpec { net, ..spec };
                        Spare::start(engine.as_ref(), spec, &state, cancelled).await
                    }
                    Err(e) => Err(e),
                };
                let extra = {
                    let mut book = spares.lock();
                    // Gone from the book: its function's spares were dropped.
                    let wanted = match book.starting.iter().position(|s| s.id == id) {
                        Some(i) => {
                            book.starting.swap_remove(i);
                            true
                        }
                        None => false,
                    };
                    match started {
                        Ok(Some(spare)) if wanted => {
                            let list = book.lists.entry(key).or_default();
                            if list.vms.is_empty() {
                                list.function = function;
                                list.vms.push(spare);
                                None
                            } else {
                                Some(spare)
                            }
                        }
                        Ok(Some(spare)) => Some(spare),
                        Ok(None) => None, // cancelled, and stopped
                        Err(e) => {
                            tracing::warn!(error = %e, "starting a spare VMM failed");
                            None
                        }
                    }
                };
                if let Some(mut spare) = extra {
                    let _ = spare.vm.stop().await;
                }
            }
        });
        book.starting.push(StartingSpare {
            id,
            function,
            cancel,
            task,
        });
    }

    /// Stops the spares of a function's snapshots, and cancels those being
    /// started; returns once none is left (its next restore starts one
    /// again).
    pub async fn drop_spares(&self, function: &str) {
        let (spares, starting): (Vec<_>, Vec<_>) = {
            let mut book = self.spares.lock();
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
}

impl Spare {
    /// Starts a spare for the snapshot whose state is `state`. `None` when
    /// `cancelled` turns true (or its sender is gone) first: what was
    /// started is stopped.
    pub async fn start(
        engine: &dyn Engine,
        spec: VmSpec,
        state: &Path,
        mut cancelled: watch::Receiver<bool>,
    ) -> Result<Option<Spare>, LaunchError> {
        let id = spec.id.clone();
        let mut vm = engine.boot(spec).await?;
        let warmed = tokio::select! {
            r = warm(vm.as_mut(), state, &id) => Some(r),
            _ = cancelled.wait_for(|c| *c) => None,
        };
        match warmed {
            Some(Ok(channel)) => Ok(Some(Spare { vm, channel })),
            Some(Err(e)) => {
                let _ = vm.stop().await;
                Err(e)
            }
            None => {
                let _ = vm.stop().await;
                Ok(None)
            }
        }
    }
}

async fn warm(vm: &mut dyn Vm, state: &Path, id: &str) -> Result<AgentChannel, LaunchError> {
    let stream = vm.take_channel().ok_or(LaunchError::NoChannel)?;
    vm.load(state).await?;
    vm.resume().await?;
    let (channel, took) = match crate::guest::warm_up(stream, id, WARM_TIMEOUT).await {
        Ok(warmed) => warmed,
        Err(GuestError::TimedOut(limit)) => {
            return Err(LaunchError::WarmUpTimeout(limit, vm.console_tail(2048)))
        }
        Err(e) => return Err(e.into()),
    };
    vm.pause().await?;
    tracing::debug!(spare = %id, agent_ms = took.as_millis() as u64, "spare warmed");
    Ok(channel)
}
