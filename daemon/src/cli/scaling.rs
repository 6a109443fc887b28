//! flintctl's Application Auto Scaling commands for provisioned
//! concurrency, shaped like `aws application-autoscaling …`.

use flint_proto::node::v1 as pb;
use flint_proto::node::v1::functions_client::FunctionsClient;
use serde_json::{json, Value};
use tonic::transport::Channel;

use super::commands::{svc, Command, ScalingDimension};
use super::{emit, read_file_arg, CliError, Output};

fn target_json(t: &pb::ScalableTarget) -> Value {
    json!({
        "ServiceNamespace": t.service_namespace,
        "ResourceId": t.resource_id,
        "ScalableDimension": t.scalable_dimension,
        "MinCapacity": t.min_capacity,
        "MaxCapacity": t.max_capacity,
        "CreationTime": t.creation_time,
    })
}

fn policy_json(p: &pb::ScalingPolicy) -> Value {
    let c = p
        .target_tracking_scaling_policy_configuration
        .clone()
        .unwrap_or_default();
    json!({
        "PolicyARN": p.policy_arn,
        "PolicyName": p.policy_name,
        "ServiceNamespace": p.service_namespace,
        "ResourceId": p.resource_id,
        "ScalableDimension": p.scalable_dimension,
        "PolicyType": p.policy_type,
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": c.target_value,
            "PredefinedMetricSpecification": {"PredefinedMetricType": c.predefined_metric_type},
            "ScaleOutCooldown": c.scale_out_cooldown,
            "ScaleInCooldown": c.scale_in_cooldown,
            "DisableScaleIn": c.disable_scale_in,
        },
        "CreationTime": p.creation_time,
    })
}

fn activity_json(a: &pb::ScalingActivity) -> Value {
    json!({
        "ActivityId": a.activity_id,
        "ServiceNamespace": a.service_namespace,
        "ResourceId": a.resource_id,
        "ScalableDimension": a.scalable_dimension,
        "Description": a.description,
        "Cause": a.cause,
        "StartTime": a.start_time,
        "StatusCode": a.status_code,
        "StatusMessage": a.status_message,
    })
}

/// `"AutoScaling"` in a provisioned-concurrency config's JSON, and the
/// `instances` table's scaling rows.
pub fn scaling_json(s: &pb::ProvisionedScaling) -> Value {
    let mut v = json!({
        "ResourceId": s.resource_id,
        "MinCapacity": s.min_capacity,
        "MaxCapacity": s.max_capacity,
        "TargetValues": s.target_values,
        "Requested": s.requested,
    });
    if s.utilization >= 0.0 {
        v["Utilization"] = json!(s.utilization);
    }
    if !s.last_activity.is_empty() {
        v["LastActivity"] = json!(s.last_activity);
        v["LastActivityTime"] = json!(s.last_activity_time);
    }
    v
}

pub const SCALING_HEADERS: &[&str] = &[
    "SCALING",
    "REQUESTED",
    "RANGE",
    "TARGET",
    "UTILIZATION",
    "LAST ACTIVITY",
];

pub fn scaling_row(s: &pb::ProvisionedScaling) -> Vec<String> {
    let targets: Vec<String> = s.target_values.iter().map(|t| format!("{t:.2}")).collect();
    vec![
        s.resource_id.clone(),
        s.requested.to_string(),
        format!("{}-{}", s.min_capacity, s.max_capacity),
        targets.join(","),
        if s.utilization >= 0.0 {
            format!("{:.2}", s.utilization)
        } else {
            "-".into()
        },
        s.last_activity.clone(),
    ]
}

/// `--target-tracking-scaling-policy-configuration`, AWS's JSON.
fn tracking_config(arg: &str) -> Result<pb::TargetTrackingScalingPolicyConfiguration, CliError> {
    let text = if arg.starts_with("file://") {
        String::from_utf8(read_file_arg(arg)?)
            .map_err(|_| CliError::Usage("the policy configuration is not UTF-8".into()))?
    } else {
        arg.to_string()
    };
    let bad = |what: &str| {
        CliError::Usage(format!(
            "--target-tracking-scaling-policy-configuration: {what}"
        ))
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(&format!("not JSON: {e}")))?;
    let target_value = v
        .get("TargetValue")
        .and_then(Value::as_f64)
        .ok_or_else(|| bad("TargetValue (a number) is required"))?;
    let int = |k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(0);
    Ok(pb::TargetTrackingScalingPolicyConfiguration {
        target_value,
        predefined_metric_type: v
            .pointer("/PredefinedMetricSpecification/PredefinedMetricType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
        scale_out_cooldown: int("ScaleOutCooldown"),
        scale_in_cooldown: int("ScaleInCooldown"),
        disable_scale_in: v
            .get("DisableScaleIn")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// Runs one of the scaling commands.
pub async fn run(
    c: &mut FunctionsClient<Channel>,
    output: Output,
    command: Command,
) -> Result<(), CliError> {
    match command {
        Command::RegisterScalableTarget {
            resource_id,
            dimension:
                ScalingDimension {
                    service_namespace,
                    scalable_dimension,
                },
            min_capacity,
            max_capacity,
        } => {
            let t = c
                .register_scalable_target(pb::RegisterScalableTargetRequest {
                    service_namespace,
                    resource_id,
                    scalable_dimension,
                    min_capacity,
                    max_capacity,
                })
                .await
                .map_err(svc("RegisterScalableTarget"))?
                .into_inner();
            emit(output, target_json(&t), &[], vec![]);
        }
        Command::DescribeScalableTargets {
            service_namespace,
            resource_ids,
        } => {
            let r = c
                .describe_scalable_targets(pb::DescribeScalableTargetsRequest {
                    service_namespace,
                    resource_ids,
                })
                .await
                .map_err(svc("DescribeScalableTargets"))?
                .into_inner();
            emit(
                output,
                json!({"ScalableTargets": r.scalable_targets.iter().map(target_json).collect::<Vec<_>>()}),
                &["RESOURCE", "MIN", "MAX", "CREATED"],
                r.scalable_targets
                    .iter()
                    .map(|t| {
                        vec![
                            t.resource_id.clone(),
                            t.min_capacity.to_string(),
                            t.max_capacity.to_string(),
                            t.creation_time.clone(),
                        ]
                    })
                    .collect(),
            );
        }
        Command::DeregisterScalableTarget {
            resource_id,
            dimension:
                ScalingDimension {
                    service_namespace,
                    scalable_dimension,
                },
        } => {
            c.deregister_scalable_target(pb::DeregisterScalableTargetRequest {
                service_namespace,
                resource_id,
                scalable_dimension,
            })
            .await
            .map_err(svc("DeregisterScalableTarget"))?;
        }
        Command::PutScalingPolicy {
            policy_name,
            resource_id,
            dimension:
                ScalingDimension {
                    service_namespace,
                    scalable_dimension,
                },
            policy_type,
            target_tracking_scaling_policy_configuration,
        } => {
            let config = tracking_config(&target_tracking_scaling_policy_configuration)?;
            let p = c
                .put_scaling_policy(pb::PutScalingPolicyRequest {
                    policy_name,
                    service_namespace,
                    resource_id,
                    scalable_dimension,
                    policy_type,
                    target_tracking_scaling_policy_configuration: Some(config),
                })
                .await
                .map_err(svc("PutScalingPolicy"))?
                .into_inner();
            emit(
                output,
                json!({"PolicyARN": p.policy_arn, "Alarms": []}),
                &[],
                vec![],
            );
        }
        Command::DescribeScalingPolicies {
            service_namespace,
            resource_id,
            policy_names,
        } => {
            let r = c
                .describe_scaling_policies(pb::DescribeScalingPoliciesRequest {
                    service_namespace,
                    resource_id: resource_id.unwrap_or_default(),
                    policy_names,
                })
                .await
                .map_err(svc("DescribeScalingPolicies"))?
                .into_inner();
            emit(
                output,
                json!({"ScalingPolicies": r.scaling_policies.iter().map(policy_json).collect::<Vec<_>>()}),
                &[
                    "POLICY",
                    "RESOURCE",
                    "TARGET",
                    "OUT COOLDOWN",
                    "IN COOLDOWN",
                ],
                r.scaling_policies
                    .iter()
                    .map(|p| {
                        let c = p
                            .target_tracking_scaling_policy_configuration
                            .clone()
                            .unwrap_or_default();
                        vec![
                            p.policy_name.clone(),
                            p.resource_id.clone(),
                            format!("{:.2}", c.target_value),
                            format!("{} s", c.scale_out_cooldown),
                            format!("{} s", c.scale_in_cooldown),
                        ]
                    })
                    .collect(),
            );
        }
        Command::DeleteScalingPolicy {
            policy_name,
            resource_id,
            dimension:
                ScalingDimension {
                    service_namespace,
                    scalable_dimension,
                },
        } => {
            c.delete_scaling_policy(pb::DeleteScalingPolicyRequest {
                policy_name,
                service_namespace,
                resource_id,
                scalable_dimension,
            })
            .await
            .map_err(svc("DeleteScalingPolicy"))?;
        }
        Command::DescribeScalingActivities {
            service_namespace,
            resource_id,
        } => {
            let r = c
                .describe_scaling_activities(pb::DescribeScalingActivitiesRequest {
                    service_namespace,
                    resource_id: resource_id.unwrap_or_default(),
                })
                .await
                .map_err(svc("DescribeScalingActivities"))?
                .into_inner();
            emit(
                output,
                json!({"ScalingActivities": r.scaling_activities.iter().map(activity_json).collect::<Vec<_>>()}),
                &["TIME", "RESOURCE", "DESCRIPTION", "STATUS", "CAUSE"],
                r.scaling_activities
                    .iter()
                    .map(|a| {
                        vec![
                            a.start_time.clone(),
                            a.resource_id.clone(),
                            a.description.clone(),
                            a.status_code.clone(),
                            a.cause.clone(),
                        ]
                    })
                    .collect(),
            );
        }
        _ => unreachable!("not a scaling command"),
    }
    Ok(())
}
