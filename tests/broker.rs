//! The broker's SQS-shaped queues on a real Redis that the test starts:
//! visibility, receive counts, stale receipts, delay, redrive to a
//! dead-letter queue, FIFO order and group locks, deduplication, and a
//! restart of Redis in the middle; hostile names, bodies, receipts and
//! stream records. No VM is involved.

use std::collections::BTreeMap;
use std::time::Duration;

use flint_daemon::broker::{Broker, BrokerError, QueueSettings, RedrivePolicy, SendOptions};
use flint_e2e::Redis;

const ARN: &str = "arn:aws:sqs:us-east-1:000000000000:";

fn setup() -> (tempfile::TempDir, Redis, Broker) {
    let dir = tempfile::Builder::new()
        .prefix("flint-broker-")
        .tempdir()
        .unwrap();
    let redis = Redis::start(dir.path());
    let broker = Broker::new(&redis.url()).unwrap();
    (dir, redis, broker)
}

async fn send(b: &Broker, q: &str, body: &str) -> String {
    b.send_message(q, body, &BTreeMap::new(), &SendOptions::default())
        .await
        .unwrap()
}

async fn send_fifo(b: &Broker, q: &str, body: &str, group: &str) -> String {
    b.send_message(
        q,
        body,
        &BTreeMap::new(),
        &SendOptions {
            group_id: Some(group.into()),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_message_not_deleted_comes_back_after_its_visibility_timeout() {
    let (_d, _r, b) = setup();
    b.create_queue(
        "work",
        &QueueSettings {
            visibility_timeout_s: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let id = send(&b, "work", "job").await;
    let first = b.receive_message("work", 10, None).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].message_id, id);
    assert_eq!(first[0].receive_count, 1);
    // Hidden while in flight.
    assert!(b
        .receive_message("work", 10, None)
        .await
        .unwrap()
        .is_empty());
    let info = b.queue_info("work").await.unwrap();
    assert_eq!((info.visible, info.not_visible), (0, 1));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let again = b.receive_message("work", 10, None).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].receive_count, 2);
    assert_eq!(again[0].first_receive_ms, first[0].first_receive_ms);
    // The first receipt is stale now; the second deletes.
    assert!(matches!(
        b.delete_message("work", &first[0].receipt_handle).await,
        Err(BrokerError::ReceiptHandleIsInvalid(_))
    ));
    b.delete_message("work", &again[0].receipt_handle)
        .await
        .unwrap();
    // Deleting again is not an error (SQS's).
    b.delete_message("work", &again[0].receipt_handle)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(b
        .receive_message("work", 10, None)
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        b.receive_message("nope", 1, None).await,
        Err(BrokerError::NoSuchQueue(_))
    ));
}

#[tokio::test]
async fn delay_hides_a_new_message() {
    let (_d, _r, b) = setup();
    b.create_queue(
        "later",
        &QueueSettings {
            delay_s: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    send(&b, "later", "queue-delay").await;
    b.send_message(
        "later",
        "no-delay",
        &BTreeMap::new(),
        &SendOptions {
            delay_s: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let now = b.receive_message("later", 10, None).await.unwrap();
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].body, "no-delay");
    assert_eq!(b.queue_info("later").await.unwrap().delayed, 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let later = b.receive_message("later", 10, None).await.unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].body, "queue-delay");
    // Out of range is a typed error.
    assert!(matches!(
        b.send_message(
            "later",
            "x",
            &BTreeMap::new(),
            &SendOptions {
                delay_s: Some(901),
                ..Default::default()
            }
        )
        .await,
        Err(BrokerError::Invalid { .. })
    ));
}

#[tokio::test]
async fn a_message_received_too_often_moves_to_the_dead_letter_queue() {
    let (_d, _r, b) = setup();
    b.create_queue("dlq", &QueueSettings::default())
        .await
        .unwrap();
    b.create_queue(
        "src",
        &QueueSettings {
            visibility_timeout_s: Some(0),
            redrive_policy: Some(Some(RedrivePolicy {
                dead_letter_target_arn: format!("{ARN}dlq"),
                max_receive_count: 2,
            })),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let id = send(&b, "src", "poison").await;
    for n in 1..=2 {
        let got = b.receive_message("src", 1, None).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].receive_count, n);
    }
    // The third receive moves it instead of handing it out.
    assert!(b.receive_message("src", 1, None).await.unwrap().is_empty());
    let dead = b.receive_message("dlq", 1, None).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, id);
    assert_eq!(dead[0].body, "poison");
    assert_eq!(dead[0].receive_count, 1);
    let info = b.queue_info("src").await.unwrap();
    assert_eq!(info.redrive, Some(("dlq".into(), 2)));
    // A FIFO queue cannot redrive into a standard one.
    b.create_queue("f.fifo", &QueueSettings::default())
        .await
        .unwrap();
    assert!(matches!(
        b.create_queue(
            "f.fifo",
            &QueueSettings {
                redrive_policy: Some(Some(RedrivePolicy {
                    dead_letter_target_arn: format!("{ARN}dlq"),
                    max_receive_count: 2,
                })),
                ..Default::default()
            }
        )
        .await,
        Err(BrokerError::Invalid { .. })
    ));
}

#[tokio::test]
async fn fifo_keeps_order_and_one_batch_in_flight_per_group() {
    let (_d, _r, b) = setup();
    b.create_queue(
        "orders.fifo",
        &QueueSettings {
            visibility_timeout_s: Some(1),
            content_based_deduplication: Some(true),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for i in 0..4 {
        send_fifo(&b, "orders.fifo", &format!("a{i}"), "A").await;
        send_fifo(&b, "orders.fifo", &format!("b{i}"), "B").await;
    }
    // A duplicate within five minutes is the first message again.
    let first_a = b.receive_message("orders.fifo", 2, None).await.unwrap();
    let bodies: Vec<&str> = first_a.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["a0", "a1"], "one group's messages, in order");
    assert_eq!(first_a[0].group_id.as_deref(), Some("A"));
    // Group A is locked while its batch is in flight: B comes next.
    let next = b.receive_message("orders.fifo", 10, None).await.unwrap();
    let bodies: Vec<&str> = next.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["b0", "b1", "b2", "b3"]);
    assert!(b
        .receive_message("orders.fifo", 10, None)
        .await
        .unwrap()
        .is_empty());
    // Deleting A's batch unlocks A, in order.
    for m in &first_a {
        b.delete_message("orders.fifo", &m.receipt_handle)
            .await
            .unwrap();
    }
    let rest = b.receive_message("orders.fifo", 10, None).await.unwrap();
    let bodies: Vec<&str> = rest.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["a2", "a3"]);
    // B's batch was not deleted: after its visibility timeout it comes
    // back whole and in order.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let again = b.receive_message("orders.fifo", 10, None).await.unwrap();
    let mut bodies: Vec<&str> = again.iter().map(|m| m.body.as_str()).collect();
    bodies.sort();
    assert_eq!(bodies, ["a2", "a3", "b0", "b1", "b2", "b3"]);
    let b_order: Vec<&str> = again
        .iter()
        .filter(|m| m.group_id.as_deref() == Some("B"))
        .map(|m| m.body.as_str())
        .collect();
    assert_eq!(b_order, ["b0", "b1", "b2", "b3"]);
}

#[tokio::test]
async fn fifo_deduplicates_and_checks_its_ids() {
    let (_d, _r, b) = setup();
    b.create_queue("d.fifo", &QueueSettings::default())
        .await
        .unwrap();
    let opts = |d: &str| SendOptions {
        group_id: Some("g".into()),
        deduplication_id: Some(d.into()),
        ..Default::default()
    };
    let one = b
        .send_message("d.fifo", "x", &BTreeMap::new(), &opts("k1"))
        .await
        .unwrap();
    let dup = b
        .send_message("d.fifo", "y", &BTreeMap::new(), &opts("k1"))
        .await
        .unwrap();
    assert_eq!(one, dup);
    let got = b.receive_message("d.fifo", 10, None).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "x");
    // No group; no deduplication id without content-based deduplication;
    // a group on a standard queue.
    for (q, o) in [
        ("d.fifo", SendOptions::default()),
        (
            "d.fifo",
            SendOptions {
                group_id: Some("g".into()),
                ..Default::default()
            },
        ),
    ] {
        assert!(matches!(
            b.send_message(q, "z", &BTreeMap::new(), &o).await,
            Err(BrokerError::Invalid { .. })
        ));
    }
    b.create_queue("std", &QueueSettings::default())
        .await
        .unwrap();
    assert!(matches!(
        b.send_message("std", "z", &BTreeMap::new(), &opts("k"))
            .await,
        Err(BrokerError::Invalid { .. })
    ));
    // Names and FifoQueue must agree.
    assert!(b
        .create_queue(
            "plain",
            &QueueSettings {
                fifo: Some(true),
                ..Default::default()
            }
        )
        .await
        .is_err());
}

#[tokio::test]
async fn messages_survive_a_restart_of_redis() {
    let (_d, mut r, b) = setup();
    b.create_queue("keep", &QueueSettings::default())
        .await
        .unwrap();
    for i in 0..20 {
        send(&b, "keep", &format!("m{i}")).await;
    }
    let held = b.receive_message("keep", 5, None).await.unwrap();
    r.stop();
    assert!(matches!(
        b.receive_message("keep", 1, None).await,
        Err(BrokerError::Unreachable { .. })
    ));
    r.restart();
    let info = b.queue_info("keep").await.unwrap();
    assert_eq!((info.visible, info.not_visible), (15, 5));
    for m in held {
        b.delete_message("keep", &m.receipt_handle).await.unwrap();
    }
    let mut n = 0;
    loop {
        let got = b.receive_message("keep", 10, None).await.unwrap();
        if got.is_empty() {
            break;
        }
        for m in got {
            b.delete_message("keep", &m.receipt_handle).await.unwrap();
            n += 1;
        }
    }
    assert_eq!(n, 15);
    b.purge_queue("keep").await.unwrap();
    b.delete_queue("keep").await.unwrap();
    assert!(!b.list_queues("").await.unwrap().contains(&"keep".into()));
}

#[tokio::test]
async fn hostile_input_gets_typed_errors_and_leaves_nothing() {
    let (_d, _r, b) = setup();
    b.create_queue("q", &QueueSettings::default())
        .await
        .unwrap();
    // A body over SQS's 256 KiB, an empty one, a forged receipt.
    let big = "x".repeat(256 * 1024 + 1);
    for body in [big.as_str(), ""] {
        assert!(matches!(
            b.send_message("q", body, &BTreeMap::new(), &SendOptions::default())
                .await,
            Err(BrokerError::Invalid { .. })
        ));
    }
    for forged in ["nope", "x#y", "#1"] {
        assert!(matches!(
            b.delete_message("q", forged).await,
            Err(BrokerError::ReceiptHandleIsInvalid(_))
        ));
    }
    assert_eq!(b.queue_info("q").await.unwrap().visible, 0);
    // Names that would reach other keys.
    for name in ["q:msgs", "../q", "q*"] {
        assert!(b
            .create_queue(name, &QueueSettings::default())
            .await
            .is_err());
    }
    // Streams: a record over 1 MB, an empty or long partition key, a shard
    // that is not the stream's, a sequence number that is not one.
    b.create_stream("s", 2, None).await.unwrap();
    let huge = vec![0u8; 1024 * 1024 + 1];
    assert!(b.put_record("s", "k", &huge).await.is_err());
    assert!(b.put_record("s", "", b"x").await.is_err());
    assert!(b.put_record("s", &"k".repeat(257), b"x").await.is_err());
    assert!(b.create_stream("s", 1, None).await.is_err());
    assert!(b.create_stream("t", 65, None).await.is_err());
    assert!(b
        .get_records("s", "shardId-000000000002", None, 10)
        .await
        .is_err());
    assert!(b
        .get_records("s", "shardId-000000000000", Some("12abc"), 10)
        .await
        .is_err());
    // Binary data comes back as it went in, in order per shard.
    let (shard, first) = b.put_record("s", "k", &[0, 255, 10, 13]).await.unwrap();
    let (_, second) = b.put_record("s", "k", b"two").await.unwrap();
    assert!(second > first);
    let got = b.get_records("s", &shard, None, 10).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].data, vec![0, 255, 10, 13]);
    let after = b.get_records("s", &shard, Some(&first), 10).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].data, b"two");
}
