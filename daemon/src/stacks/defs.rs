//! A resource's resolved properties read into what Flint deploys. Every
//! property is taken by name; one that is left over is an error naming the
//! resource and the property, so nothing in a template is silently ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::template::{scalar, Kind};
use super::StackError;

/// Takes properties out of a mapping; [`Reader::finish`] refuses the rest.
struct Reader {
    resource: String,
    at: String,
    props: Map<String, Value>,
}

impl Reader {
    fn new(resource: &str, at: &str, v: Value) -> Result<Self, StackError> {
        let props = match v {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            _ => return Err(invalid(at, "must be a mapping")),
        };
        Ok(Self {
            resource: resource.to_string(),
            at: at.to_string(),
            props,
        })
    }

    fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.at)
    }

    fn raw(&mut self, key: &str) -> Option<Value> {
        self.props.remove(key).filter(|v| !v.is_null())
    }

    fn string(&mut self, key: &str) -> Result<Option<String>, StackError> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => scalar(&v)
                .map(Some)
                .ok_or_else(|| invalid(self.path(key), "must be a string")),
        }
    }

    fn required(&mut self, key: &str) -> Result<String, StackError> {
        self.string(key)?
            .ok_or_else(|| invalid(self.path(key), "is required"))
    }

    fn number(&mut self, key: &str) -> Result<Option<i64>, StackError> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) => s
                .parse::<i64>()
                .map(Some)
                .map_err(|_| invalid(self.path(key), format!("{s:?} is not a whole number"))),
        }
    }

    fn u32(&mut self, key: &str) -> Result<Option<u32>, StackError> {
        match self.number(key)? {
            None => Ok(None),
            Some(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| invalid(self.path(key), format!("{n} is out of range"))),
        }
    }

    fn bool(&mut self, key: &str) -> Result<Option<bool>, StackError> {
        match self.string(key)?.as_deref() {
            None => Ok(None),
            Some("true") | Some("True") => Ok(Some(true)),
            Some("false") | Some("False") => Ok(Some(false)),
            Some(s) => Err(invalid(
                self.path(key),
                format!("{s:?} is not true or false"),
            )),
        }
    }

    fn strings(&mut self, key: &str) -> Result<Vec<String>, StackError> {
        match self.raw(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| scalar(v).ok_or_else(|| invalid(self.path(key), "a list of strings")))
                .collect(),
            Some(_) => Err(invalid(self.path(key), "must be a list")),
        }
    }

    fn child(&mut self, key: &str) -> Result<Option<Reader>, StackError> {
        let at = self.path(key);
        match self.raw(key) {
            None => Ok(None),
            Some(v) => Reader::new(&self.resource, &at, v).map(Some),
        }
    }

    fn finish(self) -> Result<(), StackError> {
        match self.props.keys().next() {
            None => Ok(()),
            Some(k) => Err(StackError::Unsupported {
                resource: self.resource.clone(),
                property: format!("{}.{k}", self.at),
            }),
        }
    }
}

fn invalid(at: impl Into<String>, rule: impl Into<String>) -> StackError {
    StackError::Template {
        at: at.into(),
        rule: rule.into(),
    }
}

/// How a new version takes over an alias (`DeploymentPreference`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// SAM's name, e.g. `Canary10Percent5Minutes`.
    pub kind: String,
    /// The share of traffic after each step, in percent, and the minutes
    /// each step lasts; empty for `AllAtOnce`.
    pub steps: Vec<(u32, u32)>,
    /// `Metadata.Flint.DeploymentErrorRate`: the share of the new version's
    /// invocations in a step that may fail before it is rolled back.
    pub max_error_rate: f64,
}

impl Deployment {
    pub fn parse(kind: &str, max_error_rate: f64, at: &str) -> Result<Self, StackError> {
        let bad = || {
            invalid(
                at,
                format!(
                    "{kind:?}: AllAtOnce, CanaryXPercentYMinutes or LinearXPercentEveryYMinute(s)"
                ),
            )
        };
        // `{P}{sep}{M}Minute(s)`, 0 < P < 100, M > 0.
        let steps_of = |rest: &str, sep: &str| -> Option<(u32, u32)> {
            let (pct, rest) = rest.split_once(sep)?;
            let mins = rest
                .strip_suffix("Minutes")
                .or(rest.strip_suffix("Minute"))?;
            let pct = pct.parse::<u32>().ok().filter(|p| (1..100).contains(p))?;
            let mins = mins.parse::<u32>().ok().filter(|m| *m > 0)?;
            Some((pct, mins))
        };
        let steps = if kind == "AllAtOnce" {
            Vec::new()
        } else if let Some(rest) = kind.strip_prefix("Canary") {
            vec![steps_of(rest, "Percent").ok_or_else(bad)?]
        } else if let Some(rest) = kind.strip_prefix("Linear") {
            let (pct, mins) = steps_of(rest, "PercentEvery").ok_or_else(bad)?;
            (1..)
                .map(|i| i * pct)
                .take_while(|p| *p < 100)
                .map(|p| (p, mins))
                .collect()
        } else {
            return Err(bad());
        };
        Ok(Self {
            kind: kind.to_string(),
            steps,
            max_error_rate,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventDef {
    Queue {
        arn: String,
        batch_size: Option<u32>,
        window_s: Option<u32>,
        enabled: bool,
        response_types: Vec<String>,
    },
    Stream {
        arn: String,
        starting_position: String,
        batch_size: Option<u32>,
        window_s: Option<u32>,
        enabled: bool,
        bisect: Option<bool>,
        max_retries: Option<i64>,
        max_age_s: Option<i64>,
        parallelization: Option<u32>,
        response_types: Vec<String>,
    },
    Schedule {
        expression: String,
        timezone: String,
        input: Option<String>,
        enabled: bool,
        description: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    pub code_uri: String,
    /// The package's SHA-256 (hex); part of the definition, so that new
    /// code is a change.
    pub code_sha256: String,
    pub handler: String,
    pub runtime: String,
    pub memory_mb: u32,
    pub timeout_s: u32,
    pub description: String,
    pub environment: BTreeMap<String, String>,
    pub layers: Vec<String>,
    pub ephemeral_mb: u32,
    pub dead_letter_target: String,
    pub alias: Option<String>,
    pub reserved: Option<u32>,
    pub provisioned: Option<u32>,
    pub max_event_age_s: Option<u32>,
    pub max_retries: Option<u32>,
    pub on_success: Option<String>,
    pub on_failure: Option<String>,
    pub events: BTreeMap<String, EventDef>,
    pub deployment: Option<Deployment>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerDef {
    pub name: String,
    pub content_uri: String,
    pub code_sha256: String,
    pub description: String,
    pub compatible_runtimes: Vec<String>,
    /// `RetentionPolicy: Retain` (SAM's default): a replaced or removed
    /// version is kept.
    pub retain: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    pub name: String,
    pub visibility_timeout_s: u32,
    pub delay_s: u32,
    pub retention_s: u32,
    pub fifo: bool,
    pub content_based_deduplication: bool,
    /// The dead-letter queue's ARN and the receive count that sends there.
    pub redrive: Option<(String, u32)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamDef {
    pub name: String,
    pub shard_count: u32,
    pub retention_hours: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Def {
    Function(Box<FunctionDef>),
    Layer(LayerDef),
    Queue(QueueDef),
    Stream(StreamDef),
}

impl Def {
    pub fn kind(&self) -> Kind {
        match self {
            Def::Function(_) => Kind::Function,
            Def::Layer(_) => Kind::Layer,
            Def::Queue(_) => Kind::Queue,
            Def::Stream(_) => Kind::Stream,
        }
    }

    /// The name a resource is created under; a new name is a new resource.
    pub fn physical_name(&self) -> &str {
        match self {
            Def::Function(f) => &f.name,
            Def::Layer(l) => &l.name,
            Def::Queue(q) => &q.name,
            Def::Stream(s) => &s.name,
        }
    }
}

/// `{stack}-{logical id}`, cut to `max` characters.
pub fn default_name(stack: &str, id: &str, max: usize) -> String {
    let mut n = format!("{stack}-{id}");
    n.truncate(max);
    n
}

/// Reads resource `id` of `kind` from its resolved properties.
/// `code` gives a package's SHA-256 for a `CodeUri` / `ContentUri`.
pub fn read(
    stack: &str,
    id: &str,
    kind: Kind,
    props: Value,
    metadata: &Map<String, Value>,
    code: &dyn Fn(&str, &str) -> Result<String, StackError>,
) -> Result<Def, StackError> {
    let at = format!("Resources.{id}.Properties");
    let mut r = Reader::new(id, &at, props)?;
    let def = match kind {
        Kind::Function => {
            Def::Function(Box::new(read_function(stack, id, &mut r, metadata, code)?))
        }
        Kind::Layer => {
            let name = r
                .string("LayerName")?
                .unwrap_or_else(|| default_name(stack, id, 140));
            let content_uri = r.required("ContentUri")?;
            let code_sha256 = code(&content_uri, &r.path("ContentUri"))?;
            let retain = match r.string("RetentionPolicy")?.as_deref() {
                None | Some("Retain") => true,
                Some("Delete") => false,
                Some(o) => {
                    return Err(invalid(
                        r.path("RetentionPolicy"),
                        format!("{o:?}: Retain or Delete"),
                    ))
                }
            };
            let description = r.string("Description")?.unwrap_or_default();
            let compatible_runtimes = r.strings("CompatibleRuntimes")?;
            if let Some(a) = r.raw("CompatibleArchitectures") {
                check_x86(&a, &r.path("CompatibleArchitectures"))?;
            }
            Def::Layer(LayerDef {
                name,
                content_uri,
                code_sha256,
                description,
                compatible_runtimes,
                retain,
            })
        }
        Kind::Queue => {
            let name = match r.string("QueueName")? {
                Some(n) => n,
                None => {
                    let fifo = r.props.get("FifoQueue").and_then(scalar).as_deref() == Some("true");
                    let base = default_name(stack, id, if fifo { 75 } else { 80 });
                    if fifo {
                        format!("{base}.fifo")
                    } else {
                        base
                    }
                }
            };
            let redrive = match r.child("RedrivePolicy")? {
                None => None,
                Some(mut p) => {
                    let arn = p.required("deadLetterTargetArn")?;
                    let count = p
                        .u32("maxReceiveCount")?
                        .ok_or_else(|| invalid(p.path("maxReceiveCount"), "is required"))?;
                    p.finish()?;
                    Some((arn, count))
                }
            };
            Def::Queue(QueueDef {
                name,
                visibility_timeout_s: r.u32("VisibilityTimeout")?.unwrap_or(30),
                delay_s: r.u32("DelaySeconds")?.unwrap_or(0),
                retention_s: r.u32("MessageRetentionPeriod")?.unwrap_or(345_600),
                fifo: r.bool("FifoQueue")?.unwrap_or(false),
                content_based_deduplication: r.bool("ContentBasedDeduplication")?.unwrap_or(false),
                redrive,
            })
        }
        Kind::Stream => Def::Stream(StreamDef {
            name: r
                .string("Name")?
                .unwrap_or_else(|| default_name(stack, id, 128)),
            shard_count: r.u32("ShardCount")?.unwrap_or(1),
            retention_hours: r.u32("RetentionPeriodHours")?.unwrap_or(24),
        }),
    };
    r.finish()?;
    if kind != Kind::Function {
        if let Some(k) = metadata.keys().next() {
            return Err(StackError::Unsupported {
                resource: id.to_string(),
                property: format!("Metadata.{k}"),
            });
        }
    }
    Ok(def)
}

fn check_x86(v: &Value, at: &str) -> Result<(), StackError> {
    let ok = v
        .as_array()
        .is_some_and(|a| !a.is_empty() && a.iter().all(|x| x.as_str() == Some("x86_64")));
    if ok {
        Ok(())
    } else {
        Err(invalid(at, "Flint runs x86_64 only"))
    }
}

fn destination(r: &mut Reader, key: &str) -> Result<Option<String>, StackError> {
    let Some(mut d) = r.child(key)? else {
        return Ok(None);
    };
    let arn = d.required("Destination")?;
    match d.string("Type")?.as_deref() {
        None | Some("SQS") | Some("Lambda") | Some("EventBridge") => {}
        Some(o) => {
            return Err(invalid(
                d.path("Type"),
                format!("{o:?}: SQS, Lambda or EventBridge"),
            ))
        }
    }
    d.finish()?;
    Ok(Some(arn))
}

fn read_function(
    stack: &str,
    id: &str,
    r: &mut Reader,
    metadata: &Map<String, Value>,
    code: &dyn Fn(&str, &str) -> Result<String, StackError>,
) -> Result<FunctionDef, StackError> {
    let name = r
        .string("FunctionName")?
        .unwrap_or_else(|| default_name(stack, id, 64));
    let code_uri = r.required("CodeUri")?;
    let code_sha256 = code(&code_uri, &r.path("CodeUri"))?;
    let handler = r.required("Handler")?;
    let runtime = r.required("Runtime")?;
    if let Some(p) = r.string("PackageType")? {
        if p != "Zip" {
            return Err(invalid(r.path("PackageType"), "Flint deploys Zip packages"));
        }
    }
    if let Some(a) = r.raw("Architectures") {
        check_x86(&a, &r.path("Architectures"))?;
    }
    let environment = match r.child("Environment")? {
        None => BTreeMap::new(),
        Some(mut e) => {
            let vars = match e.raw("Variables") {
                None => BTreeMap::new(),
                Some(Value::Object(m)) => m
                    .into_iter()
                    .map(|(k, v)| {
                        scalar(&v).map(|s| (k.clone(), s)).ok_or_else(|| {
                            invalid(e.path(&format!("Variables.{k}")), "must be a string")
                        })
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err(invalid(e.path("Variables"), "must be a mapping")),
            };
            e.finish()?;
            vars
        }
    };
    let ephemeral_mb = match r.child("EphemeralStorage")? {
        None => 512,
        Some(mut e) => {
            let s = e.u32("Size")?.unwrap_or(512);
            e.finish()?;
            s
        }
    };
    let dead_letter_target = match r.child("DeadLetterQueue")? {
        None => String::new(),
        Some(mut d) => {
            if d.required("Type")? != "SQS" {
                return Err(invalid(
                    d.path("Type"),
                    "Flint's dead-letter queues are SQS queues",
                ));
            }
            let arn = d.required("TargetArn")?;
            d.finish()?;
            arn
        }
    };
    let alias = r.string("AutoPublishAlias")?;
    let provisioned = match r.child("ProvisionedConcurrencyConfig")? {
        None => None,
        Some(mut p) => {
            let n = p
                .u32("ProvisionedConcurrentExecutions")?
                .ok_or_else(|| invalid(p.path("ProvisionedConcurrentExecutions"), "is required"))?;
            p.finish()?;
            if alias.is_none() {
                return Err(invalid(
                    r.path("ProvisionedConcurrencyConfig"),
                    "needs AutoPublishAlias: provisioned concurrency is set on the alias",
                ));
            }
            Some(n)
        }
    };
    let (mut max_event_age_s, mut max_retries, mut on_success, mut on_failure) =
        (None, None, None, None);
    if let Some(mut e) = r.child("EventInvokeConfig")? {
        max_event_age_s = e.u32("MaximumEventAgeInSeconds")?;
        max_retries = e.u32("MaximumRetryAttempts")?;
        if let Some(mut d) = e.child("DestinationConfig")? {
            on_success = destination(&mut d, "OnSuccess")?;
            on_failure = destination(&mut d, "OnFailure")?;
            d.finish()?;
        }
        e.finish()?;
    }
    let max_error_rate = match metadata.get("Flint") {
        None => 0.0,
        Some(v) => {
            let mut f = Reader::new(id, &format!("Resources.{id}.Metadata.Flint"), v.clone())?;
            let rate = match f.string("DeploymentErrorRate")? {
                None => 0.0,
                Some(s) => s
                    .parse::<f64>()
                    .ok()
                    .filter(|x| (0.0..=1.0).contains(x))
                    .ok_or_else(|| {
                        invalid(f.path("DeploymentErrorRate"), "a fraction from 0 to 1")
                    })?,
            };
            f.finish()?;
            rate
        }
    };
    if let Some(k) = metadata.keys().find(|k| *k != "Flint") {
        return Err(StackError::Unsupported {
            resource: id.to_string(),
            property: format!("Metadata.{k}"),
        });
    }
    let deployment = match r.child("DeploymentPreference")? {
        None => None,
        Some(mut d) => {
            let kind = d.required("Type")?;
            let enabled = d.bool("Enabled")?.unwrap_or(true);
            let dep = Deployment::parse(&kind, max_error_rate, &d.path("Type"))?;
            d.finish()?;
            if alias.is_none() {
                return Err(invalid(
                    r.path("DeploymentPreference"),
                    "needs AutoPublishAlias: a deployment shifts an alias",
                ));
            }
            enabled.then_some(dep)
        }
    };
    let mut events = BTreeMap::new();
    if let Some(mut ev) = r.child("Events")? {
        let names: Vec<String> = ev.props.keys().cloned().collect();
        for n in names {
            let mut e = ev.child(&n)?.expect("listed");
            let t = e.required("Type")?;
            let mut p = e.child("Properties")?.unwrap_or(Reader::new(
                id,
                &e.path("Properties"),
                Value::Null,
            )?);
            let def = match t.as_str() {
                "SQS" => EventDef::Queue {
                    arn: p.required("Queue")?,
                    batch_size: p.u32("BatchSize")?,
                    window_s: p.u32("MaximumBatchingWindowInSeconds")?,
                    enabled: p.bool("Enabled")?.unwrap_or(true),
                    response_types: p.strings("FunctionResponseTypes")?,
                },
                "Kinesis" => EventDef::Stream {
                    arn: p.required("Stream")?,
                    starting_position: p.required("StartingPosition")?,
                    batch_size: p.u32("BatchSize")?,
                    window_s: p.u32("MaximumBatchingWindowInSeconds")?,
                    enabled: p.bool("Enabled")?.unwrap_or(true),
                    bisect: p.bool("BisectBatchOnFunctionError")?,
                    max_retries: p.number("MaximumRetryAttempts")?,
                    max_age_s: p.number("MaximumRecordAgeInSeconds")?,
                    parallelization: p.u32("ParallelizationFactor")?,
                    response_types: p.strings("FunctionResponseTypes")?,
                },
                "Schedule" | "ScheduleV2" => {
                    let v2 = t == "ScheduleV2";
                    let expression =
                        p.required(if v2 { "ScheduleExpression" } else { "Schedule" })?;
                    let timezone = if v2 {
                        p.string("ScheduleExpressionTimezone")?.unwrap_or_default()
                    } else {
                        String::new()
                    };
                    let enabled = if v2 {
                        match p.string("State")?.as_deref() {
                            None | Some("ENABLED") => true,
                            Some("DISABLED") => false,
                            Some(o) => {
                                return Err(invalid(
                                    p.path("State"),
                                    format!("{o:?}: ENABLED or DISABLED"),
                                ))
                            }
                        }
                    } else {
                        p.bool("Enabled")?.unwrap_or(true)
                    };
                    EventDef::Schedule {
                        expression,
                        timezone,
                        input: p.string("Input")?,
                        enabled,
                        description: p.string("Description")?.unwrap_or_default(),
                    }
                }
                other => {
                    return Err(StackError::Unsupported {
                        resource: id.to_string(),
                        property: format!(
                            "Events.{n}.Type {other} (Flint: SQS, Kinesis, Schedule, ScheduleV2)"
                        ),
                    })
                }
            };
            p.finish()?;
            e.finish()?;
            events.insert(n, def);
        }
        ev.finish()?;
    }
    let def = FunctionDef {
        name,
        code_uri,
        code_sha256,
        handler,
        runtime,
        memory_mb: r.u32("MemorySize")?.unwrap_or(128),
        timeout_s: r.u32("Timeout")?.unwrap_or(3),
        description: r.string("Description")?.unwrap_or_default(),
        environment,
        layers: r.strings("Layers")?,
        ephemeral_mb,
        dead_letter_target,
        alias,
        reserved: r.u32("ReservedConcurrentExecutions")?,
        provisioned,
        max_event_age_s,
        max_retries,
        on_success,
        on_failure,
        events,
        deployment,
    };
    Ok(def)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_preferences_become_steps() {
        let c = Deployment::parse("Canary10Percent5Minutes", 0.0, "x").unwrap();
        assert_eq!(c.steps, vec![(10, 5)]);
        let l = Deployment::parse("Linear10PercentEvery1Minute", 0.0, "x").unwrap();
        assert_eq!(l.steps.len(), 9);
        assert_eq!(l.steps[8], (90, 1));
        let l = Deployment::parse("Linear25PercentEvery2Minutes", 0.0, "x").unwrap();
        assert_eq!(l.steps, vec![(25, 2), (50, 2), (75, 2)]);
        assert!(Deployment::parse("AllAtOnce", 0.0, "x")
            .unwrap()
            .steps
            .is_empty());
        for bad in [
            "Canary100Percent5Minutes",
            "Blue",
            "Linear0PercentEvery1Minute",
        ] {
            assert!(Deployment::parse(bad, 0.0, "x").is_err(), "{bad}");
        }
    }

    #[test]
    fn an_unknown_property_is_named() {
        let props = serde_json::json!({
            "CodeUri": "src/", "Handler": "a.b", "Runtime": "python3.11",
            "Events": {"E": {"Type": "SQS", "Properties": {"Queue": "q", "Surprise": 1}}}
        });
        let code = |_: &str, _: &str| Ok("00".to_string());
        let e = read("s", "Fn", Kind::Function, props, &Map::new(), &code)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Fn") && e.contains("Events.E.Properties.Surprise"),
            "{e}"
        );
        let props = serde_json::json!({"CodeUri": "src/", "Handler": "a.b", "Runtime": "python3.11", "Tracing": "Active"});
        let e = read("s", "Fn", Kind::Function, props, &Map::new(), &code)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Tracing"), "{e}");
    }
}
