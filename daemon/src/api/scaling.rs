//! Application Auto Scaling's shapes for provisioned concurrency that
//! follows load: domain values to proto.

use flint_proto::node::v1 as pb;

use crate::functions::scaling::{
    ScalableTarget, ScalingPolicy, DIMENSION, METRIC, NAMESPACE, POLICY_TYPE,
};
use crate::node::{Activity, ScalingView};

pub fn target_pb(t: &ScalableTarget) -> pb::ScalableTarget {
    pb::ScalableTarget {
        service_namespace: NAMESPACE.into(),
        resource_id: t.resource_id(),
        scalable_dimension: DIMENSION.into(),
        min_capacity: t.min_capacity.into(),
        max_capacity: t.max_capacity.into(),
        creation_time: t.created.clone(),
    }
}

pub fn policy_pb(
    region: &str,
    account: &str,
    t: &ScalableTarget,
    p: &ScalingPolicy,
) -> pb::ScalingPolicy {
    pb::ScalingPolicy {
        policy_arn: format!(
            "arn:aws:autoscaling:{region}:{account}:scalingPolicy:{}:resource/lambda/{}:policyName/{}",
            t.key(),
            t.resource_id(),
            p.name
        ),
        policy_name: p.name.clone(),
        service_namespace: NAMESPACE.into(),
        resource_id: t.resource_id(),
        scalable_dimension: DIMENSION.into(),
        policy_type: POLICY_TYPE.into(),
        target_tracking_scaling_policy_configuration: Some(
            pb::TargetTrackingScalingPolicyConfiguration {
                target_value: p.target_value,
                predefined_metric_type: METRIC.into(),
                scale_out_cooldown: p.scale_out_cooldown_s.into(),
                scale_in_cooldown: p.scale_in_cooldown_s.into(),
                disable_scale_in: p.disable_scale_in,
            },
        ),
        creation_time: p.created.clone(),
    }
}

pub fn activity_pb(a: Activity) -> pb::ScalingActivity {
    pb::ScalingActivity {
        activity_id: a.id,
        service_namespace: NAMESPACE.into(),
        resource_id: a.resource_id,
        scalable_dimension: DIMENSION.into(),
        description: a.description,
        cause: a.cause,
        start_time: a.start_time,
        status_code: a.status.into(),
        status_message: a.message,
    }
}

pub fn view_pb(v: &ScalingView) -> pb::ProvisionedScaling {
    let t = &v.target;
    pb::ProvisionedScaling {
        resource_id: t.resource_id(),
        min_capacity: t.min_capacity as i32,
        max_capacity: t.max_capacity as i32,
        target_values: t.policies.iter().map(|p| p.target_value).collect(),
        utilization: v.utilization.unwrap_or(-1.0),
        last_activity: v
            .last_activity
            .as_ref()
            .map(|a| format!("{} {} ({})", a.description, a.cause, a.status))
            .unwrap_or_default(),
        last_activity_time: v
            .last_activity
            .as_ref()
            .map(|a| a.start_time.clone())
            .unwrap_or_default(),
        requested: v.requested as i32,
    }
}
