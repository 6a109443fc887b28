//! Stream mappings on real microVMs and a real Redis that the test starts:
//! order per partition key with a parallelization factor, a bad record
//! bisected out and given up on after its retries with its metadata on the
//! on-failure queue, TRIM_HORIZON and LATEST, tumbling windows with their
//! state, flintctl's stream commands, and `kill -9` of flintd in the middle
//! of a run with every record processed after the restart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use flint_e2e::*;
use flint_proto::node::v1 as pb;
use flint_proto::node::v1::functions_client::FunctionsClient;
use serde_json::Value;
use tonic::transport::Channel;

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "000000000000";

const READER: &[u8] = b"import json, base64, time
def handler(event, context):
    if 'window' in event:
        total = (event.get('state') or {}).get('total', 0)
        for r in event['Records']:
            total += json.loads(base64.b64decode(r['kinesis']['data']))['n']
        print('WINDOW ' + json.dumps({'start': event['window']['start'],
            'final': event['isFinalInvokeForWindow'], 'total': total,
            'count': len(event['Records']), 'shard': event['shardId']}))
        return {'state': {'total': total}}
    seen = []
    for r in event['Records']:
        d = json.loads(base64.b64decode(r['kinesis']['data']))
        if d.get('bad'):
            raise Exception('a bad record')
        if d.get('slow'):
            time.sleep(0.1)
        seen.append({'pk': r['kinesis']['partitionKey'], 'n': d['n'],
                     'seq': r['kinesis']['sequenceNumber'],
                     'shard': r['eventID'].split(':')[0], 'source': r['eventSource'],
                     'arn': r['eventSourceARN']})
    print('STREAM ' + json.dumps(seen))
";

fn stream_arn(name: &str) -> String {
    format!("arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{name}")
}

fn queue_arn(name: &str) -> String {
    format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}")
}

/// Every JSON logged after `prefix` by `function`, in log order.
async fn logged(endpoint: &str, function: &str, prefix: &str) -> Vec<Value> {
    log_messages(endpoint, function)
        .await
        .iter()
        .filter_map(|m| m.trim().strip_prefix(prefix).map(String::from))
        .map(|json| serde_json::from_str(&json).unwrap())
        .collect()
}

/// The records a reader processed, flattened, in log order.
async fn processed(endpoint: &str, function: &str) -> Vec<Value> {
    logged(endpoint, function, "STREAM ")
        .await
        .into_iter()
        .flat_map(|b| b.as_array().cloned().unwrap_or_default())
        .collect()
}

async fn until<T>(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn create_reader(c: &mut FunctionsClient<Channel>, name: &str) {
    create_python(c, name, READER).await;
    // Warm, so that the first batch does not wait for a boot.
    c.invoke(pb::InvokeRequest {
        function_name: name.into(),
        payload: br#"{"Records": []}"#.to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
}

struct Streams {
    s: pb::streams_client::StreamsClient<Channel>,
}

impl Streams {
    async fn put(&mut self, stream: &str, pk: &str, data: &Value) -> String {
        self.s
            .put_record(pb::PutRecordRequest {
                stream_name: stream.into(),
                partition_key: pk.into(),
                data: data.to_string().into_bytes(),
            })
            .await
            .unwrap()
            .into_inner()
            .sequence_number
    }
}

/// Checks that each partition key's records came in the order written.
fn in_order_per_key(records: &[Value]) {
    let mut last: HashMap<String, i64> = HashMap::new();
    for r in records {
        let pk = r["pk"].as_str().unwrap().to_string();
        let n = r["n"].as_i64().unwrap();
        if let Some(prev) = last.get(&pk) {
            assert!(n > *prev, "{pk}: {n} after {prev}");
        }
        last.insert(pk, n);
    }
}

#[tokio::test]
async fn streams_feed_functions_in_order_with_bisect_retries_windows_and_restarts() {
    let dir = tempfile::Builder::new()
        .prefix("flint-streams-")
        .tempdir()
        .unwrap();
    let redis = Redis::start(dir.path());
    let flintd = spawn_flintd(dir.path(), &redis.url(), 0xa_0000);
    let ep = flintd.endpoint.clone();
    let channel = flint_daemon::client::channel(&ep).await.unwrap();
    let mut c = FunctionsClient::new(channel.clone());
    let mut q = pb::queues_client::QueuesClient::new(channel.clone());
    let mut st = Streams {
        s: pb::streams_client::StreamsClient::new(channel.clone()),
    };

    // flintctl makes and reads streams, as `aws kinesis` does.
    flintctl(
        &ep,
        &[
            "create-stream",
            "--stream-name",
            "clicks",
            "--shard-count",
            "2",
        ],
    )
    .unwrap();
    let d: Value = serde_json::from_str(
        &flintctl(&ep, &["describe-stream", "--stream-name", "clicks"]).unwrap(),
    )
    .unwrap();
    assert_eq!(
        d["StreamDescription"]["Shards"].as_array().unwrap().len(),
        2
    );
    assert!(flintctl(
        &ep,
        &[
            "create-stream",
            "--stream-name",
            "clicks",
            "--shard-count",
            "2"
        ]
    )
    .unwrap_err()
    .contains("ResourceInUseException"));
    assert!(flintctl(
        &ep,
        &[
            "put-record",
            "--stream-name",
            "probe",
            "--partition-key",
            "k",
            "--data",
            "x"
        ],
    )
    .unwrap_err()
    .contains("ResourceNotFoundException"));
    flintctl(
        &ep,
        &[
            "create-stream",
            "--stream-name",
            "probe",
            "--shard-count",
            "1",
        ],
    )
    .unwrap();
    let put: Value = serde_json::from_str(
        &flintctl(
            &ep,
            &[
                "put-record",
                "--stream-name",
                "probe",
                "--partition-key",
                "k",
                "--data",
                "hello",
            ],
        )
        .unwrap(),
    )
    .unwrap();
    let it: Value = serde_json::from_str(
        &flintctl(
            &ep,
            &[
                "get-shard-iterator",
                "--stream-name",
                "probe",
                "--shard-id",
                put["ShardId"].as_str().unwrap(),
                "--shard-iterator-type",
                "AT_SEQUENCE_NUMBER",
                "--starting-sequence-number",
                put["SequenceNumber"].as_str().unwrap(),
            ],
        )
        .unwrap(),
    )
    .unwrap();
    let got: Value = serde_json::from_str(
        &flintctl(
            &ep,
            &[
                "get-records",
                "--shard-iterator",
                it["ShardIterator"].as_str().unwrap(),
            ],
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(got["Records"][0]["Data"], "aGVsbG8=");
    assert_eq!(got["Records"][0]["SequenceNumber"], put["SequenceNumber"]);

    create_reader(&mut c, "reader").await;
    q.create_queue(pb::CreateQueueRequest {
        queue_name: "stream-failures".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    // 40 records over 5 keys; one of them is bad.
    let mut written: BTreeMap<i64, String> = BTreeMap::new();
    for n in 0..40i64 {
        let pk = format!("user-{}", n % 5);
        let data = if n == 13 {
            serde_json::json!({"n": n, "bad": true})
        } else {
            serde_json::json!({"n": n})
        };
        written.insert(n, st.put("clicks", &pk, &data).await);
    }
    // Typed errors first.
    let base = pb::CreateEventSourceMappingRequest {
        event_source_arn: stream_arn("clicks"),
        function_name: "reader".into(),
        starting_position: "TRIM_HORIZON".into(),
        ..Default::default()
    };
    for bad in [
        pb::CreateEventSourceMappingRequest {
            starting_position: String::new(),
            ..base.clone()
        },
        pb::CreateEventSourceMappingRequest {
            parallelization_factor: Some(11),
            ..base.clone()
        },
        pb::CreateEventSourceMappingRequest {
            maximum_retry_attempts: Some(10_001),
            ..base.clone()
        },
        pb::CreateEventSourceMappingRequest {
            maximum_record_age_in_seconds: Some(30),
            ..base.clone()
        },
        pb::CreateEventSourceMappingRequest {
            event_source_arn: stream_arn("no-such-stream"),
            ..base.clone()
        },
    ] {
        let e = c
            .create_event_source_mapping(bad.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(
                e.code(),
                tonic::Code::InvalidArgument | tonic::Code::NotFound
            ),
            "{bad:?}: {e:?}"
        );
    }
    let m = c
        .create_event_source_mapping(pb::CreateEventSourceMappingRequest {
            batch_size: Some(10),
            parallelization_factor: Some(2),
            bisect_batch_on_function_error: Some(true),
            maximum_retry_attempts: Some(1),
            destination_config: Some(pb::DestinationConfig {
                on_success: None,
                on_failure: Some(pb::OnFailure {
                    destination: queue_arn("stream-failures"),
                }),
            }),
            ..base.clone()
        })
        .await
        .unwrap()
        .into_inner();

    // Every good record is processed once, in order per key; the bad one
    // is bisected out, retried once, and its metadata goes to the queue.
    let records = until(Duration::from_secs(300), "39 records", async || {
        let r = processed(&ep, "reader").await;
        (r.len() >= 39).then_some(r)
    })
    .await;
    assert_eq!(records.len(), 39, "each good record once");
    let ns: HashSet<i64> = records.iter().map(|r| r["n"].as_i64().unwrap()).collect();
    assert!(!ns.contains(&13));
    assert_eq!(ns.len(), 39);
    in_order_per_key(&records);
    assert_eq!(records[0]["source"], "aws:kinesis");
    assert_eq!(records[0]["arn"], stream_arn("clicks"));
    let failure = until(
        Duration::from_secs(120),
        "the on-failure record",
        async || {
            q.receive_message(pb::ReceiveMessageRequest {
                queue_name: "stream-failures".into(),
                max_number_of_messages: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .messages
            .into_iter()
            .next()
        },
    )
    .await;
    let f: Value = serde_json::from_str(&failure.body).unwrap();
    assert_eq!(f["requestContext"]["condition"], "RetryAttemptsExhausted");
    assert_eq!(f["KinesisBatchInfo"]["batchSize"], 1, "{f}");
    assert_eq!(f["KinesisBatchInfo"]["startSequenceNumber"], written[&13]);
    assert_eq!(f["KinesisBatchInfo"]["streamArn"], stream_arn("clicks"));
    let status = c
        .get_event_source_mapping(pb::EventSourceMappingRequest {
            uuid: m.uuid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.state, "Enabled");
    assert_eq!(status.status.as_ref().unwrap().lag, Some(0));

    // LATEST: a mapping made now sees only what is written after it.
    create_reader(&mut c, "late-reader").await;
    c.create_event_source_mapping(pb::CreateEventSourceMappingRequest {
        function_name: "late-reader".into(),
        starting_position: "LATEST".into(),
        ..base.clone()
    })
    .await
    .unwrap();
    // The mapping fixes its position when its poller first starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for n in 100..105i64 {
        st.put(
            "clicks",
            &format!("user-{}", n % 5),
            &serde_json::json!({"n": n}),
        )
        .await;
    }
    let late = until(Duration::from_secs(180), "the late reader", async || {
        let r = processed(&ep, "late-reader").await;
        (r.len() >= 5).then_some(r)
    })
    .await;
    let late_ns: HashSet<i64> = late.iter().map(|r| r["n"].as_i64().unwrap()).collect();
    assert_eq!(late_ns, (100..105).collect::<HashSet<_>>());

    // Tumbling windows of 2 s: the state runs through a window and its
    // final invocation has the window's total.
    st.s.create_stream(pb::CreateStreamRequest {
        stream_name: "metrics".into(),
        shard_count: 1,
        retention_period_hours: None,
    })
    .await
    .unwrap();
    c.create_event_source_mapping(pb::CreateEventSourceMappingRequest {
        event_source_arn: stream_arn("metrics"),
        function_name: "reader".into(),
        starting_position: "TRIM_HORIZON".into(),
        batch_size: Some(2),
        tumbling_window_in_seconds: Some(2),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut sum_written = 0;
    let mut seventh_at = 0;
    for n in 1..=12i64 {
        if n == 7 {
            seventh_at = flint_daemon::time::now_ms();
        }
        st.put("metrics", "m", &serde_json::json!({"n": n})).await;
        sum_written += n;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // AT_TIMESTAMP: from the seventh record on; and a filter on the
    // record's data lets through only n < 11.
    c.create_event_source_mapping(pb::CreateEventSourceMappingRequest {
        event_source_arn: stream_arn("metrics"),
        function_name: "late-reader".into(),
        starting_position: "AT_TIMESTAMP".into(),
        starting_position_timestamp: Some(seventh_at as f64 / 1000.0),
        filter_criteria: Some(pb::FilterCriteria {
            patterns: vec![r#"{"data": {"n": [{"numeric": ["<", 11]}]}}"#.into()],
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let windows = until(
        Duration::from_secs(180),
        "the windows to close",
        async || {
            let w = logged(&ep, "reader", "WINDOW ").await;
            let finals: i64 = w
                .iter()
                .filter(|x| x["final"] == true)
                .map(|x| x["total"].as_i64().unwrap())
                .sum();
            (finals == sum_written).then_some(w)
        },
    )
    .await;
    let from_seventh = until(Duration::from_secs(120), "AT_TIMESTAMP", async || {
        let r: Vec<i64> = processed(&ep, "late-reader")
            .await
            .iter()
            .filter(|x| x["pk"] == "m")
            .map(|x| x["n"].as_i64().unwrap())
            .collect();
        (r.len() >= 4).then_some(r)
    })
    .await;
    assert_eq!(from_seventh, (7..=10).collect::<Vec<_>>());
    let finals: Vec<&Value> = windows.iter().filter(|x| x["final"] == true).collect();
    assert!(
        finals.len() >= 2,
        "12 records over ~4 s span windows: {windows:?}"
    );
    let starts: HashSet<&str> = finals
        .iter()
        .map(|x| x["start"].as_str().unwrap())
        .collect();
    assert_eq!(
        starts.len(),
        finals.len(),
        "one final invocation per window"
    );
    // Within a window, the state grows invocation by invocation.
    let mut by_window: HashMap<&str, Vec<i64>> = HashMap::new();
    for w in &windows {
        by_window
            .entry(w["start"].as_str().unwrap())
            .or_default()
            .push(w["total"].as_i64().unwrap());
    }
    for (start, totals) in &by_window {
        assert!(
            totals.windows(2).all(|p| p[0] <= p[1]),
            "{start}: {totals:?}"
        );
    }

    // kill -9 in the middle of a run: after the restart every record is
    // processed (those after the last checkpoint run again).
    let before = processed(&ep, "reader").await.len();
    // Slow records (0.1 s each), so that the kill lands mid-run.
    for n in 200..260i64 {
        st.put(
            "clicks",
            &format!("user-{}", n % 5),
            &serde_json::json!({"n": n, "slow": true}),
        )
        .await;
    }
    until(Duration::from_secs(120), "the run to start", async || {
        (processed(&ep, "reader").await.len() > before).then_some(())
    })
    .await;
    let mut flintd = flintd;
    flintd.child.kill().unwrap();
    flintd.child.wait().unwrap();
    drop(flintd);
    let flintd = spawn_flintd(dir.path(), &redis.url(), 0xa_0000);
    let ep = flintd.endpoint.clone();
    let at_kill = processed(&ep, "reader").await.len() - before;
    assert!(at_kill < 60, "the kill came after the run ({at_kill} done)");
    let after = until(
        Duration::from_secs(300),
        "every record after the restart",
        async || {
            let r = processed(&ep, "reader").await;
            let ns: HashSet<i64> = r.iter().map(|x| x["n"].as_i64().unwrap()).collect();
            (200..260).all(|n| ns.contains(&n)).then_some(r)
        },
    )
    .await;
    let repeats = after.len() - before - 60;
    // Redis goes away and comes back: records written before and after
    // are all processed, none lost (its append-only file keeps them).
    let mut redis = redis;
    redis.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restart();
    let mut st = Streams {
        s: pb::streams_client::StreamsClient::new(
            flint_daemon::client::channel(&ep).await.unwrap(),
        ),
    };
    for n in 300..310i64 {
        st.put(
            "clicks",
            &format!("user-{}", n % 5),
            &serde_json::json!({"n": n}),
        )
        .await;
    }
    until(
        Duration::from_secs(180),
        "the records after Redis's restart",
        async || {
            let ns: HashSet<i64> = processed(&ep, "reader")
                .await
                .iter()
                .map(|x| x["n"].as_i64().unwrap())
                .collect();
            (300..310).all(|n| ns.contains(&n)).then_some(())
        },
    )
    .await;
    eprintln!(
        "kill -9 during a stream run: 60 records, {at_kill} done at the kill, all processed after the restart; {repeats} processed again"
    );
    drop(flintd);
}
