//! Event source mappings on real microVMs and a real Redis that the test
//! starts: queue batches with filters and batch item failures, visibility
//! and redrive to a dead-letter queue, FIFO order per message group, the
//! API's typed errors and states, and restarts of flintd (`kill -9`) and of
//! Redis in the middle of a run with nothing lost.
//!
//! The function logs each batch it gets (`BATCH [...]`); the tests read
//! those lines back through `TailLogs`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use flint_e2e::*;
use flint_proto::node::v1 as pb;
use flint_proto::node::v1::functions_client::FunctionsClient;
use flint_proto::node::v1::queues_client::QueuesClient;
use serde_json::Value;
use tonic::transport::Channel;

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "000000000000";

/// Logs each batch; raises on a poison message; reports a `fail_once`
/// message as a batch item failure on its first receive.
const COLLECTOR: &[u8] = b"import json
def handler(event, context):
    seen, failures = [], []
    for r in event.get('Records', []):
        try:
            b = json.loads(r['body'])
        except Exception:
            b = r['body']
        rc = int(r['attributes']['ApproximateReceiveCount'])
        if isinstance(b, dict) and b.get('poison'):
            raise Exception('poison message')
        if isinstance(b, dict) and b.get('fail_once') and rc == 1:
            failures.append({'itemIdentifier': r['messageId']})
        seen.append({'id': r['messageId'], 'body': r['body'], 'rc': rc,
                     'group': r['attributes'].get('MessageGroupId'),
                     'source': r['eventSource'], 'arn': r['eventSourceARN'],
                     'md5': r['md5OfBody'], 'region': r['awsRegion'],
                     'sent': r['attributes']['SentTimestamp']})
    print('BATCH ' + json.dumps(seen))
    return {'batchItemFailures': failures}
";

fn queue_arn(name: &str) -> String {
    format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}")
}

struct Clients {
    c: FunctionsClient<Channel>,
    q: QueuesClient<Channel>,
    /// The endpoint, for reading logs.
    n: String,
}

async fn clients(endpoint: &str) -> Clients {
    let channel = flint_daemon::client::channel(endpoint).await.unwrap();
    Clients {
        c: FunctionsClient::new(channel.clone()),
        q: QueuesClient::new(channel),
        n: endpoint.to_string(),
    }
}

async fn create_collector(c: &mut FunctionsClient<Channel>, name: &str) {
    create_python(c, name, COLLECTOR).await;
}

async fn create_queue(q: &mut QueuesClient<Channel>, r: pb::CreateQueueRequest) {
    q.create_queue(r).await.unwrap();
}

async fn send(q: &mut QueuesClient<Channel>, queue: &str, body: &str, group: &str) -> String {
    q.send_message(pb::SendMessageRequest {
        queue_name: queue.into(),
        message_body: body.into(),
        message_group_id: group.into(),
        message_deduplication_id: if group.is_empty() {
            String::new()
        } else {
            uuid_like(body)
        },
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .message_id
}

fn uuid_like(body: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Every batch the function logged so far, in log order.
async fn batches(endpoint: &str, function: &str) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    for m in log_messages(endpoint, function).await {
        if let Some(json) = m.trim().strip_prefix("BATCH ") {
            let batch = serde_json::from_str::<Vec<Value>>(json).unwrap();
            // A direct invocation (the warm-up) logs an empty one.
            if !batch.is_empty() {
                out.push(batch);
            }
        }
    }
    out
}

async fn queue_total(q: &mut QueuesClient<Channel>, queue: &str) -> u64 {
    let a = q
        .get_queue_attributes(pb::QueueRequest {
            queue_name: queue.into(),
        })
        .await
        .unwrap()
        .into_inner();
    a.approximate_number_of_messages
        + a.approximate_number_of_messages_not_visible
        + a.approximate_number_of_messages_delayed
}

/// Waits until `done` holds of the function's batches (or panics).
async fn batches_until(
    n: &str,
    function: &str,
    limit: Duration,
    done: impl Fn(&[Vec<Value>]) -> bool,
) -> Vec<Vec<Value>> {
    let deadline = Instant::now() + limit;
    loop {
        let b = batches(n, function).await;
        if done(&b) {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "{function}: {} batches, {} records so far",
            b.len(),
            b.iter().map(Vec::len).sum::<usize>()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn bodies(batches: &[Vec<Value>]) -> Vec<String> {
    batches
        .iter()
        .flatten()
        .map(|r| r["body"].as_str().unwrap().to_string())
        .collect()
}

async fn mapping(
    c: &mut FunctionsClient<Channel>,
    r: pb::CreateEventSourceMappingRequest,
) -> Result<pb::EventSourceMappingConfiguration, tonic::Status> {
    c.create_event_source_mapping(r)
        .await
        .map(|r| r.into_inner())
}

async fn get_mapping(
    c: &mut FunctionsClient<Channel>,
    uuid: &str,
) -> Result<pb::EventSourceMappingConfiguration, tonic::Status> {
    c.get_event_source_mapping(pb::EventSourceMappingRequest { uuid: uuid.into() })
        .await
        .map(|r| r.into_inner())
}

async fn state_until(c: &mut FunctionsClient<Channel>, uuid: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = get_mapping(c, uuid).await.unwrap();
        if m.state == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{uuid} is {}, not {state}",
            m.state
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn queues_feed_functions_in_batches_with_filters_failures_redrive_and_fifo_order() {
    use flint_daemon::engine::jail::JailSettings;
    let dir = tempfile::Builder::new()
        .prefix("flint-sources-")
        .tempdir()
        .unwrap();
    let redis = Redis::start(dir.path());
    let url = redis.url();
    let node = start_node(|c| {
        c.region = REGION.into();
        c.account_id = ACCOUNT.into();
        c.broker_url = Some(url);
        c.vmm = JailSettings {
            uid_base: JailSettings::default().uid_base + 0x8_0000,
            uid_count: 1024,
            ..JailSettings::default()
        };
    });
    let Clients { mut c, mut q, n } = clients(&node.endpoint).await;
    let f = "collector";
    create_collector(&mut c, f).await;

    // --- The API's typed errors. ---
    create_queue(
        &mut q,
        pb::CreateQueueRequest {
            queue_name: "orders".into(),
            // Longer than a batch takes here, a start included: a batch
            // still running when its messages reappear is delivered twice
            // (SQS's at-least-once).
            visibility_timeout: Some(10),
            ..Default::default()
        },
    )
    .await;
    let base = pb::CreateEventSourceMappingRequest {
        event_source_arn: queue_arn("orders"),
        function_name: f.into(),
        ..Default::default()
    };
    for (bad, code, exception) in [
        (
            pb::CreateEventSourceMappingRequest {
                batch_size: Some(10_001),
                maximum_batching_window_in_seconds: Some(1),
                ..base.clone()
            },
            tonic::Code::InvalidArgument,
            "InvalidParameterValueException",
        ),
        (
            pb::CreateEventSourceMappingRequest {
                batch_size: Some(20),
                ..base.clone()
            },
            tonic::Code::InvalidArgument,
            "InvalidParameterValueException",
        ),
        (
            pb::CreateEventSourceMappingRequest {
                scaling_config: Some(pb::ScalingConfig {
                    maximum_concurrency: Some(1),
                }),
                ..base.clone()
            },
            tonic::Code::InvalidArgument,
            "InvalidParameterValueException",
        ),
        (
            pb::CreateEventSourceMappingRequest {
                filter_criteria: Some(pb::FilterCriteria {
                    patterns: vec![r#"{"body": {"kind": "order"}}"#.into()],
                }),
                ..base.clone()
            },
            tonic::Code::InvalidArgument,
            "InvalidParameterValueException",
        ),
        (
            pb::CreateEventSourceMappingRequest {
                function_name: "no-such-function".into(),
                ..base.clone()
            },
            tonic::Code::NotFound,
            "ResourceNotFoundException",
        ),
        (
            pb::CreateEventSourceMappingRequest {
                event_source_arn: queue_arn("no-such-queue"),
                ..base.clone()
            },
            tonic::Code::NotFound,
            "NonExistentQueue",
        ),
        (
            pb::CreateEventSourceMappingRequest {
                event_source_arn: format!("arn:aws:sqs:eu-west-1:{ACCOUNT}:orders"),
                ..base.clone()
            },
            tonic::Code::InvalidArgument,
            "InvalidParameterValueException",
        ),
    ] {
        let e = mapping(&mut c, bad.clone()).await.unwrap_err();
        assert_eq!(e.code(), code, "{bad:?}: {e:?}");
        assert!(e.message().contains(exception), "{bad:?}: {e:?}");
    }

    // --- Batches, filters and batch item failures. ---
    // Warm: the first batch does not wait for a cold start.
    c.invoke(pb::InvokeRequest {
        function_name: f.into(),
        payload: b"{}".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    // Orders pass the filter, refunds do not (and are deleted unseen);
    // two orders fail once and come back after the visibility timeout.
    let m = mapping(
        &mut c,
        pb::CreateEventSourceMappingRequest {
            batch_size: Some(10),
            maximum_batching_window_in_seconds: Some(1),
            filter_criteria: Some(pb::FilterCriteria {
                patterns: vec![
                    r#"{"body": {"kind": ["order"]}}"#.into(),
                    r#"{"body": {"kind": [{"prefix": "express-"}]}}"#.into(),
                ],
            }),
            function_response_types: vec!["ReportBatchItemFailures".into()],
            ..base.clone()
        },
    )
    .await
    .unwrap();
    assert!(["Creating", "Enabled"].contains(&m.state.as_str()), "{m:?}");
    // A second mapping of the same queue to the same function conflicts.
    let e = mapping(&mut c, base.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    assert!(e.message().contains("ResourceConflictException"));
    state_until(&mut c, &m.uuid, "Enabled").await;

    let mut expected = HashSet::new();
    for i in 0..25 {
        let body = match i % 5 {
            0 => format!(r#"{{"kind": "refund", "i": {i}}}"#),
            1 => format!(r#"{{"kind": "express-order", "i": {i}}}"#),
            _ => format!(
                r#"{{"kind": "order", "i": {i}, "fail_once": {}}}"#,
                i == 2 || i == 7
            ),
        };
        if i % 5 != 0 {
            expected.insert(body.clone());
        }
        send(&mut q, "orders", &body, "").await;
    }
    let got = batches_until(&n, f, Duration::from_secs(300), |b| {
        let seen: HashSet<String> = bodies(b).into_iter().collect();
        seen.len() >= expected.len() && b.iter().flatten().filter(|r| r["rc"] == 2).count() >= 2
    })
    .await;
    let all = bodies(&got);
    let seen: HashSet<String> = all.iter().cloned().collect();
    assert_eq!(
        seen, expected,
        "exactly the matching messages reach the function"
    );
    assert!(got.iter().all(|b| b.len() <= 10), "batches of at most 10");
    // The two that failed came back, with a receive count of 2.
    let again: HashSet<&str> = got
        .iter()
        .flatten()
        .filter(|r| r["rc"] == 2)
        .map(|r| r["body"].as_str().unwrap())
        .collect();
    for i in [2, 7] {
        let body = format!(r#"{{"kind": "order", "i": {i}, "fail_once": true}}"#);
        assert!(again.contains(body.as_str()), "{again:?}");
    }
    // Lambda's SQS record shape.
    let r = &got[0][0];
    assert_eq!(r["source"], "aws:sqs");
    assert_eq!(r["arn"], queue_arn("orders"));
    assert_eq!(r["region"], REGION);
    assert_eq!(r["md5"].as_str().unwrap().len(), 32);
    assert!(r["sent"].as_str().unwrap().parse::<u64>().unwrap() > 1_600_000_000_000);
    // Everything is settled: nothing left on the queue.
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue_total(&mut q, "orders").await > 0 {
        assert!(Instant::now() < deadline, "the queue did not drain");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = get_mapping(&mut c, &m.uuid).await.unwrap();
    let s = m.status.clone().unwrap();
    assert_eq!(s.filtered, 5, "{s:?}");
    assert_eq!(s.failed_items, 2, "{s:?}");
    assert_eq!(s.lag, Some(0));
    // flintctl shows the mapping with its state, lag and counts.
    let table = flintctl(
        &node.endpoint,
        &["list-event-source-mappings", "--output", "table"],
    )
    .unwrap();
    assert!(
        table.contains(&m.uuid) && table.contains("Enabled"),
        "{table}"
    );

    // Disabled: messages wait; enabled again: they flow.
    c.update_event_source_mapping(pb::UpdateEventSourceMappingRequest {
        uuid: m.uuid.clone(),
        enabled: Some(false),
        ..Default::default()
    })
    .await
    .unwrap();
    state_until(&mut c, &m.uuid, "Disabled").await;
    let before = bodies(&batches(&n, f).await).len();
    send(&mut q, "orders", r#"{"kind": "order", "late": true}"#, "").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(bodies(&batches(&n, f).await).len(), before);
    assert_eq!(queue_total(&mut q, "orders").await, 1);
    flintctl(
        &node.endpoint,
        &[
            "update-event-source-mapping",
            "--uuid",
            &m.uuid,
            "--enabled",
        ],
    )
    .unwrap();
    batches_until(&n, f, Duration::from_secs(120), |b| {
        bodies(b).iter().any(|x| x.contains("late"))
    })
    .await;
    // Deleted: it goes through Deleting and is gone.
    let d = c
        .delete_event_source_mapping(pb::EventSourceMappingRequest {
            uuid: m.uuid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.state, "Deleting");
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_mapping(&mut c, &m.uuid).await.is_ok() {
        assert!(Instant::now() < deadline, "the mapping was not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // --- A poison message: retried after each visibility timeout, then
    // redriven to the dead-letter queue; the others are not held up. ---
    create_queue(
        &mut q,
        pb::CreateQueueRequest {
            queue_name: "jobs-dlq".into(),
            ..Default::default()
        },
    )
    .await;
    create_queue(
        &mut q,
        pb::CreateQueueRequest {
            queue_name: "jobs".into(),
            // Longer than a start of a second instance takes here, so that
            // only the poison message is received more than twice.
            visibility_timeout: Some(8),
            redrive_policy: Some(format!(
                r#"{{"deadLetterTargetArn": "{}", "maxReceiveCount": 2}}"#,
                queue_arn("jobs-dlq")
            )),
            ..Default::default()
        },
    )
    .await;
    let jobs = mapping(
        &mut c,
        pb::CreateEventSourceMappingRequest {
            event_source_arn: queue_arn("jobs"),
            function_name: f.into(),
            batch_size: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let poison = send(&mut q, "jobs", r#"{"poison": true}"#, "").await;
    send(&mut q, "jobs", r#"{"job": "fine"}"#, "").await;
    let deadline = Instant::now() + Duration::from_secs(180);
    let dead = loop {
        let got = q
            .receive_message(pb::ReceiveMessageRequest {
                queue_name: "jobs-dlq".into(),
                max_number_of_messages: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .messages;
        if !got.is_empty() {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "nothing reached the dead-letter queue"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, poison);
    assert_eq!(dead[0].body, r#"{"poison": true}"#);
    assert!(bodies(&batches(&n, f).await)
        .iter()
        .any(|b| b.contains("fine")));
    let s = get_mapping(&mut c, &jobs.uuid)
        .await
        .unwrap()
        .status
        .unwrap();
    assert!(s.failed_batches >= 2, "{s:?}");
    assert!(s.last_error.contains("Function call failed"), "{s:?}");

    // --- FIFO: order within each message group, across batches. ---
    create_queue(
        &mut q,
        pb::CreateQueueRequest {
            queue_name: "ledger.fifo".into(),
            fifo_queue: Some(true),
            visibility_timeout: Some(30),
            ..Default::default()
        },
    )
    .await;
    for i in 0..12 {
        for g in ["alice", "bob"] {
            send(&mut q, "ledger.fifo", &format!("{g}-{i:02}"), g).await;
        }
    }
    mapping(
        &mut c,
        pb::CreateEventSourceMappingRequest {
            event_source_arn: queue_arn("ledger.fifo"),
            function_name: f.into(),
            batch_size: Some(3),
            scaling_config: Some(pb::ScalingConfig {
                maximum_concurrency: Some(4),
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let got = batches_until(&n, f, Duration::from_secs(300), |b| {
        bodies(b)
            .iter()
            .filter(|x| x.starts_with("alice-") || x.starts_with("bob-"))
            .count()
            >= 24
    })
    .await;
    let mut per_group: HashMap<String, Vec<String>> = HashMap::new();
    for r in got.iter().flatten() {
        if let Some(g) = r["group"].as_str() {
            per_group
                .entry(g.to_string())
                .or_default()
                .push(r["body"].as_str().unwrap().to_string());
        }
    }
    for g in ["alice", "bob"] {
        let want: Vec<String> = (0..12).map(|i| format!("{g}-{i:02}")).collect();
        assert_eq!(per_group[g], want, "{g}'s messages in order, each once");
    }
    drop(node);
    drop(redis);
}

#[tokio::test]
async fn restarts_of_flintd_and_of_redis_lose_no_message() {
    let dir = tempfile::Builder::new()
        .prefix("flint-sources-crash-")
        .tempdir()
        .unwrap();
    let mut redis = Redis::start(dir.path());
    let f = "steady";
    let flintd = spawn_flintd(dir.path(), &redis.url(), 0x9_0000);
    let Clients { mut c, mut q, n } = clients(&flintd.endpoint).await;
    create_collector(&mut c, f).await;
    create_queue(
        &mut q,
        pb::CreateQueueRequest {
            queue_name: "steady".into(),
            visibility_timeout: Some(5),
            ..Default::default()
        },
    )
    .await;
    let m = mapping(
        &mut c,
        pb::CreateEventSourceMappingRequest {
            event_source_arn: queue_arn("steady"),
            function_name: f.into(),
            batch_size: Some(5),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut sent = HashSet::new();
    for i in 0..40 {
        sent.insert(send(&mut q, "steady", &format!("m{i}"), "").await);
    }
    // flintd is killed while batches run; the new one picks the mapping
    // up where it was.
    batches_until(&n, f, Duration::from_secs(300), |b| !b.is_empty()).await;
    let mut flintd = flintd;
    flintd.child.kill().unwrap();
    flintd.child.wait().unwrap();
    drop(flintd);
    for i in 40..60 {
        // The broker takes messages while flintd is down.
        let b = flint_daemon::broker::Broker::new(&redis.url()).unwrap();
        sent.insert(
            b.send_message(
                "steady",
                &format!("m{i}"),
                &Default::default(),
                &Default::default(),
            )
            .await
            .unwrap(),
        );
    }
    let flintd = spawn_flintd(dir.path(), &redis.url(), 0x9_0000);
    let Clients { mut c, mut q, n } = clients(&flintd.endpoint).await;
    state_until(&mut c, &m.uuid, "Enabled").await;
    // Redis goes away and comes back (its append-only file keeps every
    // message); the poller waits, warns and goes on.
    redis.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = get_mapping(&mut c, &m.uuid).await.unwrap().status.unwrap();
    assert_eq!(s.lag, None, "the queue cannot be read while Redis is down");
    redis.restart();
    for i in 60..70 {
        sent.insert(send(&mut q, "steady", &format!("m{i}"), "").await);
    }
    let got = batches_until(&n, f, Duration::from_secs(400), |b| {
        let ids: HashSet<String> = b
            .iter()
            .flatten()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        sent.iter().all(|id| ids.contains(id))
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while queue_total(&mut q, "steady").await > 0 {
        assert!(Instant::now() < deadline, "the queue did not drain");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let records = got.iter().flatten().count();
    eprintln!(
        "kill -9 of flintd and a restart of Redis: {} messages, all processed; {} deliveries (the rest were in flight at the kill)",
        sent.len(),
        records
    );
    drop(flintd);
}
