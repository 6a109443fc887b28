//! The statistics window behind `GetMetricStatistics`: every metric value
//! recorded, summed per second for the last ten minutes and per minute
//! after that, for a bounded time (`[metrics] window_s`).
//!
//! Bounded: a series holds at most 600 second buckets and one minute
//! bucket per minute of the window, and its function's deletion drops it.

use std::collections::{HashMap, VecDeque};

use super::metrics::Labels;
use super::Metric;

/// Seconds kept at one-second resolution before they fold into minutes.
pub const FINE_S: u64 = 600;

/// SampleCount, Sum, Minimum and Maximum of the values of one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    fn one(v: f64) -> Self {
        Self {
            count: 1,
            sum: v,
            min: v,
            max: v,
        }
    }

    fn merge(&mut self, o: &Stat) {
        self.count += o.count;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    pub fn average(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }
}

#[derive(Default)]
struct Buckets {
    /// (second, stat), oldest first.
    fine: VecDeque<(u64, Stat)>,
    /// (minute's first second, stat), oldest first.
    coarse: VecDeque<(u64, Stat)>,
}

impl Buckets {
    fn add(&mut self, now: u64, v: f64, keep_s: u64) {
        match self.fine.back_mut() {
            Some((t, s)) if *t == now => s.merge(&Stat::one(v)),
            _ => self.fine.push_back((now, Stat::one(v))),
        }
        while let Some(&(t, s)) = self.fine.front() {
            if t + FINE_S > now {
                break;
            }
            self.fine.pop_front();
            let minute = t - t % 60;
            match self.coarse.back_mut() {
                Some((m, c)) if *m == minute => c.merge(&s),
                _ => self.coarse.push_back((minute, s)),
            }
        }
        while let Some(&(m, _)) = self.coarse.front() {
            if m + 60 + keep_s > now {
                break;
            }
            self.coarse.pop_front();
        }
    }

    fn iter(&self) -> impl Iterator<Item = &(u64, Stat)> {
        self.coarse.iter().chain(self.fine.iter())
    }
}

/// One datapoint of a query: the start of its period and its statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Datapoint {
    pub timestamp_s: u64,
    pub stat: Stat,
}

pub struct Window {
    keep_s: u64,
    series: std::sync::Mutex<HashMap<(Metric, Labels), Buckets>>,
}

impl Window {
    pub fn new(keep_s: u64) -> Self {
        Self {
            keep_s: keep_s.max(FINE_S),
            series: Default::default(),
        }
    }

    /// How far back values are kept.
    pub fn keep_s(&self) -> u64 {
        self.keep_s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Metric, Labels), Buckets>> {
        self.series.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `v` (in the metric's CloudWatch unit) at `now_s`.
    pub fn record(&self, m: Metric, labels: &Labels, v: f64, now_s: u64) {
        self.lock()
            .entry((m, labels.clone()))
            .or_default()
            .add(now_s, v, self.keep_s);
    }

    pub fn forget(&self, function: &str) {
        self.lock().retain(|(_, l), _| l.function != function);
    }

    /// The statistics of `m` for `function` (and `qualifier`: an alias
    /// or a version, empty for all) per `period_s` from `start_s` to
    /// `end_s`; periods without values have no datapoint.
    pub fn query(
        &self,
        m: Metric,
        function: &str,
        qualifier: &str,
        start_s: u64,
        end_s: u64,
        period_s: u64,
    ) -> Vec<Datapoint> {
        let period = period_s.max(1);
        let mut out: std::collections::BTreeMap<u64, Stat> = Default::default();
        for ((metric, labels), b) in self.lock().iter() {
            if *metric != m || !labels.matches(function, qualifier) {
                continue;
            }
            for (t, s) in b.iter() {
                if *t < start_s || *t >= end_s {
                    continue;
                }
                let at = start_s + (t - start_s) / period * period;
                match out.get_mut(&at) {
                    Some(o) => o.merge(s),
                    None => {
                        out.insert(at, *s);
                    }
                }
            }
        }
        out.into_iter()
            .map(|(timestamp_s, stat)| Datapoint { timestamp_s, stat })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_sum_seconds_and_old_seconds_fold_into_minutes() {
        let w = Window::new(3600);
        let l = Labels::invoked("f", "live", "2");
        for (t, v) in [(1000, 5.0), (1000, 1.0), (1001, 9.0), (1070, 3.0)] {
            w.record(Metric::Duration, &l, v, t);
        }
        w.record(
            Metric::Duration,
            &Labels::invoked("g", "", "1"),
            100.0,
            1000,
        );
        let d = w.query(Metric::Duration, "f", "", 1000, 1100, 60);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].timestamp_s, 1000);
        assert_eq!(
            d[0].stat,
            Stat {
                count: 3,
                sum: 15.0,
                min: 1.0,
                max: 9.0
            }
        );
        assert_eq!(d[1].stat.count, 1);
        assert_eq!(w.query(Metric::Duration, "f", "3", 0, 5000, 60), vec![]);
        assert_eq!(
            w.query(Metric::Duration, "f", "live", 0, 5000, 5000)[0]
                .stat
                .count,
            4
        );
        // Ten minutes on, the seconds are minutes; an hour on, gone.
        w.record(Metric::Duration, &l, 1.0, 1000 + FINE_S + 71);
        {
            let s = w.lock();
            let b = &s[&(Metric::Duration, l.clone())];
            assert_eq!(b.fine.len(), 1);
            assert_eq!(b.coarse.len(), 2);
        }
        assert_eq!(
            w.query(Metric::Duration, "f", "", 0, 5000, 5000)[0]
                .stat
                .count,
            5
        );
        w.record(Metric::Duration, &l, 1.0, 1000 + 3600 + FINE_S + 120);
        assert_eq!(
            w.query(Metric::Duration, "f", "", 0, 10_000, 10_000)[0]
                .stat
                .count,
            1
        );
        w.forget("f");
        assert!(w.query(Metric::Duration, "f", "", 0, 10_000, 60).is_empty());
    }
}
