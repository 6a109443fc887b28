//! Schedules on real microVMs: `at`, `cron` and `rate` expressions invoke a
//! function asynchronously with EventBridge's scheduled event (or the
//! target's input); bad expressions, time zones and targets are typed
//! errors; a firing is never repeated by a restart, and one that came due
//! while flintd was down (`kill -9`) fires once, late, after the restart.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use flint_e2e::*;
use flint_proto::node::v1 as pb;
use serde_json::Value;

const TICK: &[u8] = b"import json
def handler(event, context):
    print('TICK ' + json.dumps(event))
    return 'ok'
";

const ARN: &str = "arn:aws:lambda:us-east-1:000000000000:function:tick";

/// Every event the function logged, in order.
async fn ticks(endpoint: &str) -> Vec<Value> {
    log_messages(endpoint, "tick")
        .await
        .iter()
        .filter_map(|m| m.trim().strip_prefix("TICK ").map(String::from))
        .map(|json| serde_json::from_str(&json).unwrap())
        .collect()
}

/// Events per schedule name (scheduled events) or "input" (the rate's).
fn by_schedule(events: &[Value]) -> HashMap<String, Vec<Value>> {
    let mut m: HashMap<String, Vec<Value>> = HashMap::new();
    for e in events {
        // The warm-up invocation.
        if e == &serde_json::json!({}) {
            continue;
        }
        let key = match e["resources"][0].as_str() {
            Some(r) => r.rsplit('/').next().unwrap().to_string(),
            None => "input".into(),
        };
        m.entry(key).or_default().push(e.clone());
    }
    m
}

async fn ticks_until(
    endpoint: &str,
    limit: Duration,
    done: impl Fn(&HashMap<String, Vec<Value>>) -> bool,
) -> HashMap<String, Vec<Value>> {
    let deadline = Instant::now() + limit;
    loop {
        let m = by_schedule(&ticks(endpoint).await);
        if done(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "schedules fired: {:?}",
            m.iter().map(|(k, v)| (k, v.len())).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `at(...)` of `secs` from now, in UTC.
fn at_in(secs: i64) -> (String, String) {
    let ms = flint_daemon::time::now_ms() + secs * 1000;
    let t = flint_daemon::time::rfc3339_s(ms);
    (format!("at({})", t.trim_end_matches('Z')), t)
}

fn request(name: &str, expr: &str, input: Option<&str>) -> pb::ScheduleRequest {
    pb::ScheduleRequest {
        name: name.into(),
        schedule_expression: expr.into(),
        target: Some(pb::ScheduleTarget {
            arn: ARN.into(),
            input: input.map(String::from),
            role_arn: String::new(),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn schedules_fire_on_time_once_and_catch_up_after_a_crash() {
    let dir = tempfile::Builder::new()
        .prefix("flint-schedules-")
        .tempdir()
        .unwrap();
    let flintd = spawn_flintd(dir.path(), "", 0xb_0000);
    let ep = flintd.endpoint.clone();
    let channel = flint_daemon::client::channel(&ep).await.unwrap();
    let mut c = pb::functions_client::FunctionsClient::new(channel.clone());
    let mut s = pb::scheduler_client::SchedulerClient::new(channel.clone());
    create_python(&mut c, "tick", TICK).await;
    c.invoke(pb::InvokeRequest {
        function_name: "tick".into(),
        payload: b"{}".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();

    // Typed errors.
    for (bad, what) in [
        (request("x", "every 5 minutes", None), "ValidationException"),
        (
            request("x", "cron(0 10 * * * *)", None),
            "ValidationException",
        ),
        (
            pb::ScheduleRequest {
                schedule_expression_timezone: "Mars/Olympus".into(),
                ..request("x", "cron(0 10 * * ? *)", None)
            },
            "ValidationException",
        ),
        (
            pb::ScheduleRequest {
                flexible_time_window_mode: "FLEXIBLE".into(),
                ..request("x", "rate(5 minutes)", None)
            },
            "InvalidParameterValueException",
        ),
        (
            pb::ScheduleRequest {
                target: Some(pb::ScheduleTarget {
                    arn: "arn:aws:lambda:us-east-1:000000000000:function:nope".into(),
                    ..Default::default()
                }),
                ..request("x", "rate(5 minutes)", None)
            },
            "ResourceNotFoundException",
        ),
        (
            request("a/b", "rate(5 minutes)", None),
            "InvalidParameterValueException",
        ),
    ] {
        let e = s.create_schedule(bad.clone()).await.unwrap_err();
        assert!(e.message().contains(what), "{bad:?}: {e:?}");
    }

    // at, cron (every minute, through flintctl) and rate with an input.
    let (at, at_time) = at_in(3);
    s.create_schedule(request("once", &at, None)).await.unwrap();
    flintctl(
        &ep,
        &[
            "create-schedule",
            "--name",
            "minutely",
            "--schedule-expression",
            "cron(* * * * ? *)",
            "--schedule-expression-timezone",
            "Asia/Kolkata",
            "--target",
            &format!(r#"{{"Arn": "{ARN}"}}"#),
            "--flexible-time-window",
            r#"{"Mode": "OFF"}"#,
        ],
    )
    .unwrap();
    s.create_schedule(request(
        "every-minute",
        "rate(1 minute)",
        Some(r#"{"from": "rate"}"#),
    ))
    .await
    .unwrap();
    let e = s
        .create_schedule(request("once", &at, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");

    let got = ticks_until(&ep, Duration::from_secs(150), |m| {
        m.contains_key("once") && m.contains_key("minutely") && m.contains_key("input")
    })
    .await;
    let once = &got["once"][0];
    assert_eq!(once["detail-type"], "Scheduled Event");
    assert_eq!(once["source"], "aws.events");
    assert_eq!(once["account"], "000000000000");
    assert_eq!(once["region"], "us-east-1");
    assert_eq!(once["time"], at_time.as_str());
    assert_eq!(
        once["resources"][0],
        "arn:aws:scheduler:us-east-1:000000000000:schedule/default/once"
    );
    let minute = got["minutely"][0]["time"].as_str().unwrap();
    assert!(minute.ends_with(":00Z"), "{minute}");
    assert_eq!(got["input"][0], serde_json::json!({"from": "rate"}));
    let g: Value =
        serde_json::from_str(&flintctl(&ep, &["get-schedule", "--name", "once"]).unwrap()).unwrap();
    assert_eq!(g["Status"]["Invocations"], 1);
    assert_eq!(g["Status"]["NextInvocation"], "");

    // A firing that comes due while flintd is down fires once, late, with
    // its own time.
    s.delete_schedule(pb::GetScheduleRequest {
        name: "minutely".into(),
    })
    .await
    .unwrap();
    s.delete_schedule(pb::GetScheduleRequest {
        name: "every-minute".into(),
    })
    .await
    .unwrap();
    assert!(s
        .get_schedule(pb::GetScheduleRequest {
            name: "minutely".into()
        })
        .await
        .is_err());
    let (at, at_time) = at_in(4);
    s.create_schedule(request("while-down", &at, None))
        .await
        .unwrap();
    let mut flintd = flintd;
    flintd.child.kill().unwrap();
    flintd.child.wait().unwrap();
    drop(flintd);
    tokio::time::sleep(Duration::from_secs(7)).await;
    let flintd = spawn_flintd(dir.path(), "", 0xb_0000);
    let ep = flintd.endpoint.clone();
    let got = ticks_until(&ep, Duration::from_secs(120), |m| {
        m.contains_key("while-down")
    })
    .await;
    assert_eq!(got["while-down"][0]["time"], at_time.as_str());
    // Nothing fires twice across the restart.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = by_schedule(&ticks(&ep).await);
    assert_eq!(got["once"].len(), 1, "{:?}", got["once"]);
    assert_eq!(got["while-down"].len(), 1);
    drop(flintd);
}
