//! flintctl's logic: argument parsing in the AWS CLI's forms, output in the
//! AWS CLI's JSON shapes or as tables, errors as the AWS CLI prints them.

mod apps;
mod args;
mod blueprints;
pub mod commands;
mod events;
mod metrics;
mod queues;
mod scaling;
mod schedules;
mod sources;
mod stacks;
mod streams;

use std::collections::BTreeMap;

use flint_proto::node::v1 as pb;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("An error occurred ({exception}) when calling the {operation} operation: {message}")]
    Service {
        operation: &'static str,
        exception: String,
        message: String,
    },
    #[error("{0}")]
    Usage(String),
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("cannot write {0}: {1}")]
    Write(String, std::io::Error),
    #[error(transparent)]
    Connect(#[from] crate::client::ClientError),
}

impl CliError {
    /// The AWS CLI's exit codes: 252 for bad usage, 254 for service errors.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Read(..) => 252,
            CliError::Service { .. } => 254,
            CliError::Write(..) | CliError::Connect(_) => 255,
        }
    }

    /// Splits flintd's `Exception: message` form.
    pub fn from_status(operation: &'static str, s: tonic::Status) -> Self {
        let msg = s.message();
        let (exception, message) = match msg.split_once(": ") {
            Some((e, m)) if e.ends_with("Exception") => (e.to_string(), m.to_string()),
            _ => (format!("{:?}", s.code()), msg.to_string()),
        };
        CliError::Service {
            operation,
            exception,
            message,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Json,
    Table,
}

/// Reads `path`, `file://path` or `fileb://path`.
pub fn read_file_arg(arg: &str) -> Result<Vec<u8>, CliError> {
    let path = arg
        .strip_prefix("fileb://")
        .or_else(|| arg.strip_prefix("file://"))
        .unwrap_or(arg);
    std::fs::read(path).map_err(|e| CliError::Read(path.into(), e))
}

/// `--payload`: JSON text, or a file. With `--cli-binary-format base64` the
/// text is base64 (the AWS CLI v2 default).
pub fn read_payload(arg: &str, format: &str) -> Result<Vec<u8>, CliError> {
    if arg.starts_with("file://") || arg.starts_with("fileb://") {
        return read_file_arg(arg);
    }
    match format {
        "raw-in-base64-out" => Ok(arg.as_bytes().to_vec()),
        "base64" => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(arg.trim())
                .map_err(|e| CliError::Usage(format!("--payload is not valid base64: {e}")))
        }
        other => Err(CliError::Usage(format!(
            "--cli-binary-format {other:?}: expected raw-in-base64-out or base64"
        ))),
    }
}

/// `Variables={KEY=VALUE,KEY2=VALUE2}` or `{"Variables": {...}}`.
pub fn parse_environment(arg: &str) -> Result<BTreeMap<String, String>, CliError> {
    let arg = arg.trim();
    if arg.starts_with('{') {
        let v: Value = serde_json::from_str(arg)
            .map_err(|e| CliError::Usage(format!("--environment is not valid JSON: {e}")))?;
        let vars = v
            .get("Variables")
            .and_then(|x| x.as_object())
            .ok_or_else(|| CliError::Usage("--environment JSON needs a Variables object".into()))?;
        return vars
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Ok((k.clone(), other.to_string())),
            })
            .collect();
    }
    let inner = arg
        .strip_prefix("Variables=")
        .and_then(|s| s.strip_prefix('{'))
        .and_then(|s| s.strip_suffix('}'))
        .ok_or_else(|| {
            CliError::Usage("--environment: expected Variables={KEY=VALUE,...}".into())
        })?;
    let mut out = BTreeMap::new();
    for pair in inner.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--environment: {pair:?} is not KEY=VALUE")))?;
        out.insert(k.trim().to_string(), v.to_string());
    }
    Ok(out)
}

/// `AdditionalVersionWeights={2=0.2}` or
/// `{"AdditionalVersionWeights":{"2":0.2}}`; an empty map removes routing.
pub fn parse_routing(arg: &str) -> Result<Vec<(String, f64)>, CliError> {
    let arg = arg.trim();
    let bad = |m: String| CliError::Usage(format!("--routing-config: {m}"));
    let pairs: Vec<(String, f64)> = if arg.starts_with('{') {
        let v: Value = serde_json::from_str(arg).map_err(|e| bad(e.to_string()))?;
        let w = v
            .get("AdditionalVersionWeights")
            .and_then(|x| x.as_object())
            .ok_or_else(|| bad("needs an AdditionalVersionWeights object".into()))?;
        w.iter()
            .map(|(k, v)| {
                v.as_f64()
                    .map(|f| (k.clone(), f))
                    .ok_or_else(|| bad(format!("weight of {k} is not a number")))
            })
            .collect::<Result<_, _>>()?
    } else {
        let inner = arg
            .strip_prefix("AdditionalVersionWeights=")
            .and_then(|s| s.strip_prefix('{'))
            .and_then(|s| s.strip_suffix('}'))
            .ok_or_else(|| bad("expected AdditionalVersionWeights={VERSION=WEIGHT}".into()))?;
        inner
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                let (k, v) = p
                    .split_once('=')
                    .ok_or_else(|| bad(format!("{p:?} is not VERSION=WEIGHT")))?;
                let w = v
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| bad(format!("{v:?} is not a number")))?;
                Ok((k.trim().to_string(), w))
            })
            .collect::<Result<_, CliError>>()?
    };
    Ok(pairs)
}

/// `Size=1024` or `{"Size":1024}`.
pub fn parse_ephemeral(arg: &str) -> Result<u32, CliError> {
    let arg = arg.trim();
    let bad = || CliError::Usage("--ephemeral-storage: expected Size=MB".into());
    if arg.starts_with('{') {
        let v: Value = serde_json::from_str(arg).map_err(|_| bad())?;
        return v
            .get("Size")
            .and_then(|s| s.as_u64())
            .map(|s| s as u32)
            .ok_or_else(bad);
    }
    arg.strip_prefix("Size=")
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)
}

/// `30s`, `10m`, `2h`, `1d` (a bare number is seconds).
pub fn parse_since(arg: &str) -> Result<u64, CliError> {
    let arg = arg.trim();
    let (num, mult) = match arg.chars().last() {
        Some('s') => (&arg[..arg.len() - 1], 1),
        Some('m') => (&arg[..arg.len() - 1], 60),
        Some('h') => (&arg[..arg.len() - 1], 3600),
        Some('d') => (&arg[..arg.len() - 1], 86_400),
        _ => (arg, 1),
    };
    num.parse::<u64>().map(|n| n * mult).map_err(|_| {
        CliError::Usage(format!(
            "--since {arg:?}: expected a duration like 10m, 2h, 30s"
        ))
    })
}

pub fn invocation_type(s: &str) -> Result<pb::InvocationType, CliError> {
    match s {
        "RequestResponse" => Ok(pb::InvocationType::RequestResponse),
        "Event" => Ok(pb::InvocationType::Event),
        "DryRun" => Ok(pb::InvocationType::DryRun),
        other => Err(CliError::Usage(format!(
            "--invocation-type {other:?}: expected RequestResponse, Event or DryRun"
        ))),
    }
}

pub fn log_type(s: &str) -> Result<pb::LogType, CliError> {
    match s {
        "None" => Ok(pb::LogType::None),
        "Tail" => Ok(pb::LogType::Tail),
        other => Err(CliError::Usage(format!(
            "--log-type {other:?}: expected None or Tail"
        ))),
    }
}

pub fn write_outfile(path: &str, data: &[u8]) -> Result<(), CliError> {
    if path == "-" {
        use std::io::Write;
        let mut out = std::io::stdout();
        out.write_all(data)
            .and_then(|_| out.write_all(b"\n"))
            .map_err(|e| CliError::Write(path.into(), e))
    } else {
        std::fs::write(path, data).map_err(|e| CliError::Write(path.into(), e))
    }
}

/// A function's configuration in the AWS CLI's JSON shape.
pub fn configuration_json(f: &pb::FunctionConfiguration) -> Value {
    let mut v = json!({
        "FunctionName": f.function_name,
        "FunctionArn": f.function_arn,
        "Runtime": f.runtime,
        "Handler": f.handler,
        "CodeSize": f.code_size,
        "Description": f.description,
        "Timeout": f.timeout,
        "MemorySize": f.memory_size,
        "LastModified": f.last_modified,
        "CodeSha256": f.code_sha256,
        "Version": f.version,
        "State": f.state,
        "PackageType": "Zip",
        "Architectures": ["x86_64"],
    });
    if !f.environment.is_empty() {
        let vars: BTreeMap<_, _> = f.environment.iter().collect();
        v["Environment"] = json!({ "Variables": vars });
    }
    if !f.layers.is_empty() {
        v["Layers"] = json!(f
            .layers
            .iter()
            .map(|l| json!({"Arn": l.arn, "CodeSize": l.code_size}))
            .collect::<Vec<_>>());
    }
    v["EphemeralStorage"] = json!({"Size": f.ephemeral_storage});
    if let Some(n) = &f.network_config {
        let rules: Vec<_> = n
            .egress
            .iter()
            .map(|r| {
                json!({"Cidr": r.cidr, "Protocol": r.protocol,
                       "FromPort": r.from_port, "ToPort": r.to_port})
            })
            .collect();
        v["NetworkConfig"] = json!({"Mode": n.mode, "Egress": rules});
    }
    if let Some(d) = &f.dead_letter_config {
        v["DeadLetterConfig"] = json!({"TargetArn": d.target_arn});
    }
    v["RevisionId"] = json!(f.revision_id);
    if !f.last_update_status.is_empty() {
        v["LastUpdateStatus"] = json!(f.last_update_status);
    }
    for (key, val) in [
        ("StateReason", &f.state_reason),
        ("StateReasonCode", &f.state_reason_code),
        ("LastUpdateStatusReason", &f.last_update_status_reason),
        (
            "LastUpdateStatusReasonCode",
            &f.last_update_status_reason_code,
        ),
    ] {
        if !val.is_empty() {
            v[key] = json!(val);
        }
    }
    v
}

pub fn alias_json(a: &pb::AliasConfiguration) -> Value {
    let mut v = json!({
        "AliasArn": a.alias_arn,
        "Name": a.name,
        "FunctionVersion": a.function_version,
        "Description": a.description,
    });
    if let Some(r) = &a.routing_config {
        let w: BTreeMap<_, _> = r.additional_version_weights.iter().collect();
        v["RoutingConfig"] = json!({"AdditionalVersionWeights": w});
    }
    v
}

pub fn alias_row(a: &pb::AliasConfiguration) -> Vec<String> {
    let routing = a
        .routing_config
        .as_ref()
        .map(|r| {
            r.additional_version_weights
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    vec![
        a.name.clone(),
        a.function_version.clone(),
        routing,
        a.description.clone(),
    ]
}

pub fn layer_json(l: &pb::LayerVersion) -> Value {
    json!({
        "LayerArn": l.layer_arn,
        "LayerVersionArn": l.layer_version_arn,
        "Version": l.version,
        "Description": l.description,
        "CreatedDate": l.created_date,
        "CompatibleRuntimes": l.compatible_runtimes,
        "Content": {"CodeSha256": l.code_sha256, "CodeSize": l.code_size},
    })
}

pub fn layer_row(l: &pb::LayerVersion) -> Vec<String> {
    vec![
        l.layer_name.clone(),
        l.version.to_string(),
        l.code_size.to_string(),
        l.created_date.clone(),
        l.layer_version_arn.clone(),
    ]
}

pub fn instance_json(i: &pb::InstanceInfo) -> Value {
    json!({
        "InstanceId": i.id,
        "FunctionName": i.function_name,
        "FunctionVersion": i.function_version,
        "State": i.state,
        "MemorySize": i.memory_size,
        "RssKb": i.rss_kb,
        "Created": i.created,
        "AgeSeconds": i.age_seconds,
        "Invocations": i.invocations,
        "LastUsed": i.last_used,
        "StartKind": i.start_kind,
        "Provisioned": i.provisioned,
        "VmmPid": i.vmm_pid,
    })
}

pub fn instance_row(i: &pb::InstanceInfo) -> Vec<String> {
    vec![
        i.id.clone(),
        i.function_name.clone(),
        i.function_version.clone(),
        i.state.clone(),
        format!("{} MB", i.memory_size),
        format!("{} MB", i.rss_kb / 1024),
        format!("{:.0}s", i.age_seconds),
        i.invocations.to_string(),
        i.last_used.clone(),
        i.start_kind.clone(),
        if i.provisioned {
            "provisioned"
        } else {
            "on-demand"
        }
        .into(),
    ]
}

pub fn node_info_json(n: &pb::NodeInfo) -> Value {
    json!({
        "Version": n.version,
        "Engine": n.engine,
        "Accelerator": n.accelerator,
        "AcceleratorReason": n.accelerator_reason,
        "Kernel": n.kernel,
        "RuntimeImages": n.runtime_images.iter().map(|r| json!({"Runtime": r.runtime, "Path": r.path, "Size": r.size})).collect::<Vec<_>>(),
        "Cpus": n.cpus,
        "MemoryTotalMb": n.memory_total_mb,
        "MemoryAvailableMb": n.memory_available_mb,
        "Instances": n.instances,
        "InstanceMemoryMb": n.instance_memory_mb,
        "InstanceRssMb": n.instance_rss_mb,
        "Functions": n.functions,
        "MaxInstances": n.max_instances,
        "MemoryBudgetMb": n.memory_budget_mb,
        "MemoryChargedMb": n.memory_charged_mb,
        "ReservedConcurrency": n.reserved_concurrency,
        "UnreservedConcurrencyMin": n.unreserved_concurrency_min,
        "RunningInvocations": n.running_invocations,
        "LogBytesStored": n.log_bytes_stored,
        "LogBytesDropped": n.log_bytes_dropped,
        "VmmConfinement": n.vmm_confinement,
        "Networks": n.networks,
        "InitTimeoutSeconds": n.init_timeout_seconds,
        "SnapshotInitTimeoutSeconds": n.snapshot_init_timeout_seconds,
        "StartSlots": n.start_slots,
        "StartsInFlight": n.starts_in_flight,
        "StartsWaiting": n.starts_waiting,
        "ScalingRate": {"Instances": n.scale_instances, "IntervalSeconds": n.scale_interval_seconds},
        "DataDir": n.data_dir,
        "StartedAt": n.started_at,
    })
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(headers.iter().map(|h| h.to_string()).collect()));
    for r in rows {
        println!("{}", line(r.clone()));
    }
}

fn function_row(f: &pb::FunctionConfiguration) -> Vec<String> {
    vec![
        f.function_name.clone(),
        f.runtime.clone(),
        f.handler.clone(),
        f.memory_size.to_string(),
        f.timeout.to_string(),
        f.code_size.to_string(),
        f.last_modified.clone(),
    ]
}

const FUNCTION_HEADERS: &[&str] = &[
    "NAME",
    "RUNTIME",
    "HANDLER",
    "MEMORY",
    "TIMEOUT",
    "CODE SIZE",
    "LAST MODIFIED",
];

/// A JSON document for scripts, or a table for people.
pub fn emit(output: Output, json: Value, headers: &[&str], rows: Vec<Vec<String>>) {
    match output {
        Output::Json => print_json(&json),
        Output::Table => print_table(headers, &rows),
    }
}

pub fn print_configuration(f: &pb::FunctionConfiguration, output: Output) {
    match output {
        Output::Json => print_json(&configuration_json(f)),
        Output::Table => print_table(FUNCTION_HEADERS, &[function_row(f)]),
    }
}

pub fn print_get_function(r: &pb::GetFunctionResponse, output: Output) {
    let Some(f) = r.configuration.as_ref() else {
        return;
    };
    match output {
        Output::Json => print_json(&json!({
            "Configuration": configuration_json(f),
            "Code": {"RepositoryType": "Node", "Location": r.code_location},
        })),
        Output::Table => print_table(FUNCTION_HEADERS, &[function_row(f)]),
    }
}

pub fn print_functions(fs: &[pb::FunctionConfiguration], output: Output) {
    match output {
        Output::Json => print_json(&json!({
            "Functions": fs.iter().map(configuration_json).collect::<Vec<_>>(),
        })),
        Output::Table => print_table(
            FUNCTION_HEADERS,
            &fs.iter().map(function_row).collect::<Vec<_>>(),
        ),
    }
}

/// The AWS CLI's invoke summary.
pub fn invoke_json(r: &pb::InvokeResponse) -> Value {
    let mut v = json!({ "StatusCode": r.status_code });
    if !r.function_error.is_empty() {
        v["FunctionError"] = json!(r.function_error);
    }
    if !r.log_result.is_empty() {
        v["LogResult"] = json!(r.log_result);
    }
    if !r.executed_version.is_empty() {
        v["ExecutedVersion"] = json!(r.executed_version);
    }
    v
}

pub fn print_invoke(r: &pb::InvokeResponse, output: Output) {
    match output {
        Output::Json => print_json(&invoke_json(r)),
        Output::Table => print_table(
            &["STATUS", "FUNCTION ERROR", "VERSION", "REQUEST ID"],
            &[vec![
                r.status_code.to_string(),
                r.function_error.clone(),
                r.executed_version.clone(),
                r.request_id.clone(),
            ]],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_shorthand_and_json() {
        let e = parse_environment("Variables={A=1,B=x=y}").unwrap();
        assert_eq!(e["A"], "1");
        assert_eq!(e["B"], "x=y");
        let e = parse_environment(r#"{"Variables":{"K":"v"}}"#).unwrap();
        assert_eq!(e["K"], "v");
        assert!(parse_environment("A=1").is_err());
    }

    #[test]
    fn service_errors_read_like_the_aws_cli() {
        let e = CliError::from_status(
            "GetFunction",
            tonic::Status::not_found("ResourceNotFoundException: Function not found: x"),
        );
        assert_eq!(
            e.to_string(),
            "An error occurred (ResourceNotFoundException) when calling the GetFunction operation: Function not found: x"
        );
        assert_eq!(e.exit_code(), 254);
    }

    #[test]
    fn routing_ephemeral_and_since_shorthands() {
        assert_eq!(
            parse_routing("AdditionalVersionWeights={2=0.2}").unwrap(),
            vec![("2".to_string(), 0.2)]
        );
        assert_eq!(
            parse_routing(r#"{"AdditionalVersionWeights":{"3":0.5}}"#).unwrap(),
            vec![("3".to_string(), 0.5)]
        );
        assert!(parse_routing("AdditionalVersionWeights={}")
            .unwrap()
            .is_empty());
        assert!(parse_routing("2=0.2").is_err());
        assert_eq!(parse_ephemeral("Size=1024").unwrap(), 1024);
        assert_eq!(parse_ephemeral(r#"{"Size":2048}"#).unwrap(), 2048);
        assert_eq!(parse_since("10m").unwrap(), 600);
        assert_eq!(parse_since("2h").unwrap(), 7200);
        assert_eq!(parse_since("45").unwrap(), 45);
        assert!(parse_since("soon").is_err());
    }

    #[test]
    fn invoke_summary_omits_empty_fields() {
        let v = invoke_json(&pb::InvokeResponse {
            status_code: 200,
            executed_version: "$LATEST".into(),
            ..Default::default()
        });
        assert_eq!(v, json!({"StatusCode": 200, "ExecutedVersion": "$LATEST"}));
    }
}
