//! Asynchronous invocation on the fake engine: the real queue (SQLite), the
//! real dispatcher, pool and guest links, with Lambda's delays scaled down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::events::{EventSettings, EventsError, MAX_ASYNC_PAYLOAD};
use crate::functions::event_config::EventConfigChange;
use crate::invoke::InvocationType;
use crate::testing::{FakeEngine, Script};

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "123456789012";

fn node() -> (Arc<Node>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = FakeEngine::new(Script::Init(Duration::from_millis(5)));
    let config = Config {
        data_dir: dir.path().join("data"),
        artifacts_dir: dir.path().to_path_buf(),
        snapshots: false,
        region: REGION.into(),
        account_id: ACCOUNT.into(),
        // A minute is 6 ms, the retry delays 6 and 12 ms, and the default
        // maximum age (6 hours) about 2 s.
        events: EventSettings {
            concurrency: 8,
            time_scale: 0.0001,
        },
        ..Config::default()
    };
    let node = Arc::new(Node::with_engine(config, Arc::new(engine)).unwrap());
    tokio::spawn(node.events().clone().run());
    (node, dir)
}

fn create(node: &Node, name: &str) {
    let f = Function {
        name: name.into(),
        code_sha256_hex: "ab".into(),
        ..Function::placeholder()
    };
    node.store.insert(&f).unwrap();
}

fn bus(name: &str) -> String {
    format!("arn:aws:events:{REGION}:{ACCOUNT}:event-bus/{name}")
}

async fn send(node: &Node, name: &str, payload: &[u8]) -> Result<InvokeResult, NodeError> {
    node.invoke(InvokeRequest {
        function_name: name.into(),
        qualifier: String::new(),
        invocation_type: InvocationType::Event,
        log_tail: false,
        payload: payload.to_vec(),
        client_context: String::new(),
        trace: None,
    })
    .await
}

/// Waits for `n` records on `bus`, and returns them parsed.
async fn records(node: &Node, bus: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = node
            .events()
            .records_after(bus.into(), 0, 1000)
            .await
            .unwrap();
        if got.len() >= n {
            return got
                .iter()
                .map(|r| serde_json::from_str(&r.record).unwrap())
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} records on {bus}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn queue(node: &Node, name: &str) -> crate::events::QueueView {
    node.event_queues()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.function == name)
        .unwrap_or_default()
}

#[tokio::test]
async fn an_event_is_answered_202_and_its_success_reaches_the_event_bus() {
    let (node, _dir) = node();
    create(&node, "f");
    let change = EventConfigChange {
        on_success: Some(bus("ok")),
        maximum_event_age_s: Some(21_600),
        ..Default::default()
    };
    node.put_event_config("f", "", change, false).unwrap();
    let r = send(&node, "f", br#"{"n": 1}"#).await.unwrap();
    assert_eq!(r.status_code, 202);
    assert!(!r.request_id.is_empty());
    let recs = records(&node, "ok", 1).await;
    let rec = &recs[0];
    assert_eq!(rec["requestContext"]["requestId"], r.request_id.as_str());
    assert_eq!(rec["requestContext"]["condition"], "Success");
    assert_eq!(rec["requestContext"]["approximateInvokeCount"], 1);
    assert_eq!(
        rec["requestContext"]["functionArn"],
        format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:f:$LATEST")
    );
    assert_eq!(rec["requestPayload"]["n"], 1);
    assert_eq!(rec["responsePayload"]["n"], 1);
    assert_eq!(rec["responseContext"]["statusCode"], 200);
    let q = queue(&node, "f").await;
    assert_eq!(
        (q.received, q.succeeded, q.waiting, q.dropped),
        (1, 1, 0, 0)
    );
}

#[tokio::test]
async fn a_failing_event_is_retried_then_its_record_goes_to_a_function_that_runs_it() {
    let (node, _dir) = node();
    create(&node, "f");
    create(&node, "next");
    let change = EventConfigChange {
        maximum_retry_attempts: Some(1),
        on_failure: Some(format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:next")),
        ..Default::default()
    };
    node.put_event_config("f", "", change, false).unwrap();
    let change = EventConfigChange {
        on_success: Some(bus("after")),
        ..Default::default()
    };
    node.put_event_config("next", "", change, false).unwrap();
    let r = send(&node, "f", b"fail please").await.unwrap();
    // The record reaches `next` as its event; `next` echoes it, and its own
    // success record carries the first record as its request payload.
    let recs = records(&node, "after", 1).await;
    let first = &recs[0]["requestPayload"];
    assert_eq!(first["requestContext"]["requestId"], r.request_id.as_str());
    assert_eq!(first["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(first["requestContext"]["approximateInvokeCount"], 2);
    assert_eq!(first["requestPayload"], "fail please");
    assert_eq!(first["responseContext"]["functionError"], "Handled");
    assert_eq!(first["responsePayload"]["errorMessage"], "asked to fail");
    let q = queue(&node, "f").await;
    assert_eq!((q.received, q.succeeded, q.dropped), (1, 0, 1));
    assert_eq!(q.recent_drops[0].reason, "RetriesExhausted");
    assert_eq!(q.recent_drops[0].request_id, r.request_id);
}

#[tokio::test]
async fn a_throttled_event_waits_until_it_is_too_old_and_then_reports_its_age() {
    let (node, _dir) = node();
    create(&node, "f");
    node.put_function_concurrency("f", 0).unwrap();
    // 60 s of age is 6 ms here; the backoffs (1 s, 2 s, ...) are 0.1 ms on.
    let change = EventConfigChange {
        maximum_event_age_s: Some(60),
        maximum_retry_attempts: Some(0),
        on_failure: Some(bus("late")),
        ..Default::default()
    };
    node.put_event_config("f", "", change, false).unwrap();
    let r = send(&node, "f", b"{}").await.unwrap();
    let recs = records(&node, "late", 1).await;
    assert_eq!(
        recs[0]["requestContext"]["requestId"],
        r.request_id.as_str()
    );
    assert_eq!(recs[0]["requestContext"]["condition"], "EventAgeExceeded");
    assert_eq!(recs[0]["requestContext"]["approximateInvokeCount"], 0);
    assert!(recs[0].get("responseContext").is_none());
    let q = queue(&node, "f").await;
    assert_eq!(q.recent_drops[0].reason, "EventAgeExceeded");
}

#[tokio::test]
async fn events_of_a_function_reserved_at_two_run_two_at_a_time_and_all_complete() {
    let (node, _dir) = node();
    create(&node, "f");
    node.put_function_concurrency("f", 2).unwrap();
    let change = EventConfigChange {
        on_success: Some(bus("done")),
        ..Default::default()
    };
    node.put_event_config("f", "", change, false).unwrap();
    for _ in 0..8 {
        send(&node, "f", b"sleep50").await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut most = 0;
    loop {
        let q = queue(&node, "f").await;
        most = most.max(q.in_flight);
        if q.succeeded == 8 {
            break;
        }
        assert!(Instant::now() < deadline, "{q:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(most, 2, "at most two at once, and two did run together");
    assert_eq!(records(&node, "done", 8).await.len(), 8);
    let q = queue(&node, "f").await;
    assert_eq!(
        q.dropped, 0,
        "waiting for the reservation is not a drop: {q:?}"
    );
}

#[tokio::test]
async fn events_sent_at_once_share_commits_and_every_one_is_queued() {
    let (node, _dir) = node();
    create(&node, "f");
    node.put_function_concurrency("f", 0).unwrap();
    let mut sends = Vec::new();
    for i in 0..64 {
        let node = node.clone();
        sends.push(tokio::spawn(async move {
            send(&node, "f", format!("{{\"i\": {i}}}").as_bytes()).await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for s in sends {
        let r = s.await.unwrap().unwrap();
        assert_eq!(r.status_code, 202);
        assert!(node.events().find(&r.request_id).await.unwrap());
        ids.insert(r.request_id);
    }
    assert_eq!(ids.len(), 64, "each event has its own request id");
    assert_eq!(queue(&node, "f").await.received, 64);
}

#[tokio::test]
async fn bad_events_and_configurations_get_typed_errors() {
    let (node, _dir) = node();
    create(&node, "f");
    let big = vec![b'x'; MAX_ASYNC_PAYLOAD + 1];
    assert!(matches!(
        send(&node, "f", &big).await,
        Err(NodeError::Events(EventsError::PayloadTooLarge { .. }))
    ));
    assert!(matches!(
        send(&node, "nope", b"{}").await,
        Err(NodeError::Events(EventsError::Invoke(_)))
    ));
    let bad = [
        EventConfigChange::default(),
        EventConfigChange {
            maximum_retry_attempts: Some(3),
            ..Default::default()
        },
        EventConfigChange {
            on_success: Some("arn:aws:sns:us-east-1:123456789012:t".into()),
            ..Default::default()
        },
    ];
    for change in bad {
        assert!(
            node.put_event_config("f", "", change.clone(), false)
                .is_err(),
            "{change:?}"
        );
    }
    // An update needs a configuration to merge into; an alias that does not
    // exist has none.
    let some = EventConfigChange {
        maximum_retry_attempts: Some(0),
        ..Default::default()
    };
    assert!(node.put_event_config("f", "", some.clone(), true).is_err());
    assert!(node
        .put_event_config("f", "nope", some.clone(), false)
        .is_err());
    node.put_event_config("f", "", some, false).unwrap();
    let merged = node
        .put_event_config(
            "f",
            "$LATEST",
            EventConfigChange {
                maximum_event_age_s: Some(100),
                ..Default::default()
            },
            true,
        )
        .unwrap();
    assert_eq!(
        (merged.maximum_retry_attempts, merged.maximum_event_age_s),
        (Some(0), Some(100))
    );
    assert_eq!(node.list_event_configs("f").unwrap().len(), 1);
    node.delete_event_config("f", "").unwrap();
    assert!(node.get_event_config("f", "").is_err());
}
