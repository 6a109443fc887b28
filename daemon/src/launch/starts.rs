//! The start scheduler. A start — a cold boot, a runtime-snapshot restore
//! with the init that follows it, a function-snapshot restore, the build of
//! a snapshot — takes one of a fixed number of slots, sized to the host, for
//! as long as it runs. The others wait their turn: in the order they came
//! within a function, and across functions the one with the fewest starts
//! in flight goes first, so that one function's burst cannot take every
//! slot from the others. Each function also has a scaling rate like
//! Lambda's (a token bucket: so many new instances per interval); a start
//! beyond it waits for the next token.
//!
//! Admission (reserved concurrency, node capacity) happens before: an
//! admitted invocation waits here for a slot, it is not throttled for it,
//! unless the wait outlasts the budget its caller gives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::LaunchError;

/// How many starts run at once, and how fast one function may add instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartSettings {
    /// Starts in flight at once on the node.
    pub slots: u32,
    /// New instances one function may start per `scale_interval`.
    pub scale_instances: u32,
    pub scale_interval: Duration,
}

impl StartSettings {
    /// The node's defaults: under KVM a start is mostly waiting on memory
    /// and the agent, so two per CPU; under TCG every start's vCPU is a
    /// busy host thread, so one per CPU. The scaling rate is Lambda's:
    /// 1,000 new instances per function every 10 seconds.
    pub fn for_host(cpus: u32, kvm: bool) -> Self {
        let cpus = cpus.max(1);
        Self {
            slots: if kvm { 2 * cpus } else { cpus },
            scale_instances: 1000,
            scale_interval: Duration::from_secs(10),
        }
    }
}

/// Starts waiting and in flight, for `GetNodeInfo` and `ListInstances`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartCounts {
    pub in_flight: u32,
    pub waiting: u32,
    /// Per function: (in flight, waiting), functions with neither left out.
    pub by_function: Vec<(String, u32, u32)>,
}

/// A token bucket: `capacity` tokens, refilled continuously at
/// `capacity` per `interval`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
struct Waiter {
    seq: u64,
    function: String,
}

#[derive(Debug, Default)]
struct Books {
    in_flight: HashMap<String, u32>,
    total: u32,
    waiting: Vec<Waiter>,
    buckets: HashMap<String, Bucket>,
    next_seq: u64,
}

pub struct Starts {
    settings: StartSettings,
    books: Mutex<Books>,
    changed: Notify,
}

/// A start slot; the start is over when it is dropped.
pub struct StartSlot {
    starts: Arc<Starts>,
    function: String,
}

impl Drop for StartSlot {
    fn drop(&mut self) {
        let mut b = self.starts.lock();
        b.total = b.total.saturating_sub(1);
        if let Some(n) = b.in_flight.get_mut(&self.function) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                b.in_flight.remove(&self.function);
            }
        }
        drop(b);
        self.starts.changed.notify_waiters();
    }
}

/// Takes a waiter out of the line when its wait ends, however it ends.
struct InLine<'a> {
    starts: &'a Starts,
    seq: u64,
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        let mut b = self.starts.lock();
        b.waiting.retain(|w| w.seq != self.seq);
        drop(b);
        self.starts.changed.notify_waiters();
    }
}

impl Starts {
    pub fn new(settings: StartSettings) -> Arc<Self> {
        Arc::new(Self {
            settings: StartSettings {
                slots: settings.slots.max(1),
                scale_instances: settings.scale_instances.max(1),
                scale_interval: settings.scale_interval.max(Duration::from_millis(1)),
            },
            books: Mutex::new(Books::default()),
            changed: Notify::new(),
        })
    }

    pub fn settings(&self) -> StartSettings {
        self.settings
    }

    fn lock(&self) -> MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a start slot for `function`, until `deadline` (none: as
    /// long as it takes).
    pub async fn acquire(
        self: &Arc<Self>,
        function: &str,
        deadline: Option<Instant>,
    ) -> Result<StartSlot, LaunchError> {
        let began = Instant::now();
        let seq = {
            let mut b = self.lock();
            let seq = b.next_seq;
            b.next_seq += 1;
            b.waiting.push(Waiter {
                seq,
                function: function.to_string(),
            });
            seq
        };
        let _in_line = InLine { starts: self, seq };
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the books are read, so that no release
            // between the two is missed.
            changed.as_mut().enable();
            let retry_in = match self.try_take(seq, function, Instant::now()) {
                Ok(()) => {
                    return Ok(StartSlot {
                        starts: self.clone(),
                        function: function.to_string(),
                    })
                }
                Err(retry_in) => retry_in,
            };
            let mut until = deadline;
            if let Some(r) = retry_in {
                let t = Instant::now() + r;
                until = Some(until.map_or(t, |d| d.min(t)));
            }
            match until {
                Some(t) => {
                    if tokio::time::timeout_at(t.into(), changed).await.is_err()
                        && deadline.is_some_and(|d| Instant::now() >= d)
                    {
                        let waited = began.elapsed();
                        return Err(LaunchError::StartQueue(format!(
                            "no start slot for {function} within {:.1} s ({} slots, all in use)",
                            waited.as_secs_f64(),
                            self.settings.slots
                        )));
                    }
                }
                None => changed.await,
            }
        }
    }

    /// Takes a slot for waiter `seq` if it is its turn. `Err(Some(d))`:
    /// its function's scaling rate lets it go in `d` at the earliest.
    fn try_take(&self, seq: u64, function: &str, now: Instant) -> Result<(), Option<Duration>> {
        let s = self.settings;
        let mut b = self.lock();
        let rate = f64::from(s.scale_instances) / s.scale_interval.as_secs_f64();
        let cap = f64::from(s.scale_instances);
        let tokens_of = |b: &Books, f: &str| -> f64 {
            b.buckets.get(f).map_or(cap, |k| {
                (k.tokens + now.saturating_duration_since(k.at).as_secs_f64() * rate).min(cap)
            })
        };
        let my_tokens = tokens_of(&b, function);
        if my_tokens < 1.0 {
            return Err(Some(Duration::from_secs_f64((1.0 - my_tokens) / rate)));
        }
        if b.total >= s.slots {
            return Err(None);
        }
        // The next to go: among waiters whose function has a token, the
        // fewest starts in flight, then the earliest.
        let next = b
            .waiting
            .iter()
            .filter(|w| tokens_of(&b, &w.function) >= 1.0)
            .min_by_key(|w| (b.in_flight.get(&w.function).copied().unwrap_or(0), w.seq))
            .map(|w| w.seq);
        if next != Some(seq) {
            return Err(None);
        }
        b.buckets.insert(
            function.to_string(),
            Bucket {
                tokens: my_tokens - 1.0,
                at: now,
            },
        );
        // Buckets that are full again carry nothing: forget them.
        b.buckets
            .retain(|f, k| f == function || k.tokens + (now - k.at).as_secs_f64() * rate < cap);
        b.total += 1;
        *b.in_flight.entry(function.to_string()).or_default() += 1;
        b.waiting.retain(|w| w.seq != seq);
        Ok(())
    }

    pub fn counts(&self) -> StartCounts {
        let b = self.lock();
        let mut per: HashMap<&str, (u32, u32)> = HashMap::new();
        for (f, n) in &b.in_flight {
            per.entry(f).or_default().0 += n;
        }
        for w in &b.waiting {
            per.entry(&w.function).or_default().1 += 1;
        }
        let mut by_function: Vec<(String, u32, u32)> = per
            .into_iter()
            .map(|(f, (i, w))| (f.to_string(), i, w))
            .collect();
        by_function.sort();
        StartCounts {
            in_flight: b.total,
            waiting: b.waiting.len() as u32,
            by_function,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(slots: u32, per: u32, interval_ms: u64) -> Arc<Starts> {
        Starts::new(StartSettings {
            slots,
            scale_instances: per,
            scale_interval: Duration::from_millis(interval_ms),
        })
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn starts_beyond_the_slots_wait_in_order_and_go_as_slots_free() {
        let s = starts(2, 1000, 10_000);
        let a = s.acquire("f", None).await.unwrap();
        let b = s.acquire("f", None).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (s, order) = (s.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let slot = s.acquire("f", None).await.unwrap();
                order.lock().unwrap().push(i);
                slot
            }));
            settle().await;
        }
        assert_eq!(s.counts().in_flight, 2);
        assert_eq!(s.counts().waiting, 3);
        assert!(order.lock().unwrap().is_empty());
        drop(a);
        settle().await;
        assert_eq!(*order.lock().unwrap(), vec![0]);
        drop(b);
        settle().await;
        assert_eq!(*order.lock().unwrap(), vec![0, 1]);
        let first = tasks.remove(0).await.unwrap();
        drop(first);
        settle().await;
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        assert_eq!(s.counts().waiting, 0);
        assert_eq!(s.counts().in_flight, 2);
        drop(tasks);
    }

    #[tokio::test]
    async fn a_wait_that_outlasts_its_deadline_is_a_typed_throttle_and_leaves_the_line() {
        let s = starts(1, 1000, 10_000);
        let _held = s.acquire("f", None).await.unwrap();
        let r = s
            .acquire("g", Some(Instant::now() + Duration::from_millis(50)))
            .await;
        match r {
            Err(LaunchError::StartQueue(_)) => {}
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a slot beyond the limit"),
        }
        assert_eq!(s.counts().waiting, 0);
    }

    #[tokio::test]
    async fn one_functions_burst_does_not_take_every_slot_from_another() {
        let s = starts(2, 1000, 10_000);
        let held: Vec<_> = vec![
            s.acquire("burst", None).await.unwrap(),
            s.acquire("burst", None).await.unwrap(),
        ];
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, f) in ["burst", "burst", "burst", "other"].into_iter().enumerate() {
            let (s, got) = (s.clone(), got.clone());
            tasks.push(tokio::spawn(async move {
                let slot = s.acquire(f, None).await.unwrap();
                got.lock().unwrap().push((i, f));
                slot
            }));
            settle().await;
        }
        let c = s.counts();
        assert_eq!(
            c.by_function,
            vec![("burst".into(), 2, 3), ("other".into(), 0, 1)]
        );
        // The first slot freed goes to the function with none in flight,
        // although three of the burst came before it.
        let mut held = held.into_iter();
        drop(held.next());
        settle().await;
        assert_eq!(*got.lock().unwrap(), vec![(3, "other")]);
        drop(held.next());
        settle().await;
        assert_eq!(*got.lock().unwrap(), vec![(3, "other"), (0, "burst")]);
        drop(tasks);
    }

    #[tokio::test]
    async fn the_scaling_rate_holds_a_function_back_but_not_the_others() {
        // One new instance per function per 300 ms.
        let s = starts(4, 1, 300);
        let t0 = Instant::now();
        let first = s.acquire("f", None).await.unwrap();
        let other = s.acquire("g", None).await.unwrap();
        assert!(t0.elapsed() < Duration::from_millis(250));
        let second = s.acquire("f", None).await.unwrap();
        // A bound the node enforces: the token came back after 300 ms.
        assert!(
            t0.elapsed() >= Duration::from_millis(290),
            "{:?}",
            t0.elapsed()
        );
        drop((first, other, second));
    }
}
