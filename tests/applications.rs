//! Applications: a SAM template with several functions, a shared layer,
//! a queue, parameters, outputs and events is deployed as a stack by
//! `flintctl deploy` to a real flintd (with a broker), changed and
//! deployed again (each change set is exactly what changed), rolled back
//! when a resource fails, shifted gradually to a failing version that
//! rolls back on its own, and deleted. One flintd serves the file.

use std::path::Path;
use std::time::{Duration, Instant};

use flint_e2e::*;
use flint_proto::node::v1 as pb;
use serde_json::Value;

static EP: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn ep() -> &'static str {
    EP.get().expect("flintd started")
}

fn ctl(args: &[&str]) -> String {
    flintctl(ep(), args).unwrap_or_else(|e| panic!("flintctl {args:?}: {e}"))
}

fn ctl_json(args: &[&str]) -> Value {
    let out = ctl(args);
    serde_json::from_str(&out).unwrap_or_else(|_| panic!("flintctl {args:?}: not JSON: {out}"))
}

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

const TEMPLATE: &str = r#"AWSTemplateFormatVersion: '2010-09-09'
Transform: AWS::Serverless-2016-10-31
Description: Orders, an application of two functions sharing a layer
Parameters:
  Greeting:
    Type: String
    Default: hello
Globals:
  Function:
    Runtime: python3.11
    Timeout: 20
    Layers:
      - !Ref Shared
Resources:
  Shared:
    Type: AWS::Serverless::LayerVersion
    Properties:
      ContentUri: layer/
      CompatibleRuntimes: [python3.11]
      RetentionPolicy: Delete
  Orders:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 30
  Clicks:
    Type: AWS::Kinesis::Stream
    Properties:
      ShardCount: 1
  Api:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: api/
      Handler: app.handler
      AutoPublishAlias: live
      ProvisionedConcurrencyConfig:
        ProvisionedConcurrentExecutions: 1
      EventInvokeConfig:
        MaximumRetryAttempts: 0
        DestinationConfig:
          OnFailure:
            Type: SQS
            Destination: !GetAtt Orders.Arn
      Environment:
        Variables:
          GREETING: !Ref Greeting
          QUEUE: !GetAtt Orders.Arn
          STACK: !Sub "${AWS::StackName}-api"
  Worker:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: worker/
      Handler: app.handler
      ReservedConcurrentExecutions: 2
      Events:
        Jobs:
          Type: SQS
          Properties:
            Queue: !GetAtt Orders.Arn
            BatchSize: 5
        Clicks:
          Type: Kinesis
          Properties:
            Stream: !GetAtt Clicks.Arn
            StartingPosition: TRIM_HORIZON
        Nightly:
          Type: Schedule
          Properties:
            Schedule: rate(1 day)
Outputs:
  ApiFunction:
    Value: !Ref Api
  ApiAlias:
    Value: !Ref Api.Alias
  QueueArn:
    Description: where orders go
    Value: !GetAtt Orders.Arn
"#;

const API: &str = r#"import os, shared
def handler(event, context):
    return {"say": shared.greet(os.environ["GREETING"]), "queue": os.environ["QUEUE"],
            "stack": os.environ["STACK"], "code": 1}
"#;

const WORKER: &str = r#"import shared, tinylib
def handler(event, context):
    return {"done": len(event.get("Records", [])), "by": shared.greet("worker"),
            "lib": tinylib.shout("installed")}
"#;

/// A wheel of a one-module library, for pip to install from the folder
/// (`--no-index`: no test reaches a package index).
fn tinylib_wheel() -> Vec<u8> {
    let info = "tinylib-1.0.dist-info";
    let files: [(&str, &[u8]); 3] = [
        ("tinylib.py", b"def shout(s):\n    return s.upper()\n"),
        ("tinylib-1.0.dist-info/METADATA", b"Metadata-Version: 2.1\nName: tinylib\nVersion: 1.0\n"),
        ("tinylib-1.0.dist-info/WHEEL", b"Wheel-Version: 1.0\nGenerator: flint-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
    ];
    let record = format!("tinylib.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n");
    let mut all: Vec<(&str, &[u8], u32)> = files.iter().map(|(n, d)| (*n, *d, 0o644)).collect();
    let record_name = format!("{info}/RECORD");
    all.push((&record_name, record.as_bytes(), 0o644));
    zip_files(&all)
}

const LAYER: &str = "def greet(who):\n    return who + ' from layer 1'\n";

fn project() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "template.yaml", TEMPLATE);
    write(d.path(), "api/app.py", API);
    write(d.path(), "worker/app.py", WORKER);
    // `sam build`'s dependencies: installed by pip inside a microVM.
    write(
        d.path(),
        "worker/requirements.txt",
        "--no-index\n--find-links wheels\ntinylib==1.0\n",
    );
    std::fs::create_dir_all(d.path().join("worker/wheels")).unwrap();
    std::fs::write(
        d.path().join("worker/wheels/tinylib-1.0-py3-none-any.whl"),
        tinylib_wheel(),
    )
    .unwrap();
    write(d.path(), "layer/python/shared.py", LAYER);
    d
}

/// `flintctl deploy` of the project's template; the JSON it prints.
fn deploy(dir: &Path, stack: &str, extra: &[&str]) -> Result<Value, String> {
    let t = dir.join("template.yaml").display().to_string();
    let mut args = vec!["deploy", "--template-file", &t, "--stack-name", stack];
    args.extend(extra);
    flintctl(ep(), &args).map(|out| serde_json::from_str(&out).unwrap())
}

/// The change set as (action, logical id, replacement).
fn changes(plan: &Value) -> Vec<(String, String, bool)> {
    let mut v: Vec<_> = plan["Changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["Action"].as_str().unwrap().to_string(),
                c["LogicalResourceId"].as_str().unwrap().to_string(),
                c["Replacement"] == "True",
            )
        })
        .collect();
    v.sort();
    v
}

fn change(action: &str, id: &str, replacement: bool) -> (String, String, bool) {
    (action.to_string(), id.to_string(), replacement)
}

fn stack(name: &str) -> Value {
    ctl_json(&["describe-stacks", "--stack-name", name])["Stacks"][0].clone()
}

fn output(s: &Value, key: &str) -> String {
    s["Outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["OutputKey"] == key)
        .unwrap_or_else(|| panic!("no output {key}: {s}"))["OutputValue"]
        .as_str()
        .unwrap()
        .to_string()
}

fn invoke(name: &str, qualifier: &str) -> (Value, Value) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json").display().to_string();
    let mut args = vec!["invoke", "--function-name", name, "--payload", "{}"];
    if !qualifier.is_empty() {
        args.extend(["--qualifier", qualifier]);
    }
    args.push(&out);
    let status = ctl_json(&args);
    let answer = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    (status, answer)
}

fn events(name: &str) -> Vec<Value> {
    ctl_json(&["describe-stack-events", "--stack-name", name])["StackEvents"]
        .as_array()
        .unwrap()
        .clone()
}

fn resources(name: &str) -> Vec<(String, String)> {
    let r = ctl_json(&["list-stack-resources", "--stack-name", name]);
    r["StackResourceSummaries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["LogicalResourceId"].as_str().unwrap().to_string(),
                x["PhysicalResourceId"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn physical(name: &str, logical: &str) -> String {
    resources(name)
        .into_iter()
        .find(|(l, _)| l == logical)
        .unwrap_or_else(|| panic!("{name} has no {logical}"))
        .1
}

#[tokio::test]
async fn a_template_deploys_as_a_stack_changes_rolls_back_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path());
    let flintd = spawn_flintd(dir.path(), &redis.url(), 0xe_0000);
    EP.set(flintd.endpoint.clone()).unwrap();
    let app = project();
    let name = unique("orders");
    let p = app.path();

    // What Flint does not deploy is refused, naming resource and property.
    write(
        p,
        "template.yaml",
        &TEMPLATE.replace(
            "      AutoPublishAlias: live\n",
            "      AutoPublishAlias: live\n      Tracing: Active\n",
        ),
    );
    let e = deploy(p, &name, &[]).unwrap_err();
    assert!(e.contains("Tracing") && e.contains("Api"), "{e}");
    write(
        p,
        "template.yaml",
        &TEMPLATE.replace("AWS::SQS::Queue", "AWS::DynamoDB::Table"),
    );
    let e = deploy(p, &name, &[]).unwrap_err();
    assert!(
        e.contains("AWS::DynamoDB::Table") && e.contains("Orders"),
        "{e}"
    );
    write(p, "template.yaml", TEMPLATE);

    // The change set alone creates nothing.
    let plan = deploy(p, &name, &["--no-execute-changeset"]).unwrap();
    assert_eq!(
        changes(&plan),
        vec![
            change("Add", "Api", false),
            change("Add", "Clicks", false),
            change("Add", "Orders", false),
            change("Add", "Shared", false),
            change("Add", "Worker", false),
        ]
    );
    assert_eq!(plan["Executing"], false);
    assert!(flintctl(ep(), &["describe-stacks", "--stack-name", &name]).is_err());

    // Create.
    let done = deploy(p, &name, &[]).unwrap();
    assert_eq!(done["Stack"]["StackStatus"], "CREATE_COMPLETE", "{done}");
    let s = stack(&name);
    let api = output(&s, "ApiFunction");
    assert_eq!(api, format!("{name}-Api"));
    assert!(
        output(&s, "ApiAlias").ends_with(&format!("function:{api}:live")),
        "{s}"
    );
    let queue_arn = output(&s, "QueueArn");
    let (status, answer) = invoke(&api, "live");
    assert_eq!(status["ExecutedVersion"], "1", "{status}");
    assert_eq!(answer["say"], "hello from layer 1", "{answer}");
    assert_eq!(answer["queue"], queue_arn.as_str());
    assert_eq!(answer["stack"], format!("{name}-api"));
    let worker = physical(&name, "Worker");
    let queue = physical(&name, "Orders");
    let c = ctl_json(&["get-function-concurrency", "--function-name", &worker]);
    assert_eq!(c["ReservedConcurrentExecutions"], 2, "{c}");
    let maps = ctl_json(&["list-event-source-mappings", "--function-name", &worker]);
    let mut sources: Vec<&str> = maps["EventSourceMappings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["EventSourceArn"].as_str().unwrap())
        .collect();
    sources.sort();
    let stream_arn = format!(
        "arn:aws:kinesis:us-east-1:000000000000:stream/{}",
        physical(&name, "Clicks")
    );
    assert_eq!(
        sources,
        vec![stream_arn.as_str(), queue_arn.as_str()],
        "{maps}"
    );
    let eic = ctl_json(&[
        "get-function-event-invoke-config",
        "--function-name",
        &api,
        "--qualifier",
        "live",
    ]);
    assert_eq!(eic["MaximumRetryAttempts"], 0, "{eic}");
    assert_eq!(
        eic["DestinationConfig"]["OnFailure"]["Destination"],
        queue_arn.as_str(),
        "{eic}"
    );
    let pc = ctl_json(&[
        "get-provisioned-concurrency-config",
        "--function-name",
        &api,
        "--qualifier",
        "live",
    ]);
    assert_eq!(pc["RequestedProvisionedConcurrentExecutions"], 1, "{pc}");
    let schedules = ctl(&["list-schedules"]);
    assert!(
        schedules.contains(&format!("{worker}-Nightly")),
        "{schedules}"
    );
    // The mapping works: a message sent to the stack's queue is consumed.
    ctl(&[
        "send-message",
        "--queue-name",
        &queue,
        "--message-body",
        "{\"order\": 1}",
    ]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let a = ctl_json(&["get-queue-attributes", "--queue-name", &queue]);
        let left = a["Attributes"]["ApproximateNumberOfMessages"]
            .as_str()
            .unwrap_or("?")
            .to_string()
            + a["Attributes"]["ApproximateNumberOfMessagesNotVisible"]
                .as_str()
                .unwrap_or("?");
        if left == "00" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not consume the message: {a}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The same template again: nothing to do.
    let same = deploy(p, &name, &[]).unwrap();
    assert!(changes(&same).is_empty(), "{same}");
    assert_eq!(same["Executing"], false);

    // New code for Api and a parameter it alone uses: only Api changes.
    write(p, "api/app.py", &API.replace("\"code\": 1", "\"code\": 2"));
    let plan = deploy(
        p,
        &name,
        &[
            "--parameter-overrides",
            "Greeting=hi",
            "--no-execute-changeset",
        ],
    )
    .unwrap();
    assert_eq!(
        changes(&plan),
        vec![change("Modify", "Api", false)],
        "{plan}"
    );
    let done = deploy(p, &name, &["--parameter-overrides", "Greeting=hi"]).unwrap();
    assert_eq!(done["Stack"]["StackStatus"], "UPDATE_COMPLETE", "{done}");
    let (status, answer) = invoke(&api, "live");
    assert_eq!(
        (status["ExecutedVersion"].as_str(), answer["code"].as_i64()),
        (Some("2"), Some(2)),
        "{answer}"
    );
    assert_eq!(answer["say"], "hi from layer 1");

    // A new layer replaces the layer version, so both functions change.
    let old_layer = physical(&name, "Shared");
    write(
        p,
        "layer/python/shared.py",
        &LAYER.replace("layer 1", "layer 2"),
    );
    let args = ["--parameter-overrides", "Greeting=hi"];
    let plan = deploy(p, &name, &[&args[..], &["--no-execute-changeset"]].concat()).unwrap();
    assert_eq!(
        changes(&plan),
        vec![
            change("Modify", "Api", false),
            change("Modify", "Shared", true),
            change("Modify", "Worker", false),
        ],
        "{plan}"
    );
    let done = deploy(p, &name, &args).unwrap();
    assert_eq!(done["Stack"]["StackStatus"], "UPDATE_COMPLETE", "{done}");
    let (status, answer) = invoke(&api, "live");
    assert_eq!(answer["say"], "hi from layer 2");
    // New layers are a new configuration: a new version behind the alias.
    let good = status["ExecutedVersion"].as_str().unwrap().to_string();
    assert_eq!(good, "3");
    let (_, answer) = invoke(&worker, "");
    assert_eq!(answer["by"], "worker from layer 2");
    assert_eq!(
        answer["lib"], "INSTALLED",
        "requirements.txt was installed: {answer}"
    );
    let new_layer = physical(&name, "Shared");
    assert_ne!(new_layer, old_layer);
    let (layer_name, old_version) = old_layer.rsplit_once(':').unwrap();
    let layer_name = layer_name.rsplit(':').next().unwrap();
    let versions = ctl_json(&["list-layer-versions", "--layer-name", layer_name]);
    let listed: Vec<i64> = versions["LayerVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["Version"].as_i64().unwrap())
        .collect();
    assert!(
        !listed.contains(&old_version.parse().unwrap()),
        "the replaced layer version is deleted: {versions}"
    );

    // A resource that fails rolls the whole update back: Api's new code
    // included, and the function that was being added is gone.
    write(p, "api/app.py", &API.replace("\"code\": 1", "\"code\": 3"));
    let broken = format!(
        "{TEMPLATE}  Zbroken:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: worker/\n      Handler: missing.handler\n"
    )
    .replace("Outputs:\n", "")
    .replace("  ApiFunction:\n    Value: !Ref Api\n", "")
    .replace("  ApiAlias:\n    Value: !Ref Api.Alias\n", "")
    .replace("  QueueArn:\n    Description: where orders go\n    Value: !GetAtt Orders.Arn\n", "");
    write(p, "template.yaml", &broken);
    let plan = deploy(p, &name, &[&args[..], &["--no-execute-changeset"]].concat()).unwrap();
    assert_eq!(
        changes(&plan),
        vec![
            change("Add", "Zbroken", false),
            change("Modify", "Api", false)
        ]
    );
    let e = deploy(p, &name, &args).unwrap_err();
    assert!(e.contains("UPDATE_ROLLBACK_COMPLETE"), "{e}");
    let s = stack(&name);
    assert_eq!(s["StackStatus"], "UPDATE_ROLLBACK_COMPLETE");
    assert!(
        s["StackStatusReason"].as_str().unwrap().contains("Zbroken"),
        "{s}"
    );
    let (status, answer) = invoke(&api, "live");
    assert_eq!(
        (status["ExecutedVersion"].as_str(), answer["code"].as_i64()),
        (Some(good.as_str()), Some(2)),
        "{answer}"
    );
    assert_eq!(
        invoke(&api, "").1["code"],
        2,
        "$LATEST has its old code back"
    );
    assert!(flintctl(
        ep(),
        &[
            "get-function",
            "--function-name",
            &format!("{name}-Zbroken")
        ]
    )
    .is_err());
    let ev = events(&name);
    let failed = ev
        .iter()
        .find(|e| e["LogicalResourceId"] == "Zbroken" && e["ResourceStatus"] == "CREATE_FAILED")
        .unwrap_or_else(|| panic!("no CREATE_FAILED event: {ev:?}"));
    assert!(
        failed["ResourceStatusReason"]
            .as_str()
            .unwrap()
            .contains("missing"),
        "{failed}"
    );
    // The outputs are those of the last good deploy.
    assert_eq!(output(&s, "ApiFunction"), api);

    // A canary of a version that fails rolls back on its own.
    write(p, "template.yaml", &TEMPLATE.replace(
        "      AutoPublishAlias: live\n",
        "      AutoPublishAlias: live\n      DeploymentPreference:\n        Type: Canary10Percent5Minutes\n",
    ).replace(
        "  Api:\n    Type: AWS::Serverless::Function\n",
        "  Api:\n    Type: AWS::Serverless::Function\n    Metadata:\n      Flint:\n        DeploymentErrorRate: 0.2\n",
    ));
    write(
        p,
        "api/app.py",
        "def handler(event, context):\n    raise RuntimeError('canary breaks')\n",
    );
    deploy(
        p,
        &name,
        &[
            &args[..],
            &["--deployment-minute-seconds", "8", "--no-wait"],
        ]
        .concat(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut versions = std::collections::BTreeMap::<String, u32>::new();
    let channel = flint_daemon::client::channel(ep()).await.unwrap();
    let mut c = pb::functions_client::FunctionsClient::new(channel);
    loop {
        let s = stack(&name);
        let status = s["StackStatus"].as_str().unwrap().to_string();
        if !status.ends_with("_IN_PROGRESS") {
            assert_eq!(status, "UPDATE_ROLLBACK_COMPLETE", "{s}");
            let why = s["StackStatusReason"].as_str().unwrap();
            assert!(
                why.contains("failed")
                    && why.contains(&format!("alias live is back on version {good}")),
                "{why}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the canary did not end: {s}");
        for _ in 0..10 {
            let r = c
                .invoke(pb::InvokeRequest {
                    function_name: api.clone(),
                    qualifier: "live".into(),
                    payload: b"{}".to_vec(),
                    ..Default::default()
                })
                .await;
            // A refused invocation (a busy machine) is not the test's concern.
            if let Ok(r) = r {
                *versions.entry(r.into_inner().executed_version).or_default() += 1;
            }
        }
    }
    // Version 4 was published by the update that rolled back; the canary is 5.
    assert!(
        versions.contains_key("5"),
        "the canary took traffic: {versions:?}"
    );
    let ev = events(&name);
    assert!(
        ev.iter().any(|e| e["ResourceStatusReason"]
            .as_str()
            .unwrap()
            .contains("10% of alias live")),
        "{ev:?}"
    );
    let alias = ctl_json(&["get-alias", "--function-name", &api, "--name", "live"]);
    assert_eq!(alias["FunctionVersion"], good.as_str(), "{alias}");
    assert!(
        alias
            .get("RoutingConfig")
            .is_none_or(|r| r["AdditionalVersionWeights"]
                .as_object()
                .is_none_or(|m| m.is_empty())),
        "{alias}"
    );
    assert_eq!(
        invoke(&api, "").1["code"],
        2,
        "$LATEST has its old code back"
    );

    // Delete: every resource goes (the layer's RetentionPolicy is Delete).
    let all = resources(&name);
    ctl(&["delete-stack", "--stack-name", &name]);
    assert!(flintctl(ep(), &["describe-stacks", "--stack-name", &name]).is_err());
    let listed = ctl_json(&["list-stacks"]);
    let summary = listed["StackSummaries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["StackName"] == name.as_str())
        .unwrap()
        .clone();
    assert_eq!(summary["StackStatus"], "DELETE_COMPLETE");
    for (logical, phys) in all {
        let gone = match logical.as_str() {
            "Api" | "Worker" => {
                flintctl(ep(), &["get-function", "--function-name", &phys]).is_err()
            }
            "Orders" => flintctl(ep(), &["get-queue-attributes", "--queue-name", &phys]).is_err(),
            "Clicks" => flintctl(ep(), &["describe-stream", "--stream-name", &phys]).is_err(),
            "Shared" => ctl_json(&["list-layers"])["Layers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| !phys.contains(l["LayerName"].as_str().unwrap())),
            _ => true,
        };
        assert!(gone, "{logical} ({phys}) is still there");
    }
    let schedules = ctl(&["list-schedules"]);
    assert!(
        !schedules.contains(&format!("{worker}-Nightly")),
        "{schedules}"
    );
    drop(flintd);
    drop(redis);
}
