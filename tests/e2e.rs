//! End-to-end tests: real flintd, real QEMU microVMs (TCG on machines
//! without usable KVM), real runtimes (AWS's awslambdaric; bash + curl).

use flint_e2e::*;
use flint_proto::node::v1 as pb;
use tonic::Code;

fn assert_report(tail: &str, cold: bool) {
    assert!(tail.contains("START RequestId: "), "{tail}");
    assert!(tail.contains("END RequestId: "), "{tail}");
    let report = tail
        .lines()
        .find(|l| l.starts_with("REPORT RequestId: "))
        .unwrap_or_else(|| panic!("no REPORT line in {tail}"));
    for field in [
        "Duration: ",
        "Billed Duration: ",
        "Memory Size: ",
        "Max Memory Used: ",
    ] {
        assert!(report.contains(field), "{field} missing in {report}");
    }
    assert_eq!(report.contains("Init Duration: "), cold, "{report}");
}

#[tokio::test]
async fn python_handler_runs_with_lambda_context_and_reuses_init() {
    let name = unique("py-ok");
    let zip = zip_fixture("python");
    let f = create(&name, "python3.11", "app.handler", zip, 0)
        .await
        .unwrap();
    assert_eq!(f.timeout, 3);
    assert_eq!(f.memory_size, 128);

    let r1 = invoke(&name, r#"{"n": 1}"#).await.unwrap();
    assert_eq!(r1.status_code, 200);
    assert_eq!(r1.function_error, "");
    assert_eq!(r1.executed_version, "$LATEST");
    let v1 = json(&r1);
    assert_eq!(v1["event"]["n"], 1);
    assert_eq!(v1["calls"], 1);
    assert_eq!(v1["function_name"], name.as_str());
    assert_eq!(v1["function_version"], "$LATEST");
    assert_eq!(v1["memory_limit_in_mb"], "128");
    assert_eq!(v1["request_id"], r1.request_id.as_str());
    assert_eq!(v1["arn"], f.function_arn.as_str());
    assert_eq!(v1["log_group"], format!("/aws/lambda/{name}").as_str());
    assert_eq!(v1["cwd"], "/var/task");
    assert_eq!(v1["tmp_writable"], true);
    let remaining = v1["remaining_ms"].as_i64().unwrap();
    assert!(remaining > 0 && remaining <= 3000, "{remaining}");
    let env = &v1["env"];
    assert_eq!(env["GREETING"], "hello");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "128");
    assert_eq!(env["AWS_LAMBDA_RUNTIME_API"], "127.0.0.1:9001");
    assert_eq!(env["_HANDLER"], "app.handler");
    assert_eq!(env["LAMBDA_TASK_ROOT"], "/var/task");
    assert_eq!(env["AWS_REGION"], "us-east-1");
    for k in [
        "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_LAMBDA_LOG_GROUP_NAME",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "LAMBDA_RUNTIME_DIR",
        "TZ",
    ] {
        assert!(env.get(k).is_some(), "{k} missing from {env}");
    }
    let t1 = tail(&r1);
    assert_report(&t1, true);
    assert!(t1.contains(r#"handling {"n": 1}"#), "{t1}");
    assert!(t1.contains("logged through the logging module"), "{t1}");

    // The same instance serves the next invocation: no new init.
    let r2 = invoke(&name, r#"{"n": 2}"#).await.unwrap();
    let v2 = json(&r2);
    assert_eq!(v2["calls"], 2);
    assert_eq!(v2["init_pid"], v1["init_pid"]);
    assert_ne!(r2.request_id, r1.request_id);
    assert_report(&tail(&r2), false);

    // The function's log on disk has both invocations.
    let dir = node().data_dir.join("logs").join(&name);
    let text: String = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert_eq!(text.matches("REPORT RequestId: ").count(), 2, "{text}");
    assert!(text.contains(&r2.request_id));
}

#[tokio::test]
async fn bash_and_curl_bootstrap_from_the_aws_tutorial_runs_unmodified() {
    let name = unique("bash");
    create(
        &name,
        "provided",
        "function.handler",
        zip_fixture("bash-echo"),
        0,
    )
    .await
    .unwrap();
    let r = invoke(&name, r#"{"text":"Hello"}"#).await.unwrap();
    assert_eq!(
        r.function_error,
        "",
        "{}",
        String::from_utf8_lossy(&r.payload)
    );
    assert_eq!(
        String::from_utf8_lossy(&r.payload),
        r#"Echoing request: '{"text":"Hello"}'"#
    );
    let t = tail(&r);
    assert_report(&t, true);
    // function.sh echoes the event to stderr.
    assert!(t.contains(r#"{"text":"Hello"}"#), "{t}");
    let r = invoke(&name, r#"{"text":"again"}"#).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.payload),
        r#"Echoing request: '{"text":"again"}'"#
    );
    assert_report(&tail(&r), false);
}

#[tokio::test]
async fn handled_error_returns_the_error_document_and_keeps_the_instance() {
    let name = unique("py-fail");
    create(&name, "python3.11", "app.fail", zip_fixture("python"), 0)
        .await
        .unwrap();
    let r = invoke(&name, "{}").await.unwrap();
    assert_eq!(r.status_code, 200);
    assert_eq!(r.function_error, "Handled");
    let v = json(&r);
    assert_eq!(v["errorType"], "OrderError");
    assert_eq!(v["errorMessage"], "order 42 was rejected");
    assert!(v["stackTrace"].is_array(), "{v}");
    assert_report(&tail(&r), true);
    // Not destroyed: the next invocation has no init.
    let r = invoke(&name, "{}").await.unwrap();
    assert_eq!(r.function_error, "Handled");
    assert_report(&tail(&r), false);
}

#[tokio::test]
async fn crash_is_unhandled_and_the_next_invocation_gets_a_fresh_instance() {
    let name = unique("py-crash");
    create(&name, "python3.11", "app.crash", zip_fixture("python"), 0)
        .await
        .unwrap();
    let r = invoke(&name, "{}").await.unwrap();
    assert_eq!(r.function_error, "Unhandled");
    let v = json(&r);
    assert_eq!(v["errorType"], "Runtime.ExitError");
    let msg = v["errorMessage"].as_str().unwrap();
    assert!(msg.contains("exit status 3"), "{msg}");
    assert!(msg.contains(&r.request_id), "{msg}");
    let t = tail(&r);
    assert!(t.contains("about to exit"), "{t}");
    let r = invoke(&name, "{}").await.unwrap();
    assert_eq!(r.function_error, "Unhandled");
    assert_report(&tail(&r), true);
}

#[tokio::test]
async fn timeout_is_unhandled_and_destroys_the_instance() {
    let name = unique("py-slow");
    create(&name, "python3.11", "app.slow", zip_fixture("python"), 1)
        .await
        .unwrap();
    let r = invoke(&name, r#"{"seconds": 30}"#).await.unwrap();
    assert_eq!(r.function_error, "Unhandled");
    let v = json(&r);
    let msg = v["errorMessage"].as_str().unwrap();
    assert!(msg.contains("Task timed out after 1.00 seconds"), "{msg}");
    let t = tail(&r);
    assert!(t.contains("Task timed out after 1.00 seconds"), "{t}");
    assert!(t.contains("Status: timeout"), "{t}");
    // Cut off at its timeout, not after the 30 s it asked for: the
    // REPORT's Duration is the node's measure of the invocation.
    let duration_ms: f64 = t
        .split("\tDuration: ")
        .nth(1)
        .and_then(|d| d.split(' ').next())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no Duration: {t}"));
    assert!((1000.0..10_000.0).contains(&duration_ms), "{t}");
    // A fresh instance (init again) answers the next one.
    let r = invoke(&name, r#"{"seconds": 0}"#).await.unwrap();
    assert_eq!(
        r.function_error,
        "",
        "{}",
        String::from_utf8_lossy(&r.payload)
    );
    assert_eq!(json(&r), serde_json::json!("too late"));
    assert_report(&tail(&r), true);
}

#[tokio::test]
async fn init_failure_is_unhandled_with_the_runtime_error() {
    let name = unique("py-broken");
    create(
        &name,
        "python3.11",
        "broken.handler",
        zip_fixture("python"),
        0,
    )
    .await
    .unwrap();
    let r = invoke(&name, "{}").await.unwrap();
    assert_eq!(r.function_error, "Unhandled");
    let v = json(&r);
    assert_eq!(v["errorType"], "Runtime.ImportModuleError", "{v}");
    assert!(
        v["errorMessage"]
            .as_str()
            .unwrap()
            .contains("module_that_does_not_exist"),
        "{v}"
    );
    let t = tail(&r);
    assert!(t.contains("Status: error"), "{t}");
}

#[tokio::test]
async fn oversize_payloads_are_refused_and_the_function_keeps_serving() {
    let name = unique("py-big");
    create(&name, "python3.11", "app.big", zip_fixture("python"), 0)
        .await
        .unwrap();
    let big = format!("\"{}\"", "x".repeat(6 * 1024 * 1024));
    let e = invoke(&name, &big).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("RequestTooLargeException"),
        "{}",
        e.message()
    );
    // A response over 6 MB is the function's (unhandled) error.
    let r = invoke(&name, r#"{"bytes": 7340032}"#).await.unwrap();
    assert_eq!(r.function_error, "Unhandled");
    assert_eq!(json(&r)["errorType"], "Function.ResponseSizeTooLarge");
    let r = invoke(&name, r#"{"bytes": 10}"#).await.unwrap();
    assert_eq!(
        r.function_error,
        "",
        "{} {}",
        String::from_utf8_lossy(&r.payload),
        tail(&r)
    );
    assert_eq!(json(&r), serde_json::json!("xxxxxxxxxx"));
}

#[tokio::test]
async fn unknown_function_is_not_found() {
    let e = invoke("no-such-function", "{}").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(
        e.message().starts_with("ResourceNotFoundException"),
        "{}",
        e.message()
    );
    let e = client()
        .await
        .get_function(pb::GetFunctionRequest {
            function_name: "no-such-function".into(),
            qualifier: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn bad_packages_are_refused_with_precise_messages_and_nothing_is_stored() {
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "python3.11",
            "app.handler",
            b"PK not really a zip".to_vec(),
            "not a valid ZIP",
        ),
        (
            "python3.11",
            "app.handler",
            zip_files(&[("../evil.py", b"x", 0o644), ("app.py", b"", 0o644)]),
            "escapes the package",
        ),
        (
            "python3.11",
            "app.handler",
            zip_files(&[("/etc/cron.d/x", b"x", 0o644), ("app.py", b"", 0o644)]),
            "absolute paths",
        ),
        (
            "python3.11",
            "app.handler",
            zip_files(&[("other.py", b"", 0o644)]),
            "no app.py",
        ),
        (
            "provided",
            "x",
            zip_files(&[("bootstrap", b"#!/bin/sh\n", 0o644)]),
            "not executable",
        ),
        (
            "provided",
            "x",
            zip_files(&[("main.sh", b"", 0o755)]),
            "no bootstrap",
        ),
    ];
    for (i, (runtime, handler, zip, expect)) in cases.into_iter().enumerate() {
        let name = format!("{}-{i}", unique("badzip"));
        let e = create(&name, runtime, handler, zip, 0).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains(expect), "case {i}: {}", e.message());
        let e = client()
            .await
            .get_function(pb::GetFunctionRequest {
                function_name: name,
                qualifier: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
    }
    // A link pointing outside the package.
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.add_symlink(
        "bootstrap",
        "/bin/sh",
        zip::write::SimpleFileOptions::default(),
    )
    .unwrap();
    let zip = w.finish().unwrap().into_inner();
    let e = create(&unique("badlink"), "provided", "x", zip, 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("outside the package"),
        "{}",
        e.message()
    );
    // Invalid configuration names the field.
    let e = create(
        "bad name!",
        "python3.11",
        "app.handler",
        zip_fixture("python"),
        0,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("FunctionName"), "{}", e.message());
    let e = create(
        &unique("badtimeout"),
        "python3.11",
        "app.handler",
        zip_fixture("python"),
        901,
    )
    .await
    .unwrap_err();
    assert!(e.message().contains("Timeout"), "{}", e.message());
}

#[tokio::test]
async fn flintctl_drives_the_node_like_the_aws_cli() {
    let dir = tempfile::tempdir().unwrap();
    let zip_path = dir.path().join("function.zip");
    std::fs::write(&zip_path, zip_fixture("python")).unwrap();
    let name = unique("ctl");
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(bin("flintctl"))
            .env("FLINT_ENDPOINT", &node().endpoint)
            .args(args)
            .output()
            .expect("run flintctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let zip_arg = format!("fileb://{}", zip_path.display());
    let (code, out, err) = ctl(&[
        "create-function",
        "--function-name",
        &name,
        "--runtime",
        "python3.11",
        "--handler",
        "app.handler",
        "--zip-file",
        &zip_arg,
        "--memory-size",
        "256",
        "--timeout",
        "5",
        "--environment",
        "Variables={GREETING=from-cli,OTHER=1}",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["FunctionName"], name.as_str());
    assert_eq!(v["MemorySize"], 256);
    assert_eq!(v["Environment"]["Variables"]["GREETING"], "from-cli");

    let (code, out, _) = ctl(&["get-function", "--function-name", &name]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Configuration"]["Handler"], "app.handler");
    let (code, out, _) = ctl(&["list-functions"]);
    assert_eq!(code, 0);
    assert!(out.contains(&name));
    let (code, out, _) = ctl(&["list-functions", "--output", "table"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("NAME"), "{out}");

    let outfile = dir.path().join("response.json");
    let outfile_s = outfile.display().to_string();
    let (code, out, err) = ctl(&[
        "invoke",
        "--function-name",
        &name,
        "--payload",
        r#"{"from":"cli"}"#,
        "--log-type",
        "Tail",
        &outfile_s,
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["StatusCode"], 200);
    assert_eq!(v["ExecutedVersion"], "$LATEST");
    assert!(v["LogResult"].as_str().unwrap().len() > 20);
    assert!(v.get("FunctionError").is_none());
    let payload: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&outfile).unwrap()).unwrap();
    assert_eq!(payload["event"]["from"], "cli");
    assert_eq!(payload["env"]["GREETING"], "from-cli");
    assert_eq!(payload["memory_limit_in_mb"], "256");

    let (code, _, err) = ctl(&["delete-function", "--function-name", &name]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = ctl(&["get-function", "--function-name", &name]);
    assert_eq!(code, 254);
    assert!(
        err.contains(
            "An error occurred (ResourceNotFoundException) when calling the GetFunction operation"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let channel = flint_daemon::client::channel(&node().endpoint)
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "flint.node.v1.Functions".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"flint.node.v1.Functions".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

#[tokio::test]
async fn rust_lambda_runtime_binaries_run_dynamic_and_static() {
    for static_link in [false, true] {
        let bootstrap = rust_bootstrap(static_link);
        let name = format!(
            "{}-{}",
            unique("rust"),
            if static_link { "static" } else { "dynamic" }
        );
        create(
            &name,
            "provided",
            "bootstrap",
            zip_files(&[("bootstrap", &bootstrap, 0o755)]),
            0,
        )
        .await
        .unwrap();
        let r = invoke(&name, r#"{"hello":"rust"}"#).await.unwrap();
        assert_eq!(
            r.function_error,
            "",
            "{}",
            String::from_utf8_lossy(&r.payload)
        );
        let v = json(&r);
        assert_eq!(v["echo"]["hello"], "rust");
        assert_eq!(v["request_id"], r.request_id.as_str());
        assert_eq!(v["function_name"], name.as_str());
        assert_eq!(v["memory"], 128);
        let t = tail(&r);
        assert!(t.contains(r#"rust handler saw {"hello":"rust"}"#), "{t}");
        assert_report(&t, true);
        // The runtime reports the handler's error through /error.
        let r = invoke(&name, r#"{"fail":1}"#).await.unwrap();
        assert_eq!(r.function_error, "Handled");
        assert_eq!(json(&r)["errorMessage"], "asked to fail");
    }
}

#[tokio::test]
async fn a_python_grpcio_client_calls_health_reflection_and_invoke() {
    let python = python_with_grpcio();
    let name = unique("grpcio");
    create(&name, "python3.11", "app.handler", zip_fixture("python"), 0)
        .await
        .unwrap();
    let endpoint = node().endpoint.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(fixture("..").join("grpc_client.py"))
            .arg(&endpoint)
            .arg(&name)
            .output()
            .expect("run the grpcio client")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "grpcio client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["health"], "SERVING");
    let services: Vec<&str> = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for s in [
        "flint.node.v1.Functions",
        "flint.node.v1.Node",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(&s), "{s} missing from {services:?}");
    }
    assert_eq!(v["status_code"], 200);
    assert_eq!(v["function_error"], "");
    assert_eq!(v["executed_version"], "$LATEST");
    assert_eq!(v["payload"]["event"]["from"], "grpcio");
    assert_eq!(v["has_log_result"], true);
    assert_eq!(v["async"]["status_code"], 202);
    assert_eq!(v["async"]["record_request_id"], v["async"]["request_id"]);
    assert_eq!(v["async"]["condition"], "Success");
    assert_eq!(v["async"]["response"]["event"]["async"], true);
    assert!(
        v["missing"]
            .as_str()
            .unwrap()
            .starts_with("NOT_FOUND: ResourceNotFoundException"),
        "{}",
        v["missing"]
    );
}
