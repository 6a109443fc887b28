//! Lambda's invocation record: what a destination receives about an
//! asynchronous invocation.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::queue::QueuedEvent;
use crate::invoke::InvokeResult;

/// Why a record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Success,
    RetriesExhausted,
    EventAgeExceeded,
}

impl Condition {
    pub fn name(self) -> &'static str {
        match self {
            Condition::Success => "Success",
            Condition::RetriesExhausted => "RetriesExhausted",
            Condition::EventAgeExceeded => "EventAgeExceeded",
        }
    }
}

/// The last response of an event's invocations, kept with the event
/// between retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastResponse {
    pub status_code: i32,
    pub executed_version: String,
    pub function_error: Option<String>,
    pub payload: String,
}

impl LastResponse {
    pub fn of(r: &InvokeResult) -> Self {
        Self {
            status_code: r.status_code,
            executed_version: r.executed_version.clone(),
            function_error: r.function_error.map(|e| e.name().to_string()),
            payload: String::from_utf8_lossy(&r.payload).into_owned(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_str(s).ok()
    }
}

/// A payload as the record carries it: its JSON, or a string when it is
/// not JSON.
fn payload_value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// The record, JSON, as AWS writes it.
pub fn invocation_record(
    ev: &QueuedEvent,
    function_arn: &str,
    condition: Condition,
    invoke_count: u32,
    last: Option<&LastResponse>,
) -> String {
    let mut record = json!({
        "version": "1.0",
        "timestamp": crate::time::rfc3339(std::time::SystemTime::now()),
        "requestContext": {
            "requestId": ev.request_id,
            "functionArn": function_arn,
            "condition": condition.name(),
            "approximateInvokeCount": invoke_count,
        },
        "requestPayload": payload_value(&ev.payload),
    });
    if let Some(r) = last {
        let mut ctx = json!({
            "statusCode": r.status_code,
            "executedVersion": r.executed_version,
        });
        if let Some(e) = &r.function_error {
            ctx["functionError"] = Value::String(e.clone());
        }
        record["responseContext"] = ctx;
        record["responsePayload"] = payload_value(r.payload.as_bytes());
    }
    record.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_has_aws_fields() {
        let ev = QueuedEvent {
            id: 1,
            request_id: "r-1".into(),
            function: "f".into(),
            qualifier: String::new(),
            payload: br#"{"k": 1}"#.to_vec(),
            received_ms: 0,
            due_ms: 0,
            attempts: 2,
            backoffs: 0,
            last: None,
        };
        let last = LastResponse {
            status_code: 200,
            executed_version: "$LATEST".into(),
            function_error: Some("Unhandled".into()),
            payload: r#"{"errorMessage":"boom"}"#.into(),
        };
        let r: Value = serde_json::from_str(&invocation_record(
            &ev,
            "arn:aws:lambda:r:a:function:f:$LATEST",
            Condition::RetriesExhausted,
            3,
            Some(&last),
        ))
        .unwrap();
        assert_eq!(r["version"], "1.0");
        assert_eq!(r["requestContext"]["requestId"], "r-1");
        assert_eq!(r["requestContext"]["condition"], "RetriesExhausted");
        assert_eq!(r["requestContext"]["approximateInvokeCount"], 3);
        assert_eq!(r["requestPayload"]["k"], 1);
        assert_eq!(r["responseContext"]["functionError"], "Unhandled");
        assert_eq!(r["responseContext"]["executedVersion"], "$LATEST");
        assert_eq!(r["responsePayload"]["errorMessage"], "boom");
        assert!(r["timestamp"].as_str().unwrap().ends_with('Z'));

        let aged: Value = serde_json::from_str(&invocation_record(
            &ev,
            "arn",
            Condition::EventAgeExceeded,
            0,
            None,
        ))
        .unwrap();
        assert!(aged.get("responseContext").is_none());
        let text = QueuedEvent {
            payload: b"not json".to_vec(),
            ..ev
        };
        let t: Value = serde_json::from_str(&invocation_record(
            &text,
            "arn",
            Condition::Success,
            1,
            None,
        ))
        .unwrap();
        assert_eq!(t["requestPayload"], "not json");
    }
}
