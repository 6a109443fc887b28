//! The books under every order of admissions, bookings, releases and
//! drops, without an engine.

use super::*;
use crate::engine::{Accel, AccelInfo, Engine, EngineError, Vm, VmSpec};
use crate::logs::FunctionLogs;

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

/// The limits of pools in tests.
pub(crate) fn settings(max_instances: u32, memory_budget_mb: u64) -> PoolSettings {
    PoolSettings {
        freeze_idle: false,
        idle_timeout: Duration::from_secs(600),
        max_instances,
        memory_budget_mb,
        unreserved_min: 1,
    }
}

fn pool(max_instances: u32, memory_budget_mb: u64) -> Pool {
    let dir = std::env::temp_dir();
    let launcher = Launcher::new(
        Arc::new(NoEngine(AccelInfo {
            accel: Accel::Tcg,
            reason: "test".into(),
        })),
        crate::launch::test_settings(&dir),
        None,
        FunctionLogs::new(dir.join("flint-pool-test-logs"), Default::default()),
    );
    Pool::new(
        Arc::new(launcher),
        settings(max_instances, memory_budget_mb),
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
        books::Member {
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
        (0..4usize, prop::sample::select(vec![128u32, 256, 512])).prop_map(|(f, m)| Op::Book(f, m)),
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
                            lock(&p.books).mark_ready(&lease.id);
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
