//! Provisioned concurrency that follows load: a scalable target and a
//! target tracking policy set with flintctl, a load that rises and falls,
//! and the provisioned concurrency that follows it out and back in.

use std::time::{Duration, Instant};

use flint_e2e::*;
use flint_proto::node::v1 as pb;

/// Sleeps as long as the event says.
const SLEEPER: &[u8] = b"import time
def handler(e, c):
    time.sleep(e.get('sleep', 0))
    return {'slept': e.get('sleep', 0)}
";

/// flintctl's JSON output (`Null` when it prints nothing).
fn flintctl(endpoint: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    let text = flint_e2e::flintctl(endpoint, args)?;
    Ok(if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    })
}

async fn provisioned(
    c: &mut pb::functions_client::FunctionsClient<tonic::transport::Channel>,
    name: &str,
) -> pb::ProvisionedConcurrencyConfig {
    c.get_provisioned_concurrency_config(pb::GetProvisionedConcurrencyConfigRequest {
        function_name: name.into(),
        qualifier: "live".into(),
    })
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test]
async fn provisioned_concurrency_follows_a_load_that_rises_and_falls() {
    use flint_daemon::engine::jail::JailSettings;
    // A datapoint every 0.3 s: out after 3 above target (about 1 s), in
    // after 15 below (about 4.5 s).
    let node = start_node(|c| {
        c.autoscaling_period = Duration::from_millis(300);
        c.vmm = JailSettings {
            uid_base: JailSettings::default().uid_base + 0x3_0000,
            uid_count: 1024,
            ..JailSettings::default()
        };
    });
    let ep = node.endpoint.clone();
    let channel = flint_daemon::client::channel(&ep).await.unwrap();
    let mut c = pb::functions_client::FunctionsClient::new(channel.clone());
    let name = unique("scaling");
    c.create_function(pb::CreateFunctionRequest {
        function_name: name.clone(),
        runtime: "python3.11".into(),
        handler: "app.handler".into(),
        zip_file: zip_files(&[("app.py", SLEEPER, 0o644)]),
        timeout: 30,
        ..Default::default()
    })
    .await
    .unwrap();
    let v = c
        .publish_version(pb::PublishVersionRequest {
            function_name: name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    c.create_alias(pb::CreateAliasRequest {
        function_name: name.clone(),
        name: "live".into(),
        function_version: v.version.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let resource = format!("function:{name}:live");

    // Doors: $LATEST, a bad range, a policy without a target, a bad value.
    for (args, want) in [
        (
            vec![
                "register-scalable-target",
                "--resource-id",
                &format!("function:{name}:$LATEST"),
                "--min-capacity",
                "1",
                "--max-capacity",
                "2",
            ],
            "ValidationException",
        ),
        (
            vec![
                "register-scalable-target",
                "--resource-id",
                &resource,
                "--min-capacity",
                "0",
                "--max-capacity",
                "2",
            ],
            "ValidationException",
        ),
        (
            vec![
                "put-scaling-policy",
                "--policy-name",
                "p",
                "--resource-id",
                &resource,
                "--target-tracking-scaling-policy-configuration",
                r#"{"TargetValue": 0.5}"#,
            ],
            "ObjectNotFoundException",
        ),
        (
            vec![
                "register-scalable-target",
                "--resource-id",
                &resource,
                "--service-namespace",
                "ecs",
                "--min-capacity",
                "1",
                "--max-capacity",
                "2",
            ],
            "ValidationException",
        ),
    ] {
        let e = flintctl(&ep, &args).expect_err("refused");
        assert!(e.contains(want), "{args:?}: {e}");
    }

    // The target creates the config at its minimum.
    let t = flintctl(
        &ep,
        &[
            "register-scalable-target",
            "--resource-id",
            &resource,
            "--min-capacity",
            "1",
            "--max-capacity",
            "3",
        ],
    )
    .unwrap();
    assert_eq!(t["MinCapacity"], 1);
    let e = flintctl(
        &ep,
        &[
            "put-scaling-policy",
            "--policy-name",
            "half",
            "--resource-id",
            &resource,
            "--target-tracking-scaling-policy-configuration",
            r#"{"TargetValue": 1.5}"#,
        ],
    )
    .expect_err("a utilization above 1");
    assert!(e.contains("ValidationException"), "{e}");
    let p = flintctl(
        &ep,
        &["put-scaling-policy", "--policy-name", "half", "--resource-id", &resource,
          "--target-tracking-scaling-policy-configuration",
          r#"{"TargetValue": 0.5, "PredefinedMetricSpecification": {"PredefinedMetricType": "LambdaProvisionedConcurrencyUtilization"}}"#],
    )
    .unwrap();
    assert!(
        p["PolicyARN"].as_str().unwrap().contains("policyName/half"),
        "{p}"
    );
    let listed = flintctl(
        &ep,
        &["describe-scaling-policies", "--resource-id", &resource],
    )
    .unwrap();
    assert_eq!(
        listed["ScalingPolicies"][0]["TargetTrackingScalingPolicyConfiguration"]["TargetValue"],
        0.5
    );
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let p = provisioned(&mut c, &name).await;
        if p.status == "READY" && p.allocated_provisioned_concurrent_executions == 1 {
            assert_eq!(p.scaling.as_ref().unwrap().min_capacity, 1);
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {p:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Rising: three invocations of 1.5 s in flight at all times, until
    // the provisioned concurrency reaches the maximum.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..3 {
        let (ep, name, stop) = (ep.clone(), name.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let channel = flint_daemon::client::channel(&ep).await.unwrap();
            let mut c = pb::functions_client::FunctionsClient::new(channel);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = c
                    .invoke(pb::InvokeRequest {
                        function_name: name.clone(),
                        qualifier: "live".into(),
                        payload: br#"{"sleep": 1.5}"#.to_vec(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert!(r.function_error.is_empty(), "{r:?}");
            }
        }));
    }
    let mut seen = vec![1];
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let p = provisioned(&mut c, &name).await;
        let n = p.requested_provisioned_concurrent_executions;
        assert!(n <= 3, "above the maximum: {p:?}");
        if seen.last() != Some(&n) {
            seen.push(n);
        }
        if n == 3 && p.allocated_provisioned_concurrent_executions == 3 {
            let s = p.scaling.unwrap();
            // The last datapoint: the load kept the instances busy.
            assert!(s.utilization > 0.3, "{s:?}");
            assert!(
                s.last_activity.contains("Setting desired concurrency to 3"),
                "{s:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never scaled out: {seen:?} {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(seen.windows(2).all(|w| w[1] > w[0]), "out only: {seen:?}");
    // Visible to an operator: `instances` lists the target.
    let inst = flintctl(
        &ep,
        &["--output", "json", "instances", "--function-name", &name],
    )
    .unwrap();
    assert_eq!(
        inst["AutoScaling"][0]["ResourceId"],
        resource.as_str(),
        "{inst}"
    );
    assert_eq!(inst["AutoScaling"][0]["Requested"], 3, "{inst}");

    // Falling: the load stops; back to the minimum, never below.
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = provisioned(&mut c, &name).await;
        let n = p.requested_provisioned_concurrent_executions;
        assert!(n >= 1, "below the minimum: {p:?}");
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "never scaled in: {p:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let acts = flintctl(
        &ep,
        &["describe-scaling-activities", "--resource-id", &resource],
    )
    .unwrap();
    let acts = acts["ScalingActivities"].as_array().unwrap().clone();
    assert!(
        acts.iter().all(|a| a["StatusCode"] == "Successful"),
        "{acts:?}"
    );
    assert!(
        acts[0]["Description"].as_str().unwrap().contains("to 1."),
        "newest first: {acts:?}"
    );
    assert!(
        acts[0]["Cause"].as_str().unwrap().contains("below"),
        "{acts:?}"
    );

    // Deregistered: the policies go, the provisioned concurrency stays.
    flintctl(
        &ep,
        &["deregister-scalable-target", "--resource-id", &resource],
    )
    .unwrap();
    let targets = flintctl(&ep, &["describe-scalable-targets"]).unwrap();
    assert_eq!(targets["ScalableTargets"].as_array().unwrap().len(), 0);
    let p = provisioned(&mut c, &name).await;
    assert_eq!(p.requested_provisioned_concurrent_executions, 1);
    assert!(p.scaling.is_none());
}
