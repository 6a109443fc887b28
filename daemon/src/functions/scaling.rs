//! Provisioned concurrency that follows load: Application Auto Scaling's
//! model as Lambda uses it. A *scalable target* names an alias or a
//! published version (`function:NAME:QUALIFIER`) and the range its
//! provisioned concurrency may move in; *target tracking* policies on it
//! name the utilization to hold (`LambdaProvisionedConcurrencyUtilization`).
//! Stored with the functions; the controller is `node/autoscaling.rs`.

use serde::{Deserialize, Serialize};

use super::{parse_qualifier, FunctionsError, Qualifier};

/// The only service namespace, dimension, policy type and metric Flint
/// scales.
pub const NAMESPACE: &str = "lambda";
pub const DIMENSION: &str = "lambda:function:ProvisionedConcurrency";
pub const POLICY_TYPE: &str = "TargetTrackingScaling";
pub const METRIC: &str = "LambdaProvisionedConcurrencyUtilization";

/// A scalable target with its policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalableTarget {
    pub function: String,
    pub qualifier: String,
    pub min_capacity: u32,
    pub max_capacity: u32,
    pub created: String,
    #[serde(default)]
    pub policies: Vec<ScalingPolicy>,
}

impl ScalableTarget {
    /// Application Auto Scaling's resource id: `function:NAME:QUALIFIER`.
    pub fn resource_id(&self) -> String {
        format!("function:{}:{}", self.function, self.qualifier)
    }

    /// Its provisioned-concurrency config's key, `NAME:QUALIFIER`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.function, self.qualifier)
    }
}

/// A target tracking policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalingPolicy {
    pub name: String,
    /// The utilization to hold, above 0 and at most 1.
    pub target_value: f64,
    /// Seconds after a scale-out before another one.
    pub scale_out_cooldown_s: u32,
    /// Seconds after any scaling before a scale-in.
    pub scale_in_cooldown_s: u32,
    pub disable_scale_in: bool,
    pub created: String,
}

fn invalid(rule: impl Into<String>) -> FunctionsError {
    FunctionsError::ScalingInvalid(rule.into())
}

/// Checks the namespace and dimension a request names (empty: Lambda's).
pub fn check_dimension(namespace: &str, dimension: &str) -> Result<(), FunctionsError> {
    if !namespace.is_empty() && namespace != NAMESPACE {
        return Err(invalid(format!(
            "ServiceNamespace must be {NAMESPACE} (got {namespace})"
        )));
    }
    if !dimension.is_empty() && dimension != DIMENSION {
        return Err(invalid(format!(
            "ScalableDimension must be {DIMENSION} (got {dimension})"
        )));
    }
    Ok(())
}

/// Splits `function:NAME:QUALIFIER` into the function and its qualifier,
/// which must be an alias or a published version.
pub fn parse_resource_id(id: &str) -> Result<(String, String), FunctionsError> {
    let bad = || {
        invalid(format!(
            "ResourceId must be function:NAME:ALIAS or function:NAME:VERSION (got {id:?})"
        ))
    };
    let rest = id.strip_prefix("function:").ok_or_else(bad)?;
    let (name, qualifier) = rest.split_once(':').ok_or_else(bad)?;
    if name.is_empty() || qualifier.is_empty() {
        return Err(bad());
    }
    match parse_qualifier(qualifier)? {
        Qualifier::Latest => Err(invalid(
            "Provisioned concurrency cannot scale $LATEST: name an alias or a published version",
        )),
        _ => Ok((name.to_string(), qualifier.to_string())),
    }
}

/// Checks a target's range.
pub fn validate_range(min: i64, max: i64) -> Result<(u32, u32), FunctionsError> {
    let min = u32::try_from(min)
        .ok()
        .filter(|m| *m >= 1)
        .ok_or_else(|| invalid("MinCapacity must be at least 1"))?;
    let max = u32::try_from(max)
        .ok()
        .filter(|m| *m >= min)
        .ok_or_else(|| invalid("MaxCapacity must be at least MinCapacity"))?;
    Ok((min, max))
}

/// Checks a target tracking policy's values.
pub fn validate_policy(
    name: &str,
    policy_type: &str,
    metric: &str,
    target_value: f64,
    cooldowns: (i64, i64),
) -> Result<(u32, u32), FunctionsError> {
    if name.is_empty()
        || name.len() > 256
        || name.chars().any(|c| c.is_control() || c == ':' || c == '/')
    {
        return Err(invalid(
            "PolicyName must be 1 to 256 characters, without ':', '/' or control characters",
        ));
    }
    if !policy_type.is_empty() && policy_type != POLICY_TYPE {
        return Err(invalid(format!(
            "PolicyType must be {POLICY_TYPE} (got {policy_type})"
        )));
    }
    if !metric.is_empty() && metric != METRIC {
        return Err(invalid(format!(
            "PredefinedMetricType must be {METRIC} (got {metric})"
        )));
    }
    if !(target_value > 0.0 && target_value <= 1.0) {
        return Err(invalid(format!(
            "TargetValue is a utilization: above 0 and at most 1 (got {target_value})"
        )));
    }
    let cooldown = |v: i64, field: &str| {
        u32::try_from(v)
            .ok()
            .filter(|s| *s <= 86_400)
            .ok_or_else(|| invalid(format!("{field} must be 0 to 86400 seconds")))
    };
    Ok((
        cooldown(cooldowns.0, "ScaleOutCooldown")?,
        cooldown(cooldowns.1, "ScaleInCooldown")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_ids_name_an_alias_or_a_version() {
        assert_eq!(
            parse_resource_id("function:f:live").unwrap(),
            ("f".to_string(), "live".to_string())
        );
        assert_eq!(parse_resource_id("function:f:3").unwrap().1, "3");
        for bad in [
            "f:live",
            "function:f",
            "function::live",
            "function:f:$LATEST",
            "table:x:y",
        ] {
            assert!(parse_resource_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges_and_policies_are_checked() {
        assert_eq!(validate_range(1, 5).unwrap(), (1, 5));
        assert!(validate_range(0, 5).is_err());
        assert!(validate_range(3, 2).is_err());
        assert_eq!(validate_policy("p", "", "", 0.7, (0, 60)).unwrap(), (0, 60));
        assert!(validate_policy("p", "StepScaling", "", 0.7, (0, 0)).is_err());
        assert!(validate_policy("p", "", "CPUUtilization", 0.7, (0, 0)).is_err());
        for v in [0.0, -0.5, 1.5, f64::NAN] {
            assert!(validate_policy("p", "", "", v, (0, 0)).is_err(), "{v}");
        }
        assert!(validate_policy("", "", "", 0.7, (0, 0)).is_err());
        assert!(validate_policy("p", "", "", 0.7, (-1, 0)).is_err());
        assert!(check_dimension("lambda", DIMENSION).is_ok());
        assert!(check_dimension("ecs", "").is_err());
    }
}
