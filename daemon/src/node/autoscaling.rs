//! Provisioned concurrency that follows load: target tracking on
//! `ProvisionedConcurrencyUtilization`, as Application Auto Scaling does it
//! for Lambda.
//!
//! Every tenth of a period the controller samples each scalable target's
//! utilization: its provisioned instances serving an invocation over those
//! initialised (at most 1: spillover to on-demand instances counts as
//! full). The samples of one period average into a datapoint. A policy
//! scales out when its last 3 datapoints are all above its target value, to
//! `ceil(current × their average / target)`; it scales in when its last 15
//! are all below 90 % of the target, to `ceil(current × their peak /
//! target)` — the alarms Application Auto Scaling creates, with its
//! asymmetry: out quickly, in slowly. With several policies, the largest
//! scale-out wins and a scale-in needs every policy to agree. The result
//! stays within the target's range; cooldowns (scale-out after a
//! scale-out, scale-in after any scaling) hold further steps back. A step
//! goes through `PutProvisionedConcurrencyConfig`'s own checks, so it never
//! takes what reservations or the unreserved share forbid.
//!
//! Why one file of 600 lines: the rule, the controller that applies it and
//! the Application Auto Scaling calls that configure it are one feature;
//! its tests, a third of the file, run the rule over whole loads.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::{Node, NodeError};
use crate::functions::scaling::{
    check_dimension, parse_resource_id, validate_policy, validate_range, ScalableTarget,
    ScalingPolicy,
};
use crate::functions::FunctionsError;

/// Datapoints above target before a scale-out.
pub const SCALE_OUT_POINTS: usize = 3;
/// Datapoints below `SCALE_IN_MARGIN` × target before a scale-in.
pub const SCALE_IN_POINTS: usize = 15;
pub const SCALE_IN_MARGIN: f64 = 0.9;
/// Samples per datapoint.
pub const SAMPLES_PER_PERIOD: u32 = 10;
/// Scaling activities kept for `DescribeScalingActivities`.
const ACTIVITIES_KEPT: usize = 200;

/// One scaling step, as `DescribeScalingActivities` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Activity {
    pub id: String,
    pub resource_id: String,
    pub description: String,
    pub cause: String,
    pub start_time: String,
    /// `Successful` or `Failed`.
    pub status: &'static str,
    pub message: String,
}

/// A target's measurements.
#[derive(Debug, Default)]
struct Tracker {
    sum: f64,
    samples: u32,
    period_started: Option<Instant>,
    points: VecDeque<f64>,
    /// The last datapoint, kept for the views when `points` is cleared.
    last: Option<f64>,
    last_out: Option<Instant>,
    last_any: Option<Instant>,
}

impl Tracker {
    /// Adds a sample; returns whether it closed a datapoint.
    fn sample(&mut self, utilization: f64, now: Instant, period: Duration) -> bool {
        let started = *self.period_started.get_or_insert(now);
        self.sum += utilization;
        self.samples += 1;
        if now.duration_since(started) < period {
            return false;
        }
        let point = self.sum / f64::from(self.samples);
        self.points.push_back(point);
        self.last = Some(point);
        while self.points.len() > SCALE_IN_POINTS {
            self.points.pop_front();
        }
        (self.sum, self.samples, self.period_started) = (0.0, 0, Some(now));
        true
    }
}

/// What the controller keeps between ticks.
#[derive(Default)]
pub struct Autoscaling {
    trackers: Mutex<HashMap<String, Tracker>>,
    activities: Mutex<VecDeque<Activity>>,
}

impl Autoscaling {
    fn trackers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracker>> {
        self.trackers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn activities(&self) -> std::sync::MutexGuard<'_, VecDeque<Activity>> {
        self.activities.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, a: Activity) {
        tracing::info!(resource = %a.resource_id, description = %a.description, cause = %a.cause,
            status = a.status, message = %a.message, "provisioned concurrency scaling");
        let mut acts = self.activities();
        acts.push_back(a);
        while acts.len() > ACTIVITIES_KEPT {
            acts.pop_front();
        }
    }

    /// The last datapoint of a target, if one has closed.
    pub fn utilization(&self, key: &str) -> Option<f64> {
        self.trackers().get(key).and_then(|t| t.last)
    }

    /// The latest activity of a resource.
    pub fn last_activity(&self, resource_id: &str) -> Option<Activity> {
        self.activities()
            .iter()
            .rev()
            .find(|a| a.resource_id == resource_id)
            .cloned()
    }
}

/// A scalable target as the views show it: its range and policies, the
/// config's requested count, the last datapoint and the latest activity.
#[derive(Debug, Clone)]
pub struct ScalingView {
    pub target: ScalableTarget,
    pub requested: u32,
    pub utilization: Option<f64>,
    pub last_activity: Option<Activity>,
}

/// A step to take: the new provisioned concurrency and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub to: u32,
    pub cause: String,
}

/// `ceil`, forgiving the last bits of a float product.
fn ceil(x: f64) -> u32 {
    (x - 1e-9).ceil().max(0.0) as u32
}

/// What target tracking asks of a target at `current` given its last
/// datapoints (oldest first) and the time since its last scale-out and
/// since its last scaling of any kind.
pub fn decide(
    current: u32,
    target: &ScalableTarget,
    points: &VecDeque<f64>,
    since_out: Option<Duration>,
    since_any: Option<Duration>,
) -> Option<Decision> {
    let (min, max) = (target.min_capacity, target.max_capacity);
    let clamp = |n: u32| n.clamp(min, max);
    if current < min || current > max {
        return Some(Decision {
            to: clamp(current),
            cause: format!("the capacity {current} is outside the range {min}-{max}"),
        });
    }
    let last = |n: usize| points.iter().skip(points.len().saturating_sub(n));
    let cooled = |since: Option<Duration>, secs: u32| {
        since.is_none_or(|d| d >= Duration::from_secs(secs.into()))
    };
    // Out: the largest step any policy asks for.
    let mut out: Option<Decision> = None;
    if points.len() >= SCALE_OUT_POINTS {
        for p in &target.policies {
            if !last(SCALE_OUT_POINTS).all(|u| *u > p.target_value)
                || !cooled(since_out, p.scale_out_cooldown_s)
            {
                continue;
            }
            let avg = last(SCALE_OUT_POINTS).sum::<f64>() / SCALE_OUT_POINTS as f64;
            let to = clamp(ceil(f64::from(current) * avg / p.target_value).max(current + 1));
            if to > current && out.as_ref().is_none_or(|d| to > d.to) {
                out = Some(Decision {
                    to,
                    cause: format!(
                        "utilization {avg:.2} above the target {:.2} of policy {} for {SCALE_OUT_POINTS} datapoints",
                        p.target_value, p.name
                    ),
                });
            }
        }
    }
    if out.is_some() {
        return out;
    }
    // In: only when every policy agrees, to the most any of them keeps.
    if target.policies.is_empty() || points.len() < SCALE_IN_POINTS {
        return None;
    }
    let peak = last(SCALE_IN_POINTS).fold(0.0f64, |a, u| a.max(*u));
    let mut keep = 0u32;
    for p in &target.policies {
        let below = last(SCALE_IN_POINTS).all(|u| *u < p.target_value * SCALE_IN_MARGIN);
        if p.disable_scale_in || !below || !cooled(since_any, p.scale_in_cooldown_s) {
            return None;
        }
        keep = keep.max(ceil(f64::from(current) * peak / p.target_value));
    }
    let to = clamp(keep);
    (to < current).then(|| Decision {
        to,
        cause: format!(
            "utilization at most {peak:.2}, below {:.0} % of every policy's target for {SCALE_IN_POINTS} datapoints",
            SCALE_IN_MARGIN * 100.0
        ),
    })
}

fn now_rfc3339() -> String {
    crate::time::rfc3339(SystemTime::now())
}

fn not_found(what: String) -> NodeError {
    FunctionsError::ScalingNotFound(what).into()
}

impl Node {
    fn scaling_target(&self, resource_id: &str) -> Result<ScalableTarget, NodeError> {
        let (function, qualifier) = parse_resource_id(resource_id)?;
        self.store
            .list_scaling(&function)?
            .into_iter()
            .find(|t| t.qualifier == qualifier)
            .ok_or_else(|| not_found(format!("scalable target {resource_id}")))
    }

    /// `RegisterScalableTarget`: the range an alias's or version's
    /// provisioned concurrency moves in. The config is created at the
    /// minimum, or moved into the range, at once.
    pub fn register_scalable_target(
        &self,
        namespace: &str,
        resource_id: &str,
        dimension: &str,
        min: i64,
        max: i64,
    ) -> Result<ScalableTarget, NodeError> {
        check_dimension(namespace, dimension)?;
        let (function, qualifier) = parse_resource_id(resource_id)?;
        self.store.get(&function)?;
        self.provisioned_target(&function, &qualifier)?;
        let (min, max) = validate_range(min, max)?;
        let existing = self.scaling_target(resource_id).ok();
        let current = self
            .store
            .list_provisioned(&function)?
            .into_iter()
            .find(|p| p.qualifier == qualifier)
            .map(|p| p.requested);
        let desired = current.unwrap_or(min).clamp(min, max);
        if current != Some(desired) {
            self.put_provisioned_concurrency(&function, &qualifier, desired.into())?;
            self.autoscaling.record(Activity {
                id: uuid::Uuid::new_v4().to_string(),
                resource_id: resource_id.to_string(),
                description: format!("Setting desired concurrency to {desired}."),
                cause: format!("the scalable target's range is {min}-{max}"),
                start_time: now_rfc3339(),
                status: "Successful",
                message: String::new(),
            });
        }
        let target = ScalableTarget {
            function,
            qualifier,
            min_capacity: min,
            max_capacity: max,
            created: existing
                .as_ref()
                .map_or_else(now_rfc3339, |t| t.created.clone()),
            policies: existing.map(|t| t.policies).unwrap_or_default(),
        };
        self.store.put_scaling(&target)?;
        Ok(target)
    }

    /// `DescribeScalableTargets`: all of them, or those named.
    pub fn describe_scalable_targets(
        &self,
        resource_ids: &[String],
    ) -> Result<Vec<ScalableTarget>, NodeError> {
        Ok(self
            .store
            .list_scaling("")?
            .into_iter()
            .filter(|t| resource_ids.is_empty() || resource_ids.contains(&t.resource_id()))
            .collect())
    }

    /// `DeregisterScalableTarget`: its policies go too; the provisioned
    /// concurrency stays where it is.
    pub fn deregister_scalable_target(
        &self,
        namespace: &str,
        resource_id: &str,
        dimension: &str,
    ) -> Result<(), NodeError> {
        check_dimension(namespace, dimension)?;
        let (function, qualifier) = parse_resource_id(resource_id)?;
        if !self.store.delete_scaling(&function, &qualifier)? {
            return Err(not_found(format!("scalable target {resource_id}")));
        }
        self.autoscaling
            .trackers()
            .remove(&format!("{function}:{qualifier}"));
        Ok(())
    }

    /// `PutScalingPolicy` (target tracking): creates or replaces a policy
    /// of a registered target; returns the target with the policy.
    #[allow(clippy::too_many_arguments)]
    pub fn put_scaling_policy(
        &self,
        namespace: &str,
        resource_id: &str,
        dimension: &str,
        name: &str,
        policy_type: &str,
        metric: &str,
        target_value: f64,
        cooldowns: (i64, i64),
        disable_scale_in: bool,
    ) -> Result<(ScalableTarget, ScalingPolicy), NodeError> {
        check_dimension(namespace, dimension)?;
        let (out, scale_in) = validate_policy(name, policy_type, metric, target_value, cooldowns)?;
        let mut target = self.scaling_target(resource_id)?;
        let created = target
            .policies
            .iter()
            .find(|p| p.name == name)
            .map_or_else(now_rfc3339, |p| p.created.clone());
        let policy = ScalingPolicy {
            name: name.to_string(),
            target_value,
            scale_out_cooldown_s: out,
            scale_in_cooldown_s: scale_in,
            disable_scale_in,
            created,
        };
        target.policies.retain(|p| p.name != name);
        target.policies.push(policy.clone());
        self.store.put_scaling(&target)?;
        Ok((target, policy))
    }

    /// `DescribeScalingPolicies`: each with the target it belongs to.
    pub fn describe_scaling_policies(
        &self,
        resource_id: &str,
        names: &[String],
    ) -> Result<Vec<(ScalableTarget, ScalingPolicy)>, NodeError> {
        let mut out = Vec::new();
        for t in self.store.list_scaling("")? {
            if !resource_id.is_empty() && t.resource_id() != resource_id {
                continue;
            }
            for p in &t.policies {
                if names.is_empty() || names.contains(&p.name) {
                    out.push((t.clone(), p.clone()));
                }
            }
        }
        Ok(out)
    }

    /// `DeleteScalingPolicy`.
    pub fn delete_scaling_policy(
        &self,
        namespace: &str,
        resource_id: &str,
        dimension: &str,
        name: &str,
    ) -> Result<(), NodeError> {
        check_dimension(namespace, dimension)?;
        let mut target = self.scaling_target(resource_id)?;
        let before = target.policies.len();
        target.policies.retain(|p| p.name != name);
        if target.policies.len() == before {
            return Err(not_found(format!("scaling policy {name} of {resource_id}")));
        }
        self.store.put_scaling(&target)?;
        Ok(())
    }

    /// `DescribeScalingActivities`: newest first.
    pub fn describe_scaling_activities(&self, resource_id: &str) -> Vec<Activity> {
        self.autoscaling
            .activities()
            .iter()
            .rev()
            .filter(|a| resource_id.is_empty() || a.resource_id == resource_id)
            .cloned()
            .collect()
    }

    /// The scalable targets of a function (every function's with `""`), as
    /// the views show them.
    pub fn scaling_views(&self, function: &str) -> Vec<ScalingView> {
        let targets = self.store.list_scaling(function).unwrap_or_default();
        let provisioned = self.store.list_provisioned(function).unwrap_or_default();
        targets
            .into_iter()
            .map(|t| ScalingView {
                requested: provisioned
                    .iter()
                    .find(|p| p.key() == t.key())
                    .map_or(0, |p| p.requested),
                utilization: self.autoscaling.utilization(&t.key()),
                last_activity: self.autoscaling.last_activity(&t.resource_id()),
                target: t,
            })
            .collect()
    }

    /// How often the controller samples.
    pub fn autoscaling_tick(&self) -> Duration {
        self.config.autoscaling_period / SAMPLES_PER_PERIOD
    }

    /// One pass of the controller: a sample of every target with a policy,
    /// and, where a datapoint closed, the step target tracking asks for.
    pub fn autoscale(&self) {
        let targets = match self.store.list_scaling("") {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "reading scalable targets failed");
                return;
            }
        };
        let provisioned = self.store.list_provisioned("").unwrap_or_default();
        let now = Instant::now();
        let period = self.config.autoscaling_period;
        let mut decisions = Vec::new();
        {
            let mut trackers = self.autoscaling.trackers();
            trackers.retain(|k, _| targets.iter().any(|t| t.key() == *k));
            for t in targets.iter().filter(|t| !t.policies.is_empty()) {
                let key = t.key();
                let Some(current) = provisioned
                    .iter()
                    .find(|p| p.key() == key)
                    .map(|p| p.requested)
                else {
                    continue;
                };
                let count = self.pool.provisioned_count(&key);
                if count.ready == 0 {
                    continue;
                }
                let tracker = trackers.entry(key).or_default();
                let u = (f64::from(count.busy) / f64::from(count.ready)).min(1.0);
                if !tracker.sample(u, now, period) {
                    continue;
                }
                let since = |at: Option<Instant>| at.map(|a| now.duration_since(a));
                if let Some(d) = decide(
                    current,
                    t,
                    &tracker.points,
                    since(tracker.last_out),
                    since(tracker.last_any),
                ) {
                    // The next decision measures the new capacity.
                    tracker.points.clear();
                    tracker.last_any = Some(now);
                    if d.to > current {
                        tracker.last_out = Some(now);
                    }
                    decisions.push((t.clone(), d));
                }
            }
        }
        for (t, d) in decisions {
            let r = self.put_provisioned_concurrency(&t.function, &t.qualifier, d.to.into());
            self.autoscaling.record(Activity {
                id: uuid::Uuid::new_v4().to_string(),
                resource_id: t.resource_id(),
                description: format!("Setting desired concurrency to {}.", d.to),
                cause: d.cause,
                start_time: now_rfc3339(),
                status: if r.is_ok() { "Successful" } else { "Failed" },
                message: r.err().map(|e| e.to_string()).unwrap_or_default(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(min: u32, max: u32, value: f64) -> ScalableTarget {
        ScalableTarget {
            function: "f".into(),
            qualifier: "live".into(),
            min_capacity: min,
            max_capacity: max,
            created: String::new(),
            policies: vec![ScalingPolicy {
                name: "p".into(),
                target_value: value,
                scale_out_cooldown_s: 0,
                scale_in_cooldown_s: 0,
                disable_scale_in: false,
                created: String::new(),
            }],
        }
    }

    /// Runs the controller's rule over a load: each datapoint's busy
    /// instances (at most the capacity then), returning the capacity after
    /// each datapoint.
    fn follow(t: &ScalableTarget, start: u32, busy: &[u32]) -> Vec<u32> {
        let mut current = start;
        let mut points = VecDeque::new();
        let mut out = Vec::new();
        for b in busy {
            points.push_back((f64::from(*b) / f64::from(current)).min(1.0));
            while points.len() > SCALE_IN_POINTS {
                points.pop_front();
            }
            if let Some(d) = decide(current, t, &points, None, None) {
                current = d.to;
                points.clear();
            }
            out.push(current);
        }
        out
    }

    #[test]
    fn a_rising_then_falling_load_is_followed_out_quickly_and_in_slowly() {
        let t = target(1, 10, 0.7);
        // Rising: demand of 6 concurrent invocations.
        let rising = follow(&t, 1, &[6; 20]);
        assert_eq!(
            &rising[..3],
            &[1, 1, 2],
            "out after 3 datapoints above target"
        );
        assert!(rising.windows(2).all(|w| w[1] >= w[0]), "{rising:?}");
        let top = *rising.last().unwrap();
        assert!((9..=10).contains(&top), "enough for 6 at 0.7: {rising:?}");
        // Falling: one invocation at a time.
        let falling = follow(&t, top, &[1; 40]);
        assert_eq!(falling[13], top, "not in before 15 datapoints: {falling:?}");
        assert!(falling[14] < top, "{falling:?}");
        assert_eq!(
            *falling.last().unwrap(),
            2,
            "1 busy at 0.7 keeps 2: {falling:?}"
        );
        // Idle: down to the minimum, never below.
        assert_eq!(*follow(&t, 2, &[0; 40]).last().unwrap(), 1);
    }

    #[test]
    fn the_range_the_cooldowns_and_disabled_scale_in_hold_steps_back() {
        let mut t = target(2, 3, 0.5);
        assert_eq!(follow(&t, 2, &[2; 20]).last(), Some(&3), "never above max");
        assert_eq!(
            decide(5, &t, &VecDeque::new(), None, None).map(|d| d.to),
            Some(3),
            "moved into the range"
        );
        let high: VecDeque<f64> = [1.0; 3].into();
        t.policies[0].scale_out_cooldown_s = 60;
        assert!(decide(2, &t, &high, Some(Duration::from_secs(10)), None).is_none());
        assert!(decide(2, &t, &high, Some(Duration::from_secs(61)), None).is_some());
        let low: VecDeque<f64> = [0.0; SCALE_IN_POINTS].into();
        assert_eq!(decide(3, &t, &low, None, None).map(|d| d.to), Some(2));
        t.policies[0].disable_scale_in = true;
        assert!(decide(3, &t, &low, None, None).is_none());
    }

    #[test]
    fn scale_in_needs_every_policy_and_out_takes_the_largest_step() {
        let mut t = target(1, 20, 0.5);
        let mut strict = t.policies[0].clone();
        strict.name = "strict".into();
        strict.target_value = 0.25;
        t.policies.push(strict);
        let high: VecDeque<f64> = [1.0; 3].into();
        assert_eq!(
            decide(4, &t, &high, None, None).unwrap().to,
            16,
            "4 × 1.0 / 0.25"
        );
        // 0.2 is below 0.9 × 0.5 but not below 0.9 × 0.25: no scale-in.
        let low: VecDeque<f64> = [0.2; SCALE_IN_POINTS].into();
        assert!(decide(4, &t, &low, None, None).is_none());
    }

    #[test]
    fn a_datapoint_closes_each_period_with_the_average_of_its_samples() {
        let mut tr = Tracker::default();
        let t0 = Instant::now();
        let p = Duration::from_secs(1);
        assert!(!tr.sample(1.0, t0, p));
        assert!(!tr.sample(0.0, t0 + Duration::from_millis(500), p));
        assert!(tr.sample(0.5, t0 + Duration::from_millis(1000), p));
        assert_eq!(tr.points.back(), Some(&0.5));
    }
}
