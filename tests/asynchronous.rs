//! Asynchronous invocation on real microVMs: events answered 202 and run by
//! the dispatcher, retries after function errors, records to a function and
//! to an event bus, events that wait for a reservation, events that grow
//! too old, queues and dead-letter queues on a real broker (Redis) that
//! goes away and comes back, a full disk, and acknowledged events that
//! survive `kill -9` of flintd.
//! Lambda's delays are scaled down by the test-only
//! `testing.async_time_scale` (a minute is 60 ms at 0.001; 600 ms for the
//! spawned flintd of the crash test, whose events must outlive cold starts).
//!
//! Why one file of 850 lines: the tests share one node helper, one worker
//! function and the readers of records and queues; each test is a story
//! that reads top to bottom.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use flint_daemon::config::Config;
use flint_e2e::*;
use flint_proto::node::v1 as pb;
use flint_proto::node::v1::functions_client::FunctionsClient;
use tonic::transport::Channel;

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "000000000000";

/// Fails when asked, sleeps when asked, and answers with its request id.
const WORKER: &[u8] = b"import time
def handler(event, context):
    if isinstance(event, dict):
        if event.get('fail'):
            raise Exception('asked to fail')
        time.sleep(event.get('sleep', 0))
    return {'got': event, 'request_id': context.aws_request_id}
";

fn bus(name: &str) -> String {
    format!("arn:aws:events:{REGION}:{ACCOUNT}:event-bus/{name}")
}

async fn create_worker(c: &mut FunctionsClient<Channel>, name: &str) {
    create_python(c, name, WORKER).await;
}

async fn send(
    c: &mut FunctionsClient<Channel>,
    name: &str,
    payload: &str,
) -> Result<pb::InvokeResponse, tonic::Status> {
    c.invoke(pb::InvokeRequest {
        function_name: name.into(),
        invocation_type: pb::InvocationType::Event as i32,
        payload: payload.as_bytes().to_vec(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

async fn put_config(
    c: &mut FunctionsClient<Channel>,
    name: &str,
    retries: Option<u32>,
    age: Option<u32>,
    on_success: Option<String>,
    on_failure: Option<String>,
) {
    c.put_function_event_invoke_config(pb::PutFunctionEventInvokeConfigRequest {
        function_name: name.into(),
        maximum_retry_attempts: retries,
        maximum_event_age_in_seconds: age,
        destination_config: Some(pb::DestinationConfig {
            on_success: on_success.map(|destination| pb::OnSuccess { destination }),
            on_failure: on_failure.map(|destination| pb::OnFailure { destination }),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Reads the records on `bus` until `done` holds of them (or panics after
/// `limit`).
async fn records_until(
    c: &mut FunctionsClient<Channel>,
    bus: &str,
    limit: Duration,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + limit;
    loop {
        let mut stream = c
            .subscribe_invocation_records(pb::SubscribeInvocationRecordsRequest {
                event_bus: bus.into(),
                after: 0,
                follow: false,
            })
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        while let Some(r) = stream.message().await.unwrap() {
            got.push(serde_json::from_str(&r.record).unwrap());
        }
        if done(&got) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "records on {bus}: {}",
            serde_json::Value::from(got)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A node of one of these tests, with its clients.
struct Clients {
    _node: TestNode,
    ep: String,
    c: FunctionsClient<Channel>,
    q: pb::queues_client::QueuesClient<Channel>,
    n: pb::node_client::NodeClient<Channel>,
}

/// A node with this file's region and account, Lambda's async delays
/// shrunk 1000 times, and VMM uids of its own (`uid_offset` above the
/// default base).
async fn test_node(uid_offset: u32, configure: impl FnOnce(&mut Config)) -> Clients {
    use flint_daemon::engine::jail::JailSettings;
    let node = start_node(|c| {
        c.region = REGION.into();
        c.account_id = ACCOUNT.into();
        c.events.time_scale = 0.001;
        c.vmm = JailSettings {
            uid_base: JailSettings::default().uid_base + uid_offset,
            uid_count: 1024,
            ..JailSettings::default()
        };
        configure(c);
    });
    let ep = node.endpoint.clone();
    let channel = flint_daemon::client::channel(&ep).await.unwrap();
    Clients {
        _node: node,
        ep,
        c: FunctionsClient::new(channel.clone()),
        q: pb::queues_client::QueuesClient::new(channel.clone()),
        n: pb::node_client::NodeClient::new(channel),
    }
}

async fn queue(n: &mut pb::node_client::NodeClient<Channel>, name: &str) -> pb::EventQueue {
    n.get_event_queues(pb::GetEventQueuesRequest {})
        .await
        .unwrap()
        .into_inner()
        .queues
        .into_iter()
        .find(|q| q.function_name == name)
        .unwrap_or_default()
}

#[tokio::test]
async fn events_run_on_real_vms_with_retries_destinations_reservations_and_age() {
    let Clients {
        _node,
        ep,
        mut c,
        mut n,
        ..
    } = test_node(0x4_0000, |_| {}).await;
    let (worker, sink) = ("async-worker", "async-sink");
    create_worker(&mut c, worker).await;
    create_worker(&mut c, sink).await;

    // flintctl: the configuration (a failure goes to the sink function) and
    // an event, answered 202.
    let failure = format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:{sink}");
    let dest = format!(
        r#"{{"OnSuccess":{{"Destination":"{}"}},"OnFailure":{{"Destination":"{failure}"}}}}"#,
        bus("ok")
    );
    let put = flintctl(
        &ep,
        &[
            "put-function-event-invoke-config",
            "--function-name",
            worker,
            "--maximum-retry-attempts",
            "1",
            "--destination-config",
            &dest,
        ],
    )
    .unwrap();
    let put: serde_json::Value = serde_json::from_str(&put).unwrap();
    assert_eq!(put["MaximumRetryAttempts"], 1);
    assert_eq!(
        put["DestinationConfig"]["OnFailure"]["Destination"],
        failure.as_str()
    );
    put_config(&mut c, sink, None, None, Some(bus("sink")), None).await;
    let out = flintctl(
        &ep,
        &[
            "invoke",
            "--function-name",
            worker,
            "--invocation-type",
            "Event",
            "--payload",
            r#"{"n": 1}"#,
            "/dev/null",
        ],
    )
    .unwrap();
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["StatusCode"], 202, "{out}");

    // A failing event: run twice (the retry 1 "minute" later), then its
    // record reaches the sink as the sink's event.
    let failing = send(&mut c, worker, r#"{"fail": true}"#).await.unwrap();
    assert_eq!(failing.status_code, 202);
    let ok = records_until(&mut c, "ok", Duration::from_secs(240), |r| !r.is_empty()).await;
    assert_eq!(ok[0]["requestContext"]["condition"], "Success");
    assert_eq!(ok[0]["requestPayload"]["n"], 1);
    // The function saw the event's own request id.
    assert_eq!(
        ok[0]["responsePayload"]["request_id"],
        ok[0]["requestContext"]["requestId"]
    );
    let sunk = records_until(&mut c, "sink", Duration::from_secs(240), |r| !r.is_empty()).await;
    let first = &sunk[0]["requestPayload"];
    assert_eq!(
        first["requestContext"]["requestId"],
        failing.request_id.as_str()
    );
    assert_eq!(first["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(first["requestContext"]["approximateInvokeCount"], 2);
    assert_eq!(first["responseContext"]["functionError"], "Handled");
    assert_eq!(first["responsePayload"]["errorMessage"], "asked to fail");
    assert_eq!(first["requestPayload"]["fail"], true);
    // Both runs of the failing event carry its request id in the log.
    let logs = flintctl(&ep, &["logs", "tail", worker, "--output", "json"]).unwrap();
    let starts = logs
        .lines()
        .filter(|l| l.contains(&format!("START RequestId: {}", failing.request_id)))
        .count();
    assert_eq!(starts, 2, "{logs}");

    // flintctl reads the same records.
    let lines = flintctl(&ep, &["subscribe-invocation-records", "--event-bus", "ok"]).unwrap();
    let line: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(line["Record"]["requestContext"]["condition"], "Success");

    // Reserved at 2: six events of a second each run two at a time; none is
    // dropped while it waits.
    let reserved = "async-reserved";
    create_worker(&mut c, reserved).await;
    c.put_function_concurrency(pb::PutFunctionConcurrencyRequest {
        function_name: reserved.into(),
        reserved_concurrent_executions: 2,
    })
    .await
    .unwrap();
    put_config(&mut c, reserved, None, None, Some(bus("reserved")), None).await;
    for _ in 0..6 {
        send(&mut c, reserved, r#"{"sleep": 1}"#).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut most = 0;
    loop {
        let q = queue(&mut n, reserved).await;
        most = most.max(q.in_flight);
        if q.events_succeeded == 6 {
            assert_eq!(q.events_dropped, 0, "{q:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{q:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(most, 2, "two at a time");

    // Reserved at 0: the event is throttled until it is older than its
    // 60 "seconds" and goes to the failure destination as such.
    let shut = "async-shut";
    create_worker(&mut c, shut).await;
    c.put_function_concurrency(pb::PutFunctionConcurrencyRequest {
        function_name: shut.into(),
        reserved_concurrent_executions: 0,
    })
    .await
    .unwrap();
    put_config(&mut c, shut, Some(0), Some(60), None, Some(bus("late"))).await;
    let late = send(&mut c, shut, "{}").await.unwrap();
    let recs = records_until(&mut c, "late", Duration::from_secs(60), |r| !r.is_empty()).await;
    assert_eq!(
        recs[0]["requestContext"]["requestId"],
        late.request_id.as_str()
    );
    assert_eq!(recs[0]["requestContext"]["condition"], "EventAgeExceeded");
    assert_eq!(recs[0]["requestContext"]["approximateInvokeCount"], 0);
    let q = queue(&mut n, shut).await;
    assert_eq!(q.dropped[0].reason, "EventAgeExceeded");

    // What the queue view shows for the worker.
    let table = flintctl(&ep, &["event-queues"]).unwrap();
    assert!(
        table.contains("FUNCTION") && table.contains(worker),
        "{table}"
    );
    let q = queue(&mut n, worker).await;
    assert_eq!(
        (q.events_received, q.events_succeeded, q.events_dropped),
        (2, 1, 1)
    );

    // Bad calls: too large, unknown function, DryRun.
    let big = "x".repeat(1024 * 1024 + 1);
    let e = send(&mut c, worker, &big).await.unwrap_err();
    assert!(e.message().starts_with("RequestTooLargeException"), "{e}");
    let e = send(&mut c, "async-nope", "{}").await.unwrap_err();
    assert!(e.message().starts_with("ResourceNotFoundException"), "{e}");
    let dry = c
        .invoke(pb::InvokeRequest {
            function_name: worker.into(),
            invocation_type: pb::InvocationType::DryRun as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dry.status_code, 204);
}

#[tokio::test]
async fn acknowledged_events_survive_kill_9_and_each_completes() {
    let dir = tempfile::Builder::new()
        .prefix("flint-async-crash-")
        .tempdir()
        .unwrap();
    let redis = Redis::start(dir.path());
    let name = "async-crash";
    let mut acked: Vec<String> = Vec::new();
    let mut refused = 0;
    for round in 0..4 {
        let mut flintd = spawn_flintd(dir.path(), &redis.url(), 0x5_0000);
        let mut c = flint_daemon::client::functions(&flintd.endpoint)
            .await
            .unwrap();
        if round == 0 {
            create_worker(&mut c, name).await;
            // Records go to a queue on the broker: through the outbox, the
            // path with most steps after the event's own commit.
            let mut q = pb::queues_client::QueuesClient::new(
                flint_daemon::client::channel(&flintd.endpoint)
                    .await
                    .unwrap(),
            );
            q.create_queue(pb::CreateQueueRequest {
                queue_name: "crash-done".into(),
                visibility_timeout: Some(600),
                ..Default::default()
            })
            .await
            .unwrap();
            let done = format!("arn:aws:sqs:{REGION}:{ACCOUNT}:crash-done");
            put_config(&mut c, name, None, None, Some(done), None).await;
        }
        if round == 3 {
            // The last run drains what is left.
            break;
        }
        // Events are sent while the node runs them; flintd is killed at a
        // moment that depends on how far the runs got.
        let sender = {
            let mut c = c.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                let mut failed = 0;
                for i in 0.. {
                    // About 50 events a second: the drain after the last
                    // kill stays short on a slow machine.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    match send(&mut c, name, &format!(r#"{{"i": {i}}}"#)).await {
                        Ok(r) => {
                            assert_eq!(r.status_code, 202);
                            mine.push(r.request_id);
                        }
                        Err(_) => {
                            failed += 1;
                            if failed > 3 {
                                break;
                            }
                        }
                    }
                }
                (mine, failed)
            })
        };
        tokio::time::sleep(Duration::from_millis(1500 + 1000 * round as u64)).await;
        flintd.child.kill().unwrap();
        flintd.child.wait().unwrap();
        let (mine, failed) = sender.await.unwrap();
        assert!(!mine.is_empty(), "round {round}: no event was acknowledged");
        acked.extend(mine);
        refused += failed;
    }
    let flintd = spawn_flintd(dir.path(), &redis.url(), 0x5_0000);
    let mut q = pb::queues_client::QueuesClient::new(
        flint_daemon::client::channel(&flintd.endpoint)
            .await
            .unwrap(),
    );
    // Every acknowledged event's record reaches the queue.
    let mut records: Vec<serde_json::Value> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while !acked.iter().all(|id| seen.contains(id)) {
        if Instant::now() >= deadline {
            // What flintd said, and what the queue still holds, for the
            // diagnosis.
            let log = std::fs::read_to_string(dir.path().join("flintd.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            let queues = flintctl(&flintd.endpoint, &["event-queues", "--output", "json"])
                .unwrap_or_else(|e| e);
            panic!(
                "{} of {} acknowledged events reached their destination\nevent-queues: {queues}\nflintd's log, last lines first:\n{}",
                acked.iter().filter(|id| seen.contains(*id)).count(),
                acked.len(),
                tail.join("\n")
            );
        }
        let got = q
            .receive_message(pb::ReceiveMessageRequest {
                queue_name: "crash-done".into(),
                max_number_of_messages: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .messages;
        if got.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for m in got {
            let r: serde_json::Value = serde_json::from_str(&m.body).unwrap();
            seen.insert(
                r["requestContext"]["requestId"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
            records.push(r);
            q.delete_message(pb::DeleteMessageRequest {
                queue_name: "crash-done".into(),
                receipt_handle: m.receipt_handle,
            })
            .await
            .unwrap();
        }
    }
    let mut times: HashMap<String, usize> = HashMap::new();
    for r in &records {
        assert_eq!(r["requestContext"]["condition"], "Success");
        *times
            .entry(r["requestContext"]["requestId"].as_str().unwrap().into())
            .or_default() += 1;
    }
    let duplicates: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "kill -9 three times: {} events acknowledged, all completed; {} duplicates (in flight at a kill); {} calls cut off by a kill",
        acked.len(),
        duplicates.len(),
        refused
    );
    // Nothing the node never acknowledged is invented.
    assert!(records.len() >= acked.len());
    drop(flintd);
}

/// Receives one message from `queue` and deletes it, waiting up to `limit`.
async fn receive_until(
    q: &mut pb::queues_client::QueuesClient<Channel>,
    queue: &str,
    limit: Duration,
) -> pb::QueueMessage {
    let deadline = Instant::now() + limit;
    loop {
        let got = q
            .receive_message(pb::ReceiveMessageRequest {
                queue_name: queue.into(),
                max_number_of_messages: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .messages;
        if let Some(m) = got.into_iter().next() {
            // Consumed: deleted, or it would come back after its
            // visibility timeout.
            q.delete_message(pb::DeleteMessageRequest {
                queue_name: queue.into(),
                receipt_handle: m.receipt_handle.clone(),
            })
            .await
            .unwrap();
            return m;
        }
        assert!(Instant::now() < deadline, "no message on {queue}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn queue_destinations_and_the_dead_letter_queue_survive_a_broker_that_goes_away() {
    let dir = tempfile::Builder::new()
        .prefix("flint-redis-")
        .tempdir()
        .unwrap();
    let mut redis = Redis::start(dir.path());
    let url = redis.url();
    let Clients {
        _node,
        ep,
        mut c,
        mut q,
        mut n,
    } = test_node(0x6_0000, |c| c.broker_url = Some(url)).await;

    // Queues through flintctl, shaped like `aws sqs`.
    for name in ["failures", "dlq", "plain"] {
        flintctl(
            &ep,
            &[
                "create-queue",
                "--queue-name",
                name,
                "--attributes",
                "VisibilityTimeout=1",
            ],
        )
        .unwrap();
    }
    let listed = flintctl(&ep, &["list-queues"]).unwrap();
    assert!(
        listed.contains(&format!("arn:aws:sqs:{REGION}:{ACCOUNT}:dlq")),
        "{listed}"
    );
    flintctl(
        &ep,
        &[
            "send-message",
            "--queue-name",
            "plain",
            "--message-body",
            "hello",
        ],
    )
    .unwrap();
    let got: serde_json::Value = serde_json::from_str(
        &flintctl(&ep, &["receive-message", "--queue-name", "plain"]).unwrap(),
    )
    .unwrap();
    assert_eq!(got["Messages"][0]["Body"], "hello");
    assert_eq!(
        got["Messages"][0]["Attributes"]["ApproximateReceiveCount"],
        "1"
    );
    // Not deleted: it comes back after its visibility timeout (1 s).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let again = receive_until(&mut q, "plain", Duration::from_secs(10)).await;
    assert_eq!(
        (again.body.as_str(), again.approximate_receive_count),
        ("hello", 2)
    );
    flintctl(
        &ep,
        &[
            "delete-message",
            "--queue-name",
            "plain",
            "--receipt-handle",
            &again.receipt_handle,
        ],
    )
    .unwrap();
    flintctl(
        &ep,
        &[
            "send-message",
            "--queue-name",
            "plain",
            "--message-body",
            "x",
        ],
    )
    .unwrap();
    flintctl(&ep, &["purge-queue", "--queue-name", "plain"]).unwrap();
    let attrs: serde_json::Value = serde_json::from_str(
        &flintctl(&ep, &["get-queue-attributes", "--queue-name", "plain"]).unwrap(),
    )
    .unwrap();
    assert_eq!(
        attrs["Attributes"]["ApproximateNumberOfMessages"], "0",
        "{attrs}"
    );
    let missing = flintctl(&ep, &["receive-message", "--queue-name", "nope"]).unwrap_err();
    assert!(missing.contains("NonExistentQueue"), "{missing}");

    // A function whose failures go to a queue, with a dead-letter queue.
    let name = "async-dlq";
    let arn = |q: &str| format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{q}");
    c.create_function(pb::CreateFunctionRequest {
        function_name: name.into(),
        runtime: "python3.11".into(),
        handler: "app.handler".into(),
        zip_file: zip_files(&[("app.py", WORKER, 0o644)]),
        timeout: 30,
        dead_letter_config: Some(pb::DeadLetterConfig {
            target_arn: arn("dlq"),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let f = c
        .get_function(pb::GetFunctionRequest {
            function_name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        f.configuration
            .unwrap()
            .dead_letter_config
            .unwrap()
            .target_arn,
        arn("dlq")
    );
    // flintctl shows it, and changes it (and back).
    let shown = flintctl(&ep, &["get-function", "--function-name", name]).unwrap();
    assert!(shown.contains(&arn("dlq")), "{shown}");
    let other = format!("TargetArn={}", arn("plain"));
    let updated = flintctl(
        &ep,
        &[
            "update-function-configuration",
            "--function-name",
            name,
            "--dead-letter-config",
            &other,
        ],
    )
    .unwrap();
    assert!(updated.contains(&arn("plain")), "{updated}");
    let back = format!("TargetArn={}", arn("dlq"));
    flintctl(
        &ep,
        &[
            "update-function-configuration",
            "--function-name",
            name,
            "--dead-letter-config",
            &back,
        ],
    )
    .unwrap();
    let refused = flintctl(
        &ep,
        &[
            "update-function-configuration",
            "--function-name",
            name,
            "--dead-letter-config",
            "TargetArn=arn:aws:sns:us-east-1:000000000000:t",
        ],
    )
    .unwrap_err();
    assert!(
        refused.contains("InvalidParameterValueException"),
        "{refused}"
    );
    put_config(&mut c, name, Some(0), None, None, Some(arn("failures"))).await;
    let failed = send(&mut c, name, r#"{"fail": true, "k": "v"}"#)
        .await
        .unwrap();
    let record = receive_until(&mut q, "failures", Duration::from_secs(240)).await;
    let record: serde_json::Value = serde_json::from_str(&record.body).unwrap();
    assert_eq!(
        record["requestContext"]["requestId"],
        failed.request_id.as_str()
    );
    assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
    let dead = receive_until(&mut q, "dlq", Duration::from_secs(30)).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&dead.body).unwrap(),
        serde_json::json!({"fail": true, "k": "v"}),
        "the unchanged event"
    );
    assert_eq!(dead.message_attributes["RequestID"], failed.request_id);
    assert_eq!(dead.message_attributes["ErrorCode"], "200");
    assert_eq!(dead.message_attributes["ErrorMessage"], "asked to fail");

    // The broker goes away: what fails meanwhile waits, and arrives once
    // it is back.
    redis.stop();
    let waiting = send(&mut c, name, r#"{"fail": true}"#).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let queue = queue(&mut n, name).await;
        if queue.undelivered >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{queue:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let table = flintctl(&ep, &["event-queues"]).unwrap();
    assert!(table.contains("UNDELIVERED"), "{table}");
    redis.restart();
    let record = receive_until(&mut q, "failures", Duration::from_secs(120)).await;
    let record: serde_json::Value = serde_json::from_str(&record.body).unwrap();
    assert_eq!(
        record["requestContext"]["requestId"],
        waiting.request_id.as_str()
    );
    let dead = receive_until(&mut q, "dlq", Duration::from_secs(60)).await;
    assert_eq!(dead.message_attributes["RequestID"], waiting.request_id);
    assert_eq!(queue(&mut n, name).await.undelivered, 0);
}

#[tokio::test]
async fn a_full_disk_refuses_new_events_and_keeps_the_accepted_ones() {
    // The node's data on a small filesystem of its own, filled up below.
    let dir = tempfile::Builder::new()
        .prefix("flint-full-")
        .tempdir()
        .unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &small,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=24m"),
    )
    .expect("mount a tmpfs (the tests run as root)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(small.clone());
    let data = small.join("data");
    let Clients {
        _node,
        mut c,
        mut n,
        ..
    } = test_node(0x7_0000, |c| c.data_dir = data).await;
    let name = "async-full";
    create_worker(&mut c, name).await;
    // Reserved at 0: the accepted events stay queued (throttled).
    c.put_function_concurrency(pb::PutFunctionConcurrencyRequest {
        function_name: name.into(),
        reserved_concurrent_executions: 0,
    })
    .await
    .unwrap();
    let mut accepted = 0;
    for _ in 0..5 {
        send(&mut c, name, r#"{"k": "before"}"#).await.unwrap();
        accepted += 1;
    }

    // Fill the filesystem.
    let filler = small.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    // Events are accepted while the queue's file still has room, then
    // refused with a clear error; none of the accepted ones is lost.
    let mut refused = None;
    for i in 0..5000 {
        match send(
            &mut c,
            name,
            &format!(
                r#"{{"k": "full", "i": {i}, "pad": "{}"}}"#,
                "x".repeat(2000)
            ),
        )
        .await
        {
            Ok(r) => {
                assert_eq!(r.status_code, 202);
                accepted += 1;
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("a full disk refuses events");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(refused.message().contains("disk is full"), "{refused}");
    // The node keeps serving.
    c.get_function(pb::GetFunctionRequest {
        function_name: name.into(),
        ..Default::default()
    })
    .await
    .unwrap();

    std::fs::remove_file(&filler).unwrap();
    send(&mut c, name, r#"{"k": "after"}"#).await.unwrap();
    accepted += 1;
    let q = queue(&mut n, name).await;
    assert_eq!(q.waiting + q.in_flight, accepted, "{q:?}");
    assert_eq!(q.events_received, accepted);
    assert_eq!(q.events_dropped, 0);
}
