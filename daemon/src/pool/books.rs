//! The node's books: which instances exist, which are lent, what each
//! counts against the node's limits, and who may have one next. Plain
//! synchronous bookkeeping: no I/O, no engine, no instance. A member holds
//! an opaque handle `C` (the pool's cell) that the books hand back when a
//! member leaves them, for the caller to stop.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{PoolError, Throttle};

/// How long a measurement of an idle instance's memory stands.
pub const MEASURE_EVERY: Duration = Duration::from_secs(30);

/// The node's limits, as the books apply them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// At most this many instances (busy, idle and starting).
    pub max_instances: u32,
    /// Host memory the instances may use, in MB.
    pub memory_budget_mb: u64,
}

/// One instance in the books.
#[derive(Debug)]
pub struct Member<C> {
    pub function: String,
    pub version: String,
    /// The provisioned-concurrency config (`function:qualifier`) it serves.
    pub provisioned: Option<String>,
    /// Leased to an invocation, or starting.
    pub busy: bool,
    /// Started and not yet stopped.
    pub ready: bool,
    pub last_used: Instant,
    pub memory_mb: u64,
    /// What it counts against the memory budget: its full size while busy
    /// or starting, the host memory it was measured to use while idle.
    pub charge_mb: u64,
    /// What it was measured to use when last idle, and when.
    pub idle_mb: Option<(u64, Instant)>,
    pub cell: C,
}

/// How many instances a provisioned-concurrency config has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProvisionedCount {
    pub starting: u32,
    pub ready: u32,
    pub busy: u32,
}

#[derive(Debug)]
pub struct Books<C> {
    pub members: HashMap<String, Member<C>>,
    /// Concurrent invocations per function.
    pub running: HashMap<String, u32>,
    /// Reserved concurrency per function.
    pub reserved: HashMap<String, u32>,
}

impl<C> Default for Books<C> {
    fn default() -> Self {
        Self {
            members: HashMap::new(),
            running: HashMap::new(),
            reserved: HashMap::new(),
        }
    }
}

impl<C: Clone> Books<C> {
    /// Memory counted against the budget by the members.
    pub fn charged_mb(&self) -> u64 {
        self.members.values().map(|m| m.charge_mb).sum()
    }

    pub fn reserved_total(&self) -> u32 {
        self.reserved.values().sum()
    }

    pub fn running_total(&self) -> u32 {
        self.running.values().sum()
    }

    /// Sets (or, with `None`, removes) a function's reserved concurrency.
    pub fn set_reserved(&mut self, function: &str, reserved: Option<u32>) {
        match reserved {
            Some(n) => self.reserved.insert(function.to_string(), n),
            None => self.reserved.remove(function),
        };
    }

    /// Counts one more invocation of `function` running, or throttles it:
    /// over its reserved concurrency, or (without a reservation) over the
    /// node's unreserved share of `max_instances`.
    pub fn admit(&mut self, function: &str, max_instances: u32) -> Result<(), PoolError> {
        let running = self.running.get(function).copied().unwrap_or(0);
        match self.reserved.get(function) {
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
                let share = max_instances.saturating_sub(self.reserved_total());
                // What the functions without a reservation hold of their
                // share: their provisioned instances, and their invocations
                // running on other instances.
                let (mut provisioned, mut on_provisioned, mut idle_own) = (0u32, 0u32, false);
                for m in self.members.values() {
                    if m.provisioned.is_none() || self.reserved.contains_key(&m.function) {
                        continue;
                    }
                    provisioned += 1;
                    if m.busy && m.ready {
                        on_provisioned += 1;
                    }
                    idle_own |= m.function == function && !m.busy && m.ready;
                }
                let running: u32 = self
                    .running
                    .iter()
                    .filter(|(f, _)| !self.reserved.contains_key(*f))
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
        *self.running.entry(function.to_string()).or_default() += 1;
        Ok(())
    }

    /// One invocation of `function` ended.
    pub fn finish(&mut self, function: &str) {
        if let Some(n) = self.running.get_mut(function) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.running.remove(function);
            }
        }
    }

    /// Lends the free instance of `function:version` to use next: a
    /// provisioned one first, then the most recently used.
    pub fn lend(&mut self, function: &str, version: &str) -> Option<(String, C)> {
        let id = self
            .members
            .iter()
            .filter(|(_, m)| !m.busy && m.ready && m.function == function && m.version == version)
            .max_by_key(|(_, m)| (m.provisioned.is_some(), m.last_used))
            .map(|(id, _)| id.clone())?;
        let m = self.members.get_mut(&id).expect("member just found");
        m.busy = true;
        m.charge_mb = m.memory_mb;
        Some((id, m.cell.clone()))
    }

    /// Books a new, busy member `id` of `memory_mb`, evicting idle
    /// on-demand members least recently used first when `limits` (with
    /// `outside_mb` used by others) leave no room; busy and provisioned
    /// ones are never evicted. Returns the cells of the evicted.
    #[allow(clippy::too_many_arguments)]
    pub fn book(
        &mut self,
        id: String,
        function: &str,
        version: &str,
        memory_mb: u64,
        provisioned: Option<String>,
        limits: Limits,
        outside_mb: u64,
        cell: C,
    ) -> Result<Vec<C>, PoolError> {
        let (max, budget) = (limits.max_instances as usize, limits.memory_budget_mb);
        let mut candidates: Vec<(&String, &Member<C>)> = self
            .members
            .iter()
            .filter(|(_, m)| !m.busy && m.provisioned.is_none())
            .collect();
        candidates.sort_by_key(|(_, m)| m.last_used);
        let (mut count, mut charged) = (self.members.len(), self.charged_mb() + outside_mb);
        let mut victims = Vec::new();
        let mut candidates = candidates.into_iter();
        while count >= max || charged + memory_mb > budget {
            let Some((id, m)) = candidates.next() else {
                let detail = if count >= max {
                    format!("the node's {max} instances are in use")
                } else {
                    format!(
                        "the node's memory budget of {budget} MB cannot fit another {memory_mb} MB instance ({charged} MB in use)"
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
            if let Some(m) = self.members.remove(&id) {
                tracing::info!(instance = %id, function = %m.function, "evicting the least recently used idle instance");
                evicted.push(m.cell);
            }
        }
        self.members.insert(
            id,
            Member {
                function: function.into(),
                version: version.into(),
                provisioned,
                busy: true,
                ready: false,
                last_used: Instant::now(),
                memory_mb,
                charge_mb: memory_mb,
                idle_mb: None,
                cell,
            },
        );
        Ok(evicted)
    }

    /// A booked member's instance started.
    pub fn mark_ready(&mut self, id: &str) {
        if let Some(m) = self.members.get_mut(id) {
            m.ready = true;
        }
    }

    /// A lent member comes back: free, and counted by what it was last
    /// measured to use. `None`: it left the books meanwhile. `Some(true)`:
    /// it is due a new measurement.
    pub fn give_back(&mut self, id: &str) -> Option<(C, bool)> {
        let m = self.members.get_mut(id)?;
        m.busy = false;
        m.last_used = Instant::now();
        let measure = match m.idle_mb {
            Some((mb, at)) if at.elapsed() < MEASURE_EVERY => {
                m.charge_mb = mb;
                false
            }
            _ => true,
        };
        Some((m.cell.clone(), measure))
    }

    /// What an idle member was measured to use.
    pub fn measured(&mut self, id: &str, mb: u64) {
        if let Some(m) = self.members.get_mut(id) {
            m.idle_mb = Some((mb, Instant::now()));
            if !m.busy {
                m.charge_mb = mb;
            }
        }
    }

    /// Whether `id` is in the books, and lent.
    pub fn is_busy(&self, id: &str) -> Option<bool> {
        self.members.get(id).map(|m| m.busy)
    }

    /// Takes a member out of the books; its cell is the caller's to stop.
    pub fn remove(&mut self, id: &str) -> Option<C> {
        self.members.remove(id).map(|m| m.cell)
    }

    /// The members `pick` selects, left in the books.
    pub fn select(&self, pick: impl Fn(&str, &Member<C>) -> bool) -> Vec<(String, C)> {
        self.members
            .iter()
            .filter(|(id, m)| pick(id, m))
            .map(|(id, m)| (id.clone(), m.cell.clone()))
            .collect()
    }

    /// Takes out the on-demand members idle since before `cutoff`.
    pub fn take_idle_since(&mut self, cutoff: Instant) -> Vec<(String, C)> {
        let ids: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| !m.busy && m.ready && m.provisioned.is_none() && m.last_used < cutoff)
            .map(|(id, _)| id.clone())
            .collect();
        ids.into_iter()
            .filter_map(|id| self.members.remove(&id).map(|m| (id, m.cell)))
            .collect()
    }

    /// The instances of a provisioned-concurrency config.
    pub fn provisioned_count(&self, config: &str) -> ProvisionedCount {
        let mut c = ProvisionedCount::default();
        for m in self.members.values() {
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

    /// Takes out `n` idle members of a config, least recently used first.
    pub fn take_idle_provisioned(&mut self, config: &str, n: usize) -> Vec<C> {
        let mut idle: Vec<(&String, &Member<C>)> = self
            .members
            .iter()
            .filter(|(_, m)| m.provisioned.as_deref() == Some(config) && m.ready && !m.busy)
            .collect();
        idle.sort_by_key(|(_, m)| m.last_used);
        let ids: Vec<String> = idle.into_iter().take(n).map(|(id, _)| id.clone()).collect();
        ids.iter()
            .filter_map(|id| self.members.remove(id).map(|m| m.cell))
            .collect()
    }
}
