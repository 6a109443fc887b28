//! The nodejs18.x runtime end to end: Debian's Node.js with AWS's runtime
//! interface client (`aws-lambda-ric`) in a real microVM. CommonJS and ES
//! module handlers, async and callback handlers, Lambda's `context`, a
//! layer's packages under `/opt/nodejs/node_modules`, errors, and a
//! published version restored from its function snapshot.

use flint_e2e::*;
use flint_proto::node::v1 as pb;

const INDEX_JS: &[u8] = br#"
const greet = require("greet");
const initPid = process.pid;
let calls = 0;
exports.handler = async (event, context) => {
  calls += 1;
  console.log("handling", JSON.stringify(event));
  if (event.fail === "throw") {
    throw new TypeError("bad input");
  }
  if (event.fail === "exit") {
    console.log("about to exit");
    process.exit(3);
  }
  return {
    event,
    calls,
    initPid,
    pid: process.pid,
    greeting: greet("node"),
    functionName: context.functionName,
    functionVersion: context.functionVersion,
    memoryLimitInMB: context.memoryLimitInMB,
    awsRequestId: context.awsRequestId,
    arn: context.invokedFunctionArn,
    logGroupName: context.logGroupName,
    remaining: context.getRemainingTimeInMillis(),
    cwd: process.cwd(),
    node: process.version,
    env: {
      GREETING: process.env.GREETING,
      _HANDLER: process.env._HANDLER,
      AWS_LAMBDA_RUNTIME_API: process.env.AWS_LAMBDA_RUNTIME_API,
      LAMBDA_TASK_ROOT: process.env.LAMBDA_TASK_ROOT,
    },
  };
};
"#;

const CALLBACK_JS: &[u8] = br#"
exports.handler = (event, context, callback) => {
  setTimeout(() => {
    if (event.fail) {
      callback(new RangeError("out of range: " + event.x));
    } else {
      callback(null, { doubled: event.x * 2, requestId: context.awsRequestId });
    }
  }, 5);
};
"#;

const APP_MJS: &[u8] = br#"
import { randomUUID } from "node:crypto";
import { readFile } from "node:fs/promises";
const initAt = Date.now();
const initType = process.env.AWS_LAMBDA_INITIALIZATION_TYPE;
export const handler = async (event, context) => {
  const pkg = JSON.parse(await readFile(new URL("./data.json", import.meta.url)));
  return { esm: true, initAt, initType, uuid: randomUUID(), word: pkg.word, version: context.functionVersion, x: event.x };
};
"#;

async fn create_node(
    name: &str,
    handler: &str,
    files: &[(&str, &[u8], u32)],
    layers: Vec<String>,
) -> pb::FunctionConfiguration {
    client()
        .await
        .create_function(pb::CreateFunctionRequest {
            function_name: name.into(),
            runtime: "nodejs18.x".into(),
            handler: handler.into(),
            zip_file: zip_files(files),
            timeout: 10,
            layers,
            environment: [("GREETING".to_string(), "hello".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
        .into_inner()
}

fn ok(r: &pb::InvokeResponse) -> serde_json::Value {
    assert_eq!(
        r.function_error,
        "",
        "{}\n{}",
        String::from_utf8_lossy(&r.payload),
        tail(r)
    );
    json(r)
}

#[tokio::test]
async fn commonjs_handler_with_a_layer_runs_with_lambda_context_and_reuses_init() {
    let layer = client()
        .await
        .publish_layer_version(pb::PublishLayerVersionRequest {
            layer_name: unique("node-greet"),
            zip_file: zip_files(&[(
                "nodejs/node_modules/greet/index.js",
                b"module.exports = (who) => `hello from the layer, ${who}`;\n",
                0o644,
            )]),
            compatible_runtimes: vec!["nodejs18.x".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let name = unique("node-cjs");
    let f = create_node(
        &name,
        "index.handler",
        &[("index.js", INDEX_JS, 0o644)],
        vec![layer.layer_version_arn.clone()],
    )
    .await;
    assert_eq!(f.runtime, "nodejs18.x");

    let r1 = invoke(&name, r#"{"n": 1}"#).await.unwrap();
    let v1 = ok(&r1);
    assert_eq!(v1["event"]["n"], 1);
    assert_eq!(v1["calls"], 1);
    assert_eq!(v1["greeting"], "hello from the layer, node");
    assert_eq!(v1["functionName"], name.as_str());
    assert_eq!(v1["functionVersion"], "$LATEST");
    assert_eq!(v1["memoryLimitInMB"], "128");
    assert_eq!(v1["awsRequestId"], r1.request_id.as_str());
    assert_eq!(v1["arn"], f.function_arn.as_str());
    assert_eq!(v1["logGroupName"], format!("/aws/lambda/{name}").as_str());
    assert_eq!(v1["cwd"], "/var/task");
    assert!(v1["node"].as_str().unwrap().starts_with("v18."), "{v1}");
    let remaining = v1["remaining"].as_i64().unwrap();
    assert!(remaining > 0 && remaining <= 10_000, "{remaining}");
    assert_eq!(v1["env"]["GREETING"], "hello");
    assert_eq!(v1["env"]["_HANDLER"], "index.handler");
    assert_eq!(v1["env"]["AWS_LAMBDA_RUNTIME_API"], "127.0.0.1:9001");
    assert_eq!(v1["env"]["LAMBDA_TASK_ROOT"], "/var/task");
    let t1 = tail(&r1);
    assert!(t1.contains("START RequestId: "), "{t1}");
    assert!(t1.contains("END RequestId: "), "{t1}");
    assert!(t1.contains(r#"handling {"n":1}"#), "{t1}");
    assert!(report(&r1).contains("Init Duration: "), "{t1}");
    // Nothing but the function's own lines before START.
    assert!(!t1.contains("Executing "), "{t1}");

    // The same instance serves the next invocation: no new init.
    let r2 = invoke(&name, r#"{"n": 2}"#).await.unwrap();
    let v2 = ok(&r2);
    assert_eq!(v2["calls"], 2);
    assert_eq!(v2["initPid"], v1["initPid"]);
    assert!(!report(&r2).contains("Init Duration"), "{}", tail(&r2));

    // A thrown error is the function's error document; the instance stays.
    let r3 = invoke(&name, r#"{"fail": "throw"}"#).await.unwrap();
    assert_eq!(r3.function_error, "Handled");
    let e = json(&r3);
    assert_eq!(e["errorType"], "TypeError");
    assert_eq!(e["errorMessage"], "bad input");
    assert!(e["trace"].is_array() || e["stackTrace"].is_array(), "{e}");
    let v4 = ok(&invoke(&name, "{}").await.unwrap());
    assert_eq!(v4["calls"], 4);

    // A runtime that exits is Unhandled, and the next invocation gets a
    // fresh instance.
    let r5 = invoke(&name, r#"{"fail": "exit"}"#).await.unwrap();
    assert_eq!(r5.function_error, "Unhandled");
    assert_eq!(json(&r5)["errorType"], "Runtime.ExitError");
    assert!(tail(&r5).contains("about to exit"), "{}", tail(&r5));
    let r6 = invoke(&name, "{}").await.unwrap();
    assert_eq!(ok(&r6)["calls"], 1);
    assert!(report(&r6).contains("Init Duration: "));
}

#[tokio::test]
async fn callback_handlers_answer_and_fail_through_their_callback() {
    let name = unique("node-cb");
    create_node(
        &name,
        "lib/cb.handler",
        &[("lib/cb.js", CALLBACK_JS, 0o644)],
        vec![],
    )
    .await;
    let r = invoke(&name, r#"{"x": 21}"#).await.unwrap();
    let v = ok(&r);
    assert_eq!(v["doubled"], 42);
    assert_eq!(v["requestId"], r.request_id.as_str());
    let r = invoke(&name, r#"{"x": 7, "fail": true}"#).await.unwrap();
    assert_eq!(r.function_error, "Handled");
    let e = json(&r);
    assert_eq!(e["errorType"], "RangeError");
    assert_eq!(e["errorMessage"], "out of range: 7");
}

#[tokio::test]
async fn es_module_handlers_run_and_published_versions_restore_their_snapshot() {
    let name = unique("node-esm");
    create_node(
        &name,
        "app.handler",
        &[
            ("app.mjs", APP_MJS, 0o644),
            (
                "data.json",
                br#"{"word": "from a file next to the module"}"#,
                0o644,
            ),
        ],
        vec![],
    )
    .await;
    let v = ok(&invoke(&name, r#"{"x": 1}"#).await.unwrap());
    assert_eq!(v["esm"], true);
    assert_eq!(v["word"], "from a file next to the module");
    assert_eq!(v["x"], 1);
    assert_eq!(v["initType"], "on-demand");

    // A published version starts from its function snapshot: init ran
    // once, before the snapshot, and each clone is its own.
    publish(&name).await;
    let r1 = invoke_at(&name, "1", r#"{"x": 2}"#).await.unwrap();
    let v1 = ok(&r1);
    let rep = report(&r1);
    assert!(rep.contains("Restore Duration: "), "{rep}");
    assert!(!rep.contains("Init Duration"), "{rep}");
    assert_eq!(v1["initType"], "snap-start");
    assert_eq!(v1["version"], "1");
    let v2 = ok(&invoke_at(&name, "1", r#"{"x": 3}"#).await.unwrap());
    assert_eq!(v2["x"], 3);
    assert_eq!(v2["initAt"], v1["initAt"]);
}

#[tokio::test]
async fn node_packages_without_the_handlers_module_are_refused() {
    let err = client()
        .await
        .create_function(pb::CreateFunctionRequest {
            function_name: unique("node-bad"),
            runtime: "nodejs18.x".into(),
            handler: "index.handler".into(),
            zip_file: zip_files(&[("main.js", b"exports.handler = async () => 1;", 0o644)]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(
        err.message()
            .contains("none of index.js, index.mjs, index.cjs"),
        "{err}"
    );
}
