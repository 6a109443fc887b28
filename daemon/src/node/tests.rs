//! The node on the fake engine: the provisioning loop and the autoscaling
//! controller driving real pools, launchers and guest links, without QEMU.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::pool::ProvisionedCount;
use crate::testing::{Counters, FakeEngine, Script};

fn node() -> (Node, Arc<Counters>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (engine, counters) = FakeEngine::new(Script::Init(Duration::from_millis(5)));
    let config = Config {
        data_dir: dir.path().join("data"),
        artifacts_dir: dir.path().to_path_buf(),
        snapshots: false,
        autoscaling_period: Duration::from_millis(200),
        ..Config::default()
    };
    let node = Node::with_engine(config, Arc::new(engine)).unwrap();
    (node, counters, dir)
}

/// A published version of a function with no package (the fake engine
/// reads none).
fn publish(node: &Node, name: &str) -> Function {
    let f = Function {
        name: name.into(),
        code_sha256_hex: "ab".into(),
        ..Function::placeholder()
    };
    node.store.insert(&f).unwrap();
    node.store.publish_version(name, "").unwrap()
}

/// Runs the provisioning loop until `done` holds of the config's instances.
async fn reconcile_until(
    node: &Node,
    key: &str,
    what: &str,
    done: impl Fn(ProvisionedCount) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        node.reconcile_provisioned().await;
        let c = node.pool.provisioned_count(key);
        if done(c) {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}: {c:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_provisioning_loop_tops_a_config_up_replaces_a_stopped_instance_and_sheds_a_lowered_request(
) {
    let (node, c, _dir) = node();
    let v = publish(&node, "f");
    let key = format!("f:{}", v.version);
    node.put_provisioned_concurrency("f", &v.version, 2)
        .unwrap();
    reconcile_until(&node, &key, "two ready", |n| {
        n.ready == 2 && n.starting == 0
    })
    .await;
    assert_eq!(c.running.load(Ordering::SeqCst), 2);
    let listed = node.instances("f");
    assert!(listed.iter().all(|i| i.provisioned), "{listed:?}");
    let view = node.get_provisioned_concurrency("f", &v.version).unwrap();
    assert_eq!((view.allocated, view.status), (2, ProvisionedStatus::Ready));

    // One goes (an operator stops it): the loop starts another.
    assert!(node.pool.stop_instance(&listed[0].id).await);
    reconcile_until(&node, &key, "topped up", |n| {
        n.ready == 2 && n.starting == 0
    })
    .await;
    assert_eq!(c.booted.load(Ordering::SeqCst), 3);

    // A lowered request stops the surplus; a deleted config, the rest.
    node.put_provisioned_concurrency("f", &v.version, 1)
        .unwrap();
    reconcile_until(&node, &key, "shed", |n| n.ready == 1).await;
    assert_eq!(c.running.load(Ordering::SeqCst), 1);
    node.delete_provisioned_concurrency("f", &v.version)
        .await
        .unwrap();
    assert_eq!(c.running.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_controller_raises_a_busy_config_and_lowers_an_idle_one_within_its_range() {
    let (node, _c, _dir) = node();
    let v = publish(&node, "g");
    node.create_alias(AliasSpec {
        function: "g".into(),
        name: "live".into(),
        version: Some(v.version.clone()),
        description: None,
        routing: None,
    })
    .unwrap();
    let resource = "function:g:live";
    node.register_scalable_target("", resource, "", 1, 3)
        .unwrap();
    node.put_scaling_policy("", resource, "", "p", "", "", 0.5, (0, 0), false)
        .unwrap();
    let key = "g:live";
    reconcile_until(&node, key, "one ready", |n| n.ready == 1).await;

    // Every provisioned instance busy (leased) while the controller ticks.
    let f = node.store.get_qualified("g", &v.version).unwrap();
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.pool.provisioned_count(key).ready < 3 || held.len() < 3 {
        while let Some(lease) = node.pool.checkout(&f).await {
            held.push(lease);
        }
        node.autoscale();
        node.reconcile_provisioned().await;
        assert!(
            Instant::now() < deadline,
            "never out to 3: {:?}",
            node.pool.provisioned_count(key)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let requested = |node: &Node| {
        node.get_provisioned_concurrency("g", "live")
            .unwrap()
            .config
            .requested
    };
    assert_eq!(requested(&node), 3, "the maximum, not beyond");
    // The view keeps the last datapoint after a step clears the window.
    let view = &node.scaling_views("g")[0];
    assert!(view.utilization.is_some_and(|u| u > 0.5), "{view:?}");

    // Idle: back to the minimum.
    for lease in held {
        node.pool.release(lease);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while requested(&node) > 1 {
        node.autoscale();
        assert!(Instant::now() < deadline, "never in to 1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acts = node.describe_scaling_activities(resource);
    assert!(acts[0].description.contains("to 1."), "{acts:?}");
    assert!(acts.iter().all(|a| a.status == "Successful"), "{acts:?}");
}
