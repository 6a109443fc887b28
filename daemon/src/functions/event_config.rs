//! Event invoke configuration: how Lambda treats a function's asynchronous
//! events — how often a failed one is retried, how old one may grow, and
//! where a record of what became of it goes. One per function version or
//! alias (`$LATEST` for the unqualified function), stored with the
//! functions; the queue that applies it is `events/`.

use serde::{Deserialize, Serialize};

use super::{validate_alias_name, FunctionsError};

/// Lambda's bounds and defaults.
pub const MAX_RETRY_ATTEMPTS: u32 = 2;
pub const MIN_EVENT_AGE_S: u32 = 60;
pub const MAX_EVENT_AGE_S: u32 = 21_600;

/// A function's event invoke configuration as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInvokeConfig {
    pub function: String,
    /// `$LATEST`, a version number or an alias name.
    pub qualifier: String,
    pub maximum_retry_attempts: Option<u32>,
    pub maximum_event_age_s: Option<u32>,
    pub on_success: Option<String>,
    pub on_failure: Option<String>,
    pub last_modified: String,
}

impl EventInvokeConfig {
    /// What applies where no configuration was put.
    pub fn defaults(function: &str, qualifier: &str) -> Self {
        Self {
            function: function.to_string(),
            qualifier: qualifier.to_string(),
            maximum_retry_attempts: None,
            maximum_event_age_s: None,
            on_success: None,
            on_failure: None,
            last_modified: String::new(),
        }
    }

    /// Retries after a function error (2 when not set).
    pub fn retries(&self) -> u32 {
        self.maximum_retry_attempts.unwrap_or(MAX_RETRY_ATTEMPTS)
    }

    /// The oldest an event may grow, in seconds (6 hours when not set).
    pub fn max_age_s(&self) -> u32 {
        self.maximum_event_age_s.unwrap_or(MAX_EVENT_AGE_S)
    }
}

/// The fields a put or an update names. A put replaces the configuration
/// with them; an update changes only the ones it names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventConfigChange {
    pub maximum_retry_attempts: Option<u32>,
    pub maximum_event_age_s: Option<u32>,
    /// `Some("")` removes a destination in an update.
    pub on_success: Option<String>,
    pub on_failure: Option<String>,
}

impl EventConfigChange {
    fn is_empty(&self) -> bool {
        self.maximum_retry_attempts.is_none()
            && self.maximum_event_age_s.is_none()
            && self.on_success.as_deref().unwrap_or("").is_empty()
            && self.on_failure.as_deref().unwrap_or("").is_empty()
    }

    /// Applies the change to `base` (a put passes `None`).
    pub fn apply(
        &self,
        base: Option<EventInvokeConfig>,
        function: &str,
        qualifier: &str,
        now: String,
    ) -> Result<EventInvokeConfig, FunctionsError> {
        if base.is_none() && self.is_empty() {
            return Err(invalid(
                "EventInvokeConfig",
                "name at least one of MaximumRetryAttempts, MaximumEventAgeInSeconds and DestinationConfig",
            ));
        }
        if let Some(r) = self.maximum_retry_attempts {
            if r > MAX_RETRY_ATTEMPTS {
                return Err(invalid(
                    "MaximumRetryAttempts",
                    format!("must be between 0 and {MAX_RETRY_ATTEMPTS} (got {r})"),
                ));
            }
        }
        if let Some(a) = self.maximum_event_age_s {
            if !(MIN_EVENT_AGE_S..=MAX_EVENT_AGE_S).contains(&a) {
                return Err(invalid(
                    "MaximumEventAgeInSeconds",
                    format!("must be between {MIN_EVENT_AGE_S} and {MAX_EVENT_AGE_S} (got {a})"),
                ));
            }
        }
        let mut c = base.unwrap_or_else(|| EventInvokeConfig::defaults(function, qualifier));
        if self.maximum_retry_attempts.is_some() {
            c.maximum_retry_attempts = self.maximum_retry_attempts;
        }
        if self.maximum_event_age_s.is_some() {
            c.maximum_event_age_s = self.maximum_event_age_s;
        }
        if let Some(d) = &self.on_success {
            c.on_success = (!d.is_empty()).then(|| d.clone());
        }
        if let Some(d) = &self.on_failure {
            c.on_failure = (!d.is_empty()).then(|| d.clone());
        }
        c.last_modified = now;
        Ok(c)
    }
}

/// Where a record of an asynchronous invocation goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Another function on this node, invoked asynchronously with the
    /// record as its event.
    Function { name: String, qualifier: String },
    /// A named stream of records on the node that a frontend controller
    /// reads over gRPC (`SubscribeInvocationRecords`) and forwards: an
    /// EventBridge event bus's ARN, `arn:aws:events:R:A:event-bus/NAME`.
    EventBus(String),
    /// A queue on the node's broker, `arn:aws:sqs:R:A:NAME`.
    Queue(String),
}

/// Parses a destination ARN of this node's region and account.
pub fn parse_destination(
    arn: &str,
    region: &str,
    account: &str,
) -> Result<Destination, FunctionsError> {
    let field = "DestinationConfig";
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() != 6 || parts[0] != "arn" || parts[1] != "aws" {
        return Err(invalid(field, format!("{arn:?} is not an ARN")));
    }
    if parts[3] != region || parts[4] != account {
        return Err(invalid(
            field,
            format!("{arn:?} is not in this node's region {region} and account {account}"),
        ));
    }
    match parts[2] {
        "lambda" => {
            let rest = parts[5]
                .strip_prefix("function:")
                .ok_or_else(|| invalid(field, format!("{arn:?} is not a function ARN")))?;
            let (name, qualifier) = match rest.split_once(':') {
                Some((n, q)) => (n, q),
                None => (rest, ""),
            };
            super::validate_name(name)
                .map_err(|_| invalid(field, format!("{arn:?} does not name a function")))?;
            if !qualifier.is_empty() {
                super::parse_qualifier(qualifier)?;
            }
            Ok(Destination::Function {
                name: name.to_string(),
                qualifier: qualifier.to_string(),
            })
        }
        "events" => {
            let bus = parts[5]
                .strip_prefix("event-bus/")
                .ok_or_else(|| invalid(field, format!("{arn:?} is not an event bus ARN")))?;
            if validate_alias_name(bus).is_err() && !bus.chars().all(|c| c.is_ascii_digit()) {
                return Err(invalid(
                    field,
                    format!("event bus {bus:?}: 1 to 128 of A-Z a-z 0-9 - _"),
                ));
            }
            Ok(Destination::EventBus(bus.to_string()))
        }
        "sqs" => crate::broker::parse_queue_arn(arn, region, account)
            .map(Destination::Queue)
            .map_err(|e| invalid(field, e.to_string())),
        other => Err(invalid(
            field,
            format!(
                "{arn:?}: destinations are functions (lambda), queues (sqs) or event buses (events), not {other}"
            ),
        )),
    }
}

fn invalid(field: &'static str, rule: impl Into<String>) -> FunctionsError {
    FunctionsError::Invalid {
        field,
        rule: rule.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(r: Option<u32>, a: Option<u32>, s: Option<&str>) -> EventConfigChange {
        EventConfigChange {
            maximum_retry_attempts: r,
            maximum_event_age_s: a,
            on_success: s.map(String::from),
            on_failure: None,
        }
    }

    #[test]
    fn put_needs_one_field_and_ranges_hold() {
        let now = || "t".to_string();
        assert!(change(None, None, None)
            .apply(None, "f", "$LATEST", now())
            .is_err());
        assert!(change(None, None, Some(""))
            .apply(None, "f", "$LATEST", now())
            .is_err());
        assert!(change(Some(3), None, None)
            .apply(None, "f", "$LATEST", now())
            .is_err());
        assert!(change(None, Some(59), None)
            .apply(None, "f", "$LATEST", now())
            .is_err());
        assert!(change(None, Some(21_601), None)
            .apply(None, "f", "$LATEST", now())
            .is_err());
        let c = change(Some(0), Some(60), None)
            .apply(None, "f", "$LATEST", now())
            .unwrap();
        assert_eq!((c.retries(), c.max_age_s()), (0, 60));
        let d = change(None, None, Some("arn"))
            .apply(None, "f", "1", now())
            .unwrap();
        assert_eq!((d.retries(), d.max_age_s()), (2, 21_600));
    }

    #[test]
    fn update_merges_and_an_empty_destination_removes_it() {
        let base = change(Some(1), None, Some("a"))
            .apply(None, "f", "$LATEST", "t0".into())
            .unwrap();
        let merged = change(None, Some(120), None)
            .apply(Some(base.clone()), "f", "$LATEST", "t1".into())
            .unwrap();
        assert_eq!(merged.maximum_retry_attempts, Some(1));
        assert_eq!(merged.maximum_event_age_s, Some(120));
        assert_eq!(merged.on_success.as_deref(), Some("a"));
        let removed = change(None, None, Some(""))
            .apply(Some(merged), "f", "$LATEST", "t2".into())
            .unwrap();
        assert_eq!(removed.on_success, None);
    }

    #[test]
    fn destinations_are_functions_or_event_buses_of_this_node() {
        let p = |a: &str| parse_destination(a, "us-east-1", "123456789012");
        assert_eq!(
            p("arn:aws:lambda:us-east-1:123456789012:function:next").unwrap(),
            Destination::Function {
                name: "next".into(),
                qualifier: String::new()
            }
        );
        assert_eq!(
            p("arn:aws:lambda:us-east-1:123456789012:function:next:live").unwrap(),
            Destination::Function {
                name: "next".into(),
                qualifier: "live".into()
            }
        );
        assert_eq!(
            p("arn:aws:events:us-east-1:123456789012:event-bus/ops").unwrap(),
            Destination::EventBus("ops".into())
        );
        assert_eq!(
            p("arn:aws:sqs:us-east-1:123456789012:failed").unwrap(),
            Destination::Queue("failed".into())
        );
        for bad in [
            "next",
            "arn:aws:lambda:eu-west-1:123456789012:function:next",
            "arn:aws:lambda:us-east-1:999999999999:function:next",
            "arn:aws:lambda:us-east-1:123456789012:layer:x",
            "arn:aws:lambda:us-east-1:123456789012:function:bad/name",
            "arn:aws:events:us-east-1:123456789012:rule/x",
            "arn:aws:events:us-east-1:123456789012:event-bus/../x",
            "arn:aws:sqs:us-east-1:123456789012:bad.name",
            "arn:aws:sns:us-east-1:123456789012:t",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }
}
