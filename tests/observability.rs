//! What an operator sees of a node: its Prometheus endpoint is scraped
//! while functions are invoked, throttled and failing, and the counters
//! and histograms must move exactly as Lambda's metrics would; the same
//! numbers come back from `flintctl get-metric-statistics`; and a real
//! OTLP/gRPC receiver gets one trace per invocation, with the span tree
//! the docs describe and the trace id the function itself saw.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flint_e2e::*;
use flint_proto::node::v1 as pb;
use flint_proto::opentelemetry::proto::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use flint_proto::opentelemetry::proto::trace::v1::Span;
use serde_json::Value;

/// An OTLP trace receiver: every span it is sent, with its resource's
/// `service.name`.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(flint_proto::opentelemetry::proto::common::v1::any_value::Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push((service.clone(), s));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    fn spans_of(&self, trace_id: &str) -> Vec<Span> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| hex(&s.trace_id) == trace_id)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Waits until the trace has an `Invoke` span (the last one sent).
    async fn trace(&self, trace_id: &str) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans_of(trace_id);
            if spans.iter().any(|s| s.name == "Invoke") {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "no trace {trace_id} arrived: {spans:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The trace id (32 hex) and parent span (16 hex) of an X-Ray header.
fn xray(header: &str) -> (String, String, String) {
    let mut root = String::new();
    let mut parent = String::new();
    let mut sampled = String::new();
    for part in header.split(';') {
        match part.split_once('=') {
            Some(("Root", v)) => root = v.trim_start_matches("1-").replace('-', ""),
            Some(("Parent", v)) => parent = v.to_string(),
            Some(("Sampled", v)) => sampled = v.to_string(),
            _ => {}
        }
    }
    (root, parent, sampled)
}

const CODE: &str = r#"
import os, time
def handler(event, context):
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("fail"):
        raise RuntimeError("asked to fail")
    return {"trace": os.environ.get("_X_AMZN_TRACE_ID", "")}
"#;

/// `name{labels} value` lines of a scrape, by `name{labels}`.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: flint\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

fn series(metric: &str, function: &str, extra: &str) -> String {
    format!("{metric}{{function=\"{function}\",alias=\"\",version=\"$LATEST\"{extra}}}")
}

async fn invoke_traced(
    c: &mut pb::functions_client::FunctionsClient<tonic::transport::Channel>,
    name: &str,
    payload: &str,
    traceparent: Option<&str>,
) -> Result<pb::InvokeResponse, tonic::Status> {
    let mut req = tonic::Request::new(pb::InvokeRequest {
        function_name: name.into(),
        payload: payload.as_bytes().to_vec(),
        ..Default::default()
    });
    if let Some(tp) = traceparent {
        req.metadata_mut()
            .insert("traceparent", tp.parse().unwrap());
    }
    c.invoke(req).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_and_traces_follow_invocations() {
    let dir = tempfile::tempdir().unwrap();
    // The collector: a real OTLP/gRPC server.
    let receiver = Receiver::default();
    let otlp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp_addr = otlp.local_addr().unwrap();
    let served = receiver.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(served))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(otlp))
            .await
            .unwrap();
    });
    let metrics_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let flintd = spawn_flintd_with(
        dir.path(),
        "",
        0x10_0000,
        &[],
        &format!(
            "[metrics]\nlisten = {metrics_addr:?}\n[tracing]\notlp_endpoint = \"http://{otlp_addr}\"\nsample_ratio = 1.0\nservice_name = \"flint-test\"\n"
        ),
    );
    let ep = flintd.endpoint.clone();
    let channel = flint_daemon::client::channel(&ep).await.unwrap();
    let mut c = pb::functions_client::FunctionsClient::new(channel);
    let f = unique("obs");
    let throttled = unique("obs-t");
    create_python(&mut c, &f, CODE.as_bytes()).await;
    create_python(&mut c, &throttled, CODE.as_bytes()).await;
    c.put_function_concurrency(pb::PutFunctionConcurrencyRequest {
        function_name: throttled.clone(),
        reserved_concurrent_executions: 0,
    })
    .await
    .unwrap();

    // Nothing ran yet: no series for the functions.
    let before = scrape(&metrics_addr).await;
    assert!(!before.contains(&f), "{before}");
    assert!(before.contains("flint_functions 2"), "{before}");

    // A cold start, two warm successes, two failures, two throttles.
    let cold = invoke_traced(&mut c, &f, "{}", None).await.unwrap();
    assert!(cold.function_error.is_empty(), "{cold:?}");
    let cold_header = serde_json::from_slice::<Value>(&cold.payload).unwrap()["trace"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..2 {
        let r = invoke_traced(&mut c, &f, "{}", None).await.unwrap();
        assert!(r.function_error.is_empty());
    }
    for _ in 0..2 {
        let r = invoke_traced(&mut c, &f, r#"{"fail": true}"#, None)
            .await
            .unwrap();
        assert!(!r.function_error.is_empty(), "{r:?}");
    }
    for _ in 0..2 {
        let e = invoke_traced(&mut c, &throttled, "{}", None)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    }

    let s = samples(&scrape(&metrics_addr).await);
    let get = |k: &str| s.get(k).copied().unwrap_or(-1.0);
    assert_eq!(
        get(&series("flint_function_invocations_total", &f, "")),
        5.0
    );
    assert_eq!(get(&series("flint_function_errors_total", &f, "")), 2.0);
    assert_eq!(get(&series("flint_function_throttles_total", &f, "")), -1.0);
    assert_eq!(
        get(&series("flint_function_throttles_total", &throttled, "")),
        2.0
    );
    assert_eq!(
        get(&series("flint_function_invocations_total", &throttled, "")),
        -1.0
    );
    assert_eq!(
        get(&series("flint_function_duration_seconds_count", &f, "")),
        5.0
    );
    assert_eq!(
        get(&series(
            "flint_function_duration_seconds_bucket",
            &f,
            ",le=\"+Inf\""
        )),
        5.0
    );
    // The failed invocations ended the instance's runtime: Lambda resets
    // the environment after an Unhandled error only for some runtimes;
    // the first start is counted once either way.
    let starts = get(&series(
        "flint_function_init_duration_seconds_count",
        &f,
        "",
    ))
    .max(0.0)
        + get(&series(
            "flint_function_restore_duration_seconds_count",
            &f,
            "",
        ))
        .max(0.0);
    assert!(starts >= 1.0, "{s:?}");
    assert_eq!(
        get(&series("flint_function_concurrent_executions", &f, "")),
        0.0
    );
    assert!(get("flint_functions") == 2.0);
    let instances: f64 = ["initializing", "idle", "busy", "frozen"]
        .iter()
        .map(|st| get(&format!("flint_instances{{state=\"{st}\"}}")))
        .sum();
    assert!(instances >= 1.0, "{s:?}");
    for k in [
        "flint_starts_in_flight",
        "flint_starts_waiting",
        "flint_spare_vms",
        "flint_memory_budget_bytes",
        "flint_memory_charged_bytes",
        "flint_host_memory_available_bytes",
        "flint_instance_evictions_total",
        "flint_vmm_crashes_total",
        "flint_guest_frames_rejected_total",
        "flint_log_bytes_dropped_total",
    ] {
        assert!(get(k) >= 0.0, "{k} missing: {s:?}");
    }
    assert!(
        get("flint_snapshot_builds_total{result=\"ok\"}") >= 1.0,
        "{s:?}"
    );

    // While an invocation runs, it is a concurrent execution.
    let mut c2 = c.clone();
    let f2 = f.clone();
    let slow =
        tokio::spawn(async move { invoke_traced(&mut c2, &f2, r#"{"sleep": 4}"#, None).await });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = samples(&scrape(&metrics_addr).await);
        if s.get(&series("flint_function_concurrent_executions", &f, "")) == Some(&1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "never 1 concurrent execution");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    slow.await.unwrap().unwrap();
    let s = samples(&scrape(&metrics_addr).await);
    assert_eq!(
        s[&series("flint_function_concurrent_executions", &f, "")],
        0.0
    );
    assert_eq!(s[&series("flint_function_invocations_total", &f, "")], 6.0);
    // The 4-second sleep is in the 5-second bucket and not below.
    assert_eq!(
        s[&series("flint_function_duration_seconds_bucket", &f, ",le=\"2.5\"")] + 1.0,
        s[&series("flint_function_duration_seconds_bucket", &f, ",le=\"5\"")]
    );

    // The same numbers through GetMetricStatistics.
    let stats = |metric: &str, stat: &str| {
        let out = flintctl(
            &ep,
            &[
                "get-metric-statistics",
                "--metric-name",
                metric,
                "--function-name",
                &f,
                "--period",
                "3600",
                "--statistics",
                stat,
            ],
        )
        .unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["Label"], metric);
        let points = v["Datapoints"].as_array().unwrap().clone();
        points
            .iter()
            .map(|p| p[stat].as_f64().unwrap())
            .sum::<f64>()
    };
    assert_eq!(stats("Invocations", "Sum"), 6.0);
    assert_eq!(stats("Errors", "Sum"), 2.0);
    assert_eq!(stats("Duration", "SampleCount"), 6.0);
    assert!(stats("Duration", "Maximum") >= 4000.0);
    assert_eq!(stats("ConcurrentExecutions", "Maximum"), 1.0);
    let e = flintctl(
        &ep,
        &[
            "get-metric-statistics",
            "--metric-name",
            "Bogus",
            "--function-name",
            &f,
        ],
    )
    .unwrap_err();
    assert!(e.contains("InvalidParameterValue"), "{e}");
    let e = flintctl(
        &ep,
        &[
            "get-metric-statistics",
            "--metric-name",
            "Errors",
            "--function-name",
            "nope",
        ],
    )
    .unwrap_err();
    assert!(e.contains("ResourceNotFoundException"), "{e}");

    // Traces. The cold start's: Invoke, with Admission, Start (its phases
    // under it), Invocation (the span the runtime's header names) and
    // Response under it.
    let (trace_id, parent, sampled) = xray(&cold_header);
    assert_eq!(trace_id.len(), 32, "{cold_header}");
    assert_eq!(sampled, "1", "{cold_header}");
    let spans = receiver.trace(&trace_id).await;
    let by_name = |n: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == n).collect() };
    let root = by_name("Invoke");
    assert_eq!(root.len(), 1, "{spans:?}");
    let root = root[0];
    assert!(root.parent_span_id.is_empty());
    assert_eq!(root.kind, 2, "Invoke is a server span");
    for n in ["Admission", "Start", "Invocation", "Response"] {
        let s = by_name(n);
        assert_eq!(s.len(), 1, "{n}: {spans:?}");
        assert_eq!(s[0].parent_span_id, root.span_id, "{n} is under Invoke");
        assert!(s[0].start_time_unix_nano >= root.start_time_unix_nano);
        assert!(s[0].end_time_unix_nano <= root.end_time_unix_nano);
    }
    let start = by_name("Start")[0];
    let phases: Vec<&str> = spans
        .iter()
        .filter(|s| s.parent_span_id == start.span_id)
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        phases == ["Boot", "Init"] || phases == ["Restore", "Init"] || phases == ["Restore"],
        "{phases:?}"
    );
    assert_eq!(hex(&by_name("Invocation")[0].span_id), parent);
    assert!(receiver
        .0
        .lock()
        .unwrap()
        .iter()
        .all(|(service, _)| service == "flint-test"));

    // A caller's W3C context is continued: the function sees its trace
    // id, and the Invoke span is its child.
    let incoming_trace = "0af7651916cd43dd8448eb211c80319c";
    let incoming_span = "b7ad6b7169203331";
    let r = invoke_traced(
        &mut c,
        &f,
        "{}",
        Some(&format!("00-{incoming_trace}-{incoming_span}-01")),
    )
    .await
    .unwrap();
    let header = json(&r)["trace"].as_str().unwrap().to_string();
    let (seen, parent, sampled) = xray(&header);
    assert_eq!(seen, incoming_trace, "{header}");
    assert_eq!(sampled, "1");
    let spans = receiver.trace(incoming_trace).await;
    let root = spans.iter().find(|s| s.name == "Invoke").unwrap();
    assert_eq!(hex(&root.parent_span_id), incoming_span);
    let inv = spans.iter().find(|s| s.name == "Invocation").unwrap();
    assert_eq!(hex(&inv.span_id), parent);
    assert!(
        spans.iter().all(|s| s.name != "Start"),
        "a warm invocation has no Start"
    );

    // A caller's decision not to sample is kept: no spans, Sampled=0.
    let unsampled = "1af7651916cd43dd8448eb211c80319c";
    let r = invoke_traced(
        &mut c,
        &f,
        "{}",
        Some(&format!("00-{unsampled}-{incoming_span}-00")),
    )
    .await
    .unwrap();
    let (seen, _, sampled) = xray(json(&r)["trace"].as_str().unwrap());
    assert_eq!((seen.as_str(), sampled.as_str()), (unsampled, "0"));
    // The throttled invocations were traced too, each with a failed
    // Admission.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let failed = receiver
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| {
                s.name == "Admission" && s.status.as_ref().is_some_and(|st| st.code == 2)
            })
            .count();
        if failed >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{failed} failed Admission spans");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The unsampled invocation ran before: its spans would be here by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(receiver.spans_of(unsampled).is_empty());

    // Asynchronous events: received, their age, and one dropped after
    // its only attempt failed (no retries configured).
    c.put_function_event_invoke_config(pb::PutFunctionEventInvokeConfigRequest {
        function_name: f.clone(),
        maximum_retry_attempts: Some(0),
        ..Default::default()
    })
    .await
    .unwrap();
    for payload in ["{}", r#"{"fail": true}"#] {
        let r = c
            .invoke(pb::InvokeRequest {
                function_name: f.clone(),
                invocation_type: pb::InvocationType::Event as i32,
                payload: payload.as_bytes().to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status_code, 202);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let s = loop {
        let s = samples(&scrape(&metrics_addr).await);
        if s.get(&series("flint_function_async_events_dropped_total", &f, "")) == Some(&1.0)
            && s.get(&series("flint_function_invocations_total", &f, "")) == Some(&10.0)
        {
            break s;
        }
        assert!(Instant::now() < deadline, "the events did not run: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        s[&series("flint_function_async_events_received_total", &f, "")],
        2.0
    );
    assert_eq!(
        s[&series("flint_function_async_event_age_seconds_count", &f, "")],
        2.0
    );
    assert_eq!(s[&series("flint_function_errors_total", &f, "")], 3.0);

    // A deleted function's series go.
    c.delete_function(pb::DeleteFunctionRequest {
        function_name: f.clone(),
    })
    .await
    .unwrap();
    let after = scrape(&metrics_addr).await;
    assert!(!after.contains(&format!("function=\"{f}\"")), "{after}");
    assert!(after.contains(&format!("function=\"{throttled}\"")));
    drop(flintd);
}
