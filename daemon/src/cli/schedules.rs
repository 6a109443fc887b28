//! flintctl's schedule commands, shaped like `aws scheduler …`.

use flint_proto::node::v1 as pb;
use flint_proto::node::v1::scheduler_client::SchedulerClient;
use serde_json::{json, Value};
use tonic::transport::Channel;

use super::args::ScheduleArgs;
use super::commands::{svc, Command};
use super::{emit, CliError, Output};

const HEADERS: &[&str] = &[
    "NAME",
    "STATE",
    "EXPRESSION",
    "TARGET",
    "NEXT",
    "LAST",
    "RUNS",
    "MISSED",
];

fn schedule_json(s: &pb::Schedule) -> Value {
    let t = s.target.clone().unwrap_or_default();
    let mut target = json!({"Arn": t.arn});
    if let Some(i) = &t.input {
        target["Input"] = json!(i);
    }
    json!({
        "Name": s.name,
        "Arn": s.arn,
        "GroupName": "default",
        "ScheduleExpression": s.schedule_expression,
        "ScheduleExpressionTimezone": s.schedule_expression_timezone,
        "Target": target,
        "State": s.state,
        "Description": s.description,
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "CreationDate": s.creation_date,
        "LastModificationDate": s.last_modification_date,
        "Status": {
            "NextInvocation": s.next_invocation,
            "LastInvocation": s.last_invocation,
            "Invocations": s.invocations,
            "Missed": s.missed,
            "LastError": s.last_error,
        },
    })
}

fn row(s: &pb::Schedule) -> Vec<String> {
    vec![
        s.name.clone(),
        s.state.clone(),
        s.schedule_expression.clone(),
        s.target
            .as_ref()
            .map(|t| {
                t.arn
                    .rsplit(":function:")
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_default(),
        s.next_invocation.clone(),
        s.last_invocation.clone(),
        s.invocations.to_string(),
        s.missed.to_string(),
    ]
}

/// The request of a create or an update.
fn request(a: ScheduleArgs) -> Result<pb::ScheduleRequest, CliError> {
    let bad = |m: String| CliError::Usage(m);
    let t: Value = serde_json::from_str(&a.target).map_err(|e| bad(format!("--target: {e}")))?;
    let arn = t
        .get("Arn")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("--target: {\"Arn\": FUNCTION_ARN}".into()))?;
    let input = match t.get("Input") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    let mode = if a.flexible_time_window.is_empty() {
        String::new()
    } else {
        let v: Value = serde_json::from_str(&a.flexible_time_window)
            .map_err(|e| bad(format!("--flexible-time-window: {e}")))?;
        v.get("Mode")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Ok(pb::ScheduleRequest {
        name: a.name,
        schedule_expression: a.schedule_expression,
        schedule_expression_timezone: a.schedule_expression_timezone,
        target: Some(pb::ScheduleTarget {
            arn: arn.to_string(),
            input,
            role_arn: t
                .get("RoleArn")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        }),
        state: a.state,
        description: a.description,
        flexible_time_window_mode: mode,
    })
}

pub async fn run(
    c: &mut SchedulerClient<Channel>,
    output: Output,
    command: Command,
) -> Result<(), CliError> {
    match command {
        Command::CreateSchedule { schedule } => {
            let s = c
                .create_schedule(request(schedule)?)
                .await
                .map_err(svc("CreateSchedule"))?
                .into_inner();
            emit(
                output,
                json!({"ScheduleArn": s.arn}),
                HEADERS,
                vec![row(&s)],
            );
        }
        Command::UpdateSchedule { schedule } => {
            let s = c
                .update_schedule(request(schedule)?)
                .await
                .map_err(svc("UpdateSchedule"))?
                .into_inner();
            emit(
                output,
                json!({"ScheduleArn": s.arn}),
                HEADERS,
                vec![row(&s)],
            );
        }
        Command::GetSchedule { name } => {
            let s = c
                .get_schedule(pb::GetScheduleRequest { name })
                .await
                .map_err(svc("GetSchedule"))?
                .into_inner();
            emit(output, schedule_json(&s), HEADERS, vec![row(&s)]);
        }
        Command::DeleteSchedule { name } => {
            c.delete_schedule(pb::GetScheduleRequest { name })
                .await
                .map_err(svc("DeleteSchedule"))?;
        }
        Command::ListSchedules => {
            let r = c
                .list_schedules(pb::ListSchedulesRequest {})
                .await
                .map_err(svc("ListSchedules"))?
                .into_inner();
            emit(
                output,
                json!({"Schedules": r.schedules.iter().map(schedule_json).collect::<Vec<_>>()}),
                HEADERS,
                r.schedules.iter().map(row).collect(),
            );
        }
        _ => unreachable!("not a schedule command"),
    }
    Ok(())
}
